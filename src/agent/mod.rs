//! `s2s-operator agent`: a sidecar that gives the application access tokens without OAuth
//! code in it.
//!
//! Data flow: the mounted credentials folder (or the pod's projected service-account token)
//! is read for every upstream request ([`credentials`]) → one `client_credentials` request
//! per (audience, scopes) at a time ([`upstream`]) → the cache ([`cache`]), refreshed ahead of
//! expiry → the application, over loopback HTTP (`GET /v1/token?audience=…&scope=…`, the
//! token endpoint's JSON with `expires_in` counted down) and as files in a shared volume
//! ([`files`]). `/healthz` and `/metrics` ([`metrics`]) beside it.
//!
//! The agent holds tokens and credentials, so it listens on loopback only unless told
//! otherwise, answers only requests addressed to a loopback host (a browser tricked by DNS
//! rebinding names another host), and logs no secret, key or token.

pub mod cache;
pub mod credentials;
pub mod files;
pub mod metrics;
pub mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::body::Bytes;

pub use cache::{Key, TokenError, Tokens};
pub use credentials::{DEFAULT_PROJECTED_TOKEN, Source};
pub use files::TokenSpec;
pub use metrics::Metrics;
pub use upstream::Upstream;

/// How often the cache looks for tokens to refresh.
pub const REFRESH_TICK: Duration = Duration::from_millis(200);
/// The default refresh point, as a fraction of a token's lifetime.
pub const DEFAULT_REFRESH_AT: f64 = 0.8;

/// Options of `agent`.
#[derive(Clone, Debug)]
pub struct Options {
    /// The mounted credentials Secret.
    pub credentials: Option<PathBuf>,
    /// Where to serve tokens.
    pub listen: SocketAddr,
    /// Where token files go.
    pub token_dir: Option<PathBuf>,
    /// The token files to keep.
    pub tokens: Vec<TokenSpec>,
    /// Serve on an address other than loopback.
    pub allow_non_loopback: bool,
    /// A projected service-account token (federated accounts).
    pub projected_token: Option<PathBuf>,
    /// The token URL, when the credentials folder has none.
    pub token_url: Option<String>,
    /// Extra trusted root certificates (PEM) for the token endpoint.
    pub ca_file: Option<PathBuf>,
    /// Extra trusted root certificates as PEM text (the injected agent of a federated
    /// account, which has no credentials Secret with a `ca.crt`).
    pub ca_pem: Option<String>,
    /// Fraction of a token's lifetime after which it is refreshed (0 < f < 1).
    pub refresh_at: f64,
    /// How long a request with no usable token keeps retrying the token endpoint.
    pub retry_for: Duration,
    /// The audience of a `GET /v1/token` that names none, and of `/v1/ready`.
    pub audience: Option<String>,
    /// The scopes of a `GET /v1/token` that names neither audience nor scope.
    pub scopes: Vec<String>,
}

impl Options {
    /// Options with defaults for everything but the credentials folder.
    pub fn new(credentials: impl Into<PathBuf>) -> Self {
        Options {
            credentials: Some(credentials.into()),
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token_dir: None,
            tokens: vec![],
            allow_non_loopback: false,
            projected_token: None,
            token_url: None,
            ca_file: None,
            ca_pem: None,
            refresh_at: DEFAULT_REFRESH_AT,
            retry_for: Duration::from_secs(5),
            audience: None,
            scopes: vec![],
        }
    }
}

/// What can stop the agent from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The listen address is not loopback.
    #[error(
        "refusing to listen on {0}: the agent hands out tokens to whoever connects; listen on 127.0.0.1 or ::1, or pass --allow-non-loopback"
    )]
    NonLoopback(SocketAddr),
    /// The options contradict each other.
    #[error("{0}")]
    Invalid(String),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file cannot be read.
    #[error("{path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The server failed.
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// The checks of [`bind`] that need no I/O.
pub fn validate(o: &Options) -> Result<(), AgentError> {
    if !o.listen.ip().is_loopback() && !o.allow_non_loopback {
        return Err(AgentError::NonLoopback(o.listen));
    }
    if !(o.refresh_at > 0.0 && o.refresh_at < 1.0) {
        return Err(AgentError::Invalid(
            "--refresh-at must be between 0 and 1 (exclusive)".into(),
        ));
    }
    if !o.tokens.is_empty() && o.token_dir.is_none() {
        return Err(AgentError::Invalid("--token needs --token-dir".into()));
    }
    let mut names: Vec<&str> = o.tokens.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(AgentError::Invalid(
            "two --token specs name the same file".into(),
        ));
    }
    if o.credentials.is_none() && o.projected_token.is_none() {
        return Err(AgentError::Invalid(
            "give --credentials, or --projected-token with --token-url".into(),
        ));
    }
    Ok(())
}

/// The projected token to use: the one named, else the conventional path if it exists.
pub fn projected_token_or_default(named: Option<PathBuf>) -> Option<PathBuf> {
    named.or_else(|| {
        let p = Path::new(DEFAULT_PROJECTED_TOKEN);
        p.exists().then(|| p.to_owned())
    })
}

/// An agent bound to its address, not serving yet.
pub struct Bound {
    listener: tokio::net::TcpListener,
    local: SocketAddr,
    options: Options,
    tokens: Arc<Tokens>,
    metrics: Arc<Metrics>,
}

impl Bound {
    /// The address it serves on (the port chosen when `:0` was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves until `stop` resolves.
    pub async fn serve(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), AgentError> {
        let mut tasks = vec![tokio::spawn(
            self.tokens.clone().run_refresher(REFRESH_TICK),
        )];
        if let Some(dir) = &self.options.token_dir {
            for spec in &self.options.tokens {
                tasks.push(tokio::spawn(files::keep_written(
                    self.tokens.clone(),
                    dir.clone(),
                    spec.clone(),
                )));
            }
        }
        let app = router(AppState {
            tokens: self.tokens,
            metrics: self.metrics,
            loopback_only: !self.options.allow_non_loopback,
            default: self
                .options
                .audience
                .clone()
                .map(|a| Key::new(a, self.options.scopes.clone())),
        });
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(stop)
            .await;
        for t in tasks {
            t.abort();
        }
        served.map_err(AgentError::Serve)
    }
}

/// Checks the options, reads the CA file, binds the address.
pub async fn bind(options: Options) -> Result<Bound, AgentError> {
    validate(&options)?;
    let mut roots = vec![];
    if let Some(pem) = &options.ca_pem {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.push(cert.map_err(|e| AgentError::Invalid(format!("S2S_AGENT_CA: {e}")))?);
        }
    }
    if let Some(path) = &options.ca_file {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let ca_err = |reason: String| AgentError::CaFile {
            path: path.clone(),
            reason,
        };
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))? {
            roots.push(cert.map_err(|e| ca_err(e.to_string()))?);
        }
        if roots.is_empty() {
            return Err(ca_err("no certificate in it".into()));
        }
    }
    if let Some(dir) = &options.token_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| AgentError::Invalid(format!("token dir {}: {e}", dir.display())))?;
    }
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: options.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| AgentError::Listen {
        addr: options.listen,
        source,
    })?;
    let source = Source {
        dir: options.credentials.clone(),
        projected_token: options.projected_token.clone(),
        token_url: options.token_url.clone(),
    };
    match source.load() {
        Ok(c) => {
            tracing::info!(method = c.method_name(), token_url = %c.token_url, "credentials found")
        }
        Err(e) => {
            tracing::warn!(error = %e, "no usable credentials yet; they are read again on every request")
        }
    }
    let metrics = Arc::new(Metrics::new());
    let tokens = Arc::new(Tokens::new(
        source,
        Upstream::following(
            roots,
            options
                .credentials
                .as_ref()
                .map(|d| d.join(crate::service_account::secret::keys::CA)),
        ),
        metrics.clone(),
        options.refresh_at,
        options.retry_for,
    ));
    tracing::info!(listen = %local, token_files = options.tokens.len(), "agent serving");
    Ok(Bound {
        listener,
        local,
        options,
        tokens,
        metrics,
    })
}

/// Runs the agent until `stop` resolves.
pub async fn run(
    options: Options,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    bind(options).await?.serve(stop).await
}

#[derive(Clone)]
struct AppState {
    tokens: Arc<Tokens>,
    metrics: Arc<Metrics>,
    loopback_only: bool,
    /// `--audience` and `--scope`.
    default: Option<Key>,
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/token", get(token))
        .route("/v1/ready", get(ready))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

fn json(status: u16, body: Bytes) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

fn error(status: u16, code: &str, description: &str) -> Response {
    let body = serde_json::json!({"error": code, "error_description": description});
    json(status, Bytes::from(body.to_string()))
}

/// Whether the request names a loopback host (or none, as HTTP/1.0 may).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `GET /v1/token?audience=…&scope=…` (`scope` space-separated, or repeated).
async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if state.loopback_only && !loopback_host(&headers) {
        return error(
            403,
            "access_denied",
            "the agent answers only requests addressed to a loopback host",
        );
    }
    let mut audience = None;
    let mut scopes = vec![];
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "audience" if audience.is_none() => audience = Some(v.into_owned()),
            "audience" => return error(400, "invalid_request", "one audience per request"),
            "scope" => scopes.extend(v.split_whitespace().map(str::to_owned)),
            _ => {}
        }
    }
    let key = match (audience.filter(|a| !a.is_empty()), &state.default) {
        (Some(a), _) => Key::new(a, scopes),
        (None, Some(d)) if scopes.is_empty() => d.clone(),
        (None, Some(d)) => Key::new(d.audience.clone(), scopes),
        (None, None) => {
            return error(
                400,
                "invalid_request",
                "the audience parameter is required (the agent has no --audience)",
            );
        }
    };
    match state.tokens.get(&key, false, true).await {
        Ok(issued) => {
            let mut body = serde_json::json!({
                "access_token": issued.access_token,
                "token_type": issued.token_type,
                "expires_in": issued.expires_in,
            });
            if let Some(scope) = issued.scope {
                body["scope"] = scope.into();
            }
            json(200, Bytes::from(body.to_string()))
        }
        Err(e) => {
            tracing::warn!(error = %e, "no token for the application");
            let (status, body) = e.answer();
            json(status, body)
        }
    }
}

/// `GET /v1/ready`: 200 once the agent can hand out a token for its default audience (or,
/// without one, once its credentials are readable); 503 with the reason until then. The
/// injected sidecar's startup probe, so the application never starts before the agent.
async fn ready(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if state.loopback_only && !loopback_host(&headers) {
        return error(
            403,
            "access_denied",
            "the agent answers only requests addressed to a loopback host",
        );
    }
    let outcome = match &state.default {
        Some(key) => state
            .tokens
            .get(key, false, false)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        None => state
            .tokens
            .credentials_readable()
            .map_err(|e| e.to_string()),
    };
    match outcome {
        Ok(()) => json(200, Bytes::from_static(b"{\"ready\":true}")),
        Err(e) => json(
            503,
            Bytes::from(serde_json::json!({"ready": false, "reason": e}).to_string()),
        ),
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_unless_allowed() {
        let mut o = Options::new("/creds");
        o.listen = "0.0.0.0:9090".parse().unwrap();
        assert!(matches!(validate(&o), Err(AgentError::NonLoopback(_))));
        o.allow_non_loopback = true;
        assert!(validate(&o).is_ok());
        o.listen = "[::1]:9090".parse().unwrap();
        o.allow_non_loopback = false;
        assert!(validate(&o).is_ok());
    }

    #[test]
    fn token_files_need_a_folder_and_distinct_names() {
        let mut o = Options::new("/creds");
        o.tokens = vec!["a=aud".parse().unwrap()];
        assert!(validate(&o).is_err());
        o.token_dir = Some("/tokens".into());
        assert!(validate(&o).is_ok());
        o.tokens.push("a=other".parse().unwrap());
        assert!(validate(&o).is_err());
        o.tokens.pop();
        o.refresh_at = 1.0;
        assert!(validate(&o).is_err());
    }

    #[test]
    fn host_header_must_be_loopback() {
        let with = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
            loopback_host(&m)
        };
        for ok in [
            "127.0.0.1:9090",
            "localhost",
            "LOCALHOST:1",
            "[::1]:9090",
            "127.0.0.2",
        ] {
            assert!(with(ok), "{ok}");
        }
        for bad in ["evil.example:9090", "10.0.0.1", "localhost.evil.example"] {
            assert!(!with(bad), "{bad}");
        }
        assert!(loopback_host(&HeaderMap::new()));
    }
}
