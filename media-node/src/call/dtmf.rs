//! DTMF carried in SIP INFO bodies: `application/dtmf-relay` (Signal= /
//! Duration=) and `application/dtmf` (just the digit or event code).

use super::DtmfEvent;

fn digit(s: &str) -> Option<char> {
    let s = s.trim();
    // Some gateways send event codes (RFC 4733 numbering) instead of digits.
    if let Ok(n) = s.parse::<u8>()
        && s.len() > 1
    {
        return match n {
            10 => Some('*'),
            11 => Some('#'),
            12..=15 => Some((b'A' + (n - 12)) as char),
            _ => None,
        };
    }
    let mut chars = s.chars();
    let c = chars.next()?.to_ascii_uppercase();
    if chars.next().is_some() {
        return None;
    }
    matches!(c, '0'..='9' | '*' | '#' | 'A'..='D').then_some(c)
}

/// Parses an INFO body by its Content-Type. `None` for other content.
pub fn parse(content_type: &str, body: &[u8]) -> Option<DtmfEvent> {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let text = std::str::from_utf8(body).ok()?;
    match ct.as_str() {
        "application/dtmf-relay" => {
            let mut sig = None;
            let mut dur = 160;
            for line in text.lines() {
                let Some((k, v)) = line.split_once('=') else {
                    continue;
                };
                match k.trim().to_ascii_lowercase().as_str() {
                    "signal" => sig = digit(v),
                    "duration" => dur = v.trim().parse().unwrap_or(160),
                    _ => {}
                }
            }
            sig.map(|digit| DtmfEvent {
                digit,
                duration_ms: dur,
            })
        }
        "application/dtmf" => digit(text).map(|digit| DtmfEvent {
            digit,
            duration_ms: 160,
        }),
        _ => None,
    }
}

/// The Content-Type of the INFO bodies we send.
pub const RELAY_CONTENT_TYPE: &str = "application/dtmf-relay";

/// An `application/dtmf-relay` INFO body for one digit (the de-facto format
/// carriers and PBXs parse: `Signal=` and `Duration=` in milliseconds).
pub fn relay_body(digit: char, duration_ms: u32) -> String {
    format!("Signal={digit}\r\nDuration={duration_ms}\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_relay_and_plain() {
        assert_eq!(
            parse("application/dtmf-relay", b"Signal=5\r\nDuration=250\r\n"),
            Some(DtmfEvent {
                digit: '5',
                duration_ms: 250
            })
        );
        assert_eq!(
            parse("Application/DTMF-Relay", b"Signal= #\r\n"),
            Some(DtmfEvent {
                digit: '#',
                duration_ms: 160
            })
        );
        assert_eq!(
            parse("application/dtmf-relay", b"Signal=11\r\nDuration=100"),
            Some(DtmfEvent {
                digit: '#',
                duration_ms: 100
            })
        );
        assert_eq!(
            parse("application/dtmf", b"7"),
            Some(DtmfEvent {
                digit: '7',
                duration_ms: 160
            })
        );
        assert_eq!(
            parse("application/dtmf", b"d"),
            Some(DtmfEvent {
                digit: 'D',
                duration_ms: 160
            })
        );
        assert_eq!(parse("application/dtmf", b"xyz"), None);
        assert_eq!(parse("application/sdp", b"v=0"), None);
        assert_eq!(parse("application/dtmf-relay", &[0xff, 0xfe]), None);
    }

    #[test]
    fn our_relay_body_parses_back() {
        for d in ['0', '9', '*', '#', 'A', 'D'] {
            let ev = parse(RELAY_CONTENT_TYPE, relay_body(d, 100).as_bytes()).expect("parses");
            assert_eq!((ev.digit, ev.duration_ms), (d, 100));
        }
    }
}
