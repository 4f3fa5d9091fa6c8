//! The media load generator of `bench-calls`, written to cost little CPU so that it can drive
//! thousands of calls on the same two cores as the node it measures: one sender thread, one
//! receiver thread (epoll), one echo-agent thread (epoll, a minimal WebSocket server), no
//! allocation per packet or frame, no JSON parsing.

pub mod agent;
pub mod rtp;
pub mod sys;

use std::sync::atomic::AtomicU64;

/// Payload bytes of one 20 ms PCMU frame.
pub const FRAME: usize = 160;
/// First two payload bytes of a probe frame.
pub const MAGIC: [u8; 2] = [0xA5, 0x5A];

/// Probe timestamps of one step: per call, per sequence, nanoseconds (CLOCK_REALTIME);
/// 0 means "did not happen".
pub struct Probes {
    per_call: usize,
    /// Caller: just before `send`.
    pub sent: Vec<AtomicU64>,
    /// Caller: when the packet was due on the clean 20 ms schedule (impaired runs only; else empty).
    pub nominal: Vec<AtomicU64>,
    /// Agent: kernel receive time of the `media` message.
    pub agent_in: Vec<AtomicU64>,
    /// Agent: just before writing the echo.
    pub agent_out: Vec<AtomicU64>,
    /// Caller: kernel receive time of the echo as RTP.
    pub back: Vec<AtomicU64>,
}

impl Probes {
    /// Tables for `calls` calls of at most `per_call` probes each.
    pub fn new(calls: usize, per_call: usize, with_nominal: bool) -> Probes {
        let mk = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        let n = calls * per_call;
        Probes {
            per_call,
            sent: mk(n),
            nominal: mk(if with_nominal { n } else { 0 }),
            agent_in: mk(n),
            agent_out: mk(n),
            back: mk(n),
        }
    }

    /// Probes per call.
    pub fn per_call(&self) -> usize {
        self.per_call
    }

    /// The table index of probe `seq` of `call`, if it has one.
    pub fn slot(&self, call: usize, seq: usize) -> Option<usize> {
        (seq < self.per_call)
            .then_some(call * self.per_call + seq)
            .filter(|i| *i < self.sent.len())
    }
}

/// Writes the probe header (magic, call, sequence) at the start of a payload.
pub fn write_probe(p: &mut [u8], call: u16, seq: u32) {
    if p.len() >= 8 {
        p[..2].copy_from_slice(&MAGIC);
        p[2..4].copy_from_slice(&call.to_be_bytes());
        p[4..8].copy_from_slice(&seq.to_be_bytes());
    }
}

/// (call, sequence) of a probe payload.
pub fn parse_probe(p: &[u8]) -> Option<(usize, usize)> {
    if p.len() < 8 || p[..2] != MAGIC {
        return None;
    }
    let call = u16::from_be_bytes([p[2], p[3]]) as usize;
    let seq = u32::from_be_bytes([p[4], p[5], p[6], p[7]]) as usize;
    Some((call, seq))
}
