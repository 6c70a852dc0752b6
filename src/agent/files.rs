//! Token files for applications that can only read a file: `--token NAME=audience[,scope…]`
//! keeps `TOKEN_DIR/NAME` holding a valid token for that audience and those scopes. Each
//! write goes to a temporary file (mode 0600 from its creation) in the same folder and is
//! renamed over the old one, so a reader sees the old token or the new one, never a part.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::cache::{Key, Tokens};

/// How often each token file's entry is looked at (the cache does the refreshing).
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// One `--token NAME=audience[,scope…]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSpec {
    /// The file name in the token folder.
    pub name: String,
    /// What the token is for.
    pub key: Key,
}

impl FromStr for TokenSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected NAME=audience[,scope...]"))?;
        let name = name.trim();
        if name.is_empty()
            || name.starts_with('.')
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "{name:?}: a token file name is letters, digits, '-', '_' and '.', not starting with '.'"
            ));
        }
        let mut parts = rest.split(',').map(|p| p.trim().to_owned());
        let audience = parts.next().unwrap_or_default();
        if audience.is_empty() {
            return Err(format!("{s:?}: no audience"));
        }
        Ok(TokenSpec {
            name: name.to_owned(),
            key: Key::new(audience, parts),
        })
    }
}

/// Writes `bytes` to `dir/name` atomically with mode 0600.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))
}

/// Keeps `dir/spec.name` current until the task is dropped.
pub async fn keep_written(tokens: Arc<Tokens>, dir: PathBuf, spec: TokenSpec) {
    let mut written: Option<String> = None;
    let mut failing = false;
    loop {
        match tokens.get(&spec.key, true, false).await {
            Ok(issued) if written.as_deref() != Some(issued.access_token.as_str()) => {
                let (d, name, token) = (dir.clone(), spec.name.clone(), issued.access_token);
                let result = tokio::task::spawn_blocking(move || {
                    write_atomically(&d, &name, token.as_bytes()).map(|()| token)
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                match result {
                    Ok(token) => {
                        tokens
                            .metrics()
                            .file_writes
                            .with_label_values(&["success"])
                            .inc();
                        tracing::info!(file = %spec.name, expires_in = issued.expires_in, "token file written");
                        written = Some(token);
                        failing = false;
                    }
                    Err(e) => {
                        tokens
                            .metrics()
                            .file_writes
                            .with_label_values(&["error"])
                            .inc();
                        tracing::warn!(file = %spec.name, error = %e, "cannot write the token file");
                    }
                }
            }
            Ok(_) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::warn!(file = %spec.name, error = %e, "no token for the token file");
                }
                failing = true;
            }
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_name_audience_and_scopes() {
        let s: TokenSpec = "orders=https://orders.example.com,orders:write,orders:read"
            .parse()
            .unwrap();
        assert_eq!(s.name, "orders");
        assert_eq!(s.key.audience, "https://orders.example.com");
        assert_eq!(s.key.scopes, vec!["orders:read", "orders:write"]);
        let bare: TokenSpec = "a=aud".parse().unwrap();
        assert!(bare.key.scopes.is_empty());
        for bad in [
            "noequals",
            "=aud",
            "../x=aud",
            ".hidden=aud",
            "a/b=aud",
            "a=",
        ] {
            assert!(bad.parse::<TokenSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn writes_replace_the_file_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        write_atomically(dir.path(), "t", b"one").unwrap();
        write_atomically(dir.path(), "t", b"two").unwrap();
        assert_eq!(std::fs::read(dir.path().join("t")).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("t"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["t"], "no temporary file left behind");
    }
}
