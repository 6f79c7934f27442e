//! `SourceSpec`: a source described by its settings (a MySQL table or CSV files, and the column mapping), as
//! `qdump all|update` flags, the loader and the Python package give it. Opening a source from settings is
//! decided here once.

use std::path::PathBuf;
use std::sync::Arc;

use super::csv::CsvSource;
use super::files::FileOptions;
use super::mysql::{Connection, MysqlOptions, MysqlSource};
use super::{Source, source_spellings};
use crate::error::Result;
use crate::store::calendar::Timestamp;

/// Opens a source for rows from `start` on (`None`: all rows) of `symbols` (`None`: all symbols): what the
/// loader refreshes and backfills from.
pub type SourceFactory =
    dyn Fn(Option<Timestamp>, Option<Vec<String>>) -> Result<Box<dyn Source>> + Send + Sync;

/// Where the rows are.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A MySQL (MariaDB) server: `mysql://user[:password]@host[:port]/database`, and a password given apart.
    Mysql {
        url: String,
        password: Option<String>,
    },
    /// A directory of per-symbol CSV files (file stem = symbol), or one CSV file.
    Csv(PathBuf),
    /// Parquet files: one per symbol (file stem = symbol), or files with a symbol column (one, or a
    /// directory of them).
    Parquet(PathBuf),
}

/// A source and its column mapping; `None` fields take each source's default.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub origin: Origin,
    /// The K-line table (MySQL).
    pub table: String,
    pub symbol_column: String,
    /// Default: `trade_date` for MySQL, `date` for files.
    pub date_column: Option<String>,
    /// How text dates are written (`--date-format`); typed dates need none.
    pub date_format: super::DateFormat,
    /// Default: every numeric column but the symbol, the date, auto-increment ids and identifiers.
    pub fields: Option<Vec<String>>,
    /// Columns to leave out of the default fields.
    pub exclude_fields: Option<Vec<String>>,
    /// Only these symbols, in either spelling (`600000.SH` or `SH600000`).
    pub symbols: Option<Vec<String>>,
    /// Only the first N symbols.
    pub limit: Option<usize>,
    /// MySQL connections scanning in parallel.
    pub connections: usize,
    /// A MySQL table of trading days to take the calendar from, and its date column.
    pub calendar_table: Option<String>,
    pub calendar_column: Option<String>,
}

impl SourceSpec {
    /// A spec of `origin` with the defaults `qdump` has.
    pub fn new(origin: Origin) -> SourceSpec {
        let mysql = MysqlOptions::default();
        SourceSpec {
            origin,
            table: mysql.table,
            symbol_column: mysql.symbol_column,
            date_column: None,
            date_format: Default::default(),
            fields: None,
            exclude_fields: None,
            symbols: None,
            limit: None,
            connections: mysql.connections,
            calendar_table: None,
            calendar_column: None,
        }
    }

    /// The source of the rows dated from `start` to `end` (inclusive, either optional).
    pub fn open(
        &self,
        start: Option<Timestamp>,
        end: Option<Timestamp>,
    ) -> Result<Box<dyn Source>> {
        self.open_for(start, end, self.symbols.clone(), false)
    }

    /// `every_spelling`: ask a MySQL table for each symbol in every spelling (a loader's request names the
    /// store's spelling, the table has its own); otherwise symbols are as the caller spelled them, so that
    /// the ones the table lacks can be reported.
    fn open_for(
        &self,
        start: Option<Timestamp>,
        end: Option<Timestamp>,
        symbols: Option<Vec<String>>,
        every_spelling: bool,
    ) -> Result<Box<dyn Source>> {
        Ok(match &self.origin {
            Origin::Mysql { url, password } => {
                let conn = Connection::parse(url, password.clone())?;
                let opts = MysqlOptions {
                    table: self.table.clone(),
                    symbol_column: self.symbol_column.clone(),
                    date_column: self
                        .date_column
                        .clone()
                        .unwrap_or_else(|| "trade_date".into()),
                    fields: self.fields.clone(),
                    exclude_fields: self.exclude_fields.clone(),
                    symbols: match symbols {
                        Some(s) if every_spelling => {
                            Some(s.iter().flat_map(|x| source_spellings(x)).collect())
                        }
                        other => other,
                    },
                    start,
                    end,
                    limit: self.limit,
                    connections: self.connections,
                    calendar_table: self.calendar_table.clone(),
                    calendar_column: self.calendar_column.clone(),
                    date_format: self.date_format.clone(),
                    ..Default::default()
                };
                Box::new(MysqlSource::open(conn, opts)?)
            }
            Origin::Csv(path) => Box::new(CsvSource::open(
                path,
                self.file_options(symbols, start, end),
            )?),
            #[cfg(feature = "parquet")]
            Origin::Parquet(path) => Box::new(super::ParquetSource::open(
                path,
                self.file_options(symbols, start, end),
            )?),
            #[cfg(not(feature = "parquet"))]
            Origin::Parquet(path) => {
                return Err(crate::Error::Source {
                    source_name: path.display().to_string(),
                    reason: "this build of qstore has no Parquet support (the `parquet` cargo feature); \
                             rebuild with default features, or export CSV"
                        .into(),
                });
            }
        })
    }

    fn file_options(
        &self,
        symbols: Option<Vec<String>>,
        start: Option<Timestamp>,
        end: Option<Timestamp>,
    ) -> FileOptions {
        FileOptions {
            date_column: self.date_column.clone().unwrap_or_else(|| "date".into()),
            date_format: self.date_format.clone(),
            symbol_column: self.symbol_column.clone(),
            fields: self.fields.clone(),
            exclude_fields: self.exclude_fields.clone(),
            symbols,
            start,
            end,
            limit: self.limit,
        }
    }

    /// The loader's source: rows from a start date, of the symbols a request names (else the spec's).
    pub fn factory(self) -> Arc<SourceFactory> {
        Arc::new(move |start, symbols| {
            let every_spelling = symbols.is_some();
            self.open_for(
                start,
                None,
                symbols.or_else(|| self.symbols.clone()),
                every_spelling,
            )
        })
    }
}
