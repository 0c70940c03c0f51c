//! The store's public API by use: entries written, found again after a reopen, bounded,
//! evicted least recently used first, cleared; and the speed a cheap chain needs.

use std::path::PathBuf;
use std::time::Instant;

use pcluster_memo::{ChainId, Found, Hasher, Key, Memo, MemoError, MemoOptions, Outputs};

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pcluster-memo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn hasher() -> Hasher {
    let chain = protocol::ChainSpec {
        name: "t".into(),
        version: "1".into(),
        modules: vec![],
        tasks: vec![],
        limits: protocol::Limits::default(),
    };
    Hasher::new(&ChainId::new(&chain, b""))
}

/// Input `i`'s outputs: `i % 3` of them, the last one big every 1000th input.
fn outputs(i: u64) -> Outputs {
    let mut o = Outputs::default();
    for j in 0..i % 3 {
        o.push(format!("out-{i}-{j}").as_bytes());
    }
    if i % 1000 == 999 {
        o.push(&vec![b'x'; 3 << 20]);
    }
    o
}

fn write(memo: &Memo, h: &Hasher, range: std::ops::Range<u64>) {
    let mut w = memo.writer().unwrap();
    for i in range {
        w.put(h.key(format!("item-{i}").as_bytes()), &outputs(i));
    }
    w.finish().unwrap();
}

fn check(memo: &Memo, h: &Hasher, range: std::ops::Range<u64>) -> usize {
    let keys: Vec<Key> = range
        .clone()
        .map(|i| h.key(format!("item-{i}").as_bytes()))
        .collect();
    let mut found = Found::default();
    memo.lookup(&keys, &mut found).unwrap();
    let mut items = found.outputs.iter();
    for &(pos, n) in &found.hits {
        let i = range.start + u64::from(pos);
        let want = outputs(i);
        assert_eq!(n as usize, want.len());
        for j in 0..i % 3 {
            assert_eq!(items.next().unwrap(), format!("out-{i}-{j}").as_bytes());
        }
        if i % 1000 == 999 {
            assert_eq!(items.next().unwrap().len(), 3 << 20);
        }
    }
    found.hits.len()
}

#[test]
fn entries_survive_a_reopen_and_big_ones_come_back_whole() {
    let dir = temp("reopen");
    let h = hasher();
    {
        let memo = Memo::open(&dir, &MemoOptions::default()).unwrap();
        write(&memo, &h, 0..5000);
        assert_eq!(check(&memo, &h, 0..6000), 5000);
        assert!(matches!(
            Memo::open(&dir, &MemoOptions::default()),
            Err(MemoError::InUse(_))
        ));
    }
    let memo = Memo::open(&dir, &MemoOptions::default()).unwrap();
    assert_eq!(check(&memo, &h, 0..6000), 5000);
    let s = memo.stats().unwrap();
    assert_eq!((s.entries, s.torn), (5000, 0));
    assert!(s.bytes > 5 * (3 << 20), "{s:?}");
    memo.clear().unwrap();
    assert_eq!(check(&memo, &h, 0..6000), 0);
    assert_eq!(memo.stats().unwrap().entries, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_bound_evicts_the_least_recently_used() {
    let dir = temp("lru");
    let h = hasher();
    let memo = Memo::open(&dir, &MemoOptions::default()).unwrap();
    write(&memo, &h, 0..998);
    write(&memo, &h, 10_000..10_998);
    // The first entries are used again: the second ones are now the least recently used.
    assert_eq!(check(&memo, &h, 0..998), 998);
    {
        let mut w = memo.writer().unwrap();
        w.flush().unwrap(); // commits the last uses
    }
    let before = memo.stats().unwrap();
    let gone = memo.gc(before.bytes / 2 + 1).unwrap();
    assert!(gone > 0);
    assert_eq!(check(&memo, &h, 0..998), 998, "recently used entries stay");
    assert!(check(&memo, &h, 10_000..10_998) < 998, "older ones go");
    assert!(memo.stats().unwrap().bytes <= before.bytes / 2 + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Cheap chains run at millions of items a second: storing and finding must keep up
/// (≥ 1 M entries/s each way on one thread, in release builds).
#[test]
fn a_million_entries_go_in_and_come_back_fast() {
    let dir = temp("speed");
    let h = hasher();
    let memo = Memo::open(&dir, &MemoOptions::default()).unwrap();
    let n = 1_000_000u64;
    let inputs: Vec<String> = (0..n).map(|i| format!("item-{i}")).collect();
    let t = Instant::now();
    let mut w = memo.writer().unwrap();
    let mut o = Outputs::default();
    for (i, input) in inputs.iter().enumerate() {
        o.clear();
        if i % 2 == 0 {
            o.push(input.as_bytes());
            o.push(input.as_bytes());
        }
        w.put(h.key(input.as_bytes()), &o);
    }
    w.finish().unwrap();
    let put = t.elapsed();
    let t = Instant::now();
    let mut found = Found::default();
    let mut hits = 0;
    for chunk in inputs.chunks(4096) {
        let keys: Vec<Key> = chunk.iter().map(|s| h.key(s.as_bytes())).collect();
        memo.lookup(&keys, &mut found).unwrap();
        hits += found.hits.len();
    }
    let get = t.elapsed();
    assert_eq!(hits as u64, n);
    eprintln!("1M entries: stored in {put:?}, found in {get:?}");
    if !cfg!(debug_assertions) {
        assert!(put.as_secs_f64() < 1.0 && get.as_secs_f64() < 1.0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
