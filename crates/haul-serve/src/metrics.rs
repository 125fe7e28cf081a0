//! Counters of the server, rendered at `/metrics` in the Prometheus text
//! exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What the server counts. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct Metrics {
    requests_by_status: Mutex<BTreeMap<u16, u64>>,
    bytes_served: AtomicU64,
    upstream_bytes: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    inflight_transfers: AtomicU64,
}

impl Metrics {
    /// Counts a response with `status`.
    pub(crate) fn request(&self, status: u16) {
        let mut map = self
            .requests_by_status
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *map.entry(status).or_default() += 1;
    }

    /// Counts body bytes sent to clients.
    pub(crate) fn served(&self, bytes: u64) {
        self.bytes_served.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts body bytes received from upstream registries.
    pub(crate) fn upstream(&self, bytes: u64) {
        self.upstream_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a request answered from the store.
    pub(crate) fn hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request that had to ask upstream.
    pub(crate) fn miss(&self) {
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
    }

    /// A transfer from upstream started (`+1`) or ended (`-1`).
    pub(crate) fn transfer_delta(&self, started: bool) {
        if started {
            self.inflight_transfers.fetch_add(1, Ordering::Relaxed);
        } else {
            self.inflight_transfers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Total body bytes sent to clients so far.
    pub fn bytes_served(&self) -> u64 {
        self.bytes_served.load(Ordering::Relaxed)
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {value}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {value}");
        };
        let _ = writeln!(
            out,
            "# HELP haul_serve_requests_total Requests answered, by HTTP status."
        );
        let _ = writeln!(out, "# TYPE haul_serve_requests_total counter");
        for (status, count) in self
            .requests_by_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "haul_serve_requests_total{{status=\"{status}\"}} {count}"
            );
        }
        counter(
            &mut out,
            "haul_serve_bytes_served_total",
            "Body bytes sent to clients.",
            self.bytes_served.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "haul_serve_upstream_bytes_total",
            "Body bytes received from upstream registries.",
            self.upstream_bytes.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "haul_serve_cache_hits_total",
            "Manifest and blob requests answered from the store.",
            self.cache_hits.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "haul_serve_cache_misses_total",
            "Manifest and blob requests that went upstream.",
            self.cache_misses.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "haul_serve_inflight_transfers",
            "Transfers from upstream in progress.",
            self.inflight_transfers.load(Ordering::Relaxed),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.request(200);
        metrics.request(200);
        metrics.request(404);
        metrics.served(42);
        metrics.hit();
        let text = metrics.render();
        assert!(
            text.contains("haul_serve_requests_total{status=\"200\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("haul_serve_requests_total{status=\"404\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("haul_serve_bytes_served_total 42\n"),
            "{text}"
        );
        assert!(text.contains("haul_serve_cache_hits_total 1\n"), "{text}");
        assert!(
            text.contains("# TYPE haul_serve_inflight_transfers gauge\n"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("haul_serve_"), "{line}");
            assert!(value.parse::<u64>().is_ok(), "{line}");
        }
    }
}
