//! Layers and their plaintext semantics (the reference every private execution is checked
//! against). Tensors are single samples without a batch axis: `(C, H, W)` for images, `(n,)`
//! for vectors.

use ndarray::{Array1, Array2, Array3, Array4, ArrayD, Axis, Ix1, Ix3, IxDyn};

use super::NnError;

/// One layer of a [`super::Sequential`] model.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Layer {
    /// `y = W x + b` with `W` of shape `(out, in)`.
    Dense {
        /// Weights `(out, in)`.
        weight: Array2<f64>,
        /// Bias `(out,)`.
        bias: Array1<f64>,
    },
    /// 2-D convolution of `(C, H, W)` with weights `(O, C, kh, kw)`, symmetric zero padding.
    Conv2d {
        /// Weights `(O, C, kh, kw)`.
        weight: Array4<f64>,
        /// Bias `(O,)`.
        bias: Array1<f64>,
        /// Stride (both axes).
        stride: usize,
        /// Padding (all sides).
        padding: usize,
    },
    /// `max(x, 0)`.
    Relu,
    /// `x * x`.
    Square,
    /// A polynomial activation `sum c_i x^i`.
    Poly {
        /// Coefficients, lowest degree first.
        coeffs: Vec<f64>,
    },
    /// The logistic sigmoid.
    Sigmoid,
    /// Softmax over the vector (applied by the client to revealed logits).
    Softmax,
    /// Average pooling with a square window on a `(C, H, W)` sample, a window of `kernel`
    /// on a `(C, L)` sample (1-D).
    AvgPool {
        /// Window size.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// Max pooling with a square window on a `(C, H, W)` sample, a window of `kernel` on a
    /// `(C, L)` sample (1-D).
    MaxPool {
        /// Window size.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// Mean over the spatial axes: `(C, H, W) -> (C,)`.
    GlobalAvgPool,
    /// Flattens to a vector.
    Flatten,
    /// A residual block with an identity shortcut: `y = x + body(x)`. The body's output
    /// shape must equal its input shape (ONNX: an `Add` of an activation and the end of the
    /// chain of nodes that started from it).
    Residual {
        /// The layers of the residual branch, applied in order.
        body: Vec<Layer>,
    },
    /// Branches from one input, joined: `join(b_1(x), .., b_k(x))`, each branch a chain of
    /// layers (an empty branch is the identity). A projection shortcut is an `Add` of the
    /// block's body and a strided 1x1 convolution; an Inception-style block a `Concat`.
    Branches {
        /// The branches, in the order of the join's inputs.
        branches: Vec<Vec<Layer>>,
        /// How their outputs are joined.
        join: Join,
    },
    /// A per-channel affine map `y[c, ..] = scale[c] x[c, ..] + shift[c]` (channels on the
    /// first axis of a sample; each element of a vector is a channel): a batch
    /// normalization, or constants multiplied and added, that could not be folded into a
    /// neighbouring linear layer. Its parameters are weights (the server's secret).
    Affine {
        /// Per-channel factors.
        scale: Array1<f64>,
        /// Per-channel offsets.
        shift: Array1<f64>,
    },
    /// `max(x, 0) + slope[c] min(x, 0)` per channel (first axis): the slopes are weights.
    PRelu {
        /// Per-channel negative slopes.
        slope: Array1<f64>,
    },
    /// An elementwise activation whose parameters are part of the architecture (public).
    Activation(Activation),
    /// The axes of a sample permuted: output axis `i` is input axis `perm[i]`.
    Transpose {
        /// The permutation.
        perm: Vec<usize>,
    },
    /// The same values in another shape (row-major).
    Reshape {
        /// The output shape (no batch axis).
        shape: Vec<usize>,
    },
    /// Zero padding: `pads[i] = (before, after)` elements on axis `i` of a sample.
    Pad {
        /// Per axis, the elements added before and after.
        pads: Vec<(usize, usize)>,
    },
    /// The mean over some axes of a sample (ONNX `ReduceMean`), which are kept with length
    /// one if `keepdims`.
    Mean {
        /// The axes averaged, increasing.
        axes: Vec<usize>,
        /// Whether the averaged axes stay (with length 1).
        keepdims: bool,
    },
}

/// How a [`Layer::Branches`] block joins the outputs of its branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Join {
    /// Their sum (all of one shape).
    Add,
    /// Their concatenation on the first axis of a sample (channels).
    Concat,
}

/// An elementwise activation whose parameters are public (part of the architecture, as the
/// layer types are). Each runs on shares from exact comparisons; `Tanh` is piecewise
/// linear (error at most [`Activation::TANH_ERROR`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Activation {
    /// `min(max(x, min), max)`; an infinite bound is no bound (ReLU6 is `0..6`).
    Clip {
        /// Lower bound (`-inf` for none).
        min: f64,
        /// Upper bound (`+inf` for none).
        max: f64,
    },
    /// `x` if `x >= 0`, else `alpha x`.
    LeakyRelu {
        /// Slope for negative inputs.
        alpha: f64,
    },
    /// `clip(alpha x + beta, 0, 1)`.
    HardSigmoid {
        /// Factor.
        alpha: f64,
        /// Offset.
        beta: f64,
    },
    /// `x clip(x / 6 + 1/2, 0, 1)`.
    HardSwish,
    /// The hyperbolic tangent.
    Tanh,
}

// The parameters are never NaN (the importer and the architecture decoder refuse it).
impl Eq for Activation {}

impl Activation {
    /// The largest absolute error of the private `Tanh` (piecewise linear on shares, 13
    /// exact comparisons).
    pub const TANH_ERROR: f64 = cipherml_mpc::protocols::approx::TANH_PWL_ERROR;

    /// Whether every parameter is a number (infinite clip bounds allowed), and a clip's
    /// bounds are ordered.
    pub fn is_valid(&self) -> bool {
        match *self {
            Activation::Clip { min, max } => !min.is_nan() && !max.is_nan() && min <= max,
            Activation::LeakyRelu { alpha } => alpha.is_finite(),
            Activation::HardSigmoid { alpha, beta } => alpha.is_finite() && beta.is_finite(),
            Activation::HardSwish | Activation::Tanh => true,
        }
    }

    /// The activation of one value.
    pub fn apply(&self, v: f64) -> f64 {
        match *self {
            Activation::Clip { min, max } => v.max(min).min(max),
            Activation::LeakyRelu { alpha } => {
                if v >= 0.0 {
                    v
                } else {
                    alpha * v
                }
            }
            Activation::HardSigmoid { alpha, beta } => (alpha * v + beta).clamp(0.0, 1.0),
            Activation::HardSwish => v * (v / 6.0 + 0.5).clamp(0.0, 1.0),
            Activation::Tanh => v.tanh(),
        }
    }

    /// A short name, e.g. `Clip(0..6)`.
    pub fn describe(&self) -> String {
        match *self {
            Activation::Clip { min, max } => format!("Clip({min}..{max})"),
            Activation::LeakyRelu { alpha } => format!("LeakyReLU({alpha})"),
            Activation::HardSigmoid { alpha, beta } => format!("HardSigmoid({alpha}x+{beta})"),
            Activation::HardSwish => "HardSwish".into(),
            Activation::Tanh => "Tanh".into(),
        }
    }
}

impl Layer {
    /// A short name, e.g. `Dense(64->32)`.
    pub fn describe(&self) -> String {
        match self {
            Layer::Dense { weight, .. } => format!("Dense({}->{})", weight.ncols(), weight.nrows()),
            Layer::Conv2d {
                weight,
                stride,
                padding,
                ..
            } => {
                let (o, c, kh, kw) = weight.dim();
                format!("Conv2d({c}->{o}, {kh}x{kw}, stride {stride}, pad {padding})")
            }
            Layer::Relu => "ReLU".into(),
            Layer::Square => "Square".into(),
            Layer::Poly { coeffs } => format!("Poly(degree {})", coeffs.len().saturating_sub(1)),
            Layer::Sigmoid => "Sigmoid".into(),
            Layer::Softmax => "Softmax".into(),
            Layer::AvgPool { kernel, stride } => {
                format!("AvgPool({kernel}x{kernel}, stride {stride})")
            }
            Layer::MaxPool { kernel, stride } => {
                format!("MaxPool({kernel}x{kernel}, stride {stride})")
            }
            Layer::GlobalAvgPool => "GlobalAvgPool".into(),
            Layer::Flatten => "Flatten".into(),
            Layer::Residual { body } => format!("Residual(x + {} layers)", body.len()),
            Layer::Branches { branches, join } => {
                let lens: Vec<String> = branches.iter().map(|b| b.len().to_string()).collect();
                format!(
                    "{join:?}({} branches of {} layers)",
                    branches.len(),
                    lens.join("/")
                )
            }
            Layer::Affine { scale, .. } => format!("Affine({} channels)", scale.len()),
            Layer::PRelu { slope } => format!("PReLU({} channels)", slope.len()),
            Layer::Activation(a) => a.describe(),
            Layer::Transpose { perm } => format!("Transpose({perm:?})"),
            Layer::Reshape { shape } => format!("Reshape({shape:?})"),
            Layer::Pad { pads } => format!("Pad({pads:?})"),
            Layer::Mean { axes, keepdims } => format!("Mean(axes {axes:?}, keepdims {keepdims})"),
        }
    }

    /// Whether the layer is linear (an affine map of its input); a residual block is linear
    /// when its whole body is.
    pub fn is_linear(&self) -> bool {
        match self {
            Layer::Residual { body } => body.iter().all(Layer::is_linear),
            Layer::Branches { branches, .. } => branches.iter().flatten().all(Layer::is_linear),
            _ => matches!(
                self,
                Layer::Dense { .. }
                    | Layer::Conv2d { .. }
                    | Layer::AvgPool { .. }
                    | Layer::GlobalAvgPool
                    | Layer::Flatten
                    | Layer::Affine { .. }
                    | Layer::Transpose { .. }
                    | Layer::Reshape { .. }
                    | Layer::Pad { .. }
                    | Layer::Mean { .. }
            ),
        }
    }

    /// Whether the layer is a polynomial of its input (linear, `x * x`, a polynomial, or the
    /// sigmoid, which the CKKS mode approximates); a residual block is when its body is.
    pub fn is_polynomial(&self) -> bool {
        match self {
            Layer::Residual { body } => body.iter().all(Layer::is_polynomial),
            // The CKKS mode sums branches (as residual blocks); it does not concatenate.
            Layer::Branches { branches, join } => {
                *join == Join::Add && branches.iter().flatten().all(Layer::is_polynomial)
            }
            Layer::Square | Layer::Poly { .. } | Layer::Sigmoid => true,
            l => l.is_linear(),
        }
    }

    /// The output shape for an input shape, or an error naming both.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, NnError> {
        let bad = || NnError::LayerShape {
            layer: self.describe(),
            input: input.to_vec(),
        };
        Ok(match self {
            Layer::Dense { weight, .. } => {
                if input.iter().product::<usize>() != weight.ncols() || input.len() != 1 {
                    return Err(bad());
                }
                vec![weight.nrows()]
            }
            Layer::Conv2d {
                weight,
                stride,
                padding,
                ..
            } => {
                let (o, c, kh, kw) = weight.dim();
                if input.len() != 3
                    || input[0] != c
                    || input[1] + 2 * padding < kh
                    || input[2] + 2 * padding < kw
                    || *stride == 0
                {
                    return Err(bad());
                }
                vec![
                    o,
                    (input[1] + 2 * padding - kh) / stride + 1,
                    (input[2] + 2 * padding - kw) / stride + 1,
                ]
            }
            Layer::AvgPool { kernel, stride } | Layer::MaxPool { kernel, stride }
                if input.len() == 2 =>
            {
                // 1-D pooling of a (C, L) sample.
                if input[1] < *kernel || *stride == 0 || *kernel == 0 {
                    return Err(bad());
                }
                vec![input[0], (input[1] - kernel) / stride + 1]
            }
            Layer::AvgPool { kernel, stride } | Layer::MaxPool { kernel, stride } => {
                if input.len() != 3 || input[1] < *kernel || input[2] < *kernel || *stride == 0 {
                    return Err(bad());
                }
                vec![
                    input[0],
                    (input[1] - kernel) / stride + 1,
                    (input[2] - kernel) / stride + 1,
                ]
            }
            Layer::GlobalAvgPool => {
                if input.len() != 3 {
                    return Err(bad());
                }
                vec![input[0]]
            }
            Layer::Flatten => vec![input.iter().product()],
            Layer::Softmax => {
                if input.len() != 1 {
                    return Err(bad());
                }
                input.to_vec()
            }
            Layer::Residual { body } => {
                let shapes = super::chain_shapes(body, input)?;
                let out = shapes.last().expect("non-empty");
                if out.as_slice() != input {
                    return Err(NnError::ResidualShape {
                        input: input.to_vec(),
                        body_output: out.clone(),
                    });
                }
                input.to_vec()
            }
            Layer::Branches { branches, join } => {
                if branches.is_empty() {
                    return Err(bad());
                }
                let mut outs = Vec::with_capacity(branches.len());
                for b in branches {
                    let shapes = super::chain_shapes(b, input)?;
                    outs.push(shapes.last().expect("non-empty").clone());
                }
                let first = &outs[0];
                let fits = |o: &Vec<usize>| match join {
                    Join::Add => o == first,
                    Join::Concat => !o.is_empty() && o.len() == first.len() && o[1..] == first[1..],
                };
                if first.is_empty() || !outs.iter().all(fits) {
                    return Err(NnError::LayerShape {
                        layer: format!("{} (branch outputs {outs:?})", self.describe()),
                        input: input.to_vec(),
                    });
                }
                let mut out = first.clone();
                if *join == Join::Concat {
                    out[0] = outs.iter().map(|o| o[0]).sum();
                }
                out
            }
            Layer::Affine { scale, shift } => {
                if input.is_empty() || scale.len() != input[0] || shift.len() != input[0] {
                    return Err(bad());
                }
                input.to_vec()
            }
            Layer::PRelu { slope } => {
                if input.is_empty() || slope.len() != input[0] {
                    return Err(bad());
                }
                input.to_vec()
            }
            Layer::Transpose { perm } => {
                let mut seen = vec![false; input.len()];
                let valid = perm.len() == input.len()
                    && perm
                        .iter()
                        .all(|&a| a < input.len() && !std::mem::replace(&mut seen[a], true));
                if !valid {
                    return Err(bad());
                }
                perm.iter().map(|&a| input[a]).collect()
            }
            Layer::Reshape { shape } => {
                if shape.iter().product::<usize>() != input.iter().product::<usize>() {
                    return Err(bad());
                }
                shape.clone()
            }
            Layer::Pad { pads } => {
                if pads.len() != input.len() {
                    return Err(bad());
                }
                let mut out = Vec::with_capacity(input.len());
                for (&d, &(a, b)) in input.iter().zip(pads) {
                    out.push(
                        d.checked_add(a)
                            .and_then(|v| v.checked_add(b))
                            .ok_or_else(bad)?,
                    );
                }
                out
            }
            Layer::Mean { axes, keepdims } => {
                if axes.is_empty()
                    || axes.windows(2).any(|w| w[0] >= w[1])
                    || axes.iter().any(|&a| a >= input.len() || input[a] == 0)
                {
                    return Err(bad());
                }
                let mut out = Vec::with_capacity(input.len());
                for (i, &d) in input.iter().enumerate() {
                    if !axes.contains(&i) {
                        out.push(d);
                    } else if *keepdims {
                        out.push(1);
                    }
                }
                out
            }
            _ => input.to_vec(),
        })
    }

    /// Plaintext forward pass of one sample.
    pub fn forward(&self, x: &ArrayD<f64>) -> Result<ArrayD<f64>, NnError> {
        let out_shape = self.output_shape(x.shape())?;
        Ok(match self {
            Layer::Dense { weight, bias } => {
                let v = x.view().into_dimensionality::<Ix1>().expect("checked");
                (weight.dot(&v) + bias).into_dyn()
            }
            Layer::Conv2d {
                weight,
                bias,
                stride,
                padding,
            } => conv2d(
                &x.view()
                    .into_dimensionality::<Ix3>()
                    .expect("checked")
                    .to_owned(),
                weight,
                bias,
                *stride,
                *padding,
            )
            .into_dyn(),
            Layer::Relu => x.mapv(|v| v.max(0.0)),
            Layer::Square => x.mapv(|v| v * v),
            Layer::Poly { coeffs } => x.mapv(|v| coeffs.iter().rev().fold(0.0, |a, &c| a * v + c)),
            Layer::Sigmoid => x.mapv(|v| 1.0 / (1.0 + (-v).exp())),
            Layer::Softmax => {
                let m = x.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                let e = x.mapv(|v| (v - m).exp());
                let s = e.sum();
                e / s
            }
            Layer::AvgPool { kernel, stride } | Layer::MaxPool { kernel, stride }
                if x.ndim() == 2 =>
            {
                let max = matches!(self, Layer::MaxPool { .. });
                let x2 = x
                    .view()
                    .into_dimensionality::<ndarray::Ix2>()
                    .expect("checked");
                let mut out = Array2::zeros((out_shape[0], out_shape[1]));
                for ((c, i), o) in out.indexed_iter_mut() {
                    let win = x2.slice(ndarray::s![c, i * stride..i * stride + kernel]);
                    *o = if max {
                        win.fold(f64::NEG_INFINITY, |a, &b| a.max(b))
                    } else {
                        win.sum() / *kernel as f64
                    };
                }
                out.into_dyn()
            }
            Layer::AvgPool { kernel, stride } | Layer::MaxPool { kernel, stride } => {
                let max = matches!(self, Layer::MaxPool { .. });
                let x3 = x.view().into_dimensionality::<Ix3>().expect("checked");
                let mut out = Array3::zeros((out_shape[0], out_shape[1], out_shape[2]));
                for ((c, i, j), o) in out.indexed_iter_mut() {
                    let win = x3.slice(ndarray::s![
                        c,
                        i * stride..i * stride + kernel,
                        j * stride..j * stride + kernel
                    ]);
                    *o = if max {
                        win.fold(f64::NEG_INFINITY, |a, &b| a.max(b))
                    } else {
                        win.sum() / (kernel * kernel) as f64
                    };
                }
                out.into_dyn()
            }
            Layer::GlobalAvgPool => {
                let x3 = x.view().into_dimensionality::<Ix3>().expect("checked");
                x3.mean_axis(Axis(2))
                    .and_then(|m| m.mean_axis(Axis(1)))
                    .expect("non-empty")
                    .into_dyn()
            }
            Layer::Flatten => x
                .to_shape(IxDyn(&out_shape))
                .expect("same length")
                .to_owned(),
            Layer::Residual { body } => {
                let mut h = x.clone();
                for l in body {
                    h = l.forward(&h)?;
                }
                h + x
            }
            Layer::Branches { branches, join } => {
                let mut outs = Vec::with_capacity(branches.len());
                for b in branches {
                    let mut h = x.clone();
                    for l in b {
                        h = l.forward(&h)?;
                    }
                    outs.push(h);
                }
                match join {
                    Join::Add => outs
                        .into_iter()
                        .reduce(|a, b| a + b)
                        .expect("checked non-empty"),
                    Join::Concat => {
                        let views: Vec<_> = outs.iter().map(|o| o.view()).collect();
                        ndarray::concatenate(Axis(0), &views).expect("checked shapes")
                    }
                }
            }
            Layer::Affine { scale, shift } => {
                let mut y = x.clone();
                for ((mut c, &a), &b) in y.outer_iter_mut().zip(scale).zip(shift) {
                    c.mapv_inplace(|v| a * v + b);
                }
                y
            }
            Layer::PRelu { slope } => {
                let mut y = x.clone();
                for (mut c, &a) in y.outer_iter_mut().zip(slope) {
                    c.mapv_inplace(|v| if v >= 0.0 { v } else { a * v });
                }
                y
            }
            Layer::Activation(a) => x.mapv(|v| a.apply(v)),
            Layer::Transpose { perm } => x
                .clone()
                .permuted_axes(IxDyn(perm))
                .as_standard_layout()
                .to_owned(),
            Layer::Reshape { .. } => x
                .as_standard_layout()
                .to_shape(IxDyn(&out_shape))
                .expect("same length")
                .to_owned(),
            Layer::Pad { pads } => {
                let mut y = ArrayD::zeros(IxDyn(&out_shape));
                let region: Vec<ndarray::SliceInfoElem> = pads
                    .iter()
                    .zip(x.shape())
                    .map(|(&(a, _), &d)| ndarray::Slice::from(a..a + d).into())
                    .collect();
                y.slice_mut(region.as_slice()).assign(x);
                y
            }
            Layer::Mean { axes, .. } => {
                let mut y = x.clone();
                for &a in axes.iter().rev() {
                    y = y.mean_axis(Axis(a)).expect("non-empty axis");
                }
                y.into_shape_with_order(IxDyn(&out_shape))
                    .expect("same length")
            }
        })
    }
}

fn conv2d(
    x: &Array3<f64>,
    w: &Array4<f64>,
    b: &Array1<f64>,
    stride: usize,
    pad: usize,
) -> Array3<f64> {
    let (c, h, wd) = x.dim();
    let (o, _, kh, kw) = w.dim();
    let ho = (h + 2 * pad - kh) / stride + 1;
    let wo = (wd + 2 * pad - kw) / stride + 1;
    let mut out = Array3::zeros((o, ho, wo));
    for oc in 0..o {
        for y in 0..ho {
            for xx in 0..wo {
                let mut acc = b[oc];
                for ic in 0..c {
                    for p in 0..kh {
                        for q in 0..kw {
                            let iy = (y * stride + p) as isize - pad as isize;
                            let ix = (xx * stride + q) as isize - pad as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                acc += w[[oc, ic, p, q]] * x[[ic, iy as usize, ix as usize]];
                            }
                        }
                    }
                }
                out[[oc, y, xx]] = acc;
            }
        }
    }
    out
}
