//! The RLWE core shared by BFV and CKKS: the checked context, keys, and hybrid key switching
//! (special primes, RNS-digit decomposition). Depends on [`crate::math`] only.

pub mod context;
pub mod keys;
pub(crate) mod ops;

pub use context::{max_log_qp_128, RlweContext};
pub use keys::{GaloisKeys, KeySwitchKey, PublicKey, RelinKey, SecretKey};
