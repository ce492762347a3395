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
    /// Average pooling with a square window.
    AvgPool {
        /// Window size.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// Max pooling with a square window.
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
        }
    }

    /// Whether the layer is linear (an affine map of its input); a residual block is linear
    /// when its whole body is.
    pub fn is_linear(&self) -> bool {
        match self {
            Layer::Residual { body } => body.iter().all(Layer::is_linear),
            _ => matches!(
                self,
                Layer::Dense { .. }
                    | Layer::Conv2d { .. }
                    | Layer::AvgPool { .. }
                    | Layer::GlobalAvgPool
                    | Layer::Flatten
            ),
        }
    }

    /// Whether the layer is a polynomial of its input (linear, `x * x`, a polynomial, or the
    /// sigmoid, which the CKKS mode approximates); a residual block is when its body is.
    pub fn is_polynomial(&self) -> bool {
        match self {
            Layer::Residual { body } => body.iter().all(Layer::is_polynomial),
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
