//! Controller metrics and its health endpoints. Labels are bounded: kind, outcome, error
//! category; never an object's name — except the gauges of materialized tokens, one series per
//! token (as cert-manager's `certificate_expiration_timestamp_seconds`), whose number is the
//! number of AccessTokens and TokenGrant outputs, and which are read from the controller's
//! stores at scrape time, so a deleted object leaves no stale series.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::api::{AccessToken, AccessTokenStatus, TokenGrant};
use tokio::sync::watch;

use crate::k8s::Error;

/// The controller's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    /// 1 while this replica leads.
    pub leader: IntGauge,
    token_expiry: GaugeVec,
    token_renewal: GaugeVec,
    /// Where the token gauges are read from: set by the leader.
    token_sources: Mutex<Option<TokenSources>>,
}

/// The stores of the objects that materialize tokens.
type TokenSources = (Store<TokenGrant>, Store<AccessToken>);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("s2s_reconcile_total", "Reconciles by kind and outcome"),
            &["kind", "outcome"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "s2s_reconcile_errors_total",
                "Failed reconciles by kind and error category",
            ),
            &["kind", "category"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new("s2s_reconcile_duration_seconds", "Time per reconcile").buckets(
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0],
            ),
            &["kind"],
        )
        .expect("valid metric");
        let leader = IntGauge::new("s2s_leader", "1 while this replica holds the Lease")
            .expect("valid metric");
        let labels = ["kind", "namespace", "name", "secret"];
        let token_expiry = GaugeVec::new(
            Opts::new(
                "s2s_token_expiration_timestamp_seconds",
                "When the token in each AccessToken or TokenGrant output Secret expires (Unix seconds)",
            ),
            &labels,
        )
        .expect("valid metric");
        let token_renewal = GaugeVec::new(
            Opts::new(
                "s2s_token_renewal_timestamp_seconds",
                "When the token in each AccessToken or TokenGrant output Secret is renewed (Unix seconds)",
            ),
            &labels,
        )
        .expect("valid metric");
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(leader.clone()),
            Box::new(token_expiry.clone()),
            Box::new(token_renewal.clone()),
        ] {
            registry.register(c).expect("registers once");
        }
        Self {
            registry,
            reconciles,
            failures,
            duration,
            leader,
            token_expiry,
            token_renewal,
            token_sources: Mutex::new(None),
        }
    }

    /// Reads the token gauges from these stores from now on (the leader's; a replica that
    /// stands by shows none).
    pub fn set_token_sources(&self, grants: Store<TokenGrant>, tokens: Store<AccessToken>) {
        *self.token_sources.lock().expect("not poisoned") = Some((grants, tokens));
    }

    /// Sets the token gauges from the stores: one series per object with a token in place.
    fn refresh_token_gauges(&self) {
        let sources = self.token_sources.lock().expect("not poisoned");
        self.token_expiry.reset();
        self.token_renewal.reset();
        let Some((grants, tokens)) = sources.as_ref() else {
            return;
        };
        let set =
            |kind: &str, ns: String, name: String, secret: &str, st: Option<&AccessTokenStatus>| {
                let Some(st) = st else { return };
                let labels = [kind, ns.as_str(), name.as_str(), secret];
                if let Some(t) = &st.not_after {
                    self.token_expiry
                        .with_label_values(&labels)
                        .set(t.0.as_second() as f64);
                }
                if let Some(t) = &st.renewal_time {
                    self.token_renewal
                        .with_label_values(&labels)
                        .set(t.0.as_second() as f64);
                }
            };
        for g in grants.state() {
            if let Some(out) = &g.spec.output {
                let (ns, name) = (g.namespace().unwrap_or_default(), g.name_any());
                set("TokenGrant", ns, name, &out.secret_name, g.status.as_ref());
            }
        }
        for t in tokens.state() {
            let (ns, name) = (t.namespace().unwrap_or_default(), t.name_any());
            set(
                "AccessToken",
                ns,
                name,
                &t.spec.secret_name,
                t.status.as_ref(),
            );
        }
    }

    /// Marks the start of a reconcile.
    pub fn reconcile_started(&self, _kind: &str) -> Instant {
        Instant::now()
    }

    /// Counts a finished reconcile.
    pub fn reconcile_finished(&self, kind: &str, started: Instant, error: Option<&Error>) {
        self.duration
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        let outcome = if error.is_some() { "error" } else { "ok" };
        self.reconciles.with_label_values(&[kind, outcome]).inc();
        if let Some(e) = error {
            self.failures.with_label_values(&[kind, e.category()]).inc();
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        self.refresh_token_gauges();
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("metrics encode");
        out
    }
}

/// `/healthz` (the process runs), `/readyz` (the election has run: leading or standing by),
/// `/metrics`.
pub fn health_router(metrics: Arc<Metrics>, election_ran: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State((_, ran)): State<(Arc<Metrics>, watch::Receiver<bool>)>| async move {
                if *ran.borrow() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State((m, _)): State<(Arc<Metrics>, watch::Receiver<bool>)>| async move {
                m.render()
            }),
        )
        .with_state((metrics, election_ran))
}
