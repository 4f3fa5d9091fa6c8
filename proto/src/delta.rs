//! Configuration deltas: what changed between two routing configurations, and
//! applying such a change. Both sides use the same code, so a node rebuilds
//! exactly the configuration the operator diffed against.

use std::collections::BTreeMap;

use crate::v1alpha1::{ConfigDelta, PhoneNumber, RoutingConfig, Trunk};

/// Why a delta cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// The delta was computed against another version.
    #[error("delta is based on version {base}, this configuration is version {have}")]
    BaseMismatch {
        /// The delta's base version.
        base: u64,
        /// The version at hand.
        have: u64,
    },
}

/// The delta that turns `old` into `new`.
pub fn diff(old: &RoutingConfig, new: &RoutingConfig) -> ConfigDelta {
    let (upsert_trunks, remove_trunks) = diff_by_id(&old.trunks, &new.trunks, |t: &Trunk| &t.id);
    let (upsert_numbers, remove_numbers) =
        diff_by_id(&old.numbers, &new.numbers, |n: &PhoneNumber| &n.id);
    ConfigDelta {
        base_version: old.version,
        version: new.version,
        upsert_trunks,
        remove_trunks,
        upsert_numbers,
        remove_numbers,
    }
}

/// Upserts and removals turning `old` into `new`, matching items by `id`.
pub fn diff_by_id<T: Clone + PartialEq>(
    old: &[T],
    new: &[T],
    id: impl Fn(&T) -> &String,
) -> (Vec<T>, Vec<String>) {
    let before: BTreeMap<&String, &T> = old.iter().map(|x| (id(x), x)).collect();
    let after: BTreeMap<&String, &T> = new.iter().map(|x| (id(x), x)).collect();
    let upserts = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(_, v)| (*v).clone())
        .collect();
    let removals = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .map(|k| (*k).clone())
        .collect();
    (upserts, removals)
}

/// Applies a delta, keeping trunks and numbers ordered by id.
pub fn apply(cfg: &RoutingConfig, delta: &ConfigDelta) -> Result<RoutingConfig, DeltaError> {
    let mut out = cfg.clone();
    apply_in_place(&mut out, delta)?;
    out.trunks.sort_by(|a, b| a.id.cmp(&b.id));
    out.numbers.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Applies a delta to a configuration in place, in time proportional to the
/// configuration's size without copying it (large number lists change one
/// number at a time). Existing items keep their places; new ones are
/// appended.
pub fn apply_in_place(cfg: &mut RoutingConfig, delta: &ConfigDelta) -> Result<(), DeltaError> {
    if delta.base_version != cfg.version {
        return Err(DeltaError::BaseMismatch {
            base: delta.base_version,
            have: cfg.version,
        });
    }
    patch(
        &mut cfg.trunks,
        &delta.upsert_trunks,
        &delta.remove_trunks,
        |t| &t.id,
    );
    patch(
        &mut cfg.numbers,
        &delta.upsert_numbers,
        &delta.remove_numbers,
        |n| &n.id,
    );
    cfg.version = delta.version;
    Ok(())
}

fn patch<T: Clone>(
    items: &mut Vec<T>,
    upserts: &[T],
    removals: &[String],
    id: impl Fn(&T) -> &String,
) {
    if upserts.is_empty() && removals.is_empty() {
        return;
    }
    let removed: std::collections::HashSet<&str> = removals.iter().map(String::as_str).collect();
    let mut replaced: std::collections::HashMap<&str, &T> =
        upserts.iter().map(|u| (id(u).as_str(), u)).collect();
    items.retain(|x| !removed.contains(id(x).as_str()));
    for x in items.iter_mut() {
        if let Some(u) = replaced.remove(id(x).as_str()) {
            *x = u.clone();
        }
    }
    // What was not replaced is new, appended in the delta's order.
    for u in upserts {
        if replaced.contains_key(id(u).as_str()) {
            items.push(u.clone());
        }
    }
}

impl ConfigDelta {
    /// True when the delta changes nothing but the version.
    pub fn is_empty(&self) -> bool {
        self.upsert_trunks.is_empty()
            && self.remove_trunks.is_empty()
            && self.upsert_numbers.is_empty()
            && self.remove_numbers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(id: &str, e164: &str) -> PhoneNumber {
        PhoneNumber {
            id: id.into(),
            e164: e164.into(),
            trunk_id: "ns/t".into(),
            ..Default::default()
        }
    }

    fn cfg(version: u64, numbers: &[(&str, &str)]) -> RoutingConfig {
        RoutingConfig {
            version,
            trunks: vec![Trunk {
                id: "ns/t".into(),
                enabled: true,
                ..Default::default()
            }],
            numbers: numbers.iter().map(|(i, e)| number(i, e)).collect(),
        }
    }

    #[test]
    fn diff_then_apply_rebuilds_the_new_configuration() {
        let old = cfg(1, &[("ns/a", "+1"), ("ns/b", "+2"), ("ns/c", "+3")]);
        let new = cfg(2, &[("ns/a", "+1"), ("ns/b", "+22"), ("ns/d", "+4")]);
        let d = diff(&old, &new);
        assert_eq!(d.upsert_numbers.len(), 2);
        assert_eq!(d.remove_numbers, vec!["ns/c".to_string()]);
        assert!(d.upsert_trunks.is_empty() && d.remove_trunks.is_empty());
        assert_eq!(apply(&old, &d).expect("apply"), new);
    }

    #[test]
    fn in_place_application_matches_the_sorted_one() {
        let old = cfg(1, &[("ns/a", "+1"), ("ns/b", "+2"), ("ns/c", "+3")]);
        let new = cfg(
            2,
            &[
                ("ns/a", "+1"),
                ("ns/b", "+22"),
                ("ns/d", "+4"),
                ("ns/e", "+5"),
            ],
        );
        let d = diff(&old, &new);
        let mut in_place = old.clone();
        apply_in_place(&mut in_place, &d).expect("apply");
        in_place.numbers.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(in_place, new);
    }

    #[test]
    fn a_delta_on_the_wrong_base_is_refused() {
        let old = cfg(1, &[]);
        let new = cfg(2, &[("ns/a", "+1")]);
        let d = diff(&old, &new);
        let err = apply(&cfg(7, &[]), &d).expect_err("mismatch");
        assert_eq!(err, DeltaError::BaseMismatch { base: 1, have: 7 });
    }

    #[test]
    fn identical_configurations_give_an_empty_delta() {
        let a = cfg(1, &[("ns/a", "+1")]);
        let mut b = a.clone();
        b.version = 2;
        assert!(diff(&a, &b).is_empty());
    }
}
