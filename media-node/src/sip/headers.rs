//! Interpreting individual header values: parameters, name-addrs, Via.
//! URIs are parsed by [`super::uri`]; a name-addr's URI is found here
//! (`uri_text`) with a quoted display name skipped, escapes honoured, so a
//! `<` inside the quotes never hides the tags and branches we key
//! transactions and dialogs on.

use std::net::{IpAddr, SocketAddr};

pub use super::uri::SipUri;

/// Errors interpreting a header value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// A URI we could not parse.
    #[error("invalid URI {uri:?}: {reason}")]
    Uri {
        /// The text we tried to parse.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A Via we could not interpret.
    #[error("invalid Via {0:?}")]
    Via(String),
}

/// Returns the part of a name-addr/addr-spec value after the URI, i.e. the
/// header parameters (`;tag=..;expires=..`), skipping a quoted display name.
fn header_params(value: &str) -> &str {
    // Skip a quoted display name first, honouring escapes.
    let mut rest = value;
    if let Some(stripped) = value.trim_start().strip_prefix('"') {
        let mut escaped = false;
        let mut end = None;
        for (i, ch) in stripped.char_indices() {
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                end = Some(i + 1);
                break;
            }
        }
        rest = end.map(|e| &stripped[e..]).unwrap_or("");
    }
    if let Some(open) = rest.find('<') {
        match rest[open..].find('>') {
            Some(close) => &rest[open + close + 1..],
            None => "",
        }
    } else {
        // addr-spec form: parameters after the first ';' belong to the header.
        match rest.find(';') {
            Some(i) => &rest[i..],
            None => "",
        }
    }
}

/// Finds a `;name=value` (or bare `;name`) parameter, case-insensitively.
/// Returns `Some("")` for a bare flag parameter.
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    scan_params(header_params(value), name)
}

/// Like [`param`] but for values with no URI part (Via after sent-by,
/// Session-Expires, Content-Type...): scans every `;` parameter.
pub fn plain_param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let i = value.find(';')?;
    scan_params(&value[i..], name)
}

fn scan_params<'a>(params: &'a str, name: &str) -> Option<&'a str> {
    for p in params.split(';').skip(1) {
        let p = p.trim();
        let (k, v) = match p.find('=') {
            Some(i) => (p[..i].trim(), p[i + 1..].trim()),
            None => (p, ""),
        };
        if k.eq_ignore_ascii_case(name) {
            return Some(v.trim_matches('"'));
        }
    }
    None
}

/// The URI text inside a name-addr (`"Bob" <sip:b@h>;tag=1` -> `sip:b@h`)
/// or an addr-spec (`sip:b@h;tag=1` -> `sip:b@h`).
pub fn uri_text(value: &str) -> &str {
    let v = value.trim();
    let after_name = if let Some(stripped) = v.strip_prefix('"') {
        let mut escaped = false;
        let mut rest = "";
        for (i, ch) in stripped.char_indices() {
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                rest = &stripped[i + 1..];
                break;
            }
        }
        rest
    } else {
        v
    };
    if let Some(open) = after_name.find('<') {
        let inner = &after_name[open + 1..];
        return inner.split('>').next().unwrap_or("").trim();
    }
    after_name.split(';').next().unwrap_or("").trim()
}

/// The parts of a Via we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// `UDP`, `TCP`, ... upper case.
    pub transport: String,
    /// sent-by host.
    pub host: String,
    /// sent-by port.
    pub port: Option<u16>,
    /// The branch parameter.
    pub branch: Option<String>,
    /// True when `rport` is present.
    pub rport: bool,
}

impl Via {
    /// Parses `SIP/2.0/UDP host:port;params`.
    pub fn parse(value: &str) -> Result<Via, HeaderError> {
        let bad = || HeaderError::Via(value.to_owned());
        // RFC 3261 allows LWS around the '/' of sent-protocol (RFC 4475 3.1.1.1).
        let v = collapse_slash_whitespace(value.trim());
        let (proto, rest) = v.split_once(char::is_whitespace).ok_or_else(bad)?;
        let mut parts = proto.split('/').map(str::trim);
        let (name, version, transport) = (parts.next(), parts.next(), parts.next());
        if !name.is_some_and(|n| n.eq_ignore_ascii_case("SIP")) || version != Some("2.0") {
            return Err(bad());
        }
        let transport = transport
            .filter(|t| !t.is_empty())
            .ok_or_else(bad)?
            .to_ascii_uppercase();
        let rest = rest.trim_start();
        let sent_by = rest.split(';').next().unwrap_or("").trim();
        if sent_by.is_empty() {
            return Err(bad());
        }
        let (host, port) = split_host_port(sent_by).ok_or_else(bad)?;
        let params = &rest[sent_by.len().min(rest.len())..];
        // `;;` is no parameter at all (RFC 4475 3.1.2.1: extraneous separators).
        if params.split(';').skip(1).any(|p| p.trim().is_empty()) {
            return Err(bad());
        }
        let branch = scan_params(&format!(";{}", params.trim_start_matches(';')), "branch")
            .filter(|b| !b.is_empty())
            .map(str::to_owned);
        let rport = scan_params(params, "rport").is_some();
        Ok(Via {
            transport,
            host,
            port,
            branch,
            rport,
        })
    }

    /// True for an RFC 3261 branch (magic cookie), which makes the branch
    /// alone a transaction identifier.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch
            .as_deref()
            .is_some_and(|b| b.starts_with("z9hG4bK"))
    }

    /// `host:port` as the transaction key wants it.
    pub fn sent_by(&self) -> String {
        format!("{}:{}", self.host, self.port.unwrap_or(5060))
    }
}

fn collapse_slash_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '/' {
            while out.ends_with(char::is_whitespace) {
                out.pop();
            }
            out.push('/');
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`.
pub fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.trim().parse().ok()?),
            None if after.trim().is_empty() => None,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        // A bare IPv6 address without brackets has several colons.
        Some((h, _)) if h.contains(':') => Some((s.to_owned(), None)),
        Some((h, p)) => Some((h.trim().to_owned(), Some(p.trim().parse().ok()?))),
        None => Some((s.to_owned(), None)),
    }
}

/// Formats a socket address as a URI host:port (brackets for IPv6).
pub fn host_port(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// Formats an IP for a URI host (brackets for IPv6).
pub fn uri_host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// True when a comma-separated option-tag header (Supported, Require)
/// contains `tag`.
pub fn has_option_tag<'a>(mut values: impl Iterator<Item = &'a str>, tag: &str) -> bool {
    values.any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(tag)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_from_name_addr_with_tricky_display_name() {
        let v = r#""Bob <the ;tag=no> Smith" <sip:bob@h;tag=uriparam>;tag=real"#;
        assert_eq!(param(v, "tag"), Some("real"));
        assert_eq!(uri_text(v), "sip:bob@h;tag=uriparam");
        assert_eq!(param("sip:a@h;tag=9", "tag"), Some("9"));
        assert_eq!(param("<sip:a@h>", "tag"), None);
    }

    #[test]
    fn a_quoted_angle_bracket_in_the_display_name_does_not_hide_the_uri() {
        let v = r#""a<b" <sip:bob@example.com>;tag=1"#;
        assert_eq!(uri_text(v), "sip:bob@example.com");
        let uri = SipUri::parse(uri_text(v)).expect("parses");
        assert_eq!(uri.user.as_deref(), Some("bob"));
        assert_eq!(param(v, "tag"), Some("1"));
    }

    #[test]
    fn via_parsing() {
        let v = Via::parse("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKabc;rport").expect("via");
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.sent_by(), "10.0.0.1:5070");
        assert_eq!(v.branch.as_deref(), Some("z9hG4bKabc"));
        assert!(v.rport && v.has_rfc3261_branch());
        let v = Via::parse("SIP / 2.0 / TCP [2001:db8::1];branch=z9hG4bKx").expect("spaces ok");
        assert_eq!(v.transport, "TCP");
        assert_eq!(v.host, "2001:db8::1");
        assert!(Via::parse("SIP/3.0/UDP h").is_err());
        assert!(Via::parse("garbage").is_err());
    }
}
