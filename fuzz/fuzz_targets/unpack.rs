//! The layer unpacker: any bytes as a tar never panic it nor write beside
//! its target.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let sandbox = tempfile::tempdir().unwrap();
    let target = sandbox.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let options = haul_store::UnpackOptions {
        as_root: false,
        ..haul_store::UnpackOptions::default()
    };
    let _ = haul_store::unpack::unpack(bytes, &target, &options);
    let entries: Vec<_> = std::fs::read_dir(sandbox.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "something appeared beside the target");
    let _ = std::process::Command::new("chmod")
        .arg("-R")
        .arg("u+rwx")
        .arg(sandbox.path())
        .status();
});
