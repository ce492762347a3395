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
//! party only ever holds a uniformly random additive share of it. [`run_local`] runs the two
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
use cipherml_mpc::net::{Channel, MemoryChannel};
use cipherml_mpc::party::Party;
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::protocols::arith;
use cipherml_mpc::ring::Ring;
use cipherml_mpc::share::{receive_share, reveal, share_input, PartyId, RevealTo};
use cipherml_mpc::triples::{ot::OtTriples, TripleSource};
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
}

/// Errors of sessions and private tensors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TensorError {
    /// An error of the two-party layer (I/O, timeout, misbehaving peer, bad input).
    #[error(transparent)]
    Mpc(#[from] cipherml_mpc::Error),
    /// Shapes that do not fit the operation.
    #[error("shape mismatch in {what}: {left:?} vs {right:?}")]
    Shape {
        /// The operation.
        what: &'static str,
        /// Left shape.
        left: Vec<usize>,
        /// Right shape.
        right: Vec<usize>,
    },
    /// The provided value does not have the declared shape.
    #[error("provided value has shape {found:?}, declared {declared:?}")]
    ProvidedShape {
        /// Declared.
        declared: Vec<usize>,
        /// Found.
        found: Vec<usize>,
    },
    /// An HE or hybrid-protocol error.
    #[error(transparent)]
    Hybrid(#[from] Box<crate::nn::HybridError>),
    /// An HE error.
    #[error(transparent)]
    He(#[from] cipherml_he::Error),
    /// An operation this representation does not support (with the reason and what to
    /// do instead).
    #[error("{op} is not supported on {repr} tensors: {reason}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// The representation.
        repr: &'static str,
        /// Why, and the alternative.
        reason: &'static str,
    },
    /// A value received from the peer that does not fit the session (wrong level, scale,
    /// parameters or keys).
    #[error("invalid {what} from the peer: {detail}")]
    Invalid {
        /// What.
        what: &'static str,
        /// The offending values.
        detail: String,
    },
    /// The peer thread of a local session failed.
    #[error("the other party of the local session panicked")]
    PeerPanicked,
    /// The session revealed as many encrypted coefficients as its flooding is sized for
    /// (the union bound over a session): start a new session.
    #[error(
        "the session would reveal {requested} more coefficients after {revealed}, past the \
         {max} its noise flooding is sized for: start a new session"
    )]
    SessionExhausted {
        /// Coefficients revealed so far.
        revealed: u64,
        /// Coefficients the refused operation would reveal.
        requested: u64,
        /// The most a session may reveal.
        max: u64,
    },
}

mod he;
mod ops;

pub use he::BfvTensorData;

/// A tensor in one of the representations a computation can use. Values are fixed point
/// (`Z_2^40`, 12 fractional bits) on shares and under BFV, real numbers under CKKS.
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
/// fixed-point encoding (`Z_2^40`, 12 fractional bits), the BFV parameters for HE-backed
/// products (`t = 2^40`, N = 8192) and, on the client, its secret key (the server gets the
/// public key at set-up).
pub struct Session<C: Channel> {
    role: Role,
    party: Party<C, ChaCha20Rng>,
    fixed: FixedPoint,
    config: crate::nn::HybridConfig,
    params: Arc<BfvParameters>,
    sk: Option<Arc<SecretKey>>,
    /// Server: the client's BFV public key, which re-randomizes encrypted replies.
    rerand: Option<cipherml_he::bfv::Encryptor>,
    ckks: Option<he::CkksState>,
    log: Vec<crate::nn::LayerPlan>,
    /// Coefficients of encrypted replies revealed to the client so far (BFV and CKKS).
    revealed: u64,
    /// Both parties declared that the server's matrices may be used under CKKS although
    /// CKKS replies are not flooded ([`Session::allow_unflooded_ckks`]).
    unflooded_ckks: bool,
}

/// `log2` of the most coefficients of encrypted replies (BFV to shares, CKKS reveals) one
/// [`Session`] may reveal: every flooding adds these bits to the statistical parameter, so
/// the statistical distance over the whole session stays below `2^-flood_bits`.
pub const SESSION_REVEAL_LOG2: u32 = 32;

impl<C: Channel> std::fmt::Debug for Session<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl<C: Channel> Session<C> {
    /// Sets up the session over `channel` (base OTs in both directions).
    pub fn new(role: Role, channel: C) -> Result<Self, TensorError> {
        let mut party = Party::setup(role.party(), channel, os_rng())?;
        let config = crate::nn::HybridConfig::default();
        let fixed = FixedPoint::new(Ring::new(config.ring_bits)?, config.frac_bits)?;
        let params = BfvParameters::new(&config.bfv_literal())?;
        let sk = (role == Role::Client)
            .then(|| Arc::new(SecretKey::random(params.context(), party.rng())));
        // The client's public key, once per session: the server re-randomizes every
        // encrypted reply with it.
        let rerand = match &sk {
            Some(sk) => {
                crate::nn::hybrid::send_public_key(&params, &mut party, sk).map_err(Box::new)?;
                None
            }
            None => {
                let pk =
                    crate::nn::hybrid::receive_public_key(&params, &mut party).map_err(Box::new)?;
                Some(cipherml_he::bfv::Encryptor::new(&params, pk)?)
            }
        };
        Ok(Self {
            role,
            party,
            fixed,
            config,
            params,
            sk,
            rerand,
            ckks: None,
            log: Vec::new(),
            revealed: 0,
            unflooded_ckks: false,
        })
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

    /// A private value of `owner`: `provide` runs only on the owner's side; the other party
    /// receives a random share of the declared shape.
    pub fn input(
        &mut self,
        owner: Role,
        shape: &[usize],
        provide: impl FnOnce() -> ArrayD<f64>,
    ) -> Result<PrivateTensor, TensorError> {
        let n: usize = shape.iter().product();
        let ring = self.fixed.ring();
        let share = if owner == self.role {
            let value = provide();
            if value.shape() != shape {
                return Err(TensorError::ProvidedShape {
                    declared: shape.to_vec(),
                    found: value.shape().to_vec(),
                });
            }
            let flat: Vec<f64> = value.iter().copied().collect();
            let enc = self.fixed.encode_vec(&flat)?;
            let (ch, rng) = self.party.channel_and_rng();
            share_input(ch, ring, &enc, rng)?
        } else {
            receive_share(self.party.channel(), ring, n)?
        };
        Ok(PrivateTensor::Shared {
            share,
            shape: shape.to_vec(),
        })
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
        let net = crate::nn::NetworkModel::lan();
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

    /// Shares of `t` (a private value is shared by its owner: one message).
    pub(crate) fn shares_of(
        &mut self,
        t: &PrivateTensor,
    ) -> Result<(Vec<u64>, Vec<usize>), TensorError> {
        Ok(match t {
            PrivateTensor::Shared { share, shape } => (share.clone(), shape.clone()),
            PrivateTensor::Bfv { data, shape } => (self.bfv_shares(data.as_ref(), shape)?, shape.clone()),
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
                let ring = self.fixed.ring();
                let share = if *owner == self.role {
                    let flat: Vec<f64> = value
                        .as_ref()
                        .expect("owner holds the value")
                        .iter()
                        .copied()
                        .collect();
                    let enc = self.fixed.encode_vec(&flat)?;
                    let (ch, rng) = self.party.channel_and_rng();
                    share_input(ch, ring, &enc, rng)?
                } else {
                    receive_share(self.party.channel(), ring, n)?
                };
                (share, shape.clone())
            }
            PrivateTensor::Public(a) => {
                // Party 0 holds the public value, party 1 zero.
                let flat: Vec<f64> = a.iter().copied().collect();
                let enc = self.fixed.encode_vec(&flat)?;
                let share = if self.party.is_p0() {
                    enc
                } else {
                    vec![0; enc.len()]
                };
                (share, a.shape().to_vec())
            }
        })
    }

    /// The matrix product of two 2-D tensors. A shared left operand times a matrix the
    /// server holds in the clear runs under HE or on shares, as the cost model decides;
    /// everything else runs on shares (Beaver matrix triple from OT). Faithful truncation
    /// restores the fixed-point scale.
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

        // HE applies when the right operand is in the clear on the server's side; a BFV left
        // operand is used as it is.
        let he_possible = matches!(
            b,
            PrivateTensor::Private {
                owner: Role::Server,
                ..
            }
        );
        let chunk = (k as f64).min(8192.0);
        let rpb = (8192.0 / chunk).floor();
        let mut options = vec![(
            crate::nn::Backend::SharedMatrixTriple,
            crate::nn::plan::shared_linear(m as f64 * n as f64, k as f64, 1.0),
        )];
        if he_possible {
            let mut c = crate::nn::plan::bfv_linear(
                (k as f64 / chunk).ceil(),
                (n as f64 / rpb).ceil(),
                n as f64,
            );
            c.bytes *= m as f64;
            c.compute_us *= m as f64;
            options.push((crate::nn::Backend::BfvCoefficient, c));
        }
        let net = crate::nn::NetworkModel::lan();
        if he_possible && matches!(a, PrivateTensor::Bfv { .. }) {
            options.retain(|o| o.0.is_bfv());
        }
        let chosen = options
            .iter()
            .min_by(|x, y| {
                x.1.total_us(&net)
                    .partial_cmp(&y.1.total_us(&net))
                    .expect("finite")
            })
            .map(|o| o.0)
            .expect("non-empty");
        self.log.push(crate::nn::LayerPlan {
            layer: format!("matmul ({m}x{k}) x ({k}x{n})"),
            depth: 0,
            chosen,
            options,
        });
        let z = if chosen.is_bfv() {
            self.he_matmul(a, b, m, k, n)?
        } else {
            let (x, _) = self.shares_of(a)?;
            let (y, _) = self.shares_of(b)?;
            let triple = OtTriples.matrix(&mut self.party, ring, m, k, n)?;
            arith::matmul(&mut self.party, &x, &y, &triple)?
        };
        let z = arith::trunc_faithful(&mut self.party, ring, &z, self.fixed.frac_bits())?;
        Ok(PrivateTensor::Shared {
            share: z,
            shape: vec![m, n],
        })
    }

    /// `X W` with `X` shared or under BFV and `W` held by the server: `X` goes to BFV
    /// (the client encrypts its share), one coefficient-encoded product per row, and the
    /// results come back as shares (mask and flooding). Scale `2^2f`.
    fn he_matmul(
        &mut self,
        a: &PrivateTensor,
        b: &PrivateTensor,
        _m: usize,
        k: usize,
        n: usize,
    ) -> Result<Vec<u64>, TensorError> {
        let f = self.fixed.frac_bits();
        // W^T (n x k), quantized; the client builds the same layout with zeros.
        let wt = match b {
            PrivateTensor::Private { value: Some(w), .. } => w
                .view()
                .into_dimensionality::<ndarray::Ix2>()
                .expect("2-D")
                .t()
                .mapv(|v| crate::nn::hybrid::quantize(v, f)),
            _ => ndarray::Array2::zeros((n, k)),
        };
        let x = self.to_bfv(a)?;
        self.bfv_matmul_rows(&x, &wt)
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
            _ => {}
        }
        if matches!(a, PrivateTensor::Bfv { .. }) || matches!(b, PrivateTensor::Bfv { .. }) {
            return self.bfv_add(a, b, negate_b);
        }
        let (x, sa) = self.shares_of(a)?;
        let (y, sb) = self.shares_of(b)?;
        if !sa.ends_with(&sb) {
            return Err(TensorError::Shape {
                what: if negate_b { "sub" } else { "add" },
                left: sa,
                right: sb,
            });
        }
        let ring = self.fixed.ring();
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
        Ok(PrivateTensor::Shared { share, shape: sa })
    }

    /// Reveals `t` to `to` only: that party gets `Some(value)`, the other `None`.
    pub fn reveal(
        &mut self,
        t: &PrivateTensor,
        to: Role,
    ) -> Result<Option<ArrayD<f64>>, TensorError> {
        if let PrivateTensor::Ckks { .. } = t {
            return self.ckks_reveal(t, to);
        }
        let (share, shape) = self.shares_of(t)?;
        let me = self.role.party();
        let out = reveal(
            self.party.channel(),
            self.fixed.ring(),
            me,
            RevealTo::Party(to.party()),
            &share,
        )?;
        Ok(out.map(|v| {
            ArrayD::from_shape_vec(IxDyn(&shape), self.fixed.decode_vec(&v)).expect("shape matches")
        }))
    }
}

/// Runs `program` for both roles in one process, over an in-memory channel; returns the
/// client's and the server's results.
pub fn run_local<T, F>(program: F) -> Result<(T, T), TensorError>
where
    T: Send + 'static,
    F: Fn(&mut Session<MemoryChannel>) -> Result<T, TensorError> + Send + Sync + 'static,
{
    let (c0, c1) = MemoryChannel::pair();
    let program = std::sync::Arc::new(program);
    let p2 = program.clone();
    let server = std::thread::spawn(move || -> Result<T, TensorError> {
        let mut s = Session::new(Role::Server, c1)?;
        p2(&mut s)
    });
    let client = (|| {
        let mut s = Session::new(Role::Client, c0)?;
        program(&mut s)
    })();
    let server = server.join().map_err(|_| TensorError::PeerPanicked)?;
    Ok((client?, server?))
}
