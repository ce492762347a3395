//! Fixed-point approximations: exp, reciprocal, sigmoid and softmax.
//!
//! Products are truncated with [`arith::trunc_local`] (probabilistic, see its failure
//! probability: use a ring with headroom, e.g. `l = 64`, `f = 16`). Stated errors (checked
//! by the tests with `l = 64`, `f = 16`):
//!
//! | function | domain | error |
//! |---|---|---|
//! | [`exp`] | `x <= 0` | absolute `<= 2^-9` (limit `(1 + x/2^8)^(2^8)`, clamped at 0 for `x < -256`) |
//! | [`reciprocal`] | `1 <= x <= bound` | relative `<= 2^-10` |
//! | [`sigmoid`] | all `x` | absolute `<= 2^-8` |
//! | [`softmax`] | rows of any values | absolute `<= 2^-7` per entry |

use rand::{CryptoRng, RngCore};

use super::{arith, boolean, compare};
use crate::error::{Error, Result};
use crate::fixed::FixedPoint;
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
