//! Matching a called number to a PhoneNumber: E.164 with or without `+`
//! first, then the carrier-specific destinationKey.

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use switchboard_proto::v1alpha1::PhoneNumber;

/// Looks numbers up by how carriers write them. Updated number by number:
/// adding and removing one costs a few hash operations.
#[derive(Debug, Default, Clone)]
pub struct NumberIndex {
    by_digits: HashMap<String, Claimants>,
    by_key: HashMap<String, Claimants>,
}

/// The numbers indexed under one form, ordered by id. The operator keeps
/// forms unique, but a node does not rely on it: the smallest id answers
/// (the first in the operator's id-ordered configuration), and removing it
/// lets the next one answer.
#[derive(Debug, Clone)]
enum Claimants {
    /// The usual case, without a list to allocate.
    One(Arc<PhoneNumber>),
    /// Ordered by id; never empty (the entry goes with its last claimant).
    Many(Vec<Arc<PhoneNumber>>),
}

impl Claimants {
    fn first(&self) -> &Arc<PhoneNumber> {
        match self {
            Claimants::One(n) => n,
            Claimants::Many(v) => &v[0],
        }
    }
}

/// The user part as a number: URI parameters (`;npdi`) and visual
/// separators (RFC 3966) removed.
pub fn clean_user(user: &str) -> String {
    let user = user.split(';').next().unwrap_or("");
    user.chars()
        .filter(|c| !matches!(c, '-' | '.' | '(' | ')' | ' '))
        .collect()
}

fn e164_digits(s: &str) -> Option<&str> {
    let d = s.strip_prefix('+').unwrap_or(s);
    (!d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())).then_some(d)
}

fn claim(map: &mut HashMap<String, Claimants>, form: &str, n: &Arc<PhoneNumber>) {
    let Some(c) = map.get_mut(form) else {
        map.insert(form.to_owned(), Claimants::One(n.clone()));
        return;
    };
    match c {
        Claimants::One(x) if x.id == n.id => *x = n.clone(),
        Claimants::One(x) => {
            let mut v = vec![x.clone(), n.clone()];
            v.sort_by(|a, b| a.id.cmp(&b.id));
            *c = Claimants::Many(v);
        }
        Claimants::Many(v) => {
            let at = v.partition_point(|x| x.id < n.id);
            if v.get(at).is_some_and(|x| x.id == n.id) {
                v[at] = n.clone();
            } else {
                v.insert(at, n.clone());
            }
        }
    }
}

fn unclaim(map: &mut HashMap<String, Claimants>, form: &str, id: &str) {
    let Some(c) = map.get_mut(form) else {
        return;
    };
    let left = match c {
        Claimants::One(x) if x.id == id => None,
        Claimants::One(_) => return,
        Claimants::Many(v) => {
            v.retain(|x| x.id != id);
            match v.as_slice() {
                [] => None,
                [only] => Some(Claimants::One(only.clone())),
                _ => return,
            }
        }
    };
    match left {
        Some(one) => *c = one,
        None => {
            map.remove(form);
        }
    }
}

impl NumberIndex {
    /// An index sized for about `numbers` numbers.
    pub fn with_capacity(numbers: usize) -> NumberIndex {
        NumberIndex {
            by_digits: HashMap::with_capacity(numbers),
            by_key: HashMap::new(),
        }
    }

    /// Indexes a number by its E.164 form and destination key. Add a
    /// number once; to change it, [`remove`](Self::remove) the old one
    /// first.
    pub fn add(&mut self, n: &Arc<PhoneNumber>) {
        if let Some(d) = e164_digits(&n.e164) {
            claim(&mut self.by_digits, d, n);
        }
        if !n.destination_key.is_empty() {
            claim(&mut self.by_key, &n.destination_key, n);
        }
    }

    /// Removes the entries `n` (as it was added) made.
    pub fn remove(&mut self, n: &PhoneNumber) {
        if let Some(d) = e164_digits(&n.e164) {
            unclaim(&mut self.by_digits, d, &n.id);
        }
        if !n.destination_key.is_empty() {
            unclaim(&mut self.by_key, &n.destination_key, &n.id);
        }
    }

    /// Finds the number for a called user part.
    pub fn lookup(&self, user: &str) -> Option<&Arc<PhoneNumber>> {
        let cleaned = clean_user(user);
        if let Some(d) = e164_digits(&cleaned)
            && let Some(c) = self.by_digits.get(d)
        {
            return Some(c.first());
        }
        self.by_key
            .get(user)
            .or_else(|| self.by_key.get(&cleaned))
            .map(Claimants::first)
    }

    /// Index entries (digits and keys), for tests.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_digits.len() + self.by_key.len()
    }

    /// True when nothing is indexed.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(id: &str, e164: &str, key: &str) -> Arc<PhoneNumber> {
        Arc::new(PhoneNumber {
            id: id.into(),
            e164: e164.into(),
            destination_key: key.into(),
            ..Default::default()
        })
    }

    fn id(idx: &NumberIndex, user: &str) -> Option<String> {
        idx.lookup(user).map(|n| n.id.clone())
    }

    #[test]
    fn matching_order() {
        let mut idx = NumberIndex::default();
        idx.add(&number("a", "+15551234567", ""));
        idx.add(&number("b", "+4930123456", "030123456"));
        assert_eq!(id(&idx, "+15551234567").as_deref(), Some("a"));
        assert_eq!(id(&idx, "15551234567").as_deref(), Some("a"));
        assert_eq!(id(&idx, "+1-555-123-4567").as_deref(), Some("a"));
        assert_eq!(id(&idx, "+15551234567;npdi").as_deref(), Some("a"));
        assert_eq!(id(&idx, "030123456").as_deref(), Some("b"));
        assert_eq!(id(&idx, "4930123456").as_deref(), Some("b"));
        assert_eq!(id(&idx, "5551234567"), None);
        assert_eq!(id(&idx, ""), None);
        assert_eq!(id(&idx, "alice"), None);
    }

    #[test]
    fn e164_wins_over_destination_key() {
        let mut idx = NumberIndex::default();
        idx.add(&number("a", "+15550000001", "15550000002"));
        idx.add(&number("b", "+15550000002", ""));
        assert_eq!(id(&idx, "15550000002").as_deref(), Some("b"));
        // Without the E.164 claimant the key answers again.
        idx.remove(&number("b", "+15550000002", ""));
        assert_eq!(id(&idx, "15550000002").as_deref(), Some("a"));
    }

    #[test]
    fn removal_leaves_nothing_behind() {
        let mut idx = NumberIndex::default();
        let a = number("a", "+15550000001", "k1");
        idx.add(&a);
        idx.remove(&a);
        assert_eq!(id(&idx, "+15550000001"), None);
        assert_eq!(id(&idx, "k1"), None);
        assert!(idx.is_empty());
    }

    #[test]
    fn shared_forms_answer_the_smallest_id_and_survive_its_removal() {
        let mut idx = NumberIndex::default();
        // Added out of id order: the answer does not depend on that order.
        let z = number("z", "+15550000001", "key");
        let a = number("a", "+15550000001", "key");
        idx.add(&z);
        idx.add(&a);
        assert_eq!(id(&idx, "15550000001").as_deref(), Some("a"));
        assert_eq!(id(&idx, "key").as_deref(), Some("a"));
        idx.remove(&a);
        assert_eq!(id(&idx, "15550000001").as_deref(), Some("z"));
        assert_eq!(id(&idx, "key").as_deref(), Some("z"));
        idx.remove(&z);
        assert!(idx.is_empty());
    }

    #[test]
    fn re_adding_a_number_replaces_its_entry() {
        let mut idx = NumberIndex::default();
        idx.add(&number("a", "+15550000001", ""));
        let changed = Arc::new(PhoneNumber {
            inbound: true,
            ..(*number("a", "+15550000001", "")).clone()
        });
        idx.add(&changed);
        assert!(idx.lookup("15550000001").is_some_and(|n| n.inbound));
        idx.remove(&changed);
        assert!(idx.is_empty(), "one entry per number and form");
    }
}
