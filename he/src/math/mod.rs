//! Modular and RNS arithmetic: the bottom layer of cipherml-he. Depends on nothing else in
//! the crate.

pub mod modulus;
pub mod ntt;
pub mod poly;
pub mod pool;
pub mod primes;
pub mod rns;
pub mod sampler;

pub use modulus::Modulus;
pub use ntt::NttOperator;
pub use poly::{Coeff, Ntt, Poly, Representation};
pub use rns::{BaseConverter, Prime, RnsBasis};
