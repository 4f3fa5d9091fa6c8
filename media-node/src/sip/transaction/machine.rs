//! The transaction state machines (RFC 3261 section 17 with the RFC 6026
//! "Accepted" states), free of I/O: every input carries the current time,
//! and every effect (bytes to send, events for the transaction user, events
//! for a client transaction's owner) is queued as an [`Output`] for the
//! shell to carry out. Timers are deadlines in one ordered structure that
//! the shell fires with [`Transactions::on_timers`].
//!
//! A server transaction remembers the keys of its armed timers and cancels
//! them when it changes state or ends, so nothing it owned (its key, its
//! last response) outlives the RFC 3261 timer that ends it. 2xx answers to
//! INVITE are retransmitted here until the ACK arrives (RFC 3261 13.3.1.4,
//! RFC 6026), matched on the full dialog id, never on the Call-ID alone.
//!
//! CANCEL is answered here, not by the TU: a CANCEL that finds its INVITE
//! still proceeding gets 200 and the INVITE gets 487 at that instant, so a
//! final answer the TU sends later (its 200 may already be on the way) is
//! dropped and can never follow the 200 to CANCEL (RFC 3261 9.2).
//!
//! Hostile input: transaction keys have a bounded size (a longer branch is
//! refused with 400 before any state is created), and the table of server
//! transactions is bounded per node and per source IP; beyond the bounds a
//! new request gets one stateless 503 and is counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::timers::{TimerKey, Timers};
use super::{
    ClientEvent, ClientTxnId, INVITE_ABANDON, MAX_BRANCH_LEN, MAX_KEY_LEN, ServerRequest,
    ServerTxnId, T1, T2, T4, T64, TuEvent, TxnLimits, cancel_for, non_2xx_ack, random_token,
};
use crate::metrics::Metrics;
use crate::sip::headers::{Via, param};
use crate::sip::message::{Message, Method, reason_phrase};
use crate::sip::transport::Peer;

/// An effect for the I/O shell to carry out.
#[derive(Debug)]
pub(crate) enum Output<S> {
    /// Bytes for the transport. `request` names the client transaction
    /// whose first copy this is: if the transport refuses it, the shell
    /// reports that with [`Transactions::send_failed`].
    Send {
        peer: Peer,
        bytes: Bytes,
        request: Option<ClientTxnId>,
    },
    /// An event for the transaction user.
    Tu(TuEvent),
    /// An event for the owner of a client transaction.
    Client { to: S, event: ClientEvent },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SState {
    Proceeding,
    Completed,
    Confirmed,
    Accepted,
}

struct ServerTxn {
    invite: bool,
    state: SState,
    peer: Peer,
    /// The request, kept while an INVITE proceeds so that a CANCEL can be
    /// answered with its 487.
    request: Option<Message>,
    /// The To tag of our responses so far (the early dialog's).
    local_tag: Option<Arc<str>>,
    last_response: Option<Bytes>,
    interval: Duration,
    /// Timer G, while armed.
    retransmit: Option<TimerKey>,
    /// The timer that ends the transaction (abandon, H, I, J or L), while
    /// armed. Replaced, not added to, on each state change.
    end: Option<TimerKey>,
}

/// Identifies a dialog's INVITE, to match the ACK for its 2xx and the
/// 2xx's retransmissions (RFC 3261 13.3.1.4: the ACK has its own branch).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct AckKey {
    call_id: Arc<str>,
    /// The peer's tag (From).
    remote_tag: Arc<str>,
    /// Our tag (To).
    local_tag: Arc<str>,
    cseq: u32,
}

impl AckKey {
    /// From a 2xx we send or an ACK we receive (same From, To, Call-ID).
    pub(crate) fn of(msg: &Message) -> Option<AckKey> {
        let tag = |name: &str| {
            msg.header(name)
                .and_then(|v| param(v, "tag"))
                .unwrap_or("")
                .into()
        };
        Some(AckKey {
            call_id: msg.call_id()?.into(),
            remote_tag: tag("From"),
            local_tag: tag("To"),
            cseq: msg.cseq()?.0,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CState {
    Calling,
    Proceeding,
    Completed,
    Accepted,
}

struct ClientTxn<S> {
    invite: bool,
    state: CState,
    request: Message,
    bytes: Bytes,
    dest: Peer,
    events: S,
    interval: Duration,
    ack: Option<Bytes>,
}

struct Pending2xx {
    bytes: Bytes,
    peer: Peer,
    interval: Duration,
    started: Instant,
    /// The next retransmission, while armed.
    timer: Option<TimerKey>,
}

#[derive(Debug, Clone)]
enum Timer {
    /// A / E: retransmit a client request.
    ClientRetransmit(ClientTxnId),
    /// B / F: client transaction timeout.
    ClientTimeout(ClientTxnId),
    /// D / K / M: forget a completed or accepted client transaction.
    ClientTerminate(ClientTxnId),
    /// G: retransmit a final non-2xx INVITE response.
    ServerRetransmit(ServerTxnId),
    /// H: no ACK for a non-2xx final response.
    ServerAckTimeout(ServerTxnId),
    /// I / J / L: forget a server transaction.
    ServerTerminate(ServerTxnId),
    /// Safety net for a TU that never answers.
    ServerAbandon(ServerTxnId),
    /// Retransmit a 2xx to INVITE until ACKed.
    Retransmit2xx(AckKey),
}

/// Every transaction of the node. `S` is where a client transaction's
/// events go (a channel sender in the shell, anything in tests).
pub(crate) struct Transactions<S> {
    metrics: Metrics,
    limits: TxnLimits,
    servers: HashMap<ServerTxnId, ServerTxn>,
    /// Live server transactions per source IP (entries removed at zero).
    per_source: HashMap<IpAddr, usize>,
    clients: HashMap<ClientTxnId, ClientTxn<S>>,
    pending_2xx: HashMap<AckKey, Pending2xx>,
    timers: Timers<Timer>,
    out: Vec<Output<S>>,
}

/// Arms `timer` in `slot`, cancelling what the slot held.
fn arm(timers: &mut Timers<Timer>, slot: &mut Option<TimerKey>, timer: Timer, at: Instant) {
    if let Some(old) = slot.take() {
        timers.remove(&old);
    }
    *slot = Some(timers.insert(at, timer));
}

/// Zero over a reliable transport (TCP, TLS), `wait` over UDP.
fn unless_reliable(peer: &Peer, wait: Duration) -> Duration {
    if peer.proto.is_reliable() {
        Duration::ZERO
    } else {
        wait
    }
}

impl<S: Clone> Transactions<S> {
    /// An empty table with these bounds.
    pub(crate) fn new(metrics: Metrics, limits: TxnLimits) -> Self {
        Transactions {
            metrics,
            limits,
            servers: HashMap::new(),
            per_source: HashMap::new(),
            clients: HashMap::new(),
            pending_2xx: HashMap::new(),
            timers: Timers::default(),
            out: Vec::new(),
        }
    }

    /// The effects queued since the last call, in order.
    pub(crate) fn drain(&mut self) -> std::vec::Drain<'_, Output<S>> {
        self.out.drain(..)
    }

    /// When [`Transactions::on_timers`] next has work.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    fn send(&mut self, peer: Peer, bytes: Bytes) {
        self.out.push(Output::Send {
            peer,
            bytes,
            request: None,
        });
    }

    fn tu(&mut self, ev: TuEvent) {
        self.out.push(Output::Tu(ev));
    }

    /// A message from the network.
    pub(crate) fn on_message(&mut self, now: Instant, msg: Message, peer: Peer) {
        if msg.is_request() {
            self.on_request(now, msg, peer);
        } else {
            self.on_response(now, msg);
        }
    }

    /// The server transaction key (RFC 3261 17.2.3): branch, sent-by and
    /// method; the identifying headers for RFC 2543 peers. Refused when a
    /// part is longer than the bounds, so a key never holds more than
    /// [`MAX_KEY_LEN`] bytes of the peer's choosing.
    pub(crate) fn server_key(
        via: &Via,
        msg: &Message,
        method: &Method,
    ) -> Result<ServerTxnId, &'static str> {
        let m = if *method == Method::Ack {
            "INVITE"
        } else {
            method.as_str()
        };
        // Checked before formatting: the parts' sizes come from the network.
        let fixed = via.host.len() + m.len() + 16;
        if via.has_rfc3261_branch() {
            let branch = via.branch.as_deref().unwrap_or_default();
            if branch.len() > MAX_BRANCH_LEN {
                return Err("Via branch too long");
            }
            if fixed + branch.len() > MAX_KEY_LEN {
                return Err("transaction key too long");
            }
            Ok(ServerTxnId(
                format!("{branch}|{}|{m}", via.sent_by()).into(),
            ))
        } else {
            // RFC 2543 peers: match on the identifying headers (17.2.3).
            let from_tag = msg
                .header("From")
                .and_then(|f| param(f, "tag"))
                .unwrap_or("");
            let call_id = msg.call_id().unwrap_or("");
            let ruri = msg.request_uri().unwrap_or("");
            if fixed + from_tag.len() + call_id.len() + ruri.len() + 16 > MAX_KEY_LEN {
                return Err("transaction key too long");
            }
            let cseq = msg.cseq().map(|c| c.0).unwrap_or(0);
            Ok(ServerTxnId(
                format!(
                    "2543|{call_id}|{ruri}|{from_tag}|{cseq}|{}|{m}",
                    via.sent_by()
                )
                .into(),
            ))
        }
    }

    /// Checks the headers every request needs (RFC 3261 8.2).
    pub(crate) fn validate(msg: &Message, method: &Method) -> Result<Via, &'static str> {
        let via = msg.top_via().ok_or("missing Via")?;
        let via = Via::parse(via).map_err(|_| "invalid Via")?;
        if msg.call_id().is_none_or(|c| c.is_empty()) {
            return Err("missing Call-ID");
        }
        // Header fields that may appear once (RFC 3261 7.3.1, RFC 4475 3.3.8): a second one
        // leaves the request ambiguous, whichever of them we would pick.
        for (name, why) in [
            ("Call-ID", "duplicate Call-ID"),
            ("CSeq", "duplicate CSeq"),
            ("From", "duplicate From"),
            ("To", "duplicate To"),
            ("Max-Forwards", "duplicate Max-Forwards"),
            ("Content-Length", "duplicate Content-Length"),
        ] {
            if msg.headers_named(name).nth(1).is_some() {
                return Err(why);
            }
        }
        let (_, cseq_method) = msg.cseq().ok_or("invalid CSeq")?;
        if cseq_method != *method {
            return Err("CSeq method does not match");
        }
        if msg.header("From").is_none() || msg.header("To").is_none() {
            return Err("missing From or To");
        }
        if let Some(mf) = msg.header("Max-Forwards")
            && mf.trim().parse::<u8>().is_err()
        {
            return Err("invalid Max-Forwards");
        }
        Ok(via)
    }

    fn on_request(&mut self, now: Instant, msg: Message, peer: Peer) {
        let Some(method) = msg.method() else { return };
        let via = match Self::validate(&msg, &method) {
            Ok(v) => v,
            Err(reason) => {
                self.metrics.reject("malformed");
                tracing::debug!(peer = %peer.addr, reason, "malformed request");
                // Answer 400 (never to ACK); the answer goes back where the request came
                // from, so a Via we cannot parse is copied, not needed.
                if method != Method::Ack && msg.top_via().is_some() {
                    let resp = msg.response(400, reason, None);
                    self.send(peer, resp.to_bytes());
                }
                return;
            }
        };
        // Max-Forwards 0 is for proxies to refuse (RFC 3261 16.3); the node is the request's
        // endpoint and answers it like any other (RFC 4475 3.3.11).
        let id = match Self::server_key(&via, &msg, &method) {
            Ok(id) => id,
            Err(reason) => {
                // Stateless: nothing of the oversized key is kept.
                self.metrics.reject("txn_key_too_long");
                tracing::debug!(peer = %peer.addr, reason, "transaction key refused");
                if method != Method::Ack {
                    let resp = msg.response(400, reason, None);
                    self.send(peer, resp.to_bytes());
                }
                return;
            }
        };
        if method == Method::Ack {
            self.on_ack(now, id, msg, peer);
            return;
        }
        if let Some(txn) = self.servers.get(&id) {
            // A retransmission: repeat the last response, if any.
            if let Some(last) = txn.last_response.clone() {
                let p = txn.peer;
                self.send(p, last);
            }
            return;
        }
        let ip = peer.addr.ip();
        let full = if self.servers.len() >= self.limits.max_server {
            Some("node")
        } else if self.per_source.get(&ip).copied().unwrap_or(0)
            >= self.limits.max_server_per_source
        {
            Some("source")
        } else {
            None
        };
        if let Some(limit) = full {
            // One stateless answer, so that the overload itself creates no state.
            self.metrics
                .transaction_overload
                .with_label_values(&[limit])
                .inc();
            tracing::debug!(peer = %peer.addr, limit, "transaction table full");
            let mut resp = msg.response(503, reason_phrase(503), None);
            resp.add("Retry-After", self.limits.retry_after_secs.to_string());
            self.send(peer, resp.to_bytes());
            return;
        }
        let invite = method == Method::Invite;
        let abandon = if invite { INVITE_ABANDON } else { T64 };
        let end = self
            .timers
            .insert(now + abandon, Timer::ServerAbandon(id.clone()));
        self.servers.insert(
            id.clone(),
            ServerTxn {
                invite,
                state: SState::Proceeding,
                peer,
                request: invite.then(|| msg.clone()),
                local_tag: None,
                last_response: None,
                interval: T1,
                retransmit: None,
                end: Some(end),
            },
        );
        *self.per_source.entry(ip).or_insert(0) += 1;
        self.update_gauge();
        if method == Method::Cancel {
            self.on_cancel(now, &via, id, msg);
            return;
        }
        if invite {
            // Answer at once rather than after 200 ms (RFC 3261 17.2.1
            // allows either): our TU may take longer (auth, capacity
            // checks), and the peer stops retransmitting as soon as it
            // sees a provisional answer.
            let trying = msg.response(100, "Trying", None);
            self.respond(now, &id, trying, false);
        }
        self.tu(TuEvent::Request(ServerRequest { id, msg, peer }));
    }

    /// An ACK: for a non-2xx final response it ends that INVITE server
    /// transaction's retransmissions; for a 2xx it is the TU's (and stops
    /// the 2xx retransmissions).
    fn on_ack(&mut self, now: Instant, id: ServerTxnId, msg: Message, peer: Peer) {
        if let Some(txn) = self.servers.get_mut(&id)
            && txn.invite
        {
            if txn.state == SState::Completed {
                txn.state = SState::Confirmed;
                // The ACK stops Timer G and replaces Timer H by Timer I.
                if let Some(k) = txn.retransmit.take() {
                    self.timers.remove(&k);
                }
                let wait = unless_reliable(&txn.peer, T4);
                arm(
                    &mut self.timers,
                    &mut txn.end,
                    Timer::ServerTerminate(id),
                    now + wait,
                );
            }
            if txn.state != SState::Accepted {
                return;
            }
        }
        if let Some(key) = AckKey::of(&msg)
            && let Some(p) = self.pending_2xx.remove(&key)
            && let Some(k) = p.timer
        {
            self.timers.remove(&k);
        }
        self.tu(TuEvent::Ack { msg, peer });
    }

    /// A CANCEL, whose own server transaction `id` exists already: 481 if
    /// it matches no INVITE, 200 otherwise, and 487 to the INVITE if that
    /// is still proceeding (RFC 3261 9.2).
    fn on_cancel(&mut self, now: Instant, via: &Via, id: ServerTxnId, msg: Message) {
        let invite_id = Self::server_key(via, &msg, &Method::Invite).ok();
        let Some((invite_id, invite)) = invite_id.and_then(|i| {
            let txn = self.servers.get(&i)?;
            Some((i, (txn.state, txn.request.clone(), txn.local_tag.clone())))
        }) else {
            let resp = msg.response(481, reason_phrase(481), None);
            self.respond(now, &id, resp, false);
            return;
        };
        let (state, request, tag) = invite;
        // The To tag of the early dialog if we answered with one, so the
        // 487 and the 200 belong to it (RFC 3261 9.2).
        let tag: Arc<str> = tag.unwrap_or_else(|| random_token(10).into());
        let ok = msg.response(200, reason_phrase(200), Some(&tag));
        self.respond(now, &id, ok, false);
        if state != SState::Proceeding {
            // Already answered: the CANCEL has no effect.
            return;
        }
        if let Some(request) = request {
            let resp = request.response(487, reason_phrase(487), Some(&tag));
            self.respond(now, &invite_id, resp, false);
        }
        self.tu(TuEvent::Cancelled { invite: invite_id });
    }

    fn update_gauge(&self) {
        self.metrics
            .server_transactions
            .set(i64::try_from(self.servers.len()).unwrap_or(i64::MAX));
    }

    /// Forgets a server transaction and cancels its timers.
    fn remove_server(&mut self, id: &ServerTxnId) {
        let Some(txn) = self.servers.remove(id) else {
            return;
        };
        for k in [txn.retransmit, txn.end].into_iter().flatten() {
            self.timers.remove(&k);
        }
        let ip = txn.peer.addr.ip();
        if let Some(n) = self.per_source.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
        self.update_gauge();
    }

    fn on_response(&mut self, now: Instant, msg: Message) {
        let Some(code) = msg.code() else { return };
        let Some(via) = msg.top_via().and_then(|v| Via::parse(v).ok()) else {
            self.metrics.drop_msg("response_without_via");
            return;
        };
        let Some((_, method)) = msg.cseq() else {
            return;
        };
        let Some(branch) = via.branch else { return };
        let id = ClientTxnId(format!("{branch}|{}", method.as_str()).into());
        let Some(txn) = self.clients.get_mut(&id) else {
            return;
        };
        let dest = txn.dest;
        match (txn.invite, txn.state, code) {
            (_, CState::Calling | CState::Proceeding, 100..=199) => {
                txn.state = CState::Proceeding;
                self.out.push(Output::Client {
                    // Cloned only where an event goes out (not for retransmissions).
                    to: txn.events.clone(),
                    event: ClientEvent::Response(msg),
                });
            }
            (true, CState::Calling | CState::Proceeding, 200..=299) => {
                txn.state = CState::Accepted;
                self.out.push(Output::Client {
                    to: txn.events.clone(),
                    event: ClientEvent::Response(msg),
                });
                // Timer M (RFC 6026): 2xx retransmissions are absorbed.
                self.timers.insert(now + T64, Timer::ClientTerminate(id));
            }
            (true, CState::Accepted, 200..=299) => {
                // A retransmitted 2xx: our ACK was lost (RFC 3261 13.2.2.4).
                if let Some(ack) = txn.ack.clone() {
                    self.send(dest, ack);
                }
            }
            (true, CState::Calling | CState::Proceeding, _) => {
                let ack = non_2xx_ack(&txn.request, &msg).to_bytes();
                txn.ack = Some(ack.clone());
                txn.state = CState::Completed;
                self.out.push(Output::Client {
                    to: txn.events.clone(),
                    event: ClientEvent::Response(msg),
                });
                self.send(dest, ack);
                // Timer D.
                let wait = unless_reliable(&dest, T64);
                self.timers.insert(now + wait, Timer::ClientTerminate(id));
            }
            (true, CState::Completed, 300..=699) => {
                if let Some(ack) = txn.ack.clone() {
                    self.send(dest, ack);
                }
            }
            (false, CState::Calling | CState::Proceeding, 200..=699) => {
                txn.state = CState::Completed;
                self.out.push(Output::Client {
                    to: txn.events.clone(),
                    event: ClientEvent::Response(msg),
                });
                // Timer K.
                let wait = unless_reliable(&dest, T4);
                self.timers.insert(now + wait, Timer::ClientTerminate(id));
            }
            _ => {}
        }
    }

    /// Starts a client transaction for `req` (its Via already carries the
    /// branch `id` was made from); its events go to `events`.
    pub(crate) fn request(
        &mut self,
        now: Instant,
        id: ClientTxnId,
        req: Message,
        dest: Peer,
        events: S,
    ) {
        let invite = req.method() == Some(Method::Invite);
        let bytes = req.to_bytes();
        self.out.push(Output::Send {
            peer: dest,
            bytes: bytes.clone(),
            request: Some(id.clone()),
        });
        if !dest.proto.is_reliable() {
            self.timers
                .insert(now + T1, Timer::ClientRetransmit(id.clone()));
        }
        self.timers
            .insert(now + T64, Timer::ClientTimeout(id.clone()));
        self.clients.insert(
            id,
            ClientTxn {
                invite,
                state: CState::Calling,
                request: req,
                bytes,
                dest,
                events,
                interval: T1,
                ack: None,
            },
        );
    }

    /// The transport refused the first copy of a request: the transaction
    /// ends with a transport error (RFC 3261 17.1.4).
    pub(crate) fn send_failed(&mut self, id: &ClientTxnId) {
        if let Some(txn) = self.clients.remove(id) {
            self.out.push(Output::Client {
                to: txn.events,
                event: ClientEvent::TransportError,
            });
        }
    }

    /// Cancels a pending INVITE client transaction (RFC 3261 9.1); the
    /// CANCEL's own transaction reports to `events`.
    pub(crate) fn cancel(&mut self, now: Instant, invite: &ClientTxnId, events: S) {
        let Some(txn) = self.clients.get(invite) else {
            self.out.push(Output::Client {
                to: events,
                event: ClientEvent::Timeout,
            });
            return;
        };
        let cancel = cancel_for(&txn.request);
        let dest = txn.dest;
        let Some(branch) = cancel
            .top_via()
            .and_then(|v| Via::parse(v).ok())
            .and_then(|v| v.branch)
        else {
            return;
        };
        let id = ClientTxnId(format!("{branch}|CANCEL").into());
        self.request(now, id, cancel, dest, events);
    }

    /// Sends an ACK for a 2xx; with the INVITE's transaction id, the ACK is
    /// sent again whenever that 2xx is retransmitted.
    pub(crate) fn ack(&mut self, invite: Option<&ClientTxnId>, ack: Message, dest: Peer) {
        let bytes = ack.to_bytes();
        if let Some(id) = invite
            && let Some(txn) = self.clients.get_mut(id)
        {
            txn.ack = Some(bytes.clone());
        }
        self.send(dest, bytes);
    }

    /// The TU's response on a server transaction. `once`: a final non-2xx
    /// to INVITE sent without Timer G retransmissions.
    pub(crate) fn respond(&mut self, now: Instant, id: &ServerTxnId, resp: Message, once: bool) {
        let Some(code) = resp.code() else { return };
        let Some(txn) = self.servers.get_mut(id) else {
            tracing::debug!(code, "response for a finished transaction dropped");
            return;
        };
        if txn.state != SState::Proceeding {
            tracing::debug!(code, "response after the final one dropped");
            return;
        }
        if txn.local_tag.is_none()
            && let Some(tag) = resp.header("To").and_then(|t| param(t, "tag"))
        {
            txn.local_tag = Some(tag.into());
        }
        let bytes = resp.to_bytes();
        let peer = txn.peer;
        let reliable = peer.proto.is_reliable();
        txn.last_response = Some(bytes.clone());
        if code >= 200 {
            txn.request = None;
        }
        match (txn.invite, code) {
            (_, 100..=199) => {}
            (true, 200..=299) => {
                txn.state = SState::Accepted;
                if let Some(key) = AckKey::of(&resp) {
                    // Over TCP the 2xx is not retransmitted, but the ACK is
                    // still awaited for 64*T1.
                    let first = if reliable { T64 } else { T1 };
                    let timer = self
                        .timers
                        .insert(now + first, Timer::Retransmit2xx(key.clone()));
                    let old = self.pending_2xx.insert(
                        key,
                        Pending2xx {
                            bytes: bytes.clone(),
                            peer,
                            interval: T1,
                            started: now,
                            timer: Some(timer),
                        },
                    );
                    if let Some(k) = old.and_then(|o| o.timer) {
                        self.timers.remove(&k);
                    }
                }
                // Absorb retransmitted INVITEs for a while (RFC 6026 timer L).
                arm(
                    &mut self.timers,
                    &mut txn.end,
                    Timer::ServerTerminate(id.clone()),
                    now + T64,
                );
            }
            (true, _) => {
                txn.state = SState::Completed;
                if !reliable && !once {
                    arm(
                        &mut self.timers,
                        &mut txn.retransmit,
                        Timer::ServerRetransmit(id.clone()),
                        now + T1,
                    );
                }
                // Timer H.
                arm(
                    &mut self.timers,
                    &mut txn.end,
                    Timer::ServerAckTimeout(id.clone()),
                    now + T64,
                );
            }
            (false, _) => {
                txn.state = SState::Completed;
                // Timer J.
                let wait = unless_reliable(&peer, T64);
                arm(
                    &mut self.timers,
                    &mut txn.end,
                    Timer::ServerTerminate(id.clone()),
                    now + wait,
                );
            }
        }
        self.send(peer, bytes);
    }

    /// Fires every timer due at `now`.
    pub(crate) fn on_timers(&mut self, now: Instant) {
        while let Some((key, timer)) = self.timers.pop_due(now) {
            self.on_timer(now, key, timer);
        }
    }

    fn on_timer(&mut self, now: Instant, key: TimerKey, timer: Timer) {
        match timer {
            Timer::ClientRetransmit(id) => {
                let Some(txn) = self.clients.get_mut(&id) else {
                    return;
                };
                // INVITE stops at the first provisional (timer A); non-INVITE
                // keeps going at T2 while proceeding (timer E).
                let go = matches!(
                    (txn.invite, txn.state),
                    (true, CState::Calling) | (false, CState::Calling | CState::Proceeding)
                );
                if !go {
                    return;
                }
                txn.interval = if txn.invite {
                    txn.interval * 2
                } else if txn.state == CState::Proceeding {
                    T2
                } else {
                    (txn.interval * 2).min(T2)
                };
                let (dest, bytes, next) = (txn.dest, txn.bytes.clone(), txn.interval);
                self.send(dest, bytes);
                self.timers.insert(now + next, Timer::ClientRetransmit(id));
            }
            Timer::ClientTimeout(id) => {
                let timed_out = self.clients.get(&id).is_some_and(|t| {
                    matches!(t.state, CState::Calling)
                        || (!t.invite && t.state == CState::Proceeding)
                });
                if timed_out && let Some(txn) = self.clients.remove(&id) {
                    self.out.push(Output::Client {
                        to: txn.events,
                        event: ClientEvent::Timeout,
                    });
                }
            }
            Timer::ClientTerminate(id) => {
                if self
                    .clients
                    .get(&id)
                    .is_some_and(|t| matches!(t.state, CState::Completed | CState::Accepted))
                {
                    self.clients.remove(&id);
                }
            }
            Timer::ServerRetransmit(id) => {
                let Some(txn) = self.servers.get_mut(&id) else {
                    return;
                };
                if txn.retransmit != Some(key) {
                    return;
                }
                txn.retransmit = None;
                if txn.state != SState::Completed {
                    return;
                }
                txn.interval = (txn.interval * 2).min(T2);
                let (peer, next, last) = (txn.peer, txn.interval, txn.last_response.clone());
                txn.retransmit = Some(
                    self.timers
                        .insert(now + next, Timer::ServerRetransmit(id.clone())),
                );
                if let Some(bytes) = last {
                    self.send(peer, bytes);
                }
            }
            // H, I, J, L and the abandon safety net: each is armed in the
            // transaction's one `end` slot, so whichever fires ends it.
            Timer::ServerAckTimeout(id) | Timer::ServerTerminate(id) | Timer::ServerAbandon(id) => {
                let Some(txn) = self.servers.get_mut(&id) else {
                    return;
                };
                if txn.end != Some(key) {
                    return;
                }
                txn.end = None;
                self.remove_server(&id);
            }
            Timer::Retransmit2xx(ack) => {
                let Some(p) = self.pending_2xx.get_mut(&ack) else {
                    return;
                };
                if p.timer != Some(key) {
                    return;
                }
                p.timer = None;
                let elapsed = now.saturating_duration_since(p.started);
                if elapsed >= T64 {
                    self.pending_2xx.remove(&ack);
                    self.tu(TuEvent::AckTimeout {
                        call_id: ack.call_id.to_string(),
                        local_tag: ack.local_tag.to_string(),
                        remote_tag: ack.remote_tag.to_string(),
                        cseq: ack.cseq,
                    });
                    return;
                }
                p.interval = (p.interval * 2).min(T2);
                let (peer, bytes, next) = (p.peer, p.bytes.clone(), p.interval);
                let remaining = T64.saturating_sub(elapsed);
                p.timer = Some(
                    self.timers
                        .insert(now + next.min(remaining), Timer::Retransmit2xx(ack)),
                );
                self.send(peer, bytes);
            }
        }
    }

    /// The state of a server transaction (tests).
    #[cfg(test)]
    pub(crate) fn server_state(&self, id: &ServerTxnId) -> Option<SState> {
        self.servers.get(id).map(|t| t.state)
    }

    /// The state of a client transaction (tests).
    #[cfg(test)]
    pub(crate) fn client_state(&self, id: &ClientTxnId) -> Option<CState> {
        self.clients.get(id).map(|t| t.state)
    }

    /// Armed timers (tests: nothing outlives its transaction).
    #[cfg(test)]
    pub(crate) fn armed_timers(&self) -> usize {
        self.timers.len()
    }
}
