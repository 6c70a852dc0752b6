//! `kubectl s2s check`: is the installation healthy, and if not, what to do.
//!
//! * the CRDs are installed at `v1alpha1` and equal what this binary's crate generates;
//! * the controller's leader Lease is held and fresh;
//! * the token server is ready and publishes the current signing key (from the signing keys
//!   Secret's index, when the caller may read it);
//! * every TrustedIssuer is Ready with keys;
//! * the injection webhook, when installed, has a CA bundle and an existing Service.
//!
//! Each check is a pure function of what was fetched ([`crd_check`], [`lease_check`],
//! [`keys_check`], [`issuer_checks`], [`webhook_check`]); the command exits 1 when any fails.

use std::time::SystemTime;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde::Serialize;

use super::conn::{Kube, TokenServer, api_code, connect, release};
use super::format::{now_unix, relative};
use super::{CliError, Global, Output, Result, print_structured};
use crate::api::TrustedIssuer;
use crate::signing_keys::{INDEX_KEY, KeyRecord, SECRET_NAME};

/// The webhook's name inside the MutatingWebhookConfiguration `<release>-inject`.
pub const WEBHOOK_NAME: &str = "inject.s2s.dev";

/// `kubectl s2s check`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  kubectl s2s check\n  \
    kubectl s2s check --operator-namespace s2s-system --release s2s-operator -o json\n\n\
    Exits 1 when a check fails.")]
pub struct CheckArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Fine.
    Ok,
    /// Could not be checked fully, or worth a look.
    Warn,
    /// Broken.
    Fail,
}

/// One check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Outcome.
    pub outcome: Outcome,
    /// What was found.
    pub message: String,
    /// What to do (unless fine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn ok(name: &str, message: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        outcome: Outcome::Ok,
        message: message.into(),
        fix: None,
    }
}

fn bad(outcome: Outcome, name: &str, message: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        outcome,
        message: message.into(),
        fix: Some(fix.into()),
    }
}

/// The spec as compared: without what the API server fills in.
fn comparable(spec: &serde_json::Value, kind: &str) -> serde_json::Value {
    let mut s = spec.clone();
    if let Some(o) = s.as_object_mut() {
        o.remove("conversion");
    }
    if s["names"].get("listKind").is_none() {
        s["names"]["listKind"] = serde_json::json!(format!("{kind}List"));
    }
    s
}

/// One CRD as stored against the one this crate generates.
pub fn crd_check(
    stored: Option<&CustomResourceDefinition>,
    want: &CustomResourceDefinition,
) -> Check {
    let name = want.name_any();
    let label = format!("CRD {name}");
    let fix = "install this version's CRDs: `kubectl apply --server-side -f crds/` from the \
               matching release (or `helm upgrade`), or use the plugin of the installed version";
    let Some(stored) = stored else {
        return bad(Outcome::Fail, &label, "not installed", fix);
    };
    let served = stored
        .spec
        .versions
        .iter()
        .find(|v| v.name == crate::api::VERSION);
    match served {
        None => {
            return bad(
                Outcome::Fail,
                &label,
                format!("does not have version {}", crate::api::VERSION),
                fix,
            );
        }
        Some(v) if !v.served || !v.storage => {
            return bad(
                Outcome::Fail,
                &label,
                format!("{} is not served and stored", crate::api::VERSION),
                fix,
            );
        }
        Some(_) => {}
    }
    let kind = &want.spec.names.kind;
    let got = comparable(
        &serde_json::to_value(&stored.spec).unwrap_or_default(),
        kind,
    );
    let exp = comparable(&serde_json::to_value(&want.spec).unwrap_or_default(), kind);
    if got == exp {
        ok(
            &label,
            format!(
                "{} installed, as this version generates it",
                crate::api::VERSION
            ),
        )
    } else {
        bad(
            Outcome::Fail,
            &label,
            format!(
                "{} installed, but its schema differs from kubectl-s2s {}'s",
                crate::api::VERSION,
                env!("CARGO_PKG_VERSION")
            ),
            fix,
        )
    }
}

/// The leader Lease at `now`.
pub fn lease_check(lease: Option<&Lease>, ns: &str, release: &str, now: i64) -> Check {
    let label = "controller leader";
    let fix = format!(
        "is the controller running? `kubectl -n {ns} get pods` and its logs \
         (`kubectl -n {ns} logs deploy/{release}-controller`)"
    );
    let name = crate::controller::LEASE_NAME;
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return bad(
            Outcome::Fail,
            label,
            format!("no Lease {name} in {ns}: no controller has ever led here"),
            fix,
        );
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let renewed = spec.renew_time.as_ref().map(|t| t.0.as_second());
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    match renewed {
        _ if holder.is_empty() => bad(
            Outcome::Fail,
            label,
            format!("Lease {name} is held by nobody"),
            fix,
        ),
        Some(r) if r + duration >= now => ok(
            label,
            format!("held by {holder}, renewed {}", relative(r, now)),
        ),
        Some(r) => bad(
            Outcome::Fail,
            label,
            format!(
                "Lease {name} held by {holder} went stale: renewed {} (duration {duration}s)",
                relative(r, now)
            ),
            fix,
        ),
        None => bad(
            Outcome::Fail,
            label,
            format!("Lease {name} held by {holder} was never renewed"),
            fix,
        ),
    }
}

/// The signing key that signs at `now` (the newest active one).
pub fn signer(records: &[KeyRecord], now: u64) -> Option<&KeyRecord> {
    records
        .iter()
        .filter(|r| r.activates_at <= now)
        .max_by_key(|r| r.activates_at)
}

/// The signing keys (from the Secret's index, if read) against the JWKS the server publishes.
pub fn keys_check(records: Option<&[KeyRecord]>, published: &[String], now: u64) -> Check {
    let label = "signing keys";
    let fix = "the controller publishes keys (check the controller leader above); the token \
               server reloads them from the Secret";
    if published.is_empty() {
        return bad(
            Outcome::Fail,
            label,
            "the token server publishes no key",
            fix,
        );
    }
    let Some(records) = records else {
        return ok(
            label,
            format!(
                "{} published ({}); the signing keys Secret was not read",
                published.len(),
                published.join(", ")
            ),
        );
    };
    match signer(records, now) {
        None => bad(
            Outcome::Fail,
            label,
            format!("{SECRET_NAME} holds no active key"),
            fix,
        ),
        Some(s) if !published.contains(&s.kid) => bad(
            Outcome::Fail,
            label,
            format!(
                "the current signing key {} is not in the token server's JWKS: tokens it signs \
                 cannot be verified",
                s.kid
            ),
            "restart the token server so it reloads the signing keys Secret",
        ),
        Some(s) => ok(
            label,
            format!(
                "current key {} ({:?}) is published; {} key(s) in the JWKS",
                s.kid,
                s.alg,
                published.len()
            ),
        ),
    }
}

/// Every TrustedIssuer's key state.
pub fn issuer_checks(issuers: &[TrustedIssuer]) -> Vec<Check> {
    if issuers.is_empty() {
        return vec![ok("trusted issuers", "none defined")];
    }
    issuers
        .iter()
        .map(|ti| {
            let ns = ti.namespace().unwrap_or_default();
            let label = format!("trustedissuer {ns}/{}", ti.name_any());
            let st = ti.status.clone().unwrap_or_default();
            let fix = format!(
                "`kubectl s2s status trustedissuer/{} -n {ns}`",
                ti.name_any()
            );
            let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
            let keys = st.key_count.unwrap_or(0);
            match ready {
                None => bad(Outcome::Fail, &label, "not reconciled yet", fix),
                Some(c) if c.status != crate::api::conditions::ConditionStatus::True => bad(
                    Outcome::Fail,
                    &label,
                    format!("not Ready ({}): {}", c.reason, c.message),
                    fix,
                ),
                Some(_) if keys == 0 => bad(Outcome::Fail, &label, "Ready but holds no key", fix),
                Some(_) => match &st.last_error {
                    Some(e) => bad(
                        Outcome::Warn,
                        &label,
                        format!("{keys} key(s), but the last fetch failed: {e}"),
                        fix,
                    ),
                    None => ok(&label, format!("Ready, {keys} key(s)")),
                },
            }
        })
        .collect()
}

/// The injection webhook: absent (injection off), or with a CA bundle and a Service.
/// `service_exists` is whether the Service it names exists (`None`: not looked up).
pub fn webhook_check(
    mwc: Option<&MutatingWebhookConfiguration>,
    name: &str,
    service_exists: Option<bool>,
) -> Check {
    let label = "injection webhook";
    let Some(mwc) = mwc else {
        return ok(
            label,
            format!("injection off (no MutatingWebhookConfiguration {name})"),
        );
    };
    let Some(hook) = mwc
        .webhooks
        .as_ref()
        .and_then(|w| w.iter().find(|h| h.name == WEBHOOK_NAME))
    else {
        return bad(
            Outcome::Fail,
            label,
            format!("{name} has no webhook {WEBHOOK_NAME}"),
            "reinstall the chart with injection enabled, or delete the configuration",
        );
    };
    let ca = hook
        .client_config
        .ca_bundle
        .as_ref()
        .is_some_and(|b| !b.0.is_empty());
    if !ca {
        return bad(
            Outcome::Fail,
            label,
            format!(
                "{name}: the caBundle of {WEBHOOK_NAME} is empty, so the API server cannot call it"
            ),
            "the controller fills it in once it has issued the webhook's certificate: check the \
             controller leader above and its logs",
        );
    }
    match (&hook.client_config.service, service_exists) {
        (Some(s), Some(false)) => bad(
            Outcome::Fail,
            label,
            format!(
                "{name} calls Service {}/{}, which does not exist: Pods it matches cannot be created",
                s.namespace, s.name
            ),
            "reinstall the chart, or delete the MutatingWebhookConfiguration to turn injection off",
        ),
        (Some(s), _) => ok(
            label,
            format!("{name}: caBundle set, Service {}/{}", s.namespace, s.name),
        ),
        (None, _) => ok(
            label,
            format!(
                "{name}: caBundle set, URL {}",
                hook.client_config.url.clone().unwrap_or_default()
            ),
        ),
    }
}

/// Checks as text.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let tag = match c.outcome {
            Outcome::Ok => "[ok]  ",
            Outcome::Warn => "[warn]",
            Outcome::Fail => "[FAIL]",
        };
        out.push_str(&format!("{tag} {}: {}\n", c.name, c.message));
        if let Some(f) = &c.fix {
            out.push_str(&format!("       fix: {f}\n"));
        }
    }
    let fails = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    let warns = checks.iter().filter(|c| c.outcome == Outcome::Warn).count();
    out.push_str(&match (fails, warns) {
        (0, 0) => "\nAll checks passed.\n".to_owned(),
        (0, w) => format!("\nNo check failed; {w} need a look (see [warn]).\n"),
        (f, _) => format!("\n{f} check(s) failed.\n"),
    });
    out
}

fn forbidden(name: &str, what: &str) -> Check {
    bad(
        Outcome::Warn,
        name,
        format!("not checked: you may not {what}"),
        "run `kubectl s2s check` as a cluster admin",
    )
}

async fn gather(kube: &Kube, g: &Global) -> Vec<Check> {
    let mut checks = vec![];
    let now = now_unix(SystemTime::now());
    let ns = &g.operator_namespace;
    let release = release(kube, g).await;

    let crds: Api<CustomResourceDefinition> = Api::all(kube.client.clone());
    for want in crate::api::crds() {
        let name = want.name_any();
        match crds.get_opt(&name).await {
            Ok(stored) => checks.push(crd_check(stored.as_ref(), &want)),
            Err(e) if api_code(&e) == Some(403) => checks.push(forbidden(
                &format!("CRD {name}"),
                "get customresourcedefinitions",
            )),
            Err(e) => checks.push(bad(
                Outcome::Fail,
                &format!("CRD {name}"),
                e.to_string(),
                "is the cluster reachable?",
            )),
        }
    }

    let leases: Api<Lease> = Api::namespaced(kube.client.clone(), ns);
    match leases.get_opt(crate::controller::LEASE_NAME).await {
        Ok(l) => checks.push(lease_check(l.as_ref(), ns, &release, now)),
        Err(e) if api_code(&e) == Some(403) => checks.push(forbidden(
            "controller leader",
            &format!("get leases in {ns}"),
        )),
        Err(e) => checks.push(bad(
            Outcome::Fail,
            "controller leader",
            e.to_string(),
            "is the cluster reachable?",
        )),
    }

    match TokenServer::locate(kube, g).await {
        Err(e) => checks.push(bad(
            Outcome::Fail,
            "token server",
            e.message,
            e.hint.unwrap_or_default(),
        )),
        Ok(server) => {
            match server.get("/readyz").await {
                Ok(a) if a.status == 200 => checks.push(ok(
                    "token server",
                    format!("{} is ready", server.describe()),
                )),
                Ok(a) => checks.push(bad(
                    Outcome::Fail,
                    "token server",
                    format!("{} is not ready (HTTP {})", server.describe(), a.status),
                    format!(
                        "its logs say why: `kubectl -n {ns} logs deploy/{}-token-server`",
                        release
                    ),
                )),
                Err(e) => checks.push(bad(
                    Outcome::Fail,
                    "token server",
                    e.message,
                    e.hint.unwrap_or_default(),
                )),
            }
            let published: Vec<String> = match super::inspect::fetch_keys(&server).await {
                Ok((keys, _)) => keys.into_iter().filter_map(|k| k.kid).collect(),
                Err(_) => vec![],
            };
            let secrets: Api<Secret> = Api::namespaced(kube.client.clone(), ns);
            let records = match secrets.get_opt(SECRET_NAME).await {
                Ok(Some(s)) => s
                    .data
                    .as_ref()
                    .and_then(|d| d.get(INDEX_KEY))
                    .and_then(|v| serde_json::from_slice::<Vec<KeyRecord>>(&v.0).ok()),
                Ok(None) => Some(vec![]),
                Err(_) => None,
            };
            checks.push(keys_check(records.as_deref(), &published, now as u64));
        }
    }

    let all: Api<TrustedIssuer> = Api::all(kube.client.clone());
    match all.list(&ListParams::default()).await {
        Ok(l) => checks.extend(issuer_checks(&l.items)),
        Err(e) if api_code(&e) == Some(403) => checks.push(forbidden(
            "trusted issuers",
            "list trustedissuers.s2s.dev in every namespace",
        )),
        Err(e) => checks.push(bad(
            Outcome::Fail,
            "trusted issuers",
            e.to_string(),
            "are the CRDs installed?",
        )),
    }

    let name = format!("{release}-inject");
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(kube.client.clone());
    match mwcs.get_opt(&name).await {
        Ok(m) => {
            let svc = m
                .as_ref()
                .and_then(|m| m.webhooks.as_ref())
                .and_then(|w| w.iter().find(|h| h.name == WEBHOOK_NAME))
                .and_then(|h| h.client_config.service.clone());
            let exists = match svc {
                Some(s) => {
                    let api: Api<Service> = Api::namespaced(kube.client.clone(), &s.namespace);
                    api.get_opt(&s.name).await.ok().map(|o| o.is_some())
                }
                None => None,
            };
            checks.push(webhook_check(m.as_ref(), &name, exists));
        }
        Err(e) if api_code(&e) == Some(403) => checks.push(forbidden(
            "injection webhook",
            "get mutatingwebhookconfigurations",
        )),
        Err(e) => checks.push(bad(
            Outcome::Fail,
            "injection webhook",
            e.to_string(),
            "is the cluster reachable?",
        )),
    }
    checks
}

/// Runs `check`.
pub async fn run(g: &Global, a: CheckArgs) -> Result<()> {
    let kube = connect(g).await?;
    let checks = gather(&kube, g).await;
    match a.output {
        Output::Text => print!("{}", render(&checks)),
        o => print_structured(&checks, o)?,
    }
    let fails = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    if fails == 0 {
        Ok(())
    } else {
        Err(CliError::new(format!("{fails} check(s) failed")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn the_crds_this_crate_generates_pass_and_a_missing_or_changed_one_fails() {
        for want in crate::api::crds() {
            assert_eq!(crd_check(Some(&want), &want).outcome, Outcome::Ok);
            let c = crd_check(None, &want);
            assert_eq!(c.outcome, Outcome::Fail);
            assert!(c.fix.unwrap().contains("crds/"));
            let mut changed = want.clone();
            changed.spec.versions[0].schema = None;
            assert!(crd_check(Some(&changed), &want).message.contains("differs"));
            let mut unserved = want.clone();
            unserved.spec.versions[0].served = false;
            assert_eq!(crd_check(Some(&unserved), &want).outcome, Outcome::Fail);
        }
    }

    fn lease(holder: &str, renewed: i64) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "l"},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": 15,
                "renewTime": k8s_openapi::jiff::Timestamp::from_second(renewed).unwrap().strftime("%Y-%m-%dT%H:%M:%S.000000Z").to_string(),
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_fresh_lease_passes_a_stale_or_missing_one_fails() {
        assert_eq!(
            lease_check(Some(&lease("pod-1", NOW - 3)), "s", "r", NOW).outcome,
            Outcome::Ok
        );
        let stale = lease_check(Some(&lease("pod-1", NOW - 60)), "s", "r", NOW);
        assert_eq!(stale.outcome, Outcome::Fail);
        assert!(stale.message.contains("stale"), "{}", stale.message);
        assert_eq!(
            lease_check(Some(&lease("", NOW)), "s", "r", NOW).outcome,
            Outcome::Fail
        );
        assert_eq!(lease_check(None, "s", "r", NOW).outcome, Outcome::Fail);
    }

    fn record(kid: &str, activates_at: u64) -> KeyRecord {
        serde_json::from_value(serde_json::json!({
            "kid": kid, "alg": "ES256", "created": activates_at, "activatesAt": activates_at
        }))
        .unwrap()
    }

    #[test]
    fn the_current_signing_key_must_be_published() {
        let now = NOW as u64;
        let recs = [
            record("old", now - 100),
            record("cur", now - 10),
            record("next", now + 100),
        ];
        assert_eq!(
            keys_check(Some(&recs), &["cur".into(), "next".into()], now).outcome,
            Outcome::Ok
        );
        let c = keys_check(Some(&recs), &["old".into()], now);
        assert!(c.message.contains("cur"), "{}", c.message);
        assert_eq!(c.outcome, Outcome::Fail);
        assert_eq!(keys_check(None, &["k".into()], now).outcome, Outcome::Ok);
        assert_eq!(keys_check(None, &[], now).outcome, Outcome::Fail);
    }

    #[test]
    fn issuers_without_keys_or_not_ready_fail() {
        let ti = |status: &str| -> TrustedIssuer {
            serde_yaml::from_str(&format!(
                "apiVersion: s2s.dev/v1alpha1\nkind: TrustedIssuer\nmetadata: {{name: i, namespace: n}}\n\
                 spec: {{kubernetes: {{}}, audiences: [a]}}\nstatus: {status}\n"
            ))
            .unwrap()
        };
        let ready = "{keyCount: 2, conditions: [{type: Ready, status: \"True\", reason: Ready, lastTransitionTime: \"2026-01-01T00:00:00Z\"}]}";
        let failing = "{keyCount: 0, conditions: [{type: Ready, status: \"False\", reason: FetchFailed, message: boom, lastTransitionTime: \"2026-01-01T00:00:00Z\"}]}";
        let c = issuer_checks(&[ti(ready), ti(failing)]);
        assert_eq!(c[0].outcome, Outcome::Ok);
        assert_eq!(c[1].outcome, Outcome::Fail);
        assert!(c[1].message.contains("FetchFailed"));
        assert_eq!(issuer_checks(&[])[0].outcome, Outcome::Ok);
    }

    #[test]
    fn the_webhook_needs_a_ca_bundle_and_its_service() {
        assert!(
            webhook_check(None, "s2s-operator-inject", None)
                .message
                .contains("injection off")
        );
        let mwc = |ca: &str| -> MutatingWebhookConfiguration {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "s2s-operator-inject"},
                "webhooks": [{
                    "name": WEBHOOK_NAME, "admissionReviewVersions": ["v1"], "sideEffects": "None",
                    "clientConfig": {"caBundle": ca, "service": {"namespace": "s2s-system", "name": "s2s-operator-webhook"}}
                }]
            }))
            .unwrap()
        };
        let empty = webhook_check(Some(&mwc("")), "s2s-operator-inject", Some(true));
        assert_eq!(empty.outcome, Outcome::Fail);
        assert!(empty.message.contains("caBundle"));
        let gone = webhook_check(Some(&mwc("Y2E=")), "s2s-operator-inject", Some(false));
        assert_eq!(gone.outcome, Outcome::Fail);
        assert_eq!(
            webhook_check(Some(&mwc("Y2E=")), "s2s-operator-inject", Some(true)).outcome,
            Outcome::Ok
        );
        let text = render(&[empty]);
        assert!(
            text.contains("[FAIL]") && text.contains("fix:") && text.contains("1 check(s) failed")
        );
    }
}
