//! # cipherml
//!
//! Machine learning on encrypted data. This crate ties together the HE layer
//! ([`cipherml_he`], re-exported as [`he`]) and the two-party layer ([`cipherml_mpc`],
//! re-exported as [`mpc`]).

pub use cipherml_he as he;
pub use cipherml_mpc as mpc;

pub mod admin;
mod error;
pub use error::Error;
pub mod bench;
pub mod client;
pub mod data;
pub mod key_cache;
pub mod key_store;
pub mod link;
pub mod metrics;
pub mod nn;
pub mod protocol;
pub mod server;
pub mod tensor;
pub mod tls;

/// The README's examples run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
