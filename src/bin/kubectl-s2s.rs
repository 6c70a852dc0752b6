//! `kubectl-s2s`: the kubectl plugin (`kubectl s2s …`). Everything lives in
//! [`s2s_operator::cli`]; this file only runs it.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = s2s_operator::cli::Cli::parse();
    s2s_operator::cli::run(cli).await
}
