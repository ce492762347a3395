//! The operations training adds to the engine: ReLU and max-pool that keep what their
//! backward pass needs (the comparison bits, the selection), the backward passes that
//! reuse them, transposes, batch sums, row gathers and concatenation (data split by rows or
//! by columns between the parties), products by public scalars at full precision, and
//! softmax. All run on shares; reshaping ops are local.

use cipherml_mpc::net::Channel;
use cipherml_mpc::protocols::{approx, boolean, compare};

use super::kernels::im2col;
use super::{PrivateTensor, Role, Session, TensorError};

/// The comparison bits of a ReLU (boolean shares of `x >= 0`), kept for its backward pass
/// ([`Session::relu_backward`]). Secret: each party holds its share of the bits.
#[derive(Debug, Clone)]
pub struct ReluMask {
    bits: Vec<u8>,
    shape: Vec<usize>,
}

impl ReluMask {
    /// The shape of the tensor the mask was taken from.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
}

/// The selection of a max-pooling (boolean shares of a one-hot vector per window), kept
/// for its backward pass ([`Session::max_pool2d_backward`]).
#[derive(Debug, Clone)]
pub struct PoolSelection {
    /// One-hot bits, window by window (`kernel^2` per output).
    bits: Vec<u8>,
    input: (usize, usize, usize),
    kernel: usize,
    stride: usize,
}

/// The parts of a 2-D tensor as a matrix, or a shape error naming `what`.
fn dims2(what: &'static str, shape: &[usize]) -> Result<(usize, usize), TensorError> {
    match shape {
        &[m, n] => Ok((m, n)),
        _ => Err(TensorError::Shape {
            what,
            left: shape.to_vec(),
            right: vec![],
        }),
    }
}

impl PrivateTensor {
    /// The party that holds the value whole (a value [`Session::input`] by one party, or
    /// [`Session::private`] to it), if any: a product by it runs with it in the clear.
    pub fn holder(&self) -> Option<Role> {
        match self {
            PrivateTensor::Shared { held_by, .. } => *held_by,
            PrivateTensor::Private { owner, .. } => Some(*owner),
            _ => None,
        }
    }
}

/// Integer bits of the declared range of activations in a ring with room to spare (see
/// [`Session::relu_masked`]): the same as the sigmoid's and tanh's comparisons there
/// ([`cipherml_mpc::protocols::approx::PWL_NARROW_INT_BITS`]).
pub const ACTIVATION_RANGE_BITS: u32 = cipherml_mpc::protocols::approx::PWL_NARROW_INT_BITS;

/// The declared range of activations in training (`2^15`): see [`Session::relu_masked`].
pub const ACTIVATION_RANGE: f64 = (1u64 << ACTIVATION_RANGE_BITS) as f64;

impl<C: Channel> Session<C> {
    /// `max(x, 0)` as [`Session::relu`], and the comparison bits for the backward pass.
    ///
    /// In a ring with room to spare (training's `Z_2^64`, `f = 16`), the pending truncation
    /// runs first (exact, and no dearer than after the ReLU) and the sign is decided on the
    /// value reduced to `Z_2^(f + 16)` (half the comparison's bytes): exact for activations
    /// below [`ACTIVATION_RANGE`] in magnitude; beyond it, the ReLU may pass a negative
    /// value or zero a positive one (never a value larger than the input: no wrap of the
    /// ring).
    pub fn relu_masked(
        &mut self,
        x: &PrivateTensor,
    ) -> Result<(PrivateTensor, ReluMask), TensorError> {
        let ring = self.fixed.ring();
        let f = self.fixed.frac_bits();
        let wide = ring.bits() >= 2 * f + 32;
        let x = if wide { self.rescaled(x)? } else { x.clone() };
        let (s, shape, frac_bits, _) = self.shares_any(&x)?;
        let bits = if wide {
            compare::drelu_within(&mut self.party, ring, f + ACTIVATION_RANGE_BITS + 1, &s)?
        } else {
            compare::drelu(&mut self.party, ring, &s)?
        };
        let share = boolean::mux(&mut self.party, ring, &bits, &s)?;
        Ok((
            PrivateTensor::Shared {
                share,
                shape: shape.clone(),
                frac_bits,
                nonneg: true,
                held_by: None,
            },
            ReluMask { bits, shape },
        ))
    }

    /// The backward pass of a ReLU: `dy` where the forward input was non-negative, 0
    /// elsewhere (one multiplexer, the comparison bits reused), at `dy`'s scale.
    pub fn relu_backward(
        &mut self,
        mask: &ReluMask,
        dy: &PrivateTensor,
    ) -> Result<PrivateTensor, TensorError> {
        if dy.shape() != mask.shape {
            return Err(TensorError::Shape {
                what: "relu_backward gradient vs forward input",
                left: dy.shape(),
                right: mask.shape.clone(),
            });
        }
        let (s, shape, frac_bits, _) = self.shares_any(dy)?;
        let share = boolean::mux(&mut self.party, self.fixed.ring(), &mask.bits, &s)?;
        Ok(PrivateTensor::Shared {
            share,
            shape,
            frac_bits,
            nonneg: false,
            held_by: None,
        })
    }

    /// Max pooling as [`Session::max_pool2d`], and the selection (which element of each
    /// window is the maximum, ties to the first) for the backward pass: a tournament of
    /// exact comparisons, the one-hot selection by ANDs along the tournament's paths.
    pub fn max_pool2d_masked(
        &mut self,
        x: &PrivateTensor,
        kernel: usize,
        stride: usize,
    ) -> Result<(PrivateTensor, PoolSelection), TensorError> {
        let shape = x.shape();
        let (c, h, w) = match shape.as_slice() {
            &[c, h, w] => (c, h, w),
            _ => {
                return Err(TensorError::Shape {
                    what: "max_pool2d input (C, H, W)",
                    left: shape,
                    right: vec![],
                })
            }
        };
        if kernel == 0 || stride == 0 || kernel > h || kernel > w {
            return Err(TensorError::Shape {
                what: "pooling window vs input",
                left: vec![h, w],
                right: vec![kernel, stride],
            });
        }
        let (ho, wo) = ((h - kernel) / stride + 1, (w - kernel) / stride + 1);
        let ring = self.fixed.ring();
        let p0 = self.party.is_p0();
        let (s, _, frac_bits, nonneg) = self.shares_any(x)?;
        let k2 = kernel * kernel;
        let windows = im2col(&s, (c, h, w), kernel, stride);
        let outs = windows.len() / k2;
        // Candidates per window and their one-hot selection bits (boolean shares, `k2`
        // per candidate): initially each element selects itself.
        let mut vals: Vec<Vec<u64>> = windows.chunks(k2).map(|c| c.to_vec()).collect();
        let mut sel: Vec<Vec<Vec<u8>>> = (0..outs)
            .map(|_| {
                (0..k2)
                    .map(|i| (0..k2).map(|j| u8::from(p0 && i == j)).collect::<Vec<u8>>())
                    .collect()
            })
            .collect();
        while vals[0].len() > 1 {
            let pairs = vals[0].len() / 2;
            // a >= b for every pair of every window, at once.
            let mut a = Vec::with_capacity(outs * pairs);
            let mut b = Vec::with_capacity(outs * pairs);
            for v in &vals {
                for p in 0..pairs {
                    a.push(v[2 * p]);
                    b.push(v[2 * p + 1]);
                }
            }
            let diff = ring.sub_vec(&a, &b);
            let ge = compare::drelu(&mut self.party, ring, &diff)?;
            // max = b + ge (a - b); selection = sel_b XOR ge (sel_a XOR sel_b).
            let picked = boolean::mux(&mut self.party, ring, &ge, &diff)?;
            let mut xa = Vec::new();
            let mut xb = Vec::new();
            for (wi, s) in sel.iter().enumerate() {
                for p in 0..pairs {
                    let g = ge[wi * pairs + p];
                    for j in 0..k2 {
                        xa.push(g);
                        xb.push(s[2 * p][j] ^ s[2 * p + 1][j]);
                    }
                }
            }
            let and = boolean::and(&mut self.party, &xa, &xb)?;
            let mut next_vals = Vec::with_capacity(outs);
            let mut next_sel = Vec::with_capacity(outs);
            for wi in 0..outs {
                let odd = vals[wi].len() % 2 == 1;
                let mut nv = Vec::with_capacity(pairs + 1);
                let mut ns = Vec::with_capacity(pairs + 1);
                for p in 0..pairs {
                    let i = wi * pairs + p;
                    nv.push(ring.add(b[i], picked[i]));
                    ns.push(
                        (0..k2)
                            .map(|j| sel[wi][2 * p + 1][j] ^ and[i * k2 + j])
                            .collect(),
                    );
                }
                if odd {
                    nv.push(*vals[wi].last().expect("odd"));
                    ns.push(sel[wi].last().expect("odd").clone());
                }
                next_vals.push(nv);
                next_sel.push(ns);
            }
            vals = next_vals;
            sel = next_sel;
        }
        let share = vals.into_iter().map(|v| v[0]).collect();
        let bits = sel.into_iter().flat_map(|mut s| s.swap_remove(0)).collect();
        Ok((
            PrivateTensor::Shared {
                share,
                shape: vec![c, ho, wo],
                frac_bits,
                nonneg,
                held_by: None,
            },
            PoolSelection {
                bits,
                input: (c, h, w),
                kernel,
                stride,
            },
        ))
    }

    /// The backward pass of a max-pooling: each output's gradient goes to the element its
    /// window selected (one multiplexer per window element; overlapping windows add up),
    /// at `dy`'s scale.
    pub fn max_pool2d_backward(
        &mut self,
        sel: &PoolSelection,
        dy: &PrivateTensor,
    ) -> Result<PrivateTensor, TensorError> {
        let (c, h, w) = sel.input;
        let k2 = sel.kernel * sel.kernel;
        let outs = sel.bits.len() / k2;
        if dy.shape().iter().product::<usize>() != outs {
            return Err(TensorError::Shape {
                what: "max_pool2d_backward gradient vs forward output",
                left: dy.shape(),
                right: vec![outs],
            });
        }
        let ring = self.fixed.ring();
        let (g, _, frac_bits, _) = self.shares_any(dy)?;
        let spread: Vec<u64> = g.iter().flat_map(|&v| std::iter::repeat_n(v, k2)).collect();
        let picked = boolean::mux(&mut self.party, ring, &sel.bits, &spread)?;
        // Scatter back to the input positions (the inverse of im2col's gather).
        let (ho, wo) = (
            (h - sel.kernel) / sel.stride + 1,
            (w - sel.kernel) / sel.stride + 1,
        );
        let mut dx = vec![0u64; c * h * w];
        let mut i = 0;
        for ch in 0..c {
            for oy in 0..ho {
                for ox in 0..wo {
                    for ky in 0..sel.kernel {
                        for kx in 0..sel.kernel {
                            let pos =
                                ch * h * w + (oy * sel.stride + ky) * w + ox * sel.stride + kx;
                            dx[pos] = ring.add(dx[pos], picked[i]);
                            i += 1;
                        }
                    }
                }
            }
        }
        Ok(PrivateTensor::Shared {
            share: dx,
            shape: vec![c, h, w],
            frac_bits,
            nonneg: false,
            held_by: None,
        })
    }

    /// The transpose of a 2-D tensor (local, any representation but HE).
    pub fn transpose(&mut self, t: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        let (m, n) = dims2("transpose (2-D)", &t.shape())?;
        Ok(match t {
            PrivateTensor::Public(a) => PrivateTensor::Public(a.t().to_owned()),
            PrivateTensor::Private {
                owner,
                value,
                shape,
            } => PrivateTensor::Private {
                owner: *owner,
                value: value.as_ref().map(|v| v.t().to_owned()),
                shape: vec![shape[1], shape[0]],
            },
            PrivateTensor::Shared {
                share,
                frac_bits,
                nonneg,
                held_by,
                ..
            } => PrivateTensor::Shared {
                share: super::grad_transpose(share, m, n),
                shape: vec![n, m],
                frac_bits: *frac_bits,
                nonneg: *nonneg,
                held_by: *held_by,
            },
            _ => {
                let (share, _, frac_bits, nonneg) = self.shares_any(t)?;
                PrivateTensor::Shared {
                    share: super::grad_transpose(&share, m, n),
                    shape: vec![n, m],
                    frac_bits,
                    nonneg,
                    held_by: None,
                }
            }
        })
    }

    /// The sum over the first axis (a batch): `(n, d..) -> (d..)`, local, at the input's
    /// scale.
    pub fn sum_rows(&mut self, t: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        let shape = t.shape();
        let Some((&n, rest)) = shape.split_first() else {
            return Err(TensorError::Shape {
                what: "sum_rows input (at least 1-D)",
                left: shape,
                right: vec![],
            });
        };
        if let PrivateTensor::Public(a) = t {
            return Ok(PrivateTensor::Public(a.sum_axis(ndarray::Axis(0))));
        }
        let ring = self.fixed.ring();
        let (s, _, frac_bits, nonneg) = self.shares_any(t)?;
        let d: usize = rest.iter().product();
        let mut out = vec![0u64; d];
        for r in 0..n {
            for (o, &v) in out.iter_mut().zip(&s[r * d..(r + 1) * d]) {
                *o = ring.add(*o, v);
            }
        }
        Ok(PrivateTensor::Shared {
            share: out,
            shape: rest.to_vec(),
            frac_bits,
            nonneg,
            held_by: t
                .holder()
                .filter(|_| matches!(t, PrivateTensor::Shared { .. })),
        })
    }

    /// The rows `index` of the first axis, in that order (a batch of samples): local; a
    /// value held whole by one party stays so.
    pub fn rows(
        &mut self,
        t: &PrivateTensor,
        index: &[usize],
    ) -> Result<PrivateTensor, TensorError> {
        let shape = t.shape();
        let Some((&n, rest)) = shape.split_first() else {
            return Err(TensorError::Shape {
                what: "rows input (at least 1-D)",
                left: shape,
                right: vec![],
            });
        };
        if let Some(&bad) = index.iter().find(|&&i| i >= n) {
            return Err(TensorError::Shape {
                what: "row index vs rows",
                left: vec![bad],
                right: vec![n],
            });
        }
        let mut out_shape = vec![index.len()];
        out_shape.extend_from_slice(rest);
        if let PrivateTensor::Public(a) = t {
            return Ok(PrivateTensor::Public(a.select(ndarray::Axis(0), index)));
        }
        let holder = t.holder();
        let (s, _, frac_bits, nonneg) = self.shares_any(t)?;
        let d: usize = rest.iter().product();
        let share = index
            .iter()
            .flat_map(|&i| s[i * d..(i + 1) * d].iter().copied())
            .collect();
        Ok(PrivateTensor::Shared {
            share,
            shape: out_shape,
            frac_bits,
            nonneg,
            held_by: holder,
        })
    }

    /// Concatenation along `axis` (local): samples contributed by both parties (axis 0,
    /// data split by rows) or features (axis 1, data split by columns). Parts at different
    /// scales are brought to `2^f` first.
    pub fn concat(
        &mut self,
        parts: &[&PrivateTensor],
        axis: usize,
    ) -> Result<PrivateTensor, TensorError> {
        let Some(first) = parts.first() else {
            return Err(TensorError::Shape {
                what: "concat of no tensors",
                left: vec![],
                right: vec![],
            });
        };
        let s0 = first.shape();
        if axis >= s0.len() {
            return Err(TensorError::Shape {
                what: "concat axis vs rank",
                left: s0,
                right: vec![axis],
            });
        }
        for p in parts {
            let s = p.shape();
            let same = s.len() == s0.len()
                && s.iter()
                    .zip(&s0)
                    .enumerate()
                    .all(|(i, (a, b))| i == axis || a == b);
            if !same {
                return Err(TensorError::Shape {
                    what: "concat parts",
                    left: s0,
                    right: s,
                });
            }
        }
        let holder = first.holder();
        let holder = parts
            .iter()
            .all(|p| p.holder() == holder)
            .then_some(holder)
            .flatten();
        let mut shared = Vec::with_capacity(parts.len());
        for p in parts {
            shared.push(self.shares_any(p)?);
        }
        let frac = shared[0].2;
        let uniform = shared.iter().all(|s| s.2 == frac);
        if !uniform {
            for (p, s) in parts.iter().zip(shared.iter_mut()) {
                let (v, _) = self.shares_of(p)?;
                s.0 = v;
                s.2 = self.fixed.frac_bits();
            }
        }
        let frac = shared[0].2;
        let outer: usize = s0[..axis].iter().product();
        let inner: usize = s0[axis + 1..].iter().product();
        let mut share = Vec::new();
        for o in 0..outer {
            for (v, shape, _, _) in &shared {
                let len = shape[axis] * inner;
                share.extend_from_slice(&v[o * len..(o + 1) * len]);
            }
        }
        let mut shape = s0.clone();
        shape[axis] = shared.iter().map(|s| s.1[axis]).sum();
        Ok(PrivateTensor::Shared {
            share,
            shape,
            frac_bits: frac,
            nonneg: shared.iter().all(|s| s.3),
            held_by: holder,
        })
    }

    /// `c t` for a public scalar `c`, at the session's scale `2^f` (faithful truncation):
    /// `c` is encoded with 20 significant bits whatever its magnitude (a learning rate over
    /// a batch size, say), so small constants keep their precision. `|t c|` and `|t| 2^20`
    /// must stay in the ring's range.
    pub fn scale(&mut self, t: &PrivateTensor, c: f64) -> Result<PrivateTensor, TensorError> {
        if let PrivateTensor::Public(a) = t {
            return Ok(PrivateTensor::Public(a * c));
        }
        if !c.is_finite() {
            return Err(TensorError::Invalid {
                what: "scale constant",
                detail: format!("{c} is not finite"),
            });
        }
        let f = self.fixed.frac_bits();
        let ring = self.fixed.ring();
        let (s, shape) = self.shares_of(t)?;
        let frac = f;
        // Shift so that |c| 2^shift is about 2^20 (at least 2^f, at most 2^40).
        let mag = if c == 0.0 {
            0
        } else {
            c.abs().log2().floor() as i32
        };
        let shift = (20 - mag).clamp(f as i32, 40) as u32;
        let cq = ring.from_signed((c * (shift as f64).exp2()).round() as i64);
        let prod: Vec<u64> = s.iter().map(|&v| ring.mul(v, cq)).collect();
        let share = self.rescale(prod, frac + shift, false)?;
        Ok(self.shared(share, shape))
    }

    /// Softmax over the last axis (rows), on shares: `e^(x - max) / sum e^(x - max)` with
    /// the exponential and reciprocal of [`approx::softmax`] (absolute error at most `2^-7`
    /// per entry, in the training ring `Z_2^64`, `f = 16`, and in the inference ring
    /// `Z_2^40`, `f = 12`, where its truncations are exact; the input at scale `2^f`).
    pub fn softmax(&mut self, t: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        let shape = t.shape();
        let cols = *shape.last().ok_or(TensorError::Shape {
            what: "softmax input (at least 1-D)",
            left: vec![],
            right: vec![],
        })?;
        let (s, _) = self.shares_of(t)?;
        let out = approx::softmax(&mut self.party, &mut self.triples, self.fixed, &s, cols)?;
        Ok(self.shared(out, shape))
    }
}

impl<C: Channel> Session<C> {
    /// The axes of `t` permuted (`perm[i]` is the input axis of output axis `i`), local.
    pub fn permute(
        &mut self,
        t: &PrivateTensor,
        perm: &[usize],
    ) -> Result<PrivateTensor, TensorError> {
        let shape = t.shape();
        let mut seen = vec![false; shape.len()];
        let valid = perm.len() == shape.len()
            && perm
                .iter()
                .all(|&a| a < shape.len() && !std::mem::replace(&mut seen[a], true));
        if !valid {
            return Err(TensorError::Shape {
                what: "permutation vs rank",
                left: shape,
                right: perm.to_vec(),
            });
        }
        if let PrivateTensor::Public(a) = t {
            return Ok(PrivateTensor::Public(
                a.clone()
                    .permuted_axes(ndarray::IxDyn(perm))
                    .as_standard_layout()
                    .to_owned(),
            ));
        }
        let holder = t.holder();
        let (s, _, frac_bits, nonneg) = self.shares_any(t)?;
        let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), s).expect("shape");
        let p = a.permuted_axes(ndarray::IxDyn(perm));
        let out_shape = p.shape().to_vec();
        Ok(PrivateTensor::Shared {
            share: p.iter().copied().collect(),
            shape: out_shape,
            frac_bits,
            nonneg,
            held_by: holder,
        })
    }

    /// The patches of a convolution of a batch `(B, C, H, W)` as a `(C kh kw, B Ho Wo)`
    /// matrix (columns sample by sample, then row-major positions; zero padding): the
    /// convolution is the weights `(O, C kh kw)` times it. Local; a value held whole by one
    /// party stays so.
    pub fn patches(
        &mut self,
        x: &PrivateTensor,
        (kh, kw): (usize, usize),
        stride: usize,
        padding: usize,
    ) -> Result<PrivateTensor, TensorError> {
        let (b, c, h, w) = batch_image("patches input (B, C, H, W)", &x.shape())?;
        let (ho, wo) = conv_out(h, w, (kh, kw), stride, padding)?;
        let holder = x.holder();
        let (s, _, frac_bits, nonneg) = self.shares_any(x)?;
        let rows = c * kh * kw;
        let cols = ho * wo;
        let mut out = vec![0u64; rows * b * cols];
        for i in 0..b {
            let p = super::kernels::conv_patches(
                &s[i * c * h * w..(i + 1) * c * h * w],
                (c, h, w),
                (kh, kw),
                stride,
                padding,
            );
            for r in 0..rows {
                out[r * b * cols + i * cols..r * b * cols + (i + 1) * cols]
                    .copy_from_slice(&p[r * cols..(r + 1) * cols]);
            }
        }
        Ok(PrivateTensor::Shared {
            share: out,
            shape: vec![rows, b * cols],
            frac_bits,
            nonneg,
            held_by: holder,
        })
    }

    /// The backward pass of [`Session::patches`]: the gradient of the patches matrix
    /// `(C kh kw, B Ho Wo)` summed back onto the input `(B, C, H, W)` of shape `input`.
    pub fn patches_backward(
        &mut self,
        dp: &PrivateTensor,
        input: &[usize],
        (kh, kw): (usize, usize),
        stride: usize,
        padding: usize,
    ) -> Result<PrivateTensor, TensorError> {
        let (b, c, h, w) = batch_image("patches_backward input (B, C, H, W)", input)?;
        let (ho, wo) = conv_out(h, w, (kh, kw), stride, padding)?;
        let cols = ho * wo;
        if dp.shape() != [c * kh * kw, b * cols] {
            return Err(TensorError::Shape {
                what: "patches_backward gradient vs patches",
                left: dp.shape(),
                right: vec![c * kh * kw, b * cols],
            });
        }
        let ring = self.fixed.ring();
        let (g, _, frac_bits, _) = self.shares_any(dp)?;
        let mut dx = vec![0u64; b * c * h * w];
        for i in 0..b {
            let img = &mut dx[i * c * h * w..(i + 1) * c * h * w];
            super::kernels::for_each_patch(
                (c, h, w),
                (kh, kw),
                stride,
                padding,
                |row, col, pos| {
                    img[pos] = ring.add(img[pos], g[row * b * cols + i * cols + col]);
                },
            );
        }
        Ok(PrivateTensor::Shared {
            share: dx,
            shape: input.to_vec(),
            frac_bits,
            nonneg: false,
            held_by: None,
        })
    }

    /// The backward pass of an average pooling of a `(C, H, W)` input of shape `input`:
    /// each output's gradient over `kernel^2`, spread over its window (local; the result at
    /// `2^2f`, its truncation pending).
    pub fn avg_pool2d_backward(
        &mut self,
        dy: &PrivateTensor,
        input: &[usize],
        kernel: usize,
        stride: usize,
    ) -> Result<PrivateTensor, TensorError> {
        let (c, h, w) = match input {
            &[c, h, w] => (c, h, w),
            _ => {
                return Err(TensorError::Shape {
                    what: "avg_pool2d_backward input (C, H, W)",
                    left: input.to_vec(),
                    right: vec![],
                })
            }
        };
        let (ho, wo) = conv_out(h, w, (kernel, kernel), stride, 0)?;
        if dy.shape().iter().product::<usize>() != c * ho * wo {
            return Err(TensorError::Shape {
                what: "avg_pool2d_backward gradient vs output",
                left: dy.shape(),
                right: vec![c, ho, wo],
            });
        }
        let ring = self.fixed.ring();
        let f = self.fixed.frac_bits();
        let (g, _) = self.shares_of(dy)?;
        let inv = ring.from_signed(cipherml_mpc::fixed::quantize(
            1.0 / (kernel * kernel) as f64,
            f,
        ));
        let mut dx = vec![0u64; c * h * w];
        for ch in 0..c {
            for y in 0..ho {
                for xx in 0..wo {
                    let v = ring.mul(g[(ch * ho + y) * wo + xx], inv);
                    for p in 0..kernel {
                        for q in 0..kernel {
                            let pos = (ch * h + y * stride + p) * w + xx * stride + q;
                            dx[pos] = ring.add(dx[pos], v);
                        }
                    }
                }
            }
        }
        Ok(PrivateTensor::Shared {
            share: dx,
            shape: input.to_vec(),
            frac_bits: 2 * f,
            nonneg: false,
            held_by: None,
        })
    }
}

impl<C: Channel> Session<C> {
    /// `1 / sqrt(x)` elementwise for `x` in `[2^lo, 2^hi]` (the caller's public range: a
    /// value below it is treated as `2^lo`), at the session's scale: the exponent of `x`
    /// from one exact comparison per power of two in the range (a first guess within a
    /// factor `sqrt 2`), then four Newton steps `y <- y (3 - x y^2) / 2`; error below
    /// `2^-10` relative or `2^-13` absolute (tested; the result has `f` fractional bits).
    pub fn inv_sqrt(
        &mut self,
        x: &PrivateTensor,
        lo: i32,
        hi: i32,
    ) -> Result<PrivateTensor, TensorError> {
        let f = self.fixed.frac_bits() as i32;
        if lo >= hi || lo < -f || hi > 62 - 3 * f {
            return Err(TensorError::Config {
                what: "inv_sqrt range",
                detail: format!("[2^{lo}, 2^{hi}] at {f} fractional bits"),
            });
        }
        let ring = self.fixed.ring();
        let shape = x.shape();
        let (s, _) = self.shares_of(x)?;
        let n = s.len();
        // c_j = [x >= 2^j] for j in (lo, hi]: y0 = 2^(-lo/2) + sum_j c_j (2^(-j/2) - 2^(-(j-1)/2)).
        let js: Vec<i32> = (lo + 1..=hi).collect();
        let p0 = self.party.is_p0();
        let mut diffs = Vec::with_capacity(n * js.len());
        for &j in &js {
            let t = ring.from_signed(1i64 << (j + f));
            diffs.extend(s.iter().map(|&v| if p0 { ring.sub(v, t) } else { v }));
        }
        let bits = compare::drelu(&mut self.party, ring, &diffs)?;
        let arith = boolean::b2a(&mut self.party, ring, &bits)?;
        let base = ring.from_signed(cipherml_mpc::fixed::quantize(
            (-(lo as f64) / 2.0).exp2(),
            f as u32,
        ));
        let mut y0 = vec![if p0 { base } else { 0 }; n];
        for (ji, &j) in js.iter().enumerate() {
            let step = ring.from_signed(cipherml_mpc::fixed::quantize(
                (-(j as f64) / 2.0).exp2() - (-((j - 1) as f64) / 2.0).exp2(),
                f as u32,
            ));
            for i in 0..n {
                y0[i] = ring.add(y0[i], ring.mul(arith[ji * n + i], step));
            }
        }
        // y0 is at 2^f already (bits times constants at 2^f).
        let xt = self.shared(s, shape.clone());
        let mut y = self.shared(y0, shape.clone());
        let three = PrivateTensor::Public(ndarray::ArrayD::from_elem(shape.clone(), 3.0));
        for _ in 0..4 {
            // x y first: about sqrt(x), exact to 2^-f, where y^2 alone would lose bits.
            let xy = self.mul(&xt, &y)?;
            let xy2 = self.mul(&xy, &y)?;
            let d = self.sub(&three, &xy2)?;
            let yd = self.mul(&y, &d)?;
            y = self.scale(&yd, 0.5)?;
        }
        Ok(y)
    }
}

fn batch_image(
    what: &'static str,
    shape: &[usize],
) -> Result<(usize, usize, usize, usize), TensorError> {
    match shape {
        &[b, c, h, w] => Ok((b, c, h, w)),
        _ => Err(TensorError::Shape {
            what,
            left: shape.to_vec(),
            right: vec![],
        }),
    }
}

fn conv_out(
    h: usize,
    w: usize,
    (kh, kw): (usize, usize),
    stride: usize,
    padding: usize,
) -> Result<(usize, usize), TensorError> {
    if stride == 0 || kh == 0 || kw == 0 || kh > h + 2 * padding || kw > w + 2 * padding {
        return Err(TensorError::Shape {
            what: "window vs input (padded)",
            left: vec![h, w, padding],
            right: vec![kh, kw, stride],
        });
    }
    Ok((
        (h + 2 * padding - kh) / stride + 1,
        (w + 2 * padding - kw) / stride + 1,
    ))
}
