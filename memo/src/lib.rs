//! pcluster's result store: each input's outputs kept under a key made of the chain's
//! identity and the input's bytes ([`key`]), so that a rerun hands over what it already
//! computed instead of sending it to a node.
//!
//! A store is a directory holding one redb database. Entries are written in segments
//! ([`segment`]) by a thread of its own ([`MemoWriter`]), in large transactions, and found
//! through an in-memory index rebuilt at open; lookups ([`Memo::lookup`]) read from any
//! thread while the writer writes. A crash at any moment leaves every entry whole or absent.
//! The store is bounded ([`MemoOptions::limit_bytes`]): past it, the segments least recently
//! used are evicted whole (a last-use tick per segment, set by lookups and writes).
//!
//! Nothing here prints or spawns processes; every failure is a [`MemoError`].

mod db;
mod error;
mod index;
pub mod key;
pub mod segment;
mod writer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use redb::{Database, ReadableDatabase as _};

pub use error::MemoError;
pub use key::{ChainId, Hasher, Key};
pub use segment::Outputs;
pub use writer::MemoWriter;

/// The database file in a store's directory.
pub const FILE: &str = "memo.redb";
/// The default bound of a store.
pub const DEFAULT_LIMIT_BYTES: u64 = 1 << 30;

/// How a store is opened.
#[derive(Clone, Debug)]
pub struct MemoOptions {
    /// Bytes the store may hold on disk (entries and their keys); past it the least recently
    /// used segments go.
    pub limit_bytes: u64,
    /// Bytes of redb's page cache.
    pub cache_bytes: usize,
}

impl Default for MemoOptions {
    fn default() -> Self {
        MemoOptions {
            limit_bytes: DEFAULT_LIMIT_BYTES,
            cache_bytes: 32 << 20,
        }
    }
}

/// What a store holds ([`Memo::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Entries that a lookup finds.
    pub entries: u64,
    /// Segments (entries written together).
    pub segments: u64,
    /// Bytes of entries and keys.
    pub bytes: u64,
    /// The bound.
    pub limit_bytes: u64,
    /// Segments with parts missing, or parts of no segment: 0 unless the files were damaged.
    pub torn: u64,
    /// The database file's size.
    pub file_bytes: u64,
}

/// Hits of one [`Memo::lookup`]: which keys were found and their outputs.
#[derive(Debug, Default)]
pub struct Found {
    /// `(position of the key in the lookup, outputs it had)`, in position order.
    pub hits: Vec<(u32, u32)>,
    /// Every hit's outputs, one after the other.
    pub outputs: protocol::Packed,
}

impl Found {
    pub fn clear(&mut self) {
        self.hits.clear();
        self.outputs.clear();
    }
}

pub(crate) struct Shared {
    pub db: Database,
    pub path: PathBuf,
    pub index: RwLock<index::Index>,
    pub segs: Mutex<db::Segments>,
    /// Bumped at each commit: segments used since carry the new value.
    pub tick: AtomicU64,
    /// Segments found by lookups since the last commit, whose tick the writer renews.
    pub touched: Mutex<HashSet<u64>>,
    pub limit: AtomicU64,
    /// Whether a writer runs (one at a time).
    pub writing: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An open store; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Memo {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memo")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl Memo {
    /// Opens the store in `dir` (created when missing) and loads its index.
    ///
    /// # Errors
    /// The directory cannot be made, the store is open elsewhere, or it is no store.
    pub fn open(dir: &Path, options: &MemoOptions) -> Result<Memo, MemoError> {
        std::fs::create_dir_all(dir).map_err(|source| MemoError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE);
        let database = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => MemoError::InUse(dir.to_path_buf()),
                e => MemoError::Open {
                    path: path.clone(),
                    message: e.to_string(),
                },
            })?;
        let (index, segs, tick) = db::load(&database)?;
        Ok(Memo {
            shared: Arc::new(Shared {
                db: database,
                path,
                index: RwLock::new(index),
                segs: Mutex::new(segs),
                tick: AtomicU64::new(tick + 1),
                touched: Mutex::default(),
                limit: AtomicU64::new(options.limit_bytes),
                writing: false.into(),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Looks `keys` up; the hits go to `found` (cleared first).
    ///
    /// # Errors
    /// A read of the database failed, or a stored value does not decode.
    pub fn lookup(&self, keys: &[Key], found: &mut Found) -> Result<(), MemoError> {
        found.clear();
        let locs: Vec<(u32, u64, index::Loc)> = {
            let index = self
                .shared
                .index
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if index.is_empty() {
                return Ok(());
            }
            keys.iter()
                .enumerate()
                .filter_map(|(i, k)| index.get(*k).map(|l| (i as u32, (k.0 >> 64) as u64, l)))
                .collect()
        };
        if locs.is_empty() {
            return Ok(());
        }
        let r = self.shared.db.begin_read().map_err(error::db)?;
        let parts = r.open_table(db::PARTS).map_err(error::db)?;
        let mut touched = Vec::new();
        let mut cur: Option<(u64, Option<db::Body<'_>>)> = None;
        for (pos, hi, loc) in locs {
            if cur.as_ref().is_none_or(|(s, _)| *s != loc.seg()) {
                touched.push(loc.seg());
                cur = Some((loc.seg(), db::body(&parts, loc.seg())?));
            }
            // Evicted since the index was read: a miss.
            let Some((_, Some(body))) = &cur else {
                continue;
            };
            let (stored_hi, lens, data) = segment::entry(body.bytes(), loc.idx())?;
            // Another key with the same low bits: a miss.
            if stored_hi != hi {
                continue;
            }
            let n = segment::append_outputs(lens, data, &mut found.outputs);
            found.hits.push((pos, n));
        }
        lock(&self.shared.touched).extend(touched);
        Ok(())
    }

    /// Starts the writer thread: entries given to it are stored in the background.
    ///
    /// # Errors
    /// A writer of this store is running already.
    pub fn writer(&self) -> Result<MemoWriter, MemoError> {
        writer::MemoWriter::start(self.shared.clone())
    }

    /// What the store holds, with a check that every segment is whole.
    ///
    /// # Errors
    /// A read failed.
    pub fn stats(&self) -> Result<Stats, MemoError> {
        let r = self.shared.db.begin_read().map_err(error::db)?;
        let torn = db::check(&r)?;
        let entries = self
            .shared
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64;
        let segs = lock(&self.shared.segs);
        Ok(Stats {
            entries,
            segments: segs.by_id.len() as u64,
            bytes: segs.bytes,
            limit_bytes: self.shared.limit.load(Ordering::Relaxed),
            torn,
            file_bytes: std::fs::metadata(&self.shared.path).map_or(0, |m| m.len()),
        })
    }

    /// Evicts the least recently used segments until at most `limit_bytes` stay; how many
    /// segments went.
    ///
    /// # Errors
    /// A write failed (nothing was evicted then).
    pub fn gc(&self, limit_bytes: u64) -> Result<u64, MemoError> {
        writer::evict_to(&self.shared, limit_bytes)
    }

    /// Removes every entry.
    ///
    /// # Errors
    /// A write failed (the store is unchanged then).
    pub fn clear(&self) -> Result<(), MemoError> {
        let w = self.shared.db.begin_write().map_err(error::db)?;
        db::clear(&w)?;
        w.commit().map_err(error::db)?;
        self.shared
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let mut segs = lock(&self.shared.segs);
        let next = segs.next;
        *segs = db::Segments {
            next,
            ..Default::default()
        };
        Ok(())
    }
}
