//! The I/O around the pure [`reconcile`](super::reconcile): read the account and its grants
//! from the ServiceAccount and TokenGrant controllers' stores, decide the authorization with
//! the token endpoint's rules, read the Secret and (only when a token may be minted) the
//! signing key; run the pure stage; write the Secret (created once, replaced only with the
//! `resourceVersion` read), then the status (server-side apply, only when it changed), then
//! Events. No finalizer: the Secret goes with the AccessToken (owner reference), and the
//! token in it names its grants, so deleting a grant voids it everywhere at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};

use super::{COMPONENT, Context, World, after_write_failure};
use crate::api::conditions::{ConditionStatus, types};
use crate::api::{AccessToken, ServiceAccount, TokenGrant};
use crate::k8s::conditions::find;
use crate::k8s::{self, Error};
use crate::service_account::ObservedSecret;
use crate::service_account::controller::{RESYNC, RETRY_NOT_READY};
use crate::token::Clock;
use crate::token_grant::controller::{
    apply_token_status, publish_token_events, signing_key, write_owned_secret,
};

/// Label naming the AccessToken on its Secret.
pub const ACCESS_TOKEN_LABEL: &str = "s2s.dev/access-token";

/// What the AccessToken reconciler shares.
pub struct Ctx {
    /// The API client.
    pub client: Client,
    /// The operator namespace (signing keys).
    pub namespace: String,
    /// The issuer URL (`iss`).
    pub issuer: String,
    /// Upper bound on every token's lifetime.
    pub max_token_lifetime: Duration,
    /// Let grants name audiences that no account claims (as the token server).
    pub allow_unclaimed_audiences: bool,
    /// Events.
    pub recorder: Recorder,
    /// Every ServiceAccount (the ServiceAccount controller's store).
    pub accounts: Store<ServiceAccount>,
    /// Every TokenGrant (the TokenGrant controller's store).
    pub grants: Store<TokenGrant>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Consecutive failures per AccessToken, for backoff.
    pub failures: Mutex<HashMap<ObjectRef<AccessToken>, u32>>,
    /// Metrics.
    pub metrics: Arc<crate::controller::Metrics>,
}

/// The AccessTokens to look at again when a TokenGrant changes: those of its subject account.
pub fn tokens_for_grant(
    tokens: &Store<AccessToken>,
    grant: &TokenGrant,
) -> Vec<ObjectRef<AccessToken>> {
    let Some((ns, name)) = crate::token_grant::subject_account(grant) else {
        return vec![];
    };
    tokens
        .state()
        .iter()
        .filter(|t| {
            t.namespace().as_deref() == Some(ns.as_str()) && t.spec.service_account_name == name
        })
        .map(|t| ObjectRef::from_obj(t.as_ref()))
        .collect()
}

/// The AccessTokens to look at again when a ServiceAccount changes: its own, and those naming
/// an audience it claims.
pub fn tokens_for_account(
    tokens: &Store<AccessToken>,
    sa: &ServiceAccount,
) -> Vec<ObjectRef<AccessToken>> {
    let ns = sa.namespace();
    let audience = sa.spec.api.as_ref().map(|a| &a.audience);
    tokens
        .state()
        .iter()
        .filter(|t| {
            (t.namespace() == ns && t.spec.service_account_name == sa.name_any())
                || audience.is_some_and(|a| t.spec.audiences.contains(a))
        })
        .map(|t| ObjectRef::from_obj(t.as_ref()))
        .collect()
}

/// Reconciles one AccessToken.
#[tracing::instrument(skip(token, ctx), fields(access_token = %k8s::display(token.as_ref())))]
pub async fn reconcile(token: Arc<AccessToken>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile_started("AccessToken");
    let key = ObjectRef::from_obj(token.as_ref());
    let result = apply(&token, &ctx).await;
    ctx.metrics
        .reconcile_finished("AccessToken", timer, result.as_ref().err());
    if result.is_ok() {
        ctx.failures.lock().expect("not poisoned").remove(&key);
    }
    result
}

async fn apply(token: &AccessToken, ctx: &Ctx) -> Result<Action, Error> {
    if token.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = token
        .namespace()
        .ok_or_else(|| Error::Invalid("AccessToken without a namespace".into()))?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = secrets
        .get_opt(&token.spec.secret_name)
        .await
        .map_err(Error::kube(format!(
            "get Secret {namespace}/{}",
            token.spec.secret_name
        )))?;
    let accounts = ctx.accounts.state();
    let grants = ctx.grants.state();
    let (accounts, grants) = super::relevant(
        token,
        accounts.iter().map(AsRef::as_ref),
        grants.iter().map(AsRef::as_ref),
    );
    let registry = crate::store::build_registry(&accounts, &grants, ctx.allow_unclaimed_audiences);
    let account = accounts.iter().find(|a| {
        a.namespace().as_deref() == Some(namespace.as_str())
            && a.name_any() == token.spec.service_account_name
    });
    let authorized = super::authorization(token, account, &registry);
    let key = if authorized.is_ok() {
        signing_key(&ctx.client, &ctx.namespace, ctx.clock.as_ref()).await
    } else {
        Err("not needed".into())
    };
    let uid = token.uid().unwrap_or_default();
    let world = World {
        authorized,
        secret: existing.as_ref().map(|s| ObservedSecret {
            data: k8s::secret_strings(s),
            controlled: k8s::is_controlled_by(s, &uid),
        }),
        signing_key: key.as_ref().map_err(Clone::clone),
        issuer: &ctx.issuer,
        max_token_lifetime: ctx.max_token_lifetime,
    };
    let pass = Context {
        now: ctx.clock.now(),
    };
    let mut plan = super::reconcile(token, &world, &pass);
    let mut write_error = None;
    if let Some(desired) = &plan.secret {
        let label = [(ACCESS_TOKEN_LABEL, token.name_any())];
        if let Err(e) = write_owned_secret(
            token,
            &secrets,
            COMPONENT,
            &label,
            desired,
            existing.as_ref(),
        )
        .await
        {
            tracing::warn!(category = e.category(), error = %e, "AccessToken Secret not written");
            plan = after_write_failure(token, &world, &pass, &e.to_string());
            write_error = Some(e);
        }
    }
    apply_token_status(&ctx.client, token, token.status.as_ref(), &plan.status).await?;
    publish_token_events(&ctx.recorder, token, token.status.as_ref(), &plan.events).await;
    if let Some(e) = write_error {
        return Err(e);
    }
    if plan.failed {
        let message = find(&plan.status.conditions, types::ISSUING)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        return Err(Error::Keys(message));
    }
    let blocked = find(&plan.status.conditions, types::READY)
        .is_some_and(|c| c.status == ConditionStatus::False);
    let mut next = plan.requeue_after.unwrap_or(RESYNC).min(RESYNC);
    if blocked {
        next = next.min(RETRY_NOT_READY);
    }
    Ok(Action::requeue(next))
}

/// Per-object exponential backoff, as for ServiceAccounts.
pub fn error_policy(token: Arc<AccessToken>, err: &Error, ctx: Arc<Ctx>) -> Action {
    k8s::backoff_policy(&ctx.failures, token.as_ref(), err)
}
