//! Token issuance throughput, in one run, on one core each:
//!
//! 1. raw signing with a held aws-lc-rs key (ES256, EdDSA): the ceiling;
//! 2. a whole JWT through our `sign_jwt` (JSON + base64url + sign), and `jsonwebtoken::encode`
//!    (which re-parses the key on every call) for comparison;
//! 3. `client_credentials` with `client_secret_basic` over loopback HTTP: the real server
//!    (router + core) on a one-thread runtime, driven by 64 keep-alive connections from a
//!    client on another thread; tokens/s, p50/p99 latency, and the ratio to raw signing.
//!
//! `cargo bench --bench token_throughput` (`S2S_BENCH_SECONDS` sets each HTTP run's length).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use s2s_operator::crypto::{self, KeyAlgorithm, SigningKey};
use s2s_operator::http::{AppState, router};
use s2s_operator::token::{
    Api, Client, Config, Core, Grant, KeySet, Registry, SecretVerifier, SystemClock,
};

const CONNECTIONS: usize = 64;

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Runs `f` repeatedly for about `for_` and returns operations per second.
fn per_second(for_: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..1000 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < for_ {
        for _ in 0..256 {
            f();
        }
        n += 256;
    }
    rate(n, start.elapsed())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// Median of three runs.
fn measure(for_: Duration, mut f: impl FnMut()) -> f64 {
    median((0..3).map(|_| per_second(for_, &mut f)).collect())
}

fn main() {
    let secs: u64 = std::env::var("S2S_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let short = Duration::from_millis(700);
    let msg = b"eyJhbGciOiJFUzI1NiIsImtpZCI6ImsiLCJ0eXAiOiJhdCtqd3QifQ.eyJpc3MiOiJodHRwOi8vMTI3LjAuMC4xOjgwODAiLCJzdWIiOiJjbGllbnQifQ";

    println!("== raw signing, parsed key held (one core) ==");
    let rng = SystemRandom::new();
    let es = crypto::generate_key(KeyAlgorithm::ES256).unwrap();
    let es_der = pem_der(&es.private_pem);
    let es_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &es_der).unwrap();
    let raw_es256 = measure(short, || {
        std::hint::black_box(es_pair.sign(&rng, msg).unwrap());
    });
    println!("ES256 sign (aws-lc-rs):                   {raw_es256:>10.0}/s");
    let ed = crypto::generate_key(KeyAlgorithm::EdDSA).unwrap();
    let ed_pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pem_der(&ed.private_pem)).unwrap();
    let raw_eddsa = measure(short, || {
        std::hint::black_box(ed_pair.sign(msg));
    });
    println!("EdDSA sign (aws-lc-rs):                   {raw_eddsa:>10.0}/s");

    println!("== a whole JWT (one core) ==");
    let claims = serde_json::json!({
        "iss": "http://127.0.0.1:8080", "sub": "0d4c8f8e-1f57-4f0b-9d0e-6a1f8d1c2b3a", "aud": "https://orders.example.com",
        "exp": 1_900_000_000u64, "iat": 1_899_996_400u64, "nbf": 1_899_996_400u64, "jti": "q8b3V4yq0mJm3pQm2xk9Zw",
        "client_id": "0d4c8f8e-1f57-4f0b-9d0e-6a1f8d1c2b3a", "scope": "orders:read orders:write"
    });
    let es_key =
        SigningKey::from_pem(KeyAlgorithm::ES256, es.kid.clone(), &es.private_pem).unwrap();
    let jwt_es256 = measure(short, || {
        std::hint::black_box(crypto::sign_jwt(&es_key, "at+jwt", &claims).unwrap());
    });
    println!(
        "ES256 JWT, s2s sign_jwt (key held):       {jwt_es256:>10.0}/s  ({:.0}% of raw)",
        100.0 * jwt_es256 / raw_es256
    );
    let ed_key =
        SigningKey::from_pem(KeyAlgorithm::EdDSA, ed.kid.clone(), &ed.private_pem).unwrap();
    let jwt_eddsa = measure(short, || {
        std::hint::black_box(crypto::sign_jwt(&ed_key, "at+jwt", &claims).unwrap());
    });
    println!(
        "EdDSA JWT, s2s sign_jwt (key held):       {jwt_eddsa:>10.0}/s  ({:.0}% of raw)",
        100.0 * jwt_eddsa / raw_eddsa
    );
    let enc_key = jsonwebtoken::EncodingKey::from_ec_pem(es.private_pem.as_bytes()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(es.kid.clone());
    let jwt_lib = measure(short, || {
        std::hint::black_box(jsonwebtoken::encode(&header, &claims, &enc_key).unwrap());
    });
    println!(
        "ES256 JWT, jsonwebtoken::encode:          {jwt_lib:>10.0}/s  (re-parses the key per call)"
    );

    let digest_rate = {
        let secret = crypto::random_secret();
        let digest = crypto::secret_digest(&secret);
        measure(short, || {
            std::hint::black_box(crypto::verify_secret(&secret, &digest));
        })
    };
    println!("SHA-256 secret check (constant time):     {digest_rate:>10.0}/s");

    for alg in [KeyAlgorithm::ES256, KeyAlgorithm::EdDSA] {
        let raw = if alg == KeyAlgorithm::ES256 {
            raw_es256
        } else {
            raw_eddsa
        };
        println!(
            "== client_credentials over loopback HTTP, {} signing, server on one core, {CONNECTIONS} keep-alive connections ==",
            alg.jws_name()
        );
        let (mut rates, mut per_cpu, mut busy) = (vec![], vec![], vec![]);
        let mut last = None;
        for _ in 0..3 {
            let run = http_run(alg, Duration::from_secs(secs));
            assert_eq!(run.errors, 0, "every request must succeed");
            rates.push(run.tokens);
            per_cpu.push(run.per_cpu_second);
            busy.push(run.server_busy);
            last = Some((run.p50, run.p99));
        }
        let tokens = median(rates);
        let per_core = median(per_cpu);
        let (p50, p99) = last.unwrap();
        println!("tokens/s, wall clock (median of 3):       {tokens:>10.0}/s");
        println!(
            "server thread on CPU (median):            {:>9.0}%",
            100.0 * median(busy)
        );
        println!("tokens per server CPU-second (median):    {per_core:>10.0}/s");
        println!(
            "latency p50 / p99 (last run):             {:>7.2} ms / {:.2} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        println!(
            "ratio to raw {} signing, per core:        {:>9.1}%  (wall clock: {:.1}%)",
            alg.jws_name(),
            100.0 * per_core / raw,
            100.0 * tokens / raw
        );
    }

    println!(
        "== the audit trail: ES256 client_credentials, audit off and on (a file), runs alternating =="
    );
    let dir = std::env::temp_dir().join(format!("s2s-bench-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("audit.jsonl");
    let (mut off, mut on, mut off_wall, mut on_wall) = (vec![], vec![], vec![], vec![]);
    for _ in 0..3 {
        let run = http_run(KeyAlgorithm::ES256, Duration::from_secs(secs));
        off.push(run.per_cpu_second);
        off_wall.push(run.tokens);
        let run = http_run_with(
            KeyAlgorithm::ES256,
            Duration::from_secs(secs),
            s2s_operator::http::audit::Target::File(file.clone()),
        );
        assert_eq!(run.errors, 0, "every request must succeed");
        on.push(run.per_cpu_second);
        on_wall.push(run.tokens);
    }
    let lines = std::fs::read_to_string(&file)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    let (off, on, off_wall, on_wall) = (median(off), median(on), median(off_wall), median(on_wall));
    println!(
        "audit off, tokens per server CPU-second:  {off:>10.0}/s  (wall clock {off_wall:.0}/s)"
    );
    println!("audit on,  tokens per server CPU-second:  {on:>10.0}/s  (wall clock {on_wall:.0}/s)");
    println!(
        "cost of the audit trail:                  {:>9.1}% per core, {:.1}% wall clock ({lines} records written)",
        100.0 * (1.0 - on / off),
        100.0 * (1.0 - on_wall / off_wall)
    );
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

/// One HTTP run: server on a one-thread runtime, client on another thread.
/// Results of one HTTP run.
struct HttpRun {
    /// Tokens per wall-clock second.
    tokens: f64,
    /// Tokens per second of CPU time the server thread used: the per-core rate.
    per_cpu_second: f64,
    /// The share of the measured time the server thread was on a CPU.
    server_busy: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

/// CPU time a thread has used so far (`/proc/<pid>/task/<tid>/schedstat`, nanoseconds).
fn thread_cpu(thread: &str) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/{thread}/schedstat")).unwrap_or_default();
    Duration::from_nanos(
        s.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    )
}

fn http_run(alg: KeyAlgorithm, length: Duration) -> HttpRun {
    http_run_with(alg, length, s2s_operator::http::audit::Target::Off)
}

fn http_run_with(
    alg: KeyAlgorithm,
    length: Duration,
    audit: s2s_operator::http::audit::Target,
) -> HttpRun {
    let secret = crypto::random_secret();
    let client_id = "bench-client".to_owned();
    let mut registry = Registry::new(false);
    registry.add_api(Api {
        audience: "https://orders.example.com".into(),
        namespace: "shop".into(),
        owner: "orders".into(),
        scopes: vec!["orders:read".into(), "orders:write".into()],
    });
    registry.add_client(Client {
        client_id: client_id.clone(),
        namespace: "team".into(),
        name: "worker".into(),
        scopes: vec!["orders:*".into()],
        audiences: vec!["https://orders.example.com".into()],
        token_lifetime: Duration::from_secs(3600),
        disabled: false,
        secrets: vec![SecretVerifier {
            digest: crypto::secret_digest(&secret),
            not_after: None,
        }],
        keys: vec![],
        federated: vec![],
    });
    registry.add_grant(
        "team",
        "worker",
        Grant {
            namespace: "shop".into(),
            name: "worker".into(),
            uid: "bench-grant-uid".into(),
            audience: "https://orders.example.com".into(),
            scopes: vec!["orders:read".into()],
            tenant: None,
            delegation: None,
        },
    );
    let key = crypto::generate_key(alg).unwrap();
    let signer = SigningKey::from_pem(alg, key.kid.clone(), &key.private_pem).unwrap();
    let keys = KeySet::new(signer, vec![]).unwrap();

    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::Builder::new()
        .name("server".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let core = Arc::new(Core::new(
                    Config::new(format!("http://{addr}")),
                    registry,
                    keys,
                    Arc::new(SystemClock),
                ));
                let state = AppState::with(
                    core,
                    Default::default(),
                    s2s_operator::http::Audit::new(&audit).unwrap(),
                );
                state.set_ready(true);
                // "<pid>/task/<tid>": lets the client read this thread's CPU time.
                let me = std::fs::read_link("/proc/thread-self")
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                addr_tx.send((addr, me)).unwrap();
                axum::serve(listener, router(state))
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
        })
        .unwrap();
    let (addr, server_thread) = addr_rx.recv().unwrap();
    let auth = format!("Basic {}", STANDARD.encode(format!("{client_id}:{secret}")));
    let body = Bytes::from_static(b"grant_type=client_credentials&scope=orders%3Aread");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (count, errors, mut lat, cpu) = rt.block_on(async move {
        let warmup = Duration::from_millis(500);
        let start = Instant::now();
        let cpu = tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            let before = thread_cpu(&server_thread);
            tokio::time::sleep(length).await;
            thread_cpu(&server_thread).saturating_sub(before)
        });
        let mut tasks = vec![];
        for _ in 0..CONNECTIONS {
            let auth = auth.clone();
            let body = body.clone();
            tasks.push(tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let (mut n, mut errors, mut lat) = (0u64, 0u64, Vec::with_capacity(100_000));
                loop {
                    let t = Instant::now();
                    if t.duration_since(start) > warmup + length {
                        break;
                    }
                    let req = hyper::Request::post("/oauth2/token")
                        .header("host", "127.0.0.1")
                        .header("content-type", "application/x-www-form-urlencoded")
                        .header("authorization", &auth)
                        .body(Full::new(body.clone()))
                        .unwrap();
                    sender.ready().await.unwrap();
                    let resp = sender.send_request(req).await.unwrap();
                    let ok = resp.status() == 200;
                    let _ = resp.into_body().collect().await.unwrap();
                    if t.duration_since(start) >= warmup {
                        n += 1;
                        errors += u64::from(!ok);
                        lat.push(t.elapsed());
                    }
                }
                (n, errors, lat)
            }));
        }
        let (mut n, mut e, mut all) = (0, 0, vec![]);
        for t in tasks {
            let (a, b, c) = t.await.unwrap();
            n += a;
            e += b;
            all.extend(c);
        }
        (n, e, all, cpu.await.unwrap())
    });
    let _ = stop_tx.send(());
    server.join().unwrap();
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    let cpu = cpu.as_secs_f64().max(1e-9);
    HttpRun {
        tokens: rate(count, length),
        per_cpu_second: count as f64 / cpu,
        server_busy: cpu / length.as_secs_f64(),
        p50: p(0.5),
        p99: p(0.99),
        errors,
    }
}
