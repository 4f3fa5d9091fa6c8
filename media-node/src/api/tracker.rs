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
    /// `initiated`. `status_webhook` is the number's.
    pub fn outbound(
        &self,
        call: pb::Call,
        status_webhook: &str,
        cancel: CancellationToken,
    ) -> pb::Call {
        let webhook = self.webhook_for(status_webhook, &call.id);
        let entry = Entry {
            call,
            webhook,
            cancel: Some(cancel),
            hangup: None,
            answered: None,
            hangup_requested: None,
        };
        let Ok(mut s) = self.state.lock() else {
            return entry.call;
        };
        self.emit(&entry, EventKind::Initiated);
        let snapshot = entry.call.clone();
        s.calls.insert(snapshot.id.clone(), entry);
        snapshot
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
                s.calls.remove(&old);
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

    /// Live calls (oldest first), then completed ones (oldest first).
    pub fn list(&self) -> Vec<pb::Call> {
        let Ok(s) = self.state.lock() else {
            return vec![];
        };
        let mut live: Vec<pb::Call> = s
            .calls
            .values()
            .filter(|e| e.call.state() != pb::CallState::Completed)
            .map(|e| e.call.clone())
            .collect();
        live.sort_by_key(|c| c.created_at_ms);
        live.extend(
            s.completed
                .iter()
                .filter_map(|id| s.calls.get(id).map(|e| e.call.clone())),
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
