//! RFC 4733 telephone-events: payload parse/build, a detector that reports each key press once,
//! and a generator of the packet sequence for sending a digit.
//!
//! On the wire an event is a run of packets that all carry the RTP timestamp of the event's start,
//! with a growing duration; the last packet has the E bit and is sent three times. Packets are
//! lost, reordered and retransmitted, so the detector keys events by (timestamp, event code),
//! reports the press on the first packet it sees, and ignores everything else about that event.

use std::time::Duration;

use thiserror::Error;

/// Length of a telephone-event payload.
pub const EVENT_PAYLOAD_LEN: usize = 4;
/// How many times the final (E bit) packet is sent (RFC 4733 2.5.1.4).
pub const END_REPEATS: usize = 3;
/// Default time without packets after which an event with no end packet is closed.
pub const DEFAULT_EVENT_TIMEOUT: Duration = Duration::from_millis(1000);

/// A malformed telephone-event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DtmfError {
    /// Fewer than 4 bytes.
    #[error("telephone-event payload too short: {0} bytes")]
    TooShort(usize),
}

/// A telephone-event payload (RFC 4733 2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code (0-9, 10 = *, 11 = #, 12-15 = A-D, 16 = flash, ...).
    pub event: u8,
    /// E bit: this is the end of the event.
    pub end: bool,
    /// Power level in -dBm0 (0..=63); only meaningful for DTMF.
    pub volume: u8,
    /// Duration so far in timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parses a payload. Bytes beyond the first four are ignored (the reserved R bit too).
    pub fn parse(payload: &[u8]) -> Result<Self, DtmfError> {
        if payload.len() < EVENT_PAYLOAD_LEN {
            return Err(DtmfError::TooShort(payload.len()));
        }
        Ok(TelephoneEvent {
            event: payload[0],
            end: payload[1] & 0x80 != 0,
            volume: payload[1] & 0x3F,
            duration: u16::from_be_bytes([payload[2], payload[3]]),
        })
    }

    /// The 4-byte payload (R bit zero, volume masked to 6 bits).
    pub fn to_bytes(&self) -> [u8; EVENT_PAYLOAD_LEN] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (if self.end { 0x80 } else { 0 }) | (self.volume & 0x3F),
            d[0],
            d[1],
        ]
    }

    /// The DTMF character of this event, if it is one of the 16 DTMF events.
    pub fn digit(&self) -> Option<char> {
        event_to_digit(self.event)
    }
}

const DIGITS: &[u8; 16] = b"0123456789*#ABCD";

/// DTMF character of an event code 0..=15.
pub fn event_to_digit(event: u8) -> Option<char> {
    DIGITS.get(event as usize).map(|&b| b as char)
}

/// Event code of a DTMF character (`0-9 * # A-D`, lowercase letters accepted).
pub fn digit_to_event(digit: char) -> Option<u8> {
    let up = digit.to_ascii_uppercase();
    DIGITS
        .iter()
        .position(|&b| b as char == up)
        .map(|p| p as u8)
}

/// A key press, reported once per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfPress {
    /// Event code.
    pub event: u8,
    /// The DTMF character, when the event is a DTMF digit.
    pub digit: Option<char>,
    /// RTP timestamp identifying the event.
    pub timestamp: u32,
    /// Volume of the first packet seen.
    pub volume: u8,
}

/// The end of an event, reported once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfRelease {
    /// Event code.
    pub event: u8,
    /// RTP timestamp identifying the event.
    pub timestamp: u32,
    /// Longest duration seen (timestamp units), summed over long-event segments.
    pub duration: u32,
    /// How the end was known.
    pub reason: ReleaseReason,
}

/// How the end of an event was known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// An E-bit packet arrived.
    EndPacket,
    /// A new event started before the end packet arrived.
    Superseded,
    /// No packet for the event within the timeout.
    Timeout,
}

#[derive(Debug, Clone, Copy)]
struct Current {
    event: u8,
    /// Timestamp of the first segment (identifies the press).
    first_timestamp: u32,
    /// Timestamp of the current segment (equal to `first_timestamp` unless the event is longer
    /// than the 16-bit duration field, RFC 4733 2.5.2.3).
    segment_timestamp: u32,
    /// Duration of earlier segments.
    previous_segments: u32,
    /// Longest duration seen in the current segment.
    duration: u16,
    ended: bool,
    last_seen: Duration,
}

/// Turns a stream of telephone-event packets into one press (and one release) per key press.
#[derive(Debug, Clone)]
pub struct DtmfDetector {
    timeout: Duration,
    current: Option<Current>,
    release: Option<DtmfRelease>,
}

impl Default for DtmfDetector {
    fn default() -> Self {
        Self::new(DEFAULT_EVENT_TIMEOUT)
    }
}

impl DtmfDetector {
    /// A detector that closes events with no end packet after `timeout` without packets.
    pub fn new(timeout: Duration) -> Self {
        DtmfDetector {
            timeout,
            current: None,
            release: None,
        }
    }

    /// Feeds one telephone-event packet (its RTP timestamp and payload) received at `now`.
    /// Returns the press when this packet starts a new event; duplicates, continuations,
    /// retransmitted end packets and packets of older events return `None`.
    pub fn on_packet(
        &mut self,
        timestamp: u32,
        payload: &[u8],
        now: Duration,
    ) -> Result<Option<DtmfPress>, DtmfError> {
        let ev = TelephoneEvent::parse(payload)?;
        if let Some(cur) = self.current.as_mut() {
            let same_segment = timestamp == cur.segment_timestamp && ev.event == cur.event;
            if same_segment {
                cur.last_seen = now;
                if !cur.ended {
                    cur.duration = cur.duration.max(ev.duration);
                    if ev.end {
                        cur.ended = true;
                        self.release = Some(release_of(cur, ReleaseReason::EndPacket));
                    }
                }
                return Ok(None);
            }
            // Serial-number comparison: a timestamp behind the current event is a late packet
            // of an earlier event (or of an earlier segment of this one).
            let ahead = timestamp.wrapping_sub(cur.segment_timestamp) as i32;
            if ahead < 0 {
                return Ok(None);
            }
            // A long event continues in a new segment whose timestamp is the old one plus the
            // old segment's full duration (RFC 4733 2.5.2.3).
            if ev.event == cur.event
                && !cur.ended
                && ahead as u32 == cur.duration as u32
                && cur.duration >= 0xFF00
            {
                // Saturating: a hostile peer can send segment after segment forever.
                cur.previous_segments = cur.previous_segments.saturating_add(cur.duration as u32);
                cur.segment_timestamp = timestamp;
                cur.duration = ev.duration;
                cur.last_seen = now;
                if ev.end {
                    cur.ended = true;
                    self.release = Some(release_of(cur, ReleaseReason::EndPacket));
                }
                return Ok(None);
            }
            if !cur.ended {
                self.release = Some(release_of(cur, ReleaseReason::Superseded));
            }
        }
        let cur = Current {
            event: ev.event,
            first_timestamp: timestamp,
            segment_timestamp: timestamp,
            previous_segments: 0,
            duration: ev.duration,
            ended: ev.end,
            last_seen: now,
        };
        if ev.end {
            // Only the end packets survived: still one press, then its release.
            self.release = Some(release_of(&cur, ReleaseReason::EndPacket));
        }
        self.current = Some(cur);
        Ok(Some(DtmfPress {
            event: ev.event,
            digit: ev.digit(),
            timestamp,
            volume: ev.volume,
        }))
    }

    /// Closes an event that has had no packet for the timeout. Call periodically (each tick).
    /// The release is then available from [`DtmfDetector::take_release`].
    pub fn poll(&mut self, now: Duration) {
        if let Some(cur) = self.current.as_mut()
            && !cur.ended
            && now.saturating_sub(cur.last_seen) >= self.timeout
        {
            cur.ended = true;
            self.release = Some(release_of(cur, ReleaseReason::Timeout));
        }
    }

    /// The most recent release not yet taken (a newer release replaces an untaken one).
    pub fn take_release(&mut self) -> Option<DtmfRelease> {
        self.release.take()
    }

    /// True while an event is in progress (started and not ended).
    pub fn in_progress(&self) -> bool {
        self.current.is_some_and(|c| !c.ended)
    }
}

fn release_of(cur: &Current, reason: ReleaseReason) -> DtmfRelease {
    DtmfRelease {
        event: cur.event,
        timestamp: cur.first_timestamp,
        duration: cur
            .previous_segments
            .saturating_add(u32::from(cur.duration)),
        reason,
    }
}

/// One packet to send for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    /// RTP marker bit (set on the first packet of the event only).
    pub marker: bool,
    /// RTP timestamp (the event's start for every packet).
    pub timestamp: u32,
    /// The payload.
    pub payload: [u8; EVENT_PAYLOAD_LEN],
}

/// Generates the packets for one event: one every `step` timestamp units with a growing
/// duration, then the final packet with the E bit sent [`END_REPEATS`] times. The caller sends
/// one packet per packetisation interval (the three end packets may go back to back or one per
/// interval) using the same SSRC and sequence space as the audio, with the telephone-event
/// payload type.
#[derive(Debug, Clone)]
pub struct EventGenerator {
    event: u8,
    volume: u8,
    timestamp: u32,
    total: u16,
    step: u16,
    sent_duration: u16,
    ends_sent: usize,
    first: bool,
}

impl EventGenerator {
    /// An event `event` starting at RTP timestamp `timestamp`, lasting `duration` and sent every
    /// `step` timestamp units (160 = 20 ms at 8 kHz). Durations are capped at 0xFFFF (this
    /// generator does not split long events). `volume` is in -dBm0 (10 is typical).
    pub fn new(event: u8, timestamp: u32, duration: u16, step: u16, volume: u8) -> Self {
        let step = step.max(1);
        EventGenerator {
            event,
            volume: volume & 0x3F,
            timestamp,
            total: duration.max(step),
            step,
            sent_duration: 0,
            ends_sent: 0,
            first: true,
        }
    }

    /// A DTMF digit with the default packetisation (20 ms at 8 kHz) and volume 10.
    pub fn digit(digit: char, timestamp: u32, duration: Duration) -> Option<Self> {
        let event = digit_to_event(digit)?;
        let units = (duration.as_millis() * 8).min(0xFFFF) as u16;
        Some(Self::new(event, timestamp, units, 160, 10))
    }

    /// The event's total duration in timestamp units (how far the audio clock moves).
    pub fn total_duration(&self) -> u16 {
        self.total
    }
}

impl Iterator for EventGenerator {
    type Item = EventPacket;
    fn next(&mut self) -> Option<EventPacket> {
        if self.ends_sent >= END_REPEATS {
            return None;
        }
        let marker = self.first;
        self.first = false;
        let end = if self.sent_duration < self.total {
            self.sent_duration = self.sent_duration.saturating_add(self.step).min(self.total);
            // The packet that reaches the full duration is already the first end packet.
            self.sent_duration == self.total
        } else {
            true
        };
        if end {
            self.ends_sent += 1;
        }
        let payload = TelephoneEvent {
            event: self.event,
            end,
            volume: self.volume,
            duration: self.sent_duration,
        }
        .to_bytes();
        Some(EventPacket {
            marker,
            timestamp: self.timestamp,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn pkt(event: u8, end: bool, duration: u16) -> [u8; 4] {
        TelephoneEvent {
            event,
            end,
            volume: 10,
            duration,
        }
        .to_bytes()
    }

    #[test]
    fn payload_round_trip_and_wire_format() {
        // RFC 4733 figure 1 layout: event, E|R|volume, duration.
        let bytes = [5u8, 0x8A, 0x03, 0x20];
        let ev = TelephoneEvent::parse(&bytes).expect("ok");
        assert_eq!(
            ev,
            TelephoneEvent {
                event: 5,
                end: true,
                volume: 10,
                duration: 800
            }
        );
        assert_eq!(ev.to_bytes(), bytes);
        assert_eq!(ev.digit(), Some('5'));
        // The R bit is ignored on input.
        let r = TelephoneEvent::parse(&[11, 0x4A, 0, 160]).expect("ok");
        assert!(!r.end);
        assert_eq!(r.volume, 10);
        assert_eq!(r.digit(), Some('#'));
        assert_eq!(
            TelephoneEvent::parse(&[1, 2, 3]),
            Err(DtmfError::TooShort(3))
        );
    }

    #[test]
    fn digit_mapping() {
        for (i, c) in "0123456789*#ABCD".chars().enumerate() {
            assert_eq!(digit_to_event(c), Some(i as u8));
            assert_eq!(event_to_digit(i as u8), Some(c));
        }
        assert_eq!(digit_to_event('a'), Some(12));
        assert_eq!(digit_to_event('x'), None);
        assert_eq!(event_to_digit(16), None);
    }

    #[test]
    fn one_press_per_event_with_triple_end_and_retransmissions() {
        let mut d = DtmfDetector::default();
        let ts = 8000;
        let press = d.on_packet(ts, &pkt(1, false, 160), ms(0)).expect("ok");
        assert_eq!(press.map(|p| p.digit), Some(Some('1')));
        assert!(d.in_progress());
        for (i, dur) in [320u16, 480, 640].iter().enumerate() {
            assert_eq!(
                d.on_packet(ts, &pkt(1, false, *dur), ms(20 * (i as u64 + 1)))
                    .expect("ok"),
                None
            );
        }
        // Three end packets, then a retransmission of one of them.
        for i in 0..4 {
            assert_eq!(
                d.on_packet(ts, &pkt(1, true, 800), ms(100 + i))
                    .expect("ok"),
                None
            );
        }
        let r = d.take_release().expect("released");
        assert_eq!(r.duration, 800);
        assert_eq!(r.reason, ReleaseReason::EndPacket);
        assert_eq!(d.take_release(), None, "released once");
        assert!(!d.in_progress());
        // A late, reordered mid-event packet after the end changes nothing.
        assert_eq!(
            d.on_packet(ts, &pkt(1, false, 480), ms(200)).expect("ok"),
            None
        );
        assert_eq!(d.take_release(), None);
    }

    #[test]
    fn same_digit_twice_is_two_presses() {
        let mut d = DtmfDetector::default();
        assert!(
            d.on_packet(1000, &pkt(5, false, 160), ms(0))
                .expect("ok")
                .is_some()
        );
        assert!(
            d.on_packet(1000, &pkt(5, true, 800), ms(100))
                .expect("ok")
                .is_none()
        );
        assert!(
            d.on_packet(3000, &pkt(5, false, 160), ms(300))
                .expect("ok")
                .is_some()
        );
        assert!(
            d.on_packet(3000, &pkt(5, true, 800), ms(400))
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn only_end_packets_still_give_one_press() {
        let mut d = DtmfDetector::default();
        let p = d.on_packet(500, &pkt(11, true, 800), ms(0)).expect("ok");
        assert_eq!(p.and_then(|p| p.digit), Some('#'));
        assert_eq!(
            d.on_packet(500, &pkt(11, true, 800), ms(1)).expect("ok"),
            None
        );
        assert_eq!(
            d.on_packet(500, &pkt(11, true, 800), ms(2)).expect("ok"),
            None
        );
        assert_eq!(
            d.take_release().map(|r| r.reason),
            Some(ReleaseReason::EndPacket)
        );
    }

    #[test]
    fn event_without_end_times_out_and_is_superseded() {
        let mut d = DtmfDetector::new(ms(500));
        assert!(
            d.on_packet(100, &pkt(2, false, 160), ms(0))
                .expect("ok")
                .is_some()
        );
        d.poll(ms(400));
        assert_eq!(d.take_release(), None);
        d.poll(ms(500));
        let r = d.take_release().expect("timed out");
        assert_eq!(
            (r.event, r.reason, r.duration),
            (2, ReleaseReason::Timeout, 160)
        );
        // Stragglers of the timed-out event do not press again.
        assert_eq!(
            d.on_packet(100, &pkt(2, false, 320), ms(600)).expect("ok"),
            None
        );
        // A new event whose predecessor never ended supersedes it.
        assert!(
            d.on_packet(2000, &pkt(3, false, 160), ms(700))
                .expect("ok")
                .is_some()
        );
        assert!(
            d.on_packet(4000, &pkt(4, false, 160), ms(800))
                .expect("ok")
                .is_some()
        );
        let r = d.take_release().expect("superseded");
        assert_eq!((r.event, r.reason), (3, ReleaseReason::Superseded));
    }

    #[test]
    fn late_packets_of_older_events_are_ignored() {
        let mut d = DtmfDetector::default();
        assert!(
            d.on_packet(u32::MAX - 100, &pkt(1, false, 160), ms(0))
                .expect("ok")
                .is_some()
        );
        // Next event across the timestamp wrap.
        assert!(
            d.on_packet(500, &pkt(2, false, 160), ms(300))
                .expect("ok")
                .is_some()
        );
        // A late end packet of the first event.
        assert_eq!(
            d.on_packet(u32::MAX - 100, &pkt(1, true, 800), ms(310))
                .expect("ok"),
            None
        );
    }

    #[test]
    fn different_event_with_same_timestamp_is_a_new_press() {
        // Some senders reuse the timestamp; a different code is still a different key.
        let mut d = DtmfDetector::default();
        assert!(
            d.on_packet(100, &pkt(1, true, 800), ms(0))
                .expect("ok")
                .is_some()
        );
        assert!(
            d.on_packet(100, &pkt(2, true, 800), ms(200))
                .expect("ok")
                .is_some()
        );
    }

    #[test]
    fn long_event_segments_are_one_press() {
        let mut d = DtmfDetector::default();
        assert!(
            d.on_packet(0, &pkt(0, false, 0xFFFF), ms(0))
                .expect("ok")
                .is_some()
        );
        // Next segment at ts + 0xFFFF with the same code.
        assert_eq!(
            d.on_packet(0xFFFF, &pkt(0, false, 160), ms(20))
                .expect("ok"),
            None
        );
        assert_eq!(
            d.on_packet(0xFFFF, &pkt(0, true, 800), ms(40)).expect("ok"),
            None
        );
        let r = d.take_release().expect("end");
        assert_eq!(r.duration, 0xFFFF + 800);
        assert_eq!(r.timestamp, 0);
    }

    /// A hostile peer keeps one event going for ever, segment after segment, starting just
    /// below the top of the timestamp space: the summed duration saturates instead of
    /// overflowing (a debug-build panic before), and it stays one press.
    #[test]
    fn endless_long_event_saturates_and_wraps() {
        let mut d = DtmfDetector::default();
        let mut ts = u32::MAX - 10;
        assert!(
            d.on_packet(ts, &pkt(3, false, 0xFFFF), ms(0))
                .expect("ok")
                .is_some()
        );
        for i in 1..=70_000u64 {
            ts = ts.wrapping_add(0xFFFF);
            assert_eq!(
                d.on_packet(ts, &pkt(3, false, 0xFFFF), ms(i)).expect("ok"),
                None,
                "segment {i} is the same press"
            );
        }
        assert_eq!(
            d.on_packet(ts, &pkt(3, true, 0xFFFF), ms(70_001))
                .expect("ok"),
            None
        );
        let r = d.take_release().expect("end");
        assert_eq!(r.duration, u32::MAX);
        assert_eq!(r.timestamp, u32::MAX - 10);
    }

    #[test]
    fn extreme_timestamps_and_durations_never_panic() {
        let mut d = DtmfDetector::new(Duration::from_millis(1));
        for (i, ts) in [u32::MAX, 0, 1, u32::MAX / 2, u32::MAX / 2 + 1, u32::MAX - 1]
            .into_iter()
            .enumerate()
        {
            for dur in [0u16, 1, 0xFF00, 0xFFFF] {
                let _ = d.on_packet(ts, &pkt((i % 17) as u8, i % 2 == 0, dur), ms(i as u64));
                d.poll(Duration::MAX);
                let _ = d.take_release();
            }
        }
    }

    #[test]
    fn malformed_payload_is_an_error() {
        let mut d = DtmfDetector::default();
        assert_eq!(d.on_packet(0, &[1], ms(0)), Err(DtmfError::TooShort(1)));
    }

    #[test]
    fn generator_sequence() {
        // 100 ms digit at 20 ms steps: durations 160..800, the 800 one has E, sent 3 times.
        let g = EventGenerator::digit('7', 4242, ms(100)).expect("digit");
        assert_eq!(g.total_duration(), 800);
        let packets: Vec<_> = g.collect();
        assert_eq!(packets.len(), 7);
        assert!(packets[0].marker);
        assert!(packets[1..].iter().all(|p| !p.marker));
        assert!(packets.iter().all(|p| p.timestamp == 4242));
        let evs: Vec<_> = packets
            .iter()
            .map(|p| TelephoneEvent::parse(&p.payload).expect("ok"))
            .collect();
        let durations: Vec<u16> = evs.iter().map(|e| e.duration).collect();
        assert_eq!(durations, vec![160, 320, 480, 640, 800, 800, 800]);
        let ends: Vec<bool> = evs.iter().map(|e| e.end).collect();
        assert_eq!(ends, vec![false, false, false, false, true, true, true]);
        assert!(evs.iter().all(|e| e.event == 7 && e.volume == 10));

        // Feeding the generated packets to the detector gives exactly one press and release.
        let mut d = DtmfDetector::default();
        let presses = packets
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                d.on_packet(p.timestamp, &p.payload, ms(i as u64 * 20))
                    .expect("ok")
            })
            .count();
        assert_eq!(presses, 1);
        assert_eq!(d.take_release().map(|r| r.duration), Some(800));
        assert!(EventGenerator::digit('z', 0, ms(100)).is_none());
    }

    #[test]
    fn generator_uneven_and_tiny_durations() {
        let d: Vec<u16> = EventGenerator::new(1, 0, 500, 160, 10)
            .map(|p| TelephoneEvent::parse(&p.payload).expect("ok").duration)
            .collect();
        assert_eq!(d, vec![160, 320, 480, 500, 500, 500]);
        let n = EventGenerator::new(1, 0, 0, 160, 10).count();
        assert_eq!(n, 3, "a zero-length event is three end packets");
    }
}
