//! Platform parsing, normalisation and selection from an index.

use haul_oci::manifest::parse_manifest;
use haul_oci::platform::select_from;
use haul_oci::{select_manifest, Descriptor, Digest, Error, Platform};

const DOCKER_LIST: &[u8] = include_bytes!("data/docker-manifest-list.json");
const OCI_INDEX: &[u8] = include_bytes!("data/oci-index-attestations.json");

/// The digest the fixtures give the entry named `name`.
fn entry(name: &str) -> String {
    Digest::sha256_of(name.as_bytes()).to_string()
}

fn p(s: &str) -> Platform {
    s.parse()
        .unwrap_or_else(|e| panic!("{s}: unexpected error {e}"))
}

#[test]
fn parse_and_normalise() {
    let cases = [
        ("linux/amd64", "linux/amd64"),
        ("linux/arm64", "linux/arm64/v8"),
        ("linux/arm64/v8", "linux/arm64/v8"),
        ("linux/arm64/8", "linux/arm64/v8"),
        ("linux/arm64/v8.2", "linux/arm64/v8.2"),
        ("linux/arm/v7", "linux/arm/v7"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/arm/6", "linux/arm/v6"),
        ("linux/arm/v5", "linux/arm/v5"),
        ("windows/amd64", "windows/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("linux/x86-64", "linux/amd64"),
        ("linux/amd64/v1", "linux/amd64"),
        ("linux/amd64/v3", "linux/amd64/v3"),
        ("linux/aarch64", "linux/arm64/v8"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/armel", "linux/arm/v6"),
        ("linux/i386", "linux/386"),
        ("linux/386", "linux/386"),
        ("Linux/AMD64", "linux/amd64"),
        ("macos/arm64", "darwin/arm64/v8"),
        ("linux/s390x", "linux/s390x"),
        ("linux/riscv64", "linux/riscv64"),
        ("linux/ppc64le", "linux/ppc64le"),
        ("arm64", "linux/arm64/v8"),
        ("amd64", "linux/amd64"),
        ("x86_64", "linux/amd64"),
        ("armhf", "linux/arm/v7"),
    ];
    for (input, shown) in cases {
        assert_eq!(p(input).to_string(), shown, "{input}");
    }
}

#[test]
fn bare_os_takes_host_architecture() {
    let linux = p("linux");
    let host = Platform::host();
    assert_eq!(linux.os, "linux");
    assert_eq!(linux.architecture, host.architecture);
    assert_eq!(linux.variant, host.variant);
}

#[test]
fn host_platform() {
    let host = Platform::host();
    assert!(!host.os.is_empty() && !host.architecture.is_empty());
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    assert_eq!(host.to_string(), "linux/amd64");
    #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
    assert_eq!(host.to_string(), "linux/arm64/v8");
}

#[test]
fn os_version_and_features() {
    let w = p("windows(10.0.17763)/amd64");
    assert_eq!(w.os, "windows");
    assert_eq!(w.os_version.as_deref(), Some("10.0.17763"));
    assert!(w.os_features.is_empty());
    let w = p("windows(10.0.17763+win32k)/amd64");
    assert_eq!(w.os_features, vec!["win32k".to_owned()]);
    assert_eq!(w.to_string(), "windows/amd64");
}

#[test]
fn parse_errors() {
    for bad in [
        "",
        "linux/",
        "/amd64",
        "linux//v7",
        "linux/amd64/v8/extra",
        "linux/*",
        "linux/amd 64",
        "plan10",
        "windows(10.0/amd64",
        "windows(1+)/amd64",
    ] {
        match Platform::parse(bad) {
            Err(Error::InvalidPlatform { input, .. }) => assert_eq!(input, bad),
            other => panic!("{bad:?}: expected InvalidPlatform, got {other:?}"),
        }
    }
}

#[test]
fn same_as_ignores_spelling() {
    assert!(p("linux/arm64").same_as(&Platform::new("linux", "arm64")));
    assert!(Platform::new("linux", "arm64")
        .same_as(&Platform::new("linux", "aarch64").with_variant("v8")));
    assert!(Platform::new("linux", "arm").same_as(&p("linux/arm/v7")));
    assert!(!p("linux/arm/v6").same_as(&p("linux/arm/v7")));
    assert!(!p("linux/amd64").same_as(&p("windows/amd64")));
}

#[test]
fn compatibility_ladders() {
    let names =
        |s: &str| -> Vec<String> { p(s).compatible().iter().map(ToString::to_string).collect() };
    assert_eq!(
        names("linux/arm/v7"),
        ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
    );
    assert_eq!(names("linux/arm/v5"), ["linux/arm/v5"]);
    assert_eq!(names("linux/amd64"), ["linux/amd64", "linux/386"]);
    assert_eq!(
        names("linux/amd64/v3"),
        [
            "linux/amd64/v3",
            "linux/amd64/v2",
            "linux/amd64",
            "linux/386"
        ]
    );
    assert_eq!(
        names("linux/arm64"),
        [
            "linux/arm64/v8",
            "linux/arm/v8",
            "linux/arm/v7",
            "linux/arm/v6",
            "linux/arm/v5"
        ]
    );
    assert_eq!(names("linux/s390x"), ["linux/s390x"]);
}

#[test]
fn selects_from_docker_manifest_list() {
    let list = parse_manifest(DOCKER_LIST, None).unwrap();
    let index = list.manifest().as_index().unwrap();
    let cases = [
        ("linux/amd64", "amd64"),
        ("linux/x86_64", "amd64"),
        ("linux/arm64", "arm64"),
        ("linux/arm64/v8", "arm64"),
        ("linux/arm/v7", "arm-v7"),
        ("linux/arm", "arm-v7"),
        ("linux/arm/v6", "arm-v6"),
        ("linux/arm/v5", "arm-v5"),
        ("linux/armel", "arm-v6"),
        ("linux/386", "386"),
        ("linux/ppc64le", "ppc64le"),
        // No amd64/v3 entry: fall back to plain amd64.
        ("linux/amd64/v3", "amd64"),
        // arm64/v8.2 runs v8 images.
        ("linux/arm64/v8.2", "arm64"),
        // No OS version asked: the first Windows entry.
        ("windows/amd64", "win-ltsc2019"),
        // The entry whose build matches wins.
        ("windows(10.0.20348.1000)/amd64", "win-ltsc2022"),
        ("windows(10.0.17763.1)/amd64", "win-ltsc2019"),
    ];
    for (wanted, name) in cases {
        let chosen = select_manifest(index, &p(wanted)).unwrap();
        assert_eq!(chosen.digest().to_string(), entry(name), "{wanted}");
    }
}

#[test]
fn no_match_lists_offered_platforms() {
    let list = parse_manifest(DOCKER_LIST, None).unwrap();
    let index = list.manifest().as_index().unwrap();
    let err = select_manifest(index, &p("linux/s390x")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no image for linux/s390x in the index; it offers linux/amd64, linux/arm/v5, \
         linux/arm/v6, linux/arm/v7, linux/arm64/v8, linux/386, linux/ppc64le, \
         windows/amd64, windows/amd64"
    );
    match err {
        Error::NoMatchingPlatform { wanted, offered } => {
            assert_eq!(*wanted, p("linux/s390x"));
            assert_eq!(offered.len(), 9);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn skips_attestation_manifests() {
    let idx = parse_manifest(OCI_INDEX, None).unwrap();
    let index = idx.manifest().as_index().unwrap();
    let amd = select_manifest(index, &p("linux/amd64")).unwrap();
    assert_eq!(amd.digest().to_string(), entry("amd64-oci"));
    // An entry written `arm64` without variant serves a `linux/arm64/v8` request.
    let arm = select_manifest(index, &p("linux/arm64/v8")).unwrap();
    assert_eq!(arm.digest().to_string(), entry("arm64-oci"));
    let err = select_manifest(index, &p("linux/s390x")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no image for linux/s390x in the index; it offers linux/amd64, linux/arm64"
    );
    // Asking for unknown/unknown does not pick an attestation either.
    assert!(select_manifest(index, &Platform::new("unknown", "unknown")).is_err());
}

fn descriptors(json: &str) -> Vec<Descriptor> {
    serde_json::from_str(json).unwrap()
}

fn desc(name: &str, platform: Option<&str>) -> String {
    let platform = platform.map_or(String::new(), |p| format!(r#","platform":{p}"#));
    format!(
        r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"{}"{platform}}}"#,
        entry(name)
    )
}

#[test]
fn exact_variant_beats_earlier_compatible_entry() {
    let list = descriptors(&format!(
        "[{},{}]",
        desc(
            "v6",
            Some(r#"{"os":"linux","architecture":"arm","variant":"v6"}"#)
        ),
        desc(
            "v7",
            Some(r#"{"os":"linux","architecture":"arm","variant":"v7"}"#)
        ),
    ));
    assert_eq!(
        select_from(&list, &p("linux/arm/v7"))
            .unwrap()
            .digest()
            .to_string(),
        entry("v7")
    );
    assert_eq!(
        select_from(&list, &p("linux/arm/v6"))
            .unwrap()
            .digest()
            .to_string(),
        entry("v6")
    );
    assert_eq!(
        select_from(&list, &p("linux/arm/v8"))
            .unwrap()
            .digest()
            .to_string(),
        entry("v7")
    );
    let err = select_from(&list, &p("linux/arm/v5")).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("it offers linux/arm/v6, linux/arm/v7"),
        "{err}"
    );
}

#[test]
fn older_arm_fallbacks() {
    let only_v6 = descriptors(&format!(
        "[{}]",
        desc(
            "v6",
            Some(r#"{"os":"linux","architecture":"arm","variant":"v6"}"#)
        )
    ));
    assert_eq!(
        select_from(&only_v6, &p("linux/arm/v7"))
            .unwrap()
            .digest()
            .to_string(),
        entry("v6")
    );
    // arm64 hosts run 32-bit arm images as a last resort, like containerd.
    let only_v7 = descriptors(&format!(
        "[{}]",
        desc("v7", Some(r#"{"os":"linux","architecture":"arm"}"#))
    ));
    assert_eq!(
        select_from(&only_v7, &p("linux/arm64"))
            .unwrap()
            .digest()
            .to_string(),
        entry("v7")
    );
    // But amd64 is not arm.
    assert!(select_from(&only_v7, &p("linux/amd64")).is_err());
}

#[test]
fn entries_without_platform_are_a_last_resort() {
    let list = descriptors(&format!(
        "[{},{}]",
        desc("anything", None),
        desc("amd", Some(r#"{"os":"linux","architecture":"amd64"}"#)),
    ));
    assert_eq!(
        select_from(&list, &p("linux/amd64"))
            .unwrap()
            .digest()
            .to_string(),
        entry("amd")
    );
    assert_eq!(
        select_from(&list, &p("linux/riscv64"))
            .unwrap()
            .digest()
            .to_string(),
        entry("anything")
    );
}

#[test]
fn required_os_features_must_be_requested() {
    // Through parse_manifest, which keeps `os.features` (oci-spec alone drops it).
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
        desc(
            "win32k",
            Some(r#"{"os":"windows","architecture":"amd64","os.features":["win32k"]}"#)
        )
    );
    let parsed = parse_manifest(index.into_bytes(), None).unwrap();
    let index = parsed.manifest().as_index().unwrap();
    assert!(select_manifest(index, &p("windows/amd64")).is_err());
    assert_eq!(
        select_manifest(index, &p("windows(+win32k)/amd64"))
            .unwrap()
            .digest()
            .to_string(),
        entry("win32k")
    );
}

#[test]
fn empty_index() {
    let err = select_from(&[], &p("linux/amd64")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no image for linux/amd64 in the index; it offers no platforms"
    );
}

#[test]
fn oci_spec_and_serde_round_trips() {
    let w = p("windows(10.0.17763+win32k)/amd64");
    assert_eq!(Platform::from_oci(&w.to_oci()), w);
    let json = serde_json::to_value(&w).unwrap();
    assert_eq!(json["os.version"], "10.0.17763");
    assert_eq!(json["os.features"][0], "win32k");
    let back: Platform = serde_json::from_value(json).unwrap();
    assert_eq!(back, w);
    let arm: Platform =
        serde_json::from_str(r#"{"os":"linux","architecture":"arm","variant":"v7"}"#).unwrap();
    assert_eq!(arm.to_string(), "linux/arm/v7");
}
