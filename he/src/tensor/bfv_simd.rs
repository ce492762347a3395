//! BFV tensors in the SIMD (batch) encoding: a tensor of integers modulo `t` in the slots
//! of one or more ciphertexts, with its shape.

use ndarray::{ArrayD, IxDyn};
use rand::{CryptoRng, RngCore};

use crate::bfv::{Ciphertext, Decryptor, Encoder, Encryptor, Evaluator};
use crate::error::{Error, Result};

/// An encrypted integer tensor: row-major elements in consecutive slots, `N` per
/// ciphertext.
#[derive(Debug, Clone, PartialEq)]
pub struct BfvTensor {
    /// The ciphertexts (the last one may be partly used).
    pub cts: Vec<Ciphertext>,
    shape: Vec<usize>,
}

impl BfvTensor {
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Encrypts a tensor of signed integers in `[-t/2, t/2]` (batching must be available).
    pub fn encrypt<R: RngCore + CryptoRng + ?Sized>(
        encoder: &Encoder,
        encryptor: &Encryptor,
        x: &ArrayD<i64>,
        rng: &mut R,
    ) -> Result<Self> {
        let flat: Vec<i64> = x.iter().copied().collect();
        let cts = flat
            .chunks(encoder.capacity().max(1))
            .map(|c| encryptor.encrypt(&encoder.encode_i64(c)?, rng))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cts,
            shape: x.shape().to_vec(),
        })
    }

    /// Decrypts to signed integers in `(-t/2, t/2]`.
    pub fn decrypt(&self, encoder: &Encoder, decryptor: &Decryptor) -> Result<ArrayD<i64>> {
        let mut flat = Vec::with_capacity(self.len());
        for ct in &self.cts {
            flat.extend(encoder.decode_i64(&decryptor.decrypt(ct)?)?);
        }
        flat.truncate(self.len());
        Ok(ArrayD::from_shape_vec(IxDyn(&self.shape), flat).expect("length matches"))
    }

    fn zip_with(
        &self,
        other: &Self,
        f: impl Fn(&Ciphertext, &Ciphertext) -> Result<Ciphertext>,
    ) -> Result<Self> {
        if self.shape != other.shape {
            return Err(Error::ShapeMismatch {
                what: "elementwise",
                left: self.shape.clone(),
                right: other.shape.clone(),
            });
        }
        let cts = self
            .cts
            .iter()
            .zip(&other.cts)
            .map(|(a, b)| f(a, b))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cts,
            shape: self.shape.clone(),
        })
    }

    /// Elementwise sum.
    pub fn add(&self, ev: &Evaluator, other: &Self) -> Result<Self> {
        self.zip_with(other, |a, b| ev.add(a, b))
    }

    /// Elementwise product (relinearized).
    pub fn mul(&self, ev: &Evaluator, other: &Self, rlk: &crate::rlwe::RelinKey) -> Result<Self> {
        self.zip_with(other, |a, b| ev.mul_relin(a, b, rlk))
    }

    /// Elementwise product with a plaintext tensor of the same shape.
    pub fn mul_plain(&self, ev: &Evaluator, encoder: &Encoder, w: &ArrayD<i64>) -> Result<Self> {
        if w.shape() != self.shape.as_slice() {
            return Err(Error::ShapeMismatch {
                what: "mul_plain",
                left: self.shape.clone(),
                right: w.shape().to_vec(),
            });
        }
        let flat: Vec<i64> = w.iter().copied().collect();
        let cts = self
            .cts
            .iter()
            .zip(flat.chunks(encoder.capacity().max(1)))
            .map(|(ct, c)| ev.mul_plain(ct, &encoder.encode_i64(c)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cts,
            shape: self.shape.clone(),
        })
    }
}
