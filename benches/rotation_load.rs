//! Token issuance under rotation and restarts: 64 keep-alive connections issue
//! `client_credentials` tokens (`client_secret_basic`, one account) without pause while
//!
//! (a) the account's client secret is rotated (`s2s.dev/rotate`, grace period 30 s),
//! (b) the signing key rotates on its own (a new key every 8 s, published 2 s ahead),
//! (c) the two token servers are restarted one after the other (SIGTERM, wait for the exit,
//!     start again on the same port, wait until ready).
//!
//! The setup is a small cluster: the API stand-in (`tests/support/apiserver`) in process on a
//! TCP port, the controller in process, two real `token-server` processes with the same issuer,
//! and an in-process TCP load balancer in front of them that, like a Service with readiness,
//! sends each new connection to a backend whose `/readyz` answered 200 in its last check
//! (every 100 ms), round-robin. The client reads the account's Secret every ~500 ms per
//! connection and uses the secret it read last, so both the old and the new secret are used
//! during the grace period.
//!
//! A connection error before a request was written (an idle connection closed by a server
//! that is shutting down) is retried on a new connection, as every HTTP client does; anything
//! else counts as a failed request: a status other than 200, or a request written and no
//! answer. After the run every issued token is verified against the JWKS fetched through the
//! load balancer. Prints requests, failures, p50/p99 latency and requests per second per phase
//! and overall; exits non-zero if a request failed or a token does not verify.
//!
//! `cargo bench --bench rotation_load` (`S2S_BENCH_PHASE_SECONDS` sets the phase length, 5).

#[path = "../tests/support/apiserver/mod.rs"]
#[allow(dead_code)]
mod apiserver;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiserver::ApiServer;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use s2s_operator::api::{ServiceAccount, TokenGrant};
use s2s_operator::controller::{self, Metrics};
use s2s_operator::crypto::{self, Jwk, KeyAlgorithm};
use s2s_operator::k8s::lease::Timing;
use s2s_operator::signing_keys::Policy;
use s2s_operator::token::SystemClock;
use serde_json::{Value, json};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: usize = 64;
const OP_NS: &str = "s2s-system";
const NS: &str = "team";
const AUDIENCE: &str = "https://api.test";
const PHASES: [&str; 4] = [
    "steady",
    "(a) client secret rotated",
    "(b) signing key rotated",
    "(c) token servers restarted",
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------
// The load balancer: a Service with readiness, in front of the token servers.

struct Lb {
    backends: Vec<SocketAddr>,
    ready: Vec<AtomicBool>,
    next: AtomicUsize,
    forwarded: AtomicU64,
    /// Connections to a backend marked ready that were refused (then the next one is tried).
    connect_failed: AtomicU64,
    /// Client connections closed because no ready backend took them.
    dropped: AtomicU64,
}

impl Lb {
    fn new(backends: Vec<SocketAddr>) -> Arc<Self> {
        Arc::new(Lb {
            ready: backends.iter().map(|_| AtomicBool::new(false)).collect(),
            backends,
            next: AtomicUsize::new(0),
            forwarded: AtomicU64::new(0),
            connect_failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    fn is_ready(&self, i: usize) -> bool {
        self.ready[i].load(Ordering::Acquire)
    }

    async fn serve(self: Arc<Self>, listener: TcpListener) {
        for i in 0..self.backends.len() {
            let lb = self.clone();
            tokio::spawn(async move {
                loop {
                    let ok = readyz(lb.backends[i]).await;
                    lb.ready[i].store(ok, Ordering::Release);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let lb = self.clone();
            tokio::spawn(async move { lb.forward(client).await });
        }
    }

    async fn forward(&self, client: TcpStream) {
        let _ = client.set_nodelay(true);
        let n = self.backends.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            let b = (first + k) % n;
            if !self.is_ready(b) {
                continue;
            }
            match TcpStream::connect(self.backends[b]).await {
                Ok(backend) => {
                    let _ = backend.set_nodelay(true);
                    self.forwarded.fetch_add(1, Ordering::Relaxed);
                    let (cr, cw) = client.into_split();
                    let (br, bw) = backend.into_split();
                    // An end of stream is passed on as such (write side shut down); an error
                    // on either side closes both connections.
                    let _ = tokio::try_join!(pump(cr, bw), pump(br, cw));
                    return;
                }
                Err(_) => {
                    self.connect_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Copies until the end of stream, then shuts the write side down (by dropping it).
async fn pump(from: OwnedReadHalf, to: OwnedWriteHalf) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        from.readable().await?;
        let n = match from.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        write_all(&to, &buf[..n]).await?;
    }
}

async fn write_all(to: &OwnedWriteHalf, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `GET /readyz` on a new connection; true on 200 within 500 ms.
async fn readyz(addr: SocketAddr) -> bool {
    let check = async {
        let (r, w) = TcpStream::connect(addr).await.ok()?.into_split();
        write_all(
            &w,
            b"GET /readyz HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n",
        )
        .await
        .ok()?;
        let mut buf = vec![0u8; 1024];
        let mut got = 0;
        while got < 12 {
            r.readable().await.ok()?;
            match r.try_read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
        }
        Some(buf[..got].starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_millis(500), check)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------
// The token servers, as child processes.

struct TokenServer {
    name: &'static str,
    port: u16,
    child: Option<Child>,
    kubeconfig: std::path::PathBuf,
    log_dir: std::path::PathBuf,
    issuer: String,
    starts: usize,
}

/// What one restart took.
struct Restart {
    name: &'static str,
    /// SIGTERM to exit.
    drain: Duration,
    exit: String,
    /// Start to `/readyz` 200.
    to_ready: Duration,
    /// SIGTERM to the load balancer sending it connections again.
    out_of_rotation: Duration,
}

impl TokenServer {
    fn start(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(
            self.log_dir
                .join(format!("token-server-{}-{}.log", self.name, self.starts)),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_s2s-operator"))
            .args([
                "token-server",
                "--namespace",
                OP_NS,
                "--issuer",
                &self.issuer,
                "--listen",
                &format!("127.0.0.1:{}", self.port),
            ])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("S2S_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !readyz(self.addr()).await {
            assert!(
                Instant::now() < deadline,
                "token server {} never ready (logs in {})",
                self.name,
                self.log_dir.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, wait for the exit, start again on the same port, wait until ready and back
    /// in the load balancer.
    async fn restart(&mut self, lb: &Lb, index: usize) -> Restart {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let term = Instant::now();
        let killed = tokio::task::spawn_blocking(move || {
            Command::new("kill").args(["-TERM", &pid]).status()
        })
        .await
        .unwrap()
        .unwrap();
        assert!(killed.success(), "kill -TERM failed");
        let deadline = term + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit on SIGTERM",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let drain = term.elapsed();
        let started = Instant::now();
        self.start();
        self.wait_ready(Duration::from_secs(60)).await;
        let to_ready = started.elapsed();
        while !lb.is_ready(index) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Restart {
            name: self.name,
            drain,
            exit: status.to_string(),
            to_ready,
            out_of_rotation: term.elapsed(),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The client.

/// Shared by the connections and the orchestrator.
struct Ctx {
    api: ApiServer,
    lb: SocketAddr,
    start: Instant,
    phase: AtomicU8,
    done: AtomicBool,
    client_id: String,
    initial_secret: String,
    /// Every signing key seen in a token, and when first.
    kids: Mutex<BTreeMap<String, Duration>>,
}

impl Ctx {
    fn secret(&self) -> String {
        read_secret(&self.api).1
    }
}

/// (client_id, client_secret) from the account's Secret.
fn read_secret(api: &ApiServer) -> (String, String) {
    let s = api
        .object("", "secrets", Some(NS), "worker")
        .expect("the worker Secret");
    let field = |k: &str| {
        String::from_utf8(
            STANDARD
                .decode(s["data"][k].as_str().expect("a data field"))
                .unwrap(),
        )
        .unwrap()
    };
    (field("client_id"), field("client_secret"))
}

struct Failure {
    phase: u8,
    at: Duration,
    what: String,
    /// Which secret the request used: the first one or the rotated one.
    rotated: bool,
    /// The first request on its connection.
    fresh: bool,
}

#[derive(Default)]
struct Conn {
    /// (phase, latency in µs) of every request.
    requests: Vec<(u8, u32)>,
    failures: Vec<Failure>,
    /// (phase, token).
    tokens: Vec<(u8, String)>,
    /// Requests not written (connection closed first), sent again on a new connection.
    retried: u64,
    /// Connections found closed between requests (nothing written), replaced.
    closed_idle: u64,
    /// Connections opened.
    connections: u64,
    /// Connections to the load balancer refused.
    connect_errors: u64,
    /// Successful requests with the first secret after the rotated one was in the Secret.
    old_ok_after_rotation: u64,
    /// Successful requests with the rotated secret.
    new_ok: u64,
    /// When the rotated secret first worked.
    first_new_ok: Option<Duration>,
}

fn auth(client_id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(client_id), enc(secret)))
    )
}

async fn connection(i: usize, ctx: Arc<Ctx>, rotated_at: Arc<Mutex<Option<Duration>>>) -> Conn {
    let mut out = Conn::default();
    let body = Bytes::from_static(
        b"grant_type=client_credentials&scope=read&audience=https%3A%2F%2Fapi.test",
    );
    let mut secret = ctx.secret();
    let mut header = auth(&ctx.client_id, &secret);
    let refresh = Duration::from_millis(500);
    let mut next_refresh = Instant::now() + refresh * (i as u32) / CONNECTIONS as u32;
    let mut last_kid = String::new();
    'conn: while !ctx.done.load(Ordering::Acquire) {
        let stream = match TcpStream::connect(ctx.lb).await {
            Ok(s) => s,
            Err(_) => {
                out.connect_errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        stream.set_nodelay(true).unwrap();
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
        else {
            continue;
        };
        tokio::spawn(conn);
        out.connections += 1;
        let mut fresh = true;
        loop {
            if ctx.done.load(Ordering::Acquire) {
                break 'conn;
            }
            if Instant::now() >= next_refresh {
                let s = ctx.secret();
                if s != secret {
                    secret = s;
                    header = auth(&ctx.client_id, &secret);
                }
                next_refresh += refresh;
            }
            if sender.ready().await.is_err() {
                // Closed while idle: nothing was sent.
                out.closed_idle += 1;
                continue 'conn;
            }
            let phase = ctx.phase.load(Ordering::Acquire);
            let t = Instant::now();
            let rotated = secret != ctx.initial_secret;
            let req = hyper::Request::post("/oauth2/token")
                .header("host", "127.0.0.1")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("authorization", &header)
                .body(Full::new(body.clone()))
                .unwrap();
            let (start, was_fresh) = (ctx.start, fresh);
            let fail = move |out: &mut Conn, what: String| {
                out.requests.push((phase, t.elapsed().as_micros() as u32));
                out.failures.push(Failure {
                    phase,
                    at: t.duration_since(start),
                    what,
                    rotated,
                    fresh: was_fresh,
                });
            };
            let resp = match sender.try_send_request(req).await {
                Ok(r) => r,
                Err(mut e) => {
                    if e.take_message().is_some() {
                        // Not written: the connection went first. Again on a new one.
                        out.retried += 1;
                    } else {
                        fail(&mut out, format!("written, no answer: {}", e.into_error()));
                    }
                    continue 'conn;
                }
            };
            let status = resp.status();
            let bytes = match resp.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    fail(&mut out, format!("response body: {e}"));
                    continue 'conn;
                }
            };
            let latency = t.elapsed();
            fresh = false;
            let parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status != 200 {
                fail(
                    &mut out,
                    format!(
                        "{} {}",
                        status.as_u16(),
                        parsed["error"].as_str().unwrap_or("(no OAuth error)")
                    ),
                );
                continue;
            }
            let Some(token) = parsed["access_token"].as_str() else {
                fail(&mut out, "200 without access_token".into());
                continue;
            };
            out.requests.push((phase, latency.as_micros() as u32));
            let at = t.duration_since(ctx.start);
            if rotated {
                out.new_ok += 1;
                out.first_new_ok.get_or_insert(at);
            } else if rotated_at.lock().unwrap().is_some_and(|r| at > r) {
                out.old_ok_after_rotation += 1;
            }
            if let Ok(h) = jsonwebtoken::decode_header(token)
                && let Some(kid) = h.kid
                && kid != last_kid
            {
                ctx.kids
                    .lock()
                    .unwrap()
                    .entry(kid.clone())
                    .or_insert(ctx.start.elapsed());
                last_kid = kid;
            }
            out.tokens.push((phase, token.to_owned()));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Setup.

async fn create_objects(api: &ApiServer) {
    let admin = api.client();
    let nss: Api<Namespace> = Api::all(admin.clone());
    for n in [OP_NS, NS] {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": n}})).unwrap();
        nss.create(&PostParams::default(), &ns).await.unwrap();
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), NS);
    for o in [
        json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
               "metadata": {"name": "api", "namespace": NS},
               "spec": {"api": {"audience": AUDIENCE, "scopes": [{"name": "read"}]}}}),
        json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
               "metadata": {"name": "worker", "namespace": NS},
               "spec": {"scopes": ["read"], "audiences": [AUDIENCE],
                        "authentication": {"clientSecret": {"secretName": "worker", "gracePeriod": "30s"}}}}),
    ] {
        accounts
            .create(&PostParams::default(), &serde_json::from_value(o).unwrap())
            .await
            .unwrap();
    }
    let grants: Api<TokenGrant> = Api::namespaced(admin, NS);
    let grant = json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
        "metadata": {"name": "worker", "namespace": NS},
        "spec": {"subject": {"serviceAccount": {"name": "worker"}}, "audience": AUDIENCE, "scopes": ["read"]}});
    grants
        .create(
            &PostParams::default(),
            &serde_json::from_value(grant).unwrap(),
        )
        .await
        .unwrap();
}

fn account_ready(api: &ApiServer) -> bool {
    api.object("s2s.dev", "serviceaccounts", Some(NS), "worker")
        .is_some_and(|sa| {
            sa["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
}

/// One token through the load balancer, to know the servers know the account.
async fn one_token(lb: SocketAddr, client_id: &str, secret: &str) -> bool {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::new()
        .post(format!("http://{lb}/oauth2/token"))
        .header("authorization", auth(client_id, secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&scope=read&audience=https%3A%2F%2Fapi.test")
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

async fn eventually(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Verification and figures.

struct Verified {
    ok: usize,
    failed: Vec<(u8, String)>,
    took: Duration,
}

fn verify_all(tokens: &[(u8, String)], jwks: &Value, issuer: &str) -> Verified {
    let start = Instant::now();
    let mut keys = HashMap::new();
    for k in jwks["keys"].as_array().expect("a JWKS") {
        let jwk: Jwk = serde_json::from_value(k.clone()).unwrap();
        let kid = jwk.kid.clone().expect("kid");
        let (key, alg) = crypto::decoding_key(&jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(alg);
        v.set_issuer(&[issuer]);
        v.set_audience(&[AUDIENCE]);
        keys.insert(kid, (key, v));
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = tokens.len().div_ceil(threads).max(1);
    let results: Vec<(usize, Vec<(u8, String)>)> = std::thread::scope(|s| {
        let handles: Vec<_> = tokens
            .chunks(chunk)
            .map(|part| {
                let keys = &keys;
                s.spawn(move || {
                    let (mut ok, mut failed) = (0, vec![]);
                    for (phase, token) in part {
                        let r = jsonwebtoken::decode_header(token)
                            .map_err(|e| e.to_string())
                            .and_then(|h| h.kid.ok_or_else(|| "no kid".to_owned()))
                            .and_then(|kid| {
                                let (key, v) = keys
                                    .get(&kid)
                                    .ok_or_else(|| format!("kid {kid} not in the JWKS"))?;
                                jsonwebtoken::decode::<Value>(token, key, v)
                                    .map_err(|e| format!("kid {kid}: {e}"))
                            });
                        match r {
                            Ok(_) => ok += 1,
                            Err(e) => failed.push((*phase, e)),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut v = Verified {
        ok: 0,
        failed: vec![],
        took: Duration::ZERO,
    };
    for (ok, failed) in results {
        v.ok += ok;
        v.failed.extend(failed);
    }
    v.took = start.elapsed();
    v
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    f64::from(sorted[i]) / 1e3
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let failed = runtime.block_on(run());
    drop(runtime);
    if failed {
        std::process::exit(1);
    }
}

/// Returns whether anything failed.
async fn run() -> bool {
    let phase_len = Duration::from_secs(
        std::env::var("S2S_BENCH_PHASE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    let api = ApiServer::new();
    create_objects(&api).await;
    let api_addr = api.serve_tcp().await;
    let dir = tempfile::Builder::new()
        .prefix("rotation_load")
        .tempdir()
        .unwrap();
    let kubeconfig = dir.path().join("token-server.kubeconfig");
    apiserver::tcp::kubeconfig(api_addr, "s2s-token-server", &kubeconfig);

    let lb_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb_addr = lb_listener.local_addr().unwrap();
    let issuer = format!("http://{lb_addr}");

    // The controller, in process: a new signing key every 8 s, in the JWKS 2 s before it
    // signs, published for 60 s after (longer than the run).
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
    let controller = tokio::spawn(controller::run(
        api.client_as("s2s-controller"),
        controller::Options {
            namespace: OP_NS.into(),
            issuer: issuer.clone(),
            key_policy: Policy {
                algorithm: KeyAlgorithm::ES256,
                rotate_every: Duration::from_secs(8),
                publish_ahead: Duration::from_secs(2),
                retire_after: Duration::from_secs(60),
            },
            identity: "bench".into(),
            lease: Timing::default(),
            concurrency: 4,
            revocation_prune_every: Duration::from_secs(60),
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

    let mut servers: Vec<TokenServer> = ["A", "B"]
        .into_iter()
        .map(|name| TokenServer {
            name,
            port: free_port(),
            child: None,
            kubeconfig: kubeconfig.clone(),
            log_dir: dir.path().to_owned(),
            issuer: issuer.clone(),
            starts: 0,
        })
        .collect();
    for s in &mut servers {
        s.start();
    }
    let lb = Lb::new(servers.iter().map(TokenServer::addr).collect());
    tokio::spawn(lb.clone().serve(lb_listener));
    for s in &servers {
        s.wait_ready(Duration::from_secs(60)).await;
    }
    eventually("the account Ready", Duration::from_secs(30), async || {
        account_ready(&api)
    })
    .await;
    let (client_id, initial_secret) = read_secret(&api);
    eventually(
        "a token through the load balancer",
        Duration::from_secs(30),
        async || {
            lb.is_ready(0)
                && lb.is_ready(1)
                && one_token(lb_addr, &client_id, &initial_secret).await
                && one_token(lb_addr, &client_id, &initial_secret).await
        },
    )
    .await;

    println!(
        "== {CONNECTIONS} keep-alive connections, client_credentials through a load balancer to 2 token-server processes =="
    );
    let ctx = Arc::new(Ctx {
        api: api.clone(),
        lb: lb_addr,
        start: Instant::now(),
        phase: AtomicU8::new(0),
        done: AtomicBool::new(false),
        client_id: client_id.clone(),
        initial_secret: initial_secret.clone(),
        kids: Mutex::new(BTreeMap::new()),
    });
    let rotated_at: Arc<Mutex<Option<Duration>>> = Arc::new(Mutex::new(None));
    let conns: Vec<_> = (0..CONNECTIONS)
        .map(|i| tokio::spawn(connection(i, ctx.clone(), rotated_at.clone())))
        .collect();
    let mut phase_times = vec![Duration::ZERO];
    let mut events: Vec<(Duration, String)> = vec![];
    let now = |ctx: &Ctx| ctx.start.elapsed();

    // Steady.
    tokio::time::sleep(phase_len).await;

    // (a) The client secret.
    ctx.phase.store(1, Ordering::Release);
    phase_times.push(now(&ctx));
    let accounts: Api<ServiceAccount> = Api::namespaced(api.client(), NS);
    accounts
        .patch(
            "worker",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"s2s.dev/rotate": "load-1"}}})),
        )
        .await
        .unwrap();
    events.push((now(&ctx), "s2s.dev/rotate set".into()));
    let a_end = Instant::now() + phase_len;
    loop {
        if ctx.secret() != initial_secret {
            let at = now(&ctx);
            *rotated_at.lock().unwrap() = Some(at);
            events.push((at, "rotated secret in the Secret".into()));
            break;
        }
        assert!(
            Instant::now() < a_end + Duration::from_secs(20),
            "no rotation"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep_until(a_end.into()).await;

    // (b) The signing key: at least one new key starts signing during this phase.
    ctx.phase.store(2, Ordering::Release);
    let b_start = now(&ctx);
    phase_times.push(b_start);
    let b_min = Instant::now() + phase_len;
    let b_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let new_key = ctx
            .kids
            .lock()
            .unwrap()
            .iter()
            .find(|(_, at)| **at > b_start)
            .map(|(k, at)| (k.clone(), *at));
        if let Some((kid, at)) = &new_key
            && Instant::now() >= b_min
        {
            events.push((*at, format!("signing key {kid} first used")));
            break;
        }
        assert!(Instant::now() < b_deadline, "no new signing key in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // (c) Rolling restart: A, then B.
    ctx.phase.store(3, Ordering::Release);
    phase_times.push(now(&ctx));
    let mut restarts = vec![];
    for (i, s) in servers.iter_mut().enumerate() {
        let term = now(&ctx);
        events.push((term, format!("SIGTERM to token server {}", s.name)));
        let r = s.restart(&lb, i).await;
        let back = now(&ctx);
        events.push((
            back,
            format!("token server {} back in the load balancer", s.name),
        ));
        restarts.push((r, term, back));
    }
    tokio::time::sleep(phase_len).await;
    ctx.done.store(true, Ordering::Release);
    phase_times.push(now(&ctx));

    let mut all = Conn::default();
    for c in conns {
        let c = c.await.unwrap();
        all.requests.extend(c.requests);
        all.failures.extend(c.failures);
        all.tokens.extend(c.tokens);
        all.retried += c.retried;
        all.closed_idle += c.closed_idle;
        all.connections += c.connections;
        all.connect_errors += c.connect_errors;
        all.old_ok_after_rotation += c.old_ok_after_rotation;
        all.new_ok += c.new_ok;
        all.first_new_ok = match (all.first_new_ok, c.first_new_ok) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    // Every issued token against the JWKS as published after the run.
    let jwks: Value = reqwest::get(format!("{issuer}/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tokens = std::mem::take(&mut all.tokens);
    let verified = tokio::task::spawn_blocking({
        let issuer = issuer.clone();
        let jwks = jwks.clone();
        move || verify_all(&tokens, &jwks, &issuer)
    })
    .await
    .unwrap();

    // Figures.
    let mut by_phase: Vec<Vec<u32>> = vec![vec![]; PHASES.len()];
    for (p, l) in &all.requests {
        by_phase[*p as usize].push(*l);
    }
    let mut overall: Vec<u32> = all.requests.iter().map(|(_, l)| *l).collect();
    overall.sort_unstable();
    println!(
        "{:<30} {:>7} {:>9} {:>7} {:>8} {:>9} {:>9}",
        "phase", "secs", "requests", "failed", "req/s", "p50 ms", "p99 ms"
    );
    for (i, name) in PHASES.iter().enumerate() {
        let lats = &mut by_phase[i];
        lats.sort_unstable();
        let secs = (phase_times[i + 1] - phase_times[i]).as_secs_f64();
        let failed = all
            .failures
            .iter()
            .filter(|f| f.phase as usize == i)
            .count();
        println!(
            "{name:<30} {secs:>7.1} {:>9} {failed:>7} {:>8.0} {:>9.2} {:>9.2}",
            lats.len(),
            lats.len() as f64 / secs,
            percentile(lats, 0.5),
            percentile(lats, 0.99)
        );
    }
    let total_secs = phase_times.last().unwrap().as_secs_f64();
    println!(
        "{:<30} {total_secs:>7.1} {:>9} {:>7} {:>8.0} {:>9.2} {:>9.2}",
        "overall",
        overall.len(),
        all.failures.len(),
        overall.len() as f64 / total_secs,
        percentile(&overall, 0.5),
        percentile(&overall, 0.99)
    );
    let token_count = verified.ok + verified.failed.len();
    println!(
        "tokens verified against the JWKS fetched after the run: {}/{token_count} ({} keys in the JWKS, {:.1} s)",
        verified.ok,
        jwks["keys"].as_array().map_or(0, Vec::len),
        verified.took.as_secs_f64()
    );
    let kids = ctx.kids.lock().unwrap().clone();
    let mut by_time: Vec<(&String, &Duration)> = kids.iter().collect();
    by_time.sort_by_key(|(_, at)| **at);
    println!(
        "signing keys used: {} ({})",
        kids.len(),
        by_time
            .iter()
            .map(|(k, at)| format!("{k} from {:.1} s", at.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "client secret: {} requests succeeded with the previous secret after the rotated one was in the Secret, {} with the rotated one (first at {})",
        all.old_ok_after_rotation,
        all.new_ok,
        all.first_new_ok
            .map_or("never".into(), |t| format!("{:.3} s", t.as_secs_f64()))
    );
    println!(
        "connections: {} opened, {} found closed between requests and replaced, {} requests retried on a new connection (not written), {} connects to the load balancer refused",
        all.connections, all.closed_idle, all.retried, all.connect_errors
    );
    println!(
        "load balancer: {} connections forwarded, {} backend connects refused (next backend tried), {} client connections dropped",
        lb.forwarded.load(Ordering::Relaxed),
        lb.connect_failed.load(Ordering::Relaxed),
        lb.dropped.load(Ordering::Relaxed)
    );
    for (r, term, back) in &restarts {
        let failed = all
            .failures
            .iter()
            .filter(|f| f.at >= *term && f.at < *back)
            .count();
        println!(
            "restart {}: SIGTERM to exit {:.0} ms ({}), start to ready {:.0} ms, out of the load balancer {:.0} ms, {failed} requests failed meanwhile",
            r.name,
            ms(r.drain),
            r.exit,
            ms(r.to_ready),
            ms(r.out_of_rotation)
        );
    }
    println!("timeline:");
    for (i, t) in phase_times.iter().enumerate().take(PHASES.len()) {
        events.push((*t, format!("phase {}", PHASES[i])));
    }
    events.sort_by_key(|e| e.0);
    for (at, what) in &events {
        println!("  {:>7.3} s  {what}", at.as_secs_f64());
    }
    if !all.failures.is_empty() {
        println!("failed requests, by phase, kind and credential:");
        // (phase, what, credential, connection) to (count, first, last).
        type Kind<'a> = (u8, String, &'a str, &'a str);
        let mut kinds: BTreeMap<Kind, (usize, Duration, Duration)> = BTreeMap::new();
        for f in &all.failures {
            let e = kinds
                .entry((
                    f.phase,
                    f.what.clone(),
                    if f.rotated {
                        "rotated secret"
                    } else {
                        "first secret"
                    },
                    if f.fresh {
                        "new connection"
                    } else {
                        "reused connection"
                    },
                ))
                .or_insert((0, f.at, f.at));
            e.0 += 1;
            e.1 = e.1.min(f.at);
            e.2 = e.2.max(f.at);
        }
        for ((p, what, secret, conn), (n, first, last)) in kinds {
            println!(
                "  {n:>6}  {:<28} {what} ({secret}, {conn}) between {:.3} s and {:.3} s",
                PHASES[p as usize],
                first.as_secs_f64(),
                last.as_secs_f64()
            );
        }
    }
    if !verified.failed.is_empty() {
        println!("tokens that do not verify:");
        let mut kinds: BTreeMap<(u8, String), usize> = BTreeMap::new();
        for (p, e) in &verified.failed {
            *kinds.entry((*p, e.clone())).or_default() += 1;
        }
        for ((p, e), n) in kinds {
            println!("  {n:>6}  {:<28} {e}", PHASES[p as usize]);
        }
    }

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;
    drop(servers);
    let failed = !all.failures.is_empty() || !verified.failed.is_empty() || kids.len() < 2;
    if failed {
        println!(
            "FAILED: {} failed requests, {} tokens that do not verify, {} signing keys used; token-server logs kept in {}",
            all.failures.len(),
            verified.failed.len(),
            kids.len(),
            dir.keep().display()
        );
    }
    failed
}
