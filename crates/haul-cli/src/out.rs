//! Writing results to stdout the way command-line tools should: a reader
//! that went away (`haul images | head`) ends the output quietly instead
//! of a panic, as `println!` would.

use std::io::{ErrorKind, Write};

/// Writes one line to stdout. A closed pipe is ignored (the command goes
/// on and exits normally); another write error is reported on stderr once
/// per line.
pub(crate) fn write_line(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let result = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    match result {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => eprintln!("haul: cannot write output: {e}"),
        _ => {}
    }
}

/// `println!` that never panics on a closed stdout; see [`write_line`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::write_line(format_args!($($arg)*))
    };
}
