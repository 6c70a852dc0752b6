//! The I/O around the pure [`reconcile`](super::reconcile): observe who claims the grant's
//! audience and its subject (the ServiceAccount and TrustedIssuer controllers' stores), the
//! output Secret and the signing key in force (read from the signing-keys Secret); run the
//! pure stage; then write what it asks for — deny-list entries first (the status records that
//! they were written), then the output Secret (created once; replaced only with the
//! `resourceVersion` read), then the status (server-side apply, only when it changed), then
//! Events.
//!
//! No finalizer: deletion needs no cleanup, because every token issued under a grant names
//! its uid (claim `grants`) and token servers treat a token naming a grant they no longer
//! see as inactive; the output Secret goes with the grant (owner reference). So deleting a
//! grant, its namespace or the whole operator never waits on this controller. Grants from
//! earlier versions still carry [`LEGACY_FINALIZER`]; it is removed (also from a grant being
//! deleted, whose deletion then completes) with a merge patch guarded by the
//! `resourceVersion` read, so another controller's finalizer added meanwhile is never lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};

use super::{
    COMPONENT, Context, LEGACY_FINALIZER, Plan, Revocations, World, after_write_failure,
    audience_owner, resolve_subject, subject_account,
};
use crate::api::conditions::{ConditionStatus, reasons, types};
use crate::api::{ServiceAccount, TokenGrant, TokenGrantStatus, TrustedIssuer};
use crate::crypto::SigningKey;
use crate::k8s::conditions::find;
use crate::k8s::{self, Error, FIELD_MANAGER, TOKEN_GRANT_LABEL};
use crate::service_account::ObservedSecret;
use crate::service_account::controller::{RESYNC, RETRY_NOT_READY};
use crate::token::Clock;

/// What the TokenGrant reconciler shares.
pub struct Ctx {
    /// The API client.
    pub client: Client,
    /// The operator namespace (signing keys, revocation list).
    pub namespace: String,
    /// The issuer URL (`iss` of output tokens).
    pub issuer: String,
    /// Upper bound on every token's lifetime (output tokens, the deny window).
    pub max_token_lifetime: Duration,
    /// Let grants name audiences that no account claims.
    pub allow_unclaimed_audiences: bool,
    /// Events.
    pub recorder: Recorder,
    /// Every ServiceAccount (the ServiceAccount controller's store).
    pub accounts: Store<ServiceAccount>,
    /// Every TrustedIssuer (the TrustedIssuer controller's store).
    pub issuers: Store<TrustedIssuer>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Consecutive failures per grant, for backoff.
    pub failures: Mutex<HashMap<ObjectRef<TokenGrant>, u32>>,
    /// Metrics.
    pub metrics: Arc<crate::controller::Metrics>,
}

/// The grants to look at again when a ServiceAccount changes: those naming it as subject,
/// and those naming an audience it claims (or claimed: the mapper sees the new object only,
/// so a dropped claim is caught by the periodic look).
pub fn grants_for_account(
    grants: &Store<TokenGrant>,
    sa: &ServiceAccount,
) -> Vec<ObjectRef<TokenGrant>> {
    let key = (sa.namespace().unwrap_or_default(), sa.name_any());
    let audience = sa.spec.api.as_ref().map(|a| a.audience.as_str());
    grants
        .state()
        .iter()
        .filter(|g| {
            subject_account(g).as_ref() == Some(&key) || audience == Some(g.spec.audience.as_str())
        })
        .map(|g| ObjectRef::from_obj(g.as_ref()))
        .collect()
}

/// Reconciles one grant.
#[tracing::instrument(skip(grant, ctx), fields(grant = %k8s::display(grant.as_ref())))]
pub async fn reconcile(grant: Arc<TokenGrant>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile_started("TokenGrant");
    let key = ObjectRef::from_obj(grant.as_ref());
    let result = reconcile_inner(grant, &ctx).await;
    ctx.metrics
        .reconcile_finished("TokenGrant", timer, result.as_ref().err());
    if result.is_ok() {
        ctx.failures.lock().expect("not poisoned").remove(&key);
    }
    result
}

async fn reconcile_inner(grant: Arc<TokenGrant>, ctx: &Ctx) -> Result<Action, Error> {
    let namespace = grant
        .namespace()
        .ok_or_else(|| Error::Invalid("TokenGrant without a namespace".into()))?;
    // Decisions need every account and issuer (an unready store would say "not found"):
    // `controller::lead` starts this controller only once both stores are ready.
    let api: Api<TokenGrant> = Api::namespaced(ctx.client.clone(), &namespace);
    if grant.finalizers().iter().any(|f| f == LEGACY_FINALIZER) {
        remove_legacy_finalizer(&api, &grant).await?;
    }
    if grant.meta().deletion_timestamp.is_some() {
        // Nothing to clean up (see the module docs): the grant's tokens are void once token
        // servers stop seeing it, and its output Secret is garbage-collected.
        return Ok(Action::await_change());
    }
    apply(&grant, ctx).await
}

/// Drops [`LEGACY_FINALIZER`] from a grant written by an earlier version. A JSON merge patch
/// replaces the whole list, so it carries the `resourceVersion` read: if the list changed
/// meanwhile the write is a 409 and the next pass works from the new list. (No JSON patch
/// `test` op: the API server answers 422 to a `test` of a missing path.)
async fn remove_legacy_finalizer(api: &Api<TokenGrant>, grant: &TokenGrant) -> Result<(), Error> {
    let kept: Vec<&String> = grant
        .finalizers()
        .iter()
        .filter(|f| *f != LEGACY_FINALIZER)
        .collect();
    let patch = json!({
        "metadata": {
            "resourceVersion": grant.resource_version(),
            "finalizers": if kept.is_empty() { Value::Null } else { json!(kept) },
        }
    });
    api.patch(
        &grant.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::kube(format!(
        "remove finalizer {LEGACY_FINALIZER} from TokenGrant {}",
        k8s::display(grant)
    )))?;
    tracing::info!(
        grant = %k8s::display(grant),
        finalizer = LEGACY_FINALIZER,
        "finalizer of an earlier version removed"
    );
    Ok(())
}

/// The world as the stores and the API show it; the signing key is read only when the grant
/// may mint.
async fn observe<'k>(
    grant: &TokenGrant,
    ctx: &'k Ctx,
    key: &'k Result<SigningKey, String>,
    secret: Option<&Secret>,
) -> World<'k> {
    let uid = grant.uid().unwrap_or_default();
    let claimants: Vec<ServiceAccount> = ctx
        .accounts
        .state()
        .iter()
        .filter(|a| {
            a.spec
                .api
                .as_ref()
                .is_some_and(|api| api.audience == grant.spec.audience)
        })
        .map(|a| a.as_ref().clone())
        .collect();
    let (owner, defined) = audience_owner(grant, &claimants);
    let subject_sa = subject_account(grant)
        .and_then(|(ns, name)| ctx.accounts.get(&ObjectRef::new(&name).within(&ns)));
    let subject = resolve_subject(grant, subject_sa.as_deref(), |ns, name| {
        ctx.issuers.get(&ObjectRef::new(name).within(ns)).is_some()
    });
    World {
        audience_owner: owner,
        defined_scopes: defined,
        allow_unclaimed_audiences: ctx.allow_unclaimed_audiences,
        subject,
        secret: secret.map(|s| ObservedSecret {
            data: k8s::secret_strings(s),
            controlled: k8s::is_controlled_by(s, &uid),
        }),
        signing_key: key.as_ref().map_err(Clone::clone),
        issuer: &ctx.issuer,
        max_token_lifetime: ctx.max_token_lifetime,
    }
}

/// The key that signs now, from the signing-keys Secret in the operator namespace; why not,
/// as text.
pub async fn signing_key(
    client: &Client,
    namespace: &str,
    clock: &dyn Clock,
) -> Result<SigningKey, String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = crate::signing_keys::SECRET_NAME;
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|e| format!("cannot read Secret {namespace}/{name}: {e}"))?
        .ok_or_else(|| format!("Secret {namespace}/{name} does not exist yet"))?;
    let records =
        crate::signing_keys::from_data(&k8s::secret_strings(&secret)).map_err(|e| e.to_string())?;
    crate::signing_keys::keys_at(&records, k8s::unix_now(clock))
        .map(|(signer, _)| signer)
        .map_err(|e| e.to_string())
}

async fn apply(grant: &TokenGrant, ctx: &Ctx) -> Result<Action, Error> {
    let namespace = grant.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let output = grant.spec.output.as_ref();
    let existing = match output {
        Some(o) => secrets
            .get_opt(&o.secret_name)
            .await
            .map_err(Error::kube(format!(
                "get Secret {namespace}/{}",
                o.secret_name
            )))?,
        None => None,
    };
    let key = if output.is_some() && !grant.spec.revoked {
        signing_key(&ctx.client, &ctx.namespace, ctx.clock.as_ref()).await
    } else {
        Err("not needed".into())
    };
    let world = observe(grant, ctx, &key, existing.as_ref()).await;
    let pass = Context {
        now: ctx.clock.now(),
    };
    let mut plan = super::reconcile(grant, &world, &pass);

    // Deny-list entries first: the status written below records that they were.
    if let Some(r) = &plan.revoke {
        write_revocations(ctx, r).await?;
    }
    let mut write_error = None;
    if let Some(desired) = &plan.secret
        && let Err(e) = write_secret(grant, &secrets, desired, existing.as_ref()).await
    {
        tracing::warn!(category = e.category(), error = %e, "output Secret not written");
        plan = after_write_failure(grant, &world, &pass, &e.to_string());
        write_error = Some(e);
    }
    write_status(grant, ctx, &plan).await?;
    publish_events(grant, ctx, &plan).await;
    if let Some(e) = write_error {
        return Err(e);
    }
    if plan.failed {
        let message = find(&plan.status.conditions, types::ISSUING)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        return Err(Error::Keys(message));
    }
    let ready = find(&plan.status.conditions, types::READY);
    let blocked = ready.is_some_and(|c| {
        c.status == ConditionStatus::False && c.reason.as_str() != reasons::REVOKED
    });
    let mut next = plan.requeue_after.unwrap_or(RESYNC).min(RESYNC);
    if blocked {
        next = next.min(RETRY_NOT_READY);
    }
    Ok(Action::requeue(next))
}

async fn write_revocations(ctx: &Ctx, r: &Revocations) -> Result<(), Error> {
    if let Some(g) = &r.grant {
        crate::revocation::revoke_grant(&ctx.client, &ctx.namespace, g).await?;
    }
    if let Some((jti, exp)) = &r.token {
        crate::revocation::revoke_jti(&ctx.client, &ctx.namespace, jti, *exp).await?;
    }
    Ok(())
}

async fn write_secret(
    grant: &TokenGrant,
    api: &Api<Secret>,
    desired: &crate::service_account::DesiredSecret,
    current: Option<&Secret>,
) -> Result<(), Error> {
    let label = [(TOKEN_GRANT_LABEL, grant.name_any())];
    write_owned_secret(grant, api, COMPONENT, &label, desired, current).await
}

/// Writes a token Secret `owner` controls: created once (a 409 means another writer won:
/// re-read next pass, never overwrite), replaced only with the `resourceVersion` read and
/// only when its data differs; a Secret it does not control is never written.
pub async fn write_owned_secret<K: Resource<DynamicType = ()> + ResourceExt>(
    owner: &K,
    api: &Api<Secret>,
    component: &str,
    labels: &[(&str, String)],
    desired: &crate::service_account::DesiredSecret,
    current: Option<&Secret>,
) -> Result<(), Error> {
    let namespace = owner.namespace().unwrap_or_default();
    let step = format!("Secret {namespace}/{}", desired.name);
    let mut secret = k8s::managed_secret(
        &desired.name,
        &namespace,
        component,
        k8s::controller_reference(owner),
        labels,
        &desired.data,
    );
    match current {
        None => {
            api.create(&PostParams::default(), &secret)
                .await
                .map_err(Error::kube(format!("create {step}")))?;
        }
        Some(current) => {
            if !k8s::is_controlled_by(current, &owner.uid().unwrap_or_default()) {
                return Err(Error::Invalid(format!(
                    "{step} is not controlled by {} {}",
                    K::kind(&()),
                    owner.name_any()
                )));
            }
            if k8s::secret_strings(current) == desired.data {
                return Ok(());
            }
            // Replace with the resourceVersion we read: a concurrent change is a 409.
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
    Ok(())
}

async fn write_status(grant: &TokenGrant, ctx: &Ctx, plan: &Plan) -> Result<(), Error> {
    apply_token_status(&ctx.client, grant, grant.status.as_ref(), &plan.status).await
}

/// Writes the status of a grant or an AccessToken (server-side apply, forced: the operator
/// owns status), only when it changed.
pub async fn apply_token_status<K>(
    client: &Client,
    obj: &K,
    old: Option<&TokenGrantStatus>,
    status: &TokenGrantStatus,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    if old == Some(status) {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": crate::api::API_VERSION,
        "kind": K::kind(&()),
        "metadata": {"name": obj.name_any()},
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::kube(format!(
        "patch status of {} {}",
        K::kind(&()),
        k8s::display(obj)
    )))?;
    Ok(())
}

async fn publish_events(grant: &TokenGrant, ctx: &Ctx, plan: &Plan) {
    publish_token_events(&ctx.recorder, grant, grant.status.as_ref(), &plan.events).await;
}

/// Publishes the Events of a grant's or an AccessToken's pass. A Warning whose reason is
/// already the stored Ready or Issuing reason is not repeated (reported once, not on every
/// pass or retry).
pub async fn publish_token_events<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    obj: &K,
    old: Option<&TokenGrantStatus>,
    events: &[k8s::Event],
) {
    let reported: Vec<String> = old
        .map(|s| {
            [types::READY, types::ISSUING]
                .iter()
                .filter_map(|t| find(&s.conditions, t).map(|c| c.reason.clone()))
                .collect()
        })
        .unwrap_or_default();
    k8s::publish_events(recorder, &obj.object_ref(&()), events, &reported).await;
}

/// Per-object exponential backoff, as for ServiceAccounts.
pub fn error_policy(grant: Arc<TokenGrant>, err: &Error, ctx: Arc<Ctx>) -> Action {
    k8s::backoff_policy(&ctx.failures, grant.as_ref(), err)
}
