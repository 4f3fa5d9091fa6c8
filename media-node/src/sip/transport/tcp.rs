//! TCP and TLS: accepted and outgoing connections, reused for every message
//! to the same remote address, framed by Content-Length. A TLS listener is a
//! second [`Connections`] table with a [`TlsAcceptor`]: the same caps (checked
//! before the handshake), deadlines and clean-up, its own metrics.
//!
//! Hostile clients are bounded at accept (a global cap and a cap per
//! source; the carriers' own sources, those in some trunk's
//! `allowedSources`, have a budget apart, so a flood from elsewhere cannot
//! lock them out) and in time: a connection must deliver a valid message within
//! [`TcpLimits::first_message_timeout`], every message must be complete
//! within [`TcpLimits::message_timeout`] of its first byte, and a silent
//! connection is closed after [`TcpLimits::idle_timeout`]. A connection's
//! clean-up (table entry, counters, writer task) lives in a drop guard, so
//! it runs however the task ends, a panic included.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::{Peer, Proto, Receiver, TransportError};
use crate::metrics::TcpMetrics;
use crate::sip::framing::StreamFramer;

/// Messages queued per connection before sends fail.
const QUEUE: usize = 256;
/// Bound on opening an outgoing connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds on TCP connections (compare Kamailio's `tcp_max_connections`,
/// `tcp_accept_iplimit`, `tcp_msg_read_timeout`, Asterisk's
/// `tcpauthlimit` / `tcpauthtimeout`).
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Most accepted connections open at once; more are closed at accept.
    /// Connections from the carriers' sources (in some trunk's
    /// `allowedSources`) and outgoing connections each have a budget of
    /// the same size of their own, so a flood of other clients can neither
    /// lock the carriers out nor stop the node dialling them.
    pub max_connections: usize,
    /// Most accepted connections from one source (an IPv4 address, an
    /// IPv6 /64).
    pub max_per_source: usize,
    /// An accepted connection that has not delivered one complete, valid
    /// message this long after it was accepted is closed.
    pub first_message_timeout: Duration,
    /// A message must be complete this long after its first byte arrived
    /// (later bytes do not extend it); a write must finish within it too.
    pub message_timeout: Duration,
    /// A connection that received nothing for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 2048,
            max_per_source: 32,
            first_message_timeout: Duration::from_secs(5),
            message_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Who opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Accepted from a client; `carrier`: from an allowed source, counted
    /// in the carriers' budget.
    Inbound { carrier: bool },
    /// Opened by the node.
    Outbound,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Inbound { .. } => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// A live connection in the table: its id and its writer's queue.
struct Entry {
    id: u64,
    tx: mpsc::Sender<Bytes>,
}

/// Everything the accept and send paths check and update together.
#[derive(Default)]
struct Table {
    by_addr: HashMap<SocketAddr, Entry>,
    per_source: HashMap<IpAddr, usize>,
    /// Accepted from sources no trunk allows.
    inbound: usize,
    /// Accepted from the carriers' sources.
    inbound_carriers: usize,
    outbound: usize,
}

/// The table of live connections, keyed by remote address.
pub struct Connections {
    table: Mutex<Table>,
    next_id: AtomicU64,
    recv: Arc<Receiver>,
    limits: TcpLimits,
    /// Set for the TLS listener: accepted connections shake hands first.
    tls: Option<TlsAcceptor>,
    /// TCP, or TLS (the listener's table and the table of gateway connections).
    proto: Proto,
}

/// The key the per-source cap counts by: an IPv4 address (IPv4-mapped
/// IPv6 included) or an IPv6 /64, since one host commonly owns a /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// Owns one connection's place in the table. Dropping it (normal end,
/// error or panic unwinding) removes the entry, releases the counters and
/// stops the writer, which closes the socket.
struct Slot {
    conns: Arc<Connections>,
    addr: SocketAddr,
    id: u64,
    dir: Direction,
    writer: Option<AbortHandle>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(w) = &self.writer {
            w.abort();
        }
        let mut t = self.conns.lock();
        if t.by_addr.get(&self.addr).is_some_and(|e| e.id == self.id) {
            t.by_addr.remove(&self.addr);
        }
        match self.dir {
            Direction::Inbound { carrier } => {
                if carrier {
                    t.inbound_carriers = t.inbound_carriers.saturating_sub(1);
                } else {
                    t.inbound = t.inbound.saturating_sub(1);
                }
                let key = source_key(self.addr.ip());
                if let Some(n) = t.per_source.get_mut(&key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        t.per_source.remove(&key);
                    }
                }
            }
            Direction::Outbound => t.outbound = t.outbound.saturating_sub(1),
        }
        drop(t);
        self.conns
            .metrics()
            .open
            .with_label_values(&[self.dir.label()])
            .dec();
    }
}

impl Connections {
    pub(crate) fn new(recv: Arc<Receiver>, limits: TcpLimits) -> Self {
        Connections {
            table: Mutex::new(Table::default()),
            next_id: AtomicU64::new(0),
            recv,
            limits,
            tls: None,
            proto: Proto::Tcp,
        }
    }

    /// A table for the TLS listener.
    pub(crate) fn tls(recv: Arc<Receiver>, limits: TcpLimits, acceptor: TlsAcceptor) -> Self {
        Connections {
            tls: Some(acceptor),
            proto: Proto::Tls,
            ..Connections::new(recv, limits)
        }
    }

    /// A table for TLS connections the node opens to gateways.
    pub(crate) fn tls_client(recv: Arc<Receiver>, limits: TcpLimits) -> Self {
        Connections {
            proto: Proto::Tls,
            ..Connections::new(recv, limits)
        }
    }

    fn proto(&self) -> Proto {
        self.proto
    }

    fn metrics(&self) -> &TcpMetrics {
        match self.proto {
            Proto::Tls => &self.recv.metrics.tls,
            _ => &self.recv.metrics.tcp,
        }
    }

    /// Whether a connection to `addr` is open.
    pub(crate) fn has(&self, addr: SocketAddr) -> bool {
        self.lock()
            .by_addr
            .get(&addr)
            .is_some_and(|e| !e.tx.is_closed())
    }

    /// The table; a panic elsewhere while it was held must not stop every
    /// later clean-up, so poisoning is ignored (each update is complete
    /// before anything that could panic).
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection in a locked table.
    fn register(
        self: &Arc<Self>,
        t: &mut Table,
        addr: SocketAddr,
        dir: Direction,
    ) -> (u64, mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE);
        t.by_addr.insert(addr, Entry { id, tx: tx.clone() });
        self.metrics().open.with_label_values(&[dir.label()]).inc();
        (id, tx, rx)
    }

    /// Admits an accepted connection, or names the cap it would exceed.
    fn admit(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Result<(Slot, mpsc::Receiver<Bytes>), &'static str> {
        // Decided once: the slot releases the budget it took even if the
        // trunks' sources change while the connection is open.
        let carrier = self.recv.rate.is_allowed(addr.ip());
        let mut t = self.lock();
        let (open, over) = if carrier {
            (t.inbound_carriers, "global_carriers")
        } else {
            (t.inbound, "global")
        };
        if open >= self.limits.max_connections {
            return Err(over);
        }
        let key = source_key(addr.ip());
        if t.per_source.get(&key).copied().unwrap_or(0) >= self.limits.max_per_source {
            return Err("per_source");
        }
        if carrier {
            t.inbound_carriers += 1;
        } else {
            t.inbound += 1;
        }
        *t.per_source.entry(key).or_insert(0) += 1;
        let dir = Direction::Inbound { carrier };
        let (id, _, rx) = self.register(&mut t, addr, dir);
        drop(t);
        Ok((
            Slot {
                conns: self.clone(),
                addr,
                id,
                dir,
                writer: None,
            },
            rx,
        ))
    }

    /// Takes an outgoing connection's place in the (locked, then released)
    /// table, or refuses it over the outbound budget.
    fn reserve_outbound(
        self: &Arc<Self>,
        mut t: MutexGuard<'_, Table>,
        addr: SocketAddr,
    ) -> Result<(Slot, mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>), TransportError> {
        if t.outbound >= self.limits.max_connections {
            drop(t);
            self.metrics()
                .refused
                .with_label_values(&["outbound_limit"])
                .inc();
            return Err(TransportError::TcpLimit(addr));
        }
        t.outbound += 1;
        let (id, tx, rx) = self.register(&mut t, addr, Direction::Outbound);
        drop(t);
        let slot = Slot {
            conns: self.clone(),
            addr,
            id,
            dir: Direction::Outbound,
            writer: None,
        };
        Ok((slot, tx, rx))
    }

    /// Opens a TLS connection to `addr` (a gateway named `name`) unless one is open, and
    /// waits for the handshake, so a wrong certificate fails the attempt at once with the
    /// reason instead of a transaction timeout. The connection is then used by
    /// [`Connections::send`] like any other.
    pub async fn connect_tls(
        self: &Arc<Self>,
        addr: SocketAddr,
        name: rustls::pki_types::ServerName<'static>,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<(), TransportError> {
        let (slot, _, rx) = {
            let t = self.lock();
            if t.by_addr.get(&addr).is_some_and(|e| !e.tx.is_closed()) {
                return Ok(());
            }
            self.reserve_outbound(t, addr)?
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let handshake = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))
        };
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Ok(Ok(s)) => s,
            Ok(Err(reason)) => {
                self.closed("tls_connect_failed");
                drop(slot);
                return Err(TransportError::Tls { addr, reason });
            }
            Err(_) => {
                self.closed("tls_connect_failed");
                drop(slot);
                return Err(TransportError::Tls {
                    addr,
                    reason: "timed out".into(),
                });
            }
        };
        let this = self.clone();
        drop(self.spawn_guarded(addr, async move { this.serve(stream, slot, rx).await }));
        Ok(())
    }

    /// Queues bytes on the connection to `addr`, connecting first if none
    /// is open.
    pub fn send(self: &Arc<Self>, addr: SocketAddr, data: Bytes) -> Result<(), TransportError> {
        let t = self.lock();
        if let Some(e) = t.by_addr.get(&addr)
            && !e.tx.is_closed()
        {
            return e
                .tx
                .try_send(data)
                .map_err(|_| TransportError::TcpQueue(addr));
        }
        if self.proto == Proto::Tls {
            // Opening TLS needs the peer's name to verify it: outbound calls
            // connect first ([`Connections::connect_tls`]); here only open
            // connections are used.
            return Err(TransportError::TcpQueue(addr));
        }
        let (slot, tx, rx) = self.reserve_outbound(t, addr)?;
        let _ = tx.try_send(data);
        let this = self.clone();
        // Detached: the slot, not the handle, ends the connection.
        drop(self.spawn_guarded(addr, async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    this.serve(stream, slot, rx).await
                }
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "TCP connect failed");
                    this.closed("connect_failed");
                }
                Err(_) => {
                    tracing::debug!(%addr, "TCP connect timed out");
                    this.closed("connect_failed");
                }
            }
        }));
        Ok(())
    }

    fn closed(&self, reason: &str) {
        self.metrics().closed.with_label_values(&[reason]).inc();
    }

    /// Runs a connection task; a panic in it is caught and counted, and
    /// never reaches other connections (its [`Slot`] has already cleaned
    /// up while unwinding).
    fn spawn_guarded(
        self: &Arc<Self>,
        addr: SocketAddr,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            if AssertUnwindSafe(task).catch_unwind().await.is_err() {
                this.closed("panic");
                tracing::error!(%addr, proto = this.proto().as_str(), "connection task panicked; connection closed");
            }
        })
    }

    /// Serves one connection until either side closes, a limit ends it or
    /// it idles out.
    async fn serve<S>(self: Arc<Self>, stream: S, mut slot: Slot, mut rx: mpsc::Receiver<Bytes>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let write_timeout = self.limits.message_timeout;
        let mut writer = tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                match tokio::time::timeout(write_timeout, wr.write_all(&data)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return "write_error",
                    // The peer does not read: holding its data forever
                    // would pin the queue and the socket.
                    Err(_) => return "write_timeout",
                }
            }
            "local_close"
        });
        slot.writer = Some(writer.abort_handle());
        let reason = self.read_loop(&mut rd, &slot, &mut writer).await;
        tracing::debug!(addr = %slot.addr, proto = self.proto().as_str(), reason, "connection closed");
        self.closed(reason);
    }

    /// Sends a last answer (the 400 or 505 for a request that did not frame) behind whatever
    /// is queued, then lets the writer end: the connection leaves the table, so nothing else
    /// is queued and the writer stops once the queue is written, within the write deadline.
    async fn answer_and_close(
        &self,
        slot: &Slot,
        answer: Bytes,
        writer: &mut JoinHandle<&'static str>,
    ) {
        let tx = {
            let mut t = self.lock();
            match t.by_addr.get(&slot.addr) {
                Some(e) if e.id == slot.id => t.by_addr.remove(&slot.addr).map(|e| e.tx),
                _ => None,
            }
        };
        let Some(tx) = tx else {
            return;
        };
        if tx.try_send(answer).is_err() {
            return;
        }
        drop(tx);
        let _ = tokio::time::timeout(self.limits.message_timeout, &mut *writer).await;
    }

    /// Reads and frames until the connection must end; returns why.
    async fn read_loop(
        &self,
        rd: &mut (impl AsyncRead + Unpin),
        slot: &Slot,
        writer: &mut JoinHandle<&'static str>,
    ) -> &'static str {
        let limits = self.limits;
        let peer = Peer {
            proto: self.proto(),
            addr: slot.addr,
        };
        let opened = Instant::now();
        // The node spoke first on its own connections; the remote may
        // legitimately stay silent until it has something to say.
        let mut valid_seen = slot.dir == Direction::Outbound;
        let mut last_rx = opened;
        let mut msg_started: Option<Instant> = None;
        let mut framer = StreamFramer::new();
        let mut buf = vec![0u8; 8192];
        loop {
            let mut deadline = (last_rx + limits.idle_timeout, "idle");
            if !valid_seen {
                let d = opened + limits.first_message_timeout;
                if d <= deadline.0 {
                    deadline = (d, "first_message_timeout");
                }
            }
            if let Some(start) = msg_started {
                let d = start + limits.message_timeout;
                if d <= deadline.0 {
                    deadline = (d, "message_timeout");
                }
            }
            let n = tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) => return "peer_closed",
                    Ok(n) => n,
                    Err(_) => return "read_error",
                },
                () = tokio::time::sleep_until(deadline.0) => return deadline.1,
                w = &mut *writer => return w.unwrap_or("write_error"),
            };
            let now = Instant::now();
            last_rx = now;
            framer.push(buf.get(..n).unwrap_or_default());
            let mut framed = false;
            loop {
                match framer.next_message(&self.recv.limits) {
                    Ok(Some(msg)) => {
                        framed = true;
                        valid_seen = true;
                        self.recv.accept(msg, peer);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // A stream cannot be resynchronised after a framing error.
                        self.recv.metrics.drop_msg(e.label());
                        tracing::debug!(addr = %slot.addr, error = %e, "closing TCP connection after framing error");
                        if let Some(resp) =
                            crate::sip::framing::refusal(framer.unframed(), &e, &self.recv.limits)
                            && self.recv.allow_refusal(slot.addr, true)
                        {
                            self.answer_and_close(slot, resp.to_bytes(), writer).await;
                        }
                        return "framing_error";
                    }
                }
            }
            // The deadline runs from a message's first byte: a message that
            // began in this read started now, one still in progress keeps
            // its start.
            msg_started = match (framer.in_progress(), framed) {
                (false, _) => None,
                (true, true) => Some(now),
                (true, false) => msg_started.or(Some(now)),
            };
        }
    }
}

/// Accepts connections forever, refusing those over the caps.
pub(crate) async fn accept_loop(listener: Arc<tokio::net::TcpListener>, conns: Arc<Connections>) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                // Out of descriptors, most likely: back off instead of spinning.
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // The caps are checked before any TLS work: a flood costs an accept.
        match conns.admit(addr) {
            Ok((slot, rx)) => {
                let c = conns.clone();
                let task = async move {
                    let Some(acceptor) = c.tls.clone() else {
                        return c.serve(stream, slot, rx).await;
                    };
                    let deadline = c.limits.first_message_timeout;
                    match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => c.serve(tls, slot, rx).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "TLS handshake failed");
                            c.closed("tls_handshake_failed");
                        }
                        Err(_) => c.closed("tls_handshake_timeout"),
                    }
                };
                drop(conns.spawn_guarded(addr, task));
            }
            Err(reason) => {
                conns.metrics().refused.with_label_values(&[reason]).inc();
                tracing::debug!(%addr, reason, "TCP connection refused");
                drop(stream);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::sip::framing::Limits;
    use crate::sip::protect::RateLimiter;

    fn connections(limits: TcpLimits) -> Arc<Connections> {
        let (tx, _rx) = mpsc::channel(8);
        let recv = Arc::new(Receiver {
            limits: Limits::default(),
            rate: RateLimiter::new(0.0, 0.0),
            metrics: Metrics::new(),
            tx,
        });
        Arc::new(Connections::new(recv, limits))
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn per_source_key_is_the_address_or_the_ipv6_64() {
        let k = |s: &str| source_key(s.parse().expect("ip"));
        assert_eq!(k("192.0.2.7"), k("192.0.2.7"));
        assert_ne!(k("192.0.2.7"), k("192.0.2.8"));
        assert_eq!(k("::ffff:192.0.2.7"), k("192.0.2.7"));
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:bbbb::2"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
    }

    #[test]
    fn caps_are_checked_at_admission_and_released_on_drop() {
        let conns = connections(TcpLimits {
            max_connections: 3,
            max_per_source: 2,
            ..TcpLimits::default()
        });
        let a = conns.admit(addr("127.0.0.2:1000")).expect("first");
        let b = conns.admit(addr("127.0.0.2:1001")).expect("second");
        assert_eq!(
            conns.admit(addr("127.0.0.2:1002")).err(),
            Some("per_source")
        );
        let c = conns.admit(addr("127.0.0.3:1000")).expect("other source");
        assert_eq!(conns.admit(addr("127.0.0.4:1000")).err(), Some("global"));
        drop(a);
        let d = conns.admit(addr("127.0.0.2:1003")).expect("slot released");
        drop((b, c, d));
        let t = conns.lock();
        assert!(t.by_addr.is_empty() && t.per_source.is_empty() && t.inbound == 0);
    }

    #[tokio::test]
    async fn a_panicking_connection_releases_its_slot_and_spares_others() {
        let conns = connections(TcpLimits {
            max_per_source: 1,
            ..TcpLimits::default()
        });
        let (other, _other_rx) = conns.admit(addr("127.0.0.5:1000")).expect("other");
        let (slot, rx) = conns.admit(addr("127.0.0.6:1000")).expect("admitted");
        let task = conns.spawn_guarded(slot.addr, async move {
            let _held = (slot, rx);
            panic!("connection task panics on purpose");
        });
        task.await.expect("the panic is caught inside the task");
        let metrics = &conns.recv.metrics.tcp;
        assert_eq!(metrics.closed.with_label_values(&["panic"]).get(), 1);
        assert_eq!(metrics.open.with_label_values(&["inbound"]).get(), 1);
        {
            let t = conns.lock();
            assert_eq!(t.inbound, 1);
            assert!(t.by_addr.contains_key(&other.addr));
            assert!(!t.by_addr.contains_key(&addr("127.0.0.6:1000")));
        }
        // The source's slot is free again.
        assert!(conns.admit(addr("127.0.0.6:1001")).is_ok());
    }
}
