//! Evaluation of an expression for one instrument over a range of calendar rows.
//!
//! Values are computed in f64 and returned as f32. The series of an instrument starts at the first row any of
//! the fields it reads has a value (the hull of their stored ranges) and ends at the last; rows outside it do
//! not exist (rolling windows are cut there, as in qlib where they are absent from the pandas index). The
//! value on a row depends only on the stored values, never on the rows requested: evaluation starts
//! [`Expr::ext_window`] rows before the first requested row (or at the series' first row for EMA and expanding
//! windows) and the kernels are start-independent (see `kernels`).

use super::{STACK_RED_ZONE, STACK_SEGMENT};
use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

// The per-node maps (looked up for every node of every instrument) hash node ids, addresses and row ranges,
// keys that come from the query itself: Fx hashing, where SipHash cost 1.3% of Alpha158's time.
use rustc_hash::{FxHashMap, FxHashSet};

use super::ast::{Binary, Expr, Extent, Pair, Rolling, Unary, Window};
use super::kernels::lanes::{Interleaved, LANES, rolling_lanes_best, stat, windows_best};
use super::kernels::{
    self, CoMoments, Extreme, Moments, OrderStat, Spread, Sum, Weighted, flat, rolling,
    rolling_stepped,
};
use crate::error::Result;
use crate::store::bin::FeatureFile;

/// Stored values of one field of one instrument: `values()[0]` is calendar row `start()`.
#[derive(Clone)]
pub enum Column {
    /// A feature file, cut at calendar row `end` (values past the calendar are not published yet).
    File {
        file: Arc<FeatureFile>,
        end: usize,
    },
    Memory {
        start: usize,
        values: Arc<[f32]>,
    },
}

impl Column {
    pub fn start(&self) -> usize {
        match self {
            Column::File { file, .. } => file.start(),
            Column::Memory { start, .. } => *start,
        }
    }

    pub fn values(&self) -> &[f32] {
        match self {
            Column::File { file, end } => {
                let v = file.values();
                &v[..v.len().min(end.saturating_sub(file.start()))]
            }
            Column::Memory { values, .. } => values,
        }
    }

    fn rows(&self) -> Range<usize> {
        self.start()..self.start() + self.values().len()
    }
}

/// Where evaluation reads stored fields (a store, or memory in tests).
pub trait Fields: Sync {
    /// The stored values of `field` for `instrument`, `None` when there are none.
    fn column(&self, instrument: &str, field: &str) -> Result<Option<Column>>;
}

/// A store's fields at one frequency: what the query layer and the expression cache evaluate over.
pub struct StoreFields<'a> {
    pub store: &'a crate::store::Store,
    pub freq: crate::store::freq::Freq,
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

/// In-memory fields: `(instrument, field) -> (start row, values)`.
impl Fields for HashMap<(String, String), (usize, Vec<f32>)> {
    fn column(&self, instrument: &str, field: &str) -> Result<Option<Column>> {
        Ok(self
            .get(&(instrument.to_string(), field.to_string()))
            .map(|(start, v)| Column::Memory {
                start: *start,
                values: v.as_slice().into(),
            }))
    }
}

/// Evaluates `exprs` for `instrument` on calendar `rows`: one f32 vector per expression, `rows.len()` long,
/// NaN where the series has no value. (For many instruments, build a [`Query`] once.)
pub fn evaluate<F: Fields + ?Sized>(
    fields: &F,
    instrument: &str,
    exprs: &[Expr],
    rows: Range<usize>,
) -> Result<Vec<Vec<f32>>> {
    Query::new(exprs.to_vec()).evaluate(fields, instrument, rows)
}

/// Expressions prepared for evaluation over many instruments: every distinct sub-expression (by canonical
/// text) gets one id, so parts shared between expressions (`$close`, `Ref($close,1)`, `Mean($close,5)`) are
/// computed once per instrument, and the canonical text is built once per query rather than per instrument.
pub struct Query {
    exprs: Vec<Expr>,
    plan: Plan,
    /// qlib's compatible mode ([`Query::qlib_compatible`]): the query's first row, from which qlib's extended
    /// windows are measured; `None`: qstore's rules.
    qlib_start: Option<usize>,
    /// Whether an expression reads another instrument (`Mask`, `ChangeInstrument`).
    other_instruments: bool,
    /// The fields the expressions read.
    fields: Vec<String>,
    /// The first expression deeper than the parser allows, with its depth: evaluating it is an error (every
    /// walk of the tree recurses), and nothing walks it.
    too_deep: Option<(usize, usize)>,
}

/// What an evaluation may share, from the canonical texts of a query's nodes.
struct Plan {
    /// Node address -> id of its canonical text, for the nodes that are shared or grouped.
    ids: FxHashMap<usize, u32>,
    /// Ids computed more than once: their results are kept (copied into the memo).
    shared: FxHashSet<u32>,
    /// Window statistics of one kind over the same input and window (`Quantile($close,20,0.8)`,
    /// `Quantile($close,20,0.2)` and `Rank($close,20)`; `Slope`, `Rsquare` and `Resi`; `Max` and `IdxMax`):
    /// each member's id -> every member and its statistic, computed together in one pass over the windows.
    groups: FxHashMap<u32, Arc<[(u32, Stat)]>>,
}

/// A statistic that can share its pass over the windows with others of its kind.
#[derive(Debug, Clone, Copy)]
enum Stat {
    /// Kept in one sorted window.
    Order(OrderStat),
    /// Slope, Rsquare or Resi: one regression on the row.
    Trend(Rolling),
    /// Max and IdxMax, or Min and IdxMin: one extreme and its row.
    Extreme(Rolling),
}

impl Stat {
    /// Statistics of one kind share a pass.
    fn kind(&self) -> &'static str {
        match self {
            Stat::Order(_) => "order",
            Stat::Trend(_) => "trend",
            Stat::Extreme(Rolling::Max | Rolling::IdxMax) => "max",
            Stat::Extreme(_) => "min",
        }
    }
}

/// The statistic a node computes, and the key of its pass: kind, input and window.
fn window_stat(e: &Expr) -> Option<(Stat, String)> {
    let (stat, x, w) = match e {
        Expr::Quantile(x, w, q) => (Stat::Order(OrderStat::Quantile(*q)), x, w),
        Expr::Rolling(Rolling::Rank, x, w) => (Stat::Order(OrderStat::Rank), x, w),
        Expr::Rolling(Rolling::Med, x, w) => (Stat::Order(OrderStat::Median), x, w),
        Expr::Rolling(op @ (Rolling::Slope | Rolling::Rsquare | Rolling::Resi), x, w) => {
            (Stat::Trend(*op), x, w)
        }
        Expr::Rolling(
            op @ (Rolling::Max | Rolling::IdxMax | Rolling::Min | Rolling::IdxMin),
            x,
            w,
        ) => (Stat::Extreme(*op), x, w),
        _ => return None,
    };
    Some((stat, format!("{}|{x}|{w:?}", stat.kind())))
}

impl Query {
    pub fn new(exprs: Vec<Expr>) -> Query {
        let too_deep = exprs
            .iter()
            .map(Expr::depth)
            .enumerate()
            .find(|&(_, d)| d > super::parse::MAX_DEPTH);
        if too_deep.is_some() {
            let plan = Plan {
                ids: Default::default(),
                shared: Default::default(),
                groups: Default::default(),
            };
            return Query {
                exprs,
                plan,
                qlib_start: None,
                other_instruments: false,
                fields: Vec::new(),
                too_deep,
            };
        }
        /// Interns `e`; its children are walked only at its first occurrence, as only that one computes them.
        fn walk<'e>(
            e: &'e Expr,
            texts: &mut HashMap<String, (u32, u32)>,
            ids: &mut FxHashMap<usize, u32>,
            first: &mut Vec<&'e Expr>,
        ) {
            let n = texts.len() as u32;
            let (id, uses) = texts.entry(e.to_string()).or_insert((n, 0));
            *uses += 1;
            ids.insert(e as *const Expr as usize, *id);
            if *uses == 1 {
                first.push(e);
                e.children().for_each(|c| walk(c, texts, ids, first));
            }
        }
        let (mut texts, mut ids, mut first) = (HashMap::new(), FxHashMap::default(), Vec::new());
        for e in &exprs {
            walk(e, &mut texts, &mut ids, &mut first);
        }
        let shared: FxHashSet<u32> = texts
            .values()
            .filter(|&&(_, uses)| uses > 1)
            .map(|&(id, _)| id)
            .collect();
        // Window statistics by (kind, input, window), in the order first met.
        let mut by_window: Vec<(String, Vec<(u32, Stat)>)> = Vec::new();
        for e in &first {
            if let Some((stat, key)) = window_stat(e) {
                let id = ids[&(*e as *const Expr as usize)];
                match by_window.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, members)) => members.push((id, stat)),
                    None => by_window.push((key, vec![(id, stat)])),
                }
            }
        }
        let mut groups = FxHashMap::default();
        for (_, members) in by_window.into_iter().filter(|(_, m)| m.len() > 1) {
            let members: Arc<[(u32, Stat)]> = members.into();
            for &(id, _) in members.iter() {
                groups.insert(id, members.clone());
            }
        }
        ids.retain(|_, id| shared.contains(id) || groups.contains_key(id));
        let plan = Plan {
            ids,
            shared,
            groups,
        };
        let other_instruments = first.iter().any(|e| matches!(e, Expr::Instrument(..)));
        let mut fields: Vec<String> = first
            .iter()
            .filter_map(|e| match e {
                Expr::Field(f) => Some(f.clone()),
                _ => None,
            })
            .collect();
        fields.sort();
        fields.dedup();
        Query {
            exprs,
            plan,
            qlib_start: None,
            other_instruments,
            fields,
            too_deep: None,
        }
    }

    /// These expressions with qlib 0.9.7's own values (docs/expressions.md, "qlib-compatible mode") for a
    /// query whose first row is `start` (qlib's `start_index`; for every instrument the same, whatever its
    /// listing): each expression is evaluated from its qlib extended window before `start`, so EMA,
    /// exponential and expanding windows, `Ref(x, 0)` and `Delta` start there as in qlib, and WMA,
    /// IdxMax/IdxMin and Slope/Rsquare/Resi compute qlib's formulas. Expressions without such operators have
    /// the same values as in qstore's mode.
    pub fn qlib_compatible(mut self, start: usize) -> Query {
        self.qlib_start = Some(start);
        self
    }

    /// Other expressions evaluated by the same rules (qlib's compatible mode from the same start, or not).
    pub fn others(&self, exprs: Vec<Expr>) -> Query {
        let q = Query::new(exprs);
        match self.qlib_start {
            Some(start) => q.qlib_compatible(start),
            None => q,
        }
    }

    /// Whether this query computes qlib's values ([`Query::qlib_compatible`]).
    pub fn is_qlib_compatible(&self) -> bool {
        self.qlib_start.is_some()
    }

    pub fn exprs(&self) -> &[Expr] {
        &self.exprs
    }

    /// [`evaluate`] of these expressions.
    pub fn evaluate<F: Fields + ?Sized>(
        &self,
        fields: &F,
        instrument: &str,
        rows: Range<usize>,
    ) -> Result<Vec<Vec<f32>>> {
        let mut out = vec![vec![f32::NAN; rows.len()]; self.exprs.len()];
        self.evaluate_into(
            fields,
            instrument,
            rows.clone(),
            &mut Scratch::default(),
            |k, from, v| {
                let at = from - rows.start;
                out[k][at..at + v.len()]
                    .iter_mut()
                    .zip(v)
                    .for_each(|(o, &x)| *o = x as f32);
            },
        )?;
        Ok(out)
    }

    /// Evaluates for one instrument and hands each expression's values inside its series to
    /// `sink(expression index, first calendar row, values)`; rows without a value are not reported. A column
    /// at a time, so the caller's placement loop is not a call per value. `scratch` carries
    /// buffers from one call to the next (one per thread), so evaluating thousands of instruments does not
    /// allocate and free megabytes per instrument.
    pub fn evaluate_into<F: Fields + ?Sized>(
        &self,
        fields: &F,
        instrument: &str,
        rows: Range<usize>,
        scratch: &mut Scratch,
        mut sink: impl FnMut(usize, usize, &[f64]),
    ) -> Result<()> {
        self.evaluate_group(fields, &[instrument], rows, scratch, |_, k, from, v| {
            sink(k, from, v)
        })?;
        Ok(())
    }

    /// How many instruments [`Query::evaluate_lanes_into`] evaluates together.
    pub const LANES: usize = LANES;

    /// [`Query::evaluate_into`] for [`Query::LANES`] instruments at once, in lockstep: their series side by
    /// side, so the window kernels add, merge and finish the windows of all of them with vector instructions.
    /// Every value is the one [`Query::evaluate_into`] gives (the same operations in the same order per
    /// instrument). `sink(lane, expression index, first calendar row, values)`.
    ///
    /// Returns `false`, having called `sink` for nothing, when the group cannot share lanes: qlib's compatible
    /// mode, an expression that reads another instrument, or fields not stored over the same rows for every
    /// instrument of the group. The caller then evaluates them one at a time.
    pub fn evaluate_lanes_into<F: Fields + ?Sized>(
        &self,
        fields: &F,
        group: &[&str],
        rows: Range<usize>,
        scratch: &mut Scratch,
        sink: impl FnMut(usize, usize, usize, &[f64]),
    ) -> Result<bool> {
        if group.len() != LANES
            || self.qlib_start.is_some()
            || self.other_instruments
            || self.too_deep.is_some()
        {
            return Ok(false);
        }
        self.evaluate_group(fields, group, rows, scratch, sink)
    }

    /// Evaluates `group` (one instrument, or [`LANES`] in lanes); `false` when lanes do not apply.
    fn evaluate_group<F: Fields + ?Sized>(
        &self,
        fields: &F,
        group: &[&str],
        rows: Range<usize>,
        scratch: &mut Scratch,
        mut sink: impl FnMut(usize, usize, usize, &[f64]),
    ) -> Result<bool> {
        if let Some((k, depth)) = self.too_deep {
            return Err(crate::error::Error::Expr {
                expr: format!("expression #{k}"),
                pos: 0,
                reason: format!(
                    "it is {depth} operators deep; at most {} can be evaluated (split it into named features)",
                    super::parse::MAX_DEPTH
                ),
            });
        }
        let exprs = &self.exprs;
        let instrument = group[0];
        let mut ev = Evaluator::new(fields, Some(&self.plan), group);
        if group.len() > 1 && !same_rows(&mut ev, group, &self.fields)? {
            return Ok(false);
        }
        let width = ev.width();
        ev.qlib = self.qlib_start.is_some();
        // Each expression's domain is asked once here: not worth remembering (decided again below).
        ev.remember_domains = false;
        ev.pool = std::mem::take(&mut scratch.pool);
        // Each expression's own series, the rows its requested rows need, and whether those rows are its own
        // (qlib's start-dependent values) rather than any range that holds them.
        let mut plans = Vec::with_capacity(exprs.len());
        for (k, e) in exprs.iter().enumerate() {
            let Some(domain) = ev.domain(e, instrument)? else {
                plans.push(None);
                continue;
            };
            let plan = match self.qlib_start {
                Some(start) if e.differs_in_qlib() => {
                    // qlib loads [start - lft, end + rght] for each expression on its own.
                    let (Some(left), right) = e.qlib_ext_window() else {
                        return Err(crate::error::Error::Expr {
                            expr: e.to_string(),
                            pos: 0,
                            reason: format!(
                                "expression #{k}: qlib cannot evaluate a Corr or Cov over an expanding window \
                                 (N = 0: its extended window is -inf); give a window, or use --compat none"
                            ),
                        });
                    };
                    let qs = domain
                        .start
                        .max(start.min(rows.start).saturating_sub(left as usize));
                    let qe = domain.end.min(rows.end.saturating_add(right as usize));
                    (domain, qs, qe.max(qs), true)
                }
                _ => {
                    let w = e.ext_window();
                    let qs = match w.left {
                        Extent::All => domain.start,
                        Extent::Rows(l) => domain.start.max(rows.start.saturating_sub(l as usize)),
                    };
                    let qe = domain.end.min(rows.end.saturating_add(w.right as usize));
                    (domain, qs, qe.max(qs), false)
                }
            };
            plans.push(Some(plan));
        }
        // Every field this instrument has stored over the same rows, and no other instrument read: then every
        // operand's series is its node's, and aligning them is a no-op not worth a lookup per node.
        ev.aligned = !self.other_instruments && {
            let mut rows = ev.columns.values().flatten().map(Column::rows);
            let first = rows.next();
            rows.all(|r| Some(r) == first)
        };
        ev.remember_domains = !ev.aligned;
        // One evaluation range for all: results do not depend on where evaluation starts (as long as it is inside
        // the series), so shared sub-expressions (`$close`, `Ref($close,1)`, ...) are computed once. (Not for
        // qlib's start-dependent values, which keep their own range.)
        let shared = || plans.iter().flatten().filter(|p| !p.3);
        // A column's values lane by lane (they are interleaved).
        let mut lanes = Vec::new();
        let common_qs = shared().map(|p| p.1).min().unwrap_or(0);
        let common_qe = shared().map(|p| p.2).max().unwrap_or(0);
        for (k, (e, plan)) in exprs.iter().zip(&plans).enumerate() {
            // Rows outside the expression's own series are NaN (absent in qlib's pandas index), even when another
            // column of the same query has values there.
            let Some((domain, own_qs, own_qe, own)) = plan.clone() else {
                continue;
            };
            let (qs, qe) = if own {
                (own_qs, own_qe)
            } else {
                let qs = common_qs.max(domain.start);
                (qs, common_qe.min(domain.end).max(qs))
            };
            let values = ev.eval(e, instrument, qs, qe - qs)?;
            let from = rows.start.max(qs).max(domain.start);
            let to = rows.end.min(qe).min(domain.end);
            if from < to {
                match &values {
                    Val::Const(c) => {
                        let v = vec![*c; to - from];
                        (0..width).for_each(|l| sink(l, k, from, &v));
                    }
                    Val::Series { v, .. } if width == 1 => sink(0, k, from, &v[from - qs..to - qs]),
                    Val::Series { v, .. } => {
                        deinterleave(
                            &v[(from - qs) * width..(to - qs) * width],
                            width,
                            &mut lanes,
                        );
                        for (l, lane) in lanes.chunks_exact(to - from).enumerate() {
                            sink(l, k, from, lane);
                        }
                    }
                }
            }
            ev.recycle(values);
        }
        scratch.pool = ev.finish();
        Ok(true)
    }
}

/// Whether every field the query reads is stored over one and the same range of rows (or not at all) for
/// every instrument of `group`: then their series line up row for row, and every node's series is the same
/// range for all of them.
fn same_rows<F: Fields + ?Sized>(
    ev: &mut Evaluator<'_, F>,
    group: &[&str],
    fields: &[String],
) -> Result<bool> {
    let mut span: Option<Range<usize>> = None;
    for f in fields {
        let mut stored = None;
        for &inst in group {
            let rows = ev.column(inst, f)?.map(|c| c.rows());
            if *stored.get_or_insert(rows.is_some()) != rows.is_some() {
                return Ok(false);
            }
            if let Some(rows) = rows
                && *span.get_or_insert(rows.clone()) != rows
            {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The rows where the series of `exprs` for `instrument` exist: the hull of the stored ranges of the fields
/// they read; `None` when none of them has data.
pub fn domain<F: Fields + ?Sized>(
    fields: &F,
    instrument: &str,
    exprs: &[Expr],
) -> Result<Option<Range<usize>>> {
    let group = [instrument];
    let mut ev = Evaluator::new(fields, None, &group);
    let mut d = None;
    for e in exprs {
        d = hull(d, ev.domain(e, instrument)?);
    }
    Ok(d)
}

fn hull(a: Option<Range<usize>>, b: Option<Range<usize>>) -> Option<Range<usize>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.start.min(b.start)..a.end.max(b.end)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// A node's value: a constant stays scalar until something needs a series.
///
/// `narrow` marks series that qlib holds as float32 (raw fields, element-wise results of float32 inputs,
/// booleans): pandas and numpy compute element-wise operators on those in float32, so the result is rounded
/// to float32 here too, and numbers match qlib's. Rolling operators give float64 in pandas and here.
#[derive(Clone)]
enum Val {
    Const(f64),
    Series { v: Vec<f64>, narrow: bool },
}

impl Val {
    fn into_vec(self, len: usize) -> Vec<f64> {
        match self {
            Val::Const(c) => vec![c; len],
            Val::Series { v, .. } => v,
        }
    }

    fn wide(v: Vec<f64>) -> Val {
        Val::Series { v, narrow: false }
    }

    fn narrow(v: Vec<f64>) -> Val {
        Val::Series { v, narrow: true }
    }
}

/// Buffers kept between evaluations (see [`Query::evaluate_into`]).
#[derive(Default)]
pub struct Scratch {
    pool: Vec<Vec<f64>>,
}

/// Buffers kept at most, so a huge query does not pin its peak memory. Only `nans` and `copy` draw on the
/// pool; the kernels allocate their outputs, so buffers beyond what those need go back to the allocator, where
/// the kernels' next allocations reuse them. (With 4,096, the pool kept everything an instrument freed and
/// every kernel output touched fresh pages: ten expressions on 5,000 instruments took 35,000 page faults
/// instead of 27,000.)
const POOL_MAX: usize = 64;

/// Rounds to float32 when qlib's dtype would be float32.
fn round_if(narrow: bool, x: f64) -> f64 {
    if narrow { x as f32 as f64 } else { x }
}

/// (node id, instrument text address, first row, number of rows).
type MemoKey = (u32, usize, usize, usize);

struct Evaluator<'a, F: ?Sized> {
    fields: &'a F,
    /// The instruments evaluated together, one lane each ([`Query::evaluate_lanes_into`]); a series holds
    /// [`Evaluator::width`] values per row, lane `l`'s at `row * width + l`. One instrument: the plain layout.
    group: &'a [&'a str],
    columns: FxHashMap<(String, String), Option<Column>>,
    /// What may be shared ([`Query`]); without it nothing is memoised.
    plan: Option<&'a Plan>,
    /// Values of the sub-expressions evaluated so far.
    memo: FxHashMap<MemoKey, Val>,
    /// Free buffers.
    pool: Vec<Vec<f64>>,
    /// qlib's formulas for WMA, IdxMax/IdxMin and Slope/Rsquare/Resi ([`Query::qlib_compatible`]).
    qlib: bool,
    /// [`Evaluator::domain`] of the nodes asked so far, by node address and instrument.
    domains: FxHashMap<(usize, usize), Option<Range<usize>>>,
    /// Every operand's series is known to be its node's ([`Evaluator::operand`] need not look).
    aligned: bool,
    /// Whether [`Evaluator::domain`] keeps what it finds in `domains`: only when operands will ask again.
    remember_domains: bool,
}

fn truthy(x: f64) -> bool {
    // numpy's bool(): anything but 0, NaN included.
    x != 0.0
}

fn bool_f(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

impl<'a, F: Fields + ?Sized> Evaluator<'a, F> {
    fn new(fields: &'a F, plan: Option<&'a Plan>, group: &'a [&'a str]) -> Self {
        Evaluator {
            fields,
            group,
            columns: FxHashMap::default(),
            plan,
            memo: FxHashMap::default(),
            pool: Vec::new(),
            qlib: false,
            domains: FxHashMap::default(),
            aligned: false,
            remember_domains: true,
        }
    }

    /// Values per row of a series: one per instrument of the group.
    fn width(&self) -> usize {
        self.group.len()
    }

    /// A buffer of `len` NaNs, from the pool when it has one.
    fn nans(&mut self, len: usize) -> Vec<f64> {
        match self.pool.pop() {
            Some(mut v) => {
                v.clear();
                v.resize(len, f64::NAN);
                v
            }
            None => vec![f64::NAN; len],
        }
    }

    fn copy(&mut self, src: &[f64]) -> Vec<f64> {
        let mut v = self.pool.pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(src);
        v
    }

    fn recycle(&mut self, v: Val) {
        if let Val::Series { v, .. } = v
            && self.pool.len() < POOL_MAX
        {
            self.pool.push(v);
        }
    }

    /// Returns every buffer (memoised values included) for the next evaluation.
    fn finish(mut self) -> Vec<Vec<f64>> {
        let memo = std::mem::take(&mut self.memo);
        for (_, v) in memo {
            self.recycle(v);
        }
        self.pool
    }

    fn eval(&mut self, e: &Expr, inst: &str, base: usize, len: usize) -> Result<Val> {
        // Each level of the tree costs a few frames (tens of KiB in a debug build): a deep expression on a
        // worker thread's 2 MiB stack continues on a new segment instead of overflowing.
        stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || {
            self.eval_node(e, inst, base, len)
        })
    }

    fn eval_node(&mut self, e: &Expr, inst: &str, base: usize, len: usize) -> Result<Val> {
        if let Expr::Const(c) = e {
            return Ok(Val::Const(*c));
        }
        let (Some(plan), Some((key, shared))) = (self.plan, self.memo_key(e, inst, base, len))
        else {
            return self.compute(e, inst, base, len);
        };
        let id = key.0;
        if !shared && let Some(v) = self.memo.remove(&key) {
            // Left by a sibling's pass of the same group, for this one use.
            return Ok(v);
        }
        if let Some(hit) = self.memo.get(&key) {
            return Ok(match hit {
                Val::Const(c) => Val::Const(*c),
                Val::Series { v, narrow } => {
                    // Disjoint fields: the memo stays borrowed while a pooled buffer takes the copy.
                    let mut out = self.pool.pop().unwrap_or_default();
                    out.clear();
                    out.extend_from_slice(v);
                    Val::Series {
                        v: out,
                        narrow: *narrow,
                    }
                }
            });
        }
        let v = match plan.groups.get(&id) {
            Some(members) => {
                let (Expr::Quantile(x, w, _) | Expr::Rolling(_, x, w)) = e else {
                    unreachable!("only window statistics are grouped")
                };
                let stats: Vec<Stat> = members.iter().map(|m| m.1).collect();
                let (qlib, width) = (self.qlib, self.width());
                let outs = self.with_series(x, inst, base, len, |xs| {
                    if width == 1 {
                        window_stats(&stats, xs, base, *w, qlib)
                    } else {
                        window_stats_lanes(&stats, xs, base, *w)
                    }
                })?;
                let mut mine = None;
                for (&(m, _), out) in members.iter().zip(outs) {
                    if m == id {
                        mine = Some(out);
                    } else {
                        self.memo.insert((m, key.1, base, len), Val::wide(out));
                    }
                }
                Val::wide(mine.expect("a group holds its members"))
            }
            None => self.compute(e, inst, base, len)?,
        };
        if !shared {
            return Ok(v);
        }
        let kept = match &v {
            Val::Const(c) => Val::Const(*c),
            Val::Series { v, narrow } => Val::Series {
                v: self.copy(v),
                narrow: *narrow,
            },
        };
        self.memo.insert(key, kept);
        Ok(v)
    }
    fn column(&mut self, instrument: &str, field: &str) -> Result<Option<Column>> {
        let key = (instrument.to_string(), field.to_string());
        if let Some(c) = self.columns.get(&key) {
            return Ok(c.clone());
        }
        let c = self.fields.column(instrument, field)?;
        self.columns.insert(key, c.clone());
        Ok(c)
    }

    /// The rows where the series of `e` for `instrument` exists (remembered per node and instrument: every
    /// operand of a binary node asks).
    fn domain(&mut self, e: &Expr, instrument: &str) -> Result<Option<Range<usize>>> {
        if !self.remember_domains {
            return stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || {
                self.domain_of(e, instrument)
            });
        }
        // The instrument by its text's address, as in `MemoKey`: the query's instrument, or one named in the
        // tree, both alive for the whole evaluation.
        let key = (e as *const Expr as usize, instrument.as_ptr() as usize);
        if let Some(d) = self.domains.get(&key) {
            return Ok(d.clone());
        }
        let d = stacker::maybe_grow(STACK_RED_ZONE, STACK_SEGMENT, || {
            self.domain_of(e, instrument)
        })?;
        self.domains.insert(key, d.clone());
        Ok(d)
    }

    /// Whether `e` has no series of its own (a constant, a field the instrument lacks) or one that covers
    /// rows `base..base + len`.
    fn covers(&mut self, e: &Expr, inst: &str, base: usize, len: usize) -> Result<bool> {
        if self.aligned {
            return Ok(true);
        }
        Ok(self
            .domain(e, inst)?
            .is_none_or(|d| d.start <= base && base + len <= d.end))
    }

    /// An operand of a node that aligns two or more series (`+`, `Greater`, `If`, `Corr`, ...) over rows
    /// `base..base + len`: evaluated over its own series' rows only and NaN elsewhere, as pandas aligns
    /// qlib's operands on the union of their indexes. (Evaluated over the node's rows, an operand whose series
    /// ends earlier, such as another instrument's through `ChangeInstrument` or a field stored for fewer days,
    /// would carry values past its end: an EMA its last value, a window its last rows.)
    fn operand(&mut self, e: &Expr, inst: &str, base: usize, len: usize) -> Result<Val> {
        if self.covers(e, inst, base, len)? {
            return self.eval(e, inst, base, len);
        }
        self.within_series(e, inst, base, len)
    }

    /// `e` for `inst` evaluated over the rows of its own series inside `base..base + len`, NaN elsewhere.
    fn within_series(&mut self, e: &Expr, inst: &str, base: usize, len: usize) -> Result<Val> {
        debug_assert_eq!(
            self.width(),
            1,
            "lanes are aligned and read no other instrument"
        );
        let mut out = self.nans(len);
        let mut narrow = true;
        if let Some(d) = self.domain(e, inst)? {
            let (from, to) = (d.start.max(base), d.end.min(base + len));
            if from < to {
                match self.eval(e, inst, from, to - from)? {
                    Val::Const(c) => out[from - base..to - base].fill(c),
                    Val::Series { v, narrow: n } => {
                        out[from - base..to - base].copy_from_slice(&v);
                        narrow = n;
                        self.recycle(Val::Series { v, narrow: n });
                    }
                }
            }
        }
        Ok(Val::Series { v: out, narrow })
    }

    fn domain_of(&mut self, e: &Expr, instrument: &str) -> Result<Option<Range<usize>>> {
        Ok(match e {
            Expr::Field(f) => self
                .column(instrument, f)?
                .map(|c| c.rows())
                .filter(|r| !r.is_empty()),
            Expr::Const(_) => None,
            Expr::Instrument(x, other) => self.domain(x, other)?,
            Expr::Unary(_, x)
            | Expr::Ref(x, _)
            | Expr::Rolling(_, x, _)
            | Expr::Quantile(x, _, _) => self.domain(x, instrument)?,
            Expr::Binary(_, a, b) | Expr::Pair(_, a, b, _) => {
                hull(self.domain(a, instrument)?, self.domain(b, instrument)?)
            }
            Expr::Chain(first, rest) => {
                let mut d = self.domain(first, instrument)?;
                for (_, x) in rest {
                    d = hull(d, self.domain(x, instrument)?);
                }
                d
            }
            Expr::If(c, a, b) => {
                let d = hull(self.domain(c, instrument)?, self.domain(a, instrument)?);
                hull(d, self.domain(b, instrument)?)
            }
        })
    }

    fn series(&mut self, e: &Expr, instrument: &str, base: usize, len: usize) -> Result<Vec<f64>> {
        let cells = len * self.width();
        Ok(self.eval(e, instrument, base, len)?.into_vec(cells))
    }

    /// The memo key of node `e` over these rows, and whether its value is kept for other uses (`None`: the
    /// node is neither shared nor grouped).
    fn memo_key(&self, e: &Expr, inst: &str, base: usize, len: usize) -> Option<(MemoKey, bool)> {
        let plan = self.plan?;
        let id = *plan.ids.get(&(e as *const Expr as usize))?;
        Some((
            (id, inst.as_ptr() as usize, base, len),
            plan.shared.contains(&id),
        ))
    }

    /// `f` of the series of `e`, for consumers that only read it: a value kept in the memo (`$close`, used by
    /// dozens of Alpha158's columns) is lent instead of copied, and an owned one goes back to the pool.
    fn with_series<R>(
        &mut self,
        e: &Expr,
        inst: &str,
        base: usize,
        len: usize,
        f: impl FnOnce(&[f64]) -> R,
    ) -> Result<R> {
        if let Some((key, true)) = self.memo_key(e, inst, base, len) {
            if !self.memo.contains_key(&key) {
                // Computes it and keeps a copy in the memo.
                let v = self.eval(e, inst, base, len)?;
                self.recycle(v);
            }
            if let Some(Val::Series { v, .. }) = self.memo.get(&key) {
                return Ok(f(v));
            }
        }
        let v = self.series(e, inst, base, len)?;
        let r = f(&v);
        if self.pool.len() < POOL_MAX {
            self.pool.push(v);
        }
        Ok(r)
    }

    fn compute(&mut self, e: &Expr, inst: &str, base: usize, len: usize) -> Result<Val> {
        // Values of a series over these rows: one per lane.
        let width = self.width();
        let cells = len * width;
        Ok(match e {
            Expr::Const(c) => Val::Const(*c),
            Expr::Field(f) if width > 1 => {
                let mut out = self.nans(cells);
                // Every lane's column spans the same rows (`same_rows`), or none has one: interleaved in one
                // pass over the rows.
                let mut columns = Vec::with_capacity(width);
                for &inst in self.group {
                    columns.extend(self.column(inst, f)?);
                }
                if let Some(c) = columns.first().filter(|_| columns.len() == width) {
                    let (start, end) = (c.start(), c.start() + c.values().len());
                    let (from, to) = (start.max(base), end.min(base + len));
                    if from < to {
                        let lanes: Vec<&[f32]> = columns
                            .iter()
                            .map(|c| &c.values()[from - start..to - start])
                            .collect();
                        for (i, row) in out[(from - base) * width..(to - base) * width]
                            .chunks_exact_mut(width)
                            .enumerate()
                        {
                            for (o, lane) in row.iter_mut().zip(&lanes) {
                                *o = f64::from(lane[i]);
                            }
                        }
                    }
                }
                Val::narrow(out)
            }
            Expr::Field(f) => {
                let mut out = self.nans(len);
                if let Some(c) = self.column(inst, f)? {
                    let (values, start) = (c.values(), c.start());
                    let from = start.max(base);
                    let to = (start + values.len()).min(base + len);
                    if from < to {
                        let dst = &mut out[from - base..to - base];
                        dst.iter_mut()
                            .zip(&values[from - start..to - start])
                            .for_each(|(o, &x)| *o = f64::from(x));
                    }
                }
                Val::narrow(out)
            }
            Expr::Instrument(x, other) => self.within_series(x, other, base, len)?,
            Expr::Unary(op, x) => {
                let v = self.eval(x, inst, base, len)?;
                // qlib's Sign casts to float32 first; Not gives booleans.
                let narrow = matches!(op, Unary::Sign | Unary::Not);
                // Each arm is its own instance of `unary`, so the operation is inlined into the loop.
                match op {
                    Unary::Neg => unary(v, narrow, |x| -x),
                    Unary::Abs => unary(v, narrow, f64::abs),
                    Unary::Log => unary(v, narrow, f64::ln),
                    Unary::Sign => unary(v, narrow, |x| {
                        if x == 0.0 || x.is_nan() {
                            x
                        } else {
                            x.signum()
                        }
                    }),
                    Unary::Not => unary(v, narrow, |x| bool_f(!truthy(x))),
                }
            }
            Expr::Binary(op, a, b) => {
                let (a, b) = (
                    self.operand(a, inst, base, len)?,
                    self.operand(b, inst, base, len)?,
                );
                apply(*op, a, b)
            }
            Expr::Chain(first, rest) => {
                let mut acc = self.operand(first, inst, base, len)?;
                for (op, x) in rest {
                    let x = self.operand(x, inst, base, len)?;
                    acc = apply(*op, acc, x);
                }
                acc
            }
            Expr::If(c, a, b) => {
                let c = self.operand(c, inst, base, len)?.into_vec(cells);
                let (a, b) = (
                    self.operand(a, inst, base, len)?,
                    self.operand(b, inst, base, len)?,
                );
                let narrow = [&a, &b]
                    .iter()
                    .all(|v| matches!(v, Val::Const(_) | Val::Series { narrow: true, .. }));
                let (a, b) = (a.into_vec(cells), b.into_vec(cells));
                Val::Series {
                    v: c.iter()
                        .zip(a.iter().zip(&b))
                        .map(|(&c, (&a, &b))| round_if(narrow, if truthy(c) { a } else { b }))
                        .collect(),
                    narrow,
                }
            }
            Expr::Ref(x, n) => {
                let (v, narrow) = match self.eval(x, inst, base, len)? {
                    Val::Const(c) => (vec![c; cells], false),
                    Val::Series { v, narrow } => (v, narrow),
                };
                let mut out = vec![f64::NAN; cells];
                match (*n).cmp(&0) {
                    // The series' first value on every row (evaluation starts there: the extent is All).
                    std::cmp::Ordering::Equal => {
                        if len > 0 {
                            out.chunks_exact_mut(width)
                                .for_each(|row| row.copy_from_slice(&v[..width]));
                        }
                    }
                    std::cmp::Ordering::Greater => {
                        let n = *n as usize;
                        if n < len {
                            out[n * width..].copy_from_slice(&v[..(len - n) * width]);
                        }
                    }
                    std::cmp::Ordering::Less => {
                        let n = n.unsigned_abs() as usize;
                        if n < len {
                            out[..(len - n) * width].copy_from_slice(&v[n * width..]);
                        }
                    }
                }
                Val::Series { v: out, narrow }
            }
            Expr::Rolling(Rolling::Delta, x, w) => {
                // x - x.shift(n): element-wise in pandas, so float32 stays float32.
                let (v, narrow) = match self.eval(x, inst, base, len)? {
                    Val::Const(c) => (vec![c; cells], false),
                    Val::Series { v, narrow } => (v, narrow),
                };
                let mut d = delta(&v, periods(*w), width);
                d.iter_mut().for_each(|x| *x = round_if(narrow, *x));
                Val::Series { v: d, narrow }
            }
            Expr::Rolling(op, x, w) => {
                let qlib = self.qlib;
                Val::wide(self.with_series(x, inst, base, len, |v| {
                    if width == 1 {
                        rolling_op(*op, v, base, *w, qlib)
                    } else {
                        rolling_lanes(*op, v, base, *w)
                    }
                })?)
            }
            Expr::Quantile(x, w, q) => {
                let stat = Stat::Order(OrderStat::Quantile(*q));
                Val::wide(
                    self.with_series(x, inst, base, len, |v| {
                        per_lane(v, width, |v| window_pass(&[stat], &inf_as_nan(v), base, *w))
                    })?
                    .remove(0),
                )
            }
            Expr::Pair(op, a, b, w) => {
                let a = self.operand(a, inst, base, len)?.into_vec(cells);
                let out = if self.covers(b, inst, base, len)? {
                    // A kept value of `b` is lent rather than copied.
                    self.with_series(b, inst, base, len, |b| {
                        pair_any(*op, &a, b, base, *w, width)
                    })?
                } else {
                    let b = self.operand(b, inst, base, len)?.into_vec(cells);
                    let out = pair_any(*op, &a, &b, base, *w, width);
                    self.pool.push(b);
                    out
                };
                self.pool.push(a);
                Val::wide(out)
            }
        })
    }
}

/// `f` applied to each value; the result is float32 when the input is or `narrow` says so.
#[inline(always)]
fn unary(v: Val, narrow: bool, f: impl Fn(f64) -> f64) -> Val {
    match v {
        Val::Const(c) => Val::Const(f(c)),
        Val::Series { mut v, narrow: n } => {
            let narrow = narrow || n;
            each(&mut v, narrow, f);
            Val::Series { v, narrow }
        }
    }
}

/// `f` applied pairwise. Comparisons (`boolean`) give booleans; otherwise the result is float32 when both
/// sides are, and a Python number next to a float32 series is cast to float32 first (numpy's weak scalars).
#[inline(always)]
fn binary(a: Val, b: Val, boolean: bool, f: impl Fn(f64, f64) -> f64) -> Val {
    let scalar = |narrow: bool, c: f64| round_if(narrow && !boolean, c);
    match (a, b) {
        (Val::Const(x), Val::Const(y)) => Val::Const(f(x, y)),
        (Val::Series { mut v, narrow }, Val::Const(y)) => {
            let y = scalar(narrow, y);
            each(&mut v, narrow, |x| f(x, y));
            Val::Series { v, narrow }
        }
        (Val::Const(x), Val::Series { mut v, narrow }) => {
            let x = scalar(narrow, x);
            each(&mut v, narrow, |y| f(x, y));
            Val::Series { v, narrow }
        }
        (Val::Series { mut v, narrow: n1 }, Val::Series { v: w, narrow: n2 }) => {
            let narrow = n1 && n2;
            if narrow {
                v.iter_mut()
                    .zip(&w)
                    .for_each(|(x, y)| *x = f(*x, *y) as f32 as f64);
            } else {
                v.iter_mut().zip(&w).for_each(|(x, y)| *x = f(*x, *y));
            }
            Val::Series { v, narrow }
        }
    }
}

/// Replaces each value by `f` of it, rounded to float32 when `narrow` (the branch is outside the loop).
#[inline(always)]
fn each(v: &mut [f64], narrow: bool, f: impl Fn(f64) -> f64) {
    if narrow {
        v.iter_mut().for_each(|x| *x = f(*x) as f32 as f64);
    } else {
        v.iter_mut().for_each(|x| *x = f(*x));
    }
}

fn periods(w: Window) -> Option<usize> {
    match w {
        Window::Periods(n) => Some(n as usize),
        Window::Expanding | Window::Ewm(_) => None,
    }
}

/// `xs` with ±inf as NaN, copied only when it holds one. pandas does this to the input of every rolling,
/// expanding and ewm computation, so qlib's window operators treat an infinite value (`$x/0`, `Log(0)`) as
/// missing; ours do too, except where pandas does not: `Count` counts it, and `Delta` is element-wise.
/// (qlib's `Slope`, `Rsquare` and `Resi` are its own Cython, where an infinite value turns every later value
/// of the series into NaN once it leaves the window; we treat it as missing there too: docs/expressions.md.)
fn inf_as_nan(xs: &[f64]) -> Cow<'_, [f64]> {
    // A fold without an early exit, so the test is vectorised: real series rarely hold an infinity.
    if xs.iter().fold(false, |any, x| any | x.is_infinite()) {
        Cow::Owned(
            xs.iter()
                .map(|&x| if x.is_infinite() { f64::NAN } else { x })
                .collect(),
        )
    } else {
        Cow::Borrowed(xs)
    }
}

/// The values of the window operator `op` over `v` (before [`inf_as_nan`]); `qlib`: its compatible mode.
fn rolling_op(op: Rolling, v: &[f64], base: usize, w: Window, qlib: bool) -> Vec<f64> {
    match op {
        Rolling::Max | Rolling::Min | Rolling::IdxMax | Rolling::IdxMin => {
            return window_stats(&[Stat::Extreme(op)], v, base, w, qlib).remove(0);
        }
        Rolling::Slope | Rolling::Rsquare | Rolling::Resi => {
            return window_stats(&[Stat::Trend(op)], v, base, w, qlib).remove(0);
        }
        Rolling::Wma if qlib => return kernels::wma_qlib(&inf_as_nan(v), periods(w)),
        _ => {}
    }
    let v = &*match op {
        Rolling::Count | Rolling::Delta => Cow::Borrowed(v),
        _ => inf_as_nan(v),
    };
    let len = v.len();
    let n = periods(w);
    // Each arm passes its own closure to `rolling` or `rolling_stepped`, which are generic over it, so the
    // statistic is inlined into the loop (through a `fn` pointer it was a call per row).
    let moments = |i: usize| Moments::one(v[i], 0);
    let values = |i: usize| v[i];
    match (op, w) {
        (Rolling::Mean | Rolling::Ema, Window::Ewm(alpha)) => kernels::ewm(v, alpha),
        (Rolling::Ema, Window::Periods(n)) => kernels::ewm(v, 2.0 / (n as f64 + 1.0)),
        (Rolling::Ema, _) => kernels::ema_expanding(v),
        (Rolling::Mean, _) => rolling_stepped(len, base, n, values, |a: &Sum| {
            if a.n == 0 {
                f64::NAN
            } else {
                a.s / f64::from(a.n)
            }
        }),
        (Rolling::Sum, _) => {
            rolling_stepped(
                len,
                base,
                n,
                values,
                |a: &Sum| {
                    if a.n == 0 { f64::NAN } else { a.s }
                },
            )
        }
        (Rolling::Count, _) => rolling_stepped(len, base, n, values, |a: &Sum| f64::from(a.n)),
        (Rolling::Var, _) => rolling_stepped(len, base, n, values, |a: &Spread| a.var()),
        (Rolling::Std, _) => rolling_stepped(len, base, n, values, |a: &Spread| a.var().sqrt()),
        (Rolling::Skew, _) => rolling(len, base, n, moments, |a, _| a.skew()),
        (Rolling::Kurt, _) => rolling(len, base, n, moments, |a, _| a.kurt()),
        (Rolling::Wma, _) => rolling(
            len,
            base,
            n,
            |i| Weighted::one(v[i], base + i),
            |a, start| a.mean(base + start),
        ),
        (Rolling::Med, _) => window_pass(&[Stat::Order(OrderStat::Median)], v, base, w).remove(0),
        (Rolling::Rank, _) => window_pass(&[Stat::Order(OrderStat::Rank)], v, base, w).remove(0),
        (Rolling::Mad, _) => kernels::mad(v, n),
        (Rolling::Delta, _) => delta(v, n, 1),
        (
            Rolling::Slope
            | Rolling::Rsquare
            | Rolling::Resi
            | Rolling::Max
            | Rolling::Min
            | Rolling::IdxMax
            | Rolling::IdxMin,
            _,
        ) => unreachable!("window statistics are computed above"),
    }
}

/// [`window_pass`] over `xs` as it comes (infinities included), in qlib's compatible mode when `qlib`:
/// IdxMax/IdxMin give the position of the window's first NaN, as numpy's argmax does (an infinity is NaN by
/// then: pandas), and Slope, Rsquare and Resi are NaN from the first infinity on (qlib's Cython running sums
/// hold `inf - inf` from there).
fn window_stats(stats: &[Stat], xs: &[f64], base: usize, w: Window, qlib: bool) -> Vec<Vec<f64>> {
    let clean = inf_as_nan(xs);
    let mut outs = window_pass(stats, &clean, base, w);
    if !qlib {
        return outs;
    }
    let first_inf = xs.iter().position(|x| x.is_infinite());
    for (out, stat) in outs.iter_mut().zip(stats) {
        match stat {
            Stat::Extreme(Rolling::IdxMax | Rolling::IdxMin) => {
                kernels::first_nan_positions(&clean, periods(w), out)
            }
            Stat::Trend(_) => {
                if let Some(j) = first_inf {
                    out[j..].fill(f64::NAN);
                }
            }
            _ => {}
        }
    }
    outs
}

/// One pass over the windows of `xs` for statistics of one kind (see [`Stat::kind`]): one output per
/// statistic. A node alone and a group of siblings both come here, so their values agree.
/// `xs` has been through [`inf_as_nan`] (by the caller, which also serves `rolling_op`'s statistics).
fn window_pass(stats: &[Stat], xs: &[f64], base: usize, w: Window) -> Vec<Vec<f64>> {
    let ops = || -> Vec<Rolling> {
        stats
            .iter()
            .map(|s| match s {
                Stat::Trend(op) | Stat::Extreme(op) => *op,
                Stat::Order(_) => unreachable!("a pass computes statistics of one kind"),
            })
            .collect()
    };
    match stats.first() {
        Some(Stat::Order(_)) => {
            let order: Vec<OrderStat> = stats
                .iter()
                .map(|s| match s {
                    Stat::Order(o) => *o,
                    _ => unreachable!("a pass computes statistics of one kind"),
                })
                .collect();
            kernels::order_stats_many(xs, periods(w), &order)
        }
        Some(Stat::Trend(_)) => trend_many(xs, base, w, &ops()),
        Some(Stat::Extreme(Rolling::Max | Rolling::IdxMax)) => {
            extremes::<true>(xs, base, w, &ops())
        }
        Some(Stat::Extreme(_)) => extremes::<false>(xs, base, w, &ops()),
        None => Vec::new(),
    }
}

/// The window's largest (`MAX`) or smallest value and its 1-based position, one sliding pass for Max and
/// IdxMax (or Min and IdxMin) over the same input and window: one output per op.
fn extremes<const MAX: bool>(v: &[f64], base: usize, w: Window, ops: &[Rolling]) -> Vec<Vec<f64>> {
    let len = v.len();
    let mut out = vec![vec![f64::NAN; len]; ops.len()];
    kernels::sliding(
        len,
        base,
        periods(w),
        |i| Extreme::<MAX>::one(v[i], base + i),
        |i, a, start| {
            for (o, op) in out.iter_mut().zip(ops) {
                o[i] = match op {
                    Rolling::Max | Rolling::Min => a.v,
                    _ => position(a.pos, base + start),
                };
            }
        },
    );
    out
}

/// Regressions of the values on their calendar row (the slope and fit do not depend on where the rows start),
/// one sliding pass for any of Slope, Rsquare and Resi over the same input and window: one output per op.
fn trend_many(v: &[f64], base: usize, w: Window, ops: &[Rolling]) -> Vec<Vec<f64>> {
    let len = v.len();
    let n = periods(w);
    let mut out = vec![vec![f64::NAN; len]; ops.len()];
    kernels::stepped(
        len,
        base,
        n,
        |i| ((base + i) as f64, v[i]),
        |i, a: &CoMoments, _| {
            let a = a.centered();
            for (o, op) in out.iter_mut().zip(ops) {
                o[i] = match op {
                    Rolling::Slope => a.slope(),
                    // qlib blanks Rsquare where the values are (nearly) constant, not for the expanding form.
                    // The row positions are never NaN, so the y side's spread is that of the values.
                    Rolling::Rsquare if n.is_some() && flat(a.var_y()) => f64::NAN,
                    Rolling::Rsquare => {
                        let r = a.corr();
                        r * r
                    }
                    // The newest value minus the fitted line at its row.
                    _ => v[i] - (a.my + a.slope() * ((base + i) as f64 - a.mx)),
                };
            }
        },
    );
    out
}

/// 1-based position of row `pos` in a window starting at row `first`; NaN for an empty window.
fn position(pos: usize, first: usize) -> f64 {
    if pos == usize::MAX {
        f64::NAN
    } else {
        (pos - first + 1) as f64
    }
}

fn pair_op(op: Pair, a: &[f64], b: &[f64], base: usize, w: Window) -> Vec<f64> {
    let (a, b) = (&*inf_as_nan(a), &*inf_as_nan(b));
    let len = a.len();
    let n = periods(w);
    let pairs = |i: usize| (a[i], b[i]);
    match op {
        Pair::Cov => rolling_stepped(len, base, n, pairs, cov),
        // qlib: NaN where either side on its own is (nearly) constant over the window. When the sides have
        // the same gaps, each side's spread is the pairs' own (same rows, same arithmetic): one pass.
        Pair::Corr if a.iter().zip(b).all(|(x, y)| x.is_nan() == y.is_nan()) => {
            rolling_stepped(len, base, n, pairs, corr_same_gaps)
        }
        Pair::Corr => {
            let r = rolling_stepped(len, base, n, pairs, corr_any_gaps);
            let side = |s: &[f64]| {
                rolling_stepped(len, base, n, |i| s[i], |m: &Spread| bool_f(flat(m.var())))
            };
            let (fa, fb) = (side(a), side(b));
            corr_unflat(r, &fa, &fb)
        }
    }
}

/// `x - x.shift(n)` (`n`: `None` for the expanding form, `x` minus the series' first value) over `width`
/// interleaved series.
fn delta(v: &[f64], n: Option<usize>, width: usize) -> Vec<f64> {
    match n {
        Some(n) => {
            let lag = n * width;
            (0..v.len())
                .map(|j| {
                    if j >= lag {
                        v[j] - v[j - lag]
                    } else {
                        f64::NAN
                    }
                })
                .collect()
        }
        None => v
            .iter()
            .enumerate()
            .map(|(j, x)| x - v.get(j % width).copied().unwrap_or(f64::NAN))
            .collect(),
    }
}

/// `f`'s outputs for each of `width` interleaved series, interleaved the same way: the scalar kernels serve
/// a group of instruments one lane at a time. One series is passed straight through.
fn per_lane(xs: &[f64], width: usize, mut f: impl FnMut(&[f64]) -> Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    if width == 1 || xs.is_empty() {
        return f(xs);
    }
    let len = xs.len() / width;
    let mut lanes = Vec::new();
    deinterleave(xs, width, &mut lanes);
    let mut results: Vec<Vec<Vec<f64>>> = lanes.chunks_exact(len.max(1)).map(&mut f).collect();
    let outs = results.first().map_or(0, Vec::len);
    (0..outs)
        .map(|k| {
            let mut out = vec![f64::NAN; len * width];
            for (l, r) in results.iter_mut().enumerate() {
                let lane = std::mem::take(&mut r[k]);
                for (row, x) in out.chunks_exact_mut(width).zip(lane) {
                    row[l] = x;
                }
            }
            out
        })
        .collect()
}

/// `xs`, `width` series interleaved row by row, lane by lane into `out` (`out[l * len + i]`): one pass over the
/// rows, writing `width` streams (a strided pass per lane read every row `width` times).
fn deinterleave(xs: &[f64], width: usize, out: &mut Vec<f64>) {
    let len = xs.len() / width;
    out.clear();
    out.resize(xs.len(), 0.0);
    let mut lanes: Vec<&mut [f64]> = out.chunks_exact_mut(len.max(1)).collect();
    for (i, row) in xs.chunks_exact(width).enumerate() {
        for (lane, &x) in lanes.iter_mut().zip(row) {
            lane[i] = x;
        }
    }
}

/// [`rolling_op`] over [`LANES`] interleaved series (qstore's rules): sums, means, counts and spreads with the
/// lane kernels, the rest one lane at a time.
fn rolling_lanes(op: Rolling, v: &[f64], base: usize, w: Window) -> Vec<f64> {
    let n = periods(w);
    let len = v.len() / LANES;
    fn lanes(xs: &[f64]) -> Interleaved<'_, LANES> {
        Interleaved { x: xs, y: xs }
    }
    match (op, w) {
        (Rolling::Mean, Window::Periods(_) | Window::Expanding) => {
            rolling_lanes_best::<stat::Mean>(len, base, n, lanes(&inf_as_nan(v)))
        }
        (Rolling::Sum, _) => rolling_lanes_best::<stat::Sum>(len, base, n, lanes(&inf_as_nan(v))),
        (Rolling::Count, _) => rolling_lanes_best::<stat::Count>(len, base, n, lanes(v)),
        (Rolling::Var, _) => rolling_lanes_best::<stat::Var>(len, base, n, lanes(&inf_as_nan(v))),
        (Rolling::Std, _) => rolling_lanes_best::<stat::Std>(len, base, n, lanes(&inf_as_nan(v))),
        (Rolling::Slope | Rolling::Rsquare | Rolling::Resi, _) => {
            window_stats_lanes(&[Stat::Trend(op)], v, base, w).remove(0)
        }
        (Rolling::Max | Rolling::Min | Rolling::IdxMax | Rolling::IdxMin, _) => {
            window_stats_lanes(&[Stat::Extreme(op)], v, base, w).remove(0)
        }
        _ => per_lane(v, LANES, |v| vec![rolling_op(op, v, base, w, false)]).remove(0),
    }
}

/// [`window_stats`] over [`LANES`] interleaved series (qstore's rules): regressions and extremes with the lane
/// kernels, order statistics one lane at a time.
fn window_stats_lanes(stats: &[Stat], xs: &[f64], base: usize, w: Window) -> Vec<Vec<f64>> {
    let len = xs.len() / LANES;
    let n = periods(w);
    // Each row's calendar row, in every lane: the regressions' x and the extremes' positions.
    let rows = || -> Vec<f64> { (0..len).flat_map(|i| [(base + i) as f64; LANES]).collect() };
    let clean = inf_as_nan(xs);
    /// Which of the lane kernel's outputs a statistic is.
    type Pick = fn(&Stat) -> usize;
    let (all, pick): (Vec<Vec<f64>>, Pick) = match stats.first() {
        Some(Stat::Trend(_)) => {
            let rows = rows();
            let pairs = Interleaved {
                x: &rows,
                y: &clean,
            };
            let all = if n.is_some() {
                windows_best::<stat::Trend<true>>(len, base, n, pairs)
            } else {
                windows_best::<stat::Trend<false>>(len, base, n, pairs)
            };
            // Slope, Rsquare and Resi, in that order.
            (all, |s| match s {
                Stat::Trend(Rolling::Slope) => 0,
                Stat::Trend(Rolling::Rsquare) => 1,
                _ => 2,
            })
        }
        Some(Stat::Extreme(op)) => {
            let rows = rows();
            let values = Interleaved {
                x: &clean,
                y: &rows,
            };
            let all = if matches!(op, Rolling::Max | Rolling::IdxMax) {
                windows_best::<stat::Extremes<true>>(len, base, n, values)
            } else {
                windows_best::<stat::Extremes<false>>(len, base, n, values)
            };
            // The extreme, then its position.
            (all, |s| match s {
                Stat::Extreme(Rolling::Max | Rolling::Min) => 0,
                _ => 1,
            })
        }
        _ => return per_lane(xs, LANES, |xs| window_stats(stats, xs, base, w, false)),
    };
    stats.iter().map(|s| all[pick(s)].clone()).collect()
}

/// [`pair_op`] over `width` interleaved pairs of series.
fn pair_any(op: Pair, a: &[f64], b: &[f64], base: usize, w: Window, width: usize) -> Vec<f64> {
    if width == 1 {
        return pair_op(op, a, b, base, w);
    }
    debug_assert_eq!(width, LANES);
    let (a, b) = (&*inf_as_nan(a), &*inf_as_nan(b));
    let len = a.len() / LANES;
    let n = periods(w);
    let pairs = Interleaved::<LANES> { x: a, y: b };
    match op {
        Pair::Cov => rolling_lanes_best::<stat::Cov>(len, base, n, pairs),
        // As `pair_op`, whose one-pass form gives the bits of its three-pass one wherever a lane's sides have
        // the same gaps: one test over all lanes picks the form.
        Pair::Corr if a.iter().zip(b).all(|(x, y)| x.is_nan() == y.is_nan()) => {
            rolling_lanes_best::<stat::CorrUnlessFlat>(len, base, n, pairs)
        }
        Pair::Corr => {
            let r = rolling_lanes_best::<stat::Corr>(len, base, n, pairs);
            let side = |s: &[f64]| {
                rolling_lanes_best::<stat::Flat>(len, base, n, Interleaved { x: s, y: s })
            };
            corr_unflat(r, &side(a), &side(b))
        }
    }
}

/// Cov of a window's pairs (ddof 1); NaN below two.
#[inline(always)]
fn cov(m: &CoMoments) -> f64 {
    let m = m.centered();
    if m.n < 2.0 {
        f64::NAN
    } else {
        m.sxy / (m.n - 1.0)
    }
}

/// Corr of a window's pairs where both sides have the same gaps: NaN where either side is flat.
#[inline(always)]
fn corr_same_gaps(m: &CoMoments) -> f64 {
    let m = m.centered();
    if m.n < 2.0 || flat(m.var_x()) || flat(m.var_y()) {
        f64::NAN
    } else {
        m.corr()
    }
}

/// Corr of a window's pairs, before the flat sides are blanked ([`corr_unflat`]).
#[inline(always)]
fn corr_any_gaps(m: &CoMoments) -> f64 {
    let m = m.centered();
    if m.n < 2.0 { f64::NAN } else { m.corr() }
}

/// `r` blanked where either side's own spread is flat (`fa`, `fb`: 1 where flat).
fn corr_unflat(r: Vec<f64>, fa: &[f64], fb: &[f64]) -> Vec<f64> {
    r.iter()
        .zip(fa.iter().zip(fb))
        .map(|(&r, (&x, &y))| if x == 1.0 || y == 1.0 { f64::NAN } else { r })
        .collect()
}

/// One element-wise binary operation (a binary node, or one step of a chain).
fn apply(op: Binary, a: Val, b: Val) -> Val {
    // Each arm is its own instance of `binary`, so the operation is inlined into the loop.
    match op {
        Binary::Add => binary(a, b, false, |a, b| a + b),
        Binary::Sub => binary(a, b, false, |a, b| a - b),
        Binary::Mul => binary(a, b, false, |a, b| a * b),
        Binary::Div => binary(a, b, false, |a, b| a / b),
        Binary::Power => binary(a, b, false, f64::powf),
        // np.maximum/np.minimum: NaN on either side wins.
        Binary::Greater => binary(a, b, false, |a, b| {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.max(b)
            }
        }),
        Binary::Less => binary(a, b, false, |a, b| {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.min(b)
            }
        }),
        Binary::Gt => binary(a, b, true, |a, b| bool_f(a > b)),
        Binary::Ge => binary(a, b, true, |a, b| bool_f(a >= b)),
        Binary::Lt => binary(a, b, true, |a, b| bool_f(a < b)),
        Binary::Le => binary(a, b, true, |a, b| bool_f(a <= b)),
        Binary::Eq => binary(a, b, true, |a, b| bool_f(a == b)),
        Binary::Ne => binary(a, b, true, |a, b| bool_f(a != b)),
        Binary::And => binary(a, b, true, |a, b| bool_f(truthy(a) && truthy(b))),
        Binary::Or => binary(a, b, true, |a, b| bool_f(truthy(a) || truthy(b))),
    }
}
