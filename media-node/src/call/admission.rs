//! The admission decision for a new inbound INVITE, as a pure function of
//! the request and what the node knows (routing, digest verdicts, options),
//! read through the narrow [`AdmissionView`]. It says accept (with what
//! was negotiated), challenge, or refuse with a code and why; carrying
//! that out (nonces, capacity, media ports, responses) is `inbound.rs`'s.
//!
//! Order matters for privacy: a source that belongs to no trunk gets 403
//! before the number is even looked at, and a source that must
//! authenticate is challenged before it can learn whether a number exists.

use std::net::IpAddr;
use std::sync::Arc;

use switchboard_proto::v1alpha1::{Codec, PhoneNumber, Trunk};

use crate::routing;
use crate::routing::acl::Cidr;
use crate::sdp::{self, Negotiated, Sdp, SrtpPolicy};
use crate::sip::dialog::scheme_of;
use crate::sip::digest::{DigestFailure, Verdict};
use crate::sip::headers::{SipUri, uri_text};
use crate::sip::message::Message;
use crate::sip::session_timer::{self, SessionTimer};
use crate::sip::transport::Peer;
use crate::sip::transport::Proto;

/// The trunks a source may call through.
#[derive(Debug, Default, Clone)]
pub(crate) struct SourceTrunks {
    /// Trunks whose allowed sources include it.
    pub(crate) by_acl: Vec<Arc<Trunk>>,
    /// When none: trunks with digest credentials and no allowed sources,
    /// which take calls from any source that authenticates.
    pub(crate) auth_only: Vec<Arc<Trunk>>,
}

/// What admission reads from the node.
pub(crate) trait AdmissionView {
    /// The node is draining: new calls go elsewhere.
    fn draining(&self) -> bool;
    /// The trunks `source` may use; `None` until the node is programmed.
    fn source_trunks(&self, source: IpAddr) -> Option<SourceTrunks>;
    /// The number a called user dials.
    fn number(&self, user: &str) -> Option<Arc<PhoneNumber>>;
    /// The digest verdict on the request's Authorization for `trunk`;
    /// `None` when the trunk has no inbound credentials.
    fn verify(&self, msg: &Message, source: IpAddr, trunk: &Trunk) -> Option<Verdict>;
    /// The smallest Session-Expires accepted (RFC 4028 Min-SE).
    fn min_se(&self) -> u32;
}

/// An admitted INVITE: everything the call is set up with.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// The trunk the call belongs to (the number's, or a fallback).
    pub(crate) trunk: Arc<Trunk>,
    /// The number called.
    pub(crate) number: Arc<PhoneNumber>,
    /// The called user as dialled.
    pub(crate) user: String,
    /// The session timer agreed (RFC 4028).
    pub(crate) timer: Option<SessionTimer>,
    /// The offer and what was negotiated from it; `None` for an offerless
    /// INVITE (we offer in the 200).
    pub(crate) offer: Option<(Sdp, Negotiated)>,
    /// The trunk's codecs, in preference order.
    pub(crate) prefs: Vec<Codec>,
    /// RFC 4733 telephone-events are offered/accepted.
    pub(crate) want_dtmf: bool,
    /// The trunk's SRTP rule on this transport.
    pub(crate) srtp_policy: SrtpPolicy,
    /// Where the call's RTP may come from and go to.
    pub(crate) media_networks: Vec<Cidr>,
}

/// A final refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reject {
    /// The status code.
    pub(crate) code: u16,
    /// Why, as a metric label.
    pub(crate) reason: &'static str,
    /// Header fields the answer carries.
    pub(crate) headers: Vec<(&'static str, String)>,
    /// The answer carries the node's Retry-After (503s).
    pub(crate) retry_after: bool,
}

impl Reject {
    pub(crate) fn new(code: u16, reason: &'static str) -> Self {
        Reject {
            code,
            reason,
            headers: Vec::new(),
            retry_after: false,
        }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn unavailable(reason: &'static str) -> Self {
        Reject {
            retry_after: true,
            ..Reject::new(503, reason)
        }
    }
}

/// Not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 401 with a fresh challenge in `realm`.
    Challenge {
        /// The realm to challenge in.
        realm: String,
        /// The credentials were right but the nonce had expired.
        stale: bool,
        /// Why the Authorization (if any) was refused.
        failure: DigestFailure,
    },
    /// A final answer.
    Refuse(Reject),
}

impl From<Reject> for Refusal {
    fn from(r: Reject) -> Self {
        Refusal::Refuse(r)
    }
}

/// Realm used when a trunk's auth names none.
pub(crate) const DEFAULT_REALM: &str = "switchboard";

fn realm_of(trunk: &Trunk) -> &str {
    trunk
        .inbound
        .as_ref()
        .and_then(|i| i.auth.as_ref())
        .map(|a| a.realm.as_str())
        .filter(|r| !r.is_empty())
        .unwrap_or(DEFAULT_REALM)
}

fn has_credentials(trunk: &Trunk) -> bool {
    trunk
        .inbound
        .as_ref()
        .and_then(|i| i.auth.as_ref())
        .is_some_and(|a| a.credentials.is_some())
}

/// The called user: Request-URI user, To user as fallback.
pub fn called_user(msg: &Message) -> Option<String> {
    let from_ruri = msg
        .request_uri()
        .and_then(|u| SipUri::parse(u).ok())
        .and_then(|u| u.user);
    from_ruri.filter(|u| !u.is_empty()).or_else(|| {
        msg.header("To")
            .and_then(|t| SipUri::parse(uri_text(t)).ok())
            .and_then(|u| u.user)
    })
}

/// Which trunk an allowed source's call to a number belongs to: the
/// number's own trunk or its first usable fallback among `source_trunks`.
pub(crate) fn select_trunk(
    source_trunks: &[Arc<Trunk>],
    number: &PhoneNumber,
) -> Result<Arc<Trunk>, Reject> {
    let candidates = std::iter::once(&number.trunk_id).chain(number.fallback_trunk_ids.iter());
    let mut disabled = false;
    for id in candidates {
        let Some(t) = source_trunks.iter().find(|t| t.id == *id) else {
            continue;
        };
        if t.enabled && t.inbound.as_ref().is_some_and(|i| i.enabled) {
            return Ok(t.clone());
        }
        disabled = true;
    }
    if disabled {
        Err(Reject::new(403, "trunk_disabled"))
    } else {
        Err(Reject::new(404, "not_found"))
    }
}

/// Decides on a new INVITE from `peer`.
pub(crate) fn decide(
    view: &impl AdmissionView,
    msg: &Message,
    peer: Peer,
) -> Result<Accepted, Refusal> {
    if view.draining() {
        return Err(Reject::unavailable("draining").into());
    }
    let source = peer.addr.ip();
    let SourceTrunks {
        by_acl: mut source_trunks,
        mut auth_only,
    } = view
        .source_trunks(source)
        .ok_or_else(|| Reject::unavailable("not_programmed"))?;
    // Unknown schemes got 416 in dispatch already.
    if scheme_of(msg.request_uri().unwrap_or_default()) == "sips" && peer.proto != Proto::Tls {
        // A SIPS request promises TLS on every hop (RFC 5630 3.1.3); this one came over an
        // unencrypted transport, so that promise is already broken.
        return Err(Reject::new(416, "sips_without_tls").into());
    }
    let mut pre_authenticated = false;
    if source_trunks.is_empty() {
        // Authenticate before looking the number up, so an unauthenticated
        // source learns nothing about numbers.
        if auth_only.is_empty() {
            return Err(Reject::new(403, "acl").into());
        }
        auth_only.sort_by(|a, b| a.id.cmp(&b.id));
        // Of the refusals (one per candidate trunk), the one that got
        // furthest says why: it is the trunk the caller meant.
        let mut failure = DigestFailure::Missing;
        for t in &auth_only {
            match view.verify(msg, source, t) {
                Some(Verdict::Ok) => source_trunks.push(t.clone()),
                Some(Verdict::Refused(f)) => failure = failure.max(f),
                None => {}
            }
        }
        if source_trunks.is_empty() {
            let realm = auth_only.first().map_or(DEFAULT_REALM, |t| realm_of(t));
            return Err(Refusal::Challenge {
                realm: realm.to_owned(),
                stale: Verdict::Refused(failure).stale(),
                failure,
            });
        }
        pre_authenticated = true;
    }
    let usable = source_trunks
        .iter()
        .any(|t| t.enabled && t.inbound.as_ref().is_some_and(|i| i.enabled));
    if !usable {
        return Err(Reject::new(403, "trunk_disabled").into());
    }
    let user = called_user(msg).unwrap_or_default();
    let number = view
        .number(&user)
        .ok_or_else(|| Reject::new(404, "not_found"))?;
    let trunk = select_trunk(&source_trunks, &number)?;
    if !number.inbound {
        return Err(Reject::new(403, "number_inbound_disabled").into());
    }
    if !pre_authenticated && has_credentials(&trunk) {
        let verdict = view
            .verify(msg, source, &trunk)
            .unwrap_or(Verdict::Refused(DigestFailure::Missing));
        if let Verdict::Refused(failure) = verdict {
            return Err(Refusal::Challenge {
                realm: realm_of(&trunk).to_owned(),
                stale: verdict.stale(),
                failure,
            });
        }
    }
    // Requirements we cannot meet (RFC 3261 8.2.2.3).
    let unsupported = super::unsupported_requirements(msg);
    if !unsupported.is_empty() {
        return Err(Reject::new(420, "bad_extension")
            .with("Unsupported", unsupported.join(", "))
            .into());
    }
    let timer = session_timer::uas_negotiate(msg, view.min_se())
        .map_err(|min| Reject::new(422, "session_interval").with("Min-SE", min.to_string()))?;

    // Offer/answer before admission so a 488 does not count as a call.
    let prefs = routing::codec_prefs(&trunk);
    let want_dtmf = routing::wants_rfc4733(&trunk);
    let srtp_policy = super::srtp_policy_of(&trunk, peer.proto);
    // Never stream RTP where a spoofed INVITE points (multicast, link-local, loopback from
    // outside, outside the trunk's networks when it restricts media).
    let media_networks = super::media_networks_of(&trunk, source);
    let offer = if msg.body.is_empty() {
        None
    } else {
        let is_sdp = msg
            .header("Content-Type")
            .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/sdp"));
        if !is_sdp {
            return Err(Reject::new(415, "media_type")
                .with("Accept", "application/sdp")
                .into());
        }
        let offer = Sdp::parse(&String::from_utf8_lossy(&msg.body))
            .map_err(|_| Reject::new(488, "bad_sdp"))?;
        let negotiated =
            sdp::negotiate_with(&offer, &prefs, want_dtmf, srtp_policy).map_err(|e| {
                let reason = match e {
                    sdp::SdpError::SrtpDisabled => "srtp_disabled",
                    sdp::SdpError::SrtpRequired(_) => "srtp_required",
                    sdp::SdpError::SdesInsecure => "sdes_insecure",
                    _ => "codec",
                };
                if reason != "codec" {
                    tracing::info!(source = %peer.addr, error = %e, "INVITE offer refused");
                }
                Reject::new(488, reason)
            })?;
        if let Err(e) = sdp::check_remote(negotiated.remote, source, &media_networks) {
            tracing::warn!(source = %peer.addr, error = %e, "INVITE offer refused");
            return Err(Reject::new(488, "media_address").into());
        }
        Some((offer, negotiated))
    };
    Ok(Accepted {
        trunk,
        number,
        user,
        timer,
        offer,
        prefs,
        want_dtmf,
        srtp_policy,
        media_networks,
    })
}

#[cfg(test)]
mod tests {
    //! The decision table: one case per way an INVITE is accepted, challenged or refused.

    use std::collections::HashMap;

    use switchboard_proto::v1alpha1::{Credentials, Inbound, InboundAuth};

    use super::*;
    use crate::sip::message::Method;

    const CALLER: &str = "10.0.0.1";
    const STRANGER: &str = "192.0.2.9";

    #[derive(Default)]
    struct Fake {
        draining: bool,
        unprogrammed: bool,
        trunks: Vec<Arc<Trunk>>,
        /// Source IP -> trunk ids its ACL matches.
        acl: HashMap<IpAddr, Vec<&'static str>>,
        numbers: Vec<PhoneNumber>,
        /// Trunk id -> verdict on the request's Authorization.
        verdicts: HashMap<&'static str, Verdict>,
    }

    impl AdmissionView for Fake {
        fn draining(&self) -> bool {
            self.draining
        }
        fn source_trunks(&self, source: IpAddr) -> Option<SourceTrunks> {
            if self.unprogrammed {
                return None;
            }
            let ids = self.acl.get(&source).cloned().unwrap_or_default();
            let by_acl: Vec<_> = self
                .trunks
                .iter()
                .filter(|t| ids.contains(&t.id.as_str()))
                .cloned()
                .collect();
            let auth_only = if by_acl.is_empty() {
                self.trunks
                    .iter()
                    .filter(|t| {
                        has_credentials(t)
                            && t.inbound
                                .as_ref()
                                .is_some_and(|i| i.allowed_sources.is_empty())
                    })
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            Some(SourceTrunks { by_acl, auth_only })
        }
        fn number(&self, user: &str) -> Option<Arc<PhoneNumber>> {
            self.numbers
                .iter()
                .find(|n| n.e164 == user)
                .map(|n| Arc::new(n.clone()))
        }
        fn verify(&self, _msg: &Message, _source: IpAddr, trunk: &Trunk) -> Option<Verdict> {
            has_credentials(trunk).then(|| {
                self.verdicts
                    .get(trunk.id.as_str())
                    .copied()
                    .unwrap_or(Verdict::Refused(DigestFailure::Missing))
            })
        }
        fn min_se(&self) -> u32 {
            90
        }
    }

    fn trunk(id: &str, sources: &[&str], auth: bool) -> Arc<Trunk> {
        Arc::new(Trunk {
            id: id.into(),
            enabled: true,
            inbound: Some(Inbound {
                enabled: true,
                allowed_sources: sources.iter().map(|s| (*s).to_owned()).collect(),
                auth: auth.then(|| InboundAuth {
                    realm: format!("{id}.example"),
                    credentials: Some(Credentials {
                        username: "u".into(),
                        password: "p".into(),
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn number(e164: &str, trunk: &str) -> PhoneNumber {
        PhoneNumber {
            id: format!("n{e164}"),
            e164: e164.into(),
            trunk_id: trunk.into(),
            inbound: true,
            ..Default::default()
        }
    }

    /// A node with trunk "acl" (source 10.0.0.1 allowed) and its number +1555.
    fn node() -> Fake {
        let mut f = Fake {
            trunks: vec![trunk("acl", &["10.0.0.1/32"], false)],
            numbers: vec![number("+1555", "acl")],
            ..Default::default()
        };
        f.acl.insert(CALLER.parse().expect("ip"), vec!["acl"]);
        f
    }

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

    fn invite(user: &str) -> Message {
        invite_to(&format!("sip:{user}@node"), user)
    }

    fn invite_to(uri: &str, user: &str) -> Message {
        let mut m = Message::request(Method::Invite, uri);
        m.push_header("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa");
        m.push_header("From", "<sip:c@10.0.0.1>;tag=f");
        m.push_header("To", &format!("<sip:{user}@node>"));
        m.push_header("Call-ID", "c1");
        m.push_header("CSeq", "1 INVITE");
        m.set_body("application/sdp", OFFER.as_bytes().to_vec());
        m
    }

    fn from(ip: &str) -> Peer {
        from_over(ip, Proto::Udp)
    }

    fn from_over(ip: &str, proto: Proto) -> Peer {
        Peer {
            proto,
            addr: std::net::SocketAddr::new(ip.parse().expect("ip"), 5060),
        }
    }

    /// The refusal's code and reason, or "accepted".
    fn outcome(view: &Fake, msg: &Message, peer: Peer) -> (u16, String) {
        match decide(view, msg, peer) {
            Ok(a) => (200, format!("accepted on {}", a.trunk.id)),
            Err(Refusal::Challenge { realm, stale, .. }) => {
                (401, format!("challenge {realm} stale={stale}"))
            }
            Err(Refusal::Refuse(r)) => (r.code, r.reason.to_owned()),
        }
    }

    #[test]
    fn an_allowed_source_calling_a_known_number_is_accepted_with_its_negotiation() {
        let view = node();
        let a = decide(&view, &invite("+1555"), from(CALLER)).expect("accepted");
        assert_eq!(a.trunk.id, "acl");
        assert_eq!(a.number.e164, "+1555");
        assert_eq!(a.user, "+1555");
        let (_, n) = a.offer.expect("the offer was negotiated");
        assert_eq!(n.codec, Codec::Pcmu);
        assert_eq!(n.dtmf_pt, Some(101));
        assert!(a.timer.is_none());
    }

    #[test]
    fn an_offerless_invite_is_accepted_without_negotiation() {
        let view = node();
        let mut msg = invite("+1555");
        msg.set_body("application/sdp", Vec::<u8>::new());
        let a = decide(&view, &msg, from(CALLER)).expect("accepted");
        assert!(a.offer.is_none());
    }

    #[test]
    fn draining_and_unprogrammed_nodes_answer_503_with_retry_after() {
        let mut view = node();
        view.draining = true;
        let Err(Refusal::Refuse(r)) = decide(&view, &invite("+1555"), from(CALLER)) else {
            panic!("refused");
        };
        assert_eq!((r.code, r.reason, r.retry_after), (503, "draining", true));
        let mut view = node();
        view.unprogrammed = true;
        assert_eq!(
            outcome(&view, &invite("+1555"), from(CALLER)),
            (503, "not_programmed".into())
        );
    }

    #[test]
    fn a_source_no_trunk_allows_gets_403_before_the_number_is_looked_at() {
        let view = node();
        for user in ["+1555", "+1999"] {
            assert_eq!(
                outcome(&view, &invite(user), from(STRANGER)),
                (403, "acl".into()),
                "same answer whether {user} exists or not"
            );
        }
    }

    #[test]
    fn sips_over_a_plain_transport_is_416() {
        let view = node();
        let msg = invite_to("sips:+1555@node", "+1555");
        assert_eq!(
            outcome(&view, &msg, from(CALLER)),
            (416, "sips_without_tls".into())
        );
        let tls = from_over(CALLER, Proto::Tls);
        assert_eq!(outcome(&view, &msg, tls).0, 200);
    }

    #[test]
    fn unknown_numbers_are_404_and_disabled_ones_403() {
        let mut view = node();
        assert_eq!(
            outcome(&view, &invite("+1999"), from(CALLER)),
            (404, "not_found".into())
        );
        view.numbers[0].inbound = false;
        assert_eq!(
            outcome(&view, &invite("+1555"), from(CALLER)),
            (403, "number_inbound_disabled".into())
        );
    }

    #[test]
    fn a_disabled_trunk_is_403_and_a_fallback_takes_over() {
        let mut view = node();
        let mut disabled = (*view.trunks[0]).clone();
        disabled.enabled = false;
        view.trunks[0] = Arc::new(disabled);
        assert_eq!(
            outcome(&view, &invite("+1555"), from(CALLER)),
            (403, "trunk_disabled".into())
        );
        view.trunks.push(trunk("backup", &["10.0.0.1/32"], false));
        view.acl
            .insert(CALLER.parse().expect("ip"), vec!["acl", "backup"]);
        view.numbers[0].fallback_trunk_ids = vec!["backup".into()];
        assert_eq!(
            outcome(&view, &invite("+1555"), from(CALLER)),
            (200, "accepted on backup".into())
        );
    }

    #[test]
    fn a_number_on_a_trunk_the_source_may_not_use_is_404() {
        let mut view = node();
        view.trunks.push(trunk("other", &["10.9.9.9/32"], false));
        view.numbers.push(number("+1666", "other"));
        assert_eq!(
            outcome(&view, &invite("+1666"), from(CALLER)),
            (404, "not_found".into())
        );
    }

    #[test]
    fn auth_only_trunks_challenge_any_source_before_numbers_and_accept_the_right_digest() {
        let mut view = Fake {
            trunks: vec![trunk("open", &[], true)],
            numbers: vec![number("+1555", "open")],
            ..Default::default()
        };
        // Unknown and known numbers alike: a challenge, nothing learnt.
        for user in ["+1555", "+1999"] {
            assert_eq!(
                outcome(&view, &invite(user), from(STRANGER)),
                (401, "challenge open.example stale=false".into())
            );
        }
        view.verdicts
            .insert("open", Verdict::Refused(DigestFailure::Stale));
        assert_eq!(
            outcome(&view, &invite("+1555"), from(STRANGER)),
            (401, "challenge open.example stale=true".into())
        );
        view.verdicts
            .insert("open", Verdict::Refused(DigestFailure::BadResponse));
        let Err(Refusal::Challenge { failure, stale, .. }) =
            decide(&view, &invite("+1555"), from(STRANGER))
        else {
            panic!("challenged");
        };
        assert_eq!((failure, stale), (DigestFailure::BadResponse, false));
        view.verdicts.insert("open", Verdict::Ok);
        assert_eq!(
            outcome(&view, &invite("+1555"), from(STRANGER)),
            (200, "accepted on open".into())
        );
        // Authenticated, the source learns a number does not exist.
        assert_eq!(
            outcome(&view, &invite("+1999"), from(STRANGER)),
            (404, "not_found".into())
        );
    }

    #[test]
    fn of_several_auth_only_trunks_the_furthest_refusal_names_the_challenge() {
        let mut view = Fake {
            trunks: vec![trunk("b", &[], true), trunk("a", &[], true)],
            numbers: vec![number("+1555", "b")],
            ..Default::default()
        };
        view.verdicts
            .insert("a", Verdict::Refused(DigestFailure::Username));
        view.verdicts
            .insert("b", Verdict::Refused(DigestFailure::Stale));
        let Err(Refusal::Challenge {
            realm,
            stale,
            failure,
        }) = decide(&view, &invite("+1555"), from(STRANGER))
        else {
            panic!("challenged");
        };
        // The realm of the first trunk by id; staleness from the furthest refusal.
        assert_eq!(
            (realm.as_str(), stale, failure),
            ("a.example", true, DigestFailure::Stale)
        );
    }

    #[test]
    fn an_acl_trunk_with_credentials_challenges_after_the_number() {
        let mut view = node();
        view.trunks[0] = trunk("acl", &["10.0.0.1/32"], true);
        assert_eq!(
            outcome(&view, &invite("+1999"), from(CALLER)),
            (404, "not_found".into()),
            "the ACL already identified the source"
        );
        assert_eq!(
            outcome(&view, &invite("+1555"), from(CALLER)),
            (401, "challenge acl.example stale=false".into())
        );
        view.verdicts.insert("acl", Verdict::Ok);
        assert_eq!(outcome(&view, &invite("+1555"), from(CALLER)).0, 200);
    }

    #[test]
    fn unsupported_requirements_are_420_with_unsupported() {
        let view = node();
        let mut msg = invite("+1555");
        msg.push_header("Require", "100rel, foo");
        let Err(Refusal::Refuse(r)) = decide(&view, &msg, from(CALLER)) else {
            panic!("refused");
        };
        assert_eq!((r.code, r.reason), (420, "bad_extension"));
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| *k == "Unsupported" && v.contains("foo")),
            "{r:?}"
        );
    }

    #[test]
    fn a_session_interval_below_min_se_is_422_with_min_se() {
        let view = node();
        let mut msg = invite("+1555");
        msg.push_header("Supported", "timer");
        msg.push_header("Session-Expires", "30");
        let Err(Refusal::Refuse(r)) = decide(&view, &msg, from(CALLER)) else {
            panic!("refused");
        };
        assert_eq!((r.code, r.reason), (422, "session_interval"));
        assert_eq!(r.headers, [("Min-SE", "90".to_owned())]);
        // A UAC without timer support cannot be asked for more: raised silently (RFC 4028 9).
        let mut unaware = invite("+1555");
        unaware.push_header("Session-Expires", "30");
        let a = decide(&view, &unaware, from(CALLER)).expect("accepted");
        assert_eq!(a.timer.map(|t| t.interval), Some(90));
        let mut ok = invite("+1555");
        ok.push_header("Session-Expires", "1800");
        assert!(decide(&view, &ok, from(CALLER)).is_ok_and(|a| a.timer.is_some()));
    }

    #[test]
    fn offers_that_cannot_be_answered_are_415_or_488() {
        let view = node();
        let mut msg = invite("+1555");
        msg.set_body("text/plain", b"hello".to_vec());
        let Err(Refusal::Refuse(r)) = decide(&view, &msg, from(CALLER)) else {
            panic!("refused");
        };
        assert_eq!((r.code, r.reason), (415, "media_type"));
        assert_eq!(r.headers, [("Accept", "application/sdp".to_owned())]);

        let mut garbage = invite("+1555");
        garbage.set_body("application/sdp", b"not sdp at all".to_vec());
        assert_eq!(
            outcome(&view, &garbage, from(CALLER)),
            (488, "bad_sdp".into())
        );

        let mut g729 = invite("+1555");
        g729.set_body(
            "application/sdp",
            OFFER.replace("RTP/AVP 0 101", "RTP/AVP 18").into_bytes(),
        );
        assert_eq!(outcome(&view, &g729, from(CALLER)), (488, "codec".into()));

        let mut multicast = invite("+1555");
        multicast.set_body(
            "application/sdp",
            OFFER
                .replace("c=IN IP4 10.0.0.1", "c=IN IP4 224.0.0.1")
                .into_bytes(),
        );
        assert_eq!(
            outcome(&view, &multicast, from(CALLER)),
            (488, "media_address".into())
        );
    }

    #[test]
    fn called_user_prefers_request_uri() {
        let mut m = Message::request(Method::Invite, "sip:+15550001111@10.0.0.1");
        m.push_header("To", "<sip:other@h>");
        assert_eq!(called_user(&m).as_deref(), Some("+15550001111"));
        let mut m = Message::request(Method::Invite, "sip:10.0.0.1");
        m.push_header("To", "\"x\" <sip:15550001111@h>");
        assert_eq!(called_user(&m).as_deref(), Some("15550001111"));
    }

    #[test]
    fn trunk_selection() {
        let trunk = |id: &str, enabled: bool| {
            Arc::new(Trunk {
                enabled,
                ..(*trunk(id, &["10.0.0.0/8"], false)).clone()
            })
        };
        let number = PhoneNumber {
            fallback_trunk_ids: vec!["b".into()],
            ..number("+15550001111", "a")
        };
        let (a, b, c) = (trunk("a", false), trunk("b", true), trunk("c", true));
        assert_eq!(
            select_trunk(std::slice::from_ref(&b), &number)
                .map(|t| t.id.clone())
                .ok(),
            Some("b".into())
        );
        assert_eq!(
            select_trunk(std::slice::from_ref(&a), &number)
                .err()
                .map(|r| r.code),
            Some(403)
        );
        assert_eq!(
            select_trunk(std::slice::from_ref(&c), &number)
                .err()
                .map(|r| r.code),
            Some(404)
        );
        // A disabled primary falls through to a usable fallback.
        assert_eq!(
            select_trunk(&[a, b, c], &number).map(|t| t.id.clone()).ok(),
            Some("b".into())
        );
    }
}
