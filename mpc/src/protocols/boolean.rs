//! Boolean shares: AND with bit triples, B2A, the multiplexer (select) and A2B.

use rand::{CryptoRng, RngCore};

use super::check_len;
use crate::error::Result;
use crate::net::{pack_bits, read_bits, unpack_bits, BitWriter, Channel};
use crate::ot::OtReceiver;
use crate::party::Party;
use crate::ring::Ring;
use crate::triples::ot::bit_triples;
use crate::triples::BitTriples;

/// `x AND y` for shared bits `x` and shared `width`-bit values `y` (each bit of `y`
/// ANDed with `x`), with triples of that width (one round).
pub fn and_with<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    x: &[u8],
    y: &[u8],
    t: &BitTriples,
    offset: usize,
) -> Result<Vec<u8>> {
    and_with_low(p, x, y, t, offset, |_| false)
}

/// [`and_with`] where for the elements `i` with `low_only(i)` only the lowest bit of `y`
/// is needed: their openings carry that bit alone (one bit less per extra bit of the
/// width and party), and the other bits of their results are 0. Both parties pass the
/// same `low_only`.
pub fn and_with_low<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    x: &[u8],
    y: &[u8],
    t: &BitTriples,
    offset: usize,
    low_only: impl Fn(usize) -> bool,
) -> Result<Vec<u8>> {
    let n = x.len();
    check_len("AND: y length", n, y.len())?;
    if t.a.len() < offset + n || t.b.len() < offset + n || t.c.len() < offset + n {
        return Err(crate::error::Error::InvalidInput {
            what: "AND: not enough triples",
            expected: (offset + n) as u64,
            found: t.a.len().min(t.b.len()).min(t.c.len()) as u64,
        });
    }
    let w = t.width as usize;
    let full = ((1u16 << w) - 1) as u8;
    let widths: Vec<usize> = (0..n).map(|i| if low_only(i) { 1 } else { w }).collect();
    let mut bits = Vec::with_capacity(n * (1 + w));
    for i in 0..n {
        bits.push((x[i] ^ t.a[offset + i]) & 1);
    }
    for i in 0..n {
        let e = y[i] ^ t.b[offset + i];
        for k in 0..widths[i] {
            bits.push((e >> k) & 1);
        }
    }
    p.channel().send(&pack_bits(&bits))?;
    let m = p.channel().recv()?;
    let other = unpack_bits(&m, bits.len(), "AND openings")?;
    let p0 = p.is_p0();
    let mut at = n;
    Ok((0..n)
        .map(|i| {
            let mk = if widths[i] == w { full } else { 1 };
            let d = bits[i] ^ other[i];
            let mut e = 0u8;
            for k in 0..widths[i] {
                e |= (bits[at + k] ^ other[at + k]) << k;
            }
            at += widths[i];
            let dm = if d == 1 { mk } else { 0 };
            let am = if t.a[offset + i] & 1 == 1 { mk } else { 0 };
            let mut z = (t.c[offset + i] & mk) ^ (dm & t.b[offset + i]) ^ (e & am);
            if p0 {
                z ^= dm & e;
            }
            z
        })
        .collect())
}

/// `x AND y` for shared bits, generating the triples (two random OTs per AND).
pub fn and<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    x: &[u8],
    y: &[u8],
) -> Result<Vec<u8>> {
    let t = bit_triples(p, x.len(), 1)?;
    and_with(p, x, y, &t, 0)
}

/// Boolean to arithmetic: shares of `b` in `ring` (one correlated OT per bit, 2 rounds).
pub fn b2a<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    b: &[u8],
) -> Result<Vec<u64>> {
    // b = b0 + b1 - 2 b0 b1; the product by a correlated OT, party 0 sending.
    p.ensure_ots(b.len(), 0)?;
    let parts = p.parts();
    if parts.id.index() == 0 {
        let deltas: Vec<u64> = b.iter().map(|&x| (x & 1) as u64).collect();
        let m0 = parts.ot_send.send_correlated(parts.ch, ring, &deltas, 1)?;
        // Share of b0 b1 is -m0.
        Ok(b.iter()
            .zip(&m0)
            .map(|(&x, &m)| ring.add((x & 1) as u64, ring.add(m, m)))
            .collect())
    } else {
        let got = parts.ot_recv.receive_correlated(parts.ch, ring, b, 1)?;
        Ok(b.iter()
            .zip(&got)
            .map(|(&x, &g)| ring.sub((x & 1) as u64, ring.add(g, g)))
            .collect())
    }
}

/// The multiplexer: shares of `b * x` for shared bits `b` and shared values `x`
/// (`select`). Two correlated OTs, one per direction, run at once (2 rounds).
pub fn mux<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    b: &[u8],
    x: &[u64],
) -> Result<Vec<u64>> {
    check_len("mux: values", b.len(), x.len())?;
    p.ensure_ots(b.len(), b.len())?;
    let parts = p.parts();
    let pending = parts
        .ot_recv
        .start_receive_correlated(parts.ch, ring, b, 1)?;
    let deltas: Vec<u64> = b
        .iter()
        .zip(x)
        .map(|(&bi, &xi)| if bi & 1 == 1 { ring.neg(xi) } else { xi })
        .collect();
    let m0 = parts.ot_send.send_correlated(parts.ch, ring, &deltas, 1)?;
    let got = OtReceiver::finish_receive_correlated(parts.ch, pending)?;
    Ok((0..b.len())
        .map(|i| {
            let own = if b[i] & 1 == 1 { x[i] } else { 0 };
            ring.add(ring.sub(own, m0[i]), got[i])
        })
        .collect())
}

/// Select: `b ? y : x` for shared bits and shared values.
pub fn select<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    b: &[u8],
    x: &[u64],
    y: &[u64],
) -> Result<Vec<u64>> {
    check_len("select: y", x.len(), y.len())?;
    let d = ring.sub_vec(y, x);
    let m = mux(p, ring, b, &d)?;
    Ok(ring.add_vec(x, &m))
}

/// AND of bit-packed words (`bits` low bits of each word), bitwise.
fn and_words<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    x: &[u64],
    y: &[u64],
    bits: u32,
) -> Result<Vec<u64>> {
    let b = bits as usize;
    let unpack = |v: &[u64]| -> Vec<u8> {
        v.iter()
            .flat_map(|&w| (0..b).map(move |k| ((w >> k) & 1) as u8))
            .collect()
    };
    let z = and(p, &unpack(x), &unpack(y))?;
    Ok(z.chunks(b)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u64, |acc, (k, &v)| acc | ((v as u64) << k))
        })
        .collect())
}

/// Arithmetic to boolean: XOR shares of every bit of `x` (bit `k` of word `i` of the
/// result), by a Kogge-Stone adder on the shares (`log2 l` AND rounds).
pub fn a2b<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    x: &[u64],
) -> Result<Vec<u64>> {
    let l = ring.bits();
    let m = ring.mask();
    let n = x.len();
    let p0 = p.is_p0();
    // Boolean sharings of the two addends: a = x0 (held by P0), b = x1 (held by P1).
    let (a, b): (Vec<u64>, Vec<u64>) = if p0 {
        (x.to_vec(), vec![0; n])
    } else {
        (vec![0; n], x.to_vec())
    };
    let mut g = and_words(p, &a, &b, l)?;
    let prop: Vec<u64> = (0..n).map(|i| a[i] ^ b[i]).collect();
    let mut pp = prop.clone();
    let mut s = 1u32;
    while s < l {
        let gs: Vec<u64> = g.iter().map(|&v| (v << s) & m).collect();
        let ps: Vec<u64> = pp.iter().map(|&v| (v << s) & m).collect();
        let mut lhs = pp.clone();
        lhs.extend_from_slice(&pp);
        let mut rhs = gs;
        rhs.extend(ps);
        let z = and_words(p, &lhs, &rhs, l)?;
        for (gi, zi) in g.iter_mut().zip(&z[..n]) {
            *gi ^= zi;
        }
        pp.copy_from_slice(&z[n..]);
        s <<= 1;
    }
    Ok((0..n).map(|i| (prop[i] ^ (g[i] << 1)) & m).collect())
}

/// One AND of packed bits for [`and_packed`]: `x & y[0]` and, where given, `x & y[1]` (two
/// triples sharing `a`: bits 0 and 1 of a width-2 triple). Bits are packed 64 to a word,
/// lowest first, the last word's unused bits zero.
pub(crate) struct PackedAnd<'a> {
    pub x: &'a [u64],
    pub y: [Option<&'a [u64]>; 2],
}

/// ANDs of packed bits over `n` instances, in one round. AND `k` takes the triples `offset
/// + k n + i` of `t` for instance `i` (width 2 or more: bit `j` of their `b` and `c` for
/// `y[j]`). Returns, per AND, the packed shares of `x & y[0]` and of `x & y[1]` (empty
/// where `y[1]` is not given). The openings go as one stream of bits: the same bytes as
/// [`and_with_low`] for the same ANDs.
pub(crate) fn and_packed<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    n: usize,
    ands: &[PackedAnd<'_>],
    t: &BitTriples,
    offset: usize,
) -> Result<Vec<[Vec<u64>; 2]>> {
    let need = offset + n * ands.len();
    let have = t.a.len().min(t.b.len()).min(t.c.len());
    if have < need || t.width < 2 {
        return Err(crate::error::Error::InvalidInput {
            what: "packed AND: triples (width at least 2)",
            expected: need as u64,
            found: if t.width < 2 {
                t.width.into()
            } else {
                have as u64
            },
        });
    }
    let nw = n.div_ceil(64);
    if let Some(bad) = ands
        .iter()
        .flat_map(|a| std::iter::once(a.x).chain(a.y.iter().flatten().copied()))
        .find(|v| v.len() != nw)
    {
        return Err(crate::error::Error::InvalidInput {
            what: "packed AND: words per operand",
            expected: nw as u64,
            found: bad.len() as u64,
        });
    }
    let pack = |v: &[u8], base: usize, bit: u32| {
        let mut w = vec![0u64; nw];
        for (i, &x) in v[base..base + n].iter().enumerate() {
            w[i / 64] |= u64::from((x >> bit) & 1) << (i % 64);
        }
        w
    };
    // Per AND: a, and per operand given its (b, c, opened e); the openings d = x ^ a and
    // e = y ^ b, in order, into one stream.
    let mut sink = BitWriter::with_capacity(2 * n * ands.len());
    let mut bits = 0usize;
    let mut state = Vec::with_capacity(ands.len());
    for (k, and) in ands.iter().enumerate() {
        let base = offset + k * n;
        let a = pack(&t.a, base, 0);
        let d: Vec<u64> = and.x.iter().zip(&a).map(|(x, a)| x ^ a).collect();
        push_words(&mut sink, &d, n);
        bits += n;
        let mut ys: [Option<Operand>; 2] = [None, None];
        for (j, y) in and.y.iter().enumerate() {
            if let Some(y) = y {
                let b = pack(&t.b, base, j as u32);
                let e: Vec<u64> = y.iter().zip(&b).map(|(y, b)| y ^ b).collect();
                push_words(&mut sink, &e, n);
                bits += n;
                ys[j] = Some((b, pack(&t.c, base, j as u32), e));
            }
        }
        state.push((a, d, ys));
    }
    let len = bits.div_ceil(8);
    p.channel().send(&sink.finish())?;
    let m = crate::net::recv_exact(p.channel(), "AND openings", len)?;
    if !bits.is_multiple_of(8) && m[len - 1] >> (bits % 8) != 0 {
        return Err(crate::error::Error::Malformed {
            what: "AND openings: padding",
            expected: 0,
            found: u64::from(m[len - 1] >> (bits % 8)),
        });
    }
    let p0 = p.is_p0();
    let mut pos = 0;
    Ok(state
        .into_iter()
        .map(|(a, mut d, ys)| {
            xor_words(&m, &mut pos, &mut d, n);
            ys.map(|y| match y {
                Some((b, mut c, mut e)) => {
                    xor_words(&m, &mut pos, &mut e, n);
                    for w in 0..nw {
                        c[w] ^= (d[w] & b[w]) ^ (e[w] & a[w]);
                        if p0 {
                            c[w] ^= d[w] & e[w];
                        }
                    }
                    c
                }
                None => Vec::new(),
            })
        })
        .collect())
}

/// An operand's packed triple parts and opening in [`and_packed`]: `b`, `c`, and `e = y ^
/// b` (this party's, then opened).
type Operand = (Vec<u64>, Vec<u64>, Vec<u64>);

/// Appends the first `n` bits of the packed `words` (`n.div_ceil(64)` of them).
fn push_words(out: &mut BitWriter, words: &[u64], n: usize) {
    for (i, &w) in words.iter().enumerate() {
        let k = (n - 64 * i).min(64) as u32;
        out.push(w & crate::ring::mask(k), k);
    }
}

/// XORs `n` bits of `buf` from bit `*pos` into the packed `words`, and moves `*pos` past
/// them (the caller has checked `buf`'s length).
fn xor_words(buf: &[u8], pos: &mut usize, words: &mut [u64], n: usize) {
    for (i, w) in words.iter_mut().enumerate() {
        let k = (n - 64 * i).min(64);
        *w ^= read_bits(buf, *pos, k as u32);
        *pos += k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors of odd lengths written one after another read back the same, the stream
    /// is exactly as long as their bits, and its bits are those of `pack_bits` on the
    /// concatenation (lowest first).
    #[test]
    fn bit_streams_round_trip_at_any_length() {
        let mut x = 0x0123_4567_89ab_cdefu64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let lens = [1usize, 63, 64, 65, 130, 7, 0, 200];
        let vecs: Vec<Vec<u64>> = lens
            .iter()
            .map(|&n| {
                let mut v: Vec<u64> = (0..n.div_ceil(64)).map(|_| next()).collect();
                if n % 64 != 0 {
                    *v.last_mut().unwrap() &= (1u64 << (n % 64)) - 1;
                }
                v
            })
            .collect();
        let mut sink = BitWriter::with_capacity(0);
        let mut flat = Vec::new();
        for (v, &n) in vecs.iter().zip(&lens) {
            push_words(&mut sink, v, n);
            flat.extend((0..n).map(|i| ((v[i / 64] >> (i % 64)) & 1) as u8));
        }
        let bytes = sink.finish();
        assert_eq!(bytes, crate::net::pack_bits(&flat));
        let mut pos = 0;
        for (v, &n) in vecs.iter().zip(&lens) {
            let mut got = vec![0u64; n.div_ceil(64)];
            xor_words(&bytes, &mut pos, &mut got, n);
            assert_eq!(&got, v, "length {n}");
        }
        assert_eq!(pos, lens.iter().sum::<usize>());
    }
}
