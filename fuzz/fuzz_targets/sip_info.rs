//! SIP INFO DTMF bodies (application/dtmf-relay, application/dtmf). Input: the Content-Type
//! value, a newline, then the body bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchboard_media_node::call::dtmf;

fuzz_target!(|data: &[u8]| {
    let (ct, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"application/dtmf-relay"[..], data),
    };
    let ct = String::from_utf8_lossy(ct);
    if let Some(ev) = dtmf::parse(&ct, body) {
        assert!(
            matches!(ev.digit, '0'..='9' | '*' | '#' | 'A'..='D'),
            "not a DTMF digit: {:?}",
            ev.digit
        );
    }
});
