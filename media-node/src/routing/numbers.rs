//! Matching a called number to a PhoneNumber: E.164 with or without `+`
//! first, then the carrier-specific destinationKey.

use std::collections::HashMap;

/// Looks numbers up by how carriers write them.
#[derive(Debug, Default, Clone)]
pub struct NumberIndex {
    by_digits: HashMap<String, usize>,
    by_key: HashMap<String, usize>,
}

/// The user part as a number: URI parameters (`;npdi`) and visual
/// separators (RFC 3966) removed.
pub fn clean_user(user: &str) -> String {
    let user = user.split(';').next().unwrap_or("");
    user.chars()
        .filter(|c| !matches!(c, '-' | '.' | '(' | ')' | ' '))
        .collect()
}

fn e164_digits(s: &str) -> Option<&str> {
    let d = s.strip_prefix('+').unwrap_or(s);
    (!d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())).then_some(d)
}

impl NumberIndex {
    /// Indexes number `idx` by its E.164 form and destination key.
    pub fn add(&mut self, idx: usize, e164: &str, destination_key: &str) {
        if let Some(d) = e164_digits(e164) {
            self.by_digits.entry(d.to_owned()).or_insert(idx);
        }
        if !destination_key.is_empty() {
            self.by_key.entry(destination_key.to_owned()).or_insert(idx);
        }
    }

    /// Finds the number for a called user part.
    pub fn lookup(&self, user: &str) -> Option<usize> {
        let cleaned = clean_user(user);
        if let Some(d) = e164_digits(&cleaned)
            && let Some(i) = self.by_digits.get(d)
        {
            return Some(*i);
        }
        self.by_key
            .get(user)
            .or_else(|| self.by_key.get(&cleaned))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_order() {
        let mut idx = NumberIndex::default();
        idx.add(0, "+15551234567", "");
        idx.add(1, "+4930123456", "030123456");
        assert_eq!(idx.lookup("+15551234567"), Some(0));
        assert_eq!(idx.lookup("15551234567"), Some(0));
        assert_eq!(idx.lookup("+1-555-123-4567"), Some(0));
        assert_eq!(idx.lookup("+15551234567;npdi"), Some(0));
        assert_eq!(idx.lookup("030123456"), Some(1));
        assert_eq!(idx.lookup("4930123456"), Some(1));
        assert_eq!(idx.lookup("5551234567"), None);
        assert_eq!(idx.lookup(""), None);
        assert_eq!(idx.lookup("alice"), None);
    }

    #[test]
    fn e164_wins_over_destination_key() {
        let mut idx = NumberIndex::default();
        idx.add(0, "+15550000001", "15550000002");
        idx.add(1, "+15550000002", "");
        assert_eq!(idx.lookup("15550000002"), Some(1));
    }
}
