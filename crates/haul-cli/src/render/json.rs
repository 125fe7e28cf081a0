//! One JSON object per record, in Docker's JSON message format
//! (`pkg/jsonmessage.JSONMessage` as the Docker Engine API streams it).
//!
//! A status becomes `{"status":ACTION,"progressDetail":{...},"progress":TEXT,"id":ID}`
//! and a message `{"status":MESSAGE,"id":ID}`. As in Go's `omitempty`, empty
//! strings and zero counts are left out, so `progressDetail` is `{}` for a
//! status without counts and a message has no `progressDetail` at all.
//! `progress` is the text Docker's daemon puts there (bar for a 200-column
//! terminal, then sizes). Lines end with `\n` (JSON Lines); the Engine API
//! uses `\r\n`.

use serde::Serialize;

use haul_dist::xfer::{Event, Progress};

use super::units::progress_text;
use super::wording;

/// `jsonmessage.JSONMessage`, the fields haul uses, in Docker's order.
#[derive(Debug, Serialize)]
struct JsonMessage<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    status: &'a str,
    #[serde(rename = "progressDetail", skip_serializing_if = "Option::is_none")]
    progress_detail: Option<JsonProgress>,
    #[serde(skip_serializing_if = "String::is_empty")]
    progress: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
}

/// `jsonmessage.JSONProgress`: byte counts, zero ones left out.
#[derive(Debug, Serialize)]
struct JsonProgress {
    #[serde(skip_serializing_if = "is_zero")]
    current: u64,
    #[serde(skip_serializing_if = "is_zero")]
    total: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The JSON line (with its newline) for one record.
pub(crate) fn render(progress: &Progress) -> String {
    let text = wording::text(progress);
    let message = match &progress.event {
        Event::Message(_) => JsonMessage {
            status: &text,
            progress_detail: None,
            progress: String::new(),
            id: &progress.id,
        },
        Event::Status(status) => {
            let counts = status.counts();
            let (current, total) = (counts.map(|c| c.current), counts.and_then(|c| c.total));
            JsonMessage {
                status: &text,
                progress_detail: Some(JsonProgress {
                    current: current.unwrap_or(0),
                    total: total.unwrap_or(0),
                }),
                progress: progress_text(current, total, None),
                id: &progress.id,
            }
        }
    };
    let mut line =
        serde_json::to_string(&message).expect("a struct of strings and numbers serializes");
    line.push('\n');
    line
}

/// The line of a failure, as Docker streams one:
/// `{"errorDetail":{"message":M},"error":M}`.
pub(crate) fn error_line(message: &str) -> String {
    serde_json::json!({"errorDetail": {"message": message}, "error": message}).to_string()
}

/// The final line of a command that succeeded: `aux` holds its result
/// (for push Docker's `Tag`, `Digest` and `Size`), as in
/// `{"progressDetail":{},"aux":{"Tag":"1.0","Digest":"sha256:...","Size":525}}`.
pub(crate) fn result_line(aux: serde_json::Value) -> String {
    serde_json::json!({"progressDetail": {}, "aux": aux}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use haul_dist::xfer::{Counts, Message, Status};
    use serde_json::{json, Value};

    #[test]
    fn statuses_use_docker_field_names_and_order() {
        assert_eq!(
            render(&Progress::status(
                "68e2c75dc5c7",
                Status::Downloading(Counts::of(1, 2))
            )),
            "{\"status\":\"Downloading\",\"progressDetail\":{\"current\":1,\"total\":2},\
             \"progress\":\"[=========================>                         ]       1B/2B\",\
             \"id\":\"68e2c75dc5c7\"}\n"
        );
        assert_eq!(
            render(&Progress::status("68e2c75dc5c7", Status::PullingFsLayer)),
            "{\"status\":\"Pulling fs layer\",\"progressDetail\":{},\"id\":\"68e2c75dc5c7\"}\n"
        );
    }

    #[test]
    fn errors_and_results_are_docker_json_messages() {
        let error: Value = serde_json::from_str(&error_line("failed to pull x: gone")).unwrap();
        assert_eq!(error["error"], "failed to pull x: gone");
        assert_eq!(error["errorDetail"]["message"], "failed to pull x: gone");
        let result: Value = serde_json::from_str(&result_line(
            json!({"Tag": "1", "Digest": "sha256:0", "Size": 5}),
        ))
        .unwrap();
        assert_eq!(result["aux"]["Size"], 5);
        assert_eq!(result["progressDetail"], json!({}));
    }

    #[test]
    fn zero_counts_are_omitted_like_go_omitempty() {
        let line = render(&Progress::status(
            "a",
            Status::Downloading(Counts::of(0, 40_500_000)),
        ));
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["progressDetail"], json!({"total": 40_500_000}));
        assert_eq!(
            value["progress"],
            json!(format!("[>{}]       0B/40.5MB", " ".repeat(50)))
        );
    }

    #[test]
    fn messages_are_a_status_with_an_optional_id() {
        assert_eq!(
            render(&Progress::message(
                "1.0",
                Message::PullingFrom {
                    repository: "library/app".into()
                }
            )),
            "{\"status\":\"Pulling from library/app\",\"id\":\"1.0\"}\n"
        );
        assert_eq!(
            render(&Progress::message(
                "",
                Message::Digest {
                    digest: "sha256:0123".into()
                }
            )),
            "{\"status\":\"Digest: sha256:0123\"}\n"
        );
    }
}
