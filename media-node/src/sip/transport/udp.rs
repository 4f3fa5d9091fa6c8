//! UDP: one socket per bind address, one datagram per message.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use tokio::net::UdpSocket;

use super::{Peer, Proto, Receiver};
use crate::metrics::Metrics;
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
        contained(&recv.metrics, from, || handle(data, from, &recv, &sock));
    }
}

/// Runs the handling of one datagram so that a bug reachable from it costs
/// that datagram, not the node's only UDP reader: a panic is caught,
/// counted as a `panic` drop and logged. Returns whether `f` completed.
fn contained(metrics: &Metrics, from: SocketAddr, f: impl FnOnce()) -> bool {
    if std::panic::catch_unwind(AssertUnwindSafe(f)).is_ok() {
        return true;
    }
    metrics.drop_msg("panic");
    tracing::error!(%from, "handling a UDP datagram panicked; datagram dropped");
    false
}

/// Parses one datagram and hands it on; malformed ones are counted, and answered 400 (or
/// 505) when they are requests we can address an answer to, within the source's rate.
fn handle(data: &[u8], from: SocketAddr, recv: &Receiver, sock: &UdpSocket) {
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
            if let Some(resp) = crate::sip::framing::refusal(data, &e, &recv.limits)
                && recv.allow_refusal(from, false)
            {
                // A full socket buffer loses the answer like the network would.
                let _ = sock.try_send_to(&resp.to_bytes(), from);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_handling_one_datagram_is_counted_and_the_next_is_handled() {
        let metrics = Metrics::new();
        let from: SocketAddr = "192.0.2.7:5060".parse().unwrap_or_else(|e| panic!("{e}"));
        let panics = || metrics.dropped.with_label_values(&["panic"]).get();
        assert!(!contained(&metrics, from, || panic!(
            "bug reached from the network"
        )));
        assert_eq!(panics(), 1);
        let mut handled = false;
        assert!(contained(&metrics, from, || handled = true));
        assert!(handled, "the loop goes on with the next datagram");
        assert_eq!(panics(), 1);
    }
}
