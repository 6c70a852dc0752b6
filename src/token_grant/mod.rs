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

mod checks;
pub mod controller;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kube::ResourceExt;

use crate::api::conditions::{ConditionStatus, reasons, types};
use crate::api::token_grant::TokenOutput;
use crate::api::{ServiceAccount, TokenGrant, TokenGrantStatus};
use crate::crypto::{self, SigningKey};
use crate::k8s::Event;
use crate::k8s::conditions::{Desired, find, set_condition};
use crate::service_account::{DesiredSecret, ObservedSecret, from_time, to_time};
use crate::token::AccessClaims;
use crate::token::deny::GrantRevocation;

pub use checks::{
    OutputDue, Problem, Revocation, TokenAdoption, audience_not_owned, controlled_data,
    desired_claims, output_due, revoked, secret_conflict, signing_key_usable, subject_unresolved,
    token_in_place, token_unrecorded,
};

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

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn at_unix(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

/// RFC 3339 text of a time (whole seconds, UTC).
pub(crate) fn rfc3339(t: SystemTime) -> String {
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
    Some(renewal_timing(
        out.lifetime.as_std(),
        out.renew_before.map(|d| d.as_std()),
        max_token_lifetime,
    ))
}

/// A materialized token's lifetime (capped) and how long before expiry it is renewed: a
/// `renewBefore` no shorter than the capped lifetime would renew on every pass, so it falls
/// back to a third of the lifetime, as does none.
pub fn renewal_timing(
    lifetime: Duration,
    renew_before: Option<Duration>,
    max_token_lifetime: Duration,
) -> (Duration, Duration) {
    let lifetime = lifetime.min(max_token_lifetime);
    let renew_before = renew_before
        .filter(|d| *d < lifetime)
        .unwrap_or(lifetime / 3);
    (lifetime, renew_before)
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

/// What the output stage decided.
#[derive(Default)]
struct OutputOutcome {
    secret: Option<DesiredSecret>,
    events: Vec<Event>,
    requeue: Option<Duration>,
    failed: bool,
    /// The Ready problem: the one the checks found, or the failure to issue a first token.
    blocker: Option<Problem>,
    /// Whether a valid token is in the Secret.
    token_ok: bool,
}

/// The checks in order, the builders they select, the Plan.
fn plan(grant: &TokenGrant, world: &World<'_>, ctx: &Context, write_failed: Option<&str>) -> Plan {
    let old = grant.status.clone().unwrap_or_default();
    let mut status = TokenGrantStatus {
        conditions: old.conditions.clone(),
        observed_generation: grant.metadata.generation,
        ..old.clone()
    };
    let revocation = revoked(grant, world, &old, ctx.now);
    let mut events = vec![];
    let revoke = match &revocation {
        Some(Revocation::Due {
            revocations,
            message,
        }) => {
            events.push(event(false, reasons::REVOKED, message));
            Some(revocations.clone())
        }
        _ => None,
    };
    let blocker = revocation
        .as_ref()
        .map(Revocation::problem)
        .or_else(|| audience_not_owned(grant, world))
        .or_else(|| subject_unresolved(grant, world))
        .or_else(|| secret_conflict(grant, world));

    let output = reconcile_output(grant, world, ctx, &old, &mut status, blocker, write_failed);
    events.extend(output.events);
    let ready = ready_condition(grant, output.blocker.as_ref(), output.token_ok);
    events.extend(blocker_event(output.blocker.as_ref()));
    let generation = grant.metadata.generation;
    set_condition(&mut status.conditions, ready, generation, &to_time(ctx.now));
    Plan {
        status,
        secret: output.secret,
        requeue_after: deny_window_requeue(grant, revoke.as_ref(), ctx.now).or(output.requeue),
        revoke,
        events,
        failed: output.failed,
    }
}

/// The output stage, or clearing what a previous output left.
fn reconcile_output(
    grant: &TokenGrant,
    world: &World<'_>,
    ctx: &Context,
    old: &TokenGrantStatus,
    status: &mut TokenGrantStatus,
    blocker: Option<Problem>,
    write_failed: Option<&str>,
) -> OutputOutcome {
    let timing = output_timing(grant, world.max_token_lifetime);
    let (Some(out), Some(timing)) = (grant.spec.output.as_ref(), timing) else {
        clear_output(status);
        return OutputOutcome {
            blocker,
            ..Default::default()
        };
    };
    let stage = OutputStage {
        grant,
        out,
        timing,
        world,
        ctx,
        old,
    };
    stage.reconcile(status, blocker, write_failed)
}

/// A revoked grant looks again when its deny-list entry ends.
fn deny_window_requeue(
    grant: &TokenGrant,
    revoke: Option<&Revocations>,
    now: SystemTime,
) -> Option<Duration> {
    let g = revoke
        .and_then(|r| r.grant.as_ref())
        .filter(|_| grant.spec.revoked)?;
    Some(Duration::from_secs(
        g.until.saturating_sub(unix(now)).max(1),
    ))
}

/// No output: nothing is issued; what a previous output left is not tracked.
fn clear_output(status: &mut TokenGrantStatus) {
    status.conditions.retain(|c| c.type_ != types::ISSUING);
    clear_token(status);
}

/// The status records no token in place.
fn clear_token(status: &mut TokenGrantStatus) {
    status.not_after = None;
    status.renewal_time = None;
    status.token_id = None;
}

/// The output of one grant, in one pass.
struct OutputStage<'a> {
    grant: &'a TokenGrant,
    out: &'a TokenOutput,
    /// Lifetime and `renewBefore`.
    timing: (Duration, Duration),
    world: &'a World<'a>,
    ctx: &'a Context,
    old: &'a TokenGrantStatus,
}

impl OutputStage<'_> {
    /// The output checks in order and the builders they select; writes the token fields
    /// and the Issuing condition of `status`.
    fn reconcile(
        &self,
        status: &mut TokenGrantStatus,
        mut blocker: Option<Problem>,
        write_failed: Option<&str>,
    ) -> OutputOutcome {
        let revoked = self.grant.spec.revoked;
        let data = controlled_data(self.world);
        let mut in_place = token_in_place(self.world, self.ctx.now);
        let mut secret = None;
        if revoked {
            // A revoked token must not sit in a Secret.
            secret = self.without_token(&data);
            clear_token(status);
            in_place = None;
        }
        in_place = in_place.filter(|c| self.counts(c, status));
        let mut outcome = OutputOutcome::default();
        let mut issuing = None;
        if let Some((claims, due)) = self.due(blocker.is_none(), in_place.as_ref()) {
            let why = due.message(&self.out.secret_name);
            let renewed = in_place.is_some() || self.old.revision.is_some();
            match self.issue(&data, claims, &why, write_failed, renewed, status) {
                Ok((written, event, claims)) => {
                    secret = Some(written);
                    outcome.events.push(event);
                    in_place = Some(claims);
                }
                Err(message) => {
                    outcome.failed = true;
                    outcome.events.push(issue_failed_event(&why, &message));
                    issuing = Some(issue_failed_condition(&why, &message));
                    if in_place.is_none() {
                        blocker = Some(Problem::new(reasons::ISSUE_FAILED, message));
                    }
                }
            }
        }
        if !revoked {
            outcome.requeue = self.record_renewal(status, in_place.as_ref());
            outcome.token_ok = in_place.is_some();
        }
        let issuing = issuing.unwrap_or_else(|| {
            issuing_condition(blocker.as_ref(), in_place.as_ref(), self.timing.1)
        });
        let generation = self.grant.metadata.generation;
        set_condition(
            &mut status.conditions,
            issuing,
            generation,
            &to_time(self.ctx.now),
        );
        OutputOutcome {
            secret,
            blocker,
            ..outcome
        }
    }

    /// Whether the token in place counts: recorded, or newer than the recorded one (then
    /// recorded in `status`, see [`token_unrecorded`]).
    fn counts(&self, c: &AccessClaims, status: &mut TokenGrantStatus) -> bool {
        match token_unrecorded(c, self.old) {
            None => true,
            Some(TokenAdoption::Adopt) => {
                record_adopted(status, c, self.old);
                true
            }
            Some(TokenAdoption::Older) => false,
        }
    }

    /// The Secret without the token keys, if the grant controls it and it holds any.
    fn without_token(&self, data: &BTreeMap<String, String>) -> Option<DesiredSecret> {
        let controlled = self.world.secret.as_ref().is_some_and(|s| s.controlled);
        if !controlled || !keys::ALL.iter().any(|k| data.contains_key(*k)) {
            return None;
        }
        let mut kept = data.clone();
        for k in keys::ALL {
            kept.remove(k);
        }
        Some(DesiredSecret {
            name: self.out.secret_name.clone(),
            data: kept,
        })
    }

    /// The token to mint and why, when nothing blocks and one is due.
    fn due(
        &self,
        unblocked: bool,
        in_place: Option<&AccessClaims>,
    ) -> Option<(AccessClaims, OutputDue)> {
        let (lifetime, _) = self.timing;
        let want =
            desired_claims(self.grant, self.world, lifetime, self.ctx.now).filter(|_| unblocked)?;
        let due = output_due(&want, in_place, self.old, self.timing, self.ctx.now)?;
        Some((want, due))
    }

    /// Mints the token into the Secret's data and records it in `status`: the Secret, the
    /// Event and the claims; `Err` says why it could not be.
    fn issue(
        &self,
        data: &BTreeMap<String, String>,
        mut claims: AccessClaims,
        why: &str,
        write_failed: Option<&str>,
        renewed: bool,
        status: &mut TokenGrantStatus,
    ) -> Result<(DesiredSecret, Event, AccessClaims), String> {
        let secret_name = &self.out.secret_name;
        let key = signing_key_usable(self.world, write_failed, secret_name)?;
        claims.jti = crypto::random_token_id();
        let token = crypto::sign_jwt(key, TOKEN_TYPE_HEADER, &claims)
            .map_err(|e| format!("signing failed: {e}"))?;
        let not_after = at_unix(claims.exp);
        let mut data = data.clone();
        data.insert(keys::ACCESS_TOKEN.into(), token.clone());
        data.insert(keys::TOKEN_TYPE.into(), "Bearer".into());
        data.insert(keys::EXPIRES_AT.into(), rfc3339(not_after));
        data.insert(keys::AUTHORIZATION.into(), format!("Bearer {token}"));
        let revision = status.revision.unwrap_or(0) + 1;
        status.revision = Some(revision);
        status.last_issued = Some(to_time(self.ctx.now));
        status.not_after = Some(to_time(not_after));
        status.token_id = Some(claims.jti.clone());
        let message = format!(
            "token {} (revision {revision}) written to Secret {secret_name}, valid until {} ({why})",
            claims.jti,
            rfc3339(not_after)
        );
        let reason = if renewed {
            reasons::RENEWED
        } else {
            reasons::ISSUED
        };
        let secret = DesiredSecret {
            name: secret_name.clone(),
            data,
        };
        Ok((secret, event(false, reason, &message), claims))
    }

    /// Records when the token in place is renewed and returns when to look again.
    fn record_renewal(
        &self,
        status: &mut TokenGrantStatus,
        in_place: Option<&AccessClaims>,
    ) -> Option<Duration> {
        let Some(c) = in_place else {
            if status
                .not_after
                .as_ref()
                .is_some_and(|t| unix(from_time(t)) <= unix(self.ctx.now))
            {
                // The recorded token expired and nothing replaced it.
                status.renewal_time = None;
            }
            return None;
        };
        let renewal = at_unix(c.exp) - self.timing.1;
        status.renewal_time = Some(to_time(renewal));
        let after = renewal
            .duration_since(self.ctx.now)
            .unwrap_or(Duration::from_secs(1));
        Some(after.max(Duration::from_secs(1)))
    }
}

/// Records a token found in the Secret as the one in place.
fn record_adopted(status: &mut TokenGrantStatus, c: &AccessClaims, old: &TokenGrantStatus) {
    status.token_id = Some(c.jti.clone());
    status.not_after = Some(to_time(at_unix(c.exp)));
    status.last_issued = Some(to_time(at_unix(c.iat)));
    status.revision = Some(old.revision.unwrap_or(0) + 1);
}

pub(crate) fn event(warning: bool, reason: &'static str, message: &str) -> Event {
    Event {
        warning,
        reason,
        message: message.to_owned(),
    }
}

fn issue_failed_event(why: &str, message: &str) -> Event {
    event(
        true,
        reasons::ISSUE_FAILED,
        &format!("{why}: {message}; the previous token, if any, stays in place"),
    )
}

fn issue_failed_condition(why: &str, message: &str) -> Desired<'static> {
    Desired {
        type_: types::ISSUING,
        status: ConditionStatus::False,
        reason: reasons::ISSUE_FAILED,
        message: format!("{why}: {message}"),
    }
}

/// `Issuing` when nothing failed: the problem, the token in place, or a token due.
fn issuing_condition(
    blocker: Option<&Problem>,
    in_place: Option<&AccessClaims>,
    renew_before: Duration,
) -> Desired<'static> {
    let (status, reason, message) = match (blocker, in_place) {
        (Some(p), _) if p.reason == reasons::PENDING => {
            (ConditionStatus::True, reasons::PENDING, p.message.clone())
        }
        (Some(p), _) => (ConditionStatus::False, p.reason, p.message.clone()),
        (None, Some(c)) => (
            ConditionStatus::False,
            reasons::ISSUED,
            format!(
                "token {} valid until {}; renewal at {}",
                c.jti,
                rfc3339(at_unix(c.exp)),
                rfc3339(at_unix(c.exp) - renew_before)
            ),
        ),
        (None, None) => (
            ConditionStatus::True,
            reasons::PENDING,
            "a token is due".into(),
        ),
    };
    Desired {
        type_: types::ISSUING,
        status,
        reason,
        message,
    }
}

/// `Ready`: False with the problem, or while an output has no valid token; else True.
fn ready_condition(
    grant: &TokenGrant,
    blocker: Option<&Problem>,
    token_ok: bool,
) -> Desired<'static> {
    let output = grant.spec.output.as_ref();
    let (status, reason, message) = match blocker {
        Some(p) => (ConditionStatus::False, p.reason, p.message.clone()),
        None if output.is_some() && !token_ok => (
            ConditionStatus::False,
            reasons::PENDING,
            "no valid token in the output Secret yet".into(),
        ),
        None => (
            ConditionStatus::True,
            reasons::READY,
            match output {
                Some(o) => format!("a valid token is in Secret {}", o.secret_name),
                None => format!("the subject may get tokens for {}", grant.spec.audience),
            },
        ),
    };
    Desired {
        type_: types::READY,
        status,
        reason,
        message,
    }
}

/// A Warning Event for a problem a user must fix (not revocation, a failure already reported,
/// or waiting).
fn blocker_event(blocker: Option<&Problem>) -> Option<Event> {
    blocker
        .filter(|p| {
            p.reason != reasons::REVOKED
                && p.reason != reasons::ISSUE_FAILED
                && p.reason != reasons::PENDING
        })
        .map(|p| event(true, p.reason, &p.message))
}

#[cfg(test)]
mod tests;
