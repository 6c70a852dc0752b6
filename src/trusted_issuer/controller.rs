//! The controller's side of TrustedIssuers: fetch each issuer's keys (the same cache the
//! token server uses) and report what it found in the status — issuer, JWKS URL, key count
//! and ids, last successful fetch, last error, Ready with a reason. Status is written by
//! server-side apply, only when it changed; the next look is at the issuer's next refresh.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::cache::IssuerCache;
use crate::api::TrustedIssuer;
use crate::api::conditions::{ConditionStatus, types};
use crate::api::trusted_issuer::TrustedIssuerStatus;
use crate::k8s::conditions::{Desired, set_condition};
use crate::k8s::{self, Error, FIELD_MANAGER};
use crate::service_account::to_time;
use crate::token::Clock;

/// What the TrustedIssuer reconciler shares.
pub struct Ctx {
    /// The API client.
    pub client: Client,
    /// Keys and fetch state of every issuer.
    pub cache: IssuerCache,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Metrics.
    pub metrics: Arc<crate::controller::Metrics>,
}

/// Reconciles one TrustedIssuer.
#[tracing::instrument(skip(ti, ctx), fields(issuer = %k8s::display(ti.as_ref())))]
pub async fn reconcile(ti: Arc<TrustedIssuer>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile_started("TrustedIssuer");
    let result = reconcile_inner(&ti, &ctx).await;
    ctx.metrics
        .reconcile_finished("TrustedIssuer", timer, result.as_ref().err());
    result
}

async fn reconcile_inner(ti: &TrustedIssuer, ctx: &Ctx) -> Result<Action, Error> {
    let key = ctx.cache.upsert(ti);
    if ti.metadata.deletion_timestamp.is_some() {
        ctx.cache.remove(&key);
        return Ok(Action::await_change());
    }
    let seen = ctx
        .cache
        .refresh(&key, false)
        .await
        .or_else(|| ctx.cache.status(&key));
    let Some(seen) = seen else {
        return Ok(Action::requeue(Duration::from_secs(5)));
    };
    let now = to_time(ctx.clock.now());
    let old = ti.status.clone().unwrap_or_default();
    let mut status = TrustedIssuerStatus {
        conditions: old.conditions.clone(),
        observed_generation: ti.metadata.generation,
        issuer: seen.issuer.clone(),
        jwks_uri: seen.jwks_uri.clone(),
        key_count: Some(i32::try_from(seen.key_count).unwrap_or(i32::MAX)),
        key_ids: seen.key_ids.clone(),
        last_fetch_time: seen.last_fetch_time.map(to_time),
        last_error: seen.last_error.clone(),
    };
    set_condition(
        &mut status.conditions,
        Desired {
            type_: types::READY,
            status: ConditionStatus::from_bool(seen.ready),
            reason: seen.reason,
            message: seen.message.clone(),
        },
        ti.metadata.generation,
        &now,
    );
    if ti.status.as_ref() != Some(&status) {
        let api: Api<TrustedIssuer> =
            Api::namespaced(ctx.client.clone(), &ti.namespace().unwrap_or_default());
        let body = json!({
            "apiVersion": crate::api::API_VERSION,
            "kind": "TrustedIssuer",
            "metadata": {"name": ti.name_any()},
            "status": status,
        });
        api.patch_status(
            &ti.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(Error::kube(format!("patch status of {}", k8s::display(ti))))?;
    }
    let next = ctx
        .cache
        .next_due(&key)
        .and_then(|t| t.duration_since(SystemTime::now()).ok())
        .unwrap_or(Duration::from_secs(60))
        .clamp(Duration::from_secs(1), Duration::from_secs(3600));
    Ok(Action::requeue(next))
}

/// Retries a failed status write after a short, fixed delay (fetch failures are not errors:
/// they are reported in the status and retried on the cache's own backoff).
pub fn error_policy(ti: Arc<TrustedIssuer>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(issuer = %k8s::display(ti.as_ref()), category = err.category(), error = %err, "reconcile failed");
    Action::requeue(Duration::from_secs(10))
}
