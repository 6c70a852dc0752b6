//! The workload's credentials, read from the mounted Secret folder (DESIGN.md "Secret
//! layout") or, for a federated account, from the pod's projected service-account token, and
//! turned into the client authentication of one token request.
//!
//! Nothing is cached: the folder is read again for every upstream request, so a rotated
//! Secret (Kubernetes swaps the volume's `..data` symlink atomically) is used from the next
//! request on, with no restart. `credentials.json` is preferred to the single-key files
//! because it is one file, so its client id, key id and key always belong together even
//! where a writer (like `dev`) replaces the files one by one.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::crypto::{self, KeyAlgorithm, SigningKey};
use crate::service_account::secret::keys;
use crate::trusted_issuer::resolve::url_allowed;

/// Where Kubernetes mounts a projected service-account token by convention.
pub const DEFAULT_PROJECTED_TOKEN: &str = "/var/run/secrets/tokens/s2s-token";
/// RFC 7523 §2.2 `client_assertion_type`.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Lifetime of a `private_key_jwt` assertion, in seconds: it is used at once.
pub const ASSERTION_LIFETIME: u64 = 60;
/// Largest credential file read, in bytes (an RSA PEM is about 2 KiB, a JWT a few).
const MAX_FILE: u64 = 64 * 1024;

/// Why credentials cannot be used. Messages name files and keys, never content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// A file exists but cannot be read.
    #[error("{path}: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Neither a client secret, a private key nor a projected token is there.
    #[error(
        "no credentials: {dir} holds neither client_secret nor private_key.pem, and there is no projected token"
    )]
    Missing {
        /// The credentials folder.
        dir: String,
    },
    /// A key is missing or malformed.
    #[error("{0}")]
    Invalid(String),
}

/// Where credentials come from (what the command line names).
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// The mounted Secret folder.
    pub dir: Option<PathBuf>,
    /// A projected service-account token for federated accounts; used when the folder holds
    /// no secret or key.
    pub projected_token: Option<PathBuf>,
    /// The token URL when no folder names one (federated accounts have no Secret).
    pub token_url: Option<String>,
}

/// How the client authenticates.
enum Method {
    /// `client_secret_basic`.
    Secret(String),
    /// `private_key_jwt`: a fresh assertion for every request.
    Key(Box<SigningKey>),
    /// A JWT from a trusted issuer (the projected token) as `client_assertion`.
    Federated(String),
}

/// One reading of the credentials.
pub struct Credentials {
    /// The client id (optional only for federated accounts).
    pub client_id: Option<String>,
    /// The token endpoint.
    pub token_url: String,
    method: Method,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("method", &self.method_name())
            .finish_non_exhaustive()
    }
}

/// The client authentication of one token request: an `Authorization` header value and form
/// fields.
pub struct ClientAuth {
    /// `Basic …`, for `client_secret_basic`.
    pub authorization: Option<String>,
    /// `client_id`, `client_assertion_type`, `client_assertion` as needed.
    pub form: Vec<(&'static str, String)>,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: String,
}

/// The members of `credentials.json` used here.
#[derive(Deserialize)]
struct Document {
    #[serde(rename = "type")]
    kind: String,
    client_id: String,
    token_url: String,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    private_key: Option<String>,
}

impl Source {
    /// Reads the credentials now.
    pub fn load(&self) -> Result<Credentials, CredentialsError> {
        let read = |key: &str| match &self.dir {
            Some(dir) => read_file(&dir.join(key)),
            None => Ok(None),
        };
        let projected = match &self.projected_token {
            Some(p) => read_file(p)?,
            None => None,
        };
        let dir = self
            .dir
            .as_deref()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "(no credentials folder)".into());
        parse(read, projected, self.token_url.as_deref(), &dir)
    }
}

impl Credentials {
    /// `client_secret_basic`, `private_key_jwt` or `federated`, for logs.
    pub fn method_name(&self) -> &'static str {
        match self.method {
            Method::Secret(_) => "client_secret_basic",
            Method::Key(_) => "private_key_jwt",
            Method::Federated(_) => "federated",
        }
    }

    /// The authentication of a request made at `now` (Unix seconds): a new assertion (fresh
    /// `jti`, `exp` one minute away) each time for a private key.
    pub fn client_auth(&self, now: u64) -> Result<ClientAuth, CredentialsError> {
        match &self.method {
            Method::Secret(secret) => {
                let id = self.client_id.as_deref().unwrap_or_default();
                // RFC 6749 §2.3.1: both parts form-urlencoded before base64.
                let pair = format!("{}:{}", urlencode(id), urlencode(secret));
                Ok(ClientAuth {
                    authorization: Some(format!("Basic {}", STANDARD.encode(pair))),
                    form: vec![],
                })
            }
            Method::Key(key) => {
                let id = self.client_id.as_deref().unwrap_or_default();
                let claims = AssertionClaims {
                    iss: id,
                    sub: id,
                    aud: &self.token_url,
                    iat: now,
                    exp: now + ASSERTION_LIFETIME,
                    jti: crypto::random_token_id(),
                };
                let assertion = crypto::sign_jwt(key, "JWT", &claims).map_err(|e| {
                    CredentialsError::Invalid(format!("cannot sign the client assertion: {e}"))
                })?;
                Ok(ClientAuth {
                    authorization: None,
                    form: vec![
                        ("client_id", id.to_owned()),
                        ("client_assertion_type", ASSERTION_TYPE.to_owned()),
                        ("client_assertion", assertion),
                    ],
                })
            }
            Method::Federated(token) => {
                let mut form = vec![
                    ("client_assertion_type", ASSERTION_TYPE.to_owned()),
                    ("client_assertion", token.clone()),
                ];
                if let Some(id) = &self.client_id {
                    form.insert(0, ("client_id", id.clone()));
                }
                Ok(ClientAuth {
                    authorization: None,
                    form,
                })
            }
        }
    }
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A file's content; `None` when it does not exist.
fn read_file(path: &Path) -> Result<Option<String>, CredentialsError> {
    let unreadable = |reason: String| CredentialsError::Unreadable {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e.to_string())),
        Ok(m) if m.len() > MAX_FILE => return Err(unreadable("file too large".into())),
        Ok(_) => {}
    }
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(unreadable(e.to_string())),
    }
}

fn checked_url(url: &str) -> Result<String, CredentialsError> {
    let url = url.trim();
    if url_allowed(url) {
        Ok(url.to_owned())
    } else {
        Err(CredentialsError::Invalid(format!(
            "token URL {url:?} is not https (plain http is allowed only to localhost)"
        )))
    }
}

/// Credentials from the folder's keys (`read`), a projected token and the `--token-url`
/// flag. Pure apart from `read`.
fn parse(
    read: impl Fn(&str) -> Result<Option<String>, CredentialsError>,
    projected: Option<String>,
    token_url_flag: Option<&str>,
    dir: &str,
) -> Result<Credentials, CredentialsError> {
    let text = |key: &str| -> Result<Option<String>, CredentialsError> {
        Ok(read(key)?
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty()))
    };
    let required = |key: &str| -> Result<String, CredentialsError> {
        text(key)?.ok_or_else(|| CredentialsError::Invalid(format!("{dir}: no {key} key")))
    };
    let has_secret = read(keys::CLIENT_SECRET)?.is_some();
    let has_key = read(keys::PRIVATE_KEY_PEM)?.is_some();
    if has_secret || has_key {
        if let Some(doc) =
            read(keys::CREDENTIALS_JSON)?.and_then(|t| serde_json::from_str::<Document>(&t).ok())
            && let Some(c) = from_document(doc, token_url_flag)?
        {
            return Ok(c);
        }
        let client_id = Some(required(keys::CLIENT_ID)?);
        let token_url = match token_url_flag {
            Some(u) => checked_url(u)?,
            None => checked_url(&required(keys::TOKEN_URL)?)?,
        };
        let method = if has_secret {
            Method::Secret(required(keys::CLIENT_SECRET)?)
        } else {
            let kid = required(keys::KEY_ID)?;
            let pem = required(keys::PRIVATE_KEY_PEM)?;
            let hint = text(keys::PRIVATE_KEY_JWK)?
                .and_then(|j| serde_json::from_str::<crypto::Jwk>(&j).ok())
                .and_then(|j| algorithm_of(&j));
            Method::Key(Box::new(signing_key(hint, kid, &pem)?))
        };
        return Ok(Credentials {
            client_id,
            token_url,
            method,
        });
    }
    if let Some(token) = projected
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
    {
        let token_url = match token_url_flag {
            Some(u) => u.to_owned(),
            None => text(keys::TOKEN_URL)?.ok_or_else(|| {
                CredentialsError::Invalid(
                    "federated: no token URL (give --token-url, or a token_url key)".into(),
                )
            })?,
        };
        return Ok(Credentials {
            client_id: text(keys::CLIENT_ID)?,
            token_url: checked_url(&token_url)?,
            method: Method::Federated(token),
        });
    }
    Err(CredentialsError::Missing { dir: dir.into() })
}

/// Credentials from `credentials.json`; `None` when it is of a type not handled here.
fn from_document(
    doc: Document,
    token_url_flag: Option<&str>,
) -> Result<Option<Credentials>, CredentialsError> {
    let missing = |k: &str| CredentialsError::Invalid(format!("credentials.json: no {k}"));
    let method = match doc.kind.as_str() {
        "client_secret" => {
            Method::Secret(doc.client_secret.ok_or_else(|| missing("client_secret"))?)
        }
        "private_key_jwt" => {
            let kid = doc.key_id.ok_or_else(|| missing("key_id"))?;
            let pem = doc.private_key.ok_or_else(|| missing("private_key"))?;
            let alg = doc
                .algorithm
                .as_deref()
                .and_then(KeyAlgorithm::from_jws_name);
            Method::Key(Box::new(signing_key(alg, kid, &pem)?))
        }
        _ => return Ok(None),
    };
    Ok(Some(Credentials {
        client_id: Some(doc.client_id),
        token_url: checked_url(token_url_flag.unwrap_or(&doc.token_url))?,
        method,
    }))
}

fn algorithm_of(jwk: &crypto::Jwk) -> Option<KeyAlgorithm> {
    if let Some(alg) = jwk.alg.as_deref().and_then(KeyAlgorithm::from_jws_name) {
        return Some(alg);
    }
    match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("EC", Some("P-256")) => Some(KeyAlgorithm::ES256),
        ("OKP", Some("Ed25519")) => Some(KeyAlgorithm::EdDSA),
        ("RSA", _) => Some(KeyAlgorithm::RS256),
        _ => None,
    }
}

/// Parses the PEM for the hinted algorithm, else for whichever of ours it is.
fn signing_key(
    hint: Option<KeyAlgorithm>,
    kid: String,
    pem: &str,
) -> Result<SigningKey, CredentialsError> {
    let candidates = match hint {
        Some(a) => vec![a],
        None => vec![
            KeyAlgorithm::ES256,
            KeyAlgorithm::EdDSA,
            KeyAlgorithm::RS256,
        ],
    };
    candidates
        .into_iter()
        .find_map(|alg| SigningKey::from_pem(alg, kid.clone(), pem).ok())
        .ok_or_else(|| {
            CredentialsError::Invalid(
                "private_key.pem is not a PKCS#8 ES256, EdDSA or RS256 private key".into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::crypto::generate_key;

    fn reader<'a>(
        files: &'a BTreeMap<&'a str, String>,
    ) -> impl Fn(&str) -> Result<Option<String>, CredentialsError> + 'a {
        |k| Ok(files.get(k).cloned())
    }

    fn decode(part: &str) -> serde_json::Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn client_secret_becomes_basic_auth() {
        let files = BTreeMap::from([
            ("client_id", "abc\n".to_owned()),
            ("client_secret", "s3cr+t".to_owned()),
            ("token_url", "https://s2s.example/oauth2/token".to_owned()),
        ]);
        let c = parse(reader(&files), None, None, "d").unwrap();
        assert_eq!(c.method_name(), "client_secret_basic");
        let auth = c.client_auth(0).unwrap();
        let expected = format!("Basic {}", STANDARD.encode("abc:s3cr%2Bt"));
        assert_eq!(auth.authorization.as_deref(), Some(expected.as_str()));
        assert!(auth.form.is_empty());
        assert!(!format!("{c:?}").contains("s3cr"), "Debug hides the secret");
    }

    #[test]
    fn private_key_signs_a_short_assertion_for_the_token_url() {
        for alg in [KeyAlgorithm::ES256, KeyAlgorithm::EdDSA] {
            let key = generate_key(alg).unwrap();
            // No credentials.json and no JWK: the algorithm is found from the PEM.
            let files = BTreeMap::from([
                ("client_id", "cid".to_owned()),
                ("private_key.pem", key.private_pem.clone()),
                ("key_id", "k1".to_owned()),
                ("token_url", "http://127.0.0.1:1/oauth2/token".to_owned()),
            ]);
            let c = parse(reader(&files), None, None, "d").unwrap();
            assert_eq!(c.method_name(), "private_key_jwt");
            let one = c.client_auth(1000).unwrap();
            let two = c.client_auth(1000).unwrap();
            let form: BTreeMap<_, _> = one.form.iter().cloned().collect();
            assert_eq!(form["client_id"], "cid");
            assert_eq!(form["client_assertion_type"], ASSERTION_TYPE);
            let parts: Vec<&str> = form["client_assertion"].split('.').collect();
            let header = decode(parts[0]);
            assert_eq!(header["kid"], "k1");
            assert_eq!(header["alg"], alg.jws_name());
            let claims = decode(parts[1]);
            assert_eq!(claims["iss"], "cid");
            assert_eq!(claims["sub"], "cid");
            assert_eq!(claims["aud"], "http://127.0.0.1:1/oauth2/token");
            assert_eq!(claims["exp"], 1000 + ASSERTION_LIFETIME);
            assert_ne!(one.form[2].1, two.form[2].1, "a fresh jti each time");
        }
    }

    #[test]
    fn credentials_json_wins_over_single_files() {
        let key = generate_key(KeyAlgorithm::ES256).unwrap();
        let doc = serde_json::json!({
            "type": "private_key_jwt", "client_id": "cid", "key_id": "new",
            "algorithm": "ES256", "private_key": key.private_pem,
            "token_url": "https://s2s.example/oauth2/token",
        });
        // The single files are half-way through a rotation: another key id.
        let files = BTreeMap::from([
            ("client_id", "cid".to_owned()),
            ("private_key.pem", "garbage".to_owned()),
            ("key_id", "old".to_owned()),
            ("credentials.json", doc.to_string()),
        ]);
        let c = parse(reader(&files), None, None, "d").unwrap();
        let form = c.client_auth(0).unwrap().form;
        assert_eq!(decode(form[2].1.split('.').next().unwrap())["kid"], "new");
    }

    #[test]
    fn federated_uses_the_projected_token() {
        let files = BTreeMap::new();
        let c = parse(
            reader(&files),
            Some("eyJ.a.b\n".into()),
            Some("https://s2s.example/oauth2/token"),
            "d",
        )
        .unwrap();
        assert_eq!(c.method_name(), "federated");
        let auth = c.client_auth(0).unwrap();
        assert!(auth.authorization.is_none());
        assert_eq!(
            auth.form,
            vec![
                ("client_assertion_type", ASSERTION_TYPE.to_owned()),
                ("client_assertion", "eyJ.a.b".to_owned()),
            ]
        );
        // No token URL anywhere.
        assert!(matches!(
            parse(reader(&files), Some("t".into()), None, "d"),
            Err(CredentialsError::Invalid(_))
        ));
    }

    #[test]
    fn refuses_missing_credentials_and_plain_http_to_remote_hosts() {
        let files = BTreeMap::new();
        assert!(matches!(
            parse(reader(&files), None, None, "d"),
            Err(CredentialsError::Missing { .. })
        ));
        let files = BTreeMap::from([
            ("client_id", "abc".to_owned()),
            ("client_secret", "s".to_owned()),
            ("token_url", "http://s2s.example/oauth2/token".to_owned()),
        ]);
        let err = parse(reader(&files), None, None, "d").unwrap_err();
        assert!(err.to_string().contains("not https"), "{err}");
    }
}
