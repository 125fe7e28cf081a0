//! A token server for docker-registry's `auth.token` mode: checks Basic
//! credentials (or serves anonymous requests per a policy) and signs ES256
//! JWTs that the registry verifies against the signer's certificate.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use rcgen::{CertificateParams, DnType, PublicKeyData};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::htpasswd::Credentials;

/// docker-registry 2.8 accepts tokens up to this many seconds after `exp`
/// (and before `nbf`): `Leeway` in its `auth/token/token.go`.
pub const REGISTRY_LEEWAY_SECS: u64 = 60;

/// Actions on repositories matching a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// `*` for every repository, `prefix/*` for a namespace, else an exact name.
    pub repository: String,
    /// Allowed actions (`pull`, `push`, `delete`, or `*` for all).
    pub actions: Vec<String>,
}

impl Grant {
    /// Every action on every repository.
    pub fn all() -> Self {
        Self::new("*", &["*"])
    }

    /// Pull only, on `repository` (a pattern as in [`Grant::repository`]).
    pub fn pull(repository: &str) -> Self {
        Self::new(repository, &["pull"])
    }

    /// `actions` on `repository`.
    pub fn new(repository: &str, actions: &[&str]) -> Self {
        Self {
            repository: repository.to_string(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn matches(&self, repository: &str) -> bool {
        match self.repository.strip_suffix('*') {
            Some(prefix) => repository.starts_with(prefix),
            None => self.repository == repository,
        }
    }
}

/// A user the token server knows, and what they may do.
#[derive(Clone, Debug)]
pub struct TokenUser {
    /// The user's name and password (checked from the Basic header).
    pub credentials: Credentials,
    /// What the user may do; requested actions outside these are dropped.
    pub grants: Vec<Grant>,
}

/// Settings of a [`TokenServer`].
#[derive(Clone, Debug)]
pub struct TokenServerConfig {
    /// The `service` (JWT audience) the registry is configured with.
    pub service: String,
    /// The `iss` claim, which the registry must trust.
    pub issuer: String,
    /// Known users.
    pub users: Vec<TokenUser>,
    /// What a request without credentials gets; empty means a token with no
    /// access at all (as Docker Hub does for private repositories).
    pub anonymous: Vec<Grant>,
    /// Lifetime of tokens in seconds (`expires_in`).
    pub lifetime_secs: u64,
    /// When true, `exp` is moved back by [`REGISTRY_LEEWAY_SECS`] so the
    /// registry really rejects a token once `lifetime_secs` have passed
    /// (for token-refresh tests). `expires_in` still says `lifetime_secs`.
    pub exact_expiry: bool,
    /// The `expires_in` to announce instead of `lifetime_secs`: announcing
    /// more than the real lifetime makes clients keep a token the registry
    /// already refuses, to test their refresh after a 401.
    pub advertised_lifetime_secs: Option<u64>,
}

impl Default for TokenServerConfig {
    fn default() -> Self {
        Self {
            service: "haul-testkit-registry".to_string(),
            issuer: "haul-testkit-token-issuer".to_string(),
            users: Vec::new(),
            anonymous: Vec::new(),
            lifetime_secs: 300,
            exact_expiry: false,
            advertised_lifetime_secs: None,
        }
    }
}

/// One entry of a token's `access` claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Resource type, e.g. `repository`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Resource name, e.g. `library/alpine`.
    pub name: String,
    /// Granted actions.
    pub actions: Vec<String>,
}

/// A record of one token the server issued.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The authenticated user, or `None` for anonymous.
    pub subject: Option<String>,
    /// The `scope` parameters as requested.
    pub requested_scopes: Vec<String>,
    /// What the token grants.
    pub access: Vec<Access>,
    /// The token itself.
    pub token: String,
}

/// The key that signs tokens, with a self-signed certificate for the
/// registry's `rootcertbundle`.
pub struct TokenSigner {
    key: EcdsaKeyPair,
    kid: String,
    cert_pem: String,
    rng: SystemRandom,
}

impl TokenSigner {
    /// Generates a new ECDSA P-256 signing key and its certificate.
    pub fn generate() -> Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| Error::Crypto(format!("generating key: {e}")))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| Error::Crypto(format!("loading key: {e}")))?;
        let cert_key = rcgen::KeyPair::try_from(pkcs8.as_ref())?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "haul-testkit token signer");
        let cert = params.self_signed(&cert_key)?;
        Ok(Self {
            key,
            kid: libtrust_key_id(&cert_key.subject_public_key_info()),
            cert_pem: cert.pem(),
            rng,
        })
    }

    /// The certificate to list in the registry's `rootcertbundle`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The libtrust key ID put in the JWT `kid` header.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// Signs `claims` as a compact JWS (ES256).
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            b64.encode(serde_json::to_vec(&header)?),
            b64.encode(serde_json::to_vec(claims)?)
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|e| Error::Crypto(format!("signing: {e}")))?;
        Ok(format!(
            "{signing_input}.{}",
            b64.encode(signature.as_ref())
        ))
    }

    fn random_id(&self) -> String {
        let mut bytes = [0u8; 16];
        self.rng.fill(&mut bytes).expect("system randomness");
        hex::encode(bytes)
    }
}

/// The libtrust key ID of a public key given as DER SubjectPublicKeyInfo:
/// the first 240 bits of its SHA-256, base32, in 12 groups of 4 joined by `:`.
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    let hash = Sha256::digest(spki_der);
    let encoded = base32(&hash[..30]);
    encoded
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect::<Vec<_>>()
        .join(":")
}

fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

struct State {
    config: TokenServerConfig,
    signer: TokenSigner,
    issued: Mutex<Vec<IssuedToken>>,
    refused: AtomicUsize,
}

/// A running token server on 127.0.0.1 (plain HTTP), stopped on drop.
pub struct TokenServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    state: Arc<State>,
    port: u16,
}

impl TokenServer {
    /// Starts a token server with a new signing key on an ephemeral port.
    pub fn start(config: TokenServerConfig) -> Result<Self> {
        let signer = TokenSigner::generate()?;
        let server = tiny_http::Server::http("127.0.0.1:0")
            .map_err(|e| Error::Http(format!("token server bind: {e}")))?;
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .ok_or_else(|| Error::Http("token server has no IP address".into()))?;
        let server = Arc::new(server);
        let state = Arc::new(State {
            config,
            signer,
            issued: Mutex::new(Vec::new()),
            refused: AtomicUsize::new(0),
        });
        let thread = {
            let server = Arc::clone(&server);
            let state = Arc::clone(&state);
            std::thread::Builder::new()
                .name(format!("token-server-{port}"))
                .spawn(move || {
                    for request in server.incoming_requests() {
                        handle(&state, request);
                    }
                })
                .map_err(|e| Error::Io {
                    context: "spawning token server thread".into(),
                    source: e,
                })?
        };
        Ok(Self {
            server,
            thread: Some(thread),
            state,
            port,
        })
    }

    /// The realm URL the registry advertises (`http://127.0.0.1:PORT/token`).
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's settings.
    pub fn config(&self) -> &TokenServerConfig {
        &self.state.config
    }

    /// The signing key and its certificate.
    pub fn signer(&self) -> &TokenSigner {
        &self.state.signer
    }

    /// How many tokens were issued so far.
    pub fn issued_count(&self) -> usize {
        self.state.issued.lock().expect("poisoned").len()
    }

    /// Every token issued so far, oldest first.
    pub fn issued_tokens(&self) -> Vec<IssuedToken> {
        self.state.issued.lock().expect("poisoned").clone()
    }

    /// How many requests were refused (bad credentials or bad request).
    pub fn refused_count(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Signs a token directly (not counted), e.g. to craft one with chosen
    /// access or an expiry in the past. `lifetime_secs` may be negative.
    pub fn make_token(
        &self,
        subject: &str,
        access: &[Access],
        lifetime_secs: i64,
    ) -> Result<String> {
        let now = unix_now() as i64;
        self.state
            .sign_claims(subject, access, now, now + lifetime_secs)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl State {
    fn sign_claims(&self, subject: &str, access: &[Access], now: i64, exp: i64) -> Result<String> {
        let claims = serde_json::json!({
            "iss": self.config.issuer,
            "sub": subject,
            "aud": self.config.service,
            "exp": exp,
            "nbf": now,
            "iat": now,
            "jti": self.signer.random_id(),
            "access": access,
        });
        self.signer.sign(&claims)
    }

    fn authenticate(&self, header: Option<&str>) -> Result<Option<&TokenUser>, ()> {
        let Some(value) = header else {
            return Ok(None);
        };
        let encoded = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))
            .ok_or(())?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| ())?;
        let decoded = String::from_utf8(decoded).map_err(|_| ())?;
        let (user, pass) = decoded.split_once(':').ok_or(())?;
        self.config
            .users
            .iter()
            .find(|u| u.credentials.username == user && u.credentials.password == pass)
            .map(Some)
            .ok_or(())
    }
}

fn handle(state: &State, request: tiny_http::Request) {
    let response = respond(state, &request);
    let _ = request.respond(response);
}

type Reply = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn json_reply(status: u16, body: &serde_json::Value) -> Reply {
    tiny_http::Response::from_data(serde_json::to_vec(body).unwrap_or_default())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

fn error_reply(state: &State, status: u16, code: &str, message: &str) -> Reply {
    state.refused.fetch_add(1, Ordering::SeqCst);
    json_reply(
        status,
        &serde_json::json!({"errors": [{"code": code, "message": message}]}),
    )
}

fn respond(state: &State, request: &tiny_http::Request) -> Reply {
    let url = request.url();
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    if path != "/token" {
        return error_reply(state, 404, "NOT_FOUND", "no such endpoint");
    }
    if *request.method() != tiny_http::Method::Get {
        return error_reply(state, 405, "UNSUPPORTED", "only GET is supported");
    }
    let params = parse_query(query);
    if let Some((_, service)) = params.iter().find(|(k, _)| k == "service") {
        if *service != state.config.service {
            return error_reply(state, 400, "DENIED", "unknown service");
        }
    }
    let auth = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str().to_string());
    let user = match state.authenticate(auth.as_deref()) {
        Ok(user) => user,
        Err(()) => {
            return error_reply(state, 401, "UNAUTHORIZED", "invalid username or password")
                .with_header(header("WWW-Authenticate", "Basic realm=\"haul-testkit\""));
        }
    };
    let grants = user.map_or(&state.config.anonymous, |u| &u.grants);
    let requested: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string))
        .filter(|s| !s.is_empty())
        .collect();
    let access: Vec<Access> = requested
        .iter()
        .filter_map(|scope| grant_scope(scope, grants))
        .collect();
    let subject = user.map(|u| u.credentials.username.clone());
    let now = unix_now();
    let lifetime = state.config.lifetime_secs;
    let exp = if state.config.exact_expiry {
        now as i64 + lifetime as i64 - REGISTRY_LEEWAY_SECS as i64
    } else {
        (now + lifetime) as i64
    };
    let token = match state.sign_claims(subject.as_deref().unwrap_or(""), &access, now as i64, exp)
    {
        Ok(token) => token,
        Err(e) => return error_reply(state, 500, "INTERNAL", &e.to_string()),
    };
    state.issued.lock().expect("poisoned").push(IssuedToken {
        subject,
        requested_scopes: requested,
        access,
        token: token.clone(),
    });
    json_reply(
        200,
        &serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": state.config.advertised_lifetime_secs.unwrap_or(lifetime),
            "issued_at": rfc3339(now),
        }),
    )
}

/// Parses `type:name:actions` and keeps the requested actions `grants` allow.
fn grant_scope(scope: &str, grants: &[Grant]) -> Option<Access> {
    let (rest, actions) = scope.rsplit_once(':')?;
    let (kind, name) = rest.split_once(':')?;
    let requested: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
    let allowed: BTreeSet<&str> = if kind.starts_with("repository") {
        grants
            .iter()
            .filter(|g| g.matches(name))
            .flat_map(|g| g.actions.iter().map(String::as_str))
            .collect()
    } else {
        // registry:catalog:* and the like: only for grants on every repository.
        grants
            .iter()
            .filter(|g| g.repository == "*")
            .flat_map(|g| g.actions.iter().map(String::as_str))
            .collect()
    };
    let granted: Vec<String> = requested
        .into_iter()
        .filter(|a| allowed.contains("*") || allowed.contains(a))
        .map(str::to_string)
        .collect();
    if granted.is_empty() {
        return None;
    }
    let kind = kind.split('(').next().unwrap_or(kind);
    Some(Access {
        kind: kind.to_string(),
        name: name.to_string(),
        actions: granted,
    })
}

fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    fn hex_val(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Formats Unix seconds as RFC 3339 UTC.
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
    }

    #[test]
    fn key_id_shape() {
        let id = libtrust_key_id(b"anything");
        assert_eq!(id.len(), 48 + 11);
        assert_eq!(id.split(':').count(), 12);
    }

    #[test]
    fn scopes_are_intersected_with_grants() {
        let grants = vec![Grant::pull("a"), Grant::new("team/*", &["pull", "push"])];
        let a = grant_scope("repository:a:pull,push", &grants).unwrap();
        assert_eq!(a.actions, vec!["pull"]);
        let t = grant_scope("repository:team/x:push,pull", &grants).unwrap();
        assert_eq!(t.actions, vec!["push", "pull"]);
        assert!(grant_scope("repository:b:pull", &grants).is_none());
        let all = grant_scope("repository:b:pull,push,delete", &[Grant::all()]).unwrap();
        assert_eq!(all.actions.len(), 3);
    }

    #[test]
    fn query_decoding() {
        let q = parse_query("service=reg&scope=repository%3Afoo%2Fbar%3Apull%2Cpush&scope=x+y");
        assert_eq!(q[1].1, "repository:foo/bar:pull,push");
        assert_eq!(q[2].1, "x y");
        assert_eq!(percent_decode("100%"), "100%");
    }

    #[test]
    fn rfc3339_format() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
    }
}
