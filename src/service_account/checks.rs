//! Named, pure decisions about credentials; the clock is an argument.

use std::time::{Duration, SystemTime};

use crate::api::KeyAlgorithm;
use crate::api::service_account::{CredentialType, CredentialVerifier};

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
