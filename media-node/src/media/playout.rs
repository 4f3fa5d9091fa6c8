//! The agent-to-caller playout queue of one call.
//!
//! The agent sends μ-law audio in chunks of any length, faster than real time, interleaved with
//! named marks. The queue holds the bytes and cuts them into 160-byte (20 ms) frames, one per
//! tick; when it is empty the frame is μ-law silence, so the outgoing RTP stream never has gaps.
//! A mark is completed once every byte queued before it has been taken for playout, and then
//! waits in a "done" list for the bridge to echo it to the agent (Twilio Media Streams
//! semantics). `clear` (barge-in) drops all queued audio at once and completes every pending mark.
//!
//! The queue is bounded in bytes and in marks (pending plus completed-but-not-yet-echoed);
//! audio beyond the bound is dropped and counted, a mark beyond it is refused (the caller
//! counts it). Taking frames never allocates; queueing audio only grows the ring when a burst
//! exceeds what it has held before, and a ring grown by a long burst is given back once it has
//! drained (mark names are the only other allocation, once per mark).

use std::collections::VecDeque;

/// Bytes per 20 ms frame of 8 kHz μ-law.
pub const FRAME_BYTES: usize = 160;
/// μ-law silence.
pub const ULAW_SILENCE: u8 = 0xFF;
/// Ring capacity reserved up front: a few frames, which is all a real-time agent needs; an
/// agent ahead of real time grows the ring (amortised doubling) up to the bound.
const INITIAL_BYTES: usize = FRAME_BYTES * 4;
/// A drained ring is shrunk back to this (one second) when it grew past
/// [`SHRINK_FACTOR`] times it.
const KEEP_BYTES: usize = 8000;
/// Default bound: two minutes of audio.
pub const DEFAULT_MAX_BYTES: usize = 8000 * 120;
/// Default bound on marks held (pending and completed-but-not-taken). Agents mark utterances
/// or TTS chunks, not frames: at one mark per 100 ms chunk this covers 100 s of queued audio,
/// most of [`DEFAULT_MAX_BYTES`], while capping what an agent can make a call hold at about
/// 1,000 × (name + 40 bytes).
pub const DEFAULT_MAX_MARKS: usize = 1000;
/// A drained ring larger than this many times [`KEEP_BYTES`] is shrunk back.
const SHRINK_FACTOR: usize = 4;

/// Counters of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlayoutStats {
    /// Frames that carried agent audio (fully or partly).
    pub audio_frames: u64,
    /// Frames of pure silence (nothing queued).
    pub silence_frames: u64,
    /// Frames where the queue ran out mid-frame (padded with silence): an underrun while the
    /// agent was talking.
    pub underruns: u64,
    /// Bytes of agent audio dropped because the queue was full.
    pub overflow_bytes: u64,
    /// Bytes dropped by `clear`.
    pub cleared_bytes: u64,
    /// Marks completed.
    pub marks_completed: u64,
    /// Marks refused because the queue held [`PlayoutQueue::max_marks`] already.
    pub marks_refused: u64,
}

/// What one frame held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameFill {
    /// Bytes of agent audio in the frame (the rest is silence).
    pub audio_bytes: usize,
}

/// The per-call playout queue. See the module documentation.
#[derive(Debug)]
pub struct PlayoutQueue {
    audio: VecDeque<u8>,
    max_bytes: usize,
    max_marks: usize,
    /// Total bytes ever queued (accepted) and ever taken or cleared: positions in one stream.
    queued_total: u64,
    taken_total: u64,
    /// Pending marks and the stream position they wait for.
    pending: VecDeque<(u64, String)>,
    done: VecDeque<String>,
    stats: PlayoutStats,
}

impl Default for PlayoutQueue {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BYTES)
    }
}

impl PlayoutQueue {
    /// A queue holding at most `max_bytes` of audio (at least one frame).
    pub fn new(max_bytes: usize) -> Self {
        let max_bytes = max_bytes.max(FRAME_BYTES);
        PlayoutQueue {
            // Room for a few frames up front; a long burst grows the ring (amortised), bounded
            // by `max_bytes`, rather than reserving the maximum for every call.
            audio: VecDeque::with_capacity(max_bytes.min(INITIAL_BYTES)),
            max_bytes,
            max_marks: DEFAULT_MAX_MARKS,
            queued_total: 0,
            taken_total: 0,
            pending: VecDeque::new(),
            done: VecDeque::new(),
            stats: PlayoutStats::default(),
        }
    }

    /// Sets the bound on marks held (at least one).
    pub fn set_max_marks(&mut self, max_marks: usize) {
        self.max_marks = max_marks.max(1);
    }

    /// Queues agent audio; returns how many bytes were accepted (the rest overflowed).
    pub fn push_audio(&mut self, bytes: &[u8]) -> usize {
        if self.audio.is_empty() {
            self.shrink_if_drained();
        }
        let room = self.max_bytes.saturating_sub(self.audio.len());
        let n = bytes.len().min(room);
        self.audio.extend(&bytes[..n]);
        self.queued_total += n as u64;
        self.stats.overflow_bytes += (bytes.len() - n) as u64;
        n
    }

    /// Gives back a ring that a long burst grew, once it has drained. Called from the
    /// agent's side (queueing, clear), never from the per-frame path.
    fn shrink_if_drained(&mut self) {
        let keep = self.max_bytes.min(KEEP_BYTES);
        if self.audio.is_empty() && self.audio.capacity() > keep * SHRINK_FACTOR {
            self.audio.shrink_to(keep);
        }
    }

    /// Queues a mark after the audio queued so far. With nothing queued it completes at once.
    /// Returns false (and counts it) when the queue already holds
    /// [`PlayoutQueue::max_marks`] marks: the mark is dropped and will not be echoed.
    pub fn push_mark(&mut self, name: impl Into<String>) -> bool {
        if self.pending.len() + self.done.len() >= self.max_marks {
            self.stats.marks_refused += 1;
            return false;
        }
        let name = name.into();
        if self.queued_total == self.taken_total && self.pending.is_empty() {
            self.stats.marks_completed += 1;
            self.done.push_back(name);
        } else {
            self.pending.push_back((self.queued_total, name));
        }
        true
    }

    /// Fills `out` with the next 20 ms frame: queued audio, padded with silence when the queue
    /// runs short. Marks whose audio has now all been taken move to the done list.
    pub fn next_frame(&mut self, out: &mut [u8; FRAME_BYTES]) -> FrameFill {
        let n = self.audio.len().min(FRAME_BYTES);
        let (a, b) = self.audio.as_slices();
        let from_a = n.min(a.len());
        out[..from_a].copy_from_slice(&a[..from_a]);
        out[from_a..n].copy_from_slice(&b[..n - from_a]);
        out[n..].fill(ULAW_SILENCE);
        self.audio.drain(..n);
        self.taken_total += n as u64;
        if n == 0 {
            self.stats.silence_frames += 1;
        } else {
            self.stats.audio_frames += 1;
            if n < FRAME_BYTES {
                self.stats.underruns += 1;
            }
        }
        self.complete_marks();
        FrameFill { audio_bytes: n }
    }

    fn complete_marks(&mut self) {
        while let Some((pos, _)) = self.pending.front() {
            if *pos > self.taken_total {
                break;
            }
            if let Some((_, name)) = self.pending.pop_front() {
                self.stats.marks_completed += 1;
                self.done.push_back(name);
            }
        }
    }

    /// Takes the next completed mark, oldest first.
    pub fn pop_done_mark(&mut self) -> Option<String> {
        self.done.pop_front()
    }

    /// Barge-in: drops all queued audio at once and returns every mark not yet handed out, in
    /// order (completed-but-untaken marks first, then the pending ones, which count as completed
    /// because their audio will never play).
    pub fn clear(&mut self) -> Vec<String> {
        self.stats.cleared_bytes += self.audio.len() as u64;
        self.taken_total += self.audio.len() as u64;
        self.audio.clear();
        self.shrink_if_drained();
        let mut marks: Vec<String> = self.done.drain(..).collect();
        self.stats.marks_completed += self.pending.len() as u64;
        marks.extend(self.pending.drain(..).map(|(_, name)| name));
        marks
    }

    /// Bytes of audio queued.
    pub fn queued_bytes(&self) -> usize {
        self.audio.len()
    }

    #[cfg(test)]
    /// Queued audio as a duration at 8 kHz.
    pub fn queued_duration(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.audio.len() as u64 * 125)
    }

    /// Completed marks not yet taken with [`PlayoutQueue::pop_done_mark`].
    pub fn done_marks(&self) -> usize {
        self.done.len()
    }

    #[cfg(test)]
    /// Marks waiting for their audio to play.
    pub fn pending_marks(&self) -> usize {
        self.pending.len()
    }

    #[cfg(test)]
    /// True when no audio is queued and no mark is pending or waiting to be taken.
    pub fn is_idle(&self) -> bool {
        self.audio.is_empty() && self.pending.is_empty() && self.done.is_empty()
    }

    #[cfg(test)]
    /// Counters.
    pub fn stats(&self) -> PlayoutStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(q: &mut PlayoutQueue) -> ([u8; FRAME_BYTES], usize) {
        let mut out = [0u8; FRAME_BYTES];
        let f = q.next_frame(&mut out);
        (out, f.audio_bytes)
    }

    #[test]
    fn empty_queue_plays_silence() {
        let mut q = PlayoutQueue::default();
        let (f, n) = frame(&mut q);
        assert_eq!(n, 0);
        assert_eq!(f, [ULAW_SILENCE; FRAME_BYTES]);
        assert_eq!(q.stats().silence_frames, 1);
        assert!(q.is_idle());
    }

    #[test]
    fn odd_chunks_are_cut_into_frames_in_order() {
        let mut q = PlayoutQueue::default();
        let audio: Vec<u8> = (0..400u32).map(|i| (i % 251) as u8).collect();
        // Chunks that do not line up with frames.
        q.push_audio(&audio[..7]);
        q.push_audio(&audio[7..333]);
        q.push_audio(&audio[333..]);
        let (f1, n1) = frame(&mut q);
        let (f2, n2) = frame(&mut q);
        let (f3, n3) = frame(&mut q);
        assert_eq!((n1, n2, n3), (160, 160, 80));
        assert_eq!(&f1[..], &audio[..160]);
        assert_eq!(&f2[..], &audio[160..320]);
        assert_eq!(&f3[..80], &audio[320..]);
        assert_eq!(&f3[80..], &[ULAW_SILENCE; 80]);
        assert_eq!(q.stats().underruns, 1);
        assert_eq!(q.stats().audio_frames, 3);
    }

    #[test]
    fn marks_complete_when_their_audio_has_played() {
        let mut q = PlayoutQueue::default();
        q.push_audio(&[1; 200]);
        q.push_mark("a");
        q.push_audio(&[2; 160]);
        q.push_mark("b");
        q.push_mark("c");
        assert_eq!(q.pending_marks(), 3);
        frame(&mut q); // bytes 0..160
        assert_eq!(q.pop_done_mark(), None);
        frame(&mut q); // bytes 160..320: includes the end of the first chunk
        assert_eq!(q.pop_done_mark().as_deref(), Some("a"));
        assert_eq!(q.pop_done_mark(), None);
        frame(&mut q); // bytes 320..360
        assert_eq!(q.pop_done_mark().as_deref(), Some("b"));
        assert_eq!(q.pop_done_mark().as_deref(), Some("c"));
        assert!(q.is_idle());
    }

    #[test]
    fn mark_with_nothing_queued_completes_at_once() {
        let mut q = PlayoutQueue::default();
        q.push_mark("now");
        assert_eq!(q.pop_done_mark().as_deref(), Some("now"));
        // But a mark behind a pending mark waits its turn.
        q.push_audio(&[1; 10]);
        q.push_mark("x");
        frame(&mut q);
        q.push_mark("y");
        assert_eq!(q.pop_done_mark().as_deref(), Some("x"));
        assert_eq!(q.pop_done_mark().as_deref(), Some("y"));
    }

    #[test]
    fn clear_drops_audio_and_returns_marks_in_order() {
        let mut q = PlayoutQueue::default();
        q.push_audio(&[1; 100]);
        q.push_mark("first");
        frame(&mut q); // completes "first" but it is not taken yet
        q.push_audio(&[1; 1000]);
        q.push_mark("second");
        q.push_audio(&[1; 1000]);
        q.push_mark("third");
        assert_eq!(q.clear(), vec!["first", "second", "third"]);
        assert_eq!(q.queued_bytes(), 0);
        assert_eq!(q.stats().cleared_bytes, 2000);
        let (f, n) = frame(&mut q);
        assert_eq!(n, 0);
        assert_eq!(f, [ULAW_SILENCE; FRAME_BYTES]);
        // Marks after a clear behave normally.
        q.push_audio(&[3; 160]);
        q.push_mark("after");
        assert_eq!(q.pop_done_mark(), None);
        frame(&mut q);
        assert_eq!(q.pop_done_mark().as_deref(), Some("after"));
        assert!(q.clear().is_empty());
    }

    #[test]
    fn bounded_with_counted_overflow() {
        let mut q = PlayoutQueue::new(320);
        assert_eq!(q.push_audio(&[1; 300]), 300);
        assert_eq!(q.push_audio(&[2; 100]), 20);
        assert_eq!(q.stats().overflow_bytes, 80);
        assert_eq!(q.queued_bytes(), 320);
        q.push_mark("m");
        frame(&mut q);
        frame(&mut q);
        assert_eq!(q.pop_done_mark().as_deref(), Some("m"));
        assert_eq!(q.queued_duration(), std::time::Duration::ZERO);
        // Space frees up as frames play.
        assert_eq!(q.push_audio(&[1; 160]), 160);
    }

    #[test]
    fn marks_are_bounded_and_refusals_counted() {
        let mut q = PlayoutQueue::default();
        q.set_max_marks(3);
        q.push_audio(&[1; 400]);
        assert!(q.push_mark("a"));
        assert!(q.push_mark("b"));
        assert!(q.push_mark("c"));
        assert!(!q.push_mark("d"), "a fourth mark is refused");
        assert_eq!(q.pending_marks(), 3);
        assert_eq!(q.stats().marks_refused, 1);
        // Completed marks still count until they are taken.
        frame(&mut q);
        frame(&mut q);
        frame(&mut q);
        assert_eq!(q.done_marks(), 3);
        assert!(!q.push_mark("e"), "done marks not yet echoed count too");
        assert_eq!(q.pop_done_mark().as_deref(), Some("a"));
        assert!(q.push_mark("f"), "room again once one was taken");
        assert_eq!(q.stats().marks_refused, 2);
        // The default bound.
        let mut q = PlayoutQueue::default();
        q.push_audio(&[1; 10]);
        let accepted = (0..DEFAULT_MAX_MARKS + 50)
            .filter(|i| q.push_mark(format!("m{i}")))
            .count();
        assert_eq!(accepted, DEFAULT_MAX_MARKS);
        assert_eq!(q.stats().marks_refused, 50);
    }

    #[test]
    fn a_ring_grown_by_a_burst_is_given_back_once_drained() {
        let mut q = PlayoutQueue::default();
        let base = q.audio.capacity();
        q.push_audio(&vec![1; DEFAULT_MAX_BYTES]);
        assert!(q.audio.capacity() >= DEFAULT_MAX_BYTES);
        q.clear();
        assert!(
            q.audio.capacity() <= KEEP_BYTES * SHRINK_FACTOR,
            "cleared ring shrunk to {}",
            q.audio.capacity()
        );
        // Drained by playout, shrunk on the next push.
        q.push_audio(&vec![2; DEFAULT_MAX_BYTES / 2]);
        while q.queued_bytes() > 0 {
            frame(&mut q);
        }
        q.push_audio(&[3; 160]);
        assert!(q.audio.capacity() <= KEEP_BYTES * SHRINK_FACTOR);
        assert!(base <= INITIAL_BYTES * SHRINK_FACTOR);
        let (f, n) = frame(&mut q);
        assert_eq!((n, f), (160, [3u8; FRAME_BYTES]));
    }

    #[test]
    fn ring_wraparound_keeps_bytes_in_order() {
        let mut q = PlayoutQueue::new(400);
        let mut next = 0u8;
        let mut expect = 0u8;
        for _ in 0..50 {
            let chunk: Vec<u8> = (0..130)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            q.push_audio(&chunk);
            let (f, n) = frame(&mut q);
            for &b in &f[..n] {
                expect = expect.wrapping_add(1);
                assert_eq!(b, expect);
            }
        }
    }
}
