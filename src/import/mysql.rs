//! The MySQL/MariaDB source.
//!
//! The rows are read once, with the binary protocol (`exec_iter`): rows arrive one packet at a time. A whole
//! table is scanned in its own order on one connection and grouped by symbol here (`group`); a selection of
//! symbols streams `ORDER BY symbol, date` over several connections, each on a disjoint, contiguous range of
//! the sorted symbol list, holding one symbol per connection. The calendar is learned from the rows (or read
//! from a trading-day table); only `qdump update` asks for the distinct dates first.
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
use crate::store::calendar::{Timestamp, parse_timestamp};

/// What to import from which table.
#[derive(Debug, Clone)]
pub struct MysqlOptions {
    pub table: String,
    pub symbol_column: String,
    pub date_column: String,
    /// Only these columns (default: every numeric column but the symbol, the date and auto-increment ids).
    pub fields: Option<Vec<String>>,
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
}

impl Default for MysqlOptions {
    fn default() -> Self {
        MysqlOptions {
            table: "stock_kline_data".into(),
            symbol_column: "symbol".into(),
            date_column: "trade_date".into(),
            fields: None,
            symbols: None,
            start: None,
            end: None,
            limit: None,
            connections: 2,
            calendar_table: None,
            calendar_column: None,
            hold_bytes: 128 << 20,
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
        let cols: Vec<(String, String, String, String)> = c
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, EXTRA, COLUMN_KEY FROM information_schema.COLUMNS \
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
            None => cols
                .iter()
                .filter(|c| {
                    NUMERIC.contains(&c.1.to_lowercase().as_str())
                        && !c.2.to_lowercase().contains("auto_increment")
                        && c.0 != symbol_column
                        && c.0 != date_column
                })
                .map(|c| c.0.clone())
                .collect(),
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
        };
        src.symbols = match o.symbols {
            Some(list) => list
                .into_iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
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

    /// ` AND <column> >= ? AND <column> <= ?` for the range, with its parameters.
    fn date_filter(&self, column: &str) -> (String, Vec<Value>) {
        let mut cond = String::new();
        let mut params = Vec::new();
        let ts = |t: Timestamp| Value::from(t.format("%Y-%m-%d %H:%M:%S").to_string());
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
                if let Some(t) = to_timestamp(&v) {
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
        to_timestamp(v).ok_or_else(|| {
            format!(
                "a row has date {v:?} in column {}, which is not a date",
                self.date_column
            )
        })
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
    fn stream_table(
        &self,
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
        // Key ranges split at even steps of the id: the first and last are open, so every row is in one.
        let mut cuts: Vec<i64> = Vec::new();
        if let (true, Some(id)) = (self.row_id_is_key && self.connections > 1, &self.row_id) {
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
        let mut scans = (0..=cuts.len())
            .map(|_| self.conn.connect())
            .collect::<Result<Vec<Conn>>>()?;
        for c in &mut scans {
            snapshot(c)?;
        }
        snapshot(&mut count)?;
        let (cond, params) = self.date_filter(&self.date_column);
        // NULL symbols are counted too (their group), to report them: they cannot be imported.
        let count_sql = format!("SELECT `{s}`, COUNT(*) FROM `{t}` WHERE 1=1{cond} GROUP BY `{s}`");
        let id = self.row_id_column();
        let select = format!(
            "SELECT `{s}`, `{d}`{id}, {fields} FROM `{t}` WHERE `{s}` IS NOT NULL{cond}",
            fields = self.select_fields()
        );
        let ranges: Vec<(String, Vec<Value>)> = (0..=cuts.len())
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
                (sql, p)
            })
            .collect();
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let (counts_tx, counts_rx) = std::sync::mpsc::channel();
        let origin = |sym: &str| format!("{t}.{s} = {sym:?}");
        let emit = |item| {
            // The writer only stops early by panicking, which the join below reports.
            let _ = tx.send(Some(item));
        };
        let groups = Mutex::new((
            Grouper::new(
                self.columns.len(),
                self.row_id.is_some(),
                self.hold_bytes,
                &origin,
                &emit,
            ),
            Some(counts_rx),
        ));
        std::thread::scope(|scope| {
            // `None` ends the writer (the sender stays borrowed by `emit` until the scope ends).
            let writer = scope.spawn(move || rx.into_iter().map_while(|item| item).for_each(sink));
            scope.spawn(move || {
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
                .zip(ranges)
                .map(|(c, (sql, p))| {
                    let groups = &groups;
                    scope.spawn(move || self.scan_range(c, sql, p, groups))
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().expect("a scanning thread panicked"))
                .collect::<Result<Vec<()>>>()
                .and_then(|_| {
                    let mut g = groups.lock();
                    let (groups, counts) = &mut *g;
                    if let Some(rx) = counts.take() {
                        // The counts still matter: a failed count query fails the import.
                        groups.counts(rx.recv().expect("the counting thread sends once")?)?;
                    }
                    groups.end()
                });
            let _ = tx.send(None);
            writer.join().expect("the writing thread panicked");
            scanned
        })?;
        Ok(())
    }

    /// One scan of [`stream_table`](Self::stream_table): rows are decoded on this thread and handed to the
    /// shared grouper in batches, so that the lock is taken once per batch.
    fn scan_range(
        &self,
        mut c: Conn,
        sql: String,
        params: Vec<Value>,
        groups: &Mutex<Shared>,
    ) -> Result<()> {
        const BATCH: usize = 512;
        let mut batch = Batch::default();
        let flush = |batch: &mut Batch| -> Result<()> {
            let mut g = groups.lock();
            let (groups, counts) = &mut *g;
            if let Some(Ok(c)) = counts.as_ref().map(|rx| rx.try_recv()) {
                *counts = None;
                groups.counts(c?)?;
            }
            let n = self.columns.len();
            for (k, sym) in batch.symbols.iter().enumerate() {
                let date = std::mem::replace(&mut batch.dates[k], Err(String::new()));
                let mut cells = batch.cells[k * n..(k + 1) * n].iter().cloned();
                groups.push(sym, date, batch.ids[k], &mut cells)?;
            }
            batch.symbols.clear();
            batch.dates.clear();
            batch.ids.clear();
            batch.cells.clear();
            Ok(())
        };
        let result = c
            .exec_iter(sql, params)
            .map_err(|e| self.conn.err(e.to_string()))?;
        for row in result {
            let row = row.map_err(|e| self.conn.err(format!("reading rows: {e}")))?;
            let mut values = row.unwrap().into_iter();
            let Some(Value::Bytes(sym)) = values.next() else {
                continue; // NULL symbols are not selected
            };
            let date = self.row_date(&values.next().unwrap_or(Value::NULL));
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

/// The grouper of a whole-table scan, and the per-symbol counts until they arrive.
type Shared<'a> = (
    Grouper<'a>,
    Option<std::sync::mpsc::Receiver<Result<HashMap<Vec<u8>, u64>>>>,
);

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
        Some(day) => format!("column {column} holds {v:?} on {day}, which is not a number"),
        None => format!("column {column} holds {v:?}, which is not a number"),
    })
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

fn to_timestamp(v: &Value) -> Option<Timestamp> {
    match v {
        Value::Date(y, m, d, h, mi, s, _) => {
            NaiveDate::from_ymd_opt(i32::from(*y), u32::from(*m), u32::from(*d))?
                .and_time(NaiveTime::from_hms_opt(
                    u32::from(*h),
                    u32::from(*mi),
                    u32::from(*s),
                )?)
                .into()
        }
        Value::Bytes(b) => parse_timestamp(std::str::from_utf8(b).ok()?).ok(),
        _ => None,
    }
}

impl Source for MysqlSource {
    fn fields(&self) -> &[String] {
        &self.fields
    }

    fn symbol_count(&self) -> usize {
        self.symbols.len()
    }

    fn dates(&self) -> Result<Vec<Timestamp>> {
        if self.symbols.is_empty() {
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
        if self.symbols.is_empty() {
            return Ok(());
        }
        if !self.restricted {
            return self.stream_table(sink);
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

    fn requested(&self) -> Option<&[String]> {
        self.requested.as_deref()
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
