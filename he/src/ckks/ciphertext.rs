//! CKKS ciphertexts, encryption (public key, or seeded secret key), re-randomization and
//! decryption: the scheme's part (level and scale) around the shared
//! [`crate::rlwe::encryptor`].

use std::sync::Arc;

use num_complex::Complex64;
use rand::{CryptoRng, RngCore};

use super::encoding::{Encoder, Plaintext};
use super::params::CkksParameters;
use crate::error::{check_params, Error, Result};
use crate::math::sampler::Seed;
use crate::math::{Coeff, Ntt, Poly};
use crate::rlwe::encryptor::{Message, RlweDecryptor, RlweEncryptor};
use crate::rlwe::{PublicKey, SecretKey};

/// A CKKS ciphertext: two (or three, before relinearization) polynomials modulo `Q_level`
/// in NTT form, with the scale of the message they encrypt.
#[derive(Debug, Clone, PartialEq)]
pub struct Ciphertext {
    pub(crate) params_id: u64,
    pub(crate) level: usize,
    pub(crate) scale: f64,
    pub(crate) polys: Vec<Poly<Ntt>>,
    pub(crate) seed: Option<Seed>,
}

impl Ciphertext {
    /// The level: the number of rescalings left.
    pub fn level(&self) -> usize {
        self.level
    }

    /// The scale of the encrypted message.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Number of polynomials (2, or 3 before relinearization).
    pub fn len(&self) -> usize {
        self.polys.len()
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        self.polys.is_empty()
    }

    /// Whether the uniform half is given by a seed (fresh symmetric encryption).
    pub fn is_seeded(&self) -> bool {
        self.seed.is_some()
    }

    /// The parameter id.
    pub fn params_id(&self) -> u64 {
        self.params_id
    }

    /// Checks a ciphertext received as a fresh input: two polynomials, at `level`, at
    /// exactly `scale` (typed errors carry the expected value on the left).
    pub fn check_fresh(&self, level: usize, scale: f64) -> Result<()> {
        if self.polys.len() != 2 {
            return Err(Error::CiphertextSize {
                found: self.polys.len(),
                expected: 2,
            });
        }
        if self.level != level {
            return Err(Error::LevelMismatch {
                left: level,
                right: self.level,
            });
        }
        if self.scale != scale {
            return Err(Error::ScaleMismatch {
                left: scale,
                right: self.scale,
            });
        }
        Ok(())
    }
}

fn check_pt(params: &CkksParameters, pt: &Plaintext) -> Result<()> {
    check_params(params.id(), pt.params_id)?;
    if pt.level != params.max_level() {
        return Err(Error::LevelMismatch {
            left: params.max_level(),
            right: pt.level,
        });
    }
    Ok(())
}

/// Public-key encryption. Immutable and `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Encryptor {
    params: Arc<CkksParameters>,
    rlwe: RlweEncryptor,
}

impl Encryptor {
    /// An encryptor with the public key `pk`.
    pub fn new(params: &Arc<CkksParameters>, pk: PublicKey) -> Result<Self> {
        Ok(Self {
            rlwe: RlweEncryptor::new(params.context(), pk)?,
            params: params.clone(),
        })
    }

    /// The parameters.
    pub fn params(&self) -> &Arc<CkksParameters> {
        &self.params
    }

    /// Encrypts a plaintext encoded at the top level.
    pub fn encrypt<R: RngCore + CryptoRng + ?Sized>(
        &self,
        pt: &Plaintext,
        rng: &mut R,
    ) -> Result<Ciphertext> {
        check_pt(&self.params, pt)?;
        let level = pt.level;
        let polys = self.rlwe.encrypt(level, Message::Ntt(&pt.poly), rng)?;
        Ok(Ciphertext {
            params_id: self.params.id(),
            level,
            scale: pt.scale,
            polys,
            seed: None,
        })
    }

    /// `ct` plus a fresh encryption of zero at its level and scale. A server that returns a
    /// computed ciphertext should re-randomize it: otherwise its second polynomial is a
    /// function of the server's operands and of the key owner's own (known) randomness,
    /// from which the key owner could solve for those operands. (This hides `c1`; the noise
    /// in `c0` still depends on the computation.)
    pub fn rerandomize<R: RngCore + CryptoRng + ?Sized>(
        &self,
        ct: &Ciphertext,
        rng: &mut R,
    ) -> Result<Ciphertext> {
        check_params(self.params.id(), ct.params_id)?;
        let mut out = ct.clone();
        self.rlwe.rerandomize(out.level, &mut out.polys, rng)?;
        out.seed = None;
        Ok(out)
    }

    /// Encodes real values at the top level and default scale, and encrypts them.
    pub fn encrypt_f64<R: RngCore + CryptoRng + ?Sized>(
        &self,
        values: &[f64],
        rng: &mut R,
    ) -> Result<Ciphertext> {
        let p = &self.params;
        let pt = Encoder::new(p).encode_f64(values, p.max_level(), p.default_scale())?;
        self.encrypt(&pt, rng)
    }
}

/// Secret-key operations: decryption and seeded symmetric encryption. `Send + Sync`.
pub struct Decryptor {
    params: Arc<CkksParameters>,
    rlwe: RlweDecryptor,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor").finish_non_exhaustive()
    }
}

impl Decryptor {
    /// A decryptor for `sk`.
    pub fn new(params: &Arc<CkksParameters>, sk: Arc<SecretKey>) -> Result<Self> {
        Ok(Self {
            rlwe: RlweDecryptor::new(params.context(), sk)?,
            params: params.clone(),
        })
    }

    /// Symmetric encryption with a seeded uniform half (about half the size on the wire).
    pub fn encrypt_symmetric<R: RngCore + CryptoRng + ?Sized>(
        &self,
        pt: &Plaintext,
        rng: &mut R,
    ) -> Result<Ciphertext> {
        check_pt(&self.params, pt)?;
        let level = pt.level;
        let (polys, seed) = self.rlwe.encrypt(level, Message::Ntt(&pt.poly), rng)?;
        Ok(Ciphertext {
            params_id: self.params.id(),
            level,
            scale: pt.scale,
            polys,
            seed: Some(seed),
        })
    }

    /// `c0 + c1 s (+ c2 s^2)` in coefficient form.
    fn phase(&self, ct: &Ciphertext) -> Result<Poly<Coeff>> {
        check_params(self.params.id(), ct.params_id)?;
        self.rlwe.phase(ct.level, &ct.polys)
    }

    /// Decrypts to a plaintext (`c0 + c1 s`, at the ciphertext's level and scale).
    pub fn decrypt(&self, ct: &Ciphertext) -> Result<Plaintext> {
        let poly = self
            .phase(ct)?
            .into_ntt(self.params.context().q_at(ct.level));
        Ok(Plaintext {
            params_id: self.params.id(),
            level: ct.level,
            scale: ct.scale,
            poly,
        })
    }

    /// Decrypts and decodes the `N/2` complex slots.
    pub fn decrypt_decode(&self, ct: &Ciphertext) -> Result<Vec<Complex64>> {
        let x = self.phase(ct)?;
        Ok(Encoder::new(&self.params).decode_coeff(&x, ct.level, ct.scale))
    }

    /// Decrypts and decodes the real parts of the slots.
    pub fn decrypt_f64(&self, ct: &Ciphertext) -> Result<Vec<f64>> {
        Ok(self.decrypt_decode(ct)?.into_iter().map(|c| c.re).collect())
    }
}
