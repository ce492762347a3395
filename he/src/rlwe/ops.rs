//! Scheme-independent RLWE operations on ciphertext polynomials (NTT form over `Q_level`):
//! noise flooding, division by the last prime, relinearization, Galois automorphisms with
//! key switching, and hoisted rotations. BFV and CKKS build on these (and on
//! [`super::encryptor`] for encryption and decryption).

use rand::{CryptoRng, RngCore};
use zeroize::Zeroize;

use super::context::RlweContext;
use super::keys::KeySwitchKey;
use crate::math::{pool, Coeff, Ntt, Poly, RnsBasis};

/// A noise-flooding polynomial over `q`, in NTT form: each of the `n` coefficients
/// uniform in `[-2^log2_bound, 2^log2_bound)` (from `rng`, a CSPRNG), reduced into each
/// prime. `room` is `log2` of what the caller's decryption tolerates at `level` (named in
/// the error): fails with [`Error::InvalidParameters`] unless `log2_bound < room` and
/// `log2_bound <= 190`.
pub(crate) fn flood_poly<R: RngCore + CryptoRng + ?Sized>(
    n: usize,
    q: &RnsBasis,
    (room, level): (f64, usize),
    log2_bound: u32,
    rng: &mut R,
) -> crate::error::Result<Poly<Ntt>> {
    Ok(flood_coeff(n, q, (room, level), log2_bound, rng)?.into_ntt(q))
}

/// [`flood_poly`] in coefficient form.
pub(crate) fn flood_coeff<R: RngCore + CryptoRng + ?Sized>(
    n: usize,
    q: &RnsBasis,
    (room, level): (f64, usize),
    log2_bound: u32,
    rng: &mut R,
) -> crate::error::Result<Poly<Coeff>> {
    if log2_bound as f64 >= room || log2_bound > 190 {
        return Err(crate::error::Error::InvalidParameters {
            reason: format!(
                "flooding noise of 2^{log2_bound} exceeds the room of 2^{room:.1} at level {level}"
            ),
        });
    }
    // Uniform in [-2^L, 2^L) as `a 2^64 + b`, `a` uniform in [-2^(L-64), 2^(L-64)) and
    // `b` uniform in [0, 2^64): every integer of the interval has exactly one (a, b).
    // `|a| <= 2^127` always; drawn for every coefficient first (the same draws in the same
    // order as one coefficient at a time), then reduced prime by prime.
    let high_bits = log2_bound.saturating_sub(64) + 1;
    let mut a = vec![0i128; n];
    let mut b = vec![0u64; n];
    for (ac, bc) in a.iter_mut().zip(b.iter_mut()) {
        if log2_bound >= 64 {
            let r = ((rng.next_u64() as u128) << 64 | rng.next_u64() as u128)
                & (u128::MAX >> (128 - high_bits));
            *ac = r as i128 - (1i128 << (high_bits - 1));
            *bc = rng.next_u64();
        } else {
            let r = rng.next_u64() & (u64::MAX >> (63 - log2_bound));
            *ac = r as i128 - (1i128 << log2_bound);
        }
    }
    // Every `a` fits an i64 below 2^126 (high_bits <= 63, log2_bound <= 126).
    let narrow = high_bits <= 63;
    let mut poly = Poly::<Coeff>::zero(n, q.len());
    for (i, pr) in q.primes().iter().enumerate() {
        let m = pr.modulus;
        let two64 = m.reduce_u128(1u128 << 64);
        let limb = poly.limb_mut(i);
        for ((v, &ac), &bc) in limb.iter_mut().zip(&a).zip(&b) {
            let ra = if narrow {
                m.reduce_i64(ac as i64)
            } else {
                let r = m.reduce_u128(ac.unsigned_abs());
                if ac < 0 {
                    m.neg(r)
                } else {
                    r
                }
            };
            *v = if log2_bound >= 64 {
                m.add(m.mul_reduced(ra, two64), m.reduce(bc))
            } else {
                ra
            };
        }
    }
    a.zeroize();
    b.zeroize();
    Ok(poly)
}

/// Divides by the last prime `q_level` with rounding: the result is over `Q_{level-1}`.
/// (BFV modulus switching and CKKS rescaling.)
pub(crate) fn divide_by_last_prime(ctx: &RlweContext, level: usize, p: &Poly<Ntt>) -> Poly<Ntt> {
    debug_assert!(level > 0);
    let q = ctx.q_at(level);
    let q_next = ctx.q_at(level - 1);
    let lv = ctx.level(level);
    let last = q.modulus(level);
    let n = ctx.degree();
    let mut lastlimb = pool::take(n);
    lastlimb.copy_from_slice(p.limb(level));
    q.primes()[level].ntt.backward(&mut lastlimb);
    let mut out = p.truncated(level);
    let mut lifted = pool::take(n);
    for (i, o) in out.limbs_mut().enumerate() {
        let pr = &q_next.primes()[i];
        let m = &pr.modulus;
        // Centered lift of the last residue: v, or v - q_last when v > q_last / 2
        // (branch-free: the comparison selects the correction).
        let half = last.value() / 2;
        let q_last_mod = m.reduce(last.value());
        for (x, &v) in lifted.iter_mut().zip(&lastlimb) {
            let corr = if v > half { q_last_mod } else { 0 };
            *x = m.sub(m.reduce(v), corr);
        }
        pr.ntt.forward(&mut lifted);
        let (inv, invs) = lv.q_last_inv[i];
        for (x, &y) in o.iter_mut().zip(&lifted) {
            *x = m.mul_shoup(m.sub(*x, y), inv, invs);
        }
    }
    pool::give(lastlimb);
    pool::give(lifted);
    out
}

/// Relinearizes `(c0, c1, c2)` with `c2` in coefficient form (and, if available, in NTT
/// form): returns `(c0', c1')`.
pub(crate) fn relinearize(
    ctx: &RlweContext,
    level: usize,
    mut c0: Poly<Ntt>,
    mut c1: Poly<Ntt>,
    c2: &Poly<Coeff>,
    c2_ntt: Option<&Poly<Ntt>>,
    rlk: &KeySwitchKey,
) -> (Poly<Ntt>, Poly<Ntt>) {
    let q = ctx.q_at(level);
    let (k0, k1) = rlk.switch(ctx, level, c2, c2_ntt);
    c0.add_assign(&k0, q);
    c1.add_assign(&k1, q);
    (c0, c1)
}

/// Applies `X -> X^g` to `(c0, c1)` and key-switches back to `s`.
pub(crate) fn apply_galois(
    ctx: &RlweContext,
    level: usize,
    c0: &Poly<Ntt>,
    c1: &Poly<Ntt>,
    g: usize,
    key: &KeySwitchKey,
) -> (Poly<Ntt>, Poly<Ntt>) {
    let q = ctx.q_at(level);
    let c0g = c0.automorphism(g, q);
    let c1g_ntt = c1.automorphism(g, q);
    let c1g = c1g_ntt.clone().into_coeff(q);
    let (mut d0, d1) = key.switch(ctx, level, &c1g, Some(&c1g_ntt));
    d0.add_assign(&c0g, q);
    (d0, d1)
}

/// The key-switching decomposition of `c1`, computed once and rotated many times
/// (hoisted rotations): the digits mod-up to `Q_l P`, in NTT form.
pub(crate) struct Decomposition {
    level: usize,
    digits: Vec<Poly<Ntt>>,
}

impl Decomposition {
    /// Decomposes `c1` (NTT form over `Q_level`).
    pub(crate) fn new(ctx: &RlweContext, level: usize, c1: &Poly<Ntt>) -> Self {
        let q = ctx.q_at(level);
        let coeff = c1.clone().into_coeff(q);
        Self {
            level,
            digits: KeySwitchKey::decompose(ctx, level, &coeff),
        }
    }

    /// `(c0, c1) -> rotate by g` using the decomposition of `c1`.
    pub(crate) fn apply_galois(
        &self,
        ctx: &RlweContext,
        c0: &Poly<Ntt>,
        g: usize,
        key: &KeySwitchKey,
    ) -> (Poly<Ntt>, Poly<Ntt>) {
        let level = self.level;
        let q = ctx.q_at(level);
        let qp = &ctx.level(level).qp;
        let rotated: Vec<Poly<Ntt>> = self.digits.iter().map(|d| d.automorphism(g, qp)).collect();
        let (mut d0, d1) = key.switch_decomposed(ctx, level, &rotated);
        d0.add_assign(&c0.automorphism(g, q), q);
        (d0, d1)
    }
}

/// `a += b` or `a -= b` polynomial by polynomial, for two ciphertexts at the same level
/// (modulus `q`, degree `n`); the shorter one is padded with zero polynomials.
pub(crate) fn combine_polys(
    a: &mut Vec<Poly<Ntt>>,
    b: &[Poly<Ntt>],
    q: &RnsBasis,
    n: usize,
    subtract: bool,
) {
    while a.len() < b.len() {
        a.push(Poly::zero(n, q.len()));
    }
    for (x, y) in a.iter_mut().zip(b) {
        if subtract {
            x.sub_assign(y, q);
        } else {
            x.add_assign(y, q);
        }
    }
}

/// `-a` polynomial by polynomial.
pub(crate) fn neg_polys(a: &mut [Poly<Ntt>], q: &RnsBasis) {
    for x in a {
        x.neg_assign(q);
    }
}
