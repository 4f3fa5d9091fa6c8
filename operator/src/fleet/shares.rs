//! Splitting each trunk's fleet-wide limits among the live media nodes so the
//! fleet never takes more than the trunk allows.
//!
//! The desired split is even (remainders go to nodes in an order hashed per
//! trunk, so different trunks favour different nodes). Moving from one split
//! to another is done safely: a node is granted more than it already has only
//! out of budget that the other nodes have provably released, i.e. budget not
//! covered by their acknowledged shares or by calls they still carry.

use std::collections::BTreeMap;

/// What the operator knows of one node for one trunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeUse {
    /// The share the node last acknowledged (its running configuration).
    pub acked: u32,
    /// Calls on the trunk the node reports in progress.
    pub active: u32,
}

/// A stable 64-bit hash of a tuple of strings: FNV-1a, finished with the
/// splitmix64 mixer for an even spread. Stable across builds and processes,
/// so every operator replica computes the same placement.
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The even split of `limit` among `nodes` (ids); sums to `limit` exactly.
pub fn even_split(trunk: &str, limit: u32, nodes: &[String]) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    if nodes.is_empty() {
        return out;
    }
    let n = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
    let (base, mut rem) = (limit / n, limit % n);
    let mut order: Vec<&String> = nodes.iter().collect();
    order.sort_by_key(|id| (stable_hash(&[trunk, id]), *id));
    for id in order {
        let extra = u32::from(rem > 0);
        rem = rem.saturating_sub(1);
        out.insert(id.clone(), base + extra);
    }
    out
}

/// The shares to send now: the desired share, but a node that would grow is
/// granted only what the others have released. `usage` holds every node that
/// may still hold budget (live or unreachable, not known gone).
pub fn grant(
    limit: u32,
    desired: &BTreeMap<String, u32>,
    usage: &BTreeMap<String, NodeUse>,
) -> BTreeMap<String, u32> {
    let reserved = |id: &String| usage.get(id).map(|u| u.acked.max(u.active)).unwrap_or(0);
    let total_reserved: u64 = usage.keys().map(|id| u64::from(reserved(id))).sum();
    desired
        .iter()
        .map(|(id, want)| {
            let mine = u64::from(reserved(id));
            let others = total_reserved - mine.min(total_reserved);
            let room = u64::from(limit).saturating_sub(others);
            let have = usage.get(id).map(|u| u.acked).unwrap_or(0);
            // Shrinking (or keeping) is always safe; growing only into room.
            let g = if *want <= have {
                *want
            } else {
                u64::from(*want).min(room.max(u64::from(have))) as u32
            };
            (id.clone(), g)
        })
        .collect()
}

/// Each node's share of a calls-per-second limit (rounded down to 1/1000 so
/// the sum never exceeds the limit).
pub fn cps_split(limit: u32, nodes: usize) -> f64 {
    if nodes == 0 {
        return 0.0;
    }
    (f64::from(limit) * 1000.0 / nodes as f64).floor() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn even_split_sums_to_the_limit() {
        for limit in [0, 1, 4, 5, 7, 100, 1001] {
            for n in 1..6 {
                let s = even_split("ns/t", limit, &ids(n));
                assert_eq!(s.values().sum::<u32>(), limit, "limit {limit} nodes {n}");
                let (min, max) = (
                    s.values().min().copied().unwrap_or(0),
                    s.values().max().copied().unwrap_or(0),
                );
                assert!(max - min <= 1);
            }
        }
        assert!(even_split("ns/t", 4, &[]).is_empty());
    }

    #[test]
    fn remainders_favour_different_nodes_for_different_trunks() {
        let nodes = ids(4);
        let winners: std::collections::BTreeSet<String> = (0..20)
            .map(|t| {
                let s = even_split(&format!("ns/t{t}"), 1, &nodes);
                s.into_iter()
                    .find(|(_, v)| *v == 1)
                    .map(|(k, _)| k)
                    .unwrap_or_default()
            })
            .collect();
        assert!(winners.len() > 1);
    }

    #[test]
    fn growth_waits_for_released_budget() {
        // One node had the whole budget of 4 and carries 3 calls; a second
        // node joins and the desired split is 2/2.
        let desired: BTreeMap<String, u32> = [("a".to_string(), 2), ("b".to_string(), 2)].into();
        let mut usage: BTreeMap<String, NodeUse> = [
            (
                "a".to_string(),
                NodeUse {
                    acked: 4,
                    active: 3,
                },
            ),
            ("b".to_string(), NodeUse::default()),
        ]
        .into();
        let g = grant(4, &desired, &usage);
        assert_eq!(g["a"], 2, "shrinking is immediate");
        assert_eq!(g["b"], 0, "b must wait until a releases");
        // a acknowledged 2 but still carries 3 calls: b may take 1.
        usage.insert(
            "a".into(),
            NodeUse {
                acked: 2,
                active: 3,
            },
        );
        assert_eq!(grant(4, &desired, &usage)["b"], 1);
        // a's calls ended: b gets its full share.
        usage.insert(
            "a".into(),
            NodeUse {
                acked: 2,
                active: 1,
            },
        );
        let g = grant(4, &desired, &usage);
        assert_eq!((g["a"], g["b"]), (2, 2));
    }

    #[test]
    fn a_gone_node_frees_its_budget_at_once() {
        let desired: BTreeMap<String, u32> = [("a".to_string(), 4)].into();
        let usage: BTreeMap<String, NodeUse> = [(
            "a".to_string(),
            NodeUse {
                acked: 2,
                active: 2,
            },
        )]
        .into();
        assert_eq!(grant(4, &desired, &usage)["a"], 4);
    }

    #[test]
    fn sum_of_grants_and_reservations_never_exceeds_the_limit() {
        // Exhaustive over small states.
        for a_acked in 0..=4 {
            for a_active in 0..=4 {
                for b_acked in 0..=(4 - a_acked) {
                    let usage: BTreeMap<String, NodeUse> = [
                        (
                            "a".to_string(),
                            NodeUse {
                                acked: a_acked,
                                active: a_active,
                            },
                        ),
                        (
                            "b".to_string(),
                            NodeUse {
                                acked: b_acked,
                                active: 0,
                            },
                        ),
                    ]
                    .into();
                    let desired = even_split("t", 4, &["a".into(), "b".into()]);
                    let g = grant(4, &desired, &usage);
                    // Each grant fits beside what the others hold.
                    assert!(g["b"] <= b_acked.max(4u32.saturating_sub(a_acked.max(a_active))));
                    assert!(g["a"] <= a_acked.max(4u32.saturating_sub(b_acked)));
                }
            }
        }
    }

    #[test]
    fn cps_shares_never_sum_above_the_limit() {
        for limit in [1, 3, 10, 7] {
            for n in 1..7 {
                assert!(cps_split(limit, n) * n as f64 <= f64::from(limit) + 1e-9);
            }
        }
    }
}
