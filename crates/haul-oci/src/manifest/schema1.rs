//! Docker image manifest, schema 1: the legacy format still served by old
//! registries. Read-only support.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// A Docker schema 1 manifest (signed or not).
///
/// `fs_layers` and `history` are ordered newest layer first, the reverse of
/// schema 2; [`Schema1Manifest::layer_digests`] gives them base first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Schema1Manifest {
    /// Always 1.
    pub schema_version: u32,
    /// Repository name, e.g. `library/alpine`.
    pub name: String,
    /// Tag the manifest was pushed under.
    pub tag: String,
    /// CPU architecture.
    pub architecture: String,
    /// Layer blobs, newest first.
    pub fs_layers: Vec<FsLayer>,
    /// One v1-compatible JSON config per layer, newest first.
    pub history: Vec<V1History>,
    /// JWS signatures of a signed manifest, kept opaque.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signatures: Option<Vec<serde_json::Value>>,
}

/// One layer of a schema 1 manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsLayer {
    /// Digest of the (compressed) layer blob.
    #[serde(rename = "blobSum")]
    pub blob_sum: Digest,
}

/// One history entry of a schema 1 manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1History {
    /// The layer's v1 image JSON, as a string.
    #[serde(rename = "v1Compatibility")]
    pub v1_compatibility: String,
}

impl Schema1Manifest {
    /// Checks the rules Docker applies before using a schema 1 manifest:
    /// version 1, at least one layer, one history entry per layer.
    pub fn validate(&self) -> Result<()> {
        let fail = |reason: String| Error::InvalidDocument {
            what: "schema 1 manifest",
            reason,
        };
        if self.schema_version != 1 {
            return Err(fail(format!(
                "schemaVersion is {}, expected 1",
                self.schema_version
            )));
        }
        if self.fs_layers.is_empty() {
            return Err(fail("no layers".to_owned()));
        }
        if self.fs_layers.len() != self.history.len() {
            return Err(fail(format!(
                "{} layers but {} history entries",
                self.fs_layers.len(),
                self.history.len()
            )));
        }
        Ok(())
    }

    /// Whether the manifest carries JWS signatures.
    pub fn is_signed(&self) -> bool {
        self.signatures.as_ref().is_some_and(|s| !s.is_empty())
    }

    /// Layer blob digests, base layer first.
    pub fn layer_digests(&self) -> Vec<&Digest> {
        self.fs_layers.iter().rev().map(|l| &l.blob_sum).collect()
    }
}
