//! The node-wide memory budget (`pcluster node --memory-mb`): a chain is refused at setup
//! when its task instances at their memory caps plus the node's own buffers would exceed it.
//! Pure arithmetic here; the default reads the machine's memory from `/proc/meminfo`.

use crate::error::SetupError;

const MIB: u64 = 1 << 20;

/// Default budget: three quarters of the machine's memory (`MemTotal`), or 4 GiB where there
/// is no procfs.
pub fn default_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| mem_total_kb(&t))
        .map_or(4096, |kb| kb / 1024 * 3 / 4)
}

fn mem_total_kb(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// MiB the node itself holds for a chain whatever it runs: its byte window of items in
/// flight and one frame being read.
pub(crate) fn buffers_mb(max_frame: usize) -> u64 {
    (crate::worker::WINDOW_BYTES + max_frame as u64).div_ceil(MIB)
}

/// Whether `workers` × `tasks` instances of `memory_mb` each, plus `buffers_mb`, fit in
/// `allowed_mb`.
///
/// # Errors
/// [`SetupError::Memory`] naming every number when they do not.
pub(crate) fn check(
    workers: u32,
    tasks: usize,
    memory_mb: u64,
    buffers_mb: u64,
    allowed_mb: u64,
) -> Result<(), SetupError> {
    let needed = u64::from(workers)
        .saturating_mul(tasks as u64)
        .saturating_mul(memory_mb)
        .saturating_add(buffers_mb);
    if needed > allowed_mb {
        return Err(SetupError::Memory {
            workers,
            tasks,
            memory_mb,
            buffers_mb,
            needed_mb: needed,
            allowed_mb,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_within_the_budget_passes_and_one_past_it_is_refused_with_its_numbers() {
        assert!(check(4, 3, 512, 64, 6208).is_ok());
        let e = check(4, 3, 512, 64, 4096).unwrap_err();
        assert_eq!(
            e.to_string(),
            "chain needs 4 workers × 3 tasks × 512 MiB + 64 MiB buffers = 6208 MiB, \
             node allows 4096 MiB (--memory-mb)"
        );
        assert!(check(u32::MAX, usize::MAX, u64::MAX, 1, u64::MAX - 1).is_err());
    }

    #[test]
    fn mem_total_is_read_in_kb() {
        let text = "MemTotal:       16303460 kB\nMemFree:  1 kB\n";
        assert_eq!(mem_total_kb(text), Some(16_303_460));
        assert_eq!(mem_total_kb("nothing"), None);
        assert!(default_memory_mb() > 0);
    }
}
