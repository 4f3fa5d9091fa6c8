//! Desired status from verdicts. `lastTransitionTime` changes only when a
//! condition's status really changes, so it is carried over from the status
//! the object already has.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{PhoneNumberStatus, SipTrunkStatus, condition};
use crate::fleet::view::{TrunkFleet, reason as fleet_reason};
use crate::routing::{NumberVerdict, TrunkVerdict, Verdict};

/// What the fleet says about an object, when the operator programs a fleet.
pub enum Fleet<'a, T> {
    /// No fleet is programmed (e.g. resolution only): no fleet conditions.
    Off,
    /// A fleet is programmed; `None` when the object is not routed.
    On(Option<&'a T>),
}

fn not_routed(accepted: &Verdict, refs: &Verdict) -> Verdict {
    let why = if accepted.ok { refs } else { accepted };
    Verdict {
        ok: false,
        reason: fleet_reason::NOT_ROUTED,
        message: format!(
            "not in the routing configuration ({}: {})",
            why.reason, why.message
        ),
    }
}

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

/// The status a trunk should have: the resolver's verdict plus, when a
/// fleet is programmed, what the fleet reports.
pub fn trunk_status(
    v: &TrunkVerdict,
    fleet: Fleet<'_, TrunkFleet>,
    now: Timestamp,
    current: Option<&SipTrunkStatus>,
) -> SipTrunkStatus {
    let prev = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let g = v.generation;
    let mut conditions = vec![
        condition(condition::ACCEPTED, &v.accepted, g, prev, now),
        condition(condition::RESOLVED_REFS, &v.resolved_refs, g, prev, now),
    ];
    let mut status = SipTrunkStatus {
        observed_generation: Some(g),
        numbers: v.numbers,
        ..Default::default()
    };
    match fleet {
        Fleet::Off => {}
        Fleet::On(None) => {
            let nr = not_routed(&v.accepted, &v.resolved_refs);
            conditions.push(condition(condition::PROGRAMMED, &nr, g, prev, now));
        }
        Fleet::On(Some(f)) => {
            conditions.push(condition(
                condition::PROGRAMMED,
                &f.programmed,
                g,
                prev,
                now,
            ));
            if let Some(r) = &f.registered {
                conditions.push(condition(condition::REGISTERED, r, g, prev, now));
            }
            if let Some(d) = &f.degraded {
                conditions.push(condition(condition::DEGRADED, d, g, prev, now));
            }
            status.nodes = Some(f.nodes.clone());
            status.active_calls = f.active_calls;
            status.gateways = f.gateways.clone();
            status.ingress = f.ingress.clone();
        }
    }
    status.conditions = conditions;
    status
}

/// The status a phone number should have.
pub fn number_status(
    v: &NumberVerdict,
    fleet: Fleet<'_, Verdict>,
    now: Timestamp,
    current: Option<&PhoneNumberStatus>,
) -> PhoneNumberStatus {
    let prev = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let g = v.generation;
    let mut conditions = vec![
        condition(condition::ACCEPTED, &v.accepted, g, prev, now),
        condition(condition::RESOLVED_REFS, &v.resolved_refs, g, prev, now),
    ];
    match fleet {
        Fleet::Off => {}
        Fleet::On(None) => {
            let nr = not_routed(&v.accepted, &v.resolved_refs);
            conditions.push(condition(condition::PROGRAMMED, &nr, g, prev, now));
        }
        Fleet::On(Some(p)) => conditions.push(condition(condition::PROGRAMMED, p, g, prev, now)),
    }
    PhoneNumberStatus {
        observed_generation: Some(g),
        conditions,
    }
}

/// Condition types whose status flipped, or that appeared False, for
/// Events. A condition that first appears True is the expected course of a
/// new object, not news: 10,000 new PhoneNumbers would otherwise cost 30,000
/// Events and as many API calls on top of their status writes.
pub fn transitions<'a>(
    old: &'a [Condition],
    new: &'a [Condition],
) -> impl Iterator<Item = &'a Condition> {
    new.iter()
        .filter(move |c| match old.iter().find(|o| o.type_ == c.type_) {
            None => c.status != "True",
            Some(o) => o.status != c.status || o.reason != c.reason,
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
