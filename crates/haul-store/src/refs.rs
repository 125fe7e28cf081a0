//! References: `ROOT/refs.json` maps full normalised references (tags and
//! digests, e.g. `docker.io/library/alpine:latest`,
//! `docker.io/library/alpine@sha256:…`) to image IDs. Updated atomically
//! under the store lock, together with `content/index.json`.
//!
//! A reference with both a tag and a digest is stored as the digest form
//! (as Docker does, the digest wins); a reference with neither means
//! `:latest`.

use std::collections::BTreeMap;

use haul_oci::{Digest, Reference};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::{read_json, write_json};
use crate::images::ImageRecord;
use crate::Store;

#[derive(Debug, Default, Serialize, Deserialize)]
struct RefsFile {
    references: BTreeMap<String, Digest>,
}

/// What [`Store::remove_image`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedImage {
    /// The references removed: the one asked for first, then, when it was
    /// the image's last tag in its repository, that repository's digest
    /// references to the image (as `docker rmi` does).
    pub untagged: Vec<Reference>,
    /// The image ID whose record was deleted because no reference was left.
    pub deleted: Option<Digest>,
}

/// How many images an ID prefix matched in [`Store::find_image_by_id`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdMatch {
    /// No image has that ID or ID prefix.
    None,
    /// Exactly one image.
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
    pub(crate) fn load_refs(&self) -> Result<BTreeMap<String, Digest>> {
        Ok(read_json::<RefsFile>(&self.refs_path())?
            .unwrap_or_default()
            .references)
    }

    fn save_refs(&self, refs: BTreeMap<String, Digest>) -> Result<()> {
        let file = RefsFile { references: refs };
        write_json(&self.tmp_dir(), &self.refs_path(), &file)?;
        self.write_index_json(&file.references)
    }

    /// Points `reference` at the stored image `image_id`; returns the image
    /// it pointed at before, if any.
    pub fn tag(&self, reference: &Reference, image_id: &Digest) -> Result<Option<Digest>> {
        let _lock = self.lock_metadata()?;
        if self.get_image(image_id)?.is_none() {
            return Err(Error::ImageNotFound {
                id: image_id.clone(),
            });
        }
        let mut refs = self.load_refs()?;
        let previous = refs.insert(ref_key(reference), image_id.clone());
        if previous.as_ref() != Some(image_id) {
            self.save_refs(refs)?;
        }
        Ok(previous)
    }

    /// Removes `reference`; returns the image it pointed at, if it existed.
    /// The image record stays (see [`Store::remove_image`]).
    pub fn untag(&self, reference: &Reference) -> Result<Option<Digest>> {
        let _lock = self.lock_metadata()?;
        let mut refs = self.load_refs()?;
        let removed = refs.remove(&ref_key(reference));
        if removed.is_some() {
            self.save_refs(refs)?;
        }
        Ok(removed)
    }

    /// The image `reference` names. A digest reference not tagged as such
    /// also matches an image of the same repository whose manifest (or
    /// index) has that digest.
    pub fn resolve(&self, reference: &Reference) -> Result<Option<ImageRecord>> {
        let refs = self.load_refs()?;
        if let Some(id) = refs.get(&ref_key(reference)) {
            return self.get_image(id);
        }
        let Some(digest) = reference.digest() else {
            return Ok(None);
        };
        for (key, id) in &refs {
            let Ok(other) = Reference::parse_raw(key) else {
                continue;
            };
            if other.name() != reference.name() {
                continue;
            }
            if let Some(image) = self.get_image(id)? {
                if &image.manifest_digest == digest || image.index_digest.as_ref() == Some(digest) {
                    return Ok(Some(image));
                }
            }
        }
        Ok(None)
    }

    /// The references pointing at `image_id`, sorted.
    pub fn references_of(&self, image_id: &Digest) -> Result<Vec<Reference>> {
        Ok(self
            .load_refs()?
            .into_iter()
            .filter(|(_, id)| id == image_id)
            .filter_map(|(key, _)| Reference::parse_raw(&key).ok())
            .collect())
    }

    /// Every stored image with its references (sorted; empty for an
    /// untagged image that gc has not collected yet), images sorted by
    /// their first reference, untagged ones last.
    pub fn list_images(&self) -> Result<Vec<(Vec<Reference>, ImageRecord)>> {
        let refs = self.load_refs()?;
        let mut by_id: BTreeMap<Digest, Vec<Reference>> = BTreeMap::new();
        for (key, id) in refs {
            if let Ok(r) = Reference::parse_raw(&key) {
                by_id.entry(id).or_default().push(r);
            }
        }
        let mut out: Vec<(Vec<Reference>, ImageRecord)> = self
            .list_image_records()?
            .into_iter()
            .map(|image| (by_id.remove(&image.id).unwrap_or_default(), image))
            .collect();
        out.sort_by(|a, b| match (a.0.first(), b.0.first()) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.1.id.cmp(&b.1.id),
        });
        Ok(out)
    }

    /// `rmi`: removes `reference`, and the image record too when no other
    /// reference points at it (blobs and layers are freed by the next gc).
    /// Removing an image's last tag in a repository also removes the digest
    /// references of that repository to the image: otherwise a hidden
    /// `REPO@sha256:…` would keep it alive.
    pub fn remove_image(&self, reference: &Reference) -> Result<RemovedImage> {
        let _lock = self.lock_metadata()?;
        let mut refs = self.load_refs()?;
        let key = ref_key(reference);
        let id = refs.remove(&key).ok_or_else(|| Error::ReferenceNotFound {
            reference: key.clone(),
        })?;
        let mut untagged = vec![reference.clone()];
        if reference.digest().is_none() {
            let same_repository = |key: &str| {
                Reference::parse_raw(key)
                    .ok()
                    .filter(|other| other.name() == reference.name())
            };
            let tag_left = refs.iter().any(|(key, other)| {
                other == &id && same_repository(key).is_some_and(|r| r.digest().is_none())
            });
            if !tag_left {
                refs.retain(|key, other| {
                    let digest_ref = same_repository(key).filter(|r| r.digest().is_some());
                    match digest_ref {
                        Some(r) if other == &id => {
                            untagged.push(r);
                            false
                        }
                        _ => true,
                    }
                });
            }
        }
        let orphan = !refs.values().any(|other| other == &id);
        self.save_refs(refs)?;
        let deleted = if orphan {
            self.delete_image_record(&id)?;
            Some(id)
        } else {
            None
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
        Ok(match found.len() {
            0 => IdMatch::None,
            1 => IdMatch::One(Box::new(found.remove(0))),
            _ => IdMatch::Ambiguous(found.into_iter().map(|image| image.id).collect()),
        })
    }

    /// Removes an image by ID with every reference to it; returns the
    /// references removed.
    pub fn delete_image(&self, image_id: &Digest) -> Result<Vec<Reference>> {
        let _lock = self.lock_metadata()?;
        if self.get_image(image_id)?.is_none() {
            return Err(Error::ImageNotFound {
                id: image_id.clone(),
            });
        }
        let mut refs = self.load_refs()?;
        let mut removed = Vec::new();
        refs.retain(|key, id| {
            if id == image_id {
                removed.extend(Reference::parse_raw(key).ok());
                false
            } else {
                true
            }
        });
        self.save_refs(refs)?;
        self.delete_image_record(image_id)?;
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
}
