//! Homomorphic operations on BFV ciphertexts: additions, plaintext products, the HPS RNS
//! multiplication, relinearization, rotations, inner sums and modulus switching.

use std::sync::Arc;

use rayon::prelude::*;

use super::ciphertext::{scaled_message, Ciphertext};
use super::encoding::{Encoder, Plaintext, PreparedPlaintext};
use super::params::{BfvLevel, BfvParameters};
use crate::error::{check_params, Error, Result};
use crate::math::{pool, Coeff, Ntt, Poly, RnsBasis};
use crate::rlwe::{ops, GaloisKeys, RelinKey};

/// Evaluates operations on BFV ciphertexts. Holds no key and no mutable state: it takes
/// `&self`, is `Send + Sync`, and can be shared across threads.
///
/// ```
/// use cipherml_he::bfv::*;
/// use cipherml_he::rlwe::{PublicKey, RelinKey, SecretKey};
/// let params = BfvParameters::new(&BfvParametersLiteral::n4096()).unwrap();
/// let mut rng = rand::rng();
/// let sk = std::sync::Arc::new(SecretKey::random(params.context(), &mut rng));
/// let pk = PublicKey::new(&sk, &mut rng);
/// let rlk = RelinKey::new(&sk, &mut rng);
/// let (enc, dec) = (Encoder::new(&params), Decryptor::new(&params, sk).unwrap());
/// let encryptor = Encryptor::new(&params, pk).unwrap();
/// let ev = Evaluator::new(&params);
/// let a = encryptor.encrypt(&enc.encode_i64(&[3, -4]).unwrap(), &mut rng).unwrap();
/// let b = encryptor.encrypt(&enc.encode_i64(&[5, 6]).unwrap(), &mut rng).unwrap();
/// let c = ev.mul_relin(&a, &b, &rlk).unwrap();
/// assert_eq!(&enc.decode_i64(&dec.decrypt(&c).unwrap()).unwrap()[..2], &[15, -24]);
/// ```
#[derive(Debug, Clone)]
pub struct Evaluator {
    params: Arc<BfvParameters>,
}

impl Evaluator {
    /// An evaluator for `params`.
    pub fn new(params: &Arc<BfvParameters>) -> Self {
        Self {
            params: params.clone(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &Arc<BfvParameters> {
        &self.params
    }

    fn q(&self, level: usize) -> &RnsBasis {
        self.params.context().q_at(level)
    }

    fn check(&self, ct: &Ciphertext) -> Result<()> {
        check_params(self.params.id(), ct.params_id)?;
        Ok(())
    }

    fn check_pair(&self, a: &Ciphertext, b: &Ciphertext) -> Result<()> {
        self.check(a)?;
        self.check(b)?;
        if a.level != b.level {
            return Err(Error::LevelMismatch {
                left: a.level,
                right: b.level,
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

    /// `a + b`.
    pub fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let mut out = a.clone();
        self.add_assign(&mut out, b)?;
        Ok(out)
    }

    /// `a += b`.
    pub fn add_assign(&self, a: &mut Ciphertext, b: &Ciphertext) -> Result<()> {
        self.combine_assign(a, b, false)
    }

    /// `a - b`.
    pub fn sub(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let mut out = a.clone();
        self.sub_assign(&mut out, b)?;
        Ok(out)
    }

    /// `a -= b`.
    pub fn sub_assign(&self, a: &mut Ciphertext, b: &Ciphertext) -> Result<()> {
        self.combine_assign(a, b, true)
    }

    /// `a += b` or `a -= b`; a shorter ciphertext is padded with zero polynomials.
    fn combine_assign(&self, a: &mut Ciphertext, b: &Ciphertext, subtract: bool) -> Result<()> {
        self.check_pair(a, b)?;
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

    fn check_pt(&self, pt: &Plaintext) -> Result<()> {
        check_params(self.params.id(), pt.params_id)?;
        Ok(())
    }

    /// `ct + pt`.
    pub fn add_plain(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        self.check(ct)?;
        self.check_pt(pt)?;
        let q = self.q(ct.level);
        let dm = scaled_message(&self.params, pt, ct.level).into_ntt(q);
        let mut out = ct.clone();
        out.polys[0].add_assign(&dm, q);
        out.seed = None;
        Ok(out)
    }

    /// `ct - pt`.
    pub fn sub_plain(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        self.check(ct)?;
        self.check_pt(pt)?;
        let q = self.q(ct.level);
        let dm = scaled_message(&self.params, pt, ct.level).into_ntt(q);
        let mut out = ct.clone();
        out.polys[0].sub_assign(&dm, q);
        out.seed = None;
        Ok(out)
    }

    /// `ct * pt` (the plaintext is lifted centered; prepare it once with
    /// [`Encoder::prepare`] when it is used many times).
    pub fn mul_plain(&self, ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
        self.check(ct)?;
        let prepared = Encoder::new(&self.params).prepare(pt, ct.level)?;
        self.mul_plain_prepared(ct, &prepared)
    }

    /// `ct * pt` with a plaintext already in NTT form at the ciphertext's level.
    pub fn mul_plain_prepared(
        &self,
        ct: &Ciphertext,
        pt: &PreparedPlaintext,
    ) -> Result<Ciphertext> {
        self.check(ct)?;
        check_params(self.params.id(), pt.params_id)?;
        if pt.level != ct.level {
            return Err(Error::LevelMismatch {
                left: ct.level,
                right: pt.level,
            });
        }
        let q = self.q(ct.level);
        let mut out = ct.clone();
        for x in &mut out.polys {
            for ((limb, w), pr) in x.limbs_mut().zip(pt.poly.limbs()).zip(q.primes()) {
                pr.ntt.mul_assign_scaled(limb, w);
            }
        }
        out.seed = None;
        Ok(out)
    }

    /// The residues modulo the primes of `level` of `c` reduced modulo `t` and centered:
    /// the integer a scalar product lifts `c` to.
    fn scalar_residues(&self, c: i64, level: usize) -> Vec<u64> {
        let t = self.params.t();
        let cs = t.center(t.reduce_i64(c));
        self.q(level)
            .primes()
            .iter()
            .map(|p| p.modulus.reduce_i64(cs))
            .collect()
    }

    /// `ct * c` for an integer scalar `c` (reduced modulo `t`).
    pub fn mul_scalar(&self, ct: &Ciphertext, c: i64) -> Result<Ciphertext> {
        self.check(ct)?;
        let q = self.q(ct.level);
        let res = self.scalar_residues(c, ct.level);
        let mut out = ct.clone();
        for x in &mut out.polys {
            x.mul_scalar_assign(&res, q);
        }
        out.seed = None;
        Ok(out)
    }

    /// `acc += ct * c` for an integer scalar `c` (reduced modulo `t`, centered, as
    /// [`Evaluator::mul_scalar`]), without a temporary: with ciphertexts already multiplied
    /// by monomials `X^e` ([`Evaluator::mul_plain_prepared`]), products by plaintexts of a
    /// few nonzero coefficients are sums of these, with no plaintext encoded or
    /// transformed per product.
    ///
    /// ```
    /// use cipherml_he::bfv::*;
    /// use cipherml_he::rlwe::{PublicKey, SecretKey};
    /// let params = BfvParameters::new(&BfvParametersLiteral::n4096()).unwrap();
    /// let mut rng = rand::rng();
    /// let sk = std::sync::Arc::new(SecretKey::random(params.context(), &mut rng));
    /// let pk = PublicKey::new(&sk, &mut rng);
    /// let (enc, dec) = (Encoder::new(&params), Decryptor::new(&params, sk).unwrap());
    /// let ev = Evaluator::new(&params);
    /// let pt = enc.encode_coeffs_i64(&[5, -2]).unwrap();
    /// let ct = Encryptor::new(&params, pk).unwrap().encrypt(&pt, &mut rng).unwrap();
    /// let mut acc = ev.mul_scalar(&ct, 3).unwrap();
    /// ev.mul_scalar_add_assign(&mut acc, &ct, -7).unwrap();
    /// let got = enc.decode_coeffs_i64(&dec.decrypt(&acc).unwrap()).unwrap();
    /// assert_eq!(&got[..3], &[-20, 8, 0]);
    /// ```
    pub fn mul_scalar_add_assign(
        &self,
        acc: &mut Ciphertext,
        ct: &Ciphertext,
        c: i64,
    ) -> Result<()> {
        self.check_pair(acc, ct)?;
        Self::check_size(ct, acc.polys.len())?;
        let q = self.q(ct.level);
        let res = self.scalar_residues(c, ct.level);
        for (a, b) in acc.polys.iter_mut().zip(&ct.polys) {
            a.mul_scalar_add_assign(b, &res, q);
        }
        acc.seed = None;
        Ok(())
    }

    /// Noise flooding: adds to `ct` an independent noise uniform in `[-2^log2_bound,
    /// 2^log2_bound]` per coefficient, so that the decrypting party learns nothing (up to
    /// `2^-(log2_bound - log2 |noise|)` statistical distance) about how the noise it floods
    /// was produced, e.g. about a server's plaintext operands. Fails if the flooded noise
    /// would exceed the decryption bound `Q / (2t)`.
    pub fn flood<R: rand::RngCore + rand::CryptoRng + ?Sized>(
        &self,
        ct: &Ciphertext,
        log2_bound: u32,
        rng: &mut R,
    ) -> Result<Ciphertext> {
        self.check(ct)?;
        let q = self.q(ct.level);
        let room = q.log2_product() - (self.params.plaintext_modulus() as f64).log2() - 2.0;
        let noise = ops::flood_poly(self.params.degree(), q, (room, ct.level), log2_bound, rng)?;
        let mut out = ct.clone();
        out.polys[0].add_assign(&noise, q);
        out.seed = None;
        Ok(out)
    }

    /// Lifts `p` (NTT over `Q_l`) to `Q_l R` exactly (centered), in NTT form.
    fn extend(&self, lv: &BfvLevel, p: &Poly<Ntt>, q: &RnsBasis) -> Poly<Ntt> {
        let n = self.params.degree();
        let k = q.len();
        let m = lv.qr.len() - k;
        let coeff = p.clone().into_coeff(q);
        let mut data = pool::take((k + m) * n);
        data[..k * n].copy_from_slice(p.data());
        lv.q_to_r.convert(coeff.data(), &mut data[k * n..], n, true);
        for (limb, pr) in data[k * n..].chunks_exact_mut(n).zip(&lv.qr.primes()[k..]) {
            pr.ntt.forward(limb);
        }
        Poly::from_data(n, data)
    }

    /// `round(t x / Q)` for `x` over `Q_l R` (coefficients): returns coefficients over `Q_l`.
    fn scale_down(&self, lv: &BfvLevel, x: &Poly<Coeff>, k: usize) -> Poly<Coeff> {
        let n = self.params.degree();
        let m = lv.qr.len() - k;
        let r: Vec<_> = lv.qr.primes()[k..].iter().map(|p| p.modulus).collect();
        let y = Poly::<Coeff>::from_data(n, pool::take(m * n));
        let mut y = y;
        let yd = y.data_mut();
        let xd = x.data();
        let lambda = &lv.lambda[..k];
        let mut rnd = vec![0u64; n];
        for (c, out) in rnd.iter_mut().enumerate() {
            let mut frac: u128 = 1u128 << 63;
            for (i, &l) in lambda.iter().enumerate() {
                frac += xd[i * n + c] as u128 * l as u128;
            }
            *out = (frac >> 64) as u64;
        }
        let max_bits = lv
            .qr
            .primes()
            .iter()
            .map(|p| p.modulus.bits())
            .max()
            .unwrap_or(0);
        let wide_ok = max_bits as f64 + ((k + 2) as f64).log2() <= 63.0;
        for j in 0..m {
            let row = &lv.omega[j][..k];
            let tq = lv.t_qinv_r[j] as u128;
            let own = &xd[(k + j) * n..(k + j + 1) * n];
            let out = &mut yd[j * n..(j + 1) * n];
            for c in 0..n {
                let mut acc = rnd[c] as u128 + own[c] as u128 * tq;
                for (i, &w) in row.iter().enumerate() {
                    acc += xd[i * n + c] as u128 * w as u128;
                }
                out[c] = if wide_ok {
                    r[j].reduce_wide(acc)
                } else {
                    r[j].reduce_u128(acc)
                };
            }
        }
        let mut out = Poly::from_data(n, pool::take(k * n));
        lv.r_to_q.convert(y.data(), out.data_mut(), n, true);
        out
    }

    /// The tensor product of two 2-polynomial ciphertexts, scaled by `t/Q`: `(d0, d1)` in NTT
    /// form and `d2` in coefficient form.
    fn tensor(
        &self,
        a: &Ciphertext,
        b: &Ciphertext,
    ) -> Result<(Poly<Ntt>, Poly<Ntt>, Poly<Coeff>)> {
        self.check_pair(a, b)?;
        Self::check_size(a, 2)?;
        Self::check_size(b, 2)?;
        let level = a.level;
        let lv = &self.params.levels[level];
        let q = self.q(level);
        let k = q.len();
        let qr = &lv.qr;
        let n = self.params.degree();
        // The base extensions are independent: run them in parallel on the rayon pool.
        let square = std::ptr::eq(a, b);
        let inputs: Vec<&Poly<Ntt>> = if square {
            vec![&a.polys[0], &a.polys[1]]
        } else {
            vec![&a.polys[0], &a.polys[1], &b.polys[0], &b.polys[1]]
        };
        let mut ext: Vec<Poly<Ntt>> = inputs.par_iter().map(|p| self.extend(lv, p, q)).collect();
        let (b0, b1) = if square {
            (ext[0].clone(), ext[1].clone())
        } else {
            let b1 = ext.pop().expect("four");
            (ext.pop().expect("four"), b1)
        };
        let a1 = ext.pop().expect("two");
        let a0 = ext.pop().expect("two");
        let mut d0 = Poly::<Ntt>::zero(n, qr.len());
        d0.mul_accumulate(&a0, &b0, qr);
        let mut d1 = Poly::<Ntt>::zero(n, qr.len());
        d1.mul_accumulate(&a0, &b1, qr);
        d1.mul_accumulate(&a1, &b0, qr);
        let mut d2 = Poly::<Ntt>::zero(n, qr.len());
        d2.mul_accumulate(&a1, &b1, qr);
        let ((s0, s1), s2) = rayon::join(
            || {
                rayon::join(
                    || self.scale_down(lv, &d0.into_coeff(qr), k).into_ntt(q),
                    || self.scale_down(lv, &d1.into_coeff(qr), k).into_ntt(q),
                )
            },
            || self.scale_down(lv, &d2.into_coeff(qr), k),
        );
        Ok((s0, s1, s2))
    }

    /// `a * b` without relinearization: a 3-polynomial ciphertext.
    pub fn mul(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let (d0, d1, d2) = self.tensor(a, b)?;
        let q = self.q(a.level);
        Ok(Ciphertext {
            params_id: self.params.id(),
            level: a.level,
            polys: vec![d0, d1, d2.into_ntt(q)],
            seed: None,
        })
    }

    fn check_rlk(&self, rlk: &RelinKey) -> Result<()> {
        check_params(self.params.context().id(), rlk.ksk.ctx_id)?;
        Ok(())
    }

    /// `a * b` then relinearization: a 2-polynomial ciphertext.
    pub fn mul_relin(&self, a: &Ciphertext, b: &Ciphertext, rlk: &RelinKey) -> Result<Ciphertext> {
        self.check_rlk(rlk)?;
        let (d0, d1, d2) = self.tensor(a, b)?;
        let (d0, d1) =
            ops::relinearize(self.params.context(), a.level, d0, d1, &d2, None, &rlk.ksk);
        Ok(Ciphertext {
            params_id: self.params.id(),
            level: a.level,
            polys: vec![d0, d1],
            seed: None,
        })
    }

    /// Relinearizes a 3-polynomial ciphertext (a 2-polynomial one is returned unchanged).
    pub fn relinearize(&self, ct: &Ciphertext, rlk: &RelinKey) -> Result<Ciphertext> {
        self.check(ct)?;
        self.check_rlk(rlk)?;
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
        Ok(Ciphertext {
            params_id: self.params.id(),
            level: ct.level,
            polys: vec![c0, c1],
            seed: None,
        })
    }

    /// Applies the Galois automorphism `X -> X^g` (with its key).
    pub fn apply_galois(&self, ct: &Ciphertext, g: usize, keys: &GaloisKeys) -> Result<Ciphertext> {
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
        Ok(Ciphertext {
            params_id: self.params.id(),
            level: ct.level,
            polys: vec![d0, d1],
            seed: None,
        })
    }

    /// The Galois element that rotates both rows left by `step` (negative: right).
    pub fn galois_element_rows(&self, step: i64) -> Result<usize> {
        let n = self.params.degree();
        let half = (n / 2) as i64;
        if step.unsigned_abs() >= half as u64 {
            return Err(Error::InvalidRotation {
                step,
                max: half as usize,
            });
        }
        let s = step.rem_euclid(half) as u64;
        let two_n = 2 * n as u64;
        let mut g = 1u64;
        for _ in 0..s {
            g = g * 3 % two_n;
        }
        Ok(g as usize)
    }

    /// The Galois element that swaps the two rows.
    pub fn galois_element_swap(&self) -> usize {
        2 * self.params.degree() - 1
    }

    /// The Galois elements [`Self::inner_sum`] needs.
    pub fn galois_elements_inner_sum(&self) -> Vec<usize> {
        let half = self.params.degree() / 2;
        let mut v: Vec<usize> = (0..half.trailing_zeros())
            .map(|i| self.galois_element_rows(1 << i).expect("in range"))
            .collect();
        v.push(self.galois_element_swap());
        v
    }

    /// Rotates both rows of slots left by `step` (negative: right). Uses the key of the step
    /// when there is one, and otherwise composes the keys of power-of-two steps.
    pub fn rotate_rows(&self, ct: &Ciphertext, step: i64, keys: &GaloisKeys) -> Result<Ciphertext> {
        let g = self.galois_element_rows(step)?;
        if g == 1 {
            self.check(ct)?;
            return Ok(ct.clone());
        }
        if keys.get(g).is_ok() {
            return self.apply_galois(ct, g, keys);
        }
        let half = (self.params.degree() / 2) as i64;
        let s = step.rem_euclid(half);
        let mut out = ct.clone();
        for b in 0..63 {
            if (s >> b) & 1 == 1 {
                let gb = self.galois_element_rows(1 << b)?;
                out = self.apply_galois(&out, gb, keys)?;
            }
        }
        Ok(out)
    }

    /// Swaps the two rows of slots.
    pub fn rotate_columns(&self, ct: &Ciphertext, keys: &GaloisKeys) -> Result<Ciphertext> {
        self.apply_galois(ct, self.galois_element_swap(), keys)
    }

    /// Every slot of the result holds the sum of all slots of `ct` (mod `t`).
    pub fn inner_sum(&self, ct: &Ciphertext, keys: &GaloisKeys) -> Result<Ciphertext> {
        let half = self.params.degree() / 2;
        let mut acc = ct.clone();
        let mut step = 1;
        while step < half {
            let r = self.apply_galois(&acc, self.galois_element_rows(step as i64)?, keys)?;
            self.add_assign(&mut acc, &r)?;
            step *= 2;
        }
        let r = self.rotate_columns(&acc, keys)?;
        self.add_assign(&mut acc, &r)?;
        Ok(acc)
    }

    /// Drops the last ciphertext prime (`c -> round(c q_l^-1)`): a smaller ciphertext with
    /// the same plaintext and a budget smaller by about `log2(q_l)` minus the noise removed.
    pub fn mod_switch_to_next(&self, ct: &Ciphertext) -> Result<Ciphertext> {
        self.check(ct)?;
        let l = ct.level;
        if l == 0 {
            return Err(Error::InvalidParameters {
                reason: "cannot switch a level-0 ciphertext to a lower level".into(),
            });
        }
        let polys = ct
            .polys
            .iter()
            .map(|p| ops::divide_by_last_prime(self.params.context(), l, p))
            .collect();
        Ok(Ciphertext {
            params_id: self.params.id(),
            level: l - 1,
            polys,
            seed: None,
        })
    }

    /// Switches down to `level` (a no-op at the same level).
    pub fn mod_switch_to_level(&self, ct: &Ciphertext, level: usize) -> Result<Ciphertext> {
        self.check(ct)?;
        if level > ct.level {
            return Err(Error::LevelOutOfRange {
                level,
                max: ct.level,
            });
        }
        let mut out = ct.clone();
        while out.level > level {
            out = self.mod_switch_to_next(&out)?;
        }
        Ok(out)
    }
}
