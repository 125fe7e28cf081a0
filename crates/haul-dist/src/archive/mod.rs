//! Image archives: `haul save` and `haul load`.
//!
//! Two formats are written and read, the ones `docker save` / `docker load`
//! and skopeo's `docker-archive:` / `oci:` / `oci-archive:` transports speak.
//! Everything here is blocking file I/O on the [`Store`] (call it from
//! `spawn_blocking` in async code); nothing prints.
//!
//! # docker-archive (written by [`save_docker_archive`])
//!
//! A tar, as `docker save` wrote it before Docker 25 (which every loader
//! reads: `docker load` of any version, skopeo, podman):
//!
//! ```text
//! V1ID/VERSION            "1.0"
//! V1ID/json               legacy v1 layer metadata (id, parent, created, os;
//!                         the top layer also gets config, architecture, ...)
//! V1ID/layer.tar          the layer's UNCOMPRESSED tar: sha256 == its diffID
//! CONFIGHEX.json          the image config, byte for byte (sha256 == image ID)
//! manifest.json           [{"Config":"CONFIGHEX.json",
//!                           "RepoTags":["alpine:latest","localhost:5000/app:1.0"],
//!                           "Layers":["V1ID/layer.tar", ...]}]
//! repositories            {"alpine":{"latest":"V1ID of the top layer"}}
//! ```
//!
//! One `manifest.json` item per image (an image saved under two tags is one
//! item with two `RepoTags`); `RepoTags` are Docker's familiar form; a
//! digest reference adds no tag. A layer's v1 ID is the SHA-256 of its v1
//! metadata with its chain ID and parent v1 ID (as skopeo derives them), so
//! a base layer shared by several images is written once. Layers are
//! inflated from the stored (gzip / zstd / plain) blob while they are
//! written, streaming (the tar header is patched with the size afterwards),
//! and hashed on the way: a layer whose tar does not hash to its diffID
//! fails the save. Entries have mode 0644 (0755 for directories), owner 0
//! and mtime 0, so two saves of the same images are identical.
//!
//! # OCI image layout (written by [`save_oci_layout`])
//!
//! `oci-layout`, `index.json` and `blobs/ALG/HEX`, as a directory, or as a
//! tar of those (an "oci-archive") when the output name ends in `.tar`.
//! Manifests, configs and layer blobs are copied byte for byte from the
//! store (re-hashed on the way), so every digest is preserved — with one
//! exception: an image whose stored manifest is Docker schema 2 gets that
//! manifest rewritten with the OCI media types (as `skopeo copy` to `oci:`
//! does), because skopeo and umoci look up only OCI manifests and indexes
//! in a layout's `index.json`. Its config and layer blobs, and so its image
//! ID and diffIDs, are unchanged; [`SavedImage::manifest_digest`] is the
//! digest as saved. `index.json`
//! has one entry per reference given, annotated as Docker 25 writes it:
//! `org.opencontainers.image.ref.name` is the tag alone (what skopeo's
//! `oci:DIR:TAG` looks up) and `io.containerd.image.name` the full name
//! (`docker.io/library/alpine:latest`), which `load` uses to restore it.
//! When several references are saved, or the output is an existing layout
//! (which `save` adds to, replacing entries of the same name), `ref.name`
//! is the full reference instead, so equal tags of two repositories stay
//! apart (`oci:DIR:docker.io/library/alpine:latest`).
//!
//! # Writing atomically
//!
//! Every reference is resolved before anything is created (a missing one
//! fails with `no such image: REF`). The output is written to a temporary
//! file or directory next to the target and renamed onto it at the end:
//! nothing half-written is left on failure. A file target is replaced; a
//! directory target must not exist or be empty.
//!
//! # Loading ([`load`])
//!
//! The input is a directory (an OCI layout) or a file: a tar, optionally
//! gzip- or zstd-compressed, holding a docker-archive (it has
//! `manifest.json`; Docker 25's archives, which hold both, are read through
//! `manifest.json` like `docker load` does) or an OCI layout (`index.json`).
//!
//! **How a tar is read.** A plain tar file is read in place, in two passes:
//! the first reads only the headers (seeking over the data) and indexes
//! every member's offset and size; then each member the metadata names is
//! read with a seek, streaming. `manifest.json` may come last in the tar
//! (skopeo writes it last, Docker first), so a single forward pass would
//! need to buffer everything before it; the index avoids that without
//! copying the archive. A compressed archive (or standard input, which
//! cannot seek) is first inflated once into a temporary file in the store's
//! `tmp/` directory, then read the same way. Symbolic and hard links inside
//! the archive (skopeo links `V1ID/layer.tar` to a shared file) are
//! followed within the archive only.
//!
//! **What is verified.** Every path taken from `manifest.json`, links and
//! `index.json` is a relative path inside the archive: an absolute path or
//! one escaping it (`../x`) is refused, and nothing is ever extracted to
//! disk by name. In a layout directory, a blob reached through a symlink
//! leading out of the directory is refused. Every blob is hashed and
//! checked against its digest (the config against the name it is stored
//! under, when that is a digest); every layer's tar against its diffID in
//! the config.
//!
//! **What is stored.** For a docker-archive, a layer's blob is its
//! uncompressed tar as it is (media type
//! `application/vnd.docker.image.rootfs.diff.tar`, digest = diffID; a
//! compressed `layer.tar`, which `docker load` also accepts, is inflated
//! first), and a Docker schema 2 manifest is synthesized with config media
//! type `application/vnd.docker.container.image.v1+json` and the layers'
//! sizes, laid out as skopeo generates it for the same archive (Go's field
//! order, compact JSON), except that skopeo labels the plain tars
//! `...diff.tar.gzip` where haul says what they are, `...diff.tar`. For an
//! OCI layout, manifests, configs and blobs are stored as they are; of an
//! image index the manifest for the requested platform is
//! taken. Layers are unpacked (by chain ID) in the same pass that stores
//! their blob, so `haul export` works at once.
//!
//! **All or nothing.** Blobs are written to ingest files and layers to
//! staging directories, and only committed (blobs, then configs and
//! manifests, then layers in order, then image records, then tags) once
//! every image of the archive has been read and verified. A corrupt or
//! incomplete archive leaves nothing in the store. The price: while
//! loading, each new layer holds an open ingest file and a staged directory.
//!
//! **Names.** A docker-archive's `RepoTags` are normalised as `docker load`
//! does (`alpine:latest` is `docker.io/library/alpine:latest`). In an OCI
//! layout, an entry's name is `io.containerd.image.name` if present (Docker
//! 25, containerd, haul), else `org.opencontainers.image.ref.name` when it is
//! a full reference (it contains `/`, `:` or `@`; haul's store writes
//! those). A `ref.name` that is only a tag — what `skopeo copy ...
//! oci:DIR:1.0` writes — names no repository: it is given the repository
//! [`LoadOptions::repository`], by default `localhost/` plus the input's
//! file name without its extensions (`app.tar` with tag `1.0` loads as
//! `localhost/app:1.0`), the way podman names local images; `haul tag` can
//! rename it. An image without any name (empty `RepoTags`, no annotation)
//! is referenced by digest in that repository
//! (`localhost/app@sha256:MANIFEST`), since the store keeps only images some
//! reference reaches.
//!
//! An image already in the store (same image ID, complete) keeps its record
//! and manifest (a pulled image keeps its compressed blobs); only the tags
//! are added.

mod docker_archive;
mod import;
mod oci_archive;
mod source;
mod tar_writer;

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use haul_oci::{Digest, Digester, Platform, Reference};
use haul_store::{ImageLayer, ImageRecord, ResolvedImage, Store, UnpackOptions};

pub use docker_archive::{save_docker_archive, save_docker_archive_for};
pub use oci_archive::{save_oci_layout, save_oci_layout_with, OciSaveOptions};

/// Largest `manifest.json`, `index.json` or `repositories` read into memory.
const METADATA_LIMIT: u64 = 8 * 1024 * 1024;
/// Largest image config read into memory.
const CONFIG_LIMIT: u64 = 8 * 1024 * 1024;
/// Largest image manifest or index read into memory.
const MANIFEST_LIMIT: u64 = haul_oci::DEFAULT_MANIFEST_LIMIT as u64;
/// Copy buffer for layers and blobs.
const COPY_BUFFER: usize = 256 * 1024;

pub use crate::error::{Error, Result};

pub(crate) trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl Error {
    /// This error, as being about archive member `member`.
    pub(crate) fn in_member(self, member: &str) -> Error {
        match self {
            // These already name their member.
            Error::MissingMember { .. }
            | Error::UnsafePath { .. }
            | Error::DigestMismatch { .. }
            | Error::SizeMismatch { .. }
            | Error::DiffIdMismatch { .. }
            | Error::Member { .. } => self,
            other => Error::Member {
                member: member.to_owned(),
                source: Box::new(other),
            },
        }
    }
}

/// What a save wrote.
#[derive(Debug, Clone)]
pub struct SaveReport {
    /// The images written, in the order first named, each with the
    /// references it was saved under.
    pub images: Vec<SavedImage>,
}

/// One image of a save.
#[derive(Debug, Clone)]
pub struct SavedImage {
    /// The image ID (config digest).
    pub id: Digest,
    /// Digest of its manifest in the store.
    pub manifest_digest: Digest,
    /// The references it was saved under.
    pub references: Vec<Reference>,
}

/// How to load.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// How layers are unpacked.
    pub unpack: UnpackOptions,
    /// The repository for images whose archive gives only a tag, or no
    /// name at all; `None`: [`default_repository`] of the input.
    pub repository: Option<Reference>,
    /// The platform to take from an image index (default: this machine's).
    pub platform: Option<Platform>,
}

/// The kind of archive that was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// A docker-archive (`manifest.json`).
    DockerArchive,
    /// An OCI image layout (`index.json`), as a directory or a tar.
    OciLayout,
}

/// What a load did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// What the input was.
    pub kind: ArchiveKind,
    /// The images loaded, in archive order.
    pub images: Vec<LoadedImage>,
}

/// One image of a load.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    /// The image record as stored.
    pub image: ImageRecord,
    /// The references now pointing at it, each with the image it pointed
    /// at before, if that was another one.
    pub references: Vec<(Reference, Option<Digest>)>,
}

/// `localhost/NAME`, NAME being the input's file name without its archive
/// extensions, lower-cased, other characters than letters and digits made
/// `-`; `localhost/loaded` when nothing is left.
pub fn default_repository(input: &Path) -> Reference {
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut stem = name.as_str();
    loop {
        let before = stem;
        for ext in [".tar", ".tgz", ".gz", ".zst", ".zstd", ".oci", ".docker"] {
            if let Some(s) = stem.strip_suffix(ext) {
                stem = s;
            }
        }
        if before == stem {
            break;
        }
    }
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches('-');
    let fallback = || Reference::parse_raw("localhost/loaded").expect("a valid name");
    if cleaned.is_empty() {
        return fallback();
    }
    Reference::parse_raw(&format!("localhost/{cleaned}")).unwrap_or_else(|_| fallback())
}

/// Loads the images of a docker-archive or OCI layout at `input` (see the
/// [module docs](self)) into `store`, all or nothing.
pub fn load(store: &Store, input: &Path, options: &LoadOptions) -> Result<LoadReport> {
    let _lease = store.lease()?;
    let spool_dir = store.root().join("tmp");
    let source = source::open_input(input, &spool_dir)?;
    let repository = options
        .repository
        .clone()
        .unwrap_or_else(|| default_repository(input));
    let mut pending = import::Pending::new(store, options.unpack.clone());
    let kind = if source.contains("manifest.json") {
        docker_archive::read(source.as_ref(), &mut pending, &repository)?;
        ArchiveKind::DockerArchive
    } else if source.contains("index.json") {
        let platform = options.platform.clone().unwrap_or_else(Platform::host);
        oci_archive::read(source.as_ref(), &mut pending, &repository, &platform)?;
        ArchiveKind::OciLayout
    } else {
        let reason = if source.contains("repositories") {
            "a docker-archive without manifest.json (Docker before 1.10) is not supported"
        } else {
            "neither a docker-archive (no manifest.json) nor an OCI layout (no index.json)"
        };
        return Err(Error::NotAnArchive {
            path: input.to_path_buf(),
            reason: reason.to_owned(),
        });
    };
    let images = pending.commit()?;
    Ok(LoadReport { kind, images })
}

/// What `references` name, each target once, in the order first named,
/// with the references naming it; with `platform`, the image of that
/// platform among a reference's image and its index's stored platforms.
/// Fails on the first reference that names no image (or none of that
/// platform).
pub(crate) fn resolve_for_save(
    store: &Store,
    references: &[Reference],
    platform: Option<&Platform>,
) -> Result<Vec<(ResolvedImage, Vec<Reference>)>> {
    let mut out: Vec<(ResolvedImage, Vec<Reference>)> = Vec::new();
    for reference in references {
        let mut image = store
            .resolve(reference)?
            .ok_or_else(|| Error::NoSuchImage(reference.familiar()))?;
        if let Some(wanted) = platform {
            image = of_platform(store, reference, image, wanted)?;
        }
        match out.iter_mut().find(|(i, _)| i.target() == image.target()) {
            Some((_, refs)) => {
                if !refs.contains(reference) {
                    refs.push(reference.clone());
                }
            }
            None => out.push((image, vec![reference.clone()])),
        }
    }
    Ok(out)
}

/// The image of `wanted` among `resolved` and the stored platforms of its
/// index, as a target of its own (no index).
fn of_platform(
    store: &Store,
    reference: &Reference,
    resolved: ResolvedImage,
    wanted: &Platform,
) -> Result<ResolvedImage> {
    let mut family = vec![resolved.image];
    if let Some(index) = &resolved.index {
        for child in store.index_children(index)?.unwrap_or_default() {
            if child != family[0].manifest_digest {
                family.extend(store.get_image(&child)?);
            }
        }
    }
    for candidate in wanted.compatible() {
        if let Some(image) = family.iter().find(|i| i.platform.same_as(&candidate)) {
            return Ok(ResolvedImage {
                image: image.clone(),
                index: None,
            });
        }
    }
    let mut stored: Vec<String> = family.iter().map(|i| i.platform.to_string()).collect();
    stored.sort();
    stored.dedup();
    Err(Error::NoLocalPlatform {
        reference: reference.familiar(),
        wanted: wanted.to_string(),
        stored: stored.join(", "),
    })
}

fn saved_images(images: &[(ResolvedImage, Vec<Reference>)]) -> Vec<SavedImage> {
    images
        .iter()
        .map(|(resolved, references)| SavedImage {
            id: resolved.image.id.clone(),
            manifest_digest: resolved.image.manifest_digest.clone(),
            references: references.clone(),
        })
        .collect()
}

/// The stored blob of a layer: the one its manifest names, else another
/// stored blob known to unpack to the same diffID (`save` of a
/// docker-archive needs only the tar, not that exact compression).
pub(crate) fn open_layer_blob(
    store: &Store,
    reference: &str,
    layer: &ImageLayer,
    any_blob_of_diff: bool,
) -> Result<(fs::File, Digest, String)> {
    match store.open_blob(&layer.digest) {
        Ok(file) => return Ok((file, layer.digest.clone(), layer.media_type.clone())),
        Err(haul_store::Error::BlobNotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    if any_blob_of_diff {
        let mut candidates: Vec<Digest> = store
            .distribution_sources(&layer.diff_id)?
            .into_iter()
            .map(|s| s.digest)
            .collect();
        candidates.push(layer.diff_id.clone());
        for candidate in candidates {
            if let Ok(file) = store.open_blob(&candidate) {
                // The compression is sniffed when reading: the media type
                // only matters for a stream too short to tell.
                return Ok((file, candidate, layer.media_type.clone()));
            }
        }
    }
    Err(Error::MissingLayerBlob {
        reference: reference.to_owned(),
        diff_id: layer.diff_id.clone(),
        blob: layer.digest.clone(),
    })
}

/// A reader that hashes what passes through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    digester: Digester,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R, algorithm: haul_oci::Algorithm) -> Self {
        Self {
            inner,
            digester: Digester::new(algorithm),
        }
    }

    /// The digest of everything read.
    pub(crate) fn finish(self) -> Digest {
        self.digester.finish()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digester.update(&buf[..n]);
        Ok(n)
    }
}

/// Where a save writes: a temporary sibling of the target, renamed onto it
/// by [`Output::persist`]; removed if dropped before.
pub(crate) enum Output {
    /// An existing device or pipe (`/dev/null`, a FIFO): the archive is
    /// built in a temporary file (the writer seeks), then copied into it;
    /// never renamed over it.
    Device {
        temp: tempfile::NamedTempFile,
        target: PathBuf,
    },
    File {
        temp: tempfile::NamedTempFile,
        target: PathBuf,
    },
    Dir {
        temp: tempfile::TempDir,
        target: PathBuf,
    },
}

fn parent_dir(target: &Path) -> PathBuf {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The directory a target is written in, which must exist.
fn existing_parent(target: &Path) -> Result<PathBuf> {
    let parent = parent_dir(target);
    let meta = fs::metadata(&parent).at(&parent)?;
    if !meta.is_dir() {
        return Err(Error::Io {
            path: parent,
            source: io::Error::new(io::ErrorKind::NotADirectory, "is not a directory"),
        });
    }
    Ok(parent)
}

impl Output {
    pub(crate) fn file(target: &Path) -> Result<Output> {
        if target.is_dir() {
            return Err(Error::Io {
                path: target.to_path_buf(),
                source: io::Error::new(io::ErrorKind::IsADirectory, "is a directory"),
            });
        }
        if let Ok(meta) = fs::metadata(target) {
            if !meta.is_file() {
                let temp = tempfile::Builder::new()
                    .prefix(".haul-save-")
                    .tempfile()
                    .at(&std::env::temp_dir())?;
                return Ok(Output::Device {
                    temp,
                    target: target.to_path_buf(),
                });
            }
        }
        let parent = existing_parent(target)?;
        let temp = tempfile::Builder::new()
            .prefix(".haul-save-")
            .tempfile_in(&parent)
            .at(&parent)?;
        Ok(Output::File {
            temp,
            target: target.to_path_buf(),
        })
    }

    pub(crate) fn dir(target: &Path) -> Result<Output> {
        check_dir_target(target)?;
        let parent = existing_parent(target)?;
        let temp = tempfile::Builder::new()
            .prefix(".haul-save-")
            .tempdir_in(&parent)
            .at(&parent)?;
        Ok(Output::Dir {
            temp,
            target: target.to_path_buf(),
        })
    }

    /// A handle on the temporary file (a file output only).
    pub(crate) fn open_file(&self) -> Result<fs::File> {
        match self {
            Output::Device { temp, .. } => temp.as_file().try_clone().at(temp.path()),
            Output::File { temp, .. } => temp.as_file().try_clone().at(temp.path()),
            Output::Dir { temp, .. } => Err(Error::Io {
                path: temp.path().to_path_buf(),
                source: io::Error::new(io::ErrorKind::IsADirectory, "is a directory"),
            }),
        }
    }

    /// The temporary path being written.
    pub(crate) fn path(&self) -> &Path {
        match self {
            Output::Device { temp, .. } => temp.path(),
            Output::File { temp, .. } => temp.path(),
            Output::Dir { temp, .. } => temp.path(),
        }
    }

    /// Renames the temporary onto the target (readable by others, like
    /// any file `docker save` writes).
    pub(crate) fn persist(self) -> Result<()> {
        match self {
            Output::Device { temp, target } => {
                let mut device = fs::OpenOptions::new()
                    .write(true)
                    .open(&target)
                    .at(&target)?;
                let mut built = fs::File::open(temp.path()).at(temp.path())?;
                io::copy(&mut built, &mut device).at(&target)?;
                Ok(())
            }
            Output::File { temp, target } => {
                fs::set_permissions(temp.path(), fs::Permissions::from_mode(0o644))
                    .at(temp.path())?;
                temp.as_file().sync_all().at(temp.path())?;
                temp.persist(&target).map_err(|e| Error::Io {
                    path: target.clone(),
                    source: e.error,
                })?;
                sync_dir(&parent_dir(&target))
            }
            Output::Dir { temp, target } => {
                check_dir_target(&target)?;
                fs::set_permissions(temp.path(), fs::Permissions::from_mode(0o755))
                    .at(temp.path())?;
                let kept = temp.keep();
                if let Err(e) = fs::rename(&kept, &target) {
                    let _ = fs::remove_dir_all(&kept);
                    return Err(if e.kind() == io::ErrorKind::DirectoryNotEmpty {
                        Error::OutputExists { path: target }
                    } else {
                        Error::Io {
                            path: target,
                            source: e,
                        }
                    });
                }
                sync_dir(&parent_dir(&target))
            }
        }
    }
}

fn check_dir_target(target: &Path) -> Result<()> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(target),
        Ok(m) if m.is_dir() => {
            let mut entries = fs::read_dir(target).at(target)?;
            if entries.next().is_some() {
                Err(Error::OutputExists {
                    path: target.to_path_buf(),
                })
            } else {
                Ok(())
            }
        }
        Ok(_) => Err(Error::OutputExists {
            path: target.to_path_buf(),
        }),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_repository_comes_from_the_file_name() {
        let name = |p: &str| default_repository(Path::new(p)).to_string();
        assert_eq!(name("/tmp/app.tar"), "localhost/app");
        assert_eq!(name("My_App-1.2.tar.gz"), "localhost/my-app-1-2");
        assert_eq!(name("dir/layout"), "localhost/layout");
        assert_eq!(name("/tmp/.tar"), "localhost/loaded");
        assert_eq!(name("-"), "localhost/loaded");
    }
}
