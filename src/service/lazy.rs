//! The two-party link of a service connection: a channel whose set-up (base OTs) runs on
//! first use, lent to one engine session per request. Shared by the server and the client
//! (neither imports the other).

use cipherml_mpc::net::{Channel, Stats};
use cipherml_mpc::party::Party;
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::share::PartyId;
use rand_chacha::ChaCha20Rng;

/// A channel whose two-party set-up (base OTs in both directions) runs on first use, so a
/// session that never runs a hybrid inference never pays for it. Both sides call
/// [`LazyParty::party`] at the same point of the protocol (before the first hybrid
/// inference, after the server's `Ok`).
pub(crate) struct LazyParty<C: Channel> {
    id: PartyId,
    /// The channel before the set-up (`Err`), the party after (`Ok`); `None` only inside
    /// [`LazyParty::party`], which restores it on every path.
    state: Option<Result<Box<Party<C, ChaCha20Rng>>, C>>,
}

const LAZY_STATE: &str = "LazyParty::party restores its state on every path";

impl<C: Channel> LazyParty<C> {
    /// A channel, not set up yet, of party `id`.
    pub(crate) fn new(id: PartyId, ch: C) -> Self {
        Self {
            id,
            state: Some(Err(ch)),
        }
    }

    /// Whether the two-party set-up has run.
    pub(crate) fn is_set_up(&self) -> bool {
        matches!(self.state, Some(Ok(_)))
    }

    /// The channel to the peer.
    pub(crate) fn channel(&mut self) -> &mut C {
        match self.state.as_mut().expect(LAZY_STATE) {
            Ok(p) => p.channel(),
            Err(ch) => ch,
        }
    }

    /// The traffic so far.
    pub(crate) fn stats(&self) -> Stats {
        match self.state.as_ref().expect(LAZY_STATE) {
            Ok(p) => p.stats(),
            Err(ch) => ch.stats(),
        }
    }

    /// Runs `f` on a session over this party (set up now if it was not yet): the party is
    /// lent to the session and always given back, whatever `f` returns.
    pub(crate) fn with_session<T>(
        &mut self,
        setup: crate::tensor::SessionSetup,
        f: impl FnOnce(&mut crate::tensor::Session<C>) -> Result<T, crate::Error>,
    ) -> Result<T, crate::Error> {
        self.party()?;
        let party = match self.state.take() {
            Some(Ok(party)) => party,
            other => {
                self.state = other;
                return Err(cipherml_mpc::Error::aborted("no two-party set-up").into());
            }
        };
        let mut session = crate::tensor::Session::start(*party, setup);
        let result = f(&mut session);
        self.state = Some(Ok(Box::new(session.into_party())));
        result
    }

    /// The party, set up now (with a CSPRNG from the OS) if it was not yet.
    pub(crate) fn party(&mut self) -> Result<&mut Party<C, ChaCha20Rng>, cipherml_mpc::Error> {
        let mut error = None;
        self.state = match self.state.take() {
            Some(Err(ch)) => match Party::try_setup(self.id, ch, os_rng()) {
                Ok(p) => Some(Ok(Box::new(p))),
                Err((e, ch)) => {
                    error = Some(e);
                    Some(Err(ch))
                }
            },
            other => other,
        };
        match (self.state.as_mut().expect(LAZY_STATE), error) {
            (Ok(p), _) => Ok(p),
            (Err(_), e) => {
                Err(e.unwrap_or_else(|| cipherml_mpc::Error::aborted("no two-party set-up")))
            }
        }
    }
}
