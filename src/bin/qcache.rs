//! `qcache`: compute and inspect derived data of a qstore store.
//!
//! Exit codes: 0 success; 1 the command failed (bad expression, unknown field, missing store, I/O); 2 bad
//! command-line usage.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use qstore::{FeatureSet, Frame, Freq, Store, Universe, parse_timestamp};

#[derive(Parser)]
#[command(
    name = "qcache",
    version,
    about = "Compute and inspect expressions and caches of a qstore store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, ValueEnum)]
enum Format {
    /// `instrument,datetime,<columns>`; NaN is an empty cell.
    Csv,
    /// One JSON object per row and line; NaN is null.
    Json,
    /// Per column: rows, NaN count, mean, min, max (a quick look at a large query).
    Stats,
}

#[derive(Subcommand)]
enum Command {
    /// Evaluate expressions or a feature set and print the values (rows by instrument, then date).
    Query {
        /// The store directory.
        store: PathBuf,
        /// Comma-separated instruments, or `all` for every instrument of --market (rows restricted to their
        /// spans).
        #[arg(long, default_value = "all")]
        instruments: String,
        /// Expressions, one column each: --fields '$close' 'Mean($close, 5)'.
        #[arg(long, num_args = 1.., required_unless_present = "feature_set", conflicts_with = "feature_set")]
        fields: Vec<String>,
        /// A feature set: `alpha158`, `technical`, or the path of a JSON file of the same shape.
        #[arg(long)]
        feature_set: Option<String>,
        /// First date, inclusive.
        #[arg(long)]
        start: Option<String>,
        /// Last date, inclusive.
        #[arg(long)]
        end: Option<String>,
        #[arg(long, default_value = "day")]
        freq: Freq,
        #[arg(long, default_value = "all")]
        market: String,
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
        /// Write here (replaced atomically) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("qcache: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Query {
            store,
            instruments,
            fields,
            feature_set,
            start,
            end,
            freq,
            market,
            format,
            out,
        } => {
            let store = Store::open(&store)?;
            let date = |s: Option<String>, what: &str| -> Result<_> {
                s.map(|s| parse_timestamp(&s).with_context(|| format!("--{what}")))
                    .transpose()
            };
            let (start, end) = (date(start, "start")?, date(end, "end")?);
            let list: Vec<String>;
            let universe = if instruments == "all" {
                Universe::Market(&market)
            } else {
                list = instruments
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if list.is_empty() {
                    bail!("--instruments lists no instrument; give SH600000,SZ000001 or all");
                }
                Universe::List(&list)
            };
            let frame = match feature_set {
                Some(name) => {
                    let set = FeatureSet::resolve(&name)?;
                    store.feature_set(universe, &set, start, end, freq)?
                }
                None => store.features(universe, &fields, start, end, freq)?,
            };
            match out {
                Some(path) => {
                    qstore::fsio::replace_atomic_with(&path, |w| write(&frame, format, w))
                        .with_context(|| format!("writing {}", path.display()))?
                }
                None => {
                    let mut w =
                        std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
                    write(&frame, format, &mut w)?;
                    w.flush()?;
                }
            }
            Ok(())
        }
    }
}

fn write(frame: &Frame, format: Format, out: &mut impl Write) -> std::io::Result<()> {
    match format {
        Format::Csv => frame.write_csv(out).map_err(std::io::Error::other),
        Format::Json => frame.write_json_lines(out),
        Format::Stats => frame.write_stats(out),
    }
}
