//! Frequencies, normalised as qlib's `Freq` does: `day` = `1d` = `1day`, `1min`, `5min`, `week`, `month`.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The unit of a frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FreqBase {
    Minute,
    Day,
    Week,
    Month,
}

/// A bar frequency: a count of a base unit.
///
/// `Display` gives qlib's canonical spelling, which is also the `<freq>` part of file names
/// (`calendars/day.txt`, `close.day.bin`, `calendars/1min.txt`, `close.1min.bin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Freq {
    count: u32,
    base: FreqBase,
}

impl Freq {
    /// Daily bars, the common case.
    pub const DAY: Freq = Freq {
        count: 1,
        base: FreqBase::Day,
    };
    /// One-minute bars.
    pub const MINUTE: Freq = Freq {
        count: 1,
        base: FreqBase::Minute,
    };

    /// A frequency of `count` units of `base`; `count` must be at least 1.
    pub fn new(count: u32, base: FreqBase) -> Option<Freq> {
        (count >= 1).then_some(Freq { count, base })
    }

    pub fn count(self) -> u32 {
        self.count
    }

    pub fn base(self) -> FreqBase {
        self.base
    }

    /// What a run of this frequency's bars is called in messages: `days`, `weeks`, `months`, else `bars`.
    pub fn bars_word(self) -> &'static str {
        match (self.count, self.base) {
            (1, FreqBase::Day) => "days",
            (1, FreqBase::Week) => "weeks",
            (1, FreqBase::Month) => "months",
            _ => "bars",
        }
    }

    /// Whether timestamps of this frequency are written as dates only (`YYYY-MM-DD`).
    ///
    /// qlib's dump writes dates only for `day`; we extend that to every frequency of a day or longer,
    /// since a week or month bar has no time of day either.
    pub fn date_only(self) -> bool {
        self.base != FreqBase::Minute
    }
}

impl FromStr for Freq {
    type Err = Error;

    /// Parses qlib's forms: `^([0-9]*)(month|mon|week|w|day|d|minute|min)$`, case-insensitive.
    fn from_str(s: &str) -> Result<Freq> {
        let bad = || Error::UnknownFreq { freq: s.to_owned() };
        let lower = s.trim().to_ascii_lowercase();
        let digits = lower.bytes().take_while(u8::is_ascii_digit).count();
        let (num, unit) = lower.split_at(digits);
        let base = match unit {
            "month" | "mon" => FreqBase::Month,
            "week" | "w" => FreqBase::Week,
            "day" | "d" => FreqBase::Day,
            "minute" | "min" => FreqBase::Minute,
            _ => return Err(bad()),
        };
        let count = if num.is_empty() {
            1
        } else {
            num.parse::<u32>().map_err(|_| bad())?
        };
        Freq::new(count, base).ok_or_else(bad)
    }
}

impl fmt::Display for Freq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.base {
            FreqBase::Minute => "min",
            FreqBase::Day => "day",
            FreqBase::Week => "week",
            FreqBase::Month => "month",
        };
        if self.count == 1 && self.base == FreqBase::Day {
            f.write_str(unit)
        } else {
            write!(f, "{}{unit}", self.count)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qlib_spellings_normalise() {
        for (input, want) in [
            ("day", "day"),
            ("1d", "day"),
            ("1DAY", "day"),
            ("d", "day"),
            ("1min", "1min"),
            ("min", "1min"),
            ("5minute", "5min"),
            ("week", "1week"),
            ("w", "1week"),
            ("month", "1month"),
            ("2mon", "2month"),
        ] {
            assert_eq!(input.parse::<Freq>().unwrap().to_string(), want, "{input}");
        }
        assert_eq!("1d".parse::<Freq>().unwrap(), Freq::DAY);
    }

    #[test]
    fn bad_spellings_are_errors() {
        for input in ["", "0min", "hour", "5", "1 day", "-1d", "99999999999min"] {
            let err = input.parse::<Freq>().unwrap_err();
            assert!(matches!(err, Error::UnknownFreq { .. }), "{input}: {err}");
        }
    }
}
