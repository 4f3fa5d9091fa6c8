//! The conditions of every object as a table for a terminal.

use std::fmt::Write;

use super::files::Problem;
use crate::fleet::view::FleetView;
use crate::routing::Verdict;
use crate::routing::index::Snapshot;

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
    // Long lists show only the numbers that need attention.
    let quiet = r.numbers.len() > LIST_ALL_UP_TO;
    let mut hidden = 0usize;
    for (k, v) in &r.numbers {
        if quiet && v.usable() && fleet.and_then(|f| f.number(&k.id())).is_none_or(|p| p.ok) {
            hidden += 1;
            continue;
        }
        let mut d = detail(&v.accepted, &v.resolved_refs);
        let verdict = fleet.and_then(|f| f.number(&k.id()));
        let p = programmed(verdict.as_ref(), &mut d);
        rows.push([
            "PhoneNumber".into(),
            k.to_string(),
            word(&v.accepted).into(),
            word(&v.resolved_refs).into(),
            p,
            "-".into(),
            d,
        ]);
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
    if hidden > 0 {
        let _ = writeln!(
            out,
            "... and {hidden} more PhoneNumbers, all usable (not listed)"
        );
    }
    for p in problems {
        let _ = writeln!(out, "skipped {}: {}", p.location, p.message);
    }
    out
}
