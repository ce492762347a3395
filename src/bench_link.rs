//! Benchmarks of the linear layers of hybrid private inference (`link.*`): one Dense or
//! Conv2d layer by server weights on a shared input, through the shares <-> BFV link
//! ([`crate::link`]), exactly as a served model runs it: the layer lowered by
//! [`PreparedModel::for_serving`] (flooding sized for the server's default cap of 2^16
//! inferences per session, the cost model's choice of representation) and run by
//! [`PreparedModel::forward`] in a [`Session`], both parties on TCP loopback with one
//! thread each (a one-thread rayon pool per party). The session set-up (base OTs, the
//! client's public key) is outside the timed part and reported in `params`. Each
//! configuration is checked once, outside the timing: the output shares must reconstruct
//! to the plaintext product exactly (the link is exact in `Z_2^l`), or the bench panics.
//! Declared from `src/bench.rs`.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use cipherml_mpc::net::Stats;
use cipherml_mpc::ring::Ring;
use ndarray::{Array1, Array2, Array4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::BenchLine;
use crate::nn::{Layer, PreparedModel, Sequential};
use crate::tensor::kernels;
use crate::tensor::{PrivateTensor, Role, Session, SessionConfig};

/// Most timed runs per configuration.
const MAX_RUNS: usize = 1000;
/// Fewest timed runs per configuration.
const MIN_RUNS: usize = 3;

/// One configuration: name, input shape `(C, H, W)` or `(K,)`, the layer, and a
/// description.
struct Case {
    name: &'static str,
    input: Vec<usize>,
    layer: Layer,
    what: String,
}

/// A weight or bias exactly representable at `f` fractional bits (so that the engine's
/// quantization is exact and the reference independent of it): `k / 2^f`, `|k| < 2^(f-1)`.
fn exact_weight(rng: &mut ChaCha20Rng, f: u32) -> f64 {
    let half = 1i64 << (f - 1);
    rng.random_range(-half..half) as f64 / (f as f64).exp2()
}

fn cases(f: u32, rng: &mut ChaCha20Rng) -> Vec<Case> {
    let mut w = || exact_weight(rng, f);
    let dense = Layer::Dense {
        weight: Array2::from_shape_fn((128, 784), |_| w()),
        bias: Array1::from_shape_fn(128, |_| w()),
    };
    let conv1 = Layer::Conv2d {
        weight: Array4::from_shape_fn((16, 1, 5, 5), |_| w()),
        bias: Array1::from_shape_fn(16, |_| w()),
        stride: 1,
        padding: 0,
    };
    let conv2 = Layer::Conv2d {
        weight: Array4::from_shape_fn((16, 16, 3, 3), |_| w()),
        bias: Array1::from_shape_fn(16, |_| w()),
        stride: 1,
        padding: 1,
    };
    vec![
        Case {
            name: "link.fc_1x784x128",
            input: vec![784],
            layer: dense,
            what: "Dense: 1x784 shared input times a 784x128 server matrix, plus bias".into(),
        },
        Case {
            name: "link.conv_28x28x1_k5_co16",
            input: vec![1, 28, 28],
            layer: conv1,
            what: "Conv2d: 28x28x1 shared input, 5x5 kernels, 16 output channels, stride 1, no padding (out 24x24x16), plus bias".into(),
        },
        Case {
            name: "link.conv_32x32x16_k3_co16",
            input: vec![16, 32, 32],
            layer: conv2,
            what: "Conv2d: 32x32x16 shared input, 3x3 kernels, 16 output channels, stride 1, padding 1 (out 32x32x16), plus bias".into(),
        },
    ]
}

/// The exact result of the layer on the fixed-point input `x` (at `2^f`), at scale
/// `2^2f`, reduced into `ring`: the weights and bias quantized at `2^f` (exactly: see
/// [`exact_weight`]), the bias lifted to `2^2f`.
fn reference(layer: &Layer, input: &[usize], x: &[i64], f: u32, ring: Ring) -> Vec<u64> {
    let q = |v: f64| -> i64 {
        let s = v * (f as f64).exp2();
        assert_eq!(s, s.round(), "bench weights are exact at 2^f");
        s as i64
    };
    let xr: Vec<u64> = x.iter().map(|&v| ring.from_signed(v)).collect();
    let lift = |b: f64| ring.from_signed(q(b) << f);
    match layer {
        Layer::Dense { weight, bias } => {
            let y = kernels::matvec_ring(ring, &weight.mapv(q), &xr);
            y.iter()
                .zip(bias)
                .map(|(&v, &b)| ring.add(v, lift(b)))
                .collect()
        }
        Layer::Conv2d {
            weight,
            bias,
            stride,
            padding,
        } => {
            let shape = (input[0], input[1], input[2]);
            let y = kernels::conv_ring(ring, &xr, &weight.mapv(q), shape, *stride, *padding);
            let per = y.len() / bias.len();
            y.iter()
                .enumerate()
                .map(|(i, &v)| ring.add(v, lift(bias[i / per])))
                .collect()
        }
        _ => unreachable!("only linear layers are benchmarked"),
    }
}

fn one_thread_pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("thread pool")
}

fn shares(t: &PrivateTensor, frac: u32) -> Vec<u64> {
    match t {
        PrivateTensor::Shared {
            share, frac_bits, ..
        } => {
            assert_eq!(
                *frac_bits, frac,
                "a linear layer leaves its product at 2^2f"
            );
            share.clone()
        }
        _ => panic!("a linear layer on shares returns shares"),
    }
}

/// The linear-layer benchmarks, calling `emit` for each line whose name contains `filter`
/// (all if `None`).
pub fn link(budget: Duration, filter: Option<&str>, emit: &mut (dyn FnMut(BenchLine) + Send)) {
    let base = SessionConfig::default();
    let f = base.frac_bits;
    let ring = Ring::new(base.ring_bits).expect("ring");
    let mut rng = ChaCha20Rng::seed_from_u64(15);
    for case in cases(f, &mut rng) {
        if filter.is_some_and(|flt| !case.name.contains(flt)) {
            continue;
        }
        let model = Sequential::new(case.input.clone()).add(case.layer.clone());
        let server_model =
            PreparedModel::for_serving(&model, &base, 1 << 16, true).expect("prepare (server)");
        let client_model =
            PreparedModel::for_serving(&model, &base, 1 << 16, false).expect("prepare (client)");
        let config = server_model.config().clone();
        let params = server_model.params().clone();
        // The representation the cost model chooses for this layer, as the lowering does.
        let plan = match &case.layer {
            Layer::Dense { weight, .. } => crate::tensor::PreparedLinear::dense(
                &params,
                &config,
                "plan",
                weight.dim(),
                None,
                None,
            ),
            Layer::Conv2d {
                weight,
                stride,
                padding,
                ..
            } => crate::tensor::PreparedLinear::conv2d(
                &params,
                &config,
                "plan",
                (case.input[0], case.input[1], case.input[2]),
                weight.dim(),
                *stride,
                *padding,
                None,
                None,
            ),
            _ => unreachable!(),
        }
        .expect("plan");
        let (chosen, _) = plan.plan();
        let revealed = plan.revealed_coefficients();
        let (flood, room) = server_model.flood_log2();

        // A fixed-point input in [-1, 1] at 2^f, shared: the client's share uniform.
        let len: usize = case.input.iter().product();
        let x: Vec<i64> = (0..len)
            .map(|_| rng.random_range(-(1i64 << f)..=(1i64 << f)))
            .collect();
        let client_share: Vec<u64> = ring.random_vec(&mut rng, len);
        let server_share: Vec<u64> = x
            .iter()
            .zip(&client_share)
            .map(|(&v, &r)| ring.sub(ring.from_signed(v), r))
            .collect();
        let expected = reference(&case.layer, &case.input, &x, f, ring);
        let shared = |share: Vec<u64>| PrivateTensor::Shared {
            share,
            shape: case.input.clone(),
            frac_bits: f,
            nonneg: false,
            held_by: None,
        };
        let (x_client, x_server) = (shared(client_share), shared(server_share));

        let (c0, c1) = cipherml_mpc::net::tcp_loopback_pair(Default::default()).expect("loopback");
        // In-process control (not over the measured channel): `true` runs one more
        // application, `false` stops; the server's first output share comes back for the check.
        let (go_tx, go_rx) = mpsc::channel::<bool>();
        let (share_tx, share_rx) = mpsc::channel::<Vec<u64>>();
        let server_config = config.clone();
        let server = std::thread::spawn(move || {
            one_thread_pool().install(move || {
                let mut s = Session::with_config(Role::Server, c1, server_config).expect("set-up");
                let mut first = true;
                while go_rx.recv() == Ok(true) {
                    let y = server_model
                        .forward(&mut s, x_server.clone())
                        .expect("server layer");
                    if first {
                        share_tx.send(shares(&y, 2 * f)).expect("check channel");
                        first = false;
                    }
                }
            })
        });
        let client_config = config.clone();
        let (setup_us, setup_stats, samples) = one_thread_pool().install(move || {
            let t = Instant::now();
            let mut s = Session::with_config(Role::Client, c0, client_config).expect("set-up");
            let setup_us = t.elapsed().as_secs_f64() * 1e6;
            let setup_stats = s.party().stats();
            // Once, untimed (also the warm-up): the shares must reconstruct exactly.
            go_tx.send(true).expect("server thread");
            let y = client_model
                .forward(&mut s, x_client.clone())
                .expect("client layer");
            let mine = shares(&y, 2 * f);
            let theirs = share_rx.recv().expect("server share");
            let got: Vec<u64> = mine.iter().zip(&theirs).map(|(&a, &b)| ring.add(a, b)).collect();
            if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
                panic!(
                    "{}: output {i} reconstructs to {} instead of {} (ring Z_2^{}, exact expected); {} of {} outputs wrong",
                    case.name,
                    ring.to_signed(got[i]),
                    ring.to_signed(expected[i]),
                    ring.bits(),
                    (0..got.len()).filter(|&j| got[j] != expected[j]).count(),
                    got.len()
                );
            }
            let start = Instant::now();
            let mut samples: Vec<(f64, Stats)> = Vec::new();
            while (samples.len() < MIN_RUNS || start.elapsed() < budget) && samples.len() < MAX_RUNS
            {
                go_tx.send(true).expect("server thread");
                let before = s.party().stats();
                let t = Instant::now();
                std::hint::black_box(
                    client_model
                        .forward(&mut s, x_client.clone())
                        .expect("client layer"),
                );
                samples.push((t.elapsed().as_secs_f64() * 1e6, s.party().stats().since(&before)));
            }
            go_tx.send(false).expect("server thread");
            (setup_us, setup_stats, samples)
        });
        server.join().expect("server thread");

        let mut times: Vec<f64> = samples.iter().map(|s| s.0).collect();
        times.sort_by(|a, b| a.total_cmp(b));
        let d = samples[0].1;
        let pk_bytes = {
            let sk = std::sync::Arc::new(cipherml_he::rlwe::SecretKey::random(
                params.context(),
                &mut rng,
            ));
            cipherml_he::rlwe::PublicKey::new(&sk, &mut rng)
                .to_bytes(params.context())
                .len()
        };
        let lit = config.bfv_literal();
        emit(BenchLine {
            name: case.name.into(),
            median_us: times[times.len() / 2],
            min_us: times[0],
            bytes: Some(d.bytes_sent + d.bytes_received),
            rounds: Some(d.rounds_sent),
            threads: 1,
            params: format!(
                "{}; as served: PreparedModel::for_serving (cap 2^16 inferences) + forward, chosen: {} ({} revealed coefficients), output shares at 2^2f (truncation pending, not included); BFV N={} q_bits={:?} p_bits={:?} t=2^{}, Z_2^{} shares f={}, flooding 2^{flood} (room 2^{room:.1}, {} statistical bits + {} union bits), re-randomized by the client's public key; two parties, TCP loopback, one thread each; bytes both directions, rounds = client flights; {} timed runs; checked once: shares reconstruct exactly to W x + b; set-up apart (not timed): {:.1} ms, {} B, {} client flights (base OTs both directions + the client's public key, {} B seeded), no Galois or relinearization keys",
                case.what,
                chosen,
                revealed,
                params.degree(),
                lit.ciphertext_moduli_bits,
                lit.special_moduli_bits,
                config.ring_bits,
                config.ring_bits,
                f,
                config.flood_bits,
                config.reveal_log2,
                samples.len(),
                setup_us / 1e3,
                setup_stats.bytes_sent + setup_stats.bytes_received,
                setup_stats.rounds_sent,
                pk_bytes
            ),
        });
    }
}
