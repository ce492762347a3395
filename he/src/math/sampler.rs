//! Samplers for RLWE: uniform polynomials (optionally expanded from a 32-byte seed),
//! ternary secrets and centered binomial errors (sigma about 3.2).

use rand::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::poly::{Ntt, Poly};
use super::rns::RnsBasis;

/// Parameter of the centered binomial error distribution: variance `ETA / 2 = 10.5`, i.e.
/// sigma = 3.24, as in the HomomorphicEncryption.org standard's sigma = 3.2.
pub const CBD_ETA: u32 = 21;

/// A 32-byte seed for expanding uniform polynomials.
pub type Seed = [u8; 32];

/// A fresh random seed.
pub fn random_seed<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> Seed {
    let mut s = [0u8; 32];
    rng.fill_bytes(&mut s);
    s
}

/// A uniform polynomial, sampled directly in NTT form (the NTT of a uniform polynomial is
/// uniform), limb by limb.
pub fn uniform_ntt<R: RngCore + ?Sized>(rng: &mut R, n: usize, basis: &RnsBasis) -> Poly<Ntt> {
    let mut p = Poly::zero(n, basis.len());
    for (limb, pr) in p.limbs_mut().zip(basis.primes()) {
        for x in limb.iter_mut() {
            *x = pr.modulus.random(rng);
        }
    }
    p
}

/// The uniform polynomial expanded from `seed` with ChaCha20. Limb `i` depends only on the
/// seed and `i` (its own stream), so a prefix of the basis gives a prefix of the limbs.
pub fn uniform_from_seed(seed: &Seed, n: usize, basis: &RnsBasis, first_limb: usize) -> Poly<Ntt> {
    let mut p = Poly::zero(n, basis.len());
    for (i, (limb, pr)) in p.limbs_mut().zip(basis.primes()).enumerate() {
        let mut rng = ChaCha20Rng::from_seed(*seed);
        rng.set_stream((first_limb + i) as u64);
        for x in limb.iter_mut() {
            *x = pr.modulus.random(&mut rng);
        }
    }
    p
}

/// `n` coefficients uniform in `{-1, 0, 1}`.
pub fn ternary<R: RngCore + CryptoRng + ?Sized>(rng: &mut R, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let w = rng.next_u64();
        for k in 0..8 {
            let byte = (w >> (8 * k)) as u8;
            // 255 = 3 * 85: reject it for an exactly uniform value mod 3.
            if byte < 255 && out.len() < n {
                out.push((byte % 3) as i64 - 1);
            }
        }
    }
    out
}

/// `n` coefficients from the centered binomial distribution with parameter [`CBD_ETA`].
pub fn centered_binomial<R: RngCore + CryptoRng + ?Sized>(rng: &mut R, n: usize) -> Vec<i64> {
    let mask = (1u64 << CBD_ETA) - 1;
    (0..n)
        .map(|_| {
            let w = rng.next_u64();
            (w & mask).count_ones() as i64 - ((w >> CBD_ETA) & mask).count_ones() as i64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::primes::ntt_primes;
    use crate::math::rns::Prime;

    #[test]
    fn ternary_is_balanced() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let v = ternary(&mut rng, 300_000);
        let counts = [-1, 0, 1].map(|c| v.iter().filter(|&&x| x == c).count() as f64);
        for c in counts {
            // expected 100000, std 258: allow 6 sigma
            assert!((c - 100_000.0).abs() < 1600.0, "{counts:?}");
        }
    }

    #[test]
    fn binomial_has_the_stated_variance() {
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let v = centered_binomial(&mut rng, 200_000);
        let mean = v.iter().sum::<i64>() as f64 / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 10.5).abs() < 0.2, "variance {var}");
        assert!(v.iter().all(|x| x.abs() <= CBD_ETA as i64));
    }

    #[test]
    fn seed_expansion_is_deterministic_and_prefix_stable() {
        let n = 64;
        let ps = ntt_primes(40, n, 3, &[]).unwrap();
        let basis = RnsBasis::new(ps.iter().map(|&p| Prime::new(p, n).unwrap()).collect());
        let seed = [7u8; 32];
        let a = uniform_from_seed(&seed, n, &basis, 0);
        let b = uniform_from_seed(&seed, n, &basis, 0);
        assert_eq!(a, b);
        let prefix = uniform_from_seed(&seed, n, &basis.sub_basis(0..2), 0);
        assert_eq!(prefix, a.truncated(2));
        let other = uniform_from_seed(&[8u8; 32], n, &basis, 0);
        assert_ne!(a, other);
        for (limb, p) in a.limbs().zip(basis.primes()) {
            assert!(limb.iter().all(|&x| x < p.modulus.value()));
        }
    }
}
