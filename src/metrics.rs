//! The Prometheus registry and the series owned by the server assembly (HTTP and auth).
//! Signaling and media register their own series on the same registry.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub auth_failures: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "callrelay_http_requests_total",
                "HTTP requests by matched route and status code",
            ),
            &["route", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "callrelay_http_request_duration_seconds",
                "HTTP request handling time by matched route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["route"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "callrelay_auth_failures_total",
                "Refused tokens (HTTP and Socket.IO) by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        Ok(Self {
            registry,
            http_requests,
            http_duration,
            auth_failures,
        })
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(err) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %err, "could not encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
