//! Content ingest: commit, verification, resume, concurrent writers.

use crate::common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::new_store;
use haul_oci::{Digest, Digester};
use haul_store::{Error, IngestOutcome, Store};
use haul_testkit::image::random_bytes;

fn writer(store: &Store, digest: &Digest) -> haul_store::Ingest {
    match store.ingest(digest).expect("ingest") {
        IngestOutcome::Writer(w) => w,
        IngestOutcome::Present { .. } => panic!("expected a writer for {digest}, got Present"),
    }
}

fn ingest_dir_entries(store: &Store) -> Vec<String> {
    common::tree(&store.root().join("ingest"))
}

#[test]
fn committed_blob_lands_in_the_oci_layout_verified() {
    let (_dir, store) = new_store();
    let data = random_bytes(1, 300_000);
    let d = Digest::sha256_of(&data);
    let mut w = writer(&store, &d);
    for chunk in data.chunks(7_777) {
        w.write_all(chunk).unwrap();
    }
    assert_eq!(w.offset(), data.len() as u64);
    w.commit(data.len() as u64, &d).unwrap();

    let path = store.root().join("content/blobs/sha256").join(d.hex());
    assert_eq!(store.blob_path(&d), path);
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert!(store.has_blob(&d));
    assert_eq!(store.blob_size(&d).unwrap(), data.len() as u64);
    store.verify_blob(&d).unwrap();
    assert!(
        ingest_dir_entries(&store).is_empty(),
        "ingest/ should be empty after commit, has {:?}",
        ingest_dir_entries(&store)
    );
    assert!(matches!(
        store.ingest(&d).unwrap(),
        IngestOutcome::Present { size } if size == data.len() as u64
    ));
}

#[test]
fn wrong_digest_is_refused_and_nothing_reaches_blobs() {
    let (_dir, store) = new_store();
    let claimed = Digest::sha256_of(b"what the registry promised");
    let mut w = writer(&store, &claimed);
    w.write_all(b"what the registry sent instead!").unwrap();
    let err = w.commit(31, &claimed).unwrap_err();
    match &err {
        Error::DigestMismatch { expected, actual } => {
            assert_eq!(expected, &claimed);
            assert_eq!(
                actual,
                &Digest::sha256_of(b"what the registry sent instead!")
            );
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains(claimed.as_str()), "{err}");
    assert!(!store.has_blob(&claimed));
    assert!(store.list_blobs().unwrap().is_empty());
    assert!(
        ingest_dir_entries(&store).is_empty(),
        "a wrong partial must be deleted, found {:?}",
        ingest_dir_entries(&store)
    );
}

#[test]
fn wrong_size_is_refused_and_a_short_partial_is_kept_for_resume() {
    let (_dir, store) = new_store();
    let data = b"0123456789";
    let d = Digest::sha256_of(data);
    let mut w = writer(&store, &d);
    w.write_all(&data[..4]).unwrap();
    let err = w.commit(10, &d).unwrap_err();
    assert!(
        matches!(
            err,
            Error::SizeMismatch {
                expected: 10,
                actual: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(!store.has_blob(&d));
    let mut w = writer(&store, &d);
    assert_eq!(w.offset(), 4, "the short prefix should be resumable");
    w.write_all(&data[4..]).unwrap();
    w.write_all(b"extra").unwrap();
    let err = w.commit(10, &d).unwrap_err();
    assert!(
        matches!(err, Error::SizeMismatch { actual: 15, .. }),
        "{err}"
    );
    assert_eq!(
        writer(&store, &d).offset(),
        0,
        "a too-long partial is deleted"
    );
    assert!(store.list_blobs().unwrap().is_empty());
}

#[test]
fn partial_download_resumes_after_the_writer_is_killed() {
    let (_dir, store) = new_store();
    let data = random_bytes(2, 1_000_000);
    let d = Digest::sha256_of(&data);
    let cut = 400_001;

    // First "process": writes part of the blob and dies without committing.
    {
        let mut w = writer(&store, &d);
        w.write_all(&data[..cut]).unwrap();
        // dropped here: no commit, no abort
    }
    assert!(!store.has_blob(&d), "a partial must never look complete");

    // A store opened anew (as by the next process) resumes at the cut.
    let store = Store::open(store.root()).unwrap();
    let mut w = writer(&store, &d);
    assert_eq!(w.offset(), cut as u64);
    let mut expected = Digester::sha256();
    expected.update(&data[..cut]);
    let state = w.digest_state().unwrap();
    assert_eq!(state.bytes(), cut as u64);
    assert_eq!(state.finish(), expected.finish());

    w.write_all(&data[cut..]).unwrap();
    let state = w.digest_state().unwrap();
    assert_eq!(state.bytes(), data.len() as u64);
    assert_eq!(
        state.finish(),
        d,
        "the continued digest covers the whole blob"
    );
    w.commit(data.len() as u64, &d).unwrap();
    assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), data);
}

#[test]
fn resumed_partial_with_corrupt_prefix_fails_verification() {
    let (_dir, store) = new_store();
    let data = random_bytes(3, 10_000);
    let d = Digest::sha256_of(&data);
    {
        let mut w = writer(&store, &d);
        w.write_all(&data[..5_000]).unwrap();
    }
    // Flip a byte of the partial on disk.
    let partial = store
        .root()
        .join("ingest")
        .join(format!("sha256-{}.partial", d.hex()));
    let mut bytes = std::fs::read(&partial).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&partial, bytes).unwrap();

    let mut w = writer(&store, &d);
    w.write_all(&data[5_000..]).unwrap();
    let err = w.commit(data.len() as u64, &d).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(!store.has_blob(&d));
}

#[test]
fn second_writer_of_the_same_digest_waits_then_sees_it_present() {
    let (_dir, store) = new_store();
    let data = random_bytes(4, 200_000);
    let d = Digest::sha256_of(&data);
    let (started_tx, started_rx) = mpsc::channel();

    let first = {
        let store = store.clone();
        let data = data.clone();
        let d = d.clone();
        std::thread::spawn(move || {
            let mut w = writer(&store, &d);
            w.write_all(&data[..100_000]).unwrap();
            started_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            w.write_all(&data[100_000..]).unwrap();
            w.commit(data.len() as u64, &d).unwrap();
        })
    };
    started_rx.recv().unwrap();
    let start = Instant::now();
    let second = store.ingest(&d).unwrap();
    let waited = start.elapsed();
    first.join().unwrap();

    assert!(
        matches!(second, IngestOutcome::Present { size } if size == data.len() as u64),
        "the second ingest should find the blob committed by the first, got {second:?}"
    );
    assert!(
        waited >= Duration::from_millis(200),
        "the second ingest returned after {waited:?}, before the first committed"
    );
    assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), data);
    assert!(ingest_dir_entries(&store).is_empty());
}

#[test]
fn waiting_for_a_busy_digest_can_time_out() {
    let (_dir, store) = new_store();
    let d = Digest::sha256_of(b"busy");
    let _held = writer(&store, &d);
    let other = store.clone();
    let d2 = d.clone();
    let result =
        std::thread::spawn(move || other.ingest_with_timeout(&d2, Some(Duration::from_millis(50))))
            .join()
            .unwrap();
    assert!(
        matches!(result, Err(Error::LockTimeout { .. })),
        "expected LockTimeout, got {result:?}"
    );
}

#[test]
fn waiter_takes_over_a_partial_abandoned_by_the_first_writer() {
    let (_dir, store) = new_store();
    let data = b"abcdefghij";
    let d = Digest::sha256_of(data);
    let mut first = writer(&store, &d);
    first.write_all(b"abcde").unwrap();
    let waiter = {
        let store = store.clone();
        let d = d.clone();
        std::thread::spawn(move || writer(&store, &d).offset())
    };
    std::thread::sleep(Duration::from_millis(50));
    drop(first);
    assert_eq!(waiter.join().unwrap(), 5);
}

#[test]
fn small_blobs_and_limited_reads() {
    let (_dir, store) = new_store();
    let bytes = br#"{"schemaVersion":2}"#;
    let d = Digest::sha256_of(bytes);
    let err = store
        .put_blob_bytes(bytes, &Digest::sha256_of(b"other"))
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    store.put_blob_bytes(bytes, &d).unwrap();
    store.put_blob_bytes(bytes, &d).unwrap(); // idempotent
    assert_eq!(store.read_blob_limited(&d, 1024).unwrap(), bytes);
    let err = store.read_blob_limited(&d, 4).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BlobTooLarge {
                size: 19,
                limit: 4,
                ..
            }
        ),
        "{err}"
    );
    let missing = Digest::sha256_of(b"missing");
    assert!(matches!(
        store.open_blob(&missing),
        Err(Error::BlobNotFound { .. })
    ));
    assert!(matches!(
        store.blob_size(&missing),
        Err(Error::BlobNotFound { .. })
    ));
    assert_eq!(store.list_blobs().unwrap(), vec![d]);
}

/// Child half of [`partial_survives_a_process_killed_mid_write`]: writes
/// part of a blob and aborts without any cleanup.
fn child_writes_then_dies(root: &str, data: &[u8], d: &Digest) -> ! {
    let store = Store::open(root).unwrap();
    let mut w = writer(&store, d);
    for chunk in data[..700_000].chunks(10_000) {
        w.write_all(chunk).unwrap();
    }
    std::process::abort();
}

#[test]
fn partial_survives_a_process_killed_mid_write() {
    let data = random_bytes(5, 1_000_000);
    let d = Digest::sha256_of(&data);
    if let Ok(root) = std::env::var("HAUL_STORE_TEST_CHILD_ROOT") {
        child_writes_then_dies(&root, &data, &d);
    }
    let (_dir, store) = new_store();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "content::partial_survives_a_process_killed_mid_write",
            "--test-threads=1",
        ])
        .env("HAUL_STORE_TEST_CHILD_ROOT", store.root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child should have died");
    assert!(!store.has_blob(&d), "a killed writer must not leave a blob");

    // The next "run" resumes from whatever reached the disk (the child's
    // unflushed buffer is lost, which the offset reflects).
    let mut w = writer(&store, &d);
    let offset = w.offset() as usize;
    assert!(
        offset > 0 && offset <= 700_000,
        "resume offset {offset} should be within what the child wrote"
    );
    assert_eq!(w.digest_state().unwrap().bytes(), offset as u64);
    w.write_all(&data[offset..]).unwrap();
    w.commit(data.len() as u64, &d).unwrap();
    assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), data);
}
