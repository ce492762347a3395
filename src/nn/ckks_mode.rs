//! Non-interactive private inference with CKKS for networks whose activations are
//! polynomials: the client sends one ciphertext, the server evaluates every layer
//! (linear layers by the diagonal method, squares and polynomials elementwise) and returns
//! one ciphertext. One round trip; the server never sees the input or the output.

use std::sync::Arc;

use cipherml_he::ckks::{CkksParameters, CkksParametersLiteral, Encoder, Evaluator};
use cipherml_he::rlwe::{GaloisKeys, RelinKey};
use cipherml_he::tensor::{
    avg_pool_matrix, conv2d_matrix, CkksTensor, LinearMap, PreparedLinearMap,
};
use ndarray::Array2;

use super::{Layer, NnError, Sequential};

/// The interval on which the CKKS mode approximates a sigmoid (inputs outside it are
/// not covered by the stated error).
pub const SIGMOID_BOUND: f64 = 8.0;

/// One compiled step.
#[derive(Debug, Clone)]
enum Step {
    Linear(PreparedLinearMap, Vec<usize>),
    Square,
    Poly(Vec<f64>),
    Reshape(Vec<usize>),
    /// `x + body(x)`; see [`residual_join`].
    Residual(Vec<Step>),
}

/// A [`Sequential`] model compiled for CKKS: plaintext weights pre-encoded at the levels
/// where they are used.
#[derive(Debug, Clone)]
pub struct CkksModel {
    steps: Vec<Step>,
    galois: Vec<usize>,
    input_level: usize,
    depth: usize,
    output_shape: Vec<usize>,
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
        Layer::AvgPool { kernel, stride } if kernel == stride => {
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
        _ => None,
    }
}

/// Compiles layers to steps, tracking the level and the slot period; residual bodies are
/// compiled recursively.
struct Compiler {
    encoder: Encoder,
    ev: Evaluator,
    galois: std::collections::BTreeSet<usize>,
    level: usize,
    period: usize,
}

impl Compiler {
    fn layers(&mut self, layers: &[Layer], input: &[usize]) -> Result<Vec<Step>, NnError> {
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
        let mut steps = Vec::with_capacity(layers.len());
        for (layer, (input, output)) in layers.iter().zip(shapes.iter().zip(&shapes[1..])) {
            let level = self.level;
            match layer {
                Layer::Flatten => steps.push(Step::Reshape(output.clone())),
                Layer::Softmax => {
                    return Err(NnError::NotSupportedInMode {
                        layer: layer.describe(),
                        mode: "CKKS",
                        reason: "apply softmax to the decrypted logits on the client".into(),
                    })
                }
                Layer::Square => {
                    need(level, 1, layer)?;
                    steps.push(Step::Square);
                    self.level -= 1;
                }
                Layer::Poly { coeffs } => {
                    let d = Evaluator::poly_depth(coeffs.len().saturating_sub(1));
                    need(level, d, layer)?;
                    steps.push(Step::Poly(coeffs.clone()));
                    self.level -= d;
                }
                Layer::Sigmoid => {
                    // Degree-7 Chebyshev approximation on [-8, 8] (3 levels); its maximum
                    // error there is measured in `PolyApprox::max_error` (about 0.02).
                    let approx = cipherml_he::ckks::PolyApprox::sigmoid(SIGMOID_BOUND, 7);
                    let d = Evaluator::poly_depth(approx.degree());
                    need(level, d, layer)?;
                    steps.push(Step::Poly(approx.coeffs));
                    self.level -= d;
                }
                Layer::Residual { body } => {
                    // The shortcut keeps the input's layout: every step leaves the period at
                    // the tensor length rounded up to a power of two, and the shapes agree.
                    let period = self.period;
                    let body = self.layers(body, input)?;
                    debug_assert_eq!(period, self.period, "same shape, same period");
                    steps.push(Step::Residual(body));
                }
                l if l.is_linear() => {
                    need(level, 1, layer)?;
                    let (m, bias) =
                        linear_matrix(l, input).ok_or_else(|| NnError::NotSupportedInMode {
                            layer: l.describe(),
                            mode: "CKKS",
                            reason: "this pooling shape has no linear form here".into(),
                        })?;
                    let map = LinearMap::new(m.view(), bias.as_deref(), self.period)?;
                    // Keys for every diagonal the shapes allow, not only the non-zero ones: the
                    // client derives them from the architecture, and the key set must not
                    // reveal the weights' sparsity.
                    self.galois.extend(map.structural_galois_elements(&self.ev));
                    self.period = map.output_period();
                    steps.push(Step::Linear(
                        map.encode(&self.encoder, level)?,
                        output.clone(),
                    ));
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
        Ok(steps)
    }
}

/// The sum `x + y` of a residual block's shortcut `x` and body output `y` (same shape and
/// layout). The body consumed levels, so `x` is at a higher level, and its scale generally
/// differs (a square's rescaling divides by a prime, not by the scale). `x` is dropped to one
/// level above `y`, multiplied by the constant 1 encoded at scale `s_y q / s_x` (`q` the prime
/// the rescaling then drops), and rescaled: it arrives at `y`'s level with `y`'s scale, up to
/// the rounding of that constant (relative 2^-36 or less), without consuming a level of the
/// network. With a body that consumed no level the two are added as they are.
fn residual_join(ev: &Evaluator, x: &CkksTensor, y: &CkksTensor) -> Result<CkksTensor, NnError> {
    let (lx, ly) = (x.ct.level(), y.ct.level());
    let shortcut = if lx > ly {
        let dropped = ev.drop_to_level(&x.ct, ly + 1)?;
        let q = ev.params().prime(ly + 1) as f64;
        let aligned = ev.mul_const(&dropped, 1.0, y.ct.scale() * q / x.ct.scale())?;
        ev.rescale(&aligned)?
    } else {
        x.ct.clone()
    };
    let sum = ev.add(&shortcut, &y.ct)?;
    Ok(CkksTensor::from_ciphertext(sum, y.shape(), y.period())?)
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
        let mut c = Compiler {
            encoder: Encoder::new(params),
            ev: Evaluator::new(params),
            galois: std::collections::BTreeSet::new(),
            level: input_level,
            period: shapes[0]
                .iter()
                .product::<usize>()
                .max(1)
                .next_power_of_two(),
        };
        let steps = c.layers(model.layers(), &shapes[0])?;
        Ok(Self {
            steps,
            galois: c.galois.into_iter().collect(),
            input_level,
            depth: input_level - c.level,
            output_shape: shapes.last().expect("non-empty").clone(),
        })
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

    /// Server side: evaluates the network on an encrypted input.
    pub fn infer(
        &self,
        ev: &Evaluator,
        rlk: &RelinKey,
        keys: &GaloisKeys,
        x: &CkksTensor,
    ) -> Result<CkksTensor, NnError> {
        run_steps(&self.steps, ev, rlk, keys, x)
    }
}

fn run_steps(
    steps: &[Step],
    ev: &Evaluator,
    rlk: &RelinKey,
    keys: &GaloisKeys,
    x: &CkksTensor,
) -> Result<CkksTensor, NnError> {
    let mut h = x.clone();
    for step in steps {
        h = match step {
            Step::Linear(map, shape) => map.apply(ev, &h, keys)?.reshape(shape)?,
            Step::Square => h.square(ev, rlk)?,
            Step::Poly(c) => h.poly(ev, c, rlk)?,
            Step::Reshape(shape) => h.reshape(shape)?,
            Step::Residual(body) => residual_join(ev, &h, &run_steps(body, ev, rlk, keys, &h)?)?,
        };
    }
    Ok(h)
}
