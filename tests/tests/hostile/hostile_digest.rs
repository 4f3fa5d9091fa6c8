//! Digest replay and misuse against the inbound challenge (RFC 7616 3.4,
//! RFC 3261 22.4): a raw UDP caller built here computes its own answers
//! (MD5, independently of the node's code) and replays them the way an
//! attacker who captured them would. Every refusal must be a fresh 401
//! counted under its reason; the legitimate flow (SIPp) must keep working.

use std::net::SocketAddr;
use std::time::Duration;

use md5::Digest as _;
use serde_json::json;
use switchboard_tests::agent::TestAgent;
use switchboard_tests::node::{MediaNode, RawSip, free_port, header_of, status_of};
use switchboard_tests::sipp::Sipp;

const NUMBER_A: &str = "+14155550100";
const NUMBER_B: &str = "+14155550199";
const USER: &str = "alice";
const PASSWORD: &str = "s3cret";
const REALM: &str = "carrier";
const WAIT: Duration = Duration::from_secs(10);

async fn node(agent: &TestAgent) -> MediaNode {
    node_with(agent, &[]).await
}

async fn node_with(agent: &TestAgent, flags: &[&str]) -> MediaNode {
    let number = |id: &str, e164: &str| {
        json!({
            "id": id, "e164": e164, "trunkId": "ns/carrier", "inbound": true,
            "agent": {"url": agent.url(), "protocol": "AGENT_PROTOCOL_TWILIO_MEDIA_STREAMS"}
        })
    };
    let config = json!({
        "version": "1",
        "trunks": [{
            "id": "ns/carrier",
            "enabled": true,
            "inbound": {
                "enabled": true,
                "allowedSources": [],
                "auth": {"realm": REALM, "credentials": {"username": USER, "password": PASSWORD}}
            }
        }],
        "numbers": [number("ns/a", NUMBER_A), number("ns/b", NUMBER_B)]
    });
    MediaNode::start(&config, flags).await.expect("node starts")
}

fn md5_hex(s: &str) -> String {
    format!("{:x}", md5::Md5::digest(s.as_bytes()))
}

/// A raw caller on one UDP socket (bound to `ip`) with a socket for the
/// RTP the node sends once a call is answered.
struct Caller {
    sip: RawSip,
    rtp: tokio::net::UdpSocket,
    calls: u32,
}

impl Caller {
    async fn new(node: SocketAddr, ip: &str) -> Caller {
        let sock = tokio::net::UdpSocket::bind(format!("{ip}:0"))
            .await
            .expect("bind the caller");
        Caller {
            sip: RawSip { sock, node },
            rtp: tokio::net::UdpSocket::bind(format!("{ip}:0"))
                .await
                .expect("bind rtp"),
            calls: 0,
        }
    }

    fn ruri(&self, number: &str) -> String {
        format!("sip:{number}@{}", self.sip.node)
    }

    /// Sends an INVITE (new transaction of call `call`) and returns the
    /// final response to it.
    async fn invite(&self, call: &str, cseq: u32, number: &str, auth: Option<&str>) -> String {
        let local = self.sip.local();
        let rtp = self.rtp.local_addr().expect("rtp addr");
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
            ip = rtp.ip(),
            port = rtp.port()
        );
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let msg = format!(
            "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call}-{cseq};rport\r\n\
             From: <sip:+15559990000@{local}>;tag=f{call}\r\nTo: <sip:{number}@{node}>\r\nCall-ID: {call}\r\n\
             CSeq: {cseq} INVITE\r\nContact: <sip:c@{local}>\r\nMax-Forwards: 70\r\n{auth}\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len(),
            ruri = self.ruri(number),
            node = self.sip.node,
        );
        self.sip.send(msg.as_bytes()).await;
        let mut seen = Vec::new();
        let resp = self
            .sip
            .recv_until(WAIT, &mut seen, |m| {
                header_of(m, "Call-ID") == Some(call)
                    && header_of(m, "CSeq") == Some(&format!("{cseq} INVITE"))
                    && status_of(m).is_some_and(|c| c >= 200)
            })
            .await;
        resp.unwrap_or_else(|| panic!("no final response to INVITE {call}/{cseq}; saw {seen:?}"))
    }

    /// ACKs a final response (same transaction for non-2xx, its own for 2xx).
    async fn ack(&self, resp: &str, cseq: u32, number: &str) {
        let local = self.sip.local();
        let call = header_of(resp, "Call-ID").expect("Call-ID");
        let to = header_of(resp, "To").expect("To");
        let branch = if status_of(resp) == Some(200) {
            format!("{call}-ack{cseq}")
        } else {
            format!("{call}-{cseq}")
        };
        let msg = format!(
            "ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{branch};rport\r\n\
             From: <sip:+15559990000@{local}>;tag=f{call}\r\nTo: {to}\r\nCall-ID: {call}\r\n\
             CSeq: {cseq} ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            ruri = self.ruri(number),
        );
        self.sip.send(msg.as_bytes()).await;
    }

    /// Ends an answered call with BYE and waits for its 200.
    async fn bye(&self, resp: &str, cseq: u32, number: &str) {
        let local = self.sip.local();
        let call = header_of(resp, "Call-ID").expect("Call-ID");
        let to = header_of(resp, "To").expect("To");
        let msg = format!(
            "BYE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call}-bye;rport\r\n\
             From: <sip:+15559990000@{local}>;tag=f{call}\r\nTo: {to}\r\nCall-ID: {call}\r\n\
             CSeq: {cseq} BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            ruri = self.ruri(number),
        );
        self.sip.send(msg.as_bytes()).await;
        let mut seen = Vec::new();
        self.sip
            .recv_until(WAIT, &mut seen, |m| {
                header_of(m, "Call-ID") == Some(call)
                    && header_of(m, "CSeq") == Some(&format!("{cseq} BYE"))
                    && status_of(m) == Some(200)
            })
            .await
            .unwrap_or_else(|| panic!("no 200 to BYE; saw {seen:?}"));
    }

    fn next_call(&mut self, what: &str) -> String {
        self.calls += 1;
        format!("{what}-{}-{}", self.calls, self.sip.local().port())
    }

    /// An unauthenticated INVITE to `number`: returns the challenge's
    /// (realm, nonce) and the whole WWW-Authenticate value.
    async fn challenge(&mut self, number: &str) -> (String, String, String) {
        let call = self.next_call("challenge");
        let resp = self.invite(&call, 1, number, None).await;
        assert_eq!(status_of(&resp), Some(401), "challenge: {resp}");
        self.ack(&resp, 1, number).await;
        let www = header_of(&resp, "WWW-Authenticate")
            .expect("WWW-Authenticate")
            .to_owned();
        (param(&www, "realm"), param(&www, "nonce"), www)
    }

    /// Places a call with `auth`: the final status, and if it was answered
    /// the call is ended cleanly.
    async fn call_with(&mut self, number: &str, auth: &str) -> (u16, String) {
        let call = self.next_call("auth");
        let resp = self.invite(&call, 2, number, Some(auth)).await;
        let code = status_of(&resp).unwrap_or(0);
        self.ack(&resp, 2, number).await;
        if code == 200 {
            self.bye(&resp, 3, number).await;
        }
        (code, resp)
    }
}

/// A parameter of a Digest header value (quoted or not).
fn param(header: &str, name: &str) -> String {
    header
        .trim_start_matches("Digest")
        .split(',')
        .find_map(|p| {
            let (k, v) = p.split_once('=')?;
            (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().trim_matches('"').to_owned())
        })
        .unwrap_or_default()
}

/// An Authorization answering (realm, nonce) for `uri` with MD5;
/// `qop` = Some((nc, cnonce)) answers with qop=auth.
fn authorization(realm: &str, nonce: &str, uri: &str, qop: Option<(u32, &str)>) -> String {
    let ha1 = md5_hex(&format!("{USER}:{realm}:{PASSWORD}"));
    let ha2 = md5_hex(&format!("INVITE:{uri}"));
    match qop {
        Some((nc, cnonce)) => {
            let nc = format!("{nc:08x}");
            let resp = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
            format!(
                "Digest username=\"{USER}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
                 response=\"{resp}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"{cnonce}\""
            )
        }
        None => {
            let resp = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
            format!(
                "Digest username=\"{USER}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
                 response=\"{resp}\", algorithm=MD5"
            )
        }
    }
}

async fn failures(node: &MediaNode, reason: &str) -> f64 {
    node.metric(&format!(
        "switchboard_sip_digest_failures_total{{reason=\"{reason}\"}}"
    ))
    .await
}

fn is_stale(resp: &str) -> bool {
    header_of(resp, "WWW-Authenticate")
        .is_some_and(|w| param(w, "stale").eq_ignore_ascii_case("true"))
}

#[tokio::test]
async fn hostile_digest_answer_without_qop_is_refused() {
    let agent = TestAgent::start().await.expect("agent");
    let node = node(&agent).await;
    let mut caller = Caller::new(node.sip, "127.0.0.1").await;
    let (realm, nonce, www) = caller.challenge(NUMBER_A).await;
    assert!(www.contains("qop=\"auth\""), "we offer qop=auth: {www}");
    // A correct RFC 2069 answer (no qop) to a challenge that offered qop:
    // without nc/cnonce nothing distinguishes it from its replays.
    let auth = authorization(&realm, &nonce, &caller.ruri(NUMBER_A), None);
    for attempt in 0..2 {
        let (code, resp) = caller.call_with(NUMBER_A, &auth).await;
        assert_eq!(
            code, 401,
            "qop-less answer #{attempt} must be refused: {resp}"
        );
        assert!(!is_stale(&resp), "not a stale nonce: {resp}");
    }
    assert_eq!(failures(&node, "qop_missing").await, 2.0);
    assert_eq!(agent.connections(), 0, "no agent was reached");
}

#[tokio::test]
async fn hostile_digest_replayed_nonce_count_is_refused() {
    let agent = TestAgent::start().await.expect("agent");
    let node = node(&agent).await;
    let mut caller = Caller::new(node.sip, "127.0.0.1").await;
    let (realm, nonce, _) = caller.challenge(NUMBER_A).await;
    let uri = caller.ruri(NUMBER_A);
    let auth = authorization(&realm, &nonce, &uri, Some((1, "c0ffee01")));
    let (code, resp) = caller.call_with(NUMBER_A, &auth).await;
    assert_eq!(code, 200, "the genuine answer is accepted: {resp}");
    // The captured header, replayed in a new call: same nonce, same nc.
    let (code, resp) = caller.call_with(NUMBER_A, &auth).await;
    assert_eq!(code, 401, "a replayed nc must be refused: {resp}");
    assert!(!is_stale(&resp), "a replay is not a stale nonce: {resp}");
    assert_eq!(failures(&node, "replay").await, 1.0);
    // nc must increase strictly: a lower one is a replay too ...
    let auth0 = authorization(&realm, &nonce, &uri, Some((0, "c0ffee02")));
    assert_eq!(caller.call_with(NUMBER_A, &auth0).await.0, 401);
    assert_eq!(failures(&node, "replay").await, 2.0);
    // ... while the legitimate client's next request (nc=2) is fine.
    let auth2 = authorization(&realm, &nonce, &uri, Some((2, "c0ffee03")));
    let (code, resp) = caller.call_with(NUMBER_A, &auth2).await;
    assert_eq!(code, 200, "nc=2 on the same nonce is accepted: {resp}");
    assert_eq!(agent.connections(), 2, "only the two genuine calls");
}

#[tokio::test]
async fn hostile_digest_answer_for_one_number_is_refused_for_another() {
    let agent = TestAgent::start().await.expect("agent");
    let node = node(&agent).await;
    let mut caller = Caller::new(node.sip, "127.0.0.1").await;
    let (realm, nonce, _) = caller.challenge(NUMBER_A).await;
    // Captured on its way to number A, redirected to number B.
    let auth = authorization(
        &realm,
        &nonce,
        &caller.ruri(NUMBER_A),
        Some((1, "feed0001")),
    );
    let (code, resp) = caller.call_with(NUMBER_B, &auth).await;
    assert_eq!(
        code, 401,
        "digest uri != Request-URI must be refused: {resp}"
    );
    assert_eq!(failures(&node, "uri_mismatch").await, 1.0);
    assert_eq!(agent.connections(), 0, "no agent was reached");
    // The same header is otherwise valid: it is accepted where it belongs.
    let (code, resp) = caller.call_with(NUMBER_A, &auth).await;
    assert_eq!(code, 200, "accepted for its own Request-URI: {resp}");
}

#[tokio::test]
async fn hostile_digest_nonce_from_another_source_is_refused() {
    let agent = TestAgent::start().await.expect("agent");
    let node = node(&agent).await;
    let mut victim = Caller::new(node.sip, "127.0.0.1").await;
    let mut other = Caller::new(node.sip, "127.0.0.2").await;
    let (realm, nonce, _) = victim.challenge(NUMBER_A).await;
    let auth = authorization(
        &realm,
        &nonce,
        &victim.ruri(NUMBER_A),
        Some((1, "abad1dea")),
    );
    // The nonce was handed to 127.0.0.1; 127.0.0.2 may not use it, even
    // with a correct response.
    let (code, resp) = other.call_with(NUMBER_A, &auth).await;
    assert_eq!(
        code, 401,
        "a nonce issued to another IP must be refused: {resp}"
    );
    assert!(
        !is_stale(&resp),
        "not ours for this source, so not stale: {resp}"
    );
    assert_eq!(failures(&node, "unknown_nonce").await, 1.0);
    assert_eq!(agent.connections(), 0, "no agent was reached");
    // 127.0.0.2 with a nonce of its own is fine, and so is the victim.
    let (realm2, nonce2, _) = other.challenge(NUMBER_A).await;
    let own = authorization(
        &realm2,
        &nonce2,
        &other.ruri(NUMBER_A),
        Some((1, "abad1dea")),
    );
    assert_eq!(other.call_with(NUMBER_A, &own).await.0, 200);
    assert_eq!(victim.call_with(NUMBER_A, &auth).await.0, 200);
}

#[tokio::test]
async fn hostile_digest_legitimate_sipp_callers_still_authenticate() {
    let agent = TestAgent::start().await.expect("agent");
    let node = node(&agent).await;
    // SIPp answers for `sip:<remote ip>:<port>` unless told the
    // Request-URI, which RFC 3261 22.4 and carriers' stacks use.
    let ruri = format!("{NUMBER_A}@{}", node.sip);
    let sipp = || {
        Sipp::template(
            "uac_auth.xml",
            &[("@USER@", USER), ("@PASSWORD@", PASSWORD)],
        )
        .expect("template")
        .args(["-s", NUMBER_A, "-auth_uri", ruri.as_str()])
    };
    // Two callers challenged at the same moment from one IP each get a
    // nonce of their own (nc=1 on a shared nonce would look like a replay).
    let (a, b) = tokio::join!(
        sipp().run_client(node.sip, free_port()),
        sipp().run_client(node.sip, free_port())
    );
    a.expect("sipp")
        .assert_success("first concurrent challenged call");
    b.expect("sipp")
        .assert_success("second concurrent challenged call");
    sipp()
        .run_client_from(node.sip, "127.0.0.2", free_port())
        .await
        .expect("sipp")
        .assert_success("challenged call from 127.0.0.2");
    assert_eq!(agent.connections(), 3);
    assert!(!node.log().contains(PASSWORD), "password in the node log");
}

#[tokio::test]
async fn hostile_digest_expired_nonce_gets_stale_and_a_fresh_one_works() {
    let agent = TestAgent::start().await.expect("agent");
    let node = node_with(&agent, &["--digest-nonce-lifetime-secs", "1"]).await;
    let mut caller = Caller::new(node.sip, "127.0.0.1").await;
    let (realm, nonce, _) = caller.challenge(NUMBER_A).await;
    let uri = caller.ruri(NUMBER_A);
    // The genuine client keeps using its nonce (nc 1, 2, ...) until the
    // node calls it stale; with a 1 s lifetime that is within 2 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut nc = 0;
    let stale = loop {
        nc += 1;
        let auth = authorization(&realm, &nonce, &uri, Some((nc, "5eed")));
        let (code, resp) = caller.call_with(NUMBER_A, &auth).await;
        if code == 401 {
            break resp;
        }
        assert_eq!(code, 200, "a live nonce is accepted: {resp}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nonce never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(is_stale(&stale), "our expired nonce is stale: {stale}");
    assert_eq!(failures(&node, "stale").await, 1.0);
    let (realm, fresh, _) = caller.challenge(NUMBER_A).await;
    assert_ne!(fresh, nonce);
    let auth = authorization(&realm, &fresh, &uri, Some((1, "5eed")));
    assert_eq!(caller.call_with(NUMBER_A, &auth).await.0, 200);
}
