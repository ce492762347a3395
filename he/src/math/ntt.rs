//! Negacyclic number-theoretic transforms through `tfhe-ntt` (which picks AVX2, AVX-512 or
//! AVX-512 IFMA code at run time), and the evaluation-point bookkeeping that Galois
//! automorphisms and batch encoding need.

use std::collections::HashMap;

use tfhe_ntt::prime64::Plan;

use super::modulus::Modulus;

/// A forward/inverse negacyclic NTT modulo one prime for polynomials of degree `n`.
///
/// The NTT form of `a` holds, in slot `i`, the evaluation `a(w^e_i)` at a primitive `2n`-th
/// root `w`, with odd exponents `e_i` given by [`NttOperator::slot_exponent`]. The operator is
/// immutable and `Send + Sync`.
pub struct NttOperator {
    plan: Plan,
    modulus: Modulus,
    n: usize,
    /// Odd exponent of the evaluation point of each slot.
    slot_exp: Vec<u32>,
    /// Inverse of `slot_exp`, indexed by `e / 2` for odd `e < 2n`.
    exp_slot: Vec<u32>,
}

impl std::fmt::Debug for NttOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NttOperator")
            .field("p", &self.modulus.value())
            .field("n", &self.n)
            .finish()
    }
}

impl NttOperator {
    /// Returns `None` unless `n >= 16` is a power of two and `p` is a prime with `p = 1 mod 2n`.
    pub fn new(modulus: Modulus, n: usize) -> Option<Self> {
        let plan = Plan::try_new(n, modulus.value())?;
        // Evaluate X: slot i then holds the evaluation point itself.
        let mut x = vec![0u64; n];
        x[1] = 1;
        plan.fwd(&mut x);
        let w = x[0];
        let two_n = 2 * n;
        let mut exp_of = HashMap::with_capacity(n);
        let mut pw = w;
        let w2 = modulus.mul(w, w);
        for e in (1..two_n).step_by(2) {
            exp_of.insert(pw, e as u32);
            pw = modulus.mul(pw, w2);
        }
        let mut slot_exp = Vec::with_capacity(n);
        for &v in &x {
            slot_exp.push(*exp_of.get(&v)?);
        }
        let mut exp_slot = vec![0u32; n];
        for (i, &e) in slot_exp.iter().enumerate() {
            exp_slot[(e / 2) as usize] = i as u32;
        }
        Some(Self {
            plan,
            modulus,
            n,
            slot_exp,
            exp_slot,
        })
    }

    /// The modulus.
    #[inline(always)]
    pub fn modulus(&self) -> &Modulus {
        &self.modulus
    }

    /// The degree `n`.
    #[inline(always)]
    pub fn degree(&self) -> usize {
        self.n
    }

    /// Forward transform in place (coefficients to evaluations).
    #[inline]
    pub fn forward(&self, a: &mut [u64]) {
        self.plan.fwd(a);
    }

    /// Inverse transform in place (evaluations to coefficients), including the `1/n` factor.
    #[inline]
    pub fn backward(&self, a: &mut [u64]) {
        self.plan.inv(a);
        self.plan.normalize(a);
    }

    /// Inverse transform without the `1/n` factor (use after [`Self::mul_assign_scaled`]).
    #[inline]
    pub fn backward_unnormalized(&self, a: &mut [u64]) {
        self.plan.inv(a);
    }

    /// `a <- a * b / n` slot-wise; pair with [`Self::backward_unnormalized`].
    #[inline]
    pub fn mul_assign_scaled(&self, a: &mut [u64], b: &[u64]) {
        self.plan.mul_assign_normalize(a, b);
    }

    /// `acc <- acc + a * b` slot-wise.
    #[inline]
    pub fn mul_accumulate(&self, acc: &mut [u64], a: &[u64], b: &[u64]) {
        self.plan.mul_accumulate(acc, a, b);
    }

    /// Odd exponent `e` such that slot `i` holds the evaluation at `w^e`.
    #[inline]
    pub fn slot_exponent(&self, i: usize) -> u32 {
        self.slot_exp[i]
    }

    /// The slot that holds the evaluation at `w^e` for odd `e < 2n`.
    #[inline]
    pub fn exponent_slot(&self, e: usize) -> usize {
        self.exp_slot[e / 2] as usize
    }

    /// Applies `a(X) -> a(X^g)` (odd `g`) to a polynomial in NTT form: a slot permutation.
    pub fn automorphism_ntt(&self, input: &[u64], g: usize, out: &mut [u64]) {
        let perm = self.automorphism_permutation(g);
        for (o, &j) in out.iter_mut().zip(&perm) {
            *o = input[j as usize];
        }
    }

    /// The slot permutation of `X -> X^g`: output slot `i` takes input slot `perm[i]`.
    pub fn automorphism_permutation(&self, g: usize) -> Vec<u32> {
        let mask = 2 * self.n - 1;
        self.slot_exp
            .iter()
            .map(|&e| self.exp_slot[((e as usize * g) & mask) / 2])
            .collect()
    }

    /// Whether `other` orders its evaluation points like `self` (then automorphism
    /// permutations can be shared).
    pub fn same_slot_order(&self, other: &NttOperator) -> bool {
        self.slot_exp == other.slot_exp
    }
}

/// Applies `a(X) -> a(X^g)` (odd `g`) to coefficients modulo `modulus`.
pub fn automorphism_coeff(input: &[u64], g: usize, modulus: &Modulus, out: &mut [u64]) {
    let n = input.len();
    let mask = 2 * n - 1;
    for (i, &c) in input.iter().enumerate() {
        let j = (i * g) & mask;
        if j < n {
            out[j] = c;
        } else {
            out[j - n] = modulus.neg(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::primes::ntt_primes;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn schoolbook(a: &[u64], b: &[u64], m: &Modulus) -> Vec<u64> {
        let n = a.len();
        let mut out = vec![0u64; n];
        for i in 0..n {
            for j in 0..n {
                let p = m.mul(a[i], b[j]);
                if i + j < n {
                    out[i + j] = m.add(out[i + j], p);
                } else {
                    out[i + j - n] = m.sub(out[i + j - n], p);
                }
            }
        }
        out
    }

    #[test]
    fn ntt_product_matches_schoolbook() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for (bits, n) in [(30u32, 16usize), (50, 64), (60, 256), (45, 1024)] {
            let p = ntt_primes(bits, n, 1, &[]).unwrap()[0];
            let m = Modulus::new(p).unwrap();
            let op = NttOperator::new(m, n).unwrap();
            let a: Vec<u64> = (0..n).map(|_| rng.random_range(0..p)).collect();
            let b: Vec<u64> = (0..n).map(|_| rng.random_range(0..p)).collect();
            let expect = schoolbook(&a, &b, &m);
            let (mut fa, mut fb) = (a.clone(), b.clone());
            op.forward(&mut fa);
            op.forward(&mut fb);
            assert!(fa.iter().all(|&v| v < p));
            let mut prod: Vec<u64> = fa.iter().zip(&fb).map(|(&x, &y)| m.mul(x, y)).collect();
            op.backward(&mut prod);
            assert_eq!(prod, expect);
            let mut fa2 = fa.clone();
            op.mul_assign_scaled(&mut fa2, &fb);
            op.backward_unnormalized(&mut fa2);
            assert_eq!(fa2, expect);
            op.backward(&mut fa);
            assert_eq!(fa, a);
        }
    }

    #[test]
    fn automorphism_agrees_in_both_domains() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let n = 128;
        let p = ntt_primes(40, n, 1, &[]).unwrap()[0];
        let m = Modulus::new(p).unwrap();
        let op = NttOperator::new(m, n).unwrap();
        let a: Vec<u64> = (0..n).map(|_| rng.random_range(0..p)).collect();
        for g in [3usize, 5, 9, 2 * n - 1, 27 % (2 * n)] {
            let mut by_coeff = vec![0; n];
            automorphism_coeff(&a, g, &m, &mut by_coeff);
            let mut fa = a.clone();
            op.forward(&mut fa);
            let mut by_ntt = vec![0; n];
            op.automorphism_ntt(&fa, g, &mut by_ntt);
            op.backward(&mut by_ntt);
            assert_eq!(by_ntt, by_coeff, "g = {g}");
        }
    }

    #[test]
    fn rejects_unsuitable_moduli() {
        assert!(NttOperator::new(Modulus::new(97).unwrap(), 8).is_none());
        assert!(NttOperator::new(Modulus::new(1 << 40).unwrap(), 64).is_none());
    }
}
