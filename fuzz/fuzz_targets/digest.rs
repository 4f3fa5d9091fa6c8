//! Digest authentication headers: a WWW-Authenticate/Proxy-Authenticate challenge from a
//! carrier (first line) answered with our Authorization, and an Authorization from a caller
//! (second line) checked by our digest server.
#![no_main]
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use switchboard_media_node::sip::digest::{self, Challenge, Check, DigestServer};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (challenge, authz) = text.split_once('\n').unwrap_or((text, text));
    let _ = digest::parse_params(challenge);
    if let Ok(ch) = Challenge::parse(challenge) {
        let value = digest::authorization(
            &ch,
            "alice",
            "secret",
            "INVITE",
            "sip:bob@example.com",
            1,
            "c0ffee",
        );
        // What we send back must parse as Digest parameters again.
        digest::parse_params(&value).expect("our Authorization parses");
    }
    let server = DigestServer::new(Duration::from_secs(300));
    let _ = server.verify(&Check {
        header: Some(authz),
        method: "INVITE",
        request_uri: "sip:bob@example.com",
        source: IpAddr::V4(Ipv4Addr::LOCALHOST),
        realm: "example.com",
        username: "alice",
        password: "secret",
    });
});
