//! Choosing the registry protocol of `pull` and `push` (`--protocol`).

use std::sync::Arc;

use haul_dist::registry::v1::Protocol as Wire;
use haul_dist::registry::RegistryClient;
use haul_dist::xfer::{Message, ProgressOutput};

use crate::cli::Protocol;

/// Whether to speak v1 to `registry`: as asked, or for `auto`, when its
/// `/v2/` answers 404 and `/v1/_ping` answers (learnt once per host by the
/// client). When v1 is used, a line naming it goes to `output`.
pub(crate) async fn use_v1(
    client: &RegistryClient,
    registry: &str,
    protocol: Protocol,
    output: &Arc<dyn ProgressOutput>,
) -> Result<bool, haul_dist::registry::Error> {
    let v1 = match protocol {
        Protocol::V2 => false,
        Protocol::V1 => true,
        Protocol::Auto => client.detect_protocol(registry).await? == Wire::V1,
    };
    if v1 {
        output.message(
            "",
            Message::Text(format!("Using the v1 registry protocol for {registry}")),
        );
    }
    Ok(v1)
}
