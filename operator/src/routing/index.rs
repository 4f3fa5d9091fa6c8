//! The incremental resolver: the operator's state of every trunk, number and
//! referenced Secret, with reverse dependencies, so that an event re-judges
//! only the objects it touches (in the manner of linkerd's policy-controller
//! indexes).
//!
//! Dependencies followed:
//! - Secret -> the trunks and numbers that reference it;
//! - trunk -> the numbers that name it (as `trunkRef` or in `fallbackTrunks`);
//! - claim (an E.164 number or a destinationKey) -> the numbers claiming it,
//!   ordered by age, so a winner's deletion hands the claim to the next-oldest.
//!
//! The published [`Snapshot`] is made of persistent maps: cloning it is O(1)
//! and two snapshots diff in time proportional to what changed between them,
//! which is how the fleet programmer and the status writer find their work.
//! [`super::resolve`] stays as the whole-world reference; a property test
//! checks the index against it after every step.

use std::collections::BTreeSet;

use foldhash::{HashMap, HashSet};
use std::sync::Arc;

use imbl::OrdMap;
use switchboard_proto::v1alpha1 as pb;

use super::conflicts::{self, Order};
use super::convert::{self, World};
use super::{
    NumberInput, NumberVerdict, ObjectKey, Resolution, SecretData, TrunkInput, TrunkVerdict,
    judge_number, judge_trunk,
};
use crate::crd::SipTrunkSpec;

/// One change to the resolver's inputs.
#[derive(Clone, Debug)]
pub enum Event {
    /// A trunk was created or changed (boxed: a batch of 100,000 events
    /// should not cost 100,000 times the largest variant).
    Trunk(Box<TrunkInput>),
    /// A trunk was deleted.
    TrunkDeleted(ObjectKey),
    /// A number was created or changed (shared: the file source keeps the
    /// same object, and 100,000 numbers should not be held twice).
    Number(Arc<NumberInput>),
    /// A number was deleted.
    NumberDeleted(ObjectKey),
    /// A Secret was created or changed.
    Secret(ObjectKey, SecretData),
    /// A Secret was deleted.
    SecretDeleted(ObjectKey),
}

/// Every object's verdict and the routing configuration, as persistent maps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Verdicts by trunk.
    pub trunks: OrdMap<ObjectKey, TrunkVerdict>,
    /// Verdicts by number.
    pub numbers: OrdMap<ObjectKey, NumberVerdict>,
    /// Usable trunks' configuration by id (`namespace/name`).
    pub trunk_configs: OrdMap<String, Arc<pb::Trunk>>,
    /// Usable numbers' configuration by id.
    pub number_configs: OrdMap<String, Arc<pb::PhoneNumber>>,
}

impl Snapshot {
    /// The snapshot the whole-world resolver's output corresponds to.
    pub fn from_resolution(r: &Resolution) -> Snapshot {
        Snapshot {
            trunks: r
                .trunks
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            numbers: r
                .numbers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            trunk_configs: r
                .config
                .trunks
                .iter()
                .map(|t| (t.id.clone(), Arc::new(t.clone())))
                .collect(),
            number_configs: r
                .config
                .numbers
                .iter()
                .map(|n| (n.id.clone(), Arc::new(n.clone())))
                .collect(),
        }
    }

    /// True when nothing changed between the two (O(1): the maps are shared).
    pub fn same(&self, other: &Snapshot) -> bool {
        self.trunks.ptr_eq(&other.trunks)
            && self.numbers.ptr_eq(&other.numbers)
            && self.trunk_configs.ptr_eq(&other.trunk_configs)
            && self.number_configs.ptr_eq(&other.number_configs)
    }

    /// The whole routing configuration (O(n): for files and snapshots).
    pub fn config(&self, version: u64) -> pb::RoutingConfig {
        pb::RoutingConfig {
            version,
            trunks: self
                .trunk_configs
                .values()
                .map(|t| t.as_ref().clone())
                .collect(),
            numbers: self
                .number_configs
                .values()
                .map(|n| n.as_ref().clone())
                .collect(),
        }
    }
}

/// How many objects are in each state, kept up to date per change (the
/// `switchboard_operator_objects` gauge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Accepted and resolved.
    pub usable: i64,
    /// Not accepted.
    pub not_accepted: i64,
    /// Accepted, references not resolved.
    pub unresolved: i64,
}

impl Counts {
    fn add(&mut self, accepted: bool, resolved: bool, delta: i64) {
        match (accepted, resolved) {
            (true, true) => self.usable += delta,
            (false, _) => self.not_accepted += delta,
            (true, false) => self.unresolved += delta,
        }
    }
}

/// What one call to [`Index::apply`] did, for metrics and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Trunks judged again.
    pub trunks_judged: usize,
    /// Numbers judged again.
    pub numbers_judged: usize,
}

#[derive(Debug)]
struct TrunkEntry {
    input: TrunkInput,
    secrets: Vec<ObjectKey>,
}

#[derive(Debug)]
struct NumberEntry {
    input: Arc<NumberInput>,
    /// Claims held (empty when the spec is invalid: invalid numbers claim nothing).
    claims: Vec<String>,
    /// Trunks named (primary first, then fallbacks).
    trunks: Vec<ObjectKey>,
    secret: Option<ObjectKey>,
    /// Whether the published maps may hold this key (a verdict or a
    /// configuration): a number never published skips their lookups, which
    /// are much of the cost of loading 100,000 new numbers.
    published: bool,
}

/// The incremental resolver.
#[derive(Debug, Default)]
pub struct Index {
    trunks: HashMap<ObjectKey, TrunkEntry>,
    numbers: HashMap<ObjectKey, NumberEntry>,
    /// Referenced Secrets only (a cluster holds many others).
    secrets: HashMap<ObjectKey, SecretData>,
    secret_users: HashMap<ObjectKey, Users>,
    trunk_users: HashMap<ObjectKey, HashSet<ObjectKey>>,
    claims: HashMap<String, Claimants>,
    /// Numbers routed through each trunk (as primary), for its status.
    routed: HashMap<ObjectKey, u32>,
    /// The trunk a routed number is counted on.
    counted_on: HashMap<ObjectKey, ObjectKey>,
    trunk_counts: Counts,
    number_counts: Counts,
    state: Snapshot,
}

/// The numbers claiming one E.164 number or destination key, oldest first.
/// Almost every claim has one claimant: that case holds it without a tree
/// (a one-element `BTreeSet` allocates a node for eleven).
#[derive(Debug, Default)]
enum Claimants {
    #[default]
    None,
    One(Order),
    Many(BTreeSet<Order>),
}

impl Claimants {
    fn insert(&mut self, o: Order) {
        match std::mem::take(self) {
            Claimants::None => *self = Claimants::One(o),
            Claimants::One(x) if x == o => *self = Claimants::One(x),
            Claimants::One(x) => *self = Claimants::Many(BTreeSet::from([x, o])),
            Claimants::Many(mut set) => {
                set.insert(o);
                *self = Claimants::Many(set);
            }
        }
    }

    fn remove(&mut self, o: &Order) {
        match self {
            Claimants::One(x) if x == o => *self = Claimants::None,
            Claimants::Many(set) => {
                set.remove(o);
                if set.len() == 1
                    && let Some(only) = set.pop_first()
                {
                    *self = Claimants::One(only);
                }
            }
            _ => {}
        }
    }

    fn first(&self) -> Option<&Order> {
        match self {
            Claimants::None => None,
            Claimants::One(x) => Some(x),
            Claimants::Many(set) => set.first(),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Claimants::None)
    }

    /// The claimants' keys, oldest first.
    fn keys(&self) -> impl Iterator<Item = &ObjectKey> {
        let (one, many) = match self {
            Claimants::None => (None, None),
            Claimants::One(x) => (Some(x), None),
            Claimants::Many(set) => (None, Some(set.iter())),
        };
        one.into_iter()
            .chain(many.into_iter().flatten())
            .map(|o| &o.2)
    }
}

#[derive(Debug, Default)]
struct Users {
    trunks: HashSet<ObjectKey>,
    numbers: HashSet<ObjectKey>,
}

impl Users {
    fn is_empty(&self) -> bool {
        self.trunks.is_empty() && self.numbers.is_empty()
    }
}

impl World for Index {
    fn secret(&self, key: &ObjectKey) -> Option<&SecretData> {
        self.secrets.get(key)
    }
    fn trunk_spec(&self, key: &ObjectKey) -> Option<&SipTrunkSpec> {
        self.trunks.get(key).map(|t| &t.input.spec)
    }
    fn trunk_verdict(&self, key: &ObjectKey) -> Option<&TrunkVerdict> {
        self.state.trunks.get(key)
    }
}

fn number_secret(n: &NumberInput) -> Option<ObjectKey> {
    n.spec
        .agent
        .as_ref()
        .and_then(|a| a.auth.as_ref())
        .map(|a| ObjectKey::new(n.key.namespace.clone(), a.secret_ref.name.clone()))
}

fn number_trunks(n: &NumberInput) -> Vec<ObjectKey> {
    std::iter::once(&n.spec.trunk_ref.name)
        .chain(n.spec.fallback_trunks.iter())
        .map(|name| ObjectKey::new(n.key.namespace.clone(), name.clone()))
        .collect()
}

/// Where a Secret that became referenced is looked up (the watch cache, or
/// the manifests read from files).
pub type SecretSource<'a> = &'a dyn Fn(&ObjectKey) -> Option<SecretData>;

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current verdicts and configuration (O(1)).
    pub fn snapshot(&self) -> Snapshot {
        self.state.clone()
    }

    /// Trunks and numbers by state.
    pub fn counts(&self) -> (Counts, Counts) {
        (self.trunk_counts, self.number_counts)
    }

    /// Keys of every trunk.
    pub fn trunk_keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.trunks.keys()
    }

    /// Keys of every number.
    pub fn number_keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.numbers.keys()
    }

    /// Keys of the referenced Secrets that exist.
    pub fn secret_keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.secrets.keys()
    }

    /// Every Secret the objects reference.
    pub fn referenced_secrets(&self) -> impl Iterator<Item = &ObjectKey> {
        self.secret_users.keys()
    }

    /// Whether a Secret is referenced (so its events matter).
    pub fn references_secret(&self, key: &ObjectKey) -> bool {
        self.secret_users.contains_key(key)
    }

    /// Applies a batch of events and re-judges what they touch. A Secret
    /// that becomes referenced is read from `secrets`.
    pub fn apply(
        &mut self,
        events: impl IntoIterator<Item = Event>,
        secrets: SecretSource<'_>,
    ) -> Applied {
        let mut dirty_trunks: BTreeSet<ObjectKey> = BTreeSet::new();
        // Judged in any order: a number's verdict depends on the trunks and
        // claims, not on other numbers' verdicts.
        let mut dirty_numbers: HashSet<ObjectKey> = HashSet::default();
        for ev in events {
            match ev {
                Event::Trunk(t) => {
                    let t = *t;
                    let key = t.key.clone();
                    self.forget_trunk(&key);
                    let names = convert::trunk_secret_names(&t.spec);
                    let mut deps: Vec<ObjectKey> = names
                        .into_iter()
                        .map(|n| ObjectKey::new(key.namespace.clone(), n))
                        .collect();
                    deps.sort();
                    deps.dedup();
                    for s in &deps {
                        self.use_secret(s, secrets).trunks.insert(key.clone());
                    }
                    self.trunks.insert(
                        key.clone(),
                        TrunkEntry {
                            input: t,
                            secrets: deps,
                        },
                    );
                    dirty_trunks.insert(key);
                }
                Event::TrunkDeleted(key) => {
                    self.forget_trunk(&key);
                    dirty_trunks.insert(key);
                }
                Event::Number(n) => {
                    let key = n.key.clone();
                    // Without an entry the key may still be published (deleted
                    // earlier in this batch, not judged yet): look. The
                    // configurations' keys are a subset of the verdicts'.
                    let published = match self.numbers.get(&key) {
                        Some(e) => e.published,
                        None => self.state.numbers.contains_key(&key),
                    };
                    self.forget_number(&key, &mut dirty_numbers);
                    let claims = if super::validate::number(&n.spec).is_ok() {
                        conflicts::claims(&n)
                    } else {
                        Vec::new()
                    };
                    let order = conflicts::order(&n);
                    for c in &claims {
                        let set = self.claims.entry(c.clone()).or_default();
                        set.insert(order.clone());
                        dirty_numbers.extend(set.keys().cloned());
                    }
                    let trunks = number_trunks(&n);
                    for t in &trunks {
                        self.trunk_users
                            .entry(t.clone())
                            .or_default()
                            .insert(key.clone());
                    }
                    let secret = number_secret(&n);
                    if let Some(s) = &secret {
                        self.use_secret(s, secrets).numbers.insert(key.clone());
                    }
                    self.numbers.insert(
                        key.clone(),
                        NumberEntry {
                            input: n,
                            claims,
                            trunks,
                            secret,
                            published,
                        },
                    );
                    dirty_numbers.insert(key);
                }
                Event::NumberDeleted(key) => {
                    self.forget_number(&key, &mut dirty_numbers);
                    dirty_numbers.insert(key);
                }
                Event::Secret(key, data) => {
                    let Some(users) = self.secret_users.get(&key) else {
                        continue;
                    };
                    if self.secrets.get(&key) == Some(&data) {
                        continue;
                    }
                    dirty_trunks.extend(users.trunks.iter().cloned());
                    dirty_numbers.extend(users.numbers.iter().cloned());
                    self.secrets.insert(key, data);
                }
                Event::SecretDeleted(key) => {
                    if self.secrets.remove(&key).is_none() {
                        continue;
                    }
                    if let Some(users) = self.secret_users.get(&key) {
                        dirty_trunks.extend(users.trunks.iter().cloned());
                        dirty_numbers.extend(users.numbers.iter().cloned());
                    }
                }
            }
        }

        let mut recount: BTreeSet<ObjectKey> = BTreeSet::new();
        for key in &dirty_trunks {
            self.judge_trunk(key);
            // Numbers depend on the trunk's verdict and spec (agent egress,
            // default agent); only those whose result changes are published.
            if let Some(users) = self.trunk_users.get(key) {
                dirty_numbers.extend(users.iter().cloned());
            }
            recount.insert(key.clone());
        }
        // Judged in key order: the published maps are B-trees, and inserting
        // 100,000 new keys in order touches one path at a time instead of
        // every node at random (a third of the load's index time).
        let mut judging: Vec<&ObjectKey> = dirty_numbers.iter().collect();
        judging.sort_unstable();
        for key in judging {
            self.judge_number(key, &mut recount);
        }
        for key in recount {
            let n = self.routed.get(&key).copied().unwrap_or(0);
            if let Some(v) = self.state.trunks.get(&key)
                && v.numbers != n
            {
                let mut v = v.clone();
                v.numbers = n;
                self.state.trunks.insert(key, v);
            }
        }
        Applied {
            trunks_judged: dirty_trunks.len(),
            numbers_judged: dirty_numbers.len(),
        }
    }

    /// Registers a use of a Secret, fetching it when it was not referenced.
    fn use_secret(&mut self, key: &ObjectKey, source: SecretSource<'_>) -> &mut Users {
        if !self.secret_users.contains_key(key)
            && let Some(d) = source(key)
        {
            self.secrets.insert(key.clone(), d);
        }
        self.secret_users.entry(key.clone()).or_default()
    }

    fn drop_secret_use(&mut self, key: &ObjectKey, user: &ObjectKey, trunk: bool) {
        if let Some(u) = self.secret_users.get_mut(key) {
            if trunk {
                u.trunks.remove(user);
            } else {
                u.numbers.remove(user);
            }
            if u.is_empty() {
                self.secret_users.remove(key);
                self.secrets.remove(key);
            }
        }
    }

    fn forget_trunk(&mut self, key: &ObjectKey) {
        if let Some(old) = self.trunks.remove(key) {
            for s in &old.secrets {
                self.drop_secret_use(s, key, true);
            }
        }
    }

    fn forget_number(&mut self, key: &ObjectKey, dirty: &mut HashSet<ObjectKey>) {
        let Some(old) = self.numbers.remove(key) else {
            return;
        };
        let order = conflicts::order(&old.input);
        for c in &old.claims {
            if let Some(set) = self.claims.get_mut(c) {
                set.remove(&order);
                // The next-oldest claimant may win now.
                dirty.extend(set.keys().cloned());
                if set.is_empty() {
                    self.claims.remove(c);
                }
            }
        }
        for t in &old.trunks {
            if let Some(users) = self.trunk_users.get_mut(t) {
                users.remove(key);
                if users.is_empty() {
                    self.trunk_users.remove(t);
                }
            }
        }
        if let Some(s) = &old.secret {
            self.drop_secret_use(s, key, false);
        }
    }

    fn judge_trunk(&mut self, key: &ObjectKey) {
        let judged = self.trunks.get(key).map(|e| judge_trunk(&e.input, &*self));
        let old = self.state.trunks.get(key).cloned();
        if let Some(o) = &old {
            self.trunk_counts.add(o.accepted.ok, o.resolved_refs.ok, -1);
        }
        match judged {
            Some((mut verdict, config)) => {
                verdict.numbers = self.routed.get(key).copied().unwrap_or(0);
                self.trunk_counts
                    .add(verdict.accepted.ok, verdict.resolved_refs.ok, 1);
                if old.as_ref() != Some(&verdict) {
                    self.state.trunks.insert(key.clone(), verdict);
                }
                set_config(&mut self.state.trunk_configs, key.id(), config);
            }
            None => {
                remove(&mut self.state.trunks, key);
                remove(&mut self.state.trunk_configs, &key.id());
            }
        }
    }

    fn lost_to(&self, e: &NumberEntry) -> Option<ObjectKey> {
        e.claims
            .iter()
            .filter_map(|c| self.claims.get(c).and_then(Claimants::first))
            .find(|w| w.2 != e.input.key)
            .map(|w| w.2.clone())
    }

    fn judge_number(&mut self, key: &ObjectKey, recount: &mut BTreeSet<ObjectKey>) {
        let judged = self.numbers.get(key).map(|e| {
            let lost = self.lost_to(e);
            let primary = e.trunks.first().cloned();
            (judge_number(&e.input, lost.as_ref(), &*self), primary)
        });
        // A number without an entry (deleted) may still be published.
        let published = self.numbers.get(key).is_none_or(|e| e.published);
        let old = if published {
            self.state.numbers.get(key)
        } else {
            None
        };
        if let Some(o) = old {
            self.number_counts
                .add(o.accepted.ok, o.resolved_refs.ok, -1);
        }
        let unchanged = matches!((&judged, old), (Some(((v, _), _)), Some(o)) if v == o);
        // Uncount, then count again where it is routed now.
        if let Some(t) = self.counted_on.remove(key) {
            if let Some(n) = self.routed.get_mut(&t) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.routed.remove(&t);
                }
            }
            recount.insert(t);
        }
        let id = key.id();
        match judged {
            Some(((verdict, config), primary)) => {
                self.number_counts
                    .add(verdict.accepted.ok, verdict.resolved_refs.ok, 1);
                if config.is_some()
                    && let Some(t) = primary
                {
                    match self.routed.get_mut(&t) {
                        Some(n) => *n += 1,
                        None => {
                            self.routed.insert(t.clone(), 1);
                        }
                    }
                    if !recount.contains(&t) {
                        recount.insert(t.clone());
                    }
                    self.counted_on.insert(key.clone(), t);
                }
                if !unchanged {
                    self.state.numbers.insert(key.clone(), verdict);
                }
                if published {
                    set_config(&mut self.state.number_configs, id, config);
                } else {
                    if let Some(c) = config {
                        self.state.number_configs.insert(id, Arc::new(c));
                    }
                    if let Some(e) = self.numbers.get_mut(key) {
                        e.published = true;
                    }
                }
            }
            None => {
                remove(&mut self.state.numbers, key);
                remove(&mut self.state.number_configs, &id);
            }
        }
    }
}

/// One entry that differs between two snapshots' maps (an item of
/// `OrdMap::diff`): its key and, unless it was removed, its new value.
pub fn changed<'a, K, V>(d: imbl::ordmap::DiffItem<'a, 'a, K, V>) -> (&'a K, Option<&'a V>) {
    match d {
        imbl::ordmap::DiffItem::Add(k, v) | imbl::ordmap::DiffItem::Update { new: (k, v), .. } => {
            (k, Some(v))
        }
        imbl::ordmap::DiffItem::Remove(k, _) => (k, None),
    }
}

/// Publishes a configuration only when it changed, so unchanged entries stay
/// shared between snapshots (and diffs skip them).
fn set_config<T: PartialEq>(map: &mut OrdMap<String, Arc<T>>, id: String, new: Option<T>) {
    match new {
        Some(c) => {
            if map.get(&id).is_none_or(|old| **old != c) {
                map.insert(id, Arc::new(c));
            }
        }
        None => remove(map, &id),
    }
}

/// Removes a key only when present: removing an absent key would still copy
/// the map's path and break sharing with the previous snapshot.
fn remove<K: Ord + Clone, V: Clone>(map: &mut OrdMap<K, V>, key: &K) {
    if map.contains_key(key) {
        map.remove(key);
    }
}

#[cfg(test)]
mod tests;
