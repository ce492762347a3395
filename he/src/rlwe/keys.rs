//! RLWE keys: the ternary secret key (zeroized on drop), the public key, and hybrid
//! key-switching keys (relinearization and Galois keys), all with seeded uniform halves.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::{CryptoRng, RngCore};
use zeroize::Zeroize;

use super::context::RlweContext;
use crate::error::{Error, Result};
use crate::math::sampler::{centered_binomial, random_seed, ternary, uniform_from_seed, Seed};
use crate::math::{Coeff, Ntt, Poly};

/// A ternary secret key. Its coefficients are zeroized when it is dropped, and its `Debug`
/// output shows no coefficient.
pub struct SecretKey {
    ctx: Arc<RlweContext>,
    coeffs: Vec<i64>,
    /// `s` in NTT form over the full `QP` basis.
    ntt: Poly<Ntt>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("ctx_id", &self.ctx.id())
            .finish_non_exhaustive()
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.coeffs.zeroize();
        self.ntt.zeroize();
    }
}

impl SecretKey {
    /// Samples a uniform ternary secret.
    pub fn random<R: RngCore + CryptoRng + ?Sized>(ctx: &Arc<RlweContext>, rng: &mut R) -> Self {
        let coeffs = ternary(rng, ctx.degree());
        Self::from_coefficients(ctx, coeffs)
    }

    pub(crate) fn from_coefficients(ctx: &Arc<RlweContext>, coeffs: Vec<i64>) -> Self {
        let ntt = Poly::from_signed(&coeffs, ctx.qp()).into_ntt(ctx.qp());
        Self {
            ctx: ctx.clone(),
            coeffs,
            ntt,
        }
    }

    /// The context.
    pub fn context(&self) -> &Arc<RlweContext> {
        &self.ctx
    }

    /// The coefficients (in `{-1, 0, 1}`).
    pub(crate) fn coefficients(&self) -> &[i64] {
        &self.coeffs
    }

    /// `s` in NTT form restricted to the first `k` limbs of `QP` (i.e. `Q_{k-1}` when `k <= L+1`).
    pub(crate) fn ntt_q(&self, level: usize) -> Poly<Ntt> {
        self.ntt.truncated(level + 1)
    }

    /// `s` in NTT form over the full `QP` basis.
    pub(crate) fn ntt_qp(&self) -> &Poly<Ntt> {
        &self.ntt
    }
}

/// Samples a centered binomial error polynomial in NTT form over `basis`.
pub(crate) fn error_ntt<R: RngCore + CryptoRng + ?Sized>(
    rng: &mut R,
    n: usize,
    basis: &crate::math::RnsBasis,
) -> Poly<Ntt> {
    let mut e = centered_binomial(rng, n);
    let p = Poly::from_signed(&e, basis).into_ntt(basis);
    e.zeroize();
    p
}

/// The public key `(b, a) = (-a s + e, a)` over the full ciphertext modulus; `a` is expanded
/// from a seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub(crate) ctx_id: u64,
    pub(crate) b: Poly<Ntt>,
    pub(crate) a: Poly<Ntt>,
    pub(crate) seed: Seed,
}

impl PublicKey {
    /// Generates a public key for `sk`.
    pub fn new<R: RngCore + CryptoRng + ?Sized>(sk: &SecretKey, rng: &mut R) -> Self {
        let ctx = sk.context();
        let level = ctx.max_level();
        let q = ctx.q_at(level);
        let seed = random_seed(rng);
        let a = uniform_from_seed(&seed, ctx.degree(), q, 0);
        let mut b = error_ntt(rng, ctx.degree(), q);
        let mut as_ = a.clone();
        as_.mul_assign(&sk.ntt_q(level), q);
        b.sub_assign(&as_, q);
        Self {
            ctx_id: ctx.id(),
            b,
            a,
            seed,
        }
    }
}

/// A hybrid key-switching key from `s'` to `s`: one RLWE sample over `QP` per digit of
/// group of ciphertext primes (see [`RlweContext::num_digits`]),
/// `b_j = -a_j s + e_j + P s' [q in digit j]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySwitchKey {
    pub(crate) ctx_id: u64,
    pub(crate) b: Vec<Poly<Ntt>>,
    pub(crate) a: Vec<Poly<Ntt>>,
    pub(crate) seed: Seed,
}

impl KeySwitchKey {
    /// A key that switches ciphertexts under `s_from` (NTT form over `QP`) to `sk`.
    pub(crate) fn new<R: RngCore + CryptoRng + ?Sized>(
        sk: &SecretKey,
        s_from: &Poly<Ntt>,
        rng: &mut R,
    ) -> Self {
        let ctx = sk.context();
        let n = ctx.degree();
        let qp = ctx.qp();
        let seed = random_seed(rng);
        let top = ctx.level(ctx.max_level());
        let mut bs = Vec::with_capacity(top.digits.len());
        let mut as_ = Vec::with_capacity(top.digits.len());
        for (j, (range, _)) in top.digits.iter().enumerate() {
            let a = Self::expand_a(ctx, &seed, j);
            let mut b = error_ntt(rng, n, qp);
            let mut t = a.clone();
            t.mul_assign(sk.ntt_qp(), qp);
            b.sub_assign(&t, qp);
            for i in range.clone() {
                let m = qp.modulus(i);
                let pm = ctx.p_mod(m);
                let ps = m.shoup(pm);
                let src = s_from.limb(i);
                for (x, &s) in b.limb_mut(i).iter_mut().zip(src) {
                    *x = m.add(*x, m.mul_shoup(s, pm, ps));
                }
            }
            bs.push(b);
            as_.push(a);
        }
        Self {
            ctx_id: ctx.id(),
            b: bs,
            a: as_,
            seed,
        }
    }

    pub(crate) fn expand_a(ctx: &RlweContext, seed: &Seed, digit: usize) -> Poly<Ntt> {
        let qp = ctx.qp();
        uniform_from_seed(seed, ctx.degree(), qp, digit * qp.len())
    }

    /// The digits of `c` (coefficients modulo `Q_level`), each mod-up to `Q_level P` and in
    /// NTT form.
    pub(crate) fn decompose(ctx: &RlweContext, level: usize, c: &Poly<Coeff>) -> Vec<Poly<Ntt>> {
        let n = ctx.degree();
        let lv = ctx.level(level);
        let qp = &lv.qp;
        lv.digits
            .iter()
            .map(|(range, conv)| {
                let mut buf = Poly::<Coeff>::from_data(n, crate::math::pool::take(qp.len() * n));
                conv.convert(
                    &c.data()[range.start * n..range.end * n],
                    buf.data_mut(),
                    n,
                    false,
                );
                buf.into_ntt(qp)
            })
            .collect()
    }

    /// Key switching from decomposed digits: `sum_j d_j (b_j, a_j)`, divided by `P`.
    pub(crate) fn switch_decomposed(
        &self,
        ctx: &RlweContext,
        level: usize,
        digits: &[Poly<Ntt>],
    ) -> (Poly<Ntt>, Poly<Ntt>) {
        let n = ctx.degree();
        let qp = &ctx.level(level).qp;
        let k = qp.len();
        let mut acc0: Poly<Ntt> = Poly::zero(n, k);
        let mut acc1: Poly<Ntt> = Poly::zero(n, k);
        for (j, d) in digits.iter().enumerate() {
            for (i, limb) in d.limbs().enumerate() {
                let pr = &qp.primes()[i];
                let ki = ctx.qp_limb_index(level, i);
                pr.ntt
                    .mul_accumulate(acc0.limb_mut(i), limb, self.b[j].limb(ki));
                pr.ntt
                    .mul_accumulate(acc1.limb_mut(i), limb, self.a[j].limb(ki));
            }
        }
        rayon::join(|| mod_down(ctx, level, acc0), || mod_down(ctx, level, acc1))
    }

    /// Key-switches `c` (coefficients modulo `Q_level`, and optionally the same polynomial in
    /// NTT form, which saves the transforms of each digit's own limbs): returns `(d0, d1)` in
    /// NTT form over `Q_level` with `d0 + d1 s = c s' + small`.
    pub(crate) fn switch(
        &self,
        ctx: &RlweContext,
        level: usize,
        c: &Poly<Coeff>,
        c_ntt: Option<&Poly<Ntt>>,
    ) -> (Poly<Ntt>, Poly<Ntt>) {
        let n = ctx.degree();
        let lv = ctx.level(level);
        let qp = &lv.qp;
        let k = qp.len();
        let mut acc0: Poly<Ntt> = Poly::zero(n, k);
        let mut acc1: Poly<Ntt> = Poly::zero(n, k);
        let mut buf = Poly::<Coeff>::from_data(n, crate::math::pool::take(k * n));
        for (j, (range, conv)) in lv.digits.iter().enumerate() {
            conv.convert(
                &c.data()[range.start * n..range.end * n],
                buf.data_mut(),
                n,
                false,
            );
            for (i, limb) in buf.limbs_mut().enumerate() {
                let pr = &qp.primes()[i];
                match c_ntt {
                    // The digit's own limbs are `c`'s limbs: reuse their NTT form.
                    Some(cn) if range.contains(&i) => limb.copy_from_slice(cn.limb(i)),
                    _ => pr.ntt.forward(limb),
                }
                let ki = ctx.qp_limb_index(level, i);
                pr.ntt
                    .mul_accumulate(acc0.limb_mut(i), limb, self.b[j].limb(ki));
                pr.ntt
                    .mul_accumulate(acc1.limb_mut(i), limb, self.a[j].limb(ki));
            }
        }
        rayon::join(|| mod_down(ctx, level, acc0), || mod_down(ctx, level, acc1))
    }
}

/// Divides a polynomial over `Q_l P` (NTT form) by `P` with rounding: the result is over `Q_l`.
pub(crate) fn mod_down(ctx: &RlweContext, level: usize, x: Poly<Ntt>) -> Poly<Ntt> {
    let n = ctx.degree();
    let lv = ctx.level(level);
    let kq = level + 1;
    let mut data = x.into_data();
    let mut p_part = data.split_off(kq * n);
    for (limb, pr) in p_part.chunks_exact_mut(n).zip(ctx.p().primes()) {
        pr.ntt.backward(limb);
    }
    let mut conv = Poly::<Coeff>::from_data(n, crate::math::pool::take(kq * n));
    lv.p_to_q.convert(&p_part, conv.data_mut(), n, false);
    for (i, (limb, c)) in data.chunks_exact_mut(n).zip(conv.limbs_mut()).enumerate() {
        let pr = &lv.q.primes()[i];
        pr.ntt.forward(c);
        let m = &pr.modulus;
        let (pinv, pinv_s) = lv.p_inv[i];
        for (x, &y) in limb.iter_mut().zip(c.iter()) {
            *x = m.mul_shoup(m.sub(*x, y), pinv, pinv_s);
        }
    }
    Poly::from_data(n, data)
}

/// The relinearization key: a key-switching key from `s^2` to `s`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelinKey {
    pub(crate) ksk: KeySwitchKey,
}

impl RelinKey {
    /// Generates the relinearization key of `sk`.
    pub fn new<R: RngCore + CryptoRng + ?Sized>(sk: &SecretKey, rng: &mut R) -> Self {
        let qp = sk.context().qp();
        let mut s2 = sk.ntt_qp().clone();
        s2.mul_assign(sk.ntt_qp(), qp);
        let ksk = KeySwitchKey::new(sk, &s2, rng);
        s2.zeroize();
        Self { ksk }
    }
}

/// Galois keys for a chosen set of Galois elements `g` (odd, `< 2N`): key-switching keys
/// from `s(X^g)` to `s(X)`. Only the elements a computation needs are generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaloisKeys {
    pub(crate) ctx_id: u64,
    pub(crate) keys: BTreeMap<usize, KeySwitchKey>,
}

impl GaloisKeys {
    /// Generates keys for the given Galois elements.
    pub fn new<R: RngCore + CryptoRng + ?Sized>(
        sk: &SecretKey,
        elements: &[usize],
        rng: &mut R,
    ) -> Result<Self> {
        let ctx = sk.context();
        let two_n = 2 * ctx.degree();
        let mut keys = BTreeMap::new();
        for &g in elements {
            if g % 2 == 0 || g >= two_n {
                return Err(Error::InvalidParameters {
                    reason: format!(
                        "invalid Galois element {g}: must be odd and below 2N = {two_n}"
                    ),
                });
            }
            if keys.contains_key(&g) {
                continue;
            }
            let mut sg = Poly::from_signed(sk.coefficients(), ctx.qp())
                .automorphism(g, ctx.qp())
                .into_ntt(ctx.qp());
            keys.insert(g, KeySwitchKey::new(sk, &sg, rng));
            sg.zeroize();
        }
        Ok(Self {
            ctx_id: ctx.id(),
            keys,
        })
    }

    /// The Galois elements that have a key.
    pub fn elements(&self) -> impl Iterator<Item = usize> + '_ {
        self.keys.keys().copied()
    }

    pub(crate) fn get(&self, g: usize) -> Result<&KeySwitchKey> {
        self.keys
            .get(&g)
            .ok_or(Error::MissingGaloisKey { element: g })
    }
}
