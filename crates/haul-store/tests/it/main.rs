//! Integration tests of `haul-store`, linked into one binary (one module per
//! area) so that a change relinks one test executable, not one per file.

// Tests report what they skip and what they measured.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod common;
mod content;
mod export;
mod gzip_parallel;
mod images;
mod layers;
mod peers;
mod unpack_properties;
