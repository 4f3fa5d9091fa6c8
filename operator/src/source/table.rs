//! The conditions of every object as a table for a terminal.

use std::fmt::Write;

use super::files::Problem;
use crate::fleet::view::{FleetView, Unprogrammed};
use crate::routing::index::Snapshot;
use crate::routing::{NumberVerdict, ObjectKey, Verdict};

fn word(v: &Verdict) -> &'static str {
    if v.ok { "True" } else { "False" }
}

fn detail(accepted: &Verdict, refs: &Verdict) -> String {
    if !accepted.ok {
        format!("{}: {}", accepted.reason, accepted.message)
    } else if !refs.ok {
        format!("{}: {}", refs.reason, refs.message)
    } else {
        String::new()
    }
}

/// Above this many numbers, only those with a problem are listed.
pub const LIST_ALL_UP_TO: usize = 200;

fn number_row(k: &ObjectKey, v: &NumberVerdict, programmed: String, detail: String) -> [String; 7] {
    [
        "PhoneNumber".into(),
        k.to_string(),
        word(&v.accepted).into(),
        word(&v.resolved_refs).into(),
        programmed,
        "-".into(),
        detail,
    ]
}

/// The numbers of a long list that need attention: those the resolver
/// refused and those the fleet does not run yet, at most [`LIST_ALL_UP_TO`]
/// rows, the rest counted in `summary`. The cost follows the numbers listed,
/// except for one pass over the verdicts.
fn quiet_numbers(
    r: &Snapshot,
    fleet: Option<&FleetView>,
    rows: &mut Vec<[String; 7]>,
    summary: &mut Vec<String>,
) {
    let mut listed = 0usize;
    let mut unlisted = 0usize;
    let mut push = |rows: &mut Vec<[String; 7]>, row: [String; 7]| {
        if listed < LIST_ALL_UP_TO {
            rows.push(row);
            listed += 1;
        } else {
            unlisted += 1;
        }
    };
    let mut usable = 0usize;
    for (k, v) in &r.numbers {
        if v.usable() {
            usable += 1;
            continue;
        }
        let d = detail(&v.accepted, &v.resolved_refs);
        let p = if fleet.is_some() { "False" } else { "-" };
        push(rows, number_row(k, v, p.into(), d));
    }
    let mut waiting = 0usize;
    match fleet.map(FleetView::unprogrammed) {
        None => {}
        Some(Unprogrammed::All(verdict, routed)) if !verdict.ok => {
            waiting = routed;
            summary.push(format!(
                "{routed} usable PhoneNumbers are not programmed: {}: {}",
                verdict.reason, verdict.message
            ));
        }
        Some(Unprogrammed::All(..)) => {}
        Some(Unprogrammed::Some(pending)) => {
            for (id, verdict) in pending {
                // Ids are `namespace/name`; a namespace holds no `/`.
                let Some((ns, name)) = id.split_once('/') else {
                    continue;
                };
                let key = ObjectKey::new(ns, name);
                let Some(v) = r.numbers.get(&key).filter(|v| v.usable()) else {
                    continue;
                };
                waiting += 1;
                let d = format!("{}: {}", verdict.reason, verdict.message);
                push(rows, number_row(&key, v, word(&verdict).into(), d));
            }
        }
    }
    if unlisted > 0 {
        summary.push(format!(
            "... and {unlisted} more PhoneNumbers that need attention (not listed)"
        ));
    }
    let hidden = usable.saturating_sub(waiting);
    if hidden > 0 {
        summary.push(format!(
            "... and {hidden} more PhoneNumbers, all usable (not listed)"
        ));
    }
}

/// Renders trunks, then numbers, then unreadable documents. With a fleet,
/// a PROGRAMMED column shows how many nodes run each object.
pub fn render(r: &Snapshot, fleet: Option<&FleetView>, problems: &[Problem]) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "KIND".into(),
        "NAMESPACE/NAME".into(),
        "ACCEPTED".into(),
        "RESOLVEDREFS".into(),
        "PROGRAMMED".into(),
        "NUMBERS".into(),
        "DETAIL".into(),
    ]];
    let programmed = |v: Option<&Verdict>, detail: &mut String| -> String {
        match (fleet, v) {
            (None, _) => "-".into(),
            (Some(_), None) => "False".into(),
            (Some(_), Some(v)) => {
                if !v.ok && detail.is_empty() {
                    *detail = format!("{}: {}", v.reason, v.message);
                }
                word(v).into()
            }
        }
    };
    for (k, v) in &r.trunks {
        let mut d = detail(&v.accepted, &v.resolved_refs);
        let p = programmed(
            fleet
                .and_then(|f| f.trunks.get(&k.id()))
                .map(|t| &t.programmed),
            &mut d,
        );
        if let Some(t) = fleet.and_then(|f| f.trunks.get(&k.id()))
            && d.is_empty()
        {
            d = format!(
                "{}/{} nodes, {} active calls",
                t.nodes.programmed, t.nodes.total, t.active_calls
            );
        }
        rows.push([
            "SipTrunk".into(),
            k.to_string(),
            word(&v.accepted).into(),
            word(&v.resolved_refs).into(),
            p,
            v.numbers.to_string(),
            d,
        ]);
    }
    // Long lists show only the numbers that need attention, found without
    // visiting the others' fleet state.
    let mut summary = Vec::new();
    if r.numbers.len() > LIST_ALL_UP_TO {
        quiet_numbers(r, fleet, &mut rows, &mut summary);
    } else {
        for (k, v) in &r.numbers {
            let mut d = detail(&v.accepted, &v.resolved_refs);
            let verdict = fleet.and_then(|f| f.number(&k.id()));
            let p = programmed(verdict.as_ref(), &mut d);
            rows.push(number_row(k, v, p, d));
        }
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        for (w, cell) in widths.iter().zip(row.iter()) {
            let _ = write!(out, "{cell:<w$}  ");
        }
        let _ = writeln!(out, "{}", row[6]);
    }
    for line in summary {
        let _ = writeln!(out, "{line}");
    }
    for p in problems {
        let _ = writeln!(out, "skipped {}: {}", p.location, p.message);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::view::{NodeView, Since, build};
    use crate::routing::NumberVerdict;

    fn verdict(ok: bool) -> Verdict {
        Verdict {
            ok,
            reason: if ok { "Accepted" } else { "InvalidNumber" },
            message: if ok { String::new() } else { "bad".into() },
        }
    }

    /// `count` numbers, those in `refused` not accepted; the others routed
    /// at version 5, except those in `newer`, at version 9.
    fn world(count: usize, refused: &[usize], newer: &[usize]) -> (Snapshot, Since) {
        let mut r = Snapshot::default();
        let mut since = Since::default();
        for i in 0..count {
            let key = ObjectKey::new("ns", format!("n{i:04}"));
            let ok = !refused.contains(&i);
            r.numbers.insert(
                key.clone(),
                NumberVerdict {
                    generation: 1,
                    accepted: verdict(ok),
                    resolved_refs: verdict(true),
                },
            );
            if ok {
                since.set(&key.id(), if newer.contains(&i) { 9 } else { 5 });
            }
        }
        (r, since)
    }

    fn node(acked: u64) -> NodeView {
        NodeView {
            id: "a".into(),
            acked_version: acked,
            status: None,
            refused: None,
        }
    }

    fn listed(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.starts_with("PhoneNumber"))
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect()
    }

    #[test]
    fn a_long_list_shows_exactly_the_numbers_that_need_attention() {
        let (r, since) = world(300, &[3, 250], &[7, 8, 299]);
        let fleet = build(std::iter::empty(), &since, &[node(8)]);
        let text = render(&r, Some(&fleet), &[]);
        let mut got = listed(&text);
        got.sort();
        // The per-number answer, asked of every number, is the oracle.
        let mut want: Vec<String> = r
            .numbers
            .iter()
            .filter(|(k, v)| !v.usable() || fleet.number(&k.id()).is_some_and(|p| !p.ok))
            .map(|(k, _)| k.to_string())
            .collect();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(got.len(), 5);
        assert!(
            text.contains("... and 295 more PhoneNumbers, all usable (not listed)"),
            "{text}"
        );
        assert!(text.contains("Pending"), "{text}");
    }

    #[test]
    fn a_long_list_before_any_node_applied_says_so_in_one_line() {
        let (r, since) = world(300, &[], &[]);
        let fleet = build(std::iter::empty(), &since, &[node(0)]);
        let text = render(&r, Some(&fleet), &[]);
        assert!(listed(&text).is_empty(), "{text}");
        assert!(
            text.contains("300 usable PhoneNumbers are not programmed"),
            "{text}"
        );
        assert!(!text.contains("all usable (not listed)"), "{text}");
    }

    #[test]
    fn a_long_list_of_problems_is_cut_and_counted() {
        let refused: Vec<usize> = (0..260).collect();
        let (r, since) = world(300, &refused, &[]);
        let text = render(&r, None, &[]);
        assert_eq!(listed(&text).len(), LIST_ALL_UP_TO);
        assert!(
            text.contains("... and 60 more PhoneNumbers that need attention (not listed)"),
            "{text}"
        );
        assert!(
            text.contains("... and 40 more PhoneNumbers, all usable (not listed)"),
            "{text}"
        );
        let fleet = build(std::iter::empty(), &since, &[node(5)]);
        assert_eq!(listed(&render(&r, Some(&fleet), &[])).len(), LIST_ALL_UP_TO);
    }
}
