//! `kubectl s2s`: the admin portal's buttons as commands (the `kubectl-s2s` binary).
//!
//! Every command reaches the cluster as kubectl does (kubeconfig, `--context`, `-n`, the
//! context's namespace) and talks to the token server through the API server's service
//! proxy, so nobody needs a port-forward, the annotation names or the Secret layout:
//!
//! * [`status`]: conditions, Events, credential age and rotation, grants, materialized tokens;
//! * [`rotate`]: a new secret or key, or an AccessToken's new token, now (the `s2s.dev/rotate`
//!   annotation), optionally waiting;
//! * [`token`]: a test token from an account's own credentials Secret;
//! * [`revoke`]: a TokenGrant (`spec.revoked`) or one token (RFC 7009);
//! * [`inspect`]: a JWT's header and claims, its signature checked against the JWKS;
//! * [`check`]: the installation (CRDs, leader Lease, token server and keys, issuers, webhook).
//!
//! The pure parts (report building, formatting, JWT verdicts, credential parsing) take no
//! client and are unit-tested next to the code; [`conn`] holds all I/O plumbing. Nothing here
//! prints a secret or token except `token`, whose job it is.

pub mod check;
pub mod conn;
pub mod creds;
pub mod format;
pub mod inspect;
pub mod revoke;
pub mod rotate;
pub mod status;
pub mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Service-to-service auth on Kubernetes: status, rotate, token, revoke, inspect, check.
#[derive(Parser, Debug)]
#[command(name = "kubectl-s2s", bin_name = "kubectl s2s", version)]
pub struct Cli {
    /// Where and as whom to connect.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Connection settings, as kubectl names them, plus where the operator runs.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Path to the kubeconfig file (default: `KUBECONFIG`, else `~/.kube/config`).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// The operator's namespace (signing keys, leader Lease, token server Service).
    #[arg(
        long,
        global = true,
        env = "S2S_OPERATOR_NAMESPACE",
        default_value = "s2s-system",
        value_name = "NAMESPACE"
    )]
    pub operator_namespace: String,
    /// The Helm release name of the operator (its Service is `<release>-token-server`, its
    /// webhook `<release>-inject`). Default: found from the chart's labels in the operator
    /// namespace, else `s2s-operator`.
    #[arg(long, global = true, env = "S2S_RELEASE", value_name = "NAME")]
    pub release: Option<String>,
    /// Reach the token server at this base URL (e.g. `http://127.0.0.1:8080`) instead of
    /// through the API server's service proxy: for a port-forward, an Ingress, or `dev`.
    #[arg(
        long,
        global = true,
        env = "S2S_SERVER_URL",
        value_name = "URL",
        alias = "token-url"
    )]
    pub server_url: Option<String>,
}

/// How objects are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// What a person checks first: conditions with reasons, recent Events, credential age and
    /// next rotation, grace in progress, grants and materialized tokens.
    Status(status::StatusArgs),
    /// A new client secret or key now (the old one keeps working for the grace period), or an
    /// AccessToken's token renewed now.
    Rotate(rotate::RotateArgs),
    /// A test access token from a ServiceAccount's own credentials (prints the token).
    Token(token::TokenArgs),
    /// Revoke a TokenGrant (every token issued under it) or one token (RFC 7009).
    Revoke(revoke::RevokeArgs),
    /// Decode a JWT and check its signature against the issuer's JWKS.
    Inspect(inspect::InspectArgs),
    /// Check the installation; exits non-zero when something is wrong, saying what to do.
    Check(check::CheckArgs),
}

/// A failure the user can act on: what went wrong and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// What went wrong.
    pub message: String,
    /// What to do.
    pub hint: Option<String>,
    /// The process exit code (1 unless said otherwise).
    pub code: u8,
}

impl CliError {
    /// An error with no hint.
    pub fn new(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            hint: None,
            code: 1,
        }
    }

    /// Adds what to do.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error: {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Results of the commands.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// Runs one command; errors go to stderr with their hint.
pub async fn run(cli: Cli) -> ExitCode {
    let outcome = match cli.command {
        Command::Status(a) => status::run(&cli.global, a).await,
        Command::Rotate(a) => rotate::run(&cli.global, a).await,
        Command::Token(a) => token::run(&cli.global, a).await,
        Command::Revoke(a) => revoke::run(&cli.global, a).await,
        Command::Inspect(a) => inspect::run(&cli.global, a).await,
        Command::Check(a) => check::run(&cli.global, a).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.code)
        }
    }
}

/// Prints `value` as JSON or YAML.
pub fn print_structured<T: serde::Serialize>(value: &T, output: Output) -> Result<()> {
    let text = match output {
        Output::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| CliError::new(format!("cannot print JSON: {e}")))?,
        Output::Yaml | Output::Text => serde_yaml::to_string(value)
            .map_err(|e| CliError::new(format!("cannot print YAML: {e}")))?,
    };
    print!("{text}");
    Ok(())
}
