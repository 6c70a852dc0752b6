//! The agent's Prometheus metrics. Labels are outcomes only: never a client id, an audience
//! or a scope (the application chooses those, so their number is unbounded).

use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};

/// Counters served on `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests to the token endpoint by outcome: `success`, `refused`, `server_error`,
    /// `unreachable`, `credentials_error`.
    pub upstream: IntCounterVec,
    /// Token requests by `hit` (served from the cache) or `miss` (went upstream).
    pub cache: IntCounterVec,
    /// Token files written by outcome: `success`, `error`.
    pub file_writes: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh counters in their own registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registers once");
            c
        };
        let upstream = counter(
            "s2s_agent_upstream_requests_total",
            "Requests to the token endpoint, by outcome.",
            "outcome",
        );
        let cache = counter(
            "s2s_agent_token_requests_total",
            "Token requests of the application, by cache result (hit or miss).",
            "cache",
        );
        let file_writes = counter(
            "s2s_agent_token_file_writes_total",
            "Token files written, by outcome.",
            "outcome",
        );
        Metrics {
            registry,
            upstream,
            cache,
            file_writes,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding never fails");
        String::from_utf8(out).expect("UTF-8")
    }
}
