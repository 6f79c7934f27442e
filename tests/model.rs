//! Property test: random create/append/gap-append/overwrite/rewrite/rebase sequences, interleaved with reads and
//! reopenings, against a plain model of the file: one `Option<f32>` per calendar slot (`None` = outside the file's
//! range, `Some(NaN)` = inside it but missing).

mod common;

use proptest::prelude::*;
use qstore::{Freq, Store};

const CAL: usize = 64;

#[derive(Debug, Clone)]
enum Op {
    Write {
        index: Option<usize>,
        data: Vec<f32>,
    },
    Rewrite {
        start: usize,
        data: Vec<f32>,
    },
    Rebase {
        start: usize,
        len: usize,
    },
    Reopen,
    Read {
        start: usize,
        end: usize,
    },
}

fn value() -> impl Strategy<Value = f32> + Clone {
    prop_oneof![3 => (-1000i32..1000).prop_map(|v| v as f32 / 4.0), 1 => Just(f32::NAN)]
}

fn op() -> impl Strategy<Value = Op> {
    let data = prop::collection::vec(value(), 0..8);
    prop_oneof![
        4 => (prop::option::weighted(0.7, 0..CAL - 8), data.clone())
            .prop_map(|(index, data)| Op::Write { index, data }),
        1 => (0..CAL - 8, data).prop_map(|(start, data)| Op::Rewrite { start, data }),
        1 => (0..CAL - 20, 1..20usize).prop_map(|(start, len)| Op::Rebase { start, len }),
        1 => Just(Op::Reopen),
        3 => (0..CAL + 4, 0..CAL + 4).prop_map(|(a, b)| Op::Read { start: a.min(b), end: a.max(b) }),
    ]
}

/// The model: the file's calendar range (`None` = no file) and one value per calendar slot (NaN outside it).
struct Model {
    range: Option<(usize, usize)>,
    cells: Vec<f32>,
}

impl Model {
    fn new() -> Model {
        Model {
            range: None,
            cells: vec![f32::NAN; CAL + 64],
        }
    }

    fn write(&mut self, index: Option<usize>, data: &[f32]) {
        if data.is_empty() {
            return;
        }
        let at = index.unwrap_or(self.range.map_or(0, |r| r.1));
        let (lo, hi) = self.range.unwrap_or((at, at));
        self.range = Some((lo.min(at), hi.max(at + data.len())));
        for (k, &v) in data.iter().enumerate() {
            if !v.is_nan() {
                self.cells[at + k] = v;
            }
        }
    }

    fn rewrite(&mut self, start: usize, data: &[f32]) {
        self.cells.fill(f32::NAN);
        self.cells[start..start + data.len()].copy_from_slice(data);
        self.range = Some((start, start + data.len()));
    }

    fn rebase(&mut self, start: usize, end: usize) {
        for (i, c) in self.cells.iter_mut().enumerate() {
            if !(start..end).contains(&i) {
                *c = f32::NAN;
            }
        }
        self.range = Some((start, end));
    }

    /// What a read of `start..end` must return: the calendar index of the first value and the values.
    fn read(&self, start: usize, end: usize) -> Option<(usize, Vec<f32>)> {
        let (lo, hi) = self.range?;
        let (a, b) = (start.max(lo), end.min(CAL).min(hi));
        (a < b).then(|| (a, self.cells[a..b].to_vec()))
    }
}

fn check(store: &Store, model: &Model, start: usize, end: usize) -> Result<(), TestCaseError> {
    let got = store
        .read("SH600000", "close", Freq::DAY, start..end)
        .unwrap();
    match model.read(start, end) {
        None => prop_assert!(
            got.is_empty(),
            "read {start}..{end}: expected nothing, got {:?}",
            &got[..]
        ),
        Some((first, values)) => {
            prop_assert_eq!(got.start(), first, "read {}..{}", start, end);
            prop_assert!(
                common::same(&got, &values),
                "read {start}..{end}: got {:?}, want {values:?}",
                &got[..]
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = common::store_with_calendar(dir.path(), CAL);
        let mut model = Model::new();
        for op in &ops {
            match op {
                Op::Write { index, data } => {
                    store.write_feature("SH600000", "close", Freq::DAY, *index, data).unwrap();
                    model.write(*index, data);
                }
                Op::Rewrite { start, data } => {
                    store.rewrite_feature("SH600000", "close", Freq::DAY, *start, data).unwrap();
                    model.rewrite(*start, data);
                }
                Op::Rebase { start, len } => {
                    if model.range.is_some() {
                        store.rebase_feature("SH600000", "close", Freq::DAY, *start..start + len).unwrap();
                        model.rebase(*start, start + len);
                    }
                }
                Op::Reopen => store = Store::open(dir.path()).unwrap(),
                Op::Read { start, end } => check(&store, &model, *start, *end)?,
            }
        }
        check(&store, &model, 0, CAL)?;
        // and once more from disk alone
        check(&Store::open(dir.path()).unwrap(), &model, 0, CAL)?;
        // no temp file is ever left behind
        let leftovers = std::fs::read_dir(dir.path().join("features/sh600000")).map_or(0, |d| {
            d.filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".qstore-tmp-")).count()
        });
        prop_assert_eq!(leftovers, 0);
    }
}
