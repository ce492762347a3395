//! # cipherml-mpc
//!
//! The two-party computation layer of cipherml: additive secret sharing over `Z_2^l`,
//! oblivious transfer, Beaver triples (from a dealer, from HE or from OT) and exact
//! non-linear protocols (comparison, ReLU, max-pool).
//!
//! This crate is a placeholder in this release: the protocols are tracked by their own
//! issue and land in a later version. Its dependency on `cipherml-he` (for HE-generated
//! triples) is already in place so that the workspace layout matches the design.

/// The version of the MPC layer's wire protocol (none is defined yet).
pub const PROTOCOL_VERSION: u32 = 0;
