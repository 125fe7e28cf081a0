//! Integration tests of `haul-xfer`, linked into one binary (one module per
//! area) so that a change relinks one test executable, not one per file.

mod common;
mod download;
mod stress;
mod transfer;
mod upload;
