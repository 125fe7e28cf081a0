//! Integration tests of `haul-store`, linked into one binary (one module per
//! area) so that a change relinks one test executable, not one per file.

mod common;
mod content;
mod export;
mod images;
mod layers;
mod peers;
mod unpack_properties;
