//! Private tensors and sessions: the low-level API of TF Encrypted, in Rust.
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
    /// The peer thread of a local session failed.
    #[error("the other party of the local session panicked")]
    PeerPanicked,
}

/// A tensor in one of the representations a computation can use.
#[derive(Debug, Clone, PartialEq)]
pub enum PrivateTensor {
    /// Known to both parties.
    Public(ArrayD<f64>),
    /// Additively secret-shared in `Z_2^l` (fixed point); this is this party's share.
    Shared {
        /// This party's share, row-major.
        share: Vec<u64>,
        /// The shape.
        shape: Vec<usize>,
    },
}

impl PrivateTensor {
    /// The shape.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            PrivateTensor::Public(a) => a.shape().to_vec(),
            PrivateTensor::Shared { shape, .. } => shape.clone(),
        }
    }
}

/// One party's side of a two-party session: its role, its channel, OT set-up and the
/// fixed-point encoding (64-bit ring, 16 fractional bits).
pub struct Session<C: Channel> {
    role: Role,
    party: Party<C, ChaCha20Rng>,
    fixed: FixedPoint,
}

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
        let party = Party::setup(role.party(), channel, os_rng())?;
        let fixed = FixedPoint::new(Ring::new(64)?, 16)?;
        Ok(Self { role, party, fixed })
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

    fn shares_of(&self, t: &PrivateTensor) -> Result<(Vec<u64>, Vec<usize>), TensorError> {
        Ok(match t {
            PrivateTensor::Shared { share, shape } => (share.clone(), shape.clone()),
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

    /// The matrix product of two 2-D tensors (Beaver matrix triples from OT, then faithful
    /// truncation back to the fixed-point scale).
    pub fn matmul(
        &mut self,
        a: &PrivateTensor,
        b: &PrivateTensor,
    ) -> Result<PrivateTensor, TensorError> {
        let (x, sa) = self.shares_of(a)?;
        let (y, sb) = self.shares_of(b)?;
        if sa.len() != 2 || sb.len() != 2 || sa[1] != sb[0] {
            return Err(TensorError::Shape {
                what: "matmul",
                left: sa,
                right: sb,
            });
        }
        let (m, k, n) = (sa[0], sa[1], sb[1]);
        let ring = self.fixed.ring();
        let triple = OtTriples.matrix(&mut self.party, ring, m, k, n)?;
        let z = arith::matmul(&mut self.party, &x, &y, &triple)?;
        let z = arith::trunc_faithful(&mut self.party, ring, &z, self.fixed.frac_bits())?;
        Ok(PrivateTensor::Shared {
            share: z,
            shape: vec![m, n],
        })
    }

    /// Elementwise sum.
    pub fn add(
        &mut self,
        a: &PrivateTensor,
        b: &PrivateTensor,
    ) -> Result<PrivateTensor, TensorError> {
        let (x, sa) = self.shares_of(a)?;
        let (y, sb) = self.shares_of(b)?;
        if sa != sb {
            return Err(TensorError::Shape {
                what: "add",
                left: sa,
                right: sb,
            });
        }
        Ok(PrivateTensor::Shared {
            share: self.fixed.ring().add_vec(&x, &y),
            shape: sa,
        })
    }

    /// Reveals `t` to `to` only: that party gets `Some(value)`, the other `None`.
    pub fn reveal(
        &mut self,
        t: &PrivateTensor,
        to: Role,
    ) -> Result<Option<ArrayD<f64>>, TensorError> {
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
