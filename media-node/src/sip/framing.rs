//! Turning bytes into bounded [`Message`]s: datagrams on UDP, a
//! Content-Length framed stream on TCP. Limits are enforced here, before any
//! header is interpreted, so hostile input costs little.

use bytes::{Buf, Bytes, BytesMut};

use crate::sip::message::{Message, Method, StartLine, canonical_name};

/// Bounds applied to every message.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest whole message (head + body) in bytes.
    pub max_message_bytes: usize,
    /// Most header fields (after unfolding, before list splitting).
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 16 * 1024,
            max_headers: 100,
        }
    }
}

/// Why a message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Bigger than [`Limits::max_message_bytes`].
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Size seen so far.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// More header fields than [`Limits::max_headers`].
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    /// No blank line ending the header section.
    #[error("header section is not terminated")]
    Unterminated,
    /// The head is not UTF-8.
    #[error("header section is not valid UTF-8")]
    NotUtf8,
    /// The start line is not a SIP request or status line.
    #[error("invalid start line {0:?}")]
    StartLine(String),
    /// A request with a SIP version other than 2.0.
    #[error("unsupported SIP version {0:?}")]
    Version(String),
    /// A header line without a colon or with an invalid name.
    #[error("invalid header line {0:?}")]
    HeaderLine(String),
    /// Content-Length unparsable, duplicated with different values, or
    /// larger than the data.
    #[error("bad Content-Length: {0}")]
    ContentLength(String),
    /// TCP message without Content-Length (mandatory on streams).
    #[error("Content-Length missing on a stream transport")]
    MissingContentLength,
}

impl FrameError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "too_large",
            FrameError::TooManyHeaders(_) => "too_many_headers",
            FrameError::Unterminated => "unterminated",
            FrameError::NotUtf8 => "not_utf8",
            FrameError::StartLine(_) => "start_line",
            FrameError::Version(_) => "version",
            FrameError::HeaderLine(_) => "header_line",
            FrameError::ContentLength(_) | FrameError::MissingContentLength => "content_length",
        }
    }
}

/// Looks for the blank line ending a head, starting at `from` (an index
/// no terminator starts before). Returns `Ok((end of head, start of body))`,
/// or `Err(resume)`: the index to resume from once more bytes arrived.
///
/// A head ends at a line feed followed by an empty line (`\n\n` or
/// `\n\r\n`); a CR before that first line feed belongs to the line ending
/// (`\r\n\r\n`). Bare LF line endings are tolerated, as RFC 3261 7.5 asks
/// implementations to be lenient.
fn scan_head_end(buf: &[u8], from: usize) -> Result<(usize, usize), usize> {
    let mut pos = from;
    while let Some(off) = buf
        .get(pos..)
        .and_then(|rest| rest.iter().position(|b| *b == b'\n'))
    {
        let lf = pos + off;
        let head_end = if lf > 0 && buf[lf - 1] == b'\r' {
            lf - 1
        } else {
            lf
        };
        match (buf.get(lf + 1), buf.get(lf + 2)) {
            (Some(b'\n'), _) => return Ok((head_end, lf + 2)),
            (Some(b'\r'), Some(b'\n')) => return Ok((head_end, lf + 3)),
            // Not decidable yet: resume at this line feed.
            (None, _) | (Some(b'\r'), None) => return Err(lf),
            _ => pos = lf + 1,
        }
    }
    Err(buf.len())
}

fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    scan_head_end(buf, 0).ok()
}

/// Parses a head (start line + headers, without the blank line).
/// Returns the message with an empty body and the Content-Length if given.
fn parse_head(head: &[u8], limits: &Limits) -> Result<(Message, Option<usize>), FrameError> {
    let text = std::str::from_utf8(head).map_err(|_| FrameError::NotUtf8)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start_line = lines.next().unwrap_or("").trim_end();
    let start = parse_start_line(start_line)?;
    let mut msg = Message {
        start,
        headers: Vec::new(),
        body: Bytes::new(),
    };

    // Unfold continuation lines first, then split each field.
    let mut fields: Vec<String> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            match fields.last_mut() {
                Some(last) => {
                    last.push(' ');
                    last.push_str(line.trim());
                }
                None => return Err(FrameError::HeaderLine(line.to_owned())),
            }
        } else if !line.is_empty() {
            if fields.len() >= limits.max_headers {
                return Err(FrameError::TooManyHeaders(limits.max_headers));
            }
            fields.push(line.to_owned());
        }
    }
    let mut content_length: Option<usize> = None;
    for field in &fields {
        let (name, value) = field
            .split_once(':')
            .ok_or_else(|| FrameError::HeaderLine(field.clone()))?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(FrameError::HeaderLine(field.clone()));
        }
        if canonical_name(name) == "Content-Length" {
            let n = value.trim().parse::<usize>().map_err(|_| {
                FrameError::ContentLength(format!("{:?} is not a number", value.trim()))
            })?;
            if content_length.is_some_and(|c| c != n) {
                return Err(FrameError::ContentLength("conflicting values".into()));
            }
            content_length = Some(n);
        }
        msg.push_header(name, value);
    }
    Ok((msg, content_length))
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn parse_start_line(line: &str) -> Result<StartLine, FrameError> {
    let bad = || FrameError::StartLine(line.chars().take(120).collect());
    if let Some(rest) = line.strip_prefix("SIP/") {
        let (version, rest) = rest.split_once(' ').ok_or_else(bad)?;
        if version != "2.0" {
            return Err(FrameError::Version(format!("SIP/{version}")));
        }
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code.parse().map_err(|_| bad())?;
        if !(100..=699).contains(&code) {
            return Err(bad());
        }
        return Ok(StartLine::Response {
            code,
            reason: reason.to_owned(),
        });
    }
    // Request-Line: exactly single SP separators (RFC 3261 25.1).
    let mut parts = line.split(' ');
    let (method, uri, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(uri), Some(version)) = (method, uri, version) else {
        return Err(bad());
    };
    if parts.next().is_some()
        || method.is_empty()
        || uri.is_empty()
        || !method.bytes().all(is_token_char)
    {
        return Err(bad());
    }
    if !uri.contains(':') {
        return Err(bad());
    }
    if version != "SIP/2.0" {
        if version.starts_with("SIP/") {
            return Err(FrameError::Version(version.to_owned()));
        }
        return Err(bad());
    }
    Ok(StartLine::Request {
        method: Method::parse(method),
        uri: uri.to_owned(),
    })
}

/// Parses one UDP datagram. A body longer than Content-Length is cut to it
/// (RFC 3261 18.3); a shorter one is an error.
pub fn parse_datagram(data: &[u8], limits: &Limits) -> Result<Message, FrameError> {
    if data.len() > limits.max_message_bytes {
        return Err(FrameError::TooLarge {
            size: data.len(),
            limit: limits.max_message_bytes,
        });
    }
    let (head_end, body_start) = find_head_end(data).ok_or(FrameError::Unterminated)?;
    let (mut msg, cl) = parse_head(&data[..head_end], limits)?;
    let body = data.get(body_start..).unwrap_or_default();
    let body = match cl {
        Some(n) => body.get(..n).ok_or_else(|| {
            FrameError::ContentLength(format!("says {n}, datagram has {}", body.len()))
        })?,
        None => body,
    };
    msg.body = Bytes::copy_from_slice(body);
    Ok(msg)
}

/// The answer to a request that did not frame (RFC 4475 3.1.2: extra spaces in the
/// Request-Line, a bad or conflicting Content-Length, another SIP version, no blank line):
/// 505 for another version, 400 for the rest. `None` when too little of it parses to
/// address an answer (a request method, and Via, From, To, Call-ID and CSeq), for ACK
/// (never answered), for responses and for oversized input. The reason phrase is fixed per
/// error: nothing of the input is echoed but the headers an answer copies.
pub fn refusal(data: &[u8], err: &FrameError, limits: &Limits) -> Option<Message> {
    let (code, reason) = match err {
        FrameError::TooLarge { .. } | FrameError::TooManyHeaders(_) | FrameError::NotUtf8 => {
            return None;
        }
        FrameError::Version(_) => (505, "Version Not Supported"),
        FrameError::StartLine(_) => (400, "Bad Request-Line"),
        FrameError::HeaderLine(_) => (400, "Bad Header Line"),
        FrameError::ContentLength(_) | FrameError::MissingContentLength => {
            (400, "Bad Content-Length")
        }
        FrameError::Unterminated => (400, "Header Section Not Terminated"),
    };
    if data.len() > limits.max_message_bytes {
        return None;
    }
    let head = match find_head_end(data) {
        Some((end, _)) => &data[..end],
        None => data,
    };
    let text = std::str::from_utf8(head).ok()?;
    let (start, rest) = text.split_once('\n').unwrap_or((text, ""));
    let method = start.split_whitespace().next()?;
    if method.starts_with("SIP/") || method == "ACK" || !method.bytes().all(is_token_char) {
        return None;
    }
    // The headers again, under a stand-in Request-Line and without the Content-Length
    // lines, so that what failed does not fail again; bad lines are skipped.
    let mut synthetic = format!("{method} sip:refused.invalid SIP/2.0\r\n");
    for line in rest.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let name = line.split(':').next().unwrap_or("").trim();
        if line.is_empty() || canonical_name(name) == "Content-Length" {
            continue;
        }
        if !line.starts_with([' ', '\t']) && (name.is_empty() || !name.bytes().all(is_token_char)) {
            continue;
        }
        synthetic.push_str(line);
        synthetic.push_str("\r\n");
    }
    let (msg, _) = parse_head(synthetic.trim_end().as_bytes(), limits).ok()?;
    for needed in ["Via", "From", "To", "Call-ID", "CSeq"] {
        msg.header(needed)?;
    }
    Some(msg.response(code, reason, None))
}

/// Frames messages out of a TCP byte stream by Content-Length.
///
/// The search for the end of a head resumes where the previous call
/// stopped, and a parsed head is kept until its body is complete, so a
/// client sending one byte at a time costs O(bytes), not O(bytes²).
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: BytesMut,
    /// Bytes of `buf` already searched for the end of the head.
    scanned: usize,
    /// The head of the message being received, once parsed: the message
    /// without its body, where the body starts and the whole length.
    pending: Option<(Message, usize, usize)>,
}

impl StreamFramer {
    /// A framer with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// True when bytes of an unfinished message are buffered (keep-alive
    /// CRLFs do not count). Meaningful after [`next_message`] returned
    /// `Ok(None)`; the transport starts the message deadline on it.
    ///
    /// [`next_message`]: StreamFramer::next_message
    pub fn in_progress(&self) -> bool {
        // Leading CRLFs are skipped before a head is searched for, so any
        // other first byte starts a message.
        self.pending.is_some() || self.buf.first().is_some_and(|b| *b != b'\r' && *b != b'\n')
    }

    /// Bytes buffered, including keep-alive CRLFs.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The buffered bytes that have not framed yet: after [`next_message`] failed, the
    /// message it failed on (for [`refusal`]).
    ///
    /// [`next_message`]: StreamFramer::next_message
    pub fn unframed(&self) -> &[u8] {
        &self.buf
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    /// After an error the stream cannot be resynchronised: close it.
    pub fn next_message(&mut self, limits: &Limits) -> Result<Option<Message>, FrameError> {
        if self.pending.is_none() {
            if self.scanned == 0 {
                // CRLF keep-alives (RFC 5626) between messages are skipped.
                let skip = self
                    .buf
                    .iter()
                    .take_while(|b| **b == b'\r' || **b == b'\n')
                    .count();
                self.buf.advance(skip);
                if self.buf.is_empty() {
                    return Ok(None);
                }
            }
            let (head_end, body_start) = match scan_head_end(&self.buf, self.scanned) {
                Ok(found) => found,
                Err(resume) => {
                    self.scanned = resume;
                    if self.buf.len() > limits.max_message_bytes {
                        return Err(FrameError::TooLarge {
                            size: self.buf.len(),
                            limit: limits.max_message_bytes,
                        });
                    }
                    return Ok(None);
                }
            };
            if head_end > limits.max_message_bytes {
                return Err(FrameError::TooLarge {
                    size: head_end,
                    limit: limits.max_message_bytes,
                });
            }
            let (msg, cl) = parse_head(&self.buf[..head_end], limits)?;
            let cl = cl.ok_or(FrameError::MissingContentLength)?;
            // The length comes from the network: checked, never trusted.
            let total = body_start
                .checked_add(cl)
                .filter(|t| *t <= limits.max_message_bytes)
                .ok_or(FrameError::TooLarge {
                    size: body_start.saturating_add(cl),
                    limit: limits.max_message_bytes,
                })?;
            self.pending = Some((msg, body_start, total));
        }
        let Some((_, body_start, total)) = &self.pending else {
            return Ok(None);
        };
        let (body_start, total) = (*body_start, *total);
        if self.buf.len() < total {
            return Ok(None);
        }
        let Some((mut msg, _, _)) = self.pending.take() else {
            return Ok(None);
        };
        let frame = self.buf.split_to(total).freeze();
        msg.body = frame.slice(body_start..);
        self.scanned = 0;
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_that_do_not_frame_are_refused_when_an_answer_can_be_addressed() {
        let limits = Limits::default();
        let head = "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\nFrom: <sip:a@x>;tag=1\r\n\
                    To: <sip:b@y>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n";
        let refused = |start: &str, extra: &str| {
            let data = format!("{start}\r\n{head}{extra}\r\n");
            let err = parse_datagram(data.as_bytes(), &limits).expect_err("does not frame");
            refusal(data.as_bytes(), &err, &limits)
                .map(|r| (r.code(), r.header("Call-ID").map(str::to_owned)))
        };
        assert_eq!(
            refused("OPTIONS sip:a@x SIP/7.0", "Content-Length: 0\r\n"),
            Some((Some(505), Some("c1".into())))
        );
        assert_eq!(
            refused("OPTIONS  sip:a@x  SIP/2.0", "Content-Length: 0\r\n"),
            Some((Some(400), Some("c1".into())))
        );
        assert_eq!(
            refused("OPTIONS sip:a@x SIP/2.0", "Content-Length: -3\r\n"),
            Some((Some(400), Some("c1".into())))
        );
        assert_eq!(
            refused("OPTIONS sip:a@x SIP/2.0", "Content-Length: 99\r\n"),
            Some((Some(400), Some("c1".into())))
        );
        // Never an answer to an ACK or a response, or without the headers to copy.
        assert_eq!(refused("ACK  sip:a@x SIP/2.0", ""), None);
        assert_eq!(refused("SIP/7.0 200 OK", ""), None);
        let bare = "OPTIONS  sip:a@x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n";
        let err = parse_datagram(bare.as_bytes(), &limits).expect_err("does not frame");
        assert!(refusal(bare.as_bytes(), &err, &limits).is_none());
    }

    #[test]
    fn a_stream_request_that_does_not_frame_stays_buffered_for_its_refusal() {
        let limits = Limits::default();
        let mut f = StreamFramer::new();
        // A valid message first, then one without Content-Length (required on streams).
        f.push(
            b"OPTIONS sip:a@x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\n\
              To: <sip:b@y>\r\nCall-ID: ok\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n\r\n\
              OPTIONS sip:a@x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK2\r\nFrom: <sip:a@x>;tag=1\r\n\
              To: <sip:b@y>\r\nCall-ID: bad\r\nCSeq: 2 OPTIONS\r\n\r\n",
        );
        assert!(matches!(f.next_message(&limits), Ok(Some(_))));
        let err = f
            .next_message(&limits)
            .expect_err("no Content-Length on a stream");
        assert!(f.unframed().starts_with(b"OPTIONS"));
        let answer = refusal(f.unframed(), &err, &limits).expect("an addressable request");
        assert_eq!(answer.code(), Some(400));
        assert_eq!(answer.header("Call-ID"), Some("bad"));
        assert_eq!(answer.header("CSeq"), Some("2 OPTIONS"));
    }

    const INVITE: &str = "INVITE sip:+15550001111@127.0.0.1 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
        f: <sip:a@127.0.0.1>;tag=1\r\n\
        To: <sip:+15550001111@127.0.0.1>\r\n\
        i: abc\r\n\
        CSeq: 1 INVITE\r\n\
        Subject: folded\r\n  continues\r\n\
        l: 4\r\n\r\nv=0\n";

    #[test]
    fn datagram_parses_compact_and_folded() {
        let m = parse_datagram(INVITE.as_bytes(), &Limits::default()).expect("valid");
        assert_eq!(m.call_id(), Some("abc"));
        assert_eq!(m.header("From"), Some("<sip:a@127.0.0.1>;tag=1"));
        assert_eq!(m.header("Subject"), Some("folded continues"));
        assert_eq!(&m.body[..], b"v=0\n");
    }

    #[test]
    fn datagram_content_length_rules() {
        let longer = INVITE.replace("l: 4", "l: 2");
        let m = parse_datagram(longer.as_bytes(), &Limits::default()).expect("truncated to CL");
        assert_eq!(&m.body[..], b"v=");
        let shorter = INVITE.replace("l: 4", "l: 40");
        assert!(matches!(
            parse_datagram(shorter.as_bytes(), &Limits::default()),
            Err(FrameError::ContentLength(_))
        ));
        let garbage = INVITE.replace("l: 4", "l: -4");
        assert!(parse_datagram(garbage.as_bytes(), &Limits::default()).is_err());
    }

    #[test]
    fn limits_enforced() {
        let limits = Limits {
            max_message_bytes: 100,
            max_headers: 3,
        };
        assert!(matches!(
            parse_datagram(INVITE.as_bytes(), &limits),
            Err(FrameError::TooLarge { .. })
        ));
        let limits = Limits {
            max_message_bytes: 4096,
            max_headers: 3,
        };
        assert_eq!(
            parse_datagram(INVITE.as_bytes(), &limits),
            Err(FrameError::TooManyHeaders(3))
        );
    }

    #[test]
    fn bad_start_lines() {
        let l = Limits::default();
        for bad in [
            "INVITE  sip:a@b SIP/2.0\r\n\r\n",
            "INVITE sip:a@b\r\n\r\n",
            "SIP/2.0 99 Low\r\n\r\n",
            "\u{0}\u{1}\r\n\r\n",
            "SIP/2.0 abc OK\r\n\r\n",
        ] {
            assert!(parse_datagram(bad.as_bytes(), &l).is_err(), "{bad:?}");
        }
        assert!(matches!(
            parse_datagram(b"INVITE sip:a@b SIP/7.0\r\n\r\n", &l),
            Err(FrameError::Version(_))
        ));
        assert_eq!(
            parse_datagram(b"INVITE sip:a@b SIP/2.0\r\nnocolon\r\n\r\n", &l)
                .err()
                .map(|e| e.label()),
            Some("header_line")
        );
    }

    #[test]
    fn stream_framing_split_and_pipelined() {
        let l = Limits::default();
        let mut f = StreamFramer::new();
        let data = format!("\r\n\r\n{INVITE}{INVITE}");
        let (a, b) = data.as_bytes().split_at(50);
        f.push(a);
        assert_eq!(f.next_message(&l), Ok(None));
        f.push(b);
        assert!(f.next_message(&l).expect("ok").is_some());
        let second = f.next_message(&l).expect("ok").expect("second message");
        assert_eq!(&second.body[..], b"v=0\n");
        assert_eq!(f.next_message(&l), Ok(None));
    }

    #[test]
    fn stream_requires_content_length_and_bounds() {
        let l = Limits {
            max_message_bytes: 300,
            max_headers: 50,
        };
        let mut f = StreamFramer::new();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\r\n");
        assert_eq!(f.next_message(&l), Err(FrameError::MissingContentLength));
        let mut f = StreamFramer::new();
        f.push(&[b'A'; 400]);
        assert!(matches!(
            f.next_message(&l),
            Err(FrameError::TooLarge { .. })
        ));
        let mut f = StreamFramer::new();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 100000\r\n\r\n");
        assert!(matches!(
            f.next_message(&l),
            Err(FrameError::TooLarge { .. })
        ));
    }

    /// The exact stream the fuzzer found (fuzz/regressions/sip_stream/
    /// content_length_overflow): a Content-Length of u64::MAX with a leading
    /// zero overflowed the length arithmetic and panicked the connection task.
    /// Whole or byte by byte, the framer now refuses it.
    #[test]
    fn fuzz_regression_content_length_overflow() {
        let data = include_bytes!("../../../fuzz/regressions/sip_stream/content_length_overflow");
        let l = Limits::default();
        let mut whole = StreamFramer::new();
        whole.push(data);
        assert!(matches!(
            whole.next_message(&l),
            Err(FrameError::TooLarge { .. })
        ));
        let mut bytewise = StreamFramer::new();
        let mut refused = false;
        for b in data.iter() {
            bytewise.push(std::slice::from_ref(b));
            match bytewise.next_message(&l) {
                Ok(None) => {}
                Ok(Some(m)) => panic!("framed a message before the overflow: {m:?}"),
                Err(e) => {
                    assert!(matches!(e, FrameError::TooLarge { .. }), "{e}");
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused, "the overflowing Content-Length was never refused");
    }

    #[test]
    fn stream_content_length_overflow_is_refused_not_panicking() {
        let l = Limits::default();
        for cl in [
            u64::MAX.to_string(),
            (u64::MAX - 1).to_string(),
            (u64::MAX - 40).to_string(),
            usize::MAX.to_string(),
            (usize::MAX / 2).to_string(),
        ] {
            let msg = format!("OPTIONS sip:a@b SIP/2.0\r\nContent-Length: {cl}\r\n\r\n");
            let mut f = StreamFramer::new();
            f.push(msg.as_bytes());
            assert!(
                matches!(f.next_message(&l), Err(FrameError::TooLarge { .. })),
                "{cl}"
            );
            // The same head in a datagram: the body is shorter than claimed.
            assert!(
                matches!(
                    parse_datagram(msg.as_bytes(), &l),
                    Err(FrameError::ContentLength(_))
                ),
                "{cl}"
            );
        }
        // Beyond u64: not a number we accept at all.
        let mut f = StreamFramer::new();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 99999999999999999999999\r\n\r\n");
        assert!(matches!(
            f.next_message(&l),
            Err(FrameError::ContentLength(_))
        ));
    }

    #[test]
    fn head_end_accepts_every_blank_line_form() {
        for (text, head, body) in [
            ("A\r\n\r\nB", 1, 5),
            ("A\n\nB", 1, 3),
            ("A\r\n\nB", 1, 4),
            ("A\n\r\nB", 1, 4),
            ("A\r\nB: c\r\n\r\n", 7, 11),
        ] {
            assert_eq!(
                find_head_end(text.as_bytes()),
                Some((head, body)),
                "{text:?}"
            );
        }
        assert_eq!(find_head_end(b"A\r\nB\r\n"), None);
        assert_eq!(find_head_end(b"A\r\rB"), None);
    }

    #[test]
    fn stream_scanning_resumes_where_it_stopped() {
        let l = Limits::default();
        let head = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nContent-Length: 3\r\n\r\n";
        let mut f = StreamFramer::new();
        let bytes = head.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            let before = f.scanned;
            f.push(&[*b]);
            let got = f.next_message(&l).expect("no error");
            assert!(got.is_none());
            if f.pending.is_none() {
                // Never searched again from the start: at most the last line
                // ending (up to two bytes back) is re-examined.
                assert!(f.scanned + 2 >= before, "scan went back at byte {i}");
                assert!(f.scanned + 2 >= i, "byte {i}: resumed at {}", f.scanned);
            }
            assert!(f.in_progress());
        }
        // The head is parsed once and kept while the body trickles in.
        assert!(f.pending.is_some());
        f.push(b"ab");
        assert_eq!(f.next_message(&l), Ok(None));
        assert!(f.pending.is_some() && f.in_progress());
        f.push(b"cOPT");
        let m = f.next_message(&l).expect("ok").expect("message");
        assert_eq!(&m.body[..], b"abc");
        // The next message starts fresh: its search begins at its own start.
        assert_eq!(f.scanned, 0);
        assert_eq!(f.next_message(&l), Ok(None));
        assert!(f.in_progress());
        assert_eq!(f.buffered(), 3);
    }

    #[test]
    fn stream_terminator_split_across_reads() {
        let l = Limits::default();
        let msg = "OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n";
        for cut in msg.len() - 4..msg.len() {
            let mut f = StreamFramer::new();
            f.push(&msg.as_bytes()[..cut]);
            assert_eq!(f.next_message(&l), Ok(None), "cut at {cut}");
            f.push(&msg.as_bytes()[cut..]);
            assert!(f.next_message(&l).expect("ok").is_some(), "cut at {cut}");
        }
    }

    #[test]
    fn stream_crlf_keepalives_are_skipped() {
        let l = Limits::default();
        let mut f = StreamFramer::new();
        // RFC 5626 ping, then half a pong's worth: nothing is in progress.
        f.push(b"\r\n\r\n");
        assert_eq!(f.next_message(&l), Ok(None));
        assert!(!f.in_progress());
        assert_eq!(f.buffered(), 0);
        f.push(b"\r");
        assert_eq!(f.next_message(&l), Ok(None));
        assert!(!f.in_progress());
        f.push(format!("\n{INVITE}\r\n\r\n\r\n{INVITE}\r\n").as_bytes());
        assert!(f.next_message(&l).expect("ok").is_some());
        assert!(f.next_message(&l).expect("ok").is_some());
        assert_eq!(f.next_message(&l), Ok(None));
        assert!(!f.in_progress());
        // Keep-alives alone never add up to a message over the limit.
        let small = Limits {
            max_message_bytes: 64,
            max_headers: 10,
        };
        for _ in 0..100 {
            f.push(b"\r\n\r\n");
            assert_eq!(f.next_message(&small), Ok(None));
        }
    }

    #[test]
    fn stream_pipelined_messages_at_every_split() {
        let l = Limits::default();
        let data = format!("{INVITE}\r\n{INVITE}{INVITE}");
        let bytes = data.as_bytes();
        for cut in 0..bytes.len() {
            let mut f = StreamFramer::new();
            let mut got = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                f.push(part);
                while let Some(m) = f.next_message(&l).expect("valid") {
                    got.push(m);
                }
            }
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert!(got.iter().all(|m| &m.body[..] == b"v=0\n"), "cut at {cut}");
            assert!(!f.in_progress());
        }
    }
}
