//! Desired status from verdicts. `lastTransitionTime` changes only when a
//! condition's status really changes, so it is carried over from the status
//! the object already has.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{PhoneNumberStatus, SipTrunkStatus, condition};
use crate::routing::{NumberVerdict, TrunkVerdict, Verdict};

fn status_word(ok: bool) -> String {
    if ok { "True" } else { "False" }.to_string()
}

/// One condition, keeping the previous transition time when the status is
/// unchanged.
pub fn condition(
    type_: &str,
    v: &Verdict,
    generation: i64,
    previous: &[Condition],
    now: Timestamp,
) -> Condition {
    let status = status_word(v.ok);
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status,
        reason: v.reason.to_string(),
        message: v.message.clone(),
        observed_generation: Some(generation),
        last_transition_time,
    }
}

/// The status a trunk should have. Fields the fleet reports (active calls,
/// gateways, nodes) are carried over from `current` until the fleet
/// programmer owns them.
pub fn trunk_status(
    v: &TrunkVerdict,
    current: Option<&SipTrunkStatus>,
    now: Timestamp,
) -> SipTrunkStatus {
    let prev = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let mut conditions = vec![
        condition(condition::ACCEPTED, &v.accepted, v.generation, prev, now),
        condition(
            condition::RESOLVED_REFS,
            &v.resolved_refs,
            v.generation,
            prev,
            now,
        ),
    ];
    // Keep conditions other writers own (none yet besides ours).
    conditions.extend(
        prev.iter()
            .filter(|c| c.type_ != condition::ACCEPTED && c.type_ != condition::RESOLVED_REFS)
            .cloned(),
    );
    let base = current.cloned().unwrap_or_default();
    SipTrunkStatus {
        observed_generation: Some(v.generation),
        conditions,
        numbers: v.numbers,
        ..base
    }
}

/// The status a phone number should have.
pub fn number_status(
    v: &NumberVerdict,
    current: Option<&PhoneNumberStatus>,
    now: Timestamp,
) -> PhoneNumberStatus {
    let prev = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let mut conditions = vec![
        condition(condition::ACCEPTED, &v.accepted, v.generation, prev, now),
        condition(
            condition::RESOLVED_REFS,
            &v.resolved_refs,
            v.generation,
            prev,
            now,
        ),
    ];
    conditions.extend(
        prev.iter()
            .filter(|c| c.type_ != condition::ACCEPTED && c.type_ != condition::RESOLVED_REFS)
            .cloned(),
    );
    PhoneNumberStatus {
        observed_generation: Some(v.generation),
        conditions,
    }
}

/// Condition types whose status flipped (or appeared), for Events.
pub fn transitions<'a>(
    old: &'a [Condition],
    new: &'a [Condition],
) -> impl Iterator<Item = &'a Condition> {
    new.iter().filter(move |c| {
        old.iter()
            .find(|o| o.type_ == c.type_)
            .is_none_or(|o| o.status != c.status || o.reason != c.reason)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(ok: bool, reason: &'static str) -> Verdict {
        Verdict {
            ok,
            reason,
            message: "m".into(),
        }
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let t0 = Timestamp::from_second(1_000).expect("t0");
        let t1 = Timestamp::from_second(2_000).expect("t1");
        let a = condition("Accepted", &verdict(true, "Accepted"), 1, &[], t0);
        assert_eq!(a.last_transition_time.0, t0);
        // Same status, new generation and message: time kept.
        let b = condition(
            "Accepted",
            &verdict(true, "Accepted"),
            2,
            std::slice::from_ref(&a),
            t1,
        );
        assert_eq!(b.last_transition_time.0, t0);
        assert_eq!(b.observed_generation, Some(2));
        // Status flips: time moves.
        let c = condition(
            "Accepted",
            &verdict(false, "Conflict"),
            2,
            std::slice::from_ref(&b),
            t1,
        );
        assert_eq!(c.last_transition_time.0, t1);
        assert_eq!(transitions(&[b], std::slice::from_ref(&c)).count(), 1);
        assert_eq!(
            transitions(std::slice::from_ref(&c), std::slice::from_ref(&c)).count(),
            0
        );
    }
}
