//! Test support shared by the integration tests: recording outputs, a
//! concurrency gauge, and mock descriptors and layer store modelled on
//! Docker's `xfer` test fixtures.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haul_xfer::{
    ChainId, Counts, DiffId, DownloadDescriptor, Error, Event, Layer, LayerBlob, LayerStore,
    LayerStream, Progress, ProgressOutput, Registration, RemoteDescriptor, RetryPolicy, Status,
    UploadDescriptor,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Retry ticks of a millisecond, as Docker's tests use.
pub(crate) fn fast_retries() -> RetryPolicy {
    RetryPolicy::default().with_tick(Duration::from_millis(1))
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Fails the test if `future` takes longer than `seconds`.
pub(crate) async fn within<F: std::future::Future>(
    seconds: u64,
    what: &str,
    future: F,
) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(seconds), future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {seconds} s: {what}"),
    }
}

/// A short label of a record's stage, for assertions that read like the
/// stages they check ("Downloading", "Retrying in 5 seconds"); a message is
/// labelled by its debug form.
pub(crate) fn stage(progress: &Progress) -> String {
    match &progress.event {
        Event::Status(status) => match status {
            Status::PullingFsLayer => "Pulling fs layer".into(),
            Status::AlreadyExists => "Already exists".into(),
            Status::Waiting => "Waiting".into(),
            Status::Downloading(_) => "Downloading".into(),
            Status::VerifyingChecksum => "Verifying Checksum".into(),
            Status::DownloadComplete => "Download complete".into(),
            Status::Extracting(_) => "Extracting".into(),
            Status::PullComplete => "Pull complete".into(),
            Status::Retrying { seconds: 1 } => "Retrying in 1 second".into(),
            Status::Retrying { seconds } => format!("Retrying in {seconds} seconds"),
            Status::Preparing => "Preparing".into(),
            Status::Pushing(_) => "Pushing".into(),
            Status::Pushed => "Pushed".into(),
            other => format!("{other:?}"),
        },
        Event::Message(message) => format!("{message:?}"),
    }
}

/// A counted "Downloading" record, as the mocks write them.
pub(crate) fn downloading(id: &str, current: u64, total: u64) -> Progress {
    Progress::status(id, Status::Downloading(Counts::of(current, total)))
}

/// An output that records everything, and counts records written after
/// [`RecordingOutput::close`] (which must never happen once the watcher
/// writing to it was released).
#[derive(Debug)]
pub(crate) struct RecordingOutput {
    state: Mutex<Recorded>,
    count: watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct Recorded {
    records: Vec<Progress>,
    closed: bool,
    late_writes: usize,
}

impl RecordingOutput {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(RecordingOutput {
            state: Mutex::new(Recorded::default()),
            count: watch::channel(0).0,
        })
    }

    /// From now on every write is a violation.
    pub(crate) fn close(&self) {
        self.state.lock().unwrap().closed = true;
    }

    pub(crate) fn late_writes(&self) -> usize {
        self.state.lock().unwrap().late_writes
    }

    pub(crate) fn records(&self) -> Vec<Progress> {
        self.state.lock().unwrap().records.clone()
    }

    pub(crate) fn records_for(&self, id: &str) -> Vec<Progress> {
        self.records().into_iter().filter(|p| p.id == id).collect()
    }

    pub(crate) fn last_by_id(&self) -> HashMap<String, Progress> {
        let mut last = HashMap::new();
        for record in self.records() {
            last.insert(record.id.clone(), record);
        }
        last
    }

    /// Waits until at least `n` records were written.
    pub(crate) async fn wait_for_records(&self, n: usize) {
        let mut count = self.count.subscribe();
        count.wait_for(|count| *count >= n).await.unwrap();
    }
}

impl ProgressOutput for RecordingOutput {
    fn write(&self, progress: Progress) {
        let mut state = self.state.lock().unwrap();
        if state.closed {
            state.late_writes += 1;
            return;
        }
        state.records.push(progress);
        let n = state.records.len();
        drop(state);
        self.count.send_replace(n);
    }
}

/// Counts how many pieces of work run at once and remembers the maximum.
#[derive(Debug, Default)]
pub(crate) struct Gauge {
    running: AtomicUsize,
    max_seen: AtomicUsize,
}

pub(crate) struct GaugeGuard<'a>(&'a Gauge);

impl Gauge {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Gauge::default())
    }

    /// Counts one more running; returns how many run now.
    pub(crate) fn enter(&self) -> (GaugeGuard<'_>, usize) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_seen.fetch_max(now, Ordering::SeqCst);
        (GaugeGuard(self), now)
    }

    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    pub(crate) fn max_seen(&self) -> usize {
        self.max_seen.load(Ordering::SeqCst)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------- downloads

/// Chain ID by the OCI rule.
pub(crate) fn chain_id(parent: Option<&ChainId>, diff_id: &DiffId) -> ChainId {
    match parent {
        None => ChainId::new(diff_id.as_str()),
        Some(parent) => ChainId::new(sha256_digest(format!("{parent} {diff_id}").as_bytes())),
    }
}

#[derive(Debug, Clone)]
pub(crate) struct MockLayer {
    pub diff_id: DiffId,
    pub chain_id: ChainId,
    pub bytes: Arc<Vec<u8>>,
}

impl Layer for MockLayer {
    fn diff_id(&self) -> DiffId {
        self.diff_id.clone()
    }
    fn chain_id(&self) -> ChainId {
        self.chain_id.clone()
    }
}

/// Docker's mock layer store: registration reads every byte; the diffID is
/// their SHA-256; registering on an unknown parent fails.
#[derive(Debug, Default)]
pub(crate) struct MockLayerStore {
    layers: Mutex<HashMap<ChainId, MockLayer>>,
    pub registrations: AtomicUsize,
    pub releases: AtomicUsize,
    /// Handles `get` gave out (each must come back through `release`).
    pub handed_out: AtomicUsize,
    /// If set, every registration fails with this message.
    pub fail_registration: Mutex<Option<String>>,
    /// If set, registrations wait until this token fires.
    pub registration_gate: Mutex<Option<CancellationToken>>,
}

impl MockLayerStore {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(MockLayerStore::default())
    }

    /// Drops the layer `chain_id` from the store (as if damaged and
    /// removed), leaving the layers registered on top of it.
    pub(crate) fn forget(&self, chain_id: &ChainId) {
        self.layers.lock().unwrap().remove(chain_id);
    }

    /// Registers `bytes` at the bottom, as if pulled before.
    pub(crate) fn preregister(&self, bytes: &[u8]) -> MockLayer {
        let diff_id = DiffId::new(sha256_digest(bytes));
        let layer = MockLayer {
            chain_id: chain_id(None, &diff_id),
            diff_id,
            bytes: Arc::new(bytes.to_vec()),
        };
        self.layers
            .lock()
            .unwrap()
            .insert(layer.chain_id.clone(), layer.clone());
        layer
    }

    pub(crate) fn contains(&self, chain_id: &ChainId) -> bool {
        self.layers.lock().unwrap().contains_key(chain_id)
    }
}

impl MockLayerStore {
    async fn register_stream(
        &self,
        mut stream: LayerStream,
        parent: Option<&ChainId>,
    ) -> Result<MockLayer, Error> {
        let gate = self.registration_gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.cancelled().await;
        }
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await?;
        if let Some(message) = self.fail_registration.lock().unwrap().clone() {
            return Err(Error::failed(message));
        }
        if let Some(parent) = parent {
            if !self.contains(parent) {
                return Err(Error::failed(format!("unknown parent layer {parent}")));
            }
        }
        let diff_id = DiffId::new(sha256_digest(&bytes));
        let layer = MockLayer {
            chain_id: chain_id(parent, &diff_id),
            diff_id,
            bytes: Arc::new(bytes),
        };
        self.layers
            .lock()
            .unwrap()
            .insert(layer.chain_id.clone(), layer.clone());
        self.registrations.fetch_add(1, Ordering::SeqCst);
        Ok(layer)
    }
}

impl LayerStore for MockLayerStore {
    type Layer = MockLayer;
    type Blob = LayerBlob;

    fn chain_id(&self, parent: Option<&ChainId>, diff_id: &DiffId) -> ChainId {
        chain_id(parent, diff_id)
    }

    async fn get(&self, chain_id: &ChainId) -> Option<MockLayer> {
        let found = self.layers.lock().unwrap().get(chain_id).cloned();
        if found.is_some() {
            self.handed_out.fetch_add(1, Ordering::SeqCst);
        }
        found
    }

    async fn register(
        &self,
        blob: LayerBlob,
        parent: Option<&ChainId>,
        registration: &Registration,
    ) -> Result<MockLayer, Error> {
        self.register_stream(blob.into_extracting(registration), parent)
            .await
    }

    async fn register_again(
        &self,
        layer: &MockLayer,
        parent: Option<&ChainId>,
        registration: &Registration,
    ) -> Result<MockLayer, Error> {
        let blob = LayerBlob {
            stream: Box::pin(Cursor::new(layer.bytes.as_ref().clone())),
            size: layer.bytes.len() as u64,
        };
        self.register_stream(blob.into_extracting(registration), parent)
            .await
    }

    async fn release(&self, _layer: MockLayer) {
        self.releases.fetch_add(1, Ordering::SeqCst);
    }
}

/// Docker's mock download descriptor: 11 "Downloading" records 10 ms
/// apart, then `simulate_retries` failures, then `id` repeated 5 times.
#[derive(Debug)]
pub(crate) struct MockDownload {
    pub id: String,
    pub preset_diff_id: Option<DiffId>,
    pub simulate_retries: u32,
    pub failures: AtomicU32,
    pub attempts: AtomicU32,
    pub gauge: Option<Arc<Gauge>>,
    /// Concurrency above this makes `download` fail (Docker's check).
    pub limit: usize,
    pub registered: Mutex<Option<DiffId>>,
    pub closed: AtomicUsize,
    /// If set, the failure is marked do-not-retry.
    pub permanent_failure: AtomicBool,
    /// If set, `download` finishes only once this token fires.
    pub gate: Option<CancellationToken>,
}

impl MockDownload {
    pub(crate) fn new(id: &str) -> Self {
        MockDownload {
            id: id.to_owned(),
            preset_diff_id: None,
            simulate_retries: 0,
            failures: AtomicU32::new(0),
            attempts: AtomicU32::new(0),
            gauge: None,
            limit: 3,
            registered: Mutex::new(None),
            closed: AtomicUsize::new(0),
            permanent_failure: AtomicBool::new(false),
            gate: None,
        }
    }

    /// A download that completes only once `gate` fires.
    pub(crate) fn gated(mut self, gate: &CancellationToken) -> Self {
        self.gate = Some(gate.clone());
        self
    }

    pub(crate) fn with_diff_id(mut self, diff_id: &str) -> Self {
        self.preset_diff_id = Some(DiffId::new(diff_id));
        self
    }

    pub(crate) fn with_retries(mut self, simulate_retries: u32) -> Self {
        self.simulate_retries = simulate_retries;
        self
    }

    pub(crate) fn with_gauge(mut self, gauge: &Arc<Gauge>) -> Self {
        self.gauge = Some(Arc::clone(gauge));
        self
    }

    pub(crate) fn content(&self) -> Vec<u8> {
        self.id.repeat(5).into_bytes()
    }

    pub(crate) fn registered(&self) -> Option<DiffId> {
        self.registered.lock().unwrap().clone()
    }
}

impl DownloadDescriptor for MockDownload {
    type Blob = LayerBlob;

    fn key(&self) -> String {
        self.id.clone()
    }

    fn id(&self) -> String {
        self.id.clone()
    }

    fn diff_id(&self) -> Option<DiffId> {
        self.preset_diff_id.clone()
    }

    async fn download(
        &self,
        cancel: CancellationToken,
        progress: Arc<dyn ProgressOutput>,
    ) -> Result<LayerBlob, Error> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let _running = match &self.gauge {
            Some(gauge) => {
                let (guard, now) = gauge.enter();
                if now > self.limit {
                    return Err(Error::failed("concurrency limit exceeded"));
                }
                Some(guard)
            }
            None => None,
        };
        for i in 0..=10 {
            tokio::select! {
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {
                    progress.write(downloading(&self.id, i, 10));
                }
            }
        }
        if let Some(gate) = &self.gate {
            tokio::select! {
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                _ = gate.cancelled() => {}
            }
        }
        if self.failures.load(Ordering::SeqCst) < self.simulate_retries {
            let failed = self.failures.fetch_add(1, Ordering::SeqCst) + 1;
            let err = Error::failed(format!(
                "simulating download attempt failure {failed}/{}",
                self.simulate_retries
            ));
            if self.permanent_failure.load(Ordering::SeqCst) {
                return Err(err.into_do_not_retry());
            }
            return Err(err);
        }
        Ok(LayerBlob {
            stream: Box::pin(Cursor::new(self.content())),
            size: 0,
        })
    }

    fn registered(&self, diff_id: &DiffId) {
        *self.registered.lock().unwrap() = Some(diff_id.clone());
    }

    fn close(&self) {
        self.closed.fetch_add(1, Ordering::SeqCst);
    }
}

// ------------------------------------------------------------------ uploads

/// Docker's mock upload descriptor: 11 records (Current 0..=10) 10 ms
/// apart, then `simulate_retries` failures "simulating retry", then the
/// remote descriptor whose digest is the SHA-256 of the diffID text.
#[derive(Debug)]
pub(crate) struct MockUpload {
    pub diff_id: String,
    pub simulate_retries: u32,
    pub failures: AtomicU32,
    pub attempts: AtomicU32,
    pub gauge: Option<Arc<Gauge>>,
    pub limit: usize,
    /// If set, every attempt fails with this (do-not-retry) message after
    /// `delay`.
    pub fail_with: Option<(String, Duration)>,
    pub remote: Mutex<Option<RemoteDescriptor>>,
    pub remote_calls: AtomicUsize,
}

impl MockUpload {
    pub(crate) fn new(diff_id: &str) -> Self {
        MockUpload {
            diff_id: diff_id.to_owned(),
            simulate_retries: 0,
            failures: AtomicU32::new(0),
            attempts: AtomicU32::new(0),
            gauge: None,
            limit: 3,
            fail_with: None,
            remote: Mutex::new(None),
            remote_calls: AtomicUsize::new(0),
        }
    }

    pub(crate) fn with_retries(mut self, simulate_retries: u32) -> Self {
        self.simulate_retries = simulate_retries;
        self
    }

    pub(crate) fn with_gauge(mut self, gauge: &Arc<Gauge>) -> Self {
        self.gauge = Some(Arc::clone(gauge));
        self
    }

    pub(crate) fn failing(mut self, message: &str, after: Duration) -> Self {
        self.fail_with = Some((message.to_owned(), after));
        self
    }

    pub(crate) fn remote(&self) -> Option<RemoteDescriptor> {
        self.remote.lock().unwrap().clone()
    }
}

impl UploadDescriptor for MockUpload {
    fn key(&self) -> String {
        self.diff_id.clone()
    }

    fn id(&self) -> String {
        self.diff_id.clone()
    }

    async fn upload(
        &self,
        cancel: CancellationToken,
        progress: Arc<dyn ProgressOutput>,
    ) -> Result<RemoteDescriptor, Error> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let _running = match &self.gauge {
            Some(gauge) => {
                let (guard, now) = gauge.enter();
                if now > self.limit {
                    return Err(Error::failed("concurrency limit exceeded"));
                }
                Some(guard)
            }
            None => None,
        };
        if let Some((message, after)) = &self.fail_with {
            tokio::time::sleep(*after).await;
            return Err(Error::do_not_retry(message.clone()));
        }
        for i in 0..=10 {
            tokio::select! {
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {
                    progress.write(Progress::status(&self.diff_id, Status::Extracting(Counts::of(i, 10))));
                }
            }
        }
        if self.failures.load(Ordering::SeqCst) < self.simulate_retries {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(Error::failed("simulating retry"));
        }
        Ok(RemoteDescriptor {
            digest: sha256_digest(self.diff_id.as_bytes()),
            size: 0,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".to_owned(),
        })
    }

    fn set_remote_descriptor(&self, descriptor: RemoteDescriptor) {
        self.remote_calls.fetch_add(1, Ordering::SeqCst);
        *self.remote.lock().unwrap() = Some(descriptor);
    }
}
