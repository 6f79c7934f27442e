//! The expression cache's entries on disk and the writer locks that guard them.
//!
//! Below the query layer: `query` reads current entries on every read (and fills them in `write` mode);
//! warming, updating and verifying entries live here with their format. The dataset cache, built from
//! queries, sits above (`crate::dataset`).

pub mod expr;
pub mod lock;
