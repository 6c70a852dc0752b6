//! End to end against a real cluster, when `S2S_E2E_KUBECONFIG` names a kubeconfig with
//! cluster-admin rights (used only for setup). Skipped, saying so, when it is unset.
//!
//! Setup: apply the CRDs and the chart's service accounts and RBAC (rendered with a unique
//! release name), mint a token for each of the chart's service accounts and write a
//! kubeconfig with it, then start `s2s-operator controller` and `s2s-operator token-server`
//! as child processes with those kubeconfigs — so they run with exactly the chart's RBAC.
//! The scenario then works in a fresh namespace labelled `s2s.dev/e2e=true`; everything is
//! deleted at the end, pass or fail.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount as CoreServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;
use support::free_port;
use support::scenario::{self, Waits, eventually};

const MANAGER: &str = "s2s-e2e";

fn kubeconfig_path() -> Option<PathBuf> {
    match std::env::var("S2S_E2E_KUBECONFIG") {
        Ok(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            // Straight to stderr: the test harness captures println!, and this must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipped: S2S_E2E_KUBECONFIG is not set (end-to-end tests need a real cluster)"
            );
            None
        }
    }
}

async fn admin_config(path: &Path) -> Config {
    let kubeconfig = Kubeconfig::read_from(path).expect("S2S_E2E_KUBECONFIG is a kubeconfig");
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("usable kubeconfig")
}

fn suffix() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}", (n as u64) ^ u64::from(std::process::id()))
        .chars()
        .rev()
        .take(8)
        .collect()
}

async fn apply_crds(admin: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut names = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
        let name = crd.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
        names.push(name);
    }
    for name in names {
        eventually(
            Duration::from_secs(60),
            &format!("CRD {name} Established"),
            || async {
                let crd = api.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            },
        )
        .await;
    }
}

/// The chart's templates that need no Helm logic beyond the release name and namespace.
fn render(template: &str, release: &str, namespace: &str) -> Vec<serde_json::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("charts/s2s-operator/templates")
        .join(template);
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("{{ .Release.Name }}", release)
        .replace("{{ .Release.Namespace }}", namespace);
    assert!(
        !text.contains("{{"),
        "{template} needs more than name and namespace"
    );
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect()
}

async fn apply_object(admin: &Client, obj: serde_json::Value) {
    let (group, version) = match obj["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (
            String::new(),
            obj["apiVersion"].as_str().unwrap().to_owned(),
        ),
    };
    let kind = obj["kind"].as_str().unwrap();
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, &version, kind));
    let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
    let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(admin.clone(), ns, &ar),
        None => Api::all_with(admin.clone(), &ar),
    };
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
}

/// A kubeconfig for a service account of the operator namespace: the admin's cluster, the
/// service account's token.
async fn kubeconfig_for(admin: &Client, cfg: &Config, ns: &str, sa: &str, dir: &Path) -> PathBuf {
    let api: Api<CoreServiceAccount> = Api::namespaced(admin.clone(), ns);
    let tr = api
        .create_token_request(
            sa,
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![],
                    expiration_seconds: Some(3600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {sa}: {e}"));
    let token = tr.status.unwrap().token;
    let mut cluster = json!({"server": cfg.cluster_url.to_string().trim_end_matches('/')});
    let ca_pem: Option<Vec<u8>> = match (&cfg.root_cert, &cfg.root_cert_file) {
        (Some(ders), _) => Some(
            ders.iter()
                .map(|der| {
                    let b64 = STANDARD.encode(der);
                    let lines: Vec<&str> = b64
                        .as_bytes()
                        .chunks(64)
                        .map(|c| std::str::from_utf8(c).unwrap())
                        .collect();
                    format!(
                        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                        lines.join("\n")
                    )
                })
                .collect::<String>()
                .into_bytes(),
        ),
        (None, Some(file)) => Some(std::fs::read(file).unwrap()),
        (None, None) => None,
    };
    if let Some(pem) = ca_pem {
        cluster["certificate-authority-data"] = json!(STANDARD.encode(pem));
    }
    if cfg.accept_invalid_certs {
        cluster["insecure-skip-tls-verify"] = json!(true);
    }
    if let Some(name) = &cfg.tls_server_name {
        cluster["tls-server-name"] = json!(name);
    }
    let doc = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": sa, "namespace": ns}}],
        "current-context": "e2e",
    });
    let path = dir.join(format!("{sa}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
    path
}

/// A child process killed on drop, its output kept in a log file.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], kubeconfig: &Path, log: PathBuf) -> Proc {
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_s2s-operator"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("S2S_LOG", "info,s2s_operator=debug")
        .env_remove("POD_NAMESPACE")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("s2s-operator starts");
    Proc(child)
}

async fn cleanup(admin: &Client, release: &str, namespaces: &[String]) {
    let nss: Api<Namespace> = Api::all(admin.clone());
    for ns in namespaces {
        let _ = nss.delete(ns, &DeleteParams::default()).await;
    }
    for (kind, plural) in [
        ("ClusterRole", "clusterroles"),
        ("ClusterRoleBinding", "clusterrolebindings"),
    ] {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind),
            plural,
        );
        let api: Api<DynamicObject> = Api::all_with(admin.clone(), &ar);
        for who in ["controller", "token-server"] {
            let _ = api
                .delete(&format!("{release}-{who}"), &DeleteParams::default())
                .await;
        }
    }
}

#[tokio::test]
async fn e2e_accounts_secrets_tokens_rotation_garbage_collection_and_federation() {
    let Some(path) = kubeconfig_path() else {
        return;
    };
    let cfg = admin_config(&path).await;
    let admin = Client::try_from(cfg.clone()).expect("admin client");
    let id = suffix();
    let release = format!("s2s-e2e-{id}");
    let op_ns = format!("s2s-e2e-op-{id}");
    let work_ns = format!("s2s-e2e-{id}");
    let namespaces = vec![op_ns.clone(), work_ns.clone()];

    let run = {
        let admin = admin.clone();
        let (release, op_ns, work_ns) = (release.clone(), op_ns.clone(), work_ns.clone());
        tokio::spawn(async move {
            apply_crds(&admin).await;
            let nss: Api<Namespace> = Api::all(admin.clone());
            for ns in [&op_ns, &work_ns] {
                let n: Namespace = serde_json::from_value(json!({
                    "metadata": {"name": ns, "labels": {"s2s.dev/e2e": "true"}}
                }))
                .unwrap();
                nss.create(&PostParams::default(), &n).await.unwrap();
            }
            for template in ["serviceaccounts.yaml", "rbac.yaml"] {
                for obj in render(template, &release, &op_ns) {
                    apply_object(&admin, obj).await;
                }
            }
            let dir = tempfile::tempdir().unwrap();
            let controller_kc = kubeconfig_for(
                &admin,
                &cfg,
                &op_ns,
                &format!("{release}-controller"),
                dir.path(),
            )
            .await;
            let server_kc = kubeconfig_for(
                &admin,
                &cfg,
                &op_ns,
                &format!("{release}-token-server"),
                dir.path(),
            )
            .await;
            let port = free_port();
            let issuer = format!("http://127.0.0.1:{port}");
            let health = format!("127.0.0.1:{}", free_port());
            let listen = format!("127.0.0.1:{port}");
            let _controller = spawn(
                &[
                    "controller",
                    "--namespace",
                    &op_ns,
                    "--issuer",
                    &issuer,
                    "--health-listen",
                    &health,
                ],
                &controller_kc,
                dir.path().join("controller.log"),
            );
            let _server = spawn(
                &[
                    "token-server",
                    "--namespace",
                    &op_ns,
                    "--issuer",
                    &issuer,
                    "--listen",
                    &listen,
                ],
                &server_kc,
                dir.path().join("token-server.log"),
            );
            let logs = |dir: &Path| {
                ["controller.log", "token-server.log"]
                    .iter()
                    .map(|f| {
                        format!(
                            "--- {f}\n{}",
                            std::fs::read_to_string(dir.join(f)).unwrap_or_default()
                        )
                    })
                    .collect::<String>()
            };
            let outcome = tokio::spawn({
                let admin = admin.clone();
                let work_ns = work_ns.clone();
                let issuer = issuer.clone();
                async move {
                    eventually(Duration::from_secs(90), "token-server /readyz", || async {
                        let r = support::http()
                            .get(format!("{issuer}/readyz"))
                            .send()
                            .await
                            .ok()?;
                        (r.status() == 200).then_some(())
                    })
                    .await;
                    let waits = Waits {
                        converge: Duration::from_secs(60),
                        gc: Duration::from_secs(120),
                    };
                    scenario::credentials_lifecycle(admin.clone(), &work_ns, &issuer, &waits).await;
                    scenario::token_grant_output_and_revocation(
                        admin.clone(),
                        &work_ns,
                        &issuer,
                        &waits,
                    )
                    .await;
                    scenario::kubernetes_federation(admin, &work_ns, &issuer, &waits).await;
                }
            })
            .await;
            if let Err(e) = outcome {
                panic!("scenario failed: {e}\n{}", logs(dir.path()));
            }
            // Secrets, keys and tokens never reach the logs.
            let all = logs(dir.path());
            assert!(
                !all.contains("BEGIN PRIVATE KEY"),
                "a private key in the logs"
            );
            assert!(!all.contains("client_secret\":"), "a secret in the logs");
        })
    };
    let result = run.await;
    cleanup(&admin, &release, &namespaces).await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}
