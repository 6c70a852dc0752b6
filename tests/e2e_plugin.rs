//! `kubectl s2s` (the `kubectl-s2s` binary) against the real control plane (tests/cluster/run
//! sets `S2S_E2E_KUBECONFIG`; without it the test prints a skip line).
//!
//! The operator runs as the other e2e tests run it (the chart's RBAC, controller and token
//! server as processes). So that the plugin's default path, the API server's service proxy,
//! is the one tested, a second token server listens on a non-loopback address of this
//! machine and a selector-less Service `<release>-token-server` with Endpoints (and an
//! EndpointSlice) names it: the API server refuses loopback endpoints, and no Pod runs here.
//! Without such an address the test says so and uses `--server-url` instead.
//!
//! Every command runs as the cluster admin and, where it matters, as a caller whose RBAC is
//! one Role in one namespace (a Kubernetes service account's token, `kubeconfig_for`).

mod support;

use std::net::{IpAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::cluster::{Cluster, Operator, logs_in, serial, suffix};
use support::free_port;

/// What one run of the plugin did.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The plugin for one identity and one installation.
struct Plugin {
    kubeconfig: PathBuf,
    operator_namespace: String,
    /// `--release`; `None` lets the plugin find it from the chart's labels.
    release: Option<String>,
}

impl Plugin {
    fn run(&self, args: &[&str]) -> Out {
        let out = Command::new(env!("CARGO_BIN_EXE_kubectl-s2s"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--operator-namespace", &self.operator_namespace])
            .args(self.release.iter().flat_map(|r| ["--release", r.as_str()]))
            .args(args)
            .env_remove("KUBECONFIG")
            .env_remove("S2S_SERVER_URL")
            .env_remove("S2S_OPERATOR_NAMESPACE")
            .env_remove("S2S_RELEASE")
            .output()
            .expect("kubectl-s2s runs");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and expects success.
    fn ok(&self, args: &[&str]) -> Out {
        let out = self.run(args);
        assert_eq!(out.code, 0, "kubectl s2s {}: {out}", args.join(" "));
        out
    }

    /// Runs and expects failure.
    fn fails(&self, args: &[&str]) -> Out {
        let out = self.run(args);
        assert_ne!(
            out.code,
            0,
            "kubectl s2s {} should fail: {out}",
            args.join(" ")
        );
        out
    }
}

/// An address of this machine other than loopback, if it has one.
fn host_address() -> Option<IpAddr> {
    // Connecting a UDP socket sends nothing; it only picks the source address of the route.
    for probe in ["192.0.2.1:9", "10.255.255.255:9", "8.8.8.8:53"] {
        let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
            continue;
        };
        if s.connect(probe).is_ok()
            && let Ok(a) = s.local_addr()
            && !a.ip().is_loopback()
            && !a.ip().is_unspecified()
        {
            return Some(a.ip());
        }
    }
    None
}

fn objects(api_ns: &str, cli_ns: &str, audience: &str) -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
            "metadata": {"name": "orders-api", "namespace": api_ns},
            "spec": {"api": {"audience": audience, "scopes": [{"name": "orders:read"}, {"name": "orders:write"}]}}
        }),
        json!({
            "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
            "metadata": {"name": "worker", "namespace": cli_ns},
            "spec": {
                "scopes": ["orders:read", "orders:write"],
                "audiences": [audience],
                "authentication": {"clientSecret": {"secretName": "worker-creds", "gracePeriod": "1h"}}
            }
        }),
        json!({
            "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
            "metadata": {"name": "signer", "namespace": cli_ns},
            "spec": {
                "scopes": ["orders:read"],
                "audiences": [audience],
                "authentication": {"privateKeyJwt": {"secretName": "signer-key", "algorithm": "ES256"}}
            }
        }),
        json!({
            "apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
            "metadata": {"name": "worker", "namespace": api_ns},
            "spec": {
                "subject": {"serviceAccount": {"name": "worker", "namespace": cli_ns}},
                "audience": audience, "scopes": ["orders:read"],
                "output": {"secretName": "worker-orders-token", "lifetime": "1h"}
            }
        }),
        json!({
            "apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
            "metadata": {"name": "signer", "namespace": api_ns},
            "spec": {
                "subject": {"serviceAccount": {"name": "signer", "namespace": cli_ns}},
                "audience": audience, "scopes": ["orders:read"]
            }
        }),
        // A token kept in a Secret of the client namespace, under the worker's grant.
        json!({
            "apiVersion": "s2s.dev/v1alpha1", "kind": "AccessToken",
            "metadata": {"name": "worker-orders", "namespace": cli_ns},
            "spec": {
                "serviceAccountName": "worker", "audiences": [audience], "scopes": ["orders:read"],
                "secretName": "worker-access-token", "lifetime": "1h"
            }
        }),
        // The cluster's own service-account issuer, so `status` and `check` show key state.
        json!({
            "apiVersion": "s2s.dev/v1alpha1", "kind": "TrustedIssuer",
            "metadata": {"name": "cluster", "namespace": cli_ns},
            "spec": {"kubernetes": {}, "audiences": ["s2s.dev"]}
        }),
        // The namespace-only caller: a Role in the client namespace, nothing else. It may read
        // the worker's credentials Secret, not the signer's.
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "dev", "namespace": cli_ns}
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "s2s-dev", "namespace": cli_ns},
            "rules": [
                {"apiGroups": ["s2s.dev"], "resources": ["serviceaccounts", "tokengrants", "trustedissuers"],
                 "verbs": ["get", "list", "watch", "patch"]},
                {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["worker-creds"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]}
            ]
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "s2s-dev", "namespace": cli_ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "s2s-dev"},
            "subjects": [{"kind": "ServiceAccount", "name": "dev", "namespace": cli_ns}]
        }),
    ]
}

/// A stand-in for the token server's Pod: never run (there is no kubelet), its status says
/// it has `addr`. The API server's service proxy only dials endpoint addresses whose
/// `targetRef` is a Pod with that IP.
fn token_server_pod(op: &Operator) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{}-token-server-e2e", op.release), "namespace": op.namespace},
        "spec": {"containers": [{"name": "token-server", "image": "s2s-operator:e2e"}]}
    })
}

/// The Service `<release>-token-server` pointing at `addr:port` through the stand-in Pod (no
/// selector, so nothing overwrites the Endpoints).
fn token_server_service(op: &Operator, addr: IpAddr, port: u16) -> Vec<Value> {
    let name = format!("{}-token-server", op.release);
    let ns = &op.namespace;
    let pod = json!({"kind": "Pod", "name": format!("{name}-e2e"), "namespace": ns});
    vec![
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": {
                "app.kubernetes.io/name": "s2s-operator",
                "app.kubernetes.io/instance": op.release,
                "app.kubernetes.io/component": "token-server"}},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}]}
        }),
        json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": name, "namespace": ns},
            "subsets": [{"addresses": [{"ip": addr.to_string(), "targetRef": pod}],
                         "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}]
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-e2e"), "namespace": ns,
                         "labels": {"kubernetes.io/service-name": name,
                                    "endpointslice.kubernetes.io/managed-by": "s2s-e2e"}},
            "addressType": if addr.is_ipv4() { "IPv4" } else { "IPv6" },
            "endpoints": [{"addresses": [addr.to_string()], "conditions": {"ready": true}, "targetRef": pod}],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]
        }),
    ]
}

/// What `kubectl s2s token` needs in the operator namespace for the service proxy, for the
/// Kubernetes service account `dev` of `user_ns`.
fn proxy_role(op_ns: &str, service: &str, user_ns: &str) -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "s2s-token-proxy", "namespace": op_ns},
            "rules": [
                {"apiGroups": [""], "resources": ["services"], "resourceNames": [service], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["services/proxy"], "resourceNames": [format!("http:{service}:http")], "verbs": ["get", "create"]}
            ]
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "s2s-token-proxy", "namespace": op_ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "s2s-token-proxy"},
            "subjects": [{"kind": "ServiceAccount", "name": "dev", "namespace": user_ns}]
        }),
    ]
}

/// A MutatingWebhookConfiguration `<release>-inject` as the chart's would look before the
/// controller filled in its CA bundle, scoped to nothing.
fn webhook_config(op: &Operator) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": format!("{}-inject", op.release)},
        "webhooks": [{
            "name": "inject.s2s.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "namespaceSelector": {"matchLabels": {"s2s.dev/e2e-no-such-label": "true"}},
            "clientConfig": {"service": {"namespace": op.namespace, "name": format!("{}-webhook", op.release)}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]
        }]
    })
}

async fn wait_ready(cluster: &Cluster, ns: &str, what: &str) {
    cluster.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=90s",
        "-n",
        ns,
        what,
    ]);
}

#[tokio::test]
async fn e2e_plugin_every_command() {
    let Some(cluster) = Cluster::from_env("e2e_plugin_every_command").await else {
        return;
    };
    let _serial = serial().await;
    cluster.apply_crds();
    let id = suffix();
    let mut op = Operator::install(&cluster, &id).await;
    let api_ns = format!("plug-api-{id}");
    let cli_ns = format!("plug-cli-{id}");
    cluster.create_namespace(&api_ns).await;
    cluster.create_namespace(&cli_ns).await;
    let logs = op.log_dir();
    let dir = tempfile::tempdir().unwrap();
    let outcome = {
        use futures::FutureExt;
        std::panic::AssertUnwindSafe(scenario(&cluster, &mut op, &api_ns, &cli_ns, dir.path()))
            .catch_unwind()
            .await
    };
    let _ = cluster.kubectl_as(
        &cluster.kubeconfig,
        &[
            "delete",
            "mutatingwebhookconfiguration",
            &format!("{}-inject", op.release),
            "--ignore-not-found",
        ],
    );
    cluster
        .delete_namespaces(&[api_ns, cli_ns], Duration::from_secs(120))
        .await;
    if let Err(e) = outcome {
        let what = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        let text = logs_in(&logs);
        op.uninstall().await;
        panic!("{what}\n{text}");
    }
    op.uninstall().await;
}

async fn scenario(cluster: &Cluster, op: &mut Operator, api_ns: &str, cli_ns: &str, dir: &Path) {
    let admin = Plugin {
        kubeconfig: cluster.kubeconfig.clone(),
        operator_namespace: op.namespace.clone(),
        // Found from the Service's labels, as after `helm install`.
        release: None,
    };

    // Before anything runs, `check` fails and says what to do.
    let out = admin.fails(&["check"]);
    assert!(out.stdout.contains("[FAIL] controller leader"), "{out}");
    assert!(out.stdout.contains("fix:"), "{out}");

    op.start_controller();
    op.start_token_server().await;
    // The service proxy's way to a token server: a non-loopback address of this machine.
    let direct = match host_address() {
        Some(addr) => {
            let port = free_port();
            let url = op
                .start_token_server_at(&std::net::SocketAddr::new(addr, port).to_string())
                .await;
            let pod = token_server_pod(op);
            cluster.apply_object(&pod).await;
            let ip = addr.to_string();
            cluster.kubectl(&[
                "patch",
                "pod",
                pod["metadata"]["name"].as_str().unwrap(),
                "-n",
                &op.namespace,
                "--subresource=status",
                "--type=merge",
                "-p",
                &json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}]}}).to_string(),
            ]);
            for obj in token_server_service(op, addr, port) {
                cluster.apply_object(&obj).await;
            }
            eprintln!("e2e_plugin: the service proxy reaches a token server at {url}");
            None
        }
        None => {
            eprintln!(
                "e2e_plugin: no non-loopback address here; the token server is reached with \
                 --server-url, not the service proxy"
            );
            Some(op.issuer.clone())
        }
    };
    let via = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        if let Some(url) = &direct {
            v.push("--server-url".into());
            v.push(url.clone());
        }
        v
    };
    let run_ok = |p: &Plugin, args: &[&str]| {
        let v = via(args);
        p.ok(&v.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let run_fails = |p: &Plugin, args: &[&str]| {
        let v = via(args);
        p.fails(&v.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let audience = format!("https://orders.{api_ns}.example.com");
    for obj in objects(api_ns, cli_ns, &audience) {
        cluster.apply_object(&obj).await;
    }
    wait_ready(cluster, cli_ns, "serviceaccounts.s2s.dev/worker").await;
    wait_ready(cluster, cli_ns, "serviceaccounts.s2s.dev/signer").await;
    wait_ready(cluster, api_ns, "tokengrants.s2s.dev/worker").await;
    wait_ready(cluster, api_ns, "tokengrants.s2s.dev/signer").await;
    wait_ready(cluster, cli_ns, "trustedissuers.s2s.dev/cluster").await;
    wait_ready(cluster, cli_ns, "accesstokens.s2s.dev/worker-orders").await;

    // check: everything in order (CRDs, Lease, token server and keys, issuers, webhook off).
    let out = super_check(&admin, &direct);
    for want in [
        "[ok]   CRD serviceaccounts.s2s.dev",
        "[ok]   controller leader: held by",
        "[ok]   token server",
        "[ok]   signing keys: current key",
        &format!("[ok]   trustedissuer {cli_ns}/cluster: Ready,"),
        "injection off",
        "All checks passed.",
    ] {
        assert!(out.stdout.contains(want), "{want:?} missing: {out}");
    }
    let json: Value = serde_json::from_str(&run_ok(&admin, &["check", "-o", "json"]).stdout)
        .expect("check -o json");
    assert!(
        json.as_array()
            .unwrap()
            .iter()
            .all(|c| c["outcome"] != "Fail")
    );

    // status: what a person checks first.
    let out = admin.ok(&["status", "serviceaccount/worker", "-n", cli_ns]);
    for want in [
        "ServiceAccount",
        "Client ID",
        "Current credential",
        "Next rotation",
        "on demand only",
        "Ready",
        &format!("{api_ns}/worker"),
        "worker-orders-token",
        "Events:",
    ] {
        assert!(out.stdout.contains(want), "{want:?} missing: {out}");
    }
    assert!(!out.stdout.contains("sha256:"), "a digest printed: {out}");
    let yaml: Value = serde_yaml::from_str(
        &admin
            .ok(&["status", "s2ssa/worker", "-n", cli_ns, "-o", "yaml"])
            .stdout,
    )
    .unwrap();
    assert_eq!(yaml["grants"][0]["audience"], audience.as_str());
    let out = admin.ok(&["status", "tiss/cluster", "-n", cli_ns]);
    for want in [
        "TrustedIssuer",
        "the cluster's service-account issuer",
        "Keys",
        "Last fetch",
    ] {
        assert!(out.stdout.contains(want), "{want:?} missing: {out}");
    }
    let out = admin.ok(&["status", "tokengrant/worker", "-n", api_ns]);
    assert!(out.stdout.contains("Materialized tokens"), "{out}");
    let out = admin.ok(&["status", "-A"]);
    for want in ["KIND", &format!("{cli_ns}  worker"), "TokenGrant"] {
        assert!(out.stdout.contains(want), "{want:?} missing: {out}");
    }
    // An AccessToken: its report, beside its account, in the listings; renewed on demand.
    let out = admin.ok(&["status", "accesstoken/worker-orders", "-n", cli_ns]);
    for want in [
        &format!("AccessToken {cli_ns}/worker-orders"),
        &format!("serviceaccount {cli_ns}/worker"),
        audience.as_str(),
        "orders:read",
        "worker-access-token (lifetime 1h",
        "Token ID",
        "Expires",
        "(in 5",
        "Renews",
        "Revision     1",
        "Ready",
        "Issued",
    ] {
        assert!(out.stdout.contains(want), "{want:?} missing: {out}");
    }
    let out = admin.ok(&["status", "serviceaccount/worker", "-n", cli_ns]);
    for want in [
        "AccessTokens (tokens kept in this namespace)",
        "worker-orders",
        "worker-access-token",
        "True (Ready)",
    ] {
        assert!(out.stdout.contains(want), "{want:?} missing: {out}");
    }
    let listed = |args: &[&str]| -> Vec<Value> {
        let v: Value = serde_json::from_str(&admin.ok(args).stdout).expect("status -A -o json");
        v.as_array().unwrap().clone()
    };
    for args in [
        &["status", "-A", "-o", "json"][..],
        &["status", "s2stoken", "-A", "-o", "json"][..],
    ] {
        let lines = listed(args);
        assert!(
            lines.iter().any(|l| l["kind"] == "AccessToken"
                && l["namespace"] == cli_ns
                && l["name"] == "worker-orders"
                && l["ready"] == "True"
                && l["reason"] == "Ready"),
            "{args:?}: {lines:?}"
        );
        if args[1] == "s2stoken" {
            assert!(
                lines.iter().all(|l| l["kind"] == "AccessToken"),
                "{lines:?}"
            );
        }
    }
    let secret_token = || {
        cluster.kubectl(&[
            "get",
            "secret",
            "worker-access-token",
            "-n",
            cli_ns,
            "-o",
            "jsonpath={.data.access_token}",
        ])
    };
    let before = secret_token();
    let first_id = cluster.kubectl(&[
        "get",
        "accesstokens.s2s.dev",
        "worker-orders",
        "-n",
        cli_ns,
        "-o",
        "jsonpath={.status.tokenId}",
    ]);
    let out = admin.ok(&[
        "rotate",
        "accesstoken/worker-orders",
        "-n",
        cli_ns,
        "--wait",
        "--timeout",
        "90s",
    ]);
    assert!(
        out.stdout.contains("renewal requested (s2s.dev/rotate="),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("(revision 2) is in Secret worker-access-token"),
        "{out}"
    );
    assert!(!out.stdout.contains(&first_id), "the old token id: {out}");
    assert_ne!(
        before,
        secret_token(),
        "the Secret holds the new token once --wait returns"
    );
    let out = admin.ok(&["status", "s2stoken/worker-orders", "-n", cli_ns]);
    assert!(out.stdout.contains("Revision     2"), "{out}");
    assert!(
        out.stdout.contains("renewal requested"),
        "the Renewed Event: {out}"
    );

    let out = admin.fails(&["status", "serviceaccount/nobody", "-n", cli_ns]);
    assert!(out.stderr.contains("not found"), "{out}");
    assert!(out.stderr.contains("hint:"), "{out}");

    // token: from a client secret and from a private key, via the service proxy.
    let token = run_ok(
        &admin,
        &[
            "token",
            "serviceaccount/worker",
            "-n",
            cli_ns,
            "--audience",
            &audience,
            "--scope",
            "orders:read",
        ],
    )
    .stdout
    .trim()
    .to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let out = run_ok(
        &admin,
        &[
            "token",
            "s2ssa/signer",
            "-n",
            cli_ns,
            "--audience",
            &audience,
            "--decode",
        ],
    );
    assert!(out.stdout.contains("\"scope\": \"orders:read\""), "{out}");
    let out = run_fails(
        &admin,
        &[
            "token",
            "serviceaccount/worker",
            "-n",
            cli_ns,
            "--audience",
            &audience,
            "--scope",
            "orders:write",
        ],
    );
    assert!(out.stderr.contains("invalid_scope"), "{out}");
    assert!(out.stderr.contains("TokenGrant"), "{out}");

    // inspect: valid, with its scopes and the grant that allowed it.
    let out = run_ok(&admin, &["inspect", &token]);
    for want in [
        "Valid:      yes",
        "Signature:  valid (ES256",
        "orders:read",
        "in force",
        &format!("{api_ns}/worker/"),
    ] {
        assert!(out.stdout.contains(want), "{want:?} missing: {out}");
    }
    let out = admin.fails(&["inspect", "not-a-jwt"]);
    assert!(out.stderr.contains("not a JWT"), "{out}");

    // rotate --wait: a new secret, the old one in grace; tokens still come.
    let before = cluster.kubectl(&[
        "get",
        "secret",
        "worker-creds",
        "-n",
        cli_ns,
        "-o",
        "jsonpath={.data.client_secret}",
    ]);
    let out = admin.ok(&[
        "rotate",
        "serviceaccount/worker",
        "-n",
        cli_ns,
        "--wait",
        "--timeout",
        "90s",
    ]);
    assert!(out.stdout.contains("new credential"), "{out}");
    assert!(out.stdout.contains("keeps working until"), "{out}");
    let after = cluster.kubectl(&[
        "get",
        "secret",
        "worker-creds",
        "-n",
        cli_ns,
        "-o",
        "jsonpath={.data.client_secret}",
    ]);
    assert_ne!(
        before, after,
        "the Secret holds the new secret once --wait returns"
    );
    let out = admin.ok(&["status", "serviceaccount/worker", "-n", cli_ns]);
    assert!(out.stdout.contains("still works until"), "{out}");
    let fresh = run_ok(
        &admin,
        &[
            "token",
            "serviceaccount/worker",
            "-n",
            cli_ns,
            "--audience",
            &audience,
        ],
    )
    .stdout
    .trim()
    .to_owned();

    // revoke --token (RFC 7009 as the token's own client), then the whole grant.
    let out = run_ok(&admin, &["revoke", "--token", &fresh]);
    assert!(out.stdout.contains("active=false"), "{out}");
    // The namespace-only caller.
    let dev = Plugin {
        kubeconfig: cluster.kubeconfig_for(cli_ns, "dev", dir).await,
        operator_namespace: op.namespace.clone(),
        release: Some(op.release.clone()),
    };
    // Its context's namespace is the default: no -n.
    let out = dev.ok(&["status", "serviceaccount/worker"]);
    assert!(out.stdout.contains("Client ID"), "{out}");
    assert!(
        out.stdout
            .contains(&format!("from namespace {cli_ns} only")),
        "{out}"
    );
    // Its Role has no accesstokens: the report says they are not shown, and still prints.
    assert!(
        out.stdout.contains(&format!(
            "AccessTokens are not shown: you may not list accesstokens.s2s.dev in {cli_ns}"
        )),
        "{out}"
    );
    let out = dev.ok(&["status", "serviceaccounts"]);
    assert!(out.stdout.contains("signer"), "{out}");
    // A Secret it may not read: the missing permission is named.
    let out = dev.fails(&["token", "serviceaccount/signer", "--audience", &audience]);
    assert!(
        out.stderr
            .contains("forbidden: you may not get secrets/signer-key"),
        "{out}"
    );
    assert!(out.stderr.contains("`get` on secrets"), "{out}");
    // A Secret it may read, but no way into the operator namespace's service proxy.
    if direct.is_none() {
        let out = dev.fails(&["token", "serviceaccount/worker", "--audience", &audience]);
        assert!(out.stderr.contains("services/proxy"), "{out}");
        assert!(out.stderr.contains("--server-url"), "{out}");
        // The permissions the README names for the service proxy, and no more: then it works.
        let service = format!("{}-token-server", op.release);
        for obj in proxy_role(&op.namespace, &service, cli_ns) {
            cluster.apply_object(&obj).await;
        }
        let out = dev.ok(&["token", "serviceaccount/worker", "--audience", &audience]);
        assert_eq!(out.stdout.trim().split('.').count(), 3, "{out}");
        // And the token goes to stdin of inspect, not into argv.
        let inspect = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-s2s"))
            .arg("--kubeconfig")
            .arg(&dev.kubeconfig)
            .args([
                "--operator-namespace",
                &op.namespace,
                "--release",
                &op.release,
            ])
            .args(["inspect", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            inspect
                .stdin
                .as_ref()
                .unwrap()
                .write_all(out.stdout.as_bytes())
                .unwrap();
        }
        let done = inspect.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&done.stdout);
        assert!(done.status.success(), "{text}");
        // Grants in namespaces it may not read are reported as such, not as void.
        assert!(text.contains("Valid:      yes"), "{text}");
    }
    let out = dev.ok(&[
        "token",
        "serviceaccount/worker",
        "--audience",
        &audience,
        "--server-url",
        &op.issuer,
    ]);
    assert_eq!(out.stdout.trim().split('.').count(), 3, "{out}");
    let out = dev.ok(&[
        "rotate",
        "serviceaccount/worker",
        "--wait",
        "--timeout",
        "90s",
    ]);
    assert!(out.stdout.contains("new credential"), "{out}");
    let out = dev.fails(&["revoke", "tokengrant/worker", "-n", api_ns]);
    assert!(out.stderr.contains("forbidden"), "{out}");
    // What it may not see is a warning, not a pass (it may reach the token server here).
    let out = dev.run(&["check"]);
    assert!(
        out.stdout.contains("[warn] controller leader: not checked"),
        "{out}"
    );
    assert!(!out.stdout.contains("All checks passed"), "{out}");

    // Revoking the whole grant voids the token issued under it.
    let out = admin.ok(&["revoke", "tokengrant/worker", "-n", api_ns]);
    assert!(out.stdout.contains("revoked"), "{out}");
    let revoked: Value = serde_json::from_str(&cluster.kubectl(&[
        "get",
        "tokengrants.s2s.dev",
        "worker",
        "-n",
        api_ns,
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(revoked["spec"]["revoked"], true);
    let out = run_fails(&admin, &["inspect", &token]);
    assert!(out.stdout.contains("revoked (spec.revoked)"), "{out}");

    // As a kubectl plugin: kubectl finds `kubectl-s2s` on PATH.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_kubectl-s2s"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(support::cluster::kubectl())
        .args(["s2s", "--kubeconfig"])
        .arg(&cluster.kubeconfig)
        .args(["status", "serviceaccount/worker", "-n", cli_ns])
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Client ID"));

    // Injection on but broken: a webhook with no CA bundle, calling a Service that does not
    // exist. It matches no namespace and fails open, so nothing else is disturbed.
    let webhook = webhook_config(op);
    cluster.apply_object(&webhook).await;
    let out = run_fails(&admin, &["check"]);
    assert!(out.stdout.contains("[FAIL] injection webhook"), "{out}");
    assert!(out.stdout.contains("caBundle"), "{out}");
    cluster.kubectl(&[
        "delete",
        "mutatingwebhookconfiguration",
        webhook["metadata"]["name"].as_str().unwrap(),
    ]);

    // The controller gone: check says the Lease went stale.
    op.stop_controller();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let out = run_fails(&admin, &["check"]);
    assert!(out.stdout.contains("[FAIL] controller leader"), "{out}");
    assert!(out.stdout.contains("stale"), "{out}");
}

/// `check` as the admin, through the proxy or `--server-url`.
fn super_check(admin: &Plugin, direct: &Option<String>) -> Out {
    let mut args = vec!["check".to_owned()];
    if let Some(url) = direct {
        args.push("--server-url".into());
        args.push(url.clone());
    }
    admin.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
}
