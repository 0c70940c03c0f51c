//! Line numbers of items. The root gives items consecutive ids in feed order; lines skipped
//! (refused, or already done by a resumed run) make the two differ, so `pcluster run` keeps
//! the runs of consecutive lines: one entry per gap, not per item.

use std::sync::{Arc, Mutex};

/// The line numbers of one batch: runs of consecutive lines, by first item index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineRuns {
    /// `(index of the first item of the run, its line)`.
    runs: Vec<(u32, u64)>,
}

impl LineRuns {
    /// Item `index` (the next one) is on `line`.
    pub fn push(&mut self, index: u32, line: u64) {
        if let Some(&(i, l)) = self.runs.last()
            && l + u64::from(index - i) == line
        {
            return;
        }
        self.runs.push((index, line));
    }

    /// The line of item `index`.
    #[cfg(test)]
    pub fn line_of(&self, index: u32) -> u64 {
        let k = self.runs.partition_point(|&(i, _)| i <= index) - 1;
        let (i, l) = self.runs[k];
        l + u64::from(index - i)
    }

    /// Entries of the index for these items, the first of which gets id `first_id`.
    fn entries(&self, first_id: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.runs
            .iter()
            .map(move |&(i, l)| (first_id + u64::from(i), l))
    }
}

/// Id → line for a whole run, shared by the feeding loop (which adds) and the output
/// handlers (which look up).
#[derive(Clone, Debug, Default)]
pub struct LineIndex {
    /// `(first id of a run, its line)`, ids increasing.
    runs: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl LineIndex {
    /// Records the lines of a batch whose first item gets id `first_id`.
    pub fn add(&self, first_id: u64, lines: &LineRuns) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        for (id, line) in lines.entries(first_id) {
            if let Some(&(i, l)) = runs.last()
                && l + (id - i) == line
            {
                continue;
            }
            runs.push((id, line));
        }
    }

    /// The line of item `id` (0 if none was recorded: cannot happen for a fed item).
    pub fn line(&self, id: u64) -> u64 {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let k = runs.partition_point(|&(i, _)| i <= id);
        match k.checked_sub(1).map(|k| runs[k]) {
            Some((i, l)) => l + (id - i),
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_cost_one_entry_per_gap() {
        let mut r = LineRuns::default();
        for (i, line) in [(0, 1), (1, 2), (2, 3), (3, 7), (4, 8)] {
            r.push(i, line);
        }
        assert_eq!(r.runs, [(0, 1), (3, 7)]);
        assert_eq!(r.line_of(2), 3);
        assert_eq!(r.line_of(4), 8);
    }

    #[test]
    fn the_index_maps_ids_across_batches() {
        let idx = LineIndex::default();
        let mut a = LineRuns::default();
        a.push(0, 1);
        a.push(1, 2);
        let mut b = LineRuns::default();
        b.push(0, 3); // continues a: no new entry
        b.push(1, 10);
        idx.add(0, &a);
        idx.add(2, &b);
        assert_eq!(idx.runs.lock().unwrap().len(), 2);
        assert_eq!(
            [idx.line(0), idx.line(1), idx.line(2), idx.line(3)],
            [1, 2, 3, 10]
        );
    }
}
