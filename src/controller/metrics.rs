//! Controller metrics and its health endpoints. Labels are bounded: kind, outcome, error
//! category; never an object's name.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
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
}

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
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).expect("registers once");
        }
        Self {
            registry,
            reconciles,
            failures,
            duration,
            leader,
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
