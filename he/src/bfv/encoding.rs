//! BFV plaintexts and encoders: SIMD batching (a `2 x N/2` matrix of slots modulo a prime
//! `t = 1 mod 2N`) and coefficient encoding (any `t`, including powers of two).

use std::sync::Arc;

use zeroize::Zeroize;

use super::params::BfvParameters;
use crate::error::{check_params, Error, Result};
use crate::math::{Ntt, Poly};

/// A BFV plaintext: a polynomial with coefficients modulo `t`. Zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Plaintext {
    pub(crate) params_id: u64,
    pub(crate) coeffs: Vec<u64>,
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plaintext")
            .field("params_id", &self.params_id)
            .field("degree", &self.coeffs.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Plaintext {
    fn drop(&mut self) {
        self.coeffs.zeroize();
    }
}

impl Plaintext {
    /// The coefficients, in `[0, t)` (any `u64` for `t = 2^64`).
    pub fn coefficients(&self) -> &[u64] {
        &self.coeffs
    }

    /// The id of the parameters this plaintext belongs to.
    pub fn params_id(&self) -> u64 {
        self.params_id
    }
}

/// A plaintext lifted to the ciphertext modulus at one level and transformed to NTT form,
/// ready for repeated [`super::Evaluator::mul_plain_prepared`] (e.g. model weights).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedPlaintext {
    pub(crate) params_id: u64,
    pub(crate) level: usize,
    /// `N * pt` in NTT form: the factor `N` cancels the `1/N` that the vectorized product
    /// ([`crate::math::NttOperator::mul_assign_scaled`]) applies.
    pub(crate) poly: Poly<Ntt>,
}

impl PreparedPlaintext {
    /// The level it was prepared for.
    pub fn level(&self) -> usize {
        self.level
    }
}

/// Encodes and decodes BFV plaintexts. Immutable, `Send + Sync`.
///
/// ```
/// use cipherml_he::bfv::{BfvParameters, BfvParametersLiteral, Encoder};
/// let params = BfvParameters::new(&BfvParametersLiteral::n4096()).unwrap();
/// let enc = Encoder::new(&params);
/// let pt = enc.encode_i64(&[1, -2, 3]).unwrap();
/// assert_eq!(&enc.decode_i64(&pt).unwrap()[..4], &[1, -2, 3, 0]);
/// ```
#[derive(Debug, Clone)]
pub struct Encoder {
    params: Arc<BfvParameters>,
}

impl Encoder {
    /// An encoder for `params`.
    pub fn new(params: &Arc<BfvParameters>) -> Self {
        Self {
            params: params.clone(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &Arc<BfvParameters> {
        &self.params
    }

    /// Number of slots (`N`) for batching, coefficients for coefficient encoding.
    pub fn capacity(&self) -> usize {
        self.params.degree()
    }

    fn reduce_signed(&self, values: &[i64]) -> Result<Vec<u64>> {
        let t = self.params.t();
        let half = (t.value() / 2) as i128;
        // Every i64 is in range for t = 2^64 (and the bound below holds for it too).
        values
            .iter()
            .map(|&v| {
                let v128 = v as i128;
                if v128 > half || v128 < -half {
                    Err(Error::ValueOutOfRange {
                        value: v128,
                        modulus: t.value(),
                    })
                } else {
                    Ok(t.reduce_i64(v))
                }
            })
            .collect()
    }

    fn check_unsigned(&self, values: &[u64]) -> Result<()> {
        let tv = self.params.plaintext_modulus();
        match values.iter().find(|&&v| v as u128 >= tv) {
            Some(&v) => Err(Error::ValueOutOfRange {
                value: v as i128,
                modulus: tv,
            }),
            None => Ok(()),
        }
    }

    fn check_len(&self, len: usize) -> Result<()> {
        if len > self.capacity() {
            Err(Error::TooManyValues {
                given: len,
                capacity: self.capacity(),
            })
        } else {
            Ok(())
        }
    }

    /// Batch-encodes values in `[0, t)` into the slots (row 0 is slots `0..N/2`, row 1 the
    /// rest); missing slots are zero.
    pub fn encode_u64(&self, values: &[u64]) -> Result<Plaintext> {
        self.check_len(values.len())?;
        self.check_unsigned(values)?;
        self.batch(values)
    }

    /// Batch-encodes signed values in `[-t/2, t/2]`.
    pub fn encode_i64(&self, values: &[i64]) -> Result<Plaintext> {
        self.check_len(values.len())?;
        let v = self.reduce_signed(values)?;
        self.batch(&v)
    }

    fn batch(&self, values: &[u64]) -> Result<Plaintext> {
        let p = &self.params;
        let op = p.t_ntt().ok_or(Error::BatchingUnavailable {
            t: p.plaintext_modulus(),
            two_n: 2 * p.degree(),
        })?;
        let mut slots = vec![0u64; p.degree()];
        for (i, &v) in values.iter().enumerate() {
            slots[p.slot_index[i]] = v;
        }
        op.backward(&mut slots);
        Ok(Plaintext {
            params_id: p.id(),
            coeffs: slots,
        })
    }

    /// Decodes the slots, in `[0, t)`.
    pub fn decode_u64(&self, pt: &Plaintext) -> Result<Vec<u64>> {
        let p = &self.params;
        self.check_params(pt)?;
        let op = p.t_ntt().ok_or(Error::BatchingUnavailable {
            t: p.plaintext_modulus(),
            two_n: 2 * p.degree(),
        })?;
        let mut v = pt.coeffs.clone();
        op.forward(&mut v);
        Ok(p.slot_index.iter().map(|&i| v[i]).collect())
    }

    /// Decodes the slots as signed values in `(-t/2, t/2]`.
    pub fn decode_i64(&self, pt: &Plaintext) -> Result<Vec<i64>> {
        let t = self.params.t();
        Ok(self
            .decode_u64(pt)?
            .into_iter()
            .map(|v| t.center(v))
            .collect())
    }

    /// Coefficient encoding: `values[i]` (in `[0, t)`; any `u64` for `t = 2^64`) becomes
    /// the coefficient of `X^i`.
    pub fn encode_coeffs_u64(&self, values: &[u64]) -> Result<Plaintext> {
        self.check_len(values.len())?;
        self.check_unsigned(values)?;
        let mut coeffs = values.to_vec();
        coeffs.resize(self.capacity(), 0);
        Ok(Plaintext {
            params_id: self.params.id(),
            coeffs,
        })
    }

    /// Coefficient encoding of signed values in `[-t/2, t/2]` (any `i64` for `t = 2^64`:
    /// a negative `v` becomes `v + 2^64`).
    pub fn encode_coeffs_i64(&self, values: &[i64]) -> Result<Plaintext> {
        self.check_len(values.len())?;
        let mut coeffs = self.reduce_signed(values)?;
        coeffs.resize(self.capacity(), 0);
        Ok(Plaintext {
            params_id: self.params.id(),
            coeffs,
        })
    }

    /// The coefficients of a plaintext, signed in `(-t/2, t/2]` (for `t = 2^64`: in
    /// `[-2^63, 2^63)`, the `i64` of the same bits).
    pub fn decode_coeffs_i64(&self, pt: &Plaintext) -> Result<Vec<i64>> {
        self.check_params(pt)?;
        let t = self.params.t();
        Ok(pt.coeffs.iter().map(|&v| t.center(v)).collect())
    }

    /// Lifts `pt` (centered, as [`Encoder::decode_coeffs_i64`]: for `t = 2^64` a
    /// coefficient `c >= 2^63` is `c - 2^64`) to the ciphertext modulus at `level`, in NTT
    /// form.
    pub fn prepare(&self, pt: &Plaintext, level: usize) -> Result<PreparedPlaintext> {
        self.check_params(pt)?;
        self.params.context().check_level(level)?;
        let t = self.params.t();
        let signed: Vec<i64> = pt.coeffs.iter().map(|&v| t.center(v)).collect();
        let q = self.params.context().q_at(level);
        let mut poly = Poly::from_signed(&signed, q).into_ntt(q);
        let n_mod: Vec<u64> = q
            .primes()
            .iter()
            .map(|p| p.modulus.reduce(self.params.degree() as u64))
            .collect();
        poly.mul_scalar_assign(&n_mod, q);
        Ok(PreparedPlaintext {
            params_id: self.params.id(),
            level,
            poly,
        })
    }

    fn check_params(&self, pt: &Plaintext) -> Result<()> {
        check_params(self.params.id(), pt.params_id)?;
        Ok(())
    }
}
