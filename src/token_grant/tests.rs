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

// The named checks, each on a hand-built world.

fn claims(jti: &str, iat: SystemTime, lifetime: Duration) -> AccessClaims {
    AccessClaims {
        iss: ISSUER.into(),
        sub: "client-1".into(),
        aud: "https://orders".into(),
        exp: unix(iat) + lifetime.as_secs(),
        iat: unix(iat),
        nbf: unix(iat),
        jti: jti.into(),
        client_id: "client-1".into(),
        scope: Some("orders:read".into()),
        tenant: Some("acme".into()),
        act: None,
        grants: vec!["shop/worker-orders/grant-uid".into()],
    }
}

/// Output Secret data holding `c` (unsigned: the checks read, never verify, it).
fn holding(c: &AccessClaims) -> BTreeMap<String, String> {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(c).unwrap());
    let token = format!("e30.{payload}.sig");
    [
        (keys::ACCESS_TOKEN, token.clone()),
        (keys::TOKEN_TYPE, "Bearer".into()),
        (keys::EXPIRES_AT, rfc3339(at_unix(c.exp))),
        (keys::AUTHORIZATION, format!("Bearer {token}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[test]
fn check_revoked_writes_entries_once_then_keeps_the_recorded_message() {
    let k = key();
    let w = world(&k);
    let mut g = grant(PLAIN);
    let old = TokenGrantStatus::default();
    assert_eq!(revoked(&g, &w, &old, t0()), None);
    g.spec.revoked = true;
    let Some(Revocation::Due {
        revocations,
        message,
    }) = revoked(&g, &w, &old, t0())
    else {
        panic!("entries due");
    };
    assert_eq!(revocations.grant.unwrap().sub, "client-1");
    assert_eq!(
        message,
        "revoked at 2027-01-15T08:00:00Z: tokens issued under it until then are void until 2027-01-16T08:01:00Z"
    );
    let mut recorded = old.clone();
    recorded.conditions.push(crate::api::conditions::Condition {
        type_: types::READY.into(),
        status: ConditionStatus::False,
        reason: reasons::REVOKED.into(),
        message: "as recorded".into(),
        last_transition_time: to_time(t0()),
        observed_generation: Some(1),
    });
    let r = revoked(&g, &w, &recorded, t0() + MIN).unwrap();
    assert_eq!(
        r,
        Revocation::Recorded {
            message: "as recorded".into()
        }
    );
    assert_eq!(r.problem(), Problem::new(reasons::REVOKED, "as recorded"));
}

#[test]
fn check_audience_not_owned() {
    let k = key();
    let mut w = world(&k);
    let g = grant(PLAIN);
    assert_eq!(audience_not_owned(&g, &w), None);
    w.audience_owner = Some("other/orders".into());
    assert_eq!(
        audience_not_owned(&g, &w),
        Some(Problem::new(
            reasons::AUDIENCE_NOT_OWNED,
            "audience https://orders is claimed by other/orders, not by an account in namespace shop"
        ))
    );
}

#[test]
fn check_subject_unresolved_in_order() {
    let k = key();
    let mut w = world(&k);
    let (plain, output) = (grant(PLAIN), grant(OUTPUT));
    assert_eq!(subject_unresolved(&output, &w), None);
    let account = |client_id: Option<&str>, disabled| {
        SubjectView::Account(AccountView {
            client_id: client_id.map(Into::into),
            scopes: vec![],
            disabled,
        })
    };
    let reason = |g: &TokenGrant, w: &World<'_>| subject_unresolved(g, w).map(|p| p.reason);
    w.subject = SubjectView::Missing("gone".into());
    assert_eq!(
        subject_unresolved(&plain, &w),
        Some(Problem::new(reasons::NOT_FOUND, "gone"))
    );
    w.subject = account(None, true);
    assert_eq!(reason(&output, &w), Some(reasons::DISABLED));
    w.subject = account(None, false);
    assert_eq!(reason(&output, &w), Some(reasons::PENDING));
    assert_eq!(
        reason(&plain, &w),
        None,
        "only an output needs the client id"
    );
    w.subject = SubjectView::Issuer("partner-svc".into());
    assert_eq!(reason(&output, &w), Some(reasons::INVALID_SPEC));
    assert_eq!(reason(&plain, &w), None);
}

#[test]
fn check_secret_conflict_only_for_an_output_secret_it_does_not_control() {
    let k = key();
    let mut w = world(&k);
    let (plain, output) = (grant(PLAIN), grant(OUTPUT));
    assert_eq!(secret_conflict(&output, &w), None);
    w.secret = Some(ObservedSecret {
        data: BTreeMap::new(),
        controlled: true,
    });
    assert_eq!(secret_conflict(&output, &w), None);
    w.secret.as_mut().unwrap().controlled = false;
    assert_eq!(secret_conflict(&plain, &w), None);
    assert_eq!(
        secret_conflict(&output, &w),
        Some(Problem::new(
            reasons::SECRET_CONFLICT,
            "Secret orders-token exists and is not controlled by this TokenGrant; it is left alone"
        ))
    );
}

#[test]
fn check_token_in_place_only_from_a_controlled_secret_and_unexpired() {
    let k = key();
    let mut w = world(&k);
    let c = claims("jti-1", t0(), 60 * MIN);
    assert_eq!(token_in_place(&w, t0()), None);
    w.secret = Some(ObservedSecret {
        data: holding(&c),
        controlled: true,
    });
    assert_eq!(token_in_place(&w, t0() + 59 * MIN), Some(c.clone()));
    assert_eq!(token_in_place(&w, t0() + 60 * MIN), None, "expired");
    w.secret.as_mut().unwrap().controlled = false;
    assert_eq!(token_in_place(&w, t0()), None);
    assert!(controlled_data(&w).is_empty());
    // An incomplete Secret holds no token.
    let mut partial = holding(&c);
    partial.remove(keys::AUTHORIZATION);
    w.secret = Some(ObservedSecret {
        data: partial,
        controlled: true,
    });
    assert_eq!(token_in_place(&w, t0()), None);
}

#[test]
fn check_token_unrecorded_adopts_a_newer_token_and_ignores_an_older_one() {
    let c = claims("jti-2", t0() + 10 * MIN, 60 * MIN);
    assert_eq!(
        token_unrecorded(&c, &TokenGrantStatus::default()),
        Some(TokenAdoption::Adopt)
    );
    let mut old = TokenGrantStatus {
        token_id: Some("jti-2".into()),
        not_after: Some(to_time(at_unix(c.exp))),
        ..Default::default()
    };
    assert_eq!(token_unrecorded(&c, &old), None, "the recorded token");
    old.token_id = Some("jti-1".into());
    old.last_issued = Some(to_time(t0() + 10 * MIN));
    assert_eq!(token_unrecorded(&c, &old), Some(TokenAdoption::Adopt));
    old.last_issued = Some(to_time(t0() + 11 * MIN));
    assert_eq!(token_unrecorded(&c, &old), Some(TokenAdoption::Older));
}

#[test]
fn check_desired_claims_only_for_an_account_subject() {
    let k = key();
    let mut w = world(&k);
    let g = grant(OUTPUT);
    let want = desired_claims(&g, &w, 60 * MIN, t0()).unwrap();
    assert_eq!(want, claims("", t0(), 60 * MIN));
    w.subject = SubjectView::Issuer("partner-svc".into());
    assert_eq!(desired_claims(&g, &w, 60 * MIN, t0()), None);
}

#[test]
fn check_output_due_first_issue_secret_lost_outdated_renewal() {
    let timing = (60 * MIN, 20 * MIN);
    let want = claims("", t0() + 10 * MIN, 60 * MIN);
    let have = claims("jti-1", t0(), 60 * MIN);
    let mut old = TokenGrantStatus::default();
    let due = output_due(&want, None, &old, timing, t0());
    assert_eq!(due, Some(OutputDue::FirstIssue));
    assert_eq!(due.unwrap().message("s"), "first issue");
    old.revision = Some(1);
    let due = output_due(&want, None, &old, timing, t0());
    assert_eq!(due, Some(OutputDue::SecretLost));
    assert_eq!(
        due.unwrap().message("s"),
        "Secret s no longer holds a valid token"
    );
    assert_eq!(
        output_due(&want, Some(&have), &old, timing, t0() + 39 * MIN),
        None
    );
    let due = output_due(&want, Some(&have), &old, timing, t0() + 40 * MIN);
    assert_eq!(due, Some(OutputDue::Renewal));
    assert_eq!(due.unwrap().message("s"), "renewal due");
    // A token naming another grant uid is outdated at once.
    let mut other = have.clone();
    other.grants = vec!["shop/worker-orders/other-uid".into()];
    let due = output_due(&want, Some(&other), &old, timing, t0());
    assert_eq!(due, Some(OutputDue::Outdated("grant id")));
    assert_eq!(due.unwrap().message("s"), "the grant's grant id changed");
}

#[test]
fn check_signing_key_usable() {
    let k = key();
    let mut w = world(&k);
    assert_eq!(signing_key_usable(&w, None, "s").unwrap().kid(), k.kid());
    assert_eq!(
        signing_key_usable(&w, Some("forbidden"), "s")
            .err()
            .unwrap(),
        "cannot write Secret s: forbidden"
    );
    w.signing_key = Err("not yet".into());
    assert_eq!(
        signing_key_usable(&w, None, "s").err().unwrap(),
        "no signing key: not yet"
    );
}
