//! The checksums of the v1 protocol.
//!
//! - The **payload checksum** (`X-Docker-Checksum-Payload`, the one both
//!   reference servers check): `"sha256:" + hex(sha256(JSON ‖ "\n" ‖
//!   LAYER))`, JSON exactly as sent with `PUT .../json` and LAYER the layer
//!   bytes exactly as sent with `PUT .../layer`.
//! - **tarsum v0** (`X-Docker-Checksum`), as Docker's `pkg/tarsum`
//!   `Version0`: for each tar entry, `sha256` of its selected header fields
//!   (`name mode uid gid size mtime typeflag linkname uname gname devmajor
//!   devminor`, each name followed by its value, numbers in decimal) and its
//!   content, in hex; the sorted hex strings are hashed after the JSON.

use std::io::Read;

use haul_oci::Digester;

/// An incremental payload checksum: seeded with the JSON and `\n`, fed the
/// layer bytes as they are sent.
pub struct PayloadChecksum {
    digester: Digester,
}

impl PayloadChecksum {
    /// A checksum of an image whose JSON is `json`.
    pub fn new(json: &[u8]) -> Self {
        let mut digester = Digester::sha256();
        digester.update(json);
        digester.update(b"\n");
        Self { digester }
    }

    /// Feeds layer bytes, in the order they are sent.
    pub fn update(&mut self, layer_bytes: &[u8]) {
        self.digester.update(layer_bytes);
    }

    /// `sha256:HEX`.
    pub fn finish(self) -> String {
        self.digester.finish().to_string()
    }
}

/// The payload checksum of `json` and the whole `layer`.
pub fn payload_checksum(json: &[u8], layer: &[u8]) -> String {
    let mut c = PayloadChecksum::new(json);
    c.update(layer);
    c.finish()
}

/// tarsum v0 of an uncompressed tar stream, with the image JSON `json`
/// (empty for none): `tarsum+sha256:HEX`.
pub fn tarsum_v0<R: Read>(tar: R, json: &[u8]) -> std::io::Result<String> {
    let mut archive = tar::Archive::new(tar);
    let mut sums = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let header = entry.header().clone();
        let mut name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let typeflag = header.as_bytes()[156];
        let is_dir = header.entry_type().is_dir();
        if is_dir && !name.ends_with('/') {
            name.push('/');
        }
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let text = |b: Option<&[u8]>| {
            b.map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let fields = [
            ("name", name),
            ("mode", header.mode().unwrap_or(0).to_string()),
            ("uid", header.uid().unwrap_or(0).to_string()),
            ("gid", header.gid().unwrap_or(0).to_string()),
            ("size", header.size().unwrap_or(0).to_string()),
            ("mtime", header.mtime().unwrap_or(0).to_string()),
            ("typeflag", char::from(typeflag).to_string()),
            ("linkname", link),
            ("uname", text(header.username_bytes())),
            ("gname", text(header.groupname_bytes())),
            (
                "devmajor",
                header
                    .device_major()
                    .ok()
                    .flatten()
                    .unwrap_or(0)
                    .to_string(),
            ),
            (
                "devminor",
                header
                    .device_minor()
                    .ok()
                    .flatten()
                    .unwrap_or(0)
                    .to_string(),
            ),
        ];
        let mut digester = Digester::sha256();
        for (key, value) in &fields {
            digester.update(key.as_bytes());
            digester.update(value.as_bytes());
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            digester.update(&buf[..n]);
        }
        sums.push(digester.finish().hex().to_string());
    }
    sums.sort();
    let mut digester = Digester::sha256();
    digester.update(json);
    for s in &sums {
        digester.update(s.as_bytes());
    }
    Ok(format!("tarsum+sha256:{}", digester.finish().hex()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tarsum_v0_matches_dockers_vector() {
        // Docker's pkg/tarsum TestIteration: one empty entry `file.txt`,
        // every field zero, no JSON.
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_path("file.txt").unwrap();
        header.set_mode(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, std::io::empty()).unwrap();
        let tar = builder.into_inner().unwrap();
        assert_eq!(
            tarsum_v0(&tar[..], b"").unwrap(),
            "tarsum+sha256:626c4a2e9a467d65c33ae81f7f3dedd4de8ccaee72af73223c4bc4718cbc7bbd"
        );
    }

    #[test]
    fn payload_checksum_covers_json_newline_and_layer() {
        let whole = payload_checksum(b"{}", b"layer");
        assert_eq!(whole, haul_oci::Digest::sha256_of(b"{}\nlayer").to_string());
        let mut parts = PayloadChecksum::new(b"{}");
        parts.update(b"lay");
        parts.update(b"er");
        assert_eq!(parts.finish(), whole);
    }
}
