//! Controller scale, against the in-process API stand-in (tests/support/apiserver):
//!
//! 1. time from creating 1 000 ServiceAccounts (client secrets) to all Ready, with the
//!    controller in this process, and the API requests that took;
//! 2. memory (RSS) of the real `controller` and `token-server` processes with 10 000
//!    accounts, the stand-in served to them over loopback HTTP.
//!
//! `cargo bench --bench controller_scale` (`S2S_BENCH_ACCOUNTS` / `S2S_BENCH_MEMORY_ACCOUNTS`
//! change the counts).

#[path = "../tests/support/apiserver/mod.rs"]
#[allow(dead_code)]
mod apiserver;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiserver::ApiServer;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use s2s_operator::api::ServiceAccount;
use s2s_operator::controller::{self, Metrics};
use s2s_operator::crypto::KeyAlgorithm;
use s2s_operator::k8s::lease::Timing;
use s2s_operator::signing_keys::Policy;
use s2s_operator::token::SystemClock;
use serde_json::json;

const OP_NS: &str = "s2s-system";
const NS: &str = "bench";

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn setup(api: &ApiServer) {
    let nss: Api<Namespace> = Api::all(api.client());
    for n in [OP_NS, NS] {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": n}})).unwrap();
        nss.create(&PostParams::default(), &ns).await.unwrap();
    }
}

fn account(i: usize) -> ServiceAccount {
    serde_json::from_value(json!({
        "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
        "metadata": {"name": format!("sa-{i:05}"), "namespace": NS},
        "spec": {
            "scopes": ["orders:read"],
            "audiences": ["https://orders.example.com"],
            "authentication": {"clientSecret": {"secretName": format!("sa-{i:05}-credentials")}}
        }
    }))
    .unwrap()
}

/// Creates `n` accounts, 32 requests in flight.
async fn create_accounts(api: &ApiServer, n: usize) {
    let accounts: Api<ServiceAccount> = Api::namespaced(api.client(), NS);
    futures::stream::iter(0..n)
        .map(|i| {
            let accounts = accounts.clone();
            async move {
                accounts
                    .create(&PostParams::default(), &account(i))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

fn ready_count(api: &ApiServer) -> usize {
    api.objects("s2s.dev", "serviceaccounts", Some(NS))
        .iter()
        .filter(|sa| {
            sa["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .count()
}

async fn wait_all_ready(api: &ApiServer, n: usize, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if ready_count(api) >= n {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "not all Ready in time: {}/{n}",
            ready_count(api)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn policy() -> Policy {
    Policy {
        algorithm: KeyAlgorithm::ES256,
        rotate_every: Duration::from_secs(30 * 86400),
        publish_ahead: Duration::from_secs(900),
        retire_after: Duration::from_secs(86400),
    }
}

async fn time_to_ready(n: usize) {
    let api = ApiServer::new();
    setup(&api).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(controller::run(
        api.client_as("controller"),
        controller::Options {
            namespace: OP_NS.into(),
            issuer: "https://s2s.example".into(),
            key_policy: policy(),
            identity: "bench".into(),
            lease: Timing::default(),
            concurrency: 16,
            revocation_prune_every: Duration::from_secs(300),
            max_token_lifetime: Duration::from_secs(3600),
            allow_unclaimed_audiences: false,
            tls: None,
        },
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
        leading_tx,
        stop,
    ));
    let _ = leading.wait_for(|l| *l).await;
    api.clear_requests();

    let start = Instant::now();
    create_accounts(&api, n).await;
    let created = start.elapsed();
    let done = wait_all_ready(&api, n, Duration::from_secs(600)).await;
    let total = done - start;
    println!("== {n} ServiceAccounts to Ready, controller in process, in-process API ==");
    println!(
        "creating them (32 in flight):           {:>8.2} s",
        created.as_secs_f64()
    );
    println!(
        "first create to all Ready:              {:>8.2} s",
        total.as_secs_f64()
    );
    println!(
        "accounts Ready per second:              {:>8.0}/s",
        n as f64 / total.as_secs_f64()
    );
    let mut by_call: BTreeMap<String, usize> = BTreeMap::new();
    for r in api.requests().iter().filter(|r| r.user == "controller") {
        *by_call
            .entry(format!("{} {}", r.verb, r.resource))
            .or_default() += 1;
    }
    println!("controller requests per account:");
    for (call, k) in &by_call {
        println!("  {call:<34} {:>6.2}", *k as f64 / n as f64);
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

/// A child process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (VmRSS, VmHWM) of a process, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn memory_with(n: usize) {
    let api = ApiServer::new();
    setup(&api).await;
    let addr = api.serve_tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let spawn = |args: &[&str], user: &str| {
        let kc = dir.path().join(format!("{user}.kubeconfig"));
        apiserver::tcp::kubeconfig(addr, user, &kc);
        Proc(
            Command::new(env!("CARGO_BIN_EXE_s2s-operator"))
                .args(args)
                .env("KUBECONFIG", &kc)
                .env("S2S_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let health = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let issuer = format!("http://127.0.0.1:{port}");
    let controller = spawn(
        &[
            "controller",
            "--namespace",
            OP_NS,
            "--issuer",
            &issuer,
            "--health-listen",
            &format!("127.0.0.1:{health}"),
        ],
        "controller",
    );
    let server = spawn(
        &[
            "token-server",
            "--namespace",
            OP_NS,
            "--issuer",
            &issuer,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        "token-server",
    );
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("{issuer}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "token server never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (c0, _) = memory(controller.0.id());
    let (s0, _) = memory(server.0.id());

    let start = Instant::now();
    create_accounts(&api, n).await;
    let done = wait_all_ready(&api, n, Duration::from_secs(1800)).await;
    // Let the token server catch up with the last status writes and settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (c1, chwm) = memory(controller.0.id());
    let (s1, shwm) = memory(server.0.id());
    println!("== memory with {n} ServiceAccounts, real processes over loopback HTTP ==");
    println!(
        "{n} accounts to Ready (processes, HTTP):  {:>8.2} s",
        (done - start).as_secs_f64()
    );
    println!("controller RSS: idle {c0:>7.1} MiB, with {n}: {c1:>7.1} MiB (peak {chwm:.1} MiB)");
    println!("token-server RSS: idle {s0:>5.1} MiB, with {n}: {s1:>7.1} MiB (peak {shwm:.1} MiB)");
    println!(
        "per account: controller {:.1} KiB, token-server {:.1} KiB",
        (c1 - c0) * 1024.0 / n as f64,
        (s1 - s0) * 1024.0 / n as f64
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        time_to_ready(count("S2S_BENCH_ACCOUNTS", 1000)).await;
        memory_with(count("S2S_BENCH_MEMORY_ACCOUNTS", 10_000)).await;
    });
}
