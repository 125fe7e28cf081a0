//! Upload sessions a push left open (`ROOT/uploads/HEX.json`, keyed by
//! target repository and blob), so that a push killed midway and run again
//! continues the registry's session where the registry still holds it.
//! A record is a hint: the pusher asks the registry for the session's
//! offset before using it, and starts over when the registry forgot it.

use std::path::PathBuf;

use haul_oci::Digest;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fsutil::{create_dirs, read_json, remove_file_if_exists, write_json};
use crate::Store;

/// An upload session recorded by an earlier push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// The session's URL, as the registry gave it.
    pub location: String,
    /// Bytes the registry had acknowledged when it was recorded.
    pub offset: u64,
}

impl Store {
    fn upload_record_path(&self, target: &str, blob: &Digest) -> PathBuf {
        let key = Digest::sha256_of(format!("{target} {blob}").as_bytes());
        self.root
            .join("uploads")
            .join(format!("{}.json", key.hex()))
    }

    /// Records the open session of `blob`'s upload to `target`
    /// (`registry/repository`), replacing any earlier one (atomic write).
    pub fn record_upload(&self, target: &str, blob: &Digest, record: &UploadRecord) -> Result<()> {
        let path = self.upload_record_path(target, blob);
        if let Some(dir) = path.parent() {
            create_dirs(dir)?;
        }
        write_json(&self.tmp_dir(), &path, record)
    }

    /// The session an earlier push recorded for `blob` to `target`.
    pub fn recorded_upload(&self, target: &str, blob: &Digest) -> Result<Option<UploadRecord>> {
        read_json(&self.upload_record_path(target, blob))
    }

    /// Forgets the session of `blob` to `target` (done, or gone).
    pub fn forget_upload(&self, target: &str, blob: &Digest) -> Result<()> {
        remove_file_if_exists(&self.upload_record_path(target, blob))
    }
}
