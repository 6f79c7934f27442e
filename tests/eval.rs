//! Expression evaluation: golden vectors computed with qlib 0.9.7 (the rules are in docs/expressions.md; more
//! lines from qlib itself in tools/golden/operators.txt), our fixes of qlib's bugs,
//! straightforward reference implementations of every rolling operator, and sub-range evaluation equal to
//! slicing the full evaluation bit for bit.

use std::collections::HashMap;

use proptest::prelude::*;
use qstore::expr::{Query, Scratch, evaluate, parse};

const NAN: f64 = f64::NAN;
/// The reference's 0.707107: the sample std of {1, 2}.
const R2: f64 = std::f64::consts::FRAC_1_SQRT_2;

type Mem = HashMap<(String, String), (usize, Vec<f32>)>;

fn mem(series: &[(&str, usize, &[f64])]) -> Mem {
    series
        .iter()
        .map(|(f, start, v)| {
            (
                ("X".to_string(), f.to_string()),
                (*start, v.iter().map(|&x| x as f32).collect()),
            )
        })
        .collect()
}

/// Evaluates `expr` over the whole of `$x` (and `$y` when given), starting at row 0.
fn eval(expr: &str, x: &[f64]) -> Vec<f32> {
    eval2(expr, x, &[])
}

fn eval2(expr: &str, x: &[f64], y: &[f64]) -> Vec<f32> {
    let m = mem(&[("x", 0, x), ("y", 0, y)]);
    let e = parse(expr).unwrap_or_else(|e| panic!("{e}"));
    evaluate(&m, "X", &[e], 0..x.len()).unwrap().remove(0)
}

#[track_caller]
fn close(got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else {
            (g as f64 - w).abs() <= 1e-6 * w.abs().max(1.0)
        };
        assert!(
            ok,
            "row {i}: got {g}, want {w}\n got {got:?}\nwant {want:?}"
        );
    }
}

#[test]
fn golden_vectors_of_the_reference() {
    let gaps = [NAN, NAN, NAN, 1.0, 2.0, NAN, NAN, NAN, 4.0];
    close(
        &eval("Count($x,3)", &gaps),
        &[0.0, 0.0, 0.0, 1.0, 2.0, 2.0, 1.0, 0.0, 1.0],
    );
    close(
        &eval("Sum($x,3)", &gaps),
        &[NAN, NAN, NAN, 1.0, 3.0, 3.0, 2.0, NAN, 4.0],
    );
    close(
        &eval("Mean($x,3)", &gaps),
        &[NAN, NAN, NAN, 1.0, 1.5, 1.5, 2.0, NAN, 4.0],
    );
    close(
        &eval("Std($x,3)", &gaps),
        &[NAN, NAN, NAN, NAN, R2, R2, NAN, NAN, NAN],
    );
    let flat = [1.1, 1.1, 1.1, 1.1, 1.1, 1.1, 2.0];
    let std = eval("Std($x,3)", &flat);
    close(&std, &[NAN, 0.0, 0.0, 0.0, 0.0, 0.0, 0.519615]);
    assert!(
        std[1..6].iter().all(|&v| v == 0.0),
        "a constant window is exactly 0: {std:?}"
    );

    let v = [3.0, NAN, 5.0, 1.0, 5.0];
    close(&eval("Max($x,3)", &v), &[3.0, 3.0, 5.0, 5.0, 5.0]);
    close(&eval("Min($x,3)", &v), &[3.0, 3.0, 3.0, 1.0, 1.0]);
    close(&eval("Med($x,3)", &v), &[3.0, 3.0, 4.0, 3.0, 5.0]);
    close(&eval("Quantile($x,3,0.5)", &v), &[3.0, 3.0, 4.0, 3.0, 5.0]);
    close(&eval("Mad($x,3)", &v), &[0.0, 0.0, 1.0, 2.0, 1.777778]);
    close(&eval("Delta($x,2)", &v), &[NAN, NAN, 2.0, NAN, 0.0]);
    close(&eval("Rank($x,3)", &v), &[1.0, NAN, 1.0, 0.5, 0.833333]);

    close(
        &eval("EMA($x,0)", &[1.0, 2.0, NAN, 4.0]),
        &[1.0, 1.75, 0.714286, 2.268382],
    );
    close(
        &eval("EMA($x,3)", &[1.0, NAN, 3.0, 4.0, NAN, NAN, 2.0]),
        &[1.0, 1.0, 2.6, 3.461538, 3.461538, 3.461538, 2.246753],
    );

    let a = [1.0, 2.0, 3.0, 4.0];
    let b = [2.0, 4.0, 7.0, 8.0];
    close(
        &eval2("Corr($x,$y,3)", &a, &b),
        &[NAN, 1.0, 0.993399, 0.960769],
    );
    close(&eval2("Cov($x,$y,3)", &a, &b), &[NAN, 1.0, 2.5, 2.0]);

    let t = [1.0, 2.0, 4.0, NAN, 8.0, 7.0];
    close(&eval("Slope($x,3)", &t), &[NAN, 1.0, 1.5, 2.0, 2.0, -1.0]);
    close(
        &eval("Rsquare($x,3)", &t),
        &[NAN, 1.0, 0.964286, 1.0, 1.0, 1.0],
    );
    close(
        &eval("Resi($x,3)", &t),
        &[NAN, 0.0, 0.166667, NAN, 0.0, 0.0],
    );
}

#[test]
fn index_union_of_two_fields_is_nan_where_one_is_missing() {
    // $x at rows {0, 1}, $y at rows {1, 2}: Add is NaN where either is absent (qlib aligns on the union).
    let m = mem(&[("x", 0, &[1.0, 2.0]), ("y", 1, &[1.0, 2.0])]);
    let got = evaluate(&m, "X", &[parse("$x + $y").unwrap()], 0..3).unwrap();
    close(&got[0], &[NAN, 3.0, NAN]);
}

#[test]
fn operands_are_nan_past_their_own_series() {
    // $x at rows 0..3, $y at rows 0..6: pandas aligns Mean($x,3) (indexed 0..3) with $y, so the sum is NaN from
    // row 3, where a window over the sum's rows would still hold $x's last values (and an EMA its last value).
    let m = mem(&[
        ("x", 0, &[1.0, 2.0, 3.0]),
        ("y", 0, &[10.0, 10.0, 10.0, 10.0, 10.0, 10.0]),
    ]);
    for (expr, want) in [
        ("Mean($x,3) + $y", [11.0, 11.5, 12.0, NAN, NAN, NAN]),
        ("EMA($x,2) - $y", [-9.0, -8.25, -7.384615, NAN, NAN, NAN]),
        ("Ref($x,1) * $y", [NAN, 10.0, 20.0, NAN, NAN, NAN]),
        (
            "If($y > 5, Count($x,2), $y)",
            [1.0, 2.0, 2.0, NAN, NAN, NAN],
        ),
    ] {
        let got = evaluate(&m, "X", &[parse(expr).unwrap()], 0..6).unwrap();
        close(&got[0], &want);
    }
    // A series that starts later is cut at its start too: Count over $z's rows only.
    let m = mem(&[("x", 0, &[1.0, 2.0, 3.0, 4.0]), ("z", 2, &[5.0, 6.0])]);
    let got = evaluate(&m, "X", &[parse("Count($z,3) + $x").unwrap()], 0..4).unwrap();
    close(&got[0], &[NAN, NAN, 4.0, 6.0]);
}

/// `expr` over rows `rows` of `m`'s instrument X in qlib's compatible mode, for a query starting at
/// `rows.start`.
fn eval_qlib(m: &Mem, expr: &str, rows: std::ops::Range<usize>) -> Vec<f32> {
    qstore::expr::Query::new(vec![parse(expr).unwrap()])
        .qlib_compatible(rows.start)
        .evaluate(m, "X", rows)
        .unwrap()
        .remove(0)
}

#[test]
fn qlib_compatible_mode_reproduces_qlib_formulas() {
    let one = |x: &[f64]| mem(&[("x", 0, x)]);
    // WMA: np.nanmean(w * x) with w = (1..L) / sum(1..L): a constant 5 gives [5, 2.5, 1.67, 1.25, 1].
    let m = one(&[5.0; 5]);
    close(
        &eval_qlib(&m, "WMA($x,5)", 0..5),
        &[5.0, 2.5, 5.0 / 3.0, 1.25, 1.0],
    );
    // With a NaN: [2, 4, NaN] -> (2/6 + 8/6 + 0) / 2 valid values.
    let m = one(&[1.0, 2.0, 4.0, NAN]);
    close(
        &eval_qlib(&m, "WMA($x,3)", 0..4),
        &[1.0, 5.0 / 6.0, 17.0 / 18.0, 10.0 / 12.0],
    );
    // IdxMax/IdxMin: numpy's argmax gives the first NaN's position; a window without a value stays NaN.
    let m = one(&[3.0, NAN, 5.0, 1.0, 5.0]);
    close(
        &eval_qlib(&m, "IdxMax($x,3)", 0..5),
        &[1.0, 2.0, 2.0, 1.0, 1.0],
    );
    close(
        &eval_qlib(&m, "IdxMin($x,3)", 0..5),
        &[1.0, 2.0, 2.0, 1.0, 2.0],
    );
    close(
        &eval_qlib(&m, "IdxMax($x,0)", 0..5),
        &[1.0, 2.0, 2.0, 2.0, 2.0],
    );
    let m = one(&[NAN, NAN, 1.0]);
    close(&eval_qlib(&m, "IdxMax($x,3)", 0..3), &[NAN, NAN, 1.0]);
    // Slope after an infinity: qlib's running sums hold inf - inf from there on.
    let m = one(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    let exact = eval("Slope($x/($x-3),3)", &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    let qlib = eval_qlib(&m, "Slope($x/($x-3),3)", 0..7);
    assert!(
        exact[5].is_finite(),
        "qstore's mode skips the infinity: {exact:?}"
    );
    assert_eq!(&bits(&qlib[..2]), &bits(&exact[..2]), "before the infinity");
    assert!(qlib[2..].iter().all(|v| v.is_nan()), "{qlib:?}");
}

#[test]
fn qlib_compatible_mode_measures_from_the_query_start() {
    let x: Vec<f64> = (0..60)
        .map(|i| ((i * 37 % 11) as f64).sin() + 10.0)
        .collect();
    let m = mem(&[("x", 5, &x)]);
    // Evaluated on the stored values from row `from` only: what qlib computes when it loads from there.
    let from_row = |expr: &str, from: usize, rows: std::ops::Range<usize>| {
        let cut = mem(&[("x", from, &x[from - 5..])]);
        evaluate(&cut, "X", &[parse(expr).unwrap()], rows)
            .unwrap()
            .remove(0)
    };
    let start = 30;
    // (expression, qlib's extended window before the start)
    for (expr, left) in [
        ("EMA($x,5)", 4),
        ("Mean($x,0)", 0),
        ("Ref($x,0)", 0),
        ("Mean(EMA($x,4),3)", 5),
        ("EMA($x,3)/Ref($x,10)", 10),
        ("EMA($x,0.5)", 18),
    ] {
        let got = eval_qlib(&m, expr, start..50);
        let want = from_row(expr, start - left, start..50);
        assert_eq!(bits(&got), bits(&want), "{expr}");
        let exact = evaluate(&m, "X", &[parse(expr).unwrap()], start..50).unwrap();
        assert_ne!(bits(&got), bits(&exact[0]), "{expr}: qstore's mode differs");
    }
    // Delta(x, 4) loads 3 rows: NaN on the first row, the full-history value after it.
    let got = eval_qlib(&m, "Delta($x,4)", start..40);
    assert!(got[0].is_nan());
    let exact = evaluate(&m, "X", &[parse("Delta($x,4)").unwrap()], start..40).unwrap();
    assert_eq!(bits(&got[1..]), bits(&exact[0][1..]));
    // Before the series starts, the extended window is cut at its first row, as qlib's file read is.
    let got = eval_qlib(&m, "EMA($x,5)", 7..20);
    assert_eq!(bits(&got), bits(&from_row("EMA($x,5)", 5, 7..20)));
}

#[test]
fn fixed_qlib_bugs() {
    // WMA: qlib divides twice (issue #1993) and gives [5, 2.5, 1.67, 1.25, 1] for a constant 5.
    close(&eval("WMA($x,5)", &[5.0; 5]), &[5.0; 5]);
    // Weights 1..n by position, renormalised over the valid values: (1*1 + 2*2 + 3*4) / 6 and (1*2 + 3*4)/4.
    close(
        &eval("WMA($x,3)", &[1.0, 2.0, 4.0, NAN]),
        &[1.0, 5.0 / 3.0, 17.0 / 6.0, (2.0 + 2.0 * 4.0) / 3.0],
    );
    // IdxMax/IdxMin: qlib returns the position of the first NaN; NaN never wins here.
    let v = [3.0, NAN, 5.0, 1.0, 5.0];
    close(&eval("IdxMax($x,3)", &v), &[1.0, 1.0, 3.0, 2.0, 1.0]);
    close(&eval("IdxMin($x,3)", &v), &[1.0, 1.0, 1.0, 3.0, 2.0]);
    close(&eval("IdxMax($x,3)", &[NAN, NAN, 1.0]), &[NAN, NAN, 3.0]);
}

#[test]
fn expanding_ema_is_nan_before_the_first_value() {
    // qlib's EMA(x, 0) is `expanding(min_periods=1).apply`: no value before the first valid row; after it, the
    // weights (1 - 2/(n+1))^(n-1-i) are normalised over all n rows, missing ones included.
    close(
        &eval("EMA($x,0)", &[NAN, NAN, 1.0, 2.0]),
        &[
            NAN,
            NAN,
            1.0 / 1.75,
            (0.6 + 2.0) / (0.216 + 0.36 + 0.6 + 1.0),
        ],
    );
}

#[test]
fn results_do_not_depend_on_where_the_query_starts() {
    // qlib's EMA keeps N-1 rows, N=0 keeps none and Delta is one row short: their values at row 30 change with
    // the query start. Here every start gives the full-history value.
    let x: Vec<f64> = (0..60)
        .map(|i| ((i * 37 % 11) as f64).sin() + 10.0)
        .collect();
    let m = mem(&[("x", 5, &x)]);
    for expr in [
        "EMA($x,5)",
        "EMA($x,0.3)",
        "Mean($x,0)",
        "Delta($x,4)",
        "Ref($x,0)",
        "EMA($x,0)",
        "Slope($x,0)",
        "Rank(Std($x,0),7)",
    ] {
        let e = parse(expr).unwrap();
        let full = evaluate(&m, "X", std::slice::from_ref(&e), 0..80)
            .unwrap()
            .remove(0);
        for start in [5, 20, 33, 35, 64] {
            let part = evaluate(&m, "X", std::slice::from_ref(&e), start..66)
                .unwrap()
                .remove(0);
            assert_eq!(
                bits(&part),
                bits(&full[start..66]),
                "{expr} from row {start}"
            );
        }
    }
    let delta = evaluate(&m, "X", &[parse("Delta($x,4)").unwrap()], 30..31).unwrap();
    let stored = |i: usize| x[i] as f32 as f64;
    assert_eq!(
        delta[0][0],
        (stored(25) - stored(21)) as f32,
        "Delta looks back 4 rows"
    );
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The window of `n` rows ending at `i`, cut at row 0 (`n = 0`: everything so far).
fn window(x: &[f64], i: usize, n: usize) -> &[f64] {
    let start = if n == 0 { 0 } else { (i + 1).saturating_sub(n) };
    &x[start..=i]
}

fn valid(w: &[f64]) -> Vec<f64> {
    w.iter().copied().filter(|v| !v.is_nan()).collect()
}

/// Textbook definitions of each rolling operator, one window at a time.
fn reference(op: &str, w: &[f64]) -> f64 {
    let v = valid(w);
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let m = |k: i32| v.iter().map(|x| (x - mean).powi(k)).sum::<f64>() / n;
    let mut sorted = v.clone();
    sorted.sort_by(f64::total_cmp);
    let last = *w.last().unwrap();
    match op {
        "Sum" if v.is_empty() => NAN,
        "Sum" => v.iter().sum(),
        "Mean" => mean,
        "Count" => n,
        "Var" | "Std" if v.len() < 2 => NAN,
        "Var" => m(2) * n / (n - 1.0),
        "Std" => (m(2) * n / (n - 1.0)).sqrt(),
        "Max" => sorted.last().copied().unwrap_or(NAN),
        "Min" => sorted.first().copied().unwrap_or(NAN),
        "Med" if v.is_empty() => NAN,
        "Med" => {
            let k = v.len();
            if k % 2 == 1 {
                sorted[k / 2]
            } else {
                (sorted[k / 2 - 1] + sorted[k / 2]) / 2.0
            }
        }
        "Mad" => v.iter().map(|x| (x - mean).abs()).sum::<f64>() / n,
        "Rank" if last.is_nan() => NAN,
        "Rank" => {
            let less = v.iter().filter(|&&x| x < last).count() as f64;
            let eq = v.iter().filter(|&&x| x == last).count() as f64;
            (less + (eq + 1.0) / 2.0) / n
        }
        "IdxMax" | "IdxMin" => {
            let mut best: Option<(usize, f64)> = None;
            for (p, &x) in w.iter().enumerate() {
                if x.is_nan() {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((_, b)) => (op == "IdxMax" && x > b) || (op == "IdxMin" && x < b),
                };
                if better {
                    best = Some((p, x));
                }
            }
            best.map_or(NAN, |(p, _)| (p + 1) as f64)
        }
        "WMA" => {
            let (mut num, mut den) = (0.0, 0.0);
            for (p, &x) in w.iter().enumerate() {
                if !x.is_nan() {
                    num += (p + 1) as f64 * x;
                    den += (p + 1) as f64;
                }
            }
            num / den
        }
        "Skew" if v.len() < 3 || m(2) == 0.0 => NAN,
        "Skew" => (n * (n - 1.0)).sqrt() / (n - 2.0) * m(3) / m(2).powf(1.5),
        "Kurt" if v.len() < 4 || m(2) == 0.0 => NAN,
        "Kurt" => {
            let g = m(4) / (m(2) * m(2));
            ((n * n - 1.0) * g - 3.0 * (n - 1.0) * (n - 1.0)) / ((n - 2.0) * (n - 3.0))
        }
        "Slope" | "Resi" => {
            let pts: Vec<(f64, f64)> = w
                .iter()
                .enumerate()
                .filter(|(_, y)| !y.is_nan())
                .map(|(p, &y)| (p as f64, y))
                .collect();
            let k = pts.len() as f64;
            let mx = pts.iter().map(|p| p.0).sum::<f64>() / k;
            let my = pts.iter().map(|p| p.1).sum::<f64>() / k;
            let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
            let sxx: f64 = pts.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
            let slope = sxy / sxx;
            if op == "Slope" {
                slope
            } else {
                last - (my + slope * ((w.len() - 1) as f64 - mx))
            }
        }
        _ => unreachable!("{op}"),
    }
}

/// qlib's Corr: Pearson over the pairs where both sides are valid, NaN below two pairs or where either side
/// on its own (all its valid values in the window) has a standard deviation of at most 2e-5.
fn reference_corr(a: &[f64], b: &[f64]) -> f64 {
    let flat = |w: &[f64]| {
        let v = valid(w);
        v.len() >= 2 && reference("Std", w) <= 2e-5
    };
    let pairs = a.iter().zip(b).filter(|(x, y)| !x.is_nan() && !y.is_nan());
    if pairs.count() < 2 || flat(a) || flat(b) {
        return NAN;
    }
    reference_corr_plain(a, b)
}

/// qlib's Rsquare: the fit of the values on their row, NaN where the values are (nearly) constant.
fn reference_rsquare(w: &[f64]) -> f64 {
    if valid(w).len() >= 2 && reference("Std", w) <= 2e-5 {
        return NAN;
    }
    let pos: Vec<f64> = (0..w.len()).map(|p| p as f64).collect();
    let r = reference_corr_plain(&pos, w);
    r * r
}

/// Pearson without qlib's flatness rule.
fn reference_corr_plain(a: &[f64], b: &[f64]) -> f64 {
    let pairs: Vec<(f64, f64)> = a
        .iter()
        .zip(b)
        .filter(|(x, y)| !x.is_nan() && !y.is_nan())
        .map(|(&x, &y)| (x, y))
        .collect();
    let k = pairs.len() as f64;
    let (mx, my) = (
        pairs.iter().map(|p| p.0).sum::<f64>() / k,
        pairs.iter().map(|p| p.1).sum::<f64>() / k,
    );
    let sxy: f64 = pairs.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pairs.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let syy: f64 = pairs.iter().map(|p| (p.1 - my).powi(2)).sum();
    sxy / (sxx * syy).sqrt()
}

/// Series with stretches whose spread is under qlib's flatness threshold but not zero (steps of 2^-17,
/// exact in float32), beside ordinary values and gaps.
fn near_flat_series() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(
        prop_oneof![
            2 => (-50i32..50).prop_map(|v| 100.0 + v as f64 / 8.0),
            3 => (0i32..3).prop_map(|k| 100.0 + k as f64 / 131072.0),
            1 => Just(NAN),
        ],
        1..90,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(120))]

    /// Corr and Rsquare with qlib's flatness rules, for sides with the same gaps (each side's spread then
    /// comes from the pairs' pass) and with different gaps (separate passes), and constant stretches.
    #[test]
    fn corr_and_rsquare_match_their_definitions(
        x in near_flat_series(),
        other in near_flat_series(),
        same_gaps in any::<bool>(),
        n in 2usize..25,
    ) {
        let y: Vec<f64> = x
            .iter()
            .zip(other.iter().cycle())
            .map(|(&x, &o)| match (same_gaps, x.is_nan(), o.is_nan()) {
                (true, true, _) => NAN,
                (true, false, true) => 100.0,
                _ => o,
            })
            .collect();
        let got = eval2(&format!("Corr($x,$y,{n})"), &x, &y);
        for (i, &g) in got.iter().enumerate() {
            let want = reference_corr(window(&x, i, n), window(&y, i, n));
            prop_assert!(agree(g, want, 1.0), "Corr($x,$y,{}) row {}: got {}, want {}", n, i, g, want);
        }
        let got = eval(&format!("Rsquare($x,{n})"), &x);
        for (i, &g) in got.iter().enumerate() {
            let want = reference_rsquare(window(&x, i, n));
            prop_assert!(agree(g, want, 1.0), "Rsquare($x,{}) row {}: got {}, want {}", n, i, g, want);
        }
    }
}

/// Signed zeros are one value to Rank and Med (numpy compares -0 == 0), though the sorted window orders
/// them apart; ties among them and among other values are averaged.
#[test]
fn order_statistics_treat_signed_zeros_as_equal() {
    let x = [
        0.0, -0.0, 1.0, -0.0, 0.0, 0.0, -1.0, -0.0, NAN, 0.0, 2.0, -0.0, 2.0, 0.0, -2.5, -0.5,
        -2.5, 3.0, -7.0, -0.0,
    ];
    for n in [2, 3, 5, 8] {
        for op in ["Rank", "Med", "Max", "Min"] {
            let got = eval(&format!("{op}($x,{n})"), &x);
            for (i, &g) in got.iter().enumerate() {
                let want = reference(op, window(&x, i, n));
                assert!(
                    agree(g, want, 1.0),
                    "{op}($x,{n}) row {i}: got {g}, want {want}"
                );
            }
        }
    }
}

const OPS: [&str; 17] = [
    "Sum", "Mean", "Count", "Var", "Std", "Max", "Min", "Med", "Mad", "Rank", "IdxMax", "IdxMin",
    "WMA", "Skew", "Kurt", "Slope", "Resi",
];

fn agree(got: f32, want: f64, scale: f64) -> bool {
    if want.is_nan() || got.is_nan() {
        return want.is_nan() && got.is_nan();
    }
    (got as f64 - want).abs() <= 1e-5 * want.abs().max(scale)
}

/// Series with leading and trailing NaN, gaps, all-NaN stretches and ties.
fn series() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(
        prop_oneof![
            3 => (-50i32..50).prop_map(|v| 100.0 + v as f64 / 8.0),
            1 => Just(NAN),
            1 => Just(100.0),
        ],
        1..90,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(120))]

    /// Every rolling kernel equals its textbook definition, window by window, for windows from 1 to past the
    /// series length and for expanding windows.
    #[test]
    fn kernels_match_their_definitions(x in series(), n in prop_oneof![Just(0usize), 1usize..12, 60usize..70]) {
        for op in OPS {
            if (op == "Skew" && n != 0 && n < 3) || (op == "Kurt" && n != 0 && n < 4) {
                continue;
            }
            let got = eval(&format!("{op}($x,{n})"), &x);
            for (i, &g) in got.iter().enumerate() {
                let want = reference(op, window(&x, i, n));
                prop_assert!(agree(g, want, 100.0), "{}($x,{}) row {}: got {}, want {} in {:?}", op, n, i, g, want, window(&x, i, n));
            }
        }
    }

    /// Long windows keep their order statistics in a Fenwick tree rather than a sorted buffer: same answers.
    #[test]
    fn long_window_order_statistics_match_their_definitions(
        x in prop::collection::vec(prop_oneof![4 => (0i32..300).prop_map(f64::from), 1 => Just(NAN)], 500..1300),
        n in 513usize..700,
    ) {
        for op in ["Med", "Rank"] {
            let got = eval(&format!("{op}($x,{n})"), &x);
            for (i, &g) in got.iter().enumerate().step_by(7) {
                let want = reference(op, window(&x, i, n));
                prop_assert!(agree(g, want, 100.0), "{}($x,{}) row {}: got {}, want {}", op, n, i, g, want);
            }
        }
        let got = eval(&format!("Quantile($x,{n},0.3)"), &x);
        let w = window(&x, x.len() - 1, n);
        let mut v = valid(w);
        v.sort_by(f64::total_cmp);
        if !v.is_empty() {
            let at = 0.3 * (v.len() - 1) as f64;
            let lo = at.floor() as usize;
            let want = v[lo] + (v[(lo + 1).min(v.len() - 1)] - v[lo]) * (at - lo as f64);
            prop_assert!(agree(*got.last().unwrap(), want, 100.0));
        }
    }

    /// pandas replaces ±inf by NaN before every rolling, expanding and ewm computation (so qlib's window
    /// operators see an infinity as missing; tools/golden/operators.txt checks it against qlib itself): every
    /// window operator gives the bits it gives with NaN in those places, except Count, which counts them.
    /// Slope, Rsquare and Resi follow the same rule (qlib's Cython turns the rest of the series into NaN).
    #[test]
    fn infinities_are_missing_in_windows(
        x in prop::collection::vec(
            prop_oneof![
                4 => (-50i32..50).prop_map(|v| 100.0 + v as f64 / 8.0),
                1 => Just(NAN),
                1 => Just(f64::INFINITY),
                1 => Just(f64::NEG_INFINITY),
            ],
            1..70,
        ),
        n in prop_oneof![Just(0usize), 1usize..9],
    ) {
        let y: Vec<f64> = (0..x.len()).map(|i| (i * 7 % 5) as f64).collect();
        let as_nan: Vec<f64> = x.iter().map(|&v| if v.is_infinite() { NAN } else { v }).collect();
        let mut exprs: Vec<String> = OPS
            .iter()
            .filter(|&&op| !(n != 0 && (op == "Skew" && n < 3 || op == "Kurt" && n < 4)))
            .map(|op| format!("{op}($x,{n})"))
            .collect();
        exprs.extend(
            ["Quantile($x,N,0.3)", "Rsquare($x,N)", "EMA($x,N)", "Corr($x,$y,N)", "Cov($x,$y,N)", "Corr($y,$x,N)"]
                .iter()
                .map(|e| e.replace('N', &n.max(1).to_string())),
        );
        exprs.push("Mean($x,0.4)".into());
        for e in &exprs {
            let want = eval2(e, &as_nan, &y);
            let got = eval2(e, &x, &y);
            if e.starts_with("Count") {
                let counted: Vec<f64> = x.iter().map(|&v| if v.is_infinite() { 1.0 } else { v }).collect();
                prop_assert_eq!(bits(&got), bits(&eval2(e, &counted, &y)), "{}", e);
            } else {
                prop_assert_eq!(bits(&got), bits(&want), "{}", e);
            }
        }
    }

    /// Evaluating rows `a..b` gives exactly the bits of rows `a..b` of the full evaluation, for nested
    /// expressions whose windows reach across blocks, look-ahead, and two fields starting on different rows.
    #[test]
    fn sub_range_equals_slice_of_full(
        x in series(),
        y in series(),
        y_start in 0usize..20,
        expr in expression(),
        a in 0usize..120,
        len in 1usize..60,
    ) {
        let m = mem(&[("x", 3, &x), ("y", y_start, &y)]);
        let e = parse(&expr).unwrap();
        let full = evaluate(&m, "X", std::slice::from_ref(&e), 0..130).unwrap().remove(0);
        let b = (a + len).min(130);
        let part = evaluate(&m, "X", std::slice::from_ref(&e), a..b).unwrap().remove(0);
        prop_assert_eq!(bits(&part), bits(&full[a..b]), "{}", expr);
    }
}

fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("$x".to_string()),
        Just("$y".to_string()),
        Just("Ref($x,-2)".to_string())
    ]
}

fn expression() -> impl Strategy<Value = String> {
    leaf().prop_recursive(3, 12, 2, |inner| {
        let ops = prop::sample::select(vec![
            "Mean", "Sum", "Std", "Var", "Max", "Min", "Med", "Mad", "Count", "Skew", "Kurt",
            "Rank", "IdxMax", "IdxMin", "WMA", "EMA", "Delta", "Slope", "Rsquare", "Resi",
        ]);
        let n = prop_oneof![Just(0u32), 4u32..30];
        prop_oneof![
            (ops, inner.clone(), n.clone()).prop_map(|(op, x, n)| format!("{op}({x},{n})")),
            (inner.clone(), inner.clone(), 2u32..20)
                .prop_map(|(a, b, n)| format!("Corr({a},{b},{n})")),
            (inner.clone(), 1i32..6).prop_map(|(x, n)| format!("Ref({x},{n})")),
            (inner.clone(), 3u32..25).prop_map(|(x, n)| format!("Quantile({x},{n},0.3)")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a})/({b})-1")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("If({a}>{b},{a},Mean({b},0.25))")),
        ]
    })
}

/// Order statistics (and regressions) over the same input and window share one pass over the windows when a
/// query has several (`Quantile(x,20,0.8)`, `Quantile(x,20,0.2)`, `Rank(x,20)`; `Slope`, `Rsquare`, `Resi`, as
/// Alpha158 does); the values are the ones each gives alone, bit for bit, inside other expressions too and for
/// a sub-range.
#[test]
fn grouped_window_statistics_equal_each_alone() {
    let x: Vec<f64> = (0..300)
        .map(|i| {
            if i % 17 == 3 {
                NAN
            } else {
                ((i * 7919) % 101) as f64 / 7.0 + (i / 50) as f64
            }
        })
        .collect();
    let texts = [
        "Quantile($x,20,0.8)/$x",
        "Quantile($x,20,0.2)",
        "Rank($x,20)",
        "Med($x,20)",
        "Quantile($x,5,0.5)",
        "Rank($x,5)",
        "Rank(Abs($x-10),20)",
        "Quantile($x,0,0.3)",
        "Rank($x,0)",
        "Quantile($x,20,0.2)-Rank($x,20)",
        "Slope($x,20)/$x",
        "Rsquare($x,20)",
        "Resi($x,20)/$x",
        "Slope($x,0)",
        "Rsquare($x,0)",
        "Resi($x,10)",
        "Rsquare($x,10)",
        "Max($x,20)/$x",
        "IdxMax($x,20)",
        "Min($x,20)",
        "IdxMin($x,20)/20",
        "(IdxMax($x,5)-IdxMin($x,5))/5",
        "Max($x,5)-Min($x,5)",
        "IdxMax($x,0)",
        "Max($x,0)",
    ];
    let m = mem(&[("x", 0, &x)]);
    let exprs: Vec<_> = texts.iter().map(|t| parse(t).unwrap()).collect();
    for rows in [0..300, 120..260] {
        let together = evaluate(&m, "X", &exprs, rows.clone()).unwrap();
        for (k, e) in exprs.iter().enumerate() {
            let alone = evaluate(&m, "X", std::slice::from_ref(e), rows.clone())
                .unwrap()
                .remove(0);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&together[k]),
                bits(&alone),
                "{} over {rows:?}",
                texts[k]
            );
        }
    }
}

/// `Log` is correctly rounded (the float64 logarithm of the float32 argument, rounded once), on volumes as
/// tables hold them: numpy's float32 log, which qlib runs, is one ulp off on about 4% of them, and that alone
/// makes `Corr($close, Log($volume+1), 5)` differ from qlib's after suspensions (docs/expressions.md).
#[test]
fn log_is_correctly_rounded() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let x: Vec<f64> = (0..20_000)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Volumes from 1 to about 1e9, as integers (what a volume column holds).
            (10f64.powf((state >> 11) as f64 / (1u64 << 53) as f64 * 9.0)).round()
        })
        .collect();
    let got = eval("Log($x+1)", &x);
    for (v, g) in x.iter().zip(&got) {
        let arg = *v as f32 + 1.0;
        let want = (arg as f64).ln() as f32;
        assert_eq!(g.to_bits(), want.to_bits(), "Log({arg})");
    }
}

/// `LANES` instruments' `$x` and `$y`, all stored over rows `start..start + len`, from one long draw: lane
/// `l` takes values `l * len..` (with an infinity now and then, which windows treat as missing).
fn lanes_of(start: usize, len: usize, xs: &[f64], ys: &[f64]) -> (Mem, Vec<String>) {
    let names: Vec<String> = (0..Query::LANES).map(|l| format!("I{l}")).collect();
    let mut m = Mem::new();
    for (l, name) in names.iter().enumerate() {
        for (field, draw) in [("x", xs), ("y", ys)] {
            let v = (0..len)
                .map(|i| draw[(l * len + i) % draw.len()] as f32)
                .collect();
            m.insert((name.clone(), field.to_string()), (start, v));
        }
    }
    (m, names)
}

/// Each lane's values as [`Query::evaluate_into`] hands them out, as bits: (expression, first row, values).
type Handed = Vec<(usize, usize, Vec<u64>)>;

fn one_at_a_time(
    q: &Query,
    m: &Mem,
    names: &[String],
    rows: std::ops::Range<usize>,
) -> Vec<Handed> {
    let mut scratch = Scratch::default();
    names
        .iter()
        .map(|name| {
            let mut got = Vec::new();
            q.evaluate_into(m, name, rows.clone(), &mut scratch, |k, from, v| {
                got.push((k, from, v.iter().map(|x| x.to_bits()).collect()))
            })
            .unwrap();
            got
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Instruments evaluated together in lanes get exactly what each gets alone: the same values, bit for bit,
    /// handed out in the same pieces, for nested expressions over every operator (the lane kernels of sums,
    /// spreads, co-moments and regressions, and the others one lane at a time), windows across blocks, gaps
    /// and infinities, and any requested rows.
    #[test]
    fn lanes_equal_one_instrument_at_a_time(
        xs in series(),
        ys in series(),
        exprs in prop::collection::vec(expression(), 1..4),
        start in 0usize..30,
        len in 1usize..90,
        from in 0usize..60,
        count in 1usize..140,
    ) {
        let mut xs = xs;
        if xs.len() > 5 {
            xs[5] = f64::INFINITY;
        }
        let (m, names) = lanes_of(start, len, &xs, &ys);
        let mut texts = exprs;
        texts.extend(
            [
                "Cov($x,$y,5)", "Corr($x,$y,7)", "Corr($x,Ref($x,1),3)", "Var($x,4)", "Count($x,3)",
                "Sum($y,0)", "Slope($x,6)", "Rsquare($x,6)", "Resi($x,0)", "Ref($x,0)", "Delta($y,0)",
                "Max($x,3)-Min($y,9)", "Quantile($x,5,0.8)+Rank($x,5)",
            ]
            .map(String::from),
        );
        let q = Query::new(texts.iter().map(|t| parse(t).unwrap()).collect());
        let rows = from..from + count;
        let want = one_at_a_time(&q, &m, &names, rows.clone());
        let mut got: Vec<Handed> = vec![Vec::new(); names.len()];
        let group: Vec<&str> = names.iter().map(String::as_str).collect();
        let done = q
            .evaluate_lanes_into(&m, &group, rows, &mut Scratch::default(), |l, k, from, v| {
                got[l].push((k, from, v.iter().map(|x| x.to_bits()).collect()))
            })
            .unwrap();
        prop_assert!(done);
        for (l, (got, want)) in got.iter().zip(&want).enumerate() {
            prop_assert!(got == want, "lane {} of {:?}", l, texts);
        }
    }
}

/// A group whose fields are not stored over the same rows, or a query that reads another instrument, is left
/// to the caller (nothing handed out), and one instrument at a time gives its values.
#[test]
fn lanes_refuse_groups_that_do_not_line_up() {
    let xs: Vec<f64> = (0..40).map(|i| 100.0 + (i % 7) as f64).collect();
    let (mut m, names) = lanes_of(0, 30, &xs, &xs);
    let group: Vec<&str> = names.iter().map(String::as_str).collect();
    let q = Query::new(vec![parse("Mean($x,5)").unwrap()]);
    let mut handed = 0;
    let mut count = |_: usize, _: usize, _: usize, _: &[f64]| handed += 1;
    assert!(
        q.evaluate_lanes_into(&m, &group, 0..30, &mut Scratch::default(), &mut count)
            .unwrap()
    );
    assert_eq!(handed, Query::LANES);
    // One instrument's `$y` starts a row later: its series would not line up.
    m.get_mut(&("I3".to_string(), "y".to_string())).unwrap().0 = 1;
    let q2 = Query::new(vec![parse("Corr($x,$y,5)").unwrap()]);
    let mut handed = 0;
    let refused = !q2
        .evaluate_lanes_into(&m, &group, 0..30, &mut Scratch::default(), |_, _, _, _| {
            handed += 1
        })
        .unwrap();
    assert!(refused && handed == 0);
    // Another instrument read, qlib's compatible mode, or a group of another size: refused as well.
    let other = Query::new(vec![parse("ChangeInstrument('I0',$x)").unwrap()]);
    assert!(
        !other
            .evaluate_lanes_into(&m, &group, 0..30, &mut Scratch::default(), |_, _, _, _| {})
            .unwrap()
    );
    let qlib = Query::new(vec![parse("Mean($x,5)").unwrap()]).qlib_compatible(0);
    assert!(
        !qlib
            .evaluate_lanes_into(&m, &group, 0..30, &mut Scratch::default(), |_, _, _, _| {})
            .unwrap()
    );
    assert!(
        !q.evaluate_lanes_into(
            &m,
            &group[..3],
            0..30,
            &mut Scratch::default(),
            |_, _, _, _| {}
        )
        .unwrap()
    );
}
