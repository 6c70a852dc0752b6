//! The `s2s-operator` binary: one program, one subcommand per mode.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use s2s_operator::{
    agent, api, controller, crypto::KeyAlgorithm, dev, k8s, signing_keys, token, token_server,
};

/// Service-to-service authentication for Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "s2s-operator", version, about)]
struct Cli {
    /// Log lines as `text` (for people) or `json` (one object a line, for log shippers).
    /// Logs go to stderr, coloured only when it is a terminal (and `NO_COLOR` is unset).
    #[arg(
        long,
        global = true,
        env = "S2S_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// JSON lines: `timestamp`, `level`, `target`, `fields` (with `message`), and the spans.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Controller logic and token server in one process, from YAML manifests, with no cluster.
    Dev(DevArgs),
    /// Reconcile ServiceAccounts into Secrets and keep the signing keys (leader-elected).
    Controller(ControllerArgs),
    /// The OAuth 2.0 token server, fed by watches of the cluster's resources.
    TokenServer(TokenServerArgs),
    /// Workload sidecar: mounted credentials to cached, refreshed access tokens on loopback
    /// and in files.
    Agent(AgentArgs),
    /// Exit 0 when URL answers 200 within 4 s, else 1: an exec probe for images without a
    /// shell (the injected agent's startup probe asks its `/v1/ready`).
    Probe {
        /// A plain-HTTP URL (the agent listens on the Pod's loopback).
        url: String,
    },
    /// Print the CustomResourceDefinitions (the source of `crds/`).
    Crdgen {
        /// Write one file per kind into this folder instead of printing them.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct DevArgs {
    /// Manifest files or folders holding ServiceAccounts, TrustedIssuers, TokenGrants and
    /// AccessTokens (repeatable).
    #[arg(long = "manifests", value_name = "PATH", default_value = "examples")]
    manifests: Vec<PathBuf>,
    /// Address of the token server (plain HTTP; keep it on loopback).
    #[arg(long, env = "S2S_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where credentials (as a mounted-Secret tree) and state go.
    #[arg(long, env = "S2S_STATE_DIR", default_value = ".s2s-dev")]
    state_dir: PathBuf,
    /// Issuer URL; by default `http://` and the listen address.
    #[arg(long, env = "S2S_ISSUER")]
    issuer: Option<String>,
    /// Algorithm of the token-signing keys.
    #[arg(long, env = "S2S_SIGNING_ALGORITHM", value_enum, default_value_t = Alg::Es256)]
    signing_algorithm: Alg,
    /// Upper bound on every token's lifetime (Go duration, at most 24h).
    #[arg(long, env = "S2S_MAX_TOKEN_LIFETIME", default_value = "24h", value_parser = parse_lifetime)]
    max_token_lifetime: Duration,
    /// How often the signing key rotates (Go duration).
    #[arg(long, env = "S2S_KEY_ROTATION", default_value = "720h", value_parser = parse_duration)]
    key_rotation: Duration,
    /// Let TokenGrants name audiences that no ServiceAccount claims.
    #[arg(long, env = "S2S_ALLOW_UNCLAIMED_AUDIENCES")]
    allow_unclaimed_audiences: bool,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    audit: AuditArgs,
}

/// Settings shared by `controller` and `token-server`. The cluster is reached as kubectl
/// would: in a Pod its service account, else `KUBECONFIG` or `~/.kube/config`.
#[derive(clap::Args, Debug)]
struct ClusterArgs {
    /// The operator namespace (signing keys, leader Lease); else `POD_NAMESPACE`, else
    /// `s2s-system`.
    #[arg(long, env = "S2S_NAMESPACE")]
    namespace: Option<String>,
    /// Issuer URL (`iss` of every token, base of the token URL written into Secrets); by
    /// default `https://s2s-operator.<namespace>.svc`.
    #[arg(long, env = "S2S_ISSUER")]
    issuer: Option<String>,
    /// Upper bound on every token's lifetime (Go duration, at most 24h); signing keys stay
    /// published this long (plus skew) after they stop signing.
    #[arg(long, env = "S2S_MAX_TOKEN_LIFETIME", default_value = "24h", value_parser = parse_lifetime)]
    max_token_lifetime: Duration,
}

impl ClusterArgs {
    fn namespace(&self) -> String {
        self.namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|n| !n.is_empty())
            })
            .unwrap_or_else(|| "s2s-system".into())
    }

    fn issuer(&self) -> String {
        self.issuer
            .clone()
            .unwrap_or_else(|| format!("https://s2s-operator.{}.svc", self.namespace()))
            .trim_end_matches('/')
            .to_owned()
    }
}

/// Brute-force protection of client authentication (token endpoints).
#[derive(clap::Args, Debug)]
struct LimitArgs {
    /// Failed authentications in a row that lock a client id out.
    #[arg(long, env = "S2S_AUTH_FAILURES", default_value_t = 10)]
    auth_failures: u32,
    /// Longest lockout of a client id (Go duration); lockouts start at 1s and double.
    #[arg(long, env = "S2S_AUTH_LOCKOUT_MAX", default_value = "5m", value_parser = parse_duration)]
    auth_lockout_max: Duration,
    /// Failed authentications per minute one source address may make before it is refused
    /// for clients that have not succeeded from it.
    #[arg(long, env = "S2S_AUTH_SOURCE_FAILURES", default_value_t = 100)]
    auth_source_failures: u32,
}

/// The audit trail of the token endpoints.
#[derive(clap::Args, Debug)]
struct AuditArgs {
    /// Where one JSON line per token, introspection and revocation request goes: `off`,
    /// `stdout`, `stderr` (between log lines) or a file path (appended).
    #[arg(
        long = "audit-log",
        env = "S2S_AUDIT_LOG",
        default_value = "off",
        value_name = "TARGET"
    )]
    audit_log: s2s_operator::http::audit::Target,
}

impl LimitArgs {
    fn limits(&self) -> s2s_operator::http::Limits {
        s2s_operator::http::Limits {
            client_failures: self.auth_failures.max(1),
            lock_base: Duration::from_secs(1).min(self.auth_lockout_max),
            lock_max: self.auth_lockout_max,
            source_failures: self.auth_source_failures.max(1),
            ..Default::default()
        }
    }
}

#[derive(clap::Args, Debug)]
struct ControllerArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "S2S_HEALTH_LISTEN", default_value = "0.0.0.0:8081")]
    health_listen: SocketAddr,
    /// Algorithm of new token-signing keys.
    #[arg(long, env = "S2S_SIGNING_ALGORITHM", value_enum, default_value_t = Alg::Es256)]
    signing_algorithm: Alg,
    /// How often the token-signing key rotates (Go duration).
    #[arg(long, env = "S2S_KEY_ROTATION", default_value = "720h", value_parser = parse_duration)]
    key_rotation: Duration,
    /// How long a new signing key is published in the JWKS before it signs (Go duration);
    /// longer than resource servers cache the JWKS.
    #[arg(long, env = "S2S_KEY_PUBLISH_AHEAD", default_value = "15m", value_parser = parse_duration)]
    key_publish_ahead: Duration,
    /// This replica's name in the leader Lease; else `POD_NAME`, else host name and pid.
    #[arg(long, env = "S2S_IDENTITY")]
    identity: Option<String>,
    /// How long the leader Lease is valid after a renewal (Go duration).
    #[arg(long, env = "S2S_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// A leader that could not renew for this long stops acting (Go duration).
    #[arg(long, env = "S2S_LEASE_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    lease_renew_deadline: Duration,
    /// How often the Lease is renewed or retried (Go duration).
    #[arg(long, env = "S2S_LEASE_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    lease_retry_period: Duration,
    /// How many ServiceAccounts are reconciled at once.
    #[arg(long, env = "S2S_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// Let TokenGrants name audiences that no ServiceAccount claims (set it as on the token
    /// server).
    #[arg(long, env = "S2S_ALLOW_UNCLAIMED_AUDIENCES")]
    allow_unclaimed_audiences: bool,
    /// Keep the operator's own CA in this Secret of the operator namespace, and issue the
    /// `--tls-certificate`s with it. Off without it.
    #[arg(long, env = "S2S_TLS_CA_SECRET")]
    tls_ca_secret: Option<String>,
    /// A serving certificate to keep: `SECRET=NAME[,NAME...]` (DNS names or IP addresses),
    /// a `kubernetes.io/tls` Secret in the operator namespace with the trust bundle in
    /// `ca.crt` (repeatable; the env var takes a space-separated list).
    #[arg(
        long = "tls-certificate",
        env = "S2S_TLS_CERTIFICATES",
        value_delimiter = ' ',
        requires = "tls_ca_secret"
    )]
    tls_certificates: Vec<s2s_operator::tls::manager::Target>,
    /// The MutatingWebhookConfiguration whose `caBundle` the controller keeps equal to the
    /// trust bundle.
    #[arg(long, env = "S2S_WEBHOOK_CONFIGURATION", requires = "tls_ca_secret")]
    webhook_configuration: Option<String>,
    /// Life of the operator's CA (Go duration); a new one is made at 2/3 of it.
    #[arg(long, env = "S2S_TLS_CA_LIFETIME", default_value = "8760h", value_parser = parse_duration)]
    tls_ca_lifetime: Duration,
    /// Life of a serving certificate (Go duration); renewed at 2/3 of it.
    #[arg(long, env = "S2S_TLS_CERT_LIFETIME", default_value = "2160h", value_parser = parse_duration)]
    tls_cert_lifetime: Duration,
    /// How long a new CA is trusted before certificates from it are served, and a new
    /// certificate is served before the old CA leaves the bundle (Go duration): longer than
    /// kubelets take to update a mounted Secret.
    #[arg(long, env = "S2S_TLS_PROPAGATION", default_value = "5m", value_parser = parse_duration)]
    tls_propagation: Duration,
}

#[derive(clap::Args, Debug)]
struct TokenServerArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Address to serve on.
    #[arg(long, env = "S2S_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// TLS certificate chain (PEM); re-read when the file changes. Without it and
    /// `--tls-key`, plain HTTP.
    #[arg(long, env = "S2S_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "S2S_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A `kubernetes.io/tls` Secret in the operator namespace to serve HTTPS with (what the
    /// controller's `--tls-certificate` issues, or a cert-manager Certificate's); followed
    /// with a watch, so a renewal needs no restart.
    #[arg(long, env = "S2S_TLS_SECRET", conflicts_with = "tls_cert")]
    tls_secret: Option<String>,
    /// Serve the sidecar-injection webhook (HTTPS) on this address.
    #[arg(long, env = "S2S_WEBHOOK_LISTEN", requires = "agent_image")]
    webhook_listen: Option<SocketAddr>,
    /// The webhook's certificate: a `kubernetes.io/tls` Secret in the operator namespace.
    #[arg(long, env = "S2S_WEBHOOK_TLS_SECRET")]
    webhook_tls_secret: Option<String>,
    /// The webhook's certificate as PEM files (instead of a Secret).
    #[arg(
        long,
        env = "S2S_WEBHOOK_TLS_CERT",
        requires = "webhook_tls_key",
        conflicts_with = "webhook_tls_secret"
    )]
    webhook_tls_cert: Option<PathBuf>,
    /// The webhook's key (PEM).
    #[arg(long, env = "S2S_WEBHOOK_TLS_KEY", requires = "webhook_tls_cert")]
    webhook_tls_key: Option<PathBuf>,
    /// The image of the injected agent (the operator's own).
    #[arg(long, env = "S2S_AGENT_IMAGE")]
    agent_image: Option<String>,
    /// Pull policy of the injected agent's image.
    #[arg(long, env = "S2S_AGENT_IMAGE_PULL_POLICY")]
    agent_image_pull_policy: Option<String>,
    /// Let TokenGrants name audiences that no ServiceAccount claims.
    #[arg(long, env = "S2S_ALLOW_UNCLAIMED_AUDIENCES")]
    allow_unclaimed_audiences: bool,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    audit: AuditArgs,
    /// On SIGTERM, keep answering this long with `/readyz` failing and every connection
    /// closed after its answer, then stop (Go duration; below the Pod's grace period).
    #[arg(long, env = "S2S_SHUTDOWN_DRAIN", default_value = "5s", value_parser = parse_duration)]
    shutdown_drain: Duration,
}

#[derive(clap::Args, Debug)]
struct AgentArgs {
    /// The mounted credentials Secret (`client_id`, `client_secret` or `private_key.pem`,
    /// `token_url`, …); read again for every token request, so rotations need no restart.
    #[arg(long, env = "S2S_AGENT_CREDENTIALS", value_name = "DIR")]
    credentials: Option<PathBuf>,
    /// Where the application asks for tokens (`GET /v1/token?audience=…&scope=…`).
    #[arg(long, env = "S2S_AGENT_LISTEN", default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Serve on an address other than loopback (anyone who can connect gets tokens).
    #[arg(long, env = "S2S_AGENT_ALLOW_NON_LOOPBACK")]
    allow_non_loopback: bool,
    /// Folder for token files (a volume shared with the application).
    #[arg(long, env = "S2S_AGENT_TOKEN_DIR", value_name = "DIR")]
    token_dir: Option<PathBuf>,
    /// A token file to keep fresh: `NAME=audience[,scope...]` writes `TOKEN_DIR/NAME`
    /// (repeatable; the env var takes a space-separated list).
    #[arg(
        long = "token",
        env = "S2S_AGENT_TOKENS",
        value_name = "SPEC",
        value_delimiter = ' '
    )]
    tokens: Vec<agent::TokenSpec>,
    /// Projected service-account token for federated accounts; by default
    /// `/var/run/secrets/tokens/s2s-token` if it exists.
    #[arg(long, env = "S2S_AGENT_PROJECTED_TOKEN", value_name = "PATH")]
    projected_token: Option<PathBuf>,
    /// The token endpoint, when the credentials folder has no `token_url` (federated).
    #[arg(long, env = "S2S_AGENT_TOKEN_URL")]
    token_url: Option<String>,
    /// Extra root certificates (PEM) to trust for the token endpoint (a private CA). A
    /// `ca.crt` in the credentials folder is trusted too, and followed as it changes.
    #[arg(long, env = "S2S_AGENT_CA_FILE", value_name = "PATH")]
    ca_file: Option<PathBuf>,
    /// Extra root certificates as PEM text (what the injection webhook gives a federated
    /// account's agent, which has no credentials folder).
    #[arg(
        long = "ca",
        env = "S2S_AGENT_CA",
        value_name = "PEM",
        hide_env_values = true
    )]
    ca_pem: Option<String>,
    /// Refresh a token after this fraction of its lifetime (±5 % jitter).
    #[arg(long, env = "S2S_AGENT_REFRESH_AT", default_value_t = agent::DEFAULT_REFRESH_AT)]
    refresh_at: f64,
    /// The audience of a `GET /v1/token` that names none; `/v1/ready` answers 200 once a
    /// token for it was obtained.
    #[arg(long, env = "S2S_AGENT_AUDIENCE")]
    audience: Option<String>,
    /// Scopes of a `GET /v1/token` that names neither audience nor scope (repeatable).
    #[arg(long = "scope", env = "S2S_AGENT_SCOPES", value_delimiter = ' ')]
    scopes: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Alg {
    #[value(name = "ES256")]
    Es256,
    #[value(name = "EdDSA")]
    EdDsa,
    #[value(name = "RS256")]
    Rs256,
}

impl From<Alg> for KeyAlgorithm {
    fn from(a: Alg) -> Self {
        match a {
            Alg::Es256 => KeyAlgorithm::ES256,
            Alg::EdDsa => KeyAlgorithm::EdDSA,
            Alg::Rs256 => KeyAlgorithm::RS256,
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<api::Duration>()
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > Duration::from_secs(24 * 3600) || d < Duration::from_secs(60) {
        return Err("must be between 1m and 24h".into());
    }
    Ok(d)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Every mode, crdgen included, so the flag means the same everywhere.
    init_tracing(cli.log_format);
    let format = cli.log_format;
    let result = match cli.command {
        Command::Crdgen { output_dir } => crdgen(output_dir),
        Command::Probe { url } => probe(&url),
        Command::Dev(args) => run_dev(args),
        Command::Agent(args) => run_agent(args),
        Command::Controller(args) => run_cluster(|client, stop| controller(client, args, stop)),
        Command::TokenServer(args) => run_cluster(|client, stop| token_server(client, args, stop)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if format == LogFormat::Json {
                // A log shipper reads stderr as JSON lines: the reason a process died is one.
                tracing::error!(error = %e, "exiting");
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// A multi-threaded runtime, or why there is none.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Runs a cluster mode: a runtime, a client, and a stop signal on SIGTERM or Ctrl-C.
fn run_cluster<F, Fut>(mode: F) -> Result<(), String>
where
    F: FnOnce(kube::Client, controller::Stop) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    runtime()?.block_on(async {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("cannot reach the cluster: {e}"))?;
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            terminated().await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        });
        mode(client, stop).await
    })
}

/// SIGTERM (Kubernetes stopping the Pod) or Ctrl-C.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn controller(
    client: kube::Client,
    args: ControllerArgs,
    stop: controller::Stop,
) -> Result<(), String> {
    let options = controller::Options {
        namespace: args.cluster.namespace(),
        issuer: args.cluster.issuer(),
        key_policy: signing_keys::Policy {
            algorithm: args.signing_algorithm.into(),
            rotate_every: args.key_rotation,
            publish_ahead: args.key_publish_ahead,
            retire_after: args.cluster.max_token_lifetime + token::Config::new("").clock_skew,
        },
        identity: args.identity.unwrap_or_else(controller::default_identity),
        lease: k8s::lease::Timing {
            lease_duration: args.lease_duration,
            renew_deadline: args.lease_renew_deadline,
            renew_every: args.lease_retry_period,
        },
        concurrency: args.concurrency,
        revocation_prune_every: std::time::Duration::from_secs(300),
        max_token_lifetime: args.cluster.max_token_lifetime,
        allow_unclaimed_audiences: args.allow_unclaimed_audiences,
        tls: args
            .tls_ca_secret
            .map(|ca_secret| s2s_operator::tls::manager::Options {
                ca_secret,
                targets: args.tls_certificates,
                webhook_configuration: args.webhook_configuration,
                policy: s2s_operator::tls::Policy {
                    ca_lifetime: args.tls_ca_lifetime,
                    cert_lifetime: args.tls_cert_lifetime,
                    propagation: args.tls_propagation,
                },
            }),
    };
    let metrics = std::sync::Arc::new(controller::Metrics::new());
    let (leading_tx, _) = tokio::sync::watch::channel(false);
    // Ready once the first election attempt has answered (leading or standing by): a standby
    // replica is healthy, and the token-server beside it must stay in the Service.
    let (ready_tx, ready) = tokio::sync::watch::channel(false);
    let mut first = leading_tx.subscribe();
    tokio::spawn(async move {
        if first.changed().await.is_ok() {
            let _ = ready_tx.send(true);
        }
    });
    let listener = tokio::net::TcpListener::bind(args.health_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.health_listen))?;
    let health = controller::health_router(metrics.clone(), ready);
    let health_stop = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, health)
            .with_graceful_shutdown(controller::stopped(health_stop))
            .await;
    });
    tracing::info!(namespace = %options.namespace, identity = %options.identity, "controller starting");
    controller::run(
        client,
        options,
        std::sync::Arc::new(token::SystemClock),
        metrics,
        leading_tx,
        stop,
    )
    .await;
    Ok(())
}

async fn token_server(
    client: kube::Client,
    args: TokenServerArgs,
    stop: controller::Stop,
) -> Result<(), String> {
    use s2s_operator::tls::serve::Source;
    let namespace = args.cluster.namespace();
    let secret_source = |name: String| Source::Secret {
        api: Box::new(kube::Api::namespaced(client.clone(), &namespace)),
        name,
    };
    let tls = match (args.tls_cert.zip(args.tls_key), args.tls_secret) {
        (Some((cert, key)), _) => Some(Source::Files { cert, key }),
        (None, Some(name)) => Some(secret_source(name)),
        (None, None) => None,
    };
    let webhook = match args.webhook_listen {
        None => None,
        Some(listen) => {
            let tls = match (
                args.webhook_tls_cert.zip(args.webhook_tls_key),
                args.webhook_tls_secret,
            ) {
                (Some((cert, key)), _) => Source::Files { cert, key },
                (None, Some(name)) => secret_source(name),
                (None, None) => {
                    return Err(
                        "--webhook-listen needs --webhook-tls-secret or --webhook-tls-cert/--webhook-tls-key".into(),
                    );
                }
            };
            let mut config = s2s_operator::inject::Config::new(
                args.agent_image.unwrap_or_default(),
                format!("{}/oauth2/token", args.cluster.issuer()),
            );
            config.image_pull_policy = args.agent_image_pull_policy;
            Some(token_server::WebhookOptions {
                listen,
                tls,
                config,
            })
        }
    };
    let options = token_server::Options {
        namespace: namespace.clone(),
        issuer: args.cluster.issuer(),
        listen: args.listen,
        tls,
        webhook,
        max_token_lifetime: args.cluster.max_token_lifetime,
        allow_unclaimed_audiences: args.allow_unclaimed_audiences,
        limits: args.limits.limits(),
        audit: args.audit.audit_log,
        shutdown_drain: args.shutdown_drain,
    };
    token_server::run(
        client,
        options,
        std::sync::Arc::new(token::SystemClock),
        stop,
        None,
    )
    .await
    .map_err(|e| e.to_string())
}

/// Logs to stderr in `format`. Colour codes only for a terminal: a redirected log (a file, a
/// container runtime, a pipe) would otherwise be full of escape sequences.
fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("S2S_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && !no_color)
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

fn run_dev(args: DevArgs) -> Result<(), String> {
    let options = dev::Options {
        manifests: args.manifests,
        listen: args.listen,
        state_dir: args.state_dir,
        issuer: args.issuer,
        signing_algorithm: args.signing_algorithm.into(),
        max_token_lifetime: args.max_token_lifetime,
        key_rotation: args.key_rotation,
        allow_unclaimed_audiences: args.allow_unclaimed_audiences,
        poll_interval: Duration::from_secs(1),
        limits: args.limits.limits(),
        audit: args.audit.audit_log,
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    runtime()?
        .block_on(dev::run(options, shutdown))
        .map_err(|e| e.to_string())
}

fn run_agent(args: AgentArgs) -> Result<(), String> {
    let mut options = agent::Options::new(PathBuf::new());
    options.credentials = args.credentials;
    options.listen = args.listen;
    options.allow_non_loopback = args.allow_non_loopback;
    options.token_dir = args.token_dir;
    options.tokens = args.tokens;
    options.projected_token = agent::projected_token_or_default(args.projected_token);
    options.token_url = args.token_url;
    options.ca_file = args.ca_file;
    options.ca_pem = args.ca_pem;
    options.refresh_at = args.refresh_at;
    options.audience = args.audience;
    options.scopes = args.scopes;
    runtime()?
        .block_on(agent::run(options, terminated()))
        .map_err(|e| e.to_string())
}

fn probe(url: &str) -> Result<(), String> {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    runtime()?.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Empty<Bytes>>();
        match tokio::time::timeout(Duration::from_secs(4), client.get(uri)).await {
            Ok(Ok(r)) if r.status() == 200 => Ok(()),
            Ok(Ok(r)) => Err(format!("{url}: HTTP {}", r.status())),
            Ok(Err(e)) => Err(format!("{url}: {e}")),
            Err(_) => Err(format!("{url}: no answer within 4 s")),
        }
    })
}

fn crdgen(output_dir: Option<PathBuf>) -> Result<(), String> {
    let crds = api::crds();
    match output_dir {
        None => {
            let docs: Vec<String> = crds.iter().map(api::crd_yaml).collect();
            print!("{}", docs.join("---\n"));
        }
        Some(dir) => {
            for crd in &crds {
                let path = dir.join(api::crd_file_name(crd));
                std::fs::write(&path, api::crd_yaml(crd))
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}
