//! An SDP offer through parsing, negotiation and the answer we would send. Our answer must be
//! SDP we parse ourselves, with as many m= lines as the offer (RFC 3264 6) and the negotiated
//! codec on the accepted stream.
#![no_main]
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use switchboard_media_node::sdp::{self, LocalMedia, Sdp};
use switchboard_proto::v1alpha1::Codec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(offer) = Sdp::parse(text) else {
        return;
    };
    let _ = offer.audio();
    let prefs: [&[Codec]; 3] = [
        &[Codec::Pcmu, Codec::Pcma],
        &[Codec::Pcma],
        &[Codec::Unspecified],
    ];
    for (i, prefs) in prefs.iter().enumerate() {
        let Ok(n) = sdp::negotiate(&offer, prefs, i != 1) else {
            continue;
        };
        let _ = (n.offered.is_hold(), n.answer.as_str());
        let ip = if i == 0 {
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        };
        let local = LocalMedia {
            session_id: 42,
            version: 1,
            ip,
            port: 40_000,
        };
        let answer = sdp::build_answer(&local, &offer, &n);
        let parsed = Sdp::parse(&answer)
            .unwrap_or_else(|e| panic!("our answer does not parse ({e}): {answer:?}"));
        assert_eq!(
            parsed.media.len(),
            offer.media.len(),
            "answer m= count: {answer:?}"
        );
        let ours = &parsed.media[n.index];
        assert_eq!(
            ours.port, 40_000,
            "accepted stream not at its index: {answer:?}"
        );
        assert!(
            ours.formats.iter().any(|f| f.pt == n.pt),
            "negotiated payload type missing from the answer: {answer:?}"
        );
    }
});
