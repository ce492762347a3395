//! Triples from homomorphic encryption (BFV of [`cipherml_he`]): no third party.
//!
//! The client (holder of the secret key) samples `a1, b1`, cuts them into `w`-bit limbs
//! and sends seeded symmetric encryptions of the limbs (batched, `N` values per
//! ciphertext). The server samples `a0, b0` and computes, for each limb diagonal `d`
//! (with `w d < l`), `S_d = sum_{i+j=d} a1_i b0_j + b1_i a0_j` under encryption, adds a
//! mask `r_d` and fresh flooding noise, and returns it. The client decrypts `S_d + r_d`;
//! then `a0 b1 + a1 b0 = sum_d 2^(w d) S_d mod 2^l`, so
//! `c1 = a1 b1 + sum_d 2^(w d) (S_d + r_d)` and `c0 = a0 b0 - sum_d 2^(w d) r_d`.
//!
//! **Statistical security.** `S_d < 2^s` is an integer far below the plaintext modulus `t`
//! (a 60-bit prime), so the mask is drawn uniformly from `[0, 2^58)` with no wrap-around:
//! `S_d + r_d` hides `S_d` up to statistical distance `2^(s - 58)` per value (`s = 19`
//! for `l = 32`, `s = 20` for `l = 64`, with `w = 8`: distance at most `2^-38`). The
//! ciphertext returned is re-randomized by a public-key encryption of zero whose noise is
//! scaled up to about `2^(log q - log t - 8)` by a ladder of fresh encryptions
//! (`sum_j 2^(7 j) Enc(0)`), flooding the noise of the products (about `2^72`) by a
//! margin of more than `2^50`: the noise the client sees carries no usable information
//! on `a0, b0` (circuit privacy by noise flooding; heuristic in that the ladder's sum is
//! not an exactly uniform distribution). Semi-honest security.

use std::sync::Arc;

use cipherml_he::bfv::{
    BfvParameters, BfvParametersLiteral, Ciphertext, Decryptor, Encoder, Encryptor, Evaluator,
    PlaintextModulus,
};
use cipherml_he::rlwe::{PublicKey, SecretKey};
use rand::{CryptoRng, RngCore};

use super::{ArithTriples, MatrixTriple, TripleSource};
use crate::error::{Error, Result};
use crate::net::Channel;
use crate::party::Party;
use crate::ring::Ring;

/// Limb width in bits.
const LIMB: u32 = 8;
/// Masks are uniform in `[0, 2^MASK_BITS)`.
const MASK_BITS: u32 = 58;
/// Base of the flooding ladder.
const LADDER_SHIFT: u32 = 7;

/// The BFV parameters of HE triples: `N = 8192`, `log QP = 218` (128-bit security), a
/// 60-bit batching prime `t`.
pub fn he_triple_parameters() -> Result<Arc<BfvParameters>> {
    let lit = BfvParametersLiteral {
        degree: 8192,
        ciphertext_moduli_bits: vec![50, 50, 49, 49],
        special_moduli_bits: vec![20],
        plaintext: PlaintextModulus::Batching { bits: 60 },
    };
    Ok(BfvParameters::new(&lit)?)
}

fn limbs(ring: Ring) -> usize {
    ring.bits().div_ceil(LIMB) as usize
}

fn limb(v: &[u64], i: usize) -> Vec<u64> {
    v.iter()
        .map(|&x| (x >> (LIMB as usize * i)) & 0xff)
        .collect()
}

/// The client of HE triples (holds the secret key).
#[derive(Debug)]
pub struct HeTripleClient {
    params: Arc<BfvParameters>,
    decryptor: Decryptor,
    encoder: Encoder,
}

/// The server of HE triples (holds the client's public key).
#[derive(Debug)]
pub struct HeTripleServer {
    params: Arc<BfvParameters>,
    encryptor: Encryptor,
    encoder: Encoder,
    evaluator: Evaluator,
}

impl HeTripleClient {
    /// Generates keys and sends the public key to the server ([`HeTripleServer::setup`]).
    pub fn setup<C: Channel + ?Sized, R: RngCore + CryptoRng>(
        ch: &mut C,
        rng: &mut R,
    ) -> Result<Self> {
        let params = he_triple_parameters()?;
        let sk = Arc::new(SecretKey::random(params.context(), rng));
        let pk = PublicKey::new(&sk, rng);
        ch.send(&pk.to_bytes(params.context()))?;
        ch.flush()?;
        Ok(Self {
            decryptor: Decryptor::new(&params, sk)?,
            encoder: Encoder::new(&params),
            params,
        })
    }

    /// Shares of `n` triples.
    pub fn triples<C: Channel + ?Sized, R: RngCore + CryptoRng>(
        &self,
        ch: &mut C,
        ring: Ring,
        n: usize,
        rng: &mut R,
    ) -> Result<ArithTriples> {
        let a = ring.random_vec(rng, n);
        let b = ring.random_vec(rng, n);
        let mut c = ring.mul_vec(&a, &b);
        let slots = self.encoder.capacity();
        let ll = limbs(ring);
        for start in (0..n).step_by(slots) {
            let end = (start + slots).min(n);
            for v in [&a[start..end], &b[start..end]] {
                for i in 0..ll {
                    let pt = self.encoder.encode_u64(&limb(v, i))?;
                    let ct = self.decryptor.encrypt_symmetric(&pt, rng)?;
                    ch.send(&ct.to_bytes(&self.params))?;
                }
            }
            ch.flush()?;
            for d in 0..ll {
                let m = ch.recv()?;
                let ct = Ciphertext::from_bytes(&self.params, &m)?;
                let y = self.encoder.decode_u64(&self.decryptor.decrypt(&ct)?)?;
                for (k, ci) in c[start..end].iter_mut().enumerate() {
                    *ci = ring.add(*ci, ring.reduce(y[k].wrapping_shl(LIMB * d as u32)));
                }
            }
        }
        Ok(ArithTriples { ring, a, b, c })
    }
}

impl HeTripleServer {
    /// Receives the client's public key.
    pub fn setup<C: Channel + ?Sized>(ch: &mut C) -> Result<Self> {
        let params = he_triple_parameters()?;
        let m = ch.recv()?;
        let pk = PublicKey::from_bytes(params.context(), &m)?;
        Ok(Self {
            encryptor: Encryptor::new(&params, pk)?,
            encoder: Encoder::new(&params),
            evaluator: Evaluator::new(&params),
            params,
        })
    }

    fn flood<R: RngCore + CryptoRng>(&self, rng: &mut R) -> Result<Ciphertext> {
        let zero = self.encoder.encode_u64(&[])?;
        let log_t = (self.params.plaintext_modulus() as f64).log2();
        let target = self.params.log2_q() - log_t - 8.0;
        let steps = ((target - 8.0) / LADDER_SHIFT as f64).ceil().max(0.0) as usize;
        let mut f = self.encryptor.encrypt(&zero, rng)?;
        for _ in 0..steps {
            f = self.evaluator.mul_scalar(&f, 1 << LADDER_SHIFT)?;
            let z = self.encryptor.encrypt(&zero, rng)?;
            self.evaluator.add_assign(&mut f, &z)?;
        }
        Ok(f)
    }

    /// Shares of `n` triples.
    pub fn triples<C: Channel + ?Sized, R: RngCore + CryptoRng>(
        &self,
        ch: &mut C,
        ring: Ring,
        n: usize,
        rng: &mut R,
    ) -> Result<ArithTriples> {
        let a = ring.random_vec(rng, n);
        let b = ring.random_vec(rng, n);
        let mut c = ring.mul_vec(&a, &b);
        let slots = self.encoder.capacity();
        let ll = limbs(ring);
        for start in (0..n).step_by(slots) {
            let end = (start + slots).min(n);
            let mut cts = Vec::with_capacity(2 * ll);
            for _ in 0..2 * ll {
                let m = ch.recv()?;
                let ct = Ciphertext::from_bytes(&self.params, &m)?;
                if ct.len() != 2 {
                    return Err(Error::Malformed {
                        what: "HE triple ciphertext size",
                        expected: 2,
                        found: ct.len() as u64,
                    });
                }
                cts.push(ct);
            }
            let (ca, cb) = cts.split_at(ll);
            let pa: Vec<_> = (0..ll)
                .map(|j| self.encoder.encode_u64(&limb(&a[start..end], j)))
                .collect::<std::result::Result<_, _>>()?;
            let pb: Vec<_> = (0..ll)
                .map(|j| self.encoder.encode_u64(&limb(&b[start..end], j)))
                .collect::<std::result::Result<_, _>>()?;
            for d in 0..ll {
                let mut acc: Option<Ciphertext> = None;
                for i in 0..=d {
                    let j = d - i;
                    for t in [
                        self.evaluator.mul_plain(&ca[i], &pb[j])?,
                        self.evaluator.mul_plain(&cb[i], &pa[j])?,
                    ] {
                        match acc.as_mut() {
                            None => acc = Some(t),
                            Some(x) => self.evaluator.add_assign(x, &t)?,
                        }
                    }
                }
                let mut acc = acc.ok_or_else(|| Error::aborted("empty diagonal"))?;
                let r: Vec<u64> = (0..end - start)
                    .map(|_| rng.next_u64() & ((1u64 << MASK_BITS) - 1))
                    .collect();
                acc = self
                    .evaluator
                    .add_plain(&acc, &self.encoder.encode_u64(&r)?)?;
                self.evaluator.add_assign(&mut acc, &self.flood(rng)?)?;
                ch.send(&acc.to_bytes(&self.params))?;
                for (k, ci) in c[start..end].iter_mut().enumerate() {
                    *ci = ring.sub(*ci, ring.reduce(r[k].wrapping_shl(LIMB * d as u32)));
                }
            }
            ch.flush()?;
        }
        Ok(ArithTriples { ring, a, b, c })
    }
}

/// A [`TripleSource`] backed by HE: the client role or the server role.
#[derive(Debug)]
pub enum HeTriples {
    /// This party holds the key.
    Client(HeTripleClient),
    /// This party computes under encryption.
    Server(HeTripleServer),
}

impl<C: Channel, R: RngCore + CryptoRng> TripleSource<C, R> for HeTriples {
    fn arith(&mut self, p: &mut Party<C, R>, ring: Ring, n: usize) -> Result<ArithTriples> {
        let parts = p.parts();
        match self {
            HeTriples::Client(c) => c.triples(parts.ch, ring, n, parts.rng),
            HeTriples::Server(s) => s.triples(parts.ch, ring, n, parts.rng),
        }
    }

    /// Matrix triples are not made under HE here; they fall back to OT (Gilboa).
    fn matrix(
        &mut self,
        p: &mut Party<C, R>,
        ring: Ring,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<MatrixTriple> {
        super::ot::OtTriples.matrix(p, ring, m, k, n)
    }
}
