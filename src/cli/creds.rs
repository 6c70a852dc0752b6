//! An account's credentials, read from its Secret (DESIGN.md "Secret layout"), and the client
//! authentication of one request made with them: `client_secret_basic`, or a `private_key_jwt`
//! assertion signed with `jsonwebtoken`. Nothing here is ever printed or logged.

use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde::Serialize;

use super::conn::{Kube, api_code, api_error};
use super::{CliError, Result};
use crate::api::ServiceAccount;
use crate::service_account::secret::keys;

/// RFC 7523 §2.2 `client_assertion_type`.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How the client proves who it is.
pub enum Method {
    /// A client secret.
    Secret(String),
    /// A private key (PKCS#8 PEM) with its `kid` and algorithm.
    Key {
        /// Key id.
        kid: String,
        /// Algorithm.
        alg: Algorithm,
        /// The PEM.
        pem: String,
    },
}

/// An account's credentials.
pub struct AccountCredentials {
    /// The client id.
    pub client_id: String,
    /// The token endpoint (the assertion's audience).
    pub token_url: String,
    /// How it authenticates.
    pub method: Method,
}

impl std::fmt::Debug for AccountCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountCredentials")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// The authentication of one request: form fields (never a header, see
/// [`AccountCredentials::client_auth`]).
pub struct ClientAuth {
    /// `client_id`, `client_assertion_type`, `client_assertion`.
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

/// Credentials from a Secret's data (string values). Prefers the client secret when both
/// are there.
pub fn from_data(data: &BTreeMap<String, String>, name: &str) -> Result<AccountCredentials> {
    let get = |k: &str| {
        data.get(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let missing = |k: &str| {
        CliError::new(format!("Secret {name} has no {k} key")).hint(
            "the controller has not written it yet, or it is not an s2s credentials Secret: \
             `kubectl s2s status` on the account says why",
        )
    };
    let client_id = get(keys::CLIENT_ID).ok_or_else(|| missing(keys::CLIENT_ID))?;
    let token_url = get(keys::TOKEN_URL).ok_or_else(|| missing(keys::TOKEN_URL))?;
    let method = if let Some(secret) = get(keys::CLIENT_SECRET) {
        Method::Secret(secret)
    } else if let Some(pem) = get(keys::PRIVATE_KEY_PEM) {
        let kid = get(keys::KEY_ID).ok_or_else(|| missing(keys::KEY_ID))?;
        let alg = data
            .get(keys::CREDENTIALS_JSON)
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .and_then(|v| v["algorithm"].as_str().map(str::to_owned))
            .or_else(|| {
                serde_json::from_str::<serde_json::Value>(data.get(keys::PRIVATE_KEY_JWK)?)
                    .ok()?["alg"]
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "ES256".into());
        let alg = match alg.as_str() {
            "ES256" => Algorithm::ES256,
            "EdDSA" => Algorithm::EdDSA,
            "RS256" => Algorithm::RS256,
            other => {
                return Err(CliError::new(format!(
                    "Secret {name}: key algorithm {other} is not one the operator issues"
                )));
            }
        };
        Method::Key { kid, alg, pem }
    } else {
        return Err(missing("client_secret or private_key.pem"));
    };
    Ok(AccountCredentials {
        client_id,
        token_url,
        method,
    })
}

impl AccountCredentials {
    /// `client_secret_basic` or `private_key_jwt`, for messages.
    pub fn method_name(&self) -> &'static str {
        match self.method {
            Method::Secret(_) => "client_secret_post",
            Method::Key { .. } => "private_key_jwt",
        }
    }

    /// The authentication of a request made at `now` (Unix seconds).
    pub fn client_auth(&self, now: u64) -> Result<ClientAuth> {
        match &self.method {
            // client_secret_post, not _basic: the API server's service proxy drops the
            // Authorization header once it has authenticated the caller, so a Basic header
            // would never reach the token server.
            Method::Secret(secret) => Ok(ClientAuth {
                form: vec![
                    ("client_id", self.client_id.clone()),
                    ("client_secret", secret.clone()),
                ],
            }),
            Method::Key { kid, alg, pem } => {
                let key = match alg {
                    Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
                    Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
                    _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
                }
                .map_err(|e| {
                    CliError::new(format!("the account's private_key.pem is unusable: {e}"))
                })?;
                let mut header = Header::new(*alg);
                header.kid = Some(kid.clone());
                header.typ = Some("JWT".into());
                let claims = AssertionClaims {
                    iss: &self.client_id,
                    sub: &self.client_id,
                    aud: &self.token_url,
                    iat: now,
                    exp: now + 60,
                    jti: crate::crypto::random_token_id(),
                };
                let assertion = jsonwebtoken::encode(&header, &claims, &key)
                    .map_err(|e| CliError::new(format!("cannot sign the client assertion: {e}")))?;
                Ok(ClientAuth {
                    form: vec![
                        ("client_id", self.client_id.clone()),
                        ("client_assertion_type", ASSERTION_TYPE.into()),
                        ("client_assertion", assertion),
                    ],
                })
            }
        }
    }
}

/// The name of the Secret holding an account's stored credentials (client secret first).
pub fn secret_name(sa: &ServiceAccount) -> Option<String> {
    let auth = sa.spec.authentication.as_ref()?;
    auth.client_secret
        .as_ref()
        .map(|c| c.secret_name.clone())
        .or_else(|| auth.private_key_jwt.as_ref().map(|k| k.secret_name.clone()))
}

/// Reads the credentials of `sa` from its Secret, saying which permission is missing on 403.
pub async fn read(kube: &Kube, sa: &ServiceAccount) -> Result<AccountCredentials> {
    let ns = sa.metadata.namespace.clone().unwrap_or_default();
    let name = sa.metadata.name.clone().unwrap_or_default();
    let Some(secret_name) = secret_name(sa) else {
        return Err(CliError::new(format!(
            "serviceaccount/{name} in {ns} has no stored credentials (no clientSecret or \
             privateKeyJwt)"
        ))
        .hint(
            "a federated account gets tokens by presenting its issuer's JWT (for example with \
             `s2s-operator agent --projected-token`); there is nothing to read here",
        ));
    };
    let api: Api<Secret> = Api::namespaced(kube.client.clone(), &ns);
    let secret = match api.get(&secret_name).await {
        Ok(s) => s,
        Err(e) if api_code(&e) == Some(403) => {
            return Err(CliError::new(format!(
                "forbidden: you may not get secrets/{secret_name} in namespace {ns}, the \
                 credentials of serviceaccount.s2s.dev/{name}"
            ))
            .hint(format!(
                "a test token is made from the account's own credentials, so this needs `get` on \
                 secrets (resourceNames: [{secret_name}]) in {ns}; check with \
                 `kubectl auth can-i get secret/{secret_name} -n {ns}`"
            )));
        }
        Err(e) if api_code(&e) == Some(404) => {
            return Err(CliError::new(format!(
                "the credentials Secret {secret_name} of serviceaccount/{name} does not exist \
                 (yet) in {ns}"
            ))
            .hint(format!(
                "the controller writes it once the account is reconciled: \
                 `kubectl s2s status serviceaccount/{name} -n {ns}`"
            )));
        }
        Err(e) => {
            return Err(api_error(
                e,
                "get",
                "secrets",
                Some(&secret_name),
                Some(&ns),
            ));
        }
    };
    let data: BTreeMap<String, String> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| String::from_utf8(v.0).ok().map(|v| (k, v)))
        .collect();
    from_data(&data, &secret_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_client_secret_goes_in_the_form_where_the_service_proxy_keeps_it() {
        let c = from_data(
            &data(&[
                ("client_id", "id"),
                ("client_secret", "a b+c"),
                ("token_url", "https://t/oauth2/token"),
            ]),
            "s",
        )
        .unwrap();
        let auth = c.client_auth(0).unwrap();
        assert_eq!(
            auth.form,
            [
                ("client_id", "id".to_owned()),
                ("client_secret", "a b+c".to_owned())
            ]
        );
        assert!(!format!("{c:?}").contains("a b+c"));
    }

    #[test]
    fn a_private_key_signs_an_assertion_the_public_key_verifies() {
        let key = crate::crypto::generate_key(crate::crypto::KeyAlgorithm::ES256).unwrap();
        let c = from_data(
            &data(&[
                ("client_id", "id"),
                ("private_key.pem", &key.private_pem),
                ("key_id", &key.kid),
                ("token_url", "https://t/oauth2/token"),
            ]),
            "s",
        )
        .unwrap();
        assert_eq!(c.method_name(), "private_key_jwt");
        let now = jsonwebtoken::get_current_timestamp();
        let auth = c.client_auth(now).unwrap();
        let assertion = &auth
            .form
            .iter()
            .find(|(k, _)| *k == "client_assertion")
            .unwrap()
            .1;
        let (dk, alg) = crate::crypto::decoding_key(&key.public_jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(alg);
        v.set_audience(&["https://t/oauth2/token"]);
        v.set_issuer(&["id"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(assertion, &dk, &v)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "id");
        assert_eq!(
            jsonwebtoken::decode_header(assertion).unwrap().kid,
            Some(key.kid)
        );
    }

    #[test]
    fn a_secret_without_credentials_says_what_is_missing() {
        let e = from_data(&data(&[("client_id", "id"), ("token_url", "u")]), "s").unwrap_err();
        assert!(
            e.message.contains("client_secret or private_key.pem"),
            "{e}"
        );
        assert!(from_data(&data(&[]), "s").is_err());
    }
}
