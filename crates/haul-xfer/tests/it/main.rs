//! Integration tests of `haul-xfer`, linked into one binary (one module per
//! area) so that a change relinks one test executable, not one per file.

// Tests report what they skip and what they measured.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod common;
mod download;
mod stress;
mod transfer;
mod upload;
