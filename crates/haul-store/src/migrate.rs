//! Upgrades a store written by an earlier haul, whose references named
//! image IDs (config digests) and whose image records were keyed by image
//! ID: each record file is renamed to its manifest digest (content kept, so
//! the step can be repeated), then `refs.json` is rewritten to name
//! manifests. A process killed midway leaves a store the next open upgrades
//! again.

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

impl Store {
    /// Upgrades references to image IDs, if any; see the module docs.
    pub(crate) fn upgrade_references(&self) -> Result<()> {
        if !self.has_old_references()? {
            return Ok(());
        }
        let _lock = self.lock_metadata()?;
        let Some(stored) = read_json::<StoredRefs>(&self.refs_path())? else {
            return Ok(());
        };
        let dir = self.images_dir();
        let mut by_id: BTreeMap<Digest, RefTarget> = BTreeMap::new();
        for name in crate::sorted_names(&dir)? {
            let path = dir.join(&name);
            let Some(old) = read_json::<OldRecord>(&path)? else {
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

    fn has_old_references(&self) -> Result<bool> {
        Ok(
            read_json::<StoredRefs>(&self.refs_path())?.is_some_and(|stored| {
                stored
                    .references
                    .values()
                    .any(|t| matches!(t, StoredTarget::ImageId(_)))
            }),
        )
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
}
