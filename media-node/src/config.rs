//! Loading the routing configuration from a proto3-JSON file (the same
//! shape the operator will send over gRPC) and swapping it in atomically.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use switchboard_proto::RoutingConfig;

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

/// The routing table in use; readers take a cheap snapshot, a reload
/// swaps the whole table.
#[derive(Clone, Default)]
pub struct RoutingStore {
    inner: Arc<RwLock<Option<Arc<RoutingTable>>>>,
}

impl RoutingStore {
    /// The current table, if any configuration has been applied.
    pub fn get(&self) -> Option<Arc<RoutingTable>> {
        self.inner.read().ok().and_then(|g| g.clone())
    }

    /// Applies a configuration.
    pub fn apply(&self, cfg: RoutingConfig) -> u64 {
        let table = Arc::new(RoutingTable::build(cfg));
        let v = table.version;
        if let Ok(mut g) = self.inner.write() {
            *g = Some(table);
        }
        v
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
        assert!(store.get().is_none());
        assert_eq!(store.apply(load(&good).expect("valid")), 3);
        let t = store.get().expect("applied");
        assert_eq!(
            t.trunks_for_source("127.0.0.1".parse().expect("ip")),
            vec!["ns/t"]
        );
        assert_eq!(
            t.number_for("15550001111").map(|n| n.id.as_str()),
            Some("ns/n")
        );
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{ not json").expect("write");
        let err = load(&bad).expect_err("invalid").to_string();
        assert!(err.contains("bad.json"), "{err}");
        assert!(load(&dir.path().join("missing.json")).is_err());
    }
}
