use std::time::{Duration, SystemTime};

use super::*;
use crate::api::KeyAlgorithm;
use crate::api::conditions::ConditionStatus;
use crate::k8s::conditions::find;

const MIN: Duration = Duration::from_secs(60);
const ISSUER: &str = "http://127.0.0.1:8080";

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn key() -> SigningKey {
    let k = crypto::generate_key(KeyAlgorithm::ES256).unwrap();
    SigningKey::from_pem(KeyAlgorithm::ES256, k.kid, &k.private_pem).unwrap()
}

fn grant(yaml: &str) -> TokenGrant {
    let mut g: TokenGrant = serde_yaml::from_str(yaml).unwrap();
    g.metadata.uid = Some("grant-uid".into());
    g
}

/// A grant in `shop` for the `shop` API, with an output token (1h, renewed 20m ahead).
const OUTPUT: &str = r#"
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: worker-orders, namespace: shop, generation: 1}
spec:
  subject: {serviceAccount: {name: worker, namespace: team}}
  audience: "https://orders"
  scopes: ["orders:*", "billing:read"]
  tenant: acme
  output: {secretName: orders-token, lifetime: 1h}
"#;

const PLAIN: &str = r#"
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: worker-orders, namespace: shop, generation: 1}
spec:
  subject: {serviceAccount: {name: worker, namespace: team}}
  audience: "https://orders"
"#;

fn world(key: &SigningKey) -> World<'_> {
    World {
        audience_owner: Some("shop/orders".into()),
        defined_scopes: vec!["orders:read".into(), "orders:write".into()],
        allow_unclaimed_audiences: false,
        subject: SubjectView::Account(AccountView {
            client_id: Some("client-1".into()),
            scopes: vec!["orders:read".into(), "billing:read".into()],
            disabled: false,
        }),
        secret: None,
        signing_key: Ok(key),
        issuer: ISSUER,
        max_token_lifetime: Duration::from_secs(24 * 3600),
    }
}

fn at(now: SystemTime) -> Context {
    Context { now }
}

/// Applies a plan the way the controller would: status stored, the Secret written
/// (controlled by the grant).
fn apply(g: &mut TokenGrant, w: &mut World<'_>, plan: &Plan) {
    g.status = Some(plan.status.clone());
    if let Some(s) = &plan.secret {
        w.secret = Some(ObservedSecret {
            data: s.data.clone(),
            controlled: true,
        });
    }
}

fn ready(plan: &Plan) -> (ConditionStatus, String, String) {
    let c = find(&plan.status.conditions, types::READY).expect("Ready");
    (c.status, c.reason.clone(), c.message.clone())
}

fn issuing(plan: &Plan) -> (ConditionStatus, String) {
    let c = find(&plan.status.conditions, types::ISSUING).expect("Issuing");
    (c.status, c.reason.clone())
}

fn claims_of(plan: &Plan) -> AccessClaims {
    token_in_secret(&plan.secret.as_ref().expect("a Secret").data).expect("a token")
}

#[test]
fn an_audience_owned_elsewhere_or_by_nobody_opens_nothing() {
    let k = key();
    let g = grant(PLAIN);
    let mut w = world(&k);
    w.audience_owner = Some("other/orders".into());
    let plan = reconcile(&g, &w, &at(t0()));
    let (status, reason, message) = ready(&plan);
    assert_eq!(status, ConditionStatus::False);
    assert_eq!(reason, reasons::AUDIENCE_NOT_OWNED);
    assert!(message.contains("other/orders"), "{message}");
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == reasons::AUDIENCE_NOT_OWNED)
    );

    w.audience_owner = None;
    assert_eq!(
        ready(&reconcile(&g, &w, &at(t0()))).1,
        reasons::AUDIENCE_NOT_OWNED
    );
    // The operator-wide switch opens unclaimed audiences, never one claimed elsewhere.
    w.allow_unclaimed_audiences = true;
    assert_eq!(
        ready(&reconcile(&g, &w, &at(t0()))).0,
        ConditionStatus::True
    );
    w.audience_owner = Some("other/orders".into());
    assert_eq!(
        ready(&reconcile(&g, &w, &at(t0()))).1,
        reasons::AUDIENCE_NOT_OWNED
    );
}

#[test]
fn a_plain_grant_is_ready_with_its_generation_and_no_issuing_condition() {
    let k = key();
    let plan = reconcile(&grant(PLAIN), &world(&k), &at(t0()));
    assert_eq!(ready(&plan).0, ConditionStatus::True);
    assert_eq!(plan.status.observed_generation, Some(1));
    assert!(find(&plan.status.conditions, types::ISSUING).is_none());
    assert!(plan.secret.is_none() && plan.revoke.is_none());
}

#[test]
fn an_unresolved_subject_is_not_found() {
    let k = key();
    let mut w = world(&k);
    let g = grant(PLAIN);
    w.subject = resolve_subject(&g, [], |_, _| true);
    let plan = reconcile(&g, &w, &at(t0()));
    let (status, reason, message) = ready(&plan);
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::False, reasons::NOT_FOUND)
    );
    assert_eq!(message, "ServiceAccount team/worker does not exist");

    let issuer_grant = grant(
        r#"
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: partner, namespace: shop}
spec:
  subject: {issuerRef: {name: partner-idp}, subject: "partner-svc"}
  audience: "https://orders"
"#,
    );
    w.subject = resolve_subject(&issuer_grant, [], |_, _| false);
    let (_, reason, message) = ready(&reconcile(&issuer_grant, &w, &at(t0())));
    assert_eq!(reason, reasons::NOT_FOUND);
    assert_eq!(message, "TrustedIssuer shop/partner-idp does not exist");
    w.subject = resolve_subject(&issuer_grant, [], |ns, name| {
        ns == "shop" && name == "partner-idp"
    });
    assert_eq!(w.subject, SubjectView::Issuer("partner-svc".into()));
    assert_eq!(
        ready(&reconcile(&issuer_grant, &w, &at(t0()))).0,
        ConditionStatus::True
    );
}

#[test]
fn output_needs_a_service_account_subject() {
    let k = key();
    let mut w = world(&k);
    w.subject = SubjectView::Issuer("partner-svc".into());
    let plan = reconcile(&grant(OUTPUT), &w, &at(t0()));
    let (_, reason, message) = ready(&plan);
    assert_eq!(reason, reasons::INVALID_SPEC);
    assert_eq!(message, "output needs a ServiceAccount subject");
    assert!(plan.secret.is_none());
}

#[test]
fn first_issue_mints_an_rfc9068_token_into_the_secret() {
    let k = key();
    let g = grant(OUTPUT);
    let plan = reconcile(&g, &world(&k), &at(t0()));
    let secret = plan.secret.as_ref().unwrap();
    assert_eq!(secret.name, "orders-token");
    let data = &secret.data;
    let token = &data[keys::ACCESS_TOKEN];
    assert_eq!(data[keys::TOKEN_TYPE], "Bearer");
    assert_eq!(data[keys::AUTHORIZATION], format!("Bearer {token}"));
    assert_eq!(data[keys::EXPIRES_AT], "2027-01-15T09:00:00Z");

    // Signed by the key in force, typ at+jwt, the claims the token server writes.
    let (decoding, alg) = crypto::decoding_key(&k.public_jwk()).unwrap();
    let mut v = jsonwebtoken::Validation::new(alg);
    v.set_audience(&["https://orders"]);
    v.set_issuer(&[ISSUER]);
    v.validate_exp = false;
    let decoded = jsonwebtoken::decode::<AccessClaims>(token, &decoding, &v).unwrap();
    assert_eq!(decoded.header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(decoded.header.kid.as_deref(), Some(k.kid()));
    let c = decoded.claims;
    assert_eq!(c.sub, "client-1");
    assert_eq!(c.client_id, "client-1");
    assert_eq!(c.exp - c.iat, 3600);
    assert_eq!(c.nbf, c.iat);
    // grant ∩ ceiling ∩ defined: billing:read is not an orders scope, orders:write is not
    // in the ceiling.
    assert_eq!(c.scope.as_deref(), Some("orders:read"));
    assert_eq!(c.tenant.as_deref(), Some("acme"));

    let st = &plan.status;
    assert_eq!(st.revision, Some(1));
    assert_eq!(st.token_id.as_deref(), Some(c.jti.as_str()));
    assert_eq!(st.not_after, Some(to_time(t0() + 60 * MIN)));
    assert_eq!(st.last_issued, Some(to_time(t0())));
    assert_eq!(st.renewal_time, Some(to_time(t0() + 40 * MIN)));
    assert_eq!(plan.requeue_after, Some(40 * MIN));
    assert_eq!(ready(&plan).0, ConditionStatus::True);
    assert_eq!(
        issuing(&plan),
        (ConditionStatus::False, reasons::ISSUED.to_owned())
    );
    assert!(
        plan.events
            .iter()
            .any(|e| !e.warning && e.reason == reasons::ISSUED)
    );
    // No token in any message.
    for e in &plan.events {
        assert!(!e.message.contains(token.as_str()));
    }
    for cond in &plan.status.conditions {
        assert!(!cond.message.contains(token.as_str()));
    }
    assert!(!format!("{plan:?}").contains(token.as_str()));
}

#[test]
fn nothing_is_written_when_nothing_is_due() {
    let k = key();
    let mut g = grant(OUTPUT);
    let mut w = world(&k);
    let first = reconcile(&g, &w, &at(t0()));
    apply(&mut g, &mut w, &first);
    // A restart 10 minutes later, and again just before renewal: same status, no Secret.
    for later in [10 * MIN, 39 * MIN] {
        let plan = reconcile(&g, &w, &at(t0() + later));
        assert!(plan.secret.is_none(), "re-issued at {later:?}");
        assert_eq!(
            Some(&plan.status),
            g.status.as_ref(),
            "status changed at {later:?}"
        );
        assert!(plan.events.is_empty());
        assert_eq!(plan.requeue_after, Some(40 * MIN - later));
    }
    // Without a signing key nothing is due either: no failure reported.
    w.signing_key = Err("gone".into());
    let plan = reconcile(&g, &w, &at(t0() + 10 * MIN));
    assert!(!plan.failed);
    assert_eq!(Some(&plan.status), g.status.as_ref());
}

#[test]
fn renewal_replaces_the_token_before_it_expires() {
    let k = key();
    let mut g = grant(OUTPUT);
    let mut w = world(&k);
    let first = reconcile(&g, &w, &at(t0()));
    let old = claims_of(&first);
    apply(&mut g, &mut w, &first);
    let plan = reconcile(&g, &w, &at(t0() + 40 * MIN));
    let new = claims_of(&plan);
    assert_ne!(new.jti, old.jti);
    assert_eq!(new.iat, old.iat + 40 * 60);
    assert_eq!(plan.status.revision, Some(2));
    assert_eq!(plan.status.token_id.as_deref(), Some(new.jti.as_str()));
    assert_eq!(plan.status.renewal_time, Some(to_time(t0() + 80 * MIN)));
    assert!(plan.events.iter().any(|e| e.reason == reasons::RENEWED));
    // Ready never flipped: lastTransitionTime kept.
    let c = find(&plan.status.conditions, types::READY).unwrap();
    assert_eq!(c.last_transition_time, to_time(t0()));

    // A changed spec (scopes) re-issues at once.
    apply(&mut g, &mut w, &plan);
    g.spec.scopes = vec!["orders:read".into(), "orders:write".into()];
    g.metadata.generation = Some(2);
    w.subject = SubjectView::Account(AccountView {
        client_id: Some("client-1".into()),
        scopes: vec!["orders:*".into()],
        disabled: false,
    });
    let plan = reconcile(&g, &w, &at(t0() + 41 * MIN));
    assert_eq!(
        claims_of(&plan).scope.as_deref(),
        Some("orders:read orders:write")
    );
    assert_eq!(plan.status.revision, Some(3));
}

#[test]
fn a_custom_renew_before_and_a_lifetime_capped_by_the_operator() {
    let k = key();
    let mut g = grant(OUTPUT);
    g.spec.output.as_mut().unwrap().renew_before = Some("10m".parse().unwrap());
    let mut w = world(&k);
    let plan = reconcile(&g, &w, &at(t0()));
    assert_eq!(plan.requeue_after, Some(50 * MIN));
    // Max lifetime 30m: the token lives 30m and, renewBefore no longer fitting... it does
    // (10m < 30m); with 45m it would not, and a third of the lifetime applies.
    w.max_token_lifetime = 30 * MIN;
    let plan = reconcile(&g, &w, &at(t0()));
    assert_eq!(claims_of(&plan).exp - claims_of(&plan).iat, 30 * 60);
    assert_eq!(plan.requeue_after, Some(20 * MIN));
    g.spec.output.as_mut().unwrap().renew_before = Some("45m".parse().unwrap());
    let plan = reconcile(&g, &w, &at(t0()));
    assert_eq!(plan.requeue_after, Some(20 * MIN));
}

#[test]
fn a_failed_renewal_keeps_the_old_token_and_reports_it() {
    let k = key();
    let mut g = grant(OUTPUT);
    let mut w = world(&k);
    let first = reconcile(&g, &w, &at(t0()));
    let old_token = first.secret.as_ref().unwrap().data[keys::ACCESS_TOKEN].clone();
    apply(&mut g, &mut w, &first);

    // No signing key at renewal time.
    w.signing_key = Err("Secret s2s-system/s2s-signing-keys does not exist yet".into());
    let plan = reconcile(&g, &w, &at(t0() + 45 * MIN));
    assert!(plan.failed);
    assert!(plan.secret.is_none(), "the old token stays in place");
    assert_eq!(plan.status.token_id, g.status.as_ref().unwrap().token_id);
    assert_eq!(plan.status.revision, Some(1));
    assert_eq!(
        ready(&plan).0,
        ConditionStatus::True,
        "the old token is still valid"
    );
    assert_eq!(
        issuing(&plan),
        (ConditionStatus::False, reasons::ISSUE_FAILED.to_owned())
    );
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == reasons::ISSUE_FAILED)
    );

    // The Secret write refused: same report.
    w.signing_key = Ok(&k);
    let plan = after_write_failure(&g, &w, &at(t0() + 45 * MIN), "forbidden");
    assert!(plan.failed && plan.secret.is_none());
    assert_eq!(plan.status.revision, Some(1));
    let c = find(&plan.status.conditions, types::ISSUING).unwrap();
    assert!(c.message.contains("forbidden"), "{}", c.message);
    assert_eq!(
        w.secret.as_ref().unwrap().data[keys::ACCESS_TOKEN],
        old_token
    );

    // Once the old token expired with no replacement, the grant is not Ready.
    w.signing_key = Err("gone".into());
    let plan = reconcile(&g, &w, &at(t0() + 61 * MIN));
    assert_eq!(ready(&plan).1, reasons::ISSUE_FAILED);
    assert_eq!(ready(&plan).0, ConditionStatus::False);

    // The key is back: renewed.
    w.signing_key = Ok(&k);
    let plan = reconcile(&g, &w, &at(t0() + 62 * MIN));
    assert!(!plan.failed);
    assert_eq!(plan.status.revision, Some(2));
    assert_eq!(ready(&plan).0, ConditionStatus::True);
}

#[test]
fn a_foreign_secret_is_never_written() {
    let k = key();
    let g = grant(OUTPUT);
    let mut w = world(&k);
    w.secret = Some(ObservedSecret {
        data: [("access_token".to_owned(), "someone else's".to_owned())].into(),
        controlled: false,
    });
    let plan = reconcile(&g, &w, &at(t0()));
    assert!(plan.secret.is_none());
    assert_eq!(ready(&plan).1, reasons::SECRET_CONFLICT);
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == reasons::SECRET_CONFLICT)
    );
    // Revoking does not touch it either.
    let mut revoked = g.clone();
    revoked.spec.revoked = true;
    assert!(reconcile(&revoked, &w, &at(t0())).secret.is_none());
}

#[test]
fn revocation_is_recorded_once_and_removes_the_token_from_the_secret() {
    let k = key();
    let mut g = grant(OUTPUT);
    let mut w = world(&k);
    let first = reconcile(&g, &w, &at(t0()));
    apply(&mut g, &mut w, &first);
    w.secret
        .as_mut()
        .unwrap()
        .data
        .insert("note".into(), "kept".into());
    let jti = g.status.as_ref().unwrap().token_id.clone().unwrap();

    g.spec.revoked = true;
    g.metadata.generation = Some(2);
    let now = t0() + 5 * MIN;
    let plan = reconcile(&g, &w, &at(now));
    let (status, reason, _) = ready(&plan);
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::False, reasons::REVOKED)
    );
    let r = plan.revoke.clone().expect("revocations");
    let entry = r.grant.expect("a grant entry");
    assert_eq!(entry.sub, "client-1");
    assert_eq!(entry.audience, "https://orders");
    assert_eq!(entry.before, unix(now));
    assert_eq!(entry.until, unix(now) + 24 * 3600 + 60);
    assert_eq!(r.token, Some((jti, unix(t0()) + 3600)));
    let data = &plan.secret.as_ref().expect("token keys removed").data;
    assert!(keys::ALL.iter().all(|k| !data.contains_key(*k)));
    assert_eq!(data["note"], "kept");
    assert!(plan.status.token_id.is_none() && plan.status.not_after.is_none());
    assert!(plan.events.iter().any(|e| e.reason == reasons::REVOKED));
    assert!(plan.requeue_after.is_some());

    // Recorded: the next pass writes nothing and keeps the message.
    apply(&mut g, &mut w, &plan);
    let again = reconcile(&g, &w, &at(now + 10 * MIN));
    assert!(again.revoke.is_none());
    assert!(again.secret.is_none());
    assert_eq!(Some(&again.status), g.status.as_ref());
    assert!(revocation_recorded(g.status.as_ref()));

    // Un-revoked: issued again.
    g.spec.revoked = false;
    let back = reconcile(&g, &w, &at(now + 11 * MIN));
    assert!(back.secret.is_some());
    assert_eq!(ready(&back).0, ConditionStatus::True);
    assert_eq!(back.status.revision, Some(2));
}

#[test]
fn no_deny_list_entry_for_an_audience_the_grant_does_not_own() {
    let k = key();
    let mut g = grant(PLAIN);
    g.spec.revoked = true;
    let mut w = world(&k);
    w.audience_owner = Some("other/orders".into());
    let plan = reconcile(&g, &w, &at(t0()));
    assert_eq!(ready(&plan).1, reasons::REVOKED);
    assert_eq!(plan.revoke, Some(Revocations::default()));
    // Deletion uses the same rule.
    assert!(revocations(&g, &w, t0()).is_empty());
    w.audience_owner = Some("shop/orders".into());
    assert!(revocations(&g, &w, t0()).grant.is_some());
}

#[test]
fn a_token_the_status_lost_is_adopted_not_reissued() {
    let k = key();
    let mut g = grant(OUTPUT);
    let mut w = world(&k);
    let first = reconcile(&g, &w, &at(t0()));
    apply(&mut g, &mut w, &first);
    g.status = None;
    let plan = reconcile(&g, &w, &at(t0() + 5 * MIN));
    assert!(plan.secret.is_none());
    assert_eq!(plan.status.token_id, first.status.token_id);
    assert_eq!(plan.status.not_after, first.status.not_after);
    assert_eq!(ready(&plan).0, ConditionStatus::True);
}

#[test]
fn a_subject_without_client_id_waits() {
    let k = key();
    let mut w = world(&k);
    w.subject = SubjectView::Account(AccountView {
        client_id: None,
        scopes: vec![],
        disabled: false,
    });
    let plan = reconcile(&grant(OUTPUT), &w, &at(t0()));
    assert_eq!(ready(&plan).1, reasons::PENDING);
    assert_eq!(
        issuing(&plan),
        (ConditionStatus::True, reasons::PENDING.to_owned())
    );
    assert!(plan.secret.is_none() && plan.events.is_empty());
}

#[test]
fn the_output_token_names_its_grant_and_is_reissued_when_it_does_not() {
    let k = key();
    let mut g = grant(OUTPUT);
    let mut w = world(&k);
    let plan = reconcile(&g, &w, &at(t0()));
    assert_eq!(
        claims_of(&plan).grants,
        ["shop/worker-orders/grant-uid"],
        "deleting the grant voids its output token at every token server"
    );
    apply(&mut g, &mut w, &plan);
    assert!(reconcile(&g, &w, &at(t0() + MIN)).secret.is_none());
    // A token naming another uid (or none: issued by an earlier version) would outlive the
    // grant's deletion: it is replaced.
    g.metadata.uid = Some("other-uid".into());
    let plan = reconcile(&g, &w, &at(t0() + MIN));
    assert_eq!(claims_of(&plan).grants, ["shop/worker-orders/other-uid"]);
    assert!(
        plan.events
            .iter()
            .any(|e| e.reason == reasons::RENEWED && e.message.contains("grant id")),
        "{:?}",
        plan.events
    );
}
