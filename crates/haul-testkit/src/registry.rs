//! A real `docker-registry` (CNCF distribution 2.8) on 127.0.0.1, in every
//! auth mode, with or without TLS; stopped and cleaned up on drop.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::htpasswd::{write_htpasswd, Credentials};
use crate::peers::find_binary;
use crate::tls::{TestCa, TlsFiles};
use crate::token_server::{Grant, TokenServer, TokenServerConfig, TokenUser};

/// How clients must authenticate to the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Anyone may do anything.
    None,
    /// HTTP Basic auth against a generated htpasswd file.
    Htpasswd,
    /// Bearer tokens from the testkit's [`TokenServer`].
    Token,
}

/// Token-server settings used when [`RegistryConfig::auth`] is [`AuthMode::Token`].
#[derive(Clone, Debug)]
pub struct TokenOptions {
    /// What anonymous requests get (empty: a token with no access).
    pub anonymous: Vec<Grant>,
    /// What every configured user may do (default: everything).
    pub user_grants: Vec<Grant>,
    /// Token lifetime in seconds.
    pub lifetime_secs: u64,
    /// See [`TokenServerConfig::exact_expiry`].
    pub exact_expiry: bool,
    /// See [`TokenServerConfig::advertised_lifetime_secs`].
    pub advertised_lifetime_secs: Option<u64>,
}

impl Default for TokenOptions {
    fn default() -> Self {
        Self {
            anonymous: Vec::new(),
            user_grants: vec![Grant::all()],
            lifetime_secs: 300,
            exact_expiry: false,
            advertised_lifetime_secs: None,
        }
    }
}

/// What kind of registry to start.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Authentication mode.
    pub auth: AuthMode,
    /// Serve HTTPS with a certificate from a fresh test CA.
    pub tls: bool,
    /// Serve HTTPS with this certificate and key (PEM files) instead, e.g.
    /// a one-step self-signed certificate made by `openssl req -x509`;
    /// [`Registry::ca_cert_path`] is then the certificate itself. Readiness
    /// is then judged from the registry's log only (the testkit's own
    /// client may not accept such a certificate).
    pub tls_identity: Option<(PathBuf, PathBuf)>,
    /// Require TLS client certificates issued by the test CA (implies
    /// `tls`); one is written for the tests, see [`Registry::client_identity`].
    /// Readiness is then judged from the registry's log only.
    pub client_certs: bool,
    /// Users for htpasswd and token modes (default `testuser`/`testpass`).
    pub users: Vec<Credentials>,
    /// Token-mode settings.
    pub token: TokenOptions,
    /// How long to wait for the registry to answer.
    pub start_timeout: Duration,
    /// Accept Docker schema 1 manifests, and convert schema 2 ones to
    /// signed schema 1 for clients that ask only for that (the registry
    /// signs with a key it makes at start).
    pub schema1: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            auth: AuthMode::None,
            tls: false,
            tls_identity: None,
            client_certs: false,
            users: vec![Credentials::new("testuser", "testpass")],
            token: TokenOptions::default(),
            start_timeout: Duration::from_secs(30),
            schema1: false,
        }
    }
}

impl RegistryConfig {
    /// No authentication, plain HTTP.
    pub fn no_auth() -> Self {
        Self::default()
    }

    /// htpasswd Basic auth, plain HTTP.
    pub fn htpasswd() -> Self {
        Self {
            auth: AuthMode::Htpasswd,
            ..Self::default()
        }
    }

    /// Bearer-token auth through a testkit token server, plain HTTP.
    pub fn token() -> Self {
        Self {
            auth: AuthMode::Token,
            ..Self::default()
        }
    }

    /// Serve HTTPS instead of HTTP.
    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Serve HTTPS with the given certificate and key (PEM files).
    pub fn with_tls_identity(mut self, cert: PathBuf, key: PathBuf) -> Self {
        self.tls = true;
        self.tls_identity = Some((cert, key));
        self
    }

    /// Serve HTTPS and require client certificates from the test CA.
    pub fn with_client_certs(mut self) -> Self {
        self.tls = true;
        self.client_certs = true;
        self
    }

    /// Replaces the users.
    pub fn with_users(mut self, users: Vec<Credentials>) -> Self {
        self.users = users;
        self
    }

    /// Accepts and serves Docker schema 1 manifests.
    pub fn with_schema1(mut self) -> Self {
        self.schema1 = true;
        self
    }

    /// Sets the token lifetime (seconds).
    pub fn with_token_lifetime(mut self, secs: u64) -> Self {
        self.token.lifetime_secs = secs;
        self
    }

    /// Sets what anonymous token requests get.
    pub fn with_anonymous(mut self, grants: Vec<Grant>) -> Self {
        self.token.anonymous = grants;
        self
    }
}

/// How many ports to try when the chosen one is taken meanwhile.
const BIND_ATTEMPTS: usize = 8;

/// A running registry. Killed, reaped and its directory removed on drop.
pub struct Registry {
    child: Mutex<Child>,
    port: u16,
    config: RegistryConfig,
    token_server: Option<TokenServer>,
    tls: Option<TlsFiles>,
    client_identity: Option<(PathBuf, PathBuf)>,
    ca_pem: Option<Vec<u8>>,
    log_path: PathBuf,
    storage_dir: PathBuf,
    config_path: PathBuf,
    agent: ureq::Agent,
    // Last: removed after the process is gone.
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry as `config` describes and waits until `/v2/` answers.
    pub fn start(config: RegistryConfig) -> Result<Self> {
        let binary = find_binary("docker-registry").ok_or_else(|| Error::MissingBinary {
            name: "docker-registry".into(),
            package: "docker-registry".into(),
        })?;
        let dir = tempfile::Builder::new()
            .prefix("haul-registry-")
            .tempdir()
            .ctx(|| "creating registry temp dir".into())?;
        let root = dir.path().to_path_buf();
        let storage_dir = root.join("storage");
        std::fs::create_dir(&storage_dir).ctx(|| "creating storage dir".into())?;

        let mut client_identity = None;
        let (tls, ca_pem) = if let Some((cert, key)) = &config.tls_identity {
            let ca_dir = root.join("tls/ca");
            std::fs::create_dir_all(&ca_dir).ctx(|| "creating the CA dir".into())?;
            let pem = std::fs::read(cert).ctx(|| format!("reading {}", cert.display()))?;
            std::fs::write(ca_dir.join("ca.crt"), &pem).ctx(|| "writing ca.crt".into())?;
            let files = TlsFiles {
                ca_cert: cert.clone(),
                ca_dir,
                server_cert: cert.clone(),
                server_key: key.clone(),
            };
            (Some(files), Some(pem))
        } else if config.tls {
            let ca = TestCa::generate("haul-testkit CA")?;
            let files = ca.write_server_files(&root.join("tls"), &["127.0.0.1", "localhost"])?;
            if config.client_certs {
                let client = ca.issue_client_cert("haul-testkit client")?;
                let (cert, key) = (root.join("tls/client.cert"), root.join("tls/client.key"));
                // Also beside ca.crt, so that the CA dir is a whole certs.d
                // entry (skopeo's --cert-dir reads *.cert + *.key there).
                for dir in [root.join("tls"), files.ca_dir.clone()] {
                    for (name, pem) in [
                        ("client.cert", &client.cert_pem),
                        ("client.key", &client.key_pem),
                    ] {
                        let path = dir.join(name);
                        std::fs::write(&path, pem).ctx(|| format!("writing {}", path.display()))?;
                    }
                }
                client_identity = Some((cert, key));
            }
            (Some(files), Some(ca.cert_pem().as_bytes().to_vec()))
        } else {
            (None, None)
        };

        let mut auth_yaml = String::new();
        let mut token_server = None;
        match config.auth {
            AuthMode::None => {}
            AuthMode::Htpasswd => {
                let path = root.join("htpasswd");
                write_htpasswd(&path, &config.users)?;
                auth_yaml = format!(
                    "auth:\n  htpasswd:\n    realm: haul-testkit\n    path: {}\n",
                    yaml_path(&path)
                );
            }
            AuthMode::Token => {
                let server = TokenServer::start(TokenServerConfig {
                    users: config
                        .users
                        .iter()
                        .map(|c| TokenUser {
                            credentials: c.clone(),
                            grants: config.token.user_grants.clone(),
                        })
                        .collect(),
                    anonymous: config.token.anonymous.clone(),
                    lifetime_secs: config.token.lifetime_secs,
                    exact_expiry: config.token.exact_expiry,
                    advertised_lifetime_secs: config.token.advertised_lifetime_secs,
                    ..TokenServerConfig::default()
                })?;
                let bundle = root.join("token-signer.pem");
                std::fs::write(&bundle, server.signer().cert_pem())
                    .ctx(|| "writing token cert bundle".into())?;
                auth_yaml = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    yaml_str(&server.realm()),
                    yaml_str(&server.config().service),
                    yaml_str(&server.config().issuer),
                    yaml_path(&bundle)
                );
                token_server = Some(server);
            }
        }

        let probe_ready = config.tls_identity.is_none() && !config.client_certs;
        let agent = if probe_ready {
            crate::http::http_agent(ca_pem.as_deref())?
        } else {
            crate::http::http_agent(None)?
        };
        let log_path = root.join("registry.log");
        let config_path = root.join("config.yml");
        let mut last_error = None;
        for _ in 0..BIND_ATTEMPTS {
            let port = free_port()?;
            if config.schema1 {
                auth_yaml.push_str("compatibility:\n  schema1:\n    enabled: true\n");
            }
            let client_ca = tls.as_ref().filter(|_| config.client_certs);
            let yaml = config_yaml(
                port,
                &storage_dir,
                tls.as_ref(),
                client_ca.map(|t| t.ca_cert.as_path()),
                &auth_yaml,
            );
            std::fs::write(&config_path, yaml).ctx(|| "writing registry config".into())?;
            let mut child = spawn(&binary, &config_path, &log_path)?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            match wait_ready(
                &mut child,
                probe_ready.then_some(&agent),
                scheme,
                port,
                &log_path,
                config.start_timeout,
            ) {
                Ok(()) => {
                    return Ok(Self {
                        child: Mutex::new(child),
                        port,
                        config,
                        token_server,
                        tls,
                        client_identity,
                        ca_pem,
                        log_path,
                        storage_dir,
                        config_path,
                        agent,
                        dir,
                    });
                }
                Err(failure) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    match failure {
                        StartFailure::PortTaken => {
                            last_error = Some(Error::RegistryStart {
                                reason: format!("port {port} already in use"),
                                log: read_log(&log_path),
                            });
                        }
                        StartFailure::Fatal(reason) => {
                            return Err(Error::RegistryStart {
                                reason,
                                log: read_log(&log_path),
                            })
                        }
                    }
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::RegistryStart {
            reason: "no free port".into(),
            log: String::new(),
        }))
    }

    /// The client certificate and key (PEM files) the registry accepts,
    /// when it requires client certificates.
    pub fn client_identity(&self) -> Option<(&Path, &Path)> {
        self.client_identity
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()))
    }

    /// `host:port`, e.g. `127.0.0.1:41234`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme(), self.host())
    }

    /// `host:port/NAME` for a repository (with optional `:tag` / `@digest`).
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{}", self.host(), name)
    }

    /// How the registry was configured.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// The authentication mode.
    pub fn auth_mode(&self) -> AuthMode {
        self.config.auth
    }

    /// Whether the registry serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The first user's credentials when the registry needs them.
    pub fn credentials(&self) -> Option<&Credentials> {
        match self.config.auth {
            AuthMode::None => None,
            _ => self.config.users.first(),
        }
    }

    /// All configured users.
    pub fn users(&self) -> &[Credentials] {
        &self.config.users
    }

    /// The token server (token mode only).
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token_server.as_ref()
    }

    /// Path of the CA certificate to trust (TLS only).
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_cert.as_path())
    }

    /// The CA certificate, PEM bytes (TLS only).
    pub fn ca_cert_pem(&self) -> Option<&[u8]> {
        self.ca_pem.as_deref()
    }

    /// A directory holding only `ca.crt` (TLS only): skopeo's `--cert-dir`,
    /// or the content of a Docker `certs.d/HOST:PORT/` directory.
    pub fn ca_dir(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_dir.as_path())
    }

    /// The registry's storage root directory.
    pub fn storage_dir(&self) -> &Path {
        &self.storage_dir
    }

    /// The temporary directory holding everything of this registry.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The generated `config.yml`.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The registry's captured stdout and stderr so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Path of the captured log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Process id of the registry.
    pub fn pid(&self) -> u32 {
        self.child.lock().expect("poisoned").id()
    }

    /// Whether the registry process is still running.
    pub fn is_running(&self) -> bool {
        matches!(self.child.lock().expect("poisoned").try_wait(), Ok(None))
    }

    /// A blocking HTTP client that trusts this registry's CA.
    pub fn http_agent(&self) -> &ureq::Agent {
        &self.agent
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

enum StartFailure {
    PortTaken,
    Fatal(String),
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").ctx(|| "binding 127.0.0.1:0".into())?;
    Ok(listener
        .local_addr()
        .ctx(|| "reading bound address".into())?
        .port())
}

fn spawn(binary: &Path, config_path: &Path, log_path: &Path) -> Result<Child> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(log_path)
        .ctx(|| format!("opening {}", log_path.display()))?;
    let log_err = log.try_clone().ctx(|| "duplicating log handle".into())?;
    let mut command = Command::new(binary);
    command
        .arg("serve")
        .arg(config_path)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // distribution lets REGISTRY_* variables override the config file.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REGISTRY_") {
            command.env_remove(key);
        }
    }
    command
        .spawn()
        .ctx(|| format!("starting {}", binary.display()))
}

fn wait_ready(
    child: &mut Child,
    agent: Option<&ureq::Agent>,
    scheme: &str,
    port: u16,
    log_path: &Path,
    timeout: Duration,
) -> Result<(), StartFailure> {
    let deadline = Instant::now() + timeout;
    let listening = format!("listening on 127.0.0.1:{port}");
    let url = format!("{scheme}://127.0.0.1:{port}/v2/");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = read_log(log_path);
            return Err(if log.contains("address already in use") {
                StartFailure::PortTaken
            } else {
                StartFailure::Fatal(format!("registry exited early with {status}"))
            });
        }
        // The log line proves that *our* process owns the port, so that a
        // registry of a parallel test on the same port cannot fool us.
        if read_log(log_path).contains(&listening) {
            let Some(agent) = agent else {
                return Ok(());
            };
            if let Ok(response) = crate::http::send(agent.get(&url)) {
                if matches!(response.status(), 200 | 401) {
                    return Ok(());
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(StartFailure::Fatal(format!(
                "GET {url} did not answer 200/401 within {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn yaml_str(text: &str) -> String {
    serde_json::to_string(text).expect("string serialises")
}

fn yaml_path(path: &Path) -> String {
    yaml_str(&path.to_string_lossy())
}

fn config_yaml(
    port: u16,
    storage: &Path,
    tls: Option<&TlsFiles>,
    client_ca: Option<&Path>,
    auth_yaml: &str,
) -> String {
    let mut tls_yaml = tls
        .map(|t| {
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                yaml_path(&t.server_cert),
                yaml_path(&t.server_key)
            )
        })
        .unwrap_or_default();
    if let Some(ca) = client_ca {
        tls_yaml.push_str(&format!("    clientcas:\n      - {}\n", yaml_path(ca)));
    }
    format!(
        "version: 0.1\n\
         log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n  redirect:\n    disable: true\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: haul-testkit-secret-{port}\n{tls_yaml}\
         health:\n  storagedriver:\n    enabled: false\n\
         {auth_yaml}",
        storage = yaml_path(storage),
    )
}
