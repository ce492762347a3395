//! # cipherml-he
//!
//! The homomorphic-encryption layer of cipherml, written in Rust: RNS arithmetic
//! ([`math`]), the RLWE core with hybrid key switching ([`rlwe`]), the exact BFV scheme
//! ([`bfv`]) and a versioned, bounded wire format ([`serialize`]).
//!
//! Layers depend one way: `math -> rlwe -> bfv -> serialize`. Every type that holds
//! parameters shares them through an `Arc`; evaluators take `&self` and are `Send + Sync`.
//! All sampling functions take a caller-provided `CryptoRng`.
//!
//! ```
//! use cipherml_he::bfv::*;
//! use cipherml_he::rlwe::{PublicKey, SecretKey};
//! use std::sync::Arc;
//!
//! let params = BfvParameters::new(&BfvParametersLiteral::n4096()).unwrap();
//! let mut rng = rand::rng();
//! let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
//! let encryptor = Encryptor::new(&params, PublicKey::new(&sk, &mut rng)).unwrap();
//! let decryptor = Decryptor::new(&params, sk).unwrap();
//! let encoder = Encoder::new(&params);
//! let ev = Evaluator::new(&params);
//!
//! let ct = encryptor.encrypt(&encoder.encode_i64(&[1, 2, 3]).unwrap(), &mut rng).unwrap();
//! let doubled = ev.add(&ct, &ct).unwrap();
//! let pt = decryptor.decrypt(&doubled).unwrap();
//! assert_eq!(&encoder.decode_i64(&pt).unwrap()[..3], &[2, 4, 6]);
//! ```

pub mod bfv;
pub mod ckks;
pub mod error;
pub mod math;
pub mod rlwe;
pub mod serialize;
pub mod tensor;

pub use error::{DecodeError, Error, Result};
