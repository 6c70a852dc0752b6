use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::*;
use crate::api::{KeyAlgorithm, TokenGrant};
use crate::k8s::conditions::find;

const ISSUER: &str = "http://127.0.0.1:8080";

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn key() -> SigningKey {
    let k = crypto::generate_key(KeyAlgorithm::ES256).unwrap();
    SigningKey::from_pem(KeyAlgorithm::ES256, k.kid, &k.private_pem).unwrap()
}

const TOKEN: &str = r#"
apiVersion: s2s.dev/v1alpha1
kind: AccessToken
metadata: {name: orders, namespace: team, generation: 1, uid: token-uid}
spec:
  serviceAccountName: worker
  audiences: ["https://orders", "https://stock"]
  secretName: orders-token
  lifetime: 1h
"#;

const ACCOUNTS: &str = r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: orders, namespace: shop}
spec: {api: {audience: "https://orders"}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: stock, namespace: warehouse}
spec: {api: {audience: "https://stock"}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: worker, namespace: team}
spec:
  scopes: ["orders:*"]
  audiences: ["https://orders", "https://stock"]
  authentication: {clientSecret: {secretName: worker-creds}}
status: {clientId: client-1}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: bystander, namespace: elsewhere}
spec: {audiences: ["https://orders"]}
"#;

fn grant(ns: &str, audience: &str, scopes: &str, uid: &str) -> TokenGrant {
    let mut g: TokenGrant = serde_yaml::from_str(&format!(
        r#"
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {{name: worker, namespace: {ns}}}
spec:
  subject: {{serviceAccount: {{name: worker, namespace: team}}}}
  audience: "{audience}"
  scopes: {scopes}
"#
    ))
    .unwrap();
    g.metadata.uid = Some(uid.into());
    g
}

fn accounts() -> Vec<ServiceAccount> {
    serde_yaml::Deserializer::from_str(ACCOUNTS)
        .map(|d| ServiceAccount::deserialize(d).unwrap())
        .collect()
}

fn both_grants() -> Vec<TokenGrant> {
    vec![
        grant(
            "shop",
            "https://orders",
            r#"["orders:read", "orders:write"]"#,
            "uid-o",
        ),
        grant("warehouse", "https://stock", r#"["orders:read"]"#, "uid-s"),
    ]
}

fn authorized(token: &AccessToken, grants: &[TokenGrant]) -> Result<Authorized, Problem> {
    let all = accounts();
    let (accounts, grants) = relevant(token, &all, grants);
    let registry = crate::store::build_registry(&accounts, &grants, false);
    let account = accounts.iter().find(|a| a.name_any() == "worker");
    authorization(token, account, &registry)
}

fn token() -> AccessToken {
    serde_yaml::from_str(TOKEN).unwrap()
}

fn world<'k>(key: &'k SigningKey, authorized: Result<Authorized, Problem>) -> World<'k> {
    World {
        authorized,
        secret: None,
        signing_key: Ok(key),
        issuer: ISSUER,
        max_token_lifetime: Duration::from_secs(24 * 3600),
    }
}

/// Stores the plan as the controller would: status, and the Secret it controls.
fn apply(t: &mut AccessToken, w: &mut World<'_>, plan: &Plan) {
    t.status = Some(plan.status.clone());
    if let Some(s) = &plan.secret {
        w.secret = Some(ObservedSecret {
            data: s.data.clone(),
            controlled: true,
        });
    }
}

fn ready(plan: &Plan) -> (ConditionStatus, String) {
    let c = find(&plan.status.conditions, types::READY).expect("Ready");
    (c.status, c.reason.clone())
}

#[test]
fn only_the_account_its_api_owners_and_its_grants_are_relevant() {
    let all = accounts();
    let mut grants = both_grants();
    grants.push(grant("shop", "https://orders", "[]", "other").tap_subject("bystander"));
    let (accounts, grants) = relevant(&token(), &all, &grants);
    let names: Vec<String> = accounts.iter().map(|a| a.name_any()).collect();
    assert_eq!(names, ["orders", "stock", "worker"]);
    assert_eq!(grants.len(), 2);
}

trait TapSubject {
    fn tap_subject(self, name: &str) -> Self;
}

impl TapSubject for TokenGrant {
    fn tap_subject(mut self, name: &str) -> Self {
        self.spec.subject.service_account.as_mut().unwrap().name = name.into();
        self
    }
}

#[test]
fn a_token_for_both_audiences_with_the_scopes_both_allow_then_renewed() {
    let key = key();
    let mut t = token();
    let mut w = world(&key, authorized(&t, &both_grants()));
    let plan = reconcile(&t, &w, &Context { now: t0() });
    assert_eq!(ready(&plan), (ConditionStatus::True, "Ready".into()));
    let data = &plan.secret.as_ref().expect("a Secret").data;
    let claims = token_in_secret(data).expect("a readable token");
    assert_eq!(claims.aud.as_slice(), ["https://orders", "https://stock"]);
    assert_eq!(claims.scope.as_deref(), Some("orders:read"));
    assert_eq!(claims.sub, "client-1");
    assert_eq!(claims.exp - claims.iat, 3600);
    assert_eq!(
        claims.grants.len(),
        2,
        "names both grants: {:?}",
        claims.grants
    );
    assert_eq!(plan.status.revision, Some(1));
    assert_eq!(plan.status.token_id.as_deref(), Some(claims.jti.as_str()));
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(2400)));
    assert_eq!(plan.events[0].reason, "Issued");
    apply(&mut t, &mut w, &plan);

    // Nothing due: nothing written.
    let again = reconcile(
        &t,
        &w,
        &Context {
            now: t0() + Duration::from_secs(60),
        },
    );
    assert!(again.secret.is_none() && again.events.is_empty());
    assert_eq!(again.status, t.status.clone().unwrap());

    // At renewBefore (a third of the lifetime) ahead of expiry: a new token, revision 2.
    let later = t0() + Duration::from_secs(2400);
    let renewed = reconcile(&t, &w, &Context { now: later });
    let fresh = token_in_secret(&renewed.secret.as_ref().unwrap().data).unwrap();
    assert_ne!(fresh.jti, claims.jti);
    assert_eq!(renewed.status.revision, Some(2));
    assert_eq!(renewed.events[0].reason, "Renewed");
}

#[test]
fn a_missing_grant_is_ready_false_and_takes_the_token_out() {
    let key = key();
    let mut t = token();
    let mut w = world(&key, authorized(&t, &both_grants()));
    let plan = reconcile(&t, &w, &Context { now: t0() });
    apply(&mut t, &mut w, &plan);
    // The warehouse deletes its grant.
    let only_orders = vec![both_grants().remove(0)];
    w.authorized = authorized(&t, &only_orders);
    let plan = reconcile(
        &t,
        &w,
        &Context {
            now: t0() + Duration::from_secs(5),
        },
    );
    assert_eq!(ready(&plan), (ConditionStatus::False, "NotGranted".into()));
    let msg = &find(&plan.status.conditions, types::READY).unwrap().message;
    assert!(msg.contains("https://stock"), "{msg}");
    let kept = &plan.secret.as_ref().expect("the Secret is rewritten").data;
    assert!(keys::ALL.iter().all(|k| !kept.contains_key(*k)));
    assert!(plan.status.token_id.is_none() && plan.status.not_after.is_none());
    assert_eq!(plan.events[0].reason, "NotGranted");
    apply(&mut t, &mut w, &plan);
    // The grant comes back: a new token, a new revision.
    w.authorized = authorized(&t, &both_grants());
    let plan = reconcile(
        &t,
        &w,
        &Context {
            now: t0() + Duration::from_secs(10),
        },
    );
    assert_eq!(ready(&plan), (ConditionStatus::True, "Ready".into()));
    assert_eq!(plan.status.revision, Some(2));
}

#[test]
fn bad_requests_say_why_and_write_nothing() {
    let key = key();
    let mut t = token();
    t.spec.scopes = vec!["orders:write".into()];
    let w = world(&key, authorized(&t, &both_grants()));
    let plan = reconcile(&t, &w, &Context { now: t0() });
    assert_eq!(
        ready(&plan),
        (ConditionStatus::False, "ScopeNotGranted".into())
    );
    assert!(plan.secret.is_none());

    let mut t = token();
    t.spec.audiences.push("https://nowhere".into());
    let plan = reconcile(
        &t,
        &world(&key, authorized(&t, &both_grants())),
        &Context { now: t0() },
    );
    assert_eq!(ready(&plan), (ConditionStatus::False, "NotGranted".into()));

    let mut t = token();
    t.spec.service_account_name = "ghost".into();
    let plan = reconcile(
        &t,
        &world(&key, authorized(&t, &both_grants())),
        &Context { now: t0() },
    );
    assert_eq!(ready(&plan), (ConditionStatus::False, "NotFound".into()));

    // A Secret of that name the AccessToken does not control is left alone.
    let t = token();
    let mut w = world(&key, authorized(&t, &both_grants()));
    w.secret = Some(ObservedSecret {
        data: BTreeMap::from([("access_token".to_owned(), "someone else's".to_owned())]),
        controlled: false,
    });
    let plan = reconcile(&t, &w, &Context { now: t0() });
    assert_eq!(
        ready(&plan),
        (ConditionStatus::False, "SecretConflict".into())
    );
    assert!(plan.secret.is_none());
}

#[test]
fn no_signing_key_fails_with_backoff_and_a_lost_secret_is_reissued() {
    let key = key();
    let mut t = token();
    let mut w = world(&key, authorized(&t, &both_grants()));
    w.signing_key = Err("not yet".into());
    let plan = reconcile(&t, &w, &Context { now: t0() });
    assert!(plan.failed);
    assert_eq!(ready(&plan), (ConditionStatus::False, "IssueFailed".into()));
    w.signing_key = Ok(&key);
    let plan = reconcile(&t, &w, &Context { now: t0() });
    apply(&mut t, &mut w, &plan);
    // Someone empties the Secret: the next pass writes a token again.
    w.secret.as_mut().unwrap().data.clear();
    let plan = reconcile(
        &t,
        &w,
        &Context {
            now: t0() + Duration::from_secs(1),
        },
    );
    assert!(plan.secret.is_some());
    assert_eq!(plan.status.revision, Some(2));
}

#[test]
fn a_new_rotate_annotation_renews_now_once_and_is_recorded() {
    let key = key();
    let mut t = token();
    let mut w = world(&key, authorized(&t, &both_grants()));
    let first = reconcile(&t, &w, &Context { now: t0() });
    apply(&mut t, &mut w, &first);
    let jti = first.status.token_id.clone().unwrap();

    let at = t0() + Duration::from_secs(60);
    t.metadata.annotations = Some([(ROTATE_ANNOTATION.to_owned(), "v1".to_owned())].into());
    let renewed = reconcile(&t, &w, &Context { now: at });
    let fresh = token_in_secret(&renewed.secret.as_ref().expect("a new token").data).unwrap();
    assert_ne!(fresh.jti, jti);
    assert_eq!(renewed.status.revision, Some(2));
    assert_eq!(renewed.status.token_id.as_deref(), Some(fresh.jti.as_str()));
    assert_eq!(renewed.status.rotation_request.as_deref(), Some("v1"));
    assert_eq!(renewed.events[0].reason, "Renewed");
    assert!(
        renewed.events[0]
            .message
            .contains("renewal requested (s2s.dev/rotate)"),
        "{:?}",
        renewed.events
    );
    assert_eq!(ready(&renewed), (ConditionStatus::True, "Ready".into()));
    apply(&mut t, &mut w, &renewed);

    // The value acted on: nothing more until it changes.
    let again = reconcile(&t, &w, &Context { now: at });
    assert!(again.secret.is_none() && again.events.is_empty());
    t.metadata.annotations = None;
    assert!(reconcile(&t, &w, &Context { now: at }).secret.is_none());

    // A request that cannot be met yet (no signing key) stays pending, the token in place.
    t.metadata.annotations = Some([(ROTATE_ANNOTATION.to_owned(), "v2".to_owned())].into());
    w.signing_key = Err("no key".into());
    let failed = reconcile(&t, &w, &Context { now: at });
    assert!(failed.failed && failed.secret.is_none());
    assert_eq!(failed.status.rotation_request.as_deref(), Some("v1"));
    assert_eq!(ready(&failed), (ConditionStatus::True, "Ready".into()));
    w.signing_key = Ok(&key);
    let done = reconcile(&t, &w, &Context { now: at });
    assert_eq!(done.status.rotation_request.as_deref(), Some("v2"));
    assert_eq!(done.status.revision, Some(3));

    // One present at the first issue is answered by it.
    let mut n = token();
    n.metadata.annotations = Some([(ROTATE_ANNOTATION.to_owned(), "v0".to_owned())].into());
    let w = world(&key, authorized(&n, &both_grants()));
    let first = reconcile(&n, &w, &Context { now: t0() });
    assert_eq!(first.status.rotation_request.as_deref(), Some("v0"));
    assert_eq!(first.events[0].reason, "Issued");
}
