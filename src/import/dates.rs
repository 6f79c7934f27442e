//! How a source's date text is read (`--date-format`): qstore's own `YYYY-MM-DD[ HH:MM:SS]` by default, or a
//! strftime pattern (`%Y%m%d`, `%Y/%m/%d`, `%Y-%m-%dT%H:%M:%S`, ...) for CSV and Parquet text columns and MySQL
//! text (CHAR/VARCHAR) date columns. Typed dates (Parquet date/timestamp, SQL DATE/DATETIME) need no format.

use chrono::format::{Item, Numeric, Pad, StrftimeItems};
use chrono::{NaiveDate, NaiveDateTime};

use crate::error::{Error, Result};
use crate::store::calendar::{Timestamp, parse_timestamp};

/// A way of writing dates as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DateFormat {
    /// `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS` (qlib's own; parsed without chrono's pattern machinery).
    #[default]
    Iso,
    /// A strftime pattern, checked when given.
    Pattern(String),
}

impl DateFormat {
    /// A `--date-format` pattern: refused unless it names a day (year, month and day, or an equivalent such
    /// as `%F`) and reads back what it writes.
    pub fn new(pattern: &str) -> Result<DateFormat> {
        let bad = |reason: String| Error::Config {
            source_name: "--date-format".into(),
            reason,
        };
        if StrftimeItems::new(pattern).any(|i| matches!(i, Item::Error)) {
            return Err(bad(format!(
                "{pattern:?} is not a strftime pattern (for example %Y%m%d, %Y/%m/%d or %Y-%m-%dT%H:%M:%S)"
            )));
        }
        let probe = NaiveDate::from_ymd_opt(2023, 11, 28)
            .and_then(|d| d.and_hms_opt(13, 45, 30))
            .expect("a valid moment");
        let format = DateFormat::Pattern(pattern.to_string());
        let text = probe.format(pattern).to_string();
        match format.parse(&text) {
            Ok(t) if t.date() == probe.date() => Ok(format),
            _ => Err(bad(format!(
                "{pattern:?} does not name a day: it writes {probe} as {text:?}, which does not read back; \
                 include the year, month and day (%Y, %m, %d)"
            ))),
        }
    }

    /// The moment `text` names, or why it names none (with what to do).
    pub fn parse(&self, text: &str) -> std::result::Result<Timestamp, String> {
        let text = text.trim();
        match self {
            DateFormat::Iso => parse_timestamp(text).map_err(|e| {
                format!("{e}; if the source writes dates another way, give it with --date-format (for example %Y%m%d)")
            }),
            DateFormat::Pattern(p) => NaiveDateTime::parse_from_str(text, p)
                .or_else(|e| match NaiveDate::parse_from_str(text, p) {
                    Ok(d) => Ok(d.and_time(chrono::NaiveTime::MIN)),
                    Err(_) => Err(e),
                })
                .map_err(|e| format!("date {text:?} does not match --date-format {p:?} ({e})")),
        }
    }

    /// Whether the text of later moments always sorts after that of earlier ones (fixed-width numbers from
    /// the year down, as `%Y%m%d`), so that a server can compare the text to select a date range.
    pub fn sorts_as_text(&self) -> bool {
        let DateFormat::Pattern(p) = self else {
            return true;
        };
        let order = [
            Numeric::Year,
            Numeric::Month,
            Numeric::Day,
            Numeric::Hour,
            Numeric::Minute,
            Numeric::Second,
        ];
        let mut next = 0;
        for item in StrftimeItems::new(p) {
            match item {
                Item::Literal(_) | Item::Space(_) => {}
                Item::Numeric(n, pad) => {
                    let Some(k) = order.iter().position(|o| *o == n) else {
                        return false;
                    };
                    if k != next || (pad != Pad::Zero && n != Numeric::Year) {
                        return false;
                    }
                    next += 1;
                }
                // %F and %T expand into fixed-width fields in order; anything else (names, %s) does not sort.
                _ => return false,
            }
        }
        next >= 3
    }

    /// `t` written in this format (for a server's range of a text column; see [`DateFormat::sorts_as_text`]).
    pub fn format(&self, t: Timestamp) -> String {
        match self {
            DateFormat::Iso => t.format("%Y-%m-%d %H:%M:%S").to_string(),
            DateFormat::Pattern(p) => t.format(p).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        parse_timestamp(s).unwrap()
    }

    #[test]
    fn patterns_read_what_users_write() {
        let f = |p: &str| DateFormat::new(p).unwrap();
        assert_eq!(f("%Y%m%d").parse("20230103"), Ok(ts("2023-01-03")));
        assert_eq!(f("%Y/%m/%d").parse(" 2023/01/03 "), Ok(ts("2023-01-03")));
        assert_eq!(
            f("%Y-%m-%dT%H:%M:%S").parse("2023-01-03T09:31:00"),
            Ok(ts("2023-01-03 09:31:00"))
        );
        assert_eq!(f("%d.%m.%Y").parse("03.01.2023"), Ok(ts("2023-01-03")));
        let err = f("%Y%m%d").parse("2023-01-03").unwrap_err();
        assert!(
            err.contains("does not match --date-format \"%Y%m%d\""),
            "{err}"
        );
        let err = DateFormat::Iso.parse("20230103").unwrap_err();
        assert!(err.contains("--date-format (for example %Y%m%d)"), "{err}");
    }

    #[test]
    fn patterns_that_name_no_day_are_refused() {
        for p in ["%Y%m", "%H:%M", "hello", "%Q"] {
            let err = DateFormat::new(p).unwrap_err().to_string();
            assert!(err.contains("--date-format"), "{p}: {err}");
        }
    }

    #[test]
    fn only_year_first_fixed_width_patterns_sort_as_text() {
        for p in [
            "%Y%m%d",
            "%Y-%m-%d",
            "%Y/%m/%d %H:%M:%S",
            "%F",
            "%Y-%m-%dT%H:%M:%S",
        ] {
            assert!(DateFormat::new(p).unwrap().sorts_as_text(), "{p}");
        }
        for p in ["%d/%m/%Y", "%m/%d/%Y", "%Y-%-m-%-d", "%Y %b %d"] {
            assert!(!DateFormat::new(p).unwrap().sorts_as_text(), "{p}");
        }
        // The claim itself, over the days of two years.
        let f = DateFormat::new("%Y%m%d").unwrap();
        let days: Vec<String> = (0..730)
            .map(|k| f.format(ts("2023-01-01") + chrono::Duration::days(k)))
            .collect();
        assert!(days.windows(2).all(|w| w[0] < w[1]));
    }
}
