//! Markets: `instruments/<market>.txt`, lines of `SYMBOL<TAB>START<TAB>END`, no header.
//!
//! A symbol may have several spans (index membership in and out). Symbols are kept as strings: `NA`, `NULL`
//! and `nan` are symbols, not missing values (qlib's pandas reader turns them into NaN).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, NameKind, Result};
use crate::store::calendar::{Timestamp, format_timestamp, parse_timestamp};
use crate::store::layout::validate_name;

/// A closed interval `[start, end]` during which an instrument belongs to a market.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span {
    pub start: Timestamp,
    pub end: Timestamp,
}

/// The instruments of one market and their spans, ordered by symbol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instruments {
    spans: BTreeMap<String, Vec<Span>>,
}

impl Instruments {
    pub fn new() -> Instruments {
        Instruments::default()
    }

    /// Parses the text of an instruments file; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Instruments> {
        let mut out = Instruments::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim().is_empty() {
                continue;
            }
            let err = |reason: String| Error::Instruments {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            };
            let cols: Vec<&str> = line.split('\t').collect();
            let [symbol, start, end] = cols[..] else {
                return Err(err(format!(
                    "expected 3 tab-separated columns, found {}",
                    cols.len()
                )));
            };
            validate_name(NameKind::Instrument, symbol).map_err(|e| err(e.to_string()))?;
            let start = parse_timestamp(start).map_err(|e| err(format!("start: {e}")))?;
            let end = parse_timestamp(end).map_err(|e| err(format!("end: {e}")))?;
            if start > end {
                return Err(err(format!("start {start} is after end {end}")));
            }
            out.push(symbol, Span { start, end })?;
        }
        Ok(out)
    }

    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Instruments> {
        let text = crate::store::fsio::read_text(path)?;
        Instruments::parse(&text, path)
    }

    /// The file text: `SYMBOL\tSTART\tEND\n` per span, by symbol then start. Times of midnight are written as
    /// dates only (qlib's daily format).
    pub fn to_text(&self) -> String {
        let fmt = |t: Timestamp| format_timestamp(t, t.time() == chrono::NaiveTime::MIN);
        let mut out = String::new();
        for (symbol, spans) in &self.spans {
            for s in spans {
                out.push_str(&format!("{symbol}\t{}\t{}\n", fmt(s.start), fmt(s.end)));
            }
        }
        out
    }

    /// Adds a span to `symbol`, keeping its spans sorted.
    pub fn push(&mut self, symbol: &str, span: Span) -> Result<()> {
        validate_name(NameKind::Instrument, symbol)?;
        let spans = self.spans.entry(symbol.to_owned()).or_default();
        let at = spans.partition_point(|s| s < &span);
        spans.insert(at, span);
        Ok(())
    }

    /// Replaces every span of `symbol`.
    pub fn set(&mut self, symbol: &str, spans: Vec<Span>) -> Result<()> {
        validate_name(NameKind::Instrument, symbol)?;
        let mut spans = spans;
        spans.sort();
        self.spans.insert(symbol.to_owned(), spans);
        Ok(())
    }

    pub fn spans(&self, symbol: &str) -> Option<&[Span]> {
        self.spans.get(symbol).map(Vec::as_slice)
    }

    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.spans.keys().map(String::as_str)
    }

    /// The symbols with a span reaching into `[start, end]` (either open), in order: qlib's
    /// `list_instruments` as a list.
    pub fn trading_between(
        &self,
        start: Option<Timestamp>,
        end: Option<Timestamp>,
    ) -> impl Iterator<Item = &str> {
        self.iter()
            .filter(move |(_, spans)| {
                spans
                    .iter()
                    .any(|s| start.is_none_or(|a| s.end >= a) && end.is_none_or(|b| s.start <= b))
            })
            .map(|(sym, _)| sym)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[Span])> {
        self.spans.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The spans clipped to `[start, end]`, dropping empty ones and instruments left with none
    /// (qlib's `list_instruments`).
    pub fn clipped(&self, start: Timestamp, end: Timestamp) -> Instruments {
        let mut out = Instruments::new();
        for (symbol, spans) in &self.spans {
            let kept: Vec<Span> = spans
                .iter()
                .map(|s| Span {
                    start: s.start.max(start),
                    end: s.end.min(end),
                })
                .filter(|s| s.start <= s.end)
                .collect();
            if !kept.is_empty() {
                out.spans.insert(symbol.clone(), kept);
            }
        }
        out
    }
}

/// What an instrument list costs in the store's instrument cache.
impl crate::util::memcache::Weigh for Instruments {
    fn weight(&self) -> usize {
        // Per symbol: the map node (key String + Vec of spans) and their heap parts.
        let node = std::mem::size_of::<String>() + std::mem::size_of::<Vec<Span>>() + 16;
        std::mem::size_of::<Self>()
            + self
                .iter()
                .map(|(s, spans)| node + s.len() + std::mem::size_of_val(spans))
                .sum::<usize>()
    }
}

/// The names an argument gives (`None` for `all`): names separated by commas, or `@FILE` with names separated
/// by commas, spaces or lines; patterns among them are for [`select`]. An argument that names nothing is an
/// error naming `what`.
pub fn names(what: &str, arg: &str) -> Result<Option<Vec<String>>> {
    let bad = |reason: String| crate::error::Error::Config {
        source_name: what.to_string(),
        reason,
    };
    if arg.trim() == "all" {
        return Ok(None);
    }
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            bad(format!(
                "reading the {what} file {path} (@FILE: names separated by commas, spaces or lines): {e}"
            ))
        })?,
        None => arg.to_owned(),
    };
    let tokens: Vec<String> = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    if tokens.is_empty() {
        return Err(bad(format!(
            "{what} names nothing; give names such as SH600000,SZ000001, a pattern such as 'SH6*', @FILE or all"
        )));
    }
    Ok(Some(tokens))
}

/// Names as a user gives them: each plain name kept as given, each glob pattern (`SH6*`, `SZ00000?`,
/// `SH60000[0-4]`; case-insensitive) replaced by the `candidates()` it matches, in their order (asked only when
/// a pattern is given). A pattern that matches nothing, or is no pattern, is an error naming `what` (the
/// flag or argument) so a typo is not an empty selection.
pub fn select(
    what: &str,
    names: &[String],
    candidates: impl FnOnce() -> Result<Vec<String>>,
) -> Result<Vec<String>> {
    let bad = |reason: String| crate::error::Error::Config {
        source_name: what.to_string(),
        reason,
    };
    let mut out = Vec::new();
    let mut candidates = Some(candidates);
    let mut known: Vec<String> = Vec::new();
    for t in names {
        if !t.contains(['*', '?', '[']) {
            out.push(t.clone());
            continue;
        }
        if let Some(f) = candidates.take() {
            known = f()?;
        }
        let pattern = glob::Pattern::new(t).map_err(|e| {
            bad(format!(
                "{t:?} is not a pattern: {} at byte {}",
                e.msg, e.pos
            ))
        })?;
        let options = glob::MatchOptions {
            case_sensitive: false,
            ..Default::default()
        };
        let before = out.len();
        out.extend(
            known
                .iter()
                .filter(|k| pattern.matches_with(k, options))
                .cloned(),
        );
        if out.len() == before {
            return Err(bad(format!(
                "the pattern {t:?} matches no instrument ({} to choose from)",
                known.len()
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_span_and_na_symbols() {
        let text = "SH600000\t2005-01-01\t2005-01-31\nNA\t2020-01-02\t2020-01-03\nSH600000\t2005-02-15\t2005-03-01\nnan\t2020-01-02\t2020-01-02\n";
        let ins = Instruments::parse(text, Path::new("csi300.txt")).unwrap();
        assert_eq!(ins.len(), 3);
        assert_eq!(ins.spans("SH600000").unwrap().len(), 2);
        assert!(ins.spans("NA").is_some() && ins.spans("nan").is_some());
        // Written back in SYMBOL, START, END order (qlib's writer puts START, END, SYMBOL).
        assert_eq!(
            ins.to_text(),
            "NA\t2020-01-02\t2020-01-03\nSH600000\t2005-01-01\t2005-01-31\nSH600000\t2005-02-15\t2005-03-01\nnan\t2020-01-02\t2020-01-02\n"
        );
        assert_eq!(
            Instruments::parse(&ins.to_text(), Path::new("x")).unwrap(),
            ins
        );
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        for (text, want) in [
            (
                "A\t2020-01-02\n",
                "i.txt:1: expected 3 tab-separated columns, found 2",
            ),
            (
                "A\t2020-01-02\t2020-01-01\n",
                "i.txt:1: start 2020-01-02 00:00:00 is after end",
            ),
            (
                "A\t2020-01-02\t2020-01-03\nB 2020-01-02 2020-01-03\n",
                "i.txt:2: expected 3",
            ),
            (
                "A\tyesterday\t2020-01-03\n",
                "i.txt:1: start: invalid date \"yesterday\"",
            ),
            (
                "..\t2020-01-02\t2020-01-03\n",
                "i.txt:1: invalid instrument name \"..\"",
            ),
        ] {
            let err = Instruments::parse(text, Path::new("i.txt"))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(want), "{err}");
        }
    }

    #[test]
    fn clipping_drops_empty_spans() {
        let text =
            "A\t2020-01-01\t2020-01-10\nA\t2020-02-01\t2020-02-10\nB\t2019-01-01\t2019-02-01\n";
        let ins = Instruments::parse(text, Path::new("x")).unwrap();
        let c = ins.clipped(
            parse_timestamp("2020-01-05").unwrap(),
            parse_timestamp("2020-01-31").unwrap(),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c.spans("A").unwrap().len(), 1);
        assert_eq!(
            c.spans("A").unwrap()[0].start,
            parse_timestamp("2020-01-05").unwrap()
        );
    }
}
