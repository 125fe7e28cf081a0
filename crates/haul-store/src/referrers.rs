//! Referrers: manifests (signatures, SBOMs, attestations) whose `subject`
//! is a stored manifest, kept beside the images they describe but never
//! as images of their own.
//!
//! `ROOT/referrers/ALG/HEX.json` holds, for the subject `ALG:HEX`, one
//! [`StoredReferrer`] per referrer: its descriptor as a registry's
//! referrers API lists it, and every other blob it needs (config, layers;
//! for an index, its manifests and their blobs). The referrer manifest and
//! those blobs live in `content/blobs` like any blob, but no reference
//! names them, so `images` never shows them and `content/index.json` does
//! not list them.
//!
//! A record is written last, once every blob it names is present, so a
//! pull killed (or failing) midway leaves only complete blobs that no
//! record names: garbage. gc keeps the referrers of every live manifest
//! (and of every live index), their referrers in turn, and removes the
//! records whose subject went.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use haul_oci::Digest;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::{read_json, remove_file_if_exists, write_json};
use crate::Store;

/// One referrer of a stored subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredReferrer {
    /// The referrer manifest's digest (its blob is in `content/`).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its artifact type, as the referrers API lists it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Its annotations, as the referrers API lists them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Every other blob it needs: its config and layers (for an index,
    /// those of its manifests).
    #[serde(default)]
    pub blobs: Vec<Digest>,
    /// For an index: the manifests it lists (blobs in `content/` too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<Digest>,
    /// For one of cosign's digest tags (`sha256-HEX.sig`, `.att`,
    /// `.sbom`), which name their subject by tag, not by `subject`: the
    /// tag. `None` for a referrer proper.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ReferrersFile {
    subject: Option<Digest>,
    referrers: Vec<StoredReferrer>,
}

impl Store {
    pub(crate) fn referrers_dir(&self) -> PathBuf {
        self.root.join("referrers")
    }

    fn referrers_path(&self, subject: &Digest) -> PathBuf {
        self.referrers_dir()
            .join(subject.algorithm().as_str())
            .join(format!("{}.json", subject.hex()))
    }

    /// The stored referrers of `subject`, in the order they were added.
    pub fn referrers(&self, subject: &Digest) -> Result<Vec<StoredReferrer>> {
        Ok(read_json::<ReferrersFile>(&self.referrers_path(subject))?
            .unwrap_or_default()
            .referrers)
    }

    /// Records `referrer` as a referrer of `subject` (replacing a record
    /// of the same digest). Its manifest and every blob it names must be
    /// present: the record is the last thing written.
    pub fn add_referrer(&self, subject: &Digest, referrer: &StoredReferrer) -> Result<()> {
        for digest in std::iter::once(&referrer.digest)
            .chain(&referrer.blobs)
            .chain(&referrer.manifests)
        {
            if !self.has_blob(digest) {
                return Err(Error::BlobNotFound {
                    digest: digest.clone(),
                });
            }
        }
        let _lock = self.lock_metadata()?;
        let path = self.referrers_path(subject);
        let mut file = read_json::<ReferrersFile>(&path)?.unwrap_or_default();
        if file.referrers.iter().any(|r| r == referrer) {
            return Ok(());
        }
        file.subject = Some(subject.clone());
        file.referrers.retain(|r| r.digest != referrer.digest);
        file.referrers.push(referrer.clone());
        crate::fsutil::create_dirs(path.parent().expect("a record path has a parent"))?;
        write_json(&self.tmp_dir(), &path, &file)
    }

    /// Every subject that has a referrers record.
    fn referrer_subjects(&self) -> Result<Vec<Digest>> {
        let mut subjects = Vec::new();
        for algorithm in [haul_oci::Algorithm::Sha256, haul_oci::Algorithm::Sha512] {
            let dir = self.referrers_dir().join(algorithm.as_str());
            if !dir.is_dir() {
                continue;
            }
            for name in crate::sorted_names(&dir)? {
                let digest = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .and_then(|hex| Digest::new(algorithm, hex).ok());
                if let Some(digest) = digest {
                    subjects.push(digest);
                }
            }
        }
        Ok(subjects)
    }

    /// The stored referrers of `subjects` and theirs (every level), each
    /// once with its subject, a referrer before its own referrers.
    pub fn referrer_tree(&self, subjects: &[Digest]) -> Result<Vec<(Digest, StoredReferrer)>> {
        let mut seen: HashSet<Digest> = subjects.iter().cloned().collect();
        let mut tree = Vec::new();
        let mut stack: Vec<Digest> = subjects.iter().rev().cloned().collect();
        while let Some(subject) = stack.pop() {
            let referrers = self.referrers(&subject)?;
            for referrer in referrers.iter().rev() {
                if seen.insert(referrer.digest.clone()) {
                    stack.push(referrer.digest.clone());
                }
            }
            for referrer in referrers {
                if !tree
                    .iter()
                    .any(|(_, r): &(Digest, StoredReferrer)| r.digest == referrer.digest)
                {
                    tree.push((subject.clone(), referrer));
                }
            }
        }
        Ok(tree)
    }

    /// For gc (under its locks): the blobs the referrers of `subjects`
    /// (and theirs, every level) need, after removing the records of
    /// every other subject. Returns (blobs kept, records removed).
    pub(crate) fn gc_referrers(&self, subjects: HashSet<Digest>) -> Result<(HashSet<Digest>, u64)> {
        let subjects: Vec<Digest> = subjects.into_iter().collect();
        let mut reached: HashSet<Digest> = subjects.iter().cloned().collect();
        let mut blobs = HashSet::new();
        for (_, referrer) in self.referrer_tree(&subjects)? {
            blobs.insert(referrer.digest.clone());
            blobs.extend(referrer.blobs.iter().cloned());
            blobs.extend(referrer.manifests.iter().cloned());
            reached.insert(referrer.digest);
        }
        let mut removed = 0;
        for subject in self.referrer_subjects()? {
            if !reached.contains(&subject) {
                remove_file_if_exists(&self.referrers_path(&subject))?;
                removed += 1;
            }
        }
        Ok((blobs, removed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn referrer(store: &Store, payload: &[u8], layer: &[u8]) -> StoredReferrer {
        let layer_digest = Digest::sha256_of(layer);
        store.put_blob_bytes(layer, &layer_digest).unwrap();
        let digest = Digest::sha256_of(payload);
        store.put_blob_bytes(payload, &digest).unwrap();
        StoredReferrer {
            digest,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: payload.len() as u64,
            artifact_type: Some("application/example".into()),
            annotations: BTreeMap::new(),
            blobs: vec![layer_digest],
            manifests: Vec::new(),
            tag: None,
        }
    }

    #[test]
    fn a_record_naming_a_missing_blob_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut r = referrer(&store, b"{\"a\":1}", b"layer");
        r.blobs.push(Digest::sha256_of(b"absent"));
        let subject = Digest::sha256_of(b"subject");
        assert!(matches!(
            store.add_referrer(&subject, &r),
            Err(Error::BlobNotFound { .. })
        ));
        assert!(store.referrers(&subject).unwrap().is_empty());
    }

    #[test]
    fn the_tree_lists_referrers_of_referrers_and_gc_drops_the_unreached() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let subject = Digest::sha256_of(b"subject");
        let first = referrer(&store, b"{\"a\":1}", b"one");
        let second = referrer(&store, b"{\"a\":2}", b"two");
        store.add_referrer(&subject, &first).unwrap();
        store.add_referrer(&first.digest, &second).unwrap();
        // Adding it again changes nothing.
        store.add_referrer(&subject, &first).unwrap();
        let tree = store.referrer_tree(std::slice::from_ref(&subject)).unwrap();
        let digests: Vec<&Digest> = tree.iter().map(|(_, r)| &r.digest).collect();
        assert_eq!(digests, vec![&first.digest, &second.digest]);
        assert_eq!(tree[1].0, first.digest, "the second refers to the first");

        let (kept, removed) = store
            .gc_referrers([subject.clone()].into_iter().collect())
            .unwrap();
        assert_eq!(removed, 0);
        assert_eq!(kept.len(), 4, "two manifests and their layers");
        let (kept, removed) = store.gc_referrers(HashSet::new()).unwrap();
        assert!(kept.is_empty());
        assert_eq!(removed, 2);
        assert!(store.referrers(&subject).unwrap().is_empty());
    }
}
