//! W1's data: inputs `item-0 … item-{n-1}`, the expected outputs (every even item twice, odd
//! items never), and [`W1Check`], the exact check of outputs that costs a byte per input rather
//! than a string per output, so runs of millions of items can be checked.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use protocol::Packed;

use crate::Error;

/// Writes W1 input `i` (`item-<i>`) into `buf`.
pub fn w1_item(i: u64, buf: &mut Vec<u8>) {
    // Writing to a Vec cannot fail.
    let _ = write!(buf, "item-{i}");
}

/// Inputs `item-0 … item-{n-1}`.
#[must_use]
pub fn w1_inputs(n: u64) -> Vec<String> {
    (0..n).map(|i| format!("item-{i}")).collect()
}

/// W1's outputs for [`w1_inputs`]`(n)`: every even item twice, sorted.
#[must_use]
pub fn w1_expected(n: u64) -> Vec<String> {
    let mut v: Vec<String> = (0..n)
        .filter(|i| i % 2 == 0)
        .flat_map(|i| [format!("item-{i}"), format!("item-{i}")])
        .collect();
    v.sort();
    v
}

/// [`w1_inputs`]`(n)` as packed batches of `batch` items.
#[must_use]
pub fn w1_batches(n: u64, batch: usize) -> Vec<Packed> {
    let batch = batch.max(1);
    let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0) / batch + 1);
    let mut packed = Packed::with_capacity(batch, batch * 12);
    let mut text = String::new();
    for i in 0..n {
        text.clear();
        let _ = write!(text, "item-{i}");
        packed.push(text.as_bytes());
        if packed.len() == batch {
            out.push(std::mem::replace(
                &mut packed,
                Packed::with_capacity(batch, batch * 12),
            ));
        }
    }
    if !packed.is_empty() {
        out.push(packed);
    }
    out
}

/// Writes [`w1_inputs`]`(n)` to `path`, one per line.
///
/// # Errors
/// When the file cannot be written.
pub fn write_w1_input(path: &Path, n: u64) -> Result<(), Error> {
    let write = || -> std::io::Result<()> {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        for i in 0..n {
            writeln!(w, "item-{i}")?;
        }
        w.flush()
    };
    write().map_err(Error::io("cannot write", path))
}

/// Counts W1 outputs per input and checks them exactly.
#[derive(Clone, Debug)]
pub struct W1Check {
    counts: Vec<u8>,
    /// Outputs that are no W1 item of this run, or not the item of the input they came from.
    wrong: u64,
}

/// How W1's outputs differ from what they should be.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "outputs of {inputs} inputs: {lost} inputs lost outputs (first {first_lost:?}), {extra} got \
     extra outputs (first {first_extra:?}), {wrong} outputs did not match their input"
)]
pub struct W1Mismatch {
    /// Inputs checked.
    pub inputs: u64,
    /// Inputs with fewer outputs than expected.
    pub lost: u64,
    /// The first few of them.
    pub first_lost: Vec<u64>,
    /// Inputs with more outputs than expected.
    pub extra: u64,
    /// The first few of them.
    pub first_extra: Vec<u64>,
    /// Outputs that matched no input.
    pub wrong: u64,
}

impl W1Check {
    /// A check of the outputs of inputs `0..n`.
    #[must_use]
    pub fn new(n: u64) -> W1Check {
        W1Check {
            counts: vec![0; usize::try_from(n).unwrap_or(usize::MAX)],
            wrong: 0,
        }
    }

    /// Counts an output by the input its text names.
    #[inline]
    pub fn add(&mut self, output: &[u8]) {
        match input_of(output).and_then(|i| self.counts.get_mut(i)) {
            Some(c) => *c = c.saturating_add(1),
            None => self.wrong += 1,
        }
    }

    /// Counts an output of input `input`, which must be that input's text.
    #[inline]
    pub fn add_for(&mut self, input: u64, output: &[u8]) {
        let named = input_of(output);
        match usize::try_from(input)
            .ok()
            .and_then(|i| self.counts.get_mut(i))
        {
            Some(c) if named == usize::try_from(input).ok() => *c = c.saturating_add(1),
            _ => self.wrong += 1,
        }
    }

    /// Checks every even input came out twice and every odd input never.
    ///
    /// # Errors
    /// What differs.
    pub fn verify(&self) -> Result<(), W1Mismatch> {
        self.verify_except(|_| false)
    }

    /// Like [`W1Check::verify`], except that inputs `failed(i)` must have no output at all.
    ///
    /// # Errors
    /// What differs.
    pub fn verify_except(&self, failed: impl Fn(u64) -> bool) -> Result<(), W1Mismatch> {
        const FIRST: usize = 5;
        let mut m = W1Mismatch {
            inputs: self.counts.len() as u64,
            lost: 0,
            first_lost: Vec::new(),
            extra: 0,
            first_extra: Vec::new(),
            wrong: self.wrong,
        };
        for (i, &c) in (0u64..).zip(&self.counts) {
            let want = if failed(i) || i % 2 == 1 { 0 } else { 2 };
            let (count, first) = match c.cmp(&want) {
                std::cmp::Ordering::Less => (&mut m.lost, &mut m.first_lost),
                std::cmp::Ordering::Greater => (&mut m.extra, &mut m.first_extra),
                std::cmp::Ordering::Equal => continue,
            };
            *count += 1;
            if first.len() < FIRST {
                first.push(i);
            }
        }
        if m.lost == 0 && m.extra == 0 && m.wrong == 0 {
            Ok(())
        } else {
            Err(m)
        }
    }
}

/// The input index an output `item-<i>` names.
fn input_of(output: &[u8]) -> Option<usize> {
    let digits = output.strip_prefix(b"item-")?;
    // `item--3` or `item-1-2` name no input: the digits must be the whole rest.
    if digits.contains(&b'-') {
        return None;
    }
    usize::try_from(tasks_example::trailing_number(digits)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_batches_and_expectation_agree() {
        assert_eq!(w1_inputs(3), ["item-0", "item-1", "item-2"]);
        assert_eq!(w1_expected(3), ["item-0", "item-0", "item-2", "item-2"]);
        let batches = w1_batches(5, 2);
        let lens: Vec<usize> = batches.iter().map(Packed::len).collect();
        assert_eq!(lens, [2, 2, 1]);
        let all: Vec<&[u8]> = batches.iter().flat_map(|b| b.iter()).collect();
        assert_eq!(
            all,
            [&b"item-0"[..], b"item-1", b"item-2", b"item-3", b"item-4"]
        );
        let mut buf = Vec::new();
        w1_item(42, &mut buf);
        assert_eq!(buf, b"item-42");
    }

    #[test]
    fn the_check_passes_exact_outputs_only() {
        let mut check = W1Check::new(4);
        for out in w1_expected(4) {
            check.add(out.as_bytes());
        }
        assert_eq!(check.verify(), Ok(()));

        check.add(b"item-2");
        check.add(b"item-9");
        check.add(b"other");
        let m = check.verify().unwrap_err();
        assert_eq!(
            (m.extra, m.first_extra.as_slice(), m.wrong),
            (1, &[2][..], 2)
        );
        assert!(
            m.to_string().contains("1 got extra outputs (first [2])"),
            "{m}"
        );

        let mut lost = W1Check::new(4);
        lost.add(b"item-0");
        let m = lost.verify().unwrap_err();
        assert_eq!((m.lost, m.first_lost), (2, vec![0, 2]));
    }

    #[test]
    fn outputs_are_checked_against_their_input() {
        let mut check = W1Check::new(4);
        check.add_for(0, b"item-0");
        check.add_for(0, b"item-0");
        check.add_for(2, b"item-0");
        assert_eq!(check.verify_except(|i| i == 2).unwrap_err().wrong, 1);

        let mut failed = W1Check::new(4);
        failed.add_for(0, b"item-0");
        failed.add_for(0, b"item-0");
        assert_eq!(failed.verify_except(|i| i == 2), Ok(()));
        assert!(failed.verify().is_err());
    }

    #[test]
    fn the_input_file_has_one_item_per_line() {
        let dir = crate::temp_dir("kit-w1-input").unwrap();
        let path = dir.join("in.txt");
        write_w1_input(&path, 3).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "item-0\nitem-1\nitem-2\n"
        );
    }
}
