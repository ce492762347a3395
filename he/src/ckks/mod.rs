//! The CKKS scheme: approximate arithmetic on vectors of `N/2` complex (or real) numbers.
//! Encoding by the special FFT over the canonical embedding; every ciphertext carries its
//! level and scale; rescaling by dropping the last prime; rotations (with hoisting) and
//! conjugation; polynomial evaluation with optimal depth, and approximations of
//! activations.
//!
//! Depends on [`crate::math`] and [`crate::rlwe`].

mod approx;
mod ciphertext;
mod encoding;
mod evaluator;
mod params;

pub use approx::PolyApprox;
pub use ciphertext::{Ciphertext, Decryptor, Encryptor};
pub use encoding::{Encoder, Plaintext, MAX_ENCODED_LOG2};
pub use evaluator::{Evaluator, SCALE_TOLERANCE};
pub use num_complex::Complex64;
pub use params::{CkksParameters, CkksParametersLiteral};

#[cfg(test)]
mod tests;
