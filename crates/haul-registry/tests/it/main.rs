//! Integration tests of `haul-registry`, linked into one binary (one module per
//! area) so that a change relinks one test executable, not one per file.

// Tests report what they skip and what they measured.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod common;
mod faults;
mod mirrors;
mod properties;
mod registry_api;
mod token_refresh;
