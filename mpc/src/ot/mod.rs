//! Oblivious transfer, written in the project: Chou-Orlandi base OT over Ristretto
//! ([`base`]), IKNP extension with fixed-key AES hashes ([`iknp`]), silent correlated OT
//! (Ferret over primal LPN, [`ferret`], bootstrapped from IKNP) and, on top of either,
//! correlated OT with a chosen global delta, random OT, chosen-message OT, arithmetic
//! correlated OT and 1-of-N OT (from `log N` 1-of-2 OTs).
//!
//! [`crate::party::Party`] uses silent OT ([`OtSender::setup_silent`]): a random OT then
//! costs no communication and a chosen-choice OT one bit, against IKNP's 128. Why not a
//! crate: `cryprot-ot` (the maintained Rust silent OT) runs over its own async QUIC
//! transport (tokio and s2n-quic, which needs a C toolchain), not over [`crate::net::Channel`].
//!
//! ```
//! use cipherml_mpc::net::MemoryChannel;
//! use cipherml_mpc::ot::{OtReceiver, OtSender};
//! let (mut a, mut b) = MemoryChannel::pair();
//! let h = std::thread::spawn(move || {
//!     let mut rng = cipherml_mpc::prg::os_rng();
//!     let mut s = OtSender::setup(&mut a, &mut rng).unwrap();
//!     s.send_chosen(&mut a, &[[1, 2], [3, 4]]).unwrap();
//! });
//! let mut rng = cipherml_mpc::prg::os_rng();
//! let mut r = OtReceiver::setup(&mut b, &mut rng).unwrap();
//! assert_eq!(r.receive_chosen(&mut b, &[1, 0]).unwrap(), vec![2, 3]);
//! h.join().unwrap();
//! ```

pub mod aes;
pub mod base;
pub mod ferret;
pub mod iknp;

pub use self::aes::Block;
pub use base::{BaseOtReceiver, BaseOtSender};
pub use iknp::{OtReceiver, OtSender, PendingCorrelated, PendingOneOfN};
