//! Commands on the local store only: `images`, `inspect`, `tag`, `rmi`,
//! `gc`, `export`.

use std::path::Path;

use anyhow::{bail, Context};
use haul_dist::oci::{Platform, Reference};
use haul_dist::store::{ExportOptions, IdMatch, ImageRecord, RefTarget, Store};
use serde_json::json;

use crate::cli::ListFormat;
use crate::render::units::human_size;

fn parse_reference(text: &str) -> anyhow::Result<Reference> {
    Reference::parse(text).with_context(|| format!("invalid reference {text:?}"))
}

/// An image named on the command line.
pub(crate) struct Found {
    /// How to call it in messages: the reference as typed (familiar form),
    /// or the short image ID.
    pub shown: String,
    /// The reference it was named by; `None` when named by ID.
    pub reference: Option<Reference>,
    /// The image.
    pub image: ImageRecord,
    /// The index the reference came through, if any.
    pub index: Option<haul_dist::oci::Digest>,
}

impl Found {
    /// What a new reference to this image points at: the same manifest,
    /// through the same index.
    pub(crate) fn target(&self) -> RefTarget {
        RefTarget {
            manifest: self.image.manifest_digest.clone(),
            index: self.index.clone(),
        }
    }
}

/// The image `text` names locally, as Docker reads it: a full image ID
/// (`sha256:HEX` or 64 hex digits), else a reference, else a unique
/// image-ID prefix of at least 12 hex digits.
pub(crate) fn find_image(store: &Store, text: &str) -> anyhow::Result<Found> {
    let by_id = |store: &Store| -> anyhow::Result<Option<Found>> {
        match store.find_image_by_id(text)? {
            IdMatch::One(image) => Ok(Some(Found {
                shown: image.id.short_id().to_string(),
                reference: None,
                image: *image,
                index: None,
            })),
            IdMatch::Ambiguous(ids) => bail!(
                "{text} is ambiguous: it begins {} image IDs; give more digits",
                ids.len()
            ),
            IdMatch::None => Ok(None),
        }
    };
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    if hex.len() == 64 || text.starts_with("sha256:") {
        return by_id(store)?.ok_or_else(|| anyhow::anyhow!("no such image: {text}"));
    }
    if let Ok(reference) = Reference::parse(text) {
        if let Some(resolved) = store.resolve(&reference)? {
            return Ok(Found {
                shown: reference.familiar(),
                reference: Some(reference),
                image: resolved.image,
                index: resolved.index,
            });
        }
    }
    if let Some(found) = by_id(store)? {
        return Ok(found);
    }
    let reference = parse_reference(text)?;
    bail!("no such image: {}", reference.familiar())
}

/// The platform variant of `found` for `platform` (`--platform`): the
/// image itself when it matches, else the image of the same index that
/// was pulled for that platform (`pull --all-platforms`), else an error
/// naming the platforms stored.
pub(crate) fn for_platform(
    store: &Store,
    found: Found,
    platform: Option<&Platform>,
) -> anyhow::Result<Found> {
    let Some(wanted) = platform else {
        return Ok(found);
    };
    let mut family = vec![found.image.clone()];
    if let Some(index) = &found.index {
        for child in store.index_children(index)?.unwrap_or_default() {
            if child != found.image.manifest_digest {
                family.extend(store.get_image(&child)?);
            }
        }
    }
    for candidate in wanted.compatible() {
        if let Some(image) = family
            .iter()
            .find(|image| image.platform.same_as(&candidate))
        {
            return Ok(Found {
                image: image.clone(),
                ..found
            });
        }
    }
    let mut stored: Vec<String> = family
        .iter()
        .map(|image| image.platform.to_string())
        .collect();
    stored.sort();
    stored.dedup();
    bail!(
        "{} has no {wanted} image in the store (stored: {}){}",
        found.shown,
        stored.join(", "),
        if found.index.is_some() {
            "; pull it with --platform or --all-platforms"
        } else {
            ""
        }
    )
}

/// Unpacked size of an image (its layers' tars), else its compressed size.
fn image_size(store: &Store, image: &ImageRecord) -> u64 {
    let unpacked: Option<u64> = image
        .layers
        .iter()
        .map(|l| {
            store
                .get_layer(&l.chain_id)
                .ok()
                .flatten()
                .map(|info| info.size)
        })
        .sum();
    unpacked.unwrap_or_else(|| image.compressed_size())
}

/// How `haul images` lists.
pub(crate) struct ImagesOptions<'a> {
    /// `REPOSITORY[:TAG]` to keep.
    pub filter: Option<&'a str>,
    /// Add a DIGEST column.
    pub digests: bool,
    /// Image IDs only, one per row (`-q`).
    pub quiet: bool,
    /// Table or JSON.
    pub format: ListFormat,
}

/// One row of `haul images`: a tag of an image, or the image itself when
/// no tag names it.
struct ImageRow {
    reference: Option<Reference>,
    image: ImageRecord,
    digest: Option<haul_dist::oci::Digest>,
    size: u64,
}

impl ImageRow {
    fn repository(&self) -> String {
        self.reference
            .as_ref()
            .map_or("<none>".into(), |r| r.familiar_name().to_string())
    }

    fn tag(&self) -> &str {
        self.reference
            .as_ref()
            .and_then(|r| r.tag())
            .unwrap_or("<none>")
    }

    fn digest(&self) -> String {
        self.digest
            .as_ref()
            .map_or("<none>".into(), |d| d.to_string())
    }
}

/// Whether `row` passes the `REPOSITORY[:TAG]` filter (the repository in
/// familiar or full form).
fn matches_filter(row: &ImageRow, filter: &str) -> bool {
    let Some(reference) = &row.reference else {
        return false;
    };
    let (repository, tag) = match filter.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
        _ => (filter, None),
    };
    let same_repository = repository == reference.familiar_name()
        || repository == reference.name()
        || Reference::parse(repository).is_ok_and(|r| r.name() == reference.name());
    same_repository && tag.is_none_or(|tag| reference.tag() == Some(tag))
}

/// The rows of `haul images`, in store order.
fn image_rows(store: &Store) -> anyhow::Result<Vec<ImageRow>> {
    let mut rows = Vec::new();
    // The other platforms of an index a tag names are that tag's image,
    // not untagged images of their own (`--platform` selects them).
    let siblings = store.platform_siblings()?;
    for (references, image) in store.list_images()? {
        if references.is_empty() && siblings.contains(&image.manifest_digest) {
            continue;
        }
        let size = image_size(store, &image);
        // The repository's digest reference, else what the tag's source
        // served (its index, when it came through one).
        let digest_of = |tagged: Option<&Reference>| {
            references
                .iter()
                .filter(|r| tagged.is_none_or(|t| r.name() == t.name()))
                .find_map(|r| r.digest().cloned())
                .or_else(|| {
                    tagged
                        .and_then(|t| store.target(t).ok().flatten())
                        .map(|target| target.source_digest().clone())
                })
                .or_else(|| Some(image.manifest_digest.clone()))
        };
        let tagged: Vec<&Reference> = references.iter().filter(|r| r.tag().is_some()).collect();
        if tagged.is_empty() {
            // Pulled by digest only: the repository with a <none> tag.
            let reference = references.first().map(|r| r.without_digest().without_tag());
            rows.push(ImageRow {
                digest: digest_of(None),
                reference,
                image: image.clone(),
                size,
            });
        }
        for reference in tagged {
            rows.push(ImageRow {
                digest: digest_of(Some(reference)),
                reference: Some(reference.clone()),
                image: image.clone(),
                size,
            });
        }
    }
    Ok(rows)
}

/// `haul images`.
pub(crate) fn images(store: &Store, options: &ImagesOptions<'_>) -> anyhow::Result<()> {
    let mut rows = image_rows(store)?;
    if let Some(filter) = options.filter {
        rows.retain(|row| matches_filter(row, filter));
    }
    if options.quiet {
        for row in &rows {
            crate::outln!("{}", row.image.id.short_id());
        }
        return Ok(());
    }
    match options.format {
        ListFormat::Json => {
            for row in &rows {
                let line = json!({
                    "Containers": "N/A",
                    "CreatedAt": row.image.created,
                    "CreatedSince": created_ago(row.image.created.as_deref()),
                    "Digest": row.digest(),
                    "ID": row.image.id.short_id().to_string(),
                    "Repository": row.repository(),
                    "SharedSize": "N/A",
                    "Size": human_size(row.size),
                    "Tag": row.tag(),
                    "UniqueSize": "N/A",
                    "VirtualSize": human_size(row.size),
                });
                crate::outln!("{line}");
            }
        }
        ListFormat::JsonArray => {
            let list: Vec<_> = rows
                .iter()
                .map(|row| {
                    let tagged = row.reference.as_ref().filter(|r| r.tag().is_some());
                    json!({
                        "repository": row.reference.as_ref().map(|r| r.familiar_name().to_string()),
                        "tag": tagged.and_then(|r| r.tag().map(str::to_string)),
                        "reference": tagged.map(|r| r.to_string()),
                        "id": row.image.id.to_string(),
                        "digest": row.digest.as_ref().map(|d| d.to_string()),
                        "created": row.image.created,
                        "platform": row.image.platform.to_string(),
                        "size": row.size,
                    })
                })
                .collect();
            crate::outln!("{}", serde_json::to_string_pretty(&list)?);
        }
        ListFormat::Table => {
            let mut header = vec!["REPOSITORY", "TAG"];
            if options.digests {
                header.push("DIGEST");
            }
            header.extend(["IMAGE ID", "CREATED", "SIZE"]);
            let lines: Vec<Vec<String>> = rows
                .iter()
                .map(|row| {
                    let mut line = vec![row.repository(), row.tag().to_string()];
                    if options.digests {
                        line.push(row.digest());
                    }
                    line.extend([
                        row.image.id.short_id().to_string(),
                        created_ago(row.image.created.as_deref()),
                        human_size(row.size),
                    ]);
                    line
                })
                .collect();
            let header: Vec<String> = header.into_iter().map(String::from).collect();
            let widths: Vec<usize> = (0..header.len())
                .map(|i| {
                    std::iter::once(&header)
                        .chain(&lines)
                        .map(|l| l[i].len())
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            for line in std::iter::once(&header).chain(&lines) {
                let cells: Vec<String> = line
                    .iter()
                    .zip(&widths)
                    .map(|(cell, w)| format!("{cell:<w$}"))
                    .collect();
                crate::outln!("{}", cells.join("   ").trim_end());
            }
        }
    }
    Ok(())
}

/// "3 days ago" from an RFC 3339 time, as `docker images` shows it.
fn created_ago(created: Option<&str>) -> String {
    let Some(seconds) = created.and_then(parse_rfc3339) else {
        return "N/A".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let ago = (now - seconds).max(0);
    let (n, unit) = match ago {
        s if s < 60 => return "Less than a minute ago".into(),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s if s < 86_400 * 14 => (s / 86_400, "day"),
        s if s < 86_400 * 60 => (s / (86_400 * 7), "week"),
        s if s < 86_400 * 730 => (s / (86_400 * 30), "month"),
        s => (s / (86_400 * 365), "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn parse_rfc3339(text: &str) -> Option<i64> {
    let num = |s: &str| s.parse::<i64>().ok();
    let (date, rest) = text.split_once('T')?;
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let time = rest.get(..8)?;
    let mut t = time.split(':');
    let (h, min, s) = (num(t.next()?)?, num(t.next()?)?, num(t.next()?)?);
    let zone = rest[8..].trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match zone {
        "Z" | "z" | "" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let (zh, zm) = z[1..].split_once(':')?;
            sign * (num(zh)? * 3600 + num(zm)? * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + min * 60 + s - offset)
}

/// `haul inspect REF`.
pub(crate) fn inspect(
    store: &Store,
    text: &str,
    platform: Option<&Platform>,
) -> anyhow::Result<()> {
    let Found {
        reference,
        image,
        index,
        ..
    } = for_platform(store, find_image(store, text)?, platform)?;
    let config_bytes = store.read_blob_limited(&image.id, 8 * 1024 * 1024)?;
    let config: serde_json::Value = serde_json::from_slice(&config_bytes)?;
    let references = store.references_to(&image.manifest_digest)?;
    let repository = reference
        .as_ref()
        .or(references.first())
        .map(|r| r.name().to_string());
    let layers: Vec<_> = image
        .layers
        .iter()
        .map(|l| {
            json!({
                "digest": l.digest.to_string(),
                "mediaType": l.media_type,
                "size": l.size,
                "diffID": l.diff_id.to_string(),
                "chainID": l.chain_id.to_string(),
            })
        })
        .collect();
    let out = json!({
        "repository": repository,
        "tags": references.iter().filter(|r| r.tag().is_some()).map(|r| r.to_string()).collect::<Vec<_>>(),
        "repoDigests": references.iter().filter(|r| r.digest().is_some()).map(|r| r.to_string()).collect::<Vec<_>>(),
        "id": image.id.to_string(),
        "manifestDigest": image.manifest_digest.to_string(),
        "manifestMediaType": image.manifest_media_type,
        "indexDigest": index.as_ref().map(|d| d.to_string()),
        "platform": image.platform.to_string(),
        "config": config,
        "layers": layers,
    });
    crate::outln!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// `haul tag SRC DST`.
/// With `--platform`, the new tag names that platform's image alone.
pub(crate) fn tag(
    store: &Store,
    source: &str,
    target: &str,
    platform: Option<&Platform>,
) -> anyhow::Result<()> {
    let found = find_image(store, source)?;
    let target = parse_reference(target)?;
    if target.digest().is_some() {
        bail!("cannot tag with a digest: {target}");
    }
    let to = match platform {
        Some(_) => for_platform(store, found, platform)?.image.target(),
        None => found.target(),
    };
    store.tag(&target, &to)?;
    Ok(())
}

/// `haul rmi [-f] IMAGE...`, as `docker rmi`: each argument is a
/// reference or an image ID. A reference is untagged (its repository's
/// digest references go with its last tag there); an ID removes the image
/// with its references when only one tag names it, or with `--force`. An
/// image left without references is deleted and its space freed. Every
/// argument is tried; each failure is reported, and any failure makes the
/// exit status 1.
pub(crate) fn rmi(store: &Store, arguments: &[String], force: bool) -> anyhow::Result<()> {
    let mut failed = false;
    let mut deleted_any = false;
    for text in arguments {
        match remove_one(store, text, force) {
            Ok((untagged, deleted)) => {
                for reference in untagged {
                    crate::outln!("Untagged: {}", reference.familiar());
                }
                if let Some(id) = deleted {
                    crate::outln!("Deleted: {id}");
                    deleted_any = true;
                }
            }
            Err(err) => {
                eprintln!("haul: {}", crate::error_sentence(&err));
                failed = true;
            }
        }
    }
    if deleted_any {
        store.gc()?;
    }
    if failed {
        return Err(crate::Reported.into());
    }
    Ok(())
}

/// Removes what one `rmi` argument names: the references untagged and the
/// image deleted, if any.
fn remove_one(
    store: &Store,
    text: &str,
    force: bool,
) -> anyhow::Result<(Vec<Reference>, Option<haul_dist::oci::Digest>)> {
    let found = find_image(store, text)?;
    if let Some(reference) = found.reference {
        let removed = store
            .remove_image(&reference)
            .with_context(|| format!("cannot remove {}", reference.familiar()))?;
        return Ok((removed.untagged, removed.deleted));
    }
    let references = store.references_of(&found.image.id)?;
    if references.is_empty()
        && store
            .platform_siblings()?
            .contains(&found.image.manifest_digest)
    {
        bail!(
            "conflict: unable to delete {}: it is a platform of an index a reference keeps; \
             remove that reference",
            found.shown
        );
    }
    if !force && !single_reference(&references) {
        bail!(
            "conflict: unable to delete {} (must be forced): image is referenced in several \
             repositories or tags",
            found.shown
        );
    }
    let untagged = store.delete_image(&found.image.id)?;
    let gone = matches!(
        store.find_image_by_id(found.image.id.as_str())?,
        IdMatch::None
    );
    Ok((untagged, gone.then_some(found.image.id)))
}

/// Docker's `isSingleReference`: at most one tag, and every reference in
/// that one repository (digest references alone count as one).
fn single_reference(references: &[Reference]) -> bool {
    let tags: Vec<&Reference> = references.iter().filter(|r| r.digest().is_none()).collect();
    let Some(first) = tags.first().copied().or(references.first()) else {
        return true;
    };
    tags.len() <= 1 && references.iter().all(|r| r.name() == first.name())
}

/// `haul gc`.
pub(crate) fn gc(store: &Store) -> anyhow::Result<()> {
    let report = store.gc()?;
    crate::outln!(
        "Removed {} images, {} blobs, {} layers, {} partial downloads; freed {}",
        report.images_removed,
        report.blobs_removed,
        report.layers_removed,
        report.partials_removed,
        human_size(report.bytes_freed)
    );
    Ok(())
}

/// `haul export REF DIR`.
pub(crate) fn export(
    store: &Store,
    text: &str,
    platform: Option<&Platform>,
    directory: &Path,
) -> anyhow::Result<()> {
    let Found { shown, image, .. } = for_platform(store, find_image(store, text)?, platform)?;
    let missing = store.missing_layers(&image)?;
    if !missing.is_empty() {
        bail!(
            "{shown} is not unpacked ({} layers missing); pull it again without --no-unpack",
            missing.len()
        );
    }
    let report = store
        .export_image(&image, directory, &ExportOptions::default())
        .with_context(|| format!("cannot export {shown} to {}", directory.display()))?;
    if report.skipped > 0 {
        eprintln!(
            "warning: {} device entries were not created (not running as root)",
            report.skipped
        );
    }
    Ok(())
}

/// `haul export REF -o FILE|-`: the flattened root filesystem as a tar
/// stream, as `docker export` and `crane export` write it. The tree is
/// flattened into the store's temporary directory first, then written as a
/// tar (a file through a temporary sibling, so a failure leaves none).
pub(crate) fn export_tar(
    store: &Store,
    text: &str,
    platform: Option<&Platform>,
    output: &Path,
) -> anyhow::Result<()> {
    let to_stdout = output.as_os_str() == "-";
    if to_stdout && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        bail!("refusing to write a tar to a terminal: give -o FILE or redirect standard output");
    }
    let spool = tempfile::Builder::new()
        .prefix("export-")
        .tempdir_in(store.root().join("tmp"))
        .context("cannot make a temporary directory in the store")?;
    let tree = spool.path().join("rootfs");
    export(store, text, platform, &tree)?;
    if to_stdout {
        return match write_tar(&tree, std::io::stdout().lock()) {
            // The reader went away (`haul export REF -o - | tar t | head`).
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            result => result.context("cannot write the tar to standard output"),
        };
    }
    // A device or pipe (`-o /dev/null`) is written in place, never
    // renamed over.
    if std::fs::metadata(output).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        let device = std::fs::OpenOptions::new()
            .write(true)
            .open(output)
            .with_context(|| format!("cannot write {}", output.display()))?;
        return write_tar(&tree, device)
            .with_context(|| format!("cannot write {}", output.display()));
    }
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new()
        .prefix(".haul-export-")
        .tempfile_in(parent)
        .with_context(|| format!("cannot write {}", output.display()))?;
    write_tar(&tree, &mut file).with_context(|| format!("cannot write {}", output.display()))?;
    file.persist(output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(())
}

/// Writes the tree under `root` as a tar with paths relative to it, in
/// name order: symlinks kept as symlinks, hard links as link entries to the
/// first path of their inode, owners, modes and times as they are.
fn write_tar(root: &Path, out: impl std::io::Write) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    let mut links = std::collections::HashMap::new();
    append_tree(&mut builder, root, Path::new(""), &mut links)?;
    builder.into_inner()?.flush()
}

fn append_tree<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    prefix: &Path,
    links: &mut std::collections::HashMap<(u64, u64), std::path::PathBuf>,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let inside = prefix.join(&name);
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            builder.append_dir(&inside, &path)?;
            append_tree(builder, &path, &inside, links)?;
            continue;
        }
        if meta.is_file() && meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                let mut header = tar::Header::new_gnu();
                header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                builder.append_link(&mut header, &inside, first)?;
                continue;
            }
            links.insert((meta.dev(), meta.ino()), inside.clone());
        }
        builder.append_path_with_name(&path, &inside)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_are_read() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(
            parse_rfc3339("2000-03-01T01:00:00.123+01:00"),
            Some(951_868_800)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
    }
}
