//! Protocols on shares. Every function is run by both parties with the same public
//! arguments and their own shares, and returns this party's share of the result.
//!
//! * [`arith`]: multiplication and matrix product with Beaver triples, truncation
//!   (probabilistic local, and faithful);
//! * [`boolean`]: AND with bit triples, B2A, the multiplexer (select), A2B;
//! * [`compare`]: the CrypTFlow2 millionaire protocol, MSB, DReLU, ReLU, less-than, max,
//!   max-pool, argmax;
//! * [`approx`]: exp, reciprocal, sigmoid and softmax in fixed point, with stated error.
//!
//! Arithmetic shares are `Vec<u64>` in a [`crate::ring::Ring`]; boolean shares are
//! `Vec<u8>` of bits (XOR sharing).

pub mod approx;
pub mod arith;
pub mod boolean;
pub mod compare;

use rand::{CryptoRng, RngCore};

use crate::error::{Error, Result};
use crate::net::{recv_ring, send_ring, Channel};
use crate::party::Party;
use crate::ring::Ring;

/// Sends `v` and receives the peer's vector of the same length (one simultaneous round).
pub(crate) fn exchange<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    v: &[u64],
    what: &'static str,
) -> Result<Vec<u64>> {
    send_ring(p.channel(), ring, v)?;
    recv_ring(p.channel(), ring, v.len(), what)
}

pub(crate) fn check_len(what: &'static str, expected: usize, found: usize) -> Result<()> {
    if expected != found {
        return Err(Error::InvalidInput {
            what,
            expected: expected as u64,
            found: found as u64,
        });
    }
    Ok(())
}
