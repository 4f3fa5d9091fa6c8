//! Text frames from a voice agent (Twilio Media Streams JSON: media, mark, clear, anything
//! else). A media payload is decoded the way the session does it (in fixed steps, without
//! allocating); the result must be exactly what decoding the whole payload at once gives,
//! and both must accept or refuse the same payloads.
#![no_main]
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use switchboard_media_node::agent::twilio::{AgentEvent, decode_payload, parse_agent_message};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(AgentEvent::Media { payload }) = parse_agent_message(text) {
        let mut stepped = Vec::new();
        let result = decode_payload(&payload, |piece| stepped.extend_from_slice(piece));
        match (result, STANDARD.decode(payload.as_bytes())) {
            (Ok(n), Ok(whole)) => {
                assert_eq!(
                    n,
                    stepped.len(),
                    "returned length differs from the bytes handed over"
                );
                assert_eq!(
                    stepped, whole,
                    "stepped decoding differs from whole decoding"
                );
            }
            (Err(_), Err(_)) => {}
            (stepped, whole) => panic!(
                "stepped decoding {:?} but whole decoding {:?}",
                stepped.map(|_| ()),
                whole.map(|_| ())
            ),
        }
    }
});
