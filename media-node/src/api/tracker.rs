//! The calls the API knows: their state, their events (to watchers and
//! status webhooks), and the [`TrackingHandler`] that learns when calls are
//! answered and end by wrapping whatever [`CallHandler`] bridges media.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchboard_proto::v1alpha1 as pb;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::call::{
    AnsweredCall, CallDirection, CallHandler, CallSession, DtmfEvent, HangupHandle, HangupReason,
    MediaParams, PendingCall, PrepareFuture,
};
use crate::webhook::{CallWebhook, Webhooks};

/// Events buffered for slow watchers before they miss some.
const EVENT_BUFFER: usize = 1024;

/// The four events of a call, as named in webhooks and streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The call exists (outbound: accepted by the API and queued).
    Initiated,
    /// The callee is ringing.
    Ringing,
    /// The call was answered.
    Answered,
    /// A transfer moved on (`Call.transfer` says where it stands).
    Transfer,
    /// The call is over.
    Completed,
}

impl EventKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Initiated => "initiated",
            EventKind::Ringing => "ringing",
            EventKind::Answered => "answered",
            EventKind::Transfer => "transfer",
            EventKind::Completed => "completed",
        }
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new call id: "CA" and 32 hex digits, like the callSid agents expect.
pub fn new_call_id() -> String {
    format!("CA{:032x}", rand::random::<u128>())
}

/// Human-readable text of a hangup reason.
pub fn reason_text(r: &HangupReason) -> String {
    match r {
        HangupReason::RemoteBye => "remote party hung up".into(),
        HangupReason::Local(why) => format!("hung up: {why}"),
        HangupReason::SessionExpired => "session expired".into(),
        HangupReason::NoAck => "no ACK for our answer".into(),
        HangupReason::Cancelled => "caller cancelled".into(),
        HangupReason::MaxDuration => "maximum call duration reached".into(),
    }
}

struct Entry {
    call: pb::Call,
    webhook: Option<CallWebhook>,
    /// Cancels the dial while queued or ringing.
    cancel: Option<CancellationToken>,
    /// Ends the answered call.
    hangup: Option<HangupHandle>,
    answered: Option<Instant>,
    /// Set when the API asked to hang up, with its reason: the final reason says so.
    hangup_requested: Option<String>,
}

#[derive(Default)]
struct State {
    calls: HashMap<String, Entry>,
    /// SIP Call-ID -> our id.
    by_sip: HashMap<String, String>,
    /// Completed ids, oldest first (bounded retention).
    completed: VecDeque<String>,
    /// Dial idempotency keys (`Call.client_ref`) -> our id, for the calls in
    /// `calls` that have one: live calls and retained completed ones, so it
    /// is bounded like `calls`.
    by_client_ref: HashMap<String, String>,
}

impl State {
    /// The call `client_ref` names, if one is still known.
    fn by_client_ref(&self, client_ref: &str) -> Option<&Entry> {
        self.by_client_ref
            .get(client_ref)
            .and_then(|id| self.calls.get(id))
    }

    /// Forgets a call (retention): its entry and its idempotency key.
    fn evict(&mut self, id: &str) {
        let Some(e) = self.calls.remove(id) else {
            return;
        };
        let key = &e.call.client_ref;
        if !key.is_empty() && self.by_client_ref.get(key).is_some_and(|k| k == id) {
            self.by_client_ref.remove(key);
        }
    }
}

/// What [`CallTracker::outbound_once`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission<T> {
    /// A new call, registered (`initiated` emitted), with what the
    /// reservation returned.
    New(Box<pb::Call>, T),
    /// A call with the same `client_ref` is known (live or retained
    /// completed): nothing was registered or reserved.
    Existing(Box<pb::Call>),
}

/// What a hangup request found.
#[derive(Debug, Clone, PartialEq)]
pub enum HangupResult {
    /// The call is being ended; its completion follows as an event.
    Ending(Box<pb::Call>),
    /// No such call.
    NotFound,
    /// The call is already over.
    AlreadyCompleted(Box<pb::Call>),
}

/// What a call-control request (DTMF) found.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlResult {
    /// Handed to the call.
    Sent(Box<pb::Call>),
    /// No such call.
    NotFound,
    /// The call is not answered (yet, or any more).
    NotAnswered(Box<pb::Call>),
    /// Another transfer of the call is under way.
    Busy(Box<pb::Call>),
}

/// The final reason of a call the API hung up: "hung up by the API", with the
/// caller's reason when one was given.
fn api_reason(why: &str, when: &str) -> String {
    if why == "call API" {
        format!("hung up by the API{when}")
    } else {
        format!("hung up by the API{when}: {why}")
    }
}

/// The API's view of calls. Cheap to clone.
#[derive(Clone)]
pub struct CallTracker {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<pb::CallEvent>,
    webhooks: Option<Webhooks>,
    retention: usize,
}

impl CallTracker {
    /// A tracker keeping the last `retention` completed calls, sending
    /// status webhooks with `webhooks` (None: no webhooks).
    pub fn new(webhooks: Option<Webhooks>, retention: usize) -> CallTracker {
        CallTracker {
            state: Default::default(),
            events: broadcast::channel(EVENT_BUFFER).0,
            webhooks,
            retention,
        }
    }

    /// Wraps the media handler so answered and ended calls are tracked.
    pub fn wrap(&self, inner: Arc<dyn CallHandler>) -> Arc<dyn CallHandler> {
        Arc::new(TrackingHandler {
            inner,
            tracker: self.clone(),
        })
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<pb::CallEvent> {
        self.events.subscribe()
    }

    /// Emits an event for the call in `e` (lock held by the caller).
    fn emit(&self, e: &Entry, kind: EventKind) {
        let ev = pb::CallEvent {
            event: kind.as_str().to_owned(),
            timestamp_ms: now_ms(),
            call: Some(e.call.clone()),
        };
        if let Some(w) = &e.webhook {
            match serde_json::to_vec(&ev) {
                Ok(body) => w.send(body),
                Err(err) => tracing::warn!(error = %err, "cannot serialise a call event"),
            }
        }
        // No watcher is fine.
        let _ = self.events.send(ev);
    }

    fn webhook_for(&self, url: &str, id: &str) -> Option<CallWebhook> {
        match &self.webhooks {
            Some(w) if !url.is_empty() => Some(w.for_call(url, id)),
            _ => None,
        }
    }

    /// Registers an outbound call the API accepted (state QUEUED) and emits
    /// `initiated` (`status_webhook` is the number's), unless its
    /// `client_ref` (when not empty) names a call the tracker still knows,
    /// which is then returned instead. The lookup, `reserve` (e.g.
    /// taking the call's queue place; its error is returned and nothing is
    /// registered) and the insertion happen under one lock, so concurrent
    /// calls with one key register exactly one call. `reserve` must not call
    /// back into the tracker.
    pub fn outbound_once<T, E>(
        &self,
        call: pb::Call,
        status_webhook: &str,
        cancel: CancellationToken,
        reserve: impl FnOnce() -> Result<T, E>,
    ) -> Result<Admission<T>, E> {
        let Ok(mut s) = self.state.lock() else {
            // A poisoned tracker (a panic under its lock) tracks nothing
            // any more: the call goes on untracked, as every other call.
            let reserved = reserve()?;
            return Ok(Admission::New(Box::new(call), reserved));
        };
        if !call.client_ref.is_empty()
            && let Some(e) = s.by_client_ref(&call.client_ref)
        {
            return Ok(Admission::Existing(Box::new(e.call.clone())));
        }
        let reserved = reserve()?;
        let entry = Entry {
            webhook: self.webhook_for(status_webhook, &call.id),
            call,
            cancel: Some(cancel),
            hangup: None,
            answered: None,
            hangup_requested: None,
        };
        self.emit(&entry, EventKind::Initiated);
        let snapshot = entry.call.clone();
        if !snapshot.client_ref.is_empty() {
            s.by_client_ref
                .insert(snapshot.client_ref.clone(), snapshot.id.clone());
        }
        s.calls.insert(snapshot.id.clone(), entry);
        Ok(Admission::New(Box::new(snapshot), reserved))
    }

    /// The call a Dial with this idempotency key placed, while it is known
    /// (live or retained completed).
    pub fn by_client_ref(&self, client_ref: &str) -> Option<pb::Call> {
        if client_ref.is_empty() {
            return None;
        }
        let s = self.state.lock().ok()?;
        s.by_client_ref(client_ref).map(|e| e.call.clone())
    }

    /// Applies `f` to a live call's entry.
    fn update(&self, id: &str, f: impl FnOnce(&mut State, &str)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s, id);
        }
    }

    /// The dial left the queue.
    pub fn dialing(&self, id: &str) {
        self.update(id, |s, id| {
            if let Some(e) = s.calls.get_mut(id)
                && e.call.state() == pb::CallState::Queued
            {
                e.call.set_state(pb::CallState::Dialing);
            }
        });
    }

    /// An attempt with this SIP Call-ID started (called before the INVITE
    /// is sent, so the answer always finds the call).
    pub fn attempt(&self, id: &str, sip_call_id: &str, trunk_id: &str) {
        self.update(id, |s, id| {
            let Some(e) = s.calls.get_mut(id) else { return };
            let old = std::mem::replace(&mut e.call.sip_call_id, sip_call_id.to_owned());
            e.call.trunk_id = trunk_id.to_owned();
            s.by_sip.remove(&old);
            s.by_sip.insert(sip_call_id.to_owned(), id.to_owned());
        });
    }

    /// The callee rings (emitted once per call).
    pub fn ringing(&self, id: &str) {
        self.update(id, |s, id| {
            let Some(e) = s.calls.get_mut(id) else { return };
            if matches!(
                e.call.state(),
                pb::CallState::Queued | pb::CallState::Dialing
            ) {
                e.call.set_state(pb::CallState::Ringing);
                self.emit(e, EventKind::Ringing);
            }
        });
    }

    /// The call ended before being answered (or the dial failed).
    pub fn failed(&self, id: &str, code: Option<u16>, reason: &str) {
        self.update(id, |s, id| {
            let Some(e) = s.calls.get_mut(id) else { return };
            if e.call.state() == pb::CallState::Completed
                || e.call.state() == pb::CallState::Answered
            {
                return;
            }
            e.call.final_code = code.map(u32::from).unwrap_or(0);
            e.call.reason = match &e.hangup_requested {
                Some(why) => api_reason(why, " before answer"),
                None => reason.to_owned(),
            };
            self.complete(s, id);
        });
    }

    /// Marks a call completed, emits the event and retires it (lock held).
    fn complete(&self, s: &mut State, id: &str) {
        let Some(e) = s.calls.get_mut(id) else { return };
        e.call.set_state(pb::CallState::Completed);
        e.call.ended_at_ms = now_ms();
        if let Some(t) = e.answered {
            e.call.duration_seconds = t.elapsed().as_secs_f64();
        }
        e.cancel = None;
        e.hangup = None;
        self.emit(e, EventKind::Completed);
        // Dropping the webhook sender ends its task once delivered.
        e.webhook = None;
        let sip = e.call.sip_call_id.clone();
        s.by_sip.remove(&sip);
        s.completed.push_back(id.to_owned());
        while s.completed.len() > self.retention {
            if let Some(old) = s.completed.pop_front() {
                s.evict(&old);
            }
        }
    }

    /// A call was answered (from the media handler).
    fn answered(&self, call: &mut AnsweredCall) {
        let Ok(mut s) = self.state.lock() else { return };
        let id = match s.by_sip.get(&call.call_id) {
            Some(id) => id.clone(),
            None => {
                // Inbound calls (and outbound ones placed without the API)
                // become visible when answered.
                let id = new_call_id();
                let webhook_url = call
                    .agent
                    .as_ref()
                    .map(|a| a.status_webhook.clone())
                    .unwrap_or_default();
                let mut c = pb::Call {
                    id: id.clone(),
                    from: call.from.clone(),
                    to: call.to.clone(),
                    number_id: call.number_id.clone(),
                    trunk_id: call.trunk_id.clone(),
                    sip_call_id: call.call_id.clone(),
                    created_at_ms: now_ms(),
                    ..Default::default()
                };
                c.set_direction(match call.direction {
                    CallDirection::Inbound => pb::CallDirection::Inbound,
                    CallDirection::Outbound => pb::CallDirection::Outbound,
                });
                c.set_state(pb::CallState::Dialing);
                let entry = Entry {
                    webhook: self.webhook_for(&webhook_url, &id),
                    call: c,
                    cancel: None,
                    hangup: None,
                    answered: None,
                    hangup_requested: None,
                };
                self.emit(&entry, EventKind::Initiated);
                s.calls.insert(id.clone(), entry);
                s.by_sip.insert(call.call_id.clone(), id.clone());
                id
            }
        };
        // The agent learns our id, to correlate with API events and
        // webhooks (a parameter the number sets itself wins).
        if let Some(agent) = call.agent.as_mut() {
            agent
                .parameters
                .entry("callId".to_owned())
                .or_insert_with(|| id.clone());
        }
        let Some(e) = s.calls.get_mut(&id) else {
            return;
        };
        e.call.set_state(pb::CallState::Answered);
        e.call.answered_at_ms = now_ms();
        e.call.final_code = 200;
        // Redacted: the call's status and events leave the node (API, webhooks).
        e.call.agent_url = call
            .agent
            .as_ref()
            .map(|a| crate::redact::url(&a.url))
            .unwrap_or_default();
        e.answered = Some(Instant::now());
        e.cancel = None;
        e.hangup = Some(call.hangup.clone());
        self.emit(e, EventKind::Answered);
    }

    /// A transfer of an answered call moved on (from the SIP side).
    fn transfer_update(&self, sip_call_id: &str, u: &crate::call::transfer::TransferUpdate) {
        let Ok(mut s) = self.state.lock() else { return };
        let Some(id) = s.by_sip.get(sip_call_id).cloned() else {
            return;
        };
        if let Some(e) = s.calls.get_mut(&id) {
            e.call.transfer = Some(pb::TransferStatus {
                target: u.target.clone(),
                state: u.state.as_str().to_owned(),
                code: u32::from(u.code),
                reason: u.reason.clone(),
            });
            let e = &*e;
            self.emit(e, EventKind::Transfer);
        }
    }

    /// Asks an answered call to transfer to `target` (checked by the caller).
    pub fn transfer(
        &self,
        id: &str,
        target: &str,
        timeout: Duration,
        how: Option<crate::call::transfer::How>,
        headers: Vec<(String, String)>,
    ) -> ControlResult {
        let Ok(s) = self.state.lock() else {
            return ControlResult::NotFound;
        };
        let Some(e) = s.calls.get(id) else {
            return ControlResult::NotFound;
        };
        let call = Box::new(e.call.clone());
        let busy = e
            .call
            .transfer
            .as_ref()
            .is_some_and(|t| !matches!(t.state.as_str(), "succeeded" | "failed"));
        match &e.hangup {
            _ if busy => ControlResult::Busy(call),
            Some(h)
                if e.call.state() == pb::CallState::Answered
                    && h.transfer(target, timeout, how, headers) =>
            {
                ControlResult::Sent(call)
            }
            _ => ControlResult::NotAnswered(call),
        }
    }

    /// An answered call ended (from the media handler).
    fn ended(&self, sip_call_id: &str, reason: &HangupReason) {
        let Ok(mut s) = self.state.lock() else { return };
        let Some(id) = s.by_sip.get(sip_call_id).cloned() else {
            return;
        };
        if let Some(e) = s.calls.get_mut(&id) {
            e.call.reason = match (reason, &e.hangup_requested) {
                (HangupReason::Local(_), Some(why)) => api_reason(why, ""),
                _ => reason_text(reason),
            };
        }
        self.complete(&mut s, &id);
    }

    /// The outbound engine reported an answered dial: if the API asked to
    /// hang up meanwhile, the call ends now.
    pub fn dial_answered(&self, id: &str) {
        let handle = self.state.lock().ok().and_then(|s| {
            let e = s.calls.get(id)?;
            let why = e.hangup_requested.clone()?;
            Some((e.hangup.clone()?, why))
        });
        if let Some((h, why)) = handle {
            h.hangup(&why);
        }
    }

    /// Ends a call in any state, for `reason`.
    pub fn hangup(&self, id: &str, reason: &str) -> HangupResult {
        let Ok(mut s) = self.state.lock() else {
            return HangupResult::NotFound;
        };
        let Some(e) = s.calls.get_mut(id) else {
            return HangupResult::NotFound;
        };
        if e.call.state() == pb::CallState::Completed {
            return HangupResult::AlreadyCompleted(Box::new(e.call.clone()));
        }
        e.hangup_requested = Some(reason.to_owned());
        if let Some(h) = &e.hangup {
            h.hangup(reason);
        }
        if let Some(c) = &e.cancel {
            c.cancel();
        }
        HangupResult::Ending(Box::new(e.call.clone()))
    }

    /// Sends DTMF digits (validated) into an answered call.
    pub fn send_dtmf(&self, id: &str, digits: &str) -> ControlResult {
        let Ok(s) = self.state.lock() else {
            return ControlResult::NotFound;
        };
        let Some(e) = s.calls.get(id) else {
            return ControlResult::NotFound;
        };
        let call = Box::new(e.call.clone());
        match &e.hangup {
            Some(h) if e.call.state() == pb::CallState::Answered && h.send_dtmf(digits) => {
                ControlResult::Sent(call)
            }
            _ => ControlResult::NotAnswered(call),
        }
    }

    /// One call.
    pub fn get(&self, id: &str) -> Option<pb::Call> {
        self.state
            .lock()
            .ok()?
            .calls
            .get(id)
            .map(|e| e.call.clone())
    }

    /// Live calls (oldest first), then completed ones (oldest first), only
    /// those whose `client_ref` starts with `client_ref_prefix` (empty:
    /// every call).
    pub fn list(&self, client_ref_prefix: &str) -> Vec<pb::Call> {
        let Ok(s) = self.state.lock() else {
            return vec![];
        };
        let wanted = |e: &&Entry| e.call.client_ref.starts_with(client_ref_prefix);
        let mut live: Vec<pb::Call> = s
            .calls
            .values()
            .filter(|e| e.call.state() != pb::CallState::Completed)
            .filter(wanted)
            .map(|e| e.call.clone())
            .collect();
        live.sort_by_key(|c| c.created_at_ms);
        live.extend(
            s.completed
                .iter()
                .filter_map(|id| s.calls.get(id))
                .filter(wanted)
                .map(|e| e.call.clone()),
        );
        live
    }
}

/// Wraps the media handler: tells the tracker about answers and ends, and
/// forwards everything to the real handler unchanged.
struct TrackingHandler {
    inner: Arc<dyn CallHandler>,
    tracker: CallTracker,
}

struct TrackingSession {
    inner: Box<dyn CallSession>,
    sip_call_id: String,
    tracker: CallTracker,
}

// Every CallHandler method is forwarded: a default here would silently
// disable the inner handler's version (the agent connect in `prepare`).
impl CallHandler for TrackingHandler {
    fn prepare(&self, call: &PendingCall) -> PrepareFuture {
        self.inner.prepare(call)
    }
    fn register_metrics(&self, registry: &prometheus::Registry) {
        self.inner.register_metrics(registry);
    }
    fn on_answered(&self, mut call: AnsweredCall) -> Box<dyn CallSession> {
        self.tracker.answered(&mut call);
        let sip_call_id = call.call_id.clone();
        Box::new(TrackingSession {
            inner: self.inner.on_answered(call),
            sip_call_id,
            tracker: self.tracker.clone(),
        })
    }
}

impl CallSession for TrackingSession {
    fn on_dtmf(&mut self, event: DtmfEvent) {
        self.inner.on_dtmf(event);
    }
    fn on_media_update(&mut self, media: &MediaParams) {
        self.inner.on_media_update(media);
    }
    fn send_dtmf(&mut self, digits: &str) {
        self.inner.send_dtmf(digits);
    }
    fn link(&mut self) -> Option<crate::call::MediaLink> {
        self.inner.link()
    }
    fn join(&mut self, peer: crate::call::MediaLink) -> bool {
        self.inner.join(peer)
    }
    fn on_transfer(&mut self, update: &crate::call::transfer::TransferUpdate) {
        self.tracker.transfer_update(&self.sip_call_id, update);
        self.inner.on_transfer(update);
    }
    fn on_hangup(&mut self, reason: &HangupReason) {
        self.inner.on_hangup(reason);
        self.tracker.ended(&self.sip_call_id, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A queued call, created after the previous one (the list's order).
    fn queued(client_ref: &str) -> pb::Call {
        static CREATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut c = pb::Call {
            id: new_call_id(),
            client_ref: client_ref.to_owned(),
            created_at_ms: CREATED.fetch_add(1, Ordering::SeqCst),
            ..Default::default()
        };
        c.set_direction(pb::CallDirection::Outbound);
        c.set_state(pb::CallState::Queued);
        c
    }

    /// Registers a call, counting reservations in `reserved`.
    fn admit(t: &CallTracker, client_ref: &str, reserved: &AtomicUsize) -> Admission<()> {
        t.outbound_once(queued(client_ref), "", CancellationToken::new(), || {
            reserved.fetch_add(1, Ordering::SeqCst);
            Ok::<(), String>(())
        })
        .expect("admitted")
    }

    fn id(a: &Admission<()>) -> &str {
        match a {
            Admission::New(c, ()) | Admission::Existing(c) => &c.id,
        }
    }

    #[test]
    fn one_key_registers_one_call_and_reserves_once() {
        let t = CallTracker::new(None, 10);
        let reserved = AtomicUsize::new(0);
        let first = admit(&t, "camp/a/1", &reserved);
        assert!(matches!(first, Admission::New(..)));
        let again = admit(&t, "camp/a/1", &reserved);
        assert!(matches!(again, Admission::Existing(..)), "{again:?}");
        assert_eq!(id(&again), id(&first));
        assert_eq!(reserved.load(Ordering::SeqCst), 1, "no second queue place");
        assert_eq!(t.list("").len(), 1);
        assert_eq!(
            t.by_client_ref("camp/a/1").map(|c| c.id),
            Some(id(&first).to_owned())
        );
        // Without a key every Dial is a new call.
        let a = admit(&t, "", &reserved);
        let b = admit(&t, "", &reserved);
        assert!(matches!((&a, &b), (Admission::New(..), Admission::New(..))));
        assert_ne!(id(&a), id(&b));
        assert!(t.by_client_ref("").is_none());
        assert_eq!(t.list("").len(), 3);
    }

    #[test]
    fn concurrent_dials_with_one_key_register_one_call() {
        let t = CallTracker::new(None, 10);
        let reserved = Arc::new(AtomicUsize::new(0));
        let ids: Vec<String> = (0..8)
            .map(|_| {
                let (t, reserved) = (t.clone(), reserved.clone());
                std::thread::spawn(move || {
                    let a = t
                        .outbound_once(queued("race"), "", CancellationToken::new(), || {
                            // Widen the window a racy check-then-insert would lose in.
                            std::thread::sleep(Duration::from_millis(5));
                            reserved.fetch_add(1, Ordering::SeqCst);
                            Ok::<(), String>(())
                        })
                        .expect("admitted");
                    id(&a).to_owned()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        assert_eq!(reserved.load(Ordering::SeqCst), 1);
        assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
        assert_eq!(t.list("").len(), 1);
    }

    #[test]
    fn a_refused_reservation_registers_nothing_and_keeps_the_key_free() {
        let t = CallTracker::new(None, 10);
        let r = t.outbound_once(queued("k"), "", CancellationToken::new(), || {
            Err::<(), _>("queue full")
        });
        assert_eq!(r, Err("queue full"));
        assert!(t.list("").is_empty());
        assert!(t.by_client_ref("k").is_none());
        let reserved = AtomicUsize::new(0);
        assert!(matches!(admit(&t, "k", &reserved), Admission::New(..)));
    }

    #[test]
    fn completed_calls_keep_their_key_until_retention_evicts_them() {
        let t = CallTracker::new(None, 1);
        let reserved = AtomicUsize::new(0);
        let first = id(&admit(&t, "k1", &reserved)).to_owned();
        t.failed(&first, Some(486), "rejected by the carrier");
        // Completed and retained: still the same call.
        let again = admit(&t, "k1", &reserved);
        assert!(matches!(again, Admission::Existing(..)));
        assert_eq!(id(&again), first);
        assert_eq!(
            t.by_client_ref("k1").map(|c| c.state()),
            Some(pb::CallState::Completed)
        );
        // A second completed call pushes the first out of the retention, and its key with it.
        let second = id(&admit(&t, "k2", &reserved)).to_owned();
        t.failed(&second, None, "ringing timeout");
        assert!(t.get(&first).is_none());
        assert!(t.by_client_ref("k1").is_none());
        let s = t.state.lock().expect("lock");
        assert_eq!(
            s.by_client_ref.len(),
            1,
            "the map is bounded like the calls"
        );
        drop(s);
        let fresh = admit(&t, "k1", &reserved);
        assert!(matches!(fresh, Admission::New(..)));
        assert_ne!(id(&fresh), first);
    }

    #[test]
    fn list_filters_by_client_ref_prefix() {
        let t = CallTracker::new(None, 10);
        let reserved = AtomicUsize::new(0);
        let a1 = id(&admit(&t, "ns/spring/1", &reserved)).to_owned();
        let a2 = id(&admit(&t, "ns/spring/2", &reserved)).to_owned();
        let b = id(&admit(&t, "ns/summer/1", &reserved)).to_owned();
        let none = id(&admit(&t, "", &reserved)).to_owned();
        t.failed(&a1, None, "queue timeout");
        let ids = |p: &str| t.list(p).into_iter().map(|c| c.id).collect::<Vec<_>>();
        // Live first, then completed: a2 before the completed a1.
        assert_eq!(ids("ns/spring/"), vec![a2.clone(), a1.clone()]);
        assert_eq!(ids("ns/summer/"), vec![b.clone()]);
        assert_eq!(ids("ns/"), vec![a2.clone(), b.clone(), a1.clone()]);
        assert!(ids("ns/autumn").is_empty());
        assert_eq!(ids("").len(), 4);
        assert!(ids("").contains(&none));
    }
}
