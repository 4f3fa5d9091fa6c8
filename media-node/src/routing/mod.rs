//! The routing table of the configuration in use: trunks by id, the source
//! ACL, numbers by id and the number index. A delta changes it entry by
//! entry: a one-number change to 100,000 numbers touches one number.

pub mod acl;
pub(crate) mod numbers;
pub mod stored;

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use foldhash::{HashMap, HashSet};
use hashbrown::HashTable;
use switchboard_proto::v1alpha1::{
    Codec, ConfigDelta, PhoneNumber, RoutingConfig, RoutingConfigView, Trunk,
};

use numbers::{Ids, Slot};
pub use stored::StoredNumber;

/// An indexed configuration. Trunks are `Arc`s so a reader takes one out of
/// a short read section by cloning a pointer; a reader decodes the number it
/// needs (once per call).
///
/// Numbers live in slots, each as its encoded message ([`StoredNumber`]):
/// a snapshot's numbers stay slices of the request that brought them, and
/// every index refers to a slot. Decoded, 100,000 numbers held some 60 MB
/// on every node.
#[derive(Debug, Default)]
pub struct RoutingTable {
    version: u64,
    trunks: HashMap<String, Arc<Trunk>>,
    numbers: Slots,
    /// The slot of every number, found by id.
    by_id: HashTable<Slot>,
    hasher: foldhash::fast::RandomState,
    acl: acl::Acl,
    index: numbers::NumberIndex,
    /// Numbers by primary trunk id, so removing a trunk finds the numbers
    /// that still name it without scanning every number.
    by_trunk: HashMap<String, HashSet<Slot>>,
}

/// Number storage; `None` marks a free slot, reused by the next new number.
#[derive(Debug, Default)]
struct Slots {
    all: Vec<Option<StoredNumber>>,
    free: Vec<Slot>,
}

impl Slots {
    fn get(&self, slot: Slot) -> Option<&StoredNumber> {
        self.all.get(slot as usize)?.as_ref()
    }

    /// Stores a new number in a free slot, else a new one.
    fn put(&mut self, n: StoredNumber) -> Slot {
        if let Some(slot) = self.free.pop()
            && let Some(free) = self.all.get_mut(slot as usize)
        {
            *free = Some(n);
            return slot;
        }
        self.all.push(Some(n));
        slot_at(self.all.len() - 1)
    }

    /// Empties a slot, returning what it held.
    fn take(&mut self, slot: Slot) -> Option<StoredNumber> {
        let n = self.all.get_mut(slot as usize)?.take();
        if n.is_some() {
            self.free.push(slot);
        }
        n
    }
}

impl Ids for Slots {
    fn id(&self, slot: Slot) -> &str {
        self.get(slot).map_or("", StoredNumber::id)
    }
}

/// Slots are counted in `u32`: a configuration message (at most
/// `MAX_MESSAGE_BYTES`, a few bytes per number at the least) holds far
/// fewer numbers.
fn slot_at(i: usize) -> Slot {
    Slot::try_from(i).unwrap_or(Slot::MAX)
}

impl RoutingTable {
    /// Builds the table of a decoded configuration (a file's, or a test's):
    /// each number is upserted in order, so a repeated id replaces the
    /// earlier entry.
    pub fn build(cfg: RoutingConfig) -> RoutingTable {
        let mut t = RoutingTable::empty(cfg.version, cfg.numbers.len());
        for tr in cfg.trunks {
            t.upsert_trunk(tr);
        }
        for n in cfg.numbers {
            t.upsert_number(n);
        }
        t
    }

    /// An empty table at `version`, sized for `numbers` numbers (a
    /// snapshot's, filled by [`insert_new`](Self::insert_new)).
    pub fn empty(version: u64, numbers: usize) -> RoutingTable {
        RoutingTable {
            version,
            by_id: HashTable::with_capacity(numbers),
            index: numbers::NumberIndex::with_capacity(numbers),
            numbers: Slots {
                all: Vec::with_capacity(numbers),
                free: Vec::new(),
            },
            ..Default::default()
        }
    }

    /// Adds a number whose id is not in the table yet; `decoded` is `n`
    /// decoded. False (and nothing added) when the id is taken: hashing the
    /// id once serves both the check and the insert.
    pub fn insert_new(&mut self, n: StoredNumber, decoded: &PhoneNumber) -> bool {
        let slot = self.numbers.put(n);
        let (numbers, hasher) = (&self.numbers, &self.hasher);
        let id = numbers.id(slot);
        let entry = self.by_id.entry(
            hasher.hash_one(id),
            |s| numbers.id(*s) == id,
            |s| hasher.hash_one(numbers.id(*s)),
        );
        match entry {
            hashbrown::hash_table::Entry::Occupied(_) => {
                self.numbers.take(slot);
                false
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(slot);
                self.link(slot, decoded);
                true
            }
        }
    }

    /// Applies a delta in place. The caller checked it
    /// (`control::validate_delta`) and its base version: applying cannot
    /// fail halfway. Removals come before upserts, as in
    /// `switchboard_proto::delta::apply_in_place`.
    pub fn apply_delta(&mut self, d: ConfigDelta) {
        for id in &d.remove_numbers {
            self.remove_number(id);
        }
        for id in &d.remove_trunks {
            self.remove_trunk(id);
        }
        for t in d.upsert_trunks {
            self.upsert_trunk(t);
        }
        for n in d.upsert_numbers {
            self.upsert_number(n);
        }
        self.version = d.version;
    }

    /// Adds or replaces a trunk, with its source networks.
    pub fn upsert_trunk(&mut self, t: Trunk) {
        let mut cidrs = Vec::new();
        for src in t.inbound.iter().flat_map(|i| i.allowed_sources.iter()) {
            match acl::Cidr::parse(src) {
                Ok(c) => cidrs.push(c),
                Err(e) => {
                    tracing::warn!(trunk = %t.id, error = %e, "skipping invalid allowed source")
                }
            }
        }
        self.acl.set(&t.id, cidrs);
        self.trunks.insert(t.id.clone(), Arc::new(t));
    }

    /// Removes a trunk and its source networks; numbers naming it stay
    /// (validation refuses a change that leaves any).
    pub fn remove_trunk(&mut self, id: &str) {
        self.acl.remove(id);
        self.trunks.remove(id);
    }

    /// Adds or replaces a number; a replaced number's old index entries go.
    pub fn upsert_number(&mut self, n: PhoneNumber) {
        let stored = StoredNumber::encode(&n);
        match self.slot_of(&n.id) {
            Some(slot) => self.replace(slot, stored, &n),
            None => {
                self.insert_new(stored, &n);
            }
        }
    }

    /// Removes a number and its index entries (no-op when unknown).
    pub fn remove_number(&mut self, id: &str) {
        let hash = self.hasher.hash_one(id);
        let numbers = &self.numbers;
        let Ok(entry) = self.by_id.find_entry(hash, |s| numbers.id(*s) == id) else {
            return;
        };
        let (slot, _) = entry.remove();
        self.unlink(slot);
        self.numbers.take(slot);
    }

    /// The slot holding the number `id`.
    fn slot_of(&self, id: &str) -> Option<Slot> {
        let hash = self.hasher.hash_one(id);
        self.by_id
            .find(hash, |s| self.numbers.id(*s) == id)
            .copied()
    }

    /// Puts `n` (with the same id; `decoded` is it decoded) in the place of
    /// the number in `slot`.
    fn replace(&mut self, slot: Slot, n: StoredNumber, decoded: &PhoneNumber) {
        self.unlink(slot);
        if let Some(held) = self.numbers.all.get_mut(slot as usize) {
            *held = Some(n);
        }
        self.link(slot, decoded);
    }

    /// Adds the number in `slot` (`n`, decoded) to the number index and its
    /// trunk's set.
    fn link(&mut self, slot: Slot, n: &PhoneNumber) {
        self.index.add(slot, n, &self.numbers);
        match self.by_trunk.get_mut(&n.trunk_id) {
            Some(on) => {
                on.insert(slot);
            }
            None => {
                self.by_trunk
                    .insert(n.trunk_id.clone(), HashSet::from_iter([slot]));
            }
        }
    }

    /// Removes what [`link`](Self::link) added for the number in `slot`
    /// (decoding it: only a change or a removal comes here).
    fn unlink(&mut self, slot: Slot) {
        let Some(n) = self.numbers.get(slot).map(StoredNumber::decode) else {
            return;
        };
        self.index.remove(slot, &n);
        if let Some(on) = self.by_trunk.get_mut(&n.trunk_id) {
            on.remove(&slot);
            if on.is_empty() {
                self.by_trunk.remove(&n.trunk_id);
            }
        }
    }

    /// The configuration version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A trunk by id.
    pub fn trunk(&self, id: &str) -> Option<&Arc<Trunk>> {
        self.trunks.get(id)
    }

    /// Every trunk, in no particular order.
    pub fn trunks(&self) -> impl Iterator<Item = &Arc<Trunk>> {
        self.trunks.values()
    }

    /// Trunks configured.
    pub fn trunk_count(&self) -> usize {
        self.trunks.len()
    }

    /// Numbers configured.
    pub fn number_count(&self) -> usize {
        self.by_id.len()
    }

    /// Ids of the numbers whose primary trunk is `trunk_id`, by id (sorted
    /// here: only a trunk's removal asks, and it looks at them all).
    pub fn numbers_on_trunk(&self, trunk_id: &str) -> impl Iterator<Item = &str> {
        let mut ids: Vec<&str> = self
            .by_trunk
            .get(trunk_id)
            .into_iter()
            .flat_map(|on| on.iter().map(|s| self.numbers.id(*s)))
            .collect();
        ids.sort_unstable();
        ids.into_iter()
    }

    /// Trunk ids whose carriers may send from `ip`, by id.
    pub fn trunks_for_source(&self, ip: IpAddr) -> Vec<&str> {
        self.acl.trunks_for(ip)
    }

    /// True when some trunk's carriers may send from `ip`.
    pub fn allows_source(&self, ip: IpAddr) -> bool {
        self.acl.allows(ip)
    }

    /// The number a called user part designates.
    pub fn number_for(&self, user: &str) -> Option<PhoneNumber> {
        self.index
            .lookup(user)
            .and_then(|s| self.numbers.get(s))
            .map(StoredNumber::decode)
    }

    /// A number by its id.
    pub fn number_by_id(&self, id: &str) -> Option<PhoneNumber> {
        self.slot_of(id)
            .and_then(|s| self.numbers.get(s))
            .map(StoredNumber::decode)
    }

    /// The number an outbound call's `from` names: its id, else its E.164
    /// form (with or without `+` and separators) or destination key.
    pub fn caller_number(&self, from: &str) -> Option<PhoneNumber> {
        self.number_by_id(from).or_else(|| self.number_for(from))
    }

    /// True when the table holds exactly `cfg` (a re-sent snapshot). A
    /// number whose bytes differ is decoded and compared: the same number
    /// may be encoded differently (map entries in another order).
    pub fn matches(&self, cfg: &RoutingConfigView) -> bool {
        self.version == cfg.version
            && self.trunks.len() == cfg.trunks.len()
            && self.number_count() == cfg.numbers.len()
            && cfg
                .trunks
                .iter()
                .all(|t| self.trunks.get(&t.id).is_some_and(|have| **have == *t))
            && cfg.numbers.iter().all(|wire| self.holds(wire))
    }

    /// True when the number encoded in `wire` is in the table as it is.
    fn holds(&self, wire: &[u8]) -> bool {
        let Some(id) = stored::wire_id(wire) else {
            return false;
        };
        let Some(have) = self.slot_of(id).and_then(|s| self.numbers.get(s)) else {
            return false;
        };
        have.wire() == wire
            || <PhoneNumber as prost::Message>::decode(wire).is_ok_and(|n| n == have.decode())
    }

    /// The slot of a number, for tests that check nothing was moved.
    #[cfg(test)]
    fn slot_of_id(&self, id: &str) -> Option<Slot> {
        self.slot_of(id)
    }
}

/// The trunk's codec preference, defaulting to PCMU then PCMA.
pub fn codec_prefs(t: &Trunk) -> Vec<Codec> {
    let prefs: Vec<Codec> = t
        .media
        .as_ref()
        .map(|m| m.codecs().filter(|c| *c != Codec::Unspecified).collect())
        .unwrap_or_default();
    if prefs.is_empty() {
        vec![Codec::Pcmu, Codec::Pcma]
    } else {
        prefs
    }
}

/// True when RFC 4733 telephone-events should be negotiated.
pub fn wants_rfc4733(t: &Trunk) -> bool {
    use switchboard_proto::v1alpha1::DtmfMode;
    !matches!(t.media.as_ref().map(|m| m.dtmf()), Some(DtmfMode::Info))
}

/// This node's share of a trunk's concurrent calls: `None` when the trunk
/// has no limit, else the share the operator gave this node (0 when none).
pub fn channel_share(trunk: &Trunk) -> Option<usize> {
    let limited = trunk
        .limits
        .as_ref()
        .is_some_and(|l| l.max_concurrent_calls > 0);
    limited.then(|| {
        trunk
            .share
            .as_ref()
            .map(|s| s.max_concurrent_calls as usize)
            .unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use switchboard_proto::v1alpha1::Inbound;

    fn trunk(id: &str, sources: &[&str]) -> Trunk {
        Trunk {
            id: id.into(),
            enabled: true,
            inbound: Some(Inbound {
                enabled: true,
                allowed_sources: sources.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn number(id: &str, e164: &str, trunk_id: &str) -> PhoneNumber {
        PhoneNumber {
            id: id.into(),
            e164: e164.into(),
            trunk_id: trunk_id.into(),
            inbound: true,
            ..Default::default()
        }
    }

    fn table() -> RoutingTable {
        RoutingTable::build(RoutingConfig {
            version: 1,
            trunks: vec![
                trunk("ns/a", &["10.0.0.0/8"]),
                trunk("ns/b", &["192.168.0.0/16"]),
            ],
            numbers: vec![
                number("ns/one", "+15550000001", "ns/a"),
                number("ns/two", "+15550000002", "ns/a"),
                number("ns/three", "+15550000003", "ns/b"),
            ],
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn called(t: &RoutingTable, user: &str) -> Option<String> {
        t.number_for(user).map(|n| n.id)
    }

    fn on(t: &RoutingTable, trunk: &str) -> Vec<String> {
        t.numbers_on_trunk(trunk).map(str::to_owned).collect()
    }

    #[test]
    fn lookups_by_id_number_and_caller() {
        let t = table();
        assert_eq!(t.version(), 1);
        assert_eq!((t.trunk_count(), t.number_count()), (2, 3));
        assert_eq!(
            t.number_by_id("ns/two").map(|n| n.e164).as_deref(),
            Some("+15550000002")
        );
        assert!(t.number_by_id("ns/none").is_none());
        assert_eq!(called(&t, "+1-555-000-0003").as_deref(), Some("ns/three"));
        // A call's `from`: the id, the E.164 form or its digits.
        for from in ["ns/one", "+15550000001", "15550000001"] {
            assert_eq!(
                t.caller_number(from).map(|n| n.id).as_deref(),
                Some("ns/one"),
                "{from}"
            );
        }
        assert!(t.caller_number("+15559999999").is_none());
        assert_eq!(t.trunk("ns/b").map(|t| t.id.as_str()), Some("ns/b"));
        assert_eq!(on(&t, "ns/a"), ["ns/one", "ns/two"]);
    }

    #[test]
    fn a_snapshot_builds_the_table_upserting_would() {
        // Out of id order, a repeated id (its later entry wins), two ids on
        // one number's digits, numbers on two trunks.
        let numbers = vec![
            number("ns/c", "+15550000003", "ns/a"),
            number("ns/a", "+15550000001", "ns/b"),
            number("ns/b", "+15550000001", "ns/a"),
            PhoneNumber {
                destination_key: "k1".into(),
                ..number("ns/c", "+15550000033", "ns/b")
            },
            number("ns/d", "+15550000004", "ns/a"),
        ];
        let cfg = RoutingConfig {
            version: 3,
            trunks: vec![trunk("ns/a", &["10.0.0.0/8"]), trunk("ns/b", &[])],
            numbers: numbers.clone(),
        };
        let built = RoutingTable::build(cfg.clone());
        let mut upserted = RoutingTable {
            version: 3,
            ..Default::default()
        };
        for t in cfg.trunks {
            upserted.upsert_trunk(t);
        }
        for n in numbers {
            upserted.upsert_number(n);
        }
        assert_eq!(built.number_count(), 4);
        for user in [
            "15550000001",
            "15550000003",
            "15550000033",
            "k1",
            "15550000004",
        ] {
            assert_eq!(called(&built, user), called(&upserted, user), "{user}");
        }
        assert_eq!(called(&built, "15550000001").as_deref(), Some("ns/a"));
        assert_eq!(called(&built, "15550000003"), None, "replaced entry gone");
        for trunk in ["ns/a", "ns/b"] {
            assert_eq!(on(&built, trunk), on(&upserted, trunk), "{trunk}");
        }
        assert_eq!(on(&built, "ns/a"), ["ns/b", "ns/d"]);
        assert_eq!(
            built.number_by_id("ns/c").map(|n| n.e164).as_deref(),
            Some("+15550000033")
        );
    }

    #[test]
    fn a_changed_number_loses_its_old_index_entries() {
        let mut t = table();
        let kept = t.slot_of_id("ns/three").expect("three");
        t.apply_delta(ConfigDelta {
            base_version: 1,
            version: 2,
            upsert_numbers: vec![
                // New digits, a key, and another trunk.
                PhoneNumber {
                    destination_key: "0301234".into(),
                    ..number("ns/one", "+15550000011", "ns/b")
                },
                number("ns/four", "+15550000004", "ns/b"),
            ],
            remove_numbers: vec!["ns/two".into()],
            ..Default::default()
        });
        assert_eq!(t.version(), 2);
        assert_eq!(t.number_count(), 3);
        assert_eq!(called(&t, "15550000001"), None, "old digits gone");
        assert_eq!(called(&t, "15550000011").as_deref(), Some("ns/one"));
        assert_eq!(called(&t, "0301234").as_deref(), Some("ns/one"));
        assert_eq!(called(&t, "15550000002"), None, "removed");
        assert!(t.number_by_id("ns/two").is_none());
        assert_eq!(called(&t, "15550000004").as_deref(), Some("ns/four"));
        assert!(on(&t, "ns/a").is_empty());
        assert_eq!(on(&t, "ns/b"), ["ns/four", "ns/one", "ns/three"]);
        // Untouched entries stay in their slot: nothing was rebuilt.
        assert_eq!(t.slot_of_id("ns/three"), Some(kept));
        // Removing the key's owner empties the key.
        t.remove_number("ns/one");
        assert_eq!(called(&t, "0301234"), None);
        t.remove_number("ns/unknown");
        assert_eq!(t.number_count(), 2);
    }

    #[test]
    fn a_removed_numbers_slot_serves_the_next_new_number() {
        let mut t = table();
        let two = t.slot_of_id("ns/two").expect("two");
        t.remove_number("ns/two");
        t.upsert_number(number("ns/five", "+15550000005", "ns/b"));
        assert_eq!(t.slot_of_id("ns/five"), Some(two), "the freed slot");
        assert!(t.number_by_id("ns/two").is_none());
        assert_eq!(called(&t, "15550000002"), None);
        assert_eq!(called(&t, "15550000005").as_deref(), Some("ns/five"));
        assert_eq!(on(&t, "ns/a"), ["ns/one"]);
        assert_eq!(on(&t, "ns/b"), ["ns/five", "ns/three"]);
        assert_eq!(t.number_count(), 3);
        // Removing it again frees the slot once: the next two new numbers
        // get it and a new one.
        t.remove_number("ns/five");
        t.remove_number("ns/five");
        t.upsert_number(number("ns/six", "+15550000006", "ns/a"));
        t.upsert_number(number("ns/seven", "+15550000007", "ns/a"));
        assert_eq!(t.slot_of_id("ns/six"), Some(two));
        assert_ne!(t.slot_of_id("ns/seven"), Some(two));
        assert_eq!(called(&t, "15550000006").as_deref(), Some("ns/six"));
        assert_eq!(called(&t, "15550000007").as_deref(), Some("ns/seven"));
    }

    #[test]
    fn a_shared_number_stays_reachable_after_one_claimant_goes() {
        let mut t = table();
        // Two ids with the same digits (the operator refuses this; the node
        // stays deterministic): the smaller id answers, the other takes
        // over when it goes, and a changed claimant releases the digits.
        t.upsert_number(number("ns/zzz", "+15550000001", "ns/a"));
        assert_eq!(called(&t, "15550000001").as_deref(), Some("ns/one"));
        t.remove_number("ns/one");
        assert_eq!(called(&t, "15550000001").as_deref(), Some("ns/zzz"));
        t.upsert_number(number("ns/one", "+15550000001", "ns/a"));
        assert_eq!(called(&t, "15550000001").as_deref(), Some("ns/one"));
        t.upsert_number(number("ns/one", "+15550000099", "ns/a"));
        assert_eq!(called(&t, "15550000001").as_deref(), Some("ns/zzz"));
        assert_eq!(called(&t, "15550000099").as_deref(), Some("ns/one"));
    }

    #[test]
    fn trunk_changes_update_the_source_acl() {
        let mut t = table();
        assert_eq!(t.trunks_for_source(ip("10.1.2.3")), ["ns/a"]);
        assert!(t.allows_source(ip("192.168.1.1")));
        // New sources replace the old ones.
        t.apply_delta(ConfigDelta {
            base_version: 1,
            version: 2,
            upsert_trunks: vec![trunk("ns/a", &["172.16.0.0/12", "10.9.0.0/16"])],
            ..Default::default()
        });
        assert!(t.trunks_for_source(ip("10.1.2.3")).is_empty());
        assert_eq!(t.trunks_for_source(ip("10.9.1.1")), ["ns/a"]);
        assert_eq!(t.trunks_for_source(ip("172.16.0.1")), ["ns/a"]);
        // No sources (digest-only): no ACL entry.
        t.upsert_trunk(trunk("ns/a", &[]));
        assert!(!t.allows_source(ip("172.16.0.1")));
        assert!(t.trunk("ns/a").is_some());
        // A removed trunk's networks go with it; numbers are the caller's
        // business (validation).
        t.apply_delta(ConfigDelta {
            base_version: 2,
            version: 3,
            remove_trunks: vec!["ns/b".into()],
            remove_numbers: vec!["ns/three".into()],
            ..Default::default()
        });
        assert!(!t.allows_source(ip("192.168.1.1")));
        assert!(t.trunk("ns/b").is_none());
        assert!(on(&t, "ns/b").is_empty());
        // Overlapping trunks are listed by id.
        t.upsert_trunk(trunk("ns/c", &["10.0.0.0/8"]));
        t.upsert_trunk(trunk("ns/a", &["10.0.0.0/8"]));
        assert_eq!(t.trunks_for_source(ip("10.0.0.1")), ["ns/a", "ns/c"]);
    }

    #[test]
    fn deltas_match_the_proto_delta_and_snapshots_compare() {
        let base = RoutingConfig {
            version: 1,
            trunks: vec![trunk("ns/a", &["10.0.0.0/8"])],
            numbers: vec![number("ns/one", "+15550000001", "ns/a")],
        };
        let d = ConfigDelta {
            base_version: 1,
            version: 2,
            upsert_trunks: vec![trunk("ns/b", &[])],
            upsert_numbers: vec![number("ns/two", "+15550000002", "ns/b")],
            remove_numbers: vec!["ns/one".into()],
            ..Default::default()
        };
        let want = switchboard_proto::delta::apply(&base, &d).expect("apply");
        let mut t = RoutingTable::build(base.clone());
        assert!(t.matches(&base.clone().into_view()));
        t.apply_delta(d);
        assert!(t.matches(&want.clone().into_view()));
        assert!(!t.matches(&base.clone().into_view()));
        let mut other = want.clone();
        other.numbers[0].inbound = false;
        assert!(!t.matches(&other.clone().into_view()), "a changed field");
        // The same number encoded otherwise (fields in another order) is the
        // same number.
        let n = &want.numbers[0];
        let mut reordered = PhoneNumber {
            e164: n.e164.clone(),
            ..Default::default()
        }
        .encode_to_vec();
        reordered.extend(
            PhoneNumber {
                e164: String::new(),
                ..n.clone()
            }
            .encode_to_vec(),
        );
        let mut view = want.clone().into_view();
        assert_ne!(view.numbers[0], reordered);
        view.numbers[0] = reordered.into();
        assert!(t.matches(&view));
    }

    /// Timings for the report (`cargo test --release -p
    /// switchboard-media-node --lib apply_timings -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn apply_timings() {
        use std::time::Instant;
        let cfg = RoutingConfig {
            version: 1,
            trunks: vec![trunk("ns/t", &["10.0.0.0/8"])],
            numbers: (0..100_000)
                .map(|i| PhoneNumber {
                    outbound: true,
                    ..number(&format!("ns/n{i:06}"), &format!("+1555{i:07}"), "ns/t")
                })
                .collect(),
        };
        let view = cfg.into_view();
        let started = Instant::now();
        let mut t = crate::control::build_snapshot(view).expect("valid");
        eprintln!(
            "AFTER snapshot 100k (validate + build from the encoded numbers): {:?}",
            started.elapsed()
        );
        let mut times = Vec::new();
        for k in 0..10u64 {
            let d = ConfigDelta {
                base_version: t.version(),
                version: t.version() + 1,
                upsert_numbers: vec![number(
                    &format!("ns/n{k:06}"),
                    &format!("+1666{k:07}"),
                    "ns/t",
                )],
                ..Default::default()
            };
            let started = Instant::now();
            crate::control::validate_delta(&t, &d).expect("valid");
            t.apply_delta(d);
            times.push(started.elapsed());
        }
        times.sort();
        eprintln!(
            "AFTER one-number delta 100k (validate + apply): median {:?} (min {:?}, max {:?})",
            times[5], times[0], times[9]
        );
        let started = Instant::now();
        let n = t.caller_number("+15550099999").map(|n| n.id);
        eprintln!("AFTER caller lookup: {:?} {n:?}", started.elapsed());
    }
}
