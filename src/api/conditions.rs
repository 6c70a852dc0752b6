//! The status condition shared by all three kinds, and the condition types and reasons they use.
//!
//! The shape is the Kubernetes API convention (`metav1.Condition`). The list is a map keyed by
//! `type` for server-side apply. Keeping `lastTransitionTime` unless the status flips is the job
//! of [`crate::k8s::conditions`], the one place that writes conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One aspect of an object's state, in the Kubernetes API convention.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of condition in CamelCase, for example `Ready`.
    #[schemars(length(min = 1, max = 316))]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// Machine-readable CamelCase reason for the last transition.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
    /// Human-readable details of the last transition. Never holds a secret, key or token.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub message: String,
    /// When the status last changed from one value to another.
    pub last_transition_time: Time,
    /// The `.metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Status of a [`Condition`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// It is not known yet.
    Unknown,
}

impl ConditionStatus {
    /// `True` for `true`, `False` for `false`.
    pub fn from_bool(b: bool) -> Self {
        if b { Self::True } else { Self::False }
    }
}

/// Condition types. Few and user-facing; `Ready` summarises the others.
pub mod types {
    /// The object does what it says: tokens can be issued for it / with it.
    pub const READY: &str = "Ready";
    /// A ServiceAccount's credentials exist in its Secret(s).
    pub const CREDENTIALS_ISSUED: &str = "CredentialsIssued";
    /// A TokenGrant with `output` is minting or renewing its token.
    pub const ISSUING: &str = "Issuing";
}

/// Condition reasons, CamelCase constants shared by the reconcilers, Events and metrics.
pub mod reasons {
    /// Everything is in place.
    pub const READY: &str = "Ready";
    /// Work has not been done yet.
    pub const PENDING: &str = "Pending";
    /// The spec is invalid in a way the schema could not catch.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The account is disabled by `spec.disabled`.
    pub const DISABLED: &str = "Disabled";
    /// A Secret of the chosen name exists and is not controlled by this object.
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// Another account already claims this `spec.api.audience`.
    pub const AUDIENCE_CONFLICT: &str = "AudienceConflict";
    /// A grant names an audience no account in its namespace claims.
    pub const AUDIENCE_NOT_OWNED: &str = "AudienceNotOwned";
    /// A referenced object does not exist.
    pub const NOT_FOUND: &str = "NotFound";
    /// Credentials were issued.
    pub const ISSUED: &str = "Issued";
    /// Credentials were rotated; old and new both work until the grace period ends.
    pub const ROTATED: &str = "Rotated";
    /// An identity provider could not be reached or answered nonsense.
    pub const FETCH_FAILED: &str = "FetchFailed";
    /// The grant was revoked by `spec.revoked`.
    pub const REVOKED: &str = "Revoked";
    /// A token could not be minted or written; the previous one, if any, stays in place.
    pub const ISSUE_FAILED: &str = "IssueFailed";
    /// A grant's output token was renewed before it expired.
    pub const RENEWED: &str = "Renewed";
    /// No TokenGrant lets the account get tokens for one of the audiences (or the audience is
    /// not among the account's).
    pub const NOT_GRANTED: &str = "NotGranted";
    /// A scope asked for is not allowed at every audience.
    pub const SCOPE_NOT_GRANTED: &str = "ScopeNotGranted";
}
