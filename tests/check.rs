//! `qdump check`: every planted defect is found, and a clean store gives nothing (and exit 0).

use std::path::Path;
use std::process::Command;

use qstore::store::check::{CheckOptions, check};
use qstore::{Freq, Instruments, Span, Store, import, parse_timestamp};

/// The store `qdump all --csv <input>` builds at `root`, with `opts`.
fn import_csv(input: &Path, root: &Path, opts: &import::ImportOptions) -> Store {
    let csv = import::CsvSource::open(input, Default::default()).unwrap();
    import::import(&csv, root, &Default::default(), opts, &|_| {}).unwrap();
    Store::open(root).unwrap()
}

fn sample(dir: &Path) -> Store {
    let fixtures = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sample"));
    import_csv(fixtures, &dir.join("s"), &Default::default())
}

/// Thresholds under which the generated sample (with its suspensions and volume spikes) is clean.
fn relaxed() -> CheckOptions {
    CheckOptions {
        nan_run: 30,
        volume_step: 10.0,
        ..Default::default()
    }
}

fn kinds(s: &Store, opts: &CheckOptions) -> Vec<(String, Option<String>, &'static str)> {
    check(s, opts)
        .unwrap()
        .findings
        .into_iter()
        .map(|f| (f.instrument, f.field, f.kind))
        .collect()
}

#[test]
fn a_clean_store_has_no_findings_and_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample(dir.path());
    assert_eq!(kinds(&s, &relaxed()), vec![]);
    let out = Command::new(env!("CARGO_BIN_EXE_qdump"))
        .args([
            "check",
            s.root().to_str().unwrap(),
            "--nan-run",
            "30",
            "--volume-step",
            "10",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The default thresholds report the sample's suspensions once per instrument, not once per field.
    let found = kinds(&s, &CheckOptions::default());
    assert!(
        found.contains(&("SZ000002".into(), None, "nan-run")),
        "{found:?}"
    );
    assert!(
        !found
            .iter()
            .any(|f| f.0 == "SZ000002" && f.2 == "nan-run" && f.1.is_some())
    );
}

#[test]
fn every_planted_defect_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample(dir.path());
    let cal = s.calendar(Freq::DAY).unwrap();
    let root = s.root().to_path_buf();
    let path = |sym: &str, f: &str| s.feature_path(sym, f, Freq::DAY).unwrap();
    // Unreadable: 6 bytes.
    std::fs::write(path("SH600000", "amount"), [0u8; 6]).unwrap();
    // Past the calendar: three values more than the calendar has.
    let f = s.feature("SZ000002", "amount", Freq::DAY).unwrap().unwrap();
    let mut long = f.values().to_vec();
    long.extend([1.0, 2.0, 3.0]);
    s.rewrite_feature("SZ000002", "amount", Freq::DAY, f.start(), &long)
        .unwrap();
    // Start not at the span's start.
    let f = s.feature("SZ000008", "vwap", Freq::DAY).unwrap().unwrap();
    s.rewrite_feature(
        "SZ000008",
        "vwap",
        Freq::DAY,
        f.start() + 2,
        &f.values()[2..],
    )
    .unwrap();
    // A required field missing.
    std::fs::remove_file(path("BJ830800", "low")).unwrap();
    // A long run of missing values in one field.
    let f = s.feature("SH600015", "open", Freq::DAY).unwrap().unwrap();
    let mut v = f.values().to_vec();
    v[100..140].fill(f32::NAN);
    s.rewrite_feature("SH600015", "open", Freq::DAY, f.start(), &v)
        .unwrap();
    // A price step (close doubles for a day) and a volume step (x20).
    let f = s.feature("SH688010", "close", Freq::DAY).unwrap().unwrap();
    let mut v = f.values().to_vec();
    v[50] *= 2.0;
    s.rewrite_feature("SH688010", "close", Freq::DAY, f.start(), &v)
        .unwrap();
    let f = s.feature("SZ300003", "volume", Freq::DAY).unwrap().unwrap();
    let mut v = f.values().to_vec();
    v[60] *= 20.0;
    s.rewrite_feature("SZ300003", "volume", Freq::DAY, f.start(), &v)
        .unwrap();
    // Listed without files, and files without a listing.
    let mut ins: Instruments = (*s.instruments("all").unwrap()).clone();
    let d = |t: &str| parse_timestamp(t).unwrap();
    ins.push(
        "SH609999",
        Span {
            start: d("2023-01-03"),
            end: d("2023-02-01"),
        },
    )
    .unwrap();
    s.save_instruments("all", &ins).unwrap();
    std::fs::create_dir_all(root.join("features/sz009999")).unwrap();
    s.write_feature("SZ009999", "close", Freq::DAY, Some(0), &[1.0])
        .unwrap();
    s.refresh();

    let found = kinds(&s, &relaxed());
    let want: Vec<(&str, Option<&str>, &str)> = vec![
        ("BJ830800", Some("low"), "missing-field"),
        ("SH600000", Some("amount"), "unreadable"),
        ("SH600015", Some("open"), "nan-run"),
        ("SH609999", None, "no-files"),
        ("SH688010", Some("close"), "price-step"),
        ("SH688010", Some("close"), "price-step"),
        ("SZ000002", Some("amount"), "past-calendar"),
        ("SZ000008", Some("vwap"), "start-mismatch"),
        ("SZ300003", Some("volume"), "volume-step"),
        ("SZ009999", None, "not-listed"),
    ];
    let want: Vec<(String, Option<String>, &str)> = want
        .into_iter()
        .map(|(a, b, c)| (a.to_string(), b.map(String::from), c))
        .collect();
    assert_eq!(
        found, want,
        "(a doubled close is a step up and a step down)"
    );
    let report = check(&s, &relaxed()).unwrap();
    let step = report
        .findings
        .iter()
        .find(|f| f.kind == "price-step")
        .unwrap();
    assert!(step.detail.contains("+100%"), "{}", step.detail);
    assert_eq!(cal.len(), 250);
    let out = Command::new(env!("CARGO_BIN_EXE_qdump"))
        .args([
            "check",
            root.to_str().unwrap(),
            "--nan-run",
            "30",
            "--volume-step",
            "10",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["findings"].as_array().unwrap().len(), 10);
}

/// A 5:2 split on day 20, in a store of raw prices (the close falls to 40%, the factor rises 2.5x) and in one of
/// qlib's convention (the close is adjusted and continuous, the factor doubles): `--prices auto` finds no step
/// in either, and forcing the wrong convention finds exactly the split.
#[test]
fn a_split_is_no_price_step_in_either_convention() {
    let dir = tempfile::tempdir().unwrap();
    let day = |k: usize| {
        (parse_timestamp("2023-03-01").unwrap() + chrono::Duration::days(k as i64))
            .format("%Y-%m-%d")
            .to_string()
    };
    let store = |name: &str, close: &dyn Fn(usize) -> f64| -> Store {
        let input = dir.path().join(format!("{name}-csv"));
        std::fs::create_dir_all(&input).unwrap();
        let mut text = String::from("date,open,high,low,close,volume,factor\n");
        for k in 0..40 {
            let c = close(k);
            let f = if k < 20 { 1.0 } else { 2.5 };
            text.push_str(&format!("{},{c},{c},{c},{c},1000,{f}\n", day(k)));
        }
        std::fs::write(input.join("SH600000.csv"), text).unwrap();
        import_csv(&input, &dir.path().join(name), &Default::default())
    };
    let raw = store("raw", &|k| if k < 20 { 10.0 } else { 4.0 });
    let adjusted = store("adjusted", &|_| 10.0);
    let steps = |s: &Store, prices| -> Vec<String> {
        let opts = CheckOptions {
            prices,
            ..Default::default()
        };
        check(s, &opts)
            .unwrap()
            .findings
            .into_iter()
            .filter(|f| f.kind == "price-step")
            .map(|f| format!("{} {}", f.field.unwrap(), f.detail))
            .collect()
    };
    use qstore::store::check::Prices;
    assert_eq!(steps(&raw, Prices::Auto), Vec::<String>::new());
    assert_eq!(steps(&adjusted, Prices::Auto), Vec::<String>::new());
    let wrong = steps(&adjusted, Prices::Raw);
    assert_eq!(wrong.len(), 4, "{wrong:?}");
    assert!(
        wrong[0]
            .starts_with("close +150% from 2023-03-20 (10) to 2023-03-21 (25), prices x factor"),
        "{wrong:?}"
    );
    let wrong = steps(&raw, Prices::Adjusted);
    assert_eq!(wrong.len(), 4, "{wrong:?}");
    assert!(
        wrong[0].contains("-60%") && wrong[0].ends_with("prices as stored"),
        "{wrong:?}"
    );
    // The command: `--prices raw` on the qlib-convention store reports the split, `auto` does not.
    let run = |prices: &str| {
        Command::new(env!("CARGO_BIN_EXE_qdump"))
            .args([
                "check",
                adjusted.root().to_str().unwrap(),
                "--prices",
                prices,
            ])
            .output()
            .unwrap()
    };
    assert_eq!(run("auto").status.code(), Some(0));
    assert_ne!(run("raw").status.code(), Some(0));
}

/// One-minute bars (3 days of 240): the default thresholds scale to the frequency (a day of bars for a
/// missing run, 0.5/sqrt(240) for a price step, 3*sqrt(240) for volume), so a 5% jump within a minute is found
/// and a quiet half hour is not; messages count bars, not days.
#[test]
fn thresholds_and_words_follow_the_frequency() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let mut text = String::from("date,open,high,low,close,volume\n");
    let mut price = 10.0f64;
    for d in 0..3 {
        for i in 0..240 {
            let k = d * 240 + i;
            // Missing: 30 bars of day 0 (quiet), 250 bars across days 1-2 (a suspension).
            if (100..130).contains(&k) || (300..550).contains(&k) {
                continue;
            }
            price *= if k == 650 {
                1.05
            } else if k % 2 == 0 {
                1.001
            } else {
                0.999
            };
            let t = parse_timestamp(&format!("2023-03-0{} 09:31:00", d + 1)).unwrap()
                + chrono::Duration::minutes(i as i64);
            let p = format!("{price:.4}");
            let v = if k % 7 == 0 { 9000 } else { 1000 };
            text.push_str(&format!(
                "{},{p},{p},{p},{p},{v}\n",
                t.format("%Y-%m-%d %H:%M:%S")
            ));
        }
    }
    std::fs::write(input.join("SH600000.csv"), text).unwrap();
    // Another instrument trades every minute, so the calendar has every bar.
    let mut full = String::from("date,open,high,low,close,volume\n");
    for d in 0..3 {
        for i in 0..240 {
            let t = parse_timestamp(&format!("2023-03-0{} 09:31:00", d + 1)).unwrap()
                + chrono::Duration::minutes(i as i64);
            full.push_str(&format!("{},5,5,5,5,100\n", t.format("%Y-%m-%d %H:%M:%S")));
        }
    }
    std::fs::write(input.join("SH600009.csv"), full).unwrap();
    let root = dir.path().join("s");
    let opts = import::ImportOptions {
        freq: Freq::MINUTE,
        ..Default::default()
    };
    let s = import_csv(&input, &root, &opts);
    let scaled = CheckOptions::for_store(&s, Freq::MINUTE).unwrap();
    assert_eq!(scaled.nan_run, 240);
    assert!((scaled.price_step - 0.5 / 240f64.sqrt()).abs() < 1e-12);
    assert!((scaled.volume_step - 3.0 * 240f64.sqrt()).abs() < 1e-9);
    let found: Vec<(Option<String>, &str, String)> = check(&s, &scaled)
        .unwrap()
        .findings
        .into_iter()
        .map(|f| (f.field, f.kind, f.detail))
        .collect();
    let kinds: Vec<(&str, &str)> = found
        .iter()
        .map(|f| (f.0.as_deref().unwrap_or("-"), f.1))
        .collect();
    assert_eq!(
        kinds,
        [
            ("-", "nan-run"),
            ("close", "price-step"),
            ("high", "price-step"),
            ("low", "price-step"),
            ("open", "price-step")
        ],
        "{found:?}"
    );
    assert!(
        found[0].2.starts_with("250 bars without any value"),
        "{found:?}"
    );
    assert!(
        found[1].2.starts_with("+5% from 2023-03-03 12:20:00"),
        "{found:?}"
    );
    // The day's thresholds on minute bars: the jump is missed, the quiet half hour reported.
    let daily = check(
        &s,
        &CheckOptions {
            freq: Freq::MINUTE,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!daily.findings.iter().any(|f| f.kind == "price-step"));
    assert!(
        daily
            .findings
            .iter()
            .any(|f| f.detail.starts_with("30 bars"))
    );
    // The command uses the scaled defaults and says which.
    let out = Command::new(env!("CARGO_BIN_EXE_qdump"))
        .args(["check", root.to_str().unwrap(), "--freq", "1min", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["thresholds"]["nan_run"], 240, "{v}");
    assert_eq!(v["thresholds"]["unit"], "bars", "{v}");
    assert_eq!(v["findings"].as_array().unwrap().len(), 5, "{v}");
}
