//! Per-node configuration: the fleet-wide configuration with each trunk's
//! share of the limits and registration ownership filled in for one node.
//!
//! [`Planner`] keeps every node's trunk table and re-plans only the trunks
//! an event can have changed: those whose definition or acknowledged share
//! changed, every trunk when the node set or liveness changed, and the few
//! whose limit hand-over is still in progress (their grants follow the
//! nodes' calls). [`plan`] plans everything from scratch; it is the oracle
//! the planner is tested against.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use imbl::OrdMap;
use switchboard_proto::v1alpha1 as pb;

use super::owners::owner;
use super::shares::{NodeUse, cps_split, even_split, grant};

/// Trunks by id: one node's trunk table. A persistent map, so an unchanged
/// table is shared and two tables diff in time proportional to what differs.
pub type Trunks = OrdMap<String, Arc<pb::Trunk>>;

/// What planning needs to know of a node.
#[derive(Clone, Debug, Default)]
pub struct NodeFacts {
    /// Connected, reporting status and not draining: takes new calls.
    pub live: bool,
    /// Trunks of the configuration the node acknowledged last.
    pub acked_trunks: Trunks,
    /// Calls in progress by trunk id (inbound + outbound).
    pub active: BTreeMap<String, u32>,
}

fn acked_share(f: &NodeFacts, trunk: &str) -> u32 {
    f.acked_trunks
        .get(trunk)
        .and_then(|t| t.share.as_ref())
        .map(|s| s.max_concurrent_calls)
        .unwrap_or(0)
}

/// One trunk planned for every node.
struct TrunkPlan {
    /// By node, in the order of the facts.
    per_node: Vec<pb::Trunk>,
    /// True when the plan no longer depends on the nodes' calls: every node
    /// runs (has acknowledged) the share it is meant to have for good.
    settled: bool,
}

fn plan_trunk(t: &pb::Trunk, live: &[String], nodes: &BTreeMap<String, NodeFacts>) -> TrunkPlan {
    let limits = t.limits.unwrap_or_default();
    let mut settled = true;
    let calls = if limits.max_concurrent_calls > 0 {
        let desired_live = even_split(&t.id, limits.max_concurrent_calls, live);
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
        let granted = grant(limits.max_concurrent_calls, &desired, &usage);
        // Once every node has acknowledged its desired share, `grant` returns
        // exactly the desired split whatever the calls: nothing but a change
        // of the trunk, of the node set or of an acknowledgement moves it.
        settled = desired.iter().all(|(id, want)| {
            granted.get(id) == Some(want) && usage.get(id).map(|u| u.acked) == Some(*want)
        });
        Some(granted)
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
        owner(&t.id, live).cloned()
    } else {
        None
    };
    let per_node = nodes
        .iter()
        .map(|(id, f)| {
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
            mine
        })
        .collect();
    TrunkPlan { per_node, settled }
}

fn live_nodes(nodes: &BTreeMap<String, NodeFacts>) -> Vec<String> {
    nodes
        .iter()
        .filter(|(_, f)| f.live)
        .map(|(id, _)| id.clone())
        .collect()
}

/// The trunks each node should run, planned from scratch. Every node known
/// (live or not) gets an entry; nodes that are not live get no share and no
/// registrations. The oracle the incremental planner is tested against.
#[cfg(test)]
pub fn plan(
    base: &[pb::Trunk],
    nodes: &BTreeMap<String, NodeFacts>,
) -> BTreeMap<String, Vec<pb::Trunk>> {
    let live = live_nodes(nodes);
    let mut out: BTreeMap<String, Vec<pb::Trunk>> = nodes
        .keys()
        .map(|id| (id.clone(), Vec::with_capacity(base.len())))
        .collect();
    for t in base {
        let p = plan_trunk(t, &live, nodes);
        for (v, mine) in out.values_mut().zip(p.per_node) {
            v.push(mine);
        }
    }
    out
}

/// Adds to `dirty` the trunks whose entry differs between a node's previous
/// and new acknowledged table (O(change): the tables share structure).
pub fn mark_acked_changes(old: &Trunks, new: &Trunks, dirty: &mut BTreeSet<String>) {
    for d in old.diff(new) {
        dirty.insert(crate::routing::index::changed(d).0.clone());
    }
}

/// Every node's trunk table, kept up to date by re-planning only what an
/// event can have changed.
#[derive(Debug, Default)]
pub struct Planner {
    /// The nodes and their liveness the tables were planned for.
    nodes: Vec<(String, bool)>,
    tables: BTreeMap<String, Trunks>,
    /// Trunks whose limit hand-over is in progress: their grants follow the
    /// nodes' calls, so they are re-planned on every update.
    unsettled: BTreeSet<String>,
    planned: usize,
}

impl Planner {
    /// Whether [`Planner::update`] would plan anything for these inputs (so
    /// the caller can skip gathering the nodes' facts).
    pub fn has_work<'a>(
        &self,
        nodes: impl Iterator<Item = (&'a String, bool)>,
        dirty: &BTreeSet<String>,
    ) -> bool {
        !dirty.is_empty()
            || !self.unsettled.is_empty()
            || !nodes
                .map(|(id, live)| (id.as_str(), live))
                .eq(self.nodes.iter().map(|(id, live)| (id.as_str(), *live)))
    }

    /// Brings every node's table up to date with `base`. `dirty` names the
    /// trunks whose definition changed (added, changed or removed) or whose
    /// acknowledged share changed on some node since the last update.
    pub fn update(
        &mut self,
        base: &Trunks,
        dirty: &BTreeSet<String>,
        facts: &BTreeMap<String, NodeFacts>,
    ) {
        let nodes: Vec<(String, bool)> = facts.iter().map(|(id, f)| (id.clone(), f.live)).collect();
        let everything = nodes != self.nodes;
        if everything {
            self.tables.retain(|id, _| facts.contains_key(id));
            for id in facts.keys() {
                self.tables.entry(id.clone()).or_default();
            }
            self.nodes = nodes;
        }
        let todo: BTreeSet<String> = if everything {
            // Trunks gone from the base are in `dirty`; a table may also
            // hold trunks planned before a node was known.
            base.keys().cloned().chain(dirty.iter().cloned()).collect()
        } else {
            dirty.union(&self.unsettled).cloned().collect()
        };
        let live = live_nodes(facts);
        self.planned = 0;
        for id in &todo {
            let Some(t) = base.get(id) else {
                for table in self.tables.values_mut() {
                    table.remove(id);
                }
                self.unsettled.remove(id);
                continue;
            };
            self.planned += 1;
            let p = plan_trunk(t, &live, facts);
            if p.settled {
                self.unsettled.remove(id);
            } else {
                self.unsettled.insert(id.clone());
            }
            for (table, mine) in self.tables.values_mut().zip(p.per_node) {
                // Unchanged entries stay shared: the node's delta skips them.
                if table.get(id).map(Arc::as_ref) != Some(&mine) {
                    table.insert(id.clone(), Arc::new(mine));
                }
            }
        }
    }

    /// The trunk table of a node (empty for a node not planned for).
    pub fn table(&self, node: &str) -> Trunks {
        self.tables.get(node).cloned().unwrap_or_default()
    }

    /// How many trunks the last update planned.
    pub fn planned(&self) -> usize {
        self.planned
    }
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
            let t = pb::Trunk {
                share: Some(pb::NodeShare {
                    max_concurrent_calls: 2,
                    ..Default::default()
                }),
                ..trunk(4, true)
            };
            f.acked_trunks = [(t.id.clone(), Arc::new(t))].into_iter().collect();
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

    /// One step of the simulated fleet the planner is checked in.
    #[derive(Clone, Debug)]
    enum Op {
        /// Trunk `i` defined with this limit, cps and registration.
        Trunk(usize, u32, u32, bool),
        /// Trunk `i` deleted.
        DeleteTrunk(usize),
        /// Node `n` joins (or leaves the fleet).
        Node(usize, bool),
        /// Node `n` becomes live or not.
        Live(usize, bool),
        /// Node `n` acknowledges its current table.
        Ack(usize),
        /// Node `n` acknowledges the table it was given `k` updates ago.
        AckOld(usize, usize),
        /// Node `n` reports this many calls on trunk `i`.
        Calls(usize, usize, u32),
        /// Node `n` disconnects: no acknowledgement known.
        Lost(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0..4usize, 0..9u32, 0..3u32, any::<bool>())
                .prop_map(|(i, l, c, r)| Op::Trunk(i, l, c, r)),
            (0..4usize).prop_map(Op::DeleteTrunk),
            (0..4usize, any::<bool>()).prop_map(|(n, b)| Op::Node(n, b)),
            (0..4usize, any::<bool>()).prop_map(|(n, b)| Op::Live(n, b)),
            (0..4usize).prop_map(Op::Ack),
            (0..4usize).prop_map(Op::Ack),
            (0..4usize, 1..4usize).prop_map(|(n, k)| Op::AckOld(n, k)),
            (0..4usize, 0..4usize, 0..6u32).prop_map(|(n, i, c)| Op::Calls(n, i, c)),
            (0..4usize).prop_map(Op::Lost),
        ]
    }

    fn check(ops: &[Op]) -> Result<(), proptest::test_runner::TestCaseError> {
        use proptest::prop_assert_eq;
        let mut base = Trunks::new();
        let mut facts: BTreeMap<String, NodeFacts> = BTreeMap::new();
        let mut history: BTreeMap<String, Vec<Trunks>> = BTreeMap::new();
        let mut planner = Planner::default();
        let mut dirty = BTreeSet::new();
        let node = |n: usize| format!("node-{n}");
        for op in ops {
            let mut ack = |facts: &mut BTreeMap<String, NodeFacts>, id: String, t: Trunks| {
                if let Some(f) = facts.get_mut(&id) {
                    mark_acked_changes(&f.acked_trunks, &t, &mut dirty);
                    f.acked_trunks = t;
                }
            };
            match op.clone() {
                Op::Trunk(i, limit, cps, register) => {
                    let mut t = trunk(limit, register);
                    t.id = format!("ns/t{i}");
                    if let Some(l) = t.limits.as_mut() {
                        l.max_calls_per_second = cps;
                    }
                    dirty.insert(t.id.clone());
                    base.insert(t.id.clone(), Arc::new(t));
                }
                Op::DeleteTrunk(i) => {
                    let id = format!("ns/t{i}");
                    base.remove(&id);
                    dirty.insert(id);
                }
                Op::Node(n, true) => {
                    facts.entry(node(n)).or_default();
                }
                Op::Node(n, false) => {
                    facts.remove(&node(n));
                    history.remove(&node(n));
                }
                Op::Live(n, live) => {
                    if let Some(f) = facts.get_mut(&node(n)) {
                        f.live = live;
                    }
                }
                Op::Ack(n) => ack(&mut facts, node(n), planner.table(&node(n))),
                Op::AckOld(n, k) => {
                    let old = history
                        .get(&node(n))
                        .and_then(|h| h.iter().rev().nth(k).cloned());
                    if let Some(t) = old {
                        ack(&mut facts, node(n), t);
                    }
                }
                Op::Calls(n, i, c) => {
                    if let Some(f) = facts.get_mut(&node(n)) {
                        f.active.insert(format!("ns/t{i}"), c);
                    }
                }
                Op::Lost(n) => ack(&mut facts, node(n), Trunks::new()),
            }
            planner.update(&base, &std::mem::take(&mut dirty), &facts);
            let all: Vec<pb::Trunk> = base.values().map(|t| t.as_ref().clone()).collect();
            let want = plan(&all, &facts);
            for (id, trunks) in &want {
                let got: Vec<pb::Trunk> = planner
                    .table(id)
                    .values()
                    .map(|t| t.as_ref().clone())
                    .collect();
                prop_assert_eq!(&got, trunks, "node {} after {:?}", id, op);
                history
                    .entry(id.clone())
                    .or_default()
                    .push(planner.table(id));
            }
        }
        Ok(())
    }

    #[test]
    fn planner_matches_planning_from_scratch() {
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let config = Config {
            cases: 300,
            failure_persistence: None,
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[11; 32]);
        let mut runner = TestRunner::new_with_rng(config, rng);
        let strategy = proptest::collection::vec(op(), 1..80);
        if let Err(e) = runner.run(&strategy, |ops| check(&ops)) {
            panic!("{e}");
        }
    }

    #[test]
    fn a_trunk_change_re_plans_that_trunk_only() {
        let mut base = Trunks::new();
        for i in 0..100 {
            let mut t = trunk(4, false);
            t.id = format!("ns/t{i}");
            base.insert(t.id.clone(), Arc::new(t));
        }
        let mut facts: BTreeMap<String, NodeFacts> = BTreeMap::new();
        for n in ["a", "b"] {
            facts.insert(
                n.into(),
                NodeFacts {
                    live: true,
                    ..Default::default()
                },
            );
        }
        let mut planner = Planner::default();
        planner.update(&base, &BTreeSet::new(), &facts);
        assert_eq!(planner.planned(), 100, "a new node set plans everything");
        // Both nodes acknowledge: every hand-over is complete.
        let mut dirty = BTreeSet::new();
        for (id, f) in facts.iter_mut() {
            let t = planner.table(id);
            mark_acked_changes(&f.acked_trunks, &t, &mut dirty);
            f.acked_trunks = t;
        }
        planner.update(&base, &dirty, &facts);
        assert!(!planner.has_work(facts.iter().map(|(id, f)| (id, f.live)), &BTreeSet::new()));
        // Calls come and go on settled trunks: nothing to plan.
        facts
            .get_mut("a")
            .map(|f| f.active.insert("ns/t3".into(), 2));
        assert!(!planner.has_work(facts.iter().map(|(id, f)| (id, f.live)), &BTreeSet::new()));
        let before = planner.table("a");
        let mut t = trunk(8, false);
        t.id = "ns/t7".into();
        base.insert(t.id.clone(), Arc::new(t));
        planner.update(&base, &["ns/t7".to_string()].into(), &facts);
        assert_eq!(planner.planned(), 1);
        let after = planner.table("a");
        let changed: Vec<String> = before
            .diff(&after)
            .map(|d| crate::routing::index::changed(d).0.clone())
            .collect();
        assert_eq!(changed, vec!["ns/t7".to_string()]);
        // The limit went up: nodes may take their new share at once.
        assert_eq!(
            after["ns/t7"].share.map(|s| s.max_concurrent_calls),
            Some(4)
        );
    }
}
