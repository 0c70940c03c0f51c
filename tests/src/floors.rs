//! The native floors: W1 and W2 run natively, in this thread, through the very functions that
//! `tasks-example` compiles to wasm (a path dependency, built here as a host library), so the
//! bench's floor is the tasks' own code without the sandbox, the network or the cluster.

use std::hint::black_box;

use protocol::Packed;

/// Runs W1 (`w1_identity → w1_duplicate → w1_drop_odd`) over `items`, pushing the outputs to
/// `out`; returns how many items failed (none for W1's own inputs).
pub fn native_w1(items: &Packed, out: &mut Packed) -> u64 {
    let mut failed = 0;
    for item in items {
        // Opaque to the optimizer, as an item arriving from the network would be.
        let identity = tasks_example::w1_identity(black_box(item));
        for copy in tasks_example::w1_duplicate(identity) {
            match tasks_example::w1_drop_odd(copy) {
                Ok(Some(kept)) => out.push(kept),
                Ok(None) => {}
                Err(_) => failed += 1,
            }
        }
    }
    failed
}

/// W2's work for one seed: `w2_cpu` of the example tasks, natively.
#[must_use]
pub fn native_w2(seed: u64, iterations: u64) -> u64 {
    tasks_example::w2_cpu_native(seed, iterations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{w1_batches, w1_expected};

    #[test]
    fn native_w1_gives_w1s_outputs() {
        let mut out = Packed::new();
        for batch in w1_batches(10, 4) {
            assert_eq!(native_w1(&batch, &mut out), 0);
        }
        let mut texts: Vec<String> = out
            .iter()
            .map(|o| String::from_utf8_lossy(o).into_owned())
            .collect();
        texts.sort();
        assert_eq!(texts, w1_expected(10));

        let mut bad = Packed::new();
        bad.push(b"item-");
        assert_eq!(native_w1(&bad, &mut Packed::new()), 2, "both copies fail");
    }

    #[test]
    fn native_w2_is_the_example_task() {
        assert_eq!(native_w2(0, 100_000), 16_231_946_794_301_659_298);
        assert_eq!(native_w2(5, 0), 5);
    }
}
