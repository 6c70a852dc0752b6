use std::time::{Duration, SystemTime};

use super::*;
use crate::api::conditions::ConditionStatus;
use crate::k8s::conditions::find;

const H: Duration = Duration::from_secs(3600);

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// Real material, counted.
#[derive(Default)]
struct Counting {
    ids: usize,
    secrets: usize,
    keys: usize,
}

impl Generator for Counting {
    fn client_id(&mut self) -> String {
        self.ids += 1;
        RandomGenerator.client_id()
    }
    fn secret(&mut self) -> String {
        self.secrets += 1;
        RandomGenerator.secret()
    }
    fn key(&mut self, alg: KeyAlgorithm) -> Result<GeneratedKey, CryptoError> {
        self.keys += 1;
        RandomGenerator.key(alg)
    }
}

fn account(yaml: &str) -> ServiceAccount {
    serde_yaml::from_str(yaml).unwrap()
}

const BOTH: &str = r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: worker, namespace: team, generation: 1}
spec:
  scopes: ["orders:read"]
  audiences: ["https://orders"]
  authentication:
    clientSecret: {secretName: worker-secret, rotateEvery: 720h, gracePeriod: 24h}
    privateKeyJwt: {secretName: worker-key, algorithm: EdDSA}
"#;

fn ctx(now: SystemTime) -> Context<'static> {
    Context {
        issuer: "http://127.0.0.1:8080",
        ca_bundle: None,
        now,
    }
}

/// Applies a plan the way the controller would: status stored, Secrets written (controlled).
fn apply(sa: &mut ServiceAccount, observed: &mut Observed, plan: &Plan) {
    sa.status = Some(plan.status.clone());
    for s in &plan.secrets {
        observed.secrets.insert(
            s.name.clone(),
            ObservedSecret {
                data: s.data.clone(),
                controlled: true,
            },
        );
    }
}

fn ready(sa: &ServiceAccountStatus) -> (ConditionStatus, String) {
    let c = find(&sa.conditions, types::READY).unwrap();
    (c.status, c.reason.clone())
}

#[test]
fn first_pass_issues_everything_and_a_second_pass_changes_nothing() {
    let mut sa = account(BOTH);
    let mut obs = Observed::default();
    let mut g = Counting::default();
    let plan = reconcile(&sa, &obs, &ctx(t0()), &mut g);
    assert_eq!((g.ids, g.secrets, g.keys), (1, 1, 1));
    assert_eq!(plan.secrets.len(), 2);
    let secret = &plan.secrets[0].data;
    assert_eq!(secret["client_id"], plan.status.client_id.clone().unwrap());
    assert_eq!(secret["token_url"], "http://127.0.0.1:8080/oauth2/token");
    assert_eq!(secret["client_secret"].len(), 43);
    let creds: serde_json::Value = serde_json::from_str(&secret["credentials.json"]).unwrap();
    assert_eq!(creds["client_secret"], secret["client_secret"]);
    let key = &plan.secrets[1].data;
    assert!(key["private_key.pem"].contains("PRIVATE KEY"));
    assert_eq!(plan.status.credentials.len(), 2);
    let verifier = &plan.status.credentials[0];
    assert!(crypto::verify_secret(
        &secret["client_secret"],
        verifier.secret_digest.as_ref().unwrap()
    ));
    assert_eq!(plan.status.credentials[1].id, key["key_id"]);
    assert_eq!(ready(&plan.status).0, ConditionStatus::True);
    assert_eq!(
        plan.events
            .iter()
            .filter(|e| e.reason == reasons::ISSUED)
            .count(),
        2
    );
    assert_eq!(plan.requeue_after, Some(720 * H));
    // The status carries no secret material.
    let status_json = serde_json::to_string(&plan.status).unwrap();
    assert!(!status_json.contains(&secret["client_secret"]));
    assert!(!status_json.contains("PRIVATE KEY"));

    apply(&mut sa, &mut obs, &plan);
    let again = reconcile(&sa, &obs, &ctx(t0() + H), &mut g);
    assert_eq!((g.ids, g.secrets, g.keys), (1, 1, 1), "nothing regenerated");
    assert_eq!(again.status, plan.status);
    assert_eq!(again.secrets, plan.secrets);
    assert!(again.events.is_empty());
}

#[test]
fn scheduled_rotation_keeps_the_old_secret_through_the_grace_period() {
    let (mut sa, mut obs, mut g, first) = issued();
    let old_secret = first.secrets[0].data["client_secret"].clone();

    let at = t0() + 720 * H;
    let rotated = reconcile(&sa, &obs, &ctx(at), &mut g);
    assert_eq!(g.secrets, 2);
    assert_eq!(g.keys, 1, "the key has no schedule");
    let data = &rotated.secrets[0].data;
    assert_eq!(data["client_secret.previous"], old_secret);
    assert_ne!(data["client_secret"], old_secret);
    let secrets: Vec<_> = rotated
        .status
        .credentials
        .iter()
        .filter(|c| c.type_ == CredentialType::ClientSecret)
        .collect();
    assert_eq!(secrets.len(), 2);
    assert_eq!(secrets[1].not_after, Some(to_time(at + 24 * H)));
    assert!(rotated.events.iter().any(|e| e.reason == reasons::ROTATED));
    assert_eq!(rotated.requeue_after, Some(24 * H));
    apply(&mut sa, &mut obs, &rotated);

    // Still in grace: both stay.
    let during = reconcile(&sa, &obs, &ctx(at + 23 * H), &mut g);
    assert_eq!(during.secrets[0].data["client_secret.previous"], old_secret);
    assert_eq!(g.secrets, 2);

    // Grace over: the old one goes from the Secret and the status.
    let after = reconcile(&sa, &obs, &ctx(at + 24 * H), &mut g);
    assert!(!after.secrets[0].data.contains_key("client_secret.previous"));
    assert_eq!(
        after
            .status
            .credentials
            .iter()
            .filter(|c| c.type_ == CredentialType::ClientSecret)
            .count(),
        1
    );
    assert!(
        after
            .events
            .iter()
            .any(|e| e.reason == event_reasons::RETIRED)
    );
    assert_eq!(g.secrets, 2);
}

#[test]
fn the_rotate_annotation_rotates_once_per_value() {
    let (mut sa, mut obs, mut g, _) = issued();
    rotate(&mut sa, "2026-11-23");
    let rotated = reconcile(&sa, &obs, &ctx(t0() + H), &mut g);
    assert_eq!((g.secrets, g.keys), (2, 2));
    assert!(
        rotated.secrets[1]
            .data
            .contains_key("private_key.pem.previous")
    );
    assert_eq!(
        rotated.status.rotation_request.as_deref(),
        Some("2026-11-23")
    );
    apply(&mut sa, &mut obs, &rotated);
    let again = reconcile(&sa, &obs, &ctx(t0() + 2 * H), &mut g);
    assert_eq!(
        (g.secrets, g.keys),
        (2, 2),
        "the same value rotates nothing more"
    );
    assert_eq!(again.secrets, rotated.secrets);
}

#[test]
fn a_secret_that_lost_its_credential_is_regenerated_with_a_warning() {
    let (sa, mut obs, mut g, first) = issued();
    obs.secrets.remove("worker-secret");
    let plan = reconcile(&sa, &obs, &ctx(t0() + H), &mut g);
    assert_eq!(g.secrets, 2);
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == event_reasons::REGENERATED)
    );
    assert_eq!(
        plan.status.client_id, first.status.client_id,
        "the client id never changes"
    );
}

#[test]
fn a_secret_it_does_not_control_is_left_alone() {
    let sa = account(BOTH);
    let mut obs = Observed::default();
    obs.secrets.insert(
        "worker-secret".into(),
        ObservedSecret {
            data: [("x".to_owned(), "y".to_owned())].into(),
            controlled: false,
        },
    );
    let plan = reconcile(&sa, &obs, &ctx(t0()), &mut Counting::default());
    assert!(plan.secrets.iter().all(|s| s.name != "worker-secret"));
    assert_eq!(
        ready(&plan.status),
        (ConditionStatus::False, reasons::SECRET_CONFLICT.to_owned())
    );
    let issued = find(&plan.status.conditions, types::CREDENTIALS_ISSUED).unwrap();
    assert_eq!(issued.status, ConditionStatus::False);
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == reasons::SECRET_CONFLICT)
    );
}

#[test]
fn api_only_accounts_get_no_credentials_and_conflicts_are_reported() {
    let sa = account(
        r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: orders, namespace: shop}
spec:
  api: {audience: "https://orders"}
"#,
    );
    let mut g = Counting::default();
    let plan = reconcile(&sa, &Observed::default(), &ctx(t0()), &mut g);
    assert_eq!((g.ids, g.secrets, g.keys), (0, 0, 0));
    assert!(plan.status.client_id.is_none());
    assert_eq!(ready(&plan.status).0, ConditionStatus::True);
    let obs = Observed {
        audience_claimed_by: Some("other/orders".into()),
        ..Default::default()
    };
    let plan = reconcile(&sa, &obs, &ctx(t0()), &mut g);
    assert_eq!(
        ready(&plan.status),
        (
            ConditionStatus::False,
            reasons::AUDIENCE_CONFLICT.to_owned()
        )
    );
}

#[test]
fn disabled_accounts_keep_credentials_but_are_not_ready() {
    let mut sa = account(BOTH);
    sa.spec.disabled = true;
    let plan = reconcile(
        &sa,
        &Observed::default(),
        &ctx(t0()),
        &mut Counting::default(),
    );
    assert_eq!(plan.secrets.len(), 2);
    assert_eq!(
        ready(&plan.status),
        (ConditionStatus::False, reasons::DISABLED.to_owned())
    );
}

#[test]
fn changing_the_key_algorithm_rotates_the_key() {
    let (mut sa, obs, mut g, _) = issued();
    sa.spec
        .authentication
        .as_mut()
        .unwrap()
        .private_key_jwt
        .as_mut()
        .unwrap()
        .algorithm = KeyAlgorithm::ES256;
    let plan = reconcile(&sa, &obs, &ctx(t0() + H), &mut g);
    assert_eq!(g.keys, 2);
    let current = plan
        .status
        .credentials
        .iter()
        .find(|c| c.type_ == CredentialType::PrivateKey && c.not_after.is_none())
        .unwrap();
    assert_eq!(
        current.public_key.as_ref().unwrap().alg.as_deref(),
        Some("ES256")
    );
    assert!(
        plan.secrets[1]
            .data
            .contains_key("private_key.pem.previous")
    );
}

#[test]
fn a_lost_status_adopts_what_the_secrets_hold_instead_of_regenerating() {
    let mut sa = account(BOTH);
    rotate(&mut sa, "1");
    let mut observed = Observed::default();
    let mut g = Counting::default();
    let first = reconcile(&sa, &observed, &ctx(t0()), &mut g);
    apply(&mut sa, &mut observed, &first);
    let written = first.secrets.clone();
    let client_id = first.status.client_id.clone();

    // The status is gone (restored from a backup, or its write failed after the Secrets).
    sa.status = None;
    let mut g2 = Counting::default();
    let plan = reconcile(&sa, &observed, &ctx(t0() + H), &mut g2);
    assert_eq!(
        (g2.ids, g2.secrets, g2.keys),
        (0, 0, 0),
        "nothing regenerated"
    );
    assert_eq!(plan.status.client_id, client_id);
    assert_eq!(plan.secrets, written, "the Secrets stay as they are");
    assert_eq!(plan.status.credentials.len(), 2);
    assert!(
        plan.events
            .iter()
            .any(|e| e.reason == event_reasons::ADOPTED)
    );
    assert_eq!(ready(&plan.status).0, ConditionStatus::True);
    // The adopted verifiers really verify the Secret's material.
    let secret = &written
        .iter()
        .find(|s| s.name == "worker-secret")
        .unwrap()
        .data;
    let digest = plan
        .status
        .credentials
        .iter()
        .find_map(|c| c.secret_digest.clone())
        .unwrap();
    assert!(crypto::verify_secret(&secret["client_secret"], &digest));
    // An annotation that was already there is not a new rotation request.
    apply(&mut sa, &mut observed, &plan);
    let again = reconcile(&sa, &observed, &ctx(t0() + H), &mut g2);
    assert_eq!((g2.secrets, g2.keys), (0, 0));
    assert_eq!(again.status.credentials, plan.status.credentials);

    // A Secret we do not control is never adopted from.
    let mut foreign = observed.clone();
    for s in foreign.secrets.values_mut() {
        s.controlled = false;
    }
    sa.status = None;
    let mut g3 = Counting::default();
    let plan = reconcile(&sa, &foreign, &ctx(t0() + H), &mut g3);
    assert_ne!(plan.status.client_id, client_id);
    assert_eq!(ready(&plan.status).1, reasons::SECRET_CONFLICT);
}

#[test]
fn a_rotation_whose_secret_write_was_lost_resumes_and_keeps_the_previous() {
    let mut sa = account(BOTH);
    let mut observed = Observed::default();
    let mut g = Counting::default();
    let first = reconcile(&sa, &observed, &ctx(t0()), &mut g);
    apply(&mut sa, &mut observed, &first);
    let old_secret = observed.secrets["worker-secret"].data["client_secret"].clone();

    // Rotation: the status is written (status first), the Secret write is lost.
    rotate(&mut sa, "1");
    let rotated = reconcile(&sa, &observed, &ctx(t0() + H), &mut g);
    assert!(rotated.events.iter().any(|e| e.reason == reasons::ROTATED));
    sa.status = Some(rotated.status.clone());

    // The next pass: the Secret still holds the old secret as current.
    let resumed = reconcile(
        &sa,
        &observed,
        &ctx(t0() + H + Duration::from_secs(5)),
        &mut g,
    );
    assert!(resumed.events.iter().any(|e| e.reason == reasons::ROTATED));
    assert!(
        !resumed
            .events
            .iter()
            .any(|e| e.reason == event_reasons::RETIRED),
        "nothing is retired: the previous secret is kept"
    );
    assert!(
        !resumed
            .events
            .iter()
            .any(|e| e.reason == event_reasons::REGENERATED),
        "the previous secret is kept, not dropped"
    );
    let secret = &resumed
        .secrets
        .iter()
        .find(|s| s.name == "worker-secret")
        .unwrap()
        .data;
    assert_eq!(secret["client_secret.previous"], old_secret);
    assert_ne!(secret["client_secret"], old_secret);
    let previous = resumed
        .status
        .credentials
        .iter()
        .find(|c| c.type_ == CredentialType::ClientSecret && c.not_after.is_some())
        .expect("the previous credential is still valid");
    assert!(crypto::verify_secret(
        &old_secret,
        previous.secret_digest.as_deref().unwrap()
    ));
}

/// Real material, but no key can be made.
struct NoKeys;

impl Generator for NoKeys {
    fn client_id(&mut self) -> String {
        RandomGenerator.client_id()
    }
    fn secret(&mut self) -> String {
        RandomGenerator.secret()
    }
    fn key(&mut self, alg: KeyAlgorithm) -> Result<GeneratedKey, CryptoError> {
        Err(CryptoError::KeyGeneration(alg))
    }
}

fn of_type(status: &ServiceAccountStatus, ty: CredentialType) -> Vec<&CredentialVerifier> {
    status
        .credentials
        .iter()
        .filter(|c| c.type_ == ty)
        .collect()
}

/// BOTH after its first pass, applied: the account, what is observed, the generator, the
/// first plan.
fn issued() -> (ServiceAccount, Observed, Counting, Plan) {
    let mut sa = account(BOTH);
    let mut obs = Observed::default();
    let mut g = Counting::default();
    let first = reconcile(&sa, &obs, &ctx(t0()), &mut g);
    apply(&mut sa, &mut obs, &first);
    (sa, obs, g, first)
}

fn rotate(sa: &mut ServiceAccount, value: &str) {
    sa.metadata.annotations = Some([(ROTATE_ANNOTATION.to_owned(), value.to_owned())].into());
}

#[test]
fn a_failed_key_generation_keeps_the_previous_key_in_grace_and_retries_the_rotation() {
    let (mut sa, mut obs, mut g, _) = issued();
    rotate(&mut sa, "1");
    let rotated = reconcile(&sa, &obs, &ctx(t0() + H), &mut g);
    apply(&mut sa, &mut obs, &rotated);
    let keys = of_type(&rotated.status, CredentialType::PrivateKey).len();
    assert_eq!(keys, 2, "the new key and the previous one in grace");

    // Another rotation, and no key can be made: both keys still verify, nothing is written
    // to the key's Secret, and the request stays open.
    rotate(&mut sa, "2");
    let failed = reconcile(&sa, &obs, &ctx(t0() + 2 * H), &mut NoKeys);
    let kept = of_type(&failed.status, CredentialType::PrivateKey);
    assert_eq!(
        kept,
        of_type(&rotated.status, CredentialType::PrivateKey),
        "the previous key is not dropped early"
    );
    assert!(failed.secrets.iter().all(|s| s.name != "worker-key"));
    assert!(
        failed
            .events
            .iter()
            .any(|e| e.warning && e.reason == event_reasons::GENERATION_FAILED)
    );
    assert_eq!(failed.status.rotation_request.as_deref(), Some("1"));
    apply(&mut sa, &mut obs, &failed);
    let retried = reconcile(&sa, &obs, &ctx(t0() + 3 * H), &mut g);
    assert_eq!(retried.status.rotation_request.as_deref(), Some("2"));
    assert!(retried.events.iter().any(|e| e.reason == reasons::ROTATED));
}

#[test]
fn a_secret_that_lost_its_current_credential_keeps_the_previous_one_in_grace() {
    let (mut sa, mut obs, mut g, first) = issued();
    let old_secret = first.secrets[0].data["client_secret"].clone();
    rotate(&mut sa, "1");
    let rotated = reconcile(&sa, &obs, &ctx(t0() + H), &mut g);
    apply(&mut sa, &mut obs, &rotated);
    // Someone deletes the current secret from the Secret, leaving the previous one.
    let data = &mut obs.secrets.get_mut("worker-secret").unwrap().data;
    data.remove("client_secret");
    assert_eq!(data["client_secret.previous"], old_secret);

    let plan = reconcile(&sa, &obs, &ctx(t0() + 2 * H), &mut g);
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == event_reasons::REGENERATED)
    );
    let secret = &plan.secrets[0].data;
    assert_eq!(
        secret["client_secret.previous"], old_secret,
        "still in grace"
    );
    let secrets = of_type(&plan.status, CredentialType::ClientSecret);
    assert_eq!(secrets.len(), 2);
    assert!(secrets.iter().any(|c| c.not_after.is_some()
        && crypto::verify_secret(&old_secret, c.secret_digest.as_deref().unwrap())));
}

#[test]
fn a_second_rotation_within_the_grace_period_retires_the_first_previous_and_says_so() {
    let (mut sa, mut obs, mut g, first) = issued();
    let oldest = first.secrets[0].data["client_secret"].clone();
    rotate(&mut sa, "1");
    let once = reconcile(&sa, &obs, &ctx(t0() + H), &mut g);
    assert!(
        !once
            .events
            .iter()
            .any(|e| e.reason == event_reasons::RETIRED)
    );
    apply(&mut sa, &mut obs, &once);
    let middle = once.secrets[0].data["client_secret"].clone();
    rotate(&mut sa, "2");
    let twice = reconcile(&sa, &obs, &ctx(t0() + 2 * H), &mut g);
    let retired: Vec<_> = twice
        .events
        .iter()
        .filter(|e| e.reason == event_reasons::RETIRED)
        .collect();
    assert_eq!(
        retired.len(),
        2,
        "the client secret's and the key's: {retired:?}"
    );
    assert!(retired[0].message.contains("retired early"));
    assert_eq!(twice.secrets[0].data["client_secret.previous"], middle);
    let secrets = of_type(&twice.status, CredentialType::ClientSecret);
    assert_eq!(secrets.len(), 2);
    assert!(!secrets.iter().any(|c| {
        c.secret_digest
            .as_deref()
            .is_some_and(|d| crypto::verify_secret(&oldest, d))
    }));
}

// The named checks, each on a hand-built world.

/// A client-secret verifier for `secret`, created at `created`, rotated out until `not_after`.
fn secret_verifier(
    secret: &str,
    created: SystemTime,
    not_after: Option<SystemTime>,
) -> CredentialVerifier {
    CredentialVerifier {
        id: format!("id-{secret}"),
        type_: CredentialType::ClientSecret,
        created: to_time(created),
        not_after: not_after.map(to_time),
        secret_digest: Some(crypto::secret_digest(secret)),
        public_key: None,
    }
}

fn client_secret_method(rotate_every: Option<Duration>) -> Method<'static> {
    Method {
        ty: CredentialType::ClientSecret,
        secret_name: "worker-secret",
        alg: None,
        rotate_every,
        grace: None,
    }
}

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn status_with(credentials: Vec<CredentialVerifier>) -> ServiceAccountStatus {
    ServiceAccountStatus {
        credentials,
        ..Default::default()
    }
}

#[test]
fn check_methods_and_recorded_credentials() {
    let sa = account(BOTH);
    let m = methods(&sa);
    assert_eq!(m.len(), 2);
    assert_eq!(
        (m[0].ty, m[0].secret_name, m[0].rotate_every, m[0].grace()),
        (
            CredentialType::ClientSecret,
            "worker-secret",
            Some(720 * H),
            24 * H
        )
    );
    assert_eq!(
        (m[1].ty, m[1].alg, m[1].rotate_every),
        (CredentialType::PrivateKey, Some(KeyAlgorithm::EdDSA), None)
    );
    let cur = secret_verifier("new", t0(), None);
    let prev = secret_verifier("old", t0(), Some(t0() + H));
    let status = status_with(vec![prev.clone(), cur.clone()]);
    let r = recorded(&status, CredentialType::ClientSecret);
    assert_eq!((r.current, r.previous), (Some(&cur), Some(&prev)));
    let r = recorded(&status, CredentialType::PrivateKey);
    assert!(r.current.is_none() && r.previous.is_none());
}

#[test]
fn check_client_id_decision_keeps_adopts_or_mints() {
    let sa = account(BOTH);
    let recorded = ServiceAccountStatus {
        client_id: Some("kept".into()),
        ..Default::default()
    };
    let mut obs = Observed::default();
    assert_eq!(
        client_id_decision(&sa, &recorded, &obs),
        ClientIdDecision::Recorded("kept".into())
    );
    let none = ServiceAccountStatus::default();
    assert_eq!(client_id_decision(&sa, &none, &obs), ClientIdDecision::Mint);
    // An empty id is no id; a foreign Secret's id is never taken.
    for (id, controlled) in [("", true), ("theirs", false)] {
        obs.secrets.insert(
            "worker-key".into(),
            ObservedSecret {
                data: data(&[("client_id", id)]),
                controlled,
            },
        );
        assert_eq!(client_id_decision(&sa, &none, &obs), ClientIdDecision::Mint);
    }
    obs.secrets.insert(
        "worker-key".into(),
        ObservedSecret {
            data: data(&[("client_id", "ours")]),
            controlled: true,
        },
    );
    assert_eq!(
        client_id_decision(&sa, &none, &obs),
        ClientIdDecision::Adopt("ours".into())
    );
    let api_only = account(
        "{apiVersion: s2s.dev/v1alpha1, kind: ServiceAccount, metadata: {name: a}, spec: {}}",
    );
    assert_eq!(
        client_id_decision(&api_only, &none, &obs),
        ClientIdDecision::NotNeeded
    );
}

#[test]
fn check_rotation_request_is_new_once_per_value() {
    let mut sa = account(BOTH);
    let mut old = ServiceAccountStatus::default();
    assert_eq!(
        rotation_request(&sa, &old),
        RotationRequest {
            value: None,
            new: false
        }
    );
    rotate(&mut sa, "2");
    assert!(rotation_request(&sa, &old).new);
    old.rotation_request = Some("2".into());
    assert_eq!(
        rotation_request(&sa, &old),
        RotationRequest {
            value: Some("2".into()),
            new: false
        }
    );
}

#[test]
fn check_secret_conflict_only_for_a_secret_it_does_not_control() {
    assert_eq!(secret_conflict("s", None), None);
    let ours = ObservedSecret {
        data: BTreeMap::new(),
        controlled: true,
    };
    assert_eq!(secret_conflict("s", Some(&ours)), None);
    let theirs = ObservedSecret {
        controlled: false,
        ..ours
    };
    let p = secret_conflict("s", Some(&theirs)).unwrap();
    assert_eq!(p.reason, reasons::SECRET_CONFLICT);
    assert_eq!(
        p.message,
        "Secret s exists and is not controlled by this ServiceAccount; it is left alone"
    );
}

#[test]
fn check_credential_unrecorded_adopts_only_what_the_status_lacks() {
    let m = client_secret_method(None);
    let held = data(&[("client_secret", "s3cret")]);
    let now = to_time(t0());
    let (v, material) = credential_unrecorded(&m, None, Some(&held), &now).expect("adopted");
    assert!(matches!(material, Material::Secret(s) if s == "s3cret"));
    assert!(crypto::verify_secret(
        "s3cret",
        v.secret_digest.as_deref().unwrap()
    ));
    assert_eq!((v.created, v.not_after), (now.clone(), None));
    let recorded = secret_verifier("other", t0(), None);
    assert!(credential_unrecorded(&m, Some(&recorded), Some(&held), &now).is_none());
    let empty = data(&[("client_secret", "")]);
    assert!(credential_unrecorded(&m, None, Some(&empty), &now).is_none());
    assert!(credential_unrecorded(&m, None, None, &now).is_none());
}

#[test]
fn check_credential_held_detects_a_missing_credential() {
    let m = client_secret_method(None);
    let v = secret_verifier("s3cret", t0(), None);
    let held = data(&[("client_secret", "s3cret")]);
    assert!(credential_held(&m, Some(&v), Some(&held)).is_some());
    let replaced = data(&[("client_secret", "someone else's")]);
    assert!(credential_held(&m, Some(&v), Some(&replaced)).is_none());
    assert!(credential_held(&m, Some(&v), None).is_none());
    assert!(credential_held(&m, None, Some(&held)).is_none());
}

#[test]
fn check_grace_over_retires_the_previous_credential() {
    let m = client_secret_method(None);
    let prev = secret_verifier("old", t0(), Some(t0() + H));
    assert!(!grace_over(&prev, t0() + H - Duration::from_secs(1)));
    assert!(grace_over(&prev, t0() + H));
    let held = data(&[("client_secret.previous", "old")]);
    assert!(matches!(
        previous_credential(&m, None, Some(&held), t0()),
        Previous::None
    ));
    assert!(matches!(
        previous_credential(&m, Some(&prev), Some(&held), t0()),
        Previous::InGrace(p, Material::Secret(s)) if p == prev && s == "old"
    ));
    assert!(matches!(
        previous_credential(&m, Some(&prev), Some(&held), t0() + H),
        Previous::Retired
    ));
    // In grace, but the Secret lost it: retired all the same.
    assert!(matches!(
        previous_credential(&m, Some(&prev), Some(&data(&[])), t0()),
        Previous::Retired
    ));
}

#[test]
fn check_rotation_reason_schedule_annotation_algorithm() {
    let m = client_secret_method(Some(10 * H));
    let v = secret_verifier("s", t0(), None);
    assert_eq!(rotation_reason(&m, &v, false, t0() + 9 * H), None);
    assert_eq!(
        rotation_reason(&m, &v, false, t0() + 10 * H),
        Some(RotationReason::Schedule)
    );
    assert_eq!(
        rotation_reason(&m, &v, true, t0()),
        Some(RotationReason::Annotation)
    );
    let key = crypto::generate_key(KeyAlgorithm::EdDSA).unwrap();
    let kv = CredentialVerifier {
        id: key.kid.clone(),
        type_: CredentialType::PrivateKey,
        created: to_time(t0()),
        not_after: None,
        secret_digest: None,
        public_key: Some(key.public_jwk.clone()),
    };
    let mut km = Method {
        ty: CredentialType::PrivateKey,
        secret_name: "worker-key",
        alg: Some(KeyAlgorithm::EdDSA),
        rotate_every: None,
        grace: None,
    };
    assert_eq!(rotation_reason(&km, &kv, false, t0() + 10_000 * H), None);
    km.alg = Some(KeyAlgorithm::ES256);
    assert_eq!(
        rotation_reason(&km, &kv, false, t0()),
        Some(RotationReason::AlgorithmChanged)
    );
}

#[test]
fn check_rotation_resumable_when_the_secret_still_holds_the_previous_as_current() {
    let m = client_secret_method(None);
    let prev = secret_verifier("old", t0(), Some(t0() + H));
    let stale = data(&[("client_secret", "old")]);
    let (p, material) = rotation_resumable(&m, Some(&prev), Some(&stale), t0()).expect("resumable");
    assert_eq!(p, prev);
    assert!(matches!(material, Material::Secret(s) if s == "old"));
    assert!(rotation_resumable(&m, Some(&prev), Some(&stale), t0() + H).is_none());
    let other = data(&[("client_secret", "unknown")]);
    assert!(rotation_resumable(&m, Some(&prev), Some(&other), t0()).is_none());
    assert!(rotation_resumable(&m, None, Some(&stale), t0()).is_none());
}

#[test]
fn check_credential_action_selects_the_builder() {
    let cur = secret_verifier("cur", t0(), None);
    let prev = secret_verifier("old", t0(), Some(t0() + H));
    let found = |current: bool, held: bool, resumable: bool| Found {
        current: current.then(|| cur.clone()),
        held: held.then(|| Material::Secret("cur".into())),
        previous: None,
        resumable: resumable.then(|| (prev.clone(), Material::Secret("old".into()))),
    };
    assert!(matches!(
        credential_action(found(true, true, false), None),
        CredentialAction::Keep { current, .. } if current == cur
    ));
    assert!(matches!(
        credential_action(found(true, true, true), Some(RotationReason::Annotation)),
        CredentialAction::Rotate {
            reason: RotationReason::Annotation,
            ..
        }
    ));
    assert!(matches!(
        credential_action(found(true, false, true), Some(RotationReason::Schedule)),
        CredentialAction::ResumeRotation { previous: (p, _) } if p == prev
    ));
    assert!(matches!(
        credential_action(found(true, false, false), None),
        CredentialAction::Regenerate { previous: None }
    ));
    assert!(matches!(
        credential_action(found(false, false, true), None),
        CredentialAction::Issue
    ));
}

#[test]
fn check_audience_conflict_and_disabled() {
    let mut sa = account(
        r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: orders, namespace: shop}
spec:
  api: {audience: "https://orders"}
"#,
    );
    assert_eq!(audience_conflict(&sa, &Observed::default()), None);
    let obs = Observed {
        audience_claimed_by: Some("other/orders".into()),
        ..Default::default()
    };
    assert_eq!(
        audience_conflict(&sa, &obs),
        Some(Problem {
            reason: reasons::AUDIENCE_CONFLICT,
            message: "audience https://orders is already claimed by other/orders".into(),
        })
    );
    assert_eq!(disabled(&sa), None);
    sa.spec.disabled = true;
    assert_eq!(disabled(&sa).unwrap().reason, reasons::DISABLED);
}

#[test]
fn the_operator_ca_bundle_lands_in_every_credentials_secret() {
    let sa = account(BOTH);
    let mut g = Counting::default();
    let mut c = ctx(t0());
    let plan = reconcile(&sa, &Observed::default(), &c, &mut g);
    assert!(!plan.secrets[0].data.contains_key("ca.crt"));
    c.ca_bundle = Some("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n");
    let plan = reconcile(&sa, &Observed::default(), &c, &mut g);
    for s in &plan.secrets {
        assert_eq!(s.data["ca.crt"], c.ca_bundle.unwrap(), "{}", s.name);
    }
}
