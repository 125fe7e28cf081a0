//! htpasswd files with bcrypt entries, as docker-registry's htpasswd auth reads them.

use std::path::Path;

use crate::error::{IoContext, Result};

/// bcrypt cost used for entries: the minimum, since the registry verifies the
/// hash on every request.
pub const BCRYPT_COST: u32 = 4;

/// A username and password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl Credentials {
    /// Makes credentials from a user name and password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// `user:pass`, as skopeo's `--creds` wants it.
    pub fn joined(&self) -> String {
        format!("{}:{}", self.username, self.password)
    }

    /// The value of an `Authorization: Basic ...` header.
    pub fn basic_auth_header(&self) -> String {
        use base64::Engine;
        let raw = self.joined();
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// One `user:$2y$...` htpasswd line (without newline).
pub fn htpasswd_line(creds: &Credentials) -> Result<String> {
    let hash = bcrypt::hash_with_result(&creds.password, BCRYPT_COST)?
        .format_for_version(bcrypt::Version::TwoY);
    Ok(format!("{}:{}", creds.username, hash))
}

/// Writes an htpasswd file holding every user in `users`.
pub fn write_htpasswd(path: &Path, users: &[Credentials]) -> Result<()> {
    let mut text = String::new();
    for user in users {
        text.push_str(&htpasswd_line(user)?);
        text.push('\n');
    }
    std::fs::write(path, text).ctx(|| format!("writing {}", path.display()))
}
