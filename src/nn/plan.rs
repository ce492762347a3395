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

use super::{CkksModel, HybridConfig, HybridError, HybridModel, Layer, NnError, Sequential};

/// Bandwidth and round-trip time between client and server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetworkModel {
    /// Bytes per second.
    pub bandwidth: f64,
    /// Round-trip time in seconds.
    pub rtt: f64,
}

impl NetworkModel {
    /// A LAN: 1 Gbit/s, 0.2 ms.
    pub fn lan() -> Self {
        Self {
            bandwidth: 125e6,
            rtt: 0.2e-3,
        }
    }

    /// A WAN: 100 Mbit/s, 40 ms.
    pub fn wan() -> Self {
        Self {
            bandwidth: 12.5e6,
            rtt: 40e-3,
        }
    }
}

/// An estimated cost.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cost {
    /// Compute time, microseconds.
    pub compute_us: f64,
    /// Bytes, both directions.
    pub bytes: f64,
    /// Communication rounds.
    pub rounds: f64,
}

impl Cost {
    /// Total time under `net`, microseconds.
    pub fn total_us(&self, net: &NetworkModel) -> f64 {
        self.compute_us + self.bytes / net.bandwidth * 1e6 + self.rounds * net.rtt * 1e6
    }

    fn add(&mut self, o: &Cost) {
        self.compute_us += o.compute_us;
        self.bytes += o.bytes;
        self.rounds += o.rounds;
    }
}

/// The execution mode of a whole network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// BFV linear layers and two-party non-linear layers.
    Hybrid,
    /// Non-interactive CKKS (polynomial activations only).
    Ckks,
}

/// A representation that can run a layer or an operation: what the plan chooses and
/// [`Plan::explain`] prints (its `Display` is the label shown there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// A linear layer under BFV with coefficient encoding (the client's input encrypted,
    /// the result masked back into shares).
    BfvCoefficient,
    /// A linear layer on secret shares, with a Beaver matrix triple.
    SharedMatrixTriple,
    /// A linear layer under CKKS (the diagonal method).
    CkksDiagonal,
    /// ReLU on secret shares: the millionaire protocol, exact.
    SharedMillionaire,
    /// Max-pool on secret shares: a tree of exact ReLUs.
    SharedReluTree,
    /// A square or polynomial on secret shares, with Beaver triples.
    SharedBeaver,
    /// A square or polynomial under CKKS (one or more levels).
    CkksPolynomial,
    /// Sigmoid on secret shares: piecewise linear, 13 exact ReLUs.
    SharedPiecewiseLinear,
    /// Sigmoid under CKKS: a degree-7 approximation on [-8, 8].
    CkksSigmoid,
    /// Computed by the client on the revealed output (softmax).
    Client,
    /// A residual block's skip connection: a local add (shares or slots).
    SkipAdd,
    /// Local on shares or slots (reshapes, average pools, ...).
    Local,
}

impl Backend {
    /// The label [`Plan::explain`] prints.
    pub fn label(self) -> &'static str {
        match self {
            Backend::BfvCoefficient => "BFV coefficient encoding + shares",
            Backend::SharedMatrixTriple => "secret shares (Beaver matrix triple)",
            Backend::CkksDiagonal => "CKKS diagonal method",
            Backend::SharedMillionaire => "secret shares (millionaire, exact)",
            Backend::SharedReluTree => "secret shares (tree of ReLUs, exact)",
            Backend::SharedBeaver => "secret shares (Beaver triples)",
            Backend::CkksPolynomial => "CKKS (one or more levels)",
            Backend::SharedPiecewiseLinear => "secret shares (piecewise linear, 13 exact ReLUs)",
            Backend::CkksSigmoid => "CKKS (degree-7 approximation on [-8, 8])",
            Backend::Client => "client, on the revealed output",
            Backend::SkipAdd => "skip connection: local add (shares / slots)",
            Backend::Local => "local on shares / slots",
        }
    }

    /// Whether it runs under CKKS (only in the non-interactive mode).
    pub fn is_ckks(self) -> bool {
        matches!(
            self,
            Backend::CkksDiagonal | Backend::CkksPolynomial | Backend::CkksSigmoid
        )
    }

    /// Whether it runs under BFV.
    pub fn is_bfv(self) -> bool {
        matches!(self, Backend::BfvCoefficient)
    }

    /// Whether it is a two-party protocol on secret shares.
    pub fn is_shared(self) -> bool {
        matches!(
            self,
            Backend::SharedMatrixTriple
                | Backend::SharedMillionaire
                | Backend::SharedReluTree
                | Backend::SharedBeaver
                | Backend::SharedPiecewiseLinear
        )
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so that width and alignment (`{:<40}`) apply.
        f.pad(self.label())
    }
}

/// The plan of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerPlan {
    /// The layer.
    pub layer: String,
    /// Residual blocks enclosing the layer (0 at the top level).
    pub depth: usize,
    /// The representation chosen.
    pub chosen: Backend,
    /// Every representation that can run it, with its estimated cost.
    pub options: Vec<(Backend, Cost)>,
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

// Calibrated from `bench -- nn` and `bench -- mpc` on the development machine: a seeded
// upload ciphertext; a compact reply (c1 at 55 bits per coefficient, c0 at the outputs);
// one ReLU in Z_2^40 with 5-bit millionaire digits; one truncation of a value known
// non-negative (the usual case: deferred past a ReLU).
const N: f64 = 8192.0;
const UPLOAD: f64 = 178_264.0;
const REPLY: f64 = 60_000.0;
const RELU_BYTES: f64 = 600.0;
const RELU_US: f64 = 6.0;
const TRUNC_BYTES: f64 = 300.0;
const ROT_US: f64 = 800.0;

pub(crate) fn bfv_linear(in_cts: f64, out_cts: f64, outputs: f64) -> Cost {
    Cost {
        compute_us: in_cts * out_cts * 40.0 + out_cts * 600.0 + in_cts * 500.0,
        bytes: in_cts * UPLOAD + out_cts * REPLY + outputs * 22.0 + outputs * TRUNC_BYTES,
        rounds: 1.0 + 8.0,
    }
}

pub(crate) fn shared_linear(m: f64, k: f64, n: f64) -> Cost {
    // Matrix triple from OT (Gilboa, one vector OLE per row and column) plus openings.
    let l = 40.0;
    Cost {
        compute_us: m * k * n * 0.01 + (m * k + k * n) * l * 0.05,
        bytes: (m * k + k * n) * l * (16.0 + l / 8.0)
            + 2.0 * (m * k + k * n) * l / 8.0
            + m * n * TRUNC_BYTES,
        rounds: 3.0 + 8.0,
    }
}

fn ckks_linear(rows: f64, period: f64) -> Cost {
    let diag = rows.max(1.0);
    let rotations = 2.0 * diag.sqrt() + (period / rows).max(1.0).log2();
    Cost {
        compute_us: rotations * ROT_US + diag * 30.0,
        bytes: 0.0,
        rounds: 0.0,
    }
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
                Layer::Dense { .. } => {
                    let chunk = inp.min(N);
                    let rpb = (N / chunk).floor();
                    options.push((
                        Backend::BfvCoefficient,
                        bfv_linear((inp / chunk).ceil(), (out / rpb).ceil(), out),
                    ));
                    options.push((Backend::SharedMatrixTriple, shared_linear(out, inp, 1.0)));
                    if polynomial {
                        options.push((
                            Backend::CkksDiagonal,
                            ckks_linear(out, (inp.max(out) as usize).next_power_of_two() as f64),
                        ));
                    }
                }
                Layer::Conv2d {
                    weight, padding, ..
                } => {
                    let (o, c, kh, kw) = weight.dim();
                    let hw = ((input[1] + 2 * padding) * (input[2] + 2 * padding)) as f64;
                    let group = (N / hw).floor().min(c as f64).max(1.0);
                    let spacing = group * hw * 2.0;
                    let per_ct = (N / spacing).floor().max(1.0);
                    options.push((
                        Backend::BfvCoefficient,
                        bfv_linear((c as f64 / group).ceil(), (o as f64 / per_ct).ceil(), out),
                    ));
                    options.push((
                        Backend::SharedMatrixTriple,
                        shared_linear(out / o as f64, (c * kh * kw) as f64, o as f64),
                    ));
                    if polynomial {
                        options.push((
                            Backend::CkksDiagonal,
                            ckks_linear(out, (inp.max(out) as usize).next_power_of_two() as f64),
                        ));
                    }
                }
                Layer::Relu => {
                    options.push((
                        Backend::SharedMillionaire,
                        Cost {
                            compute_us: out * RELU_US,
                            bytes: out * RELU_BYTES,
                            rounds: 8.0,
                        },
                    ));
                }
                Layer::MaxPool { kernel, .. } => {
                    let w = (kernel * kernel) as f64;
                    options.push((
                        Backend::SharedReluTree,
                        Cost {
                            compute_us: out * (w - 1.0) * RELU_US,
                            bytes: out * (w - 1.0) * RELU_BYTES,
                            rounds: 8.0 * w.log2().ceil(),
                        },
                    ));
                }
                Layer::Square | Layer::Poly { .. } => {
                    options.push((
                        Backend::SharedBeaver,
                        Cost {
                            compute_us: out * 3.0,
                            bytes: out * (40.0 * 21.0 + 10.0 + TRUNC_BYTES),
                            rounds: 2.0 + 8.0,
                        },
                    ));
                    options.push((
                        Backend::CkksPolynomial,
                        Cost {
                            compute_us: 900.0,
                            bytes: 0.0,
                            rounds: 0.0,
                        },
                    ));
                }
                Layer::Sigmoid => {
                    options.push((
                        Backend::SharedPiecewiseLinear,
                        Cost {
                            compute_us: out * 13.0 * RELU_US,
                            bytes: out * (13.0 * RELU_BYTES + TRUNC_BYTES),
                            rounds: 8.0 + 8.0,
                        },
                    ));
                    options.push((
                        Backend::CkksSigmoid,
                        Cost {
                            compute_us: 3000.0,
                            bytes: 0.0,
                            rounds: 0.0,
                        },
                    ));
                }
                Layer::Softmax => {
                    options.push((Backend::Client, Cost::default()));
                }
                Layer::Residual { .. } => options.push((Backend::SkipAdd, Cost::default())),
                _ => options.push((Backend::Local, Cost::default())),
            }
            let hybrid_choice = options
                .iter()
                .filter(|(backend, _)| !backend.is_ckks())
                .min_by(|a, b| {
                    a.1.total_us(&net)
                        .partial_cmp(&b.1.total_us(&net))
                        .expect("finite")
                })
                .cloned();
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
            if let Layer::Residual { body } = layer {
                self.plan(body, input, depth + 1)?;
            }
        }
        Ok(())
    }
}

impl Plan {
    /// Plans `model` under `net`.
    pub fn new(model: &Sequential, net: NetworkModel) -> Result<Self, NnError> {
        let polynomial = model.layers().iter().all(Layer::is_polynomial);
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
    pub fn predict_private(
        &self,
        x: &ArrayD<f64>,
    ) -> Result<(ArrayD<f64>, PrivateRun), HybridError> {
        let plan = self.plan(NetworkModel::lan())?;
        if let Some((index, &value)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(NnError::NonFinite { index, value }.into());
        }
        if x.shape() != self.input_shape() {
            return Err(NnError::Shape {
                layer: "input".into(),
                input: x.shape().to_vec(),
            }
            .into());
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
                let y = out.decrypt(&dec)?;
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
                use cipherml_mpc::net::{Channel, MemoryChannel};
                use cipherml_mpc::party::Party;
                use cipherml_mpc::share::PartyId;
                let config = HybridConfig::default();
                let server_model = HybridModel::compile(self, &config, true)?;
                let client_model = HybridModel::compile(self, &config, false)?;
                let (c0, c1) = MemoryChannel::pair();
                let server = std::thread::spawn(move || -> Result<(), HybridError> {
                    let mut p = Party::setup(PartyId::P1, c1, cipherml_mpc::prg::os_rng())?;
                    let pk = server_model.receive_public_key(&mut p)?;
                    server_model.run_server(&mut p, &pk)
                });
                let mut p = Party::setup(PartyId::P0, c0, cipherml_mpc::prg::os_rng())?;
                let sk = Arc::new(cipherml_he::rlwe::SecretKey::random(
                    client_model.params().context(),
                    &mut rng,
                ));
                client_model.send_public_key(&mut p, &sk)?;
                let s0 = p.channel().stats();
                let t = Instant::now();
                let result = client_model.run_client(&mut p, &sk, x);
                let latency_us = t.elapsed().as_secs_f64() * 1e6;
                let s1 = p.channel().stats();
                // Closing the client's channel ends the server's session if the client
                // stopped early (e.g. on an invalid input).
                drop(p);
                let server_result = server
                    .join()
                    .map_err(|_| HybridError::Tensor(crate::tensor::TensorError::PeerPanicked))?;
                let y = result?;
                server_result?;
                Ok((
                    y,
                    PrivateRun {
                        mode: Mode::Hybrid,
                        latency_us,
                        bytes: s1.bytes_sent + s1.bytes_received
                            - s0.bytes_sent
                            - s0.bytes_received,
                        setup_bytes: s0.bytes_sent + s0.bytes_received,
                    },
                ))
            }
        }
    }
}
