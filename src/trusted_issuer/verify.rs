//! Validation of external JWTs against the TrustedIssuers, as RFC 8725 asks: a size limit,
//! the issuer's own algorithm allowlist (never `none`, never HMAC), the key chosen by `kid`
//! among that issuer's keys and pinned to its algorithm family, the signature (by
//! `jsonwebtoken`), the exact `iss`, an accepted `aud`, `exp` required, `nbf` and `iat`
//! checked with the issuer's clock skew, and for Azure the calling application.
//!
//! [`Issuers`] is an immutable snapshot (configs plus parsed keys), rebuilt whole by the
//! runner whenever keys or TrustedIssuers change and swapped in by the token core; the
//! request path never touches the network. No `kube` here: the token core uses it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::crypto::{self, Jwk, JwsAlgorithm};

/// Longest external JWT accepted, in bytes.
pub const MAX_JWT_LEN: usize = 8 * 1024;

/// One TrustedIssuer as the verifier needs it (resolved from the spec by `resolve`).
#[derive(Clone, Debug)]
pub struct IssuerConfig {
    /// `namespace/name` of the TrustedIssuer.
    pub key: String,
    /// The exact accepted `iss` values (Azure: the v2 and v1 forms).
    pub issuers: Vec<String>,
    /// The accepted `aud` values; a token must carry at least one.
    pub audiences: Vec<String>,
    /// The signature algorithms accepted from this issuer.
    pub algorithms: Vec<JwsAlgorithm>,
    /// Tolerance for `exp`, `nbf` and `iat`.
    pub clock_skew: Duration,
    /// Azure: the token's `appid` or `azp` must equal this.
    pub required_app: Option<String>,
}

/// The keys currently in force for one issuer.
#[derive(Clone, Debug, Default)]
pub struct IssuerKeys {
    /// Public JWKs as the issuer published them.
    pub keys: Vec<Jwk>,
}

/// A validated external JWT.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    /// The [`IssuerConfig::key`] that accepted it.
    pub trusted_issuer: String,
    /// `iss`.
    pub iss: String,
    /// `sub`.
    pub sub: String,
    /// `aud`, as a list even when the token carries one string.
    pub aud: Vec<String>,
    /// `exp`, Unix seconds.
    pub exp: u64,
    /// `iat`, Unix seconds.
    pub iat: Option<u64>,
    /// `jti`.
    pub jti: Option<String>,
    /// Every claim, for subject and claim matching and `may_act`/`act`.
    pub claims: Map<String, Value>,
}

/// Why an external JWT was refused. Messages are safe to show a client: they never contain
/// the token or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Longer than [`MAX_JWT_LEN`].
    #[error("the JWT is longer than {MAX_JWT_LEN} bytes")]
    TooLarge,
    /// Not a JWS compact serialization, or a claim has the wrong type.
    #[error("malformed JWT: {0}")]
    Malformed(String),
    /// No TrustedIssuer accepts tokens from this `iss`.
    #[error("the JWT's issuer is not trusted")]
    UnknownIssuer,
    /// The header's `alg` is not in the issuer's allowlist (or is `none` or HMAC).
    #[error("signature algorithm {0} is not accepted from this issuer")]
    AlgorithmNotAllowed(String),
    /// No key of the issuer matches the header's `kid` and `alg`. The keys may have rotated:
    /// the caller should ask for a refresh of `trusted_issuer`.
    #[error("no key of the issuer matches the JWT's key id")]
    UnknownKid {
        /// The TrustedIssuer (`namespace/name`) whose keys were searched.
        trusted_issuer: String,
        /// The header's `kid`.
        kid: Option<String>,
    },
    /// The signature does not verify.
    #[error("the JWT's signature is invalid")]
    BadSignature,
    /// `iss` is not exactly one of this issuer's values.
    #[error("the JWT's issuer does not match")]
    WrongIssuer,
    /// No `aud` value is accepted by the issuer.
    #[error("the JWT's audience is not accepted")]
    WrongAudience,
    /// `exp` is past (beyond the clock skew).
    #[error("the JWT has expired")]
    Expired,
    /// `nbf` or `iat` is in the future (beyond the clock skew).
    #[error("the JWT is not yet valid")]
    NotYetValid,
    /// A required claim is absent.
    #[error("the JWT lacks the {0} claim")]
    MissingClaim(&'static str),
    /// Azure: `appid`/`azp` is not the configured application.
    #[error("the JWT was issued to another application")]
    WrongApplication,
}

impl VerifyError {
    /// How far validation got before failing: the highest rank is the most specific error,
    /// the one reported when several issuers refuse a token.
    fn specificity(&self) -> u8 {
        match self {
            VerifyError::TooLarge | VerifyError::Malformed(_) => 0,
            VerifyError::UnknownIssuer => 1,
            VerifyError::AlgorithmNotAllowed(_) => 2,
            VerifyError::UnknownKid { .. } => 3,
            VerifyError::BadSignature => 4,
            VerifyError::WrongIssuer => 5,
            VerifyError::MissingClaim(_) => 6,
            VerifyError::WrongAudience => 7,
            VerifyError::Expired | VerifyError::NotYetValid => 8,
            VerifyError::WrongApplication => 9,
        }
    }
}

/// The `jsonwebtoken` algorithm of an allowed JWS algorithm.
pub fn jwt_algorithm(alg: JwsAlgorithm) -> Algorithm {
    match alg {
        JwsAlgorithm::RS256 => Algorithm::RS256,
        JwsAlgorithm::RS384 => Algorithm::RS384,
        JwsAlgorithm::RS512 => Algorithm::RS512,
        JwsAlgorithm::PS256 => Algorithm::PS256,
        JwsAlgorithm::PS384 => Algorithm::PS384,
        JwsAlgorithm::PS512 => Algorithm::PS512,
        JwsAlgorithm::ES256 => Algorithm::ES256,
        JwsAlgorithm::ES384 => Algorithm::ES384,
        JwsAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// A public key parsed once, ready to verify.
#[derive(Clone, Debug)]
struct PreparedKey {
    kid: Option<String>,
    family: AlgorithmFamily,
    /// The one algorithm the JWK names (`alg`), if it names one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl PreparedKey {
    /// Parses a JWK. RSA keys may be used with any RSA algorithm the issuer allows unless
    /// their `alg` names one: [`crypto::decoding_key`] only knows `RS256`, so an RSA JWK
    /// naming another RSA algorithm is parsed without its `alg` and pinned to it here.
    fn new(jwk: &Jwk) -> Result<Self, crypto::CryptoError> {
        let named: Option<Algorithm> = jwk.alg.as_deref().and_then(|a| a.parse().ok());
        let rsa_other = jwk.kty == "RSA"
            && named.is_some_and(|a| a.family() == AlgorithmFamily::Rsa && a != Algorithm::RS256);
        let (key, alg) = if rsa_other {
            let bare = Jwk {
                alg: None,
                ..jwk.clone()
            };
            crypto::decoding_key(&bare)?
        } else {
            crypto::decoding_key(jwk)?
        };
        let family = alg.family();
        let pinned = match family {
            // A bare RSA key serves every allowed RSA algorithm.
            AlgorithmFamily::Rsa if jwk.alg.is_none() => None,
            AlgorithmFamily::Rsa => named,
            _ => Some(alg),
        };
        Ok(PreparedKey {
            kid: jwk.kid.clone(),
            family,
            alg: pinned,
            key,
        })
    }

    fn serves(&self, alg: Algorithm) -> bool {
        self.family == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

/// Parses every usable signing key of a JWK list; the others are counted, not kept.
pub fn usable_keys(keys: &[Jwk]) -> (Vec<Jwk>, usize) {
    let mut skipped = 0;
    let usable = keys
        .iter()
        .filter(|k| {
            let ok = PreparedKey::new(k).is_ok();
            skipped += usize::from(!ok);
            ok
        })
        .cloned()
        .collect();
    (usable, skipped)
}

#[derive(Debug)]
struct Entry {
    config: IssuerConfig,
    keys: Vec<PreparedKey>,
}

/// Every issuer's config and keys; cheap to clone (shared behind an `Arc`), swapped whole.
#[derive(Clone, Debug, Default)]
pub struct Issuers {
    entries: Arc<BTreeMap<String, Entry>>,
    /// `iss` value → the TrustedIssuers that accept it.
    by_iss: Arc<HashMap<String, Vec<String>>>,
}

/// The header members read before the signature is checked (to pick the key).
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
}

impl Issuers {
    /// Builds a snapshot, parsing every key once. Keys that are not usable signing keys are
    /// left out. A later entry with the same key replaces an earlier one.
    pub fn new(entries: Vec<(IssuerConfig, IssuerKeys)>) -> Self {
        let mut map = BTreeMap::new();
        for (config, keys) in entries {
            let keys = keys
                .keys
                .iter()
                .filter_map(|k| PreparedKey::new(k).ok())
                .collect();
            map.insert(config.key.clone(), Entry { config, keys });
        }
        let mut by_iss: HashMap<String, Vec<String>> = HashMap::new();
        for (key, entry) in &map {
            for iss in &entry.config.issuers {
                let list = by_iss.entry(iss.clone()).or_default();
                if !list.contains(key) {
                    list.push(key.clone());
                }
            }
        }
        Issuers {
            entries: Arc::new(map),
            by_iss: Arc::new(by_iss),
        }
    }

    /// No TrustedIssuer at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The TrustedIssuers (`namespace/name`), sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The config of one TrustedIssuer.
    pub fn config(&self, trusted_issuer: &str) -> Option<&IssuerConfig> {
        self.entries.get(trusted_issuer).map(|e| &e.config)
    }

    /// How many usable keys one TrustedIssuer has.
    pub fn key_count(&self, trusted_issuer: &str) -> usize {
        self.entries.get(trusted_issuer).map_or(0, |e| e.keys.len())
    }

    /// The TrustedIssuers that accept tokens with this exact `iss`.
    pub fn trusting(&self, iss: &str) -> &[String] {
        self.by_iss.get(iss).map_or(&[], Vec::as_slice)
    }

    /// The unverified `iss` of a JWT, to route it (never trusted for decisions).
    pub fn peek_issuer(jwt: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct Iss {
            iss: String,
        }
        if jwt.len() > MAX_JWT_LEN {
            return None;
        }
        jsonwebtoken::dangerous::insecure_decode_claims::<Iss>(jwt)
            .ok()
            .map(|c| c.iss)
    }

    /// Validates against ONE TrustedIssuer (by key `namespace/name`), following RFC 8725:
    /// size ≤ 8 KiB, header `alg` in that issuer's allowlist (never `none`, never HMAC), `kid`
    /// lookup (a key without `kid` matches only if it is the only key for that `alg`),
    /// signature, exact `iss`, `aud` ∩ audiences ≠ ∅, `exp` required, `nbf`/`iat` checked
    /// with the clock skew, the required application. `now` is Unix seconds.
    pub fn verify_with(
        &self,
        trusted_issuer: &str,
        jwt: &str,
        now: u64,
    ) -> Result<Verified, VerifyError> {
        if jwt.len() > MAX_JWT_LEN {
            return Err(VerifyError::TooLarge);
        }
        let entry = self
            .entries
            .get(trusted_issuer)
            .ok_or(VerifyError::UnknownIssuer)?;
        let config = &entry.config;

        let header = match jsonwebtoken::decode_header(jwt) {
            Ok(h) => h,
            // `none` and unknown names are not `jsonwebtoken` algorithms: say which.
            Err(_) => return Err(unreadable_header(jwt)),
        };
        let alg = header.alg;
        if !config.algorithms.iter().any(|a| jwt_algorithm(*a) == alg) {
            return Err(VerifyError::AlgorithmNotAllowed(format!("{alg:?}")));
        }
        let key = select_key(&entry.keys, header.kid.as_deref(), alg).ok_or_else(|| {
            VerifyError::UnknownKid {
                trusted_issuer: config.key.clone(),
                kid: header.kid.clone(),
            }
        })?;

        // Signature only: the claims are checked below against `now` and the config.
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(jwt, &key.key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => VerifyError::BadSignature,
                jsonwebtoken::errors::ErrorKind::Json(_) => {
                    VerifyError::Malformed("the claims are not a JSON object".into())
                }
                jsonwebtoken::errors::ErrorKind::Base64(_)
                | jsonwebtoken::errors::ErrorKind::Utf8(_) => {
                    VerifyError::Malformed("a segment is not base64url".into())
                }
                _ => VerifyError::BadSignature,
            })?
            .claims;

        check_claims(config, claims, now)
    }

    /// Validates against every TrustedIssuer whose `issuers` contain the token's (unverified)
    /// `iss`; returns each acceptance (TrustedIssuers in several namespaces may trust the
    /// same IdP), or the most specific error if none accepts.
    pub fn verify_any(&self, jwt: &str, now: u64) -> Result<Vec<Verified>, VerifyError> {
        let mut accepted = Vec::new();
        let mut best: Option<VerifyError> = None;
        for result in self.verify_each(jwt, now)? {
            match result {
                Ok(v) => accepted.push(v),
                Err(e) => {
                    if best
                        .as_ref()
                        .is_none_or(|b| e.specificity() > b.specificity())
                    {
                        best = Some(e);
                    }
                }
            }
        }
        if accepted.is_empty() {
            Err(best.unwrap_or(VerifyError::UnknownIssuer))
        } else {
            Ok(accepted)
        }
    }

    /// Like [`verify_any`](Self::verify_any) but with every TrustedIssuer's outcome, e.g. to
    /// request a key refresh for each one that answered [`VerifyError::UnknownKid`].
    pub fn verify_each(
        &self,
        jwt: &str,
        now: u64,
    ) -> Result<Vec<Result<Verified, VerifyError>>, VerifyError> {
        if jwt.len() > MAX_JWT_LEN {
            return Err(VerifyError::TooLarge);
        }
        let iss = Self::peek_issuer(jwt)
            .ok_or_else(|| VerifyError::Malformed("no readable iss claim".into()))?;
        let trusting = self.trusting(&iss);
        if trusting.is_empty() {
            return Err(VerifyError::UnknownIssuer);
        }
        Ok(trusting
            .iter()
            .map(|key| self.verify_with(key, jwt, now))
            .collect())
    }
}

/// The error for a header `jsonwebtoken` could not read: an algorithm it does not know
/// (`none`) if the header names one, else malformed.
fn unreadable_header(jwt: &str) -> VerifyError {
    let named = jwt
        .split('.')
        .next()
        .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|bytes| serde_json::from_slice::<RawHeader>(&bytes).ok());
    match named {
        Some(h) => VerifyError::AlgorithmNotAllowed(h.alg.chars().take(16).collect()),
        None => VerifyError::Malformed("unreadable JWT header".into()),
    }
}

/// The key for a header's `kid` and `alg`: the key with that `kid`; or, failing that, the
/// only key for that `alg` if it has no `kid` (or the token names none).
fn select_key<'a>(
    keys: &'a [PreparedKey],
    kid: Option<&str>,
    alg: Algorithm,
) -> Option<&'a PreparedKey> {
    let mut candidates = keys.iter().filter(|k| k.serves(alg));
    if let Some(kid) = kid
        && let Some(k) = keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid) && k.serves(alg))
    {
        return Some(k);
    }
    let only = candidates.next()?;
    if candidates.next().is_some() {
        return None;
    }
    (kid.is_none() || only.kid.is_none()).then_some(only)
}

/// A NumericDate claim (RFC 7519 §2): a non-negative number, fractions truncated.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, VerifyError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or_else(|| VerifyError::Malformed(format!("{name} is not a NumericDate"))),
    }
}

/// The claim checks after the signature: iss, sub, aud, exp/nbf/iat, application.
fn check_claims(
    config: &IssuerConfig,
    claims: Map<String, Value>,
    now: u64,
) -> Result<Verified, VerifyError> {
    let iss = match claims.get("iss") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(VerifyError::Malformed("iss is not a string".into())),
        None => return Err(VerifyError::MissingClaim("iss")),
    };
    if !config.issuers.contains(&iss) {
        return Err(VerifyError::WrongIssuer);
    }
    let sub = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None => return Err(VerifyError::MissingClaim("sub")),
        Some(_) => return Err(VerifyError::Malformed("sub is not a string".into())),
    };
    let aud: Vec<String> = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(values)) => values
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| VerifyError::Malformed("aud is not a string or strings".into()))?,
        Some(_) => {
            return Err(VerifyError::Malformed(
                "aud is not a string or strings".into(),
            ));
        }
        None => return Err(VerifyError::MissingClaim("aud")),
    };
    if !aud.iter().any(|a| config.audiences.contains(a)) {
        return Err(VerifyError::WrongAudience);
    }

    let skew = config.clock_skew.as_secs();
    let exp = numeric_date(&claims, "exp")?.ok_or(VerifyError::MissingClaim("exp"))?;
    if now >= exp.saturating_add(skew) {
        return Err(VerifyError::Expired);
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")?
        && nbf > now.saturating_add(skew)
    {
        return Err(VerifyError::NotYetValid);
    }
    let iat = numeric_date(&claims, "iat")?;
    if iat.is_some_and(|iat| iat > now.saturating_add(skew)) {
        return Err(VerifyError::NotYetValid);
    }

    if let Some(app) = &config.required_app {
        let presented = ["appid", "azp"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(Value::as_str));
        if presented != Some(app.as_str()) {
            return Err(VerifyError::WrongApplication);
        }
    }

    let jti = match claims.get("jti") {
        Some(Value::String(s)) => Some(s.clone()),
        None => None,
        Some(_) => return Err(VerifyError::Malformed("jti is not a string".into())),
    };
    Ok(Verified {
        trusted_issuer: config.key.clone(),
        iss,
        sub,
        aud,
        exp,
        iat,
        jti,
        claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyAlgorithm, SigningKey, generate_key, sign_jwt};
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;
    const ISS: &str = "https://idp.example.com";

    struct TestKey {
        signer: SigningKey,
        jwk: Jwk,
    }

    fn key(alg: KeyAlgorithm) -> TestKey {
        let generated = generate_key(alg).unwrap();
        let signer =
            SigningKey::from_pem(alg, generated.kid.clone(), &generated.private_pem).unwrap();
        TestKey {
            signer,
            jwk: generated.public_jwk,
        }
    }

    fn config(key: &str) -> IssuerConfig {
        IssuerConfig {
            key: key.into(),
            issuers: vec![ISS.into()],
            audiences: vec!["api://s2s".into()],
            algorithms: vec![JwsAlgorithm::RS256, JwsAlgorithm::ES256],
            clock_skew: Duration::from_secs(60),
            required_app: None,
        }
    }

    fn claims() -> Value {
        json!({"iss": ISS, "sub": "workload", "aud": "api://s2s", "exp": NOW + 300, "iat": NOW, "jti": "j1"})
    }

    fn issuers(keys: &[&TestKey]) -> Issuers {
        Issuers::new(vec![(
            config("ns/idp"),
            IssuerKeys {
                keys: keys.iter().map(|k| k.jwk.clone()).collect(),
            },
        )])
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn accepts_a_good_token_of_each_algorithm() {
        for alg in [KeyAlgorithm::ES256, KeyAlgorithm::RS256] {
            let k = key(alg);
            let set = issuers(&[&k]);
            let jwt = sign_jwt(&k.signer, "JWT", &claims()).unwrap();
            let v = set.verify_with("ns/idp", &jwt, NOW).unwrap();
            assert_eq!(v.trusted_issuer, "ns/idp");
            assert_eq!(v.iss, ISS);
            assert_eq!(v.sub, "workload");
            assert_eq!(v.aud, vec!["api://s2s".to_owned()]);
            assert_eq!(v.exp, NOW + 300);
            assert_eq!(v.iat, Some(NOW));
            assert_eq!(v.jti.as_deref(), Some("j1"));
            assert_eq!(v.claims["sub"], "workload");
            assert_eq!(set.verify_any(&jwt, NOW).unwrap(), vec![v]);
        }
    }

    #[test]
    fn refuses_alg_none() {
        let k = key(KeyAlgorithm::ES256);
        let set = issuers(&[&k]);
        let jwt = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&claims())
        );
        assert_eq!(
            set.verify_with("ns/idp", &jwt, NOW),
            Err(VerifyError::AlgorithmNotAllowed("none".into()))
        );
        assert!(set.verify_any(&jwt, NOW).is_err());
    }

    #[test]
    fn refuses_hs256_signed_with_the_public_key() {
        let k = key(KeyAlgorithm::RS256);
        let set = issuers(&[&k]);
        let secret = serde_json::to_vec(&k.jwk).unwrap();
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = k.jwk.kid.clone();
        let jwt = jsonwebtoken::encode(
            &header,
            &claims(),
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert_eq!(
            set.verify_with("ns/idp", &jwt, NOW),
            Err(VerifyError::AlgorithmNotAllowed("HS256".into()))
        );
        // Even an allowlist that somehow named it could not pair it with an RSA key.
        assert!(select_key(&set.entries["ns/idp"].keys, None, Algorithm::HS256).is_none());
    }

    #[test]
    fn refuses_an_algorithm_outside_the_issuers_allowlist() {
        let k = key(KeyAlgorithm::EdDSA);
        let set = issuers(&[&k]);
        let jwt = sign_jwt(&k.signer, "JWT", &claims()).unwrap();
        assert_eq!(
            set.verify_with("ns/idp", &jwt, NOW),
            Err(VerifyError::AlgorithmNotAllowed("EdDSA".into()))
        );
    }

    #[test]
    fn unknown_kid_names_the_issuer_and_kid() {
        let k = key(KeyAlgorithm::ES256);
        let other = key(KeyAlgorithm::ES256);
        let set = issuers(&[&k, &key(KeyAlgorithm::ES256)]);
        let jwt = sign_jwt(&other.signer, "JWT", &claims()).unwrap();
        assert_eq!(
            set.verify_with("ns/idp", &jwt, NOW),
            Err(VerifyError::UnknownKid {
                trusted_issuer: "ns/idp".into(),
                kid: Some(other.signer.kid().to_owned()),
            })
        );
    }

    #[test]
    fn a_key_without_kid_matches_only_if_it_is_the_only_one_for_the_alg() {
        let k = key(KeyAlgorithm::ES256);
        let mut bare = k.jwk.clone();
        bare.kid = None;
        let single = Issuers::new(vec![(
            config("ns/idp"),
            IssuerKeys {
                keys: vec![bare.clone(), key(KeyAlgorithm::RS256).jwk],
            },
        )]);
        let jwt = sign_jwt(&k.signer, "JWT", &claims()).unwrap();
        assert!(single.verify_with("ns/idp", &jwt, NOW).is_ok());

        let two = Issuers::new(vec![(
            config("ns/idp"),
            IssuerKeys {
                keys: vec![bare, key(KeyAlgorithm::ES256).jwk],
            },
        )]);
        assert!(matches!(
            two.verify_with("ns/idp", &jwt, NOW),
            Err(VerifyError::UnknownKid { .. })
        ));
    }

    #[test]
    fn bad_signature() {
        let k = key(KeyAlgorithm::ES256);
        let set = issuers(&[&k]);
        let jwt = sign_jwt(&k.signer, "JWT", &claims()).unwrap();
        let other = sign_jwt(
            &k.signer,
            "JWT",
            &json!({"iss": ISS, "sub": "admin", "aud": "api://s2s", "exp": NOW + 300}),
        )
        .unwrap();
        let forged: Vec<&str> = other.split('.').collect();
        let sig = jwt.rsplit('.').next().unwrap();
        let forged = format!("{}.{}.{}", forged[0], forged[1], sig);
        assert_eq!(
            set.verify_with("ns/idp", &forged, NOW),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn time_checks_use_the_clock_skew() {
        let k = key(KeyAlgorithm::ES256);
        let set = issuers(&[&k]);
        let with = |extra: Value| {
            let mut c = claims();
            for (n, v) in extra.as_object().unwrap() {
                c[n] = v.clone();
            }
            sign_jwt(&k.signer, "JWT", &c).unwrap()
        };
        // Expired 30s ago: within the 60s skew.
        assert!(
            set.verify_with("ns/idp", &with(json!({"exp": NOW - 30})), NOW)
                .is_ok()
        );
        assert_eq!(
            set.verify_with("ns/idp", &with(json!({"exp": NOW - 61})), NOW),
            Err(VerifyError::Expired)
        );
        assert_eq!(
            set.verify_with("ns/idp", &with(json!({"nbf": NOW + 120})), NOW),
            Err(VerifyError::NotYetValid)
        );
        assert!(
            set.verify_with("ns/idp", &with(json!({"nbf": NOW + 30})), NOW)
                .is_ok()
        );
        assert_eq!(
            set.verify_with("ns/idp", &with(json!({"iat": NOW + 120})), NOW),
            Err(VerifyError::NotYetValid)
        );
        let mut no_exp = claims();
        no_exp.as_object_mut().unwrap().remove("exp");
        let jwt = sign_jwt(&k.signer, "JWT", &no_exp).unwrap();
        assert_eq!(
            set.verify_with("ns/idp", &jwt, NOW),
            Err(VerifyError::MissingClaim("exp"))
        );
        assert!(matches!(
            set.verify_with("ns/idp", &with(json!({"exp": "soon"})), NOW),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn audience_and_issuer_must_match() {
        let k = key(KeyAlgorithm::ES256);
        let set = issuers(&[&k]);
        let sign = |c: Value| sign_jwt(&k.signer, "JWT", &c).unwrap();
        let mut c = claims();
        c["aud"] = json!(["other", "api://s2s"]);
        assert!(set.verify_with("ns/idp", &sign(c.clone()), NOW).is_ok());
        c["aud"] = json!(["other"]);
        assert_eq!(
            set.verify_with("ns/idp", &sign(c.clone()), NOW),
            Err(VerifyError::WrongAudience)
        );
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(
            set.verify_with("ns/idp", &sign(c), NOW),
            Err(VerifyError::MissingClaim("aud"))
        );

        let mut c = claims();
        c["iss"] = json!(format!("{ISS}/"));
        let jwt = sign(c);
        assert_eq!(
            set.verify_with("ns/idp", &jwt, NOW),
            Err(VerifyError::WrongIssuer)
        );
        assert_eq!(set.verify_any(&jwt, NOW), Err(VerifyError::UnknownIssuer));
        assert_eq!(
            set.verify_with("ns/nope", &jwt, NOW),
            Err(VerifyError::UnknownIssuer)
        );
    }

    #[test]
    fn oversized_and_malformed() {
        let k = key(KeyAlgorithm::ES256);
        let set = issuers(&[&k]);
        let mut c = claims();
        c["pad"] = json!("x".repeat(MAX_JWT_LEN));
        let jwt = sign_jwt(&k.signer, "JWT", &c).unwrap();
        assert_eq!(
            set.verify_with("ns/idp", &jwt, NOW),
            Err(VerifyError::TooLarge)
        );
        assert_eq!(set.verify_any(&jwt, NOW), Err(VerifyError::TooLarge));
        assert!(matches!(
            set.verify_with("ns/idp", "not a jwt", NOW),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            set.verify_any("a.b.c", NOW),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn azure_application_via_appid_or_azp() {
        let k = key(KeyAlgorithm::RS256);
        let app = "11111111-2222-3333-4444-555555555555";
        let mut cfg = config("ns/azure");
        cfg.issuers = vec![
            "https://login.microsoftonline.com/t/v2.0".into(),
            "https://sts.windows.net/t/".into(),
        ];
        cfg.required_app = Some(app.into());
        let set = Issuers::new(vec![(
            cfg,
            IssuerKeys {
                keys: vec![k.jwk.clone()],
            },
        )]);
        let sign = |c: Value| sign_jwt(&k.signer, "JWT", &c).unwrap();
        let base = json!({"sub": "s", "aud": "api://s2s", "exp": NOW + 60});
        let mut v1 = base.clone();
        v1["iss"] = json!("https://sts.windows.net/t/");
        v1["appid"] = json!(app);
        assert!(set.verify_with("ns/azure", &sign(v1.clone()), NOW).is_ok());
        let mut v2 = base.clone();
        v2["iss"] = json!("https://login.microsoftonline.com/t/v2.0");
        v2["azp"] = json!(app);
        assert!(set.verify_any(&sign(v2.clone()), NOW).is_ok());
        v2["azp"] = json!("99999999-2222-3333-4444-555555555555");
        assert_eq!(
            set.verify_with("ns/azure", &sign(v2), NOW),
            Err(VerifyError::WrongApplication)
        );
        v1.as_object_mut().unwrap().remove("appid");
        assert_eq!(
            set.verify_with("ns/azure", &sign(v1), NOW),
            Err(VerifyError::WrongApplication)
        );
    }

    #[test]
    fn verify_any_returns_every_acceptance_and_the_most_specific_error() {
        let k = key(KeyAlgorithm::ES256);
        let mut other_aud = config("b/idp");
        other_aud.audiences = vec!["api://other".into()];
        let set = Issuers::new(vec![
            (
                config("a/idp"),
                IssuerKeys {
                    keys: vec![k.jwk.clone()],
                },
            ),
            (
                other_aud,
                IssuerKeys {
                    keys: vec![k.jwk.clone()],
                },
            ),
            (config("c/idp"), IssuerKeys::default()),
        ]);
        assert_eq!(set.trusting(ISS).len(), 3);
        let jwt = sign_jwt(&k.signer, "JWT", &claims()).unwrap();
        let accepted = set.verify_any(&jwt, NOW).unwrap();
        assert_eq!(accepted.len(), 1);
        assert_eq!(accepted[0].trusted_issuer, "a/idp");

        let mut c = claims();
        c["aud"] = json!("api://other");
        c["exp"] = json!(NOW - 3600);
        let jwt = sign_jwt(&k.signer, "JWT", &c).unwrap();
        // a: wrong audience; b: expired; c: no key. Expired got furthest.
        assert_eq!(set.verify_any(&jwt, NOW), Err(VerifyError::Expired));
        let each = set.verify_each(&jwt, NOW).unwrap();
        assert!(each.iter().any(|r| matches!(r, Err(VerifyError::UnknownKid { trusted_issuer, .. }) if trusted_issuer == "c/idp")));
    }

    #[test]
    fn unusable_keys_are_skipped_and_counted() {
        let k = key(KeyAlgorithm::ES256);
        let oct = Jwk {
            kty: "oct".into(),
            ..Jwk::default()
        };
        let (usable, skipped) = usable_keys(&[k.jwk.clone(), oct]);
        assert_eq!((usable.len(), skipped), (1, 1));
    }

    #[test]
    fn peek_issuer_reads_without_verifying() {
        let jwt = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims()));
        assert_eq!(Issuers::peek_issuer(&jwt).as_deref(), Some(ISS));
        assert_eq!(Issuers::peek_issuer("garbage"), None);
    }

    /// Every algorithm the TrustedIssuer schema offers, with a compile-time check that none
    /// is forgotten here when one is added there.
    fn every_schema_algorithm() -> [JwsAlgorithm; 9] {
        let all = [
            JwsAlgorithm::RS256,
            JwsAlgorithm::RS384,
            JwsAlgorithm::RS512,
            JwsAlgorithm::PS256,
            JwsAlgorithm::PS384,
            JwsAlgorithm::PS512,
            JwsAlgorithm::ES256,
            JwsAlgorithm::ES384,
            JwsAlgorithm::EdDSA,
        ];
        for a in all {
            match a {
                JwsAlgorithm::RS256
                | JwsAlgorithm::RS384
                | JwsAlgorithm::RS512
                | JwsAlgorithm::PS256
                | JwsAlgorithm::PS384
                | JwsAlgorithm::PS512
                | JwsAlgorithm::ES256
                | JwsAlgorithm::ES384
                | JwsAlgorithm::EdDSA => {}
            }
        }
        all
    }

    /// A P-384 key as an IdP would publish it, and its PKCS#8 DER, from aws-lc-rs (the
    /// operator never generates one).
    fn p384_key() -> (Jwk, Vec<u8>) {
        use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let pair = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref();
        let (x, y) = point[1..].split_at(48);
        let mut jwk = Jwk {
            kty: "EC".into(),
            crv: Some("P-384".into()),
            x: Some(URL_SAFE_NO_PAD.encode(x)),
            y: Some(URL_SAFE_NO_PAD.encode(y)),
            alg: Some("ES384".into()),
            use_: Some("sig".into()),
            ..Jwk::default()
        };
        jwk.kid = Some(crypto::thumbprint(&jwk).unwrap());
        let der = pair.to_pkcs8v1().unwrap().as_ref().to_vec();
        (jwk, der)
    }

    #[test]
    fn accepts_es384_from_a_p384_key_only_when_allowed() {
        let (jwk, der) = p384_key();
        let mut header = jsonwebtoken::Header::new(Algorithm::ES384);
        header.kid = jwk.kid.clone();
        let jwt = jsonwebtoken::encode(
            &header,
            &claims(),
            &jsonwebtoken::EncodingKey::from_ec_der(&der),
        )
        .unwrap();
        let es256 = key(KeyAlgorithm::ES256);
        let keys = IssuerKeys {
            keys: vec![es256.jwk.clone(), jwk.clone()],
        };
        assert_eq!(usable_keys(&keys.keys), (keys.keys.clone(), 0));

        let mut allowed = config("ns/idp");
        allowed.algorithms.push(JwsAlgorithm::ES384);
        let set = Issuers::new(vec![(allowed, keys.clone())]);
        let v = set.verify_with("ns/idp", &jwt, NOW).unwrap();
        assert_eq!(v.sub, "workload");

        // Not in the allowlist: refused although the key is there.
        let set = Issuers::new(vec![(config("ns/idp"), keys)]);
        assert!(matches!(
            set.verify_with("ns/idp", &jwt, NOW),
            Err(VerifyError::AlgorithmNotAllowed(_))
        ));

        // An ES384 header on a P-256 key's kid finds no key: curves are never mixed.
        let mut lying = jsonwebtoken::Header::new(Algorithm::ES384);
        lying.kid = Some(es256.signer.kid().to_owned());
        let forged = jsonwebtoken::encode(
            &lying,
            &claims(),
            &jsonwebtoken::EncodingKey::from_ec_der(&der),
        )
        .unwrap();
        let mut allowed = config("ns/idp");
        allowed.algorithms.push(JwsAlgorithm::ES384);
        let set = Issuers::new(vec![(
            allowed,
            IssuerKeys {
                keys: vec![es256.jwk.clone()],
            },
        )]);
        assert!(matches!(
            set.verify_with("ns/idp", &forged, NOW),
            Err(VerifyError::UnknownKid { .. })
        ));
    }

    /// No algorithm the schema accepts is silently dead: for each one there is a key type
    /// that verifies it (RSA keys, published with or without `alg`, for the RS and PS
    /// families).
    #[test]
    fn every_schema_algorithm_verifies_with_a_key_of_its_kind() {
        let rsa = generate_key(KeyAlgorithm::RS256).unwrap();
        let es256 = generate_key(KeyAlgorithm::ES256).unwrap();
        let ed = generate_key(KeyAlgorithm::EdDSA).unwrap();
        let (p384, p384_der) = p384_key();
        for schema_alg in every_schema_algorithm() {
            let alg = jwt_algorithm(schema_alg);
            let (encoding, mut jwk) = match schema_alg {
                JwsAlgorithm::ES256 => (
                    jsonwebtoken::EncodingKey::from_ec_pem(es256.private_pem.as_bytes()).unwrap(),
                    es256.public_jwk.clone(),
                ),
                JwsAlgorithm::ES384 => (
                    jsonwebtoken::EncodingKey::from_ec_der(&p384_der),
                    p384.clone(),
                ),
                JwsAlgorithm::EdDSA => (
                    jsonwebtoken::EncodingKey::from_ed_pem(ed.private_pem.as_bytes()).unwrap(),
                    ed.public_jwk.clone(),
                ),
                _ => (
                    jsonwebtoken::EncodingKey::from_rsa_pem(rsa.private_pem.as_bytes()).unwrap(),
                    rsa.public_jwk.clone(),
                ),
            };
            // As published with its `alg`, and without one (RSA keys then serve the family).
            for named in [true, false] {
                jwk.alg = named.then(|| format!("{alg:?}"));
                let mut cfg = config("ns/idp");
                cfg.algorithms = vec![schema_alg];
                let set = Issuers::new(vec![(
                    cfg,
                    IssuerKeys {
                        keys: vec![jwk.clone()],
                    },
                )]);
                let mut header = jsonwebtoken::Header::new(alg);
                header.kid = jwk.kid.clone();
                let jwt = jsonwebtoken::encode(&header, &claims(), &encoding).unwrap();
                let v = set
                    .verify_with("ns/idp", &jwt, NOW)
                    .unwrap_or_else(|e| panic!("{schema_alg:?} (alg named: {named}): {e}"));
                assert_eq!(v.sub, "workload");
            }
        }
    }
}
