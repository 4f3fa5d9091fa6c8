//! SIP and tel URIs (RFC 3261 19.1 and 25.1, RFC 3966): the node's one URI
//! parser. It keeps the parts the node routes on and checks the rest of the
//! grammar enough to refuse what is not a URI: schemes are case-insensitive
//! (19.1.4), the user part is compared unescaped (`%2B1555` is `+1555`,
//! 19.1.4), IPv6 references are bracketed, the port is a number that fits.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::headers::{HeaderError, split_host_port};

/// A parsed SIP URI: the parts we route on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    /// The user part, %-escapes decoded (`+15551234567`).
    pub user: Option<String>,
    /// Host (domain or IP literal, without IPv6 brackets).
    pub host: String,
    /// Port if written.
    pub port: Option<u16>,
    /// `transport=` parameter, lower case.
    pub transport: Option<String>,
}

fn invalid(uri: &str, reason: &str) -> HeaderError {
    HeaderError::Uri {
        uri: uri.to_owned(),
        reason: reason.to_owned(),
    }
}

/// RFC 3261 25.1 `unreserved`.
fn unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.!~*'()".contains(c)
}

/// Decodes `%HH` escapes, checking that every character outside them is
/// allowed by `ok`; `None` when one is not, an escape is truncated or not
/// hex, or the result is not UTF-8.
fn unescape(s: &str, ok: impl Fn(char) -> bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            let c = char::from(b);
            if !b.is_ascii() || !ok(c) {
                return None;
            }
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// RFC 3261 `user`: unreserved, escaped or `& = + $ , ; ? /`.
fn user_char(c: char) -> bool {
    unreserved(c) || "&=+$,;?/".contains(c)
}

/// RFC 3261 `password`: unreserved, escaped or `& = + $ ,`.
fn password_char(c: char) -> bool {
    unreserved(c) || "&=+$,".contains(c)
}

/// RFC 3261 `paramchar` (plus `=` between name and value).
fn param_char(c: char) -> bool {
    unreserved(c) || "[]/:&+$=".contains(c)
}

/// RFC 3261 `hname`/`hvalue` characters, with `=` and `&` between them.
fn header_char(c: char) -> bool {
    unreserved(c) || "[]/?:+$=&".contains(c)
}

/// A host name (RFC 3261 `hostname`, with `_` tolerated as carriers use it)
/// or an IPv4 address.
fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && !h.starts_with(['.', '-'])
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

impl SipUri {
    /// Parses `sip:` / `sips:` / `tel:` URIs (any case). `tel:` numbers are
    /// returned as the user with an empty host.
    pub fn parse(text: &str) -> Result<SipUri, HeaderError> {
        let t = text.trim();
        let (scheme, rest) = t.split_once(':').ok_or_else(|| invalid(t, "no scheme"))?;
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(t, "whitespace in URI"));
        }
        if scheme.eq_ignore_ascii_case("tel") {
            let number = rest.split(';').next().unwrap_or("");
            let user = unescape(number, |c| {
                c.is_ascii_alphanumeric() || "+-.()*#".contains(c)
            })
            .filter(|u| !u.is_empty())
            .ok_or_else(|| invalid(t, "invalid telephone number"))?;
            return Ok(SipUri {
                user: Some(user),
                host: String::new(),
                port: None,
                transport: None,
            });
        }
        if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
            return Err(invalid(t, "not a sip: URI"));
        }
        // Neither parameters nor headers may hold an unescaped '@', so the
        // last one ends the userinfo (RFC 3261 25.1).
        let (userinfo, hostpart) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        let user = match userinfo {
            None => None,
            Some(info) => {
                let (user, password) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (info, None),
                };
                if password.is_some_and(|p| unescape(p, password_char).is_none()) {
                    return Err(invalid(t, "invalid password"));
                }
                let user = unescape(user, user_char)
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| invalid(t, "invalid user part"))?;
                Some(user)
            }
        };
        let (before_headers, headers) = match hostpart.split_once('?') {
            Some((a, h)) => (a, Some(h)),
            None => (hostpart, None),
        };
        if headers.is_some_and(|h| unescape(h, header_char).is_none()) {
            return Err(invalid(t, "invalid URI headers"));
        }
        let (hostport, params) = match before_headers.split_once(';') {
            Some((h, p)) => (h, Some(p)),
            None => (before_headers, None),
        };
        let (host, port) =
            split_host_port(hostport).ok_or_else(|| invalid(t, "invalid host or port"))?;
        let bracketed = hostport.starts_with('[');
        let host_ok = if bracketed {
            host.parse::<Ipv6Addr>().is_ok()
        } else {
            valid_hostname(&host)
        };
        if !host_ok {
            return Err(invalid(t, "invalid host"));
        }
        let mut transport = None;
        for p in params.into_iter().flat_map(|p| p.split(';')) {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            if name.is_empty() || unescape(p, param_char).is_none() {
                return Err(invalid(t, "invalid URI parameter"));
            }
            if name.eq_ignore_ascii_case("transport") {
                transport = Some(value.to_ascii_lowercase());
            }
        }
        Ok(SipUri {
            user,
            host,
            port,
            transport,
        })
    }

    /// The socket address when the host is an IP literal.
    pub fn socket_addr(&self, default_port: u16) -> Option<SocketAddr> {
        let ip: IpAddr = self.host.parse().ok()?;
        Some(SocketAddr::new(ip, self.port.unwrap_or(default_port)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uri: &str) -> Option<String> {
        SipUri::parse(uri).ok().and_then(|u| u.user)
    }

    #[test]
    fn the_parts_we_route_on() {
        let u = SipUri::parse("sip:+15551234567@10.0.0.1:5080;transport=TCP;lr").expect("valid");
        assert_eq!(u.user.as_deref(), Some("+15551234567"));
        assert_eq!(u.host, "10.0.0.1");
        assert_eq!(u.port, Some(5080));
        assert_eq!(u.transport.as_deref(), Some("tcp"));
        assert_eq!(
            u.socket_addr(5060),
            Some("10.0.0.1:5080".parse().expect("addr"))
        );
        let u = SipUri::parse("sips:carrier.example.com").expect("no user");
        assert_eq!(
            (u.user.as_deref(), u.host.as_str(), u.port),
            (None, "carrier.example.com", None)
        );
        assert_eq!(u.socket_addr(5061), None, "a name is not an address");
    }

    #[test]
    fn ipv6_references() {
        let u = SipUri::parse("sip:[::1]:5070").expect("v6");
        assert_eq!(
            u.socket_addr(5060),
            Some("[::1]:5070".parse().expect("addr"))
        );
        let u = SipUri::parse("sip:alice@[2001:db8::10];transport=udp").expect("v6");
        assert_eq!(u.host, "2001:db8::10");
        assert!(SipUri::parse("sip:[2001:db8::zz]").is_err());
        assert!(SipUri::parse("sip:[::1").is_err());
    }

    #[test]
    fn schemes_are_case_insensitive() {
        // RFC 3261 19.1.4; RFC 4475 3.1.1.4 sends "SIP:" and "sIp:".
        assert_eq!(user("SIP:alice@h"), Some("alice".into()));
        assert_eq!(user("sIpS:bob@h"), Some("bob".into()));
        assert_eq!(user("TEL:+1555"), Some("+1555".into()));
        assert!(SipUri::parse("http://h").is_err());
        assert!(SipUri::parse("mailto:a@h").is_err());
        assert!(SipUri::parse("not a uri").is_err());
    }

    #[test]
    fn user_parts_are_compared_unescaped() {
        // RFC 3261 19.1.4: "sip:%61lice@h" is "sip:alice@h".
        assert_eq!(user("sip:%61lice@h"), Some("alice".into()));
        assert_eq!(user("sip:%2B15551234567@h"), Some("+15551234567".into()));
        assert_eq!(
            user("sip:+1555;npdi;rn=+1666@h"),
            Some("+1555;npdi;rn=+1666".into())
        );
        assert_eq!(
            user("sip:user:secret@h"),
            Some("user".into()),
            "the password is dropped"
        );
        // A broken escape, a character no user may hold, an empty user.
        assert!(SipUri::parse("sip:%6@h").is_err());
        assert!(SipUri::parse("sip:%zz@h").is_err());
        assert!(SipUri::parse("sip:a<b@h").is_err());
        assert!(SipUri::parse("sip:@h").is_err());
        assert!(SipUri::parse("sip:%ff%fe@h").is_err(), "not UTF-8");
    }

    #[test]
    fn hosts_ports_parameters_and_headers_are_checked() {
        assert!(SipUri::parse("sip:a@").is_err());
        assert!(SipUri::parse("sip:a@h:").is_err());
        assert!(SipUri::parse("sip:a@h:70000").is_err());
        assert!(SipUri::parse("sip:a@h:5x").is_err());
        assert!(SipUri::parse("sip:a@-h").is_err());
        assert!(SipUri::parse("sip:a@h;=x").is_err());
        assert!(SipUri::parse("sip:a@h;a\"b").is_err());
        assert!(SipUri::parse("sip:a b@h").is_err());
        assert!(SipUri::parse("sip:a@h?subject=hi&priority=urgent").is_ok());
        assert!(SipUri::parse("sip:a@h?x=<y>").is_err());
        assert!(SipUri::parse("sip:a@sbc_1.carrier.example").is_ok());
        // The transport parameter's name is case-insensitive too.
        let u = SipUri::parse("sip:a@h;Transport=TLS").expect("valid");
        assert_eq!(u.transport.as_deref(), Some("tls"));
    }

    #[test]
    fn tel_uris() {
        let t = SipUri::parse("tel:+15551234567;phone-context=x").expect("tel");
        assert_eq!(t.user.as_deref(), Some("+15551234567"));
        assert_eq!(t.host, "");
        assert!(SipUri::parse("tel:").is_err());
        assert!(SipUri::parse("tel:555<1>").is_err());
    }
}
