//! A party of a two-party computation: its role, the channel to the peer, its CSPRNG,
//! silent OT in both directions (Ferret over IKNP, [`crate::ot::ferret`]) and a PRG seed
//! shared with the peer.
//!
//! Generic over the [`Channel`] and the RNG, so the same protocol code runs in one process
//! (over [`crate::net::MemoryChannel`]) and across machines (over
//! [`crate::net::TcpChannel`]). `Send` if its parts are; not meant to be shared.

use rand::{CryptoRng, RngCore};

use crate::error::{Error, Result};
use crate::net::{Channel, Stats};
use crate::ot::{OtReceiver, OtSender};
use crate::prg::SharedPrg;
use crate::share::PartyId;

/// One of the two parties, set up for the protocols of [`crate::protocols`].
#[derive(Debug)]
pub struct Party<C: Channel, R: RngCore + CryptoRng> {
    id: PartyId,
    ch: C,
    rng: R,
    ot_send: OtSender,
    ot_recv: OtReceiver,
    prg: SharedPrg,
    digit_bits: u32,
}

/// Mutable views of a party's parts, borrowed at once.
pub(crate) struct Parts<'a, C, R> {
    pub id: PartyId,
    pub ch: &'a mut C,
    pub rng: &'a mut R,
    pub ot_send: &'a mut OtSender,
    pub ot_recv: &'a mut OtReceiver,
}

impl<C: Channel, R: RngCore + CryptoRng> Party<C, R> {
    /// Sets up: silent OT in both directions (128 Chou-Orlandi base OTs and 74,036 IKNP
    /// OTs each, which bootstrap Ferret) and a shared seed. Both parties call it, with
    /// different `id`s.
    pub fn setup(id: PartyId, ch: C, rng: R) -> Result<Self> {
        Self::try_setup(id, ch, rng).map_err(|(e, _)| e)
    }

    /// As [`Party::setup`], but a failed set-up gives the channel back with the error (a
    /// caller that sets up lazily, in the middle of a session, keeps its channel to end
    /// the session cleanly).
    pub fn try_setup(id: PartyId, mut ch: C, mut rng: R) -> std::result::Result<Self, (Error, C)> {
        match Self::setup_parts(id, &mut ch, &mut rng) {
            Ok((ot_send, ot_recv, prg)) => Ok(Self {
                id,
                ch,
                rng,
                ot_send,
                ot_recv,
                prg,
                digit_bits: crate::protocols::compare::BETA,
            }),
            Err(e) => Err((e, ch)),
        }
    }

    fn setup_parts(
        id: PartyId,
        ch: &mut C,
        rng: &mut R,
    ) -> Result<(OtSender, OtReceiver, SharedPrg)> {
        let (ot_send, ot_recv) = match id {
            PartyId::P0 => {
                let s = OtSender::setup_silent(ch, rng)?;
                let r = OtReceiver::setup_silent(ch, rng)?;
                (s, r)
            }
            PartyId::P1 => {
                let r = OtReceiver::setup_silent(ch, rng)?;
                let s = OtSender::setup_silent(ch, rng)?;
                (s, r)
            }
        };
        let prg = SharedPrg::agree(ch, rng)?;
        Ok((ot_send, ot_recv, prg))
    }

    /// Makes `n01` OTs from party 0 to party 1 and `n10` from party 1 to party 0 ready, so
    /// that the protocol that follows never waits for a refill: both parties call it
    /// with the same arguments before a step that uses OT in both directions at once.
    /// Refills alternate, each party's own direction first: both expand their sender's
    /// trees at the same time, then each expands its receiver's from the other's
    /// message, and at most one refill message is in flight each way (no deadlock on a
    /// full socket).
    pub fn ensure_ots(&mut self, n01: usize, n10: usize) -> Result<()> {
        let (n_send, n_recv) = match self.id {
            PartyId::P0 => (n01, n10),
            PartyId::P1 => (n10, n01),
        };
        loop {
            let sent = self.ot_send.ensure_step(&mut self.ch, n_send)?;
            let received = self.ot_recv.ensure_step(&mut self.ch, n_recv)?;
            if !sent && !received {
                return Ok(());
            }
        }
    }

    /// The digit size of the millionaire comparisons ([`crate::protocols::compare::BETA`]
    /// unless set): both parties must use the same.
    pub fn digit_bits(&self) -> u32 {
        self.digit_bits
    }

    /// Sets the digit size of the millionaire comparisons, 1 to
    /// [`crate::protocols::compare::MAX_DIGIT_BITS`] (both parties the same, e.g. from
    /// [`crate::protocols::compare::digit_bits_for`] of a network both know): larger digits
    /// take fewer correlated OTs and send more bits.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a size out of range.
    pub fn set_digit_bits(&mut self, bits: u32) -> Result<()> {
        if !(1..=crate::protocols::compare::MAX_DIGIT_BITS).contains(&bits) {
            return Err(Error::InvalidInput {
                what: "millionaire digit bits (1 to the expected maximum)",
                expected: u64::from(crate::protocols::compare::MAX_DIGIT_BITS),
                found: u64::from(bits),
            });
        }
        self.digit_bits = bits;
        Ok(())
    }

    /// This party's role.
    pub fn id(&self) -> PartyId {
        self.id
    }

    /// Whether this is party 0.
    pub fn is_p0(&self) -> bool {
        self.id == PartyId::P0
    }

    /// The channel and the CSPRNG at once (for calls that need both).
    pub fn channel_and_rng(&mut self) -> (&mut C, &mut R) {
        (&mut self.ch, &mut self.rng)
    }

    /// The channel to the peer.
    pub fn channel(&mut self) -> &mut C {
        &mut self.ch
    }

    /// This party's CSPRNG.
    pub fn rng(&mut self) -> &mut R {
        &mut self.rng
    }

    /// The PRG shared with the peer (correlated randomness at no communication).
    pub fn shared_prg(&mut self) -> &mut SharedPrg {
        &mut self.prg
    }

    /// The traffic so far.
    pub fn stats(&self) -> Stats {
        self.ch.stats()
    }

    /// Gives the channel back.
    pub fn into_channel(self) -> C {
        self.ch
    }

    pub(crate) fn parts(&mut self) -> Parts<'_, C, R> {
        Parts {
            id: self.id,
            ch: &mut self.ch,
            rng: &mut self.rng,
            ot_send: &mut self.ot_send,
            ot_recv: &mut self.ot_recv,
        }
    }
}
