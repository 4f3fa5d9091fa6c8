//! One UDP datagram through the SIP framer, then through everything the node does with a
//! request or response it accepted: header interpretation, dialog creation, building a
//! response, serialising. A message we accepted must serialise to one we accept again, with
//! the same start line, headers and body (otherwise what we echo back differs from what we
//! understood: the root of header injection).
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchboard_fuzz::exercise_message;
use switchboard_media_node::sip::framing::{Limits, parse_datagram};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = parse_datagram(data, &Limits::default()) {
        exercise_message(&msg);
    }
});
