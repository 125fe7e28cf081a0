//! The local commands as a docker user types them: images named by ID or
//! ID prefix, `rmi` of several arguments and with `-f`, and the listing
//! habits of `images` (`-q`, a repository filter, `--digests`, JSON lines).

use crate::common::*;
use haul_testkit::{sample_image, RegistryConfig};

/// A store holding `library/sample:1.0` (pulled) and its second tag
/// `team/other:2`; returns the env, the pulled reference and the image ID.
fn pulled_with_two_tags() -> Option<(Env, String, String)> {
    let env = Env::start(RegistryConfig::no_auth())?;
    let built = env.put_image(&sample_image(), "library/sample:1.0");
    let reference = env.reference("library/sample:1.0");
    assert_ok(&env.haul(&["pull", &reference]));
    assert_ok(&env.haul(&["tag", &reference, "team/other:2"]));
    Some((env, reference, built.config.digest))
}

fn blob_count(env: &Env) -> usize {
    std::fs::read_dir(env.root.path().join("content/blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn inspect_tag_and_export_accept_an_image_id_or_its_prefix() {
    let Some((env, _, id)) = pulled_with_two_tags() else {
        return;
    };
    let hex = &id["sha256:".len()..];
    for name in [
        id.as_str(),
        hex,
        &hex[..12],
        &format!("sha256:{}", &hex[..16]),
    ] {
        let out = env.haul(&["inspect", name]);
        assert_ok(&out);
        let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(inspected["id"], id.as_str(), "inspect {name}");
    }
    assert_ok(&env.haul(&["tag", &hex[..12], "by/id:1"]));
    let out = env.haul(&["inspect", "by/id:1"]);
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspected["id"], id.as_str());
    let target = env.dir("rootfs");
    assert_ok(&env.haul(&["export", &hex[..12], target.to_str().unwrap()]));
    assert!(std::fs::read_dir(&target).unwrap().count() > 0);

    let out = env.haul(&["inspect", "0123456789ab"]);
    assert_eq!(out.status.code(), Some(1));
    // As docker, a name that is no image ID is read as a reference.
    assert_eq!(
        stderr(&out).trim(),
        "haul: no such image: 0123456789ab:latest"
    );
    env.assert_store_invariants();
}

#[test]
fn rmi_by_id_needs_force_when_several_tags_name_the_image() {
    let Some((env, reference, id)) = pulled_with_two_tags() else {
        return;
    };
    let short = &id["sha256:".len().."sha256:".len() + 12];
    let out = env.haul(&["rmi", short]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "haul: conflict: unable to delete {short} (must be forced): image is referenced in \
             several repositories or tags"
        )
    );
    assert!(blob_count(&env) > 0, "a refused rmi removed nothing");

    let out = env.haul(&["rmi", "-f", short]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains(&format!("Untagged: {reference}\n")), "{text}");
    assert!(text.contains("Untagged: team/other:2\n"), "{text}");
    assert!(text.ends_with(&format!("Deleted: {id}\n")), "{text}");
    assert_eq!(blob_count(&env), 0, "the deleted image's blobs are freed");
    assert_eq!(stdout(&env.haul(&["images", "-q"])), "");
    env.assert_store_invariants();
}

#[test]
fn rmi_by_id_of_a_singly_tagged_image_removes_it_with_its_digest_reference() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_image(&sample_image(), "library/sample:1.0");
    let reference = env.reference("library/sample:1.0");
    assert_ok(&env.haul(&["pull", &reference]));
    let out = env.haul(&["rmi", &built.config.digest]);
    assert_ok(&out);
    assert_eq!(
        stdout(&out),
        format!(
            "Untagged: {reference}\nUntagged: {}@{}\nDeleted: {}\n",
            env.reference("library/sample"),
            built.manifest.digest,
            built.config.digest
        )
    );
    assert_eq!(blob_count(&env), 0);
    env.assert_store_invariants();
}

#[test]
fn rmi_tries_every_argument_and_reports_each_failure() {
    let Some((env, reference, _)) = pulled_with_two_tags() else {
        return;
    };
    let out = env.haul(&["rmi", "no/such:1", &reference, "Bad Reference"]);
    assert_eq!(out.status.code(), Some(1));
    let errors: Vec<&str> = std::str::from_utf8(&out.stderr).unwrap().lines().collect();
    assert_eq!(errors.len(), 2, "one line per failed argument: {errors:?}");
    assert_eq!(errors[0], "haul: no such image: no/such:1");
    assert!(
        errors[1].starts_with("haul: invalid reference \"Bad Reference\""),
        "{errors:?}"
    );
    assert!(
        stdout(&out).starts_with(&format!("Untagged: {reference}\n")),
        "the good argument in the middle was still removed: {}",
        stdout(&out)
    );
    let left = stdout(&env.haul(&["images"]));
    assert!(left.contains("team/other"), "{left}");
    assert!(!left.contains("library/sample"), "{left}");
    env.assert_store_invariants();
}

#[test]
fn images_lists_ids_filters_by_repository_and_shows_digests() {
    let Some((env, reference, id)) = pulled_with_two_tags() else {
        return;
    };
    let short = &id["sha256:".len().."sha256:".len() + 12];
    // -q: one ID per row, as docker prints them.
    assert_eq!(
        stdout(&env.haul(&["images", "-q"])),
        format!("{short}\n{short}\n")
    );
    let only = stdout(&env.haul(&["images", "team/other"]));
    assert_eq!(only.lines().count(), 2, "header and one row: {only}");
    assert!(
        only.lines().nth(1).unwrap().starts_with("team/other"),
        "{only}"
    );
    assert_eq!(
        stdout(&env.haul(&["images", "team/other:3"]))
            .lines()
            .count(),
        1,
        "no row for a tag that is not there"
    );
    let full_name = reference.rsplit_once(':').unwrap().0;
    assert_eq!(
        stdout(&env.haul(&["images", "-q", full_name])),
        format!("{short}\n")
    );

    let manifest_digest = {
        let out = env.haul(&["inspect", &reference]);
        let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        inspected["manifestDigest"].as_str().unwrap().to_string()
    };
    let table = stdout(&env.haul(&["images", "--digests", full_name]));
    let mut lines = table.lines();
    assert!(
        lines.next().unwrap().contains("DIGEST"),
        "a DIGEST column: {table}"
    );
    assert!(lines.next().unwrap().contains(&manifest_digest), "{table}");
    env.assert_store_invariants();
}

#[test]
fn images_json_is_one_docker_style_object_per_line() {
    let Some((env, reference, id)) = pulled_with_two_tags() else {
        return;
    };
    // An image pulled by digest only shows its repository with a <none> tag.
    let by_digest = env.put_image(&haul_testkit::sample_image().label("v", "2"), "library/d:1");
    let digest_reference = format!(
        "{}@{}",
        env.reference("library/d"),
        by_digest.manifest.digest
    );
    assert_ok(&env.haul(&["pull", &digest_reference]));

    let out = env.haul(&["images", "--format", "json"]);
    assert_ok(&out);
    let rows: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is a JSON object"))
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in &rows {
        for key in [
            "Repository",
            "Tag",
            "ID",
            "Digest",
            "CreatedSince",
            "CreatedAt",
            "Size",
        ] {
            assert!(row.get(key).is_some(), "{key} missing in {row}");
        }
    }
    let repository = reference.rsplit_once(':').unwrap().0;
    let sample = rows
        .iter()
        .find(|r| r["Repository"] == repository)
        .expect("the pulled repository is listed");
    assert_eq!(sample["Tag"], "1.0");
    assert_eq!(sample["ID"], &id["sha256:".len().."sha256:".len() + 12]);
    let pinned = rows
        .iter()
        .find(|r| r["Repository"] == env.reference("library/d"))
        .expect("the image pulled by digest is listed under its repository");
    assert_eq!(pinned["Tag"], "<none>");
    assert_eq!(pinned["Digest"], by_digest.manifest.digest.as_str());
    env.assert_store_invariants();
}

#[test]
fn local_commands_take_the_platform_from_the_stored_index() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_index("library/multi:1");
    let reference = env.reference("library/multi:1");
    assert_ok(&env.haul(&["pull", "--all-platforms", &reference]));
    // The tag keeps every platform it pulled alive, and lists once.
    assert_ok(&env.haul(&["gc"]));
    let listed = stdout(&env.haul(&["images", "-q"]));
    assert_eq!(
        listed.lines().count(),
        1,
        "one row for the one tag: {listed}"
    );
    for (platform, arch) in [("linux/arm64", "arm64"), ("linux/amd64", "amd64")] {
        let target = env.dir(arch);
        assert_ok(&env.haul(&[
            "--platform",
            platform,
            "export",
            &reference,
            target.to_str().unwrap(),
        ]));
        assert_eq!(
            std::fs::read_to_string(target.join("etc/arch")).unwrap(),
            format!("{arch}\n"),
            "export --platform {platform}"
        );
    }
    let out = env.haul(&["--platform", "linux/arm64", "inspect", &reference]);
    assert_ok(&out);
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspected["platform"], "linux/arm64/v8");
    let out = env.haul(&["--platform", "linux/s390x", "inspect", &reference]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "haul: {} has no linux/s390x image in the store (stored: linux/amd64, \
             linux/arm64/v8); pull it with --platform or --all-platforms",
            reference
        )
    );
    // Pushed back, the tag is the whole index, byte for byte.
    let target = haul_testkit::Registry::start(RegistryConfig::no_auth()).unwrap();
    let pushed = target.reference("copies/multi:1");
    assert_ok(&env.haul(&["tag", &reference, &pushed]));
    assert_ok(&env.haul(&["push", &pushed]));
    let raw = haul_testkit::skopeo::skopeo_inspect_raw(&target, "copies/multi:1").unwrap();
    assert_eq!(raw, built.index_bytes, "the index arrives byte for byte");
    env.assert_store_invariants();

    // A store that pulled one platform says so.
    let single = tempfile::tempdir().unwrap();
    assert_ok(&haul_in(
        single.path(),
        &["--platform", "linux/arm64", "pull", &reference],
    ));
    let out = haul_in(
        single.path(),
        &[
            "--platform",
            "linux/amd64",
            "export",
            &reference,
            env.dir("no").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has no linux/amd64 image in the store (stored: linux/arm64/v8)"),
        "{}",
        stderr(&out)
    );
    assert!(!env.dir("no").exists(), "a refused export writes nothing");
    assert_store_invariants(single.path());
}

#[test]
fn save_writes_the_whole_index_or_the_platform_asked_for() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    let built = env.put_index("library/multi:1");
    let reference = env.reference("library/multi:1");
    assert_ok(&env.haul(&["pull", "--all-platforms", &reference]));
    let index_json = |dir: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap()
    };

    // Every platform pulled: the layout holds the index, byte for byte.
    let whole = env.dir("whole");
    assert_ok(&env.haul(&[
        "save",
        "--format",
        "oci",
        "-o",
        whole.to_str().unwrap(),
        &reference,
    ]));
    let entry = &index_json(&whole)["manifests"][0];
    assert_eq!(entry["digest"], built.index.digest.as_str());
    assert_eq!(
        std::fs::read(haul_testkit::image::blob_path(&whole, &built.index.digest)).unwrap(),
        built.index_bytes
    );
    let copied = env.dir("copied");
    haul_testkit::skopeo::run_skopeo([
        "copy".to_string(),
        "--all".to_string(),
        format!("oci:{}:1", whole.display()),
        format!("oci:{}:1", copied.display()),
    ])
    .expect("skopeo copies every platform out of the saved layout");

    // Loaded into another store, the index stays whole: saved again, it is
    // the same index.
    let other = tempfile::tempdir().unwrap();
    assert_ok(&haul_in(
        other.path(),
        &["load", "-i", whole.to_str().unwrap()],
    ));
    let again = env.dir("again");
    assert_ok(&haul_in(
        other.path(),
        &[
            "save",
            "--format",
            "oci",
            "-o",
            again.to_str().unwrap(),
            &reference,
        ],
    ));
    assert_eq!(
        index_json(&again)["manifests"][0]["digest"],
        built.index.digest.as_str(),
        "load kept every platform of the index"
    );
    assert_store_invariants(other.path());

    // --platform picks one image of it.
    let arm = built
        .images
        .iter()
        .find(|i| i.platform.architecture == "arm64")
        .unwrap();
    let one = env.dir("arm");
    assert_ok(&env.haul(&[
        "--platform",
        "linux/arm64",
        "save",
        "--format",
        "oci",
        "-o",
        one.to_str().unwrap(),
        &reference,
    ]));
    assert_eq!(
        index_json(&one)["manifests"][0]["digest"],
        arm.manifest.digest.as_str()
    );
    let archive = env.dir("arm.tar");
    assert_ok(&env.haul(&[
        "--platform",
        "linux/arm64",
        "save",
        "-o",
        archive.to_str().unwrap(),
        &reference,
    ]));
    let inspected: serde_json::Value = serde_json::from_slice(
        &haul_testkit::skopeo::run_skopeo([
            "inspect".to_string(),
            format!("docker-archive:{}", archive.display()),
        ])
        .unwrap(),
    )
    .unwrap();
    assert_eq!(inspected["Architecture"], "arm64");

    // tag --platform names that platform alone; push --platform says how.
    assert_ok(&env.haul(&["--platform", "linux/arm64", "tag", &reference, "arm:1"]));
    let inspected: serde_json::Value =
        serde_json::from_slice(&env.haul(&["inspect", "arm:1"]).stdout).unwrap();
    assert_eq!(inspected["manifestDigest"], arm.manifest.digest.as_str());
    assert_eq!(inspected["indexDigest"], serde_json::Value::Null);
    let out = env.haul(&["--platform", "linux/arm64", "push", &reference]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("tag it first"), "{}", stderr(&out));

    let none = env.dir("none");
    let out = env.haul(&[
        "--platform",
        "linux/s390x",
        "save",
        "--format",
        "oci",
        "-o",
        none.to_str().unwrap(),
        &reference,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "has no linux/s390x image in the store (stored: linux/amd64, linux/arm64/v8)"
        ),
        "{}",
        stderr(&out)
    );
    assert!(!none.exists(), "nothing written");
    env.assert_store_invariants();
}
