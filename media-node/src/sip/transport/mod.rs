//! SIP transports: UDP sockets and TCP connections, with the advertised
//! address written into Via and Contact.
//!
//! Sending is synchronous and never blocks the transaction layer: UDP uses
//! `try_send_to` (a datagram lost to a full socket buffer is covered by
//! retransmission) and TCP hands bytes to a per-connection writer task.

pub mod tcp;
pub mod tls;
pub mod udp;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::sip::framing::Limits;
use crate::sip::message::Message;
use crate::sip::protect::{Limited, RateLimiter, is_scanner};

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// UDP
    Udp,
    /// TCP
    Tcp,
    /// TLS over TCP (RFC 3261 26)
    Tls,
}

impl Proto {
    /// As written in Via.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "UDP",
            Proto::Tcp => "TCP",
            Proto::Tls => "TLS",
        }
    }

    /// TCP and TLS deliver in order and retransmit themselves: no SIP
    /// retransmission timers (RFC 3261 17.1.1.2).
    pub fn is_reliable(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Tls)
    }

    /// The `transport=` URI parameter for it (`None` for UDP, the default).
    pub fn uri_param(self) -> Option<&'static str> {
        match self {
            Proto::Udp => None,
            Proto::Tcp => Some("tcp"),
            Proto::Tls => Some("tls"),
        }
    }
}

/// The other end of a message: where it came from, or where to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Transport.
    pub proto: Proto,
    /// Remote address.
    pub addr: SocketAddr,
}

/// A message received and accepted by the protection layer.
#[derive(Debug)]
pub struct Incoming {
    /// The parsed message.
    pub msg: Message,
    /// Who sent it.
    pub peer: Peer,
}

/// Errors sending a message.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No local socket of the destination's address family.
    #[error("no {family} socket to send to {addr}")]
    NoSocket {
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// Destination.
        addr: SocketAddr,
    },
    /// The OS refused the datagram.
    #[error("sending to {addr} failed: {source}")]
    Io {
        /// Destination.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The TCP connection's queue is full or closed.
    #[error("TCP connection to {0} is congested or closed")]
    TcpQueue(SocketAddr),
    /// Opening another TCP connection would exceed the connection cap.
    #[error("no TCP connection to {0}: too many outgoing connections open")]
    TcpLimit(SocketAddr),
    /// A TLS connection could not be opened (refused, timed out, or the certificate is not
    /// valid for the gateway's name).
    #[error("TLS to {addr} failed: {reason}")]
    Tls {
        /// Destination.
        addr: SocketAddr,
        /// What went wrong (never key material).
        reason: String,
    },
}

/// What we write into Via/Contact/SDP for each address family.
#[derive(Debug, Clone)]
pub struct Advertise {
    /// Host (IP or name) for IPv4 peers, without port.
    pub v4: Option<String>,
    /// Host for IPv6 peers (bracketed when an IP literal).
    pub v6: Option<String>,
    /// SIP port to advertise.
    pub port: u16,
    /// SIP-over-TLS port to advertise to TLS peers, when TLS is on.
    pub tls_port: Option<u16>,
    /// Address written into SDP for media, when RTP must reach the node
    /// directly while SIP arrives through a load balancer.
    pub media: Option<IpAddr>,
}

/// Shared state of the receive side.
pub(crate) struct Receiver {
    pub limits: Limits,
    pub rate: RateLimiter,
    pub metrics: Metrics,
    pub tx: mpsc::Sender<Incoming>,
}

impl Receiver {
    /// Whether a request that did not frame may be answered: within the source's rate,
    /// like any request (a flood of garbage gets no more answers than one of requests).
    /// `reliable` picks the source's TCP/TLS bucket instead of its UDP one.
    pub(crate) fn allow_refusal(&self, from: SocketAddr, reliable: bool) -> bool {
        self.rate.allow(from.ip(), reliable, Instant::now()).is_ok()
    }

    /// Applies protection and forwards an accepted message.
    pub(crate) fn accept(&self, msg: Message, peer: Peer) {
        if msg.is_request() {
            if msg.header("User-Agent").is_some_and(is_scanner) {
                self.metrics.drop_msg("scanner");
                return;
            }
            let reliable = peer.proto.is_reliable();
            if let Err(why) = self.rate.allow(peer.addr.ip(), reliable, Instant::now()) {
                self.metrics.rate_limited.inc();
                if why == Limited::UnknownTotal {
                    self.metrics.drop_msg("unknown_sources_rate");
                }
                return;
            }
        }
        if self.tx.try_send(Incoming { msg, peer }).is_err() {
            self.metrics.drop_msg("overload");
        }
    }
}

/// The node's SIP sockets.
pub struct Transport {
    udp: Vec<Arc<tokio::net::UdpSocket>>,
    tcp: Arc<tcp::Connections>,
    /// The TLS listener's connections, when TLS is on.
    tls: Option<Arc<tcp::Connections>>,
    /// TLS connections the node opened to gateways.
    tls_out: Arc<tcp::Connections>,
    advertise: Advertise,
    /// Local UDP addresses (bound).
    pub local: Vec<SocketAddr>,
}

impl Transport {
    /// Binds UDP and TCP on every address (and TLS when `tls` is given),
    /// starts the receive loops under `tasks` and returns the transport plus the stream of
    /// accepted messages.
    #[allow(clippy::too_many_arguments)] // each is a distinct part of the node's set-up
    pub async fn bind(
        binds: &[SocketAddr],
        advertise: Advertise,
        limits: Limits,
        tcp_limits: tcp::TcpLimits,
        rate: RateLimiter,
        metrics: Metrics,
        tls: Option<tls::Listener>,
        tasks: &crate::supervisor::Supervisor,
    ) -> std::io::Result<(Arc<Transport>, mpsc::Receiver<Incoming>)> {
        let (tx, rx) = mpsc::channel(4096);
        let recv = Arc::new(Receiver {
            limits,
            rate,
            metrics,
            tx,
        });
        let tcp = Arc::new(tcp::Connections::new(recv.clone(), tcp_limits));
        let mut udp = Vec::new();
        let mut local = Vec::new();
        for addr in binds {
            let sock = Arc::new(udp::bind(*addr)?);
            local.push(sock.local_addr()?);
            let at = sock.local_addr()?;
            let (s, r) = (sock.clone(), recv.clone());
            tasks.spawn_restarting(&format!("sip-udp-{at}"), move || {
                udp::receive_loop(s.clone(), r.clone())
            });
            udp.push(sock);
            let listener = Arc::new(tokio::net::TcpListener::bind(addr).await?);
            let c = tcp.clone();
            tasks.spawn_restarting(&format!("sip-tcp-accept-{at}"), move || {
                tcp::accept_loop(listener.clone(), c.clone())
            });
        }
        let tls = match tls {
            Some(l) => {
                let conns = Arc::new(tcp::Connections::tls(recv.clone(), tcp_limits, l.acceptor));
                let listener = Arc::new(tokio::net::TcpListener::bind(l.bind).await?);
                let c = conns.clone();
                tasks.spawn_restarting("sip-tls-accept", move || {
                    tcp::accept_loop(listener.clone(), c.clone())
                });
                Some(conns)
            }
            None => None,
        };
        let tls_out = Arc::new(tcp::Connections::tls_client(recv.clone(), tcp_limits));
        Ok((
            Arc::new(Transport {
                udp,
                tcp,
                tls,
                tls_out,
                advertise,
                local,
            }),
            rx,
        ))
    }

    /// Opens (or reuses) a TLS connection to a gateway named `name` at `addr`; see
    /// [`tcp::Connections::connect_tls`]. Outbound TLS works with or without a TLS listener.
    pub async fn connect_tls(
        &self,
        addr: SocketAddr,
        name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<(), TransportError> {
        let server_name =
            rustls::pki_types::ServerName::try_from(name.to_owned()).map_err(|e| {
                TransportError::Tls {
                    addr,
                    reason: format!("{name:?} is not a valid TLS server name: {e}"),
                }
            })?;
        self.tls_out.connect_tls(addr, server_name, config).await
    }

    /// Sends serialised bytes to a peer.
    pub fn send(&self, peer: &Peer, data: Bytes) -> Result<(), TransportError> {
        match peer.proto {
            Proto::Udp => {
                let sock = self
                    .udp
                    .iter()
                    .find(|s| {
                        s.local_addr()
                            .is_ok_and(|l| l.is_ipv4() == peer.addr.is_ipv4())
                    })
                    .ok_or(TransportError::NoSocket {
                        family: if peer.addr.is_ipv4() { "IPv4" } else { "IPv6" },
                        addr: peer.addr,
                    })?;
                match sock.try_send_to(&data, peer.addr) {
                    Ok(_) => Ok(()),
                    // A full buffer is like a lost datagram: retransmission covers it.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
                    Err(source) => Err(TransportError::Io {
                        addr: peer.addr,
                        source,
                    }),
                }
            }
            Proto::Tcp => self.tcp.send(peer.addr, data),
            Proto::Tls => match &self.tls {
                // A connection the peer opened, else one we opened to a gateway.
                Some(t) if t.has(peer.addr) => t.send(peer.addr, data),
                _ => self.tls_out.send(peer.addr, data),
            },
        }
    }

    /// The host we advertise to a peer (IPv6 literals bracketed).
    pub fn advertised_host(&self, peer: &SocketAddr) -> String {
        let configured = if peer.is_ipv4() {
            &self.advertise.v4
        } else {
            &self.advertise.v6
        };
        if let Some(h) = configured {
            return h.clone();
        }
        let local = self
            .local
            .iter()
            .find(|l| l.is_ipv4() == peer.is_ipv4())
            .or(self.local.first());
        match local.map(|l| l.ip()) {
            Some(ip) if !ip.is_unspecified() => crate::sip::headers::uri_host(&ip),
            _ => crate::sip::headers::uri_host(&if peer.is_ipv4() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
            }),
        }
    }

    /// `host:port` we advertise to a peer (the TLS port to a TLS peer).
    pub fn advertised_hostport(&self, peer: &Peer) -> String {
        let port = match (peer.proto, self.advertise.tls_port) {
            (Proto::Tls, Some(p)) => p,
            _ => self.advertise.port,
        };
        format!("{}:{port}", self.advertised_host(&peer.addr))
    }

    /// The local address a call's RTP socket binds to for a peer: the SIP
    /// address of the peer's family, else `media_ip`.
    pub fn media_bind_ip(&self, peer: &SocketAddr, media_ip: IpAddr) -> IpAddr {
        self.local
            .iter()
            .find(|l| l.is_ipv4() == peer.is_ipv4())
            .map(|l| l.ip())
            .unwrap_or(media_ip)
    }

    /// The media IP to write into SDP for a peer: `--media-advertise` when
    /// set for the peer's family, else the advertised host when it is an IP,
    /// else the local address.
    pub fn media_ip(&self, peer: &SocketAddr) -> IpAddr {
        if let Some(m) = self.advertise.media
            && m.is_ipv4() == peer.is_ipv4()
        {
            return m;
        }
        let host = self.advertised_host(peer);
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
            return ip;
        }
        self.local
            .iter()
            .find(|l| l.is_ipv4() == peer.is_ipv4())
            .map(|l| l.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }
}
