//! Packed tensor layouts and kernels on top of the schemes: CKKS tensors in a replicated
//! slot layout with linear maps by the diagonal method (dense, convolution, average
//! pooling), and BFV coefficient-encoded matrix products and convolutions (one polynomial
//! product, no rotation, as in Cheetah).
//!
//! Depends on [`crate::ckks`], [`crate::bfv`] and below.

pub mod bfv_coeff;
pub mod bfv_simd;
pub mod ckks;

pub use self::ckks::{avg_pool_matrix, conv2d_matrix, CkksTensor, LinearMap, PreparedLinearMap};
pub use bfv_coeff::{
    product_noise_log2, CoeffConv2d, CoeffMatVec, ConvLayout, MatVecLayout, FRESH_NOISE_LOG2,
};
pub use bfv_simd::BfvTensor;
