//! Integration tests of `haul-cli`, linked into one binary (one module per
//! area) so that a change relinks one test executable, not one per file.

// Tests report what they skip and what they measured.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bomb;
mod command_line;
mod common;
mod config_file;
mod copy;
mod exact_manifests;
mod inflate;
mod load_concurrency;
mod local;
mod login;
mod machine_output;
mod messages;
mod pull;
mod pull_robustness;
mod push;
mod push_compression;
mod push_faults;
mod reaching_registries;
mod referrers;
mod referrers_local;
mod save_load;
mod serve;
mod store_crash;
mod sync;
mod tls;
mod v1;
