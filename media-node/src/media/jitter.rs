//! An adaptive jitter buffer for G.711 audio on its way to the agent.
//!
//! Packets go in by RTP timestamp (sequence numbers only feed the reorder statistics): they are
//! reordered, duplicates and packets whose time has already been played are dropped, and the
//! payload bytes are placed at their timestamp so any packetisation (10, 20, 30 ms) ends up in
//! fixed frames. Frames come out once per tick (20 ms) through [`JitterBuffer::next_frame`].
//!
//! Delay: playout (re)starts after a delay that follows the measured interarrival jitter
//! (RFC 3550 A.8 estimator): `min_delay + 3 x jitter`, rounded up to whole frames and clamped to
//! `[min_delay, max_delay]`. The delay is chosen whenever playout starts: at the beginning and
//! after every underrun (the buffer ran dry), so a path that becomes jittery gets a longer delay
//! at its next underrun. When the buffer holds clearly more than the target (a burst), one frame
//! per tick is dropped until it is back near the target, so latency does not grow.
//!
//! Loss: a missing frame with later audio behind it is reported as [`Playout::Lost`]; the caller
//! decides what to send (the media node sends a frame of silence so the agent's stream keeps its
//! 20 ms pace). An empty buffer reports [`Playout::Buffering`] (nothing to play yet, or the
//! sender went quiet); callers may send silence or nothing.
//!
//! Time is an explicit `Duration` since any fixed epoch: no clocks are read here.
//!
//! Storage is allocated once at construction; inserting and playing never allocate.

use std::time::Duration;

/// Tuning of a [`JitterBuffer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// Bytes (= samples for G.711) per output frame: 160 for 20 ms at 8 kHz.
    pub frame_samples: u32,
    /// Sample rate (8000 for G.711).
    pub clock_rate: u32,
    /// Smallest playout delay.
    pub min_delay: Duration,
    /// Largest playout delay.
    pub max_delay: Duration,
    /// Frames the buffer can hold; packets further ahead than this force a resync.
    pub capacity_frames: usize,
    /// Byte used for parts of a frame that were never received (0xFF is μ-law silence).
    pub silence: u8,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            frame_samples: 160,
            clock_rate: 8000,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            capacity_frames: 64,
            silence: 0xFF,
        }
    }
}

/// What to play this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Playout<'a> {
    /// A frame of audio (`frame_samples` bytes). Parts never received hold the silence byte.
    Frame(&'a [u8]),
    /// This frame was lost (later audio exists): substitute silence or conceal.
    Lost,
    /// Nothing to play: not started yet, or ran dry and is waiting to restart.
    Buffering,
}

/// Counters since the buffer was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JitterStats {
    /// Packets accepted into the buffer.
    pub packets: u64,
    /// Packets dropped because they were exact duplicates.
    pub duplicates: u64,
    /// Packets (or parts) dropped because their time had already been played.
    pub late: u64,
    /// Packets that arrived with a lower sequence number than one before them.
    pub reordered: u64,
    /// Frames reported lost.
    pub lost_frames: u64,
    /// Frames played.
    pub played_frames: u64,
    /// Times the buffer ran dry while playing.
    pub underruns: u64,
    /// Frames dropped to bring latency back to the target.
    pub dropped_for_latency: u64,
    /// Times the timestamp jumped so far that the buffer restarted.
    pub resyncs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No packet yet, or ran dry: waiting for `start_at` with audio present.
    Buffering {
        start_at: Option<Duration>,
    },
    Playing,
}

/// The adaptive jitter buffer for one stream. See the module documentation.
#[derive(Debug)]
pub struct JitterBuffer {
    cfg: JitterConfig,
    frame: usize,
    /// Ring of frames; slot i holds absolute frame index `slot_index[i]` when `filled[i] > 0`.
    data: Box<[u8]>,
    slot_index: Box<[u64]>,
    filled: Box<[u16]>,
    state: State,
    /// Absolute frame index of the next frame to play.
    head: u64,
    /// Highest absolute frame index holding audio.
    newest: Option<u64>,
    /// Index after the last frame played or skipped; earlier audio is late. None before the
    /// first frame is played (and after a resync).
    floor: Option<u64>,
    /// Highest extended timestamp seen and its 32-bit value (for unwrapping).
    ext_high: Option<(u64, u32)>,
    last_seq: Option<u16>,
    transit: Option<i64>,
    /// Jitter estimate in microseconds, scaled by 16 (A.8 integer form).
    jitter_q4_us: u64,
    target: Duration,
    stats: JitterStats,
}

/// Extended timestamps start here so that reordered packets before the first one stay positive.
const EXT_ORIGIN: u64 = 1 << 40;

impl JitterBuffer {
    /// A buffer with the given tuning. `capacity_frames` is raised to cover `max_delay` plus
    /// headroom if it is too small.
    pub fn new(mut cfg: JitterConfig) -> Self {
        cfg.frame_samples = cfg.frame_samples.clamp(1, u16::MAX as u32);
        cfg.clock_rate = cfg.clock_rate.max(1);
        if cfg.max_delay < cfg.min_delay {
            cfg.max_delay = cfg.min_delay;
        }
        let frame = cfg.frame_samples as usize;
        let frame_time = frame_duration(&cfg);
        let needed = (cfg.max_delay.as_micros() / frame_time.as_micros().max(1)) as usize + 8;
        cfg.capacity_frames = cfg.capacity_frames.max(needed);
        let cap = cfg.capacity_frames;
        JitterBuffer {
            frame,
            data: vec![cfg.silence; cap * frame].into_boxed_slice(),
            slot_index: vec![0; cap].into_boxed_slice(),
            filled: vec![0; cap].into_boxed_slice(),
            state: State::Buffering { start_at: None },
            head: 0,
            newest: None,
            floor: None,
            ext_high: None,
            last_seq: None,
            transit: None,
            jitter_q4_us: 0,
            target: cfg.min_delay,
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

    /// Current interarrival jitter estimate.
    pub fn jitter(&self) -> Duration {
        Duration::from_micros(self.jitter_q4_us >> 4)
    }

    /// The playout delay used at the last (re)start, or that the next start would use.
    pub fn target_delay(&self) -> Duration {
        self.target
    }

    /// Frames buffered from the play position to the newest audio (0 when empty).
    pub fn depth_frames(&self) -> u64 {
        match self.newest {
            Some(n) if n >= self.head => n - self.head + 1,
            _ => 0,
        }
    }

    /// True while playing (not buffering).
    pub fn is_playing(&self) -> bool {
        self.state == State::Playing
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
                let e = (high as i64 + delta) as u64;
                if e > high {
                    self.ext_high = Some((e, ts));
                }
                e
            }
        }
    }

    fn update_jitter(&mut self, ext_ts: u64, now: Duration) {
        let ts_us = (ext_ts as u128 * 1_000_000 / self.cfg.clock_rate as u128) as i64;
        let transit = now.as_micros() as i64 - ts_us;
        if let Some(prev) = self.transit {
            let d = (transit - prev).unsigned_abs();
            self.jitter_q4_us = self.jitter_q4_us + d - ((self.jitter_q4_us + 8) >> 4);
        }
        self.transit = Some(transit);
    }

    fn compute_target(&self) -> Duration {
        let frame_us = frame_duration(&self.cfg).as_micros().max(1) as u64;
        let want = self.cfg.min_delay.as_micros() as u64 + 3 * (self.jitter_q4_us >> 4);
        let rounded = want.div_ceil(frame_us) * frame_us;
        Duration::from_micros(rounded)
            .max(self.cfg.min_delay)
            .min(self.cfg.max_delay)
    }

    fn clear(&mut self) {
        self.filled.fill(0);
        self.newest = None;
    }

    /// Adds one packet: its sequence number, RTP timestamp and payload, received at `now`.
    pub fn push(&mut self, seq: u16, timestamp: u32, payload: &[u8], now: Duration) {
        if payload.is_empty() {
            return;
        }
        if let Some(last) = self.last_seq {
            if (seq.wrapping_sub(last) as i16) < 0 {
                self.stats.reordered += 1;
            } else {
                self.last_seq = Some(seq);
            }
        } else {
            self.last_seq = Some(seq);
        }
        let mut ext = self.extend(timestamp);
        let fs = self.cfg.frame_samples as u64;
        let cap = self.cfg.capacity_frames as u64;
        let mut first_index = ext / fs;
        let mut last_index = (ext + payload.len() as u64 - 1) / fs;

        // Is this packet anywhere near the buffer's window? If not, the sender jumped (restart,
        // long silence, clock change): start over from this packet.
        if self.newest.is_some() || self.floor.is_some() {
            let far_ahead = last_index >= self.head + cap;
            let far_behind = first_index + cap < self.head;
            if far_ahead || far_behind {
                self.stats.resyncs += 1;
                self.clear();
                self.state = State::Buffering { start_at: None };
                self.floor = None;
                self.transit = None;
                // New timestamp basis: frames follow the restarted sender's grid.
                self.ext_high = None;
                ext = self.extend(timestamp);
                first_index = ext / fs;
                last_index = (ext + payload.len() as u64 - 1) / fs;
                self.head = first_index;
            }
        } else {
            self.head = first_index;
        }
        let floor = self.floor.unwrap_or(0);
        if self.floor.is_some() && last_index < floor {
            // Its time has been played already.
            self.stats.late += 1;
            return;
        }
        match self.state {
            State::Buffering { start_at: None } => {
                // First audio of a (re)start: the window begins here.
                self.head = first_index.max(floor);
                if self.floor.is_some() {
                    // The silence or stall before a restart says nothing about path jitter.
                    self.transit = None;
                }
            }
            State::Buffering { .. } if first_index < self.head => {
                // Reordered before the earliest packet while still buffering: make room in front.
                let span = self.newest.map_or(0, |n| n.saturating_sub(first_index));
                if span < cap {
                    self.head = first_index.max(floor);
                }
            }
            _ => {}
        }

        self.update_jitter(ext, now);
        let mut accepted = false;
        let mut duplicate = true;
        let mut pos = ext;
        let mut rest = payload;
        while !rest.is_empty() {
            let index = pos / fs;
            let offset = (pos % fs) as usize;
            let n = (self.frame - offset).min(rest.len());
            if index >= self.head && index < self.head + cap {
                let slot = (index % cap) as usize;
                if self.filled[slot] == 0 || self.slot_index[slot] != index {
                    // Fresh slot (or a stale one from a previous lap): reset to silence.
                    self.data[slot * self.frame..(slot + 1) * self.frame].fill(self.cfg.silence);
                    self.slot_index[slot] = index;
                    self.filled[slot] = 0;
                }
                let dst =
                    &mut self.data[slot * self.frame + offset..slot * self.frame + offset + n];
                if self.filled[slot] == 0 || dst.iter().all(|&b| b == self.cfg.silence) {
                    duplicate = false;
                }
                dst.copy_from_slice(&rest[..n]);
                self.filled[slot] = self.filled[slot].saturating_add(n as u16);
                self.newest = Some(self.newest.map_or(index, |m| m.max(index)));
                accepted = true;
            }
            pos += n as u64;
            rest = &rest[n..];
        }
        if !accepted {
            self.stats.late += 1;
            return;
        }
        if duplicate {
            // Every byte landed where identical audio already was: a retransmission.
            self.stats.duplicates += 1;
            return;
        }
        self.stats.packets += 1;
        if let State::Buffering { start_at: None } = self.state {
            self.target = self.compute_target();
            self.state = State::Buffering {
                start_at: Some(now + self.target),
            };
        }
    }

    fn slot_has(&self, index: u64) -> Option<usize> {
        let slot = (index % self.cfg.capacity_frames as u64) as usize;
        (self.filled[slot] > 0 && self.slot_index[slot] == index).then_some(slot)
    }

    /// The frame to play at `now` (call once per 20 ms tick).
    pub fn next_frame(&mut self, now: Duration) -> Playout<'_> {
        if let State::Buffering { start_at } = self.state {
            let Some(newest) = self.newest else {
                return Playout::Buffering;
            };
            let target_frames =
                (self.target.as_micros() / frame_duration(&self.cfg).as_micros().max(1)) as u64;
            let deep_enough = newest >= self.head + target_frames.max(1);
            if !(start_at.is_some_and(|t| now >= t) || deep_enough) {
                return Playout::Buffering;
            }
            // Start at the earliest audio we hold (skipping a silent stretch before it).
            while self.head <= newest && self.slot_has(self.head).is_none() {
                self.head += 1;
            }
            self.state = State::Playing;
        }

        let Some(newest) = self.newest.filter(|&n| n >= self.head) else {
            // Ran dry: wait for audio again, with a delay chosen from the current jitter.
            self.stats.underruns += 1;
            self.state = State::Buffering { start_at: None };
            self.newest = None;
            return Playout::Buffering;
        };

        // Keep latency near the target: drop one old frame per tick while clearly too deep.
        let frame_us = frame_duration(&self.cfg).as_micros().max(1) as u64;
        let target_frames = (self.target.as_micros() as u64).div_ceil(frame_us);
        let depth = newest - self.head + 1;
        if depth > target_frames + (target_frames / 2).max(2) {
            if let Some(slot) = self.slot_has(self.head) {
                self.filled[slot] = 0;
            }
            self.head += 1;
            self.stats.dropped_for_latency += 1;
        }

        let index = self.head;
        self.head += 1;
        self.floor = Some(self.head);
        match self.slot_has(index) {
            Some(slot) => {
                self.filled[slot] = 0;
                self.stats.played_frames += 1;
                Playout::Frame(&self.data[slot * self.frame..(slot + 1) * self.frame])
            }
            None => {
                self.stats.lost_frames += 1;
                Playout::Lost
            }
        }
    }
}

fn frame_duration(cfg: &JitterConfig) -> Duration {
    Duration::from_micros(cfg.frame_samples as u64 * 1_000_000 / cfg.clock_rate.max(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn frame(tag: u8) -> [u8; 160] {
        [tag; 160]
    }

    /// Plays ticks from `start` every 20 ms and records what came out: Some(tag), None for lost,
    /// and skips buffering ticks unless asked.
    fn tag_of(p: Playout<'_>) -> Option<Option<u8>> {
        match p {
            Playout::Frame(f) => Some(Some(f[0])),
            Playout::Lost => Some(None),
            Playout::Buffering => None,
        }
    }

    #[test]
    fn in_order_stream_plays_after_min_delay() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        assert_eq!(jb.next_frame(ms(0)), Playout::Buffering);
        let mut out = Vec::new();
        for i in 0..10u64 {
            jb.push(i as u16, 1000 + i as u32 * 160, &frame(i as u8), ms(i * 20));
            if let Some(t) = tag_of(jb.next_frame(ms(i * 20 + 10))) {
                out.push(t);
            }
        }
        // The first tick waits for the 20 ms start-up delay.
        assert_eq!(out, (0..9).map(Some).collect::<Vec<_>>());
        assert_eq!(jb.target_delay(), ms(20));
        assert_eq!(jb.stats().lost_frames, 0);
    }

    #[test]
    fn reorders_and_drops_duplicates() {
        // A 60 ms delay so that four buffered frames are not trimmed as a burst.
        let mut jb = JitterBuffer::new(JitterConfig {
            min_delay: ms(60),
            ..JitterConfig::default()
        });
        jb.push(1, 160, &frame(1), ms(0));
        jb.push(3, 480, &frame(3), ms(1));
        jb.push(2, 320, &frame(2), ms(2));
        jb.push(2, 320, &frame(2), ms(3));
        // A packet that belongs before the first one, while still buffering.
        jb.push(0, 0, &frame(0), ms(4));
        let out: Vec<_> = (0..4)
            .filter_map(|i| tag_of(jb.next_frame(ms(60 + 20 * i))))
            .collect();
        assert_eq!(out, vec![Some(0), Some(1), Some(2), Some(3)]);
        assert_eq!(jb.stats().dropped_for_latency, 0);
        let s = jb.stats();
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.reordered, 3, "2, the duplicate 2 and 0 came after 3");
        assert_eq!(s.packets, 4);
    }

    #[test]
    fn loss_gives_gap_marker_and_late_packets_are_dropped() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(0, 0, &frame(0), ms(0));
        jb.push(2, 320, &frame(2), ms(40));
        assert_eq!(tag_of(jb.next_frame(ms(40))), Some(Some(0)));
        assert_eq!(tag_of(jb.next_frame(ms(60))), Some(None), "frame 1 lost");
        // Frame 1 arrives after its time.
        jb.push(1, 160, &frame(1), ms(61));
        assert_eq!(jb.stats().late, 1);
        assert_eq!(tag_of(jb.next_frame(ms(80))), Some(Some(2)));
        assert_eq!(jb.stats().lost_frames, 1);
    }

    #[test]
    fn underrun_rebuffers_and_jitter_raises_the_delay() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        // Very jittery arrivals: alternately on time and 60 ms late.
        let mut seq = 0u16;
        for i in 0..50u64 {
            let late = if i % 2 == 1 { 60 } else { 0 };
            jb.push(seq, i as u32 * 160, &frame(i as u8), ms(i * 20 + late));
            seq += 1;
        }
        assert!(jb.jitter() >= ms(40), "jitter {:?}", jb.jitter());
        // Drain everything, forcing an underrun.
        let mut t = ms(2000);
        while jb.next_frame(t) != Playout::Buffering {
            t += ms(20);
        }
        let j = jb.jitter();
        jb.push(seq, 50 * 160, &frame(50), t);
        let target = jb.target_delay();
        assert!(target > ms(20), "target {target:?}");
        assert!(target <= ms(200));
        assert!(target >= ms(20) + 3 * j - ms(1));
        assert!(jb.stats().underruns >= 1);
        // Plays only once the new delay has passed.
        assert_eq!(jb.next_frame(t + target - ms(1)), Playout::Buffering);
        assert_eq!(tag_of(jb.next_frame(t + target)), Some(Some(50)));
    }

    #[test]
    fn delay_is_clamped_to_max() {
        let cfg = JitterConfig {
            max_delay: ms(100),
            ..JitterConfig::default()
        };
        let mut jb = JitterBuffer::new(cfg);
        for i in 0..40u64 {
            let late = if i % 2 == 1 { 300 } else { 0 };
            jb.push(i as u16, i as u32 * 160, &frame(1), ms(i * 20 + late));
        }
        let mut t = ms(3000);
        while jb.next_frame(t) != Playout::Buffering {
            t += ms(20);
        }
        jb.push(100, 100 * 160, &frame(2), t);
        assert_eq!(jb.target_delay(), ms(100));
    }

    #[test]
    fn burst_is_trimmed_back_towards_target() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(0, 0, &frame(0), ms(0));
        assert_eq!(tag_of(jb.next_frame(ms(20))), Some(Some(0)));
        // 10 packets arrive at once.
        for i in 1..=10u64 {
            jb.push(i as u16, i as u32 * 160, &frame(i as u8), ms(25));
        }
        let out: Vec<_> = (0..12)
            .filter_map(|i| tag_of(jb.next_frame(ms(40 + 20 * i))))
            .collect();
        let played: Vec<u8> = out.iter().flatten().copied().collect();
        assert!(played.len() < 10, "some frames dropped: {played:?}");
        assert!(jb.stats().dropped_for_latency > 0);
        assert_eq!(played.last(), Some(&10));
        assert!(played.windows(2).all(|w| w[0] < w[1]), "in order");
    }

    #[test]
    fn timestamp_wrap_is_seamless() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let start = u32::MAX - 159 - 160;
        let mut out = Vec::new();
        for i in 0..6u64 {
            jb.push(
                i as u16,
                start.wrapping_add(i as u32 * 160),
                &frame(i as u8),
                ms(i * 20),
            );
            if let Some(t) = tag_of(jb.next_frame(ms(i * 20 + 10))) {
                out.push(t);
            }
        }
        assert_eq!(out, (0..5).map(Some).collect::<Vec<_>>());
    }

    #[test]
    fn other_packetisations_are_reframed() {
        // 10 ms packets (80 bytes) fill 20 ms frames; 30 ms packets span frames.
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(0, 0, &[1u8; 80], ms(0));
        jb.push(1, 80, &[2u8; 80], ms(10));
        jb.push(2, 160, &[3u8; 240], ms(20));
        let Playout::Frame(f) = jb.next_frame(ms(20)) else {
            panic!("expected a frame");
        };
        assert_eq!(&f[..80], &[1u8; 80]);
        assert_eq!(&f[80..], &[2u8; 80]);
        let Playout::Frame(f) = jb.next_frame(ms(40)) else {
            panic!("expected a frame");
        };
        assert_eq!(f, &[3u8; 160]);
        let Playout::Frame(f) = jb.next_frame(ms(60)) else {
            panic!("expected a frame");
        };
        // Half of this frame came in; the rest is silence.
        assert_eq!(&f[..80], &[3u8; 80]);
        assert_eq!(&f[80..], &[0xFFu8; 80]);
    }

    #[test]
    fn large_jump_resyncs() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(0, 0, &frame(0), ms(0));
        assert_eq!(tag_of(jb.next_frame(ms(20))), Some(Some(0)));
        // The sender restarts its timestamp far away.
        jb.push(1, 3_000_000, &frame(9), ms(40));
        assert_eq!(jb.stats().resyncs, 1);
        assert_eq!(jb.next_frame(ms(41)), Playout::Buffering);
        assert_eq!(tag_of(jb.next_frame(ms(60))), Some(Some(9)));
        // A short silence (no packets, timestamp moves on) restarts without resync or gaps.
        let mut t = ms(80);
        while jb.next_frame(t) != Playout::Buffering {
            t += ms(20);
        }
        jb.push(2, 3_000_000 + 160 * 20, &frame(7), t);
        assert_eq!(tag_of(jb.next_frame(t + ms(20))), Some(Some(7)));
        assert_eq!(jb.stats().resyncs, 1);
    }
}
