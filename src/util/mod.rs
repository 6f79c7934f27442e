//! Helpers that know nothing of stores: the generic in-memory cache and the test-only failpoints.

pub(crate) mod failpoint;
pub mod memcache;
