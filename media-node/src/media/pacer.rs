//! When each agent-to-caller RTP packet leaves: the per-call pacing state machine.
//!
//! The outgoing stream carries one 20 ms frame per packet with timestamps 160 apart, always, so
//! the caller's jitter buffer sees a continuous stream. Within that rule each call keeps its own
//! phase:
//! - Silence (the agent has nothing queued) goes on the call's *grid*: the wall-clock instant
//!   at which the packet's timestamp is due, counted from the call's first packet.
//! - Audio that reaches an empty queue leaves at once, up to one frame ahead of the grid (the
//!   timestamp is continuous, so the packet is simply early; the lead is at most 20 ms).
//! - The audio behind it goes every 20 ms from that instant (a bursty agent is paced, not
//!   forwarded at its own speed). Audio that was waiting keeps that schedule exactly, however
//!   late a wake-up is (late frames are caught up, not carried forward), so an agent's queue
//!   only grows while the agent is ahead of real time. A frame that arrived after the previous
//!   one left (a real-time agent) may leave up to [`PACE_TOLERANCE`] early, and a frame the
//!   agent sent late moves the schedule to its arrival: the talkspurt follows the agent's own
//!   phase instead of locking in the lateness of its first frame.
//! - No audio frame leaves more than one frame ahead of its timestamp's real time. When the
//!   agent's audio stops, the next silence waits for the grid again (plus a small grace for an
//!   agent a little late), so the lead taken during the talkspurt is given back during
//!   silence, where it costs nothing: the stream never drifts from real time.
//! - A wake-up a little late sends the few silence frames it owes back to back; one more than
//!   [`MAX_CATCH_UP`] frames late (a stalled runtime) skips the older ones: the timestamp jumps
//!   with real time instead of a long burst of packets.
//!
//! Pure: time is an explicit `Duration` since any fixed epoch.

use std::time::Duration;

/// One frame.
pub const FRAME: Duration = Duration::from_millis(20);
/// How much earlier than its slot in the talkspurt a frame may leave, so that an agent streaming
/// in real time with a little jitter is forwarded on arrival.
pub const PACE_TOLERANCE: Duration = Duration::from_millis(2);
/// How long past the grid silence waits for an agent that is a little late mid-talkspurt.
pub const GRACE: Duration = Duration::from_millis(2);

/// How late a wake-up may come and still count as on time for a frame's schedule.
const TIMER_SLACK: Duration = Duration::from_millis(3);
/// Frames of silence a late wake-up still sends (back to back) before it skips older ones.
pub const MAX_CATCH_UP: u32 = 3;

/// What the pacer says about the next packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Send now. `skip_frames` frames of silence were missed first (advance the timestamp by
    /// that many frames before sending, without sending them).
    Send {
        /// Frames to skip before this packet.
        skip_frames: u32,
    },
    /// Nothing is due before this instant.
    At(Duration),
}

/// The pacing state of one outgoing stream. See the module documentation.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Grid instant of the next packet's timestamp; None before the first packet.
    grid: Option<Duration>,
    /// In a talkspurt: when its next frame is due on the talkspurt's own schedule (20 ms after
    /// the previous frame's slot).
    slot: Option<Duration>,
    /// Whether more audio was queued right after the previous packet left: that audio was
    /// waiting for its slot (the agent is ahead), so it goes exactly on the schedule.
    backlog: bool,
    /// How long past the grid silence waits for late audio mid-talkspurt ([`GRACE`]).
    grace: Duration,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            grid: None,
            slot: None,
            backlog: false,
            grace: GRACE,
        }
    }
}

impl Pacer {
    /// A pacer whose first packet leaves at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits up to `grace` past the grid for late audio mid-talkspurt before sending silence
    /// (for audio relayed from another line, whose jitter an agent's real-time stream does
    /// not have). The lead given back during silence still keeps the stream on real time.
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// The instant the next packet is due, given whether agent audio is queued.
    pub fn due(&self, audio_queued: bool) -> Duration {
        let Some(grid) = self.grid else {
            return Duration::ZERO;
        };
        let earliest = grid.saturating_sub(FRAME);
        match (audio_queued, self.slot) {
            // Reaching an empty queue: at once (never more than a frame ahead of the grid).
            (true, None) => earliest,
            // Waiting behind other audio: exactly on the talkspurt's schedule (a late wake-up
            // is caught up, not carried forward).
            (true, Some(slot)) if self.backlog => slot.max(earliest),
            // Arrived since the last frame left (a real-time agent): a little early is fine,
            // and the schedule follows the agent's own phase from there.
            (true, Some(slot)) => slot.saturating_sub(PACE_TOLERANCE).max(earliest),
            // The agent is late mid-talkspurt: wait for it until a little past its slot.
            (false, Some(slot)) => slot.max(grid) + self.grace,
            (false, None) => grid,
        }
    }

    /// What to do at `now`.
    pub fn poll(&self, now: Duration, audio_queued: bool) -> Next {
        let due = self.due(audio_queued);
        if now < due {
            return Next::At(due);
        }
        let skip_frames = match self.grid {
            // Only silence is skipped: queued audio is sent, late, not dropped. A wake-up a
            // little late sends the few frames it owes back to back (the caller's jitter
            // buffer absorbs that); beyond MAX_CATCH_UP the older ones are skipped.
            Some(grid) if !audio_queued && now >= grid + FRAME * MAX_CATCH_UP => {
                let owed = (now - grid).as_micros() / FRAME.as_micros() + 1;
                (owed - u128::from(MAX_CATCH_UP)).min(u32::MAX as u128) as u32
            }
            _ => 0,
        };
        Next::Send { skip_frames }
    }

    /// Records that a packet left at `now` after skipping `skip_frames`, carrying agent audio
    /// or not, and whether more audio is queued behind it.
    pub fn sent(&mut self, now: Duration, skip_frames: u32, audio: bool, backlog: bool) {
        let due = self.due(audio);
        let grid = self.grid.unwrap_or(now) + FRAME * skip_frames;
        self.slot = match (audio, self.slot) {
            (false, _) => None,
            // The first frame of a talkspurt sets its phase.
            (true, None) => Some(now + FRAME),
            // A frame that was waiting keeps the schedule, however late the wake-up was.
            (true, Some(slot)) if self.backlog => Some(slot + FRAME),
            // A frame that arrived after the previous one left: on time (or a wake-up a little
            // late) keeps the schedule from its due time; one the agent sent late moves the
            // phase to when it came.
            (true, Some(_)) if now <= due + TIMER_SLACK => Some(due + FRAME),
            (true, Some(_)) => Some(now + FRAME),
        };
        self.backlog = audio && backlog;
        self.grid = Some(grid + FRAME);
    }

    /// The stream paused (hold) and resumes at `now`: returns the frames to skip so that the
    /// timestamp has advanced with the time on hold; the next packet leaves at once.
    pub fn resume(&mut self, now: Duration) -> u32 {
        let skip = match self.grid {
            Some(grid) if now > grid => {
                ((now - grid).as_micros() / FRAME.as_micros()).min(u32::MAX as u128) as u32
            }
            _ => 0,
        };
        if let Some(grid) = self.grid.as_mut() {
            *grid += FRAME * skip;
            // Due now: the first packet after hold is not held back.
            *grid = (*grid).min(now);
        }
        self.slot = None;
        self.backlog = false;
        skip
    }

    #[cfg(test)]
    /// How far ahead of its timestamp's real time the next packet would leave if sent now
    /// (zero when on time or behind); at most one frame for audio.
    pub fn lead(&self, now: Duration) -> Duration {
        match self.grid {
            Some(g) => g.saturating_sub(now),
            None => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drives the pacer over `until` with audio frames arriving at `arrivals` (ms); returns
    /// (send time ms, audio?) per packet.
    fn run(arrivals: &[u64], until: u64) -> Vec<(u64, bool)> {
        let mut p = Pacer::new();
        let mut queue = 0usize;
        let mut next_arrival = 0;
        let mut out = Vec::new();
        let mut skipped = 0;
        for t in 0..until * 10 {
            // 0.1 ms steps.
            let now = Duration::from_micros(t * 100);
            while next_arrival < arrivals.len() && arrivals[next_arrival] * 10 <= t {
                queue += 1;
                next_arrival += 1;
            }
            if let Next::Send { skip_frames } = p.poll(now, queue > 0) {
                skipped += skip_frames;
                let audio = queue > 0;
                queue = queue.saturating_sub(1);
                p.sent(now, skip_frames, audio, queue > 0);
                out.push((t / 10, audio));
            }
        }
        assert_eq!(skipped, 0, "no wake-up was late");
        out
    }

    #[test]
    fn silence_runs_on_the_grid() {
        let out = run(&[], 200);
        let times: Vec<u64> = out.iter().map(|(t, _)| *t).collect();
        assert_eq!(times, (0..10).map(|k| k * 20).collect::<Vec<_>>());
    }

    #[test]
    fn audio_reaching_an_empty_queue_leaves_at_once_then_every_20_ms() {
        // A burst of five frames at 47 ms (silence went at 0, 20, 40).
        let out = run(&[47, 47, 47, 47, 47], 200);
        let audio: Vec<u64> = out.iter().filter(|(_, a)| *a).map(|(t, _)| *t).collect();
        assert_eq!(audio, vec![47, 67, 87, 107, 127]);
        let silence: Vec<u64> = out
            .iter()
            .filter(|(t, a)| !a && *t > 47)
            .map(|(t, _)| *t)
            .collect();
        // After the talkspurt silence returns to the grid (160, 180, ...): the 13 ms lead is
        // given back.
        assert_eq!(silence, vec![162, 180]);
    }

    #[test]
    fn a_real_time_agent_is_forwarded_on_arrival() {
        // Frames every 20 ms with ±1 ms jitter, starting at 33 ms.
        let arrivals: Vec<u64> = (0..20).map(|k| 33 + 20 * k + (k % 3)).collect();
        let out = run(&arrivals, 500);
        let audio: Vec<u64> = out.iter().filter(|(_, a)| *a).map(|(t, _)| *t).collect();
        assert_eq!(audio, arrivals, "each frame left when it arrived");
    }

    #[test]
    fn a_late_first_frame_does_not_hold_a_real_time_agent_back() {
        // Frames every 20 ms from 30 ms, but the first came 15 ms late.
        let mut arrivals: Vec<u64> = (0..40).map(|k| 30 + 20 * k).collect();
        arrivals[0] = 45;
        let out = run(&arrivals, 1000);
        let audio: Vec<u64> = out.iter().filter(|(_, a)| *a).map(|(t, _)| *t).collect();
        assert_eq!(audio.len(), 40);
        // The schedule moves back towards the agent's phase by the tolerance per frame, as far
        // as the one-frame lead allows (the first frame took the timestamp of 60 ms at 45 ms:
        // frame k carries 60 + 20 k and may leave from 40 + 20 k).
        assert!(audio[1] < 65 && audio[1] >= 50, "{audio:?}");
        for k in 10..40 {
            assert_eq!(audio[k], 40 + 20 * k as u64, "frame {k}: {audio:?}");
        }
    }

    #[test]
    fn a_bursty_agent_is_paced_at_real_time() {
        // 100 frames all at once: 2 s of audio.
        let out = run(&[10; 100], 3000);
        let audio: Vec<u64> = out.iter().filter(|(_, a)| *a).map(|(t, _)| *t).collect();
        assert_eq!(audio.len(), 100);
        assert_eq!(audio[0], 10);
        let span = audio[99] - audio[0];
        assert!((1978..=1982).contains(&span), "paced over ~2 s: {span}");
        assert!(audio.windows(2).all(|w| w[1] - w[0] >= 18));
    }

    #[test]
    fn late_wake_ups_do_not_make_paced_audio_drift() {
        let mut p = Pacer::new();
        p.sent(ms(0), 0, false, false);
        let mut now = ms(5);
        let mut sends = Vec::new();
        // 100 frames queued at 5 ms; every wake-up comes after the due time.
        for k in 0..100 {
            let due = match p.poll(now, true) {
                Next::Send { .. } => now,
                Next::At(t) => t,
            };
            // Mostly 1.5 ms late, sometimes 9 ms (a busy runtime).
            let late = if k % 7 == 3 { 9000 } else { 1500 };
            now = if k == 0 {
                due
            } else {
                due + Duration::from_micros(late)
            };
            assert!(matches!(p.poll(now, true), Next::Send { skip_frames: 0 }));
            p.sent(now, 0, true, k < 99);
            sends.push(now);
        }
        let span = sends[99] - sends[0];
        assert!(
            span <= ms(1982) && span >= ms(1978),
            "20 ms apart on average whatever the wake-up lateness: {span:?}"
        );
        // Silence afterwards is on the grid, nothing skipped.
        let t = p.due(false);
        assert!(matches!(p.poll(t, false), Next::Send { skip_frames: 0 }));
    }

    #[test]
    fn a_late_wake_skips_silence_not_audio() {
        let mut p = Pacer::new();
        p.sent(ms(0), 0, false, false);
        // The task was stalled until 95 ms: of the frames due at 20, 40, 60 and 80 the first
        // is skipped and the other three leave now, back to back.
        assert_eq!(p.poll(ms(95), false), Next::Send { skip_frames: 1 });
        p.sent(ms(95), 1, false, false);
        for _ in 0..2 {
            assert_eq!(p.poll(ms(95), false), Next::Send { skip_frames: 0 });
            p.sent(ms(95), 0, false, false);
        }
        assert_eq!(p.poll(ms(95), false), Next::At(ms(100)));
        // Up to MAX_CATCH_UP frames late, nothing is skipped.
        let mut p = Pacer::new();
        p.sent(ms(0), 0, false, false);
        assert_eq!(p.poll(ms(79), false), Next::Send { skip_frames: 0 });
        // Audio is never skipped.
        let mut p = Pacer::new();
        p.sent(ms(0), 0, true, false);
        assert_eq!(p.poll(ms(95), true), Next::Send { skip_frames: 0 });
    }

    #[test]
    fn resume_after_hold_advances_the_timestamp_and_sends_at_once() {
        let mut p = Pacer::new();
        p.sent(ms(0), 0, false, false);
        p.sent(ms(20), 0, false, false);
        // On hold from 20 ms to 1,030 ms: the timestamps of 49 frames (40..1,000 ms) are
        // skipped; the packet due at 1,020 ms leaves at once.
        let skip = p.resume(ms(1030));
        assert_eq!(skip, 49);
        assert_eq!(p.poll(ms(1030), false), Next::Send { skip_frames: 0 });
        p.sent(ms(1030), 0, false, false);
        assert_eq!(p.due(false), ms(1040));
    }

    #[test]
    fn lead_is_bounded_by_one_frame() {
        let mut p = Pacer::new();
        p.sent(ms(0), 0, false, false);
        // Audio right after a silence packet: 19 ms early at most.
        assert_eq!(p.poll(ms(1), true), Next::Send { skip_frames: 0 });
        assert_eq!(p.lead(ms(1)), ms(19));
        p.sent(ms(1), 0, true, false);
        assert_eq!(p.due(true), ms(20), "never more than a frame ahead");
    }
}
