//! The registry modes really enforce what they claim, and clean up after
//! themselves.

use std::time::Duration;

use crate::common::{bearer, fetch_token, get, post};
use haul_testkit::{require_peer, Access, Credentials, Grant, Registry, RegistryConfig};

#[test]
fn no_auth_registry_answers_200() {
    require_peer!("docker-registry");
    let registry = Registry::start(RegistryConfig::no_auth()).unwrap();
    assert!(registry.url().starts_with("http://127.0.0.1:"));
    assert_eq!(get(&registry, "/v2/", None).0, 200);
    assert!(registry.credentials().is_none());
    assert!(registry.log().contains("listening on"));
}

#[test]
fn htpasswd_registry_requires_the_right_password() {
    require_peer!("docker-registry");
    let registry = Registry::start(RegistryConfig::htpasswd()).unwrap();
    let creds = registry.credentials().unwrap().clone();
    let (status, challenge) = get(&registry, "/v2/", None);
    assert_eq!(status, 401);
    assert!(challenge.unwrap().starts_with("Basic realm="));
    assert_eq!(
        get(&registry, "/v2/", Some(&creds.basic_auth_header())).0,
        200
    );
    let wrong = Credentials::new(&creds.username, "not-the-password");
    assert_eq!(
        get(&registry, "/v2/", Some(&wrong.basic_auth_header())).0,
        401
    );
}

#[test]
fn token_registry_challenges_and_accepts_issued_tokens() {
    require_peer!("docker-registry");
    let registry = Registry::start(RegistryConfig::token()).unwrap();
    let server = registry.token_server().unwrap();
    let creds = registry.credentials().unwrap().clone();

    let (status, challenge) = get(&registry, "/v2/", None);
    assert_eq!(status, 401);
    let challenge = challenge.unwrap();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(&format!("realm=\"{}\"", server.realm())),
        "{challenge}"
    );
    assert!(
        challenge.contains(&format!("service=\"{}\"", server.config().service)),
        "{challenge}"
    );

    let wrong = Credentials::new(&creds.username, "wrong");
    let (status, _) = fetch_token(&registry, Some(&wrong), &["repository:a:pull"]);
    assert_eq!(status, 401);
    assert_eq!(server.refused_count(), 1);
    assert_eq!(server.issued_count(), 0);

    let (status, reply) = fetch_token(&registry, Some(&creds), &[]);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["token"], reply["access_token"]);
    assert_eq!(reply["expires_in"], 300);
    assert!(reply["issued_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(get(&registry, "/v2/", Some(&bearer(&reply))).0, 200);
    assert_eq!(server.issued_count(), 1);
    assert_eq!(
        server.issued_tokens()[0].subject.as_deref(),
        Some("testuser")
    );
    // A token from another signer is refused.
    let forged = haul_testkit::token_server::TokenSigner::generate()
        .unwrap()
        .sign(
            &serde_json::json!({"iss": server.config().issuer, "aud": server.config().service,
            "sub": "x", "exp": 4_000_000_000u64, "nbf": 0, "iat": 0, "jti": "1", "access": []}),
        )
        .unwrap();
    assert_eq!(
        get(&registry, "/v2/", Some(&format!("Bearer {forged}"))).0,
        401
    );
}

#[test]
fn pull_only_token_cannot_push() {
    require_peer!("docker-registry");
    let registry = Registry::start(RegistryConfig::token()).unwrap();
    let creds = registry.credentials().unwrap().clone();

    let (status, pull) = fetch_token(&registry, Some(&creds), &["repository:repo-a:pull"]);
    assert_eq!(status, 200);
    let code = post(&registry, "/v2/repo-a/blobs/uploads/", Some(&bearer(&pull)));
    assert!(code == 401 || code == 403, "pull-only token got {code}");
    // ... but may read the repository (404: it does not exist yet, not 401).
    let (code, _) = get(&registry, "/v2/repo-a/tags/list", Some(&bearer(&pull)));
    assert_eq!(code, 404);

    let (_, push) = fetch_token(&registry, Some(&creds), &["repository:repo-a:pull,push"]);
    assert_eq!(
        post(&registry, "/v2/repo-a/blobs/uploads/", Some(&bearer(&push))),
        202
    );
    // A push token for repo A does not open repo B.
    assert_eq!(
        post(&registry, "/v2/repo-b/blobs/uploads/", Some(&bearer(&push))),
        401
    );
}

#[test]
fn anonymous_token_policy_is_applied() {
    require_peer!("docker-registry");
    let config = RegistryConfig::token().with_anonymous(vec![Grant::pull("public/*")]);
    let registry = Registry::start(config).unwrap();

    let (status, reply) = fetch_token(
        &registry,
        None,
        &["repository:public/x:pull,push", "repository:private/y:pull"],
    );
    assert_eq!(status, 200);
    let issued = registry.token_server().unwrap().issued_tokens();
    assert_eq!(issued[0].subject, None);
    assert_eq!(
        issued[0].access,
        vec![Access {
            kind: "repository".into(),
            name: "public/x".into(),
            actions: vec!["pull".into()],
        }]
    );
    let token = bearer(&reply);
    assert_eq!(
        get(&registry, "/v2/public/x/tags/list", Some(&token)).0,
        404
    );
    assert_eq!(
        get(&registry, "/v2/private/y/tags/list", Some(&token)).0,
        401
    );
    assert_eq!(
        post(&registry, "/v2/public/x/blobs/uploads/", Some(&token)),
        401
    );
}

#[test]
fn exact_expiry_tokens_stop_working_after_their_lifetime() {
    require_peer!("docker-registry");
    let mut config = RegistryConfig::token().with_token_lifetime(2);
    config.token.exact_expiry = true;
    let registry = Registry::start(config).unwrap();
    let creds = registry.credentials().unwrap().clone();
    let (_, reply) = fetch_token(&registry, Some(&creds), &[]);
    assert_eq!(reply["expires_in"], 2);
    let token = bearer(&reply);
    assert_eq!(get(&registry, "/v2/", Some(&token)).0, 200);
    std::thread::sleep(Duration::from_millis(3200));
    assert_eq!(get(&registry, "/v2/", Some(&token)).0, 401);

    // Hand-made tokens: fresh works, long expired does not.
    let server = registry.token_server().unwrap();
    let fresh = server.make_token("testuser", &[], 60).unwrap();
    assert_eq!(
        get(&registry, "/v2/", Some(&format!("Bearer {fresh}"))).0,
        200
    );
    let stale = server.make_token("testuser", &[], -120).unwrap();
    assert_eq!(
        get(&registry, "/v2/", Some(&format!("Bearer {stale}"))).0,
        401
    );
}

#[test]
fn tls_registry_serves_https_with_the_generated_ca() {
    require_peer!("docker-registry");
    let registry = Registry::start(RegistryConfig::no_auth().with_tls()).unwrap();
    assert!(registry.url().starts_with("https://127.0.0.1:"));
    let ca = std::fs::read(registry.ca_cert_path().unwrap()).unwrap();
    assert_eq!(ca, registry.ca_cert_pem().unwrap());
    assert!(registry.ca_dir().unwrap().join("ca.crt").is_file());
    assert_eq!(get(&registry, "/v2/", None).0, 200);

    // Also under the name `localhost`.
    let url = format!("https://localhost:{}/v2/", registry.port());
    let response = haul_testkit::http::send(registry.http_agent().get(&url)).unwrap();
    assert_eq!(response.status(), 200);

    // Not trusted without the CA.
    let untrusting = haul_testkit::http::http_agent(None).unwrap();
    let err = haul_testkit::http::send(untrusting.get(&format!("{}/v2/", registry.url())));
    assert!(err.is_err(), "TLS must fail without the test CA");

    // Plain HTTP to the TLS port does not work.
    let plain = format!("http://{}/v2/", registry.host());
    if let Ok(response) = haul_testkit::http::send(untrusting.get(&plain)) {
        assert_eq!(response.status(), 400, "plain HTTP must not be served");
    }
}

#[test]
fn tls_combines_with_htpasswd_and_token_auth() {
    require_peer!("docker-registry");
    let basic = Registry::start(RegistryConfig::htpasswd().with_tls()).unwrap();
    let creds = basic.credentials().unwrap().clone();
    assert_eq!(get(&basic, "/v2/", None).0, 401);
    assert_eq!(get(&basic, "/v2/", Some(&creds.basic_auth_header())).0, 200);

    let token = Registry::start(RegistryConfig::token().with_tls()).unwrap();
    assert_eq!(get(&token, "/v2/", None).0, 401);
    let (_, reply) = fetch_token(&token, Some(&creds), &[]);
    assert_eq!(get(&token, "/v2/", Some(&bearer(&reply))).0, 200);
}

fn process_alive(pid: u32) -> bool {
    // After kill + wait the pid is reaped; a recycled pid would not be ours.
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("docker-registry"))
        .unwrap_or(false)
}

#[test]
fn dropping_a_registry_kills_it_and_removes_its_directory() {
    require_peer!("docker-registry");
    let registry = Registry::start(RegistryConfig::token().with_tls()).unwrap();
    let (pid, dir, port) = (
        registry.pid(),
        registry.dir().to_path_buf(),
        registry.port(),
    );
    let realm = registry.token_server().unwrap().realm();
    assert!(registry.is_running());
    assert!(process_alive(pid));
    assert!(registry.storage_dir().starts_with(&dir));
    drop(registry);
    assert!(!process_alive(pid));
    assert!(!dir.exists());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    let agent = haul_testkit::http::http_agent(None).unwrap();
    assert!(haul_testkit::http::send(agent.get(&realm)).is_err());
}

#[test]
fn a_panicking_test_still_cleans_up() {
    require_peer!("docker-registry");
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let registry = Registry::start(RegistryConfig::htpasswd()).unwrap();
        tx.send((registry.pid(), registry.dir().to_path_buf()))
            .unwrap();
        panic!("simulated test failure");
    })
    .join();
    assert!(outcome.is_err());
    let (pid, dir) = rx.recv().unwrap();
    assert!(!process_alive(pid));
    assert!(!dir.exists());
}

#[test]
fn many_registries_start_in_parallel() {
    require_peer!("docker-registry");
    let handles: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| Registry::start(RegistryConfig::no_auth()).unwrap()))
        .collect();
    let registries: Vec<Registry> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut ports: Vec<u16> = registries.iter().map(Registry::port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 4);
    for registry in &registries {
        assert_eq!(get(registry, "/v2/", None).0, 200);
    }
}
