//! The controller and the token server, in process, against the in-process API stand-in
//! (`tests/support/apiserver`): the real kube-runtime Controller, reflectors and Lease
//! election talking HTTP semantics to a stateful fake, and the token server over real HTTP.
//! Every request is recorded, so the chart's RBAC is checked against what the code really
//! does.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};
use s2s_operator::controller::{self, Metrics};
use s2s_operator::crypto::KeyAlgorithm;
use s2s_operator::k8s::lease::Timing;
use s2s_operator::signing_keys::Policy;
use s2s_operator::token::SystemClock;
use s2s_operator::token_server;
use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::scenario::{self, Waits, eventually};
use support::{create_namespace, free_port};
use tokio::sync::watch;

const OP_NS: &str = "s2s-system";

fn key_policy(rotate_every: Duration) -> Policy {
    Policy {
        algorithm: KeyAlgorithm::ES256,
        rotate_every,
        publish_ahead: Duration::from_secs(2),
        retire_after: Duration::from_secs(3),
    }
}

fn fast_lease() -> Timing {
    Timing {
        lease_duration: Duration::from_millis(2000),
        renew_deadline: Duration::from_millis(1500),
        renew_every: Duration::from_millis(250),
    }
}

/// A controller replica running in this process.
struct Replica {
    stop: watch::Sender<bool>,
    leading: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    task: tokio::task::JoinHandle<()>,
}

fn start_controller(client: Client, identity: &str, issuer: &str, policy: Policy) -> Replica {
    let (stop, stop_rx) = watch::channel(false);
    let (leading_tx, leading) = watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    let options = controller::Options {
        namespace: OP_NS.into(),
        issuer: issuer.into(),
        key_policy: policy,
        identity: identity.into(),
        lease: fast_lease(),
        concurrency: 16,
        revocation_prune_every: Duration::from_secs(1),
        max_token_lifetime: Duration::from_secs(3600),
        allow_unclaimed_audiences: false,
        tls: None,
    };
    let task = tokio::spawn(controller::run(
        client,
        options,
        Arc::new(SystemClock),
        metrics.clone(),
        leading_tx,
        stop_rx,
    ));
    Replica {
        stop,
        leading,
        metrics,
        task,
    }
}

impl Replica {
    async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// A token server running in this process; returns its stop handle.
async fn start_token_server(client: Client, port: u16, issuer: &str) -> watch::Sender<bool> {
    start_token_server_auditing(client, port, issuer, s2s_operator::http::audit::Target::Off).await
}

async fn start_token_server_auditing(
    client: Client,
    port: u16,
    issuer: &str,
    audit: s2s_operator::http::audit::Target,
) -> watch::Sender<bool> {
    let (stop, stop_rx) = watch::channel(false);
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel::<SocketAddr>();
    let options = token_server::Options {
        namespace: OP_NS.into(),
        issuer: issuer.into(),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        tls: None,
        webhook: None,
        max_token_lifetime: Duration::from_secs(3600),
        allow_unclaimed_audiences: false,
        limits: Default::default(),
        audit,
        shutdown_drain: Duration::from_millis(100),
    };
    tokio::spawn(async move {
        if let Err(e) = token_server::run(
            client,
            options,
            Arc::new(SystemClock),
            stop_rx,
            Some(bound_tx),
        )
        .await
        {
            panic!("token server: {e}");
        }
    });
    bound_rx.await.expect("token server listens");
    stop
}

async fn wait_ready(issuer: &str) {
    eventually(Duration::from_secs(30), "token-server /readyz", || async {
        let r = support::http()
            .get(format!("{issuer}/readyz"))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_and_token_server_run_the_credentials_lifecycle() {
    let api = ApiServer::new();
    let admin = api.client();
    create_namespace(&admin, OP_NS).await;
    create_namespace(&admin, "team").await;
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let replica = start_controller(
        api.client_as("s2s-controller"),
        "replica-a",
        &issuer,
        key_policy(Duration::from_secs(30 * 24 * 3600)),
    );
    let server = start_token_server(api.client_as("s2s-token-server"), port, &issuer).await;
    wait_ready(&issuer).await;

    let waits = Waits {
        converge: Duration::from_secs(20),
        gc: Duration::from_secs(10),
    };
    scenario::credentials_lifecycle(admin.clone(), "team", &issuer, &waits).await;

    // Events for what a user must see; never a secret in them.
    let events = scenario::events_for(admin.clone(), "team", "worker").await;
    let reasons: BTreeSet<&str> = events.iter().map(|e| e.1.as_str()).collect();
    for r in ["Issued", "Rotated", "CredentialRetired"] {
        assert!(reasons.contains(r), "no {r} Event in {events:?}");
    }
    let squatter = scenario::events_for(admin.clone(), "team", "squatter").await;
    assert!(
        squatter
            .iter()
            .any(|e| e.0 == "Warning" && e.1 == "SecretConflict"),
        "{squatter:?}"
    );
    assert_eq!(
        squatter.iter().filter(|e| e.1 == "SecretConflict").count(),
        1,
        "a conflict is reported once, not on every pass"
    );

    // TrustedIssuers get their keys reported in status: inline keys, and an IdP's discovery.
    let idp = support::idp::Idp::start().await;
    let inline_key = s2s_operator::crypto::generate_key(KeyAlgorithm::ES256).unwrap();
    let issuers: Api<s2s_operator::api::TrustedIssuer> = Api::namespaced(admin.clone(), "team");
    for ti in [
        json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "TrustedIssuer",
               "metadata": {"name": "airgapped", "namespace": "team"},
               "spec": {"issuer": "https://idp.airgapped.example", "audiences": ["s2s"],
                        "jwks": {"keys": [inline_key.public_jwk]}}}),
        json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "TrustedIssuer",
               "metadata": {"name": "partner", "namespace": "team"},
               "spec": {"issuer": idp.issuer(), "audiences": ["s2s"]}}),
    ] {
        issuers
            .create(&PostParams::default(), &serde_json::from_value(ti).unwrap())
            .await
            .unwrap();
    }
    for name in ["airgapped", "partner"] {
        let ti = eventually(
            Duration::from_secs(20),
            &format!("TrustedIssuer {name} Ready"),
            || async {
                let ti = issuers.get(name).await.ok()?;
                let st = ti.status.clone()?;
                st.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && format!("{:?}", c.status) == "True")
                    .then_some(st)
            },
        )
        .await;
        assert!(ti.key_count.unwrap() >= 1, "{name}: {ti:?}");
        assert!(!ti.key_ids.is_empty());
        assert!(ti.last_error.is_none());
    }

    // A token revoked through one token server is inactive in another (the deny list lives
    // in the API), and expired entries leave the list.
    let port2 = free_port();
    let issuer2 = format!("http://127.0.0.1:{port2}");
    let server2 = start_token_server(api.client_as("s2s-token-server"), port2, &issuer).await;
    wait_ready(&issuer2).await;
    let audience = "https://orders.team.example.com";
    let accounts: Api<s2s_operator::api::ServiceAccount> = Api::namespaced(admin.clone(), "team");
    let grants: Api<s2s_operator::api::TokenGrant> = Api::namespaced(admin.clone(), "team");
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
                "metadata": {"name": "rev", "namespace": "team"},
                "spec": {"scopes": ["orders:read"], "audiences": [audience], "authentication": {"clientSecret": {"secretName": "rev"}}}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    grants
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
                "metadata": {"name": "rev", "namespace": "team"},
                "spec": {"subject": {"serviceAccount": {"name": "rev"}}, "audience": audience, "scopes": ["orders:read"]}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    scenario::wait_ready(&accounts, "rev", Duration::from_secs(20)).await;
    let rev = scenario::strings(
        &Api::<Secret>::namespaced(admin.clone(), "team")
            .get("rev")
            .await
            .unwrap(),
    );
    let (id, secret) = (rev["client_id"].clone(), rev["client_secret"].clone());
    let token = eventually(Duration::from_secs(10), "a token from server 1", || async {
        scenario::client_credentials(
            &format!("{issuer}/oauth2/token"),
            &id,
            &secret,
            audience,
            "orders:read",
        )
        .await
        .map_err(|e| eprintln!("token from server 1: {e}"))
        .ok()
    })
    .await;
    let form = |url: String, body: String| {
        let (id, secret) = (id.clone(), secret.clone());
        async move {
            let r = support::http()
                .post(url)
                .basic_auth(id, Some(secret))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let token_param = format!("token={token}");
    let active = |url: String| {
        let f = form(url, token_param.clone());
        async move { f.await.1["active"].as_bool() }
    };
    eventually(
        Duration::from_secs(10),
        "server 2 to know the token",
        || async {
            (active(format!("{issuer2}/oauth2/introspect")).await == Some(true)).then_some(())
        },
    )
    .await;
    let (status, _) = form(format!("{issuer}/oauth2/revoke"), token_param.clone()).await;
    assert_eq!(status, 200);
    eventually(
        Duration::from_secs(10),
        "server 2 to see the revocation",
        || async {
            (active(format!("{issuer2}/oauth2/introspect")).await == Some(false)).then_some(())
        },
    )
    .await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(admin.clone(), OP_NS);
    cms.patch(
        "s2s-revocations",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"data": {"j.long-expired": "1"}})),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "expired entries pruned",
        || async {
            let cm = cms.get("s2s-revocations").await.ok()?;
            let data = cm.data.unwrap_or_default();
            (!data.contains_key("j.long-expired") && data.len() == 1).then_some(())
        },
    )
    .await;
    let _ = server2.send(true);

    // The signing keys live in one Secret in the operator namespace, without an owner.
    let keys: Api<Secret> = Api::namespaced(admin.clone(), OP_NS);
    let k = keys.get("s2s-signing-keys").await.unwrap();
    assert!(k.metadata.owner_references.is_none());

    let _ = server.send(true);
    replica.shutdown().await;

    // RBAC: every request each identity made is allowed by the chart, and every rule the
    // chart grants was used (nothing extra), except four.
    let requests = api.requests();
    for user in ["s2s-controller", "s2s-token-server"] {
        support::rbac::check_both_ways(&requests, OP_NS, user, |verb, group, resource| {
            // Granted for paths this scenario does not reach: kube's event Recorder patches
            // an Event when the same one repeats within minutes; TokenGrants are patched only
            // to remove the finalizer earlier versions added (tests/token_grants.rs has such
            // grants and holds that rule to its use).
            !(user == "s2s-controller"
                && [
                    ("patch", "events.k8s.io", "events"),
                    ("patch", "s2s.dev", "tokengrants"),
                    // No AccessToken in this scenario; tests/e2e_cluster.rs
                    // (access_token_lifecycle) writes their status under this RBAC on the
                    // real control plane.
                    ("patch", "s2s.dev", "accesstokens/status"),
                    // The operator's TLS is off here; tests/e2e_inject.rs runs it under this
                    // RBAC on the real control plane.
                    (
                        "get",
                        "admissionregistration.k8s.io",
                        "mutatingwebhookconfigurations",
                    ),
                    (
                        "patch",
                        "admissionregistration.k8s.io",
                        "mutatingwebhookconfigurations",
                    ),
                ]
                .contains(&(verb, group, resource)))
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_a_standby_takes_over() {
    let api = ApiServer::new();
    let admin = api.client();
    create_namespace(&admin, OP_NS).await;
    create_namespace(&admin, "team").await;
    let issuer = "http://127.0.0.1:1";
    let policy = key_policy(Duration::from_secs(3600));
    let a = start_controller(
        api.client_as("replica-a"),
        "replica-a",
        issuer,
        policy.clone(),
    );
    let b = start_controller(api.client_as("replica-b"), "replica-b", issuer, policy);
    let (la, lb) = (a.leading.clone(), b.leading.clone());
    eventually(Duration::from_secs(10), "a leader", || {
        let leading = *la.borrow() || *lb.borrow();
        async move { leading.then_some(()) }
    })
    .await;
    // Watch both for a while: never both.
    for _ in 0..20 {
        assert!(!(*a.leading.borrow() && *b.leading.borrow()), "two leaders");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (leader, standby) = if *a.leading.borrow() { (a, b) } else { (b, a) };
    assert_eq!(leader.metrics.leader.get(), 1);
    assert_eq!(standby.metrics.leader.get(), 0);
    let leader_user = leader_name(&api);
    let accounts: Api<s2s_operator::api::ServiceAccount> = Api::namespaced(admin.clone(), "team");
    let sa = serde_json::from_value(json!({
        "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
        "metadata": {"name": "one", "namespace": "team"},
        "spec": {"authentication": {"clientSecret": {"secretName": "one"}}}
    }))
    .unwrap();
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    scenario::wait_ready(&accounts, "one", Duration::from_secs(20)).await;

    // Only the leader wrote.
    let standby_name = if leader_user == "replica-a" {
        "replica-b"
    } else {
        "replica-a"
    };
    assert!(
        !api.requests().iter().any(|r| r.user == standby_name
            && ["create", "update", "patch"].contains(&r.verb.as_str())
            && r.resource != "leases"),
        "the standby wrote something"
    );

    // The leader goes away (without releasing: as if it crashed); the standby takes over
    // once the Lease expires, and then does the work.
    leader.task.abort();
    let ls = standby.leading.clone();
    eventually(Duration::from_secs(10), "the standby to lead", || {
        let leading = *ls.borrow();
        async move { leading.then_some(()) }
    })
    .await;
    let sa2 = serde_json::from_value(json!({
        "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
        "metadata": {"name": "two", "namespace": "team"},
        "spec": {"authentication": {"clientSecret": {"secretName": "two"}}}
    }))
    .unwrap();
    accounts.create(&PostParams::default(), &sa2).await.unwrap();
    scenario::wait_ready(&accounts, "two", Duration::from_secs(20)).await;

    // Someone else takes the Lease: the leader notices at its next renewal and stops.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(admin.clone(), OP_NS);
    let mut lease = leases.get(controller::LEASE_NAME).await.unwrap();
    let spec = lease.spec.as_mut().unwrap();
    spec.holder_identity = Some("intruder".into());
    spec.lease_duration_seconds = Some(3600);
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    leases
        .replace(controller::LEASE_NAME, &PostParams::default(), &lease)
        .await
        .unwrap();
    let ls = standby.leading.clone();
    eventually(Duration::from_secs(5), "the leader to step down", || {
        let leading = *ls.borrow();
        async move { (!leading).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mark = api.requests().len();
    let sa3 = serde_json::from_value(json!({
        "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
        "metadata": {"name": "three", "namespace": "team"},
        "spec": {"authentication": {"clientSecret": {"secretName": "three"}}}
    }))
    .unwrap();
    accounts.create(&PostParams::default(), &sa3).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !api.requests()[mark..]
            .iter()
            .any(|r| r.user.starts_with("replica-")
                && ["create", "update", "patch"].contains(&r.verb.as_str())
                && r.resource != "leases"),
        "a replica that lost the Lease still wrote"
    );
    assert!(accounts.get("three").await.unwrap().status.is_none());
    standby.shutdown().await;
}

/// Who holds the Lease now.
fn leader_name(api: &ApiServer) -> String {
    let lease = api
        .object(
            "coordination.k8s.io",
            "leases",
            Some(OP_NS),
            controller::LEASE_NAME,
        )
        .expect("a Lease");
    lease["spec"]["holderIdentity"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_rotate_published_before_use_and_replicas_agree() {
    let api = ApiServer::new();
    let admin = api.client();
    create_namespace(&admin, OP_NS).await;
    let (p1, p2) = (free_port(), free_port());
    let (iss1, iss2) = (
        format!("http://127.0.0.1:{p1}"),
        format!("http://127.0.0.1:{p2}"),
    );
    // A new key every 6 s, published 2 s before it signs, kept 3 s after.
    let replica = start_controller(
        api.client_as("s2s-controller"),
        "r",
        &iss1,
        key_policy(Duration::from_secs(6)),
    );
    let s1 = start_token_server(api.client_as("s2s-token-server"), p1, &iss1).await;
    let s2 = start_token_server(api.client_as("s2s-token-server"), p2, &iss2).await;
    wait_ready(&iss1).await;
    wait_ready(&iss2).await;

    // An account to get tokens with.
    create_namespace(&admin, "team").await;
    let accounts: Api<s2s_operator::api::ServiceAccount> = Api::namespaced(admin.clone(), "team");
    let grants: Api<s2s_operator::api::TokenGrant> = Api::namespaced(admin.clone(), "team");
    for o in [
        json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
               "metadata": {"name": "api", "namespace": "team"},
               "spec": {"api": {"audience": "https://api.test", "scopes": [{"name": "read"}]}}}),
        json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
               "metadata": {"name": "worker", "namespace": "team"},
               "spec": {"scopes": ["read"], "audiences": ["https://api.test"], "authentication": {"clientSecret": {"secretName": "worker"}}}}),
    ] {
        accounts
            .create(&PostParams::default(), &serde_json::from_value(o).unwrap())
            .await
            .unwrap();
    }
    let grant = json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
        "metadata": {"name": "worker", "namespace": "team"},
        "spec": {"subject": {"serviceAccount": {"name": "worker"}}, "audience": "https://api.test", "scopes": ["read"]}});
    grants
        .create(
            &PostParams::default(),
            &serde_json::from_value(grant).unwrap(),
        )
        .await
        .unwrap();
    scenario::wait_ready(&accounts, "worker", Duration::from_secs(20)).await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "team");
    let creds = scenario::strings(&secrets.get("worker").await.unwrap());
    for iss in [&iss1, &iss2] {
        eventually(
            Duration::from_secs(10),
            "the token server to know worker",
            || async {
                scenario::client_credentials(
                    &format!("{iss}/oauth2/token"),
                    &creds["client_id"],
                    &creds["client_secret"],
                    "https://api.test",
                    "read",
                )
                .await
                .ok()
            },
        )
        .await;
    }

    // Sample both servers for 14 s: JWKS and a token from each. Every kid a server signs
    // with was in the JWKS well before (publish-ahead 2 s; the first key excepted); every
    // token verifies against the JWKS fetched after it; both servers publish the same keys.
    let start = std::time::Instant::now();
    let mut first_seen: HashMap<String, Duration> = HashMap::new();
    // Keys already published when sampling starts: their publication time is unknown.
    let mut initial: Option<BTreeSet<String>> = None;
    let mut disagreements = 0;
    let mut signed = vec![];
    let kids = |j: &Value| -> BTreeSet<String> {
        j["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    };
    while start.elapsed() < Duration::from_secs(14) {
        let j1 = support::jwks(&iss1).await;
        let j2 = support::jwks(&iss2).await;
        if kids(&j1) != kids(&j2) {
            disagreements += 1;
        }
        initial.get_or_insert_with(|| kids(&j1));
        for kid in kids(&j1) {
            first_seen.entry(kid).or_insert(start.elapsed());
        }
        for iss in [&iss1, &iss2] {
            let token = scenario::client_credentials(
                &format!("{iss}/oauth2/token"),
                &creds["client_id"],
                &creds["client_secret"],
                "https://api.test",
                "read",
            )
            .await
            .unwrap_or_else(|e| panic!("token refused during key rotation: {e}"));
            let jwks = support::jwks(iss).await;
            support::verify_access_token(&token, &jwks, iss, "https://api.test");
            let kid = jwt_simple::prelude::Token::decode_metadata(&token)
                .unwrap()
                .key_id()
                .unwrap()
                .to_owned();
            signed.push((kid, start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let used: BTreeSet<&String> = signed.iter().map(|(k, _)| k).collect();
    assert!(used.len() >= 2, "the signing key rotated: {used:?}");
    for (kid, at) in &signed {
        if initial.as_ref().is_some_and(|i| i.contains(kid)) {
            continue;
        }
        let seen = first_seen[kid];
        assert!(
            *at >= seen + Duration::from_millis(1500),
            "{kid} signed at {at:?} but was published only at {seen:?}"
        );
    }
    // Watches reach the two servers a few ms apart; never for long.
    assert!(
        disagreements <= 3,
        "replicas disagreed {disagreements} times"
    );

    let _ = (s1.send(true), s2.send(true));
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_back_off_and_nothing_is_regenerated() {
    let api = ApiServer::new();
    let admin = api.client();
    create_namespace(&admin, OP_NS).await;
    create_namespace(&admin, "team").await;
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");

    // Before any signing key exists the token server is not ready, and says so per RFC; the
    // audit trail records the refusal.
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_file = audit_dir.path().join("audit.jsonl");
    let server = start_token_server_auditing(
        api.client_as("s2s-token-server"),
        port,
        &issuer,
        s2s_operator::http::audit::Target::File(audit_file.clone()),
    )
    .await;
    let r = support::http()
        .get(format!("{issuer}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let r = support::http()
        .post(format!("{issuer}/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    let record: Value = eventually(Duration::from_secs(5), "the audit record", || async {
        let text = std::fs::read_to_string(&audit_file).ok()?;
        serde_json::from_str(text.lines().next()?).ok()
    })
    .await;
    assert_eq!(record["endpoint"], "token");
    assert_eq!(record["outcome"], "refused");
    assert_eq!(record["error"], "temporarily_unavailable");
    assert_eq!(record["source"], "127.0.0.1");

    let replica = start_controller(
        api.client_as("s2s-controller"),
        "r",
        &issuer,
        key_policy(Duration::from_secs(3600)),
    );
    wait_ready(&issuer).await;
    // The API fails the account's first three Secret creations.
    api.fail_next("create", "secrets", 500, 3);
    let accounts: Api<s2s_operator::api::ServiceAccount> = Api::namespaced(admin.clone(), "team");
    let sa = serde_json::from_value(json!({
        "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
        "metadata": {"name": "worker", "namespace": "team"},
        "spec": {"authentication": {"clientSecret": {"secretName": "worker"}}}
    }))
    .unwrap();
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    let ready = scenario::wait_ready(&accounts, "worker", Duration::from_secs(30)).await;
    let failures: usize = replica
        .metrics
        .render()
        .split(|&b| b == b'\n')
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .filter(|l| l.starts_with("s2s_reconcile_errors_total"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|n| n.parse::<usize>().ok()))
        .sum();
    assert!(failures >= 2, "the failures were counted: {failures}");

    // The status is lost (as after a restore from a backup): the controller adopts what the
    // Secret holds instead of generating new credentials.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "team");
    let before = secrets.get("worker").await.unwrap();
    accounts
        .patch_status(
            "worker",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": null})),
        )
        .await
        .unwrap();
    let adopted = scenario::wait_ready(&accounts, "worker", Duration::from_secs(30)).await;
    let after = secrets.get("worker").await.unwrap();
    assert_eq!(
        scenario::strings(&after),
        scenario::strings(&before),
        "nothing regenerated"
    );
    assert_eq!(
        adopted.status.as_ref().unwrap().client_id,
        ready.status.as_ref().unwrap().client_id
    );
    let d = scenario::strings(&after);
    eventually(
        Duration::from_secs(10),
        "the adopted secret to work",
        || async {
            let r = support::http()
                .post(format!("{issuer}/oauth2/token"))
                .basic_auth(&d["client_id"], Some(&d["client_secret"]))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials")
                .send()
                .await
                .ok()?;
            // No grant: the secret is accepted and the request refused for its target.
            let body: Value = r.json().await.ok()?;
            (body["error"] == "invalid_target").then_some(())
        },
    )
    .await;

    let _ = server.send(true);
    replica.shutdown().await;
}
