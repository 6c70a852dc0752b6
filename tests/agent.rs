//! The workload agent over real HTTP: `s2s-operator dev` runs as a process and its state dir
//! is the agent's "mounted Secret"; the agent runs in-process (`s2s_operator::agent`) on a
//! free loopback port. Tokens are verified with jwt-simple against dev's JWKS.
//!
//! Covered: refresh before expiry, credential rotation with no failed request, the token
//! server going away and coming back, single flight under 50 concurrent requests, OAuth
//! errors passed through, loopback only, token files written atomically with mode 0600.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use s2s_operator::agent::{self, Options};
use serde_json::Value;
use support::{DevServer, http, jwks, manifests_dir, verify_access_token};

const ORDERS: &str = "https://orders.test";
const BILLING: &str = "https://billing.test";
const SCOPES: [&str; 6] = ["o:a", "o:b", "o:c", "o:d", "o:e", "o:f"];

fn world(rotate: &str) -> String {
    format!(
        r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {{name: orders, namespace: shop}}
spec:
  api:
    audience: https://orders.test
    scopes: [{{name: "o:a"}}, {{name: "o:b"}}, {{name: "o:c"}}, {{name: "o:d"}}, {{name: "o:e"}}, {{name: "o:f"}}]
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {{name: billing, namespace: shop}}
spec:
  api:
    audience: https://billing.test
    scopes: [{{name: "o:a"}}, {{name: "o:b"}}, {{name: "o:c"}}, {{name: "o:d"}}, {{name: "o:e"}}, {{name: "o:f"}}]
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata:
  name: worker
  namespace: team
  annotations: {{s2s.dev/rotate: "{rotate}"}}
spec:
  scopes: ["o:*"]
  audiences: ["https://orders.test", "https://billing.test"]
  tokenLifetime: 1m
  authentication:
    clientSecret: {{secretName: worker-creds, gracePeriod: 1h}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {{name: signer, namespace: team}}
spec:
  scopes: ["o:*"]
  audiences: ["https://orders.test"]
  tokenLifetime: 1m
  authentication:
    privateKeyJwt: {{secretName: signer-key, algorithm: ES256}}
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {{name: worker, namespace: shop}}
spec:
  subject: {{serviceAccount: {{name: worker, namespace: team}}}}
  audience: https://orders.test
  scopes: ["o:*"]
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {{name: worker-billing, namespace: shop}}
spec:
  subject: {{serviceAccount: {{name: worker, namespace: team}}}}
  audience: https://billing.test
  scopes: ["o:*"]
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {{name: signer, namespace: shop}}
spec:
  subject: {{serviceAccount: {{name: signer, namespace: team}}}}
  audience: https://orders.test
  scopes: ["o:*"]
"#
    )
}

struct World {
    manifests: tempfile::TempDir,
    state: tempfile::TempDir,
    server: Option<DevServer>,
}

impl World {
    fn start() -> Self {
        let manifests = manifests_dir(&[("world.yaml", &world("1"))]);
        let state = tempfile::tempdir().unwrap();
        let server = DevServer::start(manifests.path(), state.path(), &[]);
        World {
            manifests,
            state,
            server: Some(server),
        }
    }

    fn dev(&self) -> &DevServer {
        self.server.as_ref().expect("dev is running")
    }

    fn creds(&self, secret: &str) -> PathBuf {
        self.state.path().join("team").join(secret)
    }
}

/// A running in-process agent.
struct Agent {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), agent::AgentError>>,
}

impl Agent {
    async fn start(options: Options) -> Self {
        let bound = agent::bind(options).await.expect("agent binds");
        let base = format!("http://{}", bound.local_addr());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async {
            let _ = rx.await;
        }));
        Agent {
            base,
            stop: Some(tx),
            task,
        }
    }

    async fn token(
        &self,
        audience: &str,
        scopes: &[&str],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut url = reqwest::Url::parse(&format!("{}/v1/token", self.base)).unwrap();
        url.query_pairs_mut().append_pair("audience", audience);
        if !scopes.is_empty() {
            url.query_pairs_mut()
                .append_pair("scope", &scopes.join(" "));
        }
        let resp = http().get(url).send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.json().await.unwrap_or(Value::Null))
    }

    async fn metric(&self, name: &str, label: &str) -> u64 {
        let text = http()
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_sum(&text, name, label)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// The sum of every sample of `name` whose labels contain `label`.
fn metric_sum(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn dev_token_requests(issuer: &str) -> u64 {
    let text = http()
        .get(format!("{issuer}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric_sum(&text, "s2s_http_requests_total", "endpoint=\"token\"")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn options(creds: &Path) -> Options {
    let mut o = Options::new(creds);
    o.listen = "127.0.0.1:0".parse().unwrap();
    o
}

/// The scope subset number `i` of [`SCOPES`].
fn subset(i: usize) -> Vec<&'static str> {
    SCOPES
        .iter()
        .enumerate()
        .filter(|(b, _)| i & (1 << b) != 0)
        .map(|(_, s)| *s)
        .collect()
}

#[tokio::test]
async fn refreshes_before_expiry_and_counts_expires_in_down() {
    let w = World::start();
    let mut o = options(&w.creds("signer-key"));
    o.refresh_at = 0.1; // about 6 s into a one-minute token
    let agent = Agent::start(o).await;
    let keys = jwks(&w.dev().issuer).await;

    let (status, headers, first) = agent.token(ORDERS, &["o:a"]).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["scope"], "o:a");
    let claims = verify_access_token(
        first["access_token"].as_str().unwrap(),
        &keys,
        &w.dev().issuer,
        ORDERS,
    );
    let old_exp = claims["exp"].as_u64().unwrap();
    assert!(first["expires_in"].as_u64().unwrap() <= 60);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, _, cached) = agent.token(ORDERS, &["o:a"]).await;
    assert_eq!(
        cached["access_token"], first["access_token"],
        "served from the cache"
    );
    assert!(
        cached["expires_in"].as_u64() < first["expires_in"].as_u64(),
        "expires_in counts down: {first} then {cached}"
    );

    // Keep using it: the agent fetches a new one in the background, long before expiry.
    let deadline = Instant::now() + Duration::from_secs(30);
    let renewed = loop {
        let (status, _, t) = agent.token(ORDERS, &["o:a"]).await;
        assert_eq!(status, 200, "{t}");
        if t["access_token"] != first["access_token"] {
            break t;
        }
        assert!(Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        old_exp > now() + 40,
        "refreshed early: the old token still had {}s",
        old_exp - now()
    );
    let claims = verify_access_token(
        renewed["access_token"].as_str().unwrap(),
        &keys,
        &w.dev().issuer,
        ORDERS,
    );
    assert!(claims["exp"].as_u64().unwrap() > old_exp);
    assert_eq!(
        agent
            .metric("s2s_agent_upstream_requests_total", "outcome=\"success\"")
            .await,
        2,
        "one fetch, one refresh"
    );
    agent.stop().await;
}

#[tokio::test]
async fn rotation_is_picked_up_without_a_failed_request() {
    let w = World::start();
    let creds = w.creds("worker-creds");
    let first_secret = std::fs::read_to_string(creds.join("client_secret")).unwrap();
    let agent = Agent::start(options(&creds)).await;
    let keys = jwks(&w.dev().issuer).await;

    let mut i = 0usize;
    let mut rotated_at = None;
    let started = Instant::now();
    loop {
        // A new (audience, scopes) every time: each one goes to the token endpoint.
        let audience = if i.is_multiple_of(2) { ORDERS } else { BILLING };
        let scopes = subset((i / 2) % 64);
        let (status, _, t) = agent.token(audience, &scopes).await;
        assert_eq!(status, 200, "request {i} failed: {t}");
        verify_access_token(
            t["access_token"].as_str().unwrap(),
            &keys,
            &w.dev().issuer,
            audience,
        );
        i += 1;
        if rotated_at.is_none() && started.elapsed() > Duration::from_millis(500) {
            // `dev` hot-reloads the manifest within a second.
            std::fs::write(w.manifests.path().join("world.yaml"), world("2")).unwrap();
            rotated_at = Some(Instant::now());
        }
        let secret = std::fs::read_to_string(creds.join("client_secret")).unwrap_or_default();
        if let Some(at) = rotated_at {
            if secret != first_secret && !secret.is_empty() && at.elapsed() > Duration::from_secs(3)
            {
                break;
            }
            assert!(
                at.elapsed() < Duration::from_secs(20),
                "the secret never rotated"
            );
        }
        assert!(i < 128, "ran out of fresh (audience, scopes)");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let upstream = agent
        .metric("s2s_agent_upstream_requests_total", "outcome=\"success\"")
        .await;
    assert_eq!(
        upstream, i as u64,
        "every request went to the token endpoint"
    );
    assert_eq!(
        agent
            .metric("s2s_agent_upstream_requests_total", "outcome=\"refused\"")
            .await,
        0
    );
    // The new secret is the one in use: the old one is retired without anyone noticing.
    let creds_now = w.dev().secret("team", "worker-creds");
    assert_eq!(creds_now["client_secret.previous"], first_secret);
    agent.stop().await;
}

/// Starts `dev` on a given address (the restart of a server whose port the Secrets name).
fn start_dev_on(manifests: &Path, state: &Path, addr: &str) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_s2s-operator"))
        .arg("dev")
        .arg("--manifests")
        .arg(manifests)
        .arg("--state-dir")
        .arg(state)
        .args(["--listen", addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dev starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "dev did not come back on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[tokio::test]
async fn keeps_serving_cached_tokens_while_the_token_server_is_down() {
    let mut w = World::start();
    let issuer = w.dev().issuer.clone();
    let addr = issuer.trim_start_matches("http://").to_owned();
    let mut o = options(&w.creds("worker-creds"));
    o.retry_for = Duration::from_secs(2);
    let agent = Agent::start(o).await;

    let (status, _, cached) = agent.token(ORDERS, &["o:a"]).await;
    assert_eq!(status, 200, "{cached}");

    // The token server goes away.
    drop(w.server.take());
    for _ in 0..5 {
        let (status, _, t) = agent.token(ORDERS, &["o:a"]).await;
        assert_eq!(status, 200, "the cached token is still served: {t}");
        assert_eq!(t["access_token"], cached["access_token"]);
    }
    // Nothing cached for another audience: retried with backoff, then a JSON 503.
    let begun = Instant::now();
    let (status, headers, err) = agent.token(BILLING, &[]).await;
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"], "temporarily_unavailable");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(begun.elapsed() >= Duration::from_millis(1000), "it retried");
    assert!(
        agent
            .metric(
                "s2s_agent_upstream_requests_total",
                "outcome=\"unreachable\""
            )
            .await
            >= 3,
        "backoff: several attempts"
    );

    // It comes back on the same port with the same state: new tokens flow again.
    let mut child = start_dev_on(w.manifests.path(), w.state.path(), &addr);
    let (status, _, fresh) = agent.token(BILLING, &[]).await;
    assert_eq!(status, 200, "{fresh}");
    let keys = jwks(&issuer).await;
    verify_access_token(
        fresh["access_token"].as_str().unwrap(),
        &keys,
        &issuer,
        BILLING,
    );
    let (_, _, still) = agent.token(ORDERS, &["o:a"]).await;
    assert_eq!(still["access_token"], cached["access_token"]);
    agent.stop().await;
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn concurrent_requests_make_one_upstream_request() {
    let w = World::start();
    let agent = Arc::new(Agent::start(options(&w.creds("worker-creds"))).await);
    let before = dev_token_requests(&w.dev().issuer).await;

    let answers = futures::future::join_all((0..50).map(|_| {
        let agent = agent.clone();
        async move { agent.token(ORDERS, &["o:b", "o:a"]).await }
    }))
    .await;
    let first = &answers[0].2;
    for (status, _, t) in &answers {
        assert_eq!(*status, 200, "{t}");
        assert_eq!(t["access_token"], first["access_token"]);
    }
    assert_eq!(first["scope"], "o:a o:b");
    // Scope order does not matter: the same cache entry.
    let (_, _, same) = agent.token(ORDERS, &["o:a", "o:b"]).await;
    assert_eq!(same["access_token"], first["access_token"]);

    assert_eq!(dev_token_requests(&w.dev().issuer).await - before, 1);
    assert_eq!(
        agent.metric("s2s_agent_upstream_requests_total", "").await,
        1
    );
    assert_eq!(
        agent
            .metric("s2s_agent_token_requests_total", "cache=\"miss\"")
            .await,
        1
    );
    assert_eq!(
        agent
            .metric("s2s_agent_token_requests_total", "cache=\"hit\"")
            .await,
        50
    );
    let metrics = http()
        .get(format!("{}/metrics", agent.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("orders.test"), "no audience in metrics");

    // The token server's refusal reaches the application as it was.
    let (status, headers, err) = agent.token("https://nobody.test", &[]).await;
    assert!((400..500).contains(&status), "{status} {err}");
    assert!(err["error"].is_string(), "{err}");
    assert_eq!(headers["cache-control"], "no-store");
    let (status, _, err) = agent.token("", &[]).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let health = http()
        .get(format!("{}/healthz", agent.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Requests addressed to another host (DNS rebinding) are refused.
    let rebound = http()
        .get(format!("{}/v1/token?audience={ORDERS}", agent.base))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    Arc::try_unwrap(agent).ok().unwrap().stop().await;
}

#[tokio::test]
async fn refuses_to_listen_beyond_loopback() {
    let mut o = options(Path::new("/nonexistent"));
    o.listen = "0.0.0.0:0".parse().unwrap();
    assert!(matches!(
        agent::bind(o).await,
        Err(agent::AgentError::NonLoopback(_))
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_s2s-operator"))
        .args([
            "agent",
            "--credentials",
            "/nonexistent",
            "--listen",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allow-non-loopback"), "{stderr}");
}

#[tokio::test]
async fn token_files_are_replaced_atomically_with_mode_0600() {
    let w = World::start();
    let tokens = tempfile::tempdir().unwrap();
    let mut o = options(&w.creds("worker-creds"));
    o.token_dir = Some(tokens.path().to_owned());
    o.tokens = vec![
        format!("orders={ORDERS},o:a,o:c").parse().unwrap(),
        format!("billing={BILLING}").parse().unwrap(),
    ];
    o.refresh_at = 0.05; // about 3 s into a one-minute token
    let agent = Agent::start(o).await;
    let issuer = w.dev().issuer.clone();
    let keys = jwks(&issuer).await;
    let file = tokens.path().join("orders");

    let deadline = Instant::now() + Duration::from_secs(20);
    while !file.exists() || !tokens.path().join("billing").exists() {
        assert!(Instant::now() < deadline, "token files never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = std::fs::read_to_string(&file).unwrap();
    let claims = verify_access_token(&first, &keys, &issuer, ORDERS);
    assert_eq!(claims["scope"], "o:a o:c");
    verify_access_token(
        &std::fs::read_to_string(tokens.path().join("billing")).unwrap(),
        &keys,
        &issuer,
        BILLING,
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A reader hammering the file while it is replaced only ever sees whole tokens.
    let done = Arc::new(AtomicBool::new(false));
    let reader = std::thread::spawn({
        let (done, file) = (done.clone(), file.clone());
        move || {
            let mut seen = std::collections::BTreeSet::new();
            while !done.load(Ordering::Relaxed) {
                let t = std::fs::read_to_string(&file).expect("the file is always there");
                assert_eq!(t.split('.').count(), 3, "a partial token: {t:?}");
                assert!(t.len() > 100, "a partial token: {t:?}");
                seen.insert(t);
            }
            seen
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&file).unwrap() == first {
        assert!(
            Instant::now() < deadline,
            "the token file was never refreshed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.store(true, Ordering::Relaxed);
    let seen = reader.join().unwrap();
    for t in &seen {
        verify_access_token(t, &keys, &issuer, ORDERS);
    }
    let second = std::fs::read_to_string(&file).unwrap();
    assert!(
        verify_access_token(&second, &keys, &issuer, ORDERS)["exp"].as_u64()
            > claims["exp"].as_u64()
    );
    let names: Vec<String> = std::fs::read_dir(tokens.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "no temporary file left: {names:?}"
    );
    agent.stop().await;
}
