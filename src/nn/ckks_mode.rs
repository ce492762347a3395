//! Non-interactive private inference with CKKS for networks whose activations are
//! polynomials: the client sends one ciphertext, the server evaluates every layer
//! (linear layers by the diagonal method, squares and polynomials elementwise) and returns
//! one ciphertext. One round trip; the server never sees the input or the output.
//!
//! A [`CkksModel`] is a model lowered to the engine's CKKS operations
//! ([`crate::tensor::CkksOps`]): each linear layer becomes a [`PreparedCkksLinear`]
//! (diagonals encoded once, at the level where the layer runs), squares, polynomials and
//! reshapes the tensor operations of the same name, a residual block the body's
//! operations and a sum, aligned in level and scale by the engine. It runs on a server
//! alone ([`CkksEval`] with the client's uploaded keys: no two-party set-up) or inside a
//! [`crate::tensor::Session`]. The flood plan of its replies is a model-level bound and
//! stays here ([`CkksModel::flood_plan`]); the engine applies it ([`CkksEval::reply`]).

use std::sync::Arc;

use cipherml_he::ckks::{CkksParameters, CkksParametersLiteral, Encryptor, Evaluator};
use cipherml_he::rlwe::{GaloisKeys, RelinKey};
use cipherml_he::tensor::{avg_pool_matrix, conv2d_matrix, CkksTensor};
use ndarray::Array2;

use super::{Join, Layer, NnError, Sequential};
use crate::tensor::{CkksEval, CkksOps, PreparedCkksLinear, PrivateTensor};

/// The interval on which the CKKS mode approximates a sigmoid (inputs outside it are
/// not covered by the stated error).
pub const SIGMOID_BOUND: f64 = 8.0;

/// One layer lowered to the engine's CKKS operations.
#[derive(Debug, Clone)]
enum Lowered {
    Linear(Box<PreparedCkksLinear>),
    Square,
    Poly(Vec<f64>),
    Reshape(Vec<usize>),
    /// `x + body(x)`, the sum aligned by the engine ([`CkksEval::add`]).
    Residual(Vec<Lowered>),
    /// Branches from one input, summed.
    SumOfBranches(Vec<Vec<Lowered>>),
}

/// What the noise bound of a flooded reply needs to know of one compiled step: shapes,
/// levels and the public caps only (the largest weight is kept to refuse a model whose
/// weights exceed the declared cap, never to size anything).
#[derive(Debug, Clone)]
enum Trace {
    Linear {
        layer: String,
        level: usize,
        cols: usize,
        diagonals: usize,
        rotations: usize,
        block_sums: u32,
        /// Flat index (matrix, then bias) and value of the largest `|w|`.
        largest: (usize, f64),
    },
    Square {
        level: usize,
    },
    /// A step without a flooding bound here (its description).
    Unbounded(String),
}

/// The public sizes from which a CKKS reply's noise flooding is computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CkksFloodConfig {
    /// Statistical security over a whole session, in bits.
    pub flood_bits: u32,
    /// Inferences one session may run at most (the union bound covers every coefficient of
    /// every reply of a session: `N x max_inferences_per_session`).
    pub max_inferences_per_session: u64,
    /// Public cap on `|w|` (weights and biases); a model above it is refused.
    pub weight_cap: f64,
    /// Public cap on `|x|` for the client's input values (the noise bound holds for inputs
    /// within it; a client that sends larger values only harms the privacy of its own
    /// result's noise, see SECURITY.md).
    pub input_cap: f64,
    /// Largest error per output value (`log2`) that the flooding may cause for the plan to
    /// count as usable (the server's automatic mode choice requires it).
    pub max_error_log2: f64,
}

impl Default for CkksFloodConfig {
    /// 40 bits over sessions of at most `2^16` inferences, `|w| <= 16`, `|x| <= 16`,
    /// output error at most `2^-10`.
    fn default() -> Self {
        Self {
            flood_bits: 40,
            max_inferences_per_session: 1 << 16,
            weight_cap: 16.0,
            input_cap: 16.0,
            max_error_log2: -10.0,
        }
    }
}

/// The noise flooding of a CKKS model's replies, computed from the parameters, the shapes
/// and the public caps of a [`CkksFloodConfig`] (never from the weights).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CkksFloodPlan {
    /// `log2` of the bound on the noise of a reply before flooding (coefficient units, at
    /// the output's scale).
    pub noise_log2: f64,
    /// Bits of the union bound over a session: `ceil(log2(N x max_inferences_per_session))`.
    pub session_bits: u32,
    /// `log2` of the flooding: uniform in `[-2^flood_log2, 2^flood_log2]` per coefficient,
    /// `ceil(noise_log2) + flood_bits + session_bits`.
    pub flood_log2: u32,
    /// `log2` of the room at the output level (`log2(Q_out) - 2`).
    pub room_log2: f64,
    /// `log2` of the expected error per output value after flooding
    /// (`6 sqrt(N/3) 2^flood_log2 / scale`, plus the computation's own).
    pub error_log2: f64,
    /// The configured limit on [`Self::error_log2`].
    pub max_error_log2: f64,
}

impl CkksFloodPlan {
    /// Whether the flooding fits in the output's modulus (with the values).
    pub fn fits(&self) -> bool {
        (self.flood_log2 as f64) < self.room_log2
    }

    /// Whether the flooding fits and leaves the configured precision: only then does the
    /// server choose the CKKS mode on its own.
    pub fn keeps_precision(&self) -> bool {
        self.fits() && self.error_log2 <= self.max_error_log2
    }
}

/// A [`Sequential`] model lowered to the engine's CKKS operations, its linear maps
/// prepared once ([`PreparedCkksLinear`]: diagonals encoded at the levels where they are
/// used; clones share them, so a server that prepares a model once applies the same
/// encodings in every session).
#[derive(Debug, Clone)]
pub struct CkksModel {
    layers: Vec<Lowered>,
    trace: Vec<Trace>,
    /// The flooding of [`CkksModel::reply`] (none: replies are not flooded).
    flood: Option<CkksFloodPlan>,
    galois: Vec<usize>,
    input_level: usize,
    depth: usize,
    output_shape: Vec<usize>,
    /// A final sigmoid or softmax, applied by the key owner to the decrypted logits
    /// ([`CkksModel::finish`]): exact, and no levels.
    output_activation: Option<Layer>,
}

fn linear_matrix(layer: &Layer, input: &[usize]) -> Option<(Array2<f64>, Option<Vec<f64>>)> {
    match layer {
        Layer::Dense { weight, bias } => Some((weight.clone(), Some(bias.to_vec()))),
        Layer::Conv2d {
            weight,
            bias,
            stride,
            padding,
        } => {
            let (m, (o, ho, wo)) = conv2d_matrix(
                weight.view(),
                (input[0], input[1], input[2]),
                *stride,
                *padding,
            )
            .ok()?;
            let b: Vec<f64> = (0..o * ho * wo).map(|i| bias[i / (ho * wo)]).collect();
            Some((m, Some(b)))
        }
        Layer::AvgPool { kernel, stride } if kernel == stride && input.len() == 3 => {
            let (m, _) = avg_pool_matrix((input[0], input[1], input[2]), *kernel).ok()?;
            Some((m, None))
        }
        Layer::GlobalAvgPool => {
            let (m, _) = avg_pool_matrix((input[0], input[1], input[2]), input[1]).ok()?;
            if input[1] != input[2] {
                return None;
            }
            Some((m, None))
        }
        // Any other linear layer (a per-channel affine map, a transposition, a padding, a
        // mean): its matrix, column by column, from the plaintext semantics.
        l if l.is_linear() => {
            let n: usize = input.iter().product();
            if n > 1 << 14 {
                return None;
            }
            let zero = ndarray::ArrayD::zeros(ndarray::IxDyn(input));
            let bias = l.forward(&zero).ok()?;
            let mut m = Array2::zeros((bias.len(), n));
            for i in 0..n {
                let mut e = zero.clone();
                e.as_slice_mut()?[i] = 1.0;
                let col = l.forward(&e).ok()?;
                for (r, (&y, &b)) in col.iter().zip(bias.iter()).enumerate() {
                    m[[r, i]] = y - b;
                }
            }
            let bias: Vec<f64> = bias.iter().copied().collect();
            Some((m, bias.iter().any(|&b| b != 0.0).then_some(bias)))
        }
        _ => None,
    }
}

/// Lowers layers to CKKS operations, tracking the level; residual bodies are lowered
/// recursively.
struct Lowering<'p> {
    params: &'p Arc<CkksParameters>,
    trace: Vec<Trace>,
    galois: std::collections::BTreeSet<usize>,
    level: usize,
}

impl Lowering<'_> {
    fn layers(&mut self, layers: &[Layer], input: &[usize]) -> Result<Vec<Lowered>, NnError> {
        let shapes = super::chain_shapes(layers, input)?;
        let need = |level: usize, k: usize, layer: &Layer| -> Result<(), NnError> {
            if level < k {
                Err(NnError::NotSupportedInMode {
                    layer: layer.describe(),
                    mode: "CKKS",
                    reason: format!("needs {k} more level(s), {level} left; use larger parameters"),
                })
            } else {
                Ok(())
            }
        };
        let mut lowered = Vec::with_capacity(layers.len());
        for (layer, (input, output)) in layers.iter().zip(shapes.iter().zip(&shapes[1..])) {
            let level = self.level;
            match layer {
                Layer::Flatten | Layer::Reshape { .. } => {
                    lowered.push(Lowered::Reshape(output.clone()))
                }
                Layer::Softmax => {
                    return Err(NnError::NotSupportedInMode {
                        layer: layer.describe(),
                        mode: "CKKS",
                        reason: "apply softmax to the decrypted logits on the client".into(),
                    })
                }
                Layer::Square => {
                    need(level, 1, layer)?;
                    self.trace.push(Trace::Square { level });
                    lowered.push(Lowered::Square);
                    self.level -= 1;
                }
                Layer::Poly { coeffs } => {
                    // Zero leading coefficients cost no level (as in the engine).
                    let degree = coeffs.iter().rposition(|&c| c != 0.0).unwrap_or(0);
                    let d = Evaluator::poly_depth(degree);
                    need(level, d, layer)?;
                    self.trace.push(Trace::Unbounded(layer.describe()));
                    lowered.push(Lowered::Poly(coeffs.clone()));
                    self.level -= d;
                }
                Layer::Sigmoid => {
                    // Degree-7 Chebyshev approximation on [-8, 8] (3 levels); its maximum
                    // error there is measured in `PolyApprox::max_error` (about 0.02).
                    let approx = cipherml_he::ckks::PolyApprox::sigmoid(SIGMOID_BOUND, 7);
                    let degree = approx.coeffs.iter().rposition(|&c| c != 0.0).unwrap_or(0);
                    let d = Evaluator::poly_depth(degree);
                    need(level, d, layer)?;
                    self.trace.push(Trace::Unbounded(layer.describe()));
                    lowered.push(Lowered::Poly(approx.coeffs));
                    self.level -= d;
                }
                Layer::Residual { body } => {
                    // The shortcut keeps the input's layout (every operation leaves the
                    // period at the tensor length rounded up to a power of two, and the
                    // shapes agree); the engine aligns the sum's levels and scales.
                    self.trace.push(Trace::Unbounded(layer.describe()));
                    let body = self.layers(body, input)?;
                    lowered.push(Lowered::Residual(body));
                }
                Layer::Branches {
                    branches,
                    join: Join::Add,
                } => {
                    // As a residual block: every branch starts from the input, and the
                    // engine aligns the sum's levels and scales; the block ends at the
                    // lowest level of its branches.
                    self.trace.push(Trace::Unbounded(layer.describe()));
                    let mut lowered_branches = Vec::with_capacity(branches.len());
                    let mut end = level;
                    for b in branches {
                        self.level = level;
                        lowered_branches.push(self.layers(b, input)?);
                        end = end.min(self.level);
                    }
                    self.level = end;
                    lowered.push(Lowered::SumOfBranches(lowered_branches));
                }
                l if l.is_linear() => {
                    need(level, 1, layer)?;
                    let (m, bias) =
                        linear_matrix(l, input).ok_or_else(|| NnError::NotSupportedInMode {
                            layer: l.describe(),
                            mode: "CKKS",
                            reason: "this pooling shape has no linear form here".into(),
                        })?;
                    let w = PreparedCkksLinear::new(
                        self.params,
                        &l.describe(),
                        m.view(),
                        bias.as_deref(),
                        level,
                        output,
                    )?;
                    let map = w.map();
                    // The input's period: its length rounded up to a power of two.
                    let period = map
                        .cols()
                        .max(1)
                        .next_power_of_two()
                        .max(map.output_period());
                    let largest = m
                        .iter()
                        .chain(bias.iter().flatten())
                        .copied()
                        .enumerate()
                        .fold(
                            (0, 0f64),
                            |a, (i, v)| if v.abs() > a.1.abs() { (i, v) } else { a },
                        );
                    self.trace.push(Trace::Linear {
                        layer: l.describe(),
                        level,
                        cols: map.cols(),
                        diagonals: map.output_period(),
                        rotations: map.structural_rotation_steps().len(),
                        block_sums: (period / map.output_period()).trailing_zeros(),
                        largest,
                    });
                    // Keys for every diagonal the shapes allow, not only the non-zero ones: the
                    // client derives them from the architecture, and the key set must not
                    // reveal the weights' sparsity.
                    self.galois.extend(w.galois_elements().iter().copied());
                    lowered.push(Lowered::Linear(Box::new(w)));
                    self.level -= 1;
                }
                other => {
                    return Err(NnError::NotSupportedInMode {
                        layer: other.describe(),
                        mode: "CKKS",
                        reason: "not a polynomial; use the interactive mode".into(),
                    })
                }
            }
        }
        Ok(lowered)
    }
}

impl CkksModel {
    /// Compiles `model` with the smallest CKKS parameters that have the levels it needs
    /// (N = 8192 with three 36-bit levels, else the N = 16384 and 32768 presets), inputs
    /// encrypted at the top level. Both the server (with the weights) and the client (from
    /// the architecture alone) arrive at the same parameters and Galois elements.
    pub fn for_model(model: &Sequential) -> Result<(Self, Arc<CkksParameters>), NnError> {
        let depth_probe = CkksParameters::new(&CkksParametersLiteral::n16384())?;
        let needed = Self::compile(model, &depth_probe, depth_probe.max_level())?.depth();
        let lit = if needed <= 3 {
            CkksParametersLiteral {
                degree: 8192,
                ciphertext_moduli_bits: vec![50, 36, 36, 36],
                special_moduli_bits: vec![50],
                scale_bits: 36,
            }
        } else if needed <= 7 {
            CkksParametersLiteral::n16384()
        } else {
            CkksParametersLiteral::n32768()
        };
        let params = CkksParameters::new(&lit)?;
        let compiled = Self::compile(model, &params, params.max_level())?;
        Ok((compiled, params))
    }

    /// Compiles `model` for inputs encrypted at `input_level` of `params`. Fails on a layer
    /// that is not linear or polynomial (use the interactive mode for ReLU and max-pool), or
    /// if the network needs more levels than there are.
    pub fn compile(
        model: &Sequential,
        params: &Arc<CkksParameters>,
        input_level: usize,
    ) -> Result<Self, NnError> {
        let shapes = model.shapes()?;
        let mut c = Lowering {
            params,
            trace: Vec::new(),
            galois: std::collections::BTreeSet::new(),
            level: input_level,
        };
        let all = model.layers();
        let output_activation = all
            .last()
            .filter(|l| matches!(l, Layer::Softmax | Layer::Sigmoid))
            .cloned();
        let layers = c.layers(
            &all[..all.len() - usize::from(output_activation.is_some())],
            &shapes[0],
        )?;
        Ok(Self {
            layers,
            trace: c.trace,
            flood: None,
            galois: c.galois.into_iter().collect(),
            input_level,
            depth: input_level - c.level,
            output_shape: shapes.last().expect("non-empty").clone(),
            output_activation,
        })
    }

    /// The model's output from the decrypted result of [`CkksModel::infer`] or
    /// [`CkksModel::forward`]: a final sigmoid or softmax is applied here, exactly, by the
    /// key owner (the logits say no more than the probabilities, up to the softmax's
    /// shift); otherwise `y` as it is.
    pub fn finish(&self, y: ndarray::ArrayD<f64>) -> Result<ndarray::ArrayD<f64>, NnError> {
        match &self.output_activation {
            Some(l) => l.forward(&y),
            None => Ok(y),
        }
    }

    /// The Galois elements the server needs keys for (the client generates exactly these;
    /// they depend on the architecture only).
    pub fn galois_elements(&self) -> &[usize] {
        &self.galois
    }

    /// Levels consumed.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The level inputs must be encrypted at.
    pub fn input_level(&self) -> usize {
        self.input_level
    }

    /// Shape of the output.
    pub fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }

    /// The noise flooding of this model's replies at `params` (those it was compiled for),
    /// from the shapes, the levels and the public caps of `config`: a bound on the noise of
    /// the output, tracked step by step (canonical-embedding norms relative to the scale:
    /// key switching and rescaling bounds of [`Evaluator::keyswitch_noise_bound`] and
    /// [`Evaluator::rescale_noise_bound`], multiplied through by the caps), the union bound
    /// over a session, and the precision left. The client's fresh encryption noise is part
    /// of its own input (it knows it), so it is not counted.
    ///
    /// Fails for a step without a bound here (a polynomial other than the square, a
    /// residual block: [`NnError::NotSupportedInMode`]) and for a weight above the cap
    /// ([`NnError::WeightAboveCap`]).
    pub fn flood_plan(
        &self,
        params: &Arc<CkksParameters>,
        config: &CkksFloodConfig,
    ) -> Result<CkksFloodPlan, NnError> {
        let ev = Evaluator::new(params);
        let delta = params.default_scale();
        let n = params.degree() as f64;
        let rs = ev.rescale_noise_bound() / delta;
        let cap = config.weight_cap;
        // Bounds on |value| and on |error| per slot, relative to the scale.
        let (mut v, mut e) = (config.input_cap, 0f64);
        for t in &self.trace {
            match *t {
                Trace::Linear {
                    ref layer,
                    level,
                    cols,
                    diagonals,
                    rotations,
                    block_sums,
                    largest: (index, value),
                } => {
                    if value.abs() > cap {
                        return Err(NnError::WeightAboveCap {
                            layer: layer.clone(),
                            index,
                            value,
                            cap,
                        });
                    }
                    let amp = cols as f64 * cap;
                    let ks_in = ev.keyswitch_noise_bound(level) / delta;
                    let ks_out = ev.keyswitch_noise_bound(level - 1) / delta;
                    // Rounding of the diagonals encoded at scale q_level (at most N/2 in
                    // canonical norm each), times the input.
                    let encode = diagonals as f64 * n / 2.0 / params.prime(level) as f64 * v;
                    e = amp * (e + ks_in)
                        + encode
                        + (block_sums as f64).exp2() * (rotations as f64 * ks_out + rs);
                    v = amp * v + cap;
                }
                Trace::Square { level } => {
                    let relin = ev.keyswitch_noise_bound(level) / (delta * delta);
                    e = 2.0 * v * e + e * e + relin + rs;
                    v *= v;
                }
                Trace::Unbounded(ref layer) => {
                    return Err(NnError::NotSupportedInMode {
                        layer: layer.clone(),
                        mode: "flooded CKKS",
                        reason: "no noise bound for this layer here; use the hybrid mode".into(),
                    })
                }
            }
        }
        let noise_log2 = (e * delta).max(1.0).log2();
        let coefficients =
            params.degree() as u128 * config.max_inferences_per_session.max(1) as u128;
        let session_bits = crate::link::union_bits(coefficients);
        let flood_log2 = noise_log2.ceil() as u32 + config.flood_bits + session_bits;
        let out_level = self.input_level - self.depth;
        let q_out: f64 = (0..=out_level)
            .map(|i| (params.prime(i) as f64).log2())
            .sum();
        // The values must fit too: the room is what `Q_out / 4` leaves above them.
        let (limit, values) = ((q_out - 2.0).exp2(), v * delta);
        let room_log2 = if values < limit {
            (limit - values).log2()
        } else {
            0.0
        };
        let flood_err = 6.0 * (n / 3.0).sqrt() * (flood_log2 as f64).exp2() / delta;
        Ok(CkksFloodPlan {
            noise_log2,
            session_bits,
            flood_log2,
            room_log2,
            error_log2: (flood_err + e).log2(),
            max_error_log2: config.max_error_log2,
        })
    }

    /// The model with its replies flooded by `plan` (from [`CkksModel::flood_plan`]).
    pub fn with_flood(mut self, plan: CkksFloodPlan) -> Self {
        self.flood = Some(plan);
        self
    }

    /// The flooding of the replies, if any.
    pub fn flood(&self) -> Option<&CkksFloodPlan> {
        self.flood.as_ref()
    }

    /// The prepared linear maps, in order (residual bodies included): clones that share
    /// the encodings (see [`PreparedCkksLinear::applications`]).
    pub fn linear_maps(&self) -> Vec<PreparedCkksLinear> {
        fn walk(layers: &[Lowered], out: &mut Vec<PreparedCkksLinear>) {
            for l in layers {
                match l {
                    Lowered::Linear(w) => out.push((**w).clone()),
                    Lowered::Residual(body) => walk(body, out),
                    Lowered::SumOfBranches(branches) => branches.iter().for_each(|b| walk(b, out)),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.layers, &mut out);
        out
    }

    /// Runs the model on `x` (a CKKS tensor at [`CkksModel::input_level`]) with the
    /// engine's operations, on a [`crate::tensor::Session`] (both parties call it, the
    /// client with its copy from the architecture) or on a [`CkksEval`] (a server alone).
    /// Returns the output as the engine leaves it (not re-randomized, not flooded).
    pub fn forward<O: CkksOps>(
        &self,
        ops: &mut O,
        x: PrivateTensor,
    ) -> Result<PrivateTensor, NnError> {
        forward_all(&self.layers, ops, x)
    }

    /// Server side: evaluates the network on an encrypted input, re-randomizes the result
    /// with the client's public key `enc` and, if the model has a flooding plan
    /// ([`CkksModel::with_flood`]), floods its noise ([`Evaluator::flood`] with
    /// [`CkksFloodPlan::flood_log2`]): [`CkksModel::forward`] then [`CkksEval::reply`].
    /// What a server returns. Without a plan the reply's noise depends on the weights
    /// (SECURITY.md).
    pub fn reply<R: rand::RngCore + rand::CryptoRng + ?Sized>(
        &self,
        ev: &Evaluator,
        rlk: &RelinKey,
        keys: &GaloisKeys,
        enc: &Encryptor,
        x: &CkksTensor,
        rng: &mut R,
    ) -> Result<cipherml_he::ckks::Ciphertext, NnError> {
        let mut eval = CkksEval::new(ev).relin(rlk).galois(keys);
        let y = self.forward(&mut eval, input_of(x))?;
        eval.reply(enc, &y, self.flood.map(|p| p.flood_log2), rng)
    }

    /// Server side: evaluates the network on an encrypted input ([`CkksModel::forward`] on
    /// a [`CkksEval`] with these keys). The result is neither re-randomized nor flooded:
    /// its noise depends on the weights; return [`CkksModel::reply`] to a client instead.
    pub fn infer(
        &self,
        ev: &Evaluator,
        rlk: &RelinKey,
        keys: &GaloisKeys,
        x: &CkksTensor,
    ) -> Result<CkksTensor, NnError> {
        let mut eval = CkksEval::new(ev).relin(rlk).galois(keys);
        match self.forward(&mut eval, input_of(x))? {
            PrivateTensor::Ckks { ct: Some(ct), .. } => Ok(ct),
            other => Err(NnError::Invalid {
                what: "CKKS inference",
                detail: format!("the output is no ciphertext ({:?})", other.shape()),
            }),
        }
    }
}

/// A server's ciphertext as an engine tensor (level and scale from the ciphertext).
fn input_of(x: &CkksTensor) -> PrivateTensor {
    PrivateTensor::Ckks {
        ct: Some(x.clone()),
        shape: x.shape().to_vec(),
        level: x.ct.level(),
        scale: x.ct.scale(),
    }
}

fn forward_all<O: CkksOps>(
    layers: &[Lowered],
    ops: &mut O,
    mut x: PrivateTensor,
) -> Result<PrivateTensor, NnError> {
    for l in layers {
        x = match l {
            Lowered::Linear(w) => ops.linear_ckks(&x, w)?,
            Lowered::Square => ops.square(&x)?,
            Lowered::Poly(c) => ops.poly(&x, c)?,
            Lowered::Reshape(shape) => ops.reshape(&x, shape)?,
            Lowered::Residual(body) => {
                let y = forward_all(body, ops, x.clone())?;
                ops.add(&x, &y)?
            }
            Lowered::SumOfBranches(branches) => {
                let mut sum: Option<PrivateTensor> = None;
                for b in branches {
                    let y = forward_all(b, ops, x.clone())?;
                    sum = Some(match sum {
                        None => y,
                        Some(s) => ops.add(&s, &y)?,
                    });
                }
                sum.ok_or_else(|| NnError::Invalid {
                    what: "block of branches",
                    detail: "no branches".into(),
                })?
            }
        };
    }
    Ok(x)
}
