//! BFV kernels with coefficient encoding (the Cheetah approach): a matrix-vector product or
//! a convolution is one plaintext-ciphertext polynomial product per output block, with no
//! rotation. Any plaintext modulus works, including powers of two (exact arithmetic modulo
//! `t`: wrap-around is the caller's fixed-point contract).
//!
//! For `W` of shape `(m, n)` and `x` of length `n`, `x` is encoded as `sum_j x_j X^j` and a
//! block of rows as `sum_{i,j} W[i][j] X^(i n + n - 1 - j)`; coefficient `i n + n - 1` of the
//! product is `sum_j W[i][j] x_j`. Convolutions use the same idea in three dimensions.

use ndarray::{ArrayView2, ArrayView3, ArrayView4};

use crate::bfv::{Ciphertext, Encoder, Evaluator, Plaintext, PreparedPlaintext};
use crate::error::{Error, Result};

fn t_of(encoder: &Encoder) -> u64 {
    encoder.params().plaintext_modulus()
}

fn reduce(v: i128, t: u64) -> u64 {
    v.rem_euclid(t as i128) as u64
}

fn center(v: u64, t: u64) -> i64 {
    if v > t / 2 {
        v as i64 - t as i64
    } else {
        v as i64
    }
}

/// A plaintext matrix for encrypted matrix-vector products with coefficient encoding.
#[derive(Debug, Clone)]
pub struct CoeffMatVec {
    rows: usize,
    cols: usize,
    /// Columns per input chunk (at most `N`).
    chunk: usize,
    /// Rows per product (`N / chunk`).
    rows_per_block: usize,
    /// `[block][chunk]`: the weight polynomials, prepared at the top level.
    weights: Vec<Vec<PreparedPlaintext>>,
    /// Largest `|w|` and largest row-block L1 norm (for noise bounds).
    max_abs: u64,
    max_l1: u64,
}

impl CoeffMatVec {
    /// `log2` of a bound on the noise of an output ciphertext, for inputs encrypted fresh
    /// (symmetric encryption, coefficients in `[0, t)`): `t N max|w| + 21 L1(w) + t`, summed
    /// over the column chunks.
    pub fn noise_bound_log2(&self, n: usize, t: u64) -> f64 {
        let chunks = self.input_chunks() as f64;
        let b = chunks
            * (t as f64 * n as f64 * self.max_abs as f64 + 21.0 * self.max_l1 as f64 + t as f64);
        b.log2()
    }

    /// `(row block, coefficient index)` of each output, in order.
    pub fn output_positions(&self) -> Vec<(usize, usize)> {
        (0..self.rows)
            .map(|r| {
                let (b, i) = (r / self.rows_per_block, r % self.rows_per_block);
                (b, i * self.chunk + self.chunk - 1)
            })
            .collect()
    }

    /// Encodes `w` (entries reduced modulo `t`).
    pub fn new(encoder: &Encoder, w: ArrayView2<'_, i64>) -> Result<Self> {
        let n_ring = encoder.params().degree();
        let (rows, cols) = w.dim();
        if rows == 0 || cols == 0 {
            return Err(Error::ShapeMismatch {
                what: "empty matrix",
                left: vec![rows, cols],
                right: vec![],
            });
        }
        let t = t_of(encoder);
        let chunk = cols.min(n_ring);
        let rows_per_block = n_ring / chunk;
        let level = encoder.params().max_level();
        let max_abs = w.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
        let max_l1 = (0..rows)
            .step_by(rows_per_block)
            .map(|r0| {
                w.slice(ndarray::s![r0..(r0 + rows_per_block).min(rows), ..])
                    .iter()
                    .map(|v| v.unsigned_abs())
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0);
        let mut weights = Vec::new();
        for r0 in (0..rows).step_by(rows_per_block) {
            let mut per_chunk = Vec::new();
            for c0 in (0..cols).step_by(chunk) {
                let mut coeffs = vec![0u64; n_ring];
                for i in 0..rows_per_block.min(rows - r0) {
                    for j in 0..chunk.min(cols - c0) {
                        coeffs[i * chunk + chunk - 1 - j] = reduce(w[[r0 + i, c0 + j]] as i128, t);
                    }
                }
                let pt = encoder.encode_coeffs_u64(&coeffs)?;
                per_chunk.push(encoder.prepare(&pt, level)?);
            }
            weights.push(per_chunk);
        }
        Ok(Self {
            rows,
            cols,
            chunk,
            rows_per_block,
            weights,
            max_abs,
            max_l1,
        })
    }

    /// Number of input ciphertexts (column chunks).
    pub fn input_chunks(&self) -> usize {
        self.cols.div_ceil(self.chunk)
    }

    /// Number of output ciphertexts (row blocks).
    pub fn output_blocks(&self) -> usize {
        self.weights.len()
    }

    /// Encodes the input vector: one plaintext per column chunk.
    pub fn encode_input(&self, encoder: &Encoder, x: &[i64]) -> Result<Vec<Plaintext>> {
        if x.len() != self.cols {
            return Err(Error::ShapeMismatch {
                what: "input length vs matrix columns",
                left: vec![self.rows, self.cols],
                right: vec![x.len()],
            });
        }
        let t = t_of(encoder);
        x.chunks(self.chunk)
            .map(|c| {
                let v: Vec<u64> = c.iter().map(|&v| reduce(v as i128, t)).collect();
                encoder.encode_coeffs_u64(&v)
            })
            .collect()
    }

    /// `W x` under encryption: one ciphertext per row block.
    pub fn apply(&self, ev: &Evaluator, inputs: &[Ciphertext]) -> Result<Vec<Ciphertext>> {
        if inputs.len() != self.input_chunks() {
            return Err(Error::ShapeMismatch {
                what: "input ciphertexts vs column chunks",
                left: vec![self.input_chunks()],
                right: vec![inputs.len()],
            });
        }
        self.weights
            .iter()
            .map(|per_chunk| {
                let mut acc: Option<Ciphertext> = None;
                for (x, w) in inputs.iter().zip(per_chunk) {
                    let prod = ev.mul_plain_prepared(x, w)?;
                    match &mut acc {
                        None => acc = Some(prod),
                        Some(a) => ev.add_assign(a, &prod)?,
                    }
                }
                Ok(acc.expect("at least one chunk"))
            })
            .collect()
    }

    /// Reads `W x` (centered modulo `t`) from the decrypted row blocks.
    pub fn decode_output(&self, encoder: &Encoder, blocks: &[Plaintext]) -> Result<Vec<i64>> {
        if blocks.len() != self.output_blocks() {
            return Err(Error::ShapeMismatch {
                what: "output blocks",
                left: vec![self.output_blocks()],
                right: vec![blocks.len()],
            });
        }
        let t = t_of(encoder);
        let mut out = Vec::with_capacity(self.rows);
        for (b, pt) in blocks.iter().enumerate() {
            let c = pt.coefficients();
            for i in 0..self.rows_per_block.min(self.rows - b * self.rows_per_block) {
                out.push(center(c[i * self.chunk + self.chunk - 1], t));
            }
        }
        Ok(out)
    }
}

/// A plaintext convolution kernel for encrypted 2-D convolutions with coefficient encoding.
#[derive(Debug, Clone)]
pub struct CoeffConv2d {
    out_channels: usize,
    in_channels: usize,
    kernel: (usize, usize),
    /// Input spatial size (unpadded) and padding.
    input: (usize, usize),
    padding: usize,
    stride: usize,
    /// Channels per input polynomial.
    group: usize,
    /// Output channels packed per output ciphertext, and the spacing of their products.
    per_ct: usize,
    spacing: usize,
    /// `[output block][channel group]`.
    weights: Vec<Vec<PreparedPlaintext>>,
    max_abs: u64,
    max_l1: u64,
}

impl CoeffConv2d {
    /// Encodes `weights` of shape `(O, C, kh, kw)` for inputs `(C, H, W)` with symmetric zero
    /// `padding` and `stride`.
    pub fn new(
        encoder: &Encoder,
        weights: ArrayView4<'_, i64>,
        input: (usize, usize),
        padding: usize,
        stride: usize,
    ) -> Result<Self> {
        let (o, c, kh, kw) = weights.dim();
        let (h, w) = input;
        let (hp, wp) = (h + 2 * padding, w + 2 * padding);
        let n_ring = encoder.params().degree();
        if stride == 0 || hp < kh || wp < kw || hp * wp > n_ring || o == 0 || c == 0 {
            return Err(Error::ShapeMismatch {
                what: "conv2d kernel (O, C, kh, kw) vs padded input (H, W) and ring degree",
                left: vec![o, c, kh, kw],
                right: vec![hp, wp, n_ring],
            });
        }
        let hw = hp * wp;
        let group = (n_ring / hw).min(c);
        // One channel's product spans the input length plus the kernel length; channels
        // packed at that spacing never overlap (and never wrap when they all fit in N).
        let kernel_len = (group - 1) * hw + (kh - 1) * wp + kw;
        let spacing = group * hw + kernel_len - 1;
        let per_ct = (n_ring / spacing).max(1);
        let t = t_of(encoder);
        let level = encoder.params().max_level();
        let mut all = Vec::new();
        let mut max_l1 = 0u64;
        for o0 in (0..o).step_by(per_ct) {
            let mut per_group = Vec::new();
            let mut block_l1 = 0u64;
            for c0 in (0..c).step_by(group) {
                let cg = group.min(c - c0);
                let mut coeffs = vec![0u64; n_ring];
                for (j, oc) in (o0..(o0 + per_ct).min(o)).enumerate() {
                    for ic in 0..cg {
                        for p in 0..kh {
                            for q in 0..kw {
                                let idx = j * spacing
                                    + (group - 1 - ic) * hw
                                    + (kh - 1 - p) * wp
                                    + (kw - 1 - q);
                                let v = weights[[oc, c0 + ic, p, q]];
                                block_l1 += v.unsigned_abs();
                                coeffs[idx] = reduce(v as i128, t);
                            }
                        }
                    }
                }
                let pt = encoder.encode_coeffs_u64(&coeffs)?;
                per_group.push(encoder.prepare(&pt, level)?);
            }
            max_l1 = max_l1.max(block_l1);
            all.push(per_group);
        }
        let max_abs = weights.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
        Ok(Self {
            max_abs,
            max_l1,
            out_channels: o,
            in_channels: c,
            kernel: (kh, kw),
            input,
            padding,
            stride,
            group,
            per_ct,
            spacing,
            weights: all,
        })
    }

    /// `log2` of a bound on the noise of an output ciphertext (see
    /// [`CoeffMatVec::noise_bound_log2`]).
    pub fn noise_bound_log2(&self, n: usize, t: u64) -> f64 {
        let groups = self.input_groups() as f64;
        let b = groups
            * (t as f64 * n as f64 * self.max_abs as f64 + 21.0 * self.max_l1 as f64 + t as f64);
        b.log2()
    }

    /// `(output ciphertext, coefficient index)` of each output `(o, y, x)`, row-major.
    pub fn output_positions(&self) -> Vec<(usize, usize)> {
        let (o, ho, wo) = self.output_shape();
        let (kh, kw) = self.kernel;
        let wp = self.input.1 + 2 * self.padding;
        let hw = (self.input.0 + 2 * self.padding) * wp;
        let base = (self.group - 1) * hw + (kh - 1) * wp + (kw - 1);
        let mut v = Vec::with_capacity(o * ho * wo);
        for oc in 0..o {
            let (b, j) = (oc / self.per_ct, oc % self.per_ct);
            for y in 0..ho {
                for x in 0..wo {
                    v.push((
                        b,
                        j * self.spacing + base + y * self.stride * wp + x * self.stride,
                    ));
                }
            }
        }
        v
    }

    /// Number of output ciphertexts (output channels are packed several to one).
    pub fn output_blocks(&self) -> usize {
        self.weights.len()
    }

    /// Output shape `(O, H', W')`.
    pub fn output_shape(&self) -> (usize, usize, usize) {
        let (h, w) = self.input;
        let (kh, kw) = self.kernel;
        let ho = (h + 2 * self.padding - kh) / self.stride + 1;
        let wo = (w + 2 * self.padding - kw) / self.stride + 1;
        (self.out_channels, ho, wo)
    }

    /// Number of input polynomials (channel groups).
    pub fn input_groups(&self) -> usize {
        self.in_channels.div_ceil(self.group)
    }

    /// Encodes an input `(C, H, W)` (padding included): one plaintext per channel group.
    pub fn encode_input(
        &self,
        encoder: &Encoder,
        x: ArrayView3<'_, i64>,
    ) -> Result<Vec<Plaintext>> {
        let (c, h, w) = x.dim();
        if c != self.in_channels || (h, w) != self.input {
            return Err(Error::ShapeMismatch {
                what: "conv2d input (C, H, W)",
                left: vec![self.in_channels, self.input.0, self.input.1],
                right: vec![c, h, w],
            });
        }
        let t = t_of(encoder);
        let n_ring = encoder.params().degree();
        let (hp, wp) = (h + 2 * self.padding, w + 2 * self.padding);
        let hw = hp * wp;
        (0..c)
            .step_by(self.group)
            .map(|c0| {
                let mut coeffs = vec![0u64; n_ring];
                for ic in 0..self.group.min(c - c0) {
                    for y in 0..h {
                        for xx in 0..w {
                            let idx = ic * hw + (y + self.padding) * wp + xx + self.padding;
                            coeffs[idx] = reduce(x[[c0 + ic, y, xx]] as i128, t);
                        }
                    }
                }
                encoder.encode_coeffs_u64(&coeffs)
            })
            .collect()
    }

    /// The convolution under encryption: one ciphertext per block of output channels.
    pub fn apply(&self, ev: &Evaluator, inputs: &[Ciphertext]) -> Result<Vec<Ciphertext>> {
        if inputs.len() != self.input_groups() {
            return Err(Error::ShapeMismatch {
                what: "input ciphertexts vs channel groups",
                left: vec![self.input_groups()],
                right: vec![inputs.len()],
            });
        }
        self.weights
            .iter()
            .map(|per_group| {
                let mut acc: Option<Ciphertext> = None;
                for (x, w) in inputs.iter().zip(per_group) {
                    let prod = ev.mul_plain_prepared(x, w)?;
                    match &mut acc {
                        None => acc = Some(prod),
                        Some(a) => ev.add_assign(a, &prod)?,
                    }
                }
                Ok(acc.expect("at least one group"))
            })
            .collect()
    }

    /// Reads the output `(O, H', W')` (centered modulo `t`) from the decrypted output
    /// ciphertexts.
    pub fn decode_output(
        &self,
        encoder: &Encoder,
        blocks: &[Plaintext],
    ) -> Result<ndarray::Array3<i64>> {
        let (o, ho, wo) = self.output_shape();
        if blocks.len() != self.output_blocks() {
            return Err(Error::ShapeMismatch {
                what: "output ciphertexts",
                left: vec![self.output_blocks()],
                right: vec![blocks.len()],
            });
        }
        let t = t_of(encoder);
        let values: Vec<i64> = self
            .output_positions()
            .into_iter()
            .map(|(b, i)| center(blocks[b].coefficients()[i], t))
            .collect();
        Ok(ndarray::Array3::from_shape_vec((o, ho, wo), values).expect("shape"))
    }
}
