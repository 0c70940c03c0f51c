//! How items cross the ABI: [`FromItem`] decodes a task's input from the item bytes, [`Item`]
//! encodes one output, [`Output`] says what a task's return value emits, and [`Emitter`] lets a
//! task emit as it goes.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::io::Write as _;

use serde::Serialize;
use serde::de::Deserialize;

use crate::sys;

/// A typed item encoded as JSON, which keeps typed items readable on the line-based CLI.
///
/// As an input, `Json<T>` decodes the item with `serde_json` (a decoding error fails the
/// item); `T` may borrow from the item, e.g. `Json<&str>` or a struct with `&str` fields. As an
/// output, it emits the compact JSON text of `T`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Json<T>(pub T);

/// Emits every element of an iterator, one item each: the return type of a generator task
/// that does not want to collect its outputs into a `Vec` first.
#[derive(Clone, Copy, Debug)]
pub struct Each<I>(pub I);

/// A task input that can be decoded from the item bytes.
///
/// Implemented for `&[u8]` and `&str` (borrowed from the input buffer, no copy), `Vec<u8>`,
/// `String`, [`Json<T>`], and integers and floats written as decimal text (surrounding
/// whitespace allowed).
pub trait FromItem<'a>: Sized {
    /// Decodes the item.
    ///
    /// # Errors
    ///
    /// A message saying why the item is not a `Self`; the item then fails with it.
    fn from_item(item: &'a [u8]) -> Result<Self, String>;
}

/// One output item.
///
/// Implemented for `&[u8]`, `&[u8; N]`, `Vec<u8>`, `Box<[u8]>`, `Cow<[u8]>`, `&str`, `String`,
/// `&String`, `Cow<str>` (emitted as they are, borrowed ones without a copy), [`Json<T>`], and
/// integers (except `u8`, so that `Vec<u8>` stays one item) and floats as decimal text.
pub trait Item {
    /// Hands the encoded bytes of the item to `f`.
    ///
    /// # Errors
    ///
    /// A message when the item cannot be encoded (a `Serialize` impl that fails).
    fn encode<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, String>;
}

/// What a task's return value emits.
///
/// - an [`Item`]: that one item;
/// - `()`: nothing (the item is dropped, or the task emitted through its [`Emitter`]);
/// - `Option<O>`: `None` drops the item, `Some(o)` emits what `o` does;
/// - `Result<O, E: Display>`: `Err(e)` fails the item with the message `e`;
/// - `Vec<T>`, `[T; N]` of items, and [`Each`] over an iterator of items: each of them, in
///   order (a generator task; `Vec<u8>` is one item, not many).
pub trait Output {
    /// Whether this type can hold several items, which makes a task returning it a generator:
    /// true for `Vec<T>`, arrays of more than one item and [`Each`]; what the inner type says
    /// for `Option` and `Result`; false for a single item and `()`.
    const GENERATOR: bool = false;

    /// Emits the outputs.
    ///
    /// # Errors
    ///
    /// The message that fails the item.
    fn emit_into(self, out: &mut Emitter) -> Result<(), String>;
}

/// Emits output items during a task call: the second parameter of a task that emits as it
/// goes, e.g. `fn fan_out(item: &str, out: &mut Emitter)`, and of [`Stateful::process`].
///
/// [`Stateful::process`]: crate::Stateful::process
#[derive(Debug)]
pub struct Emitter {
    // The first item that could not be encoded; it fails the item once the task returns,
    // which keeps `emit` free of a `Result` that every caller would have to handle.
    error: Option<String>,
}

impl Emitter {
    pub(crate) const fn new() -> Self {
        Emitter { error: None }
    }

    /// Emits one item; the host copies it before this returns.
    #[inline]
    pub fn emit<T: Item>(&mut self, item: T) {
        if let Err(error) = item.encode(sys::emit) {
            self.error.get_or_insert(error);
        }
    }

    /// The task's result, failed if an item could not be encoded.
    pub(crate) fn finish(self, result: Result<(), String>) -> Result<(), String> {
        result?;
        self.error.map_or(Ok(()), Err)
    }
}

impl<'a> FromItem<'a> for &'a [u8] {
    #[inline]
    fn from_item(item: &'a [u8]) -> Result<Self, String> {
        Ok(item)
    }
}

impl<'a> FromItem<'a> for &'a str {
    #[inline]
    fn from_item(item: &'a [u8]) -> Result<Self, String> {
        std::str::from_utf8(item).map_err(|e| format!("item is not valid UTF-8: {e}"))
    }
}

impl FromItem<'_> for Vec<u8> {
    #[inline]
    fn from_item(item: &[u8]) -> Result<Self, String> {
        Ok(item.to_vec())
    }
}

impl FromItem<'_> for String {
    #[inline]
    fn from_item(item: &[u8]) -> Result<Self, String> {
        <&str>::from_item(item).map(str::to_owned)
    }
}

impl<'a, T: Deserialize<'a>> FromItem<'a> for Json<T> {
    #[inline]
    fn from_item(item: &'a [u8]) -> Result<Self, String> {
        serde_json::from_slice(item).map(Json).map_err(|e| {
            format!(
                "item is not JSON for {}: {e}: {}",
                std::any::type_name::<T>(),
                preview(item)
            )
        })
    }
}

macro_rules! number_from_item {
    ($($t:ty),*) => {$(
        impl FromItem<'_> for $t {
            #[inline]
            fn from_item(item: &[u8]) -> Result<Self, String> {
                std::str::from_utf8(item)
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
                    .ok_or_else(|| format!("item is not {}: {}", stringify!($t), preview(item)))
            }
        }
    )*};
}

number_from_item!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64
);

/// The start of an item, for error messages: long or binary items stay readable.
pub(crate) fn preview(item: &[u8]) -> String {
    const MAX: usize = 64;
    let text = String::from_utf8_lossy(&item[..item.len().min(MAX)]);
    if item.len() > MAX {
        format!("{text:?}... ({} bytes)", item.len())
    } else {
        format!("{text:?}")
    }
}

impl Item for &[u8] {
    #[inline]
    fn encode<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, String> {
        Ok(f(self))
    }
}

impl<const N: usize> Item for &[u8; N] {
    #[inline]
    fn encode<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, String> {
        Ok(f(self))
    }
}

impl Item for Vec<u8> {
    #[inline]
    fn encode<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, String> {
        Ok(f(&self))
    }
}

impl Item for Box<[u8]> {
    #[inline]
    fn encode<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, String> {
        Ok(f(&self))
    }
}

impl Item for Cow<'_, [u8]> {
    #[inline]
    fn encode<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, String> {
        Ok(f(&self))
    }
}

impl Item for &str {
    #[inline]
    fn encode<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, String> {
        Ok(f(self.as_bytes()))
    }
}

impl Item for String {
    #[inline]
    fn encode<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, String> {
        Ok(f(self.as_bytes()))
    }
}

impl Item for &String {
    #[inline]
    fn encode<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, String> {
        Ok(f(self.as_bytes()))
    }
}

impl Item for Cow<'_, str> {
    #[inline]
    fn encode<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, String> {
        Ok(f(self.as_bytes()))
    }
}

impl<T: Serialize> Item for Json<T> {
    #[inline]
    fn encode<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, String> {
        with_scratch(|buf| {
            serde_json::to_writer(&mut *buf, &self.0).map_err(|e| {
                format!("cannot encode {} as JSON: {e}", std::any::type_name::<T>())
            })?;
            Ok(f(buf))
        })
    }
}

macro_rules! number_item {
    ($($t:ty),*) => {$(
        impl Item for $t {
            #[inline]
            fn encode<R>(self, f: impl FnOnce(&[u8]) -> R) -> Result<R, String> {
                with_scratch(|buf| {
                    write!(buf, "{self}").expect("writing to a Vec cannot fail");
                    Ok(f(buf))
                })
            }
        }
    )*};
}

number_item!(
    u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64
);

thread_local! {
    // Encoded outputs go here, so JSON and numbers cost no allocation per item.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the cleared scratch buffer.
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    // One huge item should not pin its memory for the life of the instance.
    const KEEP: usize = 1 << 20;
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let result = f(&mut buf);
            if buf.capacity() > KEEP {
                *buf = Vec::new();
            }
            result
        }
        // A `Serialize` impl that emits or encodes a number itself: rare, so just allocate.
        Err(_) => f(&mut Vec::new()),
    })
}

impl Output for () {
    #[inline]
    fn emit_into(self, _out: &mut Emitter) -> Result<(), String> {
        Ok(())
    }
}

impl<T: Item> Output for T {
    #[inline]
    fn emit_into(self, out: &mut Emitter) -> Result<(), String> {
        out.emit(self);
        Ok(())
    }
}

impl<O: Output> Output for Option<O> {
    const GENERATOR: bool = O::GENERATOR;

    #[inline]
    fn emit_into(self, out: &mut Emitter) -> Result<(), String> {
        match self {
            Some(output) => output.emit_into(out),
            None => Ok(()),
        }
    }
}

impl<O: Output, E: fmt::Display> Output for Result<O, E> {
    const GENERATOR: bool = O::GENERATOR;

    #[inline]
    fn emit_into(self, out: &mut Emitter) -> Result<(), String> {
        match self {
            Ok(output) => output.emit_into(out),
            Err(error) => Err(error.to_string()),
        }
    }
}

impl<T: Item> Output for Vec<T> {
    const GENERATOR: bool = true;

    #[inline]
    fn emit_into(self, out: &mut Emitter) -> Result<(), String> {
        Each(self).emit_into(out)
    }
}

impl<T: Item, const N: usize> Output for [T; N] {
    const GENERATOR: bool = N > 1;

    #[inline]
    fn emit_into(self, out: &mut Emitter) -> Result<(), String> {
        Each(self).emit_into(out)
    }
}

impl<I> Output for Each<I>
where
    I: IntoIterator,
    I::Item: Item,
{
    const GENERATOR: bool = true;

    #[inline]
    fn emit_into(self, out: &mut Emitter) -> Result<(), String> {
        for item in self.0 {
            out.emit(item);
        }
        Ok(())
    }
}
