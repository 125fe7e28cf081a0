//! Driving `skopeo` against testkit registries and OCI layouts, isolated
//! from the user's configuration (private auth file, registries.conf and
//! Docker config; `--insecure-policy`).

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use crate::error::{IoContext, Result};
use crate::peers::{binary, run_command};
use crate::registry::Registry;

/// Flags skopeo needs to talk to `registry`; `prefix` is `""`, `"src-"` or
/// `"dest-"`. TLS registries are verified against the testkit CA
/// (`--cert-dir`), plain ones use `--tls-verify=false`; credentials are
/// passed with `--creds`, else `--no-creds`.
pub fn registry_flags(registry: &Registry, prefix: &str) -> Vec<OsString> {
    let mut flags: Vec<OsString> = Vec::new();
    match registry.ca_dir() {
        Some(dir) => {
            flags.push(format!("--{prefix}tls-verify=true").into());
            flags.push(format!("--{prefix}cert-dir").into());
            flags.push(dir.into());
        }
        None => flags.push(format!("--{prefix}tls-verify=false").into()),
    }
    match registry.credentials() {
        Some(creds) => {
            flags.push(format!("--{prefix}creds").into());
            flags.push(creds.joined().into());
        }
        None => flags.push(format!("--{prefix}no-creds").into()),
    }
    flags
}

/// Runs `skopeo --insecure-policy ARGS...` in an isolated environment and
/// returns its stdout.
pub fn run_skopeo<I, S>(args: I) -> Result<Vec<u8>>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let skopeo = binary("skopeo", "skopeo")?;
    let home = tempfile::Builder::new()
        .prefix("haul-skopeo-")
        .tempdir()
        .ctx(|| "creating skopeo temp dir".into())?;
    let auth = home.path().join("auth.json");
    let registries = home.path().join("registries.conf");
    let docker_config = home.path().join("docker");
    let tmp = home.path().join("tmp");
    std::fs::write(&auth, b"{\"auths\":{}}\n").ctx(|| "writing auth.json".into())?;
    std::fs::write(&registries, b"unqualified-search-registries = []\n")
        .ctx(|| "writing registries.conf".into())?;
    std::fs::create_dir(&docker_config).ctx(|| "creating docker config dir".into())?;
    std::fs::create_dir(&tmp).ctx(|| "creating skopeo tmp dir".into())?;
    let mut command = Command::new(skopeo);
    command
        .env("REGISTRY_AUTH_FILE", &auth)
        .env("CONTAINERS_REGISTRIES_CONF", &registries)
        .env("DOCKER_CONFIG", &docker_config)
        .env("TMPDIR", &tmp)
        .arg("--insecure-policy")
        .arg("--command-timeout")
        .arg("300s")
        .arg("--tmpdir")
        .arg(&tmp)
        .args(args.into_iter().map(Into::into));
    run_command(command)
}

fn oci_ref(layout: &Path, tag: &str) -> OsString {
    let mut s = OsString::from("oci:");
    s.push(layout);
    s.push(":");
    s.push(tag);
    s
}

fn docker_ref(registry: &Registry, name: &str) -> String {
    format!("docker://{}", registry.reference(name))
}

/// Copies `oci:LAYOUT:TAG` to `registry` as `dest` (`repo:tag`), keeping
/// every digest (`--preserve-digests`) and every platform of an index
/// (`--all`).
pub fn push_oci_layout_with_skopeo(
    layout: &Path,
    tag: &str,
    registry: &Registry,
    dest: &str,
) -> Result<()> {
    let mut args: Vec<OsString> = vec!["copy".into(), "--all".into(), "--preserve-digests".into()];
    args.extend(registry_flags(registry, "dest-"));
    args.push(oci_ref(layout, tag));
    args.push(docker_ref(registry, dest).into());
    run_skopeo(args).map(|_| ())
}

/// Copies `src` (`repo:tag` or `repo@digest`) from `registry` into the OCI
/// layout at `layout` as `tag`, unchanged (`--all --preserve-digests`,
/// uncompressed layers accepted as they are).
pub fn skopeo_copy_to_oci(registry: &Registry, src: &str, layout: &Path, tag: &str) -> Result<()> {
    let mut args: Vec<OsString> = vec![
        "copy".into(),
        "--all".into(),
        "--preserve-digests".into(),
        "--dest-oci-accept-uncompressed-layers".into(),
    ];
    args.extend(registry_flags(registry, "src-"));
    args.push(docker_ref(registry, src).into());
    args.push(oci_ref(layout, tag));
    run_skopeo(args).map(|_| ())
}

/// Copies between two registries (`--all --preserve-digests`).
pub fn skopeo_copy_between(
    src_registry: &Registry,
    src: &str,
    dest_registry: &Registry,
    dest: &str,
) -> Result<()> {
    let mut args: Vec<OsString> = vec!["copy".into(), "--all".into(), "--preserve-digests".into()];
    args.extend(registry_flags(src_registry, "src-"));
    args.extend(registry_flags(dest_registry, "dest-"));
    args.push(docker_ref(src_registry, src).into());
    args.push(docker_ref(dest_registry, dest).into());
    run_skopeo(args).map(|_| ())
}

fn inspect(registry: &Registry, image: &str, extra: &[&str]) -> Result<Vec<u8>> {
    let mut args: Vec<OsString> = vec!["inspect".into()];
    args.extend(extra.iter().map(OsString::from));
    args.extend(registry_flags(registry, ""));
    args.push(docker_ref(registry, image).into());
    run_skopeo(args)
}

/// `skopeo inspect` of `image` (`repo:tag` or `repo@digest`) as JSON
/// (`Digest`, `Layers`, `Architecture`, ...; for an index, of the entry
/// matching this machine).
pub fn skopeo_inspect(registry: &Registry, image: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_slice(&inspect(registry, image, &[])?)?)
}

/// The raw manifest (or index) bytes the registry serves for `image`; their
/// SHA-256 is the manifest digest.
pub fn skopeo_inspect_raw(registry: &Registry, image: &str) -> Result<Vec<u8>> {
    inspect(registry, image, &["--raw"])
}

/// The raw image configuration bytes of `image`.
pub fn skopeo_inspect_config(registry: &Registry, image: &str) -> Result<Vec<u8>> {
    inspect(registry, image, &["--config", "--raw"])
}
