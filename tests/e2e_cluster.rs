//! End to end on a real control plane (tests/cluster/run starts one on loopback and sets
//! `S2S_E2E_KUBECONFIG`); each test prints a skip line when it is unset.
//!
//! Installed as a user installs it: the real `kubectl` applies `crds/` and `examples/` (so
//! YAML is read as Kubernetes reads it), the chart's service accounts and RBAC are applied as
//! Helm renders them, and `controller` and `token-server` run as child processes with those
//! service accounts' tokens (tests/support/cluster.rs). Each test works in namespaces
//! labelled `s2s.dev/e2e=true` and deletes them at the end, pass or fail.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount as CoreServiceAccount};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use s2s_operator::api::{ServiceAccount, TokenGrant, TrustedIssuer};
use serde_json::{Value, json};
use support::cluster::{Cluster, Operator, or_logs, root, serial, suffix, with_operator};
use support::scenario::{self, Waits, client_credentials, eventually, strings};
use support::{http, jwks, verify_access_token};

const WAITS: Waits = Waits {
    converge: Duration::from_secs(60),
    gc: Duration::from_secs(120),
};

#[tokio::test]
async fn e2e_crds_as_stored_equal_crdgen() {
    let Some(cluster) = Cluster::from_env("e2e_crds_as_stored_equal_crdgen").await else {
        return;
    };
    let _serial = serial().await;
    cluster.apply_crds();
    for crd in s2s_operator::api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        let stored: Value =
            serde_json::from_str(&cluster.kubectl(&["get", "crd", &name, "-o", "json"])).unwrap();
        let mut want = serde_json::to_value(&crd.spec).unwrap();
        let mut got = stored["spec"].clone();
        // The apiserver fills in the default conversion strategy and the list kind.
        for spec in [&mut want, &mut got] {
            spec.as_object_mut().unwrap().remove("conversion");
        }
        if want["names"].get("listKind").is_none() {
            want["names"]["listKind"] = json!(format!("{}List", crd.spec.names.kind));
        }
        assert!(
            got == want,
            "CRD {name} as the apiserver stores it after `kubectl apply -f crds/` differs from \
             crdgen: {}",
            first_difference(&got, &want, String::new())
        );
    }
    // Every printer column reads well in `kubectl get`: no `<invalid>` for future times.
    let out = cluster.kubectl(&["get", "s2s", "-A"]);
    assert!(!out.contains("<invalid>"), "{out}");
}

fn first_difference(a: &Value, b: &Value, path: String) -> String {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let (l, r) = (x.get(k), y.get(k));
                if l != r {
                    return match (l, r) {
                        (Some(l), Some(r)) => first_difference(l, r, format!("{path}.{k}")),
                        _ => format!("{path}.{k}: {l:?} vs {r:?}"),
                    };
                }
            }
            path
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                if l != r {
                    return first_difference(l, r, format!("{path}[{i}]"));
                }
            }
            path
        }
        _ => format!("{path}: {a} vs {b}"),
    }
}

/// The namespaces `examples/` uses.
const EXAMPLE_NAMESPACES: &[&str] = &[
    "orders",
    "billing",
    "reporting",
    "shipping",
    "analytics",
    "tenant-acme",
];

fn example_namespaces() -> Vec<String> {
    EXAMPLE_NAMESPACES.iter().map(|s| (*s).to_owned()).collect()
}

/// `kubectl apply -f examples/`.
fn apply_examples(cluster: &Cluster) {
    let dir = root().join("examples");
    cluster.kubectl(&["apply", "-f", dir.to_str().unwrap()]);
}

/// `kubectl apply -f` of the example files holding TokenGrants.
fn apply_example_grants(cluster: &Cluster) {
    for f in [
        "tokengrant-delegation.yaml",
        "tokengrant-output.yaml",
        "tokengrant-plain.yaml",
        "tokengrant-tenant.yaml",
    ] {
        let path = root().join("examples").join(f);
        cluster.kubectl(&["apply", "-f", path.to_str().unwrap()]);
    }
}

/// The Ready condition's (status, reason) of a status with conditions, once it describes the
/// object's generation.
fn ready_of(obj: &Value) -> Option<(String, String)> {
    let status = obj.get("status")?;
    if status.get("observedGeneration") != obj["metadata"].get("generation") {
        return None;
    }
    let c = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
    ))
}

/// Every object of the three kinds in the example namespaces with its readiness, as
/// `kubectl get` shows them.
fn example_readiness(cluster: &Cluster) -> BTreeMap<String, Option<(String, String)>> {
    let list: Value = serde_json::from_str(&cluster.kubectl(&["get", "s2s", "-A", "-o", "json"]))
        .expect("kubectl get s2s -A -o json");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| {
            EXAMPLE_NAMESPACES.contains(&o["metadata"]["namespace"].as_str().unwrap_or_default())
        })
        .map(|o| {
            (
                format!(
                    "{}/{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["namespace"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                ),
                ready_of(o),
            )
        })
        .collect()
}

/// What every example object's Ready condition must settle on: Ready, except the two
/// TrustedIssuers whose IdPs live on the internet, which this loopback-only cluster cannot
/// reach (they say so rather than pretend).
fn expected_readiness(key: &str) -> (&'static str, &'static str) {
    match key {
        "TrustedIssuer/analytics/azure-analytics" | "TrustedIssuer/orders/partner-idp" => {
            ("False", "FetchFailed")
        }
        _ => ("True", "Ready"),
    }
}

async fn wait_examples_settled(cluster: &Cluster, what: &str) {
    let within = WAITS.converge + Duration::from_secs(30);
    let deadline = std::time::Instant::now() + within;
    loop {
        let seen = example_readiness(cluster);
        let wrong: Vec<String> = seen
            .iter()
            .filter(|(k, v)| {
                let (s, r) = expected_readiness(k);
                v.as_ref().map(|(a, b)| (a.as_str(), b.as_str())) != Some((s, r))
            })
            .map(|(k, v)| format!("{k}: {v:?} (want {:?})", expected_readiness(k)))
            .collect();
        if seen.len() >= 16 && wrong.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not settled after {within:?} ({} objects):\n{}",
            seen.len(),
            wrong.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The credentials Secret of an example account.
async fn secret(cluster: &Cluster, ns: &str, name: &str) -> BTreeMap<String, String> {
    let api: Api<Secret> = Api::namespaced(cluster.admin.clone(), ns);
    strings(&api.get(name).await.unwrap())
}

async fn post_form(url: &str, basic: Option<(&str, &str)>, form: &[(&str, &str)]) -> (u16, Value) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut req = http()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `active` of a token at a token server, asked by the client with a secret.
async fn active(server: &str, creds: &BTreeMap<String, String>, token: &str) -> Option<bool> {
    let (status, v) = post_form(
        &format!("{server}/oauth2/introspect"),
        Some((&creds["client_id"], &creds["client_secret"])),
        &[("token", token)],
    )
    .await;
    (status == 200).then(|| v["active"].as_bool()).flatten()
}

/// client_credentials authenticated by a JWT client assertion (`private_key_jwt`, or a
/// federated token) for the orders audience: the access token, if the server gave one.
async fn assertion_grant(token_url: &str, assertion: &str) -> Option<String> {
    let (status, v) = post_form(
        token_url,
        None,
        &[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("audience", ORDERS),
        ],
    )
    .await;
    (status == 200).then(|| v["access_token"].as_str().map(str::to_owned))?
}

const ORDERS: &str = "https://orders.example.com";

/// A token for each credential type of the examples, verified with a third-party library.
async fn tokens_for_every_credential_type(op: &Operator) -> String {
    let cluster = &op.cluster;
    let issuer = &op.issuer;
    let keys = jwks(issuer).await;

    // client_secret_basic, through the oauth2 crate.
    let billing = secret(cluster, "billing", "billing-worker-credentials").await;
    assert_eq!(billing["token_url"], format!("{issuer}/oauth2/token"));
    let basic = eventually(WAITS.converge, "a client_secret_basic token", || async {
        client_credentials(
            &billing["token_url"],
            &billing["client_id"],
            &billing["client_secret"],
            ORDERS,
            "orders:read",
        )
        .await
        .ok()
    })
    .await;
    let claims = verify_access_token(&basic, &keys, issuer, ORDERS);
    assert_eq!(claims["sub"], billing["client_id"].as_str());
    assert_eq!(claims["scope"], "orders:read");

    // private_key_jwt: an assertion signed by jwt-simple with the key from the Secret.
    let report = secret(cluster, "reporting", "report-generator-key").await;
    let token_url = report["token_url"].clone();
    let key = jwt_simple::prelude::ES256KeyPair::from_pem(&report["private_key.pem"])
        .expect("private_key.pem is a P-256 key")
        .with_key_id(&report["key_id"]);
    let private_key_jwt = eventually(WAITS.converge, "a private_key_jwt token", || async {
        use jwt_simple::prelude::*;
        let assertion = key
            .sign(
                Claims::create(Duration::from_secs(60))
                    .with_issuer(&report["client_id"])
                    .with_subject(&report["client_id"])
                    .with_audience(&token_url)
                    .with_jwt_id(suffix() + &suffix()),
            )
            .unwrap();
        assertion_grant(&token_url, &assertion).await
    })
    .await;
    let claims = verify_access_token(&private_key_jwt, &keys, issuer, ORDERS);
    assert_eq!(claims["sub"], report["client_id"].as_str());

    // The output grant's token, materialized in its Secret.
    let out = secret(cluster, "orders", "report-generator-orders-token").await;
    let claims = verify_access_token(&out["access_token"], &keys, issuer, ORDERS);
    assert_eq!(claims["sub"], report["client_id"].as_str());

    // Federated: a real TokenRequest token of the Kubernetes service account
    // shipping/shipping-agent, through the `kubernetes` TrustedIssuer preset.
    let core: Api<CoreServiceAccount> = Api::namespaced(cluster.admin.clone(), "shipping");
    let pod: CoreServiceAccount = serde_json::from_value(
        json!({"metadata": {"name": "shipping-agent", "namespace": "shipping"}}),
    )
    .unwrap();
    let _ = core.create(&PostParams::default(), &pod).await;
    let projected = core
        .create_token_request(
            "shipping-agent",
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec!["s2s.dev".into()],
                    expiration_seconds: Some(600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let federated = eventually(WAITS.converge, "a federated token", || async {
        assertion_grant(&format!("{issuer}/oauth2/token"), &projected).await
    })
    .await;
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.admin.clone(), "shipping");
    let shipping = accounts.get("shipping-agent").await.unwrap();
    let claims = verify_access_token(&federated, &keys, issuer, ORDERS);
    assert_eq!(
        claims["sub"].as_str(),
        shipping.status.unwrap().client_id.as_deref()
    );
    basic
}

/// The examples as a user installs them, with the controller started before and (several
/// times) after the objects exist; a token for each credential type; revocation seen by a
/// second token server; a namespace holding grants deleted with no controller running.
/// examples/accesstoken.yaml: the token in the client's namespace verifies for its audience
/// with a third-party library, carries the asked scope and names its grant; `kubectl get s2s
/// -A` lists it with account, audiences, expiry and revision; the controller's gauges show
/// its expiry and renewal.
async fn access_token_example(op: &Operator) {
    let cluster = &op.cluster;
    let out = secret(cluster, "billing", "billing-orders-token").await;
    let claims = verify_access_token(
        &out["access_token"],
        &jwks(&op.issuer).await,
        &op.issuer,
        ORDERS,
    );
    assert_eq!(claims["scope"], "orders:read");
    assert_eq!(
        out["authorization"],
        format!("Bearer {}", out["access_token"])
    );
    let grant: TokenGrant = Api::namespaced(cluster.admin.clone(), "orders")
        .get("billing-worker")
        .await
        .unwrap();
    assert_eq!(
        claims["grants"],
        json!([format!("orders/billing-worker/{}", grant.uid().unwrap())])
    );
    let listed = cluster.kubectl(&["get", "s2s", "-A"]);
    let row = listed
        .lines()
        .find(|l| l.contains("billing-orders"))
        .unwrap_or_else(|| panic!("no AccessToken row in:\n{listed}"));
    let exp = out["expires_at"].as_str();
    for want in ["True", "billing-worker", ORDERS, exp] {
        assert!(row.contains(want), "{want} not in {row:?}\n{listed}");
    }
    let metrics = http()
        .get(format!(
            "{}/metrics",
            op.controller_health.as_ref().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = metrics
        .lines()
        .find(|l| {
            l.starts_with("s2s_token_expiration_timestamp_seconds{")
                && l.contains(r#"kind="AccessToken""#)
                && l.contains(r#"name="billing-orders""#)
        })
        .unwrap_or_else(|| panic!("no expiry gauge for billing-orders in:\n{metrics}"));
    let value: f64 = series.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value as u64, claims["exp"].as_u64().unwrap());
    assert!(metrics.contains("s2s_token_renewal_timestamp_seconds{"));
}

#[tokio::test]
async fn e2e_examples_installed_with_kubectl() {
    let Some(cluster) = Cluster::from_env("e2e_examples_installed_with_kubectl").await else {
        return;
    };
    let _serial = serial().await;
    cluster.apply_crds();
    // Leftovers of an aborted earlier run would make the examples' namespaces Terminating.
    cluster
        .delete_namespaces(&example_namespaces(), Duration::from_secs(120))
        .await;
    for ns in EXAMPLE_NAMESPACES {
        cluster.create_namespace(ns).await;
    }
    let c = cluster.clone();
    with_operator(&cluster, move |mut op| async move {
        let cluster = c;
        let logs = op.log_dir();
        let check = async {
            // The controller first (it makes the signing keys the token servers wait for),
            // the objects after.
            op.start_controller();
            op.start_token_server().await;
            let second = op.start_token_server().await;
            apply_examples(&cluster);
            wait_examples_settled(&cluster, "examples applied to a running controller").await;
            let out = cluster.kubectl(&["get", "s2s", "-A"]);
            assert!(!out.contains("<invalid>"), "{out}");

            let token = tokens_for_every_credential_type(&op).await;
            access_token_example(&op).await;

            // Revoked at the first token server, inactive at the second.
            let billing = secret(&cluster, "billing", "billing-worker-credentials").await;
            eventually(
                WAITS.converge,
                "the token active at the second server",
                || async { (active(&second, &billing, &token).await == Some(true)).then_some(()) },
            )
            .await;
            let (status, _) = post_form(
                &format!("{}/oauth2/revoke", op.issuer),
                Some((&billing["client_id"], &billing["client_secret"])),
                &[("token", &token)],
            )
            .await;
            assert_eq!(status, 200);
            eventually(
                WAITS.converge,
                "the revocation at the second server",
                || async { (active(&second, &billing, &token).await == Some(false)).then_some(()) },
            )
            .await;

            // The controller started after the objects exist, several times: grants made
            // while no controller runs are all reconciled by the next one.
            for round in 1..=3 {
                op.stop_controller();
                cluster.kubectl(&[
                    "delete",
                    "tokengrants",
                    "--all",
                    "-n",
                    "orders",
                    "--wait=true",
                ]);
                cluster.kubectl(&[
                    "delete",
                    "tokengrants",
                    "--all",
                    "-n",
                    "tenant-acme",
                    "--wait=true",
                ]);
                apply_example_grants(&cluster);
                op.start_controller();
                wait_examples_settled(&cluster, &format!("controller restart {round}")).await;
            }

            // With no controller running, a namespace holding grants deletes within a minute,
            // and the tokens its grants allowed are inactive afterwards.
            let fresh = client_credentials(
                &billing["token_url"],
                &billing["client_id"],
                &billing["client_secret"],
                ORDERS,
                "orders:read",
            )
            .await
            .expect("a token for billing-worker");
            assert_eq!(active(&second, &billing, &fresh).await, Some(true));
            op.stop_controller();
            let grants: Api<TokenGrant> = Api::namespaced(cluster.admin.clone(), "orders");
            assert!(
                !grants
                    .list(&ListParams::default())
                    .await
                    .unwrap()
                    .items
                    .is_empty()
            );
            cluster
                .delete_namespaces(&["orders".to_owned()], Duration::from_secs(60))
                .await;
            for server in [op.issuer.clone(), second.clone()] {
                eventually(
                    WAITS.converge,
                    "the deleted grant's token to be inactive",
                    || async {
                        (active(&server, &billing, &fresh).await == Some(false)).then_some(())
                    },
                )
                .await;
            }
        };
        or_logs(logs, check).await;
        op
    })
    .await;
    cluster
        .delete_namespaces(&example_namespaces(), Duration::from_secs(120))
        .await;
}

/// Accounts, Secrets, tokens, rotation with grace, conflicts, garbage collection, output
/// tokens and revocation, and federation through the `kubernetes` preset, in a fresh
/// namespace (the same scenarios the in-process stand-in runs where it must).
#[tokio::test]
async fn e2e_accounts_secrets_tokens_rotation_garbage_collection_and_federation() {
    let Some(cluster) =
        Cluster::from_env("e2e_accounts_secrets_tokens_rotation_garbage_collection_and_federation")
            .await
    else {
        return;
    };
    let _serial = serial().await;
    cluster.apply_crds();
    let work_ns = format!("s2s-e2e-{}", suffix());
    cluster.create_namespace(&work_ns).await;
    let (c, ns) = (cluster.clone(), work_ns.clone());
    with_operator(&cluster, move |mut op| async move {
        let admin = c.admin.clone();
        let issuer = op.issuer.clone();
        let logs = op.log_dir();
        let check = async {
            op.start_controller();
            op.start_token_server().await;
            scenario::credentials_lifecycle(admin.clone(), &ns, &issuer, &WAITS).await;
            scenario::token_grant_output_and_revocation(admin.clone(), &ns, &issuer, &WAITS).await;
            scenario::access_token_lifecycle(admin.clone(), &ns, &issuer, &WAITS).await;
            scenario::kubernetes_federation(admin.clone(), &ns, &issuer, &WAITS).await;
            // Every TrustedIssuer left reports its state.
            let issuers: Api<TrustedIssuer> = Api::namespaced(admin, &ns);
            for ti in issuers.list(&ListParams::default()).await.unwrap() {
                assert!(ti.status.is_some(), "{} has no status", ti.name_any());
            }
        };
        or_logs(logs, check).await;
        op
    })
    .await;
    cluster
        .delete_namespaces(&[work_ns], Duration::from_secs(120))
        .await;
}
