//! CPU time from `/proc` (Linux; `None` elsewhere): of a process, of the calling thread, and
//! of this process's finished children, split into user and system time, so the bench can
//! say where a data path's time goes (the kernel's copies are system time).

use std::ops::{Add, Sub};

/// Linux reports `/proc/*/stat` times in clock ticks of `USER_HZ`, 100 on every
/// architecture it supports today.
const TICKS_PER_S: f64 = 100.0;

/// User and system CPU time, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTime {
    pub user: f64,
    pub sys: f64,
}

impl CpuTime {
    /// User plus system time.
    #[must_use]
    pub fn total(self) -> f64 {
        self.user + self.sys
    }
}

impl Add for CpuTime {
    type Output = CpuTime;
    fn add(self, o: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user + o.user,
            sys: self.sys + o.sys,
        }
    }
}

impl Sub for CpuTime {
    type Output = CpuTime;
    fn sub(self, o: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - o.user,
            sys: self.sys - o.sys,
        }
    }
}

impl std::iter::Sum for CpuTime {
    fn sum<I: Iterator<Item = CpuTime>>(iter: I) -> CpuTime {
        iter.fold(CpuTime::default(), |a, b| a + b)
    }
}

/// Whose CPU time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cpu {
    /// A process, all its threads.
    Pid(u32),
    /// The calling thread.
    Thread,
    /// This process's children that have exited and been waited for.
    Children,
}

/// The CPU time of `who` so far, if it can be read.
#[must_use]
pub fn cpu_time(who: Cpu) -> Option<CpuTime> {
    let path = match who {
        Cpu::Pid(pid) => format!("/proc/{pid}/stat"),
        Cpu::Thread => "/proc/thread-self/stat".to_owned(),
        Cpu::Children => "/proc/self/stat".to_owned(),
    };
    parse_stat(&std::fs::read_to_string(path).ok()?, who == Cpu::Children)
}

/// User and system time from the text of a `/proc/<pid>/stat` file: the process's own
/// (fields 14 and 15) or its waited-for children's (16 and 17).
#[must_use]
pub fn parse_stat(stat: &str, children: bool) -> Option<CpuTime> {
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (the state).
    let at = if children { 13 } else { 11 };
    let tick = |i: usize| -> Option<f64> {
        Some(fields.get(i)?.parse::<u64>().ok()? as f64 / TICKS_PER_S)
    };
    Some(CpuTime {
        user: tick(at)?,
        sys: tick(at + 1)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_past_a_name_with_spaces() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 12 3 20 0 1 0 9 0 0";
        let own = parse_stat(stat, false).unwrap();
        assert_eq!(
            own,
            CpuTime {
                user: 2.5,
                sys: 0.75
            }
        );
        let children = parse_stat(stat, true).unwrap();
        assert_eq!(
            children,
            CpuTime {
                user: 0.12,
                sys: 0.03
            }
        );
        assert_eq!(parse_stat("42 (x) S 1", false), None);
    }

    #[test]
    fn this_thread_spends_cpu() {
        let Some(before) = cpu_time(Cpu::Thread) else {
            return; // not Linux
        };
        // Busy for up to 5 s of wall time: ticks of 10 ms must show by then.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while (after - before).total() < 0.02 && start.elapsed().as_secs() < 5 {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            after = cpu_time(Cpu::Thread).unwrap();
        }
        assert!(
            after.user >= before.user && (after - before).total() >= 0.02,
            "{before:?} → {after:?}"
        );
    }
}
