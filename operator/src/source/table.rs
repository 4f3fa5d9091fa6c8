//! The conditions of every object as a table for a terminal.

use std::fmt::Write;

use super::files::Problem;
use crate::routing::{Resolution, Verdict};

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

/// Renders trunks, then numbers, then unreadable documents.
pub fn render(r: &Resolution, problems: &[Problem]) -> String {
    let mut rows: Vec<[String; 6]> = vec![[
        "KIND".into(),
        "NAMESPACE/NAME".into(),
        "ACCEPTED".into(),
        "RESOLVEDREFS".into(),
        "NUMBERS".into(),
        "DETAIL".into(),
    ]];
    for (k, v) in &r.trunks {
        rows.push([
            "SipTrunk".into(),
            k.to_string(),
            word(&v.accepted).into(),
            word(&v.resolved_refs).into(),
            v.numbers.to_string(),
            detail(&v.accepted, &v.resolved_refs),
        ]);
    }
    for (k, v) in &r.numbers {
        rows.push([
            "PhoneNumber".into(),
            k.to_string(),
            word(&v.accepted).into(),
            word(&v.resolved_refs).into(),
            "-".into(),
            detail(&v.accepted, &v.resolved_refs),
        ]);
    }
    let mut widths = [0usize; 5];
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
        let _ = writeln!(out, "{}", row[5]);
    }
    for p in problems {
        let _ = writeln!(out, "skipped {}: {}", p.location, p.message);
    }
    out
}
