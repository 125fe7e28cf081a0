//! TLS as users set it up: the usual one-step self-signed certificate
//! (`openssl req -x509 ... -addext subjectAltName=IP:127.0.0.1`, which is
//! `CA:TRUE`) trusted from certs.d or `--ca-file`, and certificate errors
//! that say how to trust one.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use haul_testkit::{sample_image, RegistryConfig};

/// Makes a certificate and key exactly as the openssl one-liner does.
/// `None` (skipping loudly) when openssl is missing outside CI.
fn openssl_self_signed(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "openssl is needed for this test"
        );
        eprintln!("skipping: openssl is not installed");
        return None;
    }
    let (cert, key) = (dir.join("domain.crt"), dir.join("domain.key"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256"])
        .args(["-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(status.status.success(), "{status:?}");
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("CA:TRUE"),
        "the one-step certificate is a CA certificate"
    );
    Some((cert, key))
}

/// A TLS registry serving the openssl certificate, holding one image.
fn start(dir: &Path) -> Option<(Env, PathBuf)> {
    let (cert, key) = openssl_self_signed(dir)?;
    let env = Env::start(RegistryConfig::no_auth().with_tls_identity(cert.clone(), key))?;
    env.put_image(&sample_image(), "team/app:1");
    Some((env, cert))
}

#[test]
fn a_one_step_self_signed_certificate_in_certs_d_is_trusted_for_its_host() {
    let dir = tempfile::tempdir().unwrap();
    let Some((env, cert)) = start(dir.path()) else {
        return;
    };
    let host = env.registry.host();
    let reference = env.reference("team/app:1");

    // Not trusted yet: the sentence names the host and how to trust it.
    let out = env.haul(&["pull", &reference]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    for expected in [
        format!("cannot reach {host}"),
        "certificate is not trusted".to_string(),
        format!("certs.d/{host}/ca.crt"),
        "--ca-file".to_string(),
        format!("--insecure-registry {host}"),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in {text}");
    }

    // In the per-user certs.d (the same convention as /etc/docker/certs.d).
    let config_home = dir.path().join("xdg");
    let certs_d = config_home.join("haul/certs.d").join(&host);
    std::fs::create_dir_all(&certs_d).unwrap();
    std::fs::copy(&cert, certs_d.join("ca.crt")).unwrap();
    let out = haul_command(env.root.path(), &["pull", &reference])
        .env("XDG_CONFIG_HOME", &config_home)
        .output()
        .unwrap();
    assert_ok(&out);

    // Trusted for that host only: another name for it is not covered.
    let other = format!("localhost:{}", env.registry.port());
    let out = haul_command(env.root.path(), &["pull", &format!("{other}/team/app:1")])
        .env("XDG_CONFIG_HOME", &config_home)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not trusted"), "{}", stderr(&out));
}

#[test]
fn ca_file_and_insecure_registry_reach_a_self_signed_registry() {
    let dir = tempfile::tempdir().unwrap();
    let Some((env, cert)) = start(dir.path()) else {
        return;
    };
    let reference = env.reference("team/app:1");
    let out = env.haul(&["--ca-file", cert.to_str().unwrap(), "pull", &reference]);
    assert_ok(&out);
    let fresh = tempfile::tempdir().unwrap();
    let out = haul_in(
        fresh.path(),
        &[
            "--insecure-registry",
            &env.registry.host(),
            "pull",
            &reference,
        ],
    );
    assert_ok(&out);
}
