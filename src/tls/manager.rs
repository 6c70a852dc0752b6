//! The I/O around the decisions in [`super`]: keeps the CA Secret, the serving-certificate
//! Secrets and the webhook configuration's `caBundle` current. Only the leader runs it.
//!
//! Secrets are created once and afterwards replaced with the `resourceVersion` read, so two
//! writers never both win; a Secret of one of these names that the operator did not create
//! is never touched (point the chart at it as a user-provided certificate instead). The
//! `caBundle` is written with a JSON patch that first tests each webhook's name, so an edit
//! of the configuration in between makes the patch fail instead of writing the wrong entry.
//! The configuration is re-checked on every pass, so a `helm upgrade` that reset the bundle
//! is repaired within one pass.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use super::{CaAction, CaRecord, ISSUED_BY, Leaf, Policy, next_check, plan, tls_keys};
use crate::k8s::{self, Error, MANAGED_BY, MANAGED_BY_LABEL};
use crate::token::Clock;

/// `s2s.dev/component` of the CA Secret.
pub const CA_COMPONENT: &str = "tls-ca";
/// `s2s.dev/component` of a serving-certificate Secret.
pub const SERVING_COMPONENT: &str = "tls-serving";

/// One serving certificate to keep.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Its Secret in the operator namespace.
    pub secret: String,
    /// DNS names and IP addresses it is valid for.
    pub names: Vec<String>,
}

impl std::str::FromStr for Target {
    type Err = String;

    /// `SECRET=NAME,NAME,...`
    fn from_str(s: &str) -> Result<Self, String> {
        let (secret, names) = s.split_once('=').ok_or("expected SECRET=NAME[,NAME...]")?;
        let names: Vec<String> = names
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if secret.is_empty() || names.is_empty() {
            return Err("expected SECRET=NAME[,NAME...]".into());
        }
        Ok(Target {
            secret: secret.to_owned(),
            names,
        })
    }
}

/// What the manager keeps.
#[derive(Clone, Debug)]
pub struct Options {
    /// The CA Secret.
    pub ca_secret: String,
    /// The serving certificates.
    pub targets: Vec<Target>,
    /// The MutatingWebhookConfiguration whose `caBundle`s follow the bundle.
    pub webhook_configuration: Option<String>,
    /// Lifetimes and overlap.
    pub policy: Policy,
}

/// Keeps the operator's TLS material.
pub struct TlsManager {
    secrets: Api<Secret>,
    webhooks: Api<MutatingWebhookConfiguration>,
    namespace: String,
    options: Options,
    clock: Arc<dyn Clock>,
    bundle: watch::Sender<Option<String>>,
}

/// Upper bound on a sleep, so a deleted Secret or a reset `caBundle` is noticed.
const RECHECK: Duration = Duration::from_secs(10);

impl TlsManager {
    /// A manager for the operator namespace; `bundle` receives the trust bundle whenever it
    /// changes.
    pub fn new(
        client: Client,
        namespace: &str,
        options: Options,
        clock: Arc<dyn Clock>,
        bundle: watch::Sender<Option<String>>,
    ) -> Self {
        Self {
            secrets: Api::namespaced(client.clone(), namespace),
            webhooks: Api::all(client),
            namespace: namespace.to_owned(),
            options,
            clock,
            bundle,
        }
    }

    /// Reads a Secret of ours, refusing one the operator did not create.
    async fn read(&self, name: &str, component: &str) -> Result<Option<Secret>, Error> {
        let step = format!("Secret {}/{name}", self.namespace);
        let s = self
            .secrets
            .get_opt(name)
            .await
            .map_err(Error::kube(format!("get {step}")))?;
        if let Some(s) = &s {
            let labels = s.labels();
            if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY)
                || labels.get(k8s::COMPONENT_LABEL).map(String::as_str) != Some(component)
            {
                return Err(Error::Tls(format!(
                    "{step} exists but was not created by s2s-operator for TLS; it is left alone (delete it, or use it as a user-provided certificate)"
                )));
            }
        }
        Ok(s)
    }

    async fn write(&self, current: Option<&Secret>, secret: Secret) -> Result<(), Error> {
        k8s::create_or_replace_secret(&self.secrets, current, secret).await
    }

    /// One pass. Returns how long until the next one is needed.
    pub async fn ensure(&self) -> Result<Duration, Error> {
        let now = k8s::unix_now(self.clock.as_ref());
        let policy = &self.options.policy;
        let ca_secret = self.read(&self.options.ca_secret, CA_COMPONENT).await?;
        let record = ca_secret
            .as_ref()
            .map(|s| CaRecord::from_data(&k8s::secret_strings(s)));
        let mut current_leaves = Vec::new();
        let mut leaves: Vec<Option<Leaf>> = Vec::new();
        for t in &self.options.targets {
            let s = self.read(&t.secret, SERVING_COMPONENT).await?;
            leaves.push(s.as_ref().and_then(read_leaf));
            current_leaves.push(s);
        }

        if let Some(Err(e)) = &record {
            tracing::warn!(error = %e, "TLS CA unreadable: making a new one");
        }
        let names: Vec<Vec<String>> = self
            .options
            .targets
            .iter()
            .map(|t| t.names.clone())
            .collect();
        let plan =
            plan(now, record, leaves, &names, policy).map_err(|e| Error::Tls(e.to_string()))?;
        if plan.ca != CaAction::Keep {
            let secret = k8s::managed_secret(
                &self.options.ca_secret,
                &self.namespace,
                CA_COMPONENT,
                None,
                &[],
                &plan.record.to_data(),
            );
            self.write(ca_secret.as_ref(), secret).await?;
            match &plan.ca {
                CaAction::Create(reason) => tracing::info!(reason, "TLS CA created"),
                CaAction::Rotate => tracing::info!("TLS CA rotated: old and new CA both trusted"),
                CaAction::DropPrevious => {
                    tracing::info!("TLS CA rotation complete: the previous CA is no longer trusted")
                }
                CaAction::Keep => {}
            }
        }
        let bundle = plan.record.bundle();
        for (i, t) in self.options.targets.iter().enumerate() {
            let current = current_leaves[i].as_ref();
            let leaf = &plan.leaves[i];
            let held = current.map(k8s::secret_strings).unwrap_or_default();
            if let Some(reason) = plan.issued[i] {
                tracing::info!(secret = %t.secret, reason, not_after = leaf.not_after, "TLS certificate issued");
            } else if held.get(tls_keys::CA) == Some(&bundle) {
                continue;
            }
            let d = BTreeMap::from([
                (tls_keys::CERT.to_owned(), leaf.cert_pem.clone()),
                (tls_keys::KEY.to_owned(), leaf.key_pem.clone()),
                (tls_keys::CA.to_owned(), bundle.clone()),
            ]);
            let mut secret =
                k8s::managed_secret(&t.secret, &self.namespace, SERVING_COMPONENT, None, &[], &d);
            secret.type_ = Some("kubernetes.io/tls".into());
            secret.metadata.annotations =
                Some(BTreeMap::from([(ISSUED_BY.into(), leaf.issued_by.clone())]));
            self.write(current, secret).await?;
        }

        if let Some(name) = &self.options.webhook_configuration {
            self.patch_ca_bundle(name, &bundle).await?;
        }
        self.bundle.send_if_modified(|b| {
            let changed = b.as_deref() != Some(bundle.as_str());
            if changed {
                *b = Some(bundle.clone());
            }
            changed
        });

        let next = next_check(now, &plan.record, &plan.leaves, policy);
        Ok(Duration::from_secs(next.saturating_sub(now).max(1)).min(RECHECK))
    }

    /// Sets every webhook's `caBundle` in the configuration to `bundle`.
    async fn patch_ca_bundle(&self, name: &str, bundle: &str) -> Result<(), Error> {
        let step = format!("MutatingWebhookConfiguration {name}");
        let Some(cfg) = self
            .webhooks
            .get_opt(name)
            .await
            .map_err(Error::kube(format!("get {step}")))?
        else {
            // Injection turned off, or the chart not yet applied: nothing to keep.
            return Ok(());
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(bundle);
        let mut ops = Vec::new();
        for (i, w) in cfg.webhooks.iter().flatten().enumerate() {
            let held = w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice());
            if held == Some(bundle.as_bytes()) {
                continue;
            }
            ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": w.name}));
            ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}));
        }
        if ops.is_empty() {
            return Ok(());
        }
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
            .map_err(|e| Error::Tls(e.to_string()))?;
        self.webhooks
            .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .map_err(Error::kube(format!("patch {step}")))?;
        tracing::info!(configuration = %name, "webhook caBundle updated");
        Ok(())
    }

    /// Runs passes until dropped, backing off on errors.
    pub async fn run(self) {
        k8s::repeat("TLS", RECHECK, || self.ensure()).await
    }
}

/// The serving certificate a Secret of ours holds, if readable.
fn read_leaf(s: &Secret) -> Option<Leaf> {
    let d = k8s::secret_strings(s);
    let issued_by = s.annotations().get(ISSUED_BY)?;
    Leaf::parse(d.get(tls_keys::CERT)?, d.get(tls_keys::KEY)?, issued_by).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_from_flags() {
        let t: Target = "tls=a.svc, 127.0.0.1".parse().unwrap();
        assert_eq!(t.secret, "tls");
        assert_eq!(t.names, vec!["a.svc", "127.0.0.1"]);
        assert!("tls".parse::<Target>().is_err());
        assert!("tls=".parse::<Target>().is_err());
        assert!("=a".parse::<Target>().is_err());
    }
}
