//! URLs for logs, status and events: agent URLs often carry a token in the query
//! (`?token=...`) or in user info (`wss://user:secret@host`), so only
//! `scheme://host:port/path` is ever shown.

/// Longest redacted form; a longer path is cut (a log line is not the place for it).
const MAX_LEN: usize = 256;

/// `scheme://host[:port]/path` of `url`: user info, query and fragment removed, control
/// characters replaced, at most [`MAX_LEN`] bytes. Anything without `scheme://` becomes
/// `<invalid url>` (it may be a secret pasted in the wrong field).
pub fn url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<invalid url>".to_owned();
    };
    let valid_scheme = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !valid_scheme {
        return "<invalid url>".to_owned();
    }
    // The query and fragment end the path wherever they start.
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    // User info ends at the last '@' of the authority.
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let mut out = String::with_capacity(scheme.len() + 3 + host_port.len() + path.len());
    out.push_str(scheme);
    out.push_str("://");
    for c in host_port.chars().chain(path.chars()) {
        if out.len() + c.len_utf8() > MAX_LEN {
            break;
        }
        out.push(if c.is_control() { '?' } else { c });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_scheme_host_port_path_only() {
        assert_eq!(
            url("wss://user:pw@agent.example.com:8443/media/stream?token=SECRET#frag"),
            "wss://agent.example.com:8443/media/stream"
        );
        assert_eq!(
            url("ws://127.0.0.1:8765/agent"),
            "ws://127.0.0.1:8765/agent"
        );
        assert_eq!(url("ws://agent.example"), "ws://agent.example");
        assert_eq!(url("ws://agent.example?k=v"), "ws://agent.example");
        assert_eq!(url("ws://agent.example#k=v"), "ws://agent.example");
        assert_eq!(url("ws://[::1]:9000/a?x"), "ws://[::1]:9000/a");
        assert_eq!(
            url("https://tok@hooks.example/x"),
            "https://hooks.example/x"
        );
        // '@' in the path is not user info.
        assert_eq!(url("ws://h/a@b?c"), "ws://h/a@b");
    }

    #[test]
    fn nothing_secret_survives() {
        for u in [
            "wss://alice:s3cr3t@a.example/p?token=s3cr3t",
            "ws://a.example/p?access_token=s3cr3t&x=1",
            "ws://a.example/p#s3cr3t",
            "ws://s3cr3t@a.example",
            "ws://:s3cr3t@a.example:80/",
        ] {
            let r = url(u);
            assert!(!r.contains("s3cr3t"), "{u} -> {r}");
            assert!(r.starts_with("ws"), "{u} -> {r}");
        }
    }

    #[test]
    fn invalid_long_and_odd_input() {
        assert_eq!(url("not a url"), "<invalid url>");
        assert_eq!(url("s3cr3t"), "<invalid url>");
        assert_eq!(url("://host"), "<invalid url>");
        assert_eq!(url("we ird://host"), "<invalid url>");
        let long = format!("ws://h/{}", "p".repeat(10_000));
        assert_eq!(url(&long).len(), MAX_LEN);
        assert_eq!(url("ws://h/a\nb\u{1b}c"), "ws://h/a?b?c");
        // Multi-byte characters are never split.
        let wide = format!("ws://h/{}", "é".repeat(500));
        assert!(url(&wide).len() <= MAX_LEN);
    }
}
