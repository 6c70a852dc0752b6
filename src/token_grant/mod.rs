//! TokenGrant reconciliation, as pure stages: given the grant, what was observed around it
//! (who claims its audience, whether its subject resolves, its output Secret, the signing key
//! in force) and the time, decide the status, the output Secret to write, the revocations to
//! record and the Events. No client here: the controller ([`controller`]) and `dev` do the
//! I/O around [`reconcile`].
//!
//! Readiness: a grant may only open an audience claimed (`spec.api`) by an account in its own
//! namespace (unless the operator-wide switch allows unclaimed audiences), its subject must
//! resolve, and it must not be revoked. A grant with `spec.output` is Ready while a valid token
//! sits in its Secret.
//!
//! `spec.output` works like a cert-manager Certificate: a token is minted for the subject into
//! a Secret the grant controls, and renewed `renewBefore` ahead of its expiry. The status
//! records the token in place (`tokenId`, `notAfter`, `renewalTime`, `revision`); a pass that
//! finds that very token in the Secret with nothing due writes nothing, so restarts never
//! re-issue. A failed renewal leaves the old token in place (`Issuing=False`, reason
//! `IssueFailed`) and is retried with backoff. A Secret of that name the grant does not control
//! is never written (`SecretConflict`). Random material (the `jti`) is only drawn when a token
//! is actually minted.
//!
//! Revocation. Every token issued under a grant (client credentials, JWT bearer, token
//! exchange, tenant tokens, and the output token here) names it in the private claim
//! `grants` as `namespace/name/uid`; token servers hold a token inactive once a grant it
//! names is out of their registry, which drops deleted grants and `spec.revoked` ones. So
//! deletion needs no finalizer and no cleanup, and a grant deleted with its namespace, or
//! while the controller is not running, revokes all the same. `spec.revoked` also puts the
//! subject and audience on the deny list until every token issued before could have expired,
//! so un-revoking the grant does not bring those tokens back (and tokens from earlier
//! versions, which name no grant, are covered too); the Ready condition with reason `Revoked`
//! records that it was written, so it is written once. Only a grant whose audience is owned
//! in its namespace may write one: otherwise any namespace could void another namespace's
//! tokens. An output token that does not name the grant's current uid (issued by an earlier
//! version) is re-issued, so it too dies with the grant.

pub mod controller;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kube::ResourceExt;

use crate::api::conditions::{ConditionStatus, reasons, types};
use crate::api::{ServiceAccount, TokenGrant, TokenGrantStatus};
use crate::crypto::{self, SigningKey};
use crate::k8s::Event;
use crate::k8s::conditions::{Desired, find, set_condition};
use crate::service_account::{DesiredSecret, ObservedSecret, from_time, to_time};
use crate::token::AccessClaims;
use crate::token::deny::GrantRevocation;

/// The finalizer earlier versions put on every TokenGrant (their deletion wrote a deny-list
/// entry first). Nothing adds it any more; the controller removes it where it finds it.
pub const LEGACY_FINALIZER: &str = "s2s.dev/revocation";
/// `s2s.dev/component` of output Secrets.
pub const COMPONENT: &str = "token";
/// The `typ` header of access tokens (RFC 9068).
pub const TOKEN_TYPE_HEADER: &str = "at+jwt";

/// Keys of the output Secret.
pub mod keys {
    /// The JWT.
    pub const ACCESS_TOKEN: &str = "access_token";
    /// Always `Bearer`.
    pub const TOKEN_TYPE: &str = "token_type";
    /// The token's `exp` as RFC 3339.
    pub const EXPIRES_AT: &str = "expires_at";
    /// `Bearer <token>`, ready for an `Authorization` header.
    pub const AUTHORIZATION: &str = "authorization";
    /// Every key the grant writes.
    pub const ALL: [&str; 4] = [ACCESS_TOKEN, TOKEN_TYPE, EXPIRES_AT, AUTHORIZATION];
}

/// What is known of a ServiceAccount subject.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountView {
    /// `status.clientId`, once the controller has given it one.
    pub client_id: Option<String>,
    /// `spec.scopes`: the most its tokens may carry.
    pub scopes: Vec<String>,
    /// `spec.disabled`.
    pub disabled: bool,
}

/// The grant's subject, as resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum SubjectView {
    /// A ServiceAccount that exists.
    Account(AccountView),
    /// A subject of a TrustedIssuer that exists: the tokens' `sub`.
    Issuer(String),
    /// The referenced object does not exist (the message says which).
    Missing(String),
}

/// What was observed around a grant.
#[derive(Clone, Debug)]
pub struct World<'a> {
    /// Who claims the grant's audience (`namespace/name`), if anyone.
    pub audience_owner: Option<String>,
    /// The scopes the audience's API defines (empty when it defines none).
    pub defined_scopes: Vec<String>,
    /// The operator-wide switch letting grants name audiences nobody claims.
    pub allow_unclaimed_audiences: bool,
    /// The subject.
    pub subject: SubjectView,
    /// The output Secret, if it exists.
    pub secret: Option<ObservedSecret>,
    /// The key that signs now, or why there is none.
    pub signing_key: Result<&'a SigningKey, String>,
    /// The issuer URL (`iss`).
    pub issuer: &'a str,
    /// Upper bound on every token's lifetime.
    pub max_token_lifetime: Duration,
}

/// The time of the pass.
#[derive(Clone, Copy, Debug)]
pub struct Context {
    /// Now.
    pub now: SystemTime,
}

/// Deny-list entries to write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revocations {
    /// Every token for the subject and audience issued until now.
    pub grant: Option<GrantRevocation>,
    /// The output token in place (`jti`, `exp`), also when the subject is gone.
    pub token: Option<(String, u64)>,
}

impl Revocations {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.grant.is_none() && self.token.is_none()
    }
}

/// What to do.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The new status (compare with the old one before writing).
    pub status: TokenGrantStatus,
    /// The output Secret to write (create, or replace when its data differs).
    pub secret: Option<DesiredSecret>,
    /// Deny-list entries to write before the status (which records that they were).
    pub revoke: Option<Revocations>,
    /// Events to record.
    pub events: Vec<Event>,
    /// When to look again (renewal, or the end of the deny window).
    pub requeue_after: Option<Duration>,
    /// Whether (re)issuing failed: the caller retries with backoff.
    pub failed: bool,
}

/// Extra clock skew allowed on tokens; the deny window outlasts it.
pub fn clock_skew() -> Duration {
    crate::token::Config::new("").clock_skew
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn at_unix(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

/// RFC 3339 text of a time (whole seconds, UTC).
fn rfc3339(t: SystemTime) -> String {
    to_time(t).0.to_string()
}

/// The ServiceAccount a grant names (`namespace`, `name`), if any.
pub fn subject_account(grant: &TokenGrant) -> Option<(String, String)> {
    let ns = grant.namespace().unwrap_or_default();
    grant
        .spec
        .subject
        .service_account
        .as_ref()
        .map(|r| (r.namespace_or(&ns).to_owned(), r.name.clone()))
}

/// The TrustedIssuer a grant names (`namespace`, `name`), if any.
pub fn subject_issuer(grant: &TokenGrant) -> Option<(String, String)> {
    let ns = grant.namespace().unwrap_or_default();
    grant
        .spec
        .subject
        .issuer_ref
        .as_ref()
        .map(|r| (r.namespace_or(&ns).to_owned(), r.name.clone()))
}

/// Resolves the subject against every ServiceAccount; `issuer_exists` answers for a
/// TrustedIssuer (`namespace`, `name`).
pub fn resolve_subject<'s>(
    grant: &TokenGrant,
    accounts: impl IntoIterator<Item = &'s ServiceAccount>,
    issuer_exists: impl Fn(&str, &str) -> bool,
) -> SubjectView {
    if let Some((ns, name)) = subject_account(grant) {
        return match accounts
            .into_iter()
            .find(|a| a.namespace().as_deref() == Some(ns.as_str()) && a.name_any() == name)
        {
            Some(a) => SubjectView::Account(AccountView {
                client_id: a.status.as_ref().and_then(|s| s.client_id.clone()),
                scopes: a.spec.scopes.clone(),
                disabled: a.spec.disabled,
            }),
            None => SubjectView::Missing(format!("ServiceAccount {ns}/{name} does not exist")),
        };
    }
    match (subject_issuer(grant), &grant.spec.subject.subject) {
        (Some((ns, name)), Some(sub)) if issuer_exists(&ns, &name) => {
            SubjectView::Issuer(sub.clone())
        }
        (Some((ns, name)), Some(_)) => {
            SubjectView::Missing(format!("TrustedIssuer {ns}/{name} does not exist"))
        }
        _ => SubjectView::Missing(
            "the subject names neither a ServiceAccount nor an issuer and subject".into(),
        ),
    }
}

/// Who claims the grant's audience (`namespace/name`) and the scopes its API defines.
pub fn audience_owner(
    grant: &TokenGrant,
    accounts: &[ServiceAccount],
) -> (Option<String>, Vec<String>) {
    let owner = crate::store::audience_claims(accounts).remove(&grant.spec.audience);
    let defined = owner
        .as_ref()
        .and_then(|o| accounts.iter().find(|a| crate::store::key_of(*a) == *o))
        .and_then(|a| a.spec.api.as_ref())
        .map(|api| api.scopes.iter().map(|s| s.name.clone()).collect())
        .unwrap_or_default();
    (owner, defined)
}

/// Whether the grant's audience is claimed in its own namespace (or nobody claims it and the
/// switch allows that). `Err` carries the message.
pub fn audience_owned(grant: &TokenGrant, world: &World<'_>) -> Result<(), String> {
    let ns = grant.namespace().unwrap_or_default();
    let audience = &grant.spec.audience;
    match &world.audience_owner {
        Some(owner) if owner.split_once('/').map(|(n, _)| n) == Some(ns.as_str()) => Ok(()),
        Some(owner) => Err(format!(
            "audience {audience} is claimed by {owner}, not by an account in namespace {ns}"
        )),
        None if world.allow_unclaimed_audiences => Ok(()),
        None => Err(format!(
            "no ServiceAccount in namespace {ns} claims audience {audience} (spec.api.audience)"
        )),
    }
}

/// The `sub` of the tokens issued under the grant, when known.
pub fn token_subject(world: &World<'_>) -> Option<String> {
    match &world.subject {
        SubjectView::Account(a) => a.client_id.clone(),
        SubjectView::Issuer(sub) => Some(sub.clone()),
        SubjectView::Missing(_) => None,
    }
}

/// The deny-list entries that void the grant's tokens at `now`. No grant entry for an
/// audience the grant does not own (it never opened it, and must not void tokens another
/// namespace's grant allowed) or an unknown subject; the output token in place is always
/// listed.
pub fn revocations(grant: &TokenGrant, world: &World<'_>, now: SystemTime) -> Revocations {
    let now_s = unix(now);
    let window = world.max_token_lifetime + clock_skew();
    let grant_entry = audience_owned(grant, world)
        .ok()
        .and(token_subject(world))
        .map(|sub| GrantRevocation {
            sub,
            audience: grant.spec.audience.clone(),
            before: now_s,
            until: now_s + window.as_secs(),
        });
    let status = grant.status.clone().unwrap_or_default();
    let token = status
        .token_id
        .zip(status.not_after.as_ref().map(|t| unix(from_time(t))))
        .filter(|(_, exp)| *exp >= now_s);
    Revocations {
        grant: grant_entry,
        token,
    }
}

/// Whether the status records that the revocation was written.
pub fn revocation_recorded(status: Option<&TokenGrantStatus>) -> bool {
    status
        .and_then(|s| find(&s.conditions, types::READY))
        .is_some_and(|c| c.reason == reasons::REVOKED)
}

/// The output token's lifetime and how long before expiry it is renewed.
pub fn output_timing(
    grant: &TokenGrant,
    max_token_lifetime: Duration,
) -> Option<(Duration, Duration)> {
    let out = grant.spec.output.as_ref()?;
    let lifetime = out.lifetime.as_std().min(max_token_lifetime);
    // A renewBefore no shorter than the (capped) lifetime would renew on every pass.
    let renew_before = out
        .renew_before
        .map(|d| d.as_std())
        .filter(|d| *d < lifetime)
        .unwrap_or(lifetime / 3);
    Some((lifetime, renew_before))
}

/// The token an output Secret holds, if it is complete and readable.
pub fn token_in_secret(data: &BTreeMap<String, String>) -> Option<AccessClaims> {
    let token = data.get(keys::ACCESS_TOKEN).filter(|t| !t.is_empty())?;
    if data.get(keys::AUTHORIZATION) != Some(&format!("Bearer {token}"))
        || data.get(keys::TOKEN_TYPE).map(String::as_str) != Some("Bearer")
    {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let claims: AccessClaims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let expires_at = data.get(keys::EXPIRES_AT)?;
    (expires_at == &rfc3339(at_unix(claims.exp))).then_some(claims)
}

/// Whether the token in the Secret is the one the status records (same `jti` and expiry).
pub fn is_recorded(claims: &AccessClaims, status: &TokenGrantStatus) -> bool {
    status.token_id.as_deref() == Some(claims.jti.as_str())
        && status.not_after.as_ref().map(|t| unix(from_time(t))) == Some(claims.exp)
}

/// Whether a token no longer says what the grant asks for (subject, audience, scopes,
/// tenant, issuer or lifetime changed). Returns what differs.
pub fn token_outdated(
    have: &AccessClaims,
    want: &AccessClaims,
    lifetime: Duration,
) -> Option<&'static str> {
    if have.iss != want.iss {
        Some("issuer")
    } else if have.sub != want.sub {
        Some("subject")
    } else if have.aud != want.aud {
        Some("audience")
    } else if have.scope != want.scope {
        Some("scopes")
    } else if have.tenant != want.tenant {
        Some("tenant")
    } else if have.grants != want.grants {
        // A token from before tokens named their grant (or from a grant of the same name
        // that was deleted and created again) would survive the grant's deletion.
        Some("grant id")
    } else if have.exp.saturating_sub(have.iat) != lifetime.as_secs() {
        Some("lifetime")
    } else {
        None
    }
}

/// The `grants` claim of the grant's output token: the grant itself, by uid, so deleting the
/// grant voids the token at every token server without a finalizer.
pub fn output_grant_refs(grant: &TokenGrant) -> Vec<String> {
    let uid = grant.uid().unwrap_or_default();
    if uid.is_empty() {
        return vec![];
    }
    vec![crate::token::registry::grant_claim(
        &grant.namespace().unwrap_or_default(),
        &grant.name_any(),
        &uid,
    )]
}

/// Whether renewal is due at `now` for a token expiring at `exp` (Unix seconds).
pub fn renewal_due(exp: u64, renew_before: Duration, now: SystemTime) -> bool {
    unix(now) + renew_before.as_secs() >= exp
}

/// The reconcile of one grant.
pub fn reconcile(grant: &TokenGrant, world: &World<'_>, ctx: &Context) -> Plan {
    plan(grant, world, ctx, None)
}

/// The plan after writing the Secret of `planned` failed: the old token stays, the failure
/// is reported, and the caller retries with backoff.
pub fn after_write_failure(
    grant: &TokenGrant,
    world: &World<'_>,
    ctx: &Context,
    why: &str,
) -> Plan {
    plan(grant, world, ctx, Some(why))
}

/// A problem that keeps the grant from being Ready.
struct Problem {
    reason: &'static str,
    message: String,
}

fn problem(reason: &'static str, message: impl Into<String>) -> Option<Problem> {
    Some(Problem {
        reason,
        message: message.into(),
    })
}

fn plan(grant: &TokenGrant, world: &World<'_>, ctx: &Context, write_failed: Option<&str>) -> Plan {
    let old = grant.status.clone().unwrap_or_default();
    let generation = grant.metadata.generation;
    let now_t = to_time(ctx.now);
    let now_s = unix(ctx.now);
    let mut status = TokenGrantStatus {
        conditions: old.conditions.clone(),
        observed_generation: generation,
        ..old.clone()
    };
    let mut events = vec![];
    let mut secret = None;
    let mut revoke = None;
    let mut requeue = None;
    let mut failed = false;
    let output = grant.spec.output.as_ref();
    let secret_name = output.map(|o| o.secret_name.as_str()).unwrap_or_default();
    let observed = world.secret.as_ref();
    let foreign = observed.is_some_and(|s| !s.controlled);

    // The checks, in order; the first problem is the Ready reason.
    let mut blocker = if grant.spec.revoked {
        let message = if revocation_recorded(Some(&old)) {
            find(&old.conditions, types::READY)
                .map(|c| c.message.clone())
                .unwrap_or_default()
        } else {
            let r = revocations(grant, world, ctx.now);
            let message = match &r.grant {
                Some(g) => format!(
                    "revoked at {}: tokens issued under it until then are void until {}",
                    rfc3339(ctx.now),
                    rfc3339(at_unix(g.until))
                ),
                None => format!(
                    "revoked at {}: no deny-list entry was needed (the audience is not owned here or the subject is unknown)",
                    rfc3339(ctx.now)
                ),
            };
            events.push(Event {
                warning: false,
                reason: reasons::REVOKED,
                message: message.clone(),
            });
            revoke = Some(r);
            message
        };
        problem(reasons::REVOKED, message)
    } else if let Err(m) = audience_owned(grant, world) {
        problem(reasons::AUDIENCE_NOT_OWNED, m)
    } else {
        match &world.subject {
            SubjectView::Missing(m) => problem(reasons::NOT_FOUND, m.clone()),
            SubjectView::Account(a) if a.disabled => {
                problem(reasons::DISABLED, "the subject ServiceAccount is disabled")
            }
            SubjectView::Issuer(_) if output.is_some() => problem(
                reasons::INVALID_SPEC,
                "output needs a ServiceAccount subject",
            ),
            SubjectView::Account(a) if a.client_id.is_none() && output.is_some() => problem(
                reasons::PENDING,
                "waiting for the subject ServiceAccount to get its client id",
            ),
            _ if output.is_some() && foreign => problem(
                reasons::SECRET_CONFLICT,
                format!(
                    "Secret {secret_name} exists and is not controlled by this TokenGrant; it is left alone"
                ),
            ),
            _ => None,
        }
    };

    // The output token.
    let mut issuing: Option<Desired<'static>> = None;
    let mut token_ok = false;
    if let (Some(out), Some((lifetime, renew_before))) =
        (output, output_timing(grant, world.max_token_lifetime))
    {
        let data = observed
            .filter(|s| s.controlled)
            .map(|s| s.data.clone())
            .unwrap_or_default();
        let mut in_place = token_in_secret(&data).filter(|c| c.exp > now_s);
        if grant.spec.revoked {
            // A revoked token must not sit in a Secret.
            if observed.is_some_and(|s| s.controlled)
                && keys::ALL.iter().any(|k| data.contains_key(*k))
            {
                let mut kept = data.clone();
                for k in keys::ALL {
                    kept.remove(k);
                }
                secret = Some(DesiredSecret {
                    name: out.secret_name.clone(),
                    data: kept,
                });
            }
            status.not_after = None;
            status.renewal_time = None;
            status.token_id = None;
            in_place = None;
        }
        // A token in our Secret that the status does not record is adopted if it is newer
        // than the recorded one (the status write after the Secret write failed, or the
        // status was lost): re-issuing would only churn.
        if let Some(c) = in_place.as_ref().filter(|c| !is_recorded(c, &old)) {
            let newer = old
                .last_issued
                .as_ref()
                .is_none_or(|t| c.iat >= unix(from_time(t)));
            if newer {
                status.token_id = Some(c.jti.clone());
                status.not_after = Some(to_time(at_unix(c.exp)));
                status.last_issued = Some(to_time(at_unix(c.iat)));
                status.revision = Some(old.revision.unwrap_or(0) + 1);
            } else {
                in_place = None;
            }
        }
        let want = match (&world.subject, &blocker) {
            (SubjectView::Account(a), None) => {
                let client_id = a.client_id.clone().unwrap_or_default();
                let scope = crate::token::scopes::resolve(
                    &[],
                    &a.scopes,
                    &grant.spec.scopes,
                    &world.defined_scopes,
                )
                .unwrap_or_default();
                Some(AccessClaims {
                    iss: world.issuer.trim_end_matches('/').to_owned(),
                    sub: client_id.clone(),
                    aud: grant.spec.audience.clone(),
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
            _ => None,
        };
        let due = match (&want, &in_place) {
            (None, _) => None,
            (Some(_), None) if old.revision.is_none() => Some("first issue".to_owned()),
            (Some(_), None) => Some(format!(
                "Secret {secret_name} no longer holds a valid token"
            )),
            (Some(w), Some(have)) => token_outdated(have, w, lifetime)
                .map(|what| format!("the grant's {what} changed"))
                .or_else(|| {
                    renewal_due(have.exp, renew_before, ctx.now).then(|| "renewal due".to_owned())
                }),
        };
        match (want, due) {
            (Some(mut claims), Some(why)) => {
                let failure = match (write_failed, world.signing_key.as_ref()) {
                    (Some(w), _) => Err(format!("cannot write Secret {secret_name}: {w}")),
                    (None, Err(e)) => Err(format!("no signing key: {e}")),
                    (None, Ok(key)) => {
                        claims.jti = crypto::random_token_id();
                        crypto::sign_jwt(key, TOKEN_TYPE_HEADER, &claims)
                            .map_err(|e| format!("signing failed: {e}"))
                    }
                };
                match failure {
                    Ok(token) => {
                        let mut data = data.clone();
                        data.insert(keys::ACCESS_TOKEN.into(), token.clone());
                        data.insert(keys::TOKEN_TYPE.into(), "Bearer".into());
                        data.insert(keys::EXPIRES_AT.into(), rfc3339(at_unix(claims.exp)));
                        data.insert(keys::AUTHORIZATION.into(), format!("Bearer {token}"));
                        secret = Some(DesiredSecret {
                            name: out.secret_name.clone(),
                            data,
                        });
                        let not_after = at_unix(claims.exp);
                        let revision = status.revision.unwrap_or(0) + 1;
                        status.revision = Some(revision);
                        status.last_issued = Some(now_t.clone());
                        status.not_after = Some(to_time(not_after));
                        status.token_id = Some(claims.jti.clone());
                        let renewed = in_place.is_some() || old.revision.is_some();
                        events.push(Event {
                            warning: false,
                            reason: if renewed { reasons::RENEWED } else { reasons::ISSUED },
                            message: format!(
                                "token {} (revision {revision}) written to Secret {secret_name}, valid until {} ({why})",
                                claims.jti,
                                rfc3339(not_after)
                            ),
                        });
                        in_place = Some(claims);
                    }
                    Err(message) => {
                        failed = true;
                        events.push(Event {
                            warning: true,
                            reason: reasons::ISSUE_FAILED,
                            message: format!(
                                "{why}: {message}; the previous token, if any, stays in place"
                            ),
                        });
                        issuing = Some(Desired {
                            type_: types::ISSUING,
                            status: ConditionStatus::False,
                            reason: reasons::ISSUE_FAILED,
                            message: format!("{why}: {message}"),
                        });
                        if in_place.is_none() {
                            blocker = problem(reasons::ISSUE_FAILED, message);
                        }
                    }
                }
            }
            (Some(_), None) => {}
            (None, _) => {}
        }
        if !grant.spec.revoked {
            if let Some(c) = &in_place {
                let renewal = at_unix(c.exp) - renew_before;
                status.renewal_time = Some(to_time(renewal));
                let after = renewal
                    .duration_since(ctx.now)
                    .unwrap_or(Duration::from_secs(1));
                requeue = Some(after.max(Duration::from_secs(1)));
                token_ok = true;
            } else if status
                .not_after
                .as_ref()
                .is_some_and(|t| unix(from_time(t)) <= now_s)
            {
                // The recorded token expired and nothing replaced it.
                status.renewal_time = None;
            }
        }
        let issuing = issuing.unwrap_or_else(|| match (&blocker, &in_place) {
            (Some(p), _) if p.reason == reasons::PENDING => Desired {
                type_: types::ISSUING,
                status: ConditionStatus::True,
                reason: reasons::PENDING,
                message: p.message.clone(),
            },
            (Some(p), _) => Desired {
                type_: types::ISSUING,
                status: ConditionStatus::False,
                reason: p.reason,
                message: p.message.clone(),
            },
            (None, Some(c)) => Desired {
                type_: types::ISSUING,
                status: ConditionStatus::False,
                reason: reasons::ISSUED,
                message: format!(
                    "token {} valid until {}; renewal at {}",
                    c.jti,
                    rfc3339(at_unix(c.exp)),
                    rfc3339(at_unix(c.exp) - renew_before)
                ),
            },
            (None, None) => Desired {
                type_: types::ISSUING,
                status: ConditionStatus::True,
                reason: reasons::PENDING,
                message: "a token is due".into(),
            },
        });
        set_condition(&mut status.conditions, issuing, generation, &now_t);
    } else {
        // No output: nothing is issued; what a previous output left is not tracked.
        status.conditions.retain(|c| c.type_ != types::ISSUING);
        status.not_after = None;
        status.renewal_time = None;
        status.token_id = None;
    }

    if grant.spec.revoked
        && let Some(g) = revoke.as_ref().and_then(|r| r.grant.as_ref())
    {
        requeue = Some(Duration::from_secs(g.until.saturating_sub(now_s).max(1)));
    }

    let ready = match &blocker {
        Some(p) => Desired {
            type_: types::READY,
            status: ConditionStatus::False,
            reason: p.reason,
            message: p.message.clone(),
        },
        None if output.is_some() && !token_ok => Desired {
            type_: types::READY,
            status: ConditionStatus::False,
            reason: reasons::PENDING,
            message: "no valid token in the output Secret yet".into(),
        },
        None => Desired {
            type_: types::READY,
            status: ConditionStatus::True,
            reason: reasons::READY,
            message: match output {
                Some(o) => format!("a valid token is in Secret {}", o.secret_name),
                None => format!("the subject may get tokens for {}", grant.spec.audience),
            },
        },
    };
    if let Some(p) = &blocker
        && p.reason != reasons::REVOKED
        && p.reason != reasons::ISSUE_FAILED
        && p.reason != reasons::PENDING
    {
        events.push(Event {
            warning: true,
            reason: p.reason,
            message: p.message.clone(),
        });
    }
    set_condition(&mut status.conditions, ready, generation, &now_t);
    Plan {
        status,
        secret,
        revoke,
        events,
        requeue_after: requeue,
        failed,
    }
}

#[cfg(test)]
mod tests;
