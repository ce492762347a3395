//! The ring `Z_2^l` with a run-time bit width `l` in `1..=64`.
//!
//! Elements are `u64` values reduced modulo `2^l` (the high `64 - l` bits are zero);
//! arithmetic wraps. A [`Ring`] is `Copy`, `Send` and `Sync`.

use crate::error::{Error, Result};

/// `Z_2^l`: arithmetic on `u64` masked to `l` bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ring {
    bits: u32,
    mask: u64,
}

impl Ring {
    /// The ring `Z_2^bits`; `bits` must be in `1..=64`.
    pub fn new(bits: u32) -> Result<Self> {
        if !(1..=64).contains(&bits) {
            return Err(Error::InvalidBitWidth { bits });
        }
        Ok(Self {
            bits,
            mask: mask(bits),
        })
    }

    /// `l`.
    #[inline]
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// `2^l - 1`.
    #[inline]
    pub fn mask(&self) -> u64 {
        self.mask
    }

    /// Bytes needed for one element on the wire.
    #[inline]
    pub fn byte_len(&self) -> usize {
        self.bits.div_ceil(8) as usize
    }

    /// Reduces a `u64` modulo `2^l`.
    #[inline]
    pub fn reduce(&self, x: u64) -> u64 {
        x & self.mask
    }

    /// `a + b`.
    #[inline]
    pub fn add(&self, a: u64, b: u64) -> u64 {
        a.wrapping_add(b) & self.mask
    }

    /// `a - b`.
    #[inline]
    pub fn sub(&self, a: u64, b: u64) -> u64 {
        a.wrapping_sub(b) & self.mask
    }

    /// `a * b`.
    #[inline]
    pub fn mul(&self, a: u64, b: u64) -> u64 {
        a.wrapping_mul(b) & self.mask
    }

    /// `-a`.
    #[inline]
    pub fn neg(&self, a: u64) -> u64 {
        a.wrapping_neg() & self.mask
    }

    /// The most significant bit (the sign in two's complement).
    #[inline]
    pub fn msb(&self, a: u64) -> bool {
        (a >> (self.bits - 1)) & 1 == 1
    }

    /// The element as a signed integer in `[-2^(l-1), 2^(l-1))`.
    #[inline]
    pub fn to_signed(&self, a: u64) -> i64 {
        let shift = 64 - self.bits;
        ((a << shift) as i64) >> shift
    }

    /// Reduces a signed integer modulo `2^l`.
    #[inline]
    pub fn from_signed(&self, v: i64) -> u64 {
        (v as u64) & self.mask
    }

    /// Smallest signed value, `-2^(l-1)`.
    pub fn min_signed(&self) -> i64 {
        if self.bits == 64 {
            i64::MIN
        } else {
            -(1i64 << (self.bits - 1))
        }
    }

    /// Largest signed value, `2^(l-1) - 1`.
    pub fn max_signed(&self) -> i64 {
        if self.bits == 64 {
            i64::MAX
        } else {
            (1i64 << (self.bits - 1)) - 1
        }
    }

    /// Arithmetic (sign-extending) right shift of the signed value.
    #[inline]
    pub fn shr_signed(&self, a: u64, s: u32) -> u64 {
        self.from_signed(self.to_signed(a) >> s.min(63))
    }

    /// Element-wise `a + b`.
    pub fn add_vec(&self, a: &[u64], b: &[u64]) -> Vec<u64> {
        a.iter().zip(b).map(|(&x, &y)| self.add(x, y)).collect()
    }

    /// Element-wise `a - b`.
    pub fn sub_vec(&self, a: &[u64], b: &[u64]) -> Vec<u64> {
        a.iter().zip(b).map(|(&x, &y)| self.sub(x, y)).collect()
    }

    /// Element-wise `a * b`.
    pub fn mul_vec(&self, a: &[u64], b: &[u64]) -> Vec<u64> {
        a.iter().zip(b).map(|(&x, &y)| self.mul(x, y)).collect()
    }

    /// Uniformly random elements.
    pub fn random_vec<R: rand::RngCore + ?Sized>(&self, rng: &mut R, n: usize) -> Vec<u64> {
        (0..n).map(|_| rng.next_u64() & self.mask).collect()
    }

    /// Whether every element is reduced.
    pub fn check(&self, v: &[u64]) -> bool {
        v.iter().all(|&x| x & !self.mask == 0)
    }

    /// Plain matrix product `(m x k) * (k x n)`, row-major.
    pub fn matmul(&self, a: &[u64], b: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
        let mut c = vec![0u64; m * n];
        for i in 0..m {
            for t in 0..k {
                let x = a[i * k + t];
                let row = &b[t * n..(t + 1) * n];
                let out = &mut c[i * n..(i + 1) * n];
                for (o, &y) in out.iter_mut().zip(row) {
                    *o = o.wrapping_add(x.wrapping_mul(y));
                }
            }
        }
        c.iter_mut().for_each(|x| *x &= self.mask);
        c
    }
}

/// `2^bits - 1` for `bits` in `0..=64`.
#[inline]
pub(crate) fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_and_signed() {
        assert!(Ring::new(0).is_err());
        assert!(Ring::new(65).is_err());
        for bits in [1u32, 8, 31, 32, 63, 64] {
            let r = Ring::new(bits).unwrap();
            for v in [0i64, -1, r.min_signed(), r.max_signed()] {
                assert_eq!(r.to_signed(r.from_signed(v)), v, "bits {bits} v {v}");
            }
            assert_eq!(
                r.add(r.from_signed(r.max_signed()), 1),
                r.from_signed(r.min_signed())
            );
            assert_eq!(r.neg(r.from_signed(-1)), 1);
        }
    }
}
