//! Header value interpreters on arbitrary text: URIs (rsip and our fallback), Via, parameters,
//! name-addrs, host:port, list splitting, CSeq, option tags. Each line is also tried alone, as
//! a header value is one unfolded line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchboard_fuzz::exercise_header_value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    exercise_header_value(text);
    if text.contains('\n') {
        for line in text.lines() {
            exercise_header_value(line);
        }
    }
});
