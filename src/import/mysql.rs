//! The MySQL/MariaDB source.
//!
//! The rows are read once, with the binary protocol (`exec_iter`): rows arrive one packet at a time. A whole
//! table is scanned in its own order on one connection and grouped by symbol here (`group`); a selection of
//! symbols streams `ORDER BY symbol, date` over several connections, each on a disjoint, contiguous range of
//! the sorted symbol list, holding one symbol per connection. The calendar is learned from the rows (or read
//! from a trading-day table). `qdump update` needs the new rows' dates before it writes: the new rows of a
//! whole table are read once, learning the symbols and dates and holding the rows until the read ends
//! (`MysqlSource::learns_symbols`), through an index that leads with (symbol, date) when the table has one and
//! none on the date (`NewRows`); a selection of symbols asks for the distinct dates first.
//! Table and column names are checked against `information_schema` and quoted; symbols and dates are always
//! bound parameters. No raw SQL comes from flags. The password never appears in messages.

use std::collections::{BTreeSet, HashMap};

use chrono::{NaiveDate, NaiveTime};
use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, Value};
use parking_lot::Mutex;

use super::group::Grouper;
use super::{Failure, Source, SymbolRows};
use crate::error::{Error, Result};
use crate::store::calendar::Timestamp;

/// What to import from which table.
#[derive(Debug, Clone)]
pub struct MysqlOptions {
    pub table: String,
    pub symbol_column: String,
    pub date_column: String,
    /// Only these columns (default: every numeric column but the symbol, the date, auto-increment ids and
    /// columns named as identifiers).
    pub fields: Option<Vec<String>>,
    /// Columns not to import when `fields` is not given.
    pub exclude_fields: Option<Vec<String>>,
    /// Only these symbols, spelled as in the table.
    pub symbols: Option<Vec<String>>,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    /// Only the first N symbols in the server's order.
    pub limit: Option<usize>,
    /// Connections streaming in parallel (each over its own symbol range) when `symbols` or `limit` selects
    /// symbols; a whole table is one scan.
    pub connections: usize,
    /// A table of trading days to take the calendar from, instead of the distinct dates of the rows.
    pub calendar_table: Option<String>,
    /// The date column of `calendar_table` (default: the same name as the date column).
    pub calendar_column: Option<String>,
    /// Rows held in memory while a whole-table scan waits for symbols to complete, in bytes; past it they go to a
    /// spill file (see `group`).
    pub hold_bytes: usize,
    /// How a text (CHAR/VARCHAR) date column writes its dates; DATE and DATETIME columns need none.
    pub date_format: super::DateFormat,
}

impl Default for MysqlOptions {
    fn default() -> Self {
        MysqlOptions {
            table: "stock_kline_data".into(),
            symbol_column: "symbol".into(),
            date_column: "trade_date".into(),
            fields: None,
            exclude_fields: None,
            symbols: None,
            start: None,
            end: None,
            limit: None,
            connections: 2,
            calendar_table: None,
            calendar_column: None,
            hold_bytes: 128 << 20,
            date_format: Default::default(),
        }
    }
}

/// Connection settings parsed from a `mysql://user[:password]@host[:port]/db` URL.
#[derive(Clone)]
pub struct Connection {
    opts: Opts,
    /// The URL without its password, for messages.
    display: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl Connection {
    /// Parses the URL; `password` (from the environment or a prompt) replaces a password missing from it.
    ///
    /// Errors never repeat the URL, which may hold a password.
    pub fn parse(url: &str, password: Option<String>) -> Result<Connection> {
        let bad = |reason: &str| Error::Source {
            source_name: "--mysql".into(),
            reason: format!("{reason}; expected mysql://user[:password]@host[:port]/database"),
        };
        let opts = Opts::from_url(url).map_err(|_| bad("not a valid MySQL URL"))?;
        if opts.get_db_name().is_none_or(str::is_empty) {
            return Err(bad("the URL names no database"));
        }
        let opts: Opts = match (opts.get_pass(), password) {
            (None, Some(p)) => OptsBuilder::from_opts(opts).pass(Some(p)).into(),
            _ => opts,
        };
        let display = format!(
            "mysql://{}@{}:{}/{}",
            opts.get_user().unwrap_or(""),
            opts.get_ip_or_hostname(),
            opts.get_tcp_port(),
            opts.get_db_name().unwrap_or("")
        );
        Ok(Connection { opts, display })
    }

    fn connect(&self) -> Result<Conn> {
        Conn::new(self.opts.clone()).map_err(|e| self.err(format!("cannot connect: {e}")))
    }

    fn err(&self, reason: String) -> Error {
        Error::Source {
            source_name: self.display.clone(),
            reason,
        }
    }

    pub fn display(&self) -> &str {
        &self.display
    }
}

/// A table or column name we are willing to quote into SQL.
fn identifier(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Source {
            source_name: format!("--{kind}"),
            reason: format!(
                "{name:?} is not a plain identifier (letters, digits and _, at most 64 characters)"
            ),
        })
    }
}

const NUMERIC: [&str; 9] = [
    "tinyint",
    "smallint",
    "mediumint",
    "int",
    "integer",
    "bigint",
    "decimal",
    "float",
    "double",
];

/// Symbols per `IN` list when an update reads a table symbol by symbol through its key: under the 1,000 items
/// past which MariaDB turns the list into a join that reads each symbol whole.
const IN_LIST: usize = 500;

/// K-lines from one MySQL table.
pub struct MysqlSource {
    conn: Connection,
    table: String,
    symbol_column: String,
    date_column: String,
    /// Column names as in the table, and the field names (lower-case) they become.
    columns: Vec<String>,
    /// Whether each column is DECIMAL.
    decimal: Vec<bool>,
    fields: Vec<String>,
    /// The symbols to import, in the server's order.
    symbols: Vec<String>,
    /// An auto-increment column, which orders rows of one symbol and date by insertion for --on-duplicate.
    row_id: Option<String>,
    /// Whether `row_id` is the primary key, so that a whole-table scan can be split into key ranges.
    row_id_is_key: bool,
    /// Whether `symbols` is a subset (so queries must name them) rather than the whole table.
    restricted: bool,
    start: Option<Timestamp>,
    end: Option<Timestamp>,
    connections: usize,
    /// (table, column) of a trading-day table, when the calendar comes from one.
    calendar: Option<(String, String)>,
    hold_bytes: usize,
    /// `--symbols` as given.
    requested: Option<Vec<String>>,
    /// Rows of a whole-table scan whose symbol is NULL (counted by the per-symbol count query).
    null_symbol_rows: std::sync::atomic::AtomicU64,
    /// Numeric columns left out of the default fields (identifiers).
    columns_left_out: Vec<super::LeftOutColumn>,
    /// How an update finds the new rows of a whole table (from its indexes).
    new_rows: NewRows,
    /// Whether the symbol column may be NULL.
    symbol_nullable: bool,
    date_format: super::DateFormat,
    /// Whether the date column is text, so that `date_format` reads it and a range of it is selected by
    /// comparing text (only when the format sorts as text; else rows are kept by date here).
    date_is_text: bool,
}

/// How an update's new rows of a whole table are read, decided from the table's indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NewRows {
    /// One scan of the whole table (no index helps), or of an index that leads with the date column (the
    /// server's range of it).
    Scan,
    /// An index leads with (symbol, date), as the common `PRIMARY KEY (symbol, trade_date)`: the symbols come
    /// from the index (one seek each), then each symbol's range of it from the start date, so an update reads
    /// the pages of the new rows and not the whole table, however long its history.
    BySymbolDate,
}

impl MysqlSource {
    /// Checks the table and columns and lists the symbols; nothing is read or written beyond that.
    pub fn open(conn: Connection, o: MysqlOptions) -> Result<MysqlSource> {
        identifier("table", &o.table)?;
        identifier("symbol-column", &o.symbol_column)?;
        identifier("date-column", &o.date_column)?;
        let calendar = match &o.calendar_table {
            Some(t) => {
                identifier("calendar-table", t)?;
                let col = o
                    .calendar_column
                    .clone()
                    .unwrap_or_else(|| o.date_column.clone());
                identifier("calendar-column", &col)?;
                Some((t.clone(), col))
            }
            None => None,
        };
        let mut c = conn.connect()?;
        let db = conn.opts.get_db_name().unwrap_or("").to_owned();
        let cols: Vec<(String, String, String, String, String)> = c
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, EXTRA, COLUMN_KEY, IS_NULLABLE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (&db, &o.table),
            )
            .map_err(|e| conn.err(e.to_string()))?;
        if cols.is_empty() {
            let tables: Vec<String> = c
                .exec(
                    "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY 1 LIMIT 20",
                    (&db,),
                )
                .map_err(|e| conn.err(e.to_string()))?;
            return Err(conn.err(format!(
                "table {:?} not found in database {db:?} (tables: {}); name it with --table",
                o.table,
                if tables.is_empty() {
                    "none".into()
                } else {
                    tables.join(", ")
                }
            )));
        }
        let find = |name: &str| cols.iter().find(|c| c.0.eq_ignore_ascii_case(name));
        let names = || {
            cols.iter()
                .map(|c| c.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let symbol_column = find(&o.symbol_column)
            .ok_or_else(|| {
                conn.err(format!(
                    "no column {:?} in {} (columns: {}); name it with --symbol-column",
                    o.symbol_column,
                    o.table,
                    names()
                ))
            })?
            .0
            .clone();
        let date = find(&o.date_column).ok_or_else(|| {
            conn.err(format!(
                "no column {:?} in {} (columns: {}); name it with --date-column",
                o.date_column,
                o.table,
                names()
            ))
        })?;
        if !["date", "datetime", "timestamp", "char", "varchar"]
            .contains(&date.1.to_lowercase().as_str())
        {
            return Err(conn.err(format!(
                "date column {:?} has type {}; expected DATE, DATETIME or text",
                date.0, date.1
            )));
        }
        let date_column = date.0.clone();
        let mut columns_left_out = Vec::new();
        let columns: Vec<String> = match &o.fields {
            Some(list) => {
                let mut out = Vec::new();
                for f in list {
                    identifier("fields", f)?;
                    let c = find(f).ok_or_else(|| {
                        conn.err(format!(
                            "no column {f:?} in {} (columns: {})",
                            o.table,
                            names()
                        ))
                    })?;
                    if !NUMERIC.contains(&c.1.to_lowercase().as_str()) {
                        return Err(conn.err(format!(
                            "column {:?} has type {}, which is not numeric; leave it out of --fields",
                            c.0, c.1
                        )));
                    }
                    out.push(c.0.clone());
                }
                out
            }
            None => {
                let numeric = cols
                    .iter()
                    .filter(|c| {
                        NUMERIC.contains(&c.1.to_lowercase().as_str())
                            && !c.2.to_lowercase().contains("auto_increment")
                            && c.0 != symbol_column
                            && c.0 != date_column
                    })
                    .map(|c| c.0.clone())
                    .collect();
                let (kept, left) = super::default_fields(numeric, o.exclude_fields.as_deref())
                    .map_err(|reason| conn.err(reason))?;
                columns_left_out = left;
                kept
            }
        };
        if columns.is_empty() {
            return Err(conn.err(format!(
                "no numeric field columns in {} (columns: {})",
                o.table,
                names()
            )));
        }
        let fields: Vec<String> = columns.iter().map(|c| c.to_lowercase()).collect();
        let decimal: Vec<bool> = columns
            .iter()
            .map(|c| find(c).is_some_and(|d| d.1.eq_ignore_ascii_case("decimal")))
            .collect();
        for f in &fields {
            crate::store::layout::validate_name(crate::error::NameKind::Field, f)?;
        }

        let mut src = MysqlSource {
            conn,
            table: o.table,
            symbol_column,
            date_column,
            columns,
            decimal,
            fields,
            symbols: Vec::new(),
            row_id: cols
                .iter()
                .find(|c| c.2.to_lowercase().contains("auto_increment"))
                .map(|c| c.0.clone()),
            // The only PRI column (a composite key lists several) and auto-increment: a range of it is a
            // range of the clustered index.
            row_id_is_key: cols.iter().filter(|c| c.3 == "PRI").count() == 1
                && cols
                    .iter()
                    .any(|c| c.3 == "PRI" && c.2.to_lowercase().contains("auto_increment")),
            restricted: o.symbols.is_some() || o.limit.is_some(),
            start: o.start,
            end: o.end,
            connections: o.connections.max(1),
            calendar,
            hold_bytes: o.hold_bytes,
            requested: o.symbols.clone(),
            null_symbol_rows: Default::default(),
            columns_left_out,
            new_rows: NewRows::Scan,
            symbol_nullable: false,
            date_format: o.date_format,
            date_is_text: ["char", "varchar"].contains(&date.1.to_lowercase().as_str()),
        };
        if src.learns_symbols() {
            src.new_rows = src.new_rows_plan(&mut c, &db)?;
            src.symbol_nullable = cols
                .iter()
                .any(|col| col.0 == src.symbol_column && col.4 != "NO");
        }
        src.symbols = match o.symbols {
            Some(list) => list
                .into_iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            None if src.learns_symbols() => Vec::new(),
            None => {
                let (cond, params) = src.date_filter(&src.date_column);
                let sql = format!(
                    "SELECT DISTINCT `{s}` FROM `{t}` WHERE `{s}` IS NOT NULL{cond} ORDER BY `{s}`",
                    s = src.symbol_column,
                    t = src.table
                );
                c.exec(sql, params)
                    .map_err(|e| src.conn.err(e.to_string()))?
            }
        };
        src.symbols.truncate(o.limit.unwrap_or(usize::MAX));
        Ok(src)
    }

    /// Whether `qdump update` reads this source's rows once, learning the symbols and dates from them
    /// ([`Source::stream_after_dates`]): rows from a start date of the whole table, with no trading-day
    /// table. Listing the symbols, the dates and each symbol's row count first cost three more scans of the
    /// table when its date column has no index (the common `PRIMARY KEY (symbol, trade_date)`).
    fn learns_symbols(&self) -> bool {
        !self.restricted && self.calendar.is_none() && self.start.is_some()
    }

    /// Reads the table's indexes: an index that leads with the date column is a range the server scans
    /// itself; else one that leads with (symbol, date) is read symbol by symbol.
    fn new_rows_plan(&self, c: &mut Conn, db: &str) -> Result<NewRows> {
        let keys: Vec<(String, u32, String)> = c
            .exec(
                "SELECT INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY INDEX_NAME, SEQ_IN_INDEX",
                (db, &self.table),
            )
            .map_err(|e| self.conn.err(e.to_string()))?;
        let column = |index: &str, seq: u32| {
            keys.iter()
                .find(|k| k.0 == index && k.1 == seq)
                .map(|k| k.2.as_str())
        };
        let leads = |first: &str, second: Option<&str>| {
            keys.iter().any(|k| {
                k.1 == 1
                    && k.2.eq_ignore_ascii_case(first)
                    && second.is_none_or(|c2| {
                        column(&k.0, 2).is_some_and(|x| x.eq_ignore_ascii_case(c2))
                    })
            })
        };
        Ok(
            if !leads(&self.date_column, None)
                && leads(&self.symbol_column, Some(&self.date_column))
            {
                NewRows::BySymbolDate
            } else {
                NewRows::Scan
            },
        )
    }

    /// ` AND <column> >= ? AND <column> <= ?` for the range, with its parameters. Nothing for a text date
    /// column whose format does not sort as text (`%d/%m/%Y`): its rows are kept by date as they are read
    /// ([`MysqlSource::in_range`], which every row passes anyway).
    fn date_filter(&self, column: &str) -> (String, Vec<Value>) {
        let mut cond = String::new();
        let mut params = Vec::new();
        let text = column == self.date_column && self.date_is_text;
        if text && !self.date_format.sorts_as_text() {
            return (cond, params);
        }
        // A date-only format writes the start's day, which may select a day before it: `in_range` drops it.
        let ts = |t: Timestamp| {
            Value::from(if text {
                self.date_format.format(t)
            } else {
                t.format("%Y-%m-%d %H:%M:%S").to_string()
            })
        };
        if let Some(s) = self.start {
            cond.push_str(&format!(" AND `{column}` >= ?"));
            params.push(ts(s));
        }
        if let Some(e) = self.end {
            cond.push_str(&format!(" AND `{column}` <= ?"));
            params.push(ts(e));
        }
        (cond, params)
    }

    /// Pass 1 on its own connection: the trading-day table's dates, or the distinct dates of the rows of
    /// `symbols` (all rows when the selection is not restricted).
    fn query_dates(&self, symbols: &[String]) -> Result<Vec<Timestamp>> {
        let mut c = self.conn.connect()?;
        let mut queries: Vec<(String, Vec<Value>)> = Vec::new();
        if let Some((table, column)) = &self.calendar {
            let (cond, params) = self.date_filter(column);
            queries.push((
                format!(
                    "SELECT DISTINCT `{column}` FROM `{table}` WHERE `{column}` IS NOT NULL{cond}"
                ),
                params,
            ));
        } else {
            let (cond, dparams) = self.date_filter(&self.date_column);
            let runs: Vec<&[String]> = if self.restricted {
                symbols.chunks(2000).collect()
            } else {
                vec![&[]]
            };
            for run in runs {
                let (where_sym, mut params) = if self.restricted {
                    self.symbol_filter(run)
                } else {
                    ("1=1".to_string(), Vec::new())
                };
                params.extend(dparams.iter().cloned());
                queries.push((
                    format!(
                        "SELECT DISTINCT `{d}` FROM `{t}` WHERE {where_sym}{cond}",
                        d = self.date_column,
                        t = self.table
                    ),
                    params,
                ));
            }
        }
        let mut out = Vec::new();
        for (sql, params) in queries {
            let result = c
                .exec_iter(sql, params)
                .map_err(|e| self.conn.err(e.to_string()))?;
            for row in result {
                let row = row.map_err(|e| self.conn.err(format!("reading dates: {e}")))?;
                let v = row.unwrap().into_iter().next().unwrap_or(Value::NULL);
                // A row whose date does not parse fails its symbol in pass 2; it adds nothing here.
                if let Ok(t) = to_timestamp(&v, &self.date_format)
                    && self.in_range(t)
                {
                    out.push(t);
                }
            }
        }
        Ok(out)
    }

    /// `WHERE` clause and parameters selecting `symbols` (a contiguous run of the sorted list).
    fn symbol_filter(&self, symbols: &[String]) -> (String, Vec<Value>) {
        let s = &self.symbol_column;
        if self.restricted {
            let marks = vec!["?"; symbols.len()].join(",");
            (
                format!("`{s}` IN ({marks})"),
                symbols.iter().map(|x| Value::from(x.as_str())).collect(),
            )
        } else {
            (
                format!("`{s}` BETWEEN ? AND ?"),
                vec![
                    Value::from(symbols[0].as_str()),
                    Value::from(symbols[symbols.len() - 1].as_str()),
                ],
            )
        }
    }

    /// A row's date, or why it has none.
    fn row_date(&self, v: &Value) -> std::result::Result<Timestamp, String> {
        to_timestamp(v, &self.date_format).map_err(|why| {
            format!(
                "a row has date {} in column {}: {why}",
                show(v),
                self.date_column
            )
        })
    }

    /// Whether a row's date is in the range asked for (the server selected it already, except on a text
    /// column whose format does not sort as text).
    fn in_range(&self, d: Timestamp) -> bool {
        self.start.is_none_or(|s| d >= s) && self.end.is_none_or(|e| d <= e)
    }

    /// The auto-increment column as ", <name>" for a select list or an ORDER BY; empty without one.
    fn row_id_column(&self) -> String {
        self.row_id
            .as_ref()
            .map(|id| format!(", `{id}`"))
            .unwrap_or_default()
    }

    /// The field columns to select, comma-separated.
    fn select_fields(&self) -> String {
        // DECIMAL arrives as text even in the binary protocol; as DOUBLE it is 8 bytes to copy instead of a string
        // to allocate and parse. The server's DECIMAL -> DOUBLE conversion is correctly rounded, so the f32 stored
        // is the one parsing the same digits gives (the CSV and MySQL imports stay byte-identical; tested).
        self.columns
            .iter()
            .zip(&self.decimal)
            .map(|(f, &dec)| {
                if dec {
                    format!("CAST(`{f}` AS DOUBLE)")
                } else {
                    format!("`{f}`")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Streams the whole table in its own order: the scan that costs the server least (the same work as
    /// exporting the table), with the rows grouped by symbol here ([`Grouper`]). When the table's primary key
    /// is its auto-increment id, `connections` scans read disjoint ranges of it at once, so the server scans
    /// on several cores. Another connection counts each symbol's rows meanwhile, so a symbol is handed on the
    /// moment its last row arrives and its files are written on another thread while the scans go on. Every
    /// connection opens a consistent snapshot, one right after the other; a commit in between that adds rows
    /// to a symbol already handed on fails the import (nothing is published) rather than import it twice.
    ///
    /// With `learn` (an update's new rows, [`MysqlSource::learns_symbols`]) there is no count query: every
    /// symbol is held (spilled past `hold_bytes`) until the scan ends, `learn` gets the distinct dates of the
    /// rows, and only then are the symbols handed on: the table is read once.
    fn stream_table(
        &self,
        mut learn: Option<&mut dyn FnMut(Vec<Timestamp>) -> Result<()>>,
        sink: &(dyn Fn(std::result::Result<SymbolRows, Failure>) + Sync),
    ) -> Result<()> {
        let err = |e: mysql::Error| self.conn.err(e.to_string());
        let snapshot = |c: &mut Conn| -> Result<()> {
            c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .map_err(err)?;
            c.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                .map_err(err)
        };
        let (s, d, t) = (&self.symbol_column, &self.date_column, &self.table);
        let mut count = self.conn.connect()?;
        let by_symbol = learn.is_some() && self.new_rows == NewRows::BySymbolDate;
        // Key ranges split at even steps of the id: the first and last are open, so every row is in one.
        let mut cuts: Vec<i64> = Vec::new();
        if let (true, Some(id)) = (
            self.row_id_is_key && self.connections > 1 && !by_symbol,
            &self.row_id,
        ) {
            let span: Option<(Option<i64>, Option<i64>)> = count
                .query_first(format!("SELECT MIN(`{id}`), MAX(`{id}`) FROM `{t}`"))
                .map_err(err)?;
            if let Some((Some(lo), Some(hi))) = span {
                let k = self.connections as i128;
                cuts = (1..k)
                    .map(|j| (lo as i128 + (hi as i128 - lo as i128) * j / k) as i64)
                    .collect();
                cuts.dedup();
            }
        }
        let (cond, params) = self.date_filter(&self.date_column);
        // NULL symbols are counted too (their group), to report them: they cannot be imported.
        let count_sql = format!("SELECT `{s}`, COUNT(*) FROM `{t}` WHERE 1=1{cond} GROUP BY `{s}`");
        let id = self.row_id_column();
        let fields = self.select_fields();
        // The queries each scanning connection runs, one after the other.
        let plan: Vec<Vec<(String, Vec<Value>)>> = if by_symbol {
            // The symbols from the index (a loose index scan: one seek per symbol), then each symbol's range
            // of it from the start date: the pages of the new rows, however long the history.
            snapshot(&mut count)?;
            let symbols: Vec<Value> = count
                .query_iter(format!(
                    "SELECT DISTINCT `{s}` FROM `{t}` WHERE `{s}` IS NOT NULL"
                ))
                .map_err(err)?
                .map(|row| row.map(|r| r.unwrap().into_iter().next().unwrap_or(Value::NULL)))
                .collect::<std::result::Result<_, _>>()
                .map_err(err)?;
            if self.symbol_nullable {
                // A range of the same index: NULL symbols of the new rows are counted, to be reported.
                let nulls: Option<u64> = count
                    .exec_first(
                        format!("SELECT COUNT(*) FROM `{t}` WHERE `{s}` IS NULL{cond}"),
                        params.clone(),
                    )
                    .map_err(err)?;
                self.null_symbol_rows
                    .store(nulls.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
            }
            let statements = symbols.len().div_ceil(IN_LIST);
            let mut plan = vec![Vec::new(); self.connections.min(statements).max(1)];
            tracing::info!(
                "reading the new rows of `{t}` through its ({s}, {d}) key: {} symbols, {} statements on {} \
                 connections",
                symbols.len(),
                statements,
                plan.len()
            );
            let k = plan.len();
            for (j, chunk) in symbols.chunks(IN_LIST).enumerate() {
                let marks = vec!["?"; chunk.len()].join(",");
                let mut p = chunk.to_vec();
                p.extend(params.iter().cloned());
                plan[j % k].push((
                    format!(
                        "SELECT `{s}`, `{d}`{id}, {fields} FROM `{t}` WHERE `{s}` IN ({marks}){cond}"
                    ),
                    p,
                ));
            }
            plan
        } else {
            // Counted scans leave NULL symbols to the count query; a learning scan counts them as they come.
            let not_null = match learn {
                Some(_) => "1=1".to_string(),
                None => format!("`{s}` IS NOT NULL"),
            };
            let select =
                format!("SELECT `{s}`, `{d}`{id}, {fields} FROM `{t}` WHERE {not_null}{cond}");
            tracing::info!(
                "reading `{t}` in {} scan(s){}{}",
                cuts.len() + 1,
                if cuts.is_empty() {
                    ""
                } else {
                    " over ranges of its id"
                },
                if learn.is_some() {
                    ", learning the symbols and days from the rows"
                } else {
                    ", counting each symbol's rows beside it"
                }
            );
            (0..=cuts.len())
                .map(|j| {
                    let key = self.row_id.as_deref().unwrap_or_default();
                    let mut p = params.clone();
                    let mut sql = select.clone();
                    if j > 0 {
                        sql.push_str(&format!(" AND `{key}` > ?"));
                        p.push(Value::from(cuts[j - 1]));
                    }
                    if j < cuts.len() {
                        sql.push_str(&format!(" AND `{key}` <= ?"));
                        p.push(Value::from(cuts[j]));
                    }
                    vec![(sql, p)]
                })
                .collect()
        };
        let mut scans = (0..plan.len())
            .map(|_| self.conn.connect())
            .collect::<Result<Vec<Conn>>>()?;
        for c in &mut scans {
            snapshot(c)?;
        }
        if learn.is_none() {
            snapshot(&mut count)?;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let rx = Mutex::new(rx);
        let (counts_tx, counts_rx) = std::sync::mpsc::channel();
        let origin = |sym: &str| format!("{t}.{s} = {sym:?}");
        let emit = |item| {
            // The writer only stops early by panicking, which the join below reports.
            let _ = tx.send(Some(item));
        };
        let learning = learn.is_some();
        let groups = Mutex::new(Shared {
            groups: Grouper::new(
                self.columns.len(),
                self.row_id.is_some(),
                self.hold_bytes,
                &origin,
                &emit,
            ),
            counts: (!learning).then_some(counts_rx),
            dates: learning.then(BTreeSet::new),
        });
        std::thread::scope(|scope| {
            // Writers on every core: a symbol's files are written while the scan goes on, and a learning scan
            // hands every symbol on at its end, when only writing is left. A `None` ends one writer (the sender
            // stays borrowed by `emit` until the scope ends).
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let writers: Vec<_> = (0..cores.min(4))
                .map(|_| {
                    let rx = &rx;
                    scope.spawn(move || {
                        loop {
                            // The lock is released before the symbol is written.
                            let next = rx.lock().recv();
                            match next {
                                Ok(Some(item)) => sink(item),
                                _ => break,
                            }
                        }
                    })
                })
                .collect();
            scope.spawn(move || {
                if learning {
                    return;
                }
                let counts: Result<HashMap<Vec<u8>, u64>> = count
                    .exec_iter(count_sql, params)
                    .and_then(|rows| {
                        let mut out = HashMap::new();
                        for row in rows {
                            match mysql::from_row_opt::<(Option<Vec<u8>>, u64)>(row?)? {
                                (Some(sym), n) => {
                                    out.insert(sym, n);
                                }
                                (None, n) => self
                                    .null_symbol_rows
                                    .store(n, std::sync::atomic::Ordering::Relaxed),
                            }
                        }
                        Ok(out)
                    })
                    .map_err(err);
                let _ = counts_tx.send(counts);
            });
            let scanned = scans
                .into_iter()
                .zip(plan)
                .map(|(c, queries)| {
                    let groups = &groups;
                    scope.spawn(move || self.scan_range(c, queries, groups))
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().expect("a scanning thread panicked"))
                .collect::<Result<Vec<()>>>()
                .and_then(|_| {
                    let mut g = groups.lock();
                    let shared = &mut *g;
                    if let Some(rx) = shared.counts.take() {
                        // The counts still matter: a failed count query fails the import.
                        shared
                            .groups
                            .counts(rx.recv().expect("the counting thread sends once")?)?;
                    }
                    if let (Some(learn), Some(dates)) = (learn.as_mut(), shared.dates.take()) {
                        learn(dates.into_iter().collect())?;
                    }
                    shared.groups.end()
                });
            for _ in &writers {
                let _ = tx.send(None);
            }
            for w in writers {
                w.join().expect("a writing thread panicked");
            }
            scanned
        })?;
        Ok(())
    }

    /// One connection's scans of [`stream_table`](Self::stream_table), query after query: rows are decoded on
    /// this thread and handed to the shared grouper in batches, so that the lock is taken once per batch.
    fn scan_range(
        &self,
        mut c: Conn,
        queries: Vec<(String, Vec<Value>)>,
        groups: &Mutex<Shared>,
    ) -> Result<()> {
        const BATCH: usize = 512;
        let mut batch = Batch::default();
        let flush = |batch: &mut Batch| -> Result<()> {
            let mut g = groups.lock();
            let shared = &mut *g;
            if let Some(Ok(c)) = shared.counts.as_ref().map(|rx| rx.try_recv()) {
                shared.counts = None;
                shared.groups.counts(c?)?;
            }
            let (groups, dates) = (&mut shared.groups, &mut shared.dates);
            let n = self.columns.len();
            for (k, sym) in batch.symbols.iter().enumerate() {
                let date = std::mem::replace(&mut batch.dates[k], Err(String::new()));
                if let (Some(dates), Ok(d)) = (dates.as_mut(), &date) {
                    dates.insert(*d);
                }
                let mut cells = batch.cells[k * n..(k + 1) * n].iter().cloned();
                groups.push(sym, date, batch.ids[k], &mut cells)?;
            }
            batch.symbols.clear();
            batch.dates.clear();
            batch.ids.clear();
            batch.cells.clear();
            Ok(())
        };
        for (sql, params) in queries {
            let result = c
                .exec_iter(sql, params)
                .map_err(|e| self.conn.err(e.to_string()))?;
            for row in result {
                let row = row.map_err(|e| self.conn.err(format!("reading rows: {e}")))?;
                let mut values = row.unwrap().into_iter();
                let Some(Value::Bytes(sym)) = values.next() else {
                    // Only a learning scan selects NULL symbols: they are counted, to be reported.
                    self.null_symbol_rows
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                };
                let date = self.row_date(&values.next().unwrap_or(Value::NULL));
                if date.as_ref().is_ok_and(|&d| !self.in_range(d)) {
                    continue;
                }
                let id = match self.row_id {
                    Some(_) => match values.next() {
                        Some(Value::Int(i)) => Some(i),
                        Some(Value::UInt(u)) => Some(u as i64),
                        _ => Some(i64::MAX),
                    },
                    None => None,
                };
                let day = date.as_ref().ok().copied();
                batch.cells.extend(
                    values
                        .zip(&self.columns)
                        .map(|(v, name)| cell(&v, name, day)),
                );
                batch.symbols.push(sym);
                batch.dates.push(date);
                batch.ids.push(id);
                if batch.symbols.len() == BATCH {
                    flush(&mut batch)?;
                }
            }
        }
        flush(&mut batch)?;
        c.query_drop("COMMIT")
            .map_err(|e| self.conn.err(e.to_string()))
    }

    /// Streams one contiguous run of symbols on its own connection.
    fn stream_run(
        &self,
        symbols: &[String],
        sink: &(dyn Fn(std::result::Result<SymbolRows, Failure>) + Sync),
    ) -> Result<()> {
        let mut c = self.conn.connect()?;
        let fields = self.select_fields();
        // Queries name at most this many symbols, so IN lists stay far below the 65,535-parameter limit.
        for part in symbols.chunks(if self.restricted { 2000 } else { usize::MAX }) {
            let (where_sym, mut params) = self.symbol_filter(part);
            let (cond, dparams) = self.date_filter(&self.date_column);
            params.extend(dparams);
            let tie = self.row_id_column();
            let sql = format!(
                "SELECT `{s}`, `{d}`, {fields} FROM `{t}` WHERE {where_sym}{cond} ORDER BY `{s}`, `{d}`{tie}",
                s = self.symbol_column,
                d = self.date_column,
                t = self.table
            );
            let mut current: Option<std::result::Result<SymbolRows, Failure>> = None;
            let result = c
                .exec_iter(sql, params)
                .map_err(|e| self.conn.err(e.to_string()))?;
            for row in result {
                let row = row.map_err(|e| self.conn.err(format!("reading rows: {e}")))?;
                let mut values = row.unwrap().into_iter();
                let raw = match values.next() {
                    Some(Value::Bytes(b)) => b,
                    _ => continue, // NULL symbols are not selected by the range or IN filters
                };
                // Rows come by symbol: the symbol's text is made once per symbol, not once per row.
                let same = match &current {
                    Some(Ok(r)) => r.raw_symbol.as_bytes() == raw.as_slice(),
                    Some(Err(f)) => f.symbol.as_bytes() == raw.as_slice(),
                    None => false,
                };
                if !same {
                    let sym = String::from_utf8_lossy(&raw).into_owned();
                    if let Some(done) = current.take() {
                        sink(done);
                    }
                    current = Some(Ok(SymbolRows {
                        origin: format!("{}.{} = {sym:?}", self.table, self.symbol_column),
                        raw_symbol: sym.clone(),
                        dates: Vec::new(),
                        columns: vec![Some(Vec::new()); self.columns.len()],
                    }));
                }
                let Some(Ok(rows)) = &mut current else {
                    continue;
                };
                let sym = &rows.raw_symbol;
                let fail = |reason: String| Failure {
                    symbol: sym.clone(),
                    reason,
                };
                let date = match self.row_date(&values.next().unwrap_or(Value::NULL)) {
                    Ok(d) if !self.in_range(d) => continue,
                    Ok(d) => d,
                    Err(reason) => {
                        current = Some(Err(fail(reason)));
                        continue;
                    }
                };
                rows.dates.push(date);
                let mut bad = None;
                for ((v, col), name) in values.zip(rows.columns.iter_mut()).zip(&self.columns) {
                    match cell(&v, name, Some(date)) {
                        Ok(x) => col.as_mut().expect("every column is present").push(x),
                        Err(reason) => bad = Some(reason),
                    }
                }
                if let Some(reason) = bad {
                    current = Some(Err(fail(reason)));
                }
            }
            if let Some(done) = current.take() {
                sink(done);
            }
        }
        Ok(())
    }
}

/// Rows per symbol (raw bytes), from the count query.
type Counts = HashMap<Vec<u8>, u64>;

/// What the scans of a whole table share.
struct Shared<'a> {
    groups: Grouper<'a>,
    /// The per-symbol counts until they arrive (a counted scan).
    counts: Option<std::sync::mpsc::Receiver<Result<Counts>>>,
    /// The distinct dates of the rows (a learning scan).
    dates: Option<BTreeSet<Timestamp>>,
}

/// Rows decoded by one scan, waiting for the grouper's lock.
#[derive(Default)]
struct Batch {
    symbols: Vec<Vec<u8>>,
    dates: Vec<std::result::Result<Timestamp, String>>,
    ids: Vec<Option<i64>>,
    /// `columns` cells per row.
    cells: Vec<std::result::Result<f32, String>>,
}

/// A field's cell as f32, or why it is not a number (naming the column and the row's date when it has one).
fn cell(v: &Value, column: &str, day: Option<Timestamp>) -> std::result::Result<f32, String> {
    to_f32(v).ok_or_else(|| match day {
        Some(day) => format!(
            "column {column} holds {} on {day}, which is not a number",
            show(v)
        ),
        None => format!("column {column} holds {}, which is not a number", show(v)),
    })
}

/// A SQL value as a message shows it: text quoted, others as SQL writes them (never the driver's debug form).
fn show(v: &Value) -> String {
    match v {
        Value::Bytes(b) => format!("{:?}", String::from_utf8_lossy(b)),
        other => other.as_sql(true),
    }
}

/// A numeric SQL value as f32 (NULL is NaN); `None` when it is not a number.
fn to_f32(v: &Value) -> Option<f32> {
    match v {
        Value::NULL => Some(f32::NAN),
        Value::Int(i) => Some(*i as f32),
        Value::UInt(u) => Some(*u as f32),
        Value::Float(f) => Some(*f),
        Value::Double(d) => Some(*d as f32),
        // DECIMAL arrives as text, even in the binary protocol; parsing it as f64 first rounds exactly as a
        // CSV cell with the same digits does.
        Value::Bytes(b) => std::str::from_utf8(b)
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .map(|d| d as f32),
        _ => None,
    }
}

/// A date cell as a moment (text through `format`), or why it is none.
fn to_timestamp(v: &Value, format: &super::DateFormat) -> std::result::Result<Timestamp, String> {
    match v {
        Value::Date(y, m, d, h, mi, s, _) => {
            NaiveDate::from_ymd_opt(i32::from(*y), u32::from(*m), u32::from(*d))
                .zip(NaiveTime::from_hms_opt(
                    u32::from(*h),
                    u32::from(*mi),
                    u32::from(*s),
                ))
                .map(|(d, t)| d.and_time(t))
                .ok_or_else(|| "not a valid date".to_string())
        }
        Value::Bytes(b) => format.parse(&String::from_utf8_lossy(b)),
        Value::NULL => Err("the date is NULL".into()),
        _ => Err("not a date".into()),
    }
}

impl Source for MysqlSource {
    fn fields(&self) -> &[String] {
        &self.fields
    }

    fn symbol_count(&self) -> Option<usize> {
        (!self.learns_symbols()).then_some(self.symbols.len())
    }

    fn dates(&self) -> Result<Vec<Timestamp>> {
        if self.symbols.is_empty() && !self.learns_symbols() {
            return Ok(Vec::new());
        }
        self.query_dates(&self.symbols)
    }

    fn trading_days(&self) -> Result<Option<Vec<Timestamp>>> {
        match &self.calendar {
            Some(_) => self.query_dates(&self.symbols).map(Some),
            None => Ok(None),
        }
    }

    fn stream(
        &self,
        sink: &(dyn Fn(std::result::Result<SymbolRows, Failure>) + Sync),
    ) -> Result<()> {
        if self.learns_symbols() {
            // The symbols were not listed: the whole-table scan finds them.
            return self.stream_table(None, sink);
        }
        if self.symbols.is_empty() {
            return Ok(());
        }
        if !self.restricted {
            return self.stream_table(None, sink);
        }
        let k = self.connections.min(self.symbols.len());
        let per = self.symbols.len().div_ceil(k);
        std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .symbols
                .chunks(per)
                .map(|run| scope.spawn(move || self.stream_run(run, sink)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a streaming thread panicked"))
                .collect::<Result<Vec<()>>>()
        })?;
        Ok(())
    }

    fn stream_after_dates(
        &self,
        dates: &mut dyn FnMut(Vec<Timestamp>) -> Result<()>,
        sink: &(dyn Fn(std::result::Result<SymbolRows, Failure>) + Sync),
    ) -> Result<()> {
        if self.learns_symbols() {
            return self.stream_table(Some(dates), sink);
        }
        dates(self.dates()?)?;
        self.stream(sink)
    }

    fn requested(&self) -> Option<&[String]> {
        self.requested.as_deref()
    }

    fn columns_left_out(&self) -> Vec<super::LeftOutColumn> {
        self.columns_left_out.clone()
    }

    fn left_out(&self) -> Vec<super::LeftOut> {
        let n = self
            .null_symbol_rows
            .load(std::sync::atomic::Ordering::Relaxed);
        (n > 0)
            .then(|| super::LeftOut {
                rows: n,
                reason: format!(
                    "`{}`.`{}` is NULL, so they belong to no symbol; fill the column or delete the rows",
                    self.table, self.symbol_column
                ),
            })
            .into_iter()
            .collect()
    }
}
