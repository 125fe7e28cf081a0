//! Integration tests of `haul-testkit`, linked into one binary (one module per
//! area) so that a change relinks one test executable, not one per file.

mod common;
mod fault_proxy;
mod images;
mod registry_modes;
