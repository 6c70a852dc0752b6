//! Turning an HTTP request's form body and `Authorization` header into parameters and a
//! client authentication, strictly: repeated parameters, bad encodings and more than one
//! authentication method are refused (RFC 6749 §2.3, §3.2).

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::error::OAuthError;

/// `client_assertion_type` of RFC 7523 §2.2.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Parameters that RFC 8707 lets a request repeat.
const REPEATABLE: &[&str] = &["resource", "audience", "tenant"];

/// The form parameters of a request, each name at most once (but `resource`, `audience` and
/// `tenant`).
#[derive(Debug, Default)]
pub struct Params {
    single: HashMap<String, String>,
    multi: HashMap<String, Vec<String>>,
}

impl Params {
    /// Parses `application/x-www-form-urlencoded`. Refuses repeated parameters (but the
    /// repeatable ones) and empty names.
    pub fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        let mut p = Params::default();
        for (k, v) in form_urlencoded::parse(body) {
            if k.is_empty() {
                return Err(OAuthError::invalid_request("malformed form body"));
            }
            if v.is_empty() {
                // RFC 6749 §3.1: parameters sent without a value are treated as omitted.
                continue;
            }
            if REPEATABLE.contains(&k.as_ref()) {
                p.multi
                    .entry(k.into_owned())
                    .or_default()
                    .push(v.into_owned());
            } else if p.single.insert(k.to_string(), v.into_owned()).is_some() {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {k} is repeated"
                )));
            }
        }
        Ok(p)
    }

    /// A single-valued parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.single.get(name).map(String::as_str)
    }

    /// A repeatable parameter's values.
    pub fn all(&self, name: &str) -> &[String] {
        self.multi.get(name).map(Vec::as_slice).unwrap_or_default()
    }

    /// The `scope` parameter split into scope tokens.
    pub fn scopes(&self) -> Vec<&str> {
        self.get("scope")
            .map(|s| s.split(' ').filter(|t| !t.is_empty()).collect())
            .unwrap_or_default()
    }
}

/// How the client authenticated.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic` or `client_secret_post`.
    Secret {
        /// The client id.
        client_id: String,
        /// The presented secret.
        secret: String,
        /// Whether it came in the `Authorization` header.
        basic: bool,
    },
    /// `private_key_jwt` (or, later, a federated token) as `client_assertion`.
    Assertion {
        /// `client_id` if the request named one.
        client_id: Option<String>,
        /// The assertion.
        assertion: String,
    },
    /// No authentication.
    None,
}

impl ClientAuth {
    /// The client id the request names, before any verification (for rate limiting only).
    pub fn client_id_hint(&self) -> Option<&str> {
        match self {
            Self::Secret { client_id, .. } => Some(client_id),
            Self::Assertion { client_id, .. } => client_id.as_deref(),
            Self::None => None,
        }
    }
}

impl std::fmt::Debug for ClientAuth {
    // Never prints the secret or the assertion.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret {
                client_id, basic, ..
            } => {
                write!(f, "Secret {{ client_id: {client_id:?}, basic: {basic} }}")
            }
            Self::Assertion { client_id, .. } => {
                write!(f, "Assertion {{ client_id: {client_id:?} }}")
            }
            Self::None => f.write_str("None"),
        }
    }
}

impl ClientAuth {
    /// The client authentication of a request: at most one method.
    pub fn from_request(authorization: Option<&str>, params: &Params) -> Result<Self, OAuthError> {
        let basic = authorization.map(parse_basic).transpose()?;
        let post_secret = params.get("client_secret");
        let assertion = params.get("client_assertion");
        let assertion_type = params.get("client_assertion_type");
        let methods = usize::from(basic.is_some())
            + usize::from(post_secret.is_some())
            + usize::from(assertion.is_some());
        if methods > 1 {
            return Err(OAuthError::invalid_request(
                "use exactly one client authentication method",
            ));
        }
        if let Some((client_id, secret)) = basic {
            if params.get("client_id").is_some_and(|id| id != client_id) {
                return Err(OAuthError::invalid_request(
                    "client_id differs from the Authorization header",
                ));
            }
            return Ok(Self::Secret {
                client_id,
                secret,
                basic: true,
            });
        }
        if let Some(secret) = post_secret {
            let client_id = params
                .get("client_id")
                .ok_or_else(|| OAuthError::invalid_request("client_secret without client_id"))?;
            return Ok(Self::Secret {
                client_id: client_id.to_owned(),
                secret: secret.to_owned(),
                basic: false,
            });
        }
        if let Some(assertion) = assertion {
            if assertion_type != Some(JWT_BEARER_ASSERTION) {
                return Err(OAuthError::invalid_request(format!(
                    "client_assertion_type must be {JWT_BEARER_ASSERTION}"
                )));
            }
            return Ok(Self::Assertion {
                client_id: params.get("client_id").map(str::to_owned),
                assertion: assertion.to_owned(),
            });
        }
        if assertion_type.is_some() {
            return Err(OAuthError::invalid_request(
                "client_assertion_type without client_assertion",
            ));
        }
        Ok(Self::None)
    }
}

/// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
fn parse_basic(header: &str) -> Result<(String, String), OAuthError> {
    let bad = || OAuthError::invalid_request("malformed Basic authorization header");
    let (scheme, rest) = header.trim().split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_request(
            "only Basic client authentication is accepted in the Authorization header",
        ));
    }
    let decoded = STANDARD.decode(rest.trim()).map_err(|_| bad())?;
    let text = std::str::from_utf8(&decoded).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    let id = percent_decode(id).ok_or_else(bad)?;
    let secret = percent_decode(secret).ok_or_else(bad)?;
    if id.is_empty() {
        return Err(bad());
    }
    Ok((id, secret))
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
fn percent_decode(s: &str) -> Option<String> {
    let mut pairs = form_urlencoded::parse(s.as_bytes());
    match (pairs.next(), pairs.next()) {
        (None, _) => Some(String::new()),
        // The whole component must decode as one key, with no `=` or `&` in it.
        (Some((k, v)), None) if v.is_empty() && !s.contains(['=', '&']) => Some(k.into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(id: &str, secret: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
    }

    #[test]
    fn repeated_parameters_are_refused_but_resources_may_repeat() {
        assert!(Params::parse(b"grant_type=a&grant_type=a").is_err());
        let p = Params::parse(b"resource=a&resource=b&scope=x+y").unwrap();
        assert_eq!(p.all("resource"), ["a", "b"]);
        assert_eq!(p.scopes(), ["x", "y"]);
        assert!(Params::parse(b"=x").is_err());
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let p = Params::parse(b"").unwrap();
        let auth = ClientAuth::from_request(Some(&basic("my%3Aclient", "s%2Bcret")), &p).unwrap();
        assert_eq!(
            auth,
            ClientAuth::Secret {
                client_id: "my:client".into(),
                secret: "s+cret".into(),
                basic: true
            }
        );
        assert!(ClientAuth::from_request(Some("Basic !!!"), &p).is_err());
        assert!(ClientAuth::from_request(Some("Bearer x"), &p).is_err());
    }

    #[test]
    fn one_method_only() {
        let p = Params::parse(b"client_id=a&client_secret=b").unwrap();
        assert!(ClientAuth::from_request(Some(&basic("a", "b")), &p).is_err());
        let p = Params::parse(b"client_id=a&client_secret=b").unwrap();
        assert!(matches!(
            ClientAuth::from_request(None, &p),
            Ok(ClientAuth::Secret { basic: false, .. })
        ));
        let p = Params::parse(b"client_assertion=x&client_assertion_type=wrong").unwrap();
        assert!(ClientAuth::from_request(None, &p).is_err());
        let p = Params::parse(b"client_secret=b").unwrap();
        assert!(ClientAuth::from_request(None, &p).is_err());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let auth = ClientAuth::Secret {
            client_id: "a".into(),
            secret: "topsecret".into(),
            basic: true,
        };
        assert!(!format!("{auth:?}").contains("topsecret"));
    }
}
