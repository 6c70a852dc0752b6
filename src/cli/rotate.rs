//! `kubectl s2s rotate serviceaccount/NAME [--wait]`: a new secret or key now.
//!
//! The controller rotates on every new value of the `s2s.dev/rotate` annotation and records
//! the value it acted on in `status.rotationRequest`; the old credential keeps working for
//! the grace period. `--wait` returns once the status names our value and a new current
//! credential, which the controller writes only after the Secret holds it.

use std::time::{Duration, SystemTime};

use kube::Api;
use kube::api::{Patch, PatchParams};

use super::conn::{Kind, api_error, connect, parse_ref};
use super::format::{now_unix, unix, when};
use super::{CliError, Global, Result};
use crate::api::ServiceAccount;
use crate::service_account::ROTATE_ANNOTATION;

/// `kubectl s2s rotate`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  kubectl s2s rotate serviceaccount/billing-worker -n billing --wait"
)]
pub struct RotateArgs {
    /// `serviceaccount/NAME`.
    pub target: String,
    /// Return only once the new credential is in the Secret.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits (Go duration).
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub timeout: Duration,
}

fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    s.parse::<crate::api::Duration>()
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

/// The merge patch that requests a rotation with `value`.
pub fn rotation_patch(value: &str) -> serde_json::Value {
    serde_json::json!({"metadata": {"annotations": {ROTATE_ANNOTATION: value}}})
}

/// Whether the status shows the rotation `value` done: the value acted on, and a current
/// credential other than `before`.
pub fn rotated(sa: &ServiceAccount, value: &str, before: Option<&str>) -> bool {
    let Some(st) = &sa.status else { return false };
    st.rotation_request.as_deref() == Some(value)
        && st
            .current_credential
            .as_ref()
            .is_some_and(|c| Some(c.id.as_str()) != before)
}

/// Runs `rotate`.
pub async fn run(g: &Global, a: RotateArgs) -> Result<()> {
    let (_, name) = parse_ref(&a.target, &[Kind::ServiceAccount])?;
    let kube = connect(g).await?;
    let ns = kube.namespace.clone();
    let api: Api<ServiceAccount> = Api::namespaced(kube.client.clone(), &ns);
    let res = Kind::ServiceAccount.resource();
    let sa = api
        .get(&name)
        .await
        .map_err(|e| api_error(e, "get", res, Some(&name), Some(&ns)))?;
    let auth = sa.spec.authentication.as_ref();
    if auth.is_none_or(|a| a.client_secret.is_none() && a.private_key_jwt.is_none()) {
        return Err(CliError::new(format!(
            "serviceaccount/{name} has no client secret or private key to rotate"
        ))
        .hint("a federated account's credential is its issuer's JWT; rotate it at the issuer"));
    }
    let before = sa
        .status
        .as_ref()
        .and_then(|s| s.current_credential.as_ref())
        .map(|c| c.id.clone());
    // RFC 3339 with nanoseconds: a new value every time, and it says when it was asked for.
    let value = k8s_openapi::jiff::Timestamp::now().to_string();
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(rotation_patch(&value)),
    )
    .await
    .map_err(|e| api_error(e, "patch", res, Some(&name), Some(&ns)))?;
    println!("serviceaccount/{name} rotation requested ({ROTATE_ANNOTATION}={value})");
    if !a.wait {
        println!(
            "the controller writes the new credential into the Secret; the old one works for the \
             grace period (`kubectl s2s status serviceaccount/{name} -n {ns}`)"
        );
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + a.timeout;
    loop {
        let sa = api
            .get(&name)
            .await
            .map_err(|e| api_error(e, "get", res, Some(&name), Some(&ns)))?;
        if rotated(&sa, &value, before.as_deref()) {
            let st = sa.status.unwrap_or_default();
            let now = now_unix(SystemTime::now());
            let current = st.current_credential.map(|c| c.id).unwrap_or_default();
            println!("new credential {current} is in the Secret");
            for v in st.credentials.iter().filter(|v| v.id != current) {
                if let Some(t) = &v.not_after {
                    println!(
                        "previous credential {} keeps working until {}",
                        v.id,
                        when(unix(t), now)
                    );
                }
            }
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::new(format!(
                "serviceaccount/{name}: no new credential within {:?}",
                a.timeout
            ))
            .hint(format!(
                "the request stands; is the controller running? `kubectl s2s status \
                 serviceaccount/{name} -n {ns}` and `kubectl s2s check`"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_sets_only_the_annotation() {
        assert_eq!(
            rotation_patch("x"),
            serde_json::json!({"metadata": {"annotations": {"s2s.dev/rotate": "x"}}})
        );
    }

    #[test]
    fn rotated_needs_our_value_and_a_new_credential() {
        let sa = |req: &str, id: &str| -> ServiceAccount {
            serde_yaml::from_str(&format!(
                r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {{name: a, namespace: n}}
spec: {{authentication: {{clientSecret: {{secretName: s}}}}}}
status:
  rotationRequest: "{req}"
  currentCredential: {{id: {id}, type: ClientSecret, created: "2026-01-01T00:00:00Z"}}
"#
            ))
            .unwrap()
        };
        assert!(rotated(&sa("v2", "c2"), "v2", Some("c1")));
        assert!(!rotated(&sa("v1", "c2"), "v2", Some("c1")));
        assert!(!rotated(&sa("v2", "c1"), "v2", Some("c1")));
    }
}
