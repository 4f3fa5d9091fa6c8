//! The RFC 3261 transaction layer (section 17, with the RFC 6026 "Accepted"
//! states): client and server, INVITE and non-INVITE, timers A to K,
//! retransmissions over UDP, 100 Trying, matching by branch.
//!
//! The state machines are in [`machine`], free of I/O and driven by the
//! time each input carries ([`timers`] holds every deadline); this module
//! is the shell around them: one task that feeds them the transport's
//! messages, the TU's commands and the clock, and carries out what they
//! output (sends, TU events, client events).

mod machine;
#[cfg(test)]
mod tests;
mod timers;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::sip::message::{Message, Method};
use crate::sip::transport::{Incoming, Peer, Transport};
use machine::{Output, Transactions};

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
}

/// Events for the transaction user (the dialog/call layer).
#[derive(Debug)]
pub enum TuEvent {
    /// A request that started a new server transaction (never CANCEL: the
    /// layer answers those itself).
    Request(ServerRequest),
    /// A CANCEL found this INVITE still proceeding: the layer answered the
    /// CANCEL with 200 and the INVITE with 487, and drops any answer the TU
    /// sends on it from now on.
    Cancelled {
        /// The INVITE's server transaction.
        invite: ServerTxnId,
    },
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

/// The I/O shell: one task that owns the state machines, the transport
/// they send on and the channels to the TU.
pub struct TransactionLayer {
    transport: Arc<Transport>,
    tu: mpsc::UnboundedSender<TuEvent>,
    core: Transactions<mpsc::UnboundedSender<ClientEvent>>,
}

impl TransactionLayer {
    /// Creates the layer and spawns its task under `tasks`, returning the
    /// handle for users and the stream of events for the TU.
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
            tu: tu_tx,
            core: Transactions::new(metrics, limits),
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
        // One sleep, moved to the earliest deadline after every input.
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let mut armed = None;
        loop {
            let deadline = self.core.next_deadline();
            if let Some(at) = deadline
                && armed != deadline
            {
                sleep.as_mut().reset(tokio::time::Instant::from_std(at));
                armed = deadline;
            }
            tokio::select! {
                msg = incoming.recv() => match msg {
                    Some(Incoming { msg, peer }) => {
                        self.core.on_message(std::time::Instant::now(), msg, peer);
                    }
                    None => return,
                },
                cmd = cmds.recv() => match cmd {
                    Some(c) => self.on_command(c),
                    None => return,
                },
                () = &mut sleep, if deadline.is_some() => {
                    armed = None;
                    self.core.on_timers(std::time::Instant::now());
                }
            }
            self.flush();
        }
    }

    /// Carries out what the state machines output.
    fn flush(&mut self) {
        loop {
            let mut refused = Vec::new();
            for out in self.core.drain() {
                match out {
                    Output::Send {
                        peer,
                        bytes,
                        request,
                    } => {
                        if let Err(e) = self.transport.send(&peer, bytes) {
                            tracing::debug!(error = %e, "send failed");
                            refused.extend(request);
                        }
                    }
                    Output::Tu(ev) => {
                        let _ = self.tu.send(ev);
                    }
                    Output::Client { to, event } => {
                        let _ = to.send(event);
                    }
                }
            }
            if refused.is_empty() {
                return;
            }
            for id in &refused {
                self.core.send_failed(id);
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let now = std::time::Instant::now();
        match cmd {
            Command::Respond { id, resp, once } => self.core.respond(now, &id, resp, once),
            Command::Request {
                id,
                req,
                dest,
                events,
            } => self.core.request(now, id, req, dest, events),
            Command::Cancel { id, events } => self.core.cancel(now, &id, events),
            Command::Ack { id, ack, dest } => self.core.ack(id.as_ref(), ack, dest),
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
