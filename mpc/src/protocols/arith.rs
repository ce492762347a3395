//! Multiplication, matrix product and truncation.

use rand::{CryptoRng, RngCore};

use super::{check_len, exchange};
use crate::error::{Error, Result};
use crate::net::Channel;
use crate::party::Party;
use crate::protocols::{boolean, compare};
use crate::ring::{mask, Ring};
use crate::triples::{ArithTriples, MatrixTriple};

/// Elementwise product of shares with Beaver triples (one round).
pub fn mul<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    x: &[u64],
    y: &[u64],
    t: &ArithTriples,
) -> Result<Vec<u64>> {
    let ring = t.ring;
    let n = x.len();
    check_len("mul: y length", n, y.len())?;
    check_len("mul: triples", n, t.len())?;
    let mut de = ring.sub_vec(x, &t.a);
    de.extend(ring.sub_vec(y, &t.b));
    let other = exchange(p, ring, &de, "mul openings")?;
    let de = ring.add_vec(&de, &other);
    let (d, e) = de.split_at(n);
    let p0 = p.is_p0();
    Ok((0..n)
        .map(|i| {
            let mut z = ring.add(
                t.c[i],
                ring.add(ring.mul(d[i], t.b[i]), ring.mul(e[i], t.a[i])),
            );
            if p0 {
                z = ring.add(z, ring.mul(d[i], e[i]));
            }
            z
        })
        .collect())
}

/// Matrix product `X Y` of shares, `X` of `m x k`, `Y` of `k x n` (row-major), with a
/// matrix triple of that shape (one round).
pub fn matmul<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    x: &[u64],
    y: &[u64],
    t: &MatrixTriple,
) -> Result<Vec<u64>> {
    let ring = t.ring;
    let (m, k, n) = (t.m, t.k, t.n);
    check_len("matmul: X size", m * k, x.len())?;
    check_len("matmul: Y size", k * n, y.len())?;
    let mut de = ring.sub_vec(x, &t.a);
    de.extend(ring.sub_vec(y, &t.b));
    let other = exchange(p, ring, &de, "matmul openings")?;
    let de = ring.add_vec(&de, &other);
    let (d, e) = de.split_at(m * k);
    let mut z = ring.add_vec(&t.c, &ring.matmul(d, &t.b, m, k, n));
    z = ring.add_vec(&z, &ring.matmul(&t.a, e, m, k, n));
    if p.is_p0() {
        z = ring.add_vec(&z, &ring.matmul(d, e, m, k, n));
    }
    Ok(z)
}

/// `W X` where party `owner` holds `W` (`m x k`, row-major) in the clear and `X` (`k x n`)
/// is shared: correlated OTs in one direction, no triple. The other party chooses with
/// each bit of each entry of its share of `X`; the owner's correlation is the matching
/// column of `W` shifted by the bit's weight (`k n l` OTs of `m` elements: `16 + m l / 8`
/// bytes each, half of a Beaver matrix triple from OT, whose Gilboa products run both
/// ways, and no openings). The owner adds `W` times its own share locally. `w` is `Some`
/// on the owner's side only. Both parties get their share of `W X` (`m x n`).
#[allow(clippy::too_many_arguments)]
pub fn matmul_owned<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    owner: crate::share::PartyId,
    w: Option<&[u64]>,
    x: &[u64],
    m: usize,
    k: usize,
    n: usize,
) -> Result<Vec<u64>> {
    check_len("matmul_owned: X size", k * n, x.len())?;
    let l = ring.bits() as usize;
    let mut z = vec![0u64; m * n];
    if m == 0 || k * n == 0 {
        return Ok(z);
    }
    let ots = k * n * l;
    match owner {
        crate::share::PartyId::P0 => p.ensure_ots(ots, 0)?,
        crate::share::PartyId::P1 => p.ensure_ots(0, ots)?,
    }
    let parts = p.parts();
    if parts.id == owner {
        let w = w.ok_or(Error::InvalidInput {
            what: "matmul_owned: the owner's matrix",
            expected: (m * k) as u64,
            found: 0,
        })?;
        check_len("matmul_owned: W size", m * k, w.len())?;
        let mut deltas = Vec::with_capacity(k * n * l * m);
        for t in 0..k {
            for _j in 0..n {
                for b in 0..l {
                    deltas.extend((0..m).map(|i| ring.reduce(w[i * k + t] << b)));
                }
            }
        }
        let m0 = parts.ot_send.send_correlated(parts.ch, ring, &deltas, m)?;
        z = ring.matmul(w, x, m, k, n);
        for t in 0..k {
            for j in 0..n {
                for b in 0..l {
                    let base = ((t * n + j) * l + b) * m;
                    for i in 0..m {
                        z[i * n + j] = ring.sub(z[i * n + j], m0[base + i]);
                    }
                }
            }
        }
    } else {
        let mut choices = Vec::with_capacity(k * n * l);
        for &v in x {
            choices.extend((0..l).map(|b| ((v >> b) & 1) as u8));
        }
        let pending = parts
            .ot_recv
            .start_receive_correlated(parts.ch, ring, &choices, m)?;
        parts.ch.flush()?;
        let got = crate::ot::OtReceiver::finish_receive_correlated(parts.ch, pending)?;
        for t in 0..k {
            for j in 0..n {
                for b in 0..l {
                    let base = ((t * n + j) * l + b) * m;
                    for i in 0..m {
                        z[i * n + j] = ring.add(z[i * n + j], got[base + i]);
                    }
                }
            }
        }
    }
    Ok(z)
}

/// Probabilistic local truncation by `f` bits (SecureML): no communication. For a signed
/// value with `|x| < 2^lx`, the result is `floor(x / 2^f)` or one more, except with
/// probability at most `2^(lx + 1 - l)`, when it is wrong by about `2^(l - f)`.
pub fn trunc_local<C: Channel, R: RngCore + CryptoRng>(
    p: &Party<C, R>,
    ring: Ring,
    x: &[u64],
    f: u32,
) -> Vec<u64> {
    if f == 0 {
        return x.to_vec();
    }
    let p0 = p.is_p0();
    x.iter()
        .map(|&v| {
            if p0 {
                v >> f
            } else {
                ring.neg(ring.neg(v) >> f)
            }
        })
        .collect()
}

/// Faithful truncation: exactly `floor(x / 2^f)` for every signed `x` (arithmetic shift).
/// Two millionaire comparisons (the wrap of the shares over `l` bits and the carry of
/// their low `f` bits) and two B2A conversions.
pub fn trunc_faithful<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
    f: u32,
) -> Result<Vec<u64>> {
    if f == 0 {
        return Ok(x.to_vec());
    }
    check_trunc_bits(ring, f)?;
    let l = ring.bits();
    let p0 = p.is_p0();
    let half = 1u64 << (l - 1);
    // Offset to unsigned: u = x + 2^(l-1).
    let u: Vec<u64> = x
        .iter()
        .map(|&v| if p0 { ring.add(v, half) } else { v })
        .collect();
    // wrap = 1{u0 + u1 >= 2^l} = 1{u0 > 2^l - 1 - u1}; the carry of the low f bits alike.
    let wrap_in: Vec<u64> = if p0 {
        u.clone()
    } else {
        u.iter().map(|&v| ring.mask() - v).collect()
    };
    let mut bits = compare::millionaire(p, l, &wrap_in)?;
    bits.extend(low_bits_carry(p, &u, f)?);
    let z = shift_shares(p, ring, &u, &bits, f)?;
    let off = half >> f;
    Ok(z.into_iter()
        .map(|v| if p0 { ring.sub(v, off) } else { v })
        .collect())
}

/// Exact truncation of signed values with one bit of headroom: exactly `floor(x / 2^f)`
/// (arithmetic shift) for every `x` with `|x| < 2^(l-2)`, at the cost of
/// [`trunc_nonneg`] (one `f`-bit millionaire, one B2A of one bit and one correlated OT)
/// instead of [`trunc_faithful`]'s two millionaires (`l` and `f` bits). Party 0 adds
/// `2^(l-2)`, which makes the value non-negative below `2^(l-1)` (its top bit known to be
/// 0), truncates it as non-negative and subtracts `2^(l-2-f)`.
///
/// Outside that range the result is wrong by a multiple of `2^(l-f-1)`. Use it where values
/// are bounded well inside the ring, e.g. the 64-bit training ring at `f = 16`, whose
/// products at `2^32` would have to exceed `2^30` in value to leave it.
pub fn trunc_bounded<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
    f: u32,
) -> Result<Vec<u64>> {
    biased_by_quarter(p, ring, x, f, |p, u| trunc_nonneg(p, ring, u, f))
}

/// A truncation by `f` of signed values below `2^(l-2)` through one of non-negative values
/// below `2^(l-1)`: party 0 adds `2^(l-2)`, `trunc` truncates, party 0 subtracts
/// `2^(l-2-f)`.
fn biased_by_quarter<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
    f: u32,
    trunc: impl FnOnce(&mut Party<C, R>, &[u64]) -> Result<Vec<u64>>,
) -> Result<Vec<u64>> {
    if f == 0 {
        return Ok(x.to_vec());
    }
    check_trunc_bits(ring, f)?;
    let p0 = p.is_p0();
    // f < l (checked), so l >= 2.
    let quarter = 1u64 << (ring.bits() - 2);
    let u: Vec<u64> = x
        .iter()
        .map(|&v| if p0 { ring.add(v, quarter) } else { v })
        .collect();
    let z = trunc(p, &u)?;
    let off = quarter >> f;
    Ok(z.into_iter()
        .map(|v| if p0 { ring.sub(v, off) } else { v })
        .collect())
}

/// Truncation within one unit in the last place, for signed values with one bit of
/// headroom (`|x| < 2^(l-2)`, as [`trunc_bounded`]): `floor(x / 2^f)` or one less, never
/// a wrap of the ring. The wrap of the shares is exact (one correlated OT in `Z_2^f`, as
/// in [`trunc_nonneg`]); the carry of their low `f` bits is dropped, which saves
/// [`trunc_bounded`]'s `f`-bit millionaire and B2A. For steps whose stated error already
/// covers `2^-f` (the last truncation of a piecewise-linear approximation), not for the
/// engine's truncations, which stay exact.
pub fn trunc_bounded_within_ulp<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
    f: u32,
) -> Result<Vec<u64>> {
    biased_by_quarter(p, ring, x, f, |p, u| trunc_nonneg_within_ulp(p, ring, u, f))
}

/// Faithful truncation of values known to be non-negative: exactly `floor(x / 2^f)` for
/// every `x` in `[0, 2^(l-1))` (most significant bit 0, e.g. the output of a ReLU), with
/// one `f`-bit millionaire comparison instead of the two (`l` and `f` bits) of
/// [`trunc_faithful`]. For `x` outside that range the result is wrong: use it only where
/// non-negativity is guaranteed by the protocol, not by a range assumption.
///
/// With unsigned shares `x0 + x1 = x + w 2^l`, the wrap `w` is `msb(x0) OR msb(x1)` when
/// `msb(x) = 0` (both set: the sum is at least `2^l`; both clear: below `2^l`; exactly one:
/// the sum is at least `2^(l-1)`, which `x < 2^(l-1)` only allows with a wrap). Each party
/// knows its own bit, so `w` costs one correlated OT in `Z_2^f`; the
/// carry `c` of the low `f` bits is a millionaire comparison and one B2A, and
/// `floor(x / 2^f) = (x0 >> f) + (x1 >> f) + c - w 2^(l-f)`.
pub fn trunc_nonneg<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
    f: u32,
) -> Result<Vec<u64>> {
    if f == 0 {
        return Ok(x.to_vec());
    }
    check_trunc_bits(ring, f)?;
    let carry = low_bits_carry(p, x, f)?;
    let c = boolean::b2a(p, ring, &carry)?;
    // (x0 >> f) + (x1 >> f) - w 2^(l-f), then the carry.
    let t = trunc_nonneg_within_ulp(p, ring, x, f)?;
    Ok(ring.add_vec(&t, &c))
}

/// Shares of the top `l - s` bits of `x`, `floor(x / 2^s) mod 2^(l - s)`, in `Z_2^(l - s)`:
/// exact for every `x` (no range assumption), for one `s`-bit millionaire and one B2A of
/// one bit. With unsigned shares `x0 + x1 = x + w 2^l`, `floor((x0 + x1) / 2^s) = (x0 >>
/// s) + (x1 >> s) + c` for the carry `c` of the low `s` bits, and the wrap's term `w
/// 2^(l - s)` vanishes modulo `2^(l - s)`. As a signed `(l - s)`-bit value it is
/// `floor(x / 2^s)` of the signed `x`, so its sign is `x`'s.
pub fn high_bits<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
    s: u32,
) -> Result<Vec<u64>> {
    check_trunc_bits(ring, s)?;
    let high = Ring::new(ring.bits() - s)?;
    if s == 0 {
        return Ok(x.to_vec());
    }
    let carry = low_bits_carry(p, x, s)?;
    let c = boolean::b2a(p, high, &carry)?;
    Ok(x.iter()
        .zip(&c)
        .map(|(&v, &ci)| high.add(ring.reduce(v) >> s, ci))
        .collect())
}

/// Truncation within one unit in the last place of values known to be non-negative
/// (`[0, 2^(l-1))`, as [`trunc_nonneg`]): `floor(x / 2^f)` or one less, never a wrap of
/// the ring. The wrap `w` of the shares is exact (one correlated OT in `Z_2^f`, as in
/// [`trunc_nonneg`]) and the carry of their low `f` bits is dropped, which saves
/// [`trunc_nonneg`]'s `f`-bit millionaire and B2A: the known-MSB truncation of Cheetah
/// (Huang et al., USENIX Security 2022), for steps whose stated error covers `2^-f`; the
/// engine's truncations stay exact.
pub fn trunc_nonneg_within_ulp<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
    f: u32,
) -> Result<Vec<u64>> {
    if f == 0 {
        return Ok(x.to_vec());
    }
    check_trunc_bits(ring, f)?;
    let w = wrap_times(p, ring, x, f)?;
    Ok(x.iter()
        .zip(&w)
        .map(|(&v, &wi)| ring.sub(v >> f, wi))
        .collect())
}

/// Shares of `w 2^(l - f)` for the wrap `w = msb(x0) OR msb(x1)` of [`trunc_nonneg`]:
/// only `w mod 2^f` matters once scaled by `2^(l - f)` (see [`msb_or`]).
fn wrap_times<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
    f: u32,
) -> Result<Vec<u64>> {
    let shift = ring.bits() - f;
    Ok(msb_or(p, ring, x, f)?
        .into_iter()
        .map(|v| ring.reduce(v << shift))
        .collect())
}

/// Arithmetic shares in `Z_2^k` of `w = msb(x0) OR msb(x1)` for the shares `x` in `ring`:
/// `w = m0 + m1 - m0 m1`, the product by one correlated OT in `Z_2^k` (party 0 sending,
/// correlation `m0`, party 1 choosing `m1`): `1 + 8 ceil(k / 8)` bits per value.
fn msb_or<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
    k: u32,
) -> Result<Vec<u64>> {
    let rk = Ring::new(k)?;
    let own: Vec<u8> = x.iter().map(|&v| ring.msb(v) as u8).collect();
    p.ensure_ots(x.len(), 0)?;
    let parts = p.parts();
    Ok(if parts.id == crate::share::PartyId::P0 {
        let deltas: Vec<u64> = own.iter().map(|&m| m as u64).collect();
        let x0 = parts.ot_send.send_correlated(parts.ch, rk, &deltas, 1)?;
        own.iter()
            .zip(&x0)
            .map(|(&m, &v)| rk.add(m as u64, v))
            .collect()
    } else {
        let got = parts.ot_recv.receive_correlated(parts.ch, rk, &own, 1)?;
        own.iter()
            .zip(&got)
            .map(|(&m, &g)| rk.sub(m as u64, g))
            .collect()
    })
}

/// Extends shares of values known to be non-negative (`[0, 2^(m-1)]`, most significant
/// bit 0) from `from = Z_2^m` to the wider `to = Z_2^l`: the same values, shared in
/// `Z_2^l`. With `x0 + x1 = x + w 2^m` over the integers, `w = msb(x0) OR msb(x1)` (see
/// [`trunc_nonneg`]), one correlated OT in `Z_2^(l-m)`. For a value outside that range
/// the result is wrong by a multiple of `2^m`.
pub fn extend_nonneg<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    from: Ring,
    to: Ring,
    x: &[u64],
) -> Result<Vec<u64>> {
    let (m, l) = (from.bits(), to.bits());
    if l <= m {
        return Err(Error::InvalidInput {
            what: "extension to a wider ring: bits of the target ring",
            expected: u64::from(m) + 1,
            found: u64::from(l),
        });
    }
    let w = msb_or(p, from, x, l - m)?;
    Ok(x.iter()
        .zip(&w)
        .map(|(&v, &w)| to.sub(from.reduce(v), to.reduce(w << m)))
        .collect())
}

fn check_trunc_bits(ring: Ring, f: u32) -> Result<()> {
    let l = ring.bits();
    if f >= l {
        return Err(Error::InvalidInput {
            what: "truncation bits must be below the ring width",
            expected: l as u64 - 1,
            found: f as u64,
        });
    }
    Ok(())
}

/// Boolean shares of the carry out of the low `f` bits of the unsigned shares `u`:
/// `1{u0 mod 2^f > 2^f - 1 - (u1 mod 2^f)}`, one `f`-bit millionaire comparison.
fn low_bits_carry<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    u: &[u64],
    f: u32,
) -> Result<Vec<u8>> {
    let lo_mask = mask(f);
    let input: Vec<u64> = if p.is_p0() {
        u.iter().map(|&v| v & lo_mask).collect()
    } else {
        u.iter().map(|&v| lo_mask - (v & lo_mask)).collect()
    };
    compare::millionaire(p, f, &input)
}

/// `(u0 >> f) + (u1 >> f) + c - w 2^(l-f)` from the boolean shares `bits = [w.., c..]` of
/// the wrap and the carry (one B2A for both).
fn shift_shares<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    u: &[u64],
    bits: &[u8],
    f: u32,
) -> Result<Vec<u64>> {
    let arith = boolean::b2a(p, ring, bits)?;
    let (w, c) = arith.split_at(u.len());
    let shift = 1u64.wrapping_shl(ring.bits() - f) & ring.mask();
    Ok((0..u.len())
        .map(|i| ring.sub(ring.add(u[i] >> f, c[i]), ring.mul(w[i], shift)))
        .collect())
}

/// Shares of a public constant: party 0 holds it, party 1 holds zero.
pub fn constant<C: Channel, R: RngCore + CryptoRng>(
    p: &Party<C, R>,
    ring: Ring,
    v: u64,
    n: usize,
) -> Vec<u64> {
    vec![if p.is_p0() { ring.reduce(v) } else { 0 }; n]
}
