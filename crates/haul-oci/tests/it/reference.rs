//! Reference parsing and normalisation, with the cases of
//! distribution/reference's `reference_test.go` and `normalize_test.go`
//! adapted to normalised parsing, plus haul's own.

use haul_oci::reference::{api_host, DOCKER_HUB_API_HOST};
use haul_oci::{Digest, DigestErrorKind, Error, Reference, ReferenceErrorKind};

const SHA256_F: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
const SHA512_F: &str = "sha512:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
const REDIS: &str = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c";
const BUSYBOX: &str = "sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa";

/// One successful parse with [`Reference::parse`] (tag defaults to latest).
struct Ok {
    input: String,
    registry: &'static str,
    repository: String,
    tag: Option<&'static str>,
    digest: Option<&'static str>,
    familiar: String,
}

fn ok(
    input: &str,
    registry: &'static str,
    repository: &str,
    tag: Option<&'static str>,
    digest: Option<&'static str>,
    familiar: &str,
) -> Ok {
    Ok {
        input: input.to_owned(),
        registry,
        repository: repository.to_owned(),
        tag,
        digest,
        familiar: familiar.to_owned(),
    }
}

#[rustfmt::skip]
fn success_cases() -> Vec<Ok> {
    let t = Some;
    let long_ok = format!("example.com/{}", "a".repeat(243));
    let long_tag = "t".repeat(128);
    let long_tag: &'static str = Box::leak(long_tag.into_boxed_str());
    vec![
        // Docker Hub normalisation.
        ok("alpine", "docker.io", "library/alpine", t("latest"), None, "alpine:latest"),
        ok("alpine:3.19", "docker.io", "library/alpine", t("3.19"), None, "alpine:3.19"),
        ok("user/app", "docker.io", "user/app", t("latest"), None, "user/app:latest"),
        ok("user/app:1", "docker.io", "user/app", t("1"), None, "user/app:1"),
        ok("docker.io/library/alpine:latest", "docker.io", "library/alpine", t("latest"), None, "alpine:latest"),
        ok("docker.io/alpine", "docker.io", "library/alpine", t("latest"), None, "alpine:latest"),
        ok("index.docker.io/library/alpine", "docker.io", "library/alpine", t("latest"), None, "alpine:latest"),
        ok("index.docker.io/user/app:v2", "docker.io", "user/app", t("v2"), None, "user/app:v2"),
        ok("index.docker.io/debian", "docker.io", "library/debian", t("latest"), None, "debian:latest"),
        ok("library/foo/bar", "docker.io", "library/foo/bar", t("latest"), None, "library/foo/bar:latest"),
        ok("docker.io/library/foo/bar", "docker.io", "library/foo/bar", t("latest"), None, "library/foo/bar:latest"),
        ok("store/foo/bar", "docker.io", "store/foo/bar", t("latest"), None, "store/foo/bar:latest"),
        ok("other/library", "docker.io", "other/library", t("latest"), None, "other/library:latest"),
        ok("ubuntu-12.04-base", "docker.io", "library/ubuntu-12.04-base", t("latest"), None, "ubuntu-12.04-base:latest"),
        ok("docker/migrator", "docker.io", "docker/migrator", t("latest"), None, "docker/migrator:latest"),
        // localhost is always a registry.
        ok("localhost/x", "localhost", "x", t("latest"), None, "localhost/x:latest"),
        ok("localhost:5000/x:tag", "localhost:5000", "x", t("tag"), None, "localhost:5000/x:tag"),
        ok("localhost:5000/a/b/c", "localhost:5000", "a/b/c", t("latest"), None, "localhost:5000/a/b/c:latest"),
        // ... but a single component is a Hub name, as upstream.
        ok("localhost", "docker.io", "library/localhost", t("latest"), None, "localhost:latest"),
        ok("localhost:5000", "docker.io", "library/localhost", t("5000"), None, "localhost:5000"),
        // reference_test.go TestReferenceParse, normalised.
        ok("test_com", "docker.io", "library/test_com", t("latest"), None, "test_com:latest"),
        ok("test.com:tag", "docker.io", "library/test.com", t("tag"), None, "test.com:tag"),
        ok("test.com:5000", "docker.io", "library/test.com", t("5000"), None, "test.com:5000"),
        ok("test.com/repo:tag", "test.com", "repo", t("tag"), None, "test.com/repo:tag"),
        ok("test:5000/repo", "test:5000", "repo", t("latest"), None, "test:5000/repo:latest"),
        ok("test:5000/repo:tag", "test:5000", "repo", t("tag"), None, "test:5000/repo:tag"),
        ok(&format!("test:5000/repo@{SHA256_F}"), "test:5000", "repo", None, Some(SHA256_F), &format!("test:5000/repo@{SHA256_F}")),
        ok(&format!("test:5000/repo:tag@{SHA256_F}"), "test:5000", "repo", t("tag"), Some(SHA256_F), &format!("test:5000/repo:tag@{SHA256_F}")),
        ok("lowercase:Uppercase", "docker.io", "library/lowercase", t("Uppercase"), None, "lowercase:Uppercase"),
        ok("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com", "bar/baz/quux", t("latest"), None, "sub-dom1.foo.com/bar/baz/quux:latest"),
        ok("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com", "bar/baz/quux", t("some-long-tag"), None, "sub-dom1.foo.com/bar/baz/quux:some-long-tag"),
        ok("b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io", "test.example.com/my-app", t("test.example.com"), None, "b.gcr.io/test.example.com/my-app:test.example.com"),
        ok("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com", "myimage", t("xn--n3h.com"), None, "xn--n3h.com/myimage:xn--n3h.com"),
        ok(&format!("xn--7o8h.com/myimage:xn--7o8h.com@{SHA512_F}"), "xn--7o8h.com", "myimage", t("xn--7o8h.com"), Some(SHA512_F), &format!("xn--7o8h.com/myimage:xn--7o8h.com@{SHA512_F}")),
        ok("foo_bar.com:8080", "docker.io", "library/foo_bar.com", t("8080"), None, "foo_bar.com:8080"),
        ok("foo/foo_bar.com:8080", "docker.io", "foo/foo_bar.com", t("8080"), None, "foo/foo_bar.com:8080"),
        ok("192.168.1.1", "docker.io", "library/192.168.1.1", t("latest"), None, "192.168.1.1:latest"),
        ok("192.168.1.1:tag", "docker.io", "library/192.168.1.1", t("tag"), None, "192.168.1.1:tag"),
        ok("192.168.1.1/repo", "192.168.1.1", "repo", t("latest"), None, "192.168.1.1/repo:latest"),
        ok("192.168.1.1:5000/repo:5050", "192.168.1.1:5000", "repo", t("5050"), None, "192.168.1.1:5000/repo:5050"),
        ok("127.0.0.1:5000/library/debian", "127.0.0.1:5000", "library/debian", t("latest"), None, "127.0.0.1:5000/library/debian:latest"),
        // IPv6 registries.
        ok("[2001:db8::1]/repo", "[2001:db8::1]", "repo", t("latest"), None, "[2001:db8::1]/repo:latest"),
        ok("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]", "repo", t("tag"), None, "[2001:db8:1:2:3:4:5:6]/repo:tag"),
        ok("[2001:db8::1]:5000/repo", "[2001:db8::1]:5000", "repo", t("latest"), None, "[2001:db8::1]:5000/repo:latest"),
        ok(&format!("[2001:db8::1]:5000/repo:tag@{SHA256_F}"), "[2001:db8::1]:5000", "repo", t("tag"), Some(SHA256_F), &format!("[2001:db8::1]:5000/repo:tag@{SHA256_F}")),
        ok("[2001:db8::]:5000/repo", "[2001:db8::]:5000", "repo", t("latest"), None, "[2001:db8::]:5000/repo:latest"),
        ok("[::1]:5000/repo", "[::1]:5000", "repo", t("latest"), None, "[::1]:5000/repo:latest"),
        ok("[fc00:1:2:3:4:5:6:7]:5000/library/debian", "[fc00:1:2:3:4:5:6:7]:5000", "library/debian", t("latest"), None, "[fc00:1:2:3:4:5:6:7]:5000/library/debian:latest"),
        // An upper-case first component is taken as a registry (upstream).
        ok("Docker/docker", "Docker", "docker", t("latest"), None, "Docker/docker:latest"),
        ok("FOO/bar", "FOO", "bar", t("latest"), None, "FOO/bar:latest"),
        // normalize_test.go TestValidateRemoteName / TestValidateReferenceName.
        ok("docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a", "docker.io", "library/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a", t("latest"), None, "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a:latest"),
        ok("thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", "docker.io", "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", t("latest"), None, "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev:latest"),
        ok("docker-rules/docker", "docker.io", "docker-rules/docker", t("latest"), None, "docker-rules/docker:latest"),
        ok("docker---rules/docker", "docker.io", "docker---rules/docker", t("latest"), None, "docker---rules/docker:latest"),
        ok("dock__er/docker", "docker.io", "dock__er/docker", t("latest"), None, "dock__er/docker:latest"),
        ok("d/docker", "docker.io", "d/docker", t("latest"), None, "d/docker:latest"),
        ok("jess/t", "docker.io", "jess/t", t("latest"), None, "jess/t:latest"),
        ok("192.168.0.1:8/debian", "192.168.0.1:8", "debian", t("latest"), None, "192.168.0.1:8/debian:latest"),
        // TestParseAnyReference / TestParseReferenceWithTagAndDigest.
        ok(&format!("redis@{REDIS}"), "docker.io", "library/redis", None, Some(REDIS), &format!("redis@{REDIS}")),
        ok(&format!("dmcgowan/myapp@{REDIS}"), "docker.io", "dmcgowan/myapp", None, Some(REDIS), &format!("dmcgowan/myapp@{REDIS}")),
        ok(&format!("busybox:latest@{BUSYBOX}"), "docker.io", "library/busybox", t("latest"), Some(BUSYBOX), &format!("busybox:latest@{BUSYBOX}")),
        ok("dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9", "docker.io", "library/dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9", t("latest"), None, "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9:latest"),
        ok("dbcc1", "docker.io", "library/dbcc1", t("latest"), None, "dbcc1:latest"),
        // Our own.
        ok("registry-1.docker.io/library/alpine", "registry-1.docker.io", "library/alpine", t("latest"), None, "registry-1.docker.io/library/alpine:latest"),
        ok("ghcr.io/owner/image:sha-1234abc", "ghcr.io", "owner/image", t("sha-1234abc"), None, "ghcr.io/owner/image:sha-1234abc"),
        ok("quay.io/a.b_c__d-e---f/g:_", "quay.io", "a.b_c__d-e---f/g", t("_"), None, "quay.io/a.b_c__d-e---f/g:_"),
        ok("example.com/privatebase", "example.com", "privatebase", t("latest"), None, "example.com/privatebase:latest"),
        ok(&long_ok, "example.com", &"a".repeat(243), t("latest"), None, &format!("{long_ok}:latest")),
        ok(&format!("alpine:{long_tag}"), "docker.io", "library/alpine", t(long_tag), None, &format!("alpine:{long_tag}")),
    ]
}

#[test]
fn parses_and_normalises() {
    let cases = success_cases();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    for case in cases {
        let r: Reference = case
            .input
            .parse()
            .unwrap_or_else(|e| panic!("{}: unexpected error {e}", case.input));
        let what = &case.input;
        assert_eq!(r.registry(), case.registry, "registry of {what}");
        assert_eq!(r.repository(), case.repository, "repository of {what}");
        assert_eq!(r.tag(), case.tag, "tag of {what}");
        assert_eq!(
            r.digest().map(Digest::as_str),
            case.digest,
            "digest of {what}"
        );
        assert_eq!(r.familiar(), case.familiar, "familiar form of {what}");
        assert_eq!(
            r.name(),
            format!("{}/{}", case.registry, case.repository),
            "name of {what}"
        );
        // The full form is stable: parsing it again gives the same reference.
        let again: Reference = r.to_string().parse().unwrap();
        assert_eq!(again, r, "reparse of {what}");
        // So is the familiar form.
        let familiar: Reference = r.familiar().parse().unwrap();
        assert_eq!(familiar, r, "familiar reparse of {what}");
    }
}

fn kind_of(input: &str) -> ReferenceErrorKind {
    match Reference::parse(input) {
        Err(Error::InvalidReference { input: named, kind }) => {
            assert_eq!(named, input, "error names its input");
            kind
        }
        Err(other) => panic!("{input}: expected InvalidReference, got {other:?}"),
        Ok(r) => panic!("{input}: expected an error, parsed {r}"),
    }
}

/// A predicate on the error kind a case must produce.
type Check = Box<dyn Fn(&ReferenceErrorKind) -> bool>;

#[test]
fn refuses_invalid_forms() {
    use ReferenceErrorKind as K;
    let bad_char = |c: char| move |k: &K| matches!(k, K::InvalidCharacter { character, .. } if *character == c);
    let bad_sep = |k: &K| matches!(k, K::BadSeparator { .. });
    let bad_domain = |k: &K| matches!(k, K::InvalidDomain { .. });
    let bad_tag = |k: &K| matches!(k, K::InvalidTag { .. });
    let too_long = |k: &K| matches!(k, K::NameTooLong { .. });
    let empty_component = |k: &K| *k == K::EmptyComponent;
    let uppercase = |k: &K| *k == K::Uppercase;

    let cases: Vec<(String, Check)> = vec![
        ("".into(), Box::new(|k: &K| *k == K::Empty)),
        (":justtag".into(), Box::new(|k: &K| *k == K::MissingName)),
        (format!("@{SHA256_F}"), Box::new(|k: &K| *k == K::MissingName)),
        ("repo@sha256:ffffffffffffffffffffffffffffffffff".into(), Box::new(|k: &K| matches!(k, K::InvalidDigest(DigestErrorKind::InvalidLength { expected: 64, actual: 34 })))),
        ("validname@invaliddigest:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff".into(), Box::new(|k: &K| matches!(k, K::InvalidDigest(DigestErrorKind::UnsupportedAlgorithm { .. })))),
        ("alpine@".into(), Box::new(|k: &K| matches!(k, K::InvalidDigest(DigestErrorKind::MissingAlgorithm)))),
        ("alpine:tag@".into(), Box::new(|k: &K| matches!(k, K::InvalidDigest(DigestErrorKind::MissingAlgorithm)))),
        ("alpine@sha256:DBCC1C35AC38DF41FD2F5E4130B32FFDB93EBAE8B3DBE638C23575912276FC9C".into(), Box::new(|k: &K| matches!(k, K::InvalidDigest(DigestErrorKind::InvalidHex)))),
        (format!("alpine@{SHA256_F}@{SHA256_F}"), Box::new(|k: &K| matches!(k, K::InvalidDigest(_)))),
        ("Uppercase:tag".into(), Box::new(uppercase)),
        ("test:5000/Uppercase/lowercase:tag".into(), Box::new(uppercase)),
        ("docker/Docker".into(), Box::new(uppercase)),
        ("docker.io/docker/Docker".into(), Box::new(uppercase)),
        ("localhost/App".into(), Box::new(uppercase)),
        (format!("{}a:tag", "a/".repeat(128)), Box::new(too_long)),
        (format!("{}a:tag-puts-this-over-max", "a/".repeat(127)), Box::new(too_long)),
        (format!("example.com/{}", "a".repeat(244)), Box::new(|k: &K| *k == K::NameTooLong { length: 256 })),
        ("this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255/docker".into(), Box::new(too_long)),
        ("aa/asdf$$^/aa".into(), Box::new(bad_char('$'))),
        ("repo name".into(), Box::new(bad_char(' '))),
        ("[2001:db8::1]".into(), Box::new(bad_char('['))),
        ("[2001:db8::1]:5000".into(), Box::new(bad_char('['))),
        ("[2001:db8::1]:tag".into(), Box::new(bad_char('['))),
        ("[fc00::1]".into(), Box::new(bad_char('['))),
        ("[fc00::1]:5000".into(), Box::new(bad_char('['))),
        ("[fe80::1%eth0]:5000/repo".into(), Box::new(bad_domain)),
        ("[2001:db8:3:4::192.0.2.33]:5000/debian".into(), Box::new(bad_domain)),
        ("fc00::1:5000/debian".into(), Box::new(bad_domain)),
        ("https://github.com/docker/docker".into(), Box::new(bad_domain)),
        ("-docker.io/docker/docker".into(), Box::new(bad_domain)),
        ("localhost:/x".into(), Box::new(bad_domain)),
        ("example.com:http/x".into(), Box::new(bad_domain)),
        ("exa_mple.com/x".into(), Box::new(bad_domain)),
        ("-docker".into(), Box::new(bad_sep)),
        ("-docker/docker".into(), Box::new(bad_sep)),
        ("docker-/docker".into(), Box::new(bad_sep)),
        ("-docker-/docker".into(), Box::new(bad_sep)),
        ("____/____".into(), Box::new(bad_sep)),
        ("_docker/_docker".into(), Box::new(bad_sep)),
        // A first component with a '.' is a registry (upstream splitDockerDomain).
        ("dock..er/docker".into(), Box::new(bad_domain)),
        ("dock_.er/docker".into(), Box::new(bad_domain)),
        ("dock-.er/docker".into(), Box::new(bad_domain)),
        ("library/dock..er".into(), Box::new(bad_sep)),
        ("library/dock_.er".into(), Box::new(bad_sep)),
        ("library/dock-.er".into(), Box::new(bad_sep)),
        ("dock___er/docker".into(), Box::new(bad_sep)),
        ("user/app.".into(), Box::new(bad_sep)),
        ("docker///docker".into(), Box::new(empty_component)),
        ("docker.io/docker///docker".into(), Box::new(empty_component)),
        ("docker/".into(), Box::new(empty_component)),
        ("/docker".into(), Box::new(empty_component)),
        ("localhost:5000/".into(), Box::new(empty_component)),
        ("alpine:".into(), Box::new(bad_tag)),
        ("alpine:-foo".into(), Box::new(bad_tag)),
        ("alpine:.foo".into(), Box::new(bad_tag)),
        ("alpine:tag:extra".into(), Box::new(bad_tag)),
        (format!("alpine:{}", "t".repeat(129)), Box::new(bad_tag)),
        ("1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a".into(), Box::new(|k: &K| *k == K::AmbiguousIdentifier)),
    ];
    assert!(cases.len() >= 50, "only {} cases", cases.len());
    for (input, expected) in cases {
        let kind = kind_of(&input);
        assert!(expected(&kind), "{input:?}: unexpected error kind {kind:?}");
    }
}

#[test]
fn raw_parse_keeps_missing_tag() {
    let raw = Reference::parse_raw("alpine").unwrap();
    assert_eq!(raw.tag(), None);
    assert_eq!(raw.to_string(), "docker.io/library/alpine");
    assert_eq!(raw.familiar(), "alpine");
    let defaulted = Reference::parse("alpine").unwrap();
    assert_eq!(defaulted.tag(), Some("latest"));
    assert_ne!(raw, defaulted);
    // A digest alone does not get a default tag, raw or not.
    let pinned = Reference::parse(&format!("alpine@{REDIS}")).unwrap();
    assert_eq!(pinned.tag(), None);
    assert_eq!(pinned.digest().unwrap().as_str(), REDIS);
}

#[test]
fn full_display_form() {
    let cases = [
        ("alpine", "docker.io/library/alpine:latest"),
        ("user/app:1", "docker.io/user/app:1"),
        ("localhost:5000/x", "localhost:5000/x:latest"),
        (
            "index.docker.io/library/redis:7",
            "docker.io/library/redis:7",
        ),
    ];
    for (input, full) in cases {
        assert_eq!(
            Reference::parse(input).unwrap().to_string(),
            full,
            "{input}"
        );
    }
}

#[test]
fn with_tag_and_digest() {
    let r = Reference::parse_raw("test.com:8000/foo").unwrap();
    let tagged = r.with_tag("TAG5").unwrap();
    assert_eq!(tagged.to_string(), "test.com:8000/foo:TAG5");
    let d: Digest = REDIS.parse().unwrap();
    let both = tagged.with_digest(d.clone());
    assert_eq!(both.to_string(), format!("test.com:8000/foo:TAG5@{REDIS}"));
    assert_eq!(
        both.without_tag().to_string(),
        format!("test.com:8000/foo@{REDIS}")
    );
    assert_eq!(both.without_digest(), tagged);
    // with_tag keeps the digest, like upstream WithTag.
    let retagged = both.with_tag("v2").unwrap();
    assert_eq!(retagged.tag(), Some("v2"));
    assert_eq!(retagged.digest(), Some(&d));

    let err = r.with_tag("-foo").unwrap_err();
    match err {
        Error::InvalidReference {
            input,
            kind: ReferenceErrorKind::InvalidTag { tag },
        } => {
            assert_eq!(tag, "-foo");
            assert_eq!(input, "test.com:8000/foo:-foo");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn familiar_names() {
    let cases = [
        ("docker.io/library/ubuntu", "ubuntu"),
        ("docker.io/fooo/bar", "fooo/bar"),
        ("docker.io/library/foo/bar", "library/foo/bar"),
        (
            "127.0.0.1:8000/private/moonbase",
            "127.0.0.1:8000/private/moonbase",
        ),
        (
            "example.com:8000/privatebasee",
            "example.com:8000/privatebasee",
        ),
        ("localhost/x", "localhost/x"),
    ];
    for (input, familiar) in cases {
        assert_eq!(
            Reference::parse_raw(input).unwrap().familiar_name(),
            familiar,
            "{input}"
        );
    }
}

#[test]
fn registry_api_host() {
    assert_eq!(api_host("docker.io"), DOCKER_HUB_API_HOST);
    assert_eq!(api_host("index.docker.io"), "registry-1.docker.io");
    assert_eq!(api_host("localhost:5000"), "localhost:5000");
    assert_eq!(api_host("[::1]:5000"), "[::1]:5000");
    assert_eq!(
        Reference::parse("alpine").unwrap().api_host(),
        "registry-1.docker.io"
    );
    assert_eq!(
        Reference::parse("ghcr.io/a/b").unwrap().api_host(),
        "ghcr.io"
    );
}

#[test]
fn serde_round_trip_is_exact() {
    for input in [
        "alpine",
        "alpine:3",
        "localhost:5000/x@sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c",
    ] {
        let r = Reference::parse_raw(input).unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, format!("\"{r}\""));
        let back: Reference = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }
    assert!(serde_json::from_str::<Reference>("\"Bad/Name\"").is_err());
}

#[test]
fn error_messages_name_the_input() {
    let msg = Reference::parse("docker/Docker").unwrap_err().to_string();
    assert_eq!(
        msg,
        "invalid reference \"docker/Docker\": repository name must be lowercase"
    );
    let msg = Reference::parse("alpine:-x").unwrap_err().to_string();
    assert!(
        msg.contains("\"alpine:-x\"") && msg.contains("tag \"-x\""),
        "{msg}"
    );
    let msg = Reference::parse("1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("image ID"), "{msg}");
}
