//! The expression language: canonical text, precedence, errors with positions, extended windows.

use proptest::prelude::*;
use qstore::Error;
use qstore::expr::{Expr, ExtWindow, Extent, parse};

fn canon(s: &str) -> String {
    parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).to_string()
}

fn err(s: &str) -> (usize, String) {
    match parse(s) {
        Err(Error::Expr { pos, reason, .. }) => (pos, reason),
        other => panic!("{s}: expected an expression error, got {other:?}"),
    }
}

#[test]
fn spellings_of_one_tree_share_one_canonical_text() {
    for s in [
        "$close+$open",
        "Add($close, $open)",
        "  Add( $close ,$open ) ",
        "($close) + ($open)",
        "$Close + $OPEN",
    ] {
        assert_eq!(canon(s), "Add($close,$open)", "{s}");
    }
    assert_eq!(canon("Mean($close, 5)"), "Mean($close,5)");
    assert_eq!(canon("Quantile($close, 5, 0.8)"), "Quantile($close,5,0.8)");
    assert_eq!(canon("EMA($close,0.5)"), "EMA($close,0.5)");
    assert_eq!(
        canon("Corr($close, Log($volume+1), 10)"),
        "Corr($close,Log(Add($volume,1)),10)"
    );
    assert_eq!(
        canon("ChangeInstrument('sh000300', $close)"),
        "Mask($close,'SH000300')"
    );
    assert_eq!(
        canon("Mask($close, \"SH000300\")"),
        "Mask($close,'SH000300')"
    );
    assert_eq!(
        canon("Ref($close, -2) / Ref($close, 1) - 1"),
        "Sub(Div(Ref($close,-2),Ref($close,1)),1)"
    );
    assert_eq!(canon("-$close"), "Neg($close)");
    assert_eq!(canon("Neg($close)"), "Neg($close)");
    assert_eq!(canon("1e-6 + .5"), "Add(0.000001,0.5)");
}

#[test]
fn precedence_is_documented_and_sane() {
    assert_eq!(canon("$a > 1 & $b < 2"), "And(Gt($a,1),Lt($b,2))");
    assert_eq!(canon("$a | $b & $c"), "Or($a,And($b,$c))");
    assert_eq!(canon("1 + 2 * 3"), "Add(1,Mul(2,3))");
    assert_eq!(canon("$a - $b - $c"), "Sub(Sub($a,$b),$c)");
    assert_eq!(canon("$a / $b / $c"), "Div(Div($a,$b),$c)");
    assert_eq!(canon("-2 ** 2"), "Neg(Power(2,2))");
    assert_eq!(canon("2 ** 3 ** 2"), "Power(2,Power(3,2))");
    assert_eq!(canon("2 ** -1"), "Power(2,Neg(1))");
    assert_eq!(canon("-$close * 2"), "Mul(Neg($close),2)");
    assert_eq!(canon("$a + $b > $c * 2"), "Gt(Add($a,$b),Mul($c,2))");
    assert_eq!(canon("($a > 1) == ($b > 1)"), "Eq(Gt($a,1),Gt($b,1))");
}

#[test]
fn bad_expressions_say_what_and_where() {
    let cases: [(&str, usize, &str); 24] = [
        (
            "Foo($close, 5)",
            0,
            "unknown operator Foo; operators are Abs, Add",
        ),
        ("Mean($close)", 0, "Mean takes 2 arguments (x, N), got 1"),
        ("Abs($a, $b)", 0, "Abs takes 1 argument (x), got 2"),
        ("Mean($close, -5)", 13, "cannot be negative"),
        ("Mean($close, $open)", 13, "must be a number"),
        ("Mean($close, 2.5)", 13, "write a whole number"),
        (
            "Max($close, 0.5)",
            12,
            "would be an exponential mean in qlib",
        ),
        ("Corr($a, $b, 0)", 13, "Corr needs a whole number of rows"),
        ("Skew($a, 2)", 9, "Skew needs a window of at least 3 rows"),
        ("Kurt($a, 3)", 9, "Kurt needs a window of at least 4 rows"),
        ("Ref($a, 1.5)", 8, "offset of Ref must be a whole number"),
        ("Ref($a, 1e0)", 8, "offset of Ref must be a whole number"),
        ("$a + 12e1222", 5, "too large for a number"),
        ("Quantile($a, 5, 2)", 16, "from 0 to 1"),
        ("$a < $b < $c", 8, "comparisons do not chain"),
        ("$a = 1", 3, "compare with '=='"),
        ("$$roe", 0, "point-in-time fields"),
        ("$", 0, "must be followed by a field name"),
        ("Mean($close, 5", 14, "expected ',' or ')'"),
        ("Mean($close, 5))", 15, "expected an operator or the end"),
        ("", 0, "expected a number, a $field or an operator call"),
        ("close + 1", 0, "fields start with $ ($close)"),
        ("Mask($a, 'x)", 9, "has no closing"),
        ("'SH600000' + 1", 0, "only allowed as the instrument"),
    ];
    for (text, pos, want) in cases {
        let (p, reason) = err(text);
        assert!(reason.contains(want), "{text}: {reason}");
        assert_eq!(p, pos, "{text}: {reason}");
    }
    // the message shows the expression with a caret under the problem
    let msg = parse("Mean($close, $open)").unwrap_err().to_string();
    assert!(
        msg.ends_with("\n  Mean($close, $open)\n               ^ at byte 13"),
        "{msg}"
    );
}

fn ext(s: &str) -> ExtWindow {
    parse(s).unwrap().ext_window()
}

fn rows(left: u32, right: u32) -> ExtWindow {
    ExtWindow {
        left: Extent::Rows(left),
        right,
    }
}

#[test]
fn extended_windows_of_reference_11_3_made_exact() {
    assert_eq!(ext("$close"), rows(0, 0));
    assert_eq!(ext("Ref($close,1)"), rows(1, 0));
    assert_eq!(ext("Ref($close,-2)"), rows(0, 2));
    assert_eq!(ext("Mean($close,5)"), rows(4, 0));
    assert_eq!(ext("Mean(Ref($close,1),5)"), rows(5, 0));
    assert_eq!(ext("Ref(Mean($close,5),-3)"), rows(4, 3));
    assert_eq!(ext("Corr($close,Ref($volume,1),10)"), rows(10, 0));
    assert_eq!(
        ext("If($close>$open, Ref($close,1), Mean($close,3))"),
        rows(2, 0)
    );
    assert_eq!(ext("Ref($close,-2)/Ref($close,-1)-1"), rows(0, 2));
    assert_eq!(
        ext("Ref($close,0)").left,
        Extent::All,
        "qlib: 0 rows, so the first value depends on the query"
    );
    // Where qlib's window makes results depend on where the query starts, ours reaches the first row:
    assert_eq!(ext("EMA($close,0.5)").left, Extent::All, "qlib: 18 rows");
    assert_eq!(ext("EMA($close,10)").left, Extent::All, "qlib: 9 rows");
    assert_eq!(ext("Mean($close,0)").left, Extent::All, "qlib: 0 rows");
    assert_eq!(ext("Mean($close,0.5)").left, Extent::All);
    assert_eq!(ext("Delta($close,2)"), rows(2, 0), "qlib: 1 row, one short");
    assert_eq!(
        ext("Ref(EMA($close,5),-1)"),
        ExtWindow {
            left: Extent::All,
            right: 1
        }
    );
}

#[test]
fn qlib_extended_windows_are_qlibs() {
    // qlib's get_extended_window_size, which the compatible mode measures from the query's start.
    let q = |e: &str| parse(e).unwrap().qlib_ext_window();
    assert_eq!(q("$close"), (Some(0), 0));
    assert_eq!(q("EMA($close,10)"), (Some(9), 0));
    assert_eq!(
        q("EMA($close,0.5)"),
        (Some(18), 0),
        "int(log(1e-6)/log(0.5)) - 1"
    );
    assert_eq!(q("Mean($close,0.1)"), (Some(130), 0));
    assert_eq!(q("Mean($close,0)"), (Some(0), 0));
    assert_eq!(q("Ref($close,0)"), (Some(0), 0));
    assert_eq!(
        q("Delta($close,2)"),
        (Some(1), 0),
        "one short of the 2 rows it reads"
    );
    assert_eq!(q("Mean(EMA($close,5),10)"), (Some(13), 0));
    assert_eq!(q("Corr($close,Ref($volume,1),10)"), (Some(10), 0));
    assert_eq!(q("Ref(Mean($close,5),-3)"), (Some(4), 3));
    assert_eq!(q("EMA($close,3)/Ref($close,10)"), (Some(10), 0));
    // Which expressions the mode changes at all.
    for (e, differs) in [
        ("Mean($close,5)/Ref($close,1)", false),
        ("Corr($close,Log($volume+1),5)", false),
        ("WMA($close,5)", true),
        ("1 - IdxMax($high,5)", true),
        ("Rsquare($close,10)", true),
        ("Mean($close,0)", true),
        ("Quantile($close,0,0.5)", true),
        ("Mean($close,0.5)", true),
        ("Ref(Mean($close,5),0)", true),
        ("Delta($close,1)", true),
        ("Ref($close,1)", false),
    ] {
        assert_eq!(parse(e).unwrap().differs_in_qlib(), differs, "{e}");
    }
}

#[test]
fn fields_read_by_an_expression() {
    assert_eq!(
        parse("Corr($close, Ref($Volume,1), 10) / $close")
            .unwrap()
            .fields(),
        vec!["close", "volume"]
    );
}

/// Random expressions over a few fields and operators.
fn arb_expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("$close".to_string()),
        Just("$volume".to_string()),
        (0u32..100).prop_map(|n| n.to_string()),
        Just("0.25".to_string()),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (
                inner.clone(),
                inner.clone(),
                prop::sample::select(vec!["+", "-", "*", "/", ">", "&", "|", "**"])
            )
                .prop_map(|(a, b, op)| format!("({a}) {op} ({b})")),
            inner.clone().prop_map(|a| format!("-({a})")),
            (
                inner.clone(),
                1u32..60,
                prop::sample::select(vec!["Mean", "Std", "Max", "EMA", "Rank", "Delta", "Slope"])
            )
                .prop_map(|(a, n, op)| format!("{op}({a}, {n})")),
            (inner.clone(), -5i32..5).prop_map(|(a, n)| format!("Ref({a}, {n})")),
            (inner.clone(), inner.clone(), 2u32..30)
                .prop_map(|(a, b, n)| format!("Corr({a}, {b}, {n})")),
            (inner.clone(), inner.clone(), inner)
                .prop_map(|(c, a, b)| format!("If({c}, {a}, {b})")),
        ]
    })
}

proptest! {
    #[test]
    fn canonical_text_parses_back_to_the_same_tree(text in arb_expr()) {
        let e: Expr = parse(&text).unwrap();
        let again = parse(&e.to_string()).unwrap();
        prop_assert_eq!(&again, &e);
        prop_assert_eq!(again.to_string(), e.to_string());
    }

    #[test]
    fn no_input_panics_the_parser(text in "\\PC{0,40}") {
        let _ = parse(&text);
    }
}

/// Deep and long inputs: a positioned error at the limit, never a stack overflow; up to the limit they
/// evaluate (on this test's thread, and on the worker threads of `Store::features` in tests/reliability.rs).
#[test]
fn deep_expressions_are_errors_not_crashes() {
    use qstore::expr::{Expr, Unary, parse};
    let sum = |n: usize| vec!["$close"; n].join("+");
    let nested = |op: &str, n: usize| format!("{}$close{}", op.repeat(n), ")".repeat(n));
    // Short runs (16 operators, left-nested as qlib's tree) inside parentheses: 16 levels per parenthesis.
    let mut tall = "$close".to_string();
    for _ in 0..9 {
        tall = format!("({tall}{})", "+$close".repeat(16));
    }
    for (text, want) in [
        (tall, "operators deep"),
        (nested("Abs(", 400), "nests more than"),
        (
            format!("{}$close{}", "(".repeat(2000), ")".repeat(2000)),
            "nests more than",
        ),
        ("-".repeat(5000) + "$close", "nests more than"),
        (format!("2{}", "**2".repeat(3000)), "nests more than"),
    ] {
        match parse(&text) {
            Err(qstore::Error::Expr { pos, reason, .. }) => {
                assert!(reason.contains(want), "{reason}");
                assert!(pos > 0 && pos < text.len(), "{pos}");
            }
            other => panic!("{}...: {other:?}", &text[..20]),
        }
    }
    // At the limit, and long runs (kept flat): parses, prints a canonical text that parses back, evaluates.
    for text in [
        sum(128),
        sum(400),
        sum(20_000),
        nested("Abs(", 127),
        nested("Mean(", 60).replace(')', ",2)"),
    ] {
        let e = parse(&text).unwrap();
        assert_eq!(parse(&e.to_string()).unwrap(), e);
        assert!(e.depth() <= 128);
    }
    // A tree built by hand deeper than the parser allows is an error of the evaluator, not a crash.
    let mut e = Expr::Field("close".into());
    for _ in 0..500 {
        e = Expr::Unary(Unary::Abs, Box::new(e));
    }
    let mut fields: std::collections::HashMap<(String, String), (usize, Vec<f32>)> =
        Default::default();
    fields.insert(("X".into(), "close".into()), (0, vec![1.0, -2.0, 3.0]));
    let q = qstore::expr::Query::new(vec![e]);
    assert_eq!(q.exprs()[0].depth(), 501);
    let err = q.evaluate(&fields, "X", 0..3).unwrap_err();
    assert!(err.to_string().contains("501 operators deep"), "{err}");
}

/// A long run of one binding power is one flat chain, evaluated left to right: the same bits as the left-nested
/// tree of qlib, which short runs still are (their canonical text, and so cache keys, unchanged).
#[test]
fn long_sums_are_flat_and_equal_the_nested_tree() {
    use qstore::expr::{Expr, parse};
    let short = parse("$a + $b - $c").unwrap();
    assert_eq!(short.to_string(), "Sub(Add($a,$b),$c)");
    let terms: Vec<String> = (0..40).map(|k| format!("$f{}", k % 3)).collect();
    let mut infix = terms[0].clone();
    let mut calls = terms[0].clone();
    for (k, t) in terms.iter().enumerate().skip(1) {
        let (sym, name) = if k % 5 == 0 {
            ("-", "Sub")
        } else {
            ("+", "Add")
        };
        infix = format!("{infix} {sym} {t}");
        calls = format!("{name}({calls},{t})");
    }
    let flat = parse(&infix).unwrap();
    assert!(matches!(flat, Expr::Chain(..)), "{flat}");
    assert_eq!(flat.depth(), 2);
    let nested = parse(&calls).unwrap();
    assert!(matches!(nested, Expr::Binary(..)));
    assert_eq!(parse(&flat.to_string()).unwrap(), flat);
    let mut fields: std::collections::HashMap<(String, String), (usize, Vec<f32>)> =
        Default::default();
    for (k, vals) in [
        vec![1.5f32, 1e7, -3.25, f32::NAN, 0.1],
        vec![2.0e-7, 3.0, 1e-3, 5.0, f32::INFINITY],
        vec![7.0, -1e7, 0.3, 0.7, 1.0],
    ]
    .into_iter()
    .enumerate()
    {
        fields.insert(("X".into(), format!("f{k}")), (0, vals));
    }
    let a = qstore::expr::evaluate(&fields, "X", &[flat], 0..5).unwrap();
    let b = qstore::expr::evaluate(&fields, "X", &[nested], 0..5).unwrap();
    let bits = |v: &Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a[0]), bits(&b[0]));
}
