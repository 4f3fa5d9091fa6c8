//! One campaign's progress, sans-IO: which callee is pending, being dialled,
//! waiting for a retry or done, and the counters the status shows.
//!
//! The I/O shell asks [`Progress::take`] for the next callees to dial,
//! records the taken attempts durably (the results ConfigMaps, see
//! [`super::results`]) and only then dials; outcomes come back through
//! [`Progress::finish`]. An attempt is identified by (callee index, attempt
//! number), so a stale or repeated outcome is ignored and a callee is dialled
//! at most once per attempt. Time is passed in (Unix milliseconds): the
//! logic runs on a virtual clock in its tests.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use crate::crd::{RetryOn, RetryPolicy};

/// A callee's position in the campaign's callee list.
pub type Index = u32;

/// Callees per results ConfigMap.
pub const CHUNK: u32 = 1000;

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The callee answered.
    Answered,
    /// The callee was busy.
    Busy,
    /// Nobody answered in time.
    NoAnswer,
    /// The carrier answered 5xx.
    Carrier5xx,
    /// Anything else: refused, no route, a lost node.
    Failed,
}

impl Outcome {
    /// How an unanswered call ended, from its final SIP code (0: none).
    pub fn of_unanswered(code: u16) -> Outcome {
        match code {
            486 | 600 => Outcome::Busy,
            408 | 480 | 487 => Outcome::NoAnswer,
            500..=599 => Outcome::Carrier5xx,
            _ => Outcome::Failed,
        }
    }

    /// The retry policy's name for this outcome (none for an answer).
    fn retry_on(self) -> Option<RetryOn> {
        match self {
            Outcome::Answered => None,
            Outcome::Busy => Some(RetryOn::Busy),
            Outcome::NoAnswer => Some(RetryOn::NoAnswer),
            Outcome::Carrier5xx => Some(RetryOn::Carrier5xx),
            Outcome::Failed => Some(RetryOn::Failed),
        }
    }

    /// The callee's final state if this attempt is its last.
    fn final_state(self) -> Final {
        match self {
            Outcome::Answered => Final::Answered,
            Outcome::Busy => Final::Busy,
            Outcome::NoAnswer => Final::NoAnswer,
            Outcome::Carrier5xx | Outcome::Failed => Final::Failed,
        }
    }
}

/// How a callee ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Final {
    /// Answered.
    Answered,
    /// Busy on the last attempt.
    Busy,
    /// Not answered on the last attempt.
    NoAnswer,
    /// Failed on the last attempt.
    Failed,
    /// Never attempted: the schedule ended first.
    NotAttempted,
}

impl Final {
    /// The name used in results and webhooks.
    pub fn as_str(self) -> &'static str {
        match self {
            Final::Answered => "answered",
            Final::Busy => "busy",
            Final::NoAnswer => "no-answer",
            Final::Failed => "failed",
            Final::NotAttempted => "not-attempted",
        }
    }

    /// Parses [`Final::as_str`].
    pub fn parse(s: &str) -> Option<Final> {
        Some(match s {
            "answered" => Final::Answered,
            "busy" => Final::Busy,
            "no-answer" => Final::NoAnswer,
            "failed" => Final::Failed,
            "not-attempted" => Final::NotAttempted,
            _ => return None,
        })
    }
}

/// Where a callee stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Not attempted yet.
    Pending,
    /// Attempt `Slot::attempts` was handed to this media node (recorded
    /// before the dial).
    Dialing {
        /// The node the attempt was given to.
        node: Arc<str>,
    },
    /// Waiting for the next attempt, due at this Unix millisecond.
    Retrying {
        /// When the next attempt is due.
        at_ms: i64,
    },
    /// Finished.
    Done(Final),
}

/// One callee's progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Where it stands.
    pub state: State,
    /// Attempts started, the current one included.
    pub attempts: u8,
    /// The last attempt's final SIP code (0: none).
    pub code: u16,
    /// The last attempt's call id on its node.
    pub call_id: Option<Box<str>>,
    /// When the slot last changed (Unix ms).
    pub updated_ms: i64,
}

impl Slot {
    fn pending() -> Slot {
        Slot {
            state: State::Pending,
            attempts: 0,
            code: 0,
            call_id: None,
            updated_ms: 0,
        }
    }
}

/// An attempt handed out by [`Progress::take`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Take {
    /// The callee.
    pub index: Index,
    /// Its attempt number (1 for the first).
    pub attempt: u8,
    /// The node it goes to.
    pub node: Arc<str>,
    /// The state to go back to if the attempt is not placed after all.
    prior: State,
}

/// The counters of the campaign's status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Callees in all.
    pub total: u64,
    /// Not attempted yet.
    pub pending: u64,
    /// With an attempt in progress.
    pub in_progress: u64,
    /// Waiting for a retry.
    pub retrying: u64,
    /// Finished answered.
    pub answered: u64,
    /// Finished busy.
    pub busy: u64,
    /// Finished unanswered.
    pub no_answer: u64,
    /// Finished failed.
    pub failed: u64,
    /// Never attempted (the schedule ended).
    pub not_attempted: u64,
    /// Attempts started.
    pub attempts: u64,
}

impl Counters {
    /// Callees finished, whatever the outcome.
    pub fn done(&self) -> u64 {
        self.answered + self.busy + self.no_answer + self.failed + self.not_attempted
    }

    fn add(&mut self, s: &State, by: i64) {
        let c = match s {
            State::Pending => &mut self.pending,
            State::Dialing { .. } => &mut self.in_progress,
            State::Retrying { .. } => &mut self.retrying,
            State::Done(Final::Answered) => &mut self.answered,
            State::Done(Final::Busy) => &mut self.busy,
            State::Done(Final::NoAnswer) => &mut self.no_answer,
            State::Done(Final::Failed) => &mut self.failed,
            State::Done(Final::NotAttempted) => &mut self.not_attempted,
        };
        *c = c.saturating_add_signed(by);
    }
}

/// A persisted slot, as read back from the results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The callee.
    pub index: Index,
    /// Its slot.
    pub slot: Slot,
}

/// Pending callees that share a time zone (the zone decides whether their
/// calling window is open).
#[derive(Debug)]
struct Group {
    zone: Option<Arc<str>>,
    queue: VecDeque<Index>,
}

/// One campaign's progress.
#[derive(Debug)]
pub struct Progress {
    slots: Vec<Slot>,
    /// The group of each callee (its time zone).
    group_of: Vec<u16>,
    groups: Vec<Group>,
    retries: BinaryHeap<Reverse<(i64, Index)>>,
    counters: Counters,
    dirty: BTreeSet<u32>,
    policy: RetryPolicy,
    /// Where pending callees are taken from next (round-robin over groups).
    next_group: usize,
    /// Attempts in progress by node.
    per_node: HashMap<Arc<str>, u32>,
}

/// Most distinct callee time zones in one campaign (each is a queue the
/// dispatcher checks on every pass; [`Progress::new`] refuses more).
pub const MAX_ZONES: usize = 1024;

/// Why a progress cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProgressError {
    /// Too many callees for one campaign.
    #[error("{0} callees: at most {max} per campaign", max = u32::MAX)]
    TooMany(usize),
    /// Too many distinct callee time zones.
    #[error("the callees use more than {MAX_ZONES} distinct time zones")]
    TooManyZones,
}

impl Progress {
    /// Every callee pending. `zones[i]` is callee `i`'s own time zone
    /// (`None`: the schedule's).
    pub fn new(zones: &[Option<&str>], policy: RetryPolicy) -> Result<Progress, ProgressError> {
        let n = zones.len();
        let total = u32::try_from(n).map_err(|_| ProgressError::TooMany(n))?;
        let mut groups: Vec<Group> = Vec::new();
        let mut by_zone: HashMap<Option<&str>, u16> = HashMap::new();
        let mut group_of = Vec::with_capacity(n);
        for (i, z) in zones.iter().enumerate() {
            let g = match by_zone.get(z) {
                Some(g) => *g,
                None => {
                    if groups.len() >= MAX_ZONES {
                        return Err(ProgressError::TooManyZones);
                    }
                    let g = u16::try_from(groups.len()).map_err(|_| ProgressError::TooManyZones)?;
                    groups.push(Group {
                        zone: z.map(Arc::from),
                        queue: VecDeque::new(),
                    });
                    by_zone.insert(*z, g);
                    g
                }
            };
            group_of.push(g);
            // i < n <= u32::MAX.
            groups[usize::from(g)].queue.push_back(i as Index);
        }
        Ok(Progress {
            slots: vec![Slot::pending(); n],
            group_of,
            groups,
            retries: BinaryHeap::new(),
            counters: Counters {
                total: u64::from(total),
                pending: u64::from(total),
                ..Default::default()
            },
            dirty: BTreeSet::new(),
            policy,
            next_group: 0,
            per_node: HashMap::new(),
        })
    }

    /// The retry policy in force.
    pub fn set_policy(&mut self, policy: RetryPolicy) {
        self.policy = policy;
    }

    /// Puts back what the results recorded (after an operator restart or a
    /// leadership change). Records for unknown callees are ignored.
    pub fn restore(&mut self, records: impl IntoIterator<Item = Record>) {
        let mut restored = false;
        for r in records {
            let Some(slot) = self.slots.get(r.index as usize) else {
                continue;
            };
            if r.slot.state == State::Pending {
                continue;
            }
            let old = slot.state.clone();
            self.counters.add(&old, -1);
            self.counters.add(&r.slot.state, 1);
            self.count_node(&old, -1);
            self.count_node(&r.slot.state, 1);
            self.counters.attempts += u64::from(r.slot.attempts);
            if let State::Retrying { at_ms } = r.slot.state {
                self.retries.push(Reverse((at_ms, r.index)));
            }
            self.slots[r.index as usize] = r.slot;
            restored = true;
        }
        if restored {
            let slots = &self.slots;
            for g in &mut self.groups {
                g.queue
                    .retain(|i| slots[*i as usize].state == State::Pending);
            }
        }
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// A callee's slot.
    pub fn slot(&self, index: Index) -> Option<&Slot> {
        self.slots.get(index as usize)
    }

    /// Callees with an attempt in progress, with the node it went to.
    pub fn dialing(&self) -> impl Iterator<Item = (Index, u8, &Arc<str>)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.state {
                State::Dialing { node } => Some((i as Index, s.attempts, node)),
                _ => None,
            })
    }

    /// Nothing left to do: no callee pending, dialling or waiting for a retry.
    pub fn complete(&self) -> bool {
        let c = &self.counters;
        c.pending == 0 && c.in_progress == 0 && c.retrying == 0
    }

    /// When the earliest retry is due (Unix ms).
    pub fn next_retry(&self) -> Option<i64> {
        self.retries.peek().map(|Reverse((at, _))| *at)
    }

    /// Whether any pending callee's zone is open (so a dial could start now).
    pub fn has_pending_in(&self, open: &dyn Fn(Option<&str>) -> bool) -> bool {
        self.groups
            .iter()
            .any(|g| !g.queue.is_empty() && open(g.zone.as_deref()))
    }

    /// The callees' time zones (`None`: the schedule's), for the shell's
    /// window checks.
    pub fn zones(&self) -> impl Iterator<Item = Option<&str>> {
        self.groups.iter().map(|g| g.zone.as_deref())
    }

    /// A callee's own time zone (`None`: the schedule's).
    pub fn zone_of(&self, index: Index) -> Option<&str> {
        let g = *self.group_of.get(index as usize)?;
        self.groups.get(usize::from(g))?.zone.as_deref()
    }

    /// Attempts in progress on `node`.
    pub fn node_load(&self, node: &str) -> u32 {
        self.per_node.get(node).copied().unwrap_or(0)
    }

    fn count_node(&mut self, s: &State, by: i32) {
        if let State::Dialing { node } = s {
            let n = self.per_node.entry(node.clone()).or_insert(0);
            *n = n.saturating_add_signed(by);
            if *n == 0 {
                self.per_node.remove(node);
            }
        }
    }

    fn set(&mut self, index: Index, state: State, now_ms: i64) {
        let old = self.slots[index as usize].state.clone();
        self.count_node(&old, -1);
        self.count_node(&state, 1);
        let slot = &mut self.slots[index as usize];
        self.counters.add(&slot.state, -1);
        self.counters.add(&state, 1);
        slot.state = state;
        slot.updated_ms = now_ms;
        self.dirty.insert(index / CHUNK);
    }

    /// Hands out up to `max` attempts: due retries first, then pending
    /// callees round-robin over their time zones. `open` says whether a
    /// zone's calling window is open now; `node` picks the media node for
    /// each attempt (`None`: no node can take calls, nothing is handed out).
    pub fn take(
        &mut self,
        now_ms: i64,
        max: usize,
        open: &dyn Fn(Option<&str>) -> bool,
        node: &mut dyn FnMut() -> Option<Arc<str>>,
    ) -> Vec<Take> {
        let mut out = Vec::new();
        let mut closed = Vec::new();
        while out.len() < max {
            let Some(Reverse((at, index))) = self.retries.peek().copied() else {
                break;
            };
            if at > now_ms {
                break;
            }
            self.retries.pop();
            // A stale entry: the slot moved on (restored, or finished).
            if self.slots[index as usize].state != (State::Retrying { at_ms: at }) {
                continue;
            }
            if !open(self.zone_of(index)) {
                closed.push(Reverse((at, index)));
                continue;
            }
            let Some(n) = node() else {
                closed.push(Reverse((at, index)));
                break;
            };
            out.push(self.start(index, n, now_ms));
        }
        self.retries.extend(closed);
        let groups = self.groups.len();
        let mut idle = 0;
        while out.len() < max && idle < groups {
            let g = self.next_group % groups.max(1);
            self.next_group = (g + 1) % groups.max(1);
            let is_open = open(self.groups[g].zone.as_deref());
            let Some(&index) = self.groups[g].queue.front().filter(|_| is_open) else {
                idle += 1;
                continue;
            };
            let Some(n) = node() else {
                break;
            };
            idle = 0;
            self.groups[g].queue.pop_front();
            out.push(self.start(index, n, now_ms));
        }
        out
    }

    fn start(&mut self, index: Index, node: Arc<str>, now_ms: i64) -> Take {
        let prior = self.slots[index as usize].state.clone();
        let slot = &mut self.slots[index as usize];
        slot.attempts = slot.attempts.saturating_add(1);
        let attempt = slot.attempts;
        self.counters.attempts += 1;
        self.set(index, State::Dialing { node: node.clone() }, now_ms);
        Take {
            index,
            attempt,
            node,
            prior,
        }
    }

    /// Takes back an attempt that was not placed (its record could not be
    /// written, or the node refused it before dialling): the callee is as
    /// before, and is handed out again first.
    pub fn untake(&mut self, t: &Take, now_ms: i64) {
        let slot = &self.slots[t.index as usize];
        if slot.attempts != t.attempt || !matches!(slot.state, State::Dialing { .. }) {
            return;
        }
        self.slots[t.index as usize].attempts -= 1;
        self.counters.attempts = self.counters.attempts.saturating_sub(1);
        self.set(t.index, t.prior.clone(), now_ms);
        match t.prior {
            State::Pending => {
                let g = usize::from(self.group_of[t.index as usize]);
                self.groups[g].queue.push_front(t.index);
            }
            State::Retrying { at_ms } => self.retries.push(Reverse((at_ms, t.index))),
            _ => {}
        }
    }

    /// Puts an attempt a node never received back in the queue with the
    /// same attempt number (found after a leadership change: the previous
    /// leader recorded it and stopped before dialling).
    pub fn requeue(&mut self, index: Index, attempt: u8, now_ms: i64) {
        let Some(slot) = self.slots.get(index as usize) else {
            return;
        };
        if slot.attempts != attempt || !matches!(slot.state, State::Dialing { .. }) {
            return;
        }
        let prior = if attempt <= 1 {
            State::Pending
        } else {
            State::Retrying { at_ms: now_ms }
        };
        let t = Take {
            index,
            attempt,
            node: Arc::from(""),
            prior,
        };
        self.untake(&t, now_ms);
    }

    /// Records how attempt `attempt` of callee `index` ended. Returns the
    /// callee's final state when this was its last attempt; `None` when it
    /// will be retried, or when the outcome is stale (another attempt, or
    /// not dialling).
    pub fn finish(
        &mut self,
        index: Index,
        attempt: u8,
        outcome: Outcome,
        code: u16,
        call_id: Option<&str>,
        now_ms: i64,
    ) -> Option<Final> {
        let slot = self.slots.get_mut(index as usize)?;
        if slot.attempts != attempt || !matches!(slot.state, State::Dialing { .. }) {
            return None;
        }
        slot.code = code;
        if let Some(id) = call_id.filter(|s| !s.is_empty()) {
            slot.call_id = Some(id.into());
        }
        let retry = outcome
            .retry_on()
            .is_some_and(|o| self.policy.on.contains(&o))
            && u32::from(attempt) < self.policy.max_attempts;
        if retry {
            let at_ms = now_ms.saturating_add(self.backoff_ms(attempt));
            self.set(index, State::Retrying { at_ms }, now_ms);
            self.retries.push(Reverse((at_ms, index)));
            None
        } else {
            let f = outcome.final_state();
            self.set(index, State::Done(f), now_ms);
            Some(f)
        }
    }

    /// The wait after attempt `attempt`: backoffSeconds, doubled for each
    /// further retry, at most maxBackoffSeconds.
    fn backoff_ms(&self, attempt: u8) -> i64 {
        let base = i64::from(self.policy.backoff_seconds) * 1000;
        let cap = i64::from(self.policy.max_backoff_seconds) * 1000;
        let shift = u32::from(attempt.saturating_sub(1)).min(30);
        base.saturating_mul(1i64 << shift).min(cap)
    }

    /// The schedule ended: every callee not finished and not dialling ends
    /// as not attempted (a retry that never came keeps its last outcome's
    /// counter: it ends with that outcome). Returns the callees finished.
    pub fn end(&mut self, now_ms: i64) -> Vec<(Index, Final)> {
        let mut out = Vec::new();
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            let f = match s.state {
                State::Pending => Final::NotAttempted,
                // A retry never came: the last attempt's outcome stands.
                State::Retrying { .. } => Outcome::of_unanswered(s.code).final_state(),
                _ => continue,
            };
            self.set(i as Index, State::Done(f), now_ms);
            out.push((i as Index, f));
        }
        for g in &mut self.groups {
            g.queue.clear();
        }
        self.retries.clear();
        out
    }

    /// The results chunks changed since the last call, in order.
    pub fn take_dirty(&mut self) -> BTreeSet<u32> {
        std::mem::take(&mut self.dirty)
    }

    /// Marks a chunk for writing again (its write failed).
    pub fn mark_dirty(&mut self, chunk: u32) {
        self.dirty.insert(chunk);
    }

    /// The slots of one chunk, with their indices.
    pub fn chunk(&self, chunk: u32) -> impl Iterator<Item = (Index, &Slot)> {
        let start = chunk.saturating_mul(CHUNK) as usize;
        let end = (start + CHUNK as usize).min(self.slots.len());
        (start.min(end)..end).map(|i| (i as Index, &self.slots[i]))
    }

    /// Chunks in all.
    pub fn chunks(&self) -> u32 {
        (self.slots.len() as u32).div_ceil(CHUNK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[RetryOn], max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            on: on.to_vec(),
            max_attempts,
            backoff_seconds: 10,
            max_backoff_seconds: 25,
        }
    }

    fn always(_: Option<&str>) -> bool {
        true
    }

    fn node_a() -> Option<Arc<str>> {
        Some(Arc::from("a"))
    }

    #[test]
    fn takes_in_order_and_counts() {
        let mut p = Progress::new(&[None; 5], policy(&[], 1)).unwrap();
        let t = p.take(0, 3, &always, &mut node_a);
        assert_eq!(t.iter().map(|t| t.index).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(t.iter().all(|t| t.attempt == 1));
        let c = p.counters();
        assert_eq!((c.pending, c.in_progress, c.attempts), (2, 3, 3));
        assert_eq!(
            p.finish(1, 1, Outcome::Answered, 200, Some("CA1"), 5),
            Some(Final::Answered)
        );
        assert_eq!(p.counters().answered, 1);
        assert_eq!(p.slot(1).unwrap().call_id.as_deref(), Some("CA1"));
        // The same outcome again is stale.
        assert_eq!(p.finish(1, 1, Outcome::Answered, 200, None, 6), None);
        assert_eq!(p.counters().answered, 1);
        assert!(!p.complete());
    }

    #[test]
    fn busy_is_retried_with_backoff_then_final() {
        let mut p = Progress::new(&[None], policy(&[RetryOn::Busy], 3)).unwrap();
        let t = p.take(0, 1, &always, &mut node_a);
        assert_eq!(
            p.finish(0, t[0].attempt, Outcome::Busy, 486, None, 1000),
            None
        );
        assert_eq!(p.counters().retrying, 1);
        assert_eq!(p.next_retry(), Some(11_000));
        // Not due yet.
        assert!(p.take(10_999, 1, &always, &mut node_a).is_empty());
        let t = p.take(11_000, 1, &always, &mut node_a);
        assert_eq!(t[0].attempt, 2);
        assert_eq!(p.finish(0, 2, Outcome::Busy, 486, None, 12_000), None);
        // Doubled, capped at 25 s.
        assert_eq!(p.next_retry(), Some(12_000 + 20_000));
        let t = p.take(40_000, 1, &always, &mut node_a);
        assert_eq!(t[0].attempt, 3);
        assert_eq!(
            p.finish(0, 3, Outcome::Busy, 486, None, 41_000),
            Some(Final::Busy)
        );
        let c = p.counters();
        assert_eq!((c.busy, c.retrying, c.attempts), (1, 0, 3));
        assert!(p.complete());
    }

    #[test]
    fn outcomes_not_in_the_policy_are_final() {
        let mut p = Progress::new(&[None; 2], policy(&[RetryOn::Busy], 3)).unwrap();
        p.take(0, 2, &always, &mut node_a);
        assert_eq!(
            p.finish(0, 1, Outcome::NoAnswer, 487, None, 1),
            Some(Final::NoAnswer)
        );
        assert_eq!(
            p.finish(1, 1, Outcome::Carrier5xx, 503, None, 1),
            Some(Final::Failed)
        );
    }

    #[test]
    fn untake_puts_the_callee_back_first() {
        let mut p = Progress::new(&[None; 3], policy(&[], 1)).unwrap();
        let t = p.take(0, 2, &always, &mut node_a);
        p.untake(&t[0], 1);
        let c = p.counters();
        assert_eq!((c.pending, c.in_progress, c.attempts), (2, 1, 1));
        let again = p.take(2, 1, &always, &mut node_a);
        assert_eq!((again[0].index, again[0].attempt), (0, 1));
        assert_eq!(p.node_load("a"), 2);
        p.requeue(1, 1, 3);
        assert_eq!(p.node_load("a"), 1);
        assert_eq!(p.counters().pending, 2);
        let t = p.take(4, 1, &always, &mut node_a);
        assert_eq!((t[0].index, t[0].attempt), (1, 1));
    }

    #[test]
    fn closed_zones_wait_and_open_ones_go() {
        let zones = [Some("Asia/Tokyo"), None, Some("Asia/Tokyo"), None];
        let mut p = Progress::new(&zones, policy(&[], 1)).unwrap();
        let tokyo_closed = |z: Option<&str>| z != Some("Asia/Tokyo");
        let t = p.take(0, 4, &tokyo_closed, &mut node_a);
        assert_eq!(t.iter().map(|t| t.index).collect::<Vec<_>>(), [1, 3]);
        assert!(p.has_pending_in(&always));
        assert!(!p.has_pending_in(&tokyo_closed));
        let t = p.take(1, 4, &always, &mut node_a);
        assert_eq!(t.iter().map(|t| t.index).collect::<Vec<_>>(), [0, 2]);
    }

    #[test]
    fn no_node_hands_out_nothing() {
        let mut p = Progress::new(&[None; 2], policy(&[], 1)).unwrap();
        assert!(p.take(0, 2, &always, &mut || None).is_empty());
        assert_eq!(p.counters().pending, 2);
    }

    #[test]
    fn restore_resumes_without_redialling() {
        let mut p = Progress::new(&[None; 4], policy(&[RetryOn::Busy], 2)).unwrap();
        let slot = |state, attempts| Slot {
            state,
            attempts,
            code: 0,
            call_id: None,
            updated_ms: 0,
        };
        p.restore([
            Record {
                index: 0,
                slot: slot(State::Done(Final::Answered), 1),
            },
            Record {
                index: 1,
                slot: slot(State::Dialing { node: "b".into() }, 1),
            },
            Record {
                index: 2,
                slot: slot(State::Retrying { at_ms: 50 }, 1),
            },
        ]);
        let c = p.counters();
        assert_eq!(
            (c.pending, c.answered, c.in_progress, c.retrying, c.attempts),
            (1, 1, 1, 1, 3)
        );
        assert_eq!(
            p.dialing()
                .map(|(i, a, n)| (i, a, n.to_string()))
                .collect::<Vec<_>>(),
            [(1, 1, "b".to_string())]
        );
        // Only the pending callee now, the retry when due.
        let t = p.take(10, 4, &always, &mut node_a);
        assert_eq!(t.iter().map(|t| t.index).collect::<Vec<_>>(), [3]);
        let t = p.take(50, 4, &always, &mut node_a);
        assert_eq!((t[0].index, t[0].attempt), (2, 2));
    }

    #[test]
    fn end_finishes_what_is_left() {
        let mut p = Progress::new(&[None; 3], policy(&[RetryOn::Busy], 2)).unwrap();
        p.take(0, 2, &always, &mut node_a);
        p.finish(0, 1, Outcome::Busy, 486, None, 1);
        let ended = p.end(2);
        assert_eq!(ended, [(0, Final::Busy), (2, Final::NotAttempted)]);
        let c = p.counters();
        assert_eq!((c.busy, c.not_attempted, c.in_progress), (1, 1, 1));
        // The call in progress still reports.
        assert_eq!(
            p.finish(1, 1, Outcome::Answered, 200, None, 3),
            Some(Final::Answered)
        );
        assert!(p.complete());
    }

    #[test]
    fn dirty_chunks_follow_changes() {
        let mut p = Progress::new(&vec![None; 2500], policy(&[], 1)).unwrap();
        assert_eq!(p.chunks(), 3);
        p.take(0, 1, &always, &mut node_a);
        assert_eq!(p.take_dirty().into_iter().collect::<Vec<_>>(), [0]);
        assert!(p.take_dirty().is_empty());
        assert_eq!(p.chunk(2).count(), 500);
    }
}
