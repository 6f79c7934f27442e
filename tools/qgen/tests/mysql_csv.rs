//! `qgen mysql` and `qgen csv` write the same data: importing either gives byte-identical stores, and the
//! pathological all-NULL symbol fails in both. Needs the MariaDB that tools/test.sh brings up.

use std::path::Path;
use std::process::Command;

use qstore::import::{self, CsvSource, ImportOptions, MysqlSource};

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn mysql_and_csv_outputs_import_identically() {
    let url = std::env::var("QSTORE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let table = format!("qgen_{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("qgen-mysql-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let spec = [
        "--symbols",
        "30",
        "--days",
        "120",
        "--seed",
        "7",
        "--pathological",
    ];
    let qgen = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_qgen"))
            .args(args)
            .args(spec)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "qgen {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    qgen(&["mysql", "--url", &url, "--table", &table]);
    let csv_dir = dir.join("csv");
    qgen(&["csv", "--raw-symbols", "--out", csv_dir.to_str().unwrap()]);

    let opts = ImportOptions::default();
    let conn = import::mysql::Connection::parse(&url, None).unwrap();
    let mysql = MysqlSource::open(
        conn,
        import::mysql::MysqlOptions {
            table: table.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let a = import::import(&mysql, &dir.join("a"), &Default::default(), &opts, &|_| {}).unwrap();
    let csv = CsvSource::open(&csv_dir, Default::default()).unwrap();
    let b = import::import(&csv, &dir.join("b"), &Default::default(), &opts, &|_| {}).unwrap();
    assert_eq!((a.symbols_ok, a.rows), (b.symbols_ok, b.rows));
    assert_eq!(a.symbols_ok, 30);
    assert_eq!(a.failed.len(), 1);
    assert_eq!(a.failed[0].symbol, "009999.SZ");
    assert_eq!(b.failed[0].symbol, "009999.SZ");
    assert!(
        files(&dir.join("a")) == files(&dir.join("b")),
        "the two imports differ"
    );

    let pool = mysql::Pool::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
    mysql::prelude::Queryable::query_drop(
        &mut pool.get_conn().unwrap(),
        format!("DROP TABLE `{table}`"),
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
