//! Single-stream gzip inflate throughput, candidate by candidate, on real
//! gzip files: `inflate-bench [--repeat N] [--only a,b] FILE.gz...`.
//!
//! Each candidate inflates the whole file to nowhere (the output is
//! dropped), N times (default 3); the median wall time is reported as MB/s
//! of compressed input and of output, with its ratio to haul's reader in
//! the same run. Candidates, all reading the file as a stream unless said:
//!
//! - `flate2-today`: `flate2::read::MultiGzDecoder` over a 256 KiB
//!   `BufReader`, a fresh zeroed 256 KiB chunk per read (what haul's pull
//!   did before its own reader).
//! - `haul`, `haul-1m`, `haul-4m`: `haul_store::GzipReader` (zlib-rs raw
//!   inflate, framing parsed by hand, no CRC-32, 1 MiB reads) into a reused
//!   buffer of 256 KiB, 1 MiB, 4 MiB.
//! - `rapidgzip-core-stream`: rapidgzip-core on the file as a stream (its
//!   sequential zlib-rs path, what a pull following a download could use).
//! - `isal`: ISA-L's igzip through `isal-rs` (Debian's libisal).
//! - `rapidgzip-core-1t` / `-2t`: rapidgzip-core's positional decoder with
//!   1 and 2 threads (it needs a seekable file, not a stream).
//! - `libdeflate`: the whole blob and its whole output in memory (the
//!   "blob on disk" case; single member only).
//! - `haul-par-2`, `haul-par-all`: `haul_store::ParallelGzipReader` (what
//!   `haul pull --inflate-threads N` uses for a big gzip layer) with 2 and
//!   all-core decoder threads, to nowhere.
//! - `pull-like-1`, `pull-like-2`, `pull-like-all`: what a pull does with
//!   the inflated stream, minus the file writes: the inflate (haul's
//!   sequential reader for 1, the parallel one for 2 and all cores) runs
//!   behind `haul_store::read_ahead` while this thread hashes every output
//!   byte (the diffID), so the hashing competes for the cores as the
//!   unpacker does.
//!
//! Run it on a quiet machine; a loaded one shifts every number but the
//! same-run ratios less.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::time::Instant;

const CHUNK: usize = 256 * 1024;

fn drain(r: impl Read) -> io::Result<u64> {
    drain_with(r, CHUNK)
}

fn drain_with(mut r: impl Read, chunk: usize) -> io::Result<u64> {
    let mut buf = vec![0u8; chunk];
    let mut total = 0u64;
    loop {
        match r.read(&mut buf)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

struct Sink(u64);
impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn run(name: &str, path: &str) -> io::Result<u64> {
    let file = File::open(path)?;
    match name {
        "flate2-today" => {
            let mut r = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(CHUNK, file));
            let mut total = 0u64;
            loop {
                let mut chunk = vec![0u8; CHUNK];
                match r.read(&mut chunk)? {
                    0 => return Ok(total),
                    n => total += n as u64,
                }
                std::hint::black_box(&chunk);
            }
        }
        "haul" => drain(haul_store::GzipReader::new(file)),
        "haul-1m" => drain_with(haul_store::GzipReader::new(file), 1 << 20),
        "haul-4m" => drain_with(haul_store::GzipReader::new(file), 4 << 20),
        "rapidgzip-core-stream" => {
            let decoder = rapidgzip_core::Decoder::builder()
                .decoder_threads(1)
                .build()
                .map_err(io::Error::other)?;
            let mut sink = Sink(0);
            decoder
                .decode_stream(file, &mut sink)
                .map_err(io::Error::other)?;
            Ok(sink.0)
        }
        "isal" => drain(isal::read::Decoder::new(file, isal::Codec::Gzip)),
        "rapidgzip-core-1t" | "rapidgzip-core-2t" => {
            let threads = if name.ends_with("1t") { 1 } else { 2 };
            let decoder = rapidgzip_core::Decoder::builder()
                .decoder_threads(threads)
                .build()
                .map_err(io::Error::other)?;
            let mut sink = Sink(0);
            decoder.decode(&file, &mut sink).map_err(io::Error::other)?;
            Ok(sink.0)
        }
        "libdeflate" => {
            let mut input = Vec::new();
            { file }.read_to_end(&mut input)?;
            let n = input.len();
            let isize = u32::from_le_bytes(input[n - 4..].try_into().unwrap()) as usize;
            let mut out = vec![0u8; isize];
            let got = libdeflater::Decompressor::new()
                .gzip_decompress(&input, &mut out)
                .map_err(|e| io::Error::other(format!("{e:?}")))?;
            Ok(got as u64)
        }
        "haul-par-2" | "haul-par-all" => drain(parallel(file, threads_of(name))?),
        "pull-like-1" | "pull-like-2" | "pull-like-all" => {
            let threads = threads_of(name);
            let inflated: Box<dyn Read + Send> = if threads == 1 {
                Box::new(haul_store::GzipReader::new(file))
            } else {
                Box::new(parallel(file, threads)?)
            };
            let mut reader = haul_store::read_ahead(inflated);
            let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            loop {
                match reader.read(&mut buf)? {
                    0 => break,
                    n => {
                        sha2::Digest::update(&mut hasher, &buf[..n]);
                        total += n as u64;
                    }
                }
            }
            std::hint::black_box(sha2::Digest::finalize(hasher));
            Ok(total)
        }
        other => Err(io::Error::other(format!("unknown candidate {other}"))),
    }
}

/// The decoder threads a candidate's name asks for (`-all`: the cores).
fn threads_of(name: &str) -> usize {
    match name.rsplit('-').next() {
        Some("all") => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Some(n) => n.parse().unwrap_or(1),
        None => 1,
    }
}

/// A whole file read by position.
struct WholeFile(File, u64);

impl haul_store::PositionalBlob for WholeFile {
    fn len(&self) -> u64 {
        self.1
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.0, buf, offset)
    }
}

fn parallel(file: File, threads: usize) -> io::Result<haul_store::ParallelGzipReader> {
    let len = file.metadata()?.len();
    let sequential = file.try_clone()?;
    let reader = haul_store::ParallelGzipReader::new(
        std::sync::Arc::new(WholeFile(file, len)),
        threads,
        Box::new(move || Ok(Box::new(haul_store::GzipReader::new(sequential)) as _)),
    )?;
    Ok(reader)
}

const CANDIDATES: [&str; 14] = [
    "flate2-today",
    "haul",
    "haul-1m",
    "haul-4m",
    "rapidgzip-core-stream",
    "isal",
    "rapidgzip-core-1t",
    "rapidgzip-core-2t",
    "libdeflate",
    "haul-par-2",
    "haul-par-all",
    "pull-like-1",
    "pull-like-2",
    "pull-like-all",
];

/// User + system CPU seconds of this process so far (all threads).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are
    // the 12th and 13th of those, in clock ticks (100 per second here).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut repeat = 3usize;
    let mut only: Vec<String> = CANDIDATES.iter().map(|s| s.to_string()).collect();
    let mut files = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--repeat" => repeat = args.next().and_then(|v| v.parse().ok()).unwrap_or(3),
            "--only" => {
                only = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            _ => files.push(a),
        }
    }
    for path in &files {
        let compressed = std::fs::metadata(path)?.len() as f64;
        let mut expected = None;
        let mut results = Vec::new();
        for name in &only {
            let mut times = Vec::new();
            let mut cpus = Vec::new();
            for _ in 0..repeat {
                let t = Instant::now();
                let c = cpu_seconds();
                let out = run(name, path)?;
                times.push(t.elapsed().as_secs_f64());
                cpus.push(cpu_seconds() - c);
                match expected {
                    None => expected = Some(out),
                    Some(e) if e != out => {
                        return Err(io::Error::other(format!(
                            "{name} produced {out} bytes, others {e}"
                        )))
                    }
                    _ => {}
                }
            }
            times.sort_by(f64::total_cmp);
            cpus.sort_by(f64::total_cmp);
            let cpu = cpus[cpus.len() / 2];
            results.push((name.clone(), times[times.len() / 2], cpu, times));
        }
        let out = expected.unwrap_or(0) as f64;
        let haul = results.iter().find(|r| r.0 == "haul").map(|r| r.1);
        println!(
            "{path}: {:.0} MB gzip -> {:.0} MB, median of {repeat}",
            compressed / 1e6,
            out / 1e6
        );
        println!(
            "{:<22} {:>8} {:>8} {:>10} {:>10} {:>8}  runs",
            "candidate", "median s", "CPU s", "in MB/s", "out MB/s", "vs haul"
        );
        for (name, med, cpu, times) in &results {
            let ratio = haul.map_or("-".into(), |h| format!("{:.2}x", h / med));
            let runs: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
            println!(
                "{name:<22} {med:>8.3} {cpu:>8.3} {:>10.0} {:>10.0} {ratio:>8}  {}",
                compressed / 1e6 / med,
                out / 1e6 / med,
                runs.join(" ")
            );
        }
        println!();
    }
    Ok(())
}
