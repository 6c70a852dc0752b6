//! A workload that gets an access token itself, with a third-party OAuth 2.0 client (the
//! `oauth2` crate over `reqwest`) and no code from this repository:
//!
//! ```sh
//! cargo run --example client -- <credentials-dir> <audience> [scope]
//! # against `dev`:
//! cargo run --example client -- .s2s-dev/billing/billing-worker-credentials \
//!   https://orders.example.com orders:read
//! ```
//!
//! `<credentials-dir>` is the credentials Secret as a mounted volume shows it (one file per
//! key; `dev` writes the same layout under its state dir): `client_id`, `token_url`, and
//! either `client_secret` (sent as `client_secret_basic`) or `private_key.pem` + `key_id`
//! (a one-minute `private_key_jwt` assertion, RFC 7523 §2.2, signed with `jwt-simple`:
//! `iss` = `sub` = the client id, `aud` = the token URL, a random `jti`, `kid` = the key id).
//! The folder is read on every call, so a rotated credential is used at once. A `ca.crt` in
//! it (the operator's trust bundle) is what the HTTPS client trusts.
//!
//! It prints the token response as JSON. The client secret and the private key are never
//! printed: `Credentials` has a redacting `Debug`.
//!
//! **Without arguments it is the `billing-worker` of `examples/workload-*.yaml`**: a
//! long-running workload configured by its environment, that asks for a token every
//! `REQUEST_EVERY` seconds (default 30) for `ORDERS_AUDIENCE` and `ORDERS_SCOPE` (from the
//! agent, without them: its default audience and scopes), and prints
//! one line per request (`token ok …` or `token failed: …`, with running counts), from
//! - `ORDERS_TOKEN_FILE`: a token file the agent keeps fresh (agent-sidecar.yaml), read for
//!   each request;
//! - else `S2S_TOKEN_ENDPOINT` or `TOKEN_ENDPOINT`: the agent on loopback
//!   (workload-injected.yaml); no credentials in the app at all;
//! - else `S2S_CREDENTIALS_DIR`: the mounted Secret, read again for every request
//!   (workload-files.yaml), so a rotation needs no restart;
//! - else the variables `client_id`, `client_secret`, `token_url` (and `ca.crt`): the Secret
//!   through `envFrom` (workload-envfrom.yaml), read once at start, as environment variables
//!   are, so after a rotation it fails once the grace period is over.
//!
//! `tests/examples.rs` includes this file as a module and calls [`request_token`];
//! `tests/e2e_node.rs` runs it in Pods from the workload examples.
use std::error::Error;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oauth2::basic::{BasicClient, BasicTokenResponse};
use oauth2::{AuthType, ClientId, ClientSecret, RequestTokenError, Scope, TokenUrl};
use serde_json::Value;

/// Errors of this example, with enough context to act on and no secret in them.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Lifetime of a client assertion: it is used once, right away.
const ASSERTION_LIFETIME_SECS: u64 = 60;

/// How a client proves who it is.
pub enum Credential {
    /// `client_secret`.
    Secret(String),
    /// `private_key.pem` (PKCS#8), `key_id`, and the JWS algorithm of the key.
    PrivateKey {
        pem: String,
        key_id: String,
        algorithm: String,
    },
}

/// A credentials folder, read.
pub struct Credentials {
    pub client_id: String,
    pub token_url: String,
    pub credential: Credential,
    /// `ca.crt`: the CAs the token server's certificate chains to (PEM), if given.
    pub ca: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let method = match &self.credential {
            Credential::Secret(_) => "client_secret (redacted)".to_owned(),
            Credential::PrivateKey {
                key_id, algorithm, ..
            } => format!("private key {key_id} ({algorithm}, redacted)"),
        };
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("token_url", &self.token_url)
            .field("credential", &method)
            .field("ca", &self.ca.is_some())
            .finish()
    }
}

impl Credentials {
    /// Reads a mounted credentials Secret (or `dev`'s copy of one).
    pub fn read(dir: &Path) -> Result<Self, BoxError> {
        let file = |name: &str| -> Result<Option<String>, BoxError> {
            match std::fs::read_to_string(dir.join(name)) {
                Ok(text) => Ok(Some(text.trim().to_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{}: {e}", dir.join(name).display()).into()),
            }
        };
        let required = |name: &str| -> Result<String, BoxError> {
            file(name)?.ok_or_else(|| format!("{} has no {name}", dir.display()).into())
        };
        let client_id = required("client_id")?;
        let token_url = required("token_url")?;
        let credential = if let Some(secret) = file("client_secret")? {
            Credential::Secret(secret)
        } else if let Some(pem) = file("private_key.pem")? {
            Credential::PrivateKey {
                pem,
                key_id: required("key_id")?,
                algorithm: key_algorithm(file("credentials.json")?, file("private_key.jwk")?)
                    .ok_or_else(|| format!("{}: cannot tell the key's algorithm", dir.display()))?,
            }
        } else {
            return Err(format!(
                "{} holds neither client_secret nor private_key.pem (a federated account \
                 has no Secret: use the agent with a projected token)",
                dir.display()
            )
            .into());
        };
        Ok(Self {
            client_id,
            token_url,
            credential,
            ca: file("ca.crt")?,
        })
    }

    /// The Secret as `envFrom` makes it: one variable per key (a key that is not a valid
    /// variable name on the cluster, such as `ca.crt` before Kubernetes 1.32, is skipped).
    pub fn from_env() -> Result<Self, BoxError> {
        let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_owned());
        let required = |name: &str| -> Result<String, BoxError> {
            var(name).ok_or_else(|| format!("no {name} in the environment").into())
        };
        Ok(Self {
            client_id: required("client_id")?,
            token_url: required("token_url")?,
            credential: Credential::Secret(required("client_secret")?),
            ca: var("ca.crt"),
        })
    }

    /// A fresh `private_key_jwt` assertion, or `None` for a client secret.
    pub fn client_assertion(&self) -> Result<Option<String>, BoxError> {
        match &self.credential {
            Credential::Secret(_) => Ok(None),
            Credential::PrivateKey {
                pem,
                key_id,
                algorithm,
            } => sign_assertion(&self.client_id, &self.token_url, pem, key_id, algorithm).map(Some),
        }
    }
}

/// The key's JWS algorithm: `credentials.json`'s `algorithm`, else the JWK's `alg`, else
/// its key type.
fn key_algorithm(credentials_json: Option<String>, jwk: Option<String>) -> Option<String> {
    let parse = |text: Option<String>| -> Value {
        text.and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    };
    let doc = parse(credentials_json);
    if let Some(alg) = doc["algorithm"].as_str() {
        return Some(alg.to_owned());
    }
    let jwk = parse(jwk);
    if let Some(alg) = jwk["alg"].as_str() {
        return Some(alg.to_owned());
    }
    match (jwk["kty"].as_str(), jwk["crv"].as_str()) {
        (Some("EC"), Some("P-256")) => Some("ES256".to_owned()),
        (Some("OKP"), Some("Ed25519")) => Some("EdDSA".to_owned()),
        (Some("RSA"), _) => Some("RS256".to_owned()),
        _ => None,
    }
}

/// A `private_key_jwt` client assertion (RFC 7523 §3): `iss` = `sub` = the client id, `aud`
/// = the token endpoint, one minute, a random `jti` (the server refuses a replayed one).
pub fn sign_assertion(
    client_id: &str,
    token_url: &str,
    pem: &str,
    key_id: &str,
    algorithm: &str,
) -> Result<String, BoxError> {
    use jwt_simple::prelude::{
        Claims, ECDSAP256KeyPairLike, ES256KeyPair, Ed25519KeyPair, EdDSAKeyPairLike, RS256KeyPair,
        RSAKeyPairLike,
    };
    let claims = Claims::create(jwt_simple::prelude::Duration::from_secs(
        ASSERTION_LIFETIME_SECS,
    ))
    .with_issuer(client_id)
    .with_subject(client_id)
    .with_audience(token_url)
    .with_jwt_id(random_jti()?);
    let assertion = match algorithm {
        "ES256" => ES256KeyPair::from_pem(pem)?
            .with_key_id(key_id)
            .sign(claims)?,
        "EdDSA" => Ed25519KeyPair::from_pem(pem)?
            .with_key_id(key_id)
            .sign(claims)?,
        "RS256" => RS256KeyPair::from_pem(pem)?
            .with_key_id(key_id)
            .sign(claims)?,
        other => return Err(format!("unsupported key algorithm {other}").into()),
    };
    Ok(assertion)
}

/// 128 random bits from the system's CSPRNG (aws-lc-rs), base64url.
fn random_jti() -> Result<String, BoxError> {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness")?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The HTTP client for token requests: no redirects (a token endpoint that redirects is
/// misconfigured, and following one could send credentials elsewhere), short timeouts.
pub fn http_client() -> Result<reqwest::Client, BoxError> {
    http_client_trusting(None)
}

/// [`http_client`] that trusts the PEM certificates of `ca` for HTTPS (nothing else: the
/// token server's CA is the operator's own, or the one you gave it).
pub fn http_client_trusting(ca: Option<&str>) -> Result<reqwest::Client, BoxError> {
    // rustls on aws-lc-rs, the crypto the rest of the project uses (already installed: fine).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10));
    for cert in reqwest::Certificate::from_pem_bundle(ca.unwrap_or_default().as_bytes())? {
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder.build()?)
}

/// `grant_type=client_credentials` at the folder's `token_url` for `audience` and the
/// space-separated `scope` (none: every scope the grants give).
pub async fn request_token(
    creds: &Credentials,
    audience: &str,
    scope: Option<&str>,
) -> Result<BasicTokenResponse, BoxError> {
    let http = http_client_trusting(creds.ca.as_deref())?;
    let mut client = BasicClient::new(ClientId::new(creds.client_id.clone()))
        .set_token_uri(TokenUrl::new(creds.token_url.clone())?)
        .set_auth_type(AuthType::BasicAuth);
    if let Credential::Secret(secret) = &creds.credential {
        client = client.set_client_secret(ClientSecret::new(secret.clone()));
    }
    // Without a client secret the library sends `client_id` in the body; the assertion goes
    // beside it.
    let mut request = client
        .exchange_client_credentials()
        .add_extra_param("audience", audience.to_owned());
    if let Some(assertion) = creds.client_assertion()? {
        request = request
            .add_extra_param("client_assertion_type", CLIENT_ASSERTION_TYPE)
            .add_extra_param("client_assertion", assertion);
    }
    for s in scope.unwrap_or_default().split_whitespace() {
        request = request.add_scope(Scope::new(s.to_owned()));
    }
    request.request_async(&http).await.map_err(|e| match e {
        RequestTokenError::ServerResponse(r) => format!(
            "the token server refused: {}{}",
            r.error(),
            r.error_description()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        )
        .into(),
        other => format!("token request to {} failed: {other}", creds.token_url).into(),
    })
}

/// Where the long-running workload gets its tokens (see the module documentation).
enum Source {
    TokenFile(PathBuf),
    Agent(String),
    Files(PathBuf),
    Env(Credentials),
}

impl Source {
    fn from_env() -> Result<Self, BoxError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(file) = var("ORDERS_TOKEN_FILE") {
            Ok(Self::TokenFile(file.into()))
        } else if let Some(url) = var("S2S_TOKEN_ENDPOINT").or_else(|| var("TOKEN_ENDPOINT")) {
            Ok(Self::Agent(url))
        } else if let Some(dir) = var("S2S_CREDENTIALS_DIR") {
            Ok(Self::Files(dir.into()))
        } else {
            Ok(Self::Env(Credentials::from_env().map_err(|e| {
                format!("{e} (set S2S_TOKEN_ENDPOINT, S2S_CREDENTIALS_DIR, or envFrom the Secret)")
            })?))
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::TokenFile(_) => "agent's token file",
            Self::Agent(_) => "agent",
            Self::Files(_) => "files",
            Self::Env(_) => "env",
        }
    }

    /// One token, described by its lifetime (from a token file: the file's age). No
    /// audience: the agent's default (its `--audience`, the `s2s.dev/inject-audience`
    /// annotation).
    async fn token(&self, audience: Option<&str>, scope: Option<&str>) -> Result<String, BoxError> {
        let required = || audience.ok_or("ORDERS_AUDIENCE is not set");
        let expires_in = |r: BasicTokenResponse| {
            let secs = oauth2::TokenResponse::expires_in(&r).map_or(0, |d| d.as_secs());
            format!("expires in {secs} s")
        };
        match self {
            Self::Files(dir) => {
                let creds = Credentials::read(dir)?;
                Ok(expires_in(request_token(&creds, required()?, scope).await?))
            }
            Self::TokenFile(path) => {
                // The agent replaces the file atomically before the token expires; its age
                // says how fresh it is (the token itself is opaque to the caller).
                let token = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if token.trim().is_empty() {
                    return Err(format!("{} is empty", path.display()).into());
                }
                let age = std::fs::metadata(path)?
                    .modified()?
                    .elapsed()
                    .unwrap_or_default();
                Ok(format!("written {} s ago", age.as_secs()))
            }
            Self::Env(creds) => Ok(expires_in(request_token(creds, required()?, scope).await?)),
            Self::Agent(url) => {
                let mut query: Vec<(&str, &str)> =
                    audience.map(|a| ("audience", a)).into_iter().collect();
                query.extend(scope.map(|s| ("scope", s)));
                let resp = http_client()?.get(url).query(&query).send().await?;
                let status = resp.status();
                let body: Value = resp.json().await.unwrap_or_default();
                if !status.is_success() {
                    return Err(format!(
                        "the agent answered {status}: {} ({})",
                        body["error"].as_str().unwrap_or("?"),
                        body["error_description"].as_str().unwrap_or_default()
                    )
                    .into());
                }
                body["access_token"]
                    .as_str()
                    .ok_or("the agent's answer has no access_token")?;
                Ok(format!(
                    "expires in {} s",
                    body["expires_in"].as_u64().unwrap_or(0)
                ))
            }
        }
    }
}

/// The `billing-worker` of examples/workload-*.yaml: a token every `REQUEST_EVERY` seconds,
/// one line each, until SIGTERM (or Ctrl-C).
async fn workload() -> Result<(), BoxError> {
    let audience = std::env::var("ORDERS_AUDIENCE")
        .ok()
        .filter(|s| !s.is_empty());
    let scope = std::env::var("ORDERS_SCOPE").ok().filter(|s| !s.is_empty());
    let every = match std::env::var("REQUEST_EVERY") {
        Ok(v) => Duration::from_secs_f64(v.parse().map_err(|_| "REQUEST_EVERY: seconds")?),
        Err(_) => Duration::from_secs(30),
    };
    let source = Source::from_env()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (mut ok, mut failed) = (0u64, 0u64);
    println!(
        "billing-worker: tokens for {} from the {}, every {} s",
        audience
            .as_deref()
            .unwrap_or("the agent's default audience"),
        source.name(),
        every.as_secs_f64()
    );
    loop {
        match source.token(audience.as_deref(), scope.as_deref()).await {
            Ok(about) => {
                ok += 1;
                println!("token ok ({about}); ok={ok} failed={failed}");
            }
            Err(e) => {
                failed += 1;
                println!("token failed: {e}; ok={ok} failed={failed}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    println!("billing-worker: stopping; ok={ok} failed={failed}");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, audience, scope) = match args.as_slice() {
        [] => {
            return match workload().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("billing-worker: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        [dir, audience] => (dir, audience, None),
        [dir, audience, scope] => (dir, audience, Some(scope.as_str())),
        _ => {
            eprintln!(
                "usage: client <credentials-dir> <audience> [scope]\n       client   \
                 (the billing-worker workload, configured by its environment)"
            );
            return ExitCode::from(2);
        }
    };
    let result = async {
        let creds = Credentials::read(Path::new(dir))?;
        let token = request_token(&creds, audience, scope).await?;
        Ok::<_, BoxError>(serde_json::to_string_pretty(&token)?)
    }
    .await;
    match result {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("client: {e}");
            ExitCode::FAILURE
        }
    }
}
