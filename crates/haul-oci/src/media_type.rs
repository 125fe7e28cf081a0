//! Media types of manifests, configs and layers (OCI, Docker schema 2 and
//! Docker schema 1), and questions about them.
//!
//! Functions here take the media type as it appears in a descriptor or a
//! `Content-Type` header: parameters (`; charset=utf-8`) and surrounding
//! blanks are ignored, and comparison is case-insensitive, as RFC 6838
//! requires.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip-compressed layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd-compressed layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI non-distributable uncompressed layer (deprecated by the spec, still met).
pub const OCI_LAYER_NONDISTRIBUTABLE: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar";
/// OCI non-distributable gzip layer.
pub const OCI_LAYER_NONDISTRIBUTABLE_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
/// OCI non-distributable zstd layer.
pub const OCI_LAYER_NONDISTRIBUTABLE_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
/// OCI empty JSON descriptor (`{}`), used as config of artifacts.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform), schema 2.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip-compressed layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer (rare; written by some tools).
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker zstd-compressed layer (non-standard; written by some tools).
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
/// Docker foreign layer: the blob lives at the descriptor's URLs, not in the
/// registry (Windows base layers).
pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// Docker plugin config.
pub const DOCKER_PLUGIN_CONFIG: &str = "application/vnd.docker.plugin.v1+json";

/// Docker image manifest, schema 1, unsigned.
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Docker image manifest, schema 1, signed (JWS).
pub const DOCKER_MANIFEST_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The media types a registry client should accept when fetching a
/// manifest, most preferred first: multi-platform lists first so that the
/// client can choose a platform, then single images, then the legacy schema 1.
pub const MANIFEST_ACCEPT: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_V1_SIGNED,
    DOCKER_MANIFEST_V1,
];

/// [`MANIFEST_ACCEPT`] joined into one `Accept` header value.
pub fn manifest_accept_header() -> String {
    MANIFEST_ACCEPT.join(", ")
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain tar stream.
    Uncompressed,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// The bare `type/subtype` of a media type or `Content-Type` value, without
/// parameters or surrounding blanks.
pub fn essence(media_type: &str) -> &str {
    media_type.split(';').next().unwrap_or(media_type).trim()
}

/// The OCI media type of a Docker one (manifest, config or layer); any
/// other media type is returned as it is.
pub fn oci_equivalent(media_type: &str) -> &str {
    let pairs = [
        (DOCKER_MANIFEST, OCI_MANIFEST),
        (DOCKER_CONFIG, OCI_CONFIG),
        (DOCKER_LAYER, OCI_LAYER),
        (DOCKER_LAYER_GZIP, OCI_LAYER_GZIP),
        (DOCKER_LAYER_ZSTD, OCI_LAYER_ZSTD),
        (DOCKER_FOREIGN_LAYER_GZIP, OCI_LAYER_NONDISTRIBUTABLE_GZIP),
    ];
    pairs
        .iter()
        .find(|(docker, _)| same(docker, media_type))
        .map_or(media_type, |(_, oci)| oci)
}

/// Whether two media types are the same, ignoring parameters and case.
pub fn same(a: &str, b: &str) -> bool {
    essence(a).eq_ignore_ascii_case(essence(b))
}

fn is_one_of(media_type: &str, set: &[&str]) -> bool {
    set.iter().any(|m| same(media_type, m))
}

/// Whether this is a single-image manifest: OCI, Docker schema 2, or Docker
/// schema 1 (signed or not).
pub fn is_manifest(media_type: &str) -> bool {
    is_one_of(
        media_type,
        &[
            OCI_MANIFEST,
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_V1,
            DOCKER_MANIFEST_V1_SIGNED,
        ],
    )
}

/// Whether this is a Docker schema 1 manifest (signed or not).
pub fn is_schema1(media_type: &str) -> bool {
    is_one_of(media_type, &[DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED])
}

/// Whether this is a multi-platform index: OCI index or Docker manifest list.
pub fn is_index(media_type: &str) -> bool {
    is_one_of(media_type, &[OCI_INDEX, DOCKER_MANIFEST_LIST])
}

/// Whether this is an image config.
pub fn is_config(media_type: &str) -> bool {
    is_one_of(media_type, &[OCI_CONFIG, DOCKER_CONFIG])
}

/// Whether this is a layer media type this crate knows.
pub fn is_layer(media_type: &str) -> bool {
    layer_compression(media_type).is_some()
}

/// How a layer of this media type is compressed, or `None` when it is not a
/// known layer media type.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    if is_one_of(
        media_type,
        &[OCI_LAYER, OCI_LAYER_NONDISTRIBUTABLE, DOCKER_LAYER],
    ) {
        Some(Compression::Uncompressed)
    } else if is_one_of(
        media_type,
        &[
            OCI_LAYER_GZIP,
            OCI_LAYER_NONDISTRIBUTABLE_GZIP,
            DOCKER_LAYER_GZIP,
            DOCKER_FOREIGN_LAYER_GZIP,
        ],
    ) {
        Some(Compression::Gzip)
    } else if is_one_of(
        media_type,
        &[
            OCI_LAYER_ZSTD,
            OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
            DOCKER_LAYER_ZSTD,
        ],
    ) {
        Some(Compression::Zstd)
    } else {
        None
    }
}

/// Whether a layer of this media type must not be pushed to a registry:
/// Docker foreign layers and OCI non-distributable layers, whose blobs are
/// fetched from the descriptor's `urls` instead.
pub fn is_foreign(media_type: &str) -> bool {
    is_one_of(
        media_type,
        &[
            DOCKER_FOREIGN_LAYER_GZIP,
            OCI_LAYER_NONDISTRIBUTABLE,
            OCI_LAYER_NONDISTRIBUTABLE_GZIP,
            OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
        ],
    )
}

/// Whether a `Content-Type` says nothing useful about a manifest, so that the
/// content itself must be examined: absent, empty, `application/json`,
/// `application/octet-stream` or `text/plain`.
pub fn is_generic(content_type: &str) -> bool {
    let e = essence(content_type);
    e.is_empty()
        || is_one_of(
            e,
            &["application/json", "application/octet-stream", "text/plain"],
        )
}

#[cfg(test)]
mod tests {
    #[test]
    fn docker_media_types_map_to_oci() {
        use super::*;
        assert_eq!(oci_equivalent(DOCKER_LAYER_GZIP), OCI_LAYER_GZIP);
        assert_eq!(oci_equivalent(DOCKER_CONFIG), OCI_CONFIG);
        assert_eq!(oci_equivalent(OCI_LAYER), OCI_LAYER);
    }

    use super::*;

    #[test]
    fn manifest_and_index_kinds() {
        for m in [
            OCI_MANIFEST,
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_V1,
            DOCKER_MANIFEST_V1_SIGNED,
        ] {
            assert!(is_manifest(m), "{m}");
            assert!(!is_index(m), "{m}");
        }
        for m in [OCI_INDEX, DOCKER_MANIFEST_LIST] {
            assert!(is_index(m), "{m}");
            assert!(!is_manifest(m), "{m}");
        }
        assert!(is_schema1(DOCKER_MANIFEST_V1_SIGNED));
        assert!(!is_schema1(DOCKER_MANIFEST));
        assert!(!is_manifest(OCI_CONFIG));
        assert!(is_config(DOCKER_CONFIG) && is_config(OCI_CONFIG));
    }

    #[test]
    fn parameters_and_case_are_ignored() {
        assert!(is_manifest(
            "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"
        ));
        assert!(is_index(" Application/VND.OCI.Image.Index.v1+JSON "));
        assert_eq!(essence("text/plain; charset=utf-8"), "text/plain");
        assert!(same(
            OCI_MANIFEST,
            "application/vnd.oci.image.manifest.v1+json;x=y"
        ));
    }

    #[test]
    fn compression_of_layers() {
        use Compression::*;
        let cases = [
            (OCI_LAYER, Some(Uncompressed)),
            (OCI_LAYER_GZIP, Some(Gzip)),
            (OCI_LAYER_ZSTD, Some(Zstd)),
            (OCI_LAYER_NONDISTRIBUTABLE, Some(Uncompressed)),
            (OCI_LAYER_NONDISTRIBUTABLE_GZIP, Some(Gzip)),
            (OCI_LAYER_NONDISTRIBUTABLE_ZSTD, Some(Zstd)),
            (DOCKER_LAYER_GZIP, Some(Gzip)),
            (DOCKER_LAYER, Some(Uncompressed)),
            (DOCKER_LAYER_ZSTD, Some(Zstd)),
            (DOCKER_FOREIGN_LAYER_GZIP, Some(Gzip)),
            (OCI_CONFIG, None),
            (OCI_EMPTY, None),
            ("application/octet-stream", None),
        ];
        for (m, want) in cases {
            assert_eq!(layer_compression(m), want, "{m}");
            assert_eq!(is_layer(m), want.is_some(), "{m}");
        }
    }

    #[test]
    fn foreign_layers() {
        assert!(is_foreign(DOCKER_FOREIGN_LAYER_GZIP));
        assert!(is_foreign(OCI_LAYER_NONDISTRIBUTABLE_GZIP));
        assert!(!is_foreign(DOCKER_LAYER_GZIP));
        assert!(!is_foreign(OCI_LAYER_GZIP));
    }

    #[test]
    fn accept_list() {
        assert_eq!(MANIFEST_ACCEPT.len(), 6);
        for m in MANIFEST_ACCEPT {
            assert!(is_manifest(m) || is_index(m), "{m}");
        }
        let header = manifest_accept_header();
        assert!(header.starts_with(OCI_INDEX));
        assert!(header.contains(", application/vnd.docker.distribution.manifest.v2+json,"));
    }

    #[test]
    fn generic_content_types() {
        for ct in [
            "",
            "application/json",
            "application/octet-stream",
            "text/plain; charset=utf-8",
        ] {
            assert!(is_generic(ct), "{ct:?}");
        }
        assert!(!is_generic(OCI_MANIFEST));
        assert!(!is_generic("text/html"));
    }
}
