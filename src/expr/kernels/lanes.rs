//! Window reductions over `L` series at once (sums, spreads, co-moments and extremes): the series of `L`
//! instruments interleaved row by row (`xs[i * L + l]` is lane `l`'s row `i`), so one accumulator holds `L`
//! lanes' sums side by side and the per-row work (adds, merges, the statistic) is vector arithmetic across
//! instruments.
//!
//! Every lane does exactly what [`stepped`](super::stepped) does for its series, in the same order: the blocks,
//! and so every addition and merge, depend only on the length, the first calendar row and the window, which
//! all lanes share. A merge's "one side is empty" test becomes a select per lane. So each lane's values are
//! those of the scalar kernels, bit for bit (property tests in `tests` below).

// Lane loops index several arrays by lane (`self.s[l]`, `x[l]`): the structure-of-arrays form the vectoriser
// turns into one instruction per step.
#![allow(clippy::needless_range_loop)]

use super::{CoMoments, Step, blocks, flat, mask, merge_bounds, or_neg_zero, sample_var};

/// `L` lanes of a window reduction that [`stepped_lanes`] runs: a [`Step`] one, or an extreme.
pub(crate) trait LaneStep<const L: usize>: Copy {
    /// The empty accumulator of a run that adds the rows `rows` of `xs` in this order: each lane's shift is
    /// its first valid row among them (as [`Step::open`]).
    fn open(xs: &Interleaved<'_, L>, rows: impl Iterator<Item = usize> + Clone) -> Self;
    /// Adds row `i` of every lane.
    fn add(&mut self, xs: &Interleaved<'_, L>, i: usize);
    fn merge(tail: &Self, head: &Self) -> Self;
}

/// `f(l)` for every lane. The statistics below compute both sides of each choice and then select, with no
/// branch, so the compiler makes one vector instruction of each step for all lanes; each lane's arithmetic
/// is that of the scalar statistic it mirrors (named in its doc), in the same order.
#[inline(always)]
fn each<const L: usize>(f: impl Fn(usize) -> f64) -> [f64; L] {
    let mut o = [0.0; L];
    for (l, o) in o.iter_mut().enumerate() {
        *o = f(l);
    }
    o
}

/// NaN where `nan`, else `x`.
#[inline(always)]
fn nan_if(nan: bool, x: f64) -> f64 {
    if nan { f64::NAN } else { x }
}

/// One lane of a merge of `a` (count `a_n`) and `b` (count `b_n`): the other side as it is where one side is
/// empty, as the scalar merges return it, else `merged`.
#[inline(always)]
fn unless_empty(a_n: f64, b_n: f64, a: f64, b: f64, merged: f64) -> f64 {
    if a_n == 0.0 {
        b
    } else if b_n == 0.0 {
        a
    } else {
        merged
    }
}

/// The input of a lane reduction: one interleaved series, or two (pairs).
#[derive(Clone, Copy)]
pub(crate) struct Interleaved<'a, const L: usize> {
    pub x: &'a [f64],
    pub y: &'a [f64],
}

impl<const L: usize> Interleaved<'_, L> {
    #[inline(always)]
    fn x(&self, i: usize) -> &[f64; L] {
        self.x[i * L..i * L + L].try_into().expect("L values")
    }
    #[inline(always)]
    fn y(&self, i: usize) -> &[f64; L] {
        self.y[i * L..i * L + L].try_into().expect("L values")
    }
}

/// [`Sum`](super::Sum) in `L` lanes.
#[derive(Clone, Copy)]
pub(crate) struct Sums<const L: usize> {
    n: [u32; L],
    s: [f64; L],
}

impl<const L: usize> LaneStep<L> for Sums<L> {
    #[inline(always)]
    fn open(_: &Interleaved<'_, L>, _: impl Iterator<Item = usize> + Clone) -> Self {
        Sums {
            n: [0; L],
            s: [-0.0; L],
        }
    }
    #[inline(always)]
    fn add(&mut self, xs: &Interleaved<'_, L>, i: usize) {
        let x = xs.x(i);
        for l in 0..L {
            let keep = mask(!x[l].is_nan());
            self.n[l] += (keep & 1) as u32;
            self.s[l] += or_neg_zero(x[l], keep);
        }
    }
    #[inline(always)]
    fn merge(a: &Self, b: &Self) -> Self {
        let mut m = *a;
        for l in 0..L {
            m.n[l] = a.n[l] + b.n[l];
            m.s[l] = a.s[l] + b.s[l];
        }
        m
    }
}

impl<const L: usize> Sums<L> {
    /// Mean: `a.s / a.n`, NaN when empty.
    #[inline(always)]
    pub fn mean(&self) -> [f64; L] {
        each(|l| nan_if(self.n[l] == 0, self.s[l] / f64::from(self.n[l])))
    }

    /// Sum: NaN when empty.
    #[inline(always)]
    pub fn sum(&self) -> [f64; L] {
        each(|l| nan_if(self.n[l] == 0, self.s[l]))
    }

    /// Count of the valid values.
    #[inline(always)]
    pub fn count(&self) -> [f64; L] {
        each(|l| f64::from(self.n[l]))
    }
}

/// The first valid value of each lane among `rows` (0 where none: [`Spread::open`](super::Spread)'s default).
#[inline(always)]
fn first_valid<const L: usize>(
    rows: impl Iterator<Item = usize> + Clone,
    value: impl Fn(usize, usize) -> Option<[f64; 2]>,
) -> [[f64; 2]; L] {
    let mut c = [[0.0; 2]; L];
    for (l, c) in c.iter_mut().enumerate() {
        if let Some(v) = rows.clone().find_map(|i| value(i, l)) {
            *c = v;
        }
    }
    c
}

/// [`Spread`](super::Spread) in `L` lanes.
#[derive(Clone, Copy)]
pub(crate) struct Spreads<const L: usize> {
    n: [f64; L],
    c: [f64; L],
    s: [f64; L],
    q: [f64; L],
}

impl<const L: usize> LaneStep<L> for Spreads<L> {
    #[inline(always)]
    fn open(xs: &Interleaved<'_, L>, rows: impl Iterator<Item = usize> + Clone) -> Self {
        let c = first_valid::<L>(rows, |i, l| {
            let x = xs.x[i * L + l];
            (!x.is_nan()).then_some([x, 0.0])
        });
        Spreads {
            n: [0.0; L],
            c: c.map(|c| c[0]),
            s: [0.0; L],
            q: [0.0; L],
        }
    }
    #[inline(always)]
    fn add(&mut self, xs: &Interleaved<'_, L>, i: usize) {
        let x = xs.x(i);
        for l in 0..L {
            let keep = mask(!x[l].is_nan());
            let d = or_neg_zero(x[l] - self.c[l], keep);
            self.n[l] += (keep & 1) as f64;
            self.s[l] += d;
            self.q[l] += d * d;
        }
    }
    #[inline(always)]
    fn merge(a: &Self, b: &Self) -> Self {
        let mut m = *a;
        for l in 0..L {
            // Spread::merge, lane by lane.
            let (d, bn) = (b.c[l] - a.c[l], b.n[l]);
            let pick = |av: f64, bv: f64, merged: f64| unless_empty(a.n[l], bn, av, bv, merged);
            m.n[l] = pick(a.n[l], bn, a.n[l] + bn);
            m.c[l] = pick(a.c[l], b.c[l], a.c[l]);
            m.s[l] = pick(a.s[l], b.s[l], a.s[l] + b.s[l] + bn * d);
            m.q[l] = pick(
                a.q[l],
                b.q[l],
                a.q[l] + b.q[l] + d * (2.0 * b.s[l] + bn * d),
            );
        }
        m
    }
}

impl<const L: usize> Spreads<L> {
    /// [`Spread::var`](super::Spread::var).
    #[inline(always)]
    pub fn var(&self) -> [f64; L] {
        each(|l| {
            let m2 = (self.q[l] - self.s[l] * (self.s[l] / self.n[l])).max(0.0);
            sample_var(self.n[l], m2)
        })
    }

    /// [`Spread::var`](super::Spread::var)'s square root.
    #[inline(always)]
    pub fn std(&self) -> [f64; L] {
        self.var().map(f64::sqrt)
    }

    /// 1 where the spread is [`flat`], else 0.
    #[inline(always)]
    pub fn flat(&self) -> [f64; L] {
        self.var().map(|v| f64::from(u8::from(flat(v))))
    }
}

/// [`CoMoments`] in `L` lanes.
#[derive(Clone, Copy)]
pub(crate) struct CoMomentLanes<const L: usize> {
    n: [f64; L],
    cx: [f64; L],
    cy: [f64; L],
    sx: [f64; L],
    sy: [f64; L],
    sxx: [f64; L],
    syy: [f64; L],
    sxy: [f64; L],
}

impl<const L: usize> LaneStep<L> for CoMomentLanes<L> {
    #[inline(always)]
    fn open(xs: &Interleaved<'_, L>, rows: impl Iterator<Item = usize> + Clone) -> Self {
        let c = first_valid::<L>(rows, |i, l| {
            let (x, y) = (xs.x[i * L + l], xs.y[i * L + l]);
            CoMoments::valid((x, y)).then_some([x, y])
        });
        CoMomentLanes {
            n: [0.0; L],
            cx: c.map(|c| c[0]),
            cy: c.map(|c| c[1]),
            sx: [0.0; L],
            sy: [0.0; L],
            sxx: [0.0; L],
            syy: [0.0; L],
            sxy: [0.0; L],
        }
    }
    #[inline(always)]
    fn add(&mut self, xs: &Interleaved<'_, L>, i: usize) {
        let (x, y) = (xs.x(i), xs.y(i));
        for l in 0..L {
            let keep = mask(!x[l].is_nan() && !y[l].is_nan());
            let (dx, dy) = (
                or_neg_zero(x[l] - self.cx[l], keep),
                or_neg_zero(y[l] - self.cy[l], keep),
            );
            self.n[l] += (keep & 1) as f64;
            self.sx[l] += dx;
            self.sy[l] += dy;
            self.sxx[l] += dx * dx;
            self.syy[l] += dy * dy;
            self.sxy[l] += dx * dy;
        }
    }
    #[inline(always)]
    fn merge(a: &Self, b: &Self) -> Self {
        let mut m = *a;
        for l in 0..L {
            // CoMoments::merge, lane by lane.
            let (dx, dy, bn) = (b.cx[l] - a.cx[l], b.cy[l] - a.cy[l], b.n[l]);
            let pick = |av: f64, bv: f64, merged: f64| unless_empty(a.n[l], bn, av, bv, merged);
            m.n[l] = pick(a.n[l], bn, a.n[l] + bn);
            m.cx[l] = pick(a.cx[l], b.cx[l], a.cx[l]);
            m.cy[l] = pick(a.cy[l], b.cy[l], a.cy[l]);
            m.sx[l] = pick(a.sx[l], b.sx[l], a.sx[l] + b.sx[l] + bn * dx);
            m.sy[l] = pick(a.sy[l], b.sy[l], a.sy[l] + b.sy[l] + bn * dy);
            m.sxx[l] = pick(
                a.sxx[l],
                b.sxx[l],
                a.sxx[l] + b.sxx[l] + dx * (2.0 * b.sx[l] + bn * dx),
            );
            m.syy[l] = pick(
                a.syy[l],
                b.syy[l],
                a.syy[l] + b.syy[l] + dy * (2.0 * b.sy[l] + bn * dy),
            );
            m.sxy[l] = pick(
                a.sxy[l],
                b.sxy[l],
                a.sxy[l] + b.sxy[l] + dx * b.sy[l] + dy * b.sx[l] + bn * dx * dy,
            );
        }
        m
    }
}

/// A statistic of the windows of a lane reduction, chosen by type ([`stat`]) so that it is always inlined
/// into the kernel's loops: passed as a function value it stayed a call per row, compiled without the
/// kernel's vector instructions.
pub(crate) trait LaneStat<const L: usize> {
    type Acc: LaneStep<L>;
    /// How many series it gives.
    const OUTS: usize = 1;
    /// Row `i`'s values of every lane (`outs[k][i * L + l]`), from the accumulator of the window that starts
    /// at row `start` and the input.
    fn put(acc: &Self::Acc, xs: &Interleaved<'_, L>, i: usize, start: usize, outs: &mut [Vec<f64>]);
}

/// The statistics of the lane kernels, each the method of its accumulator named here.
pub(crate) mod stat {
    use super::{CoMomentLanes, ExtremeLanes, Interleaved, LaneStat, Spreads, Sums};

    macro_rules! stats {
        ($($name:ident: $acc:ident :: $method:ident;)*) => {$(
            #[doc = concat!("[`", stringify!($acc), "::", stringify!($method), "`].")]
            pub(crate) struct $name;
            impl<const L: usize> LaneStat<L> for $name {
                type Acc = $acc<L>;
                #[inline(always)]
                fn put(acc: &$acc<L>, _: &Interleaved<'_, L>, i: usize, _: usize, outs: &mut [Vec<f64>]) {
                    outs[0][i * L..i * L + L].copy_from_slice(&acc.$method());
                }
            }
        )*};
    }

    stats! {
        Mean: Sums::mean;
        Sum: Sums::sum;
        Count: Sums::count;
        Var: Spreads::var;
        Std: Spreads::std;
        Flat: Spreads::flat;
        Cov: CoMomentLanes::cov;
        Corr: CoMomentLanes::corr;
        CorrUnlessFlat: CoMomentLanes::corr_unless_flat;
    }

    /// The extreme (Max or Min) and its position (IdxMax or IdxMin) of each window.
    pub(crate) struct Extremes<const MAX: bool>;

    impl<const L: usize, const MAX: bool> LaneStat<L> for Extremes<MAX> {
        type Acc = ExtremeLanes<L, MAX>;
        const OUTS: usize = 2;
        #[inline(always)]
        fn put(
            acc: &ExtremeLanes<L, MAX>,
            xs: &Interleaved<'_, L>,
            i: usize,
            start: usize,
            outs: &mut [Vec<f64>],
        ) {
            outs[0][i * L..i * L + L].copy_from_slice(&acc.value());
            // The calendar row of the window's first row: `xs.y` holds each row's.
            let first = xs.y[start * L];
            outs[1][i * L..i * L + L].copy_from_slice(&acc.position(first));
        }
    }

    /// Slope, Rsquare and Resi of the values (`y`) on their calendar row (`x`), qstore's rules:
    /// [`eval::trend_many`](crate::expr) lane by lane. `WINDOWED`: Rsquare is NaN where the values are
    /// (nearly) constant, as qlib's rolling form (not its expanding one).
    pub(crate) struct Trend<const WINDOWED: bool>;

    impl<const L: usize, const WINDOWED: bool> LaneStat<L> for Trend<WINDOWED> {
        type Acc = CoMomentLanes<L>;
        const OUTS: usize = 3;
        #[inline(always)]
        fn put(
            acc: &CoMomentLanes<L>,
            xs: &Interleaved<'_, L>,
            i: usize,
            _: usize,
            outs: &mut [Vec<f64>],
        ) {
            let (slope, rsquare, resi) = acc.trend::<WINDOWED>(xs, i);
            outs[0][i * L..i * L + L].copy_from_slice(&slope);
            outs[1][i * L..i * L + L].copy_from_slice(&rsquare);
            outs[2][i * L..i * L + L].copy_from_slice(&resi);
        }
    }
}

/// [`Extreme`](super::Extreme) in `L` lanes: each lane's extreme value (NaN: none yet) and its calendar row,
/// read from `xs.y` (the rows, as numbers). A larger (`MAX`) or smaller value wins, and of equal ones the
/// earlier row: the window's first extreme whatever the order of the merges, which is the scalar kernel's
/// answer (the value and the row are picked, never computed, so they are its bits, signed zeros included).
#[derive(Clone, Copy)]
pub(crate) struct ExtremeLanes<const L: usize, const MAX: bool> {
    v: [f64; L],
    pos: [f64; L],
}

impl<const L: usize, const MAX: bool> ExtremeLanes<L, MAX> {
    /// Whether `(v, pos)` replaces lane `l` (a NaN `v` never does).
    #[inline(always)]
    fn beaten(&self, l: usize, v: f64, pos: f64) -> bool {
        let better = if MAX { v > self.v[l] } else { v < self.v[l] };
        (self.v[l].is_nan() & !v.is_nan()) | better | ((v == self.v[l]) & (pos < self.pos[l]))
    }

    /// The extreme values (Max, Min).
    #[inline(always)]
    pub fn value(&self) -> [f64; L] {
        self.v
    }

    /// 1-based position of each lane's extreme in the window that starts at calendar row `first` (IdxMax,
    /// IdxMin); NaN for an empty window.
    #[inline(always)]
    pub fn position(&self, first: f64) -> [f64; L] {
        each(|l| nan_if(self.v[l].is_nan(), self.pos[l] - first + 1.0))
    }
}

impl<const L: usize, const MAX: bool> LaneStep<L> for ExtremeLanes<L, MAX> {
    #[inline(always)]
    fn open(_: &Interleaved<'_, L>, _: impl Iterator<Item = usize> + Clone) -> Self {
        ExtremeLanes {
            v: [f64::NAN; L],
            pos: [f64::INFINITY; L],
        }
    }
    #[inline(always)]
    fn add(&mut self, xs: &Interleaved<'_, L>, i: usize) {
        let (x, pos) = (xs.x(i), xs.y(i));
        for l in 0..L {
            let take = self.beaten(l, x[l], pos[l]);
            self.v[l] = if take { x[l] } else { self.v[l] };
            self.pos[l] = if take { pos[l] } else { self.pos[l] };
        }
    }
    #[inline(always)]
    fn merge(a: &Self, b: &Self) -> Self {
        let mut m = *a;
        for l in 0..L {
            let take = a.beaten(l, b.v[l], b.pos[l]);
            m.v[l] = if take { b.v[l] } else { a.v[l] };
            m.pos[l] = if take { b.pos[l] } else { a.pos[l] };
        }
        m
    }
}

/// [`super::Centered`] in `L` lanes.
pub(crate) struct CenteredLanes<const L: usize> {
    pub n: [f64; L],
    pub mx: [f64; L],
    pub my: [f64; L],
    pub sxx: [f64; L],
    pub syy: [f64; L],
    pub sxy: [f64; L],
}

impl<const L: usize> CoMomentLanes<L> {
    /// [`CoMoments::centered`].
    #[inline(always)]
    pub fn centered(&self) -> CenteredLanes<L> {
        let ux = each::<L>(|l| self.sx[l] / self.n[l]);
        let uy = each::<L>(|l| self.sy[l] / self.n[l]);
        CenteredLanes {
            n: self.n,
            mx: each(|l| self.cx[l] + ux[l]),
            my: each(|l| self.cy[l] + uy[l]),
            sxx: each(|l| (self.sxx[l] - self.sx[l] * ux[l]).max(0.0)),
            syy: each(|l| (self.syy[l] - self.sy[l] * uy[l]).max(0.0)),
            sxy: each(|l| self.sxy[l] - self.sx[l] * uy[l]),
        }
    }

    /// Cov (ddof 1), NaN below two pairs.
    #[inline(always)]
    pub fn cov(&self) -> [f64; L] {
        let m = self.centered();
        each(|l| nan_if(m.n[l] < 2.0, m.sxy[l] / (m.n[l] - 1.0)))
    }

    /// Corr, NaN below two pairs or where either side is [`flat`]: the form for sides with the same gaps.
    #[inline(always)]
    pub fn corr_unless_flat(&self) -> [f64; L] {
        let m = self.centered();
        let (r, flat) = (m.corr(), m.flat_sides());
        each(|l| nan_if(m.n[l] < 2.0 || flat[l], r[l]))
    }

    /// Corr, NaN below two pairs.
    #[inline(always)]
    pub fn corr(&self) -> [f64; L] {
        let m = self.centered();
        let r = m.corr();
        each(|l| nan_if(m.n[l] < 2.0, r[l]))
    }

    /// Slope, Rsquare and Resi at row `i` of the values `xs.y` on their calendar rows `xs.x`, as
    /// `eval::trend_many` computes each ([`super::Centered::slope`], its Rsquare and Resi).
    #[inline(always)]
    #[allow(clippy::type_complexity)]
    pub fn trend<const WINDOWED: bool>(
        &self,
        xs: &Interleaved<'_, L>,
        i: usize,
    ) -> ([f64; L], [f64; L], [f64; L]) {
        let m = self.centered();
        let slope = each::<L>(|l| m.sxy[l] / m.sxx[l]);
        let r = m.corr();
        let rsquare = each(|l| {
            let flat = WINDOWED && flat(sample_var(m.n[l], m.syy[l]));
            nan_if(flat, r[l] * r[l])
        });
        let (x, y) = (xs.x(i), xs.y(i));
        let resi = each(|l| y[l] - (m.my[l] + slope[l] * (x[l] - m.mx[l])));
        (slope, rsquare, resi)
    }
}

impl<const L: usize> CenteredLanes<L> {
    /// [`super::Centered::corr`] (no test of the count).
    #[inline(always)]
    pub fn corr(&self) -> [f64; L] {
        each(|l| self.sxy[l] / (self.sxx[l] * self.syy[l]).sqrt())
    }

    /// Whether each side is [`flat`] ([`super::Centered::var_x`], `var_y`).
    #[inline(always)]
    pub fn flat_sides(&self) -> [bool; L] {
        let mut o = [false; L];
        for (l, o) in o.iter_mut().enumerate() {
            *o =
                flat(sample_var(self.n[l], self.sxx[l])) | flat(sample_var(self.n[l], self.syy[l]));
        }
        o
    }
}

/// [`stepped`](super::stepped) over `L` interleaved series of `len` rows each, with the same blocks, additions
/// and merges as the scalar kernel makes for each lane: `T::put` writes each row's values from its window.
#[inline(always)]
fn stepped_lanes<T: LaneStat<L>, const L: usize>(
    len: usize,
    base: usize,
    n: Option<usize>,
    xs: Interleaved<'_, L>,
    outs: &mut [Vec<f64>],
) {
    let Some(n) = n else {
        let mut acc = T::Acc::open(&xs, 0..len);
        for i in 0..len {
            acc.add(&xs, i);
            T::put(&acc, &xs, i, 0, outs);
        }
        return;
    };
    let n = n.max(1);
    // The previous block's suffix accumulators (by row from its start), made just before they are needed: a
    // block's worth instead of the whole series' (at 512 bytes a row, a series' worth was a fresh mapping per
    // call, zeroed by the kernel page by page). The same additions as `stepped`'s, so the same bits.
    let mut tails: Vec<T::Acc> = Vec::with_capacity(n);
    let mut prev: Option<std::ops::Range<usize>> = None;
    for b in blocks(len, base, n) {
        if let Some(p) = prev.replace(b.clone()) {
            tails.clear();
            tails.resize(p.len(), T::Acc::open(&xs, 0..0));
            let mut acc = T::Acc::open(&xs, p.clone().rev());
            for i in p.clone().rev() {
                acc.add(&xs, i);
                tails[i - p.start] = acc;
            }
        }
        // Row of the calendar-aligned block before this one at `tails[0]` (0 for the first block).
        let first = b.start.saturating_sub(tails.len());
        let mut acc = T::Acc::open(&xs, b.clone());
        let (reach, merged) = merge_bounds(&b, n);
        for i in b.start..reach {
            acc.add(&xs, i);
            T::put(&T::Acc::merge(&tails[0], &acc), &xs, i, 0, outs);
        }
        if reach < merged {
            let tails = tails[reach + 1 - n - first..merged + 1 - n - first].iter();
            for (i, tail) in (reach..merged).zip(tails) {
                acc.add(&xs, i);
                T::put(&T::Acc::merge(tail, &acc), &xs, i, i + 1 - n, outs);
            }
        }
        for i in merged..b.end {
            acc.add(&xs, i);
            T::put(&acc, &xs, i, b.start, outs);
        }
    }
}

/// `T` of each lane's window at each row: `outs[k][i * L + l]`, one series per output of `T`.
#[inline(always)]
pub(crate) fn rolling_lanes<T: LaneStat<L>, const L: usize>(
    len: usize,
    base: usize,
    n: Option<usize>,
    xs: Interleaved<'_, L>,
) -> Vec<Vec<f64>> {
    let mut outs = vec![vec![f64::NAN; len * L]; T::OUTS];
    stepped_lanes::<T, L>(len, base, n, xs, &mut outs);
    outs
}

/// Lanes per group: eight doubles are one AVX-512 register, two AVX2 ones.
pub(crate) const LANES: usize = 8;

/// The one series of a single-output `T` ([`windows_best`]).
pub(crate) fn rolling_lanes_best<T: LaneStat<LANES>>(
    len: usize,
    base: usize,
    n: Option<usize>,
    xs: Interleaved<'_, LANES>,
) -> Vec<f64> {
    windows_best::<T>(len, base, n, xs).swap_remove(0)
}

/// [`rolling_lanes`] compiled for the best vector instructions this processor has (checked at run time, so
/// one binary runs everywhere): the same operations in the same order, so the same bits, whatever the width.
pub(crate) fn windows_best<T: LaneStat<LANES>>(
    len: usize,
    base: usize,
    n: Option<usize>,
    xs: Interleaved<'_, LANES>,
) -> Vec<Vec<f64>> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the processor has AVX-512F (checked just above).
            return unsafe { x86::rolling_avx512::<T>(len, base, n, xs) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the processor has AVX2 (checked just above).
            return unsafe { x86::rolling_avx2::<T>(len, base, n, xs) };
        }
    }
    rolling_lanes::<T, LANES>(len, base, n, xs)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    #[target_feature(enable = "avx512f")]
    pub(super) fn rolling_avx512<T: LaneStat<LANES>>(
        len: usize,
        base: usize,
        n: Option<usize>,
        xs: Interleaved<'_, LANES>,
    ) -> Vec<Vec<f64>> {
        rolling_lanes::<T, LANES>(len, base, n, xs)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn rolling_avx2<T: LaneStat<LANES>>(
        len: usize,
        base: usize,
        n: Option<usize>,
        xs: Interleaved<'_, LANES>,
    ) -> Vec<Vec<f64>> {
        rolling_lanes::<T, LANES>(len, base, n, xs)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Extreme, Spread, Sum, rolling_stepped, sliding};
    use super::*;
    use proptest::prelude::*;

    const L: usize = 4;

    /// Lane `l` of an interleaved series.
    fn lane(xs: &[f64], l: usize) -> Vec<f64> {
        xs.iter().skip(l).step_by(L).copied().collect()
    }

    fn same_bits(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    /// Series with gaps, repeated values (flat windows) and signed zeros.
    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => -1e3f64..1e3,
            1 => Just(f64::NAN),
            1 => Just(0.0),
            1 => Just(-0.0),
            1 => Just(7.25),
        ]
    }

    fn window() -> impl Strategy<Value = Option<usize>> {
        prop_oneof![Just(None), (1usize..40).prop_map(Some)]
    }

    proptest! {
        #[test]
        fn lanes_equal_the_scalar_kernels(
            x in proptest::collection::vec(value(), 0..200 * L),
            y in proptest::collection::vec(value(), 0..200 * L),
            base in 0usize..100,
            n in window(),
        ) {
            let len = x.len().min(y.len()) / L;
            let (x, y) = (&x[..len * L], &y[..len * L]);
            let xs = Interleaved::<L> { x, y };
            let lanes_of = |series: Vec<f64>| (0..L).map(|l| lane(&series, l)).collect::<Vec<_>>();
            let one_x = |f: &dyn Fn(&[f64]) -> Vec<f64>| (0..L).map(|l| f(&lane(x, l))).collect::<Vec<_>>();
            type PairKernel<'a> = &'a dyn Fn(&[f64], &[f64]) -> Vec<f64>;
            let one_xy = |f: PairKernel<'_>| {
                (0..L).map(|l| f(&lane(x, l), &lane(y, l))).collect::<Vec<_>>()
            };
            let each_lane = |got: &[Vec<f64>], want: &[Vec<f64>]| got.iter().zip(want).all(|(g, w)| same_bits(g, w));
            let lanes = |mut out: Vec<Vec<f64>>| lanes_of(out.swap_remove(0));
            let scalar = |f: fn(&Sum) -> f64| one_x(&|v| rolling_stepped(len, base, n, |i| v[i], f));
            prop_assert!(each_lane(&lanes(rolling_lanes::<stat::Mean, L>(len, base, n, xs)), &scalar(|a| if a.n == 0 { f64::NAN } else { a.s / f64::from(a.n) })), "Mean");
            prop_assert!(each_lane(&lanes(rolling_lanes::<stat::Sum, L>(len, base, n, xs)), &scalar(|a| if a.n == 0 { f64::NAN } else { a.s })), "Sum");
            prop_assert!(each_lane(&lanes(rolling_lanes::<stat::Count, L>(len, base, n, xs)), &scalar(|a| f64::from(a.n))), "Count");
            let scalar = |f: fn(&Spread) -> f64| one_x(&|v| rolling_stepped(len, base, n, |i| v[i], f));
            prop_assert!(each_lane(&lanes(rolling_lanes::<stat::Var, L>(len, base, n, xs)), &scalar(|a| a.var())), "Var");
            prop_assert!(each_lane(&lanes(rolling_lanes::<stat::Std, L>(len, base, n, xs)), &scalar(|a| a.var().sqrt())), "Std");
            prop_assert!(each_lane(&lanes(rolling_lanes::<stat::Flat, L>(len, base, n, xs)), &scalar(|a| f64::from(u8::from(flat(a.var()))))), "flat");
            let scalar = |f: fn(&CoMoments) -> f64| one_xy(&|a, b| rolling_stepped(len, base, n, |i| (a[i], b[i]), f));
            prop_assert!(each_lane(&lanes(rolling_lanes::<stat::Cov, L>(len, base, n, xs)), &scalar(|m| {
                let m = m.centered();
                if m.n < 2.0 { f64::NAN } else { m.sxy / (m.n - 1.0) }
            })), "Cov");
            prop_assert!(each_lane(&lanes(rolling_lanes::<stat::Corr, L>(len, base, n, xs)), &scalar(|m| {
                let m = m.centered();
                if m.n < 2.0 { f64::NAN } else { m.corr() }
            })), "Corr");
            prop_assert!(each_lane(&lanes(rolling_lanes::<stat::CorrUnlessFlat, L>(len, base, n, xs)), &scalar(|m| {
                let m = m.centered();
                if m.n < 2.0 || flat(m.var_x()) || flat(m.var_y()) { f64::NAN } else { m.corr() }
            })), "Corr, flat sides");
            // Extremes and their positions (ties, signed zeros and gaps: the first extreme wins).
            let rows: Vec<f64> = (0..len).flat_map(|i| [(base + i) as f64; L]).collect();
            let positions = Interleaved::<L> { x, y: &rows };
            let max = rolling_lanes::<stat::Extremes<true>, L>(len, base, n, positions);
            let min = rolling_lanes::<stat::Extremes<false>, L>(len, base, n, positions);
            fn extremes<const MAX: bool>(v: &[f64], base: usize, n: Option<usize>) -> [Vec<f64>; 2] {
                let mut out = [vec![f64::NAN; v.len()], vec![f64::NAN; v.len()]];
                sliding(v.len(), base, n, |i| Extreme::<MAX>::one(v[i], base + i), |i, a, start| {
                    out[0][i] = a.v;
                    if a.pos != usize::MAX {
                        out[1][i] = (a.pos - (base + start) + 1) as f64;
                    }
                });
                out
            }
            let want: Vec<_> = (0..L).map(|l| extremes::<true>(&lane(x, l), base, n)).collect();
            for k in 0..2 {
                let want: Vec<Vec<f64>> = want.iter().map(|w| w[k].clone()).collect();
                prop_assert!(each_lane(&lanes_of(max[k].clone()), &want), "Max/IdxMax {}", k);
            }
            let want: Vec<_> = (0..L).map(|l| extremes::<false>(&lane(x, l), base, n)).collect();
            for k in 0..2 {
                let want: Vec<Vec<f64>> = want.iter().map(|w| w[k].clone()).collect();
                prop_assert!(each_lane(&lanes_of(min[k].clone()), &want), "Min/IdxMin {}", k);
            }
        }
    }
}
