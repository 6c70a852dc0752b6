//! AccessTokens in `dev` over real HTTP: `s2s-operator dev` as a process writes the token of
//! an AccessToken for two audiences (granted by two API owners) as mounted-Secret files; it
//! verifies with jwt-simple (not the server's JWT library) for each audience, and the API
//! owner's introspection says active. Deleting one grant from the manifests takes the token
//! out of the files and makes it inactive; an AccessToken for an audience no grant gives gets
//! no token and says NotGranted in its status.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::scenario::eventually;

const ORDERS: &str = "https://orders.test";
const STOCK: &str = "https://stock.test";

const ACCOUNTS: &str = r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: orders, namespace: shop}
spec:
  api: {audience: "https://orders.test", scopes: [{name: "catalog:read"}]}
  authentication: {clientSecret: {secretName: orders-credentials}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: stock, namespace: warehouse}
spec:
  api: {audience: "https://stock.test", scopes: [{name: "catalog:read"}]}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: billing, namespace: accounting}
spec:
  api: {audience: "https://billing.test", scopes: [{name: "catalog:read"}]}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: worker, namespace: team}
spec:
  scopes: ["catalog:read"]
  audiences: ["https://orders.test", "https://stock.test", "https://billing.test"]
  authentication: {clientSecret: {secretName: worker-credentials}}
"#;

const TOKENS: &str = r#"
apiVersion: s2s.dev/v1alpha1
kind: AccessToken
metadata: {name: both, namespace: team}
spec:
  serviceAccountName: worker
  audiences: ["https://orders.test", "https://stock.test"]
  scopes: ["catalog:read"]
  secretName: both-token
  lifetime: 10m
---
apiVersion: s2s.dev/v1alpha1
kind: AccessToken
metadata: {name: unbilled, namespace: team}
spec:
  serviceAccountName: worker
  audiences: ["https://billing.test"]
  secretName: billing-token
"#;

/// The audience owner's grant of `catalog:read` to team/worker.
fn grant(namespace: &str, audience: &str) -> String {
    format!(
        r#"
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {{name: worker, namespace: {namespace}}}
spec:
  subject: {{serviceAccount: {{name: worker, namespace: team}}}}
  audience: "{audience}"
  scopes: ["catalog:read"]
"#
    )
}

/// A Secret's files, if its folder exists.
fn secret_files(state: &Path, namespace: &str, name: &str) -> Option<Vec<String>> {
    let dir = state.join(namespace).join(name);
    let mut keys: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    keys.sort();
    Some(keys)
}

/// An AccessToken's status as `dev` saved it.
fn status(state: &Path, namespace: &str, name: &str) -> Option<Value> {
    let path = state
        .join(".s2s/status/accesstokens")
        .join(namespace)
        .join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The (status, reason) of a status's Ready condition.
fn ready(status: &Value) -> (String, String) {
    let c = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .unwrap_or_else(|| panic!("no Ready condition: {status}"));
    (
        c["status"].as_str().unwrap().to_owned(),
        c["reason"].as_str().unwrap().to_owned(),
    )
}

/// RFC 7662 introspection of `token` by the account whose credentials are in
/// `namespace/secret`.
async fn introspect(dev: &support::DevServer, namespace: &str, secret: &str, token: &str) -> Value {
    let creds = dev.secret(namespace, secret);
    support::http()
        .post(format!("{}/oauth2/introspect", dev.issuer))
        .basic_auth(&creds["client_id"], Some(&creds["client_secret"]))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The accounts, both grants and the AccessTokens as manifests.
fn manifests() -> tempfile::TempDir {
    support::manifests_dir(&[
        ("accounts.yaml", ACCOUNTS),
        ("grant-orders.yaml", &grant("shop", ORDERS)),
        ("grant-stock.yaml", &grant("warehouse", STOCK)),
        ("tokens.yaml", TOKENS),
    ])
}

/// `dev` over [`manifests`], with a fresh state dir, once it has applied them.
fn started() -> (tempfile::TempDir, tempfile::TempDir, support::DevServer) {
    let manifests = manifests();
    let state = tempfile::tempdir().unwrap();
    let dev = support::DevServer::start(manifests.path(), state.path(), &[]);
    dev.wait_for_log("access tokens:");
    (manifests, state, dev)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_access_token_for_two_audiences_is_written_verified_and_withdrawn_with_a_grant() {
    let (manifests, state, dev) = started();

    let data = eventually(Duration::from_secs(10), "the token file", || async {
        secret_files(state.path(), "team", "both-token")
            .filter(|keys| keys.iter().any(|k| k == "access_token"))
            .map(|_| dev.secret("team", "both-token"))
    })
    .await;
    let token = data["access_token"].clone();
    assert_eq!(data["token_type"], "Bearer");
    assert_eq!(data["authorization"], format!("Bearer {token}"));
    assert!(data.contains_key("expires_at"), "{data:?}");

    let keys = support::jwks(&dev.issuer).await;
    let worker = dev.secret("team", "worker-credentials");
    for audience in [ORDERS, STOCK] {
        let claims = support::verify_access_token(&token, &keys, &dev.issuer, audience);
        assert_eq!(
            claims["aud"],
            serde_json::json!([ORDERS, STOCK]),
            "{claims}"
        );
        assert_eq!(claims["sub"], worker["client_id"].as_str());
        assert_eq!(claims["scope"], "catalog:read");
        let grants = claims["grants"].as_array().expect("a grants claim");
        assert_eq!(grants.len(), 2, "one per audience owner's grant: {claims}");
    }
    let claims = support::verify_access_token(&token, &keys, &dev.issuer, ORDERS);
    let saved = status(state.path(), "team", "both").expect("a saved status");
    assert_eq!(ready(&saved), ("True".into(), "Ready".into()), "{saved}");
    assert_eq!(saved["revision"], 1);
    assert_eq!(saved["tokenId"], claims["jti"]);

    let answer = introspect(&dev, "shop", "orders-credentials", &token).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["client_id"], worker["client_id"].as_str());

    // The AccessToken for an audience nobody granted: no token, NotGranted.
    let unbilled = eventually(Duration::from_secs(10), "the unbilled status", || async {
        status(state.path(), "team", "unbilled")
    })
    .await;
    assert_eq!(
        ready(&unbilled),
        ("False".into(), "NotGranted".into()),
        "{unbilled}"
    );
    assert!(
        !secret_files(state.path(), "team", "billing-token")
            .unwrap_or_default()
            .contains(&"access_token".to_owned()),
        "no token for an audience not granted"
    );
    let logs = dev.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("team/unbilled") && l.contains("NotGranted")),
        "{logs}"
    );
    assert!(
        logs.contains("event Normal Issued AccessToken team/both"),
        "{logs}"
    );

    // One grant goes: the token leaves the files and is inactive at once.
    std::fs::remove_file(manifests.path().join("grant-stock.yaml")).unwrap();
    eventually(
        Duration::from_secs(10),
        "the token to leave the Secret",
        || async {
            let keys = secret_files(state.path(), "team", "both-token")?;
            (!keys.iter().any(|k| {
                ["access_token", "authorization", "expires_at", "token_type"].contains(&k.as_str())
            }))
            .then_some(())
        },
    )
    .await;
    let answer = introspect(&dev, "shop", "orders-credentials", &token).await;
    assert_eq!(answer["active"], false, "{answer}");
    let saved = status(state.path(), "team", "both").expect("a saved status");
    assert_eq!(
        ready(&saved),
        ("False".into(), "NotGranted".into()),
        "{saved}"
    );
    assert!(saved.get("tokenId").is_none_or(Value::is_null), "{saved}");
    dev.wait_for_log("event Warning NotGranted AccessToken team/both");
}

/// The status and uid in the state dir carry an AccessToken across a restart: the token in
/// its files is the one recorded, so nothing is re-issued, and it is still active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_access_token_is_not_reissued_after_a_restart() {
    let manifests = manifests();
    let state = tempfile::tempdir().unwrap();
    // The same address after the restart: the same issuer, so the token is still ours.
    let listen = format!("127.0.0.1:{}", support::free_port());
    let dev = support::DevServer::start_at(manifests.path(), state.path(), &listen, &[]);
    dev.wait_for_log("access tokens:");
    let token = dev.secret("team", "both-token")["access_token"].clone();
    let uids = std::fs::read(state.path().join(".s2s/uids/accesstokens.json")).unwrap();
    drop(dev);

    let dev = support::DevServer::start_at(manifests.path(), state.path(), &listen, &[]);
    dev.wait_for_log("access tokens:");
    assert_eq!(dev.secret("team", "both-token")["access_token"], token);
    assert!(
        !dev.logs().contains("AccessToken team/both"),
        "{}",
        dev.logs()
    );
    assert_eq!(
        std::fs::read(state.path().join(".s2s/uids/accesstokens.json")).unwrap(),
        uids
    );
    let saved = status(state.path(), "team", "both").unwrap();
    assert_eq!(saved["revision"], 1, "{saved}");
    let answer = introspect(&dev, "shop", "orders-credentials", &token).await;
    assert_eq!(answer["active"], true, "{answer}");
}

/// A removed AccessToken takes its Secret and status with it, as the garbage collector does
/// in a cluster: no token is left on disk. Other objects' Secrets stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_removed_access_token_takes_its_files_and_status() {
    let (manifests, state, dev) = started();
    assert!(
        dev.secret("team", "both-token")
            .contains_key("access_token")
    );
    assert!(status(state.path(), "team", "both").is_some());

    std::fs::remove_file(manifests.path().join("tokens.yaml")).unwrap();
    eventually(
        Duration::from_secs(10),
        "the token files and status to go",
        || async {
            (secret_files(state.path(), "team", "both-token").is_none()
                && status(state.path(), "team", "both").is_none())
            .then_some(())
        },
    )
    .await;
    dev.wait_for_log("secret team/both-token removed");
    assert!(
        secret_files(state.path(), "team", "worker-credentials").is_some(),
        "the account's credentials stay"
    );
    assert!(
        secret_files(state.path(), "s2s-system", "s2s-signing-keys").is_some(),
        "the signing keys stay"
    );
}
