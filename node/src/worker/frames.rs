//! Outputs split into messages that fit in a frame, by runs of whole inputs: an input's
//! outputs travel with its completion, so they are never split.

use protocol::{Failure, Outputs, Packed, U32s};

/// Splits outputs into messages that fit in a frame, by runs of whole inputs. An input whose
/// own outputs exceed the limit is reported failed instead: outputs travel with their input's
/// completion, so one input's outputs must fit in one message.
pub(super) fn fit_in_frames(o: Outputs, limit: usize) -> Vec<Outputs> {
    let size = |bytes: usize, items: usize| bytes + 4 * items + 64;
    let handed_back: usize = o
        .continuations
        .iter()
        .map(|c| size(c.items.data.len(), c.items.len()))
        .sum();
    if size(o.items.data.len(), o.items.len()) + 4 * o.counts.0.len() + handed_back <= limit {
        return vec![o];
    }
    let Outputs {
        seq,
        first,
        counts,
        items,
        failures,
        continuations,
    } = o;
    let mut parts: Vec<Outputs> = Vec::new();
    let mut cur = Outputs {
        seq,
        first,
        counts: U32s(Vec::new()),
        items: Packed::new(),
        failures: Vec::new(),
        continuations: Vec::new(),
    };
    let mut it = items.iter();
    for (i, &n) in counts.0.iter().enumerate() {
        let index = first + i as u32;
        let own: Vec<&[u8]> = it.by_ref().take(n as usize).collect();
        let own_bytes: usize = own.iter().map(|x| x.len()).sum();
        let (own, too_big) = if size(own_bytes, own.len()) > limit {
            (Vec::new(), true)
        } else {
            (own, false)
        };
        if size(
            cur.items.data.len() + own_bytes,
            cur.items.len() + own.len(),
        ) + 4 * (cur.counts.0.len() + 1)
            > limit
            && !cur.counts.0.is_empty()
        {
            let next_first = index;
            let done = std::mem::replace(
                &mut cur,
                Outputs {
                    seq,
                    first: next_first,
                    counts: U32s(Vec::new()),
                    items: Packed::new(),
                    failures: Vec::new(),
                    continuations: Vec::new(),
                },
            );
            parts.push(done);
        }
        cur.counts.0.push(own.len() as u32);
        for x in &own {
            cur.items.push(x);
        }
        if too_big {
            cur.failures.push(Failure {
                index,
                task: None,
                item_start: Vec::new(),
                item: None,
                message: format!(
                    "the outputs of this input ({own_bytes} bytes) exceed the {limit}-byte message limit"
                ),
            });
        }
    }
    parts.push(cur);
    // Failures go with the part holding their input.
    for f in failures {
        if let Some(p) = parts
            .iter_mut()
            .find(|p| f.index >= p.first && f.index < p.first + p.counts.0.len() as u32)
        {
            p.failures.push(f);
        }
    }
    // Continuations too: they travel with their input's completion.
    for c in continuations {
        if let Some(p) = parts
            .iter_mut()
            .find(|p| c.index >= p.first && c.index < p.first + p.counts.0.len() as u32)
        {
            p.continuations.push(c);
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_split_by_whole_inputs_and_oversized_inputs_fail() {
        let mut items = Packed::new();
        let counts = vec![2, 0, 1, 3];
        for (i, &n) in counts.iter().enumerate() {
            for j in 0..n {
                items.push(format!("{i}-{j}-{}", "x".repeat(40)).as_bytes());
            }
        }
        let o = Outputs {
            seq: 1,
            first: 10,
            counts: U32s(counts),
            items,
            failures: vec![],
            continuations: vec![],
        };
        let parts = fit_in_frames(o.clone(), 250);
        assert!(parts.len() > 1);
        let firsts: Vec<u32> = parts.iter().map(|p| p.first).collect();
        assert_eq!(firsts[0], 10);
        let total: usize = parts.iter().map(|p| p.counts.0.len()).sum();
        assert_eq!(total, 4);
        // Too small for input 13's three outputs: it fails alone, the rest arrive.
        let parts = fit_in_frames(o, 200);
        let failed: Vec<u32> = parts
            .iter()
            .flat_map(|p| p.failures.iter().map(|f| f.index))
            .collect();
        assert_eq!(failed, [13]);
        let delivered: usize = parts.iter().map(|p| p.items.len()).sum();
        assert_eq!(delivered, 3);
    }
}
