//! Integration tests of `haul-dist`, linked into one binary (one module per
//! area) so that a change relinks one test executable, not one per file.

// Tests report what they skip and what they measured.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod archive;
mod archive_properties;
mod progress_events;
mod protocol_choice;
mod pull_races;
mod upload_cancel;
