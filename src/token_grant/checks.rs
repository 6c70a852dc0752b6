//! Named, pure decisions about a grant; the clock is an argument.
//!
//! [`plan`](super::plan) runs them in order; the first problem is the Ready reason:
//! [`revoked`], [`audience_not_owned`], [`subject_unresolved`], [`secret_conflict`]. For a
//! grant with `spec.output` then: the token in place ([`token_in_place`]), one the status does
//! not record ([`token_unrecorded`]), the token the grant asks for ([`desired_claims`]),
//! whether a new one is due and why ([`output_due`]: first issue, Secret lost, outdated,
//! renewal) and whether one can be minted ([`signing_key_usable`]).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::{
    Revocations, SubjectView, World, at_unix, audience_owned, from_time, is_recorded,
    output_grant_refs, renewal_due, revocation_recorded, revocations, rfc3339, token_in_secret,
    token_outdated, unix,
};
use crate::api::conditions::{reasons, types};
use crate::api::{TokenGrant, TokenGrantStatus};
use crate::crypto::SigningKey;
use crate::k8s::conditions::find;
use crate::token::AccessClaims;

/// What keeps the grant from being Ready, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase reason.
    pub reason: &'static str,
    /// What is wrong; never a token.
    pub message: String,
}

impl Problem {
    /// A problem with `reason`.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// A revoked grant's deny-list entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// The status records that they were written: nothing more to write.
    Recorded {
        /// The message recorded then.
        message: String,
    },
    /// Write them, then record them.
    Due {
        /// The entries.
        revocations: Revocations,
        /// What they do.
        message: String,
    },
}

impl Revocation {
    /// The Ready problem: reason `Revoked`.
    pub fn problem(&self) -> Problem {
        let (Self::Recorded { message } | Self::Due { message, .. }) = self;
        Problem::new(reasons::REVOKED, message.clone())
    }
}

/// `spec.revoked`: the entries to write, or that they were.
pub fn revoked(
    grant: &TokenGrant,
    world: &World<'_>,
    old: &TokenGrantStatus,
    now: SystemTime,
) -> Option<Revocation> {
    if !grant.spec.revoked {
        return None;
    }
    if revocation_recorded(Some(old)) {
        let message = find(&old.conditions, types::READY)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        return Some(Revocation::Recorded { message });
    }
    let revocations = revocations(grant, world, now);
    let message = match &revocations.grant {
        Some(g) => format!(
            "revoked at {}: tokens issued under it until then are void until {}",
            rfc3339(now),
            rfc3339(at_unix(g.until))
        ),
        None => format!(
            "revoked at {}: no deny-list entry was needed (the audience is not owned here or the subject is unknown)",
            rfc3339(now)
        ),
    };
    Some(Revocation::Due {
        revocations,
        message,
    })
}

/// The audience is not claimed in the grant's namespace (see [`audience_owned`]).
pub fn audience_not_owned(grant: &TokenGrant, world: &World<'_>) -> Option<Problem> {
    audience_owned(grant, world)
        .err()
        .map(|m| Problem::new(reasons::AUDIENCE_NOT_OWNED, m))
}

/// The subject does not resolve to one tokens can be issued for.
pub fn subject_unresolved(grant: &TokenGrant, world: &World<'_>) -> Option<Problem> {
    let output = grant.spec.output.is_some();
    match &world.subject {
        SubjectView::Missing(m) => Some(Problem::new(reasons::NOT_FOUND, m.clone())),
        SubjectView::Account(a) if a.disabled => Some(Problem::new(
            reasons::DISABLED,
            "the subject ServiceAccount is disabled",
        )),
        SubjectView::Issuer(_) if output => Some(Problem::new(
            reasons::INVALID_SPEC,
            "output needs a ServiceAccount subject",
        )),
        SubjectView::Account(a) if a.client_id.is_none() && output => Some(Problem::new(
            reasons::PENDING,
            "waiting for the subject ServiceAccount to get its client id",
        )),
        _ => None,
    }
}

/// The output Secret exists and the grant does not control it: it is left alone.
pub fn secret_conflict(grant: &TokenGrant, world: &World<'_>) -> Option<Problem> {
    let out = grant.spec.output.as_ref()?;
    world.secret.as_ref().filter(|s| !s.controlled)?;
    Some(Problem::new(
        reasons::SECRET_CONFLICT,
        format!(
            "Secret {} exists and is not controlled by this TokenGrant; it is left alone",
            out.secret_name
        ),
    ))
}

/// The output Secret's data, if the grant controls it (else nothing).
pub fn controlled_data(world: &World<'_>) -> BTreeMap<String, String> {
    world
        .secret
        .as_ref()
        .filter(|s| s.controlled)
        .map(|s| s.data.clone())
        .unwrap_or_default()
}

/// The unexpired token in the output Secret the grant controls.
pub fn token_in_place(world: &World<'_>, now: SystemTime) -> Option<AccessClaims> {
    token_in_secret(&controlled_data(world)).filter(|c| c.exp > unix(now))
}

/// What to make of a token in place that the status does not record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenAdoption {
    /// It is newer than the recorded one (the status write failed, or the status was lost):
    /// record it; re-issuing would only churn.
    Adopt,
    /// It is older than the recorded one: it does not count.
    Older,
}

/// A token in the Secret that the status does not record (`None`: it records this one).
pub fn token_unrecorded(in_place: &AccessClaims, old: &TokenGrantStatus) -> Option<TokenAdoption> {
    if is_recorded(in_place, old) {
        return None;
    }
    let newer = old
        .last_issued
        .as_ref()
        .is_none_or(|t| in_place.iat >= unix(from_time(t)));
    Some(if newer {
        TokenAdoption::Adopt
    } else {
        TokenAdoption::Older
    })
}

/// The output token the grant asks for at `now` (no `jti` yet): only for a ServiceAccount
/// subject.
pub fn desired_claims(
    grant: &TokenGrant,
    world: &World<'_>,
    lifetime: Duration,
    now: SystemTime,
) -> Option<AccessClaims> {
    let SubjectView::Account(a) = &world.subject else {
        return None;
    };
    let now_s = unix(now);
    let client_id = a.client_id.clone().unwrap_or_default();
    let scope =
        crate::token::scopes::resolve(&[], &a.scopes, &grant.spec.scopes, &world.defined_scopes)
            .unwrap_or_default();
    Some(AccessClaims {
        iss: world.issuer.trim_end_matches('/').to_owned(),
        sub: client_id.clone(),
        aud: grant.spec.audience.as_str().into(),
        exp: now_s + lifetime.as_secs(),
        iat: now_s,
        nbf: now_s,
        jti: String::new(),
        client_id,
        scope: (!scope.is_empty()).then(|| scope.join(" ")),
        tenant: grant.spec.tenant.clone(),
        act: None,
        grants: output_grant_refs(grant),
    })
}

/// Why a new output token is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputDue {
    /// None was ever issued.
    FirstIssue,
    /// One was, and the Secret no longer holds a valid one.
    SecretLost,
    /// The token in place no longer says what the grant asks for (see [`token_outdated`]),
    /// e.g. it names another grant uid.
    Outdated(&'static str),
    /// The token in place is `renewBefore` from its expiry.
    Renewal,
}

impl OutputDue {
    /// The reason, as Events and the Issuing condition say it.
    pub fn message(self, secret_name: &str) -> String {
        match self {
            Self::FirstIssue => "first issue".to_owned(),
            Self::SecretLost => format!("Secret {secret_name} no longer holds a valid token"),
            Self::Outdated(what) => format!("the grant's {what} changed"),
            Self::Renewal => "renewal due".to_owned(),
        }
    }
}

/// Whether a token is due instead of the one in place, and why.
pub fn output_due(
    want: &AccessClaims,
    in_place: Option<&AccessClaims>,
    old: &TokenGrantStatus,
    (lifetime, renew_before): (Duration, Duration),
    now: SystemTime,
) -> Option<OutputDue> {
    let Some(have) = in_place else {
        return Some(match old.revision {
            None => OutputDue::FirstIssue,
            Some(_) => OutputDue::SecretLost,
        });
    };
    token_outdated(have, want, lifetime)
        .map(OutputDue::Outdated)
        .or_else(|| renewal_due(have.exp, renew_before, now).then_some(OutputDue::Renewal))
}

/// The key to sign a due token with, or why none can be minted and written now.
pub fn signing_key_usable<'a>(
    world: &World<'a>,
    write_failed: Option<&str>,
    secret_name: &str,
) -> Result<&'a SigningKey, String> {
    match (write_failed, &world.signing_key) {
        (Some(w), _) => Err(format!("cannot write Secret {secret_name}: {w}")),
        (None, Err(e)) => Err(format!("no signing key: {e}")),
        (None, Ok(key)) => Ok(key),
    }
}
