//! Blob downloads: existence checks, ranged GETs, and a verified stream
//! that resumes with `Range` after a dropped connection.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use haul_oci::{Digest, Digester};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use reqwest::StatusCode;

use crate::client::{transport_error, Operation, Subject};
use crate::error::{Error, Result};
use crate::repository::{header_str, Repository};

/// A stream of blob bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send + 'static>>;

/// An opened blob body: where it starts, how big the blob is, the bytes.
pub struct BlobBody {
    /// Offset of the first byte of `stream` within the blob: the offset
    /// asked for, or 0 when the registry ignored the `Range` header.
    pub start: u64,
    /// Size of the whole blob, when the registry said.
    pub total: Option<u64>,
    /// The bytes from `start` on.
    pub stream: ByteStream,
}

impl Repository {
    pub(crate) fn blob_op(&self, digest: &Digest, action: &str) -> Operation {
        Operation {
            subject: Subject::Blob {
                repository: self.name.clone(),
                digest: digest.to_string(),
            },
            action: format!("{action} blob {digest}"),
            scopes: self.pull_scope(),
            resendable: true,
            resend_after_transport_error: true,
        }
    }

    /// Whether the repository has a blob, and its size. `Ok(None)` only when
    /// the registry says "not found"; a failing check is an error (retried
    /// first), never taken for "absent".
    pub async fn head_blob(&self, digest: &Digest) -> Result<Option<u64>> {
        let op = self.blob_op(digest, "HEAD");
        let url = self
            .host
            .url(&format!("v2/{}/blobs/{digest}", self.name))
            .await?;
        let resp = self
            .host
            .send(&op, &|http| Ok(http.head(url.clone())))
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(
                header_str(resp.headers(), CONTENT_LENGTH.as_str())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            _ => Err(self.host.status_error(&op, resp).await),
        }
    }

    /// Opens a blob from `offset` on (following redirects to storage hosts,
    /// which never see our credentials). Checks that a ranged answer starts
    /// where asked; an answer that ignored the range starts at 0.
    pub async fn open_blob(&self, digest: &Digest, offset: u64) -> Result<BlobBody> {
        self.open_blob_with(digest, offset, Retries::Client).await
    }

    async fn open_blob_with(
        &self,
        digest: &Digest,
        offset: u64,
        retries: Retries,
    ) -> Result<BlobBody> {
        let mut last_error = None;
        for host in self.read_hosts() {
            match self.open_blob_on(host, digest, offset, retries).await {
                Ok(b) => return Ok(b),
                Err(e) if !std::sync::Arc::ptr_eq(host, &self.host) => {
                    tracing::info!(mirror = %host.name, "mirror failed, trying the next: {e}");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Config("no host to read from".into())))
    }

    async fn open_blob_on(
        &self,
        host: &crate::client::Host,
        digest: &Digest,
        offset: u64,
        retries: Retries,
    ) -> Result<BlobBody> {
        let op = self.blob_op(digest, "GET");
        let url = host
            .url(&format!("v2/{}/blobs/{digest}", self.name))
            .await?;
        let build = |http: &reqwest::Client| {
            let req = http.get(url.clone());
            Ok(if offset > 0 {
                req.header(RANGE, format!("bytes={offset}-"))
            } else {
                req
            })
        };
        let resp = match retries {
            Retries::Client => host.send(&op, &build).await?,
            Retries::Caller => host.send_once(&op, &build).await?,
        };
        let registry = host.name.clone();
        let (start, total) = match resp.status() {
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                checked_range(resp.headers(), offset, &format!("blob {digest}"), &registry)?
            }
            StatusCode::OK => (0, resp.content_length()),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                return Err(Error::Protocol {
                    registry,
                    message: format!("blob {digest}: offset {offset} is past its end"),
                });
            }
            _ => return Err(host.status_error(&op, resp).await),
        };
        let stream = resp
            .bytes_stream()
            .map_err(move |e| transport_error(&registry, &e));
        Ok(BlobBody {
            start,
            total,
            stream: Box::pin(stream),
        })
    }

    /// The whole blob as a stream, verified: its size (when known) and its
    /// digest are checked at the end, and a connection that breaks midway is
    /// reopened with `Range` from the byte reached, up to the retry policy's
    /// attempts. A mismatch ends the stream with [`Error::DigestMismatch`].
    pub fn blob_stream(&self, digest: &Digest, expected_size: Option<u64>) -> ByteStream {
        self.resuming_stream(
            digest,
            expected_size,
            0,
            Some(Digester::new(digest.algorithm())),
        )
    }

    /// Like [`Repository::blob_stream`], continuing a download whose first
    /// `digester.bytes()` bytes the caller already has (and fed to
    /// `digester`): only the rest is fetched, and the digest still covers the
    /// whole blob.
    pub fn blob_stream_from(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        digester: Digester,
    ) -> ByteStream {
        let received = digester.bytes();
        self.resuming_stream(digest, expected_size, received, Some(digester))
    }

    /// The blob from byte `offset` on, resuming after dropped connections
    /// like [`Repository::blob_stream`] but without hashing: for a caller
    /// that verifies the digest itself as it stores the bytes (hashing
    /// twice would cost a core at loopback speed). The size is still checked.
    pub fn blob_stream_unverified(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        offset: u64,
    ) -> ByteStream {
        self.resuming_stream(digest, expected_size, offset, None)
    }

    /// One attempt at the blob from byte `offset` on, unverified (like
    /// [`Repository::blob_stream_unverified`]), for a caller that counts
    /// attempts itself and shows them (a layer download): a failing
    /// request is not retried here but ends the stream with its error; a
    /// connection that breaks after delivering bytes is reopened with
    /// `Range` at once, for free, as long as each connection moves the
    /// download on. So the caller's attempts are the only retry budget.
    pub fn blob_stream_attempt(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        offset: u64,
    ) -> ByteStream {
        let mut state = self.resume_state(digest, expected_size, offset, None);
        state.retries = Retries::Caller;
        Box::pin(futures::stream::try_unfold(state, ResumeState::next))
    }

    fn resuming_stream(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        received: u64,
        digester: Option<Digester>,
    ) -> ByteStream {
        let state = self.resume_state(digest, expected_size, received, digester);
        Box::pin(futures::stream::try_unfold(state, ResumeState::next))
    }

    fn resume_state(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
        received: u64,
        digester: Option<Digester>,
    ) -> ResumeState {
        ResumeState {
            repo: self.clone(),
            digest: digest.clone(),
            expected_size,
            received,
            digester,
            done: false,
            body: None,
            skip: 0,
            failures: 0,
            retries: Retries::Client,
            since_open: 0,
        }
    }
}

/// Who retries failing requests of a blob stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retries {
    /// The client, per its retry policy (requests and resumes alike).
    Client,
    /// The caller: requests are sent once; only resumes that follow
    /// progress are made here.
    Caller,
}

/// `bytes START-END/TOTAL` -> (START, TOTAL if known). The `bytes` unit is
/// optional: the original v1 registry leaves it out.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let value = value.trim();
    let rest = value
        .strip_prefix("bytes")
        .map(str::trim_start)
        .unwrap_or(value);
    let (range, total) = rest.split_once('/')?;
    let (first, _last) = range.split_once('-')?;
    Some((first.trim().parse().ok()?, total.trim().parse().ok()))
}

/// Checks a 206 answer to a request for bytes from `offset` on: its
/// `Content-Range` must be readable and start at `offset`. Returns the
/// start and the whole size, when given.
pub(crate) fn checked_range(
    headers: &reqwest::header::HeaderMap,
    offset: u64,
    what: &str,
    registry: &str,
) -> Result<(u64, Option<u64>)> {
    let value = header_str(headers, CONTENT_RANGE.as_str()).unwrap_or_default();
    let (first, total) = parse_content_range(&value).ok_or_else(|| Error::Protocol {
        registry: registry.to_string(),
        message: format!("{what}: unusable Content-Range {value:?}"),
    })?;
    if first != offset {
        return Err(Error::Protocol {
            registry: registry.to_string(),
            message: format!(
                "{what}: asked for bytes from {offset}, got a range starting at {first}"
            ),
        });
    }
    Ok((first, total))
}

struct ResumeState {
    repo: Repository,
    digest: Digest,
    expected_size: Option<u64>,
    /// Bytes of the blob delivered so far (including any the caller had).
    received: u64,
    /// Hashes everything delivered, when this stream verifies the digest.
    digester: Option<Digester>,
    done: bool,
    body: Option<ByteStream>,
    /// Bytes still to drop from a body that restarted before our offset.
    skip: u64,
    failures: u32,
    retries: Retries,
    /// Bytes delivered since the body was last opened.
    since_open: u64,
}

impl ResumeState {
    async fn next(mut self) -> Result<Option<(Bytes, Self)>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let body = match self.body.as_mut() {
                Some(b) => b,
                None => match self
                    .repo
                    .open_blob_with(&self.digest, self.received, self.retries)
                    .await
                {
                    Ok(opened) => {
                        self.since_open = 0;
                        self.skip = self.received - opened.start.min(self.received);
                        if let (Some(total), Some(expected)) = (opened.total, self.expected_size) {
                            if total != expected {
                                return Err(Error::SizeMismatch {
                                    what: format!("blob {}", self.digest),
                                    expected,
                                    actual: total,
                                });
                            }
                        }
                        self.body.insert(opened.stream)
                    }
                    Err(e) => {
                        self.retry_or_fail(e).await?;
                        continue;
                    }
                },
            };
            match body.next().await {
                Some(Ok(mut chunk)) => {
                    if self.skip > 0 {
                        let drop = self.skip.min(chunk.len() as u64) as usize;
                        self.skip -= drop as u64;
                        chunk = chunk.slice(drop..);
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    if let Some(digester) = self.digester.as_mut() {
                        digester.update(&chunk);
                    }
                    self.received += chunk.len() as u64;
                    if let Some(expected) = self.expected_size {
                        if self.received > expected {
                            return Err(Error::SizeMismatch {
                                what: format!("blob {}", self.digest),
                                expected,
                                actual: self.received,
                            });
                        }
                    }
                    self.failures = 0;
                    self.since_open += chunk.len() as u64;
                    return Ok(Some((chunk, self)));
                }
                Some(Err(e)) => {
                    self.body = None;
                    self.retry_or_fail(e).await?;
                }
                None => {
                    self.done = true;
                    self.finish()?;
                    return Ok(None);
                }
            }
        }
    }

    async fn retry_or_fail(&mut self, error: Error) -> Result<()> {
        if self.retries == Retries::Caller {
            // Free only when the broken connection had moved the download
            // on; otherwise the failure is the caller's to count.
            let progressed = std::mem::take(&mut self.since_open);
            if error.is_retryable() && progressed > 0 {
                tracing::debug!(
                    "blob {}: {error}; resuming from byte {} (the connection had delivered {progressed} bytes)",
                    self.digest,
                    self.received,
                );
                return Ok(());
            }
            return Err(error);
        }
        self.failures += 1;
        let policy = &self.repo.client.config().retry;
        if !error.is_retryable() || self.failures >= policy.max_attempts {
            return Err(error);
        }
        tracing::info!(
            "blob {}: {error}; resuming from byte {} (attempt {} of {})",
            self.digest,
            self.received,
            self.failures + 1,
            policy.max_attempts
        );
        tokio::time::sleep(
            policy
                .delay(self.failures, None)
                .min(Duration::from_secs(5)),
        )
        .await;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(expected) = self.expected_size {
            if self.received != expected {
                return Err(Error::SizeMismatch {
                    what: format!("blob {}", self.digest),
                    expected,
                    actual: self.received,
                });
            }
        }
        if let Some(digester) = self.digester.take() {
            let actual = digester.finish();
            if actual != self.digest {
                return Err(Error::DigestMismatch {
                    what: format!("blob of {}/{}", self.repo.registry(), self.repo.name()),
                    expected: self.digest.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {

        #[test]
        fn content_ranges_never_panic(value in "\\PC{0,60}") {
            let _ = parse_content_range(&value);
        }

        #[test]
        fn content_ranges_give_start_and_total(start: u64, last: u64, total: Option<u64>, unit: bool) {
            let text = format!(
                "{}{start}-{last}/{}",
                if unit { "bytes " } else { "" },
                total.map_or("*".to_string(), |t| t.to_string())
            );
            proptest::prop_assert_eq!(parse_content_range(&text), Some((start, total)));
        }
    }

    #[test]
    fn content_range_is_parsed() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("5-9/10"), Some((5, Some(10))));
        assert_eq!(parse_content_range("bytes x-2/3"), None);
    }
}
