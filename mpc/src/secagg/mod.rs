//! Secure aggregation for federated learning: SecAgg+ (Bell et al., CCS 2020) over the
//! protocol of Bonawitz et al. (CCS 2017), semi-honest server and clients.
//!
//! `n` clients each hold a vector of `dim` reals; the server learns the sum over the
//! clients that stayed to the end (`U3`) — optionally weighted, `sum w_u x_u` and
//! `sum w_u` for FedAvg — and nothing else about any individual vector, as long as fewer
//! than `t` of a client's share holders collude with it. Clients may drop out at any stage.
//!
//! The parties are in-process state machines ([`SecAggClient`], [`SecAggServer`]) that a
//! networked service drives by passing the typed messages of [`messages`] (each with
//! `to_bytes` / `from_bytes`; decoding validates sizes against the configuration before
//! allocating). The four stages of a round:
//!
//! 0. **AdvertiseKeys**: each client sends two X25519 public keys (`c` to encrypt shares,
//!    `s` for pairwise masks); the server forwards to each client its neighbours' keys.
//!    `U1` = the clients that advertised.
//! 1. **ShareKeys**: each client draws a self-mask seed `b_u` and Shamir-shares (threshold
//!    `t`) `b_u` and `s_sk_u` among its neighbours in `U1` and itself; each share pair is
//!    AES-256-GCM encrypted to its holder ([`crypto`]). `U2` = the clients whose shares
//!    arrived.
//! 2. **MaskedInput**: each client sends `y_u = w_u q(x_u) + PRG(b_u) + sum_{v} sign(u,v)
//!    PRG(s_uv) mod 2^b` over its neighbours `v` in `U2`, `sign = +1` if `u < v`.
//!    `U3` = the clients whose masked input arrived, `D = U2 \ U3`.
//! 3. **Unmask**: each client of `U3` reveals, per neighbour, the share of `b_v` if `v` is
//!    in `U3` or of `s_sk_v` if `v` is in `D` — never both. The server reconstructs, removes
//!    the masks and outputs the sum.
//!
//! The neighbourhood graph is described in [`graph`], the field of the secret sharing in
//! [`shamir`], the key derivation, encryption and PRG in [`crypto`], the parameters and the
//! overflow check in [`config`].
//!
//! ```
//! use cipherml_mpc::secagg::{simulate, plaintext_sum_quantized, DropoutPlan, SecAggConfig};
//! use rand::SeedableRng;
//!
//! let config = SecAggConfig::recommended(10, 4).unwrap();
//! let inputs: Vec<Vec<f64>> = (0..10).map(|i| vec![0.1 * i as f64, -0.5, 0.25, 1.0]).collect();
//! // Client 3 drops before sending its masked input.
//! let plan = DropoutPlan { before_masked_input: vec![3], ..DropoutPlan::default() };
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
//! let (sum, raw) = simulate(&config, &inputs, None, &plan, &mut rng).unwrap();
//! let survivors: Vec<Vec<f64>> =
//!     inputs.iter().enumerate().filter(|(i, _)| *i != 3).map(|(_, x)| x.clone()).collect();
//! assert_eq!(raw, plaintext_sum_quantized(&config, &survivors, None).unwrap());
//! assert!((sum[1] - (-4.5)).abs() < 1e-3);
//! ```

pub mod client;
pub mod config;
pub mod crypto;
pub mod error;
pub mod graph;
pub mod messages;
pub mod server;
pub mod shamir;

use rand::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

pub use client::SecAggClient;
pub use config::{Quantization, SecAggConfig, SecAggParams};
pub use error::{MalformedReason, SecAggError, SecAggResult, StageState};
pub use graph::NeighbourGraph;
pub use messages::{
    AdvertiseKeys, EncryptedShare, IncomingShares, MaskedInput, NeighbourKey, NeighbourKeys,
    RevealedShare, ShareKeys, ShareKind, UnmaskRequest, UnmaskResponse,
};
pub use server::{AggregateOutput, SecAggServer};

/// A client's id, `0..n`.
pub type ClientId = u32;

/// The four stages of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Stage 0: public keys.
    AdvertiseKeys,
    /// Stage 1: encrypted shares of the secrets.
    ShareKeys,
    /// Stage 2: masked inputs.
    MaskedInput,
    /// Stage 3: revealed shares and the sum.
    Unmask,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::AdvertiseKeys => "AdvertiseKeys",
            Stage::ShareKeys => "ShareKeys",
            Stage::MaskedInput => "MaskedInput",
            Stage::Unmask => "Unmask",
        })
    }
}

/// Which clients drop out, and before which stage, in [`simulate`]. A client listed at
/// several stages drops at the earliest. Plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropoutPlan {
    /// Never advertise keys (not in `U1`).
    pub before_advertise: Vec<ClientId>,
    /// Advertise, then never share keys (in `U1`, not in `U2`).
    pub before_share_keys: Vec<ClientId>,
    /// Share keys, then never send a masked input (in `D`).
    pub before_masked_input: Vec<ClientId>,
    /// Send a masked input, then never answer the unmask request (in `U3`, silent).
    pub before_unmask: Vec<ClientId>,
}

impl DropoutPlan {
    /// No dropouts.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether `id` has dropped by the time `stage` starts.
    pub fn dropped_by(&self, id: ClientId, stage: Stage) -> bool {
        let lists = [
            &self.before_advertise,
            &self.before_share_keys,
            &self.before_masked_input,
            &self.before_unmask,
        ];
        lists[..=stage as usize].iter().any(|l| l.contains(&id))
    }

    /// The clients that send a masked input (`U3`, if nobody else fails), sorted.
    pub fn survivors(&self, n: u32) -> Vec<ClientId> {
        (0..n)
            .filter(|&u| !self.dropped_by(u, Stage::MaskedInput))
            .collect()
    }
}

/// The plain (insecure) reference: `sum w_u q(x_u)` mod `2^b` over the given inputs, in
/// the layout of [`AggregateOutput::sum`] (`vector_len` entries).
pub fn plaintext_sum_quantized(
    config: &SecAggConfig,
    inputs: &[Vec<f64>],
    weights: Option<&[u64]>,
) -> SecAggResult<Vec<u64>> {
    if let Some(w) = weights {
        if w.len() != inputs.len() {
            return Err(SecAggError::InputCount {
                what: "weights",
                expected: inputs.len(),
                got: w.len(),
            });
        }
    }
    let mask = config.modulus_mask();
    let mut sum = vec![0u64; config.vector_len()];
    for (i, x) in inputs.iter().enumerate() {
        let q = config.quantize(x, weights.map(|w| w[i]))?;
        for (s, v) in sum.iter_mut().zip(q) {
            *s = s.wrapping_add(v) & mask;
        }
    }
    Ok(sum)
}

/// Runs a whole round in one process: `n` clients (client `u` holds `inputs[u]` and, when
/// the configuration is weighted, `weights[u]`), the server, and the dropouts of `plan`.
/// Every message goes through `to_bytes` / `from_bytes`. Returns the de-quantized sum
/// (`dim` entries) and the raw sum mod `2^b` (`vector_len` entries), or the typed failure.
pub fn simulate<R: RngCore + CryptoRng + ?Sized>(
    config: &SecAggConfig,
    inputs: &[Vec<f64>],
    weights: Option<&[u64]>,
    plan: &DropoutPlan,
    rng: &mut R,
) -> SecAggResult<(Vec<f64>, Vec<u64>)> {
    let n = config.n();
    if inputs.len() != n as usize {
        return Err(SecAggError::InputCount {
            what: "inputs",
            expected: n as usize,
            got: inputs.len(),
        });
    }
    if let Some(w) = weights {
        if w.len() != n as usize {
            return Err(SecAggError::InputCount {
                what: "weights",
                expected: n as usize,
                got: w.len(),
            });
        }
    }
    let mut round_seed = [0u8; 32];
    rng.fill_bytes(&mut round_seed);
    let mut server = SecAggServer::new(config, round_seed);
    let mut rngs: Vec<ChaCha20Rng> = Vec::with_capacity(n as usize);
    let mut clients = Vec::with_capacity(n as usize);
    for u in 0..n {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let mut r = ChaCha20Rng::from_seed(seed);
        clients.push(SecAggClient::new(config, u, round_seed, &mut r)?);
        rngs.push(r);
    }

    // Stage 0.
    for c in clients.iter_mut() {
        if plan.dropped_by(c.id(), Stage::AdvertiseKeys) {
            continue;
        }
        let bytes = c.advertise_keys()?.to_bytes();
        server.receive_advertise(c.id(), &AdvertiseKeys::from_bytes(&bytes, config)?)?;
    }
    let keys = server.finish_advertise()?;

    // Stage 1.
    for (u, msg) in &keys {
        if plan.dropped_by(*u, Stage::ShareKeys) {
            continue;
        }
        let msg = NeighbourKeys::from_bytes(&msg.to_bytes(), config)?;
        let c = &mut clients[*u as usize];
        let bytes = c.share_keys(&msg, &mut rngs[*u as usize])?.to_bytes();
        server.receive_share_keys(*u, ShareKeys::from_bytes(&bytes, config)?)?;
    }
    let incoming = server.finish_share_keys()?;

    // Stage 2.
    for (u, msg) in &incoming {
        if plan.dropped_by(*u, Stage::MaskedInput) {
            continue;
        }
        let msg = IncomingShares::from_bytes(&msg.to_bytes(), config)?;
        let c = &mut clients[*u as usize];
        let w = weights.map(|w| w[*u as usize]);
        let bytes = c.masked_input(&msg, &inputs[*u as usize], w)?.to_bytes();
        server.receive_masked_input(*u, &MaskedInput::from_bytes(&bytes, config)?)?;
    }
    let requests = server.finish_masked_input()?;

    // Stage 3.
    for (u, msg) in &requests {
        if plan.dropped_by(*u, Stage::Unmask) {
            continue;
        }
        let msg = UnmaskRequest::from_bytes(&msg.to_bytes(), config)?;
        let bytes = clients[*u as usize].unmask(&msg)?.to_bytes();
        server.receive_unmask(*u, UnmaskResponse::from_bytes(&bytes, config)?)?;
    }
    let out = server.finish_unmask()?;
    Ok((out.dequantized, out.sum))
}
