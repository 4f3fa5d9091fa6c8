//! Dialog state (RFC 3261 12): identifiers, CSeq spaces, the remote target
//! and the route set, building requests inside the dialog, and the rules for
//! the peer's in-dialog requests ([`Dialog::classify`]: CSeq order, re-INVITE
//! and UPDATE glare, which method does what; [`Dialog::refresh_target`]).
//! Pure: the call layer does what the answer says.

use crate::sip::headers::{SipUri, param, uri_text};
use crate::sip::message::{Message, Method};
use crate::sip::transport::{Peer, Proto};

/// Errors creating a dialog.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DialogError {
    /// A header the dialog needs is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A header the dialog needs is unusable.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// The URI of a Contact value as the target of in-dialog requests, or `None` when it cannot
/// be one. It becomes the Request-URI of the BYE we send, so it must pass the framer's
/// Request-URI rule (a scheme, no whitespace) or the peer cannot parse our request.
fn contact_target(contact: &str) -> Option<String> {
    let uri = uri_text(contact);
    (uri.contains(':') && !uri.chars().any(|c| c.is_whitespace() || c.is_control()))
        .then(|| uri.to_owned())
}

/// The scheme of a URI (or of the first URI in a header value), lower-cased: SIP schemes
/// are case-insensitive (RFC 3261 19.1.4).
pub fn scheme_of(uri_or_header: &str) -> String {
    let uri = uri_text(uri_or_header).trim_start();
    uri.split_once(':')
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default()
}

/// True when our Contact in the answer to `request` must be a SIPS URI (RFC 3261 12.1.1):
/// its Request-URI is `sips:`, or its top Record-Route is, or (no Record-Route) its Contact.
pub fn wants_sips(request: &Message) -> bool {
    let sips = |v: &str| scheme_of(v) == "sips";
    if request.request_uri().is_some_and(sips) {
        return true;
    }
    match request.headers_named("Record-Route").next() {
        Some(top) => sips(top),
        None => request.header("Contact").is_some_and(sips),
    }
}

/// A request of ours in the dialog still waiting for its final answer, as
/// far as glare is concerned (RFC 3261 14.2, RFC 3311 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outstanding {
    /// Nothing of ours is pending.
    Nothing,
    /// A re-INVITE (ours always carry an offer).
    Invite,
    /// An UPDATE; `offer` when it carries SDP.
    Update {
        /// The UPDATE carries an offer.
        offer: bool,
    },
}

impl Outstanding {
    fn has_offer(self) -> bool {
        matches!(
            self,
            Outstanding::Invite | Outstanding::Update { offer: true }
        )
    }
}

/// What the call does with an in-dialog request from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InDialog {
    /// Answer with this code and change nothing: 500 for a CSeq out of
    /// order, 491 for glare, 481 for PRACK (we never send reliable
    /// provisionals), 501 for unknown methods, 405 for the rest.
    Refuse(u16),
    /// BYE: answer 200 and end the call.
    Bye,
    /// re-INVITE or UPDATE: an offer, or a session refresh without one.
    Offer,
    /// INFO (DTMF).
    Info,
    /// OPTIONS inside the dialog.
    Options,
    /// NOTIFY: progress of a REFER of ours (RFC 3515), or 481 when none is
    /// under way (RFC 6665 4.1.3).
    Notify,
}

/// True when a request carries an SDP body (an offer, in a request).
pub fn carries_sdp(msg: &Message) -> bool {
    !msg.body.is_empty()
        && msg
            .header("Content-Type")
            .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/sdp"))
}

/// One dialog, from our point of view.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag.
    pub remote_tag: String,
    /// Our From/To value (with our tag).
    pub local: String,
    /// The peer's From/To value (with its tag).
    pub remote: String,
    /// Our next CSeq number.
    pub local_cseq: u32,
    /// Highest CSeq number seen from the peer.
    pub remote_cseq: Option<u32>,
    /// The peer's Contact URI.
    pub remote_target: String,
    /// Route set, in the order to put into Route headers.
    pub route_set: Vec<String>,
    /// Where in-dialog requests go when the target is not an IP literal.
    pub peer: Peer,
    /// Our Contact header value.
    pub contact: String,
}

impl Dialog {
    /// The dialog a UAS creates when answering `invite` (RFC 3261 12.1.1).
    pub fn uas(
        invite: &Message,
        local_tag: &str,
        peer: Peer,
        contact: String,
    ) -> Result<Dialog, DialogError> {
        let from = invite.header("From").ok_or(DialogError::Missing("From"))?;
        let to = invite.header("To").ok_or(DialogError::Missing("To"))?;
        let target = match invite.header("Contact") {
            Some(c) => Some(contact_target(c).ok_or(DialogError::Invalid("Contact"))?),
            None => None,
        };
        Ok(Dialog {
            call_id: invite
                .call_id()
                .ok_or(DialogError::Missing("Call-ID"))?
                .to_owned(),
            local_tag: local_tag.to_owned(),
            remote_tag: param(from, "tag").unwrap_or("").to_owned(),
            local: format!("{to};tag={local_tag}"),
            remote: from.to_owned(),
            local_cseq: rand::random::<u16>() as u32 + 1,
            remote_cseq: invite.cseq().map(|c| c.0),
            remote_target: target
                .unwrap_or_else(|| invite.request_uri().unwrap_or_default().to_owned()),
            route_set: invite
                .headers_named("Record-Route")
                .map(str::to_owned)
                .collect(),
            peer,
            contact,
        })
    }

    /// The dialog a UAC creates from a 2xx (or 1xx with tag) to its INVITE
    /// (RFC 3261 12.1.2).
    pub fn uac(
        invite: &Message,
        resp: &Message,
        peer: Peer,
        contact: String,
    ) -> Result<Dialog, DialogError> {
        let from = invite.header("From").ok_or(DialogError::Missing("From"))?;
        let to = resp.header("To").ok_or(DialogError::Missing("To"))?;
        let mut routes: Vec<String> = resp
            .headers_named("Record-Route")
            .map(str::to_owned)
            .collect();
        routes.reverse();
        Ok(Dialog {
            call_id: invite
                .call_id()
                .ok_or(DialogError::Missing("Call-ID"))?
                .to_owned(),
            local_tag: param(from, "tag").unwrap_or("").to_owned(),
            remote_tag: param(to, "tag").unwrap_or("").to_owned(),
            local: from.to_owned(),
            remote: to.to_owned(),
            local_cseq: invite.cseq().map(|c| c.0).unwrap_or(1),
            remote_cseq: None,
            // An unusable Contact in the answer is treated like a missing one, so the call can
            // still be acknowledged and hung up.
            remote_target: resp
                .header("Contact")
                .and_then(contact_target)
                .unwrap_or_else(|| invite.request_uri().unwrap_or_default().to_owned()),
            route_set: routes,
            peer,
            contact,
        })
    }

    /// Checks and records a request's CSeq (RFC 3261 12.2.2): lower than
    /// the last one means out of order (answer 500).
    pub fn accept_remote_cseq(&mut self, cseq: u32, method: &Method) -> bool {
        if *method == Method::Ack || *method == Method::Cancel {
            return true;
        }
        match self.remote_cseq {
            Some(last) if cseq <= last => false,
            _ => {
                self.remote_cseq = Some(cseq);
                true
            }
        }
    }

    /// Decides what an in-dialog request from the peer gets, given what of
    /// ours is pending, and records its CSeq when it is in order (RFC 3261
    /// 12.2.2). ACK and CANCEL never come here (the transaction layer and
    /// the call handle them).
    pub fn classify(&mut self, msg: &Message, ours: Outstanding) -> InDialog {
        let Some((cseq, method)) = msg.cseq() else {
            return InDialog::Refuse(400);
        };
        if !self.accept_remote_cseq(cseq, &method) {
            return InDialog::Refuse(500);
        }
        match method {
            Method::Bye => InDialog::Bye,
            // An INVITE while one of ours (or an UPDATE offer of ours) is
            // unanswered is glare (RFC 3261 14.2, RFC 3311 5.2)...
            Method::Invite if ours.has_offer() => InDialog::Refuse(491),
            // ...and so is an UPDATE offer while an offer of ours is; an
            // UPDATE without SDP only refreshes the session and may cross.
            Method::Update if carries_sdp(msg) && ours.has_offer() => InDialog::Refuse(491),
            Method::Invite | Method::Update => InDialog::Offer,
            Method::Info => InDialog::Info,
            Method::Options => InDialog::Options,
            Method::Prack => InDialog::Refuse(481),
            Method::Other(m) if m == "NOTIFY" => InDialog::Notify,
            Method::Other(_) => InDialog::Refuse(501),
            _ => InDialog::Refuse(405),
        }
    }

    /// A target refresh the call accepted (re-INVITE or UPDATE, RFC 3261
    /// 12.2.2): its Contact becomes the remote target. An unusable Contact
    /// leaves the target as it was, so a hostile one cannot make our next
    /// request unparseable.
    pub fn refresh_target(&mut self, msg: &Message) {
        if let Some(target) = msg.header("Contact").and_then(contact_target) {
            self.remote_target = target;
        }
    }

    /// Where to send in-dialog requests: the first route (we assume loose
    /// routing) or the remote target, when it is an IP literal; otherwise
    /// back to the address the dialog's messages came from.
    pub fn next_hop(&self) -> Peer {
        let uri = self
            .route_set
            .first()
            .map(|r| uri_text(r))
            .unwrap_or(&self.remote_target);
        match SipUri::parse(uri) {
            Ok(u) => {
                let proto = match u.transport.as_deref() {
                    Some("tcp") => Proto::Tcp,
                    Some("udp") => Proto::Udp,
                    _ => self.peer.proto,
                };
                // The node does not open TLS connections to a peer that called it (it
                // would need the peer's name to verify): requests in a TLS dialog go
                // back over the connection the dialog came on (RFC 5923 style reuse).
                if proto == Proto::Tls || self.peer.proto == Proto::Tls {
                    return self.peer;
                }
                match u.socket_addr(5060) {
                    Some(addr) => Peer { proto, addr },
                    None => self.peer,
                }
            }
            Err(_) => self.peer,
        }
    }

    /// A new request in this dialog (RFC 3261 12.2.1.1). ACK and CANCEL
    /// reuse the INVITE's CSeq and are built elsewhere.
    pub fn request(&mut self, method: Method) -> Message {
        self.local_cseq += 1;
        self.request_with_cseq(method, self.local_cseq)
    }

    /// The ACK for a 2xx to our INVITE with CSeq `cseq`.
    pub fn ack(&self, cseq: u32) -> Message {
        self.request_with_cseq(Method::Ack, cseq)
    }

    fn request_with_cseq(&self, method: Method, cseq: u32) -> Message {
        let mut m = Message::request(method.clone(), self.remote_target.clone());
        for r in &self.route_set {
            m.add("Route", r.clone());
        }
        m.add("Max-Forwards", "70");
        m.add("From", self.local.clone());
        m.add("To", self.remote.clone());
        m.add("Call-ID", self.call_id.clone());
        m.add("CSeq", format!("{cseq} {method}"));
        m.add("Contact", self.contact.clone());
        m.add("User-Agent", crate::sip::USER_AGENT);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Peer {
        Peer {
            proto: Proto::Udp,
            addr: "10.0.0.9:5060".parse().expect("addr"),
        }
    }

    /// A dialog from an INVITE with CSeq 1 and no Record-Route.
    fn established() -> Dialog {
        let mut inv = invite();
        inv.remove("Record-Route");
        inv.set("CSeq", "1 INVITE");
        Dialog::uas(&inv, "ours", peer(), "<sip:node@10.0.0.1>".into()).expect("dialog")
    }

    fn in_dialog(method: Method, cseq: u32) -> Message {
        let mut m = Message::request(method.clone(), "sip:node@10.0.0.1");
        m.push_header("CSeq", &format!("{cseq} {}", method.as_str()));
        m
    }

    fn with_sdp(mut m: Message) -> Message {
        m.set_body("application/sdp", b"v=0\r\n".to_vec());
        m
    }

    #[test]
    fn a_request_out_of_cseq_order_is_500_and_not_recorded() {
        let mut d = established();
        // The INVITE had CSeq 1.
        assert_eq!(
            d.classify(&in_dialog(Method::Info, 1), Outstanding::Nothing),
            InDialog::Refuse(500)
        );
        assert_eq!(
            d.classify(&in_dialog(Method::Info, 5), Outstanding::Nothing),
            InDialog::Info
        );
        assert_eq!(
            d.classify(&in_dialog(Method::Info, 5), Outstanding::Nothing),
            InDialog::Refuse(500)
        );
        assert_eq!(
            d.classify(&in_dialog(Method::Info, 4), Outstanding::Nothing),
            InDialog::Refuse(500)
        );
        assert_eq!(d.remote_cseq, Some(5));
        // Gaps are fine (RFC 3261 12.2.2: only order matters).
        assert_eq!(
            d.classify(&in_dialog(Method::Bye, 90), Outstanding::Nothing),
            InDialog::Bye
        );
    }

    #[test]
    fn reinvite_glare_is_491_while_an_offer_of_ours_is_pending() {
        let cases = [
            (Outstanding::Nothing, InDialog::Offer),
            (Outstanding::Invite, InDialog::Refuse(491)),
            (Outstanding::Update { offer: true }, InDialog::Refuse(491)),
            // Our UPDATE without SDP is a refresh, not an offer.
            (Outstanding::Update { offer: false }, InDialog::Offer),
        ];
        for (i, (ours, want)) in cases.into_iter().enumerate() {
            let mut d = established();
            let cseq = 2 + u32::try_from(i).unwrap_or(0);
            assert_eq!(
                d.classify(&with_sdp(in_dialog(Method::Invite, cseq)), ours),
                want,
                "{ours:?}"
            );
            // An offerless re-INVITE is glare just the same (RFC 3261 14.2).
            let mut d = established();
            assert_eq!(
                d.classify(&in_dialog(Method::Invite, cseq), ours),
                want,
                "{ours:?}"
            );
        }
    }

    #[test]
    fn an_update_offer_is_491_during_our_offer_but_a_plain_refresh_may_cross() {
        let mut d = established();
        assert_eq!(
            d.classify(&with_sdp(in_dialog(Method::Update, 2)), Outstanding::Invite),
            InDialog::Refuse(491)
        );
        assert_eq!(
            d.classify(&in_dialog(Method::Update, 3), Outstanding::Invite),
            InDialog::Offer,
            "an UPDATE without SDP only refreshes the session timer"
        );
        assert_eq!(
            d.classify(
                &with_sdp(in_dialog(Method::Update, 4)),
                Outstanding::Update { offer: false }
            ),
            InDialog::Offer
        );
    }

    #[test]
    fn methods_map_to_what_the_call_does() {
        let mut d = established();
        let cases = [
            (Method::Options, InDialog::Options),
            (Method::Info, InDialog::Info),
            (Method::Prack, InDialog::Refuse(481)),
            (Method::Other("FOO".into()), InDialog::Refuse(501)),
            (Method::Other("NOTIFY".into()), InDialog::Notify),
            (Method::Register, InDialog::Refuse(405)),
            (Method::Bye, InDialog::Bye),
        ];
        for (i, (m, want)) in cases.into_iter().enumerate() {
            let cseq = 10 + u32::try_from(i).unwrap_or(0);
            assert_eq!(
                d.classify(&in_dialog(m.clone(), cseq), Outstanding::Nothing),
                want,
                "{m:?}"
            );
        }
        let mut no_cseq = Message::request(Method::Info, "sip:node@10.0.0.1");
        no_cseq.push_header("Call-ID", "x");
        assert_eq!(
            d.classify(&no_cseq, Outstanding::Nothing),
            InDialog::Refuse(400)
        );
    }

    #[test]
    fn a_target_refresh_takes_a_usable_contact_only() {
        let mut d = established();
        let before = d.remote_target.clone();
        let mut bad = in_dialog(Method::Invite, 2);
        bad.push_header("Contact", "<not a uri>");
        d.refresh_target(&bad);
        assert_eq!(d.remote_target, before, "an unusable Contact is ignored");
        let mut none = in_dialog(Method::Invite, 3);
        none.push_header("Max-Forwards", "70");
        d.refresh_target(&none);
        assert_eq!(d.remote_target, before);
        let mut moved = in_dialog(Method::Update, 4);
        moved.push_header("Contact", "<sip:carrier@10.0.0.77:5070;transport=tcp>");
        d.refresh_target(&moved);
        assert_eq!(d.remote_target, "sip:carrier@10.0.0.77:5070;transport=tcp");
        assert_eq!(
            d.next_hop().addr,
            "10.0.0.77:5070".parse().expect("addr"),
            "the next request goes to the new target"
        );
    }

    #[test]
    fn sips_is_wanted_by_the_request_uri_the_top_record_route_or_the_contact() {
        let cases: &[(&str, Option<&str>, Option<&str>, bool)] = &[
            ("sip:+1555@10.0.0.1", None, Some("<sip:a@10.0.0.9>"), false),
            ("sips:+1555@10.0.0.1", None, Some("<sip:a@10.0.0.9>"), true),
            ("SIPS:+1555@10.0.0.1", None, None, true),
            ("sip:+1555@10.0.0.1", None, Some("<sips:a@10.0.0.9>"), true),
            (
                "sip:+1555@10.0.0.1",
                Some("<sips:p@10.0.0.2;lr>"),
                Some("<sip:a@10.0.0.9>"),
                true,
            ),
            // A Record-Route decides over the Contact.
            (
                "sip:+1555@10.0.0.1",
                Some("<sip:p@10.0.0.2;lr>"),
                Some("<sips:a@10.0.0.9>"),
                false,
            ),
            (
                "sip:+1555@10.0.0.1",
                None,
                Some("\"Sips\" <sip:a@10.0.0.9>"),
                false,
            ),
        ];
        for (ruri, rr, contact, want) in cases {
            let mut m = Message::request(Method::Invite, *ruri);
            if let Some(rr) = rr {
                m.push_header("Record-Route", rr);
            }
            if let Some(c) = contact {
                m.push_header("Contact", c);
            }
            assert_eq!(wants_sips(&m), *want, "{ruri} {rr:?} {contact:?}");
        }
        assert_eq!(scheme_of("tel:+1555"), "tel");
        assert_eq!(scheme_of("no scheme"), "");
    }

    fn invite() -> Message {
        let mut m = Message::request(Method::Invite, "sip:+1555@10.0.0.1");
        m.push_header("Via", "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK1");
        m.push_header("Record-Route", "<sip:p1@10.0.0.2;lr>, <sip:p2@10.0.0.3;lr>");
        m.push_header("From", "\"A\" <sip:a@h>;tag=ft");
        m.push_header("To", "<sip:+1555@h>");
        m.push_header("Call-ID", "cid");
        m.push_header("CSeq", "10 INVITE");
        m.push_header("Contact", "<sip:a@10.0.0.9:5070>");
        m
    }

    #[test]
    fn uas_dialog_builds_bye() {
        let mut d =
            Dialog::uas(&invite(), "lt", peer(), "<sip:sb@10.0.0.1>".into()).expect("dialog");
        assert_eq!(d.remote_tag, "ft");
        assert!(d.accept_remote_cseq(11, &Method::Bye));
        assert!(!d.accept_remote_cseq(11, &Method::Info), "repeated CSeq");
        let bye = d.request(Method::Bye);
        assert_eq!(bye.request_uri(), Some("sip:a@10.0.0.9:5070"));
        assert_eq!(bye.header("To"), Some("\"A\" <sip:a@h>;tag=ft"));
        assert_eq!(bye.header("From"), Some("<sip:+1555@h>;tag=lt"));
        assert_eq!(
            bye.headers_named("Route").collect::<Vec<_>>(),
            vec!["<sip:p1@10.0.0.2;lr>", "<sip:p2@10.0.0.3;lr>"]
        );
        assert_eq!(d.next_hop().addr, "10.0.0.2:5060".parse().expect("addr"));
    }

    /// Found by fuzz/fuzz_targets/sip_datagram.rs (fuzz/regressions/sip_datagram/
    /// contact_not_a_uri): a Contact that is not a URI became the Request-URI of our BYE, which
    /// no parser (ours included) accepts, so the call could not be hung up.
    #[test]
    fn contact_that_is_not_a_uri_is_refused_or_ignored() {
        for bad in ["slication/sdp", "<sip:a b@h>", "<>", "\"x\" <sip:a\tb>"] {
            let mut inv = invite();
            inv.set("Contact", bad);
            assert_eq!(
                Dialog::uas(&inv, "lt", peer(), "<sip:sb@10.0.0.1>".into()).err(),
                Some(DialogError::Invalid("Contact")),
                "{bad:?}"
            );
            let mut resp = invite().response(200, "OK", Some("rt"));
            resp.set("Contact", bad);
            let mut d =
                Dialog::uac(&invite(), &resp, peer(), "<sip:sb@10.0.0.1>".into()).expect("dialog");
            assert_eq!(d.remote_target, "sip:+1555@10.0.0.1", "{bad:?}");
            let bye = d.request(Method::Bye).to_bytes();
            let limits = crate::sip::framing::Limits::default();
            crate::sip::framing::parse_datagram(&bye, &limits).expect("our BYE parses");
        }
    }

    /// The exact datagram the fuzzer found.
    #[test]
    fn fuzz_regression_contact_not_a_uri() {
        let data = include_bytes!("../../../fuzz/regressions/sip_datagram/contact_not_a_uri");
        let msg = crate::sip::framing::parse_datagram(data, &Default::default()).expect("parses");
        assert_eq!(
            Dialog::uas(&msg, "lt", peer(), "<sip:sb@10.0.0.1>".into()).err(),
            Some(DialogError::Invalid("Contact"))
        );
    }

    #[test]
    fn uac_dialog_reverses_record_route() {
        let inv = invite();
        let mut resp = inv.response(200, "OK", Some("rt"));
        resp.push_header("Record-Route", "<sip:p1@10.0.0.2;lr>, <sip:p2@10.0.0.3;lr>");
        resp.push_header("Contact", "<sip:b@10.0.0.7:5080;transport=tcp>");
        let d = Dialog::uac(&inv, &resp, peer(), "<sip:sb@10.0.0.1>".into()).expect("dialog");
        assert_eq!(d.route_set[0], "<sip:p2@10.0.0.3;lr>");
        assert_eq!(d.remote_tag, "rt");
        assert_eq!(d.remote_target, "sip:b@10.0.0.7:5080;transport=tcp");
        let ack = d.ack(10);
        assert_eq!(ack.header("CSeq"), Some("10 ACK"));
    }
}
