//! An SDP offer through parsing, negotiation (plain, optional and required SRTP) and the
//! answer we would send. Our answer must be SDP we parse ourselves, with as many m= lines as
//! the offer (RFC 3264 6) and the negotiated codec on the accepted stream; an encrypted
//! answer carries our key under the offer's tag, and the input itself, fed to the SRTP
//! session as a packet, is refused or unprotected without a panic.
#![no_main]
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use switchboard_media_node::media::srtp::{MasterKey, Session};
use switchboard_media_node::sdes;
use switchboard_media_node::sdp::{self, Encryption, LocalCrypto, LocalMedia, Sdp, SrtpPolicy};
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
    let policies = [
        SrtpPolicy::PLAIN,
        SrtpPolicy {
            encryption: Encryption::Optional,
            keys_allowed: true,
        },
        SrtpPolicy {
            encryption: Encryption::Required,
            keys_allowed: true,
        },
    ];
    for (i, prefs) in prefs.iter().enumerate() {
        for policy in policies {
            let Ok(n) = sdp::negotiate_with(&offer, prefs, i != 1, policy) else {
                continue;
            };
            let crypto = n.srtp.as_ref().map(|o| LocalCrypto {
                tag: o.tag,
                key: MasterKey::random(o.key.suite()),
                savp: n.savp,
            });
            if let (Some(theirs), Some(ours)) = (&n.srtp, &crypto) {
                let mut session = Session::new(&ours.key, theirs.key.clone()).expect("one suite");
                let _ = session.unprotect_rtp(data);
                let _ = session.unprotect_rtcp(data);
            }
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
                crypto: crypto.clone(),
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
            if let Some(c) = &crypto {
                let back = sdes::choose(&ours.crypto).expect("our key parses back");
                assert_eq!(
                    (back.tag, &back.key),
                    (c.tag, &c.key),
                    "our key: {answer:?}"
                );
                assert_eq!(ours.proto == "RTP/SAVP", c.savp, "profile: {answer:?}");
            } else {
                assert_eq!(ours.proto, "RTP/AVP", "a plain answer: {answer:?}");
            }
        }
    }
});
