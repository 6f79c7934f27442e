//! Writer locks for cache entries: one writer per entry, on one machine (file locks) or on every machine that
//! shares the store (Redis leases). Readers never lock.
//!
//! Redis: `SET <prefix>lock:<name> <owner> NX PX <ttl>`; a thread renews the lease (a Lua script that extends it
//! only while the value is still ours) until the guard is dropped, which deletes the key the same way. A killed
//! holder's lease runs out after `ttl`. Each grant gets a fencing token from `INCR <prefix>fence`, which the
//! writer stores in what it publishes; a writer whose token is older than the published one must not publish
//! (a paused process whose lease expired). Keys live under `qstore:<store id>:`, and nothing outside that
//! prefix is ever touched.
//!
//! File locks (`File::lock` on `<name>.lock` next to the entry) are released by the kernel when the holder
//! dies; their fencing token is a counter kept in the lock file.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::Commands;

use crate::error::{Error, Result};
use crate::store::settings::{CacheSettings, LockKind};

/// A held lock. Dropping it releases the lock.
pub trait Guard: Send {
    /// The fencing token of this grant: larger than every earlier grant's.
    fn token(&self) -> u64;
    /// False once the lease was lost (renewal failed): the holder must not publish.
    fn held(&self) -> bool;
}

/// A lock held somewhere, as `reset-lock` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub name: String,
    /// `host:pid:token:acquired-ms` of the holder.
    pub owner: String,
    /// Since when the holder has it (from the owner's acquisition time).
    pub age: Option<Duration>,
    /// Lease left (Redis); `None` for file locks.
    pub remaining: Option<Duration>,
    /// Whether the holder is known to be gone (a process of this host that no longer runs).
    pub holder_gone: bool,
}

/// The writer lock of cache entries.
pub trait Lock: Send + Sync {
    /// Takes the lock `name`: waiting up to `wait` for another holder to finish (an error after that), or with
    /// `None` one try only (`Ok(None)` when someone holds it).
    fn take(&self, name: &str, wait: Option<Duration>) -> Result<Option<Box<dyn Guard>>>;

    /// Takes the lock `name`, waiting up to `wait` for another holder to finish.
    fn acquire(&self, name: &str, wait: Duration) -> Result<Box<dyn Guard>> {
        Ok(self
            .take(name, Some(wait))?
            .expect("a waiting take returns a guard or an error"))
    }

    /// Takes the lock `name` if it is free now; `None` when someone holds it. A writer that already holds
    /// locks must not wait for more (two such writers would wait for each other), so batches use this.
    fn try_acquire(&self, name: &str) -> Result<Option<Box<dyn Guard>>> {
        self.take(name, None)
    }
    /// Locks held now.
    fn list(&self) -> Result<Vec<Held>>;
    /// Deletes one lock whatever its holder; returns whether it existed.
    fn remove(&self, name: &str) -> Result<bool>;
    /// What the lock is, for messages and `qcache info` (`redis://host:port/db`, `file`).
    fn describe(&self) -> String;
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The age of a grant from its owner string's last field (milliseconds since the epoch).
fn owner_age(owner: &str) -> Option<Duration> {
    let ms: u128 = owner.rsplit(':').next()?.parse().ok()?;
    Some(Duration::from_millis(now_ms().saturating_sub(ms) as u64))
}

use crate::store::fsio::this_host;

/// Whether `owner` (`host:pid:token`) names a process of this host that no longer runs.
fn owner_gone(owner: &str) -> bool {
    let mut parts = owner.splitn(3, ':');
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    host == this_host()
        && pid
            .parse::<u32>()
            .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Redis leases (see the module docs).
pub struct RedisLock {
    client: redis::Client,
    url: String,
    prefix: String,
    ttl: Duration,
}

const RENEW: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

impl RedisLock {
    /// Connects (and checks the server answers) for the store whose id is `store_id`. `config_key` names where
    /// the URL came from, for the error when the server cannot be reached.
    pub fn connect(
        url: &str,
        store_id: &str,
        ttl: Duration,
        config_key: &str,
    ) -> Result<RedisLock> {
        let unreachable = |e: &dyn std::fmt::Display| Error::Redis {
            url: url.to_string(),
            from: config_key.to_string(),
            reason: format!("cannot be reached ({e})"),
        };
        let client = redis::Client::open(url).map_err(|e| unreachable(&e))?;
        let mut c = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .map_err(|e| unreachable(&e))?;
        redis::cmd("PING")
            .query::<String>(&mut c)
            .map_err(|e| unreachable(&e))?;
        Ok(RedisLock {
            client,
            url: url.to_string(),
            prefix: format!("qstore:{store_id}:"),
            ttl,
        })
    }

    fn conn(&self) -> Result<redis::Connection> {
        self.client
            .get_connection_with_timeout(Duration::from_secs(2))
            .map_err(|e| self.err(e))
    }

    fn err(&self, e: redis::RedisError) -> Error {
        Error::Redis {
            url: self.url.clone(),
            from: "the lock".into(),
            reason: format!("{e}; the cache was not changed"),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}lock:{name}", self.prefix)
    }

    /// The key prefix of this store (`qstore:<id>:`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

struct RedisGuard {
    client: redis::Client,
    /// The connection the lock was taken on, kept for `held` and the release (a connection per call cost a
    /// TCP handshake each, several per cache entry).
    conn: parking_lot::Mutex<Option<redis::Connection>>,
    key: String,
    owner: String,
    token: u64,
    held: Arc<AtomicBool>,
    /// Dropped to stop the renewal thread at once (it waits on the channel between renewals; a thread that
    /// polled a flag kept every release waiting for its next wake-up).
    stop: Option<std::sync::mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl RedisGuard {
    /// Runs `f` on the kept connection, opening a new one if there is none or it failed (once).
    fn with_conn<T>(
        &self,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        let mut slot = self.conn.lock();
        if let Some(c) = slot.as_mut()
            && let Ok(v) = f(c)
        {
            return Some(v);
        }
        *slot = self
            .client
            .get_connection_with_timeout(Duration::from_secs(2))
            .ok();
        slot.as_mut().and_then(|c| f(c).ok())
    }
}

impl Guard for RedisGuard {
    fn token(&self) -> u64 {
        self.token
    }
    fn held(&self) -> bool {
        // The renewal thread's view, confirmed by asking the server: a lock deleted or taken over since the
        // last renewal is not ours any more.
        self.held.load(Ordering::SeqCst)
            && self
                .with_conn(|c| c.get::<_, Option<String>>(&self.key))
                .flatten()
                .is_some_and(|v| v == self.owner)
    }
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        self.with_conn(|c| {
            redis::Script::new(RELEASE)
                .key(&self.key)
                .arg(&self.owner)
                .invoke::<i64>(c)
        });
    }
}

impl Lock for RedisLock {
    /// SET NX until granted (`wait`: up to that long; `None`: one try).
    fn take(&self, name: &str, wait: Option<Duration>) -> Result<Option<Box<dyn Guard>>> {
        let mut c = self.conn()?;
        let key = self.key(name);
        let token: u64 = c
            .incr(format!("{}fence", self.prefix), 1)
            .map_err(|e| self.err(e))?;
        let owner = format!(
            "{}:{}:{token}:{}",
            this_host(),
            std::process::id(),
            now_ms()
        );
        let ttl_ms = self.ttl.as_millis() as u64;
        let deadline = Instant::now() + wait.unwrap_or_default();
        let mut pause = Duration::from_millis(20);
        loop {
            let got: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&owner)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query(&mut c)
                .map_err(|e| self.err(e))?;
            if got.is_some() {
                break;
            }
            if wait.is_none() {
                return Ok(None);
            }
            if Instant::now() >= deadline {
                let holder: Option<String> = c.get(&key).map_err(|e| self.err(e))?;
                let left: i64 = c.pttl(&key).map_err(|e| self.err(e))?;
                return Err(Error::LockBusy {
                    what: format!("lock {key} at {}", self.url),
                    holder: format!(
                        "{} (for another {left} ms)",
                        holder.unwrap_or_else(|| "?".into())
                    ),
                    waited: wait.unwrap_or_default(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(250));
        }
        let held = Arc::new(AtomicBool::new(true));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let renewer = {
            let (client, key, owner) = (self.client.clone(), key.clone(), owner.clone());
            let held = held.clone();
            let every = self.ttl / 3;
            std::thread::spawn(move || {
                let mut conn: Option<redis::Connection> = None;
                // Until the guard drops its sender: renew every third of the lease.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(every)
                {
                    if conn.is_none() {
                        conn = client
                            .get_connection_with_timeout(Duration::from_secs(2))
                            .ok();
                    }
                    let renewed = conn.as_mut().and_then(|c| {
                        redis::Script::new(RENEW)
                            .key(&key)
                            .arg(&owner)
                            .arg(ttl_ms)
                            .invoke::<i64>(c)
                            .ok()
                    });
                    if renewed != Some(1) {
                        held.store(false, Ordering::SeqCst);
                        return;
                    }
                }
            })
        };
        Ok(Some(Box::new(RedisGuard {
            client: self.client.clone(),
            conn: parking_lot::Mutex::new(Some(c)),
            key,
            owner,
            token,
            held,
            stop: Some(stop),
            renewer: Some(renewer),
        })))
    }

    fn list(&self) -> Result<Vec<Held>> {
        let mut c = self.conn()?;
        let pattern = format!("{}lock:*", self.prefix);
        let keys: Vec<String> = c
            .scan_match::<_, String>(&pattern)
            .map_err(|e| self.err(e))?
            .collect::<redis::RedisResult<_>>()
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for k in keys {
            let owner: Option<String> = c.get(&k).map_err(|e| self.err(e))?;
            let left: i64 = c.pttl(&k).map_err(|e| self.err(e))?;
            let Some(owner) = owner else { continue };
            out.push(Held {
                name: k[self.prefix.len() + 5..].to_string(),
                holder_gone: owner_gone(&owner),
                age: owner_age(&owner),
                owner,
                remaining: Some(Duration::from_millis(left.max(0) as u64)),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn remove(&self, name: &str) -> Result<bool> {
        let mut c = self.conn()?;
        let n: i64 = c.del(self.key(name)).map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    fn describe(&self) -> String {
        format!("redis {} (keys {}*)", self.url, self.prefix)
    }
}

/// File locks in a directory, for one machine.
pub struct FileLock {
    dir: PathBuf,
}

impl FileLock {
    pub fn new(dir: impl AsRef<Path>) -> FileLock {
        FileLock {
            dir: dir.as_ref().to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.lock"))
    }
}

struct FileGuard {
    _file: std::fs::File,
    token: u64,
}

impl Guard for FileGuard {
    fn token(&self) -> u64 {
        self.token
    }
    fn held(&self) -> bool {
        true
    }
}

impl Lock for FileLock {
    /// `flock` until granted (`wait`: up to that long; `None`: one try).
    fn take(&self, name: &str, wait: Option<Duration>) -> Result<Option<Box<dyn Guard>>> {
        let path = self.path(name);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io("creating", d, e))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("opening the lock", &path, e))?;
        let deadline = Instant::now() + wait.unwrap_or_default();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if wait.is_none() => return Ok(None),
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::LockBusy {
                        what: format!("lock {}", path.display()),
                        holder: "another process".into(),
                        waited: wait.unwrap_or_default(),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("locking", &path, e)),
            }
        }
        // The fencing counter: `<token> <host>:<pid>` in the lock file, rewritten by each holder.
        // Bytes, not text: a damaged file (not UTF-8) must not block every writer of the entry.
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io("reading", &path, e))?;
        let text = String::from_utf8_lossy(&bytes);
        // A token that does not parse (a damaged file) counts as 0.
        let token = text
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| Error::Config {
                source_name: format!("lock {}", path.display()),
                reason:
                    "its fencing token is at its maximum; delete the lock file while no writer runs"
                        .into(),
            })?;
        let line = format!(
            "{token} {}:{}:{token}:{}\n",
            this_host(),
            std::process::id(),
            now_ms()
        );
        // Synced before the token is used: after a crash the next holder must never see an older token.
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(line.as_bytes()))
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io("writing", &path, e))?;
        Ok(Some(Box::new(FileGuard { _file: file, token })))
    }

    fn list(&self) -> Result<Vec<Held>> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let Some(name) = p
                    .strip_prefix(&self.dir)
                    .ok()
                    .and_then(|r| r.to_str())
                    .and_then(|r| r.strip_suffix(".lock"))
                else {
                    continue;
                };
                let f = std::fs::File::open(&p).map_err(|e| Error::io("opening", &p, e))?;
                // Held when someone else has it locked.
                let busy = matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock));
                if busy {
                    let owner = std::fs::read_to_string(&p).unwrap_or_default();
                    let owner = owner.split_whitespace().nth(1).unwrap_or("?").to_string();
                    out.push(Held {
                        name: name.to_string(),
                        holder_gone: owner_gone(&owner),
                        age: owner_age(&owner),
                        owner,
                        remaining: None,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn remove(&self, name: &str) -> Result<bool> {
        // A file lock dies with its holder; there is nothing to break. Removing the file would let a second
        // process lock a new file while the first still holds the old one, so it is left alone.
        let _ = name;
        Ok(false)
    }

    fn describe(&self) -> String {
        format!("file locks in {}", self.dir.display())
    }
}

/// Whether a writer holding `guard` may publish over what is published now (whose fencing token is
/// `published`): not when a newer writer already published (this one was paused past its lease), nor when its
/// lease was lost. `what` names the thing, for the error.
pub fn may_publish(guard: &dyn Guard, published: Option<u64>, what: &str) -> Result<()> {
    let token = guard.token();
    if let Some(now) = published.filter(|&t| t > token) {
        return Err(Error::Fenced {
            what: what.to_string(),
            token,
            newer: now,
        });
    }
    if !guard.held() {
        return Err(Error::LeaseLost {
            what: what.to_string(),
        });
    }
    Ok(())
}

/// The writer lock of a store's caches as its settings name it: Redis leases when a URL is configured (unless
/// the kind is `file`, or the caller only reads: `read_only`), else file locks in `dir`. One place decides
/// this for the expression and the dataset cache, so both always lock the same way. `root` is the store (its
/// id names the Redis keys).
pub fn for_settings(
    root: &Path,
    dir: &Path,
    settings: &CacheSettings,
    read_only: bool,
) -> Result<Box<dyn Lock>> {
    match backend(settings, read_only)? {
        Backend::File => Ok(Box::new(FileLock::new(dir))),
        Backend::Redis { url, from } => Ok(Box::new(RedisLock::connect(
            url,
            &crate::cache::store_id(root)?,
            settings.lease,
            from,
        )?)),
    }
}

/// Checks, before anything is written, that the writer lock [`for_settings`] would use can be had: a
/// configured Redis answers.
pub fn check(settings: &CacheSettings) -> Result<()> {
    match backend(settings, false)? {
        Backend::File => Ok(()),
        Backend::Redis { url, from } => {
            RedisLock::connect(url, "check", settings.lease, from).map(drop)
        }
    }
}

/// The kind of writer lock the settings name.
enum Backend<'a> {
    File,
    Redis {
        url: &'a str,
        /// Where the URL came from, for errors.
        from: &'a str,
    },
}

fn backend(settings: &CacheSettings, read_only: bool) -> Result<Backend<'_>> {
    match (settings.lock, &settings.redis_url) {
        (Some(LockKind::Redis), None) if !read_only => Err(Error::Config {
            source_name: "lock settings".into(),
            reason: "redis locks need a Redis URL: pass --redis redis://HOST:PORT/DB, set QSTORE_REDIS_URL, or set expression_cache.redis_url in qstore.json".into(),
        }),
        (Some(LockKind::File), _) | (_, None) => Ok(Backend::File),
        (_, Some(_)) if read_only => Ok(Backend::File),
        (_, Some((url, from))) => Ok(Backend::Redis { url, from }),
    }
}

/// The exclusive writer lock of a store (`File::lock` on `.qstore-update.lock`), released on drop. Every
/// writer of a store's data takes it: `qdump update`, `qdump all --overwrite` (for the whole build and the
/// switch), the loader's refresh.
pub struct UpdateLock {
    _file: std::fs::File,
}

impl UpdateLock {
    /// Takes the lock, waiting for the other writer to finish when `wait` is set; otherwise fails at once.
    ///
    /// A store replaced while this waited (`qdump all --overwrite` removes the old store's lock file with it)
    /// has a new lock file: the lock is taken again on the file at the path now, so it always guards the
    /// store that `root` names when it returns.
    pub fn acquire(root: &Path, wait: bool) -> Result<UpdateLock> {
        use std::os::unix::fs::MetadataExt;
        let path = root.join(crate::store::layout::UPDATE_LOCK_FILE);
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io("opening the update lock", &path, e))?;
            if wait {
                file.lock().map_err(|e| Error::io("locking", &path, e))?;
            } else {
                match file.try_lock() {
                    Ok(()) => {}
                    Err(std::fs::TryLockError::WouldBlock) => {
                        return Err(Error::io(
                            "locking",
                            &path,
                            std::io::Error::new(
                                std::io::ErrorKind::WouldBlock,
                                "another writer (qdump update, qdump all --overwrite, a loader refresh) is changing this store; wait for it (or pass --wait)",
                            ),
                        ));
                    }
                    Err(std::fs::TryLockError::Error(e)) => {
                        return Err(Error::io("locking", &path, e));
                    }
                }
            }
            let held = file
                .metadata()
                .map_err(|e| Error::io("inspecting", &path, e))?;
            match std::fs::metadata(&path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                    return Ok(UpdateLock { _file: file });
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("inspecting", &path, e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_lock_tokens_only_go_up() {
        let dir = tempfile::tempdir().unwrap();
        let lock = FileLock::new(dir.path());
        let path = dir.path().join("e.lock");
        for (text, want) in [
            (&b""[..], Some(1)),
            (b"41 host:1:41:0\n", Some(42)),
            (b"garbage", Some(1)),
            // Not UTF-8 (a damaged file): the lock still works.
            (b"\xff\xfe garbage", Some(1)),
            (b"18446744073709551614", Some(u64::MAX)),
            (b"18446744073709551615 host:1:1:1", None),
        ] {
            std::fs::write(&path, text).unwrap();
            match lock.try_acquire("e") {
                Ok(Some(g)) => assert_eq!(Some(g.token()), want, "{text:?}"),
                Ok(None) => panic!("{text:?}: nobody holds it"),
                Err(e) => {
                    assert_eq!(want, None, "{text:?}: {e}");
                    assert!(e.to_string().contains("at its maximum"), "{e}");
                }
            }
        }
    }
}
