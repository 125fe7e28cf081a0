//! Upgrades a store written by an earlier haul, whose references named
//! image IDs (config digests) and whose image records were keyed by image
//! ID: each record file is renamed to its manifest digest (content kept, so
//! the step can be repeated), then `refs.json` is rewritten to name
//! manifests, then `ROOT/store-version` says 2. A process killed midway
//! leaves a store the next open upgrades again.

use std::collections::BTreeMap;

use haul_oci::Digest;
use serde::Deserialize;

use crate::error::{IoContext, Result};
use crate::fsutil::{fsync_dir, read_json};
use crate::refs::RefTarget;
use crate::Store;

/// A reference as any version stored it.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredTarget {
    Current(RefTarget),
    ImageId(Digest),
}

#[derive(Deserialize)]
struct StoredRefs {
    references: BTreeMap<String, StoredTarget>,
}

/// The fields of an old image record the upgrade needs.
#[derive(Deserialize)]
struct OldRecord {
    id: Digest,
    manifest_digest: Digest,
    #[serde(default)]
    index_digest: Option<Digest>,
}

/// The layout version this haul writes.
const STORE_VERSION: &str = "2";

impl Store {
    fn version_path(&self) -> std::path::PathBuf {
        self.root.join("store-version")
    }

    /// Upgrades a store of an earlier layout, if it is one; see the module
    /// docs.
    pub(crate) fn upgrade_layout(&self) -> Result<()> {
        let current = |store: &Store| {
            std::fs::read_to_string(store.version_path()).is_ok_and(|v| v.trim() == STORE_VERSION)
        };
        if current(self) {
            return Ok(());
        }
        let _lock = self.lock_metadata()?;
        if current(self) {
            return Ok(());
        }
        self.upgrade_references()?;
        crate::fsutil::write_atomic(
            &self.tmp_dir(),
            &self.version_path(),
            format!("{STORE_VERSION}\n").as_bytes(),
        )
    }

    /// Renames every record to its manifest key and points references to
    /// image IDs at manifests. Callers hold the store lock.
    fn upgrade_references(&self) -> Result<()> {
        let stored = read_json::<StoredRefs>(&self.refs_path())?.unwrap_or(StoredRefs {
            references: BTreeMap::new(),
        });
        let dir = self.images_dir();
        let mut by_id: BTreeMap<Digest, RefTarget> = BTreeMap::new();
        for name in crate::sorted_names(&dir)? {
            let path = dir.join(&name);
            // An unreadable record is garbage gc removes.
            let Ok(Some(old)) = read_json::<OldRecord>(&path) else {
                continue;
            };
            let keyed = self.image_path(&old.manifest_digest);
            if keyed != path {
                std::fs::rename(&path, &keyed).at(&keyed)?;
            }
            by_id.insert(
                old.id,
                RefTarget {
                    manifest: old.manifest_digest,
                    index: old.index_digest,
                },
            );
        }
        fsync_dir(&dir)?;
        let references = stored
            .references
            .into_iter()
            .filter_map(|(key, target)| match target {
                StoredTarget::Current(target) => Some((key, target)),
                StoredTarget::ImageId(id) => by_id.get(&id).map(|t| (key, t.clone())),
            })
            .collect();
        self.save_refs(references)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_to_image_ids_become_references_to_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let id = Digest::sha256_of(b"config");
        let manifest = Digest::sha256_of(b"manifest");
        let index = Digest::sha256_of(b"index");
        std::fs::create_dir_all(root.join("images/sha256")).unwrap();
        let old_record = serde_json::json!({
            "id": id, "manifest_digest": manifest, "index_digest": index,
            "config_media_type": "application/vnd.oci.image.config.v1+json",
            "config_size": 6, "manifest_media_type": "application/vnd.oci.image.manifest.v1+json",
            "manifest_size": 8, "platform": {"os": "linux", "architecture": "amd64"},
            "layers": [],
        });
        std::fs::write(
            root.join(format!("images/sha256/{}.json", id.hex())),
            old_record.to_string(),
        )
        .unwrap();
        std::fs::write(
            root.join("refs.json"),
            serde_json::json!({"references": {
                "docker.io/library/a:1": id,
                "docker.io/library/gone:1": Digest::sha256_of(b"no record"),
            }})
            .to_string(),
        )
        .unwrap();

        let store = Store::open(root).unwrap();
        let a = haul_oci::Reference::parse("a:1").unwrap();
        assert_eq!(
            store.target(&a).unwrap(),
            Some(RefTarget {
                manifest: manifest.clone(),
                index: Some(index)
            })
        );
        let gone = haul_oci::Reference::parse("gone:1").unwrap();
        assert_eq!(store.target(&gone).unwrap(), None);
        assert_eq!(store.get_image(&manifest).unwrap().unwrap().id, id);
        assert!(!root
            .join(format!("images/sha256/{}.json", id.hex()))
            .exists());
        // Opening again changes nothing.
        Store::open(root).unwrap();
        assert_eq!(store.get_image(&manifest).unwrap().unwrap().id, id);
    }

    #[test]
    fn records_of_an_old_store_without_references_are_upgraded_and_unreadable_ones_collected() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let id = Digest::sha256_of(b"config");
        let manifest = Digest::sha256_of(b"manifest");
        std::fs::create_dir_all(root.join("images/sha256")).unwrap();
        let old_record = serde_json::json!({
            "id": id, "manifest_digest": manifest,
            "config_media_type": "application/vnd.oci.image.config.v1+json",
            "config_size": 6, "manifest_media_type": "application/vnd.oci.image.manifest.v1+json",
            "manifest_size": 8, "platform": {"os": "linux", "architecture": "amd64"},
            "layers": [],
        });
        std::fs::write(
            root.join(format!("images/sha256/{}.json", id.hex())),
            old_record.to_string(),
        )
        .unwrap();
        std::fs::write(root.join("images/sha256/0000.json"), "{").unwrap();
        std::fs::write(root.join("refs.json"), r#"{"references":{}}"#).unwrap();

        let store = Store::open(root).unwrap();
        assert_eq!(
            store.list_image_records().unwrap().len(),
            1,
            "the corrupt one is left out"
        );
        let report = store.gc().unwrap();
        assert_eq!(report.images_removed, 2, "{report:?}");
        assert_eq!(
            std::fs::read_dir(root.join("images/sha256"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(store.gc().unwrap().images_removed, 0);
    }
}
