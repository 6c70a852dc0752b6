//! Scope algebra: what a token may carry.
//!
//! Scopes are RFC 6749 scope tokens, by convention colon-separated segments. In an account's
//! ceiling or a grant, a trailing `*` covers every scope that starts with what precedes it:
//! `fr:idc:esv:*` covers `fr:idc:esv:read` but not `fr:idc:esvx`, and `fr:am*` covers
//! `fr:am:config` (the seeds' own notation). Requested scopes are always concrete.

/// Whether the ceiling or grant entry `pattern` covers the concrete scope `scope`.
pub fn covers(pattern: &str, scope: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => scope.len() > prefix.len() && scope.starts_with(prefix),
        None => pattern == scope,
    }
}

fn covered_by_any(patterns: &[String], scope: &str) -> bool {
    patterns.iter().any(|p| covers(p, scope))
}

/// The scopes a token gets.
///
/// * `requested`: the request's `scope` values (empty: none requested).
/// * `ceiling`: the account's `spec.scopes`.
/// * `granted`: the union of the applicable grants' `spec.scopes`.
/// * `defined`: the scopes the API defines (`spec.api.scopes`); empty when it defines none.
///
/// With scopes requested, every one must be covered by the ceiling and a grant (and defined
/// by the API if it defines any), else the whole request fails with the first scope that is
/// not. With none requested, the token carries every scope that survives: the API's defined
/// scopes, or else the grants' concrete scopes, covered by both.
pub fn resolve(
    requested: &[&str],
    ceiling: &[String],
    granted: &[String],
    defined: &[String],
) -> Result<Vec<String>, String> {
    let allowed = |s: &str| {
        !s.contains('*')
            && covered_by_any(ceiling, s)
            && covered_by_any(granted, s)
            && (defined.is_empty() || defined.iter().any(|d| d == s))
    };
    let mut out: Vec<String> = Vec::new();
    if requested.is_empty() {
        let candidates: Vec<&String> = if defined.is_empty() {
            granted.iter().filter(|g| !g.ends_with('*')).collect()
        } else {
            defined.iter().collect()
        };
        for c in candidates {
            if allowed(c) && !out.contains(c) {
                out.push(c.clone());
            }
        }
    } else {
        for r in requested {
            if !allowed(r) {
                return Err((*r).to_owned());
            }
            if !out.iter().any(|o| o == r) {
                out.push((*r).to_owned());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn wildcards_cover_subtrees_only() {
        assert!(covers("fr:idc:esv:*", "fr:idc:esv:read"));
        assert!(covers("fr:idc:esv:*", "fr:idc:esv:read:all"));
        assert!(!covers("fr:idc:esv:*", "fr:idc:esvx"));
        assert!(!covers("fr:idc:esv:*", "fr:idc:esv:"));
        assert!(!covers("fr:idc:esv:*", "fr:idc:esv"));
        assert!(covers("fr:am*", "fr:am:config"));
        assert!(covers("orders:read", "orders:read"));
        assert!(!covers("orders:read", "orders:readx"));
    }

    #[test]
    fn requested_scopes_must_survive_ceiling_grant_and_api() {
        let ceiling = v(&["orders:*"]);
        let granted = v(&["orders:read", "orders:write"]);
        let defined = v(&["orders:read", "orders:write", "orders:admin"]);
        assert_eq!(
            resolve(&["orders:read"], &ceiling, &granted, &defined),
            Ok(v(&["orders:read"]))
        );
        assert_eq!(
            resolve(&["orders:admin"], &ceiling, &granted, &defined),
            Err("orders:admin".into())
        );
        assert_eq!(
            resolve(
                &["orders:read", "billing:read"],
                &ceiling,
                &granted,
                &defined
            ),
            Err("billing:read".into())
        );
        // A wildcard is never a requested scope.
        assert_eq!(
            resolve(&["orders:*"], &ceiling, &v(&["orders:*"]), &[]),
            Err("orders:*".into())
        );
        // Duplicates collapse.
        assert_eq!(
            resolve(
                &["orders:read", "orders:read"],
                &ceiling,
                &granted,
                &defined
            ),
            Ok(v(&["orders:read"]))
        );
    }

    #[test]
    fn without_a_request_every_surviving_scope_is_given() {
        let defined = v(&["a:read", "a:write", "a:admin"]);
        assert_eq!(
            resolve(&[], &v(&["a:read", "a:admin"]), &v(&["a:*"]), &defined),
            Ok(v(&["a:read", "a:admin"]))
        );
        // An API that defines no scopes: the grants' concrete scopes under the ceiling.
        assert_eq!(
            resolve(&[], &v(&["a:*"]), &v(&["a:read", "b:read", "a:*"]), &[]),
            Ok(v(&["a:read"]))
        );
        assert_eq!(resolve(&[], &[], &v(&["a:read"]), &[]), Ok(vec![]));
    }
}
