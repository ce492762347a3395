//! Triples from oblivious transfer (no third party).
//!
//! Arithmetic: Gilboa's product. For `x * y` with `x` at one party and `y` at the other,
//! the holder of `y` receives one correlated OT per bit `y_k` with correlation
//! `x * 2^k`; the sums of the outputs are shares of `x y`. A triple needs the two cross
//! terms `a0 b1` and `a1 b0`, one per direction, run at once: `2 l` OTs of `128 + l` bits
//! per triple. Matrix triples use vector correlations (a column of `A` per OT).
//!
//! AND triples: two random OTs (one per direction) give one triple, or two triples
//! sharing `a` with 2-bit messages.

use rand::{CryptoRng, RngCore};

use super::{ArithTriples, BitTriples, MatrixTriple, TripleSource};
use crate::error::{Error, Result};
use crate::net::Channel;
use crate::ot::{OtReceiver, OtSender};
use crate::party::Party;
use crate::ring::Ring;

/// Triples made with OT, from the parties' own OT extension.
#[derive(Debug, Default, Clone, Copy)]
pub struct OtTriples;

/// Shares of cross products, both directions at once: `xs` (`n x w`, this party's
/// vectors) times the peer's scalars, and the peer's vectors times `ys` (`n`, this
/// party's scalars). Returns `(share of xs * peer_y, share of peer_x * ys)`.
pub(crate) fn gilboa_both<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    xs: &[u64],
    ys: &[u64],
    w: usize,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let n = ys.len();
    if xs.len() != n * w {
        return Err(Error::InvalidInput {
            what: "Gilboa product shapes",
            expected: (n * w) as u64,
            found: xs.len() as u64,
        });
    }
    let l = ring.bits() as usize;
    p.ensure_ots(n * l, n * l)?;
    let parts = p.parts();
    // Receiver role: choice bits of ys.
    let mut choices = Vec::with_capacity(n * l);
    for &y in ys {
        for k in 0..l {
            choices.push(((y >> k) & 1) as u8);
        }
    }
    let pending = parts
        .ot_recv
        .start_receive_correlated(parts.ch, ring, &choices, w)?;
    // Sender role: correlations x * 2^k.
    let mut deltas = Vec::with_capacity(n * l * w);
    for i in 0..n {
        for k in 0..l {
            for j in 0..w {
                deltas.push(ring.reduce(xs[i * w + j] << k));
            }
        }
    }
    let m0 = parts.ot_send.send_correlated(parts.ch, ring, &deltas, w)?;
    let got = OtReceiver::finish_receive_correlated(parts.ch, pending)?;
    let mut mine = vec![0u64; n * w];
    let mut theirs = vec![0u64; n * w];
    for i in 0..n {
        for k in 0..l {
            for j in 0..w {
                let idx = (i * l + k) * w + j;
                mine[i * w + j] = ring.sub(mine[i * w + j], m0[idx]);
                theirs[i * w + j] = ring.add(theirs[i * w + j], got[idx]);
            }
        }
    }
    Ok((mine, theirs))
}

impl<C: Channel, R: RngCore + CryptoRng> TripleSource<C, R> for OtTriples {
    fn arith(&mut self, p: &mut Party<C, R>, ring: Ring, n: usize) -> Result<ArithTriples> {
        let a = ring.random_vec(p.rng(), n);
        let b = ring.random_vec(p.rng(), n);
        // My a times peer's b, and peer's a times my b.
        let (s1, s2) = gilboa_both(p, ring, &a, &b, 1)?;
        let c = (0..n)
            .map(|i| ring.add(ring.add(ring.mul(a[i], b[i]), s1[i]), s2[i]))
            .collect();
        Ok(ArithTriples { ring, a, b, c })
    }

    fn matrix(
        &mut self,
        p: &mut Party<C, R>,
        ring: Ring,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<MatrixTriple> {
        // Gilboa runs one OT per bit of each entry of B, carrying a column of A: k n l OTs
        // of m elements. The transposed triple (B^T A^T = C^T) runs k m l OTs of n
        // elements: cheaper when n > m. Both parties decide from the public shape.
        if n > m {
            let t = self.matrix(p, ring, n, k, m)?;
            let tr = |v: &[u64], rows: usize, cols: usize| -> Vec<u64> {
                let mut out = vec![0u64; v.len()];
                for i in 0..rows {
                    for j in 0..cols {
                        out[j * rows + i] = v[i * cols + j];
                    }
                }
                out
            };
            return Ok(MatrixTriple {
                ring,
                m,
                k,
                n,
                // A = (B')^T with B' (k x m); B = (A')^T with A' (n x k); C = (C')^T.
                a: tr(&t.b, k, m),
                b: tr(&t.a, n, k),
                c: tr(&t.c, n, m),
            });
        }
        let a = ring.random_vec(p.rng(), m * k);
        let b = ring.random_vec(p.rng(), k * n);
        // OT (t, j): vector = column t of my A (length m), scalar = my B[t][j].
        let mut xs = Vec::with_capacity(k * n * m);
        let mut ys = Vec::with_capacity(k * n);
        for t in 0..k {
            for j in 0..n {
                for i in 0..m {
                    xs.push(a[i * k + t]);
                }
                ys.push(b[t * n + j]);
            }
        }
        let (s1, s2) = gilboa_both(p, ring, &xs, &ys, m)?;
        let mut c = ring.matmul(&a, &b, m, k, n);
        for t in 0..k {
            for j in 0..n {
                for i in 0..m {
                    let idx = (t * n + j) * m + i;
                    c[i * n + j] = ring.add(c[i * n + j], ring.add(s1[idx], s2[idx]));
                }
            }
        }
        Ok(MatrixTriple {
            ring,
            m,
            k,
            n,
            a,
            b,
            c,
        })
    }
}

/// Random OTs turned into AND triples at a time.
const TRIPLE_CHUNK: usize = 1 << 14;

/// `n` AND triples with `width`-bit `b` and `c` (1 to 8), from `2n` random OTs.
pub fn bit_triples<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    n: usize,
    width: u32,
) -> Result<BitTriples> {
    if !(1..=8).contains(&width) {
        return Err(Error::InvalidInput {
            what: "AND triple width (1..=8)",
            expected: 8,
            found: width as u64,
        });
    }
    let mk = ((1u16 << width) - 1) as u8;
    p.ensure_ots(n, n)?;
    let parts = p.parts();
    let mut a = Vec::with_capacity(n);
    let mut b = Vec::with_capacity(n);
    let mut c = Vec::with_capacity(n);
    // In chunks, so that the OTs' blocks stay in cache and their buffers are reused (with
    // silent OT, made ready above, the chunks send nothing).
    let mut done = 0;
    while done < n {
        let m = TRIPLE_CHUNK.min(n - done);
        let (ac, wr) = parts.ot_recv.random_ot(parts.ch, m, parts.rng)?;
        let pairs = OtSender::random_ot(parts.ot_send, parts.ch, m)?;
        for ((&ai, w), pair) in ac.iter().zip(&wr).zip(&pairs) {
            let v = pair[0] as u8 & mk;
            let u = (pair[1] as u8 & mk) ^ v;
            let am = if ai == 1 { mk } else { 0 };
            b.push(u);
            c.push((am & u) ^ (*w as u8 & mk) ^ v);
        }
        a.extend_from_slice(&ac);
        done += m;
    }
    Ok(BitTriples { width, a, b, c })
}
