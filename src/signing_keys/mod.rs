//! The operator's token-signing keys: their lifecycle as a pure plan over a list of records
//! kept in one operator-owned Secret (in `dev`, the same layout under the state dir).
//!
//! A new key is published (in the JWKS) `publish_ahead` before it signs anything, so every
//! verifier's cached JWKS knows it in time; a key that stopped signing stays published for
//! `retire_after` (the longest token lifetime plus skew), so every token it signed still
//! verifies. Several token-server replicas agree because they read the same records.

pub mod controller;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::crypto::{self, CryptoError, Jwk, KeyAlgorithm, SigningKey};

/// Secret key holding the records' metadata (no private material).
pub const INDEX_KEY: &str = "keys.json";
/// Name of the operator-owned Secret holding the keys.
pub const SECRET_NAME: &str = "s2s-signing-keys";

/// One signing key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    /// Key id (RFC 7638 thumbprint).
    pub kid: String,
    /// Algorithm.
    pub alg: KeyAlgorithm,
    /// Created, Unix seconds.
    pub created: u64,
    /// From when it signs, Unix seconds.
    pub activates_at: u64,
    /// From when it is no longer published, Unix seconds; set once a newer key signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retires_at: Option<u64>,
    /// The private key (PKCS#8 PEM); kept in its own Secret key, never in the index.
    #[serde(skip)]
    pub pem: String,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("created", &self.created)
            .field("activates_at", &self.activates_at)
            .field("retires_at", &self.retires_at)
            .finish_non_exhaustive()
    }
}

/// How keys are rotated.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Algorithm of new keys.
    pub algorithm: KeyAlgorithm,
    /// A new key every this long.
    pub rotate_every: Duration,
    /// How long a new key is published before it signs.
    pub publish_ahead: Duration,
    /// How long a key stays published after it stopped signing.
    pub retire_after: Duration,
}

/// Errors reading the stored keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The index is not valid JSON.
    #[error("{INDEX_KEY} is malformed: {0}")]
    Index(#[from] serde_json::Error),
    /// A key listed in the index is missing.
    #[error("private key {0} is missing")]
    Missing(String),
    /// A key does not parse.
    #[error("key {kid} is unusable: {source}")]
    Key {
        /// Which key.
        kid: String,
        /// Why.
        source: CryptoError,
    },
}

fn pem_key(kid: &str) -> String {
    format!("{kid}.pem")
}

/// Reads records from Secret data.
pub fn from_data(data: &BTreeMap<String, String>) -> Result<Vec<KeyRecord>, KeyStoreError> {
    let Some(index) = data.get(INDEX_KEY) else {
        return Ok(vec![]);
    };
    let mut records: Vec<KeyRecord> = serde_json::from_str(index)?;
    for r in &mut records {
        r.pem = data
            .get(&pem_key(&r.kid))
            .cloned()
            .ok_or_else(|| KeyStoreError::Missing(r.kid.clone()))?;
    }
    Ok(records)
}

/// Writes records as Secret data.
pub fn to_data(records: &[KeyRecord]) -> BTreeMap<String, String> {
    let mut data: BTreeMap<String, String> = records
        .iter()
        .map(|r| (pem_key(&r.kid), r.pem.clone()))
        .collect();
    data.insert(
        INDEX_KEY.to_owned(),
        serde_json::to_string_pretty(records).expect("records serialize"),
    );
    data
}

/// The records after housekeeping at `now`: retired keys dropped, a first or rotated key
/// added, keys that stopped signing given their retirement time. Returns whether anything
/// changed (so unchanged keys are never written).
pub fn plan(
    mut records: Vec<KeyRecord>,
    policy: &Policy,
    now: u64,
    generate: impl FnOnce(KeyAlgorithm) -> Result<crypto::GeneratedKey, CryptoError>,
) -> Result<(Vec<KeyRecord>, bool), CryptoError> {
    let before = records.clone();
    records.retain(|r| r.retires_at.is_none_or(|t| t > now));
    let newest = records.iter().max_by_key(|r| r.activates_at);
    let needs_new = match newest {
        None => true,
        Some(n) => {
            n.activates_at <= now
                && (now >= n.created + policy.rotate_every.as_secs() || n.alg != policy.algorithm)
        }
    };
    if needs_new {
        let key = generate(policy.algorithm)?;
        let ahead = if records.is_empty() {
            0
        } else {
            policy.publish_ahead.as_secs()
        };
        records.push(KeyRecord {
            kid: key.kid,
            alg: policy.algorithm,
            created: now,
            activates_at: now + ahead,
            retires_at: None,
            pem: key.private_pem,
        });
    }
    // Every key older than the signer stops signing when the signer started; retire it after
    // the longest-lived token it may have signed.
    if let Some(signer_start) = signer_record(&records, now).map(|s| s.activates_at) {
        for r in records
            .iter_mut()
            .filter(|r| r.activates_at < signer_start && r.retires_at.is_none())
        {
            r.retires_at = Some(signer_start + policy.retire_after.as_secs());
        }
    }
    let changed = records != before;
    Ok((records, changed))
}

fn signer_record(records: &[KeyRecord], now: u64) -> Option<&KeyRecord> {
    records
        .iter()
        .filter(|r| r.activates_at <= now)
        .max_by_key(|r| r.activates_at)
}

/// The key that signs at `now`, and the public keys to publish: every key not yet retired,
/// including one that does not sign yet.
pub fn keys_at(records: &[KeyRecord], now: u64) -> Result<(SigningKey, Vec<Jwk>), KeyStoreError> {
    let signer =
        signer_record(records, now).ok_or_else(|| KeyStoreError::Missing("active key".into()))?;
    let load = |r: &KeyRecord| {
        SigningKey::from_pem(r.alg, r.kid.clone(), &r.pem).map_err(|source| KeyStoreError::Key {
            kid: r.kid.clone(),
            source,
        })
    };
    let mut published = vec![];
    for r in records
        .iter()
        .filter(|r| r.retires_at.is_none_or(|t| t > now))
    {
        published.push(load(r)?.public_jwk());
    }
    Ok((load(signer)?, published))
}

/// When the plan should run again: the next activation, retirement or rotation.
pub fn next_change(records: &[KeyRecord], policy: &Policy, now: u64) -> Option<u64> {
    let mut times = vec![];
    for r in records {
        if r.activates_at > now {
            times.push(r.activates_at);
        }
        if let Some(t) = r.retires_at.filter(|t| *t > now) {
            times.push(t);
        }
    }
    if let Some(n) = records.iter().max_by_key(|r| r.activates_at) {
        times.push(n.created + policy.rotate_every.as_secs());
    }
    times.into_iter().filter(|t| *t > now).min()
}

/// When what [`keys_at`] answers next changes by itself (a key activates or retires): a
/// token server re-reads its keys then, even if the Secret did not change.
pub fn next_transition(records: &[KeyRecord], now: u64) -> Option<u64> {
    records
        .iter()
        .flat_map(|r| [Some(r.activates_at), r.retires_at])
        .flatten()
        .filter(|t| *t > now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            algorithm: KeyAlgorithm::ES256,
            rotate_every: Duration::from_secs(1000),
            publish_ahead: Duration::from_secs(100),
            retire_after: Duration::from_secs(500),
        }
    }

    fn step(records: Vec<KeyRecord>, now: u64) -> (Vec<KeyRecord>, bool) {
        plan(records, &policy(), now, crypto::generate_key).unwrap()
    }

    #[test]
    fn a_new_key_is_published_before_it_signs_and_the_old_one_outlives_its_tokens() {
        let (r, changed) = step(vec![], 0);
        assert!(changed);
        assert_eq!(r.len(), 1);
        let first = r[0].kid.clone();
        let (r, changed) = step(r, 500);
        assert!(!changed, "nothing to do mid-period");

        // Rotation due: the new key is published but the old one still signs.
        let (r, changed) = step(r, 1000);
        assert!(changed);
        assert_eq!(r.len(), 2);
        let (signer, published) = keys_at(&r, 1050).unwrap();
        assert_eq!(signer.kid(), first);
        assert_eq!(published.len(), 2);

        // The new key signs from 1100; the old stays published until 1100 + 500.
        let (r, _) = step(r, 1100);
        let (signer, published) = keys_at(&r, 1100).unwrap();
        assert_ne!(signer.kid(), first);
        assert_eq!(published.len(), 2);
        assert_eq!(
            r.iter().find(|k| k.kid == first).unwrap().retires_at,
            Some(1600)
        );
        assert_eq!(next_change(&r, &policy(), 1100), Some(1600));
        assert_eq!(next_transition(&r, 1100), Some(1600));

        let (r, _) = step(r, 1600);
        assert_eq!(r.len(), 1);
        assert!(r.iter().all(|k| k.kid != first));
    }

    #[test]
    fn records_round_trip_through_secret_data_without_private_keys_in_the_index() {
        let (r, _) = step(vec![], 0);
        let data = to_data(&r);
        assert!(!data[INDEX_KEY].contains("PRIVATE KEY"));
        assert_eq!(from_data(&data).unwrap(), r);
        assert!(!format!("{:?}", r[0]).contains("PRIVATE"));
    }
}
