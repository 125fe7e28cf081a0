//! The parallel inflate gives the sequential reader's bytes on gzip written
//! by the common compressors: gzip -1/-6/-9, pigz (also --independent),
//! igzip (also its stored-only -0), and concatenated members with an empty
//! one. (Go's gzip, through skopeo, is covered by haul-cli's pull tests.)

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use haul_store::{GzipReader, ParallelGzipReader, PositionalBlob, SequentialFallback};

/// A whole blob in memory.
struct InMemory(Vec<u8>);

impl PositionalBlob for InMemory {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = (offset as usize).min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
}

/// 24 MiB of text-like data with noise: several MiB compressed at every
/// level, so the decoder's 1 MiB grid splits it.
fn sample() -> Vec<u8> {
    let mut x = 0x853c_49e6_748f_ea9bu64;
    let mut out = Vec::with_capacity(24 << 20);
    while out.len() < 24 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(4) {
            out.extend_from_slice(format!("usr/lib/x86_64/lib{}.so\n", x % 5000).as_bytes());
        } else {
            out.extend((0..6).map(|i| (x >> (8 * i)) as u8 & 0x3f));
        }
    }
    out
}

fn filter(program: &Path, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "{} {args:?}", program.display());
    out.stdout
}

fn inflate_in_parallel(gz: &[u8], threads: usize) -> (Vec<u8>, Option<String>) {
    let copy = gz.to_vec();
    let fallback: SequentialFallback = Box::new(move || {
        Ok(Box::new(GzipReader::new(io::Cursor::new(copy))) as Box<dyn Read + Send>)
    });
    let mut reader =
        ParallelGzipReader::new(Arc::new(InMemory(gz.to_vec())), threads, fallback).unwrap();
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    (out, reader.fell_back().map(str::to_string))
}

#[test]
fn gzip_from_every_common_compressor_inflates_in_parallel_to_the_same_bytes() {
    let Some(gzip) = haul_testkit::peers::require_binary("gzip", "gzip") else {
        return;
    };
    let Some(pigz) = haul_testkit::peers::require_binary("pigz", "pigz") else {
        return;
    };
    let Some(igzip) = haul_testkit::peers::require_binary("igzip", "isal") else {
        return;
    };
    let data = sample();
    let third = data.len() / 3;
    let mut members = filter(&gzip, &["-1", "-c"], &data[..third]);
    members.extend(filter(&gzip, &["-9", "-c"], b""));
    members.extend(filter(&pigz, &["-6", "-c"], &data[third..]));
    let blobs = [
        ("gzip -1", filter(&gzip, &["-1", "-c"], &data)),
        ("gzip -6", filter(&gzip, &["-6", "-c"], &data)),
        ("gzip -9", filter(&gzip, &["-9", "-c"], &data)),
        ("pigz -1", filter(&pigz, &["-1", "-c"], &data)),
        ("pigz -9", filter(&pigz, &["-9", "-c"], &data)),
        ("pigz -i", filter(&pigz, &["-i", "-b", "128", "-c"], &data)),
        ("igzip -1", filter(&igzip, &["-1", "-c"], &data)),
        ("igzip -0 (stored)", filter(&igzip, &["-0", "-c"], &data)),
        ("members", members),
    ];
    for (name, gz) in &blobs {
        let mut sequential = Vec::new();
        GzipReader::new(&gz[..])
            .read_to_end(&mut sequential)
            .unwrap();
        assert!(sequential == data, "{name}: the sequential reader");
        for threads in [2, 4] {
            let (out, fell_back) = inflate_in_parallel(gz, threads);
            assert!(
                out == sequential,
                "{name}, {threads} threads: {} bytes, expected {}",
                out.len(),
                sequential.len()
            );
            assert_eq!(fell_back, None, "{name}: inflated in parallel");
        }
    }
}
