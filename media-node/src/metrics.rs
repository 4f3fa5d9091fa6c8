//! Prometheus metrics of the media node. Labels never carry credentials or
//! caller numbers: only trunk ids, directions, results, codes and reasons.

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the SIP side exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Finished call attempts by direction, result and final SIP code.
    pub calls: IntCounterVec,
    /// Calls up right now by trunk and direction.
    pub active_calls: IntGaugeVec,
    /// Requests refused by reason (acl, not_found, busy, draining, ...).
    pub rejected: IntCounterVec,
    /// Requests dropped by the per-source rate limit.
    pub rate_limited: IntCounter,
    /// Messages dropped before processing, by reason.
    pub dropped: IntCounterVec,
    /// 1 when a trunk's registration is up.
    pub registered: IntGaugeVec,
    /// 1 when a gateway answers OPTIONS.
    pub gateway_healthy: IntGaugeVec,
    /// Version of the routing configuration in use.
    pub config_version: IntGauge,
    /// Call set-up time: INVITE received to 200 sent (inbound), INVITE sent
    /// to 2xx received (outbound).
    pub setup_seconds: prometheus::HistogramVec,
    /// 1 while the node drains (SIGTERM, `GET /drain` or the operator).
    pub draining: IntGauge,
    /// Server transactions alive right now.
    pub server_transactions: IntGauge,
    /// New requests refused with a stateless 503 because the transaction
    /// table was full, by the limit hit (`node`, `source`).
    pub transaction_overload: IntCounterVec,
    /// SIP over TCP: connections refused, closed and open.
    pub tcp: TcpMetrics,
    /// SIP TLS connections (the same measures as TCP).
    pub tls: TcpMetrics,
    /// Inbound digest answers refused, by reason (replay, uri_mismatch, ...).
    pub digest_failures: IntCounterVec,
    /// Outbound SRTP offers (optional encryption) refused with 488/606 and sent again
    /// without a key.
    pub srtp_plain_retries: IntCounter,
    /// DTMF digits sent to peers as SIP INFO.
    pub dtmf_info_sent: IntCounter,
    /// INFO digits the peer refused (3xx-6xx) or never answered.
    pub dtmf_info_failed: IntCounter,
}

/// SIP over TCP connection metrics.
#[derive(Clone)]
pub struct TcpMetrics {
    /// Connections refused by reason (global, per_source, outbound_limit).
    pub refused: IntCounterVec,
    /// Connections closed by reason (peer_closed, idle, message_timeout,
    /// first_message_timeout, framing_error, panic, ...).
    pub closed: IntCounterVec,
    /// Connections open now, by direction (inbound, outbound).
    pub open: IntGaugeVec,
}

impl TcpMetrics {
    /// The metrics of one stream transport: `tcp` or `tls` in their names.
    fn new(transport: &str) -> TcpMetrics {
        let upper = transport.to_ascii_uppercase();
        TcpMetrics {
            refused: must(IntCounterVec::new(
                Opts::new(
                    format!("switchboard_sip_{transport}_refused_total"),
                    format!(
                        "SIP {upper} connections refused, by reason (global, global_carriers, per_source, outbound_limit)"
                    ),
                ),
                &["reason"],
            )),
            closed: must(IntCounterVec::new(
                Opts::new(
                    format!("switchboard_sip_{transport}_closed_total"),
                    format!("SIP {upper} connections closed, by reason"),
                ),
                &["reason"],
            )),
            open: must(IntGaugeVec::new(
                Opts::new(
                    format!("switchboard_sip_{transport}_connections"),
                    format!("SIP {upper} connections open, by direction"),
                ),
                &["direction"],
            )),
        }
    }

    fn collectors(&self) -> [Box<dyn prometheus::core::Collector>; 3] {
        [
            Box::new(self.refused.clone()),
            Box::new(self.closed.clone()),
            Box::new(self.open.clone()),
        ]
    }
}

pub(crate) fn must<T>(r: Result<T, prometheus::Error>) -> T {
    // Metric definitions are static: a failure is a programming error
    // caught by the unit test below, never a runtime condition.
    match r {
        Ok(v) => v,
        Err(e) => panic!("invalid metric definition: {e}"),
    }
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let calls = must(IntCounterVec::new(
            Opts::new(
                "switchboard_sip_calls_total",
                "Finished call attempts by direction, result and final SIP code",
            ),
            &["direction", "result", "code"],
        ));
        let active_calls = must(IntGaugeVec::new(
            Opts::new(
                "switchboard_sip_active_calls",
                "Calls in progress by trunk and direction",
            ),
            &["trunk", "direction"],
        ));
        let rejected = must(IntCounterVec::new(
            Opts::new(
                "switchboard_sip_rejected_requests_total",
                "Requests refused, by reason",
            ),
            &["reason"],
        ));
        let rate_limited = must(IntCounter::new(
            "switchboard_sip_rate_limited_total",
            "Requests dropped by the per-source rate limit",
        ));
        let dropped = must(IntCounterVec::new(
            Opts::new(
                "switchboard_sip_dropped_messages_total",
                "Messages dropped before processing, by reason",
            ),
            &["reason"],
        ));
        let registered = must(IntGaugeVec::new(
            Opts::new(
                "switchboard_sip_registered",
                "1 when the trunk's registration with the carrier is up",
            ),
            &["trunk"],
        ));
        let gateway_healthy = must(IntGaugeVec::new(
            Opts::new(
                "switchboard_sip_gateway_healthy",
                "1 when the gateway answers OPTIONS pings",
            ),
            &["trunk", "gateway"],
        ));
        let config_version = must(IntGauge::new(
            "switchboard_config_version",
            "Version of the routing configuration in use",
        ));
        let setup_seconds = must(prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "switchboard_sip_setup_seconds",
                "Call set-up time: INVITE received to 200 sent (inbound), INVITE sent to 2xx (outbound)",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["direction"],
        ));
        let draining = must(IntGauge::new(
            "switchboard_draining",
            "1 while the node drains: no new calls, existing calls run to their end",
        ));
        let server_transactions = must(IntGauge::new(
            "switchboard_sip_server_transactions",
            "SIP server transactions alive right now",
        ));
        let transaction_overload = must(IntCounterVec::new(
            Opts::new(
                "switchboard_sip_transaction_overload_total",
                "New requests answered 503 because the transaction table was full, by limit (node, source)",
            ),
            &["limit"],
        ));
        let tcp = TcpMetrics::new("tcp");
        let tls = TcpMetrics::new("tls");
        let digest_failures = must(IntCounterVec::new(
            Opts::new(
                "switchboard_sip_digest_failures_total",
                "Inbound digest answers refused, by reason",
            ),
            &["reason"],
        ));
        must(registry.register(Box::new(digest_failures.clone())));
        let srtp_plain_retries = must(IntCounter::new(
            "switchboard_sip_srtp_plain_retries_total",
            "Outbound offers with an SRTP key refused (488/606) on a trunk with optional encryption and sent again in plain RTP",
        ));
        must(registry.register(Box::new(srtp_plain_retries.clone())));
        let dtmf_info_sent = must(IntCounter::new(
            "switchboard_sip_dtmf_info_sent_total",
            "DTMF digits sent to the peer as SIP INFO (application/dtmf-relay)",
        ));
        must(registry.register(Box::new(dtmf_info_sent.clone())));
        let dtmf_info_failed = must(IntCounter::new(
            "switchboard_sip_dtmf_info_failed_total",
            "DTMF INFO requests the peer refused or never answered",
        ));
        must(registry.register(Box::new(dtmf_info_failed.clone())));
        for c in [
            Box::new(calls.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(server_transactions.clone()),
            Box::new(transaction_overload.clone()),
            Box::new(active_calls.clone()),
            Box::new(rejected.clone()),
            Box::new(rate_limited.clone()),
            Box::new(dropped.clone()),
            Box::new(registered.clone()),
            Box::new(gateway_healthy.clone()),
            Box::new(config_version.clone()),
            Box::new(draining.clone()),
            Box::new(setup_seconds.clone()),
        ]
        .into_iter()
        .chain(tcp.collectors())
        .chain(tls.collectors())
        {
            must(registry.register(c));
        }
        Metrics {
            registry,
            calls,
            active_calls,
            rejected,
            rate_limited,
            dropped,
            registered,
            gateway_healthy,
            config_version,
            draining,
            setup_seconds,
            server_transactions,
            transaction_overload,
            tcp,
            tls,
            digest_failures,
            srtp_plain_retries,
            dtmf_info_sent,
            dtmf_info_failed,
        }
    }

    /// The registry, for other modules that add their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts a refused request.
    pub fn reject(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    /// Counts a refused digest answer (`reason` from a fixed set).
    pub fn digest_failure(&self, reason: &str) {
        self.digest_failures.with_label_values(&[reason]).inc();
    }

    /// Counts a dropped message.
    pub fn drop_msg(&self, reason: &str) {
        self.dropped.with_label_values(&[reason]).inc();
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_register_and_render() {
        let m = super::Metrics::new();
        m.reject("acl");
        m.calls
            .with_label_values(&["inbound", "answered", "200"])
            .inc();
        let text = m.render();
        assert!(text.contains("switchboard_sip_rejected_requests_total{reason=\"acl\"} 1"));
        assert!(text.contains("switchboard_sip_calls_total"));
    }
}
