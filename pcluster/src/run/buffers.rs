//! Read buffers for `pcluster run`'s input: a pool of buffers of one size, lent out as
//! [`Bytes`] and given back once every slice of them is dropped, so reads go into memory
//! already mapped (no page faults, no zeroing); and reads that fill a buffer.

use std::io::Read;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Fills `buf` from `r`; the bytes read, fewer only at the end of the input.
pub(super) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match read_some(r, &mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// One read (retried when interrupted); 0 at the end of the input.
pub(super) fn read_some(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// Read buffers of one size given back once every batch cut from them is done, so the next
/// read goes into memory already mapped (no page faults, no zeroing).
#[derive(Clone)]
pub(super) struct Pool {
    idle: Arc<Mutex<Vec<Vec<u8>>>>,
    pub size: usize,
}

/// Idle buffers a [`Pool`] keeps.
const POOL_IDLE: usize = 4;

impl Pool {
    pub fn new(size: usize) -> Pool {
        Pool {
            idle: Arc::default(),
            size,
        }
    }

    pub fn take(&self) -> Vec<u8> {
        let idle = self.idle.lock().ok().and_then(|mut p| p.pop());
        idle.unwrap_or_else(|| vec![0; self.size])
    }

    /// The first `len` bytes of `buf` as shared bytes; `buf` comes back when they are dropped.
    pub fn share(&self, buf: Vec<u8>, len: usize) -> Bytes {
        let pooled = buf.len() == self.size;
        Bytes::from_owner(Lent {
            buf,
            len,
            pool: pooled.then(|| self.clone()),
        })
    }
}

/// A buffer lent out as [`Bytes`].
struct Lent {
    buf: Vec<u8>,
    len: usize,
    pool: Option<Pool>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool
            && let Ok(mut idle) = pool.idle.lock()
            && idle.len() < POOL_IDLE
        {
            idle.push(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_once_every_slice_of_it_is_dropped() {
        let pool = Pool::new(16);
        let buf = pool.take();
        let at = buf.as_ptr();
        let shared = pool.share(buf, 10);
        assert_eq!(shared.len(), 10);
        let slice = shared.slice(2..5);
        drop(shared);
        assert!(
            pool.idle.lock().unwrap().is_empty(),
            "a slice still holds it"
        );
        drop(slice);
        let again = pool.take();
        assert_eq!(again.as_ptr(), at, "the same buffer, read into again");
        drop(again);
        // A buffer of another size (a long item's) is not kept, nor more than POOL_IDLE.
        drop(pool.share(vec![0; 40], 40));
        assert!(pool.idle.lock().unwrap().is_empty());
        let many: Vec<Bytes> = (0..POOL_IDLE + 2)
            .map(|_| pool.share(pool.take(), 16))
            .collect();
        drop(many);
        assert_eq!(pool.idle.lock().unwrap().len(), POOL_IDLE);
    }
}
