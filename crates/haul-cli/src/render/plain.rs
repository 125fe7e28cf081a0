//! Line-per-change output for logs and pipes: no control codes at all.
//!
//! Rules, chosen to read well in a CI log:
//! - a message prints as `ID: message` (or `message` when the id is empty);
//! - a status prints as `ID: Action` when the id's stage changes, with its
//!   counts when it has some (`ID: Downloading 0B/40.5MB`);
//! - a status repeating the id's stage (a counts-only update) prints
//!   nothing, except a periodic line when at least the interval has passed
//!   since the id's last line and its count moved since then:
//!   `ID: Downloading 12.3MB/40.5MB (2.46MB/s)`, the speed being the average
//!   since that last line;
//! - a `Retrying in N seconds` countdown prints its first step only
//!   (`ID: Retrying in 5 seconds`); the next status after it prints again,
//!   and so does the first step of the next countdown (a failed attempt
//!   right after a countdown starts a longer one: `Retrying in 10 seconds`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use haul_dist::xfer::{Event, Progress, Status};

use super::tty::with_id;
use super::units::{counts_text, human_rate};
use super::wording::{message_text, status_text};

/// What the log last said about one id.
#[derive(Debug)]
struct Shown {
    status: Status,
    /// When the id's last line was printed and its count then.
    at: Instant,
    current: u64,
}

/// Plain renderer state.
#[derive(Debug)]
pub(crate) struct Log {
    every: Duration,
    ids: HashMap<String, Shown>,
}

impl Log {
    /// A log printing periodic byte lines at most once per `every` per id.
    pub(crate) fn new(every: Duration) -> Self {
        Log {
            every,
            ids: HashMap::new(),
        }
    }

    pub(crate) fn set_interval(&mut self, every: Duration) {
        self.every = every;
    }

    /// The line (with its newline) that shows `progress` at `now`, if any.
    pub(crate) fn render(&mut self, progress: &Progress, now: Instant) -> Option<String> {
        let status = match &progress.event {
            Event::Message(message) => return Some(line(&progress.id, &message_text(message))),
            Event::Status(status) => status,
        };
        let action = status_text(status);
        let counted = status.counts();
        let current = counted.map_or(0, |c| c.current);
        let counts = counted.and_then(|c| counts_text(Some(c.current), c.total));
        let Some(shown) = self.ids.get_mut(&progress.id) else {
            self.ids.insert(
                progress.id.clone(),
                Shown {
                    status: status.clone(),
                    at: now,
                    current,
                },
            );
            return Some(status_line(&progress.id, &action, counts.as_deref()));
        };
        if !shown.status.same_stage(status) {
            let countdown_goes_on = matches!(
                (&shown.status, status),
                (Status::Retrying { seconds: before }, Status::Retrying { seconds: now }) if now < before
            );
            *shown = Shown {
                status: status.clone(),
                at: now,
                current,
            };
            return (!countdown_goes_on)
                .then(|| status_line(&progress.id, &action, counts.as_deref()));
        }
        // The same stage again: only the periodic line, if due and moving.
        let elapsed = now.saturating_duration_since(shown.at);
        if counted.is_none() || current == shown.current || elapsed < self.every {
            return None;
        }
        let mut text = counts.unwrap_or_default();
        if current > shown.current && !elapsed.is_zero() {
            let speed = (current - shown.current) as f64 / elapsed.as_secs_f64();
            text.push_str(&format!(" ({})", human_rate(speed)));
        }
        shown.at = now;
        shown.current = current;
        Some(status_line(&progress.id, &action, Some(&text)))
    }
}

fn status_line(id: &str, action: &str, counts: Option<&str>) -> String {
    match counts {
        Some(counts) if !counts.is_empty() => line(id, &format!("{action} {counts}")),
        _ => line(id, action),
    }
}

fn line(id: &str, text: &str) -> String {
    let mut line = with_id(id, text);
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use haul_dist::xfer::{Counts, Message};

    fn run(every: Duration, records: &[(u64, Progress)]) -> String {
        let t0 = Instant::now();
        let mut log = Log::new(every);
        records
            .iter()
            .filter_map(|(ms, p)| log.render(p, t0 + Duration::from_millis(*ms)))
            .collect()
    }

    const ID: &str = "68e2c75dc5c7";

    #[test]
    fn a_pull_prints_each_state_change_once_and_no_control_codes() {
        let output = run(
            Duration::from_secs(5),
            &[
                (
                    0,
                    Progress::message(
                        "1.0",
                        Message::PullingFrom {
                            repository: "library/app".into(),
                        },
                    ),
                ),
                (0, Progress::status(ID, Status::PullingFsLayer)),
                (0, Progress::status(ID, Status::PullingFsLayer)),
                (0, Progress::status("0123456789ab", Status::AlreadyExists)),
                (10, Progress::status(ID, Status::Waiting)),
                (
                    20,
                    Progress::status(ID, Status::Downloading(Counts::of(0, 40_500_000))),
                ),
                (
                    120,
                    Progress::status(ID, Status::Downloading(Counts::of(1_000_000, 40_500_000))),
                ),
                (
                    220,
                    Progress::status(ID, Status::Downloading(Counts::of(40_500_000, 40_500_000))),
                ),
                (230, Progress::status(ID, Status::VerifyingChecksum)),
                (240, Progress::status(ID, Status::DownloadComplete)),
                (
                    250,
                    Progress::status(ID, Status::Extracting(Counts::of(32_768, 40_500_000))),
                ),
                (
                    350,
                    Progress::status(ID, Status::Extracting(Counts::of(40_500_000, 40_500_000))),
                ),
                (360, Progress::status(ID, Status::PullComplete)),
                (
                    400,
                    Progress::message(
                        "",
                        Message::Digest {
                            digest: "sha256:0123".into(),
                        },
                    ),
                ),
                (
                    400,
                    Progress::message(
                        "",
                        Message::PullFinished {
                            reference: "r/app:1.0".into(),
                            up_to_date: false,
                        },
                    ),
                ),
            ],
        );
        assert_eq!(
            output,
            "1.0: Pulling from library/app\n\
             68e2c75dc5c7: Pulling fs layer\n\
             0123456789ab: Already exists\n\
             68e2c75dc5c7: Waiting\n\
             68e2c75dc5c7: Downloading 0B/40.5MB\n\
             68e2c75dc5c7: Verifying Checksum\n\
             68e2c75dc5c7: Download complete\n\
             68e2c75dc5c7: Extracting 32.77kB/40.5MB\n\
             68e2c75dc5c7: Pull complete\n\
             Digest: sha256:0123\n\
             Status: Downloaded newer image for r/app:1.0\n"
        );
        assert!(!output.contains('\x1b') && !output.contains('\r'));
    }

    #[test]
    fn a_long_download_prints_a_bytes_line_with_speed_once_per_interval() {
        let mut records = vec![(
            0,
            Progress::status(ID, Status::Downloading(Counts::of(0, 40_500_000))),
        )];
        // 1 MB every 250 ms for 8 seconds.
        for step in 1..=32u64 {
            records.push((
                step * 250,
                Progress::status(
                    ID,
                    Status::Downloading(Counts::of(step * 1_000_000, 40_500_000)),
                ),
            ));
        }
        let output = run(Duration::from_secs(3), &records);
        assert_eq!(
            output,
            "68e2c75dc5c7: Downloading 0B/40.5MB\n\
             68e2c75dc5c7: Downloading 12MB/40.5MB (4MB/s)\n\
             68e2c75dc5c7: Downloading 24MB/40.5MB (4MB/s)\n"
        );
    }

    #[test]
    fn a_stalled_transfer_prints_no_periodic_line() {
        let output = run(
            Duration::from_secs(1),
            &[
                (
                    0,
                    Progress::status(ID, Status::Pushing(Counts::of(500, 1_000))),
                ),
                (
                    5_000,
                    Progress::status(ID, Status::Pushing(Counts::of(500, 1_000))),
                ),
                (
                    6_000,
                    Progress::status(ID, Status::Pushing(Counts::of(1_000, 1_000))),
                ),
                (6_000, Progress::status(ID, Status::Pushed)),
            ],
        );
        assert_eq!(
            output,
            "68e2c75dc5c7: Pushing 500B/1kB\n\
             68e2c75dc5c7: Pushing 1kB/1kB (83B/s)\n\
             68e2c75dc5c7: Pushed\n"
        );
    }

    #[test]
    fn a_retry_countdown_prints_its_first_step_only() {
        let mut records = vec![(
            0,
            Progress::status(ID, Status::Downloading(Counts::of(10, 100))),
        )];
        for (i, seconds) in (1..=5).rev().enumerate() {
            records.push((
                1_000 * i as u64,
                Progress::status(ID, Status::Retrying { seconds }),
            ));
        }
        records.push((
            5_000,
            Progress::status(ID, Status::Downloading(Counts::of(10, 100))),
        ));
        records.push((5_100, Progress::status(ID, Status::Retrying { seconds: 5 })));
        let output = run(Duration::from_secs(5), &records);
        assert_eq!(
            output,
            "68e2c75dc5c7: Downloading 10B/100B\n\
             68e2c75dc5c7: Retrying in 5 seconds\n\
             68e2c75dc5c7: Downloading 10B/100B\n\
             68e2c75dc5c7: Retrying in 5 seconds\n"
        );
    }

    #[test]
    fn push_messages_and_statuses_read_like_docker() {
        let output = run(
            Duration::from_secs(5),
            &[
                (
                    0,
                    Progress::message(
                        "",
                        Message::PushRefersTo {
                            repository: "127.0.0.1:5000/app".into(),
                        },
                    ),
                ),
                (0, Progress::status(ID, Status::Preparing)),
                (0, Progress::status("0123456789ab", Status::Preparing)),
                (
                    0,
                    Progress::status(
                        "0123456789ab",
                        Status::MountedFrom {
                            repository: "library/base".into(),
                        },
                    ),
                ),
                (0, Progress::status(ID, Status::LayerAlreadyExists)),
                (
                    0,
                    Progress::message(
                        "1.0",
                        Message::ManifestPushed {
                            tag: None,
                            digest: "sha256:0123".into(),
                            size: 1234,
                        },
                    ),
                ),
            ],
        );
        assert_eq!(
            output,
            "The push refers to repository [127.0.0.1:5000/app]\n\
             68e2c75dc5c7: Preparing\n\
             0123456789ab: Preparing\n\
             0123456789ab: Mounted from library/base\n\
             68e2c75dc5c7: Layer already exists\n\
             1.0: digest: sha256:0123 size: 1234\n"
        );
    }
}
