//! The `s2s-operator` binary: one program, one subcommand per mode.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use s2s_operator::{api, crypto::KeyAlgorithm, dev};

/// Service-to-service authentication for Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "s2s-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Controller logic and token server in one process, from YAML manifests, with no cluster.
    Dev(DevArgs),
    /// Print the CustomResourceDefinitions (the source of `crds/`).
    Crdgen {
        /// Write one file per kind into this folder instead of printing them.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct DevArgs {
    /// Manifest files or folders holding ServiceAccounts, TrustedIssuers and TokenGrants
    /// (repeatable).
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
    match cli.command {
        Command::Crdgen { output_dir } => crdgen(output_dir),
        Command::Dev(args) => run_dev(args),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("S2S_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run_dev(args: DevArgs) -> ExitCode {
    init_tracing();
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
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match runtime.block_on(dev::run(options, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn crdgen(output_dir: Option<PathBuf>) -> ExitCode {
    let crds = api::crds();
    match output_dir {
        None => {
            let docs: Vec<String> = crds.iter().map(api::crd_yaml).collect();
            print!("{}", docs.join("---\n"));
            ExitCode::SUCCESS
        }
        Some(dir) => {
            for crd in &crds {
                let path = dir.join(api::crd_file_name(crd));
                if let Err(e) = std::fs::write(&path, api::crd_yaml(crd)) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
    }
}
