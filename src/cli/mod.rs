//! The command-line programs (`qdump`, `qcache`), behind the `cli` feature so that the library does not
//! depend on clap, indicatif or rpassword. `src/bin/*.rs` only call [`qdump::main`] and [`qcache::main`].
//!
//! Each flag that several commands take is defined once here ([`CacheArgs`]); errors are anyhow chains,
//! printed as `<program>: error: ...` with exit 1 (the library's typed errors are the chain's root).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::store::settings::{CacheMode, LockKind, Overrides, Settings};

/// `println!` that returns the write error instead of panicking, so a closed pipe (`| head`) ends the command
/// quietly ([`finish`] turns `BrokenPipe` into exit 0).
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)
    };
}

/// `eprintln!` for reports (counters) that must not panic when stderr is closed.
macro_rules! errln {
    ($($arg:tt)*) => {{
        // Counters on stderr are a report, not the command's output: a closed stderr is ignored.
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// What every program prints after its `--help`: the exit codes (README.md has the table). A macro, so that
/// `concat!` can put each program's examples before it.
macro_rules! exit_codes {
    () => {
        "Exit codes:
  0  success
  1  failed, nothing changed (the message says what, where and what to do)
  2  bad command-line usage
  3  qdump all/update: some symbols imported, others skipped (listed)
  4  qdump all: no symbol imported; the target was left as it was
  5  qdump check, qcache verify: problems found (listed)
  6  committed, but a later step (--warm, --update-caches) failed; the message says what finishes it"
    };
}

pub mod qcache;
pub mod qdump;

/// The commands every program has for its own shell integration: completions and a man page, generated from
/// the same clap definitions as its parser.
#[derive(clap::Subcommand, Clone)]
pub enum Integration {
    /// Print a shell completion script: `qdump completions bash > /etc/bash_completion.d/qdump`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `qdump man > /usr/local/share/man/man1/qdump.1`.
    Man,
}

impl Integration {
    /// Writes the script or page of `cmd` to standard output.
    pub fn print(&self, mut cmd: clap::Command) -> anyhow::Result<u8> {
        let name = cmd.get_name().to_string();
        let mut out = std::io::stdout().lock();
        match self {
            Integration::Completions { shell } => {
                clap_complete::generate(*shell, &mut cmd, name, &mut out)
            }
            Integration::Man => clap_mangen::Man::new(cmd).render(&mut out)?,
        }
        Ok(0)
    }
}

/// Where a store's caches are and how their writers lock: the flags of every `qcache` command.
#[derive(clap::Args, Clone)]
pub struct CacheArgs {
    /// The store directory.
    pub store: PathBuf,
    /// The cache directory [default: QSTORE_CACHE_DIR, else qstore.json expression_cache.dir, else
    /// STORE/features_cache].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Writer locks [default: redis when a Redis URL is configured, else file].
    #[arg(long, value_enum)]
    pub lock: Option<LockKind>,
    /// Redis for the writer locks, e.g. redis://127.0.0.1:6379/0 [default: QSTORE_REDIS_URL, else
    /// qstore.json expression_cache.redis_url].
    #[arg(long)]
    pub redis: Option<String>,
    /// Lease of a Redis lock in seconds (renewed while the writer works; a killed writer's runs out)
    /// [default: qstore.json expression_cache.lease_s, else 30].
    #[arg(long)]
    pub lease_s: Option<f64>,
    /// How long a writer waits for another writer of the same entry, in seconds.
    #[arg(long, default_value_t = 600.0)]
    pub wait_s: f64,
}

impl CacheArgs {
    /// The store's settings with these flags over them.
    pub fn settings(&self, mode: Option<CacheMode>) -> crate::Result<Settings> {
        Settings::resolve(
            &self.store,
            &Overrides {
                cache_dir: self.cache_dir.clone(),
                redis_url: self.redis.clone(),
                lock: self.lock,
                lease_s: self.lease_s,
                mode,
                compat: None,
            },
        )
    }
}

/// A list of names as a flag takes it: `all` (`None`), names separated by commas, `@FILE` (names separated by
/// commas, spaces or lines), and glob patterns (`SH6*`, `SZ00000?`, `SH60000[0-4]`; case-insensitive) matched
/// against `candidates()` (asked only when a pattern is given). Each pattern must match something.
pub fn name_list(
    flag: &str,
    arg: &str,
    candidates: impl FnOnce() -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<Option<Vec<String>>> {
    let to_anyhow = |e: crate::Error| match e {
        crate::Error::Config { reason, .. } => anyhow::anyhow!("{flag}: {reason}"),
        other => other.into(),
    };
    let Some(tokens) = crate::store::instruments::names(flag, arg).map_err(to_anyhow)? else {
        return Ok(None);
    };
    let out = crate::store::instruments::select(flag, &tokens, || {
        candidates().map_err(|e| crate::Error::Config {
            source_name: flag.to_string(),
            reason: format!("{e:#}"),
        })
    })
    .map_err(to_anyhow)?;
    Ok(Some(out))
}

/// The flags both programs take before their subcommand or after it: `--threads`, `-v`, `-q`.
#[derive(clap::Args)]
pub struct Global {
    /// Worker threads for evaluation, imports and cache writes (default: one per core). Set it below the
    /// core count to leave room for other work on the machine.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Say more on standard error: -v what the library decides (how a source is read, what an update
    /// appends), -vv details, -vvv everything. RUST_LOG (e.g. RUST_LOG=qstore=debug) applies without -v/-q.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Say nothing on standard error but errors: no progress, no warnings.
    #[arg(short, long, global = true)]
    quiet: bool,
}

/// Whether `-q` was given (progress stays off).
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether progress and reports on standard error are off (`-q`).
pub fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

impl Global {
    /// Sizes the process's thread pool (rayon's global pool, which every parallel step runs on) and starts
    /// printing the library's events on standard error, at the level `-v`/`-q` (else `RUST_LOG`, else
    /// warnings) asks for.
    pub fn apply(&self) -> anyhow::Result<()> {
        QUIET.store(self.quiet, std::sync::atomic::Ordering::Relaxed);
        let level = match (self.quiet, self.verbose) {
            (true, _) => Some("error"),
            (false, 0) => None,
            (false, 1) => Some("info"),
            (false, 2) => Some("debug"),
            _ => Some("trace"),
        };
        let filter = match (level, std::env::var("RUST_LOG")) {
            (None, Ok(v)) if !v.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&v)
                .map_err(|e| anyhow::anyhow!("RUST_LOG={v:?} is not a filter: {e}"))?,
            (level, _) => {
                tracing_subscriber::EnvFilter::new(format!("qstore={}", level.unwrap_or("warn")))
            }
        };
        // A second start (a test calling main twice) keeps the first subscriber.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .without_time()
            .with_target(false)
            .try_init();
        if let Some(n) = self.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n.into())
                .build_global()
                .map_err(|e| anyhow::anyhow!("starting {n} threads (--threads): {e}"))?;
        }
        Ok(())
    }
}

/// A progress bar on standard error when it is a terminal (with the rate and the time left), else nothing.
pub fn progress_bar(n: u64) -> indicatif::ProgressBar {
    if std::io::stderr().is_terminal() && !quiet() {
        let style = indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} [{elapsed_precise}] {per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        indicatif::ProgressBar::new(n).with_style(style)
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// The process's exit: the command's code, or 1 with the error chain (a closed pipe is not a failure).
pub fn finish(program: &str, result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("{program}: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
