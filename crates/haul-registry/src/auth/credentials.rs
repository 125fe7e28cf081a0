//! Credentials as Docker keeps them: `$DOCKER_CONFIG/config.json` (else
//! `~/.docker/config.json`) with `auths` entries, a default `credsStore`, and
//! per-registry `credHelpers` run as `docker-credential-NAME`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The key Docker uses for Docker Hub in config files and helpers.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// A user name and a secret. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// User name and password, sent as Basic auth or to a token server.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// An identity (refresh) token, as helpers return with user `<token>`.
    IdentityToken(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

impl Credentials {
    /// Credentials from a user name and password.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The value of an `Authorization: Basic` header for these credentials,
    /// if they are a user name and password.
    pub(crate) fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::Basic { username, password } => Some(format!(
                "Basic {}",
                BASE64.encode(format!("{username}:{password}"))
            )),
            Credentials::IdentityToken(_) => None,
        }
    }
}

/// The key under which a registry's credentials are stored: Docker Hub's
/// special URL for `docker.io` and its aliases, the host otherwise.
pub fn config_key(registry: &str) -> String {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_KEY.to_string(),
        other => other.to_string(),
    }
}

/// Where credentials are read from and written to.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    config_path: PathBuf,
    helper_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct ConfigFile {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(
        rename = "credsStore",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    creds_store: Option<String>,
    #[serde(
        rename = "credHelpers",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    cred_helpers: BTreeMap<String, String>,
    /// Everything else in the file, kept as it was.
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(
        rename = "identitytoken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    identity_token: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize, Serialize)]
struct HelperCredentials {
    #[serde(rename = "ServerURL", default)]
    server_url: String,
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

impl CredentialStore {
    /// The store Docker itself uses: `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`.
    pub fn from_environment() -> Self {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
            .unwrap_or_else(|| PathBuf::from(".docker"));
        Self::at(dir.join("config.json"))
    }

    /// A store backed by the given config file.
    pub fn at(config_path: impl Into<PathBuf>) -> Self {
        Self {
            config_path: config_path.into(),
            helper_dir: None,
        }
    }

    /// Looks for `docker-credential-*` programs in `dir` instead of `PATH`.
    pub fn with_helper_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.helper_dir = Some(dir.into());
        self
    }

    fn helper_program(&self, helper: &str) -> PathBuf {
        let name = format!("docker-credential-{helper}");
        match &self.helper_dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    /// The config file this store reads.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    fn read_config(&self, registry: &str) -> Result<ConfigFile> {
        match std::fs::read(&self.config_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Credentials {
                registry: registry.to_string(),
                message: format!("{} is not valid JSON: {e}", self.config_path.display()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(source) => Err(Error::Io {
                path: self.config_path.display().to_string(),
                source,
            }),
        }
    }

    /// The helper program responsible for `registry`, if any: its
    /// `credHelpers` entry, else the default `credsStore`.
    fn helper_for(config: &ConfigFile, key: &str, registry: &str) -> Option<String> {
        config
            .cred_helpers
            .get(key)
            .or_else(|| config.cred_helpers.get(registry))
            .or(config.creds_store.as_ref())
            .filter(|h| !h.is_empty())
            .cloned()
    }

    /// Looks up the credentials for a registry host (`host[:port]`).
    pub fn get(&self, registry: &str) -> Result<Option<Credentials>> {
        let config = self.read_config(registry)?;
        let key = config_key(registry);
        if let Some(helper) = Self::helper_for(&config, &key, registry) {
            return helper_get(&self.helper_program(&helper), &key, registry);
        }
        let entry = find_auth_entry(&config.auths, &key, registry);
        entry
            .map(|e| decode_entry(e, registry))
            .transpose()
            .map(Option::flatten)
    }

    /// Whether credentials for `registry` go to a credential helper (else
    /// they are stored unencrypted, base64 only, in the config file).
    pub fn uses_helper(&self, registry: &str) -> Result<bool> {
        let config = self.read_config(registry)?;
        Ok(Self::helper_for(&config, &config_key(registry), registry).is_some())
    }

    /// Stores credentials for a registry: through its helper when one is
    /// configured, else in the config file (written with mode 0600).
    pub fn store(&self, registry: &str, credentials: &Credentials) -> Result<()> {
        let mut config = self.read_config(registry)?;
        let key = config_key(registry);
        if let Some(helper) = Self::helper_for(&config, &key, registry) {
            let (username, secret) = match credentials {
                Credentials::Basic { username, password } => (username.clone(), password.clone()),
                Credentials::IdentityToken(t) => ("<token>".to_string(), t.clone()),
            };
            let payload = serde_json::to_vec(&HelperCredentials {
                server_url: key.clone(),
                username,
                secret,
            })
            .map_err(|e| Error::Config(e.to_string()))?;
            run_helper(&self.helper_program(&helper), "store", &payload, registry)?;
            // Docker leaves an empty entry so that `docker login` lists it.
            config.auths.entry(key).or_default();
        } else {
            let mut entry = config.auths.remove(&key).unwrap_or_default();
            entry.username = None;
            entry.password = None;
            match credentials {
                Credentials::Basic { username, password } => {
                    entry.auth = Some(BASE64.encode(format!("{username}:{password}")));
                    entry.identity_token = None;
                }
                Credentials::IdentityToken(t) => {
                    entry.auth = None;
                    entry.identity_token = Some(t.clone());
                }
            }
            config.auths.insert(key, entry);
        }
        self.write_config(&config, registry)
    }

    /// Forgets the credentials of a registry. Returns whether there were any.
    pub fn erase(&self, registry: &str) -> Result<bool> {
        let mut config = self.read_config(registry)?;
        let key = config_key(registry);
        let mut had = config.auths.remove(&key).is_some();
        if let Some(helper) = Self::helper_for(&config, &key, registry) {
            // A helper that does not know the server is not an error.
            had |= run_helper(
                &self.helper_program(&helper),
                "erase",
                key.as_bytes(),
                registry,
            )
            .is_ok();
        }
        if had {
            self.write_config(&config, registry)?;
        }
        Ok(had)
    }

    fn write_config(&self, config: &ConfigFile, registry: &str) -> Result<()> {
        let io = |source| Error::Io {
            path: self.config_path.display().to_string(),
            source,
        };
        let dir = self
            .config_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let bytes = serde_json::to_vec_pretty(config).map_err(|e| Error::Credentials {
            registry: registry.to_string(),
            message: e.to_string(),
        })?;
        let mut tmp = tempfile_in(dir).map_err(io)?;
        tmp.1.write_all(&bytes).map_err(io)?;
        tmp.1.write_all(b"\n").map_err(io)?;
        tmp.1.sync_all().map_err(io)?;
        std::fs::rename(&tmp.0, &self.config_path).map_err(io)
    }
}

/// Creates a new private (0600) file next to the config, for an atomic replace.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    for n in 0..100u32 {
        let path = dir.join(format!(".config.json.haul-{}-{n}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("cannot create a temporary file"))
}

/// Finds the `auths` entry for a registry: by exact key, else by any key
/// whose host part (scheme and path stripped) equals the registry.
fn find_auth_entry<'a>(
    auths: &'a BTreeMap<String, AuthEntry>,
    key: &str,
    registry: &str,
) -> Option<&'a AuthEntry> {
    auths.get(key).or_else(|| {
        auths
            .iter()
            .find(|(k, _)| {
                let host = k
                    .trim_start_matches("https://")
                    .trim_start_matches("http://");
                let host = host.split('/').next().unwrap_or(host);
                host == registry || config_key(host) == key
            })
            .map(|(_, v)| v)
    })
}

fn decode_entry(entry: &AuthEntry, registry: &str) -> Result<Option<Credentials>> {
    if let Some(token) = entry.identity_token.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::IdentityToken(token.clone())));
    }
    if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
        let bad = || Error::Credentials {
            registry: registry.to_string(),
            message: "the stored `auth` value is not base64 of user:password".to_string(),
        };
        let decoded = BASE64.decode(auth.trim()).map_err(|_| bad())?;
        let text = String::from_utf8(decoded).map_err(|_| bad())?;
        let (user, pass) = text.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credentials::basic(user, pass.trim_end_matches('\n'))));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials::basic(u, p))),
        _ => Ok(None),
    }
}

fn helper_get(program: &Path, key: &str, registry: &str) -> Result<Option<Credentials>> {
    let out = match run_helper(program, "get", key.as_bytes(), registry) {
        Ok(out) => out,
        // Helpers answer "credentials not found in native keychain" with a
        // non-zero exit: that means "no credentials", not a failure.
        Err(Error::Credentials { message, .. }) if message.contains("not found") => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let creds: HelperCredentials =
        serde_json::from_slice(&out).map_err(|_| Error::Credentials {
            registry: registry.to_string(),
            message: format!("{} returned an unreadable answer", program.display()),
        })?;
    if creds.username == "<token>" {
        Ok(Some(Credentials::IdentityToken(creds.secret)))
    } else if creds.username.is_empty() && creds.secret.is_empty() {
        Ok(None)
    } else {
        Ok(Some(Credentials::basic(creds.username, creds.secret)))
    }
}

/// Times a credential helper that is "busy" (being written) is tried again.
const HELPER_BUSY_RETRIES: u32 = 10;

/// Runs `docker-credential-HELPER ACTION` with `input` on stdin and returns
/// its stdout. The helper's stderr/stdout text is only quoted on failure and
/// never contains the secret we sent (helpers print their own messages).
fn run_helper(program: &Path, action: &str, input: &[u8], registry: &str) -> Result<Vec<u8>> {
    let program = program.display().to_string();
    let fail = |message: String| Error::Credentials {
        registry: registry.to_string(),
        message,
    };
    let spawn = || {
        Command::new(&program)
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    // "Text file busy": the helper was just written, and a process forked
    // elsewhere (another thread of an embedding program) still holds it
    // open for writing until its exec. That passes in moments.
    let mut spawned = spawn();
    for _ in 0..HELPER_BUSY_RETRIES {
        match &spawned {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                spawned = spawn();
            }
            _ => break,
        }
    }
    let mut child = spawned.map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|e| fail(format!("cannot talk to {program}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("{program} failed: {e}")))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let said = if said.is_empty() {
            String::from_utf8_lossy(&out.stderr).trim().to_string()
        } else {
            said
        };
        return Err(fail(format!("{program} {action} failed: {said}")));
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(config: &str) -> (tempfile::TempDir, CredentialStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, config).unwrap();
        (dir, CredentialStore::at(path))
    }

    #[test]
    fn reads_base64_auth_entries_by_host() {
        let auth = BASE64.encode("alice:s3cret");
        let (_d, store) = store_with(&format!(
            r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{auth}"}}}}}}"#
        ));
        assert_eq!(
            store.get("127.0.0.1:5000").unwrap(),
            Some(Credentials::basic("alice", "s3cret"))
        );
        assert_eq!(store.get("127.0.0.1:5001").unwrap(), None);
    }

    #[test]
    fn docker_hub_uses_its_special_key() {
        let auth = BASE64.encode("bob:pw");
        let (_d, store) = store_with(&format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}}}}}}"#
        ));
        assert_eq!(
            store.get("docker.io").unwrap(),
            Some(Credentials::basic("bob", "pw"))
        );
    }

    #[test]
    fn entries_written_with_a_scheme_match_the_host() {
        let auth = BASE64.encode("carol:pw");
        let (_d, store) = store_with(&format!(
            r#"{{"auths":{{"https://registry.example.com/v2/":{{"auth":"{auth}"}}}}}}"#
        ));
        assert_eq!(
            store.get("registry.example.com").unwrap(),
            Some(Credentials::basic("carol", "pw"))
        );
    }

    #[test]
    fn identity_tokens_are_preferred() {
        let (_d, store) = store_with(r#"{"auths":{"r.example":{"identitytoken":"tok"}}}"#);
        assert_eq!(
            store.get("r.example").unwrap(),
            Some(Credentials::IdentityToken("tok".into()))
        );
    }

    #[test]
    fn missing_file_means_no_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::at(dir.path().join("nope/config.json"));
        assert_eq!(store.get("r.example").unwrap(), None);
    }

    #[test]
    fn broken_file_is_a_clear_error() {
        let (_d, store) = store_with("{not json");
        let err = store.get("r.example").unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn store_writes_a_private_file_and_keeps_other_settings() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, store) = store_with(r#"{"psFormat":"table","auths":{"other":{"auth":"eDp5"}}}"#);
        store
            .store("127.0.0.1:5000", &Credentials::basic("u", "p"))
            .unwrap();
        let text = std::fs::read_to_string(store.config_path()).unwrap();
        assert!(text.contains("psFormat"), "{text}");
        assert!(text.contains("other"), "{text}");
        let mode = std::fs::metadata(store.config_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            store.get("127.0.0.1:5000").unwrap(),
            Some(Credentials::basic("u", "p"))
        );
        assert!(store.erase("127.0.0.1:5000").unwrap());
        assert_eq!(store.get("127.0.0.1:5000").unwrap(), None);
        assert!(!store.erase("127.0.0.1:5000").unwrap());
    }

    /// Writes a `docker-credential-test` helper that knows one server and
    /// logs every call, as a real helper program would be run.
    fn fake_helper(dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join("docker-credential-test");
        let log = dir.join("calls.log");
        std::fs::write(
            &script,
            format!(
                r#"#!/bin/sh
read -r input
echo "$1 $input" >> "{log}"
case "$1" in
  get)
    if [ "$input" = "helped.example:5000" ]; then
      echo '{{"ServerURL":"helped.example:5000","Username":"helper-user","Secret":"helper-secret"}}'
    elif [ "$input" = "token.example" ]; then
      echo '{{"ServerURL":"token.example","Username":"<token>","Secret":"refresh-me"}}'
    else
      echo "credentials not found in native keychain"; exit 1
    fi ;;
  store|erase) exit 0 ;;
esac
"#,
                log = log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn cred_helpers_answer_for_their_registries() {
        let (dir, store) = store_with(
            r#"{"credHelpers":{"helped.example:5000":"test","token.example":"test"},
                "auths":{"plain.example":{"auth":"dTpw"}}}"#,
        );
        fake_helper(dir.path());
        let store = store.with_helper_dir(dir.path());
        assert_eq!(
            store.get("helped.example:5000").unwrap(),
            Some(Credentials::basic("helper-user", "helper-secret"))
        );
        assert_eq!(
            store.get("token.example").unwrap(),
            Some(Credentials::IdentityToken("refresh-me".into()))
        );
        // A registry without a helper still uses the file.
        assert_eq!(
            store.get("plain.example").unwrap(),
            Some(Credentials::basic("u", "p"))
        );
        let calls = std::fs::read_to_string(dir.path().join("calls.log")).unwrap();
        assert_eq!(calls.lines().count(), 2, "{calls}");
    }

    #[test]
    fn creds_store_is_the_default_helper_and_not_found_means_none() {
        let (dir, store) = store_with(r#"{"credsStore":"test"}"#);
        fake_helper(dir.path());
        let store = store.with_helper_dir(dir.path());
        assert_eq!(
            store.get("helped.example:5000").unwrap(),
            Some(Credentials::basic("helper-user", "helper-secret"))
        );
        assert_eq!(store.get("unknown.example").unwrap(), None);
        // Storing goes through the helper, and the file keeps no secret.
        store
            .store("new.example", &Credentials::basic("n", "very-secret"))
            .unwrap();
        let text = std::fs::read_to_string(store.config_path()).unwrap();
        assert!(
            !text.contains("very-secret") && text.contains("new.example"),
            "{text}"
        );
        let calls = std::fs::read_to_string(dir.path().join("calls.log")).unwrap();
        assert!(calls.lines().any(|l| l.starts_with("store ")), "{calls}");
    }

    #[test]
    fn a_missing_helper_program_is_a_clear_error() {
        let (dir, store) = store_with(r#"{"credsStore":"absent"}"#);
        let store = store.with_helper_dir(dir.path());
        let err = store.get("r.example").unwrap_err().to_string();
        assert!(
            err.contains("docker-credential-absent") && err.contains("r.example"),
            "{err}"
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let shown = format!(
            "{:?} {:?}",
            Credentials::basic("user", "hunter2"),
            Credentials::IdentityToken("tok-123".into())
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok-123"),
            "{shown}"
        );
        assert!(shown.contains("user"));
    }
}
