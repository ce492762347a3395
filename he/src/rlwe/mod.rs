//! The RLWE core shared by BFV and CKKS: the checked context, keys, the one encryptor and
//! decryptor (with re-randomization) under both schemes, and hybrid key switching (special
//! primes, RNS-digit decomposition). Depends on [`crate::math`] only.

pub mod context;
pub(crate) mod encryptor;
pub mod keys;
pub(crate) mod ops;

pub use context::{max_log_qp_128, RlweContext};
pub use keys::{GaloisKeys, KeySwitchKey, PublicKey, RelinKey, SecretKey};
