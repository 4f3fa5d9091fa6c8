//! RFC 4028 session timers, part of the dialog layer: negotiating the
//! interval and the refresher ([`uas_negotiate`], [`uac_from_response`]) and
//! the dialog's refresh clock ([`RefreshClock`]), a pure state machine the
//! call task drives with the current time, the answers to its refreshes and
//! the peer's successful refreshes.

use std::time::Duration;

use tokio::time::Instant;

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

    /// The `Session-Expires` value for a message of the transaction in which
    /// we play `role`: the `refresher` parameter names the refresher by its
    /// role in that transaction, not in the dialog's first INVITE (RFC 4028 4).
    pub fn header(&self, role: Role) -> String {
        let we_are_uac = role == Role::Uac;
        let who = if (self.refresher == Refresher::Us) == we_are_uac {
            "uac"
        } else {
            "uas"
        };
        format!("{};refresher={who}", self.interval)
    }
}

/// Our role in the transaction that carries a `Session-Expires`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We sent the request (our INVITE, our refresh).
    Uac,
    /// We answer it (the peer's INVITE or refresh).
    Uas,
}

/// Retry delay after a refresh refused with something other than 408, 422
/// or 481 (491 glare, a 5xx): well before the session lapses.
pub const REFRESH_RETRY: Duration = Duration::from_secs(2);

/// What the dialog must do now, from [`RefreshClock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing until [`RefreshClock::deadline`].
    Nothing,
    /// Send a refresh (re-INVITE or UPDATE) with this timer's
    /// `Session-Expires` (as UAC) and report its answer with
    /// [`RefreshClock::refresh_answered`].
    Refresh(SessionTimer),
    /// The session is gone (not refreshed in time, or the peer answered our
    /// refresh 408/481 or not at all): send BYE (RFC 4028 10).
    Expired,
}

/// The RFC 4028 clock of one dialog. Sans-IO: every input carries the
/// current time and every output says what to send; the caller sleeps until
/// [`RefreshClock::deadline`] and calls [`RefreshClock::on_deadline`].
#[derive(Debug, Clone)]
pub struct RefreshClock {
    timer: Option<SessionTimer>,
    /// When `on_deadline` has something to do.
    due: Option<Instant>,
    /// When the session lapses without a successful refresh.
    lapses: Option<Instant>,
    /// A refresh of ours awaits its final answer.
    in_flight: bool,
}

impl RefreshClock {
    /// A clock for the agreed timer (`None`: no session timer), not running
    /// until [`RefreshClock::start`].
    pub fn new(timer: Option<SessionTimer>) -> Self {
        RefreshClock {
            timer,
            due: None,
            lapses: None,
            in_flight: false,
        }
    }

    /// The agreed timer, if any.
    pub fn timer(&self) -> Option<SessionTimer> {
        self.timer
    }

    /// The session (re)starts now: the dialog is confirmed, or a refresh
    /// succeeded. The refresher refreshes at half the interval; the other side
    /// gives up at the interval minus min(32 s, a third) (RFC 4028 10).
    pub fn start(&mut self, now: Instant) {
        let Some(t) = self.timer else {
            self.due = None;
            self.lapses = None;
            return;
        };
        self.lapses = Some(now + Duration::from_secs(u64::from(t.interval)));
        self.due = Some(match t.refresher {
            Refresher::Us => now + t.refresh_after(),
            Refresher::Them => now + t.expire_after(),
        });
    }

    /// When to call [`RefreshClock::on_deadline`]; `None`: never.
    pub fn deadline(&self) -> Option<Instant> {
        self.due
    }

    /// The deadline passed (or the caller woke for another reason: early
    /// calls do nothing).
    pub fn on_deadline(&mut self, now: Instant) -> Due {
        let (Some(t), Some(due)) = (self.timer, self.due) else {
            return Due::Nothing;
        };
        if now < due {
            return Due::Nothing;
        }
        let lapsed = self.lapses.is_some_and(|l| now >= l);
        match t.refresher {
            Refresher::Them => {
                self.due = None;
                Due::Expired
            }
            Refresher::Us if lapsed => {
                self.due = None;
                Due::Expired
            }
            // Our refresh is still unanswered: wait for it, but not past the lapse.
            Refresher::Us if self.in_flight => {
                self.due = self.lapses;
                Due::Nothing
            }
            Refresher::Us => {
                self.in_flight = true;
                self.due = self.lapses;
                Due::Refresh(t)
            }
        }
    }

    /// The peer's re-INVITE or UPDATE was answered 2xx by us: that refreshes
    /// the session (RFC 4028 10), with the timer it negotiated (`None`: the
    /// request had no Session-Expires; we keep the one we have rather than
    /// lose dead-dialog detection).
    pub fn peer_refreshed(&mut self, negotiated: Option<SessionTimer>, now: Instant) {
        if negotiated.is_some() {
            self.timer = negotiated;
        }
        self.start(now);
    }

    /// The final answer to our refresh (`None`: the transaction timed out or
    /// the transport failed).
    pub fn refresh_answered(&mut self, answer: Option<&Message>, now: Instant) -> Due {
        self.in_flight = false;
        let Some(t) = self.timer else {
            return Due::Nothing;
        };
        let Some(code) = answer.and_then(Message::code) else {
            self.due = None;
            return Due::Expired;
        };
        match code {
            200..=299 => {
                // The answer may change the interval. We stay the refresher even
                // when it names the peer: many peers echo the dialog's first
                // value (`uas`) into this answer, where it would mean themselves,
                // and a refresher too many costs one request while none ends the
                // call. An answer without Session-Expires keeps our timer too.
                if let Some(new) = answer.and_then(uac_from_response) {
                    self.timer = Some(SessionTimer {
                        interval: new.interval,
                        ..t
                    });
                }
                self.start(now);
                Due::Nothing
            }
            408 | 481 => {
                self.due = None;
                Due::Expired
            }
            422 => {
                let min_se = answer
                    .and_then(|m| m.header("Min-SE"))
                    .and_then(|v| v.split(';').next())
                    .and_then(|v| v.trim().parse::<u32>().ok());
                match min_se {
                    // Retry at once with the interval the peer asks for (RFC 4028 7.3).
                    Some(min) if min > t.interval => {
                        let raised = SessionTimer { interval: min, ..t };
                        self.timer = Some(raised);
                        self.in_flight = true;
                        Due::Refresh(raised)
                    }
                    _ => self.retry_later(now),
                }
            }
            _ => self.retry_later(now),
        }
    }

    fn retry_later(&mut self, now: Instant) -> Due {
        let retry = now + REFRESH_RETRY;
        self.due = Some(self.lapses.map_or(retry, |l| l.min(retry)));
        Due::Nothing
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
            (t.refresher, t.header(Role::Uas)),
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

    fn timer(interval: u32, refresher: Refresher) -> SessionTimer {
        SessionTimer {
            interval,
            refresher,
            peer_supports: true,
        }
    }

    fn answer(code: u16, extra: &[(&str, &str)]) -> Message {
        let mut req = Message::request(Method::Update, "sip:a@b");
        for (k, v) in extra {
            req.push_header(k, v);
        }
        let mut resp = req.response(code, "x", Some("t"));
        for (k, v) in extra {
            resp.set(k, *v);
        }
        resp
    }

    #[test]
    fn refresher_named_by_transaction_role() {
        let ours = timer(1800, Refresher::Us);
        assert_eq!(ours.header(Role::Uac), "1800;refresher=uac");
        assert_eq!(ours.header(Role::Uas), "1800;refresher=uas");
        let theirs = timer(1800, Refresher::Them);
        assert_eq!(theirs.header(Role::Uac), "1800;refresher=uas");
        assert_eq!(theirs.header(Role::Uas), "1800;refresher=uac");
    }

    #[test]
    fn no_timer_never_fires() {
        let t0 = Instant::now();
        let mut c = RefreshClock::new(None);
        c.start(t0);
        assert_eq!(c.deadline(), None);
        assert_eq!(c.on_deadline(t0 + Duration::from_secs(86400)), Due::Nothing);
    }

    #[test]
    fn refresher_refreshes_at_half_interval_and_restarts_on_success() {
        let t0 = Instant::now();
        let mut c = RefreshClock::new(Some(timer(90, Refresher::Us)));
        c.start(t0);
        assert_eq!(c.deadline(), Some(t0 + Duration::from_secs(45)));
        assert_eq!(
            c.on_deadline(t0 + Duration::from_secs(44)),
            Due::Nothing,
            "early wake"
        );
        let at = t0 + Duration::from_secs(45);
        assert_eq!(c.on_deadline(at), Due::Refresh(timer(90, Refresher::Us)));
        // While it is in flight nothing else is sent; the wait ends at the lapse.
        assert_eq!(c.deadline(), Some(t0 + Duration::from_secs(90)));
        let ok_at = at + Duration::from_millis(300);
        assert_eq!(
            c.refresh_answered(Some(&answer(200, &[])), ok_at),
            Due::Nothing
        );
        assert_eq!(c.deadline(), Some(ok_at + Duration::from_secs(45)));
    }

    #[test]
    fn answer_may_change_the_interval_but_we_keep_refreshing() {
        let t0 = Instant::now();
        let mut c = RefreshClock::new(Some(timer(1800, Refresher::Us)));
        c.start(t0);
        let at = t0 + Duration::from_secs(900);
        assert!(matches!(c.on_deadline(at), Due::Refresh(_)));
        let resp = answer(200, &[("Session-Expires", "600;refresher=uas")]);
        assert_eq!(c.refresh_answered(Some(&resp), at), Due::Nothing);
        assert_eq!(
            c.timer().map(|t| (t.interval, t.refresher)),
            Some((600, Refresher::Us))
        );
        assert_eq!(c.deadline(), Some(at + Duration::from_secs(300)));
        assert!(matches!(
            c.on_deadline(at + Duration::from_secs(300)),
            Due::Refresh(_)
        ));
        // An answer without Session-Expires keeps the timer.
        let later = at + Duration::from_secs(301);
        assert_eq!(
            c.refresh_answered(Some(&answer(200, &[])), later),
            Due::Nothing
        );
        assert_eq!(c.deadline(), Some(later + Duration::from_secs(300)));
    }

    #[test]
    fn gone_answers_and_silence_expire() {
        for ans in [Some(answer(408, &[])), Some(answer(481, &[])), None] {
            let t0 = Instant::now();
            let mut c = RefreshClock::new(Some(timer(90, Refresher::Us)));
            c.start(t0);
            let at = t0 + Duration::from_secs(45);
            assert!(matches!(c.on_deadline(at), Due::Refresh(_)));
            assert_eq!(c.refresh_answered(ans.as_ref(), at), Due::Expired);
            assert_eq!(c.deadline(), None);
        }
    }

    #[test]
    fn glare_retries_until_the_lapse() {
        let t0 = Instant::now();
        let mut c = RefreshClock::new(Some(timer(90, Refresher::Us)));
        c.start(t0);
        let mut now = t0 + Duration::from_secs(45);
        let mut refreshes = 0;
        loop {
            match c.on_deadline(now) {
                Due::Refresh(_) => {
                    refreshes += 1;
                    assert_eq!(
                        c.refresh_answered(Some(&answer(491, &[])), now),
                        Due::Nothing
                    );
                    assert_eq!(
                        c.deadline(),
                        Some((now + REFRESH_RETRY).min(t0 + Duration::from_secs(90)))
                    );
                }
                Due::Expired => break,
                Due::Nothing => panic!("woken at the deadline with nothing to do"),
            }
            now = c.deadline().expect("armed");
        }
        assert_eq!(
            now,
            t0 + Duration::from_secs(90),
            "gives up when the session lapses"
        );
        // 45 s of retries every 2 s, the first at 45 s.
        assert_eq!(refreshes, 23);
    }

    #[test]
    fn too_small_interval_retried_with_min_se() {
        let t0 = Instant::now();
        let mut c = RefreshClock::new(Some(timer(90, Refresher::Us)));
        c.start(t0);
        let at = t0 + Duration::from_secs(45);
        assert!(matches!(c.on_deadline(at), Due::Refresh(_)));
        let resp = answer(422, &[("Min-SE", "300")]);
        assert_eq!(
            c.refresh_answered(Some(&resp), at),
            Due::Refresh(timer(300, Refresher::Us))
        );
        // A 422 that asks for no more than we sent is not retried at once.
        let bogus = answer(422, &[("Min-SE", "60")]);
        assert_eq!(c.refresh_answered(Some(&bogus), at), Due::Nothing);
        assert_eq!(c.deadline(), Some(at + REFRESH_RETRY));
    }

    #[test]
    fn watcher_expires_unless_the_peer_refreshes() {
        let t0 = Instant::now();
        let mut c = RefreshClock::new(Some(timer(90, Refresher::Them)));
        c.start(t0);
        assert_eq!(c.deadline(), Some(t0 + Duration::from_secs(60)));
        let refresh_at = t0 + Duration::from_secs(40);
        c.peer_refreshed(None, refresh_at);
        assert_eq!(
            c.on_deadline(t0 + Duration::from_secs(60)),
            Due::Nothing,
            "refreshed"
        );
        assert_eq!(c.deadline(), Some(refresh_at + Duration::from_secs(60)));
        // A refresh that renegotiates makes us the refresher.
        c.peer_refreshed(Some(timer(120, Refresher::Us)), refresh_at);
        assert_eq!(c.deadline(), Some(refresh_at + Duration::from_secs(60)));
        assert_eq!(
            c.on_deadline(refresh_at + Duration::from_secs(60)),
            Due::Refresh(timer(120, Refresher::Us))
        );
        assert_eq!(
            c.on_deadline(refresh_at + Duration::from_secs(200)),
            Due::Expired
        );
    }
}
