//! Private tensors and sessions: the low-level API of TF Encrypted, in Rust.
//!
//! A [`PrivateTensor`] is public, private to one party, secret-shared, or encrypted (BFV or
//! CKKS, under the client's key, held by the server). [`Session`] offers the operations a
//! network needs on all of them — `add`, `sub`, `mul`, `matmul`, `conv2d`, `avg_pool2d`,
//! `max_pool2d`, `relu`, `square`, `poly`, `reshape`, `flatten`, bias by broadcasting `add`,
//! `reveal` to a named party — and the conversions [`Session::to_bfv`] (shares to HE) and
//! [`Session::to_shares`] (HE to shares: fresh mask and 40-bit noise flooding), with the
//! fixed-point scale kept; [`Session::encrypt`] puts a client value under CKKS and
//! [`Session::to_ckks`] moves shares there, where linear maps, squares and polynomials run
//! without interaction (see the `he` submodule for the conversions' costs, and why CKKS is
//! not converted back to shares). Non-linear operations run on shares with
//! exact two-party protocols.
//!
//! This is the crate's one private-execution engine: models (the model layer above it) lower each layer
//! to these operations, and the server and client run them. What makes inference cheap is
//! a property of the tensors, so every program gets it: a shared tensor carries the scale
//! of its fixed-point encoding — a product leaves it at `2^2f` and its truncation pending
//! until an operation needs `2^f` (ReLU and max-pool commute with it, so it runs on fewer
//! values), and a sum lifts the other operand instead of truncating — and a
//! known-non-negative flag (set by ReLU, kept by max-pool and reshapes) that makes the
//! pending truncation cheaper. Linear maps by server weights are prepared once
//! ([`PreparedLinear`]; under CKKS [`PreparedCkksLinear`]). A CKKS tensor carries its level
//! and scale, so a sum of tensors at different levels (a residual block's shortcut and
//! body) is aligned by [`Session::add`] itself; the CKKS operations run through
//! [`CkksEval`], which a server also uses alone (no two-party set-up) with the keys a
//! client uploaded. One value configures a session ([`SessionConfig`]).
//!
//! Products are dispatched to the cheaper representation: a product of a shared
//! tensor with a matrix that one party holds in the clear ([`Session::private`]) runs
//! either under HE (the client encrypts its share, BFV coefficient encoding, masked and
//! noise-flooded reply) or on secret shares (the owner shares the matrix, Beaver matrix
//! triple from OT), whichever the cost model estimates cheaper; [`Session::explain`] prints
//! the choices and the alternatives' estimated costs.
//!
//! A program is written once against a [`Session`] and run by both parties: each party
//! runs the same closure with its own [`Role`], and a value provided by one role (its
//! private input, or its model weights) never leaves that party in the clear — the other
//! party only ever holds a share that does not depend on it (zero for [`Session::input`], a
//! uniformly random one for [`Session::input_masked`]). [`run_local`] runs the two
//! parties in one process over an in-memory channel; the same closure runs across machines
//! with a TCP channel ([`Session::new`] over `cipherml_mpc::net::TcpChannel`).
//!
//! ```
//! use cipherml::tensor::{run_local, Role};
//! use ndarray::{Array2, ArrayD};
//!
//! // TF Encrypted's headline example: private input x (5x10 ones, provided by the client),
//! // private variable w (10x10 ones, the server's), y = x w revealed to the client only.
//! let (client, server) = run_local(|s| {
//!     let x = s.input(Role::Client, &[5, 10], || Array2::<f64>::ones((5, 10)).into_dyn())?;
//!     let w = s.input(Role::Server, &[10, 10], || Array2::<f64>::ones((10, 10)).into_dyn())?;
//!     let y = s.matmul(&x, &w)?;
//!     s.reveal(&y, Role::Client)
//! })
//! .unwrap();
//! assert_eq!(client.unwrap(), ArrayD::from_elem(vec![5, 10], 10.0));
//! assert!(server.is_none());
//! ```

use std::sync::Arc;

use cipherml_he::bfv::BfvParameters;
use cipherml_he::rlwe::SecretKey;
use cipherml_mpc::fixed::FixedPoint;
use cipherml_mpc::net::TcpChannel;
use cipherml_mpc::net::{Channel, MemoryChannel};
use cipherml_mpc::party::Party;
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::protocols::{arith, compare};
use cipherml_mpc::ring::Ring;
use cipherml_mpc::share::{receive_share, reveal, share_input, PartyId, RevealTo};
use cipherml_mpc::triples::AnyTriples;
use ndarray::{ArrayD, IxDyn};
use rand_chacha::ChaCha20Rng;

/// A named role in a two-party session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The party that holds the input and receives the output.
    Client,
    /// The party that holds the model.
    Server,
}

impl Role {
    fn party(self) -> PartyId {
        match self {
            Role::Client => PartyId::P0,
            Role::Server => PartyId::P1,
        }
    }

    /// The other party.
    fn other(self) -> Role {
        match self {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        }
    }
}

/// Errors of sessions and private tensors: the crate's one error type, [`crate::Error`].
pub type TensorError = crate::Error;

mod ckks;
mod config;
pub mod cost;
mod grad;
mod he;
mod held;
pub(crate) mod kernels;
mod linear;
mod ops;

pub use ckks::{
    decrypt_output, encrypt_input, CkksEval, CkksEvalKeys, CkksOps, CkksSessionKeys,
    PreparedCkksLinear,
};
pub use config::{SessionConfig, Triples, Truncation, MAX_Q_BITS};
pub use cost::NetworkModel;
pub use grad::{PoolSelection, ReluMask, ACTIVATION_RANGE, ACTIVATION_RANGE_BITS};
pub use he::BfvTensorData;
pub use linear::PreparedLinear;

/// A tensor in one of the representations a computation can use. Values are fixed point
/// (`Z_2^l`, `f` fractional bits: 40 and 12 by default) on shares and under BFV, real
/// numbers under CKKS.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PrivateTensor {
    /// Known to both parties.
    Public(ArrayD<f64>),
    /// Known in the clear to one party only (its model weights, say); the other party holds
    /// only the shape.
    Private {
        /// The owner.
        owner: Role,
        /// The value, on the owner's side.
        value: Option<ArrayD<f64>>,
        /// The shape.
        shape: Vec<usize>,
    },
    /// Additively secret-shared in `Z_2^l` (fixed point); this is this party's share.
    Shared {
        /// This party's share, row-major.
        share: Vec<u64>,
        /// The shape.
        shape: Vec<usize>,
        /// Fractional bits of the encoding: the session's `f`, or `2f` after a product
        /// whose truncation is pending.
        frac_bits: u32,
        /// Known non-negative by construction (the output of a ReLU, kept by max-pool and
        /// reshapes): its pending truncation needs no wrap comparison.
        nonneg: bool,
        /// `Some(owner)`: the value sits whole in `owner`'s share and the other party's share
        /// is zero ([`Session::input`]); both parties know it, so a product by a matrix the
        /// server provided runs with the server's matrix in the clear.
        held_by: Option<Role>,
    },
    /// Encrypted under the client's BFV key (plaintext modulus `2^40`, the ring of the
    /// shares, so conversions need no wrap correction) and held by the server; the client
    /// holds only the shape. Coefficient encoding, each row (last axis) in its own
    /// ciphertexts from coefficient 0.
    Bfv {
        /// The ciphertexts and their noise bound (server side only).
        data: Option<BfvTensorData>,
        /// The shape.
        shape: Vec<usize>,
    },
    /// Encrypted under the client's CKKS key and held by the server (replicated slot
    /// layout); the client holds only the shape.
    Ckks {
        /// The ciphertext (server side only).
        ct: Option<cipherml_he::tensor::CkksTensor>,
        /// The shape.
        shape: Vec<usize>,
        /// Levels left (both parties track it, so both refuse an operation that needs more).
        level: usize,
        /// The scale of the encoding: both parties compute it with the same arithmetic as
        /// the evaluator (see the `ckks` submodule), so both decide alike how a sum is
        /// aligned.
        scale: f64,
    },
}

impl PrivateTensor {
    /// The shape.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            PrivateTensor::Public(a) => a.shape().to_vec(),
            PrivateTensor::Private { shape, .. }
            | PrivateTensor::Shared { shape, .. }
            | PrivateTensor::Bfv { shape, .. }
            | PrivateTensor::Ckks { shape, .. } => shape.clone(),
        }
    }
}

/// One party's side of a two-party session: its role, its channel, OT set-up, the
/// configuration ([`SessionConfig`]: ring, fixed point, flooding, network model, triple
/// source), the BFV parameters of the link protocol (`t = 2^l`, N = 8192) and, on the
/// client, its secret key (the server holds the client's public key).
pub struct Session<C: Channel> {
    role: Role,
    party: Party<C, ChaCha20Rng>,
    fixed: FixedPoint,
    config: SessionConfig,
    params: Arc<BfvParameters>,
    sk: Option<Arc<SecretKey>>,
    /// Training: the server's own BFV key (server side) or the server's public key (client
    /// side), made when a product first needs the server to encrypt ([`held`]).
    server_key: Option<held::ServerKey>,
    /// Training: a held data matrix encrypted once, column by column, by its holder and
    /// kept by the other party ([`Session::encrypt_held_columns`]).
    held_columns: Option<held::HeldColumns>,
    /// The same matrix encrypted once by rows ([`Session::encrypt_held_rows`]).
    held_rows: Option<held::HeldColumns>,
    /// Server: the client's BFV public key, which re-randomizes encrypted replies.
    rerand: Option<cipherml_he::bfv::Encryptor>,
    triples: AnyTriples<TcpChannel>,
    ckks: Option<he::CkksState>,
    log: Vec<cost::LayerPlan>,
    /// Coefficients of encrypted replies revealed to the client so far (BFV and CKKS).
    revealed: u64,
    /// Both parties declared that the server's matrices may be used under CKKS although
    /// CKKS replies are not flooded ([`Session::allow_unflooded_ckks`]).
    unflooded_ckks: bool,
}

/// The keys of the link protocol a session starts with, when the caller set them up (a
/// server and client exchange them in their own handshake): the client's secret key, or
/// on the server the client's public key.
#[derive(Debug, Clone)]
pub enum LinkKeys {
    /// The client's BFV secret key.
    Client(Arc<SecretKey>),
    /// The client's BFV public key, held by the server.
    Server(cipherml_he::rlwe::PublicKey),
}

/// The checked configuration and keys of a session, before it has a party
/// ([`Session::start`]).
pub struct SessionSetup {
    role: Role,
    fixed: FixedPoint,
    config: SessionConfig,
    params: Arc<BfvParameters>,
    sk: Option<Arc<SecretKey>>,
    rerand: Option<cipherml_he::bfv::Encryptor>,
    triples: Option<AnyTriples<TcpChannel>>,
    ckks: Option<he::CkksState>,
}

impl std::fmt::Debug for SessionSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSetup")
            .field("role", &self.role)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SessionSetup {
    /// Checks `config` against `params` (the plaintext modulus must be the ring's) and the
    /// keys against the party id (the client is party 0).
    pub fn new(
        config: SessionConfig,
        params: Arc<BfvParameters>,
        keys: LinkKeys,
        id: PartyId,
    ) -> Result<Self, TensorError> {
        let fixed = FixedPoint::new(Ring::new(config.ring_bits)?, config.frac_bits)?;
        if params.plaintext_modulus() != 1u128 << config.ring_bits {
            return Err(TensorError::Invalid {
                what: "session parameters",
                detail: format!(
                    "BFV plaintext modulus {} is not the ring's 2^{}",
                    params.plaintext_modulus(),
                    config.ring_bits
                ),
            });
        }
        let (role, sk, rerand) = match keys {
            LinkKeys::Client(sk) => (Role::Client, Some(sk), None),
            LinkKeys::Server(pk) => (
                Role::Server,
                None,
                Some(cipherml_he::bfv::Encryptor::new(&params, pk)?),
            ),
        };
        if role.party() != id {
            return Err(TensorError::Invalid {
                what: "session role",
                detail: format!("{role:?} keys for party {id:?}"),
            });
        }
        Ok(Self {
            role,
            fixed,
            config,
            params,
            sk,
            rerand,
            triples: None,
            ckks: None,
        })
    }

    /// The CKKS parameters and keys the session's CKKS values use, set up by the caller
    /// (the client's secret key on the client, its evaluation keys on the server) instead
    /// of generated by the session with its first CKKS value: operations the keys cover
    /// upload nothing. Both parties must give keys of the same parameters (and the client
    /// the Galois elements the server holds keys for). Refused if the keys are not the
    /// role's.
    pub fn with_ckks(
        mut self,
        params: Arc<cipherml_he::ckks::CkksParameters>,
        keys: CkksSessionKeys,
    ) -> Result<Self, TensorError> {
        let role = match keys {
            CkksSessionKeys::Client { .. } => Role::Client,
            CkksSessionKeys::Server(_) => Role::Server,
        };
        if role != self.role {
            return Err(TensorError::Invalid {
                what: "session CKKS keys",
                detail: format!("{role:?} keys for the {:?}", self.role),
            });
        }
        self.ckks = Some(he::CkksState::given(params, keys)?);
        Ok(self)
    }

    /// The triple source the session uses (connected by the caller; default: OT). See
    /// [`connect_triples`] for the configuration's own.
    pub fn with_triples(mut self, triples: AnyTriples<TcpChannel>) -> Self {
        self.triples = Some(triples);
        self
    }
}

/// Connects the triple source `config` names, over `party`'s channel where the two parties
/// must agree on something (the HE key, the dealer's session token): both parties call it
/// at the same point. OT needs nothing more than the party's own set-up.
pub fn connect_triples<C: Channel>(
    config: &SessionConfig,
    party: &mut Party<C, ChaCha20Rng>,
) -> Result<AnyTriples<TcpChannel>, TensorError> {
    use cipherml_mpc::triples::dealer::{DealerClient, SessionToken};
    use cipherml_mpc::triples::he::{HeTripleClient, HeTripleServer, HeTriples};
    Ok(match &config.triples {
        Triples::Ot => AnyTriples::ot(),
        Triples::He => {
            let role = party_role(party.id());
            let (ch, rng) = party.channel_and_rng();
            AnyTriples::he(match role {
                Role::Client => HeTriples::Client(HeTripleClient::setup(ch, rng)?),
                Role::Server => HeTriples::Server(HeTripleServer::setup(ch)?),
            })
        }
        Triples::Dealer { addr } => {
            let id = party.id();
            let (ch, rng) = party.channel_and_rng();
            let token = SessionToken::agree(id, ch, rng)?;
            // Above the dealer's pairing timeout (60 s by default): the dealer, not this
            // party, decides that the peer is not coming.
            let channel = cipherml_mpc::net::ChannelConfig {
                timeout: std::time::Duration::from_secs(90),
                ..Default::default()
            };
            let client = DealerClient::connect(*addr, id, &token, channel)?;
            AnyTriples::dealer(client)
        }
    })
}

fn party_role(id: PartyId) -> Role {
    match id {
        PartyId::P0 => Role::Client,
        PartyId::P1 => Role::Server,
    }
}

/// `log2` of the most coefficients of encrypted replies (BFV to shares, CKKS reveals) one
/// [`Session`] may reveal by default ([`SessionConfig::reveal_log2`]).
pub const SESSION_REVEAL_LOG2: u32 = 32;

impl<C: Channel> std::fmt::Debug for Session<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl<C: Channel> Session<C> {
    /// Sets up the session over `channel` with the default configuration (base OTs in
    /// both directions, the client's public key to the server).
    pub fn new(role: Role, channel: C) -> Result<Self, TensorError> {
        Self::with_config(role, channel, SessionConfig::default())
    }

    /// Sets up the session over `channel` with `config` (both parties must pass the same).
    pub fn with_config(role: Role, channel: C, config: SessionConfig) -> Result<Self, TensorError> {
        Self::with_rng(role, channel, config, os_rng())
    }

    /// As [`Session::with_config`], with this party's randomness drawn from `rng`. For
    /// reproducible runs (tests, benchmarks) only: anyone who knows the seed knows every
    /// secret of the session. [`Session::with_config`] seeds from the operating system.
    pub fn with_rng(
        role: Role,
        channel: C,
        config: SessionConfig,
        rng: ChaCha20Rng,
    ) -> Result<Self, TensorError> {
        let mut party = Party::setup(role.party(), channel, rng)?;
        let params = BfvParameters::new(&config.bfv_literal())?;
        // The client's public key, once per session: the server re-randomizes every
        // encrypted reply with it.
        let keys = match role {
            Role::Client => {
                let sk = Arc::new(SecretKey::random(params.context(), party.rng()));
                crate::link::send_public_key(&params, &mut party, &sk)?;
                LinkKeys::Client(sk)
            }
            Role::Server => LinkKeys::Server(crate::link::receive_public_key(&params, &mut party)?),
        };
        let triples = connect_triples(&config, &mut party)?;
        let setup = SessionSetup::new(config, params, keys, party.id())?.with_triples(triples);
        Ok(Self::start(party, setup))
    }

    /// A session over a party already set up (base OTs done) whose link keys were
    /// exchanged by the caller, e.g. a server's session handshake. `params` must be
    /// `config`'s BFV parameters (the ones prepared weights were encoded for).
    pub fn from_party(
        party: Party<C, ChaCha20Rng>,
        config: SessionConfig,
        params: Arc<BfvParameters>,
        keys: LinkKeys,
    ) -> Result<Self, TensorError> {
        let setup = SessionSetup::new(config, params, keys, party.id())?;
        Ok(Self::start(party, setup))
    }

    /// A session over `party` with a checked set-up: cannot fail, so a caller that lends
    /// its party to one session per request always gets it back ([`Session::into_party`]).
    pub fn start(mut party: Party<C, ChaCha20Rng>, setup: SessionSetup) -> Self {
        // The comparisons' digits for the network both parties plan for (wider on a LAN,
        // where correlated OTs cost more time than the bits they save): always in range.
        let digits = compare::digit_bits_for(1e9 / setup.config.network.bandwidth.max(1.0));
        let _ = party.set_digit_bits(digits);
        let SessionSetup {
            role,
            fixed,
            config,
            params,
            sk,
            rerand,
            triples,
            ckks,
        } = setup;
        Self {
            role,
            party,
            fixed,
            config,
            params,
            sk,
            rerand,
            triples: triples.unwrap_or_else(AnyTriples::ot),
            ckks,
            log: Vec::new(),
            server_key: None,
            held_columns: None,
            held_rows: None,
            revealed: 0,
            unflooded_ckks: false,
        }
    }

    /// Gives the party back (its channel and OT set-up), e.g. to a server that runs one
    /// session per request over one connection.
    pub fn into_party(self) -> Party<C, ChaCha20Rng> {
        self.party
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The BFV parameters of the link protocol.
    pub fn params(&self) -> &Arc<BfvParameters> {
        &self.params
    }

    /// The underlying party (channel, randomness, OT), for protocols of the layers below.
    pub fn party(&mut self) -> &mut Party<C, ChaCha20Rng> {
        &mut self.party
    }

    /// Declares that the server's matrices are **not secret** from the client, which lets
    /// them enter CKKS products ([`Session::matmul`] of a CKKS value by a server matrix).
    ///
    /// CKKS results revealed to the client are re-randomized but not noise-flooded (no
    /// flooding keeps their precision at these parameters: SECURITY.md, "Noise
    /// flooding"), so their noise tells the client about the server's operands. Without
    /// this call such products are refused with [`TensorError::Unsupported`]; keep secret
    /// weights on BFV or shares, whose replies are flooded. Both parties must call it (the
    /// refusal is decided on each side from the operands' types, so the two stay in step).
    pub fn allow_unflooded_ckks(&mut self) {
        self.unflooded_ckks = true;
    }

    /// This party's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Bytes sent and received so far.
    pub fn bytes(&self) -> (u64, u64) {
        let s = self.party.stats();
        (s.bytes_sent, s.bytes_received)
    }

    /// A private value of `owner`, secret-shared: `provide` runs only on the owner's side.
    /// The owner's share is the value and the other party's is zero: a valid additive
    /// sharing that costs no message (every protocol masks what it sends, so neither
    /// party's view depends on the other's values; the other party's share is the same
    /// whatever the value). Both parties know who holds it, so a product by a matrix the
    /// server provided runs with the server's matrix in the clear (under BFV or by one-way
    /// OTs) instead of as a product of two shared matrices.
    pub fn input(
        &mut self,
        owner: Role,
        shape: &[usize],
        provide: impl FnOnce() -> ArrayD<f64>,
    ) -> Result<PrivateTensor, TensorError> {
        let n: usize = shape.iter().product();
        let share = self
            .encode_provided(owner, shape, provide)?
            .unwrap_or_else(|| vec![0; n]);
        Ok(PrivateTensor::Shared {
            share,
            shape: shape.to_vec(),
            frac_bits: self.fixed.frac_bits(),
            nonneg: false,
            held_by: Some(owner),
        })
    }

    /// A private value of `owner` shared with a uniformly random mask (one message from the
    /// owner): the other party's share is uniform in the ring. [`Session::input`] needs no
    /// message and is as private; use this where a program needs random-looking shares.
    pub fn input_masked(
        &mut self,
        owner: Role,
        shape: &[usize],
        provide: impl FnOnce() -> ArrayD<f64>,
    ) -> Result<PrivateTensor, TensorError> {
        let n: usize = shape.iter().product();
        let ring = self.fixed.ring();
        let share = match self.encode_provided(owner, shape, provide)? {
            Some(enc) => {
                let (ch, rng) = self.party.channel_and_rng();
                share_input(ch, ring, &enc, rng)?
            }
            None => receive_share(self.party.channel(), ring, n)?,
        };
        Ok(self.shared(share, shape.to_vec()))
    }

    /// On `owner`'s side, `provide()` checked against `shape` and encoded; `None` on the
    /// other side (which never calls `provide`).
    fn encode_provided(
        &mut self,
        owner: Role,
        shape: &[usize],
        provide: impl FnOnce() -> ArrayD<f64>,
    ) -> Result<Option<Vec<u64>>, TensorError> {
        if owner != self.role {
            return Ok(None);
        }
        let value = provide();
        if value.shape() != shape {
            return Err(TensorError::ProvidedShape {
                declared: shape.to_vec(),
                found: value.shape().to_vec(),
            });
        }
        let flat: Vec<f64> = value.iter().copied().collect();
        Ok(Some(self.fixed.encode_vec(&flat)?))
    }

    /// A value that stays with `owner` in the clear (e.g. model weights): `provide` runs only
    /// on the owner's side; nothing is sent.
    pub fn private(
        &mut self,
        owner: Role,
        shape: &[usize],
        provide: impl FnOnce() -> ArrayD<f64>,
    ) -> Result<PrivateTensor, TensorError> {
        let value = if owner == self.role {
            let v = provide();
            if v.shape() != shape {
                return Err(TensorError::ProvidedShape {
                    declared: shape.to_vec(),
                    found: v.shape().to_vec(),
                });
            }
            Some(v)
        } else {
            None
        };
        Ok(PrivateTensor::Private {
            owner,
            value,
            shape: shape.to_vec(),
        })
    }

    /// The plan of every product so far: the representation chosen and the estimated cost
    /// of each alternative.
    pub fn explain(&self) -> String {
        let net = self.config.network;
        let mut s = String::new();
        for lp in &self.log {
            s.push_str(&format!("{}\n", lp.layer));
            for (backend, c) in &lp.options {
                let mark = if *backend == lp.chosen { "*" } else { " " };
                s.push_str(&format!(
                    "  {mark} {:<40} {:>9.2} ms {:>10.1} KB {:>4} rounds\n",
                    backend,
                    c.total_us(&net) / 1e3,
                    c.bytes / 1e3,
                    c.rounds
                ));
            }
        }
        s
    }

    /// A shared tensor at the session's scale `2^f`.
    pub(crate) fn shared(&self, share: Vec<u64>, shape: Vec<usize>) -> PrivateTensor {
        PrivateTensor::Shared {
            share,
            shape,
            frac_bits: self.fixed.frac_bits(),
            nonneg: false,
            held_by: None,
        }
    }

    /// Shares of `t` at whatever scale they are (truncation possibly pending): (share,
    /// shape, fractional bits, known non-negative). A private value is shared trivially
    /// (the owner's share is the value, the other's zero: no message, and a valid sharing
    /// since every protocol masks what it sends); a public one is held by party 0.
    pub(crate) fn shares_any(
        &mut self,
        t: &PrivateTensor,
    ) -> Result<(Vec<u64>, Vec<usize>, u32, bool), TensorError> {
        let f = self.fixed.frac_bits();
        Ok(match t {
            PrivateTensor::Shared {
                share,
                shape,
                frac_bits,
                nonneg,
                ..
            } => (share.clone(), shape.clone(), *frac_bits, *nonneg),
            PrivateTensor::Bfv { data, shape } => {
                (self.bfv_shares(data.as_ref(), shape)?, shape.clone(), f, false)
            }
            PrivateTensor::Ckks { .. } => {
                return Err(TensorError::Unsupported {
                    op: "conversion to shares",
                    repr: "CKKS",
                    reason: "use BFV next to shares (see the tensor::he documentation); reveal CKKS results to the client",
                })
            }
            PrivateTensor::Private {
                owner,
                value,
                shape,
            } => {
                let n: usize = shape.iter().product();
                let share = match value {
                    Some(v) if *owner == self.role => {
                        let flat: Vec<f64> = v.iter().copied().collect();
                        self.fixed.encode_vec(&flat)?
                    }
                    _ => vec![0; n],
                };
                (share, shape.clone(), f, false)
            }
            PrivateTensor::Public(a) => {
                let flat: Vec<f64> = a.iter().copied().collect();
                let enc = self.fixed.encode_vec(&flat)?;
                let share = if self.party.is_p0() {
                    enc
                } else {
                    vec![0; enc.len()]
                };
                (share, a.shape().to_vec(), f, false)
            }
        })
    }

    /// Runs a pending truncation: from `frac` fractional bits down to `f`, exactly or
    /// within one unit in the last place as [`SessionConfig::truncation`] says (the
    /// cheaper protocol if the value is known non-negative, or if the ring is wide enough
    /// for [`arith::trunc_bounded`]).
    pub(crate) fn rescale(
        &mut self,
        share: Vec<u64>,
        frac: u32,
        nonneg: bool,
    ) -> Result<Vec<u64>, TensorError> {
        let f = self.fixed.frac_bits();
        if frac <= f {
            return Ok(share);
        }
        let ring = self.fixed.ring();
        let ulp = self.config.truncation == Truncation::WithinUlp;
        let p = &mut self.party;
        Ok(if nonneg && ulp {
            arith::trunc_nonneg_within_ulp(p, ring, &share, frac - f)?
        } else if nonneg {
            arith::trunc_nonneg(p, ring, &share, frac - f)?
        } else if ring.bits() >= 2 * f + 32 {
            // A wide ring (training's Z_2^64, f = 16): products at 2^2f stay below
            // 2^(l-2) unless a value passes 2^(l-2-2f) = 2^30, so the cheaper truncation is
            // exact (or within one unit in the last place, without its millionaire).
            if ulp {
                arith::trunc_bounded_within_ulp(p, ring, &share, frac - f)?
            } else {
                arith::trunc_bounded(p, ring, &share, frac - f)?
            }
        } else {
            arith::trunc_faithful(&mut self.party, ring, &share, frac - f)?
        })
    }

    /// Shares of `t` at the session's scale `2^f` (a pending truncation runs now).
    pub(crate) fn shares_of(
        &mut self,
        t: &PrivateTensor,
    ) -> Result<(Vec<u64>, Vec<usize>), TensorError> {
        let (share, shape, frac, nonneg) = self.shares_any(t)?;
        Ok((self.rescale(share, frac, nonneg)?, shape))
    }

    /// `t` with its pending truncation run (scale `2^f`); other representations unchanged.
    pub fn rescaled(&mut self, t: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        match t {
            PrivateTensor::Shared {
                frac_bits, nonneg, ..
            } if *frac_bits > self.fixed.frac_bits() => {
                let nonneg = *nonneg;
                let (share, shape) = self.shares_of(t)?;
                Ok(PrivateTensor::Shared {
                    share,
                    shape,
                    frac_bits: self.fixed.frac_bits(),
                    nonneg,
                    held_by: None,
                })
            }
            _ => Ok(t.clone()),
        }
    }

    /// The matrix product of two 2-D tensors. A shared left operand times a matrix the
    /// server holds in the clear runs under HE or on shares, as the cost model decides
    /// (row by row: see [`Session::linear`]); a BFV left operand stays under HE;
    /// everything else runs on shares (Beaver matrix triple). The result is shared at
    /// scale `2^2f`, its truncation pending (see the module documentation).
    pub fn matmul(
        &mut self,
        a: &PrivateTensor,
        b: &PrivateTensor,
    ) -> Result<PrivateTensor, TensorError> {
        if let PrivateTensor::Ckks { .. } = a {
            return self.ckks_matmul(a, b);
        }
        let (sa, sb) = (a.shape(), b.shape());
        if sa.len() != 2 || sb.len() != 2 || sa[1] != sb[0] {
            return Err(TensorError::Shape {
                what: "matmul",
                left: sa,
                right: sb,
            });
        }
        let (m, k, n) = (sa[0], sa[1], sb[1]);
        let ring = self.fixed.ring();
        let f = self.fixed.frac_bits();
        let label = format!("matmul ({m}x{k}) x ({k}x{n})");
        let server_matrix = matches!(
            b,
            PrivateTensor::Private {
                owner: Role::Server,
                ..
            } | PrivateTensor::Shared {
                held_by: Some(Role::Server),
                ..
            }
        );
        let z = if let Some(z) = self.owned_product(a, b, (m, k, n), &label)? {
            z
        } else if server_matrix && matches!(a, PrivateTensor::Bfv { .. }) {
            // W^T (n x k), quantized; the client builds the same layout with zeros.
            let wt = self
                .server_matrix_t(b, n, k)
                .unwrap_or_else(|| ndarray::Array2::zeros((n, k)));
            let c = cost::bfv_linear(k.div_ceil(8192) as f64, cost::N, 1.0, n as f64);
            self.log.push(cost::LayerPlan {
                layer: label,
                depth: 0,
                chosen: cost::Backend::BfvCoefficient,
                options: vec![(cost::Backend::BfvCoefficient, c)],
            });
            self.bfv_matmul_rows(a, &wt)?
        } else if server_matrix {
            let wt = self.server_matrix_t(b, n, k);
            let w = PreparedLinear::dense_quantized(
                &self.params,
                &self.config,
                &label,
                (n, k),
                wt,
                None,
            )?;
            let (chosen, options) = w.plan();
            self.log.push(cost::LayerPlan {
                layer: format!("{label}, row by row"),
                depth: 0,
                chosen,
                options: options.to_vec(),
            });
            let (x, _) = self.shares_of(a)?;
            let mut z = Vec::with_capacity(m * n);
            for row in x.chunks(k) {
                z.extend(self.linear_shares(row, &w)?);
            }
            z
        } else {
            let options = vec![(
                cost::Backend::SharedMatrixTriple,
                cost::shared_linear(m as f64, k as f64, n as f64),
            )];
            self.log.push(cost::LayerPlan {
                layer: label,
                depth: 0,
                chosen: cost::Backend::SharedMatrixTriple,
                options,
            });
            let (x, _) = self.shares_of(a)?;
            let (y, _) = self.shares_of(b)?;
            let dealer = matches!(self.config.triples, Triples::Dealer { .. });
            // Shared products under BFV are built for the training ring (`t > 2^60`: two
            // 32-bit digits of each share).
            let wide = self.params.plaintext_bits() > 60;
            if wide && !dealer && self.shared_he_cheaper(m, k, n) {
                let (c, way) = self.shared_he_cost(m, k, n);
                if let Some(lp) = self.log.last_mut() {
                    lp.chosen = cost::Backend::BfvCoefficient;
                    lp.options.push((cost::Backend::BfvCoefficient, c));
                    match way {
                        SharedHe::Columns => lp.layer.push_str(", by encrypted columns"),
                        SharedHe::Rows => lp.layer.push_str(", by encrypted rows"),
                        SharedHe::Coefficients => {}
                    }
                }
                let z = match way {
                    SharedHe::Columns => self.shared_product_columns(&x, &y, (m, k, n))?,
                    SharedHe::Rows => self.shared_product_rows(&x, &y, (m, k, n))?,
                    SharedHe::Coefficients => self.shared_product_he(&x, &y, (m, k, n))?,
                };
                return Ok(PrivateTensor::Shared {
                    share: z,
                    shape: vec![m, n],
                    frac_bits: 2 * f,
                    nonneg: false,
                    held_by: None,
                });
            }
            let triple = cipherml_mpc::triples::TripleSource::matrix(
                &mut self.triples,
                &mut self.party,
                ring,
                m,
                k,
                n,
            )?;
            arith::matmul(&mut self.party, &x, &y, &triple)?
        };
        Ok(PrivateTensor::Shared {
            share: z,
            shape: vec![m, n],
            frac_bits: 2 * f,
            nonneg: false,
            held_by: None,
        })
    }

    /// The product `a b` (`m x k` by `k x n`) when one operand is held whole by one party
    /// (an input of its own, or private to it) and the other is not a server matrix the
    /// BFV link handles: by the one-way OT product with the held matrix in the clear (no
    /// triple, no openings; with triples from a dealer, a Beaver triple is cheaper), or
    /// locally if one party holds both or an operand is public. `None` otherwise.
    fn owned_product(
        &mut self,
        a: &PrivateTensor,
        b: &PrivateTensor,
        (m, k, n): (usize, usize, usize),
        label: &str,
    ) -> Result<Option<Vec<u64>>, TensorError> {
        let (ha, hb) = (a.holder(), b.holder());
        let legacy = self.config.ring_bits <= 60;
        if matches!(a, PrivateTensor::Bfv { .. })
            || (legacy && hb == Some(Role::Server) && ha != Some(Role::Server))
        {
            // The server's matrix on the inference link (`t <= 2^60`), prepared row by
            // row: the cost model's choice (see `matmul`).
            return Ok(None);
        }
        let ring = self.fixed.ring();
        let plan = |backend, c| cost::LayerPlan {
            layer: format!("{label}, held in the clear"),
            depth: 0,
            chosen: backend,
            options: vec![(backend, c)],
        };
        let public = |t: &PrivateTensor| matches!(t, PrivateTensor::Public(_));
        // A dealer's matrix triple costs only the openings: cheaper than the OT product.
        let dealer = matches!(self.config.triples, config::Triples::Dealer { .. });
        match (ha, hb) {
            _ if public(a) || public(b) => {
                // A public operand: each party multiplies its share by it.
                let (x, _) = self.shares_of(a)?;
                let (y, _) = self.shares_of(b)?;
                let (x, y) = if public(a) && !self.party.is_p0() {
                    (self.public_plain(a)?, y)
                } else if public(b) && !self.party.is_p0() {
                    (x, self.public_plain(b)?)
                } else {
                    (x, y)
                };
                self.log
                    .push(plan(cost::Backend::Local, cost::Cost::default()));
                Ok(Some(ring.matmul(&x, &y, m, k, n)))
            }
            (Some(p), Some(q)) if p == q => {
                // Both whole at `p`: the other party's shares are zeros, so a local product
                // of the shares is a sharing of the product.
                let (x, _) = self.shares_of(a)?;
                let (y, _) = self.shares_of(b)?;
                self.log
                    .push(plan(cost::Backend::Local, cost::Cost::default()));
                Ok(Some(ring.matmul(&x, &y, m, k, n)))
            }
            (Some(p), _) if !dealer => {
                let (x, _) = self.shares_of(a)?;
                let (y, _) = self.shares_of(b)?;
                let mine = (p == self.role).then_some(x.as_slice());
                if self.held_he_cheaper(m, k, n) {
                    self.log.push(plan(
                        cost::Backend::BfvCoefficient,
                        self.held_he_cost(m, k, n),
                    ));
                    return Ok(Some(self.held_product_he(
                        p,
                        mine,
                        &y,
                        (m, k, n),
                        self.config.weight_cap(),
                    )?));
                }
                self.log.push(plan(
                    cost::Backend::SharedOtProduct,
                    cost::ot_product(m as f64, k as f64, n as f64),
                ));
                Ok(Some(arith::matmul_owned(
                    &mut self.party,
                    ring,
                    p.party(),
                    mine,
                    &y,
                    m,
                    k,
                    n,
                )?))
            }
            (_, Some(p)) if !dealer => {
                // (a b)^T = b^T a^T with b^T in the clear at `p`.
                let (x, _) = self.shares_of(a)?;
                let (y, _) = self.shares_of(b)?;
                let yt = grad_transpose(&y, k, n);
                let xt = grad_transpose(&x, m, k);
                let mine = (p == self.role).then_some(yt.as_slice());
                let zt = if self.held_he_cheaper(n, k, m) {
                    self.log.push(plan(
                        cost::Backend::BfvCoefficient,
                        self.held_he_cost(n, k, m),
                    ));
                    self.held_product_he(p, mine, &xt, (n, k, m), self.config.weight_cap())?
                } else {
                    self.log.push(plan(
                        cost::Backend::SharedOtProduct,
                        cost::ot_product(n as f64, k as f64, m as f64),
                    ));
                    arith::matmul_owned(&mut self.party, ring, p.party(), mine, &xt, n, k, m)?
                };
                Ok(Some(grad_transpose(&zt, n, m)))
            }
            _ => Ok(None),
        }
    }

    /// Whether a held `m x k` matrix times a shared `k x n` one is cheaper under BFV than
    /// by the one-way OT product, under the session's network model.
    fn held_he_cheaper(&self, m: usize, k: usize, n: usize) -> bool {
        let net = self.config.network;
        self.held_he_cost(m, k, n).total_us(&net) < self.held_ot_cost(m, k, n).total_us(&net)
    }

    /// The estimated cost of a held `m x k` matrix times a shared `k x n` one by the
    /// one-way OT product.
    fn held_ot_cost(&self, m: usize, k: usize, n: usize) -> cost::Cost {
        let l = f64::from(self.fixed.ring().bits());
        cost::Cost {
            compute_us: (k * n) as f64 * l * (0.1 + m as f64 * 0.002),
            bytes: (k * n) as f64 * l * (16.0 + m as f64 * l / 8.0),
            rounds: 2.0,
        }
    }

    /// The estimated cost of a held product as [`Session::matmul`] runs it (the cheaper of
    /// BFV and the OT product).
    pub(super) fn held_cost(&self, m: usize, k: usize, n: usize) -> cost::Cost {
        if self.held_he_cheaper(m, k, n) {
            self.held_he_cost(m, k, n)
        } else {
            self.held_ot_cost(m, k, n)
        }
    }

    /// Whether a shared `m x k` by `k x n` product is cheaper under BFV (two cross terms of
    /// two digits each) than with a Beaver matrix triple from OT.
    fn shared_he_cheaper(&self, m: usize, k: usize, n: usize) -> bool {
        let net = self.config.network;
        let l = f64::from(self.fixed.ring().bits());
        let per_ot = |w: f64| 16.0 + w * l / 8.0;
        let (m, k, n) = (m as f64, k as f64, n as f64);
        let ot = cost::Cost {
            compute_us: m * k * n * 0.02 + 2.0 * k * l * m.min(n) * 0.5,
            bytes: 2.0 * k * l * (n * per_ot(m)).min(m * per_ot(n)),
            rounds: 3.0,
        };
        let (he, _) = self.shared_he_cost(m as usize, k as usize, n as usize);
        he.total_us(&net) < ot.total_us(&net)
    }

    /// The estimated cost of a shared `m x k` by `k x n` product under BFV by the cheapest
    /// of its ways: four coefficient-encoded products ([`Session::shared_product_he`]),
    /// encrypted columns of the left operand ([`Session::shared_product_columns`]: a
    /// tall left operand) or encrypted rows of the right one
    /// ([`Session::shared_product_rows`]: a long inner dimension).
    fn shared_he_cost(&self, m: usize, k: usize, n: usize) -> (cost::Cost, SharedHe) {
        let net = self.config.network;
        let c = self.held_he_cost(m, k, n);
        let four = cost::Cost {
            compute_us: 4.0 * c.compute_us,
            bytes: 4.0 * c.bytes,
            rounds: 4.0 * c.rounds,
        };
        [
            self.shared_columns_cost(m, k, n)
                .map(|c| (c, SharedHe::Columns)),
            self.shared_rows_cost(m, k, n).map(|c| (c, SharedHe::Rows)),
        ]
        .into_iter()
        .flatten()
        .fold((four, SharedHe::Coefficients), |best, o| {
            if o.0.total_us(&net) < best.0.total_us(&net) {
                o
            } else {
                best
            }
        })
    }

    /// A public tensor encoded at `2^f` (the whole value, not party 0's share).
    fn public_plain(&self, t: &PrivateTensor) -> Result<Vec<u64>, TensorError> {
        match t {
            PrivateTensor::Public(a) => {
                let flat: Vec<f64> = a.iter().copied().collect();
                Ok(self.fixed.encode_vec(&flat)?)
            }
            _ => Err(TensorError::Invalid {
                what: "public operand",
                detail: "not a public tensor".into(),
            }),
        }
    }

    /// `W^T` (`n x k`) of a `k x n` matrix the server holds (provided in the clear, or
    /// input by it: its share is the whole value), quantized at `2^f`, on the server's side;
    /// `None` on the client's.
    fn server_matrix_t(
        &self,
        b: &PrivateTensor,
        n: usize,
        k: usize,
    ) -> Option<ndarray::Array2<i64>> {
        let f = self.fixed.frac_bits();
        match b {
            PrivateTensor::Private { value: Some(w), .. } => Some(
                w.view()
                    .into_dimensionality::<ndarray::Ix2>()
                    .expect("2-D")
                    .t()
                    .mapv(|v| cipherml_mpc::fixed::quantize(v, f)),
            ),
            PrivateTensor::Shared {
                share, frac_bits, ..
            } if self.role == Role::Server => {
                // The server's share is the whole value (held by it), at `frac_bits`;
                // a value not at 2^f is rescaled in the clear (rounded, as encoding).
                let shift = *frac_bits as i32 - f as i32;
                let ring = self.fixed.ring();
                Some(ndarray::Array2::from_shape_fn((n, k), |(j, t)| {
                    let v = ring.to_signed(share[t * n + j]);
                    if shift > 0 {
                        (v as f64 / (shift as f64).exp2()).round() as i64
                    } else {
                        v
                    }
                }))
            }
            _ => None,
        }
    }

    /// Elementwise sum; a right operand whose shape is a suffix of the left's (a bias) is
    /// broadcast. CKKS operands stay under CKKS, BFV operands under BFV (the other operand
    /// is converted), everything else runs on shares (local).
    pub fn add(
        &mut self,
        a: &PrivateTensor,
        b: &PrivateTensor,
    ) -> Result<PrivateTensor, TensorError> {
        self.combine(a, b, false)
    }

    /// Elementwise difference (see [`Session::add`]).
    pub fn sub(
        &mut self,
        a: &PrivateTensor,
        b: &PrivateTensor,
    ) -> Result<PrivateTensor, TensorError> {
        self.combine(a, b, true)
    }

    fn combine(
        &mut self,
        a: &PrivateTensor,
        b: &PrivateTensor,
        negate_b: bool,
    ) -> Result<PrivateTensor, TensorError> {
        match (a, b) {
            (PrivateTensor::Ckks { .. }, _) => return self.ckks_add(a, b, negate_b),
            (_, PrivateTensor::Ckks { .. }) if !negate_b => return self.ckks_add(b, a, false),
            (_, PrivateTensor::Ckks { .. }) => {
                return Err(TensorError::Unsupported {
                    op: "sub",
                    repr: "CKKS",
                    reason: "subtract a public value from a CKKS tensor, not the reverse",
                })
            }
            (PrivateTensor::Public(x), PrivateTensor::Public(y)) => {
                if !x.shape().ends_with(y.shape()) {
                    return Err(TensorError::Shape {
                        what: if negate_b { "sub" } else { "add" },
                        left: x.shape().to_vec(),
                        right: y.shape().to_vec(),
                    });
                }
                let y = y.broadcast(x.raw_dim()).expect("suffix shape broadcasts");
                return Ok(PrivateTensor::Public(if negate_b {
                    x - &y
                } else {
                    x + &y
                }));
            }
            _ => {}
        }
        if matches!(a, PrivateTensor::Bfv { .. }) || matches!(b, PrivateTensor::Bfv { .. }) {
            return self.bfv_add(a, b, negate_b);
        }
        let (sa, sb) = (a.shape(), b.shape());
        if !sa.ends_with(&sb) {
            return Err(TensorError::Shape {
                what: if negate_b { "sub" } else { "add" },
                left: sa,
                right: sb,
            });
        }
        // Both operands at the larger scale: a share at `2^f` is lifted to `2^2f` by a
        // local multiplication by `2^f` (exact), cheaper than truncating the other (a
        // protocol and its rounding error); the sum's truncation stays pending.
        let (x, _, fa, _) = self.shares_any(a)?;
        let (y, _, fb, _) = self.shares_any(b)?;
        let frac = fa.max(fb);
        let ring = self.fixed.ring();
        let lift = |v: Vec<u64>, from: u32| -> Vec<u64> {
            if from == frac {
                return v;
            }
            let up = ring.from_signed(1i64 << (frac - from));
            v.into_iter().map(|e| ring.mul(e, up)).collect()
        };
        let (x, y) = (lift(x, fa), lift(y, fb));
        let share = x
            .iter()
            .zip(y.iter().cycle())
            .map(|(&u, &v)| {
                if negate_b {
                    ring.sub(u, v)
                } else {
                    ring.add(u, v)
                }
            })
            .collect();
        Ok(PrivateTensor::Shared {
            share,
            shape: sa,
            frac_bits: frac,
            nonneg: false,
            held_by: None,
        })
    }

    /// Reveals `t` to `to` only: that party gets `Some(value)`, the other `None`. A
    /// shared value is revealed at its scale (a pending truncation is not run: the
    /// receiver decodes at `2^2f`, exactly).
    pub fn reveal(
        &mut self,
        t: &PrivateTensor,
        to: Role,
    ) -> Result<Option<ArrayD<f64>>, TensorError> {
        if let PrivateTensor::Ckks { .. } = t {
            return self.ckks_reveal(t, to);
        }
        let (share, shape, frac, _) = self.shares_any(t)?;
        let ring = self.fixed.ring();
        let fixed = FixedPoint::new(ring, frac)?;
        let me = self.role.party();
        let out = reveal(
            self.party.channel(),
            ring,
            me,
            RevealTo::Party(to.party()),
            &share,
        )?;
        Ok(out.map(|v| {
            ArrayD::from_shape_vec(IxDyn(&shape), fixed.decode_vec(&v)).expect("shape matches")
        }))
    }
}

/// The ways of a shared product under BFV ([`Session::matmul`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SharedHe {
    Coefficients,
    Columns,
    Rows,
}

/// The transpose of a row-major `m x n` matrix.
fn grad_transpose(v: &[u64], m: usize, n: usize) -> Vec<u64> {
    let mut out = vec![0u64; m * n];
    for i in 0..m {
        for j in 0..n {
            out[j * m + i] = v[i * n + j];
        }
    }
    out
}

/// Runs `program` for both roles in one process, over an in-memory channel; returns the
/// client's and the server's results.
pub fn run_local<T, F>(program: F) -> Result<(T, T), TensorError>
where
    T: Send + 'static,
    F: Fn(&mut Session<MemoryChannel>) -> Result<T, TensorError> + Send + Sync + 'static,
{
    run_local_with(SessionConfig::default(), program)
}

/// As [`run_local`], with `config` for both parties (each in a rayon pool of
/// `config.threads` threads if set).
pub fn run_local_with<T, F>(config: SessionConfig, program: F) -> Result<(T, T), TensorError>
where
    T: Send + 'static,
    F: Fn(&mut Session<MemoryChannel>) -> Result<T, TensorError> + Send + Sync + 'static,
{
    run_local_inner(config, None, program)
}

/// As [`run_local_with`], each party's randomness from its own seed (`seeds.0` for the
/// client): two runs with the same seeds exchange the same messages and return the same
/// shares. For tests and benchmarks only (see [`Session::with_rng`]).
pub fn run_local_seeded<T, F>(
    config: SessionConfig,
    seeds: ([u8; 32], [u8; 32]),
    program: F,
) -> Result<(T, T), TensorError>
where
    T: Send + 'static,
    F: Fn(&mut Session<MemoryChannel>) -> Result<T, TensorError> + Send + Sync + 'static,
{
    run_local_inner(config, Some(seeds), program)
}

fn run_local_inner<T, F>(
    config: SessionConfig,
    seeds: Option<([u8; 32], [u8; 32])>,
    program: F,
) -> Result<(T, T), TensorError>
where
    T: Send + 'static,
    F: Fn(&mut Session<MemoryChannel>) -> Result<T, TensorError> + Send + Sync + 'static,
{
    use rand::SeedableRng;
    let (c0, c1) = MemoryChannel::pair();
    let program = std::sync::Arc::new(program);
    let p2 = program.clone();
    let (cfg_c, cfg_s) = (config.clone(), config);
    let rng = move |seed: Option<[u8; 32]>| match seed {
        Some(s) => ChaCha20Rng::from_seed(s),
        None => os_rng(),
    };
    let run = move |role: Role,
                    ch: MemoryChannel,
                    cfg: SessionConfig,
                    seed: Option<[u8; 32]>,
                    program: &F|
          -> Result<T, TensorError> {
        let pool = cfg.thread_pool()?;
        let body = move || {
            let mut s = Session::with_rng(role, ch, cfg, rng(seed))?;
            program(&mut s)
        };
        match pool {
            Some(pool) => pool.install(body),
            None => body(),
        }
    };
    let run2 = run;
    let server = std::thread::spawn(move || -> Result<T, TensorError> {
        run2(Role::Server, c1, cfg_s, seeds.map(|s| s.1), &p2)
    });
    let client = run(Role::Client, c0, cfg_c, seeds.map(|s| s.0), &program);
    let server = server.join().map_err(|_| TensorError::PeerPanicked)?;
    // Where one party failed and the other only saw it hang up, the cause is reported.
    let hung_up = |e: &TensorError| matches!(e, TensorError::Mpc(cipherml_mpc::Error::PeerClosed));
    match (client, server) {
        (Ok(c), Ok(s)) => Ok((c, s)),
        (Err(c), Err(s)) if hung_up(&c) => Err(s),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}
