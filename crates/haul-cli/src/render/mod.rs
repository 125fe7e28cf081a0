//! Showing transfer progress: turns [`Progress`] records into terminal
//! output the way `docker pull` / `docker push` show them.
//!
//! # Model
//!
//! The transfer managers write records into a
//! [`ChannelOutput`](haul_dist::xfer::ChannelOutput); one rendering task
//! reads the other end of that unbounded channel and writes to stdout. The
//! channel never blocks the senders, so a slow terminal delays only the
//! output, never a transfer. Rendering ends when every sender is dropped
//! (the channel closes), after the last record is written and flushed.
//!
//! A record is either a message line ([`Progress::message`] set, `id` empty
//! or e.g. a tag) or a status for an id (a layer's short id) with optional
//! byte counts. How they look depends on the [`RenderKind`]:
//!
//! - [`RenderKind::Tty`]: Docker's live view. Messages print as lines
//!   (`ID: message`, or `message` when the id is empty); each id gets one
//!   line, `ID: Action [=====>     ]  12.3MB/40.5MB (8.1MB/s)`, rewritten in
//!   place with cursor movement as new records come; lines stay in the order
//!   their ids first appeared. See [`tty`] for the details.
//! - [`RenderKind::Plain`]: for logs and pipes, no control codes. A line per
//!   state change of an id, messages as lines, and a periodic
//!   `ID: Downloading 12.3MB/40.5MB (8.1MB/s)` line for an id moving bytes,
//!   at most once per [`DEFAULT_INTERVAL`] (configurable). A retry countdown
//!   prints its first step only. See [`plain`] for the exact rules.
//! - [`RenderKind::Json`]: one object per record per line, in Docker's JSON
//!   message format (`status`, `progressDetail`, `progress`, `id`).
//! - [`RenderKind::Quiet`] (`-q`): nothing; the command prints its result
//!   itself.
//!
//! Sizes are Docker's (`units.HumanSize`: base 1000, `kB`/`MB`/`GB`, at
//! most 4 significant digits, so `12.3MB`, `27.14MB`); see [`units`].
//!
//! # Example
//!
//! ```ignore
//! let (output, records) = haul_dist::xfer::ChannelOutput::new();
//! let kind = render::choose(cli.global.progress, cli.global.quiet, stdout().is_terminal());
//! let shown = tokio::task::spawn_blocking(move || render::render_blocking(kind, records, stdout()));
//! // ... run the pull with `output` (drop every clone of it when done) ...
//! shown.await??; // a closed stdout (`| head`) is an io error here
//! ```

#![allow(dead_code)] // wired into pull/push by the lead

pub(crate) mod json;
pub(crate) mod plain;
pub(crate) mod rate;
pub(crate) mod tty;
pub(crate) mod units;
pub(crate) mod wording;

use std::io::{self, Write};
use std::time::{Duration, Instant};

use haul_dist::xfer::Progress;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::cli::ProgressMode;

/// How often, at most, plain output prints a bytes line for a moving id.
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// The way progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RenderKind {
    /// Nothing at all (`-q`).
    Quiet,
    /// Live lines rewritten in place, for a terminal.
    Tty,
    /// A line per change, no control codes.
    Plain,
    /// One Docker JSON message per line.
    Json,
}

/// The [`RenderKind`] for `--progress MODE` and `-q`: `-q` wins over any
/// mode; `auto` is [`RenderKind::Tty`] when stdout is a terminal, else
/// [`RenderKind::Plain`]; an explicit mode is taken as it is.
pub(crate) fn choose(mode: ProgressMode, quiet: bool, stdout_is_terminal: bool) -> RenderKind {
    match mode {
        _ if quiet => RenderKind::Quiet,
        ProgressMode::Auto if stdout_is_terminal => RenderKind::Tty,
        ProgressMode::Auto => RenderKind::Plain,
        ProgressMode::Tty => RenderKind::Tty,
        ProgressMode::Plain => RenderKind::Plain,
        ProgressMode::Json => RenderKind::Json,
    }
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TerminalSize {
    pub columns: usize,
    pub rows: usize,
}

/// Per-kind state.
#[derive(Debug)]
enum State {
    Quiet,
    Tty(tty::Screen),
    Plain(plain::Log),
    Json,
}

/// Writes records to `W` in one [`RenderKind`].
///
/// Feed it with [`handle`](Self::handle) (or [`handle_at`](Self::handle_at),
/// which takes the time of the record, for tests), then call
/// [`finish`](Self::finish); or let [`run`](Self::run) /
/// [`run_blocking`](Self::run_blocking) drain a channel. Each record's output
/// is written with one `write_all`; flushing is up to the caller (the `run`
/// methods flush after each batch of records).
#[derive(Debug)]
pub(crate) struct Renderer<W: Write> {
    out: W,
    state: State,
}

impl<W: Write> Renderer<W> {
    /// A renderer of `kind` writing to `out`. Tty output asks stdout's
    /// terminal for its size at every record; plain output uses
    /// [`DEFAULT_INTERVAL`].
    pub(crate) fn new(kind: RenderKind, out: W) -> Self {
        let state = match kind {
            RenderKind::Quiet => State::Quiet,
            RenderKind::Tty => State::Tty(tty::Screen::new(tty::SizeSource::Stdout)),
            RenderKind::Plain => State::Plain(plain::Log::new(DEFAULT_INTERVAL)),
            RenderKind::Json => State::Json,
        };
        Renderer { out, state }
    }

    /// Sets how often, at most, plain output prints a bytes line per id.
    /// No effect on other kinds.
    pub(crate) fn with_interval(mut self, every: Duration) -> Self {
        if let State::Plain(log) = &mut self.state {
            log.set_interval(every);
        }
        self
    }

    /// Fixes the terminal size tty output assumes instead of asking stdout
    /// (`None`: unknown, no wrapping assumed). No effect on other kinds.
    pub(crate) fn with_terminal_size(mut self, size: Option<TerminalSize>) -> Self {
        if let State::Tty(screen) = &mut self.state {
            screen.set_size(tty::SizeSource::Fixed(size));
        }
        self
    }

    /// Shows one record, timed now.
    pub(crate) fn handle(&mut self, progress: &Progress) -> io::Result<()> {
        self.handle_at(progress, Instant::now())
    }

    /// Shows one record that came at `now` (speeds and the plain interval
    /// are measured with these times).
    pub(crate) fn handle_at(&mut self, progress: &Progress, now: Instant) -> io::Result<()> {
        let text = match &mut self.state {
            State::Quiet => None,
            State::Tty(screen) => Some(screen.render(progress, now)),
            State::Plain(log) => log.render(progress, now),
            State::Json => Some(json::render(progress)),
        };
        match text {
            Some(text) => self.out.write_all(text.as_bytes()),
            None => Ok(()),
        }
    }

    /// Flushes the writer.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flushes and hands back the writer. The cursor is already below all
    /// output, at the start of a line, so nothing else needs writing.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }

    /// Shows every record of `receiver` until the channel closes, flushing
    /// after each batch of records that were waiting; then [`finish`](Self::finish)es.
    ///
    /// Writes happen on the calling task; for stdout, prefer
    /// [`run_blocking`](Self::run_blocking) on a blocking thread, so that a
    /// stalled terminal never holds a runtime worker. On a write error it
    /// returns at once, dropping the receiver: later records are discarded
    /// by the senders, and transfers go on.
    pub(crate) async fn run(mut self, mut receiver: UnboundedReceiver<Progress>) -> io::Result<W> {
        while let Some(progress) = receiver.recv().await {
            self.handle(&progress)?;
            while let Ok(progress) = receiver.try_recv() {
                self.handle(&progress)?;
            }
            self.flush()?;
        }
        self.finish()
    }

    /// [`run`](Self::run) for a thread that may block (e.g. inside
    /// `tokio::task::spawn_blocking`). Panics if called from an async
    /// context.
    pub(crate) fn run_blocking(
        mut self,
        mut receiver: UnboundedReceiver<Progress>,
    ) -> io::Result<W> {
        while let Some(progress) = receiver.blocking_recv() {
            self.handle(&progress)?;
            while let Ok(progress) = receiver.try_recv() {
                self.handle(&progress)?;
            }
            self.flush()?;
        }
        self.finish()
    }
}

/// Renders every record of `receiver` to `writer` in `kind` until the
/// channel closes; see [`Renderer::run`].
pub(crate) async fn render(
    kind: RenderKind,
    receiver: UnboundedReceiver<Progress>,
    writer: impl Write + Send,
) -> io::Result<()> {
    Renderer::new(kind, writer).run(receiver).await.map(drop)
}

/// Renders every record of `receiver` to `writer` in `kind` until the
/// channel closes, blocking the calling thread; see [`Renderer::run_blocking`].
pub(crate) fn render_blocking(
    kind: RenderKind,
    receiver: UnboundedReceiver<Progress>,
    writer: impl Write,
) -> io::Result<()> {
    Renderer::new(kind, writer).run_blocking(receiver).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use haul_dist::xfer::{ChannelOutput, Counts, Message, ProgressOutput, Status};
    use serde_json::Value;

    const LAYER: &str = "68e2c75dc5c7";

    /// A short pull of one new and one present layer, with times in ms.
    fn short_pull() -> Vec<(u64, Progress)> {
        vec![
            (
                0,
                Progress::message(
                    "1.0",
                    Message::PullingFrom {
                        repository: "library/app".into(),
                    },
                ),
            ),
            (0, Progress::status("0123456789ab", Status::AlreadyExists)),
            (0, Progress::status(LAYER, Status::PullingFsLayer)),
            (
                100,
                Progress::status(LAYER, Status::Downloading(Counts::of(0, 40_500_000))),
            ),
            (
                6_000,
                Progress::status(
                    LAYER,
                    Status::Downloading(Counts::of(12_300_000, 40_500_000)),
                ),
            ),
            (
                12_000,
                Progress::status(
                    LAYER,
                    Status::Downloading(Counts::of(40_500_000, 40_500_000)),
                ),
            ),
            (12_010, Progress::status(LAYER, Status::VerifyingChecksum)),
            (12_020, Progress::status(LAYER, Status::DownloadComplete)),
            (
                12_100,
                Progress::status(
                    LAYER,
                    Status::Extracting(Counts::of(40_500_000, 40_500_000)),
                ),
            ),
            (12_200, Progress::status(LAYER, Status::PullComplete)),
            (
                12_300,
                Progress::message(
                    "",
                    Message::Digest {
                        digest: "sha256:0123".into(),
                    },
                ),
            ),
            (
                12_300,
                Progress::message(
                    "",
                    Message::PullFinished {
                        reference: "127.0.0.1:5000/library/app:1.0".into(),
                        up_to_date: false,
                    },
                ),
            ),
        ]
    }

    fn render_short_pull(renderer: Renderer<Vec<u8>>) -> String {
        let t0 = Instant::now();
        let mut renderer = renderer;
        for (ms, p) in short_pull() {
            renderer
                .handle_at(&p, t0 + Duration::from_millis(ms))
                .unwrap();
        }
        String::from_utf8(renderer.finish().unwrap()).unwrap()
    }

    #[test]
    fn quiet_wins_and_auto_follows_the_terminal() {
        assert_eq!(choose(ProgressMode::Json, true, true), RenderKind::Quiet);
        assert_eq!(choose(ProgressMode::Auto, false, true), RenderKind::Tty);
        assert_eq!(choose(ProgressMode::Auto, false, false), RenderKind::Plain);
        assert_eq!(choose(ProgressMode::Tty, false, false), RenderKind::Tty);
        assert_eq!(choose(ProgressMode::Plain, false, true), RenderKind::Plain);
        assert_eq!(choose(ProgressMode::Json, false, true), RenderKind::Json);
    }

    #[test]
    fn quiet_prints_nothing() {
        assert_eq!(
            render_short_pull(Renderer::new(RenderKind::Quiet, Vec::new())),
            ""
        );
    }

    #[test]
    fn plain_short_pull_reads_like_a_log() {
        let output = render_short_pull(Renderer::new(RenderKind::Plain, Vec::new()));
        assert_eq!(
            output,
            "1.0: Pulling from library/app\n\
             0123456789ab: Already exists\n\
             68e2c75dc5c7: Pulling fs layer\n\
             68e2c75dc5c7: Downloading 0B/40.5MB\n\
             68e2c75dc5c7: Downloading 12.3MB/40.5MB (2.085MB/s)\n\
             68e2c75dc5c7: Downloading 40.5MB/40.5MB (4.7MB/s)\n\
             68e2c75dc5c7: Verifying Checksum\n\
             68e2c75dc5c7: Download complete\n\
             68e2c75dc5c7: Extracting 40.5MB/40.5MB\n\
             68e2c75dc5c7: Pull complete\n\
             Digest: sha256:0123\n\
             Status: Downloaded newer image for 127.0.0.1:5000/library/app:1.0\n"
        );
        assert!(!output.contains('\x1b'), "no escape bytes in plain output");
    }

    #[test]
    fn json_short_pull_is_one_docker_message_per_record() {
        let output = render_short_pull(Renderer::new(RenderKind::Json, Vec::new()));
        let lines: Vec<Value> = output
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
            .collect();
        assert_eq!(lines.len(), short_pull().len());
        assert_eq!(
            lines[0],
            serde_json::json!({"status": "Pulling from library/app", "id": "1.0"})
        );
        assert_eq!(
            lines[1],
            serde_json::json!({"status": "Already exists", "progressDetail": {}, "id": "0123456789ab"})
        );
        assert_eq!(lines[4]["status"], "Downloading");
        assert_eq!(
            lines[4]["progressDetail"],
            serde_json::json!({"current": 12_300_000, "total": 40_500_000})
        );
        assert_eq!(
            lines[4]["progress"],
            "[===============>                                   ]   12.3MB/40.5MB"
        );
        assert_eq!(
            lines[10],
            serde_json::json!({"status": "Digest: sha256:0123"})
        );
    }

    #[test]
    fn tty_short_pull_ends_with_one_line_per_id() {
        let output = render_short_pull(
            Renderer::new(RenderKind::Tty, Vec::new()).with_terminal_size(Some(TerminalSize {
                columns: 120,
                rows: 40,
            })),
        );
        assert_eq!(
            tty::tests::replay(&output),
            [
                "1.0: Pulling from library/app",
                "0123456789ab: Already exists",
                "68e2c75dc5c7: Pull complete",
                "Digest: sha256:0123",
                "Status: Downloaded newer image for 127.0.0.1:5000/library/app:1.0",
                "",
            ]
        );
    }

    #[tokio::test]
    async fn run_renders_until_every_sender_is_gone() {
        let (output, records) = ChannelOutput::new();
        output.message(
            "1.0",
            Message::PullingFrom {
                repository: "library/app".into(),
            },
        );
        output.status(LAYER, Status::PullingFsLayer);
        output.status(LAYER, Status::PullingFsLayer);
        let late = output.clone();
        drop(output);
        let running = tokio::spawn(Renderer::new(RenderKind::Plain, Vec::new()).run(records));
        tokio::task::yield_now().await;
        late.status(LAYER, Status::PullComplete);
        drop(late);
        let written = running.await.unwrap().unwrap();
        assert_eq!(
            String::from_utf8(written).unwrap(),
            "1.0: Pulling from library/app\n\
             68e2c75dc5c7: Pulling fs layer\n\
             68e2c75dc5c7: Pull complete\n"
        );
    }

    #[tokio::test]
    async fn render_blocking_works_on_a_blocking_thread() {
        let (output, records) = ChannelOutput::new();
        output.message(
            "",
            Message::Digest {
                digest: "sha256:0123".into(),
            },
        );
        drop(output);
        let written = tokio::task::spawn_blocking(move || {
            Renderer::new(RenderKind::Json, Vec::new()).run_blocking(records)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(written, b"{\"status\":\"Digest: sha256:0123\"}\n");
    }

    #[tokio::test]
    async fn a_failing_writer_stops_rendering_without_blocking_senders() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (output, records) = ChannelOutput::new();
        output.status(LAYER, Status::Waiting);
        let err = render(RenderKind::Plain, records, Broken)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        output.status(LAYER, Status::PullComplete); // dropped, not blocked
    }
}
