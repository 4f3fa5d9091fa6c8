//! Per-node configuration: the fleet-wide configuration with each trunk's
//! share of the limits and registration ownership filled in for one node.

use std::collections::BTreeMap;

use switchboard_proto::v1alpha1 as pb;

use super::owners::owner;
use super::shares::{NodeUse, cps_split, even_split, grant};

/// What planning needs to know of a node.
#[derive(Clone, Debug, Default)]
pub struct NodeFacts {
    /// Connected, reporting status and not draining: takes new calls.
    pub live: bool,
    /// Trunks of the configuration the node acknowledged last.
    pub acked_trunks: Vec<pb::Trunk>,
    /// Calls in progress by trunk id (inbound + outbound).
    pub active: BTreeMap<String, u32>,
}

fn acked_share(f: &NodeFacts, trunk: &str) -> u32 {
    f.acked_trunks
        .iter()
        .find(|t| t.id == trunk)
        .and_then(|t| t.share.as_ref())
        .map(|s| s.max_concurrent_calls)
        .unwrap_or(0)
}

/// The trunks each node should run. Every node known (live or not) gets an
/// entry; nodes that are not live get no share and no registrations.
pub fn plan(
    base: &[pb::Trunk],
    nodes: &BTreeMap<String, NodeFacts>,
) -> BTreeMap<String, Vec<pb::Trunk>> {
    let live: Vec<String> = nodes
        .iter()
        .filter(|(_, f)| f.live)
        .map(|(id, _)| id.clone())
        .collect();
    let mut out: BTreeMap<String, Vec<pb::Trunk>> = nodes
        .keys()
        .map(|id| (id.clone(), Vec::with_capacity(base.len())))
        .collect();
    for t in base {
        let limits = t.limits.unwrap_or_default();
        let calls = if limits.max_concurrent_calls > 0 {
            let desired_live = even_split(&t.id, limits.max_concurrent_calls, &live);
            let desired: BTreeMap<String, u32> = nodes
                .keys()
                .map(|id| (id.clone(), desired_live.get(id).copied().unwrap_or(0)))
                .collect();
            let usage: BTreeMap<String, NodeUse> = nodes
                .iter()
                .map(|(id, f)| {
                    let u = NodeUse {
                        acked: acked_share(f, &t.id),
                        active: f.active.get(&t.id).copied().unwrap_or(0),
                    };
                    (id.clone(), u)
                })
                .collect();
            Some(grant(limits.max_concurrent_calls, &desired, &usage))
        } else {
            None
        };
        let cps = cps_split(limits.max_calls_per_second, live.len());
        let registers = t
            .outbound
            .as_ref()
            .and_then(|o| o.register.as_ref())
            .is_some_and(|r| r.enabled);
        let reg_owner = if registers {
            owner(&t.id, &live).cloned()
        } else {
            None
        };
        for (id, f) in nodes {
            let mut mine = t.clone();
            mine.share = Some(pb::NodeShare {
                max_concurrent_calls: calls.as_ref().and_then(|c| c.get(id).copied()).unwrap_or(0),
                max_calls_per_second: if f.live && limits.max_calls_per_second > 0 {
                    cps
                } else {
                    0.0
                },
            });
            mine.register_here = reg_owner.as_ref() == Some(id);
            if let Some(v) = out.get_mut(id) {
                v.push(mine);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(limit: u32, register: bool) -> pb::Trunk {
        pb::Trunk {
            id: "ns/t".into(),
            enabled: true,
            limits: Some(pb::Limits {
                max_concurrent_calls: limit,
                max_calls_per_second: 10,
                ..Default::default()
            }),
            outbound: Some(pb::Outbound {
                register: Some(pb::Register {
                    enabled: register,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn share(p: &BTreeMap<String, Vec<pb::Trunk>>, node: &str) -> (u32, f64, bool) {
        let t = &p[node][0];
        let s = t.share.unwrap_or_default();
        (
            s.max_concurrent_calls,
            s.max_calls_per_second,
            t.register_here,
        )
    }

    #[test]
    fn limits_split_among_live_nodes_and_move_when_one_goes() {
        let mut nodes: BTreeMap<String, NodeFacts> = BTreeMap::new();
        nodes.insert(
            "a".into(),
            NodeFacts {
                live: true,
                ..Default::default()
            },
        );
        nodes.insert(
            "b".into(),
            NodeFacts {
                live: true,
                ..Default::default()
            },
        );
        let p = plan(&[trunk(4, true)], &nodes);
        let (a, b) = (share(&p, "a"), share(&p, "b"));
        assert_eq!(a.0 + b.0, 4);
        assert_eq!((a.0, b.0), (2, 2));
        assert!((a.1 - 5.0).abs() < 1e-9);
        assert!(a.2 ^ b.2, "exactly one node registers");

        // Both acknowledged 2; b goes away: a gets the whole budget.
        for f in nodes.values_mut() {
            f.acked_trunks = vec![pb::Trunk {
                share: Some(pb::NodeShare {
                    max_concurrent_calls: 2,
                    ..Default::default()
                }),
                ..trunk(4, true)
            }];
        }
        nodes.remove("b");
        let p = plan(&[trunk(4, true)], &nodes);
        assert_eq!(share(&p, "a"), (4, 10.0, true));
    }

    #[test]
    fn a_node_that_is_not_live_gets_nothing() {
        let mut nodes: BTreeMap<String, NodeFacts> = BTreeMap::new();
        nodes.insert(
            "a".into(),
            NodeFacts {
                live: true,
                ..Default::default()
            },
        );
        nodes.insert(
            "draining".into(),
            NodeFacts {
                live: false,
                ..Default::default()
            },
        );
        let p = plan(&[trunk(4, true)], &nodes);
        assert_eq!(share(&p, "draining"), (0, 0.0, false));
        assert_eq!(share(&p, "a"), (4, 10.0, true));
    }

    #[test]
    fn unlimited_trunks_get_no_share_limit() {
        let mut nodes: BTreeMap<String, NodeFacts> = BTreeMap::new();
        nodes.insert(
            "a".into(),
            NodeFacts {
                live: true,
                ..Default::default()
            },
        );
        let p = plan(&[trunk(0, false)], &nodes);
        assert_eq!(share(&p, "a").0, 0);
        assert!(!share(&p, "a").2);
    }
}
