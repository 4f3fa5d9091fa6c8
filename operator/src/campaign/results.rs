//! The results sink: per-callee progress in ConfigMaps a user can read with
//! kubectl, [`super::progress::CHUNK`] callees per ConfigMap, so 100,000
//! outcomes never touch the campaign object itself.
//!
//! Each ConfigMap `<campaign>-results-<NNNN>` holds `results.csv`, one line
//! per callee that has been attempted (pending callees are left out):
//!
//! ```text
//! index,state,attempts,code,callId,node,nextAttemptAt,updatedAt,to,id
//! 0,answered,1,200,CA0123…,media-0,,2026-12-03T20:01:02Z,+14155550100,lead-17
//! ```
//!
//! The same file is the operator's durable record: an attempt is written as
//! `dialing` (with its node) before the dial, so a new leader knows which
//! attempts may exist on which node and never dials one twice.

use std::fmt::Write as _;
use std::sync::Arc;

use super::callees::Entry;
use super::progress::{Final, Index, Record, Slot, State};

/// The data key of a results ConfigMap.
pub const KEY: &str = "results.csv";

/// The header line.
pub const HEADER: &str = "index,state,attempts,code,callId,node,nextAttemptAt,updatedAt,to,id";

/// The name of chunk `chunk`'s ConfigMap.
pub fn name(campaign: &str, chunk: u32) -> String {
    format!("{campaign}-results-{chunk:04}")
}

/// A bad line in a results ConfigMap.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{KEY} line {line}: {message}")]
pub struct ResultsError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn parse_time(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// A CSV field, quoted when it needs to be (RFC 4180).
fn field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// Renders one chunk: the header, then every callee that is not pending.
pub fn render<'a>(slots: impl Iterator<Item = (Index, &'a Slot)>, callees: &[Entry]) -> String {
    let mut out = String::with_capacity(64 * 1024);
    out.push_str(HEADER);
    out.push('\n');
    for (i, s) in slots {
        let (state, node, next) = match &s.state {
            State::Pending => continue,
            State::Dialing { node } => ("dialing", node.as_ref(), String::new()),
            State::Retrying { at_ms } => ("retrying", "", time(*at_ms)),
            State::Done(f) => (f.as_str(), "", String::new()),
        };
        let code = if s.code == 0 {
            String::new()
        } else {
            s.code.to_string()
        };
        let _ = write!(
            out,
            "{i},{state},{},{code},{},{node},{next},{},",
            s.attempts,
            s.call_id.as_deref().unwrap_or(""),
            time(s.updated_ms)
        );
        let callee = callees.get(i as usize);
        field(&mut out, callee.map(|c| c.to.as_str()).unwrap_or(""));
        out.push(',');
        field(&mut out, callee.and_then(|c| c.id.as_deref()).unwrap_or(""));
        out.push('\n');
    }
    out
}

/// Reads a chunk back (the columns up to `updatedAt`; `to` and `id` are the
/// callee list's).
pub fn parse(text: &str) -> Result<Vec<Record>, ResultsError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        if line.is_empty() || (n == 0 && line == HEADER) {
            continue;
        }
        let err = |message: String| ResultsError {
            line: line_no,
            message,
        };
        let f: Vec<&str> = line.splitn(9, ',').collect();
        if f.len() < 9 {
            return Err(err(format!("{} fields, expected 10", f.len())));
        }
        let index: Index = f[0].parse().map_err(|_| err(format!("index {:?}", f[0])))?;
        let attempts: u8 = f[2]
            .parse()
            .map_err(|_| err(format!("attempts {:?}", f[2])))?;
        let code: u16 = if f[3].is_empty() {
            0
        } else {
            f[3].parse().map_err(|_| err(format!("code {:?}", f[3])))?
        };
        let state = match f[1] {
            "dialing" if !f[5].is_empty() => State::Dialing {
                node: Arc::from(f[5]),
            },
            "retrying" => State::Retrying {
                at_ms: parse_time(f[6]).ok_or_else(|| err(format!("nextAttemptAt {:?}", f[6])))?,
            },
            other => {
                State::Done(Final::parse(other).ok_or_else(|| err(format!("state {other:?}")))?)
            }
        };
        out.push(Record {
            index,
            slot: Slot {
                state,
                attempts,
                code,
                call_id: (!f[4].is_empty()).then(|| f[4].into()),
                updated_ms: parse_time(f[7]).unwrap_or(0),
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(to: &str, id: Option<&str>) -> Entry {
        Entry {
            to: to.into(),
            id: id.map(Into::into),
            parameters: Vec::new(),
            time_zone: None,
        }
    }

    #[test]
    fn renders_and_reads_back() {
        let slots = [
            Slot {
                state: State::Done(Final::Answered),
                attempts: 1,
                code: 200,
                call_id: Some("CA1".into()),
                updated_ms: 1_700_000_000_000,
            },
            Slot {
                state: State::Pending,
                attempts: 0,
                code: 0,
                call_id: None,
                updated_ms: 0,
            },
            Slot {
                state: State::Dialing {
                    node: "media-1".into(),
                },
                attempts: 2,
                code: 486,
                call_id: None,
                updated_ms: 1_700_000_001_000,
            },
            Slot {
                state: State::Retrying {
                    at_ms: 1_700_000_100_000,
                },
                attempts: 1,
                code: 480,
                call_id: None,
                updated_ms: 1_700_000_002_000,
            },
        ];
        let callees = [
            entry("+14155550100", Some("lead,\"17\"")),
            entry("+14155550101", None),
            entry("+14155550102", None),
            entry("+14155550103", Some("x")),
        ];
        let text = render(
            slots.iter().enumerate().map(|(i, s)| (i as Index, s)),
            &callees,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], HEADER);
        assert!(
            lines[1].ends_with(",+14155550100,\"lead,\"\"17\"\"\""),
            "{}",
            lines[1]
        );
        let back = parse(&text).unwrap();
        let want: Vec<Record> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state != State::Pending)
            .map(|(i, s)| Record {
                index: i as Index,
                slot: s.clone(),
            })
            .collect();
        assert_eq!(back, want);
    }

    #[test]
    fn bad_lines_name_their_number() {
        let e = parse(&format!(
            "{HEADER}\n0,answered,1,200,,,,,+1415,\n1,weird,1,,,,,,+1,\n"
        ))
        .unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("weird"));
    }
}
