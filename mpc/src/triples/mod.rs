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
//! [`AnyTriples`] holds any one of the sources, chosen at run time.

pub mod dealer;
pub mod he;
pub mod ot;

use std::fmt;

use rand::{CryptoRng, RngCore};

use crate::error::Result;
use crate::net::{Channel, TcpChannel};
use crate::party::Party;
use crate::ring::Ring;

use self::dealer::DealerClient;
use self::he::HeTriples;
use self::ot::OtTriples;

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

/// Which source an [`AnyTriples`] draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TripleSourceKind {
    /// Oblivious transfer between the two parties ([`ot`]).
    Ot,
    /// Homomorphic encryption between the two parties ([`he`]).
    He,
    /// A dealer process ([`dealer`]).
    Dealer,
}

impl fmt::Display for TripleSourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TripleSourceKind::Ot => "ot",
            TripleSourceKind::He => "he",
            TripleSourceKind::Dealer => "dealer",
        })
    }
}

/// The triple source a session holds, chosen at run time from its configuration: each
/// call is dispatched to the source inside. `D` is the channel to the dealer (TCP by
/// default). `Send` if its parts are; not meant to be shared.
///
/// ```
/// use cipherml_mpc::net::MemoryChannel;
/// use cipherml_mpc::triples::{AnyTriples, TripleSourceKind};
///
/// let t: AnyTriples<MemoryChannel> = AnyTriples::ot();
/// assert_eq!(t.kind(), TripleSourceKind::Ot);
/// ```
#[derive(Debug)]
pub enum AnyTriples<D: Channel = TcpChannel> {
    /// Triples from OT.
    Ot(OtTriples),
    /// Triples from HE (matrix triples fall back to OT).
    He(Box<HeTriples>),
    /// Triples from a dealer process.
    Dealer(DealerClient<D>),
}

impl<D: Channel> AnyTriples<D> {
    /// Triples from OT (no third party, no set-up beyond the party's own).
    pub fn ot() -> Self {
        AnyTriples::Ot(OtTriples)
    }

    /// Triples from a dealer, through a client already paired with it
    /// ([`DealerClient::connect`]).
    pub fn dealer(client: DealerClient<D>) -> Self {
        AnyTriples::Dealer(client)
    }

    /// Triples from HE, in this party's role (set up with
    /// [`he::HeTripleClient::setup`] / [`he::HeTripleServer::setup`]).
    pub fn he(source: HeTriples) -> Self {
        AnyTriples::He(Box::new(source))
    }

    /// Which source it is.
    pub fn kind(&self) -> TripleSourceKind {
        match self {
            AnyTriples::Ot(_) => TripleSourceKind::Ot,
            AnyTriples::He(_) => TripleSourceKind::He,
            AnyTriples::Dealer(_) => TripleSourceKind::Dealer,
        }
    }
}

impl<C: Channel, R: RngCore + CryptoRng, D: Channel> TripleSource<C, R> for AnyTriples<D> {
    fn arith(&mut self, p: &mut Party<C, R>, ring: Ring, n: usize) -> Result<ArithTriples> {
        match self {
            AnyTriples::Ot(s) => s.arith(p, ring, n),
            AnyTriples::He(s) => s.arith(p, ring, n),
            AnyTriples::Dealer(s) => s.arith(p, ring, n),
        }
    }

    fn matrix(
        &mut self,
        p: &mut Party<C, R>,
        ring: Ring,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<MatrixTriple> {
        match self {
            AnyTriples::Ot(s) => s.matrix(p, ring, m, k, n),
            AnyTriples::He(s) => s.matrix(p, ring, m, k, n),
            AnyTriples::Dealer(s) => s.matrix(p, ring, m, k, n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::MemoryChannel;
    use crate::prg::os_rng;
    use crate::share::PartyId;

    #[test]
    fn any_triples_dispatches_to_ot() {
        let ring = Ring::new(32).unwrap();
        let (c0, c1) = MemoryChannel::pair();
        let run = move |id, ch| {
            let mut p = Party::setup(id, ch, os_rng()).unwrap();
            let mut src: AnyTriples<MemoryChannel> = AnyTriples::ot();
            assert_eq!(src.kind(), TripleSourceKind::Ot);
            let t = src.arith(&mut p, ring, 20).unwrap();
            let m = src.matrix(&mut p, ring, 2, 3, 4).unwrap();
            (t, m)
        };
        let h = std::thread::spawn(move || run(PartyId::P1, c1));
        let (t0, m0) = run(PartyId::P0, c0);
        let (t1, m1) = h.join().unwrap();
        let (a, b) = (ring.add_vec(&t0.a, &t1.a), ring.add_vec(&t0.b, &t1.b));
        assert_eq!(t0.len(), 20);
        assert_eq!(ring.add_vec(&t0.c, &t1.c), ring.mul_vec(&a, &b));
        let (a, b) = (ring.add_vec(&m0.a, &m1.a), ring.add_vec(&m0.b, &m1.b));
        assert_eq!(ring.add_vec(&m0.c, &m1.c), ring.matmul(&a, &b, 2, 3, 4));
        assert_eq!(TripleSourceKind::Dealer.to_string(), "dealer");
    }
}
