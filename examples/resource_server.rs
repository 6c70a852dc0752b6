//! A receiving service: a tiny orders API that accepts the token server's access tokens.
//!
//! ```sh
//! cargo run --example resource_server -- --issuer http://127.0.0.1:8080 \
//!   --audience https://orders.example.com --scope orders:read [--listen 127.0.0.1:8090]
//! curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8090/orders
//! ```
//!
//! `GET /orders` needs `Authorization: Bearer <token>`. By default the token is verified
//! offline, the way every receiving service should: its signature against the issuer's JWKS
//! (`<issuer>/jwks.json`, fetched once and cached, fetched again for an unknown `kid` at most
//! every [`JWKS_REFETCH_INTERVAL`]), `typ: at+jwt` (RFC 9068), `iss`, `aud`, `exp`/`nbf`, and
//! that `scope` holds the required scope. With `--introspect --client-dir DIR` it asks
//! `<issuer>/oauth2/introspect` (RFC 7662) instead, authenticated with the credentials folder
//! DIR (the API's own account, or the client's: the token server tells a client about its
//! own tokens and an API's account about the tokens for its audience), and refuses what is
//! not `active`: revoked tokens included, which offline verification cannot know about.
//!
//! Refusals follow RFC 6750 §3: 401 with `WWW-Authenticate: Bearer realm=…` (no token), 401
//! with `error="invalid_token"` (a token that does not verify), 403 with
//! `error="insufficient_scope"`; 503 when the issuer cannot be reached to decide.
//!
//! `tests/examples.rs` includes this file as a module and runs [`serve`] in-process.

// The client example reads credentials folders and signs private_key_jwt assertions; the
// introspection call reuses it (and `tests/examples.rs` reaches it through here).
#[allow(dead_code)]
#[path = "client.rs"]
pub mod client;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

/// An unknown `kid` fetches the JWKS again at most this often: a flood of tokens with made-up
/// key ids must not become a flood of requests to the issuer.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

/// `realm` of the `WWW-Authenticate` challenges.
const REALM: &str = "orders";

/// The only algorithms the token server signs with; never `none`, never HMAC (RFC 8725 §3.1).
const ALGORITHMS: [Algorithm; 3] = [Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256];

/// Command-line options.
#[derive(Clone, Debug)]
pub struct Options {
    /// The token server's issuer URL: the `iss` tokens must carry, and the base of its
    /// `jwks.json` and `oauth2/introspect`.
    pub issuer: String,
    /// This API's audience.
    pub audience: String,
    /// The scope `GET /orders` requires.
    pub scope: String,
    /// Where to listen.
    pub listen: SocketAddr,
    /// `--introspect --client-dir DIR`: ask the token server, authenticated with DIR.
    pub introspect: Option<PathBuf>,
}

impl Options {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut issuer = None;
        let mut audience = None;
        let mut scope = None;
        let mut listen = "127.0.0.1:8090".to_owned();
        let mut introspect = false;
        let mut client_dir = None;
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--issuer" => issuer = Some(value()?),
                "--audience" => audience = Some(value()?),
                "--scope" => scope = Some(value()?),
                "--listen" => listen = value()?,
                "--client-dir" => client_dir = Some(PathBuf::from(value()?)),
                "--introspect" => introspect = true,
                other => return Err(format!("unknown argument {other}")),
            }
        }
        let introspect = match (introspect, client_dir) {
            (true, Some(dir)) => Some(dir),
            (true, None) => return Err("--introspect needs --client-dir".into()),
            (false, Some(_)) => return Err("--client-dir is for --introspect".into()),
            (false, None) => None,
        };
        Ok(Self {
            issuer: issuer
                .ok_or("--issuer is required")?
                .trim_end_matches('/')
                .to_owned(),
            audience: audience.ok_or("--audience is required")?,
            scope: scope.ok_or("--scope is required")?,
            listen: listen
                .parse()
                .map_err(|e| format!("--listen {listen}: {e}"))?,
            introspect,
        })
    }
}

/// The claims this API reads from a verified token (or an introspection answer).
#[derive(Clone, Debug, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Value,
    pub exp: u64,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub jti: Option<String>,
}

impl AccessClaims {
    /// Whether the space-separated `scope` holds `wanted` exactly.
    pub fn has_scope(&self, wanted: &str) -> bool {
        self.scope
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .any(|s| s == wanted)
    }
}

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No bearer token: 401 with a bare challenge.
    NoToken,
    /// A token that does not verify, or is not active: 401 `invalid_token`.
    InvalidToken(&'static str),
    /// A valid token without the scope: 403 `insufficient_scope`.
    InsufficientScope,
    /// The issuer could not be asked (JWKS or introspection): 503.
    Unavailable(String),
}

#[derive(Default)]
struct JwksCache {
    keys: HashMap<String, Jwk>,
    fetched: Option<Instant>,
}

/// What the handlers share.
pub struct Verifier {
    opts: Options,
    http: reqwest::Client,
    jwks: Mutex<JwksCache>,
}

impl Verifier {
    pub fn new(opts: Options) -> Result<Self, client::BoxError> {
        Ok(Self {
            opts,
            http: client::http_client()?,
            jwks: Mutex::default(),
        })
    }

    /// The whole decision for one request: the token's claims, or why not.
    pub async fn authorize(&self, headers: &HeaderMap) -> Result<AccessClaims, Denied> {
        let token = bearer_token(headers)?;
        let claims = match &self.opts.introspect {
            None => self.verify_offline(token).await?,
            Some(dir) => self.introspect(dir, token).await?,
        };
        if !claims.has_scope(&self.opts.scope) {
            return Err(Denied::InsufficientScope);
        }
        Ok(claims)
    }

    /// Signature against the cached JWKS, `typ`, `iss`, `aud`, `exp`, `nbf`.
    pub async fn verify_offline(&self, token: &str) -> Result<AccessClaims, Denied> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| Denied::InvalidToken("not a JWT"))?;
        let typ = header.typ.as_deref().unwrap_or_default();
        if !typ.eq_ignore_ascii_case("at+jwt") && !typ.eq_ignore_ascii_case("application/at+jwt") {
            return Err(Denied::InvalidToken("not an access token (typ)"));
        }
        if !ALGORITHMS.contains(&header.alg) {
            return Err(Denied::InvalidToken("algorithm not accepted"));
        }
        let kid = header.kid.ok_or(Denied::InvalidToken("no key id (kid)"))?;
        let jwk = self.key(&kid).await?;
        let jwk_alg = jwk
            .common
            .key_algorithm
            .and_then(|a| Algorithm::from_str(&a.to_string()).ok());
        if jwk_alg.is_some_and(|a| a != header.alg) {
            return Err(Denied::InvalidToken("algorithm does not match the key"));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| Denied::InvalidToken("unusable key"))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.opts.issuer]);
        validation.set_audience(&[&self.opts.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        jsonwebtoken::decode::<AccessClaims>(token, &key, &validation)
            .map(|d| d.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                Denied::InvalidToken(match e.kind() {
                    ErrorKind::ExpiredSignature => "expired",
                    ErrorKind::ImmatureSignature => "not yet valid",
                    ErrorKind::InvalidAudience => "not for this audience",
                    ErrorKind::InvalidIssuer => "not from the trusted issuer",
                    ErrorKind::InvalidSignature => "bad signature",
                    _ => "does not verify",
                })
            })
    }

    /// The JWK for `kid`, from the cache or a (rate-limited) fetch. The lock is held across
    /// the fetch so that concurrent requests with a new key cause one fetch.
    async fn key(&self, kid: &str) -> Result<Jwk, Denied> {
        let mut cache = self.jwks.lock().await;
        if let Some(jwk) = cache.keys.get(kid) {
            return Ok(jwk.clone());
        }
        if cache
            .fetched
            .is_some_and(|t| t.elapsed() < JWKS_REFETCH_INTERVAL)
        {
            return Err(Denied::InvalidToken("unknown key id (kid)"));
        }
        let url = format!("{}/jwks.json", self.opts.issuer);
        let set: Value = async {
            self.http
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
        }
        .await
        .map_err(|e| Denied::Unavailable(format!("{url}: {e}")))?;
        // Key by key: one key in a format this library does not know must not hide the rest.
        cache.keys = set["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter_map(|k| Some((k.common.key_id.clone()?, k)))
            .collect();
        cache.fetched = Some(Instant::now());
        cache
            .keys
            .get(kid)
            .cloned()
            .ok_or(Denied::InvalidToken("unknown key id (kid)"))
    }

    /// RFC 7662: asks the token server, authenticated with the credentials folder `dir`
    /// (read again each time, so rotations apply), and checks what it answers.
    pub async fn introspect(&self, dir: &Path, token: &str) -> Result<AccessClaims, Denied> {
        let unavailable = |e: String| Denied::Unavailable(format!("introspection: {e}"));
        let creds = client::Credentials::read(dir).map_err(|e| unavailable(e.to_string()))?;
        let url = format!("{}/oauth2/introspect", self.opts.issuer);
        let mut form = vec![("token", token.to_owned())];
        let mut request = self.http.post(&url);
        match &creds.credential {
            client::Credential::Secret(secret) => {
                request = request.basic_auth(&creds.client_id, Some(secret));
            }
            client::Credential::PrivateKey { .. } => {
                let assertion = creds
                    .client_assertion()
                    .map_err(|e| unavailable(e.to_string()))?
                    .expect("a private key makes an assertion");
                form.push(("client_id", creds.client_id.clone()));
                form.push((
                    "client_assertion_type",
                    client::CLIENT_ASSERTION_TYPE.into(),
                ));
                form.push(("client_assertion", assertion));
            }
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let answer: Value = async {
            request
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
        }
        .await
        .map_err(|e| unavailable(e.to_string()))?;
        if answer["active"] != Value::Bool(true) {
            return Err(Denied::InvalidToken("not active"));
        }
        let claims: AccessClaims = serde_json::from_value(answer)
            .map_err(|_| Denied::InvalidToken("introspection answer lacks claims"))?;
        // `active` says the server still stands by the token; whether it is meant for *this*
        // API is still ours to check.
        let aud_ok = match &claims.aud {
            Value::String(a) => *a == self.opts.audience,
            Value::Array(all) => all.iter().any(|a| *a == *self.opts.audience),
            _ => false,
        };
        if !aud_ok {
            return Err(Denied::InvalidToken("not for this audience"));
        }
        if claims.iss != self.opts.issuer {
            return Err(Denied::InvalidToken("not from the trusted issuer"));
        }
        if claims.exp + LEEWAY_SECS <= now() {
            return Err(Denied::InvalidToken("expired"));
        }
        Ok(claims)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The token of `Authorization: Bearer <token>` (the scheme is case-insensitive).
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, Denied> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(Denied::NoToken)?
        .to_str()
        .map_err(|_| Denied::InvalidToken("malformed Authorization header"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() => {
            Ok(token.trim())
        }
        _ => Err(Denied::NoToken),
    }
}

/// The RFC 6750 answer to a refusal.
pub fn refusal(denied: &Denied, required_scope: &str) -> Response {
    let (status, challenge, body) = match denied {
        Denied::NoToken => (
            StatusCode::UNAUTHORIZED,
            format!("Bearer realm=\"{REALM}\""),
            // RFC 6750 §3.1: no error code when the request had no token at all.
            json!({"message": "a bearer token is required"}),
        ),
        Denied::InvalidToken(why) => (
            StatusCode::UNAUTHORIZED,
            format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{why}\""
            ),
            json!({"error": "invalid_token", "error_description": why}),
        ),
        Denied::InsufficientScope => (
            StatusCode::FORBIDDEN,
            format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{required_scope}\""
            ),
            json!({"error": "insufficient_scope", "scope": required_scope}),
        ),
        Denied::Unavailable(why) => {
            eprintln!("resource_server: cannot decide: {why}");
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "temporarily_unavailable"}),
            );
        }
    };
    let mut resp = json_response(status, &body);
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn orders(State(v): State<Arc<Verifier>>, headers: HeaderMap) -> Response {
    match v.authorize(&headers).await {
        Ok(claims) => json_response(
            StatusCode::OK,
            &json!({
                "caller": {"sub": claims.sub, "client_id": claims.client_id},
                "orders": [
                    {"id": "o-1001", "status": "paid", "total": "42.00"},
                    {"id": "o-1002", "status": "open", "total": "7.50"},
                ],
            }),
        ),
        Err(denied) => refusal(&denied, &v.opts.scope),
    }
}

/// The API's routes.
pub fn router(verifier: Arc<Verifier>) -> Router {
    Router::new()
        .route("/orders", get(orders))
        .with_state(verifier)
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(opts: Options, listener: TcpListener) -> Result<(), client::BoxError> {
    let verifier = Arc::new(Verifier::new(opts)?);
    axum::serve(listener, router(verifier)).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "resource_server: {e}\nusage: resource_server --issuer URL --audience AUD \
                 --scope SCOPE [--listen 127.0.0.1:8090] [--introspect --client-dir DIR]"
            );
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(opts.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("resource_server: {}: {e}", opts.listen);
            return ExitCode::FAILURE;
        }
    };
    let mode = match &opts.introspect {
        Some(dir) => format!("introspection as {}", dir.display()),
        None => format!("offline against {}/jwks.json", opts.issuer),
    };
    let addr = listener.local_addr().unwrap_or(opts.listen);
    println!(
        "GET http://{addr}/orders: audience {}, scope {}, {mode}",
        opts.audience, opts.scope
    );
    match serve(opts, listener).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("resource_server: {e}");
            ExitCode::FAILURE
        }
    }
}
