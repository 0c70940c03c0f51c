//! `pcluster run --memo DIR`: the result store on the run's path.
//!
//! - **Lookup**, on a thread of its own between the reader and the feeding loop: each batch
//!   read is hashed and looked up; the inputs found become answers (`Root::feed_answered`:
//!   the root hands their outputs over in their place, in order with `--keep-order`, tagged
//!   with `--tag`, counted by the joblog) and only the others go to the nodes.
//! - **Keys of the inputs sent** wait in [`MissKeys`] (bounded in bytes) until the input
//!   completes.
//! - **Storing**, in the output sink ([`MemoSink`]): an input's outputs are gathered as the
//!   root hands them over (outputs, then completion, per input); a completion without
//!   failure stores them through the store's writer thread. Failed inputs are not stored.
//!
//! The store is a cache: a lookup that fails is a miss (said once on stderr), and an error
//! of the writer stops storing (said once) without failing the run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ::memo::{ChainId, Found, Hasher, Key, Memo, MemoOptions, MemoWriter, Outputs};
use protocol::Packed;
use protocol::gate::{ByteGate, Held};
use root::{Answers, InputDone, ItemId};
use tokio::sync::mpsc;

use super::lines::LineRuns;
use super::reader::{Read_, ReadBatch};

/// `--memo` and `--memo-mb`.
#[derive(clap::Args, Debug, Clone)]
pub struct MemoArgs {
    /// Keep each input's outputs in a store in DIR, keyed by the chain (modules, functions,
    /// args, graph, limits) and the input's bytes: an input found there is not run again,
    /// its stored outputs are written instead. Failed inputs are not stored.
    #[arg(long, value_name = "DIR")]
    pub memo: Option<PathBuf>,
    /// Bound of the --memo store on disk; past it the least recently used entries go.
    #[arg(long, value_name = "MIB", default_value_t = ::memo::DEFAULT_LIMIT_BYTES >> 20)]
    pub memo_mb: u64,
}

/// Bytes of stored outputs looked up and not yet handed to the root.
const HITS_AHEAD: u64 = 8 << 20;
/// Bytes of keys of inputs sent and not yet complete (≈ 20 bytes each).
const KEYS_BYTES: u64 = 64 << 20;

/// What the summary says.
#[derive(Debug, Default)]
pub struct MemoCounts {
    pub hits: AtomicU64,
    pub stored: AtomicU64,
    /// A lookup or a write failed (said once).
    lookup_failed: AtomicBool,
}

/// The store of one run.
pub struct RunMemo {
    memo: Memo,
    hasher: Hasher,
    pub keys: Arc<MissKeys>,
    pub counts: Arc<MemoCounts>,
    pub dir: PathBuf,
}

impl RunMemo {
    /// Opens `--memo` for `chain`, before any node is contacted.
    ///
    /// # Errors
    /// The store cannot be opened (in use, not a store, no such directory and no right to
    /// make it).
    pub fn open(args: &MemoArgs, chain: &protocol::ChainSpec) -> anyhow::Result<Option<Self>> {
        let Some(dir) = &args.memo else {
            return Ok(None);
        };
        if args.memo_mb == 0 {
            anyhow::bail!("--memo-mb must be at least 1 (MiB)");
        }
        let options = MemoOptions {
            limit_bytes: args.memo_mb << 20,
            ..MemoOptions::default()
        };
        let memo = Memo::open(dir, &options)?;
        Ok(Some(RunMemo {
            memo,
            hasher: Hasher::new(&ChainId::new(chain, b"")),
            keys: Arc::new(MissKeys::new()),
            counts: Arc::default(),
            dir: dir.clone(),
        }))
    }

    /// The sink's part: stores what completes.
    ///
    /// # Errors
    /// A writer of this store runs already.
    pub fn sink(&self) -> anyhow::Result<MemoSink> {
        Ok(MemoSink {
            writer: Some(self.memo.writer()?),
            keys: self.keys.clone(),
            counts: self.counts.clone(),
            cur: None,
            outputs: Outputs::default(),
            said: false,
        })
    }

    /// Puts the lookup between the reader (`rx`) and the feeding loop (the channel returned).
    pub fn spawn_lookup(&self, mut rx: mpsc::Receiver<Read_>) -> mpsc::Receiver<Read_> {
        let (tx, out) = mpsc::channel(4);
        let (memo, hasher) = (self.memo.clone(), self.hasher.clone());
        let counts = self.counts.clone();
        let gate = ByteGate::new(HITS_AHEAD);
        let spawned = std::thread::Builder::new()
            .name("pcluster-memo-lookup".into())
            .spawn(move || {
                let mut found = Found::default();
                while let Some(r) = rx.blocking_recv() {
                    let r = match r {
                        Read_::Batch(b) => {
                            match split(&memo, &hasher, &counts, &gate, &mut found, b) {
                                Some(m) => Read_::Memo(m),
                                None => return, // the gate closed: the run ends
                            }
                        }
                        other => other,
                    };
                    if tx.blocking_send(r).is_err() {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("pcluster run: --memo: cannot start the lookup thread ({e}); no lookups");
        }
        out
    }
}

/// A batch read, split by the store: the inputs found and those to run.
#[derive(Debug)]
pub struct MemoBatch {
    /// The inputs not found, in order.
    pub items: Packed,
    /// Every input's line (found ones included: they get ids too).
    pub lines: LineRuns,
    pub answers: Answers,
    /// Keys of `items`, and their positions among all inputs when some were found.
    pub keys: Vec<Key>,
    pub positions: Option<Vec<u32>>,
    /// The read-ahead's bytes and the found outputs', given back once fed.
    #[allow(dead_code)] // Guards: only their drop matters.
    pub held: (Held, Option<Held>),
}

impl MemoBatch {
    pub fn count(&self) -> u64 {
        (self.items.len() + self.answers.hits.len()) as u64
    }
}

fn split(
    memo: &Memo,
    hasher: &Hasher,
    counts: &MemoCounts,
    gate: &Arc<ByteGate>,
    found: &mut Found,
    b: ReadBatch,
) -> Option<MemoBatch> {
    let ReadBatch { items, lines, held } = b;
    let keys: Vec<Key> = items.iter().map(|i| hasher.key(i)).collect();
    if let Err(e) = memo.lookup(&keys, found) {
        found.clear();
        if !counts.lookup_failed.swap(true, Ordering::Relaxed) {
            eprintln!("pcluster run: --memo: {e}; those inputs run");
        }
    }
    if found.hits.is_empty() {
        return Some(MemoBatch {
            items,
            lines,
            answers: Answers::default(),
            keys,
            positions: None,
            held: (held, None),
        });
    }
    counts
        .hits
        .fetch_add(found.hits.len() as u64, Ordering::Relaxed);
    let hit_bytes = gate.acquire(found.outputs.bytes() as u64 + 1)?;
    let misses = items.len() - found.hits.len();
    let mut left = Packed::with_capacity(misses, items.bytes());
    let (mut miss_keys, mut positions) = (Vec::with_capacity(misses), Vec::with_capacity(misses));
    let mut hits = found.hits.iter().map(|&(p, _)| p).peekable();
    for (pos, item) in items.iter().enumerate() {
        let pos = pos as u32;
        if hits.peek() == Some(&pos) {
            hits.next();
            continue;
        }
        left.push(item);
        miss_keys.push(keys[pos as usize]);
        positions.push(pos);
    }
    let answers = Answers {
        hits: std::mem::take(&mut found.hits),
        outputs: std::mem::take(&mut found.outputs),
    };
    Some(MemoBatch {
        items: left,
        lines,
        answers,
        keys: miss_keys,
        positions: Some(positions),
        held: (held, Some(hit_bytes)),
    })
}

/// Keys of the inputs sent to nodes, by id, until each completes.
pub struct MissKeys {
    batches: Mutex<BTreeMap<u64, KeyBatch>>,
    gate: Arc<ByteGate>,
}

struct KeyBatch {
    keys: Vec<Key>,
    /// Positions of `keys` among the batch's ids (`None`: key `i` is id `first + i`).
    positions: Option<Vec<u32>>,
    left: usize,
    #[allow(dead_code)] // A guard: only its drop matters.
    held: Held,
}

impl MissKeys {
    fn new() -> MissKeys {
        MissKeys {
            batches: Mutex::default(),
            gate: ByteGate::new(KEYS_BYTES),
        }
    }

    /// Keeps the keys of a batch whose first input gets id `first`; waits for room. False
    /// once the run ends.
    pub async fn register(&self, first: u64, keys: Vec<Key>, positions: Option<Vec<u32>>) -> bool {
        if keys.is_empty() {
            return true;
        }
        let bytes = (keys.len() * 20) as u64;
        let Some(held) = self.gate.acquire_async(bytes).await else {
            return false;
        };
        let left = keys.len();
        let batch = KeyBatch {
            keys,
            positions,
            left,
            held,
        };
        self.lock().insert(first, batch);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, KeyBatch>> {
        self.batches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The key of input `id` if it was sent to a node (not found in the store), once.
    pub fn take(&self, id: u64) -> Option<Key> {
        let mut m = self.lock();
        let (&first, batch) = m.range_mut(..=id).next_back()?;
        let pos = u32::try_from(id - first).ok()?;
        let i = match &batch.positions {
            None => Some(pos as usize).filter(|&i| i < batch.keys.len()),
            Some(p) => p.binary_search(&pos).ok(),
        }?;
        let key = batch.keys[i];
        batch.left -= 1;
        if batch.left == 0 {
            m.remove(&first);
        }
        Some(key)
    }
}

/// The output sink's part: gathers each input's outputs and stores those of inputs that
/// completed without failure.
pub struct MemoSink {
    writer: Option<MemoWriter>,
    keys: Arc<MissKeys>,
    counts: Arc<MemoCounts>,
    /// The input whose outputs are being gathered, and its key (`None`: not to store).
    cur: Option<(ItemId, Option<Key>)>,
    outputs: Outputs,
    /// The writer's error was said.
    said: bool,
}

impl MemoSink {
    fn begin(&mut self, input: ItemId) {
        self.outputs.clear();
        self.cur = Some((input, self.keys.take(input.0)));
    }

    #[inline]
    pub fn output(&mut self, input: ItemId, item: &[u8]) {
        if self.cur.is_none_or(|(i, _)| i != input) {
            self.begin(input);
        }
        if let Some((_, Some(_))) = self.cur {
            self.outputs.push(item);
        }
    }

    /// `d`'s outputs were all handed over: stores them unless something failed.
    pub fn done(&mut self, d: &InputDone) {
        if self.cur.is_none_or(|(i, _)| i != d.input) {
            self.begin(d.input);
        }
        if let (Some((_, Some(key))), Some(w)) = (self.cur.take(), self.writer.as_mut())
            && d.failed == 0
        {
            w.put(key, &self.outputs);
            self.counts.stored.fetch_add(1, Ordering::Relaxed);
        }
        self.outputs.clear();
    }

    /// Hands a segment to the writer thread when it waited long enough; says an error once.
    pub fn idle(&mut self) {
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        w.tick();
        if !self.said
            && let Some(e) = w.error()
        {
            self.said = true;
            eprintln!("pcluster run: --memo: {e}; outputs are no longer stored");
        }
    }

    pub fn room(&self) -> Option<root::Room> {
        self.writer.as_ref().and_then(MemoWriter::room)
    }

    /// Stores what is gathered, committed, before the run ends.
    pub fn finish(&mut self) {
        if let Some(w) = self.writer.take()
            && let Err(e) = w.finish()
            && !self.said
        {
            eprintln!("pcluster run: --memo: {e}; some outputs were not stored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_found_by_id_once_and_hits_have_none() {
        let k = MissKeys::new();
        assert!(k.register(10, vec![Key(1), Key(2)], None).await);
        assert!(k.register(12, vec![Key(3)], Some(vec![2])).await);
        assert_eq!(k.take(11), Some(Key(2)));
        assert_eq!(k.take(12), None, "a hit at position 0");
        assert_eq!(k.take(14), Some(Key(3)));
        assert_eq!(k.take(10), Some(Key(1)));
        assert!(k.lock().is_empty(), "batches go once all taken");
        assert_eq!(k.gate.held(), 0);
        assert_eq!(k.take(10), None);
    }
}
