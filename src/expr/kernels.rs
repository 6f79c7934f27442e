//! Rolling kernels: O(n) in the series length, and bit-identical for a row whatever row the series starts at.
//!
//! A cache stores a full-history evaluation and later serves sub-ranges of it, and an incremental update
//! appends values computed from a short tail; both must equal a fresh evaluation bit for bit. Running sums
//! (add the new value, subtract the old) cannot promise that: their rounding depends on every value since the
//! start. So windowed reductions use van Herk/Gil-Werman blocks aligned to absolute calendar positions: the
//! window ending at row `t` is the merge of a suffix of one block and a prefix of the next, each accumulated
//! in a fixed order from values inside the window only. Cost is O(1) merges per row for every window size,
//! and no accumulator ever holds more than one window of values, so there is no drift to compensate.
//!
//! Sums, variances and co-moments ([`Step`]) add every row of a block without a test: a missing row adds
//! terms that leave the sums unchanged bit for bit. Variances and co-moments are sums about a shift inside the
//! data (no division on the per-row chains); higher moments are merged with Pébay's pairwise formulas (stable
//! for prices with a small spread), order statistics come from a sorted window (windows up to 512 rows) or a
//! Fenwick tree over the ranks of the values (longer and expanding windows), and exponential means are plain
//! recurrences from the series' first row (their windows reach it; see `Expr::ext_window`).
//!
//! Every kernel takes `xs`, the series over rows `base..base + xs.len()` of the calendar, where `xs[0]` is
//! either the series' first row or at least one window before the first row whose value is used.

use std::ops::Range;

pub(crate) mod lanes;

/// A windowed reduction whose accumulators merge (the left one precedes the right one in time).
pub(crate) trait Acc: Copy {
    const EMPTY: Self;
    fn merge(l: &Self, r: &Self) -> Self;
    /// Adds `one`, the accumulator of a single row after these rows (a cheaper merge where one side is known
    /// to hold at most one value).
    #[inline(always)]
    fn push(&mut self, one: &Self) {
        *self = Self::merge(self, one);
    }
    /// Adds `one`, the accumulator of a single row before these rows.
    #[inline(always)]
    fn push_front(&mut self, one: &Self) {
        *self = Self::merge(one, self);
    }
}

/// Calls `emit(i, acc, start)` for every row `i < len` with the accumulator of the window `[start, i]` (local
/// indexes): the last `n` rows cut at row 0, or every row so far when `n` is `None`. `one(i)` is the
/// accumulator of row `i` alone; row `i` is calendar row `base + i`, which fixes the block alignment.
pub(crate) fn sliding<A: Acc>(
    len: usize,
    base: usize,
    n: Option<usize>,
    one: impl Fn(usize) -> A,
    mut emit: impl FnMut(usize, &A, usize),
) {
    let Some(n) = n else {
        let mut acc = A::EMPTY;
        for i in 0..len {
            acc = A::merge(&acc, &one(i));
            emit(i, &acc, 0);
        }
        return;
    };
    let n = n.max(1);
    if len == 0 {
        return;
    }
    // Block positions are tracked by counters: a `%` per row (an integer division) cost more than a merge.
    // Each row's accumulator up to the end of its block (blocks of n rows starting at multiples of n).
    let mut suffix = vec![A::EMPTY; len];
    let mut pos = (base + len - 1) % n;
    suffix[len - 1] = one(len - 1);
    for i in (0..len - 1).rev() {
        pos = if pos == 0 { n - 1 } else { pos - 1 };
        suffix[i] = if pos == n - 1 {
            one(i)
        } else {
            let mut a = suffix[i + 1];
            a.push_front(&one(i));
            a
        };
    }
    let mut prefix = A::EMPTY;
    let mut pos = base % n;
    for i in 0..len {
        // Local index of the first row of this block's prefix (its block may start before row 0).
        let prefix_begin = i.saturating_sub(pos);
        if pos == 0 || i == 0 {
            prefix = one(i);
        } else {
            prefix.push(&one(i));
        }
        let start = (i + 1).saturating_sub(n);
        if start == prefix_begin {
            emit(i, &prefix, start);
        } else {
            // The window starts in the previous block: that block's tail, then this block's head.
            emit(i, &A::merge(&suffix[start], &prefix), start);
        }
        pos += 1;
        if pos == n {
            pos = 0;
        }
    }
}

/// The blocks of `sliding`: local rows `0..len` cut where the calendar row `base + i` is a multiple of `n`.
fn blocks(len: usize, base: usize, n: usize) -> impl Iterator<Item = Range<usize>> {
    let first = (n - base % n) % n;
    let head = (first > 0).then(|| 0..first.min(len));
    head.into_iter()
        .chain((first..len).step_by(n).map(move |b| b..(b + n).min(len)))
}

/// A windowed reduction whose rows are added without a test per row: the form of the reductions over every
/// row of a window (sums, spreads, co-moments), where a NaN row must add nothing. [`stepped`] runs them over
/// the blocks of [`sliding`] with the same additions in the same order, so their values are those of merging
/// only the valid rows one at a time, bit for bit.
pub(crate) trait Step: Copy {
    /// One row's input: a value, or a pair.
    type Row: Copy;
    fn valid(row: Self::Row) -> bool;
    /// The empty accumulator of a run that adds `rows` in this order (the shift of a shifted sum is the first
    /// valid one, as if that row had opened the accumulator; the others ignore them).
    fn open(rows: impl Iterator<Item = Self::Row>) -> Self;
    /// Adds a row; an invalid row adds terms that leave every sum as it is (-0.0, or +0.0 to a sum of squares).
    fn add(&mut self, row: Self::Row);
    /// The window of `tail` (earlier rows) followed by `head`.
    fn merge(tail: &Self, head: &Self) -> Self;
}

/// `x`, or -0.0 when `keep` is 0 (`keep` is all ones or zero): a select without a branch. -0.0 is the identity
/// of IEEE addition (`s + -0.0` is `s` bit for bit, signed zeros included).
#[inline(always)]
fn or_neg_zero(x: f64, keep: u64) -> f64 {
    f64::from_bits((x.to_bits() & keep) | ((-0.0f64).to_bits() & !keep))
}

/// All ones when `ok`, else zero.
#[inline(always)]
fn mask(ok: bool) -> u64 {
    u64::from(ok).wrapping_neg()
}

/// Where the rows of block `b` (of [`blocks`] with window `n`) find their windows, as `(reach, merged)`: rows
/// before `merged` merge the previous block's tail with this block's head, the rest are the head alone (every
/// row of the first block, and the last row of a full block, whose window is the block); of the merged rows,
/// those before `reach` have windows that would start before row 0, so their tail is all of the first block.
pub(crate) fn merge_bounds(b: &Range<usize>, n: usize) -> (usize, usize) {
    let merged = if b.start == 0 {
        0
    } else if b.end - b.start < n {
        b.end
    } else {
        b.end - 1
    };
    (merged.min(n).max(b.start), merged)
}

/// Calls `emit(i, acc, start)` for every row as [`sliding`] does, for a [`Step`] reduction of `row(i)`.
pub(crate) fn stepped<S: Step>(
    len: usize,
    base: usize,
    n: Option<usize>,
    row: impl Fn(usize) -> S::Row,
    mut emit: impl FnMut(usize, &S, usize),
) {
    let open =
        |rows: &mut dyn Iterator<Item = usize>| S::open(rows.map(&row).filter(|&r| S::valid(r)));
    let Some(n) = n else {
        let mut acc = open(&mut (0..len));
        for i in 0..len {
            acc.add(row(i));
            emit(i, &acc, 0);
        }
        return;
    };
    let n = n.max(1);
    // Each row's accumulator up to the end of its block, added from the end.
    let mut suffix = vec![open(&mut (0..0)); len];
    for b in blocks(len, base, n) {
        let mut acc = open(&mut b.clone().rev());
        for i in b.rev() {
            acc.add(row(i));
            suffix[i] = acc;
        }
    }
    for b in blocks(len, base, n) {
        let mut acc = open(&mut b.clone());
        let (reach, merged) = merge_bounds(&b, n);
        for i in b.start..reach {
            acc.add(row(i));
            emit(i, &S::merge(&suffix[0], &acc), 0);
        }
        if reach < merged {
            let tails = suffix[reach + 1 - n..merged + 1 - n].iter();
            for ((i, tail), start) in (reach..merged).zip(tails).zip(reach + 1 - n..) {
                acc.add(row(i));
                emit(i, &S::merge(tail, &acc), start);
            }
        }
        for i in merged..b.end {
            acc.add(row(i));
            emit(i, &acc, b.start);
        }
    }
}

/// Count and sum of the valid values: Sum, Mean, Count.
#[derive(Clone, Copy)]
pub(crate) struct Sum {
    pub n: u32,
    pub s: f64,
}

impl Step for Sum {
    type Row = f64;
    fn valid(x: f64) -> bool {
        !x.is_nan()
    }
    #[inline(always)]
    fn open(_: impl Iterator<Item = f64>) -> Self {
        Sum { n: 0, s: -0.0 }
    }
    #[inline(always)]
    fn add(&mut self, x: f64) {
        let keep = mask(!x.is_nan());
        self.n += (keep & 1) as u32;
        self.s += or_neg_zero(x, keep);
    }
    #[inline(always)]
    fn merge(tail: &Self, head: &Self) -> Self {
        Sum {
            n: tail.n + head.n,
            s: tail.s + head.s,
        }
    }
}

/// Count, sum and sum of squares of the valid values, taken about a shift `c` that is one of them: Var, Std.
///
/// Adding a row costs four additions and a multiplication (no division, unlike a pairwise mean update), and
/// merging two re-centres the right one on the left one's shift. The central sum of squares is formed once per
/// window (`m2`). With the shift inside the data, deviations are of the size of the spread: the cancellation
/// in `q - s²/n` loses at most log2(n) bits, and a constant window has `s = q = 0` exactly.
#[derive(Clone, Copy)]
pub(crate) struct Spread {
    n: f64,
    c: f64,
    s: f64,
    q: f64,
}

impl Step for Spread {
    type Row = f64;
    fn valid(x: f64) -> bool {
        !x.is_nan()
    }
    #[inline(always)]
    fn open(mut xs: impl Iterator<Item = f64>) -> Self {
        Spread {
            n: 0.0,
            c: xs.next().unwrap_or(0.0),
            s: 0.0,
            q: 0.0,
        }
    }
    #[inline(always)]
    fn add(&mut self, x: f64) {
        let keep = mask(!x.is_nan());
        let d = or_neg_zero(x - self.c, keep);
        self.n += (keep & 1) as f64;
        self.s += d;
        self.q += d * d;
    }
    #[inline(always)]
    fn merge(a: &Self, b: &Self) -> Self {
        if a.n == 0.0 {
            return *b;
        }
        if b.n == 0.0 {
            return *a;
        }
        // The right side is re-centred on the left one's shift.
        let d = b.c - a.c;
        Spread {
            n: a.n + b.n,
            c: a.c,
            s: a.s + b.s + b.n * d,
            q: a.q + b.q + d * (2.0 * b.s + b.n * d),
        }
    }
}

impl Spread {
    /// Sum of squared deviations from the mean (never negative); the same arithmetic as
    /// [`CoMoments::centered`], so a side of a pass over pairs gives these bits when no pair lacks the other.
    fn m2(&self) -> f64 {
        (self.q - self.s * (self.s / self.n)).max(0.0)
    }

    /// Sample variance (ddof 1); NaN below two values.
    pub fn var(&self) -> f64 {
        sample_var(self.n, self.m2())
    }
}

/// |std| <= 2e-5: qlib's `np.isclose(rolling std, 0, atol=2e-05)`, under which Corr and Rsquare are NaN.
///
/// Decided on the variance, without its square root (two per row of Corr): `sqrt` is correctly rounded and
/// monotonic, so `var.sqrt() <= 2e-5` holds exactly for `0 <= var <= FLAT_VAR` (a test checks the values on
/// both sides of the bound, the signed zeros, NaN and infinities).
#[inline(always)]
pub(crate) fn flat(var: f64) -> bool {
    (0.0..=FLAT_VAR).contains(&var)
}

/// The largest double whose square root rounds to at most 2e-5 (one ulp above `2e-5 * 2e-5`).
pub(crate) const FLAT_VAR: f64 = f64::from_bits(0x3DFB_7CDF_D9D7_BDBD);

/// Sample variance (ddof 1) of `n` values with sum of squared deviations `m2`; NaN below two values. The
/// quotient first, then the choice: a select rather than a branch, so the lane kernels vectorise it.
#[inline(always)]
fn sample_var(n: f64, m2: f64) -> f64 {
    let v = m2 / (n - 1.0);
    if n < 2.0 { f64::NAN } else { v }
}

/// Central moments up to the fourth (Pébay's pairwise update): Var, Std, Skew, Kurt.
#[derive(Clone, Copy)]
pub(crate) struct Moments {
    pub n: f64,
    pub mean: f64,
    pub m2: f64,
    pub m3: f64,
    pub m4: f64,
}

impl Acc for Moments {
    const EMPTY: Self = Moments {
        n: 0.0,
        mean: 0.0,
        m2: 0.0,
        m3: 0.0,
        m4: 0.0,
    };
    fn merge(a: &Self, b: &Self) -> Self {
        if a.n == 0.0 {
            return *b;
        }
        if b.n == 0.0 {
            return *a;
        }
        let (na, nb) = (a.n, b.n);
        let n = na + nb;
        let d = b.mean - a.mean;
        if d == 0.0 {
            // Equal means (constant windows among them): exact, so a constant window keeps m2 == 0.
            return Moments {
                n,
                mean: a.mean,
                m2: a.m2 + b.m2,
                m3: a.m3 + b.m3,
                m4: a.m4 + b.m4,
            };
        }
        let dn = d / n;
        let (d2, dn2) = (d * d, dn * dn);
        let m2 = a.m2 + b.m2 + d2 * na * nb / n;
        let m3 = a.m3 + b.m3 + d * dn2 * na * nb * (na - nb) + 3.0 * dn * (na * b.m2 - nb * a.m2);
        let m4 = a.m4
            + b.m4
            + d2 * dn2 * na * nb * (na * na - na * nb + nb * nb) / n
            + 6.0 * dn2 * (na * na * b.m2 + nb * nb * a.m2)
            + 4.0 * dn * (na * b.m3 - nb * a.m3);
        Moments {
            n,
            mean: a.mean + dn * nb,
            m2,
            m3,
            m4,
        }
    }
}

impl Moments {
    pub fn one(x: f64, _: usize) -> Self {
        if x.is_nan() {
            Self::EMPTY
        } else {
            Moments {
                n: 1.0,
                mean: x,
                ..Self::EMPTY
            }
        }
    }
}

impl Moments {
    /// pandas' bias-corrected skewness: NaN below 3 values, for a constant window (as pandas 3;
    /// pandas 2 gave 0) and for a variance at or below 1e-14 (pandas' threshold).
    pub fn skew(&self) -> f64 {
        let n = self.n;
        if n < 3.0 {
            return f64::NAN;
        }
        if self.m2 == 0.0 {
            return f64::NAN;
        }
        let b = self.m2 / n;
        if b <= 1e-14 {
            return f64::NAN;
        }
        let c = self.m3 / n;
        (n * (n - 1.0)).sqrt() * c / ((n - 2.0) * b * b.sqrt())
    }

    /// pandas' bias-corrected excess kurtosis: NaN below 4 values, for a constant window (as pandas
    /// 3; pandas 2 gave -3) and for a variance at or below 1e-14.
    pub fn kurt(&self) -> f64 {
        let n = self.n;
        if n < 4.0 {
            return f64::NAN;
        }
        if self.m2 == 0.0 {
            return f64::NAN;
        }
        let b = self.m2 / n;
        if b <= 1e-14 {
            return f64::NAN;
        }
        let d = self.m4 / n;
        let k = (n * n - 1.0) * d / (b * b) - 3.0 * (n - 1.0) * (n - 1.0);
        k / ((n - 2.0) * (n - 3.0))
    }
}

/// Co-moments of pairs where both sides are valid: Corr, Cov, and (with x = row position) Slope, Rsquare,
/// Resi. Sums are taken about shifts `(cx, cy)`, one of the pairs, added and merged as [`Spread`]'s;
/// [`CoMoments::centered`] forms the means and central sums once per window.
#[derive(Clone, Copy)]
pub(crate) struct CoMoments {
    n: f64,
    cx: f64,
    cy: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    syy: f64,
    sxy: f64,
}

impl Step for CoMoments {
    type Row = (f64, f64);
    fn valid((x, y): (f64, f64)) -> bool {
        !x.is_nan() && !y.is_nan()
    }
    #[inline(always)]
    fn open(mut pairs: impl Iterator<Item = (f64, f64)>) -> Self {
        let (cx, cy) = pairs.next().unwrap_or((0.0, 0.0));
        CoMoments {
            n: 0.0,
            cx,
            cy,
            sx: 0.0,
            sy: 0.0,
            sxx: 0.0,
            syy: 0.0,
            sxy: 0.0,
        }
    }
    #[inline(always)]
    fn add(&mut self, (x, y): (f64, f64)) {
        let keep = mask(Self::valid((x, y)));
        let (dx, dy) = (
            or_neg_zero(x - self.cx, keep),
            or_neg_zero(y - self.cy, keep),
        );
        self.n += (keep & 1) as f64;
        self.sx += dx;
        self.sy += dy;
        self.sxx += dx * dx;
        self.syy += dy * dy;
        // +0.0 for an invalid pair: the sum started at +0.0 and so is never -0.0, so adding +0.0 keeps it.
        self.sxy += dx * dy;
    }
    #[inline(always)]
    fn merge(a: &Self, b: &Self) -> Self {
        if a.n == 0.0 {
            return *b;
        }
        if b.n == 0.0 {
            return *a;
        }
        let (dx, dy) = (b.cx - a.cx, b.cy - a.cy);
        CoMoments {
            n: a.n + b.n,
            cx: a.cx,
            cy: a.cy,
            sx: a.sx + b.sx + b.n * dx,
            sy: a.sy + b.sy + b.n * dy,
            sxx: a.sxx + b.sxx + dx * (2.0 * b.sx + b.n * dx),
            syy: a.syy + b.syy + dy * (2.0 * b.sy + b.n * dy),
            sxy: a.sxy + b.sxy + dx * b.sy + dy * b.sx + b.n * dx * dy,
        }
    }
}

/// Means and central sums of squares and products of a window's pairs.
#[derive(Clone, Copy)]
pub(crate) struct Centered {
    pub n: f64,
    pub mx: f64,
    pub my: f64,
    pub sxx: f64,
    pub syy: f64,
    pub sxy: f64,
}

impl CoMoments {
    /// The window's means and central sums (NaN means for an empty window).
    #[inline(always)]
    pub fn centered(&self) -> Centered {
        let n = self.n;
        let (ux, uy) = (self.sx / n, self.sy / n);
        Centered {
            n,
            mx: self.cx + ux,
            my: self.cy + uy,
            sxx: (self.sxx - self.sx * ux).max(0.0),
            syy: (self.syy - self.sy * uy).max(0.0),
            sxy: self.sxy - self.sx * uy,
        }
    }
}

impl Centered {
    /// Least-squares slope of y on x; NaN below two points (0/0, as qlib).
    pub fn slope(&self) -> f64 {
        self.sxy / self.sxx
    }

    /// Pearson correlation of the pairs (Corr; its square is Rsquare).
    pub fn corr(&self) -> f64 {
        self.sxy / (self.sxx * self.syy).sqrt()
    }

    /// Sample variance of the x side (equal to [`Spread::var`] of x when every x has its y).
    pub fn var_x(&self) -> f64 {
        sample_var(self.n, self.sxx)
    }

    /// Sample variance of the y side (equal to [`Spread::var`] of y when every y has its x).
    pub fn var_y(&self) -> f64 {
        sample_var(self.n, self.syy)
    }
}

/// The extreme value of a window and its row, first occurrence on ties; NaN never wins.
#[derive(Clone, Copy)]
pub(crate) struct Extreme<const MAX: bool> {
    pub v: f64,
    pub pos: usize,
}

impl<const MAX: bool> Acc for Extreme<MAX> {
    const EMPTY: Self = Extreme {
        v: f64::NAN,
        pos: usize::MAX,
    };
    fn merge(l: &Self, r: &Self) -> Self {
        let better = if MAX { r.v > l.v } else { r.v < l.v };
        if l.pos == usize::MAX || better {
            *r
        } else {
            *l
        }
    }
}

impl<const MAX: bool> Extreme<MAX> {
    pub fn one(x: f64, pos: usize) -> Self {
        if x.is_nan() {
            Self::EMPTY
        } else {
            Extreme { v: x, pos }
        }
    }
}

/// Sums for a weighted mean with weights 1..n by position in the window.
#[derive(Clone, Copy)]
pub(crate) struct Weighted {
    n: f64,
    sx: f64,
    spx: f64,
    sp: f64,
}

impl Acc for Weighted {
    const EMPTY: Self = Weighted {
        n: 0.0,
        sx: 0.0,
        spx: 0.0,
        sp: 0.0,
    };
    fn merge(l: &Self, r: &Self) -> Self {
        if l.n == 0.0 {
            return *r;
        }
        if r.n == 0.0 {
            return *l;
        }
        Weighted {
            n: l.n + r.n,
            sx: l.sx + r.sx,
            spx: l.spx + r.spx,
            sp: l.sp + r.sp,
        }
    }
}

impl Weighted {
    pub fn one(x: f64, pos: usize) -> Self {
        if x.is_nan() {
            Self::EMPTY
        } else {
            let p = pos as f64;
            Weighted {
                n: 1.0,
                sx: x,
                spx: p * x,
                sp: p,
            }
        }
    }
}

impl Weighted {
    /// `Σ w x / Σ w` over the valid values, `w` = position in the window counted from 1 at `first` (absolute).
    pub fn mean(&self, first: usize) -> f64 {
        if self.n == 0.0 {
            return f64::NAN;
        }
        let shift = first as f64 - 1.0;
        (self.spx - shift * self.sx) / (self.sp - shift * self.n)
    }
}

/// Applies `f` to each window's accumulator of a [`Step`] reduction.
pub(crate) fn rolling_stepped<S: Step>(
    len: usize,
    base: usize,
    n: Option<usize>,
    row: impl Fn(usize) -> S::Row,
    f: impl Fn(&S) -> f64,
) -> Vec<f64> {
    let mut out = vec![f64::NAN; len];
    stepped(len, base, n, row, |i, acc: &S, _| out[i] = f(acc));
    out
}

/// Applies `f` to each window's accumulator.
pub(crate) fn rolling<A: Acc>(
    len: usize,
    base: usize,
    n: Option<usize>,
    one: impl Fn(usize) -> A,
    f: impl Fn(&A, usize) -> f64,
) -> Vec<f64> {
    let mut out = vec![f64::NAN; len];
    sliding(len, base, n, one, |i, acc, start| out[i] = f(acc, start));
    out
}

/// pandas `ewm(alpha, adjust=True, ignore_na=False, min_periods=1).mean()`, step for step: a NaN input repeats
/// the previous mean but still decays the old weight.
pub(crate) fn ewm(xs: &[f64], alpha: f64) -> Vec<f64> {
    let mut out = vec![f64::NAN; xs.len()];
    let decay = 1.0 - alpha;
    let mut weighted = f64::NAN;
    let mut old_wt = 1.0;
    for (i, &x) in xs.iter().enumerate() {
        let obs = !x.is_nan();
        if !weighted.is_nan() {
            old_wt *= decay;
            if obs {
                if weighted != x {
                    weighted = (old_wt * weighted + x) / (old_wt + 1.0);
                }
                old_wt += 1.0;
            }
        } else if obs {
            weighted = x;
        }
        out[i] = weighted;
    }
    out
}

/// qlib's `EMA(x, 0)`: at row t (n = t + 1 rows so far) the mean with weights `a^(n-1-i)`, `a = 1 - 2/(n+1)`,
/// normalised over all n rows, NaN rows adding nothing to the numerator; NaN before the first valid value
/// (pandas' `expanding(min_periods=1).apply` does not call qlib's function on a window without one). The decay
/// changes with n, so there is no recurrence: O(n) per row. Rarely used; kept exact rather than fast.
pub(crate) fn ema_expanding(xs: &[f64]) -> Vec<f64> {
    let mut out = vec![f64::NAN; xs.len()];
    let first = xs.iter().position(|x| !x.is_nan()).unwrap_or(xs.len());
    for (t, o) in out.iter_mut().enumerate().skip(first) {
        let n = (t + 1) as f64;
        let a = 1.0 - 2.0 / (1.0 + n);
        let (mut w, mut num, mut den) = (1.0, 0.0, 0.0);
        for &x in xs[..=t].iter().rev() {
            den += w;
            if !x.is_nan() {
                num += w * x;
            }
            w *= a;
        }
        *o = num / den;
    }
    out
}

/// qlib's `WMA` in its compatible mode (qlib issue #1993): for the window `x` of the last `n` rows (every row
/// so far when `None`; fewer at the start), `np.nanmean(w * x)` with `w = (1..=L) / sum(1..=L)` over all L
/// rows of the window: the weighted sum over the valid values divided by their count. numpy's arithmetic,
/// step for step (`nanmean` sums with NaN replaced by 0, by [`numpy_sum`]), so the bits are qlib's. NaN
/// where the window has no valid value (pandas does not call the function there). O(L) per row, as in qlib.
pub(crate) fn wma_qlib(xs: &[f64], n: Option<usize>) -> Vec<f64> {
    let mut out = vec![f64::NAN; xs.len()];
    let mut terms = Vec::new();
    for (i, o) in out.iter_mut().enumerate() {
        let start = n.map_or(0, |n| (i + 1).saturating_sub(n.max(1)));
        let window = &xs[start..=i];
        let valid = window.iter().filter(|x| !x.is_nan()).count();
        if valid == 0 {
            continue;
        }
        let len = window.len() as u64;
        let total = (len * (len + 1) / 2) as f64;
        terms.clear();
        terms.extend(window.iter().enumerate().map(|(k, &x)| {
            let t = ((k + 1) as f64 / total) * x;
            if t.is_nan() { 0.0 } else { t }
        }));
        *o = numpy_sum(&terms) / valid as f64;
    }
    out
}

/// `np.sum` of a contiguous float64 array, bit for bit: `0.0 +` numpy's pairwise sum (sequential below 8
/// values, eight accumulators up to 128, halves at a multiple of 8 above).
pub(crate) fn numpy_sum(a: &[f64]) -> f64 {
    fn pairwise(a: &[f64]) -> f64 {
        let n = a.len();
        if n < 8 {
            a.iter().fold(-0.0, |s, &x| s + x)
        } else if n <= 128 {
            let mut r = [0.0; 8];
            r.copy_from_slice(&a[..8]);
            let whole = n - n % 8;
            for chunk in a[8..whole].chunks_exact(8) {
                for (acc, &x) in r.iter_mut().zip(chunk) {
                    *acc += x;
                }
            }
            let mut s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
            for &x in &a[whole..] {
                s += x;
            }
            s
        } else {
            let half = n / 2;
            let half = half - half % 8;
            pairwise(&a[..half]) + pairwise(&a[half..])
        }
    }
    0.0 + pairwise(a)
}

/// qlib's IdxMax/IdxMin in its compatible mode: numpy's `argmax() + 1` returns the first NaN's position in
/// a window that holds one. Replaces `out[i]` by that position for every window of the last `n` rows
/// (every row so far when `None`) that holds a NaN and a value; a window without a value stays as it is
/// (NaN: pandas does not call the function there).
pub(crate) fn first_nan_positions(xs: &[f64], n: Option<usize>, out: &mut [f64]) {
    // The first NaN at or after each row.
    let mut next = vec![xs.len(); xs.len() + 1];
    for i in (0..xs.len()).rev() {
        next[i] = if xs[i].is_nan() { i } else { next[i + 1] };
    }
    let mut last_valid = None;
    for (i, o) in out.iter_mut().enumerate() {
        if !xs[i].is_nan() {
            last_valid = Some(i);
        }
        let start = n.map_or(0, |n| (i + 1).saturating_sub(n.max(1)));
        let has_value = last_valid.is_some_and(|v| v >= start);
        if has_value && next[start] <= i {
            *o = (next[start] - start + 1) as f64;
        }
    }
}

/// Counts per value rank with O(log n) insert, remove, rank and k-th queries: the order statistics of a
/// window (Rank, Quantile, Med). Values are ranked once per series; NaN is never inserted.
pub(crate) struct OrderStats {
    /// The distinct non-NaN values of the series, ascending.
    values: Vec<f64>,
    tree: Vec<u32>,
    count: Vec<u32>,
    top: usize,
    pub len: u32,
}

impl OrderStats {
    pub fn new(xs: &[f64]) -> OrderStats {
        let mut values: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
        values.sort_unstable_by(f64::total_cmp);
        values.dedup();
        let top = values.len().next_power_of_two();
        OrderStats {
            tree: vec![0; values.len() + 1],
            count: vec![0; values.len()],
            values,
            top,
            len: 0,
        }
    }

    /// The rank of a value of the series (which must not be NaN).
    pub fn rank_of(&self, x: f64) -> usize {
        self.values.partition_point(|v| v.total_cmp(&x).is_lt())
    }

    pub fn add(&mut self, r: usize, delta: i32) {
        self.count[r] = self.count[r].wrapping_add_signed(delta);
        self.len = self.len.wrapping_add_signed(delta);
        let mut i = r + 1;
        while i < self.tree.len() {
            self.tree[i] = self.tree[i].wrapping_add_signed(delta);
            i += i & i.wrapping_neg();
        }
    }

    /// How many values in the window are below rank `r`.
    pub fn below(&self, r: usize) -> u32 {
        let (mut i, mut s) = (r, 0);
        while i > 0 {
            s += self.tree[i];
            i &= i - 1;
        }
        s
    }

    pub fn equal(&self, r: usize) -> u32 {
        self.count[r]
    }

    /// The k-th smallest value in the window (0-based; k < len).
    pub fn kth(&self, k: u32) -> f64 {
        let (mut pos, mut rem) = (0, k);
        let mut step = self.top;
        while step > 0 {
            let next = pos + step;
            if next < self.tree.len() && self.tree[next] <= rem {
                pos = next;
                rem -= self.tree[next];
            }
            step >>= 1;
        }
        self.values[pos]
    }
}

/// The order statistics of a window, however kept.
pub(crate) trait Ordered {
    fn count(&self) -> u32;
    /// The k-th smallest value (0-based; k < count).
    fn kth(&self, k: u32) -> f64;
    /// How many values are below `x`, and how many equal it.
    fn below_equal(&self, x: f64) -> (u32, u32);
}

impl Ordered for OrderStats {
    fn count(&self) -> u32 {
        self.len
    }
    fn kth(&self, k: u32) -> f64 {
        OrderStats::kth(self, k)
    }
    fn below_equal(&self, x: f64) -> (u32, u32) {
        let r = self.rank_of(x);
        (self.below(r), self.equal(r))
    }
}

/// A short window kept sorted: binary search and a memmove of at most the window per row, which beats the
/// Fenwick tree's O(log n) walks for the windows factor libraries use (up to a few hundred rows).
pub(crate) struct SortedWindow {
    /// The window's values as [`order_key`]s, ascending: a search compares integers, with no conversion of
    /// each value it visits.
    keys: Vec<i64>,
    /// Where the newest value went (`usize::MAX`: it was NaN), so ranking it needs no search.
    newest: usize,
}

/// `f64::total_cmp` as an integer: keys compare as their values do in total order. Its own inverse.
fn order_key(x: f64) -> i64 {
    let b = x.to_bits() as i64;
    b ^ ((((b >> 63) as u64) >> 1) as i64)
}

fn from_key(k: i64) -> f64 {
    f64::from_bits((k ^ ((((k >> 63) as u64) >> 1) as i64)) as u64)
}

/// How many of the ascending `keys` are below `k`. (A branch-free count of the keys was slower than this
/// binary search even for windows of 5 or 20.)
fn below(keys: &[i64], k: i64) -> usize {
    keys.partition_point(|&y| y < k)
}

impl Ordered for SortedWindow {
    fn count(&self) -> u32 {
        self.keys.len() as u32
    }
    fn kth(&self, k: u32) -> f64 {
        from_key(self.keys[k as usize])
    }
    fn below_equal(&self, x: f64) -> (u32, u32) {
        let keys = &self.keys;
        // The values before the newest one's place are below it in total order, which is `<` unless x is a
        // zero (total order puts -0 before +0; `<` calls them equal: count below -0 then).
        let lo = if x != 0.0 && keys.get(self.newest) == Some(&order_key(x)) {
            self.newest
        } else {
            below(keys, order_key(if x == 0.0 { -0.0 } else { x }))
        };
        let equal = keys[lo..].iter().take_while(|&&k| from_key(k) == x).count();
        (lo as u32, equal as u32)
    }
}

impl SortedWindow {
    /// Adds `x` and removes `old`, a value in the window (NaN: nothing to add or remove), with one shift of
    /// the values between their places.
    fn replace(&mut self, x: f64, old: f64) {
        let v = &mut self.keys;
        let (kx, ko) = (order_key(x), order_key(old));
        self.newest = match (x.is_nan(), old.is_nan()) {
            (true, true) => usize::MAX,
            (false, true) => {
                let at = below(v, kx);
                v.insert(at, kx);
                at
            }
            (true, false) => {
                v.remove(below(v, ko));
                usize::MAX
            }
            (false, false) => {
                // `from` holds `old`; `to` is where `x` goes among the values before the removal.
                let (from, to) = (below(v, ko), below(v, kx));
                if to <= from {
                    v.copy_within(to..from, to + 1);
                    v[to] = kx;
                    to
                } else {
                    v.copy_within(from + 1..to, from);
                    v[to - 1] = kx;
                    to - 1
                }
            }
        };
    }
}

/// Windows up to this many rows use [`SortedWindow`], longer and expanding ones [`OrderStats`].
const SORTED_WINDOW_MAX: usize = 512;

/// A statistic of a window's order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum OrderStat {
    Quantile(f64),
    Rank,
    Median,
}

impl OrderStat {
    /// The statistic of the window `os`, whose newest value is `x`.
    pub fn of<O: Ordered + ?Sized>(self, os: &O, x: f64) -> f64 {
        match self {
            OrderStat::Quantile(q) => quantile(os, q),
            OrderStat::Rank => rank_pct(os, x),
            OrderStat::Median => median(os),
        }
    }
}

/// Statistics of each window (`None`: expanding) in one pass, NaN never inserted: one output per statistic.
/// `Quantile(x,20,0.8)`, `Quantile(x,20,0.2)` and `Rank(x,20)` keep one sorted window instead of three.
pub(crate) fn order_stats_many(xs: &[f64], n: Option<usize>, stats: &[OrderStat]) -> Vec<Vec<f64>> {
    let mut out = vec![vec![f64::NAN; xs.len()]; stats.len()];
    // Generic rather than `dyn`, so each structure's queries are inlined into the loop.
    fn emit<O: Ordered>(out: &mut [Vec<f64>], stats: &[OrderStat], i: usize, os: &O, x: f64) {
        for (o, s) in out.iter_mut().zip(stats) {
            o[i] = s.of(os, x);
        }
    }
    if let Some(n) = n.filter(|&n| n <= SORTED_WINDOW_MAX) {
        let mut w = SortedWindow {
            keys: Vec::with_capacity(n),
            newest: usize::MAX,
        };
        for i in 0..xs.len() {
            let old = if i >= n { xs[i - n] } else { f64::NAN };
            w.replace(xs[i], old);
            emit(&mut out, stats, i, &w, xs[i]);
        }
        return out;
    }
    let mut os = OrderStats::new(xs);
    let ranks: Vec<usize> = xs
        .iter()
        .map(|&x| {
            if x.is_nan() {
                usize::MAX
            } else {
                os.rank_of(x)
            }
        })
        .collect();
    for i in 0..xs.len() {
        if ranks[i] != usize::MAX {
            os.add(ranks[i], 1);
        }
        if let Some(n) = n
            && i >= n
            && ranks[i - n] != usize::MAX
        {
            os.add(ranks[i - n], -1);
        }
        emit(&mut out, stats, i, &os, xs[i]);
    }
    out
}

/// pandas' linear-interpolated quantile of the window.
pub(crate) fn quantile<O: Ordered + ?Sized>(os: &O, q: f64) -> f64 {
    match os.count() {
        0 => f64::NAN,
        1 => os.kth(0),
        n => {
            let at = q * (n - 1) as f64;
            let lo = at as u32;
            let low = os.kth(lo);
            if at == lo as f64 {
                low
            } else {
                let high = os.kth(lo + 1);
                low + (high - low) * (at - lo as f64)
            }
        }
    }
}

/// pandas' rolling median: the middle value, or the mean of the two middle values.
pub(crate) fn median<O: Ordered + ?Sized>(os: &O) -> f64 {
    match os.count() {
        0 => f64::NAN,
        n if n % 2 == 1 => os.kth(n / 2),
        n => (os.kth(n / 2) + os.kth(n / 2 - 1)) / 2.0,
    }
}

/// pandas' `rank(pct=True)` with average ties of the newest value; NaN when it is NaN.
pub(crate) fn rank_pct<O: Ordered + ?Sized>(os: &O, x: f64) -> f64 {
    if x.is_nan() || os.count() == 0 {
        return f64::NAN;
    }
    let (below, equal) = os.below_equal(x);
    (below as f64 + (equal as f64 + 1.0) / 2.0) / os.count() as f64
}

/// Mean absolute deviation around the window mean, over the valid values (qlib's `Mad`). The sum of
/// deviations is taken over the window in order, O(window) per row: a sliding form would have to subtract
/// values and lose the bit-identity of sub-range evaluation.
pub(crate) fn mad(xs: &[f64], n: Option<usize>) -> Vec<f64> {
    let mut out = vec![f64::NAN; xs.len()];
    for i in 0..xs.len() {
        let start = n.map_or(0, |n| (i + 1).saturating_sub(n));
        let w = &xs[start..=i];
        let (mut cnt, mut sum) = (0usize, 0.0);
        for &x in w {
            if !x.is_nan() {
                cnt += 1;
                sum += x;
            }
        }
        if cnt == 0 {
            continue;
        }
        let mean = sum / cnt as f64;
        let dev: f64 = w
            .iter()
            .filter(|x| !x.is_nan())
            .map(|x| (x - mean).abs())
            .sum();
        out[i] = dev / cnt as f64;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition `flat` stands for.
    fn flat_by_sqrt(var: f64) -> bool {
        var.sqrt() <= 2e-5
    }

    #[test]
    fn flat_bound_is_the_last_variance_whose_std_is_within_tolerance() {
        assert!(flat_by_sqrt(FLAT_VAR));
        assert!(!flat_by_sqrt(FLAT_VAR.next_up()));
        let mut below = FLAT_VAR;
        let mut above = FLAT_VAR;
        for _ in 0..10_000 {
            assert_eq!(flat(below), flat_by_sqrt(below), "{below:e}");
            assert_eq!(flat(above), flat_by_sqrt(above), "{above:e}");
            below = below.next_down();
            above = above.next_up();
        }
        for v in [
            0.0,
            -0.0,
            -1e-300,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            4e-10,
        ] {
            assert_eq!(flat(v), flat_by_sqrt(v), "{v:e}");
        }
    }

    proptest! {
        #[test]
        fn flat_agrees_with_its_definition(var in proptest::num::f64::ANY, small in 0.0f64..1e-9) {
            prop_assert_eq!(flat(var), flat_by_sqrt(var));
            prop_assert_eq!(flat(small), flat_by_sqrt(small));
        }
    }
}
