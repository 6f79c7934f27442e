//! qstore: a qlib-compatible store for market data, read through memory maps.
//!
//! A store is a directory laid out exactly like Microsoft qlib's file storage, so qlib reads qstore stores and
//! qstore reads qlib's (`storage-layout.md` has every byte):
//!
//! ```text
//! calendars/day.txt                    one timestamp per line
//! instruments/all.txt                  SYMBOL<TAB>START<TAB>END
//! features/sh600000/close.day.bin      f32 LE: start index into the calendar, then one value per day
//! ```
//!
//! ```
//! use qstore::{Calendar, Freq, Store, parse_timestamp};
//!
//! # fn main() -> qstore::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::create(dir.path())?;
//! let days = ["2024-01-02", "2024-01-03", "2024-01-04"].map(|d| parse_timestamp(d).unwrap());
//! store.save_calendar(&Calendar::new(Freq::DAY, days.to_vec())?)?;
//! store.write_feature("SH600000", "close", Freq::DAY, Some(1), &[10.5, 10.7])?;
//!
//! // Zero-copy: `values` borrows straight from the mapped file.
//! let values = store.read("SH600000", "close", Freq::DAY, 0..3)?;
//! assert_eq!(values.start(), 1);
//! assert_eq!(&values[..], &[10.5, 10.7]);
//! # Ok(())
//! # }
//! ```

pub mod cache;
#[cfg(feature = "cli")]
pub mod cli;
pub mod dataset;
pub mod error;
pub mod expr;
pub mod import;
pub mod loader;
pub mod query;
pub mod store;
pub mod util;

pub use error::{CorruptReason, Error, NameKind, Result};
pub use query::featureset::FeatureSet;
pub use query::frame::{ColumnFrame, Frame};
pub use query::{Engine, Universe};
pub use store::bin::{FeatureFile, FeatureSlice};
pub use store::calendar::{Calendar, Timestamp, format_timestamp, parse_timestamp};
pub use store::freq::{Freq, FreqBase};
pub use store::instruments::{Instruments, Span};
pub use store::panel::Panel;
pub use store::writer::WriteKind;
pub use store::{CacheStats, Store, StoreOptions};
pub use util::memcache::{Limit, MemCache, Weigh};
