//! Integration tests of `haul-oci`, linked into one binary (one module per
//! area) so that a change relinks one test executable, not one per file.

mod config;
mod manifest;
mod platform;
mod properties;
mod reference;
