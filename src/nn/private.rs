//! Private execution of a model: every layer lowers itself to [`Session`] operations
//! ([`Layer::forward_private`]), so a model runs on the one engine, with its optimisations
//! (pending truncation deferred past ReLU and max-pool, the cheaper truncation of values
//! known non-negative, the residual scale lift), exactly as a program written by hand with
//! the same operations would.
//!
//! A [`PreparedModel`] is a model lowered once for a session configuration: its linear
//! layers prepared ([`PreparedLinear`]: weights quantized, checked against the public cap,
//! encoded as BFV plaintexts, representation chosen), ReLU moved after max-pool where they
//! meet (ReLU is monotone: the same values, 4x fewer ReLUs for a 2x2 window), and the
//! session's flooding sized for a cap on inferences. A server prepares each model once and
//! runs every client's sessions with it; the client prepares the same model from its
//! architecture (zero weights: only the layout is used).
//!
//! In the interactive (hybrid) mode the input is shared trivially (the client's share is its
//! input, the server's zero), linear layers run under BFV or on shares as the cost model
//! decides, non-linear layers run as exact two-party protocols, and the logits are revealed
//! to the client only.

use std::sync::Arc;

use cipherml_he::bfv::BfvParameters;
use cipherml_mpc::net::Channel;
use ndarray::ArrayD;

use super::{Activation, Join, Layer, NnError, Sequential};
use crate::tensor::{PreparedLinear, PrivateTensor, Role, Session, SessionConfig};

/// One layer lowered for a session configuration.
#[derive(Debug, Clone)]
enum Lowered {
    Linear(Box<PreparedLinear>),
    Relu,
    MaxPool {
        kernel: usize,
        stride: usize,
    },
    AvgPool {
        kernel: usize,
        stride: usize,
    },
    Reshape(Vec<usize>),
    Square,
    Sigmoid,
    Residual(Vec<Lowered>),
    Branches(Vec<Vec<Lowered>>, Join),
    /// A per-channel map (a diagonal 1x1 convolution) on the sample viewed as
    /// `(channels, 1, rest)`, then back to `shape`.
    Diagonal(Box<PreparedLinear>, Vec<usize>),
    /// `relu(x) + diag(slope) (x - relu(x))`.
    PRelu(Box<PreparedLinear>, Vec<usize>),
    Activation(Activation),
    Transpose(Vec<usize>),
    Pad(Vec<(usize, usize)>),
    /// The mean over axes: the permutation that puts them first, their number of
    /// elements, the output shape.
    Mean(Vec<usize>, usize, Vec<usize>),
    Softmax,
}

/// A model lowered once for a session configuration (see the module documentation).
#[derive(Debug, Clone)]
pub struct PreparedModel {
    config: SessionConfig,
    params: Arc<BfvParameters>,
    layers: Vec<Lowered>,
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    /// The model ends with a softmax or a sigmoid, which the client applies to the
    /// revealed logits (exact, and no protocol) instead of running it on shares.
    output_activation: Option<Box<Layer>>,
}

fn lower(
    layer: &Layer,
    input: &[usize],
    output: &[usize],
    params: &Arc<BfvParameters>,
    config: &SessionConfig,
    with_weights: bool,
) -> Result<Lowered, NnError> {
    let unsupported = |reason: &str| NnError::NotSupportedInMode {
        layer: layer.describe(),
        mode: "hybrid",
        reason: reason.into(),
    };
    let image = || -> Result<(usize, usize, usize), NnError> {
        match input {
            &[c, h, w] => Ok((c, h, w)),
            _ => Err(NnError::LayerShape {
                layer: layer.describe(),
                input: input.to_vec(),
            }),
        }
    };
    Ok(match layer {
        Layer::Dense { weight, bias } => Lowered::Linear(Box::new(PreparedLinear::dense(
            params,
            config,
            &layer.describe(),
            weight.dim(),
            with_weights.then(|| weight.view()),
            with_weights.then(|| bias.view()),
        )?)),
        Layer::Conv2d {
            weight,
            bias,
            stride,
            padding,
        } => Lowered::Linear(Box::new(PreparedLinear::conv2d(
            params,
            config,
            &layer.describe(),
            image()?,
            weight.dim(),
            *stride,
            *padding,
            with_weights.then(|| weight.view()),
            with_weights.then(|| bias.view()),
        )?)),
        Layer::Relu => Lowered::Relu,
        Layer::MaxPool { kernel, stride } => Lowered::MaxPool {
            kernel: *kernel,
            stride: *stride,
        },
        Layer::AvgPool { kernel, stride } => Lowered::AvgPool {
            kernel: *kernel,
            stride: *stride,
        },
        Layer::GlobalAvgPool => {
            let (_, h, w) = image()?;
            if h != w {
                return Err(unsupported("non-square global pooling"));
            }
            Lowered::AvgPool {
                kernel: h,
                stride: h,
            }
        }
        Layer::Flatten => Lowered::Reshape(output.to_vec()),
        Layer::Square => Lowered::Square,
        Layer::Poly { .. } => {
            return Err(unsupported(
                "its coefficients are the server's: use the CKKS mode, or Square",
            ))
        }
        Layer::Sigmoid => Lowered::Sigmoid,
        Layer::Residual { body } => {
            Lowered::Residual(lower_all(body, input, params, config, with_weights)?)
        }
        Layer::Softmax => {
            if input.len() != 1 {
                return Err(unsupported("softmax of a tensor that is not a vector"));
            }
            Lowered::Softmax
        }
        Layer::Branches { branches, join } => Lowered::Branches(
            branches
                .iter()
                .map(|b| lower_all(b, input, params, config, with_weights))
                .collect::<Result<_, _>>()?,
            *join,
        ),
        Layer::Affine { scale, shift } => Lowered::Diagonal(
            Box::new(diagonal(
                layer,
                input,
                scale,
                Some(shift),
                params,
                config,
                with_weights,
            )?),
            input.to_vec(),
        ),
        Layer::PRelu { slope } => Lowered::PRelu(
            Box::new(diagonal(
                layer,
                input,
                slope,
                None,
                params,
                config,
                with_weights,
            )?),
            input.to_vec(),
        ),
        Layer::Activation(a) => Lowered::Activation(*a),
        Layer::Transpose { perm } => Lowered::Transpose(perm.clone()),
        Layer::Reshape { .. } => Lowered::Reshape(output.to_vec()),
        Layer::Pad { pads } => Lowered::Pad(pads.clone()),
        Layer::Mean { axes, .. } => {
            let mut perm = axes.clone();
            perm.extend((0..input.len()).filter(|a| !axes.contains(a)));
            let count = axes.iter().map(|&a| input[a]).product();
            Lowered::Mean(perm, count, output.to_vec())
        }
    })
}

/// A per-channel map `scale[c] x[c, ..] + shift[c]` as a 1x1 convolution with a diagonal
/// weight on the sample viewed as `(channels, 1, rest)`: the factors are the server's
/// weights, so they are applied as any linear layer's are.
fn diagonal(
    layer: &Layer,
    input: &[usize],
    scale: &ndarray::Array1<f64>,
    shift: Option<&ndarray::Array1<f64>>,
    params: &Arc<BfvParameters>,
    config: &SessionConfig,
    with_weights: bool,
) -> Result<PreparedLinear, NnError> {
    let c = scale.len();
    let rest: usize = input[1..].iter().product();
    let mut weight = ndarray::Array4::<f64>::zeros((c, c, 1, 1));
    for (i, &a) in scale.iter().enumerate() {
        weight[[i, i, 0, 0]] = a;
    }
    let bias = shift.cloned().unwrap_or_else(|| ndarray::Array1::zeros(c));
    PreparedLinear::conv2d(
        params,
        config,
        &layer.describe(),
        (c, 1, rest),
        (c, c, 1, 1),
        1,
        0,
        with_weights.then(|| weight.view()),
        with_weights.then(|| bias.view()),
    )
}

fn lower_all(
    layers: &[Layer],
    input: &[usize],
    params: &Arc<BfvParameters>,
    config: &SessionConfig,
    with_weights: bool,
) -> Result<Vec<Lowered>, NnError> {
    let shapes = super::chain_shapes(layers, input)?;
    let mut out = Vec::with_capacity(layers.len());
    for (layer, (i, o)) in layers.iter().zip(shapes.iter().zip(&shapes[1..])) {
        out.push(lower(layer, i, o, params, config, with_weights)?);
    }
    // ReLU then max-pool equals max-pool then ReLU (ReLU is monotone): pooling first runs
    // the ReLU protocol on fewer values. Within one list only: a residual block is one
    // layer here, so no swap crosses its boundary.
    for i in 1..out.len() {
        if matches!(out[i - 1], Lowered::Relu) && matches!(out[i], Lowered::MaxPool { .. }) {
            out.swap(i - 1, i);
        }
    }
    Ok(out)
}

/// Calls `f` on every prepared linear map of `layers`, nested ones included.
fn walk(layers: &[Lowered], f: &mut impl FnMut(&PreparedLinear)) {
    for l in layers {
        match l {
            Lowered::Linear(w) | Lowered::Diagonal(w, _) | Lowered::PRelu(w, _) => f(w),
            Lowered::Residual(body) => walk(body, f),
            Lowered::Branches(branches, _) => branches.iter().for_each(|b| walk(b, f)),
            _ => {}
        }
    }
}

impl PreparedModel {
    /// Lowers `model` for sessions configured by `config` as it is (its
    /// [`SessionConfig::reveal_log2`] included). With `with_weights = false` (the
    /// client's copy) the weights are zero: only the architecture is used.
    pub fn new(
        model: &Sequential,
        config: &SessionConfig,
        with_weights: bool,
    ) -> Result<Self, NnError> {
        let params = BfvParameters::new(&config.bfv_literal())?;
        Self::with_params(model, config, params, with_weights)
    }

    /// As [`PreparedModel::new`] with the BFV parameters given (those of a session the
    /// model will run in).
    pub fn with_params(
        model: &Sequential,
        config: &SessionConfig,
        params: Arc<BfvParameters>,
        with_weights: bool,
    ) -> Result<Self, NnError> {
        let shapes = model.shapes()?;
        let all = model.layers();
        let output_activation = all
            .last()
            .filter(|l| matches!(l, Layer::Softmax | Layer::Sigmoid))
            .map(|l| Box::new(l.clone()));
        let layers = lower_all(
            &all[..all.len() - usize::from(output_activation.is_some())],
            model.input_shape(),
            &params,
            config,
            with_weights,
        )?;
        Ok(Self {
            config: config.clone(),
            params,
            layers,
            input_shape: model.input_shape().to_vec(),
            output_shape: shapes.last().expect("non-empty").clone(),
            output_activation,
        })
    }

    /// Lowers `model` for serving: the session's flooding is sized for at most
    /// `max_inferences` inferences ([`SessionConfig::reveal_log2`] =
    /// `ceil(log2(coefficients revealed per inference x max_inferences))`, and a session
    /// refuses to reveal more), and, unless `base` sets [`SessionConfig::q_bits`], `Q` is
    /// fitted to the model: the fewest bits above its largest flooding
    /// ([`PreparedModel::fitted_q_bits`]), where the default holds any model the
    /// configuration allows (LeNet: 147 bits in three primes instead of 164 in four). Both parties call it with the
    /// same arguments, or the client rebuilds it from what a server announces
    /// ([`PreparedModel::new`] with the announced `q_bits` and `reveal_log2`).
    pub fn for_serving(
        model: &Sequential,
        base: &SessionConfig,
        max_inferences: u64,
        with_weights: bool,
    ) -> Result<Self, NnError> {
        let params = BfvParameters::new(&base.bfv_literal())?;
        // The choices do not depend on the flooding: lower once with no union bound to
        // count the revealed coefficients (its flood check is the weaker one), then for
        // real.
        let probe = SessionConfig {
            reveal_log2: 0,
            ..base.clone()
        };
        let count = Self::with_params(model, &probe, params.clone(), false)?;
        let per_inference = count.revealed_coefficients() as u128;
        let config = SessionConfig {
            reveal_log2: crate::link::union_bits(per_inference * max_inferences.max(1) as u128),
            ..base.clone()
        };
        if base.q_bits != 0 {
            return Self::with_params(model, &config, params, with_weights);
        }
        // Fitted: the layout and bounds alone (no weights) give the fewest bits that hold
        // the floodings; the model is lowered there, or one bit above (equal primes of the
        // literal's size may hold a fraction of a bit less than their count times their
        // size). If the choices made there no longer fit, the default stays.
        let fitted = Self::with_params(model, &config, params.clone(), false)?.fitted_q_bits();
        if f64::from(fitted) < params.context().q().log2_product() {
            for q_bits in [fitted, fitted + 1] {
                let config = SessionConfig {
                    q_bits,
                    ..config.clone()
                };
                let params = BfvParameters::new(&config.bfv_literal())?;
                if let Ok(m) = Self::with_params(model, &config, params, with_weights) {
                    return Ok(m);
                }
            }
        }
        Self::with_params(model, &config, params, with_weights)
    }

    /// The fewest bits of `Q` that hold this model's largest flooding
    /// ([`PreparedModel::flood_log2`]) at its plaintext modulus, with the margin of
    /// [`SessionConfig::q_bits_for_flood`]. From public values only (the layers' noise
    /// bounds come from the shapes and the weight cap).
    pub fn fitted_q_bits(&self) -> u32 {
        let (flood, _) = self.flood_log2();
        // A model with no encrypted reply still has the session's public key: the
        // re-randomizing encryption's own noise sets its floor.
        let floor = crate::link::flood_log2(self.params.degree(), 0.0, self.flood_bits());
        SessionConfig::q_bits_for_flood(self.config.ring_bits, flood.max(floor))
    }

    /// The session configuration the model was lowered for.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The BFV parameters.
    pub fn params(&self) -> &Arc<BfvParameters> {
        &self.params
    }

    /// The input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// The output shape.
    pub fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }

    /// Coefficients of encrypted replies one inference reveals to the client.
    pub fn revealed_coefficients(&self) -> usize {
        let mut n = 0;
        walk(&self.layers, &mut |w| n += w.revealed_coefficients());
        n
    }

    /// The statistical bits of every flooding: `flood_bits` plus the union bound over a
    /// session ([`SessionConfig::reply_flood_bits`]).
    pub fn flood_bits(&self) -> u32 {
        self.config.reply_flood_bits()
    }

    /// `log2` of the largest flooding of a reply (noise bound plus
    /// [`PreparedModel::flood_bits`]), and `log2` of the room for it at these parameters
    /// (`log2(Q / t) - 2`): the model prepares only if the first is below the second.
    pub fn flood_log2(&self) -> (u32, f64) {
        let n = self.params.degree();
        let t = self.params.plaintext_modulus();
        let mut worst = 0u32;
        walk(&self.layers, &mut |w| {
            if w.revealed_coefficients() > 0 {
                worst = worst.max(crate::link::flood_log2(
                    n,
                    w.noise_log2(),
                    self.flood_bits(),
                ));
            }
        });
        let room = self.params.context().q().log2_product() - (t as f64).log2() - 2.0;
        (worst, room)
    }

    /// Runs the model on `x` (any representation the first layer accepts): both parties
    /// call it with their copy of the model. Returns the output as the engine leaves it
    /// (shared, its truncation possibly pending: reveal it, or continue computing). A final
    /// softmax or sigmoid is not applied here (see [`PreparedModel::output_activation`]).
    pub fn forward<C: Channel>(
        &self,
        s: &mut Session<C>,
        x: PrivateTensor,
    ) -> Result<PrivateTensor, NnError> {
        forward_all(&self.layers, s, x)
    }

    /// The softmax or sigmoid the model ends with, which [`PreparedModel::run_client`]
    /// applies to the revealed logits (exactly: the logits say no more than the
    /// probabilities, up to the softmax's shift) and [`PreparedModel::forward`] leaves out.
    pub fn output_activation(&self) -> Option<&Layer> {
        self.output_activation.as_deref()
    }

    /// Client side of one inference: shares `x` (trivially: no message), runs the model,
    /// and returns its output, revealed to the client only (a final softmax applied to the
    /// revealed logits, as a final sigmoid).
    pub fn run_client<C: Channel>(
        &self,
        s: &mut Session<C>,
        x: &ArrayD<f64>,
    ) -> Result<ArrayD<f64>, NnError> {
        if x.len() != self.input_shape.iter().product::<usize>() {
            return Err(NnError::LayerShape {
                layer: "input".into(),
                input: x.shape().to_vec(),
            });
        }
        if let Some((index, &value)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(NnError::NonFinite { index, value });
        }
        let x = x
            .clone()
            .into_shape_with_order(ndarray::IxDyn(&self.input_shape))
            .expect("same length");
        let input = s.private(Role::Client, &self.input_shape, || x)?;
        let y = self.forward(s, input)?;
        let out = s.reveal(&y, Role::Client)?.ok_or(NnError::Invalid {
            what: "session role",
            detail: "run_client on the server's side".into(),
        })?;
        let out = match &self.output_activation {
            Some(l) => l.forward(&out)?,
            None => out,
        };
        Ok(out
            .into_shape_with_order(ndarray::IxDyn(&self.output_shape))
            .expect("same length"))
    }

    /// Server side of one inference.
    pub fn run_server<C: Channel>(&self, s: &mut Session<C>) -> Result<(), NnError> {
        // Only the client's side runs `provide`.
        let input = s.private(Role::Client, &self.input_shape, || {
            ArrayD::zeros(self.input_shape.clone())
        })?;
        let y = self.forward(s, input)?;
        s.reveal(&y, Role::Client)?;
        Ok(())
    }
}

fn forward_all<C: Channel>(
    layers: &[Lowered],
    s: &mut Session<C>,
    mut x: PrivateTensor,
) -> Result<PrivateTensor, NnError> {
    for l in layers {
        x = forward_one(l, s, &x)?;
    }
    Ok(x)
}

fn forward_one<C: Channel>(
    l: &Lowered,
    s: &mut Session<C>,
    x: &PrivateTensor,
) -> Result<PrivateTensor, NnError> {
    Ok(match l {
        Lowered::Linear(w) => s.linear(x, w)?,
        Lowered::Relu => s.relu(x)?,
        Lowered::MaxPool { kernel, stride } if x.shape().len() == 2 => {
            s.max_pool1d(x, *kernel, *stride)?
        }
        Lowered::AvgPool { kernel, stride } if x.shape().len() == 2 => {
            s.avg_pool1d(x, *kernel, *stride)?
        }
        Lowered::MaxPool { kernel, stride } => s.max_pool2d(x, *kernel, *stride)?,
        Lowered::AvgPool { kernel, stride } => {
            let (c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2]);
            let y = s.avg_pool2d(x, *kernel, *stride)?;
            if *kernel == h && *stride == h && h == w {
                // Global average pooling: (C, 1, 1) -> (C,).
                s.reshape(&y, &[c])?
            } else {
                y
            }
        }
        Lowered::Reshape(shape) => s.reshape(x, shape)?,
        Lowered::Square => s.square(x)?,
        // Inside a network (a final one is the client's): the closer sigmoid.
        Lowered::Sigmoid => s.sigmoid_precise(x)?,
        Lowered::Residual(body) => {
            let y = forward_all(body, s, x.clone())?;
            s.add(x, &y)?
        }
        Lowered::Branches(branches, join) => {
            let mut outs = Vec::with_capacity(branches.len());
            for b in branches {
                outs.push(forward_all(b, s, x.clone())?);
            }
            match join {
                Join::Add => {
                    let mut y = outs[0].clone();
                    for o in &outs[1..] {
                        y = s.add(&y, o)?;
                    }
                    y
                }
                Join::Concat => {
                    let parts: Vec<&PrivateTensor> = outs.iter().collect();
                    s.concat(&parts, 0)?
                }
            }
        }
        Lowered::Diagonal(w, shape) => diagonal_map(s, w, x, shape)?,
        Lowered::PRelu(w, shape) => {
            let r = s.relu(x)?;
            let negative = s.sub(x, &r)?;
            let scaled = diagonal_map(s, w, &negative, shape)?;
            s.add(&r, &scaled)?
        }
        Lowered::Activation(a) => activation(s, a, x)?,
        Lowered::Transpose(perm) => s.permute(x, perm)?,
        Lowered::Pad(pads) => s.pad(x, pads)?,
        Lowered::Mean(perm, count, shape) => {
            let moved = s.permute(x, perm)?;
            let n: usize = moved.shape().iter().product();
            let rows = s.reshape(&moved, &[*count, n / count])?;
            let sum = s.sum_rows(&rows)?;
            let mean = s.scale(&sum, 1.0 / *count as f64)?;
            s.reshape(&mean, shape)?
        }
        Lowered::Softmax => s.softmax(x)?,
    })
}

/// A diagonal map prepared by [`diagonal`] on `x` of shape `shape`.
fn diagonal_map<C: Channel>(
    s: &mut Session<C>,
    w: &PreparedLinear,
    x: &PrivateTensor,
    shape: &[usize],
) -> Result<PrivateTensor, NnError> {
    let image = s.reshape(x, w.input_shape())?;
    let y = s.linear(&image, w)?;
    s.reshape(&y, shape)
}

/// The public constant `c` in the shape of `x`.
fn constant(x: &PrivateTensor, c: f64) -> PrivateTensor {
    PrivateTensor::Public(ArrayD::from_elem(ndarray::IxDyn(&x.shape()), c))
}

/// `min(max(x, lo), hi)` from exact ReLUs: `lo + relu(x - lo) - relu(x - hi)` (one ReLU
/// per finite bound).
fn clip<C: Channel>(
    s: &mut Session<C>,
    x: &PrivateTensor,
    lo: f64,
    hi: f64,
) -> Result<PrivateTensor, NnError> {
    let mut y = x.clone();
    if lo.is_finite() {
        let shifted = s.sub(&y, &constant(x, lo))?;
        let r = s.relu(&shifted)?;
        y = s.add(&r, &constant(x, lo))?;
    }
    if hi.is_finite() {
        let over = s.sub(&y, &constant(x, hi))?;
        let r = s.relu(&over)?;
        y = s.sub(&y, &r)?;
    }
    Ok(y)
}

/// An activation with public parameters on shares.
fn activation<C: Channel>(
    s: &mut Session<C>,
    a: &Activation,
    x: &PrivateTensor,
) -> Result<PrivateTensor, NnError> {
    Ok(match *a {
        Activation::Clip { min, max } => clip(s, x, min, max)?,
        // relu(x) + alpha (x - relu(x)): one comparison, one truncation.
        Activation::LeakyRelu { alpha } => {
            let r = s.relu(x)?;
            let negative = s.sub(x, &r)?;
            let scaled = s.scale(&negative, alpha)?;
            s.add(&r, &scaled)?
        }
        Activation::HardSigmoid { alpha, beta } => {
            let z = s.scale(x, alpha)?;
            let z = s.add(&z, &constant(x, beta))?;
            clip(s, &z, 0.0, 1.0)?
        }
        Activation::HardSwish => {
            let z = s.scale(x, 1.0 / 6.0)?;
            let z = s.add(&z, &constant(x, 0.5))?;
            let h = clip(s, &z, 0.0, 1.0)?;
            s.mul(x, &h)?
        }
        Activation::Tanh => s.tanh(x)?,
    })
}

impl Layer {
    /// This layer on a private tensor, as session operations (both parties call it with
    /// their copy of the layer: the server's holds the weights). A linear layer is
    /// prepared on the fly; a model prepares once ([`PreparedModel`]).
    pub fn forward_private<C: Channel>(
        &self,
        s: &mut Session<C>,
        x: &PrivateTensor,
    ) -> Result<PrivateTensor, NnError> {
        let input = x.shape();
        let output = self.output_shape(&input)?;
        let params = s.params().clone();
        let config = s.config().clone();
        let lowered = lower(
            self,
            &input,
            &output,
            &params,
            &config,
            s.role() == Role::Server,
        )?;
        forward_one(&lowered, s, x)
    }
}

impl Sequential {
    /// The model on a private tensor, as session operations: both parties call it, the
    /// server with the model, the client with its architecture
    /// ([`Sequential::from_architecture`]). A shared, private or BFV input runs in the
    /// hybrid mode; a CKKS input stays under CKKS (polynomial networks; a server matrix
    /// under unflooded CKKS needs [`Session::allow_unflooded_ckks`]). Returns the output
    /// as the engine leaves it.
    pub fn forward_private<C: Channel>(
        &self,
        s: &mut Session<C>,
        x: PrivateTensor,
    ) -> Result<PrivateTensor, NnError> {
        // A CKKS input stays under CKKS: the model lowers to the engine's CKKS operations
        // (linear maps by the diagonal method, squares, polynomials, aligned residual
        // sums; a layer CKKS cannot run is refused), as the CKKS mode does.
        if let PrivateTensor::Ckks { level, .. } = &x {
            let level = *level;
            let params = s.ckks_params()?;
            let model = super::CkksModel::compile(self, &params, level)?;
            return model.forward(s, x);
        }
        let params = s.params().clone();
        let config = s.config().clone();
        PreparedModel::with_params(self, &config, params, s.role() == Role::Server)?.forward(s, x)
    }
}
