//! Small pure formatting helpers: ages and durations as kubectl prints them, tables.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Unix seconds of a Kubernetes time.
pub fn unix(t: &Time) -> i64 {
    t.0.as_second()
}

/// Unix seconds of `now`.
pub fn now_unix(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A duration as kubectl's `AGE` column shows it: `45s`, `12m`, `5h3m`, `3d4h`, `400d`.
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => {
            let (h, m) = (s / 3600, (s % 3600) / 60);
            if m == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{m}m")
            }
        }
        86400..8_640_000 => {
            let (d, h) = (s / 86400, (s % 86400) / 3600);
            if h == 0 {
                format!("{d}d")
            } else {
                format!("{d}d{h}h")
            }
        }
        _ => format!("{}d", s / 86400),
    }
}

/// `at` relative to `now`: `5m ago`, `in 3h`.
pub fn relative(at: i64, now: i64) -> String {
    if at <= now {
        format!("{} ago", short(Duration::from_secs((now - at) as u64)))
    } else {
        format!("in {}", short(Duration::from_secs((at - now) as u64)))
    }
}

/// An RFC 3339 time with its relative form: `2026-12-01T10:00:00Z (5m ago)`.
pub fn when(at: i64, now: i64) -> String {
    let text = k8s_openapi::jiff::Timestamp::from_second(at)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| at.to_string());
    format!("{text} ({})", relative(at, now))
}

/// Rows as aligned columns (two spaces apart), the first row being the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl_ages() {
        assert_eq!(short(Duration::from_secs(45)), "45s");
        assert_eq!(short(Duration::from_secs(12 * 60 + 5)), "12m");
        assert_eq!(short(Duration::from_secs(5 * 3600 + 3 * 60)), "5h3m");
        assert_eq!(short(Duration::from_secs(2 * 3600)), "2h");
        assert_eq!(short(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d4h");
        assert_eq!(short(Duration::from_secs(400 * 86400)), "400d");
        assert_eq!(relative(100, 160), "1m ago");
        assert_eq!(relative(160 + 7200, 160), "in 2h");
        assert_eq!(when(0, 60), "1970-01-01T00:00:00Z (1m ago)");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&[
            vec!["NAME".into(), "READY".into()],
            vec!["a-long-name".into(), "True".into()],
        ]);
        assert_eq!(t, "NAME         READY\na-long-name  True\n");
    }
}
