//! The I/O around [`plan`](super::plan): keeps the operator-owned Secret holding the signing
//! keys up to date. Only the leader runs it. The Secret is created once and afterwards only
//! replaced with the `resourceVersion` read, so two writers can never both succeed; a Secret
//! of that name the operator did not create is never touched.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};

use super::{Policy, SECRET_NAME, from_data, next_change, plan, to_data};
use crate::k8s::{self, Error, MANAGED_BY, MANAGED_BY_LABEL};
use crate::token::Clock;

/// Keeps the signing keys.
pub struct KeyManager {
    /// The Secrets of the operator namespace.
    pub api: Api<Secret>,
    /// The operator namespace.
    pub namespace: String,
    /// Rotation policy.
    pub policy: Policy,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

/// Upper bound on a sleep, so a changed or deleted Secret is noticed.
const RECHECK: Duration = Duration::from_secs(300);

impl KeyManager {
    /// A manager for the operator namespace.
    pub fn new(client: Client, namespace: &str, policy: Policy, clock: Arc<dyn Clock>) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            policy,
            clock,
        }
    }

    /// One pass: generate, publish, activate or retire keys as due. Returns how long until
    /// the next pass is needed.
    pub async fn ensure(&self) -> Result<Duration, Error> {
        let step = format!("Secret {}/{SECRET_NAME}", self.namespace);
        let current = self
            .api
            .get_opt(SECRET_NAME)
            .await
            .map_err(Error::kube(format!("get {step}")))?;
        if let Some(s) = &current
            && s.labels().get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY)
        {
            return Err(Error::Keys(format!(
                "{step} exists but was not created by s2s-operator ({MANAGED_BY_LABEL} label missing); it is left alone"
            )));
        }
        let records = match &current {
            Some(s) => {
                from_data(&k8s::secret_strings(s)).map_err(|e| Error::Keys(e.to_string()))?
            }
            None => vec![],
        };
        let now = k8s::unix_now(self.clock.as_ref());
        let (records, changed) = plan(records, &self.policy, now, crate::crypto::generate_key)
            .map_err(|e| Error::Keys(e.to_string()))?;
        if changed {
            let secret = k8s::managed_secret(
                SECRET_NAME,
                &self.namespace,
                "signing-keys",
                None,
                &[],
                &to_data(&records),
            );
            k8s::create_or_replace_secret(&self.api, current.as_ref(), secret).await?;
            tracing::info!(keys = records.len(), "signing keys updated");
        }
        let next = next_change(&records, &self.policy, now)
            .map(|t| Duration::from_secs(t.saturating_sub(now).max(1)))
            .unwrap_or(RECHECK);
        Ok(next.min(RECHECK))
    }

    /// Runs passes until dropped, backing off on errors.
    pub async fn run(self) {
        k8s::repeat("signing keys", Duration::MAX, || self.ensure()).await
    }
}
