//! # cipherml-mpc
//!
//! The two-party computation layer of cipherml: additive secret sharing over `Z_2^l`
//! ([`ring`], [`fixed`], [`share`]), channels that count bytes and rounds ([`net`]),
//! correlated randomness from shared seeds ([`prg`]), oblivious transfer written in the
//! project ([`ot`]), Beaver triples from a dealer, from OT or from HE ([`triples`]) and the
//! protocols on shares ([`protocols`]): multiplication, matrix products, truncation, the
//! CrypTFlow2 millionaire comparison, DReLU, ReLU, max, max-pool, argmax, conversions and
//! approximations.
//!
//! Security model: two semi-honest parties (a dealer, if used, is a third process that
//! colludes with neither); 128-bit computational security for OT (Chou-Orlandi over
//! Ristretto, IKNP with fixed-key AES hashes, Ferret silent OT over primal LPN with
//! regular noise at emp-ot's 128-bit parameters), statistical masking of `2^-38` or
//! better for HE triples (see [`triples::he`]). Every receive has a timeout and a size
//! bound; a peer that misbehaves makes the protocol return an [`Error`], never panic or
//! hang. No `unsafe`; all secrets come from a caller-provided CSPRNG ([`prg::os_rng`]).
//!
//! ```
//! use cipherml_mpc::net::MemoryChannel;
//! use cipherml_mpc::party::Party;
//! use cipherml_mpc::prg::os_rng;
//! use cipherml_mpc::protocols::compare;
//! use cipherml_mpc::ring::Ring;
//! use cipherml_mpc::share::{split, PartyId};
//!
//! let ring = Ring::new(32).unwrap();
//! let x = [ring.from_signed(-5), 7, 0];
//! let (s0, s1) = split(ring, &x, &mut os_rng());
//! let (c0, c1) = MemoryChannel::pair();
//! let h = std::thread::spawn(move || {
//!     let mut p = Party::setup(PartyId::P1, c1, os_rng()).unwrap();
//!     compare::relu(&mut p, ring, &s1).unwrap()
//! });
//! let mut p = Party::setup(PartyId::P0, c0, os_rng()).unwrap();
//! let r0 = compare::relu(&mut p, ring, &s0).unwrap();
//! let r1 = h.join().unwrap();
//! assert_eq!(ring.add_vec(&r0, &r1), vec![0, 7, 0]);
//! ```

pub mod bench;
pub mod error;
pub mod fixed;
pub mod net;
pub mod ot;
pub mod party;
pub mod prg;
pub mod protocols;
pub mod ring;
pub mod secagg;
pub mod share;
pub mod triples;

pub use error::{Error, Result};

/// The version of the MPC layer's wire protocol. 2: the millionaire's tables split
/// between the parties, and 1-of-N pads sliced from one hash per key. 3: the millionaire's
/// digit size a setting of the party (`Party::set_digit_bits`), which a session picks
/// from its network model.
pub const PROTOCOL_VERSION: u32 = 3;
