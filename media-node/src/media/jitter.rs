//! The caller-to-agent reorder buffer: forwards audio the moment it can, waits only at a gap.
//!
//! Packets go in by RTP timestamp (sequence numbers only feed the reorder statistics). Their
//! bytes are placed at their timestamp, so any packetisation (10, 20, 30 ms) comes out as fixed
//! 160-sample frames, in order, numbered 0, 1, 2, ... (the agent's `timestamp` is the number
//! times 20 ms, so it is always 20 ms apart whatever the arrival pattern).
//!
//! Timing model ([`JitterBuffer::pop`]):
//! - A complete frame that is next in order is released at once: on a clean line nothing is
//!   held, whatever the measured jitter.
//! - When the next frame is missing (or only partly received) and later audio is already here,
//!   the buffer waits for it until its *deadline*: the time it would have arrived with the
//!   smallest transit seen lately, plus the *hold*. Past the deadline the frame is concealed (one
//!   frame of silence per missing frame, so the agent's stream keeps its 20 ms steps) and the
//!   frames behind it are released. A packet that turns up after its frame was concealed is
//!   dropped as late.
//! - The hold adapts to what the line does: it follows the largest lateness (transit above the
//!   smallest) seen lately, at least `min_hold` (so a packet up to two frames out of place is put
//!   back in order before any reordering has been measured) and at most `max_hold`, and decays back towards the
//!   current lateness when the line calms (time constant ~5 s at 50 packets per second).
//! - A gap revealed by a packet that is itself late by the whole hold (the backlog of a stalled
//!   path, arriving at once and slightly out of order) is waited for at least 40 ms (or the
//!   hold if smaller) from when it appeared, even though its frames' expected times are long
//!   past: the backlog is reordered instead of concealed. A gap revealed by an on-time packet
//!   is a loss and waits only for the missing frames' own deadlines.
//! - A missing frame with nothing after it is not concealed: the caller may simply have
//!   stopped sending (silence suppression, hold, end of call).
//! - A timestamp jump beyond the buffer's window (a restarted stream, a long silence) starts a
//!   new window at the new packet, without filling the jump; frame numbers continue.
//!
//! Time is an explicit `Duration` since any fixed epoch: no clocks are read here. Storage is
//! allocated once at construction; pushing and popping never allocate.

use std::time::Duration;

/// Tuning of a [`JitterBuffer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// Bytes (= samples for G.711) per output frame: 160 for 20 ms at 8 kHz.
    pub frame_samples: u32,
    /// Sample rate (8000 for G.711).
    pub clock_rate: u32,
    /// Smallest wait for a missing frame beyond its expected arrival.
    pub min_hold: Duration,
    /// Largest wait for a missing frame beyond its expected arrival.
    pub max_hold: Duration,
    /// Frames the buffer can hold ahead of the next one out; a packet further ahead starts a
    /// new window.
    pub capacity_frames: usize,
    /// Byte used for parts of a frame that were never received (0xFF is μ-law silence).
    pub silence: u8,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            frame_samples: 160,
            clock_rate: 8000,
            min_hold: Duration::from_millis(60),
            max_hold: Duration::from_millis(200),
            capacity_frames: 32,
            silence: 0xFF,
        }
    }
}

/// A frame released by [`JitterBuffer::pop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output<'a> {
    /// Audio (`frame_samples` bytes); parts never received hold the silence byte.
    Frame {
        /// Frame number in the output stream (0 for the first frame ever released).
        index: u64,
        /// The frame's bytes.
        data: &'a [u8],
    },
    /// This frame never arrived and later audio did: substitute one frame of silence.
    Concealed {
        /// Frame number in the output stream.
        index: u64,
    },
}

impl Output<'_> {
    /// The frame number in the output stream.
    pub fn index(&self) -> u64 {
        match self {
            Output::Frame { index, .. } | Output::Concealed { index } => *index,
        }
    }
}

/// What [`JitterBuffer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Its audio is in the buffer.
    Accepted,
    /// Every byte of it was already there.
    Duplicate,
    /// Its frame had already been released or concealed: dropped.
    Late,
    /// No payload.
    Empty,
}

/// Counters since the buffer was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JitterStats {
    /// Packets accepted into the buffer.
    pub packets: u64,
    /// Packets dropped because they were exact duplicates.
    pub duplicates: u64,
    /// Packets dropped because their frame had already been released or concealed.
    pub late: u64,
    /// Packets that arrived with a lower sequence number than one before them.
    pub reordered: u64,
    /// Frames concealed (never arrived, later audio did).
    pub concealed_frames: u64,
    /// Frames released with audio.
    pub released_frames: u64,
    /// Frames released only partly filled (the rest was lost).
    pub partial_frames: u64,
    /// Frames released after waiting at a gap (the wait cost latency).
    pub waited_frames: u64,
    /// Times a timestamp jump started a new window.
    pub resyncs: u64,
}

/// The adaptive reorder buffer of one stream. See the module documentation.
#[derive(Debug)]
pub struct JitterBuffer {
    cfg: JitterConfig,
    frame: usize,
    /// Ring of frames; slot i holds absolute frame `slot_index[i]` when `filled[i] > 0`.
    data: Box<[u8]>,
    slot_index: Box<[u64]>,
    filled: Box<[u16]>,
    /// Absolute frame (timestamp / frame_samples) of the next frame out; None before the first
    /// packet.
    head: Option<u64>,
    /// Highest absolute frame holding audio.
    newest: Option<u64>,
    /// Output frame number of `head`.
    out_index: u64,
    /// Highest extended timestamp seen and its 32-bit value (for unwrapping).
    ext_high: Option<(u64, u32)>,
    last_seq: Option<u16>,
    /// Smallest transit (arrival minus media time, µs) in the current and previous window.
    base_now: i64,
    base_prev: i64,
    window_started: Option<Duration>,
    /// Lateness peak (µs) that the hold follows, scaled by 256 for the decay.
    peak_q8: i64,
    /// RFC 3550 A.8 interarrival jitter in µs, scaled by 16.
    jitter_q4_us: u64,
    prev_transit: Option<i64>,
    /// True while the frame at `head` has been waited for (for `waited_frames`).
    waiting: bool,
    /// When the current gap (a missing frame with later audio behind it) was first seen, if a
    /// late packet (a stalled path's backlog) revealed it.
    gap_since: Option<Duration>,
    stats: JitterStats,
}

/// Extended timestamps start here so that reordered packets before the first one stay positive.
const EXT_ORIGIN: u64 = 1 << 40;
/// Length of one window of the smallest-transit tracker.
const BASE_WINDOW: Duration = Duration::from_secs(4);
/// Longest a gap is waited for from the moment it appeared, even when the missing frame's
/// expected arrival is long past (a stalled path delivering its backlog out of order).
const GAP_WAIT: Duration = Duration::from_millis(40);
/// Decay of the lateness peak per packet (1/256 of the way to the current lateness).
const PEAK_DECAY_SHIFT: u32 = 8;

impl JitterBuffer {
    /// A buffer with the given tuning (`max_hold` is raised to `min_hold` when below it, and
    /// the capacity to cover `max_hold` plus headroom).
    pub fn new(mut cfg: JitterConfig) -> Self {
        cfg.frame_samples = cfg.frame_samples.clamp(1, u16::MAX as u32);
        cfg.clock_rate = cfg.clock_rate.max(1);
        if cfg.max_hold < cfg.min_hold {
            cfg.max_hold = cfg.min_hold;
        }
        let frame = cfg.frame_samples as usize;
        let frame_us = (cfg.frame_samples as i64 * 1_000_000 / cfg.clock_rate as i64).max(1);
        let needed = (cfg.max_hold.as_micros() as i64 / frame_us) as usize + 8;
        cfg.capacity_frames = cfg.capacity_frames.max(needed);
        let cap = cfg.capacity_frames;
        JitterBuffer {
            frame,
            data: vec![cfg.silence; cap * frame].into_boxed_slice(),
            slot_index: vec![0; cap].into_boxed_slice(),
            filled: vec![0; cap].into_boxed_slice(),
            head: None,
            newest: None,
            out_index: 0,
            ext_high: None,
            last_seq: None,
            base_now: i64::MAX,
            base_prev: i64::MAX,
            window_started: None,
            peak_q8: 0,
            jitter_q4_us: 0,
            prev_transit: None,
            waiting: false,
            gap_since: None,
            cfg,
            stats: JitterStats::default(),
        }
    }

    /// The tuning in effect.
    pub fn config(&self) -> &JitterConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// RFC 3550 interarrival jitter estimate.
    pub fn jitter(&self) -> Duration {
        Duration::from_micros(self.jitter_q4_us >> 4)
    }

    /// How long past its expected arrival a missing frame is waited for now.
    pub fn hold(&self) -> Duration {
        let peak = (self.peak_q8 >> PEAK_DECAY_SHIFT).max(0) as u64;
        Duration::from_micros(peak)
            .max(self.cfg.min_hold)
            .min(self.cfg.max_hold)
    }

    /// Frames held from the next one out to the newest audio (0 when nothing is waiting).
    pub fn depth_frames(&self) -> u64 {
        match (self.head, self.newest) {
            (Some(h), Some(n)) if n >= h => n - h + 1,
            _ => 0,
        }
    }

    fn base(&self) -> i64 {
        self.base_now.min(self.base_prev)
    }

    fn slot_of(&self, index: u64) -> usize {
        (index % self.cfg.capacity_frames as u64) as usize
    }

    /// Bytes received of absolute frame `index` (0 when none).
    fn filled_of(&self, index: u64) -> usize {
        let slot = self.slot_of(index);
        if self.slot_index[slot] == index {
            self.filled[slot] as usize
        } else {
            0
        }
    }

    /// Unwraps a 32-bit timestamp to 64 bits. The first timestamp (after creation or a resync)
    /// is placed on a frame boundary far from zero, so frames follow the sender's own grid and
    /// reordered packets before it stay positive.
    fn extend(&mut self, ts: u32) -> u64 {
        match self.ext_high {
            None => {
                let fs = self.cfg.frame_samples as u64;
                let e = (EXT_ORIGIN / fs) * fs;
                self.ext_high = Some((e, ts));
                e
            }
            Some((high, high_ts)) => {
                let delta = ts.wrapping_sub(high_ts) as i32 as i64;
                let e = high.saturating_add_signed(delta);
                if e > high {
                    self.ext_high = Some((e, ts));
                }
                e
            }
        }
    }

    /// Media time of an extended timestamp, in µs.
    fn media_us(&self, ext: u64) -> i64 {
        (ext as u128 * 1_000_000 / self.cfg.clock_rate as u128).min(i64::MAX as u128) as i64
    }

    /// Tracks the smallest transit, the lateness peak and the A.8 jitter for one packet;
    /// returns its lateness (transit above the smallest, clamped to `max_hold`) in µs.
    fn measure(&mut self, ext: u64, now: Duration) -> i64 {
        let now_us = now.as_micros().min(i64::MAX as u128) as i64;
        let transit = now_us.saturating_sub(self.media_us(ext));
        match self.window_started {
            Some(t) if now.saturating_sub(t) < BASE_WINDOW => {}
            _ => {
                self.base_prev = self.base_now;
                self.base_now = i64::MAX;
                self.window_started = Some(now);
            }
        }
        self.base_now = self.base_now.min(transit);
        let lateness = transit
            .saturating_sub(self.base())
            .clamp(0, self.cfg.max_hold.as_micros() as i64);
        let l_q8 = lateness << PEAK_DECAY_SHIFT;
        if l_q8 > self.peak_q8 {
            self.peak_q8 = l_q8;
        } else {
            self.peak_q8 -= (self.peak_q8 - l_q8) >> PEAK_DECAY_SHIFT;
        }
        if let Some(prev) = self.prev_transit {
            let d = transit.saturating_sub(prev).unsigned_abs();
            self.jitter_q4_us = self
                .jitter_q4_us
                .saturating_add(d)
                .saturating_sub((self.jitter_q4_us + 8) >> 4);
        }
        self.prev_transit = Some(transit);
        lateness
    }

    /// Forgets everything buffered and starts a new window at `ts` (frame numbers continue).
    fn resync(&mut self, ts: u32) -> u64 {
        self.stats.resyncs += 1;
        self.filled.fill(0);
        self.newest = None;
        self.ext_high = None;
        self.prev_transit = None;
        self.base_now = i64::MAX;
        self.base_prev = i64::MAX;
        self.window_started = None;
        self.waiting = false;
        self.gap_since = None;
        let ext = self.extend(ts);
        self.head = Some(ext / self.cfg.frame_samples as u64);
        ext
    }

    /// Adds one packet: its sequence number, RTP timestamp and payload, received at `now`,
    /// and says what became of it. Call [`JitterBuffer::pop`] afterwards to take what became
    /// ready.
    pub fn push(&mut self, seq: u16, timestamp: u32, payload: &[u8], now: Duration) -> Pushed {
        if payload.is_empty() {
            return Pushed::Empty;
        }
        match self.last_seq {
            Some(last) if (seq.wrapping_sub(last) as i16) < 0 => self.stats.reordered += 1,
            _ => self.last_seq = Some(seq),
        }
        let fs = self.cfg.frame_samples as u64;
        let cap = self.cfg.capacity_frames as u64;
        let len = payload.len() as u64;
        let mut ext = self.extend(timestamp);
        let head = match self.head {
            None => {
                let h = ext / fs;
                self.head = Some(h);
                h
            }
            Some(h) => {
                let first = ext / fs;
                let last = (ext + len - 1) / fs;
                if last >= h + cap || first.saturating_add(cap) < h {
                    // Far outside the window: the sender jumped (restart, long silence).
                    ext = self.resync(timestamp);
                    ext / fs
                } else {
                    h
                }
            }
        };
        let lateness = self.measure(ext, now);
        if (ext + len - 1) / fs < head {
            self.stats.late += 1;
            return Pushed::Late;
        }
        let mut pos = ext;
        let mut rest = payload;
        let mut fresh = false;
        while !rest.is_empty() {
            let index = pos / fs;
            let offset = (pos % fs) as usize;
            let n = (self.frame - offset).min(rest.len());
            if index >= head && index < head + cap {
                let slot = self.slot_of(index);
                if self.filled[slot] == 0 || self.slot_index[slot] != index {
                    // Fresh slot (or a stale one from an earlier lap): reset to silence.
                    self.data[slot * self.frame..(slot + 1) * self.frame].fill(self.cfg.silence);
                    self.slot_index[slot] = index;
                    self.filled[slot] = 0;
                }
                let start = slot * self.frame + offset;
                let dst = &mut self.data[start..start + n];
                if self.filled[slot] as usize + n <= self.frame
                    && (self.filled[slot] == 0 || dst.iter().all(|&b| b == self.cfg.silence))
                {
                    // Bytes not seen before (a filled slot only grows by new parts).
                    dst.copy_from_slice(&rest[..n]);
                    self.filled[slot] += n as u16;
                    fresh = true;
                }
                self.newest = Some(self.newest.map_or(index, |m| m.max(index)));
            }
            pos += n as u64;
            rest = &rest[n..];
        }
        let pushed = if fresh {
            self.stats.packets += 1;
            Pushed::Accepted
        } else {
            self.stats.duplicates += 1;
            Pushed::Duplicate
        };
        // A gap revealed by a packet that is itself late by the whole hold is the backlog of a
        // stalled path arriving at once; a gap revealed by an on-time packet is a loss.
        if self.gap_since.is_none() && lateness >= self.hold().as_micros() as i64 && self.has_gap()
        {
            self.gap_since = Some(now);
        }
        pushed
    }

    /// True when the next frame out is missing or partial and later audio is already here.
    fn has_gap(&self) -> bool {
        match (self.head, self.newest) {
            (Some(h), Some(n)) if n >= h => {
                let filled = self.filled_of(h);
                filled < self.frame && !(filled == 0 && n == h)
            }
            _ => false,
        }
    }

    /// When the frame the buffer is waiting for will be concealed (or released partly filled),
    /// if it is waiting at a gap; None when it holds nothing or only releases on arrival.
    pub fn deadline(&self) -> Option<Duration> {
        if !self.has_gap() {
            return None;
        }
        let head = self.head?;
        let base = self.base();
        if base == i64::MAX {
            return None;
        }
        let fs = self.cfg.frame_samples as u64;
        let expected = base
            .saturating_add(self.media_us(head.saturating_mul(fs)))
            .saturating_add(self.hold().as_micros() as i64);
        let expected = Duration::from_micros(expected.max(0) as u64);
        // A gap that has only just appeared gets a short wait of its own, so the backlog of a
        // stalled path, arriving all at once and out of order, is put back in order rather
        // than concealed because its frames' expected times are long past.
        Some(match self.gap_since {
            Some(since) => expected.max(since + GAP_WAIT.min(self.hold())),
            None => expected,
        })
    }

    /// The next frame out at `now`, if one is ready: the next frame in order when complete, or
    /// (past its deadline) a partial or concealed one. Call until it returns None.
    pub fn pop(&mut self, now: Duration) -> Option<Output<'_>> {
        let head = self.head?;
        let newest = self.newest.filter(|&n| n >= head)?;
        let filled = self.filled_of(head);
        if filled < self.frame {
            match self.deadline() {
                Some(d) if now >= d => {}
                Some(_) => {
                    self.waiting = true;
                    return None;
                }
                None => return None,
            }
        }
        if self.waiting {
            self.stats.waited_frames += 1;
            self.waiting = false;
        }
        let index = self.out_index;
        self.out_index += 1;
        self.head = Some(head + 1);
        if head == newest {
            self.newest = None;
        }
        if !self.has_gap() {
            // The gap is closed (the next frame is here, or nothing is behind it): the next
            // one is a new episode. Consecutive missing frames stay one episode.
            self.gap_since = None;
        }
        let slot = self.slot_of(head);
        if filled == 0 {
            self.stats.concealed_frames += 1;
            return Some(Output::Concealed { index });
        }
        self.filled[slot] = 0;
        self.stats.released_frames += 1;
        if filled < self.frame {
            self.stats.partial_frames += 1;
        }
        Some(Output::Frame {
            index,
            data: &self.data[slot * self.frame..(slot + 1) * self.frame],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn frame(tag: u8) -> [u8; 160] {
        let mut f = [tag; 160];
        f[0] = tag;
        f
    }

    /// What pop returns, as (index, Some(tag) for audio / None for concealed).
    fn drain(jb: &mut JitterBuffer, now: Duration) -> Vec<(u64, Option<u8>)> {
        let mut out = Vec::new();
        while let Some(o) = jb.pop(now) {
            out.push(match o {
                Output::Frame { index, data } => (index, Some(data[0])),
                Output::Concealed { index } => (index, None),
            });
        }
        out
    }

    /// Packet `k` of a 20 ms stream (timestamp 160 k) with payload tag `k`.
    fn push_k(jb: &mut JitterBuffer, k: u16, at: Duration) {
        jb.push(k, 1000 + 160 * k as u32, &frame(k as u8), at);
    }

    #[test]
    fn in_order_packets_are_released_on_arrival() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for k in 0..50u16 {
            let at = ms(20 * k as u64);
            push_k(&mut jb, k, at);
            assert_eq!(drain(&mut jb, at), vec![(k as u64, Some(k as u8))]);
            assert_eq!(jb.depth_frames(), 0, "nothing held");
        }
        assert_eq!(jb.stats().released_frames, 50);
        assert_eq!(jb.stats().waited_frames, 0);
    }

    #[test]
    fn jitter_without_reordering_holds_nothing() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        // Arrivals up to 15 ms late but in order: each frame goes out as it arrives.
        let mut last = ms(0);
        for k in 0..100u16 {
            let at = (ms(20 * k as u64 + (k as u64 * 7919) % 16)).max(last);
            last = at;
            push_k(&mut jb, k, at);
            assert_eq!(drain(&mut jb, at).len(), 1);
        }
        assert!(jb.jitter() > ms(1));
    }

    #[test]
    fn a_swap_is_put_back_in_order() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for k in 0..3u16 {
            push_k(&mut jb, k, ms(20 * k as u64));
            drain(&mut jb, ms(20 * k as u64));
        }
        // 4 arrives in 3's slot, 3 a slot later.
        push_k(&mut jb, 4, ms(60));
        assert_eq!(drain(&mut jb, ms(60)), vec![]);
        assert!(jb.deadline().is_some());
        push_k(&mut jb, 3, ms(81));
        assert_eq!(
            drain(&mut jb, ms(81)),
            vec![(3, Some(3)), (4, Some(4))],
            "released in order as soon as the gap closed"
        );
        assert_eq!(jb.stats().reordered, 1);
        assert_eq!(jb.stats().concealed_frames, 0);
    }

    #[test]
    fn a_loss_is_one_concealed_frame_after_the_hold() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for k in 0..3u16 {
            push_k(&mut jb, k, ms(20 * k as u64));
            drain(&mut jb, ms(20 * k as u64));
        }
        // 3 is lost.
        push_k(&mut jb, 4, ms(80));
        assert_eq!(drain(&mut jb, ms(80)), vec![]);
        // Expected at 60 ms, held for min_hold (60 ms).
        assert_eq!(jb.deadline(), Some(ms(120)));
        assert_eq!(drain(&mut jb, ms(119)), vec![]);
        push_k(&mut jb, 5, ms(100));
        assert_eq!(
            drain(&mut jb, ms(120)),
            vec![(3, None), (4, Some(4)), (5, Some(5))]
        );
        // It turns up after all: late, dropped.
        push_k(&mut jb, 3, ms(121));
        assert_eq!(drain(&mut jb, ms(121)), vec![]);
        push_k(&mut jb, 6, ms(121));
        assert_eq!(drain(&mut jb, ms(121)), vec![(6, Some(6))]);
        let s = jb.stats();
        assert_eq!((s.concealed_frames, s.late, s.waited_frames), (1, 1, 1));
    }

    #[test]
    fn a_long_gap_is_concealed_frame_by_frame_at_once() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        push_k(&mut jb, 0, ms(0));
        drain(&mut jb, ms(0));
        // 500 ms of packets lost; the next arrives on time: the missing frames' deadlines have
        // passed, so they are concealed without waiting and the stream stays 20 ms apart.
        push_k(&mut jb, 26, ms(520));
        let mut out = drain(&mut jb, ms(520));
        assert_eq!(out.len(), 23, "frames 1..=23 are at or past their deadline");
        // Frames 24 and 25 (expected at 480 and 500 ms) could still come: held 60 ms each.
        assert_eq!(jb.deadline(), Some(ms(540)));
        out.extend(drain(&mut jb, ms(540)));
        assert_eq!(jb.deadline(), Some(ms(560)));
        out.extend(drain(&mut jb, ms(560)));
        assert_eq!(out.len(), 26);
        assert!(out[..25].iter().all(|(_, a)| a.is_none()));
        assert_eq!(out[25], (26, Some(26)));
        assert!(out.windows(2).all(|w| w[1].0 == w[0].0 + 1));
    }

    #[test]
    fn a_stall_then_burst_is_released_in_order_without_loss() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        push_k(&mut jb, 0, ms(0));
        drain(&mut jb, ms(0));
        // Nothing for 500 ms (the network held the packets), then all of them at once.
        assert_eq!(jb.deadline(), None, "nothing later: nothing to conceal");
        let mut got = Vec::new();
        for k in 1..=25u16 {
            push_k(&mut jb, k, ms(520));
            got.extend(drain(&mut jb, ms(520)));
        }
        assert_eq!(got.len(), 25);
        assert!(got.iter().all(|(_, a)| a.is_some()));
        // The hold learned the lateness, within its bound.
        assert!(
            jb.hold() > ms(190) && jb.hold() <= ms(200),
            "{:?}",
            jb.hold()
        );
    }

    #[test]
    fn a_stalled_backlog_arriving_out_of_order_is_reordered_not_concealed() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        push_k(&mut jb, 0, ms(0));
        drain(&mut jb, ms(0));
        // 500 ms without packets, then the 25 held ones within 30 ms, shuffled.
        let order = [
            2u16, 1, 4, 3, 5, 7, 6, 8, 10, 9, 11, 13, 12, 14, 16, 15, 17, 19, 18, 20, 22, 21, 23,
            25, 24,
        ];
        let mut got = Vec::new();
        for (i, k) in order.iter().enumerate() {
            let at = ms(520 + i as u64);
            push_k(&mut jb, *k, at);
            got.extend(drain(&mut jb, at));
        }
        got.extend(drain(&mut jb, ms(600)));
        assert_eq!(got.len(), 25);
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, (_, a))| *a == Some(i as u8 + 1)),
            "{got:?}"
        );
        assert_eq!(jb.stats().concealed_frames, 0);
    }

    #[test]
    fn hold_grows_with_lateness_and_shrinks_when_calm() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut t = 0u64;
        for k in 0..200u16 {
            // Every 10th packet 90 ms late (after its successors).
            let late = if k % 10 == 5 { 90 } else { 0 };
            t = 20 * k as u64;
            push_k(&mut jb, k, ms(t + late));
            drain(&mut jb, ms(t + late));
        }
        assert!(jb.hold() >= ms(85), "{:?}", jb.hold());
        for k in 200..1000u16 {
            t = 20 * k as u64;
            push_k(&mut jb, k, ms(t));
            drain(&mut jb, ms(t));
        }
        let _ = t;
        assert_eq!(jb.hold(), ms(60), "back to min_hold on a calm line");
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        push_k(&mut jb, 0, ms(0));
        push_k(&mut jb, 0, ms(1));
        assert_eq!(drain(&mut jb, ms(1)), vec![(0, Some(0))]);
        push_k(&mut jb, 2, ms(40));
        push_k(&mut jb, 2, ms(41));
        push_k(&mut jb, 1, ms(42));
        assert_eq!(drain(&mut jb, ms(42)), vec![(1, Some(1)), (2, Some(2))]);
        push_k(&mut jb, 2, ms(43));
        let s = jb.stats();
        assert_eq!(s.duplicates, 2);
        assert_eq!(s.late, 1);
        assert_eq!(s.released_frames, 3);
    }

    #[test]
    fn timestamp_wrap_is_seamless() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let start = u32::MAX - 320;
        let mut out = Vec::new();
        for k in 0..6u32 {
            jb.push(
                k as u16,
                start.wrapping_add(160 * k),
                &frame(k as u8),
                ms(20 * k as u64),
            );
            out.extend(drain(&mut jb, ms(20 * k as u64)));
        }
        assert_eq!(
            out.iter()
                .map(|(_, a)| a.unwrap_or(255))
                .collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5]
        );
    }

    #[test]
    fn other_packetisations_are_reframed() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        // 10 ms packets: a frame is out once both halves are in.
        jb.push(0, 0, &[1; 80], ms(0));
        assert_eq!(drain(&mut jb, ms(0)), vec![]);
        assert_eq!(
            jb.deadline(),
            Some(ms(60)),
            "a partial frame waits at most the hold"
        );
        jb.push(1, 80, &[2; 80], ms(10));
        let out = drain(&mut jb, ms(10));
        assert_eq!(out, vec![(0, Some(1))]);
        // 30 ms packets: 240 bytes = one frame and a half.
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(0, 0, &[7; 240], ms(0));
        assert_eq!(drain(&mut jb, ms(0)).len(), 1);
        jb.push(1, 240, &[8; 240], ms(30));
        assert_eq!(drain(&mut jb, ms(30)).len(), 2);
        jb.push(2, 480, &[9; 240], ms(60));
        assert_eq!(drain(&mut jb, ms(60)).len(), 1);
        // The trailing half frame (expected at 80 ms) is released padded after the hold.
        assert_eq!(jb.deadline(), Some(ms(140)));
        assert_eq!(drain(&mut jb, ms(140)).len(), 1);
        assert_eq!(jb.stats().partial_frames, 1);
    }

    #[test]
    fn large_jump_starts_a_new_window_and_numbers_continue() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        push_k(&mut jb, 0, ms(0));
        push_k(&mut jb, 1, ms(20));
        drain(&mut jb, ms(20));
        // The sender restarts its timestamps far away.
        jb.push(2, 0x1234_5678, &frame(9), ms(40));
        jb.push(3, 0x1234_5678 + 160, &frame(10), ms(60));
        assert_eq!(drain(&mut jb, ms(60)), vec![(2, Some(9)), (3, Some(10))]);
        assert_eq!(jb.stats().resyncs, 1);
        // And backwards.
        jb.push(4, 5, &frame(11), ms(80));
        assert_eq!(drain(&mut jb, ms(80)), vec![(4, Some(11))]);
        assert_eq!(jb.stats().resyncs, 2);
    }

    #[test]
    fn hostile_timestamps_never_panic_or_grow() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut x: u32 = 12345;
        for i in 0..20_000u64 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let len = (x >> 24) as usize % 400 + 1;
            jb.push(x as u16, x.rotate_left(7), &vec![x as u8; len], ms(i));
            while jb.pop(ms(i)).is_some() {}
            let _ = jb.deadline();
            assert!(jb.depth_frames() <= jb.config().capacity_frames as u64);
        }
        let _ = (jb.jitter(), jb.hold(), jb.stats());
    }
}
