//! Comparisons: the millionaire protocol of CrypTFlow2 (Rathee et al., CCS 2020), and on
//! top of it MSB, DReLU, ReLU, less-than, max, max-pool and argmax. All exact.
//!
//! Millionaire: party 0 holds `x`, party 1 holds `y` (both `bits`-bit); the output is a
//! boolean sharing of `x > y`. The values are cut into digits of `beta` bits; for each
//! digit one 1-of-`2^beta` OT (from `beta` silent correlated OTs, [`crate::ot::ferret`])
//! gives shares of `x_j > y_j` and `x_j = y_j` (the table holder's share is the table's
//! entry 0 under its pad, so that entry is not sent:
//! [`crate::ot::OtSender::send_one_of_n_shares_with`]; party 0 holds the tables of the
//! first half of the instances, party 1 those of the second, from the complements, so that
//! both hash and send at once);
//! an AND tree combines them (`gt = gt_hi ^ (eq_hi & gt_lo)`, `eq = eq_hi & eq_lo`) with
//! AND triples from random OTs (two triples sharing `eq_hi` per node from one OT in each
//! direction, no communication with silent OT). The nodes that hold digit 0, and the
//! root, need no `eq`: their ANDs open one bit of `gt_lo` alone.

use rand::{CryptoRng, RngCore};
use zeroize::Zeroize;

use super::{boolean, check_len};
use crate::error::Result;
use crate::net::Channel;
use crate::ot::OtReceiver;
use crate::party::Party;
use crate::ring::{mask, Ring};
use crate::triples::ot::bit_triples;

/// Digit size of the millionaire protocol (1-of-4 OTs). With silent OT a digit costs
/// `BETA` bits from the receiver and `(2^BETA - 1) * 2` from the sender, and an AND node 6
/// bits (4 on the path of digit 0): per compared bit 4 bits and 2.6 for the tree at `BETA
/// = 2`, 5.7 and 1.7 at 3, 8.5 and 1.2 at 4 (a 31-bit comparison: 205, 225 and 291 bits).
pub const BETA: u32 = 2;

/// The largest digit size a party accepts ([`crate::party::Party::set_digit_bits`]): a
/// leaf's table of `2^b` two-bit entries still fits one block of sliced pads.
pub const MAX_DIGIT_BITS: u32 = 4;

/// Nanoseconds of one correlated OT (Ferret's LPN step, half-tree and hashes), each party
/// at once: the `ot.ferret` bench line on the reference machine (55-70 ns).
pub const COT_NS: f64 = 60.0;

/// The digit size of least time per compared bit on a link of `ns_per_byte` (8 ns for
/// 1 Gbit/s): `2 / b` correlated OTs at [`COT_NS`] (one per bit for the leaves, two per
/// AND for about `1 / b` ANDs) against the bits sent, 6.6 at `b = 2`, 7.4 at 3 and 9.7 at
/// 4 (see [`BETA`]). A LAN takes 4 (a ReLU about 14% faster and 25% larger than at 2), a
/// 100 Mbit/s WAN 3, slower links 2.
///
/// ```
/// use cipherml_mpc::protocols::compare::digit_bits_for;
/// assert_eq!(digit_bits_for(8.0), 4);
/// assert_eq!(digit_bits_for(80.0), 3);
/// assert_eq!(digit_bits_for(800.0), 2);
/// ```
pub fn digit_bits_for(ns_per_byte: f64) -> u32 {
    let time = |b: u32, bits: f64| (1.0 + 2.0 / f64::from(b)) * COT_NS + bits * ns_per_byte / 8.0;
    [(2, 6.6), (3, 7.4), (4, 9.7)]
        .into_iter()
        .min_by(|x, y| time(x.0, x.1).total_cmp(&time(y.0, y.1)))
        .map_or(BETA, |(b, _)| b)
}

/// Boolean shares of `x > y`, `x` the input of party 0 and `y` that of party 1, both
/// below `2^bits` (`bits <= 64`). Party 0 passes its `x`, party 1 its `y`.
pub fn millionaire<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    bits: u32,
    input: &[u64],
) -> Result<Vec<u8>> {
    let n = input.len();
    if bits == 0 || n == 0 {
        return Ok(vec![0; n]);
    }
    let beta = p.digit_bits();
    let q = bits.div_ceil(beta) as usize;
    let widths: Vec<u32> = (0..q).map(|j| beta.min(bits - j as u32 * beta)).collect();
    // AND nodes of the tree: pairs per level, the last level only computes gt.
    let mut levels = Vec::new();
    let mut s = q;
    while s > 1 {
        levels.push(s / 2);
        s = s.div_ceil(2);
    }
    let ands_per: usize = levels.iter().sum();
    let triples = bit_triples(p, n * ands_per, 2)?;

    // Node-major and packed: `gt[j]` holds digit `j`'s bits of every instance, 64 to a word.
    let nw = n.div_ceil(64);
    let mut gt = vec![vec![0u64; nw]; q];
    let mut eq = vec![vec![0u64; nw]; q];
    // Leaves: bit `i` of gt[j] and eq[j], straight from 1-of-2^width OTs of the tables
    // ([x_j > k], [x_j == k]) into shares (entry 0's message not sent). Party 0 holds the
    // tables of the first `na` instances and party 1 those of the others, from the
    // complements `2^bits - 1 - y` and `2^bits - 1 - x` (digit by digit, `y'_j > x'_j`
    // is `x_j > y_j` and `y'_j = x'_j` is `x_j = y_j`): both parties hash and send at
    // once, in the same two flights.
    let na = n - n / 2;
    let own_tables = if p.is_p0() { 0..na } else { na..n };
    let own_choices = if p.is_p0() { na..n } else { 0..na };
    let flip = |i: usize, v: u64| if i < na { v } else { !v & mask(bits) };
    for (width, digits) in group_digits(&widths) {
        let d = digits.len() * width as usize;
        p.ensure_ots(na * d, (n - na) * d)?;
        let digit = |v: u64, j: usize| (v >> (j as u32 * beta)) & mask(width);
        // The tables' digits: entry `k` of a digit `x_j`'s table is `[x_j > k] | [x_j = k] << 1`.
        let mut table = Vec::with_capacity(own_tables.len() * digits.len());
        for i in own_tables.clone() {
            let x = flip(i, input[i]);
            table.extend(digits.iter().map(|&j| digit(x, j) as u8));
        }
        let mut choices = Vec::with_capacity(own_choices.len() * digits.len());
        for i in own_choices.clone() {
            let y = flip(i, input[i]);
            choices.extend(digits.iter().map(|&j| digit(y, j) as u16));
        }
        let parts = p.parts();
        let pending = parts
            .ot_recv
            .start_receive_one_of_n_shares(parts.ch, &choices, width, 2)?;
        let entry = |t: usize, k: usize| {
            let xj = usize::from(table[t]);
            u64::from(xj > k) | u64::from(xj == k) << 1
        };
        let sent =
            parts
                .ot_send
                .send_one_of_n_shares_with(parts.ch, table.len(), entry, width, 2)?;
        let received = OtReceiver::finish_receive_one_of_n(parts.ch, pending)?;
        table.zeroize();
        choices.zeroize();
        for (range, shares) in [
            (own_tables.clone(), &sent),
            (own_choices.clone(), &received),
        ] {
            for (i, s) in range.zip(shares.chunks_exact(digits.len())) {
                let (w, b) = (i / 64, i % 64);
                for (&j, &v) in digits.iter().zip(s) {
                    gt[j][w] |= (v & 1) << b;
                    eq[j][w] |= ((v >> 1) & 1) << b;
                }
            }
        }
    }

    // The AND tree, all instances at once, a level per round: the pair `k` of a level
    // (nodes `2k`, `2k + 1`) gives `gt = gt_hi ^ (eq_hi & gt_lo)` and `eq = eq_hi & eq_lo`.
    // The node holding digit 0 (`k = 0`) is always a low child, so only its `gt` is
    // needed, and at the last level only `gt` is: their ANDs take `eq_hi & gt_lo` alone.
    let mut s = q;
    let mut toff = 0usize;
    while s > 1 {
        let pairs = s / 2;
        let last = s == 2;
        let ands: Vec<boolean::PackedAnd<'_>> = (0..pairs)
            .map(|k| boolean::PackedAnd {
                x: &eq[2 * k + 1],
                y: [
                    Some(&gt[2 * k][..]),
                    (!last && k != 0).then_some(&eq[2 * k][..]),
                ],
            })
            .collect();
        let z = boolean::and_packed(p, n, &ands, &triples, toff)?;
        toff += n * pairs;
        let mut ngt = Vec::with_capacity(s.div_ceil(2));
        let mut neq = Vec::with_capacity(s.div_ceil(2));
        for (k, [z_gt, z_eq]) in z.into_iter().enumerate() {
            let mut g = std::mem::take(&mut gt[2 * k + 1]);
            g.iter_mut().zip(&z_gt).for_each(|(a, b)| *a ^= b);
            ngt.push(g);
            neq.push(z_eq);
        }
        if s % 2 == 1 {
            ngt.push(std::mem::take(&mut gt[s - 1]));
            neq.push(std::mem::take(&mut eq[s - 1]));
        }
        gt = ngt;
        eq = neq;
        s = s.div_ceil(2);
    }
    let root = &gt[0];
    Ok((0..n)
        .map(|i| ((root[i / 64] >> (i % 64)) & 1) as u8)
        .collect())
}

/// Groups digit indices by width (at most two groups: full digits and the last one).
fn group_digits(widths: &[u32]) -> Vec<(u32, Vec<usize>)> {
    let mut groups: Vec<(u32, Vec<usize>)> = Vec::new();
    for (j, &w) in widths.iter().enumerate() {
        match groups.iter_mut().find(|(gw, _)| *gw == w) {
            Some(g) => g.1.push(j),
            None => groups.push((w, vec![j])),
        }
    }
    groups
}

/// Boolean shares of the most significant bit (the sign) of shared values.
pub fn msb<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
) -> Result<Vec<u8>> {
    let l = ring.bits();
    let low = mask(l - 1);
    let p0 = p.is_p0();
    // carry = 1{x0' + x1' >= 2^(l-1)} = 1{x0' > 2^(l-1) - 1 - x1'}.
    let input: Vec<u64> = x
        .iter()
        .map(|&v| if p0 { v & low } else { low - (v & low) })
        .collect();
    let carry = millionaire(p, l - 1, &input)?;
    Ok(x.iter()
        .zip(&carry)
        .map(|(&v, &c)| ring.msb(v) as u8 ^ c)
        .collect())
}

/// DReLU: boolean shares of `x >= 0` (signed).
pub fn drelu<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
) -> Result<Vec<u8>> {
    let m = msb(p, ring, x)?;
    let p0 = p.is_p0();
    Ok(m.into_iter().map(|b| if p0 { b ^ 1 } else { b }).collect())
}

/// [`drelu`] of values of a declared range `|x| < 2^(m-1)` (`m <= l`): the comparison runs
/// on the shares reduced to `Z_2^m` (a local step), a millionaire on `m - 1` bits instead
/// of `l - 1`. Exact in that range; beyond it, the bit is the sign of `x` reduced modulo
/// `2^m` and may be wrong (a ReLU built on it then passes `x` or zero: never a value
/// larger than `|x|`).
pub fn drelu_within<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    m: u32,
    x: &[u64],
) -> Result<Vec<u8>> {
    if m >= ring.bits() {
        return drelu(p, ring, x);
    }
    let narrow = Ring::new(m)?;
    let xn: Vec<u64> = x.iter().map(|&v| narrow.reduce(v)).collect();
    drelu(p, narrow, &xn)
}

/// Largest `w` for which [`at_least_small`] looks its thresholds up in one table (a
/// 1-of-`2^(w + 1)` OT).
pub const SMALL_THRESHOLD_BITS: u32 = 6;

/// Boolean shares of `[v >= k]` for every threshold `k` of `thresholds` (threshold-major:
/// entry `i * n + j` is `[v_j >= k_i]`), for shares `v` in `ring` of values in `[0,
/// 2^(l-1))`, the thresholds in `1..=2^w`, `w <= `[`SMALL_THRESHOLD_BITS`]. One exact
/// comparison `z = [v >= 2^w]` (skipped when no value reaches `2^w`), then one table
/// look-up for all thresholds at once: `[v >= k] = z or [v mod 2^w >= k]`, where `v mod
/// 2^w` is the sum of the shares' low `w` bits (a local step). Party 0 tabulates, for
/// every pair (low bits, share of `z`) party 1 may hold, the thresholds' bits against its
/// own, masked by fresh random bits (its output share); party 1 takes its row by a
/// 1-of-`2^(w + 1)` OT (`w + 1` silent correlated OTs and `2^(w + 1)` table entries of
/// one bit per threshold). For six thresholds up to 8 this replaces six comparisons by
/// one and a 1-of-16 OT. Exact.
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) if a threshold is 0, above
/// `2^SMALL_THRESHOLD_BITS`, or there are more than 64; channel errors.
pub fn at_least_small<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    thresholds: &[u64],
    v: &[u64],
) -> Result<Vec<u8>> {
    let n = v.len();
    let nk = thresholds.len();
    let top = thresholds.iter().copied().max().unwrap_or(1);
    if nk > 64 || top > 1 << SMALL_THRESHOLD_BITS || thresholds.contains(&0) {
        return Err(crate::Error::InvalidInput {
            what: "small thresholds (1 to 2^SMALL_THRESHOLD_BITS, at most 64 of them)",
            expected: 1 << SMALL_THRESHOLD_BITS,
            found: if nk > 64 { nk as u64 } else { top },
        });
    }
    if n == 0 || nk == 0 {
        return Ok(Vec::new());
    }
    // The fewest low bits that hold every threshold but 2^w itself: [v >= 2^w] is z.
    let w = (64 - (top - 1).leading_zeros()).max(1);
    let p0 = p.is_p0();
    let z = if w + 1 < ring.bits() {
        let c = 1u64 << w;
        let shifted: Vec<u64> = v
            .iter()
            .map(|&x| if p0 { ring.sub(x, c) } else { x })
            .collect();
        drelu(p, ring, &shifted)?
    } else {
        // Every value is below 2^(l-1) <= 2^w.
        vec![0; n]
    };
    let log_n = w + 1;
    let low = mask(w);
    let rows = 1usize << log_n;
    p.ensure_ots(n * log_n as usize, 0)?;
    let got = if p0 {
        let mut table = Vec::with_capacity(n * rows);
        for j in 0..n {
            for c in 0..rows as u64 {
                let lo = v[j].wrapping_add(c) & low;
                let above = z[j] ^ (c >> w) as u8 == 1;
                table.push(thresholds.iter().enumerate().fold(0u64, |acc, (i, &k)| {
                    acc | (u64::from(above || lo >= k) << i)
                }));
            }
        }
        let parts = p.parts();
        parts
            .ot_send
            .send_one_of_n_shares(parts.ch, &table, log_n, nk as u32)?
    } else {
        let choices: Vec<u16> = (0..n)
            .map(|j| ((v[j] & low) | (u64::from(z[j]) << w)) as u16)
            .collect();
        let parts = p.parts();
        parts
            .ot_recv
            .receive_one_of_n_shares(parts.ch, &choices, log_n, nk as u32)?
    };
    let mut out = vec![0u8; nk * n];
    for (j, &g) in got.iter().enumerate() {
        for i in 0..nk {
            out[i * n + j] = ((g >> i) & 1) as u8;
        }
    }
    Ok(out)
}

/// ReLU: shares of `max(x, 0)` (signed), exact.
pub fn relu<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
) -> Result<Vec<u64>> {
    let d = drelu(p, ring, x)?;
    boolean::mux(p, ring, &d, x)
}

/// Boolean shares of `x < y` (signed), exact for all inputs (no overflow of `x - y`):
/// `lt = s_d ^ ((s_x ^ s_y) & (s_d ^ s_x))` from the signs of `x`, `y` and `x - y`.
pub fn less_than<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
    y: &[u64],
) -> Result<Vec<u8>> {
    let n = x.len();
    check_len("less_than: y", n, y.len())?;
    let mut all = x.to_vec();
    all.extend_from_slice(y);
    all.extend(ring.sub_vec(x, y));
    let s = msb(p, ring, &all)?;
    let (sx, rest) = s.split_at(n);
    let (sy, sd) = rest.split_at(n);
    let a: Vec<u8> = (0..n).map(|i| sx[i] ^ sy[i]).collect();
    let b: Vec<u8> = (0..n).map(|i| sd[i] ^ sx[i]).collect();
    let z = boolean::and(p, &a, &b)?;
    Ok((0..n).map(|i| sd[i] ^ z[i]).collect())
}

/// Elementwise `max(x, y)`, exact.
pub fn max<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
    y: &[u64],
) -> Result<Vec<u64>> {
    let lt = less_than(p, ring, x, y)?;
    boolean::select(p, ring, &lt, x, y)
}

/// The maximum of each window: `x` holds `x.len() / window` windows of `window`
/// consecutive values (max-pool after the caller's im2col). A tree of comparisons.
pub fn max_pool<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
    window: usize,
) -> Result<Vec<u64>> {
    let (v, _) = argmax_inner(p, ring, x, window, false)?;
    Ok(v)
}

/// The maximum of each window of `window` consecutive values as `max(a, b) = b +
/// ReLU(a - b)`: a tree of pairwise maxima, all pairs of one level in one batch of ReLUs
/// (one ReLU per pair instead of [`max_pool`]'s comparison and multiplexer). Valid while
/// `|a - b| < 2^(l-1)` for the values of a window, which a fixed-point range of at most
/// `2^(l-2)` guarantees. A value known non-negative stays so: the result is one of the
/// inputs. `x.len()` must be a multiple of `window`.
pub fn max_pool_relu_tree<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
    window: usize,
) -> Result<Vec<u64>> {
    if window == 0 || !x.len().is_multiple_of(window) {
        return Err(crate::error::Error::InvalidInput {
            what: "max_pool_relu_tree: values not a multiple of the window",
            expected: window as u64,
            found: x.len() as u64,
        });
    }
    let mut x = x.to_vec();
    let mut w = window;
    while w > 1 {
        let windows = x.len() / w;
        let half = w / 2;
        let mut diffs = Vec::with_capacity(windows * half);
        for win in x.chunks(w) {
            for i in 0..half {
                diffs.push(ring.sub(win[2 * i], win[2 * i + 1]));
            }
        }
        let r = relu(p, ring, &diffs)?;
        let next_w = half + w % 2;
        let mut next = Vec::with_capacity(windows * next_w);
        for (k, win) in x.chunks(w).enumerate() {
            for i in 0..half {
                next.push(ring.add(win[2 * i + 1], r[k * half + i]));
            }
            if w % 2 == 1 {
                next.push(win[w - 1]);
            }
        }
        x = next;
        w = next_w;
    }
    Ok(x)
}

/// Shares of the index of the maximum of each window (the first one on ties), and of
/// the maximum itself.
pub fn argmax<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
    window: usize,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let (v, i) = argmax_inner(p, ring, x, window, true)?;
    Ok((i, v))
}

fn argmax_inner<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
    window: usize,
    with_index: bool,
) -> Result<(Vec<u64>, Vec<u64>)> {
    if window == 0 || !x.len().is_multiple_of(window) {
        return Err(crate::error::Error::InvalidInput {
            what: "window must divide the input length",
            expected: window as u64,
            found: x.len() as u64,
        });
    }
    let rows = x.len() / window;
    let p0 = p.is_p0();
    let mut vals = x.to_vec();
    let mut idx: Vec<u64> = (0..x.len())
        .map(|k| {
            if p0 {
                ring.reduce((k % window) as u64)
            } else {
                0
            }
        })
        .collect();
    let mut s = window;
    while s > 1 {
        let pairs = s / 2;
        let ns = s.div_ceil(2);
        let mut a = Vec::with_capacity(rows * pairs);
        let mut b = Vec::with_capacity(rows * pairs);
        let mut ia = Vec::new();
        let mut ib = Vec::new();
        for r in 0..rows {
            for k in 0..pairs {
                a.push(vals[r * s + 2 * k]);
                b.push(vals[r * s + 2 * k + 1]);
                if with_index {
                    ia.push(idx[r * s + 2 * k]);
                    ib.push(idx[r * s + 2 * k + 1]);
                }
            }
        }
        let lt = less_than(p, ring, &a, &b)?;
        let (mut sel_b, mut sel_x, mut sel_y) = (lt.clone(), a.clone(), b.clone());
        if with_index {
            sel_b.extend_from_slice(&lt);
            sel_x.extend_from_slice(&ia);
            sel_y.extend_from_slice(&ib);
        }
        let m = boolean::select(p, ring, &sel_b, &sel_x, &sel_y)?;
        let np = rows * pairs;
        let mut nv = vec![0u64; rows * ns];
        let mut ni = vec![0u64; rows * ns];
        for r in 0..rows {
            for k in 0..pairs {
                nv[r * ns + k] = m[r * pairs + k];
                if with_index {
                    ni[r * ns + k] = m[np + r * pairs + k];
                }
            }
            if s % 2 == 1 {
                nv[r * ns + pairs] = vals[r * s + s - 1];
                ni[r * ns + pairs] = idx[r * s + s - 1];
            }
        }
        vals = nv;
        idx = ni;
        s = ns;
    }
    Ok((vals, idx))
}
