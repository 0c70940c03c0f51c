//! The joblog of `pcluster run --joblog FILE`, and resuming from it.
//!
//! The file starts with a header naming the chain's and the input's SHA-256; then one
//! tab-separated line per input as it completes: line number, `done` or `failed`, failed
//! items, attempts, seconds from first dispatch to completion, the output file's length
//! once this input's outputs were written, and the first error.
//!
//! Order of writes: an input's outputs go to the output file, all of them together, before
//! its joblog line; the joblog is written only after the output file was flushed up to the
//! length its last line names. So after a crash at any moment (`kill -9`), every joblog line
//! names outputs that are in the output file, and the output file may hold more (outputs of
//! inputs whose joblog line was not written). `--resume` cuts the output file back to the
//! length the last whole joblog line names, drops a torn last joblog line, and skips the
//! inputs the joblog names: each output ends up in the file exactly once.

use std::io::Read as _;
use std::path::Path;

use anyhow::{Context as _, bail, ensure};
use sha2::{Digest as _, Sha256};

pub const MAGIC: &str = "# pcluster joblog 1";
pub const COLUMNS: &str = "# line\tstatus\tfailed\tattempts\tseconds\toutput_bytes\terror";

/// A set of line numbers (1-based), one bit each.
#[derive(Debug, Default, Clone)]
pub struct LineSet {
    bits: Vec<u64>,
    count: u64,
}

impl LineSet {
    pub fn insert(&mut self, line: u64) {
        let (w, b) = ((line / 64) as usize, line % 64);
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        if self.bits[w] & (1 << b) == 0 {
            self.bits[w] |= 1 << b;
            self.count += 1;
        }
    }

    pub fn contains(&self, line: u64) -> bool {
        self.bits
            .get((line / 64) as usize)
            .is_some_and(|w| w & (1 << (line % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.count
    }
}

/// SHA-256 of a chain as the nodes get it: name, version, modules and tasks.
pub fn chain_hash(chain: &protocol::ChainSpec) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(chain.name.as_bytes());
    field(chain.version.as_bytes());
    for m in &chain.modules {
        field(m);
    }
    for t in &chain.tasks {
        field(t.function.as_bytes());
        field(&t.module.to_le_bytes());
        field(&[u8::from(t.generator)]);
        field(&t.args);
    }
    hex::encode(h.finalize())
}

/// SHA-256 of the input file.
pub fn file_hash(path: &Path) -> anyhow::Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The header of a new joblog.
pub fn header(chain: &str, input: &str) -> String {
    format!("{MAGIC}\n# chain sha256 {chain}\n# input sha256 {input}\n{COLUMNS}\n")
}

/// One completed input.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry<'a> {
    pub line: u64,
    pub failed: u32,
    pub attempts: u32,
    /// From the input's first send to its completion.
    pub took: std::time::Duration,
    pub output_bytes: u64,
    pub error: &'a str,
}

/// Consecutive input lines that all went well (done, first try, no error), written as one
/// joblog line `first-last`: its seconds are the longest of them, its output length the one
/// after the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub first: u64,
    pub last: u64,
    pub took: std::time::Duration,
    pub output_bytes: u64,
}

impl Run {
    /// A run of the one line `line`.
    pub fn new(line: u64, took: std::time::Duration, output_bytes: u64) -> Run {
        Run {
            first: line,
            last: line,
            took,
            output_bytes,
        }
    }

    /// Extends the run by `line` when it follows the last; false when it does not.
    pub fn extend(&mut self, line: u64, took: std::time::Duration, output_bytes: u64) -> bool {
        if self.last.checked_add(1) != Some(line) {
            return false;
        }
        self.last = line;
        self.took = self.took.max(took);
        self.output_bytes = output_bytes;
        true
    }

    /// Appends the run's line to `out`.
    pub fn write(&self, out: &mut String) {
        let line = if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}-{}", self.first, self.last)
        };
        Entry {
            line: 0,
            failed: 0,
            attempts: 1,
            took: self.took,
            output_bytes: self.output_bytes,
            error: "",
        }
        .write_as(&line, out);
    }
}

impl Entry<'_> {
    /// Appends the entry's line to `out`. Written per input on the root's thread, so with
    /// integer formatting only (`format!` and a float cost more than the input's run).
    pub fn write(&self, out: &mut String) {
        let mut b = itoa::Buffer::new();
        self.write_as(b.format(self.line), out);
    }

    /// The same with `line` for the line column.
    fn write_as(&self, line: &str, out: &mut String) {
        let mut b = itoa::Buffer::new();
        out.push_str(line);
        out.push_str(if self.failed == 0 {
            "\tdone\t"
        } else {
            "\tfailed\t"
        });
        out.push_str(b.format(self.failed));
        out.push('\t');
        out.push_str(b.format(self.attempts));
        out.push('\t');
        let ms = self.took.as_millis();
        out.push_str(b.format(ms / 1000));
        out.push('.');
        let frac = (ms % 1000) as u32;
        for digit in [frac / 100, frac / 10 % 10, frac % 10] {
            out.push(char::from_digit(digit, 10).unwrap_or('0'));
        }
        out.push('\t');
        out.push_str(b.format(self.output_bytes));
        out.push('\t');
        // One line per entry, whatever the message holds.
        out.extend(
            self.error
                .chars()
                .take(300)
                .map(|c| if c.is_control() { ' ' } else { c }),
        );
        out.push('\n');
    }
}

/// What a joblog says about a run to resume.
#[derive(Debug, Default)]
pub struct Resume {
    /// Inputs done (or failed): skipped by the resumed run.
    pub done: LineSet,
    /// The output file's length to keep.
    pub output_bytes: u64,
    /// The joblog's length to keep (its whole lines).
    pub joblog_bytes: u64,
    /// Failed inputs among `done`.
    pub failed: u64,
}

/// Reads a joblog for `--resume`, checking that it belongs to this chain and input.
///
/// # Errors
/// Unreadable, not a joblog, or written for another chain or input.
pub fn read(path: &Path, chain: &str, input: &str) -> anyhow::Result<Resume> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot open the joblog {} to resume", path.display()))?;
    parse(std::io::BufReader::new(f), chain, input)
        .with_context(|| format!("cannot resume from {}", path.display()))
}

fn parse(mut r: impl std::io::BufRead, chain: &str, input: &str) -> anyhow::Result<Resume> {
    let mut res = Resume::default();
    let mut line = Vec::new();
    let mut n = 0u64;
    let mut seen_chain = false;
    let mut seen_input = false;
    loop {
        line.clear();
        let got = r.read_until(b'\n', &mut line)?;
        if got == 0 || line.last() != Some(&b'\n') {
            // The end, or a line torn by a crash: dropped.
            break;
        }
        n += 1;
        let text = std::str::from_utf8(&line)
            .context("not UTF-8")?
            .trim_end_matches('\n');
        if n == 1 {
            ensure!(text == MAGIC, "not a pcluster joblog (first line `{text}`)");
        } else if let Some(h) = text.strip_prefix("# chain sha256 ") {
            ensure!(
                h == chain,
                "the joblog was written for another chain (sha256 {h}, this one is {chain})"
            );
            seen_chain = true;
        } else if let Some(h) = text.strip_prefix("# input sha256 ") {
            ensure!(
                h == input,
                "the joblog was written for another input (sha256 {h}, this one is {input})"
            );
            seen_input = true;
        } else if !text.starts_with('#') {
            let mut cols = text.split('\t');
            let mut next = |what: &str| {
                cols.next()
                    .with_context(|| format!("joblog line {n}: no {what}"))
            };
            let (first, last) = line_range(next("line")?)
                .with_context(|| format!("joblog line {n}: not a line number or range"))?;
            let status = next("status")?;
            let _failed = next("failed")?;
            let _attempts = next("attempts")?;
            let _seconds = next("seconds")?;
            let bytes: u64 = next("output bytes")?
                .parse()
                .with_context(|| format!("joblog line {n}"))?;
            for l in first..=last {
                res.done.insert(l);
            }
            if status == "failed" {
                res.failed += 1;
            }
            res.output_bytes = res.output_bytes.max(bytes);
        }
        res.joblog_bytes += got as u64;
    }
    if !(seen_chain && seen_input) {
        bail!("the joblog has no chain and input hashes");
    }
    Ok(res)
}

/// The line column: `7`, or `3-9` for a run of lines.
fn line_range(col: &str) -> Option<(u64, u64)> {
    match col.split_once('-') {
        None => col.parse().ok().map(|l| (l, l)),
        Some((a, b)) => {
            let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b).then_some((a, b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(entries: &[Entry]) -> String {
        let mut s = header("c", "i");
        for e in entries {
            e.write(&mut s);
        }
        s
    }

    fn entry(line: u64, failed: u32, output_bytes: u64) -> Entry<'static> {
        Entry {
            line,
            failed,
            attempts: 1,
            took: std::time::Duration::from_millis(500),
            output_bytes,
            error: if failed > 0 { "boom\tin\ntask" } else { "" },
        }
    }

    #[test]
    fn resume_keeps_whole_lines_and_the_last_output_length() {
        let text = log(&[entry(2, 0, 10), entry(1, 1, 25)]);
        let whole = text.len() as u64;
        let torn = format!("{text}3\tdone\t0");
        let r = parse(torn.as_bytes(), "c", "i").unwrap();
        assert!(r.done.contains(1) && r.done.contains(2) && !r.done.contains(3));
        assert_eq!((r.done.len(), r.failed), (2, 1));
        assert_eq!(r.output_bytes, 25);
        assert_eq!(r.joblog_bytes, whole, "the torn line is cut off");
    }

    #[test]
    fn runs_of_good_lines_are_one_line_and_resume_reads_them() {
        let ms = std::time::Duration::from_millis;
        let mut run = Run::new(4, ms(7), 10);
        assert!(run.extend(5, ms(9), 20) && run.extend(6, ms(3), 30));
        assert!(!run.extend(8, ms(1), 40), "a gap ends the run");
        let mut text = header("c", "i");
        run.write(&mut text);
        Run::new(8, ms(1), 40).write(&mut text);
        entry(9, 1, 41).write(&mut text);
        assert!(text.ends_with("4-6\tdone\t0\t1\t0.009\t30\t\n8\tdone\t0\t1\t0.001\t40\t\n9\tfailed\t1\t1\t0.500\t41\tboom in task\n"));
        let r = parse(text.as_bytes(), "c", "i").unwrap();
        assert_eq!((r.done.len(), r.failed, r.output_bytes), (5, 1, 41));
        assert!((4..=9).all(|l| l == 7 || r.done.contains(l)) && !r.done.contains(7));
        assert_eq!(line_range("9-3"), None);
        assert_eq!(line_range("x"), None);
    }

    #[test]
    fn an_error_stays_on_one_line() {
        let mut s = String::new();
        entry(7, 2, 0).write(&mut s);
        assert_eq!(s, "7\tfailed\t2\t1\t0.500\t0\tboom in task\n");
    }

    #[test]
    fn another_chain_or_input_is_refused() {
        let text = log(&[entry(1, 0, 1)]);
        let e = parse(text.as_bytes(), "other", "i")
            .unwrap_err()
            .to_string();
        assert!(e.contains("another chain"), "{e}");
        let e = parse(text.as_bytes(), "c", "x").unwrap_err().to_string();
        assert!(e.contains("another input"), "{e}");
        assert!(parse("hello\n".as_bytes(), "c", "i").is_err());
    }

    #[test]
    fn line_sets() {
        let mut s = LineSet::default();
        s.insert(1);
        s.insert(64);
        s.insert(64);
        assert!(s.contains(1) && s.contains(64) && !s.contains(2) && !s.contains(1000));
        assert_eq!(s.len(), 2);
    }
}
