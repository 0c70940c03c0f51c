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

/// The conversions of a chain: one into each stage (`tagged[k]` says whether task `k` takes
/// tagged items) and one at the exit, for a root that feeds and wants tagged items or not.
pub fn plan(tagged: &[bool], tagged_root: bool) -> (Vec<Convert>, Convert) {
    let form = |t: bool| if t { Form::Tagged } else { Form::Raw };
    let mut prev = form(tagged_root);
    let mut inputs = Vec::with_capacity(tagged.len());
    for &t in tagged {
        inputs.push(Convert::between(prev, form(t), false));
        prev = form(t);
    }
    (inputs, Convert::between(prev, form(tagged_root), true))
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
        let (inputs, exit) = plan(&[CORE, PY, PY, CORE], false);
        assert_eq!(inputs, [Keep, Prepend(b'r'), Keep, Strip]);
        assert_eq!(exit, Keep);
        // A chain ending in Python hands its payload out without the tag.
        let (inputs, exit) = plan(&[PY], false);
        assert_eq!(inputs, [Prepend(b'r')]);
        assert_eq!(exit, Strip);
    }

    #[test]
    fn a_tagged_root_keeps_tags_and_core_outputs_become_bytes() {
        let (inputs, exit) = plan(&[PY, CORE], true);
        assert_eq!(inputs, [Keep, Strip]);
        assert_eq!(exit, Prepend(b'b'));
        let (inputs, exit) = plan(&[CORE, PY], true);
        assert_eq!(inputs, [Strip, Prepend(b'r')]);
        assert_eq!(exit, Keep);
        // Core only: tags lost going in, `b` coming out.
        assert_eq!(
            plan(&[CORE, CORE], true),
            (vec![Strip, Keep], Prepend(b'b'))
        );
        assert_eq!(plan(&[CORE, CORE], false), (vec![Keep, Keep], Keep));
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
