//! Prometheus metrics of the token server. Labels are bounded: endpoint, grant type (known
//! values or `other`) and outcome (`ok` or an OAuth error code), never a client id or name.

use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// The token server's metrics, in a registry of their own.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    auth: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The registry `/metrics` renders (the webhook adds its metrics to it).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "s2s_http_requests_total",
                "Requests by endpoint, grant type and outcome",
            ),
            &["endpoint", "grant_type", "outcome"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "s2s_http_request_duration_seconds",
                "Time to answer, by endpoint",
            )
            .buckets(vec![
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                1.0,
            ]),
            &["endpoint"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("registers once");
        registry
            .register(Box::new(latency.clone()))
            .expect("registers once");
        let auth = IntCounterVec::new(
            Opts::new(
                "s2s_auth_limiter_total",
                "Failed client authentications, lockouts, and attempts refused while locked (by client id or source address)",
            ),
            &["event"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(auth.clone()))
            .expect("registers once");
        Self {
            registry,
            requests,
            latency,
            auth,
        }
    }

    /// Counts one answered request and its latency.
    pub fn observe(&self, endpoint: &str, grant_type: &str, outcome: &str, start: Instant) {
        self.requests
            .with_label_values(&[endpoint, grant_type, outcome])
            .inc();
        self.latency
            .with_label_values(&[endpoint])
            .observe(start.elapsed().as_secs_f64());
    }

    /// A failed client authentication.
    pub fn auth_failed(&self) {
        self.auth.with_label_values(&["failure"]).inc();
    }

    /// A client locked out.
    pub fn auth_lockout(&self) {
        self.auth.with_label_values(&["lockout"]).inc();
    }

    /// An attempt refused before authentication.
    pub fn auth_refused(&self, why: super::Refusal) {
        let label = match why {
            super::Refusal::Client => "refused_client_locked",
            super::Refusal::Source => "refused_source_over_budget",
        };
        self.auth.with_label_values(&[label]).inc();
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

/// A bounded label for a `grant_type` value.
pub fn grant_type_label(grant_type: Option<&str>) -> &'static str {
    match grant_type {
        Some("client_credentials") => "client_credentials",
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => "jwt_bearer",
        Some("urn:ietf:params:oauth:grant-type:token-exchange") => "token_exchange",
        None => "none",
        Some(_) => "other",
    }
}
