//! The `task!` and `stateful_task!` macros: each turns a plain Rust item into a task, with the
//! `<task>` and `pcluster_init.<task>` exports on wasm32 and a `<task>::TASK` glue handle that
//! [`testing`](crate::testing) drives natively.

/// Makes a task of a plain Rust function, which stays callable as it is.
///
/// Two forms, the function's own name being the task's export name:
/// - `fn name(item: In) -> Out`: `In` is any [`FromItem`](crate::FromItem) (`&[u8]`, `&str`,
///   [`Json<T>`](crate::Json), numbers, ...) and `Out` any [`Output`](crate::Output)
///   (`Option<T>`, `Vec<T>`, `Result<T, E>`, `()`, a single item, ...);
/// - `fn name(item: In, out: &mut Emitter) -> Out`: the task also emits through `out`, e.g.
///   a generator whose outputs are not worth collecting.
///
/// Besides the function, it makes a module of the same name (modules and functions do not
/// clash) holding the glue: the `name` and `pcluster_init.name` exports on wasm32 (init keeps
/// the args for [`args`](crate::args)) and `name::TASK` for [`testing`](crate::testing).
/// Use it at module level: the glue reaches the function and the types of its signature
/// through `super::*`.
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
/// let outcome = pcluster_task::testing::run(&words::TASK, br#"["a", "b"]"#);
/// assert_eq!(outcome.texts(), ["a", "b"]);
/// # }
/// ```
#[macro_export]
macro_rules! task {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident($arg:ident : $ty:ty, $out:ident : $out_ty:ty $(,)?)
            $(-> $ret:ty)? $body:block
    ) => {
        $(#[$attr])*
        $vis fn $name($arg: $ty, $out: $out_ty) $(-> $ret)? $body

        $crate::__task_glue! {
            $vis $name {
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
        $(#[$attr:meta])*
        $vis:vis fn $name:ident($arg:ident : $ty:ty $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$attr])*
        $vis fn $name($arg: $ty) $(-> $ret)? $body

        $crate::__task_glue! {
            $vis $name {
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
            $vis $name {
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

/// The module both task macros make: `init` and `call` come from the caller.
#[doc(hidden)]
#[macro_export]
macro_rules! __task_glue {
    ($vis:vis $name:ident { $($glue:item)* }) => {
        #[doc(hidden)]
        #[allow(dead_code, unused_imports)]
        $vis mod $name {
            use super::*;

            $($glue)*

            /// The task's glue, for `pcluster_task::testing`.
            pub const TASK: $crate::__private::Task =
                $crate::__private::Task::__new(::core::stringify!($name), init, call);

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
