//! Which node keeps each trunk's registration: rendezvous (highest random
//! weight) hashing over the live nodes, so an owner changes only when it
//! leaves, and then only its trunks move.

use super::shares::stable_hash;

/// The node that should register `trunk`, if any node is live.
pub fn owner<'a>(trunk: &str, nodes: &'a [String]) -> Option<&'a String> {
    nodes
        .iter()
        .max_by_key(|n| (stable_hash(&[trunk, n]), n.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_move_only_when_their_node_leaves() {
        let all: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
        let trunks: Vec<String> = (0..50).map(|i| format!("ns/t{i}")).collect();
        let before: Vec<_> = trunks.iter().map(|t| owner(t, &all).cloned()).collect();
        let gone = "n2";
        let rest: Vec<String> = all.iter().filter(|n| *n != gone).cloned().collect();
        for (t, b) in trunks.iter().zip(&before) {
            let a = owner(t, &rest).cloned();
            if b.as_deref() == Some(gone) {
                assert_ne!(a.as_deref(), Some(gone));
            } else {
                assert_eq!(&a, b, "{t} moved although its owner stayed");
            }
        }
        assert!(
            before.iter().any(|b| b.as_deref() == Some(gone)),
            "test needs a moving trunk"
        );
        assert_eq!(owner("t", &[]), None);
    }
}
