//! Authentication: challenges, Docker credentials, bearer tokens.

mod challenge;
mod credentials;
mod token;

pub use challenge::{parse_challenges, Challenge};
pub use credentials::{config_key, CredentialStore, Credentials, DOCKER_HUB_KEY};
pub(crate) use token::{scope_key, TokenCache, TokenResponse};

/// The scope string for a repository and actions, as token servers expect:
/// `repository:NAME:pull,push`.
pub fn repository_scope(repository: &str, actions: &[&str]) -> String {
    format!("repository:{repository}:{}", actions.join(","))
}
