//! OCI image layouts, as directories or tars (see the [module docs](super)).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use haul_oci::{
    media_type, parse_image_config, parse_manifest, select_manifest, Algorithm, Descriptor, Digest,
    Manifest, Platform, Reference,
};
use haul_store::{ImageRecord, Store, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME};
use serde_json::{json, Value};

use super::import::{LayerBlob, LayerInput, Pending, PendingImage};
use super::source::{read_small, Source};
use super::tar_writer::TarWriter;
use super::{
    resolve_for_save, saved_images, Error, HashingReader, IoContext, Output, Result, SaveReport,
    CONFIG_LIMIT, COPY_BUFFER, MANIFEST_LIMIT, METADATA_LIMIT,
};

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// The manifest an image is saved with: its stored bytes, except for a
/// Docker schema 2 manifest haul wrote itself (a docker-archive or schema 1
/// image: no registry serves it, so no digest is kept) or one saved with
/// `oci_media_types` (what `skopeo copy` to `oci:` does), saved with OCI
/// media types, because skopeo 1.9 and umoci look up only OCI manifests in
/// a layout's `index.json` (config and layer blobs are unchanged, so is
/// the image ID).
fn layout_manifest(
    store: &Store,
    image: &ImageRecord,
    oci_media_types: bool,
) -> Result<(Vec<u8>, Digest, String)> {
    let bytes = store.read_blob_limited(&image.manifest_digest, MANIFEST_LIMIT)?;
    if !(image.manifest_made_locally || oci_media_types)
        || !media_type::same(&image.manifest_media_type, media_type::DOCKER_MANIFEST)
    {
        return Ok((
            bytes,
            image.manifest_digest.clone(),
            image.manifest_media_type.clone(),
        ));
    }
    let mut value: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
        what: format!("stored manifest {}", image.manifest_digest),
        reason: e.to_string(),
    })?;
    crate::oci_types::to_oci_media_types(&mut value);
    let converted = serde_json::to_vec(&value).expect("JSON values serialise");
    let digest = Digest::sha256_of(&converted);
    Ok((converted, digest, media_type::OCI_MANIFEST.to_string()))
}

/// Writes the images `references` name as an OCI image layout at `output`:
/// a tar of it when the name ends in `.tar`, else a directory (which must
/// not exist or be empty). Every reference is saved as exactly what it
/// names: its own manifest (OCI or Docker schema 2, bytes unchanged), or
/// the index it came through when every platform of that index is stored.
/// Blobs are copied byte for byte, re-hashed on the way.
pub fn save_oci_layout(
    store: &Store,
    references: &[Reference],
    output: &Path,
) -> Result<SaveReport> {
    save_oci_layout_with(store, references, &OciSaveOptions::default(), output)
}

/// How [`save_oci_layout_with`] saves.
#[derive(Debug, Clone, Default)]
pub struct OciSaveOptions {
    /// Save, of each reference, its image of this platform (`--platform`):
    /// its own image or a stored platform of its index.
    pub platform: Option<Platform>,
    /// Give Docker schema 2 manifests OCI media types (new digests), as
    /// `skopeo copy` to `oci:` does: skopeo 1.9 and umoci read only OCI
    /// entries of a layout. Off, every manifest keeps its bytes.
    pub oci_media_types: bool,
    /// Also write the stored referrers (every level) of each saved
    /// manifest, listed in `index.json` without a `ref.name`, as oras
    /// writes an OCI layout's referrers.
    pub referrers: bool,
}

/// [`save_oci_layout`] as `options` say.
pub fn save_oci_layout_with(
    store: &Store,
    references: &[Reference],
    options: &OciSaveOptions,
    output: &Path,
) -> Result<SaveReport> {
    let _lease = store.lease()?;
    let images = resolve_for_save(store, references, options.platform.as_ref())?;

    // Every blob, once, and the index entries; all checked before writing.
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    let mut documents: Vec<(Digest, Vec<u8>)> = Vec::new();
    let mut entries = Vec::new();
    let mut report = saved_images(&images);
    // One reference is named by its tag (`oci:DIR:TAG`, as skopeo and
    // Docker write it); several by their full references, which two
    // repositories' equal tags cannot confuse, as is every name added to an
    // existing layout.
    let existing_layout = !as_tar(output) && output.join("oci-layout").is_file();
    let full_names =
        existing_layout || images.iter().map(|(_, refs)| refs.len()).sum::<usize>() > 1;
    for ((resolved, refs), saved) in images.iter().zip(report.iter_mut()) {
        let shown = refs[0].familiar();
        let target = resolved.target();
        let whole_index = store.complete_index(&target)?;
        let members = match (&whole_index, &target.index) {
            (Some(_), Some(index)) => {
                let bytes = store.read_blob_limited(index, MANIFEST_LIMIT)?;
                if !documents.iter().any(|(d, _)| d == index) {
                    documents.push((index.clone(), bytes));
                }
                let mut members = Vec::new();
                for child in store.index_children(index)?.unwrap_or_default() {
                    members.extend(store.get_image(&child)?);
                }
                members
            }
            _ => vec![resolved.image.clone()],
        };
        let mut saved_manifest = None;
        for image in &members {
            let (manifest, digest, media) = if whole_index.is_some() {
                let bytes = store.read_blob_limited(&image.manifest_digest, MANIFEST_LIMIT)?;
                let media = image.manifest_media_type.clone();
                (bytes, image.manifest_digest.clone(), media)
            } else {
                layout_manifest(store, image, options.oci_media_types)?
            };
            if !documents.iter().any(|(d, _)| d == &digest) {
                documents.push((digest.clone(), manifest.clone()));
            }
            saved_manifest = Some((digest, media, manifest.len() as u64));
            for (digest, is_layer) in std::iter::once((&image.id, false))
                .chain(image.layers.iter().map(|l| (&l.digest, true)))
            {
                let size = match store.blob_size(digest) {
                    Ok(size) => size,
                    Err(haul_store::Error::BlobNotFound { .. }) if is_layer => {
                        let layer = image.layers.iter().find(|l| &l.digest == digest);
                        return Err(Error::MissingLayerBlob {
                            reference: shown,
                            diff_id: layer
                                .map(|l| l.diff_id.clone())
                                .expect("a layer of the image"),
                            blob: digest.clone(),
                        });
                    }
                    Err(e) => return Err(e.into()),
                };
                if !blobs.iter().any(|(d, _)| d == digest) {
                    blobs.push((digest.clone(), size));
                }
            }
        }
        let image = &resolved.image;
        let (manifest_digest, manifest_type, manifest_size) = match (&whole_index, &target.index) {
            (Some((size, media)), Some(index)) => (index.clone(), media.clone(), *size),
            _ => saved_manifest.expect("one image saved"),
        };
        saved.manifest_digest = manifest_digest.clone();
        for reference in refs {
            let mut annotations = serde_json::Map::new();
            annotations.insert(ANNOTATION_IMAGE_NAME.into(), reference.to_string().into());
            if full_names {
                annotations.insert(ANNOTATION_REF_NAME.into(), reference.to_string().into());
            } else if let (Some(tag), None) = (reference.tag(), reference.digest()) {
                annotations.insert(ANNOTATION_REF_NAME.into(), tag.into());
            }
            let mut entry = json!({
                "mediaType": manifest_type,
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": annotations,
            });
            if whole_index.is_none()
                && !image.platform.os.is_empty()
                && !image.platform.architecture.is_empty()
            {
                entry["platform"] =
                    serde_json::to_value(&image.platform).expect("a platform serialises");
            }
            entries.push(entry);
        }
        if options.referrers {
            let mut subjects = vec![manifest_digest.clone()];
            subjects.extend(members.iter().map(|m| m.manifest_digest.clone()));
            add_referrers(store, &subjects, &mut documents, &mut blobs, &mut entries)?;
        }
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": entries,
    });
    let mut index_json = serde_json::to_vec(&index).expect("JSON values serialise");
    index_json.push(b'\n');

    let out = if existing_layout {
        None
    } else if as_tar(output) {
        Some(Output::file(output)?)
    } else {
        Some(Output::dir(output)?)
    };
    let mut writer: Box<dyn LayoutWriter> = match &out {
        None => Box::new(AddToLayout(output.to_path_buf())),
        Some(out) if as_tar(output) => {
            Box::new(TarLayout(TarWriter::new(out.open_file()?, out.path())))
        }
        Some(out) => Box::new(DirLayout(out.path().to_path_buf())),
    };
    writer.file("oci-layout", OCI_LAYOUT)?;
    let mut algorithms: Vec<Algorithm> = Vec::new();
    let all_digests = documents
        .iter()
        .map(|(d, _)| d)
        .chain(blobs.iter().map(|(d, _)| d));
    for digest in all_digests {
        if !algorithms.contains(&digest.algorithm()) {
            algorithms.push(digest.algorithm());
        }
    }
    writer.directory("blobs")?;
    for algorithm in algorithms {
        writer.directory(&format!("blobs/{algorithm}"))?;
    }
    for (digest, bytes) in &documents {
        writer.file(&blob_member(digest), bytes)?;
    }
    for (digest, size) in &blobs {
        let member = blob_member(digest);
        if writer.has(&member) {
            continue;
        }
        let file = store.open_blob(digest)?;
        let path = store.blob_path(digest);
        let mut hashing = HashingReader::new(file, digest.algorithm());
        let read_error = |e: io::Error| Error::Io {
            path: path.clone(),
            source: e,
        };
        writer.stream(&member, &mut hashing, *size, &read_error)?;
        let actual = hashing.finish();
        if &actual != digest {
            return Err(Error::Store(haul_store::Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            }));
        }
    }
    // Last: a layout without it is no layout.
    writer.file("index.json", &index_json)?;
    writer.finish()?;
    if let Some(out) = out {
        out.persist()?;
    }
    Ok(SaveReport { images: report })
}

/// The stored referrers of `subjects` (every level) into a layout being
/// written: their manifests and blobs, and an `index.json` entry each,
/// as oras writes them: a referrer without `ref.name` (found by its
/// `subject`), one of cosign's digest tags with its tag as `ref.name`.
fn add_referrers(
    store: &Store,
    subjects: &[Digest],
    documents: &mut Vec<(Digest, Vec<u8>)>,
    blobs: &mut Vec<(Digest, u64)>,
    entries: &mut Vec<Value>,
) -> Result<()> {
    for (_, referrer) in store.referrer_tree(subjects)? {
        if documents.iter().any(|(d, _)| d == &referrer.digest) {
            continue;
        }
        for digest in std::iter::once(&referrer.digest).chain(&referrer.manifests) {
            let bytes = store.read_blob_limited(digest, MANIFEST_LIMIT)?;
            if !documents.iter().any(|(d, _)| d == digest) {
                documents.push((digest.clone(), bytes));
            }
        }
        for digest in &referrer.blobs {
            if !blobs.iter().any(|(d, _)| d == digest) {
                blobs.push((digest.clone(), store.blob_size(digest)?));
            }
        }
        let mut entry = json!({
            "mediaType": referrer.media_type,
            "digest": referrer.digest,
            "size": referrer.size,
        });
        if let Some(t) = &referrer.artifact_type {
            entry["artifactType"] = json!(t);
        }
        let mut annotations = serde_json::Map::new();
        for (k, v) in &referrer.annotations {
            annotations.insert(k.clone(), json!(v));
        }
        if let Some(tag) = &referrer.tag {
            annotations.insert(ANNOTATION_REF_NAME.into(), json!(tag));
        }
        if !annotations.is_empty() {
            entry["annotations"] = Value::Object(annotations);
        }
        entries.push(entry);
    }
    Ok(())
}

/// Whether `output` names a tar (`*.tar`) rather than a directory.
fn as_tar(output: &Path) -> bool {
    output
        .file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".tar"))
}

fn blob_member(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm(), digest.hex())
}

/// Where a layout is written: a directory or a tar.
trait LayoutWriter {
    fn directory(&mut self, name: &str) -> Result<()>;
    fn file(&mut self, name: &str, bytes: &[u8]) -> Result<()>;
    fn stream(
        &mut self,
        name: &str,
        reader: &mut dyn io::Read,
        size: u64,
        read_error: &dyn Fn(io::Error) -> Error,
    ) -> Result<()>;
    /// Whether the layout already holds `name` (then it is not written).
    fn has(&self, _name: &str) -> bool {
        false
    }
    fn finish(self: Box<Self>) -> Result<()>;
}

struct TarLayout(TarWriter);

impl LayoutWriter for TarLayout {
    fn directory(&mut self, name: &str) -> Result<()> {
        self.0.directory(name)
    }

    fn file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.0.bytes(name, bytes)
    }

    fn stream(
        &mut self,
        name: &str,
        reader: &mut dyn io::Read,
        size: u64,
        read_error: &dyn Fn(io::Error) -> Error,
    ) -> Result<()> {
        self.0
            .stream(name, reader, Some(size), read_error)
            .map(drop)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.0.finish().map(drop)
    }
}

/// Copies `reader` into `file` (at `path`), checks that `size` bytes came,
/// and syncs it.
fn write_counted(
    file: fs::File,
    path: &Path,
    name: &str,
    reader: &mut dyn io::Read,
    size: u64,
    read_error: &dyn Fn(io::Error) -> Error,
) -> Result<()> {
    let mut file = io::BufWriter::with_capacity(COPY_BUFFER, file);
    let mut buffer = vec![0u8; COPY_BUFFER];
    let mut written = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        file.write_all(&buffer[..n]).at(path)?;
        written += n as u64;
    }
    if written != size {
        return Err(Error::SizeMismatch {
            member: name.to_owned(),
            expected: size,
            actual: written,
        });
    }
    let file = file.into_inner().map_err(|e| e.into_error()).at(path)?;
    file.sync_all().at(path)
}

/// Adds to an existing layout: every file goes through a temporary file
/// renamed into place, blobs already there are kept, and `index.json` is
/// merged (an entry of the same `ref.name` is replaced) and written last,
/// so a failure leaves the layout as it was, plus perhaps unnamed blobs.
struct AddToLayout(std::path::PathBuf);

impl AddToLayout {
    fn temp_for(&self, path: &Path) -> Result<tempfile::NamedTempFile> {
        let parent = path.parent().unwrap_or(&self.0);
        tempfile::Builder::new()
            .prefix(".haul-save-")
            .tempfile_in(parent)
            .at(parent)
    }

    fn persist(temp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
        temp.persist(path).map_err(|e| e.error).at(path)?;
        Ok(())
    }

    /// The existing `index.json` with the entries of `new` added, replacing
    /// those of the same name.
    fn merged_index(&self, new: &[u8]) -> Result<Vec<u8>> {
        let path = self.0.join("index.json");
        let invalid = |reason: String| Error::Invalid {
            what: path.display().to_string(),
            reason,
        };
        let mut index: Value = serde_json::from_slice(&fs::read(&path).at(&path)?)
            .map_err(|e| invalid(e.to_string()))?;
        let new: Value = serde_json::from_slice(new).expect("the index haul wrote parses");
        let name_of = |entry: &Value| {
            entry["annotations"][ANNOTATION_REF_NAME]
                .as_str()
                .map(str::to_owned)
        };
        let added = new["manifests"].as_array().cloned().unwrap_or_default();
        let names: Vec<Option<String>> = added.iter().map(name_of).collect();
        let manifests = index["manifests"]
            .as_array_mut()
            .ok_or_else(|| invalid("it lists no manifests".into()))?;
        // Unnamed entries (referrers) are told apart by digest.
        let unnamed: Vec<&Value> = added
            .iter()
            .filter(|e| name_of(e).is_none())
            .map(|e| &e["digest"])
            .collect();
        manifests.retain(|entry| match name_of(entry) {
            None => !unnamed.contains(&&entry["digest"]),
            name => !names.contains(&name),
        });
        manifests.extend(added);
        let mut bytes = serde_json::to_vec(&index).expect("JSON values serialise");
        bytes.push(b'\n');
        Ok(bytes)
    }
}

impl LayoutWriter for AddToLayout {
    fn directory(&mut self, name: &str) -> Result<()> {
        let path = self.0.join(name);
        fs::create_dir_all(&path).at(&path)
    }

    fn file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.0.join(name);
        let merged;
        let bytes = match name {
            "oci-layout" => return Ok(()),
            "index.json" => {
                merged = self.merged_index(bytes)?;
                &merged[..]
            }
            _ if path.is_file() => return Ok(()),
            _ => bytes,
        };
        let mut temp = self.temp_for(&path)?;
        temp.write_all(bytes).at(temp.path())?;
        temp.as_file().sync_all().at(temp.path())?;
        Self::persist(temp, &path)
    }

    fn stream(
        &mut self,
        name: &str,
        reader: &mut dyn io::Read,
        size: u64,
        read_error: &dyn Fn(io::Error) -> Error,
    ) -> Result<()> {
        let path = self.0.join(name);
        let temp = self.temp_for(&path)?;
        let file = temp.as_file().try_clone().at(temp.path())?;
        write_counted(file, temp.path(), name, reader, size, read_error)?;
        Self::persist(temp, &path)
    }

    fn has(&self, name: &str) -> bool {
        self.0.join(name).is_file()
    }

    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

struct DirLayout(std::path::PathBuf);

impl LayoutWriter for DirLayout {
    fn directory(&mut self, name: &str) -> Result<()> {
        let path = self.0.join(name);
        fs::create_dir_all(&path).at(&path)
    }

    fn file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.0.join(name);
        let mut file = fs::File::create(&path).at(&path)?;
        file.write_all(bytes).at(&path)?;
        file.sync_all().at(&path)
    }

    fn stream(
        &mut self,
        name: &str,
        reader: &mut dyn io::Read,
        size: u64,
        read_error: &dyn Fn(io::Error) -> Error,
    ) -> Result<()> {
        let path = self.0.join(name);
        write_counted(
            fs::File::create(&path).at(&path)?,
            &path,
            name,
            reader,
            size,
            read_error,
        )
    }

    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// The reference an `index.json` entry names (see the [module
/// docs](super)): `io.containerd.image.name`, else a `ref.name` that is a
/// full reference, else `REPOSITORY:REF.NAME` when `ref.name` is a tag.
fn entry_reference(
    annotations: Option<&HashMap<String, String>>,
    repository: &Reference,
    n: usize,
) -> Result<Option<Reference>> {
    let Some(annotations) = annotations else {
        return Ok(None);
    };
    if let Some(name) = annotations.get(ANNOTATION_IMAGE_NAME) {
        if let Ok(reference) = Reference::parse(name) {
            return Ok(Some(reference));
        }
    }
    let Some(name) = annotations.get(ANNOTATION_REF_NAME) else {
        return Ok(None);
    };
    let invalid = |e: haul_oci::Error| Error::Invalid {
        what: "index.json".into(),
        reason: format!("manifests[{n}]: {ANNOTATION_REF_NAME} {name:?}: {e}"),
    };
    if name.contains(['/', ':', '@']) {
        return Reference::parse(name).map(Some).map_err(invalid);
    }
    repository
        .without_tag()
        .without_digest()
        .with_tag(name)
        .map(Some)
        .map_err(invalid)
}

/// Reads a blob of the layout into memory, checking its digest and size.
fn read_blob(source: &dyn Source, digest: &Digest, size: u64, limit: u64) -> Result<Vec<u8>> {
    let member = blob_member(digest);
    if size > limit {
        return Err(Error::Invalid {
            what: member,
            reason: format!("it is {size} bytes, over the limit of {limit}"),
        });
    }
    let bytes = read_small(source, &member, limit)?;
    let actual = Digest::of(digest.algorithm(), &bytes);
    if &actual != digest {
        return Err(Error::DigestMismatch {
            member,
            expected: digest.clone(),
            actual,
        });
    }
    if bytes.len() as u64 != size {
        return Err(Error::SizeMismatch {
            member,
            expected: size,
            actual: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// Reads the images the `index.json` of the layout in `source` names into
/// `pending`; of an image index, the manifest for `platform`.
pub(crate) fn read(
    source: &dyn Source,
    pending: &mut Pending<'_>,
    repository: &Reference,
    platform: &Platform,
) -> Result<()> {
    if source.contains("oci-layout") {
        let bytes = read_small(source, "oci-layout", METADATA_LIMIT)?;
        let layout: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
            what: "oci-layout".into(),
            reason: e.to_string(),
        })?;
        let version = layout["imageLayoutVersion"].as_str().unwrap_or("");
        if !version.starts_with("1.") {
            return Err(Error::UnsupportedArchive(format!(
                "OCI image layout version {version:?} (1.x is supported)"
            )));
        }
    }
    let bytes = read_small(source, "index.json", METADATA_LIMIT)?;
    let index = parse_manifest(bytes, Some(media_type::OCI_INDEX))
        .map_err(|e| Error::from(e).in_member("index.json"))?;
    let Manifest::Index(index) = index.manifest() else {
        unreachable!("parsed as an index");
    };
    if index.manifests().is_empty() {
        return Err(Error::Invalid {
            what: "index.json".into(),
            reason: "it lists no image".into(),
        });
    }
    for (n, entry) in index.manifests().iter().enumerate() {
        if load_referrer(source, pending, entry)? {
            continue;
        }
        let reference = entry_reference(entry.annotations().as_ref(), repository, n)?;
        let mut descriptor = entry.clone();
        let mut index_digest = None;
        let mut platforms = Vec::new();
        if media_type::is_index(descriptor.media_type().as_ref()) {
            let digest = Digest::try_from(descriptor.digest())?;
            let bytes = read_blob(source, &digest, descriptor.size(), MANIFEST_LIMIT)?;
            let nested = parse_manifest(bytes.clone(), Some(descriptor.media_type().as_ref()))
                .map_err(|e| Error::from(e).in_member(&blob_member(&digest)))?;
            let Manifest::Index(nested_index) = nested.manifest() else {
                unreachable!("parsed as an index");
            };
            descriptor = select_manifest(nested_index, platform)
                .map_err(|e| Error::from(e).in_member(&blob_member(&digest)))?
                .clone();
            // An index the layout holds whole is loaded whole: every
            // platform stays with the reference (as `pull --all-platforms`).
            let whole = nested_index.manifests().iter().all(|m| {
                media_type::is_manifest(m.media_type().as_ref())
                    && Digest::try_from(m.digest()).is_ok_and(|d| source.contains(&blob_member(&d)))
            });
            // Attestations (platform unknown/unknown) are no images.
            let is_image = |m: &Descriptor| {
                m.platform()
                    .as_ref()
                    .is_none_or(|p| p.os().to_string() != "unknown")
            };
            if whole {
                platforms.extend(
                    nested_index
                        .manifests()
                        .iter()
                        .filter(|m| m.digest() != descriptor.digest() && is_image(m))
                        .cloned(),
                );
            }
            pending.add_document(&digest, bytes);
            index_digest = Some(digest);
        }
        for other in platforms {
            load_image(source, pending, &other, n, None, None, repository)?;
        }
        load_image(
            source,
            pending,
            &descriptor,
            n,
            Some(reference),
            index_digest,
            repository,
        )?;
    }
    Ok(())
}

/// Loads the `index.json` entry `entry` as a referrer when it is one: a
/// manifest with a `subject` listed without `ref.name` (as oras and
/// `save --referrers` write them), one of cosign's digest tags
/// (`ref.name` `sha256-HEX.sig`), or a referrers fallback index
/// (`ref.name` `sha256-HEX`), whose entries are the referrers. Returns
/// whether it was.
fn load_referrer(
    source: &dyn Source,
    pending: &mut Pending<'_>,
    entry: &Descriptor,
) -> Result<bool> {
    let annotations = entry.annotations().clone().unwrap_or_default();
    let ref_name = annotations.get(ANNOTATION_REF_NAME);
    let tag = ref_name
        .filter(|name| crate::copy::is_referrer_tag(name))
        .cloned();
    if ref_name.is_some() && tag.is_none() || annotations.contains_key(ANNOTATION_IMAGE_NAME) {
        return Ok(false);
    }
    let media = entry.media_type().to_string();
    if !media_type::is_manifest(&media) && !media_type::is_index(&media) {
        return Ok(false);
    }
    let digest = Digest::try_from(entry.digest())?;
    let bytes = read_blob(source, &digest, entry.size(), MANIFEST_LIMIT)?;
    let member = blob_member(&digest);
    let parsed = parse_manifest(bytes.clone(), Some(&media))
        .map_err(|e| Error::from(e).in_member(&member))?;
    let Some(tag) = tag else {
        let value: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let Some(subject) = value.pointer("/subject/digest").and_then(|d| d.as_str()) else {
            // An unnamed image: not a referrer.
            return Ok(false);
        };
        let subject = Digest::parse(subject)?;
        load_referrer_manifest(source, pending, entry, parsed, bytes, subject, None)?;
        return Ok(true);
    };
    let (base, suffix) = tag
        .split_once('.')
        .map_or((tag.as_str(), None), |(b, s)| (b, Some(s)));
    let subject = Digest::parse(&base.replacen('-', ":", 1))?;
    match (suffix, parsed.manifest()) {
        (None, Manifest::Index(index)) => {
            // The fallback index: what it lists refers to `subject`.
            for listed in index.manifests() {
                let listed_digest = Digest::try_from(listed.digest())?;
                let listed_bytes =
                    read_blob(source, &listed_digest, listed.size(), MANIFEST_LIMIT)?;
                let listed_parsed = parse_manifest(listed_bytes.clone(), None)
                    .map_err(|e| Error::from(e).in_member(&blob_member(&listed_digest)))?;
                load_referrer_manifest(
                    source,
                    pending,
                    listed,
                    listed_parsed,
                    listed_bytes,
                    subject.clone(),
                    None,
                )?;
            }
        }
        _ => load_referrer_manifest(source, pending, entry, parsed, bytes, subject, Some(tag))?,
    }
    Ok(true)
}

/// Keeps the referrer `parsed` (`bytes`, as `descriptor` lists it) of
/// `subject` for the commit, with every blob it needs (streamed from the
/// layout into the store's ingest).
fn load_referrer_manifest(
    source: &dyn Source,
    pending: &mut Pending<'_>,
    descriptor: &Descriptor,
    parsed: haul_oci::ParsedManifest,
    bytes: Vec<u8>,
    subject: Digest,
    tag: Option<String>,
) -> Result<()> {
    let digest = parsed.digest().clone();
    let mut manifests = vec![parsed.clone()];
    if let Manifest::Index(index) = parsed.manifest() {
        for child in index.manifests() {
            let child_digest = Digest::try_from(child.digest())?;
            let child_bytes = read_blob(source, &child_digest, child.size(), MANIFEST_LIMIT)?;
            let child_parsed = parse_manifest(child_bytes.clone(), None)
                .map_err(|e| Error::from(e).in_member(&blob_member(&child_digest)))?;
            pending.add_document(&child_digest, child_bytes);
            manifests.push(child_parsed);
        }
    }
    let mut blobs = Vec::new();
    for manifest in &manifests {
        for (blob, size) in crate::referrers::manifest_blobs(manifest)? {
            let blob_name = blob_member(&blob);
            if !source.contains(&blob_name) {
                return Err(Error::UnsupportedArchive(format!(
                    "referrer {digest} of {subject}: its blob {blob} is not in the layout"
                )));
            }
            let opened = source.open(&blob_name)?;
            pending.add_blob(&blob_name, opened.reader, &blob, size)?;
            if !blobs.contains(&blob) {
                blobs.push(blob);
            }
        }
    }
    pending.add_document(&digest, bytes);
    let declared = descriptor.artifact_type().as_ref().map(|t| t.to_string());
    let mut record = crate::pull::referrers::record_of(&parsed, declared, blobs, tag);
    record.manifests = manifests[1..].iter().map(|m| m.digest().clone()).collect();
    pending.add_referrer(subject, record);
    Ok(())
}

/// Loads the image `descriptor` names, with `reference` (`Some(None)`: the
/// repository by digest) and the index it came through; `reference` `None`
/// loads an image no reference names (a platform of a loaded index).
fn load_image(
    source: &dyn Source,
    pending: &mut Pending<'_>,
    descriptor: &Descriptor,
    n: usize,
    reference: Option<Option<Reference>>,
    index_digest: Option<Digest>,
    repository: &Reference,
) -> Result<()> {
    {
        let media = descriptor.media_type().to_string();
        if !media_type::is_manifest(&media) || media_type::is_schema1(&media) {
            return Err(Error::UnsupportedArchive(format!(
                "index.json manifests[{n}] is a {media}, not an image manifest"
            )));
        }
        let manifest_digest = Digest::try_from(descriptor.digest())?;
        let manifest_bytes =
            read_blob(source, &manifest_digest, descriptor.size(), MANIFEST_LIMIT)?;
        let manifest_member = blob_member(&manifest_digest);
        let manifest = parse_manifest(manifest_bytes.clone(), Some(&media))
            .map_err(|e| Error::from(e).in_member(&manifest_member))?;
        let config_descriptor = manifest.manifest().config().ok_or_else(|| {
            Error::UnsupportedArchive(format!("{manifest_member} is not an image manifest"))
        })?;
        let config_digest = Digest::try_from(config_descriptor.digest())?;
        let config_bytes = read_blob(
            source,
            &config_digest,
            config_descriptor.size(),
            CONFIG_LIMIT,
        )?;
        let config = parse_image_config(config_bytes.clone())
            .map_err(|e| Error::from(e).in_member(&blob_member(&config_digest)))?;
        let image = ImageRecord::from_parts(&manifest, &config)?;

        let mut parent: Option<Digest> = None;
        for layer in &image.layers {
            let member = blob_member(&layer.digest);
            if media_type::is_foreign(&layer.media_type) && !source.contains(&member) {
                return Err(Error::UnsupportedArchive(format!(
                    "layer {} of {manifest_member} is a foreign layer, not in the layout",
                    layer.digest
                )));
            }
            let compression =
                media_type::layer_compression(&layer.media_type).ok_or_else(|| {
                    Error::UnsupportedArchive(format!(
                        "layer {} of {manifest_member} has media type {}, not a layer",
                        layer.digest, layer.media_type
                    ))
                })?;
            let opened = source.open(&member)?;
            pending.add_layer(LayerInput {
                member,
                reader: opened.reader,
                blob: LayerBlob::Exact {
                    digest: layer.digest.clone(),
                    size: layer.size,
                    compression,
                },
                diff_id: layer.diff_id.clone(),
                parent: parent.clone(),
            })?;
            parent = Some(layer.chain_id.clone());
        }
        pending.add_document(&config_digest, config_bytes);
        pending.add_document(&manifest_digest, manifest_bytes);
        let references = match reference {
            Some(Some(r)) => vec![r],
            Some(None) => vec![repository
                .without_tag()
                .without_digest()
                .with_digest(manifest_digest.clone())],
            None => Vec::new(),
        };
        pending.add_image(PendingImage {
            image,
            index: index_digest,
            references,
            synthesized: false,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn entries_are_named_by_image_name_full_ref_name_or_tag() {
        let repo = Reference::parse_raw("localhost/app").unwrap();
        let name = |pairs: &[(&str, &str)]| {
            entry_reference(Some(&annotations(pairs)), &repo, 0)
                .unwrap()
                .map(|r| r.to_string())
        };
        assert_eq!(
            name(&[
                (ANNOTATION_IMAGE_NAME, "alpine:3"),
                (ANNOTATION_REF_NAME, "3")
            ])
            .as_deref(),
            Some("docker.io/library/alpine:3")
        );
        assert_eq!(
            name(&[(ANNOTATION_REF_NAME, "docker.io/library/alpine:latest")]).as_deref(),
            Some("docker.io/library/alpine:latest")
        );
        assert_eq!(
            name(&[(ANNOTATION_REF_NAME, "1.0")]).as_deref(),
            Some("localhost/app:1.0")
        );
        assert_eq!(name(&[]), None);
        assert!(entry_reference(
            Some(&annotations(&[(ANNOTATION_REF_NAME, "bad tag!")])),
            &repo,
            0
        )
        .is_err());
    }
}
