//! A long chunked upload outlives its token: the registry answers 401 in
//! the middle, the client fetches a new token and goes on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use haul_oci::Digest;
use haul_registry::BlobSource;
use haul_testkit::RegistryConfig;
use tokio::io::{AsyncRead, ReadBuf};

/// A source that serves bytes slowly: each read waits first, so an upload
/// of a few chunks takes longer than a token lives.
struct SlowSource {
    data: Bytes,
    pause: Duration,
}

struct SlowReader {
    data: Bytes,
    sleep: Pin<Box<tokio::time::Sleep>>,
    pause: Duration,
}

impl AsyncRead for SlowReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let n = self.data.len().min(buf.remaining());
        let chunk = self.data.split_to(n);
        buf.put_slice(&chunk);
        let pause = self.pause;
        self.sleep
            .as_mut()
            .reset(tokio::time::Instant::now() + pause);
        Poll::Ready(Ok(()))
    }
}

impl BlobSource for SlowSource {
    fn open(&self, offset: u64) -> std::io::Result<Pin<Box<dyn AsyncRead + Send>>> {
        Ok(Box::pin(SlowReader {
            data: self.data.slice(offset as usize..),
            sleep: Box::pin(tokio::time::sleep(self.pause)),
            pause: self.pause,
        }))
    }
}

#[tokio::test]
async fn chunked_upload_survives_a_token_that_expires_midway() {
    let mut config = RegistryConfig::token().with_token_lifetime(2);
    // The registry refuses the token after 2 s, while the token server
    // announces 300 s: the client keeps using it until the 401 arrives.
    config.token.exact_expiry = true;
    config.token.advertised_lifetime_secs = Some(300);
    let Some(reg) = start(config) else { return };
    let client = client_with_credentials(&reg, config_for(&reg));
    let repo = client.repository(&reg.host(), "slow/upload").unwrap();

    let data = blob(5, 60_000);
    let digest = Digest::sha256_of(&data);
    let source = SlowSource {
        data: data.clone(),
        pause: Duration::from_millis(700),
    };
    repo.upload_chunked(&digest, data.len() as u64, &source, 10_000)
        .await
        .expect("the upload survives the token's expiry");
    assert_eq!(
        collect(&repo, &digest, Some(data.len() as u64))
            .await
            .unwrap(),
        data
    );

    // Tokens are cached for the 300 s announced, so a second token for the
    // same scope can only have been fetched because the registry said 401.
    let push_tokens = reg
        .token_server()
        .unwrap()
        .issued_tokens()
        .into_iter()
        .filter(|t| {
            t.requested_scopes
                .iter()
                .any(|s| s == "repository:slow/upload:pull,push")
        })
        .count();
    assert!(
        push_tokens >= 2,
        "a new token must have been fetched after the 401 (push tokens issued: {push_tokens})"
    );
}
