//! Base OT: the "simplest OT" of Chou and Orlandi (Latincrypt 2015) over the Ristretto
//! group (curve25519-dalek), outputting random 128-bit keys.
//!
//! Sender: `A = aG`. Receiver with choice `c`: `B = bG + cA`, key `H(i, A, B, bA)`.
//! Sender keys: `k0 = H(i, A, B, aB)`, `k1 = H(i, A, B, a(B - A))`. The receiver's point
//! is selected in constant time. Secure against semi-honest parties (and the receiver's
//! choice is hidden perfectly); `H` is SHA-256 truncated to 128 bits.

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable};

use super::Block;
use crate::error::{Error, Result};
use crate::net::{recv_exact, Channel};

fn random_scalar<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> Scalar {
    let mut wide = [0u8; 64];
    rng.fill_bytes(&mut wide);
    Scalar::from_bytes_mod_order_wide(&wide)
}

fn kdf(i: usize, a: &[u8; 32], b: &[u8; 32], p: &RistrettoPoint) -> Block {
    let mut h = Sha256::new();
    h.update(b"cipherml-mpc/base-ot/v1");
    h.update((i as u64).to_le_bytes());
    h.update(a);
    h.update(b);
    h.update(p.compress().as_bytes());
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    u128::from_le_bytes(out)
}

fn decode_point(bytes: &[u8]) -> Result<RistrettoPoint> {
    let c = CompressedRistretto::from_slice(bytes).map_err(|_| Error::Malformed {
        what: "ristretto point",
        expected: 32,
        found: bytes.len() as u64,
    })?;
    c.decompress()
        .ok_or_else(|| Error::aborted("peer sent an invalid Ristretto point encoding"))
}

/// The sender of base OTs.
#[derive(Debug, Default, Clone, Copy)]
pub struct BaseOtSender;

/// The receiver of base OTs.
#[derive(Debug, Default, Clone, Copy)]
pub struct BaseOtReceiver;

impl BaseOtSender {
    /// Runs `n` random OTs; returns the pairs of keys `(k0, k1)`.
    pub fn send<C: Channel + ?Sized, R: RngCore + CryptoRng + ?Sized>(
        ch: &mut C,
        n: usize,
        rng: &mut R,
    ) -> Result<Vec<(Block, Block)>> {
        let a = random_scalar(rng);
        let big_a = RistrettoPoint::mul_base(&a);
        let a_bytes = big_a.compress().to_bytes();
        ch.send(&a_bytes)?;
        let msg = recv_exact(ch, "base OT receiver points", 32 * n)?;
        let aa = a * big_a;
        let mut out = Vec::with_capacity(n);
        for (i, chunk) in msg.chunks_exact(32).enumerate() {
            let b = decode_point(chunk)?;
            let mut b_bytes = [0u8; 32];
            b_bytes.copy_from_slice(chunk);
            let ab = a * b;
            out.push((
                kdf(i, &a_bytes, &b_bytes, &ab),
                kdf(i, &a_bytes, &b_bytes, &(ab - aa)),
            ));
        }
        Ok(out)
    }
}

impl BaseOtReceiver {
    /// Runs one random OT per choice bit (`0` or `1`); returns the chosen keys.
    pub fn receive<C: Channel + ?Sized, R: RngCore + CryptoRng + ?Sized>(
        ch: &mut C,
        choices: &[u8],
        rng: &mut R,
    ) -> Result<Vec<Block>> {
        let a_msg = recv_exact(ch, "base OT sender point", 32)?;
        let big_a = decode_point(&a_msg)?;
        if big_a == RistrettoPoint::identity() {
            return Err(Error::aborted("base OT sender point is the identity"));
        }
        let mut a_bytes = [0u8; 32];
        a_bytes.copy_from_slice(&a_msg);
        let mut msg = Vec::with_capacity(32 * choices.len());
        let mut keys = Vec::with_capacity(choices.len());
        for (i, &c) in choices.iter().enumerate() {
            let b = random_scalar(rng);
            let bg = RistrettoPoint::mul_base(&b);
            let big_b = RistrettoPoint::conditional_select(&bg, &(bg + big_a), Choice::from(c & 1));
            let b_bytes = big_b.compress().to_bytes();
            msg.extend_from_slice(&b_bytes);
            keys.push(kdf(i, &a_bytes, &b_bytes, &(b * big_a)));
        }
        ch.send(&msg)?;
        ch.flush()?;
        Ok(keys)
    }
}
