//! fixtures/sample is exactly what `qgen csv --symbols 12 --days 250` generates: the fixtures are reproducible
//! and the generator is deterministic.

use std::process::Command;

#[test]
fn sample_fixtures_are_reproducible() {
    let out = tempfile_dir();
    let status = Command::new(env!("CARGO_BIN_EXE_qgen"))
        .args(["csv", "--symbols", "12", "--days", "250", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/sample");
    let mut names: Vec<_> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    let mut generated: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    generated.sort();
    assert_eq!(names, generated);
    for n in names {
        assert_eq!(
            std::fs::read(fixtures.join(&n)).unwrap(),
            std::fs::read(out.join(&n)).unwrap(),
            "{n:?} differs from what qgen generates"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("qgen-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
