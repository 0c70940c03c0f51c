//! The progress bar of `pcluster run` (on a terminal only): inputs done of the total (the
//! input file's items, counted on a thread of its own, and told to the root for its
//! dashboard), %, rate and ETA.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::RunArgs;

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// Items in the input file, once counted (0 until then or without a file).
    total: Arc<AtomicU64>,
    last: std::cell::Cell<Instant>,
    started: Instant,
}

impl Progress {
    /// `skipped`: inputs a resumed run skips (done before), left out of the total.
    pub fn new(args: &RunArgs, started: Instant, root: &Arc<root::Root>, skipped: u64) -> Progress {
        let show = !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let total = Arc::new(AtomicU64::new(0));
        if (show || args.dashboard.is_some())
            && let Some(path) = args.input.clone()
        {
            let (t, sep, root) = (total.clone(), args.framing().separator(), root.clone());
            std::thread::spawn(move || {
                let counted = match sep {
                    Some(sep) => count_items(&path, sep),
                    None => super::binary::count_records(&path),
                };
                if let Ok(n) = counted {
                    let n = n.saturating_sub(skipped);
                    t.store(n, Ordering::Relaxed);
                    root.set_expected_total(n);
                }
            });
        }
        let bar = show.then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar
        });
        Progress {
            bar,
            total,
            last: std::cell::Cell::new(started),
            started,
        }
    }

    /// Redraws at most five times a second.
    pub async fn tick(&self, root: &root::Root) {
        let Some(bar) = &self.bar else { return };
        if self.last.get().elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last.set(Instant::now());
        if let Ok(c) = root.counters().await {
            bar.set_message(line(&c, self.total.load(Ordering::Relaxed), self.started));
            bar.tick();
        }
    }

    /// `root.wait_empty()`, redrawing meanwhile.
    pub async fn wait_empty(&self, root: &root::Root) -> Result<(), root::RootError> {
        if self.bar.is_none() {
            return root.wait_empty().await;
        }
        let wait = root.wait_empty();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                r = &mut wait => return r,
                () = tokio::time::sleep(Duration::from_millis(200)) => self.tick(root).await,
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Items in a file: separators, plus a last item without one.
fn count_items(path: &std::path::Path, sep: u8) -> std::io::Result<u64> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut n, mut last) = (0u64, sep);
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            break;
        }
        n += memchr::memchr_iter(sep, &buf[..got]).count() as u64;
        last = buf[got - 1];
    }
    Ok(n + u64::from(last != sep))
}

fn line(c: &root::Counters, total: u64, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let rate = c.completed as f64 / secs;
    let mut s = if total > 0 {
        let pct = 100.0 * c.completed as f64 / total as f64;
        let eta = (total.saturating_sub(c.completed)) as f64 / rate.max(1e-9);
        format!(
            "done {}/{total} ({pct:.1}%)  {rate:.0} inputs/s  ETA {eta:.0} s",
            c.completed
        )
    } else {
        format!("done {}  {rate:.0} inputs/s", c.completed)
    };
    s.push_str(&format!("  outputs {}  failed {}", c.outputs, c.failed));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_items_with_and_without_a_last_separator() {
        let dir = std::env::temp_dir().join(format!("pcluster-count-{}", std::process::id()));
        std::fs::write(&dir, b"a\nb\nc").unwrap();
        assert_eq!(count_items(&dir, b'\n').unwrap(), 3);
        std::fs::write(&dir, b"a\nb\n").unwrap();
        assert_eq!(count_items(&dir, b'\n').unwrap(), 2);
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn the_line_shows_done_of_total() {
        let c = root::Counters {
            completed: 25,
            ..Default::default()
        };
        let l = line(&c, 100, Instant::now() - Duration::from_secs(1));
        assert!(l.starts_with("done 25/100 (25.0%)"), "{l}");
        assert!(l.contains("ETA"), "{l}");
    }
}
