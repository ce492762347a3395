//! The CKKS encoder: the special FFT over the canonical embedding. A vector of `N/2`
//! complex (or real) values becomes a polynomial whose evaluations at the primitive roots
//! `zeta^(5^j)` are the values times the scale.

use std::sync::Arc;

use num_complex::Complex64;
use zeroize::Zeroize;

use super::params::CkksParameters;
use crate::error::{check_params, Error, Result};
use crate::math::{Coeff, Ntt, Poly};

/// A CKKS plaintext: an encoded polynomial in NTT form at a level, with its scale.
#[derive(Clone, PartialEq)]
pub struct Plaintext {
    pub(crate) params_id: u64,
    pub(crate) level: usize,
    pub(crate) scale: f64,
    pub(crate) poly: Poly<Ntt>,
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plaintext")
            .field("level", &self.level)
            .field("scale", &self.scale)
            .finish_non_exhaustive()
    }
}

impl Drop for Plaintext {
    fn drop(&mut self) {
        self.poly.zeroize();
    }
}

impl Plaintext {
    /// The level.
    pub fn level(&self) -> usize {
        self.level
    }

    /// The scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }
}

/// Largest `log2 |value * scale|` that can be encoded (coefficients are rounded to `i128`).
pub const MAX_ENCODED_LOG2: u32 = 120;

/// Encodes and decodes CKKS plaintexts. Immutable, `Send + Sync`.
///
/// ```
/// use cipherml_he::ckks::{CkksParameters, CkksParametersLiteral, Encoder};
/// let params = CkksParameters::new(&CkksParametersLiteral::n8192()).unwrap();
/// let enc = Encoder::new(&params);
/// let pt = enc.encode_f64(&[0.5, -1.25, 3.0], params.max_level(), params.default_scale()).unwrap();
/// let back = enc.decode_f64(&pt).unwrap();
/// assert!((back[1] + 1.25).abs() < 1e-9);
/// ```
#[derive(Debug, Clone)]
pub struct Encoder {
    params: Arc<CkksParameters>,
}

impl Encoder {
    /// An encoder for `params`.
    pub fn new(params: &Arc<CkksParameters>) -> Self {
        Self {
            params: params.clone(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &Arc<CkksParameters> {
        &self.params
    }

    fn bit_reverse(v: &mut [Complex64]) {
        let n = v.len();
        let mut j = 0usize;
        for i in 1..n {
            let mut bit = n >> 1;
            while j & bit != 0 {
                j ^= bit;
                bit >>= 1;
            }
            j ^= bit;
            if i < j {
                v.swap(i, j);
            }
        }
    }

    /// Coefficient-side values to slot values (the canonical embedding).
    pub(crate) fn special_fft(&self, vals: &mut [Complex64]) {
        let p = &self.params;
        let n = vals.len();
        Self::bit_reverse(vals);
        let mut len = 2;
        let mut stage = 0;
        while len <= n {
            let lenh = len / 2;
            let tw = &p.fft_twiddles[stage];
            for block in vals.chunks_exact_mut(len) {
                let (lo, hi) = block.split_at_mut(lenh);
                for ((u, v), &w) in lo.iter_mut().zip(hi.iter_mut()).zip(tw) {
                    let a = *u;
                    let b = *v * w;
                    *u = a + b;
                    *v = a - b;
                }
            }
            len *= 2;
            stage += 1;
        }
    }

    /// Slot values to coefficient-side values (the inverse embedding).
    pub(crate) fn special_ifft(&self, vals: &mut [Complex64]) {
        let p = &self.params;
        let n = vals.len();
        let mut len = n;
        let mut stage = n.trailing_zeros() as usize;
        while len >= 2 {
            stage -= 1;
            let lenh = len / 2;
            let tw = &p.ifft_twiddles[stage];
            for block in vals.chunks_exact_mut(len) {
                let (lo, hi) = block.split_at_mut(lenh);
                for ((u, v), &w) in lo.iter_mut().zip(hi.iter_mut()).zip(tw) {
                    let a = *u + *v;
                    let b = (*u - *v) * w;
                    *u = a;
                    *v = b;
                }
            }
            len /= 2;
        }
        Self::bit_reverse(vals);
        let inv = 1.0 / n as f64;
        for v in vals.iter_mut() {
            *v *= inv;
        }
    }

    /// Encodes complex values (at most `N/2`) at `level` and `scale`.
    pub fn encode(&self, values: &[Complex64], level: usize, scale: f64) -> Result<Plaintext> {
        let p = &self.params;
        p.context().check_level(level)?;
        let slots = p.slots();
        if values.len() > slots {
            return Err(Error::TooManyValues {
                given: values.len(),
                capacity: slots,
            });
        }
        if !scale.is_finite() || scale < 1.0 {
            return Err(Error::ScaleOutOfRange {
                scale,
                reason: "must be finite and at least 1",
            });
        }
        let bound = (MAX_ENCODED_LOG2 as f64).exp2();
        for v in values {
            for x in [v.re, v.im] {
                if !x.is_finite() || (x * scale).abs() >= bound {
                    return Err(Error::EncodingOverflow {
                        value: x,
                        scale,
                        max_log2: MAX_ENCODED_LOG2,
                    });
                }
            }
        }
        let mut vals = vec![Complex64::new(0.0, 0.0); slots];
        vals[..values.len()].copy_from_slice(values);
        self.special_ifft(&mut vals);
        let mut coeffs: Vec<i128> = Vec::with_capacity(2 * slots);
        coeffs.extend(vals.iter().map(|v| (v.re * scale).round() as i128));
        coeffs.extend(vals.iter().map(|v| (v.im * scale).round() as i128));
        vals.zeroize_complex();
        let q = p.context().q_at(level);
        let mut poly = Poly::<Coeff>::zero(p.degree(), q.len());
        for (limb, pr) in poly.limbs_mut().zip(q.primes()) {
            let m = pr.modulus;
            for (x, &c) in limb.iter_mut().zip(&coeffs) {
                let r = m.reduce_u128(c.unsigned_abs());
                *x = if c < 0 { m.neg(r) } else { r };
            }
        }
        coeffs.zeroize();
        Ok(Plaintext {
            params_id: p.id(),
            level,
            scale,
            poly: poly.into_ntt(q),
        })
    }

    /// Encodes real values (at most `N/2`) at `level` and `scale`.
    pub fn encode_f64(&self, values: &[f64], level: usize, scale: f64) -> Result<Plaintext> {
        let v: Vec<Complex64> = values.iter().map(|&x| Complex64::new(x, 0.0)).collect();
        self.encode(&v, level, scale)
    }

    /// Decodes the `N/2` complex slot values of a plaintext.
    pub fn decode(&self, pt: &Plaintext) -> Result<Vec<Complex64>> {
        let p = &self.params;
        check_params(p.id(), pt.params_id)?;
        let q = p.context().q_at(pt.level);
        let coeff = pt.poly.clone().into_coeff(q);
        Ok(self.decode_coeff(&coeff, pt.level, pt.scale))
    }

    /// Decodes coefficients (over `Q_level`) at `scale`.
    pub(crate) fn decode_coeff(
        &self,
        coeff: &Poly<Coeff>,
        level: usize,
        scale: f64,
    ) -> Vec<Complex64> {
        let p = &self.params;
        let q = p.context().q_at(level);
        let n = p.degree();
        let slots = p.slots();
        let k = q.len();
        let mut res = vec![0u64; k];
        let mut scratch = Vec::with_capacity(k);
        let mut real = vec![0f64; n];
        for (c, out) in real.iter_mut().enumerate() {
            for (i, r) in res.iter_mut().enumerate() {
                *r = coeff.limb(i)[c];
            }
            *out = q.to_f64_centered(&res, &mut scratch) / scale;
        }
        let mut vals: Vec<Complex64> = (0..slots)
            .map(|j| Complex64::new(real[j], real[j + slots]))
            .collect();
        real.zeroize();
        self.special_fft(&mut vals);
        vals
    }

    /// Decodes the real parts of the slot values.
    pub fn decode_f64(&self, pt: &Plaintext) -> Result<Vec<f64>> {
        Ok(self.decode(pt)?.into_iter().map(|c| c.re).collect())
    }
}

trait ZeroizeComplex {
    fn zeroize_complex(&mut self);
}

impl ZeroizeComplex for Vec<Complex64> {
    fn zeroize_complex(&mut self) {
        for v in self.iter_mut() {
            *v = Complex64::new(0.0, 0.0);
        }
    }
}
