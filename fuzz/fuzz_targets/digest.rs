//! Digest authentication headers, one per line:
//! 1. a WWW-Authenticate/Proxy-Authenticate challenge from a carrier, answered with our
//!    Authorization (which must parse again);
//! 2. the Request-URI of the request our digest server checks;
//! 3. and on: Authorization values from a caller, checked in order by one server that tracks
//!    at most two nonces (so a third evicts). `@N0`..`@N2` become nonces the server issued
//!    to the caller's address and `@N3` one issued to another address; `@R` becomes the
//!    correct response over the line's own fields. So the fuzzer gets past the keyed nonce and the response
//!    hash, and reaches the qop, uri, nonce-count and eviction checks.
//!
//! Beyond "no panic": an accepted answer carries qop=auth and a nonce issued to the caller,
//! and the same answer sent again is refused (no replay).
#![no_main]
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use switchboard_media_node::sip::digest::{self, Challenge, Check, DigestServer, Verdict};

const SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
const PASSWORD: &str = "secret";
const METHOD: &str = "INVITE";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let challenge = lines.next().unwrap_or_default();
    let _ = digest::parse_params(challenge);
    if let Ok(ch) = Challenge::parse(challenge) {
        let value = digest::authorization(
            &ch,
            "alice",
            PASSWORD,
            METHOD,
            "sip:bob@example.com",
            1,
            "c0ffee",
        );
        // What we send back must parse as Digest parameters again.
        digest::parse_params(&value).expect("our Authorization parses");
    }
    let request_uri = lines.next().unwrap_or("sip:bob@example.com");
    let server = DigestServer::with_limit(Duration::from_secs(300), 2);
    let nonces = [
        server.nonce(SOURCE),
        server.nonce(SOURCE),
        server.nonce(SOURCE),
        server.nonce(OTHER),
    ];
    for template in lines.take(16) {
        let mut header = template.to_owned();
        for (i, n) in nonces.iter().enumerate() {
            header = header.replace(&format!("@N{i}"), n);
        }
        if header.contains("@R") {
            let Some(response) = digest::expected_response(&header, PASSWORD, METHOD) else {
                continue;
            };
            header = header.replace("@R", &response);
        }
        let check = Check {
            header: Some(&header),
            method: METHOD,
            request_uri,
            source: SOURCE,
            realm: "example.com",
            username: "alice",
            password: PASSWORD,
        };
        if server.verify(&check) != Verdict::Ok {
            continue;
        }
        let p = digest::parse_params(&header).expect("an accepted answer parses");
        assert!(
            p.get("qop").is_some_and(|q| q.eq_ignore_ascii_case("auth")),
            "accepted without qop=auth: {header}"
        );
        assert!(
            p.get("nonce").is_some_and(|n| nonces[..3].contains(n)),
            "accepted a nonce not issued to the caller: {header}"
        );
        assert_ne!(server.verify(&check), Verdict::Ok, "replay accepted: {header}");
    }
});
