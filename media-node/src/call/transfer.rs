//! Transfers: the trunk's policy (mode and allowed targets, the toll-fraud
//! guard), the progress a carrier reports for a blind transfer by REFER
//! (RFC 3515) in NOTIFY `message/sipfrag` bodies, and what a dial-through
//! transfer's outcome means. Pure; `call/session.rs` sends the REFER or
//! places the new leg and carries out what these functions decide.

use switchboard_proto::v1alpha1::{Transfer, TransferMode};

/// Why a transfer was refused before anything left the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferRefusal {
    /// The target is not an E.164 number.
    #[error("target {0:?} is not an E.164 number (+ and 1 to 15 digits)")]
    BadTarget(String),
    /// The trunk does not allow transfers.
    #[error("transfers are disabled on this trunk (spec.transfer.mode)")]
    Disabled,
    /// The request asked for another mode than the trunk's.
    #[error("the trunk transfers by {allowed}, not by {asked} (spec.transfer.mode)")]
    WrongMode {
        /// The mode asked for.
        asked: &'static str,
        /// The trunk's mode.
        allowed: &'static str,
    },
    /// The target matches none of the trunk's allowed targets.
    #[error("target {0} is not in the trunk's spec.transfer.allowedTargets")]
    NotAllowed(String),
}

/// How a transfer is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// The carrier connects the caller (REFER).
    Refer,
    /// The node calls the target through the trunk and bridges the legs.
    Dial,
}

impl How {
    /// The wire name (`mode` in requests and `spec.transfer.mode`).
    pub fn as_str(self) -> &'static str {
        match self {
            How::Refer => "refer",
            How::Dial => "dial",
        }
    }

    /// Parses a request's `mode`; empty is `None` (the trunk's mode).
    pub fn parse(mode: &str) -> Result<Option<How>, String> {
        match mode.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "refer" => Ok(Some(How::Refer)),
            "dial" => Ok(Some(How::Dial)),
            _ => Err(format!(
                "mode {:?} is not refer or dial",
                mode.chars().take(16).collect::<String>()
            )),
        }
    }
}

/// Checks a transfer target against the trunk's policy; `Ok` is the target
/// normalised to `+` and digits (spaces, dashes, dots and parentheses are
/// ignored, as users write numbers) and how the transfer is done. `asked`:
/// the mode the request named, which must be the trunk's.
pub fn check(
    policy: Option<&Transfer>,
    target: &str,
    asked: Option<How>,
) -> Result<(String, How), TransferRefusal> {
    let digits: String = target
        .trim()
        .trim_start_matches('+')
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TransferRefusal::BadTarget(
            target.chars().take(40).collect(),
        ));
    }
    let Some(policy) = policy else {
        return Err(TransferRefusal::Disabled);
    };
    let how = match policy.mode() {
        TransferMode::Refer => How::Refer,
        TransferMode::Dial => How::Dial,
        TransferMode::Disabled | TransferMode::Unspecified => {
            return Err(TransferRefusal::Disabled);
        }
    };
    if let Some(a) = asked.filter(|a| *a != how) {
        return Err(TransferRefusal::WrongMode {
            asked: a.as_str(),
            allowed: how.as_str(),
        });
    }
    let allowed = policy
        .allowed_targets
        .iter()
        .map(|p| p.trim().trim_start_matches('+'))
        .any(|p| !p.is_empty() && digits.starts_with(p));
    if !allowed {
        return Err(TransferRefusal::NotAllowed(format!("+{digits}")));
    }
    Ok((format!("+{digits}"), how))
}

/// Why a dial-through transfer's new leg did not connect, in words for the
/// agent and the call's events, from the deciding SIP status.
pub fn dial_failure(code: Option<u16>, reason: &str) -> String {
    match code {
        Some(486 | 600) => "the target is busy".into(),
        Some(487) if reason.contains("ringing") => "the target did not answer".into(),
        Some(408 | 480) => "the target did not answer".into(),
        Some(603) => "the target declined the call".into(),
        Some(404 | 484 | 604) => "the target number does not exist".into(),
        Some(c) => format!("the carrier refused the call ({c})"),
        None if reason == "cancelled while queued" => {
            "the trunk's channels stayed busy for the whole transfer timeout".into()
        }
        None => format!("the call to the target failed: {reason}"),
    }
}

/// Where a transfer stands, as calls and events report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferState {
    /// REFER sent, no answer yet.
    Requested,
    /// The carrier accepted the REFER (202) or reports it is trying.
    Accepted,
    /// The target rings (sipfrag 180/183).
    Ringing,
    /// The target answered: the caller is connected to it, our leg ends.
    Succeeded,
    /// Refused, failed or no outcome: the caller stays on the call.
    Failed,
}

impl TransferState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferState::Requested => "requested",
            TransferState::Accepted => "accepted",
            TransferState::Ringing => "ringing",
            TransferState::Succeeded => "succeeded",
            TransferState::Failed => "failed",
        }
    }

    /// True once the transfer is over (succeeded or failed).
    pub fn is_final(self) -> bool {
        matches!(self, TransferState::Succeeded | TransferState::Failed)
    }
}

/// One step of a transfer, for the tracker, the webhook and the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferUpdate {
    /// The target (E.164).
    pub target: String,
    /// Where it stands.
    pub state: TransferState,
    /// The SIP code behind the state (the REFER's answer or the sipfrag's), 0 if none.
    pub code: u16,
    /// Why it failed (empty otherwise).
    pub reason: String,
}

/// The status code of a `message/sipfrag` body (RFC 3420): its first line is a
/// status line, `SIP/2.0 180 Ringing`.
pub fn sipfrag_status(body: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(body.get(..body.len().min(256))?).ok()?;
    let line = text.lines().next()?.trim();
    let mut parts = line.split_ascii_whitespace();
    if !parts.next()?.eq_ignore_ascii_case("SIP/2.0") {
        return None;
    }
    let code: u16 = parts.next()?.parse().ok()?;
    (100..700).contains(&code).then_some(code)
}

/// What a NOTIFY's sipfrag status means for the transfer.
pub fn state_of(code: u16) -> TransferState {
    match code {
        180 | 183 => TransferState::Ringing,
        100..=199 => TransferState::Accepted,
        200..=299 => TransferState::Succeeded,
        _ => TransferState::Failed,
    }
}

/// True when a NOTIFY's `Event` header names the refer event package.
pub fn is_refer_event(event: Option<&str>) -> bool {
    event
        .and_then(|e| e.split(';').next())
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("refer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: TransferMode, targets: &[&str]) -> Transfer {
        Transfer {
            mode: mode as i32,
            allowed_targets: targets.iter().map(|s| (*s).to_owned()).collect(),
            no_progress: false,
            caller_id: String::new(),
        }
    }

    #[test]
    fn targets_are_checked_against_the_trunk_policy() {
        let p = policy(TransferMode::Refer, &["+1415", "442071234567"]);
        assert_eq!(
            check(Some(&p), "+1 (415) 555-0100", None),
            Ok(("+14155550100".into(), How::Refer))
        );
        assert_eq!(
            check(Some(&p), "442071234567", Some(How::Refer)),
            Ok(("+442071234567".into(), How::Refer))
        );
        assert_eq!(
            check(Some(&p), "+19005550100", None),
            Err(TransferRefusal::NotAllowed("+19005550100".into()))
        );
        assert!(matches!(
            check(Some(&p), "+1415abc", None),
            Err(TransferRefusal::BadTarget(_))
        ));
        assert!(matches!(
            check(Some(&p), "", None),
            Err(TransferRefusal::BadTarget(_))
        ));
        assert!(matches!(
            check(Some(&p), "+1234567890123456", None),
            Err(TransferRefusal::BadTarget(_))
        ));
        assert_eq!(
            check(None, "+14155550100", None),
            Err(TransferRefusal::Disabled)
        );
        let off = policy(TransferMode::Disabled, &["+1"]);
        assert_eq!(
            check(Some(&off), "+14155550100", None),
            Err(TransferRefusal::Disabled)
        );
        let dial = policy(TransferMode::Dial, &["+1"]);
        assert_eq!(
            check(Some(&dial), "+14155550100", None),
            Ok(("+14155550100".into(), How::Dial))
        );
        assert_eq!(
            check(Some(&dial), "+14155550100", Some(How::Refer)),
            Err(TransferRefusal::WrongMode {
                asked: "refer",
                allowed: "dial"
            })
        );
        assert_eq!(How::parse(""), Ok(None));
        assert_eq!(How::parse("DIAL"), Ok(Some(How::Dial)));
        assert!(How::parse("warm").is_err());
        // An empty pattern never allows everything.
        let empty = policy(TransferMode::Refer, &["", "+"]);
        assert!(matches!(
            check(Some(&empty), "+1", None),
            Err(TransferRefusal::NotAllowed(_))
        ));
    }

    #[test]
    fn dial_failures_in_words() {
        assert_eq!(dial_failure(Some(486), ""), "the target is busy");
        assert_eq!(
            dial_failure(Some(487), "ringing timeout"),
            "the target did not answer"
        );
        assert_eq!(
            dial_failure(Some(503), "every gateway failed"),
            "the carrier refused the call (503)"
        );
        assert!(dial_failure(None, "node at capacity").contains("node at capacity"));
        assert!(dial_failure(None, "cancelled while queued").contains("channels stayed busy"));
    }

    #[test]
    fn sipfrag_progress() {
        assert_eq!(sipfrag_status(b"SIP/2.0 100 Trying\r\n"), Some(100));
        assert_eq!(sipfrag_status(b"SIP/2.0 200 OK"), Some(200));
        assert_eq!(
            sipfrag_status(b"sip/2.0 486 Busy Here\r\nX: y\r\n"),
            Some(486)
        );
        assert_eq!(sipfrag_status(b"SIP/2.0 99 Odd"), None);
        assert_eq!(sipfrag_status(b"INVITE sip:a@b SIP/2.0"), None);
        assert_eq!(sipfrag_status(&[0xff, 0xfe]), None);
        assert_eq!(sipfrag_status(b""), None);
        assert_eq!(state_of(100), TransferState::Accepted);
        assert_eq!(state_of(180), TransferState::Ringing);
        assert_eq!(state_of(200), TransferState::Succeeded);
        assert_eq!(state_of(603), TransferState::Failed);
        assert!(is_refer_event(Some("refer")));
        assert!(is_refer_event(Some("REFER;id=93")));
        assert!(!is_refer_event(Some("presence")));
        assert!(!is_refer_event(None));
    }
}
