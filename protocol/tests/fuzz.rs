//! Property tests of the decoder: random bytes, truncated and mutated frames, huge length
//! fields. Each must give an error or a message that encodes back to itself, never a panic,
//! and a small frame must never make the decoder allocate much, whatever length it claims
//! inside (measured by a counting allocator in this test binary). Seeded, so a failure is
//! reproducible.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use pcluster_protocol::codec::{decode_payload, encode_frame};
use pcluster_protocol::framing::MessageCodec;
use pcluster_protocol::*;
use tokio_util::codec::Decoder;

/// The system allocator, noting the largest single request of each thread.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocations during thread teardown find no thread-local.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call goes to the system allocator unchanged; only sizes are noted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as the caller promised for `layout`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as the caller promised for `layout`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as the caller promised for `ptr`, `layout` and `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as the caller promised for `ptr` and `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the largest single allocation it made.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// xorshift64*: small, deterministic, good enough to shake a decoder.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn every_message() -> Vec<Msg> {
    let items: Packed = ["a", "", "hello"].into_iter().collect();
    vec![
        Msg::Hello(Hello {
            nonce: vec![1; 32],
            resume: Some(SessionId(9)),
        }),
        Msg::Challenge(Challenge { nonce: vec![2; 32] }),
        Msg::Auth(Auth {}),
        Msg::Welcome(Welcome {
            node: "127.0.0.1:6000".into(),
            busy_with: Some(Holder {
                root: "127.0.0.1:5000".into(),
                held_s: 3,
            }),
            workers: 2,
            labels: Vec::new(),
        }),
        Msg::StatusRequest,
        Msg::Setup(Box::new(Setup {
            session: SessionId(1),
            chain: ChainSpec {
                name: "c".into(),
                version: "1".into(),
                modules: vec![vec![0, 97, 115, 109].into()],
                tasks: vec![TaskSpec {
                    function: "f".into(),
                    module: 0,
                    generator: true,
                    args: b"x".to_vec(),
                    next: None,
                    labels: Vec::new(),
                }],
                limits: Limits::default(),
            },
            send_failed_items: true,
            tagged_items: false,
            withheld: vec![Withheld {
                module: 1,
                component: true,
            }],
            rtt_us: 52_000,
        })),
        Msg::Items(Items {
            seq: 3,
            ids: Ids::Range {
                start: 10,
                count: 3,
            },
            items: items.clone(),
            stage: TaskIndex(0),
        }),
        Msg::Items(Items {
            seq: 4,
            ids: Ids::List(vec![1, 5, u64::MAX]),
            items: items.clone(),
            stage: TaskIndex(2),
        }),
        Msg::Reset,
        Msg::Pause,
        Msg::Resume,
        Msg::Bye,
        Msg::Status(Box::new(NodeStatus {
            addr: "a".into(),
            cores: 2,
            workers: 2,
            idle_workers: 1,
            state: NodeState::Busy,
            root: None,
            chain: Some(("c".into(), "1".into())),
            uptime_s: 5,
            modules_compiled: 1,
            module_cache_hits: 0,
            tasks: vec![TaskCounters {
                name: "f".into(),
                items_in: 1,
                ..Default::default()
            }],
            rss_bytes: Some(1 << 20),
            labels: vec!["cpu".into()],
        })),
        Msg::SetupDone(SetupDone {
            compiled: 1,
            cached: 0,
            credit: Credit {
                items: 10,
                bytes: 100,
            },
        }),
        Msg::Outputs(Outputs {
            seq: 3,
            first: 0,
            counts: U32s(vec![1, 0, 2]),
            items,
            failures: vec![Failure {
                index: 1,
                task: Some(FailedTask {
                    index: TaskIndex(0),
                    name: "f".into(),
                }),
                item_start: b"x".to_vec(),
                item: Some(b"xyz".to_vec()),
                message: "boom".into(),
            }],
            continuations: vec![Continuation {
                index: 2,
                stage: TaskIndex(1),
                items: ["c", "d"].into_iter().collect(),
            }],
        }),
        Msg::Partial(Partial {
            seq: 3,
            index: 2,
            items: ["p", "q"].into_iter().collect(),
        }),
        Msg::Credit(Credit { items: 1, bytes: 2 }),
        Msg::ResetDone,
        Msg::Paused,
        Msg::Resumed,
        Msg::Draining,
        Msg::Heartbeat,
        Msg::Release,
        Msg::Released(Released {
            was_held_by: Some(Holder {
                root: "r".into(),
                held_s: 1,
            }),
        }),
        Msg::Error(WireError::new(
            ErrorKind::Busy(Holder {
                root: "r".into(),
                held_s: 1,
            }),
            "busy",
        )),
    ]
}

fn frame(msg: &Msg) -> BytesMut {
    let mut buf = BytesMut::new();
    encode_frame(msg, &mut buf, DEFAULT_MAX_FRAME).unwrap();
    buf
}

#[test]
fn every_message_round_trips() {
    for msg in every_message() {
        let mut buf = frame(&msg);
        let mut codec = MessageCodec::new(DEFAULT_MAX_FRAME);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(msg));
        assert!(buf.is_empty());
    }
}

#[test]
fn truncated_frames_wait_and_truncated_payloads_fail() {
    for msg in every_message() {
        let full = frame(&msg);
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            let mut codec = MessageCodec::new(DEFAULT_MAX_FRAME);
            // Incomplete: the codec waits for more, consuming nothing.
            assert!(
                matches!(codec.decode(&mut buf), Ok(None)),
                "cut at {cut} of {}",
                msg.name()
            );
            assert_eq!(buf.len(), cut);
            // A payload cut short is never taken for a (different) message.
            if cut >= 4 {
                assert!(
                    matches!(
                        decode_payload(&full[4..cut]),
                        Err(ProtocolError::Malformed(_))
                    ),
                    "{} cut at {cut} decoded",
                    msg.name()
                );
            }
        }
    }
}

/// Random payloads and valid frames with a few bytes changed: the decoder either refuses
/// them as malformed or yields a message that encodes and decodes back to itself (so what
/// the node acts on is exactly what it would send), and the codec takes exactly the frame.
#[test]
fn random_and_mutated_bytes_are_refused_or_decode_to_a_stable_message() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let messages = every_message();
    let (mut refused, mut decoded) = (0, 0);
    for round in 0..20_000 {
        let payload = if round % 2 == 0 {
            let n = (rng.next() % 300) as usize;
            rng.bytes(n)
        } else {
            let m = &messages[(rng.next() as usize) % messages.len()];
            let mut p = frame(m)[4..].to_vec();
            for _ in 0..1 + rng.next() % 4 {
                if p.is_empty() {
                    break;
                }
                let i = (rng.next() as usize) % p.len();
                p[i] = rng.next() as u8;
            }
            p
        };
        let direct = decode_payload(&payload);
        let mut framed = BytesMut::new();
        framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        framed.extend_from_slice(&payload);
        framed.extend_from_slice(b"next");
        let mut codec = MessageCodec::new(DEFAULT_MAX_FRAME);
        let via_codec = codec.decode(&mut framed);
        match (direct, via_codec) {
            (Err(ProtocolError::Malformed(_)), Err(ProtocolError::Malformed(_))) => refused += 1,
            (Ok(msg), Ok(Some(same))) => {
                assert_eq!(msg, same);
                assert_eq!(&framed[..], b"next", "the codec took exactly one frame");
                let again = frame(&msg);
                assert_eq!(decode_payload(&again[4..]).unwrap(), msg, "round {round}");
                decoded += 1;
            }
            (d, c) => panic!("round {round}: decode_payload {d:?} but the codec {c:?}"),
        }
    }
    // Both outcomes happen: the test exercises the decoder rather than one early exit.
    assert!(
        refused > 1_000 && decoded > 100,
        "{refused} refused, {decoded} decoded"
    );
}
#[test]
fn a_4_gib_length_prefix_is_refused_at_once() {
    let mut codec = MessageCodec::new(DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0, 0][..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(ProtocolError::FrameTooLarge {
            size: 4_294_967_295,
            ..
        })
    ));
    // Nothing was reserved for the announced size.
    assert!(buf.capacity() < 1 << 20);
}

/// A small frame whose inner length fields claim up to 256 MiB (a byte string, an id list,
/// a string, a list of failures): decoding fails without any allocation near the claimed
/// size. This is the bound in `codec::decode_limited`; with a loose limit the claimed
/// 256 MiB byte string is allocated before the decoder finds the bytes missing.
#[test]
fn length_fields_inside_a_small_frame_cannot_force_a_big_allocation() {
    let samples = [
        Msg::Items(Items {
            seq: 1,
            ids: Ids::List(vec![1, 2]),
            items: ["a", "b"].into_iter().collect(),
            stage: TaskIndex(0),
        }),
        every_message().remove(5), // a Setup: modules, tasks, names, args
        Msg::Outputs(Outputs {
            seq: 1,
            first: 0,
            counts: U32s(vec![1]),
            items: ["x"].into_iter().collect(),
            failures: vec![],
            continuations: vec![],
        }),
    ];
    // Varints of 2^20, 2^24 and 2^28 (bincode: 252 then a little-endian u32).
    let claims: [[u8; 5]; 3] = [[252, 0, 0, 16, 0], [252, 0, 0, 0, 1], [252, 0, 0, 0, 16]];
    let mut largest = 0;
    for msg in &samples {
        let payload = frame(msg)[4..].to_vec();
        assert!(payload.len() < 4096, "small frames only");
        for i in 0..payload.len() {
            for claim in &claims {
                let mut p = payload.clone();
                p.splice(i..=i, claim.iter().copied());
                // Mostly refused; a claim in place of a plain integer field may decode.
                let (_, size) = largest_allocation(|| decode_payload(&p));
                largest = largest.max(size);
            }
        }
    }
    assert!(
        largest <= 64 << 10,
        "decoding a frame of under 4 KiB allocated {largest} bytes at once"
    );
}
