//! Integration tests of `haul-registry`, linked into one binary (one module per
//! area) so that a change relinks one test executable, not one per file.

mod common;
mod faults;
mod mirrors;
mod properties;
mod registry_api;
mod token_refresh;
