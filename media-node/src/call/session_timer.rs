//! RFC 4028 session timers: negotiating the interval and the refresher.

use std::time::Duration;

use crate::sip::headers::{has_option_tag, plain_param};
use crate::sip::message::Message;

/// Who refreshes the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// We send the refreshes.
    Us,
    /// The peer does; we only watch.
    Them,
}

/// An agreed session timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimer {
    /// Session interval in seconds.
    pub interval: u32,
    /// Who refreshes.
    pub refresher: Refresher,
    /// True when the peer supports the extension (then `Require: timer`
    /// goes into our 2xx).
    pub peer_supports: bool,
}

impl SessionTimer {
    /// When we send a refresh: at half the interval (RFC 4028 10).
    pub fn refresh_after(&self) -> Duration {
        Duration::from_secs(u64::from(self.interval / 2).max(1))
    }

    /// When we give up on the peer's refresh and send BYE (RFC 4028 10):
    /// the interval minus min(32, interval/3).
    pub fn expire_after(&self) -> Duration {
        let i = u64::from(self.interval);
        Duration::from_secs(i - (i / 3).min(32))
    }

    /// The `Session-Expires` value from our point of view as UAS.
    pub fn header_as_uas(&self) -> String {
        let who = if self.refresher == Refresher::Us {
            "uas"
        } else {
            "uac"
        };
        format!("{};refresher={who}", self.interval)
    }

    /// The `Session-Expires` value when we are UAC.
    pub fn header_as_uac(&self) -> String {
        let who = if self.refresher == Refresher::Us {
            "uac"
        } else {
            "uas"
        };
        format!("{};refresher={who}", self.interval)
    }
}

fn interval(msg: &Message) -> Option<(u32, Option<String>)> {
    let v = msg.header("Session-Expires")?;
    let secs = v.split(';').next()?.trim().parse().ok()?;
    Some((
        secs,
        plain_param(v, "refresher").map(|s| s.to_ascii_lowercase()),
    ))
}

/// UAS side, for an INVITE or UPDATE: `Err(min_se)` means answer 422 with
/// `Min-SE: min_se`; `Ok(None)` means no session timer.
pub fn uas_negotiate(req: &Message, min_se: u32) -> Result<Option<SessionTimer>, u32> {
    let supports = has_option_tag(req.headers_named("Supported"), "timer");
    let Some((secs, refresher)) = interval(req) else {
        return Ok(None);
    };
    // Without support (a proxy asked on the UAC's behalf) we cannot ask
    // for more, so we raise the interval silently (RFC 4028 9).
    if secs < min_se && supports {
        return Err(min_se);
    }
    let secs = secs.max(min_se);
    let refresher = match refresher.as_deref() {
        Some("uas") => Refresher::Us,
        Some("uac") if supports => Refresher::Them,
        // Without support the UAC cannot refresh: we must (RFC 4028 9).
        Some("uac") | None if !supports => Refresher::Us,
        _ => Refresher::Them,
    };
    Ok(Some(SessionTimer {
        interval: secs,
        refresher,
        peer_supports: supports,
    }))
}

/// UAC side, from the 2xx to our INVITE.
pub fn uac_from_response(resp: &Message) -> Option<SessionTimer> {
    let (secs, refresher) = interval(resp)?;
    let refresher = if refresher.as_deref() == Some("uas") {
        Refresher::Them
    } else {
        Refresher::Us
    };
    Some(SessionTimer {
        interval: secs,
        refresher,
        peer_supports: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::Method;

    fn req(se: Option<&str>, supported: bool) -> Message {
        let mut m = Message::request(Method::Invite, "sip:a@b");
        if let Some(se) = se {
            m.push_header("Session-Expires", se);
        }
        if supported {
            m.push_header("Supported", "100rel, timer");
        }
        m
    }

    #[test]
    fn uas_negotiation() {
        assert_eq!(uas_negotiate(&req(None, true), 90), Ok(None));
        assert_eq!(uas_negotiate(&req(Some("60"), true), 90), Err(90));
        let t = uas_negotiate(&req(Some("60"), false), 90)
            .expect("raised")
            .expect("timer");
        assert_eq!((t.interval, t.refresher), (90, Refresher::Us));
        let t = uas_negotiate(&req(Some("1800;refresher=uac"), true), 90)
            .expect("ok")
            .expect("timer");
        assert_eq!(
            (t.refresher, t.header_as_uas()),
            (Refresher::Them, "1800;refresher=uac".to_owned())
        );
        let t = uas_negotiate(&req(Some("1800;refresher=uas"), true), 90)
            .expect("ok")
            .expect("timer");
        assert_eq!(t.refresher, Refresher::Us);
        let t = uas_negotiate(&req(Some("x=1800"), true), 90);
        assert_eq!(t, Ok(None), "unparsable header ignored");
    }

    #[test]
    fn timings() {
        let t = SessionTimer {
            interval: 1800,
            refresher: Refresher::Us,
            peer_supports: true,
        };
        assert_eq!(t.refresh_after(), Duration::from_secs(900));
        assert_eq!(t.expire_after(), Duration::from_secs(1768));
        let short = SessionTimer { interval: 90, ..t };
        assert_eq!(short.expire_after(), Duration::from_secs(60));
    }

    #[test]
    fn uac_side() {
        let mut r = Message::request(Method::Invite, "sip:a@b");
        r.push_header("Session-Expires", "600;refresher=uas");
        assert_eq!(
            uac_from_response(&r).map(|t| t.refresher),
            Some(Refresher::Them)
        );
        r.set("Session-Expires", "600;refresher=uac");
        assert_eq!(
            uac_from_response(&r).map(|t| t.refresher),
            Some(Refresher::Us)
        );
    }
}
