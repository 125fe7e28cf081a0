//! Docker's number formatting: human sizes (`units.HumanSize` from
//! docker/go-units) and the progress text of `jsonmessage.JSONProgress`.

/// Decimal unit names, as go-units' `decimapAbbrs`.
const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];

/// Significant digits of Docker's `units.HumanSize`.
const PRECISION: usize = 4;

/// Width of the bar between the brackets, not counting the `>` head.
const BAR_WIDTH: usize = 50;

/// Terminals at most this wide get no bar (Docker's `width > 110` rule), so
/// a layer's line never wraps.
const MIN_WIDTH_FOR_BAR: usize = 111;

/// A size the way Docker prints it: base 1000, unit `B`/`kB`/`MB`/`GB`...,
/// at most 4 significant digits, no trailing zeros, no space
/// (`999B`, `1kB`, `12.3MB`, `27.14MB`, `1.074GB`).
///
/// This is go-units' `HumanSize`, i.e. Go's `%.4g` followed by the unit,
/// including its quirks (999 960 bytes is `1000kB`).
pub(crate) fn human_size(bytes: u64) -> String {
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    format!("{}{}", go_general(size, PRECISION), UNITS[unit])
}

/// A rate in bytes per second, e.g. `8.1MB/s`.
pub(crate) fn human_rate(bytes_per_second: f64) -> String {
    format!("{}/s", human_size(bytes_per_second.max(0.0).round() as u64))
}

/// Counts as plain text without padding: `12.3MB/40.5MB`, or `12.3MB` when
/// the total is unknown or smaller than `current` (Docker drops a wonky
/// total too). `None` when there is nothing to show.
pub(crate) fn counts_text(current: Option<u64>, total: Option<u64>) -> Option<String> {
    let current = current.unwrap_or(0);
    let total = total.unwrap_or(0);
    match (current, total) {
        (0, 0) => None,
        (current, 0) => Some(human_size(current)),
        (current, total) if current > total => Some(human_size(current)),
        (current, total) => Some(format!("{}/{}", human_size(current), human_size(total))),
    }
}

/// Docker's `JSONProgress.String()` for byte counts: a bar
/// `[=====>      ] ` when `columns` is unknown or wider than 110, then
/// `%8v/%v` of the human sizes; empty when both counts are zero; only the
/// right-aligned current size when the total is unknown or too small.
pub(crate) fn progress_text(
    current: Option<u64>,
    total: Option<u64>,
    columns: Option<usize>,
) -> String {
    let current = current.unwrap_or(0);
    let total = total.unwrap_or(0);
    if current == 0 && total == 0 {
        return String::new();
    }
    if total == 0 {
        return format!("{:>8}", human_size(current));
    }
    let mut text = String::new();
    if columns.is_none_or(|c| c >= MIN_WIDTH_FOR_BAR) {
        text = bar(current, total);
        text.push(' ');
    }
    if current > total {
        text.push_str(&format!("{:>8}", human_size(current)));
    } else {
        text.push_str(&format!("{:>8}/{}", human_size(current), human_size(total)));
    }
    text
}

/// Docker's bar for `current` of `total` (`total > 0`): `[`, one `=` per
/// 2 % done (whole percents, rounded down, at most 50), `>`, spaces up to 50,
/// `]`.
pub(crate) fn bar(current: u64, total: u64) -> String {
    let percent = (current as f64 / total.max(1) as f64 * 100.0) as u64;
    let filled = ((percent / 2) as usize).min(BAR_WIDTH);
    format!(
        "[{}>{}]",
        "=".repeat(filled),
        " ".repeat(BAR_WIDTH - filled)
    )
}

/// Go's `fmt.Sprintf("%.*g", precision, value)` for a finite `value >= 0`:
/// `precision` significant digits, trailing zeros removed, exponent form
/// (`1e+03`) when the decimal exponent is below -4 or at least `precision`.
fn go_general(value: f64, precision: usize) -> String {
    if value == 0.0 {
        return "0".to_owned();
    }
    let precision = precision.max(1);
    // `{:e}` rounds to `precision` digits first, so the exponent is the one
    // of the rounded value, as in Go.
    let scientific = format!("{:.*e}", precision - 1, value);
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` output always has an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` exponent is an integer");
    if exponent < -4 || exponent >= precision as i32 {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim_fraction(mantissa), exponent.abs())
    } else {
        let decimals = (precision as i32 - 1 - exponent) as usize;
        trim_fraction(&format!("{value:.decimals$}")).to_owned()
    }
}

/// Drops trailing zeros of a fraction, and the point if nothing is left.
fn trim_fraction(number: &str) -> &str {
    if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        number
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_match_docker_units_human_size() {
        let cases = [
            (0, "0B"),
            (1, "1B"),
            (999, "999B"),
            (1000, "1kB"),
            (1024, "1.024kB"),
            (32_768, "32.77kB"),
            (12_300_000, "12.3MB"),
            (27_140_000, "27.14MB"),
            (40_500_000, "40.5MB"),
            (1_070_000_000, "1.07GB"),
            (1_073_741_824, "1.074GB"),
            (5_000_000_000_000, "5TB"),
        ];
        for (bytes, expected) in cases {
            assert_eq!(human_size(bytes), expected, "human_size({bytes})");
        }
    }

    #[test]
    fn go_general_format_follows_go_rounding_and_exponent_rules() {
        assert_eq!(go_general(999.96, 4), "1000");
        assert_eq!(go_general(999.96, 3), "1e+03");
        assert_eq!(go_general(12.345_67, 4), "12.35");
        assert_eq!(go_general(0.000_012_5, 4), "1.25e-05");
        assert_eq!(go_general(100.0, 4), "100");
    }

    #[test]
    fn bar_at_half_way_is_twenty_five_equals_and_a_head() {
        assert_eq!(
            bar(50, 100),
            "[=========================>                         ]"
        );
        assert_eq!(bar(0, 100), format!("[>{}]", " ".repeat(50)));
        assert_eq!(bar(100, 100), format!("[{}>]", "=".repeat(50)));
        assert_eq!(
            bar(300, 100),
            format!("[{}>]", "=".repeat(50)),
            "capped at 50"
        );
        assert_eq!(
            bar(3, 100),
            "[=>                                                 ]"
        );
    }

    #[test]
    fn progress_text_is_docker_json_progress_string() {
        assert_eq!(progress_text(None, None, None), "");
        assert_eq!(progress_text(Some(0), None, None), "");
        assert_eq!(progress_text(Some(1500), None, None), "   1.5kB");
        assert_eq!(
            progress_text(Some(12_300_000), Some(40_500_000), Some(200)),
            "[===============>                                   ]   12.3MB/40.5MB"
        );
        assert_eq!(
            progress_text(Some(12_300_000), Some(40_500_000), Some(80)),
            "  12.3MB/40.5MB",
            "no bar on terminals of 110 columns or fewer"
        );
        assert_eq!(
            progress_text(Some(50), Some(40), Some(80)),
            "     50B",
            "a current beyond the total hides the total"
        );
    }

    #[test]
    fn counts_text_has_no_padding() {
        assert_eq!(counts_text(None, None), None);
        assert_eq!(
            counts_text(Some(0), Some(40_500_000)).as_deref(),
            Some("0B/40.5MB")
        );
        assert_eq!(
            counts_text(Some(12_300_000), None).as_deref(),
            Some("12.3MB")
        );
        assert_eq!(human_rate(8_100_000.4), "8.1MB/s");
    }
}
