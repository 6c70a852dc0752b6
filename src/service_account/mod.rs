//! ServiceAccount reconciliation, as pure stages: given the account, what was observed (its
//! Secrets, who claims its audience) and the time, decide the Secrets to write, the status
//! and the Events. No client here: the controller and `dev` do the I/O around [`reconcile`].
//!
//! Random material is created once: a credential is kept as long as its Secret still holds
//! it, and replaced only on rotation (schedule, `s2s.dev/rotate`, algorithm change) or when
//! the Secret lost it. On rotation the old credential stays valid, and in the Secret, for the
//! grace period.

mod checks;
pub mod controller;
pub mod secret;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::conditions::{ConditionStatus, reasons, types};
use crate::api::service_account::{CredentialSummary, CredentialType, CredentialVerifier};
use crate::api::{KeyAlgorithm, ServiceAccount, ServiceAccountStatus};
use crate::crypto::{self, CryptoError, GeneratedKey};
use crate::k8s::Event;
use crate::k8s::conditions::{Desired, set_condition};

pub use checks::{
    ClientIdDecision, Method, Problem, Recorded, RotationReason, RotationRequest,
    audience_conflict, client_id_decision, disabled, grace_over, grace_period, methods, recorded,
    rotation_due, rotation_reason, rotation_request, secret_conflict,
};
use checks::{
    CredentialAction, Found, Previous, credential_action, credential_held, credential_unrecorded,
    previous_credential, rotation_resumable,
};

/// Annotation whose every new value rotates the account's credentials.
pub const ROTATE_ANNOTATION: &str = "s2s.dev/rotate";

/// Where random material comes from (injected, so tests can count and fail it).
pub trait Generator {
    /// A new client id.
    fn client_id(&mut self) -> String;
    /// A new 256-bit client secret.
    fn secret(&mut self) -> String;
    /// A new key pair.
    fn key(&mut self, alg: KeyAlgorithm) -> Result<GeneratedKey, CryptoError>;
}

/// The real generator.
#[derive(Debug, Default)]
pub struct RandomGenerator;

impl Generator for RandomGenerator {
    fn client_id(&mut self) -> String {
        crypto::new_client_id()
    }
    fn secret(&mut self) -> String {
        crypto::random_secret()
    }
    fn key(&mut self, alg: KeyAlgorithm) -> Result<GeneratedKey, CryptoError> {
        crypto::generate_key(alg)
    }
}

/// What the reconcile needs to know about the world.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    /// The issuer URL written into Secrets.
    pub issuer: &'a str,
    /// The CAs a workload should trust for the token URL (the operator's own, when it
    /// issues the token server's certificate), written as `ca.crt`.
    pub ca_bundle: Option<&'a str>,
    /// Now.
    pub now: SystemTime,
}

impl Context<'_> {
    /// The token endpoint written into Secrets.
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.issuer.trim_end_matches('/'))
    }
}

/// A Secret as observed.
#[derive(Clone, Debug, Default)]
pub struct ObservedSecret {
    /// Its string data.
    pub data: BTreeMap<String, String>,
    /// Whether this account controls it (owner reference with `controller: true` to its UID).
    pub controlled: bool,
}

/// What was observed around an account.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Secrets by name, in the account's namespace: those named by its spec.
    pub secrets: BTreeMap<String, ObservedSecret>,
    /// Who claims the account's `spec.api.audience`, if someone else does first
    /// (`namespace/name`).
    pub audience_claimed_by: Option<String>,
}

/// A Secret to write (create, or replace if its data differs).
#[derive(Clone, PartialEq, Eq)]
pub struct DesiredSecret {
    /// Name, in the account's namespace.
    pub name: String,
    /// String data.
    pub data: BTreeMap<String, String>,
}

impl std::fmt::Debug for DesiredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys only: the values are credentials.
        f.debug_struct("DesiredSecret")
            .field("name", &self.name)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What to do.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The new status (compare with the old one before writing).
    pub status: ServiceAccountStatus,
    /// Secrets to write when their data differs from what exists.
    pub secrets: Vec<DesiredSecret>,
    /// Events to record.
    pub events: Vec<Event>,
    /// When to look again (next rotation or end of a grace period).
    pub requeue_after: Option<Duration>,
}

/// Reasons for Events that are not condition reasons.
pub mod event_reasons {
    /// A credential was generated because its Secret no longer held it.
    pub const REGENERATED: &str = "CredentialRegenerated";
    /// A previous credential's grace period ended.
    pub const RETIRED: &str = "CredentialRetired";
    /// Key generation failed.
    pub const GENERATION_FAILED: &str = "GenerationFailed";
    /// A credential found in the Secret was kept although the status did not record it.
    pub const ADOPTED: &str = "CredentialAdopted";
}

/// Turns a [`SystemTime`] into a Kubernetes timestamp.
pub fn to_time(t: SystemTime) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::try_from(t)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Turns a Kubernetes timestamp into a [`SystemTime`].
pub fn from_time(t: &Time) -> SystemTime {
    SystemTime::from(t.0)
}

/// One credential's material in a Secret: what `secret` reads and writes.
enum Material {
    Secret(String),
    Key {
        kid: String,
        pem: String,
        jwk: String,
        alg: KeyAlgorithm,
    },
}

/// What one credential's pass decided: its verifiers, its Secret, what happened, and when to
/// look again.
#[derive(Default)]
struct CredentialOutcome {
    credentials: Vec<CredentialVerifier>,
    secret: Option<DesiredSecret>,
    events: Vec<Event>,
    problem: Option<Problem>,
    wake: Vec<SystemTime>,
}

/// A credential as it will stand: current, and the previous one in grace.
struct Issued {
    current: CredentialVerifier,
    material: Material,
    previous: Option<(CredentialVerifier, Material)>,
}

/// The reconcile of one account: the checks in order, the builders they select, the Plan.
pub fn reconcile(
    sa: &ServiceAccount,
    observed: &Observed,
    ctx: &Context<'_>,
    g: &mut dyn Generator,
) -> Plan {
    let old = sa.status.clone().unwrap_or_default();
    let rotation = rotation_request(sa, &old);
    let client_id = match client_id_decision(sa, &old, observed) {
        ClientIdDecision::Recorded(id) | ClientIdDecision::Adopt(id) => Some(id),
        ClientIdDecision::Mint => Some(g.client_id()),
        ClientIdDecision::NotNeeded => None,
    };
    let outcomes: Vec<CredentialOutcome> = methods(sa)
        .iter()
        .map(|m| {
            let id = client_id.as_deref().unwrap_or_default();
            reconcile_credential(m, &old, observed, ctx, id, rotation.new, g)
        })
        .collect();

    let mut problems: Vec<Problem> = outcomes.iter().filter_map(|o| o.problem.clone()).collect();
    // A rotation asked for and not done (no new credential could be made) is not recorded as
    // done: the next pass tries again.
    let rotation_value = if problems
        .iter()
        .any(|p| p.reason == event_reasons::GENERATION_FAILED)
    {
        old.rotation_request.clone()
    } else {
        rotation.value
    };
    problems.extend(audience_conflict(sa, observed));
    let credentials = outcomes
        .iter()
        .flat_map(|o| o.credentials.clone())
        .collect();
    let status = build_status(
        sa,
        &old,
        client_id,
        credentials,
        rotation_value,
        &problems,
        ctx,
    );
    let mut events: Vec<Event> = outcomes.iter().flat_map(|o| o.events.clone()).collect();
    events.extend(problems.into_iter().map(|p| Event {
        warning: true,
        reason: p.reason,
        message: p.message,
    }));
    let requeue_after = outcomes
        .iter()
        .flat_map(|o| &o.wake)
        .map(|at| {
            // Never a zero requeue (a hot loop): what is due now is looked at in a second.
            at.duration_since(ctx.now)
                .unwrap_or_default()
                .max(Duration::from_secs(1))
        })
        .min();
    Plan {
        status,
        secrets: outcomes.into_iter().filter_map(|o| o.secret).collect(),
        events,
        requeue_after,
    }
}

/// The checks for one credential, and the builder they select.
fn reconcile_credential(
    m: &Method<'_>,
    old: &ServiceAccountStatus,
    observed: &Observed,
    ctx: &Context<'_>,
    client_id: &str,
    rotation_requested: bool,
    g: &mut dyn Generator,
) -> CredentialOutcome {
    let rec = recorded(old, m.ty);
    let observed_secret = observed.secrets.get(m.secret_name);
    if let Some(problem) = secret_conflict(m.secret_name, observed_secret) {
        return CredentialOutcome {
            credentials: rec
                .current
                .into_iter()
                .chain(rec.previous)
                .cloned()
                .collect(),
            problem: Some(problem),
            ..Default::default()
        };
    }
    let data = observed_secret.map(|s| &s.data);
    let mut events = vec![];
    let (adopted, adopted_material) =
        credential_unrecorded(m, rec.current, data, &to_time(ctx.now)).unzip();
    if adopted.is_some() {
        events.push(adopted_event(m));
    }
    let current = rec.current.or(adopted.as_ref());
    let resumable = rotation_resumable(m, rec.previous, data, ctx.now);
    let previous = match previous_credential(m, rec.previous, data, ctx.now) {
        Previous::None => None,
        Previous::InGrace(p, material) => Some((p, material)),
        // A resumed rotation keeps it (the Secret holds it as its current credential).
        Previous::Retired if resumable.is_some() => None,
        Previous::Retired => {
            events.push(retired_event(m));
            None
        }
    };
    let rotation = current
        .and_then(|c| rotation_reason(m, c, rotation_requested && adopted.is_none(), ctx.now));
    let found = Found {
        current: current.cloned(),
        held: adopted_material.or_else(|| credential_held(m, current, data)),
        previous,
        resumable,
    };
    // When no new credential can be made, what stands keeps working: the current one and
    // the previous one in its grace period.
    let fallback: Vec<CredentialVerifier> = found
        .current
        .iter()
        .chain(
            found
                .previous
                .as_ref()
                .or(found.resumable.as_ref())
                .map(|(p, _)| p),
        )
        .cloned()
        .collect();
    match build_credential(m, credential_action(found, rotation), ctx, g) {
        Ok((issued, built)) => {
            events.extend(built);
            CredentialOutcome {
                events,
                ..credential_outcome(m, client_id, ctx, issued)
            }
        }
        Err(problem) => CredentialOutcome {
            credentials: fallback,
            events,
            problem: Some(problem),
            ..Default::default()
        },
    }
}

/// Builds what the action selected: the credential as it will stand and the Events saying
/// what happened. `Err` when a new credential cannot be generated.
fn build_credential(
    m: &Method<'_>,
    action: CredentialAction,
    ctx: &Context<'_>,
    g: &mut dyn Generator,
) -> Result<(Issued, Vec<Event>), Problem> {
    let noun = m.ty.noun();
    let secret_name = m.secret_name;
    let (previous, event) = match action {
        CredentialAction::Keep {
            current,
            material,
            previous,
        } => {
            let issued = Issued {
                current,
                material,
                previous,
            };
            return Ok((issued, vec![]));
        }
        CredentialAction::Rotate {
            reason,
            current,
            material,
            displaced,
        } => {
            tracing::debug!(?reason, credential = noun, "rotation due");
            // Rotation: the old one keeps working through the grace period. The Secret has
            // room for one previous credential: one still in grace from an earlier rotation
            // ends now, and says so.
            let mut prev = current;
            prev.not_after = Some(to_time(ctx.now + m.grace()));
            let until = time_text(prev.not_after.as_ref());
            let message = format!("{noun} rotated; the previous one works until {until}");
            let mut events = vec![];
            if let Some(d) = displaced {
                let was = time_text(d.not_after.as_ref());
                events.push(normal(
                    event_reasons::RETIRED,
                    format!(
                        "the {noun} before the previous one is retired early (its grace period \
                         ran until {was}): rotated again within the grace period"
                    ),
                ));
            }
            events.push(normal(reasons::ROTATED, message));
            (Some((prev, material)), events)
        }
        CredentialAction::ResumeRotation { previous } => {
            // The workloads still hold the previous credential: issue the new one again and
            // keep the previous through its grace period.
            let until = time_text(previous.0.not_after.as_ref());
            let message = format!("{noun} rotation resumed; the previous one works until {until}");
            (Some(previous), vec![normal(reasons::ROTATED, message)])
        }
        // The previous one in grace (still in the Secret) keeps working.
        CredentialAction::Regenerate { previous } => (previous, vec![regenerated_event(m)]),
        CredentialAction::Issue => {
            let message = format!("{noun} issued into Secret {secret_name}");
            (None, vec![normal(reasons::ISSUED, message)])
        }
    };
    let (current, material) = new_credential(m.ty, m.alg, ctx.now, g).map_err(|e| Problem {
        reason: event_reasons::GENERATION_FAILED,
        message: format!("cannot generate a key: {e}"),
    })?;
    let issued = Issued {
        current,
        material,
        previous,
    };
    Ok((issued, event))
}

/// The verifiers, Secret and wake-ups of a credential as it will stand.
fn credential_outcome(
    m: &Method<'_>,
    client_id: &str,
    ctx: &Context<'_>,
    issued: Issued,
) -> CredentialOutcome {
    let Issued {
        current,
        material,
        previous,
    } = issued;
    let (previous, previous_material) = previous.unzip();
    let mut wake = vec![];
    if let Some(every) = m.rotate_every {
        wake.push(from_time(&current.created) + every);
    }
    if let Some(t) = previous.as_ref().and_then(|p| p.not_after.as_ref()) {
        wake.push(from_time(t));
    }
    let data = secret::build(client_id, ctx, &material, previous_material.as_ref());
    CredentialOutcome {
        credentials: std::iter::once(current).chain(previous).collect(),
        secret: Some(DesiredSecret {
            name: m.secret_name.to_owned(),
            data,
        }),
        wake,
        ..Default::default()
    }
}

/// The new status: credentials, the current one's summary and the conditions.
fn build_status(
    sa: &ServiceAccount,
    old: &ServiceAccountStatus,
    client_id: Option<String>,
    credentials: Vec<CredentialVerifier>,
    rotation_request: Option<String>,
    problems: &[Problem],
    ctx: &Context<'_>,
) -> ServiceAccountStatus {
    let generation = sa.metadata.generation;
    let now = to_time(ctx.now);
    let mut status = ServiceAccountStatus {
        conditions: old.conditions.clone(),
        observed_generation: generation,
        client_id,
        current_credential: current_credential(sa, &credentials),
        credentials,
        rotation_request,
    };
    if let Some(issued) = credentials_issued_condition(sa, problems, status.credentials.len()) {
        set_condition(&mut status.conditions, issued, generation, &now);
    }
    set_condition(
        &mut status.conditions,
        ready_condition(sa, problems),
        generation,
        &now,
    );
    status
}

/// The newest credential in use, with its scheduled expiry.
fn current_credential(
    sa: &ServiceAccount,
    credentials: &[CredentialVerifier],
) -> Option<CredentialSummary> {
    let methods = methods(sa);
    credentials
        .iter()
        .filter(|c| c.not_after.is_none())
        .max_by_key(|c| c.created.0)
        .map(|c| {
            let every = methods
                .iter()
                .find(|m| m.ty == c.type_)
                .and_then(|m| m.rotate_every);
            CredentialSummary {
                id: c.id.clone(),
                type_: c.type_,
                created: c.created.clone(),
                expires: every.map(|d| to_time(from_time(&c.created) + d)),
            }
        })
}

/// `CredentialsIssued`, for an account with stored credentials: False with the first
/// credential problem (Secret conflict, generation failure).
fn credentials_issued_condition(
    sa: &ServiceAccount,
    problems: &[Problem],
    count: usize,
) -> Option<Desired<'static>> {
    if methods(sa).is_empty() {
        return None;
    }
    let credential_problem = problems.iter().find(|p| {
        p.reason == reasons::SECRET_CONFLICT || p.reason == event_reasons::GENERATION_FAILED
    });
    Some(match credential_problem {
        Some(p) => Desired {
            type_: types::CREDENTIALS_ISSUED,
            status: ConditionStatus::False,
            reason: p.reason,
            message: p.message.clone(),
        },
        None => Desired {
            type_: types::CREDENTIALS_ISSUED,
            status: ConditionStatus::True,
            reason: reasons::ISSUED,
            message: format!("{count} credential(s) in place"),
        },
    })
}

/// `Ready`: False with the first problem, else False when disabled, else True.
fn ready_condition(sa: &ServiceAccount, problems: &[Problem]) -> Desired<'static> {
    match problems.first().cloned().or_else(|| disabled(sa)) {
        Some(p) => Desired {
            type_: types::READY,
            status: ConditionStatus::False,
            reason: p.reason,
            message: p.message,
        },
        None => Desired {
            type_: types::READY,
            status: ConditionStatus::True,
            reason: reasons::READY,
            message: "ready".into(),
        },
    }
}

fn normal(reason: &'static str, message: String) -> Event {
    Event {
        warning: false,
        reason,
        message,
    }
}

fn adopted_event(m: &Method<'_>) -> Event {
    let (noun, secret_name) = (m.ty.noun(), m.secret_name);
    normal(
        event_reasons::ADOPTED,
        format!("the {noun} in Secret {secret_name} was kept: the status did not record it"),
    )
}

fn regenerated_event(m: &Method<'_>) -> Event {
    let (noun, secret_name) = (m.ty.noun(), m.secret_name);
    Event {
        warning: true,
        reason: event_reasons::REGENERATED,
        message: format!(
            "Secret {secret_name} no longer holds the current {noun}; a new one was generated"
        ),
    }
}

fn retired_event(m: &Method<'_>) -> Event {
    normal(
        event_reasons::RETIRED,
        format!("the previous {} is retired", m.ty.noun()),
    )
}

fn time_text(t: Option<&Time>) -> String {
    t.map(|t| t.0.to_string()).unwrap_or_default()
}

/// The Secrets an account's spec names.
pub fn secret_names(sa: &ServiceAccount) -> Vec<String> {
    let Some(auth) = &sa.spec.authentication else {
        return vec![];
    };
    let mut names = vec![];
    if let Some(c) = &auth.client_secret {
        names.push(c.secret_name.clone());
    }
    if let Some(k) = &auth.private_key_jwt {
        names.push(k.secret_name.clone());
    }
    names
}

impl CredentialType {
    fn noun(self) -> &'static str {
        match self {
            Self::ClientSecret => "client secret",
            Self::PrivateKey => "private key",
        }
    }
}

fn new_credential(
    ty: CredentialType,
    alg: Option<KeyAlgorithm>,
    now: SystemTime,
    g: &mut dyn Generator,
) -> Result<(CredentialVerifier, Material), CryptoError> {
    let created = to_time(now);
    Ok(match ty {
        CredentialType::ClientSecret => {
            let secret = g.secret();
            let verifier = CredentialVerifier {
                id: crypto::random_token_id(),
                type_: ty,
                created,
                not_after: None,
                secret_digest: Some(crypto::secret_digest(&secret)),
                public_key: None,
            };
            (verifier, Material::Secret(secret))
        }
        CredentialType::PrivateKey => {
            let alg = alg.unwrap_or_default();
            let key = g.key(alg)?;
            let verifier = CredentialVerifier {
                id: key.kid.clone(),
                type_: ty,
                created,
                not_after: None,
                secret_digest: None,
                public_key: Some(key.public_jwk.clone()),
            };
            let jwk = serde_json::to_string(&key.private_jwk).expect("JWK serializes");
            (
                verifier,
                Material::Key {
                    kid: key.kid,
                    pem: key.private_pem,
                    jwk,
                    alg,
                },
            )
        }
    })
}

#[cfg(test)]
mod tests;
