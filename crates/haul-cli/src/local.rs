//! Commands on the local store only: `images`, `inspect`, `tag`, `rmi`,
//! `gc`, `export`.

use std::path::Path;

use anyhow::{bail, Context};
use haul_dist::oci::Reference;
use haul_dist::store::{ExportOptions, ImageRecord, Store};
use serde_json::json;

use crate::cli::ListFormat;
use crate::render::units::human_size;

fn parse_reference(text: &str) -> anyhow::Result<Reference> {
    Reference::parse(text).with_context(|| format!("invalid reference {text:?}"))
}

/// The image a reference names locally, or a clear error.
pub fn find_image(store: &Store, text: &str) -> anyhow::Result<(Reference, ImageRecord)> {
    let reference = parse_reference(text)?;
    match store.resolve(&reference)? {
        Some(image) => Ok((reference, image)),
        None => bail!("no such image: {}", reference.familiar()),
    }
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

/// `haul images`.
pub fn images(store: &Store, format: ListFormat) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for (references, image) in store.list_images()? {
        let size = image_size(store, &image);
        let tagged: Vec<&Reference> = references.iter().filter(|r| r.tag().is_some()).collect();
        let digest = references.iter().find_map(|r| r.digest().cloned());
        if tagged.is_empty() {
            rows.push((None, image.clone(), digest.clone(), size));
        }
        for reference in tagged {
            rows.push((Some(reference.clone()), image.clone(), digest.clone(), size));
        }
    }
    match format {
        ListFormat::Json => {
            let list: Vec<_> = rows
                .iter()
                .map(|(reference, image, digest, size)| {
                    json!({
                        "repository": reference.as_ref().map(|r| r.familiar_name().to_string()),
                        "tag": reference.as_ref().and_then(|r| r.tag().map(str::to_string)),
                        "reference": reference.as_ref().map(|r| r.to_string()),
                        "id": image.id.to_string(),
                        "digest": digest.as_ref().map(|d| d.to_string()),
                        "created": image.created,
                        "platform": image.platform.to_string(),
                        "size": size,
                    })
                })
                .collect();
            crate::outln!("{}", serde_json::to_string_pretty(&list)?);
        }
        ListFormat::Table => {
            let lines: Vec<[String; 5]> = rows
                .iter()
                .map(|(reference, image, _, size)| {
                    [
                        reference
                            .as_ref()
                            .map_or("<none>".into(), |r| r.familiar_name().to_string()),
                        reference
                            .as_ref()
                            .and_then(|r| r.tag())
                            .unwrap_or("<none>")
                            .to_string(),
                        image.id.short_id().to_string(),
                        created_ago(image.created.as_deref()),
                        human_size(*size),
                    ]
                })
                .collect();
            let header = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"].map(String::from);
            let widths: Vec<usize> = (0..5)
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
pub fn inspect(store: &Store, text: &str) -> anyhow::Result<()> {
    let (reference, image) = find_image(store, text)?;
    let config_bytes = store.read_blob_limited(&image.id, 8 * 1024 * 1024)?;
    let config: serde_json::Value = serde_json::from_slice(&config_bytes)?;
    let references = store.references_of(&image.id)?;
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
        "repository": reference.name(),
        "tags": references.iter().filter(|r| r.tag().is_some()).map(|r| r.to_string()).collect::<Vec<_>>(),
        "repoDigests": references.iter().filter(|r| r.digest().is_some()).map(|r| r.to_string()).collect::<Vec<_>>(),
        "id": image.id.to_string(),
        "manifestDigest": image.manifest_digest.to_string(),
        "manifestMediaType": image.manifest_media_type,
        "indexDigest": image.index_digest.as_ref().map(|d| d.to_string()),
        "platform": image.platform.to_string(),
        "config": config,
        "layers": layers,
    });
    crate::outln!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// `haul tag SRC DST`.
pub fn tag(store: &Store, source: &str, target: &str) -> anyhow::Result<()> {
    let (_, image) = find_image(store, source)?;
    let target = parse_reference(target)?;
    if target.digest().is_some() {
        bail!("cannot tag with a digest: {target}");
    }
    store.tag(&target, &image.id)?;
    Ok(())
}

/// `haul rmi REF...`: untags, and frees what no image uses any more.
pub fn rmi(store: &Store, references: &[String]) -> anyhow::Result<()> {
    let mut deleted_any = false;
    for text in references {
        let reference = parse_reference(text)?;
        let removed = store
            .remove_image(&reference)
            .with_context(|| format!("cannot remove {}", reference.familiar()))?;
        crate::outln!("Untagged: {}", removed.untagged.familiar());
        if let Some(id) = removed.deleted {
            crate::outln!("Deleted: {id}");
            deleted_any = true;
        }
    }
    if deleted_any {
        store.gc()?;
    }
    Ok(())
}

/// `haul gc`.
pub fn gc(store: &Store) -> anyhow::Result<()> {
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
pub fn export(store: &Store, text: &str, directory: &Path) -> anyhow::Result<()> {
    let (reference, image) = find_image(store, text)?;
    let missing = store.missing_layers(&image)?;
    if !missing.is_empty() {
        bail!(
            "{} is not unpacked ({} layers missing); pull it again without --no-unpack",
            reference.familiar(),
            missing.len()
        );
    }
    let report = store
        .export_image(&image, directory, &ExportOptions::default())
        .with_context(|| {
            format!(
                "cannot export {} to {}",
                reference.familiar(),
                directory.display()
            )
        })?;
    if report.skipped > 0 {
        eprintln!(
            "warning: {} device entries were not created (not running as root)",
            report.skipped
        );
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
