//! Triples from a dealer: a third process (TF Encrypted's "crypto producer"), never one
//! of the two parties. It must collude with neither; it learns nothing about the inputs.
//!
//! Each party sends the dealer the same request; party 0 gets a 32-byte seed from which
//! it expands `a0, b0, c0`, party 1 gets a seed for `a1, b1` and `c1 = a b - c0` in full.

use rand::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::{ArithTriples, MatrixTriple, TripleSource};
use crate::error::{Error, Result};
use crate::net::{decode_ring, encode_ring, recv_exact, Channel};
use crate::party::Party;
use crate::ring::Ring;
use crate::share::PartyId;

const REQ_LEN: usize = 1 + 1 + 3 * 8;
const KIND_ARITH: u8 = 1;
const KIND_MATRIX: u8 = 2;
/// Largest number of ring elements one request may ask for.
pub const MAX_REQUEST_ELEMENTS: u64 = 1 << 26;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    kind: u8,
    bits: u8,
    dims: [u64; 3],
}

impl Request {
    fn encode(&self) -> Vec<u8> {
        let mut v = vec![self.kind, self.bits];
        for d in self.dims {
            v.extend_from_slice(&d.to_le_bytes());
        }
        v
    }

    fn decode(b: &[u8]) -> Result<Self> {
        let kind = b[0];
        let bits = b[1];
        let mut dims = [0u64; 3];
        for (i, d) in dims.iter_mut().enumerate() {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[2 + 8 * i..10 + 8 * i]);
            *d = u64::from_le_bytes(a);
        }
        if kind != KIND_ARITH && kind != KIND_MATRIX {
            return Err(Error::Malformed {
                what: "dealer request kind",
                expected: KIND_MATRIX as u64,
                found: kind as u64,
            });
        }
        Ring::new(bits as u32)?;
        let (sa, sb, sc) = sizes(kind, dims);
        let total = sa.checked_add(sb).and_then(|x| x.checked_add(sc));
        match total {
            Some(t) if t <= MAX_REQUEST_ELEMENTS as u128 => Ok(Self { kind, bits, dims }),
            _ => Err(Error::MessageTooLarge {
                len: total.unwrap_or(u128::MAX).min(u64::MAX as u128) as u64,
                max: MAX_REQUEST_ELEMENTS,
            }),
        }
    }
}

fn sizes(kind: u8, d: [u64; 3]) -> (u128, u128, u128) {
    let (m, k, n) = (d[0] as u128, d[1] as u128, d[2] as u128);
    if kind == KIND_ARITH {
        (m, m, m)
    } else {
        (m * k, k * n, m * n)
    }
}

fn expand(ring: Ring, seed: [u8; 32], lens: &[usize]) -> Vec<Vec<u64>> {
    let mut rng = ChaCha20Rng::from_seed(seed);
    lens.iter().map(|&l| ring.random_vec(&mut rng, l)).collect()
}

/// The dealer process. Serves triple requests of two parties until both hang up.
#[derive(Debug, Default, Clone, Copy)]
pub struct Dealer;

impl Dealer {
    /// Serves requests on the channels to party 0 and party 1 until both close them.
    /// Returns the number of requests served. Mismatched requests abort.
    pub fn serve<C0: Channel, C1: Channel, R: RngCore + CryptoRng>(
        ch0: &mut C0,
        ch1: &mut C1,
        rng: &mut R,
    ) -> Result<u64> {
        let mut served = 0;
        loop {
            let r0 = ch0.recv();
            let r1 = ch1.recv();
            let (m0, m1) = match (r0, r1) {
                (Err(Error::PeerClosed), Err(Error::PeerClosed)) => return Ok(served),
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => return Err(e),
            };
            if m0.len() != REQ_LEN || m1.len() != REQ_LEN {
                return Err(Error::Malformed {
                    what: "dealer request",
                    expected: REQ_LEN as u64,
                    found: m0.len().max(m1.len()) as u64,
                });
            }
            let (q0, q1) = (Request::decode(&m0)?, Request::decode(&m1)?);
            if q0 != q1 {
                return Err(Error::aborted("the parties' triple requests differ"));
            }
            let ring = Ring::new(q0.bits as u32)?;
            let (sa, sb, sc) = sizes(q0.kind, q0.dims);
            let (sa, sb, sc) = (sa as usize, sb as usize, sc as usize);
            let mut s0 = [0u8; 32];
            let mut s1 = [0u8; 32];
            rng.fill_bytes(&mut s0);
            rng.fill_bytes(&mut s1);
            let v0 = expand(ring, s0, &[sa, sb, sc]);
            let v1 = expand(ring, s1, &[sa, sb]);
            let a = ring.add_vec(&v0[0], &v1[0]);
            let b = ring.add_vec(&v0[1], &v1[1]);
            let c = if q0.kind == KIND_ARITH {
                ring.mul_vec(&a, &b)
            } else {
                let [m, k, n] = q0.dims;
                ring.matmul(&a, &b, m as usize, k as usize, n as usize)
            };
            let c1 = ring.sub_vec(&c, &v0[2]);
            ch0.send(&s0)?;
            ch0.flush()?;
            let mut msg = s1.to_vec();
            msg.extend(encode_ring(ring, &c1));
            ch1.send(&msg)?;
            ch1.flush()?;
            served += 1;
        }
    }
}

/// A party's connection to the dealer: a [`TripleSource`].
#[derive(Debug)]
pub struct DealerClient<D: Channel> {
    ch: D,
    id: PartyId,
}

impl<D: Channel> DealerClient<D> {
    /// The client of party `id` over `ch`.
    pub fn new(id: PartyId, ch: D) -> Self {
        Self { ch, id }
    }

    /// Gives the channel back (dropping it tells the dealer this party is done).
    pub fn into_channel(self) -> D {
        self.ch
    }

    fn request(&mut self, ring: Ring, kind: u8, dims: [u64; 3]) -> Result<Vec<Vec<u64>>> {
        let req = Request {
            kind,
            bits: ring.bits() as u8,
            dims,
        };
        let (sa, sb, sc) = sizes(kind, dims);
        if sa + sb + sc > MAX_REQUEST_ELEMENTS as u128 {
            return Err(Error::InvalidInput {
                what: "triple request too large",
                expected: MAX_REQUEST_ELEMENTS,
                found: (sa + sb + sc).min(u64::MAX as u128) as u64,
            });
        }
        let (sa, sb, sc) = (sa as usize, sb as usize, sc as usize);
        self.ch.send(&req.encode())?;
        let mut seed = [0u8; 32];
        match self.id {
            PartyId::P0 => {
                seed.copy_from_slice(&recv_exact(&mut self.ch, "dealer seed", 32)?);
                Ok(expand(ring, seed, &[sa, sb, sc]))
            }
            PartyId::P1 => {
                let m = recv_exact(
                    &mut self.ch,
                    "dealer triple shares",
                    32 + sc * ring.byte_len(),
                )?;
                seed.copy_from_slice(&m[..32]);
                let mut v = expand(ring, seed, &[sa, sb]);
                v.push(decode_ring(ring, &m[32..], sc, "dealer c share")?);
                Ok(v)
            }
        }
    }
}

impl<C: Channel, R: RngCore + CryptoRng, D: Channel> TripleSource<C, R> for DealerClient<D> {
    fn arith(&mut self, _p: &mut Party<C, R>, ring: Ring, n: usize) -> Result<ArithTriples> {
        let mut v = self.request(ring, KIND_ARITH, [n as u64, 0, 0])?;
        let c = v.pop().unwrap_or_default();
        let b = v.pop().unwrap_or_default();
        let a = v.pop().unwrap_or_default();
        Ok(ArithTriples { ring, a, b, c })
    }

    fn matrix(
        &mut self,
        _p: &mut Party<C, R>,
        ring: Ring,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<MatrixTriple> {
        let mut v = self.request(ring, KIND_MATRIX, [m as u64, k as u64, n as u64])?;
        let c = v.pop().unwrap_or_default();
        let b = v.pop().unwrap_or_default();
        let a = v.pop().unwrap_or_default();
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
