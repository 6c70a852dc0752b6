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

pub use checks::{grace_period, rotation_due};

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

/// The reconcile of one account.
pub fn reconcile(
    sa: &ServiceAccount,
    observed: &Observed,
    ctx: &Context<'_>,
    g: &mut dyn Generator,
) -> Plan {
    let old = sa.status.clone().unwrap_or_default();
    let generation = sa.metadata.generation;
    let now_t = to_time(ctx.now);
    let mut status = ServiceAccountStatus {
        conditions: old.conditions.clone(),
        observed_generation: generation,
        client_id: old.client_id.clone(),
        current_credential: None,
        credentials: vec![],
        rotation_request: old.rotation_request.clone(),
    };
    let mut events = vec![];
    let mut secrets = vec![];
    let mut problems: Vec<(&'static str, String)> = vec![];
    let mut requeue: Option<Duration> = None;
    let mut wake = |at: SystemTime| {
        let after = at.duration_since(ctx.now).unwrap_or(Duration::from_secs(1));
        requeue = Some(requeue.map_or(after, |r| r.min(after)));
    };

    let rotate_value = sa
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATE_ANNOTATION))
        .cloned();
    let rotate_requested = rotate_value.is_some() && rotate_value != old.rotation_request;

    let auth = sa.spec.authentication.as_ref();
    if auth.is_some() && status.client_id.is_none() {
        // A Secret we control may already hold our client id (status lost): keep it.
        let adopted = secret_names(sa).into_iter().find_map(|name| {
            observed
                .secrets
                .get(&name)
                .filter(|s| s.controlled)
                .and_then(|s| s.data.get(secret::keys::CLIENT_ID))
                .filter(|id| !id.is_empty())
                .cloned()
        });
        status.client_id = Some(adopted.unwrap_or_else(|| g.client_id()));
    }
    let client_id = status.client_id.clone().unwrap_or_default();

    let methods = [
        auth.and_then(|a| a.client_secret.as_ref()).map(|c| {
            (
                CredentialType::ClientSecret,
                c.secret_name.as_str(),
                None,
                c.rotate_every,
                c.grace_period,
            )
        }),
        auth.and_then(|a| a.private_key_jwt.as_ref()).map(|k| {
            (
                CredentialType::PrivateKey,
                k.secret_name.as_str(),
                Some(k.algorithm),
                k.rotate_every,
                k.grace_period,
            )
        }),
    ];
    for (ty, secret_name, alg, rotate_every, grace) in methods.into_iter().flatten() {
        let observed_secret = observed.secrets.get(secret_name);
        let old_current = old
            .credentials
            .iter()
            .find(|c| c.type_ == ty && c.not_after.is_none());
        let old_previous = old
            .credentials
            .iter()
            .find(|c| c.type_ == ty && c.not_after.is_some());
        if let Some(s) = observed_secret.filter(|s| !s.controlled) {
            let _ = s;
            problems.push((
                reasons::SECRET_CONFLICT,
                format!("Secret {secret_name} exists and is not controlled by this ServiceAccount; it is left alone"),
            ));
            status.credentials.extend(old_current.cloned());
            status.credentials.extend(old_previous.cloned());
            continue;
        }
        let data = observed_secret.map(|s| &s.data);
        let adopted = if old_current.is_none() {
            secret::adopt(ty, data, alg, now_t.clone())
        } else {
            None
        };
        if adopted.is_some() {
            events.push(Event {
                warning: false,
                reason: event_reasons::ADOPTED,
                message: format!(
                    "the {} in Secret {secret_name} was kept: the status did not record it",
                    ty.noun()
                ),
            });
        }
        let (adopted_verifier, adopted_material) = adopted.unzip();
        let old_current = old_current.or(adopted_verifier.as_ref());
        let current_material = match adopted_material {
            Some(m) => Some(m),
            None => old_current.and_then(|c| secret::read_current(ty, c, data, alg)),
        };
        let previous_material = old_previous
            .filter(|p| p.not_after.as_ref().is_some_and(|t| from_time(t) > ctx.now))
            .and_then(|p| secret::read_previous(ty, p, data));
        if old_previous.is_some() && previous_material.is_none() {
            events.push(Event {
                warning: false,
                reason: event_reasons::RETIRED,
                message: format!("the previous {} is retired", ty.noun()),
            });
        }

        let due = old_current.is_some_and(|c| {
            rotation_due(
                from_time(&c.created),
                rotate_every.map(|d| d.as_std()),
                ctx.now,
            ) || (rotate_requested && adopted_verifier.is_none())
                || checks::algorithm_changed(c, alg)
        });
        let (current, current_mat, previous, previous_mat) = match (old_current, current_material) {
            (Some(cur), Some(mat)) if !due => (
                cur.clone(),
                mat,
                old_previous
                    .filter(|_| previous_material.is_some())
                    .cloned(),
                previous_material,
            ),
            (old_cur, mat) => {
                let (new, new_mat) = match new_credential(ty, alg, ctx.now, g) {
                    Ok(x) => x,
                    Err(e) => {
                        problems.push((
                            event_reasons::GENERATION_FAILED,
                            format!("cannot generate a key: {e}"),
                        ));
                        status.credentials.extend(old_current.cloned());
                        continue;
                    }
                };
                match (old_cur, mat) {
                    (Some(cur), Some(mat)) => {
                        // Rotation: the old one keeps working through the grace period.
                        let grace = grace_period(
                            grace.map(|d| d.as_std()),
                            rotate_every.map(|d| d.as_std()),
                        );
                        let mut prev = cur.clone();
                        prev.not_after = Some(to_time(ctx.now + grace));
                        events.push(Event {
                            warning: false,
                            reason: reasons::ROTATED,
                            message: format!(
                                "{} rotated; the previous one works until {}",
                                ty.noun(),
                                prev.not_after
                                    .as_ref()
                                    .map(|t| t.0.to_string())
                                    .unwrap_or_default()
                            ),
                        });
                        (new, new_mat, Some(prev), Some(mat))
                    }
                    (Some(_), None)
                        if let Some((prev, prev_mat)) = old_previous
                            .filter(|p| {
                                p.not_after.as_ref().is_some_and(|t| from_time(t) > ctx.now)
                            })
                            .and_then(|p| {
                                secret::read_current(ty, p, data, alg).map(|m| (p.clone(), m))
                            }) =>
                    {
                        // A rotation whose status was written but whose Secret was not: the
                        // workloads still hold the previous credential. Issue the new one
                        // again and keep the previous through its grace period.
                        events.push(Event {
                            warning: false,
                            reason: reasons::ROTATED,
                            message: format!(
                                "{} rotation resumed; the previous one works until {}",
                                ty.noun(),
                                prev.not_after
                                    .as_ref()
                                    .map(|t| t.0.to_string())
                                    .unwrap_or_default()
                            ),
                        });
                        (new, new_mat, Some(prev), Some(prev_mat))
                    }
                    (Some(_), None) => {
                        events.push(Event {
                            warning: true,
                            reason: event_reasons::REGENERATED,
                            message: format!(
                                "Secret {secret_name} no longer holds the current {}; a new one was generated",
                                ty.noun()
                            ),
                        });
                        (new, new_mat, None, None)
                    }
                    (None, _) => {
                        events.push(Event {
                            warning: false,
                            reason: reasons::ISSUED,
                            message: format!("{} issued into Secret {secret_name}", ty.noun()),
                        });
                        (new, new_mat, None, None)
                    }
                }
            }
        };

        if let Some(every) = rotate_every {
            wake(from_time(&current.created) + every.as_std());
        }
        if let Some(t) = previous.as_ref().and_then(|p| p.not_after.as_ref()) {
            wake(from_time(t));
        }
        let data = secret::build(&client_id, ctx, &current_mat, previous_mat.as_ref());
        secrets.push(DesiredSecret {
            name: secret_name.to_owned(),
            data,
        });
        status.credentials.push(current);
        status.credentials.extend(previous);
    }

    status.rotation_request = rotate_value;
    status.current_credential = status
        .credentials
        .iter()
        .filter(|c| c.not_after.is_none())
        .max_by_key(|c| c.created.0)
        .map(|c| {
            let every = match c.type_ {
                CredentialType::ClientSecret => auth
                    .and_then(|a| a.client_secret.as_ref())
                    .and_then(|x| x.rotate_every),
                CredentialType::PrivateKey => auth
                    .and_then(|a| a.private_key_jwt.as_ref())
                    .and_then(|x| x.rotate_every),
            };
            CredentialSummary {
                id: c.id.clone(),
                type_: c.type_,
                created: c.created.clone(),
                expires: every.map(|d| to_time(from_time(&c.created) + d.as_std())),
            }
        });

    if let Some(owner) = &observed.audience_claimed_by {
        problems.push((
            reasons::AUDIENCE_CONFLICT,
            format!(
                "audience {} is already claimed by {owner}",
                sa.spec
                    .api
                    .as_ref()
                    .map(|a| a.audience.as_str())
                    .unwrap_or_default()
            ),
        ));
    }
    let credential_problem = problems
        .iter()
        .find(|(r, _)| *r == reasons::SECRET_CONFLICT || *r == event_reasons::GENERATION_FAILED);
    let has_credentials = sa
        .spec
        .authentication
        .as_ref()
        .is_some_and(|a| a.client_secret.is_some() || a.private_key_jwt.is_some());
    if has_credentials {
        let issued = match credential_problem {
            Some((reason, msg)) => Desired {
                type_: types::CREDENTIALS_ISSUED,
                status: ConditionStatus::False,
                reason,
                message: msg.clone(),
            },
            None => Desired {
                type_: types::CREDENTIALS_ISSUED,
                status: ConditionStatus::True,
                reason: reasons::ISSUED,
                message: format!("{} credential(s) in place", status.credentials.len()),
            },
        };
        set_condition(&mut status.conditions, issued, generation, &now_t);
    }
    let ready = if let Some((reason, msg)) = problems.first() {
        Desired {
            type_: types::READY,
            status: ConditionStatus::False,
            reason,
            message: msg.clone(),
        }
    } else if sa.spec.disabled {
        Desired {
            type_: types::READY,
            status: ConditionStatus::False,
            reason: reasons::DISABLED,
            message: "the account is disabled: it gets no tokens".into(),
        }
    } else {
        Desired {
            type_: types::READY,
            status: ConditionStatus::True,
            reason: reasons::READY,
            message: "ready".into(),
        }
    };
    set_condition(&mut status.conditions, ready, generation, &now_t);
    for (reason, message) in &problems {
        events.push(Event {
            warning: true,
            reason,
            message: message.clone(),
        });
    }
    Plan {
        status,
        secrets,
        events,
        requeue_after: requeue,
    }
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
