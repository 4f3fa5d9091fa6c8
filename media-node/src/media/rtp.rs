//! RTP packets (RFC 3550 section 5) and receiver-side statistics (RFC 3550 appendix A).
//!
//! Parsing borrows from the datagram and never allocates; every length is checked before it is
//! used, so hostile input yields an [`RtpError`] rather than a panic. Building writes into a
//! caller-provided buffer. [`ReceiverStats`] implements sequence-number extension and source
//! validation (A.1), loss accounting (A.3) and interarrival jitter (A.8).

use std::time::Duration;

use thiserror::Error;

/// The only RTP version we speak.
pub const RTP_VERSION: u8 = 2;
/// Length of the fixed RTP header.
pub const RTP_HEADER_LEN: usize = 12;
/// Largest CSRC count the 4-bit CC field can hold.
pub const MAX_CSRC: usize = 15;

/// Why a datagram is not a usable RTP packet, or a packet does not fit a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtpError {
    /// Shorter than the fixed header.
    #[error("RTP packet too short: {len} bytes")]
    TooShort {
        /// Datagram length.
        len: usize,
    },
    /// Version field is not 2.
    #[error("unsupported RTP version {0}")]
    BadVersion(u8),
    /// The CSRC list runs past the end of the datagram.
    #[error("CSRC list ({count} entries) exceeds packet length {len}")]
    CsrcOverrun {
        /// CC field.
        count: u8,
        /// Datagram length.
        len: usize,
    },
    /// The header extension runs past the end of the datagram.
    #[error("header extension exceeds packet length")]
    ExtensionOverrun,
    /// The padding count is zero or larger than the payload.
    #[error("invalid padding length {padding} with {available} bytes after the header")]
    BadPadding {
        /// Last octet of the packet.
        padding: u8,
        /// Bytes after the header that padding may take.
        available: usize,
    },
    /// The output buffer cannot hold the packet.
    #[error("buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall {
        /// Bytes the packet needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// Too many CSRCs or an extension that is not a whole number of 32-bit words.
    #[error("invalid header for building: {0}")]
    InvalidHeader(&'static str),
}

/// A header extension (RFC 3550 5.3.1): a 16-bit profile-defined value and its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpExtension<'a> {
    /// The "defined by profile" field (0xBEDE for RFC 8285 one-byte headers, for instance).
    pub profile: u16,
    /// Extension data, a multiple of 4 bytes.
    pub data: &'a [u8],
}

/// A parsed RTP packet borrowing from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// Marker bit (start of a talkspurt for audio, start of an event for RFC 4733).
    pub marker: bool,
    /// Payload type, 0..=127.
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    csrc_raw: &'a [u8],
    /// Header extension, when the X bit is set.
    pub extension: Option<RtpExtension<'a>>,
    /// Payload, without padding.
    pub payload: &'a [u8],
    /// Number of padding octets removed from the end (0 when P is clear).
    pub padding: u8,
}

impl<'a> RtpPacket<'a> {
    /// Parses a datagram. Checks the version, that the CSRC list and extension fit, and that the
    /// padding count is non-zero and fits (RFC 3550 A.1 validity checks that need no state).
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        let len = buf.len();
        if len < RTP_HEADER_LEN {
            return Err(RtpError::TooShort { len });
        }
        let b0 = buf[0];
        let version = b0 >> 6;
        if version != RTP_VERSION {
            return Err(RtpError::BadVersion(version));
        }
        let has_padding = b0 & 0x20 != 0;
        let has_extension = b0 & 0x10 != 0;
        let cc = b0 & 0x0F;
        let b1 = buf[1];
        let mut offset = RTP_HEADER_LEN;
        let csrc_end = offset + 4 * cc as usize;
        if csrc_end > len {
            return Err(RtpError::CsrcOverrun { count: cc, len });
        }
        let csrc_raw = &buf[offset..csrc_end];
        offset = csrc_end;
        let extension = if has_extension {
            if offset + 4 > len {
                return Err(RtpError::ExtensionOverrun);
            }
            let profile = u16::from_be_bytes([buf[offset], buf[offset + 1]]);
            let words = u16::from_be_bytes([buf[offset + 2], buf[offset + 3]]) as usize;
            let start = offset + 4;
            let end = start + 4 * words;
            if end > len {
                return Err(RtpError::ExtensionOverrun);
            }
            offset = end;
            Some(RtpExtension {
                profile,
                data: &buf[start..end],
            })
        } else {
            None
        };
        let mut end = len;
        let mut padding = 0;
        if has_padding {
            // The last octet counts the padding including itself, so it cannot be zero.
            padding = buf[len - 1];
            let available = len - offset;
            if padding == 0 || padding as usize > available {
                return Err(RtpError::BadPadding { padding, available });
            }
            end -= padding as usize;
        }
        Ok(RtpPacket {
            marker: b1 & 0x80 != 0,
            payload_type: b1 & 0x7F,
            sequence: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
            csrc_raw,
            extension,
            payload: &buf[offset..end],
            padding,
        })
    }

    /// Number of contributing sources.
    pub fn csrc_count(&self) -> usize {
        self.csrc_raw.len() / 4
    }

    /// The contributing sources.
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + 'a {
        self.csrc_raw
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// The header fields of a packet to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtpHeader<'a> {
    /// Marker bit.
    pub marker: bool,
    /// Payload type (only the low 7 bits are used).
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Contributing sources (at most 15).
    pub csrcs: &'a [u32],
    /// Optional header extension; its data must be a multiple of 4 bytes.
    pub extension: Option<RtpExtension<'a>>,
}

impl RtpHeader<'_> {
    /// Bytes this header takes on the wire.
    pub fn len(&self) -> usize {
        RTP_HEADER_LEN + 4 * self.csrcs.len() + self.extension.map_or(0, |e| 4 + e.data.len())
    }

    /// Always false: a header has at least the fixed 12 bytes.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the header followed by `payload` into `out`; returns the packet length. No padding
    /// is added (audio frames are already word-aligned in practice and SRTP is not used).
    pub fn write(&self, payload: &[u8], out: &mut [u8]) -> Result<usize, RtpError> {
        if self.csrcs.len() > MAX_CSRC {
            return Err(RtpError::InvalidHeader("more than 15 CSRCs"));
        }
        if let Some(ext) = self.extension
            && (ext.data.len() % 4 != 0 || ext.data.len() / 4 > u16::MAX as usize)
        {
            return Err(RtpError::InvalidHeader(
                "extension length not a multiple of 4",
            ));
        }
        let header_len = self.len();
        let needed = header_len + payload.len();
        if out.len() < needed {
            return Err(RtpError::BufferTooSmall {
                needed,
                available: out.len(),
            });
        }
        out[0] = (RTP_VERSION << 6)
            | if self.extension.is_some() { 0x10 } else { 0 }
            | self.csrcs.len() as u8;
        out[1] = (if self.marker { 0x80 } else { 0 }) | (self.payload_type & 0x7F);
        out[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        let mut off = RTP_HEADER_LEN;
        for c in self.csrcs {
            out[off..off + 4].copy_from_slice(&c.to_be_bytes());
            off += 4;
        }
        if let Some(ext) = self.extension {
            out[off..off + 2].copy_from_slice(&ext.profile.to_be_bytes());
            out[off + 2..off + 4].copy_from_slice(&((ext.data.len() / 4) as u16).to_be_bytes());
            off += 4;
            out[off..off + ext.data.len()].copy_from_slice(ext.data);
            off += ext.data.len();
        }
        out[off..off + payload.len()].copy_from_slice(payload);
        Ok(needed)
    }
}

/// True when a datagram on an RTP/RTCP-multiplexed port looks like RTCP (RFC 5761 section 4:
/// second octet 192..=223 covers RTCP packet types 200..=204 and friends).
pub fn looks_like_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 2 && buf[0] >> 6 == RTP_VERSION && (192..=223).contains(&buf[1])
}

/// The sending side of one RTP stream: keeps sequence number, timestamp and the packet and octet
/// counts that sender reports need.
#[derive(Debug, Clone)]
pub struct RtpSender {
    /// Our SSRC.
    pub ssrc: u32,
    /// Payload type for audio.
    pub payload_type: u8,
    next_sequence: u16,
    next_timestamp: u32,
    packets: u32,
    octets: u32,
    last_timestamp: u32,
    marker_pending: bool,
}

impl RtpSender {
    /// A stream starting at the given (normally random, RFC 3550 5.1) sequence number and
    /// timestamp. The first packet carries the marker bit (start of a talkspurt).
    pub fn new(ssrc: u32, payload_type: u8, first_sequence: u16, first_timestamp: u32) -> Self {
        RtpSender {
            ssrc,
            payload_type,
            next_sequence: first_sequence,
            next_timestamp: first_timestamp,
            packets: 0,
            octets: 0,
            last_timestamp: first_timestamp,
            marker_pending: true,
        }
    }

    /// Writes the next audio packet carrying `payload` (covering `samples` sampling periods) into
    /// `out`, and advances the stream. Returns the packet length.
    pub fn write_audio(
        &mut self,
        payload: &[u8],
        samples: u32,
        out: &mut [u8],
    ) -> Result<usize, RtpError> {
        let header = RtpHeader {
            marker: self.marker_pending,
            payload_type: self.payload_type,
            sequence: self.next_sequence,
            timestamp: self.next_timestamp,
            ssrc: self.ssrc,
            ..RtpHeader::default()
        };
        let n = header.write(payload, out)?;
        self.marker_pending = false;
        self.last_timestamp = self.next_timestamp;
        self.next_timestamp = self.next_timestamp.wrapping_add(samples);
        self.next_sequence = self.next_sequence.wrapping_add(1);
        self.count(payload.len());
        Ok(n)
    }

    /// Writes a packet with another payload type (telephone-event, for instance) at an explicit
    /// timestamp, sharing the sequence space. Does not advance the audio timestamp.
    pub fn write_other(
        &mut self,
        payload_type: u8,
        marker: bool,
        timestamp: u32,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<usize, RtpError> {
        let header = RtpHeader {
            marker,
            payload_type,
            sequence: self.next_sequence,
            timestamp,
            ssrc: self.ssrc,
            ..RtpHeader::default()
        };
        let n = header.write(payload, out)?;
        self.last_timestamp = timestamp;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        self.count(payload.len());
        Ok(n)
    }

    fn count(&mut self, payload_len: usize) {
        // Counts wrap, as RFC 3550 6.4.1 allows.
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
    }

    /// Advances the timestamp without sending (the stream was silent for `samples`), and sets the
    /// marker on the next packet as the start of a new talkspurt.
    pub fn skip(&mut self, samples: u32) {
        self.next_timestamp = self.next_timestamp.wrapping_add(samples);
        self.marker_pending = true;
    }

    /// The timestamp the next audio packet will carry.
    pub fn next_timestamp(&self) -> u32 {
        self.next_timestamp
    }

    /// The sequence number the next packet will carry.
    pub fn next_sequence(&self) -> u16 {
        self.next_sequence
    }

    /// Timestamp of the last packet sent (for the RTP timestamp of a sender report).
    pub fn last_timestamp(&self) -> u32 {
        self.last_timestamp
    }

    /// Packets sent so far (sender's packet count).
    pub fn packet_count(&self) -> u32 {
        self.packets
    }

    /// Payload octets sent so far (sender's octet count).
    pub fn octet_count(&self) -> u32 {
        self.octets
    }
}

/// RFC 3550 A.1: a jump of more than this many packets ahead is treated as a restart.
pub const MAX_DROPOUT: u16 = 3000;
/// RFC 3550 A.1: packets up to this far behind are treated as late or duplicate.
pub const MAX_MISORDER: u16 = 100;
const RTP_SEQ_MOD: u32 = 1 << 16;

/// What [`ReceiverStats::update`] concluded about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqUpdate {
    /// The packet is valid; its sequence number extended to 64 bits (cycles included).
    Valid {
        /// Extended sequence number of this packet.
        extended: u64,
    },
    /// The source is still on probation (not enough packets in sequence yet).
    Probation,
    /// A large jump: discarded unless the next packet confirms the new sequence (A.1).
    BadJump,
}

/// The numbers an RTCP report block carries, computed per RFC 3550 A.3 and A.8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceptionReport {
    /// Fraction of packets lost since the previous report, in 1/256 units.
    pub fraction_lost: u8,
    /// Cumulative packets lost, clamped to the signed 24-bit field (negative with duplicates).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received (cycles << 16 | max).
    pub extended_highest_sequence: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
}

/// Receiver-side statistics for one source: RFC 3550 A.1 (sequence extension and validation),
/// A.3 (loss), A.8 (jitter). Time is explicit: callers pass the arrival time as a `Duration`
/// since any fixed epoch of their choosing.
#[derive(Debug, Clone)]
pub struct ReceiverStats {
    clock_rate: u32,
    min_sequential: u16,
    started: bool,
    max_seq: u16,
    /// Sequence cycles counted, shifted left by 16 (A.1's `cycles`); 64 bits and saturating
    /// so that a hostile peer wrapping the sequence space on purpose cannot overflow it.
    cycles: u64,
    base_seq: u32,
    bad_seq: u32,
    probation: u16,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    transit: Option<i64>,
    /// Jitter scaled by 16, as in the A.8 integer variant.
    jitter_q4: u64,
}

impl ReceiverStats {
    /// Statistics for a source sampled at `clock_rate` Hz that is valid from its first packet.
    /// (The A.1 probation is off because the media node accepts packets only from the source
    /// the peer signalled, or one that passed probation in [`crate::media::source`], so the
    /// first packet is already expected; see [`ReceiverStats::with_probation`].)
    pub fn new(clock_rate: u32) -> Self {
        Self::with_probation(clock_rate, 1)
    }

    /// Statistics that declare the source valid only after `min_sequential` packets arrived in
    /// sequence (RFC 3550 A.1 uses 2). Values below 1 are treated as 1.
    pub fn with_probation(clock_rate: u32, min_sequential: u16) -> Self {
        ReceiverStats {
            clock_rate: clock_rate.max(1),
            min_sequential: min_sequential.max(1),
            started: false,
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: RTP_SEQ_MOD + 1,
            probation: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            transit: None,
            jitter_q4: 0,
        }
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = seq as u32;
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
    }

    /// Accounts for one received packet: sequence number `seq`, RTP timestamp `timestamp`,
    /// arriving at `arrival`. Jitter is updated for valid packets only.
    pub fn update(&mut self, seq: u16, timestamp: u32, arrival: Duration) -> SeqUpdate {
        if !self.started {
            self.started = true;
            self.init_seq(seq);
            self.max_seq = seq.wrapping_sub(1);
            self.probation = self.min_sequential;
        }
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    self.update_jitter(timestamp, arrival);
                    return SeqUpdate::Valid {
                        extended: self.extended(seq),
                    };
                }
            } else {
                self.probation = self.min_sequential - 1;
                self.max_seq = seq;
            }
            return SeqUpdate::Probation;
        } else if udelta < MAX_DROPOUT {
            // In order, possibly with a gap; wrapped when the new number is smaller.
            if seq < self.max_seq {
                self.cycles = self.cycles.saturating_add(u64::from(RTP_SEQ_MOD));
            }
            self.max_seq = seq;
        } else if udelta as u32 <= RTP_SEQ_MOD - MAX_MISORDER as u32 {
            // A very large jump: the sender probably restarted. Accept it only when the next
            // packet follows on from it.
            if seq as u32 == self.bad_seq {
                self.init_seq(seq);
            } else {
                self.bad_seq = (seq as u32 + 1) & (RTP_SEQ_MOD - 1);
                return SeqUpdate::BadJump;
            }
        } else {
            // Duplicate or reordered packet: counted as received, as A.1 does.
        }
        self.received += 1;
        self.update_jitter(timestamp, arrival);
        SeqUpdate::Valid {
            extended: self.extended(seq),
        }
    }

    /// Extends `seq` relative to the current maximum: packets just behind the maximum across a
    /// wrap get the previous cycle.
    fn extended(&self, seq: u16) -> u64 {
        let cycles = self.cycles;
        let ext = cycles.saturating_add(u64::from(seq));
        if seq > self.max_seq && seq.wrapping_sub(self.max_seq) > u16::MAX / 2 && cycles > 0 {
            // Late packet from before the wrap.
            ext.saturating_sub(u64::from(RTP_SEQ_MOD))
        } else {
            ext
        }
    }

    fn update_jitter(&mut self, timestamp: u32, arrival: Duration) {
        // Arrival in timestamp units; wrapping like the 32-bit RTP timestamp itself.
        let arrival_units = (arrival.as_nanos() * self.clock_rate as u128 / 1_000_000_000) as u32;
        let transit = arrival_units.wrapping_sub(timestamp) as i32 as i64;
        if let Some(prev) = self.transit {
            // Both transits come from i32, so neither the difference nor the sum can overflow.
            let d = (transit - prev).unsigned_abs();
            // J += (|D| - J) / 16, in fixed point scaled by 16 (A.8); J stays below 2^36.
            self.jitter_q4 = self
                .jitter_q4
                .saturating_add(d)
                .saturating_sub(self.jitter_q4.saturating_add(8) >> 4);
        }
        self.transit = Some(transit);
    }

    /// Interarrival jitter in timestamp units.
    pub fn jitter(&self) -> u32 {
        (self.jitter_q4 >> 4).min(u32::MAX as u64) as u32
    }

    /// Interarrival jitter as a duration.
    pub fn jitter_duration(&self) -> Duration {
        Duration::from_nanos(self.jitter() as u64 * 1_000_000_000 / self.clock_rate as u64)
    }

    /// Valid packets received (duplicates included, as in A.3).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Extended highest sequence number received.
    pub fn extended_max(&self) -> u64 {
        self.cycles.saturating_add(u64::from(self.max_seq))
    }

    /// Packets expected: extended highest minus base plus one (0 before the first valid packet).
    pub fn expected(&self) -> u64 {
        if !self.started || self.probation > 0 {
            return 0;
        }
        self.extended_max()
            .saturating_add(1)
            .saturating_sub(u64::from(self.base_seq))
    }

    /// Cumulative packets lost (negative when duplicates outnumber losses).
    pub fn lost(&self) -> i64 {
        let expected = i64::try_from(self.expected()).unwrap_or(i64::MAX);
        let received = i64::try_from(self.received).unwrap_or(i64::MAX);
        expected.saturating_sub(received)
    }

    /// Builds a reception report and starts a new reporting interval (A.3 fraction lost).
    pub fn report(&mut self) -> ReceptionReport {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        self.expected_prior = expected;
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.received_prior = self.received;
        // In i128: interval counts are u64 and a hostile stream may make them anything.
        let lost_interval = i128::from(expected_interval) - i128::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval * 256) / i128::from(expected_interval)).min(255) as u8
        };
        // The cumulative field is 24-bit signed: clamp rather than wrap.
        let cumulative_lost = self.lost().clamp(-0x80_0000, 0x7F_FFFF) as i32;
        ReceptionReport {
            fraction_lost,
            cumulative_lost,
            extended_highest_sequence: self.extended_max() as u32,
            jitter: self.jitter(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_minimal_packet() {
        let bytes = [
            0x80,
            0x80 | 8,
            0x12,
            0x34,
            0xDE,
            0xAD,
            0xBE,
            0xEF,
            0x01,
            0x02,
            0x03,
            0x04,
            0xAA,
            0xBB,
        ];
        let p = RtpPacket::parse(&bytes).expect("valid");
        assert!(p.marker);
        assert_eq!(p.payload_type, 8);
        assert_eq!(p.sequence, 0x1234);
        assert_eq!(p.timestamp, 0xDEAD_BEEF);
        assert_eq!(p.ssrc, 0x0102_0304);
        assert_eq!(p.payload, &[0xAA, 0xBB]);
        assert_eq!(p.csrc_count(), 0);
        assert_eq!(p.extension, None);
        assert_eq!(p.padding, 0);
    }

    #[test]
    fn parses_csrc_extension_and_padding() {
        let mut bytes = vec![0xB2, 0x00, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9];
        bytes.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]); // two CSRCs
        bytes.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0xFF, 0, 0]); // one-word extension
        bytes.extend_from_slice(&[7, 7, 7]); // payload
        bytes.extend_from_slice(&[0, 0, 3]); // three padding octets
        let p = RtpPacket::parse(&bytes).expect("valid");
        assert_eq!(p.csrcs().collect::<Vec<_>>(), vec![1, 2]);
        let ext = p.extension.expect("extension");
        assert_eq!(ext.profile, 0xBEDE);
        assert_eq!(ext.data, &[0x10, 0xFF, 0, 0]);
        assert_eq!(p.payload, &[7, 7, 7]);
        assert_eq!(p.padding, 3);
    }

    #[test]
    fn hostile_input_is_rejected_with_typed_errors() {
        assert_eq!(
            RtpPacket::parse(&[0x80; 11]),
            Err(RtpError::TooShort { len: 11 })
        );
        assert_eq!(RtpPacket::parse(&[]), Err(RtpError::TooShort { len: 0 }));
        let mut v1 = [0u8; 12];
        v1[0] = 0x40;
        assert_eq!(RtpPacket::parse(&v1), Err(RtpError::BadVersion(1)));
        let mut cc = [0u8; 16];
        cc[0] = 0x82; // two CSRCs but room for one
        assert_eq!(
            RtpPacket::parse(&cc),
            Err(RtpError::CsrcOverrun { count: 2, len: 16 })
        );
        let mut ext = [0u8; 14];
        ext[0] = 0x90; // extension header cut short
        assert_eq!(RtpPacket::parse(&ext), Err(RtpError::ExtensionOverrun));
        let mut ext_len = [0u8; 20];
        ext_len[0] = 0x90;
        ext_len[14] = 0xFF; // claims 65280+ words
        assert_eq!(RtpPacket::parse(&ext_len), Err(RtpError::ExtensionOverrun));
        let mut pad0 = [0u8; 14];
        pad0[0] = 0xA0; // padding bit with a zero count
        assert!(matches!(
            RtpPacket::parse(&pad0),
            Err(RtpError::BadPadding { padding: 0, .. })
        ));
        let mut pad_big = [0u8; 14];
        pad_big[0] = 0xA0;
        pad_big[13] = 3; // only 2 bytes after the header
        assert!(matches!(
            RtpPacket::parse(&pad_big),
            Err(RtpError::BadPadding { padding: 3, .. })
        ));
        // Padding may take everything after the header.
        let mut pad_all = [0u8; 14];
        pad_all[0] = 0xA0;
        pad_all[13] = 2;
        assert_eq!(
            RtpPacket::parse(&pad_all).expect("ok").payload,
            &[] as &[u8]
        );
    }

    #[test]
    fn parse_never_panics_on_any_short_prefix_or_flag_combination() {
        let mut base = [0u8; 40];
        for b0 in 0..=255u8 {
            base[0] = b0;
            for last in [0u8, 1, 28, 255] {
                base[39] = last;
                base[14] = last;
                for len in 0..=base.len() {
                    let _ = RtpPacket::parse(&base[..len]);
                }
            }
        }
    }

    #[test]
    fn build_round_trips_and_checks_buffer() {
        let csrcs = [5u32, 6];
        let ext_data = [1u8, 2, 3, 4];
        let header = RtpHeader {
            marker: true,
            payload_type: 101,
            sequence: 65535,
            timestamp: 0xFFFF_FFFF,
            ssrc: 42,
            csrcs: &csrcs,
            extension: Some(RtpExtension {
                profile: 0x1000,
                data: &ext_data,
            }),
        };
        let mut buf = [0u8; 64];
        let n = header.write(&[9, 8, 7], &mut buf).expect("fits");
        assert_eq!(n, 12 + 8 + 8 + 3);
        assert_eq!(header.len(), 28);
        let p = RtpPacket::parse(&buf[..n]).expect("valid");
        assert!(p.marker);
        assert_eq!(p.payload_type, 101);
        assert_eq!(p.sequence, 65535);
        assert_eq!(p.timestamp, 0xFFFF_FFFF);
        assert_eq!(p.ssrc, 42);
        assert_eq!(p.csrcs().collect::<Vec<_>>(), vec![5, 6]);
        assert_eq!(p.extension.expect("ext").data, &ext_data);
        assert_eq!(p.payload, &[9, 8, 7]);

        let mut small = [0u8; 30];
        assert_eq!(
            header.write(&[9, 8, 7], &mut small),
            Err(RtpError::BufferTooSmall {
                needed: 31,
                available: 30
            })
        );
        let bad_ext = RtpHeader {
            extension: Some(RtpExtension {
                profile: 0,
                data: &[1, 2, 3],
            }),
            ..Default::default()
        };
        assert!(matches!(
            bad_ext.write(&[], &mut buf),
            Err(RtpError::InvalidHeader(_))
        ));
        let many = [0u32; 16];
        let too_many = RtpHeader {
            csrcs: &many,
            ..Default::default()
        };
        assert!(matches!(
            too_many.write(&[], &mut [0u8; 200]),
            Err(RtpError::InvalidHeader(_))
        ));
    }

    #[test]
    fn exact_wire_bytes_for_a_pcmu_header() {
        let mut buf = [0u8; 12];
        RtpHeader {
            marker: true,
            payload_type: 0,
            sequence: 1,
            timestamp: 160,
            ssrc: 0xCAFEBABE,
            ..Default::default()
        }
        .write(&[], &mut buf)
        .expect("fits");
        assert_eq!(
            buf,
            [0x80, 0x80, 0, 1, 0, 0, 0, 160, 0xCA, 0xFE, 0xBA, 0xBE]
        );
    }

    #[test]
    fn sender_advances_and_counts() {
        let mut s = RtpSender::new(7, 0, 65535, u32::MAX - 100);
        let mut buf = [0u8; 200];
        let n = s.write_audio(&[0xFF; 160], 160, &mut buf).expect("fits");
        let p = RtpPacket::parse(&buf[..n]).expect("valid");
        assert!(p.marker, "first packet starts a talkspurt");
        assert_eq!(p.sequence, 65535);
        assert_eq!(p.timestamp, u32::MAX - 100);
        let n = s.write_audio(&[0xFF; 160], 160, &mut buf).expect("fits");
        let p = RtpPacket::parse(&buf[..n]).expect("valid");
        assert!(!p.marker);
        assert_eq!(p.sequence, 0, "sequence wraps");
        assert_eq!(p.timestamp, 59, "timestamp wraps");
        assert_eq!(s.packet_count(), 2);
        assert_eq!(s.octet_count(), 320);
        assert_eq!(s.last_timestamp(), 59);
        s.skip(160);
        let n = s.write_audio(&[0xFF; 160], 160, &mut buf).expect("fits");
        let p = RtpPacket::parse(&buf[..n]).expect("valid");
        assert!(p.marker);
        assert_eq!(p.timestamp, 59 + 320);
        let n = s
            .write_other(101, true, 1000, &[1, 0, 0, 160], &mut buf)
            .expect("fits");
        let p = RtpPacket::parse(&buf[..n]).expect("valid");
        assert_eq!((p.payload_type, p.sequence, p.timestamp), (101, 2, 1000));
        assert_eq!(s.next_sequence(), 3);
    }

    #[test]
    fn rtcp_demux() {
        assert!(looks_like_rtcp(&[0x80, 200, 0, 6]));
        assert!(looks_like_rtcp(&[0x81, 201, 0, 7]));
        assert!(!looks_like_rtcp(&[0x80, 0x00]));
        assert!(!looks_like_rtcp(&[0x80, 0x80 | 8]));
        assert!(!looks_like_rtcp(&[0x80]));
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn sequence_extension_across_wrap() {
        let mut st = ReceiverStats::new(8000);
        let mut ts = 0u32;
        let mut seq = 65533u16;
        let mut last = 0;
        for i in 0..6 {
            match st.update(seq, ts, ms(20 * i)) {
                SeqUpdate::Valid { extended } => last = extended,
                other => panic!("unexpected {other:?}"),
            }
            seq = seq.wrapping_add(1);
            ts += 160;
        }
        assert_eq!(last, 65536 + 2);
        assert_eq!(st.extended_max(), 65538);
        assert_eq!(st.expected(), 6);
        assert_eq!(st.lost(), 0);
        // A late packet from before the wrap extends into the previous cycle.
        assert_eq!(
            st.update(65535, 0, ms(200)),
            SeqUpdate::Valid { extended: 65535 }
        );
        assert_eq!(st.extended_max(), 65538, "late packet does not move max");
        let r = st.report();
        assert_eq!(r.extended_highest_sequence, 65538);
        // A duplicate is counted as received, so cumulative loss goes negative (A.3).
        assert_eq!(r.cumulative_lost, -1);
    }

    #[test]
    fn loss_and_fraction_lost_per_interval() {
        let mut st = ReceiverStats::new(8000);
        // 10 packets, 2 lost (seq 3 and 7).
        for s in 0..10u16 {
            if s == 3 || s == 7 {
                continue;
            }
            st.update(s, s as u32 * 160, ms(s as u64 * 20));
        }
        let r = st.report();
        assert_eq!(r.cumulative_lost, 2);
        assert_eq!(r.fraction_lost, (2 * 256 / 10) as u8);
        assert_eq!(r.extended_highest_sequence, 9);
        // Next interval: 10 more, none lost.
        for s in 10..20u16 {
            st.update(s, s as u32 * 160, ms(s as u64 * 20));
        }
        let r = st.report();
        assert_eq!(r.fraction_lost, 0);
        assert_eq!(r.cumulative_lost, 2);
        // Empty interval: nothing expected, fraction 0.
        assert_eq!(st.report().fraction_lost, 0);
    }

    #[test]
    fn large_jump_needs_confirmation() {
        let mut st = ReceiverStats::new(8000);
        for s in 0..5u16 {
            st.update(s, 0, ms(0));
        }
        assert_eq!(st.update(40000, 0, ms(0)), SeqUpdate::BadJump);
        // The next in sequence after the jump confirms a restart.
        assert_eq!(
            st.update(40001, 0, ms(0)),
            SeqUpdate::Valid { extended: 40001 }
        );
        assert_eq!(st.expected(), 1);
        assert_eq!(st.received(), 1);
    }

    #[test]
    fn probation_per_a1() {
        let mut st = ReceiverStats::with_probation(8000, 2);
        assert_eq!(st.update(100, 0, ms(0)), SeqUpdate::Probation);
        assert_eq!(st.expected(), 0);
        assert_eq!(
            st.update(101, 160, ms(20)),
            SeqUpdate::Valid { extended: 101 }
        );
        assert_eq!(st.received(), 1);
        assert_eq!(st.expected(), 1);
        // Out-of-sequence during probation restarts it.
        let mut st = ReceiverStats::with_probation(8000, 2);
        assert_eq!(st.update(100, 0, ms(0)), SeqUpdate::Probation);
        assert_eq!(st.update(105, 0, ms(0)), SeqUpdate::Probation);
        assert!(matches!(st.update(106, 0, ms(0)), SeqUpdate::Valid { .. }));
    }

    #[test]
    fn jitter_is_zero_for_perfect_pacing() {
        let mut st = ReceiverStats::new(8000);
        for s in 0..50u16 {
            st.update(s, 1000 + s as u32 * 160, ms(5 + s as u64 * 20));
        }
        assert_eq!(st.jitter(), 0);
    }

    #[test]
    fn jitter_follows_a8_recurrence() {
        // Alternate arrivals on time and 10 ms late: |D| = 80 units on every packet after the
        // first, so J converges towards 80 following J += (|D| - J) / 16.
        let mut st = ReceiverStats::new(8000);
        let mut reference = 0f64;
        let mut prev_transit: Option<i64> = None;
        for s in 0..200u64 {
            let arrival_ms = s * 20 + if s % 2 == 0 { 0 } else { 10 };
            let ts = (s * 160) as u32;
            st.update(s as u16, ts, ms(arrival_ms));
            let transit = (arrival_ms * 8) as i64 - ts as i64;
            if let Some(p) = prev_transit {
                reference += ((transit - p).abs() as f64 - reference) / 16.0;
            }
            prev_transit = Some(transit);
        }
        let j = st.jitter() as f64;
        assert!((j - reference).abs() <= 1.0, "{j} vs {reference}");
        assert!(j > 75.0 && j <= 80.0, "{j}");
        assert_eq!(st.report().jitter, st.jitter());
        assert!(st.jitter_duration() >= Duration::from_millis(9));
    }

    /// A hostile peer can wrap the 16-bit sequence space as fast as it likes (jumps just under
    /// MAX_DROPOUT): more than 2^16 wraps overflowed a 32-bit `cycles << 16` in debug builds.
    #[test]
    fn hostile_sequence_wraps_never_overflow() {
        let mut st = ReceiverStats::new(8000);
        let mut seq = 0u16;
        let step = MAX_DROPOUT - 1;
        let per_wrap = 65536 / step as u64 + 1;
        let mut wraps = 0u64;
        let mut i = 0u64;
        while wraps < 65_540 {
            let next = seq.wrapping_add(step);
            if next < seq {
                wraps += 1;
            }
            seq = next;
            // Timestamps and arrival times that jump around the whole 32-bit range, too.
            let ts = (i as u32).wrapping_mul(0x9E37_79B9);
            assert!(matches!(
                st.update(seq, ts, Duration::from_millis(i % 1_000_000)),
                SeqUpdate::Valid { .. }
            ));
            i += 1;
        }
        assert!(i >= wraps * (per_wrap - 1));
        assert!(
            st.extended_max() > u64::from(u32::MAX),
            "cycles kept counting"
        );
        let r = st.report();
        assert!(
            r.fraction_lost > 0 && r.cumulative_lost == 0x7F_FFFF,
            "{r:?}"
        );
        assert!(st.lost() > 0);
        let _ = st.jitter_duration();
    }

    #[test]
    fn extremes_of_sequence_and_timestamp_in_one_stream() {
        let mut st = ReceiverStats::new(8000);
        for (seq, ts, at) in [
            (u16::MAX, u32::MAX, u64::MAX / 2),
            (0, 0, 0),
            (1, u32::MAX / 2 + 1, 1),
            (u16::MAX, 1, u64::MAX / 2),
            (40000, u32::MAX, 7),
            (40001, 0, 7),
        ] {
            let _ = st.update(seq, ts, Duration::from_nanos(at));
        }
        let _ = st.report();
        let _ = st.lost();
        let _ = st.expected();
    }

    #[test]
    fn jitter_handles_timestamp_wrap() {
        let mut st = ReceiverStats::new(8000);
        let start = u32::MAX - 320;
        for s in 0..10u32 {
            st.update(s as u16, start.wrapping_add(s * 160), ms(s as u64 * 20));
        }
        assert_eq!(st.jitter(), 0);
    }
}
