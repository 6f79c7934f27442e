//! The typed expression tree, its canonical text and its extended window.

use std::fmt;

/// How a rolling operator looks back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    /// The last `n` rows (`n >= 1`), partial windows at the start (pandas `min_periods=1`).
    Periods(u32),
    /// Every row so far (qlib's `N = 0`).
    Expanding,
    /// Exponentially weighted with this `alpha` (qlib's `0 < N < 1`).
    Ewm(f64),
}

/// Element-wise operators of one argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unary {
    Neg,
    Abs,
    Log,
    Sign,
    Not,
}

/// Element-wise operators of two arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Power,
    Greater,
    Less,
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
    And,
    Or,
}

impl Binary {
    /// The infix spelling of an operator the parser chains (`+ - * / & |`).
    pub fn chain_symbol(self) -> Option<&'static str> {
        Some(match self {
            Binary::Add => "+",
            Binary::Sub => "-",
            Binary::Mul => "*",
            Binary::Div => "/",
            Binary::And => "&",
            Binary::Or => "|",
            _ => return None,
        })
    }
}

/// Rolling operators of one series and a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rolling {
    Mean,
    Sum,
    Std,
    Var,
    Max,
    Min,
    Med,
    Mad,
    Count,
    Skew,
    Kurt,
    Rank,
    IdxMax,
    IdxMin,
    Wma,
    Ema,
    Delta,
    Slope,
    Rsquare,
    Resi,
}

/// Rolling operators of two series and a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pair {
    Corr,
    Cov,
}

/// A parsed, validated expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `$name`: a stored field (lower-cased: file names are).
    Field(String),
    Const(f64),
    Unary(Unary, Box<Expr>),
    Binary(Binary, Box<Expr>, Box<Expr>),
    /// `first op1 x1 op2 x2 ...`, evaluated left to right (the same values as the left-nested binary tree):
    /// a long run of one binding power (a sum of many terms), kept flat so that its depth is one level.
    Chain(Box<Expr>, Vec<(Binary, Expr)>),
    If(Box<Expr>, Box<Expr>, Box<Expr>),
    /// `Ref(x, n)`: `n > 0` looks back, `n < 0` ahead, `n = 0` is the series' first value on every row.
    Ref(Box<Expr>, i32),
    Rolling(Rolling, Box<Expr>, Window),
    Quantile(Box<Expr>, Window, f64),
    Pair(Pair, Box<Expr>, Box<Expr>, Window),
    /// `Mask(x, 'inst')` / `ChangeInstrument('inst', x)`: `x` evaluated for another instrument.
    Instrument(Box<Expr>, String),
}

/// How far back an expression needs input before the first row it produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Extent {
    Rows(u32),
    /// From the first row of the series (infinite memory: EMA, EWM, expanding windows).
    All,
}

impl Extent {
    fn plus(self, n: u32) -> Extent {
        match self {
            Extent::Rows(r) => Extent::Rows(r.saturating_add(n)),
            Extent::All => Extent::All,
        }
    }
}

/// The rows of input an expression needs around the rows it produces: `(lft, rght)` in qlib's terms, made exact
/// so that evaluating any sub-range gives the same values as slicing the full evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtWindow {
    pub left: Extent,
    /// Rows ahead (look-ahead, from `Ref(x, -n)`).
    pub right: u32,
}

impl ExtWindow {
    const NONE: ExtWindow = ExtWindow {
        left: Extent::Rows(0),
        right: 0,
    };

    fn max(self, o: ExtWindow) -> ExtWindow {
        ExtWindow {
            left: self.left.max(o.left),
            right: self.right.max(o.right),
        }
    }

    fn back(self, w: Window) -> ExtWindow {
        ExtWindow {
            left: match w {
                Window::Periods(n) => self.left.plus(n - 1),
                Window::Expanding | Window::Ewm(_) => Extent::All,
            },
            right: self.right,
        }
    }
}

/// The rows qlib adds before a window of `w`: `N - 1` for N rows, `int(log(1e-6) / log(1 - alpha)) - 1` for
/// an exponential window (where its weights fall below 1e-6), none for an expanding one.
fn qlib_back(w: Window) -> u32 {
    match w {
        Window::Periods(n) => n.saturating_sub(1),
        Window::Expanding => 0,
        Window::Ewm(alpha) => {
            let size = (1e-6f64.ln() / (1.0 - alpha).ln()) as i64;
            (size - 1).clamp(0, i64::from(u32::MAX)) as u32
        }
    }
}

impl Expr {
    /// The extended window: what input around `[start, end]` the value on every row of it depends on.
    ///
    /// qlib's (lft, rght) differ where they make results depend on where a query starts: EMA with an integer
    /// span keeps only N-1 rows, EWM windows are cut where weights fall below 1e-6, expanding windows keep none,
    /// and Delta is one row short; `Ref(x, 0)` (the first value) keeps none. Here those are [`Extent::All`] and Delta
    /// looks back N rows.
    pub fn ext_window(&self) -> ExtWindow {
        match self {
            Expr::Field(_) | Expr::Const(_) => ExtWindow::NONE,
            Expr::Unary(_, x) | Expr::Instrument(x, _) => x.ext_window(),
            Expr::Binary(_, a, b) => a.ext_window().max(b.ext_window()),
            Expr::Chain(first, rest) => rest
                .iter()
                .fold(first.ext_window(), |w, (_, x)| w.max(x.ext_window())),
            Expr::If(c, a, b) => c.ext_window().max(a.ext_window()).max(b.ext_window()),
            Expr::Ref(x, n) => {
                let w = x.ext_window();
                if *n == 0 {
                    ExtWindow {
                        left: Extent::All,
                        right: w.right,
                    }
                } else if *n > 0 {
                    ExtWindow {
                        left: w.left.plus(n.unsigned_abs()),
                        right: w.right,
                    }
                } else {
                    ExtWindow {
                        left: w.left,
                        right: w.right.saturating_add(n.unsigned_abs()),
                    }
                }
            }
            Expr::Rolling(Rolling::Ema, x, _) => ExtWindow {
                left: Extent::All,
                right: x.ext_window().right,
            },
            Expr::Rolling(Rolling::Delta, x, w) => {
                let inner = x.ext_window();
                match w {
                    Window::Periods(n) => ExtWindow {
                        left: inner.left.plus(*n),
                        right: inner.right,
                    },
                    _ => inner.back(*w),
                }
            }
            Expr::Rolling(_, x, w) | Expr::Quantile(x, w, _) => x.ext_window().back(*w),
            Expr::Pair(_, a, b, w) => a.ext_window().max(b.ext_window()).back(*w),
        }
    }

    /// qlib 0.9.7's extended window (`get_extended_window_size`): how many rows before the query's first row
    /// (and after its last) qlib loads for this expression, in its compatible mode. Where it is short of
    /// [`ext_window`](Self::ext_window) the value depends on the query's start. `left` is `None` for qlib's
    /// `-inf` (Corr and Cov with `N = 0`), with which qlib cannot evaluate the expression at all.
    pub fn qlib_ext_window(&self) -> (Option<u32>, u32) {
        let max = |(l1, r1): (Option<u32>, u32), (l2, r2): (Option<u32>, u32)| {
            (l1.zip(l2).map(|(a, b)| a.max(b)), r1.max(r2))
        };
        match self {
            Expr::Field(_) | Expr::Const(_) => (Some(0), 0),
            Expr::Unary(_, x) | Expr::Instrument(x, _) => x.qlib_ext_window(),
            Expr::Binary(_, a, b) => max(a.qlib_ext_window(), b.qlib_ext_window()),
            Expr::Chain(first, rest) => rest.iter().fold(first.qlib_ext_window(), |w, (_, x)| {
                max(w, x.qlib_ext_window())
            }),
            Expr::If(c, a, b) => max(
                max(c.qlib_ext_window(), a.qlib_ext_window()),
                b.qlib_ext_window(),
            ),
            Expr::Ref(x, n) => {
                let (l, r) = x.qlib_ext_window();
                match n.cmp(&0) {
                    std::cmp::Ordering::Equal => (l, r),
                    std::cmp::Ordering::Greater => {
                        (l.map(|l| l.saturating_add(n.unsigned_abs())), r)
                    }
                    std::cmp::Ordering::Less => (l, r.saturating_add(n.unsigned_abs())),
                }
            }
            Expr::Rolling(_, x, w) | Expr::Quantile(x, w, _) => {
                let (l, r) = x.qlib_ext_window();
                (l.map(|l| l.saturating_add(qlib_back(*w))), r)
            }
            Expr::Pair(_, a, b, w) => {
                let (l, r) = max(a.qlib_ext_window(), b.qlib_ext_window());
                match w {
                    Window::Expanding => (None, r),
                    _ => (l.map(|l| l.saturating_add(qlib_back(*w))), r),
                }
            }
        }
    }

    /// Whether qlib's compatible mode may give this expression other values than qstore's rules: it holds an
    /// operator qlib computes differently (WMA, IdxMax, IdxMin; Slope, Rsquare and Resi after an infinity) or
    /// one whose qlib value depends on where the query starts (EMA, exponential and expanding windows,
    /// `Ref(x, 0)`, Delta). Other expressions have the same values in both modes.
    pub fn differs_in_qlib(&self) -> bool {
        let own = match self {
            Expr::Ref(_, 0) => true,
            Expr::Rolling(op, _, w) => {
                matches!(
                    op,
                    Rolling::Wma
                        | Rolling::IdxMax
                        | Rolling::IdxMin
                        | Rolling::Ema
                        | Rolling::Delta
                        | Rolling::Slope
                        | Rolling::Rsquare
                        | Rolling::Resi
                ) || !matches!(w, Window::Periods(_))
            }
            Expr::Quantile(_, w, _) | Expr::Pair(_, _, _, w) => !matches!(w, Window::Periods(_)),
            _ => false,
        };
        own || self.children().any(Expr::differs_in_qlib)
    }

    /// The height of the tree (a leaf is 1), without recursion: trees built by hand may be arbitrarily deep.
    pub fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(self, 1)];
        while let Some((e, d)) = stack.pop() {
            deepest = deepest.max(d);
            stack.extend(e.children().map(|c| (c, d + 1)));
        }
        deepest
    }

    /// The direct sub-expressions, in argument order.
    pub fn children(&self) -> impl Iterator<Item = &Expr> {
        let rest: &[(Binary, Expr)] = match self {
            Expr::Chain(_, rest) => rest,
            _ => &[],
        };
        let (a, b, c): (Option<&Expr>, Option<&Expr>, Option<&Expr>) = match self {
            Expr::Field(_) | Expr::Const(_) => (None, None, None),
            Expr::Chain(first, _) => (Some(first), None, None),
            Expr::Unary(_, x)
            | Expr::Ref(x, _)
            | Expr::Rolling(_, x, _)
            | Expr::Quantile(x, _, _)
            | Expr::Instrument(x, _) => (Some(x), None, None),
            Expr::Binary(_, a, b) | Expr::Pair(_, a, b, _) => (Some(a), Some(b), None),
            Expr::If(c, a, b) => (Some(c), Some(a), Some(b)),
        };
        [a, b, c]
            .into_iter()
            .flatten()
            .chain(rest.iter().map(|(_, x)| x))
    }

    /// The fields the expression reads, sorted and de-duplicated.
    pub fn fields(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.visit_fields(&mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    fn visit_fields<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Expr::Field(f) => out.push(f),
            _ => self.children().for_each(|c| c.visit_fields(out)),
        }
    }
}

fn num(f: &mut fmt::Formatter<'_>, v: f64) -> fmt::Result {
    // Rust's shortest round-trip text: 5, 0.5, 0.000001. Deterministic, which is all a cache key needs.
    if v == v.trunc() && v.abs() < 1e15 {
        write!(f, "{}", v as i64)
    } else {
        write!(f, "{v}")
    }
}

fn window(f: &mut fmt::Formatter<'_>, w: Window) -> fmt::Result {
    match w {
        Window::Periods(n) => write!(f, "{n}"),
        Window::Expanding => f.write_str("0"),
        Window::Ewm(a) => num(f, a),
    }
}

/// The canonical text: every operator as a call without spaces (`Add($close,$open)` for `$close + $open`),
/// fields lower-case, numbers in shortest form. Spellings that parse to the same tree print the same, so this
/// is what cache keys hash.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Field(name) => write!(f, "${name}"),
            Expr::Const(v) => num(f, *v),
            Expr::Unary(op, x) => write!(f, "{op:?}({x})"),
            Expr::Binary(op, a, b) => write!(f, "{op:?}({a},{b})"),
            // Infix in parentheses, which parses back to the same flat chain (nested calls would nest as
            // deep as the chain is long).
            Expr::Chain(first, rest) => {
                if rest.iter().all(|(op, _)| op.chain_symbol().is_some()) {
                    write!(f, "({first}")?;
                    for (op, x) in rest {
                        write!(f, "{}{x}", op.chain_symbol().unwrap_or_default())?;
                    }
                    f.write_str(")")
                } else {
                    // A chain built by hand with other operators: the nested calls it stands for.
                    for (op, _) in rest.iter().rev() {
                        write!(f, "{op:?}(")?;
                    }
                    write!(f, "{first}")?;
                    rest.iter().try_for_each(|(_, x)| write!(f, ",{x})"))
                }
            }
            Expr::If(c, a, b) => write!(f, "If({c},{a},{b})"),
            Expr::Ref(x, n) => write!(f, "Ref({x},{n})"),
            Expr::Rolling(op, x, w) => {
                let name = match op {
                    Rolling::Wma => "WMA".to_string(),
                    Rolling::Ema => "EMA".to_string(),
                    other => format!("{other:?}"),
                };
                write!(f, "{name}({x},")?;
                window(f, *w)?;
                f.write_str(")")
            }
            Expr::Quantile(x, w, q) => {
                write!(f, "Quantile({x},")?;
                window(f, *w)?;
                f.write_str(",")?;
                num(f, *q)?;
                f.write_str(")")
            }
            Expr::Pair(op, a, b, w) => {
                write!(f, "{op:?}({a},{b},")?;
                window(f, *w)?;
                f.write_str(")")
            }
            Expr::Instrument(x, inst) => write!(f, "Mask({x},'{inst}')"),
        }
    }
}
