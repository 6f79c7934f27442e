//! Issue 16's reproductions, run against the real binaries: each of these lost data or lied in its exit code
//! before its fix.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::{entries, text, tree};

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sample");

fn cmd(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(bin);
    c.args(args)
        .env_remove("QSTORE_FAILPOINT")
        .env_remove("QSTORE_FAILPOINT_PAUSE_MS")
        .env_remove("QSTORE_REDIS_URL")
        .env_remove("QSTORE_CACHE_DIR");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn qdump(args: &[&str]) -> Output {
    cmd(env!("CARGO_BIN_EXE_qdump"), args, &[])
        .output()
        .unwrap()
}

fn qcache(args: &[&str]) -> Output {
    cmd(env!("CARGO_BIN_EXE_qcache"), args, &[])
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `qdump all --csv SAMPLE --to <to> <extra>`, which must succeed (exit 3: symbols listed after an
/// `--end-date` have no rows yet).
fn import(to: &Path, extra: &[&str]) {
    let mut args = vec!["all", "--csv", SAMPLE, "--to", s(to)];
    args.extend_from_slice(extra);
    let out = qdump(&args);
    assert!(matches!(out.status.code(), Some(0 | 3)), "{}", text(&out));
}

/// Every regular file below `dir` (relative path -> bytes), without qstore's dot-files (lock, stamp, id).
fn data_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    tree(dir)
        .into_iter()
        .filter(|(p, _)| !p.rsplit('/').next().unwrap().starts_with(".qstore-"))
        .collect()
}

#[test]
fn overwrite_through_a_symbolic_link_replaces_where_it_points() {
    let dir = tempfile::tempdir().unwrap();
    let (real, link) = (dir.path().join("real"), dir.path().join("lnk"));
    import(&real, &[]);
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let one = format!("{SAMPLE}/SH600000.csv");
    let out = qdump(&["all", "--csv", &one, "--to", s(&link), "--overwrite"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The link is still a link to the same directory, which now holds the whole new store.
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), real);
    let expected = dir.path().join("expected");
    let out = qdump(&["all", "--csv", &one, "--to", s(&expected)]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(data_files(&real), data_files(&expected));
    assert_eq!(entries(dir.path()), vec!["expected", "lnk", "real"]);
}

#[test]
fn overwrite_deletes_only_what_qstore_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("store");
    import(&to, &[]);
    let config = br#"{ "handle_cache": 64 }"#;
    std::fs::write(to.join("qstore.json"), config).unwrap();
    std::fs::write(to.join("precious.txt"), "keep me").unwrap();
    std::fs::create_dir(to.join("sub")).unwrap();
    std::fs::write(to.join("sub/thesis.tex"), "chapter 1").unwrap();
    std::fs::write(to.join("features/sh600000/notes.txt"), "a note").unwrap();
    let before = data_files(&to);

    let one = format!("{SAMPLE}/SZ000002.csv");
    let out = qdump(&["all", "--csv", &one, "--to", s(&to), "--overwrite"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for name in [
        "precious.txt",
        "sub",
        "features/sh600000/notes.txt",
        "--keep-unknown",
    ] {
        assert!(text(&out).contains(name), "{name}: {}", text(&out));
    }
    assert_eq!(
        data_files(&to),
        before,
        "the refused replace changed the store"
    );

    let out = qdump(&[
        "all",
        "--csv",
        &one,
        "--to",
        s(&to),
        "--overwrite",
        "--keep-unknown",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read(to.join("qstore.json")).unwrap(), config);
    assert_eq!(
        std::fs::read_to_string(to.join("precious.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(
        std::fs::read_to_string(to.join("sub/thesis.tex")).unwrap(),
        "chapter 1"
    );
    assert_eq!(
        std::fs::read_to_string(to.join("features/sh600000/notes.txt")).unwrap(),
        "a note"
    );
    // The new store's data: only SZ000002, and the old features are gone.
    assert!(to.join("features/sz000002/close.day.bin").is_file());
    assert!(!to.join("features/sh600000/close.day.bin").exists());
    assert_eq!(entries(dir.path()), vec!["store"]);

    // A store whose only extra is its qstore.json is replaced without a flag, and keeps it.
    std::fs::remove_file(to.join("precious.txt")).unwrap();
    std::fs::remove_dir_all(to.join("sub")).unwrap();
    std::fs::remove_dir_all(to.join("features/sh600000")).unwrap();
    let out = qdump(&["all", "--csv", SAMPLE, "--to", s(&to), "--overwrite"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read(to.join("qstore.json")).unwrap(), config);
    assert!(to.join("features/sh600000/close.day.bin").is_file());
}

#[test]
fn qcache_clear_deletes_only_cache_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (to, cache) = (dir.path().join("store"), dir.path().join("cache"));
    import(&to, &[]);
    let out = qcache(&[
        "warm",
        s(&to),
        "--fields",
        "Mean($close, 5)",
        "--cache-dir",
        s(&cache),
        "--lock",
        "file",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(cache.join("sh600000/notes.meta"), "mine").unwrap();
    std::fs::write(cache.join("sh600000/notes.txt"), "mine too").unwrap();
    let out = qcache(&["clear", s(&to), "--all", "--cache-dir", s(&cache)]);
    assert!(out.status.success(), "{}", text(&out));
    let left: Vec<String> = tree(&cache)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| !p.ends_with(".lock"))
        .collect();
    assert_eq!(left, vec!["sh600000/notes.meta", "sh600000/notes.txt"]);
    let out = qcache(&["verify", s(&to), "--cache-dir", s(&cache)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// A child started with its stderr piped, read until the failpoint pauses it.
fn paused(mut c: Command, point: &str) -> (Child, String) {
    c.env("QSTORE_FAILPOINT", point)
        .env("QSTORE_FAILPOINT_PAUSE_MS", "4000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "{point} was never reached: {seen}"
        );
        seen.push_str(&line);
        if line.contains("pausing") {
            break;
        }
    }
    // Drain the rest in the background so the child never blocks on a full pipe.
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    std::mem::forget(rest);
    (child, seen)
}

fn store_until(dir: &Path, name: &str, end: &str) -> PathBuf {
    let to = dir.join(name);
    import(&to, &["--end-date", end]);
    to
}

#[test]
fn an_update_and_a_replace_never_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let qdump_bin = env!("CARGO_BIN_EXE_qdump");
    // The clean results: the store as one update over a store to 2023-12-15 leaves it (= one whole import).
    let whole = dir.path().join("whole");
    import(&whole, &[]);

    // 1. An update is between its writes and its commit: a replace fails at once and changes nothing; the
    //    update then commits its days.
    let to = store_until(dir.path(), "a", "2023-12-15");
    let (update, _) = paused(
        cmd(qdump_bin, &["update", "--csv", SAMPLE, "--to", s(&to)], &[]),
        "update:before-calendar",
    );
    let out = qdump(&[
        "all",
        "--csv",
        SAMPLE,
        "--to",
        s(&to),
        "--overwrite",
        "--end-date",
        "2023-06-30",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("another writer"), "{}", text(&out));
    let out = update.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(data_files(&to), data_files(&whole));

    // 2. A replace is built and about to switch: an update without --wait fails at once; with --wait it runs
    //    after the switch, on the new store, from the new store's last day.
    let to = store_until(dir.path(), "b", "2023-12-15");
    let (replace, _) = paused(
        cmd(
            qdump_bin,
            &[
                "all",
                "--csv",
                SAMPLE,
                "--to",
                s(&to),
                "--overwrite",
                "--end-date",
                "2023-06-30",
            ],
            &[],
        ),
        "import:before-publish",
    );
    let out = qdump(&["update", "--csv", SAMPLE, "--to", s(&to)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("another writer"), "{}", text(&out));
    let waiting = cmd(
        qdump_bin,
        &["update", "--csv", SAMPLE, "--to", s(&to), "--wait"],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let out = replace.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("days added (2023-07-03 .."),
        "the update ran from the new store's last day: {}",
        text(&out)
    );
    assert_eq!(data_files(&to), data_files(&whole));
}

#[test]
fn an_update_that_fails_before_writing_leaves_no_marker() {
    let dir = tempfile::tempdir().unwrap();
    let to = store_until(dir.path(), "s", "2023-06-30");
    // A row dated before the store's last day that its calendar lacks (a Sunday) fails validation.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(
        bad.join("SH600000.csv"),
        "date,close\n2023-06-04,1.5\n2023-07-03,1.6\n",
    )
    .unwrap();
    let before = data_files(&to);
    let out = qdump(&[
        "update",
        "--csv",
        s(&bad),
        "--to",
        s(&to),
        "--since",
        "2023-06-01",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("2023-06-04"), "{}", text(&out));
    assert!(!to.join(".qstore-update-pending").exists());
    assert_eq!(data_files(&to), before);
    let out = qdump(&["update", "--csv", SAMPLE, "--to", s(&to)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).contains("cleaned up after a killed earlier run"),
        "{}",
        text(&out)
    );
}

/// Runs `script` with `sh` in a private mount namespace (as root there), with `$T` a 4 MiB tmpfs, `$SRC` the
/// store to work on, `$OUT` a directory to copy results to, `$QDUMP` and `$SAMPLE`.
fn in_small_tmpfs(script: &str, src: &Path, out: &Path) -> Output {
    Command::new("unshare")
        .args([
            "-rm",
            "sh",
            "-ec",
            &format!("T=$(mktemp -d); mount -t tmpfs -o size=4m tmpfs \"$T\"; {script}"),
        ])
        .env("SRC", src)
        .env("OUT", out)
        .env("QDUMP", env!("CARGO_BIN_EXE_qdump"))
        .env("SAMPLE", SAMPLE)
        .output()
        .unwrap()
}

#[test]
fn an_update_on_a_full_disk_cleans_up_and_a_rerun_needs_no_space() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    import(&whole, &[]);
    // Before the late listings (new files) and with months to append: the update needs new pages.
    let src = store_until(dir.path(), "src", "2023-04-28");
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    // Fill the file system, then update: it fails with ENOSPC, and must leave the store as it was (no marker,
    // no files past the calendar) on the still-full disk. Then with the filler gone, an update succeeds.
    let script = r#"
        cp -r "$SRC" "$T/store"
        cat /dev/zero > "$T/filler" 2>/dev/null || true
        set +e
        "$QDUMP" update --csv "$SAMPLE" --to "$T/store" > "$OUT/first.txt" 2>&1
        echo $? > "$OUT/first.code"
        set -e
        cp -r "$T/store" "$OUT/failed"
        rm "$T/filler"
        "$QDUMP" update --csv "$SAMPLE" --to "$T/store" > "$OUT/second.txt" 2>&1
        cp -r "$T/store" "$OUT/final"
    "#;
    let out = in_small_tmpfs(script, &src, &out_dir);
    assert!(out.status.success(), "{}", text(&out));
    let first = std::fs::read_to_string(out_dir.join("first.txt")).unwrap();
    assert_eq!(
        std::fs::read_to_string(out_dir.join("first.code"))
            .unwrap()
            .trim(),
        "1",
        "{first}"
    );
    assert!(first.contains("No space left on device"), "{first}");
    let failed = out_dir.join("failed");
    assert!(
        !failed.join(".qstore-update-pending").exists(),
        "the failed update left its marker: {first}"
    );
    assert_eq!(
        data_files(&failed),
        data_files(&src),
        "the failed update left what it wrote"
    );
    let second = std::fs::read_to_string(out_dir.join("second.txt")).unwrap();
    assert_eq!(
        data_files(&out_dir.join("final")),
        data_files(&whole),
        "{second}"
    );
}

#[test]
fn recovery_on_a_full_disk_cuts_unpublished_tails_in_place() {
    // A killed update left values past the calendar and its marker; the disk is then full. The next update's
    // recovery must still put the store back (it frees space before it needs any).
    let dir = tempfile::tempdir().unwrap();
    let src = store_until(dir.path(), "src", "2023-04-28");
    let killed = dir.path().join("killed");
    let out = Command::new("cp")
        .args(["-r", s(&src), s(&killed)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = cmd(
        env!("CARGO_BIN_EXE_qdump"),
        &["update", "--csv", SAMPLE, "--to", s(&killed)],
        &[("QSTORE_FAILPOINT", "update:before-calendar")],
    )
    .output()
    .unwrap();
    assert!(text(&out).contains("failpoint"), "{}", text(&out));
    assert!(killed.join(".qstore-update-pending").exists());
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    // The calendar's end cuts every file back; new listings' files are removed. Nothing new to add
    // (`--end-date` before the store's end), so the run only recovers.
    let script = r#"
        cp -r "$SRC" "$T/store"
        cat /dev/zero > "$T/filler" 2>/dev/null || true
        "$QDUMP" update --csv "$SAMPLE" --to "$T/store" --end-date 2023-04-28 > "$OUT/run.txt" 2>&1 || true
        cp -r "$T/store" "$OUT/recovered"
    "#;
    let out = in_small_tmpfs(script, &killed, &out_dir);
    assert!(out.status.success(), "{}", text(&out));
    let run = std::fs::read_to_string(out_dir.join("run.txt")).unwrap();
    let recovered = out_dir.join("recovered");
    // The values are back to the published ones; only the instruments file (rewritten with the spans the
    // calendar publishes) may still wait for space, in which case the marker stays for the next run.
    let features = |d: &Path| -> Vec<(String, Vec<u8>)> {
        data_files(d)
            .into_iter()
            .filter(|(p, _)| p.starts_with("features/"))
            .collect()
    };
    assert_eq!(features(&recovered), features(&src), "{run}");
}

fn calendar_len(store: &Path) -> usize {
    std::fs::read_to_string(store.join("calendars/day.txt"))
        .unwrap()
        .lines()
        .count()
}

#[test]
fn what_a_later_step_needs_is_checked_before_the_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let to = store_until(dir.path(), "s", "2023-06-30");
    let before = data_files(&to);
    // An unreachable Redis for --update-caches: nothing is appended.
    let out = cmd(
        env!("CARGO_BIN_EXE_qdump"),
        &["update", "--csv", SAMPLE, "--to", s(&to), "--update-caches"],
        &[("QSTORE_REDIS_URL", "redis://127.0.0.1:1/")],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("redis://127.0.0.1:1/"),
        "{}",
        text(&out)
    );
    assert_eq!(data_files(&to), before);
    // A feature set that does not exist for --warm: the old store is not replaced.
    let out = qdump(&[
        "all",
        "--csv",
        SAMPLE,
        "--to",
        s(&to),
        "--overwrite",
        "--warm",
        "nosuchset",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("nosuchset"), "{}", text(&out));
    assert_eq!(data_files(&to), before);
    // A lease Redis would refuse is a precise error before anything runs.
    let out = qcache(&[
        "warm",
        s(&to),
        "--fields",
        "$close",
        "--redis",
        "redis://127.0.0.1:6379/",
        "--lease-s",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("--lease-s") && text(&out).contains("0 s is out of range"),
        "{}",
        text(&out)
    );
    assert!(!to.join("features_cache").exists());
}

#[test]
fn a_cache_step_that_fails_after_the_commit_exits_6() {
    let dir = tempfile::tempdir().unwrap();
    let to = store_until(dir.path(), "s", "2023-06-30");
    let out = qcache(&[
        "warm",
        s(&to),
        "--fields",
        "Mean($close, 5)",
        "--lock",
        "file",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // One entry's meta names an expression that no longer parses: bringing it forward fails.
    let meta = std::fs::read_dir(to.join("features_cache/sh600000"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "meta"))
        .unwrap();
    let text_of = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(&meta, text_of.replace("Mean($close,5)", "Mean($close,")).unwrap();
    let days = calendar_len(&to);
    let out = qdump(&["update", "--csv", SAMPLE, "--to", s(&to), "--update-caches"]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    assert!(
        text(&out).contains("the update itself was committed"),
        "{}",
        text(&out)
    );
    assert!(calendar_len(&to) > days, "the days were appended");
}

#[test]
fn a_closed_stdout_is_a_normal_end_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("s");
    import(&to, &["--warm", "technical"]);
    let other = dir.path().join("other");
    let (qd, qc) = (env!("CARGO_BIN_EXE_qdump"), env!("CARGO_BIN_EXE_qcache"));
    let store = s(&to);
    let runs: Vec<(&str, Vec<&str>)> = vec![
        (qd, vec!["check", store]),
        (qd, vec!["check", store, "--json"]),
        (qd, vec!["show", store]),
        (qd, vec!["all", "--csv", SAMPLE, "--to", s(&other)]),
        (qd, vec!["update", "--csv", SAMPLE, "--to", store]),
        (qc, vec!["query", store, "--feature-set", "technical"]),
        (
            qc,
            vec!["query", store, "--fields", "$close", "--format", "stats"],
        ),
        (qc, vec!["info", store]),
        (qc, vec!["verify", store]),
        (qc, vec!["update", store]),
        (qc, vec!["warm", store, "--fields", "Mean($close, 3)"]),
        (qc, vec!["reset-lock", store, "--dry-run"]),
        (qc, vec!["clear", store, "--expr", "Mean($close, 3)"]),
    ];
    for (bin, args) in runs {
        // A pipe whose reading end is closed before the command starts: every write gets EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = cmd(bin, &args, &[])
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn temp_files_of_killed_writers_are_removed_by_the_next_writer() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("s");
    import(&to, &[]);
    let warm = [
        "warm",
        s(&to),
        "--fields",
        "Mean($close, 5)",
        "--lock",
        "file",
    ];
    let out = qcache(&warm);
    assert!(out.status.success(), "{}", text(&out));
    // A process of this machine that has exited, and a file of a writer elsewhere untouched for two hours.
    let dead = Command::new("true").spawn().unwrap();
    let pid = dead.id();
    let _ = { dead }.wait();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let inst = to.join("features_cache/sh600000");
    let mine = inst.join(format!(".qstore-tmp-{pid}@{}~a1b2c3", host.trim()));
    let old = inst.join(".qstore-tmp-x9y8z7");
    let live = inst.join(format!(
        ".qstore-tmp-{}@{}~d4e5f6",
        std::process::id(),
        host.trim()
    ));
    for f in [&mine, &old, &live] {
        std::fs::write(f, b"").unwrap();
    }
    let out = Command::new("touch")
        .args(["-d", "2 hours ago", s(&old)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = qcache(&["verify", s(&to)]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        !text(&out).contains("d4e5f6"),
        "a live writer's temp file is no problem"
    );
    let out = qcache(&warm);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !mine.exists() && !old.exists(),
        "abandoned temp files stayed"
    );
    assert!(live.exists(), "a live writer's temp file was removed");
    std::fs::remove_file(&live).unwrap();
    let out = qcache(&["verify", s(&to)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn deep_expressions_are_errors_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("s");
    import(&to, &[]);
    let sum = |n: usize| vec!["$close"; n].join("+");
    // Too deep: a positioned error, exit 1, from the parser (query, warm, a feature set).
    let deep = format!("{}$close{}", "Abs(".repeat(400), ")".repeat(400));
    let out = qcache(&["query", s(&to), "--fields", &deep]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("nests more than 128"), "{}", text(&out));
    let set = dir.path().join("set.json");
    std::fs::write(
        &set,
        serde_json::json!({"name": "big", "features": [{"name": "S", "expr": deep}]}).to_string(),
    )
    .unwrap();
    for args in [
        vec!["query", s(&to), "--feature-set", s(&set)],
        vec!["warm", s(&to), "--feature-set", s(&set)],
    ] {
        let out = qcache(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("nests more than"), "{}", text(&out));
    }
    // At the limit, and long sums (one flat level): evaluated on the worker threads, written to and read
    // from the cache.
    let (long, longest) = (sum(400), sum(20_000));
    let nested = format!("{}$close{}", "Abs(".repeat(127), ")".repeat(127));
    for e in [&long, &nested] {
        let out = qcache(&["warm", s(&to), "--fields", e, "--lock", "file"]);
        assert!(out.status.success(), "{}", text(&out));
        let out = qcache(&["query", s(&to), "--fields", e, "--format", "stats"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    // A long sum in a feature set, warmed and read back from the cache (one column of 20,000 terms).
    std::fs::write(
        &set,
        serde_json::json!({"name": "big", "features": [{"name": "S", "expr": longest}]})
            .to_string(),
    )
    .unwrap();
    let out = qcache(&["warm", s(&to), "--feature-set", s(&set), "--lock", "file"]);
    assert!(out.status.success(), "{}", text(&out));
    let off = qcache(&[
        "query",
        s(&to),
        "--feature-set",
        s(&set),
        "--expr-cache",
        "off",
    ]);
    let read = qcache(&[
        "query",
        s(&to),
        "--feature-set",
        s(&set),
        "--cache-stats",
        "--json",
    ]);
    assert!(off.status.success() && read.status.success());
    assert_eq!(off.stdout, read.stdout);
    assert!(
        String::from_utf8_lossy(&read.stderr).contains("\"misses\":0"),
        "{}",
        text(&read)
    );
}

/// A directory with three good per-symbol files and one file of each kind of bad input.
fn mixed_csv_dir(dir: &Path) -> PathBuf {
    let input = dir.join("in");
    std::fs::create_dir(&input).unwrap();
    for sym in ["SH600000", "SZ000002", "SZ000008"] {
        std::fs::copy(
            Path::new(SAMPLE).join(format!("{sym}.csv")),
            input.join(format!("{sym}.csv")),
        )
        .unwrap();
    }
    std::fs::write(input.join("EMPTY.csv"), b"").unwrap();
    std::fs::write(input.join("BADUTF.csv"), b"date,cl\xffose\n2023-01-03,1\n").unwrap();
    std::fs::write(
        input.join("TIMED.csv"),
        "date,close\n2023-01-03,1.5\n2023-01-04 09:30:00,1.6\n",
    )
    .unwrap();
    std::fs::write(
        input.join("HUGE.csv"),
        "date,close\n2023-01-03,1.5\n2023-01-04,1e39\n",
    )
    .unwrap();
    std::fs::write(input.join("INF.csv"), "date,close\n2023-01-03,inf\n").unwrap();
    std::fs::write(
        input.join("FUTURE.csv"),
        "date,close\n2023-01-03,1.5\n9999-12-31,1.6\n",
    )
    .unwrap();
    input
}

#[test]
fn bad_files_in_a_csv_directory_fail_only_their_symbol() {
    let dir = tempfile::tempdir().unwrap();
    let input = mixed_csv_dir(dir.path());
    let to = dir.path().join("s");
    let out = qdump(&["all", "--csv", s(&input), "--to", s(&to), "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["symbols_ok"], 3, "{v}");
    let failed: Vec<(String, String)> = v["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["symbol"].as_str().unwrap().to_string(),
                f["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let reason = |sym: &str| {
        failed
            .iter()
            .find(|(s, _)| s == sym)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{sym} is not listed: {failed:?}"))
    };
    assert_eq!(failed.len(), 6, "{failed:?}");
    assert!(reason("EMPTY").contains("EMPTY.csv: line 1: no date column"));
    assert!(reason("BADUTF").contains("BADUTF.csv: line 1"));
    assert!(
        reason("TIMED").contains("TIMED.csv: the row dated 2023-01-04 09:30:00 has a time of day")
    );
    assert!(reason("HUGE").contains("HUGE.csv: the row dated 2023-01-04 has close = inf"));
    assert!(reason("INF").contains("not a finite float32"));
    assert!(reason("FUTURE").contains("the row dated 9999-12-31 is after"));
    // The calendar holds only the good symbols' days: nothing of 9999.
    let cal = std::fs::read_to_string(to.join("calendars/day.txt")).unwrap();
    assert!(cal.lines().last().unwrap().starts_with("2024-"), "{cal}");
}

#[test]
fn update_reports_future_rows_old_rows_and_missing_symbols() {
    let dir = tempfile::tempdir().unwrap();
    let to = store_until(dir.path(), "s", "2023-06-30");
    // A day file with a future row for one symbol and old rows for another.
    let day = dir.path().join("day");
    std::fs::create_dir(&day).unwrap();
    std::fs::write(
        day.join("SH600000.csv"),
        "date,close\n2023-07-03,10.5\n9999-12-31,10.6\n",
    )
    .unwrap();
    std::fs::write(
        day.join("SZ000002.csv"),
        "date,close\n2023-06-29,20.1\n2023-06-30,20.2\n2023-07-03,20.3\n",
    )
    .unwrap();
    let out = qdump(&["update", "--csv", s(&day), "--to", s(&to), "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failed"][0]["symbol"], "SH600000", "{v}");
    assert!(
        v["failed"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("9999-12-31"),
        "{v}"
    );
    assert_eq!(v["left_out"][0]["rows"], 2, "{v}");
    assert!(
        v["left_out"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("--since"),
        "{v}"
    );
    assert_eq!(
        v["last_day"], "2023-07-03",
        "the future row did not become the last day: {v}"
    );
    // A later update still adds days.
    let out = qdump(&["update", "--csv", SAMPLE, "--to", s(&to)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(calendar_len(&to) > 130);
    // A requested symbol the source lacks: exit 3, named.
    for cmd_args in [
        vec![
            "all",
            "--csv",
            SAMPLE,
            "--to",
            "X",
            "--symbols",
            "SH600000,NOPE1",
        ],
        vec![
            "update",
            "--csv",
            SAMPLE,
            "--to",
            "Y",
            "--symbols",
            "SH600000,NOPE1",
        ],
    ] {
        let target = dir
            .path()
            .join(if cmd_args[0] == "all" { "n" } else { "s" });
        let args: Vec<&str> = cmd_args
            .iter()
            .map(|a| {
                if *a == "X" || *a == "Y" {
                    s(&target)
                } else {
                    a
                }
            })
            .collect();
        let out = qdump(&args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("NOPE1: not in the source"),
            "{args:?}: {}",
            text(&out)
        );
    }
}

#[test]
fn check_reports_infinite_values() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("s");
    import(&to, &[]);
    // A qlib-written file with an infinity in it (qstore's import refuses them).
    let path = to.join("features/sh600000/close.day.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4 + 4 * 10..4 + 4 * 11].copy_from_slice(&f32::INFINITY.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let out = qdump(&["check", s(&to)]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out)
            .contains("SH600000\tclose\tnon-finite\t1 infinite value(s), the first on 2023-01-17"),
        "{}",
        text(&out)
    );
}

#[test]
fn messages_are_precise() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("s");
    import(&to, &[]);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["query", s(&to), "--fields", "Mean($close, 4294967296)"],
            "the window of Mean is 4294967296 rows, more than the 4294967295",
        ),
        (
            vec!["query", s(&to), "--fields", "Ref($close, 4294967296)"],
            "the offset of Ref is 4294967296 rows",
        ),
    ];
    for (args, want) in cases {
        let out = qcache(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(text(&out).contains(want), "{args:?}: {}", text(&out));
    }
    // A device is not "no such file"; an I/O error says its cause once.
    let out = qdump(&[
        "all",
        "--csv",
        "/dev/zero",
        "--to",
        s(&dir.path().join("z")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("neither a regular file nor a directory"),
        "{}",
        text(&out)
    );
    let out = qdump(&[
        "all",
        "--csv",
        "/nonexistent/x",
        "--to",
        s(&dir.path().join("z")),
    ]);
    assert_eq!(
        text(&out).matches("no such file or directory").count(),
        1,
        "{}",
        text(&out)
    );
    // A calendar with bytes that are not UTF-8 names its line.
    let cal = to.join("calendars/day.txt");
    let mut bytes = std::fs::read(&cal).unwrap();
    bytes[11] = 0xff;
    std::fs::write(&cal, bytes).unwrap();
    let out = qdump(&["show", s(&to)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("calendars/day.txt:2: byte 1 of the line (0xff) is not UTF-8"),
        "{}",
        text(&out)
    );
}

#[test]
fn info_counts_corrected_sources_as_stale() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("s");
    import(&to, &[]);
    let out = qcache(&[
        "warm",
        s(&to),
        "--fields",
        "Mean($close, 5)",
        "$open",
        "--lock",
        "file",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let info = || -> serde_json::Value {
        let out = qcache(&["info", s(&to), "--json"]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(info()["stale_entries"], 0);
    // Correct one day of SH600000's close (an update with --since): its Mean entry no longer matches.
    let fix = dir.path().join("fix");
    std::fs::create_dir(&fix).unwrap();
    std::fs::write(fix.join("SH600000.csv"), "date,close\n2023-03-01,99.5\n").unwrap();
    let out = qdump(&[
        "update",
        "--csv",
        s(&fix),
        "--to",
        s(&to),
        "--since",
        "2023-03-01",
        "--fields",
        "close",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 corrections"), "{}", text(&out));
    let v = info();
    assert_eq!(v["stale_entries"], 1, "{v}");
    assert_eq!(v["stale_by_reason"]["corrected"], 1, "{v}");
    let out = qcache(&["update", s(&to)]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(info()["stale_entries"], 0);
}

#[cfg(feature = "hdf5")]
#[test]
fn a_dataset_meta_that_claims_more_rows_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("s");
    import(&to, &[]);
    let warm = [
        "warm",
        s(&to),
        "--dataset",
        "--fields",
        "Mean($close, 5)",
        "--lock",
        "file",
    ];
    let query = [
        "query",
        s(&to),
        "--fields",
        "Mean($close, 5)",
        "--disk-cache",
        "1",
    ];
    let out = qcache(&warm);
    assert!(out.status.success(), "{}", text(&out));
    let expected = qcache(&["query", s(&to), "--fields", "Mean($close, 5)"]).stdout;
    let bump = || {
        let meta = std::fs::read_dir(to.join("dataset_cache"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "meta"))
            .unwrap();
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        m["rows"] = serde_json::Value::from(m["rows"].as_u64().unwrap() + 100);
        std::fs::write(&meta, m.to_string()).unwrap();
    };
    // A query repairs it and serves the right values; so does `qcache update`.
    bump();
    let out = qcache(&query);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out.stdout, expected);
    assert_eq!(qcache(&["verify", s(&to)]).status.code(), Some(0));
    bump();
    let out = qcache(&["update", s(&to)]);
    assert!(text(&out).contains("Built: 1"), "{}", text(&out));
    assert_eq!(qcache(&["verify", s(&to)]).status.code(), Some(0));
}

#[test]
fn info_reports_the_lease_the_locks_use() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("s");
    import(&to, &[]);
    std::fs::write(
        to.join("qstore.json"),
        r#"{ "expression_cache": { "lease_s": 45 } }"#,
    )
    .unwrap();
    let info = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["info", s(&to), "--json"];
        args.extend_from_slice(extra);
        serde_json::from_slice(&qcache(&args).stdout).unwrap()
    };
    assert_eq!(info(&[])["lease_s"], 45.0);
    assert_eq!(info(&["--lease-s", "12"])["lease_s"], 12.0);
}
