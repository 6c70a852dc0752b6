//! The chart installed with Helm onto a real node: the operator image built from what we
//! ship runs as Pods, with the chart's hardened security contexts, passes its probes and
//! issues tokens; `helm upgrade` replaces the Pods and keeps the signing key; a workload Pod
//! running the agent on its mounted Secret follows a rotation through the kubelet's volume
//! update; `helm uninstall` at the end, pass or fail.
//!
//! Needs what `S2S_CLUSTER_NODE=1 tests/cluster/run test` provides: `S2S_E2E_KUBECONFIG`,
//! `S2S_E2E_NODE` (the node's name) and `S2S_E2E_IMAGE` (the s2s-operator image, imported
//! into the node's containerd), and the Python venv with Helm that `.ci/run` makes
//! (target/ci-venv, or `S2S_CHART_PYTHON`). Skipped, saying so, when any is missing.
//!
//! The node has no Pod network and no kube-proxy, so the release runs with `hostNetwork`,
//! listens on 127.0.0.1 only, reaches the API server at its real address (extraEnv) and is
//! reached by this test at 127.0.0.1 (the token server's certificate names that address).
//! The API server calls the injection webhook at `webhook.url.host` 127.0.0.1:9443, not
//! through its Service.
//!
//! Then the workload examples run as shipped (examples/workload-files.yaml,
//! workload-envfrom.yaml, workload-injected.yaml, then agent-sidecar.yaml: kubectl reads them;
//! the image they name is examples/client.rs, imported as S2S_E2E_WORKLOAD_IMAGE, and the
//! operator image is tagged with the released name too), with the account and grant of
//! serviceaccount-client-secret.yaml, serviceaccount-api.yaml and tokengrant-plain.yaml, and
//! only what this node needs changed (`with_node_changes`). A rotation reaches the files and
//! injected Pods with no failed request; the envFrom Pods fail once the grace period is
//! over, until restarted.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{ListParams, PostParams};
use s2s_operator::api::{ServiceAccount, TokenGrant};
use serde_json::{Value, json};
use support::cluster::{Cluster, https_client, root, serial, suffix};
use support::scenario::{eventually, strings, wait_ready};
use support::verify_access_token;

/// The token server's port on the node (tls.mode operator: 8443).
const TOKEN_PORT: u16 = 8443;
/// The token server's webhook port on the node (webhook.port).
const WEBHOOK_PORT: u16 = 9443;
/// Where the injected agent listens in the Pod (the node's loopback here).
const AGENT_PORT: u16 = 9090;
/// The namespaces of the example files the workloads need.
const EXAMPLE_NAMESPACES: [&str; 4] = ["orders", "billing", "tenant-acme", "analytics"];

#[derive(Clone)]
struct Node {
    cluster: Cluster,
    image: String,
    workload_image: String,
    python: PathBuf,
}

impl Node {
    async fn from_env(test: &str) -> Option<Node> {
        let cluster = Cluster::from_env(test).await?;
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let python = std::env::var_os("S2S_CHART_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("target/ci-venv/bin/python"));
        let missing = match (
            var("S2S_E2E_NODE"),
            var("S2S_E2E_IMAGE"),
            var("S2S_E2E_WORKLOAD_IMAGE"),
        ) {
            _ if !python.exists() => {
                Some("no Python with Helm (bash .ci/run makes target/ci-venv)")
            }
            (None, _, _) | (_, None, _) | (_, _, None) => Some(
                "S2S_E2E_NODE, S2S_E2E_IMAGE or S2S_E2E_WORKLOAD_IMAGE is not set \
                 (S2S_CLUSTER_NODE=1 tests/cluster/run test)",
            ),
            _ => None,
        };
        if let Some(why) = missing {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipped {test}: {why}");
            return None;
        }
        Some(Node {
            cluster,
            image: var("S2S_E2E_IMAGE").unwrap(),
            workload_image: var("S2S_E2E_WORKLOAD_IMAGE").unwrap(),
            python,
        })
    }

    /// `tests/chart/release.py ARGS`: Helm (the library) against the cluster.
    fn helm(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.python)
            .arg(root().join("tests/chart/release.py"))
            .args(args)
            .output()
            .expect("python runs");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// What a person looks at when Pods do not come up: Pods, events, container logs.
    fn diagnose(&self, ns: &str) -> String {
        let k = |args: &[&str]| {
            self.cluster
                .kubectl_as(&self.cluster.kubeconfig, args)
                .unwrap_or_else(|e| e)
        };
        format!(
            "--- pods\n{}\n--- events\n{}\n--- logs\n{}\n--- workload logs\n{}",
            k(&["get", "pods", "-n", ns, "-o", "wide"]),
            k(&["get", "events", "-n", ns, "--sort-by=.lastTimestamp"]),
            k(&[
                "logs",
                "-n",
                ns,
                "-l",
                "app.kubernetes.io/name=s2s-operator",
                "--all-containers",
                "--tail=40",
                "--prefix"
            ]),
            k(&[
                "logs",
                "-n",
                ns,
                "-l",
                "app",
                "--all-containers",
                "--tail=20",
                "--prefix"
            ]),
        )
    }
}

/// The chart's values for this node: the imported image (never pulled), the node's network
/// on loopback only, the API server at its real address, one token server (one per node
/// fits: the ports are the node's).
fn values(image: &str, api_host: &str, api_port: u16) -> Value {
    let (repository, tag) = image.rsplit_once(':').expect("S2S_E2E_IMAGE is REPO:TAG");
    json!({
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "hostNetwork": true,
        "listenAddress": "127.0.0.1",
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": api_host},
            {"name": "KUBERNETES_SERVICE_PORT", "value": api_port.to_string()},
        ],
        "issuer": format!("https://127.0.0.1:{TOKEN_PORT}"),
        "tls": {"extraNames": ["127.0.0.1"]},
        "tokenServer": {"replicas": 1},
        // The API server cannot reach a Service address here: it calls the token server's
        // webhook port on loopback (127.0.0.1 joins the webhook certificate's names).
        "webhook": {"url": {"host": format!("127.0.0.1:{WEBHOOK_PORT}")}},
        "logLevel": "info,s2s_operator=debug",
    })
}

#[tokio::test]
async fn e2e_node_helm_install_runs_the_operator_pods() {
    let test = "e2e_node_helm_install_runs_the_operator_pods";
    let Some(node) = Node::from_env(test).await else {
        return;
    };
    let _serial = serial().await;
    let cluster = node.cluster.clone();
    let id = suffix();
    let (release, opns, ns) = (
        format!("s2s-node-{id}"),
        format!("s2s-node-op-{id}"),
        format!("s2s-node-{id}"),
    );
    cluster.create_namespace(&opns).await;
    cluster.create_namespace(&ns).await;
    let url = &cluster.config.cluster_url;
    let values = values(
        &node.image,
        url.host().expect("API server host"),
        url.port_u16().unwrap_or(443),
    );
    let kubeconfig = cluster.kubeconfig.to_str().unwrap().to_owned();

    let outcome = tokio::spawn({
        let (node, release, opns, ns, kubeconfig) = (
            node.clone(),
            release.clone(),
            opns.clone(),
            ns.clone(),
            kubeconfig.clone(),
        );
        async move {
            let started = std::time::Instant::now();
            // helm install --wait: every Deployment available, so every Pod passed its
            // readiness probe.
            let install = [
                "install",
                &kubeconfig,
                &opns,
                &release,
                &values.to_string(),
                "240",
            ];
            if let Err(e) = node.helm(&install) {
                panic!("{e}\n{}", node.diagnose(&opns));
            }
            eprintln!(
                "helm install with the Pods Ready took {} s",
                started.elapsed().as_secs()
            );
            let before = check_pods(&node, &opns, &release).await;
            let creds = first_credentials(&node, &opns, &ns, &release).await;
            let kid = token(&creds).await;

            // helm upgrade (text logs): the Pods are replaced one at a time (hostNetwork:
            // a new Pod cannot start beside the old one), and the same credentials still
            // get tokens from the same signing key, kept in its Secret.
            let mut upgraded = values.clone();
            upgraded["logFormat"] = json!("text");
            let upgrade = [
                "upgrade",
                &kubeconfig,
                &opns,
                &release,
                &upgraded.to_string(),
                "240",
            ];
            if let Err(e) = node.helm(&upgrade) {
                panic!("{e}\n{}", node.diagnose(&opns));
            }
            let after = eventually(Duration::from_secs(120), "the upgraded Pods", || async {
                let pods = running_pods(&node, &opns).await;
                (pods.len() == 2 && pods.iter().all(|p| !before.contains(p))).then_some(pods)
            })
            .await;
            assert_eq!(check_pods(&node, &opns, &release).await, after);
            let logs = node.cluster.kubectl(&[
                "logs",
                "-n",
                &opns,
                &format!("deployment/{release}-controller"),
            ]);
            assert!(
                !logs.starts_with('{'),
                "text logs after the upgrade: {logs}"
            );
            assert_eq!(
                token(&creds).await,
                kid,
                "the same signing key after the upgrade"
            );

            agent_follows_rotation(&node, &ns, &creds).await;
            workloads_as_shipped(&node, &creds).await;
        }
    })
    .await;

    // Uninstall and clean up whatever happened; then report.
    let uninstalled = node.helm(&["uninstall", &kubeconfig, &opns, &release, "120"]);
    let gone = match (&outcome, &uninstalled) {
        // The release's Pods stop (SIGTERM), and the CRDs stay: Helm never deletes them.
        (Ok(()), Ok(_)) => Some(
            tokio::time::timeout(Duration::from_secs(90), async {
                let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), &opns);
                while pods
                    .list(&ListParams::default())
                    .await
                    .map_or(true, |l| !l.items.is_empty())
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
            .await
            .is_ok()
                && cluster
                    .kubectl_as(
                        &cluster.kubeconfig,
                        &["get", "crd", "serviceaccounts.s2s.dev"],
                    )
                    .is_ok(),
        ),
        _ => None,
    };
    let mut namespaces = vec![ns, opns.clone()];
    namespaces.extend(EXAMPLE_NAMESPACES.map(str::to_owned));
    cluster
        .delete_namespaces(&namespaces, Duration::from_secs(120))
        .await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
    uninstalled.expect("helm uninstall");
    assert_eq!(
        gone,
        Some(true),
        "after helm uninstall: Pods gone within 90 s, CRDs kept"
    );
}

/// The names of the Pods of the release that are not being deleted, sorted.
async fn running_pods(node: &Node, opns: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(node.cluster.admin.clone(), opns);
    let mut names: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort();
    names
}

/// Both Pods run on the node from the imported image, as 65532 with a read-only root,
/// Ready, never restarted, and their logs are readable through the API server (kubelet).
/// Returns their names, sorted.
async fn check_pods(node: &Node, opns: &str, release: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(node.cluster.admin.clone(), opns);
    let list = pods.list(&ListParams::default()).await.unwrap();
    let mut components: Vec<String> = vec![];
    let mut names = vec![];
    for pod in list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let name = pod.metadata.name.clone().unwrap();
        let spec = pod.spec.as_ref().unwrap();
        let status = pod.status.as_ref().unwrap();
        assert_eq!(spec.host_network, Some(true), "{name}: hostNetwork");
        assert_eq!(
            spec.node_name.as_deref(),
            std::env::var("S2S_E2E_NODE").ok().as_deref(),
            "{name}: on the node"
        );
        assert_eq!(status.phase.as_deref(), Some("Running"), "{name}");
        for c in status.container_statuses.iter().flatten() {
            assert!(c.ready, "{name}/{}: ready", c.name);
            assert_eq!(c.restart_count, 0, "{name}/{}: restarts", c.name);
            assert_eq!(c.image, node.image, "{name}/{}: the imported image", c.name);
        }
        for c in &spec.containers {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.run_as_user, Some(65532), "{name}/{}", c.name);
            assert_eq!(
                sc.read_only_root_filesystem,
                Some(true),
                "{name}/{}",
                c.name
            );
        }
        components
            .push(pod.metadata.labels.as_ref().unwrap()["app.kubernetes.io/component"].clone());
        names.push(name);
    }
    components.sort();
    assert_eq!(
        components,
        ["controller", "token-server"],
        "one Pod of each"
    );
    for deployment in ["controller", "token-server"] {
        let logs = node.cluster.kubectl(&[
            "logs",
            "-n",
            opns,
            &format!("deployment/{release}-{deployment}"),
        ]);
        assert!(!logs.is_empty(), "{deployment}: kubectl logs is empty");
        assert!(
            !logs.contains("BEGIN PRIVATE KEY"),
            "{deployment}: a key in the logs"
        );
    }
    names.sort();
    names
}

/// What a workload needs for a token: its Secret's credentials, and the CA to trust.
#[derive(Clone)]
struct Credentials {
    token_url: String,
    client_id: String,
    client_secret: String,
    audience: String,
    issuer: String,
    ca: String,
}

/// A client-secret account in a workload namespace, and the controller Pod issues its
/// Secret.
async fn first_credentials(node: &Node, opns: &str, ns: &str, release: &str) -> Credentials {
    let admin = node.cluster.admin.clone();
    let issuer = format!("https://127.0.0.1:{TOKEN_PORT}");
    let audience = format!("https://orders.{ns}.example.com");
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let grants: Api<TokenGrant> = Api::namespaced(admin.clone(), ns);
    for o in [
        json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
               "metadata": {"name": "orders-api", "namespace": ns},
               "spec": {"api": {"audience": audience, "scopes": [{"name": "orders:read"}]}}}),
        json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
               "metadata": {"name": "worker", "namespace": ns},
               "spec": {"scopes": ["orders:read"], "audiences": [audience],
                        "authentication": {"clientSecret": {"secretName": "worker-credentials",
                                                            "gracePeriod": "15s"}}}}),
    ] {
        accounts
            .create(&PostParams::default(), &serde_json::from_value(o).unwrap())
            .await
            .unwrap();
    }
    let grant = json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
        "metadata": {"name": "worker", "namespace": ns},
        "spec": {"subject": {"serviceAccount": {"name": "worker"}}, "audience": audience,
                 "scopes": ["orders:read"]}});
    grants
        .create(
            &PostParams::default(),
            &serde_json::from_value(grant).unwrap(),
        )
        .await
        .unwrap();
    wait_ready(&accounts, "worker", Duration::from_secs(60)).await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let data = strings(&secrets.get("worker-credentials").await.unwrap());
    assert_eq!(data["token_url"], format!("{issuer}/oauth2/token"));

    let server_tls: Api<Secret> = Api::namespaced(admin, opns);
    let tls = strings(
        &server_tls
            .get(&format!("{release}-token-server-tls"))
            .await
            .unwrap(),
    );
    Credentials {
        token_url: data["token_url"].clone(),
        client_id: data["client_id"].clone(),
        client_secret: data["client_secret"].clone(),
        audience,
        issuer,
        ca: tls["ca.crt"].clone(),
    }
}

/// A token from the token-server Pod over HTTPS on 127.0.0.1, verified against its JWKS;
/// returns the key id it was signed with.
async fn token(creds: &Credentials) -> String {
    let client = https_client(&creds.ca);
    let token = eventually(Duration::from_secs(60), "a token over HTTPS", || async {
        let r = client
            .post(&creds.token_url)
            .basic_auth(&creds.client_id, Some(&creds.client_secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("audience", creds.audience.as_str()),
                ("scope", "orders:read"),
            ])
            .send()
            .await
            .ok()?;
        let body: Value = r.json().await.ok()?;
        body["access_token"].as_str().map(str::to_owned)
    })
    .await;
    let jwks: Value = client
        .get(format!("{}/jwks.json", creds.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let claims = verify_access_token(&token, &jwks, &creds.issuer, &creds.audience);
    assert_eq!(claims["scope"], "orders:read");
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// examples/workload-files.yaml's way, with the agent as the workload: a Pod mounting the
/// account's Secret runs `s2s-operator agent` on the node's loopback. A rotation reaches the
/// running Pod through the kubelet's Secret volume update: once the old secret is refused,
/// a token that is not in the agent's cache still comes, so the agent read the new one.
async fn agent_follows_rotation(node: &Node, ns: &str, creds: &Credentials) {
    let port = support::free_port();
    let agent = format!("http://127.0.0.1:{port}");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "worker", "namespace": ns},
        "spec": {
            "hostNetwork": true,
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "agent",
                "image": node.image,
                "imagePullPolicy": "Never",
                "args": ["agent", "--credentials", "/var/run/s2s/credentials",
                         "--listen", format!("127.0.0.1:{port}"), "--audience", creds.audience],
                // Ready once the agent got a token with the mounted credentials.
                "readinessProbe": {
                    "exec": {"command": ["/s2s-operator", "probe", format!("{agent}/v1/ready")]},
                    "periodSeconds": 2,
                },
                "volumeMounts": [{"name": "credentials", "mountPath": "/var/run/s2s/credentials",
                                  "readOnly": true}],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "readOnlyRootFilesystem": true,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
            "volumes": [{"name": "credentials",
                         "secret": {"secretName": "worker-credentials", "defaultMode": 288}}],
        }
    });
    let pods: Api<Pod> = Api::namespaced(node.cluster.admin.clone(), ns);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod).unwrap(),
    )
    .await
    .unwrap();
    let ready = || async {
        let p = pods.get("worker").await.ok()?;
        let conditions = p.status?.conditions?;
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    };
    let ready_within = tokio::time::timeout(Duration::from_secs(90), async {
        while ready().await.is_none() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    if ready_within.is_err() {
        panic!("the agent Pod is not Ready\n{}", node.diagnose(ns));
    }
    let http = support::http();
    let get = |query: String| {
        let http = http.clone();
        let url = format!("{agent}/v1/token?{query}");
        async move {
            let r = http.get(url).send().await.ok()?;
            (r.status() == 200).then_some(())
        }
    };
    let audience = url_encode(&creds.audience);
    get(format!("audience={audience}&scope=orders:read"))
        .await
        .expect("a token from the agent");

    // Rotate; the old secret works for the grace period (15 s), then is refused.
    rotate_until_refused(
        node,
        ns,
        "worker",
        "worker-credentials",
        creds,
        (&creds.client_id, &creds.client_secret),
        Duration::from_secs(60),
    )
    .await;
    // A token the agent has not cached (no scope asked): it must use the secret the kubelet
    // has written into the running Pod's volume by now (or soon: its sync period).
    let started = std::time::Instant::now();
    eventually(
        Duration::from_secs(150),
        "a token from the agent with the rotated secret",
        || get(format!("audience={audience}")),
    )
    .await;
    eprintln!(
        "the agent had the rotated secret {} s after the old one was refused",
        started.elapsed().as_secs()
    );
    let status = pods.get("worker").await.unwrap().status.unwrap();
    let restarts: i32 = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| c.restart_count)
        .sum();
    assert_eq!(restarts, 0, "no restart needed for the rotation");
}

/// Rotates the account's client secret (`s2s.dev/rotate`), waits for the new one in its
/// Secret, then for the token server to refuse the `old` (client id, secret) pair at `creds`'
/// token URL, for `creds.audience`: the grace period is over.
async fn rotate_until_refused(
    node: &Node,
    ns: &str,
    account: &str,
    secret: &str,
    creds: &Credentials,
    old: (&str, &str),
    within: Duration,
) {
    let accounts: Api<ServiceAccount> = Api::namespaced(node.cluster.admin.clone(), ns);
    let patch = json!({"metadata": {"annotations": {"s2s.dev/rotate": suffix()}}});
    accounts
        .patch(
            account,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(node.cluster.admin.clone(), ns);
    eventually(Duration::from_secs(60), "the rotated secret", || async {
        let data = strings(&secrets.get(secret).await.ok()?);
        (data["client_secret"] != old.1).then_some(())
    })
    .await;
    let client = https_client(&creds.ca);
    eventually(within, "the old secret refused", || async {
        let r = client
            .post(&creds.token_url)
            .basic_auth(old.0, Some(old.1))
            .form(&[
                ("grant_type", "client_credentials"),
                ("audience", creds.audience.as_str()),
            ])
            .send()
            .await
            .ok()?;
        (r.status() == 401).then_some(())
    })
    .await;
}

fn url_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The three ways of running billing-worker that `examples/` ships, side by side.
const WORKLOADS: [&str; 3] = ["files", "envfrom", "injected"];

/// `examples/workload-<kind>.yaml` as kubectl reads it, with what this node needs: the host
/// network (there is no Pod network), a name and `app` label of its own (the three files
/// are one Deployment, meant to be applied one at a time), one replica for the injected
/// one (two agents cannot both listen on the node's 127.0.0.1:9090), and a request every
/// second (REQUEST_EVERY; the workload's default is 30 s). Nothing else is touched.
fn with_node_changes(node: &Node, kind: &str) -> Value {
    with_node_changes_of(node, &format!("workload-{kind}.yaml"), kind)
}

/// [`with_node_changes`] of `examples/<file>`, named `billing-worker-<kind>`.
fn with_node_changes_of(node: &Node, file: &str, kind: &str) -> Value {
    let file = root().join("examples").join(file);
    let mut d: Value = serde_json::from_str(&node.cluster.kubectl(&[
        "create",
        "--dry-run=client",
        "-o",
        "json",
        "-f",
        file.to_str().unwrap(),
    ]))
    .unwrap();
    let app = format!("billing-worker-{kind}");
    d["metadata"]["name"] = json!(app);
    d["spec"]["selector"]["matchLabels"]["app"] = json!(app);
    let template = &mut d["spec"]["template"];
    template["metadata"]["labels"]["app"] = json!(app);
    template["spec"]["hostNetwork"] = json!(true);
    if kind == "injected" || kind == "sidecar" {
        d["spec"]["replicas"] = json!(1);
    }
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap();
    let app = containers
        .iter_mut()
        .find(|c| c["name"] == "app")
        .unwrap_or_else(|| panic!("{kind}: an app container"));
    assert_eq!(
        app["image"], node.workload_image,
        "{kind}: the image tests/cluster/run imports is the one the example names"
    );
    let env = app
        .as_object_mut()
        .unwrap()
        .entry("env")
        .or_insert_with(|| json!([]));
    env.as_array_mut()
        .unwrap()
        .push(json!({"name": "REQUEST_EVERY", "value": "1"}));
    d
}

/// `kubectl apply -f -` of one object.
fn kubectl_apply(node: &Node, obj: &Value) {
    use std::io::Write;
    let mut child = Command::new(support::cluster::kubectl())
        .arg("--kubeconfig")
        .arg(&node.cluster.kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(obj.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What one Pod of a workload said last: its running counts of good and failed token
/// requests, and the line.
#[derive(Debug, Clone)]
struct Last {
    pod: String,
    ok: u64,
    failed: u64,
    line: String,
}

/// The last line of each running Pod of `billing-worker-<kind>`, once every one has made a
/// request (`kubectl logs`, through the kubelet).
async fn last_lines(node: &Node, kind: &str) -> Vec<Last> {
    let pods: Api<Pod> = Api::namespaced(node.cluster.admin.clone(), "billing");
    let selector = format!("app=billing-worker-{kind}");
    eventually(
        Duration::from_secs(60),
        &format!("a request by every {kind} Pod"),
        || async {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            let mut out = vec![];
            for p in list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
            {
                let name = p.metadata.name.clone()?;
                let logs = node
                    .cluster
                    .kubectl_as(
                        &node.cluster.kubeconfig,
                        &["logs", "-n", "billing", &name, "-c", "app", "--tail=1"],
                    )
                    .ok()?;
                let line = logs.trim().to_owned();
                let count = |key: &str| -> Option<u64> {
                    let at = line.rfind(&format!(" {key}="))? + key.len() + 2;
                    line[at..]
                        .split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse()
                        .ok()
                };
                out.push(Last {
                    pod: name,
                    ok: count("ok")?,
                    failed: count("failed")?,
                    line,
                });
            }
            (!out.is_empty()).then_some(out)
        },
    )
    .await
}

/// The workload examples as shipped, on the node: every Pod gets tokens; a rotation reaches
/// the files and the injected Pods with zero failed requests during the grace period; the
/// envFrom Pods keep the old secret and fail once it ends, until a restart.
async fn workloads_as_shipped(node: &Node, creds: &Credentials) {
    let cluster = &node.cluster;
    for ns in EXAMPLE_NAMESPACES {
        cluster.create_namespace(ns).await;
    }
    for f in [
        "serviceaccount-api.yaml",
        "serviceaccount-client-secret.yaml",
        "tokengrant-plain.yaml",
    ] {
        cluster.kubectl(&[
            "apply",
            "-f",
            root().join("examples").join(f).to_str().unwrap(),
        ]);
    }
    // A grace period this test can wait out (the example's is 24h).
    const GRACE: u64 = 45;
    cluster.kubectl(&[
        "patch",
        "s2ssa",
        "billing-worker",
        "-n",
        "billing",
        "--type=merge",
        "-p",
        &json!({"spec": {"authentication": {"clientSecret": {"gracePeriod": format!("{GRACE}s")}}}})
            .to_string(),
    ]);
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.admin.clone(), "billing");
    wait_ready(&accounts, "billing-worker", Duration::from_secs(60)).await;
    let secrets: Api<Secret> = Api::namespaced(cluster.admin.clone(), "billing");
    let before = strings(&secrets.get("billing-worker-credentials").await.unwrap());
    assert_eq!(before["token_url"], creds.token_url);

    for kind in WORKLOADS {
        kubectl_apply(node, &with_node_changes(node, kind));
    }
    for kind in WORKLOADS {
        let rollout = cluster.kubectl_as(
            &cluster.kubeconfig,
            &[
                "rollout",
                "status",
                "-n",
                "billing",
                &format!("deployment/billing-worker-{kind}"),
                "--timeout=120s",
            ],
        );
        if let Err(e) = rollout {
            panic!(
                "billing-worker-{kind} is not available: {e}\n{}",
                node.diagnose("billing")
            );
        }
    }
    // The injected Pod: the API server called the webhook on loopback, and the agent is a
    // native sidecar.
    let pods: Api<Pod> = Api::namespaced(cluster.admin.clone(), "billing");
    let injected = pods
        .list(&ListParams::default().labels("app=billing-worker-injected"))
        .await
        .unwrap()
        .items;
    let spec = injected[0].spec.as_ref().unwrap();
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "s2s-agent")
        .expect("the agent injected");
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(sidecar.image.as_deref(), Some(node.image.as_str()));
    for kind in WORKLOADS {
        for last in last_lines(node, kind).await {
            assert!(
                last.ok >= 1 && last.failed == 0,
                "{kind}: {} got no token: {}\n{}",
                last.pod,
                last.line,
                node.diagnose("billing")
            );
        }
    }

    // Rotate. The old secret works for GRACE seconds, then is refused.
    let started = std::time::Instant::now();
    let at_rotation: Vec<Last> = last_lines(node, "files").await;
    let injected_at_rotation = last_lines(node, "injected").await;
    rotate_until_refused(
        node,
        "billing",
        "billing-worker",
        "billing-worker-credentials",
        &Credentials {
            audience: "https://orders.example.com".into(),
            ..creds.clone()
        },
        (&before["client_id"], &before["client_secret"]),
        Duration::from_secs(GRACE + 60),
    )
    .await;
    let refused_after = started.elapsed().as_secs();
    // A few more requests with only the new secret valid.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Files: no request failed, and they went on after the old secret was refused.
    let files = last_lines(node, "files").await;
    for last in &files {
        let then = at_rotation.iter().find(|l| l.pod == last.pod);
        assert!(
            last.failed == 0 && then.is_some_and(|t| last.ok >= t.ok + GRACE / 2),
            "files: {} failed during the rotation: {} (at the rotation: {then:?})",
            last.pod,
            last.line
        );
        eprintln!(
            "files: {}: {} token requests since the rotation, none failed",
            last.pod,
            last.ok - then.unwrap().ok
        );
    }
    // Injected: the app's requests never failed, and a token the agent has not cached
    // (another scope) comes with the rotated secret it read from its volume.
    for last in last_lines(node, "injected").await {
        assert_eq!(last.failed, 0, "injected: {}: {}", last.pod, last.line);
        let then = injected_at_rotation.iter().find(|l| l.pod == last.pod);
        eprintln!(
            "injected: {}: {} token requests to the agent since the rotation, none failed",
            last.pod,
            last.ok - then.map_or(0, |t| t.ok)
        );
    }
    let http = support::http();
    let uncached = format!(
        "http://127.0.0.1:{AGENT_PORT}/v1/token?audience={}&scope=orders:write",
        url_encode("https://orders.example.com")
    );
    let r = http.get(&uncached).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "the injected agent's new token: {}",
        r.text().await.unwrap_or_default()
    );
    // envFrom: the variables still hold the old secret, refused now.
    let envfrom = eventually(
        Duration::from_secs(30),
        "the envFrom Pods refused",
        || async {
            let lines = last_lines(node, "envfrom").await;
            lines
                .iter()
                .all(|l| l.line.contains("token failed") && l.line.contains("invalid_client"))
                .then_some(lines)
        },
    )
    .await;
    eprintln!(
        "old secret refused {refused_after} s after the rotation (grace {GRACE} s); envFrom: {}",
        envfrom[0].line
    );
    // … until they are restarted, as the README says to do within the grace period.
    cluster.kubectl(&[
        "rollout",
        "restart",
        "-n",
        "billing",
        "deployment/billing-worker-envfrom",
    ]);
    cluster.kubectl(&[
        "rollout",
        "status",
        "-n",
        "billing",
        "deployment/billing-worker-envfrom",
        "--timeout=120s",
    ]);
    eventually(
        Duration::from_secs(60),
        "the restarted envFrom Pods get tokens",
        || async {
            let lines = last_lines(node, "envfrom").await;
            lines
                .iter()
                .all(|l| l.ok >= 1 && l.failed == 0)
                .then_some(())
        },
    )
    .await;
    // examples/agent-sidecar.yaml, once the injected Pod is gone (both agents listen on the
    // node's 127.0.0.1:9090): the app reads the token file its agent keeps fresh.
    cluster.kubectl(&[
        "delete",
        "-n",
        "billing",
        "deployment/billing-worker-injected",
        "--cascade=foreground",
        "--wait=true",
        "--timeout=90s",
    ]);
    eventually(Duration::from_secs(60), "the injected Pod gone", || async {
        let list = pods
            .list(&ListParams::default().labels("app=billing-worker-injected"))
            .await
            .ok()?;
        list.items.is_empty().then_some(())
    })
    .await;
    kubectl_apply(
        node,
        &with_node_changes_of(node, "agent-sidecar.yaml", "sidecar"),
    );
    if let Err(e) = cluster.kubectl_as(
        &cluster.kubeconfig,
        &[
            "rollout",
            "status",
            "-n",
            "billing",
            "deployment/billing-worker-sidecar",
            "--timeout=120s",
        ],
    ) {
        panic!(
            "billing-worker-sidecar is not available: {e}\n{}",
            node.diagnose("billing")
        );
    }
    // The two containers start together: the app may look before the agent's first write.
    let sidecar = eventually(
        Duration::from_secs(60),
        "the sidecar Pod's app reading its token file",
        || async {
            let lines = last_lines(node, "sidecar").await;
            lines
                .iter()
                .all(|l| l.line.starts_with("token ok (written"))
                .then_some(lines)
        },
    )
    .await;
    eprintln!("agent-sidecar: {}", sidecar[0].line);

    let restarts: i32 = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum();
    assert_eq!(restarts, 0, "no container restarted");
}
