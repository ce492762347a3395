//! # cipherml-he
//!
//! The homomorphic-encryption layer of cipherml, written in Rust: RNS arithmetic
//! ([`math`]), the RLWE core with hybrid key switching ([`rlwe`]), and the exact BFV scheme
//! ([`bfv`]).

pub mod math;
