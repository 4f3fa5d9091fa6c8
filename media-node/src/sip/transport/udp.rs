//! UDP: one socket per bind address, one datagram per message.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;

use super::{Peer, Proto, Receiver};
use crate::sip::framing::parse_datagram;

/// Binds a UDP socket (IPv6 sockets are v6-only so a v4 bind on the same
/// port can coexist).
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    // Bursts of retransmissions should not overflow the kernel buffer.
    let _ = sock.set_recv_buffer_size(4 * 1024 * 1024);
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

/// Reads datagrams forever, handing each parsed message to the receiver.
pub(crate) async fn receive_loop(sock: Arc<UdpSocket>, recv: Arc<Receiver>) {
    // One byte more than the limit lets us tell "exactly at the limit" from
    // "truncated by the buffer".
    let mut buf = vec![0u8; recv.limits.max_message_bytes + 1];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                // ICMP errors surface here on some platforms; keep serving.
                tracing::debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        let data = &buf[..n];
        // Keep-alives (CRLF) and empty datagrams are ignored.
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        match parse_datagram(data, &recv.limits) {
            Ok(msg) => recv.accept(
                msg,
                Peer {
                    proto: Proto::Udp,
                    addr: from,
                },
            ),
            Err(e) => {
                recv.metrics.drop_msg(e.label());
                tracing::debug!(%from, error = %e, "dropped malformed UDP message");
            }
        }
    }
}
