//! Grouping rows that arrive in any order by symbol, in bounded memory.
//!
//! A table scan in the table's own order costs the server least (no sort: the same work as exporting the table),
//! but a symbol's rows may come at any point of it. Each symbol's rows collect here until the row count the
//! server gives for it is reached, and are then handed on at once, so a table stored symbol by symbol holds
//! about one symbol at a time. The counts come from a second query running beside the scan; until they arrive
//! rows just collect. When the rows held pass `cap` bytes (a table stored day by day holds every symbol until
//! its last day), they are appended to an anonymous spill file and read back when their symbol is complete.
//! Symbols whose count is never reached are handed on when the scan ends. A row for a symbol already handed on
//! means the counts and the scan saw different tables: an error, and nothing is published.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;

use super::{Failure, SymbolRows};
use crate::error::{Error, Result};
use crate::store::calendar::Timestamp;

/// One symbol's rows so far.
struct Group {
    symbol: String,
    /// Rows received, held or spilled (or dropped after a failure).
    received: u64,
    /// Rows the server counted for this symbol; `u64::MAX` when unknown.
    expected: u64,
    dates: Vec<Timestamp>,
    /// Insertion order (the auto-increment id), when the table has one.
    ids: Vec<i64>,
    columns: Vec<Vec<f32>>,
    /// Chunks in the spill file, in arrival order: (offset, rows).
    spilled: Vec<(u64, u32)>,
    failed: Option<String>,
}

/// Rows by symbol; `emit` receives each symbol once, complete.
pub(super) struct Grouper<'a> {
    columns: usize,
    /// Whether rows carry ids.
    with_ids: bool,
    origin: &'a (dyn Fn(&str) -> String + Sync),
    emit: &'a (dyn Fn(std::result::Result<SymbolRows, Failure>) + Sync),
    open: HashMap<Vec<u8>, Group>,
    /// Rows per symbol, once known, for the symbols not yet seen.
    counts: Option<HashMap<Vec<u8>, u64>>,
    /// Symbols handed on before the scan ended.
    done: std::collections::HashSet<Vec<u8>>,
    held: usize,
    cap: usize,
    spill: Option<BufWriter<File>>,
    spill_len: u64,
}

/// Bytes a held row costs: date, id, values.
fn row_bytes(columns: usize) -> usize {
    16 + 4 * columns
}

impl<'a> Grouper<'a> {
    /// `origin` names where a symbol's rows came from, for messages.
    pub fn new(
        columns: usize,
        with_ids: bool,
        cap: usize,
        origin: &'a (dyn Fn(&str) -> String + Sync),
        emit: &'a (dyn Fn(std::result::Result<SymbolRows, Failure>) + Sync),
    ) -> Self {
        Grouper {
            columns,
            with_ids,
            origin,
            emit,
            open: HashMap::new(),
            counts: None,
            done: Default::default(),
            held: 0,
            cap,
            spill: None,
            spill_len: 0,
        }
    }

    /// Rows per symbol (raw bytes) in the table the scan reads: symbols already complete are handed on.
    pub fn counts(&mut self, mut counts: HashMap<Vec<u8>, u64>) -> Result<()> {
        let mut complete = Vec::new();
        for (symbol, g) in &mut self.open {
            g.expected = counts.remove(symbol).unwrap_or(u64::MAX);
            if g.received > g.expected {
                return Err(Self::changed(symbol));
            }
            if g.received == g.expected {
                complete.push(symbol.clone());
            }
        }
        self.counts = Some(counts);
        for symbol in complete {
            self.complete(&symbol)?;
        }
        Ok(())
    }

    fn changed(symbol: &[u8]) -> Error {
        Error::Source {
            source_name: "the table".into(),
            reason: format!(
                "it changed during the import (symbol {:?} has more rows than counted); run the import again",
                String::from_utf8_lossy(symbol)
            ),
        }
    }

    fn complete(&mut self, symbol: &[u8]) -> Result<()> {
        let group = self.open.remove(symbol).expect("present");
        self.done.insert(symbol.to_vec());
        self.finish(group)
    }

    /// Adds one row: its date (or why it has none), its id, and its values (or why one is not a number).
    pub fn push(
        &mut self,
        symbol: &[u8],
        date: std::result::Result<Timestamp, String>,
        id: Option<i64>,
        values: &mut dyn Iterator<Item = std::result::Result<f32, String>>,
    ) -> Result<()> {
        if !self.open.contains_key(symbol) {
            if self.done.contains(symbol) {
                return Err(Self::changed(symbol));
            }
            let expected = match &mut self.counts {
                Some(c) => c.remove(symbol).unwrap_or(u64::MAX),
                None => u64::MAX,
            };
            let group = Group {
                symbol: String::from_utf8_lossy(symbol).into_owned(),
                received: 0,
                expected,
                dates: Vec::new(),
                ids: Vec::new(),
                columns: vec![Vec::new(); self.columns],
                spilled: Vec::new(),
                failed: None,
            };
            self.open.insert(symbol.to_vec(), group);
        }
        let group = self.open.get_mut(symbol).expect("just made");
        group.received += 1;
        if group.failed.is_none() {
            match date {
                Err(reason) => group.failed = Some(reason),
                Ok(d) => {
                    let before = group.dates.len();
                    group.dates.push(d);
                    group.ids.extend(id);
                    for (col, v) in group.columns.iter_mut().zip(values) {
                        match v {
                            Ok(v) => col.push(v),
                            Err(reason) => {
                                group.failed = Some(reason);
                                break;
                            }
                        }
                    }
                    if group.failed.is_some() {
                        group.dates.clear();
                        group.ids.clear();
                        group.columns.iter_mut().for_each(Vec::clear);
                        group.spilled.clear();
                        self.held -= before * row_bytes(self.columns);
                    } else {
                        self.held += row_bytes(self.columns);
                    }
                }
            }
        }
        if group.received == group.expected {
            self.complete(symbol)?;
        } else if self.held > self.cap {
            self.spill_all()?;
        }
        Ok(())
    }

    /// Hands on every symbol still open (the scan has ended), in symbol order.
    pub fn end(&mut self) -> Result<()> {
        let mut rest: Vec<Group> = self.open.drain().map(|(_, g)| g).collect();
        rest.sort_by(|a, b| a.symbol.cmp(&b.symbol));
        for g in rest {
            self.finish(g)?;
        }
        Ok(())
    }

    fn spill_err(e: std::io::Error) -> Error {
        Error::io("writing the spill file in", std::env::temp_dir(), e)
    }

    /// Appends every open symbol's held rows to the spill file.
    fn spill_all(&mut self) -> Result<()> {
        if self.spill.is_none() {
            self.spill = Some(BufWriter::with_capacity(
                1 << 20,
                tempfile::tempfile().map_err(Self::spill_err)?,
            ));
        }
        let out = self.spill.as_mut().expect("just made");
        for g in self.open.values_mut() {
            let n = g.dates.len();
            if n == 0 {
                continue;
            }
            let mut buf = Vec::with_capacity(n * row_bytes(self.columns));
            for d in &g.dates {
                buf.extend_from_slice(&d.and_utc().timestamp().to_le_bytes());
            }
            for k in 0..n {
                buf.extend_from_slice(&g.ids.get(k).copied().unwrap_or(0).to_le_bytes());
            }
            for c in &g.columns {
                c.iter()
                    .for_each(|v| buf.extend_from_slice(&v.to_le_bytes()));
            }
            out.write_all(&buf).map_err(Self::spill_err)?;
            g.spilled.push((self.spill_len, n as u32));
            self.spill_len += buf.len() as u64;
            g.dates = Vec::new();
            g.ids = Vec::new();
            g.columns.iter_mut().for_each(|c| *c = Vec::new());
        }
        self.held = 0;
        Ok(())
    }

    /// Reads a group's spilled chunks back in front of its held rows, restores insertion order, and emits it.
    fn finish(&mut self, mut g: Group) -> Result<()> {
        self.held -= g.dates.len() * row_bytes(self.columns);
        if let Some(reason) = g.failed {
            (self.emit)(Err(Failure {
                symbol: g.symbol,
                reason,
            }));
            return Ok(());
        }
        if !g.spilled.is_empty() {
            let out = self.spill.as_mut().expect("chunks imply a spill file");
            out.flush().map_err(Self::spill_err)?;
            let file = out.get_ref();
            let total: usize =
                g.spilled.iter().map(|&(_, n)| n as usize).sum::<usize>() + g.dates.len();
            let mut dates = Vec::with_capacity(total);
            let mut ids = Vec::with_capacity(total);
            let mut columns: Vec<Vec<f32>> = vec![Vec::with_capacity(total); self.columns];
            for &(at, n) in &g.spilled {
                let n = n as usize;
                let mut buf = vec![0u8; n * row_bytes(self.columns)];
                file.read_exact_at(&mut buf, at)
                    .map_err(|e| Error::io("reading the spill file in", std::env::temp_dir(), e))?;
                let (d, rest) = buf.split_at(8 * n);
                let (i, v) = rest.split_at(8 * n);
                dates.extend(d.chunks_exact(8).map(|b| {
                    let secs = i64::from_le_bytes(b.try_into().expect("8 bytes"));
                    chrono::DateTime::from_timestamp(secs, 0)
                        .expect("written from a timestamp")
                        .naive_utc()
                }));
                ids.extend(
                    i.chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))),
                );
                for (c, vals) in columns.iter_mut().zip(v.chunks_exact(4 * n)) {
                    c.extend(
                        vals.chunks_exact(4)
                            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
                    );
                }
            }
            dates.append(&mut g.dates);
            ids.append(&mut g.ids);
            for (c, held) in columns.iter_mut().zip(&mut g.columns) {
                c.append(held);
            }
            (g.dates, g.ids, g.columns) = (dates, ids, columns);
        }
        // Rows of one symbol and date keep their insertion order for --on-duplicate, as in a sorted scan.
        if self.with_ids && !g.ids.is_sorted() {
            let mut order: Vec<usize> = (0..g.ids.len()).collect();
            order.sort_by_key(|&k| g.ids[k]);
            g.dates = order.iter().map(|&k| g.dates[k]).collect();
            for c in &mut g.columns {
                *c = order.iter().map(|&k| c[k]).collect();
            }
        }
        (self.emit)(Ok(SymbolRows {
            origin: (self.origin)(&g.symbol),
            raw_symbol: g.symbol,
            dates: g.dates,
            columns: g.columns.into_iter().map(Some).collect(),
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    fn day(n: i64) -> Timestamp {
        crate::store::calendar::parse_timestamp("2020-01-01").unwrap() + chrono::Duration::days(n)
    }

    type Row = (&'static str, i64, i64, f32);

    /// Feeds `rows` (symbol, day, id, value) through a grouper; returns what it emitted, in order, and the
    /// symbols emitted before the scan ended.
    fn run(
        rows: &[Row],
        counts: &[(&str, u64)],
        cap: usize,
    ) -> (Vec<std::result::Result<SymbolRows, Failure>>, usize) {
        let out = Mutex::new(Vec::new());
        let emit = |item| out.lock().push(item);
        let origin = |s: &str| format!("t.symbol = {s:?}");
        let counts = counts
            .iter()
            .map(|&(s, n)| (s.as_bytes().to_vec(), n))
            .collect();
        let mut g = Grouper::new(1, true, cap, &origin, &emit);
        g.counts(counts).unwrap();
        for &(s, d, id, v) in rows {
            let date = if d < 0 {
                Err(format!("bad date {d}"))
            } else {
                Ok(day(d))
            };
            let value = if v < 0.0 {
                Err(format!("bad value {v}"))
            } else {
                Ok(v)
            };
            g.push(s.as_bytes(), date, Some(id), &mut std::iter::once(value))
                .unwrap();
        }
        let early = out.lock().len();
        g.end().unwrap();
        (out.into_inner(), early)
    }

    #[test]
    fn day_by_day_rows_come_out_by_symbol_spilled_or_not() {
        // Three symbols stored day by day; B is missing day 1, C has a bad value.
        let mut rows = Vec::new();
        let mut id = 0;
        for d in 0..50 {
            for s in ["A", "B", "C"] {
                id += 1;
                if s == "B" && d == 1 {
                    continue;
                }
                let v = if s == "C" && d == 30 { -1.0 } else { d as f32 };
                rows.push((s, d, id, v));
            }
        }
        let counts = [("A", 50), ("B", 49), ("C", 50)];
        let (held, _) = run(&rows, &counts, usize::MAX);
        for cap in [0, 64, 1000] {
            let (spilled, _) = run(&rows, &counts, cap);
            assert_eq!(spilled, held, "cap {cap}");
        }
        let a = held[0].as_ref().unwrap();
        assert_eq!(a.raw_symbol, "A");
        assert_eq!(a.dates, (0..50).map(day).collect::<Vec<_>>());
        assert_eq!(a.columns[0].as_deref().unwrap()[49], 49.0);
        let b = held[1].as_ref().unwrap();
        assert_eq!(b.dates.len(), 49);
        let c = held[2].as_ref().unwrap_err();
        assert_eq!(
            (c.symbol.as_str(), c.reason.as_str()),
            ("C", "bad value -1")
        );
    }

    #[test]
    fn a_symbol_goes_as_soon_as_its_count_is_reached() {
        let rows = [
            ("A", 0, 1, 1.0),
            ("A", 1, 2, 2.0),
            ("B", 0, 3, 3.0),
            ("C", 0, 4, 4.0),
        ];
        // A and B counted: both leave during the scan; C (not counted) at its end.
        let (out, early) = run(&rows, &[("A", 2), ("B", 1)], usize::MAX);
        assert_eq!(early, 2);
        let names: Vec<_> = out
            .iter()
            .map(|r| r.as_ref().unwrap().raw_symbol.clone())
            .collect();
        assert_eq!(names, ["A", "B", "C"]);
        // A count too high (rows deleted meanwhile would do it) only delays the symbol to the end.
        let (out, early) = run(&rows, &[("A", 5)], usize::MAX);
        assert_eq!((early, out.len()), (0, 3));
        assert_eq!(out[0].as_ref().unwrap().dates.len(), 2);
    }

    #[test]
    fn counts_that_arrive_late_complete_symbols_and_a_changed_table_is_an_error() {
        let out = Mutex::new(Vec::new());
        let emit = |item| out.lock().push(item);
        let origin = |s: &str| s.to_string();
        let mut g = Grouper::new(1, false, usize::MAX, &origin, &emit);
        let one = |g: &mut Grouper, s: &str, d: i64| {
            g.push(
                s.as_bytes(),
                Ok(day(d)),
                None,
                &mut std::iter::once(Ok(1.0)),
            )
        };
        one(&mut g, "A", 0).unwrap();
        one(&mut g, "A", 1).unwrap();
        one(&mut g, "B", 0).unwrap();
        assert!(out.lock().is_empty(), "nothing goes before the counts");
        let counts =
            |v: &[(&str, u64)]| v.iter().map(|&(s, n)| (s.as_bytes().to_vec(), n)).collect();
        g.counts(counts(&[("A", 2), ("B", 2), ("C", 1)])).unwrap();
        assert_eq!(out.lock().len(), 1, "A was complete when its count came");
        one(&mut g, "C", 0).unwrap();
        assert_eq!(out.lock().len(), 2, "C goes with its only row");
        let err = one(&mut g, "A", 2).unwrap_err().to_string();
        assert!(
            err.contains("changed during the import") && err.contains("\"A\""),
            "{err}"
        );

        // More rows already held than the count says: the same error when the counts arrive.
        let mut g = Grouper::new(1, false, usize::MAX, &origin, &emit);
        one(&mut g, "A", 0).unwrap();
        one(&mut g, "A", 1).unwrap();
        assert!(g.counts(counts(&[("A", 1)])).is_err());
    }

    #[test]
    fn rows_return_to_insertion_order_and_bad_dates_fail_their_symbol() {
        // Ids out of order (a table whose primary key is not its insertion order), spilled in between.
        let rows = [
            ("A", 1, 7, 2.0),
            ("A", 1, 3, 1.0),
            ("A", 0, 5, 0.5),
            ("B", -1, 1, 1.0),
            ("B", 0, 2, 1.0),
        ];
        for cap in [0, usize::MAX] {
            let (out, _) = run(&rows, &[], cap);
            let a = out[0].as_ref().unwrap();
            assert_eq!(a.dates, vec![day(1), day(0), day(1)], "cap {cap}");
            assert_eq!(a.columns[0].as_deref(), Some(&[1.0, 0.5, 2.0][..]));
            assert_eq!(out[1].as_ref().unwrap_err().reason, "bad date -1");
        }
    }
}
