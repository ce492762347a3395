//! BFV ciphertexts, encryption (public key, or seeded secret key) and decryption with the
//! invariant noise budget.

use std::sync::Arc;

use rand::{CryptoRng, RngCore};
use zeroize::Zeroize;

use super::encoding::Plaintext;
use super::params::BfvParameters;
use crate::error::{check_params, Error, Result};
use crate::math::sampler::{centered_binomial, Seed};
use crate::math::{Coeff, Ntt, Poly};
use crate::rlwe::ops;
use crate::rlwe::{PublicKey, SecretKey};

/// A BFV ciphertext: two (or, after a multiplication, three) polynomials modulo `Q_level`,
/// in NTT form. A freshly encrypted symmetric ciphertext remembers the seed of its uniform
/// half, so it serializes at about half size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ciphertext {
    pub(crate) params_id: u64,
    pub(crate) level: usize,
    pub(crate) polys: Vec<Poly<Ntt>>,
    pub(crate) seed: Option<Seed>,
}

impl Ciphertext {
    /// The level (number of ciphertext primes minus one).
    pub fn level(&self) -> usize {
        self.level
    }

    /// Number of polynomials (2, or 3 before relinearization).
    pub fn len(&self) -> usize {
        self.polys.len()
    }

    /// Always false: a ciphertext has at least two polynomials.
    pub fn is_empty(&self) -> bool {
        self.polys.is_empty()
    }

    /// Whether the uniform half is still given by a seed (fresh symmetric encryption).
    pub fn is_seeded(&self) -> bool {
        self.seed.is_some()
    }

    /// The id of the parameters it belongs to.
    pub fn params_id(&self) -> u64 {
        self.params_id
    }
}

/// `Delta * m` (coefficient form) over `Q_level`, `Delta = floor(Q_level / t)`, plus `extra`.
pub(crate) fn scaled_message(
    params: &BfvParameters,
    pt: &Plaintext,
    level: usize,
    extra: Option<&[i64]>,
) -> Poly<Coeff> {
    let q = params.context().q_at(level);
    let n = params.degree();
    let mut p = match extra {
        Some(e) => Poly::from_signed(e, q),
        None => Poly::zero(n, q.len()),
    };
    let lv = &params.levels[level];
    for (i, limb) in p.limbs_mut().enumerate() {
        let m = q.modulus(i);
        let (d, ds) = lv.delta[i];
        for (x, &v) in limb.iter_mut().zip(&pt.coeffs) {
            *x = m.add(*x, m.mul_shoup(v, d, ds));
        }
    }
    p
}

fn check_pt(params: &BfvParameters, pt: &Plaintext) -> Result<()> {
    check_params(params.id(), pt.params_id)?;
    Ok(())
}

/// Public-key encryption. Immutable and `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Encryptor {
    params: Arc<BfvParameters>,
    pk: PublicKey,
}

impl Encryptor {
    /// An encryptor with the public key `pk`.
    pub fn new(params: &Arc<BfvParameters>, pk: PublicKey) -> Result<Self> {
        check_params(params.context().id(), pk.ctx_id)?;
        Ok(Self {
            params: params.clone(),
            pk,
        })
    }

    /// Encrypts `pt` at the top level: `(b u + e0 + Delta m, a u + e1)`.
    pub fn encrypt<R: RngCore + CryptoRng + ?Sized>(
        &self,
        pt: &Plaintext,
        rng: &mut R,
    ) -> Result<Ciphertext> {
        check_pt(&self.params, pt)?;
        let ctx = self.params.context();
        let level = ctx.max_level();
        let mut e0 = centered_binomial(rng, ctx.degree());
        let m = scaled_message(&self.params, pt, level, Some(&e0));
        e0.zeroize();
        let polys = ops::encrypt_pk(ctx, &self.pk, m, rng);
        Ok(Ciphertext {
            params_id: self.params.id(),
            level,
            polys,
            seed: None,
        })
    }
}

/// Secret-key operations: decryption, the noise budget, and seeded symmetric encryption.
/// Holds the secret key (zeroized when dropped). `Send + Sync`.
pub struct Decryptor {
    params: Arc<BfvParameters>,
    sk: Arc<SecretKey>,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor").finish_non_exhaustive()
    }
}

impl Decryptor {
    /// A decryptor for `sk`.
    pub fn new(params: &Arc<BfvParameters>, sk: Arc<SecretKey>) -> Result<Self> {
        check_params(params.context().id(), sk.context().id())?;
        Ok(Self {
            params: params.clone(),
            sk,
        })
    }

    /// Symmetric encryption `(-a s + e + Delta m, a)` with `a` expanded from a fresh seed:
    /// serialized, the ciphertext is about half the size of a public-key one.
    pub fn encrypt_symmetric<R: RngCore + CryptoRng + ?Sized>(
        &self,
        pt: &Plaintext,
        rng: &mut R,
    ) -> Result<Ciphertext> {
        check_pt(&self.params, pt)?;
        let ctx = self.params.context();
        let level = ctx.max_level();
        let mut e = centered_binomial(rng, ctx.degree());
        let m = scaled_message(&self.params, pt, level, Some(&e));
        e.zeroize();
        let (polys, seed) = ops::encrypt_sk(ctx, &self.sk, m, rng);
        Ok(Ciphertext {
            params_id: self.params.id(),
            level,
            polys,
            seed: Some(seed),
        })
    }

    /// `c0 + c1 s + c2 s^2` in coefficient form.
    fn phase(&self, ct: &Ciphertext) -> Result<Poly<Coeff>> {
        check_params(self.params.id(), ct.params_id)?;
        if !(2..=3).contains(&ct.polys.len()) {
            return Err(Error::CiphertextSize {
                found: ct.polys.len(),
                expected: 2,
            });
        }
        Ok(ops::phase(
            self.params.context(),
            &self.sk,
            &ct.polys,
            ct.level,
        ))
    }

    /// Decrypts: `m = round(t (c0 + c1 s) / Q) mod t`, computed in RNS without big integers.
    pub fn decrypt(&self, ct: &Ciphertext) -> Result<Plaintext> {
        let x = self.phase(ct)?;
        let n = self.params.degree();
        let lv = &self.params.levels[ct.level];
        let t = self.params.t();
        let k = ct.level + 1;
        let mut int = vec![0u128; n];
        let mut frac = vec![1u128 << 63; n];
        for (i, limb) in x.limbs().enumerate().take(k) {
            let (w, f) = lv.dec[i];
            for ((a, b), &xi) in int.iter_mut().zip(frac.iter_mut()).zip(limb) {
                *a += xi as u128 * w as u128;
                *b += xi as u128 * f as u128;
            }
        }
        let coeffs = int
            .iter()
            .zip(&frac)
            .map(|(&a, &b)| t.add(t.reduce_u128(a), t.reduce((b >> 64) as u64)))
            .collect();
        Ok(Plaintext {
            params_id: self.params.id(),
            coeffs,
        })
    }

    /// The invariant noise budget in bits: `log2(Q) - log2(||[t (c0 + c1 s)]_Q||) - 1`,
    /// floored at 0. Decryption is correct while it is positive.
    pub fn noise_budget(&self, ct: &Ciphertext) -> Result<u32> {
        let x = self.phase(ct)?;
        let q = self.params.context().q_at(ct.level);
        let tv = self.params.plaintext_modulus();
        let k = q.len();
        let mut max_log = f64::NEG_INFINITY;
        let mut res = vec![0u64; k];
        for c in 0..self.params.degree() {
            for (i, r) in res.iter_mut().enumerate() {
                let m = q.modulus(i);
                *r = m.mul(x.limb(i)[c], m.reduce(tv));
            }
            if let Some(l) = q.log2_abs_centered(&res) {
                max_log = max_log.max(l);
            }
        }
        let budget = q.log2_product() - max_log.max(0.0) - 1.0;
        Ok(budget.max(0.0).floor() as u32)
    }
}
