//! Fixed-point approximations: exp, reciprocal, sigmoid and softmax.
//!
//! Products are truncated with [`arith::trunc_local`] where the ring has headroom for it
//! (`l >= 2 f + 32`, e.g. `l = 64`, `f = 16`: failure probability at most `2^-30` per
//! product of values below 2), and with the exact [`arith::trunc_faithful`] otherwise
//! (e.g. the inference ring, `l = 40`, `f = 12`), where [`exp`] also squares with `(l - 2 -
//! 2f) / 2` guard bits so that its rounding stays within the same bound. Stated errors
//! (checked by the tests with `l = 64`, `f = 16` and with `l = 40`, `f = 12`):
//!
//! | function | domain | error |
//! |---|---|---|
//! | [`exp`] | `x <= 0` | absolute `<= 2^-7` (limit `(1 + x/2^8)^(2^8)`, within `2^-8.9`, clamped at 0 for `x < -256`; the local truncation of `x / 2^8` is off by one unit of `2^-16` either way, `2^-8` after the squarings) |
//! | [`reciprocal`] | `1 <= x <= bound` | relative `<= 2^-10` |
//! | [`sigmoid`] | all `x` | absolute `<= 2^-8` |
//! | [`softmax`] | rows of any values | absolute `<= 2^-7` per entry |
//! | [`sigmoid_pwl`] | all `x` (`|x| < 2^15` where `l >= 2f + 32`), any ring | absolute `<=` [`SIGMOID_PWL_ERROR`] |
//! | [`tanh_pwl`] | the same | absolute `<=` [`TANH_PWL_ERROR`] |
//! | [`sigmoid_precise`] | the same | absolute `<=` [`SIGMOID_PRECISE_ERROR`] |

use rand::{CryptoRng, RngCore};

use super::{arith, boolean, compare};
use crate::error::{Error, Result};
use crate::fixed::{quantize, FixedPoint};
use crate::net::Channel;
use crate::party::Party;
use crate::ring::Ring;
use crate::triples::TripleSource;

/// Squarings of the exp limit.
pub const EXP_SQUARINGS: u32 = 8;

/// Fixed-point product with truncation.
pub fn fmul<C: Channel, R: RngCore + CryptoRng, S: TripleSource<C, R>>(
    p: &mut Party<C, R>,
    src: &mut S,
    fp: FixedPoint,
    x: &[u64],
    y: &[u64],
) -> Result<Vec<u64>> {
    let t = src.arith(p, fp.ring(), x.len())?;
    let z = arith::mul(p, x, y, &t)?;
    trunc(p, fp, &z, fp.frac_bits())
}

/// Whether the ring has headroom for probabilistic local truncation of products of
/// values below 2 (`l >= 2 f + 32`: failure probability at most `2^-30`).
fn local_truncation_ok(fp: FixedPoint) -> bool {
    fp.ring().bits() >= 2 * fp.frac_bits() + 32
}

/// Truncation by `bits`: local where the ring has headroom, exact otherwise.
fn trunc<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    fp: FixedPoint,
    z: &[u64],
    bits: u32,
) -> Result<Vec<u64>> {
    if local_truncation_ok(fp) {
        Ok(arith::trunc_local(p, fp.ring(), z, bits))
    } else {
        arith::trunc_faithful(p, fp.ring(), z, bits)
    }
}

/// `e^x` for `x <= 0`: `max(0, 1 + x / 2^8)^(2^8)` by repeated squaring. Without room
/// for local truncation, the squarings run at `g = min(8, (l - 2 - 2f) / 2)` extra
/// fractional bits with exact truncations (the values stay in `[0, 1]`, so their squares
/// below `2^(l - 2)`), and the result is truncated back to `2^f` at the end.
pub fn exp<C: Channel, R: RngCore + CryptoRng, S: TripleSource<C, R>>(
    p: &mut Party<C, R>,
    src: &mut S,
    fp: FixedPoint,
    x: &[u64],
) -> Result<Vec<u64>> {
    let ring = fp.ring();
    let f = fp.frac_bits();
    let g = if local_truncation_ok(fp) {
        0
    } else {
        ((ring.bits() - 2 - 2 * f) / 2).min(EXP_SQUARINGS)
    };
    // 1 + x / 2^8 at scale 2^(f + g).
    let one = ring.reduce(1u64 << (f + g));
    let mut y = trunc(p, fp, x, EXP_SQUARINGS - g)?;
    if p.is_p0() {
        y.iter_mut().for_each(|v| *v = ring.add(*v, one));
    }
    let mut y = compare::relu(p, ring, &y)?;
    for _ in 0..EXP_SQUARINGS {
        y = if g == 0 {
            fmul(p, src, fp, &y.clone(), &y)?
        } else {
            let t = src.arith(p, ring, y.len())?;
            let z = arith::mul(p, &y, &y, &t)?;
            arith::trunc_nonneg(p, ring, &z, f + g)?
        };
    }
    arith::trunc_nonneg(p, ring, &y, g)
}

/// `1 / x` for `1 <= x <= bound` by Newton's iteration `y <- y (2 - x y)` from
/// `y0 = 1 / bound`, with `ceil(log2(10 bound)) + 2` iterations.
pub fn reciprocal<C: Channel, R: RngCore + CryptoRng, S: TripleSource<C, R>>(
    p: &mut Party<C, R>,
    src: &mut S,
    fp: FixedPoint,
    x: &[u64],
    bound: f64,
) -> Result<Vec<u64>> {
    if !(bound >= 1.0 && bound.is_finite()) {
        return Err(Error::OutOfRange {
            value: bound,
            min: 1.0,
            max: fp.max_value(),
        });
    }
    let ring = fp.ring();
    let n = x.len();
    let two = fp.encode(2.0)?;
    let mut y = arith::constant(p, ring, fp.encode(1.0 / bound)?, n);
    let iters = (10.0 * bound).log2().ceil() as u32 + 2;
    for _ in 0..iters {
        let xy = fmul(p, src, fp, x, &y)?;
        let mut e: Vec<u64> = xy.iter().map(|&v| ring.neg(v)).collect();
        if p.is_p0() {
            e.iter_mut().for_each(|v| *v = ring.add(*v, two));
        }
        y = fmul(p, src, fp, &y, &e)?;
    }
    Ok(y)
}

/// The logistic function `1 / (1 + e^-x)`: `s = sigma(|x|) = 1 / (1 + e^-|x|)` (the
/// denominator in `[1, 2]`), then `x >= 0 ? s : 1 - s`.
pub fn sigmoid<C: Channel, R: RngCore + CryptoRng, S: TripleSource<C, R>>(
    p: &mut Party<C, R>,
    src: &mut S,
    fp: FixedPoint,
    x: &[u64],
) -> Result<Vec<u64>> {
    let ring = fp.ring();
    let n = x.len();
    let pos = compare::drelu(p, ring, x)?;
    // -|x| = x - 2 * (x >= 0) * x.
    let twice: Vec<u64> = x.iter().map(|&v| ring.add(v, v)).collect();
    let m = boolean::mux(p, ring, &pos, &twice)?;
    let neg_abs = ring.sub_vec(x, &m);
    let e = exp(p, src, fp, &neg_abs)?;
    let one = fp.encode(1.0)?;
    let mut den = e;
    if p.is_p0() {
        den.iter_mut().for_each(|v| *v = ring.add(*v, one));
    }
    let s = reciprocal(p, src, fp, &den, 2.0)?;
    // 1 - s + pos * (2 s - 1).
    let mut base: Vec<u64> = s.iter().map(|&v| ring.neg(v)).collect();
    let mut diff: Vec<u64> = s.iter().map(|&v| ring.add(v, v)).collect();
    if p.is_p0() {
        base.iter_mut().for_each(|v| *v = ring.add(*v, one));
        diff.iter_mut().for_each(|v| *v = ring.sub(*v, one));
    }
    let sel = boolean::mux(p, ring, &pos, &diff)?;
    debug_assert_eq!(sel.len(), n);
    Ok(ring.add_vec(&base, &sel))
}

/// Softmax of each row of `cols` values: `e^(x - max) / sum e^(x - max)`.
pub fn softmax<C: Channel, R: RngCore + CryptoRng, S: TripleSource<C, R>>(
    p: &mut Party<C, R>,
    src: &mut S,
    fp: FixedPoint,
    x: &[u64],
    cols: usize,
) -> Result<Vec<u64>> {
    if cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(Error::InvalidInput {
            what: "softmax: row length must divide the input",
            expected: cols as u64,
            found: x.len() as u64,
        });
    }
    let ring = fp.ring();
    let rows = x.len() / cols;
    let m = compare::max_pool(p, ring, x, cols)?;
    let d: Vec<u64> = (0..x.len()).map(|k| ring.sub(x[k], m[k / cols])).collect();
    let e = exp(p, src, fp, &d)?;
    let sums: Vec<u64> = (0..rows)
        .map(|r| {
            e[r * cols..(r + 1) * cols]
                .iter()
                .fold(0, |a, &v| ring.add(a, v))
        })
        .collect();
    let inv = reciprocal(p, src, fp, &sums, cols as f64)?;
    let inv_b: Vec<u64> = (0..x.len()).map(|k| inv[k / cols]).collect();
    fmul(p, src, fp, &e, &inv_b)
}

/// Knots of the piecewise-linear sigmoid: `-6, -5, ..., 6`; constant beyond.
const SIGMOID_KNOTS: std::ops::RangeInclusive<i64> = -6..=6;

/// Largest error of [`sigmoid_pwl`] against the sigmoid (chords of width 1: at most
/// `max|sigmoid''| / 8 < 0.0121`; beyond `|x| = 6`, `sigmoid(-6) < 0.0025`; plus the
/// fixed-point rounding).
pub const SIGMOID_PWL_ERROR: f64 = 0.0125;

/// The knots `|x|` of the piecewise-linear tanh ([`tanh_pwl`]): every quarter up to 2, where
/// the curvature is, then every half up to 4; constant beyond.
const TANH_KNOTS: [f64; 13] = [
    0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0,
];

/// Largest error of [`tanh_pwl`] against tanh: the chords are within 0.0060 of it (measured
/// on a grid of step `2^-14` in the test `tanh_pwl_chords_are_within_the_stated_error`;
/// `1 - tanh(4) < 0.00068` beyond the last knot), plus the fixed-point rounding.
pub const TANH_PWL_ERROR: f64 = 0.0065;

/// The sigmoid on shares at scale `2^f` (result at scale `2^f`): the chord interpolation
/// at the integer knots in `[-6, 6]`. By symmetry, `sigmoid(x) = 1/2 + sign(x) h(|x|)` with
/// `h(a) = c_0 a + sum_k c_k ReLU(a - k)` for the knots `k = 1..6` (`c_k` the change of
/// slope at knot `k`): the sign and six ReLUs (any ring width, unlike [`sigmoid`], which
/// needs 64 bits): seven exact comparisons per element, or in the training ring the sign
/// and the six knots from the integer part (the carry of the fraction, the integer part's
/// sign, one comparison and one table look-up: see [`odd_pwl`] and [`knots_on_high`]), then
/// multiplexers, local products with public constants, one truncation (see [`odd_pwl`]).
pub fn sigmoid_pwl<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    fp: FixedPoint,
    x: &[u64],
) -> Result<Vec<u64>> {
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let knots: Vec<f64> = (0..=*SIGMOID_KNOTS.end()).map(|k| k as f64).collect();
    odd_pwl(p, fp, x, &knots, |a| sig(a) - 0.5, 0.5)
}

/// tanh on shares at scale `2^f` (result at scale `2^f`), within [`TANH_PWL_ERROR`]: the
/// chord interpolation at the knots [`TANH_KNOTS`] by symmetry (see [`odd_pwl`]): the sign
/// and twelve ReLUs: thirteen exact comparisons per element, or in the training ring the
/// sign, one comparison and one table look-up.
pub fn tanh_pwl<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    fp: FixedPoint,
    x: &[u64],
) -> Result<Vec<u64>> {
    odd_pwl(p, fp, x, &TANH_KNOTS, f64::tanh, 0.0)
}

/// Largest error of [`sigmoid_precise`] against the sigmoid: half that of [`tanh_pwl`],
/// since `sigmoid(x) = (1 + tanh(x / 2)) / 2`.
pub const SIGMOID_PRECISE_ERROR: f64 = TANH_PWL_ERROR / 2.0;

/// The sigmoid on shares at scale `2^f`, four times closer than [`sigmoid_pwl`] for about
/// twice its comparisons: `1/2 + tanh(x / 2) / 2` with the chords of [`tanh_pwl`] (its
/// knots doubled, so no scaling of `x` is needed), within [`SIGMOID_PRECISE_ERROR`];
/// thirteen exact comparisons per element (in the training ring, like [`tanh_pwl`], the
/// sign, one comparison and one table look-up). Private inference uses it where a sigmoid
/// inside a network feeds later layers (a class can turn on its error).
pub fn sigmoid_precise<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    fp: FixedPoint,
    x: &[u64],
) -> Result<Vec<u64>> {
    let knots: Vec<f64> = TANH_KNOTS.iter().map(|k| 2.0 * k).collect();
    odd_pwl(p, fp, x, &knots, |a| (a / 2.0).tanh() / 2.0, 0.5)
}

/// Integer bits of the inputs for which [`odd_pwl`]'s comparisons run in the narrow ring
/// `Z_2^(f + 16)` (see [`pwl_narrow_ring`]): exact for `|x| < 2^15`.
pub const PWL_NARROW_INT_BITS: u32 = 15;

/// The ring of [`odd_pwl`]'s comparisons where the ring has room to spare (`l >= 2f + 32`,
/// the training ring): `Z_2^(f + 16)`, so that each comparison is a millionaire on `f +
/// 15` bits instead of `l - 1`. `None` in narrower rings (the inference ring), which
/// compare in the ring itself.
fn pwl_narrow_ring(fp: FixedPoint) -> Option<Ring> {
    let (l, f) = (fp.ring().bits(), fp.frac_bits());
    if l >= 2 * f + 32 {
        Ring::new(f + PWL_NARROW_INT_BITS + 1).ok()
    } else {
        None
    }
}

/// The fewest fractional bits `g < f` that represent every knot exactly, where the part
/// of a value below them is worth splitting off (`f - g >= 4`): the knots are then
/// compared with the value's high part (see [`knots_on_high`]).
fn knot_bits(f: u32, knots: &[f64]) -> Option<u32> {
    (0..f)
        .find(|&g| {
            knots.iter().all(|&k| {
                let v = k * f64::from(g).exp2();
                v == v.trunc()
            })
        })
        .filter(|&g| f - g >= 4)
}

/// Boolean shares of `[a >= k]` for each knot `k` (knot-major, every knot a multiple of
/// `2^-g`) from the shares `hi = floor(a / 2^(f - g))` in `small` of values `a >= 0` at
/// scale `2^f`: `[a >= k]` is `[hi >= k 2^g]`. The knots as integers below `2^w` take one
/// comparison with `2^w` and one 1-of-`2^(w + 1)` table look-up for all of them
/// ([`compare::at_least_small`]: for the sigmoid's six knots 4 correlated OTs and 94 bits
/// instead of six 15-bit millionaires, about 180 OTs and 450 bits), or, where the table
/// would be larger than the comparisons, a millionaire on the high part per knot.
fn knots_on_high<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    small: Ring,
    g: u32,
    knots: &[f64],
    hi: &[u64],
) -> Result<Vec<u8>> {
    let ks: Vec<u64> = knots.iter().map(|&k| quantize(k, g) as u64).collect();
    let top = ks.iter().copied().max().unwrap_or(1);
    let w = 64 - top.saturating_sub(1).leading_zeros();
    // A 1-of-2^(w + 1) OT of one bit per knot against about 5 bits per compared bit and
    // knot.
    let table_ok = ks.iter().all(|&k| k >= 1)
        && w <= compare::SMALL_THRESHOLD_BITS
        && (2u64 << w) < 5 * u64::from(small.bits() - 1);
    if table_ok {
        compare::at_least_small(p, small, &ks, hi)
    } else {
        knots_by_comparisons(p, small, g, knots, hi)
    }
}

/// Boolean shares of `[a >= k]` for each knot (knot-major) by one comparison each, `a`
/// shared in `ring` at scale `2^scale`.
fn knots_by_comparisons<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    scale: u32,
    knots: &[f64],
    a: &[u64],
) -> Result<Vec<u8>> {
    let p0 = p.is_p0();
    let mut shifted = Vec::with_capacity(a.len() * knots.len());
    for &k in knots {
        let c = ring.from_signed(quantize(k, scale));
        shifted.extend(a.iter().map(|&v| if p0 { ring.sub(v, c) } else { v }));
    }
    compare::drelu(p, ring, &shifted)
}

/// Shares of the ones' complement absolute value `b (2 v + 1) - v - 1` (`v` for `b = 1`,
/// `-v - 1` for `b = 0`) of every value of `vs` (each a list of shares in `ring`, all of
/// them selected by the same bits `b`): one multiplexer for all.
fn ones_complement_abs<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    b: &[u8],
    vs: &[&[u64]],
) -> Result<Vec<Vec<u64>>> {
    let p0 = p.is_p0();
    let bits: Vec<u8> = vs.iter().flat_map(|_| b.iter().copied()).collect();
    let odd: Vec<u64> = vs
        .iter()
        .flat_map(|v| v.iter())
        .map(|&v| {
            let t = ring.add(v, v);
            if p0 {
                ring.add(t, 1)
            } else {
                t
            }
        })
        .collect();
    let bo = boolean::mux(p, ring, &bits, &odd)?;
    Ok(vs
        .iter()
        .zip(bo.chunks(b.len().max(1)))
        .map(|(v, bo)| {
            v.iter()
                .zip(bo)
                .map(|(&v, &o)| {
                    let r = ring.sub(o, v);
                    if p0 {
                        ring.sub(r, 1)
                    } else {
                        r
                    }
                })
                .collect()
        })
        .collect())
}

/// `mid + sign(x) h(|x|)` on shares at scale `2^f`, where `h` is the chord interpolation of
/// `g` at the non-negative `knots` (the first 0, `g(0) = 0`), constant beyond the last:
/// `h(a) = c_0 a + sum_k c_k ReLU(a - k_k)` (`c_k` the change of slope at knot `k`). The
/// sign and one ReLU per knot after the first (exact comparisons), two multiplexers, local
/// products with public constants, one truncation (within `2^-f`). The slope changes are
/// quantized with 8 extra bits and the last one makes them sum to exactly zero, so the
/// output is exactly constant beyond the last knot however large `x` is.
///
/// In a ring with room to spare (the training ring `Z_2^64`, `f = 16`), the comparisons run
/// on the value reduced to `Z_2^(f + 16)` (a local step) and `|x|` comes back by one
/// correlated OT ([`arith::extend_nonneg`]): half the bytes of comparisons on 63 bits.
/// Where the knots are multiples of `2^-g` (`s = f - g >= 4`), the sign and the knots
/// come from the part above the low `s` bits ([`arith::high_bits`]: the carry of those
/// bits, an `s`-bit millionaire), whose sign is `x`'s and whose ones' complement is
/// `floor(|x| / 2^s)`: the sign's comparison runs on `15 + g` bits instead of 31.
/// The result is the same for `|x| < 2^15` (the function is constant far beyond its
/// last knot) up to `|x|`'s last place for negative `x` (ones' complement), and for
/// larger `|x|` it is the function of `x` reduced into that range: still a value of the
/// function, never out of its range.
fn odd_pwl<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    fp: FixedPoint,
    x: &[u64],
    knots: &[f64],
    g: impl Fn(f64) -> f64,
    mid: f64,
) -> Result<Vec<u64>> {
    const EXTRA: u32 = 8;
    let ring = fp.ring();
    let f = fp.frac_bits();
    let n = x.len();
    let values: Vec<f64> = knots.iter().map(|&k| g(k)).collect();
    let slope = |i: usize| {
        if i + 1 < values.len() {
            (values[i + 1] - values[i]) / (knots[i + 1] - knots[i])
        } else {
            0.0
        }
    };
    let mut coeffs: Vec<i64> = (0..values.len())
        .map(|i| {
            let before = if i == 0 { 0.0 } else { slope(i - 1) };
            quantize(slope(i) - before, f + EXTRA)
        })
        .collect();
    let last = coeffs.len() - 1;
    coeffs[last] = -coeffs[..last].iter().sum::<i64>();
    let p0 = p.is_p0();
    let shift_by_knots = |ring: Ring, a: &[u64]| {
        let mut shifted = Vec::with_capacity(n * last);
        for &k in &knots[1..] {
            let c = ring.from_signed(quantize(k, f));
            shifted.extend(a.iter().map(|&v| if p0 { ring.sub(v, c) } else { v }));
        }
        shifted
    };
    // The sign b = [x >= 0], |x| and ReLU(|x| - k) for the knots after the first (at 0 it
    // is |x| itself).
    let (b, a, r) = if let Some(narrow) = pwl_narrow_ring(fp) {
        // The comparisons on the value reduced to the narrow ring (exact for |x| <
        // 2^PWL_NARROW_INT_BITS); |x| there in ones' complement, b x + (1 - b)(-x - 1) =
        // b (2x + 1) - x - 1, whose top bit is 0 for every x, so that it extends to the
        // ring exactly and stays below 2^(m-1) even beyond the range.
        let m = narrow.bits();
        let xn: Vec<u64> = x.iter().map(|&v| narrow.reduce(v)).collect();
        let (b, an, above) = match knot_bits(f, &knots[1..]).filter(|&g| m > f - g + 1) {
            Some(g) => {
                // The knots only need the part of |x| above its low s bits, and the sign
                // is that part's: the high part t = floor(x / 2^s) mod 2^(m - s) (an
                // s-bit millionaire), the sign from t (an (m - s - 1)-bit one, not m - 1),
                // and floor(|x| / 2^s) = |t| in ones' complement, from the same
                // multiplexer as |x|.
                let s = f - g;
                let small = Ring::new(m - s)?;
                let t = arith::high_bits(p, narrow, &xn, s)?;
                let b = compare::drelu(p, small, &t)?;
                let abs = ones_complement_abs(p, narrow, &b, &[&xn, &t])?;
                let hi: Vec<u64> = abs[1].iter().map(|&v| small.reduce(v)).collect();
                let above = knots_on_high(p, small, g, &knots[1..], &hi)?;
                let an = abs.into_iter().next().unwrap_or_default();
                (b, an, above)
            }
            None => {
                let b = compare::drelu(p, narrow, &xn)?;
                let an = ones_complement_abs(p, narrow, &b, &[&xn])?
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                let above = knots_by_comparisons(p, narrow, f, &knots[1..], &an)?;
                (b, an, above)
            }
        };
        let a = arith::extend_nonneg(p, narrow, ring, &an)?;
        let r = boolean::mux(p, ring, &above, &shift_by_knots(ring, &a))?;
        (b, a, r)
    } else {
        let b = compare::drelu(p, ring, x)?;
        let bx = boolean::mux(p, ring, &b, x)?;
        let a: Vec<u64> = (0..n)
            .map(|j| ring.sub(ring.add(bx[j], bx[j]), x[j]))
            .collect();
        let r = compare::relu(p, ring, &shift_by_knots(ring, &a))?;
        (b, a, r)
    };
    let h: Vec<u64> = (0..n)
        .map(|j| {
            let first = ring.mul(a[j], ring.from_signed(coeffs[0]));
            coeffs[1..].iter().enumerate().fold(first, |acc, (i, &c)| {
                ring.add(acc, ring.mul(r[i * n + j], ring.from_signed(c)))
            })
        })
        .collect();
    // mid + (2 b - 1) h(|x|) = mid - h + 2 b h.
    let bh = boolean::mux(p, ring, &b, &h)?;
    let offset = ring.from_signed(quantize(mid, 2 * f + EXTRA));
    let y: Vec<u64> = (0..n)
        .map(|j| {
            let v = ring.sub(ring.add(bh[j], bh[j]), h[j]);
            if p0 {
                ring.add(v, offset)
            } else {
                v
            }
        })
        .collect();
    // |y| <= 2^(2f + EXTRA) (a value in [-1, 1] at that scale): one bit of headroom
    // suffices for the wrap. In the training ring (f = 16), within one unit of 2^-f below
    // the exact shift, which the stated errors cover; exact where 2^-f is coarser (the
    // inference ring's 2^-12 would use up their margin).
    if pwl_narrow_ring(fp).is_some() {
        arith::trunc_bounded_within_ulp(p, ring, &y, f + EXTRA)
    } else if 2 * f + EXTRA + 2 < ring.bits() {
        arith::trunc_bounded(p, ring, &y, f + EXTRA)
    } else {
        arith::trunc_faithful(p, ring, &y, f + EXTRA)
    }
}
