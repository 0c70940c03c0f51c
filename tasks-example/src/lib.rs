//! Example pcluster tasks, built into `tasks_example.wasm`:
//! - pipeline-cluster's README chain: [`simple_task`], [`generator_task`], `drop_item`
//!   ([`DropItem`]);
//! - the benchmark's tasks: [`w1_identity`], [`w1_duplicate`], [`w1_drop_odd`], `w2_cpu`
//!   ([`W2Cpu`]), with their logic also callable natively ([`trailing_number`],
//!   [`w2_cpu_native`]);
//! - tasks that misbehave on purpose, for the robustness tests: [`panic_task`],
//!   [`spin_task`], [`hog_task`], and [`fan_out`], which emits as many items as it is told;
//! - W3's fan-out [`fan_seeds`] (item `n` → the seeds `0` … `n-1`, for `w2_cpu`);
//! - two small ones showing args and JSON items: [`prefix_task`] and [`point_mirror`].
//!
//! Every task function stays a plain function: the benchmark and the unit tests call them
//! natively, and `pcluster_task::testing` runs them through the same glue as the wasm exports.

use std::fmt::Write as _;
use std::hint::black_box;

use pcluster_task::{Emitter, FromItem, Json, Stateful, info, stateful_task, task};
use serde::{Deserialize, Serialize};

task! {
    /// Logs the item and passes it on.
    pub fn simple_task(item: &str) -> &str {
        info!("simple_task: {item}");
        item
    }
}

task! {
    /// Logs the item and emits it twice: a generator.
    pub fn generator_task(item: &str) -> [&str; 2] {
        info!("generator_task: {item}");
        [item, item]
    }
}

/// `drop_item`: logs the message it was set up with and drops every item.
#[derive(Debug)]
pub struct DropItem {
    message: String,
}

impl Stateful for DropItem {
    fn init(args: &[u8]) -> Result<Self, String> {
        let message = String::from_utf8(args.to_vec())
            .map_err(|e| format!("drop_item: the message is not UTF-8: {e}"))?;
        Ok(DropItem { message })
    }

    fn process(&mut self, _item: &[u8], _out: &mut Emitter) -> Result<(), String> {
        info!("{}", self.message);
        Ok(())
    }
}

stateful_task!(pub drop_item, DropItem);

/// `fail_first`: passes every item on, except that an item starting with `retry:` fails the
/// first time this instance sees it (a flaky step, for the tests of `--retries`).
#[derive(Debug, Default)]
pub struct FailFirst {
    seen: std::collections::HashSet<Vec<u8>>,
}

impl Stateful for FailFirst {
    fn init(_args: &[u8]) -> Result<Self, String> {
        Ok(FailFirst::default())
    }

    fn process(&mut self, item: &[u8], out: &mut Emitter) -> Result<(), String> {
        if item.starts_with(b"retry:") && self.seen.insert(item.to_vec()) {
            return Err("failing the first time".into());
        }
        out.emit(item);
        Ok(())
    }
}

stateful_task!(pub fail_first, FailFirst);

task! {
    /// Emits the item as it is, straight from the input buffer.
    pub fn w1_identity(item: &[u8]) -> &[u8] {
        item
    }
}

task! {
    /// Emits the item twice.
    pub fn w1_duplicate(item: &[u8]) -> [&[u8]; 2] {
        [item, item]
    }
}

task! {
    /// Keeps the item if the integer after its last `-` (or the whole item, without a `-`)
    /// is even, drops it if odd; an item without one fails.
    pub fn w1_drop_odd(item: &[u8]) -> Result<Option<&[u8]>, String> {
        // One log line per instance, so a run shows which workers took part without paying
        // for a log call per item.
        static FIRST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
        if FIRST.swap(false, std::sync::atomic::Ordering::Relaxed) {
            info!("w1_drop_odd: first item {}", String::from_utf8_lossy(item));
        }
        match trailing_number(item) {
            Some(n) => Ok((n % 2 == 0).then_some(item)),
            None => Err(format!(
                "no integer after the last '-' in {:?}",
                String::from_utf8_lossy(item)
            )),
        }
    }
}

/// The decimal integer after the last `-` of `item` (all of it, without a `-`), if it is one.
#[must_use]
pub fn trailing_number(item: &[u8]) -> Option<u64> {
    let digits = item
        .rsplit(|&b| b == b'-')
        .next()
        .filter(|d| !d.is_empty())?;
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Iterations of `w2_cpu` when its args are empty.
pub const W2_DEFAULT_ITERATIONS: u64 = 100_000;

/// The work of `w2_cpu`: `iterations` rounds of an LCG step and an xorshift.
#[must_use]
pub fn w2_cpu_native(seed: u64, iterations: u64) -> u64 {
    let mut x = seed;
    for _ in 0..iterations {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        x ^= x >> 33;
    }
    x
}

/// `w2_cpu`: CPU-bound work per item. The item is a decimal `u64` seed, the output
/// [`w2_cpu_native`] of it in decimal; the args are the iteration count as text (empty:
/// [`W2_DEFAULT_ITERATIONS`]), checked once at setup.
#[derive(Debug)]
pub struct W2Cpu {
    iterations: u64,
}

impl Stateful for W2Cpu {
    fn init(args: &[u8]) -> Result<Self, String> {
        let iterations = if args.is_empty() {
            W2_DEFAULT_ITERATIONS
        } else {
            u64::from_item(args).map_err(|e| format!("w2_cpu: args: {e}"))?
        };
        Ok(W2Cpu { iterations })
    }

    fn process(&mut self, item: &[u8], out: &mut Emitter) -> Result<(), String> {
        let seed = u64::from_item(item)?;
        out.emit(w2_cpu_native(seed, self.iterations));
        Ok(())
    }
}

stateful_task!(pub w2_cpu, W2Cpu);

task! {
    /// Panics when the item contains `panic`, else passes it on.
    pub fn panic_task(item: &str) -> &str {
        assert!(!item.contains("panic"), "panic_task: the item {item:?} asked for a panic");
        item
    }
}

task! {
    /// Never returns: only the host's deadline stops it.
    pub fn spin_task(item: &[u8]) {
        let mut spins = item.len() as u64;
        loop {
            // Opaque to the optimizer, so the loop cannot be proven pointless and removed.
            spins = black_box(spins.wrapping_add(1));
        }
    }
}

task! {
    /// Allocates 1 MiB after 1 MiB, writing to every page, until the host's memory cap stops it.
    pub fn hog_task(_item: &[u8]) {
        const CHUNK: usize = 1 << 20;
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; CHUNK];
            for page in chunk.chunks_mut(4096) {
                page[0] = 1;
            }
            hoard.push(black_box(chunk));
        }
    }
}

task! {
    /// For an item `N` (decimal), emits the N items `N-0`, `N-1`, .., `N-(N-1)`: distinct, so
    /// a test can tell a lost or doubled output.
    pub fn fan_out(n: u64, out: &mut Emitter) {
        let mut line = String::new();
        for i in 0..n {
            line.clear();
            write!(line, "{n}-{i}").expect("writing to a String cannot fail");
            out.emit(line.as_str());
        }
    }
}

task! {
    /// W3's fan-out: for an item `N` (decimal), emits the N seeds `0`, `1`, .., `N-1`.
    pub fn fan_seeds(n: u64, out: &mut Emitter) {
        let mut line = String::new();
        for i in 0..n {
            line.clear();
            write!(line, "{i}").expect("writing to a String cannot fail");
            out.emit(line.as_str());
        }
    }
}

task! {
    /// Emits the task's args followed by the item: a plain task reading its args.
    pub fn prefix_task(item: &[u8]) -> Vec<u8> {
        [pcluster_task::args(), item].concat()
    }
}

/// A point, as the JSON items of [`point_mirror`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Point {
    /// Horizontal coordinate.
    pub x: i64,
    /// Vertical coordinate.
    pub y: i64,
}

task! {
    /// Mirrors a JSON point `{"x":1,"y":2}` on the diagonal: `{"x":2,"y":1}`.
    pub fn point_mirror(p: Json<Point>) -> Json<Point> {
        Json(Point { x: p.0.y, y: p.0.x })
    }
}

#[cfg(test)]
mod tests {
    use pcluster_task::Level;
    use pcluster_task::testing::{self, Outcome};

    use super::*;

    fn texts(outcome: &Outcome) -> Vec<&str> {
        assert_eq!(outcome.error, None, "{outcome:?}");
        outcome.texts()
    }

    #[test]
    fn readme_chain() {
        let simple = testing::run(&simple_task::TASK, b"item-1");
        assert_eq!(texts(&simple), ["item-1"]);
        assert_eq!(
            simple.logs,
            [(Level::Info, "simple_task: item-1".to_owned())]
        );

        let generated = testing::run(&generator_task::TASK, b"item-1");
        assert_eq!(texts(&generated), ["item-1", "item-1"]);
        assert_eq!(
            generated.logs,
            [(Level::Info, "generator_task: item-1".to_owned())]
        );

        testing::init(&drop_item::TASK, b"dropping it").unwrap();
        let dropped = testing::run(&drop_item::TASK, b"item-1");
        assert!(texts(&dropped).is_empty());
        assert_eq!(dropped.logs, [(Level::Info, "dropping it".to_owned())]);
        assert!(testing::init(&drop_item::TASK, b"\xff").is_err());
    }

    #[test]
    fn w1_tasks() {
        assert_eq!(w1_identity(b"x-1"), b"x-1");
        assert_eq!(texts(&testing::run(&w1_identity::TASK, b"x-1")), ["x-1"]);
        assert_eq!(
            texts(&testing::run(&w1_duplicate::TASK, b"x-1")),
            ["x-1", "x-1"]
        );
        assert_eq!(
            texts(&testing::run(&w1_drop_odd::TASK, b"item-12")),
            ["item-12"]
        );
        assert!(texts(&testing::run(&w1_drop_odd::TASK, b"item-13")).is_empty());
        let error = testing::run(&w1_drop_odd::TASK, b"item-").error;
        assert_eq!(
            error.as_deref(),
            Some("no integer after the last '-' in \"item-\"")
        );
    }

    #[test]
    fn trailing_numbers() {
        assert_eq!(trailing_number(b"a-b-42"), Some(42));
        assert_eq!(trailing_number(b"7"), Some(7));
        assert_eq!(trailing_number(b"a--0"), Some(0));
        assert_eq!(trailing_number(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"a-",
            b"a-1x",
            b"a- 1",
            b"18446744073709551616",
            b"abc",
        ] {
            assert_eq!(
                trailing_number(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn w2_known_values() {
        assert_eq!(w2_cpu_native(0, 100_000), 16_231_946_794_301_659_298);
        assert_eq!(w2_cpu_native(1, 100_000), 14_251_438_313_999_831_293);
        assert_eq!(w2_cpu_native(199, 100_000), 5_000_280_397_718_726_154);
        assert_eq!(w2_cpu_native(5, 0), 5);

        // Empty args: the default iteration count.
        testing::init(&w2_cpu::TASK, b"").unwrap();
        assert_eq!(
            texts(&testing::run(&w2_cpu::TASK, b"0")),
            ["16231946794301659298"]
        );
        assert_eq!(
            texts(&testing::run(&w2_cpu::TASK, b"1")),
            ["14251438313999831293"]
        );
        assert_eq!(
            texts(&testing::run(&w2_cpu::TASK, b"199")),
            ["5000280397718726154"]
        );
        assert!(testing::run(&w2_cpu::TASK, b"-1").error.is_some());
    }

    #[test]
    fn w2_args() {
        testing::init(&w2_cpu::TASK, b"3").unwrap();
        let expected = w2_cpu_native(9, 3).to_string();
        assert_eq!(
            texts(&testing::run(&w2_cpu::TASK, b"9")),
            [expected.as_str()]
        );
        let error = testing::init(&w2_cpu::TASK, b"lots").unwrap_err();
        assert_eq!(error, "w2_cpu: args: item is not u64: \"lots\"");
    }

    #[test]
    fn panic_task_panics_on_request() {
        assert_eq!(texts(&testing::run(&panic_task::TASK, b"calm")), ["calm"]);
        let error = testing::run(&panic_task::TASK, b"please panic")
            .error
            .unwrap();
        assert!(error.starts_with("panicked at "), "{error}");
        assert!(error.ends_with("panic_task: the item \"please panic\" asked for a panic"));
    }

    #[test]
    fn fan_out_emits_n_distinct_items() {
        assert_eq!(
            texts(&testing::run(&fan_out::TASK, b"3")),
            ["3-0", "3-1", "3-2"]
        );
        assert!(texts(&testing::run(&fan_out::TASK, b"0")).is_empty());
        assert_eq!(testing::run(&fan_out::TASK, b"1000").items.len(), 1000);
        assert!(testing::run(&fan_out::TASK, b"three").error.is_some());
    }

    #[test]
    fn fan_seeds_emits_the_seeds_below_n() {
        assert_eq!(
            texts(&testing::run(&fan_seeds::TASK, b"3")),
            ["0", "1", "2"]
        );
        assert_eq!(testing::run(&fan_seeds::TASK, b"400").items.len(), 400);
    }

    #[test]
    fn args_and_json() {
        testing::init(&prefix_task::TASK, b">").unwrap();
        assert_eq!(texts(&testing::run(&prefix_task::TASK, b"a")), [">a"]);
        let mirrored = testing::run(&point_mirror::TASK, br#"{"x":1,"y":2}"#);
        assert_eq!(texts(&mirrored), [r#"{"x":2,"y":1}"#]);
        assert!(testing::run(&point_mirror::TASK, b"{}").error.is_some());
    }
}
