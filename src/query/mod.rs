//! `Store::features`: expressions evaluated over many instruments into a [`Frame`] (qlib's `D.features`).

pub mod featureset;
pub mod frame;

use crate::cache::expr::{Lookup, Outcome};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use crate::error::{Error, NameKind, Result};
use crate::expr::{self, Column, Expr, Fields, Query, Scratch};
use crate::query::featureset::FeatureSet;
use crate::query::frame::{Frame, Values};
use crate::store::calendar::Timestamp;
use crate::store::freq::Freq;
use crate::store::layout::validate_name;
use crate::store::{FeatureKey, Store};
use crate::util::memcache::Limit;

/// Which instruments a query covers.
#[derive(Debug, Clone, Copy)]
pub enum Universe<'a> {
    /// The instruments of `instruments/<market>.txt`, each on the rows of its spans.
    Market(&'a str),
    /// These instruments, each on the rows where its fields have data.
    List(&'a [String]),
}

/// A store's fields at one frequency, for the evaluator.
pub(crate) struct StoreFields<'a> {
    pub store: &'a Store,
    pub freq: Freq,
}

impl Fields for StoreFields<'_> {
    fn column(&self, instrument: &str, field: &str) -> Result<Option<Column>> {
        let end = self.store.calendar(self.freq)?.len();
        Ok(self
            .store
            .feature(instrument, field, self.freq)?
            .map(|file| Column::File { file, end }))
    }
}

/// Where an instrument's values go in its block of a row-major frame.
struct Placement<'a> {
    ncol: usize,
    /// Calendar row of the block's first row.
    first: usize,
    /// Output row of each calendar row from `first` (`usize::MAX`: not requested), when the rows have gaps.
    slot: Option<&'a [usize]>,
}

impl Placement<'_> {
    /// Writes `values` of calendar rows `from..` into column `c` of `out`.
    #[inline]
    fn put<T: Copy>(
        &self,
        out: &mut [f32],
        c: usize,
        from: usize,
        values: &[T],
        f32_of: impl Fn(T) -> f32,
    ) {
        let at = from - self.first;
        match self.slot {
            None => out[at * self.ncol + c..]
                .iter_mut()
                .step_by(self.ncol)
                .zip(values)
                .for_each(|(o, &v)| *o = f32_of(v)),
            Some(slot) => {
                for (&i, &v) in slot[at..].iter().zip(values) {
                    if i != usize::MAX {
                        out[i * self.ncol + c] = f32_of(v);
                    }
                }
            }
        }
    }
}

/// Writes `columns` (column-major, `rows` values per column) into `out` (row-major), a tile of rows at a
/// time: a tile's rows stay in the L1 cache while every column writes into them, where writing one column
/// down all rows touches a new cache line per value.
fn transpose(columns: &[f32], rows: usize, out: &mut [f32]) {
    const TILE: usize = 16;
    let ncol = columns.len() / rows.max(1);
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for (row, r) in out[r0 * ncol..r1 * ncol].chunks_exact_mut(ncol).zip(r0..r1) {
            for (o, col) in row.iter_mut().zip(columns.chunks_exact(rows)) {
                *o = col[r];
            }
        }
    }
}

impl Store {
    /// Evaluates `exprs` (qlib expressions, one column each, named as given) for every instrument of
    /// `universe` between `start` and `end` (inclusive; `None`: the calendar's ends). Instruments are evaluated
    /// in parallel; results of an (expression, instrument, rows) already computed by this process come from
    /// the in-memory feature cache. A field that no instrument of the query has is an error (a typo would
    /// otherwise be a column of NaN).
    pub fn features<S: AsRef<str>>(
        &self,
        universe: Universe<'_>,
        exprs: &[S],
        start: Option<Timestamp>,
        end: Option<Timestamp>,
        freq: Freq,
    ) -> Result<Frame> {
        let parsed: Vec<Expr> = exprs
            .iter()
            .map(|e| expr::parse(e.as_ref()))
            .collect::<Result<_>>()?;
        let canonical: Vec<String> = parsed.iter().map(Expr::to_string).collect();
        let query = Query::new(parsed.clone());
        let calendar = self.calendar(freq)?;
        let range = calendar.locate(start, end);
        let columns: Vec<String> = exprs.iter().map(|e| e.as_ref().to_string()).collect();
        // Each instrument's requested rows: span rows for a market, everything (cut to data later) for a list.
        let targets: Vec<(String, Option<Vec<Range<usize>>>)> = match universe {
            Universe::Market(m) => self
                .instruments(m)?
                .iter()
                .map(|(sym, spans)| {
                    let rows = spans
                        .iter()
                        .map(|s| {
                            let r = calendar.locate(Some(s.start), Some(s.end));
                            r.start.max(range.start)..r.end.min(range.end)
                        })
                        .filter(|r| !r.is_empty())
                        .collect();
                    (sym.to_string(), Some(rows))
                })
                .collect(),
            Universe::List(list) => {
                let mut v = list
                    .iter()
                    .map(|s| {
                        validate_name(NameKind::Instrument, s)?;
                        Ok((s.clone(), None))
                    })
                    .collect::<Result<Vec<_>>>()?;
                v.sort_by(|a, b| a.0.cmp(&b.0));
                v.dedup_by(|a, b| a.0 == b.0);
                v
            }
        };
        self.check_fields(&parsed, exprs, targets.iter().map(|t| t.0.as_str()), freq)?;
        let fields = StoreFields { store: self, freq };
        // Rows of each instrument first, so the frame is allocated once and filled in place in parallel.
        let spans: Vec<Vec<Range<usize>>> = targets
            .par_iter()
            .map(|(inst, spans)| {
                let spans = match spans {
                    Some(s) => s.clone(),
                    None => match expr::domain(&fields, inst, &parsed)? {
                        Some(d) => std::iter::once(d.start.max(range.start)..d.end.min(range.end))
                            .collect(),
                        None => Vec::new(),
                    },
                };
                Ok(spans.into_iter().filter(|r| !r.is_empty()).collect())
            })
            .collect::<Result<_>>()?;
        let ncol = parsed.len();
        let counts: Vec<usize> = spans
            .iter()
            .map(|s| s.iter().map(|r| r.len()).sum())
            .collect();
        let mut values = Values::nan(counts.iter().sum::<usize>() * ncol);
        let mut slices = Vec::with_capacity(counts.len());
        let mut rest = values.as_mut_slice();
        for &c in &counts {
            let (head, tail) = rest.split_at_mut(c * ncol);
            slices.push(head);
            rest = tail;
        }
        // A query whose results cannot all fit in the feature cache would only evict everything, itself
        // included, before anyone asks again: such scans bypass it (as in scan-resistant buffer pools).
        let cells = counts.iter().filter(|&&c| c > 0).count() * ncol;
        let use_cache = match self.features.limit() {
            Limit::Entries(n) => cells <= n,
            Limit::Bytes(b) => {
                let rows: usize = spans
                    .iter()
                    .map(|s| s.first().zip(s.last()).map_or(0, |(a, z)| z.end - a.start))
                    .sum();
                rows * ncol * 4 <= b
            }
        };
        targets
            .par_iter()
            .zip(spans.par_iter())
            .zip(slices.into_par_iter())
            .try_for_each_init(
                || (Scratch::default(), Vec::new()),
                |(scratch, columns), (((inst, _), spans), out)| -> Result<()> {
                    let (Some(first), Some(last)) = (spans.first(), spans.last()) else {
                        return Ok(());
                    };
                    let hull = first.start..last.end;
                    // Output row of each calendar row of the hull, when spans leave gaps in it.
                    let slot = (spans.len() > 1).then(|| {
                        let mut slot = vec![usize::MAX; hull.len()];
                        for (i, r) in spans.iter().flat_map(|r| r.clone()).enumerate() {
                            slot[r - hull.start] = i;
                        }
                        slot
                    });
                    let at = Placement {
                        ncol,
                        first: hull.start,
                        slot: slot.as_deref(),
                    };
                    if use_cache {
                        let cols =
                            self.evaluate_cached(&fields, inst, &query, &canonical, hull.clone())?;
                        for (c, col) in cols.iter().enumerate() {
                            at.put(out, c, hull.start, col, |v| v);
                        }
                    } else if self.expr_cache.is_some() {
                        let all: Vec<usize> = (0..ncol).collect();
                        let cols =
                            self.columns(&fields, inst, &query, &canonical, hull.clone(), &all)?;
                        for (c, col) in cols.iter().enumerate() {
                            at.put(out, c, hull.start, col, |v| v);
                        }
                    } else if at.slot.is_none() {
                        // Columns first (contiguous writes), then one pass into the frame's rows.
                        let len = hull.len();
                        columns.clear();
                        columns.resize(ncol * len, f32::NAN);
                        query.evaluate_into(
                            &fields,
                            inst,
                            hull.clone(),
                            scratch,
                            |c, from, v| {
                                let at = c * len + from - hull.start;
                                columns[at..at + v.len()]
                                    .iter_mut()
                                    .zip(v)
                                    .for_each(|(o, &x)| *o = x as f32);
                            },
                        )?;
                        transpose(columns, len, out);
                    } else {
                        query.evaluate_into(
                            &fields,
                            inst,
                            hull.clone(),
                            scratch,
                            |c, from, v| at.put(out, c, from, v, |x| x as f32),
                        )?;
                    }
                    Ok(())
                },
            )?;
        let index = targets
            .into_iter()
            .zip(spans)
            .map(|((inst, _), spans)| (inst, spans.into_iter().flatten().collect()))
            .collect();
        Ok(Frame::from_parts(columns, index, calendar, values))
    }

    /// The features of `set` this query computes: all but the optional ones whose fields no instrument of
    /// `universe` has.
    pub fn feature_set_columns<'s>(
        &self,
        universe: Universe<'_>,
        set: &'s FeatureSet,
        freq: Freq,
    ) -> Result<Vec<&'s crate::query::featureset::Feature>> {
        let symbols: Vec<String> = match universe {
            Universe::Market(m) => self.instruments(m)?.symbols().map(str::to_owned).collect(),
            Universe::List(l) => l.to_vec(),
        };
        let mut chosen = Vec::new();
        for f in &set.features {
            if f.optional {
                let e = expr::parse(&f.expr)?;
                let mut present = true;
                for field in e.fields() {
                    let mut any = false;
                    for s in &symbols {
                        if self.feature(s, field, freq)?.is_some() {
                            any = true;
                            break;
                        }
                    }
                    present &= any;
                }
                if !present {
                    continue;
                }
            }
            chosen.push(f);
        }
        Ok(chosen)
    }

    /// Evaluates a feature set ([`Store::features`] with the set's expressions, columns named by feature).
    /// Optional features whose fields no instrument of the query has are left out.
    pub fn feature_set(
        &self,
        universe: Universe<'_>,
        set: &FeatureSet,
        start: Option<Timestamp>,
        end: Option<Timestamp>,
        freq: Freq,
    ) -> Result<Frame> {
        let chosen = self.feature_set_columns(universe, set, freq)?;
        let exprs: Vec<&str> = chosen.iter().map(|f| f.expr.as_str()).collect();
        let mut frame = self.features(universe, &exprs, start, end, freq)?;
        frame.rename_columns(chosen.iter().map(|f| f.name.clone()).collect());
        Ok(frame)
    }

    /// Evaluates through the feature cache space: cached columns are reused, the rest evaluated together.
    fn evaluate_cached(
        &self,
        fields: &StoreFields<'_>,
        instrument: &str,
        query: &Query,
        canonical: &[String],
        rows: Range<usize>,
    ) -> Result<Vec<Arc<Vec<f32>>>> {
        let key = |c: &str| FeatureKey {
            expr: c.to_string(),
            instrument: instrument.to_uppercase(),
            rows: (rows.start, rows.end),
            freq: fields.freq,
        };
        let mut out: Vec<Option<Arc<Vec<f32>>>> = canonical
            .iter()
            .map(|c| self.features.get(&key(c)))
            .collect();
        let missing: Vec<usize> = (0..out.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let values =
                self.columns(fields, instrument, query, canonical, rows.clone(), &missing)?;
            for (&i, v) in missing.iter().zip(values) {
                let v = Arc::new(v);
                self.features.insert(key(&canonical[i]), v.clone());
                out[i] = Some(v);
            }
        }
        Ok(out.into_iter().map(|v| v.expect("filled above")).collect())
    }

    /// The values of the query's expressions `which` for `instrument` over `rows`: from the disk expression
    /// cache when the store uses one (current entries whole, behind ones for the rows they have, and in write
    /// mode building what is missing first), the rest evaluated, grouped by the first row to compute.
    fn columns(
        &self,
        fields: &StoreFields<'_>,
        instrument: &str,
        query: &Query,
        canonical: &[String],
        rows: Range<usize>,
        which: &[usize],
    ) -> Result<Vec<Vec<f32>>> {
        let evaluate_all = || {
            if which.len() == query.exprs().len() {
                query.evaluate(fields, instrument, rows.clone())
            } else {
                let exprs: Vec<Expr> = which.iter().map(|&i| query.exprs()[i].clone()).collect();
                expr::evaluate(fields, instrument, &exprs, rows.clone())
            }
        };
        let Some((disk, mode)) = &self.expr_cache else {
            return evaluate_all();
        };
        if *mode == crate::cache::expr::Mode::Read && !disk.has_instrument(instrument) {
            // Nothing cached for this instrument: one look at its directory, not one per expression.
            let computed = which
                .iter()
                .filter(|&&c| !matches!(query.exprs()[c], Expr::Field(_)))
                .count();
            disk.count_misses(computed);
            return evaluate_all();
        }
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); which.len()];
        let mut compute: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (k, &c) in which.iter().enumerate() {
            let e = &query.exprs()[c];
            if matches!(e, Expr::Field(_)) {
                compute.entry(rows.start).or_default().push(k);
                continue;
            }
            let look = || {
                disk.lookup(
                    self,
                    &canonical[c],
                    e,
                    instrument,
                    fields.freq,
                    rows.clone(),
                )
            };
            let mut found = look()?;
            if *mode == crate::cache::expr::Mode::Write && !matches!(found, Lookup::Hit(_)) {
                // qlib's read-through: build or bring the entry forward under its lock, then read it.
                let outcome = disk.warm(self, e, instrument, fields.freq)?;
                if matches!(outcome, Outcome::Built | Outcome::Appended) {
                    disk.count_write();
                }
                found = look()?;
            }
            match found {
                Lookup::Hit(col) => out[k] = col,
                Lookup::Partial { values, from } => {
                    out[k] = values;
                    compute.entry(from).or_default().push(k);
                }
                Lookup::Miss => compute.entry(rows.start).or_default().push(k),
            }
        }
        if compute.len() == 1
            && compute
                .get(&rows.start)
                .is_some_and(|ks| ks.len() == which.len())
        {
            // Nothing came from the disk: the whole query's plan (shared sub-expressions) computes it.
            return evaluate_all();
        }
        for (from, ks) in compute {
            let exprs: Vec<Expr> = ks
                .iter()
                .map(|&k| query.exprs()[which[k]].clone())
                .collect();
            let cols = expr::evaluate(fields, instrument, &exprs, from..rows.end)?;
            for (&k, col) in ks.iter().zip(cols) {
                let head = &mut out[k];
                head.resize(from - rows.start, f32::NAN);
                head.extend_from_slice(&col);
            }
        }
        Ok(out)
    }

    /// Fails on a field that none of `instruments` has a file for.
    fn check_fields<'a, S: AsRef<str>>(
        &self,
        parsed: &[Expr],
        texts: &[S],
        instruments: impl Iterator<Item = &'a str> + Clone,
        freq: Freq,
    ) -> Result<()> {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, e) in parsed.iter().enumerate() {
            for f in e.fields() {
                seen.entry(f).or_insert(i);
            }
        }
        for (field, i) in seen {
            let mut any = false;
            let mut example = None;
            for inst in instruments.clone() {
                if self.feature(inst, field, freq)?.is_some() {
                    any = true;
                    break;
                }
                example.get_or_insert(inst);
            }
            if any {
                continue;
            }
            let text = texts[i].as_ref();
            let pos = text.to_lowercase().find(&format!("${field}")).unwrap_or(0);
            let available = match example {
                Some(inst) => {
                    let fields = self.fields_of(inst, freq)?;
                    if fields.is_empty() {
                        format!("{inst} has no fields at {freq}")
                    } else {
                        format!("fields of {inst}: {}", fields.join(", "))
                    }
                }
                None => "the query has no instruments".to_string(),
            };
            return Err(Error::Expr {
                expr: text.to_string(),
                pos,
                reason: format!(
                    "unknown field ${field}: no instrument of the query has features/<instrument>/{field}.{freq}.bin ({available})"
                ),
            });
        }
        Ok(())
    }

    /// The fields stored for an instrument at `freq`, sorted.
    pub fn fields_of(&self, instrument: &str, freq: Freq) -> Result<Vec<String>> {
        let dir = crate::store::layout::instrument_dir(self.root(), instrument)?;
        crate::store::fsio::list_names(&dir, &format!(".{freq}.bin"))
    }
}
