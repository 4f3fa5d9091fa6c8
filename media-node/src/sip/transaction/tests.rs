//! The transaction state machines on a virtual clock: every RFC 3261 timer
//! (A to K, plus RFC 6026's L and M), each state transition of the four
//! transaction kinds, and the CANCEL/answer race. Time only moves when a
//! test moves it, so a 32 s timeout takes no time at all.

use std::time::{Duration, Instant};

use super::machine::{AckKey, CState, Output, SState, Transactions};
use super::*;
use crate::sip::headers::Via;
use crate::sip::message::reason_phrase;
use crate::sip::transport::Proto;

/// Who owns a client transaction, as the tests name it.
type Owner = &'static str;

/// One effect, with the virtual time it happened at (ms after the start).
#[derive(Debug)]
enum Seen {
    Sent {
        at: u64,
        line: String,
    },
    Tu {
        at: u64,
        event: TuEvent,
    },
    Client {
        at: u64,
        to: Owner,
        event: ClientEvent,
    },
}

struct Clock {
    core: Transactions<Owner>,
    t0: Instant,
    now: Instant,
}

fn peer(proto: Proto) -> Peer {
    Peer {
        proto,
        addr: "10.0.0.1:5060".parse().expect("addr"),
    }
}

fn request(method: Method, branch: &str, proto: Proto) -> Message {
    let mut m = Message::request(method.clone(), "sip:+15550001111@node");
    let via = format!(
        "SIP/2.0/{} 10.0.0.1:5060;branch=z9hG4bK{branch}",
        proto.as_str()
    );
    m.push_header("Via", &via);
    m.push_header("Max-Forwards", "70");
    m.push_header("From", "<sip:carrier@10.0.0.1>;tag=theirs");
    m.push_header("To", "<sip:+15550001111@node>");
    m.push_header("Call-ID", "call-1");
    m.push_header("CSeq", &format!("1 {}", method.as_str()));
    m
}

fn invite(proto: Proto) -> Message {
    request(Method::Invite, "inv", proto)
}

/// The ACK for a non-2xx: the INVITE's branch (RFC 3261 17.1.1.3).
fn ack_same_branch(proto: Proto, to_tag: &str) -> Message {
    let mut ack = request(Method::Ack, "inv", proto);
    ack.set("To", format!("<sip:+15550001111@node>;tag={to_tag}"));
    ack
}

/// The ACK for a 2xx: a new branch, the dialog's tags (RFC 3261 13.2.2.4).
fn ack_new_branch(proto: Proto, to_tag: &str) -> Message {
    let mut ack = request(Method::Ack, "ack2xx", proto);
    ack.set("To", format!("<sip:+15550001111@node>;tag={to_tag}"));
    ack
}

fn line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

impl Clock {
    fn new() -> Clock {
        Clock::with_limits(TxnLimits::default())
    }

    fn with_limits(limits: TxnLimits) -> Clock {
        let t0 = Instant::now();
        Clock {
            core: Transactions::new(crate::metrics::Metrics::new(), limits),
            t0,
            now: t0,
        }
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.now.duration_since(self.t0).as_millis()).unwrap_or(u64::MAX)
    }

    fn collect(&mut self) -> Vec<Seen> {
        let at = self.ms();
        self.core
            .drain()
            .map(|o| match o {
                Output::Send { bytes, .. } => Seen::Sent {
                    at,
                    line: line(&bytes),
                },
                Output::Tu(event) => Seen::Tu { at, event },
                Output::Client { to, event } => Seen::Client { at, to, event },
            })
            .collect()
    }

    fn receive(&mut self, msg: Message, proto: Proto) -> Vec<Seen> {
        self.core.on_message(self.now, msg, peer(proto));
        self.collect()
    }

    fn respond(&mut self, id: &ServerTxnId, resp: Message) -> Vec<Seen> {
        self.core.respond(self.now, id, resp, false);
        self.collect()
    }

    /// Moves the clock to `ms` after the start, firing every timer due on
    /// the way at its own instant; returns what they did.
    fn advance_to(&mut self, ms: u64) -> Vec<Seen> {
        let until = self.t0 + Duration::from_millis(ms);
        let mut seen = Vec::new();
        while let Some(at) = self.core.next_deadline().filter(|at| *at <= until) {
            self.now = at.max(self.now);
            self.core.on_timers(self.now);
            seen.extend(self.collect());
        }
        self.now = until.max(self.now);
        seen
    }
}

/// The times (ms) at which lines starting with `prefix` were sent.
fn sent_at(seen: &[Seen], prefix: &str) -> Vec<u64> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Sent { at, line } if line.starts_with(prefix) => Some(*at),
            _ => None,
        })
        .collect()
}

fn lines(seen: &[Seen]) -> Vec<&str> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Sent { line, .. } => Some(line.as_str()),
            _ => None,
        })
        .collect()
}

/// The server transaction a request created (from its TU event).
fn new_request(seen: &[Seen]) -> ServerTxnId {
    seen.iter()
        .find_map(|s| match s {
            Seen::Tu {
                event: TuEvent::Request(r),
                ..
            } => Some(r.id.clone()),
            _ => None,
        })
        .expect("a request for the TU")
}

fn tu_events(seen: &[Seen]) -> usize {
    seen.iter().filter(|s| matches!(s, Seen::Tu { .. })).count()
}

/// Cumulative times of retransmissions starting at T1 and doubling, capped
/// at `cap`, strictly before `end` ms.
fn schedule(cap: Option<u64>, end: u64) -> Vec<u64> {
    let (mut at, mut interval, mut out) = (0, 500, Vec::new());
    loop {
        at += interval;
        if at >= end {
            return out;
        }
        out.push(at);
        interval = cap.map_or(interval * 2, |c| (interval * 2).min(c));
    }
}

// ----- server INVITE -----

#[test]
fn invite_gets_100_trying_at_once_and_again_for_a_retransmission() {
    let mut c = Clock::new();
    let seen = c.receive(invite(Proto::Udp), Proto::Udp);
    // RFC 3261 17.2.1 allows 100 at once or after 200 ms: at once, since
    // the TU may take longer and the peer stops retransmitting on it.
    assert_eq!(lines(&seen), ["SIP/2.0 100 Trying"]);
    assert_eq!(sent_at(&seen, "SIP/2.0 100"), [0]);
    let id = new_request(&seen);
    assert_eq!(c.core.server_state(&id), Some(SState::Proceeding));
    c.advance_to(500);
    let again = c.receive(invite(Proto::Udp), Proto::Udp);
    assert_eq!(lines(&again), ["SIP/2.0 100 Trying"]);
    assert_eq!(tu_events(&again), 0, "a retransmission is absorbed");
}

#[test]
fn timer_g_doubles_to_t2_and_timer_h_ends_an_unacknowledged_answer() {
    let mut c = Clock::new();
    let id = new_request(&c.receive(invite(Proto::Udp), Proto::Udp));
    let busy = invite(Proto::Udp).response(486, "Busy Here", Some("ours"));
    assert_eq!(sent_at(&c.respond(&id, busy), "SIP/2.0 486"), [0]);
    assert_eq!(c.core.server_state(&id), Some(SState::Completed));
    let seen = c.advance_to(40_000);
    // G: T1, 2T1, 4T1, then T2 (4 s) until H at 64*T1.
    assert_eq!(sent_at(&seen, "SIP/2.0 486"), schedule(Some(4000), 32_000));
    assert_eq!(sent_at(&seen, "SIP/2.0 486")[..4], [500, 1500, 3500, 7500]);
    assert_eq!(c.core.server_state(&id), None, "timer H ended it at 32 s");
    assert_eq!(tu_events(&seen), 0);
    assert_eq!(c.core.armed_timers(), 0, "nothing outlives the transaction");
}

#[test]
fn timer_h_fires_at_64_t1() {
    let mut c = Clock::new();
    let id = new_request(&c.receive(invite(Proto::Udp), Proto::Udp));
    c.respond(
        &id,
        invite(Proto::Udp).response(486, "Busy Here", Some("o")),
    );
    c.advance_to(31_999);
    assert_eq!(c.core.server_state(&id), Some(SState::Completed));
    c.advance_to(32_000);
    assert_eq!(c.core.server_state(&id), None);
}

#[test]
fn ack_for_a_non_2xx_stops_timer_g_and_timer_i_ends_after_t4() {
    let mut c = Clock::new();
    let id = new_request(&c.receive(invite(Proto::Udp), Proto::Udp));
    c.respond(
        &id,
        invite(Proto::Udp).response(486, "Busy Here", Some("ours")),
    );
    c.advance_to(1_000);
    let seen = c.receive(ack_same_branch(Proto::Udp, "ours"), Proto::Udp);
    assert_eq!(tu_events(&seen), 0, "the ACK for a non-2xx is the layer's");
    assert_eq!(c.core.server_state(&id), Some(SState::Confirmed));
    // Retransmitted ACKs are absorbed in Confirmed.
    assert!(
        c.receive(ack_same_branch(Proto::Udp, "ours"), Proto::Udp)
            .is_empty()
    );
    let seen = c.advance_to(5_999);
    assert!(
        sent_at(&seen, "SIP/2.0 486").is_empty(),
        "G stopped: {seen:?}"
    );
    assert_eq!(c.core.server_state(&id), Some(SState::Confirmed));
    c.advance_to(6_000);
    assert_eq!(c.core.server_state(&id), None, "timer I = T4 after the ACK");
    assert_eq!(c.core.armed_timers(), 0);
}

#[test]
fn over_tcp_no_timer_g_and_timer_i_is_zero() {
    let mut c = Clock::new();
    let id = new_request(&c.receive(invite(Proto::Tcp), Proto::Tcp));
    c.respond(
        &id,
        invite(Proto::Tcp).response(486, "Busy Here", Some("ours")),
    );
    assert!(
        c.advance_to(10_000).is_empty(),
        "no retransmission over TCP"
    );
    c.receive(ack_same_branch(Proto::Tcp, "ours"), Proto::Tcp);
    c.advance_to(10_000);
    assert_eq!(c.core.server_state(&id), None);
}

#[test]
fn a_2xx_is_retransmitted_until_its_ack_and_timer_l_absorbs_invites() {
    let mut c = Clock::new();
    let id = new_request(&c.receive(invite(Proto::Udp), Proto::Udp));
    c.respond(&id, invite(Proto::Udp).response(200, "OK", Some("ours")));
    assert_eq!(c.core.server_state(&id), Some(SState::Accepted));
    let seen = c.advance_to(8_000);
    assert_eq!(sent_at(&seen, "SIP/2.0 200"), [500, 1500, 3500, 7500]);
    // A retransmitted INVITE in Accepted is not a new request (RFC 6026).
    let again = c.receive(invite(Proto::Udp), Proto::Udp);
    assert_eq!(tu_events(&again), 0);
    // The ACK has its own branch; it matches the 2xx on the dialog id.
    let seen = c.receive(ack_new_branch(Proto::Udp, "ours"), Proto::Udp);
    assert!(
        matches!(
            seen.as_slice(),
            [Seen::Tu {
                event: TuEvent::Ack { .. },
                ..
            }]
        ),
        "{seen:?}"
    );
    let seen = c.advance_to(31_999);
    assert!(sent_at(&seen, "SIP/2.0 200").is_empty(), "ACKed: {seen:?}");
    assert_eq!(c.core.server_state(&id), Some(SState::Accepted));
    c.advance_to(32_000);
    assert_eq!(c.core.server_state(&id), None, "timer L at 64*T1");
    assert_eq!(c.core.armed_timers(), 0);
}

#[test]
fn an_unacknowledged_2xx_is_capped_at_t2_and_times_out_for_its_dialog_only() {
    let mut c = Clock::new();
    let id = new_request(&c.receive(invite(Proto::Udp), Proto::Udp));
    c.respond(&id, invite(Proto::Udp).response(200, "OK", Some("ours")));
    // An ACK of another dialog (other To tag) does not stop it.
    let seen = c.receive(ack_new_branch(Proto::Udp, "other"), Proto::Udp);
    assert_eq!(tu_events(&seen), 1, "passed on for the TU to ignore");
    let seen = c.advance_to(40_000);
    assert_eq!(sent_at(&seen, "SIP/2.0 200"), schedule(Some(4000), 32_000));
    let timeouts: Vec<_> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Tu {
                at,
                event:
                    TuEvent::AckTimeout {
                        call_id,
                        local_tag,
                        remote_tag,
                        cseq,
                    },
            } => Some((
                *at,
                call_id.as_str(),
                local_tag.as_str(),
                remote_tag.as_str(),
                *cseq,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(timeouts, [(32_000, "call-1", "ours", "theirs", 1)]);
}

#[test]
fn over_tcp_a_2xx_is_sent_once_and_still_awaits_its_ack() {
    let mut c = Clock::new();
    let id = new_request(&c.receive(invite(Proto::Tcp), Proto::Tcp));
    c.respond(&id, invite(Proto::Tcp).response(200, "OK", Some("ours")));
    let seen = c.advance_to(40_000);
    assert!(sent_at(&seen, "SIP/2.0 200").is_empty());
    assert!(
        seen.iter().any(|s| matches!(
            s,
            Seen::Tu {
                at: 32_000,
                event: TuEvent::AckTimeout { .. }
            }
        )),
        "{seen:?}"
    );
}

#[test]
fn a_tu_that_never_answers_is_abandoned() {
    let mut c = Clock::new();
    let id = new_request(&c.receive(invite(Proto::Udp), Proto::Udp));
    c.advance_to(299_999);
    assert_eq!(c.core.server_state(&id), Some(SState::Proceeding));
    c.advance_to(300_000);
    assert_eq!(c.core.server_state(&id), None);
    assert_eq!(c.core.armed_timers(), 0);
}

#[test]
fn responses_after_the_final_one_are_dropped() {
    let mut c = Clock::new();
    let id = new_request(&c.receive(invite(Proto::Udp), Proto::Udp));
    c.respond(
        &id,
        invite(Proto::Udp).response(180, "Ringing", Some("ours")),
    );
    c.respond(
        &id,
        invite(Proto::Udp).response(486, "Busy Here", Some("ours")),
    );
    assert!(
        c.respond(&id, invite(Proto::Udp).response(200, "OK", Some("ours")))
            .is_empty()
    );
    assert_eq!(c.core.server_state(&id), Some(SState::Completed));
}

// ----- CANCEL -----

#[test]
fn a_cancel_before_the_final_answer_always_yields_487_and_no_later_200() {
    let mut c = Clock::new();
    let inv = new_request(&c.receive(invite(Proto::Udp), Proto::Udp));
    c.respond(
        &inv,
        invite(Proto::Udp).response(180, "Ringing", Some("ours")),
    );
    let seen = c.receive(request(Method::Cancel, "inv", Proto::Udp), Proto::Udp);
    assert_eq!(
        lines(&seen),
        ["SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"]
    );
    assert!(
        matches!(seen.last(), Some(Seen::Tu { event: TuEvent::Cancelled { invite }, .. }) if *invite == inv),
        "{seen:?}"
    );
    // The TU's 200 was already on its way: dropped, never after the 487.
    assert!(
        c.respond(&inv, invite(Proto::Udp).response(200, "OK", Some("ours")))
            .is_empty()
    );
    assert_eq!(c.core.server_state(&inv), Some(SState::Completed));
    // The 487 is retransmitted (G) until its ACK.
    let seen = c.advance_to(600);
    assert_eq!(sent_at(&seen, "SIP/2.0 487"), [500]);
    c.receive(ack_same_branch(Proto::Udp, "ours"), Proto::Udp);
    assert_eq!(c.core.server_state(&inv), Some(SState::Confirmed));
    // A retransmitted CANCEL gets the same 200 and no second event.
    let again = c.receive(request(Method::Cancel, "inv", Proto::Udp), Proto::Udp);
    assert_eq!(lines(&again), ["SIP/2.0 200 OK"]);
    assert_eq!(tu_events(&again), 0);
}

#[test]
fn the_487_and_the_200_to_cancel_carry_the_early_dialogs_tag() {
    let mut c = Clock::new();
    let inv = new_request(&c.receive(invite(Proto::Udp), Proto::Udp));
    c.respond(
        &inv,
        invite(Proto::Udp).response(183, "Session Progress", Some("early1")),
    );
    c.core.on_message(
        c.now,
        request(Method::Cancel, "inv", Proto::Udp),
        peer(Proto::Udp),
    );
    let to_tags: Vec<String> = c
        .core
        .drain()
        .filter_map(|o| match o {
            Output::Send { bytes, .. } => Some(String::from_utf8_lossy(&bytes).into_owned()),
            _ => None,
        })
        .map(|text| {
            text.lines()
                .find(|l| l.starts_with("To:"))
                .and_then(|l| l.split("tag=").nth(1))
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(to_tags, ["early1", "early1"]);
}

#[test]
fn a_cancel_after_the_answer_has_no_effect() {
    let mut c = Clock::new();
    let inv = new_request(&c.receive(invite(Proto::Udp), Proto::Udp));
    c.respond(&inv, invite(Proto::Udp).response(200, "OK", Some("ours")));
    let seen = c.receive(request(Method::Cancel, "inv", Proto::Udp), Proto::Udp);
    assert_eq!(lines(&seen), ["SIP/2.0 200 OK"]);
    assert_eq!(tu_events(&seen), 0);
    assert_eq!(c.core.server_state(&inv), Some(SState::Accepted));
}

#[test]
fn a_cancel_that_matches_no_invite_gets_481() {
    let mut c = Clock::new();
    let seen = c.receive(request(Method::Cancel, "nothing", Proto::Udp), Proto::Udp);
    assert_eq!(
        lines(&seen),
        ["SIP/2.0 481 Call/Transaction Does Not Exist"]
    );
    assert_eq!(tu_events(&seen), 0);
}

// ----- server non-INVITE -----

#[test]
fn non_invite_timer_j_absorbs_retransmissions_for_64_t1_over_udp() {
    let mut c = Clock::new();
    let id = new_request(&c.receive(request(Method::Options, "opt", Proto::Udp), Proto::Udp));
    assert_eq!(
        lines(&c.respond(
            &id,
            request(Method::Options, "opt", Proto::Udp).response(200, "OK", None)
        )),
        ["SIP/2.0 200 OK"]
    );
    assert_eq!(c.core.server_state(&id), Some(SState::Completed));
    // No retransmission of its own (only INVITE answers have Timer G).
    assert!(c.advance_to(20_000).is_empty());
    let again = c.receive(request(Method::Options, "opt", Proto::Udp), Proto::Udp);
    assert_eq!(lines(&again), ["SIP/2.0 200 OK"]);
    assert_eq!(tu_events(&again), 0);
    c.advance_to(31_999);
    assert!(c.core.server_state(&id).is_some());
    c.advance_to(32_000);
    assert_eq!(c.core.server_state(&id), None);
}

#[test]
fn non_invite_timer_j_is_zero_over_tcp() {
    let mut c = Clock::new();
    let id = new_request(&c.receive(request(Method::Options, "opt", Proto::Tcp), Proto::Tcp));
    c.respond(
        &id,
        request(Method::Options, "opt", Proto::Tcp).response(200, "OK", None),
    );
    c.advance_to(0);
    assert_eq!(c.core.server_state(&id), None);
}

#[test]
fn the_transaction_table_is_bounded_per_source_with_a_stateless_503() {
    let mut c = Clock::with_limits(TxnLimits {
        max_server: 10,
        max_server_per_source: 2,
        retry_after_secs: 7,
    });
    for b in ["a", "b"] {
        new_request(&c.receive(request(Method::Options, b, Proto::Udp), Proto::Udp));
    }
    c.core.on_message(
        c.now,
        request(Method::Options, "c", Proto::Udp),
        peer(Proto::Udp),
    );
    let out: Vec<String> = c
        .core
        .drain()
        .filter_map(|o| match o {
            Output::Send { bytes, .. } => Some(String::from_utf8_lossy(&bytes).into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(out.len(), 1);
    assert!(out[0].starts_with("SIP/2.0 503"), "{}", out[0]);
    assert!(out[0].contains("Retry-After: 7"), "{}", out[0]);
    // Its retransmission gets another 503: nothing was kept.
    let again = c.receive(request(Method::Options, "c", Proto::Udp), Proto::Udp);
    assert_eq!(sent_at(&again, "SIP/2.0 503"), [0]);
    assert_eq!(tu_events(&again), 0);
}

// ----- client INVITE -----

fn start_client(
    c: &mut Clock,
    method: Method,
    branch: &str,
    proto: Proto,
) -> (ClientTxnId, Vec<Seen>) {
    let req = request(method.clone(), branch, proto);
    let id = ClientTxnId(format!("z9hG4bK{branch}|{}", method.as_str()).into());
    c.core.request(c.now, id.clone(), req, peer(proto), "owner");
    let seen = c.collect();
    (id, seen)
}

fn response_to(method: Method, branch: &str, code: u16, proto: Proto) -> Message {
    request(method, branch, proto).response(code, reason_phrase(code), Some("remote"))
}

fn client_events(seen: &[Seen]) -> Vec<(u64, String)> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Client { at, to, event } => {
                assert_eq!(*to, "owner");
                let what = match event {
                    ClientEvent::Response(m) => format!("{}", m.code().unwrap_or(0)),
                    ClientEvent::Timeout => "timeout".into(),
                    ClientEvent::TransportError => "transport error".into(),
                };
                Some((*at, what))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn timer_a_doubles_without_cap_and_timer_b_times_out() {
    let mut c = Clock::new();
    let (id, seen) = start_client(&mut c, Method::Invite, "out", Proto::Udp);
    assert_eq!(sent_at(&seen, "INVITE"), [0]);
    let seen = c.advance_to(40_000);
    assert_eq!(
        sent_at(&seen, "INVITE"),
        [500, 1500, 3500, 7500, 15500, 31500]
    );
    assert_eq!(client_events(&seen), [(32_000, "timeout".to_owned())]);
    assert_eq!(c.core.client_state(&id), None);
}

#[test]
fn a_provisional_stops_timer_a_and_b_and_a_non_2xx_is_acked_until_timer_d() {
    let mut c = Clock::new();
    let (id, _) = start_client(&mut c, Method::Invite, "out", Proto::Udp);
    c.advance_to(700);
    let seen = c.receive(
        response_to(Method::Invite, "out", 180, Proto::Udp),
        Proto::Udp,
    );
    assert_eq!(client_events(&seen), [(700, "180".to_owned())]);
    assert_eq!(c.core.client_state(&id), Some(CState::Proceeding));
    let seen = c.advance_to(60_000);
    assert!(seen.is_empty(), "no A, no B once proceeding: {seen:?}");
    let seen = c.receive(
        response_to(Method::Invite, "out", 486, Proto::Udp),
        Proto::Udp,
    );
    assert_eq!(client_events(&seen), [(60_000, "486".to_owned())]);
    assert_eq!(lines(&seen), ["ACK sip:+15550001111@node SIP/2.0"]);
    assert_eq!(c.core.client_state(&id), Some(CState::Completed));
    // A retransmitted final answer: the ACK again, not a second event.
    let again = c.receive(
        response_to(Method::Invite, "out", 486, Proto::Udp),
        Proto::Udp,
    );
    assert_eq!(sent_at(&again, "ACK"), [60_000]);
    assert!(client_events(&again).is_empty());
    c.advance_to(60_000 + 31_999);
    assert_eq!(c.core.client_state(&id), Some(CState::Completed));
    c.advance_to(60_000 + 32_000);
    assert_eq!(c.core.client_state(&id), None, "timer D = 64*T1 over UDP");
}

#[test]
fn timer_d_is_zero_over_tcp_and_there_is_no_timer_a() {
    let mut c = Clock::new();
    let (id, _) = start_client(&mut c, Method::Invite, "out", Proto::Tcp);
    assert!(sent_at(&c.advance_to(10_000), "INVITE").is_empty());
    c.receive(
        response_to(Method::Invite, "out", 503, Proto::Tcp),
        Proto::Tcp,
    );
    c.advance_to(10_000);
    assert_eq!(c.core.client_state(&id), None);
}

#[test]
fn a_2xx_moves_to_accepted_and_retransmitted_2xx_get_the_ack_until_timer_m() {
    let mut c = Clock::new();
    let (id, _) = start_client(&mut c, Method::Invite, "out", Proto::Udp);
    let seen = c.receive(
        response_to(Method::Invite, "out", 200, Proto::Udp),
        Proto::Udp,
    );
    assert_eq!(client_events(&seen), [(0, "200".to_owned())]);
    assert_eq!(c.core.client_state(&id), Some(CState::Accepted));
    let mut ack = request(Method::Ack, "ack", Proto::Udp);
    ack.set("To", "<sip:+15550001111@node>;tag=remote");
    c.core.ack(Some(&id), ack, peer(Proto::Udp));
    assert_eq!(sent_at(&c.collect(), "ACK"), [0]);
    c.advance_to(2_000);
    let again = c.receive(
        response_to(Method::Invite, "out", 200, Proto::Udp),
        Proto::Udp,
    );
    assert_eq!(sent_at(&again, "ACK"), [2_000], "the lost ACK is repeated");
    assert!(client_events(&again).is_empty());
    c.advance_to(32_000);
    assert_eq!(c.core.client_state(&id), None, "timer M");
}

#[test]
fn cancelling_a_client_invite_sends_a_cancel_on_its_own_transaction() {
    let mut c = Clock::new();
    let (id, _) = start_client(&mut c, Method::Invite, "out", Proto::Udp);
    c.receive(
        response_to(Method::Invite, "out", 180, Proto::Udp),
        Proto::Udp,
    );
    c.core.cancel(c.now, &id, "owner");
    let seen = c.collect();
    assert_eq!(lines(&seen), ["CANCEL sip:+15550001111@node SIP/2.0"]);
    let cancel_id = ClientTxnId("z9hG4bKout|CANCEL".into());
    assert_eq!(c.core.client_state(&cancel_id), Some(CState::Calling));
    // A CANCEL for an unknown INVITE reports a timeout at once.
    c.core
        .cancel(c.now, &ClientTxnId("gone|INVITE".into()), "owner");
    assert_eq!(client_events(&c.collect()), [(0, "timeout".to_owned())]);
}

// ----- client non-INVITE -----

#[test]
fn timer_e_caps_at_t2_and_timer_f_times_out() {
    let mut c = Clock::new();
    let (id, _) = start_client(&mut c, Method::Bye, "bye", Proto::Udp);
    let seen = c.advance_to(40_000);
    assert_eq!(sent_at(&seen, "BYE"), schedule(Some(4000), 32_000));
    assert_eq!(client_events(&seen), [(32_000, "timeout".to_owned())]);
    assert_eq!(c.core.client_state(&id), None);
}

#[test]
fn timer_e_goes_at_t2_once_proceeding_and_timer_f_still_applies() {
    let mut c = Clock::new();
    let (_, _) = start_client(&mut c, Method::Bye, "bye", Proto::Udp);
    let first = c.advance_to(600);
    assert_eq!(sent_at(&first, "BYE"), [500]);
    c.receive(response_to(Method::Bye, "bye", 100, Proto::Udp), Proto::Udp);
    // Armed at 500 for 1000 (doubling); from then on every T2.
    let seen = c.advance_to(40_000);
    let at = sent_at(&seen, "BYE");
    assert_eq!(at[..3], [1500, 5500, 9500]);
    assert!(at.windows(2).skip(1).all(|w| w[1] - w[0] == 4000), "{at:?}");
    assert_eq!(client_events(&seen), [(32_000, "timeout".to_owned())]);
}

#[test]
fn timer_k_is_t4_over_udp_and_zero_over_tcp() {
    for (proto, k) in [(Proto::Udp, 5_000), (Proto::Tcp, 0)] {
        let mut c = Clock::new();
        let (id, _) = start_client(&mut c, Method::Bye, "bye", proto);
        let seen = c.receive(response_to(Method::Bye, "bye", 200, proto), proto);
        assert_eq!(client_events(&seen), [(0, "200".to_owned())]);
        assert!(sent_at(&c.advance_to(k.max(1) - 1), "BYE").is_empty());
        if k > 0 {
            assert_eq!(c.core.client_state(&id), Some(CState::Completed));
        }
        c.advance_to(k);
        assert_eq!(c.core.client_state(&id), None, "{proto:?}");
        // A late retransmitted answer finds nothing.
        let late = c.receive(response_to(Method::Bye, "bye", 200, proto), proto);
        assert!(late.is_empty());
    }
}

#[test]
fn a_refused_first_send_is_a_transport_error() {
    let mut c = Clock::new();
    let (id, seen) = start_client(&mut c, Method::Options, "o", Proto::Tcp);
    assert!(matches!(seen.as_slice(), [Seen::Sent { .. }]));
    c.core.send_failed(&id);
    assert_eq!(
        client_events(&c.collect()),
        [(0, "transport error".to_owned())]
    );
    assert_eq!(c.core.client_state(&id), None);
}

// ----- messages and keys -----

fn plain_invite() -> Message {
    let mut m = Message::request(Method::Invite, "sip:1@h");
    m.push_header("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc");
    m.push_header("Route", "<sip:p@h;lr>");
    m.push_header("From", "<sip:a@h>;tag=f");
    m.push_header("To", "<sip:1@h>");
    m.push_header("Call-ID", "cid");
    m.push_header("CSeq", "7 INVITE");
    m
}

type Core = Transactions<()>;

#[test]
fn ack_for_non_2xx_reuses_branch_and_to_tag() {
    let inv = plain_invite();
    let mut resp = inv.response(486, "Busy Here", Some("tt"));
    resp.set("To", "<sip:1@h>;tag=tt");
    let ack = non_2xx_ack(&inv, &resp);
    assert_eq!(ack.top_via(), inv.top_via());
    assert_eq!(ack.header("To"), Some("<sip:1@h>;tag=tt"));
    assert_eq!(ack.header("CSeq"), Some("7 ACK"));
    assert_eq!(ack.header("Route"), Some("<sip:p@h;lr>"));
}

#[test]
fn cancel_matches_invite() {
    let c = cancel_for(&plain_invite());
    assert_eq!(
        c.top_via(),
        Some("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc")
    );
    assert_eq!(c.cseq(), Some((7, Method::Cancel)));
    assert_eq!(c.header("To"), Some("<sip:1@h>"));
}

#[test]
fn server_keys_match_ack_and_cancel_to_invite() {
    let inv = plain_invite();
    let via = Via::parse(inv.top_via().unwrap_or_default()).expect("via");
    let key = |via: &Via, m: &Method| Core::server_key(via, &inv, m).expect("key");
    let k_inv = key(&via, &Method::Invite);
    let k_ack = key(&via, &Method::Ack);
    let k_cancel = key(&via, &Method::Cancel);
    assert_eq!(k_inv, k_ack);
    assert_ne!(k_inv, k_cancel);
    let old = Via::parse("SIP/2.0/UDP 10.0.0.1;branch=1234").expect("via");
    let k_old = key(&old, &Method::Invite);
    assert!(k_old.0.starts_with("2543|cid|"));
    // Same branch from another sent-by is another transaction.
    let other = Via::parse("SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKabc").expect("via");
    assert_ne!(key(&other, &Method::Invite), k_inv);
}

#[test]
fn server_keys_are_bounded() {
    let inv = plain_invite();
    let via_with = |branch: &str| {
        Via::parse(&format!("SIP/2.0/UDP 10.0.0.1:5060;branch={branch}")).expect("via")
    };
    let longest = format!("z9hG4bK{}", "a".repeat(MAX_BRANCH_LEN - 7));
    let k = Core::server_key(&via_with(&longest), &inv, &Method::Invite)
        .expect("a branch at the bound is accepted");
    assert!(k.0.len() <= MAX_KEY_LEN);
    let too_long = format!("{longest}a");
    assert_eq!(
        Core::server_key(&via_with(&too_long), &inv, &Method::Invite),
        Err("Via branch too long")
    );
    // RFC 2543 keys carry the Call-ID and Request-URI: bounded as well.
    let mut old = plain_invite();
    old.set("Call-ID", "c".repeat(MAX_KEY_LEN));
    let via = Via::parse("SIP/2.0/UDP 10.0.0.1;branch=1234").expect("via");
    assert_eq!(
        Core::server_key(&via, &old, &Method::Invite),
        Err("transaction key too long")
    );
}

#[test]
fn ack_key_is_the_full_dialog_id() {
    let inv = plain_invite();
    let ok = inv.response(200, "OK", Some("ours"));
    let mut ack = Message::request(Method::Ack, "sip:1@h");
    ack.push_header("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKack");
    ack.push_header("From", "<sip:a@h>;tag=f");
    ack.push_header("To", "<sip:1@h>;tag=ours");
    ack.push_header("Call-ID", "cid");
    ack.push_header("CSeq", "7 ACK");
    assert_eq!(AckKey::of(&ok), AckKey::of(&ack));
    // The same Call-ID and CSeq in another dialog is another key.
    let mut other = inv.clone();
    other.set("From", "<sip:a@h>;tag=g");
    let other_ok = other.response(200, "OK", Some("theirs"));
    assert_ne!(AckKey::of(&other_ok), AckKey::of(&ok));
}

#[test]
fn validation_rejects_missing_headers() {
    let mut m = plain_invite();
    assert!(Core::validate(&m, &Method::Invite).is_ok());
    assert_eq!(
        Core::validate(&m, &Method::Bye).err(),
        Some("CSeq method does not match")
    );
    m.remove("Call-ID");
    assert_eq!(
        Core::validate(&m, &Method::Invite).err(),
        Some("missing Call-ID")
    );
}
