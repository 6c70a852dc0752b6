//! The layout of a credentials Secret (DESIGN.md "Secret layout") and reading credentials
//! back out of one.
//!
//! Keys: `client_id`, `client_secret` or `private_key.pem` / `private_key.jwk` / `key_id`,
//! `token_url`, `issuer`, `credentials.json`, and `ca.crt` when the operator issues the token
//! server's certificate; during a grace period also
//! `client_secret.previous` or `private_key.pem.previous` / `private_key.jwk.previous` /
//! `key_id.previous`.

use std::collections::BTreeMap;

use serde_json::json;

use super::{Context, Material};
use crate::api::KeyAlgorithm;
use crate::api::service_account::{CredentialType, CredentialVerifier};
use crate::crypto::{self, SigningKey};

/// Key names in a credentials Secret.
pub mod keys {
    /// The client id.
    pub const CLIENT_ID: &str = "client_id";
    /// The client secret.
    pub const CLIENT_SECRET: &str = "client_secret";
    /// The private key, PKCS#8 PEM.
    pub const PRIVATE_KEY_PEM: &str = "private_key.pem";
    /// The private key as a JWK.
    pub const PRIVATE_KEY_JWK: &str = "private_key.jwk";
    /// The key id to put in assertions' `kid`.
    pub const KEY_ID: &str = "key_id";
    /// The token endpoint.
    pub const TOKEN_URL: &str = "token_url";
    /// The issuer.
    pub const ISSUER: &str = "issuer";
    /// Everything above as one JSON document.
    pub const CREDENTIALS_JSON: &str = "credentials.json";
    /// The CAs to trust for the token URL (PEM).
    pub const CA: &str = "ca.crt";
    /// Suffix of the rotated-out credential's keys during the grace period.
    pub const PREVIOUS: &str = ".previous";
}

fn previous(key: &str) -> String {
    format!("{key}{}", keys::PREVIOUS)
}

/// The Secret data for the current (and, during grace, previous) credential.
pub(super) fn build(
    client_id: &str,
    ctx: &Context<'_>,
    current: &Material,
    prev: Option<&Material>,
) -> BTreeMap<String, String> {
    let token_url = ctx.token_url();
    let mut d = BTreeMap::new();
    d.insert(keys::CLIENT_ID.to_owned(), client_id.to_owned());
    d.insert(keys::TOKEN_URL.to_owned(), token_url.clone());
    d.insert(keys::ISSUER.to_owned(), ctx.issuer.to_owned());
    if let Some(ca) = ctx.ca_bundle {
        d.insert(keys::CA.to_owned(), ca.to_owned());
    }
    let doc = match current {
        Material::Secret(s) => {
            d.insert(keys::CLIENT_SECRET.to_owned(), s.clone());
            json!({
                "type": "client_secret",
                "client_id": client_id,
                "client_secret": s,
                "token_url": token_url,
                "issuer": ctx.issuer,
            })
        }
        Material::Key { kid, pem, jwk, alg } => {
            d.insert(keys::PRIVATE_KEY_PEM.to_owned(), pem.clone());
            d.insert(keys::PRIVATE_KEY_JWK.to_owned(), jwk.clone());
            d.insert(keys::KEY_ID.to_owned(), kid.clone());
            json!({
                "type": "private_key_jwt",
                "client_id": client_id,
                "key_id": kid,
                "algorithm": alg.jws_name(),
                "private_key": pem,
                "token_url": token_url,
                "issuer": ctx.issuer,
            })
        }
    };
    match prev {
        Some(Material::Secret(s)) => {
            d.insert(previous(keys::CLIENT_SECRET), s.clone());
        }
        Some(Material::Key { kid, pem, jwk, .. }) => {
            d.insert(previous(keys::PRIVATE_KEY_PEM), pem.clone());
            d.insert(previous(keys::PRIVATE_KEY_JWK), jwk.clone());
            d.insert(previous(keys::KEY_ID), kid.clone());
        }
        None => {}
    }
    d.insert(
        keys::CREDENTIALS_JSON.to_owned(),
        serde_json::to_string_pretty(&doc).expect("JSON"),
    );
    d
}

/// The current credential's material, if the Secret still holds exactly it.
pub(super) fn read_current(
    ty: CredentialType,
    v: &CredentialVerifier,
    data: Option<&BTreeMap<String, String>>,
    alg: Option<KeyAlgorithm>,
) -> Option<Material> {
    read(ty, v, data?, "", alg)
}

/// The previous credential's material, if the Secret still holds exactly it.
pub(super) fn read_previous(
    ty: CredentialType,
    v: &CredentialVerifier,
    data: Option<&BTreeMap<String, String>>,
) -> Option<Material> {
    read(ty, v, data?, keys::PREVIOUS, None)
}

fn read(
    ty: CredentialType,
    v: &CredentialVerifier,
    data: &BTreeMap<String, String>,
    suffix: &str,
    wanted: Option<KeyAlgorithm>,
) -> Option<Material> {
    let get = |k: &str| data.get(&format!("{k}{suffix}"));
    match ty {
        CredentialType::ClientSecret => {
            let s = get(keys::CLIENT_SECRET)?;
            crypto::verify_secret(s, v.secret_digest.as_deref()?)
                .then(|| Material::Secret(s.clone()))
        }
        CredentialType::PrivateKey => {
            let public = v.public_key.as_ref()?;
            let alg = public
                .alg
                .as_deref()
                .and_then(KeyAlgorithm::from_jws_name)
                .or(wanted)?;
            let kid = get(keys::KEY_ID)?;
            let pem = get(keys::PRIVATE_KEY_PEM)?;
            let key = SigningKey::from_pem(alg, kid.clone(), pem).ok()?;
            let same = kid == &v.id && same_public_key(&key.public_jwk(), public);
            same.then(|| Material::Key {
                kid: kid.clone(),
                pem: pem.clone(),
                jwk: get(keys::PRIVATE_KEY_JWK).cloned().unwrap_or_default(),
                alg,
            })
        }
    }
}

/// A credential found in a Secret this account controls while its status does not know it:
/// the status was lost (a restore from backup restores no status) or its write failed after
/// the Secret was written. The material is adopted with a fresh verifier rather than
/// regenerated, because workloads may already use it.
pub(super) fn adopt(
    ty: CredentialType,
    data: Option<&BTreeMap<String, String>>,
    alg: Option<KeyAlgorithm>,
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> Option<(CredentialVerifier, Material)> {
    let data = data?;
    match ty {
        CredentialType::ClientSecret => {
            let s = data.get(keys::CLIENT_SECRET)?;
            if s.is_empty() {
                return None;
            }
            let v = CredentialVerifier {
                id: crypto::random_token_id(),
                type_: ty,
                created: now,
                not_after: None,
                secret_digest: Some(crypto::secret_digest(s)),
                public_key: None,
            };
            Some((v, Material::Secret(s.clone())))
        }
        CredentialType::PrivateKey => {
            let alg = alg.unwrap_or_default();
            let kid = data.get(keys::KEY_ID)?;
            let pem = data.get(keys::PRIVATE_KEY_PEM)?;
            let key = SigningKey::from_pem(alg, kid.clone(), pem).ok()?;
            let v = CredentialVerifier {
                id: kid.clone(),
                type_: ty,
                created: now,
                not_after: None,
                secret_digest: None,
                public_key: Some(key.public_jwk()),
            };
            let jwk = data.get(keys::PRIVATE_KEY_JWK).cloned().unwrap_or_default();
            Some((
                v,
                Material::Key {
                    kid: kid.clone(),
                    pem: pem.clone(),
                    jwk,
                    alg,
                },
            ))
        }
    }
}

fn same_public_key(a: &crypto::Jwk, b: &crypto::Jwk) -> bool {
    a.kty == b.kty && a.crv == b.crv && a.x == b.x && a.y == b.y && a.n == b.n && a.e == b.e
}
