//! AccessToken reconciliation, as pure stages: given the AccessToken, whether its account's
//! TokenGrants authorize it (decided by [`authorization`], the token endpoint's own
//! [`authorize_client`]), its Secret, the signing key and the time, decide the status, the
//! Secret to write and the Events. The controller ([`controller`]) and `dev` do the I/O.
//!
//! Like a TokenGrant's `output` (whose pieces it shares: [`output_due`], [`token_in_secret`],
//! the Secret keys): a token is minted into a Secret the AccessToken controls and renewed
//! `renewBefore` ahead of expiry; a pass that finds the recorded token in place with nothing
//! due writes nothing. While the grants do not authorize it (a grant deleted or revoked, the
//! account disabled or gone, a scope no longer allowed), `Ready=False` with the reason, and a
//! token already in the Secret is taken out of it: it names every grant it was issued under
//! (claim `grants`), so token servers hold it inactive from the moment a grant goes.
//!
//! A renewal on demand: a new value of the `s2s.dev/rotate` annotation (the ServiceAccount's,
//! so `kubectl s2s rotate` sets one annotation for either kind) makes a new token due at once;
//! the value is recorded in `status.rotationRequest` with the token that answered it.

pub mod controller;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use kube::ResourceExt;

use crate::api::conditions::{ConditionStatus, reasons, types};
use crate::api::{AccessToken, AccessTokenStatus, ServiceAccount};
use crate::crypto::{self, SigningKey};
use crate::k8s::Event;
use crate::k8s::conditions::{Desired, set_condition};
use crate::service_account::{DesiredSecret, ObservedSecret, ROTATE_ANNOTATION, to_time};
use crate::token::{AccessClaims, Audience, Authorization, ErrorCode, Registry, authorize_client};
use crate::token_grant::{
    OutputDue, Problem, TOKEN_TYPE_HEADER, at_unix, event, is_recorded, keys, output_due, rfc3339,
    token_in_secret, unix,
};

/// `s2s.dev/component` of AccessToken Secrets.
pub const COMPONENT: &str = "access-token";

/// The account's client id and what its grants authorize.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorized {
    /// The token's `sub` and `client_id`.
    pub client_id: String,
    /// Scopes, tenant and grants, as the token endpoint decides them.
    pub authorization: Authorization,
    /// The token's `aud`.
    pub audience: Audience,
}

/// What was observed around an AccessToken.
#[derive(Clone, Debug)]
pub struct World<'a> {
    /// What the token may carry, or why there is none.
    pub authorized: Result<Authorized, Problem>,
    /// The Secret, if it exists.
    pub secret: Option<ObservedSecret>,
    /// The key that signs now, or why there is none.
    pub signing_key: Result<&'a SigningKey, String>,
    /// The issuer URL (`iss`).
    pub issuer: &'a str,
    /// Upper bound on every token's lifetime.
    pub max_token_lifetime: Duration,
}

/// What to do.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The new status (compare with the old one before writing).
    pub status: AccessTokenStatus,
    /// The Secret to write (create, or replace when its data differs).
    pub secret: Option<DesiredSecret>,
    /// Events to record.
    pub events: Vec<Event>,
    /// When to look again (the renewal).
    pub requeue_after: Option<Duration>,
    /// Whether issuing failed: the caller retries with backoff.
    pub failed: bool,
}

/// The accounts and grants [`authorization`] needs, out of all of them: the account, the
/// accounts claiming any of the audiences (the oldest claim wins, so all claimants count) and
/// the grants naming the account. Building the registry from these alone keeps a pass cheap
/// with thousands of accounts.
pub fn relevant<'a>(
    token: &AccessToken,
    accounts: impl IntoIterator<Item = &'a ServiceAccount>,
    grants: impl IntoIterator<Item = &'a crate::api::TokenGrant>,
) -> (Vec<ServiceAccount>, Vec<crate::api::TokenGrant>) {
    let namespace = token.namespace().unwrap_or_default();
    let name = &token.spec.service_account_name;
    let accounts = accounts
        .into_iter()
        .filter(|a| {
            (a.namespace().as_deref() == Some(namespace.as_str()) && &a.name_any() == name)
                || a.spec
                    .api
                    .as_ref()
                    .is_some_and(|api| token.spec.audiences.contains(&api.audience))
        })
        .cloned()
        .collect();
    let grants = grants
        .into_iter()
        .filter(|g| {
            crate::token_grant::subject_account(g)
                .is_some_and(|(ns, n)| ns == namespace && &n == name)
        })
        .cloned()
        .collect();
    (accounts, grants)
}

/// Whether the account's grants authorize the AccessToken, decided as the token endpoint
/// decides a client-credentials request naming these audiences and scopes.
pub fn authorization(
    token: &AccessToken,
    account: Option<&ServiceAccount>,
    registry: &Registry,
) -> Result<Authorized, Problem> {
    let name = &token.spec.service_account_name;
    let Some(account) = account else {
        return Err(Problem::new(
            reasons::NOT_FOUND,
            format!("ServiceAccount {name} does not exist in this namespace"),
        ));
    };
    if account.spec.disabled {
        return Err(Problem::new(
            reasons::DISABLED,
            format!("ServiceAccount {name} is disabled"),
        ));
    }
    let client = account
        .status
        .as_ref()
        .and_then(|s| s.client_id.as_deref())
        .and_then(|id| registry.client(id))
        .ok_or_else(|| {
            Problem::new(
                reasons::PENDING,
                format!("ServiceAccount {name} has no client id yet"),
            )
        })?;
    let audience = Audience::many(token.spec.audiences.iter().map(String::as_str))
        .ok_or_else(|| Problem::new(reasons::INVALID_SPEC, "no audience"))?;
    let requested: Vec<&str> = token.spec.scopes.iter().map(String::as_str).collect();
    let authorization = authorize_client(registry, client, &audience, &requested).map_err(|e| {
        let reason = match e.code {
            ErrorCode::InvalidScope => reasons::SCOPE_NOT_GRANTED,
            _ => reasons::NOT_GRANTED,
        };
        Problem::new(reason, e.description)
    })?;
    Ok(Authorized {
        client_id: client.client_id.clone(),
        authorization,
        audience,
    })
}

/// The token's lifetime and how long before expiry it is renewed.
pub fn timing(token: &AccessToken, max_token_lifetime: Duration) -> (Duration, Duration) {
    crate::token_grant::renewal_timing(
        token.spec.lifetime.as_std(),
        token.spec.renew_before.map(|d| d.as_std()),
        max_token_lifetime,
    )
}

/// The time of the pass: the same as a TokenGrant's.
pub use crate::token_grant::Context;

/// The reconcile of one AccessToken.
pub fn reconcile(token: &AccessToken, world: &World<'_>, ctx: &Context) -> Plan {
    plan(token, world, ctx, None)
}

/// The plan after writing the Secret of `planned` failed: the old token stays, the failure is
/// reported, and the caller retries with backoff.
pub fn after_write_failure(
    token: &AccessToken,
    world: &World<'_>,
    ctx: &Context,
    why: &str,
) -> Plan {
    plan(token, world, ctx, Some(why))
}

fn plan(token: &AccessToken, world: &World<'_>, ctx: &Context, write_failed: Option<&str>) -> Plan {
    let old = token.status.clone().unwrap_or_default();
    let mut status = AccessTokenStatus {
        observed_generation: token.metadata.generation,
        ..old.clone()
    };
    let secret_name = &token.spec.secret_name;
    let (lifetime, renew_before) = timing(token, world.max_token_lifetime);
    let controlled = world.secret.as_ref().filter(|s| s.controlled);
    let data = controlled.map(|s| s.data.clone()).unwrap_or_default();
    let mut in_place = controlled
        .and_then(|s| token_in_secret(&s.data))
        .filter(|c| c.exp > unix(ctx.now) && is_recorded(c, &old));
    let conflict = (world.secret.is_some() && controlled.is_none()).then(|| {
        Problem::new(
            reasons::SECRET_CONFLICT,
            format!("Secret {secret_name} exists and is not controlled by this AccessToken"),
        )
    });
    let mut blocker = conflict.or_else(|| world.authorized.clone().err());
    let mut out = Plan {
        status: AccessTokenStatus::default(),
        secret: None,
        events: vec![],
        requeue_after: None,
        failed: false,
    };
    let mut issue_failure = None;
    match (&blocker, &world.authorized) {
        (Some(p), _) if withdraws(p) => {
            // No longer authorized: the token leaves the Secret (token servers already hold
            // it inactive when a grant it names went).
            out.secret = without_token(&data, secret_name);
            status.not_after = None;
            status.token_id = None;
            in_place = None;
        }
        (None, Ok(authorized)) => {
            let want = desired_claims(world.issuer, authorized, lifetime, ctx.now);
            let timing = (lifetime, renew_before);
            let requested = renewal_request(token, &old);
            let due = output_due(&want, in_place.as_ref(), &old, timing, ctx.now)
                .map(|due| match due {
                    OutputDue::Outdated(what) => format!("the token's {what} changed"),
                    other => other.message(secret_name),
                })
                .or_else(|| {
                    requested
                        .is_some()
                        .then(|| format!("renewal requested ({ROTATE_ANNOTATION})"))
                });
            if let Some(why) = due {
                let renewed = in_place.is_some() || old.revision.is_some();
                match issue(world, write_failed, secret_name, &data, want) {
                    Ok((written, claims)) => {
                        let revision = record_issued(&mut status, &claims, ctx.now);
                        // Any new token answers the request, whatever made it due.
                        if requested.is_some() {
                            status.rotation_request = requested;
                        }
                        out.events.push(issued_event(
                            renewed,
                            revision,
                            secret_name,
                            &claims,
                            &why,
                        ));
                        out.secret = Some(written);
                        in_place = Some(claims);
                    }
                    Err(message) => {
                        out.failed = true;
                        out.events.push(event(
                            true,
                            reasons::ISSUE_FAILED,
                            &format!(
                                "{why}: {message}; the previous token, if any, stays in place"
                            ),
                        ));
                        issue_failure = Some(format!("{why}: {message}"));
                        if in_place.is_none() {
                            blocker = Some(Problem::new(reasons::ISSUE_FAILED, message));
                        }
                    }
                }
            }
        }
        // Pending or a conflict: nothing is written, a token in place stays.
        _ => {}
    }
    status.renewal_time = in_place
        .as_ref()
        .map(|c| to_time(at_unix(c.exp) - renew_before));
    out.requeue_after = in_place.as_ref().map(|c| {
        (at_unix(c.exp) - renew_before)
            .duration_since(ctx.now)
            .unwrap_or_default()
            .max(Duration::from_secs(1))
    });
    if let Some(p) = blocker
        .as_ref()
        .filter(|p| p.reason != reasons::PENDING && p.reason != reasons::ISSUE_FAILED)
    {
        out.events.push(event(true, p.reason, &p.message));
    }
    let generation = token.metadata.generation;
    let now = to_time(ctx.now);
    let (ready, issuing) = conditions(
        secret_name,
        blocker.as_ref(),
        in_place.as_ref(),
        issue_failure,
        renew_before,
    );
    set_condition(&mut status.conditions, ready, generation, &now);
    set_condition(&mut status.conditions, issuing, generation, &now);
    out.status = status;
    out
}

/// A value of the `s2s.dev/rotate` annotation (as on a ServiceAccount) that the status has
/// not recorded yet: a new token is due now, and the value is recorded once it is written.
pub fn renewal_request(token: &AccessToken, old: &AccessTokenStatus) -> Option<String> {
    token
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATE_ANNOTATION))
        .filter(|v| old.rotation_request.as_ref() != Some(*v))
        .cloned()
}

/// Whether a problem takes the token out of the Secret: every authorization problem, but not
/// waiting for the account (`Pending`) or a Secret someone else owns.
fn withdraws(p: &Problem) -> bool {
    p.reason != reasons::SECRET_CONFLICT && p.reason != reasons::PENDING
}

/// The Secret's data without the token keys, if it holds any.
fn without_token(data: &BTreeMap<String, String>, secret_name: &str) -> Option<DesiredSecret> {
    if !keys::ALL.iter().any(|k| data.contains_key(*k)) {
        return None;
    }
    let mut kept = data.clone();
    for k in keys::ALL {
        kept.remove(k);
    }
    Some(DesiredSecret {
        name: secret_name.to_owned(),
        data: kept,
    })
}

/// Records a newly written token in `status`; returns its revision.
fn record_issued(status: &mut AccessTokenStatus, claims: &AccessClaims, now: SystemTime) -> i64 {
    let revision = status.revision.unwrap_or(0) + 1;
    status.revision = Some(revision);
    status.last_issued = Some(to_time(now));
    status.not_after = Some(to_time(at_unix(claims.exp)));
    status.token_id = Some(claims.jti.clone());
    revision
}

fn issued_event(
    renewed: bool,
    revision: i64,
    secret_name: &str,
    claims: &AccessClaims,
    why: &str,
) -> Event {
    let reason = if renewed {
        reasons::RENEWED
    } else {
        reasons::ISSUED
    };
    event(
        false,
        reason,
        &format!(
            "token {} (revision {revision}) written to Secret {secret_name}, valid until {} ({why})",
            claims.jti,
            rfc3339(at_unix(claims.exp))
        ),
    )
}

/// `Ready` (True while a valid token is in place and nothing blocks) and `Issuing`.
fn conditions(
    secret_name: &str,
    blocker: Option<&Problem>,
    in_place: Option<&AccessClaims>,
    issue_failure: Option<String>,
    renew_before: Duration,
) -> (Desired<'static>, Desired<'static>) {
    let (status, reason, message) = match (blocker, in_place) {
        (Some(p), _) => (ConditionStatus::False, p.reason, p.message.clone()),
        (None, Some(_)) => (
            ConditionStatus::True,
            reasons::READY,
            format!("a valid token is in Secret {secret_name}"),
        ),
        (None, None) => (
            ConditionStatus::False,
            reasons::PENDING,
            format!("no valid token in Secret {secret_name} yet"),
        ),
    };
    let ready = Desired {
        type_: types::READY,
        status,
        reason,
        message,
    };
    let (status, reason, message) = match (issue_failure, blocker, in_place) {
        (Some(message), _, _) => (ConditionStatus::False, reasons::ISSUE_FAILED, message),
        (None, Some(p), _) => (ConditionStatus::False, p.reason, p.message.clone()),
        (None, None, Some(c)) => (
            ConditionStatus::False,
            reasons::ISSUED,
            format!(
                "token {} valid until {}; renewal at {}",
                c.jti,
                rfc3339(at_unix(c.exp)),
                rfc3339(at_unix(c.exp) - renew_before)
            ),
        ),
        (None, None, None) => (
            ConditionStatus::True,
            reasons::PENDING,
            "a token is due".into(),
        ),
    };
    let issuing = Desired {
        type_: types::ISSUING,
        status,
        reason,
        message,
    };
    (ready, issuing)
}

/// The token the AccessToken asks for at `now` (no `jti` yet).
fn desired_claims(
    issuer: &str,
    authorized: &Authorized,
    lifetime: Duration,
    now: SystemTime,
) -> AccessClaims {
    let now_s = unix(now);
    let a = &authorized.authorization;
    AccessClaims {
        iss: issuer.trim_end_matches('/').to_owned(),
        sub: authorized.client_id.clone(),
        aud: authorized.audience.clone(),
        exp: now_s + lifetime.as_secs(),
        iat: now_s,
        nbf: now_s,
        jti: String::new(),
        client_id: authorized.client_id.clone(),
        scope: (!a.scope.is_empty()).then(|| a.scope.join(" ")),
        tenant: a.tenant.clone(),
        act: None,
        grants: a.grants.clone(),
    }
}

/// Signs `claims` (with a fresh `jti`) into the Secret's data.
fn issue(
    world: &World<'_>,
    write_failed: Option<&str>,
    secret_name: &str,
    data: &BTreeMap<String, String>,
    mut claims: AccessClaims,
) -> Result<(DesiredSecret, AccessClaims), String> {
    let key = match (write_failed, &world.signing_key) {
        (Some(w), _) => return Err(format!("cannot write Secret {secret_name}: {w}")),
        (None, Err(e)) => return Err(format!("no signing key: {e}")),
        (None, Ok(key)) => *key,
    };
    claims.jti = crypto::random_token_id();
    let token = crypto::sign_jwt(key, TOKEN_TYPE_HEADER, &claims)
        .map_err(|e| format!("signing failed: {e}"))?;
    let mut data = data.clone();
    data.insert(keys::ACCESS_TOKEN.into(), token.clone());
    data.insert(keys::TOKEN_TYPE.into(), "Bearer".into());
    data.insert(keys::EXPIRES_AT.into(), rfc3339(at_unix(claims.exp)));
    data.insert(keys::AUTHORIZATION.into(), format!("Bearer {token}"));
    Ok((
        DesiredSecret {
            name: secret_name.to_owned(),
            data,
        },
        claims,
    ))
}

#[cfg(test)]
mod tests;
