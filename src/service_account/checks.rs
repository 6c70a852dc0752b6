//! Named, pure decisions about an account and its credentials; the clock is an argument.
//!
//! [`reconcile`](super::reconcile) runs them in order: the client id
//! ([`client_id_decision`]), the rotation request ([`rotation_request`]), then for each
//! credential the Secret's owner ([`secret_conflict`]), a credential the status lost
//! ([`credential_unrecorded`]), whether the Secret still holds the current one
//! ([`credential_held`]), the previous one's grace ([`previous_credential`]), rotation
//! ([`rotation_reason`]), a rotation whose Secret write was lost ([`rotation_resumable`]) and
//! the resulting [`CredentialAction`]; last the account-wide [`audience_conflict`] and
//! [`disabled`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Material, Observed, ObservedSecret, ROTATE_ANNOTATION, from_time, secret};
use crate::api::conditions::reasons;
use crate::api::service_account::{CredentialType, CredentialVerifier};
use crate::api::{KeyAlgorithm, ServiceAccount, ServiceAccountStatus};

/// Default grace period when neither `gracePeriod` nor a short `rotateEvery` says otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Whether a credential created at `created` is due for scheduled rotation.
pub fn rotation_due(created: SystemTime, rotate_every: Option<Duration>, now: SystemTime) -> bool {
    rotate_every.is_some_and(|every| now >= created + every)
}

/// How long a rotated-out credential keeps working: `gracePeriod`, else 24h or half of
/// `rotateEvery` if that is shorter.
pub fn grace_period(grace: Option<Duration>, rotate_every: Option<Duration>) -> Duration {
    grace
        .unwrap_or_else(|| rotate_every.map_or(DEFAULT_GRACE, |every| DEFAULT_GRACE.min(every / 2)))
}

/// Whether a key credential no longer has the algorithm the spec asks for.
pub fn algorithm_changed(current: &CredentialVerifier, wanted: Option<KeyAlgorithm>) -> bool {
    match (
        current.type_,
        wanted,
        current.public_key.as_ref().and_then(|k| k.alg.as_deref()),
    ) {
        (CredentialType::PrivateKey, Some(w), Some(have)) => w.jws_name() != have,
        _ => false,
    }
}

/// What keeps the account from being Ready, and why; also recorded as a Warning Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase reason.
    pub reason: &'static str,
    /// What is wrong; never a secret.
    pub message: String,
}

/// One authentication method that stores a credential in a Secret, as the spec asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method<'a> {
    /// Client secret or private key.
    pub ty: CredentialType,
    /// The Secret it is written to.
    pub secret_name: &'a str,
    /// The key algorithm (private keys only).
    pub alg: Option<KeyAlgorithm>,
    /// `rotateEvery`.
    pub rotate_every: Option<Duration>,
    /// `gracePeriod`.
    pub grace: Option<Duration>,
}

impl Method<'_> {
    /// How long the credential rotated out keeps working.
    pub fn grace(&self) -> Duration {
        grace_period(self.grace, self.rotate_every)
    }
}

/// The methods of an account that store credentials: client secret first, then private key.
pub fn methods(sa: &ServiceAccount) -> Vec<Method<'_>> {
    let auth = sa.spec.authentication.as_ref();
    let client_secret = auth.and_then(|a| a.client_secret.as_ref()).map(|c| Method {
        ty: CredentialType::ClientSecret,
        secret_name: c.secret_name.as_str(),
        alg: None,
        rotate_every: c.rotate_every.map(|d| d.as_std()),
        grace: c.grace_period.map(|d| d.as_std()),
    });
    let private_key = auth
        .and_then(|a| a.private_key_jwt.as_ref())
        .map(|k| Method {
            ty: CredentialType::PrivateKey,
            secret_name: k.secret_name.as_str(),
            alg: Some(k.algorithm),
            rotate_every: k.rotate_every.map(|d| d.as_std()),
            grace: k.grace_period.map(|d| d.as_std()),
        });
    client_secret.into_iter().chain(private_key).collect()
}

/// The credentials of one type that the status records.
#[derive(Clone, Copy, Debug, Default)]
pub struct Recorded<'a> {
    /// The one in use (no `notAfter`).
    pub current: Option<&'a CredentialVerifier>,
    /// The one rotated out (with `notAfter`).
    pub previous: Option<&'a CredentialVerifier>,
}

/// What the status records for credentials of type `ty`.
pub fn recorded(status: &ServiceAccountStatus, ty: CredentialType) -> Recorded<'_> {
    let of_type = || status.credentials.iter().filter(move |c| c.type_ == ty);
    Recorded {
        current: of_type().find(|c| c.not_after.is_none()),
        previous: of_type().find(|c| c.not_after.is_some()),
    }
}

/// Where the client id comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientIdDecision {
    /// The status records one: it never changes.
    Recorded(String),
    /// The status lost it, and a Secret this account controls holds it: keep it.
    Adopt(String),
    /// The account authenticates and has none yet: mint one.
    Mint,
    /// The account has no authentication and needs none.
    NotNeeded,
}

/// Adopt or mint the client id.
pub fn client_id_decision(
    sa: &ServiceAccount,
    old: &ServiceAccountStatus,
    observed: &Observed,
) -> ClientIdDecision {
    if let Some(id) = &old.client_id {
        return ClientIdDecision::Recorded(id.clone());
    }
    if sa.spec.authentication.is_none() {
        return ClientIdDecision::NotNeeded;
    }
    // A Secret we control may already hold our client id (status lost): keep it.
    let adopted = super::secret_names(sa).into_iter().find_map(|name| {
        observed
            .secrets
            .get(&name)
            .filter(|s| s.controlled)
            .and_then(|s| s.data.get(secret::keys::CLIENT_ID))
            .filter(|id| !id.is_empty())
            .cloned()
    });
    adopted.map_or(ClientIdDecision::Mint, ClientIdDecision::Adopt)
}

/// The `s2s.dev/rotate` annotation as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationRequest {
    /// Its value, recorded in the status once acted on.
    pub value: Option<String>,
    /// Whether the value is one the status has not recorded yet.
    pub new: bool,
}

/// Whether the annotation asks for a rotation not yet done.
pub fn rotation_request(sa: &ServiceAccount, old: &ServiceAccountStatus) -> RotationRequest {
    let value = sa
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATE_ANNOTATION))
        .cloned();
    let new = value.is_some() && value != old.rotation_request;
    RotationRequest { value, new }
}

/// A Secret of the method's name that this account does not control: it is left alone.
pub fn secret_conflict(secret_name: &str, observed: Option<&ObservedSecret>) -> Option<Problem> {
    observed.filter(|s| !s.controlled).map(|_| Problem {
        reason: reasons::SECRET_CONFLICT,
        message: format!(
            "Secret {secret_name} exists and is not controlled by this ServiceAccount; it is left alone"
        ),
    })
}

/// A credential in the Secret that the status does not record (status lost, or its write
/// failed after the Secret's): adopted with a fresh verifier rather than regenerated.
pub(super) fn credential_unrecorded(
    m: &Method<'_>,
    recorded_current: Option<&CredentialVerifier>,
    data: Option<&BTreeMap<String, String>>,
    now: &Time,
) -> Option<(CredentialVerifier, Material)> {
    if recorded_current.is_some() {
        return None;
    }
    secret::adopt(m.ty, data, m.alg, now.clone())
}

/// The current credential's material, if the Secret still holds it (`None`: the credential is
/// missing from the Secret, or there is no current credential).
pub(super) fn credential_held(
    m: &Method<'_>,
    current: Option<&CredentialVerifier>,
    data: Option<&BTreeMap<String, String>>,
) -> Option<Material> {
    current.and_then(|c| secret::read_current(m.ty, c, data, m.alg))
}

/// Whether a rotated-out credential's grace period is over at `now`.
pub fn grace_over(previous: &CredentialVerifier, now: SystemTime) -> bool {
    previous
        .not_after
        .as_ref()
        .is_none_or(|t| from_time(t) <= now)
}

/// The rotated-out credential.
// One short-lived value per credential and pass: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Previous {
    /// There is none.
    None,
    /// In its grace period and still in the Secret: it keeps working.
    InGrace(CredentialVerifier, Material),
    /// Its grace is over, or the Secret no longer holds it: it goes.
    Retired,
}

/// What becomes of the rotated-out credential.
pub(super) fn previous_credential(
    m: &Method<'_>,
    recorded_previous: Option<&CredentialVerifier>,
    data: Option<&BTreeMap<String, String>>,
    now: SystemTime,
) -> Previous {
    let Some(p) = recorded_previous else {
        return Previous::None;
    };
    match Some(p)
        .filter(|p| !grace_over(p, now))
        .and_then(|p| secret::read_previous(m.ty, p, data))
    {
        Some(material) => Previous::InGrace(p.clone(), material),
        None => Previous::Retired,
    }
}

/// Why the current credential is rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationReason {
    /// `rotateEvery` has passed since it was created.
    Schedule,
    /// A new value of `s2s.dev/rotate`.
    Annotation,
    /// The key no longer has the algorithm the spec asks for.
    AlgorithmChanged,
}

/// Whether rotation is due for the current credential, and why. `requested`: a new
/// `s2s.dev/rotate` value applies to it (not to a credential just adopted).
pub fn rotation_reason(
    m: &Method<'_>,
    current: &CredentialVerifier,
    requested: bool,
    now: SystemTime,
) -> Option<RotationReason> {
    if rotation_due(from_time(&current.created), m.rotate_every, now) {
        Some(RotationReason::Schedule)
    } else if requested {
        Some(RotationReason::Annotation)
    } else if algorithm_changed(current, m.alg) {
        Some(RotationReason::AlgorithmChanged)
    } else {
        None
    }
}

/// A rotation whose status was written but whose Secret was not: the Secret still holds, as
/// its current credential, the previous one, still in its grace period.
pub(super) fn rotation_resumable(
    m: &Method<'_>,
    recorded_previous: Option<&CredentialVerifier>,
    data: Option<&BTreeMap<String, String>>,
    now: SystemTime,
) -> Option<(CredentialVerifier, Material)> {
    recorded_previous
        .filter(|p| !grace_over(p, now))
        .and_then(|p| secret::read_current(m.ty, p, data, m.alg).map(|mat| (p.clone(), mat)))
}

/// What the checks found about one credential.
pub(super) struct Found {
    /// The current credential (recorded, or adopted from the Secret).
    pub current: Option<CredentialVerifier>,
    /// Its material, if the Secret holds it.
    pub held: Option<Material>,
    /// The rotated-out credential still in grace, with its material.
    pub previous: Option<(CredentialVerifier, Material)>,
    /// See [`rotation_resumable`].
    pub resumable: Option<(CredentialVerifier, Material)>,
}

/// What to do with one credential: the builder the checks select.
// One short-lived value per credential and pass: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum CredentialAction {
    /// Nothing due: the current credential and the previous one in grace stay.
    Keep {
        current: CredentialVerifier,
        material: Material,
        previous: Option<(CredentialVerifier, Material)>,
    },
    /// There is none yet: issue one.
    Issue,
    /// Rotate: a new one, and the current keeps working through the grace period.
    Rotate {
        reason: RotationReason,
        current: CredentialVerifier,
        material: Material,
        /// The previous one, still in grace from an earlier rotation: the Secret holds one
        /// previous credential, so it ends now.
        displaced: Option<CredentialVerifier>,
    },
    /// Issue the new one again and keep the previous one (see [`rotation_resumable`]).
    ResumeRotation {
        previous: (CredentialVerifier, Material),
    },
    /// The Secret lost the current credential: a new one, with a warning; the previous one
    /// in grace stays.
    Regenerate {
        previous: Option<(CredentialVerifier, Material)>,
    },
}

/// Selects the builder for one credential.
pub(super) fn credential_action(
    found: Found,
    rotation: Option<RotationReason>,
) -> CredentialAction {
    match (found.current, found.held) {
        (Some(current), Some(material)) => match rotation {
            None => CredentialAction::Keep {
                current,
                material,
                previous: found.previous,
            },
            Some(reason) => CredentialAction::Rotate {
                reason,
                current,
                material,
                displaced: found.previous.map(|(p, _)| p),
            },
        },
        (Some(_), None) => match found.resumable {
            Some(previous) => CredentialAction::ResumeRotation { previous },
            None => CredentialAction::Regenerate {
                previous: found.previous,
            },
        },
        (None, _) => CredentialAction::Issue,
    }
}

/// Someone else claimed the account's `spec.api.audience` first.
pub fn audience_conflict(sa: &ServiceAccount, observed: &Observed) -> Option<Problem> {
    let owner = observed.audience_claimed_by.as_ref()?;
    let audience = sa
        .spec
        .api
        .as_ref()
        .map(|a| a.audience.as_str())
        .unwrap_or_default();
    Some(Problem {
        reason: reasons::AUDIENCE_CONFLICT,
        message: format!("audience {audience} is already claimed by {owner}"),
    })
}

/// The account is disabled: it keeps its credentials but gets no tokens.
pub fn disabled(sa: &ServiceAccount) -> Option<Problem> {
    sa.spec.disabled.then(|| Problem {
        reason: reasons::DISABLED,
        message: "the account is disabled: it gets no tokens".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);

    #[test]
    fn rotation_is_due_at_the_period_not_before() {
        let t0 = SystemTime::UNIX_EPOCH + 1000 * H;
        assert!(!rotation_due(
            t0,
            Some(10 * H),
            t0 + 10 * H - Duration::from_secs(1)
        ));
        assert!(rotation_due(t0, Some(10 * H), t0 + 10 * H));
        assert!(!rotation_due(t0, None, t0 + 10_000 * H));
    }

    #[test]
    fn grace_defaults_to_a_day_or_half_the_period() {
        assert_eq!(grace_period(None, None), 24 * H);
        assert_eq!(grace_period(None, Some(720 * H)), 24 * H);
        assert_eq!(grace_period(None, Some(12 * H)), 6 * H);
        assert_eq!(grace_period(Some(H), Some(720 * H)), H);
    }
}
