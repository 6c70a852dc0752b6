//! `kubectl s2s rotate serviceaccount/NAME [--wait]`: a new secret or key now.
//!
//! The controller rotates on every new value of the `s2s.dev/rotate` annotation and records
//! the value it acted on in `status.rotationRequest`; the old credential keeps working for
//! the grace period. `--wait` returns once the status names our value and a new current
//! credential *and* the Secret holds it: on rotation the controller writes the status first
//! (token servers must accept the new credential before a workload can read it), the Secret
//! about a second later.
//!
//! `kubectl s2s rotate accesstoken/NAME [--wait]` sets the same annotation on an AccessToken:
//! the controller renews its token at once and records the value in `status.rotationRequest`.
//! There the controller writes the Secret first and the status after it, so `--wait` returns
//! once the status names our value and a token other than the one before.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::conn::{Kind, api_code, api_error, connect, parse_ref};
use super::format::{now_unix, unix, when};
use super::{CliError, Global, Result};
use crate::api::service_account::CredentialType;
use crate::api::{AccessToken, ServiceAccount};
use crate::service_account::ROTATE_ANNOTATION;
use crate::service_account::secret::keys;

/// `kubectl s2s rotate`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  kubectl s2s rotate serviceaccount/billing-worker -n billing --wait\n  \
                  kubectl s2s rotate accesstoken/orders-token -n billing --wait"
)]
pub struct RotateArgs {
    /// `serviceaccount/NAME` (a new credential) or `accesstoken/NAME` (a new token).
    pub target: String,
    /// Return only once the new credential (or token) is in the Secret.
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

/// Whether the status shows the renewal `value` done: the value acted on, and a token other
/// than `before`.
pub fn renewed(t: &AccessToken, value: &str, before: Option<&str>) -> bool {
    let Some(st) = &t.status else { return false };
    st.rotation_request.as_deref() == Some(value)
        && st.token_id.is_some()
        && st.token_id.as_deref() != before
}

/// The Secret that holds the account's current credential.
pub fn current_secret_name(sa: &ServiceAccount) -> Option<String> {
    let cur = sa.status.as_ref()?.current_credential.as_ref()?;
    let auth = sa.spec.authentication.as_ref()?;
    match cur.type_ {
        CredentialType::ClientSecret => auth.client_secret.as_ref().map(|c| c.secret_name.clone()),
        CredentialType::PrivateKey => auth.private_key_jwt.as_ref().map(|k| k.secret_name.clone()),
    }
}

/// Whether Secret `data` holds the status's current credential: the secret whose digest the
/// status records, or the key with the current id. Compares, never prints.
pub fn secret_holds_current(sa: &ServiceAccount, data: &BTreeMap<String, String>) -> bool {
    let Some(st) = &sa.status else { return false };
    let Some(cur) = &st.current_credential else {
        return false;
    };
    match cur.type_ {
        CredentialType::ClientSecret => {
            let digest = st
                .credentials
                .iter()
                .find(|v| v.id == cur.id)
                .and_then(|v| v.secret_digest.as_deref());
            match (data.get(keys::CLIENT_SECRET), digest) {
                (Some(secret), Some(d)) => crate::crypto::verify_secret(secret.trim(), d),
                _ => false,
            }
        }
        CredentialType::PrivateKey => data.get(keys::KEY_ID).is_some_and(|k| k.trim() == cur.id),
    }
}

/// Runs `rotate`.
pub async fn run(g: &Global, a: RotateArgs) -> Result<()> {
    let (kind, name) = parse_ref(&a.target, &[Kind::ServiceAccount, Kind::AccessToken])?;
    if kind == Kind::AccessToken {
        return renew(g, a, &name).await;
    }
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
    let mut warned = false;
    loop {
        let sa = api
            .get(&name)
            .await
            .map_err(|e| api_error(e, "get", res, Some(&name), Some(&ns)))?;
        let mut done = rotated(&sa, &value, before.as_deref());
        if done && let Some(secret_name) = current_secret_name(&sa) {
            let secrets: Api<Secret> = Api::namespaced(kube.client.clone(), &ns);
            match secrets.get(&secret_name).await {
                Ok(secret) => {
                    let data: BTreeMap<String, String> = secret
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|(k, v)| String::from_utf8(v.0).ok().map(|v| (k, v)))
                        .collect();
                    done = secret_holds_current(&sa, &data);
                }
                Err(e) if api_code(&e) == Some(403) => {
                    // Without `get` on the Secret, the status is all we can see: allow the
                    // controller its settle time before it writes the Secret.
                    if !warned {
                        eprintln!(
                            "note: you may not get secrets/{secret_name} in {ns}, so --wait \
                             trusts the status and allows the controller a few seconds"
                        );
                        warned = true;
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                }
                Err(e) => {
                    return Err(api_error(
                        e,
                        "get",
                        "secrets",
                        Some(&secret_name),
                        Some(&ns),
                    ));
                }
            }
        }
        if done {
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

/// `rotate accesstoken/NAME`: a new token now.
async fn renew(g: &Global, a: RotateArgs, name: &str) -> Result<()> {
    let kube = connect(g).await?;
    let ns = kube.namespace.clone();
    let api: Api<AccessToken> = Api::namespaced(kube.client.clone(), &ns);
    let res = Kind::AccessToken.resource();
    let t = api
        .get(name)
        .await
        .map_err(|e| api_error(e, "get", res, Some(name), Some(&ns)))?;
    let before = t.status.as_ref().and_then(|s| s.token_id.clone());
    let value = k8s_openapi::jiff::Timestamp::now().to_string();
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(rotation_patch(&value)),
    )
    .await
    .map_err(|e| api_error(e, "patch", res, Some(name), Some(&ns)))?;
    println!("accesstoken/{name} renewal requested ({ROTATE_ANNOTATION}={value})");
    if !a.wait {
        println!(
            "the controller writes a new token into Secret {}; the old one stays valid until \
             it expires (`kubectl s2s status accesstoken/{name} -n {ns}`)",
            t.spec.secret_name
        );
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + a.timeout;
    loop {
        let t = api
            .get(name)
            .await
            .map_err(|e| api_error(e, "get", res, Some(name), Some(&ns)))?;
        if renewed(&t, &value, before.as_deref()) {
            let st = t.status.unwrap_or_default();
            let now = now_unix(SystemTime::now());
            println!(
                "new token {} (revision {}) is in Secret {}, valid until {}",
                st.token_id.unwrap_or_default(),
                st.revision.unwrap_or_default(),
                t.spec.secret_name,
                st.not_after
                    .as_ref()
                    .map(|x| when(unix(x), now))
                    .unwrap_or_default()
            );
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::new(format!(
                "accesstoken/{name}: no new token within {:?}",
                a.timeout
            ))
            .hint(format!(
                "the request stands; is it Ready, and is the controller running? `kubectl s2s \
                 status accesstoken/{name} -n {ns}` and `kubectl s2s check`"
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
    fn renewed_needs_our_value_and_a_new_token() {
        let t = |req: &str, id: &str| -> AccessToken {
            serde_yaml::from_str(&format!(
                r#"
apiVersion: s2s.dev/v1alpha1
kind: AccessToken
metadata: {{name: t, namespace: n}}
spec: {{serviceAccountName: a, audiences: [x], secretName: s}}
status: {{rotationRequest: "{req}", tokenId: "{id}"}}
"#
            ))
            .unwrap()
        };
        assert!(renewed(&t("v2", "j2"), "v2", Some("j1")));
        assert!(renewed(&t("v2", "j2"), "v2", None));
        assert!(!renewed(&t("v1", "j2"), "v2", Some("j1")));
        assert!(!renewed(&t("v2", "j1"), "v2", Some("j1")));
    }

    #[test]
    fn the_secret_must_hold_the_current_credential() {
        let secret = "s3cr3t-value";
        let sa: ServiceAccount = serde_yaml::from_str(&format!(
            r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {{name: a, namespace: n}}
spec: {{authentication: {{clientSecret: {{secretName: creds}}}}}}
status:
  currentCredential: {{id: c2, type: ClientSecret, created: "2026-01-01T00:00:00Z"}}
  credentials:
  - {{id: c2, type: ClientSecret, created: "2026-01-01T00:00:00Z", secretDigest: "{}"}}
"#,
            crate::crypto::secret_digest(secret)
        ))
        .unwrap();
        assert_eq!(current_secret_name(&sa).as_deref(), Some("creds"));
        let data = |s: &str| BTreeMap::from([("client_secret".to_owned(), s.to_owned())]);
        assert!(secret_holds_current(&sa, &data(secret)));
        assert!(!secret_holds_current(&sa, &data("the-old-one")));
        assert!(!secret_holds_current(&sa, &BTreeMap::new()));
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
