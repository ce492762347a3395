//! Additive 2-of-2 secret shares in `Z_2^l`: `x = x_0 + x_1 mod 2^l`; sharing an input,
//! and revealing to one named party or to both.

use rand::{CryptoRng, RngCore};

use crate::error::Result;
use crate::net::{recv_ring, send_ring, Channel};
use crate::ring::Ring;

/// Which of the two parties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartyId {
    /// Party 0 (by convention the server, the OT sender of comparisons).
    P0,
    /// Party 1 (by convention the client).
    P1,
}

impl PartyId {
    /// 0 or 1.
    pub fn index(self) -> usize {
        match self {
            PartyId::P0 => 0,
            PartyId::P1 => 1,
        }
    }

    /// The other party.
    pub fn other(self) -> Self {
        match self {
            PartyId::P0 => PartyId::P1,
            PartyId::P1 => PartyId::P0,
        }
    }
}

/// Who learns a revealed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevealTo {
    /// Only this party.
    Party(PartyId),
    /// Both.
    Both,
}

/// Splits `x` into two uniformly random shares (done by whoever knows `x`).
pub fn split<R: RngCore + CryptoRng + ?Sized>(
    ring: Ring,
    x: &[u64],
    rng: &mut R,
) -> (Vec<u64>, Vec<u64>) {
    let r = ring.random_vec(rng, x.len());
    let other = x.iter().zip(&r).map(|(&a, &b)| ring.sub(a, b)).collect();
    (r, other)
}

/// The owner of `x` shares it: sends `x - r` to the peer and keeps `r`.
pub fn share_input<C: Channel + ?Sized, R: RngCore + CryptoRng + ?Sized>(
    ch: &mut C,
    ring: Ring,
    x: &[u64],
    rng: &mut R,
) -> Result<Vec<u64>> {
    let x: Vec<u64> = x.iter().map(|&v| ring.reduce(v)).collect();
    let (mine, theirs) = split(ring, &x, rng);
    send_ring(ch, ring, &theirs)?;
    ch.flush()?;
    Ok(mine)
}

/// The peer of [`share_input`] receives its share of `n` values.
pub fn receive_share<C: Channel + ?Sized>(ch: &mut C, ring: Ring, n: usize) -> Result<Vec<u64>> {
    recv_ring(ch, ring, n, "input share")
}

/// Reveals a shared vector: the parties named by `to` learn it (`None` for the other).
pub fn reveal<C: Channel + ?Sized>(
    ch: &mut C,
    ring: Ring,
    me: PartyId,
    to: RevealTo,
    share: &[u64],
) -> Result<Option<Vec<u64>>> {
    let i_send = match to {
        RevealTo::Both => true,
        RevealTo::Party(p) => p != me,
    };
    let i_learn = match to {
        RevealTo::Both => true,
        RevealTo::Party(p) => p == me,
    };
    if i_send {
        send_ring(ch, ring, share)?;
        ch.flush()?;
    }
    if i_learn {
        let other = recv_ring(ch, ring, share.len(), "revealed share")?;
        Ok(Some(ring.add_vec(share, &other)))
    } else {
        Ok(None)
    }
}

/// Boolean shares (one bit per byte) revealed to both: `b_0 xor b_1`.
pub fn reveal_bits<C: Channel + ?Sized>(ch: &mut C, share: &[u8]) -> Result<Vec<u8>> {
    crate::net::send_bits(ch, share)?;
    let other = crate::net::recv_bits(ch, share.len(), "revealed bits")?;
    Ok(share.iter().zip(&other).map(|(a, b)| a ^ b).collect())
}
