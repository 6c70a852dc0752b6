//! Fetching an issuer's keys: OIDC discovery (RFC 8414 / OpenID Connect Discovery), a JWKS
//! URL, or the cluster's own issuer through the API server.
//!
//! HTTPS with rustls (aws-lc-rs) and the system's root certificates; `http` only to loopback
//! (tests, `dev`). Every response is capped at [`MAX_BODY`] and every request at
//! [`TIMEOUT`]; redirects are not followed. Key sets are parsed into [`Jwk`]s, keeping only
//! usable signing keys.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::Value;

use super::resolve::{Source, azure_jwks_uri, url_allowed};
use super::verify::usable_keys;
use crate::crypto::Jwk;

/// Largest discovery document or JWKS accepted, in bytes.
pub const MAX_BODY: usize = 256 * 1024;
/// Longest a request (connect, headers, body) may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The discovery path of the API server's service-account issuer.
pub const KUBERNETES_DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// An HTTPS connector (rustls with aws-lc-rs) trusting the system's root certificates and
/// `extra_roots`, that also speaks plain `http` (callers decide which URLs they allow), with
/// [`TIMEOUT`] on connecting. Shared by the key fetcher and the workload agent.
pub fn https_connector(
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> hyper_rustls::HttpsConnector<HttpConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    let (extra, _ignored) = roots.add_parsable_certificates(extra_roots);
    if added + extra == 0 {
        tracing::warn!("no root certificates found: https requests will fail");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(TIMEOUT));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// What a fetch brought back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fetched {
    /// The issuer named by the discovery document (the configured one for discovery; the
    /// cluster's for `kubernetes`), if a document was read.
    pub issuer: Option<String>,
    /// Where the keys were read.
    pub jwks_uri: Option<String>,
    /// The usable signing keys.
    pub keys: Vec<Jwk>,
    /// How many published keys were left out (not usable signing keys).
    pub skipped: usize,
}

/// Why a fetch failed. Messages name URLs and statuses, never content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The URL may not be fetched (not https, or http to a non-loopback host).
    #[error("{0}: not an https URL (http is allowed only to localhost)")]
    UrlNotAllowed(String),
    /// The server answered with an error status (or a redirect, which is not followed).
    #[error("GET {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// No answer in time.
    #[error("GET {url}: no answer within {}s", TIMEOUT.as_secs())]
    Timeout {
        /// The URL.
        url: String,
    },
    /// The body is larger than [`MAX_BODY`].
    #[error("GET {url}: response larger than {} KiB", MAX_BODY / 1024)]
    TooLarge {
        /// The URL.
        url: String,
    },
    /// Connection or TLS failure.
    #[error("GET {url}: {reason}")]
    Network {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The body is not the expected JSON.
    #[error("GET {url}: {reason}")]
    Invalid {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The discovery document names another issuer (RFC 8414 §3.3).
    #[error("discovery document names issuer {found:?}, expected exactly {expected:?}")]
    IssuerMismatch {
        /// The configured issuer.
        expected: String,
        /// The document's.
        found: String,
    },
    /// The kubernetes preset without a Kubernetes client (`dev`).
    #[error("the kubernetes preset needs the API server; none is configured")]
    NoKubernetes,
}

/// The members of a discovery document used here.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Discovery {
    /// `issuer`.
    pub issuer: String,
    /// `jwks_uri`.
    pub jwks_uri: String,
}

/// Parses a discovery document read from `url`. With `expected_issuer`, its `issuer` must be
/// exactly that (RFC 8414 §3.3); the kubernetes preset learns the issuer from it instead.
pub fn parse_discovery(
    url: &str,
    body: &[u8],
    expected_issuer: Option<&str>,
) -> Result<Discovery, FetchError> {
    let doc: Discovery = parse(url, body)?;
    if let Some(expected) = expected_issuer
        && doc.issuer != expected
    {
        return Err(FetchError::IssuerMismatch {
            expected: expected.to_owned(),
            found: doc.issuer.chars().take(512).collect(),
        });
    }
    Ok(doc)
}

/// The path at which the API server serves the JWKS a kubernetes discovery document names:
/// the document gives its public URL, the API server serves it at the same path.
pub fn kubernetes_jwks_path(doc: &Discovery) -> Result<String, FetchError> {
    doc.jwks_uri
        .parse::<hyper::Uri>()
        .ok()
        .map(|u| u.path().to_owned())
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| FetchError::Invalid {
            url: KUBERNETES_DISCOVERY_PATH.into(),
            reason: "jwks_uri is not a URL".into(),
        })
}

/// Fetches keys over HTTPS, and through the API server for the kubernetes preset.
#[derive(Clone)]
pub struct Fetcher {
    http: HttpClient<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    kube: Option<kube::Client>,
    timeout: Duration,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("kubernetes", &self.kube.is_some())
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher trusting the system's root certificates; `kube` serves the kubernetes preset.
    pub fn new(kube: Option<kube::Client>) -> Self {
        let connector = https_connector(Vec::new());
        let http = HttpClient::builder(TokioExecutor::new()).build(connector);
        Fetcher {
            http,
            kube,
            timeout: TIMEOUT,
        }
    }

    /// Fetches the keys of a source. Inline keys are parsed without I/O.
    pub async fn fetch(&self, source: &Source) -> Result<Fetched, FetchError> {
        match source {
            Source::Inline(keys) => {
                let (keys, skipped) = usable_keys(keys);
                Ok(Fetched {
                    keys,
                    skipped,
                    ..Fetched::default()
                })
            }
            Source::JwksUri { uri } => self.jwks(uri, None).await,
            Source::Azure { tenant, .. } => self.jwks(&azure_jwks_uri(tenant), None).await,
            Source::Discovery { issuer } => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let doc = parse_discovery(&url, &self.get(&url).await?, Some(issuer))?;
                self.jwks(&doc.jwks_uri, Some(doc.issuer)).await
            }
            Source::Kubernetes => self.kubernetes().await,
        }
    }

    async fn jwks(&self, uri: &str, issuer: Option<String>) -> Result<Fetched, FetchError> {
        let body = self.get(uri).await?;
        let (keys, skipped) = parse_jwks(uri, &body)?;
        Ok(Fetched {
            issuer,
            jwks_uri: Some(uri.to_owned()),
            keys,
            skipped,
        })
    }

    /// The cluster's issuer: its discovery document and the JWKS path it names, both read
    /// through the API server with the operator's credentials.
    async fn kubernetes(&self) -> Result<Fetched, FetchError> {
        let client = self.kube.as_ref().ok_or(FetchError::NoKubernetes)?;
        let doc_text = self.kube_get(client, KUBERNETES_DISCOVERY_PATH).await?;
        let doc = parse_discovery(KUBERNETES_DISCOVERY_PATH, doc_text.as_bytes(), None)?;
        let path = kubernetes_jwks_path(&doc)?;
        let keys_text = self.kube_get(client, &path).await?;
        let (keys, skipped) = parse_jwks(&path, keys_text.as_bytes())?;
        Ok(Fetched {
            issuer: Some(doc.issuer),
            jwks_uri: Some(doc.jwks_uri),
            keys,
            skipped,
        })
    }

    async fn kube_get(&self, client: &kube::Client, path: &str) -> Result<String, FetchError> {
        let request =
            hyper::Request::get(path)
                .body(Vec::new())
                .map_err(|e| FetchError::Invalid {
                    url: path.into(),
                    reason: e.to_string(),
                })?;
        let text = tokio::time::timeout(self.timeout, client.request_text(request))
            .await
            .map_err(|_| FetchError::Timeout { url: path.into() })?
            .map_err(|e| match e {
                kube::Error::Api(s) => FetchError::Status {
                    url: path.into(),
                    status: s.code,
                },
                other => FetchError::Network {
                    url: path.into(),
                    reason: other.to_string(),
                },
            })?;
        if text.len() > MAX_BODY {
            return Err(FetchError::TooLarge { url: path.into() });
        }
        Ok(text)
    }

    /// GET with the URL rules, the timeout and the size cap.
    async fn get(&self, url: &str) -> Result<Bytes, FetchError> {
        if !url_allowed(url) {
            return Err(FetchError::UrlNotAllowed(url.chars().take(512).collect()));
        }
        let uri: hyper::Uri = url
            .parse()
            .map_err(|_| FetchError::UrlNotAllowed(url.into()))?;
        let request = hyper::Request::get(uri)
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("s2s-operator/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| FetchError::Network {
                url: url.into(),
                reason: e.to_string(),
            })?;
        let work = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| FetchError::Network {
                    url: url.into(),
                    reason: network_reason(&e),
                })?;
            let status = response.status();
            if !status.is_success() {
                return Err(FetchError::Status {
                    url: url.into(),
                    status: status.as_u16(),
                });
            }
            if response
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                .is_some_and(|n| n > MAX_BODY)
            {
                return Err(FetchError::TooLarge { url: url.into() });
            }
            Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        FetchError::TooLarge { url: url.into() }
                    } else {
                        FetchError::Network {
                            url: url.into(),
                            reason: e.to_string(),
                        }
                    }
                })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| FetchError::Timeout { url: url.into() })?
    }
}

/// The innermost cause of a client error (the outer ones say only "client error").
fn network_reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn parse<'a, T: Deserialize<'a>>(url: &str, body: &'a [u8]) -> Result<T, FetchError> {
    serde_json::from_slice(body).map_err(|e| FetchError::Invalid {
        url: url.into(),
        reason: format!("not the expected JSON document ({})", e.classify_name()),
    })
}

trait Classify {
    fn classify_name(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "missing or mistyped member",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// A JWK Set's usable signing keys, and how many members were left out (not a JWK we read,
/// or not a usable signing key: `enc` keys, `oct` keys, unsupported curves …).
pub fn parse_jwks(url: &str, body: &[u8]) -> Result<(Vec<Jwk>, usize), FetchError> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<Value>,
    }
    let set: Set = parse(url, body)?;
    let mut unreadable = 0;
    let jwks: Vec<Jwk> = set
        .keys
        .into_iter()
        .filter_map(|v| {
            let k = serde_json::from_value(v).ok();
            unreadable += usize::from(k.is_none());
            k
        })
        .collect();
    let (keys, skipped) = usable_keys(&jwks);
    Ok((keys, skipped + unreadable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyAlgorithm, generate_key};

    #[test]
    fn jwks_keeps_usable_signing_keys_and_counts_the_rest() {
        let es = generate_key(KeyAlgorithm::ES256).unwrap().public_jwk;
        let body = serde_json::json!({"keys": [
            es,
            {"kty": "oct", "k": "c2VjcmV0"},
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"no": "kty"},
        ]});
        let (keys, skipped) = parse_jwks("u", &serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(keys, vec![es]);
        assert_eq!(skipped, 3);
        assert!(matches!(
            parse_jwks("u", b"{\"nokeys\": 1}"),
            Err(FetchError::Invalid { .. })
        ));
    }

    #[tokio::test]
    async fn refuses_plain_http_to_remote_hosts() {
        let f = Fetcher::new(None);
        let err = f
            .fetch(&Source::JwksUri {
                uri: "http://example.com/keys".into(),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::UrlNotAllowed(_)));
        assert_eq!(
            f.fetch(&Source::Kubernetes).await,
            Err(FetchError::NoKubernetes)
        );
    }
}
