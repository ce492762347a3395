//! Models: layers, a Keras-like [`Sequential`] with a plaintext reference `predict`, ONNX
//! import, and private execution modes (non-interactive CKKS for polynomial networks).

mod ckks_mode;
mod layers;
mod onnx;
mod onnx_export;
pub(crate) mod plan;
mod private;
mod spec;
mod train;
pub mod zoo;

pub use cipherml_mpc::protocols::approx::{SIGMOID_PRECISE_ERROR, SIGMOID_PWL_ERROR};
pub use ckks_mode::{CkksFloodConfig, CkksFloodPlan, CkksModel, SIGMOID_BOUND};
pub use layers::{Activation, Join, Layer};
pub use onnx::{load_onnx, load_onnx_bytes, tract_reference};
pub use plan::{Backend, Cost, LayerPlan, Mode, NetworkModel, Plan, PrivateRun};
pub use private::PreparedModel;
pub use spec::model_from_json;
pub use train::{
    one_hot, EpochReport, FitOptions, History, Loss, Optimizer, Progress, Trainer,
    ADAM_GRADIENT_CLIP, ADAM_GRADIENT_SCALE,
};

use ndarray::ArrayD;

/// Errors of models and ONNX import: the crate's one error type, [`crate::Error`].
pub type NnError = crate::Error;

/// A Keras-like sequential model: layers applied in order to one sample.
///
/// ```
/// use cipherml::nn::{Layer, Sequential};
/// use ndarray::{arr1, arr2};
/// let model = Sequential::new(vec![2])
///     .add(Layer::Dense { weight: arr2(&[[1.0, -1.0], [0.5, 0.5]]), bias: arr1(&[0.0, 1.0]) })
///     .add(Layer::Relu);
/// let y = model.predict(&arr1(&[3.0, 5.0]).into_dyn()).unwrap();
/// assert_eq!(y.as_slice().unwrap(), &[0.0, 5.0]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Sequential {
    input_shape: Vec<usize>,
    layers: Vec<Layer>,
}

impl Sequential {
    /// An empty model for inputs of `input_shape` (no batch axis).
    pub fn new(input_shape: Vec<usize>) -> Self {
        Self {
            input_shape,
            layers: Vec::new(),
        }
    }

    /// Appends a layer (named as in Keras).
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// The layers.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// The shape after each layer; an error names the first layer that does not fit.
    pub fn shapes(&self) -> Result<Vec<Vec<usize>>, NnError> {
        chain_shapes(&self.layers, &self.input_shape)
    }

    /// One line per layer with its output shape; the body of a residual block follows it,
    /// indented, as do the branches of a block, each under its number.
    pub fn summary(&self) -> Result<String, NnError> {
        fn lines(
            s: &mut String,
            layers: &[Layer],
            input: &[usize],
            depth: usize,
        ) -> Result<(), NnError> {
            let shapes = chain_shapes(layers, input)?;
            for (l, (inp, sh)) in layers.iter().zip(shapes.iter().zip(&shapes[1..])) {
                let name = format!("{}{}", "  ".repeat(depth), l.describe());
                s.push_str(&format!("  {name:<40} -> {sh:?}\n"));
                match l {
                    Layer::Residual { body } => lines(s, body, inp, depth + 1)?,
                    Layer::Branches { branches, .. } => {
                        for (k, b) in branches.iter().enumerate() {
                            let pad = "  ".repeat(depth + 1);
                            let what = if b.is_empty() { " (identity)" } else { "" };
                            s.push_str(&format!("  {pad}branch {}{what}\n", k + 1));
                            lines(s, b, inp, depth + 2)?;
                        }
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        let mut s = format!("input {:?}\n", self.input_shape);
        lines(&mut s, &self.layers, &self.input_shape, 0)?;
        Ok(s)
    }

    /// Plaintext prediction of one sample: the reference for private execution.
    pub fn predict(&self, x: &ArrayD<f64>) -> Result<ArrayD<f64>, NnError> {
        if let Some((index, &value)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(NnError::NonFinite { index, value });
        }
        if x.shape() != self.input_shape.as_slice() {
            return Err(NnError::LayerShape {
                layer: "input".into(),
                input: x.shape().to_vec(),
            });
        }
        let mut h = x.clone();
        for l in &self.layers {
            h = l.forward(&h)?;
        }
        Ok(h)
    }
}

/// The shapes of `input` after each of `layers` in turn (`input` first); an error names the
/// first layer that does not fit.
pub(crate) fn chain_shapes(layers: &[Layer], input: &[usize]) -> Result<Vec<Vec<usize>>, NnError> {
    let mut shapes = vec![input.to_vec()];
    for l in layers {
        let s = l.output_shape(shapes.last().expect("non-empty"))?;
        shapes.push(s);
    }
    Ok(shapes)
}

/// A layer of an [`Architecture`]: kinds and shapes, no weights.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ArchLayer {
    /// Dense `inputs -> outputs`.
    Dense {
        /// Inputs.
        inputs: usize,
        /// Outputs.
        outputs: usize,
    },
    /// Convolution `(O, C, kh, kw)`.
    Conv2d {
        /// Output channels.
        out_channels: usize,
        /// Input channels.
        in_channels: usize,
        /// Kernel height.
        kh: usize,
        /// Kernel width.
        kw: usize,
        /// Stride.
        stride: usize,
        /// Padding.
        padding: usize,
    },
    /// ReLU.
    Relu,
    /// `x * x`.
    Square,
    /// Polynomial of this degree.
    Poly {
        /// Degree.
        degree: usize,
    },
    /// Sigmoid.
    Sigmoid,
    /// Softmax.
    Softmax,
    /// Average pooling.
    AvgPool {
        /// Window.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// Max pooling.
    MaxPool {
        /// Window.
        kernel: usize,
        /// Stride.
        stride: usize,
    },
    /// Global average pooling.
    GlobalAvgPool,
    /// Flatten.
    Flatten,
    /// A residual block `x + body(x)`. Decoding refuses bodies nested deeper than
    /// [`MAX_ARCH_DEPTH`] (before recursing further), so a hostile peer cannot exhaust the
    /// stack.
    Residual {
        /// The body's layers.
        #[serde(deserialize_with = "deserialize_body")]
        body: Vec<ArchLayer>,
    },
    /// Branches joined (see [`Layer::Branches`]); nesting is bounded as for residual blocks.
    Branches {
        /// The branches' layers.
        #[serde(deserialize_with = "deserialize_branches")]
        branches: Vec<Vec<ArchLayer>>,
        /// The join.
        join: Join,
    },
    /// A per-channel affine map over this many channels.
    Affine {
        /// Channels.
        channels: usize,
    },
    /// A PReLU over this many channels.
    PRelu {
        /// Channels.
        channels: usize,
    },
    /// An activation with public parameters.
    Activation(Activation),
    /// A permutation of the axes.
    Transpose {
        /// The permutation.
        perm: Vec<usize>,
    },
    /// A reshape.
    Reshape {
        /// The output shape.
        shape: Vec<usize>,
    },
    /// Zero padding.
    Pad {
        /// Per axis, before and after.
        pads: Vec<(usize, usize)>,
    },
    /// A mean over axes.
    Mean {
        /// The axes.
        axes: Vec<usize>,
        /// Whether they are kept.
        keepdims: bool,
    },
}

thread_local! {
    /// Residual bodies being decoded on this thread (see [`deserialize_body`]).
    static DECODE_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Decodes the branches of a block, with the depth bound of [`deserialize_body`].
fn deserialize_branches<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<Vec<ArchLayer>>, D::Error> {
    nested(d)
}

/// Decodes a residual body, refusing nesting deeper than [`MAX_ARCH_DEPTH`]: serde decodes
/// recursively, so the bound must hold while decoding, not only afterwards.
fn deserialize_body<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ArchLayer>, D::Error> {
    nested(d)
}

/// Decodes a `T` one level of nesting deeper, refusing more than [`MAX_ARCH_DEPTH`] levels.
fn nested<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    struct Exit;
    impl Drop for Exit {
        fn drop(&mut self) {
            DECODE_DEPTH.with(|c| c.set(c.get() - 1));
        }
    }
    let depth = DECODE_DEPTH.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    let _exit = Exit;
    if depth > MAX_ARCH_DEPTH {
        return Err(serde::de::Error::custom(format!(
            "residual blocks nested deeper than {MAX_ARCH_DEPTH}"
        )));
    }
    T::deserialize(d)
}

/// What a client learns of a model: the input shape and the layers' kinds and shapes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Architecture {
    /// Input shape (no batch axis).
    pub input_shape: Vec<usize>,
    /// The layers.
    pub layers: Vec<ArchLayer>,
}

/// Bounds on an architecture received from a peer (checked before anything is allocated):
/// layers in all (residual bodies included) and elements of any tensor.
const MAX_ARCH_LAYERS: usize = 256;
const MAX_ARCH_ELEMENTS: usize = 1 << 24;
/// The deepest nesting of residual blocks an architecture from a peer may have.
pub const MAX_ARCH_DEPTH: usize = 8;

/// The number of layers of `layers`, residual bodies included, or `None` if they are nested
/// deeper than [`MAX_ARCH_DEPTH`] (checked before recursing) or exceed [`MAX_ARCH_LAYERS`].
fn arch_layer_count(layers: &[ArchLayer], depth: usize) -> Option<usize> {
    let mut n = layers.len();
    for l in layers {
        let inner: &[Vec<ArchLayer>] = match l {
            ArchLayer::Residual { body } => std::slice::from_ref(body),
            ArchLayer::Branches { branches, .. } => branches,
            _ => &[],
        };
        if !inner.is_empty() && depth >= MAX_ARCH_DEPTH {
            return None;
        }
        for body in inner {
            n = n.checked_add(arch_layer_count(body, depth + 1)?)?;
            if n > MAX_ARCH_LAYERS {
                return None;
            }
        }
        if n > MAX_ARCH_LAYERS {
            return None;
        }
    }
    Some(n)
}

fn arch_layers(layers: &[Layer]) -> Vec<ArchLayer> {
    layers
        .iter()
        .map(|l| match l {
            Layer::Dense { weight, .. } => ArchLayer::Dense {
                inputs: weight.ncols(),
                outputs: weight.nrows(),
            },
            Layer::Conv2d {
                weight,
                stride,
                padding,
                ..
            } => {
                let (o, c, kh, kw) = weight.dim();
                ArchLayer::Conv2d {
                    out_channels: o,
                    in_channels: c,
                    kh,
                    kw,
                    stride: *stride,
                    padding: *padding,
                }
            }
            Layer::Relu => ArchLayer::Relu,
            Layer::Square => ArchLayer::Square,
            Layer::Poly { coeffs } => ArchLayer::Poly {
                degree: coeffs.len().saturating_sub(1),
            },
            Layer::Sigmoid => ArchLayer::Sigmoid,
            Layer::Softmax => ArchLayer::Softmax,
            Layer::AvgPool { kernel, stride } => ArchLayer::AvgPool {
                kernel: *kernel,
                stride: *stride,
            },
            Layer::MaxPool { kernel, stride } => ArchLayer::MaxPool {
                kernel: *kernel,
                stride: *stride,
            },
            Layer::GlobalAvgPool => ArchLayer::GlobalAvgPool,
            Layer::Flatten => ArchLayer::Flatten,
            Layer::Residual { body } => ArchLayer::Residual {
                body: arch_layers(body),
            },
            Layer::Branches { branches, join } => ArchLayer::Branches {
                branches: branches.iter().map(|b| arch_layers(b)).collect(),
                join: *join,
            },
            Layer::Affine { scale, .. } => ArchLayer::Affine {
                channels: scale.len(),
            },
            Layer::PRelu { slope } => ArchLayer::PRelu {
                channels: slope.len(),
            },
            Layer::Activation(a) => ArchLayer::Activation(*a),
            Layer::Transpose { perm } => ArchLayer::Transpose { perm: perm.clone() },
            Layer::Reshape { shape } => ArchLayer::Reshape {
                shape: shape.clone(),
            },
            Layer::Pad { pads } => ArchLayer::Pad { pads: pads.clone() },
            Layer::Mean { axes, keepdims } => ArchLayer::Mean {
                axes: axes.clone(),
                keepdims: *keepdims,
            },
        })
        .collect()
}

impl Sequential {
    /// The architecture (no weights).
    pub fn architecture(&self) -> Architecture {
        Architecture {
            input_shape: self.input_shape.clone(),
            layers: arch_layers(&self.layers),
        }
    }

    /// A model with this architecture and zero weights (a client's copy). The architecture
    /// may come from a peer: its layer count (residual bodies included), nesting depth and
    /// sizes are bounded and its shapes checked.
    pub fn from_architecture(arch: &Architecture) -> Result<Self, NnError> {
        let too_big = |what: &str| NnError::LayerShape {
            layer: format!("architecture ({what})"),
            input: arch.input_shape.clone(),
        };
        if arch_layer_count(&arch.layers, 0).is_none() {
            return Err(too_big(&format!(
                "more than {MAX_ARCH_LAYERS} layers or residual blocks nested deeper than {MAX_ARCH_DEPTH}"
            )));
        }
        if elems(&arch.input_shape).is_none() {
            return Err(too_big("input too large"));
        }
        let layers = zero_layers(&arch.layers, &arch.input_shape, &too_big)?;
        Ok(Sequential {
            input_shape: arch.input_shape.clone(),
            layers,
        })
    }
}

/// The number of elements of a tensor of shape `dims`, if at most [`MAX_ARCH_ELEMENTS`].
fn elems(dims: &[usize]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_ARCH_ELEMENTS)
}

/// Zero-weight layers of `arch` for inputs of shape `input`, each checked against the size
/// bounds and its input shape before the next is built (the depth was bounded by
/// [`arch_layer_count`]).
fn zero_layers(
    arch: &[ArchLayer],
    input: &[usize],
    too_big: &dyn Fn(&str) -> NnError,
) -> Result<Vec<Layer>, NnError> {
    let mut layers = Vec::with_capacity(arch.len());
    let mut shape = input.to_vec();
    for l in arch {
        let layer = match l {
            &ArchLayer::Dense { inputs, outputs } => {
                if elems(&[inputs, outputs]).is_none() {
                    return Err(too_big("dense layer too large"));
                }
                Layer::Dense {
                    weight: ndarray::Array2::zeros((outputs, inputs)),
                    bias: ndarray::Array1::zeros(outputs),
                }
            }
            &ArchLayer::Conv2d {
                out_channels,
                in_channels,
                kh,
                kw,
                stride,
                padding,
            } => {
                if elems(&[out_channels, in_channels, kh, kw]).is_none() || padding > 64 {
                    return Err(too_big("convolution too large"));
                }
                Layer::Conv2d {
                    weight: ndarray::Array4::zeros((out_channels, in_channels, kh, kw)),
                    bias: ndarray::Array1::zeros(out_channels),
                    stride,
                    padding,
                }
            }
            ArchLayer::Relu => Layer::Relu,
            ArchLayer::Square => Layer::Square,
            &ArchLayer::Poly { degree } => {
                if degree > 64 {
                    return Err(too_big("polynomial degree"));
                }
                Layer::Poly {
                    coeffs: vec![0.0; degree + 1],
                }
            }
            ArchLayer::Sigmoid => Layer::Sigmoid,
            ArchLayer::Softmax => Layer::Softmax,
            &ArchLayer::AvgPool { kernel, stride } => Layer::AvgPool { kernel, stride },
            &ArchLayer::MaxPool { kernel, stride } => Layer::MaxPool { kernel, stride },
            ArchLayer::GlobalAvgPool => Layer::GlobalAvgPool,
            ArchLayer::Flatten => Layer::Flatten,
            ArchLayer::Residual { body } => Layer::Residual {
                body: zero_layers(body, &shape, too_big)?,
            },
            ArchLayer::Branches { branches, join } => {
                if branches.is_empty() {
                    return Err(too_big("a block without branches"));
                }
                let mut bs = Vec::with_capacity(branches.len());
                for b in branches {
                    bs.push(zero_layers(b, &shape, too_big)?);
                }
                Layer::Branches {
                    branches: bs,
                    join: *join,
                }
            }
            &ArchLayer::Affine { channels } | &ArchLayer::PRelu { channels } => {
                if shape.first() != Some(&channels) {
                    return Err(too_big("channels of a per-channel layer"));
                }
                if let ArchLayer::Affine { .. } = l {
                    Layer::Affine {
                        scale: ndarray::Array1::zeros(channels),
                        shift: ndarray::Array1::zeros(channels),
                    }
                } else {
                    Layer::PRelu {
                        slope: ndarray::Array1::zeros(channels),
                    }
                }
            }
            ArchLayer::Activation(a) => {
                if !a.is_valid() {
                    return Err(too_big("activation parameters"));
                }
                Layer::Activation(*a)
            }
            ArchLayer::Transpose { perm } => Layer::Transpose { perm: perm.clone() },
            ArchLayer::Reshape { shape } => {
                if shape.len() > 8 {
                    return Err(too_big("reshape rank"));
                }
                Layer::Reshape {
                    shape: shape.clone(),
                }
            }
            ArchLayer::Pad { pads } => {
                let sizes: Option<Vec<usize>> = pads
                    .iter()
                    .zip(&shape)
                    .map(|(&(a, b), &d)| d.checked_add(a)?.checked_add(b))
                    .collect();
                if sizes.and_then(|s| elems(&s)).is_none() {
                    return Err(too_big("padding"));
                }
                Layer::Pad { pads: pads.clone() }
            }
            ArchLayer::Mean { axes, keepdims } => Layer::Mean {
                axes: axes.clone(),
                keepdims: *keepdims,
            },
        };
        shape = layer.output_shape(&shape)?;
        if elems(&shape).is_none() {
            return Err(too_big("activation too large"));
        }
        layers.push(layer);
    }
    Ok(layers)
}
