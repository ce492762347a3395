//! The service layer: the wire protocol (typed messages and refusal codes), the inference
//! server and its client, the secure-aggregation server and its client, TLS, the admin endpoints and metrics, the server's key cache and
//! the client's key store. Everything private runs on the engine ([`crate::tensor`]) and
//! the models ([`crate::nn`]); the server and the client share only the protocol and the
//! lazily set-up two-party link, never each other's code.
//!
//! May import: `crate::nn`, `crate::tensor`, `crate::link`, `crate::Error`, the crates below.

pub mod admin;
pub mod aggregate;
pub mod client;
pub mod key_cache;
pub mod key_store;
mod lazy;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod tls;
