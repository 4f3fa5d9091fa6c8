//! Helpers shared by the fuzz targets in `fuzz_targets/`: what the node does with a SIP
//! message it accepted, and a record splitter for targets that take a stream of packets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use switchboard_media_node::sip::dialog::Dialog;
use switchboard_media_node::sip::framing::{Limits, parse_datagram};
use switchboard_media_node::sip::headers::{
    SipUri, Via, has_option_tag, param, plain_param, split_host_port, uri_text,
};
use switchboard_media_node::sip::message::{Message, Method, canonical_name, split_list};
use switchboard_media_node::sip::transaction::{cancel_for, non_2xx_ack};
use switchboard_media_node::sip::transport::{Peer, Proto};

/// Limits for re-parsing what we serialised: serialising may legitimately grow a message
/// (CRLF for bare LF, one Via line per list entry, an added Content-Length), so the bounds
/// here are generous; the size limits themselves are checked on the first parse.
const REPARSE: Limits = Limits {
    max_message_bytes: 1 << 20,
    max_headers: 1 << 16,
};

/// Runs every header interpreter on one header value.
pub fn exercise_header_value(value: &str) {
    let _ = canonical_name(value);
    for part in split_list(value) {
        assert!(!part.is_empty(), "split_list returned an empty entry");
        let _ = Via::parse(part).map(|v| (v.has_rfc3261_branch(), v.sent_by()));
    }
    let _ = Via::parse(value);
    let uri = uri_text(value);
    if let Ok(u) = SipUri::parse(uri) {
        let _ = u.socket_addr(5060);
    }
    let _ = SipUri::parse(value);
    for name in ["tag", "branch", "transport", "expires", "refresher", "lr"] {
        let _ = param(value, name);
        let _ = plain_param(value, name);
    }
    let _ = split_host_port(value);
    let _ = has_option_tag(std::iter::once(value), "timer");
}

/// Everything the node reads from or builds out of an accepted message. Panics when the
/// message does not survive serialising and parsing again unchanged.
pub fn exercise_message(msg: &Message) {
    let _ = (
        msg.method(),
        msg.code(),
        msg.request_uri(),
        msg.call_id(),
        msg.cseq(),
    );
    if let Some(via) = msg.top_via() {
        let _ = Via::parse(via);
    }
    for h in &msg.headers {
        exercise_header_value(&h.value);
    }
    let peer = Peer {
        proto: Proto::Udp,
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5060),
    };
    if msg.is_request() {
        if let Ok(mut d) = Dialog::uas(msg, "localtag", peer, "<sip:node@127.0.0.1>".into()) {
            let _ = d.next_hop();
            // The BYE we would send inside this dialog is built from the caller's headers.
            roundtrip(&d.request(Method::Bye));
        }
        let resp = msg.response(486, "Busy Here", Some("totag"));
        roundtrip(&resp);
        let _ = cancel_for(msg).to_bytes();
        let _ = non_2xx_ack(msg, &resp).to_bytes();
    }
    roundtrip(msg);
}

/// Serialises `msg`, parses the bytes again and checks nothing changed.
fn roundtrip(msg: &Message) {
    let bytes = msg.to_bytes();
    let again = parse_datagram(&bytes, &REPARSE).unwrap_or_else(|e| {
        panic!(
            "serialised message does not parse again ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(msg.start, again.start, "start line changed by serialising");
    assert_eq!(msg.body, again.body, "body changed by serialising");
    let kept = |m: &Message| {
        m.headers
            .iter()
            .filter(|h| h.name != "Content-Length")
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(kept(msg), kept(&again), "headers changed by serialising");
}

/// Splits `[u8 step][u16 BE length][bytes]` records; a record whose length runs past the end
/// yields what is left.
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Records<'a> {
    /// Records of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Records { rest: data }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = (u8, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let [step, hi, lo, rest @ ..] = self.rest else {
            return None;
        };
        let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
        let (packet, rest) = rest.split_at(n);
        self.rest = rest;
        Some((*step, packet))
    }
}
