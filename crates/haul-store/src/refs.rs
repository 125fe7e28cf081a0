//! References: `ROOT/refs.json` maps full normalised references (tags and
//! digests, e.g. `docker.io/library/alpine:latest`,
//! `docker.io/library/alpine@sha256:…`) to a [`RefTarget`]: the exact image
//! manifest the reference resolved to, and the index it came through, if
//! any. Updated atomically under the store lock, together with
//! `content/index.json`.
//!
//! A reference with both a tag and a digest is stored as the digest form
//! (as Docker does, the digest wins); a reference with neither means
//! `:latest`.

use std::collections::{BTreeMap, HashSet};

use haul_oci::{Digest, Reference};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::{read_json, write_json};
use crate::images::ImageRecord;
use crate::Store;

/// What a reference points at: exactly what it was pulled, loaded or
/// tagged with, never re-pointed by another image of the same config.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RefTarget {
    /// The image manifest the reference selects (for an index, the
    /// platform chosen when it was pulled); the key of its image record.
    pub manifest: Digest,
    /// The index (manifest list) the reference resolved to, when its
    /// source named one. Its blob is kept while the reference lives, and
    /// so is every platform of it that is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Digest>,
}

impl RefTarget {
    /// A target naming one image manifest, with no index.
    pub fn manifest(digest: Digest) -> Self {
        RefTarget {
            manifest: digest,
            index: None,
        }
    }

    /// The digest the reference's source served: the index when there is
    /// one, else the manifest.
    pub fn source_digest(&self) -> &Digest {
        self.index.as_ref().unwrap_or(&self.manifest)
    }
}

/// What a reference resolves to: the image record of its manifest, and the
/// index it came through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The image the reference selects.
    pub image: ImageRecord,
    /// The index the reference resolved to, if any.
    pub index: Option<Digest>,
}

impl ResolvedImage {
    /// The reference's target.
    pub fn target(&self) -> RefTarget {
        RefTarget {
            manifest: self.image.manifest_digest.clone(),
            index: self.index.clone(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct RefsFile {
    pub(crate) references: BTreeMap<String, RefTarget>,
}

/// What [`Store::remove_image`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedImage {
    /// The references removed: the one asked for first, then, when it was
    /// the image's last tag in its repository, that repository's digest
    /// references to the image (as `docker rmi` does).
    pub untagged: Vec<Reference>,
    /// The image ID deleted: no reference kept its record, and no other
    /// stored manifest has that ID.
    pub deleted: Option<Digest>,
}

/// How many images an ID prefix matched in [`Store::find_image_by_id`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdMatch {
    /// No image has that ID or ID prefix.
    None,
    /// Exactly one image ID. When several manifests share that config, the
    /// most recently stored one.
    One(Box<ImageRecord>),
    /// Several images share the prefix (their IDs).
    Ambiguous(Vec<Digest>),
}

/// The key a reference is stored under.
pub(crate) fn ref_key(reference: &Reference) -> String {
    match (reference.tag(), reference.digest()) {
        (Some(_), Some(_)) => reference.without_tag().to_string(),
        (None, None) => reference
            .with_tag(haul_oci::reference::DEFAULT_TAG)
            .map(|r| r.to_string())
            .unwrap_or_else(|_| reference.to_string()),
        _ => reference.to_string(),
    }
}

impl Store {
    pub(crate) fn load_refs(&self) -> Result<BTreeMap<String, RefTarget>> {
        Ok(read_json::<RefsFile>(&self.refs_path())?
            .unwrap_or_default()
            .references)
    }

    pub(crate) fn save_refs(&self, refs: BTreeMap<String, RefTarget>) -> Result<()> {
        let file = RefsFile { references: refs };
        write_json(&self.tmp_dir(), &self.refs_path(), &file)?;
        self.write_index_json(&file.references)
    }

    /// The stored index blob `index`, parsed (`None` when it is not stored
    /// or is not an index).
    pub(crate) fn read_index(&self, index: &Digest) -> Result<Option<haul_oci::ParsedManifest>> {
        if !self.has_blob(index) {
            return Ok(None);
        }
        let bytes = self.read_blob_limited(index, crate::MANIFEST_LIMIT)?;
        Ok(haul_oci::parse_manifest(bytes, None)
            .ok()
            .filter(|parsed| parsed.manifest().manifests().is_some()))
    }

    /// The manifests `index` lists (`None` when the index blob is not
    /// stored or is not an index).
    pub fn index_children(&self, index: &Digest) -> Result<Option<Vec<Digest>>> {
        Ok(self.read_index(index)?.map(|parsed| {
            parsed
                .manifest()
                .manifests()
                .unwrap_or_default()
                .iter()
                .filter_map(|entry| Digest::try_from(entry.digest()).ok())
                .collect()
        }))
    }

    /// The manifests whose records the references keep alive: each target's
    /// manifest, and every stored platform of each target's index.
    pub(crate) fn live_manifests(
        &self,
        refs: &BTreeMap<String, RefTarget>,
    ) -> Result<HashSet<Digest>> {
        let mut live = HashSet::new();
        let mut indexes = HashSet::new();
        for target in refs.values() {
            live.insert(target.manifest.clone());
            if let Some(index) = &target.index {
                indexes.insert(index.clone());
            }
        }
        for index in indexes {
            for child in self.index_children(&index)?.unwrap_or_default() {
                if self.image_path(&child).is_file() {
                    live.insert(child);
                }
            }
        }
        Ok(live)
    }

    /// Points `reference` at `target`, whose manifest must have an image
    /// record; returns what it pointed at before, if anything.
    pub fn tag(&self, reference: &Reference, target: &RefTarget) -> Result<Option<RefTarget>> {
        let _lock = self.lock_metadata()?;
        if self.get_image(&target.manifest)?.is_none() {
            return Err(Error::ManifestNotFound {
                digest: target.manifest.clone(),
            });
        }
        let mut refs = self.load_refs()?;
        let previous = refs.insert(ref_key(reference), target.clone());
        if previous.as_ref() != Some(target) {
            self.save_refs(refs)?;
        }
        Ok(previous)
    }

    /// Removes `reference`; returns what it pointed at, if it existed. The
    /// image record stays (see [`Store::remove_image`]).
    pub fn untag(&self, reference: &Reference) -> Result<Option<RefTarget>> {
        let _lock = self.lock_metadata()?;
        let mut refs = self.load_refs()?;
        let removed = refs.remove(&ref_key(reference));
        if removed.is_some() {
            self.save_refs(refs)?;
        }
        Ok(removed)
    }

    /// What `reference` points at, if it is stored as such.
    pub fn target(&self, reference: &Reference) -> Result<Option<RefTarget>> {
        Ok(self.load_refs()?.remove(&ref_key(reference)))
    }

    /// The image `reference` names. A digest reference not stored as such
    /// also matches, in its repository, a reference whose manifest or index
    /// has that digest, and a stored platform of such an index.
    pub fn resolve(&self, reference: &Reference) -> Result<Option<ResolvedImage>> {
        let refs = self.load_refs()?;
        if let Some(target) = refs.get(&ref_key(reference)) {
            return self.resolve_target(target);
        }
        let Some(digest) = reference.digest() else {
            return Ok(None);
        };
        let same_repository = |key: &String| {
            Reference::parse_raw(key).is_ok_and(|other| other.name() == reference.name())
        };
        let targets: Vec<&RefTarget> = refs
            .iter()
            .filter(|(key, _)| same_repository(key))
            .map(|(_, target)| target)
            .collect();
        for target in &targets {
            if &target.manifest == digest {
                return self.resolve_target(&RefTarget::manifest(digest.clone()));
            }
            if target.index.as_ref() == Some(digest) {
                return self.resolve_target(target);
            }
        }
        for target in &targets {
            let Some(index) = &target.index else { continue };
            if self
                .index_children(index)?
                .unwrap_or_default()
                .contains(digest)
            {
                return self.resolve_target(&RefTarget::manifest(digest.clone()));
            }
        }
        Ok(None)
    }

    fn resolve_target(&self, target: &RefTarget) -> Result<Option<ResolvedImage>> {
        Ok(self
            .get_image(&target.manifest)?
            .map(|image| ResolvedImage {
                image,
                index: target.index.clone(),
            }))
    }

    /// The references whose target manifest is an image with ID
    /// `image_id`, sorted.
    pub fn references_of(&self, image_id: &Digest) -> Result<Vec<Reference>> {
        let manifests: HashSet<Digest> = self
            .list_image_records()?
            .into_iter()
            .filter(|image| &image.id == image_id)
            .map(|image| image.manifest_digest)
            .collect();
        Ok(self
            .load_refs()?
            .into_iter()
            .filter(|(_, target)| manifests.contains(&target.manifest))
            .filter_map(|(key, _)| Reference::parse_raw(&key).ok())
            .collect())
    }

    /// The references pointing at the image manifest `manifest`, sorted.
    pub fn references_to(&self, manifest: &Digest) -> Result<Vec<Reference>> {
        Ok(self
            .load_refs()?
            .into_iter()
            .filter(|(_, target)| &target.manifest == manifest)
            .filter_map(|(key, _)| Reference::parse_raw(&key).ok())
            .collect())
    }

    /// Every stored image (one per manifest) with its references (sorted;
    /// empty for an image no reference targets directly), images sorted by
    /// their first reference, unreferenced ones last.
    pub fn list_images(&self) -> Result<Vec<(Vec<Reference>, ImageRecord)>> {
        let refs = self.load_refs()?;
        let mut by_manifest: BTreeMap<Digest, Vec<Reference>> = BTreeMap::new();
        for (key, target) in refs {
            if let Ok(r) = Reference::parse_raw(&key) {
                by_manifest.entry(target.manifest).or_default().push(r);
            }
        }
        let mut out: Vec<(Vec<Reference>, ImageRecord)> = self
            .list_image_records()?
            .into_iter()
            .map(|image| {
                (
                    by_manifest
                        .remove(&image.manifest_digest)
                        .unwrap_or_default(),
                    image,
                )
            })
            .collect();
        out.sort_by(|a, b| match (a.0.first(), b.0.first()) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.1.manifest_digest.cmp(&b.1.manifest_digest),
        });
        Ok(out)
    }

    /// The stored images no reference targets directly but a referenced
    /// index holds: the other platforms of an index pulled with
    /// `--all-platforms`, alive while a reference to the index is.
    pub fn platform_siblings(&self) -> Result<HashSet<Digest>> {
        let refs = self.load_refs()?;
        let mut live = self.live_manifests(&refs)?;
        for target in refs.values() {
            live.remove(&target.manifest);
        }
        Ok(live)
    }

    /// `rmi`: removes `reference`, and the image record too when no other
    /// reference keeps it (blobs and layers are freed by the next gc).
    /// Removing an image's last tag in a repository also removes the digest
    /// references of that repository to the image: otherwise a hidden
    /// `REPO@sha256:…` would keep it alive.
    pub fn remove_image(&self, reference: &Reference) -> Result<RemovedImage> {
        let _lock = self.lock_metadata()?;
        let mut refs = self.load_refs()?;
        let key = ref_key(reference);
        let removed = refs.remove(&key).ok_or_else(|| Error::ReferenceNotFound {
            reference: key.clone(),
        })?;
        let mut untagged = vec![reference.clone()];
        if reference.digest().is_none() {
            let same_repository = |key: &str| {
                Reference::parse_raw(key)
                    .ok()
                    .filter(|other| other.name() == reference.name())
            };
            // The same image is the same image ID, as in Docker: another
            // manifest of that config (a pushed, recompressed one) too.
            let id_of = |manifest: &Digest| {
                self.get_image(manifest)
                    .ok()
                    .flatten()
                    .map(|image| image.id)
            };
            let removed_id = id_of(&removed.manifest);
            let same_image = |other: &RefTarget| {
                other.manifest == removed.manifest
                    || (removed_id.is_some() && id_of(&other.manifest) == removed_id)
            };
            let tag_left = refs.iter().any(|(key, other)| {
                same_image(other) && same_repository(key).is_some_and(|r| r.digest().is_none())
            });
            if !tag_left {
                refs.retain(|key, other| {
                    let digest_ref = same_repository(key).filter(|r| r.digest().is_some());
                    match digest_ref {
                        Some(r) if same_image(other) => {
                            untagged.push(r);
                            false
                        }
                        _ => true,
                    }
                });
            }
        }
        let live = self.live_manifests(&refs)?;
        let image = self.get_image(&removed.manifest)?;
        let mut orphans = vec![removed.manifest.clone()];
        if let Some(index) = &removed.index {
            orphans.extend(self.index_children(index)?.unwrap_or_default());
        }
        self.save_refs(refs)?;
        for orphan in orphans.iter().filter(|m| !live.contains(*m)) {
            self.delete_image_record(orphan)?;
        }
        // "Deleted" names an image ID no stored image has any more.
        let deleted = match image.filter(|_| !live.contains(&removed.manifest)) {
            Some(image)
                if !self
                    .list_image_records()?
                    .iter()
                    .any(|other| other.id == image.id) =>
            {
                Some(image.id)
            }
            _ => None,
        };
        Ok(RemovedImage { untagged, deleted })
    }

    /// The image whose ID is `id` (`sha256:HEX` or bare `HEX`), or whose ID
    /// starts with it when it is a prefix of at least 12 hex digits, as
    /// Docker's short image IDs are.
    pub fn find_image_by_id(&self, id: &str) -> Result<IdMatch> {
        let hex = id.strip_prefix("sha256:").unwrap_or(id);
        let is_hex = hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_hex || hex.len() < 12 || hex.len() > 64 {
            return Ok(IdMatch::None);
        }
        let mut found: Vec<ImageRecord> = self
            .list_image_records()?
            .into_iter()
            .filter(|image| image.id.hex().starts_with(hex))
            .collect();
        let mut ids: Vec<Digest> = found.iter().map(|image| image.id.clone()).collect();
        ids.sort();
        ids.dedup();
        Ok(match ids.len() {
            0 => IdMatch::None,
            1 => {
                found.sort_by_key(|image| image.added);
                IdMatch::One(Box::new(found.pop().expect("one ID, so one image")))
            }
            _ => IdMatch::Ambiguous(ids),
        })
    }

    /// Removes an image by ID (every manifest of that config) with every
    /// reference to it; returns the references removed.
    pub fn delete_image(&self, image_id: &Digest) -> Result<Vec<Reference>> {
        let _lock = self.lock_metadata()?;
        let manifests: HashSet<Digest> = self
            .list_image_records()?
            .into_iter()
            .filter(|image| &image.id == image_id)
            .map(|image| image.manifest_digest)
            .collect();
        if manifests.is_empty() {
            return Err(Error::ImageNotFound {
                id: image_id.clone(),
            });
        }
        let mut refs = self.load_refs()?;
        let mut removed = Vec::new();
        refs.retain(|key, target| {
            if manifests.contains(&target.manifest) {
                removed.extend(Reference::parse_raw(key).ok());
                false
            } else {
                true
            }
        });
        let live = self.live_manifests(&refs)?;
        self.save_refs(refs)?;
        for manifest in manifests.iter().filter(|m| !live.contains(*m)) {
            self.delete_image_record(manifest)?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_keys_are_full_and_digest_wins() {
        let r = |s: &str| Reference::parse_raw(s).unwrap();
        assert_eq!(ref_key(&r("alpine")), "docker.io/library/alpine:latest");
        assert_eq!(
            ref_key(&r("localhost:5000/app:1.0")),
            "localhost:5000/app:1.0"
        );
        let d = Digest::sha256_of(b"m");
        assert_eq!(
            ref_key(&r(&format!("alpine:3@{d}"))),
            format!("docker.io/library/alpine@{d}")
        );
    }

    #[test]
    fn a_target_serialises_without_an_absent_index() {
        let m = Digest::sha256_of(b"m");
        let json = serde_json::to_value(RefTarget::manifest(m.clone())).unwrap();
        assert_eq!(json, serde_json::json!({ "manifest": m.to_string() }));
    }
}
