//! RNS polynomials in `Z_Q[X]/(X^N + 1)`. The representation (coefficients or NTT
//! evaluations) is part of the type, so a forgotten transform is a compile error.

use std::marker::PhantomData;

use zeroize::Zeroize;

use super::ntt::automorphism_coeff;
use super::pool;
use rayon::prelude::*;

/// Values (limbs x degree) from which limb-wise transforms run in parallel on the rayon
/// pool: below it, task overhead outweighs the gain.
const PAR_THRESHOLD: usize = 1 << 15;
use super::rns::RnsBasis;

/// Marker: the polynomial holds coefficients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coeff;
/// Marker: the polynomial holds NTT evaluations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ntt;

/// A representation marker: [`Coeff`] or [`Ntt`].
pub trait Representation: Clone + Copy + std::fmt::Debug + Send + Sync + 'static {}
impl Representation for Coeff {}
impl Representation for Ntt {}

/// A polynomial modulo each prime of an RNS basis; limb `i` holds the `n` values modulo `q_i`.
///
/// The basis is not stored: operations take it, and check the limb count.
#[derive(PartialEq, Eq)]
pub struct Poly<R: Representation> {
    n: usize,
    data: Vec<u64>,
    _repr: PhantomData<R>,
}

impl<R: Representation> std::fmt::Debug for Poly<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print coefficients: they may be secret.
        f.debug_struct("Poly")
            .field("n", &self.n)
            .field("limbs", &self.num_limbs())
            .field("repr", &std::any::type_name::<R>())
            .finish()
    }
}

impl<R: Representation> Clone for Poly<R> {
    fn clone(&self) -> Self {
        let mut data = pool::take(self.data.len());
        data.copy_from_slice(&self.data);
        Self {
            n: self.n,
            data,
            _repr: PhantomData,
        }
    }
}

impl<R: Representation> Drop for Poly<R> {
    fn drop(&mut self) {
        pool::give(std::mem::take(&mut self.data));
    }
}

impl<R: Representation> Zeroize for Poly<R> {
    fn zeroize(&mut self) {
        self.data.zeroize();
    }
}

impl<R: Representation> Poly<R> {
    /// The zero polynomial with `limbs` limbs of degree `n`.
    pub fn zero(n: usize, limbs: usize) -> Self {
        Self {
            n,
            data: pool::take_zeroed(n * limbs),
            _repr: PhantomData,
        }
    }

    /// Wraps limb-major data (`limbs * n` values, each reduced modulo its prime).
    pub fn from_data(n: usize, data: Vec<u64>) -> Self {
        assert!(n > 0 && data.len().is_multiple_of(n));
        Self {
            n,
            data,
            _repr: PhantomData,
        }
    }

    /// The degree `N`.
    #[inline]
    pub fn degree(&self) -> usize {
        self.n
    }

    /// The number of limbs.
    #[inline]
    pub fn num_limbs(&self) -> usize {
        self.data.len() / self.n
    }

    /// All values, limb-major.
    #[inline]
    pub fn data(&self) -> &[u64] {
        &self.data
    }

    /// All values, limb-major, mutable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u64] {
        &mut self.data
    }

    /// Consumes the polynomial, returning its data.
    pub fn into_data(mut self) -> Vec<u64> {
        std::mem::take(&mut self.data)
    }

    /// Limb `i`.
    #[inline]
    pub fn limb(&self, i: usize) -> &[u64] {
        &self.data[i * self.n..(i + 1) * self.n]
    }

    /// Limb `i`, mutable.
    #[inline]
    pub fn limb_mut(&mut self, i: usize) -> &mut [u64] {
        &mut self.data[i * self.n..(i + 1) * self.n]
    }

    /// Iterator over the limbs.
    pub fn limbs(&self) -> std::slice::ChunksExact<'_, u64> {
        self.data.chunks_exact(self.n)
    }

    /// Mutable iterator over the limbs.
    pub fn limbs_mut(&mut self) -> std::slice::ChunksExactMut<'_, u64> {
        self.data.chunks_exact_mut(self.n)
    }

    /// A copy of the first `k` limbs.
    pub fn truncated(&self, k: usize) -> Self {
        let mut data = pool::take(k * self.n);
        data.copy_from_slice(&self.data[..k * self.n]);
        Self::from_data(self.n, data)
    }

    /// Drops all limbs from `k` on.
    pub fn truncate(&mut self, k: usize) {
        self.data.truncate(k * self.n);
    }

    /// A polynomial made of the given limbs of `self` (by index).
    pub fn select_limbs(&self, idx: impl IntoIterator<Item = usize>) -> Self {
        let mut data = Vec::new();
        for i in idx {
            data.extend_from_slice(self.limb(i));
        }
        Self::from_data(self.n, data)
    }

    fn check(&self, basis: &RnsBasis) {
        assert_eq!(
            self.num_limbs(),
            basis.len(),
            "polynomial has {} limbs, basis {}",
            self.num_limbs(),
            basis.len()
        );
    }

    /// `self += other`.
    pub fn add_assign(&mut self, other: &Self, basis: &RnsBasis) {
        self.check(basis);
        other.check(basis);
        for ((a, b), p) in self.limbs_mut().zip(other.limbs()).zip(basis.primes()) {
            let m = &p.modulus;
            for (x, &y) in a.iter_mut().zip(b) {
                *x = m.add(*x, y);
            }
        }
    }

    /// `self += c other` for a scalar given by its residues (one per limb).
    pub fn mul_scalar_add_assign(&mut self, other: &Self, c: &[u64], basis: &RnsBasis) {
        self.check(basis);
        other.check(basis);
        for (((a, b), &ci), p) in self
            .limbs_mut()
            .zip(other.limbs())
            .zip(c)
            .zip(basis.primes())
        {
            let m = &p.modulus;
            let ci = m.reduce(ci);
            let cs = m.shoup(ci);
            for (x, &y) in a.iter_mut().zip(b) {
                *x = m.add(*x, m.mul_shoup(y, ci, cs));
            }
        }
    }

    /// `self -= other`.
    pub fn sub_assign(&mut self, other: &Self, basis: &RnsBasis) {
        self.check(basis);
        other.check(basis);
        for ((a, b), p) in self.limbs_mut().zip(other.limbs()).zip(basis.primes()) {
            let m = &p.modulus;
            for (x, &y) in a.iter_mut().zip(b) {
                *x = m.sub(*x, y);
            }
        }
    }

    /// `self = -self`.
    pub fn neg_assign(&mut self, basis: &RnsBasis) {
        self.check(basis);
        for (a, p) in self.limbs_mut().zip(basis.primes()) {
            let m = &p.modulus;
            for x in a.iter_mut() {
                *x = m.neg(*x);
            }
        }
    }

    /// `self *= c` for a scalar given by its residues (one per limb).
    pub fn mul_scalar_assign(&mut self, c: &[u64], basis: &RnsBasis) {
        self.check(basis);
        for ((a, &ci), p) in self.limbs_mut().zip(c).zip(basis.primes()) {
            let m = &p.modulus;
            let ci = m.reduce(ci);
            let cs = m.shoup(ci);
            for x in a.iter_mut() {
                *x = m.mul_shoup(*x, ci, cs);
            }
        }
    }
}

impl Poly<Coeff> {
    /// A polynomial with small signed coefficients, reduced into every limb of `basis`.
    pub fn from_signed(coeffs: &[i64], basis: &RnsBasis) -> Self {
        let n = coeffs.len();
        let mut p = Self::from_data(n, pool::take(n * basis.len()));
        for (limb, pr) in p.limbs_mut().zip(basis.primes()) {
            for (x, &c) in limb.iter_mut().zip(coeffs) {
                *x = pr.modulus.reduce_i64(c);
            }
        }
        p
    }

    /// Forward NTT of every limb (limbs in parallel when there is enough work).
    pub fn into_ntt(mut self, basis: &RnsBasis) -> Poly<Ntt> {
        self.check(basis);
        let n = self.n;
        if self.data.len() >= PAR_THRESHOLD {
            self.data
                .par_chunks_exact_mut(n)
                .zip(basis.primes().par_iter())
                .for_each(|(limb, p)| p.ntt.forward(limb));
        } else {
            for (limb, p) in self.limbs_mut().zip(basis.primes()) {
                p.ntt.forward(limb);
            }
        }
        Poly::from_data(self.n, self.into_data())
    }

    /// `a(X) -> a(X^g)` for odd `g`.
    pub fn automorphism(&self, g: usize, basis: &RnsBasis) -> Self {
        self.check(basis);
        let mut out = Self::zero(self.n, basis.len());
        for ((o, a), p) in out.limbs_mut().zip(self.limbs()).zip(basis.primes()) {
            automorphism_coeff(a, g, &p.modulus, o);
        }
        out
    }
}

impl Poly<Ntt> {
    /// Inverse NTT of every limb (limbs in parallel when there is enough work).
    pub fn into_coeff(mut self, basis: &RnsBasis) -> Poly<Coeff> {
        self.check(basis);
        let n = self.n;
        if self.data.len() >= PAR_THRESHOLD {
            self.data
                .par_chunks_exact_mut(n)
                .zip(basis.primes().par_iter())
                .for_each(|(limb, p)| p.ntt.backward(limb));
        } else {
            for (limb, p) in self.limbs_mut().zip(basis.primes()) {
                p.ntt.backward(limb);
            }
        }
        Poly::from_data(self.n, self.into_data())
    }

    /// `self *= other` slot-wise.
    pub fn mul_assign(&mut self, other: &Self, basis: &RnsBasis) {
        self.check(basis);
        other.check(basis);
        for ((a, b), p) in self.limbs_mut().zip(other.limbs()).zip(basis.primes()) {
            let m = &p.modulus;
            for (x, &y) in a.iter_mut().zip(b) {
                *x = m.mul_reduced(*x, y);
            }
        }
    }

    /// `self += a * b` slot-wise.
    pub fn mul_accumulate(&mut self, a: &Self, b: &Self, basis: &RnsBasis) {
        self.check(basis);
        for (((acc, x), y), p) in self
            .limbs_mut()
            .zip(a.limbs())
            .zip(b.limbs())
            .zip(basis.primes())
        {
            p.ntt.mul_accumulate(acc, x, y);
        }
    }

    /// `a(X) -> a(X^g)` for odd `g`, as a slot permutation.
    pub fn automorphism(&self, g: usize, basis: &RnsBasis) -> Self {
        self.check(basis);
        let mut out = Self::from_data(self.n, pool::take(self.data.len()));
        let primes = basis.primes();
        if basis.uniform_slot_order() {
            let perm = primes[0].ntt.automorphism_permutation(g);
            for (o, a) in out.limbs_mut().zip(self.limbs()) {
                for (x, &j) in o.iter_mut().zip(&perm) {
                    *x = a[j as usize];
                }
            }
        } else {
            for ((o, a), p) in out.limbs_mut().zip(self.limbs()).zip(primes) {
                p.ntt.automorphism_ntt(a, g, o);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::primes::ntt_primes;
    use crate::math::rns::Prime;
    use num_bigint::BigInt;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn basis(n: usize) -> RnsBasis {
        let ps = ntt_primes(45, n, 3, &[]).unwrap();
        RnsBasis::new(ps.iter().map(|&p| Prime::new(p, n).unwrap()).collect())
    }

    /// Negacyclic product of big-integer coefficient vectors.
    fn negacyclic(a: &[BigInt], b: &[BigInt]) -> Vec<BigInt> {
        let n = a.len();
        let mut out = vec![BigInt::from(0); n];
        for i in 0..n {
            for j in 0..n {
                let p = &a[i] * &b[j];
                if i + j < n {
                    out[i + j] += p;
                } else {
                    out[i + j - n] -= p;
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn rns_negacyclic_product_matches_bigint(seed: u64) {
            let n = 32;
            let b = basis(n);
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let a: Vec<i64> = (0..n).map(|_| rng.random_range(-(1i64 << 40)..(1i64 << 40))).collect();
            let c: Vec<i64> = (0..n).map(|_| rng.random_range(-(1i64 << 40)..(1i64 << 40))).collect();
            let mut pa = Poly::from_signed(&a, &b).into_ntt(&b);
            let pc = Poly::from_signed(&c, &b).into_ntt(&b);
            pa.mul_assign(&pc, &b);
            let prod = pa.into_coeff(&b);
            let big_a: Vec<BigInt> = a.iter().map(|&x| BigInt::from(x)).collect();
            let big_c: Vec<BigInt> = c.iter().map(|&x| BigInt::from(x)).collect();
            let want = negacyclic(&big_a, &big_c);
            for i in 0..3 {
                let q = BigInt::from(b.modulus(i).value());
                for k in 0..n {
                    let w = ((&want[k] % &q) + &q) % &q;
                    prop_assert_eq!(BigInt::from(prod.limb(i)[k]), w);
                }
            }
        }

        #[test]
        fn add_sub_neg_are_consistent(seed: u64) {
            let n = 16;
            let b = basis(n);
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let a: Vec<i64> = (0..n).map(|_| rng.random_range(-1000..1000)).collect();
            let c: Vec<i64> = (0..n).map(|_| rng.random_range(-1000..1000)).collect();
            let sum: Vec<i64> = a.iter().zip(&c).map(|(x, y)| x + y).collect();
            let mut pa = Poly::from_signed(&a, &b);
            let pc = Poly::from_signed(&c, &b);
            pa.add_assign(&pc, &b);
            prop_assert_eq!(&pa, &Poly::from_signed(&sum, &b));
            pa.sub_assign(&pc, &b);
            prop_assert_eq!(&pa, &Poly::from_signed(&a, &b));
            pa.neg_assign(&b);
            let neg: Vec<i64> = a.iter().map(|x| -x).collect();
            prop_assert_eq!(&pa, &Poly::from_signed(&neg, &b));
        }
    }

    #[test]
    fn automorphism_in_both_representations() {
        let n = 64;
        let b = basis(n);
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let a: Vec<i64> = (0..n).map(|_| rng.random_range(-50..50)).collect();
        let pa = Poly::from_signed(&a, &b);
        for g in [3, 9, 2 * n - 1] {
            let direct = pa.automorphism(g, &b);
            let via_ntt = pa.clone().into_ntt(&b).automorphism(g, &b).into_coeff(&b);
            assert_eq!(direct, via_ntt);
            // reference: coefficient i moves to i*g mod 2n with sign
            let mut want = vec![0i64; n];
            for i in 0..n {
                let j = (i * g) % (2 * n);
                if j < n {
                    want[j] = a[i]
                } else {
                    want[j - n] = -a[i]
                }
            }
            assert_eq!(direct, Poly::from_signed(&want, &b));
        }
    }
}
