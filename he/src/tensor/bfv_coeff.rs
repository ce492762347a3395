//! BFV kernels with coefficient encoding (the Cheetah approach): a matrix-vector product or
//! a convolution is one plaintext-ciphertext polynomial product per output block, with no
//! rotation. Any plaintext modulus works, including powers of two (exact arithmetic modulo
//! `t`: wrap-around is the caller's fixed-point contract).
//!
//! For `W` of shape `(m, n)` and `x` of length `n`, in the contiguous layout `x` is encoded
//! as `sum_j x_j X^j` and a block of rows as `sum_{i,j} W[i][j] X^(i n + n - 1 - j)`;
//! coefficient `i n + n - 1` of the product is `sum_j W[i][j] x_j`. In the strided layout
//! (`m` rows to a block) the roles of the two digits swap: `x_j` sits at `j m`, `W[i][j]` at
//! `(n - 1 - j) m + i`, and the outputs are consecutive, at `(n - 1) m + i`. Convolutions
//! use the strided idea in three dimensions (output channels interleaved).
//!
//! Each read output is a sum over a few coefficients of the input only: its
//! [`CoeffWindow`] (the outputs' positions minus the weights' positions, modulo `N`). A
//! client sends its ciphertext only there. The strided layouts make the window about the
//! size of the weight block (`n m + m - 1` coefficients), where the contiguous one needs
//! `(2 m - 1) n`: a small layer uploads a fraction of a ciphertext.

use ndarray::{ArrayView2, ArrayView3, ArrayView4};

use crate::bfv::{Ciphertext, CoeffWindow, Encoder, Evaluator, Plaintext, PreparedPlaintext};
use crate::error::{Error, Result};

fn t_of(encoder: &Encoder) -> u128 {
    encoder.params().plaintext_modulus()
}

fn reduce(v: i128, t: u128) -> u64 {
    // t <= 2^64: it fits in an i128, and the residue in a u64.
    v.rem_euclid(t as i128) as u64
}

/// `v` in `(-t/2, t/2]`, or for `t = 2^64` in `[-2^63, 2^63)` (as the encoder centers).
fn center(v: u64, t: u128) -> i64 {
    if v as u128 > t / 2 {
        (v as i128 - t as i128) as i64
    } else {
        v as i64
    }
}

/// The shape of a [`CoeffMatVec`] ([`CoeffMatVec::layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatVecLayout {
    /// Columns per input chunk.
    pub chunk: usize,
    /// Input ciphertexts (column chunks).
    pub inputs: usize,
    /// Output ciphertexts (row blocks).
    pub blocks: usize,
    /// Rows to an output ciphertext.
    pub rows_per_block: usize,
    /// Distance between consecutive input coefficients.
    pub x_stride: usize,
    /// Distance between consecutive outputs.
    pub row_stride: usize,
    /// The coefficients of each input ciphertext the outputs read.
    pub window: CoeffWindow,
}

/// A plaintext matrix for encrypted matrix-vector products with coefficient encoding.
#[derive(Debug, Clone)]
pub struct CoeffMatVec {
    rows: usize,
    cols: usize,
    /// Columns per input chunk (at most `N`).
    chunk: usize,
    /// Rows per product (at most `N / chunk`, balanced over the blocks).
    rows_per_block: usize,
    /// Distance between consecutive input coefficients (1, or `rows_per_block` strided).
    x_stride: usize,
    /// Distance between consecutive outputs (`chunk`, or 1 strided).
    row_stride: usize,
    /// The input coefficients the outputs read.
    window: CoeffWindow,
    /// `[block][chunk]`: the weight polynomials, prepared at the top level.
    weights: Vec<Vec<PreparedPlaintext>>,
    /// The public bound on `|w|` that the noise bounds use (never the weights' own
    /// magnitudes, which the flooding would otherwise reveal).
    cap: u64,
}

/// `log2` of the bound on the noise of a fresh symmetric encryption (centered-binomial
/// error, every coefficient at most 21 in absolute value).
pub const FRESH_NOISE_LOG2: f64 = 4.392_317_422_778_761;

/// `log2` of a bound on the noise of `sum_k x_k w_k` for `products` plaintext-ciphertext
/// products, each input of noise at most `2^input_noise_log2` and message coefficients in
/// `[0, t)`, each weight polynomial with coefficients at most `cap` and at most `terms`
/// non-zero coefficients. `t` is a `u128` (it can be `2^64`). For a power-of-two `t`,
/// which BFV encrypts as `round(Q m / t)` (no carry term), the noise (phase minus `Q m /
/// t`) of a product is at most `(2^input_noise_log2 + 1/2) cap terms`: the input's noise
/// plus its rounding error (at most 1/2), times the weight polynomial (whose L1 norm is at
/// most `cap terms`). For other `t` (`floor(Q / t) m`), per product also `t N cap` (the
/// carry of `m w` over `t`, times `Q mod t < t`) and `t` (rounding).
pub fn product_noise_log2(
    products: usize,
    n: usize,
    t: u128,
    cap: u64,
    terms: usize,
    input_noise_log2: f64,
) -> f64 {
    let (rounded, t, cap) = (t.is_power_of_two(), t as f64, cap as f64);
    let per = if rounded {
        (input_noise_log2.exp2() + 0.5) * cap * terms as f64
    } else {
        t * n as f64 * cap + input_noise_log2.exp2() * cap * terms as f64 + t
    };
    (products.max(1) as f64 * per).log2()
}

fn check_cap(values: impl Iterator<Item = i64>, cap: u64, shape: &[usize]) -> Result<()> {
    for (index, v) in values.enumerate() {
        if v.unsigned_abs() > cap {
            return Err(Error::ValueAboveCap {
                what: "weight",
                index,
                shape: shape.to_vec(),
                value: v,
                cap,
            });
        }
    }
    Ok(())
}

impl CoeffMatVec {
    /// `log2` of a bound on the noise of an output ciphertext, for inputs encrypted fresh
    /// (symmetric encryption, coefficients in `[0, t)`); see
    /// [`CoeffMatVec::noise_bound_log2_from`].
    pub fn noise_bound_log2(&self, n: usize, t: u128) -> f64 {
        self.noise_bound_log2_from(n, t, FRESH_NOISE_LOG2)
    }

    /// `log2` of a bound on the noise of an output ciphertext for inputs of noise at most
    /// `2^input_noise_log2` (message coefficients in `[0, t)`): [`product_noise_log2`] over
    /// the column chunks, from the public cap on `|w|` and the shapes only. The input's
    /// noise is multiplied by the weights, not added to the bound.
    pub fn noise_bound_log2_from(&self, n: usize, t: u128, input_noise_log2: f64) -> f64 {
        let terms = self.rows_per_block.min(self.rows) * self.chunk;
        product_noise_log2(self.input_chunks(), n, t, self.cap, terms, input_noise_log2)
    }

    /// The public bound on `|w|` the noise bounds use.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// `(row block, coefficient index)` of each output, in order.
    pub fn output_positions(&self) -> Vec<(usize, usize)> {
        (0..self.rows)
            .map(|r| {
                let (b, i) = (r / self.rows_per_block, r % self.rows_per_block);
                (b, (self.chunk - 1) * self.x_stride + i * self.row_stride)
            })
            .collect()
    }

    /// Distance between consecutive input coefficients in the encoding: 1 in the
    /// contiguous layout, the rows per block in the strided one. (Shifting an input by `s`
    /// entries moves the outputs by `s` times this.)
    pub fn input_stride(&self) -> usize {
        self.x_stride
    }

    /// The input coefficients every read output depends on (see [`CoeffWindow`]): from the
    /// layout only.
    pub fn input_window(&self) -> CoeffWindow {
        self.window
    }

    /// Encodes `w` (entries reduced modulo `t`) in the contiguous layout. The noise bounds
    /// use the largest cap any weight can have modulo `t` (`t / 2`); prefer
    /// [`CoeffMatVec::new_capped`] with a declared cap.
    pub fn new(encoder: &Encoder, w: ArrayView2<'_, i64>) -> Result<Self> {
        let cap = (t_of(encoder) / 2) as u64;
        Self::new_capped(encoder, w, cap)
    }

    /// Encodes `w` in the contiguous layout (the input as `sum_j x_j X^j`, as an input
    /// encrypted whole is), every `|w|` at most the public `cap` (else
    /// [`Error::ValueAboveCap`] with the first offending weight): the noise bounds, and so
    /// the flooding a server adds, depend on `cap` and the shapes only.
    pub fn new_capped(encoder: &Encoder, w: ArrayView2<'_, i64>, cap: u64) -> Result<Self> {
        let chunk = w.dim().1.min(encoder.params().degree());
        Self::build(encoder, w, cap, chunk, false)
    }

    /// As [`CoeffMatVec::new_capped`], in the strided layout (the smallest
    /// [`CoeffMatVec::input_window`]), with the input split in chunks of `chunk` columns
    /// (at most `N`; the last may be shorter): more input ciphertexts, whose products are
    /// summed, for more rows per output ciphertext (`N / chunk`). Fewer replies pay when
    /// the matrix has few rows and many columns.
    pub fn new_chunked(
        encoder: &Encoder,
        w: ArrayView2<'_, i64>,
        cap: u64,
        chunk: usize,
    ) -> Result<Self> {
        Self::build(encoder, w, cap, chunk, true)
    }

    /// The shape of a matrix-vector product of `rows x cols` with input chunks of `chunk`
    /// columns (1 to `N`; at most `cols` is used), from the shapes alone: input
    /// ciphertexts, output ciphertexts (as few as fit, their rows balanced: a smaller
    /// window for the same replies), rows to one, and the input window in the strided
    /// layout of [`CoeffMatVec::new_chunked`] (`rows_per_block (chunk + 1) - 1`
    /// coefficients, at most `N`) or, if not `strided`, the contiguous one
    /// (`(2 rows_per_block - 1) chunk`).
    ///
    /// ```
    /// use cipherml_he::tensor::CoeffMatVec;
    /// // 128 x 784 in chunks of 262 at N = 8192: 3 inputs, 5 replies of 26 rows, each
    /// // input sent at 262 * 26 + 25 coefficients.
    /// let l = CoeffMatVec::layout(8192, (128, 784), 262, true).unwrap();
    /// assert_eq!((l.inputs, l.blocks, l.rows_per_block), (3, 5, 26));
    /// assert_eq!(l.window.len(), 6837);
    /// ```
    pub fn layout(
        n_ring: usize,
        (rows, cols): (usize, usize),
        chunk: usize,
        strided: bool,
    ) -> Result<MatVecLayout> {
        if chunk == 0 || chunk > n_ring {
            return Err(Error::ShapeMismatch {
                what: "input chunk (1 to N columns)",
                left: vec![chunk],
                right: vec![n_ring],
            });
        }
        if rows == 0 || cols == 0 {
            return Err(Error::ShapeMismatch {
                what: "empty matrix",
                left: vec![rows, cols],
                right: vec![],
            });
        }
        let chunk = chunk.min(cols);
        let blocks = rows.div_ceil(n_ring / chunk);
        let rows_per_block = rows.div_ceil(blocks);
        let (x_stride, row_stride) = if strided {
            (rows_per_block, 1)
        } else {
            (1, chunk)
        };
        // Weights at [0, (chunk - 1) sx + (m - 1) sr], outputs at (chunk - 1) sx + [0,
        // (m - 1) sr]: their differences.
        let (m, sx, sr) = (rows_per_block as i64, x_stride as i64, row_stride as i64);
        let window = CoeffWindow::hull(
            n_ring,
            -(m - 1) * sr,
            (chunk as i64 - 1) * sx + (m - 1) * sr,
        );
        Ok(MatVecLayout {
            chunk,
            inputs: cols.div_ceil(chunk),
            blocks,
            rows_per_block,
            x_stride,
            row_stride,
            window,
        })
    }

    fn build(
        encoder: &Encoder,
        w: ArrayView2<'_, i64>,
        cap: u64,
        chunk: usize,
        strided: bool,
    ) -> Result<Self> {
        let n_ring = encoder.params().degree();
        let (rows, cols) = w.dim();
        let lay = Self::layout(n_ring, (rows, cols), chunk, strided)?;
        check_cap(w.iter().copied(), cap, &[rows, cols])?;
        let t = t_of(encoder);
        let MatVecLayout {
            chunk,
            rows_per_block,
            x_stride,
            row_stride,
            window,
            ..
        } = lay;
        let level = encoder.params().max_level();
        let mut weights = Vec::new();
        for r0 in (0..rows).step_by(rows_per_block) {
            let mut per_chunk = Vec::new();
            for c0 in (0..cols).step_by(chunk) {
                let mut coeffs = vec![0u64; n_ring];
                for i in 0..rows_per_block.min(rows - r0) {
                    for j in 0..chunk.min(cols - c0) {
                        coeffs[(chunk - 1 - j) * x_stride + i * row_stride] =
                            reduce(w[[r0 + i, c0 + j]] as i128, t);
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
            x_stride,
            row_stride,
            window,
            weights,
            cap,
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
        let n_ring = encoder.params().degree();
        x.chunks(self.chunk)
            .map(|c| {
                let mut v = vec![0u64; n_ring];
                for (j, &xj) in c.iter().enumerate() {
                    v[j * self.x_stride] = reduce(xj as i128, t);
                }
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
        Ok(self
            .output_positions()
            .into_iter()
            .map(|(b, i)| center(blocks[b].coefficients()[i], t))
            .collect())
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
    /// Output channels per output ciphertext (at most `N / spacing`, balanced over the
    /// blocks), interleaved: channel `j` of a block owns the coefficients `= j mod per_ct`.
    per_ct: usize,
    /// The input coefficients the outputs read.
    window: CoeffWindow,
    /// `[output block][channel group]`.
    weights: Vec<Vec<PreparedPlaintext>>,
    /// The public bound on `|w|` that the noise bounds use.
    cap: u64,
}

/// The shape of a [`CoeffConv2d`] ([`CoeffConv2d::layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvLayout {
    /// Input channels to a ciphertext.
    pub group: usize,
    /// Input ciphertexts (channel groups).
    pub inputs: usize,
    /// Output ciphertexts.
    pub blocks: usize,
    /// Output channels to an output ciphertext.
    pub per_ct: usize,
    /// The coefficients of each input ciphertext the outputs read.
    pub window: CoeffWindow,
}

impl CoeffConv2d {
    /// Encodes `weights` of shape `(O, C, kh, kw)` for inputs `(C, H, W)` with symmetric zero
    /// `padding` and `stride`. The noise bounds use the cap `t / 2`; prefer
    /// [`CoeffConv2d::new_capped`].
    pub fn new(
        encoder: &Encoder,
        weights: ArrayView4<'_, i64>,
        input: (usize, usize),
        padding: usize,
        stride: usize,
    ) -> Result<Self> {
        let cap = (t_of(encoder) / 2) as u64;
        Self::new_capped(encoder, weights, input, padding, stride, cap)
    }

    /// As [`CoeffConv2d::new`], every `|w|` at most the public `cap` (else
    /// [`Error::ValueAboveCap`]): the noise bounds depend on `cap` and the shapes only.
    /// As many input channels to a ciphertext as fit ([`CoeffConv2d::max_group`]).
    pub fn new_capped(
        encoder: &Encoder,
        weights: ArrayView4<'_, i64>,
        input: (usize, usize),
        padding: usize,
        stride: usize,
        cap: u64,
    ) -> Result<Self> {
        let n_ring = encoder.params().degree();
        let (_, c, _, _) = weights.dim();
        let group = Self::max_group(n_ring, c, input, padding);
        Self::new_grouped(encoder, weights, input, padding, stride, cap, group)
    }

    /// The most input channels that fit one ciphertext: `N / (H W)` (padding included), at
    /// most `C`, at least 1.
    pub fn max_group(n: usize, channels: usize, input: (usize, usize), padding: usize) -> usize {
        let hw = (input.0 + 2 * padding) * (input.1 + 2 * padding);
        (n / hw.max(1)).min(channels).max(1)
    }

    /// The layout of a convolution with `group` input channels to a ciphertext, from the
    /// shapes alone (what [`CoeffConv2d::new_grouped`] builds): input ciphertexts, output
    /// ciphertexts, output channels to one, and the input window's length. Fewer channels
    /// to an input leave room for more output channels to a reply.
    ///
    /// ```
    /// use cipherml_he::tensor::CoeffConv2d;
    /// // 16 -> 16 channels, 3x3, padding 1, on 32x32 at N = 8192: 7 channels to an input
    /// // need 16 replies; 3 need 8 (and 6 inputs, each sent at 6937 coefficients).
    /// let l7 = CoeffConv2d::layout(8192, (16, 16, 3, 3), (32, 32), 1, 1, 7).unwrap();
    /// assert_eq!((l7.inputs, l7.blocks, l7.per_ct), (3, 16, 1));
    /// let l3 = CoeffConv2d::layout(8192, (16, 16, 3, 3), (32, 32), 1, 1, 3).unwrap();
    /// assert_eq!((l3.inputs, l3.blocks, l3.per_ct, l3.window.len()), (6, 8, 2, 6937));
    /// ```
    pub fn layout(
        n_ring: usize,
        (o, c, kh, kw): (usize, usize, usize, usize),
        (h, w): (usize, usize),
        padding: usize,
        stride: usize,
        group: usize,
    ) -> Result<ConvLayout> {
        let (hp, wp) = (h + 2 * padding, w + 2 * padding);
        let bad = stride == 0 || hp < kh || wp < kw || hp * wp > n_ring || o == 0 || c == 0;
        if bad || group == 0 || group > Self::max_group(n_ring, c, (h, w), padding) {
            return Err(Error::ShapeMismatch {
                what: "conv2d kernel (O, C, kh, kw) vs padded input (H, W), ring degree and \
                       channels to a ciphertext",
                left: vec![o, c, kh, kw],
                right: vec![hp, wp, n_ring, group],
            });
        }
        let hw = hp * wp;
        // One output channel alone: the kernel at [0, kernel_len), the input at [0, group
        // hw), the outputs at base + [0, last] (base = kernel_len - 1). Output channels are
        // interleaved: every position times per_ct, channel j at offset j (the strided
        // layout of the module documentation). A product stays in its channel's residue
        // class until it wraps past N (negated); what wraps ends below channel 0's first
        // output if group hw per_ct <= N, and the outputs stay below N if (kernel_len +
        // last) per_ct <= N: per_ct = N / spacing with spacing the larger of the two.
        let kernel_len = (group - 1) * hw + (kh - 1) * wp + kw;
        let (ho, wo) = ((hp - kh) / stride + 1, (wp - kw) / stride + 1);
        let last = (ho - 1) * stride * wp + (wo - 1) * stride;
        let spacing = (group * hw).max(kernel_len + last);
        let blocks = o.div_ceil((n_ring / spacing).max(1));
        let per_ct = o.div_ceil(blocks);
        // Weights at [0, base m + m - 1], outputs at [base m, (base + last) m + m - 1]:
        // their differences.
        let m = per_ct as i64;
        let top = (kernel_len - 1 + last) as i64 * m + m - 1;
        let window = CoeffWindow::hull(n_ring, -(m - 1), top);
        Ok(ConvLayout {
            group,
            inputs: c.div_ceil(group),
            blocks,
            per_ct,
            window,
        })
    }

    /// As [`CoeffConv2d::new_capped`] with `group` input channels to a ciphertext (1 to
    /// [`CoeffConv2d::max_group`]; see [`CoeffConv2d::layout`]).
    pub fn new_grouped(
        encoder: &Encoder,
        weights: ArrayView4<'_, i64>,
        input: (usize, usize),
        padding: usize,
        stride: usize,
        cap: u64,
        group: usize,
    ) -> Result<Self> {
        let (o, c, kh, kw) = weights.dim();
        check_cap(weights.iter().copied(), cap, &[o, c, kh, kw])?;
        let n_ring = encoder.params().degree();
        let lay = Self::layout(n_ring, (o, c, kh, kw), input, padding, stride, group)?;
        let per_ct = lay.per_ct;
        let wp = input.1 + 2 * padding;
        let hw = (input.0 + 2 * padding) * wp;
        let t = t_of(encoder);
        let level = encoder.params().max_level();
        let mut all = Vec::new();
        for o0 in (0..o).step_by(per_ct) {
            let mut per_group = Vec::new();
            for c0 in (0..c).step_by(group) {
                let cg = group.min(c - c0);
                let mut coeffs = vec![0u64; n_ring];
                for (j, oc) in (o0..(o0 + per_ct).min(o)).enumerate() {
                    for ic in 0..cg {
                        for p in 0..kh {
                            for q in 0..kw {
                                let idx =
                                    ((group - 1 - ic) * hw + (kh - 1 - p) * wp + (kw - 1 - q))
                                        * per_ct
                                        + j;
                                let v = weights[[oc, c0 + ic, p, q]];
                                coeffs[idx] = reduce(v as i128, t);
                            }
                        }
                    }
                }
                let pt = encoder.encode_coeffs_u64(&coeffs)?;
                per_group.push(encoder.prepare(&pt, level)?);
            }
            all.push(per_group);
        }
        Ok(Self {
            cap,
            out_channels: o,
            in_channels: c,
            kernel: (kh, kw),
            input,
            padding,
            stride,
            group,
            per_ct,
            window: lay.window,
            weights: all,
        })
    }

    /// `log2` of a bound on the noise of an output ciphertext for fresh inputs (see
    /// [`CoeffConv2d::noise_bound_log2_from`]).
    pub fn noise_bound_log2(&self, n: usize, t: u128) -> f64 {
        self.noise_bound_log2_from(n, t, FRESH_NOISE_LOG2)
    }

    /// `log2` of a bound on the noise of an output ciphertext for inputs of noise at most
    /// `2^input_noise_log2`: [`product_noise_log2`] over the channel groups, each weight
    /// polynomial holding at most `per_ct * group * kh * kw` weights of at most the cap.
    pub fn noise_bound_log2_from(&self, n: usize, t: u128, input_noise_log2: f64) -> f64 {
        let (kh, kw) = self.kernel;
        let terms = self.per_ct.min(self.out_channels) * self.group.min(self.in_channels) * kh * kw;
        product_noise_log2(self.input_groups(), n, t, self.cap, terms, input_noise_log2)
    }

    /// The public bound on `|w|` the noise bounds use.
    pub fn cap(&self) -> u64 {
        self.cap
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
                        (base + y * self.stride * wp + x * self.stride) * self.per_ct + j,
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

    /// The input coefficients every read output depends on (see [`CoeffWindow`]): from the
    /// layout only, about `(kernel_len + last) per_ct` of them.
    pub fn input_window(&self) -> CoeffWindow {
        self.window
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
                            coeffs[idx * self.per_ct] = reduce(x[[c0 + ic, y, xx]] as i128, t);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bfv::{BfvParameters, BfvParametersLiteral, Decryptor, PlaintextModulus};
    use crate::rlwe::SecretKey;
    use rand::{Rng, SeedableRng};
    use std::sync::Arc;

    /// The bound after a product grows with the input's noise times the weights: an input
    /// flooded to 2^60 times 64 weights of 2^10 has noise far above the old additive
    /// formula `max(fresh bound, input bound) + 1`, and below the multiplicative one.
    #[test]
    fn product_noise_bound_multiplies_the_input_noise() {
        let params = BfvParameters::new(&BfvParametersLiteral {
            plaintext: PlaintextModulus::PowerOfTwo { bits: 40 },
            ciphertext_moduli_bits: vec![50, 50, 49, 49],
            special_moduli_bits: vec![20],
            ..BfvParametersLiteral::n8192()
        })
        .unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
        let dec = Decryptor::new(&params, sk).unwrap();
        let ev = Evaluator::new(&params);
        let enc = Encoder::new(&params);
        let (t, n) = (params.plaintext_modulus() as u64, params.degree());
        let cap = 1u64 << 10;
        let w = ndarray::Array2::from_shape_fn((4, 64), |(i, j)| {
            if (i + j) % 2 == 0 {
                cap as i64
            } else {
                -(cap as i64)
            }
        });
        let mv = CoeffMatVec::new_capped(&enc, w.view(), cap).unwrap();
        let x: Vec<i64> = (0..64).map(|_| rng.random_range(0..t as i64)).collect();
        let pts = mv.encode_input(&enc, &x).unwrap();
        let input_log2 = 60u32;
        let cts: Vec<Ciphertext> = pts
            .iter()
            .map(|pt| {
                let ct = dec.encrypt_symmetric(pt, &mut rng).unwrap();
                ev.flood(&ct, input_log2, &mut rng).unwrap()
            })
            .collect();
        let out = mv.apply(&ev, &cts).unwrap();
        let q_log2 = params.context().q().log2_product();
        // `noise_budget = log2(Q) - log2 |t e| - 1`, up to rounding.
        let measured = out
            .iter()
            .map(|ct| q_log2 - dec.noise_budget(ct).unwrap() as f64 - 1.0 - (t as f64).log2())
            .fold(f64::MIN, f64::max);
        let input = input_log2 as f64 + 0.01;
        let bound = mv.noise_bound_log2_from(n, t.into(), input);
        let old = mv.noise_bound_log2(n, t.into()).max(input) + 1.0;
        assert!(
            measured <= bound,
            "measured 2^{measured:.1} above the bound 2^{bound:.1}"
        );
        assert!(
            measured > old + 2.0,
            "measured 2^{measured:.1} should exceed the old additive bound 2^{old:.1}"
        );
    }

    #[test]
    fn weights_above_the_cap_are_refused_with_their_value() {
        let params = BfvParameters::new(&BfvParametersLiteral::n8192()).unwrap();
        let enc = Encoder::new(&params);
        let mut w = ndarray::Array2::<i64>::zeros((2, 3));
        w[[1, 2]] = -9;
        let err = CoeffMatVec::new_capped(&enc, w.view(), 8).unwrap_err();
        assert_eq!(
            err,
            Error::ValueAboveCap {
                what: "weight",
                index: 5,
                shape: vec![2, 3],
                value: -9,
                cap: 8
            }
        );
        let k = ndarray::Array4::<i64>::from_elem((1, 1, 2, 2), 9);
        assert!(matches!(
            CoeffConv2d::new_capped(&enc, k.view(), (4, 4), 0, 1, 8),
            Err(Error::ValueAboveCap { value: 9, .. })
        ));
    }
}
