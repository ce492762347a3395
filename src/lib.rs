//! # cipherml
//!
//! Machine learning on encrypted data. This crate ties together the HE layer
//! ([`cipherml_he`], re-exported as [`he`]) and the two-party layer ([`cipherml_mpc`],
//! re-exported as [`mpc`]).

pub use cipherml_he as he;
pub use cipherml_mpc as mpc;

mod error;
pub use error::Error;
pub mod bench;
pub mod data;
pub mod link;
pub mod nn;
pub mod service;
pub mod tensor;

// The service modules at the crate root, where they have always been.
pub use service::{admin, aggregate, client, key_cache, key_store, metrics, protocol, server, tls};

/// The README's examples run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
