//! Prometheus metrics of the media engine and the agent bridge.
//!
//! No metric carries a per-call label: a node runs thousands of calls, and a series per call
//! would grow without bound. Per-packet counters are resolved to plain `IntCounter`s once, so
//! the hot path only does an atomic add.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, core::Collector,
};

/// Reasons a received RTP datagram was dropped (label values).
pub mod drop_reason {
    /// Not a parseable RTP packet.
    pub const MALFORMED: &str = "malformed";
    /// A payload type that was not negotiated.
    pub const PAYLOAD_TYPE: &str = "payload_type";
    /// From an address other than the call's current source: not the signalled address, not a
    /// source learned in the learning window, or outside the trunk's networks (RTP Bleed
    /// attempts, stray streams, and a NAT'd peer's packets while on probation).
    pub const SOURCE: &str = "source";
    /// Rejected by sequence validation (RFC 3550 A.1: probation or a large jump).
    pub const SEQUENCE: &str = "sequence";
    /// SRTP/SRTCP that failed authentication (tampered, wrong key, or plain RTP on an
    /// encrypted call).
    pub const SRTP_AUTH: &str = "srtp_auth";
    /// SRTP/SRTCP replayed (inside the replay window) or older than it.
    pub const SRTP_REPLAY: &str = "srtp_replay";
    /// RTCP without SRTCP encryption on an encrypted call (E flag clear: never negotiated here;
    /// baresip sends its RTCP BYE this way at hang-up). Not authenticated, so not used.
    pub const SRTCP_UNENCRYPTED: &str = "srtcp_unencrypted";
    /// Any other SRTP failure: too short, too many sources, key exhausted.
    pub const SRTP_OTHER: &str = "srtp_other";
}

/// Every metric of the media engine. Cheap to clone (all handles are `Arc`s inside).
#[derive(Clone)]
pub struct MediaMetrics {
    /// RTP packets received and accepted.
    pub rtp_in: IntCounter,
    /// RTP packets sent.
    pub rtp_out: IntCounter,
    /// RTP packets lost (RFC 3550 A.3 cumulative loss, summed over calls).
    pub rtp_lost: IntCounter,
    /// Received datagrams dropped, by reason.
    pub rtp_dropped: IntCounterVec,
    /// Calls whose RTP source was learned on another host than the one signalled in SDP
    /// (a NAT'd peer; a surge may also mean someone won a learning race).
    pub rtp_sources_learned: IntCounter,
    /// Interarrival jitter per call, sampled at each RTCP interval and at the end of the call.
    pub rtp_jitter: Histogram,
    /// RTCP compound packets sent.
    pub rtcp_out: IntCounter,
    /// RTCP compound packets received.
    pub rtcp_in: IntCounter,
    /// Frames of agent audio that ran out mid-frame (padded with silence).
    pub playout_underruns: IntCounter,
    /// Caller events (audio frames, DTMF) dropped because the agent session was behind.
    pub agent_events_dropped: IntCounter,
    /// Ticks a call missed because its media task was behind.
    pub tick_overruns: IntCounter,
    /// Caller frames concealed with silence (lost, later audio arrived).
    pub caller_frames_concealed: IntCounter,
    /// Caller RTP packets that arrived after their frame was concealed or released.
    pub caller_packets_late: IntCounter,
    /// Frames one leg of an in-node bridge (dial-through transfer) dropped because the other
    /// leg was too far behind (clock drift, hold).
    pub bridge_frames_dropped: IntCounter,
    /// Calls bridged to another call in the node (dial-through transfers), per leg.
    pub bridged_legs: IntCounter,
    /// Time to open the agent WebSocket.
    pub agent_connect: Histogram,
    /// Agent connections that failed, by reason (timeout, http, transport, invalid_url, ...).
    pub agent_connect_failures: IntCounterVec,
    /// Agent sessions that ended, by reason (call_ended, agent_closed, transport_error).
    pub agent_disconnects: IntCounterVec,
    /// DTMF key presses forwarded to agents, by source (rfc4733, info).
    pub dtmf: IntCounterVec,
    /// Calls that ended, by reason (remote_bye, rtp_timeout, agent_disconnected, ...).
    pub call_ends: IntCounterVec,
    /// Calls whose media engine is running.
    pub active_media: IntGauge,
    /// Agent messages refused or cut for a limit, by limit (pending_marks, mark_name,
    /// message_size, playout_queue).
    pub agent_limit_exceeded: IntCounterVec,
    /// Agent messages ignored, by reason (unknown_event, malformed, binary).
    pub agent_messages_ignored: IntCounterVec,
    /// Bytes of agent audio dropped because a call's playout queue was full.
    pub playout_overflow_bytes: IntCounter,
}

fn must<T>(r: Result<T, prometheus::Error>) -> T {
    // Metric definitions are static: an error is a programming mistake caught by the unit test.
    match r {
        Ok(v) => v,
        Err(e) => panic!("invalid metric definition: {e}"),
    }
}

impl MediaMetrics {
    /// Creates the metrics (not registered anywhere yet).
    pub fn new() -> Self {
        let counter = |name: &str, help: &str| must(IntCounter::new(name, help));
        let vec = |name: &str, help: &str, label: &str| {
            must(IntCounterVec::new(Opts::new(name, help), &[label]))
        };
        let m = MediaMetrics {
            rtp_in: counter(
                "switchboard_rtp_packets_received_total",
                "RTP packets received and accepted",
            ),
            rtp_out: counter("switchboard_rtp_packets_sent_total", "RTP packets sent"),
            rtp_lost: counter(
                "switchboard_rtp_packets_lost_total",
                "RTP packets lost (RFC 3550 cumulative loss)",
            ),
            rtp_dropped: vec(
                "switchboard_rtp_packets_dropped_total",
                "Received RTP datagrams dropped, by reason",
                "reason",
            ),
            rtp_sources_learned: counter(
                "switchboard_rtp_sources_learned_total",
                "Calls whose RTP source was learned on another host than the SDP named",
            ),
            rtp_jitter: must(Histogram::with_opts(
                HistogramOpts::new(
                    "switchboard_rtp_jitter_seconds",
                    "RTP interarrival jitter of calls (RFC 3550 A.8), sampled every RTCP interval",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32,
                ]),
            )),
            rtcp_out: counter(
                "switchboard_rtcp_packets_sent_total",
                "RTCP compound packets sent",
            ),
            rtcp_in: counter(
                "switchboard_rtcp_packets_received_total",
                "RTCP compound packets received",
            ),
            playout_underruns: counter(
                "switchboard_playout_underruns_total",
                "Frames of agent audio that ran out mid-frame and were padded with silence",
            ),
            agent_events_dropped: counter(
                "switchboard_agent_events_dropped_total",
                "Caller audio frames and DTMF events dropped because the agent session was behind",
            ),
            tick_overruns: counter(
                "switchboard_media_tick_overruns_total",
                "20 ms frames of outgoing silence skipped because a call's media task woke more than a frame late",
            ),
            caller_frames_concealed: counter(
                "switchboard_caller_frames_concealed_total",
                "Caller audio frames that never arrived (later audio did) and reached the agent as silence",
            ),
            caller_packets_late: counter(
                "switchboard_caller_packets_late_total",
                "Caller RTP packets dropped because they arrived after their frame had been concealed or released",
            ),
            bridge_frames_dropped: counter(
                "switchboard_bridge_frames_dropped_total",
                "Audio frames an in-node bridge (dial-through transfer) dropped because the other leg was over 160 ms behind",
            ),
            bridged_legs: counter(
                "switchboard_bridged_legs_total",
                "Call legs bridged to another call in the node (dial-through transfers; two per transfer)",
            ),
            agent_connect: must(Histogram::with_opts(
                HistogramOpts::new(
                    "switchboard_agent_connect_seconds",
                    "Time to open the agent WebSocket",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )),
            agent_connect_failures: vec(
                "switchboard_agent_connect_failures_total",
                "Agent connections that failed, by reason",
                "reason",
            ),
            agent_disconnects: vec(
                "switchboard_agent_disconnects_total",
                "Agent sessions that ended, by reason",
                "reason",
            ),
            dtmf: vec(
                "switchboard_dtmf_events_total",
                "DTMF key presses forwarded to agents, by source",
                "source",
            ),
            call_ends: vec(
                "switchboard_call_end_reasons_total",
                "Calls that ended (or were refused at set-up by the bridge), by reason",
                "reason",
            ),
            active_media: must(IntGauge::new(
                "switchboard_media_active_calls",
                "Calls whose media engine is running",
            )),
            agent_limit_exceeded: vec(
                "switchboard_agent_limit_exceeded_total",
                "Agent messages refused or cut because they went over a limit, by limit",
                "limit",
            ),
            agent_messages_ignored: vec(
                "switchboard_agent_messages_ignored_total",
                "Agent messages ignored (unknown event, malformed, binary), by reason",
                "reason",
            ),
            playout_overflow_bytes: counter(
                "switchboard_playout_overflow_bytes_total",
                "Bytes of agent audio dropped because a call's playout queue was full",
            ),
        };
        // The drop series exist from the start (at 0), for alerts on RTP from wrong sources.
        for r in [
            drop_reason::MALFORMED,
            drop_reason::PAYLOAD_TYPE,
            drop_reason::SOURCE,
            drop_reason::SEQUENCE,
        ] {
            m.rtp_dropped.with_label_values(&[r]);
        }
        m
    }

    /// The agent sessions' counters of refused and ignored messages.
    pub fn limit_counters(&self) -> crate::agent::session::LimitCounters {
        crate::agent::session::LimitCounters::new(
            &self.agent_limit_exceeded,
            &self.agent_messages_ignored,
            &self.playout_overflow_bytes,
        )
    }

    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        let all: [Box<dyn Collector>; 24] = [
            Box::new(self.rtp_in.clone()),
            Box::new(self.rtp_out.clone()),
            Box::new(self.rtp_lost.clone()),
            Box::new(self.rtp_dropped.clone()),
            Box::new(self.rtp_sources_learned.clone()),
            Box::new(self.rtp_jitter.clone()),
            Box::new(self.rtcp_out.clone()),
            Box::new(self.rtcp_in.clone()),
            Box::new(self.playout_underruns.clone()),
            Box::new(self.agent_events_dropped.clone()),
            Box::new(self.tick_overruns.clone()),
            Box::new(self.caller_frames_concealed.clone()),
            Box::new(self.caller_packets_late.clone()),
            Box::new(self.bridge_frames_dropped.clone()),
            Box::new(self.bridged_legs.clone()),
            Box::new(self.agent_connect.clone()),
            Box::new(self.agent_connect_failures.clone()),
            Box::new(self.agent_disconnects.clone()),
            Box::new(self.dtmf.clone()),
            Box::new(self.call_ends.clone()),
            Box::new(self.active_media.clone()),
            Box::new(self.agent_limit_exceeded.clone()),
            Box::new(self.agent_messages_ignored.clone()),
            Box::new(self.playout_overflow_bytes.clone()),
        ];
        for c in all {
            registry.register(c)?;
        }
        Ok(())
    }
}

impl Default for MediaMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_and_render() {
        let m = MediaMetrics::new();
        let registry = Registry::new();
        m.register(&registry).expect("register");
        m.rtp_in.inc();
        m.rtp_dropped
            .with_label_values(&[drop_reason::PAYLOAD_TYPE])
            .inc();
        m.agent_connect.observe(0.01);
        let mut buf = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut buf,
        )
        .expect("encode");
        let text = String::from_utf8(buf).expect("utf8");
        assert!(text.contains("switchboard_rtp_packets_received_total 1"));
        assert!(text.contains("switchboard_rtp_packets_dropped_total{reason=\"payload_type\"} 1"));
        assert!(text.contains("switchboard_agent_connect_seconds_count 1"));
    }
}
