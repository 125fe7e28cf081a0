//! Importing an archive's images all or nothing: blobs go to ingest files
//! and layers to staging directories while the archive is read and
//! verified; [`Pending::commit`] makes them part of the store only once
//! everything checked out. Dropping a [`Pending`] leaves nothing behind.
//!
//! No lock is held across the archive: each blob's ingest lock is released
//! as soon as the blob is verified (it is parked, see
//! [`Ingest::park`]), so two loads sharing blobs in any order both finish.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};

use haul_oci::{Compression, Digest, Digester, Reference};
use haul_store::{
    chain_id, ImageRecord, Ingest, IngestOutcome, ParkedBlob, RefTarget, StagedLayer, Store,
    UnpackOptions,
};

use super::{Error, LoadedImage, Result};

/// How a layer's blob relates to the archive member holding it.
pub(crate) enum LayerBlob {
    /// An OCI blob, stored as it is: it must have this digest and size.
    Exact {
        digest: Digest,
        size: u64,
        compression: Compression,
    },
    /// A docker-archive `layer.tar`: the blob is its (inflated) tar, whose
    /// digest is the diffID.
    Diff,
}

/// One layer to import.
pub(crate) struct LayerInput {
    /// The archive member, for messages.
    pub member: String,
    /// Its bytes.
    pub reader: Box<dyn Read + Send>,
    pub blob: LayerBlob,
    /// The diffID from the image config.
    pub diff_id: Digest,
    /// Chain ID of the layer beneath.
    pub parent: Option<Digest>,
}

/// Where a layer's blob bytes go while they are verified.
enum Sink {
    Ingest(Box<Ingest>),
    Hash(Box<Digester>),
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Ingest(ingest) => ingest.write_all(bytes).map_err(io::Error::other),
            Sink::Hash(digester) => {
                digester.update(bytes);
                Ok(())
            }
        }
    }

    fn digest(&mut self) -> Result<Digest> {
        match self {
            Sink::Ingest(ingest) => Ok(ingest.digest_state()?.finish()),
            Sink::Hash(digester) => Ok(digester.as_ref().clone().finish()),
        }
    }
}

/// Aborts an ingest that was not handed over (nothing partial is left).
struct SinkGuard(Option<Sink>);

impl SinkGuard {
    fn sink(&mut self) -> &mut Sink {
        self.0.as_mut().expect("present until taken")
    }
}

impl Drop for SinkGuard {
    fn drop(&mut self) {
        if let Some(Sink::Ingest(ingest)) = self.0.take() {
            let _ = ingest.abort();
        }
    }
}

/// Passes what it reads to a [`Sink`], counting it.
struct Tee<'a, R> {
    inner: R,
    sink: &'a mut Sink,
    bytes: u64,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sink.write(&buf[..n])?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// An image of the archive and the references to give it.
pub(crate) struct PendingImage {
    /// Its record.
    pub(crate) image: ImageRecord,
    /// The index it was selected from, if any (the references keep it).
    pub(crate) index: Option<Digest>,
    /// The references to point at it.
    pub(crate) references: Vec<Reference>,
    /// Whether haul wrote its manifest (a docker-archive has none): then a
    /// stored image with the same config stands for it, as `docker load`
    /// keeps the image it already has.
    pub(crate) synthesized: bool,
}

/// Everything read and verified but not yet committed.
pub(crate) struct Pending<'s> {
    store: &'s Store,
    unpack: UnpackOptions,
    /// Blobs verified and parked, waiting for the commit.
    blobs: Vec<ParkedBlob>,
    /// Blob digest -> (diffID, size), for every layer blob verified so far.
    verified: HashMap<Digest, (Digest, u64)>,
    /// Configs, manifests and indexes, verified, in order.
    documents: Vec<(Digest, Vec<u8>)>,
    /// Layers staged, in order (each after its parent): (layer, parent).
    layers: Vec<(StagedLayer, Option<Digest>)>,
    staged_chains: HashSet<Digest>,
    /// Images and the references to give them.
    images: Vec<PendingImage>,
    /// Referrers found in the archive: (subject, record), a referrer
    /// before its own.
    referrers: Vec<(Digest, haul_store::StoredReferrer)>,
}

impl<'s> Pending<'s> {
    pub(crate) fn new(store: &'s Store, unpack: UnpackOptions) -> Self {
        Pending {
            store,
            unpack,
            blobs: Vec::new(),
            verified: HashMap::new(),
            documents: Vec::new(),
            layers: Vec::new(),
            staged_chains: HashSet::new(),
            images: Vec::new(),
            referrers: Vec::new(),
        }
    }

    /// Reads a blob that is not a layer (of a referrer) from `reader`
    /// into an ingest file, verified and parked for the commit; never
    /// held in memory.
    pub(crate) fn add_blob(
        &mut self,
        member: &str,
        mut reader: Box<dyn Read + Send>,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        if self.store.has_blob(digest) || self.verified.contains_key(digest) {
            return Ok(());
        }
        let IngestOutcome::Writer(mut ingest) = self.store.ingest(digest)? else {
            return Ok(());
        };
        if ingest.offset() > 0 {
            ingest.reset()?;
        }
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let n = reader
                .read(&mut buffer)
                .map_err(|e| read_error(member, e))?;
            if n == 0 {
                break;
            }
            ingest.write_all(&buffer[..n])?;
        }
        let parked = ingest
            .park(size, digest)
            .map_err(|e| Error::from(e).in_member(member))?;
        self.blobs.push(parked);
        Ok(())
    }

    /// Keeps a referrer of `subject` for the commit (its blobs were added
    /// with [`Pending::add_blob`] and [`Pending::add_document`]).
    pub(crate) fn add_referrer(&mut self, subject: Digest, referrer: haul_store::StoredReferrer) {
        if !self
            .referrers
            .iter()
            .any(|(_, r)| r.digest == referrer.digest)
        {
            self.referrers.push((subject, referrer));
        }
    }

    /// Keeps a config, manifest or index (already verified by the caller)
    /// for the commit.
    pub(crate) fn add_document(&mut self, digest: &Digest, bytes: Vec<u8>) {
        if !self.documents.iter().any(|(d, _)| d == digest) {
            self.documents.push((digest.clone(), bytes));
        }
    }

    /// Keeps an image and its references for the commit.
    pub(crate) fn add_image(&mut self, image: PendingImage) {
        let same = |other: &PendingImage| {
            other.image.manifest_digest == image.image.manifest_digest && other.index == image.index
        };
        match self.images.iter_mut().find(|other| same(other)) {
            Some(other) => {
                for r in image.references {
                    if !other.references.contains(&r) {
                        other.references.push(r);
                    }
                }
            }
            None => self.images.push(image),
        }
    }

    /// The stored image to point an archive's image's references at: its
    /// own record, or for a manifest haul wrote, a stored image of the same
    /// config that is whole, if there is one.
    fn image_to_keep(&self, pending: &PendingImage) -> Result<Option<ImageRecord>> {
        let whole = |image: &ImageRecord| -> Result<bool> {
            Ok(self.store.missing_blobs(image).is_empty()
                && self.store.missing_layers(image)?.is_empty())
        };
        if let Some(own) = self.store.get_image(&pending.image.manifest_digest)? {
            if whole(&own)? {
                return Ok(Some(own));
            }
        }
        if !pending.synthesized {
            return Ok(None);
        }
        let mut candidates = Vec::new();
        for image in self.store.list_image_records()? {
            if image.id == pending.image.id && whole(&image)? {
                candidates.push(image);
            }
        }
        candidates.sort_by_key(|image| image.added);
        Ok(candidates.pop())
    }

    fn layer_present(&self, chain: &Digest) -> Result<bool> {
        Ok(self.staged_chains.contains(chain) || self.store.get_layer(chain)?.is_some())
    }

    /// Reads one layer: checks its blob digest (and size) and its diffID,
    /// writing the blob to an ingest file if the store lacks it and staging
    /// the unpacked layer if the store lacks its chain. Returns the blob's
    /// digest and size.
    pub(crate) fn add_layer(&mut self, input: LayerInput) -> Result<(Digest, u64)> {
        let member = input.member.clone();
        self.add_layer_inner(input)
            .map_err(|e| e.in_member(&member))
    }

    fn add_layer_inner(&mut self, input: LayerInput) -> Result<(Digest, u64)> {
        let LayerInput {
            member,
            reader,
            blob,
            diff_id,
            parent,
        } = input;
        let chain = chain_id(parent.as_ref(), &diff_id);
        let (blob_digest, expected_size, compression) = match &blob {
            LayerBlob::Exact {
                digest,
                size,
                compression,
            } => (digest.clone(), Some(*size), *compression),
            LayerBlob::Diff => (diff_id.clone(), None, Compression::Uncompressed),
        };
        if let Some((known_diff, size)) = self.verified.get(&blob_digest) {
            if known_diff == &diff_id && self.layer_present(&chain)? {
                return Ok((blob_digest, *size));
            }
        }

        let blob_needed =
            !self.store.has_blob(&blob_digest) && !self.verified.contains_key(&blob_digest);
        let mut sink = Sink::Hash(Box::new(Digester::new(blob_digest.algorithm())));
        if blob_needed {
            if let IngestOutcome::Writer(mut ingest) = self.store.ingest(&blob_digest)? {
                if ingest.offset() > 0 {
                    ingest.reset()?;
                }
                sink = Sink::Ingest(Box::new(ingest));
            }
        }
        let mut guard = SinkGuard(Some(sink));
        let unpack_needed = !self.layer_present(&chain)?;

        // The blob stream: the member as it is (OCI), or inflated if it was
        // compressed (a docker-archive stores the plain tar).
        let blob_stream: Box<dyn Read + Send> = match blob {
            LayerBlob::Exact { .. } => reader,
            LayerBlob::Diff => haul_store::decompressing_reader(reader, Compression::Uncompressed)
                .map_err(|e| read_error(&member, e))?,
        };
        let mut tee = Tee {
            inner: blob_stream,
            sink: guard.sink(),
            bytes: 0,
        };
        let unpacked: Result<(Option<StagedLayer>, Digest)> = (|| {
            let layer_stream = haul_store::decompressing_reader(&mut tee, compression)
                .map_err(|e| read_error(&member, e))?;
            if unpack_needed {
                // A compressed blob may expand only so far (bombs); a plain
                // tar is its own size.
                let options = match expected_size {
                    Some(size) => self.unpack.for_compressed_size(size),
                    None => self.unpack.clone(),
                };
                let staged = self.store.stage_layer(layer_stream, None, &options)?;
                let actual = staged.diff_id().clone();
                Ok((Some(staged), actual))
            } else {
                let mut digester = Digester::sha256();
                let mut layer_stream = layer_stream;
                io::copy(&mut layer_stream, &mut digester).map_err(|e| read_error(&member, e))?;
                Ok((None, digester.finish()))
            }
        })();
        // What follows the tar (or the compressed stream) is part of the blob.
        let drained = io::copy(&mut tee, &mut io::sink());
        let size = tee.bytes;
        let actual_blob = guard.sink().digest();

        // The blob first: a corrupt blob explains any other failure.
        if let (Ok(actual), Ok(_)) = (&actual_blob, &drained) {
            if actual != &blob_digest {
                return Err(match blob {
                    LayerBlob::Diff => Error::DiffIdMismatch {
                        member,
                        expected: diff_id,
                        actual: actual.clone(),
                    },
                    LayerBlob::Exact { .. } => Error::DigestMismatch {
                        member,
                        expected: blob_digest,
                        actual: actual.clone(),
                    },
                });
            }
        }
        let (staged, actual_diff) = unpacked?;
        drained.map_err(|e| read_error(&member, e))?;
        actual_blob?;
        if actual_diff != diff_id {
            return Err(Error::DiffIdMismatch {
                member,
                expected: diff_id,
                actual: actual_diff,
            });
        }
        if let Some(expected) = expected_size {
            if size != expected {
                return Err(Error::SizeMismatch {
                    member,
                    expected,
                    actual: size,
                });
            }
        }

        if let Some(Sink::Ingest(ingest)) = guard.0.take() {
            self.blobs.push(ingest.park(size, &blob_digest)?);
        }
        self.verified
            .insert(blob_digest.clone(), (diff_id.clone(), size));
        if let Some(staged) = staged {
            self.staged_chains.insert(chain);
            self.layers.push((staged, parent));
        }
        Ok((blob_digest, size))
    }

    /// Whether `reference` already names a whole stored image of config `id`.
    fn names_whole_image_of(&self, reference: &Reference, id: &Digest) -> Result<bool> {
        let Some(resolved) = self.store.resolve(reference)? else {
            return Ok(false);
        };
        let image = resolved.image;
        Ok(&image.id == id
            && self.store.missing_blobs(&image).is_empty()
            && self.store.missing_layers(&image)?.is_empty())
    }

    /// Makes everything part of the store: blobs, documents, layers (in
    /// order), image records, then references. An image already stored
    /// whole keeps its record (see [`PendingImage::synthesized`]).
    pub(crate) fn commit(mut self) -> Result<Vec<LoadedImage>> {
        for parked in std::mem::take(&mut self.blobs) {
            parked.commit()?;
        }
        for (digest, bytes) in std::mem::take(&mut self.documents) {
            if !self.store.has_blob(&digest) {
                self.store.put_blob_bytes(&bytes, &digest)?;
            }
        }
        for (staged, parent) in std::mem::take(&mut self.layers) {
            self.store.commit_staged(staged, parent.as_ref())?;
        }
        let subjects: HashSet<Digest> = self
            .images
            .iter()
            .flat_map(|p| std::iter::once(p.image.manifest_digest.clone()).chain(p.index.clone()))
            .collect();
        let mut loaded = Vec::new();
        for pending in std::mem::take(&mut self.images) {
            let kept = match self.image_to_keep(&pending)? {
                Some(kept) => kept,
                None => {
                    self.store.put_image(&pending.image)?;
                    pending.image
                }
            };
            let target = RefTarget {
                manifest: kept.manifest_digest.clone(),
                index: pending.index,
            };
            let mut tagged = Vec::new();
            for reference in pending.references {
                if pending.synthesized && self.names_whole_image_of(&reference, &kept.id)? {
                    // `docker load` of an image it has changes nothing: the
                    // reference keeps the manifest it names.
                    tagged.push((reference, None));
                    continue;
                }
                let previous = self.store.tag(&reference, &target)?;
                let previous_id = match previous {
                    Some(previous) => self.store.get_image(&previous.manifest)?.map(|i| i.id),
                    None => None,
                };
                tagged.push((reference, previous_id.filter(|id| id != &kept.id)));
            }
            loaded.push(LoadedImage {
                image: kept,
                references: tagged,
            });
        }
        // Referrers of what was loaded (and theirs); others describe
        // nothing the store holds.
        let mut subjects = subjects;
        for image in &loaded {
            subjects.insert(image.image.manifest_digest.clone());
        }
        let mut referrers = std::mem::take(&mut self.referrers);
        loop {
            let before = referrers.len();
            let (ready, rest): (Vec<_>, Vec<_>) = referrers
                .into_iter()
                .partition(|(subject, _)| subjects.contains(subject));
            for (subject, referrer) in ready {
                subjects.insert(referrer.digest.clone());
                self.store.add_referrer(&subject, &referrer)?;
            }
            referrers = rest;
            if referrers.len() == before || referrers.is_empty() {
                break;
            }
        }
        Ok(loaded)
    }
}

fn read_error(member: &str, e: io::Error) -> Error {
    Error::Member {
        member: member.to_owned(),
        source: Box::new(Error::Io {
            path: member.into(),
            source: e,
        }),
    }
}
