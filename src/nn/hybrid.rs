//! Interactive hybrid inference (the default for networks with ReLU or max-pool), after
//! Cheetah and Delphi.
//!
//! The input is additively shared in `Z_2^l` (fixed point with `f` fractional bits): the
//! client holds `x_c = x`, the server `x_s = 0`. For each linear layer the client sends
//! `Enc(x_c)` under its own secret key (BFV with `t = 2^l` and coefficient encoding: a
//! convolution or a matrix product is one polynomial product, no rotation); the server
//! computes `Enc(W x_c) - R` with a fresh uniform mask polynomial `R`, floods the noise
//! (40 bits plus the union bound over a session above its bound, computed from a public
//! cap on the weights: SECURITY.md), and returns it; the client decrypts its share
//! `W x_c - R`, the server keeps `W x_s + R + b`. Truncation (faithful; cheaper where the
//! value is known non-negative, after a ReLU), ReLU and
//! max-pool run as two-party protocols on the shares. The logits are revealed to the
//! client only. The server learns nothing about the input (it sees only ciphertexts and
//! uniformly random shares); the client learns the architecture and the logits. A residual
//! block `x + body(x)` runs its body recursively and adds the shares locally.

use std::sync::Arc;

use cipherml_he::bfv::{
    BfvParameters, BfvParametersLiteral, Ciphertext, Decryptor, Encoder, Encryptor, Evaluator,
    PlaintextModulus,
};
use cipherml_he::rlwe::{PublicKey, SecretKey};
use cipherml_he::tensor::{CoeffConv2d, CoeffMatVec};
use cipherml_mpc::net::Channel;
use cipherml_mpc::party::Party;
use cipherml_mpc::protocols::{arith, compare};
use cipherml_mpc::ring::Ring;
use cipherml_mpc::share::{reveal, PartyId, RevealTo};
use ndarray::{Array2, Array4, ArrayD, IxDyn};
use rand::{CryptoRng, Rng, RngCore};

use super::{Layer, NnError, Sequential};
use crate::tensor::TensorError;

/// Ring width, fixed-point precision and HE parameters of the hybrid mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HybridConfig {
    /// Bits of the ring `Z_2^l` (also `log2 t` of BFV).
    pub ring_bits: u32,
    /// Fractional bits of the fixed-point encoding.
    pub frac_bits: u32,
    /// Statistical security of noise flooding over a whole session, in bits: the
    /// statistical distance of everything a client sees in a session from a simulation
    /// without the weights is at most `2^-flood_bits`.
    pub flood_bits: u32,
    /// The public cap on weights: every quantized weight `|round(w 2^f)|` is at most
    /// `2^weight_bits` (a model with a larger weight is refused at compile time). The
    /// noise bounds, and so the flooding, are sized from it, never from the weights.
    pub weight_bits: u32,
    /// Inferences a session may run at most (the server refuses more): the flooding is
    /// sized for every coefficient revealed over that many inferences (union bound).
    pub max_inferences_per_session: u64,
}

impl Default for HybridConfig {
    /// `l = 40`, `f = 12`, 40 bits of flooding over a session of at most `2^16`
    /// inferences, weights `|w| <= 16` (`2^16` at 12 fractional bits).
    fn default() -> Self {
        Self {
            ring_bits: 40,
            frac_bits: 12,
            flood_bits: 40,
            weight_bits: 16,
            max_inferences_per_session: 1 << 16,
        }
    }
}

impl HybridConfig {
    /// The BFV parameters: N = 8192, `t = 2^l`, a 198-bit `Q` and a 20-bit special prime
    /// (log2(QP) = 218, 128-bit). The hybrid mode uses no key switching (no evaluation key
    /// is ever made), so the special prime only completes the context; `Q` holds the
    /// plaintext modulus and the flooding sized for a whole session.
    pub fn bfv_literal(&self) -> BfvParametersLiteral {
        BfvParametersLiteral {
            plaintext: PlaintextModulus::PowerOfTwo {
                bits: self.ring_bits,
            },
            ciphertext_moduli_bits: vec![50, 50, 49, 49],
            special_moduli_bits: vec![20],
            ..BfvParametersLiteral::n8192()
        }
    }

    /// The public cap on quantized weights, `2^weight_bits`.
    pub fn weight_cap(&self) -> u64 {
        1u64 << self.weight_bits.min(62)
    }
}

/// `ceil(log2(coefficients))`: the bits a flooding must add so that a per-coefficient
/// statistical distance of `2^-(flood_bits + this)` sums to `2^-flood_bits` over all of them.
pub(crate) fn union_bits(coefficients: u128) -> u32 {
    coefficients.max(1).next_power_of_two().trailing_zeros()
}

/// Errors of hybrid inference.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HybridError {
    /// A model error.
    #[error(transparent)]
    Nn(#[from] NnError),
    /// A two-party error (I/O, timeout, misbehaving peer).
    #[error(transparent)]
    Mpc(#[from] cipherml_mpc::Error),
    /// An HE error (e.g. a malformed ciphertext from the peer).
    #[error(transparent)]
    He(#[from] cipherml_he::Error),
    /// A session error.
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// The peer sent the wrong number of messages.
    #[error("protocol error: expected {expected} {what}, got {found}")]
    Protocol {
        /// What.
        what: &'static str,
        /// Expected count.
        expected: usize,
        /// Found.
        found: usize,
    },
}

/// One compiled layer. The client's copy has zero weights: it only needs the shapes.
#[derive(Debug, Clone)]
enum Step {
    Conv {
        he: CoeffConv2d,
        weight: Array4<i64>,
        bias: Vec<i64>,
        input: (usize, usize, usize),
        stride: usize,
        padding: usize,
    },
    Dense {
        he: CoeffMatVec,
        weight: Array2<i64>,
        bias: Vec<i64>,
    },
    /// A dense layer on secret shares: the server shares its weights, Beaver matrix triple
    /// from OT (cheaper than HE for small layers, as the cost model decides).
    SharedDense {
        weight: Array2<i64>,
        bias: Vec<i64>,
    },
    Relu,
    MaxPool {
        kernel: usize,
        stride: usize,
        input: (usize, usize, usize),
    },
    Reshape,
    /// `x * x` (Beaver triples from OT).
    Square,
    /// The logistic sigmoid, piecewise linear ([`sigmoid_pwl`]).
    Sigmoid,
    /// Average over windows (local on shares, then a fixed-point constant).
    AvgPool {
        kernel: usize,
        stride: usize,
        input: (usize, usize, usize),
    },
    /// `x + body(x)`: the body runs recursively, the sum is local on the shares.
    Residual {
        body: Vec<Step>,
    },
}

/// A model compiled for the hybrid mode (the server's copy holds the quantized weights).
#[derive(Debug, Clone)]
pub struct HybridModel {
    config: HybridConfig,
    params: Arc<BfvParameters>,
    /// Bits added to every flooding for the union bound over a session:
    /// `ceil(log2(revealed coefficients per inference x max inferences))`.
    session_bits: u32,
    steps: Vec<Step>,
    input_len: usize,
    output_shape: Vec<usize>,
}

pub(crate) fn quantize(v: f64, bits: u32) -> i64 {
    (v * (bits as f64).exp2()).round() as i64
}

/// Compiles layers to steps, walking residual bodies recursively. `index` counts layers in
/// the order of [`super::Plan::layers`] (pre-order: a residual block, then its body), so
/// the plan's choice for each layer is found at its own index.
struct Compiler<'a> {
    encoder: Encoder,
    cap: u64,
    f: u32,
    with_weights: bool,
    plan: &'a super::Plan,
    index: usize,
}

impl Compiler<'_> {
    fn layers(&mut self, layers: &[Layer], input: &[usize]) -> Result<Vec<Step>, HybridError> {
        let shapes = super::chain_shapes(layers, input)?;
        let f = self.f;
        let with_weights = self.with_weights;
        let mut steps = Vec::with_capacity(layers.len());
        for (layer, (input, output)) in layers.iter().zip(shapes.iter().zip(&shapes[1..])) {
            let index = self.index;
            self.index += 1;
            let unsupported = |reason: &str| NnError::NotSupportedInMode {
                layer: layer.describe(),
                mode: "hybrid",
                reason: reason.into(),
            };
            // Biases are added to products of two fixed-point values: scale 2^(2f).
            let quantized_bias = |bias: &mut dyn Iterator<Item = f64>| -> Vec<i64> {
                bias.map(|v| if with_weights { quantize(v, 2 * f) } else { 0 })
                    .collect()
            };
            steps.push(match layer {
                Layer::Conv2d {
                    weight,
                    bias,
                    stride,
                    padding,
                } => {
                    let w = if with_weights {
                        weight.mapv(|v| quantize(v, f))
                    } else {
                        Array4::zeros(weight.dim())
                    };
                    check_weight_cap(layer, w.iter().copied(), self.cap, f)?;
                    let he = CoeffConv2d::new_capped(
                        &self.encoder,
                        w.view(),
                        (input[1], input[2]),
                        *padding,
                        *stride,
                        self.cap,
                    )?;
                    let (_, ho, wo) = he.output_shape();
                    Step::Conv {
                        he,
                        weight: w,
                        bias: quantized_bias(
                            &mut (0..output.iter().product::<usize>()).map(|i| bias[i / (ho * wo)]),
                        ),
                        input: (input[0], input[1], input[2]),
                        stride: *stride,
                        padding: *padding,
                    }
                }
                Layer::Dense { weight, bias } => {
                    let w = if with_weights {
                        weight.mapv(|v| quantize(v, f))
                    } else {
                        Array2::zeros(weight.dim())
                    };
                    check_weight_cap(layer, w.iter().copied(), self.cap, f)?;
                    let b = quantized_bias(&mut bias.iter().copied());
                    let on_shares = self
                        .plan
                        .layers
                        .get(index)
                        .is_some_and(|lp| lp.chosen.is_shared());
                    if on_shares {
                        Step::SharedDense { weight: w, bias: b }
                    } else {
                        Step::Dense {
                            he: CoeffMatVec::new_capped(&self.encoder, w.view(), self.cap)?,
                            weight: w,
                            bias: b,
                        }
                    }
                }
                Layer::Relu => Step::Relu,
                Layer::MaxPool { kernel, stride } => Step::MaxPool {
                    kernel: *kernel,
                    stride: *stride,
                    input: (input[0], input[1], input[2]),
                },
                Layer::Flatten => Step::Reshape,
                Layer::Square => Step::Square,
                Layer::Sigmoid => Step::Sigmoid,
                Layer::AvgPool { kernel, stride } => Step::AvgPool {
                    kernel: *kernel,
                    stride: *stride,
                    input: (input[0], input[1], input[2]),
                },
                Layer::GlobalAvgPool => {
                    if input[1] != input[2] {
                        return Err(unsupported("non-square global pooling").into());
                    }
                    Step::AvgPool {
                        kernel: input[1],
                        stride: input[1],
                        input: (input[0], input[1], input[2]),
                    }
                }
                Layer::Residual { body } => Step::Residual {
                    body: self.layers(body, input)?,
                },
                Layer::Softmax => {
                    return Err(unsupported("apply softmax to the revealed logits").into())
                }
                _ => return Err(unsupported("no hybrid implementation yet").into()),
            });
        }
        // ReLU then max-pool equals max-pool then ReLU (ReLU is monotone): pooling first
        // runs the ReLU protocol on 4x fewer values. Only within one list of steps: a
        // residual block is one step here, so no swap crosses its boundary.
        for i in 1..steps.len() {
            if matches!(steps[i - 1], Step::Relu) && matches!(steps[i], Step::MaxPool { .. }) {
                steps.swap(i - 1, i);
            }
        }
        Ok(steps)
    }
}

impl HybridModel {
    /// Compiles `model`. With `with_weights = false` (the client's copy) the weights are
    /// zero: only the architecture is used.
    pub fn compile(
        model: &Sequential,
        config: &HybridConfig,
        with_weights: bool,
    ) -> Result<Self, HybridError> {
        let plan = model.plan(super::NetworkModel::lan())?;
        Self::compile_with_plan(model, config, with_weights, &plan)
    }

    /// Compiles `model` following `plan` (which layers run on secret shares rather than
    /// under HE). Both parties must use the same plan.
    pub fn compile_with_plan(
        model: &Sequential,
        config: &HybridConfig,
        with_weights: bool,
        plan: &super::Plan,
    ) -> Result<Self, HybridError> {
        let params = BfvParameters::new(&config.bfv_literal())?;
        let shapes = model.shapes()?;
        let steps = Compiler {
            encoder: Encoder::new(&params),
            cap: config.weight_cap(),
            f: config.frac_bits,
            with_weights,
            plan,
            index: 0,
        }
        .layers(model.layers(), &shapes[0])?;
        let revealed = revealed_coefficients(&steps) as u128;
        let session_bits = union_bits(revealed * config.max_inferences_per_session.max(1) as u128);
        let compiled = Self {
            config: config.clone(),
            params,
            session_bits,
            steps,
            input_len: shapes[0].iter().product(),
            output_shape: shapes.last().expect("non-empty").clone(),
        };
        let (flood, room) = compiled.flood_log2();
        if flood as f64 >= room {
            return Err(NnError::NotSupportedInMode {
                layer: "the model".into(),
                mode: "hybrid",
                reason: format!(
                    "flooding of 2^{flood} (noise bound, {} statistical bits, {} bits of union \
                     bound over a session) exceeds the room of 2^{room:.1} at these parameters",
                    config.flood_bits, compiled.session_bits
                ),
            }
            .into());
        }
        Ok(compiled)
    }

    /// The BFV parameters.
    pub fn params(&self) -> &Arc<BfvParameters> {
        &self.params
    }

    /// The bits of every flooding beyond the noise bound: `flood_bits` plus the union
    /// bound over a session (`ceil(log2(coefficients revealed per inference x
    /// max_inferences_per_session))`).
    pub fn flood_bits(&self) -> u32 {
        self.config.flood_bits + self.session_bits
    }

    /// `log2` of the largest flooding of a reply (noise bound plus [`Self::flood_bits`]),
    /// and `log2` of the room for it at these parameters (`log2(Q / t) - 2`): the model
    /// compiles only if the first is below the second.
    pub fn flood_log2(&self) -> (u32, f64) {
        let n = self.params.degree();
        let t = self.params.plaintext_modulus();
        let mut worst = 0u32;
        walk_steps(&self.steps, &mut |s| {
            let noise = match s {
                Step::Conv { he, .. } => he.noise_bound_log2(n, t),
                Step::Dense { he, .. } => he.noise_bound_log2(n, t),
                _ => return,
            };
            worst = worst.max(flood_log2(n, noise, self.flood_bits()));
        });
        let room = self.params.context().q().log2_product() - (t as f64).log2() - 2.0;
        (worst, room)
    }

    fn ring(&self) -> Ring {
        Ring::new(self.config.ring_bits).expect("valid ring width")
    }

    /// Client side of one inference: returns the logits (revealed to the client only).
    pub fn run_client<C: Channel, R: RngCore + CryptoRng>(
        &self,
        p: &mut Party<C, R>,
        sk: &Arc<SecretKey>,
        x: &ArrayD<f64>,
    ) -> Result<ArrayD<f64>, HybridError> {
        if x.len() != self.input_len {
            return Err(NnError::Shape {
                layer: "input".into(),
                input: x.shape().to_vec(),
            }
            .into());
        }
        if let Some((index, &value)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(NnError::NonFinite { index, value }.into());
        }
        let ring = self.ring();
        let fixed = cipherml_mpc::fixed::FixedPoint::new(ring, self.config.frac_bits)?;
        let flat: Vec<f64> = x.iter().copied().collect();
        let share = fixed.encode_vec(&flat)?;
        // Truncation after a linear layer is deferred past ReLU and max-pool (they commute
        // with an arithmetic shift), so it runs on the pooled, smaller tensor; after the last
        // layer it is not run at all: the client decodes the logits at scale 2^(2f).
        let (out, untruncated) = self.run_steps(p, Some(sk), None, &self.steps, share, false)?;
        let frac = if untruncated {
            2 * self.config.frac_bits
        } else {
            self.config.frac_bits
        };
        let fixed = cipherml_mpc::fixed::FixedPoint::new(ring, frac)?;
        let revealed = reveal(
            p.channel(),
            ring,
            PartyId::P0,
            RevealTo::Party(PartyId::P0),
            &out,
        )?
        .expect("the client learns the output");
        Ok(
            ArrayD::from_shape_vec(IxDyn(&self.output_shape), fixed.decode_vec(&revealed))
                .expect("shape"),
        )
    }

    /// Client side of the session's key set-up (once per session, before any inference):
    /// sends the client's BFV public key (seeded), with which the server re-randomizes every
    /// encrypted reply.
    pub fn send_public_key<C: Channel, R: RngCore + CryptoRng>(
        &self,
        p: &mut Party<C, R>,
        sk: &Arc<SecretKey>,
    ) -> Result<(), HybridError> {
        send_public_key(&self.params, p, sk)
    }

    /// Server side of the key set-up: receives and checks the client's public key.
    pub fn receive_public_key<C: Channel, R: RngCore + CryptoRng>(
        &self,
        p: &mut Party<C, R>,
    ) -> Result<PublicKey, HybridError> {
        receive_public_key(&self.params, p)
    }

    /// Server side of one inference; `pk` is the client's public key (from
    /// [`HybridModel::receive_public_key`]).
    pub fn run_server<C: Channel, R: RngCore + CryptoRng>(
        &self,
        p: &mut Party<C, R>,
        pk: &PublicKey,
    ) -> Result<(), HybridError> {
        let share = vec![0u64; self.input_len];
        let rerand = Encryptor::new(&self.params, pk.clone())?;
        let (out, _) = self.run_steps(p, None, Some(&rerand), &self.steps, share, false)?;
        reveal(
            p.channel(),
            self.ring(),
            PartyId::P1,
            RevealTo::Party(PartyId::P0),
            &out,
        )?;
        Ok(())
    }

    /// Runs `steps` on shares `x` (at scale `2^(2f)` if `pending`, else `2^f`); returns the
    /// output shares and whether their truncation is pending.
    fn run_steps<C: Channel, R: RngCore + CryptoRng>(
        &self,
        p: &mut Party<C, R>,
        sk: Option<&Arc<SecretKey>>,
        rerand: Option<&Encryptor>,
        steps: &[Step],
        mut x: Vec<u64>,
        mut pending: bool,
    ) -> Result<(Vec<u64>, bool), HybridError> {
        let ring = self.ring();
        let f = self.config.frac_bits;
        // Whether `x` is known non-negative (MSB 0) by construction: the output of the ReLU
        // protocol, kept by max-pool (an exact max of such values) and reshapes. Its pending
        // truncation then needs no wrap comparison (`trunc_nonneg`).
        let mut nonneg = false;
        for step in steps {
            // Linear layers, squares and averages need the value at scale 2^f.
            if pending
                && matches!(
                    step,
                    Step::Conv { .. }
                        | Step::Dense { .. }
                        | Step::SharedDense { .. }
                        | Step::Square
                        | Step::Sigmoid
                        | Step::AvgPool { .. }
                )
            {
                x = if nonneg {
                    arith::trunc_nonneg(p, ring, &x, f)?
                } else {
                    arith::trunc_faithful(p, ring, &x, f)?
                };
                pending = false;
            }
            x = match step {
                Step::Conv {
                    he,
                    weight,
                    bias,
                    input,
                    stride,
                    padding,
                } => {
                    let positions = he.output_positions();
                    let y = match sk {
                        Some(sk) => {
                            let xs = ndarray::Array3::from_shape_vec(
                                *input,
                                x.iter().map(|&v| v as i64).collect(),
                            )
                            .expect("shape");
                            let pts = he.encode_input(&Encoder::new(&self.params), xs.view())?;
                            he_linear_client(&self.params, ring, p, sk, &pts, &positions)?
                        }
                        None => {
                            let mut y = conv_ring(ring, &x, weight, *input, *stride, *padding);
                            for (v, b) in y.iter_mut().zip(bias) {
                                *v = ring.add(*v, ring.from_signed(*b));
                            }
                            let noise = he.noise_bound_log2(
                                self.params.degree(),
                                self.params.plaintext_modulus(),
                            );
                            he_linear_server(
                                &self.params,
                                ring,
                                self.flood_bits(),
                                p,
                                rerand.expect("the server side holds the client's public key"),
                                he.input_groups(),
                                &positions,
                                noise,
                                y,
                                |ev, cts| he.apply(ev, cts),
                            )?
                        }
                    };
                    pending = true;
                    y
                }
                Step::Dense { he, weight, bias } => {
                    let positions = he.output_positions();
                    let y = match sk {
                        Some(sk) => {
                            let xs: Vec<i64> = x.iter().map(|&v| v as i64).collect();
                            let pts = he.encode_input(&Encoder::new(&self.params), &xs)?;
                            he_linear_client(&self.params, ring, p, sk, &pts, &positions)?
                        }
                        None => {
                            let mut y = matvec_ring(ring, weight, &x);
                            for (v, b) in y.iter_mut().zip(bias) {
                                *v = ring.add(*v, ring.from_signed(*b));
                            }
                            let noise = he.noise_bound_log2(
                                self.params.degree(),
                                self.params.plaintext_modulus(),
                            );
                            he_linear_server(
                                &self.params,
                                ring,
                                self.flood_bits(),
                                p,
                                rerand.expect("the server side holds the client's public key"),
                                he.input_chunks(),
                                &positions,
                                noise,
                                y,
                                |ev, cts| he.apply(ev, cts),
                            )?
                        }
                    };
                    pending = true;
                    y
                }
                Step::SharedDense { weight, bias } => {
                    let (m, n) = weight.dim();
                    let w_share = if sk.is_none() {
                        let flat: Vec<u64> = weight.iter().map(|&v| ring.from_signed(v)).collect();
                        let (ch, rng) = p.channel_and_rng();
                        cipherml_mpc::share::share_input(ch, ring, &flat, rng)?
                    } else {
                        cipherml_mpc::share::receive_share(p.channel(), ring, m * n)?
                    };
                    let t = cipherml_mpc::triples::TripleSource::matrix(
                        &mut cipherml_mpc::triples::ot::OtTriples,
                        p,
                        ring,
                        m,
                        n,
                        1,
                    )?;
                    let mut y = arith::matmul(p, &w_share, &x, &t)?;
                    if sk.is_none() {
                        for (v, b) in y.iter_mut().zip(bias) {
                            *v = ring.add(*v, ring.from_signed(*b));
                        }
                    }
                    pending = true;
                    y
                }
                Step::Residual { body } => {
                    let (y, body_pending) =
                        self.run_steps(p, sk, rerand, body, x.clone(), pending)?;
                    // Both branches must be at the same scale before the (local) sum. If
                    // exactly one is at 2^(2f), the other is brought up by multiplying its
                    // shares by 2^f: local and exact, and the sum then has the same
                    // range as any pending activation, whereas truncating the pending one
                    // would cost a protocol round and add its rounding error; the sum's
                    // truncation stays deferred as usual, one instead of two.
                    let up = ring.from_signed(1i64 << f);
                    let lift = |v: u64, from_pending: bool| {
                        if from_pending || !(pending || body_pending) {
                            v
                        } else {
                            ring.mul(v, up)
                        }
                    };
                    let sum = x
                        .iter()
                        .zip(&y)
                        .map(|(&a, &b)| ring.add(lift(a, pending), lift(b, body_pending)))
                        .collect();
                    pending |= body_pending;
                    sum
                }
                Step::Relu => compare::relu(p, ring, &x)?,
                Step::MaxPool {
                    kernel,
                    stride,
                    input,
                } => {
                    let windows = im2col(&x, *input, *kernel, *stride);
                    max_pool_by_relu(p, ring, windows, kernel * kernel)?
                }
                Step::Reshape => x,
                Step::Sigmoid => sigmoid_pwl(p, ring, f, &x)?,
                Step::Square => {
                    let t = cipherml_mpc::triples::TripleSource::arith(
                        &mut cipherml_mpc::triples::ot::OtTriples,
                        p,
                        ring,
                        x.len(),
                    )?;
                    let y = arith::mul(p, &x, &x, &t)?;
                    pending = true;
                    y
                }
                Step::AvgPool {
                    kernel,
                    stride,
                    input,
                } => {
                    let w = kernel * kernel;
                    let c = ring.from_signed(((f as f64).exp2() / w as f64).round() as i64);
                    let y = im2col(&x, *input, *kernel, *stride)
                        .chunks(w)
                        .map(|win| ring.mul(win.iter().fold(0, |a, &v| ring.add(a, v)), c))
                        .collect();
                    pending = true;
                    y
                }
            };
            nonneg = match step {
                Step::Relu => true,
                Step::MaxPool { .. } | Step::Reshape => nonneg,
                _ => false,
            };
        }
        Ok((x, pending))
    }
}

/// Client side of one linear layer under HE: encrypts its share (one plaintext per input
/// ciphertext), receives the masked results, and returns its share of the outputs at
/// `positions` (`(output ciphertext, coefficient)`).
pub(crate) fn he_linear_client<C: Channel, R: RngCore + CryptoRng>(
    params: &Arc<BfvParameters>,
    ring: Ring,
    p: &mut Party<C, R>,
    sk: &Arc<SecretKey>,
    pts: &[cipherml_he::bfv::Plaintext],
    positions: &[(usize, usize)],
) -> Result<Vec<u64>, HybridError> {
    let dec = Decryptor::new(params, sk.clone())?;
    for pt in pts {
        let ct = dec.encrypt_symmetric(pt, p.rng())?;
        p.channel().send(&ct.to_bytes(params))?;
    }
    p.channel().flush()?;
    let blocks = positions.iter().map(|(b, _)| b + 1).max().unwrap_or(0);
    let mut coeffs = Vec::with_capacity(blocks);
    for b in 0..blocks {
        let keep: Vec<usize> = positions
            .iter()
            .filter(|(bb, _)| *bb == b)
            .map(|(_, i)| *i)
            .collect();
        let max = cipherml_he::serialize::compact_ciphertext_max_size(params, keep.len());
        let msg = p.channel().recv_limited(max)?;
        let ct = Ciphertext::from_bytes_compact(params, &msg, &keep)?;
        coeffs.push(dec.decrypt(&ct)?.coefficients().to_vec());
    }
    Ok(positions
        .iter()
        .map(|&(b, i)| coeffs[b][i] & ring.mask())
        .collect())
}

/// Server side of one linear layer under HE: receives `inputs` ciphertexts, computes
/// `apply`, subtracts a fresh uniform mask polynomial from each output, adds a fresh
/// encryption of zero under the client's public key (`rerand`), floods the noise
/// (`noise_log2 + flood_bits`), sends only the output coefficients of `c0` with `c1`, and
/// returns its share `y_s + R` of the outputs at `positions`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn he_linear_server<C: Channel, R: RngCore + CryptoRng>(
    params: &Arc<BfvParameters>,
    ring: Ring,
    flood_bits: u32,
    p: &mut Party<C, R>,
    rerand: &Encryptor,
    inputs: usize,
    positions: &[(usize, usize)],
    noise_log2: f64,
    mut y_s: Vec<u64>,
    apply: impl Fn(&Evaluator, &[Ciphertext]) -> cipherml_he::Result<Vec<Ciphertext>>,
) -> Result<Vec<u64>, HybridError> {
    // The client's inputs are fresh: at most two polynomials at the top level.
    let max = cipherml_he::serialize::ciphertext_size(params, params.max_level(), 2, false)?;
    let mut cts = Vec::with_capacity(inputs);
    for _ in 0..inputs {
        let msg = p.channel().recv_limited(max)?;
        cts.push(Ciphertext::from_bytes(params, &msg)?);
    }
    let ev = Evaluator::new(params);
    let encoder = Encoder::new(params);
    let out = apply(&ev, &cts)?;
    let t = params.plaintext_modulus();
    let n = params.degree();
    let flood = flood_log2(n, noise_log2, flood_bits);
    let zero = encoder.encode_coeffs_u64(&[])?;
    for (b, ct) in out.iter().enumerate() {
        let r: Vec<u64> = (0..n).map(|_| p.rng().random_range(0..t)).collect();
        let masked = ev.sub_plain(ct, &encoder.encode_coeffs_u64(&r)?)?;
        // A fresh public-key encryption of zero makes c1 uniform (RLWE): without it c1 is
        // a function of the weights and of the client's own (known) uniform polynomials,
        // from which the client could solve for the weights. Flooding then hides c0's noise.
        let masked = ev.add(&masked, &rerand.encrypt(&zero, p.rng())?)?;
        let flooded = ev.flood(&masked, flood, p.rng())?;
        // After flooding, |noise| <= 2^noise_log2 + 2^flood <= 2^(flood + 1): the reply is
        // switched to the fewest bits per coefficient that keep decryption exact.
        let bits = Ciphertext::compact_bits(params, flooded.level(), flood as f64 + 1.0)?;
        // Only the output coefficients of c0 are sent (the rest would only leak masked
        // garbage and cost bytes), and every coefficient rounded to `bits` bits: a
        // deterministic function of the flooded ciphertext, so it reveals nothing more.
        let keep: Vec<usize> = positions
            .iter()
            .filter(|(bb, _)| *bb == b)
            .map(|(_, i)| *i)
            .collect();
        p.channel()
            .send(&flooded.to_bytes_compact(params, &keep, bits, flood as f64 + 1.0)?)?;
        for (j, &(bb, i)) in positions.iter().enumerate() {
            if bb == b {
                y_s[j] = ring.add(y_s[j], r[i] & ring.mask());
            }
        }
    }
    p.channel().flush()?;
    Ok(y_s)
}

/// `log2` of the flooding of a reply whose computed noise is at most `2^noise_log2`:
/// `flood_bits` (statistical bits, union bound over the session included) above the noise
/// bound, the re-randomizing encryption of zero included (`|u e + e1 s + e0| <= (2N + 1)
/// 21`: ternary `u` and `s`, centered-binomial errors bounded by 21).
pub(crate) fn flood_log2(n: usize, noise_log2: f64, flood_bits: u32) -> u32 {
    let rerand_noise = ((2 * n + 1) as f64 * 21.0).log2();
    (noise_log2.max(rerand_noise) + 1.0).ceil() as u32 + flood_bits
}

/// Refuses a quantized weight above the public cap, naming the layer.
fn check_weight_cap(
    layer: &Layer,
    w: impl Iterator<Item = i64>,
    cap: u64,
    f: u32,
) -> Result<(), NnError> {
    let scale = (f as f64).exp2();
    for (index, v) in w.enumerate() {
        if v.unsigned_abs() > cap {
            return Err(NnError::WeightAboveCap {
                layer: layer.describe(),
                index,
                value: v as f64 / scale,
                cap: cap as f64 / scale,
            });
        }
    }
    Ok(())
}

/// Calls `f` on every step, residual bodies included.
fn walk_steps(steps: &[Step], f: &mut impl FnMut(&Step)) {
    for s in steps {
        f(s);
        if let Step::Residual { body } = s {
            walk_steps(body, f);
        }
    }
}

/// Coefficients one inference reveals to the client under HE (the outputs of every linear
/// layer run under BFV).
fn revealed_coefficients(steps: &[Step]) -> usize {
    let mut n = 0;
    walk_steps(steps, &mut |s| match s {
        Step::Conv { he, .. } => n += he.output_positions().len(),
        Step::Dense { he, .. } => n += he.output_positions().len(),
        _ => {}
    });
    n
}

/// `W x` in `Z_2^l` for `W` `(out, in)`.
pub(crate) fn matvec_ring(ring: Ring, w: &Array2<i64>, x: &[u64]) -> Vec<u64> {
    w.rows()
        .into_iter()
        .map(|row| {
            row.iter().zip(x).fold(0u64, |acc, (&wi, &xi)| {
                acc.wrapping_add((wi as u64).wrapping_mul(xi))
            }) & ring.mask()
        })
        .collect()
}

/// A convolution in `Z_2^l`, input `(C, H, W)` row-major.
pub(crate) fn conv_ring(
    ring: Ring,
    x: &[u64],
    w: &Array4<i64>,
    input: (usize, usize, usize),
    stride: usize,
    pad: usize,
) -> Vec<u64> {
    let (c, h, wd) = input;
    let (o, _, kh, kw) = w.dim();
    let ho = (h + 2 * pad - kh) / stride + 1;
    let wo = (wd + 2 * pad - kw) / stride + 1;
    let mut out = vec![0u64; o * ho * wo];
    for oc in 0..o {
        for y in 0..ho {
            for xx in 0..wo {
                let mut acc = 0u64;
                for ic in 0..c {
                    for pi in 0..kh {
                        for q in 0..kw {
                            let iy = (y * stride + pi) as isize - pad as isize;
                            let ix = (xx * stride + q) as isize - pad as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                let v = x[(ic * h + iy as usize) * wd + ix as usize];
                                acc = acc.wrapping_add((w[[oc, ic, pi, q]] as u64).wrapping_mul(v));
                            }
                        }
                    }
                }
                out[(oc * ho + y) * wo + xx] = acc & ring.mask();
            }
        }
    }
    out
}

/// The windows of max-pooling, each `kernel * kernel` values, in output order.
pub(crate) fn im2col(
    x: &[u64],
    input: (usize, usize, usize),
    kernel: usize,
    stride: usize,
) -> Vec<u64> {
    let (c, h, w) = input;
    let ho = (h - kernel) / stride + 1;
    let wo = (w - kernel) / stride + 1;
    let mut out = Vec::with_capacity(c * ho * wo * kernel * kernel);
    for ch in 0..c {
        for y in 0..ho {
            for xx in 0..wo {
                for p in 0..kernel {
                    for q in 0..kernel {
                        out.push(x[(ch * h + y * stride + p) * w + xx * stride + q]);
                    }
                }
            }
        }
    }
    out
}

/// Max of each window of `w` values as `max(a, b) = b + ReLU(a - b)`, a tree of pairwise
/// maxima with all pairs of a level in one batch. Valid while `|a - b| < 2^(l-1)`, which the
/// fixed-point range guarantees.
pub(crate) fn max_pool_by_relu<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    mut x: Vec<u64>,
    mut w: usize,
) -> Result<Vec<u64>, HybridError> {
    while w > 1 {
        let windows = x.len() / w;
        let half = w / 2;
        let mut diffs = Vec::with_capacity(windows * half);
        for win in x.chunks(w) {
            for i in 0..half {
                diffs.push(ring.sub(win[2 * i], win[2 * i + 1]));
            }
        }
        let r = compare::relu(p, ring, &diffs)?;
        let next_w = half + w % 2;
        let mut next = Vec::with_capacity(windows * next_w);
        for (k, win) in x.chunks(w).enumerate() {
            for i in 0..half {
                next.push(ring.add(win[2 * i + 1], r[k * half + i]));
            }
            if w % 2 == 1 {
                next.push(win[w - 1]);
            }
        }
        x = next;
        w = next_w;
    }
    Ok(x)
}

/// Knots of the piecewise-linear sigmoid: `-6, -5, ..., 6`; constant beyond.
const SIGMOID_KNOTS: std::ops::RangeInclusive<i64> = -6..=6;

/// Largest error of the hybrid mode's piecewise-linear sigmoid (also
/// [`crate::tensor::Session::sigmoid`]) against the sigmoid (chords of width 1: at most
/// `max|sigmoid''| / 8 < 0.0121`; beyond `|x| = 6`, `sigmoid(-6) < 0.0025`; plus the
/// fixed-point rounding).
pub const SIGMOID_PWL_ERROR: f64 = 0.0125;

/// The sigmoid on shares at scale `2^f` (result at scale `2^f`): the chord interpolation
/// at the integer knots in `[-6, 6]`, written as `y_0 + sum_i c_i ReLU(x - b_i)` with
/// `c_i` the change of slope at knot `b_i`. One batch of 13 exact ReLUs per element (any
/// ring width, unlike the polynomial approximations of the two-party layer, which need
/// 64 bits), local products with public constants, one faithful truncation. The slope
/// changes are quantized with 8 extra bits and the last one makes them sum to exactly zero,
/// so the output is exactly constant beyond the last knot however large `x` is.
pub(crate) fn sigmoid_pwl<C: Channel, R: RngCore + CryptoRng>(
    p: &mut Party<C, R>,
    ring: Ring,
    f: u32,
    x: &[u64],
) -> Result<Vec<u64>, HybridError> {
    const EXTRA: u32 = 8;
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let knots: Vec<i64> = SIGMOID_KNOTS.collect();
    let values: Vec<f64> = knots.iter().map(|&b| sig(b as f64)).collect();
    // Slope of the segment after knot i (0 after the last).
    let slope = |i: usize| {
        if i + 1 < values.len() {
            values[i + 1] - values[i]
        } else {
            0.0
        }
    };
    let mut coeffs: Vec<i64> = (0..knots.len())
        .map(|i| {
            let before = if i == 0 { 0.0 } else { slope(i - 1) };
            quantize(slope(i) - before, f + EXTRA)
        })
        .collect();
    let last = coeffs.len() - 1;
    coeffs[last] = -coeffs[..last].iter().sum::<i64>();
    let p0 = p.is_p0();
    let mut shifted = Vec::with_capacity(x.len() * knots.len());
    for &b in &knots {
        let c = ring.from_signed(b << f);
        shifted.extend(x.iter().map(|&v| if p0 { ring.sub(v, c) } else { v }));
    }
    let r = compare::relu(p, ring, &shifted)?;
    let y0 = ring.from_signed(quantize(values[0], 2 * f + EXTRA));
    let n = x.len();
    let y: Vec<u64> = (0..n)
        .map(|j| {
            let acc = coeffs.iter().enumerate().fold(0u64, |a, (i, &c)| {
                ring.add(a, ring.mul(r[i * n + j], ring.from_signed(c)))
            });
            if p0 {
                ring.add(acc, y0)
            } else {
                acc
            }
        })
        .collect();
    Ok(arith::trunc_faithful(p, ring, &y, f + EXTRA)?)
}

/// Sends the client's BFV public key (seeded) for `params`.
pub(crate) fn send_public_key<C: Channel, R: RngCore + CryptoRng>(
    params: &Arc<BfvParameters>,
    p: &mut Party<C, R>,
    sk: &Arc<SecretKey>,
) -> Result<(), HybridError> {
    let pk = PublicKey::new(sk, p.rng());
    p.channel().send(&pk.to_bytes(params.context()))?;
    p.channel().flush()?;
    Ok(())
}

/// Receives the client's BFV public key for `params` (decoded against them: untrusted).
pub(crate) fn receive_public_key<C: Channel, R: RngCore + CryptoRng>(
    params: &Arc<BfvParameters>,
    p: &mut Party<C, R>,
) -> Result<PublicKey, HybridError> {
    let size = cipherml_he::serialize::public_key_size(params.context());
    let msg = p.channel().recv_limited(size)?;
    Ok(PublicKey::from_bytes(params.context(), &msg)?)
}
