//! The one error type of the testkit.

use std::path::PathBuf;

/// Everything that can go wrong while setting up or driving a test peer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A required program is not installed.
    #[error("program `{name}` not found in PATH (install it with `apt-get install -y {package}`)")]
    MissingBinary {
        /// The program's name.
        name: String,
        /// The Debian package that provides it.
        package: String,
    },
    /// The registry process did not come up.
    #[error("docker-registry failed to start: {reason}\n--- registry log ---\n{log}")]
    RegistryStart {
        /// Why the start was judged failed.
        reason: String,
        /// The registry's captured output.
        log: String,
    },
    /// An external command (skopeo, umoci, ...) failed.
    #[error("command failed ({status}): {command}\n--- stderr ---\n{stderr}")]
    Command {
        /// The command line, for the message.
        command: String,
        /// Exit status description.
        status: String,
        /// What the command wrote to stderr.
        stderr: String,
    },
    /// Generating keys or certificates failed.
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    /// Signing or key handling failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// Hashing a password failed.
    #[error("bcrypt: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
    /// JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// An HTTP exchange with a peer failed.
    #[error("http: {0}")]
    Http(String),
    /// An image specification or layout is not usable.
    #[error("image: {0}")]
    Image(String),
    /// A path that was expected to exist does not.
    #[error("not found: {}", .0.display())]
    NotFound(PathBuf),
}

/// The testkit's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Extension to attach context to `std::io::Result`.
pub(crate) trait IoContext<T> {
    /// Wraps an I/O error with a description of what was being done.
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}
