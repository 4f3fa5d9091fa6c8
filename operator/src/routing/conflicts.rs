//! Two PhoneNumbers claiming one number: the older object (creation time,
//! then namespace/name) wins, so the outcome is the same on every run and on
//! every operator replica.

use std::collections::{BTreeMap, HashMap};

use super::{NumberInput, ObjectKey};

/// Maps each losing number to the winner that beat it.
pub(super) fn losers<'a>(
    numbers: impl Iterator<Item = &'a NumberInput>,
) -> BTreeMap<ObjectKey, ObjectKey> {
    // Claims: the E.164 digits, and the destinationKey when set (a carrier
    // key must route to exactly one number too).
    let mut claims: HashMap<String, Vec<&NumberInput>> = HashMap::new();
    for n in numbers {
        claims
            .entry(format!("e164:{}", n.spec.number))
            .or_default()
            .push(n);
        if let Some(k) = &n.spec.destination_key {
            claims.entry(format!("key:{k}")).or_default().push(n);
        }
    }
    let mut out = BTreeMap::new();
    for mut claimants in claims.into_values().filter(|c| c.len() > 1) {
        claimants.sort_by(|a, b| order(a).cmp(&order(b)));
        let winner = claimants[0].key.clone();
        for loser in &claimants[1..] {
            out.entry(loser.key.clone())
                .or_insert_with(|| winner.clone());
        }
    }
    out
}

/// Sort key: objects without a creation time (files) sort by name only,
/// after every object that has one.
fn order(n: &NumberInput) -> (bool, Option<jiff::Timestamp>, &ObjectKey) {
    (n.created.is_none(), n.created, &n.key)
}
