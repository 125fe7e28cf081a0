//! Where an ingest's partial file lives, for readers that follow a blob
//! while it is being written (`haul serve` streaming a pull-through blob
//! to several clients as it arrives).
//!
//! Read-only: the file belongs to its [`Ingest`](crate::Ingest). A reader
//! may find it growing, shortened back to 0 (the writer's
//! [`Ingest::reset`](crate::Ingest::reset) when a server ignored a range;
//! the same bytes come again), or gone (committed into
//! [`Store::blob_path`], or aborted).

use std::path::PathBuf;

use haul_oci::Digest;

use crate::Store;

impl Store {
    /// The partial file of the ingest of `digest`
    /// (`ROOT/ingest/ALG-HEX.partial`), whether or not one exists.
    pub fn ingest_partial_path(&self, digest: &Digest) -> PathBuf {
        self.ingest_dir()
            .join(format!("{}-{}.partial", digest.algorithm(), digest.hex()))
    }
}

#[cfg(test)]
mod tests {
    use crate::{IngestOutcome, Store};
    use haul_oci::Digest;

    #[test]
    fn names_the_file_an_ingest_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = Digest::sha256_of(b"abcdef");
        let path = store.ingest_partial_path(&digest);
        assert!(!path.exists());
        let IngestOutcome::Writer(mut writer) = store.ingest(&digest).unwrap() else {
            panic!("new store");
        };
        writer.write_all(b"abc").unwrap();
        writer.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        writer.write_all(b"def").unwrap();
        writer.commit(6, &digest).unwrap();
        assert!(!path.exists(), "committed away");
        assert!(store.has_blob(&digest));
    }
}
