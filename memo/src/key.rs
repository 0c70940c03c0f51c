//! What an entry is keyed by: the hash of the chain's identity and the input's bytes.
//!
//! The chain's identity is what decides an input's outputs: every module's bytes (by the
//! SHA-256 the nodes' compile cache keys them with), each task's function, module, generator
//! flag, init args and successors (the graph), and the limits. Name, version and labels are
//! left out: renaming a chain or moving a task to other nodes changes no output. The limits
//! only decide whether an item fails, and failed inputs are never stored, but they are in
//! all the same: a store is cheap to refill and a wrong hit is not.

use sha2::{Digest as _, Sha256};

/// Bumped when what goes into a key changes, so old entries are never hit.
const KEY_VERSION: &[u8] = b"pcluster memo key 1";

/// The SHA-256 of a chain's identity (see the module's doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChainId(pub [u8; 32]);

impl ChainId {
    /// The identity of `chain`, with `context`: bytes the caller adds when it hands items in
    /// another form (a Python root's tagged items), so the two never share entries.
    pub fn new(chain: &protocol::ChainSpec, context: &[u8]) -> ChainId {
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(KEY_VERSION);
        field(context);
        for m in &chain.modules {
            field(&Sha256::digest(m));
        }
        for t in &chain.tasks {
            field(t.function.as_bytes());
            field(&t.module.to_le_bytes());
            field(&[u8::from(t.generator)]);
            field(&t.args);
            match &t.next {
                None => field(b"-"),
                Some(next) => {
                    let bytes: Vec<u8> = next.iter().flat_map(|n| n.to_le_bytes()).collect();
                    field(&bytes);
                }
            }
        }
        let l = &chain.limits;
        for v in [l.deadline_ms, l.memory_mb, l.max_item_bytes] {
            field(&v.to_le_bytes());
        }
        ChainId(h.finalize().into())
    }

    /// Hex, for messages and file names.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// An entry's key: the first 128 bits of SHA-256(chain identity, input). 128 bits keep the
/// in-memory index small; two inputs share a key with odds of about n²/2¹²⁹ (10⁻²¹ for a
/// billion entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub u128);

/// Computes keys of one chain: the chain's part of the hash is done once.
#[derive(Clone)]
pub struct Hasher {
    prefix: Sha256,
}

impl Hasher {
    pub fn new(chain: &ChainId) -> Hasher {
        let mut prefix = Sha256::new();
        prefix.update(chain.0);
        Hasher { prefix }
    }

    /// The key of `input`.
    #[inline]
    pub fn key(&self, input: &[u8]) -> Key {
        let mut h = self.prefix.clone();
        h.update(input);
        let d = h.finalize();
        let mut k = [0u8; 16];
        k.copy_from_slice(&d[..16]);
        Key(u128::from_le_bytes(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> protocol::ChainSpec {
        protocol::ChainSpec {
            name: "c".into(),
            version: "1".into(),
            modules: vec![serde_bytes::ByteBuf::from(b"wasm".to_vec())],
            tasks: vec![protocol::TaskSpec {
                function: "f".into(),
                module: 0,
                generator: false,
                args: b"a".to_vec(),
                next: None,
                labels: vec![],
            }],
            limits: protocol::Limits::default(),
        }
    }

    #[test]
    fn what_changes_outputs_changes_the_key_and_names_do_not() {
        let base = ChainId::new(&chain(), b"");
        let mut renamed = chain();
        renamed.name = "other".into();
        renamed.version = "2".into();
        renamed.tasks[0].labels = vec!["io".into()];
        assert_eq!(ChainId::new(&renamed, b""), base);
        let changes: [fn(&mut protocol::ChainSpec); 5] = [
            |c| c.modules[0] = serde_bytes::ByteBuf::from(b"wasm2".to_vec()),
            |c| c.tasks[0].function = "g".into(),
            |c| c.tasks[0].args = b"b".to_vec(),
            |c| c.tasks[0].next = Some(vec![]),
            |c| c.limits.memory_mb += 1,
        ];
        for change in changes {
            let mut c = chain();
            change(&mut c);
            assert_ne!(ChainId::new(&c, b""), base);
        }
        assert_ne!(ChainId::new(&chain(), b"tagged"), base);
    }

    #[test]
    fn keys_depend_on_chain_and_input() {
        let a = Hasher::new(&ChainId::new(&chain(), b""));
        let b = Hasher::new(&ChainId::new(&chain(), b"x"));
        assert_eq!(a.key(b"item-1"), a.key(b"item-1"));
        assert_ne!(a.key(b"item-1"), a.key(b"item-2"));
        assert_ne!(a.key(b"item-1"), b.key(b"item-1"));
    }
}
