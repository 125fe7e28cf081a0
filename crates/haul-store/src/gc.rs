//! Garbage collection.
//!
//! Roots are the references in `refs.json`: each keeps the image record of
//! its manifest, its index blob, and the record of every platform of that
//! index that is stored (the other platforms of `pull --all-platforms`).
//! The referrers of every manifest and index kept stay (see the
//! `referrers` module), and so do theirs.
//! Every other image record goes, then every blob, layer and distribution
//! record that no remaining image needs. gc holds the gc lock exclusively (it waits for
//! every [`Lease`](crate::Lease) to end, and new leases wait for it) and the
//! store lock, so nothing half-written or not yet tagged is taken for
//! garbage: what a running pull adds is under its lease.
//!
//! Partial downloads: gc removes every partial in `ingest/` that no process
//! is writing (its lock is free), unless
//! [`GcOptions::keep_partials_younger_than`] spares recent ones. Running gc
//! is asking for space back; a later pull of that blob starts from zero.
//! Leftovers of killed processes (`layers/tmp-*`, `tmp/*`) go too.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use haul_oci::Digest;

use crate::error::{IoContext, Result};
use crate::fsutil::{remove_file_if_exists, remove_tree, tree_size};
use crate::lock::{FileLock, LockKind};
use crate::Store;

/// How gc behaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcOptions {
    /// How long to wait for running pulls (leases) to finish; the store's
    /// lock timeout when `None`.
    pub lock_timeout: Option<Duration>,
    /// Keep partial downloads modified more recently than this; `None`
    /// removes every partial no process is writing.
    pub keep_partials_younger_than: Option<Duration>,
}

/// What gc removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Image records no reference named.
    pub images_removed: u64,
    /// Content blobs no image needed.
    pub blobs_removed: u64,
    /// Unpacked layers no image needed (and stale registrations).
    pub layers_removed: u64,
    /// Partial downloads.
    pub partials_removed: u64,
    /// Referrer records whose subject was no longer stored.
    pub referrers_removed: u64,
    /// Bytes of files removed.
    pub bytes_freed: u64,
}

impl Store {
    /// Collects garbage with default [`GcOptions`].
    pub fn gc(&self) -> Result<GcReport> {
        self.gc_with(&GcOptions::default())
    }

    /// Collects garbage; see the module docs.
    pub fn gc_with(&self, options: &GcOptions) -> Result<GcReport> {
        let _gc = FileLock::acquire(
            &self.gc_lock_path(),
            LockKind::Exclusive,
            options.lock_timeout.or(self.lock_timeout),
        )?;
        let _lock = self.lock_metadata()?;
        let mut report = GcReport::default();

        let refs = self.load_refs()?;
        report.images_removed += self.remove_unreadable_records()?;
        let records = self.list_image_records()?;
        let live = self.live_manifests(&refs)?;
        let mut blobs: HashSet<Digest> = refs
            .values()
            .filter_map(|target| target.index.clone())
            .collect();
        let mut chains: HashSet<Digest> = HashSet::new();
        let mut diff_ids: HashSet<Digest> = HashSet::new();
        for image in records {
            if !live.contains(&image.manifest_digest) {
                self.delete_image_record(&image.manifest_digest)?;
                report.images_removed += 1;
                continue;
            }
            blobs.extend(image.blobs());
            for layer in &image.layers {
                chains.insert(layer.chain_id.clone());
                diff_ids.insert(layer.diff_id.clone());
            }
        }

        // Referrers of what stays stay too (and theirs); the records of
        // subjects that went are removed.
        let mut subjects = live.clone();
        subjects.extend(refs.values().filter_map(|target| target.index.clone()));
        let (referrer_blobs, records) = self.gc_referrers(subjects)?;
        blobs.extend(referrer_blobs);
        report.referrers_removed += records;

        for digest in self.list_blobs()? {
            if !blobs.contains(&digest) {
                let path = self.blob_path(&digest);
                report.bytes_freed += tree_size(&path);
                remove_file_if_exists(&path)?;
                report.blobs_removed += 1;
            }
        }

        let layers = self.layers_dir();
        for name in crate::sorted_names(&layers)? {
            if name.to_str().is_some_and(|n| n.starts_with("tmp-")) {
                // A registration a killed process left half-unpacked.
                report.bytes_freed += self.remove_layer_dir(&layers.join(&name))?;
                report.layers_removed += 1;
            }
        }
        for algorithm in [haul_oci::Algorithm::Sha256, haul_oci::Algorithm::Sha512] {
            let dir = layers.join(algorithm.as_str());
            if !dir.is_dir() {
                continue;
            }
            for name in crate::sorted_names(&dir)? {
                let live = name
                    .to_str()
                    .and_then(|hex| Digest::new(algorithm, hex).ok())
                    .is_some_and(|chain_id| chains.contains(&chain_id));
                if !live {
                    report.bytes_freed += self.remove_layer_dir(&dir.join(&name))?;
                    report.layers_removed += 1;
                }
            }
        }

        self.gc_ingest(options, &mut report)?;

        let tmp = self.tmp_dir();
        for name in crate::sorted_names(&tmp)? {
            report.bytes_freed += tree_size(&tmp.join(&name));
            remove_tree(&tmp.join(name))?;
        }

        for diff_id in self.distribution_diff_ids()? {
            if !diff_ids.contains(&diff_id) {
                self.forget_diff_id(&diff_id)?;
            }
        }

        self.write_index_json(&refs)?;
        Ok(report)
    }

    fn gc_ingest(&self, options: &GcOptions, report: &mut GcReport) -> Result<()> {
        let dir = self.ingest_dir();
        let now = SystemTime::now();
        for name in crate::sorted_names(&dir)? {
            let path = dir.join(&name);
            let Some(stem) = Path::new(&name)
                .extension()
                .filter(|e| *e == OsStr::new("partial"))
                .and_then(|_| Path::new(&name).file_stem())
            else {
                continue;
            };
            let meta = std::fs::symlink_metadata(&path).at(&path)?;
            if let Some(keep) = options.keep_partials_younger_than {
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or_default();
                if age < keep {
                    continue;
                }
            }
            let mut lock_name = stem.to_os_string();
            lock_name.push(".lock");
            let lock_path = dir.join(lock_name);
            let Some(lock) = FileLock::try_acquire(&lock_path, LockKind::Exclusive)? else {
                continue; // someone is writing it
            };
            report.bytes_freed += meta.len();
            remove_file_if_exists(&path)?;
            lock.remove_file()?;
            report.partials_removed += 1;
        }
        // Lock files left without a partial (a waiter that found the blob
        // present, a process killed between steps).
        for name in crate::sorted_names(&dir)? {
            let path = dir.join(&name);
            if Path::new(&name).extension() != Some(OsStr::new("lock")) {
                continue;
            }
            let mut partial = Path::new(&name)
                .file_stem()
                .unwrap_or_default()
                .to_os_string();
            partial.push(".partial");
            if dir.join(partial).exists() {
                continue;
            }
            if let Some(lock) = FileLock::try_acquire(&path, LockKind::Exclusive)? {
                lock.remove_file()?;
            }
        }
        Ok(())
    }
}
