//! Blind transfer by REFER (RFC 3515): the trunk's policy (mode and allowed
//! targets, the toll-fraud guard) and the progress the carrier reports in
//! NOTIFY `message/sipfrag` bodies. Pure; `call/session.rs` sends the REFER
//! and carries out what these functions decide.

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
    /// The trunk transfers by dialling through, which is not built yet.
    #[error("the trunk's transfer mode is dial, which is not supported yet; use refer")]
    DialNotSupported,
    /// The target matches none of the trunk's allowed targets.
    #[error("target {0} is not in the trunk's spec.transfer.allowedTargets")]
    NotAllowed(String),
}

/// Checks a transfer target against the trunk's policy; `Ok` is the target
/// normalised to `+` and digits (spaces, dashes, dots and parentheses are
/// ignored, as users write numbers).
pub fn check(policy: Option<&Transfer>, target: &str) -> Result<String, TransferRefusal> {
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
    match policy.mode() {
        TransferMode::Refer => {}
        TransferMode::Dial => return Err(TransferRefusal::DialNotSupported),
        TransferMode::Disabled | TransferMode::Unspecified => {
            return Err(TransferRefusal::Disabled);
        }
    }
    let allowed = policy
        .allowed_targets
        .iter()
        .map(|p| p.trim().trim_start_matches('+'))
        .any(|p| !p.is_empty() && digits.starts_with(p));
    if !allowed {
        return Err(TransferRefusal::NotAllowed(format!("+{digits}")));
    }
    Ok(format!("+{digits}"))
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
        }
    }

    #[test]
    fn targets_are_checked_against_the_trunk_policy() {
        let p = policy(TransferMode::Refer, &["+1415", "442071234567"]);
        assert_eq!(
            check(Some(&p), "+1 (415) 555-0100"),
            Ok("+14155550100".into())
        );
        assert_eq!(check(Some(&p), "442071234567"), Ok("+442071234567".into()));
        assert_eq!(
            check(Some(&p), "+19005550100"),
            Err(TransferRefusal::NotAllowed("+19005550100".into()))
        );
        assert!(matches!(
            check(Some(&p), "+1415abc"),
            Err(TransferRefusal::BadTarget(_))
        ));
        assert!(matches!(
            check(Some(&p), ""),
            Err(TransferRefusal::BadTarget(_))
        ));
        assert!(matches!(
            check(Some(&p), "+1234567890123456"),
            Err(TransferRefusal::BadTarget(_))
        ));
        assert_eq!(check(None, "+14155550100"), Err(TransferRefusal::Disabled));
        let off = policy(TransferMode::Disabled, &["+1"]);
        assert_eq!(
            check(Some(&off), "+14155550100"),
            Err(TransferRefusal::Disabled)
        );
        let dial = policy(TransferMode::Dial, &["+1"]);
        assert_eq!(
            check(Some(&dial), "+14155550100"),
            Err(TransferRefusal::DialNotSupported)
        );
        // An empty pattern never allows everything.
        let empty = policy(TransferMode::Refer, &["", "+"]);
        assert!(matches!(
            check(Some(&empty), "+1"),
            Err(TransferRefusal::NotAllowed(_))
        ));
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
