//! The walkthrough's programs against the repository's own `examples/`: `dev` runs as a
//! process over those manifests, `examples/client.rs` (a stock `oauth2` client) gets tokens
//! from the credentials folders it writes, and `examples/resource_server.rs` runs in-process
//! and accepts or refuses them per RFC 6750, offline or by introspection. The workload
//! manifests are checked to be Deployments that mount the Secrets the example accounts
//! declare.

mod support;

// The resource server example includes examples/client.rs (for introspection) as its module
// `client`; a second `#[path]` include would compile the same file twice.
#[allow(dead_code)]
#[path = "../examples/resource_server.rs"]
mod resource_server;

use resource_server::client;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodSpec;
use serde_json::Value;
use support::{DevServer, http, jwks, verify_access_token};

const ORDERS: &str = "https://orders.example.com";
const ACME_DATA: &str = "https://data.example.com/tenants/acme";

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// A token from the client example for the account whose Secret is `namespace/secret`.
async fn token(s: &DevServer, namespace: &str, secret: &str, aud: &str, scope: &str) -> String {
    use oauth2::TokenResponse;
    let dir = s.state_dir.join(namespace).join(secret);
    let creds = client::Credentials::read(&dir).unwrap();
    let resp = client::request_token(&creds, aud, Some(scope))
        .await
        .unwrap_or_else(|e| panic!("{namespace}/{secret}: {e}"));
    let scopes: Vec<String> = resp
        .scopes()
        .map(|s| s.iter().map(|s| s.to_string()).collect())
        .unwrap_or_default();
    assert_eq!(scopes, [scope], "{namespace}/{secret}");
    resp.access_token().secret().clone()
}

/// Starts the resource server example on a free port; returns its `/orders` URL.
async fn resource_server(issuer: &str, scope: &str, introspect: Option<&Path>) -> String {
    let mut args = vec![
        "--issuer".to_owned(),
        issuer.to_owned(),
        "--audience".to_owned(),
        ORDERS.to_owned(),
        "--scope".to_owned(),
        scope.to_owned(),
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
    ];
    if let Some(dir) = introspect {
        args.push("--introspect".to_owned());
        args.push("--client-dir".to_owned());
        args.push(dir.display().to_string());
    }
    let opts = resource_server::Options::parse(args).unwrap();
    let listener = tokio::net::TcpListener::bind(opts.listen).await.unwrap();
    let url = format!("http://{}/orders", listener.local_addr().unwrap());
    tokio::spawn(async move { resource_server::serve(opts, listener).await.unwrap() });
    url
}

/// `GET /orders`, with a bearer token if given: status, `WWW-Authenticate`, JSON body.
async fn get_orders(url: &str, token: Option<&str>) -> (u16, String, Value) {
    let mut req = http().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, challenge, resp.json().await.unwrap_or(Value::Null))
}

/// RFC 7009 revocation, authenticated with a client-secret credentials folder.
async fn revoke(s: &DevServer, dir: &Path, token: &str) {
    let id = std::fs::read_to_string(dir.join("client_id")).unwrap();
    let secret = std::fs::read_to_string(dir.join("client_secret")).unwrap();
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("token_type_hint", "access_token")
        .finish();
    let resp = http()
        .post(format!("{}/oauth2/revoke", s.issuer))
        .basic_auth(id.trim(), Some(secret.trim()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "revocation accepted");
}

#[tokio::test]
async fn walkthrough_client_and_resource_server() {
    let state = tempfile::tempdir().unwrap();
    let s = DevServer::start(&examples_dir(), state.path(), &[]);
    let billing_dir = s.state_dir.join("billing/billing-worker-credentials");
    let reporting_dir = s.state_dir.join("reporting/report-generator-key");
    let keys = jwks(&s.issuer).await;

    // The client example, both client authentication methods; the tokens are good ones.
    let billing = token(
        &s,
        "billing",
        "billing-worker-credentials",
        ORDERS,
        "orders:read",
    )
    .await;
    let report = token(
        &s,
        "reporting",
        "report-generator-key",
        ORDERS,
        "orders:read",
    )
    .await;
    for t in [&billing, &report] {
        verify_access_token(t, &keys, &s.issuer, ORDERS);
    }
    let creds = client::Credentials::read(&reporting_dir).unwrap();
    assert!(matches!(
        creds.credential,
        client::Credential::PrivateKey { ref algorithm, .. } if algorithm == "ES256"
    ));
    let shown = format!(
        "{:?}{:?}",
        creds,
        client::Credentials::read(&billing_dir).unwrap()
    );
    let secret = std::fs::read_to_string(billing_dir.join("client_secret")).unwrap();
    assert!(!shown.contains(secret.trim()), "Debug redacts: {shown}");
    assert!(!shown.contains("PRIVATE KEY"), "Debug redacts: {shown}");

    // Offline verification.
    let offline = resource_server(&s.issuer, "orders:read", None).await;
    for t in [&billing, &report] {
        let (status, _, body) = get_orders(&offline, Some(t)).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["orders"].is_array(), "{body}");
    }
    let (status, _, body) = get_orders(&offline, Some(&report)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["caller"]["client_id"],
        std::fs::read_to_string(reporting_dir.join("client_id"))
            .unwrap()
            .trim()
    );

    // No token: a bare challenge (RFC 6750 §3.1: no error code).
    let (status, challenge, _) = get_orders(&offline, None).await;
    assert_eq!(status, 401);
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(!challenge.contains("error="), "{challenge}");

    // A good token for another audience (kpi-calculator's, for ACME's data API).
    let other = token(
        &s,
        "analytics",
        "kpi-calculator-credentials",
        ACME_DATA,
        "data:read",
    )
    .await;
    let (status, challenge, body) = get_orders(&offline, Some(&other)).await;
    assert_eq!(status, 401, "{body}");
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");

    // Not a token at all, and a token with its signature broken.
    // (A character in the middle of the signature: the last one may only hold padding bits.)
    let mut tampered = billing.clone().into_bytes();
    let i = tampered.len() - 10;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in ["not-a-jwt", tampered.as_str()] {
        let (status, challenge, _) = get_orders(&offline, Some(bad)).await;
        assert_eq!(status, 401, "{bad}");
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    }

    // A valid token for the API without the required scope.
    let write_only = token(
        &s,
        "billing",
        "billing-worker-credentials",
        ORDERS,
        "orders:write",
    )
    .await;
    let (status, challenge, body) = get_orders(&offline, Some(&write_only)).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("orders:read"),
        "{challenge}"
    );
    assert_eq!(body["error"], "insufficient_scope");

    // Introspection, authenticated as billing-worker (client_secret_basic): its token is
    // active until it revokes it. Offline verification cannot know about the revocation.
    let introspecting = resource_server(&s.issuer, "orders:read", Some(&billing_dir)).await;
    let fresh = token(
        &s,
        "billing",
        "billing-worker-credentials",
        ORDERS,
        "orders:read",
    )
    .await;
    let (status, _, body) = get_orders(&introspecting, Some(&fresh)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = get_orders(&introspecting, Some(&write_only)).await;
    assert_eq!(status, 403, "{body}");
    revoke(&s, &billing_dir, &fresh).await;
    let (status, challenge, body) = get_orders(&introspecting, Some(&fresh)).await;
    assert_eq!(status, 401, "{body}");
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    let (status, _, _) = get_orders(&offline, Some(&fresh)).await;
    assert_eq!(status, 200, "offline verification does not see revocations");

    // Introspection authenticated with a private key (private_key_jwt): report-generator
    // learns about its own tokens, not about billing-worker's.
    let as_reporter = resource_server(&s.issuer, "orders:read", Some(&reporting_dir)).await;
    let (status, _, body) = get_orders(&as_reporter, Some(&report)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = get_orders(&as_reporter, Some(&billing)).await;
    assert_eq!(status, 401);
}

#[test]
fn resource_server_options() {
    let parse = |args: &[&str]| resource_server::Options::parse(args.iter().map(|s| s.to_string()));
    let o = parse(&["--issuer", "http://x/", "--audience", "a", "--scope", "s"]).unwrap();
    assert_eq!(o.issuer, "http://x");
    assert_eq!(o.listen.to_string(), "127.0.0.1:8090");
    assert!(o.introspect.is_none());
    for bad in [
        &["--audience", "a", "--scope", "s"][..],
        &[
            "--issuer",
            "i",
            "--audience",
            "a",
            "--scope",
            "s",
            "--introspect",
        ],
        &[
            "--issuer",
            "i",
            "--audience",
            "a",
            "--scope",
            "s",
            "--client-dir",
            "d",
        ],
        &[
            "--issuer",
            "i",
            "--audience",
            "a",
            "--scope",
            "s",
            "--listen",
            "nowhere",
        ],
        &[
            "--issuer",
            "i",
            "--audience",
            "a",
            "--scope",
            "s",
            "--verbose",
        ],
        &["--issuer"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
}

/// `(namespace, secretName, is a client secret)` of every credentials Secret an example
/// ServiceAccount declares.
fn declared_secrets() -> BTreeSet<(String, String, bool)> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if v["apiVersion"] != "s2s.dev/v1alpha1" || v["kind"] != "ServiceAccount" {
                continue;
            }
            let ns = v["metadata"]["namespace"].as_str().unwrap().to_owned();
            let auth = &v["spec"]["authentication"];
            for (method, client_secret) in [("clientSecret", true), ("privateKeyJwt", false)] {
                if let Some(name) = auth[method]["secretName"].as_str() {
                    out.insert((ns.clone(), name.to_owned(), client_secret));
                }
            }
        }
    }
    out
}

fn deployment(file: &str) -> Deployment {
    let text = std::fs::read_to_string(examples_dir().join(file)).unwrap();
    let docs: Vec<Deployment> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
        .collect();
    assert_eq!(docs.len(), 1, "{file}: one Deployment");
    let d = docs.into_iter().next().unwrap();
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["apiVersion"], "apps/v1", "{file}");
    assert_eq!(json["kind"], "Deployment", "{file}");
    d
}

fn pod(d: &Deployment) -> PodSpec {
    d.spec.clone().unwrap().template.spec.unwrap()
}

/// The pod and each container run hardened.
fn assert_hardened(file: &str, p: &PodSpec) {
    assert_eq!(p.automount_service_account_token, Some(false), "{file}");
    let sc = p.security_context.clone().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true), "{file}");
    assert_eq!(
        sc.seccomp_profile.unwrap().type_,
        "RuntimeDefault",
        "{file}"
    );
    for c in &p.containers {
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{file}");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{file}");
        assert_eq!(
            sc.capabilities.unwrap().drop.unwrap(),
            ["ALL"],
            "{file}: {}",
            c.name
        );
    }
}

#[test]
fn workload_examples_mount_the_declared_secret() {
    let declared = declared_secrets();
    let client_secret = |ns: &str, name: &str| {
        assert!(
            declared.contains(&(ns.to_owned(), name.to_owned(), true)),
            "{ns}/{name} is not a client-secret Secret an example account declares: {declared:?}"
        );
    };

    let file = "workload-files.yaml";
    let d = deployment(file);
    let ns = d.metadata.namespace.clone().unwrap();
    let p = pod(&d);
    assert_hardened(file, &p);
    let volume = p
        .volumes
        .unwrap()
        .into_iter()
        .find_map(|v| v.secret)
        .expect("a Secret volume");
    client_secret(&ns, volume.secret_name.as_deref().unwrap());
    assert_eq!(volume.default_mode, Some(0o440), "{file}");
    let app = &p.containers[0];
    let mount = app.volume_mounts.clone().unwrap().remove(0);
    assert_eq!(mount.mount_path, "/var/run/s2s/credentials");
    assert_eq!(mount.read_only, Some(true));
    // The files the comment tells the application to read are ones the Secret has.
    let text = std::fs::read_to_string(examples_dir().join(file)).unwrap();
    for key in ["client_id", "client_secret", "token_url"] {
        assert!(
            text.contains(&format!("/var/run/s2s/credentials/{key}")),
            "{file}: {key}"
        );
    }

    let file = "workload-envfrom.yaml";
    let d = deployment(file);
    let ns = d.metadata.namespace.clone().unwrap();
    let p = pod(&d);
    assert_hardened(file, &p);
    assert!(p.volumes.is_none(), "{file}: no volume");
    let env_from = p.containers[0].env_from.clone().unwrap();
    let secret_ref = env_from[0].secret_ref.clone().unwrap();
    client_secret(&ns, &secret_ref.name);
    let text = std::fs::read_to_string(examples_dir().join(file)).unwrap();
    assert!(text.contains("restart"), "{file} explains rotations");
}

/// The injected example names an example account, and the webhook's decision for its Pod
/// template is an injection of that account's Secret.
#[test]
fn the_injected_workload_example_gets_the_agent_for_its_account() {
    let file = "workload-injected.yaml";
    let d = deployment(file);
    let ns = d.metadata.namespace.clone().unwrap();
    assert_hardened(file, &pod(&d));
    let template = serde_json::to_value(d.spec.unwrap().template).unwrap();
    let name = template["metadata"]["annotations"]["s2s.dev/inject"]
        .as_str()
        .unwrap()
        .to_owned();
    let text =
        std::fs::read_to_string(examples_dir().join("serviceaccount-client-secret.yaml")).unwrap();
    let account: s2s_operator::api::ServiceAccount = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .find(|a: &s2s_operator::api::ServiceAccount| {
            a.metadata.name.as_deref() == Some(name.as_str())
                && a.metadata.namespace.as_deref() == Some(ns.as_str())
        })
        .expect("the annotation names an example account");
    let config = s2s_operator::inject::Config::new("s2s-operator:test", "https://x/oauth2/token");
    match s2s_operator::inject::mutate(&template, &ns, Some(&account), &[], &config) {
        s2s_operator::inject::Decision::Patch(ops, _) => {
            let text = serde_json::to_string(&ops).unwrap();
            assert!(text.contains("billing-worker-credentials"), "{text}");
            assert!(
                text.contains("\"--audience\",\"https://orders.example.com\""),
                "{text}"
            );
        }
        other => panic!("{file}: {other:?}"),
    }
}
