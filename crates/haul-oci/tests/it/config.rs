//! Image config decoding, diff IDs and chain IDs.

use haul_oci::config::{parse_image_config_with_limit, DEFAULT_CONFIG_LIMIT};
use haul_oci::{chain_ids, parse_image_config, Digest, Error, Platform};

const DOCKER_CONFIG: &[u8] = include_bytes!("data/docker-config.json");
const OCI_CONFIG: &[u8] = include_bytes!("data/oci-config.json");

/// Diff IDs of the Docker config sample and their chain IDs, computed
/// independently (Python hashlib).
const DIFF_IDS: [&str; 3] = [
    "sha256:53aa55db24405a601b0ca796160740f634a808ceeb0621409ab08e5381e0ad71",
    "sha256:33d457402f456235be5340c020ecac65013ac0bf8b6f397b46cb38b543092cc4",
    "sha256:fd22cd952c375659ee285e61d2bcfba89fbb0c0a9933414addf0d75c354b1b6f",
];
const CHAIN_IDS: [&str; 3] = [
    "sha256:53aa55db24405a601b0ca796160740f634a808ceeb0621409ab08e5381e0ad71",
    "sha256:a954f832deb200a9114b8cc12a4e2f7734e5e1cc7e2c8a50e3608456225c934f",
    "sha256:fa71ff18c9a3e7aae342662c5a85e34767baa81f8b1ba69a6965434636a7f4ef",
];

fn digests(list: &[&str]) -> Vec<Digest> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn docker_config() {
    let c = parse_image_config(DOCKER_CONFIG).unwrap();
    assert_eq!(
        c.digest().as_str(),
        "sha256:6ae0d4eaa088ece4bebcc379b28872dbc4d5e384d407f886d4d4e41b4b0723ba"
    );
    assert_eq!(c.bytes(), DOCKER_CONFIG);
    assert_eq!(c.diff_ids(), digests(&DIFF_IDS).as_slice());
    assert_eq!(c.chain_ids(), digests(&CHAIN_IDS));
    assert_eq!(c.platform(), Platform::new("linux", "amd64"));
    let inner = c.config().config().as_ref().unwrap();
    assert_eq!(
        inner.cmd().as_deref(),
        Some(
            &[
                "nginx".to_owned(),
                "-g".to_owned(),
                "daemon off;".to_owned()
            ][..]
        )
    );
    assert_eq!(
        inner.exposed_ports().as_deref(),
        Some(&["80/tcp".to_owned()][..])
    );
    assert_eq!(c.config().history().as_ref().unwrap().len(), 4);
}

#[test]
fn oci_config_with_variant() {
    let c = parse_image_config(OCI_CONFIG).unwrap();
    assert_eq!(c.platform().to_string(), "linux/arm64/v8");
    assert_eq!(c.diff_ids().len(), 1);
    assert_eq!(c.chain_ids(), c.diff_ids());
}

#[test]
fn chain_id_rule() {
    assert!(chain_ids(&[]).is_empty());
    let diffs = digests(&DIFF_IDS);
    let chains = chain_ids(&diffs);
    assert_eq!(chains, digests(&CHAIN_IDS));
    // chain(n) = sha256(chain(n-1) + " " + diff(n)), written out.
    let manual = Digest::sha256_of(format!("{} {}", chains[1], diffs[2]).as_bytes());
    assert_eq!(chains[2], manual);
    // A shared base gives shared prefixes.
    let other = chain_ids(&[diffs[0].clone(), diffs[2].clone()]);
    assert_eq!(other[0], chains[0]);
    assert_ne!(other[1], chains[1]);
}

#[test]
fn rejects_bad_diff_id() {
    let mut v: serde_json::Value = serde_json::from_slice(OCI_CONFIG).unwrap();
    v["rootfs"]["diff_ids"][0] = "sha256:nothex".into();
    let err = parse_image_config(serde_json::to_vec(&v).unwrap()).unwrap_err();
    match err {
        Error::InvalidDocument { what, reason } => {
            assert_eq!(what, "image config");
            assert!(
                reason.starts_with("rootfs.diff_ids[0]: invalid digest \"sha256:nothex\""),
                "{reason}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn rejects_wrong_rootfs_type() {
    let mut v: serde_json::Value = serde_json::from_slice(OCI_CONFIG).unwrap();
    v["rootfs"]["type"] = "tarball".into();
    let err = parse_image_config(serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidDocument { reason, .. } if reason.contains("\"tarball\"")),
        "{err:?}"
    );
}

#[test]
fn rejects_non_config_json() {
    let err = parse_image_config(&br#"{"hello":"world"}"#[..]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Json {
                what: "image config",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn config_size_limit() {
    assert_eq!(DEFAULT_CONFIG_LIMIT, 4 * 1024 * 1024);
    let err = parse_image_config_with_limit(DOCKER_CONFIG, 1024).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { what: "image config", limit: 1024, size } if size == DOCKER_CONFIG.len() as u64),
        "{err:?}"
    );
}
