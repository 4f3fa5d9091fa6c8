//! An RTP stream through what the bridge does per packet: parse, sequence/jitter statistics,
//! the reorder buffer (audio, PT 0; everything it releases is taken after each packet and at
//! each step, as the engine does) and the RFC 4733 detector (PT 101), with detector polls
//! between packets and a reception report at the end.
//!
//! Input: records of `[ms since previous: u8][length: u16 BE][packet]`; a truncated last
//! record is taken as is. The whole input is also parsed as one datagram.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use switchboard_fuzz::Records;
use switchboard_media_node::media::dtmf::DtmfDetector;
use switchboard_media_node::media::jitter::{JitterBuffer, JitterConfig};
use switchboard_media_node::media::rtp::{ReceiverStats, RtpPacket, SeqUpdate, looks_like_rtcp};

fuzz_target!(|data: &[u8]| {
    check_packet(data);
    let mut stats = ReceiverStats::with_probation(8000, 2);
    let mut jitter = JitterBuffer::new(JitterConfig::default());
    let mut dtmf = DtmfDetector::default();
    let mut now = Duration::ZERO;
    for (step_ms, packet) in Records::new(data) {
        now += Duration::from_millis(u64::from(step_ms));
        while jitter.pop(now).is_some() {}
        let _ = jitter.deadline();
        dtmf.poll(now);
        let _ = dtmf.take_release();
        let _ = looks_like_rtcp(packet);
        let Some(pkt) = check_packet(packet) else {
            continue;
        };
        if let SeqUpdate::Valid { .. } = stats.update(pkt.sequence, pkt.timestamp, now) {
            match pkt.payload_type {
                0 => {
                    jitter.push(pkt.sequence, pkt.timestamp, pkt.payload, now);
                    while jitter.pop(now).is_some() {}
                }
                101 => {
                    let _ = dtmf.on_packet(pkt.timestamp, pkt.payload, now);
                }
                _ => {}
            }
        }
    }
    let _ = (stats.report(), stats.jitter_duration(), stats.lost());
    let _ = (
        jitter.stats(),
        jitter.jitter(),
        jitter.hold(),
        jitter.depth_frames(),
    );
});

/// Parses one datagram and checks that the parts it returns tile the datagram.
fn check_packet(buf: &[u8]) -> Option<RtpPacket<'_>> {
    let pkt = RtpPacket::parse(buf).ok()?;
    let csrcs = pkt.csrcs().count();
    assert_eq!(csrcs, pkt.csrc_count());
    let ext = pkt.extension.map_or(0, |e| 4 + e.data.len());
    assert_eq!(
        12 + 4 * csrcs + ext + pkt.payload.len() + usize::from(pkt.padding),
        buf.len(),
        "header, payload and padding do not add up to the datagram"
    );
    Some(pkt)
}
