//! Kubernetes glue shared by the reconcilers: the field manager and label keys, ownership of
//! generated Secrets, conditions, leader election, and the error type with its stable
//! categories. Pure helpers first, so `dev` mode and the controller share them.

pub mod conditions;
pub mod lease;

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

/// Field manager of every write.
pub const FIELD_MANAGER: &str = "s2s-operator";
/// Label on everything the operator creates (the owned-Secret watch selects on it).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "s2s-operator";
/// Label naming the ServiceAccount (s2s.dev) a Secret belongs to.
pub const SERVICE_ACCOUNT_LABEL: &str = "s2s.dev/service-account";
/// Label naming the TokenGrant whose output token a Secret holds.
pub const TOKEN_GRANT_LABEL: &str = "s2s.dev/token-grant";
/// Label naming what a Secret holds (`credentials`, `signing-keys`).
pub const COMPONENT_LABEL: &str = "s2s.dev/component";

/// The label selector of the Secrets the operator manages.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// An owner reference making `owner` the controller of a child (garbage collection with it).
pub fn controller_reference<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    owner.controller_owner_ref(&())
}

/// Whether `child` is controlled by the object with this UID (an owner reference with
/// `controller: true`). A Secret the user created under the same name is not.
pub fn is_controlled_by<K: Resource>(child: &K, owner_uid: &str) -> bool {
    child
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == owner_uid)
}

/// A Secret's data as strings; keys whose value is not UTF-8 are dropped (we never write any).
pub fn secret_strings(secret: &Secret) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in secret.data.iter().flatten() {
        if let Ok(s) = String::from_utf8(v.0.clone()) {
            out.insert(k.clone(), s);
        }
    }
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// Strings as Secret data.
pub fn secret_bytes(data: &BTreeMap<String, String>) -> BTreeMap<String, ByteString> {
    data.iter()
        .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

/// A Secret the operator manages: labels, and the owner reference when there is an owner.
pub fn managed_secret(
    name: &str,
    namespace: &str,
    component: &str,
    owner: Option<OwnerReference>,
    extra_labels: &[(&str, String)],
    data: &BTreeMap<String, String>,
) -> Secret {
    let mut labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (COMPONENT_LABEL.to_owned(), component.to_owned()),
    ]);
    for (k, v) in extra_labels {
        labels.insert((*k).to_owned(), v.clone());
    }
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(secret_bytes(data)),
        ..Default::default()
    }
}

/// Creates `secret` when there is no `current` one, else replaces `current` with it under
/// `current`'s resourceVersion: random material is never overwritten by a writer that read
/// an older version (STYLE.md, practice 4).
pub async fn create_or_replace_secret(
    api: &kube::Api<Secret>,
    current: Option<&Secret>,
    mut secret: Secret,
) -> Result<(), Error> {
    let name = secret.name_any();
    let step = format!("Secret {}/{name}", secret.namespace().unwrap_or_default());
    match current {
        None => {
            api.create(&kube::api::PostParams::default(), &secret)
                .await
                .map_err(Error::kube(format!("create {step}")))?;
        }
        Some(cur) => {
            secret.metadata.resource_version = cur.resource_version();
            api.replace(&name, &kube::api::PostParams::default(), &secret)
                .await
                .map_err(Error::kube(format!("replace {step}")))?;
        }
    }
    Ok(())
}

/// Runs `pass` until dropped: again after the wait it returns, or after a backoff (capped at
/// `cap`) when it fails, logging the failure as `what`.
pub async fn repeat<F, Fut>(what: &'static str, cap: std::time::Duration, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<std::time::Duration, Error>>,
{
    let mut failures = 0u32;
    loop {
        let wait = match pass().await {
            Ok(next) => {
                failures = 0;
                next
            }
            Err(e) => {
                failures += 1;
                let delay = backoff(failures).min(cap);
                tracing::warn!(category = e.category(), error = %e, retry_in = ?delay, "{what}");
                delay
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Unix seconds of `clock`'s now.
pub fn unix_now(clock: &dyn crate::token::Clock) -> u64 {
    clock
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An Event a pure reconcile stage asks for; the controller publishes it
/// ([`publish_events`]), `dev` logs it. It lives here, not with a kind, because every kind's
/// plan carries them and this module publishes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What happened; never a secret.
    pub message: String,
}

/// Publishes a reconcile's Events for the object `reference` points at. A Warning whose
/// reason is in `already_reported` (the reasons the stored status already carries) is not
/// repeated, so a lasting problem is reported once, not on every pass. A failed Event write is
/// logged and does not fail the reconcile.
pub async fn publish_events(
    recorder: &kube::runtime::events::Recorder,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    events: &[Event],
    already_reported: &[String],
) {
    use kube::runtime::events::EventType;
    for ev in events {
        if ev.warning && already_reported.iter().any(|r| r == ev.reason) {
            continue;
        }
        let event = kube::runtime::events::Event {
            type_: if ev.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: ev.reason.to_owned(),
            note: Some(ev.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, reference).await {
            tracing::warn!(error = %e, reason = ev.reason, "could not publish an Event");
        }
    }
}

/// Per-object exponential backoff for a controller's `error_policy`: counts the object's
/// consecutive failures (the reconcile clears them on success) and waits 1 s, 2 s, 4 s … up
/// to 5 minutes.
pub fn backoff_policy<K>(
    failures: &std::sync::Mutex<
        std::collections::HashMap<kube::runtime::reflector::ObjectRef<K>, u32>,
    >,
    obj: &K,
    err: &Error,
) -> kube::runtime::controller::Action
where
    K: kube::Resource<DynamicType = ()> + ResourceExt,
{
    let key = kube::runtime::reflector::ObjectRef::from_obj(obj);
    let mut failures = failures.lock().expect("not poisoned");
    let n = failures.entry(key).or_insert(0);
    *n = n.saturating_add(1);
    let delay = backoff(*n);
    let object = display(obj);
    tracing::warn!(
        %object,
        category = err.category(),
        error = %err,
        retry_in = ?delay,
        "reconcile failed"
    );
    kube::runtime::controller::Action::requeue(delay)
}

/// The delay after `n` consecutive failures: 1 s, 2 s, 4 s … up to 5 minutes. Shared by
/// every controller's `error_policy` and the signing-key manager.
pub fn backoff(n: u32) -> std::time::Duration {
    std::time::Duration::from_secs(1u64 << n.saturating_sub(1).min(9))
        .min(std::time::Duration::from_secs(300))
}

/// Errors of the I/O stages, with a stable category for metrics and Event reasons.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{step}: {source}")]
    Kube {
        /// Which step (e.g. "create Secret billing/worker-credentials").
        step: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Another writer changed the object between our read and our write; retry.
    #[error("{0}: changed concurrently, will retry")]
    Conflict(String),
    /// The object is missing something the API always sets.
    #[error("{0}")]
    Invalid(String),
    /// Stored signing keys are unusable.
    #[error("signing keys: {0}")]
    Keys(String),
    /// The operator's TLS material cannot be made or stored.
    #[error("TLS: {0}")]
    Tls(String),
}

impl Error {
    /// Wraps an API error with the step it failed in.
    pub fn kube(step: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let step = step.into();
        move |source| {
            if is_status(&source, 409) {
                Self::Conflict(step)
            } else {
                Self::Kube { step, source }
            }
        }
    }

    /// A stable, bounded category (metrics labels, Event reasons).
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube { source, .. } => match source {
                kube::Error::Api(s) if s.code == 403 => "Forbidden",
                kube::Error::Api(s) if s.code == 404 => "NotFound",
                kube::Error::Api(s) if s.code == 422 => "Invalid",
                kube::Error::Api(_) => "ApiError",
                _ => "Transport",
            },
            Self::Conflict(_) => "Conflict",
            Self::Invalid(_) => "Invalid",
            Self::Keys(_) => "SigningKeys",
            Self::Tls(_) => "TLS",
        }
    }
}

/// Whether an API error carries this HTTP status.
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// `namespace/name` of an object, for messages.
pub fn display<K: ResourceExt>(obj: &K) -> String {
    match obj.namespace() {
        Some(ns) => format!("{ns}/{}", obj.name_any()),
        None => obj.name_any(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ServiceAccount;

    fn account(uid: &str) -> ServiceAccount {
        let mut sa: ServiceAccount = serde_yaml::from_str(
            "apiVersion: s2s.dev/v1alpha1\nkind: ServiceAccount\nmetadata: {name: worker}\nspec: {api: {audience: x}}",
        )
        .unwrap();
        sa.metadata.namespace = Some("team".into());
        sa.metadata.uid = Some(uid.into());
        sa
    }

    fn secret_with(refs: Vec<OwnerReference>) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                owner_references: Some(refs),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn ownership_cases() {
        let sa = account("uid-1");
        let ours = controller_reference(&sa).expect("has a uid");
        assert_eq!(ours.controller, Some(true));
        assert_eq!(ours.kind, "ServiceAccount");
        assert_eq!(ours.api_version, "s2s.dev/v1alpha1");
        // Controlled by us.
        assert!(is_controlled_by(&secret_with(vec![ours.clone()]), "uid-1"));
        // No owner: a Secret someone created by hand.
        assert!(!is_controlled_by(&secret_with(vec![]), "uid-1"));
        // Owned but not as controller (e.g. a GitOps tool's reference).
        let mut weak = ours.clone();
        weak.controller = None;
        assert!(!is_controlled_by(&secret_with(vec![weak]), "uid-1"));
        // Controlled by another object of the same name (deleted and recreated: new UID).
        assert!(!is_controlled_by(&secret_with(vec![ours.clone()]), "uid-2"));
        // Controlled by someone else, with us as a second, non-controller owner.
        let mut other = ours.clone();
        other.uid = "uid-9".into();
        let mut us_weak = ours;
        us_weak.controller = Some(false);
        assert!(!is_controlled_by(
            &secret_with(vec![other, us_weak]),
            "uid-1"
        ));
        // Without a UID there is no owner reference to make.
        let mut no_uid = account("x");
        no_uid.metadata.uid = None;
        assert!(controller_reference(&no_uid).is_none());
    }

    #[test]
    fn backoff_grows_and_caps() {
        use std::time::Duration;
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), Duration::from_secs(300));
        assert_eq!(backoff(1000), Duration::from_secs(300));
    }

    #[test]
    fn managed_secret_shape_and_data_roundtrip() {
        let data = BTreeMap::from([("client_id".to_owned(), "abc".to_owned())]);
        let s = managed_secret(
            "c",
            "team",
            "credentials",
            controller_reference(&account("u")),
            &[(SERVICE_ACCOUNT_LABEL, "worker".into())],
            &data,
        );
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels[SERVICE_ACCOUNT_LABEL], "worker");
        assert!(is_controlled_by(&s, "u"));
        assert_eq!(secret_strings(&s), data);
    }
}
