//! The `task!` and `stateful_task!` macros: each turns a plain Rust item into a task, with the
//! `<task>` and `pcluster_init.<task>` exports on wasm32 and a `<task>::TASK` glue handle that
//! [`testing`](crate::testing) drives natively.

/// Makes a task of a plain Rust function, which stays callable as it is.
///
/// Two forms, the function's own name being the task's export name:
/// - `fn name(item: In) -> Out`: `In` is any [`FromItem`](crate::FromItem) (`&[u8]`, `&str`,
///   `Vec<u8>`, `String`, [`Json<T>`](crate::Json), numbers, ...) and `Out` any
///   [`Output`](crate::Output) (`Option<T>`, `Vec<T>`, `Result<T, E>`, `()`, a single item,
///   ...); the return type may be left out (`()`);
/// - `fn name(item: In, out: &mut Emitter) -> Out`: the task also emits through `out`, e.g.
///   a generator whose outputs are not worth collecting.
///
/// The item parameter may be `mut` (`fn name(mut item: Vec<u8>) -> Vec<u8>`). Anything else
/// (no parameter, more parameters, generics, `async`) is refused with a message saying so.
///
/// Besides the function, it makes a module of the same name (modules and functions do not
/// clash) holding the glue: the `name` and `pcluster_init.name` exports on wasm32 (init keeps
/// the args for [`args`](crate::args)), `name::TASK` for [`testing`](crate::testing), and
/// `name::GENERATOR`, whether the task can emit several items per input: its return type can
/// hold several ([`Output::GENERATOR`](crate::Output::GENERATOR): `Vec`, arrays, [`Each`](crate::Each))
/// or it takes an [`Emitter`](crate::Emitter). Generators are listed in the module's
/// `pcluster.generators` custom section, so a host can check a chain's `generator` flags at
/// setup. Use it at module level: the glue reaches the function and the types of its
/// signature through `super::*`.
///
/// ```
/// use pcluster_task::{Emitter, Json, task};
///
/// task! {
///     /// Emits the item as it is, straight from the input buffer.
///     pub fn identity(item: &[u8]) -> &[u8] {
///         item
///     }
/// }
///
/// task! {
///     /// Doubles a number; an item that is no number fails.
///     pub fn double(n: u64) -> Option<u64> {
///         n.checked_mul(2)
///     }
/// }
///
/// task! {
///     /// Upper-cases the item in place.
///     pub fn shout(mut item: String) -> String {
///         item.make_ascii_uppercase();
///         item
///     }
/// }
///
/// task! {
///     /// Emits each word of a JSON list of words.
///     pub fn words(list: Json<Vec<&str>>, out: &mut Emitter) {
///         for word in list.0 {
///             out.emit(word);
///         }
///     }
/// }
///
/// # fn main() {
/// assert_eq!(identity(b"abc"), b"abc");
/// const { assert!(!identity::GENERATOR && words::GENERATOR) };
/// let outcome = pcluster_task::testing::run(&words::TASK, br#"["a", "b"]"#);
/// assert_eq!(outcome.texts(), ["a", "b"]);
/// # }
/// ```
///
/// A function of another shape is refused with the forms above as the message:
///
/// ```compile_fail
/// use pcluster_task::task;
///
/// task! {
///     pub fn join(a: &str, b: &str, c: &str) -> String {
///         [a, b, c].concat()
///     }
/// }
/// ```
#[macro_export]
macro_rules! task {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident(mut $arg:ident : $ty:ty, $out:ident : $out_ty:ty $(,)?)
            $(-> $ret:ty)? $body:block
    ) => {
        $crate::__task_fn! {
            [$(#[$attr])*] [$vis] $name [mut $arg] [$ty] [$out : $out_ty] [$($ret)?] $body
        }
    };
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident($arg:ident : $ty:ty, $out:ident : $out_ty:ty $(,)?)
            $(-> $ret:ty)? $body:block
    ) => {
        $crate::__task_fn! {
            [$(#[$attr])*] [$vis] $name [$arg] [$ty] [$out : $out_ty] [$($ret)?] $body
        }
    };
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident(mut $arg:ident : $ty:ty $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $crate::__task_fn! {
            [$(#[$attr])*] [$vis] $name [mut $arg] [$ty] [] [$($ret)?] $body
        }
    };
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident($arg:ident : $ty:ty $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $crate::__task_fn! {
            [$(#[$attr])*] [$vis] $name [$arg] [$ty] [] [$($ret)?] $body
        }
    };
    ($($other:tt)*) => {
        ::core::compile_error!(
            "task! takes one function with one item parameter, optionally `mut`, and an \
             optional emitter: `fn name(item: In) -> Out { .. }` or \
             `fn name(item: In, out: &mut Emitter) -> Out { .. }`, where `In` is a FromItem \
             (&[u8], &str, Vec<u8>, String, Json<T>, a number) and `Out` an Output (an item, \
             Option, Result, Vec, an array, Each, or nothing); no generics, no async"
        );
    };
}

/// The function and glue of a [`task!`]: its arms normalized, with or without an emitter.
#[doc(hidden)]
#[macro_export]
macro_rules! __task_fn {
    (
        [$(#[$attr:meta])*] [$vis:vis] $name:ident [$($arg:tt)+] [$ty:ty]
            [$out:ident : $out_ty:ty] [$($ret:ty)?] $body:block
    ) => {
        $(#[$attr])*
        $vis fn $name($($arg)+ : $ty, $out: $out_ty) $(-> $ret)? $body

        $crate::__task_glue! {
            $vis $name, generator: true, {
                #[inline]
                fn init(args: &[u8]) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::init_args(args)
                }

                #[inline]
                fn call(item: &[u8]) -> ::core::result::Result<(), ::std::string::String> {
                    let input: $ty = $crate::FromItem::from_item(item)?;
                    let mut out = $crate::__private::emitter();
                    let output = super::$name(input, &mut out);
                    let result = $crate::Output::emit_into(output, &mut out);
                    $crate::__private::finish(out, result)
                }
            }
        }
    };
    (
        [$(#[$attr:meta])*] [$vis:vis] $name:ident [$($arg:tt)+] [$ty:ty] []
            [$($ret:ty)?] $body:block
    ) => {
        $(#[$attr])*
        $vis fn $name($($arg)+ : $ty) $(-> $ret)? $body

        $crate::__task_glue! {
            $vis $name, generator: $crate::__private::returns_several(&super::$name), {
                #[inline]
                fn init(args: &[u8]) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::init_args(args)
                }

                #[inline]
                fn call(item: &[u8]) -> ::core::result::Result<(), ::std::string::String> {
                    let input: $ty = $crate::FromItem::from_item(item)?;
                    let mut out = $crate::__private::emitter();
                    let output = super::$name(input);
                    let result = $crate::Output::emit_into(output, &mut out);
                    $crate::__private::finish(out, result)
                }
            }
        }
    };
}

/// Makes a task of a [`Stateful`](crate::Stateful) type: each instance builds one value from
/// the task's args in `pcluster_init.name` and hands it every item in `name`.
///
/// `stateful_task!(name, Type);` makes a module `name` with both exports on wasm32 and
/// `name::TASK` for [`testing`](crate::testing); put `pub` before the name to make the module
/// public. A host that never calls init gets the state built from empty args at the first item.
///
/// ```
/// use pcluster_task::{Emitter, Stateful, stateful_task};
///
/// /// Numbers the items it sees, starting from its args.
/// pub struct Counter(u64);
///
/// impl Stateful for Counter {
///     fn init(args: &[u8]) -> Result<Self, String> {
///         let start = std::str::from_utf8(args).map_err(|e| e.to_string())?;
///         start.parse().map(Counter).map_err(|e| format!("bad start {start:?}: {e}"))
///     }
///
///     fn process(&mut self, _item: &[u8], out: &mut Emitter) -> Result<(), String> {
///         out.emit(self.0);
///         self.0 += 1;
///         Ok(())
///     }
/// }
///
/// stateful_task!(pub counter, Counter);
///
/// # fn main() {
/// use pcluster_task::testing;
/// testing::init(&counter::TASK, b"7").unwrap();
/// assert_eq!(testing::run(&counter::TASK, b"x").texts(), ["7"]);
/// assert_eq!(testing::run(&counter::TASK, b"y").texts(), ["8"]);
/// # }
/// ```
#[macro_export]
macro_rules! stateful_task {
    ($vis:vis $name:ident, $state:ty $(,)?) => {
        $crate::__task_glue! {
            $vis $name, generator: <$state as $crate::Stateful>::GENERATOR, {
                ::std::thread_local! {
                    static STATE: ::core::cell::RefCell<::core::option::Option<$state>> =
                        const { ::core::cell::RefCell::new(::core::option::Option::None) };
                }

                #[inline]
                fn init(args: &[u8]) -> ::core::result::Result<(), ::std::string::String> {
                    STATE.with_borrow_mut(|state| {
                        $crate::__private::init_state::<$state>(state, args)
                    })
                }

                #[inline]
                fn call(item: &[u8]) -> ::core::result::Result<(), ::std::string::String> {
                    STATE.with_borrow_mut(|state| $crate::__private::process::<$state>(state, item))
                }
            }
        }
    };
}

/// The module both task macros make: `init` and `call` come from the caller, and whether the
/// task is a generator.
#[doc(hidden)]
#[macro_export]
macro_rules! __task_glue {
    ($vis:vis $name:ident, generator: $generator:expr, { $($glue:item)* }) => {
        #[doc(hidden)]
        #[allow(dead_code, unused_imports)]
        $vis mod $name {
            use super::*;

            $($glue)*

            /// Whether the task can emit several items per input.
            pub const GENERATOR: bool = $generator;

            /// The task's glue, for `pcluster_task::testing`.
            pub const TASK: $crate::__private::Task = $crate::__private::Task::__new(
                ::core::stringify!($name),
                init,
                call,
                GENERATOR,
            );

            /// `name\n` in the `pcluster.generators` custom section when the task is a
            /// generator, nothing otherwise: the linker concatenates the sections of every task.
            #[cfg(target_arch = "wasm32")]
            #[used]
            #[unsafe(link_section = "pcluster.generators")]
            static GENERATOR_ENTRY: [u8; $crate::__private::generator_entry_len(
                ::core::stringify!($name),
                GENERATOR,
            )] = $crate::__private::generator_entry(::core::stringify!($name));

            #[cfg(target_arch = "wasm32")]
            #[unsafe(export_name = ::core::stringify!($name))]
            extern "C" fn export_call(len: usize) -> i32 {
                $crate::__private::run(len, call)
            }

            #[cfg(target_arch = "wasm32")]
            #[unsafe(export_name = ::core::concat!("pcluster_batch.", ::core::stringify!($name)))]
            extern "C" fn export_batch(count: usize, len: usize) -> i32 {
                $crate::__private::run_batch(count, len, call)
            }

            #[cfg(target_arch = "wasm32")]
            #[unsafe(export_name = ::core::concat!("pcluster_init.", ::core::stringify!($name)))]
            extern "C" fn export_init(len: usize) -> i32 {
                $crate::__private::run(len, init)
            }
        }
    };
}
