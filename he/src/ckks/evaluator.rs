//! Homomorphic operations on CKKS ciphertexts. Every ciphertext carries its level and scale;
//! mismatches are typed errors that carry both values.

use std::sync::Arc;

use super::ciphertext::Ciphertext;
use super::encoding::Plaintext;
use super::params::CkksParameters;
use crate::error::{check_params, Error, Result};
use crate::math::{Ntt, Poly, RnsBasis};
use crate::rlwe::ops::{self, Decomposition};
use crate::rlwe::{GaloisKeys, RelinKey};

/// Relative tolerance under which two scales are considered equal.
pub const SCALE_TOLERANCE: f64 = 1e-9;

fn scales_match(a: f64, b: f64) -> bool {
    (a - b).abs() <= SCALE_TOLERANCE * a.abs().max(b.abs())
}

/// Evaluates operations on CKKS ciphertexts. Holds no key and no mutable state: it takes
/// `&self` and is `Send + Sync`.
///
/// ```
/// use cipherml_he::ckks::*;
/// use cipherml_he::rlwe::{PublicKey, RelinKey, SecretKey};
/// use std::sync::Arc;
/// let params = CkksParameters::new(&CkksParametersLiteral::n8192()).unwrap();
/// let mut rng = rand::rng();
/// let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
/// let rlk = RelinKey::new(&sk, &mut rng);
/// let enc = Encryptor::new(&params, PublicKey::new(&sk, &mut rng)).unwrap();
/// let dec = Decryptor::new(&params, sk).unwrap();
/// let ev = Evaluator::new(&params);
/// let x = enc.encrypt_f64(&[1.5, -2.0], &mut rng).unwrap();
/// let y = ev.rescale(&ev.mul_relin(&x, &x, &rlk).unwrap()).unwrap();
/// let out = dec.decrypt_f64(&y).unwrap();
/// assert!((out[0] - 2.25).abs() < 1e-6 && (out[1] - 4.0).abs() < 1e-6);
/// ```
#[derive(Debug, Clone)]
pub struct Evaluator {
    params: Arc<CkksParameters>,
}

impl Evaluator {
    /// An evaluator for `params`.
    pub fn new(params: &Arc<CkksParameters>) -> Self {
        Self {
            params: params.clone(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &Arc<CkksParameters> {
        &self.params
    }

    fn q(&self, level: usize) -> &RnsBasis {
        self.params.context().q_at(level)
    }

    fn check(&self, ct: &Ciphertext) -> Result<()> {
        check_params(self.params.id(), ct.params_id)?;
        Ok(())
    }

    fn check_same(&self, a: &Ciphertext, b: &Ciphertext) -> Result<()> {
        self.check(a)?;
        self.check(b)?;
        if a.level != b.level {
            return Err(Error::LevelMismatch {
                left: a.level,
                right: b.level,
            });
        }
        if !scales_match(a.scale, b.scale) {
            return Err(Error::ScaleMismatch {
                left: a.scale,
                right: b.scale,
            });
        }
        Ok(())
    }

    fn check_size(ct: &Ciphertext, expected: usize) -> Result<()> {
        if ct.polys.len() != expected {
            return Err(Error::CiphertextSize {
                found: ct.polys.len(),
                expected,
            });
        }
        Ok(())
    }

    fn check_pt(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<()> {
        check_params(self.params.id(), pt.params_id)?;
        if pt.level != ct.level {
            return Err(Error::LevelMismatch {
                left: ct.level,
                right: pt.level,
            });
        }
        Ok(())
    }

    fn make(&self, level: usize, scale: f64, polys: Vec<Poly<Ntt>>) -> Ciphertext {
        Ciphertext {
            params_id: self.params.id(),
            level,
            scale,
            polys,
            seed: None,
        }
    }

    /// `a + b` (same level and scale).
    pub fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let mut out = a.clone();
        self.add_assign(&mut out, b)?;
        Ok(out)
    }

    /// `a += b`.
    pub fn add_assign(&self, a: &mut Ciphertext, b: &Ciphertext) -> Result<()> {
        self.combine_assign(a, b, false)
    }

    /// `a - b` (same level and scale).
    pub fn sub(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let mut out = a.clone();
        self.combine_assign(&mut out, b, true)?;
        Ok(out)
    }

    /// `a += b` or `a -= b` (same level and scale); a shorter ciphertext is padded with
    /// zero polynomials.
    fn combine_assign(&self, a: &mut Ciphertext, b: &Ciphertext, subtract: bool) -> Result<()> {
        self.check_same(a, b)?;
        let q = self.params.context().q_at(a.level);
        crate::rlwe::ops::combine_polys(&mut a.polys, &b.polys, q, self.params.degree(), subtract);
        a.seed = None;
        Ok(())
    }

    /// `-a`.
    pub fn neg(&self, a: &Ciphertext) -> Result<Ciphertext> {
        self.check(a)?;
        let q = self.q(a.level);
        let mut out = a.clone();
        crate::rlwe::ops::neg_polys(&mut out.polys, q);
        out.seed = None;
        Ok(out)
    }

    /// `ct + pt` (same level and scale).
    pub fn add_plain(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        self.check(ct)?;
        self.check_pt(ct, pt)?;
        if !scales_match(ct.scale, pt.scale) {
            return Err(Error::ScaleMismatch {
                left: ct.scale,
                right: pt.scale,
            });
        }
        let mut out = ct.clone();
        out.polys[0].add_assign(&pt.poly, self.q(ct.level));
        out.seed = None;
        Ok(out)
    }

    /// `ct * pt`: the scales multiply.
    pub fn mul_plain(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        self.check(ct)?;
        self.check_pt(ct, pt)?;
        let q = self.q(ct.level);
        let n = self.params.degree();
        let polys = ct
            .polys
            .iter()
            .map(|c| {
                let mut out = Poly::<Ntt>::zero(n, q.len());
                out.mul_accumulate(c, &pt.poly, q);
                out
            })
            .collect();
        Ok(self.make(ct.level, ct.scale * pt.scale, polys))
    }

    /// `acc += ct * pt` (vectorized multiply-accumulate, for linear maps). `acc` must have
    /// the level of `ct` and the scale `ct.scale * pt.scale`.
    pub fn mul_plain_accumulate(
        &self,
        acc: &mut Ciphertext,
        ct: &Ciphertext,
        pt: &Plaintext,
    ) -> Result<()> {
        self.check(ct)?;
        self.check(acc)?;
        self.check_pt(ct, pt)?;
        if acc.level != ct.level {
            return Err(Error::LevelMismatch {
                left: acc.level,
                right: ct.level,
            });
        }
        let s = ct.scale * pt.scale;
        if !scales_match(acc.scale, s) {
            return Err(Error::ScaleMismatch {
                left: acc.scale,
                right: s,
            });
        }
        if acc.polys.len() != ct.polys.len() {
            return Err(Error::CiphertextSize {
                found: ct.polys.len(),
                expected: acc.polys.len(),
            });
        }
        let q = self.q(ct.level);
        for (a, c) in acc.polys.iter_mut().zip(&ct.polys) {
            a.mul_accumulate(c, &pt.poly, q);
        }
        acc.seed = None;
        Ok(())
    }

    /// Residues of `round(c)` for a real `c`, with `|c| < 2^120`.
    fn constant_residues(&self, c: f64, level: usize) -> Result<Vec<u64>> {
        if !c.is_finite() || c.abs() >= 2f64.powi(120) {
            return Err(Error::EncodingOverflow {
                value: c,
                scale: 1.0,
                max_log2: 120,
            });
        }
        let v = c.round() as i128;
        Ok(self
            .q(level)
            .primes()
            .iter()
            .map(|p| {
                let m = p.modulus;
                let r = m.reduce_u128(v.unsigned_abs());
                if v < 0 {
                    m.neg(r)
                } else {
                    r
                }
            })
            .collect())
    }

    /// Adds the real constant `c` to every slot.
    pub fn add_const(&self, ct: &Ciphertext, c: f64) -> Result<Ciphertext> {
        self.check(ct)?;
        let res = self.constant_residues(c * ct.scale, ct.level)?;
        let mut out = ct.clone();
        // A constant polynomial is constant in the NTT domain too.
        for ((limb, &r), p) in out.polys[0]
            .limbs_mut()
            .zip(&res)
            .zip(self.q(ct.level).primes())
        {
            for x in limb.iter_mut() {
                *x = p.modulus.add(*x, r);
            }
        }
        out.seed = None;
        Ok(out)
    }

    /// Multiplies every slot by the real constant `c`, encoded as `round(c * const_scale)`:
    /// the scale of the result is `scale * const_scale`.
    pub fn mul_const(&self, ct: &Ciphertext, c: f64, const_scale: f64) -> Result<Ciphertext> {
        self.check(ct)?;
        let res = self.constant_residues(c * const_scale, ct.level)?;
        let q = self.q(ct.level);
        let mut out = ct.clone();
        for x in &mut out.polys {
            x.mul_scalar_assign(&res, q);
        }
        out.scale = ct.scale * const_scale;
        out.seed = None;
        Ok(out)
    }

    /// Multiplies by `c` and rescales, keeping the scale exactly (the constant is encoded at
    /// the scale of the prime that the rescaling drops). Consumes one level.
    pub fn mul_const_rescale(&self, ct: &Ciphertext, c: f64) -> Result<Ciphertext> {
        if ct.level == 0 {
            return Err(Error::NotEnoughLevels {
                needed: 1,
                available: 0,
            });
        }
        let q_l = self.params.prime(ct.level) as f64;
        self.rescale(&self.mul_const(ct, c, q_l)?)
    }

    /// Multiplies by an integer (the scale is unchanged, no level consumed).
    pub fn mul_int(&self, ct: &Ciphertext, k: i64) -> Result<Ciphertext> {
        let s = ct.scale;
        let mut out = self.mul_const(ct, k as f64, 1.0)?;
        out.scale = s;
        Ok(out)
    }

    /// `a * b` without relinearization (3 polynomials); the scales multiply.
    pub fn mul(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        self.check(a)?;
        self.check(b)?;
        if a.level != b.level {
            return Err(Error::LevelMismatch {
                left: a.level,
                right: b.level,
            });
        }
        Self::check_size(a, 2)?;
        Self::check_size(b, 2)?;
        let q = self.q(a.level);
        let n = self.params.degree();
        let mut d0 = Poly::<Ntt>::zero(n, q.len());
        d0.mul_accumulate(&a.polys[0], &b.polys[0], q);
        let mut d1 = Poly::<Ntt>::zero(n, q.len());
        d1.mul_accumulate(&a.polys[0], &b.polys[1], q);
        d1.mul_accumulate(&a.polys[1], &b.polys[0], q);
        let mut d2 = Poly::<Ntt>::zero(n, q.len());
        d2.mul_accumulate(&a.polys[1], &b.polys[1], q);
        Ok(self.make(a.level, a.scale * b.scale, vec![d0, d1, d2]))
    }

    /// Relinearizes a 3-polynomial ciphertext.
    pub fn relinearize(&self, ct: &Ciphertext, rlk: &RelinKey) -> Result<Ciphertext> {
        self.check(ct)?;
        check_params(self.params.context().id(), rlk.ksk.ctx_id)?;
        if ct.polys.len() == 2 {
            return Ok(ct.clone());
        }
        Self::check_size(ct, 3)?;
        let q = self.q(ct.level);
        let c2 = ct.polys[2].clone().into_coeff(q);
        let (c0, c1) = ops::relinearize(
            self.params.context(),
            ct.level,
            ct.polys[0].clone(),
            ct.polys[1].clone(),
            &c2,
            Some(&ct.polys[2]),
            &rlk.ksk,
        );
        Ok(self.make(ct.level, ct.scale, vec![c0, c1]))
    }

    /// `a * b` then relinearization.
    pub fn mul_relin(&self, a: &Ciphertext, b: &Ciphertext, rlk: &RelinKey) -> Result<Ciphertext> {
        self.relinearize(&self.mul(a, b)?, rlk)
    }

    /// Divides by the last prime: one level down, scale divided by that prime.
    pub fn rescale(&self, ct: &Ciphertext) -> Result<Ciphertext> {
        self.check(ct)?;
        if ct.level == 0 {
            return Err(Error::NotEnoughLevels {
                needed: 1,
                available: 0,
            });
        }
        let q_l = self.params.prime(ct.level) as f64;
        let polys = ct
            .polys
            .iter()
            .map(|p| ops::divide_by_last_prime(self.params.context(), ct.level, p))
            .collect();
        Ok(self.make(ct.level - 1, ct.scale / q_l, polys))
    }

    /// Drops primes down to `level` without changing the scale.
    pub fn drop_to_level(&self, ct: &Ciphertext, level: usize) -> Result<Ciphertext> {
        self.check(ct)?;
        if level > ct.level {
            return Err(Error::LevelOutOfRange {
                level,
                max: ct.level,
            });
        }
        if level == ct.level {
            return Ok(ct.clone());
        }
        let polys = ct.polys.iter().map(|p| p.truncated(level + 1)).collect();
        Ok(self.make(level, ct.scale, polys))
    }

    /// Brings two ciphertexts to the lower of their levels.
    pub fn align_levels(&self, a: &Ciphertext, b: &Ciphertext) -> Result<(Ciphertext, Ciphertext)> {
        let l = a.level.min(b.level);
        Ok((self.drop_to_level(a, l)?, self.drop_to_level(b, l)?))
    }

    /// The Galois element that rotates the slots left by `step` (negative: right).
    pub fn galois_element(&self, step: i64) -> usize {
        let slots = self.params.slots() as i64;
        let s = step.rem_euclid(slots) as u64;
        let two_n = 2 * self.params.degree() as u64;
        let mut g = 1u64;
        let mut base = 5u64;
        let mut e = s;
        while e > 0 {
            if e & 1 == 1 {
                g = g * base % two_n;
            }
            base = base * base % two_n;
            e >>= 1;
        }
        g as usize
    }

    /// The Galois element of complex conjugation.
    pub fn galois_element_conjugate(&self) -> usize {
        2 * self.params.degree() - 1
    }

    /// Galois elements of the power-of-two rotations (enough to compose any step).
    pub fn galois_elements_power_of_two(&self) -> Vec<usize> {
        let slots = self.params.slots();
        (0..slots.trailing_zeros())
            .map(|i| self.galois_element(1 << i))
            .collect()
    }

    fn apply_galois(&self, ct: &Ciphertext, g: usize, keys: &GaloisKeys) -> Result<Ciphertext> {
        self.check(ct)?;
        Self::check_size(ct, 2)?;
        check_params(self.params.context().id(), keys.ctx_id)?;
        let key = keys.get(g)?;
        let (d0, d1) = ops::apply_galois(
            self.params.context(),
            ct.level,
            &ct.polys[0],
            &ct.polys[1],
            g,
            key,
        );
        Ok(self.make(ct.level, ct.scale, vec![d0, d1]))
    }

    /// Rotates the slots left by `step` (negative: right), with the step's own key or, if
    /// there is none, by composing the keys of power-of-two steps.
    pub fn rotate(&self, ct: &Ciphertext, step: i64, keys: &GaloisKeys) -> Result<Ciphertext> {
        let g = self.galois_element(step);
        if g == 1 {
            self.check(ct)?;
            return Ok(ct.clone());
        }
        if keys.get(g).is_ok() {
            return self.apply_galois(ct, g, keys);
        }
        let s = step.rem_euclid(self.params.slots() as i64);
        let mut out = ct.clone();
        for b in 0..63 {
            if (s >> b) & 1 == 1 {
                out = self.apply_galois(&out, self.galois_element(1 << b), keys)?;
            }
        }
        Ok(out)
    }

    /// Complex conjugation of every slot.
    pub fn conjugate(&self, ct: &Ciphertext, keys: &GaloisKeys) -> Result<Ciphertext> {
        self.apply_galois(ct, self.galois_element_conjugate(), keys)
    }

    /// Rotations of one ciphertext by many steps, sharing one key-switching decomposition
    /// (hoisting). Every step needs its own key.
    pub fn rotate_hoisted(
        &self,
        ct: &Ciphertext,
        steps: &[i64],
        keys: &GaloisKeys,
    ) -> Result<Vec<Ciphertext>> {
        self.check(ct)?;
        Self::check_size(ct, 2)?;
        let ctx = self.params.context();
        let mut decomposition = None;
        steps
            .iter()
            .map(|&s| {
                let g = self.galois_element(s);
                if g == 1 {
                    return Ok(ct.clone());
                }
                let key = keys.get(g)?;
                let d = decomposition
                    .get_or_insert_with(|| Decomposition::new(ctx, ct.level, &ct.polys[1]));
                let (d0, d1) = d.apply_galois(ctx, &ct.polys[0], g, key);
                Ok(self.make(ct.level, ct.scale, vec![d0, d1]))
            })
            .collect()
    }

    /// Sums slots `i, i+1, ..., i+n-1` (cyclically) into slot `i`, for a power of two `n`:
    /// `log2 n` rotations.
    pub fn inner_sum(&self, ct: &Ciphertext, n: usize, keys: &GaloisKeys) -> Result<Ciphertext> {
        let mut acc = ct.clone();
        let mut step = 1;
        while step < n {
            let r = self.rotate(&acc, step as i64, keys)?;
            self.add_assign(&mut acc, &r)?;
            step *= 2;
        }
        Ok(acc)
    }

    /// A bound on the canonical-embedding norm (in coefficient units, at the scale of the
    /// result) of the rounding error of a rescaling, `sqrt(N/3) (3 + 8 sqrt(N))`: the
    /// high-probability bound of Cheon, Kim, Kim and Song (2017, Lemma 2) with every
    /// coefficient of the ternary secret non-zero (the worst case for that bound).
    pub fn rescale_noise_bound(&self) -> f64 {
        let n = self.params.degree() as f64;
        (n / 3.0).sqrt() * (3.0 + 8.0 * n.sqrt())
    }

    /// A bound (same analysis, same units) on the noise a key switching (relinearization or
    /// rotation) adds at `level`: `digits * max q_i * 8 sigma N / sqrt(3) / P` (one digit
    /// per ciphertext prime, error sigma = sqrt(21/2) for the centered binomial), plus the
    /// rounding of the division by `P` ([`Self::rescale_noise_bound`]).
    pub fn keyswitch_noise_bound(&self, level: usize) -> f64 {
        let ctx = self.params.context();
        let n = self.params.degree() as f64;
        let sigma = (21.0f64 / 2.0).sqrt();
        let q = ctx.q_at(level);
        let digits = q.len() as f64;
        let max_q = q
            .primes()
            .iter()
            .map(|p| p.modulus.value() as f64)
            .fold(0.0, f64::max);
        let p_log2 = ctx.p().log2_product();
        digits * max_q * 8.0 * sigma * n / 3f64.sqrt() / p_log2.exp2() + self.rescale_noise_bound()
    }

    /// Noise flooding: adds to `ct` a fresh noise uniform in `[-2^log2_bound,
    /// 2^log2_bound]` per coefficient (from `rng`, a CSPRNG), so that a decrypting party
    /// learns nothing more, up to a statistical distance of `|noise| / 2^log2_bound` per
    /// coefficient, about how the noise of `ct` was produced (e.g. about a server's
    /// plaintext operands). The message gains an error of about
    /// `2^log2_bound sqrt(N / 3) / scale` per slot. Fails with
    /// [`Error::InvalidParameters`] if the flooding does not fit below `Q_level / 4`.
    pub fn flood<R: rand::RngCore + rand::CryptoRng + ?Sized>(
        &self,
        ct: &Ciphertext,
        log2_bound: u32,
        rng: &mut R,
    ) -> Result<Ciphertext> {
        self.check(ct)?;
        let q = self.q(ct.level);
        let room = q.log2_product() - 2.0;
        let noise = ops::flood_poly(self.params.degree(), q, (room, ct.level), log2_bound, rng)?;
        let mut out = ct.clone();
        out.polys[0].add_assign(&noise, q);
        out.seed = None;
        Ok(out)
    }

    /// Multiplicative depth of [`Self::eval_poly`] for a polynomial of degree `d`:
    /// `ceil(log2(d + 1))`.
    pub fn poly_depth(degree: usize) -> usize {
        (usize::BITS - degree.leading_zeros()) as usize
    }

    /// Evaluates `sum_i coeffs[i] x^i` with the optimal depth `ceil(log2(degree + 1))`: the
    /// polynomial splits as `q(x) x^(2^k) + r(x)` recursively, the powers `x^(2^k)` come from
    /// repeated squaring, and every intermediate result is produced directly at the scale
    /// its consumer needs, so the output has the input's scale exactly.
    pub fn eval_poly(&self, ct: &Ciphertext, coeffs: &[f64], rlk: &RelinKey) -> Result<Ciphertext> {
        self.check(ct)?;
        let mut coeffs = coeffs.to_vec();
        while coeffs.len() > 1 && coeffs.last() == Some(&0.0) {
            coeffs.pop();
        }
        let degree = coeffs.len().saturating_sub(1);
        if degree == 0 {
            // A constant: 0 * x + c.
            let c = coeffs.first().copied().unwrap_or(0.0);
            let zero = self.mul_int(ct, 0)?;
            return self.add_const(&zero, c);
        }
        let depth = Self::poly_depth(degree);
        if depth > ct.level {
            return Err(Error::NotEnoughLevels {
                needed: depth,
                available: ct.level,
            });
        }
        // Powers x^(2^k) for 2^k <= degree.
        let mut powers = vec![self.relinearize(ct, rlk)?];
        while (1usize << powers.len()) <= degree {
            let last = powers.last().expect("non-empty");
            let sq = self.rescale(&self.mul_relin(last, last, rlk)?)?;
            powers.push(sq);
        }
        let target_level = ct.level - depth;
        self.eval_rec(&coeffs, &powers, ct.scale, target_level, rlk)
    }

    /// `sum coeffs[i] x^i` at exactly `scale` and `level`; `coeffs` has degree >= 1.
    fn eval_rec(
        &self,
        coeffs: &[f64],
        powers: &[Ciphertext],
        scale: f64,
        level: usize,
        rlk: &RelinKey,
    ) -> Result<Ciphertext> {
        let degree = coeffs.len() - 1;
        let k = (usize::BITS - 1 - degree.leading_zeros()) as usize; // 2^k <= degree
        let pw = self.drop_to_level(&powers[k], level + 1)?;
        let q_next = self.params.prime(level + 1) as f64;
        let (low, high) = coeffs.split_at(1 << k);
        // high part: q(x) * x^(2^k)
        let mut term = if high.len() == 1 {
            // A constant q: multiply the power by it at the scale that rescaling turns into
            // `scale`.
            self.rescale(&self.mul_const(&pw, high[0], scale * q_next / pw.scale)?)?
        } else {
            let qx = self.eval_rec(high, powers, scale * q_next / pw.scale, level + 1, rlk)?;
            self.rescale(&self.mul_relin(&qx, &pw, rlk)?)?
        };
        // The scale is `scale` up to floating-point rounding: make it exact.
        term.scale = scale;
        // low part: r(x)
        let low_degree = low.iter().rposition(|&c| c != 0.0).unwrap_or(0);
        if low_degree >= 1 {
            let r = self.eval_rec(&low[..=low_degree], powers, scale, level, rlk)?;
            self.add_assign(&mut term, &r)?;
        } else if low[0] != 0.0 {
            term = self.add_const(&term, low[0])?;
        }
        Ok(term)
    }
}
