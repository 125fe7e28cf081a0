//! Docker's words for the library's typed progress.
//!
//! The library reports what happened ([`Status`], [`Message`]); this module
//! alone decides how it reads, with the wording `docker pull` and
//! `docker push` use ("Pulling fs layer", "Retrying in 5 seconds",
//! "Status: Downloaded newer image for ..."), so scripts that read Docker's
//! output read haul's.

use std::borrow::Cow;

use haul_dist::xfer::{short_id, Event, Message, Moved, Progress, Status};

/// The text of a status, without its counts: `Downloading`,
/// `Mounted from library/base`, `Retrying in 5 seconds`.
pub(crate) fn status_text(status: &Status) -> Cow<'static, str> {
    let fixed = match status {
        Status::PullingFsLayer => "Pulling fs layer",
        Status::AlreadyExists => "Already exists",
        Status::Waiting => "Waiting",
        Status::Downloading(_) => "Downloading",
        Status::VerifyingChecksum => "Verifying Checksum",
        Status::DownloadComplete => "Download complete",
        Status::Extracting(_) => "Extracting",
        Status::PullComplete => "Pull complete",
        Status::Preparing => "Preparing",
        Status::Pushing(_) | Status::PushingImage => "Pushing",
        Status::Pushed => "Pushed",
        Status::LayerAlreadyExists => "Layer already exists",
        Status::PullingDependentLayers => "Pulling dependent layers",
        Status::PullingMetadata => "Pulling metadata",
        Status::ImageAlreadyPushed => "Image already pushed, skipping",
        Status::ImageSuccessfullyPushed => "Image successfully pushed",
        Status::RateLimitOver => "Rate limit: going on",
        Status::Retrying { seconds: 1 } => "Retrying in 1 second",
        Status::Retrying { seconds } => return format!("Retrying in {seconds} seconds").into(),
        Status::MountedFrom { repository } => return format!("Mounted from {repository}").into(),
        Status::PullingImage { tag, repository } => {
            return format!("Pulling image ({tag}) from {repository}").into()
        }
        Status::RateLimited {
            remaining,
            limit,
            seconds,
        } => {
            return format!("Rate limit: {remaining} of {limit} pulls left, waiting {seconds} s")
                .into()
        }
        other => return format!("{other:?}").into(),
    };
    fixed.into()
}

/// The line of a message, without its id.
pub(crate) fn message_text(message: &Message) -> String {
    match message {
        Message::PullingFrom { repository } => format!("Pulling from {repository}"),
        Message::Digest { digest } => format!("Digest: {digest}"),
        Message::PullFinished {
            reference,
            up_to_date: true,
        } => format!("Status: Image is up to date for {reference}"),
        Message::PullFinished {
            reference,
            up_to_date: false,
        } => format!("Status: Downloaded newer image for {reference}"),
        Message::PushRefersTo { repository } => {
            format!("The push refers to repository [{repository}]")
        }
        Message::ManifestPushed {
            tag: Some(tag),
            digest,
            size,
        } => format!("{tag}: digest: {digest} size: {size}"),
        Message::ManifestPushed {
            tag: None,
            digest,
            size,
        } => format!("digest: {digest} size: {size}"),
        Message::Copying { source, target } => format!("Copying {source} to {target}"),
        Message::Referrer {
            moved,
            digest,
            subject,
        } => format!(
            "{} referrer {digest} of {}",
            moved_text(*moved),
            short_id(subject)
        ),
        Message::AttachedTag { moved, tag } => format!("{} {tag}", moved_text(*moved)),
        Message::UsingV1Protocol { registry } => {
            format!("Using the v1 registry protocol for {registry}")
        }
        Message::PullingRepository { repository } => format!("Pulling repository {repository}"),
        Message::V1PushRefersTo { repository } => {
            format!("The push refers to a repository [{repository}]")
        }
        Message::SendingImageList => "Sending image list".to_string(),
        Message::PushingRepository { repository } => format!("Pushing repository {repository}"),
        Message::V1ImageAlreadyPushed { image } => {
            format!("Image {image} already pushed, skipping")
        }
        Message::PushingTag { image, url } => format!("Pushing tag for rev [{image}] on {{{url}}}"),
        Message::Text(text) => text.clone(),
        other => format!("{other:?}"),
    }
}

fn moved_text(moved: Moved) -> &'static str {
    match moved {
        Moved::Copied => "Copied",
        Moved::Pulled => "Pulled",
        Moved::Pushed => "Pushed",
    }
}

/// A record's text without counts: its message line, or its status.
pub(crate) fn text(progress: &Progress) -> Cow<'static, str> {
    match &progress.event {
        Event::Status(status) => status_text(status),
        Event::Message(message) => message_text(message).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haul_dist::xfer::Counts;

    #[test]
    fn statuses_read_as_docker_writes_them() {
        let cases = [
            (Status::PullingFsLayer, "Pulling fs layer"),
            (Status::Downloading(Counts::of(1, 2)), "Downloading"),
            (Status::VerifyingChecksum, "Verifying Checksum"),
            (Status::Retrying { seconds: 5 }, "Retrying in 5 seconds"),
            (Status::Retrying { seconds: 1 }, "Retrying in 1 second"),
            (
                Status::MountedFrom {
                    repository: "library/base".into(),
                },
                "Mounted from library/base",
            ),
            (Status::LayerAlreadyExists, "Layer already exists"),
        ];
        for (status, want) in cases {
            assert_eq!(status_text(&status), want);
        }
    }

    #[test]
    fn messages_read_as_docker_writes_them() {
        let pulled = Message::PullFinished {
            reference: "r/app:1.0".into(),
            up_to_date: false,
        };
        assert_eq!(
            message_text(&pulled),
            "Status: Downloaded newer image for r/app:1.0"
        );
        let pushed = Message::ManifestPushed {
            tag: Some("1.0".into()),
            digest: "sha256:0123".into(),
            size: 525,
        };
        assert_eq!(message_text(&pushed), "1.0: digest: sha256:0123 size: 525");
        let referrer = Message::Referrer {
            moved: Moved::Copied,
            digest: "sha256:aa".into(),
            subject: "sha256:0123456789abcdef".into(),
        };
        assert_eq!(
            message_text(&referrer),
            "Copied referrer sha256:aa of 0123456789ab"
        );
    }
}
