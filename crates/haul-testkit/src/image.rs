//! Deterministic test images: layer specs, OCI layout writer, and the
//! expected root filesystem after applying the layers.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};

/// mtime of every tar entry (2023-11-14T22:13:20Z).
pub const FIXED_MTIME: u64 = 1_700_000_000;
/// `created` of every image config and history entry.
pub const FIXED_CREATED: &str = "2023-11-14T22:13:20Z";
/// OCI image manifest media type.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer media type.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer media type.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd-compressed layer.
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// The annotation naming a tag in an OCI layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

// ---------------------------------------------------------------- content

/// The bytes of a regular file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Literal bytes.
    Bytes(Vec<u8>),
    /// `size` pseudo-random bytes from `seed` (see [`random_reader`]).
    Random {
        /// Length in bytes.
        size: u64,
        /// Seed of the generator.
        seed: u64,
    },
}

impl Content {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Random { size, .. } => *size,
        }
    }

    /// True for empty content.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader over the bytes.
    pub fn reader(&self) -> Box<dyn Read + Send + '_> {
        match self {
            Content::Bytes(b) => Box::new(&b[..]),
            Content::Random { size, seed } => Box::new(random_reader(*seed, *size)),
        }
    }

    /// The bytes, in memory.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() as usize);
        self.reader().read_to_end(&mut out).expect("in-memory read");
        out
    }

    /// Hex SHA-256 of the bytes.
    pub fn sha256_hex(&self) -> String {
        let mut hasher = Sha256::new();
        io::copy(&mut self.reader(), &mut HashSink(&mut hasher)).expect("in-memory read");
        hex::encode(hasher.finalize())
    }
}

struct HashSink<'a>(&'a mut Sha256);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A stream of `size` deterministic pseudo-random bytes (splitmix64 from
/// `seed`, little-endian words); stable across versions of this crate.
pub fn random_reader(seed: u64, size: u64) -> RandomReader {
    RandomReader {
        state: seed,
        remaining: size,
        word: [0; 8],
        used: 8,
    }
}

/// `size` pseudo-random bytes from `seed`, in memory.
pub fn random_bytes(seed: u64, size: usize) -> Vec<u8> {
    Content::Random {
        size: size as u64,
        seed,
    }
    .to_vec()
}

/// See [`random_reader`].
pub struct RandomReader {
    state: u64,
    remaining: u64,
    word: [u8; 8],
    used: usize,
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(self.remaining.try_into().unwrap_or(usize::MAX));
        let mut written = 0;
        while written < n {
            if self.used == 8 {
                self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = self.state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                self.word = (z ^ (z >> 31)).to_le_bytes();
                self.used = 0;
            }
            let take = (8 - self.used).min(n - written);
            buf[written..written + take].copy_from_slice(&self.word[self.used..self.used + take]);
            self.used += take;
            written += take;
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

// ---------------------------------------------------------------- specs

/// One entry of a layer, written to the tar in the order given.
/// Paths are relative to the root (a leading `/` is ignored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A regular file.
    File {
        /// Path in the image.
        path: String,
        /// Permission bits, including setuid/setgid/sticky (e.g. `0o4755`).
        mode: u32,
        /// Owner.
        uid: u64,
        /// Group.
        gid: u64,
        /// The bytes.
        content: Content,
    },
    /// A directory.
    Dir {
        /// Path in the image.
        path: String,
        /// Permission bits (e.g. `0o1777`).
        mode: u32,
        /// Owner.
        uid: u64,
        /// Group.
        gid: u64,
    },
    /// A symbolic link (target kept verbatim, relative or absolute).
    Symlink {
        /// Path in the image.
        path: String,
        /// Link target.
        target: String,
    },
    /// A hard link to `target`, a path written earlier in the same layer.
    Hardlink {
        /// Path in the image.
        path: String,
        /// Path (in the image) of the file linked to.
        target: String,
    },
    /// A whiteout deleting `path` of lower layers (written as `DIR/.wh.NAME`).
    Whiteout {
        /// Path to delete.
        path: String,
    },
    /// An opaque marker hiding every lower-layer child of `dir`
    /// (written as `DIR/.wh..wh..opq`).
    Opaque {
        /// The directory made opaque.
        dir: String,
    },
}

impl Entry {
    /// A file with literal content, owned by 0:0.
    pub fn file(path: &str, mode: u32, content: impl Into<Vec<u8>>) -> Self {
        Entry::File {
            path: clean(path),
            mode,
            uid: 0,
            gid: 0,
            content: Content::Bytes(content.into()),
        }
    }

    /// A file of `size` pseudo-random bytes from `seed`, owned by 0:0.
    pub fn random(path: &str, mode: u32, size: u64, seed: u64) -> Self {
        Entry::File {
            path: clean(path),
            mode,
            uid: 0,
            gid: 0,
            content: Content::Random { size, seed },
        }
    }

    /// A directory owned by 0:0.
    pub fn dir(path: &str, mode: u32) -> Self {
        Entry::Dir {
            path: clean(path),
            mode,
            uid: 0,
            gid: 0,
        }
    }

    /// A symbolic link.
    pub fn symlink(path: &str, target: &str) -> Self {
        Entry::Symlink {
            path: clean(path),
            target: target.to_string(),
        }
    }

    /// A hard link to `target`.
    pub fn hardlink(path: &str, target: &str) -> Self {
        Entry::Hardlink {
            path: clean(path),
            target: clean(target),
        }
    }

    /// A whiteout of `path`.
    pub fn whiteout(path: &str) -> Self {
        Entry::Whiteout { path: clean(path) }
    }

    /// An opaque marker for `dir`.
    pub fn opaque(dir: &str) -> Self {
        Entry::Opaque { dir: clean(dir) }
    }

    /// Sets the owner of a file or directory (no effect on other entries).
    pub fn owned_by(mut self, new_uid: u64, new_gid: u64) -> Self {
        if let Entry::File { uid, gid, .. } | Entry::Dir { uid, gid, .. } = &mut self {
            *uid = new_uid;
            *gid = new_gid;
        }
        self
    }

    /// The path this entry occupies in the tar.
    pub fn tar_path(&self) -> String {
        match self {
            Entry::File { path, .. }
            | Entry::Dir { path, .. }
            | Entry::Symlink { path, .. }
            | Entry::Hardlink { path, .. } => path.clone(),
            Entry::Whiteout { path } => match path.rsplit_once('/') {
                Some((parent, name)) => format!("{parent}/.wh.{name}"),
                None => format!(".wh.{path}"),
            },
            Entry::Opaque { dir } => format!("{dir}/.wh..wh..opq"),
        }
    }
}

fn clean(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar (`...layer.v1.tar`).
    None,
    /// gzip, level 6 (`...layer.v1.tar+gzip`).
    #[default]
    Gzip,
    /// zstd, level 3 (`...layer.v1.tar+zstd`).
    Zstd,
}

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => MEDIA_TYPE_LAYER_TAR,
            Compression::Gzip => MEDIA_TYPE_LAYER_GZIP,
            Compression::Zstd => MEDIA_TYPE_LAYER_ZSTD,
        }
    }
}

/// A layer: entries in tar order and a compression.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerSpec {
    /// The entries, written in this order.
    pub entries: Vec<Entry>,
    /// Compression of the blob.
    pub compression: Compression,
}

impl LayerSpec {
    /// A gzip layer.
    pub fn gzip(entries: Vec<Entry>) -> Self {
        Self {
            entries,
            compression: Compression::Gzip,
        }
    }

    /// An uncompressed layer.
    pub fn uncompressed(entries: Vec<Entry>) -> Self {
        Self {
            entries,
            compression: Compression::None,
        }
    }

    /// The same layer compressed another way (the same diff, another blob).
    pub fn compressed(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Appends an entry.
    pub fn with(mut self, entry: Entry) -> Self {
        self.entries.push(entry);
        self
    }

    /// Writes the layer's uncompressed tar to `out` and returns `out`.
    pub fn write_tar<W: Write>(&self, out: W) -> io::Result<W> {
        write_layer_tar(self, out)
    }

    /// The layer's uncompressed tar, in memory.
    pub fn tar_bytes(&self) -> Vec<u8> {
        self.write_tar(Vec::new()).expect("in-memory write")
    }
}

/// An OS/architecture pair (and optional variant).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `v8`.
    pub variant: Option<String>,
}

impl Platform {
    /// A platform without variant.
    pub fn new(os: &str, architecture: &str) -> Self {
        Self {
            os: os.into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// `linux/amd64`.
    pub fn linux_amd64() -> Self {
        Self::new("linux", "amd64")
    }

    /// `linux/arm64/v8`.
    pub fn linux_arm64() -> Self {
        Self {
            variant: Some("v8".into()),
            ..Self::new("linux", "arm64")
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::json!({"os": self.os, "architecture": self.architecture});
        if let Some(variant) = &self.variant {
            value["variant"] = variant.clone().into();
        }
        value
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The image configuration's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageConfigSpec {
    /// Target platform.
    pub platform: Platform,
    /// `Env`, as `KEY=value`.
    pub env: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Entrypoint` (omitted when empty).
    pub entrypoint: Vec<String>,
    /// `WorkingDir` (omitted when `None`).
    pub working_dir: Option<String>,
    /// `Labels` (omitted when empty).
    pub labels: BTreeMap<String, String>,
}

impl Default for ImageConfigSpec {
    fn default() -> Self {
        Self {
            platform: Platform::linux_amd64(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: vec!["/bin/sh".into()],
            entrypoint: Vec::new(),
            working_dir: None,
            labels: BTreeMap::new(),
        }
    }
}

/// Builds a test image from layer specs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageBuilder {
    /// Layers, bottom first.
    pub layers: Vec<LayerSpec>,
    /// Config settings.
    pub config: ImageConfigSpec,
    /// Annotations on the image manifest.
    pub annotations: BTreeMap<String, String>,
}

/// A blob reference: media type, digest (`sha256:...`) and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    /// Media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

/// A layer as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltLayer {
    /// The blob (compressed as specified).
    pub blob: BlobRef,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// Size of the uncompressed tar.
    pub diff_size: u64,
}

/// An image as written to a layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    /// The manifest blob.
    pub manifest: BlobRef,
    /// The manifest bytes.
    pub manifest_bytes: Vec<u8>,
    /// The config blob.
    pub config: BlobRef,
    /// The config bytes.
    pub config_bytes: Vec<u8>,
    /// Layers, bottom first.
    pub layers: Vec<BuiltLayer>,
    /// The image's platform.
    pub platform: Platform,
}

impl BuiltImage {
    /// The chain IDs of the layers (chain(1) = diffID(1), chain(n) =
    /// sha256(chain(n-1) + " " + diffID(n))).
    pub fn chain_ids(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for layer in &self.layers {
            let next = match out.last() {
                None => layer.diff_id.clone(),
                Some(prev) => sha256_digest(format!("{prev} {}", layer.diff_id).as_bytes()),
            };
            out.push(next);
        }
        out
    }
}

/// A multi-platform index as written to a layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltIndex {
    /// The index blob.
    pub index: BlobRef,
    /// The index bytes.
    pub index_bytes: Vec<u8>,
    /// The images, in index order.
    pub images: Vec<BuiltImage>,
}

impl ImageBuilder {
    /// An empty image for linux/amd64.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a layer on top.
    pub fn layer(mut self, layer: LayerSpec) -> Self {
        self.layers.push(layer);
        self
    }

    /// Sets the platform.
    pub fn platform(mut self, platform: Platform) -> Self {
        self.config.platform = platform;
        self
    }

    /// Adds an environment variable (`KEY=value`).
    pub fn env(mut self, kv: &str) -> Self {
        self.config.env.push(kv.to_string());
        self
    }

    /// Sets `Cmd`.
    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.config.cmd = cmd.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Adds a label to the config.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.config.labels.insert(key.into(), value.into());
        self
    }

    /// The root filesystem expected after applying every layer.
    pub fn expected_rootfs(&self) -> Rootfs {
        Rootfs::from_layers(&self.layers)
    }

    /// Writes the image into the OCI layout at `dir` (created if needed;
    /// other tags in an existing layout are kept) and tags it `tag` in
    /// `index.json`.
    pub fn write_oci_layout(&self, dir: &Path, tag: &str) -> Result<BuiltImage> {
        init_layout(dir)?;
        let image = self.write_blobs(dir)?;
        add_to_index_json(dir, &image.manifest, tag)?;
        Ok(image)
    }

    /// Writes layers, config and manifest blobs (no `index.json` change)
    /// into an initialised layout.
    fn write_blobs(&self, dir: &Path) -> Result<BuiltImage> {
        let mut layers = Vec::new();
        for spec in &self.layers {
            layers.push(write_layer_blob(dir, spec)?);
        }
        let config_bytes = serde_json::to_vec(&self.config_json(&layers))?;
        let config = write_blob(dir, MEDIA_TYPE_CONFIG, &config_bytes)?;
        let mut manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": blob_json(&config),
            "layers": layers.iter().map(|l| blob_json(&l.blob)).collect::<Vec<_>>(),
        });
        if !self.annotations.is_empty() {
            manifest["annotations"] = serde_json::to_value(&self.annotations)?;
        }
        let manifest_bytes = serde_json::to_vec(&manifest)?;
        let manifest = write_blob(dir, MEDIA_TYPE_MANIFEST, &manifest_bytes)?;
        Ok(BuiltImage {
            manifest,
            manifest_bytes,
            config,
            config_bytes,
            layers,
            platform: self.config.platform.clone(),
        })
    }

    fn config_json(&self, layers: &[BuiltLayer]) -> serde_json::Value {
        let spec = &self.config;
        let mut exec = serde_json::json!({"Env": spec.env, "Cmd": spec.cmd});
        if !spec.entrypoint.is_empty() {
            exec["Entrypoint"] = spec.entrypoint.clone().into();
        }
        if let Some(wd) = &spec.working_dir {
            exec["WorkingDir"] = wd.clone().into();
        }
        if !spec.labels.is_empty() {
            exec["Labels"] = serde_json::to_value(&spec.labels).expect("labels serialise");
        }
        let mut config = serde_json::json!({
            "created": FIXED_CREATED,
            "architecture": spec.platform.architecture,
            "os": spec.platform.os,
            "config": exec,
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": (0..layers.len()).map(|i| serde_json::json!({
                "created": FIXED_CREATED,
                "created_by": format!("haul-testkit layer {i}"),
            })).collect::<Vec<_>>(),
        });
        if let Some(variant) = &spec.platform.variant {
            config["variant"] = variant.clone().into();
        }
        config
    }
}

/// Writes a multi-platform OCI image index into the layout at `dir`, tagged
/// `tag`. Each builder's platform is set to the one it is paired with.
pub fn write_oci_index_layout(
    dir: &Path,
    tag: &str,
    images: &[(Platform, ImageBuilder)],
) -> Result<BuiltIndex> {
    init_layout(dir)?;
    let mut built = Vec::new();
    for (platform, builder) in images {
        let builder = builder.clone().platform(platform.clone());
        built.push(builder.write_blobs(dir)?);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": built.iter().map(|image| {
            let mut entry = blob_json(&image.manifest);
            entry["platform"] = image.platform.to_json();
            entry
        }).collect::<Vec<_>>(),
    });
    let index_bytes = serde_json::to_vec(&index)?;
    let index = write_blob(dir, MEDIA_TYPE_INDEX, &index_bytes)?;
    add_to_index_json(dir, &index, tag)?;
    Ok(BuiltIndex {
        index,
        index_bytes,
        images: built,
    })
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Path of a blob in a layout.
pub fn blob_path(layout: &Path, digest: &str) -> std::path::PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    layout.join("blobs").join(algorithm).join(hex)
}

fn blob_json(blob: &BlobRef) -> serde_json::Value {
    serde_json::json!({"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size})
}

fn init_layout(dir: &Path) -> Result<()> {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).ctx(|| format!("creating {}", blobs.display()))?;
    let marker = dir.join("oci-layout");
    std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .ctx(|| format!("writing {}", marker.display()))?;
    let index = dir.join("index.json");
    if !index.exists() {
        let empty =
            serde_json::json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": []});
        std::fs::write(&index, serde_json::to_vec(&empty)?)
            .ctx(|| format!("writing {}", index.display()))?;
    }
    Ok(())
}

fn add_to_index_json(dir: &Path, target: &BlobRef, tag: &str) -> Result<()> {
    let path = dir.join("index.json");
    let bytes = std::fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
    let mut index: serde_json::Value = serde_json::from_slice(&bytes)?;
    let manifests = index["manifests"]
        .as_array_mut()
        .ok_or_else(|| Error::Image(format!("{}: no manifests array", path.display())))?;
    manifests.retain(|m| m["annotations"][ANNOTATION_REF_NAME] != tag);
    let mut entry = blob_json(target);
    entry["annotations"] = serde_json::json!({ ANNOTATION_REF_NAME: tag });
    manifests.push(entry);
    std::fs::write(&path, serde_json::to_vec(&index)?).ctx(|| format!("writing {}", path.display()))
}

fn write_blob(dir: &Path, media_type: &str, bytes: &[u8]) -> Result<BlobRef> {
    let digest = sha256_digest(bytes);
    let path = blob_path(dir, &digest);
    std::fs::write(&path, bytes).ctx(|| format!("writing {}", path.display()))?;
    Ok(BlobRef {
        media_type: media_type.to_string(),
        digest,
        size: bytes.len() as u64,
    })
}

/// A writer that hashes and counts what passes through.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn finish(self) -> (String, u64, W) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (digest, self.count, self.inner)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Streams the layer's tar (compressed as specified) into the layout,
/// hashing both the blob and the uncompressed diff on the way.
fn write_layer_blob(dir: &Path, spec: &LayerSpec) -> Result<BuiltLayer> {
    let blobs = dir.join("blobs").join("sha256");
    let tmp = tempfile::NamedTempFile::new_in(&blobs).ctx(|| "creating temp blob".into())?;
    let file = tmp.reopen().ctx(|| "opening temp blob".into())?;
    let outer = HashWriter::new(BufWriter::with_capacity(1 << 16, file));
    let io_err = |e: io::Error| Error::Io {
        context: "writing layer blob".into(),
        source: e,
    };
    let (diff_id, diff_size, outer) = match spec.compression {
        Compression::None => {
            let inner = write_layer_tar(spec, HashWriter::new(outer)).map_err(io_err)?;
            inner.finish()
        }
        Compression::Gzip => {
            let gz = flate2::GzBuilder::new()
                .mtime(0)
                .write(outer, flate2::Compression::new(6));
            let inner = write_layer_tar(spec, HashWriter::new(gz)).map_err(io_err)?;
            let (diff_id, diff_size, gz) = inner.finish();
            (diff_id, diff_size, gz.finish().map_err(io_err)?)
        }
        Compression::Zstd => {
            let zst = zstd::stream::Encoder::new(outer, 3).map_err(io_err)?;
            let inner = write_layer_tar(spec, HashWriter::new(zst)).map_err(io_err)?;
            let (diff_id, diff_size, zst) = inner.finish();
            (diff_id, diff_size, zst.finish().map_err(io_err)?)
        }
    };
    let (digest, size, buffered) = outer.finish();
    buffered
        .into_inner()
        .map_err(|e| io_err(e.into_error()))?
        .sync_all()
        .map_err(io_err)?;
    let path = blob_path(dir, &digest);
    tmp.persist(&path)
        .map_err(|e| io_err(e.error))
        .map(|_| ())?;
    Ok(BuiltLayer {
        blob: BlobRef {
            media_type: spec.compression.media_type().to_string(),
            digest,
            size,
        },
        diff_id,
        diff_size,
    })
}

fn base_header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(uid);
    header.set_gid(gid);
    header.set_size(size);
    header.set_mtime(FIXED_MTIME);
    header
}

/// Writes `spec` as an uncompressed tar (GNU headers, fixed mtimes, entries
/// in the given order) and returns the writer.
pub fn write_layer_tar<W: Write>(spec: &LayerSpec, out: W) -> io::Result<W> {
    let mut builder = tar::Builder::new(out);
    let modes: BTreeMap<&str, u32> = spec
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::File { path, mode, .. } => Some((path.as_str(), *mode)),
            _ => None,
        })
        .collect();
    for entry in &spec.entries {
        let name = entry.tar_path();
        match entry {
            Entry::File {
                mode,
                uid,
                gid,
                content,
                ..
            } => {
                let mut header =
                    base_header(tar::EntryType::Regular, *mode, *uid, *gid, content.len());
                builder.append_data(&mut header, &name, content.reader())?;
            }
            Entry::Dir { mode, uid, gid, .. } => {
                let mut header = base_header(tar::EntryType::Directory, *mode, *uid, *gid, 0);
                let with_slash = format!("{name}/");
                if with_slash.len() < 100 {
                    // Conventional `dir/` name, which `set_path` would trim.
                    let field = &mut header.as_old_mut().name;
                    field.fill(0);
                    field[..with_slash.len()].copy_from_slice(with_slash.as_bytes());
                    header.set_cksum();
                    builder.append(&header, io::empty())?;
                } else {
                    builder.append_data(&mut header, &name, io::empty())?;
                }
            }
            Entry::Symlink { target, .. } => {
                let mut header = base_header(tar::EntryType::Symlink, 0o777, 0, 0, 0);
                builder.append_link(&mut header, &name, target)?;
            }
            Entry::Hardlink { target, .. } => {
                let mode = modes.get(target.as_str()).copied().unwrap_or(0o644);
                let mut header = base_header(tar::EntryType::Link, mode, 0, 0, 0);
                builder.append_link(&mut header, &name, target)?;
            }
            Entry::Whiteout { .. } | Entry::Opaque { .. } => {
                let mut header = base_header(tar::EntryType::Regular, 0o644, 0, 0, 0);
                builder.append_data(&mut header, &name, io::empty())?;
            }
        }
    }
    builder.into_inner()
}

// ---------------------------------------------------------------- rootfs

/// A node of a root filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsNode {
    /// A directory.
    Dir {
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u64,
        /// Group.
        gid: u64,
    },
    /// A regular file.
    File {
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u64,
        /// Group.
        gid: u64,
        /// Length.
        size: u64,
        /// Hex SHA-256 of the content.
        sha256: String,
    },
    /// A symbolic link.
    Symlink {
        /// Its target, verbatim.
        target: String,
    },
}

/// A root filesystem as data: nodes by path (relative, no leading `/`, the
/// root itself not included) and groups of hard-linked paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rootfs {
    /// Every path and what is there.
    pub nodes: BTreeMap<String, FsNode>,
    /// Sets (of two or more paths) that are the same inode.
    pub link_groups: BTreeSet<BTreeSet<String>>,
}

impl Rootfs {
    /// The filesystem after applying `layers` in order with OCI semantics:
    /// whiteouts and opaque markers hide lower-layer content only; a
    /// non-directory replaces whatever was at its path; missing parent
    /// directories appear as `0755` root-owned directories.
    pub fn from_layers(layers: &[LayerSpec]) -> Rootfs {
        let mut nodes: BTreeMap<String, FsNode> = BTreeMap::new();
        let mut links: Vec<(String, String)> = Vec::new();
        for layer in layers {
            for entry in &layer.entries {
                match entry {
                    Entry::Whiteout { path } => remove_tree(&mut nodes, &mut links, path, true),
                    Entry::Opaque { dir } => remove_tree(&mut nodes, &mut links, dir, false),
                    _ => {}
                }
            }
            for entry in &layer.entries {
                let (path, node) = match entry {
                    Entry::File {
                        path,
                        mode,
                        uid,
                        gid,
                        content,
                    } => (
                        path,
                        FsNode::File {
                            mode: *mode,
                            uid: *uid,
                            gid: *gid,
                            size: content.len(),
                            sha256: content.sha256_hex(),
                        },
                    ),
                    Entry::Dir {
                        path,
                        mode,
                        uid,
                        gid,
                    } => (
                        path,
                        FsNode::Dir {
                            mode: *mode,
                            uid: *uid,
                            gid: *gid,
                        },
                    ),
                    Entry::Symlink { path, target } => (
                        path,
                        FsNode::Symlink {
                            target: target.clone(),
                        },
                    ),
                    Entry::Hardlink { path, target } => match nodes.get(target) {
                        Some(node) => {
                            let node = node.clone();
                            remove_tree(&mut nodes, &mut links, path, true);
                            links.push((path.clone(), target.clone()));
                            add_parents(&mut nodes, path);
                            nodes.insert(path.clone(), node);
                            continue;
                        }
                        None => continue,
                    },
                    Entry::Whiteout { .. } | Entry::Opaque { .. } => continue,
                };
                let merge_dir = matches!(node, FsNode::Dir { .. })
                    && matches!(nodes.get(path), Some(FsNode::Dir { .. }));
                if !merge_dir {
                    remove_tree(&mut nodes, &mut links, path, true);
                }
                add_parents(&mut nodes, path);
                nodes.insert(path.clone(), node);
            }
        }
        Rootfs {
            nodes,
            link_groups: groups_from_pairs(&links),
        }
    }

    /// Reads a real directory tree (e.g. an unpacked rootfs).
    pub fn read_dir(root: &Path) -> Result<Rootfs> {
        use std::os::unix::fs::MetadataExt;
        let mut rootfs = Rootfs::default();
        let mut inodes: BTreeMap<(u64, u64), BTreeSet<String>> = BTreeMap::new();
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let dir = if rel.is_empty() {
                root.to_path_buf()
            } else {
                root.join(&rel)
            };
            let entries = std::fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))?;
            for entry in entries {
                let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let full = entry.path();
                let meta =
                    std::fs::symlink_metadata(&full).ctx(|| format!("stat {}", full.display()))?;
                let mode = meta.mode() & 0o7777;
                let node = if meta.file_type().is_symlink() {
                    let target =
                        std::fs::read_link(&full).ctx(|| format!("readlink {}", full.display()))?;
                    FsNode::Symlink {
                        target: target.to_string_lossy().into_owned(),
                    }
                } else if meta.is_dir() {
                    stack.push(path.clone());
                    FsNode::Dir {
                        mode,
                        uid: meta.uid().into(),
                        gid: meta.gid().into(),
                    }
                } else {
                    if meta.nlink() > 1 {
                        inodes
                            .entry((meta.dev(), meta.ino()))
                            .or_default()
                            .insert(path.clone());
                    }
                    let mut hasher = Sha256::new();
                    let mut file =
                        File::open(&full).ctx(|| format!("opening {}", full.display()))?;
                    io::copy(&mut file, &mut HashSink(&mut hasher))
                        .ctx(|| format!("reading {}", full.display()))?;
                    FsNode::File {
                        mode,
                        uid: meta.uid().into(),
                        gid: meta.gid().into(),
                        size: meta.len(),
                        sha256: hex::encode(hasher.finalize()),
                    }
                };
                rootfs.nodes.insert(path, node);
            }
        }
        rootfs.link_groups = inodes.into_values().filter(|g| g.len() > 1).collect();
        Ok(rootfs)
    }

    /// Differences between `self` (expected) and `actual`, one line each;
    /// empty when they match. Owners are compared only if `check_owner`.
    pub fn diff(&self, actual: &Rootfs, check_owner: bool) -> Vec<String> {
        let mut out = Vec::new();
        for (path, want) in &self.nodes {
            match actual.nodes.get(path) {
                None => out.push(format!("missing: {path} ({want:?})")),
                Some(got) => {
                    let (want, got) = if check_owner {
                        (want.clone(), got.clone())
                    } else {
                        (without_owner(want), without_owner(got))
                    };
                    if want != got {
                        out.push(format!("differs: {path}: expected {want:?}, found {got:?}"));
                    }
                }
            }
        }
        for path in actual.nodes.keys() {
            if !self.nodes.contains_key(path) {
                out.push(format!("unexpected: {path}"));
            }
        }
        if self.link_groups != actual.link_groups {
            out.push(format!(
                "hard links: expected {:?}, found {:?}",
                self.link_groups, actual.link_groups
            ));
        }
        out
    }
}

fn without_owner(node: &FsNode) -> FsNode {
    let mut node = node.clone();
    if let FsNode::Dir { uid, gid, .. } | FsNode::File { uid, gid, .. } = &mut node {
        *uid = 0;
        *gid = 0;
    }
    node
}

fn remove_tree(
    nodes: &mut BTreeMap<String, FsNode>,
    links: &mut Vec<(String, String)>,
    path: &str,
    including_self: bool,
) {
    let prefix = format!("{path}/");
    let doomed = |p: &str| (including_self && p == path) || p.starts_with(&prefix);
    nodes.retain(|p, _| !doomed(p));
    links.retain(|(a, b)| !doomed(a) && !doomed(b));
}

fn add_parents(nodes: &mut BTreeMap<String, FsNode>, path: &str) {
    let mut parent = path;
    while let Some((p, _)) = parent.rsplit_once('/') {
        nodes.entry(p.to_string()).or_insert(FsNode::Dir {
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
        parent = p;
    }
}

fn groups_from_pairs(pairs: &[(String, String)]) -> BTreeSet<BTreeSet<String>> {
    let mut groups: Vec<BTreeSet<String>> = Vec::new();
    for (a, b) in pairs {
        let hits: Vec<usize> = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.contains(a) || g.contains(b))
            .map(|(i, _)| i)
            .collect();
        let mut merged: BTreeSet<String> = [a.clone(), b.clone()].into();
        for &i in hits.iter().rev() {
            merged.extend(groups.remove(i));
        }
        groups.push(merged);
    }
    groups.into_iter().collect()
}

// ---------------------------------------------------------------- samples

/// A 1 MiB, for the "big" file of the sample image.
pub const MIB: u64 = 1 << 20;

/// The standard three-layer test image:
///
/// 1. (gzip) directories, empty / small / ~1 MiB / 0600 / 0755 / setuid
///    04755 files, a sticky 01777 `tmp`, relative and absolute symlinks, a
///    hard link, a file and a directory owned by 1000:1000, and content the
///    next layer removes;
/// 2. (gzip) whiteouts of a file (`data/to-delete`) and a directory tree
///    (`gone`), an opaque directory (`opq`) with new content, a replaced file;
/// 3. (uncompressed) a path longer than 100 bytes and a non-ASCII name.
pub fn sample_image() -> ImageBuilder {
    let long_name = format!("{}-end.txt", "long".repeat(30));
    ImageBuilder::new()
        .layer(LayerSpec::gzip(vec![
            Entry::dir("etc", 0o755),
            Entry::file("etc/hostname", 0o644, "haul-lower\n"),
            Entry::file(
                "etc/os-release",
                0o644,
                "ID=haul\nNAME=\"haul test image\"\n",
            ),
            Entry::dir("data", 0o755),
            Entry::file("data/empty", 0o644, ""),
            Entry::random("data/small.bin", 0o644, 1000, 1),
            Entry::random("data/big.bin", 0o644, MIB, 2),
            Entry::random("data/secret", 0o600, 333, 3),
            Entry::file("data/to-delete", 0o644, "bye\n"),
            Entry::symlink("data/link-rel", "small.bin"),
            Entry::symlink("data/link-abs", "/data/big.bin"),
            Entry::hardlink("data/hard", "data/small.bin"),
            Entry::dir("bin", 0o755),
            Entry::random("bin/tool", 0o755, 4096, 4),
            Entry::random("bin/suid", 0o4755, 100, 5),
            Entry::dir("tmp", 0o1777),
            Entry::dir("gone", 0o755),
            Entry::file("gone/a", 0o644, "a\n"),
            Entry::dir("gone/sub", 0o700),
            Entry::file("gone/sub/b", 0o644, "b\n"),
            Entry::dir("opq", 0o755),
            Entry::file("opq/old1", 0o644, "old1\n"),
            Entry::file("opq/old2", 0o644, "old2\n"),
            Entry::dir("home", 0o755),
            Entry::dir("home/user", 0o750).owned_by(1000, 1000),
            Entry::file("home/user/notes", 0o640, "mine\n").owned_by(1000, 1000),
        ]))
        .layer(LayerSpec::gzip(vec![
            Entry::whiteout("data/to-delete"),
            Entry::whiteout("gone"),
            Entry::dir("opq", 0o755),
            Entry::opaque("opq"),
            Entry::file("opq/new", 0o644, "fresh\n"),
            Entry::file("etc/hostname", 0o644, "haul-upper\n"),
            Entry::dir("var", 0o755),
            Entry::dir("var/empty-dir", 0o755),
        ]))
        .layer(LayerSpec::uncompressed(vec![
            Entry::dir("deep", 0o755),
            Entry::random(&format!("deep/{long_name}"), 0o644, 2000, 6),
            Entry::file("data/unicodé-名前.txt", 0o644, "ünïcödé\n"),
        ]))
        .env("HAUL_SAMPLE=1")
        .cmd(&["/bin/tool", "--help"])
        .label("org.opencontainers.image.title", "haul-testkit sample")
}

/// Two platform variants of [`sample_image`] (linux/amd64 and
/// linux/arm64/v8), each with one more small layer naming its architecture,
/// for [`write_oci_index_layout`].
pub fn sample_platform_images() -> Vec<(Platform, ImageBuilder)> {
    [Platform::linux_amd64(), Platform::linux_arm64()]
        .into_iter()
        .map(|platform| {
            let builder = sample_image().layer(LayerSpec::gzip(vec![Entry::file(
                "etc/arch",
                0o644,
                format!("{}\n", platform.architecture),
            )]));
            (platform, builder)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_content_is_deterministic() {
        assert_eq!(random_bytes(7, 100), random_bytes(7, 100));
        assert_ne!(random_bytes(7, 100), random_bytes(8, 100));
        assert_eq!(&random_bytes(7, 100)[..50], &random_bytes(7, 50)[..]);
        // splitmix64(0) starts with 0xE220A8397B1DCDAF: pinned so that
        // content (and so every digest) stays stable.
        assert_eq!(
            random_bytes(0, 8),
            0xE220_A839_7B1D_CDAFu64.to_le_bytes().to_vec()
        );
        // Odd read sizes give the same stream.
        let mut reader = random_reader(7, 100);
        let mut chunked = Vec::new();
        let mut buf = [0u8; 3];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            chunked.extend_from_slice(&buf[..n]);
        }
        assert_eq!(chunked, random_bytes(7, 100));
    }

    #[test]
    fn tar_is_deterministic_and_readable() {
        let layer = &sample_image().layers[0];
        let a = layer.tar_bytes();
        assert_eq!(a, layer.tar_bytes());
        let mut archive = tar::Archive::new(&a[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), layer.entries.len());
        assert_eq!(names[0], "etc/");
        assert!(names.iter().any(|n| n == "data/link-abs"));
    }

    #[test]
    fn expected_rootfs_applies_whiteouts() {
        let fs = sample_image().expected_rootfs();
        assert!(!fs.nodes.contains_key("data/to-delete"));
        assert!(!fs
            .nodes
            .keys()
            .any(|p| p == "gone" || p.starts_with("gone/")));
        assert!(!fs.nodes.contains_key("opq/old1"));
        assert!(fs.nodes.contains_key("opq/new"));
        assert!(fs.nodes.contains_key("data/small.bin"));
        let group: BTreeSet<String> =
            ["data/hard".to_string(), "data/small.bin".to_string()].into();
        assert!(fs.link_groups.contains(&group));
        assert!(!fs.nodes.keys().any(|p| p.contains(".wh.")));
    }
}
