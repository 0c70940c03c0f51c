//! Resident memory of a process from `/proc/<pid>/status` (Linux; `None` elsewhere): the
//! current or peak value once, or the largest value seen by a sampling thread.

use std::thread::JoinHandle;
use std::time::Duration;

/// Whose memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    /// This process.
    Current,
    /// Another process.
    Pid(u32),
}

/// Which figure of `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `VmRSS`: resident now.
    Rss,
    /// `VmHWM`: the high-water mark of resident memory.
    PeakRss,
}

impl Field {
    fn key(self) -> &'static str {
        match self {
            Field::Rss => "VmRSS",
            Field::PeakRss => "VmHWM",
        }
    }
}

/// `field` of `process` in KiB, if it can be read.
#[must_use]
pub fn status_kib(process: Process, field: Field) -> Option<u64> {
    let path = match process {
        Process::Current => "/proc/self/status".to_owned(),
        Process::Pid(pid) => format!("/proc/{pid}/status"),
    };
    parse_status_kib(&std::fs::read_to_string(path).ok()?, field)
}

/// `field` in KiB from the text of a `/proc/<pid>/status` file (`VmHWM:    1234 kB`).
#[must_use]
pub fn parse_status_kib(status: &str, field: Field) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field.key())?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// Peak resident memory of `process` in MiB.
#[must_use]
pub fn peak_rss_mib(process: Process) -> Option<f64> {
    status_kib(process, Field::PeakRss).map(|kib| kib as f64 / 1024.0)
}

/// A thread that reads the resident memory of a process every few milliseconds and keeps the
/// largest value, for a peak within a window (`VmHWM` covers the whole life of the process).
#[derive(Debug)]
pub struct RssSampler {
    /// Dropping it (or sending) ends the sampling at once: the thread waits on it between
    /// samples, not on a timer.
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<JoinHandle<u64>>,
}

impl RssSampler {
    /// Starts sampling `pid` every `every`.
    #[must_use]
    pub fn start(pid: u32, every: Duration) -> RssSampler {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut max = 0;
            // At least one sample, however soon the sampler is stopped.
            loop {
                max = max.max(status_kib(Process::Pid(pid), Field::Rss).unwrap_or(0));
                match stopped.recv_timeout(every) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return max,
                }
            }
        });
        RssSampler {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops sampling; the largest resident size seen, in KiB (0 if none could be read).
    #[must_use]
    pub fn finish(mut self) -> u64 {
        drop(self.stop.take());
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str =
        "Name:\tpcluster\nVmPeak:\t  999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1536 kB\n";

    #[test]
    fn fields_are_read_in_kib() {
        assert_eq!(parse_status_kib(STATUS, Field::PeakRss), Some(2048));
        assert_eq!(parse_status_kib(STATUS, Field::Rss), Some(1536));
        assert_eq!(parse_status_kib("Name:\tx\n", Field::Rss), None);
        assert_eq!(parse_status_kib("VmRSS:\tlots kB\n", Field::Rss), None);
    }

    #[test]
    fn this_process_has_a_peak() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_mib(Process::Current).is_some_and(|m| m > 0.0));
            let sampler = RssSampler::start(std::process::id(), Duration::from_millis(1));
            assert!(sampler.finish() > 0);
        }
    }
}
