//! Beaver triples from three sources the caller chooses:
//!
//! * [`dealer`]: a third process (TF Encrypted's "crypto producer"; never one of the two
//!   parties) sends each party its shares;
//! * [`ot`]: Gilboa products over correlated OT (no third party), and AND triples from
//!   random OTs;
//! * [`he`]: the client encrypts its shares under BFV ([`cipherml_he`]), the server
//!   multiplies under encryption and masks (no third party).
//!
//! Elementwise triples `c = a * b` and matrix triples `C = A B` (for matmul).

pub mod dealer;
pub mod he;
pub mod ot;

use rand::{CryptoRng, RngCore};

use crate::error::Result;
use crate::net::Channel;
use crate::party::Party;
use crate::ring::Ring;

/// This party's shares of `n` elementwise triples `c = a * b` in `Z_2^l`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArithTriples {
    /// The ring.
    pub ring: Ring,
    /// Shares of `a`.
    pub a: Vec<u64>,
    /// Shares of `b`.
    pub b: Vec<u64>,
    /// Shares of `c = a b`.
    pub c: Vec<u64>,
}

impl ArithTriples {
    /// Number of triples.
    pub fn len(&self) -> usize {
        self.a.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.a.is_empty()
    }
}

/// This party's shares of a matrix triple `C = A B`, `A` of `m x k`, `B` of `k x n`
/// (row-major).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixTriple {
    /// The ring.
    pub ring: Ring,
    /// Rows of `A`.
    pub m: usize,
    /// Columns of `A`, rows of `B`.
    pub k: usize,
    /// Columns of `B`.
    pub n: usize,
    /// Shares of `A`.
    pub a: Vec<u64>,
    /// Shares of `B`.
    pub b: Vec<u64>,
    /// Shares of `C`.
    pub c: Vec<u64>,
}

/// This party's XOR shares of AND triples: `c = a & b` where `a` is one bit and `b`, `c`
/// have `width` bits (width 2 gives two triples sharing `a`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitTriples {
    /// Bits per `b` and `c` (1 or 2, or up to 8).
    pub width: u32,
    /// Shares of `a` (one bit each).
    pub a: Vec<u8>,
    /// Shares of `b`.
    pub b: Vec<u8>,
    /// Shares of `c`.
    pub c: Vec<u8>,
}

/// A source of arithmetic triples that protocols can draw from while they run.
pub trait TripleSource<C: Channel, R: RngCore + CryptoRng> {
    /// `n` elementwise triples in `ring`.
    fn arith(&mut self, p: &mut Party<C, R>, ring: Ring, n: usize) -> Result<ArithTriples>;
    /// One matrix triple of shape `(m x k) (k x n)`.
    fn matrix(
        &mut self,
        p: &mut Party<C, R>,
        ring: Ring,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<MatrixTriple>;
}
