//! The deny list, kept in the Kubernetes API so every token-server replica sees every
//! revocation and a restart forgets none: one ConfigMap, [`CONFIGMAP_NAME`], in the operator
//! namespace, written with JSON merge patches (each adds or removes its own keys, so
//! concurrent writers never conflict), watched by every token server.
//!
//! Two kinds of entries:
//! * `j.<jti>` → the token's `exp`: one token revoked through RFC 7009;
//! * `g.<digest of subject and audience>` → [`GrantRevocation`] as JSON: a TokenGrant was
//!   revoked (`spec.revoked`), so every token for that subject and audience issued up to
//!   `before` is void until `until` (the longest such a token can live), even if the grant is
//!   un-revoked later. It also voids same-subject tokens another grant allowed; they are
//!   re-issued on request.
//!
//! Deleting a grant writes nothing here: tokens name their grants (claim `grants`), and the
//! token core holds a token naming a grant it no longer sees as void (`token::core`). That is
//! why TokenGrants need no finalizer. Tokens from versions before the claim are covered by
//! `spec.revoked` entries only.
//!
//! Entries are dropped by the controller once they can no longer match a live token.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Map, Value, json};

use crate::k8s::{self, Error, is_status};
use crate::token::deny::{DenyList, GrantRevocation, expired_keys, grant_key, jti_key};

/// Name of the ConfigMap holding the deny list.
pub const CONFIGMAP_NAME: &str = "s2s-revocations";

async fn merge(client: &Client, namespace: &str, data: Map<String, Value>) -> Result<(), Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let patch = json!({ "data": data });
    api.patch(
        CONFIGMAP_NAME,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
    .map_err(Error::kube(format!(
        "patch ConfigMap {namespace}/{CONFIGMAP_NAME}"
    )))
}

/// Puts a grant revocation on the list.
pub async fn revoke_grant(
    client: &Client,
    namespace: &str,
    entry: &GrantRevocation,
) -> Result<(), Error> {
    let mut data = Map::new();
    data.insert(
        grant_key(&entry.sub, &entry.audience),
        Value::String(serde_json::to_string(entry).expect("serializes")),
    );
    merge(client, namespace, data).await
}

/// Puts one token on the list until its `exp`.
pub async fn revoke_jti(
    client: &Client,
    namespace: &str,
    jti: &str,
    exp: u64,
) -> Result<(), Error> {
    let key = jti_key(jti).ok_or_else(|| Error::Invalid("a token id we never issue".into()))?;
    let mut data = Map::new();
    data.insert(key, Value::String(exp.to_string()));
    merge(client, namespace, data).await
}

/// Creates the ConfigMap if it is missing (the controller does, so token servers need only
/// `patch`).
pub async fn ensure(client: &Client, namespace: &str) -> Result<(), Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let step = format!("ConfigMap {namespace}/{CONFIGMAP_NAME}");
    if api
        .get_opt(CONFIGMAP_NAME)
        .await
        .map_err(Error::kube(format!("get {step}")))?
        .is_some()
    {
        return Ok(());
    }
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": CONFIGMAP_NAME,
            "namespace": namespace,
            "labels": {k8s::MANAGED_BY_LABEL: k8s::MANAGED_BY, k8s::COMPONENT_LABEL: "revocations"},
        },
        "data": {},
    }))
    .expect("valid ConfigMap");
    match api.create(&PostParams::default(), &cm).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 409) => Ok(()),
        Err(e) => Err(Error::kube(format!("create {step}"))(e)),
    }
}

/// Drops entries that can no longer match a live token; returns how many.
pub async fn prune(client: &Client, namespace: &str, now: u64) -> Result<usize, Error> {
    let current = list_data(client, namespace).await?;
    let expired = expired_keys(&current, now);
    if expired.is_empty() {
        return Ok(0);
    }
    let data: Map<String, Value> = expired.iter().map(|k| (k.clone(), Value::Null)).collect();
    merge(client, namespace, data).await?;
    Ok(expired.len())
}

async fn list_data(client: &Client, namespace: &str) -> Result<BTreeMap<String, String>, Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .get_opt(CONFIGMAP_NAME)
        .await
        .map_err(Error::kube(format!(
            "get ConfigMap {namespace}/{CONFIGMAP_NAME}"
        )))?
        .and_then(|c| c.data)
        .unwrap_or_default())
}

/// The deny list as stored now.
pub async fn list(client: &Client, namespace: &str) -> Result<DenyList, Error> {
    Ok(DenyList::from_data(&list_data(client, namespace).await?))
}

/// The controller's housekeeping: make sure the ConfigMap exists, then prune it every
/// `every`. Runs until dropped.
pub async fn maintain(
    client: Client,
    namespace: String,
    clock: std::sync::Arc<dyn crate::token::Clock>,
    every: std::time::Duration,
) {
    loop {
        let now = clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let result = async {
            ensure(&client, &namespace).await?;
            prune(&client, &namespace, now).await
        }
        .await;
        let wait = match result {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(entries = n, "expired revocations pruned");
                }
                every
            }
            Err(e) => {
                tracing::warn!(category = e.category(), error = %e, "revocation list upkeep failed");
                std::time::Duration::from_secs(10)
            }
        };
        tokio::time::sleep(wait).await;
    }
}
