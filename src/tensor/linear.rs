//! Linear maps by a matrix or convolution kernel the server holds, on a shared input:
//! prepared once ([`PreparedLinear`]: weights quantized, checked against the public cap,
//! encoded as BFV plaintexts, the representation chosen by the cost model) and applied by
//! [`Session::linear`] in every inference. [`Session::matmul`] and [`Session::conv2d`] with
//! a server matrix go through the same path, preparing on the fly; a model
//! (the model layer's `PreparedModel`) prepares once and a server caches it across sessions.
//!
//! Under BFV (coefficient encoding, Cheetah): the client encrypts its share, the server
//! applies the weights under HE and adds its own part `W x_s + b` in the clear; the
//! result comes back as shares through [`crate::link`] (mask, re-randomization, flooding
//! sized from the public cap). On shares: the weights are shared trivially (the server's
//! share is the weights, the client's zero: a valid sharing, since every protocol masks
//! what it sends) and multiplied with a Beaver matrix triple. Either way the result is at
//! scale `2^2f`: its truncation is pending, to run when an operation needs scale `2^f`
//! (after ReLU and max-pool, which commute with it, on fewer values).

use std::sync::Arc;

use cipherml_he::bfv::{BfvParameters, Encoder};
use cipherml_he::tensor::{CoeffConv2d, CoeffMatVec};
use cipherml_mpc::fixed::quantize;
use cipherml_mpc::net::Channel;
use cipherml_mpc::protocols::arith;
use cipherml_mpc::triples::TripleSource as _;
use ndarray::{Array2, Array4, ArrayView1, ArrayView2, ArrayView4};

use super::config::SessionConfig;
use super::cost::{self, Backend, Cost, LayerPlan};
use super::kernels::{conv_patches, conv_ring, matvec_ring};
use super::{PrivateTensor, Session, TensorError};

#[derive(Debug, Clone)]
enum Kind {
    Dense {
        he: Option<CoeffMatVec>,
        weight: Array2<i64>,
    },
    Conv {
        he: Option<CoeffConv2d>,
        weight: Array4<i64>,
        input: (usize, usize, usize),
        stride: usize,
        padding: usize,
    },
}

/// A linear map the server holds, prepared for a session configuration: weights
/// quantized at `2^f` and checked against the public cap, bias at `2^2f`, the
/// representation chosen by the cost model under the configuration's network, and (under
/// BFV) the weights encoded once. The client's copy is built from the shapes alone (zero
/// weights): it needs only the layout. Both parties must prepare with the same
/// configuration; the choice is then the same on both sides.
#[derive(Debug, Clone)]
pub struct PreparedLinear {
    kind: Kind,
    bias: Vec<i64>,
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    label: String,
    chosen: Backend,
    options: Vec<(Backend, Cost)>,
    /// `log2` of the bound on the noise of a reply (BFV only).
    noise_log2: f64,
}

/// Refuses a quantized weight above the public cap, naming the layer.
fn check_cap(
    label: &str,
    w: impl Iterator<Item = i64>,
    cap: u64,
    f: u32,
) -> Result<(), TensorError> {
    let scale = (f as f64).exp2();
    for (index, v) in w.enumerate() {
        if v.unsigned_abs() > cap {
            return Err(TensorError::WeightAboveCap {
                layer: label.to_string(),
                index,
                value: v as f64 / scale,
                cap: cap as f64 / scale,
            });
        }
    }
    Ok(())
}

/// Refuses a linear map whose flooded replies would not decrypt at these parameters.
pub(super) fn check_flood(
    params: &BfvParameters,
    config: &SessionConfig,
    label: &str,
    noise_log2: f64,
) -> Result<(), TensorError> {
    let n = params.degree();
    let t = params.plaintext_modulus();
    let flood = crate::link::flood_log2(n, noise_log2, config.reply_flood_bits());
    let room = params.context().q().log2_product() - (t as f64).log2() - 2.0;
    if flood as f64 >= room {
        return Err(TensorError::NotSupportedInMode {
            layer: label.to_string(),
            mode: "hybrid",
            reason: format!(
                "flooding of 2^{flood} (noise bound 2^{noise_log2:.1}, {} statistical bits, {} \
                 bits of union bound over a session) exceeds the room of 2^{room:.1} at these \
                 parameters",
                config.flood_bits, config.reveal_log2
            ),
        });
    }
    Ok(())
}

/// The bias at the product's scale `2^2f`: quantized at `2^f` and lifted, exactly as
/// [`Session::add`] lifts a value at `2^f` to a product's scale, so that a model and the
/// same program written with `linear` (or `matmul`) and `add` agree to the bit.
fn quantized_bias(bias: Option<ArrayView1<'_, f64>>, len: usize, f: u32) -> Vec<i64> {
    match bias {
        Some(b) => b
            .iter()
            .map(|&v| quantize(v, f).wrapping_mul(1i64 << f))
            .collect(),
        None => vec![0; len],
    }
}

/// The input chunk of a dense layer under BFV (`outputs x inputs`, coefficient encoding)
/// that costs least under the session's network model (the cost of
/// [`super::held::coefficient_product_cost`]): the whole input in one ciphertext
/// (`N / inputs` outputs to a reply), or split in `s` chunks (`s` input ciphertexts whose
/// products are summed, `N / chunk` outputs to a reply). Fewer replies pay for a wide layer
/// with many outputs (784 x 128: three chunks, 5 replies instead of 13), never for more bytes
/// than one chunk sends. Public shapes only, so client and server choose alike; chunks
/// whose flooding would not fit are skipped.
fn dense_chunk(
    params: &BfvParameters,
    config: &SessionConfig,
    (outputs, inputs): (usize, usize),
) -> usize {
    let big_n = params.degree();
    let whole = inputs.clamp(1, big_n);
    let cost = |chunk: usize| {
        super::held::coefficient_product_cost(
            params,
            (outputs, inputs, 1),
            super::held::HeldLayout::chunked(chunk),
        )
    };
    let most_bytes = cost(whole).bytes;
    let fits = |chunk: usize| {
        let noise = cipherml_he::tensor::product_noise_log2(
            inputs.div_ceil(chunk),
            big_n,
            params.plaintext_modulus(),
            config.weight_cap(),
            (big_n / chunk).min(outputs) * chunk,
            cipherml_he::tensor::FRESH_NOISE_LOG2,
        );
        check_flood(params, config, "dense", noise).is_ok()
    };
    // Never more bytes than the whole input in one ciphertext.
    (1..=8)
        .map(|s| inputs.div_ceil(s).clamp(1, big_n))
        .filter(|&c| c == whole || (cost(c).bytes <= most_bytes && fits(c)))
        .min_by(|&a, &b| {
            let (ca, cb) = (cost(a), cost(b));
            ca.total_us(&config.network)
                .total_cmp(&cb.total_us(&config.network))
        })
        .unwrap_or(whole)
}

/// The input channels to a ciphertext of a convolution under BFV that cost least under
/// the session's network model: all that fit (fewest uploads), or fewer, which leaves room
/// for more output channels to a reply (16 -> 16 channels of 3x3 on 32x32: 3 to an input,
/// 6 uploads and 8 replies, instead of 7: 3 uploads and 16 replies). Public shapes only,
/// so client and server choose alike; groups whose flooding would not fit are skipped.
fn conv_group(
    params: &BfvParameters,
    config: &SessionConfig,
    kernel: (usize, usize, usize, usize),
    input: (usize, usize),
    (padding, stride, outputs): (usize, usize, f64),
) -> usize {
    let big_n = params.degree();
    let (_, c, kh, kw) = kernel;
    let most = CoeffConv2d::max_group(big_n, c, input, padding);
    (1..=most)
        .filter_map(|g| {
            let lay = CoeffConv2d::layout(big_n, kernel, input, padding, stride, g).ok()?;
            let noise = cipherml_he::tensor::product_noise_log2(
                lay.inputs,
                big_n,
                params.plaintext_modulus(),
                config.weight_cap(),
                lay.per_ct * g * kh * kw,
                cipherml_he::tensor::FRESH_NOISE_LOG2,
            );
            let fits = g == most || check_flood(params, config, "conv2d", noise).is_ok();
            let c = cost::bfv_linear(
                lay.inputs as f64,
                lay.window.len() as f64,
                lay.blocks as f64,
                outputs,
            );
            fits.then_some((g, c.total_us(&config.network)))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(most, |(g, _)| g)
}

impl PreparedLinear {
    /// A dense map `x -> W x + b` with `W` of shape `(outputs, inputs)`. `weight` and
    /// `bias` are the server's (`None` on the client: zeros of the same shapes).
    pub fn dense(
        params: &Arc<BfvParameters>,
        config: &SessionConfig,
        label: &str,
        (outputs, inputs): (usize, usize),
        weight: Option<ArrayView2<'_, f64>>,
        bias: Option<ArrayView1<'_, f64>>,
    ) -> Result<Self, TensorError> {
        let f = config.frac_bits;
        let w = weight.map(|w| w.mapv(|v| quantize(v, f)));
        Self::dense_quantized(params, config, label, (outputs, inputs), w, bias)
    }

    /// As [`PreparedLinear::dense`] with the weights already quantized at `2^f` (e.g. a
    /// server's share of a value it provided with [`Session::input`]).
    pub fn dense_quantized(
        params: &Arc<BfvParameters>,
        config: &SessionConfig,
        label: &str,
        (outputs, inputs): (usize, usize),
        weight: Option<Array2<i64>>,
        bias: Option<ArrayView1<'_, f64>>,
    ) -> Result<Self, TensorError> {
        let f = config.frac_bits;
        let w = match weight {
            Some(w) if w.dim() != (outputs, inputs) => {
                return Err(TensorError::Shape {
                    what: "dense weights (outputs, inputs)",
                    left: vec![outputs, inputs],
                    right: w.shape().to_vec(),
                })
            }
            Some(w) => w,
            None => Array2::zeros((outputs, inputs)),
        };
        if bias.is_some_and(|b| b.len() != outputs) {
            return Err(TensorError::Shape {
                what: "dense bias",
                left: vec![outputs],
                right: vec![bias.map_or(0, |b| b.len())],
            });
        }
        check_cap(label, w.iter().copied(), config.weight_cap(), f)?;
        let dealer = matches!(config.triples, super::Triples::Dealer { .. });
        let options = cost::dense_options(inputs as f64, outputs as f64, false, dealer);
        let (chosen, _) = cost::cheapest(&options, &config.network, |_| true).expect("two options");
        let (he, noise_log2) = if chosen.is_bfv() {
            let chunk = dense_chunk(params, config, (outputs, inputs));
            let he = CoeffMatVec::new_chunked(
                &Encoder::new(params),
                w.view(),
                config.weight_cap(),
                chunk,
            )?;
            let noise = he.noise_bound_log2(params.degree(), params.plaintext_modulus());
            check_flood(params, config, label, noise)?;
            (Some(he), noise)
        } else {
            (None, 0.0)
        };
        Ok(Self {
            kind: Kind::Dense { he, weight: w },
            bias: quantized_bias(bias, outputs, f),
            input_shape: vec![inputs],
            output_shape: vec![outputs],
            label: label.to_string(),
            chosen,
            options,
            noise_log2,
        })
    }

    /// A 2-D convolution of a `(C, H, W)` input by kernels `(O, C, kh, kw)` with symmetric
    /// zero padding, plus a bias per output channel. `weight` and `bias` are the server's
    /// (`None` on the client).
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        params: &Arc<BfvParameters>,
        config: &SessionConfig,
        label: &str,
        input: (usize, usize, usize),
        kernel: (usize, usize, usize, usize),
        stride: usize,
        padding: usize,
        weight: Option<ArrayView4<'_, f64>>,
        bias: Option<ArrayView1<'_, f64>>,
    ) -> Result<Self, TensorError> {
        let (c, h, wd) = input;
        let (o, kc, kh, kw) = kernel;
        if kc != c || stride == 0 || h + 2 * padding < kh || wd + 2 * padding < kw {
            return Err(TensorError::Shape {
                what: "conv2d weights (O, C, kh, kw) against the input (C, H, W)",
                left: vec![c, h, wd],
                right: vec![o, kc, kh, kw],
            });
        }
        let f = config.frac_bits;
        let w = match weight {
            Some(w) if w.dim() != kernel => {
                return Err(TensorError::Shape {
                    what: "conv2d weights",
                    left: vec![o, kc, kh, kw],
                    right: w.shape().to_vec(),
                })
            }
            Some(w) => w.mapv(|v| quantize(v, f)),
            None => Array4::zeros(kernel),
        };
        if bias.is_some_and(|b| b.len() != o) {
            return Err(TensorError::Shape {
                what: "conv2d bias",
                left: vec![o],
                right: vec![bias.map_or(0, |b| b.len())],
            });
        }
        check_cap(label, w.iter().copied(), config.weight_cap(), f)?;
        let ho = (h + 2 * padding - kh) / stride + 1;
        let wo = (wd + 2 * padding - kw) / stride + 1;
        let outputs = (o * ho * wo) as f64;
        let options = cost::conv_options(
            (c, h + 2 * padding, wd + 2 * padding),
            (o, kh, kw),
            outputs,
            None,
            matches!(config.triples, super::Triples::Dealer { .. }),
        );
        let (chosen, _) = cost::cheapest(&options, &config.network, |_| true).expect("two options");
        let (he, noise_log2) = if chosen.is_bfv() {
            let group = conv_group(params, config, kernel, (h, wd), (padding, stride, outputs));
            let he = CoeffConv2d::new_grouped(
                &Encoder::new(params),
                w.view(),
                (h, wd),
                padding,
                stride,
                config.weight_cap(),
                group,
            )?;
            let noise = he.noise_bound_log2(params.degree(), params.plaintext_modulus());
            check_flood(params, config, label, noise)?;
            (Some(he), noise)
        } else {
            (None, 0.0)
        };
        let per_channel = quantized_bias(bias, o, f);
        let bias = (0..o * ho * wo)
            .map(|i| per_channel[i / (ho * wo)])
            .collect();
        Ok(Self {
            kind: Kind::Conv {
                he,
                weight: w,
                input,
                stride,
                padding,
            },
            bias,
            input_shape: vec![c, h, wd],
            output_shape: vec![o, ho, wo],
            label: label.to_string(),
            chosen,
            options,
            noise_log2,
        })
    }

    /// The input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// The output shape.
    pub fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }

    /// The representation chosen, and every option with its estimated cost.
    pub fn plan(&self) -> (Backend, &[(Backend, Cost)]) {
        (self.chosen, &self.options)
    }

    /// Coefficients of encrypted replies one application reveals to the client (0 on
    /// shares).
    pub fn revealed_coefficients(&self) -> usize {
        match &self.kind {
            Kind::Dense { he: Some(he), .. } => he.output_positions().len(),
            Kind::Conv { he: Some(he), .. } => he.output_positions().len(),
            _ => 0,
        }
    }

    /// `log2` of the bound on a reply's noise before flooding (0 on shares).
    pub fn noise_log2(&self) -> f64 {
        self.noise_log2
    }
}

impl<C: Channel> Session<C> {
    /// `W x + b` for a prepared linear map the server holds (see [`PreparedLinear`]): under
    /// BFV or on shares as prepared; the result is shared at scale `2^2f` (truncation
    /// pending). The input is brought to scale `2^f` first if its truncation is pending.
    pub fn linear(
        &mut self,
        x: &PrivateTensor,
        w: &PreparedLinear,
    ) -> Result<PrivateTensor, TensorError> {
        if x.shape().iter().product::<usize>() != w.input_shape.iter().product::<usize>() {
            return Err(TensorError::Shape {
                what: "linear map input",
                left: x.shape(),
                right: w.input_shape.clone(),
            });
        }
        self.log.push(LayerPlan {
            layer: w.label.clone(),
            depth: 0,
            chosen: w.chosen,
            options: w.options.clone(),
        });
        let (xs, _) = self.shares_of(x)?;
        let y = self.linear_shares(&xs, w)?;
        Ok(PrivateTensor::Shared {
            share: y,
            shape: w.output_shape.clone(),
            frac_bits: 2 * self.fixed.frac_bits(),
            nonneg: false,
            held_by: None,
        })
    }

    pub(super) fn linear_shares(
        &mut self,
        xs: &[u64],
        w: &PreparedLinear,
    ) -> Result<Vec<u64>, TensorError> {
        let ring = self.fixed.ring();
        let server = self.role == super::Role::Server;
        let mut y = match &w.kind {
            Kind::Dense {
                he: Some(he),
                weight,
            } => {
                return self.bfv_linear(
                    w,
                    he.output_positions(),
                    (he.input_chunks(), he.input_window()),
                    |encoder| {
                        let xi: Vec<i64> = xs.iter().map(|&v| v as i64).collect();
                        he.encode_input(encoder, &xi)
                    },
                    || matvec_ring(ring, weight, xs),
                    |ev, cts| he.apply(ev, cts),
                )
            }
            Kind::Conv {
                he: Some(he),
                weight,
                input,
                stride,
                padding,
            } => {
                return self.bfv_linear(
                    w,
                    he.output_positions(),
                    (he.input_groups(), he.input_window()),
                    |encoder| {
                        let x3 = ndarray::Array3::from_shape_vec(
                            *input,
                            xs.iter().map(|&v| v as i64).collect(),
                        )
                        .expect("shape checked");
                        he.encode_input(encoder, x3.view())
                    },
                    || conv_ring(ring, xs, weight, *input, *stride, *padding),
                    |ev, cts| he.apply(ev, cts),
                )
            }
            Kind::Dense { he: None, weight } => {
                let (m, k) = weight.dim();
                self.shares_product(w.chosen, weight.iter().copied(), xs, (m, k, 1))?
            }
            Kind::Conv {
                he: None,
                weight,
                input,
                stride,
                padding,
            } => {
                let (o, c, kh, kw) = weight.dim();
                let patches = conv_patches(xs, *input, (kh, kw), *stride, *padding);
                let cols = patches.len() / (c * kh * kw);
                self.shares_product(
                    w.chosen,
                    weight.iter().copied(),
                    &patches,
                    (o, c * kh * kw, cols),
                )?
            }
        };
        if server {
            add_signed(ring, &mut y, &w.bias);
        }
        Ok(y)
    }

    /// One linear map under BFV through the link protocol: the client encrypts its share
    /// (`encode`) and sends it at `window`, the server adds its own part `W x_s + b`
    /// (`server_part`) to the masked result of `apply` on the client's ciphertexts
    /// (`inputs` of them), flooded for the session; each party returns its share of the
    /// outputs at `positions`.
    #[allow(clippy::too_many_arguments)]
    fn bfv_linear(
        &mut self,
        w: &PreparedLinear,
        positions: Vec<(usize, usize)>,
        (inputs, window): (usize, cipherml_he::bfv::CoeffWindow),
        encode: impl FnOnce(&Encoder) -> cipherml_he::Result<Vec<cipherml_he::bfv::Plaintext>>,
        server_part: impl FnOnce() -> Vec<u64>,
        apply: impl Fn(
            &cipherml_he::bfv::Evaluator,
            &[cipherml_he::bfv::Ciphertext],
        ) -> cipherml_he::Result<Vec<cipherml_he::bfv::Ciphertext>>,
    ) -> Result<Vec<u64>, TensorError> {
        let ring = self.fixed.ring();
        let flood_bits = self.reveal_flood_bits(positions.len())?;
        match &self.sk {
            Some(sk) => {
                let pts = encode(&Encoder::new(&self.params))?;
                crate::link::bfv_linear_client(
                    &self.params,
                    ring,
                    &mut self.party,
                    sk,
                    (&pts, window),
                    &positions,
                )
            }
            None => {
                let mut y_s = server_part();
                add_signed(ring, &mut y_s, &w.bias);
                crate::link::bfv_linear_server(
                    &self.params,
                    ring,
                    flood_bits,
                    &mut self.party,
                    super::he::server_key(&self.rerand)?,
                    (inputs, window),
                    &positions,
                    w.noise_log2,
                    y_s,
                    apply,
                )
            }
        }
    }

    /// `W X` on shares for the server's `W` (`m x k`) and shared `X` (`k x n`): by the
    /// one-way OT product, or with a Beaver matrix triple (a dealer's) on the trivial
    /// sharing of `W`.
    fn shares_product(
        &mut self,
        backend: Backend,
        weight: impl ExactSizeIterator<Item = i64>,
        x: &[u64],
        (m, k, n): (usize, usize, usize),
    ) -> Result<Vec<u64>, TensorError> {
        let ring = self.fixed.ring();
        let w_share = self.trivial_share(weight);
        Ok(if backend == Backend::SharedOtProduct {
            let mine = (self.role == super::Role::Server).then_some(w_share.as_slice());
            arith::matmul_owned(
                &mut self.party,
                ring,
                cipherml_mpc::share::PartyId::P1,
                mine,
                x,
                m,
                k,
                n,
            )?
        } else {
            let t = self.triples.matrix(&mut self.party, ring, m, k, n)?;
            arith::matmul(&mut self.party, &w_share, x, &t)?
        })
    }

    /// The server's trivial share of its own values (the values themselves); the client's
    /// is zero. No message.
    fn trivial_share(&self, v: impl ExactSizeIterator<Item = i64>) -> Vec<u64> {
        let ring = self.fixed.ring();
        if self.role == super::Role::Server {
            v.map(|x| ring.from_signed(x)).collect()
        } else {
            vec![0; v.len()]
        }
    }
}

fn add_signed(ring: cipherml_mpc::ring::Ring, y: &mut [u64], b: &[i64]) {
    for (v, &b) in y.iter_mut().zip(b) {
        *v = ring.add(*v, ring.from_signed(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wide dense layer with many outputs splits its input (784 x 128: three chunks of
    /// 262, each sent at 6837 coefficients, and 5 replies instead of 13) and sends fewer
    /// bytes for it; narrow ones keep the whole
    /// input in one ciphertext (LeNet's 256 x 120, 120 x 84); the choice is the same for
    /// both parties (shapes only) and every chunk's flooding fits.
    #[test]
    fn dense_layers_split_their_input_only_where_it_pays() {
        let config = SessionConfig::default();
        let params = Arc::new(BfvParameters::new(&config.bfv_literal()).unwrap());
        assert_eq!(dense_chunk(&params, &config, (128, 784)), 262);
        assert_eq!(dense_chunk(&params, &config, (120, 256)), 256);
        assert_eq!(dense_chunk(&params, &config, (84, 120)), 120);
        assert_eq!(dense_chunk(&params, &config, (10, 20000)), 6667);
        let w = ndarray::Array2::from_shape_fn((128, 784), |(i, j)| ((i + j) % 7) as f64 - 3.0);
        let layer = PreparedLinear::dense(&params, &config, "fc", (128, 784), Some(w.view()), None)
            .unwrap();
        match &layer.kind {
            Kind::Dense { he: Some(he), .. } => {
                assert_eq!((he.input_chunks(), he.output_blocks()), (3, 5));
                assert_eq!(he.input_window().len(), 262 * 26 + 25);
            }
            _ => panic!("the 784 x 128 layer runs under BFV"),
        }
    }
}
