//! Writing conditions the way the Kubernetes API conventions ask: one entry per type,
//! `lastTransitionTime` kept unless the status flips, `observedGeneration` always set.
//!
//! Every kind's status goes through [`set_condition`]; the clock is an argument so the
//! decision is pure and testable.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::conditions::{Condition, ConditionStatus};
use crate::api::{ServiceAccountStatus, TokenGrantStatus, TrustedIssuerStatus};

/// What a reconciler wants a condition to say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired<'a> {
    /// Condition type, one of [`crate::api::conditions::types`].
    pub type_: &'a str,
    /// Its status.
    pub status: ConditionStatus,
    /// A reason from [`crate::api::conditions::reasons`].
    pub reason: &'a str,
    /// Human-readable detail, never a secret.
    pub message: String,
}

/// Sets `desired` in `conditions`, keeping `lastTransitionTime` unless the status changed.
/// Returns whether anything changed, so callers can skip writing an unchanged status.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    desired: Desired<'_>,
    generation: Option<i64>,
    now: &Time,
) -> bool {
    let Desired {
        type_,
        status,
        reason,
        message,
    } = desired;
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            let before = existing.clone();
            if existing.status != status {
                existing.last_transition_time = now.clone();
            }
            existing.status = status;
            existing.reason = reason.to_owned();
            existing.message = message;
            existing.observed_generation = generation;
            *existing != before
        }
        None => {
            conditions.push(Condition {
                type_: type_.to_owned(),
                status,
                reason: reason.to_owned(),
                message,
                last_transition_time: now.clone(),
                observed_generation: generation,
            });
            true
        }
    }
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// A status that carries conditions; implemented by all three kinds.
pub trait HasConditions {
    /// The conditions list.
    fn conditions(&self) -> &[Condition];
    /// The conditions list, for writing through [`set_condition`].
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;

    /// Whether `Ready` is `True` and was computed from `generation`.
    fn is_ready(&self, generation: Option<i64>) -> bool {
        find(self.conditions(), crate::api::conditions::types::READY).is_some_and(|c| {
            c.status == ConditionStatus::True && c.observed_generation == generation
        })
    }
}

macro_rules! has_conditions {
    ($($t:ty),*) => {$(
        impl HasConditions for $t {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<Condition> {
                &mut self.conditions
            }
        }
    )*};
}
has_conditions!(ServiceAccountStatus, TrustedIssuerStatus, TokenGrantStatus);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::{reasons, types};

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn ready(status: ConditionStatus, reason: &str) -> Desired<'_> {
        Desired {
            type_: types::READY,
            status,
            reason,
            message: "m".into(),
        }
    }

    #[test]
    fn adds_a_missing_condition_with_the_current_time() {
        let mut c = vec![];
        assert!(set_condition(
            &mut c,
            ready(ConditionStatus::True, reasons::READY),
            Some(1),
            &at(10)
        ));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, at(10));
        assert_eq!(c[0].observed_generation, Some(1));
    }

    #[test]
    fn keeps_transition_time_when_status_holds() {
        let mut c = vec![];
        set_condition(
            &mut c,
            ready(ConditionStatus::False, reasons::PENDING),
            Some(1),
            &at(10),
        );
        let changed = set_condition(
            &mut c,
            ready(ConditionStatus::False, reasons::SECRET_CONFLICT),
            Some(2),
            &at(20),
        );
        assert!(changed);
        assert_eq!(c[0].last_transition_time, at(10));
        assert_eq!(c[0].reason, reasons::SECRET_CONFLICT);
        assert_eq!(c[0].observed_generation, Some(2));
    }

    #[test]
    fn moves_transition_time_when_status_flips() {
        let mut c = vec![];
        set_condition(
            &mut c,
            ready(ConditionStatus::False, reasons::PENDING),
            Some(1),
            &at(10),
        );
        set_condition(
            &mut c,
            ready(ConditionStatus::True, reasons::READY),
            Some(1),
            &at(20),
        );
        assert_eq!(c[0].last_transition_time, at(20));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn reports_no_change_when_nothing_changed() {
        let mut c = vec![];
        set_condition(
            &mut c,
            ready(ConditionStatus::True, reasons::READY),
            Some(1),
            &at(10),
        );
        assert!(!set_condition(
            &mut c,
            ready(ConditionStatus::True, reasons::READY),
            Some(1),
            &at(30)
        ));
        assert_eq!(c[0].last_transition_time, at(10));
    }

    #[test]
    fn readiness_needs_the_current_generation() {
        let mut s = ServiceAccountStatus::default();
        set_condition(
            s.conditions_mut(),
            ready(ConditionStatus::True, reasons::READY),
            Some(1),
            &at(10),
        );
        assert!(s.is_ready(Some(1)));
        assert!(!s.is_ready(Some(2)));
    }
}
