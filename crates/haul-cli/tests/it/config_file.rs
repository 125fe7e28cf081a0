//! The config file (`--config`, `$HAUL_CONFIG`, `$XDG_CONFIG_HOME/haul/config.toml`):
//! mirrors that serve pulls while the registry is unreachable, with
//! containerd's `?ns=`; and proxies, never used for loopback registries.

use crate::common::*;
use haul_testkit::fault_proxy::FaultProxy;
use haul_testkit::{sample_image, RegistryConfig};

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn a_mirror_from_the_config_file_serves_a_pull_while_the_registry_is_unreachable() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "team/app:1");
    let mirror = FaultProxy::start(&env.registry.host()).unwrap();
    let named = format!("127.0.0.1:{}", closed_port());
    let reference = format!("{named}/team/app:1");
    let file = env.dir("haul.toml");
    std::fs::write(
        &file,
        format!(
            "max-concurrent-downloads = 2\n\n[registry.\"{named}\"]\nmirrors = [\"http://{}\"]\n",
            mirror.authority()
        ),
    )
    .unwrap();

    // From $HAUL_CONFIG.
    let out = haul_command(env.root.path(), &["pull", &reference])
        .env("HAUL_CONFIG", &file)
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(stdout(&out).contains(&reference), "{}", stdout(&out));
    let requests = mirror.requests();
    let reads: Vec<_> = requests
        .iter()
        .filter(|r| r.path.contains("/manifests/") || r.path.contains("/blobs/"))
        .collect();
    assert!(!reads.is_empty(), "the mirror served the pull");
    let ns = format!("ns={}", named.replace(':', "%3A"));
    for r in &reads {
        assert!(r.path.contains(&ns), "{} {} lacks {ns}", r.method, r.path);
    }

    // From $XDG_CONFIG_HOME/haul/config.toml, and with --config.
    let xdg = env.dir("xdg");
    std::fs::create_dir_all(xdg.join("haul")).unwrap();
    std::fs::copy(&file, xdg.join("haul/config.toml")).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let out = haul_command(fresh.path(), &["pull", &reference])
        .env("XDG_CONFIG_HOME", &xdg)
        .output()
        .unwrap();
    assert_ok(&out);
    let fresh = tempfile::tempdir().unwrap();
    let out = haul_in(
        fresh.path(),
        &["--config", file.to_str().unwrap(), "pull", &reference],
    );
    assert_ok(&out);

    // Without the file the registry itself is asked, and is unreachable.
    let fresh = tempfile::tempdir().unwrap();
    let out = haul_in(fresh.path(), &["pull", &reference]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("connection refused"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_broken_config_file_is_named_in_the_error() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("bad.toml");
    std::fs::write(&file, "max-concurrent-downloads = \"many\"\n").unwrap();
    let out = haul_in(root.path(), &["--config", file.to_str().unwrap(), "images"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("invalid config file {}", file.display())),
        "{}",
        stderr(&out)
    );
    let missing = root.path().join("missing.toml");
    let out = haul_command(root.path(), &["images"])
        .env("HAUL_CONFIG", &missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
}

#[test]
fn http_proxy_is_not_used_for_a_loopback_registry() {
    let Some(env) = Env::start(RegistryConfig::no_auth()) else {
        return;
    };
    env.put_image(&sample_image(), "team/app:1");
    // A proxy that counts what reaches it (and would forward it).
    let proxy = FaultProxy::start(&env.registry.host()).unwrap();
    let out = haul_command(env.root.path(), &["pull", &env.reference("team/app:1")])
        .env("HTTP_PROXY", proxy.url())
        .env("HTTPS_PROXY", proxy.url())
        .env("ALL_PROXY", proxy.url())
        .env("http_proxy", proxy.url())
        .env("https_proxy", proxy.url())
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(
        proxy.requests().is_empty(),
        "the proxy saw: {:#?}",
        proxy.requests()
    );
}

#[test]
fn client_certificate_and_ca_from_the_config_file_reach_a_registry_that_requires_one() {
    let Some(env) = Env::start(RegistryConfig::no_auth().with_client_certs()) else {
        return;
    };
    env.put_image(&sample_image(), "team/app:1");
    let host = env.registry.host();
    let ca = env.registry.ca_cert_path().unwrap();
    let (cert, key) = env.registry.client_identity().unwrap();
    let reference = env.reference("team/app:1");

    // Trusting the server is not enough: it wants a client certificate.
    let out = env.haul(&["--ca-file", ca.to_str().unwrap(), "pull", &reference]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains(&host), "{}", stderr(&out));

    let file = env.dir("mtls.toml");
    std::fs::write(
        &file,
        format!(
            "[registry.\"{host}\"]\nca = [{ca:?}]\nclient-cert = {cert:?}\nclient-key = {key:?}\n"
        ),
    )
    .unwrap();
    let out = haul_in(
        env.root.path(),
        &["--config", file.to_str().unwrap(), "pull", &reference],
    );
    assert_ok(&out);

    // Or Docker's way: ca.crt, client.cert and client.key in certs.d/HOST.
    let xdg = env.dir("xdg-certs");
    let certs_d = xdg.join("haul/certs.d").join(&host);
    std::fs::create_dir_all(&certs_d).unwrap();
    for entry in std::fs::read_dir(env.registry.ca_dir().unwrap()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, certs_d.join(path.file_name().unwrap())).unwrap();
    }
    let fresh = tempfile::tempdir().unwrap();
    let out = haul_command(fresh.path(), &["pull", &reference])
        .env("XDG_CONFIG_HOME", &xdg)
        .output()
        .unwrap();
    assert_ok(&out);
}
