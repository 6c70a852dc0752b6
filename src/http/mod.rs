//! The HTTP face of the token core (axum): token, discovery, JWKS, introspection,
//! revocation, health and metrics. Handlers only translate: bytes and headers in, the core's
//! answer out, as RFC 6749 §5 JSON with `Cache-Control: no-store`.

pub mod audit;
mod limiter;
mod metrics;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use audit::Audit;
pub use limiter::{Limiter, Limits, Refusal};
pub use metrics::Metrics;

use crate::token::{ClientAuth, Core, ErrorCode, OAuthError, Params};

/// Largest request body accepted, in bytes. A token request is a few hundred bytes; an
/// assertion a few kilobytes.
pub const MAX_BODY: usize = 16 * 1024;

/// What every handler shares.
pub struct AppState {
    /// The token core.
    pub core: Arc<Core>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Whether the read model has been loaded (`/readyz`).
    pub ready: AtomicBool,
    /// Where revocations go to reach every replica (the API in a cluster; none in `dev`).
    pub revocation_sink: std::sync::OnceLock<Arc<dyn RevocationSink>>,
    /// Brute-force protection of client authentication.
    pub limiter: Limiter,
    /// Shutting down: `/readyz` says 503 so load balancers stop sending, every answer closes
    /// its connection, and requests are still served.
    pub draining: AtomicBool,
    /// The audit trail.
    pub audit: Audit,
}

/// Records a revoked token where every token-server replica sees it.
pub trait RevocationSink: Send + Sync {
    /// Records `jti` as revoked until `exp`.
    fn revoke(
        &self,
        jti: String,
        exp: u64,
    ) -> futures::future::BoxFuture<'static, Result<(), String>>;
}

impl AppState {
    /// State around a core, not yet ready.
    pub fn new(core: Arc<Core>) -> Arc<Self> {
        Self::with(core, Limits::default(), Audit::default())
    }

    /// State around a core, not yet ready, with these brute-force limits.
    pub fn with_limits(core: Arc<Core>, limits: Limits) -> Arc<Self> {
        Self::with(core, limits, Audit::default())
    }

    /// State around a core, not yet ready, with these limits and this audit trail.
    pub fn with(core: Arc<Core>, limits: Limits, audit: Audit) -> Arc<Self> {
        Arc::new(Self {
            core,
            metrics: Metrics::new(),
            ready: AtomicBool::new(false),
            revocation_sink: std::sync::OnceLock::new(),
            limiter: Limiter::new(limits),
            draining: AtomicBool::new(false),
            audit,
        })
    }

    /// Runs a client-authenticated call behind the brute-force limiter: refused without a
    /// look at the credentials while the client id or the source is locked out; failed
    /// authentications counted, successes reset the count.
    fn guarded<T>(
        &self,
        auth: &ClientAuth,
        source: Option<IpAddr>,
        call: impl FnOnce() -> Result<T, OAuthError>,
    ) -> Result<T, OAuthError> {
        let id = auth.client_id_hint();
        let now = Instant::now();
        if let Err(refusal) = self.limiter.check(id, source, now) {
            self.metrics.auth_refused(refusal);
            return Err(OAuthError::invalid_client());
        }
        let result = call();
        match &result {
            Err(e) if e.code == ErrorCode::InvalidClient => {
                self.metrics.auth_failed();
                if self.limiter.failure(id, source, now) {
                    self.metrics.auth_lockout();
                    tracing::warn!(
                        client_id = id.unwrap_or("-"),
                        "client locked out after repeated failures"
                    );
                }
            }
            Ok(_) => {
                if let Some(id) = id {
                    self.limiter.success(id, source, now);
                }
            }
            Err(_) => {}
        }
        result
    }
}

/// The peer address, when the server recorded it (`ConnectInfo`).
fn source_of(ext: &axum::http::Extensions) -> Option<IpAddr> {
    ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

impl AppState {
    /// Marks the server ready (its stores are loaded).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

/// The router with every endpoint.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/oauth2/introspect", post(introspect))
        .route("/oauth2/revoke", post(revoke))
        .route("/.well-known/openid-configuration", get(metadata))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/jwks.json", get(jwks))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/tenants", get(tenants))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            close_when_done,
        ))
        .with_state(state)
}

/// `Connection: close` when the connection ends after this answer, so a keep-alive client
/// does not send its next request into a closing connection (RFC 9112 §9.6): while
/// draining (connections end after a complete exchange instead of being cut under a
/// request), and after a 413 (the rest of the body is never read, and hyper closes).
async fn close_when_done(State(s): State<Arc<AppState>>, mut resp: Response) -> Response {
    if s.draining.load(Ordering::Acquire) || resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Reads a form body and the client authentication of a POST request.
async fn read_form(
    headers: &HeaderMap,
    body: Body,
) -> Result<(ClientAuth, Params), (StatusCode, OAuthError)> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return Err((
            StatusCode::BAD_REQUEST,
            OAuthError::invalid_request("the body must be application/x-www-form-urlencoded"),
        ));
    }
    let bytes: Bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            OAuthError::invalid_request("the request body is too large"),
        )
    })?;
    let params = Params::parse(&bytes).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let auth = ClientAuth::from_request(authorization, &params)
        .map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    Ok((auth, params))
}

fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    no_store(
        (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
    )
}

/// An OAuth error as RFC 6749 §5.2 wants it: 400, or 401 with `WWW-Authenticate` for a failed
/// client authentication.
fn error_response(status: StatusCode, err: &OAuthError) -> Response {
    let body = serde_json::to_vec(&err.body()).expect("error body serializes");
    let status = if err.code == ErrorCode::InvalidClient {
        StatusCode::UNAUTHORIZED
    } else {
        status
    };
    let mut resp = json_response(status, body);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"s2s-operator\""),
        );
    }
    resp
}

/// The answer while the read model is not loaded: nothing is issued or judged from a
/// partial view (an account not yet seen would look unknown).
/// Audited (as refused, `temporarily_unavailable`) when `audited`: every token,
/// introspection and revocation request leaves a record, answered or not.
fn not_ready(
    s: &AppState,
    endpoint: &'static str,
    start: Instant,
    source: Option<IpAddr>,
    audited: bool,
) -> Option<Response> {
    if s.ready.load(Ordering::Acquire) {
        return None;
    }
    let e = OAuthError::new(
        ErrorCode::TemporarilyUnavailable,
        "the token server is starting; retry shortly",
    );
    s.metrics.observe(endpoint, "none", e.code.as_str(), start);
    if audited {
        s.audit.record(|| audit::Record {
            error: Some(e.code.as_str()),
            source,
            ..audit::Record::new(endpoint, "refused")
        });
    }
    let mut resp = error_response(StatusCode::SERVICE_UNAVAILABLE, &e);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    Some(resp)
}

async fn token(
    State(s): State<Arc<AppState>>,
    ext: axum::http::Extensions,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let source = source_of(&ext);
    if let Some(resp) = not_ready(&s, "token", start, source, true) {
        return resp;
    }
    let (auth, params) = match read_form(&headers, body).await {
        Ok(x) => x,
        Err((status, e)) => {
            s.metrics
                .observe("token", "unknown", e.code.as_str(), start);
            s.audit.record(|| audit::Record {
                error: Some(e.code.as_str()),
                source,
                ..audit::Record::new("token", "refused")
            });
            return error_response(status, &e);
        }
    };
    let grant_type = metrics::grant_type_label(params.get("grant_type"));
    let issued = if grant_type == "token_exchange" {
        "exchanged"
    } else {
        "issued"
    };
    let refused = |e: &OAuthError| {
        s.audit.record(|| audit::Record {
            error: Some(e.code.as_str()),
            grant_type: Some(grant_type),
            client_id: auth.client_id_hint(),
            audiences: params
                .all("audience")
                .iter()
                .chain(params.all("resource"))
                .map(String::as_str)
                .collect(),
            scopes: params
                .get("scope")
                .unwrap_or_default()
                .split_whitespace()
                .collect(),
            tenant: params.all("tenant").first().map(String::as_str),
            source,
            ..audit::Record::new("token", "refused")
        })
    };
    let granted = |claims: Option<&crate::token::AccessClaims>| {
        if let Some(c) = claims {
            s.audit.record(|| audit::Record {
                grant_type: Some(grant_type),
                source,
                ..audit::Record::new("token", issued).with_claims(c)
            });
        }
    };
    if params.all("tenant").len() > 1 {
        return match s.guarded(&auth, source, || s.core.tenant_tokens(&auth, &params)) {
            Ok(v) => {
                s.metrics.observe("token", grant_type, "ok", start);
                for t in &v.tokens {
                    granted(t.token.claims.as_deref());
                }
                json_response(StatusCode::OK, serde_json::to_vec(&v).expect("serializes"))
            }
            Err(e) => {
                s.metrics
                    .observe("token", grant_type, e.code.as_str(), start);
                refused(&e);
                error_response(StatusCode::BAD_REQUEST, &e)
            }
        };
    }
    match s.guarded(&auth, source, || s.core.token(&auth, &params)) {
        Ok(resp) => {
            s.metrics.observe("token", grant_type, "ok", start);
            granted(resp.claims.as_deref());
            json_response(
                StatusCode::OK,
                serde_json::to_vec(&resp).expect("token response serializes"),
            )
        }
        Err(e) => {
            s.metrics
                .observe("token", grant_type, e.code.as_str(), start);
            refused(&e);
            tracing::debug!(error = %e, ?auth, "token request refused");
            error_response(StatusCode::BAD_REQUEST, &e)
        }
    }
}

/// A client-authenticated form endpoint other than the token endpoint: read, call, count.
async fn form_endpoint(
    s: &AppState,
    endpoint: &'static str,
    source: Option<IpAddr>,
    headers: &HeaderMap,
    body: Body,
    call: impl FnOnce(&ClientAuth, &Params) -> Result<Response, OAuthError>,
) -> Response {
    let start = Instant::now();
    if let Some(resp) = not_ready(s, endpoint, start, source, true) {
        return resp;
    }
    let result = match read_form(headers, body).await {
        Ok((auth, params)) => s
            .guarded(&auth, source, || call(&auth, &params))
            .map_err(|e| (StatusCode::BAD_REQUEST, e)),
        Err(e) => Err(e),
    };
    match result {
        Ok(resp) => {
            s.metrics.observe(endpoint, "none", "ok", start);
            resp
        }
        Err((status, e)) => {
            s.metrics.observe(endpoint, "none", e.code.as_str(), start);
            s.audit.record(|| audit::Record {
                error: Some(e.code.as_str()),
                source,
                ..audit::Record::new(endpoint, "refused")
            });
            error_response(status, &e)
        }
    }
}

async fn introspect(
    State(s): State<Arc<AppState>>,
    ext: axum::http::Extensions,
    headers: HeaderMap,
    body: Body,
) -> Response {
    form_endpoint(
        &s,
        "introspect",
        source_of(&ext),
        &headers,
        body,
        |auth, params| {
            let v = s.core.introspect(auth, params)?;
            s.audit.record(|| {
                let active = v["active"] == true;
                audit::Record {
                    client_id: auth.client_id_hint(),
                    subject: v["sub"].as_str(),
                    audiences: v["aud"].as_str().into_iter().collect(),
                    jti: v["jti"].as_str(),
                    exp: v["exp"].as_u64(),
                    source: source_of(&ext),
                    ..audit::Record::new("introspect", if active { "active" } else { "inactive" })
                }
            });
            Ok(json_response(
                StatusCode::OK,
                serde_json::to_vec(&v).expect("introspection serializes"),
            ))
        },
    )
    .await
}

async fn revoke(
    State(s): State<Arc<AppState>>,
    ext: axum::http::Extensions,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let source = source_of(&ext);
    if let Some(resp) = not_ready(&s, "revoke", start, source, true) {
        return resp;
    }
    let mut caller = None;
    let outcome = match read_form(&headers, body).await {
        Ok((auth, params)) => {
            caller = auth.client_id_hint().map(str::to_owned);
            s.guarded(&auth, source, || s.core.revoke(&auth, &params))
                .map_err(|e| (StatusCode::BAD_REQUEST, e))
        }
        Err(e) => Err(e),
    };
    let revoked = match &outcome {
        Ok(Some((jti, exp))) => Some((jti.clone(), *exp)),
        _ => None,
    };
    let result = match outcome {
        Ok(Some((jti, exp))) => match s.revocation_sink.get() {
            // Recorded on the shared list before we say it is revoked (RFC 7009 §2.2).
            Some(sink) => sink.revoke(jti, exp).await.map_err(|e| {
                tracing::warn!(error = %e, "could not record a revocation");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    OAuthError::new(
                        ErrorCode::TemporarilyUnavailable,
                        "the revocation could not be recorded; retry",
                    ),
                )
            }),
            None => Ok(()),
        },
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    s.audit.record(|| audit::Record {
        error: result.as_ref().err().map(|(_, e)| e.code.as_str()),
        client_id: caller.as_deref(),
        jti: revoked.as_ref().map(|(j, _)| j.as_str()),
        exp: revoked.as_ref().map(|(_, e)| *e),
        source,
        ..audit::Record::new(
            "revoke",
            match (&result, &revoked) {
                (Err(_), _) => "refused",
                (Ok(()), Some(_)) => "revoked",
                // RFC 7009 §2.2: an unknown or foreign token is answered 200, and nothing happens.
                (Ok(()), None) => "ignored",
            },
        )
    });
    match result {
        Ok(()) => {
            s.metrics.observe("revoke", "none", "ok", start);
            no_store(StatusCode::OK.into_response())
        }
        Err((status, e)) => {
            s.metrics.observe("revoke", "none", e.code.as_str(), start);
            error_response(status, &e)
        }
    }
}

async fn metadata(State(s): State<Arc<AppState>>) -> Response {
    let body = serde_json::to_vec(&s.core.metadata()).expect("metadata serializes");
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn jwks(State(s): State<Arc<AppState>>) -> Response {
    if !s.ready.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "signing keys not loaded yet",
        )
            .into_response();
    }
    let body = s.core.jwks_json();
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/jwk-set+json"),
            ),
            // Short enough that a new key reaches verifiers well before it signs.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=60"),
            ),
        ],
        body.as_ref().clone(),
    )
        .into_response()
}

/// `GET /v1/tenants?limit=&page_token=`, authenticated with HTTP Basic (the client id and
/// secret).
async fn tenants(
    State(s): State<Arc<AppState>>,
    ext: axum::http::Extensions,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let start = Instant::now();
    if let Some(resp) = not_ready(&s, "tenants", start, source_of(&ext), false) {
        return resp;
    }
    let query: std::collections::BTreeMap<String, String> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let result = Params::parse(b"")
        .and_then(|p| ClientAuth::from_request(authorization, &p))
        .and_then(|auth| s.guarded(&auth, source_of(&ext), || s.core.tenants(&auth, &query)));
    match result {
        Ok(v) => {
            s.metrics.observe("tenants", "none", "ok", start);
            json_response(StatusCode::OK, serde_json::to_vec(&v).expect("serializes"))
        }
        Err(e) => {
            s.metrics.observe("tenants", "none", e.code.as_str(), start);
            error_response(StatusCode::BAD_REQUEST, &e)
        }
    }
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    if s.draining.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    if s.ready.load(Ordering::Acquire) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics_text(State(s): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        s.metrics.render(),
    )
        .into_response()
}
