//! The I/O around the pure [`reconcile`](super::reconcile): observe the Secrets an account
//! names and who claims its audience, run the pure stages, then write what differs —
//! Secrets first (created once; replaced only with the `resourceVersion` we read), then the
//! status (server-side apply, only when it changed), then Events.
//!
//! Secrets before status: if the status write fails, the next pass finds the material in a
//! Secret we control and adopts it rather than generating new material.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::{Observed, ObservedSecret, Plan, RandomGenerator, secret_names};
use crate::api::ServiceAccount;
use crate::api::conditions::{ConditionStatus, reasons, types};
use crate::k8s::conditions::find;
use crate::k8s::{self, Error, FIELD_MANAGER, SERVICE_ACCOUNT_LABEL};
use crate::token::Clock;

/// How often an account is looked at with nothing pending (drift, conflicts resolved
/// elsewhere).
pub const RESYNC: Duration = Duration::from_secs(3600);
/// On rotation, how long the new verifier is in the status before the new credential is in
/// the Secret.
pub const ROTATION_SETTLE: Duration = Duration::from_secs(1);
/// How soon an account that is not Ready for a reason outside its control is looked at again.
pub const RETRY_NOT_READY: Duration = Duration::from_secs(60);

/// What the ServiceAccount reconciler shares.
pub struct Ctx {
    /// The API client.
    pub client: Client,
    /// The issuer URL written into Secrets.
    pub issuer: String,
    /// Events.
    pub recorder: Recorder,
    /// Every ServiceAccount (the controller's own store): who claims which audience.
    pub accounts: Store<ServiceAccount>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Consecutive failures per account, for backoff.
    pub failures: Mutex<HashMap<ObjectRef<ServiceAccount>, u32>>,
    /// Metrics.
    pub metrics: Arc<crate::controller::Metrics>,
    /// The operator CA's trust bundle, when it issues the token server's certificate.
    pub ca_bundle: tokio::sync::watch::Receiver<Option<String>>,
}

/// Reconciles one account.
#[tracing::instrument(skip(sa, ctx), fields(account = %k8s::display(sa.as_ref())))]
pub async fn reconcile(sa: Arc<ServiceAccount>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile_started("ServiceAccount");
    let result = reconcile_inner(&sa, &ctx).await;
    ctx.metrics
        .reconcile_finished("ServiceAccount", timer, result.as_ref().err());
    if result.is_ok() {
        ctx.failures
            .lock()
            .expect("not poisoned")
            .remove(&ObjectRef::from_obj(sa.as_ref()));
    }
    result
}

async fn reconcile_inner(sa: &ServiceAccount, ctx: &Ctx) -> Result<Action, Error> {
    if sa.meta().deletion_timestamp.is_some() {
        // Owned Secrets go with it (garbage collection); nothing outside Kubernetes to clean.
        return Ok(Action::await_change());
    }
    let namespace = sa
        .namespace()
        .ok_or_else(|| Error::Invalid("ServiceAccount without a namespace".into()))?;
    let uid = sa
        .uid()
        .ok_or_else(|| Error::Invalid("ServiceAccount without a uid".into()))?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);

    // Observe.
    let mut observed = Observed {
        audience_claimed_by: audience_claimed_by(sa, &ctx.accounts),
        ..Default::default()
    };
    let mut existing: HashMap<String, Secret> = HashMap::new();
    for name in secret_names(sa) {
        let step = format!("get Secret {namespace}/{name}");
        if let Some(s) = secrets.get_opt(&name).await.map_err(Error::kube(step))? {
            observed.secrets.insert(
                name.clone(),
                ObservedSecret {
                    data: k8s::secret_strings(&s),
                    controlled: k8s::is_controlled_by(&s, &uid),
                },
            );
            existing.insert(name, s);
        }
    }

    // Decide (pure).
    let now = ctx.clock.now();
    let ca_bundle = ctx.ca_bundle.borrow().clone();
    let plan = super::reconcile(
        sa,
        &observed,
        &super::Context {
            issuer: &ctx.issuer,
            ca_bundle: ca_bundle.as_deref(),
            now,
        },
        &mut RandomGenerator,
    );

    // Apply: Secrets, then status, then Events — except on rotation, where the status goes
    // first: token servers learn the new verifier from the status, and a workload must not
    // read a secret from its Secret before they accept it. (Should the Secret write then
    // fail, the next pass finds the previous credential still current in the Secret and
    // resumes the rotation, keeping it valid.)
    let rotating = plan.events.iter().any(|e| e.reason == reasons::ROTATED);
    if rotating {
        write_status(sa, ctx, &namespace, &plan).await?;
        // Let the status reach every token server's watch before a workload can read the
        // new secret (a watch event usually arrives within milliseconds).
        tokio::time::sleep(ROTATION_SETTLE).await;
    }
    write_secrets(sa, &secrets, &plan, &existing).await?;
    if !rotating {
        write_status(sa, ctx, &namespace, &plan).await?;
    }
    publish_events(sa, ctx, &plan).await;
    finish(&plan)
}

/// The status, by server-side apply, only when it changed.
async fn write_status(
    sa: &ServiceAccount,
    ctx: &Ctx,
    namespace: &str,
    plan: &Plan,
) -> Result<(), Error> {
    if sa.status.as_ref() != Some(&plan.status) {
        let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
        let body = json!({
            "apiVersion": crate::api::API_VERSION,
            "kind": "ServiceAccount",
            "metadata": {"name": sa.name_any()},
            "status": plan.status,
        });
        api.patch_status(
            &sa.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(Error::kube(format!("patch status of {}", k8s::display(sa))))?;
    }
    Ok(())
}

/// When to look again.
fn finish(plan: &Plan) -> Result<Action, Error> {
    let ready = find(&plan.status.conditions, types::READY);
    let blocked = ready.is_some_and(|c| {
        c.status == ConditionStatus::False && c.reason.as_str() != reasons::DISABLED
    });
    let mut next = plan.requeue_after.unwrap_or(RESYNC).min(RESYNC);
    if blocked {
        next = next.min(RETRY_NOT_READY);
    }
    Ok(Action::requeue(next))
}

/// The account's audience, if an earlier account claims it (`namespace/name`).
fn audience_claimed_by(sa: &ServiceAccount, accounts: &Store<ServiceAccount>) -> Option<String> {
    let audience = &sa.spec.api.as_ref()?.audience;
    let me = crate::store::key_of(sa);
    let claimants: Vec<ServiceAccount> = accounts
        .state()
        .iter()
        .filter(|a| {
            a.spec
                .api
                .as_ref()
                .is_some_and(|api| &api.audience == audience)
        })
        .map(|a| a.as_ref().clone())
        .collect();
    let mut all = claimants;
    if !all.iter().any(|a| crate::store::key_of(a) == me) {
        all.push(sa.clone());
    }
    crate::store::audience_claims(&all)
        .remove(audience)
        .filter(|owner| *owner != me)
}

async fn write_secrets(
    sa: &ServiceAccount,
    api: &Api<Secret>,
    plan: &Plan,
    existing: &HashMap<String, Secret>,
) -> Result<(), Error> {
    let namespace = sa.namespace().unwrap_or_default();
    for desired in &plan.secrets {
        let step = format!("Secret {namespace}/{}", desired.name);
        let mut secret = k8s::managed_secret(
            &desired.name,
            &namespace,
            "credentials",
            k8s::controller_reference(sa),
            &[(SERVICE_ACCOUNT_LABEL, sa.name_any())],
            &desired.data,
        );
        match existing.get(&desired.name) {
            None => {
                // Created once. A 409 means another writer won: re-read next pass, never
                // overwrite.
                api.create(&PostParams::default(), &secret)
                    .await
                    .map_err(Error::kube(format!("create {step}")))?;
            }
            Some(current) => {
                let same_data = k8s::secret_strings(current) == desired.data;
                let labelled = secret
                    .metadata
                    .labels
                    .iter()
                    .flatten()
                    .all(|(k, v)| current.labels().get(k) == Some(v));
                if same_data && labelled {
                    continue;
                }
                // Replace with the resourceVersion we read: a concurrent change is a 409,
                // and we start over from what is there.
                secret.metadata.resource_version = current.resource_version();
                secret.metadata.annotations = current.metadata.annotations.clone();
                let mut labels = current.labels().clone();
                labels.extend(secret.metadata.labels.take().unwrap_or_default());
                secret.metadata.labels = Some(labels);
                secret.metadata.owner_references = current.metadata.owner_references.clone();
                api.replace(&desired.name, &PostParams::default(), &secret)
                    .await
                    .map_err(Error::kube(format!("replace {step}")))?;
            }
        }
    }
    Ok(())
}

/// Publishes the plan's Events; a Warning whose reason is already the Ready reason of the
/// stored status is not repeated (a conflict reported once, not every minute).
async fn publish_events(sa: &ServiceAccount, ctx: &Ctx, plan: &Plan) {
    let reported: Vec<String> = sa
        .status
        .as_ref()
        .and_then(|s| find(&s.conditions, types::READY))
        .map(|c| c.reason.clone())
        .into_iter()
        .collect();
    k8s::publish_events(&ctx.recorder, &sa.object_ref(&()), &plan.events, &reported).await;
}

/// Per-object exponential backoff: 1 s, 2 s, 4 s … up to 5 minutes.
pub fn error_policy(sa: Arc<ServiceAccount>, err: &Error, ctx: Arc<Ctx>) -> Action {
    k8s::backoff_policy(&ctx.failures, sa.as_ref(), err)
}
