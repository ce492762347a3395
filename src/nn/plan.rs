//! The cost model and `explain()`: for each layer, the representations that can run it,
//! their estimated compute time, bytes and rounds, and the one chosen under a network
//! model; and [`Sequential::predict_private`], which runs the chosen mode with both parties
//! in one process.
//!
//! The constants (below, with their sources) are calibrated from `cargo run --release
//! --example bench` on a 2-core AMD EPYC, one thread per party.

use std::sync::Arc;
use std::time::Instant;

use ndarray::ArrayD;

use super::{Activation, CkksModel, Layer, NnError, PreparedModel, Sequential};
use crate::tensor::cost::{self, UPLOAD};
pub use crate::tensor::cost::{Backend, Cost, LayerPlan, NetworkModel};

/// The execution mode of a whole network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// BFV linear layers and two-party non-linear layers.
    Hybrid,
    /// Non-interactive CKKS (polynomial activations only).
    Ckks,
}

/// A network's plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The mode chosen.
    pub mode: Mode,
    /// Per layer, in order; a residual block is followed by its body's layers (one level
    /// deeper), so the plan is indexed like a pre-order walk of the model's layers.
    pub layers: Vec<LayerPlan>,
    /// Estimated totals of the chosen plan.
    pub total: Cost,
    /// Totals of the other mode, if it can run the network.
    pub alternative: Option<(Mode, Cost)>,
    net: NetworkModel,
}

/// Plans layers, walking residual bodies recursively (pre-order).
struct Planner {
    net: NetworkModel,
    polynomial: bool,
    layers: Vec<LayerPlan>,
    hybrid: Cost,
    ckks: Cost,
}

impl Planner {
    fn plan(&mut self, layers: &[Layer], input: &[usize], depth: usize) -> Result<(), NnError> {
        let shapes = super::chain_shapes(layers, input)?;
        let polynomial = self.polynomial;
        let net = self.net;
        for (layer, (input, output)) in layers.iter().zip(shapes.iter().zip(&shapes[1..])) {
            let inp: f64 = input.iter().product::<usize>() as f64;
            let out: f64 = output.iter().product::<usize>() as f64;
            let mut options: Vec<(Backend, Cost)> = Vec::new();
            match layer {
                Layer::Dense { .. } => options = cost::dense_options(inp, out, polynomial, false),
                Layer::Conv2d {
                    weight, padding, ..
                } => {
                    let (o, c, kh, kw) = weight.dim();
                    options = cost::conv_options(
                        (c, input[1] + 2 * padding, input[2] + 2 * padding),
                        (o, kh, kw),
                        out,
                        polynomial.then_some(inp),
                        false,
                    );
                }
                Layer::Relu => options.push((Backend::SharedMillionaire, cost::relu(out))),
                Layer::MaxPool { kernel, .. } => {
                    // A square window on an image, a window of `kernel` on a (C, L) sample.
                    let window = if input.len() == 2 {
                        *kernel
                    } else {
                        kernel * kernel
                    };
                    options.push((Backend::SharedReluTree, cost::relu_tree(out, window as f64)))
                }
                Layer::Square | Layer::Poly { .. } => {
                    options.push((Backend::SharedBeaver, cost::beaver_square(out)));
                    options.push((Backend::CkksPolynomial, cost::ckks_polynomial()));
                }
                Layer::Sigmoid => {
                    // The inference's sigmoid has 13 comparisons where `pwl_sigmoid` prices 7.
                    let mut c = cost::pwl_sigmoid(out);
                    c.add(&cost::pwl_sigmoid(out));
                    options.push((Backend::SharedPiecewiseLinear, c));
                    options.push((Backend::CkksSigmoid, cost::ckks_sigmoid()));
                }
                Layer::Softmax => {
                    options.push((Backend::Client, Cost::default()));
                }
                Layer::Residual { .. } | Layer::Branches { .. } => {
                    options.push((Backend::SkipAdd, Cost::default()))
                }
                Layer::Affine { scale, .. } | Layer::PRelu { slope: scale } => {
                    // A diagonal 1x1 convolution (and, for PReLU, one ReLU).
                    let c = scale.len();
                    let rest = (inp as usize / c.max(1)).max(1);
                    options = cost::conv_options(
                        (c, 1, rest),
                        (c, 1, 1),
                        out,
                        polynomial.then_some(inp),
                        false,
                    );
                    if matches!(layer, Layer::PRelu { .. }) {
                        let relu = cost::relu(out);
                        for (_, c) in options.iter_mut() {
                            c.add(&relu);
                        }
                    }
                }
                Layer::Activation(a) => {
                    let relus = match a {
                        Activation::Clip { min, max } => {
                            usize::from(min.is_finite()) + usize::from(max.is_finite())
                        }
                        Activation::LeakyRelu { .. } => 1,
                        Activation::HardSigmoid { .. } | Activation::HardSwish => 2,
                        _ => 0,
                    };
                    let mut c = Cost::default();
                    for _ in 0..relus {
                        c.add(&cost::relu(out));
                    }
                    if matches!(a, Activation::HardSwish) {
                        c.add(&cost::beaver_square(out));
                    }
                    if matches!(a, Activation::Tanh) {
                        // 13 comparisons where the sigmoid has 7.
                        let sigmoid = cost::pwl_sigmoid(out);
                        for _ in 0..2 {
                            c.add(&sigmoid);
                        }
                    }
                    options.push((Backend::SharedMillionaire, c));
                }
                _ => options.push((Backend::Local, Cost::default())),
            }
            let hybrid_choice = cost::cheapest(&options, &net, |b| !b.is_ckks());
            if let Some((_, c)) = &hybrid_choice {
                self.hybrid.add(c);
            }
            if let Some((_, c)) = options.iter().find(|(backend, _)| backend.is_ckks()) {
                self.ckks.add(c);
            }
            self.layers.push(LayerPlan {
                layer: layer.describe(),
                depth,
                chosen: hybrid_choice.map_or(Backend::Local, |(b, _)| b),
                options,
            });
            match layer {
                Layer::Residual { body } => self.plan(body, input, depth + 1)?,
                Layer::Branches { branches, .. } => {
                    for b in branches {
                        self.plan(b, input, depth + 1)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl Plan {
    /// Plans `model` under `net`.
    pub fn new(model: &Sequential, net: NetworkModel) -> Result<Self, NnError> {
        // A final softmax is the client's (on the decrypted or revealed logits).
        let layers = model.layers();
        let body = match layers.last() {
            Some(Layer::Softmax) => &layers[..layers.len() - 1],
            _ => layers,
        };
        let polynomial = body.iter().all(Layer::is_polynomial);
        let mut planner = Planner {
            net,
            polynomial,
            layers: Vec::new(),
            hybrid: Cost::default(),
            ckks: Cost {
                compute_us: 0.0,
                bytes: 2.0 * UPLOAD * 0.8,
                rounds: 1.0,
            },
        };
        planner.plan(model.layers(), model.input_shape(), 0)?;
        let Planner {
            mut layers,
            hybrid,
            ckks,
            ..
        } = planner;
        // Polynomial networks run non-interactively in CKKS (one round trip, the client
        // need not stay online); the hybrid estimate is still shown as the alternative.
        let use_ckks = polynomial;
        if use_ckks {
            for lp in &mut layers {
                if let Some(&(backend, _)) = lp.options.iter().find(|(b, _)| b.is_ckks()) {
                    lp.chosen = backend;
                }
            }
        }
        let (mode, total, alternative) = if use_ckks {
            (Mode::Ckks, ckks, Some((Mode::Hybrid, hybrid)))
        } else {
            (
                Mode::Hybrid,
                hybrid,
                polynomial.then_some((Mode::Ckks, ckks)),
            )
        };
        Ok(Self {
            mode,
            layers,
            total,
            alternative,
            net,
        })
    }

    /// The plan as text, like a database's EXPLAIN.
    pub fn explain(&self) -> String {
        let mut s = format!(
            "mode: {:?} (network: {:.0} Mbit/s, RTT {:.1} ms)\n",
            self.mode,
            self.net.bandwidth * 8.0 / 1e6,
            self.net.rtt * 1e3
        );
        for lp in &self.layers {
            let indent = "    ".repeat(lp.depth);
            s.push_str(&format!("{indent}{}\n", lp.layer));
            for (backend, c) in &lp.options {
                let mark = if *backend == lp.chosen { "*" } else { " " };
                s.push_str(&format!(
                    "{indent}  {mark} {:<40} {:>9.2} ms {:>10.1} KB {:>4} rounds\n",
                    backend,
                    c.total_us(&self.net) / 1e3,
                    c.bytes / 1e3,
                    c.rounds
                ));
            }
        }
        s.push_str(&format!(
            "estimated total: {:.1} ms, {:.2} MB, {} rounds",
            self.total.total_us(&self.net) / 1e3,
            self.total.bytes / 1e6,
            self.total.rounds
        ));
        if let Some((m, c)) = &self.alternative {
            s.push_str(&format!(
                " (alternative {:?}: {:.1} ms, {:.2} MB)",
                m,
                c.total_us(&self.net) / 1e3,
                c.bytes / 1e6
            ));
        }
        s
    }
}

/// What a private prediction cost, measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PrivateRun {
    /// The mode used.
    pub mode: Mode,
    /// Wall-clock time of the inference (key set-up excluded), microseconds.
    pub latency_us: f64,
    /// Bytes exchanged by the inference, both directions.
    pub bytes: u64,
    /// Set-up bytes (keys, base OTs).
    pub setup_bytes: u64,
}

impl Sequential {
    /// The plan of this model under `net` (see [`Plan::explain`]).
    pub fn plan(&self, net: NetworkModel) -> Result<Plan, NnError> {
        Plan::new(self, net)
    }

    /// Private prediction with both parties in this process: the mode the plan picks
    /// (non-interactive CKKS for polynomial networks, the interactive hybrid otherwise).
    pub fn predict_private(&self, x: &ArrayD<f64>) -> Result<(ArrayD<f64>, PrivateRun), NnError> {
        let plan = self.plan(NetworkModel::lan())?;
        if let Some((index, &value)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(NnError::NonFinite { index, value });
        }
        if x.shape() != self.input_shape() {
            return Err(NnError::LayerShape {
                layer: "input".into(),
                input: x.shape().to_vec(),
            });
        }
        let mut rng = cipherml_mpc::prg::os_rng();
        match plan.mode {
            Mode::Ckks => {
                use cipherml_he::ckks::{Decryptor, Encryptor, Evaluator};
                use cipherml_he::rlwe::{GaloisKeys, PublicKey, RelinKey, SecretKey};
                let (compiled, params) = CkksModel::for_model(self)?;
                let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
                let rlk = RelinKey::new(&sk, &mut rng);
                let gk = GaloisKeys::new(&sk, compiled.galois_elements(), &mut rng)?;
                let setup_bytes = (rlk.to_bytes(params.context()).len()
                    + gk.to_bytes(params.context()).len()) as u64;
                let enc = Encryptor::new(&params, PublicKey::new(&sk, &mut rng))?;
                let dec = Decryptor::new(&params, sk)?;
                let ev = Evaluator::new(&params);
                let t = Instant::now();
                let ct = cipherml_he::tensor::CkksTensor::encrypt(&enc, x, &mut rng)?;
                let out = compiled.infer(&ev, &rlk, &gk, &ct)?;
                let bytes = (ct.ct.to_bytes(&params).len() + out.ct.to_bytes(&params).len()) as u64;
                let y = compiled.finish(out.decrypt(&dec)?)?;
                Ok((
                    y,
                    PrivateRun {
                        mode: Mode::Ckks,
                        latency_us: t.elapsed().as_secs_f64() * 1e6,
                        bytes,
                        setup_bytes,
                    },
                ))
            }
            Mode::Hybrid => {
                use crate::tensor::{Role, Session, SessionConfig};
                use cipherml_mpc::net::MemoryChannel;
                let config = SessionConfig::default();
                let server_model = PreparedModel::new(self, &config, true)?;
                let client_model = PreparedModel::new(self, &config, false)?;
                let (c0, c1) = MemoryChannel::pair();
                let server_config = config.clone();
                let server = std::thread::spawn(move || -> Result<(), NnError> {
                    let mut s = Session::with_config(Role::Server, c1, server_config)?;
                    server_model.run_server(&mut s)
                });
                let mut s = Session::with_config(Role::Client, c0, config)?;
                let s0 = s.bytes();
                let t = Instant::now();
                let result = client_model.run_client(&mut s, x);
                let latency_us = t.elapsed().as_secs_f64() * 1e6;
                let s1 = s.bytes();
                // Closing the client's channel ends the server's session if the client
                // stopped early (e.g. on an invalid input).
                drop(s);
                let server_result = server.join().map_err(|_| NnError::PeerPanicked)?;
                let y = result?;
                server_result?;
                Ok((
                    y,
                    PrivateRun {
                        mode: Mode::Hybrid,
                        latency_us,
                        bytes: s1.0 + s1.1 - s0.0 - s0.1,
                        setup_bytes: s0.0 + s0.1,
                    },
                ))
            }
        }
    }
}
