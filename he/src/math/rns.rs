//! Residue number system bases: CRT constants and fast base conversion between bases.

use std::sync::Arc;

use super::modulus::Modulus;
use super::ntt::NttOperator;

/// One RNS prime with its NTT operator. Shared (`Arc`) between the bases that contain it.
#[derive(Debug)]
pub struct Prime {
    /// The prime and its reduction constants.
    pub modulus: Modulus,
    /// The negacyclic NTT modulo this prime.
    pub ntt: NttOperator,
}

impl Prime {
    /// Builds the prime and its NTT plan; `None` if `p` is not an NTT-friendly prime for `n`.
    pub fn new(p: u64, n: usize) -> Option<Arc<Self>> {
        let modulus = Modulus::new(p)?;
        let ntt = NttOperator::new(modulus, n)?;
        Some(Arc::new(Self { modulus, ntt }))
    }
}

/// An ordered RNS basis `q_0, ..., q_{k-1}` with its CRT constants.
#[derive(Debug, Clone)]
pub struct RnsBasis {
    primes: Vec<Arc<Prime>>,
    /// `(Q/q_i)^-1 mod q_i` and its Shoup constant.
    q_hat_inv: Vec<(u64, u64)>,
    /// `1/q_i` as a float, for the quotient estimate of exact conversions.
    inv_q: Vec<f64>,
    log2_q: f64,
    /// Garner constants: `[i] = (q_0 ... q_{i-1})^-1 mod q_i`.
    garner_inv: Vec<u64>,
    /// `[i][j] = (q_0 ... q_{j-1}) mod q_i` for `j <= i`, with Shoup constants.
    garner_prefix: Vec<Vec<(u64, u64)>>,
    /// Shoup constants of `garner_inv`.
    garner_inv_shoup: Vec<u64>,
    /// Mixed-radix digits of `(Q - 1) / 2`.
    half_digits: Vec<u64>,
    /// `prod_{j<i} q_j` as floats.
    radix_f64: Vec<f64>,
    /// Whether all primes' NTTs order their evaluation points alike.
    uniform_slot_order: bool,
}

impl RnsBasis {
    /// Builds a basis from distinct primes of the same degree.
    pub fn new(primes: Vec<Arc<Prime>>) -> Self {
        let q_hat_inv = primes
            .iter()
            .enumerate()
            .map(|(i, pi)| {
                let m = pi.modulus;
                let mut prod = 1u64;
                for (j, pj) in primes.iter().enumerate() {
                    if i != j {
                        prod = m.mul(prod, m.reduce(pj.modulus.value()));
                    }
                }
                let inv = m.inv(prod).expect("RNS primes must be distinct");
                (inv, m.shoup(inv))
            })
            .collect();
        let inv_q = primes
            .iter()
            .map(|p| 1.0 / p.modulus.value() as f64)
            .collect();
        let log2_q = primes
            .iter()
            .map(|p| (p.modulus.value() as f64).log2())
            .sum();
        let k = primes.len();
        let qs: Vec<u64> = primes.iter().map(|p| p.modulus.value()).collect();
        let garner_prefix: Vec<Vec<u64>> = (0..k)
            .map(|i| {
                let m = primes[i].modulus;
                let mut v = Vec::with_capacity(i + 1);
                let mut prod = 1 % m.value();
                for &qj in &qs[..i] {
                    v.push(prod);
                    prod = m.mul(prod, m.reduce(qj));
                }
                v.push(prod);
                v
            })
            .collect();
        let garner_inv: Vec<u64> = (0..k)
            .map(|i| {
                primes[i]
                    .modulus
                    .inv(garner_prefix[i][i])
                    .expect("RNS primes must be distinct")
            })
            .collect();
        let garner_inv_shoup = (0..k)
            .map(|i| primes[i].modulus.shoup(garner_inv[i]))
            .collect();
        let garner_prefix: Vec<Vec<(u64, u64)>> = garner_prefix
            .into_iter()
            .enumerate()
            .map(|(i, row)| {
                row.into_iter()
                    .map(|c| (c, primes[i].modulus.shoup(c)))
                    .collect()
            })
            .collect();
        // Digits of (Q-1)/2: halve the digits of Q-1 = sum (q_i - 1) prod_{j<i} q_j.
        let mut half_digits: Vec<u64> = qs.iter().map(|q| q - 1).collect();
        let mut carry = 0u128;
        for i in (0..k).rev() {
            let cur = half_digits[i] as u128 + carry * qs[i] as u128;
            half_digits[i] = (cur / 2) as u64;
            carry = cur % 2;
        }
        let mut radix_f64 = Vec::with_capacity(k);
        let mut r = 1f64;
        for &q in &qs {
            radix_f64.push(r);
            r *= q as f64;
        }
        let uniform_slot_order = primes.iter().all(|p| p.ntt.same_slot_order(&primes[0].ntt));
        Self {
            uniform_slot_order,
            primes,
            q_hat_inv,
            inv_q,
            log2_q,
            garner_inv,
            garner_inv_shoup,
            garner_prefix,
            half_digits,
            radix_f64,
        }
    }

    /// The primes.
    #[inline]
    pub fn primes(&self) -> &[Arc<Prime>] {
        &self.primes
    }

    /// Whether every prime's NTT orders its evaluation points alike, so that one slot
    /// permutation serves all limbs.
    pub fn uniform_slot_order(&self) -> bool {
        self.uniform_slot_order
    }

    /// The number of primes.
    #[inline]
    pub fn len(&self) -> usize {
        self.primes.len()
    }

    /// Whether the basis is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.primes.is_empty()
    }

    /// The `i`-th modulus.
    #[inline]
    pub fn modulus(&self, i: usize) -> &Modulus {
        &self.primes[i].modulus
    }

    /// `log2` of the product of the primes.
    pub fn log2_product(&self) -> f64 {
        self.log2_q
    }

    /// The product of the primes modulo `m`.
    pub fn product_mod(&self, m: &Modulus) -> u64 {
        self.primes.iter().fold(1 % m.value(), |acc, p| {
            m.mul(acc, m.reduce(p.modulus.value()))
        })
    }

    /// The sub-basis of the primes in `range`.
    pub fn sub_basis(&self, range: std::ops::Range<usize>) -> RnsBasis {
        RnsBasis::new(self.primes[range].to_vec())
    }

    /// The concatenation of two bases.
    pub fn concat(&self, other: &RnsBasis) -> RnsBasis {
        let mut v = self.primes.clone();
        v.extend(other.primes.iter().cloned());
        RnsBasis::new(v)
    }

    /// Mixed-radix (Garner) digits of the residues `x`: `x = v_0 + v_1 q_0 + v_2 q_0 q_1 + ...`.
    pub fn mixed_radix(&self, x: &[u64]) -> Vec<u64> {
        let mut v = vec![0u64; self.len()];
        self.mixed_radix_into(x, &mut v);
        v
    }

    fn mixed_radix_into(&self, x: &[u64], v: &mut [u64]) {
        for i in 0..self.len() {
            let m = &self.primes[i].modulus;
            let pre = &self.garner_prefix[i];
            let mut acc = m.reduce(x[i]);
            for j in 0..i {
                let (c, cs) = pre[j];
                acc = m.sub(acc, m.mul_shoup(v[j], c, cs));
            }
            v[i] = m.mul_shoup(acc, self.garner_inv[i], self.garner_inv_shoup[i]);
        }
    }

    /// Whether the digits `v` exceed those of `(Q - 1) / 2`, and if so, replaces them by the
    /// digits of `Q - x`.
    fn center_digits(&self, v: &mut [u64]) -> bool {
        let k = self.len();
        let mut greater = false;
        for i in (0..k).rev() {
            if v[i] != self.half_digits[i] {
                greater = v[i] > self.half_digits[i];
                break;
            }
        }
        if greater {
            for i in 0..k {
                v[i] = self.modulus(i).value() - 1 - v[i];
            }
            for i in 0..k {
                v[i] += 1;
                if v[i] == self.modulus(i).value() {
                    v[i] = 0;
                } else {
                    break;
                }
            }
        }
        greater
    }

    /// The centered value `x in (-Q/2, Q/2]` with residues `x`, as a float (relative error
    /// about 2^-52), computed without big integers.
    pub fn to_f64_centered(&self, x: &[u64], scratch: &mut Vec<u64>) -> f64 {
        scratch.resize(self.len(), 0);
        self.mixed_radix_into(x, scratch);
        let neg = self.center_digits(scratch);
        let mut acc = 0f64;
        for i in (0..self.len()).rev() {
            acc += scratch[i] as f64 * self.radix_f64[i];
        }
        if neg {
            -acc
        } else {
            acc
        }
    }

    /// `log2 |x|` of the centered value with residues `x` (`None` if it is zero); exact to
    /// about 2^-40 relative precision, without big integers.
    pub fn log2_abs_centered(&self, x: &[u64]) -> Option<f64> {
        let k = self.len();
        let mut v = self.mixed_radix(x);
        self.center_digits(&mut v);
        let top = (0..k).rev().find(|&i| v[i] != 0)?;
        let mut mant = v[top] as f64;
        let mut log_base: f64 = (0..top)
            .map(|j| (self.modulus(j).value() as f64).log2())
            .sum();
        if top > 0 {
            let below = self.modulus(top - 1).value() as f64;
            mant += v[top - 1] as f64 / below;
            if top > 1 {
                mant += v[top - 2] as f64 / below / self.modulus(top - 2).value() as f64;
            }
        }
        log_base += mant.log2();
        Some(log_base)
    }
}

/// Converts residues from a basis `Q` to a basis `P`.
///
/// Fast (approximate) conversion returns `x + u Q` for some `0 <= u < k`; exact conversion
/// returns the centered representative of `x` in `(-Q/2, Q/2]` (up to a rounding error of
/// probability about 2^-50 per coefficient, when `x/Q` is within 2^-50 of one half).
#[derive(Debug, Clone)]
pub struct BaseConverter {
    from: RnsBasis,
    to: RnsBasis,
    from_mod: Vec<Modulus>,
    to_mod: Vec<Modulus>,
    /// `[j][i] = (Q/q_i) mod p_j`.
    q_hat_mod_p: Vec<Vec<u64>>,
    /// `[j] = -Q mod p_j`.
    neg_q_mod_p: Vec<u64>,
    /// Whether every accumulated sum fits the single-product Barrett reduction.
    wide_ok: bool,
}

impl BaseConverter {
    /// Precomputes the constants for `from -> to`.
    pub fn new(from: &RnsBasis, to: &RnsBasis) -> Self {
        let q_hat_mod_p = to
            .primes()
            .iter()
            .map(|pj| {
                let m = pj.modulus;
                (0..from.len())
                    .map(|i| {
                        let mut prod = 1u64;
                        for (l, ql) in from.primes().iter().enumerate() {
                            if l != i {
                                prod = m.mul(prod, m.reduce(ql.modulus.value()));
                            }
                        }
                        prod
                    })
                    .collect()
            })
            .collect();
        let neg_q_mod_p = to
            .primes()
            .iter()
            .map(|p| p.modulus.neg(from.product_mod(&p.modulus)))
            .collect();
        let max_in = from
            .primes()
            .iter()
            .map(|p| p.modulus.bits())
            .max()
            .unwrap_or(0);
        // Sums of k+1 products of (max_in)-bit by (target)-bit values must stay below
        // 2^(target bits + 63).
        let wide_ok = max_in as f64 + ((from.len() + 1) as f64).log2() <= 63.0;
        Self {
            wide_ok,
            from: from.clone(),
            to: to.clone(),
            from_mod: from.primes().iter().map(|p| p.modulus).collect(),
            to_mod: to.primes().iter().map(|p| p.modulus).collect(),
            q_hat_mod_p,
            neg_q_mod_p,
        }
    }

    /// The source basis.
    pub fn from_basis(&self) -> &RnsBasis {
        &self.from
    }

    /// The target basis.
    pub fn to_basis(&self) -> &RnsBasis {
        &self.to
    }

    /// Converts `input` (`k` limbs of `n` coefficients, limb-major) into `output` (`m` limbs).
    /// With `exact`, the result is the centered representative.
    pub fn convert(&self, input: &[u64], output: &mut [u64], n: usize, exact: bool) {
        let k = self.from_mod.len();
        let m = self.to_mod.len();
        assert_eq!(input.len(), k * n);
        assert_eq!(output.len(), m * n);
        if k == 1 && !exact {
            // A single prime: the residue itself is the (non-centered) lift.
            let q = self.from_mod[0].value();
            for (j, pj) in self.to_mod.iter().enumerate() {
                let out = &mut output[j * n..(j + 1) * n];
                let p = pj.value();
                if q <= p {
                    out.copy_from_slice(input);
                } else if q <= 2 * p {
                    for (o, &x) in out.iter_mut().zip(input) {
                        *o = x.min(x.wrapping_sub(p));
                    }
                } else {
                    for (o, &x) in out.iter_mut().zip(input) {
                        *o = pj.reduce(x);
                    }
                }
            }
            return;
        }
        match k {
            1 => self.convert_k::<1>(input, output, n, exact),
            2 => self.convert_k::<2>(input, output, n, exact),
            3 => self.convert_k::<3>(input, output, n, exact),
            4 => self.convert_k::<4>(input, output, n, exact),
            5 => self.convert_k::<5>(input, output, n, exact),
            6 => self.convert_k::<6>(input, output, n, exact),
            _ => self.convert_any(input, output, n, exact),
        }
    }

    /// The conversion for a source basis of exactly `K` primes: the whole inner computation
    /// stays in registers.
    fn convert_k<const K: usize>(&self, input: &[u64], output: &mut [u64], n: usize, exact: bool) {
        let m = self.to_mod.len();
        let qhat: [(u64, u64); K] = std::array::from_fn(|i| self.from.q_hat_inv[i]);
        let from: [Modulus; K] = std::array::from_fn(|i| self.from_mod[i]);
        let inv_q: [f64; K] = std::array::from_fn(|i| self.from.inv_q[i]);
        let rows: Vec<[u64; K]> = self
            .q_hat_mod_p
            .iter()
            .map(|r| std::array::from_fn(|i| r[i]))
            .collect();
        let inputs: [&[u64]; K] = std::array::from_fn(|i| &input[i * n..(i + 1) * n]);
        for c in 0..n {
            let y: [u64; K] =
                std::array::from_fn(|i| from[i].mul_shoup(inputs[i][c], qhat[i].0, qhat[i].1));
            let v = if exact {
                let mut s = 0.5f64;
                for i in 0..K {
                    s += y[i] as f64 * inv_q[i];
                }
                s as u64
            } else {
                0
            };
            for j in 0..m {
                let w = &rows[j];
                let mut acc = v as u128 * self.neg_q_mod_p[j] as u128;
                for i in 0..K {
                    acc += y[i] as u128 * w[i] as u128;
                }
                let pj = &self.to_mod[j];
                output[j * n + c] = if self.wide_ok {
                    pj.reduce_wide(acc)
                } else {
                    pj.reduce_u128(acc)
                };
            }
        }
    }

    fn convert_any(&self, input: &[u64], output: &mut [u64], n: usize, exact: bool) {
        let k = self.from_mod.len();
        let m = self.to_mod.len();
        let mut y = vec![0u64; k];
        for c in 0..n {
            let mut s = 0.5f64;
            for i in 0..k {
                let (w, ws) = self.from.q_hat_inv[i];
                y[i] = self.from_mod[i].mul_shoup(input[i * n + c], w, ws);
                s += y[i] as f64 * self.from.inv_q[i];
            }
            let v = if exact { s as u64 } else { 0 };
            for j in 0..m {
                let row = &self.q_hat_mod_p[j];
                let mut acc = v as u128 * self.neg_q_mod_p[j] as u128;
                for i in 0..k {
                    acc += y[i] as u128 * row[i] as u128;
                }
                let pj = &self.to_mod[j];
                output[j * n + c] = if self.wide_ok {
                    pj.reduce_wide(acc)
                } else {
                    pj.reduce_u128(acc)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::primes::ntt_primes;
    use num_bigint::{BigInt, BigUint};
    use num_traits::{Signed, ToPrimitive, Zero};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn basis(bits: &[u32], n: usize, exclude: &mut Vec<u64>) -> RnsBasis {
        let mut primes = Vec::new();
        for &b in bits {
            let p = ntt_primes(b, n, 1, exclude).unwrap()[0];
            exclude.push(p);
            primes.push(Prime::new(p, n).unwrap());
        }
        RnsBasis::new(primes)
    }

    fn product(b: &RnsBasis) -> BigUint {
        b.primes()
            .iter()
            .fold(BigUint::from(1u32), |acc, p| acc * p.modulus.value())
    }

    fn crt(b: &RnsBasis, x: &[u64]) -> BigUint {
        let q = product(b);
        let mut acc = BigUint::zero();
        for (i, p) in b.primes().iter().enumerate() {
            let qi = p.modulus.value();
            let qhat = &q / qi;
            let inv = b.q_hat_inv[i].0;
            acc += BigUint::from(x[i]) * inv % qi * qhat;
        }
        acc % q
    }

    fn residues(b: &RnsBasis, v: &BigInt) -> Vec<u64> {
        b.primes()
            .iter()
            .map(|p| {
                let m = BigInt::from(p.modulus.value());
                (((v % &m) + &m) % &m).to_u64().unwrap()
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn crt_round_trip_and_mixed_radix(seed: u64) {
            let mut ex = Vec::new();
            let b = basis(&[40, 45, 50, 30], 16, &mut ex);
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let x: Vec<u64> = (0..b.len()).map(|i| rng.random_range(0..b.modulus(i).value())).collect();
            let big = crt(&b, &x);
            prop_assert_eq!(residues(&b, &BigInt::from(big.clone())), x.clone());
            // mixed radix digits reconstruct the same value
            let v = b.mixed_radix(&x);
            let mut acc = BigUint::zero();
            let mut radix = BigUint::from(1u32);
            for (i, d) in v.iter().enumerate() {
                acc += &radix * *d;
                radix *= b.modulus(i).value();
            }
            prop_assert_eq!(&acc, &big);
            // centered magnitude
            let q = product(&b);
            let centered = if &big * 2u32 > q { BigInt::from(big) - BigInt::from(q) } else { BigInt::from(big) };
            let expect = centered.abs().to_f64().unwrap().log2();
            let got = b.log2_abs_centered(&x).unwrap();
            prop_assert!((got - expect).abs() < 1e-9, "{} vs {}", got, expect);
            let f = b.to_f64_centered(&x, &mut Vec::new());
            let want = centered.to_f64().unwrap();
            prop_assert!((f - want).abs() <= want.abs() * 1e-14, "{} vs {}", f, want);
        }

        #[test]
        fn base_conversion_matches_bigint(seed: u64) {
            let n = 16;
            let mut ex = Vec::new();
            let from = basis(&[44, 44, 43], n, &mut ex);
            let to = basis(&[50, 50, 50, 49], n, &mut ex);
            let conv = BaseConverter::new(&from, &to);
            let q = BigInt::from(product(&from));
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let values: Vec<BigInt> = (0..n).map(|_| {
                let r: u128 = rng.random();
                let v = BigInt::from(r) * BigInt::from(rng.random::<u64>()) % &q;
                v - &q / 2
            }).collect();
            let mut input = vec![0u64; from.len() * n];
            for (c, v) in values.iter().enumerate() {
                for (i, r) in residues(&from, v).into_iter().enumerate() {
                    input[i * n + c] = r;
                }
            }
            let mut exact = vec![0u64; to.len() * n];
            conv.convert(&input, &mut exact, n, true);
            let mut fast = vec![0u64; to.len() * n];
            conv.convert(&input, &mut fast, n, false);
            for (c, v) in values.iter().enumerate() {
                let want = residues(&to, v);
                for j in 0..to.len() {
                    prop_assert_eq!(exact[j * n + c], want[j]);
                }
                // fast conversion is off by a multiple u*Q with 0 <= u < k
                let ok = (0..from.len() as i64 + 1).any(|u| {
                    let cand = residues(&to, &(v + &q * u));
                    (0..to.len()).all(|j| fast[j * n + c] == cand[j])
                });
                prop_assert!(ok);
            }
        }
    }

    #[test]
    fn zero_has_no_log() {
        let mut ex = Vec::new();
        let b = basis(&[40, 41], 16, &mut ex);
        assert!(b.log2_abs_centered(&[0, 0]).is_none());
        let m1: Vec<u64> = (0..2).map(|i| b.modulus(i).value() - 1).collect();
        assert!(b.log2_abs_centered(&m1).unwrap().abs() < 1e-12);
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let _ = rng.random::<u8>();
    }
}
