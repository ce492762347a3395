//! The one RLWE encryptor and decryptor under BFV and CKKS (the shape of Lattigo's
//! `core/rlwe/encryptor.go` and `decryptor.go`).
//!
//! They work on ring-level objects only: a level, polynomials in NTT form over `Q_level`,
//! seeds. [`RlweEncryptor`] encrypts under a public key, `(b u + e0 + m, a u + e1)`, and
//! re-randomizes a ciphertext by adding a fresh encryption of zero; [`RlweDecryptor`]
//! encrypts under the secret key with a seeded uniform half, `(-a s + e + m, a)`, and
//! computes the decryption phase `c0 + c1 s (+ c2 s^2)`. The schemes wrap them:
//! `bfv::{Encryptor, Decryptor}` scale the message by `Delta = floor(Q/t)` and round
//! `t/Q` times the phase; `ckks::{Encryptor, Decryptor}` carry the level and the scale.
//!
//! Secret temporaries (the ternary `u`, the errors) are zeroized after use; polynomial
//! buffers are wiped when they return to the pool. Both types are immutable and
//! `Send + Sync`.

use std::sync::Arc;

use rand::{CryptoRng, RngCore};
use zeroize::Zeroize;

use super::context::RlweContext;
use super::keys::{error_ntt, PublicKey, SecretKey};
use crate::error::{check_params, Error, Result};
use crate::math::sampler::{centered_binomial, random_seed, ternary, uniform_from_seed, Seed};
use crate::math::{Coeff, Ntt, Poly, RnsBasis};

/// What a scheme encrypts, over `Q_level`.
pub(crate) enum Message<'a> {
    /// Nothing: an encryption of zero.
    Zero,
    /// A message in coefficient form (BFV's `Delta m`), given as the function that adds it
    /// in place to the error polynomial (over `Q_level`): the sum then takes one NTT.
    Coeff(&'a dyn Fn(&mut Poly<Coeff>)),
    /// A message in NTT form (a CKKS plaintext), added to `c0` at the end.
    Ntt(&'a Poly<Ntt>),
}

impl Message<'_> {
    /// `e (+ m)` in NTT form over `q`, for a fresh centered-binomial error `e` (zeroized
    /// after use), with a coefficient-form message added before the NTT.
    fn plus_error<R: RngCore + CryptoRng + ?Sized>(
        &self,
        n: usize,
        q: &RnsBasis,
        rng: &mut R,
    ) -> Poly<Ntt> {
        let mut e = centered_binomial(rng, n);
        let mut sum = Poly::from_signed(&e, q);
        e.zeroize();
        if let Message::Coeff(add_m) = self {
            add_m(&mut sum);
        }
        sum.into_ntt(q)
    }

    /// `c0 += m` for a message in NTT form.
    fn add_ntt_to(&self, c0: &mut Poly<Ntt>, q: &RnsBasis) {
        if let Message::Ntt(m) = self {
            c0.add_assign(m, q);
        }
    }
}

/// A fresh uniform ternary `u` over `q`, in NTT form (the sampled vector zeroized).
fn ternary_ntt<R: RngCore + CryptoRng + ?Sized>(rng: &mut R, n: usize, q: &RnsBasis) -> Poly<Ntt> {
    let mut u = ternary(rng, n);
    let p = Poly::from_signed(&u, q).into_ntt(q);
    u.zeroize();
    p
}

/// The ciphertext basis at `level`, or [`Error::LevelOutOfRange`].
fn basis(ctx: &RlweContext, level: usize) -> Result<&RnsBasis> {
    ctx.check_level(level)?;
    Ok(ctx.q_at(level))
}

/// Public-key RLWE encryption and re-randomization. Immutable and `Send + Sync`.
#[derive(Debug, Clone)]
pub(crate) struct RlweEncryptor {
    ctx: Arc<RlweContext>,
    pk: PublicKey,
}

impl RlweEncryptor {
    /// An encryptor under `pk`, which must belong to `ctx`.
    pub(crate) fn new(ctx: &Arc<RlweContext>, pk: PublicKey) -> Result<Self> {
        check_params(ctx.id(), pk.ctx_id)?;
        Ok(Self {
            ctx: ctx.clone(),
            pk,
        })
    }

    /// `(b u + e0 + m, a u + e1)` over `Q_level`, with the public key restricted to the
    /// primes of `Q_level` (still an RLWE sample under the same secret). The randomness is
    /// drawn in the order `e0`, `u`, `e1`, whatever the level.
    pub(crate) fn encrypt<R: RngCore + CryptoRng + ?Sized>(
        &self,
        level: usize,
        msg: Message<'_>,
        rng: &mut R,
    ) -> Result<Vec<Poly<Ntt>>> {
        let q = basis(&self.ctx, level)?;
        let n = self.ctx.degree();
        let mut c0 = msg.plus_error(n, q, rng);
        let u = ternary_ntt(rng, n, q);
        let mut c1 = error_ntt(rng, n, q);
        self.add_times_key(q, [&mut c0, &mut c1], u);
        msg.add_ntt_to(&mut c0, q);
        Ok(vec![c0, c1])
    }

    /// `c0 += b u`, `c1 += a u` over `q` (NTT form); `u` is zeroized.
    fn add_times_key(&self, q: &RnsBasis, [c0, c1]: [&mut Poly<Ntt>; 2], mut u: Poly<Ntt>) {
        for (i, pr) in q.primes().iter().enumerate() {
            let ui = u.limb(i);
            pr.ntt.mul_accumulate(c0.limb_mut(i), self.pk.b.limb(i), ui);
            pr.ntt.mul_accumulate(c1.limb_mut(i), self.pk.a.limb(i), ui);
        }
        u.zeroize();
    }

    /// [`RlweEncryptor::rerandomize`] of `polys` (a ciphertext over `Q_level`, NTT form)
    /// with `extra` added to `c0`, returned in coefficient form: `(c0 + b u + e0 + extra,
    /// c1 + a u + e1)`, the randomness drawn as [`RlweEncryptor::encrypt`] draws it. The
    /// errors and `extra` are added after the inverse NTT, so that only `u` takes a
    /// forward one (the sum's distribution is the same).
    pub(crate) fn rerandomize_into_coeff<R: RngCore + CryptoRng + ?Sized>(
        &self,
        level: usize,
        polys: &[Poly<Ntt>],
        extra: &dyn Fn(&mut Poly<Coeff>),
        rng: &mut R,
    ) -> Result<[Poly<Coeff>; 2]> {
        if polys.len() != 2 {
            return Err(Error::CiphertextSize {
                found: polys.len(),
                expected: 2,
            });
        }
        let q = basis(&self.ctx, level)?;
        let n = self.ctx.degree();
        let mut e0 = centered_binomial(rng, n);
        let u = ternary_ntt(rng, n, q);
        let mut e1 = centered_binomial(rng, n);
        let (mut c0, mut c1) = (polys[0].clone(), polys[1].clone());
        self.add_times_key(q, [&mut c0, &mut c1], u);
        let (mut c0, mut c1) = (c0.into_coeff(q), c1.into_coeff(q));
        let mut err = Poly::from_signed(&e0, q);
        e0.zeroize();
        extra(&mut err);
        c0.add_assign(&err, q);
        err.zeroize();
        let mut err = Poly::from_signed(&e1, q);
        e1.zeroize();
        c1.add_assign(&err, q);
        err.zeroize();
        Ok([c0, c1])
    }

    /// Adds a fresh encryption of zero at `level` to the first two of `polys` (a
    /// ciphertext over `Q_level`): the message is kept, and `c1` becomes uniform under
    /// RLWE instead of a function of whatever computed the ciphertext.
    pub(crate) fn rerandomize<R: RngCore + CryptoRng + ?Sized>(
        &self,
        level: usize,
        polys: &mut [Poly<Ntt>],
        rng: &mut R,
    ) -> Result<()> {
        if polys.len() < 2 {
            return Err(Error::CiphertextSize {
                found: polys.len(),
                expected: 2,
            });
        }
        let zero = self.encrypt(level, Message::Zero, rng)?;
        let q = self.ctx.q_at(level);
        for (p, z) in polys.iter_mut().zip(&zero) {
            p.add_assign(z, q);
        }
        Ok(())
    }
}

/// Secret-key RLWE operations: seeded symmetric encryption and the decryption phase.
/// Holds the secret key (zeroized when its last holder drops it). `Send + Sync`.
#[derive(Clone)]
pub(crate) struct RlweDecryptor {
    ctx: Arc<RlweContext>,
    sk: Arc<SecretKey>,
}

impl std::fmt::Debug for RlweDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RlweDecryptor").finish_non_exhaustive()
    }
}

impl RlweDecryptor {
    /// A decryptor for `sk`, which must belong to `ctx`.
    pub(crate) fn new(ctx: &Arc<RlweContext>, sk: Arc<SecretKey>) -> Result<Self> {
        check_params(ctx.id(), sk.context().id())?;
        Ok(Self {
            ctx: ctx.clone(),
            sk,
        })
    }

    /// `(-a s + e + m, a)` over `Q_level`, with `a` expanded from a fresh seed (returned:
    /// the wire form sends it in place of `a`). The randomness is drawn in the order `e`,
    /// seed.
    pub(crate) fn encrypt<R: RngCore + CryptoRng + ?Sized>(
        &self,
        level: usize,
        msg: Message<'_>,
        rng: &mut R,
    ) -> Result<(Vec<Poly<Ntt>>, Seed)> {
        let q = basis(&self.ctx, level)?;
        let n = self.ctx.degree();
        let mut c0 = msg.plus_error(n, q, rng);
        let seed = random_seed(rng);
        let a = uniform_from_seed(&seed, n, q, 0);
        let s = self.sk.ntt_qp();
        for (i, pr) in q.primes().iter().enumerate() {
            // c0 -= a * s, in place: no temporary holds `a * s` (secret-key material).
            let m = &pr.modulus;
            for ((x, &ai), &si) in c0.limb_mut(i).iter_mut().zip(a.limb(i)).zip(s.limb(i)) {
                *x = m.sub(*x, m.mul_reduced(ai, si));
            }
        }
        msg.add_ntt_to(&mut c0, q);
        Ok((vec![c0, a], seed))
    }

    /// The phase `c0 + c1 s (+ c2 s^2)` in coefficient form, for the two or three
    /// polynomials of a ciphertext over `Q_level`.
    pub(crate) fn phase(&self, level: usize, polys: &[Poly<Ntt>]) -> Result<Poly<Coeff>> {
        if !(2..=3).contains(&polys.len()) {
            return Err(Error::CiphertextSize {
                found: polys.len(),
                expected: 2,
            });
        }
        let q = basis(&self.ctx, level)?;
        let s = self.sk.ntt_qp();
        let mut acc = polys[0].clone();
        for (i, pr) in q.primes().iter().enumerate() {
            pr.ntt
                .mul_accumulate(acc.limb_mut(i), polys[1].limb(i), s.limb(i));
        }
        if let Some(c2) = polys.get(2) {
            let mut s2 = s.truncated(q.len());
            s2.mul_assign(&s.truncated(q.len()), q);
            acc.mul_accumulate(c2, &s2, q);
            s2.zeroize();
        }
        Ok(acc.into_coeff(q))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;
    use crate::math::sampler::{uniform_ntt, CBD_ETA};

    const N: usize = 32;
    /// `|e|` for one centered-binomial error.
    const ETA: i64 = CBD_ETA as i64;
    /// `|e u + e0 + e1 s|` for a public-key encryption (`u`, `s` ternary).
    const PK_BOUND: i64 = ETA * (2 * N as i64 + 1);

    struct Setup {
        ctx: Arc<RlweContext>,
        sk: Arc<SecretKey>,
        enc: RlweEncryptor,
        dec: RlweDecryptor,
        rng: ChaCha20Rng,
    }

    fn setup(seed: u64) -> Setup {
        let ctx = RlweContext::new(N, &[40, 41, 42], &[45], &[], true).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let sk = Arc::new(SecretKey::random(&ctx, &mut rng));
        let pk = PublicKey::new(&sk, &mut rng);
        Setup {
            enc: RlweEncryptor::new(&ctx, pk).unwrap(),
            dec: RlweDecryptor::new(&ctx, sk.clone()).unwrap(),
            ctx,
            sk,
            rng,
        }
    }

    /// The centered coefficients of `p` (coefficient form over `q`), asserted to be the same
    /// integer in every prime, i.e. small.
    fn small_coeffs(p: &Poly<Coeff>, q: &RnsBasis) -> Vec<i64> {
        (0..p.degree())
            .map(|c| {
                let v = q.primes()[0].modulus.center(p.limb(0)[c]);
                for (i, pr) in q.primes().iter().enumerate() {
                    assert_eq!(pr.modulus.center(p.limb(i)[c]), v, "coefficient {c}");
                }
                v
            })
            .collect()
    }

    /// `phase - m`, centered, asserted to be at most `bound` and not all zero.
    fn assert_noise(s: &Setup, level: usize, polys: &[Poly<Ntt>], m: &Poly<Ntt>, bound: i64) {
        let q = s.ctx.q_at(level);
        assert!(polys.iter().all(|p| p.num_limbs() == level + 1));
        let mut x = s.dec.phase(level, polys).unwrap();
        x.sub_assign(&m.clone().into_coeff(q), q);
        let e = small_coeffs(&x, q);
        assert!(
            e.iter().all(|v| v.abs() <= bound),
            "noise {e:?} above {bound}"
        );
        assert!(e.iter().any(|&v| v != 0), "no error was added");
    }

    #[test]
    fn encryptions_decrypt_to_the_message_at_every_level() {
        let mut s = setup(1);
        for level in 0..=s.ctx.max_level() {
            let q = s.ctx.q_at(level).clone();
            let m = uniform_ntt(&mut s.rng, N, &q);
            let pk = s.enc.encrypt(level, Message::Ntt(&m), &mut s.rng).unwrap();
            assert_noise(&s, level, &pk, &m, PK_BOUND);
            let mc = m.clone().into_coeff(&q);
            let add_m = |p: &mut Poly<Coeff>| p.add_assign(&mc, &q);
            let pk = s
                .enc
                .encrypt(level, Message::Coeff(&add_m), &mut s.rng)
                .unwrap();
            assert_noise(&s, level, &pk, &m, PK_BOUND);
            let zero = Poly::zero(N, level + 1);
            let pk = s.enc.encrypt(level, Message::Zero, &mut s.rng).unwrap();
            assert_noise(&s, level, &pk, &zero, PK_BOUND);
            let (sk, seed) = s.dec.encrypt(level, Message::Ntt(&m), &mut s.rng).unwrap();
            assert_noise(&s, level, &sk, &m, ETA);
            // The uniform half is the one the seed expands to (what the wire form relies on).
            assert_eq!(sk[1], uniform_from_seed(&seed, N, &q, 0));
            let (sk, _) = s
                .dec
                .encrypt(level, Message::Coeff(&add_m), &mut s.rng)
                .unwrap();
            assert_noise(&s, level, &sk, &m, ETA);
        }
    }

    #[test]
    fn the_phase_of_three_polynomials_uses_s_squared() {
        let mut s = setup(2);
        let level = 1;
        let q = s.ctx.q_at(level).clone();
        let m = uniform_ntt(&mut s.rng, N, &q);
        let c1 = uniform_ntt(&mut s.rng, N, &q);
        let c2 = uniform_ntt(&mut s.rng, N, &q);
        // c0 = m - c1 s - c2 s^2, computed here from the key's coefficients.
        let sk = Poly::from_signed(s.sk.coefficients(), &q).into_ntt(&q);
        let mut c0 = m.clone();
        let mut t = c1.clone();
        t.mul_assign(&sk, &q);
        c0.sub_assign(&t, &q);
        let mut t = c2.clone();
        t.mul_assign(&sk, &q);
        t.mul_assign(&sk, &q);
        c0.sub_assign(&t, &q);
        let phase = s.dec.phase(level, &[c0, c1, c2]).unwrap();
        assert_eq!(phase, m.into_coeff(&q));
    }

    #[test]
    fn rerandomize_adds_a_fresh_encryption_of_zero() {
        let mut s = setup(3);
        for level in [s.ctx.max_level(), 0] {
            let q = s.ctx.q_at(level).clone();
            let m = uniform_ntt(&mut s.rng, N, &q);
            let (ct, _) = s.dec.encrypt(level, Message::Ntt(&m), &mut s.rng).unwrap();
            let c2 = uniform_ntt(&mut s.rng, N, &q);
            let mut r = vec![ct[0].clone(), ct[1].clone(), c2.clone()];
            let mut same_stream = s.rng.clone();
            s.enc.rerandomize(level, &mut r, &mut s.rng).unwrap();
            // Exactly ct + Enc(0) drawn from the same randomness; c2 untouched.
            let z = s
                .enc
                .encrypt(level, Message::Zero, &mut same_stream)
                .unwrap();
            for i in 0..2 {
                let mut want = ct[i].clone();
                want.add_assign(&z[i], &q);
                assert_eq!(r[i], want);
                assert_ne!(r[i], ct[i]);
            }
            assert_eq!(r[2], c2);
            r.truncate(2);
            assert_noise(&s, level, &r, &m, PK_BOUND + ETA);
        }
    }

    #[test]
    fn malformed_inputs_are_typed_errors() {
        let mut s = setup(4);
        let max = s.ctx.max_level();
        let bad = Error::LevelOutOfRange {
            level: max + 1,
            max,
        };
        let rng = &mut s.rng;
        assert_eq!(s.enc.encrypt(max + 1, Message::Zero, rng), Err(bad.clone()));
        assert_eq!(s.dec.encrypt(max + 1, Message::Zero, rng).unwrap_err(), bad);
        let ct = s.enc.encrypt(max, Message::Zero, rng).unwrap();
        let mut copy = ct.clone();
        assert_eq!(s.enc.rerandomize(max + 1, &mut copy, rng), Err(bad.clone()));
        assert_eq!(copy, ct, "a refused call changes nothing");
        assert_eq!(s.dec.phase(max + 1, &ct).unwrap_err(), bad);
        let size = |found| Error::CiphertextSize { found, expected: 2 };
        assert_eq!(s.enc.rerandomize(max, &mut copy[..1], rng), Err(size(1)));
        assert_eq!(s.dec.phase(max, &ct[..1]).unwrap_err(), size(1));
        let four = vec![ct[0].clone(), ct[1].clone(), ct[0].clone(), ct[1].clone()];
        assert_eq!(s.dec.phase(max, &four).unwrap_err(), size(4));
        // Keys of another context.
        let other = RlweContext::new(N, &[40, 41], &[45], &[], true).unwrap();
        let sk = Arc::new(SecretKey::random(&other, rng));
        let pk = PublicKey::new(&sk, rng);
        let mismatch = Error::ParameterMismatch {
            expected: s.ctx.id(),
            found: other.id(),
        };
        assert_eq!(RlweEncryptor::new(&s.ctx, pk).unwrap_err(), mismatch);
        assert_eq!(RlweDecryptor::new(&s.ctx, sk).unwrap_err(), mismatch);
    }
}
