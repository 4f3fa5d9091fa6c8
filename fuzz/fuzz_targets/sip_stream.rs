//! A TCP byte stream through the Content-Length framer. The stream is delivered twice: whole,
//! and in uneven chunks (1, 2, 7, 64, 500 bytes, cycling) as TCP may split it. Both deliveries
//! must frame the same messages and both must fail (or not) together. (What is done with a
//! framed message is the sip_datagram target's job; leaving it out here keeps this one fast.)
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchboard_media_node::sip::framing::{Limits, StreamFramer};
use switchboard_media_node::sip::message::Message;

const CHUNKS: [usize; 5] = [1, 2, 7, 64, 500];

/// Drains complete messages; true when the framer reported an error (the stream is closed).
fn drain(framer: &mut StreamFramer, limits: &Limits, out: &mut Vec<Message>) -> bool {
    loop {
        match framer.next_message(limits) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();

    let mut whole = StreamFramer::new();
    whole.push(data);
    let mut whole_msgs = Vec::new();
    let whole_failed = drain(&mut whole, &limits, &mut whole_msgs);

    let mut chunked = StreamFramer::new();
    let mut chunked_msgs = Vec::new();
    let mut chunked_failed = false;
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() && !chunked_failed {
        let n = CHUNKS[i % CHUNKS.len()].min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        i += 1;
        chunked.push(chunk);
        chunked_failed = drain(&mut chunked, &limits, &mut chunked_msgs);
    }

    assert_eq!(
        whole_failed, chunked_failed,
        "chunking changed whether the stream fails"
    );
    assert_eq!(
        whole_msgs, chunked_msgs,
        "chunking changed the framed messages"
    );
});
