//! Live output for a terminal: one line per id, rewritten in place.
//!
//! Docker's algorithm (`jsonmessage.DisplayJSONMessagesStream`): the cursor
//! rests at the start of the line below everything printed. A status for a
//! new id prints its line there, which moves the cursor down; a status for an
//! id seen before moves the cursor up to that id's line (`ESC [ n A`), clears
//! it (`ESC [ 2 K`), rewrites it, and moves back down (`ESC [ n B`). Message
//! lines are printed below and never rewritten.
//!
//! Two differences from Docker, both about lines Docker would lose track of:
//! - a message does not make the renderer forget the lines above it, so a
//!   layer of a second image pulled at the same time keeps its line after the
//!   first image's `Digest:` line;
//! - a line that has scrolled off the top of the terminal is never moved to
//!   (the cursor cannot get there and would rewrite the wrong line): its id
//!   gets a new line at the bottom instead.
//!
//! On terminals of 110 columns or fewer there is no bar (as in Docker), and
//! status lines are cut to the width so that none wraps.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use haul_dist::xfer::{Event, Progress, Status};

use super::rate::Rate;
use super::units::{human_rate, progress_text};
use super::wording::{message_text, status_text};
use super::TerminalSize;

/// How far back the shown speed looks.
const SPEED_WINDOW: Duration = Duration::from_secs(3);
/// A speed is shown once a transfer has been timed for this long.
const SPEED_MIN_SPAN: Duration = Duration::from_secs(1);

/// Where the terminal size comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SizeSource {
    /// Asked from the terminal on stdout at every record (it may be resized).
    Stdout,
    /// Fixed (tests); `None` means unknown: no wrapping assumed, and the bar
    /// is shown as if the terminal were 200 columns wide.
    Fixed(Option<TerminalSize>),
}

impl SizeSource {
    fn get(self) -> Option<TerminalSize> {
        match self {
            SizeSource::Stdout => terminal_size::terminal_size().map(
                |(terminal_size::Width(columns), terminal_size::Height(rows))| TerminalSize {
                    columns: columns.into(),
                    rows: rows.into(),
                },
            ),
            SizeSource::Fixed(size) => size,
        }
    }
}

/// One printed line (or several rows, for a long message that wraps).
#[derive(Debug)]
struct Line {
    /// The id whose status this line shows; `None` for message lines, which
    /// are never rewritten.
    id: Option<String>,
    /// Terminal rows the line takes.
    rows: usize,
}

/// What is on screen and how far the cursor is below it.
#[derive(Debug)]
pub(crate) struct Screen {
    size: SizeSource,
    /// Lines above the cursor that might still be rewritten, oldest first.
    lines: VecDeque<Line>,
    /// Sum of `rows` over `lines`: how far the cursor is below the first.
    rows: usize,
    /// Per id: the stage its speed was measured for, and the speed.
    speeds: HashMap<String, (Status, Rate)>,
}

impl Screen {
    pub(crate) fn new(size: SizeSource) -> Self {
        Screen {
            size,
            lines: VecDeque::new(),
            rows: 0,
            speeds: HashMap::new(),
        }
    }

    pub(crate) fn set_size(&mut self, size: SizeSource) {
        self.size = size;
    }

    /// The bytes that show `progress`, as of `now`.
    pub(crate) fn render(&mut self, progress: &Progress, now: Instant) -> String {
        let size = self.size.get();
        let columns = size.map(|s| s.columns);
        let status = match &progress.event {
            Event::Message(message) => {
                let text = with_id(&progress.id, &message_text(message));
                let rows = rows_of(&text, columns);
                return self.append(None, text, rows, size);
            }
            Event::Status(status) => status,
        };
        let text = self.status_line(&progress.id, status, columns, now);
        if progress.id.is_empty() {
            return self.append(None, text, 1, size);
        }
        // Distance from the cursor up to the id's line, if it is on screen.
        let mut distance = 0;
        let mut found = None;
        for (index, line) in self.lines.iter().enumerate().rev() {
            distance += line.rows;
            if line.id.as_deref() == Some(progress.id.as_str()) {
                found = Some(index);
                break;
            }
        }
        match found {
            Some(_) if size.is_none_or(|s| distance < s.rows) => {
                format!("\x1b[{distance}A\r\x1b[2K{text}\r\x1b[{distance}B")
            }
            Some(index) => {
                // Scrolled off: leave the old line alone, start a new one.
                self.lines[index].id = None;
                self.append(Some(progress.id.clone()), text, 1, size)
            }
            None => self.append(Some(progress.id.clone()), text, 1, size),
        }
    }

    /// Prints a new line below the others.
    fn append(
        &mut self,
        id: Option<String>,
        text: String,
        rows: usize,
        size: Option<TerminalSize>,
    ) -> String {
        self.lines.push_back(Line { id, rows });
        self.rows += rows;
        // Forget lines the cursor can no longer reach.
        if let Some(size) = size {
            while self.rows >= size.rows.max(1) {
                match self.lines.pop_front() {
                    Some(line) => self.rows -= line.rows,
                    None => break,
                }
            }
        }
        format!("{text}\n")
    }

    /// `ID: Action [bar] counts (speed)`, cut to the terminal's width.
    fn status_line(
        &mut self,
        id: &str,
        status: &Status,
        columns: Option<usize>,
        now: Instant,
    ) -> String {
        let mut text = with_id(id, &status_text(status));
        let counts = status.counts();
        let counts = progress_text(
            counts.map(|c| c.current),
            counts.and_then(|c| c.total),
            columns,
        );
        if !counts.is_empty() {
            text.push(' ');
            text.push_str(&counts);
        }
        if let Some(speed) = self.speed(id, status, now) {
            text.push_str(&format!(" ({})", human_rate(speed)));
        }
        match columns {
            Some(columns) => cut(text, columns.saturating_sub(1).max(1)),
            None => text,
        }
    }

    /// The speed to show for a transfer still under way, if known yet.
    fn speed(&mut self, id: &str, status: &Status, now: Instant) -> Option<f64> {
        let Some(counts) = status.counts() else {
            self.speeds.remove(id);
            return None;
        };
        let (stage, rate) = self
            .speeds
            .entry(id.to_owned())
            .or_insert_with(|| (status.clone(), Rate::new(SPEED_WINDOW, SPEED_MIN_SPAN)));
        if !stage.same_stage(status) {
            *stage = status.clone();
            *rate = Rate::new(SPEED_WINDOW, SPEED_MIN_SPAN);
        }
        rate.record(now, counts.current);
        let under_way = counts.total.is_some_and(|total| counts.current < total);
        if under_way {
            rate.per_second()
        } else {
            None
        }
    }
}

/// `ID: text`, or `text` when the id is empty.
pub(crate) fn with_id(id: &str, text: &str) -> String {
    if id.is_empty() {
        text.to_owned()
    } else {
        format!("{id}: {text}")
    }
}

/// Rows a printed line takes on a terminal `columns` wide (at least 1).
fn rows_of(text: &str, columns: Option<usize>) -> usize {
    let Some(columns) = columns.filter(|&c| c > 0) else {
        return text.split('\n').count();
    };
    text.split('\n')
        .map(|line| line.chars().count().div_ceil(columns).max(1))
        .sum()
}

/// The first `max` characters of `text`.
fn cut(mut text: String, max: usize) -> String {
    if let Some((end, _)) = text.char_indices().nth(max) {
        text.truncate(end);
    }
    text
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use haul_dist::xfer::{Counts, Message};

    /// Replays terminal output: printable text, `\n`, `\r`, and the
    /// `ESC [ n A` / `ESC [ n B` / `ESC [ 2 K` sequences the renderer uses.
    /// Returns the screen's lines (unlimited height, no wrapping).
    pub(crate) fn replay(output: &str) -> Vec<String> {
        replay_wrapped(output, usize::MAX)
    }

    /// [`replay`] on a terminal `columns` wide that wraps long lines.
    pub(crate) fn replay_wrapped(output: &str, columns: usize) -> Vec<String> {
        let mut screen: Vec<Vec<char>> = vec![Vec::new()];
        let (mut row, mut col) = (0usize, 0usize);
        let mut chars = output.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\n' => {
                    row += 1;
                    col = 0;
                }
                '\r' => col = 0,
                '\x1b' => {
                    assert_eq!(chars.next(), Some('['), "only CSI sequences are expected");
                    let mut n = String::new();
                    while let Some(d) = chars.next_if(char::is_ascii_digit) {
                        n.push(d);
                    }
                    let n: usize = n.parse().unwrap_or(1);
                    match chars.next() {
                        Some('A') => row = row.checked_sub(n).expect("cursor moved above the top"),
                        Some('B') => row += n,
                        Some('K') => {
                            assert_eq!(n, 2, "the renderer clears whole lines");
                            screen[row].clear();
                        }
                        other => panic!("unexpected escape sequence ending in {other:?}"),
                    }
                }
                c => {
                    if col >= columns {
                        row += 1;
                        col = 0;
                        if screen.len() <= row {
                            screen.resize(row + 1, Vec::new());
                        }
                    }
                    let line = &mut screen[row];
                    if line.len() <= col {
                        line.resize(col, ' ');
                        line.push(c);
                    } else {
                        line[col] = c;
                    }
                    col += 1;
                }
            }
            if screen.len() <= row {
                screen.resize(row + 1, Vec::new());
            }
        }
        screen
            .into_iter()
            .map(|l| l.into_iter().collect())
            .collect()
    }

    fn run(size: Option<TerminalSize>, records: &[(u64, Progress)]) -> String {
        let t0 = Instant::now();
        let mut screen = Screen::new(SizeSource::Fixed(size));
        records
            .iter()
            .map(|(ms, p)| screen.render(p, t0 + Duration::from_millis(*ms)))
            .collect()
    }

    const WIDE: Option<TerminalSize> = Some(TerminalSize {
        columns: 200,
        rows: 50,
    });

    #[test]
    fn each_id_keeps_one_line_showing_its_last_status_in_first_seen_order() {
        let output = run(
            WIDE,
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
                (0, Progress::status("aaaaaaaaaaaa", Status::PullingFsLayer)),
                (0, Progress::status("bbbbbbbbbbbb", Status::PullingFsLayer)),
                (0, Progress::status("cccccccccccc", Status::PullingFsLayer)),
                (10, Progress::status("bbbbbbbbbbbb", Status::Waiting)),
                (
                    20,
                    Progress::status(
                        "aaaaaaaaaaaa",
                        Status::Downloading(Counts::of(1_000, 2_000)),
                    ),
                ),
                (30, Progress::status("cccccccccccc", Status::AlreadyExists)),
                (
                    40,
                    Progress::status("aaaaaaaaaaaa", Status::DownloadComplete),
                ),
                (
                    50,
                    Progress::status("bbbbbbbbbbbb", Status::Downloading(Counts::of(500, 1_000))),
                ),
                (60, Progress::status("aaaaaaaaaaaa", Status::PullComplete)),
                (70, Progress::status("bbbbbbbbbbbb", Status::PullComplete)),
                (
                    80,
                    Progress::message(
                        "",
                        Message::Digest {
                            digest: "sha256:0123".into(),
                        },
                    ),
                ),
                (
                    80,
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
        assert!(
            output.contains("\x1b[3A"),
            "updates move the cursor up: {output:?}"
        );
        assert_eq!(
            replay(&output),
            [
                "1.0: Pulling from library/app",
                "aaaaaaaaaaaa: Pull complete",
                "bbbbbbbbbbbb: Pull complete",
                "cccccccccccc: Already exists",
                "Digest: sha256:0123",
                "Status: Downloaded newer image for r/app:1.0",
                "",
            ]
        );
    }

    #[test]
    fn a_moving_layer_shows_docker_bar_sizes_and_speed() {
        let output = run(
            WIDE,
            &[
                (
                    0,
                    Progress::status(
                        "aaaaaaaaaaaa",
                        Status::Downloading(Counts::of(0, 40_500_000)),
                    ),
                ),
                (
                    1_000,
                    Progress::status(
                        "aaaaaaaaaaaa",
                        Status::Downloading(Counts::of(8_100_000, 40_500_000)),
                    ),
                ),
                (
                    2_000,
                    Progress::status(
                        "aaaaaaaaaaaa",
                        Status::Downloading(Counts::of(20_260_000, 40_500_000)),
                    ),
                ),
            ],
        );
        assert_eq!(
            replay(&output),
            [
                "aaaaaaaaaaaa: Downloading [=========================>                         ]  20.26MB/40.5MB (10.13MB/s)",
                "",
            ]
        );
    }

    #[test]
    fn narrow_terminals_get_no_bar_and_lines_that_do_not_wrap() {
        let size = Some(TerminalSize {
            columns: 41,
            rows: 50,
        });
        let output = run(
            size,
            &[
                (
                    0,
                    Progress::status(
                        "aaaaaaaaaaaa",
                        Status::Downloading(Counts::of(12_300_000, 40_500_000)),
                    ),
                ),
                (
                    0,
                    Progress::message(
                        "",
                        Message::Text("a message longer than forty columns, so it wraps".into()),
                    ),
                ),
                (
                    10,
                    Progress::status(
                        "aaaaaaaaaaaa",
                        Status::Extracting(Counts::of(1_000, 40_500_000)),
                    ),
                ),
            ],
        );
        assert!(
            output.contains("aaaaaaaaaaaa: Downloading   12.3MB/40.5M\n"),
            "cut to 40 columns: {output:?}"
        );
        assert_eq!(
            replay_wrapped(&output, 41),
            [
                "aaaaaaaaaaaa: Extracting      1kB/40.5MB",
                "a message longer than forty columns, so i",
                "t wraps",
                "",
            ]
        );
        assert!(
            output.contains("\x1b[3A"),
            "the wrapped message takes two rows: {output:?}"
        );
    }

    #[test]
    fn a_line_scrolled_off_the_top_is_not_chased() {
        let size = Some(TerminalSize {
            columns: 200,
            rows: 4,
        });
        let mut records = vec![(0, Progress::status("aaaaaaaaaaaa", Status::Waiting))];
        for id in ["b", "c", "d", "e"] {
            records.push((0, Progress::status(id, Status::Waiting)));
        }
        records.push((
            10,
            Progress::status("aaaaaaaaaaaa", Status::Downloading(Counts::default())),
        ));
        records.push((20, Progress::status("e", Status::PullComplete)));
        let output = run(size, &records);
        let ups: Vec<&str> = output.matches("\x1b[").collect();
        assert_eq!(ups.len(), 3, "only e's update moves the cursor: {output:?}");
        assert!(output.contains("\x1b[2A"), "e is two lines up: {output:?}");
        assert_eq!(
            replay(&output),
            [
                "aaaaaaaaaaaa: Waiting",
                "b: Waiting",
                "c: Waiting",
                "d: Waiting",
                "e: Pull complete",
                "aaaaaaaaaaaa: Downloading",
                "",
            ]
        );
    }

    #[test]
    fn statuses_without_id_are_plain_lines() {
        let output = run(
            WIDE,
            &[
                (0, Progress::status("", Status::Preparing)),
                (0, Progress::status("", Status::PullComplete)),
            ],
        );
        assert_eq!(replay(&output), ["Preparing", "Pull complete", ""]);
    }
}
