//! The fleet as the resources' status shows it: per object, how many nodes
//! run its current configuration; per trunk, calls, gateway health,
//! registration and the addresses carriers should send to.

use std::collections::{BTreeMap, BTreeSet};

use imbl::{OrdMap, OrdSet};

use crate::routing::index::changed;

use switchboard_proto::v1alpha1 as pb;

use crate::crd::{GatewayStatus, NodeCount};
use crate::routing::Verdict;

/// Condition reasons the fleet contributes.
pub mod reason {
    /// Every node runs the object's current configuration.
    pub const PROGRAMMED: &str = "Programmed";
    /// Some nodes have not acknowledged it yet.
    pub const PENDING: &str = "Pending";
    /// A node refused the configuration.
    pub const NODE_REFUSED: &str = "NodeRefused";
    /// No media node is known.
    pub const NO_NODES: &str = "NoNodes";
    /// The object is not part of the routing configuration.
    pub const NOT_ROUTED: &str = "NotRouted";
    /// The trunk holds a registration.
    pub const REGISTERED: &str = "Registered";
    /// The registration failed.
    pub const REGISTRATION_FAILED: &str = "RegistrationFailed";
    /// Some gateways fail their health checks.
    pub const GATEWAY_UNHEALTHY: &str = "GatewayUnhealthy";
    /// Every gateway answers its health checks.
    pub const HEALTHY: &str = "Healthy";
}

/// Longest gateway error carried into status (a node's report is bounded before it reaches
/// the API server).
const MAX_GATEWAY_ERROR: usize = 256;

/// `s` cut to at most `max` bytes on a character boundary.
fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// What the operator knows of one node.
#[derive(Clone, Debug, Default)]
pub struct NodeView {
    /// Node id (pod name).
    pub id: String,
    /// Version the node acknowledged last (0: none).
    pub acked_version: u64,
    /// Latest status report.
    pub status: Option<pb::NodeStatus>,
    /// The last configuration version it refused, and why.
    pub refused: Option<(u64, String)>,
}

/// Fleet facts about one trunk.
#[derive(Clone, Debug, PartialEq)]
pub struct TrunkFleet {
    /// The Programmed condition.
    pub programmed: Verdict,
    /// Nodes running the trunk's configuration.
    pub nodes: NodeCount,
    /// Calls in progress across the fleet.
    pub active_calls: u32,
    /// Gateway health as the nodes see it.
    pub gateways: Vec<GatewayStatus>,
    /// The Registered condition, for registering trunks.
    pub registered: Option<Verdict>,
    /// The Degraded condition, when gateways are health-checked.
    pub degraded: Option<Verdict>,
    /// SIP addresses of the nodes.
    pub ingress: Vec<String>,
}

/// What the view keeps of each node to judge Programmed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeAck {
    id: String,
    acked_version: u64,
    refused: Option<(u64, String)>,
}

/// For each routed object, the first configuration version carrying its
/// current content; also ordered by version, so the objects some node has
/// not applied yet are found without looking at the others. Persistent maps:
/// a view holds a copy in O(1).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Since {
    by_id: OrdMap<String, u64>,
    by_version: OrdSet<(u64, String)>,
}

impl Since {
    /// Records that `id`'s current content first appears in version `v`.
    pub fn set(&mut self, id: &str, v: u64) {
        if let Some(old) = self.by_id.get(id).copied() {
            if old == v {
                return;
            }
            self.by_version.remove(&(old, id.to_string()));
        }
        self.by_id.insert(id.to_string(), v);
        self.by_version.insert((v, id.to_string()));
    }

    /// Records `id`'s new version, or forgets it (`None`: it left the
    /// configuration).
    pub fn update(&mut self, id: &str, v: Option<u64>) {
        match v {
            Some(v) => self.set(id, v),
            None => self.remove(id),
        }
    }

    /// Forgets an object that left the configuration.
    pub fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.get(id).copied() {
            self.by_id.remove(id);
            self.by_version.remove(&(old, id.to_string()));
        }
    }

    /// The version for `id`.
    pub fn get(&self, id: &str) -> Option<u64> {
        self.by_id.get(id).copied()
    }

    /// True when both are the same generation (O(1)).
    pub fn ptr_eq(&self, other: &Since) -> bool {
        self.by_id.ptr_eq(&other.by_id)
    }

    /// Ids whose version differs between `old` and `self` (O(change)).
    pub fn changed_since<'a>(&'a self, old: &'a Since) -> impl Iterator<Item = &'a String> {
        old.by_id.diff(&self.by_id).map(|d| changed(d).0)
    }

    /// Ids whose version is newer than `v`.
    pub fn newer_than(&self, v: u64) -> impl Iterator<Item = &String> {
        self.newer_than_with_version(v).map(|(_, id)| id)
    }

    /// Ids whose version is newer than `v`, with their version.
    fn newer_than_with_version(&self, v: u64) -> impl Iterator<Item = (u64, &String)> {
        let from = (v.saturating_add(1), String::new());
        self.by_version.range(from..).map(|(v, id)| (*v, id))
    }

    /// How many ids have a version.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when no id has a version.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Fleet facts for every routed object. Per-number verdicts are computed on
/// demand from the version each number's content first appeared in and the
/// nodes' acknowledgements, so a view of 100,000 numbers costs no more to
/// build (or to compare) than a view of one.
#[derive(Clone, Debug, Default)]
pub struct FleetView {
    /// By trunk id (`namespace/name`).
    pub trunks: BTreeMap<String, TrunkFleet>,
    /// Calls in progress by node id.
    pub node_calls: BTreeMap<String, u32>,
    /// Whether each node takes new calls (reports ready, not draining).
    pub node_ready: BTreeMap<String, bool>,
    since: Since,
    acks: Vec<NodeAck>,
}

impl PartialEq for FleetView {
    fn eq(&self, other: &Self) -> bool {
        self.trunks == other.trunks
            && self.node_calls == other.node_calls
            && self.node_ready == other.node_ready
            && self.acks == other.acks
            && (self.since.ptr_eq(&other.since) || self.since == other.since)
    }
}

impl FleetView {
    /// Whether the two views differ in what programming, registration or
    /// health conditions depend on (not just in call counts), so that such
    /// changes reach the status at once while call counts are rate-limited.
    pub fn conditions_differ(&self, other: &FleetView) -> bool {
        self.acks != other.acks
            || !(self.since.ptr_eq(&other.since) || self.since == other.since)
            || self.trunks.len() != other.trunks.len()
            || self
                .trunks
                .iter()
                .zip(other.trunks.iter())
                .any(|((ka, a), (kb, b))| {
                    ka != kb
                        || a.programmed != b.programmed
                        || a.registered != b.registered
                        || a.degraded != b.degraded
                        || a.nodes != b.nodes
                })
    }

    /// The Programmed condition of a routed number (`None`: not routed).
    ///
    /// Only nodes that have applied (or refused) a configuration count: a
    /// node that just started is not serving yet, so a rolling restart of
    /// the fleet does not turn every number Pending and back. The message
    /// holds no node count when programmed, so a fleet that grows or shrinks
    /// rewrites no number's status.
    pub fn number(&self, id: &str) -> Option<Verdict> {
        let since = self.since.get(id)?;
        Some(number_programmed(since, &self.acks, self.acks.len()))
    }

    /// The routed numbers whose Programmed condition is not True, found
    /// without looking at the others (O(pending) once a node is counted),
    /// for a table of 100,000 numbers that lists only what needs attention.
    pub fn unprogrammed(&self) -> Unprogrammed<'_> {
        if self.since.is_empty() {
            return Unprogrammed::Some(Vec::new());
        }
        if !self.acks.iter().any(counted) {
            // The verdict does not depend on the number's version then.
            return Unprogrammed::All(
                number_programmed(0, &self.acks, self.acks.len()),
                self.since.len(),
            );
        }
        Unprogrammed::Some(
            self.since
                .newer_than_with_version(self.floor())
                .map(|(v, id)| (id, number_programmed(v, &self.acks, self.acks.len())))
                .collect(),
        )
    }

    /// The oldest version every counted node runs (see [`FleetView::number`]).
    fn floor(&self) -> u64 {
        self.acks
            .iter()
            .filter(|a| counted(a))
            .map(|a| a.acked_version)
            .min()
            .unwrap_or(0)
    }

    /// Numbers whose Programmed condition may differ between `old` and
    /// `self`: those whose content changed, and those some counted node had
    /// not applied in either view. O(change + pending), not O(numbers).
    pub fn programmed_changes(&self, old: &FleetView) -> BTreeSet<String> {
        if self.acks == old.acks && self.since.ptr_eq(&old.since) {
            return BTreeSet::new();
        }
        let mut out: BTreeSet<String> = self.since.changed_since(&old.since).cloned().collect();
        // With no node counted (none yet, or all gone) every number's
        // verdict is the same fleet-wide one: all of them change together.
        let old_floor = old.floor();
        let new_floor = self.floor();
        out.extend(old.since.newer_than(old_floor).cloned());
        out.extend(self.since.newer_than(new_floor).cloned());
        let counted_old = old.acks.iter().filter(|a| counted(a)).count();
        let counted_new = self.acks.iter().filter(|a| counted(a)).count();
        if (counted_old == 0) != (counted_new == 0) || old.acks.is_empty() != self.acks.is_empty() {
            out.extend(self.since.by_id.keys().cloned());
            out.extend(old.since.by_id.keys().cloned());
        }
        out
    }
}

/// See [`FleetView::unprogrammed`].
#[derive(Debug, PartialEq)]
pub enum Unprogrammed<'a> {
    /// Every routed number (this many) has this verdict.
    All(Verdict, usize),
    /// These numbers, by id; every other routed number is programmed.
    Some(Vec<(&'a String, Verdict)>),
}

/// Whether a node counts for numbers' Programmed condition.
fn counted(a: &NodeAck) -> bool {
    a.acked_version > 0 || a.refused.is_some()
}

fn number_programmed(since: u64, nodes: &[NodeAck], total: usize) -> Verdict {
    // Called once per number when a table or status is built: no allocation.
    let (mut counted_n, mut done) = (0usize, 0usize);
    for n in nodes.iter().filter(|n| counted(n)) {
        counted_n += 1;
        if n.acked_version >= since {
            done += 1;
        }
    }
    let counted = nodes.iter().filter(|n| counted(n));
    if total == 0 {
        return Verdict {
            ok: false,
            reason: reason::NO_NODES,
            message: "no media nodes are running".into(),
        };
    }
    if counted_n == 0 {
        return Verdict {
            ok: false,
            reason: reason::PENDING,
            message: "no media node has applied a configuration yet".into(),
        };
    }
    if done == counted_n {
        return Verdict {
            ok: true,
            reason: reason::PROGRAMMED,
            message: "the media nodes run this generation".into(),
        };
    }
    if let Some((n, why)) = counted.filter(|n| n.acked_version < since).find_map(|n| {
        n.refused
            .as_ref()
            .filter(|(v, _)| *v >= since)
            .map(|(_, why)| (n, why))
    }) {
        return Verdict {
            ok: false,
            reason: reason::NODE_REFUSED,
            message: format!(
                "media node {} refused the configuration: {why} ({done}/{counted_n} programmed)",
                n.id,
            ),
        };
    }
    Verdict {
        ok: false,
        reason: reason::PENDING,
        message: format!("{done}/{counted_n} media nodes programmed"),
    }
}

fn programmed(since: u64, nodes: &[NodeAck]) -> (Verdict, NodeCount) {
    let total = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
    let done = u32::try_from(nodes.iter().filter(|n| n.acked_version >= since).count())
        .unwrap_or(u32::MAX);
    let count = NodeCount {
        programmed: done,
        total,
    };
    let v = if total == 0 {
        Verdict {
            ok: false,
            reason: reason::NO_NODES,
            message: "no media nodes are running".into(),
        }
    } else if done == total {
        Verdict {
            ok: true,
            reason: reason::PROGRAMMED,
            message: format!("{done}/{total} media nodes run this generation"),
        }
    } else if let Some((n, (_, why))) =
        nodes
            .iter()
            .filter(|n| n.acked_version < since)
            .find_map(|n| {
                n.refused
                    .as_ref()
                    .filter(|(v, _)| *v >= since)
                    .map(|r| (n, r))
            })
    {
        Verdict {
            ok: false,
            reason: reason::NODE_REFUSED,
            message: format!(
                "media node {} refused the configuration: {why} ({done}/{total} programmed)",
                n.id
            ),
        }
    } else {
        Verdict {
            ok: false,
            reason: reason::PENDING,
            message: format!("{done}/{total} media nodes programmed"),
        }
    };
    (v, count)
}

/// Builds the view. `since` maps each routed object id to the first
/// configuration version carrying its current content.
pub fn build<'a>(
    trunks: impl IntoIterator<Item = &'a pb::Trunk>,
    since: &Since,
    nodes: &[NodeView],
) -> FleetView {
    let acks: Vec<NodeAck> = nodes
        .iter()
        .map(|n| NodeAck {
            id: n.id.clone(),
            acked_version: n.acked_version,
            refused: n.refused.clone(),
        })
        .collect();
    let mut view = FleetView {
        since: since.clone(),
        ..Default::default()
    };
    let statuses: Vec<&pb::NodeStatus> = nodes.iter().filter_map(|n| n.status.as_ref()).collect();
    let ingress: Vec<String> = statuses
        .iter()
        .flat_map(|s| s.sip_addresses.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for n in nodes {
        view.node_calls.insert(
            n.id.clone(),
            n.status.as_ref().map(|s| s.active_calls).unwrap_or(0),
        );
        view.node_ready.insert(
            n.id.clone(),
            n.status.as_ref().is_some_and(|s| s.ready && !s.draining),
        );
    }
    for t in trunks {
        let (programmed, count) = programmed(since.get(&t.id).unwrap_or(u64::MAX), &acks);
        let active_calls = statuses
            .iter()
            .flat_map(|s| s.trunks.iter())
            .filter(|c| c.trunk_id == t.id)
            .map(|c| c.inbound + c.outbound)
            .sum();
        let mut gateways = Vec::new();
        for g in t.outbound.iter().flat_map(|o| o.gateways.iter()) {
            let reports: Vec<&pb::GatewayHealth> = statuses
                .iter()
                .flat_map(|s| s.gateways.iter())
                .filter(|h| h.trunk_id == t.id && h.host == g.host && h.port == g.port)
                .collect();
            // The best report wins: a gateway one node reaches is usable.
            if let Some(best) = reports
                .iter()
                .max_by_key(|h| (h.healthy, u32::MAX - h.round_trip_ms))
            {
                gateways.push(GatewayStatus {
                    host: format!("{}:{}", g.host, g.port),
                    transport: match g.transport() {
                        pb::Transport::Tcp => "tcp",
                        pb::Transport::Tls => "tls",
                        _ => "udp",
                    }
                    .into(),
                    healthy: best.healthy,
                    last_response_code: (best.last_status_code > 0)
                        .then_some(best.last_status_code),
                    round_trip_ms: best.healthy.then_some(best.round_trip_ms),
                    error: (!best.healthy && !best.error.is_empty())
                        .then(|| bounded(&best.error, MAX_GATEWAY_ERROR)),
                });
            }
        }
        let degraded = if gateways.is_empty() {
            None
        } else {
            let down: Vec<String> = gateways
                .iter()
                .filter(|g| !g.healthy)
                .map(|g| match &g.error {
                    Some(e) => format!("{} ({e})", g.host),
                    None => g.host.clone(),
                })
                .collect();
            Some(if down.is_empty() {
                Verdict {
                    ok: false,
                    reason: reason::HEALTHY,
                    message: "every gateway answers OPTIONS".into(),
                }
            } else {
                Verdict {
                    ok: true,
                    reason: reason::GATEWAY_UNHEALTHY,
                    message: format!("unhealthy gateways: {}", down.join(", ")),
                }
            })
        };
        let registers = t
            .outbound
            .as_ref()
            .and_then(|o| o.register.as_ref())
            .is_some_and(|r| r.enabled);
        let registered = registers.then(|| {
            let states: Vec<(&str, &pb::RegistrationState)> = nodes
                .iter()
                .filter_map(|n| n.status.as_ref().map(|s| (n.id.as_str(), s)))
                .flat_map(|(id, s)| {
                    s.registrations
                        .iter()
                        .filter(|r| r.trunk_id == t.id)
                        .map(move |r| (id, r))
                })
                .collect();
            if let Some((id, _)) = states.iter().find(|(_, r)| r.registered) {
                Verdict {
                    ok: true,
                    reason: reason::REGISTERED,
                    message: format!("registered by media node {id}"),
                }
            } else if let Some((id, r)) = states.first() {
                let why = if r.error.is_empty() {
                    format!("last response {}", r.last_status_code)
                } else {
                    r.error.clone()
                };
                Verdict {
                    ok: false,
                    reason: reason::REGISTRATION_FAILED,
                    message: format!("media node {id}: {why}"),
                }
            } else {
                Verdict {
                    ok: false,
                    reason: reason::PENDING,
                    message: "no media node holds the registration yet".into(),
                }
            }
        });
        view.trunks.insert(
            t.id.clone(),
            TrunkFleet {
                programmed,
                nodes: count,
                active_calls,
                gateways,
                registered,
                degraded,
                ingress: ingress.clone(),
            },
        );
    }
    view.acks = acks;
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> pb::RoutingConfig {
        pb::RoutingConfig {
            version: 0,
            trunks: vec![pb::Trunk {
                id: "ns/t".into(),
                outbound: Some(pb::Outbound {
                    gateways: vec![pb::Gateway {
                        host: "gw".into(),
                        port: 5060,
                        ..Default::default()
                    }],
                    register: Some(pb::Register {
                        enabled: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            numbers: vec![pb::PhoneNumber {
                id: "ns/n".into(),
                trunk_id: "ns/t".into(),
                ..Default::default()
            }],
        }
    }

    fn node(id: &str, acked: u64) -> NodeView {
        NodeView {
            id: id.into(),
            acked_version: acked,
            status: None,
            refused: None,
        }
    }

    fn since(t: u64, n: u64) -> Since {
        let mut s = Since::default();
        s.set("ns/t", t);
        s.set("ns/n", n);
        s
    }

    #[test]
    fn programmed_counts_nodes_at_or_past_the_objects_version() {
        let since = since(5, 7);
        let v = build(&config().trunks, &since, &[node("a", 7), node("b", 6)]);
        let t = &v.trunks["ns/t"];
        assert!(t.programmed.ok);
        assert_eq!(
            t.nodes,
            NodeCount {
                programmed: 2,
                total: 2
            }
        );
        let n = v.number("ns/n").expect("routed");
        assert!(!n.ok);
        assert_eq!(n.reason, reason::PENDING);
        assert!(n.message.contains("1/2"));
        assert_eq!(
            build(&config().trunks, &since, &[])
                .number("ns/n")
                .expect("routed")
                .reason,
            reason::NO_NODES
        );
        assert!(v.number("ns/other").is_none());
    }

    #[test]
    fn views_compare_equal_only_when_something_changed() {
        let since = since(5, 7);
        let a = build(&config().trunks, &since, &[node("a", 7)]);
        assert_eq!(a, build(&config().trunks, &since, &[node("a", 7)]));
        assert_ne!(a, build(&config().trunks, &since, &[node("a", 6)]));
    }

    #[test]
    fn a_refusal_is_reported_with_the_nodes_reason() {
        let since = since(5, 7);
        let mut b = node("b", 6);
        b.refused = Some((7, "TLS transport is not supported".into()));
        let v = build(&config().trunks, &since, &[node("a", 7), b]);
        let n = v.number("ns/n").expect("routed");
        assert_eq!(n.reason, reason::NODE_REFUSED);
        assert!(
            n.message.contains("media node b") && n.message.contains("TLS"),
            "{}",
            n.message
        );
        assert!(
            v.trunks["ns/t"].programmed.ok,
            "the trunk's own version was applied"
        );
    }

    #[test]
    fn calls_health_registration_and_ingress_aggregate() {
        let since = since(1, 1);
        let mut a = node("a", 1);
        a.status = Some(pb::NodeStatus {
            active_calls: 3,
            trunks: vec![pb::TrunkCalls {
                trunk_id: "ns/t".into(),
                inbound: 2,
                outbound: 1,
            }],
            gateways: vec![pb::GatewayHealth {
                trunk_id: "ns/t".into(),
                host: "gw".into(),
                port: 5060,
                healthy: false,
                last_status_code: 503,
                round_trip_ms: 0,
                error: "OPTIONS answered 503".into(),
            }],
            sip_addresses: vec!["10.0.0.1:5060".into()],
            ..Default::default()
        });
        let mut b = node("b", 1);
        b.status = Some(pb::NodeStatus {
            active_calls: 1,
            trunks: vec![pb::TrunkCalls {
                trunk_id: "ns/t".into(),
                inbound: 1,
                outbound: 0,
            }],
            registrations: vec![pb::RegistrationState {
                trunk_id: "ns/t".into(),
                registered: true,
                last_status_code: 200,
                ..Default::default()
            }],
            sip_addresses: vec!["10.0.0.2:5060".into()],
            ..Default::default()
        });
        let v = build(&config().trunks, &since, &[a, b]);
        let t = &v.trunks["ns/t"];
        assert_eq!(t.active_calls, 4);
        assert_eq!(t.ingress, vec!["10.0.0.1:5060", "10.0.0.2:5060"]);
        assert!(
            t.registered
                .as_ref()
                .is_some_and(|r| r.ok && r.message.contains("node b"))
        );
        let d = t.degraded.as_ref().expect("degraded");
        assert!(d.ok && d.message.contains("gw:5060 (OPTIONS answered 503)"));
        assert_eq!(t.gateways[0].error.as_deref(), Some("OPTIONS answered 503"));
        assert_eq!(t.gateways[0].last_response_code, Some(503));
        assert_eq!(v.node_calls["a"], 3);
    }

    #[test]
    fn a_long_gateway_error_is_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_GATEWAY_ERROR);
        let cut = bounded(&long, MAX_GATEWAY_ERROR);
        assert!(cut.len() <= MAX_GATEWAY_ERROR + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert_eq!(bounded("short", MAX_GATEWAY_ERROR), "short");
    }
}
