//! Brute-force protection over real HTTP against `dev`: 10 000 wrong secrets for one client
//! while another client keeps getting tokens from the same address.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::{DevServer, http, manifests_dir};

const WORLD: &str = r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: orders-api, namespace: shop}
spec: {api: {audience: "https://orders.test", scopes: [{name: "orders:read"}]}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: good, namespace: team}
spec:
  scopes: ["orders:read"]
  audiences: ["https://orders.test"]
  authentication: {clientSecret: {secretName: good}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: victim, namespace: team}
spec:
  scopes: ["orders:read"]
  audiences: ["https://orders.test"]
  authentication: {clientSecret: {secretName: victim}}
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: team, namespace: shop}
spec: {subject: {serviceAccount: {name: good, namespace: team}}, audience: "https://orders.test", scopes: ["orders:read"]}
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: victim, namespace: shop}
spec: {subject: {serviceAccount: {name: victim, namespace: team}}, audience: "https://orders.test", scopes: ["orders:read"]}
"#;

async fn token(url: &str, id: &str, secret: &str) -> (u16, Value) {
    let r = http()
        .post(url)
        .basic_auth(id, Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn metric(text: &str, event: &str) -> u64 {
    text.lines()
        .find(|l| {
            l.starts_with("s2s_auth_limiter_total") && l.contains(&format!("event=\"{event}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammering_one_client_locks_it_and_leaves_the_others_alone() {
    let manifests = manifests_dir(&[("world.yaml", WORLD)]);
    let state = tempfile::tempdir().unwrap();
    let s = DevServer::start(
        manifests.path(),
        state.path(),
        &["--auth-failures", "10", "--auth-lockout-max", "2s"],
    );
    let url = s.token_url();
    let good = s.secret("team", "good");
    let victim = s.secret("team", "victim");
    assert_eq!(
        token(&url, &good["client_id"], &good["client_secret"])
            .await
            .0,
        200
    );

    // The good client works throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let good_loop = {
        let (url, id, secret) = (
            url.clone(),
            good["client_id"].clone(),
            good["client_secret"].clone(),
        );
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if token(&url, &id, &secret).await.0 == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    // 10 000 wrong secrets for the victim, 16 at a time; every answer is the same 401.
    let attempts = Arc::new(AtomicU64::new(0));
    let mut attackers = vec![];
    for _ in 0..16 {
        let (url, id, attempts) = (url.clone(), victim["client_id"].clone(), attempts.clone());
        attackers.push(tokio::spawn(async move {
            let mut answers = std::collections::BTreeSet::new();
            while attempts.fetch_add(1, Ordering::Relaxed) < 10_000 {
                let (status, body) = token(&url, &id, "guess").await;
                answers.insert((status, body.to_string()));
            }
            answers
        }));
    }
    let mut answers = std::collections::BTreeSet::new();
    for a in attackers {
        answers.extend(a.await.unwrap());
    }
    assert_eq!(
        answers.len(),
        1,
        "locked or not, the answer is the same: {answers:?}"
    );
    let (status, body) = answers.into_iter().next().unwrap();
    assert_eq!(status, 401);
    assert!(body.contains("invalid_client"));

    // While locked, even the right secret is refused, exactly like an unknown client.
    let (status, locked) = token(&url, &victim["client_id"], &victim["client_secret"]).await;
    let (_, unknown) = token(&url, "no-such-client", "x").await;
    assert_eq!((status, &locked), (401, &unknown));

    stop.store(true, Ordering::Relaxed);
    good_loop.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "the good client was never refused"
    );
    assert!(ok.load(Ordering::Relaxed) > 0);

    let metrics = http()
        .get(format!("{}/metrics", s.issuer))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metric(&metrics, "lockout") >= 1, "{metrics}");
    let refused =
        metric(&metrics, "refused_client_locked") + metric(&metrics, "refused_source_over_budget");
    assert!(
        refused > 9000,
        "most attempts never reached a digest: {refused}"
    );

    // The lockout is short: after it ends the right secret works again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = token(&url, &victim["client_id"], &victim["client_secret"]).await;
    assert_eq!(status, 200, "{body}");
    assert!(!s.logs().contains(&victim["client_secret"]));
}

#[tokio::test]
async fn a_source_spraying_client_ids_is_slowed_but_its_good_clients_are_not() {
    let manifests = manifests_dir(&[("world.yaml", WORLD)]);
    let state = tempfile::tempdir().unwrap();
    let s = DevServer::start(
        manifests.path(),
        state.path(),
        &["--auth-source-failures", "20"],
    );
    let url = s.token_url();
    let good = s.secret("team", "good");
    assert_eq!(
        token(&url, &good["client_id"], &good["client_secret"])
            .await
            .0,
        200
    );
    for i in 0..40 {
        token(&url, &format!("sprayed-{i}"), "x").await;
    }
    let metrics = http()
        .get(format!("{}/metrics", s.issuer))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric(&metrics, "refused_source_over_budget") >= 15,
        "{metrics}"
    );
    // The victim never succeeded from here: refused while the source is over budget; the
    // good client goes on.
    let victim = s.secret("team", "victim");
    assert_eq!(
        token(&url, &victim["client_id"], &victim["client_secret"])
            .await
            .0,
        401
    );
    assert_eq!(
        token(&url, &good["client_id"], &good["client_secret"])
            .await
            .0,
        200
    );
}
