//! `haul login` and `haul logout`: check credentials against a registry and
//! keep them where Docker keeps them (a credential helper when configured,
//! else `config.json` with mode 0600).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context};
use haul_dist::registry::auth::{CredentialStore, Credentials};
use haul_dist::registry::{ClientConfig, Error as RegistryError, RegistryClient};

/// What the user typed as registry, as a `host[:port]`: schemes and paths
/// (`https://index.docker.io/v1/`) are dropped, nothing means Docker Hub.
pub(crate) fn registry_host(input: Option<&str>) -> String {
    let Some(input) = input.map(str::trim).filter(|s| !s.is_empty()) else {
        return "docker.io".to_string();
    };
    let without_scheme = input
        .strip_prefix("https://")
        .or_else(|| input.strip_prefix("http://"))
        .unwrap_or(input);
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

/// Runs `haul login`, as `docker login` does: the user name is asked for
/// on a terminal when not given, the password is read without echo from the
/// terminal (or from stdin with `--password-stdin`), checked against the
/// registry, then stored.
pub(crate) async fn login(
    config: ClientConfig,
    registry: Option<&str>,
    username: Option<&str>,
    password: Option<&str>,
    password_stdin: bool,
) -> anyhow::Result<()> {
    let registry = registry_host(registry);
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal() && !password_stdin;
    let username = match username {
        Some(u) => u.to_string(),
        None if interactive => {
            eprint!("Username: ");
            std::io::stderr().flush().ok();
            let mut line = String::new();
            stdin.lock().read_line(&mut line)?;
            line.trim().to_string()
        }
        None => bail!("a user name is needed: give it with --username"),
    };
    if username.is_empty() {
        bail!("the user name is empty");
    }
    let password = if let Some(p) = password {
        eprintln!(
            "WARNING! Using --password on the command line is insecure. Use --password-stdin."
        );
        p.to_string()
    } else if password_stdin {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdin.lock(), &mut text)
            .context("cannot read the password from standard input")?;
        text.trim_end_matches(['\n', '\r']).to_string()
    } else if interactive {
        rpassword::prompt_password("Password: ").context("cannot read the password")?
    } else {
        bail!(
            "cannot ask for a password: standard input is not a terminal; \
             pipe the password to --password-stdin"
        );
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let credentials = Credentials::basic(username, password);
    let store = config
        .credentials
        .clone()
        .unwrap_or_else(CredentialStore::from_environment);
    let client = RegistryClient::new(config)?;
    match client.login(&registry, &credentials).await {
        Ok(()) => {}
        Err(RegistryError::Unauthorized { .. }) => {
            bail!("login to {registry} failed: unauthorized: incorrect username or password")
        }
        Err(e) => return Err(e).with_context(|| format!("login to {registry} failed")),
    }
    if !store.uses_helper(&registry)? {
        eprintln!(
            "WARNING! Your password will be stored unencrypted in {}.\n\
             Configure a credential helper to remove this warning. See\n\
             https://docs.docker.com/go/credential-store/",
            store.config_path().display()
        );
    }
    store
        .store(&registry, &credentials)
        .with_context(|| format!("cannot save the credentials for {registry}"))?;
    crate::outln!("Login Succeeded");
    Ok(())
}

/// Runs `haul logout`.
pub(crate) fn logout(config: &ClientConfig, registry: Option<&str>) -> anyhow::Result<()> {
    let registry = registry_host(registry);
    let store = config
        .credentials
        .clone()
        .unwrap_or_else(CredentialStore::from_environment);
    if store.erase(&registry)? {
        crate::outln!("Removing login credentials for {registry}");
    } else {
        crate::outln!("Not logged in to {registry}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_reduced_to_their_host() {
        assert_eq!(registry_host(None), "docker.io");
        assert_eq!(
            registry_host(Some("https://index.docker.io/v1/")),
            "docker.io"
        );
        assert_eq!(registry_host(Some("127.0.0.1:5000")), "127.0.0.1:5000");
        assert_eq!(
            registry_host(Some("http://r.example:443/v2/")),
            "r.example:443"
        );
    }
}
