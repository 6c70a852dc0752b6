//! Sidecar injection and the operator's own TLS on the real control plane
//! (`S2S_E2E_KUBECONFIG`; skipped, saying so, when unset).
//!
//! The controller keeps the operator CA and issues the token server's and the webhook's
//! certificates with short lifetimes (CA 45 s, certificates 15 s, propagation 3 s), so a CA
//! rotation and several renewals happen during the test. The token server serves HTTPS from
//! its Secret and the webhook from its own; the real kube-apiserver calls the webhook (a
//! `url:` client config on loopback, `caBundle` written by the controller under the chart's
//! RBAC) for every Pod the ReplicaSet controller or the test creates.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::cluster::{
    Cluster, Operator, https_client, or_logs, serial, tls_client_config, with_operator,
};
use support::free_port;
use support::scenario::eventually;

const AGENT_IMAGE: &str = "ghcr.io/s2s-dev/s2s-operator:e2e";
const AUDIENCE: &str = "https://orders.e2e.example";

/// The chart's webhook, with a `url:` client config (the API server cannot reach a Service
/// without endpoints) and a namespace selector that matches this test's namespace only.
fn webhook_configuration(name: &str, port: u16, namespace: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "inject.s2s.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "Never",
            "matchPolicy": "Equivalent",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/inject")},
            "rules": [{
                "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["pods"], "scope": "Namespaced",
            }],
            "namespaceSelector": {"matchExpressions": [{
                "key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace],
            }]},
            "matchConditions": [{
                "name": "asks-for-injection",
                "expression": "has(object.metadata.annotations) && 's2s.dev/inject' in object.metadata.annotations",
            }],
        }],
    })
}

fn pod(name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "worker"}, "annotations": annotations},
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "registry.example/app:1",
                            "env": [{"name": "MODE", "value": "e2e"}]}],
        },
    })
}

fn agent_of(pod: &Pod) -> Vec<&k8s_openapi::api::core::v1::Container> {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .filter(|c| c.name == "s2s-agent")
        .collect()
}

/// Checks what the injection promises on a Pod as the API server stored it.
fn assert_injected(pod: &Pod, secret: &str) {
    let spec = pod.spec.as_ref().unwrap();
    let agents = agent_of(pod);
    assert_eq!(agents.len(), 1, "exactly one agent");
    let inits = spec.init_containers.as_ref().unwrap();
    let agent = &inits[0];
    assert_eq!(
        agent.name, "s2s-agent",
        "the agent is the first init container"
    );
    assert_eq!(
        agent.restart_policy.as_deref(),
        Some("Always"),
        "a native sidecar"
    );
    assert_eq!(agent.image.as_deref(), Some(AGENT_IMAGE));
    let probe = agent.startup_probe.as_ref().expect("a startup probe");
    assert_eq!(
        probe.exec.as_ref().unwrap().command.as_ref().unwrap(),
        &["/s2s-operator", "probe", "http://127.0.0.1:9090/v1/ready"]
    );
    let sc = agent.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    let vols: BTreeMap<_, _> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.as_str(), v))
        .collect();
    let creds = vols["s2s-credentials"].secret.as_ref().unwrap();
    assert_eq!(creds.secret_name.as_deref(), Some(secret));
    assert_eq!(
        vols["s2s-tokens"]
            .empty_dir
            .as_ref()
            .unwrap()
            .medium
            .as_deref(),
        Some("Memory")
    );
    let mounts = agent.volume_mounts.as_ref().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.name == "s2s-credentials" && m.read_only == Some(true))
    );
    for c in &spec.containers {
        let env = c.env.as_ref().unwrap();
        assert!(
            env.iter().any(|e| e.name == "S2S_AGENT_URL"
                && e.value.as_deref() == Some("http://127.0.0.1:9090")),
            "{}: S2S_AGENT_URL",
            c.name
        );
        assert!(
            env.iter().any(|e| e.name == "MODE"),
            "the app's own env stays"
        );
    }
    assert_eq!(
        pod.metadata.annotations.as_ref().unwrap()["s2s.dev/injected"],
        "worker"
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn fingerprint(pem: &str) -> String {
    s2s_operator::tls::fingerprint(pem)
}

async fn secret_data(admin: &Client, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
    let s = Api::<Secret>::namespaced(admin.clone(), ns)
        .get_opt(name)
        .await
        .ok()??;
    Some(
        s.data?
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect(),
    )
}

/// Creates Pods one after the other, returning how long each create took.
async fn create_pods(pods: &Api<Pod>, prefix: &str, n: usize, annotations: Value) -> Vec<Duration> {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let p: Pod =
            serde_json::from_value(pod(&format!("{prefix}-{i}"), annotations.clone())).unwrap();
        let started = Instant::now();
        pods.create(&PostParams::default(), &p)
            .await
            .unwrap_or_else(|e| panic!("create {prefix}-{i}: {e}"));
        took.push(started.elapsed());
    }
    took.sort();
    took
}

#[tokio::test]
async fn e2e_injection_webhook_and_operator_tls_rotating_without_a_failed_request() {
    let Some(cluster) = Cluster::from_env(
        "e2e_injection_webhook_and_operator_tls_rotating_without_a_failed_request",
    )
    .await
    else {
        return;
    };
    let _serial = serial().await;
    cluster.apply_crds();
    let c = cluster.clone();
    with_operator(&cluster, move |op| async move {
        let logs = op.log_dir();
        let op = Arc::new(tokio::sync::Mutex::new(op));
        or_logs(logs, scenario(c, op.clone())).await;
        Arc::try_unwrap(op).ok().expect("one owner").into_inner()
    })
    .await;
}

async fn scenario(cluster: Cluster, op: Arc<tokio::sync::Mutex<Operator>>) {
    let admin = cluster.admin.clone();
    let mut o = op.lock().await;
    o.use_operator_tls("45s", "15s", "3s");
    let (release, opns) = (o.release.clone(), o.namespace.clone());
    let hook_port = free_port();
    let webhook_secret = format!("{release}-webhook-tls");
    let server_secret = format!("{release}-token-server-tls");
    let config_name = format!("{release}-inject");
    o.controller_args.extend([
        "--tls-certificate".into(),
        format!("{webhook_secret}=127.0.0.1"),
        "--webhook-configuration".into(),
        config_name.clone(),
    ]);
    o.server_args.extend([
        "--webhook-listen".into(),
        format!("127.0.0.1:{hook_port}"),
        "--webhook-tls-secret".into(),
        webhook_secret.clone(),
        "--agent-image".into(),
        AGENT_IMAGE.into(),
    ]);
    let ns = format!("{opns}-app");
    cluster.create_namespace(&ns).await;
    o.start_controller();

    // The controller issues the CA and both certificates, then keeps the webhook's caBundle.
    for s in [
        format!("{release}-ca"),
        server_secret.clone(),
        webhook_secret.clone(),
    ] {
        eventually(Duration::from_secs(30), &format!("Secret {s}"), || {
            let (admin, opns, s) = (admin.clone(), opns.clone(), s.clone());
            async move { secret_data(&admin, &opns, &s).await.map(|_| ()) }
        })
        .await;
    }
    let ca = secret_data(&admin, &opns, &format!("{release}-ca"))
        .await
        .unwrap();
    assert!(ca.contains_key("ca.key"));
    let webhook_tls = secret_data(&admin, &opns, &webhook_secret).await.unwrap();
    assert_eq!(webhook_tls["ca.crt"].trim(), ca["ca.crt"].trim());
    cluster
        .apply_object(&webhook_configuration(&config_name, hook_port, &ns))
        .await;
    let configs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    eventually(
        Duration::from_secs(30),
        "the controller to write the caBundle",
        || {
            let configs = configs.clone();
            let name = config_name.clone();
            let want = webhook_tls["ca.crt"].clone();
            async move {
                let c = configs.get(&name).await.ok()?;
                let b = c.webhooks?[0].client_config.ca_bundle.clone()?;
                (b.0 == want.as_bytes()).then_some(())
            }
        },
    )
    .await;
    let server = o.start_token_server().await;
    assert!(server.starts_with("https://127.0.0.1:"), "{server}");
    drop(o);

    // An API, a client of it with a client secret, and the grant between them.
    for obj in [
        json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
               "metadata": {"name": "orders-api", "namespace": ns},
               "spec": {"api": {"audience": AUDIENCE, "scopes": [{"name": "orders:read"}]}}}),
        json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
               "metadata": {"name": "worker", "namespace": ns},
               "spec": {"scopes": ["orders:read"], "audiences": [AUDIENCE],
                        "authentication": {"clientSecret": {"secretName": "worker-credentials"}}}}),
        json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
               "metadata": {"name": "worker", "namespace": ns},
               "spec": {"subject": {"serviceAccount": {"name": "worker", "namespace": ns}},
                        "audience": AUDIENCE, "scopes": ["orders:read"]}}),
    ] {
        cluster.apply_object(&obj).await;
    }
    let creds = eventually(Duration::from_secs(30), "worker credentials", || {
        let (admin, ns) = (admin.clone(), ns.clone());
        async move { secret_data(&admin, &ns, "worker-credentials").await }
    })
    .await;
    let token_request = {
        let (server, id, secret) = (
            server.clone(),
            creds["client_id"].clone(),
            creds["client_secret"].clone(),
        );
        move |client: reqwest::Client| {
            let (server, id, secret) = (server.clone(), id.clone(), secret.clone());
            async move {
                let r = client
                    .post(format!("{server}/oauth2/token"))
                    .basic_auth(id, Some(secret))
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("audience", AUDIENCE),
                        ("scope", "orders:read"),
                    ])
                    .send()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let status = r.status();
                let body: Value = r.json().await.map_err(|e| e.to_string())?;
                if status == 200 && body["access_token"].is_string() {
                    Ok(())
                } else {
                    Err(format!("{status}: {body}"))
                }
            }
        }
    };
    let bundle = secret_data(&admin, &opns, &server_secret).await.unwrap()["ca.crt"].clone();
    eventually(Duration::from_secs(30), "a token over HTTPS", || {
        let f = token_request.clone();
        let client = https_client(&bundle);
        async move { f(client).await.ok() }
    })
    .await;

    // A Deployment whose Pod template asks for injection: the ReplicaSet controller's Pods
    // carry the agent (no kubelet here, so they stay Pending; their spec is what counts).
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "worker", "namespace": ns},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "worker"}},
            "template": {
                "metadata": {"labels": {"app": "worker"}, "annotations": {"s2s.dev/inject": "worker"}},
                "spec": pod("x", json!({}))["spec"].clone(),
            },
        },
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_string(&deployment).unwrap()).unwrap();
    cluster.kubectl(&["apply", "-f", file.path().to_str().unwrap()]);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let from_deployment = eventually(Duration::from_secs(60), "2 Pods of the Deployment", || {
        let pods = pods.clone();
        async move {
            let l = pods
                .list(&ListParams::default().labels("app=worker"))
                .await
                .ok()?;
            (l.items.len() == 2).then_some(l.items)
        }
    })
    .await;
    for p in &from_deployment {
        assert_injected(p, "worker-credentials");
    }

    // A Pod without the annotation is stored exactly as it would be with no webhook (checked
    // at the end, against a dry run with the webhook configuration gone).
    let plain: Pod = serde_json::from_value(pod("plain", json!({"team": "orders"}))).unwrap();
    let plain = pods.create(&PostParams::default(), &plain).await.unwrap();
    assert!(agent_of(&plain).is_empty());

    // Admitted a second time — the injected spec copied into a new Pod, with or without the
    // marker annotation — it still has exactly one agent.
    let mut copy = serde_json::to_value(&from_deployment[0]).unwrap();
    copy["metadata"] = json!({"name": "copy", "annotations": copy["metadata"]["annotations"]});
    copy.as_object_mut().unwrap().remove("status");
    copy["spec"].as_object_mut().unwrap().remove("nodeName");
    let again = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(copy.clone()).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(agent_of(&again).len(), 1);
    copy["metadata"]["name"] = json!("copy-unmarked");
    copy["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("s2s.dev/injected");
    let again = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(copy).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        agent_of(&again).len(),
        1,
        "an s2s-agent container is never added twice"
    );

    // A Pod naming an account that does not exist is refused, saying what to do.
    let missing = tempfile::NamedTempFile::new().unwrap();
    let mut m = pod("missing", json!({"s2s.dev/inject": "nobody"}));
    m["metadata"]["namespace"] = json!(ns);
    std::fs::write(missing.path(), m.to_string()).unwrap();
    let err = cluster
        .kubectl_as(
            &cluster.kubeconfig,
            &["create", "-f", missing.path().to_str().unwrap()],
        )
        .unwrap_err();
    assert!(
        err.contains(&format!("no s2s.dev ServiceAccount {ns}/nobody"))
            && err.contains("kubectl get s2ssa"),
        "{err}"
    );

    // Admission latency on the real API server: Pod creations one after the other, with the
    // webhook called (annotated) and without (the API server's own cost).
    let injected = create_pods(
        &pods,
        "lat-inject",
        200,
        json!({"s2s.dev/inject": "worker"}),
    )
    .await;
    let baseline = create_pods(&pods, "lat-plain", 200, json!({"team": "orders"})).await;
    eprintln!(
        "admission latency over 200 Pod creations each: with injection p50 {:?} p99 {:?}; without the webhook p50 {:?} p99 {:?}",
        percentile(&injected, 0.5),
        percentile(&injected, 0.99),
        percentile(&baseline, 0.5),
        percentile(&baseline, 0.99),
    );

    // The agent as a workload runs it: the credentials Secret as files, no --ca-file: it
    // trusts the `ca.crt` the controller put there.
    let creds_dir = tempfile::tempdir().unwrap();
    let mount = |data: &BTreeMap<String, String>| {
        for (k, v) in data {
            std::fs::write(creds_dir.path().join(k), v).unwrap();
        }
    };
    assert_eq!(
        creds["ca.crt"], bundle,
        "the credentials Secret carries the trust bundle"
    );
    mount(&creds);
    let agent_port = free_port();
    let agent_log = std::fs::File::create(op.lock().await.log_dir().join("agent.log")).unwrap();
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_s2s-operator"))
        .args(["agent", "--credentials"])
        .arg(creds_dir.path())
        .args([
            "--listen",
            &format!("127.0.0.1:{agent_port}"),
            "--audience",
            AUDIENCE,
        ])
        .stderr(agent_log)
        .spawn()
        .unwrap();
    let agent_url = format!("http://127.0.0.1:{agent_port}");
    eventually(
        Duration::from_secs(20),
        "the agent ready (a token over HTTPS)",
        || {
            let url = format!("{agent_url}/v1/ready");
            async move {
                let r = support::http().get(url).send().await.ok()?;
                (r.status() == 200).then_some(())
            }
        },
    )
    .await;

    // Across a CA rotation and certificate renewals: admissions, token requests from a client
    // that re-reads the mounted trust bundle every second (as a kubelet updates a Secret
    // volume), and one TLS connection opened before it all, used throughout.
    let ca_before_pem = secret_data(&admin, &opns, &format!("{release}-ca"))
        .await
        .unwrap()["ca.crt"]
        .clone();
    let ca_before = fingerprint(&ca_before_pem);
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([
        AtomicUsize::new(0), // admissions ok
        AtomicUsize::new(0), // tokens ok
        AtomicUsize::new(0), // persistent connection ok
    ]);
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let admissions = {
        let (pods, stop, counts, failures) =
            (pods.clone(), stop.clone(), counts.clone(), failures.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let p: Pod = serde_json::from_value(pod(
                    &format!("rot-{i}"),
                    json!({"s2s.dev/inject": "worker"}),
                ))
                .unwrap();
                match pods.create(&PostParams::default(), &p).await {
                    Ok(p) if agent_of(&p).len() == 1 => {
                        counts[0].fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => failures
                        .lock()
                        .unwrap()
                        .push(format!("rot-{i}: not injected")),
                    Err(e) => failures.lock().unwrap().push(format!("rot-{i}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let tokens = {
        let (admin, opns, secret) = (admin.clone(), opns.clone(), server_secret.clone());
        let (stop, counts, failures, f) = (
            stop.clone(),
            counts.clone(),
            failures.clone(),
            token_request.clone(),
        );
        tokio::spawn(async move {
            let mut bundle = String::new();
            let mut client = None;
            let mut read_at = Instant::now() - Duration::from_secs(10);
            while !stop.load(Ordering::Relaxed) {
                if read_at.elapsed() >= Duration::from_secs(1) {
                    if let Some(d) = secret_data(&admin, &opns, &secret).await
                        && d["ca.crt"] != bundle
                    {
                        bundle = d["ca.crt"].clone();
                        client = Some(https_client(&bundle));
                    }
                    read_at = Instant::now();
                }
                match f(client.clone().unwrap()).await {
                    Ok(()) => {
                        counts[1].fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(format!("token: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let persistent = {
        use http_body_util::{BodyExt, Empty};
        use hyper::body::Bytes;
        let addr = server.trim_start_matches("https://").to_owned();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(&bundle)));
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let tls = connector
            .connect(
                rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
                tcp,
            )
            .await
            .unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let (stop, counts, failures) = (stop.clone(), counts.clone(), failures.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = hyper::Request::get("/healthz")
                    .header("host", &addr)
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                match send.send_request(req).await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.into_body().collect().await;
                        counts[2].fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("persistent: {}", r.status())),
                    Err(e) => {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("persistent connection: {e}"));
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    // Until a whole rotation is through: a new CA, the certificates from it, the old CA out
    // of every bundle — and a few seconds more.
    let rotated = Instant::now();
    eventually(Duration::from_secs(150), "a complete CA rotation", || {
        let (admin, opns, release) = (admin.clone(), opns.clone(), release.clone());
        let (configs, name, before) = (configs.clone(), config_name.clone(), ca_before.clone());
        let (ss, ws) = (server_secret.clone(), webhook_secret.clone());
        async move {
            let ca = secret_data(&admin, &opns, &format!("{release}-ca")).await?;
            let now = fingerprint(&ca["ca.crt"]);
            if now == before || ca.contains_key("previous.crt") {
                return None;
            }
            for s in [&ss, &ws] {
                let secret = Api::<Secret>::namespaced(admin.clone(), &opns)
                    .get(s)
                    .await
                    .ok()?;
                let by = secret
                    .metadata
                    .annotations?
                    .get("s2s.dev/issued-by")?
                    .clone();
                let d = secret_data(&admin, &opns, s).await?;
                if by != now || d["ca.crt"].trim() != ca["ca.crt"].trim() {
                    return None;
                }
            }
            let c = configs.get(&name).await.ok()?;
            let b = c.webhooks?[0].client_config.ca_bundle.clone()?;
            (b.0 == ca["ca.crt"].as_bytes()).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::join!(admissions, tokens, persistent);
    let failures = failures.lock().unwrap().clone();
    let [a, t, p] = &*counts;
    let (a, t, p) = (
        a.load(Ordering::Relaxed),
        t.load(Ordering::Relaxed),
        p.load(Ordering::Relaxed),
    );
    eprintln!(
        "across the CA rotation ({:?}): {a} admissions, {t} token requests, {p} requests on one connection; failures: {failures:?}",
        rotated.elapsed()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(a >= 20 && t >= 20 && p >= 10, "{a} {t} {p}");
    let issued = op
        .lock()
        .await
        .logs()
        .matches("TLS certificate issued")
        .count();
    assert!(
        issued >= 4,
        "{issued} certificates issued: renewals happened"
    );

    // The credentials Secret follows the bundle; an agent whose mounted copy is an old one
    // cannot reach the token server for a token it has not cached — until the file is
    // updated (as the kubelet does), without a restart.
    let new_ca = secret_data(&admin, &opns, &format!("{release}-ca"))
        .await
        .unwrap()["ca.crt"]
        .clone();
    let updated = eventually(
        Duration::from_secs(30),
        "ca.crt of the credentials Secret",
        || {
            let (admin, ns, new_ca) = (admin.clone(), ns.clone(), new_ca.clone());
            async move {
                let d = secret_data(&admin, &ns, "worker-credentials").await?;
                (d["ca.crt"].trim() == new_ca.trim()).then_some(d)
            }
        },
    )
    .await;
    // The mounted copy holding only the CA from before the rotation, which is out of every
    // bundle now.
    std::fs::write(creds_dir.path().join("ca.crt"), &ca_before_pem).unwrap();
    let fresh = format!("{agent_url}/v1/token?audience={AUDIENCE}&scope=orders:read");
    let r = support::http().get(&fresh).send().await.unwrap();
    assert_ne!(r.status(), 200, "the old CA alone must no longer be enough");
    mount(&updated);
    let r = support::http().get(&fresh).send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let _ = agent.kill();
    let _ = agent.wait();

    // The un-annotated Pod is what the API server makes of it without any webhook.
    configs
        .delete(&config_name, &DeleteParams::default())
        .await
        .unwrap();
    let dry: Pod = serde_json::from_value(pod("plain-dry", json!({"team": "orders"}))).unwrap();
    let dry = pods
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &dry,
        )
        .await
        .unwrap();
    let stored = pods.get("plain").await.unwrap();
    assert_eq!(stored.spec, dry.spec);
    assert_eq!(stored.metadata.annotations, dry.metadata.annotations);
    assert_eq!(stored.metadata.labels, dry.metadata.labels);

    cluster
        .delete_namespaces(&[ns], Duration::from_secs(120))
        .await;
}
