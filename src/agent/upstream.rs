//! One `client_credentials` request to the token endpoint, over hyper-util's client with the
//! HTTPS connector the key fetcher uses. Answers are sorted into what the cache needs: a
//! token, an OAuth error to pass through to the application as it came, or a transient
//! failure worth retrying.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::credentials::ClientAuth;
use crate::trusted_issuer::fetch::https_connector;

/// Largest token response read, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest one request may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A token as the endpoint issued it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Issued {
    /// The access token.
    pub access_token: String,
    /// `Bearer`.
    #[serde(default = "bearer")]
    pub token_type: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// The granted scopes.
    #[serde(default)]
    pub scope: Option<String>,
}

fn bearer() -> String {
    "Bearer".into()
}

/// Why no token came back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpstreamError {
    /// The endpoint refused with a 4xx and a JSON body: passed through, not retried.
    #[error("token endpoint refused: HTTP {status}")]
    Refused {
        /// The status.
        status: u16,
        /// The JSON body (an RFC 6749 §5.2 error; no secret in it).
        body: Bytes,
    },
    /// A 5xx, or a 4xx that is not OAuth JSON (a proxy in the way): retried.
    #[error("token endpoint failed: HTTP {status}")]
    Failed {
        /// The status.
        status: u16,
        /// The JSON body, when there was one, to pass through if retries run out.
        body: Option<Bytes>,
    },
    /// Connection, TLS, timeout or an unreadable answer: retried.
    #[error("token endpoint unreachable: {0}")]
    Unreachable(String),
}

impl UpstreamError {
    /// Whether trying again may help.
    pub fn transient(&self) -> bool {
        !matches!(self, UpstreamError::Refused { .. })
    }

    /// A stable name for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            UpstreamError::Refused { .. } => "refused",
            UpstreamError::Failed { .. } => "server_error",
            UpstreamError::Unreachable(_) => "unreachable",
        }
    }
}

type Http = HttpClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The HTTP client for token requests.
#[derive(Clone)]
pub struct Upstream {
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// A PEM bundle file followed across changes (`ca.crt` of the mounted credentials: the
    /// operator's CA, which rotates).
    bundle_file: Option<std::path::PathBuf>,
    /// The bundle the client was built with, and the client.
    current: Arc<ArcSwap<(Vec<u8>, Http)>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

impl Upstream {
    /// A client trusting the system's roots and `extra_roots`.
    pub fn new(extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>) -> Self {
        Self::following(extra_roots, None)
    }

    /// A client trusting the system's roots, `extra_roots`, and whatever certificates
    /// `bundle_file` holds at the time of each request (re-read every time, which costs a
    /// small file read per token fetch; the client is rebuilt only when the file changed).
    pub fn following(
        extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
        bundle_file: Option<std::path::PathBuf>,
    ) -> Self {
        let http = build(&extra_roots, &[]);
        Upstream {
            extra_roots,
            bundle_file,
            current: Arc::new(ArcSwap::from_pointee((vec![], http))),
        }
    }

    /// The client for the bundle file as it is now.
    fn http(&self) -> Http {
        let Some(path) = &self.bundle_file else {
            return self.current.load().1.clone();
        };
        let now = std::fs::read(path).unwrap_or_default();
        let held = self.current.load();
        if held.0 == now {
            return held.1.clone();
        }
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        match CertificateDer::pem_slice_iter(&now).collect::<Result<Vec<_>, _>>() {
            Ok(certs) => {
                let http = build(&self.extra_roots, &certs);
                tracing::info!(file = %path.display(), certificates = certs.len(), "trusting the token server's CA bundle");
                self.current.store(Arc::new((now, http.clone())));
                http
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "CA bundle unreadable; keeping the last one");
                held.1.clone()
            }
        }
    }

    /// `grant_type=client_credentials` for `audience` and `scopes`.
    pub async fn client_credentials(
        &self,
        token_url: &str,
        auth: ClientAuth,
        audience: &str,
        scopes: &[String],
    ) -> Result<Issued, UpstreamError> {
        let body = client_credentials_form(audience, scopes, &auth.form);
        let uri: hyper::Uri = token_url
            .parse()
            .map_err(|_| UpstreamError::Unreachable("the token URL is not a URL".into()))?;
        let mut request = hyper::Request::post(uri)
            .header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("s2s-operator-agent/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(a) = auth.authorization {
            request = request.header(hyper::header::AUTHORIZATION, a);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
        let http = self.http();
        let work = async {
            let response = http
                .request(request)
                .await
                .map_err(|e| UpstreamError::Unreachable(innermost(&e)))?;
            let status = response.status();
            let json = response
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().starts_with("application/json"));
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| UpstreamError::Unreachable(format!("reading the answer: {e}")))?;
            if status.is_success() {
                return serde_json::from_slice::<Issued>(&body).map_err(|_| {
                    UpstreamError::Unreachable("the answer is not a token response".into())
                });
            }
            let oauth_json = json
                && serde_json::from_slice::<serde_json::Value>(&body)
                    .is_ok_and(|v| v.get("error").is_some_and(|e| e.is_string()));
            let status = status.as_u16();
            Err(if oauth_json && (400..500).contains(&status) {
                UpstreamError::Refused { status, body }
            } else {
                UpstreamError::Failed {
                    status,
                    body: oauth_json.then_some(body),
                }
            })
        };
        tokio::time::timeout(TIMEOUT, work)
            .await
            .map_err(|_| UpstreamError::Unreachable(format!("no answer within {TIMEOUT:?}")))?
    }
}

fn build(
    extra: &[rustls::pki_types::CertificateDer<'static>],
    bundle: &[rustls::pki_types::CertificateDer<'static>],
) -> Http {
    let roots = extra.iter().chain(bundle).cloned().collect();
    HttpClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https_connector(roots))
}

/// The body of a `client_credentials` request for `audience` and `scopes`, with the client
/// authentication's form fields (`client_id`, `client_assertion`, …) appended.
pub fn client_credentials_form(
    audience: &str,
    scopes: &[String],
    auth_fields: &[(&'static str, String)],
) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    form.append_pair("audience", audience);
    if !scopes.is_empty() {
        form.append_pair("scope", &scopes.join(" "));
    }
    for (k, v) in auth_fields {
        form.append_pair(k, v);
    }
    form.finish()
}

/// The innermost cause of a client error (the outer ones say only "client error").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
