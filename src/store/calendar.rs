//! Trading calendars: `calendars/<freq>.txt`, one timestamp per line, strictly increasing.
//!
//! A calendar maps calendar indexes (the positions every feature file is aligned to) to timestamps. Date ranges
//! are located the way qlib does it (start -> first timestamp >= start, end -> last timestamp <= end), except
//! that a range outside the calendar is empty instead of qlib's full calendar when `end` precedes the first date.

use std::ops::Range;
use std::path::Path;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};

use crate::error::{Error, Result};
use crate::store::freq::Freq;

/// A timestamp of the calendar (no time zone: exchange-local time, as qlib stores it).
pub type Timestamp = NaiveDateTime;

/// Parses `YYYY-MM-DD` (midnight) or `YYYY-MM-DD HH:MM:SS`, after trimming white space.
///
/// Strict about the byte pattern (four-digit year, two-digit fields, `-`, ` `, `:`): anything it accepts is
/// written back identically by [`format_timestamp`].
pub fn parse_timestamp(text: &str) -> Result<Timestamp> {
    let bad = || Error::InvalidDate {
        text: text.to_owned(),
    };
    let b = text.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    if !(b.len() == 10 || (b.len() == 19 && b[10] == b' ' && b[13] == b':' && b[16] == b':')) {
        return Err(bad());
    }
    if b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (y, m, d) = (
        num(0..4).ok_or_else(bad)?,
        num(5..7).ok_or_else(bad)?,
        num(8..10).ok_or_else(bad)?,
    );
    let date = NaiveDate::from_ymd_opt(y as i32, m, d).ok_or_else(bad)?;
    let time = if b.len() == 10 {
        NaiveTime::MIN
    } else {
        let (h, mi, sec) = (
            num(11..13).ok_or_else(bad)?,
            num(14..16).ok_or_else(bad)?,
            num(17..19).ok_or_else(bad)?,
        );
        NaiveTime::from_hms_opt(h, mi, sec).ok_or_else(bad)?
    };
    Ok(date.and_time(time))
}

/// Formats a timestamp as qlib writes it: date only for daily and longer bars, with the time otherwise.
pub fn format_timestamp(t: Timestamp, date_only: bool) -> String {
    if date_only {
        t.format("%Y-%m-%d").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%S").to_string()
    }
}

/// The trading calendar of one frequency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    freq: Freq,
    dates: Vec<Timestamp>,
}

impl Calendar {
    /// A calendar from timestamps, which must be strictly increasing.
    pub fn new(freq: Freq, dates: Vec<Timestamp>) -> Result<Calendar> {
        if let Some(i) = dates.iter().position(|&d| !fits(freq, d)) {
            return Err(Error::CalendarDates {
                index: i,
                reason: time_reason(freq, dates[i]),
            });
        }
        if let Some(i) = dates.windows(2).position(|w| w[0] >= w[1]) {
            return Err(Error::CalendarDates {
                index: i + 1,
                reason: order_reason(dates[i], dates[i + 1]),
            });
        }
        Ok(Calendar { freq, dates })
    }

    /// Parses the text of a calendar file; `path` is only used in error messages.
    ///
    /// Lines are trimmed and blank lines skipped (as qlib's reader does); anything else must be a timestamp
    /// later than the one before it.
    pub fn parse(text: &str, path: &Path, freq: Freq) -> Result<Calendar> {
        let mut dates: Vec<Timestamp> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let err = |reason: String| Error::Calendar {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            };
            let t = parse_timestamp(line).map_err(|e| err(e.to_string()))?;
            if !fits(freq, t) {
                return Err(err(time_reason(freq, t)));
            }
            if let Some(&prev) = dates.last()
                && prev >= t
            {
                return Err(err(order_reason(prev, t)));
            }
            dates.push(t);
        }
        Ok(Calendar { freq, dates })
    }

    /// Reads `path`.
    pub fn load(path: &Path, freq: Freq) -> Result<Calendar> {
        let text = crate::store::fsio::read_text(path)?;
        Calendar::parse(&text, path, freq)
    }

    /// The file text: one timestamp per line, each ending in `\n` (what qlib's `np.savetxt` writes).
    pub fn to_text(&self) -> String {
        let date_only = self.freq.date_only();
        let mut out = String::with_capacity(self.dates.len() * 20);
        for &d in &self.dates {
            out.push_str(&format_timestamp(d, date_only));
            out.push('\n');
        }
        out
    }

    pub fn freq(&self) -> Freq {
        self.freq
    }

    pub fn len(&self) -> usize {
        self.dates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dates.is_empty()
    }

    pub fn dates(&self) -> &[Timestamp] {
        &self.dates
    }

    /// The timestamp at calendar index `i`.
    pub fn get(&self, i: usize) -> Option<Timestamp> {
        self.dates.get(i).copied()
    }

    /// The first and last timestamp.
    pub fn first(&self) -> Option<Timestamp> {
        self.dates.first().copied()
    }

    pub fn last(&self) -> Option<Timestamp> {
        self.dates.last().copied()
    }

    /// The calendar index of exactly `t`.
    pub fn index_of(&self, t: Timestamp) -> Option<usize> {
        self.dates.binary_search(&t).ok()
    }

    /// The half-open range of calendar indexes with `start <= date <= end` (either bound optional).
    ///
    /// A range that misses the calendar, or has `end < start`, is empty.
    pub fn locate(&self, start: Option<Timestamp>, end: Option<Timestamp>) -> Range<usize> {
        let lo = start.map_or(0, |s| self.dates.partition_point(|&d| d < s));
        let hi = end.map_or(self.dates.len(), |e| {
            self.dates.partition_point(|&d| d <= e)
        });
        lo..hi.max(lo)
    }

    /// Appends timestamps later than the last one.
    pub fn extend(&mut self, more: impl IntoIterator<Item = Timestamp>) -> Result<()> {
        let old = self.dates.len();
        self.dates.extend(more);
        if let Some(i) = self.dates[old..].iter().position(|&d| !fits(self.freq, d)) {
            let reason = time_reason(self.freq, self.dates[old + i]);
            self.dates.truncate(old);
            return Err(Error::CalendarDates {
                index: old + i,
                reason,
            });
        }
        if let Some(i) = self.dates[old.saturating_sub(1)..]
            .windows(2)
            .position(|w| w[0] >= w[1])
        {
            let i = old.saturating_sub(1) + i;
            let reason = order_reason(self.dates[i], self.dates[i + 1]);
            self.dates.truncate(old);
            return Err(Error::CalendarDates {
                index: i + 1,
                reason,
            });
        }
        Ok(())
    }
}

/// Whether `t` can be written in the calendar format of `freq` without losing its time of day.
pub(crate) fn fits(freq: Freq, t: Timestamp) -> bool {
    !freq.date_only() || t.time() == NaiveTime::MIN
}

fn time_reason(freq: Freq, t: Timestamp) -> String {
    format!(
        "timestamp {t} has a time of day, which a {freq} calendar cannot hold; use a minute frequency such as 1min"
    )
}

fn order_reason(prev: Timestamp, t: Timestamp) -> String {
    if prev == t {
        format!("duplicate timestamp {t}")
    } else {
        format!(
            "timestamp {t} is earlier than the one before it ({prev}); calendars must be sorted"
        )
    }
}

/// What a calendar costs in the store's calendar cache.
impl crate::util::memcache::Weigh for Calendar {
    fn weight(&self) -> usize {
        std::mem::size_of::<Self>() + std::mem::size_of_val(self.dates())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        parse_timestamp(s).unwrap()
    }

    fn cal() -> Calendar {
        Calendar::parse(
            "2020-01-02\n2020-01-03\n2020-01-06\n2020-01-07\n",
            Path::new("day.txt"),
            Freq::DAY,
        )
        .unwrap()
    }

    #[test]
    fn timestamps_are_strict() {
        assert_eq!(format_timestamp(ts("2020-02-29"), true), "2020-02-29");
        assert_eq!(
            format_timestamp(ts(" 2020-02-29 23:59:59 "), false),
            "2020-02-29 23:59:59"
        );
        for bad in [
            "-023-02-17",
            "+023-02-17",
            "2020-1-02",
            "2020-01-2",
            "2020/01/02",
            "2021-02-29",
            "2020-13-01",
            "2020-01-02T09:30:00",
            "2020-01-02 24:00:00",
            "2020-01-02 9:30:000",
            "20200102",
            "",
            "２020-01-02",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn locate_follows_qlib_rules() {
        let c = cal();
        assert_eq!(c.locate(None, None), 0..4);
        // start not in calendar -> first date >= start; end not in calendar -> last date <= end
        assert_eq!(
            c.locate(Some(ts("2020-01-04")), Some(ts("2020-01-05"))),
            2..2
        );
        assert_eq!(
            c.locate(Some(ts("2020-01-03")), Some(ts("2020-01-05"))),
            1..2
        );
        assert_eq!(
            c.locate(Some(ts("2020-01-01")), Some(ts("2020-01-06"))),
            0..3
        );
        // outside the calendar: empty (qlib returns everything when end < first date)
        assert_eq!(c.locate(None, Some(ts("2019-12-31"))), 0..0);
        assert_eq!(c.locate(Some(ts("2020-02-01")), None), 4..4);
        assert_eq!(
            c.locate(Some(ts("2020-01-07")), Some(ts("2020-01-02"))),
            3..3
        );
    }

    #[test]
    fn unsorted_and_duplicate_lines_name_the_line() {
        let err = Calendar::parse(
            "2020-01-02\n2020-01-03\n2020-01-03\n",
            Path::new("c.txt"),
            Freq::DAY,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.txt:3: duplicate timestamp 2020-01-03 00:00:00; fix or remove that line"
        );
        let err = Calendar::parse("2020-01-03\n\n2020-01-02\n", Path::new("c.txt"), Freq::DAY)
            .unwrap_err();
        assert!(
            err.to_string().starts_with("c.txt:3: timestamp 2020-01-02"),
            "{err}"
        );
        let err =
            Calendar::parse("2020-01-03\n2020-13-01\n", Path::new("c.txt"), Freq::DAY).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("c.txt:2: invalid date \"2020-13-01\""),
            "{err}"
        );
    }

    #[test]
    fn text_round_trips_in_both_formats() {
        let c = cal();
        assert_eq!(
            c.to_text(),
            "2020-01-02\n2020-01-03\n2020-01-06\n2020-01-07\n"
        );
        let m = Calendar::parse(
            "2020-01-02 09:31:00\n2020-01-02 09:32:00\n",
            Path::new("m"),
            Freq::MINUTE,
        )
        .unwrap();
        assert_eq!(m.to_text(), "2020-01-02 09:31:00\n2020-01-02 09:32:00\n");
    }

    #[test]
    fn daily_calendars_reject_times_of_day() {
        let err = Calendar::parse(
            "2020-01-02\n2020-01-03 09:30:00\n",
            Path::new("d.txt"),
            Freq::DAY,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("d.txt:2: timestamp 2020-01-03 09:30:00 has a time of day"),
            "{err}"
        );
        assert!(Calendar::parse("2020-01-02 00:00:00\n", Path::new("d.txt"), Freq::DAY).is_ok());
        assert!(Calendar::new(Freq::DAY, vec![ts("2020-01-02 09:30:00")]).is_err());
        assert!(Calendar::new(Freq::MINUTE, vec![ts("2020-01-02 09:30:00")]).is_ok());
        let mut c = cal();
        assert!(c.extend([ts("2020-01-08 09:30:00")]).is_err());
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn extend_rejects_out_of_order_and_keeps_old_state() {
        let mut c = cal();
        assert!(c.extend([ts("2020-01-07")]).is_err());
        assert_eq!(c.len(), 4);
        c.extend([ts("2020-01-08"), ts("2020-01-09")]).unwrap();
        assert_eq!(c.len(), 6);
        assert_eq!(c.index_of(ts("2020-01-09")), Some(5));
    }
}
