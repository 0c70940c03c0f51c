//! What `pcluster run` says on stderr about failed inputs: the first [`SHOWN`] each get a
//! line; after them at most one line a second sums those not shown, and a last line at the
//! end sums the rest. `--failed` and the joblog still get every one: a run with thousands of
//! failures stays readable.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failure lines shown before they are only summed.
pub const SHOWN: u64 = 20;
/// The most often a sum of failures not shown is printed.
const SUM_EVERY: Duration = Duration::from_secs(1);

/// What to print for one more failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Say {
    /// Its own line.
    Line,
    /// A line summing this many failures not shown.
    Sum(u64),
    /// Nothing now: it is summed later.
    Nothing,
}

/// The count behind the lines (pure: time comes in).
#[derive(Debug, Default)]
pub struct Counts {
    shown: u64,
    /// Failures not shown and not summed yet.
    unsummed: u64,
    last_sum: Option<Instant>,
}

impl Counts {
    /// One more failure at `now`.
    pub fn next(&mut self, now: Instant) -> Say {
        if self.shown < SHOWN {
            self.shown += 1;
            return Say::Line;
        }
        self.unsummed += 1;
        let due = self
            .last_sum
            .is_none_or(|t| now.duration_since(t) >= SUM_EVERY);
        if !due {
            return Say::Nothing;
        }
        self.last_sum = Some(now);
        Say::Sum(std::mem::take(&mut self.unsummed))
    }

    /// At the end: the failures not summed yet.
    pub fn rest(&mut self) -> u64 {
        std::mem::take(&mut self.unsummed)
    }
}

/// The failure lines of one run, shared by the output side and the reader's refusals.
#[derive(Debug)]
pub struct FailureLines {
    counts: Mutex<Counts>,
    /// Where all of them are (`, all in --failed`), for the sums.
    also: &'static str,
}

impl FailureLines {
    pub fn new(failed_file: bool) -> FailureLines {
        FailureLines {
            counts: Mutex::new(Counts::default()),
            also: if failed_file {
                "; --failed has every failed input"
            } else {
                ""
            },
        }
    }

    /// Reports one failure: `line` (without a newline) when it is shown.
    pub fn report(&self, line: impl FnOnce() -> String) {
        let say = match self.counts.lock() {
            Ok(mut c) => c.next(Instant::now()),
            Err(_) => Say::Line,
        };
        match say {
            Say::Line => say_line(&format!("pcluster run: {}\n", line())),
            Say::Sum(n) => self.sum(n),
            Say::Nothing => {}
        }
    }

    /// At the end of the run: sums the failures not summed yet.
    pub fn finish(&self) {
        let rest = self.counts.lock().map_or(0, |mut c| c.rest());
        self.sum(rest);
    }

    fn sum(&self, n: u64) {
        if n > 0 {
            say_line(&format!(
                "pcluster run: {n} more failures (only the first {SHOWN} are shown{})\n",
                self.also
            ));
        }
    }
}

/// One write: stderr is unbuffered, and a line written piece by piece could be cut by
/// another writer's (a log line's).
pub fn say_line(line: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_are_shown_then_summed_once_a_second() {
        let mut c = Counts::default();
        let t0 = Instant::now();
        for _ in 0..SHOWN {
            assert_eq!(c.next(t0), Say::Line);
        }
        assert_eq!(
            c.next(t0),
            Say::Sum(1),
            "the first one past them says so at once"
        );
        for _ in 0..99 {
            assert_eq!(c.next(t0 + Duration::from_millis(500)), Say::Nothing);
        }
        assert_eq!(c.next(t0 + Duration::from_millis(1000)), Say::Sum(100));
        assert_eq!(c.next(t0 + Duration::from_millis(1500)), Say::Nothing);
        assert_eq!(c.rest(), 1, "the end sums the rest");
        assert_eq!(c.rest(), 0);
    }
}
