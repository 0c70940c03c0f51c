//! Item tags at stage boundaries: component tasks (Python) see *tagged* items, whose first
//! byte says what the payload is; core tasks see raw bytes. These pure rules say what each
//! boundary of a chain does to an item (docs/ABI.md, "Item tags").

/// `b`: bytes.
pub const TAG_BYTES: u8 = b'b';
/// `r`: raw bytes from outside the tagged world (a string when valid UTF-8, else bytes).
pub const TAG_RAW: u8 = b'r';

/// How items look on one side of a boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Plain bytes (core tasks; a root that did not ask for tags).
    Raw,
    /// A tag byte, then the payload (component tasks; a root that asked for tags).
    Tagged,
}

/// What a boundary does to each item crossing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Convert {
    /// Nothing.
    Keep,
    /// Drops the tag byte.
    Strip,
    /// Puts this tag in front.
    Prepend(u8),
}

impl Convert {
    /// The conversion from items of form `from` into a consumer of form `to`; `exit` is the
    /// chain's exit (raw bytes become `b` there, `r` going into a task).
    pub fn between(from: Form, to: Form, exit: bool) -> Convert {
        match (from, to) {
            (Form::Raw, Form::Tagged) if exit => Convert::Prepend(TAG_BYTES),
            (Form::Raw, Form::Tagged) => Convert::Prepend(TAG_RAW),
            (Form::Tagged, Form::Raw) => Convert::Strip,
            _ => Convert::Keep,
        }
    }

    /// `item` without its tag: an empty item has none to lose.
    #[inline]
    pub fn strip(item: &[u8]) -> &[u8] {
        item.get(1..).unwrap_or(item)
    }

    /// Appends `item`, converted, to `out`.
    #[inline]
    pub fn apply_into(self, item: &[u8], out: &mut Vec<u8>) {
        match self {
            Convert::Keep => out.extend_from_slice(item),
            Convert::Strip => out.extend_from_slice(Convert::strip(item)),
            Convert::Prepend(tag) => {
                out.push(tag);
                out.extend_from_slice(item);
            }
        }
    }

    /// The length of `item` once converted.
    #[inline]
    pub fn len_after(self, item: &[u8]) -> usize {
        match self {
            Convert::Keep => item.len(),
            Convert::Strip => item.len().saturating_sub(1),
            Convert::Prepend(_) => item.len() + 1,
        }
    }
}

/// Why a branching chain's tags cannot be planned: one conversion per task (into it) and one
/// at the exit need every task's feeders, and every sink, to hand out items of one form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MixedForms {
    /// A task is fed by Python (component) and core tasks alike.
    #[error(
        "task {task} is fed by both Python (component) and core tasks; give it feeders of one kind"
    )]
    Feeders {
        /// The task's position in the chain.
        task: usize,
    },
    /// The chain's outputs come from Python (component) and core sinks alike.
    #[error(
        "the chain's outputs come from both Python (component) and core tasks (sinks); end it in tasks of one kind"
    )]
    Sinks,
}

/// The conversions of a chain: one into each task (`tagged[k]` says whether task `k` takes
/// tagged items) and one at the exit, for a root that feeds and wants tagged items or not.
/// `next` is the graph of a branching chain (each task's successors; `None`: each task feeds
/// the next, the last is the sink): a task converts from the form its feeders hand out (the
/// root's for the first task), the exit from the sinks' form.
///
/// # Errors
/// When a task's feeders, or the sinks, are of both forms.
pub fn plan(
    tagged: &[bool],
    next: Option<&[Vec<usize>]>,
    tagged_root: bool,
) -> Result<(Vec<Convert>, Convert), MixedForms> {
    let form = |t: bool| if t { Form::Tagged } else { Form::Raw };
    let n = tagged.len();
    // The form of the items each task is fed.
    let mut fed: Vec<Option<Form>> = vec![None; n];
    let mut sinks: Option<Form> = None;
    let mut feeds = |from: Form, to: Option<usize>| -> Result<(), MixedForms> {
        let slot = match to {
            Some(t) => &mut fed[t],
            None => &mut sinks,
        };
        match *slot {
            Some(f) if f != from => {
                Err(to.map_or(MixedForms::Sinks, |task| MixedForms::Feeders { task }))
            }
            _ => {
                *slot = Some(from);
                Ok(())
            }
        }
    };
    if n > 0 {
        feeds(form(tagged_root), Some(0))?;
    }
    for (k, &t) in tagged.iter().enumerate() {
        match next {
            None => feeds(form(t), (k + 1 < n).then_some(k + 1))?,
            Some(next) => match next.get(k).map(Vec::as_slice) {
                None | Some([]) => feeds(form(t), None)?,
                Some(succ) => {
                    for &s in succ {
                        feeds(form(t), Some(s))?;
                    }
                }
            },
        }
    }
    let inputs = tagged
        .iter()
        .zip(&fed)
        .map(|(&t, f)| Convert::between(f.unwrap_or(form(t)), form(t), false))
        .collect();
    let exit = Convert::between(sinks.unwrap_or(form(tagged_root)), form(tagged_root), true);
    Ok((inputs, exit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Convert::*;

    const PY: bool = true;
    const CORE: bool = false;

    #[test]
    fn an_untagged_root_gets_raw_bytes_and_python_gets_r() {
        // pcluster run: core → py → py → core.
        let (inputs, exit) = plan(&[CORE, PY, PY, CORE], None, false).unwrap();
        assert_eq!(inputs, [Keep, Prepend(b'r'), Keep, Strip]);
        assert_eq!(exit, Keep);
        // A chain ending in Python hands its payload out without the tag.
        let (inputs, exit) = plan(&[PY], None, false).unwrap();
        assert_eq!(inputs, [Prepend(b'r')]);
        assert_eq!(exit, Strip);
    }

    #[test]
    fn a_tagged_root_keeps_tags_and_core_outputs_become_bytes() {
        let (inputs, exit) = plan(&[PY, CORE], None, true).unwrap();
        assert_eq!(inputs, [Keep, Strip]);
        assert_eq!(exit, Prepend(b'b'));
        let (inputs, exit) = plan(&[CORE, PY], None, true).unwrap();
        assert_eq!(inputs, [Strip, Prepend(b'r')]);
        assert_eq!(exit, Keep);
        // Core only: tags lost going in, `b` coming out.
        assert_eq!(
            plan(&[CORE, CORE], None, true).unwrap(),
            (vec![Strip, Keep], Prepend(b'b'))
        );
        assert_eq!(
            plan(&[CORE, CORE], None, false).unwrap(),
            (vec![Keep, Keep], Keep)
        );
    }

    #[test]
    fn a_branching_chain_is_planned_along_its_edges() {
        // 0 (core) → 1 (py) and 2 (core); 1 → 3 (core); 2 → 3; sinks: 3 alone. In task
        // order 2 would follow 1 (tagged) and be stripped; along the graph it is fed raw.
        let next = vec![vec![1, 2], vec![3], vec![3], vec![]];
        let got = plan(&[CORE, PY, CORE, CORE], Some(&next), false);
        // 3 is fed by Python (1) and core (2): refused, naming it.
        assert_eq!(got, Err(MixedForms::Feeders { task: 3 }));
        // 0 (core) → 1 (py) → 3 (core sink); 0 → 2 (core sink).
        let next = vec![vec![1, 2], vec![3], vec![], vec![]];
        let (inputs, exit) = plan(&[CORE, PY, CORE, CORE], Some(&next), false).unwrap();
        assert_eq!(inputs, [Keep, Prepend(b'r'), Keep, Strip]);
        assert_eq!(exit, Keep);
        // A tagged root: the core sinks' outputs become `b`.
        let (inputs, exit) = plan(&[CORE, PY, CORE, CORE], Some(&next), true).unwrap();
        assert_eq!(inputs, [Strip, Prepend(b'r'), Keep, Strip]);
        assert_eq!(exit, Prepend(b'b'));
        // A Python sink beside a core sink: their outputs would differ in form.
        let next = vec![vec![1, 2], vec![], vec![]];
        assert_eq!(
            plan(&[CORE, PY, CORE], Some(&next), false),
            Err(MixedForms::Sinks)
        );
        // Python fanning out into Python and core tasks.
        let next = vec![vec![1, 2], vec![3], vec![3], vec![]];
        let (inputs, exit) = plan(&[PY, PY, PY, PY], Some(&next), false).unwrap();
        assert_eq!(inputs, [Prepend(b'r'), Keep, Keep, Keep]);
        assert_eq!(exit, Strip);
    }

    #[test]
    fn conversions_act_on_bytes() {
        let mut out = Vec::new();
        Prepend(TAG_RAW).apply_into(b"hi", &mut out);
        Strip.apply_into(b"sok", &mut out);
        Strip.apply_into(b"", &mut out);
        Keep.apply_into(b"!", &mut out);
        assert_eq!(out, b"rhiok!");
        assert_eq!(Prepend(b'b').len_after(b"ab"), 3);
        assert_eq!(Strip.len_after(b""), 0);
        assert_eq!(Convert::strip(b"s\xff"), b"\xff");
    }
}
