//! The SDP subset we speak (RFC 4566, offer/answer per RFC 3264): one audio
//! stream of PCMU or PCMA at 20 ms plus telephone-event, direction
//! attributes, and the codec choice by the trunk's order of preference.

use std::net::IpAddr;

use switchboard_proto::v1alpha1::Codec;

/// Media direction (RFC 3264 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// sendrecv (the default)
    SendRecv,
    /// sendonly
    SendOnly,
    /// recvonly
    RecvOnly,
    /// inactive
    Inactive,
}

impl Direction {
    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn parse(s: &str) -> Option<Direction> {
        Some(match s {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }

    /// The direction an answerer uses for an offered one (RFC 3264 6.1).
    pub fn answer_to(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }

    /// True when the peer is putting us on hold.
    pub fn is_hold(self) -> bool {
        matches!(self, Direction::SendOnly | Direction::Inactive)
    }
}

/// A payload format in an m= line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// RTP payload type.
    pub pt: u8,
    /// Encoding name upper-cased (from rtpmap, or implied by a static type).
    pub name: String,
    /// Clock rate.
    pub rate: u32,
    /// fmtp parameters if any.
    pub fmtp: Option<String>,
}

/// One m= section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDesc {
    /// `audio`, `video`...
    pub kind: String,
    /// Port (0 = rejected stream).
    pub port: u16,
    /// `RTP/AVP` etc.
    pub proto: String,
    /// Formats in offer order.
    pub formats: Vec<Format>,
    /// Connection address for this media (m-level c= or session c=).
    pub addr: Option<IpAddr>,
    /// Direction.
    pub direction: Direction,
    /// a=ptime if given.
    pub ptime: Option<u32>,
    /// `a=crypto` attributes (SDES keys, RFC 4568), in offer order, at most
    /// [`crate::sdes::MAX_LINES`]; their `Debug` hides the keys.
    pub crypto: Vec<crate::sdes::CryptoLine>,
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    /// o= session id.
    pub session_id: String,
    /// o= version.
    pub version: u64,
    /// Media sections in order.
    pub media: Vec<MediaDesc>,
}

/// Errors parsing or negotiating SDP.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    /// The text is not SDP we understand.
    #[error("invalid SDP line {0:?}")]
    Syntax(String),
    /// No m= line.
    #[error("SDP has no media")]
    NoMedia,
    /// No common codec (answer 488).
    #[error("no acceptable audio codec offered")]
    NoCommonCodec,
    /// Only SRTP offered (RTP/SAVP) to a trunk without media encryption (answer 488).
    #[error("SRTP offered but the trunk's media encryption is disabled")]
    SrtpDisabled,
    /// The trunk requires SRTP and the offer carries no usable key (answer 488).
    #[error("the trunk requires SRTP and the offer has no usable key: {0}")]
    SrtpRequired(String),
    /// SDES keys in signalling that is not TLS, and the trunk does not allow it (answer 488).
    #[error("SRTP keys offered over unencrypted signalling")]
    SdesInsecure,
    /// The peer asks for RTP at an address we never send to (answer 488).
    #[error("media address {0} refused: {1}")]
    MediaAddress(IpAddr, &'static str),
}

/// Why we refuse to send RTP to `addr` for a peer signalling from `signalling`, if we do:
/// multicast, broadcast, reserved (240/4) and "this network" addresses (a spoofed INVITE would turn the node
/// into a traffic source towards a whole segment), link-local addresses, and loopback unless
/// the signalling itself comes from loopback (a local test or sidecar). Hold with 0.0.0.0
/// (or `::`) is not an address to send to and is handled by [`negotiate`] before this.
pub fn refused_media_address(addr: IpAddr, signalling: IpAddr) -> Option<&'static str> {
    let addr = addr.to_canonical();
    let signalling = signalling.to_canonical();
    if addr.is_multicast() {
        return Some("multicast");
    }
    if addr.is_unspecified() {
        return Some("unspecified");
    }
    if addr.is_loopback() && !signalling.is_loopback() {
        return Some("loopback");
    }
    match addr {
        IpAddr::V4(v4) => {
            if v4.is_broadcast() {
                return Some("broadcast");
            }
            if v4.octets()[0] == 0 {
                return Some("this-network");
            }
            // 240.0.0.0/4 is reserved (RFC 1112 4): nothing legitimate
            // receives RTP there.
            if v4.octets()[0] >= 240 {
                return Some("reserved");
            }
            if v4.is_link_local() {
                return Some("link-local");
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unicast_link_local() {
                return Some("link-local");
            }
        }
    }
    None
}

/// Checks where a negotiated offer or answer asks for RTP: `Err` when
/// [`refused_media_address`] refuses it, or when `networks` is not empty and the address lies
/// outside all of them (the trunk's `mediaSource: SignallingNetwork`).
pub fn check_remote(
    remote: Option<std::net::SocketAddr>,
    signalling: IpAddr,
    networks: &[crate::routing::acl::Cidr],
) -> Result<(), SdpError> {
    let Some(remote) = remote else {
        return Ok(());
    };
    if let Some(why) = refused_media_address(remote.ip(), signalling) {
        return Err(SdpError::MediaAddress(remote.ip(), why));
    }
    if !networks.is_empty() && !networks.iter().any(|n| n.contains(remote.ip())) {
        return Err(SdpError::MediaAddress(
            remote.ip(),
            "outside the signalling network",
        ));
    }
    Ok(())
}

fn static_format(pt: u8) -> Option<(&'static str, u32)> {
    match pt {
        0 => Some(("PCMU", 8000)),
        8 => Some(("PCMA", 8000)),
        _ => None,
    }
}

impl Sdp {
    /// Parses SDP text. Unknown lines are ignored; a malformed line we need
    /// is an error.
    pub fn parse(text: &str) -> Result<Sdp, SdpError> {
        let mut session_id = String::new();
        let mut version = 0u64;
        let mut session_addr: Option<IpAddr> = None;
        let mut session_dir = Direction::SendRecv;
        let mut media: Vec<MediaDesc> = Vec::new();
        let mut seen_v = false;
        for raw in text.lines() {
            let line = raw.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let (kind, value) = line
                .split_once('=')
                .ok_or_else(|| SdpError::Syntax(line.to_owned()))?;
            let bad = || SdpError::Syntax(line.to_owned());
            match kind {
                "v" => seen_v = true,
                "o" => {
                    let f: Vec<&str> = value.split_whitespace().collect();
                    if f.len() < 6 {
                        return Err(bad());
                    }
                    session_id = f[1].to_owned();
                    version = f[2].parse().map_err(|_| bad())?;
                }
                "c" => {
                    let f: Vec<&str> = value.split_whitespace().collect();
                    if f.len() < 3 || f[0] != "IN" {
                        return Err(bad());
                    }
                    // Multicast TTL suffixes ("/127") are not ours to use.
                    let addr = f[2].split('/').next().unwrap_or("").parse::<IpAddr>().ok();
                    match media.last_mut() {
                        Some(m) => m.addr = addr.or(m.addr),
                        None => session_addr = addr,
                    }
                }
                "m" => {
                    let f: Vec<&str> = value.split_whitespace().collect();
                    if f.len() < 3 {
                        return Err(bad());
                    }
                    let port = f[1]
                        .split('/')
                        .next()
                        .unwrap_or("")
                        .parse::<u16>()
                        .map_err(|_| bad())?;
                    let mut formats = Vec::new();
                    for pt in &f[3..] {
                        // Non-RTP media lists tokens, not numbers: keep none.
                        if let Ok(pt) = pt.parse::<u8>() {
                            let (name, rate) = static_format(pt).unwrap_or(("", 0));
                            formats.push(Format {
                                pt,
                                name: name.to_owned(),
                                rate,
                                fmtp: None,
                            });
                        }
                    }
                    media.push(MediaDesc {
                        kind: f[0].to_owned(),
                        port,
                        proto: f[2].to_owned(),
                        formats,
                        addr: session_addr,
                        direction: session_dir,
                        ptime: None,
                        crypto: Vec::new(),
                    });
                }
                "a" => {
                    let (name, val) = value.split_once(':').unwrap_or((value, ""));
                    if let Some(d) = Direction::parse(name) {
                        match media.last_mut() {
                            Some(m) => m.direction = d,
                            None => session_dir = d,
                        }
                        continue;
                    }
                    let Some(m) = media.last_mut() else { continue };
                    match name {
                        "rtpmap" => {
                            let (pt, enc) = val.split_once(' ').ok_or_else(bad)?;
                            let pt: u8 = pt.trim().parse().map_err(|_| bad())?;
                            let mut parts = enc.trim().split('/');
                            let name = parts.next().unwrap_or("").to_ascii_uppercase();
                            let rate = parts.next().and_then(|r| r.parse().ok()).unwrap_or(8000);
                            if let Some(f) = m.formats.iter_mut().find(|f| f.pt == pt) {
                                f.name = name;
                                f.rate = rate;
                            }
                        }
                        "fmtp" => {
                            if let Some((pt, params)) = val.split_once(' ')
                                && let Ok(pt) = pt.trim().parse::<u8>()
                                && let Some(f) = m.formats.iter_mut().find(|f| f.pt == pt)
                            {
                                f.fmtp = Some(params.trim().to_owned());
                            }
                        }
                        "ptime" => m.ptime = val.trim().parse().ok(),
                        "crypto" if m.crypto.len() < crate::sdes::MAX_LINES => {
                            m.crypto.push(crate::sdes::CryptoLine::new(val));
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        if !seen_v {
            return Err(SdpError::Syntax("missing v= line".into()));
        }
        if media.is_empty() {
            return Err(SdpError::NoMedia);
        }
        Ok(Sdp {
            session_id,
            version,
            media,
        })
    }

    /// The first audio stream that is not disabled.
    pub fn audio(&self) -> Option<&MediaDesc> {
        self.media.iter().find(|m| m.kind == "audio" && m.port != 0)
    }
}

/// The outcome of negotiating an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Index of the audio m= line we accepted.
    pub index: usize,
    /// Chosen codec.
    pub codec: Codec,
    /// Its payload type as the offerer numbered it.
    pub pt: u8,
    /// telephone-event payload type, when offered and wanted.
    pub dtmf_pt: Option<u8>,
    /// Where the peer wants RTP (None when on hold with 0.0.0.0).
    pub remote: Option<std::net::SocketAddr>,
    /// The offered direction.
    pub offered: Direction,
    /// The direction of our answer.
    pub answer: Direction,
    /// SRTP with the peer's key, when the call is encrypted.
    pub srtp: Option<crate::sdes::Offered>,
    /// The accepted stream's transport was RTP/SAVP (or SAVPF): the answer says RTP/SAVP.
    pub savp: bool,
}

/// Whether a trunk encrypts media (its `media.encryption`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encryption {
    /// Plain RTP only.
    #[default]
    Disabled,
    /// SRTP when the peer offers usable keys, else plain RTP.
    Optional,
    /// SRTP only.
    Required,
}

/// The SRTP rule for negotiating one offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SrtpPolicy {
    /// The trunk's setting.
    pub encryption: Encryption,
    /// SDES keys may be exchanged here: the signalling is TLS, or the trunk's
    /// `allowSdesWithoutTls` is set.
    pub keys_allowed: bool,
}

impl SrtpPolicy {
    /// Plain RTP only.
    pub const PLAIN: SrtpPolicy = SrtpPolicy {
        encryption: Encryption::Disabled,
        keys_allowed: false,
    };
}

/// Decides SRTP for the accepted stream `m`: `Ok(None)` is plain RTP, `Ok(Some)` SRTP with
/// the peer's key. RTP/SAVP needs a usable key; RTP/AVP with `a=crypto` (best-effort SRTP,
/// as baresip's `mediaenc=srtp` offers) is encrypted when the trunk allows it.
fn negotiate_srtp(
    m: &MediaDesc,
    savp: bool,
    policy: SrtpPolicy,
) -> Result<Option<crate::sdes::Offered>, SdpError> {
    let required = match policy.encryption {
        Encryption::Disabled if savp => return Err(SdpError::SrtpDisabled),
        Encryption::Disabled => return Ok(None),
        Encryption::Optional => savp,
        Encryption::Required => true,
    };
    if m.crypto.is_empty() {
        return if required {
            Err(SdpError::SrtpRequired("no a=crypto".into()))
        } else {
            Ok(None)
        };
    }
    if !policy.keys_allowed {
        return if required {
            Err(SdpError::SdesInsecure)
        } else {
            Ok(None)
        };
    }
    match crate::sdes::choose(&m.crypto) {
        Ok(o) => Ok(Some(o)),
        Err(e) if required => Err(SdpError::SrtpRequired(e.to_string())),
        Err(_) => Ok(None),
    }
}

fn codec_name(c: Codec) -> Option<&'static str> {
    match c {
        Codec::Pcmu => Some("PCMU"),
        Codec::Pcma => Some("PCMA"),
        Codec::Unspecified => None,
    }
}

/// Negotiates an offer against our codec preference (first wins), plain RTP only.
pub fn negotiate(offer: &Sdp, prefs: &[Codec], want_dtmf: bool) -> Result<Negotiated, SdpError> {
    negotiate_with(offer, prefs, want_dtmf, SrtpPolicy::PLAIN)
}

/// Negotiates an offer against our codec preference and the trunk's SRTP rule.
pub fn negotiate_with(
    offer: &Sdp,
    prefs: &[Codec],
    want_dtmf: bool,
    srtp: SrtpPolicy,
) -> Result<Negotiated, SdpError> {
    let (index, m, savp) = offer
        .media
        .iter()
        .enumerate()
        .filter(|(_, m)| m.kind == "audio" && m.port != 0)
        .find_map(|(i, m)| {
            let proto = m.proto.to_ascii_uppercase();
            match proto.as_str() {
                "RTP/AVP" | "RTP/AVPF" => Some((i, m, false)),
                "RTP/SAVP" | "RTP/SAVPF" => Some((i, m, true)),
                _ => None,
            }
        })
        .ok_or(SdpError::NoCommonCodec)?;
    let mut chosen = None;
    for pref in prefs {
        let Some(name) = codec_name(*pref) else {
            continue;
        };
        if let Some(f) = m.formats.iter().find(|f| f.name == name && f.rate == 8000) {
            chosen = Some((*pref, f.pt));
            break;
        }
    }
    let (codec, pt) = chosen.ok_or(SdpError::NoCommonCodec)?;
    let dtmf_pt = if want_dtmf {
        m.formats
            .iter()
            .find(|f| f.name == "TELEPHONE-EVENT" && f.rate == 8000)
            .map(|f| f.pt)
    } else {
        None
    };
    // RFC 2543 hold: c=0.0.0.0 means "do not send to me".
    let held_by_addr = m.addr.is_some_and(|a| a.is_unspecified());
    let offered = if held_by_addr && m.direction == Direction::SendRecv {
        Direction::SendOnly
    } else {
        m.direction
    };
    let remote = m
        .addr
        .filter(|a| !a.is_unspecified())
        .map(|a| std::net::SocketAddr::new(a, m.port));
    let srtp = negotiate_srtp(m, savp, srtp)?;
    Ok(Negotiated {
        index,
        codec,
        pt,
        dtmf_pt,
        remote,
        offered,
        answer: offered.answer_to(),
        srtp,
        savp,
    })
}

/// Our side of a session: what goes into o= and c=/m=.
#[derive(Debug, Clone)]
pub struct LocalMedia {
    /// o= session id (stable for the call).
    pub session_id: u64,
    /// o= version, incremented whenever our description changes.
    pub version: u64,
    /// The address written into o= and c=.
    pub ip: IpAddr,
    /// RTP port.
    pub port: u16,
    /// Our SRTP key, written into the m= section, when the call is encrypted.
    pub crypto: Option<LocalCrypto>,
}

/// Our side of an encrypted stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCrypto {
    /// The `a=crypto` tag (the offer's, in an answer).
    pub tag: u32,
    /// Our master key (what we send with).
    pub key: crate::media::srtp::MasterKey,
    /// Write RTP/SAVP (else RTP/AVP, answering a best-effort offer).
    pub savp: bool,
}

/// Builds an SDP body for an answer or offer.
/// `formats` are (pt, name) pairs; telephone-event is added with `dtmf_pt`.
pub fn build(
    local: &LocalMedia,
    formats: &[(u8, &str)],
    dtmf_pt: Option<u8>,
    direction: Direction,
) -> String {
    let family = if local.ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut s = String::with_capacity(300);
    s.push_str("v=0\r\n");
    s.push_str(&format!(
        "o=switchboard {} {} IN {family} {}\r\n",
        local.session_id, local.version, local.ip
    ));
    s.push_str("s=switchboard\r\n");
    s.push_str(&format!("c=IN {family} {}\r\n", local.ip));
    s.push_str("t=0 0\r\n");
    let mut pts: Vec<String> = formats.iter().map(|(pt, _)| pt.to_string()).collect();
    if let Some(d) = dtmf_pt {
        pts.push(d.to_string());
    }
    let proto = match &local.crypto {
        Some(c) if c.savp => "RTP/SAVP",
        _ => "RTP/AVP",
    };
    s.push_str(&format!(
        "m=audio {} {proto} {}\r\n",
        local.port,
        pts.join(" ")
    ));
    for (pt, name) in formats {
        s.push_str(&format!("a=rtpmap:{pt} {name}/8000\r\n"));
    }
    if let Some(c) = &local.crypto {
        s.push_str(&crate::sdes::line(c.tag, &c.key));
    }
    if let Some(d) = dtmf_pt {
        s.push_str(&format!(
            "a=rtpmap:{d} telephone-event/8000\r\na=fmtp:{d} 0-16\r\n"
        ));
    }
    s.push_str("a=ptime:20\r\n");
    s.push_str(&format!("a={}\r\n", direction.as_str()));
    s
}

/// Builds the answer to `offer` after [`negotiate`]. Streams other than the
/// accepted audio one are rejected with port 0, keeping the m= line count
/// equal to the offer's (RFC 3264 6).
pub fn build_answer(local: &LocalMedia, offer: &Sdp, n: &Negotiated) -> String {
    let name = codec_name(n.codec).unwrap_or("PCMU");
    let mut s = build(local, &[(n.pt, name)], n.dtmf_pt, n.answer);
    if offer.media.len() > 1 {
        // Rebuild with rejected streams in their original positions.
        let (head, ours) = s.split_at(s.find("m=audio").unwrap_or(s.len()));
        let mut out = head.to_owned();
        for (i, m) in offer.media.iter().enumerate() {
            if i == n.index {
                out.push_str(ours);
            } else {
                let fmt = m
                    .formats
                    .first()
                    .map(|f| f.pt.to_string())
                    .unwrap_or_else(|| "0".into());
                out.push_str(&format!("m={} 0 {} {fmt}\r\n", m.kind, m.proto));
            }
        }
        s = out;
    }
    s
}

/// The default static payload type of a codec.
pub fn static_pt(c: Codec) -> u8 {
    match c {
        Codec::Pcma => 8,
        _ => 0,
    }
}

/// Name of a codec in rtpmap.
pub fn name(c: Codec) -> &'static str {
    codec_name(c).unwrap_or("PCMU")
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
        m=audio 40000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n";

    #[test]
    fn crypto_attributes_are_kept_per_stream_bounded_and_redacted() {
        let mut text = String::from(
            "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
             a=crypto:9 AES_CM_128_HMAC_SHA1_80 inline:c2Vzc2lvbi1sZXZlbA==\r\n\
             m=audio 4000 RTP/SAVP 0\r\n\
             a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n\
             a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n\
             m=video 0 RTP/SAVP 96\r\n",
        );
        for i in 0..100 {
            text.push_str(&format!(
                "a=crypto:{i} AES_CM_128_HMAC_SHA1_80 inline:x\r\n"
            ));
        }
        let sdp = Sdp::parse(&text).expect("parses");
        let audio = &sdp.media[0];
        // The session-level line is not a media key (RFC 4568 9: media level only).
        assert_eq!(audio.crypto.len(), 2);
        let chosen = crate::sdes::choose(&audio.crypto).expect("usable");
        assert_eq!(chosen.tag, 1);
        assert_eq!(sdp.media[1].crypto.len(), crate::sdes::MAX_LINES);
        let shown = format!("{sdp:?}");
        assert!(!shown.contains("WVNfX19zZW1jdGwg"), "{shown}");
    }

    #[test]
    fn parses_offer() {
        let sdp = Sdp::parse(OFFER).expect("valid");
        let a = sdp.audio().expect("audio");
        assert_eq!(a.port, 40000);
        assert_eq!(a.formats.len(), 3);
        assert_eq!(a.formats[2].name, "TELEPHONE-EVENT");
        assert_eq!(a.direction, Direction::SendRecv);
        assert_eq!(a.ptime, Some(20));
    }

    #[test]
    fn codec_choice_follows_our_preference() {
        let sdp = Sdp::parse(OFFER).expect("valid");
        let n = negotiate(&sdp, &[Codec::Pcmu, Codec::Pcma], true).expect("match");
        assert_eq!((n.codec, n.pt, n.dtmf_pt), (Codec::Pcmu, 0, Some(101)));
        let n = negotiate(&sdp, &[Codec::Pcma], false).expect("match");
        assert_eq!((n.codec, n.dtmf_pt), (Codec::Pcma, None));
        assert_eq!(n.remote, Some("10.0.0.5:40000".parse().expect("addr")));
    }

    #[test]
    fn no_common_codec_is_488() {
        let g729 = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\n";
        let sdp = Sdp::parse(g729).expect("valid");
        assert_eq!(
            negotiate(&sdp, &[Codec::Pcmu, Codec::Pcma], true),
            Err(SdpError::NoCommonCodec)
        );
    }

    #[test]
    fn hold_directions_answered() {
        for (attr, offered, answer) in [
            ("sendonly", Direction::SendOnly, Direction::RecvOnly),
            ("recvonly", Direction::RecvOnly, Direction::SendOnly),
            ("inactive", Direction::Inactive, Direction::Inactive),
            ("sendrecv", Direction::SendRecv, Direction::SendRecv),
        ] {
            let text = format!("{OFFER}a={attr}\r\n");
            let n =
                negotiate(&Sdp::parse(&text).expect("valid"), &[Codec::Pcmu], true).expect("ok");
            assert_eq!((n.offered, n.answer), (offered, answer), "{attr}");
        }
        let old_hold = OFFER.replace("c=IN IP4 10.0.0.5", "c=IN IP4 0.0.0.0");
        let n =
            negotiate(&Sdp::parse(&old_hold).expect("valid"), &[Codec::Pcmu], true).expect("ok");
        assert_eq!((n.answer, n.remote), (Direction::RecvOnly, None));
    }

    const SDES: &str =
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";

    fn srtp_offer(proto: &str, crypto: &str) -> Sdp {
        Sdp::parse(&format!(
            "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
             m=audio 4000 {proto} 0\r\n{crypto}"
        ))
        .expect("valid")
    }

    /// The SRTP decision for each trunk setting, transport profile, key presence and
    /// signalling security.
    #[test]
    fn srtp_decision_table() {
        use Encryption::*;
        type Want = Result<bool, SdpError>;
        let insecure = |e| SrtpPolicy {
            encryption: e,
            keys_allowed: false,
        };
        let secure = |e| SrtpPolicy {
            encryption: e,
            keys_allowed: true,
        };
        let cases: Vec<(&str, &str, SrtpPolicy, Want)> = vec![
            ("RTP/AVP", "", secure(Disabled), Ok(false)),
            ("RTP/AVP", SDES, secure(Disabled), Ok(false)),
            (
                "RTP/SAVP",
                SDES,
                secure(Disabled),
                Err(SdpError::SrtpDisabled),
            ),
            ("RTP/AVP", "", secure(Optional), Ok(false)),
            ("RTP/AVP", SDES, secure(Optional), Ok(true)),
            ("RTP/AVP", SDES, insecure(Optional), Ok(false)),
            ("RTP/SAVP", SDES, secure(Optional), Ok(true)),
            (
                "RTP/SAVP",
                SDES,
                insecure(Optional),
                Err(SdpError::SdesInsecure),
            ),
            (
                "RTP/SAVP",
                "",
                secure(Optional),
                Err(SdpError::SrtpRequired("no a=crypto".into())),
            ),
            (
                "RTP/AVP",
                "",
                secure(Required),
                Err(SdpError::SrtpRequired("no a=crypto".into())),
            ),
            ("RTP/AVP", SDES, secure(Required), Ok(true)),
            ("RTP/SAVPF", SDES, secure(Required), Ok(true)),
            (
                "RTP/SAVP",
                SDES,
                insecure(Required),
                Err(SdpError::SdesInsecure),
            ),
            (
                "RTP/SAVP",
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:short\r\n",
                secure(Required),
                Err(SdpError::SrtpRequired(
                    "crypto key has the wrong length or encoding".into(),
                )),
            ),
            (
                "RTP/AVP",
                "a=crypto:1 F8_128_HMAC_SHA1_80 inline:x\r\n",
                secure(Optional),
                Ok(false),
            ),
        ];
        for (proto, crypto, policy, want) in cases {
            let got = negotiate_with(&srtp_offer(proto, crypto), &[Codec::Pcmu], false, policy)
                .map(|n| n.srtp.is_some());
            assert_eq!(got, want, "{proto} {crypto:?} {policy:?}");
        }
    }

    #[test]
    fn an_srtp_answer_carries_our_key_and_the_offers_profile() {
        let policy = SrtpPolicy {
            encryption: Encryption::Required,
            keys_allowed: true,
        };
        for (proto, savp) in [("RTP/SAVP", true), ("RTP/AVP", false)] {
            let offer = srtp_offer(proto, SDES);
            let n = negotiate_with(&offer, &[Codec::Pcmu], false, policy).expect("ok");
            assert_eq!(n.savp, savp);
            let theirs = n.srtp.clone().expect("srtp");
            let key = crate::media::srtp::MasterKey::random(theirs.key.suite());
            let local = LocalMedia {
                session_id: 1,
                version: 1,
                ip: "127.0.0.1".parse().expect("ip"),
                port: 20000,
                crypto: Some(LocalCrypto {
                    tag: theirs.tag,
                    key: key.clone(),
                    savp: n.savp,
                }),
            };
            let answer = Sdp::parse(&build_answer(&local, &offer, &n)).expect("parses");
            let a = answer.audio().expect("audio");
            assert_eq!(a.proto, proto);
            let ours = crate::sdes::choose(&a.crypto).expect("our key");
            assert_eq!((ours.tag, ours.key), (1, key));
        }
    }

    #[test]
    fn answer_keeps_m_line_count_and_parses_back() {
        let text = format!("{OFFER}m=video 5000 RTP/AVP 96\r\n");
        let offer = Sdp::parse(&text).expect("valid");
        let n = negotiate(&offer, &[Codec::Pcma], true).expect("ok");
        let local = LocalMedia {
            session_id: 42,
            version: 1,
            ip: "127.0.0.1".parse().expect("ip"),
            port: 20000,
            crypto: None,
        };
        let answer = build_answer(&local, &offer, &n);
        let parsed = Sdp::parse(&answer).expect("our answer parses");
        assert_eq!(parsed.media.len(), 2);
        assert_eq!(parsed.media[1].port, 0);
        let a = parsed.audio().expect("audio");
        assert_eq!(
            a.formats.iter().map(|f| f.pt).collect::<Vec<_>>(),
            vec![8, 101]
        );
        assert!(answer.contains("a=ptime:20\r\n") && answer.contains("a=sendrecv\r\n"));
    }

    #[test]
    fn media_addresses_we_never_send_to() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let carrier = ip("203.0.113.9");
        let local = ip("127.0.0.1");
        for (addr, why) in [
            ("224.0.0.1", "multicast"),
            ("239.1.2.3", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("169.254.10.20", "link-local"),
            ("fe80::1", "link-local"),
            ("::ffff:169.254.1.1", "link-local"),
            ("0.1.2.3", "this-network"),
            ("240.0.0.1", "reserved"),
            ("254.255.255.255", "reserved"),
            ("127.0.0.1", "loopback"),
            ("127.9.9.9", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
        ] {
            assert_eq!(
                refused_media_address(ip(addr), carrier),
                Some(why),
                "{addr} from a carrier"
            );
        }
        // Loopback is fine when the signalling is local too (tests, sidecars).
        assert_eq!(refused_media_address(ip("127.0.0.1"), local), None);
        assert_eq!(refused_media_address(ip("127.0.0.2"), ip("::1")), None);
        assert_eq!(
            refused_media_address(ip("224.0.0.1"), local),
            Some("multicast")
        );
        for ok in ["203.0.113.10", "10.0.0.5", "2001:db8::5", "192.168.1.2"] {
            assert_eq!(refused_media_address(ip(ok), carrier), None, "{ok}");
        }
    }

    #[test]
    fn check_remote_refuses_and_restricts() {
        use crate::routing::acl::Cidr;
        use std::net::SocketAddr;
        let carrier: IpAddr = "203.0.113.9".parse().expect("ip");
        let sa = |s: &str| Some(s.parse::<SocketAddr>().expect("addr"));
        assert!(check_remote(None, carrier, &[]).is_ok(), "hold");
        assert!(check_remote(sa("203.0.113.10:4000"), carrier, &[]).is_ok());
        assert!(matches!(
            check_remote(sa("224.0.0.1:4000"), carrier, &[]),
            Err(SdpError::MediaAddress(_, "multicast"))
        ));
        let nets = [Cidr::parse("203.0.113.0/24").expect("cidr")];
        assert!(check_remote(sa("203.0.113.10:4000"), carrier, &nets).is_ok());
        assert!(matches!(
            check_remote(sa("198.51.100.1:4000"), carrier, &nets),
            Err(SdpError::MediaAddress(_, "outside the signalling network"))
        ));
        // c=0.0.0.0 is hold, not a refused address.
        let held = OFFER.replace("c=IN IP4 10.0.0.5", "c=IN IP4 0.0.0.0");
        let n = negotiate(&Sdp::parse(&held).expect("valid"), &[Codec::Pcmu], true).expect("ok");
        assert!(check_remote(n.remote, carrier, &[]).is_ok());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "x",
            "v=0\r\nm=audio abc RTP/AVP 0\r\n",
            "v=0\r\no=short\r\n",
            "v=0\r\n",
        ] {
            assert!(Sdp::parse(bad).is_err(), "{bad:?}");
        }
    }
}
