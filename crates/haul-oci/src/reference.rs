//! Image references with Docker's grammar and normalisation.
//!
//! The grammar is that of `github.com/distribution/reference`:
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path-component ( "/" path-component )*
//! domain     := host [ ":" port ]
//! host       := domain-label ( "." domain-label )* | "[" ipv6 "]"
//! path-component := [a-z0-9]+ ( separator [a-z0-9]+ )*
//! separator  := "." | "_" | "__" | "-"+
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := ( "sha256:" 64 hex | "sha512:" 128 hex )
//! ```
//!
//! Normalisation follows `ParseNormalizedNamed`: the first path component is
//! a registry only if it contains `.` or `:`, is `localhost`, or has an
//! upper-case letter; otherwise the registry is `docker.io`. On `docker.io` a
//! single-component path gets the `library/` prefix, and `index.docker.io`
//! becomes `docker.io`. The full name may not exceed 255 characters.
//!
//! Two entry points:
//! - [`Reference::parse`] (also `FromStr`) is what `docker pull` does: a name
//!   with neither tag nor digest gets the tag `latest`.
//! - [`Reference::parse_raw`] normalises the name the same way but keeps the
//!   absence of a tag, for callers that must tell `alpine` from
//!   `alpine:latest` (for example "all tags of a repository").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::Digest;
use crate::error::{Error, ReferenceErrorKind, Result};

/// The registry of unqualified names: Docker Hub.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The legacy name of Docker Hub, normalised to [`DEFAULT_REGISTRY`].
pub const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";
/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// The tag assumed when a reference names none.
pub const DEFAULT_TAG: &str = "latest";
/// The namespace of Docker Hub's official images.
pub const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The longest full name (registry, `/`, repository) allowed.
pub const NAME_MAX_LEN: usize = 255;
/// The longest tag allowed.
pub const TAG_MAX_LEN: usize = 128;

/// The host to contact for a registry's HTTP API: `docker.io` (and its
/// legacy name `index.docker.io`) is served at `registry-1.docker.io`; every
/// other registry is its own host.
pub fn api_host(registry: &str) -> &str {
    if registry == DEFAULT_REGISTRY || registry == LEGACY_DEFAULT_REGISTRY {
        DOCKER_HUB_API_HOST
    } else {
        registry
    }
}

/// A normalised image reference: registry, repository, and an optional tag
/// and digest.
///
/// `Display` gives the full form (`docker.io/library/alpine:latest`),
/// [`Reference::familiar`] the short form Docker shows (`alpine:latest`).
/// Serialises as the full form and deserialises with
/// [`Reference::parse_raw`], so a round trip is exact.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// `registry/repository`.
    name: String,
    /// Length of the registry prefix of `name`.
    registry_len: usize,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises a reference the way `docker pull` does: when
    /// the input has neither tag nor digest, the tag is `latest`.
    pub fn parse(input: &str) -> Result<Self> {
        let mut reference = Self::parse_raw(input)?;
        if reference.tag.is_none() && reference.digest.is_none() {
            reference.tag = Some(DEFAULT_TAG.to_owned());
        }
        Ok(reference)
    }

    /// Parses and normalises a reference, keeping the tag absent when the
    /// input names none.
    pub fn parse_raw(input: &str) -> Result<Self> {
        let fail = |kind| Error::InvalidReference {
            input: input.to_owned(),
            kind,
        };
        if input.is_empty() {
            return Err(fail(ReferenceErrorKind::Empty));
        }
        if is_image_id(input) {
            return Err(fail(ReferenceErrorKind::AmbiguousIdentifier));
        }

        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (input, None),
        };
        let (name, tag) = split_tag(rest);
        if name.is_empty() {
            return Err(fail(ReferenceErrorKind::MissingName));
        }

        let (registry, path) = split_registry(name).map_err(fail)?;
        check_path(&path).map_err(fail)?;
        let full_name = format!("{registry}/{path}");
        if full_name.len() > NAME_MAX_LEN {
            return Err(fail(ReferenceErrorKind::NameTooLong {
                length: full_name.len(),
            }));
        }
        if let Some(tag) = tag {
            check_tag(tag).map_err(fail)?;
        }
        let digest = match digest {
            Some(d) => Some(Digest::parse(d).map_err(|err| match err {
                Error::InvalidDigest { kind, .. } => fail(ReferenceErrorKind::InvalidDigest(kind)),
                other => other,
            })?),
            None => None,
        };

        Ok(Reference {
            registry_len: registry.len(),
            name: full_name,
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// The registry, e.g. `docker.io`, `localhost:5000`, `[::1]:5000`.
    pub fn registry(&self) -> &str {
        &self.name[..self.registry_len]
    }

    /// The repository path within the registry, e.g. `library/alpine`.
    pub fn repository(&self) -> &str {
        &self.name[self.registry_len + 1..]
    }

    /// `registry/repository`, e.g. `docker.io/library/alpine`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The host serving this reference's registry API (see [`api_host`]).
    pub fn api_host(&self) -> &str {
        api_host(self.registry())
    }

    /// The name as Docker shows it: without `docker.io/`, and without
    /// `library/` for official images (`alpine`, `user/app`,
    /// `localhost:5000/x`).
    pub fn familiar_name(&self) -> &str {
        if self.registry() != DEFAULT_REGISTRY {
            return &self.name;
        }
        let path = self.repository();
        match path.strip_prefix(OFFICIAL_REPO_PREFIX) {
            Some(short) if !short.contains('/') => short,
            _ => path,
        }
    }

    /// The whole reference as Docker shows it: [`Reference::familiar_name`]
    /// followed by the tag and digest (`alpine:latest`, `user/app:1`,
    /// `localhost:5000/x:tag`).
    pub fn familiar(&self) -> String {
        let mut out = self.familiar_name().to_owned();
        self.push_suffix(&mut out);
        out
    }

    /// The same repository with tag `tag` (any digest is kept).
    pub fn with_tag(&self, tag: &str) -> Result<Self> {
        check_tag(tag).map_err(|kind| Error::InvalidReference {
            input: format!("{}:{tag}", self.name),
            kind,
        })?;
        Ok(Reference {
            tag: Some(tag.to_owned()),
            ..self.clone()
        })
    }

    /// The same repository pinned to `digest` (any tag is kept).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same reference without its tag.
    pub fn without_tag(&self) -> Self {
        Reference {
            tag: None,
            ..self.clone()
        }
    }

    /// The same reference without its digest.
    pub fn without_digest(&self) -> Self {
        Reference {
            digest: None,
            ..self.clone()
        }
    }

    fn push_suffix(&self, out: &mut String) {
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest.as_str());
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.name.clone();
        self.push_suffix(&mut out);
        f.write_str(&out)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = Error;

    /// Same as [`Reference::parse`]: defaults the tag to `latest`.
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl Serialize for Reference {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Reference::parse_raw(&s).map_err(serde::de::Error::custom)
    }
}

/// 64 lowercase hex characters: what `docker` treats as an image ID.
fn is_image_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Splits `name[:tag]`; the tag separator is a `:` after the last `/`, so a
/// registry port is never taken for a tag.
fn split_tag(s: &str) -> (&str, Option<&str>) {
    let last_segment = s.rfind('/').map_or(0, |i| i + 1);
    match s[last_segment..].find(':') {
        Some(i) => {
            let at = last_segment + i;
            (&s[..at], Some(&s[at + 1..]))
        }
        None => (s, None),
    }
}

/// Splits a name into a normalised registry and repository path, validating
/// the registry when one is given.
fn split_registry(name: &str) -> std::result::Result<(&str, String), ReferenceErrorKind> {
    let (registry, path) = match name.split_once('/') {
        None => (DEFAULT_REGISTRY, name),
        Some((first, rest)) if looks_like_registry(first) => {
            if !is_valid_domain(first) {
                return Err(ReferenceErrorKind::InvalidDomain {
                    domain: first.to_owned(),
                });
            }
            let registry = if first == LEGACY_DEFAULT_REGISTRY {
                DEFAULT_REGISTRY
            } else {
                first
            };
            (registry, rest)
        }
        Some(_) => (DEFAULT_REGISTRY, name),
    };
    let path = if registry == DEFAULT_REGISTRY && !path.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{path}")
    } else {
        path.to_owned()
    };
    Ok((registry, path))
}

fn looks_like_registry(first: &str) -> bool {
    first == "localhost"
        || first.contains(['.', ':'])
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

/// `host[:port]` where host is dot-separated labels or a bracketed IPv6
/// address (no zone, no embedded IPv4).
fn is_valid_domain(domain: &str) -> bool {
    let (host_ok, port) = if let Some(rest) = domain.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return false;
        };
        let ip = &rest[..end];
        let ok = !ip.is_empty() && ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        let after = &rest[end + 1..];
        let port = if after.is_empty() {
            None
        } else {
            match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            }
        };
        (ok, port)
    } else {
        let (host, port) = match domain.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (domain, None),
        };
        (host.split('.').all(is_domain_label), port)
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

fn is_domain_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

fn check_path(path: &str) -> std::result::Result<(), ReferenceErrorKind> {
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceErrorKind::Uppercase);
    }
    path.split('/').try_for_each(check_component)
}

fn is_separator(b: u8) -> bool {
    matches!(b, b'.' | b'_' | b'-')
}

/// `[a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*`
fn check_component(component: &str) -> std::result::Result<(), ReferenceErrorKind> {
    if component.is_empty() {
        return Err(ReferenceErrorKind::EmptyComponent);
    }
    if let Some(character) = component
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ReferenceErrorKind::InvalidCharacter {
            component: component.to_owned(),
            character,
        });
    }
    let bad = || ReferenceErrorKind::BadSeparator {
        component: component.to_owned(),
    };
    let bytes = component.as_bytes();
    if bytes.first().is_some_and(|b| is_separator(*b))
        || bytes.last().is_some_and(|b| is_separator(*b))
    {
        return Err(bad());
    }
    for run in component.split(|c: char| c.is_ascii_alphanumeric()) {
        let ok = match run {
            "" | "." | "_" | "__" => true,
            dashes => dashes.bytes().all(|b| b == b'-'),
        };
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> std::result::Result<(), ReferenceErrorKind> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    let ok = match bytes.split_first() {
        Some((first, rest)) => {
            tag.len() <= TAG_MAX_LEN
                && word(*first)
                && rest.iter().all(|b| word(*b) || *b == b'.' || *b == b'-')
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ReferenceErrorKind::InvalidTag {
            tag: tag.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_grammar() {
        for ok in ["a", "a.b", "a_b", "a__b", "a-b", "a---b", "a1.b2_c3__d4-e5"] {
            assert_eq!(check_component(ok), Ok(()), "{ok}");
        }
        for bad in [
            "a..b", "a___b", "a_.b", "a-.b", ".a", "a.", "-a", "a-", "_", "__",
        ] {
            assert!(
                matches!(
                    check_component(bad),
                    Err(ReferenceErrorKind::BadSeparator { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn domain_grammar() {
        for ok in [
            "localhost",
            "localhost:5000",
            "a.b.c",
            "sub-dom1.foo.com",
            "xn--n3h.com:18080",
            "192.168.1.1:5000",
            "[::1]",
            "[::1]:5000",
            "[2001:db8:1:2:3:4:5:6]",
            "Foo.Example.COM",
        ] {
            assert!(is_valid_domain(ok), "{ok}");
        }
        for bad in [
            "",
            "-a.com",
            "a-.com",
            "a..com",
            "a.com:",
            "a.com:x",
            "https:",
            "[]",
            "[::1",
            "[::1]5000",
            "[fe80::1%eth0]",
            "[2001:db8:3:4::192.0.2.33]",
            "a_b.com",
        ] {
            assert!(!is_valid_domain(bad), "{bad}");
        }
    }

    #[test]
    fn tag_grammar() {
        assert_eq!(check_tag("latest"), Ok(()));
        assert_eq!(check_tag("_x"), Ok(()));
        assert_eq!(check_tag(&"a".repeat(128)), Ok(()));
        assert!(check_tag(&"a".repeat(129)).is_err());
        assert!(check_tag("").is_err());
        assert!(check_tag(".x").is_err());
        assert!(check_tag("-x").is_err());
        assert!(check_tag("x/y").is_err());
    }

    #[test]
    fn tag_split_ignores_port() {
        assert_eq!(split_tag("a:5000/b"), ("a:5000/b", None));
        assert_eq!(split_tag("a:5000/b:t"), ("a:5000/b", Some("t")));
        assert_eq!(split_tag("b:t"), ("b", Some("t")));
        assert_eq!(split_tag("b"), ("b", None));
    }
}
