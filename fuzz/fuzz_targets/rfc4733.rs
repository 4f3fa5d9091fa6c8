//! RFC 4733 telephone-event payloads through the DTMF detector: duplicates, end packets,
//! long events split into segments, late packets of older events, timeouts.
//!
//! Input: 10-byte records `[RTP timestamp: u32 BE][ms since previous: u16 BE][payload: 4]`;
//! a short last record goes in as a (too short) payload. The whole input is also parsed as one
//! payload.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use switchboard_media_node::media::dtmf::{DtmfDetector, TelephoneEvent};

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = TelephoneEvent::parse(data) {
        // Serialising what we parsed gives the same fields back.
        let again = TelephoneEvent::parse(&ev.to_bytes()).expect("4 bytes parse");
        assert_eq!(ev, again);
        let _ = ev.digit();
    }
    let mut det = DtmfDetector::new(Duration::from_millis(200));
    let mut now = Duration::ZERO;
    for rec in data.chunks(10) {
        if rec.len() < 6 {
            let _ = det.on_packet(0, rec, now);
            break;
        }
        let ts = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]);
        now += Duration::from_millis(u64::from(u16::from_be_bytes([rec[4], rec[5]])));
        det.poll(now);
        let _ = det.take_release();
        let _ = det.on_packet(ts, &rec[6..], now);
        let _ = det.in_progress();
    }
    now += Duration::from_secs(1);
    det.poll(now);
    let _ = det.take_release();
});
