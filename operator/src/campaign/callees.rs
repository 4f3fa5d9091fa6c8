//! Callee lists: inline entries and the text of callee ConfigMaps (CSV with
//! a header line, or JSON lines), parsed into [`Entry`]s, and a digest of
//! the whole list so a later change of the ConfigMaps is noticed.
//!
//! Rules for both formats: empty lines and lines starting with `#` are
//! skipped; `to` is E.164 (`+`, a non-zero digit, then 2-14 more digits;
//! spaces, dashes, dots and parentheses are dropped first); `id` is at most
//! [`MAX_ID_BYTES`] bytes; a callee has at most [`MAX_PARAMETERS`]
//! parameters; `timeZone` must be a known IANA time zone. An empty `id`,
//! `timeZone` or CSV parameter cell is the same as none. Errors name the
//! 1-based line and what is wrong; the caller adds the ConfigMap and key.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::crd::{Callee, CalleeFormat};

/// Callees in one campaign, all ConfigMaps and inline entries together.
pub const MAX_CALLEES: usize = 1_000_000;

/// Longest `id`, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Most parameters of one callee.
pub const MAX_PARAMETERS: usize = 32;

/// Longest value quoted back in an error message, in characters.
const SHOWN_CHARS: usize = 40;

/// One callee, as dialled.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Entry {
    /// The number to call, E.164 (`+` and digits only).
    pub to: String,
    /// The caller's own id of this callee.
    pub id: Option<String>,
    /// Agent parameters, sorted by name, names unique.
    pub parameters: Vec<(String, String)>,
    /// IANA time zone for the calling windows (default: the schedule's).
    pub time_zone: Option<String>,
}

impl From<&Callee> for Entry {
    /// An inline callee (validated by the CRD's schema) as an entry.
    fn from(callee: &Callee) -> Entry {
        Entry {
            to: callee.to.clone(),
            id: callee.id.clone(),
            parameters: callee
                .parameters
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            time_zone: callee.time_zone.clone(),
        }
    }
}

/// A callee list that cannot be used: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct CalleeError {
    /// 1-based line of the text (for CSV, the line a record starts on).
    pub line: usize,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong with a line of a callee list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// `to` is not an E.164 number.
    #[error("to {0:?}: not an E.164 number")]
    NotE164(String),
    /// `id` is longer than [`MAX_ID_BYTES`].
    #[error("id is {0} bytes, at most {MAX_ID_BYTES}")]
    IdTooLong(usize),
    /// More than [`MAX_PARAMETERS`] parameters.
    #[error("{0} parameters, at most {MAX_PARAMETERS}")]
    TooManyParameters(usize),
    /// `timeZone` is not a known time zone.
    #[error("timeZone {0:?}: unknown time zone")]
    UnknownZone(String),
    /// The list would exceed [`MAX_CALLEES`].
    #[error("more than {MAX_CALLEES} callees in all")]
    TooMany,
    /// CSV: the header has no `to` column.
    #[error("the header has no \"to\" column")]
    NoToColumn,
    /// CSV: a column name appears twice in the header.
    #[error("column {0:?} appears twice in the header")]
    DuplicateColumn(String),
    /// CSV: a column of the header has no name.
    #[error("column {0} of the header has no name")]
    UnnamedColumn(usize),
    /// CSV: a record's field count differs from the header's.
    #[error("{found} fields, the header has {expected}")]
    FieldCount {
        /// Fields in the record.
        found: usize,
        /// Fields in the header.
        expected: usize,
    },
    /// CSV: a quoted field does not end.
    #[error("a quoted field is not closed")]
    Unterminated,
    /// CSV: a `"` in a field that does not start with one.
    #[error("a quote inside an unquoted field (quote the whole field and double the quote)")]
    StrayQuote,
    /// CSV: something other than `,` or the end of the line after a closing
    /// quote.
    #[error("{0:?} after a closing quote")]
    AfterQuote(char),
    /// JSONL: the line is not a callee object.
    #[error("column {column}: {message}")]
    Json {
        /// 1-based column in the line.
        column: usize,
        /// What the JSON parser said.
        message: String,
    },
}

/// The format of a ConfigMap key's callees: `explicit` if given, else CSV
/// for keys ending in `.csv` (any case) and JSON lines otherwise.
pub fn format_for(key: &str, explicit: Option<CalleeFormat>) -> CalleeFormat {
    if let Some(format) = explicit {
        return format;
    }
    let bytes = key.as_bytes();
    let csv = bytes.len() >= 4 && bytes[bytes.len() - 4..].eq_ignore_ascii_case(b".csv");
    if csv {
        CalleeFormat::Csv
    } else {
        CalleeFormat::Jsonl
    }
}

/// Parses one ConfigMap key's text, appending its callees to `out` (which
/// holds the callees before it: [`MAX_CALLEES`] counts them too). On error
/// `out` is left as it was.
pub fn parse(text: &str, format: CalleeFormat, out: &mut Vec<Entry>) -> Result<(), CalleeError> {
    let before = out.len();
    let mut zones = ZoneCheck::default();
    let result = match format {
        CalleeFormat::Csv => parse_csv(text, out, &mut zones),
        CalleeFormat::Jsonl => parse_jsonl(text, out, &mut zones),
    };
    if result.is_err() {
        out.truncate(before);
    }
    result
}

/// Time zone names already found valid (a list usually repeats a few).
#[derive(Default)]
struct ZoneCheck {
    known: Vec<String>,
}

impl ZoneCheck {
    fn check(&mut self, name: &str) -> Result<(), Problem> {
        if self.known.iter().any(|k| k == name) {
            return Ok(());
        }
        if super::schedule::zone(name).is_err() {
            return Err(Problem::UnknownZone(shown(name)));
        }
        // Bounded: a list with many distinct zones is checked each time.
        if self.known.len() < 64 {
            self.known.push(name.to_owned());
        }
        Ok(())
    }
}

/// Checks and normalises one callee's fields into an entry; `parameters`
/// need not be sorted.
fn entry(
    to: &str,
    id: Option<String>,
    mut parameters: Vec<(String, String)>,
    time_zone: Option<String>,
    zones: &mut ZoneCheck,
) -> Result<Entry, Problem> {
    let to = e164(to).ok_or_else(|| Problem::NotE164(shown(to)))?;
    let id = id.filter(|id| !id.is_empty());
    if let Some(id) = &id
        && id.len() > MAX_ID_BYTES
    {
        return Err(Problem::IdTooLong(id.len()));
    }
    if parameters.len() > MAX_PARAMETERS {
        return Err(Problem::TooManyParameters(parameters.len()));
    }
    parameters.sort_unstable();
    let time_zone = time_zone
        .map(|tz| tz.trim().to_owned())
        .filter(|tz| !tz.is_empty());
    if let Some(tz) = &time_zone {
        zones.check(tz)?;
    }
    Ok(Entry {
        to,
        id,
        parameters,
        time_zone,
    })
}

/// `to` as E.164 (`+` and 3-15 digits, the first not 0) once spaces,
/// dashes, dots and parentheses are dropped.
fn e164(to: &str) -> Option<String> {
    let number: String = to
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = number.strip_prefix('+')?;
    let ok = (3..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    ok.then_some(number)
}

/// A value for an error message, cut to [`SHOWN_CHARS`] characters.
fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        Some((at, _)) => format!("{}…", &value[..at]),
        None => value.to_owned(),
    }
}

fn push(out: &mut Vec<Entry>, entry: Entry) -> Result<(), Problem> {
    if out.len() >= MAX_CALLEES {
        return Err(Problem::TooMany);
    }
    out.push(entry);
    Ok(())
}

/// Whether a line is skipped: empty (but for whitespace) or a comment.
fn skipped(line: &str) -> bool {
    let line = line.trim();
    line.is_empty() || line.starts_with('#')
}

/// One callee line of a JSON lines list: the fields of an inline callee.
#[derive(Deserialize)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    expecting = "a callee object"
)]
struct JsonCallee {
    to: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
    #[serde(default)]
    time_zone: Option<String>,
}

fn parse_jsonl(text: &str, out: &mut Vec<Entry>, zones: &mut ZoneCheck) -> Result<(), CalleeError> {
    for (index, line) in text.lines().enumerate() {
        let line_no = index.saturating_add(1);
        let at = |problem| CalleeError {
            line: line_no,
            problem,
        };
        if skipped(line) {
            continue;
        }
        let callee: JsonCallee = serde_json::from_str(line).map_err(|e| at(json_problem(&e)))?;
        let entry = entry(
            &callee.to,
            callee.id,
            callee.parameters.into_iter().collect(),
            callee.time_zone,
            zones,
        )
        .map_err(at)?;
        push(out, entry).map_err(at)?;
    }
    Ok(())
}

/// serde_json's message without its " at line 1 column N" (the text is one
/// line: the column is kept apart).
fn json_problem(error: &serde_json::Error) -> Problem {
    let message = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let message = message
        .strip_suffix(&suffix)
        .map(str::to_owned)
        .unwrap_or(message);
    Problem::Json {
        column: error.column(),
        message,
    }
}

/// What a CSV column holds.
enum Column {
    To,
    Id,
    TimeZone,
    Parameter(String),
}

fn parse_csv(text: &str, out: &mut Vec<Entry>, zones: &mut ZoneCheck) -> Result<(), CalleeError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = CsvReader::new(text);
    let mut fields = Vec::new();
    let Some(header_line) = reader.next_record(&mut fields)? else {
        return Ok(());
    };
    let header = header(&fields).map_err(|problem| CalleeError {
        line: header_line,
        problem,
    })?;
    let estimate = text.bytes().filter(|b| *b == b'\n').count();
    out.reserve(estimate.min(MAX_CALLEES.saturating_sub(out.len())));
    while let Some(line) = reader.next_record(&mut fields)? {
        let at = |problem| CalleeError { line, problem };
        if fields.len() != header.len() {
            return Err(at(Problem::FieldCount {
                found: fields.len(),
                expected: header.len(),
            }));
        }
        let mut to = None;
        let mut id = None;
        let mut time_zone = None;
        let mut parameters = Vec::new();
        for (column, value) in header.iter().zip(fields.drain(..)) {
            match column {
                Column::To => to = Some(value),
                Column::Id => id = Some(value),
                Column::TimeZone => time_zone = Some(value),
                Column::Parameter(name) if !value.is_empty() => {
                    parameters.push((name.clone(), value))
                }
                Column::Parameter(_) => {}
            }
        }
        let to = to.unwrap_or_default();
        let entry = entry(&to, id, parameters, time_zone, zones).map_err(at)?;
        push(out, entry).map_err(at)?;
    }
    Ok(())
}

/// The header's columns; at most [`MAX_PARAMETERS`] parameter columns.
fn header(fields: &[String]) -> Result<Vec<Column>, Problem> {
    let mut columns = Vec::with_capacity(fields.len());
    let mut has_to = false;
    for (index, name) in fields.iter().enumerate() {
        let name = name.trim();
        if name.is_empty() {
            return Err(Problem::UnnamedColumn(index.saturating_add(1)));
        }
        if fields[..index].iter().any(|other| other.trim() == name) {
            return Err(Problem::DuplicateColumn(shown(name)));
        }
        columns.push(match name {
            "to" => {
                has_to = true;
                Column::To
            }
            "id" => Column::Id,
            "timeZone" => Column::TimeZone,
            _ => Column::Parameter(name.to_owned()),
        });
    }
    if !has_to {
        return Err(Problem::NoToColumn);
    }
    let parameters = columns
        .iter()
        .filter(|c| matches!(c, Column::Parameter(_)))
        .count();
    if parameters > MAX_PARAMETERS {
        return Err(Problem::TooManyParameters(parameters));
    }
    Ok(columns)
}

/// RFC 4180 records: fields separated by `,`, records by LF or CRLF; a
/// field starting with `"` is quoted (it may hold commas, line breaks and
/// `""` for a quote). Skipped lines (see the module) between records are
/// passed over.
struct CsvReader<'a> {
    text: &'a str,
    /// Byte offset of the next record.
    pos: usize,
    /// 1-based line at `pos`.
    line: usize,
}

impl<'a> CsvReader<'a> {
    fn new(text: &'a str) -> Self {
        CsvReader {
            text,
            pos: 0,
            line: 1,
        }
    }

    /// Reads the next record into `fields` (cleared first); returns the line
    /// it starts on, or `None` at the end of the text.
    fn next_record(&mut self, fields: &mut Vec<String>) -> Result<Option<usize>, CalleeError> {
        fields.clear();
        // Skipped lines.
        loop {
            let rest = &self.text[self.pos..];
            if rest.is_empty() {
                return Ok(None);
            }
            let (line, next) = match rest.find('\n') {
                Some(end) => (&rest[..end], end.saturating_add(1)),
                None => (rest, rest.len()),
            };
            if !skipped(line) {
                break;
            }
            self.pos = self.pos.saturating_add(next);
            self.line = self.line.saturating_add(1);
        }
        let start_line = self.line;
        let error = |problem| CalleeError {
            line: start_line,
            problem,
        };
        let bytes = self.text.as_bytes();
        let mut i = self.pos;
        loop {
            // At the start of a field.
            let mut field = String::new();
            if bytes.get(i) == Some(&b'"') {
                i = i.saturating_add(1);
                loop {
                    // Up to the next quote; the text between is copied as is.
                    let Some(quote) = self.text[i..].find('"') else {
                        return Err(error(Problem::Unterminated));
                    };
                    let chunk = &self.text[i..i.saturating_add(quote)];
                    self.line = self
                        .line
                        .saturating_add(chunk.bytes().filter(|b| *b == b'\n').count());
                    field.push_str(chunk);
                    i = i.saturating_add(quote).saturating_add(1);
                    if bytes.get(i) == Some(&b'"') {
                        field.push('"');
                        i = i.saturating_add(1);
                    } else {
                        break;
                    }
                }
                match bytes.get(i) {
                    None | Some(b',' | b'\n') => {}
                    Some(b'\r') if matches!(bytes.get(i.saturating_add(1)), None | Some(b'\n')) => {
                        i = i.saturating_add(1);
                    }
                    Some(_) => {
                        let c = self.text[i..].chars().next().unwrap_or('?');
                        return Err(error(Problem::AfterQuote(c)));
                    }
                }
            } else {
                let rest = &self.text[i..];
                let end = rest.find([',', '\n']).unwrap_or(rest.len());
                let mut value = &rest[..end];
                if rest.as_bytes().get(end) != Some(&b',') {
                    value = value.strip_suffix('\r').unwrap_or(value);
                }
                if value.contains('"') {
                    return Err(error(Problem::StrayQuote));
                }
                field.push_str(value);
                i = i.saturating_add(end);
            }
            fields.push(field);
            match bytes.get(i) {
                Some(b',') => i = i.saturating_add(1),
                Some(b'\n') => {
                    self.pos = i.saturating_add(1);
                    self.line = self.line.saturating_add(1);
                    return Ok(Some(start_line));
                }
                _ => {
                    self.pos = self.text.len();
                    return Ok(Some(start_line));
                }
            }
        }
    }
}

/// A stable digest of a callee list (order-sensitive): 16 hex digits of
/// FNV-1a 64 over every entry's fields, each length-prefixed.
pub fn digest(entries: &[Entry]) -> String {
    let mut hash = Fnv::new();
    hash.number(entries.len());
    for entry in entries {
        hash.text(&entry.to);
        hash.optional(entry.id.as_deref());
        hash.optional(entry.time_zone.as_deref());
        hash.number(entry.parameters.len());
        for (name, value) in &entry.parameters {
            hash.text(name);
            hash.text(value);
        }
    }
    format!("{:016x}", hash.0)
}

/// FNV-1a, 64 bits.
struct Fnv(u64);

impl Fnv {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Fnv(Self::OFFSET)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(Self::PRIME);
        }
    }

    fn number(&mut self, n: usize) {
        self.bytes(&u64::try_from(n).unwrap_or(u64::MAX).to_le_bytes());
    }

    fn text(&mut self, text: &str) {
        self.number(text.len());
        self.bytes(text.as_bytes());
    }

    fn optional(&mut self, text: Option<&str>) {
        match text {
            None => self.bytes(&[0]),
            Some(text) => {
                self.bytes(&[1]);
                self.text(text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Result<Vec<Entry>, CalleeError> {
        let mut out = Vec::new();
        parse(text, CalleeFormat::Csv, &mut out)?;
        Ok(out)
    }

    fn jsonl(text: &str) -> Result<Vec<Entry>, CalleeError> {
        let mut out = Vec::new();
        parse(text, CalleeFormat::Jsonl, &mut out)?;
        Ok(out)
    }

    fn err(result: Result<Vec<Entry>, CalleeError>) -> String {
        result.unwrap_err().to_string()
    }

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn format_follows_the_key_unless_explicit() {
        assert_eq!(format_for("list.csv", None), CalleeFormat::Csv);
        assert_eq!(format_for("LIST.CSV", None), CalleeFormat::Csv);
        assert_eq!(format_for("list.jsonl", None), CalleeFormat::Jsonl);
        assert_eq!(format_for("csv", None), CalleeFormat::Jsonl);
        assert_eq!(format_for("é.csv", None), CalleeFormat::Csv);
        assert_eq!(format_for("ü", None), CalleeFormat::Jsonl);
        assert_eq!(
            format_for("list.csv", Some(CalleeFormat::Jsonl)),
            CalleeFormat::Jsonl
        );
        assert_eq!(
            format_for("list", Some(CalleeFormat::Csv)),
            CalleeFormat::Csv
        );
    }

    #[test]
    fn csv_columns() {
        let text = "# exported 2025-06-01\nid,to,name,timeZone,plan\r\nc1,+1 (415) 555-0100,Ann,America/New_York,gold\r\n\nc2,+44.20.7946.0000,,,\n";
        let entries = csv(text).unwrap();
        assert_eq!(
            entries,
            vec![
                Entry {
                    to: "+14155550100".into(),
                    id: Some("c1".into()),
                    parameters: params(&[("name", "Ann"), ("plan", "gold")]),
                    time_zone: Some("America/New_York".into()),
                },
                Entry {
                    to: "+442079460000".into(),
                    id: Some("c2".into()),
                    parameters: vec![],
                    time_zone: None,
                },
            ]
        );
    }

    #[test]
    fn csv_quoted_fields() {
        let text = "to,note,id\n\"+14155550100\",\"Smith, \"\"Jr\"\"\nsecond line\",\"\"\n+14155550101,plain,x\n\"+14155550102\",\"a\r\n\",";
        let entries = csv(text).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[0].parameters,
            params(&[("note", "Smith, \"Jr\"\nsecond line")])
        );
        assert_eq!(entries[0].id, None);
        assert_eq!(entries[1].id.as_deref(), Some("x"));
        assert_eq!(entries[2].parameters, params(&[("note", "a\r\n")]));
        // A line count after a multi-line field stays right.
        let text = "to,note\n+14155550100,\"a\nb\"\n+1abc,x\n";
        assert_eq!(err(csv(text)), r#"line 4: to "+1abc": not an E.164 number"#);
    }

    #[test]
    fn csv_errors() {
        for (text, message) in [
            (
                "id,name\nc1,Ann\n",
                r#"line 1: the header has no "to" column"#,
            ),
            (
                "to,id,to\n",
                r#"line 1: column "to" appears twice in the header"#,
            ),
            ("to,,id\n", "line 1: column 2 of the header has no name"),
            (
                "to,id\n+14155550100\n",
                "line 2: 1 fields, the header has 2",
            ),
            (
                "to,id\n+14155550100,a,b\n",
                "line 2: 3 fields, the header has 2",
            ),
            (
                "to,id\n+14155550100,\"abc\n",
                "line 2: a quoted field is not closed",
            ),
            (
                "to,id\n+14155550100,ab\"c\n",
                "line 2: a quote inside an unquoted field (quote the whole field and double the quote)",
            ),
            (
                "to,id\n+14155550100,\"ab\"c\n",
                r#"line 2: 'c' after a closing quote"#,
            ),
            (
                "# list\n\nto\n+14155550100\n+1abc\n",
                r#"line 5: to "+1abc": not an E.164 number"#,
            ),
            (
                "to,timeZone\n+14155550100,Mars/Base\n",
                r#"line 2: timeZone "Mars/Base": unknown time zone"#,
            ),
        ] {
            assert_eq!(err(csv(text)), message, "{text:?}");
        }
        let mut header = String::from("to");
        for n in 0..33 {
            header.push_str(&format!(",p{n}"));
        }
        assert_eq!(err(csv(&header)), "line 1: 33 parameters, at most 32");
    }

    #[test]
    fn empty_lists_are_empty() {
        assert_eq!(csv("").unwrap(), vec![]);
        assert_eq!(csv("# nothing\n\n").unwrap(), vec![]);
        assert_eq!(csv("to,id\n").unwrap(), vec![]);
        assert_eq!(jsonl("\n# nothing\n").unwrap(), vec![]);
    }

    #[test]
    fn e164_rules() {
        for ok in [
            "+123",
            "+123456789012345",
            "+1 415 555 0100",
            "+1-415-555-0100",
            "+1.415.555.0100",
            "+1 (415) 5550100",
        ] {
            assert!(e164(ok).is_some(), "{ok}");
        }
        for bad in [
            "+12",
            "+1234567890123456",
            "14155550100",
            "+1abc",
            "+0123",
            "",
            "+",
            "++1234",
            "+1 415 555 0100 x2",
        ] {
            assert!(e164(bad).is_none(), "{bad}");
        }
        assert_eq!(e164("+1 (415) 555-0100").as_deref(), Some("+14155550100"));
    }

    #[test]
    fn id_and_parameter_bounds() {
        let long = "x".repeat(129);
        let text = format!(
            "to,id\n+14155550100,{}\n+14155550100,{long}\n",
            "x".repeat(128)
        );
        assert_eq!(err(csv(&text)), "line 3: id is 129 bytes, at most 128");
        let mut parameters = serde_json::Map::new();
        for n in 0..33 {
            parameters.insert(format!("p{n}"), "v".into());
        }
        let line = serde_json::json!({"to": "+14155550100", "parameters": parameters});
        assert_eq!(
            err(jsonl(&line.to_string())),
            "line 1: 33 parameters, at most 32"
        );
        parameters.remove("p0");
        let line = serde_json::json!({"to": "+14155550100", "parameters": parameters});
        assert_eq!(jsonl(&line.to_string()).unwrap()[0].parameters.len(), 32);
    }

    #[test]
    fn jsonl_lines() {
        let text = concat!(
            "# callees\n",
            r#"{"to": "+14155550100", "id": "c1", "parameters": {"z": "1", "a": "2"}, "timeZone": "Asia/Tokyo"}"#,
            "\n\n",
            r#"{"to":"+44 20 7946 0000"}"#,
            "\r\n",
        );
        assert_eq!(
            jsonl(text).unwrap(),
            vec![
                Entry {
                    to: "+14155550100".into(),
                    id: Some("c1".into()),
                    parameters: params(&[("a", "2"), ("z", "1")]),
                    time_zone: Some("Asia/Tokyo".into()),
                },
                Entry {
                    to: "+442079460000".into(),
                    ..Entry::default()
                },
            ]
        );
    }

    #[test]
    fn jsonl_errors() {
        for (text, message) in [
            (
                "{\"to\": \"+14155550100\"}\n{\"to\": 14155550100}\n",
                "line 2: column 18: invalid type: integer `14155550100`, expected a string",
            ),
            (r#"{"id": "c1"}"#, "line 1: column 12: missing field `to`"),
            (
                r#"{"to": "+14155550100", "timezone": "UTC"}"#,
                "line 1: column 33: unknown field `timezone`, expected one of `to`, `id`, `parameters`, `timeZone`",
            ),
            (
                r#"{"to": "+14155550100", "parameters": {"n": 1}}"#,
                "line 1: column 44: invalid type: integer `1`, expected a string",
            ),
            (
                r#""abc""#,
                r#"line 1: column 5: invalid type: string "abc", expected a callee object"#,
            ),
            (
                r#"{"to": "+1abc"}"#,
                r#"line 1: to "+1abc": not an E.164 number"#,
            ),
            (
                r#"{"to": "+14155550100", "timeZone": "Mars/Base"}"#,
                r#"line 1: timeZone "Mars/Base": unknown time zone"#,
            ),
        ] {
            assert_eq!(err(jsonl(text)), message, "{text}");
        }
    }

    #[test]
    fn long_values_are_cut_in_errors() {
        let to = format!("+1{}", "a".repeat(100));
        let message = err(csv(&format!("to\n{to}\n")));
        assert_eq!(
            message,
            format!("line 2: to \"+1{}…\": not an E.164 number", "a".repeat(38))
        );
    }

    #[test]
    fn the_total_is_bounded_and_errors_leave_the_list_alone() {
        let mut out = vec![Entry::default(); MAX_CALLEES - 1];
        let error = parse(
            "to\n+14155550100\n+14155550101\n",
            CalleeFormat::Csv,
            &mut out,
        )
        .unwrap_err();
        assert_eq!(
            error,
            CalleeError {
                line: 3,
                problem: Problem::TooMany
            }
        );
        assert_eq!(out.len(), MAX_CALLEES - 1);
        parse(r#"{"to":"+14155550100"}"#, CalleeFormat::Jsonl, &mut out).unwrap();
        assert_eq!(out.len(), MAX_CALLEES);
        let error = parse(r#"{"to":"+14155550100"}"#, CalleeFormat::Jsonl, &mut out).unwrap_err();
        assert_eq!(error.problem, Problem::TooMany);
    }

    #[test]
    fn a_hundred_thousand_lines() {
        let mut text = String::from("to,id,name\n");
        for n in 0..100_000u32 {
            text.push_str(&format!("+1415{n:07},c{n},\"Callee, {n}\"\n"));
        }
        let entries = csv(&text).unwrap();
        assert_eq!(entries.len(), 100_000);
        assert_eq!(entries[99_999].to, "+14150099999");
        assert_eq!(
            entries[99_999].parameters,
            params(&[("name", "Callee, 99999")])
        );
    }

    #[test]
    fn inline_callees() {
        let callee = Callee {
            to: "+14155550100".into(),
            id: Some("c1".into()),
            parameters: [
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), "1".to_string()),
            ]
            .into(),
            time_zone: Some("UTC".into()),
        };
        assert_eq!(
            Entry::from(&callee),
            Entry {
                to: "+14155550100".into(),
                id: Some("c1".into()),
                parameters: params(&[("a", "1"), ("b", "2")]),
                time_zone: Some("UTC".into()),
            }
        );
    }

    #[test]
    fn digest_is_stable_and_sensitive() {
        // FNV-1a 64 test vectors, so the digest stays the same across
        // releases.
        let mut fnv = Fnv::new();
        fnv.bytes(b"");
        assert_eq!(fnv.0, 0xcbf29ce484222325);
        fnv.bytes(b"a");
        assert_eq!(fnv.0, 0xaf63dc4c8601ec8c);
        let mut fnv = Fnv::new();
        fnv.bytes(b"foobar");
        assert_eq!(fnv.0, 0x85944171f73967e8);

        let a = csv("to,id,name\n+14155550100,c1,Ann\n+14155550101,c2,Bob\n").unwrap();
        let d = digest(&a);
        assert_eq!(d.len(), 16);
        assert_eq!(d, digest(&a.clone()));
        let mut reordered = a.clone();
        reordered.swap(0, 1);
        assert_ne!(digest(&reordered), d);
        let mut changed = a.clone();
        changed[1].parameters[0].1 = "Bo".into();
        assert_ne!(digest(&changed), d);
        let mut no_id = a.clone();
        no_id[0].id = None;
        assert_ne!(digest(&no_id), d);
        // Field boundaries count: ("ab", "c") is not ("a", "bc").
        let mut left = a.clone();
        left[0].parameters = params(&[("ab", "c")]);
        let mut right = a.clone();
        right[0].parameters = params(&[("a", "bc")]);
        assert_ne!(digest(&left), digest(&right));
        assert_ne!(digest(&a[..1]), d);
        assert_eq!(digest(&[]), digest(&[]));
    }
}
