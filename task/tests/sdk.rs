//! The SDK as a task crate uses it: tasks made with the macros, driven through `testing` the
//! way a node drives their exports.

use std::borrow::Cow;

use pcluster_task::testing::{self, Outcome};
use pcluster_task::{Each, Emitter, Json, Level, Stateful, info, stateful_task, task, warn};
use serde::{Deserialize, Serialize};

task! {
    fn echo(item: &str) -> &str {
        info!("echo: {item}");
        item
    }
}

task! {
    fn bytes_twice(item: &[u8]) -> [&[u8]; 2] {
        [item, item]
    }
}

task! {
    fn keep_short(item: &str) -> Option<String> {
        (item.len() < 4).then(|| item.to_uppercase())
    }
}

task! {
    fn split_words(item: &str) -> Vec<&str> {
        item.split_whitespace().collect()
    }
}

task! {
    fn countdown(n: u32) -> Each<impl Iterator<Item = u32>> {
        Each((0..n).rev())
    }
}

task! {
    fn checked_half(n: i64) -> Result<i64, String> {
        if n % 2 == 0 { Ok(n / 2) } else { Err(format!("{n} is odd")) }
    }
}

task! {
    fn nothing(_item: &[u8]) {}
}

task! {
    fn shout(mut item: Vec<u8>) -> Vec<u8> {
        item.make_ascii_uppercase();
        item
    }
}

task! {
    fn trimmed(mut item: &str) -> &str {
        item = item.trim();
        item
    }
}

task! {
    fn repeat(mut n: u32, out: &mut Emitter) {
        while n > 0 {
            out.emit(n);
            n -= 1;
        }
    }
}

task! {
    fn owned(item: Vec<u8>) -> Cow<'static, str> {
        Cow::Owned(format!("{} bytes", item.len()))
    }
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
struct Point {
    x: i64,
    y: i64,
}

task! {
    fn mirror(p: Json<Point>) -> Json<Point> {
        Json(Point { x: p.0.y, y: p.0.x })
    }
}

task! {
    fn borrowed_json(name: Json<&str>) -> &str {
        name.0
    }
}

struct FailsToSerialize;

impl Serialize for FailsToSerialize {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refused"))
    }
}

task! {
    fn bad_output(_item: &[u8], out: &mut Emitter) {
        out.emit("first");
        out.emit(Json(FailsToSerialize));
    }
}

task! {
    fn fan(item: &str, out: &mut Emitter) -> Result<(), String> {
        let n: usize = item.parse().map_err(|e| format!("{item:?}: {e}"))?;
        for i in 0..n {
            out.emit(format!("{item}-{i}"));
        }
        Ok(())
    }
}

task! {
    fn with_args(item: &[u8]) -> Vec<u8> {
        [pcluster_task::args(), item].concat()
    }
}

task! {
    fn explode(item: &str) -> &str {
        assert!(!item.contains("boom"), "asked to explode by {item:?}");
        item
    }
}

struct Tally {
    label: String,
    seen: u64,
}

impl Stateful for Tally {
    fn init(args: &[u8]) -> Result<Self, String> {
        let label = std::str::from_utf8(args).map_err(|e| e.to_string())?;
        if label == "bad" {
            return Err("label may not be \"bad\"".into());
        }
        Ok(Tally {
            label: label.to_owned(),
            seen: 0,
        })
    }

    fn process(&mut self, item: &[u8], out: &mut Emitter) -> Result<(), String> {
        if item.is_empty() {
            warn!("{}: empty item", self.label);
            return Err("empty item".into());
        }
        self.seen += 1;
        out.emit(format!("{}{}", self.label, self.seen));
        Ok(())
    }
}

stateful_task!(tally, Tally);

fn ok_texts(outcome: &Outcome) -> Vec<&str> {
    assert_eq!(outcome.error, None, "{outcome:?}");
    outcome.texts()
}

#[test]
fn functions_stay_callable() {
    assert_eq!(echo("x"), "x");
    assert_eq!(keep_short("abcd"), None);
    assert_eq!(checked_half(3), Err("3 is odd".to_owned()));
}

#[test]
fn borrowed_text_in_and_out() {
    let outcome = testing::run(&echo::TASK, b"hello");
    assert_eq!(ok_texts(&outcome), ["hello"]);
    assert_eq!(outcome.logs, [(Level::Info, "echo: hello".to_owned())]);
    assert_eq!(echo::TASK.name(), "echo");
}

#[test]
fn invalid_utf8_fails_the_item() {
    let outcome = testing::run(&echo::TASK, b"\xff\xfe");
    assert!(outcome.items.is_empty());
    let error = outcome.error.expect("must fail");
    assert!(error.starts_with("item is not valid UTF-8"), "{error}");
}

#[test]
fn arrays_vecs_and_iterators_emit_each() {
    assert_eq!(
        ok_texts(&testing::run(&bytes_twice::TASK, b"ab")),
        ["ab", "ab"]
    );
    assert_eq!(
        ok_texts(&testing::run(&split_words::TASK, b" a b  c ")),
        ["a", "b", "c"]
    );
    assert_eq!(
        ok_texts(&testing::run(&countdown::TASK, b"3")),
        ["2", "1", "0"]
    );
    assert!(ok_texts(&testing::run(&split_words::TASK, b"   ")).is_empty());
}

#[test]
fn option_none_drops_the_item() {
    assert_eq!(ok_texts(&testing::run(&keep_short::TASK, b"abc")), ["ABC"]);
    assert!(ok_texts(&testing::run(&keep_short::TASK, b"abcd")).is_empty());
    assert!(ok_texts(&testing::run(&nothing::TASK, b"abcd")).is_empty());
}

#[test]
fn owned_input_and_output() {
    assert_eq!(ok_texts(&testing::run(&owned::TASK, b"abcd")), ["4 bytes"]);
}

#[test]
fn numbers_in_and_out() {
    assert_eq!(
        ok_texts(&testing::run(&checked_half::TASK, b" -42\n")),
        ["-21"]
    );
    let odd = testing::run(&checked_half::TASK, b"7");
    assert_eq!(odd.error.as_deref(), Some("7 is odd"));
    let junk = testing::run(&checked_half::TASK, b"seven");
    assert_eq!(junk.error.as_deref(), Some("item is not i64: \"seven\""));
}

#[test]
fn json_in_and_out() {
    let outcome = testing::run(&mirror::TASK, br#"{"x": 1, "y": -2}"#);
    assert_eq!(ok_texts(&outcome), [r#"{"x":-2,"y":1}"#]);
    let error = testing::run(&mirror::TASK, b"[1, 2")
        .error
        .expect("must fail");
    assert!(
        error.starts_with("item is not JSON for sdk::Point"),
        "{error}"
    );
    assert_eq!(
        ok_texts(&testing::run(&borrowed_json::TASK, br#""ann""#)),
        ["ann"]
    );
}

#[test]
fn encoding_error_fails_the_item() {
    let outcome = testing::run(&bad_output::TASK, b"");
    let error = outcome.error.expect("must fail");
    assert!(
        error.contains("cannot encode") && error.contains("refused"),
        "{error}"
    );
}

#[test]
fn emitter_form() {
    assert_eq!(
        ok_texts(&testing::run(&fan::TASK, b"3")),
        ["3-0", "3-1", "3-2"]
    );
    assert!(ok_texts(&testing::run(&fan::TASK, b"0")).is_empty());
    assert!(testing::run(&fan::TASK, b"x").error.is_some());
}

#[test]
fn plain_tasks_read_their_args() {
    assert_eq!(ok_texts(&testing::run(&with_args::TASK, b"b")), ["b"]);
    testing::init(&with_args::TASK, b"a-").unwrap();
    assert_eq!(pcluster_task::args(), b"a-");
    assert_eq!(ok_texts(&testing::run(&with_args::TASK, b"b")), ["a-b"]);
}

#[test]
fn panic_fails_the_item_with_its_message() {
    let outcome = testing::run(&explode::TASK, b"boom now");
    let error = outcome.error.expect("must fail");
    assert!(
        error.starts_with("panicked at ") && error.ends_with("asked to explode by \"boom now\""),
        "{error}"
    );
    // The next item is not affected.
    assert_eq!(ok_texts(&testing::run(&explode::TASK, b"fine")), ["fine"]);
}

#[test]
fn stateful_task_keeps_state() {
    testing::init(&tally::TASK, b"n").unwrap();
    assert_eq!(ok_texts(&testing::run(&tally::TASK, b"a")), ["n1"]);
    let empty = testing::run(&tally::TASK, b"");
    assert_eq!(empty.error.as_deref(), Some("empty item"));
    assert_eq!(empty.logs, [(Level::Warn, "n: empty item".to_owned())]);
    assert_eq!(ok_texts(&testing::run(&tally::TASK, b"b")), ["n2"]);
}

#[test]
fn stateful_init_errors_and_lazy_init() {
    assert_eq!(
        testing::init(&tally::TASK, b"bad"),
        Err("label may not be \"bad\"".to_owned())
    );
    // No init: the state comes from empty args at the first item.
    std::thread::spawn(|| assert_eq!(ok_texts(&testing::run(&tally::TASK, b"a")), ["1"]))
        .join()
        .unwrap();
}

#[test]
fn input_buffer_grows_and_shrinks_items() {
    let big = vec![b'x'; 100_000];
    assert_eq!(
        testing::run(&bytes_twice::TASK, &big).items,
        [big.clone(), big]
    );
    assert_eq!(
        ok_texts(&testing::run(&bytes_twice::TASK, b"y")),
        ["y", "y"]
    );
}

#[test]
fn item_parameters_may_be_mut() {
    assert_eq!(ok_texts(&testing::run(&shout::TASK, b"abc")), ["ABC"]);
    assert_eq!(ok_texts(&testing::run(&trimmed::TASK, b"  a b ")), ["a b"]);
    assert_eq!(
        ok_texts(&testing::run(&repeat::TASK, b"3")),
        ["3", "2", "1"]
    );
}

#[test]
fn generators_are_known_from_the_signature() {
    // Return types that can hold several items, or an emitter parameter.
    for task in [
        bytes_twice::TASK,
        split_words::TASK,
        countdown::TASK,
        fan::TASK,
        bad_output::TASK,
        repeat::TASK,
    ] {
        assert!(task.generator(), "{} is a generator", task.name());
    }
    // One item at most; a stateful task unless it says otherwise.
    for task in [
        echo::TASK,
        keep_short::TASK,
        checked_half::TASK,
        nothing::TASK,
        owned::TASK,
        mirror::TASK,
        shout::TASK,
        tally::TASK,
    ] {
        assert!(!task.generator(), "{} is not a generator", task.name());
    }
    const { assert!(bytes_twice::GENERATOR && !echo::GENERATOR) };
}
