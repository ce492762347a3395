//! The cost model: what each representation costs to run an operation (estimated compute
//! time, bytes and rounds) and the network model that turns it into time. The engine's
//! dispatch ([`super::Session`]) and the model planner (the model layer's `Plan`) use these same
//! functions, so the plan that `explain` prints is the plan that runs.
//!
//! The constants are calibrated from `cargo run --release --example bench` on a 2-core AMD
//! EPYC, one thread per party.

use cipherml_he::tensor::{CoeffConv2d, CoeffMatVec};

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

    /// Adds `o` to this cost.
    pub fn add(&mut self, o: &Cost) {
        self.compute_us += o.compute_us;
        self.bytes += o.bytes;
        self.rounds += o.rounds;
    }
}

/// A representation that can run a layer or an operation: what the plan chooses and
/// `explain` prints (its `Display` is the label shown there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// A linear layer under BFV with coefficient encoding (the client's input encrypted,
    /// the result masked back into shares).
    BfvCoefficient,
    /// A linear layer on secret shares, with a Beaver matrix triple.
    SharedMatrixTriple,
    /// A linear layer by the server's matrix on secret shares, by correlated OTs in one
    /// direction (no triple).
    SharedOtProduct,
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
    /// Sigmoid on secret shares: piecewise linear, 7 exact comparisons.
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
    /// The label `explain` prints.
    pub fn label(self) -> &'static str {
        match self {
            Backend::BfvCoefficient => "BFV coefficient encoding + shares",
            Backend::SharedMatrixTriple => "secret shares (Beaver matrix triple)",
            Backend::SharedOtProduct => "secret shares (one-way OT product)",
            Backend::CkksDiagonal => "CKKS diagonal method",
            Backend::SharedMillionaire => "secret shares (millionaire, exact)",
            Backend::SharedReluTree => "secret shares (tree of ReLUs, exact)",
            Backend::SharedBeaver => "secret shares (Beaver triples)",
            Backend::CkksPolynomial => "CKKS (one or more levels)",
            Backend::SharedPiecewiseLinear => {
                "secret shares (piecewise linear, 7 exact comparisons)"
            }
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
                | Backend::SharedOtProduct
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

// Calibrated from `bench -- nn`, `bench -- link` and `bench -- mpc` on the development
// machine (2026-12-03): a seeded upload ciphertext (`Q` of 164 bits, the default's; a
// served model's `Q` is fitted to it, and an upload sends only its window); a compact
// reply (c1 at 50 bits per coefficient, c0 at the outputs); one ReLU in Z_2^40 from silent OT (a
// 39-bit millionaire in 2-bit digits and the multiplexer: 341 bits, plus the Ferret trees'
// share); one exact truncation of a value known non-negative (the usual case: deferred
// past a ReLU).
/// Ring degree of the BFV parameters the costs are calibrated for.
pub const N: f64 = 8192.0;
/// Bytes of one seeded BFV upload ciphertext.
pub const UPLOAD: f64 = 167_984.0;
/// Bytes of one compact BFV reply, outputs apart.
pub const REPLY: f64 = 51_300.0;
/// Bytes of one exact ReLU in `Z_2^40`.
pub const RELU_BYTES: f64 = 50.0;
/// Microseconds of one exact ReLU.
pub const RELU_US: f64 = 5.0;
/// Bytes of one truncation.
pub const TRUNC_BYTES: f64 = 20.0;
/// Bytes of one correlated OT with a chosen choice bit, beyond its payload (silent OT:
/// the choice's correction bit and the Ferret trees' share).
pub const OT_BYTES: f64 = 0.25;
/// Microseconds of one CKKS rotation.
pub const ROT_US: f64 = 800.0;

/// A linear map under BFV with coefficient encoding: `in_cts` uploads of `window`
/// coefficients each (of `N`: the input coefficients the outputs read), `out_cts`
/// replies, `outputs` values (each truncated afterwards).
pub fn bfv_linear(in_cts: f64, window: f64, out_cts: f64, outputs: f64) -> Cost {
    let upload = UPLOAD * window.min(N) / N;
    Cost {
        compute_us: in_cts * out_cts * 40.0 + out_cts * 600.0 + in_cts * 500.0,
        bytes: in_cts * upload + out_cts * REPLY + outputs * 22.0 + outputs * TRUNC_BYTES,
        rounds: 1.0 + 8.0,
    }
}

/// An `(m x k) (k x n)` product on shares with a Beaver matrix triple from OT, its
/// openings and the truncation of the result. The triple is Gilboa's in both directions:
/// one correlated OT per bit of each entry of one factor, carrying a column of the other
/// ([`OT_BYTES`] per OT plus the column's `l`-bit elements), in whichever orientation
/// sends fewer bytes (`cipherml_mpc::triples::ot`).
pub fn shared_linear(m: f64, k: f64, n: f64) -> Cost {
    let l = 40.0;
    let per_ot = |width: f64| OT_BYTES + width * l / 8.0;
    let triple = 2.0 * k * l * (n * per_ot(m)).min(m * per_ot(n));
    Cost {
        compute_us: m * k * n * 0.01 + k * m.min(n) * l * 0.2,
        bytes: triple + 2.0 * (m * k + k * n) * l / 8.0 + m * n * TRUNC_BYTES,
        rounds: 3.0 + 8.0,
    }
}

/// `W X` on shares with `W` (`m x k`) the server's, by one-way correlated OTs
/// (`cipherml_mpc::protocols::arith::matmul_owned`): `k n l` OTs of `m` elements, and the
/// truncation of the result.
pub fn ot_product(m: f64, k: f64, n: f64) -> Cost {
    let l = 40.0;
    Cost {
        compute_us: m * k * n * 0.01 + k * n * l * 0.1,
        bytes: k * n * l * (OT_BYTES + m * l / 8.0) + m * n * TRUNC_BYTES,
        rounds: 2.0 + 8.0,
    }
}

/// An `(m x k) (k x n)` product on shares with a matrix triple from a dealer: the openings
/// between the parties and the dealer's share of `C` to one of them (seeds aside), and the
/// truncation of the result.
pub fn dealer_linear(m: f64, k: f64, n: f64) -> Cost {
    let l = 40.0;
    Cost {
        compute_us: m * k * n * 0.02,
        bytes: 2.0 * (m * k + k * n) * l / 8.0 + m * n * l / 8.0 + m * n * TRUNC_BYTES,
        rounds: 2.0 + 8.0,
    }
}

/// The shares option for a product by the server's `m x k` matrix: a dealer's triple if
/// the session has a dealer, else the one-way OT product.
pub fn shared_option(m: f64, k: f64, n: f64, dealer: bool) -> (Backend, Cost) {
    if dealer {
        (Backend::SharedMatrixTriple, dealer_linear(m, k, n))
    } else {
        (Backend::SharedOtProduct, ot_product(m, k, n))
    }
}

/// A linear map under CKKS by the diagonal method (baby-step giant-step rotations).
pub fn ckks_linear(rows: f64, period: f64) -> Cost {
    let diag = rows.max(1.0);
    let rotations = 2.0 * diag.sqrt() + (period / rows).max(1.0).log2();
    Cost {
        compute_us: rotations * ROT_US + diag * 30.0,
        bytes: 0.0,
        rounds: 0.0,
    }
}

/// The ways to run a dense layer `inputs -> outputs` (a matrix the server holds), CKKS
/// only if `ckks` (the network runs in the non-interactive mode); on shares with a
/// dealer's triples if `dealer`.
pub fn dense_options(inputs: f64, outputs: f64, ckks: bool, dealer: bool) -> Vec<(Backend, Cost)> {
    // The whole input in one chunk (the lowering may split it), in the strided layout.
    let shape = (outputs as usize, inputs as usize);
    let bfv = match CoeffMatVec::layout(N as usize, shape, shape.1.clamp(1, N as usize), true) {
        Ok(l) => bfv_linear(
            l.inputs as f64,
            l.window.len() as f64,
            l.blocks as f64,
            outputs,
        ),
        Err(_) => bfv_linear((inputs / N).ceil(), N, outputs, outputs),
    };
    let mut options = vec![
        (Backend::BfvCoefficient, bfv),
        shared_option(outputs, inputs, 1.0, dealer),
    ];
    if ckks {
        options.push((
            Backend::CkksDiagonal,
            ckks_linear(
                outputs,
                (inputs.max(outputs) as usize).next_power_of_two() as f64,
            ),
        ));
    }
    options
}

/// The ways to run a convolution of a `(c, h, w)` input (padding included in `h`, `w`)
/// with `o` output channels of `kh x kw` kernels, `outputs` values in all.
pub fn conv_options(
    (c, h, w): (usize, usize, usize),
    (o, kh, kw): (usize, usize, usize),
    outputs: f64,
    ckks: Option<f64>,
    dealer: bool,
) -> Vec<(Backend, Cost)> {
    // As many input channels to a ciphertext as fit, stride 1 (the lowering picks the
    // channels by cost, the stride from the layer).
    let n = N as usize;
    let group = CoeffConv2d::max_group(n, c, (h, w), 0);
    let bfv = match CoeffConv2d::layout(n, (o, c, kh, kw), (h, w), 0, 1, group) {
        Ok(l) => bfv_linear(
            l.inputs as f64,
            l.window.len() as f64,
            l.blocks as f64,
            outputs,
        ),
        Err(_) => bfv_linear(c as f64, N, o as f64, outputs),
    };
    let mut options = vec![
        (Backend::BfvCoefficient, bfv),
        shared_option(o as f64, (c * kh * kw) as f64, outputs / o as f64, dealer),
    ];
    if let Some(inputs) = ckks {
        options.push((
            Backend::CkksDiagonal,
            ckks_linear(
                outputs,
                (inputs.max(outputs) as usize).next_power_of_two() as f64,
            ),
        ));
    }
    options
}

/// `n` exact ReLUs on shares.
pub fn relu(n: f64) -> Cost {
    Cost {
        compute_us: n * RELU_US,
        bytes: n * RELU_BYTES,
        rounds: 8.0,
    }
}

/// Max-pool to `outputs` values over windows of `window` values (a tree of ReLUs).
pub fn relu_tree(outputs: f64, window: f64) -> Cost {
    Cost {
        compute_us: outputs * (window - 1.0) * RELU_US,
        bytes: outputs * (window - 1.0) * RELU_BYTES,
        rounds: 8.0 * window.log2().ceil(),
    }
}

/// `n` squares on shares (Beaver triples from OT).
pub fn beaver_square(n: f64) -> Cost {
    Cost {
        compute_us: n * 3.0,
        bytes: n * (40.0 * (OT_BYTES + 5.0) + 10.0 + TRUNC_BYTES),
        rounds: 2.0 + 8.0,
    }
}

/// A square or low-degree polynomial under CKKS.
pub fn ckks_polynomial() -> Cost {
    Cost {
        compute_us: 900.0,
        bytes: 0.0,
        rounds: 0.0,
    }
}

/// `n` piecewise-linear sigmoids on shares (the sign, six ReLUs, two multiplexers and a
/// truncation each; the sign, the ReLUs and the truncation one after the other).
pub fn pwl_sigmoid(n: f64) -> Cost {
    Cost {
        compute_us: n * 8.0 * RELU_US,
        bytes: n * (8.0 * RELU_BYTES + TRUNC_BYTES),
        rounds: 8.0 + 2.0 + 8.0 + 2.0 + 8.0,
    }
}

/// A sigmoid under CKKS (degree-7 approximation).
pub fn ckks_sigmoid() -> Cost {
    Cost {
        compute_us: 3000.0,
        bytes: 0.0,
        rounds: 0.0,
    }
}

/// The cheapest of `options` under `net` among those `allowed`.
pub fn cheapest(
    options: &[(Backend, Cost)],
    net: &NetworkModel,
    allowed: impl Fn(Backend) -> bool,
) -> Option<(Backend, Cost)> {
    options
        .iter()
        .filter(|(b, _)| allowed(*b))
        .min_by(|a, b| a.1.total_us(net).total_cmp(&b.1.total_us(net)))
        .copied()
}
