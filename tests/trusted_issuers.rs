//! TrustedIssuer key management over real HTTP against the test IdP: discovery, jwksUri,
//! inline keys, rotation picked up by an unknown-kid refetch (rate-limited), an IdP that
//! goes down (last good keys kept), keys aging out, deletion.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use s2s_operator::api::TrustedIssuer;
use s2s_operator::api::conditions::reasons;
use s2s_operator::crypto::KeyAlgorithm;
use s2s_operator::token::Clock;
use s2s_operator::trusted_issuer::cache::IssuerCache;
use s2s_operator::trusted_issuer::fetch::Fetcher;
use s2s_operator::trusted_issuer::verify::VerifyError;
use serde_json::json;
use support::idp::Idp;

/// A clock the test moves by hand, starting at the real time (the IdP mints with it).
struct TestClock(AtomicU64);

impl TestClock {
    fn new() -> Arc<Self> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        Arc::new(TestClock(AtomicU64::new(now)))
    }
    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_secs(), Ordering::SeqCst);
    }
    fn unix(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl Clock for TestClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.unix())
    }
}

fn issuer(name: &str, spec: serde_json::Value) -> TrustedIssuer {
    serde_json::from_value(json!({
        "apiVersion": "s2s.dev/v1alpha1",
        "kind": "TrustedIssuer",
        "metadata": {"name": name, "namespace": "team"},
        "spec": spec,
    }))
    .unwrap()
}

fn cache(clock: &Arc<TestClock>) -> IssuerCache {
    IssuerCache::new(Fetcher::new(None), clock.clone())
}

fn claims() -> serde_json::Value {
    json!({"sub": "ci", "aud": "api://orders"})
}

/// Claims valid at the test clock's time.
fn claims_at(clock: &TestClock) -> serde_json::Value {
    json!({"sub": "ci", "aud": "api://orders", "iat": clock.unix(), "exp": clock.unix() + 300})
}

#[tokio::test]
async fn discovery_fetches_keys_and_tokens_verify() {
    let idp = Idp::start().await;
    let clock = TestClock::new();
    let cache = cache(&clock);
    let mut snapshots = cache.subscribe();
    cache.set_issuers([&issuer(
        "idp",
        json!({"issuer": idp.issuer(), "audiences": ["api://orders"]}),
    )]);
    cache.refresh_due().await;
    assert!(snapshots.has_changed().unwrap());
    let status = cache.status("team/idp").unwrap();
    assert!(status.ready, "{status:?}");
    assert_eq!(status.reason, reasons::READY);
    assert_eq!(status.issuer.as_deref(), Some(idp.issuer().as_str()));
    assert_eq!(status.jwks_uri.as_deref(), Some(idp.jwks_uri().as_str()));
    assert_eq!(status.key_count, 2);
    assert!(status.key_ids.contains(&idp.kid(KeyAlgorithm::ES256)));
    assert_eq!(status.last_fetch_time, Some(clock.now()));
    assert_eq!((idp.discovery_count(), idp.fetch_count()), (1, 1));

    let snap = snapshots.borrow_and_update().clone();
    for alg in [KeyAlgorithm::RS256, KeyAlgorithm::ES256] {
        let jwt = idp.mint_with(alg, None, json!({}), claims());
        let v = snap.verify_any(&jwt, clock.unix()).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].trusted_issuer, "team/idp");
        assert_eq!(v[0].sub, "ci");
    }
    // Not due again before the refresh interval.
    cache.refresh_due().await;
    assert_eq!(idp.fetch_count(), 1);
    clock.advance(Duration::from_secs(3600));
    cache.refresh_due().await;
    assert_eq!(idp.fetch_count(), 2);
}

#[tokio::test]
async fn discovery_naming_another_issuer_is_refused() {
    let idp = Idp::start().await;
    idp.set_discovery_issuer(Some("https://evil.example.com".into()));
    let clock = TestClock::new();
    let cache = cache(&clock);
    cache.set_issuers([&issuer(
        "idp",
        json!({"issuer": idp.issuer(), "audiences": ["api://orders"]}),
    )]);
    cache.refresh_due().await;
    let status = cache.status("team/idp").unwrap();
    assert_eq!(status.reason, reasons::FETCH_FAILED, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("evil.example.com"),
        "{status:?}"
    );
    assert_eq!(idp.fetch_count(), 0, "the JWKS it names is not fetched");
    let jwt = idp.mint(claims());
    assert!(matches!(
        cache.snapshot().verify_any(&jwt, clock.unix()),
        Err(VerifyError::UnknownKid { .. })
    ));
}

#[tokio::test]
async fn rotation_is_picked_up_by_one_rate_limited_unknown_kid_refetch() {
    let idp = Idp::start().await;
    let clock = TestClock::new();
    let cache = cache(&clock);
    cache.set_issuers([&issuer(
        "idp",
        json!({"issuer": idp.issuer(), "jwksUri": idp.jwks_uri(), "audiences": ["api://orders"]}),
    )]);
    cache.refresh_due().await;
    assert_eq!(idp.fetch_count(), 1);

    idp.rotate();
    let jwt = idp.mint(claims());
    let err = cache.snapshot().verify_any(&jwt, clock.unix()).unwrap_err();
    let VerifyError::UnknownKid { trusted_issuer, .. } = err else {
        panic!("{err:?}")
    };
    assert!(cache.request_refresh(&trusted_issuer));
    // A second unknown kid within 30s: no second fetch.
    assert!(!cache.request_refresh(&trusted_issuer));
    let runner = tokio::spawn(cache.clone().run(std::future::pending()));
    let mut snapshots = cache.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        snapshots.wait_for(|s| s.verify_any(&jwt, clock.unix()).is_ok()),
    )
    .await
    .expect("rotated key fetched")
    .unwrap();
    assert_eq!(idp.fetch_count(), 2);

    idp.rotate();
    let again = idp.mint(claims());
    clock.advance(Duration::from_secs(10));
    assert!(!cache.request_refresh("team/idp"), "rate limited for 30s");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(idp.fetch_count(), 2);
    assert!(cache.snapshot().verify_any(&again, clock.unix()).is_err());
    clock.advance(Duration::from_secs(20));
    assert!(cache.request_refresh("team/idp"));
    tokio::time::timeout(
        Duration::from_secs(10),
        snapshots.wait_for(|s| s.verify_any(&again, clock.unix()).is_ok()),
    )
    .await
    .expect("second rotation fetched")
    .unwrap();
    assert_eq!(idp.fetch_count(), 3);
    runner.abort();
}

#[tokio::test]
async fn a_down_idp_keeps_the_last_good_keys_until_they_age_out() {
    let idp = Idp::start().await;
    let clock = TestClock::new();
    let cache = cache(&clock);
    cache.set_issuers([&issuer(
        "idp",
        json!({"issuer": idp.issuer(), "audiences": ["api://orders"],
               "refreshInterval": "1m", "maxKeyAge": "1h"}),
    )]);
    cache.refresh_due().await;
    assert!(cache.status("team/idp").unwrap().ready);

    idp.set_down(true);
    clock.advance(Duration::from_secs(60));
    cache.refresh_due().await;
    let status = cache.status("team/idp").unwrap();
    assert_eq!(status.reason, reasons::FETCH_FAILED, "{status:?}");
    assert!(!status.ready);
    assert_eq!(status.key_count, 2);
    assert!(
        status.message.contains("keeping the last good 2 key(s)"),
        "{}",
        status.message
    );
    assert!(
        status.last_error.as_deref().unwrap().contains("503"),
        "{status:?}"
    );
    let jwt = idp.mint(claims());
    assert!(cache.snapshot().verify_any(&jwt, clock.unix()).is_ok());

    // An hour after the last success, the keys are gone.
    clock.advance(Duration::from_secs(3600));
    cache.refresh_due().await;
    let status = cache.status("team/idp").unwrap();
    assert_eq!(status.key_count, 0);
    assert!(status.message.contains("aged out"), "{}", status.message);
    let jwt = idp.mint(claims_at(&clock));
    assert!(matches!(
        cache.snapshot().verify_any(&jwt, clock.unix()),
        Err(VerifyError::UnknownKid { .. })
    ));

    // Back up: the next fetch restores them.
    idp.set_down(false);
    clock.advance(Duration::from_secs(300));
    cache.refresh_due().await;
    assert!(cache.status("team/idp").unwrap().ready);
    assert!(cache.snapshot().verify_any(&jwt, clock.unix()).is_ok());
}

#[tokio::test]
async fn deletion_and_inline_keys() {
    let idp = Idp::start().await;
    let clock = TestClock::new();
    let cache = cache(&clock);
    let inline = issuer(
        "inline",
        json!({"issuer": idp.issuer(), "audiences": ["api://orders"], "jwks": idp.jwks()}),
    );
    let fetched = issuer(
        "fetched",
        json!({"issuer": idp.issuer(), "audiences": ["api://orders"]}),
    );
    cache.set_issuers([&inline, &fetched]);
    // Inline keys are in force without any fetch.
    let jwt = idp.mint(claims());
    let accepted = cache.snapshot().verify_any(&jwt, clock.unix()).unwrap();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].trusted_issuer, "team/inline");
    cache.refresh_due().await;
    let accepted = cache.snapshot().verify_any(&jwt, clock.unix()).unwrap();
    assert_eq!(accepted.len(), 2, "two TrustedIssuers trust the same IdP");

    let mut snapshots = cache.subscribe();
    snapshots.mark_unchanged();
    cache.set_issuers([&fetched]);
    assert!(snapshots.has_changed().unwrap());
    let snap = snapshots.borrow_and_update().clone();
    assert!(snap.config("team/inline").is_none());
    let accepted = snap.verify_any(&jwt, clock.unix()).unwrap();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].trusted_issuer, "team/fetched");

    cache.set_issuers(std::iter::empty());
    assert!(cache.snapshot().is_empty());
    assert_eq!(
        cache.snapshot().verify_any(&jwt, clock.unix()),
        Err(VerifyError::UnknownIssuer)
    );
}
