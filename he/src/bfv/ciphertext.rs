//! BFV ciphertexts, encryption (public key, or seeded secret key), re-randomization and
//! decryption with the invariant noise budget: the scheme's part (`Delta m`, the `t/Q`
//! rounding) around the shared [`crate::rlwe::encryptor`].

use std::sync::Arc;

use rand::{CryptoRng, RngCore};
use zeroize::Zeroize;

use super::encoding::Plaintext;
use super::params::BfvParameters;
use crate::error::{check_params, Result};
use crate::math::sampler::Seed;
use crate::math::{Coeff, Ntt, Poly};
use crate::rlwe::encryptor::{Message, RlweDecryptor, RlweEncryptor};
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

/// A cyclic run of coefficient positions, `start, start + 1, .., start + len - 1` modulo
/// the ring degree `N`: the positions of a fresh ciphertext's first polynomial that a
/// product's read outputs depend on. A client sends its input only there
/// ([`Ciphertext::to_bytes_window`]); the evaluator takes the rest as zero, which changes
/// no coefficient it reads (each read output is a sum over the window only), so replies are
/// the same as from the whole ciphertext.
///
/// ```
/// use cipherml_he::bfv::CoeffWindow;
/// // Positions -2..=5 modulo 16: 14, 15, 0, 1, .., 5.
/// let w = CoeffWindow::hull(16, -2, 5);
/// assert_eq!((w.start(), w.len()), (14, 8));
/// assert!(w.contains(15) && w.contains(0) && !w.contains(6));
/// assert!(CoeffWindow::hull(16, -9, 9).is_full());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoeffWindow {
    n: usize,
    start: usize,
    len: usize,
}

impl CoeffWindow {
    /// All `n` positions.
    pub fn full(n: usize) -> Self {
        Self {
            n,
            start: 0,
            len: n,
        }
    }

    /// The positions `lo..=hi` modulo `n` (`lo` may be negative); all of them if the run is
    /// `n` long or longer.
    pub fn hull(n: usize, lo: i64, hi: i64) -> Self {
        let len = (hi - lo + 1).max(0) as usize;
        if len >= n {
            return Self::full(n);
        }
        Self {
            n,
            start: lo.rem_euclid(n as i64) as usize,
            len,
        }
    }

    /// A window read from the wire: `start < n` and `1 <= len <= n`, else `None`.
    pub fn new(n: usize, start: usize, len: usize) -> Option<Self> {
        (start < n && (1..=n).contains(&len)).then_some(Self { n, start, len })
    }

    /// The first position.
    pub fn start(&self) -> usize {
        self.start
    }

    /// The number of positions.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window holds all `N` positions.
    pub fn is_full(&self) -> bool {
        self.len >= self.n
    }

    /// Whether `i` (below `N`) is in the window.
    pub fn contains(&self, i: usize) -> bool {
        (i + self.n - self.start) % self.n < self.len
    }

    /// The positions, in order from `start`.
    pub fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).map(move |k| (self.start + k) % self.n)
    }
}

/// `Delta * m` (coefficient form) over `Q_level`, `Delta = floor(Q_level / t)` (for a
/// power-of-two `t`: `round(Q_level m / t)`).
pub(crate) fn scaled_message(params: &BfvParameters, pt: &Plaintext, level: usize) -> Poly<Coeff> {
    let mut p = Poly::zero(params.degree(), level + 1);
    add_scaled_message(params, pt, level, &mut p);
    p
}

/// `p += Delta * m`, in place (coefficient form over `Q_level`).
fn add_scaled_message(params: &BfvParameters, pt: &Plaintext, level: usize, p: &mut Poly<Coeff>) {
    let q = params.context().q_at(level);
    let lv = &params.levels[level];
    if params.rounds_messages() {
        return add_rounded_message(params, pt, level, p);
    }
    for (i, limb) in p.limbs_mut().enumerate() {
        let m = q.modulus(i);
        let (d, ds) = lv.delta[i];
        for (x, &v) in limb.iter_mut().zip(&pt.coeffs) {
            *x = m.add(*x, m.mul_shoup(v, d, ds));
        }
    }
}

/// `p += round(Q m / t)` for a power-of-two `t` (as SEAL's scaling): with
/// `L = ((Q mod t) m + t/2) mod t`, `round(Q m / t) t = Q m + t/2 - L`, so modulo each
/// `q_i` (which divides `Q`) it is `(t/2 - L) t^-1`. The rounding error is at most 1/2
/// whatever `m`, so a product by a plaintext `w` adds at most `||w||_1 / 2` to the noise
/// (with `floor(Q/t) m` it would add `(Q mod t)` times the carries of `m w` over `t`,
/// up to `t N ||w||_inf`: too much for `t = 2^64`, and 23 bits of flooding at `t = 2^40`).
fn add_rounded_message(params: &BfvParameters, pt: &Plaintext, level: usize, p: &mut Poly<Coeff>) {
    let q = params.context().q_at(level);
    let lv = &params.levels[level];
    let t = params.t();
    let half = (t.value() / 2) as u64;
    let q_mod_t = lv.q_mod_t;
    // t/2 - L in (-t/2, t/2], as (negative, |t/2 - L|).
    let signed: Vec<(bool, u64)> = pt
        .coeffs
        .iter()
        .map(|&v| {
            let l = t.add(t.reduce_u128(q_mod_t * v as u128), half);
            if l > half {
                (true, l - half)
            } else {
                (false, half - l)
            }
        })
        .collect();
    for (i, limb) in p.limbs_mut().enumerate() {
        let m = q.modulus(i);
        let (ti, tis) = lv.t_inv[i];
        for (x, &(neg, a)) in limb.iter_mut().zip(&signed) {
            let r = m.mul_shoup(a, ti, tis);
            *x = if neg { m.sub(*x, r) } else { m.add(*x, r) };
        }
    }
}

fn check_pt(params: &BfvParameters, pt: &Plaintext) -> Result<()> {
    check_params(params.id(), pt.params_id)?;
    Ok(())
}

/// Public-key encryption. Immutable and `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Encryptor {
    params: Arc<BfvParameters>,
    rlwe: RlweEncryptor,
}

impl Encryptor {
    /// An encryptor with the public key `pk`.
    pub fn new(params: &Arc<BfvParameters>, pk: PublicKey) -> Result<Self> {
        Ok(Self {
            rlwe: RlweEncryptor::new(params.context(), pk)?,
            params: params.clone(),
        })
    }

    /// Encrypts `pt` at the top level: `(b u + e0 + Delta m, a u + e1)`.
    pub fn encrypt<R: RngCore + CryptoRng + ?Sized>(
        &self,
        pt: &Plaintext,
        rng: &mut R,
    ) -> Result<Ciphertext> {
        check_pt(&self.params, pt)?;
        let level = self.params.max_level();
        let dm = |p: &mut Poly<Coeff>| add_scaled_message(&self.params, pt, level, p);
        let polys = self.rlwe.encrypt(level, Message::Coeff(&dm), rng)?;
        Ok(Ciphertext {
            params_id: self.params.id(),
            level,
            polys,
            seed: None,
        })
    }

    /// `ct` plus a fresh public-key encryption of zero at its level: the same plaintext,
    /// and a second polynomial that is uniform under RLWE instead of a function of the
    /// operands that computed `ct` (and of the key owner's own known randomness, from
    /// which the key owner could solve for them). The noise in `c0` still depends on the
    /// computation: flood it ([`super::Evaluator::flood`]) to hide that too.
    ///
    /// ```
    /// use cipherml_he::bfv::*;
    /// use cipherml_he::rlwe::{PublicKey, SecretKey};
    /// let params = BfvParameters::new(&BfvParametersLiteral::n4096()).unwrap();
    /// let mut rng = rand::rng();
    /// let sk = std::sync::Arc::new(SecretKey::random(params.context(), &mut rng));
    /// let encryptor = Encryptor::new(&params, PublicKey::new(&sk, &mut rng)).unwrap();
    /// let decryptor = Decryptor::new(&params, sk).unwrap();
    /// let pt = Encoder::new(&params).encode_coeffs_u64(&[1, 2, 3]).unwrap();
    /// let ct = encryptor.encrypt(&pt, &mut rng).unwrap();
    /// let fresh = encryptor.rerandomize(&ct, &mut rng).unwrap();
    /// assert_ne!(fresh, ct);
    /// assert_eq!(decryptor.decrypt(&fresh).unwrap(), pt);
    /// ```
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

    /// The reply of a two-party linear layer in one pass, serialized compactly: `ct - Delta
    /// r` for the mask `r`, re-randomized with a fresh encryption of zero under this key
    /// and flooded with noise uniform in `[-2^flood_log2, 2^flood_log2)`, then written as
    /// [`Ciphertext::to_bytes_compact`] writes it (`c0` at `positions` only, `bits` per
    /// coefficient, `noise_log2` the bound after flooding), except that the rounding of the
    /// re-randomized `c1` is bounded with high probability
    /// ([`Ciphertext::compact_bits_rerandomized`] gives the fewest `bits`). The ciphertext that
    /// `Evaluator::sub_plain`, [`Encryptor::rerandomize`] and `Evaluator::flood` make in turn,
    /// with the errors, the flooding and the mask added in coefficient form: one forward
    /// NTT per prime (of the ternary `u`) where those take five.
    pub fn masked_reply_compact<R: RngCore + CryptoRng + ?Sized>(
        &self,
        ct: &Ciphertext,
        mask: &Plaintext,
        flood_log2: u32,
        positions: &[usize],
        (bits, noise_log2): (u32, f64),
        rng: &mut R,
    ) -> Result<Vec<u8>> {
        check_params(self.params.id(), ct.params_id)?;
        check_pt(&self.params, mask)?;
        let level = ct.level;
        let q = self.params.context().q_at(level);
        let room = q.log2_product() - (self.params.plaintext_modulus() as f64).log2() - 2.0;
        let mut extra =
            crate::rlwe::ops::flood_coeff(self.params.degree(), q, (room, level), flood_log2, rng)?;
        extra.sub_assign(&scaled_message(&self.params, mask, level), q);
        let polys =
            self.rlwe
                .rerandomize_into_coeff(level, &ct.polys, &|p| p.add_assign(&extra, q), rng);
        extra.zeroize();
        let [c0, c1] = polys?;
        crate::serialize::compact_bytes(
            &self.params,
            (ct.params_id, level),
            [&c0, &c1],
            positions,
            (bits, noise_log2),
            crate::serialize::RoundingBound::Rerandomized,
        )
    }
}

/// Secret-key operations: decryption, the noise budget, and seeded symmetric encryption.
/// Holds the secret key (zeroized when dropped). `Send + Sync`.
pub struct Decryptor {
    params: Arc<BfvParameters>,
    rlwe: RlweDecryptor,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor").finish_non_exhaustive()
    }
}

impl Decryptor {
    /// A decryptor for `sk`.
    pub fn new(params: &Arc<BfvParameters>, sk: Arc<SecretKey>) -> Result<Self> {
        Ok(Self {
            rlwe: RlweDecryptor::new(params.context(), sk)?,
            params: params.clone(),
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
        let level = self.params.max_level();
        let dm = |p: &mut Poly<Coeff>| add_scaled_message(&self.params, pt, level, p);
        let (polys, seed) = self.rlwe.encrypt(level, Message::Coeff(&dm), rng)?;
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
        self.rlwe.phase(ct.level, &ct.polys)
    }

    /// Decrypts: `m = round(t (c0 + c1 s) / Q) mod t`, computed in RNS without big integers
    /// (for `t = 2^64`: the integer parts with wrapping `u64` arithmetic).
    pub fn decrypt(&self, ct: &Ciphertext) -> Result<Plaintext> {
        let x = self.phase(ct)?;
        let n = self.params.degree();
        let lv = &self.params.levels[ct.level];
        let t = self.params.t();
        let k = ct.level + 1;
        if t.is_wide() {
            // t divides 2^64: the integer parts are summed modulo 2^64.
            let mut int = vec![0u64; n];
            let mut frac = vec![1u128 << 63; n];
            for (i, limb) in x.limbs().enumerate().take(k) {
                let (w, f) = lv.dec[i];
                for ((a, b), &xi) in int.iter_mut().zip(frac.iter_mut()).zip(limb) {
                    *a = a.wrapping_add(xi.wrapping_mul(w));
                    *b = b.wrapping_add(xi as u128 * f as u128);
                }
            }
            let coeffs = int
                .iter()
                .zip(&frac)
                .map(|(&a, &b)| t.reduce(a.wrapping_add((b >> 64) as u64)))
                .collect();
            return Ok(Plaintext {
                params_id: self.params.id(),
                coeffs,
            });
        }
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
        let t = self.params.t();
        let k = q.len();
        let t_mod: Vec<u64> = (0..k).map(|i| t.mod_of(q.modulus(i))).collect();
        let mut max_log = f64::NEG_INFINITY;
        let mut res = vec![0u64; k];
        for c in 0..self.params.degree() {
            for (i, r) in res.iter_mut().enumerate() {
                let m = q.modulus(i);
                *r = m.mul(x.limb(i)[c], t_mod[i]);
            }
            if let Some(l) = q.log2_abs_centered(&res) {
                max_log = max_log.max(l);
            }
        }
        let budget = q.log2_product() - max_log.max(0.0) - 1.0;
        Ok(budget.max(0.0).floor() as u32)
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    use super::super::{BfvParametersLiteral, Encoder, Evaluator, PlaintextModulus};
    use super::*;
    use crate::error::Error;

    use super::super::reference_tests::params;

    /// A fingerprint of a serialized ciphertext.
    fn fingerprint(bytes: &[u8]) -> u64 {
        crate::rlwe::context::fnv1a(bytes.iter().map(|&b| u64::from(b)))
    }

    fn keys(params: &Arc<BfvParameters>, rng: &mut ChaCha20Rng) -> (Encryptor, Decryptor) {
        let sk = Arc::new(SecretKey::random(params.context(), rng));
        let pk = PublicKey::new(&sk, rng);
        (
            Encryptor::new(params, pk).unwrap(),
            Decryptor::new(params, sk).unwrap(),
        )
    }

    /// The encryptions of a fixed seed are those the BFV encryptors produced before they
    /// shared one RLWE encryptor (checked byte for byte when it came in): the wire bytes did
    /// not change, and `rerandomize` is bit for bit the hand-written `ct + Enc(0)` it
    /// replaces.
    #[test]
    fn encryptions_keep_their_known_answers() {
        let params = params();
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let (e, d) = keys(&params, &mut rng);
        let enc = Encoder::new(&params);
        let t = params.plaintext_modulus() as u64;
        let m: Vec<u64> = (0..32u64).map(|i| i * 977 % t).collect();
        let pt = enc.encode_u64(&m).unwrap();
        let pk_ct = e.encrypt(&pt, &mut rng).unwrap();
        let sk_ct = d.encrypt_symmetric(&pt, &mut rng).unwrap();
        let mut same_stream = rng.clone();
        let zero = enc.encode_coeffs_u64(&[]).unwrap();
        let by_hand = Evaluator::new(&params)
            .add(&pk_ct, &e.encrypt(&zero, &mut rng).unwrap())
            .unwrap();
        let rerandomized = e.rerandomize(&pk_ct, &mut same_stream).unwrap();
        let fingerprints = [&pk_ct, &sk_ct, &by_hand].map(|ct| fingerprint(&ct.to_bytes(&params)));
        assert_eq!(
            fingerprints,
            [
                0x3535_abfc_8b68_0ca4,
                0x11af_3938_f37c_f033,
                0xd8ce_1e13_acb7_5b96
            ]
        );
        assert_eq!(rerandomized, by_hand);
        for ct in [&pk_ct, &sk_ct, &rerandomized] {
            assert_eq!(enc.decode_u64(&d.decrypt(ct).unwrap()).unwrap(), m);
        }
    }

    /// The shared RLWE encryptor and decryptor, called with BFV's `Delta m`, give
    /// ciphertexts that the BFV decryptor opens to the message.
    #[test]
    fn the_shared_encryptor_serves_bfv() {
        let params = params();
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let ctx = params.context();
        let sk = Arc::new(SecretKey::random(ctx, &mut rng));
        let pk = PublicKey::new(&sk, &mut rng);
        let (renc, rdec) = (
            RlweEncryptor::new(ctx, pk).unwrap(),
            RlweDecryptor::new(ctx, sk.clone()).unwrap(),
        );
        let d = Decryptor::new(&params, sk).unwrap();
        let t = params.plaintext_modulus() as u64;
        let m: Vec<u64> = (0..32).map(|_| rng.random_range(0..t)).collect();
        let pt = Encoder::new(&params).encode_coeffs_u64(&m).unwrap();
        let level = params.max_level();
        let wrap = |polys| Ciphertext {
            params_id: params.id(),
            level,
            polys,
            seed: None,
        };
        let add_dm = |p: &mut Poly<Coeff>| add_scaled_message(&params, &pt, level, p);
        let dm = || Message::Coeff(&add_dm);
        let pk_ct = wrap(renc.encrypt(level, dm(), &mut rng).unwrap());
        let sk_ct = wrap(rdec.encrypt(level, dm(), &mut rng).unwrap().0);
        let zero = wrap(renc.encrypt(level, Message::Zero, &mut rng).unwrap());
        assert_eq!(d.decrypt(&pk_ct).unwrap().coefficients(), m);
        assert_eq!(d.decrypt(&sk_ct).unwrap().coefficients(), m);
        assert!(d
            .decrypt(&zero)
            .unwrap()
            .coefficients()
            .iter()
            .all(|&c| c == 0));
    }

    #[test]
    fn rerandomize_keeps_the_plaintext_and_changes_c1() {
        let params = params();
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let (e, d) = keys(&params, &mut rng);
        let (enc, ev) = (Encoder::new(&params), Evaluator::new(&params));
        let t = params.plaintext_modulus() as u64;
        let a: Vec<u64> = (0..32).map(|_| rng.random_range(0..t)).collect();
        let b: Vec<u64> = (0..32).map(|_| rng.random_range(0..t)).collect();
        let seeded = d
            .encrypt_symmetric(&enc.encode_u64(&a).unwrap(), &mut rng)
            .unwrap();
        let y = e.encrypt(&enc.encode_u64(&b).unwrap(), &mut rng).unwrap();
        let product = ev.mul(&seeded, &y).unwrap();
        let lower = ev.mod_switch_to_next(&y).unwrap();
        for ct in [&seeded, &y, &product, &lower] {
            let before = d.decrypt(ct).unwrap();
            let r = e.rerandomize(ct, &mut rng).unwrap();
            assert_eq!(
                (r.level(), r.len(), r.is_seeded()),
                (ct.level(), ct.len(), false)
            );
            assert_ne!(r.polys[0], ct.polys[0]);
            assert_ne!(r.polys[1], ct.polys[1]);
            assert_eq!(r.polys[2..], ct.polys[2..]);
            assert_eq!(d.decrypt(&r).unwrap(), before);
            assert!(d.noise_budget(&r).unwrap() > 0);
        }
        let ab: Vec<u64> = a.iter().zip(&b).map(|(x, y)| x * y % t).collect();
        let r = e.rerandomize(&product, &mut rng).unwrap();
        assert_eq!(enc.decode_u64(&d.decrypt(&r).unwrap()).unwrap(), ab);
        // A ciphertext of other parameters: a typed error naming both ids.
        let other = BfvParameters::new_insecure(&BfvParametersLiteral {
            degree: 32,
            ciphertext_moduli_bits: vec![40, 41],
            special_moduli_bits: vec![45],
            plaintext: PlaintextModulus::Batching { bits: 17 },
        })
        .unwrap();
        let (e2, _) = keys(&other, &mut rng);
        assert_eq!(
            e2.rerandomize(&y, &mut rng).unwrap_err(),
            Error::ParameterMismatch {
                expected: other.id(),
                found: params.id(),
            }
        );
    }
}
