//! The deny list as data, with no Kubernetes in it: entries, their keys, matching and
//! expiry. It lives in the token core, which reads it on every introspection; where it is
//! stored is someone else's concern (a ConfigMap in `crate::revocation`, files in `dev`).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Every token for `sub` at `audience` issued at or before `before` is void until `until`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRevocation {
    /// The tokens' `sub`.
    pub sub: String,
    /// The tokens' `aud`.
    pub audience: String,
    /// Unix seconds: tokens issued (`iat`) at or before this are void.
    pub before: u64,
    /// Unix seconds: after this no such token can still be valid.
    pub until: u64,
}

/// The deny list as the token core reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DenyList {
    jtis: HashMap<String, u64>,
    grants: HashMap<(String, String), (u64, u64)>,
}

/// The ConfigMap key of a revoked token.
pub fn jti_key(jti: &str) -> Option<String> {
    let ok = !jti.is_empty()
        && jti.len() <= 200
        && jti
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    ok.then(|| format!("j.{jti}"))
}

/// The ConfigMap key of a grant revocation (a digest: subjects and audiences may hold any
/// character).
pub fn grant_key(sub: &str, audience: &str) -> String {
    let digest = crate::crypto::secret_digest(&format!("{sub}\u{0}{audience}"));
    format!("g.{}", digest.trim_start_matches("sha256:"))
}

impl DenyList {
    /// Reads the ConfigMap's data; malformed entries are skipped.
    pub fn from_data(data: &BTreeMap<String, String>) -> Self {
        let mut list = Self::default();
        for (k, v) in data {
            if let Some(jti) = k.strip_prefix("j.") {
                if let Ok(exp) = v.parse() {
                    list.jtis.insert(jti.to_owned(), exp);
                }
            } else if k.starts_with("g.")
                && let Ok(g) = serde_json::from_str::<GrantRevocation>(v)
            {
                let e = list
                    .grants
                    .entry((g.sub, g.audience))
                    .or_insert((g.before, g.until));
                e.0 = e.0.max(g.before);
                e.1 = e.1.max(g.until);
            }
        }
        list
    }

    /// Adds a revoked token (also used by `dev`, which has no API).
    pub fn add_jti(&mut self, jti: &str, exp: u64) {
        self.jtis.insert(jti.to_owned(), exp);
    }

    /// Whether a token is void: its `jti` is listed, or a grant revocation covers its
    /// subject, audience and issue time.
    pub fn denies(&self, jti: &str, sub: &str, audience: &str, iat: u64, now: u64) -> bool {
        if self.jtis.get(jti).is_some_and(|exp| *exp >= now) {
            return true;
        }
        self.grants
            .get(&(sub.to_owned(), audience.to_owned()))
            .is_some_and(|(before, until)| iat <= *before && *until >= now)
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.jtis.len() + self.grants.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keys of entries that can no longer match a live token.
pub fn expired_keys(data: &BTreeMap<String, String>, now: u64) -> Vec<String> {
    data.iter()
        .filter(|(k, v)| {
            if k.starts_with("j.") {
                v.parse::<u64>().map_or(true, |exp| exp < now)
            } else if k.starts_with("g.") {
                serde_json::from_str::<GrantRevocation>(v).map_or(true, |g| g.until < now)
            } else {
                false
            }
        })
        .map(|(k, _)| k.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_match_and_expire() {
        let g = GrantRevocation {
            sub: "client-1".into(),
            audience: "https://orders".into(),
            before: 1000,
            until: 5000,
        };
        let mut data = BTreeMap::new();
        data.insert(jti_key("abc_DEF-1").unwrap(), "2000".into());
        data.insert(
            grant_key(&g.sub, &g.audience),
            serde_json::to_string(&g).unwrap(),
        );
        data.insert("g.garbage".into(), "not json".into());
        let list = DenyList::from_data(&data);
        assert_eq!(list.len(), 2);
        // The listed token, until its exp.
        assert!(list.denies("abc_DEF-1", "x", "y", 0, 1500));
        assert!(!list.denies("abc_DEF-1", "x", "y", 0, 2001));
        // Grant revocation: tokens issued up to `before`, until `until`.
        assert!(list.denies("other", "client-1", "https://orders", 1000, 1200));
        assert!(
            !list.denies("other", "client-1", "https://orders", 1001, 1200),
            "issued after"
        );
        assert!(
            !list.denies("other", "client-1", "https://billing", 900, 1200),
            "another audience"
        );
        assert!(
            !list.denies("other", "client-2", "https://orders", 900, 1200),
            "another subject"
        );
        assert!(
            !list.denies("other", "client-1", "https://orders", 900, 5001),
            "window over"
        );
        // Pruning.
        assert_eq!(expired_keys(&data, 1500), vec!["g.garbage".to_owned()]);
        let mut later = expired_keys(&data, 6000);
        later.sort();
        assert_eq!(later.len(), 3);
        // Keys are valid ConfigMap keys whatever the subject holds.
        let k = grant_key("system:serviceaccount:ns:x", "https://a/b?c");
        assert!(
            k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)),
            "{k}"
        );
        assert!(jti_key("has/slash").is_none());
        assert!(jti_key("").is_none());
    }
}
