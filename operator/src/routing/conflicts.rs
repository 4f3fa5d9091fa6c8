//! Two PhoneNumbers claiming one number: the older object (creation time,
//! then namespace/name) wins, so the outcome is the same on every run and on
//! every operator replica.

use std::collections::{BTreeMap, HashMap};

use super::{NumberInput, ObjectKey};

/// What a number claims: its E.164 digits and, when set, its destinationKey
/// (a carrier key must route to exactly one number too). The E.164 claim
/// comes first, so a number that loses both names the E.164 winner.
pub(super) fn claims(n: &NumberInput) -> Vec<String> {
    let mut out = vec![format!("e164:{}", n.spec.number)];
    if let Some(k) = &n.spec.destination_key {
        out.push(format!("key:{k}"));
    }
    out
}

/// Maps each losing number to the winner that beat it.
pub(super) fn losers<'a>(
    numbers: impl Iterator<Item = &'a NumberInput>,
) -> BTreeMap<ObjectKey, ObjectKey> {
    let numbers: Vec<&NumberInput> = numbers.collect();
    let mut first: HashMap<String, &NumberInput> = HashMap::new();
    for n in &numbers {
        for c in claims(n) {
            let e = first.entry(c).or_insert(n);
            if order(n) < order(e) {
                *e = n;
            }
        }
    }
    let mut out = BTreeMap::new();
    for n in &numbers {
        if let Some(w) = claims(n)
            .iter()
            .filter_map(|c| first.get(c))
            .find(|w| w.key != n.key)
        {
            out.insert(n.key.clone(), w.key.clone());
        }
    }
    out
}

/// Sort key of a claimant: objects without a creation time (files) sort by
/// name only, after every object that has one.
pub(super) type Order = (bool, Option<jiff::Timestamp>, ObjectKey);

/// The claimant's sort key; the smallest wins.
pub(super) fn order(n: &NumberInput) -> Order {
    (n.created.is_none(), n.created, n.key.clone())
}
