//! Legacy v1 metadata: which v1 image ID a layer has on which registry.
//!
//! The v1 protocol names layers by registry-chosen image IDs, not by
//! digests. A v1 push records, for every image it sent (or found already
//! there), the layer's diffID and stored blob; a later v1 pull looks the ID
//! up before downloading and, when the layer is in the store, reports
//! "Already exists" without moving a byte. As Docker's `V1IDService`, the
//! key is the registry (index) and the v1 ID.
//!
//! On disk: `ROOT/distribution/v1id/REGISTRY/V1ID.json`, where REGISTRY is
//! the `host[:port]` with `:` and `/` replaced by `_`; partial v1 layer
//! downloads (resumed by the next attempt or run) live in
//! `ROOT/distribution/v1partial/`.

use std::path::PathBuf;

use haul_oci::Digest;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fsutil::{create_dirs, read_json, remove_file_if_exists, write_json};
use crate::Store;

/// What is known of one v1 image of a registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1Layer {
    /// The diffID of the image's layer.
    pub diff_id: Digest,
    /// The blob of the layer as sent or received (gzip, usually).
    pub blob: Digest,
    /// The blob's size in bytes.
    pub size: u64,
}

fn escape(registry: &str) -> String {
    registry
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn valid_v1_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric())
}

impl Store {
    fn v1_path(&self, registry: &str, v1_id: &str) -> Option<PathBuf> {
        valid_v1_id(v1_id).then(|| {
            self.distribution_dir()
                .join("v1id")
                .join(escape(registry))
                .join(format!("{v1_id}.json"))
        })
    }

    /// Records that `v1_id` on `registry` (`host[:port]`) is the layer
    /// `layer`. IDs that are not plain alphanumerics are ignored.
    pub fn set_v1_layer(&self, registry: &str, v1_id: &str, layer: &V1Layer) -> Result<()> {
        let Some(path) = self.v1_path(registry, v1_id) else {
            return Ok(());
        };
        let _lock = self.lock_metadata()?;
        if read_json::<V1Layer>(&path)?.as_ref() == Some(layer) {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            create_dirs(dir)?;
        }
        write_json(&self.tmp_dir(), &path, layer)
    }

    /// What `v1_id` on `registry` is known to be, if anything.
    pub fn v1_layer(&self, registry: &str, v1_id: &str) -> Result<Option<V1Layer>> {
        match self.v1_path(registry, v1_id) {
            Some(path) => read_json(&path),
            None => Ok(None),
        }
    }

    /// Where a partial download of `v1_id`'s layer from `registry` is kept
    /// (the directory exists; the file may not).
    pub fn v1_partial_path(&self, registry: &str, v1_id: &str) -> Result<PathBuf> {
        let dir = self.distribution_dir().join("v1partial");
        create_dirs(&dir)?;
        let id = if valid_v1_id(v1_id) {
            v1_id.to_string()
        } else {
            escape(v1_id)
        };
        Ok(dir.join(format!("{}-{id}", escape(registry))))
    }

    /// Removes a partial download (a missing file is fine).
    pub fn remove_v1_partial(&self, registry: &str, v1_id: &str) -> Result<()> {
        remove_file_if_exists(&self.v1_partial_path(registry, v1_id)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_ids_are_remembered_per_registry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layer = V1Layer {
            diff_id: Digest::sha256_of(b"diff"),
            blob: Digest::sha256_of(b"blob"),
            size: 4,
        };
        let id = "ab".repeat(32);
        store.set_v1_layer("127.0.0.1:5000", &id, &layer).unwrap();
        assert_eq!(store.v1_layer("127.0.0.1:5000", &id).unwrap(), Some(layer));
        assert_eq!(store.v1_layer("127.0.0.1:5001", &id).unwrap(), None);
        assert_eq!(store.v1_layer("127.0.0.1:5000", "../x").unwrap(), None);
    }
}
