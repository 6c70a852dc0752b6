//! The `s2s-operator` binary: one program, one subcommand per mode.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use s2s_operator::api;

/// Service-to-service authentication for Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "s2s-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions (the source of `crds/`).
    Crdgen {
        /// Write one file per kind into this folder instead of printing them.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen { output_dir } => crdgen(output_dir),
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
