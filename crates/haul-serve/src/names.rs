//! Repository names as clients ask for them, and the store's
//! repositories they mean.
//!
//! The store names repositories in full (`127.0.0.1:5000/team/app`,
//! `docker.io/library/alpine`); a client of `haul serve` asks for
//! `/v2/team/app/...`, a registry-relative name. A name is looked up as:
//!
//! 1. with containerd's `?ns=REGISTRY` (sent by mirrors' clients), the
//!    repository `REGISTRY/NAME` only (`ns=docker.io` and `alpine` mean
//!    `docker.io/library/alpine`);
//! 2. else a stored repository whose path is `NAME`, of whichever registry
//!    (the preferred registries first, in order, then the others sorted);
//! 3. else `NAME` read as a full name whose first component is a registry
//!    (`/v2/ghcr.io/org/app/...`).
//!
//! `_catalog` lists each repository by its path.

use std::collections::BTreeMap;

use haul_oci::Reference;

/// Whether `name` is a repository name the distribution spec allows:
/// `/`-separated components of `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.split('/').all(is_valid_component)
}

fn is_valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let run = &component[start..i];
        let ok = run == "." || run == "_" || run == "__" || run.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// The path of a full repository name: `team/app` of
/// `127.0.0.1:5000/team/app`.
pub(crate) fn served_name(full: &str) -> &str {
    match Reference::parse_raw(full) {
        Ok(reference) => {
            let registry_len = reference.registry().len();
            if full.len() > registry_len && full.starts_with(reference.registry()) {
                &full[registry_len + 1..]
            } else {
                full
            }
        }
        Err(_) => full,
    }
}

/// The full name `REGISTRY/NAME` normalised (`docker.io` + `alpine` is
/// `docker.io/library/alpine`).
pub(crate) fn in_registry(registry: &str, name: &str) -> Option<String> {
    Reference::parse_raw(&format!("{registry}/{name}"))
        .ok()
        .map(|r| r.name().to_owned())
}

/// The stored repository (full name) that `name` means, among
/// `repositories` (full names), with `ns` from the query and `preferred`
/// registries tried first.
pub(crate) fn find_repository<V>(
    name: &str,
    ns: Option<&str>,
    preferred: &[String],
    repositories: &BTreeMap<String, V>,
) -> Option<String> {
    if let Some(ns) = ns {
        return in_registry(ns, name).filter(|full| repositories.contains_key(full));
    }
    for registry in preferred {
        if let Some(full) = in_registry(registry, name) {
            if repositories.contains_key(&full) && served_name(&full) == name {
                return Some(full);
            }
        }
    }
    if let Some(full) = repositories.keys().find(|full| served_name(full) == name) {
        return Some(full.clone());
    }
    let first = name.split('/').next().unwrap_or_default();
    if name.contains('/') && (first.contains('.') || first == "localhost") {
        if let Ok(reference) = Reference::parse_raw(name) {
            if repositories.contains_key(reference.name()) {
                return Some(reference.name().to_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repos(names: &[&str]) -> BTreeMap<String, ()> {
        names.iter().map(|n| (n.to_string(), ())).collect()
    }

    #[test]
    fn names_follow_the_distribution_grammar() {
        for good in [
            "a",
            "team/app",
            "a.b/c_d/e__f/g--h",
            "library/alpine",
            "x0/1y",
        ] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a..b", "a___b", "-a", "a-", "a:b", "a/_b",
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn served_names_drop_the_registry() {
        assert_eq!(served_name("127.0.0.1:5000/team/app"), "team/app");
        assert_eq!(served_name("docker.io/library/alpine"), "library/alpine");
        assert_eq!(served_name("ghcr.io/org/app"), "org/app");
    }

    #[test]
    fn lookups_by_path_ns_and_full_name() {
        let stored = repos(&[
            "127.0.0.1:5000/library/app",
            "docker.io/library/alpine",
            "ghcr.io/org/app",
            "quay.io/org/app",
        ]);
        let none: &[String] = &[];
        let find = |name: &str, ns: Option<&str>| find_repository(name, ns, none, &stored);
        assert_eq!(
            find("library/app", None).as_deref(),
            Some("127.0.0.1:5000/library/app")
        );
        assert_eq!(
            find("library/alpine", Some("docker.io")).as_deref(),
            Some("docker.io/library/alpine")
        );
        assert_eq!(
            find("alpine", Some("docker.io")).as_deref(),
            Some("docker.io/library/alpine")
        );
        assert_eq!(find("library/app", Some("docker.io")), None);
        assert_eq!(
            find("ghcr.io/org/app", None).as_deref(),
            Some("ghcr.io/org/app")
        );
        // Sorted first without a preference; the preferred registry wins.
        assert_eq!(find("org/app", None).as_deref(), Some("ghcr.io/org/app"));
        let preferred = vec!["quay.io".to_string()];
        assert_eq!(
            find_repository("org/app", None, &preferred, &stored).as_deref(),
            Some("quay.io/org/app")
        );
        assert_eq!(find("nothing/here", None), None);
    }
}
