//! A per-thread pool of large `u64` buffers.
//!
//! Homomorphic operations allocate and free many buffers of a few hundred kilobytes. With
//! the system allocator such buffers are mapped and unmapped (or trimmed) again and again,
//! and every first touch of a page faults: that alone cost a third of a BFV multiplication.
//! Polynomials therefore take their storage from, and return it to, a small per-thread
//! pool. The pool is bounded (count and bytes) and is invisible to the API: it is scratch,
//! not shared state.
//!
//! Buffers may have held secret-key material (`s` in NTT form, `a * s`, decryption phases),
//! so every buffer is wiped ([`Zeroize`], whole capacity) when it is returned, whether it
//! then goes back into the pool or to the allocator: a buffer handed out again never
//! carries an earlier owner's data, and it comes out zeroed.

use std::cell::RefCell;

use zeroize::Zeroize;

/// Buffers smaller than this (in `u64`s) bypass the pool.
const MIN_LEN: usize = 4096;
/// At most this many buffers per thread.
const MAX_BUFFERS: usize = 48;
/// At most this many bytes per thread.
const MAX_BYTES: usize = 96 << 20;

thread_local! {
    static POOL: RefCell<Vec<Vec<u64>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of exactly `len` values (zeros: pooled buffers are wiped when returned).
pub fn take(len: usize) -> Vec<u64> {
    if len >= MIN_LEN {
        let reused = POOL.with(|p| {
            let mut p = p.borrow_mut();
            // Prefer an exact length (no fill needed), then any large-enough capacity.
            let pos = p
                .iter()
                .position(|v| v.len() == len)
                .or_else(|| p.iter().position(|v| v.capacity() >= len));
            pos.map(|i| p.swap_remove(i))
        });
        if let Some(mut v) = reused {
            // Wiped on return (see `give`), so resizing keeps it all zeros.
            v.resize(len, 0);
            return v;
        }
    }
    vec![0; len]
}

/// A buffer of `len` zeros (the same as [`take`], for callers that rely on the zeros).
pub fn take_zeroed(len: usize) -> Vec<u64> {
    take(len)
}

/// Wipes a buffer (its whole capacity) and returns it to the pool, or frees it if it is
/// small or the pool is full.
pub fn give(mut v: Vec<u64>) {
    // Secret-key material must not outlive its owner, in the pool or in freed memory.
    v.as_mut_slice().zeroize();
    v.spare_capacity_mut().zeroize();
    if v.capacity() < MIN_LEN {
        return;
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let bytes: usize = p.iter().map(|b| b.capacity() * 8).sum();
        if p.len() < MAX_BUFFERS && bytes + v.capacity() * 8 <= MAX_BYTES {
            p.push(v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_bounded() {
        let v = take(MIN_LEN * 2);
        let ptr = v.as_ptr();
        give(v);
        let w = take(MIN_LEN * 2);
        assert_eq!(w.as_ptr(), ptr, "same-size buffer is reused");
        assert_eq!(w.len(), MIN_LEN * 2);
        give(w);
        let z = take_zeroed(MIN_LEN);
        assert!(z.iter().all(|&x| x == 0));
        assert_eq!(z.len(), MIN_LEN);
        // The pool never holds more than MAX_BUFFERS.
        let many: Vec<_> = (0..MAX_BUFFERS + 10).map(|_| vec![1u64; MIN_LEN]).collect();
        for v in many {
            give(v);
        }
        POOL.with(|p| assert!(p.borrow().len() <= MAX_BUFFERS));
    }

    #[test]
    fn returned_buffers_come_back_wiped() {
        let secret = 0x005e_c3e7_u64;
        let v = vec![secret; MIN_LEN * 2];
        let ptr = v.as_ptr();
        give(v);
        POOL.with(|p| {
            let p = p.borrow();
            let held = p.iter().find(|b| b.as_ptr() == ptr).expect("pooled");
            assert!(held.iter().all(|&x| x == 0), "pooled buffer not wiped");
        });
        let w = take(MIN_LEN * 2);
        assert_eq!(w.as_ptr(), ptr, "the same buffer is handed out again");
        let left = w.iter().filter(|&&x| x == secret).count();
        assert_eq!(left, 0, "{left} values of the earlier owner survived");
        give(w);
        // Negative control: `take` itself does not wipe, so a buffer pooled without the
        // wipe of `give` comes out with its earlier contents (the checks above would fail).
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            p.clear();
            p.push(vec![secret; MIN_LEN * 2]);
        });
        let dirty = take(MIN_LEN * 2);
        assert!(dirty.iter().all(|&x| x == secret));
        give(dirty);
        let clean = take(MIN_LEN * 2);
        assert!(clean.iter().all(|&x| x == 0));
    }
}
