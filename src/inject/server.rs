//! The webhook's HTTP side: `POST /inject` takes an `admission.k8s.io/v1` AdmissionReview
//! and answers one, with the JSON patch of [`super::mutate`]. Accounts and issuers come from
//! the token server's reflector stores, so an admission makes no API call.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Bytes;
use kube::api::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::reflector::{ObjectRef, Store};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use super::{Config, Decision, INJECT, mutate};
use crate::api::{ServiceAccount, TrustedIssuer};

/// What the webhook reads.
pub struct Webhook {
    /// Every s2s.dev ServiceAccount.
    pub accounts: Store<ServiceAccount>,
    /// Every TrustedIssuer.
    pub issuers: Store<TrustedIssuer>,
    /// Image, token URL, defaults.
    pub config: Config,
    /// The token server's trust bundle as it is now.
    pub ca_bundle: tokio::sync::watch::Receiver<Option<String>>,
    metrics: Metrics,
}

struct Metrics {
    admissions: IntCounterVec,
    seconds: HistogramVec,
}

impl Webhook {
    /// A webhook over these stores; its metrics go into `registry`.
    pub fn new(
        accounts: Store<ServiceAccount>,
        issuers: Store<TrustedIssuer>,
        config: Config,
        ca_bundle: tokio::sync::watch::Receiver<Option<String>>,
        registry: &Registry,
    ) -> Self {
        let admissions = IntCounterVec::new(
            Opts::new(
                "s2s_webhook_admissions_total",
                "Pod admissions by the injection webhook, by outcome (injected, unchanged, denied, invalid).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "s2s_webhook_admission_duration_seconds",
                "Time to decide one admission, in the webhook.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
            ]),
            &["outcome"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(admissions.clone()));
        let _ = registry.register(Box::new(seconds.clone()));
        Webhook {
            accounts,
            issuers,
            config,
            ca_bundle,
            metrics: Metrics {
                admissions,
                seconds,
            },
        }
    }

    /// The answer to one request.
    pub fn review(
        &self,
        req: &AdmissionRequest<DynamicObject>,
    ) -> (AdmissionResponse, &'static str) {
        let resp = AdmissionResponse::from(req);
        if req.kind.kind != "Pod" || req.operation != Operation::Create {
            return (resp, "unchanged");
        }
        let Some(pod) = req
            .object
            .as_ref()
            .and_then(|o| serde_json::to_value(o).ok())
        else {
            return (resp, "unchanged");
        };
        let namespace = req
            .namespace
            .clone()
            .or_else(|| {
                pod.pointer("/metadata/namespace")?
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "default".into());
        let account = pod
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(INJECT))
            .and_then(|n| n.as_str())
            .and_then(|n| {
                self.accounts
                    .get(&ObjectRef::new(n.trim()).within(&namespace))
            });
        let issuers = self.issuers.state();
        let issuers: Vec<&TrustedIssuer> = issuers.iter().map(AsRef::as_ref).collect();
        let bundle = self.ca_bundle.borrow().clone();
        let with_bundle;
        let config = match bundle {
            Some(b) if self.config.ca_bundle.is_none() => {
                with_bundle = Config {
                    ca_bundle: Some(b),
                    ..self.config.clone()
                };
                &with_bundle
            }
            _ => &self.config,
        };
        match mutate(&pod, &namespace, account.as_deref(), &issuers, config) {
            Decision::Unchanged => (resp, "unchanged"),
            Decision::Deny(message) => {
                tracing::info!(%namespace, %message, "injection refused");
                (resp.deny(message), "denied")
            }
            Decision::Patch(ops, warnings) => {
                let patch =
                    serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(ops))
                        .map_err(|e| e.to_string())
                        .and_then(|p| resp.clone().with_patch(p).map_err(|e| e.to_string()));
                match patch {
                    Ok(mut r) => {
                        if !warnings.is_empty() {
                            r.warnings = Some(warnings);
                        }
                        (r, "injected")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot build the patch");
                        (
                            resp.deny(format!("s2s.dev injection failed: {e}")),
                            "invalid",
                        )
                    }
                }
            }
        }
    }
}

/// `POST /inject` and `GET /healthz`. Pods can be large: bodies up to 8 MiB.
pub fn router(webhook: Arc<Webhook>) -> Router {
    Router::new()
        .route("/inject", post(inject))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(8 << 20))
        .with_state(webhook)
}

async fn inject(State(w): State<Arc<Webhook>>, body: Bytes) -> Response {
    let started = Instant::now();
    let parsed = serde_json::from_slice::<AdmissionReview<DynamicObject>>(&body)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            TryInto::<AdmissionRequest<DynamicObject>>::try_into(r).map_err(|e| e.to_string())
        });
    let (resp, outcome) = match parsed {
        Ok(req) => w.review(&req),
        Err(e) => (
            AdmissionResponse::invalid(format!("not an AdmissionReview: {e}")),
            "invalid",
        ),
    };
    w.metrics.admissions.with_label_values(&[outcome]).inc();
    w.metrics
        .seconds
        .with_label_values(&[outcome])
        .observe(started.elapsed().as_secs_f64());
    let status = if outcome == "invalid" && resp.uid.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let body = serde_json::to_vec(&resp.into_review()).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
