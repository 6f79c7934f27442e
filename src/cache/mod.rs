//! The expression cache's entries on disk and the writer locks that guard them.
//!
//! Below the query layer: `query` reads current entries on every read (and fills them in `write` mode);
//! warming, updating and verifying entries live here with their format. The dataset cache, built from
//! queries, sits above (`crate::dataset`).

pub mod expr;
pub mod lock;

use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};
use crate::store::{fsio, layout};

/// The store's id for lock names (`<store>/.qstore-id`, created by the first writer that needs it): stores on
/// shared media keep one id whatever path each machine mounts them at.
pub fn store_id(root: &Path) -> Result<String> {
    let path = root.join(layout::STORE_ID_FILE);
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let seed = format!(
        "{}\0{}\0{:?}",
        root.display(),
        std::process::id(),
        std::time::SystemTime::now()
    );
    let id = format!("{:016x}", xxh3_64(seed.as_bytes()));
    // Publish with link(2), which fails when the name exists: of several processes creating the id at once,
    // exactly one wins and the others read its id (a rename would let each keep its own).
    let tmp = root.join(format!("{}id-{}", fsio::TEMP_PREFIX, std::process::id()));
    fsio::replace_atomic(&tmp, format!("{id}\n").as_bytes())?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            fsio::fsync_dir(root)?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let id = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
            Ok(id.trim().to_string())
        }
        Err(e) => Err(Error::io("creating", &path, e)),
    }
}
