//! The RFC 3261 transaction layer (section 17, with the RFC 6026 "Accepted"
//! states): client and server, INVITE and non-INVITE, timers A to K,
//! retransmissions over UDP, 100 Trying, matching by branch.
//!
//! One task owns every transaction and one `DelayQueue` holds all their
//! timers. A server transaction remembers the keys of its armed timers and
//! cancels them when it changes state or ends, so nothing it owned (its
//! key, its last response) outlives the RFC 3261 timer that ends it. The
//! task also retransmits 2xx answers to INVITE until the ACK arrives
//! (RFC 3261 13.3.1.4), since the transaction is gone by then; those are
//! matched on the full dialog id, never on the Call-ID alone.
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
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

use crate::metrics::Metrics;
use crate::sip::headers::Via;
use crate::sip::message::{Message, Method, reason_phrase};
use crate::sip::transport::{Incoming, Peer, Transport};

/// RTT estimate (RFC 3261 17.1.1.1).
pub const T1: Duration = Duration::from_millis(500);
/// Maximum retransmit interval for non-INVITE requests and INVITE responses.
pub const T2: Duration = Duration::from_secs(4);
/// Maximum duration a message remains in the network.
pub const T4: Duration = Duration::from_secs(5);
/// 64*T1: transaction timeouts B, F, H, J and the 2xx retransmission window.
pub const T64: Duration = Duration::from_secs(32);

/// Longest Via branch accepted as part of a transaction key. Real stacks
/// use a few dozen characters; RFC 3261 sets no limit, so without one a
/// peer decides how much memory each of its transactions holds.
pub const MAX_BRANCH_LEN: usize = 256;
/// Longest transaction key (branch, sent-by and method; or the RFC 2543
/// fields: Call-ID, Request-URI, From tag, CSeq, sent-by, method).
pub const MAX_KEY_LEN: usize = 1024;
/// Safety net for a TU that never answers an INVITE (every inbound INVITE
/// gets a final answer within its ringing time, far below this).
const INVITE_ABANDON: Duration = Duration::from_secs(300);

/// Bounds of the transaction layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnLimits {
    /// Most server transactions alive at once on the node.
    pub max_server: usize,
    /// Most server transactions alive at once per source IP.
    pub max_server_per_source: usize,
    /// Retry-After seconds sent with the overload 503.
    pub retry_after_secs: u32,
}

impl Default for TxnLimits {
    fn default() -> Self {
        TxnLimits {
            max_server: 50_000,
            max_server_per_source: 10_000,
            retry_after_secs: 30,
        }
    }
}

/// Identifies a server transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerTxnId(Arc<str>);

/// Identifies a client transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientTxnId(Arc<str>);

/// What a client transaction reports to its user.
#[derive(Debug)]
pub enum ClientEvent {
    /// A provisional or final response.
    Response(Message),
    /// Timer B or F fired: no final response.
    Timeout,
    /// The transport refused the request.
    TransportError,
}

/// A new request for the transaction user.
#[derive(Debug)]
pub struct ServerRequest {
    /// The server transaction to answer on.
    pub id: ServerTxnId,
    /// The request.
    pub msg: Message,
    /// Who sent it.
    pub peer: Peer,
    /// For CANCEL: the INVITE transaction it cancels.
    pub cancels: Option<ServerTxnId>,
}

/// Events for the transaction user (the dialog/call layer).
#[derive(Debug)]
pub enum TuEvent {
    /// A request that started a new server transaction.
    Request(ServerRequest),
    /// An ACK that is not part of a transaction (ACK for 2xx).
    Ack {
        /// The ACK.
        msg: Message,
        /// Who sent it.
        peer: Peer,
    },
    /// A 2xx to INVITE was retransmitted for 64*T1 without an ACK. Names
    /// the one dialog it belongs to (Call-ID and both tags): another dialog
    /// with the same Call-ID is not concerned.
    AckTimeout {
        /// Call-ID of the INVITE.
        call_id: String,
        /// Our tag (the To tag of the 2xx).
        local_tag: String,
        /// The peer's tag (the From tag of the INVITE).
        remote_tag: String,
        /// CSeq number of the INVITE.
        cseq: u32,
    },
}

enum Command {
    Respond {
        id: ServerTxnId,
        resp: Message,
        once: bool,
    },
    Request {
        id: ClientTxnId,
        req: Message,
        dest: Peer,
        events: mpsc::UnboundedSender<ClientEvent>,
    },
    Cancel {
        id: ClientTxnId,
        events: mpsc::UnboundedSender<ClientEvent>,
    },
    Ack {
        id: Option<ClientTxnId>,
        ack: Message,
        dest: Peer,
    },
}

/// A cheap handle on the transaction layer.
#[derive(Clone)]
pub struct SipHandle {
    cmd: mpsc::UnboundedSender<Command>,
    /// The transport, for addresses to advertise.
    pub transport: Arc<Transport>,
}

/// A new branch parameter with the RFC 3261 magic cookie.
pub fn new_branch() -> String {
    format!("z9hG4bK{}", random_token(16))
}

/// A random token of lowercase letters and digits (tags, Call-IDs).
pub fn random_token(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

impl SipHandle {
    /// Sends a response on a server transaction.
    pub fn respond(&self, id: &ServerTxnId, resp: Message) {
        let _ = self.cmd.send(Command::Respond {
            id: id.clone(),
            resp,
            once: false,
        });
    }

    /// Sends a final non-2xx response to an INVITE once, without Timer G
    /// retransmissions: for answers to unauthorised or unauthenticated
    /// sources (401, 403), which would otherwise reflect several datagrams
    /// per spoofed request. A retransmitted INVITE still gets the same
    /// answer again (one per request received), until Timer H.
    pub fn respond_once(&self, id: &ServerTxnId, resp: Message) {
        let _ = self.cmd.send(Command::Respond {
            id: id.clone(),
            resp,
            once: true,
        });
    }

    /// Starts a client transaction. A Via with a fresh branch is put on top
    /// of the request; the returned receiver yields its responses.
    pub fn request(
        &self,
        mut req: Message,
        dest: Peer,
    ) -> (ClientTxnId, mpsc::UnboundedReceiver<ClientEvent>) {
        let branch = new_branch();
        let via = format!(
            "SIP/2.0/{} {};branch={branch};rport",
            dest.proto.as_str(),
            self.transport.advertised_hostport(&dest)
        );
        req.prepend("Via", via);
        if req.header("Max-Forwards").is_none() {
            req.add("Max-Forwards", "70");
        }
        let method = req
            .method()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
        let id = ClientTxnId(format!("{branch}|{method}").into());
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.cmd.send(Command::Request {
            id: id.clone(),
            req,
            dest,
            events: tx,
        });
        (id, rx)
    }

    /// Cancels a pending INVITE client transaction (RFC 3261 9.1). Events of
    /// the CANCEL's own transaction arrive on the returned receiver.
    pub fn cancel(&self, invite: &ClientTxnId) -> mpsc::UnboundedReceiver<ClientEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.cmd.send(Command::Cancel {
            id: invite.clone(),
            events: tx,
        });
        rx
    }

    /// Sends an ACK for a 2xx. With the INVITE's transaction id, the ACK is
    /// resent whenever that 2xx is retransmitted.
    pub fn ack(&self, invite: Option<&ClientTxnId>, mut ack: Message, dest: Peer) {
        if ack.top_via().is_none() {
            let via = format!(
                "SIP/2.0/{} {};branch={};rport",
                dest.proto.as_str(),
                self.transport.advertised_hostport(&dest),
                new_branch()
            );
            ack.prepend("Via", via);
        }
        if ack.header("Max-Forwards").is_none() {
            ack.add("Max-Forwards", "70");
        }
        let _ = self.cmd.send(Command::Ack {
            id: invite.cloned(),
            ack,
            dest,
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SState {
    Proceeding,
    Completed,
    Confirmed,
    Accepted,
}

struct ServerTxn {
    invite: bool,
    state: SState,
    peer: Peer,
    last_response: Option<Bytes>,
    interval: Duration,
    /// Timer G, while armed.
    retransmit: Option<Key>,
    /// The timer that ends the transaction (abandon, H, I, J or L), while
    /// armed. Replaced, not added to, on each state change.
    end: Option<Key>,
}

/// Arms `timer` in `slot`, cancelling what the slot held. A slot only ever
/// holds the key of a timer that has not fired yet (firing clears it), so
/// the cancellation never hits a reused key.
fn arm(timers: &mut DelayQueue<Timer>, slot: &mut Option<Key>, timer: Timer, after: Duration) {
    if let Some(old) = slot.take() {
        timers.try_remove(&old);
    }
    *slot = Some(timers.insert(timer, after));
}

/// Identifies a dialog's INVITE, to match the ACK for its 2xx and the
/// 2xx's retransmissions (RFC 3261 13.3.1.4: the ACK has its own branch).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AckKey {
    call_id: Arc<str>,
    /// The peer's tag (From).
    remote_tag: Arc<str>,
    /// Our tag (To).
    local_tag: Arc<str>,
    cseq: u32,
}

impl AckKey {
    /// From a 2xx we send or an ACK we receive (same From, To, Call-ID).
    fn of(msg: &Message) -> Option<AckKey> {
        let tag = |name: &str| {
            msg.header(name)
                .and_then(|v| crate::sip::headers::param(v, "tag"))
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
enum CState {
    Calling,
    Proceeding,
    Completed,
    Accepted,
}

struct ClientTxn {
    invite: bool,
    state: CState,
    request: Message,
    bytes: Bytes,
    dest: Peer,
    events: mpsc::UnboundedSender<ClientEvent>,
    interval: Duration,
    ack: Option<Bytes>,
}

struct Pending2xx {
    bytes: Bytes,
    peer: Peer,
    interval: Duration,
    started: Instant,
    /// The next retransmission, while armed.
    timer: Option<Key>,
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

/// Runs the transaction layer until the incoming stream ends.
pub struct TransactionLayer {
    transport: Arc<Transport>,
    metrics: Metrics,
    tu: mpsc::UnboundedSender<TuEvent>,
    servers: HashMap<ServerTxnId, ServerTxn>,
    /// Live server transactions per source IP (entries removed at zero).
    per_source: HashMap<IpAddr, usize>,
    limits: TxnLimits,
    clients: HashMap<ClientTxnId, ClientTxn>,
    pending_2xx: HashMap<AckKey, Pending2xx>,
    timers: DelayQueue<Timer>,
}

impl TransactionLayer {
    /// Creates the layer, returning the handle for users and the stream of
    /// events for the TU. Call [`TransactionLayer::run`] to drive it.
    pub fn start(
        transport: Arc<Transport>,
        incoming: mpsc::Receiver<Incoming>,
        metrics: Metrics,
        limits: TxnLimits,
        tasks: &crate::supervisor::Supervisor,
    ) -> (SipHandle, mpsc::UnboundedReceiver<TuEvent>) {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (tu_tx, tu_rx) = mpsc::unbounded_channel();
        let layer = TransactionLayer {
            transport: transport.clone(),
            metrics,
            tu: tu_tx,
            servers: HashMap::new(),
            per_source: HashMap::new(),
            limits,
            clients: HashMap::new(),
            pending_2xx: HashMap::new(),
            timers: DelayQueue::new(),
        };
        // It owns every transaction: nothing could rebuild them after a restart.
        tasks.spawn_critical("sip-transactions", layer.run(incoming, cmd_rx));
        (
            SipHandle {
                cmd: cmd_tx,
                transport,
            },
            tu_rx,
        )
    }

    async fn run(
        mut self,
        mut incoming: mpsc::Receiver<Incoming>,
        mut cmds: mpsc::UnboundedReceiver<Command>,
    ) {
        loop {
            tokio::select! {
                msg = incoming.recv() => match msg {
                    Some(m) => self.on_incoming(m),
                    None => return,
                },
                cmd = cmds.recv() => match cmd {
                    Some(c) => self.on_command(c),
                    None => return,
                },
                Some(expired) = self.timers.next(), if !self.timers.is_empty() => {
                    let key = expired.key();
                    self.on_timer(key, expired.into_inner());
                }
            }
        }
    }

    fn send(&self, peer: &Peer, bytes: Bytes) {
        if let Err(e) = self.transport.send(peer, bytes) {
            tracing::debug!(error = %e, "send failed");
        }
    }

    fn reliable(peer: &Peer) -> bool {
        peer.proto.is_reliable()
    }

    // ----- incoming -----

    fn on_incoming(&mut self, Incoming { msg, peer }: Incoming) {
        if msg.is_request() {
            self.on_request(msg, peer);
        } else {
            self.on_response(msg);
        }
    }

    /// The server transaction key (RFC 3261 17.2.3): branch, sent-by and
    /// method; the identifying headers for RFC 2543 peers. Refused when a
    /// part is longer than the bounds, so a key never holds more than
    /// [`MAX_KEY_LEN`] bytes of the peer's choosing.
    fn server_key(via: &Via, msg: &Message, method: &Method) -> Result<ServerTxnId, &'static str> {
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
                .and_then(|f| crate::sip::headers::param(f, "tag"))
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
    fn validate(msg: &Message, method: &Method) -> Result<Via, &'static str> {
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

    fn on_request(&mut self, msg: Message, peer: Peer) {
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
                    self.send(&peer, resp.to_bytes());
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
                    self.send(&peer, resp.to_bytes());
                }
                return;
            }
        };
        if method == Method::Ack {
            if let Some(txn) = self.servers.get_mut(&id)
                && txn.invite
            {
                if txn.state == SState::Completed {
                    txn.state = SState::Confirmed;
                    // The ACK stops Timer G and replaces Timer H by Timer I.
                    if let Some(k) = txn.retransmit.take() {
                        self.timers.try_remove(&k);
                    }
                    let wait = if Self::reliable(&txn.peer) {
                        Duration::ZERO
                    } else {
                        T4
                    };
                    arm(
                        &mut self.timers,
                        &mut txn.end,
                        Timer::ServerTerminate(id),
                        wait,
                    );
                }
                if txn.state != SState::Accepted {
                    return;
                }
            }
            // ACK for a 2xx: stop retransmitting it and tell the TU.
            if let Some(key) = AckKey::of(&msg)
                && let Some(p) = self.pending_2xx.remove(&key)
                && let Some(k) = p.timer
            {
                self.timers.try_remove(&k);
            }
            let _ = self.tu.send(TuEvent::Ack { msg, peer });
            return;
        }
        if let Some(txn) = self.servers.get(&id) {
            // A retransmission: repeat the last response, if any.
            if let Some(last) = txn.last_response.clone() {
                let p = txn.peer;
                self.send(&p, last);
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
            self.send(&peer, resp.to_bytes());
            return;
        }
        let invite = method == Method::Invite;
        let abandon = if invite { INVITE_ABANDON } else { T64 };
        let end = self
            .timers
            .insert(Timer::ServerAbandon(id.clone()), abandon);
        self.servers.insert(
            id.clone(),
            ServerTxn {
                invite,
                state: SState::Proceeding,
                peer,
                last_response: None,
                interval: T1,
                retransmit: None,
                end: Some(end),
            },
        );
        *self.per_source.entry(ip).or_insert(0) += 1;
        self.update_gauge();
        let mut cancels = None;
        if method == Method::Cancel {
            let invite_id = Self::server_key(&via, &msg, &Method::Invite).ok();
            if let Some(invite_id) = invite_id.filter(|i| self.servers.contains_key(i)) {
                cancels = Some(invite_id);
            } else {
                let resp = msg.response(481, reason_phrase(481), None);
                self.respond(&id, resp, false);
                return;
            }
        }
        if invite {
            // Answer at once rather than after 200 ms: our TU may take
            // longer (auth, capacity checks) and the peer stops
            // retransmitting as soon as it sees a provisional answer.
            let trying = msg.response(100, "Trying", None);
            self.respond(&id, trying, false);
        }
        let _ = self.tu.send(TuEvent::Request(ServerRequest {
            id,
            msg,
            peer,
            cancels,
        }));
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
            self.timers.try_remove(&k);
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

    fn on_response(&mut self, msg: Message) {
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
        match (txn.invite, txn.state, code) {
            (_, CState::Calling | CState::Proceeding, 100..=199) => {
                txn.state = CState::Proceeding;
                let _ = txn.events.send(ClientEvent::Response(msg));
            }
            (true, CState::Calling | CState::Proceeding, 200..=299) => {
                txn.state = CState::Accepted;
                let _ = txn.events.send(ClientEvent::Response(msg));
                self.timers.insert(Timer::ClientTerminate(id), T64);
            }
            (true, CState::Accepted, 200..=299) => {
                // A retransmitted 2xx: our ACK was lost (RFC 3261 13.2.2.4).
                if let Some(ack) = txn.ack.clone() {
                    let dest = txn.dest;
                    self.send(&dest, ack);
                }
            }
            (true, CState::Calling | CState::Proceeding, _) => {
                let ack = non_2xx_ack(&txn.request, &msg).to_bytes();
                txn.ack = Some(ack.clone());
                txn.state = CState::Completed;
                let dest = txn.dest;
                let _ = txn.events.send(ClientEvent::Response(msg));
                self.send(&dest, ack);
                let wait = if Self::reliable(&dest) {
                    Duration::ZERO
                } else {
                    T64
                };
                self.timers.insert(Timer::ClientTerminate(id), wait);
            }
            (true, CState::Completed, 300..=699) => {
                if let Some(ack) = txn.ack.clone() {
                    let dest = txn.dest;
                    self.send(&dest, ack);
                }
            }
            (false, CState::Calling | CState::Proceeding, 200..=699) => {
                txn.state = CState::Completed;
                let dest = txn.dest;
                let _ = txn.events.send(ClientEvent::Response(msg));
                let wait = if Self::reliable(&dest) {
                    Duration::ZERO
                } else {
                    T4
                };
                self.timers.insert(Timer::ClientTerminate(id), wait);
            }
            _ => {}
        }
    }

    // ----- commands -----

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Respond { id, resp, once } => self.respond(&id, resp, once),
            Command::Request {
                id,
                req,
                dest,
                events,
            } => self.start_client(id, req, dest, events),
            Command::Cancel { id, events } => {
                let Some(txn) = self.clients.get(&id) else {
                    let _ = events.send(ClientEvent::Timeout);
                    return;
                };
                let cancel = cancel_for(&txn.request);
                let dest = txn.dest;
                let method_id = match cancel
                    .top_via()
                    .and_then(|v| Via::parse(v).ok())
                    .and_then(|v| v.branch)
                {
                    Some(b) => ClientTxnId(format!("{b}|CANCEL").into()),
                    None => return,
                };
                self.start_client(method_id, cancel, dest, events);
            }
            Command::Ack { id, ack, dest } => {
                let bytes = ack.to_bytes();
                if let Some(id) = id
                    && let Some(txn) = self.clients.get_mut(&id)
                {
                    txn.ack = Some(bytes.clone());
                }
                self.send(&dest, bytes);
            }
        }
    }

    fn start_client(
        &mut self,
        id: ClientTxnId,
        req: Message,
        dest: Peer,
        events: mpsc::UnboundedSender<ClientEvent>,
    ) {
        let invite = req.method() == Some(Method::Invite);
        let bytes = req.to_bytes();
        if let Err(e) = self.transport.send(&dest, bytes.clone()) {
            tracing::debug!(error = %e, "request send failed");
            let _ = events.send(ClientEvent::TransportError);
            return;
        }
        if !Self::reliable(&dest) {
            self.timers.insert(Timer::ClientRetransmit(id.clone()), T1);
        }
        self.timers.insert(Timer::ClientTimeout(id.clone()), T64);
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

    fn respond(&mut self, id: &ServerTxnId, resp: Message, once: bool) {
        let Some(code) = resp.code() else { return };
        let Some(txn) = self.servers.get_mut(id) else {
            tracing::debug!(code, "response for a finished transaction dropped");
            return;
        };
        if matches!(
            txn.state,
            SState::Completed | SState::Confirmed | SState::Accepted
        ) {
            return;
        }
        let bytes = resp.to_bytes();
        let peer = txn.peer;
        let reliable = Self::reliable(&peer);
        txn.last_response = Some(bytes.clone());
        match (txn.invite, code) {
            (_, 100..=199) => {}
            (true, 200..=299) => {
                txn.state = SState::Accepted;
                if let Some(key) = AckKey::of(&resp) {
                    // Over TCP the 2xx is not retransmitted, but the ACK is
                    // still awaited for 64*T1.
                    let first = if reliable { T64 } else { T1 };
                    let timer = self.timers.insert(Timer::Retransmit2xx(key.clone()), first);
                    let old = self.pending_2xx.insert(
                        key,
                        Pending2xx {
                            bytes: bytes.clone(),
                            peer,
                            interval: T1,
                            started: Instant::now(),
                            timer: Some(timer),
                        },
                    );
                    if let Some(k) = old.and_then(|o| o.timer) {
                        self.timers.try_remove(&k);
                    }
                }
                // Absorb retransmitted INVITEs for a while (RFC 6026 timer L).
                arm(
                    &mut self.timers,
                    &mut txn.end,
                    Timer::ServerTerminate(id.clone()),
                    T64,
                );
            }
            (true, _) => {
                txn.state = SState::Completed;
                if !reliable && !once {
                    arm(
                        &mut self.timers,
                        &mut txn.retransmit,
                        Timer::ServerRetransmit(id.clone()),
                        T1,
                    );
                }
                arm(
                    &mut self.timers,
                    &mut txn.end,
                    Timer::ServerAckTimeout(id.clone()),
                    T64,
                );
            }
            (false, _) => {
                txn.state = SState::Completed;
                let wait = if reliable { Duration::ZERO } else { T64 };
                arm(
                    &mut self.timers,
                    &mut txn.end,
                    Timer::ServerTerminate(id.clone()),
                    wait,
                );
            }
        }
        self.send(&peer, bytes);
    }

    // ----- timers -----

    fn on_timer(&mut self, key: Key, timer: Timer) {
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
                self.send(&dest, bytes);
                self.timers.insert(Timer::ClientRetransmit(id), next);
            }
            Timer::ClientTimeout(id) => {
                let timed_out = self.clients.get(&id).is_some_and(|t| {
                    matches!(t.state, CState::Calling)
                        || (!t.invite && t.state == CState::Proceeding)
                });
                if timed_out && let Some(txn) = self.clients.remove(&id) {
                    let _ = txn.events.send(ClientEvent::Timeout);
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
                        .insert(Timer::ServerRetransmit(id.clone()), next),
                );
                if let Some(bytes) = last {
                    self.send(&peer, bytes);
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
                if p.started.elapsed() >= T64 {
                    self.pending_2xx.remove(&ack);
                    let _ = self.tu.send(TuEvent::AckTimeout {
                        call_id: ack.call_id.to_string(),
                        local_tag: ack.local_tag.to_string(),
                        remote_tag: ack.remote_tag.to_string(),
                        cseq: ack.cseq,
                    });
                    return;
                }
                p.interval = (p.interval * 2).min(T2);
                let (peer, bytes, next) = (p.peer, p.bytes.clone(), p.interval);
                let remaining = T64.saturating_sub(p.started.elapsed());
                p.timer = Some(
                    self.timers
                        .insert(Timer::Retransmit2xx(ack), next.min(remaining)),
                );
                self.send(&peer, bytes);
            }
        }
    }
}

/// The ACK for a non-2xx final response (RFC 3261 17.1.1.3).
pub fn non_2xx_ack(invite: &Message, resp: &Message) -> Message {
    let uri = invite.request_uri().unwrap_or_default().to_owned();
    let mut ack = Message::request(Method::Ack, uri);
    if let Some(via) = invite.top_via() {
        ack.add("Via", via);
    }
    for name in ["Route"] {
        for v in invite.headers_named(name) {
            ack.add(name, v);
        }
    }
    ack.add("Max-Forwards", "70");
    if let Some(v) = invite.header("From") {
        ack.add("From", v);
    }
    if let Some(v) = resp.header("To") {
        ack.add("To", v);
    }
    if let Some(v) = invite.call_id() {
        ack.add("Call-ID", v);
    }
    let num = invite.cseq().map(|c| c.0).unwrap_or(1);
    ack.add("CSeq", format!("{num} ACK"));
    ack
}

/// The CANCEL for a pending INVITE (RFC 3261 9.1): same Request-URI,
/// top Via, Call-ID, From, To, Route and CSeq number.
pub fn cancel_for(invite: &Message) -> Message {
    let uri = invite.request_uri().unwrap_or_default().to_owned();
    let mut c = Message::request(Method::Cancel, uri);
    if let Some(via) = invite.top_via() {
        c.add("Via", via);
    }
    for v in invite.headers_named("Route") {
        c.add("Route", v);
    }
    c.add("Max-Forwards", "70");
    for name in ["From", "To", "Call-ID"] {
        if let Some(v) = invite.header(name) {
            c.add(name, v);
        }
    }
    let num = invite.cseq().map(|c| c.0).unwrap_or(1);
    c.add("CSeq", format!("{num} CANCEL"));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite() -> Message {
        let mut m = Message::request(Method::Invite, "sip:1@h");
        m.push_header("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc");
        m.push_header("Route", "<sip:p@h;lr>");
        m.push_header("From", "<sip:a@h>;tag=f");
        m.push_header("To", "<sip:1@h>");
        m.push_header("Call-ID", "cid");
        m.push_header("CSeq", "7 INVITE");
        m
    }

    #[test]
    fn ack_for_non_2xx_reuses_branch_and_to_tag() {
        let inv = invite();
        let mut resp = inv.response(486, "Busy Here", Some("tt"));
        resp.set("To", "<sip:1@h>;tag=tt");
        let ack = non_2xx_ack(&inv, &resp);
        assert_eq!(ack.top_via(), inv.top_via());
        assert_eq!(ack.header("To"), Some("<sip:1@h>;tag=tt"));
        assert_eq!(ack.header("CSeq"), Some("7 ACK"));
        assert_eq!(ack.header("Route"), Some("<sip:p@h;lr>"));
    }

    #[test]
    fn cancel_matches_invite() {
        let c = cancel_for(&invite());
        assert_eq!(
            c.top_via(),
            Some("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc")
        );
        assert_eq!(c.cseq(), Some((7, Method::Cancel)));
        assert_eq!(c.header("To"), Some("<sip:1@h>"));
    }

    #[test]
    fn server_keys_match_ack_and_cancel_to_invite() {
        let inv = invite();
        let via = Via::parse(inv.top_via().unwrap_or_default()).expect("via");
        let key = |via: &Via, m: &Method| TransactionLayer::server_key(via, &inv, m).expect("key");
        let k_inv = key(&via, &Method::Invite);
        let k_ack = key(&via, &Method::Ack);
        let k_cancel = key(&via, &Method::Cancel);
        assert_eq!(k_inv, k_ack);
        assert_ne!(k_inv, k_cancel);
        let old = Via::parse("SIP/2.0/UDP 10.0.0.1;branch=1234").expect("via");
        let k_old = key(&old, &Method::Invite);
        assert!(k_old.0.starts_with("2543|cid|"));
        // Same branch from another sent-by is another transaction.
        let other = Via::parse("SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKabc").expect("via");
        assert_ne!(key(&other, &Method::Invite), k_inv);
    }

    #[test]
    fn server_keys_are_bounded() {
        let inv = invite();
        let via_with = |branch: &str| {
            Via::parse(&format!("SIP/2.0/UDP 10.0.0.1:5060;branch={branch}")).expect("via")
        };
        let longest = format!("z9hG4bK{}", "a".repeat(MAX_BRANCH_LEN - 7));
        let k = TransactionLayer::server_key(&via_with(&longest), &inv, &Method::Invite)
            .expect("a branch at the bound is accepted");
        assert!(k.0.len() <= MAX_KEY_LEN);
        let too_long = format!("{longest}a");
        assert_eq!(
            TransactionLayer::server_key(&via_with(&too_long), &inv, &Method::Invite),
            Err("Via branch too long")
        );
        // RFC 2543 keys carry the Call-ID and Request-URI: bounded as well.
        let mut old = invite();
        old.set("Call-ID", "c".repeat(MAX_KEY_LEN));
        let via = Via::parse("SIP/2.0/UDP 10.0.0.1;branch=1234").expect("via");
        assert_eq!(
            TransactionLayer::server_key(&via, &old, &Method::Invite),
            Err("transaction key too long")
        );
    }

    #[test]
    fn ack_key_is_the_full_dialog_id() {
        let inv = invite();
        let ok = inv.response(200, "OK", Some("ours"));
        let mut ack = Message::request(Method::Ack, "sip:1@h");
        ack.push_header("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKack");
        ack.push_header("From", "<sip:a@h>;tag=f");
        ack.push_header("To", "<sip:1@h>;tag=ours");
        ack.push_header("Call-ID", "cid");
        ack.push_header("CSeq", "7 ACK");
        assert_eq!(AckKey::of(&ok), AckKey::of(&ack));
        // The same Call-ID and CSeq in another dialog is another key.
        let mut other = inv.clone();
        other.set("From", "<sip:a@h>;tag=g");
        let other_ok = other.response(200, "OK", Some("theirs"));
        assert_ne!(AckKey::of(&other_ok), AckKey::of(&ok));
    }

    #[test]
    fn validation_rejects_missing_headers() {
        let mut m = invite();
        assert!(TransactionLayer::validate(&m, &Method::Invite).is_ok());
        assert_eq!(
            TransactionLayer::validate(&m, &Method::Bye).err(),
            Some("CSeq method does not match")
        );
        m.remove("Call-ID");
        assert_eq!(
            TransactionLayer::validate(&m, &Method::Invite).err(),
            Some("missing Call-ID")
        );
    }
}
