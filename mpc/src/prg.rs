//! Correlated randomness from shared PRG seeds: once the parties agree on a seed, both
//! expand the same stream locally, at no further communication.

use rand::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::error::Result;
use crate::net::{recv_exact, Channel};
use crate::ring::Ring;
use crate::share::PartyId;

/// A PRG both parties hold with the same seed (ChaCha20). Not thread-safe to share; clone
/// the seed instead.
#[derive(Debug, Clone)]
pub struct SharedPrg {
    rng: ChaCha20Rng,
}

impl SharedPrg {
    /// The PRG of a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            rng: ChaCha20Rng::from_seed(seed),
        }
    }

    /// Agrees on a fresh seed: each party contributes 32 random bytes, the seed is their
    /// XOR (one simultaneous exchange; secure against a semi-honest peer).
    pub fn agree<C: Channel + ?Sized, R: RngCore + CryptoRng>(
        ch: &mut C,
        rng: &mut R,
    ) -> Result<Self> {
        let mut mine = [0u8; 32];
        rng.fill_bytes(&mut mine);
        ch.send(&mine)?;
        let theirs = recv_exact(ch, "prg seed", 32)?;
        let mut seed = [0u8; 32];
        for i in 0..32 {
            seed[i] = mine[i] ^ theirs[i];
        }
        Ok(Self::from_seed(seed))
    }

    /// `n` common random ring elements.
    pub fn ring_vec(&mut self, ring: Ring, n: usize) -> Vec<u64> {
        ring.random_vec(&mut self.rng, n)
    }

    /// This party's share of a sharing of zero: party 0 gets `r`, party 1 gets `-r`.
    pub fn zero_share(&mut self, ring: Ring, party: PartyId, n: usize) -> Vec<u64> {
        let r = self.ring_vec(ring, n);
        match party {
            PartyId::P0 => r,
            PartyId::P1 => r.into_iter().map(|x| ring.neg(x)).collect(),
        }
    }

    /// A 32-byte sub-seed.
    pub fn seed(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.rng.fill_bytes(&mut s);
        s
    }

    /// The underlying generator.
    pub fn rng(&mut self) -> &mut ChaCha20Rng {
        &mut self.rng
    }
}

/// A fresh CSPRNG seeded from the operating system.
pub fn os_rng() -> ChaCha20Rng {
    ChaCha20Rng::from_os_rng()
}
