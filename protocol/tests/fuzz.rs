//! Property tests of the decoder: random bytes, truncated and mutated frames, huge length
//! prefixes. Each must give an error or a message — never a panic, never a huge allocation —
//! and every message must round-trip. Seeded, so a failure is reproducible.

use bytes::BytesMut;
use pcluster_protocol::codec::{MessageCodec, decode_payload, encode_frame};
use pcluster_protocol::*;
use tokio_util::codec::Decoder;

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
        Msg::Challenge(Challenge {
            nonce: vec![2; 32],
            auth_required: true,
            proof: Some(vec![3; 32].into()),
        }),
        Msg::Auth(Auth { proof: None }),
        Msg::Welcome(Welcome {
            node: "127.0.0.1:6000".into(),
            busy_with: Some(Holder {
                root: "127.0.0.1:5000".into(),
                held_s: 3,
            }),
            workers: 2,
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
                }],
                limits: Limits::default(),
            },
        })),
        Msg::Items(Items {
            seq: 3,
            ids: Ids::Range {
                start: 10,
                count: 3,
            },
            items: items.clone(),
        }),
        Msg::Items(Items {
            seq: 4,
            ids: Ids::List(vec![1, 5, u64::MAX]),
            items: items.clone(),
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
                message: "boom".into(),
            }],
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
fn truncated_frames_wait_or_fail_and_never_panic() {
    for msg in every_message() {
        let full = frame(&msg);
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            let mut codec = MessageCodec::new(DEFAULT_MAX_FRAME);
            // Incomplete: the codec waits for more.
            assert!(
                matches!(codec.decode(&mut buf), Ok(None)),
                "cut at {cut} of {}",
                msg.name()
            );
            // A payload cut short inside a well-formed length is an error, not a panic.
            let _ = decode_payload(&full[4..cut.max(4)]);
        }
    }
}

#[test]
fn random_and_mutated_bytes_give_errors_not_panics() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let messages = every_message();
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
        let _ = decode_payload(&payload);
        let mut framed = BytesMut::new();
        framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        framed.extend_from_slice(&payload);
        let mut codec = MessageCodec::new(DEFAULT_MAX_FRAME);
        let _ = codec.decode(&mut framed);
    }
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

#[test]
fn length_fields_inside_a_small_frame_cannot_force_a_big_allocation() {
    // An Items message whose id list claims 2^40 elements in a few bytes of payload.
    let mut payload = frame(&Msg::Items(Items {
        seq: 1,
        ids: Ids::List(vec![]),
        items: Packed::new(),
    }))[4..]
        .to_vec();
    // Find the empty list's length byte (0) after the variant tags and replace it with a
    // huge varint; whatever position we hit, decoding must fail cleanly.
    for i in 0..payload.len() {
        let mut p = payload.clone();
        p.splice(i..=i, [253u8, 0, 0, 0, 0, 0, 1, 0, 0]);
        let _ = decode_payload(&p);
    }
    payload.clear();
}
