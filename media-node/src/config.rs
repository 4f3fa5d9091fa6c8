//! Loading the routing configuration from a proto3-JSON file (the same
//! shape the operator will send over gRPC) and swapping it in atomically.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use switchboard_proto::RoutingConfig;
use switchboard_proto::v1alpha1::{PhoneNumber, Trunk};

use crate::routing::RoutingTable;

/// Errors loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a valid RoutingConfig.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: switchboard_proto::ConfigFileError,
    },
}

/// Reads and parses a configuration file.
pub fn load(path: &Path) -> Result<RoutingConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    RoutingConfig::from_json(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// The routing table in use, shared by every call flow. Readers take a
/// short read section and clone what they need out of it (entries are
/// `Arc`s); a delta updates the table in place under the write lock; a
/// snapshot is built outside the lock and swapped in. No section spans an
/// await (the guard is not `Send`).
#[derive(Clone, Default)]
pub struct RoutingStore {
    inner: Arc<RwLock<Option<RoutingTable>>>,
}

impl RoutingStore {
    /// Runs `f` on the current table; `None` when no configuration has
    /// been applied. Keep `f` short: a configuration change waits for it.
    pub fn read<R>(&self, f: impl FnOnce(&RoutingTable) -> R) -> Option<R> {
        let g = self.inner.read().ok()?;
        g.as_ref().map(f)
    }

    /// Runs `f` on the current table under the write lock; `None` when no
    /// configuration has been applied.
    pub fn update<R>(&self, f: impl FnOnce(&mut RoutingTable) -> R) -> Option<R> {
        let mut g = self.inner.write().ok()?;
        g.as_mut().map(f)
    }

    /// True once a configuration has been applied.
    pub fn is_programmed(&self) -> bool {
        self.read(|_| ()).is_some()
    }

    /// The version in use, if any.
    pub fn version(&self) -> Option<u64> {
        self.read(RoutingTable::version)
    }

    /// A trunk by id.
    pub fn trunk(&self, id: &str) -> Option<Arc<Trunk>> {
        self.read(|t| t.trunk(id).cloned()).flatten()
    }

    /// Every trunk (a few pointers: trunks are few).
    pub fn trunks(&self) -> Vec<Arc<Trunk>> {
        self.read(|t| t.trunks().cloned().collect())
            .unwrap_or_default()
    }

    /// A number by id.
    pub fn number_by_id(&self, id: &str) -> Option<Arc<PhoneNumber>> {
        self.read(|t| t.number_by_id(id).map(Arc::new)).flatten()
    }

    /// Replaces the whole table (a snapshot built by the caller, outside
    /// the lock). Returns its version.
    pub fn replace(&self, table: RoutingTable) -> u64 {
        let v = table.version();
        let old = match self.inner.write() {
            Ok(mut g) => g.replace(table),
            Err(_) => None,
        };
        // A large table takes a while to free: not while readers wait.
        drop(old);
        v
    }

    /// Applies a whole configuration.
    pub fn apply(&self, cfg: RoutingConfig) -> u64 {
        self.replace(RoutingTable::build(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_proto3_json_and_reports_errors_with_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.json");
        std::fs::write(
            &good,
            r#"{"version":"3","trunks":[{"id":"ns/t","enabled":true,"inbound":{"enabled":true,"allowedSources":["127.0.0.1/32"]}}],
               "numbers":[{"id":"ns/n","e164":"+15550001111","trunkId":"ns/t","inbound":true}]}"#,
        )
        .expect("write");
        let store = RoutingStore::default();
        assert!(!store.is_programmed());
        assert_eq!(store.apply(load(&good).expect("valid")), 3);
        assert_eq!(
            store.read(|t| t
                .trunks_for_source("127.0.0.1".parse().expect("ip"))
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()),
            Some(vec!["ns/t".to_string()])
        );
        assert_eq!(
            store
                .read(|t| t.number_for("15550001111").map(|n| n.id))
                .flatten()
                .as_deref(),
            Some("ns/n")
        );
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{ not json").expect("write");
        let err = load(&bad).expect_err("invalid").to_string();
        assert!(err.contains("bad.json"), "{err}");
        assert!(load(&dir.path().join("missing.json")).is_err());
    }
}
