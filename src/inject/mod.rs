//! Sidecar injection: a Pod whose annotations carry `s2s.dev/inject: <ServiceAccount>` gets
//! the `agent` as a native sidecar (an init container with `restartPolicy: Always`: it starts
//! before the application, and a Job's Pod completes when its application does).
//!
//! Data flow: the admission request's Pod (raw JSON, so nothing the API knows and we do not
//! is lost) and the account from the token server's reflector store → [`mutate`], a pure
//! function → a JSON patch of explicit `add` operations (never a diff of re-serialized
//! objects) or a refusal with a message that says what to do. [`server`] is the HTTP side.
//!
//! What an injected Pod gets:
//! - init container `s2s-agent` (first, so other init containers can ask for tokens too),
//!   the operator's image, the chart's hardened security context, a startup probe
//!   (`s2s-operator probe`, an exec probe: the agent listens on the Pod's loopback, which
//!   the kubelet cannot reach) that passes only once the agent has a token for the default
//!   audience, so the application never starts before it;
//! - the account's credentials Secret mounted read-only into the agent alone, or for a
//!   federated account a projected service-account token with the audience its
//!   `kubernetes` TrustedIssuer expects;
//! - an in-memory volume for token files, mounted read-only into every app container;
//! - `S2S_AGENT_URL` (and `S2S_TOKEN_ENDPOINT`) in every app container;
//! - annotation `s2s.dev/injected: <account>`: a Pod that has it, or has a container named
//!   `s2s-agent`, is never injected again.
//!
//! A Pod naming an account that does not exist, or one with nothing the agent can
//! authenticate with, is refused (the ReplicaSet controller retries, and its FailedCreate
//! Event carries our message); an account that exists but is not Ready (yet) or is disabled
//! is injected with an admission warning, since its Secret may simply not be written yet —
//! the kubelet waits for it.

pub mod server;

use serde_json::{Value, json};

use crate::api::{ServiceAccount, TrustedIssuer};
use crate::token::registry::wildcard_match;

/// The annotation that asks for injection: the s2s.dev ServiceAccount's name.
pub const INJECT: &str = "s2s.dev/inject";
/// Default audience of `GET /v1/token` and of the startup probe.
pub const AUDIENCE: &str = "s2s.dev/inject-audience";
/// Default scopes (space-separated).
pub const SCOPES: &str = "s2s.dev/inject-scopes";
/// The agent's loopback port.
pub const PORT: &str = "s2s.dev/inject-port";
/// Token files to keep fresh: space-separated `NAME=audience[,scope...]`.
pub const TOKENS: &str = "s2s.dev/inject-tokens";
/// The agent's resources.
pub const CPU_REQUEST: &str = "s2s.dev/agent-cpu-request";
/// The agent's resources.
pub const MEMORY_REQUEST: &str = "s2s.dev/agent-memory-request";
/// The agent's resources.
pub const CPU_LIMIT: &str = "s2s.dev/agent-cpu-limit";
/// The agent's resources.
pub const MEMORY_LIMIT: &str = "s2s.dev/agent-memory-limit";
/// Set on an injected Pod (the account's name).
pub const INJECTED: &str = "s2s.dev/injected";

/// The agent's container name.
pub const CONTAINER: &str = "s2s-agent";
/// Volume names the injection adds.
pub const CREDENTIALS_VOLUME: &str = "s2s-credentials";
/// Volume names the injection adds.
pub const TOKENS_VOLUME: &str = "s2s-tokens";
/// Volume names the injection adds.
pub const PROJECTED_VOLUME: &str = "s2s-token";
/// Where the credentials are mounted in the agent.
pub const CREDENTIALS_PATH: &str = "/var/run/s2s/credentials";
/// Where token files are, in the agent and the app containers.
pub const TOKENS_PATH: &str = "/var/run/s2s/tokens";
/// Where the projected service-account token is mounted (the agent's default).
pub const PROJECTED_DIR: &str = "/var/run/secrets/tokens";

/// What the injection needs besides the Pod and the account.
#[derive(Clone, Debug)]
pub struct Config {
    /// The agent's image (the operator's own).
    pub image: String,
    /// Its pull policy (`IfNotPresent`, …); unset: the cluster's default.
    pub image_pull_policy: Option<String>,
    /// The token endpoint, for federated accounts (others read it from their Secret).
    pub token_url: String,
    /// Default port of the agent.
    pub port: u16,
    /// Default resources: cpu request, memory request, memory limit.
    pub cpu_request: String,
    /// Default resources.
    pub memory_request: String,
    /// Default resources.
    pub memory_limit: String,
    /// The token server's trust bundle (PEM), given to a federated account's agent as
    /// `S2S_AGENT_CA` (an account with a Secret finds it there as `ca.crt`).
    pub ca_bundle: Option<String>,
}

impl Config {
    /// Defaults for everything but the image and token URL.
    pub fn new(image: impl Into<String>, token_url: impl Into<String>) -> Self {
        Config {
            image: image.into(),
            image_pull_policy: None,
            token_url: token_url.into(),
            port: 9090,
            cpu_request: "10m".into(),
            memory_request: "16Mi".into(),
            memory_limit: "64Mi".into(),
            ca_bundle: None,
        }
    }
}

/// The outcome for one Pod.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Admit unchanged (not asked for, or already injected).
    Unchanged,
    /// Admit with these JSON-patch operations, and warnings for the client.
    Patch(Vec<Value>, Vec<String>),
    /// Refuse, with what to do.
    Deny(String),
}

/// Decides for `pod` (the admission request's object) in `namespace`. `account` is the
/// named account if it exists; `issuers` are the TrustedIssuers of the cluster (for a
/// federated account's projected-token audience).
pub fn mutate(
    pod: &Value,
    namespace: &str,
    account: Option<&ServiceAccount>,
    issuers: &[&TrustedIssuer],
    config: &Config,
) -> Decision {
    let annotations = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    let Some(name) = annotations
        .and_then(|a| a.get(INJECT))
        .and_then(Value::as_str)
    else {
        return Decision::Unchanged;
    };
    let ann = |k: &str| {
        annotations
            .and_then(|a| a.get(k))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    if ann(INJECTED).is_some() || has_container(pod, CONTAINER) {
        return Decision::Unchanged;
    }
    let name = name.trim();
    let Some(account) = account else {
        return Decision::Deny(format!(
            "{INJECT}: no s2s.dev ServiceAccount {namespace}/{name}; create it first (kubectl get s2ssa -n {namespace}), or fix the annotation"
        ));
    };
    let mut warnings = vec![];
    let port = match ann(PORT).map(str::parse::<u16>) {
        None => config.port,
        Some(Ok(p)) if p > 0 => p,
        Some(_) => return Decision::Deny(format!("{PORT}: not a port number (1-65535)")),
    };
    if uses_port(pod, port) {
        return Decision::Deny(format!(
            "{PORT}: port {port} is taken by a container of this Pod; pick another with the {PORT} annotation"
        ));
    }
    let mut resources = json!({
        "requests": {"cpu": config.cpu_request, "memory": config.memory_request},
        "limits": {"memory": config.memory_limit},
    });
    for (key, path) in [
        (CPU_REQUEST, "/requests/cpu"),
        (MEMORY_REQUEST, "/requests/memory"),
        (CPU_LIMIT, "/limits/cpu"),
        (MEMORY_LIMIT, "/limits/memory"),
    ] {
        if let Some(q) = ann(key) {
            if !is_quantity(q) {
                return Decision::Deny(format!(
                    "{key}: {q:?} is not a Kubernetes quantity (e.g. 10m, 64Mi)"
                ));
            }
            let (group, field) = path[1..].split_once('/').expect("two parts");
            resources[group][field] = json!(q);
        }
    }

    let spec = &account.spec;
    let auth = spec.authentication.as_ref();
    let secret = auth
        .and_then(|a| a.private_key_jwt.as_ref().map(|p| p.secret_name.clone()))
        .or_else(|| auth.and_then(|a| a.client_secret.as_ref().map(|c| c.secret_name.clone())));
    let mut args: Vec<String> = vec!["agent".into()];
    let mut volumes = vec![];
    let mut agent_mounts = vec![];
    let mut agent_env = vec![];
    if let Some(secret) = secret {
        args.extend(["--credentials".to_owned(), CREDENTIALS_PATH.to_owned()]);
        volumes.push(json!({
            "name": CREDENTIALS_VOLUME,
            // Only the agent mounts it; 0444 because without an fsGroup the files are root's.
            "secret": {"secretName": secret, "defaultMode": 0o444},
        }));
        agent_mounts.push(
            json!({"name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_PATH, "readOnly": true}),
        );
    } else if let Some(feds) = auth.and_then(|a| a.federated.as_ref()) {
        let sa = pod
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        let subject = format!("system:serviceaccount:{namespace}:{sa}");
        let audience = feds.iter().find_map(|f| {
            let ns = f.issuer_ref.namespace.as_deref().unwrap_or(namespace);
            let issuer = issuers.iter().find(|i| {
                i.spec.kubernetes.is_some()
                    && i.metadata.namespace.as_deref() == Some(ns)
                    && i.metadata.name.as_deref() == Some(f.issuer_ref.name.as_str())
            })?;
            if !wildcard_match(&f.subject, &subject) {
                return None;
            }
            f.audience
                .clone()
                .or_else(|| issuer.spec.audiences.first().cloned())
        });
        let Some(audience) = audience else {
            return Decision::Deny(format!(
                "{INJECT}: ServiceAccount {namespace}/{name} is federated, but none of its identities accepts this Pod's Kubernetes service account ({subject}) through a TrustedIssuer with `kubernetes: {{}}`; add one, or run the Pod as a matching service account"
            ));
        };
        args.extend([
            "--projected-token".to_owned(),
            format!("{PROJECTED_DIR}/{PROJECTED_VOLUME}"),
            "--token-url".to_owned(),
            config.token_url.clone(),
        ]);
        volumes.push(json!({
            "name": PROJECTED_VOLUME,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": audience, "expirationSeconds": 3600, "path": PROJECTED_VOLUME,
            }}]},
        }));
        agent_mounts
            .push(json!({"name": PROJECTED_VOLUME, "mountPath": PROJECTED_DIR, "readOnly": true}));
        // A CA rotation reaches this Pod when it is re-created: the operator CA's overlap
        // (a third of its life, four months by default) is the time to roll it.
        if let Some(ca) = &config.ca_bundle {
            agent_env.push(json!({"name": "S2S_AGENT_CA", "value": ca}));
        }
    } else {
        return Decision::Deny(format!(
            "{INJECT}: ServiceAccount {namespace}/{name} has no clientSecret, privateKeyJwt or federated authentication, so the agent has nothing to authenticate with"
        ));
    }
    if spec.disabled {
        warnings.push(format!(
            "s2s.dev ServiceAccount {namespace}/{name} is disabled: the agent will get no tokens"
        ));
    } else if !account.status.as_ref().is_some_and(|s| {
        use crate::k8s::conditions::HasConditions;
        s.is_ready(account.metadata.generation)
    }) {
        warnings.push(format!(
            "s2s.dev ServiceAccount {namespace}/{name} is not Ready yet: the Pod waits for its credentials (kubectl s2s status serviceaccount/{name} -n {namespace})"
        ));
    }
    args.extend([
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--token-dir".to_owned(),
        TOKENS_PATH.to_owned(),
    ]);
    let audience = ann(AUDIENCE)
        .map(str::to_owned)
        .or_else(|| spec.audiences.first().cloned());
    if let Some(a) = &audience {
        args.extend(["--audience".to_owned(), a.clone()]);
    }
    for s in ann(SCOPES).unwrap_or_default().split_whitespace() {
        args.extend(["--scope".to_owned(), s.to_owned()]);
    }
    for t in ann(TOKENS).unwrap_or_default().split_whitespace() {
        if t.parse::<crate::agent::TokenSpec>().is_err() {
            return Decision::Deny(format!("{TOKENS}: {t:?} is not NAME=audience[,scope...]"));
        }
        args.extend(["--token".to_owned(), t.to_owned()]);
    }
    for v in [CREDENTIALS_VOLUME, TOKENS_VOLUME, PROJECTED_VOLUME] {
        if has_volume(pod, v) {
            return Decision::Deny(format!(
                "{INJECT}: the Pod already has a volume named {v}; rename it"
            ));
        }
    }
    volumes
        .push(json!({"name": TOKENS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}));
    agent_mounts.push(json!({"name": TOKENS_VOLUME, "mountPath": TOKENS_PATH}));

    let url = format!("http://127.0.0.1:{port}");
    let mut agent = json!({
        "name": CONTAINER,
        "image": config.image,
        "command": ["/s2s-operator"],
        "args": args,
        "restartPolicy": "Always",
        "startupProbe": {
            "exec": {"command": ["/s2s-operator", "probe", format!("{url}/v1/ready")]},
            "periodSeconds": 1,
            "timeoutSeconds": 5,
            "failureThreshold": 300,
        },
        "resources": resources,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": agent_mounts,
    });
    if !agent_env.is_empty() {
        agent["env"] = json!(agent_env);
    }
    if let Some(p) = &config.image_pull_policy {
        agent["imagePullPolicy"] = json!(p);
    }

    let mut ops = vec![json!({
        "op": "add",
        "path": format!("/metadata/annotations/{}", escape(INJECTED)),
        "value": name,
    })];
    match pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
    {
        Some(_) => ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": agent})),
        None => ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [agent]})),
    }
    add_all(
        &mut ops,
        pod.get("spec").is_some_and(|s| is_array(s, "volumes")),
        "/spec/volumes",
        volumes,
    );
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, c) in containers.iter().enumerate() {
        let env: Vec<Value> = [
            ("S2S_AGENT_URL", url.clone()),
            ("S2S_TOKEN_ENDPOINT", format!("{url}/v1/token")),
        ]
        .into_iter()
        .filter(|(n, _)| !has_named(c, "env", n))
        .map(|(n, v)| json!({"name": n, "value": v}))
        .collect();
        add_all(
            &mut ops,
            is_array(c, "env"),
            &format!("/spec/containers/{i}/env"),
            env,
        );
        let mounted = c
            .get("volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|m| {
                m.iter()
                    .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKENS_PATH))
            });
        if !mounted {
            let mount = json!({"name": TOKENS_VOLUME, "mountPath": TOKENS_PATH, "readOnly": true});
            add_all(
                &mut ops,
                is_array(c, "volumeMounts"),
                &format!("/spec/containers/{i}/volumeMounts"),
                vec![mount],
            );
        }
    }
    Decision::Patch(ops, warnings)
}

/// `add` operations appending `items` to the array at `path`, or creating it with them when
/// it does not `exist`.
fn add_all(ops: &mut Vec<Value>, exists: bool, path: &str, items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    if exists {
        for item in items {
            ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": item}));
        }
    } else {
        ops.push(json!({"op": "add", "path": path, "value": items}));
    }
}

fn is_array(obj: &Value, field: &str) -> bool {
    obj.get(field).is_some_and(Value::is_array)
}

/// JSON-pointer escaping of one segment (RFC 6901).
fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn has_named(obj: &Value, field: &str, name: &str) -> bool {
    obj.get(field).and_then(Value::as_array).is_some_and(|a| {
        a.iter()
            .any(|x| x.get("name").and_then(Value::as_str) == Some(name))
    })
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["/spec/containers", "/spec/initContainers"]
        .into_iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
        .flatten()
}

fn has_container(pod: &Value, name: &str) -> bool {
    containers(pod).any(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

fn has_volume(pod: &Value, name: &str) -> bool {
    pod.pointer("/spec")
        .is_some_and(|s| has_named(s, "volumes", name))
}

fn uses_port(pod: &Value, port: u16) -> bool {
    containers(pod).any(|c| {
        c.get("ports").and_then(Value::as_array).is_some_and(|ps| {
            ps.iter()
                .any(|p| p.get("containerPort").and_then(Value::as_u64) == Some(u64::from(port)))
        })
    })
}

/// A Kubernetes quantity as people write them: digits, an optional fraction, an optional
/// suffix (`m`, `k`, `M`, `G`, `T`, `Ki`, `Mi`, `Gi`, `Ti`).
fn is_quantity(q: &str) -> bool {
    let digits_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(digits_end);
    let num_ok = !num.is_empty()
        && num.matches('.').count() <= 1
        && !num.starts_with('.')
        && !num.ends_with('.');
    num_ok && ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix)
}

#[cfg(test)]
mod tests;
