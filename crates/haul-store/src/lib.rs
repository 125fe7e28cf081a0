//! The local store of haul: content (an OCI image layout), unpacked layers
//! keyed by chain ID, images, references and distribution metadata, all under
//! one root directory.
//!
//! The store arrives with the pull issue; this crate already sits in its
//! place in the dependency graph (`haul-dist -> haul-store -> haul-oci`).

use std::path::{Path, PathBuf};

/// Everything that can go wrong in the local store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation on the store failed.
    #[error("store I/O on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A store rooted at one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, Error> {
        let root = root.as_ref().to_path_buf();
        std::fs::create_dir_all(&root).map_err(|source| Error::Io {
            path: root.clone(),
            source,
        })?;
        Ok(Self { root })
    }

    /// The directory everything of this store lives under.
    pub fn root(&self) -> &Path {
        &self.root
    }
}
