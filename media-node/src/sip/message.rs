//! The SIP message model we work with: a start line, an ordered list of
//! header fields and a raw body.
//!
//! We keep header values as text and interpret them on demand (with `rsip`
//! for URIs and name-addrs, see [`crate::sip::headers`]), because most of a
//! message is only ever copied, and a header we cannot interpret must not stop
//! us from answering the rest of the message.

use std::fmt::Write as _;

use bytes::Bytes;

/// A SIP request method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// OPTIONS
    Options,
    /// REGISTER
    Register,
    /// INFO
    Info,
    /// UPDATE
    Update,
    /// PRACK
    Prack,
    /// Any other token, kept as written.
    Other(String),
}

impl Method {
    /// Parses a method token (case-sensitive, as RFC 3261 requires).
    pub fn parse(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            other => Method::Other(other.to_owned()),
        }
    }

    /// The method as written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Other(s) => s,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// `METHOD Request-URI SIP/2.0`
    Request {
        /// The method.
        method: Method,
        /// The Request-URI, as written.
        uri: String,
    },
    /// `SIP/2.0 code reason`
    Response {
        /// Status code (100..=699).
        code: u16,
        /// Reason phrase.
        reason: String,
    },
}

/// One header field. The name is stored in its canonical long form (compact
/// forms such as `v` or `f` are expanded when parsing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Canonical name, e.g. `Via`.
    pub name: String,
    /// The value with surrounding whitespace removed and folding undone.
    pub value: String,
}

/// A parsed SIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Request or status line.
    pub start: StartLine,
    /// Header fields in order.
    pub headers: Vec<Header>,
    /// The body (exactly Content-Length bytes).
    pub body: Bytes,
}

/// Expands a compact header name and canonicalises the case of the names we
/// use, so lookups can compare case-insensitively against one spelling.
pub fn canonical_name(name: &str) -> String {
    let long = match name.to_ascii_lowercase().as_str() {
        "v" | "via" => "Via",
        "f" | "from" => "From",
        "t" | "to" => "To",
        "i" | "call-id" => "Call-ID",
        "m" | "contact" => "Contact",
        "l" | "content-length" => "Content-Length",
        "c" | "content-type" => "Content-Type",
        "k" | "supported" => "Supported",
        "e" | "content-encoding" => "Content-Encoding",
        "s" | "subject" => "Subject",
        "x" | "session-expires" => "Session-Expires",
        "o" | "event" => "Event",
        "r" | "refer-to" => "Refer-To",
        "u" | "allow-events" => "Allow-Events",
        "cseq" => "CSeq",
        "route" => "Route",
        "record-route" => "Record-Route",
        "max-forwards" => "Max-Forwards",
        "user-agent" => "User-Agent",
        "require" => "Require",
        "min-se" => "Min-SE",
        "www-authenticate" => "WWW-Authenticate",
        "proxy-authenticate" => "Proxy-Authenticate",
        "authorization" => "Authorization",
        "proxy-authorization" => "Proxy-Authorization",
        "expires" => "Expires",
        "allow" => "Allow",
        "retry-after" => "Retry-After",
        _ => return name.to_owned(),
    };
    long.to_owned()
}

/// Headers whose comma-separated values are separate entries: splitting
/// them on parse lets transaction and dialog code look at "the top Via" or
/// "each Record-Route" without re-parsing.
fn is_list_header(name: &str) -> bool {
    matches!(name, "Via" | "Route" | "Record-Route")
}

/// Splits a header value on commas that are outside quotes and `<...>`.
pub fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut in_quote, mut in_angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, ch) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match ch {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '<' if !in_quote => in_angle = true,
            '>' if !in_quote => in_angle = false,
            ',' if !in_quote && !in_angle => {
                let part = value[start..i].trim();
                if !part.is_empty() {
                    out.push(part);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    let part = value[start..].trim();
    if !part.is_empty() {
        out.push(part);
    }
    out
}

impl Message {
    /// A new request with no headers.
    pub fn request(method: Method, uri: impl Into<String>) -> Message {
        Message {
            start: StartLine::Request {
                method,
                uri: uri.into(),
            },
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Appends a header, splitting list headers into their entries.
    pub fn push_header(&mut self, name: &str, value: &str) {
        let name = canonical_name(name);
        if is_list_header(&name) {
            for part in split_list(value) {
                self.headers.push(Header {
                    name: name.clone(),
                    value: part.to_owned(),
                });
            }
        } else {
            self.headers.push(Header {
                name,
                value: value.trim().to_owned(),
            });
        }
    }

    /// Appends a header with a name already in canonical form.
    pub fn add(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.headers.push(Header {
            name: name.to_owned(),
            value: value.into(),
        });
        self
    }

    /// Inserts a header before every other header.
    pub fn prepend(&mut self, name: &str, value: impl Into<String>) {
        self.headers.insert(
            0,
            Header {
                name: name.to_owned(),
                value: value.into(),
            },
        );
    }

    /// Replaces every header of this name by one value.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.remove(name);
        self.add(name, value);
    }

    /// Removes every header of this name.
    pub fn remove(&mut self, name: &str) {
        self.headers.retain(|h| !h.name.eq_ignore_ascii_case(name));
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Every value of a header, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The method of a request, or the method in CSeq of a response.
    pub fn method(&self) -> Option<Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method.clone()),
            StartLine::Response { .. } => self.cseq().map(|(_, m)| m),
        }
    }

    /// True for requests.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The status code of a response.
    pub fn code(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// The Request-URI of a request.
    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The Call-ID.
    pub fn call_id(&self) -> Option<&str> {
        self.header("Call-ID")
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, Method)> {
        let v = self.header("CSeq")?;
        let mut it = v.split_whitespace();
        let num = it.next()?.parse::<u32>().ok()?;
        let method = Method::parse(it.next()?);
        if it.next().is_some() {
            return None;
        }
        Some((num, method))
    }

    /// The top Via value.
    pub fn top_via(&self) -> Option<&str> {
        self.header("Via")
    }

    /// Sets the body and its Content-Type.
    pub fn set_body(&mut self, content_type: &str, body: impl Into<Bytes>) {
        self.set("Content-Type", content_type);
        self.body = body.into();
    }

    /// Serialises the message. Content-Length is always written from the
    /// actual body, whatever the headers said.
    pub fn to_bytes(&self) -> Bytes {
        let mut s = String::with_capacity(512 + self.body.len());
        match &self.start {
            StartLine::Request { method, uri } => {
                let _ = write!(s, "{method} {uri} SIP/2.0\r\n");
            }
            StartLine::Response { code, reason } => {
                let _ = write!(s, "SIP/2.0 {code} {reason}\r\n");
            }
        }
        for h in &self.headers {
            if h.name.eq_ignore_ascii_case("Content-Length") {
                continue;
            }
            let _ = write!(s, "{}: {}\r\n", h.name, h.value);
        }
        let _ = write!(s, "Content-Length: {}\r\n\r\n", self.body.len());
        let mut out = Vec::with_capacity(s.len() + self.body.len());
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(&self.body);
        Bytes::from(out)
    }

    /// Builds a response to this request (RFC 3261 8.2.6): Via, From, To,
    /// Call-ID and CSeq copied; `to_tag` added to To when it has none and
    /// the response is not 100.
    pub fn response(&self, code: u16, reason: &str, to_tag: Option<&str>) -> Message {
        let mut resp = Message {
            start: StartLine::Response {
                code,
                reason: reason.to_owned(),
            },
            headers: Vec::with_capacity(8),
            body: Bytes::new(),
        };
        for h in &self.headers {
            let keep = matches!(h.name.as_str(), "Via" | "From" | "Call-ID" | "CSeq")
                || (code == 100 && h.name.eq_ignore_ascii_case("Timestamp"));
            if keep {
                resp.headers.push(h.clone());
            } else if h.name == "To" {
                let mut value = h.value.clone();
                if code != 100
                    && let Some(tag) = to_tag
                    && crate::sip::headers::param(&value, "tag").is_none()
                {
                    value.push_str(";tag=");
                    value.push_str(tag);
                }
                resp.headers.push(Header {
                    name: "To".into(),
                    value,
                });
            }
        }
        resp.add("Server", crate::sip::USER_AGENT);
        resp
    }
}

/// The standard reason phrase of the status codes we send.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        422 => "Session Interval Too Small",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_list_respects_quotes_and_angles() {
        let v = r#""Doe, John" <sip:a@b;x=1,2>;tag=1, <sip:c@d>"#;
        assert_eq!(
            split_list(v),
            vec![r#""Doe, John" <sip:a@b;x=1,2>;tag=1"#, "<sip:c@d>"]
        );
    }

    #[test]
    fn compact_names_expand() {
        assert_eq!(canonical_name("v"), "Via");
        assert_eq!(canonical_name("I"), "Call-ID");
        assert_eq!(canonical_name("cSeQ"), "CSeq");
        assert_eq!(canonical_name("X-Custom"), "X-Custom");
    }

    #[test]
    fn response_copies_headers_and_adds_tag() {
        let mut req = Message::request(Method::Invite, "sip:1@h");
        req.push_header(
            "Via",
            "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2",
        );
        req.push_header("From", "<sip:a@h>;tag=x");
        req.push_header("To", "<sip:1@h>");
        req.push_header("Call-ID", "c1");
        req.push_header("CSeq", "1 INVITE");
        req.push_header("Subject", "ignored");
        let resp = req.response(180, "Ringing", Some("t1"));
        assert_eq!(resp.headers_named("Via").count(), 2);
        assert_eq!(resp.header("To"), Some("<sip:1@h>;tag=t1"));
        assert!(resp.header("Subject").is_none());
        let trying = req.response(100, "Trying", Some("t1"));
        assert_eq!(trying.header("To"), Some("<sip:1@h>"));
    }
}
