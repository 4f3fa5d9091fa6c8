//! Which of an inbound INVITE's headers reach the agent, as `customParameters`
//! `sip_<Header>`: carriers carry call context there (P-Asserted-Identity, Diversion, X-
//! headers). Bounded in count and size: a caller controls every byte of them.

use switchboard_proto::v1alpha1::Trunk;

use crate::sip::message::Message;

/// Passed when the trunk names no list.
pub const DEFAULT_HEADERS: &[&str] = &["P-Asserted-Identity", "Diversion", "X-*"];
/// Most headers passed per call.
pub const MAX_HEADERS: usize = 16;
/// Longest value passed (bytes, cut on a character boundary); repeated headers are joined
/// with ", " first.
pub const MAX_VALUE: usize = 512;

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The `(sip_<Header>, value)` pairs of `invite` the trunk passes, in the order the headers
/// first appear; at most [`MAX_HEADERS`], values at most [`MAX_VALUE`] bytes.
pub fn passed_headers(trunk: &Trunk, invite: &Message) -> Vec<(String, String)> {
    let configured = trunk.inbound.as_ref().and_then(|i| i.pass_headers.as_ref());
    let wanted = |name: &str| match configured {
        Some(list) => list.names.iter().any(|p| matches(p, name)),
        None => DEFAULT_HEADERS.iter().any(|p| matches(p, name)),
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for h in &invite.headers {
        if !wanted(&h.name) {
            continue;
        }
        let key = format!("sip_{}", h.name);
        if let Some((_, v)) = out.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(&key)) {
            if v.len() < MAX_VALUE {
                v.push_str(", ");
                v.push_str(&h.value);
                *v = cut(std::mem::take(v), MAX_VALUE);
            }
        } else if out.len() < MAX_HEADERS {
            out.push((key, cut(h.value.clone(), MAX_VALUE)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::Method;
    use switchboard_proto::v1alpha1::{HeaderPassing, Inbound};

    fn invite(headers: &[(&str, &str)]) -> Message {
        let mut m = Message::request(Method::Invite, "sip:+15550001111@10.0.0.1");
        for (k, v) in headers {
            m.push_header(k, v);
        }
        m
    }

    fn trunk(names: Option<&[&str]>) -> Trunk {
        Trunk {
            inbound: Some(Inbound {
                pass_headers: names.map(|n| HeaderPassing {
                    names: n.iter().map(|s| s.to_string()).collect(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_default_passes_identity_diversion_and_x_headers_only() {
        let m = invite(&[
            ("P-Asserted-Identity", "<sip:+15551234567@carrier>"),
            ("X-Customer-Id", "42"),
            ("x-campaign", "spring"),
            ("Diversion", "<sip:+15557654321@carrier>;reason=no-answer"),
            ("User-Agent", "carrier"),
            ("X-Customer-Id", "43"),
        ]);
        let got = passed_headers(&trunk(None), &m);
        assert_eq!(
            got,
            vec![
                (
                    "sip_P-Asserted-Identity".into(),
                    "<sip:+15551234567@carrier>".into()
                ),
                ("sip_X-Customer-Id".into(), "42, 43".into()),
                ("sip_x-campaign".into(), "spring".into()),
                (
                    "sip_Diversion".into(),
                    "<sip:+15557654321@carrier>;reason=no-answer".into()
                ),
            ]
        );
    }

    #[test]
    fn a_trunk_list_replaces_the_default_and_an_empty_one_passes_nothing() {
        let m = invite(&[("X-A", "1"), ("User-to-User", "abc;encoding=hex")]);
        assert_eq!(
            passed_headers(&trunk(Some(&["user-to-user"])), &m),
            vec![("sip_User-to-User".into(), "abc;encoding=hex".into())]
        );
        assert!(passed_headers(&trunk(Some(&[])), &m).is_empty());
    }

    #[test]
    fn many_or_long_headers_are_cut_never_refused() {
        let long = "é".repeat(MAX_VALUE);
        let mut hs: Vec<(String, String)> = (0..40)
            .map(|i| (format!("X-H{i}"), "v".to_string()))
            .collect();
        hs.insert(0, ("X-Long".into(), long));
        let refs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let got = passed_headers(&trunk(None), &invite(&refs));
        assert_eq!(got.len(), MAX_HEADERS);
        assert!(got[0].1.len() <= MAX_VALUE && got[0].1.starts_with('é'));
        let repeated: Vec<(&str, &str)> = std::iter::repeat_n(("X-R", "0123456789"), 200).collect();
        let got = passed_headers(&trunk(None), &invite(&repeated));
        assert!(got[0].1.len() <= MAX_VALUE, "{}", got[0].1.len());
    }
}
