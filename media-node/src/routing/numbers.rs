//! Matching a called number to a PhoneNumber: E.164 with or without `+`
//! first, then the carrier-specific destinationKey.

use hashbrown::hash_map::EntryRef;

/// Forms to claimants. hashbrown's, for `entry_ref`: a new form is hashed
/// once and its key allocated only when it is inserted.
type HashMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;

use switchboard_proto::v1alpha1::PhoneNumber;

/// A number's place in the routing table's storage.
pub type Slot = u32;

/// The ids of the numbers in their slots: the index orders claimants by id
/// without holding a copy of it.
pub trait Ids {
    /// The id of the number in `slot` ("" for a free slot).
    fn id(&self, slot: Slot) -> &str;
}

/// Looks numbers up by how carriers write them. Updated number by number:
/// adding and removing one costs a few hash operations.
#[derive(Debug, Default)]
pub struct NumberIndex {
    by_digits: HashMap<String, Claimants>,
    by_key: HashMap<String, Claimants>,
}

/// The numbers indexed under one form, ordered by id. The operator keeps
/// forms unique, but a node does not rely on it: the smallest id answers
/// (the first in the operator's id-ordered configuration), and removing it
/// lets the next one answer.
#[derive(Debug)]
enum Claimants {
    /// The usual case, without a list to allocate.
    One(Slot),
    /// Ordered by id; never empty (the entry goes with its last claimant).
    Many(Vec<Slot>),
}

impl Claimants {
    fn first(&self) -> Option<Slot> {
        match self {
            Claimants::One(n) => Some(*n),
            Claimants::Many(v) => v.first().copied(),
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

fn claim(map: &mut HashMap<String, Claimants>, form: &str, slot: Slot, ids: &impl Ids) {
    let c = match map.entry_ref(form) {
        EntryRef::Vacant(v) => {
            v.insert(Claimants::One(slot));
            return;
        }
        EntryRef::Occupied(o) => o.into_mut(),
    };
    match c {
        Claimants::One(x) if *x == slot => {}
        Claimants::One(x) => {
            let mut v = vec![*x, slot];
            v.sort_by(|a, b| ids.id(*a).cmp(ids.id(*b)));
            *c = Claimants::Many(v);
        }
        Claimants::Many(v) => {
            if !v.contains(&slot) {
                let id = ids.id(slot);
                let at = v.partition_point(|x| ids.id(*x) < id);
                v.insert(at, slot);
            }
        }
    }
}

fn unclaim(map: &mut HashMap<String, Claimants>, form: &str, slot: Slot) {
    let Some(c) = map.get_mut(form) else {
        return;
    };
    let left = match c {
        Claimants::One(x) if *x == slot => None,
        Claimants::One(_) => return,
        Claimants::Many(v) => {
            v.retain(|x| *x != slot);
            match v.as_slice() {
                [] => None,
                [only] => Some(Claimants::One(*only)),
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
            by_digits: HashMap::with_capacity_and_hasher(numbers, Default::default()),
            by_key: HashMap::default(),
        }
    }

    /// Indexes `n`, stored in `slot`, by its E.164 form and destination
    /// key. To change a number, [`remove`](Self::remove) it as it was
    /// first; `ids` must already give `n`'s id for `slot`.
    pub fn add(&mut self, slot: Slot, n: &PhoneNumber, ids: &impl Ids) {
        if let Some(d) = e164_digits(&n.e164) {
            claim(&mut self.by_digits, d, slot, ids);
        }
        if !n.destination_key.is_empty() {
            claim(&mut self.by_key, &n.destination_key, slot, ids);
        }
    }

    /// Removes the entries `n` (as it was added in `slot`) made.
    pub fn remove(&mut self, slot: Slot, n: &PhoneNumber) {
        if let Some(d) = e164_digits(&n.e164) {
            unclaim(&mut self.by_digits, d, slot);
        }
        if !n.destination_key.is_empty() {
            unclaim(&mut self.by_key, &n.destination_key, slot);
        }
    }

    /// The slot of the number for a called user part.
    pub fn lookup(&self, user: &str) -> Option<Slot> {
        let cleaned = clean_user(user);
        if let Some(d) = e164_digits(&cleaned)
            && let Some(c) = self.by_digits.get(d)
        {
            return c.first();
        }
        self.by_key
            .get(user)
            .or_else(|| self.by_key.get(&cleaned))
            .and_then(Claimants::first)
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

    /// Numbers in slots, as the routing table stores them.
    #[derive(Default)]
    struct Store(Vec<PhoneNumber>);

    impl Ids for Store {
        fn id(&self, slot: Slot) -> &str {
            self.0.get(slot as usize).map_or("", |n| n.id.as_str())
        }
    }

    impl Store {
        /// Stores a number and indexes it.
        fn add(&mut self, idx: &mut NumberIndex, id: &str, e164: &str, key: &str) -> Slot {
            self.0.push(PhoneNumber {
                id: id.into(),
                e164: e164.into(),
                destination_key: key.into(),
                ..Default::default()
            });
            let slot = (self.0.len() - 1) as Slot;
            idx.add(slot, &self.0[slot as usize], self);
            slot
        }

        fn remove(&self, idx: &mut NumberIndex, slot: Slot) {
            idx.remove(slot, &self.0[slot as usize]);
        }
    }

    fn id(idx: &NumberIndex, store: &Store, user: &str) -> Option<String> {
        idx.lookup(user).map(|s| store.id(s).to_owned())
    }

    #[test]
    fn matching_order() {
        let (mut idx, mut st) = (NumberIndex::default(), Store::default());
        st.add(&mut idx, "a", "+15551234567", "");
        st.add(&mut idx, "b", "+4930123456", "030123456");
        let id = |u: &str| id(&idx, &st, u);
        assert_eq!(id("+15551234567").as_deref(), Some("a"));
        assert_eq!(id("15551234567").as_deref(), Some("a"));
        assert_eq!(id("+1-555-123-4567").as_deref(), Some("a"));
        assert_eq!(id("+15551234567;npdi").as_deref(), Some("a"));
        assert_eq!(id("030123456").as_deref(), Some("b"));
        assert_eq!(id("4930123456").as_deref(), Some("b"));
        assert_eq!(id("5551234567"), None);
        assert_eq!(id(""), None);
        assert_eq!(id("alice"), None);
    }

    #[test]
    fn e164_wins_over_destination_key() {
        let (mut idx, mut st) = (NumberIndex::default(), Store::default());
        st.add(&mut idx, "a", "+15550000001", "15550000002");
        let b = st.add(&mut idx, "b", "+15550000002", "");
        assert_eq!(id(&idx, &st, "15550000002").as_deref(), Some("b"));
        // Without the E.164 claimant the key answers again.
        st.remove(&mut idx, b);
        assert_eq!(id(&idx, &st, "15550000002").as_deref(), Some("a"));
    }

    #[test]
    fn removal_leaves_nothing_behind() {
        let (mut idx, mut st) = (NumberIndex::default(), Store::default());
        let a = st.add(&mut idx, "a", "+15550000001", "k1");
        st.remove(&mut idx, a);
        assert_eq!(id(&idx, &st, "+15550000001"), None);
        assert_eq!(id(&idx, &st, "k1"), None);
        assert!(idx.is_empty());
    }

    #[test]
    fn shared_forms_answer_the_smallest_id_and_survive_its_removal() {
        let (mut idx, mut st) = (NumberIndex::default(), Store::default());
        // Added out of id order: the answer does not depend on that order.
        let z = st.add(&mut idx, "z", "+15550000001", "key");
        let m = st.add(&mut idx, "m", "+15550000001", "key");
        let a = st.add(&mut idx, "a", "+15550000001", "key");
        assert_eq!(id(&idx, &st, "15550000001").as_deref(), Some("a"));
        assert_eq!(id(&idx, &st, "key").as_deref(), Some("a"));
        st.remove(&mut idx, a);
        assert_eq!(id(&idx, &st, "15550000001").as_deref(), Some("m"));
        st.remove(&mut idx, m);
        assert_eq!(id(&idx, &st, "15550000001").as_deref(), Some("z"));
        assert_eq!(id(&idx, &st, "key").as_deref(), Some("z"));
        st.remove(&mut idx, z);
        assert!(idx.is_empty());
    }

    #[test]
    fn re_adding_a_number_in_its_slot_keeps_one_entry() {
        let (mut idx, mut st) = (NumberIndex::default(), Store::default());
        let a = st.add(&mut idx, "a", "+15550000001", "");
        idx.add(a, &st.0[a as usize], &st);
        assert_eq!(idx.lookup("15550000001"), Some(a));
        st.remove(&mut idx, a);
        assert!(idx.is_empty(), "one entry per number and form");
    }
}
