//! The `.bin` format against storage-layout.md §4 (bytes, start index, validity) and §5-6 (writes, and where
//! qstore differs from qlib), with qlib's crashes
//! replaced by the behaviour its documentation intends; byte identity with qlib's writer; corrupt files.

mod common;

use common::{qlib_bytes, store_with_calendar};
use qstore::store::writer;
use qstore::{CorruptReason, Error, FeatureFile, Freq, WriteKind};

const NAN: f32 = f32::NAN;

/// A file holding calendar indexes 3..=10 with value = index + 1 (the fixture of storage-layout.md §4.3).
fn fixture(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("close.day.bin");
    std::fs::write(&path, qlib_bytes(3, &[4., 5., 6., 7., 8., 9., 10., 11.])).unwrap();
    path
}

#[test]
fn read_table_4_3() {
    for threshold in [0, u64::MAX] {
        read_table_4_3_with(threshold);
    }
}

/// The fixture's rows, with the file mapped (threshold 0) or read into memory.
fn read_table_4_3_with(threshold: u64) {
    let dir = tempfile::tempdir().unwrap();
    let f = FeatureFile::open_with(&fixture(dir.path()), threshold)
        .unwrap()
        .unwrap();
    assert_eq!(f.is_mapped(), threshold == 0);
    assert_eq!((f.start(), f.len(), f.end()), (3, 8, 11));
    // missing file: no data (qlib: (None, None) / empty Series)
    assert!(
        FeatureFile::open(&dir.path().join("none.day.bin"))
            .unwrap()
            .is_none()
    );
    // s[2], before the start: qlib IndexError; here None
    assert_eq!(f.get(2), None);
    // s[3]
    assert_eq!(f.get(3), Some(4.0));
    // s[11], s[100]: qlib struct.error; here None
    assert_eq!(f.get(11), None);
    assert_eq!(f.get(100), None);
    // s[0:5] -> {3, 4}: start clamped to the file start, stop exclusive
    assert_eq!(f.slice(0..5), (3, &[4.0, 5.0][..]));
    // s[5:] and s[:5]
    assert_eq!(f.slice(5..usize::MAX), (5, &[6., 7., 8., 9., 10., 11.][..]));
    assert_eq!(f.slice(0..5).1, &[4., 5.]);
    // s[8:8] empty
    assert!(f.slice(8..8).1.is_empty());
    // s[5:100] cut at the end of data, no padding
    assert_eq!(f.slice(5..100).1.len(), 6);
    // s[20:30] after the end: empty
    assert!(f.slice(20..30).1.is_empty());
    // (s[-5:4] has no unsigned counterpart: calendar indexes are never negative; 0..4 gives {3})
    assert_eq!(f.slice(0..4), (3, &[4.0][..]));
}

#[test]
fn write_table_4_4() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.day.bin");
    // len(data) == 0: no-op, no file
    assert_eq!(
        writer::write(&p, Some(5), &[]).unwrap(),
        WriteKind::Unchanged
    );
    assert!(!p.exists());
    // file missing: create, header = index
    assert_eq!(
        writer::write(&p, Some(3), &[4., 5., 6.]).unwrap(),
        WriteKind::Created
    );
    assert_eq!(std::fs::read(&p).unwrap(), qlib_bytes(3, &[4., 5., 6.]));
    // index None: append after the end
    assert_eq!(writer::write(&p, None, &[7.]).unwrap(), WriteKind::Appended);
    // index > end: NaN gap, then data
    assert_eq!(
        writer::write(&p, Some(9), &[10.]).unwrap(),
        WriteKind::Appended
    );
    assert_same!(read(&p), [4., 5., 6., 7., NAN, NAN, 10.]);
    // index <= end (qlib: TypeError): overlay, new values win, NaN in the new data keeps the old value
    assert_eq!(
        writer::write(&p, Some(4), &[50., NAN, 70.]).unwrap(),
        WriteKind::Replaced
    );
    assert_same!(read(&p), [4., 50., 6., 70., NAN, NAN, 10.]);
    assert_eq!(
        FeatureFile::open(&p).unwrap().unwrap().start(),
        3,
        "the header survives an overlay"
    );
    // overlay that reaches before the start and past the end
    writer::write(
        &p,
        Some(1),
        &[2., NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, 11., 12.],
    )
    .unwrap();
    let f = FeatureFile::open(&p).unwrap().unwrap();
    assert_eq!(f.start(), 1);
    assert_same!(
        f.values(),
        [2., NAN, 4., 50., 6., 70., NAN, NAN, 10., 11., 12.]
    );

    // header-only file: len 0, append works (write([1.5]) -> {7: 1.5})
    let h = dir.path().join("h.day.bin");
    std::fs::write(&h, 7f32.to_le_bytes()).unwrap();
    let f = FeatureFile::open(&h).unwrap().unwrap();
    assert_eq!((f.start(), f.len()), (7, 0));
    writer::write(&h, None, &[1.5]).unwrap();
    assert_eq!(
        FeatureFile::open(&h).unwrap().unwrap().slice(0..100),
        (7, &[1.5][..])
    );

    // 0-byte file (qlib's clear()): qlib raises IndexError on every accessor; here it has no data, and a write
    // creates it afresh with the header.
    let e = dir.path().join("e.day.bin");
    std::fs::write(&e, b"").unwrap();
    let f = FeatureFile::open(&e).unwrap().unwrap();
    assert!(f.is_empty() && !f.has_header());
    assert!(f.slice(0..10).1.is_empty());
    assert_eq!(
        writer::write(&e, Some(2), &[1.]).unwrap(),
        WriteKind::Created
    );
    assert_eq!(std::fs::read(&e).unwrap(), qlib_bytes(2, &[1.]));
}

#[test]
fn docstring_examples_of_storage_py() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.day.bin");
    writer::write(&p, Some(3), &[4., 5., 6.]).unwrap();
    writer::write(&p, Some(6), &[6., 7.]).unwrap();
    assert_same!(read(&p), [4., 5., 6., 6., 7.]);
    writer::write(&p, Some(9), &[8.]).unwrap();
    assert_same!(read(&p), [4., 5., 6., 6., 7., NAN, 8.]);
    // write([1, NaN], 3): the code's fillna(old) keeps 5 at index 4 (the docstring's NaN contradicts the code)
    writer::write(&p, Some(3), &[1., NAN]).unwrap();
    assert_same!(read(&p), [1., 5., 6., 6., 7., NAN, 8.]);
}

#[test]
fn rewrite_and_rebase_4_5() {
    let dir = tempfile::tempdir().unwrap();
    let p = fixture(dir.path());
    // rewrite: qlib empties the file then fails (data loss); here one atomic replace
    writer::rewrite(&p, 2, &[1., 2.]).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), qlib_bytes(2, &[1., 2.]));
    // rebase: extend the end with NaN (the only case that works in qlib) is an in-place append
    assert_eq!(writer::rebase(&p, 2, 5).unwrap(), WriteKind::Appended);
    assert_same!(read(&p), [1., 2., NAN]);
    // extend the front (qlib: TypeError)
    assert_eq!(writer::rebase(&p, 0, 5).unwrap(), WriteKind::Replaced);
    let f = FeatureFile::open(&p).unwrap().unwrap();
    assert_eq!(f.start(), 0);
    assert_same!(f.values(), [NAN, NAN, 1., 2., NAN]);
    // cut the front, cut the end
    writer::rebase(&p, 3, 4).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), qlib_bytes(3, &[2.]));
    // unchanged range, start after end
    assert_eq!(writer::rebase(&p, 3, 4).unwrap(), WriteKind::Unchanged);
    assert!(matches!(
        writer::rebase(&p, 5, 4),
        Err(Error::IndexOutOfRange { .. })
    ));
    // a missing file cannot be rebased
    assert!(writer::rebase(&dir.path().join("no.day.bin"), 0, 1).is_err());
}

#[test]
fn bytes_identical_to_qlib_writer_and_qlib_files_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_calendar(dir.path(), 40);
    let values = [10.25f32, NAN, 11.5, 1e-7, -3.0, f32::MAX];
    // create at 31 (a stock listed mid-calendar), then append as qlib's dump_update does with mode "ab"
    store
        .write_feature("SH600000", "close", Freq::DAY, Some(31), &values[..4])
        .unwrap();
    store
        .write_feature("SH600000", "close", Freq::DAY, None, &values[4..])
        .unwrap();
    let path = dir.path().join("features/sh600000/close.day.bin");
    assert_eq!(std::fs::read(&path).unwrap(), qlib_bytes(31, &values));

    // A file written the way qlib writes it (from float64 data cast with astype("<f")) reads back.
    let f64s = [1.0f64 / 3.0, 2.0 / 3.0, f64::NAN];
    let qlib_written = qlib_bytes(5, &f64s.map(|v| v as f32));
    let path = dir.path().join("features/sz000001/open.day.bin");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &qlib_written).unwrap();
    let got = store.read("SZ000001", "open", Freq::DAY, 0..40).unwrap();
    assert_eq!(got.start(), 5);
    assert_same!(got[..], [(1.0f64 / 3.0) as f32, (2.0f64 / 3.0) as f32, NAN]);
}

#[test]
fn corrupt_files_give_typed_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    type Case = (&'static str, Vec<u8>, fn(&CorruptReason) -> bool);
    let cases: Vec<Case> = vec![
        ("size7", vec![0; 7], |r| {
            matches!(r, CorruptReason::SizeNotMultipleOf4 { size: 7 })
        }),
        ("size2", vec![0; 2], |r| {
            matches!(r, CorruptReason::SizeNotMultipleOf4 { size: 2 })
        }),
        (
            "nan",
            qlib_bytes(0, &[1.])
                .iter()
                .enumerate()
                .map(|(i, &b)| if i < 4 { f32::NAN.to_le_bytes()[i] } else { b })
                .collect(),
            |r| matches!(r, CorruptReason::StartNotFinite { .. }),
        ),
        (
            "neg",
            [(-2f32).to_le_bytes(), 1f32.to_le_bytes()].concat(),
            |r| matches!(r, CorruptReason::StartNegative { .. }),
        ),
        (
            "frac",
            [(2.5f32).to_le_bytes(), 1f32.to_le_bytes()].concat(),
            |r| matches!(r, CorruptReason::StartFractional { .. }),
        ),
        (
            "big",
            [(16_777_216f32).to_le_bytes(), 1f32.to_le_bytes()].concat(),
            |r| matches!(r, CorruptReason::StartTooLarge { .. }),
        ),
    ];
    for ((name, bytes, check), threshold) in cases
        .into_iter()
        .flat_map(|c| [(c.clone(), 0), (c, u64::MAX)])
    {
        let p = dir.path().join(format!("{name}.day.bin"));
        std::fs::write(&p, &bytes).unwrap();
        match FeatureFile::open_with(&p, threshold) {
            Err(Error::CorruptFeature { path, reason }) => {
                assert_eq!(path, p);
                assert!(check(&reason), "{name}: {reason:?}");
                let msg = Error::CorruptFeature { path, reason }.to_string();
                assert!(
                    msg.contains(&format!("{name}.day.bin")) && msg.contains("rebuild"),
                    "{msg}"
                );
            }
            other => panic!("{name}: expected a corrupt-file error, got {other:?}"),
        }
    }
}

#[test]
fn data_past_the_calendar_is_invisible_to_reads_and_reported_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_calendar(dir.path(), 5);
    // 3 values from index 3: index 5 is past the 5-day calendar (an update that has not published yet)
    store
        .write_feature("A", "close", Freq::DAY, Some(3), &[1., 2., 3.])
        .unwrap();
    let got = store.read("A", "close", Freq::DAY, 0..100).unwrap();
    assert_same!(got[..], [1., 2.]);
    let err = store.verify_feature("A", "close", Freq::DAY).unwrap_err();
    assert!(
        matches!(
            err,
            Error::CorruptFeature {
                reason: CorruptReason::PastCalendar {
                    end: 6,
                    calendar_len: 5
                },
                ..
            }
        ),
        "{err:?}"
    );
    store
        .write_feature("B", "close", Freq::DAY, Some(0), &[1.])
        .unwrap();
    store.verify_feature("B", "close", Freq::DAY).unwrap();
}

#[test]
fn torn_append_is_healed_by_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.day.bin");
    writer::write(&p, Some(2), &[1., 2.]).unwrap();
    // a crash half-way through appending a value leaves 2 stray bytes
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.extend_from_slice(&[0xAB, 0xCD]);
    std::fs::write(&p, &bytes).unwrap();
    assert!(matches!(
        FeatureFile::open(&p),
        Err(Error::CorruptFeature { .. })
    ));
    assert_eq!(writer::write(&p, None, &[3.]).unwrap(), WriteKind::Replaced);
    assert_eq!(std::fs::read(&p).unwrap(), qlib_bytes(2, &[1., 2., 3.]));
}

#[test]
fn start_index_limit_of_float32() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.day.bin");
    writer::write(&p, Some((1 << 24) - 1), &[1.]).unwrap();
    assert_eq!(
        FeatureFile::open(&p).unwrap().unwrap().start(),
        (1 << 24) - 1
    );
    let err = writer::write(&dir.path().join("b2.day.bin"), Some(1 << 24), &[1.]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::IndexOutOfRange {
                index: 16_777_216,
                ..
            }
        ),
        "{err}"
    );
}

fn read(p: &std::path::Path) -> Vec<f32> {
    FeatureFile::open(p).unwrap().unwrap().values().to_vec()
}
