//! Unpacking OCI layouts with `umoci`, the independent reference unpacker.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Result;
use crate::peers::{binary, run_command};

/// Runs `umoci unpack [--rootless] --image LAYOUT:TAG BUNDLE` and returns the
/// bundle's `rootfs` directory. `bundle` must not exist yet. Rootless mode
/// does not apply file ownership (everything belongs to the caller).
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path, rootless: bool) -> Result<PathBuf> {
    let umoci = binary("umoci", "umoci")?;
    let mut image = layout.as_os_str().to_owned();
    image.push(":");
    image.push(tag);
    let mut command = Command::new(umoci);
    command.arg("unpack");
    if rootless {
        command.arg("--rootless");
    }
    command.arg("--image").arg(image).arg(bundle);
    run_command(command)?;
    Ok(bundle.join("rootfs"))
}
