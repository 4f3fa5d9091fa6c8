//! Loopback ports for the processes a test starts (nodes, SIPp, baresip,
//! etcd, the API server).
//!
//! A port found free is only free until something binds it, and the tests
//! of one binary run in parallel threads: two asking "is a port free?" before
//! either child process has bound its answer can be handed the same one (a
//! node then dials its own SIP port and answers its own INVITE with 482).
//! So every port handed out in this process is remembered and never handed
//! out again, and ports come from below the kernel's ephemeral range
//! (32768-60999 by default), where outgoing connections take theirs.

use std::collections::HashSet;
use std::net::{TcpListener, UdpSocket};
use std::sync::{Mutex, OnceLock};

/// Ports for SIP, HTTP, gRPC and the like.
const PORTS: std::ops::Range<u16> = 20000..32000;
/// Blocks of RTP ports (a node binds its range as calls need it).
const RTP: std::ops::Range<u16> = 10000..20000;

struct Handed {
    ports: HashSet<u16>,
    cursor: u16,
    rtp_cursor: u16,
}

fn state() -> &'static Mutex<Handed> {
    static STATE: OnceLock<Mutex<Handed>> = OnceLock::new();
    STATE.get_or_init(|| {
        // A different start per process, so that a test binary does not
        // meet ports the previous one's stragglers still hold.
        let seed = std::process::id() as usize;
        let span = usize::from(PORTS.end - PORTS.start);
        let rtp_span = usize::from(RTP.end - RTP.start);
        Mutex::new(Handed {
            ports: HashSet::new(),
            cursor: PORTS.start + u16::try_from(seed % span).unwrap_or(0),
            rtp_cursor: RTP.start + u16::try_from((seed * 200) % rtp_span).unwrap_or(0) / 2 * 2,
        })
    })
}

fn bindable(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// `n` consecutive ports on 127.0.0.1, each free for UDP and TCP and never
/// handed out before in this process; returns the first.
pub fn consecutive(n: u16) -> u16 {
    let mut st = state().lock().unwrap_or_else(|e| e.into_inner());
    let span = PORTS.end - PORTS.start;
    for _ in 0..span {
        let start = st.cursor;
        st.cursor = if start + n >= PORTS.end {
            PORTS.start
        } else {
            start + 1
        };
        if start + n > PORTS.end {
            continue;
        }
        let all = start..start + n;
        if all.clone().all(|p| !st.ports.contains(&p) && bindable(p)) {
            st.ports.extend(all);
            st.cursor = start + n;
            return start;
        }
    }
    panic!("no {n} free consecutive ports on 127.0.0.1 in {PORTS:?}");
}

/// Ports reserved with each one handed out: programs bind neighbours of
/// the port they are given (SIPp's `-mp` media port +1 and +2 for RTCP and
/// video, baresip's TLS listener on its SIP port +1), so those stay free too.
const SPACING: u16 = 4;

/// A port free on 127.0.0.1 for both UDP and TCP, handed out once (with
/// its next [`SPACING`] - 1 neighbours, also free).
pub fn free_port() -> u16 {
    consecutive(SPACING)
}

/// The first (even) port of a block of `len` RTP ports, distinct from the
/// blocks handed out before in this process (until the range wraps).
pub fn rtp_block(len: u16) -> u16 {
    let mut st = state().lock().unwrap_or_else(|e| e.into_inner());
    let len = len.max(2).div_ceil(2) * 2;
    if st.rtp_cursor + len > RTP.end {
        st.rtp_cursor = RTP.start;
    }
    let start = st.rtp_cursor;
    st.rtp_cursor += len;
    start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let mut seen = HashSet::new();
        for _ in 0..500 {
            let p = free_port();
            for n in p..p + SPACING {
                assert!(seen.insert(n), "{n} handed out twice");
            }
        }
        let pair = consecutive(2);
        assert!(seen.insert(pair) && seen.insert(pair + 1));
        assert!(seen.insert(free_port()));
    }

    #[test]
    fn rtp_blocks_do_not_overlap() {
        let a = rtp_block(201);
        let b = rtp_block(201);
        assert_eq!(a % 2, 0);
        assert!(b >= a + 202 || b < a, "{a} {b}");
    }
}
