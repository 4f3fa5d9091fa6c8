//! RTCP (RFC 3550 section 6): building compound sender/receiver reports with an SDES CNAME, and
//! parsing incoming compound packets (SR, RR, SDES, BYE; other types are passed through).
//!
//! Building writes into a caller-provided buffer; parsing borrows from the datagram and yields
//! packets one by one, so neither allocates. Every length field is checked against the datagram
//! before use.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use super::rtp::ReceptionReport;

/// Sender report packet type.
pub const PT_SR: u8 = 200;
/// Receiver report packet type.
pub const PT_RR: u8 = 201;
/// Source description packet type.
pub const PT_SDES: u8 = 202;
/// Goodbye packet type.
pub const PT_BYE: u8 = 203;
/// Application-defined packet type.
pub const PT_APP: u8 = 204;
/// SDES item type of the canonical name.
pub const SDES_CNAME: u8 = 1;

const REPORT_BLOCK_LEN: usize = 24;
const SENDER_INFO_LEN: usize = 20;

/// Why an RTCP datagram or part of it is unusable, or a packet does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtcpError {
    /// Fewer than 4 bytes left for a packet header, or a body shorter than its type needs.
    #[error("RTCP packet truncated")]
    Truncated,
    /// Version is not 2.
    #[error("unsupported RTCP version {0}")]
    BadVersion(u8),
    /// The length field runs past the end of the datagram.
    #[error("RTCP length field {words} words exceeds the {available} bytes left")]
    BadLength {
        /// Length field (words minus one).
        words: u16,
        /// Bytes left in the datagram.
        available: usize,
    },
    /// The padding count is zero or larger than the packet.
    #[error("invalid RTCP padding")]
    BadPadding,
    /// The first packet of a compound is neither SR nor RR (RFC 3550 6.1).
    #[error("compound RTCP must start with SR or RR, found type {0}")]
    NotReportFirst(u8),
    /// The output buffer cannot hold the packet.
    #[error("buffer too small for RTCP packet: need {needed}, have {available}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The CNAME or BYE reason is longer than 255 bytes.
    #[error("SDES item or BYE reason longer than 255 bytes")]
    TextTooLong,
}

/// One report block (RFC 3550 6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Fraction lost since the previous report, 1/256 units.
    pub fraction_lost: u8,
    /// Cumulative lost, signed 24-bit.
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub extended_highest_sequence: u32,
    /// Interarrival jitter, timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR from that source (0 if none).
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s (0 if none).
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    /// A block from receiver statistics plus the last-SR bookkeeping.
    pub fn from_reception(
        ssrc: u32,
        report: &ReceptionReport,
        last_sr: Option<&LastSenderReport>,
        now: Duration,
    ) -> Self {
        let (lsr, dlsr) = last_sr.map_or((0, 0), |l| (l.lsr, l.delay_since(now)));
        ReportBlock {
            ssrc,
            fraction_lost: report.fraction_lost,
            cumulative_lost: report.cumulative_lost,
            extended_highest_sequence: report.extended_highest_sequence,
            jitter: report.jitter,
            last_sr: lsr,
            delay_since_last_sr: dlsr,
        }
    }

    fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.ssrc.to_be_bytes());
        let lost = (self.cumulative_lost.clamp(-0x80_0000, 0x7F_FFFF) as u32) & 0x00FF_FFFF;
        out[4] = self.fraction_lost;
        out[5] = (lost >> 16) as u8;
        out[6] = (lost >> 8) as u8;
        out[7] = lost as u8;
        out[8..12].copy_from_slice(&self.extended_highest_sequence.to_be_bytes());
        out[12..16].copy_from_slice(&self.jitter.to_be_bytes());
        out[16..20].copy_from_slice(&self.last_sr.to_be_bytes());
        out[20..24].copy_from_slice(&self.delay_since_last_sr.to_be_bytes());
    }

    fn read(b: &[u8]) -> Self {
        let raw_lost = u32::from_be_bytes([0, b[5], b[6], b[7]]);
        // Sign-extend the 24-bit field.
        let cumulative_lost = ((raw_lost << 8) as i32) >> 8;
        ReportBlock {
            ssrc: be32(&b[0..4]),
            fraction_lost: b[4],
            cumulative_lost,
            extended_highest_sequence: be32(&b[8..12]),
            jitter: be32(&b[12..16]),
            last_sr: be32(&b[16..20]),
            delay_since_last_sr: be32(&b[20..24]),
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The sender information section of an SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    /// 64-bit NTP timestamp (seconds since 1900 << 32 | fraction).
    pub ntp_timestamp: u64,
    /// RTP timestamp corresponding to the same instant.
    pub rtp_timestamp: u32,
    /// Packets sent.
    pub packet_count: u32,
    /// Payload octets sent.
    pub octet_count: u32,
}

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// The 64-bit NTP timestamp of a wall-clock time (times before 1970 map to the Unix epoch).
pub fn ntp_timestamp(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = ((d.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The middle 32 bits of an NTP timestamp (the LSR field's format).
pub fn ntp_middle32(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// Converts a duration to 1/65536-second units (the DLSR field's format), saturating.
pub fn to_q16_seconds(d: Duration) -> u32 {
    let v = (d.as_nanos() << 16) / 1_000_000_000;
    v.min(u32::MAX as u128) as u32
}

/// Round-trip time from a report block about our own SR (RFC 3550 6.4.1): arrival time (middle 32
/// bits of NTP) minus LSR minus DLSR. None when the block carries no LSR.
pub fn round_trip_time(arrival_middle32: u32, block: &ReportBlock) -> Option<Duration> {
    if block.last_sr == 0 {
        return None;
    }
    let rtt = arrival_middle32
        .wrapping_sub(block.last_sr)
        .wrapping_sub(block.delay_since_last_sr);
    // A negative result (clock skew) wraps to a huge value; report nothing rather than nonsense.
    if rtt > 0x8000_0000 {
        return None;
    }
    Some(Duration::from_nanos((rtt as u64 * 1_000_000_000) >> 16))
}

/// What we remember about the last SR received from a source, to fill LSR/DLSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastSenderReport {
    /// Middle 32 bits of its NTP timestamp.
    pub lsr: u32,
    /// When it arrived, on the caller's monotonic clock.
    pub received_at: Duration,
}

impl LastSenderReport {
    /// Remembers an SR's sender info arriving at `now`.
    pub fn new(info: &SenderInfo, now: Duration) -> Self {
        LastSenderReport {
            lsr: ntp_middle32(info.ntp_timestamp),
            received_at: now,
        }
    }

    /// DLSR at `now`, in 1/65536 s.
    pub fn delay_since(&self, now: Duration) -> u32 {
        to_q16_seconds(now.saturating_sub(self.received_at))
    }
}

fn check_space(out: &[u8], needed: usize) -> Result<(), RtcpError> {
    if out.len() < needed {
        Err(RtcpError::BufferTooSmall {
            needed,
            available: out.len(),
        })
    } else {
        Ok(())
    }
}

fn write_header(out: &mut [u8], count: u8, pt: u8, len_bytes: usize) {
    out[0] = 0x80 | (count & 0x1F);
    out[1] = pt;
    let words = (len_bytes / 4 - 1) as u16;
    out[2..4].copy_from_slice(&words.to_be_bytes());
}

/// Writes an SR with zero or one report block.
pub fn write_sender_report(
    ssrc: u32,
    info: &SenderInfo,
    block: Option<&ReportBlock>,
    out: &mut [u8],
) -> Result<usize, RtcpError> {
    let len = 8 + SENDER_INFO_LEN + block.map_or(0, |_| REPORT_BLOCK_LEN);
    check_space(out, len)?;
    write_header(out, block.is_some() as u8, PT_SR, len);
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    out[8..16].copy_from_slice(&info.ntp_timestamp.to_be_bytes());
    out[16..20].copy_from_slice(&info.rtp_timestamp.to_be_bytes());
    out[20..24].copy_from_slice(&info.packet_count.to_be_bytes());
    out[24..28].copy_from_slice(&info.octet_count.to_be_bytes());
    if let Some(b) = block {
        b.write(&mut out[28..52]);
    }
    Ok(len)
}

/// Writes an RR with zero or one report block.
pub fn write_receiver_report(
    ssrc: u32,
    block: Option<&ReportBlock>,
    out: &mut [u8],
) -> Result<usize, RtcpError> {
    let len = 8 + block.map_or(0, |_| REPORT_BLOCK_LEN);
    check_space(out, len)?;
    write_header(out, block.is_some() as u8, PT_RR, len);
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    if let Some(b) = block {
        b.write(&mut out[8..32]);
    }
    Ok(len)
}

/// Writes an SDES packet with one chunk carrying a CNAME item.
pub fn write_sdes_cname(ssrc: u32, cname: &str, out: &mut [u8]) -> Result<usize, RtcpError> {
    let text = cname.as_bytes();
    if text.len() > 255 {
        return Err(RtcpError::TextTooLong);
    }
    // Chunk: SSRC, item (type, length, text), then at least one zero octet ending the item list,
    // padded to a 32-bit boundary.
    let items = 2 + text.len() + 1;
    let chunk = 4 + items.div_ceil(4) * 4;
    let len = 4 + chunk;
    check_space(out, len)?;
    write_header(out, 1, PT_SDES, len);
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    out[8] = SDES_CNAME;
    out[9] = text.len() as u8;
    out[10..10 + text.len()].copy_from_slice(text);
    out[10 + text.len()..len].fill(0);
    Ok(len)
}

/// Writes a BYE for one SSRC with an optional reason.
pub fn write_bye(ssrc: u32, reason: Option<&str>, out: &mut [u8]) -> Result<usize, RtcpError> {
    let reason_len = match reason {
        Some(r) if r.len() > 255 => return Err(RtcpError::TextTooLong),
        Some(r) => (1 + r.len()).div_ceil(4) * 4,
        None => 0,
    };
    let len = 8 + reason_len;
    check_space(out, len)?;
    write_header(out, 1, PT_BYE, len);
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    if let Some(r) = reason {
        out[8] = r.len() as u8;
        out[9..9 + r.len()].copy_from_slice(r.as_bytes());
        out[9 + r.len()..len].fill(0);
    }
    Ok(len)
}

/// The report part of a compound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report<'a> {
    /// We sent RTP since the last report: an SR with our sender info.
    Sender(&'a SenderInfo),
    /// We only receive: an RR.
    Receiver,
}

/// Writes a compound packet: SR or RR (with one block if given), SDES CNAME, and optionally a
/// BYE (when leaving the session). Returns the total length.
pub fn write_compound(
    ssrc: u32,
    report: Report<'_>,
    block: Option<&ReportBlock>,
    cname: &str,
    bye: Option<Option<&str>>,
    out: &mut [u8],
) -> Result<usize, RtcpError> {
    let mut n = match report {
        Report::Sender(info) => write_sender_report(ssrc, info, block, out)?,
        Report::Receiver => write_receiver_report(ssrc, block, out)?,
    };
    n += write_sdes_cname(ssrc, cname, &mut out[n..])?;
    if let Some(reason) = bye {
        n += write_bye(ssrc, reason, &mut out[n..])?;
    }
    Ok(n)
}

/// Report blocks of an SR or RR, decoded lazily.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlocks<'a> {
    raw: &'a [u8],
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;
    fn next(&mut self) -> Option<ReportBlock> {
        if self.raw.len() < REPORT_BLOCK_LEN {
            return None;
        }
        let (b, rest) = self.raw.split_at(REPORT_BLOCK_LEN);
        self.raw = rest;
        Some(ReportBlock::read(b))
    }
}

/// SSRCs of a BYE, decoded lazily.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ssrcs<'a> {
    raw: &'a [u8],
}

impl Iterator for Ssrcs<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        if self.raw.len() < 4 {
            return None;
        }
        let (b, rest) = self.raw.split_at(4);
        self.raw = rest;
        Some(be32(b))
    }
}

/// One packet of a compound RTCP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpPacket<'a> {
    /// Sender report.
    SenderReport {
        /// SSRC of the sender.
        ssrc: u32,
        /// Its sender information.
        info: SenderInfo,
        /// Its report blocks.
        blocks: ReportBlocks<'a>,
    },
    /// Receiver report.
    ReceiverReport {
        /// SSRC of the packet sender.
        ssrc: u32,
        /// Its report blocks.
        blocks: ReportBlocks<'a>,
    },
    /// Source description; `body` is everything after the header (chunks).
    SourceDescription {
        /// Number of chunks declared.
        count: u8,
        /// Raw chunks.
        body: &'a [u8],
    },
    /// Goodbye.
    Bye {
        /// Sources leaving.
        ssrcs: Ssrcs<'a>,
        /// Reason text, if any (not checked for UTF-8).
        reason: Option<&'a [u8]>,
    },
    /// Any other packet type (APP, feedback, XR), passed through.
    Other {
        /// Packet type.
        packet_type: u8,
        /// Count/subtype field.
        count: u8,
        /// Everything after the header.
        body: &'a [u8],
    },
}

impl<'a> RtcpPacket<'a> {
    /// The first CNAME in an SDES packet, if the chunks are well-formed up to it.
    pub fn cname(&self) -> Option<(u32, &'a [u8])> {
        let RtcpPacket::SourceDescription { body, .. } = *self else {
            return None;
        };
        let ssrc = be32(body.get(0..4)?);
        let mut i = 4;
        loop {
            let item_type = *body.get(i)?;
            if item_type == 0 {
                return None;
            }
            let len = *body.get(i + 1)? as usize;
            let text = body.get(i + 2..i + 2 + len)?;
            if item_type == SDES_CNAME {
                return Some((ssrc, text));
            }
            i += 2 + len;
        }
    }
}

/// Iterates over the packets of a compound RTCP datagram. Yields an error and then stops at the
/// first malformed packet; packets before it are still delivered.
#[derive(Debug, Clone)]
pub struct CompoundIter<'a> {
    rest: &'a [u8],
    first: bool,
    failed: bool,
}

/// Parses a compound RTCP datagram, checking the RFC 3550 A.2 rules that matter for safety:
/// version 2 everywhere, the first packet is SR or RR, lengths stay inside the datagram.
pub fn parse_compound(buf: &[u8]) -> CompoundIter<'_> {
    CompoundIter {
        rest: buf,
        first: true,
        failed: false,
    }
}

impl<'a> CompoundIter<'a> {
    fn parse_one(&mut self) -> Result<RtcpPacket<'a>, RtcpError> {
        let buf = self.rest;
        if buf.len() < 4 {
            return Err(RtcpError::Truncated);
        }
        let version = buf[0] >> 6;
        if version != 2 {
            return Err(RtcpError::BadVersion(version));
        }
        let padding = buf[0] & 0x20 != 0;
        let count = buf[0] & 0x1F;
        let pt = buf[1];
        let words = u16::from_be_bytes([buf[2], buf[3]]);
        let len = (words as usize + 1) * 4;
        if len > buf.len() {
            return Err(RtcpError::BadLength {
                words,
                available: buf.len(),
            });
        }
        if self.first && pt != PT_SR && pt != PT_RR {
            return Err(RtcpError::NotReportFirst(pt));
        }
        self.first = false;
        let mut body = &buf[4..len];
        self.rest = &buf[len..];
        if padding {
            let pad = *body.last().ok_or(RtcpError::BadPadding)? as usize;
            if pad == 0 || pad > body.len() {
                return Err(RtcpError::BadPadding);
            }
            body = &body[..body.len() - pad];
        }
        match pt {
            PT_SR => {
                if body.len() < 4 + SENDER_INFO_LEN {
                    return Err(RtcpError::Truncated);
                }
                let info = SenderInfo {
                    ntp_timestamp: u64::from_be_bytes([
                        body[4], body[5], body[6], body[7], body[8], body[9], body[10], body[11],
                    ]),
                    rtp_timestamp: be32(&body[12..16]),
                    packet_count: be32(&body[16..20]),
                    octet_count: be32(&body[20..24]),
                };
                let blocks = report_blocks(&body[24..], count)?;
                Ok(RtcpPacket::SenderReport {
                    ssrc: be32(&body[0..4]),
                    info,
                    blocks,
                })
            }
            PT_RR => {
                if body.len() < 4 {
                    return Err(RtcpError::Truncated);
                }
                let blocks = report_blocks(&body[4..], count)?;
                Ok(RtcpPacket::ReceiverReport {
                    ssrc: be32(&body[0..4]),
                    blocks,
                })
            }
            PT_SDES => Ok(RtcpPacket::SourceDescription { count, body }),
            PT_BYE => {
                let ssrc_len = 4 * count as usize;
                if body.len() < ssrc_len {
                    return Err(RtcpError::Truncated);
                }
                let (ssrcs, after) = body.split_at(ssrc_len);
                let reason = match after.first() {
                    Some(&n) if n > 0 => after.get(1..1 + n as usize),
                    _ => None,
                };
                Ok(RtcpPacket::Bye {
                    ssrcs: Ssrcs { raw: ssrcs },
                    reason,
                })
            }
            _ => Ok(RtcpPacket::Other {
                packet_type: pt,
                count,
                body,
            }),
        }
    }
}

fn report_blocks(raw: &[u8], count: u8) -> Result<ReportBlocks<'_>, RtcpError> {
    let need = count as usize * REPORT_BLOCK_LEN;
    if raw.len() < need {
        return Err(RtcpError::Truncated);
    }
    // Anything after the blocks is a profile-specific extension; ignored.
    Ok(ReportBlocks { raw: &raw[..need] })
}

impl<'a> Iterator for CompoundIter<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let r = self.parse_one();
        if r.is_err() {
            self.failed = true;
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> ReportBlock {
        ReportBlock {
            ssrc: 0xAABBCCDD,
            fraction_lost: 25,
            cumulative_lost: -3,
            extended_highest_sequence: 0x0001_0005,
            jitter: 40,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 0x0001_8000,
        }
    }

    #[test]
    fn sender_report_exact_bytes() {
        let info = SenderInfo {
            ntp_timestamp: 0x0102_0304_0506_0708,
            rtp_timestamp: 160,
            packet_count: 2,
            octet_count: 320,
        };
        let mut buf = [0u8; 64];
        let n = write_sender_report(0x11223344, &info, Some(&block()), &mut buf).expect("fits");
        assert_eq!(n, 52);
        #[rustfmt::skip]
        let expected: [u8; 52] = [
            0x81, 200, 0, 12,
            0x11, 0x22, 0x33, 0x44,
            1, 2, 3, 4, 5, 6, 7, 8,
            0, 0, 0, 160,
            0, 0, 0, 2,
            0, 0, 1, 64,
            0xAA, 0xBB, 0xCC, 0xDD,
            25, 0xFF, 0xFF, 0xFD,
            0, 1, 0, 5,
            0, 0, 0, 40,
            0x12, 0x34, 0x56, 0x78,
            0, 1, 0x80, 0,
        ];
        assert_eq!(&buf[..n], &expected);
    }

    #[test]
    fn receiver_report_and_sdes_exact_bytes() {
        let mut buf = [0u8; 64];
        let n = write_receiver_report(7, None, &mut buf).expect("fits");
        assert_eq!(&buf[..n], &[0x80, 201, 0, 1, 0, 0, 0, 7]);
        let n = write_sdes_cname(7, "ab", &mut buf).expect("fits");
        // header, SSRC, CNAME item (1, 2, 'a', 'b'), terminator padded to a word.
        assert_eq!(
            &buf[..n],
            &[0x81, 202, 0, 3, 0, 0, 0, 7, 1, 2, b'a', b'b', 0, 0, 0, 0]
        );
        // A CNAME whose item ends exactly on a word boundary still gets a terminating word.
        let n = write_sdes_cname(7, "abcdef", &mut buf).expect("fits");
        assert_eq!(n, 20);
        assert_eq!(&buf[16..20], &[0, 0, 0, 0]);
        let n = write_bye(7, Some("done"), &mut buf).expect("fits");
        assert_eq!(
            &buf[..n],
            &[
                0x81, 203, 0, 3, 0, 0, 0, 7, 4, b'd', b'o', b'n', b'e', 0, 0, 0
            ]
        );
    }

    #[test]
    fn compound_round_trip() {
        let info = SenderInfo {
            ntp_timestamp: ntp_timestamp(UNIX_EPOCH + Duration::from_secs(1)),
            rtp_timestamp: 8000,
            packet_count: 50,
            octet_count: 8000,
        };
        let mut buf = [0u8; 256];
        let n = write_compound(
            99,
            Report::Sender(&info),
            Some(&block()),
            "media-node@10.0.0.1",
            Some(Some("hangup")),
            &mut buf,
        )
        .expect("fits");
        assert_eq!(n % 4, 0);
        let packets: Vec<_> = parse_compound(&buf[..n])
            .collect::<Result<_, _>>()
            .expect("valid");
        assert_eq!(packets.len(), 3);
        match packets[0] {
            RtcpPacket::SenderReport {
                ssrc,
                info: got,
                blocks,
            } => {
                assert_eq!(ssrc, 99);
                assert_eq!(got, info);
                assert_eq!(blocks.collect::<Vec<_>>(), vec![block()]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            packets[1].cname(),
            Some((99, b"media-node@10.0.0.1".as_slice()))
        );
        match packets[2] {
            RtcpPacket::Bye { ssrcs, reason } => {
                assert_eq!(ssrcs.collect::<Vec<_>>(), vec![99]);
                assert_eq!(reason, Some(b"hangup".as_slice()));
            }
            other => panic!("{other:?}"),
        }

        let n = write_compound(5, Report::Receiver, None, "x", None, &mut buf).expect("fits");
        let packets: Vec<_> = parse_compound(&buf[..n])
            .collect::<Result<_, _>>()
            .expect("valid");
        assert!(matches!(
            packets[0],
            RtcpPacket::ReceiverReport { ssrc: 5, .. }
        ));
        assert_eq!(packets.len(), 2);
    }

    #[test]
    fn parses_rr_with_several_blocks_and_bye_with_several_ssrcs() {
        let mut buf = vec![0x82, 201, 0, 13, 0, 0, 0, 1];
        let mut b = [0u8; 24];
        block().write(&mut b);
        buf.extend_from_slice(&b);
        buf.extend_from_slice(&b);
        buf.extend_from_slice(&[0x82, 203, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2]);
        let packets: Vec<_> = parse_compound(&buf)
            .collect::<Result<_, _>>()
            .expect("valid");
        match packets[0] {
            RtcpPacket::ReceiverReport { blocks, .. } => assert_eq!(blocks.count(), 2),
            other => panic!("{other:?}"),
        }
        match packets[1] {
            RtcpPacket::Bye { ssrcs, reason } => {
                assert_eq!(ssrcs.collect::<Vec<_>>(), vec![1, 2]);
                assert_eq!(reason, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_compounds_yield_errors_not_panics() {
        // Not SR/RR first.
        let mut it = parse_compound(&[0x80, 203, 0, 0]);
        assert_eq!(it.next(), Some(Err(RtcpError::NotReportFirst(203))));
        assert_eq!(it.next(), None);
        // Length past the end.
        assert_eq!(
            parse_compound(&[0x80, 201, 0, 5, 0, 0, 0, 1]).next(),
            Some(Err(RtcpError::BadLength {
                words: 5,
                available: 8
            }))
        );
        // Version 1.
        assert_eq!(
            parse_compound(&[0x40, 201, 0, 1, 0, 0, 0, 1]).next(),
            Some(Err(RtcpError::BadVersion(1)))
        );
        // RR claiming a block it does not have.
        assert_eq!(
            parse_compound(&[0x81, 201, 0, 1, 0, 0, 0, 1]).next(),
            Some(Err(RtcpError::Truncated))
        );
        // Trailing garbage after a valid RR: the RR is delivered, then an error.
        let mut it = parse_compound(&[0x80, 201, 0, 1, 0, 0, 0, 1, 0x80]);
        assert!(matches!(
            it.next(),
            Some(Ok(RtcpPacket::ReceiverReport { .. }))
        ));
        assert_eq!(it.next(), Some(Err(RtcpError::Truncated)));
        assert_eq!(it.next(), None);
        // Bad padding.
        assert_eq!(
            parse_compound(&[0xA0, 201, 0, 1, 0, 0, 0, 0]).next(),
            Some(Err(RtcpError::BadPadding))
        );
        // Exhaustive small fuzz: never panics.
        let mut b = [0u8; 36];
        for b0 in 0..=255u8 {
            for b3 in [0u8, 1, 2, 7, 8, 255] {
                b[0] = b0;
                b[1] = 200 + (b0 % 5);
                b[3] = b3;
                b[35] = b0;
                for len in 0..=b.len() {
                    for p in parse_compound(&b[..len]).flatten() {
                        let _ = p.cname();
                    }
                }
            }
        }
    }

    #[test]
    fn cname_lookup_is_bounds_checked() {
        let sdes = RtcpPacket::SourceDescription {
            count: 1,
            body: &[0, 0, 0, 1, 2, 3, b'x', b'y', b'z', 1, 200],
        };
        // NAME item skipped, then a CNAME whose length runs off the end.
        assert_eq!(sdes.cname(), None);
        let sdes = RtcpPacket::SourceDescription {
            count: 1,
            body: &[0, 0, 0, 1, 2, 1, b'x', 1, 1, b'c', 0, 0],
        };
        assert_eq!(sdes.cname(), Some((1, b"c".as_slice())));
    }

    #[test]
    fn ntp_and_rtt_helpers() {
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        let ntp = ntp_timestamp(t);
        assert_eq!(ntp >> 32, NTP_UNIX_OFFSET + 1);
        assert_eq!(ntp & 0xFFFF_FFFF, 1 << 31);
        assert_eq!(ntp_middle32(0x0000_1234_5678_0000), 0x1234_5678);
        assert_eq!(to_q16_seconds(Duration::from_millis(1500)), 0x0001_8000);
        // RFC 3550 6.4.1 example: A = 0xb710:8000 (46864.5 s), LSR = 0xb705:2000 (46853.125 s),
        // DLSR = 0x0005:4000 (5.25 s) -> RTT 6.125 s.
        let b = ReportBlock {
            last_sr: 0xB705_2000,
            delay_since_last_sr: 0x0005_4000,
            ..Default::default()
        };
        assert_eq!(
            round_trip_time(0xB710_8000, &b),
            Some(Duration::from_millis(6125))
        );
        assert_eq!(round_trip_time(0xB710_8000, &ReportBlock::default()), None);
        let last = LastSenderReport::new(
            &SenderInfo {
                ntp_timestamp: 0x0000_AAAA_BBBB_0000,
                ..Default::default()
            },
            Duration::from_secs(10),
        );
        assert_eq!(last.lsr, 0xAAAA_BBBB);
        assert_eq!(last.delay_since(Duration::from_secs(12)), 2 << 16);
        let rb = ReportBlock::from_reception(
            3,
            &ReceptionReport {
                fraction_lost: 1,
                cumulative_lost: 2,
                extended_highest_sequence: 3,
                jitter: 4,
            },
            Some(&last),
            Duration::from_secs(11),
        );
        assert_eq!((rb.last_sr, rb.delay_since_last_sr), (0xAAAA_BBBB, 1 << 16));
    }

    #[test]
    fn buffer_and_text_limits() {
        let mut small = [0u8; 10];
        assert!(matches!(
            write_sender_report(1, &SenderInfo::default(), None, &mut small),
            Err(RtcpError::BufferTooSmall { needed: 28, .. })
        ));
        let long = "x".repeat(256);
        assert_eq!(
            write_sdes_cname(1, &long, &mut [0u8; 600]),
            Err(RtcpError::TextTooLong)
        );
        assert_eq!(
            write_bye(1, Some(&long), &mut [0u8; 600]),
            Err(RtcpError::TextTooLong)
        );
        // Cumulative loss beyond 24 bits is clamped, not wrapped.
        let mut b = [0u8; 24];
        ReportBlock {
            cumulative_lost: 0x0100_0000,
            ..Default::default()
        }
        .write(&mut b);
        assert_eq!(ReportBlock::read(&b).cumulative_lost, 0x7F_FFFF);
    }
}
