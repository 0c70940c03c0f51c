//! Outputs split into messages that fit in a frame, by runs of whole inputs: an input's
//! outputs travel with its completion. An input whose outputs alone exceed a message sends
//! them ahead in [`Partial`] messages, which the root holds until the completion arrives
//! (docs/SCHEDULING.md). Failures (which may carry whole items) count towards the size, and
//! a message that still cannot be encoded turns into failures of its inputs rather than
//! vanishing.

use protocol::{Continuation, Failure, Msg, Outputs, Packed, Partial, U32s};

/// Encoded bytes of a message holding `bytes` bytes of `items` outputs, beyond its failures.
fn size(bytes: usize, items: usize) -> usize {
    bytes + 4 * items + 64
}

/// Encoded bytes of a failure, at most.
fn failure_size(f: &Failure) -> usize {
    f.item_start.len() + f.item.as_ref().map_or(0, Vec::len) + f.message.len() + 96
}

/// Encoded bytes of items handed back to the root for another node, at most.
fn continuation_size(c: &Continuation) -> usize {
    size(c.items.data.len(), c.items.len()) + 16
}

/// Splits outputs into messages that fit in a frame, by runs of whole inputs, in the order
/// they must be sent. An input whose own outputs exceed the limit sends them ahead in
/// [`Partial`] messages, its completion (with its failures and the items it hands back)
/// following with none; it fails instead only when one output alone, or its failures and
/// continuations, exceed a message. Whole failed items that do not fit are left out of their
/// failure (its start and message stay).
pub(super) fn fit_in_frames(o: Outputs, limit: usize) -> Vec<Msg> {
    // The common case, checked per message: everything fits at once.
    let failed_bytes: usize = o.failures.iter().map(failure_size).sum::<usize>()
        + o.continuations.iter().map(continuation_size).sum::<usize>();
    if size(o.items.data.len(), o.items.len()) + 4 * o.counts.0.len() + failed_bytes <= limit {
        return vec![Msg::Outputs(o)];
    }
    let Outputs {
        seq,
        first,
        counts,
        items,
        mut failures,
        mut continuations,
    } = o;
    // Failures by input, in index order, each small enough to travel.
    failures.sort_by_key(|f| f.index);
    for f in failures.iter_mut().filter(|f| failure_size(f) > limit / 2) {
        f.item = None;
    }
    let mut failures = failures.into_iter().peekable();
    continuations.sort_by_key(|c| c.index);
    let mut continuations = continuations.into_iter().peekable();
    let mut parts: Vec<Msg> = Vec::new();
    let mut cur = empty(seq, first);
    let mut cur_failed = 0usize;
    let mut it = items.iter();
    for (i, &n) in counts.0.iter().enumerate() {
        let index = first + i as u32;
        let own: Vec<&[u8]> = it.by_ref().take(n as usize).collect();
        let own_bytes: usize = own.iter().map(|x| x.len()).sum();
        let mut own_failures = take_own(&mut failures, index, |f| f.index);
        let mut own_conts = take_own(&mut continuations, index, |c| c.index);
        let own_failed: usize = own_failures.iter().map(failure_size).sum::<usize>()
            + own_conts.iter().map(continuation_size).sum::<usize>();
        let (own, too_big) = if size(own_bytes, own.len()) + own_failed <= limit {
            (own, false)
        } else if own_failed <= limit / 2 && own.iter().all(|x| size(x.len(), 1) <= limit) {
            // Sent ahead in parts; the completion carries none of them.
            parts.extend(ahead(seq, index, &own, limit));
            (Vec::new(), false)
        } else {
            (Vec::new(), true)
        };
        if size(
            cur.items.data.len() + own_bytes,
            cur.items.len() + own.len(),
        ) + 4 * (cur.counts.0.len() + 1)
            + cur_failed
            + own_failed
            > limit
            && !cur.counts.0.is_empty()
        {
            parts.push(Msg::Outputs(std::mem::replace(&mut cur, empty(seq, index))));
            cur_failed = 0;
        }
        cur.counts.0.push(own.len() as u32);
        for x in &own {
            cur.items.push(x);
        }
        if too_big {
            own_failures.clear();
            own_conts.clear();
            cur.failures.push(too_big_failure(index, limit, own_bytes));
        }
        cur_failed += own_failures.iter().map(failure_size).sum::<usize>()
            + own_conts.iter().map(continuation_size).sum::<usize>();
        cur.failures.extend(own_failures);
        cur.continuations.extend(own_conts);
    }
    parts.push(Msg::Outputs(cur));
    parts
}

/// An `Outputs` of batch `seq` from input `first` on, with nothing in it yet.
fn empty(seq: u64, first: u32) -> Outputs {
    Outputs {
        seq,
        first,
        counts: U32s(Vec::new()),
        items: Packed::new(),
        failures: Vec::new(),
        continuations: Vec::new(),
    }
}

/// The entries of input `index` at the front of `sorted` (those of earlier inputs dropped).
fn take_own<T>(
    sorted: &mut std::iter::Peekable<std::vec::IntoIter<T>>,
    index: u32,
    of: impl Fn(&T) -> u32,
) -> Vec<T> {
    let mut own = Vec::new();
    while let Some(x) = sorted.next_if(|x| of(x) <= index) {
        if of(&x) == index {
            own.push(x);
        }
    }
    own
}

/// The outputs `own` of input `index`, in [`Partial`] messages that each fit in `limit`.
fn ahead(seq: u64, index: u32, own: &[&[u8]], limit: usize) -> Vec<Msg> {
    let mut out = Vec::new();
    let mut part = Packed::new();
    for x in own {
        if !part.is_empty() && size(part.data.len() + x.len(), part.len() + 1) > limit {
            let items = std::mem::take(&mut part);
            out.push(Msg::Partial(Partial { seq, index, items }));
        }
        part.push(x);
    }
    if !part.is_empty() {
        out.push(Msg::Partial(Partial {
            seq,
            index,
            items: part,
        }));
    }
    out
}

/// The failure of input `index` whose one output, or whose failures and continuations,
/// exceed a message.
fn too_big_failure(index: u32, limit: usize, own_bytes: usize) -> Failure {
    Failure {
        index,
        task: None,
        item_start: Vec::new(),
        item: None,
        message: format!(
            "an output of this input, or its failures and continuations, exceed the {limit}-byte message limit ({own_bytes} bytes of outputs)"
        ),
    }
}

/// What goes to the root instead of outputs that could not be encoded (`error`): every
/// input of the message completes as failed, so the root neither waits for them nor loses
/// them silently.
pub(crate) fn undeliverable(o: &Outputs, error: &str) -> Outputs {
    Outputs {
        seq: o.seq,
        first: o.first,
        counts: U32s(vec![0; o.counts.0.len()]),
        items: Packed::new(),
        failures: (0..o.counts.0.len() as u32)
            .map(|i| Failure {
                index: o.first + i,
                task: None,
                item_start: Vec::new(),
                item: None,
                message: format!("the node could not send this input's outputs: {error}"),
            })
            .collect(),
        continuations: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(counts: Vec<u32>, item_len: usize) -> Outputs {
        let mut items = Packed::new();
        for (i, &n) in counts.iter().enumerate() {
            for j in 0..n {
                let head = format!("{i}-{j}-");
                let pad = item_len.saturating_sub(head.len());
                items.push(format!("{head}{}", "x".repeat(pad)).as_bytes());
            }
        }
        Outputs {
            seq: 1,
            first: 10,
            counts: U32s(counts),
            items,
            failures: vec![],
            continuations: vec![],
        }
    }

    fn encoded(o: &Outputs) -> usize {
        let mut buf = bytes::BytesMut::new();
        protocol::codec::encode_frame(&protocol::Msg::Outputs(o.clone()), &mut buf, usize::MAX)
            .unwrap();
        buf.len()
    }

    /// The outputs messages among `msgs`, in order.
    fn outs(msgs: &[Msg]) -> Vec<&Outputs> {
        msgs.iter()
            .filter_map(|m| match m {
                Msg::Outputs(o) => Some(o),
                _ => None,
            })
            .collect()
    }

    /// The partial messages among `msgs`, in order.
    fn partials(msgs: &[Msg]) -> Vec<&Partial> {
        msgs.iter()
            .filter_map(|m| match m {
                Msg::Partial(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    fn encoded_msg(m: &Msg) -> usize {
        let mut buf = bytes::BytesMut::new();
        protocol::codec::encode_frame(m, &mut buf, usize::MAX).unwrap();
        buf.len()
    }

    #[test]
    fn outputs_are_split_by_whole_inputs_and_oversized_inputs_go_ahead_in_parts() {
        let o = outputs(vec![2, 0, 1, 3], 44);
        let msgs = fit_in_frames(o.clone(), 250);
        let parts = outs(&msgs);
        assert!(parts.len() > 1 && partials(&msgs).is_empty());
        let firsts: Vec<u32> = parts.iter().map(|p| p.first).collect();
        assert_eq!(firsts[0], 10);
        let total: usize = parts.iter().map(|p| p.counts.0.len()).sum();
        assert_eq!(total, 4);
        // Too small for input 13's three outputs: they go ahead in two parts, before the
        // message that completes input 13 (with none of them); nothing fails.
        let msgs = fit_in_frames(o, 200);
        for m in &msgs {
            assert!(encoded_msg(m) <= 200, "{}", encoded_msg(m));
        }
        let ahead = partials(&msgs);
        assert_eq!(ahead.iter().map(|p| p.index).collect::<Vec<_>>(), [13, 13]);
        let sent: Vec<&[u8]> = ahead.iter().flat_map(|p| p.items.iter()).collect();
        assert_eq!(sent.len(), 3);
        assert!(sent[0].starts_with(b"3-0-") && sent[2].starts_with(b"3-2-"));
        let parts = outs(&msgs);
        assert!(parts.iter().all(|p| p.failures.is_empty()));
        let last = msgs
            .iter()
            .rposition(|m| matches!(m, Msg::Partial(_)))
            .unwrap();
        let completes_13 = msgs
            .iter()
            .position(|m| matches!(m, Msg::Outputs(o) if o.first + o.counts.0.len() as u32 > 13))
            .unwrap();
        assert!(last < completes_13, "the parts go first");
        let counts: Vec<u32> = parts.iter().flat_map(|p| p.counts.0.clone()).collect();
        assert_eq!(counts, [2, 0, 1, 0]);
        // One output alone past the limit: that input fails, the others arrive.
        let msgs = fit_in_frames(outputs(vec![1, 1], 300), 200);
        let failed: Vec<u32> = outs(&msgs)
            .iter()
            .flat_map(|p| p.failures.iter().map(|f| f.index))
            .collect();
        assert_eq!(failed, [10, 11]);
        assert!(partials(&msgs).is_empty());
    }

    #[test]
    fn big_outputs_split_into_frames_that_encode_within_the_limit() {
        // 700 outputs of 100 KB: one message would be 70 MB.
        let o = outputs(vec![1; 700], 100_000);
        let limit = 48 << 20;
        let msgs = fit_in_frames(o, limit);
        let parts = outs(&msgs);
        assert_eq!(parts.len(), 2);
        for p in &parts {
            assert!(encoded(p) <= limit, "{}", encoded(p));
        }
        assert_eq!(
            parts[1].first,
            parts[0].first + parts[0].counts.0.len() as u32
        );
        // One input of 700 such outputs: parts within the limit, then its completion.
        let msgs = fit_in_frames(outputs(vec![700], 100_000), limit);
        assert_eq!(partials(&msgs).len(), 2);
        for m in &msgs {
            assert!(encoded_msg(m) <= limit, "{}", encoded_msg(m));
        }
        assert!(matches!(msgs.last(), Some(Msg::Outputs(o)) if o.counts.0 == [0]));
    }

    #[test]
    fn whole_failed_items_count_and_travel_with_their_input() {
        let mut o = outputs(vec![1, 1, 1], 10);
        let failure = |index| Failure {
            index,
            task: None,
            item_start: b"start".to_vec(),
            item: Some(vec![b'f'; 300]),
            message: "boom".into(),
        };
        o.failures = vec![failure(12), failure(10)];
        let msgs = fit_in_frames(o, 900);
        let parts = outs(&msgs);
        assert!(parts.len() >= 2);
        for p in &parts {
            assert!(encoded(p) <= 900, "{}", encoded(p));
            for f in &p.failures {
                let end = p.first + p.counts.0.len() as u32;
                assert!(f.index >= p.first && f.index < end, "with its input");
                assert_eq!(f.item.as_ref().map(Vec::len), Some(300));
            }
        }
        let failed: usize = parts.iter().map(|p| p.failures.len()).sum();
        assert_eq!(failed, 2);
    }

    #[test]
    fn undeliverable_outputs_fail_every_input_of_the_message() {
        let o = outputs(vec![2, 0, 1], 10);
        let u = undeliverable(&o, "too big");
        assert_eq!((u.seq, u.first, u.counts.0.clone()), (1, 10, vec![0, 0, 0]));
        let idx: Vec<u32> = u.failures.iter().map(|f| f.index).collect();
        assert_eq!(idx, [10, 11, 12]);
        assert!(u.failures[0].message.contains("too big"));
    }
}
