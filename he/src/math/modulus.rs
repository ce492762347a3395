//! Arithmetic modulo a word-sized integer: Barrett reduction of 128-bit values and Shoup
//! multiplication by precomputed constants.

/// Largest modulus supported by [`Modulus`]: values stay below 2^62 so that lazy sums of four
/// residues never overflow a `u64`.
pub const MAX_MODULUS_BITS: u32 = 62;

/// A modulus `p` with `2 <= p < 2^62` and the constants for fast reduction modulo `p`.
///
/// `Modulus` is `Copy`, immutable and thread-safe.
///
/// ```
/// use cipherml_he::math::Modulus;
/// let p = Modulus::new(97).unwrap();
/// assert_eq!(p.mul(50, 60), (50 * 60) % 97);
/// assert_eq!(p.inv(3).map(|i| p.mul(i, 3)), Some(1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modulus {
    p: u64,
    /// floor(2^128 / p), high and low words.
    mu_hi: u64,
    mu_lo: u64,
    /// floor(2^(2 bits) / p).
    mu_small: u64,
    /// min(floor(2^(bits + 63) / p), 2^64 - 1), for [`Modulus::reduce_wide`].
    mu_wide: u64,
    bits: u32,
}

impl Modulus {
    /// Returns `None` if `p < 2` or `p >= 2^62`.
    pub const fn new(p: u64) -> Option<Self> {
        if p < 2 || p >= (1u64 << MAX_MODULUS_BITS) {
            return None;
        }
        // floor(2^128 / p) = floor((2^128 - 1) / p) unless p divides 2^128 (a power of two).
        let mut mu = u128::MAX / p as u128;
        if p.is_power_of_two() {
            mu += 1;
        }
        let bits = 64 - p.leading_zeros();
        Some(Self {
            p,
            mu_hi: (mu >> 64) as u64,
            mu_lo: mu as u64,
            mu_small: ((1u128 << (2 * bits)) / p as u128) as u64,
            mu_wide: {
                let m = (1u128 << (bits + 63)) / p as u128;
                if m > u64::MAX as u128 {
                    u64::MAX
                } else {
                    m as u64
                }
            },
            bits,
        })
    }

    /// The modulus value.
    #[inline(always)]
    pub const fn value(&self) -> u64 {
        self.p
    }

    /// Bit length of the modulus.
    #[inline(always)]
    pub const fn bits(&self) -> u32 {
        self.bits
    }

    /// `x mod p` for any 128-bit `x`.
    #[inline(always)]
    pub fn reduce_u128(&self, x: u128) -> u64 {
        let x1 = (x >> 64) as u64;
        let x0 = x as u64;
        // q = floor(x * mu / 2^128) mod 2^64, exactly (the carry out of the middle sum only
        // affects bits of q above 64, which cancel in x - q p).
        let mid = (x1 as u128 * self.mu_lo as u128)
            .wrapping_add(x0 as u128 * self.mu_hi as u128)
            .wrapping_add((x0 as u128 * self.mu_lo as u128) >> 64);
        let q = ((x1 as u128 * self.mu_hi as u128) as u64).wrapping_add((mid >> 64) as u64);
        // floor(x mu / 2^128) >= floor(x / p) - 1, so r < 2p.
        let r = x0.wrapping_sub(q.wrapping_mul(self.p));
        r.min(r.wrapping_sub(self.p))
    }

    /// `x mod p` for `x < 2^(bits + 63)`: one Barrett step with a single 64x64-bit product,
    /// for lazily accumulated sums of products (base conversions).
    #[inline(always)]
    pub fn reduce_wide(&self, x: u128) -> u64 {
        debug_assert!(x >> (self.bits + 63) == 0);
        // (x >> (bits - 1)) < 2^64 and mu_wide < 2^64: the product fits in 128 bits, and the
        // quotient estimate is at most 3 below floor(x / p) (2 from Barrett, 1 more if mu_wide
        // saturated, which only a power-of-two p can cause).
        let q = (((x >> (self.bits - 1)) as u64 as u128 * self.mu_wide as u128) >> 64) as u64;
        let r = (x as u64).wrapping_sub(q.wrapping_mul(self.p));
        let r = r.min(r.wrapping_sub(self.p));
        let r = r.min(r.wrapping_sub(self.p));
        r.min(r.wrapping_sub(self.p))
    }

    /// Bit length bound of the values [`Modulus::reduce_wide`] accepts.
    #[inline(always)]
    pub const fn wide_bits(&self) -> u32 {
        self.bits + 63
    }

    /// `x mod p` for a 64-bit `x`.
    #[inline(always)]
    pub fn reduce(&self, x: u64) -> u64 {
        // floor(x mu_hi / 2^64) >= floor(x / p) - 2, so r < 3p.
        let q = ((x as u128 * self.mu_hi as u128) >> 64) as u64;
        let r = x.wrapping_sub(q.wrapping_mul(self.p));
        let r = r.min(r.wrapping_sub(self.p));
        r.min(r.wrapping_sub(self.p))
    }

    /// Reduces a signed value into `[0, p)`.
    #[inline(always)]
    pub fn reduce_i64(&self, x: i64) -> u64 {
        // Branch-free: error and key coefficients have random signs.
        let r = self.reduce(x.unsigned_abs());
        let neg = self.neg(r);
        let m = (x >> 63) as u64;
        (neg & m) | (r & !m)
    }

    /// The representative of `x` (in `[0, p)`) in `(-p/2, p/2]`.
    #[inline(always)]
    pub fn center(&self, x: u64) -> i64 {
        if x > self.p / 2 {
            x as i64 - self.p as i64
        } else {
            x as i64
        }
    }

    /// `a + b mod p` for reduced inputs.
    #[inline(always)]
    pub fn add(&self, a: u64, b: u64) -> u64 {
        // Branch-free: for s < p, s - p wraps above s.
        let s = a + b;
        s.min(s.wrapping_sub(self.p))
    }

    /// `a - b mod p` for reduced inputs.
    #[inline(always)]
    pub fn sub(&self, a: u64, b: u64) -> u64 {
        let d = a.wrapping_sub(b);
        d.min(d.wrapping_add(self.p))
    }

    /// `-a mod p` for a reduced input.
    #[inline(always)]
    pub fn neg(&self, a: u64) -> u64 {
        let d = self.p - a;
        d.min(d.wrapping_sub(self.p))
    }

    /// `a * b mod p` for reduced inputs (`a, b < p`): one Barrett step on `a b < p^2`.
    #[inline(always)]
    pub fn mul_reduced(&self, a: u64, b: u64) -> u64 {
        debug_assert!(a < self.p && b < self.p);
        let x = a as u128 * b as u128;
        // x < 2^(2 bits): (x >> (bits - 1)) < 2^(bits + 1) and mu_small < 2^(bits + 1).
        let q = (((x >> (self.bits - 1)) as u64 as u128 * self.mu_small as u128) >> (self.bits + 1))
            as u64;
        let r = (x as u64).wrapping_sub(q.wrapping_mul(self.p));
        let r = r.min(r.wrapping_sub(self.p));
        r.min(r.wrapping_sub(self.p))
    }

    /// `a * b mod p` for inputs below 2^64.
    #[inline(always)]
    pub fn mul(&self, a: u64, b: u64) -> u64 {
        self.reduce_u128(a as u128 * b as u128)
    }

    /// Precomputes the Shoup constant `floor(w * 2^64 / p)` of a reduced `w`.
    #[inline(always)]
    pub fn shoup(&self, w: u64) -> u64 {
        debug_assert!(w < self.p);
        (((w as u128) << 64) / self.p as u128) as u64
    }

    /// `a * w mod p` with `w_shoup = self.shoup(w)`, for `a < 2^64`.
    #[inline(always)]
    pub fn mul_shoup(&self, a: u64, w: u64, w_shoup: u64) -> u64 {
        let q = ((a as u128 * w_shoup as u128) >> 64) as u64;
        let r = a.wrapping_mul(w).wrapping_sub(q.wrapping_mul(self.p));
        r.min(r.wrapping_sub(self.p))
    }

    /// `a^e mod p`.
    pub fn pow(&self, a: u64, mut e: u64) -> u64 {
        let mut base = self.reduce(a);
        let mut acc = 1 % self.p;
        while e > 0 {
            if e & 1 == 1 {
                acc = self.mul(acc, base);
            }
            base = self.mul(base, base);
            e >>= 1;
        }
        acc
    }

    /// The inverse of `a` modulo `p`, if `gcd(a, p) = 1`.
    pub fn inv(&self, a: u64) -> Option<u64> {
        // Extended Euclid on signed 128-bit values.
        let (mut r0, mut r1) = (self.p as i128, self.reduce(a) as i128);
        let (mut t0, mut t1) = (0i128, 1i128);
        while r1 != 0 {
            let q = r0 / r1;
            (r0, r1) = (r1, r0 - q * r1);
            (t0, t1) = (t1, t0 - q * t1);
        }
        if r0 != 1 {
            return None;
        }
        Some(t0.rem_euclid(self.p as i128) as u64)
    }

    /// Draws a uniform value in `[0, p)` by rejection sampling.
    #[inline]
    pub fn random<R: rand::RngCore + ?Sized>(&self, rng: &mut R) -> u64 {
        let mask = if self.bits == 64 {
            u64::MAX
        } else {
            (1u64 << self.bits) - 1
        };
        loop {
            let v = rng.next_u64() & mask;
            if v < self.p {
                return v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn moduli() -> impl Strategy<Value = u64> {
        prop_oneof![
            2u64..1000,
            2u64..(1u64 << 62),
            Just((1u64 << 62) - 57),
            Just(1u64 << 40)
        ]
    }

    proptest! {
        #[test]
        fn reduce_u128_matches_reference(p in moduli(), x: u128) {
            let m = Modulus::new(p).unwrap();
            prop_assert_eq!(m.reduce_u128(x) as u128, x % p as u128);
            let xw = x >> (128 - m.wide_bits());
            prop_assert_eq!(m.reduce_wide(xw) as u128, xw % p as u128);
            let top = (1u128 << m.wide_bits()) - 1 - (x % 1024);
            prop_assert_eq!(m.reduce_wide(top) as u128, top % p as u128);
        }

        #[test]
        fn mul_and_shoup_match_reference(p in moduli(), a: u64, b: u64) {
            let m = Modulus::new(p).unwrap();
            let (a, b) = (a % p, b % p);
            let expect = ((a as u128 * b as u128) % p as u128) as u64;
            prop_assert_eq!(m.mul(a, b), expect);
            prop_assert_eq!(m.mul_reduced(a, b), expect);
            prop_assert_eq!(m.mul_shoup(a, b, m.shoup(b)), expect);
            prop_assert_eq!(m.add(a, b) as u128, (a as u128 + b as u128) % p as u128);
            prop_assert_eq!(m.add(m.sub(a, b), b), a);
            prop_assert_eq!(m.add(m.neg(a), a), 0);
        }

        #[test]
        fn reduce_signed(p in moduli(), x: i64) {
            let m = Modulus::new(p).unwrap();
            prop_assert_eq!(m.reduce_i64(x) as i128, (x as i128).rem_euclid(p as i128));
            let c = m.center(m.reduce_i64(x));
            prop_assert!(c * 2 <= p as i64 && c * 2 > -(p as i64));
            prop_assert_eq!(m.reduce_i64(c), m.reduce_i64(x));
        }

        #[test]
        fn inverse_and_pow(p in moduli(), a: u64) {
            let m = Modulus::new(p).unwrap();
            if let Some(i) = m.inv(a) {
                prop_assert_eq!(m.mul(i, a % p), 1 % p);
            }
            prop_assert_eq!(m.pow(a, 3), m.mul(m.mul(a % p, a % p), a % p));
        }
    }

    #[test]
    fn rejects_out_of_range() {
        assert!(Modulus::new(0).is_none());
        assert!(Modulus::new(1).is_none());
        assert!(Modulus::new(1 << 62).is_none());
        assert!(Modulus::new((1 << 62) - 1).is_some());
    }
}
