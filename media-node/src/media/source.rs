//! Strict RTP source learning: which address a call's RTP is accepted from and sent to.
//!
//! Defends against "RTP Bleed" (Asterisk CVE-2017-14099): a node that latches onto the first
//! source that sends, or re-latches after a silence, streams the call's audio to whoever sends
//! a packet to its port. The rules here:
//!
//! 1. The address the peer signalled in SDP is preferred: its packets are accepted from the
//!    first one, and they make it the send address again whenever it speaks.
//! 2. Another source is learned only while a learning window is open (opened when media starts
//!    after the answer, and again by a re-INVITE / UPDATE that changed the media), only once it
//!    sent [`LearningConfig::probation`] consecutive packets (one SSRC, sequence numbers +1),
//!    and only after the signalled address had a head start of
//!    [`LearningConfig::head_start`] to speak first. A packet from the current send address
//!    closes the window early: once the right peer is talking nobody else can take over.
//!    A candidate from the IP the call's signalling came from (a peer behind NAT whose SDP
//!    names its private address) is as trusted as the SDP address and needs no head start,
//!    only the probation: its first words are not lost.
//! 3. Nothing is ever learned because the current source fell silent.
//! 4. Optionally ([`SourceLearner::restrict_to`]) only sources inside given networks (the
//!    trunk's signalling network) are considered at all.
//!
//! Pure logic: input is a packet's source, its RTP identity and the time; output is accept or
//! drop and the address to send to. No allocation per packet.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::routing::acl::{Cidr, normalize};

/// Tunables of source learning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearningConfig {
    /// How long after the window opens another source may still be learned.
    pub window: Duration,
    /// How long the signalled address has to speak before another source may be learned.
    pub head_start: Duration,
    /// Consecutive valid packets a new source must send before it is learned.
    pub probation: u16,
}

/// Learning window after the answer or a media change.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3);
/// Head start of the signalled address: well above the time a peer takes to send its first
/// packet after the ACK, well below what a human notices as missing greeting audio.
pub const DEFAULT_HEAD_START: Duration = Duration::from_millis(500);
/// Packets in sequence a new source must send (Asterisk's `probation` default is 4).
pub const DEFAULT_PROBATION: u16 = 4;

impl Default for LearningConfig {
    fn default() -> Self {
        LearningConfig {
            window: DEFAULT_WINDOW,
            head_start: DEFAULT_HEAD_START,
            probation: DEFAULT_PROBATION,
        }
    }
}

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// From the current source: process it.
    Accept,
    /// From a new source that has just been learned; it is the send address from now on.
    Learned,
    /// From another source: drop it (and count it).
    Drop,
}

/// Candidates tracked at once while learning; a bounded array, so a flood of sources costs no
/// memory (the oldest candidate is replaced).
const CANDIDATES: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Candidate {
    addr: SocketAddr,
    ssrc: u32,
    next_seq: u16,
    count: u16,
    last_seen: Duration,
}

/// The source state of one call's RTP stream.
#[derive(Debug, Clone)]
pub struct SourceLearner {
    cfg: LearningConfig,
    signalled: Option<SocketAddr>,
    current: Option<SocketAddr>,
    opened_at: Duration,
    /// The window was closed early by a packet from the current source.
    locked: bool,
    candidates: [Option<Candidate>; CANDIDATES],
    networks: Vec<Cidr>,
    /// The IP of the call's SIP peer.
    signalling: Option<IpAddr>,
}

/// IPv4-mapped IPv6 addresses (dual-stack sockets) compare as IPv4.
fn norm(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(normalize(a.ip()), a.port())
}

impl SourceLearner {
    /// A stream whose peer signalled `signalled` (None: no usable address yet), with the
    /// learning window opening at `now`.
    pub fn new(cfg: LearningConfig, signalled: Option<SocketAddr>, now: Duration) -> Self {
        let signalled = signalled.map(norm);
        SourceLearner {
            cfg,
            signalled,
            current: signalled,
            opened_at: now,
            locked: false,
            candidates: [None; CANDIDATES],
            networks: Vec::new(),
            signalling: None,
        }
    }

    /// Trusts `ip`, the address the call's SIP came from or went to, like the SDP address
    /// for learning: a candidate from it needs no head start.
    pub fn trust_signalling(mut self, ip: Option<IpAddr>) -> Self {
        self.signalling = ip.map(normalize);
        self
    }

    /// Accepts (and learns) only sources inside `networks`; empty allows any source.
    pub fn restrict_to(mut self, networks: Vec<Cidr>) -> Self {
        self.networks = networks;
        self
    }

    /// Where our RTP goes: the learned source, else the signalled address.
    pub fn current(&self) -> Option<SocketAddr> {
        self.current
    }

    /// The address from the peer's SDP.
    pub fn signalled(&self) -> Option<SocketAddr> {
        self.signalled
    }

    /// True while another source may still be learned.
    pub fn learning(&self, now: Duration) -> bool {
        !self.locked && now.saturating_sub(self.opened_at) < self.cfg.window
    }

    fn in_networks(&self, from: SocketAddr) -> bool {
        self.networks.is_empty() || self.networks.iter().any(|c| c.contains(from.ip()))
    }

    /// True when `from`'s IP may send us RTP or RTCP at all (the network restriction).
    pub fn allowed_ip(&self, from: SocketAddr) -> bool {
        self.in_networks(norm(from))
    }

    /// The peer's SDP changed (re-INVITE or UPDATE that changed the media): a new address
    /// becomes the send address at once; either way the learning window opens again.
    pub fn media_changed(&mut self, signalled: Option<SocketAddr>, now: Duration) {
        let signalled = signalled.map(norm);
        if signalled.is_some() && signalled != self.signalled {
            self.current = signalled;
        }
        // No address (hold with 0.0.0.0): keep the current source; nothing is sent on hold.
        if signalled.is_some() {
            self.signalled = signalled;
        }
        self.opened_at = now;
        self.locked = false;
        self.candidates = [None; CANDIDATES];
    }

    /// Decides about one packet that parsed as RTP with a negotiated payload type, from
    /// `from`, with its SSRC and sequence number, arriving at `now`.
    pub fn on_packet(&mut self, from: SocketAddr, ssrc: u32, seq: u16, now: Duration) -> Verdict {
        let from = norm(from);
        if !self.in_networks(from) {
            return Verdict::Drop;
        }
        if Some(from) == self.signalled {
            // The preferred address: always accepted, and what we send to from now on.
            let moved = self.current != Some(from);
            self.current = Some(from);
            self.locked = true;
            return if moved {
                Verdict::Learned
            } else {
                Verdict::Accept
            };
        }
        if Some(from) == self.current {
            self.locked = true;
            return Verdict::Accept;
        }
        if !self.learning(now) {
            return Verdict::Drop;
        }
        let probation = self.cfg.probation.max(1);
        let count = self.track(from, ssrc, seq, now);
        let head_start_over = now.saturating_sub(self.opened_at) >= self.cfg.head_start
            || self.signalling == Some(from.ip());
        if count >= probation && head_start_over {
            self.current = Some(from);
            self.locked = true;
            self.candidates = [None; CANDIDATES];
            return Verdict::Learned;
        }
        Verdict::Drop
    }

    /// Counts consecutive packets of a candidate; returns its count after this packet.
    fn track(&mut self, from: SocketAddr, ssrc: u32, seq: u16, now: Duration) -> u16 {
        if let Some(c) = self
            .candidates
            .iter_mut()
            .flatten()
            .find(|c| c.addr == from)
        {
            if c.ssrc == ssrc && c.next_seq == seq {
                c.count = c.count.saturating_add(1);
            } else {
                // Out of sequence or another stream: probation starts again.
                c.ssrc = ssrc;
                c.count = 1;
            }
            c.next_seq = seq.wrapping_add(1);
            c.last_seen = now;
            return c.count;
        }
        let fresh = Candidate {
            addr: from,
            ssrc,
            next_seq: seq.wrapping_add(1),
            count: 1,
            last_seen: now,
        };
        let slot = match self.candidates.iter().position(Option::is_none) {
            Some(i) => i,
            None => self
                .candidates
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.map_or(Duration::ZERO, |c| c.last_seen))
                .map_or(0, |(i, _)| i),
        };
        self.candidates[slot] = Some(fresh);
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const SDP: &str = "192.0.2.10:4000";

    fn learner() -> SourceLearner {
        SourceLearner::new(LearningConfig::default(), Some(addr(SDP)), ms(0))
    }

    #[test]
    fn a_peer_behind_nat_at_the_signalling_ip_is_learned_after_probation_only() {
        // SDP names a private address; packets come from the public IP the INVITE came from.
        let nat = addr("203.0.113.7:31000");
        let mut l = SourceLearner::new(
            LearningConfig::default(),
            Some(addr("10.1.2.3:4000")),
            ms(0),
        )
        .trust_signalling(Some("203.0.113.7".parse().expect("ip")));
        for (i, seq) in (100u16..103).enumerate() {
            assert_eq!(
                l.on_packet(nat, 7, seq, ms(20 * i as u64)),
                Verdict::Drop,
                "probation"
            );
        }
        assert_eq!(
            l.on_packet(nat, 7, 103, ms(60)),
            Verdict::Learned,
            "no head start to wait"
        );
        assert_eq!(l.current(), Some(nat));
        // Another IP still waits for the head start (and here the window is locked anyway).
        let mut other = SourceLearner::new(
            LearningConfig::default(),
            Some(addr("10.1.2.3:4000")),
            ms(0),
        )
        .trust_signalling(Some("203.0.113.7".parse().expect("ip")));
        let stranger = addr("198.51.100.9:5000");
        for (i, seq) in (100u16..110).enumerate() {
            assert_eq!(
                other.on_packet(stranger, 7, seq, ms(20 * i as u64)),
                Verdict::Drop
            );
        }
    }

    #[test]
    fn signalled_address_is_accepted_from_the_first_packet() {
        let mut l = learner();
        assert_eq!(l.current(), Some(addr(SDP)));
        assert_eq!(l.on_packet(addr(SDP), 1, 100, ms(5)), Verdict::Accept);
        assert_eq!(l.current(), Some(addr(SDP)));
        assert!(!l.learning(ms(6)), "the right peer spoke: window closed");
    }

    #[test]
    fn attacker_before_and_during_the_first_packets_is_never_learned() {
        let mut l = learner();
        let attacker = addr("192.0.2.10:4002");
        // Queued before media started: many packets in sequence, at once.
        for i in 0..50u16 {
            assert_eq!(l.on_packet(attacker, 9, i, ms(0)), Verdict::Drop);
        }
        assert_eq!(l.current(), Some(addr(SDP)), "no head start: not learned");
        // The real peer starts; the attacker keeps going, in sequence.
        for i in 0..50u16 {
            assert_eq!(
                l.on_packet(addr(SDP), 1, i, ms(40 + 20 * i as u64)),
                Verdict::Accept
            );
            assert_eq!(
                l.on_packet(attacker, 9, 50 + i, ms(41 + 20 * i as u64)),
                Verdict::Drop
            );
        }
        assert_eq!(l.current(), Some(addr(SDP)));
    }

    #[test]
    fn silence_of_the_real_source_never_relearns() {
        let mut l = learner();
        for i in 0..10u16 {
            l.on_packet(addr(SDP), 1, i, ms(20 * i as u64));
        }
        // Two seconds of silence, then an attacker in perfect sequence, for a long time.
        let attacker = addr("198.51.100.7:5000");
        for i in 0..500u16 {
            let v = l.on_packet(attacker, 9, i, ms(2200 + 20 * i as u64));
            assert_eq!(v, Verdict::Drop);
        }
        assert_eq!(l.current(), Some(addr(SDP)));
    }

    #[test]
    fn nat_peer_is_learned_within_the_window_after_probation() {
        let mut l = learner();
        let real = addr("203.0.113.5:31000");
        // Probation done but no head start yet: dropped, not learned.
        for i in 0..4u16 {
            assert_eq!(
                l.on_packet(real, 7, 10 + i, ms(100 + 20 * i as u64)),
                Verdict::Drop
            );
        }
        let mut learned_at = None;
        for i in 4..60u16 {
            let t = ms(100 + 20 * i as u64);
            match l.on_packet(real, 7, 10 + i, t) {
                Verdict::Learned => {
                    learned_at = Some(t);
                    break;
                }
                v => assert_eq!(v, Verdict::Drop),
            }
        }
        let t = learned_at.expect("learned");
        assert!(t >= DEFAULT_HEAD_START && t < DEFAULT_WINDOW, "{t:?}");
        assert_eq!(l.current(), Some(real));
        assert_eq!(l.on_packet(real, 7, 200, t + ms(20)), Verdict::Accept);
        // Learned: the window is closed for anyone else.
        let other = addr("203.0.113.6:31000");
        for i in 0..10u16 {
            assert_eq!(
                l.on_packet(other, 8, i, t + ms(40 + i as u64)),
                Verdict::Drop
            );
        }
        // The signalled address still wins when it speaks.
        assert_eq!(l.on_packet(addr(SDP), 1, 1, t + ms(100)), Verdict::Learned);
        assert_eq!(l.current(), Some(addr(SDP)));
    }

    #[test]
    fn probation_needs_consecutive_packets_of_one_stream() {
        let mut l = learner();
        let real = addr("203.0.113.5:31000");
        let t = DEFAULT_HEAD_START + ms(1);
        assert_eq!(l.on_packet(real, 7, 1, t), Verdict::Drop);
        assert_eq!(l.on_packet(real, 7, 2, t), Verdict::Drop);
        assert_eq!(l.on_packet(real, 7, 4, t), Verdict::Drop, "gap restarts");
        assert_eq!(
            l.on_packet(real, 8, 5, t),
            Verdict::Drop,
            "new SSRC restarts"
        );
        assert_eq!(l.on_packet(real, 8, 6, t), Verdict::Drop);
        assert_eq!(l.on_packet(real, 8, 7, t), Verdict::Drop);
        assert_eq!(l.on_packet(real, 8, 8, t), Verdict::Learned);
    }

    #[test]
    fn sequence_wrap_during_probation() {
        let mut l = learner();
        let real = addr("203.0.113.5:31000");
        let t = DEFAULT_HEAD_START;
        let seqs = [65534u16, 65535, 0, 1];
        let v: Vec<Verdict> = seqs.iter().map(|&s| l.on_packet(real, 1, s, t)).collect();
        assert_eq!(v[3], Verdict::Learned, "{v:?}");
    }

    #[test]
    fn nothing_is_learned_after_the_window() {
        let mut l = learner();
        let late = addr("203.0.113.5:31000");
        for i in 0..100u16 {
            let v = l.on_packet(late, 7, i, DEFAULT_WINDOW + ms(20 * i as u64));
            assert_eq!(v, Verdict::Drop);
        }
        assert_eq!(l.current(), Some(addr(SDP)));
    }

    #[test]
    fn a_media_change_reopens_the_window_and_moves_to_a_new_address() {
        let mut l = learner();
        l.on_packet(addr(SDP), 1, 1, ms(10));
        assert!(!l.learning(ms(11)));
        let moved = addr("192.0.2.20:6000");
        l.media_changed(Some(moved), ms(10_000));
        assert_eq!(l.current(), Some(moved));
        assert!(l.learning(ms(10_001)));
        // Hold with 0.0.0.0: keep sending state; the window opens again.
        l.media_changed(None, ms(20_000));
        assert_eq!(l.current(), Some(moved));
        assert_eq!(l.signalled(), Some(moved));
        // The old address is just another source now.
        for i in 0..3u16 {
            assert_eq!(l.on_packet(addr(SDP), 1, 2 + i, ms(20_001)), Verdict::Drop);
        }
    }

    #[test]
    fn a_flood_of_sources_is_bounded_and_does_not_block_the_real_candidate_forever() {
        let mut l = SourceLearner::new(LearningConfig::default(), None, ms(0));
        assert_eq!(l.current(), None);
        let real = addr("203.0.113.5:31000");
        let mut seq = 0u16;
        let mut learned = false;
        for round in 0..40u64 {
            let t = ms(600 + 20 * round);
            // Three spoofed sources per real packet fit beside it in the candidate slots.
            for k in 0..3u16 {
                let spoof = SocketAddr::new(addr("198.51.100.1:1").ip(), 1000 + k);
                l.on_packet(spoof, 5, (round as u16).wrapping_mul(7), t);
            }
            if l.on_packet(real, 1, seq, t) == Verdict::Learned {
                learned = true;
                break;
            }
            seq = seq.wrapping_add(1);
        }
        assert!(learned);
        assert_eq!(l.current(), Some(real));
    }

    #[test]
    fn network_restriction_drops_everything_outside() {
        let nets = vec![Cidr::parse("192.0.2.0/24").expect("cidr")];
        let mut l = learner().restrict_to(nets);
        let outside = addr("198.51.100.7:4000");
        for i in 0..20u16 {
            assert_eq!(
                l.on_packet(outside, 1, i, ms(600 + i as u64)),
                Verdict::Drop
            );
        }
        assert!(!l.allowed_ip(outside));
        let inside = addr("192.0.2.99:4000");
        assert!(l.allowed_ip(inside));
        let v: Vec<Verdict> = (0..4u16)
            .map(|i| l.on_packet(inside, 1, i, ms(700)))
            .collect();
        assert_eq!(v[3], Verdict::Learned);
    }

    #[test]
    fn ipv4_mapped_sources_match_the_signalled_ipv4_address() {
        let mut l = learner();
        let mapped = addr("[::ffff:192.0.2.10]:4000");
        assert_eq!(l.on_packet(mapped, 1, 1, ms(1)), Verdict::Accept);
    }
}
