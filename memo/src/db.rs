//! The store's tables in redb and the transactions on them: writing a segment, reading a
//! body, evicting, loading the index, and checking that every segment is whole.
//!
//! A segment's parts and its info are written in one transaction, and evicted in one: after
//! a crash at any moment a segment is whole or absent (redb's commits are atomic), so no
//! lookup ever finds half an entry. [`check`] verifies it from the files alone.

use std::collections::{BTreeMap, HashSet};

use redb::{
    Database, ReadTransaction, ReadableDatabase as _, ReadableTable, TableDefinition,
    WriteTransaction,
};

use crate::error::{MemoError, db};
use crate::index::Index;
use crate::key::Key;
use crate::segment::{Info, PART_BYTES, parts};

/// (segment, part) → bytes of the body.
pub const PARTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("parts");
/// segment → its [`Info`].
pub const INFOS: TableDefinition<u64, &[u8]> = TableDefinition::new("infos");
/// segment → the tick of its last use.
pub const TICKS: TableDefinition<u64, u64> = TableDefinition::new("ticks");
/// "tick" and "next_segment".
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// What the store knows of each segment, in memory: its last use and size on disk.
#[derive(Debug, Default)]
pub struct Segments {
    pub by_id: BTreeMap<u64, SegMeta>,
    pub bytes: u64,
    pub next: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct SegMeta {
    pub tick: u64,
    pub bytes: u64,
}

impl Segments {
    pub fn add(&mut self, seg: u64, meta: SegMeta) {
        self.bytes += meta.bytes;
        if let Some(old) = self.by_id.insert(seg, meta) {
            self.bytes -= old.bytes;
        }
    }

    pub fn remove(&mut self, seg: u64) {
        if let Some(old) = self.by_id.remove(&seg) {
            self.bytes -= old.bytes;
        }
    }

    /// The segments to evict, least recently used first, until at most `target` bytes stay.
    pub fn victims(&self, target: u64) -> Vec<u64> {
        if self.bytes <= target {
            return Vec::new();
        }
        let mut all: Vec<(u64, u64, u64)> = self
            .by_id
            .iter()
            .map(|(&s, m)| (m.tick, s, m.bytes))
            .collect();
        all.sort_unstable();
        let mut left = self.bytes;
        let mut out = Vec::new();
        for (_, s, b) in all {
            if left <= target {
                break;
            }
            left -= b;
            out.push(s);
        }
        out
    }
}

/// Creates the tables when new, and reads everything the store keeps in memory.
pub fn load(database: &Database) -> Result<(Index, Segments, u64), MemoError> {
    let w = database.begin_write().map_err(db)?;
    {
        // Opening creates them: a new store has every table.
        w.open_table(PARTS).map_err(db)?;
        w.open_table(INFOS).map_err(db)?;
        w.open_table(TICKS).map_err(db)?;
        w.open_table(META).map_err(db)?;
    }
    w.commit().map_err(db)?;
    let r = database.begin_read().map_err(db)?;
    let infos = r.open_table(INFOS).map_err(db)?;
    let ticks = r.open_table(TICKS).map_err(db)?;
    let meta = r.open_table(META).map_err(db)?;
    let mut index = Index::default();
    let mut segs = Segments::default();
    // Sized once: growing it step by step would hold two tables at the peak.
    let mut entries = 0;
    for row in infos.iter().map_err(db)? {
        let info = row.map_err(db)?.1;
        entries += info.value().get(12..16).map_or(0, |n| {
            u32::from_le_bytes(n.try_into().unwrap_or_default()) as usize
        });
    }
    index.reserve(entries);
    for row in infos.iter().map_err(db)? {
        let (seg, info) = row.map_err(db)?;
        let (seg, info) = (seg.value(), Info::decode(info.value())?);
        let tick = ticks.get(seg).map_err(db)?.map_or(0, |t| t.value());
        index.add_segment(seg, &info.keys);
        let bytes = info.stored_bytes();
        segs.add(seg, SegMeta { tick, bytes });
        segs.next = segs.next.max(seg + 1);
    }
    let get = |k: &str| -> Result<u64, MemoError> {
        Ok(meta.get(k).map_err(db)?.map_or(0, |v| v.value()))
    };
    segs.next = segs.next.max(get("next_segment")?);
    let tick = get("tick")?;
    Ok((index, segs, tick))
}

/// Writes segment `seg` (its body in parts, its info and tick) in `w`.
pub fn write_segment(
    w: &WriteTransaction,
    seg: u64,
    body: &[u8],
    keys: Vec<Key>,
    tick: u64,
) -> Result<Info, MemoError> {
    let info = Info {
        parts: parts(body.len()),
        bytes: body.len() as u64,
        keys,
    };
    {
        let mut p = w.open_table(PARTS).map_err(db)?;
        if body.is_empty() {
            p.insert((seg, 0), &[][..]).map_err(db)?;
        }
        for (i, chunk) in body.chunks(PART_BYTES).enumerate() {
            p.insert((seg, i as u32), chunk).map_err(db)?;
        }
    }
    w.open_table(INFOS)
        .map_err(db)?
        .insert(seg, &info.encode()[..])
        .map_err(db)?;
    w.open_table(TICKS)
        .map_err(db)?
        .insert(seg, tick)
        .map_err(db)?;
    Ok(info)
}

/// Records the counters that must survive a restart.
pub fn write_meta(w: &WriteTransaction, tick: u64, next_segment: u64) -> Result<(), MemoError> {
    let mut m = w.open_table(META).map_err(db)?;
    m.insert("tick", tick).map_err(db)?;
    m.insert("next_segment", next_segment).map_err(db)?;
    Ok(())
}

/// Sets the last use of `segs` (those still there) to `tick`.
pub fn touch(w: &WriteTransaction, segs: &HashSet<u64>, tick: u64) -> Result<(), MemoError> {
    let mut t = w.open_table(TICKS).map_err(db)?;
    for &s in segs {
        if t.get(s).map_err(db)?.is_some() {
            t.insert(s, tick).map_err(db)?;
        }
    }
    Ok(())
}

/// Removes segment `seg` whole; its keys, to forget them in the index.
pub fn evict(w: &WriteTransaction, seg: u64) -> Result<Vec<Key>, MemoError> {
    let keys = match w.open_table(INFOS).map_err(db)?.remove(seg).map_err(db)? {
        Some(v) => Info::decode(v.value())?.keys,
        None => Vec::new(),
    };
    w.open_table(TICKS).map_err(db)?.remove(seg).map_err(db)?;
    let mut p = w.open_table(PARTS).map_err(db)?;
    p.retain_in((seg, 0)..=(seg, u32::MAX), |_, _| false)
        .map_err(db)?;
    Ok(keys)
}

/// Empties every table.
pub fn clear(w: &WriteTransaction) -> Result<(), MemoError> {
    w.open_table(PARTS)
        .map_err(db)?
        .retain(|_, _| false)
        .map_err(db)?;
    w.open_table(INFOS)
        .map_err(db)?
        .retain(|_, _| false)
        .map_err(db)?;
    w.open_table(TICKS)
        .map_err(db)?
        .retain(|_, _| false)
        .map_err(db)?;
    Ok(())
}

/// A segment's body as read: one part borrowed from redb's cache, or several joined.
pub enum Body<'a> {
    One(redb::AccessGuard<'a, &'static [u8]>),
    Joined(Vec<u8>),
}

impl Body<'_> {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Body::One(g) => g.value(),
            Body::Joined(v) => v,
        }
    }
}

/// The body of `seg`, or `None` when it was evicted meanwhile.
pub fn body<'a>(
    parts: &'a redb::ReadOnlyTable<(u64, u32), &'static [u8]>,
    seg: u64,
) -> Result<Option<Body<'a>>, MemoError> {
    let mut range = parts.range((seg, 0)..=(seg, u32::MAX)).map_err(db)?;
    let Some(first) = range.next() else {
        return Ok(None);
    };
    let first = first.map_err(db)?.1;
    let Some(second) = range.next() else {
        return Ok(Some(Body::One(first)));
    };
    let mut v = first.value().to_vec();
    v.extend_from_slice(second.map_err(db)?.1.value());
    for p in range {
        v.extend_from_slice(p.map_err(db)?.1.value());
    }
    Ok(Some(Body::Joined(v)))
}

/// Segments whose parts do not match their info, and parts of no segment: none, unless the
/// files were damaged, since both are written and removed in one transaction.
pub fn check(r: &ReadTransaction) -> Result<u64, MemoError> {
    let infos = r.open_table(INFOS).map_err(db)?;
    let parts = r.open_table(PARTS).map_err(db)?;
    let mut seen: BTreeMap<u64, (u32, u64)> = BTreeMap::new();
    for row in parts.iter().map_err(db)? {
        let (k, v) = row.map_err(db)?;
        let e = seen.entry(k.value().0).or_default();
        e.0 += 1;
        e.1 += v.value().len() as u64;
    }
    let mut torn = 0;
    for row in infos.iter().map_err(db)? {
        let (seg, info) = row.map_err(db)?;
        let info = Info::decode(info.value())?;
        let (n, bytes) = seen.remove(&seg.value()).unwrap_or_default();
        if n != info.parts || bytes != info.bytes {
            torn += 1;
        }
    }
    // Parts of a segment without info.
    Ok(torn + seen.len() as u64)
}
