//! Prometheus metrics of the operator. Labels never carry credentials or
//! object contents beyond kinds and condition reasons.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::routing::index::Counts;

/// Every metric the operator exports.
pub struct Metrics {
    /// The registry served on /metrics.
    pub registry: Registry,
    /// Metrics named without the `switchboard_operator_` prefix (the
    /// campaigns' `switchboard_campaign_*`, which autoscalers read), served
    /// on the same /metrics.
    pub plain: Registry,
    /// 1 while this replica holds the leader lease.
    pub leader: IntGauge,
    /// The leadership term while this replica leads (0 while following, or
    /// when leader election is disabled and nothing is fenced).
    pub leader_term: IntGauge,
    /// 1 once the watch caches are synced (or the files were read).
    pub ready: IntGauge,
    /// Time to resolve the routing configuration.
    pub resolve_seconds: Histogram,
    /// Status writes by kind and result.
    pub status_writes: IntCounterVec,
    /// Watch errors by kind.
    pub watch_errors: IntCounterVec,
    /// Objects by kind and state (usable, not_accepted, unresolved).
    pub objects: IntGaugeVec,
    /// Media nodes the operator programs.
    pub fleet_nodes: IntGauge,
    /// Configuration pushes by kind (snapshot, delta).
    pub pushes: IntCounterVec,
    /// Bytes of configuration pushed, by kind.
    pub push_bytes: IntCounterVec,
    /// The newest configuration version issued.
    pub config_version: IntGauge,
    /// Trunks whose per-node limit shares were (re)computed.
    pub trunks_planned: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("switchboard_operator".into()), None)?;
        let leader = IntGauge::new("leader", "1 while this replica holds the leader lease")?;
        let leader_term = IntGauge::new(
            "leader_term",
            "The leadership term (Lease transitions + 1) while leading, else 0",
        )?;
        let ready = IntGauge::new("ready", "1 once the resource caches are synced")?;
        let resolve_seconds = Histogram::with_opts(
            HistogramOpts::new("resolve_seconds", "Time to build the routing configuration")
                .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )?;
        let status_writes = IntCounterVec::new(
            Opts::new("status_writes_total", "Status writes by kind and result"),
            &["kind", "result"],
        )?;
        let watch_errors = IntCounterVec::new(
            Opts::new("watch_errors_total", "Watch errors by kind"),
            &["kind"],
        )?;
        let objects = IntGaugeVec::new(
            Opts::new("objects", "Resources by kind and state"),
            &["kind", "state"],
        )?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(leader_term.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        registry.register(Box::new(resolve_seconds.clone()))?;
        registry.register(Box::new(status_writes.clone()))?;
        registry.register(Box::new(watch_errors.clone()))?;
        let fleet_nodes = IntGauge::new("fleet_nodes", "Media nodes the operator programs")?;
        let pushes = IntCounterVec::new(
            Opts::new("config_pushes_total", "Configuration pushes by kind"),
            &["kind"],
        )?;
        let push_bytes = IntCounterVec::new(
            Opts::new("config_push_bytes_total", "Bytes of configuration pushed"),
            &["kind"],
        )?;
        let config_version =
            IntGauge::new("config_version", "The newest configuration version issued")?;
        registry.register(Box::new(objects.clone()))?;
        registry.register(Box::new(fleet_nodes.clone()))?;
        registry.register(Box::new(pushes.clone()))?;
        registry.register(Box::new(push_bytes.clone()))?;
        registry.register(Box::new(config_version.clone()))?;
        let trunks_planned = IntCounter::new(
            "trunks_planned_total",
            "Trunks whose per-node limit shares were computed (changed trunks, node set changes, hand-overs in progress)",
        )?;
        registry.register(Box::new(trunks_planned.clone()))?;
        Ok(Self {
            registry,
            plain: Registry::new(),
            leader,
            leader_term,
            ready,
            resolve_seconds,
            status_writes,
            watch_errors,
            objects,
            fleet_nodes,
            pushes,
            push_bytes,
            config_version,
            trunks_planned,
        })
    }

    /// Records object counts (kept by the index per change).
    pub fn observe(&self, trunks: Counts, numbers: Counts) {
        for (kind, c) in [("SipTrunk", trunks), ("PhoneNumber", numbers)] {
            self.objects
                .with_label_values(&[kind, "usable"])
                .set(c.usable);
            self.objects
                .with_label_values(&[kind, "not_accepted"])
                .set(c.not_accepted);
            self.objects
                .with_label_values(&[kind, "unresolved"])
                .set(c.unresolved);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let enc = prometheus::TextEncoder::new();
        let mut families = self.registry.gather();
        families.extend(self.plain.gather());
        if let Err(e) = enc.encode_utf8(&families, &mut out) {
            out = format!("# encoding failed: {e}\n");
        }
        out
    }
}
