//! YAML that YAML 1.1 readers (kubectl, Helm, client-go's sigs.k8s.io/yaml) read the same
//! way as YAML 1.2 ones (serde_yaml).
//!
//! serde_yaml emits YAML 1.2, where a bare `y` or `n` is a string. kubectl and Helm read YAML
//! 1.1, where `y`, `n`, `yes`, `no`, `on` and `off` (in any of their spellings) are booleans:
//! the JWK properties `y` and `n` of our CRDs arrived at the apiserver as `true` and `false`.
//! So every plain scalar that YAML 1.1 would read as a boolean, in key or value position, is
//! double-quoted; block scalars (descriptions) are left alone. The result is checked to mean
//! the same as what serde_yaml wrote.

use serde::Serialize;

/// The plain scalars YAML 1.1 reads as booleans but YAML 1.2 as strings (`true`/`false` are
/// booleans in both, and serde_yaml already quotes such strings).
const YAML_1_1_BOOLEANS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// Whether a plain scalar is read as a boolean by YAML 1.1 but not by YAML 1.2.
pub fn is_yaml_1_1_boolean(scalar: &str) -> bool {
    YAML_1_1_BOOLEANS.contains(&scalar)
}

/// Serializes `value` as YAML that YAML 1.1 and YAML 1.2 readers agree on.
pub fn to_string<T: Serialize>(value: &T) -> String {
    let plain = serde_yaml::to_string(value).expect("the value serializes to YAML");
    let quoted = quote_yaml_1_1_booleans(&plain);
    let before: serde_yaml::Value = serde_yaml::from_str(&plain).expect("serde_yaml reads itself");
    let after: serde_yaml::Value =
        serde_yaml::from_str(&quoted).expect("quoting keeps the YAML well-formed");
    assert_eq!(before, after, "quoting changed what the YAML means");
    quoted
}

/// Double-quotes every plain key or value of block-style YAML (as serde_yaml writes it) that
/// YAML 1.1 reads as a boolean. Lines inside block scalars are copied unchanged.
fn quote_yaml_1_1_booleans(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    // Indentation of the line that opened the block scalar we are in, if any.
    let mut block: Option<usize> = None;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let indent = body.len() - body.trim_start().len();
        if let Some(open) = block {
            if body.trim().is_empty() || indent > open {
                out.push_str(line);
                continue;
            }
            block = None;
        }
        let rewritten = quote_line(body);
        if opens_block_scalar(body) {
            block = Some(indent);
        }
        out.push_str(&rewritten);
        out.push_str(&line[body.len()..]);
    }
    out
}

fn opens_block_scalar(body: &str) -> bool {
    let Some(last) = body.trim_end().rsplit(' ').next() else {
        return false;
    };
    let mut chars = last.chars();
    matches!(chars.next(), Some('|' | '>'))
        && chars.all(|c| matches!(c, '-' | '+' | '1'..='9'))
        && (body.trim_end().len() > last.len() || body.trim_start() == last)
}

/// One line: `INDENT (- )* [KEY:] [VALUE]`, with KEY and VALUE quoted when ambiguous.
fn quote_line(body: &str) -> String {
    let indent = body.len() - body.trim_start().len();
    let mut rest = &body[indent..];
    let mut out = String::from(&body[..indent]);
    while let Some(after) = rest.strip_prefix("- ") {
        out.push_str("- ");
        rest = after;
    }
    if rest == "-" {
        out.push('-');
        return out;
    }
    // A plain key ends at the first ": " (or a trailing ':'); quoted keys and flow
    // collections are left as they are.
    let (key, value) = match rest.find(": ") {
        Some(i) if !rest.starts_with(['"', '\'', '{', '[']) => (Some(&rest[..i]), &rest[i + 2..]),
        _ if rest.ends_with(':') && !rest.starts_with(['"', '\'']) => {
            (Some(&rest[..rest.len() - 1]), "")
        }
        _ => (None, rest),
    };
    if let Some(key) = key {
        out.push_str(&quote_if_ambiguous(key));
        out.push(':');
        if !value.is_empty() {
            out.push(' ');
        }
    }
    out.push_str(&quote_if_ambiguous(value));
    out
}

fn quote_if_ambiguous(scalar: &str) -> String {
    if is_yaml_1_1_boolean(scalar) {
        format!("\"{scalar}\"")
    } else {
        scalar.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ambiguous_keys_and_values_are_quoted() {
        let v = json!({
            "y": "n",
            "list": ["yes", "Off", "x"],
            "nested": [{"n": "abc", "on": true}],
            "ok": "no way",
        });
        let text = to_string(&v);
        for bare in ["y:", "n:", "on:", "- yes", "- Off", ": n\n"] {
            assert!(!text.contains(&format!("\n{bare}")), "{bare} in\n{text}");
        }
        assert!(text.contains("\"y\": \"n\""), "{text}");
        assert!(text.contains("- \"yes\""), "{text}");
        assert!(text.contains("\"n\": abc"), "{text}");
        assert!(text.contains("\"on\": true"), "{text}");
        assert!(text.contains("ok: no way"), "{text}");
    }

    #[test]
    fn block_scalars_are_left_alone() {
        let v = json!({
            "description": "first line\ny: not a key\nn\n  indented",
            "y": "after",
        });
        let text = to_string(&v);
        assert!(text.contains("\n  y: not a key\n"), "{text}");
        assert!(text.contains("\n  n\n"), "{text}");
        assert!(text.contains("\"y\": after"), "{text}");
    }

    #[test]
    fn unambiguous_yaml_is_unchanged() {
        let v = json!({"kty": "EC", "x": "abc", "items": ["a", "b"], "yes_no": "maybe"});
        assert_eq!(to_string(&v), serde_yaml::to_string(&v).unwrap());
    }
}
