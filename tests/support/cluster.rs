//! The real control plane, as the e2e tests use it: the cluster named by
//! `S2S_E2E_KUBECONFIG` (tests/cluster/run starts one on loopback), the real `kubectl` to
//! install what we ship, and the operator installed as a user installs it — the chart's
//! service accounts and RBAC in an operator namespace, `controller` and `token-server` as
//! child processes holding those service accounts' tokens, so they run with exactly the
//! chart's RBAC.
//!
//! The controller watches every namespace, so two e2e tests must never run their operators
//! at once: each test holds [`serial`] for its whole run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount as CoreServiceAccount};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};
use tokio::sync::{Mutex, MutexGuard};

use super::scenario::eventually;
use super::{free_port, http};

const MANAGER: &str = "s2s-e2e";

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One e2e test at a time in this process (see the module docs).
pub async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

/// A short random-enough suffix for names.
pub fn suffix() -> String {
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

/// The cluster of `S2S_E2E_KUBECONFIG`, with cluster-admin rights (used for setup and for
/// acting as a user).
#[derive(Clone)]
pub struct Cluster {
    /// The admin client.
    pub admin: Client,
    /// Its configuration (for kubeconfigs of other identities).
    pub config: Config,
    /// The admin kubeconfig file.
    pub kubeconfig: PathBuf,
    /// kubectl's discovery cache: wiped after CRDs change, or `kubectl get s2s` (a
    /// category) would not see them for a while.
    cache: PathBuf,
}

impl Cluster {
    /// The cluster, or `None` (saying so on stderr) when `S2S_E2E_KUBECONFIG` is unset.
    pub async fn from_env(test: &str) -> Option<Cluster> {
        let path = match std::env::var("S2S_E2E_KUBECONFIG") {
            Ok(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                // Straight to stderr: the test harness captures println!, and this must be seen.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped {test}: S2S_E2E_KUBECONFIG is not set (end-to-end tests need a real \
                     cluster: tests/cluster/run test)"
                );
                return None;
            }
        };
        let kubeconfig = Kubeconfig::read_from(&path).expect("S2S_E2E_KUBECONFIG is a kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("usable kubeconfig");
        let admin = Client::try_from(config.clone()).expect("admin client");
        let cache = std::env::temp_dir().join(format!("s2s-e2e-kubectl-cache-{}", suffix()));
        Some(Cluster {
            admin,
            config,
            kubeconfig: path,
            cache,
        })
    }

    /// `kubectl ARGS` as the admin; panics with its output unless it succeeds.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_as(&self.kubeconfig, args)
            .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
    }

    /// `kubectl ARGS` with another kubeconfig: stdout, or stderr as the error.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
        let out = Command::new(kubectl())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .output()
            .expect("kubectl runs (tests/cluster/run builds it)");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `kubectl apply -f crds/`, then waits until every CRD is Established.
    pub fn apply_crds(&self) {
        let dir = root().join("crds");
        self.kubectl(
            &["apply", "--server-side", "--force-conflicts", "-f"]
                .into_iter()
                .chain([dir.to_str().unwrap()])
                .collect::<Vec<_>>(),
        );
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            dir.to_str().unwrap(),
        ]);
        let _ = std::fs::remove_dir_all(&self.cache);
    }

    /// Creates a namespace labelled `s2s.dev/e2e=true`.
    pub async fn create_namespace(&self, name: &str) {
        let nss: Api<Namespace> = Api::all(self.admin.clone());
        let n: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"s2s.dev/e2e": "true"}}
        }))
        .unwrap();
        nss.create(&PostParams::default(), &n)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    }

    /// Deletes namespaces and waits until they are gone.
    pub async fn delete_namespaces(&self, names: &[String], within: Duration) {
        let nss: Api<Namespace> = Api::all(self.admin.clone());
        for ns in names {
            let _ = nss.delete(ns, &DeleteParams::default()).await;
        }
        for ns in names {
            eventually(within, &format!("namespace {ns} to be deleted"), || async {
                matches!(nss.get_opt(ns).await, Ok(None)).then_some(())
            })
            .await;
        }
    }

    /// A kubeconfig for a Kubernetes service account: the admin's cluster, a fresh token of
    /// that service account.
    pub async fn kubeconfig_for(&self, ns: &str, sa: &str, dir: &Path) -> PathBuf {
        let api: Api<CoreServiceAccount> = Api::namespaced(self.admin.clone(), ns);
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
        let cfg = &self.config;
        let mut cluster = json!({"server": cfg.cluster_url.to_string().trim_end_matches('/')});
        let ca_pem: Option<Vec<u8>> = match (&cfg.root_cert, &cfg.root_cert_file) {
            (Some(ders), _) => Some(
                ders.iter()
                    .map(|der| pem("CERTIFICATE", der))
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
        std::fs::write(&path, serde_json::to_string(&doc).unwrap()).unwrap();
        path
    }

    /// Server-side applies one object given as JSON.
    pub async fn apply_object(&self, obj: &Value) {
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
            Some(ns) => Api::namespaced_with(self.admin.clone(), ns, &ar),
            None => Api::all_with(self.admin.clone(), &ar),
        };
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The kubectl the control plane was built with (tests/cluster/run), else the one on PATH.
pub fn kubectl() -> PathBuf {
    let built = root().join("target/cluster/bin/kubectl");
    if built.exists() {
        built
    } else {
        PathBuf::from("kubectl")
    }
}

/// The chart's templates that need no Helm logic beyond the release name and namespace
/// (tests/chart/check_chart.py checks that this substitution is exactly what Helm renders).
pub fn render(template: &str, release: &str, namespace: &str) -> Vec<Value> {
    let path = root().join("charts/s2s-operator/templates").join(template);
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
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// A child process killed on drop.
pub struct Proc(Child);

impl Proc {
    /// Stops it (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The operator installed as the chart installs it, its processes started and stopped at will.
pub struct Operator {
    /// The cluster.
    pub cluster: Cluster,
    /// The Helm release name the RBAC was rendered with.
    pub release: String,
    /// The operator namespace.
    pub namespace: String,
    /// The issuer URL every process uses (the first token server's address).
    pub issuer: String,
    dir: tempfile::TempDir,
    controller_kubeconfig: PathBuf,
    server_kubeconfig: PathBuf,
    controller: Option<Proc>,
    controller_runs: usize,
    /// `http://ADDR` of the running controller's health and metrics listener.
    pub controller_health: Option<String>,
    servers: Vec<(String, Proc)>,
    /// Appended to every `controller` command line.
    pub controller_args: Vec<String>,
    /// Appended to every `token-server` command line.
    pub server_args: Vec<String>,
}

impl Operator {
    /// Creates the operator namespace and applies the chart's service accounts and RBAC.
    pub async fn install(cluster: &Cluster, id: &str) -> Operator {
        let release = format!("s2s-e2e-{id}");
        let namespace = format!("s2s-e2e-op-{id}");
        cluster.create_namespace(&namespace).await;
        for template in ["serviceaccounts.yaml", "rbac.yaml"] {
            for obj in render(template, &release, &namespace) {
                cluster.apply_object(&obj).await;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let controller_kubeconfig = cluster
            .kubeconfig_for(&namespace, &format!("{release}-controller"), dir.path())
            .await;
        let server_kubeconfig = cluster
            .kubeconfig_for(&namespace, &format!("{release}-token-server"), dir.path())
            .await;
        let issuer = format!("http://127.0.0.1:{}", free_port());
        Operator {
            cluster: cluster.clone(),
            release,
            namespace,
            issuer,
            dir,
            controller_kubeconfig,
            server_kubeconfig,
            controller: None,
            controller_runs: 0,
            controller_health: None,
            servers: vec![],
            controller_args: vec![],
            server_args: vec![],
        }
    }

    /// Serves HTTPS: the issuer becomes `https://127.0.0.1:<port>`, the controller keeps the
    /// operator CA in `<release>-ca` and issues `<release>-token-server-tls` (for 127.0.0.1)
    /// with the given lifetimes, and token servers serve from that Secret.
    pub fn use_operator_tls(&mut self, ca_lifetime: &str, cert_lifetime: &str, propagation: &str) {
        self.issuer = self.issuer.replacen("http://", "https://", 1);
        let r = &self.release;
        self.controller_args.extend(
            [
                "--tls-ca-secret",
                &format!("{r}-ca"),
                "--tls-certificate",
                &format!("{r}-token-server-tls=127.0.0.1,localhost"),
                "--tls-ca-lifetime",
                ca_lifetime,
                "--tls-cert-lifetime",
                cert_lifetime,
                "--tls-propagation",
                propagation,
            ]
            .map(str::to_owned),
        );
        self.server_args
            .extend(["--tls-secret".to_owned(), format!("{r}-token-server-tls")]);
    }

    /// The trust bundle (`ca.crt`) of a serving-certificate Secret the controller issued.
    pub async fn ca_bundle(&self, secret: &str) -> Option<String> {
        let api: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.cluster.admin.clone(), &self.namespace);
        let s = api.get_opt(secret).await.ok()??;
        let b = s.data?.get("ca.crt")?.0.clone();
        String::from_utf8(b).ok()
    }

    /// An HTTP client for the token servers: with operator TLS, one trusting the current
    /// trust bundle.
    pub async fn client(&self) -> Option<reqwest::Client> {
        if !self.issuer.starts_with("https://") {
            return Some(http());
        }
        let bundle = self
            .ca_bundle(&format!("{}-token-server-tls", self.release))
            .await?;
        Some(https_client(&bundle))
    }

    fn spawn(&self, args: &[&str], kubeconfig: &Path, log: &str) -> Proc {
        let out = std::fs::File::create(self.dir.path().join(log)).unwrap();
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

    /// Starts `s2s-operator controller` (a fresh process each time; its log is kept).
    pub fn start_controller(&mut self) {
        assert!(self.controller.is_none(), "one controller at a time");
        self.controller_runs += 1;
        let health = format!("127.0.0.1:{}", free_port());
        let log = format!("controller-{}.log", self.controller_runs);
        let mut args: Vec<String> = [
            "controller",
            "--namespace",
            &self.namespace,
            "--issuer",
            &self.issuer,
            "--health-listen",
            &health,
            // Short Lease timing: a restarted controller takes over at once (the Lease of a
            // killed one is released by nobody).
            "--lease-duration",
            "4s",
            "--lease-renew-deadline",
            "3s",
            "--lease-retry-period",
            "1s",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(self.controller_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = self.spawn(&args, &self.controller_kubeconfig.clone(), &log);
        self.controller = Some(proc);
        self.controller_health = Some(format!("http://{health}"));
    }

    /// Stops the controller (SIGKILL: as a crash or an uninstall would).
    pub fn stop_controller(&mut self) {
        if let Some(mut p) = self.controller.take() {
            p.kill();
        }
    }

    /// Starts a token server; the first listens on the issuer's port. Returns its base URL
    /// once it is ready.
    pub async fn start_token_server(&mut self) -> String {
        let listen = if self.servers.is_empty() {
            self.issuer
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .to_owned()
        } else {
            format!("127.0.0.1:{}", free_port())
        };
        self.start_token_server_at(&listen).await
    }

    /// Starts a token server listening on `listen` (an address of this machine; HTTPS when
    /// the operator's TLS is on). Returns its base URL once it is ready.
    pub async fn start_token_server_at(&mut self, listen: &str) -> String {
        let scheme = if self.issuer.starts_with("https://") {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{listen}");
        let log = format!("token-server-{}.log", self.servers.len() + 1);
        let mut args: Vec<String> = [
            "token-server",
            "--namespace",
            &self.namespace,
            "--issuer",
            &self.issuer,
            "--listen",
            listen,
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(self.server_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = self.spawn(&args, &self.server_kubeconfig.clone(), &log);
        self.servers.push((url.clone(), proc));
        eventually(
            Duration::from_secs(90),
            &format!("{url}/readyz"),
            || async {
                let client = self.client().await?;
                let r = client.get(format!("{url}/readyz")).send().await.ok()?;
                (r.status() == 200).then_some(())
            },
        )
        .await;
        url
    }

    /// Where the processes write their logs.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Every log the processes wrote so far.
    pub fn logs(&self) -> String {
        logs_in(self.dir.path())
    }

    /// Stops every process, checks that no secret or key reached their logs, and removes the
    /// operator namespace and the cluster-wide RBAC.
    pub async fn uninstall(mut self) {
        self.stop_controller();
        for (_, p) in &mut self.servers {
            p.kill();
        }
        let all = self.logs();
        assert!(
            !all.contains("BEGIN PRIVATE KEY"),
            "a private key in the logs"
        );
        assert!(!all.contains("client_secret\":"), "a secret in the logs");
        self.cluster
            .delete_namespaces(&[self.namespace.clone()], Duration::from_secs(120))
            .await;
        for (kind, plural) in [
            ("ClusterRole", "clusterroles"),
            ("ClusterRoleBinding", "clusterrolebindings"),
        ] {
            let ar = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind),
                plural,
            );
            let api: Api<DynamicObject> = Api::all_with(self.cluster.admin.clone(), &ar);
            for who in ["controller", "token-server"] {
                let _ = api
                    .delete(&format!("{}-{who}", self.release), &DeleteParams::default())
                    .await;
            }
        }
    }
}

/// Runs `body` with the operator installed; uninstalls (and shows the logs on failure)
/// whatever happens.
pub async fn with_operator<F, Fut>(cluster: &Cluster, body: F)
where
    F: FnOnce(Operator) -> Fut,
    Fut: std::future::Future<Output = Operator> + Send + 'static,
{
    let op = Operator::install(cluster, &suffix()).await;
    let release = op.release.clone();
    let namespace = op.namespace.clone();
    let outcome = tokio::spawn(body(op)).await;
    match outcome {
        Ok(op) => op.uninstall().await,
        Err(e) => {
            // The Operator went down with the task (its processes with it): clean up by name.
            cluster
                .delete_namespaces(&[namespace], Duration::from_secs(120))
                .await;
            let _ = cluster.kubectl_as(
                &cluster.kubeconfig,
                &[
                    "delete",
                    "clusterrole,clusterrolebinding",
                    &format!("{release}-controller"),
                    &format!("{release}-token-server"),
                    "--ignore-not-found",
                ],
            );
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Panics with the operator's logs appended when `check` panics.
pub async fn or_logs<Fut: std::future::Future<Output = ()>>(logs: PathBuf, check: Fut) {
    use futures::FutureExt;
    if let Err(e) = std::panic::AssertUnwindSafe(check).catch_unwind().await {
        let what = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        panic!("{what}\n{}", logs_in(&logs));
    }
}

/// A TLS client configuration trusting exactly the certificates of `bundle` (PEM), on
/// aws-lc-rs.
pub fn tls_client_config(bundle: &str) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// An HTTP client trusting exactly the certificates of `bundle` (PEM).
pub fn https_client(bundle: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls_client_config(bundle))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Every `*.log` file in `dir`, each under a header line.
pub fn logs_in(dir: &Path) -> String {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            format!(
                "--- {}\n{}",
                p.file_name().unwrap().to_string_lossy(),
                std::fs::read_to_string(p).unwrap_or_default()
            )
        })
        .collect()
}
