//! Text frames from a voice agent (Twilio Media Streams JSON: media, mark, clear, anything
//! else). Decoded audio can never be larger than its base64 text allows.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchboard_media_node::agent::twilio::{AgentEvent, parse_agent_message};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut audio = Vec::new();
    if let Ok(AgentEvent::Media) = parse_agent_message(text, &mut audio) {
        assert!(audio.len() <= text.len() / 4 * 3 + 3);
    }
});
