//! Packs: one instrument's current entries copied into one values file and one index (storage-layout.md §8.1).
//!
//! A daily entry is a few kilobytes, so reading Alpha158 from entries costs two file opens and a meta parse per
//! column (about 13 us each, more than computing the column). A pack holds every current entry of an
//! (instrument, frequency) back to back, so a read opens two files per instrument. Packs are derived: entries
//! stay the unit of writing and locking, and `warm`/`update` repack the instruments they touched. A reader uses
//! a packed entry only when it passes the same checks as the entry itself (calendar, source fingerprints,
//! checksum), so a stale or damaged pack is a miss, never wrong values; writers never look at packs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{DiskExpressionCache, Found, Meta, SourceFingerprint, Span, hex64, value_bytes};
use crate::error::{Error, Result};
use crate::expr::StoreFields;
use crate::store::Store;
use crate::store::bin::{self, FeatureFile};
use crate::store::freq::Freq;
use crate::store::{fsio, layout};

/// The version of the pack index format.
pub const PACK_FORMAT: u32 = 1;

/// Entries of more values stay out of packs: their files are mapped (`bin::DEFAULT_MAP_THRESHOLD`), where the
/// cost of a file is small beside its bytes, and an intraday pack would be rewritten whole on every update.
pub const PACK_MAX_VALUES: usize = (bin::DEFAULT_MAP_THRESHOLD as usize - 4) / 4;

/// A pack's name: 32 hex digits of xxh3-128 over `pack\0<INSTRUMENT>\0<freq>` (so it never equals an entry's).
pub fn pack_key(instrument: &str, freq: Freq) -> String {
    let text = format!("pack\0{}\0{freq}", instrument.to_uppercase());
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
}

/// `<pack key>.pack`: the index, and the commit point of a pack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackIndex {
    pub format: u32,
    pub instrument: String,
    pub freq: String,
    /// The calendar length every packed entry was current for.
    pub calendar_len: usize,
    pub last_date: Option<String>,
    /// The sources of all packed entries, once each, fingerprinted over `calendar_len` rows.
    pub sources: Vec<SourceFingerprint>,
    pub entries: Vec<PackEntry>,
    /// Fencing token of the writer.
    pub token: u64,
    /// Generation of the `<pack key>.<generation>.values` file this index describes.
    pub generation: u64,
}

/// One entry in a pack: its meta's fields that reads need, and where its values are in the values file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackEntry {
    /// The entry's key (its `.meta` file's name).
    pub key: String,
    pub expr: String,
    pub start: usize,
    pub len: usize,
    pub right: u32,
    /// Indices into the index's `sources`.
    pub sources: Vec<usize>,
    /// Position of the first value in the values file (after its 4-byte header).
    pub offset: usize,
    /// xxh3-64 of the entry's values, as in its meta.
    pub checksum: String,
}

/// A pack as a reader validated it: the entries that passed every check.
pub(crate) struct Pack {
    calendar_len: usize,
    file: FeatureFile,
    items: HashMap<u128, (Box<str>, Span, usize)>,
}

impl Pack {
    pub(crate) fn values(&self) -> &[f32] {
        self.file.values()
    }
}

fn index_path(dir: &Path, pk: &str) -> PathBuf {
    dir.join(format!("{pk}.pack"))
}

fn values_path(dir: &Path, pk: &str, generation: u64) -> PathBuf {
    dir.join(format!("{pk}.{generation}.values"))
}

pub(super) fn read_index(path: &Path) -> Option<PackIndex> {
    let text = std::fs::read(path).ok()?;
    let index: PackIndex = serde_json::from_slice(&text).ok()?;
    (index.format == PACK_FORMAT).then_some(index)
}

/// Whether `index`'s values file holds every entry it lists, each with its checksum: `None` when it does, else
/// what is wrong.
fn check_values(dir: &Path, pk: &str, index: &PackIndex) -> Option<String> {
    let path = values_path(dir, pk, index.generation);
    let file = match FeatureFile::open(&path) {
        Ok(Some(f)) => f,
        Ok(None) => return Some(format!("{}: missing", path.display())),
        Err(e) => return Some(format!("{}: {}", path.display(), e.detail())),
    };
    for e in &index.entries {
        let Some(v) = file.values().get(e.offset..e.offset + e.len) else {
            return Some(format!(
                "{}: holds {} values, the index places {} at {}",
                path.display(),
                file.len(),
                e.expr,
                e.offset
            ));
        };
        if hex64(value_bytes(v)) != e.checksum {
            return Some(format!(
                "{}: checksum mismatch ({})",
                path.display(),
                e.expr
            ));
        }
    }
    None
}

/// An instrument whose pack a writer brings up to date: the entries it just made current (`keys`), and whether
/// it changed any of them. A pack that is current and holds every key of an unchanged instrument is left as it
/// is without listing the entries again.
pub(super) struct Target {
    pub instrument: String,
    pub freq: Freq,
    pub keys: Vec<u128>,
    pub changed: bool,
}

/// A pack whose values file is written and whose index waits to be published, with its lock.
struct Pending {
    guard: Box<dyn crate::cache::lock::Guard>,
    index: PackIndex,
    dir: PathBuf,
    pk: String,
}

enum Prepared {
    Done,
    Pending(Box<Pending>),
}

impl DiskExpressionCache {
    /// The pack of `instrument` at `freq`, validated for a calendar of `cal_len` rows (once per process and
    /// calendar length): `None` when there is none or nothing in it is usable.
    fn pack_of(
        &self,
        store: &Store,
        instrument: &str,
        freq: Freq,
        cal_len: usize,
    ) -> Option<Arc<Pack>> {
        let memo = (instrument.to_uppercase(), freq);
        if let Some((at, p)) = self.packs.lock().get(&memo)
            && *at == cal_len
        {
            return p.clone();
        }
        let pack = self.load_pack(store, &memo.0, freq, cal_len).map(Arc::new);
        self.packs.lock().put(memo, (cal_len, pack.clone()));
        pack
    }

    fn load_pack(
        &self,
        store: &Store,
        instrument: &str,
        freq: Freq,
        cal_len: usize,
    ) -> Option<Pack> {
        // A name that is no instrument has no pack (the entry's lookup reports it).
        layout::validate_name(crate::error::NameKind::Instrument, instrument).ok()?;
        let dir = self
            .dir
            .join(layout::code_to_fname(instrument).to_lowercase());
        let pk = pack_key(instrument, freq);
        let index = read_index(&index_path(&dir, &pk))?;
        if index.instrument != instrument
            || index.freq != freq.to_string()
            || index.calendar_len > cal_len
        {
            return None;
        }
        let file = FeatureFile::open(&values_path(&dir, &pk, index.generation)).ok()??;
        // A source that does not match (a corrected file) or cannot be read disqualifies the entries reading it.
        let fields = StoreFields { store, freq };
        let sources_ok: Vec<bool> = index
            .sources
            .iter()
            .map(|s| {
                self.source_unchanged(&fields, s, index.calendar_len)
                    .unwrap_or(false)
            })
            .collect();
        let mut items = HashMap::with_capacity(index.entries.len());
        for e in index.entries {
            let usable = e
                .sources
                .iter()
                .all(|&i| sources_ok.get(i).copied().unwrap_or(false))
                && file
                    .values()
                    .get(e.offset..e.offset + e.len)
                    .is_some_and(|v| hex64(value_bytes(v)) == e.checksum);
            let Ok(id) = u128::from_str_radix(&e.key, 16) else {
                continue;
            };
            if usable {
                let span = Span {
                    start: e.start,
                    len: e.len,
                    calendar_len: index.calendar_len,
                    right: e.right,
                };
                items.insert(id, (e.expr.into_boxed_str(), span, e.offset));
            }
        }
        (!items.is_empty()).then_some(Pack {
            calendar_len: index.calendar_len,
            file,
            items,
        })
    }

    /// The entry `id` in its instrument's pack, current or behind the calendar; `None` when the pack does not
    /// have it (usable).
    pub(super) fn find_packed(
        &self,
        store: &Store,
        id: u128,
        canonical: &str,
        instrument: &str,
        freq: Freq,
        cal_len: usize,
    ) -> Option<Found> {
        let pack = self.pack_of(store, instrument, freq, cal_len)?;
        let (expr, span, offset) = pack.items.get(&id)?;
        if &**expr != canonical {
            return None;
        }
        let (span, offset) = (*span, *offset);
        let data = super::Data::Pack(pack.clone(), offset);
        Some(if pack.calendar_len == cal_len {
            Found::Current(span, data)
        } else {
            Found::Behind(span, data)
        })
    }

    /// Copies the current entries of each (INSTRUMENT, freq) into its pack, in batches like entries: values
    /// files written without fsync, one `syncfs`, the indexes, one more `syncfs`, then old generations deleted.
    /// A pack another process is writing is left to it. Returns how many packs were written or removed.
    pub(super) fn repack(&self, store: &Store, targets: &[Target]) -> Result<usize> {
        use rayon::prelude::*;
        let mut written = 0;
        for batch in targets.chunks(super::BATCH) {
            let pending = Mutex::new(Vec::new());
            batch.par_iter().try_for_each(|t| -> Result<()> {
                if let Prepared::Pending(p) = self.prepare_pack(store, t)? {
                    pending.lock().push(*p);
                }
                Ok(())
            })?;
            let pending = pending.into_inner();
            if pending.is_empty() {
                continue;
            }
            fsio::sync_filesystem(&self.dir)?;
            let mut published = Vec::new();
            let mut first_err = None;
            for p in pending {
                match self.publish_pack(&p) {
                    Ok(()) => published.push(p),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            fsio::sync_filesystem(&self.dir)?;
            // Old generations are garbage once a durable index no longer names them.
            for p in &published {
                remove_values(&p.dir, &p.pk, Some(p.index.generation));
            }
            written += published.len();
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        Ok(written)
    }

    /// Writes the values file of one pack (under the pack's lock, which the result holds), or nothing when the
    /// published pack already holds exactly the current entries, or another process holds the lock.
    fn prepare_pack(&self, store: &Store, target: &Target) -> Result<Prepared> {
        let (instrument, freq) = (target.instrument.as_str(), target.freq);
        let dir = self
            .dir
            .join(layout::code_to_fname(instrument).to_lowercase());
        if !dir.is_dir() {
            return Ok(Prepared::Done);
        }
        let pk = pack_key(instrument, freq);
        let lock_name = format!(
            "{}/{pk}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("_")
        );
        let Some(guard) = self.lock.try_acquire(&lock_name)? else {
            return Ok(Prepared::Done);
        };
        let cal = store.calendar(freq)?;
        let cal_len = cal.len();
        let fields = StoreFields { store, freq };
        let old_path = index_path(&dir, &pk);
        let old = read_index(&old_path);
        if !target.changed
            && let Some(o) = &old
            && o.calendar_len == cal_len
            && self.pack_holds(&fields, o, &target.keys)
            && check_values(&dir, &pk, o).is_none()
        {
            // Nothing of this instrument changed and its pack is current with every entry: as it is.
            remove_values(&dir, &pk, Some(o.generation));
            return Ok(Prepared::Done);
        }
        // The current entries, in key order, with their values.
        let mut metas: Vec<(String, Meta)> = Vec::new();
        for f in std::fs::read_dir(&dir)
            .map_err(|e| Error::io("listing", &dir, e))?
            .flatten()
        {
            let name = f.file_name();
            let Some(k) = name
                .to_str()
                .filter(|n| layout::is_cache_file(n))
                .and_then(|n| n.strip_suffix(".meta"))
            else {
                continue;
            };
            if let Some(m) = Self::read_meta(&f.path())
                && m.freq == freq.to_string()
                && m.calendar_len == cal_len
                && m.len <= PACK_MAX_VALUES
            {
                metas.push((k.to_string(), m));
            }
        }
        metas.sort_by(|a, b| a.0.cmp(&b.0));
        let mut sources: Vec<SourceFingerprint> = Vec::new();
        let mut entries = Vec::new();
        let mut values: Vec<f32> = Vec::new();
        for (k, m) in metas {
            let mut current = true;
            for s in &m.sources {
                current &= self.source_unchanged(&fields, s, cal_len)?;
            }
            if !current {
                continue;
            }
            let Some(file) = Self::open_checked(&dir, &k, &m) else {
                continue;
            };
            let idx = m
                .sources
                .into_iter()
                .map(|s| match sources.iter().position(|t| *t == s) {
                    Some(i) => i,
                    None => {
                        sources.push(s);
                        sources.len() - 1
                    }
                })
                .collect();
            entries.push(PackEntry {
                key: k,
                expr: m.expr,
                start: m.start,
                len: m.len,
                right: m.right,
                sources: idx,
                offset: values.len(),
                checksum: m.checksum,
            });
            values.extend_from_slice(&file.values()[..m.len]);
        }
        if entries.is_empty() {
            // Nothing current to pack: a pack left from before goes (index first, as `clear` does).
            if old.is_some() || old_path.exists() {
                remove_pack(&dir, &pk)?;
            }
            return Ok(Prepared::Done);
        }
        let unchanged = old.as_ref().is_some_and(|o| {
            o.calendar_len == cal_len
                && o.sources == sources
                && o.entries.len() == entries.len()
                && o.entries.iter().zip(&entries).all(|(a, b)| {
                    (&a.key, &a.checksum, a.start, a.len) == (&b.key, &b.checksum, b.start, b.len)
                })
                && check_values(&dir, &pk, o).is_none()
        });
        if let Some(o) = old.as_ref().filter(|_| unchanged) {
            // A killed writer's values file that no index names goes now (this process holds the lock).
            remove_values(&dir, &pk, Some(o.generation));
            return Ok(Prepared::Done);
        }
        let token = guard.token();
        let generation = old.as_ref().map_or(1, |o| o.generation + 1).max(token);
        fsio::replace_unsynced(
            &values_path(&dir, &pk, generation),
            &bin::encode(0, &values),
        )?;
        let index = PackIndex {
            format: PACK_FORMAT,
            instrument: instrument.to_string(),
            freq: freq.to_string(),
            calendar_len: cal_len,
            last_date: cal
                .last()
                .map(|d| crate::store::calendar::format_timestamp(d, freq.date_only())),
            sources,
            entries,
            token,
            generation,
        };
        Ok(Prepared::Pending(Box::new(Pending {
            guard,
            index,
            dir,
            pk,
        })))
    }

    /// Whether `index`'s sources are the store's now and it lists every one of `keys`.
    fn pack_holds(&self, fields: &StoreFields<'_>, index: &PackIndex, keys: &[u128]) -> bool {
        let listed: std::collections::HashSet<u128> = index
            .entries
            .iter()
            .filter_map(|e| u128::from_str_radix(&e.key, 16).ok())
            .collect();
        keys.iter().all(|k| listed.contains(k))
            && index.sources.iter().all(|s| {
                self.source_unchanged(fields, s, index.calendar_len)
                    .unwrap_or(false)
            })
    }

    /// Publishes a pack's index if its writer may (fencing as for entries).
    fn publish_pack(&self, p: &Pending) -> Result<()> {
        let path = index_path(&p.dir, &p.pk);
        crate::util::failpoint::hit("cache:before-pack");
        crate::cache::lock::may_publish(
            p.guard.as_ref(),
            read_index(&path).map(|i| i.token),
            &format!("cache pack {}", path.display()),
        )?;
        let text = serde_json::to_vec(&p.index).expect("a pack index serializes");
        fsio::replace_unsynced(&path, &text)?;
        self.packs.lock().clear();
        Ok(())
    }

    /// Removes the packs in an instrument's directory (`clear` removes entries; the next `warm` or `update`
    /// repacks what is left), each under its lock.
    pub(super) fn remove_packs(&self, dir: &Path) -> Result<()> {
        let Ok(files) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        let packs: Vec<String> = files
            .flatten()
            .filter_map(|f| {
                let name = f.file_name().into_string().ok()?;
                (layout::is_cache_file(&name))
                    .then(|| name.strip_suffix(".pack").map(str::to_string))
                    .flatten()
            })
            .collect();
        for pk in packs {
            let _guard = self.lock.acquire(
                &format!(
                    "{}/{pk}",
                    dir.file_name().and_then(|n| n.to_str()).unwrap_or("_")
                ),
                self.wait,
            )?;
            remove_pack(dir, &pk)?;
        }
        self.packs.lock().clear();
        Ok(())
    }

    /// `verify`'s checks of one pack: a readable index whose values file holds every entry with its checksum.
    pub(super) fn verify_pack(dir: &Path, pk: &str) -> (Option<u64>, Option<String>) {
        let path = index_path(dir, pk);
        match read_index(&path) {
            None => (
                None,
                Some(format!("{}: unreadable pack index", path.display())),
            ),
            Some(index) => (Some(index.generation), check_values(dir, pk, &index)),
        }
    }
}

/// Removes a pack: the index first (without it the values are orphans no reader opens), then every values file.
fn remove_pack(dir: &Path, pk: &str) -> Result<()> {
    let path = index_path(dir, pk);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("removing", &path, e)),
    }
    remove_values(dir, pk, None);
    fsio::fsync_dir(dir)
}

/// Deletes the values files of pack `pk` except generation `keep` (best effort: a leftover is only disk space,
/// which `verify` reports and the next repack removes).
fn remove_values(dir: &Path, pk: &str, keep: Option<u64>) {
    let Ok(files) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{pk}.");
    for f in files.flatten() {
        let name = f.file_name();
        let Some(g) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|r| r.strip_suffix(".values"))
            .and_then(|g| g.parse::<u64>().ok())
        else {
            continue;
        };
        if Some(g) != keep {
            let _ = std::fs::remove_file(f.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr;
    use crate::store::calendar::{Calendar, parse_timestamp};

    /// Series of up to `PACK_MAX_VALUES` values are packed; longer ones are read from their own (mapped) files.
    #[test]
    fn only_short_series_are_packed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let days = PACK_MAX_VALUES + 10;
        let first = parse_timestamp("1950-01-01").unwrap();
        let cal = (0..days as u64)
            .map(|k| first + chrono::Days::new(k))
            .collect();
        store
            .save_calendar(&Calendar::new(Freq::DAY, cal).unwrap())
            .unwrap();
        let values: Vec<f32> = (0..days).map(|k| k as f32).collect();
        store
            .write_feature("LONG", "close", Freq::DAY, Some(0), &values)
            .unwrap();
        let short_from = days - 100;
        store
            .write_feature(
                "SHORT",
                "close",
                Freq::DAY,
                Some(short_from),
                &values[..100],
            )
            .unwrap();
        let cache_dir = dir.path().join(super::super::CACHE_DIR);
        let cache = DiskExpressionCache::new(
            &cache_dir,
            Box::new(crate::cache::lock::FileLock::new(&cache_dir)),
        );
        let e = expr::parse("Mean($close, 2)").unwrap();
        let insts = ["LONG".to_string(), "SHORT".to_string()];
        cache
            .warm_all(&store, &insts, std::slice::from_ref(&e), Freq::DAY, &|| {})
            .unwrap();
        let pack_of = |inst: &str| {
            let d = cache_dir.join(inst.to_lowercase());
            read_index(&index_path(&d, &pack_key(inst, Freq::DAY)))
        };
        assert!(pack_of("LONG").is_none(), "a long series is not packed");
        let short = pack_of("SHORT").expect("a short series is packed");
        assert_eq!(short.entries.len(), 1);
        assert_eq!(short.entries[0].len, 100);
        // Both read back equal to computing them.
        let fields = StoreFields {
            store: &store,
            freq: Freq::DAY,
        };
        for inst in insts {
            let got = cache
                .read(&store, &e, &inst, Freq::DAY, 0..days)
                .unwrap()
                .expect("a current entry");
            let want = expr::evaluate(&fields, &inst, std::slice::from_ref(&e), 0..days)
                .unwrap()
                .remove(0);
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{inst}"
            );
        }
    }
}
