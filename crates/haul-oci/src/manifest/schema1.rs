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

/// The payload of a signed (JWS, "prettyjws") schema 1 manifest: the bytes
/// that were signed, which is what registries hash for its digest. The
/// first signature's protected header says how many leading bytes of the
/// document belong to it (`formatLength`) and which bytes close it
/// (`formatTail`, base64url).
pub fn signed_payload(bytes: &[u8]) -> Result<Vec<u8>> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    let fail = |reason: &str| Error::InvalidDocument {
        what: "signed schema 1 manifest",
        reason: reason.to_string(),
    };
    #[derive(Deserialize)]
    struct Signed {
        signatures: Vec<Signature>,
    }
    #[derive(Deserialize)]
    struct Signature {
        protected: String,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Protected {
        format_length: usize,
        format_tail: String,
    }
    let signed: Signed = serde_json::from_slice(bytes).map_err(|_| fail("no signatures"))?;
    let first = signed
        .signatures
        .first()
        .ok_or_else(|| fail("no signatures"))?;
    let decode = |text: &str| URL_SAFE_NO_PAD.decode(text.trim_end_matches('='));
    let protected =
        decode(&first.protected).map_err(|_| fail("protected header is not base64url"))?;
    let protected: Protected =
        serde_json::from_slice(&protected).map_err(|_| fail("unreadable protected header"))?;
    let tail = decode(&protected.format_tail).map_err(|_| fail("formatTail is not base64url"))?;
    let head = bytes
        .get(..protected.format_length)
        .ok_or_else(|| fail("formatLength is past the end of the document"))?;
    let mut payload = head.to_vec();
    payload.extend_from_slice(&tail);
    Ok(payload)
}

#[cfg(test)]
mod payload_tests {
    use super::*;

    #[test]
    fn signed_payload_is_the_head_plus_the_tail() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let payload = b"{\n   \"schemaVersion\": 1,\n   \"name\": \"a\"\n}";
        let head_len = payload.len() - 2; // "\n}" closes the document
        let tail = URL_SAFE_NO_PAD.encode(&payload[head_len..]);
        let protected = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"formatLength":{head_len},"formatTail":"{tail}","time":"2016-01-01T00:00:00Z"}}"#
        ));
        let signed = format!(
            "{},\n   \"signatures\": [{{\"header\": {{}}, \"signature\": \"x\", \"protected\": \"{protected}\"}}]\n}}",
            std::str::from_utf8(&payload[..head_len]).unwrap()
        );
        assert_eq!(signed_payload(signed.as_bytes()).unwrap(), payload.to_vec());
        assert!(signed_payload(b"{\"signatures\":[]}").is_err());
    }
}
