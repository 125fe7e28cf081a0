//! Which registry protocol a pull or a push speaks.
//!
//! The choice lives here, not in the command line, so that a program
//! embedding haul gets the same fallback `haul` has: with
//! [`Protocol::Auto`], a registry whose `/v2/` answers 404 and whose
//! `/v1/_ping` answers is spoken to in v1 (as Docker 1.x fell back); the
//! client learns that once per host.

use haul_oci::Reference;
use haul_registry::v1::Protocol as Wire;
use haul_registry::RegistryClient;
use haul_xfer::{Message, ProgressOutput};

use crate::error::{Error, Result};

/// The registry protocol of a [`crate::Puller`] or a [`crate::Pusher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// The OCI distribution API (Docker registry v2).
    V2,
    /// The legacy Docker registry v1 protocol.
    V1,
    /// v2 when the registry answers `/v2/`, else v1: the default, as for
    /// the command.
    #[default]
    Auto,
}

/// Whether to speak v1 to the registry of `reference` under `protocol`.
/// When v1 is chosen, a [`Message::UsingV1Protocol`] line goes to
/// `output`; a flow that asks for referrers (`wants_referrers`) is refused
/// then, as v1 knows none.
pub(crate) async fn speaks_v1(
    client: &RegistryClient,
    reference: &Reference,
    protocol: Protocol,
    wants_referrers: bool,
    output: &dyn ProgressOutput,
) -> Result<bool> {
    let registry = reference.registry();
    let v1 = match protocol {
        Protocol::V2 => false,
        Protocol::V1 => true,
        Protocol::Auto => client.detect_protocol(registry).await? == Wire::V1,
    };
    if v1 && wants_referrers {
        return Err(Error::Unsupported {
            reference: reference.familiar(),
            message: "the registry speaks the v1 protocol, which has no referrers".into(),
        });
    }
    if v1 {
        output.message(
            "",
            Message::UsingV1Protocol {
                registry: registry.to_string(),
            },
        );
    }
    Ok(v1)
}
