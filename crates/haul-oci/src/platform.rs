//! Platforms (`os/arch[/variant]`): parsing, normalisation, and choosing the
//! best entry of an image index, following containerd's `platforms` package.
//!
//! Normalisation maps the many spellings of an architecture to Go's names
//! (`x86_64` → `amd64`, `aarch64` → `arm64`, `armhf` → `arm/v7`, `i386` →
//! `386`, ...) and gives the ARM architectures their default variant: `arm`
//! means `arm/v7` and `arm64` means `arm64/v8`. Two platforms match when
//! their normalised forms are equal, so a request for `linux/arm64` selects an
//! index entry written `arm64/v8` or `arm64` alike.
//!
//! Matching also accepts what the requested platform can run, preferring the
//! closest: `arm/v7` runs `v6` and `v5`; `arm64/v8.2` runs `v8.1`, `v8` and,
//! as a last resort, 32-bit `arm`; `amd64/v3` runs `v2`, `v1` and `386`.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::{Descriptor, ImageIndex};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The platform an image (or an index entry) is built for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system, as Go's `GOOS` (`linux`, `windows`).
    pub os: String,
    /// CPU architecture, as Go's `GOARCH` (`amd64`, `arm64`).
    pub architecture: String,
    /// CPU variant (`v7`, `v8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Operating system version (Windows builds, `10.0.17763.1234`).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Operating system features the image requires (`win32k`).
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
}

impl Platform {
    /// A platform from an OS and an architecture, without normalisation.
    pub fn new(os: impl Into<String>, architecture: impl Into<String>) -> Self {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: None,
            os_version: None,
            os_features: Vec::new(),
        }
    }

    /// The same platform with a CPU variant.
    pub fn with_variant(mut self, variant: impl Into<String>) -> Self {
        self.variant = Some(variant.into());
        self
    }

    /// Parses `os[(version[+feature...])][/arch[/variant]]` or a bare
    /// architecture, and normalises it.
    ///
    /// A bare OS (`linux`) takes the host's architecture; a bare
    /// architecture (`arm64`) means `linux`, the OS of nearly every image.
    pub fn parse(input: &str) -> Result<Self> {
        let fail = |reason: String| Error::InvalidPlatform {
            input: input.to_owned(),
            reason,
        };
        let parts: Vec<&str> = input.split('/').collect();
        if parts.len() > 3 {
            return Err(fail("expected OS/ARCH[/VARIANT]".to_owned()));
        }
        let (os_part, options) = split_os_options(parts[0]).map_err(fail)?;
        for (i, part) in parts.iter().enumerate() {
            let part = if i == 0 { os_part } else { part };
            if part.is_empty() {
                return Err(fail("empty component".to_owned()));
            }
            if let Some(c) = part
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
            {
                return Err(fail(format!("{part:?} contains {c:?}")));
            }
        }

        let mut platform = match parts.as_slice() {
            [single] if options.is_none() && is_known_arch(&normalize_arch(single, None).0) => {
                Platform::new("linux", *single)
            }
            [_] if is_known_os(&normalize_os(os_part)) => {
                let host = Platform::host();
                Platform {
                    os: os_part.to_owned(),
                    ..host
                }
            }
            [single] => {
                return Err(fail(format!(
                    "{single:?} is not a known operating system or architecture"
                )))
            }
            [_, arch] => Platform::new(os_part, *arch),
            [_, arch, variant] => Platform::new(os_part, *arch).with_variant(*variant),
            _ => return Err(fail("expected OS/ARCH[/VARIANT]".to_owned())),
        };
        if let Some((version, features)) = options {
            platform.os_version = version;
            platform.os_features = features;
        }
        Ok(platform.normalized())
    }

    /// The platform this program runs on.
    pub fn host() -> Self {
        let os = normalize_os(std::env::consts::OS);
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "arm" => "arm",
            "loongarch64" => "loong64",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "powerpc" => "ppc",
            "mips64" if cfg!(target_endian = "little") => "mips64le",
            "mips" if cfg!(target_endian = "little") => "mipsle",
            other => other,
        };
        Platform::new(os, arch).normalized()
    }

    /// The canonical form used for comparison: lower-case OS, Go
    /// architecture names, ARM default variants, sorted OS features.
    pub fn normalized(&self) -> Platform {
        let (architecture, variant) = normalize_arch(&self.architecture, self.variant.as_deref());
        let mut os_features = self.os_features.clone();
        os_features.sort();
        os_features.dedup();
        Platform {
            os: normalize_os(&self.os),
            architecture,
            variant,
            os_version: self.os_version.clone(),
            os_features,
        }
    }

    /// Whether both name the same OS, architecture and variant once
    /// normalised (OS version and features are not compared).
    pub fn same_as(&self, other: &Platform) -> bool {
        let (a, b) = (self.normalized(), other.normalized());
        a.os == b.os && a.architecture == b.architecture && a.variant == b.variant
    }

    /// Whether this is the `unknown/unknown` platform that BuildKit gives to
    /// attestation manifests in an index.
    pub fn is_unknown(&self) -> bool {
        self.os == "unknown" && self.architecture == "unknown"
    }

    /// The platforms an image for `self` can run, best first (`self`
    /// included), all normalised.
    pub fn compatible(&self) -> Vec<Platform> {
        let base = self.normalized();
        let mut out = vec![base.clone()];
        let mut push = |architecture: &str, variant: Option<String>| {
            out.push(Platform {
                architecture: architecture.to_owned(),
                variant,
                ..base.clone()
            });
        };
        match base.architecture.as_str() {
            "amd64" => {
                let level = base
                    .variant
                    .as_deref()
                    .and_then(|v| v.strip_prefix('v'))
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or(1);
                for lower in (2..level).rev() {
                    push("amd64", Some(format!("v{lower}")));
                }
                if level > 1 {
                    push("amd64", None);
                }
                push("386", None);
            }
            "arm" => {
                for lower in (5..arm_level(base.variant.as_deref())).rev() {
                    push("arm", Some(format!("v{lower}")));
                }
            }
            "arm64" => {
                for variant in arm64_fallbacks(base.variant.as_deref().unwrap_or("v8")) {
                    push("arm64", Some(variant));
                }
                for lower in (5..=8).rev() {
                    push("arm", Some(format!("v{lower}")));
                }
            }
            _ => {}
        }
        out
    }

    /// Converts from oci-spec's platform.
    pub fn from_oci(p: &oci_spec::image::Platform) -> Self {
        Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
            os_version: p.os_version().clone(),
            os_features: p.os_features().clone().unwrap_or_default(),
        }
    }

    /// Converts to oci-spec's platform.
    pub fn to_oci(&self) -> oci_spec::image::Platform {
        let mut p = oci_spec::image::Platform::default();
        p.set_os(self.os.as_str().into());
        p.set_architecture(self.architecture.as_str().into());
        p.set_variant(self.variant.clone());
        p.set_os_version(self.os_version.clone());
        p.set_os_features((!self.os_features.is_empty()).then(|| self.os_features.clone()));
        p
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl From<&oci_spec::image::Platform> for Platform {
    fn from(p: &oci_spec::image::Platform) -> Self {
        Platform::from_oci(p)
    }
}

/// Chooses the index entry to pull for `wanted`.
///
/// Entries are ranked by how close their platform is to `wanted` (see
/// [`Platform::compatible`]); among equals, one whose OS version shares
/// `wanted`'s `major.minor.build` wins, then the earliest in the index.
/// Entries whose platform is `unknown/unknown` (attestations), or that
/// require OS features `wanted` does not list, are never chosen. An entry
/// without any platform is taken only when nothing else fits, as containerd
/// does.
pub fn select_manifest<'a>(index: &'a ImageIndex, wanted: &Platform) -> Result<&'a Descriptor> {
    select_from(index.manifests(), wanted)
}

/// [`select_manifest`] over a plain list of descriptors.
///
/// Descriptors decoded by oci-spec 0.8 directly (not through
/// [`crate::manifest::parse_manifest`]) lack the platforms' `os.version` and
/// `os.features`, which then play no part in the choice.
pub fn select_from<'a>(entries: &'a [Descriptor], wanted: &Platform) -> Result<&'a Descriptor> {
    let wanted = wanted.normalized();
    let ladder = wanted.compatible();
    let mut best: Option<((usize, bool), &Descriptor)> = None;
    let mut without_platform: Option<&Descriptor> = None;

    for entry in entries {
        let Some(platform) = entry.platform().as_ref().map(Platform::from_oci) else {
            without_platform = without_platform.or(Some(entry));
            continue;
        };
        if platform.is_unknown() || !features_satisfied(&platform, &wanted) {
            continue;
        }
        let Some(rank) = ladder.iter().position(|p| p.same_as(&platform)) else {
            continue;
        };
        let version_mismatch = !os_version_matches(&wanted, &platform);
        let key = (rank, version_mismatch);
        if best.as_ref().is_none_or(|(k, _)| key < *k) {
            best = Some((key, entry));
        }
    }

    best.map(|(_, d)| d)
        .or(without_platform)
        .ok_or_else(|| Error::NoMatchingPlatform {
            wanted: Box::new(wanted.clone()),
            offered: entries
                .iter()
                .filter_map(|d| d.platform().as_ref().map(Platform::from_oci))
                .filter(|p| !p.is_unknown())
                .collect(),
        })
}

fn features_satisfied(entry: &Platform, wanted: &Platform) -> bool {
    entry
        .os_features
        .iter()
        .all(|f| wanted.os_features.contains(f))
}

/// Whether the first three dotted parts of the OS versions agree (Windows
/// build compatibility); true when `wanted` names no version.
fn os_version_matches(wanted: &Platform, entry: &Platform) -> bool {
    let build = |v: &str| v.split('.').take(3).collect::<Vec<_>>().join(".");
    match (&wanted.os_version, &entry.os_version) {
        (None, _) => true,
        (Some(w), Some(e)) => build(w) == build(e),
        (Some(_), None) => false,
    }
}

type OsOptions = (Option<String>, Vec<String>);

/// Splits `os(version+feature+...)` into the OS and its options.
fn split_os_options(part: &str) -> std::result::Result<(&str, Option<OsOptions>), String> {
    let Some(open) = part.find('(') else {
        return Ok((part, None));
    };
    let inner = part[open + 1..]
        .strip_suffix(')')
        .ok_or_else(|| format!("unclosed '(' in {part:?}"))?;
    let mut pieces = inner.split('+');
    let version = pieces.next().filter(|v| !v.is_empty()).map(str::to_owned);
    let features: Vec<String> = pieces.map(str::to_owned).collect();
    if features.iter().any(String::is_empty) {
        return Err(format!("empty OS feature in {part:?}"));
    }
    Ok((&part[..open], Some((version, features))))
}

fn normalize_os(os: &str) -> String {
    let os = os.to_ascii_lowercase();
    match os.as_str() {
        "macos" => "darwin".to_owned(),
        _ => os,
    }
}

/// Go's architecture names and the ARM default variants.
fn normalize_arch(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant
        .map(str::to_ascii_lowercase)
        .filter(|v| !v.is_empty());
    let with_v = |v: &str| {
        if v.starts_with('v') {
            v.to_owned()
        } else {
            format!("v{v}")
        }
    };
    match arch.as_str() {
        "i386" | "i686" | "x86" | "386" => ("386".to_owned(), None),
        "x86_64" | "x86-64" | "amd64" => {
            let variant = variant.map(|v| with_v(&v)).filter(|v| v != "v1");
            ("amd64".to_owned(), variant)
        }
        "aarch64" | "arm64" => {
            let variant = variant.map_or_else(|| "v8".to_owned(), |v| with_v(&v));
            ("arm64".to_owned(), Some(variant))
        }
        "armhf" => ("arm".to_owned(), Some("v7".to_owned())),
        "armel" => ("arm".to_owned(), Some("v6".to_owned())),
        "arm" => {
            let variant = variant.map_or_else(|| "v7".to_owned(), |v| with_v(&v));
            ("arm".to_owned(), Some(variant))
        }
        _ => (arch, variant),
    }
}

fn arm_level(variant: Option<&str>) -> u32 {
    variant
        .and_then(|v| v.strip_prefix('v'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(7)
}

/// Lower arm64 variants a given one can run, best first: `v8.2` → `v8.1`,
/// `v8`; `v9.1` → `v9`, `v8.6` … `v8` (v9.x is compatible with v8.(x+5)).
fn arm64_fallbacks(variant: &str) -> Vec<String> {
    let Some(numbers) = variant.strip_prefix('v') else {
        return Vec::new();
    };
    let (major, minor) = match numbers.split_once('.') {
        Some((major, minor)) => (major.parse::<u32>().ok(), minor.parse::<u32>().ok()),
        None => (numbers.parse::<u32>().ok(), Some(0)),
    };
    let (Some(major), Some(minor)) = (major, minor) else {
        return Vec::new();
    };
    let name = |major: u32, minor: u32| {
        if minor == 0 {
            format!("v{major}")
        } else {
            format!("v{major}.{minor}")
        }
    };
    let mut out = Vec::new();
    let mut v8_minor = minor;
    if major == 9 {
        out.extend((0..minor).rev().map(|m| name(9, m)));
        v8_minor = minor + 5;
        out.push(name(8, v8_minor));
    } else if major != 8 {
        return out;
    }
    out.extend((0..v8_minor).rev().map(|m| name(8, m)));
    out
}

fn is_known_os(os: &str) -> bool {
    matches!(
        os,
        "aix"
            | "android"
            | "darwin"
            | "dragonfly"
            | "freebsd"
            | "hurd"
            | "illumos"
            | "ios"
            | "js"
            | "linux"
            | "nacl"
            | "netbsd"
            | "openbsd"
            | "plan9"
            | "solaris"
            | "wasip1"
            | "windows"
            | "zos"
    )
}

fn is_known_arch(arch: &str) -> bool {
    matches!(
        arch,
        "386"
            | "amd64"
            | "amd64p32"
            | "arm"
            | "armbe"
            | "arm64"
            | "arm64be"
            | "loong64"
            | "mips"
            | "mipsle"
            | "mips64"
            | "mips64le"
            | "mips64p32"
            | "mips64p32le"
            | "ppc"
            | "ppc64"
            | "ppc64le"
            | "riscv"
            | "riscv64"
            | "s390"
            | "s390x"
            | "sparc"
            | "sparc64"
            | "wasm"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm64_fallback_ladder() {
        assert_eq!(arm64_fallbacks("v8"), Vec::<String>::new());
        assert_eq!(arm64_fallbacks("v8.2"), vec!["v8.1", "v8"]);
        assert_eq!(
            arm64_fallbacks("v9.1"),
            vec!["v9", "v8.6", "v8.5", "v8.4", "v8.3", "v8.2", "v8.1", "v8"]
        );
        assert_eq!(arm64_fallbacks("weird"), Vec::<String>::new());
    }

    #[test]
    fn os_options() {
        assert_eq!(split_os_options("linux").unwrap(), ("linux", None));
        assert_eq!(
            split_os_options("windows(10.0.17763+win32k)").unwrap(),
            (
                "windows",
                Some((Some("10.0.17763".to_owned()), vec!["win32k".to_owned()]))
            )
        );
        assert!(split_os_options("windows(10").is_err());
    }
}
