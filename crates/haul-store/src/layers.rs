//! Unpacked layers: `ROOT/layers/sha256/CHAINHEX/{diff/, layer.json}`.
//!
//! Each layer's diff is unpacked on its own (see [`crate::unpack`]), keyed
//! by its chain ID, so layers of different chains can be registered in
//! parallel from several threads or processes. A registration unpacks into
//! `layers/tmp-*`, syncs it, writes `layer.json`, then renames the whole
//! directory into place: a directory under `layers/sha256/` is always
//! complete. When two registrations of one chain ID race, the first rename
//! wins and the other is discarded.
//!
//! `layer.json` is the layer's completion record: written last, and checked
//! on every read ([`Store::get_layer`]) against the diff it describes (its
//! entry count; cheaply, through the diff's seal, see [`crate::seal`],
//! which tells in one `lstat` per directory that no entry came or went
//! since the layer was staged). A layer is removed by one rename into `ROOT/trash/` before
//! anything of it is deleted, so a removal killed midway never leaves a
//! half-deleted layer where readers look; one damaged otherwise is taken
//! for absent and replaced by the next registration.
//!
//! File contents are not fsynced one by one (neither Docker nor containerd
//! do): a killed process never leaves a partial layer, but a power loss
//! right after a registration may.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use haul_oci::{Digest, Digester};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{
    count_entries, crash_point, now_unix, read_json, remove_tree, remove_via_trash,
};
use crate::group_sync::{GroupSync, SyncTicket};
use crate::seal::{seal_holds, seal_tree, DiffSeal, Sealed, SEAL_FILE};
use crate::unpack::{unpack, UnpackOptions};
use crate::Store;

/// What the store knows of a registered layer (its `layer.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// The layer with everything beneath it: `diff_id` for a base layer,
    /// else `sha256(parent + " " + diff_id)`.
    pub chain_id: Digest,
    /// SHA-256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Chain ID of the layer beneath, if any.
    pub parent: Option<Digest>,
    /// Size of the uncompressed tar in bytes.
    pub size: u64,
    /// When the layer was registered, in seconds since the Unix epoch.
    pub created: u64,
    /// Entries not unpacked (devices when not root); non-zero means this
    /// diff is not a faithful copy of the tar.
    #[serde(default)]
    pub skipped_entries: u64,
    /// Entries under `diff/` when the layer was registered: checked on
    /// every read of the layer (a directory walk, no hashing), so a diff
    /// damaged after its registration is taken for absent, not for whole.
    /// Absent in records written before haul counted them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// The seal of `diff/` taken when the layer was staged: when it still
    /// holds, the entry count is known to be unchanged without counting.
    /// Absent in records written before haul sealed diffs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<DiffSeal>,
}

/// A layer unpacked into a staging directory, waiting for its parent
/// (see [`Store::stage_layer`]). Removed on drop unless committed.
#[derive(Debug)]
pub struct StagedLayer {
    dir: Option<PathBuf>,
    diff_id: Digest,
    size: u64,
    skipped_entries: u64,
    /// Its entry count and seal, taken once unpacked.
    sealed: Option<Sealed>,
    /// Until its files are known to be on disk: the sync they wait for.
    pending_sync: Option<SyncTicket>,
    group_sync: Arc<GroupSync>,
    _lease: crate::Lease,
}

impl StagedLayer {
    /// SHA-256 of the uncompressed tar.
    pub fn diff_id(&self) -> &Digest {
        &self.diff_id
    }

    /// Size of the uncompressed tar in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Entries not unpacked (devices when not root).
    pub fn skipped_entries(&self) -> u64 {
        self.skipped_entries
    }

    /// Waits until the layer's files are on disk: one syncfs, shared with
    /// every other layer of the store asking at the same time, and none
    /// if a sync that started after the unpack has ended already.
    /// [`Store::commit_staged`] calls it if the caller has not; calling it
    /// first, outside any limit on concurrent unpacks, lets the next
    /// unpack start while the disk catches up.
    pub fn make_durable(&mut self) -> Result<()> {
        if let (Some(ticket), Some(dir)) = (self.pending_sync, &self.dir) {
            self.group_sync.sync_for(ticket, dir)?;
        }
        self.pending_sync = None;
        Ok(())
    }
}

impl Drop for StagedLayer {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = remove_tree(&dir);
        }
    }
}

/// The chain ID of a layer with diff ID `diff_id` on top of `parent`.
pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => diff_id.clone(),
        Some(parent) => Digest::sha256_of(format!("{parent} {diff_id}").as_bytes()),
    }
}

impl Store {
    /// The layer registered under `chain_id`, if any: its `layer.json`,
    /// provided its diff is there with the entry count recorded. The count
    /// is taken on trust while the diff's seal holds (no directory of the
    /// tree changed since it was staged: one `lstat` per directory), and
    /// counted again otherwise (a walk of every entry), so a layer is
    /// taken for whole exactly when its entry count is the recorded one.
    pub fn get_layer(&self, chain_id: &Digest) -> Result<Option<LayerInfo>> {
        self.read_layer(chain_id, true)
    }

    /// [`Store::get_layer`] without the shortcut of the seal: the layer's
    /// entries are counted whatever its seal says. For a check of the
    /// whole store; a pull uses [`Store::get_layer`].
    pub fn verify_layer(&self, chain_id: &Digest) -> Result<Option<LayerInfo>> {
        self.read_layer(chain_id, false)
    }

    fn read_layer(&self, chain_id: &Digest, trust_seal: bool) -> Result<Option<LayerInfo>> {
        let dir = self.layer_dir(chain_id);
        // A layer.json that does not parse is a damaged layer (registered
        // without a sync, then a crash): absent, and replaced on the next
        // registration of its chain ID.
        let info = match read_json::<LayerInfo>(&dir.join("layer.json")) {
            Ok(Some(info)) => info,
            Ok(None) | Err(Error::Metadata { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let diff = dir.join("diff");
        let sealed = trust_seal
            && info
                .seal
                .as_ref()
                .is_some_and(|seal| seal_holds(&diff, &dir.join(SEAL_FILE), seal));
        let whole = match info.entries {
            Some(_) if sealed => true,
            Some(expected) => count_entries(&diff) == Some(expected),
            None => diff.is_dir(),
        };
        Ok(whole.then_some(info))
    }

    /// The directory holding the layer's unpacked diff (whiteout markers
    /// included). Exists only if the layer is registered.
    pub fn layer_diff_dir(&self, chain_id: &Digest) -> PathBuf {
        self.layer_dir(chain_id).join("diff")
    }

    /// The layer `top` and all beneath it, base first.
    pub fn layer_chain(&self, top: &Digest) -> Result<Vec<LayerInfo>> {
        let mut out = Vec::new();
        let mut next = Some(top.clone());
        while let Some(chain_id) = next {
            let info = self
                .get_layer(&chain_id)?
                .ok_or(Error::LayerNotFound { chain_id })?;
            next = info.parent.clone();
            out.push(info);
        }
        out.reverse();
        Ok(out)
    }

    /// Every registered layer (any order).
    pub fn list_layers(&self) -> Result<Vec<LayerInfo>> {
        let dir = self.layers_dir().join("sha256");
        let mut out = Vec::new();
        for name in crate::sorted_names(&dir)? {
            let Some(hex) = name.to_str() else { continue };
            let Ok(chain_id) = Digest::new(haul_oci::Algorithm::Sha256, hex) else {
                continue;
            };
            if let Some(info) = self.get_layer(&chain_id)? {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Unpacks the uncompressed layer tar `reader` on top of `parent` (a
    /// chain ID, which must be registered) with default [`UnpackOptions`].
    /// See [`Store::register_layer_with`].
    pub fn register_layer<R: Read>(
        &self,
        reader: R,
        parent: Option<&Digest>,
        expected_diff_id: Option<&Digest>,
    ) -> Result<LayerInfo> {
        self.register_layer_with(reader, parent, expected_diff_id, &UnpackOptions::default())
    }

    /// Unpacks the uncompressed layer tar `reader` on top of `parent`,
    /// hashing it in the same pass; checks the diff ID against
    /// `expected_diff_id` if given (nothing is kept on a mismatch). The
    /// reader is always read to its end, so a caller teeing a download into
    /// it sees the whole stream pass. If the chain ID is already registered,
    /// the existing layer is returned: without unpacking when
    /// `expected_diff_id` tells the chain ID up front, otherwise the new
    /// copy is discarded.
    pub fn register_layer_with<R: Read>(
        &self,
        mut reader: R,
        parent: Option<&Digest>,
        expected_diff_id: Option<&Digest>,
        options: &UnpackOptions,
    ) -> Result<LayerInfo> {
        let _lease = self.lease()?;
        if let Some(parent) = parent {
            if self.get_layer(parent)?.is_none() {
                return Err(Error::LayerNotFound {
                    chain_id: parent.clone(),
                });
            }
        }
        if let Some(expected) = expected_diff_id {
            if let Some(existing) = self.get_layer(&chain_id(parent, expected))? {
                let mut digester = Digester::sha256();
                io::copy(&mut reader, &mut digester).map_err(|source| Error::Tar { source })?;
                let actual = digester.finish();
                if &actual != expected {
                    return Err(Error::DiffIdMismatch {
                        expected: expected.clone(),
                        actual,
                    });
                }
                return Ok(existing);
            }
        }

        let staged = self.stage_layer(reader, expected_diff_id, options)?;
        self.commit_staged(staged, parent)
    }

    /// Unpacks the uncompressed layer tar `reader` into a staging directory
    /// without a parent yet, hashing it in the same pass and checking the
    /// diff ID against `expected_diff_id` if given. Layers of one image can
    /// be staged in parallel as they download; [`Store::commit_staged`] then
    /// puts each on top of its parent, in order, without touching the
    /// content again. A staged layer that is dropped uncommitted is removed.
    pub fn stage_layer<R: Read>(
        &self,
        reader: R,
        expected_diff_id: Option<&Digest>,
        options: &UnpackOptions,
    ) -> Result<StagedLayer> {
        let lease = self.lease()?;
        let layers = self.layers_dir();
        let tmp = tempfile::Builder::new()
            .prefix("tmp-")
            .tempdir_in(&layers)
            .at(&layers)?
            .keep();
        let staged = StagedLayer {
            dir: Some(tmp),
            diff_id: Digest::sha256_of(b""),
            size: 0,
            skipped_entries: 0,
            sealed: None,
            pending_sync: None,
            group_sync: Arc::clone(&self.group_sync),
            _lease: lease,
        };
        let mut staged = staged;
        let dir = staged.dir.clone().expect("just set");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).at(&dir)?;
        let diff = dir.join("diff");
        fs::create_dir(&diff).at(&diff)?;
        let report = unpack(reader, &diff, options)?;
        if let Some(expected) = expected_diff_id {
            if expected != &report.diff_id {
                return Err(Error::DiffIdMismatch {
                    expected: expected.clone(),
                    actual: report.diff_id,
                });
            }
        }
        // Counted and sealed here, on the unpacking thread, not when
        // registered (registrations run one after the other).
        let seal_path = dir.join(SEAL_FILE);
        staged.sealed = Some(seal_tree(&diff, &seal_path).at(&seal_path)?);
        // The layer's files reach the disk before it is registered (one
        // syncfs shared with the other layers finishing meanwhile, no
        // per-file fsync; see `StagedLayer::make_durable`), so that
        // registering it writes only its layer.json.
        staged.pending_sync = Some(self.group_sync.ticket());
        staged.diff_id = report.diff_id;
        staged.size = report.size;
        staged.skipped_entries = report.skipped;
        Ok(staged)
    }

    /// Registers a staged layer on top of `parent` (a registered chain ID):
    /// writes its `layer.json` and renames it into place. If the chain ID is
    /// already registered, the staged copy is discarded and the existing
    /// layer returned.
    pub fn commit_staged(
        &self,
        mut staged: StagedLayer,
        parent: Option<&Digest>,
    ) -> Result<LayerInfo> {
        staged.make_durable()?;
        if let Some(parent) = parent {
            if self.get_layer(parent)?.is_none() {
                return Err(Error::LayerNotFound {
                    chain_id: parent.clone(),
                });
            }
        }
        let tmp = staged
            .dir
            .clone()
            .expect("a staged layer has its directory until committed");
        let sealed = staged.sealed.clone().ok_or_else(|| Error::Io {
            path: tmp.join("diff"),
            source: io::Error::other("the staged diff was not sealed"),
        })?;
        let info = LayerInfo {
            chain_id: chain_id(parent, &staged.diff_id),
            diff_id: staged.diff_id.clone(),
            parent: parent.cloned(),
            size: staged.size,
            created: now_unix(),
            skipped_entries: staged.skipped_entries,
            entries: Some(sealed.entries),
            seal: Some(sealed.seal),
        };
        if let Some(existing) = self.get_layer(&info.chain_id)? {
            return Ok(existing);
        }
        let path = tmp.join("layer.json");
        let mut bytes = serde_json::to_vec_pretty(&info).map_err(|source| Error::Metadata {
            path: path.clone(),
            source,
        })?;
        bytes.push(b'\n');
        // Not synced here: the diff was made durable above, and
        // `put_image` syncs the filesystem (these layer.json files and
        // renames with it) before an image record can name the layer. A
        // crash before that leaves a layer whose layer.json may be damaged,
        // which `get_layer` treats as absent.
        let file = fs::File::create(&path).at(&path)?;
        io::Write::write_all(&mut &file, &bytes).at(&path)?;
        drop(file);
        let dest = self.layer_dir(&info.chain_id);
        let mut replaced_damaged = false;
        loop {
            crash_point();
            match fs::rename(&tmp, &dest) {
                Ok(()) => {
                    staged.dir = None;
                    crash_point();
                    return Ok(info);
                }
                Err(e) => match self.get_layer(&info.chain_id)? {
                    Some(existing) => return Ok(existing),
                    // A damaged copy (a removal killed by an older haul,
                    // files lost): out of the way, once, then ours.
                    None if dest.exists() && !replaced_damaged => {
                        replaced_damaged = true;
                        remove_via_trash(&self.trash_dir(), &dest)?;
                    }
                    None => return Err(e).at(&dest),
                },
            }
        }
    }

    /// Makes every registered layer durable: one syncfs of the layers'
    /// filesystem (their layer.json files and renames, see
    /// [`Store::commit_staged`]). Called before an image record is written.
    pub(crate) fn sync_layers(&self) -> Result<()> {
        self.group_sync.sync(&self.layers_dir())
    }

    /// Removes a layer directory (used by gc) through the trash; returns
    /// the bytes freed.
    pub(crate) fn remove_layer_dir(&self, dir: &std::path::Path) -> Result<u64> {
        let size = crate::fsutil::tree_size(dir);
        remove_via_trash(&self.trash_dir(), dir)?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_id_matches_haul_oci() {
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        let ids = haul_oci::chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain_id(None, &a), ids[0]);
        assert_eq!(chain_id(Some(&ids[0]), &b), ids[1]);
    }

    fn one_file_tar(name: &str) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, &b"hello"[..])
            .unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn layers_staged_together_share_one_sync_and_none_is_registered_unsynced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let options = UnpackOptions::default();
        let lower = store
            .stage_layer(&one_file_tar("a")[..], None, &options)
            .unwrap();
        let mut upper = store
            .stage_layer(&one_file_tar("b")[..], None, &options)
            .unwrap();
        assert_eq!(store.group_sync.syncs_started(), 0, "staging synced");
        // One sync, started after both unpacks, covers both.
        upper.make_durable().unwrap();
        assert_eq!(store.group_sync.syncs_started(), 1);
        let lower = store.commit_staged(lower, None).unwrap();
        let upper = store.commit_staged(upper, Some(&lower.chain_id)).unwrap();
        assert_eq!(store.group_sync.syncs_started(), 1);
        // A layer staged after that sync gets one of its own when registered.
        let top = store
            .stage_layer(&one_file_tar("c")[..], None, &options)
            .unwrap();
        store.commit_staged(top, Some(&upper.chain_id)).unwrap();
        assert_eq!(store.group_sync.syncs_started(), 2);
    }
}
