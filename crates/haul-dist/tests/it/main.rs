//! Integration tests of `haul-dist`, linked into one binary (one module per
//! area) so that a change relinks one test executable, not one per file.

mod archive;
mod archive_properties;
mod pull_races;
mod upload_cancel;
