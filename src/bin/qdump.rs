//! `qdump`: build and inspect qstore stores.
//!
//! Exit codes: 0 success; 1 the command failed (bad input, I/O, corrupt data; nothing was changed);
//! 2 bad command-line usage.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use qstore::{Freq, Store, format_timestamp, import, parse_timestamp};

#[derive(Parser)]
#[command(
    name = "qdump",
    version,
    about = "Build and inspect qlib-compatible qstore stores"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Import K-lines into a new store, switched in atomically at the end.
    All {
        /// A directory of per-symbol CSV files (file stem = symbol), or one such file.
        #[arg(long)]
        csv: PathBuf,
        /// The store directory to create (or replace, with --overwrite).
        #[arg(long)]
        to: PathBuf,
        /// Bar frequency: day, 1min, 5min, week, month.
        #[arg(long, default_value = "day")]
        freq: Freq,
        /// Name of the instruments file written (instruments/<market>.txt).
        #[arg(long, default_value = "all")]
        market: String,
        /// Name of the date column in the input.
        #[arg(long, default_value = "date")]
        date_column: String,
        /// Replace an existing store at --to.
        #[arg(long)]
        overwrite: bool,
    },
    /// Print values of a store as tab-separated text: date, instrument, then one column per field.
    Show {
        /// The store directory.
        store: PathBuf,
        /// Comma-separated instruments, or `all` for every instrument of --market.
        #[arg(long, default_value = "all")]
        instruments: String,
        /// Comma-separated fields.
        #[arg(long, default_value = "open,high,low,close,volume")]
        fields: String,
        /// First date (YYYY-MM-DD), inclusive.
        #[arg(long)]
        start: Option<String>,
        /// Last date (YYYY-MM-DD), inclusive.
        #[arg(long)]
        end: Option<String>,
        #[arg(long, default_value = "day")]
        freq: Freq,
        #[arg(long, default_value = "all")]
        market: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (`qdump show ... | head`) is not a failure.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("qdump: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::All {
            csv,
            to,
            freq,
            market,
            date_column,
            overwrite,
        } => {
            let t0 = Instant::now();
            let set = import::read_csv(&csv, &date_column)
                .with_context(|| format!("reading CSV input {}", csv.display()))?;
            let summary = import::publish_new_store(&to, overwrite, |store| {
                import::write_store(store, &set, freq, &market)
            })
            .with_context(|| format!("writing the store {}", to.display()))?;
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "qdump all: {} symbols, {} rows, {} fields, {} files, calendar of {} {freq} bars -> {} in {secs:.2} s ({:.0} rows/s)",
                summary.symbols,
                summary.rows,
                set.fields.len(),
                summary.files,
                summary.calendar_len,
                to.display(),
                summary.rows as f64 / secs.max(1e-9),
            );
            Ok(())
        }
        Command::Show {
            store,
            instruments,
            fields,
            start,
            end,
            freq,
            market,
        } => {
            let store = Store::open(&store)?;
            let date = |s: Option<String>, what: &str| -> Result<_> {
                s.map(|s| parse_timestamp(&s).with_context(|| format!("--{what}")))
                    .transpose()
            };
            let (start, end) = (date(start, "start")?, date(end, "end")?);
            let calendar = store.calendar(freq)?;
            let instruments: Vec<String> = if instruments == "all" {
                store
                    .instruments(&market)?
                    .symbols()
                    .map(str::to_owned)
                    .collect()
            } else {
                instruments
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .collect()
            };
            let fields: Vec<String> = fields.split(',').map(|s| s.trim().to_owned()).collect();
            if instruments.is_empty() || fields.iter().any(String::is_empty) {
                bail!(
                    "--instruments and --fields must name at least one item each, without empty entries"
                );
            }
            let range = calendar.locate(start, end);
            let panel = store.panel(&instruments, &fields, freq, range)?;
            let (t_len, n, m) = panel.shape();
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            writeln!(out, "date\tinstrument\t{}", fields.join("\t"))?;
            for (i, instrument) in instruments.iter().enumerate().take(n) {
                for t in 0..t_len {
                    let row: Vec<f32> = (0..m).map(|f| panel.get(t, i, f)).collect();
                    if row.iter().all(|v| v.is_nan()) {
                        continue;
                    }
                    let date = calendar
                        .get(panel.start() + t)
                        .expect("panel is within the calendar");
                    write!(
                        out,
                        "{}\t{}",
                        format_timestamp(date, freq.date_only()),
                        instrument
                    )?;
                    for v in row {
                        write!(out, "\t{v}")?;
                    }
                    writeln!(out)?;
                }
            }
            out.flush()?;
            Ok(())
        }
    }
}
