//! Property tests of the layer unpacker (bounded cases; `PROPTEST_CASES`
//! runs more): tars of hostile paths (`..`, absolute, empty), symlinks and
//! hard links pointing anywhere (outside the layer too), whiteouts, opaque
//! markers and PAX path overrides never make the unpacker panic or touch
//! anything outside its target directory.

use std::fs;
use std::path::{Path, PathBuf};

use haul_store::unpack::unpack;
use haul_store::UnpackOptions;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

/// `{out}` in a generated name or link target stands for the absolute
/// path of the directory beside the target that must stay untouched.
const OUTSIDE: &str = "{out}";

#[derive(Debug, Clone)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Hardlink(String),
}

#[derive(Debug, Clone)]
struct Spec {
    name: String,
    kind: Kind,
    /// Written as a PAX `path` record (the ustar name is then a decoy).
    pax_path: bool,
}

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-c]{1,2}",
        1 => Just("..".to_string()),
        1 => Just(".".to_string()),
        1 => Just(String::new()),
        1 => Just(".wh.a".to_string()),
        1 => Just(".wh..wh..opq".to_string()),
        1 => Just(OUTSIDE.to_string()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(component(), 1..5)).prop_map(|(absolute, parts)| {
        let joined = parts.join("/");
        if absolute {
            format!("/{joined}")
        } else {
            joined
        }
    })
}

fn spec() -> impl Strategy<Value = Spec> {
    let kind = prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Kind::File),
        2 => Just(Kind::Dir),
        2 => path().prop_map(Kind::Symlink),
        2 => path().prop_map(Kind::Hardlink),
    ];
    (path(), kind, any::<bool>()).prop_map(|(name, kind, pax_path)| Spec {
        name,
        kind,
        pax_path,
    })
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "LEN key=value\n", LEN counting itself.
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

fn raw_header(name: &[u8], kind: tar::EntryType, size: u64, link: &[u8]) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    {
        let raw = header.as_old_mut();
        let n = name.len().min(100);
        raw.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(100);
        raw.linkname[..l].copy_from_slice(&link[..l]);
    }
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(0o755);
    header.set_mtime(1);
    header.set_cksum();
    header
}

/// A tar of `specs`, written byte by byte so nothing sanitises the names.
fn tar_of(specs: &[Spec], outside: &Path) -> Vec<u8> {
    let out = outside.to_string_lossy().into_owned();
    let fill = |s: &str| s.replace(OUTSIDE, out.trim_start_matches('/'));
    let mut builder = tar::Builder::new(Vec::new());
    for spec in specs {
        let name = fill(&spec.name);
        let (kind, data, link) = match &spec.kind {
            Kind::File(data) => (tar::EntryType::Regular, data.clone(), String::new()),
            Kind::Dir => (tar::EntryType::Directory, Vec::new(), String::new()),
            Kind::Symlink(t) => (tar::EntryType::Symlink, Vec::new(), fill(t)),
            Kind::Hardlink(t) => (tar::EntryType::Link, Vec::new(), fill(t)),
        };
        if spec.pax_path {
            let mut records = pax_record("path", name.as_bytes());
            if !link.is_empty() {
                records.extend(pax_record("linkpath", link.as_bytes()));
            }
            let mut pax = raw_header(
                b"PaxHeaders/x",
                tar::EntryType::XHeader,
                records.len() as u64,
                b"",
            );
            builder.append(&pax, &records[..]).unwrap();
            pax = raw_header(b"decoy", kind, data.len() as u64, b"decoy");
            builder.append(&pax, &data[..]).unwrap();
        } else {
            let header = raw_header(name.as_bytes(), kind, data.len() as u64, link.as_bytes());
            builder.append(&header, &data[..]).unwrap();
        }
    }
    builder.into_inner().unwrap()
}

/// Every path under `dir` (not following links), sorted.
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            out.push(entry.path());
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn hostile_tars_never_escape_the_target(specs in prop::collection::vec(spec(), 1..10)) {
        let sandbox = tempfile::tempdir().unwrap();
        let target = sandbox.path().join("target");
        let outside = sandbox.path().join("outside");
        fs::create_dir_all(&target).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("canary"), b"untouched").unwrap();
        let tar = tar_of(&specs, &outside);
        let options = UnpackOptions { as_root: false, ..UnpackOptions::default() };
        let _ = unpack(&tar[..], &target, &options);

        prop_assert_eq!(listing(&outside), vec![outside.join("canary")]);
        prop_assert_eq!(fs::read(outside.join("canary")).unwrap(), b"untouched");
        let mut top: Vec<_> = fs::read_dir(sandbox.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        top.sort();
        prop_assert_eq!(top, vec!["outside", "target"]);
        // Nothing written inside the target is reached through a link
        // that leads out of it.
        for path in listing(&target) {
            if let Ok(real) = fs::canonicalize(&path) {
                let inside = real.starts_with(fs::canonicalize(&target).unwrap());
                let is_link = fs::symlink_metadata(&path).unwrap().file_type().is_symlink();
                prop_assert!(inside || is_link, "{} resolves to {}", path.display(), real.display());
            }
        }
        // Clean up read-only directories the layer may have made.
        let _ = std::process::Command::new("chmod").arg("-R").arg("u+rwx").arg(sandbox.path()).status();
    }

    #[test]
    fn random_bytes_never_panic_the_unpacker(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let dir = tempfile::tempdir().unwrap();
        let options = UnpackOptions { as_root: false, ..UnpackOptions::default() };
        let _ = unpack(&bytes[..], dir.path(), &options);
    }
}
