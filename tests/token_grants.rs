//! TokenGrants against the in-process API stand-in: the real kube-runtime Controller (no
//! finalizer; the one earlier versions added is removed, also from a grant being deleted),
//! audience ownership across namespaces, output tokens minted, verified with another JWT
//! library, renewed on an injected clock with the old token valid until it expires, no
//! re-issue across a controller restart, revocation by `spec.revoked` (a deny-list entry) and
//! by deletion (nothing written: tokens name their grant), and the chart's RBAC against every
//! request the controller made. `dev` mode: tokens name their grants, and removing a grant
//! from the manifests makes its tokens inactive.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use s2s_operator::api::{ServiceAccount, TokenGrant};
use s2s_operator::controller::{self, Metrics};
use s2s_operator::crypto::KeyAlgorithm;
use s2s_operator::k8s::lease::Timing;
use s2s_operator::signing_keys::{self, Policy};
use s2s_operator::token::Clock;
use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::create_namespace;
use support::scenario::{self, eventually};
use tokio::sync::watch;

const OP_NS: &str = "s2s-system";
const ISSUER: &str = "https://s2s.test";
const AUDIENCE: &str = "https://orders.test";
const WAIT: Duration = Duration::from_secs(30);

/// The system clock plus an offset the test moves forward.
#[derive(Default)]
struct TestClock {
    offset: Mutex<Duration>,
}

impl TestClock {
    fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
    }
}

impl Clock for TestClock {
    fn now(&self) -> SystemTime {
        SystemTime::now() + *self.offset.lock().unwrap()
    }
}

struct Replica {
    stop: watch::Sender<bool>,
    leading: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

fn start_controller(api: &ApiServer, clock: Arc<TestClock>) -> Replica {
    let (stop, stop_rx) = watch::channel(false);
    let (leading_tx, leading) = watch::channel(false);
    let options = controller::Options {
        namespace: OP_NS.into(),
        issuer: ISSUER.into(),
        key_policy: Policy {
            algorithm: KeyAlgorithm::ES256,
            rotate_every: Duration::from_secs(30 * 24 * 3600),
            publish_ahead: Duration::from_secs(2),
            retire_after: Duration::from_secs(3600 + 60),
        },
        identity: "replica".into(),
        lease: Timing {
            lease_duration: Duration::from_millis(2000),
            renew_deadline: Duration::from_millis(1500),
            renew_every: Duration::from_millis(250),
        },
        concurrency: 4,
        revocation_prune_every: Duration::from_secs(1),
        max_token_lifetime: Duration::from_secs(3600),
        allow_unclaimed_audiences: false,
        tls: None,
    };
    let task = tokio::spawn(controller::run(
        api.client_as("s2s-controller"),
        options,
        clock,
        Arc::new(Metrics::new()),
        leading_tx,
        stop_rx,
    ));
    Replica {
        stop,
        leading,
        task,
    }
}

async fn create<K>(api: &Api<K>, object: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(
        &PostParams::default(),
        &serde_json::from_value(object).unwrap(),
    )
    .await
    .unwrap();
}

/// The grant's Ready condition as (status, reason, message), once its status describes the
/// current generation.
fn grant_ready(g: &TokenGrant) -> Option<(String, String, String)> {
    let st = g.status.as_ref()?;
    if st.observed_generation != g.metadata.generation {
        return None;
    }
    let c = st.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((
        format!("{:?}", c.status),
        c.reason.clone(),
        c.message.clone(),
    ))
}

async fn wait_grant(api: &Api<TokenGrant>, name: &str, reason: &str) -> TokenGrant {
    eventually(WAIT, &format!("TokenGrant {name} {reason}"), || async {
        let g = api.get_opt(name).await.ok()??;
        (grant_ready(&g)?.1 == reason).then_some(g)
    })
    .await
}

/// The JWKS the token server would publish, from the signing-keys Secret.
async fn jwks(admin: &Client, clock: &TestClock) -> Value {
    let secret = Api::<Secret>::namespaced(admin.clone(), OP_NS)
        .get(signing_keys::SECRET_NAME)
        .await
        .unwrap();
    let records = signing_keys::from_data(&scenario::strings(&secret)).unwrap();
    let now = clock.now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (_, published) = signing_keys::keys_at(&records, now).unwrap();
    json!({ "keys": published })
}

fn unix(clock: &TestClock) -> u64 {
    clock.now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn secret_data(admin: &Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    scenario::strings(
        &Api::<Secret>::namespaced(admin.clone(), ns)
            .get(name)
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_issue_renew_survive_restarts_and_revoke() {
    let api = ApiServer::new();
    let admin = api.client();
    for ns in [OP_NS, "shop", "team"] {
        create_namespace(&admin, ns).await;
    }
    let clock = Arc::new(TestClock::default());
    let replica = start_controller(&api, clock.clone());

    let shop_accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "shop");
    let team_accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "team");
    let shop_grants: Api<TokenGrant> = Api::namespaced(admin.clone(), "shop");
    let team_grants: Api<TokenGrant> = Api::namespaced(admin.clone(), "team");
    create(
        &shop_accounts,
        json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
               "metadata": {"name": "orders", "namespace": "shop"},
               "spec": {"api": {"audience": AUDIENCE, "scopes": [{"name": "orders:read"}, {"name": "orders:write"}]}}}),
    )
    .await;
    for name in ["worker", "reporter"] {
        create(
            &team_accounts,
            json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
                   "metadata": {"name": name, "namespace": "team"},
                   "spec": {"scopes": ["orders:read"], "audiences": [AUDIENCE],
                            "authentication": {"clientSecret": {"secretName": format!("{name}-credentials")}}}}),
        )
        .await;
    }
    // The API's owner grants worker a token in a Secret of its namespace.
    create(
        &shop_grants,
        json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
               "metadata": {"name": "worker", "namespace": "shop"},
               "spec": {"subject": {"serviceAccount": {"name": "worker", "namespace": "team"}},
                        "audience": AUDIENCE, "scopes": ["orders:read", "orders:write"],
                        "output": {"secretName": "orders-token", "lifetime": "5m"}}}),
    )
    .await;
    // Namespace team cannot open shop's API.
    create(
        &team_grants,
        json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
               "metadata": {"name": "sneaky", "namespace": "team"},
               "spec": {"subject": {"serviceAccount": {"name": "worker"}}, "audience": AUDIENCE}}),
    )
    .await;
    let sneaky = wait_grant(&team_grants, "sneaky", "AudienceNotOwned").await;
    let (status, _, message) = grant_ready(&sneaky).unwrap();
    assert_eq!(status, "False");
    assert!(message.contains("shop/orders"), "{message}");

    // Issued: a token for worker in a Secret the grant controls.
    let worker = scenario::wait_ready(&team_accounts, "worker", WAIT).await;
    let client_id = worker.status.unwrap().client_id.unwrap();
    let granted = wait_grant(&shop_grants, "worker", "Ready").await;
    assert_eq!(
        granted.metadata.finalizers, None,
        "no finalizer: deleting a grant must never wait on the controller"
    );
    let st = granted.status.clone().unwrap();
    assert_eq!(st.revision, Some(1));
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "shop");
    let out = secrets.get("orders-token").await.unwrap();
    let owner = &out.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("TokenGrant", Some(true))
    );
    assert_eq!(owner.uid, granted.metadata.uid.clone().unwrap());
    let labels = out.metadata.labels.clone().unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "s2s-operator");
    assert_eq!(labels["s2s.dev/component"], "token");
    let data = scenario::strings(&out);
    let first = data["access_token"].clone();
    assert_eq!(data["token_type"], "Bearer");
    assert_eq!(data["authorization"], format!("Bearer {first}"));
    let keys = jwks(&admin, &clock).await;
    let claims = support::verify_access_token(&first, &keys, ISSUER, AUDIENCE);
    assert_eq!(claims["sub"], client_id.as_str());
    assert_eq!(claims["client_id"], client_id.as_str());
    // Granted orders:read and orders:write; worker's ceiling is orders:read.
    assert_eq!(claims["scope"], "orders:read");
    assert_eq!(claims["jti"].as_str(), st.token_id.as_deref());
    let exp = claims["exp"].as_u64().unwrap();
    assert_eq!(exp - claims["iat"].as_u64().unwrap(), 300);
    assert_eq!(
        claims["grants"],
        json!([format!(
            "shop/worker/{}",
            granted.metadata.uid.as_deref().unwrap()
        )])
    );
    assert_eq!(
        data["expires_at"],
        st.not_after.as_ref().unwrap().0.to_string()
    );

    // A restart changes nothing: no re-issue, no write.
    let version = out.metadata.resource_version.clone();
    replica.shutdown().await;
    let mark = api.requests().len();
    let replica = start_controller(&api, clock.clone());
    let mut leading = replica.leading.clone();
    leading.wait_for(|l| *l).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = shop_grants.get("worker").await.unwrap();
    assert_eq!(again.status.as_ref().unwrap().revision, Some(1));
    assert_eq!(
        secrets
            .get("orders-token")
            .await
            .unwrap()
            .metadata
            .resource_version,
        version
    );
    assert!(
        !api.requests()[mark..]
            .iter()
            .any(|r| r.user == "s2s-controller"
                && r.resource.starts_with("tokengrants")
                && r.verb == "patch"),
        "a restart wrote to the grant"
    );

    // Renewal: due a third of the lifetime before expiry. The first write fails: the old
    // token stays, and the retry (with backoff) succeeds.
    clock.advance(Duration::from_secs(201));
    api.fail_next("update", "secrets", 403, 1);
    shop_grants
        .patch(
            "worker",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test/nudge": "1"}}})),
        )
        .await
        .unwrap();
    let renewed = eventually(WAIT, "the renewal", || async {
        let g = shop_grants.get("worker").await.ok()?;
        (g.status.as_ref()?.revision == Some(2)).then_some(g)
    })
    .await;
    let data = secret_data(&admin, "shop", "orders-token").await;
    let second = data["access_token"].clone();
    assert_ne!(second, first);
    let keys = jwks(&admin, &clock).await;
    let claims2 = support::verify_access_token(&second, &keys, ISSUER, AUDIENCE);
    assert_eq!(
        claims2["jti"].as_str(),
        renewed.status.as_ref().unwrap().token_id.as_deref()
    );
    // The old token is still valid: it expires at its own `exp`, after the renewal.
    assert!(unix(&clock) < exp);
    support::verify_access_token(&first, &keys, ISSUER, AUDIENCE);
    let events = scenario::events_for(admin.clone(), "shop", "worker").await;
    for reason in ["Issued", "Renewed", "IssueFailed"] {
        assert!(
            events.iter().any(|e| e.1 == reason),
            "no {reason} in {events:?}"
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e.0 == "Warning" && e.1 == "IssueFailed")
    );
    for e in &events {
        assert!(
            !e.2.contains(&first) && !e.2.contains(&second),
            "a token in an Event"
        );
    }

    // Revoked: the token leaves the Secret, the deny list voids the grant's tokens.
    shop_grants
        .patch(
            "worker",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"revoked": true}})),
        )
        .await
        .unwrap();
    let revoked = wait_grant(&shop_grants, "worker", "Revoked").await;
    assert!(revoked.status.as_ref().unwrap().token_id.is_none());
    let data = secret_data(&admin, "shop", "orders-token").await;
    assert!(!data.contains_key("access_token") && !data.contains_key("authorization"));
    let now = unix(&clock);
    let deny = s2s_operator::revocation::list(&admin, OP_NS).await.unwrap();
    let iat2 = claims2["iat"].as_u64().unwrap();
    assert!(deny.denies("other-jti", &client_id, AUDIENCE, iat2, now));
    assert!(deny.denies(claims2["jti"].as_str().unwrap(), "x", "y", 0, now));
    assert!(!deny.denies("other-jti", &client_id, "https://elsewhere", iat2, now));
    // The Event follows the status write: wait for it rather than race it.
    scenario::eventually(Duration::from_secs(10), "the Revoked Event", || async {
        let events = scenario::events_for(admin.clone(), "shop", "worker").await;
        events.iter().any(|e| e.1 == "Revoked").then_some(())
    })
    .await;
    // Written once: later passes write nothing more.
    let entries = api
        .object("", "configmaps", Some(OP_NS), "s2s-revocations")
        .unwrap()["data"]
        .as_object()
        .unwrap()
        .len();
    shop_grants
        .patch(
            "worker",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test/nudge": "2"}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        api.object("", "configmaps", Some(OP_NS), "s2s-revocations")
            .unwrap()["data"]
            .as_object()
            .unwrap()
            .len(),
        entries
    );

    // Deleted: nothing to write (its tokens name it), and nothing holds the deletion.
    create(
        &shop_grants,
        json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
               "metadata": {"name": "reporter", "namespace": "shop"},
               "spec": {"subject": {"serviceAccount": {"name": "reporter", "namespace": "team"}},
                        "audience": AUDIENCE, "scopes": ["orders:read"]}}),
    )
    .await;
    let reporter = scenario::wait_ready(&team_accounts, "reporter", WAIT).await;
    let reporter_id = reporter.status.unwrap().client_id.unwrap();
    let g = wait_grant(&shop_grants, "reporter", "Ready").await;
    assert_eq!(g.metadata.finalizers, None);
    let before = unix(&clock);
    let deny_before = s2s_operator::revocation::list(&admin, OP_NS).await.unwrap();
    shop_grants
        .delete("reporter", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        shop_grants.get_opt("reporter").await.unwrap().is_none(),
        "deleted at once"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deny = s2s_operator::revocation::list(&admin, OP_NS).await.unwrap();
    assert!(!deny.denies("any", &reporter_id, AUDIENCE, before, unix(&clock)));
    assert_eq!(deny, deny_before, "deletion writes no deny-list entry");
    team_grants
        .delete("sneaky", &DeleteParams::default())
        .await
        .unwrap();
    assert!(team_grants.get_opt("sneaky").await.unwrap().is_none());

    // Grants written by an earlier version carry its finalizer. With the controller stopped
    // (an upgrade, or after `helm uninstall`), one of them is deleted and stays Terminating;
    // the controller removes the finalizer from both, keeps anyone else's, and the deletion
    // completes.
    replica.shutdown().await;
    for (name, finalizers) in [
        ("legacy", json!(["s2s.dev/revocation", "example.com/keep"])),
        ("legacy-deleted", json!(["s2s.dev/revocation"])),
    ] {
        create(
            &shop_grants,
            json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
                   "metadata": {"name": name, "namespace": "shop", "finalizers": finalizers},
                   "spec": {"subject": {"serviceAccount": {"name": "reporter", "namespace": "team"}},
                            "audience": AUDIENCE}}),
        )
        .await;
    }
    shop_grants
        .delete("legacy-deleted", &DeleteParams::default())
        .await
        .unwrap();
    let held = shop_grants.get("legacy-deleted").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some(), "Terminating");
    let replica = start_controller(&api, clock.clone());
    eventually(WAIT, "the Terminating grant to go", || async {
        shop_grants
            .get_opt("legacy-deleted")
            .await
            .ok()
            .and_then(|g| g.is_none().then_some(()))
    })
    .await;
    let legacy = eventually(WAIT, "the old finalizer to be removed", || async {
        let g = shop_grants.get("legacy").await.ok()?;
        (g.metadata.finalizers.as_deref() == Some(&["example.com/keep".to_owned()][..]))
            .then_some(g)
    })
    .await;
    // It is reconciled as any other grant.
    wait_grant(&shop_grants, "legacy", "Ready").await;
    assert!(legacy.metadata.deletion_timestamp.is_none());

    replica.shutdown().await;

    // RBAC, both ways, for what TokenGrants need: every request the controller made is
    // allowed, and every TokenGrant rule (`patch` only removes the old finalizer) and the
    // Secret and ConfigMap rules were used.
    support::rbac::check_both_ways(
        &api.requests(),
        OP_NS,
        "s2s-controller",
        |_, group, resource| {
            resource.starts_with("tokengrants")
                || (group.is_empty() && ["secrets", "configmaps"].contains(&resource))
        },
    );
}

/// Grants that exist before the controller starts are all reconciled, even when the account
/// store is slow to fill. (Waiting for that store inside each reconcile hung: kube-runtime's
/// `Store::wait_until_ready` wakes only the last of several concurrent waiters, so on a real
/// apiserver most starts left every grant without a status.) The slow store is made by
/// failing the first lists of ServiceAccounts.
#[tokio::test]
async fn grants_present_at_start_are_all_reconciled_while_the_account_store_fills_slowly() {
    let api = ApiServer::new();
    let admin = api.client();
    for ns in [OP_NS, "shop"] {
        create_namespace(&admin, ns).await;
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "shop");
    create(
        &accounts,
        json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
               "metadata": {"name": "orders", "namespace": "shop"},
               "spec": {"api": {"audience": AUDIENCE}}}),
    )
    .await;
    let grants: Api<TokenGrant> = Api::namespaced(admin.clone(), "shop");
    let names: Vec<String> = (0..6).map(|i| format!("client-{i}")).collect();
    for name in &names {
        create(
            &accounts,
            json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
                   "metadata": {"name": name, "namespace": "shop"},
                   "spec": {"audiences": [AUDIENCE],
                            "authentication": {"clientSecret": {"secretName": format!("{name}-credentials")}}}}),
        )
        .await;
        create(
            &grants,
            json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
                   "metadata": {"name": name, "namespace": "shop"},
                   "spec": {"subject": {"serviceAccount": {"name": name}}, "audience": AUDIENCE}}),
        )
        .await;
    }
    api.fail_next("list", "serviceaccounts", 500, 2);
    let replica = start_controller(&api, Arc::new(TestClock::default()));
    for name in &names {
        wait_grant(&grants, name, "Ready").await;
    }
    replica.shutdown().await;
}

/// `dev` runs the same reconcile: a status line per grant, the token as mounted-Secret
/// files, the status under the state dir, and no re-issue on a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_writes_output_tokens_and_keeps_them_across_restarts() {
    let manifests = support::manifests_dir(&[(
        "all.yaml",
        r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: orders, namespace: shop}
spec: {api: {audience: "https://orders.test", scopes: [{name: "orders:read"}]}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: worker, namespace: team}
spec:
  scopes: ["orders:read"]
  audiences: ["https://orders.test"]
  authentication: {clientSecret: {secretName: worker-credentials}}
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: worker, namespace: shop}
spec:
  subject: {serviceAccount: {name: worker, namespace: team}}
  audience: "https://orders.test"
  scopes: ["orders:read"]
  output: {secretName: orders-token, lifetime: 5m}
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: sneaky, namespace: team}
spec:
  subject: {serviceAccount: {name: worker}}
  audience: "https://orders.test"
"#,
    )]);
    let state = tempfile::tempdir().unwrap();
    // A fixed issuer: the listen port changes across restarts, and a changed issuer would
    // rightly re-issue.
    let args = ["--issuer", ISSUER];
    let dev = support::DevServer::start(manifests.path(), state.path(), &args);
    dev.wait_for_log("grants:");
    let logs = dev.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("shop/worker") && l.contains("Ready") && !l.contains("NotReady")),
        "{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("team/sneaky") && l.contains("AudienceNotOwned")),
        "{logs}"
    );
    let data = dev.secret("shop", "orders-token");
    let token = data["access_token"].clone();
    assert_eq!(data["authorization"], format!("Bearer {token}"));
    let creds = dev.secret("team", "worker-credentials");
    let records =
        signing_keys::from_data(&dev.secret("s2s-system", signing_keys::SECRET_NAME)).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (_, published) = signing_keys::keys_at(&records, now).unwrap();
    let claims = support::verify_access_token(
        &token,
        &json!({ "keys": published }),
        ISSUER,
        "https://orders.test",
    );
    assert_eq!(claims["sub"], creds["client_id"].as_str());
    assert_eq!(claims["scope"], "orders:read");
    let status: Value = serde_json::from_slice(
        &std::fs::read(
            state
                .path()
                .join(".s2s/status/tokengrants/shop/worker.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(status["revision"], 1);
    assert_eq!(status["tokenId"], claims["jti"]);
    drop(dev);

    // A fixed issuer: the listen port changes across restarts, and a changed issuer would
    // rightly re-issue.
    let args = ["--issuer", ISSUER];
    let dev = support::DevServer::start(manifests.path(), state.path(), &args);
    dev.wait_for_log("grants:");
    assert_eq!(dev.secret("shop", "orders-token")["access_token"], token);
    assert!(
        !dev.logs().contains("event Normal Renewed"),
        "{}",
        dev.logs()
    );
}

const DEV_ACCOUNTS: &str = r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: orders, namespace: shop}
spec: {api: {audience: "https://orders.test", scopes: [{name: "orders:read"}]}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: worker, namespace: team}
spec:
  scopes: ["orders:read"]
  audiences: ["https://orders.test"]
  authentication: {clientSecret: {secretName: worker-credentials}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: reporter, namespace: team}
spec:
  scopes: ["orders:read"]
  audiences: ["https://orders.test"]
  authentication: {clientSecret: {secretName: reporter-credentials}}
"#;

fn dev_grant(name: &str) -> String {
    format!(
        r#"
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {{name: {name}, namespace: shop}}
spec:
  subject: {{serviceAccount: {{name: {name}, namespace: team}}}}
  audience: "https://orders.test"
  scopes: ["orders:read"]
"#
    )
}

/// A client-credentials token for the account whose credentials are in `secret`, through
/// the `oauth2` crate.
async fn dev_token(dev: &support::DevServer, secret: &str) -> String {
    use oauth2::basic::BasicClient;
    use oauth2::{ClientId, ClientSecret, TokenResponse, TokenUrl};
    let creds = dev.secret("team", secret);
    let client = BasicClient::new(ClientId::new(creds["client_id"].clone()))
        .set_client_secret(ClientSecret::new(creds["client_secret"].clone()))
        .set_token_uri(TokenUrl::new(creds["token_url"].clone()).unwrap());
    client
        .exchange_client_credentials()
        .add_extra_param("audience", "https://orders.test")
        .request_async(&support::http())
        .await
        .expect("a token")
        .access_token()
        .secret()
        .clone()
}

/// RFC 7662 introspection of `token` by the account whose credentials are in `secret`.
async fn dev_active(dev: &support::DevServer, secret: &str, token: &str) -> bool {
    let creds = dev.secret("team", secret);
    let answer: Value = support::http()
        .post(format!("{}/oauth2/introspect", dev.issuer))
        .basic_auth(&creds["client_id"], Some(&creds["client_secret"]))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["active"].as_bool().expect("active is a boolean")
}

/// `dev` over HTTP: tokens name their grant by a uid kept in the state dir; removing a grant
/// from the manifests makes its tokens inactive within seconds while another grant's stay
/// active; the grant put back is another grant (a new uid), so the old token stays inactive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tokens_name_their_grant_and_die_with_it() {
    let manifests = support::manifests_dir(&[
        ("accounts.yaml", DEV_ACCOUNTS),
        ("worker.yaml", &dev_grant("worker")),
        ("reporter.yaml", &dev_grant("reporter")),
    ]);
    let state = tempfile::tempdir().unwrap();
    let dev = support::DevServer::start(manifests.path(), state.path(), &[]);
    let keys = support::jwks(&dev.issuer).await;
    let worker_token = dev_token(&dev, "worker-credentials").await;
    let reporter_token = dev_token(&dev, "reporter-credentials").await;
    let claims =
        support::verify_access_token(&worker_token, &keys, &dev.issuer, "https://orders.test");
    let grants = claims["grants"].as_array().expect("a grants claim");
    assert_eq!(grants.len(), 1, "{claims}");
    let entry = grants[0].as_str().unwrap();
    let uid = entry
        .strip_prefix("shop/worker/")
        .expect("namespace/name/uid");
    assert!(!uid.is_empty() && !uid.contains('/'), "{entry}");
    let reporter_claims =
        support::verify_access_token(&reporter_token, &keys, &dev.issuer, "https://orders.test");
    assert_ne!(reporter_claims["grants"], claims["grants"]);
    assert!(dev_active(&dev, "worker-credentials", &worker_token).await);
    // (The uid surviving a restart is what keeps the output token of
    // dev_mode_writes_output_tokens_and_keeps_them_across_restarts from being re-issued.)

    std::fs::remove_file(manifests.path().join("worker.yaml")).unwrap();
    eventually(
        Duration::from_secs(10),
        "the removed grant's token to be inactive",
        || async { (!dev_active(&dev, "worker-credentials", &worker_token).await).then_some(()) },
    )
    .await;
    assert!(
        dev_active(&dev, "reporter-credentials", &reporter_token).await,
        "another grant's token stays active"
    );

    // Put back: a new grant with a new uid; the old token stays inactive.
    std::fs::write(manifests.path().join("worker.yaml"), dev_grant("worker")).unwrap();
    let fresh = eventually(Duration::from_secs(10), "the grant to be back", || async {
        let creds = dev.secret("team", "worker-credentials");
        let r = support::http()
            .post(dev.token_url())
            .basic_auth(&creds["client_id"], Some(&creds["client_secret"]))
            .form(&[
                ("grant_type", "client_credentials"),
                ("audience", "https://orders.test"),
            ])
            .send()
            .await
            .ok()?;
        let body: Value = r.json().await.ok()?;
        body["access_token"].as_str().map(str::to_owned)
    })
    .await;
    let fresh_claims = support::verify_access_token(
        &fresh,
        &support::jwks(&dev.issuer).await,
        &dev.issuer,
        "https://orders.test",
    );
    assert_ne!(fresh_claims["grants"], claims["grants"], "a new uid");
    assert!(dev_active(&dev, "worker-credentials", &fresh).await);
    assert!(!dev_active(&dev, "worker-credentials", &worker_token).await);
}
