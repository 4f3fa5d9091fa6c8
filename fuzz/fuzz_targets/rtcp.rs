//! A compound RTCP datagram through the parser and what the bridge reads from it: report
//! blocks (and the round-trip time from them), the SR sender info, SDES CNAME, BYE sources
//! and reason. Packets are checked to stay inside the datagram.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use switchboard_media_node::media::rtcp::{
    LastSenderReport, RtcpPacket, parse_compound, round_trip_time,
};
use switchboard_media_node::media::rtp::looks_like_rtcp;

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_rtcp(data);
    let mut packets = 0usize;
    for p in parse_compound(data) {
        let Ok(p) = p else { break };
        packets += 1;
        // Every packet is at least a 4-byte header.
        assert!(packets * 4 <= data.len());
        match p {
            RtcpPacket::SenderReport { info, blocks, .. } => {
                let last = LastSenderReport::new(&info, Duration::from_secs(1));
                let _ = last.delay_since(Duration::from_secs(3));
                for b in blocks {
                    let _ = round_trip_time(last.lsr, &b);
                }
            }
            RtcpPacket::ReceiverReport { blocks, .. } => {
                for b in blocks {
                    let _ = round_trip_time(0x1234_5678, &b);
                }
            }
            RtcpPacket::SourceDescription { body, .. } => {
                if let Some((_, cname)) = p.cname() {
                    assert!(cname.len() <= body.len());
                }
            }
            RtcpPacket::Bye { ssrcs, reason } => {
                assert!(ssrcs.count() * 4 + reason.map_or(0, <[u8]>::len) <= data.len());
            }
            RtcpPacket::Other { body, .. } => assert!(body.len() <= data.len()),
        }
    }
});
