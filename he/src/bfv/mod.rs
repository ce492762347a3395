//! The BFV scheme: exact arithmetic modulo a plaintext modulus `t`, with SIMD batching
//! (prime `t = 1 mod 2N`) or coefficient encoding (any `t`, e.g. a power of two), RNS
//! (HPS) multiplication, relinearization, rotations and modulus switching.
//!
//! Depends on [`crate::math`] and [`crate::rlwe`].

mod ciphertext;
mod encoding;
mod evaluator;
mod params;

pub use ciphertext::{Ciphertext, CoeffWindow, Decryptor, Encryptor};
pub use encoding::{Encoder, Plaintext, PreparedPlaintext};
pub use evaluator::Evaluator;
pub use params::{BfvParameters, BfvParametersLiteral, PlaintextModulus};

#[cfg(test)]
mod reference_tests;
