//! Blob uploads: monolithic (POST then PUT), chunked (PATCH with
//! `Content-Range`, resumable from the offset the registry reports),
//! streamed (one PATCH without a length), cross-repository mounts, and
//! cancelling a session.

use std::pin::Pin;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use haul_oci::Digest;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Body, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt};
use url::Url;

use crate::blob::ByteStream;
use crate::client::{Operation, Subject};
use crate::error::{Error, Result};
use crate::repository::{header_str, Repository};

/// Something an upload can read a blob from, from any offset: reopened for
/// every attempt so that a retry or a resumed session sends the right bytes.
pub trait BlobSource: Send + Sync {
    /// A reader positioned at `offset`.
    fn open(&self, offset: u64) -> std::io::Result<Pin<Box<dyn AsyncRead + Send>>>;
}

/// A blob held in memory (configs, small test blobs).
impl BlobSource for Bytes {
    fn open(&self, offset: u64) -> std::io::Result<Pin<Box<dyn AsyncRead + Send>>> {
        let start = (offset as usize).min(self.len());
        Ok(Box::pin(std::io::Cursor::new(self.slice(start..))))
    }
}

/// A blob in a file.
#[derive(Debug, Clone)]
pub struct FileSource(pub std::path::PathBuf);

impl BlobSource for FileSource {
    fn open(&self, offset: u64) -> std::io::Result<Pin<Box<dyn AsyncRead + Send>>> {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::File::open(&self.0)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(Box::pin(tokio::fs::File::from_std(file)))
    }
}

/// An upload session the registry opened: where to send bytes next and how
/// many it holds.
#[derive(Debug, Clone)]
pub struct UploadSession {
    location: Url,
    offset: u64,
}

impl UploadSession {
    /// Bytes the registry has received so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The session's URL (it names the session; it is not a secret).
    pub fn location(&self) -> &Url {
        &self.location
    }
}

impl UploadSession {
    /// A session known from elsewhere (recorded by an earlier run), to be
    /// offered to a [`ResumableUpload`]; its offset is asked again before
    /// use. `None` when `location` is not an absolute URL.
    pub fn known(location: &str, offset: u64) -> Option<Self> {
        Some(Self {
            location: Url::parse(location).ok()?,
            offset,
        })
    }
}

/// Told of every change of a [`ResumableUpload`]'s session: the session
/// after a chunk the registry took (or a fresh one), `None` once the blob
/// is uploaded or the session is gone. Called on the uploading task; keep
/// it short (a small file write).
pub type SessionObserver = Box<dyn Fn(Option<&UploadSession>) + Send + Sync>;

/// One blob's upload across attempts (and, recorded, across runs): the
/// session the last attempt left, so the next one continues it where the
/// registry still holds it. See [`Repository::upload_resumable`].
#[derive(Default)]
pub struct ResumableUpload {
    session: Mutex<Option<UploadSession>>,
    observer: Option<SessionObserver>,
}

impl std::fmt::Debug for ResumableUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumableUpload")
            .field("session", &*lock(&self.session))
            .finish_non_exhaustive()
    }
}

impl ResumableUpload {
    /// Nothing sent yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same, telling `observer` of every change of the session (to
    /// record it for a later run).
    pub fn with_observer(mut self, observer: SessionObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Continues `session` at the next attempt (a mount that fell back to
    /// an upload, or a session an earlier run recorded).
    pub fn offer(&self, session: UploadSession) {
        self.put(Some(session));
    }

    /// The session the last attempt left, if any.
    pub fn session(&self) -> Option<UploadSession> {
        lock(&self.session).clone()
    }

    fn take(&self) -> Option<UploadSession> {
        lock(&self.session).take()
    }

    fn put(&self, session: Option<UploadSession>) {
        if let Some(observer) = &self.observer {
            observer(session.as_ref());
        }
        *lock(&self.session) = session;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a mount request achieved.
#[derive(Debug)]
pub enum MountOutcome {
    /// The blob is now in the repository; no bytes moved.
    Mounted,
    /// The registry could not mount and opened an upload session instead.
    Upload(UploadSession),
}

impl Repository {
    fn upload_op(&self, digest: Option<&Digest>, action: &str, scopes: Vec<String>) -> Operation {
        Operation {
            subject: match digest {
                Some(d) => Subject::Blob {
                    repository: self.name.clone(),
                    digest: d.to_string(),
                },
                None => Subject::Repository {
                    repository: self.name.clone(),
                },
            },
            action: action.to_string(),
            scopes,
            resendable: true,
            resend_after_transport_error: true,
        }
    }

    async fn session_from(
        &self,
        resp: &reqwest::Response,
        offset_hint: u64,
    ) -> Result<UploadSession> {
        let location =
            header_str(resp.headers(), LOCATION.as_str()).ok_or_else(|| Error::Protocol {
                registry: self.host.name.clone(),
                message: "upload answer without a Location".into(),
            })?;
        let offset = header_str(resp.headers(), RANGE.as_str())
            .and_then(|r| parse_range_end(&r))
            .unwrap_or(offset_hint);
        Ok(UploadSession {
            location: self.host.resolve(&location).await?,
            offset,
        })
    }

    /// Opens an upload session (`POST /v2/NAME/blobs/uploads/`).
    pub async fn start_upload(&self) -> Result<UploadSession> {
        let op = self.upload_op(None, "start upload", self.push_scope());
        let url = self
            .host
            .url(&format!("v2/{}/blobs/uploads/", self.name))
            .await?;
        let resp = self
            .host
            .send(&op, &|http| {
                Ok(http.post(url.clone()).header(CONTENT_LENGTH, 0))
            })
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.host.status_error(&op, resp).await);
        }
        self.session_from(&resp, 0).await
    }

    /// Asks the registry to link a blob from another repository of the same
    /// registry (`POST ...?mount=DIGEST&from=REPO`). A registry that cannot
    /// opens an upload session instead, which the caller continues.
    pub async fn mount_blob(&self, digest: &Digest, from: &str) -> Result<MountOutcome> {
        let scopes = vec![
            crate::auth::repository_scope(&self.name, &["pull", "push"]),
            crate::auth::repository_scope(from, &["pull"]),
        ];
        let op = self.upload_op(Some(digest), &format!("mount from {from}"), scopes);
        let mut url = self
            .host
            .url(&format!("v2/{}/blobs/uploads/", self.name))
            .await?;
        url.query_pairs_mut()
            .append_pair("mount", digest.as_str())
            .append_pair("from", from);
        let resp = self
            .host
            .send(&op, &|http| {
                Ok(http.post(url.clone()).header(CONTENT_LENGTH, 0))
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(MountOutcome::Mounted),
            StatusCode::ACCEPTED => Ok(MountOutcome::Upload(self.session_from(&resp, 0).await?)),
            _ => Err(self.host.status_error(&op, resp).await),
        }
    }

    /// Sends one chunk at the session's offset (`PATCH` with
    /// `Content-Range`), and moves the session on.
    pub async fn upload_chunk(&self, session: &mut UploadSession, chunk: Bytes) -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let op = self.upload_op(None, "PATCH upload chunk", self.push_scope());
        let start = session.offset;
        let end = start + chunk.len() as u64 - 1;
        let url = session.location.clone();
        let resp = self
            .host
            .send(&op, &|http| {
                Ok(http
                    .patch(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, format!("{start}-{end}"))
                    .header(CONTENT_LENGTH, chunk.len())
                    .body(chunk.clone()))
            })
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.host.status_error(&op, resp).await);
        }
        *session = self.session_from(&resp, end + 1).await?;
        Ok(())
    }

    /// Asks how many bytes an upload session holds (`GET` on the session),
    /// so an interrupted upload continues where the registry stands.
    pub async fn upload_status(&self, session: &mut UploadSession) -> Result<u64> {
        let op = Operation {
            resend_after_transport_error: true,
            ..self.session_op(None, "GET upload status")
        };
        let url = session.location.clone();
        let resp = self
            .host
            .send(&op, &|http| Ok(http.get(url.clone())))
            .await?;
        if resp.status() != StatusCode::NO_CONTENT && !resp.status().is_success() {
            return Err(self.host.status_error(&op, resp).await);
        }
        let offset = header_str(resp.headers(), RANGE.as_str())
            .and_then(|r| parse_range_end(&r))
            .unwrap_or(0);
        let mut updated = self
            .session_from(&resp, offset)
            .await
            .unwrap_or(UploadSession {
                location: session.location.clone(),
                offset,
            });
        updated.offset = offset;
        *session = updated;
        Ok(offset)
    }

    /// Completes a session (`PUT ...?digest=`), optionally with a last
    /// body; the registry checks the digest of everything received.
    pub async fn finish_upload(
        &self,
        session: UploadSession,
        digest: &Digest,
        body: Option<Body>,
    ) -> Result<()> {
        let op = self.session_op(Some(digest), "PUT upload");
        let mut url = session.location.clone();
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        // A streaming body can be sent once only.
        let body = Mutex::new(body);
        let resp = self
            .host
            .send(&op, &|http| {
                let req = http
                    .put(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream");
                match body.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    Some(b) => Ok(req.body(b)),
                    None => Ok(req.header(CONTENT_LENGTH, 0)),
                }
            })
            .await?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(self.host.status_error(&op, resp).await);
        }
        Ok(())
    }

    /// Abandons a session (`DELETE` on it), so the registry frees it.
    pub async fn cancel_upload(&self, session: UploadSession) -> Result<()> {
        let op = self.upload_op(None, "cancel upload", self.push_scope());
        let url = session.location;
        let resp = self
            .host
            .send(&op, &|http| Ok(http.delete(url.clone())))
            .await?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(self.host.status_error(&op, resp).await)
        }
    }

    /// Uploads a whole blob in one request: `POST` for a session, then one
    /// `PUT` streaming `size` bytes from the source. A failed attempt is
    /// retried per the client's retry policy, resumed as
    /// [`Repository::upload_resumable`] resumes.
    pub async fn upload_monolithic(
        &self,
        digest: &Digest,
        size: u64,
        source: &dyn BlobSource,
    ) -> Result<()> {
        self.upload_with_retries(ResumableUpload::new(), digest, size, source, None)
            .await
    }

    /// Uploads a blob of unknown length: one `PATCH` streaming everything,
    /// then the closing `PUT`. Cannot be retried midway (the stream is
    /// consumed); the session is cancelled on failure.
    pub async fn upload_streamed(&self, digest: &Digest, stream: ByteStream) -> Result<()> {
        let mut session = self.start_upload().await?;
        let op = Operation {
            resendable: false,
            resend_after_transport_error: false,
            ..self.upload_op(Some(digest), "PATCH streamed blob", self.push_scope())
        };
        let url = session.location.clone();
        let body = Mutex::new(Some(Body::wrap_stream(stream)));
        let result = self
            .host
            .send(&op, &|http| {
                let body = body
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .ok_or_else(|| Error::Config("a streamed blob cannot be sent twice".into()))?;
                Ok(http
                    .patch(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(body))
            })
            .await;
        let resp = match result {
            Ok(r) if r.status() == StatusCode::ACCEPTED => r,
            Ok(r) => {
                let err = self.host.status_error(&op, r).await;
                let _ = self.cancel_upload(session).await;
                return Err(err);
            }
            Err(e) => {
                let _ = self.cancel_upload(session).await;
                return Err(e);
            }
        };
        session = self.session_from(&resp, 0).await?;
        self.finish_upload(session, digest, None).await
    }

    /// Uploads a blob in chunks of `chunk_size` bytes. A failed attempt is
    /// retried per the client's retry policy, going on from the offset the
    /// registry holds (or from zero in a fresh session when the registry
    /// dropped the old one). Memory use is one read buffer.
    pub async fn upload_chunked(
        &self,
        digest: &Digest,
        size: u64,
        source: &dyn BlobSource,
        chunk_size: usize,
    ) -> Result<()> {
        self.upload_with_retries(
            ResumableUpload::new(),
            digest,
            size,
            source,
            Some(chunk_size as u64),
        )
        .await
    }

    /// Continues a chunked upload on an existing session (one opened by
    /// [`Repository::start_upload`] or a mount that fell back), from the
    /// offset the registry reports for it; retried like
    /// [`Repository::upload_chunked`].
    pub async fn continue_chunked(
        &self,
        session: UploadSession,
        digest: &Digest,
        size: u64,
        source: &dyn BlobSource,
        chunk_size: usize,
    ) -> Result<()> {
        let upload = ResumableUpload::new();
        upload.offer(session);
        self.upload_with_retries(upload, digest, size, source, Some(chunk_size as u64))
            .await
    }

    async fn upload_with_retries(
        &self,
        upload: ResumableUpload,
        digest: &Digest,
        size: u64,
        source: &dyn BlobSource,
        chunk_size: Option<u64>,
    ) -> Result<()> {
        let retry = &self.client.config().retry;
        let mut attempt = 1;
        loop {
            match self
                .upload_resumable(&upload, digest, size, source, chunk_size)
                .await
            {
                Ok(()) => return Ok(()),
                // A session lost at its closing PUT may have made the blob.
                Err(Error::UploadSessionLost { .. })
                    if self.head_blob(digest).await.ok().flatten() == Some(size) =>
                {
                    return Ok(())
                }
                Err(e) if e.is_retryable() && attempt < retry.max_attempts => {
                    tracing::debug!(
                        "upload of {digest} to {}/{} (attempt {attempt}): {e}; resuming",
                        self.registry(),
                        self.name()
                    );
                    tokio::time::sleep(retry.delay(attempt, None)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt at uploading blob `digest` (`size` bytes of `source`),
    /// continuing what earlier attempts on `upload` achieved:
    ///
    /// - a session an earlier attempt left (or one offered) is asked for its
    ///   offset (`GET` on it); the upload goes on from there when the
    ///   registry still holds it, and starts over in a fresh session when
    ///   the registry says it is gone (`BLOB_UPLOAD_UNKNOWN`,
    ///   `BLOB_UPLOAD_INVALID`, 404), as the distribution registry does
    ///   after any request on the session broke midway;
    /// - with `chunk_size`, the bytes go in `PATCH`es of that size, each
    ///   recorded in `upload` as the registry takes it, then an empty
    ///   closing `PUT`; without, in the closing `PUT` itself.
    ///
    /// A request cut midway is never sent again on the same session within
    /// the attempt: the error is returned (retryable) and the next attempt
    /// asks the registry where it stands. A 5xx or 429 answer leaves the
    /// session where it was, so that request alone is sent again. On a
    /// failure that retrying cannot mend the session is cancelled.
    pub async fn upload_resumable(
        &self,
        upload: &ResumableUpload,
        digest: &Digest,
        size: u64,
        source: &dyn BlobSource,
        chunk_size: Option<u64>,
    ) -> Result<()> {
        let mut session = match self.resume_session(upload, size).await? {
            Some(session) => session,
            None => self.start_upload().await?,
        };
        upload.put(Some(session.clone()));
        let result = self
            .send_rest(upload, &mut session, digest, size, source, chunk_size)
            .await;
        match result {
            Ok(()) => {
                upload.put(None);
                Ok(())
            }
            Err(e @ Error::UploadSessionLost { .. }) => {
                upload.put(None);
                Err(e)
            }
            Err(e) if e.is_retryable() => Err(e),
            Err(e) => {
                let session = upload.take();
                upload.put(None);
                if let Some(session) = session {
                    let _ = self.cancel_upload(session).await;
                }
                Err(e)
            }
        }
    }

    /// The session of an earlier attempt, at the offset the registry holds,
    /// if the registry still has it.
    async fn resume_session(
        &self,
        upload: &ResumableUpload,
        size: u64,
    ) -> Result<Option<UploadSession>> {
        let Some(mut session) = upload.take() else {
            return Ok(None);
        };
        match self.upload_status(&mut session).await {
            Ok(held) if held <= size => {
                tracing::debug!(
                    "{}/{}: upload session holds {held} of {size} bytes; going on from there",
                    self.registry(),
                    self.name()
                );
                Ok(Some(session))
            }
            Ok(_) => {
                let _ = self.cancel_upload(session).await;
                Ok(None)
            }
            Err(Error::UploadSessionLost { .. }) => {
                tracing::debug!(
                    "{}/{}: the registry dropped the upload session; starting a fresh one",
                    self.registry(),
                    self.name()
                );
                Ok(None)
            }
            Err(e) => {
                upload.put(Some(session));
                Err(e)
            }
        }
    }

    async fn send_rest(
        &self,
        upload: &ResumableUpload,
        session: &mut UploadSession,
        digest: &Digest,
        size: u64,
        source: &dyn BlobSource,
        chunk_size: Option<u64>,
    ) -> Result<()> {
        let Some(chunk_size) = chunk_size else {
            return self.put_rest(session, digest, size, source).await;
        };
        let chunk_size = chunk_size.max(1);
        while session.offset < size {
            let length = chunk_size.min(size - session.offset);
            self.upload_chunk_from(session, source, length, digest)
                .await?;
            upload.put(Some(session.clone()));
        }
        self.finish_upload(session.clone(), digest, None).await
    }

    /// The closing `PUT` carrying every byte from the session's offset on.
    async fn put_rest(
        &self,
        session: &UploadSession,
        digest: &Digest,
        size: u64,
        source: &dyn BlobSource,
    ) -> Result<()> {
        let op = self.session_op(Some(digest), "PUT blob");
        let start = session.offset.min(size);
        let mut url = session.location.clone();
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        let resp = self
            .host
            .send(&op, &|http| {
                Ok(http
                    .put(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size - start)
                    .body(streamed_body(source, digest, start, size - start)?))
            })
            .await?;
        if resp.status() == StatusCode::CREATED || resp.status().is_success() {
            Ok(())
        } else {
            Err(self.host.status_error(&op, resp).await)
        }
    }

    /// A request carrying bytes of (or asking about) an upload session: a
    /// 404 means the session is gone; a cut connection is not followed by
    /// the same request (see [`Repository::upload_resumable`]).
    fn session_op(&self, digest: Option<&Digest>, action: &str) -> Operation {
        Operation {
            subject: Subject::UploadSession {
                repository: self.name.clone(),
                digest: digest.map(Digest::to_string).unwrap_or_default(),
            },
            action: action.to_string(),
            scopes: self.push_scope(),
            resendable: true,
            resend_after_transport_error: false,
        }
    }

    /// Sends the next `length` bytes of `source` (from the session's
    /// offset) as one chunk, streamed from the source, never held whole in
    /// memory: chunks can be large, so a big blob costs few round trips
    /// and still resumes at a chunk boundary.
    async fn upload_chunk_from(
        &self,
        session: &mut UploadSession,
        source: &dyn BlobSource,
        length: u64,
        digest: &Digest,
    ) -> Result<()> {
        let op = self.session_op(Some(digest), "PATCH upload chunk");
        let start = session.offset;
        let end = start + length - 1;
        let url = session.location.clone();
        let resp = self
            .host
            .send(&op, &|http| {
                Ok(http
                    .patch(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_RANGE, format!("{start}-{end}"))
                    .header(CONTENT_LENGTH, length)
                    .body(streamed_body(source, digest, start, length)?))
            })
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.host.status_error(&op, resp).await);
        }
        *session = self.session_from(&resp, end + 1).await?;
        Ok(())
    }
}

/// A request body of `length` bytes of `source` from `start`, streamed
/// (opened anew for each send, so a retried request starts over).
fn streamed_body(
    source: &dyn BlobSource,
    digest: &Digest,
    start: u64,
    length: u64,
) -> Result<Body> {
    let reader = source.open(start).map_err(|e| Error::Io {
        path: format!("blob {digest}"),
        source: e,
    })?;
    Ok(Body::wrap_stream(tokio_util_reader_stream(Box::pin(
        reader.take(length),
    ))))
}

/// `Range: 0-N` (or `bytes=0-N`) of an upload session -> N+1 bytes held.
///
/// The distribution registry answers `0-0` both for an empty session and for
/// one holding one byte; that answer gives `None` so callers use what they
/// know instead.
fn parse_range_end(value: &str) -> Option<u64> {
    let v = value.trim().trim_start_matches("bytes=");
    let (_, end) = v.split_once('-')?;
    match end.trim().parse::<u64>().ok()? {
        0 => None,
        end => end.checked_add(1),
    }
}

fn tokio_util_reader_stream(
    reader: Pin<Box<dyn AsyncRead + Send>>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::try_unfold(reader, |mut reader| async move {
        let mut buf = BytesMut::with_capacity(256 * 1024);
        let n = reader.read_buf(&mut buf).await?;
        Ok((n > 0).then(|| (buf.freeze(), reader)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {

        #[test]
        fn session_ranges_never_panic(value in "\\PC{0,40}") {
            let _ = parse_range_end(&value);
        }

        #[test]
        fn session_ranges_of_any_numbers_give_end_plus_one(
            start: u64,
            end in proptest::prop_oneof![proptest::prelude::any::<u64>(), u64::MAX - 2..=u64::MAX],
            unit: bool,
        ) {
            let text = format!("{}{start}-{end}", if unit { "bytes=" } else { "" });
            let expected = if end == 0 { None } else { end.checked_add(1) };
            proptest::prop_assert_eq!(parse_range_end(&text), expected);
        }
    }

    #[test]
    fn a_range_ending_at_the_largest_offset_does_not_overflow() {
        // Found while writing session_ranges_of_any_numbers_give_end_plus_one
        // (which now tries the largest values too): `end + 1` panicked in
        // debug builds and wrapped to 0 in release ones.
        assert_eq!(parse_range_end("0-18446744073709551615"), None);
    }

    #[test]
    fn session_ranges_give_bytes_held() {
        assert_eq!(parse_range_end("0-99"), Some(100));
        assert_eq!(parse_range_end("bytes=0-1"), Some(2));
        assert_eq!(parse_range_end("0-0"), None);
        assert_eq!(parse_range_end("0--1"), None);
        assert_eq!(parse_range_end("junk"), None);
    }
}
