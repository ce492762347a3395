//! Fixed-point approximations: exp, reciprocal, sigmoid and softmax.
//!
//! Products are truncated with [`arith::trunc_local`] (probabilistic, see its failure
//! probability: use a ring with headroom, e.g. `l = 64`, `f = 16`). Stated errors (checked
//! by the tests with `l = 64`, `f = 16`):
//!
//! | function | domain | error |
//! |---|---|---|
//! | [`exp`] | `x <= 0` | absolute `<= 2^-7` (limit `(1 + x/2^8)^(2^8)`, within `2^-8.9`, clamped at 0 for `x < -256`; the local truncation of `x / 2^8` is off by one unit of `2^-16` either way, `2^-8` after the squarings) |
//! | [`reciprocal`] | `1 <= x <= bound` | relative `<= 2^-10` |
//! | [`sigmoid`] | all `x` | absolute `<= 2^-8` |
//! | [`softmax`] | rows of any values | absolute `<= 2^-7` per entry |
//! | [`sigmoid_pwl`] | all `x`, any ring | absolute `<=` [`SIGMOID_PWL_ERROR`] |

use rand::{CryptoRng, RngCore};

use super::{arith, boolean, compare};
use crate::error::{Error, Result};
use crate::fixed::{quantize, FixedPoint};
use crate::net::Channel;
use crate::party::Party;
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
    Ok(arith::trunc_local(p, fp.ring(), &z, fp.frac_bits()))
}

/// `e^x` for `x <= 0`: `max(0, 1 + x / 2^8)^(2^8)` by repeated squaring.
pub fn exp<C: Channel, R: RngCore + CryptoRng, S: TripleSource<C, R>>(
    p: &mut Party<C, R>,
    src: &mut S,
    fp: FixedPoint,
    x: &[u64],
) -> Result<Vec<u64>> {
    let ring = fp.ring();
    let one = fp.encode(1.0)?;
    let mut y = arith::trunc_local(p, ring, x, EXP_SQUARINGS);
    if p.is_p0() {
        y.iter_mut().for_each(|v| *v = ring.add(*v, one));
    }
    let mut y = compare::relu(p, ring, &y)?;
    for _ in 0..EXP_SQUARINGS {
        y = fmul(p, src, fp, &y.clone(), &y)?;
    }
    Ok(y)
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

/// The sigmoid on shares at scale `2^f` (result at scale `2^f`): the chord interpolation
/// at the integer knots in `[-6, 6]`, written as `y_0 + sum_i c_i ReLU(x - b_i)` with
/// `c_i` the change of slope at knot `b_i`. One batch of 13 exact ReLUs per element (any
/// ring width, unlike [`sigmoid`], which needs 64 bits), local products with public
/// constants, one faithful truncation. The slope changes are quantized with 8 extra bits
/// and the last one makes them sum to exactly zero, so the output is exactly constant
/// beyond the last knot however large `x` is.
pub fn sigmoid_pwl<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    fp: FixedPoint,
    x: &[u64],
) -> Result<Vec<u64>> {
    const EXTRA: u32 = 8;
    let ring = fp.ring();
    let f = fp.frac_bits();
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let knots: Vec<i64> = SIGMOID_KNOTS.collect();
    let values: Vec<f64> = knots.iter().map(|&b| sig(b as f64)).collect();
    // Slope of the segment after knot i (0 after the last).
    let slope = |i: usize| {
        if i + 1 < values.len() {
            values[i + 1] - values[i]
        } else {
            0.0
        }
    };
    let mut coeffs: Vec<i64> = (0..knots.len())
        .map(|i| {
            let before = if i == 0 { 0.0 } else { slope(i - 1) };
            quantize(slope(i) - before, f + EXTRA)
        })
        .collect();
    let last = coeffs.len() - 1;
    coeffs[last] = -coeffs[..last].iter().sum::<i64>();
    let p0 = p.is_p0();
    let mut shifted = Vec::with_capacity(x.len() * knots.len());
    for &b in &knots {
        let c = ring.from_signed(b << f);
        shifted.extend(x.iter().map(|&v| if p0 { ring.sub(v, c) } else { v }));
    }
    let r = compare::relu(p, ring, &shifted)?;
    let y0 = ring.from_signed(quantize(values[0], 2 * f + EXTRA));
    let n = x.len();
    let y: Vec<u64> = (0..n)
        .map(|j| {
            let acc = coeffs.iter().enumerate().fold(0u64, |a, (i, &c)| {
                ring.add(a, ring.mul(r[i * n + j], ring.from_signed(c)))
            });
            if p0 {
                ring.add(acc, y0)
            } else {
                acc
            }
        })
        .collect();
    arith::trunc_faithful(p, ring, &y, f + EXTRA)
}
