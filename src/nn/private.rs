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

use super::{Layer, NnError, Sequential};
use crate::tensor::{PreparedLinear, PrivateTensor, Role, Session, SessionConfig};

/// One layer lowered for a session configuration.
#[derive(Debug, Clone)]
enum Lowered {
    Linear(Box<PreparedLinear>),
    Relu,
    MaxPool { kernel: usize, stride: usize },
    AvgPool { kernel: usize, stride: usize },
    Reshape(Vec<usize>),
    Square,
    Sigmoid,
    Residual(Vec<Lowered>),
}

/// A model lowered once for a session configuration (see the module documentation).
#[derive(Debug, Clone)]
pub struct PreparedModel {
    config: SessionConfig,
    params: Arc<BfvParameters>,
    layers: Vec<Lowered>,
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
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
        Layer::Softmax => return Err(unsupported("apply softmax to the revealed logits")),
    })
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

fn walk(layers: &[Lowered], f: &mut impl FnMut(&Lowered)) {
    for l in layers {
        f(l);
        if let Lowered::Residual(body) = l {
            walk(body, f);
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
        let layers = lower_all(
            model.layers(),
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
        })
    }

    /// Lowers `model` for serving: the session's flooding is sized for at most
    /// `max_inferences` inferences ([`SessionConfig::reveal_log2`] =
    /// `ceil(log2(coefficients revealed per inference x max_inferences))`, and a session
    /// refuses to reveal more). Both parties call it with the same arguments.
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
        Self::with_params(model, &config, params, with_weights)
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
        walk(&self.layers, &mut |l| {
            if let Lowered::Linear(w) = l {
                n += w.revealed_coefficients();
            }
        });
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
        walk(&self.layers, &mut |l| {
            if let Lowered::Linear(w) = l {
                if w.revealed_coefficients() > 0 {
                    worst = worst.max(crate::link::flood_log2(
                        n,
                        w.noise_log2(),
                        self.flood_bits(),
                    ));
                }
            }
        });
        let room = self.params.context().q().log2_product() - (t as f64).log2() - 2.0;
        (worst, room)
    }

    /// Runs the model on `x` (any representation the first layer accepts): both parties
    /// call it with their copy of the model. Returns the output as the engine leaves it
    /// (shared, its truncation possibly pending: reveal it, or continue computing).
    pub fn forward<C: Channel>(
        &self,
        s: &mut Session<C>,
        x: PrivateTensor,
    ) -> Result<PrivateTensor, NnError> {
        forward_all(&self.layers, s, x)
    }

    /// Client side of one inference: shares `x` (trivially: no message), runs the model,
    /// and returns the logits, revealed to the client only.
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
        Lowered::Sigmoid => s.sigmoid(x)?,
        Lowered::Residual(body) => {
            let y = forward_all(body, s, x.clone())?;
            s.add(x, &y)?
        }
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
