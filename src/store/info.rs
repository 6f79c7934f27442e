//! What a store holds, for `qdump info` and `qdump ls` (qlib's `D.calendar`, `D.list_instruments`): counts,
//! ranges, fields and sizes, read from names and metadata without reading any values.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::calendar::format_timestamp;
use crate::store::layout::{CALENDARS_DIR, DATASET_CACHE_DIR, EXPR_CACHE_DIR, FEATURES_DIR};

/// One calendar: its frequency, length and first and last day.
#[derive(Debug, Clone, Serialize)]
pub struct CalendarInfo {
    pub freq: String,
    pub days: usize,
    pub first: Option<String>,
    pub last: Option<String>,
}

/// A store at a glance.
#[derive(Debug, Clone, Serialize)]
pub struct StoreInfo {
    pub path: String,
    pub calendars: Vec<CalendarInfo>,
    /// Each market's number of instruments.
    pub markets: BTreeMap<String, usize>,
    /// Instruments with a directory under `features/`.
    pub instruments_with_data: usize,
    /// The fields any instrument has, by frequency.
    pub fields: BTreeMap<String, Vec<String>>,
    /// When a calendar was last published (UTC): the commit point of every import and update.
    pub last_update: Option<String>,
    /// Bytes of the data (features, calendars, instruments) and of the caches.
    pub data_bytes: u64,
    pub cache_bytes: u64,
}

/// Reads what `qdump info` prints.
pub fn info(store: &Store) -> Result<StoreInfo> {
    let root = store.root();
    let mut calendars = Vec::new();
    let mut last_update = None;
    for freq in store.freqs()? {
        let cal = store.calendar(freq)?;
        let fmt = |t| format_timestamp(t, freq.date_only());
        calendars.push(CalendarInfo {
            freq: freq.to_string(),
            days: cal.len(),
            first: cal.first().map(fmt),
            last: cal.last().map(fmt),
        });
        let path = crate::store::layout::calendar_path(root, freq, false);
        if let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) {
            last_update = last_update.max(Some(modified));
        }
    }
    let mut markets = BTreeMap::new();
    for m in store.markets()? {
        markets.insert(m.clone(), store.instruments(&m)?.len());
    }
    let (instruments_with_data, fields) = fields_by_freq(root)?;
    let data_bytes = [
        CALENDARS_DIR,
        crate::store::layout::INSTRUMENTS_DIR,
        FEATURES_DIR,
    ]
    .iter()
    .map(|d| crate::store::fsio::dir_size(&root.join(d)))
    .sum();
    let cache_bytes = [EXPR_CACHE_DIR, DATASET_CACHE_DIR]
        .iter()
        .map(|d| crate::store::fsio::dir_size(&root.join(d)))
        .sum();
    Ok(StoreInfo {
        path: root.display().to_string(),
        calendars,
        markets,
        instruments_with_data,
        fields,
        last_update: last_update.map(|t| {
            chrono::DateTime::<chrono::Utc>::from(t)
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string()
        }),
        data_bytes,
        cache_bytes,
    })
}

/// The number of instrument directories and the union of their fields, by frequency (`close.day.bin` is
/// field `close` at `day`).
pub fn fields_by_freq(root: &Path) -> Result<(usize, BTreeMap<String, Vec<String>>)> {
    let dir = root.join(FEATURES_DIR);
    let mut by_freq: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut instruments = 0;
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok((0, BTreeMap::new()));
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", &dir, e))?;
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        instruments += 1;
        let files =
            std::fs::read_dir(entry.path()).map_err(|e| Error::io("listing", entry.path(), e))?;
        for f in files.flatten() {
            let name = f.file_name();
            let Some((field, freq)) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".bin"))
                .and_then(|n| n.rsplit_once('.'))
            else {
                continue;
            };
            by_freq
                .entry(freq.to_owned())
                .or_default()
                .insert(field.to_owned());
        }
    }
    Ok((
        instruments,
        by_freq
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect(),
    ))
}
