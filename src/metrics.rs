//! The Prometheus registry and the series owned by the server assembly (HTTP and auth).
//! Signaling and media register their own series on the same registry.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub auth_failures: IntCounterVec,
    /// `callrelay_database_up`: 1 when the database answered the last check (`/readyz`, and a
    /// ping every [`crate::server::DATABASE_CHECK_INTERVAL`]), 0 when it did not.
    pub database_up: IntGauge,
    /// `callrelay_draining`: 1 from the first SIGTERM/SIGINT on (the server drains), else 0.
    pub draining: IntGauge,
    /// `callrelay_admin_actions_total{action}`: admin API actions carried out.
    pub admin_actions: IntCounterVec,
    /// `callrelay_cluster_nodes`: live nodes in the cluster registry at the last heartbeat (1 on
    /// a single node).
    pub cluster_nodes: IntGauge,
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
        let database_up = IntGauge::new(
            "callrelay_database_up",
            "1 when the database answered the last readiness check, else 0",
        )?;
        registry.register(Box::new(database_up.clone()))?;
        let draining = IntGauge::new(
            "callrelay_draining",
            "1 while the server drains (after the first SIGTERM/SIGINT: no new rooms or calls, \
             /readyz 503), else 0",
        )?;
        registry.register(Box::new(draining.clone()))?;
        let admin_actions = IntCounterVec::new(
            Opts::new(
                "callrelay_admin_actions_total",
                "Admin API actions carried out (each is also in the audit trail), by action",
            ),
            &["action"],
        )?;
        registry.register(Box::new(admin_actions.clone()))?;
        for action in crate::http::ADMIN_ACTIONS {
            admin_actions.with_label_values(&[action]);
        }
        let cluster_nodes = IntGauge::new(
            "callrelay_cluster_nodes",
            "Live nodes in the cluster registry at this node's last heartbeat (1 on a single node)",
        )?;
        cluster_nodes.set(1);
        registry.register(Box::new(cluster_nodes.clone()))?;
        // Every refusal reason exists at zero from the start (alerts use rate()).
        for failure in callrelay_signaling::AuthFailure::ALL {
            auth_failures.with_label_values(&[failure.label()]);
        }
        Ok(Self {
            registry,
            http_requests,
            http_duration,
            auth_failures,
            database_up,
            draining,
            admin_actions,
            cluster_nodes,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Dashboards and alerts use `rate()`/`increase()`, which see nothing of a series that does
    /// not exist yet: every label value known in advance is on /metrics at zero from the start.
    #[tokio::test]
    async fn known_label_values_are_exported_at_zero_before_any_event() {
        let metrics = Metrics::new().unwrap();
        callrelay_signaling::SignalingMetrics::register(&metrics.registry).unwrap();
        let media = callrelay_media::MediaConfig {
            bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Default::default()
        };
        let _sfu = callrelay_media::Sfu::start(media, &metrics.registry)
            .await
            .unwrap();
        let text = metrics.render();
        for series in [
            r#"callrelay_auth_failures_total{reason="expired"} 0"#,
            r#"callrelay_auth_failures_total{reason="bad_signature"} 0"#,
            r#"callrelay_calls_total{call_type="video",outcome="missed"} 0"#,
            r#"callrelay_calls_total{call_type="audio",outcome="busy"} 0"#,
            r#"callrelay_relay_activations_total{reason="p2p-failed"} 0"#,
            r#"callrelay_relay_activations_total{reason="room-size"} 0"#,
            r#"callrelay_signaling_events_total{event="chat-message",outcome="ok"} 0"#,
            r#"callrelay_signaling_events_total{event="sfu-publish",outcome="invalid_payload"} 0"#,
            r#"callrelay_signaling_events_total{event="unknown",outcome="not_found"} 0"#,
            r#"callrelay_media_datagrams_dropped_total{reason="stun_unauthenticated"} 0"#,
            r#"callrelay_media_datagrams_dropped_total{reason="rejected_srtp"} 0"#,
            r#"callrelay_rtcp_nack_total{direction="in"} 0"#,
            r#"callrelay_rtp_retransmissions_total{kind="video"} 0"#,
            r#"callrelay_rtp_retransmissions_suppressed_total{reason="budget"} 0"#,
            r#"callrelay_rtp_bytes_received_total{kind="audio"} 0"#,
            r#"callrelay_sfu_connections_total{outcome="connected",pc="publish",transport="udp"} 0"#,
            r#"callrelay_sfu_connections_total{outcome="timed_out",pc="subscribe",transport="udp"} 0"#,
            r#"callrelay_sfu_connections_total{outcome="failed",pc="subscribe",transport="udp"} 0"#,
            "callrelay_database_up 0",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }
}
