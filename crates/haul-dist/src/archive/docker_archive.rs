//! docker-archive: `docker save`'s tar (see the [module docs](super)).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use haul_oci::{media_type, parse_image_config, parse_manifest, Digest, Platform, Reference};
use haul_store::{ImageRecord, Store};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::import::{LayerBlob, LayerInput, Pending, PendingImage};
use super::source::{clean_member_path, read_small, Source};
use super::tar_writer::TarWriter;
use super::{
    open_layer_blob, resolve_for_save, saved_images, Error, HashingReader, Output, Result,
    SaveReport, CONFIG_LIMIT, METADATA_LIMIT,
};

/// One image of `manifest.json`, spelled as Docker spells it.
#[derive(Debug, Serialize, Deserialize)]
struct ManifestItem {
    #[serde(rename = "Config")]
    config: String,
    /// `null` in archives of untagged images written by Docker.
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Keys of the image config kept in the top layer's legacy `json`.
const V1_TOP_KEYS: [&str; 12] = [
    "architecture",
    "author",
    "comment",
    "config",
    "container",
    "container_config",
    "created",
    "docker_version",
    "os",
    "os.version",
    "os.features",
    "variant",
];

/// The legacy v1 ID and `json` of each layer of an image: the ID is the
/// SHA-256 of the layer's v1 metadata together with its chain ID and parent
/// ID, so a base layer shared by images gets one ID (and is written once),
/// while the top layer, which carries the image's config, is the image's
/// own.
fn v1_layers(config: &Map<String, Value>, image: &ImageRecord) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let last = image.layers.len().saturating_sub(1);
    for (i, layer) in image.layers.iter().enumerate() {
        let mut v1 = Map::new();
        if i == last {
            for key in V1_TOP_KEYS {
                if let Some(value) = config.get(key) {
                    v1.insert(key.to_owned(), value.clone());
                }
            }
        } else {
            v1.insert("created".into(), "1970-01-01T00:00:00Z".into());
            if let Some(os) = config.get("os") {
                v1.insert("os".into(), os.clone());
            }
        }
        if let Some((parent, _)) = out.last() {
            v1.insert("parent".into(), parent.clone().into());
        }
        let mut keyed = v1.clone();
        keyed.insert("layer_id".into(), layer.chain_id.to_string().into());
        let id = Digest::sha256_of(&serde_json::to_vec(&keyed).expect("JSON values serialise"))
            .hex()
            .to_owned();
        v1.insert("id".into(), id.clone().into());
        let json = serde_json::to_vec(&v1).expect("JSON values serialise");
        out.push((id, json));
    }
    out
}

/// Writes the images `references` name into a docker-archive at `output`
/// (replaced if it exists, written to a temporary sibling first). Layers are
/// written uncompressed, inflated from the stored blobs and checked against
/// their diffIDs on the way.
pub fn save_docker_archive(
    store: &Store,
    references: &[Reference],
    output: &Path,
) -> Result<SaveReport> {
    save_docker_archive_for(store, references, None, output)
}

/// [`save_docker_archive`] of the images of `platform` (`--platform`): each reference's
/// own image or a stored platform of its index.
pub fn save_docker_archive_for(
    store: &Store,
    references: &[Reference],
    platform: Option<&Platform>,
    output: &Path,
) -> Result<SaveReport> {
    let _lease = store.lease()?;
    let images = resolve_for_save(store, references, platform)?;
    let out = Output::file(output)?;
    let file = out.open_file()?;
    let mut tar = TarWriter::new(file, out.path());
    let mut written: HashSet<String> = HashSet::new();
    let mut manifest: Vec<ManifestItem> = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();

    for (resolved, refs) in &images {
        let image = &resolved.image;
        let shown = refs[0].familiar();
        let config_bytes = store.read_blob_limited(&image.id, CONFIG_LIMIT)?;
        let config: Map<String, Value> =
            serde_json::from_slice(&config_bytes).map_err(|e| Error::Invalid {
                what: format!("image config {} of {shown}", image.id),
                reason: e.to_string(),
            })?;
        let v1 = v1_layers(&config, image);
        let mut layer_paths = Vec::new();
        for (layer, (v1_id, v1_json)) in image.layers.iter().zip(&v1) {
            let path = format!("{v1_id}/layer.tar");
            layer_paths.push(path.clone());
            if !written.insert(v1_id.clone()) {
                continue;
            }
            tar.directory(v1_id)?;
            tar.bytes(&format!("{v1_id}/VERSION"), b"1.0")?;
            tar.bytes(&format!("{v1_id}/json"), v1_json)?;
            let (file, blob, media_type) = open_layer_blob(store, &shown, layer, true)?;
            let described = format!("layer {} of {shown} (blob {blob})", layer.diff_id);
            let declared =
                media_type::layer_compression(&media_type).unwrap_or(haul_oci::Compression::Gzip);
            let inflated =
                haul_store::decompressing_reader(file, declared).map_err(|e| Error::Member {
                    member: described.clone(),
                    source: Box::new(Error::Io {
                        path: store.blob_path(&blob),
                        source: e,
                    }),
                })?;
            let mut hashing = HashingReader::new(inflated, haul_oci::Algorithm::Sha256);
            let read_error = |e: std::io::Error| Error::Member {
                member: described.clone(),
                source: Box::new(Error::Io {
                    path: store.blob_path(&blob),
                    source: e,
                }),
            };
            tar.stream(&path, &mut hashing, None, &read_error)?;
            let actual = hashing.finish();
            if actual != layer.diff_id {
                return Err(Error::DiffIdMismatch {
                    member: format!("blob {blob} of {shown}"),
                    expected: layer.diff_id.clone(),
                    actual,
                });
            }
        }
        let config_path = format!("{}.json", image.id.hex());
        tar.bytes(&config_path, &config_bytes)?;

        let mut repo_tags = Vec::new();
        for reference in refs {
            let Some(tag) = reference.tag().filter(|_| reference.digest().is_none()) else {
                continue;
            };
            repo_tags.push(reference.familiar());
            if let Some((top, _)) = v1.last() {
                repositories
                    .entry(reference.familiar_name().to_owned())
                    .or_default()
                    .insert(tag.to_owned(), top.clone());
            }
        }
        manifest.push(ManifestItem {
            config: config_path,
            repo_tags: Some(repo_tags),
            layers: layer_paths,
        });
    }

    let mut manifest_json = serde_json::to_vec(&manifest).expect("manifest.json serialises");
    manifest_json.push(b'\n');
    tar.bytes("manifest.json", &manifest_json)?;
    if !repositories.is_empty() {
        let mut repos_json = serde_json::to_vec(&repositories).expect("repositories serialises");
        repos_json.push(b'\n');
        tar.bytes("repositories", &repos_json)?;
    }
    tar.finish()?;
    out.persist()?;
    Ok(SaveReport {
        images: saved_images(&images),
    })
}

/// The Docker schema 2 manifest of a docker-archive image, laid out as
/// skopeo generates it (Go's `json.Marshal` of its `manifest.Schema2`), the
/// layers typed as the plain tars they are.
#[derive(Serialize)]
struct Schema2 {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    config: Schema2Descriptor,
    layers: Vec<Schema2Descriptor>,
}

#[derive(Serialize)]
struct Schema2Descriptor {
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    size: u64,
    digest: String,
}

/// The digest a member's name says it has (`HEX.json`,
/// `blobs/sha256/HEX`), if any.
fn digest_in_name(member: &str) -> Option<Digest> {
    let name = member.rsplit('/').next()?;
    let hex = name.strip_suffix(".json").unwrap_or(name);
    if let Some(rest) = member.strip_prefix("blobs/") {
        let (algorithm, hex) = rest.split_once('/')?;
        return Digest::parse(&format!("{algorithm}:{hex}")).ok();
    }
    Digest::parse(&format!("sha256:{hex}")).ok()
}

/// Reads every image of the docker-archive in `source` into `pending`.
pub(crate) fn read(
    source: &dyn Source,
    pending: &mut Pending<'_>,
    repository: &Reference,
) -> Result<()> {
    let bytes = read_small(source, "manifest.json", METADATA_LIMIT)?;
    let items: Vec<ManifestItem> = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
        what: "manifest.json".into(),
        reason: e.to_string(),
    })?;
    if items.is_empty() {
        return Err(Error::Invalid {
            what: "manifest.json".into(),
            reason: "it lists no image".into(),
        });
    }
    for item in items {
        read_image(source, pending, repository, &item)?;
    }
    Ok(())
}

fn read_image(
    source: &dyn Source,
    pending: &mut Pending<'_>,
    repository: &Reference,
    item: &ManifestItem,
) -> Result<()> {
    let config_member = clean_member_path(&item.config)?;
    let config_bytes = read_small(source, &config_member, CONFIG_LIMIT)?;
    let config_digest = Digest::sha256_of(&config_bytes);
    if let Some(named) = digest_in_name(&config_member) {
        if named != config_digest {
            return Err(Error::DigestMismatch {
                member: config_member,
                expected: named,
                actual: config_digest,
            });
        }
    }
    let config = parse_image_config(config_bytes.clone())
        .map_err(|e| Error::from(e).in_member(&config_member))?;
    if config.diff_ids().len() != item.layers.len() {
        return Err(Error::Invalid {
            what: "manifest.json".into(),
            reason: format!(
                "{} lists {} layers but its config has {} diffIDs",
                item.config,
                item.layers.len(),
                config.diff_ids().len()
            ),
        });
    }
    let members = item
        .layers
        .iter()
        .map(|l| clean_member_path(l))
        .collect::<Result<Vec<_>>>()?;
    let references = item
        .repo_tags
        .iter()
        .flatten()
        .map(|tag| {
            Reference::parse(tag).map_err(|e| Error::Invalid {
                what: "manifest.json".into(),
                reason: format!("RepoTags: {e}"),
            })
        })
        .collect::<Result<Vec<_>>>()?;

    let mut layers = Vec::new();
    let mut parent: Option<Digest> = None;
    for (member, diff_id) in members.iter().zip(config.diff_ids()) {
        let opened = source.open(member)?;
        let (digest, size) = pending.add_layer(LayerInput {
            member: member.clone(),
            reader: opened.reader,
            blob: LayerBlob::Diff,
            diff_id: diff_id.clone(),
            parent: parent.clone(),
        })?;
        layers.push(Schema2Descriptor {
            media_type: media_type::DOCKER_LAYER,
            size,
            digest: digest.to_string(),
        });
        parent = Some(haul_store::chain_id(parent.as_ref(), diff_id));
    }
    let manifest = Schema2 {
        schema_version: 2,
        media_type: media_type::DOCKER_MANIFEST,
        config: Schema2Descriptor {
            media_type: media_type::DOCKER_CONFIG,
            size: config_bytes.len() as u64,
            digest: config_digest.to_string(),
        },
        layers,
    };
    let manifest_bytes = serde_json::to_vec(&manifest).expect("a manifest serialises");
    let parsed = parse_manifest(manifest_bytes.clone(), Some(media_type::DOCKER_MANIFEST))?;
    let mut image = ImageRecord::from_parts(&parsed, &config)?;
    image.manifest_made_locally = true;
    pending.add_document(&config_digest, config_bytes);
    pending.add_document(parsed.digest(), manifest_bytes);
    let references = if references.is_empty() {
        vec![repository
            .without_tag()
            .without_digest()
            .with_digest(parsed.digest().clone())]
    } else {
        references
    };
    pending.add_image(PendingImage {
        image,
        index: None,
        references,
        synthesized: true,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_read_from_member_names() {
        let hex = "a".repeat(64);
        assert_eq!(
            digest_in_name(&format!("{hex}.json")).unwrap().hex(),
            hex.as_str()
        );
        assert_eq!(
            digest_in_name(&format!("blobs/sha256/{hex}"))
                .unwrap()
                .hex(),
            hex.as_str()
        );
        assert!(digest_in_name("config.json").is_none());
    }

    #[test]
    fn manifest_items_use_dockers_field_names() {
        let item = ManifestItem {
            config: "c.json".into(),
            repo_tags: Some(vec!["a:1".into()]),
            layers: vec!["l/layer.tar".into()],
        };
        assert_eq!(
            serde_json::to_string(&item).unwrap(),
            r#"{"Config":"c.json","RepoTags":["a:1"],"Layers":["l/layer.tar"]}"#
        );
        let untagged: ManifestItem =
            serde_json::from_str(r#"{"Config":"c.json","RepoTags":null,"Layers":[]}"#).unwrap();
        assert!(untagged.repo_tags.is_none());
    }
}
