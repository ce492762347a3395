//! Benchmarks that print one JSON object per line, in the format of BENCHMARKS.md:
//! `{"name": ..., "median_us": ..., "min_us": ..., "bytes": ..., "rounds": ..., "threads": ..., "params": ...}`.
//!
//! Used by `cargo run --release --example bench -- [he|mpc|nn|link|train|secagg|all]`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cipherml_he::bfv::{
    BfvParameters, BfvParametersLiteral, Decryptor, Encoder, Encryptor, Evaluator,
};
use cipherml_he::ckks::{CkksParameters, CkksParametersLiteral};
use cipherml_he::math::primes::ntt_primes;
use cipherml_he::math::{Modulus, NttOperator};
use cipherml_he::rlwe::{GaloisKeys, PublicKey, RelinKey, SecretKey};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// One measured figure (the JSON-lines contract of BENCHMARKS.md), shared with the MPC
/// layer's benchmarks.
pub use cipherml_mpc::bench::BenchLine;

#[path = "bench_secagg.rs"]
mod secagg_suite;
pub use secagg_suite::secagg;

#[path = "bench_link.rs"]
mod link_suite;
pub use link_suite::link;

/// Times `f`: a short warm-up, then samples for about `budget` (at least 5, at most 1000).
pub fn time<F: FnMut()>(budget: Duration, mut f: F) -> (f64, f64) {
    for _ in 0..2 {
        f();
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while (start.elapsed() < budget || samples.len() < 5) && samples.len() < 1000 {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    (samples[samples.len() / 2], samples[0])
}

fn line(
    name: &str,
    (median_us, min_us): (f64, f64),
    bytes: Option<u64>,
    params: &str,
) -> BenchLine {
    BenchLine {
        name: name.into(),
        median_us,
        min_us,
        bytes,
        rounds: None,
        threads: 1,
        params: params.into(),
    }
}

fn describe(p: &BfvParameters) -> String {
    let lit = p.literal();
    format!(
        "BFV N={} q_bits={:?} p_bits={:?} t={} log2(QP)<={}",
        p.degree(),
        lit.ciphertext_moduli_bits,
        lit.special_moduli_bits,
        p.plaintext_modulus(),
        lit.ciphertext_moduli_bits
            .iter()
            .chain(&lit.special_moduli_bits)
            .sum::<u32>()
    )
}

/// The HE benchmarks, calling `emit` for each line: NTT, BFV at N = 8192, CKKS at 8192 and
/// 16384, the 784x128 encrypted mat-vec. Everything runs on a one-thread rayon pool (the
/// figures BENCHMARKS.md compares), then the multiplications once more on two threads.
pub fn he(budget: Duration, emit: &mut (dyn FnMut(BenchLine) + Send)) {
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("thread pool");
    one.install(|| he_single(budget, emit));
    let two = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("thread pool");
    two.install(|| he_two_threads(budget, emit));
}

fn he_two_threads(budget: Duration, emit: &mut (dyn FnMut(BenchLine) + Send)) {
    let mut rng = ChaCha20Rng::from_os_rng();
    let params = BfvParameters::new(&BfvParametersLiteral::n8192()).expect("preset");
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let rlk = RelinKey::new(&sk, &mut rng);
    let encryptor = Encryptor::new(&params, PublicKey::new(&sk, &mut rng)).expect("pk");
    let pt = Encoder::new(&params)
        .encode_u64(&[1, 2, 3])
        .expect("encode");
    let a = encryptor.encrypt(&pt, &mut rng).expect("enc");
    let b = encryptor.encrypt(&pt, &mut rng).expect("enc");
    let ev = Evaluator::new(&params);
    let mut l = line(
        "bfv.mul_relin.n8192.t2",
        time(budget, || {
            std::hint::black_box(ev.mul_relin(&a, &b, &rlk).expect("mul"));
        }),
        None,
        &describe(&params),
    );
    l.threads = 2;
    emit(l);
}

fn he_single(budget: Duration, emit: &mut (dyn FnMut(BenchLine) + Send)) {
    let mut rng = ChaCha20Rng::from_os_rng();
    let n = 8192;
    for (bits, name) in [(50u32, "ntt.fwd.n8192"), (60, "ntt.fwd.n8192.q60")] {
        let p = ntt_primes(bits, n, 1, &[]).expect("prime")[0];
        let op = NttOperator::new(Modulus::new(p).expect("modulus"), n).expect("ntt");
        let mut a: Vec<u64> = (0..n).map(|_| rng.random_range(0..p)).collect();
        let t = time(budget, || op.forward(&mut a));
        emit(line(
            name,
            t,
            None,
            &format!("N=8192, {bits}-bit prime, tfhe-ntt"),
        ));
    }

    let params = BfvParameters::new(&BfvParametersLiteral::n8192()).expect("preset");
    bfv_suite(&params, "n8192", budget, &mut rng, emit);

    let params = CkksParameters::new(&CkksParametersLiteral::n8192()).expect("preset");
    ckks_suite(&params, "n8192", true, budget, &mut rng, emit);
    let params = CkksParameters::new(&CkksParametersLiteral::n16384()).expect("preset");
    ckks_suite(&params, "n16384", false, budget, &mut rng, emit);
}

fn describe_ckks(p: &CkksParameters) -> String {
    let lit = p.literal();
    format!(
        "CKKS N={} q_bits={:?} p_bits={:?} scale=2^{}",
        p.degree(),
        lit.ciphertext_moduli_bits,
        lit.special_moduli_bits,
        lit.scale_bits
    )
}

fn ckks_suite(
    params: &Arc<CkksParameters>,
    tag: &str,
    full: bool,
    budget: Duration,
    rng: &mut ChaCha20Rng,
    emit: &mut (dyn FnMut(BenchLine) + Send),
) {
    use cipherml_he::ckks::{
        Decryptor as CDec, Encoder as CEnc, Encryptor as CEnc2, Evaluator as CEv,
    };
    let desc = describe_ckks(params);
    let sk = Arc::new(SecretKey::random(params.context(), rng));
    let pk = PublicKey::new(&sk, rng);
    let rlk = RelinKey::new(&sk, rng);
    let ev = CEv::new(params);
    let gk = GaloisKeys::new(&sk, &[ev.galois_element(1)], rng).expect("keys");
    let enc = CEnc::new(params);
    let encryptor = CEnc2::new(params, pk).expect("pk");
    let decryptor = CDec::new(params, sk.clone()).expect("sk");
    let vals: Vec<f64> = (0..params.slots())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let top = params.max_level();
    let scale = params.default_scale();
    let a = encryptor.encrypt_f64(&vals, rng).expect("enc");
    let b = encryptor.encrypt_f64(&vals, rng).expect("enc");
    let mut r2 = ChaCha20Rng::from_os_rng();
    let mut emit_t =
        |name: &str, t: (f64, f64)| emit(line(&format!("{name}.{tag}"), t, None, &desc));
    emit_t(
        "ckks.mul_relin",
        time(budget, || {
            std::hint::black_box(ev.mul_relin(&a, &b, &rlk).expect("mul"));
        }),
    );
    emit_t(
        "ckks.rotate",
        time(budget, || {
            std::hint::black_box(ev.rotate(&a, 1, &gk).expect("rot"));
        }),
    );
    if !full {
        return;
    }
    emit_t(
        "ckks.encode_encrypt",
        time(budget, || {
            let pt = enc.encode_f64(&vals, top, scale).expect("encode");
            std::hint::black_box(encryptor.encrypt(&pt, &mut r2).expect("enc"));
        }),
    );
    let prod = ev.mul_relin(&a, &b, &rlk).expect("mul");
    emit_t(
        "ckks.rescale",
        time(budget, || {
            std::hint::black_box(ev.rescale(&prod).expect("rescale"));
        }),
    );
    emit_t(
        "ckks.decrypt_decode",
        time(budget, || {
            std::hint::black_box(decryptor.decrypt_f64(&a).expect("dec"));
        }),
    );
    emit_t(
        "ckks.add",
        time(budget, || {
            std::hint::black_box(ev.add(&a, &b).expect("add"));
        }),
    );
    let pt = enc.encode_f64(&vals, top, scale).expect("encode");
    emit_t(
        "ckks.mul_plain",
        time(budget, || {
            std::hint::black_box(ev.mul_plain(&a, &pt).expect("mul"));
        }),
    );
    // Encrypted 784-vector times plaintext 784x128 matrix (BSGS, hoisted baby steps).
    {
        use cipherml_he::tensor::{CkksTensor, LinearMap};
        let w = ndarray::Array2::from_shape_fn((128, 784), |_| rng.random_range(-1.0..1.0));
        let x =
            ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[784]), |_| rng.random_range(0.0..1.0));
        let cx = CkksTensor::encrypt(&encryptor, &x, rng).expect("enc");
        let map = LinearMap::dense(w.view(), None, cx.period()).expect("map");
        let elements = map.galois_elements(&ev);
        let mgk = GaloisKeys::new(&sk, &elements, rng).expect("keys");
        let prepared = map.encode(&enc, cx.ct.level()).expect("encode");
        let t = time(budget, || {
            std::hint::black_box(prepared.apply(&ev, &cx, &mgk).expect("apply"));
        });
        emit(BenchLine {
            name: "ckks.matvec_784x128".into(),
            median_us: t.0,
            min_us: t.1,
            bytes: Some(mgk.to_bytes(params.context()).len() as u64),
            rounds: None,
            threads: 1,
            params: format!(
                "{desc}; {} Galois keys (bytes = their seeded size), {} diagonals, diagonals pre-encoded",
                elements.len(),
                map.nonzero_diagonals()
            ),
        });
    }
    let seeded = decryptor.encrypt_symmetric(&pt, rng).expect("enc");
    emit(BenchLine {
        name: format!("ckks.ct_seeded_bytes.{tag}"),
        median_us: 0.0,
        min_us: 0.0,
        bytes: Some(seeded.to_bytes(params).len() as u64),
        rounds: None,
        threads: 1,
        params: format!("{desc}; seeded, bit-packed"),
    });
    emit(BenchLine {
        name: format!("ckks.ct_bytes.{tag}"),
        median_us: 0.0,
        min_us: 0.0,
        bytes: Some(a.to_bytes(params).len() as u64),
        rounds: None,
        threads: 1,
        params: format!("{desc}; bit-packed"),
    });
}

fn bfv_suite(
    params: &Arc<BfvParameters>,
    tag: &str,
    budget: Duration,
    rng: &mut ChaCha20Rng,
    emit: &mut (dyn FnMut(BenchLine) + Send),
) {
    let desc = describe(params);
    let sk = Arc::new(SecretKey::random(params.context(), rng));
    let pk = PublicKey::new(&sk, rng);
    let pk_bytes = pk.to_bytes(params.context()).len();
    let rlk = RelinKey::new(&sk, rng);
    let ev = Evaluator::new(params);
    let g = ev.galois_element_rows(1).expect("step");
    let gk = GaloisKeys::new(&sk, &[g], rng).expect("keys");
    let enc = Encoder::new(params);
    let encryptor = Encryptor::new(params, pk).expect("pk");
    let decryptor = Decryptor::new(params, sk.clone()).expect("sk");
    let t = params.plaintext_modulus();
    let vals: Vec<u64> = (0..params.degree())
        .map(|_| rng.random_range(0..t as u64))
        .collect();
    let pt = enc.encode_u64(&vals).expect("encode");
    let a = encryptor.encrypt(&pt, rng).expect("enc");
    let b = encryptor.encrypt(&pt, rng).expect("enc");

    let ctx = params.context();
    let size = |name: &str, bytes: usize, note: &str| BenchLine {
        name: format!("{name}.{tag}"),
        median_us: 0.0,
        min_us: 0.0,
        bytes: Some(bytes as u64),
        rounds: None,
        threads: 1,
        params: format!("{desc}; {note}"),
    };
    let seeded = decryptor.encrypt_symmetric(&pt, rng).expect("enc");
    emit(size(
        "bfv.ct_bytes",
        a.to_bytes(params).len(),
        "fresh, bit-packed, no compressor",
    ));
    emit(size(
        "bfv.ct_seeded_bytes",
        seeded.to_bytes(params).len(),
        "symmetric, seeded, bit-packed",
    ));
    let low = ev.mod_switch_to_level(&a, 0).expect("ms");
    emit(size(
        "bfv.ct_level0_bytes",
        low.to_bytes(params).len(),
        "after modulus switching to one prime",
    ));
    emit(size("setup.bfv.pk_bytes", pk_bytes, "public key, seeded"));
    emit(size(
        "setup.bfv.relin_key_bytes",
        rlk.to_bytes(ctx).len(),
        "seeded",
    ));
    emit(size(
        "setup.bfv.galois_key_bytes",
        gk.to_bytes(ctx).len(),
        "one Galois key, seeded",
    ));
    let mut r2 = ChaCha20Rng::from_os_rng();
    emit(line(
        &format!("setup.bfv.keygen_relin.{tag}"),
        time(budget / 4, || {
            std::hint::black_box(RelinKey::new(&sk, &mut r2));
        }),
        None,
        &desc,
    ));
    emit(line(
        &format!("bfv.encrypt_pk.{tag}"),
        time(budget, || {
            std::hint::black_box(encryptor.encrypt(&pt, &mut r2).expect("enc"));
        }),
        None,
        &desc,
    ));
    emit(line(
        &format!("bfv.encrypt_sk.{tag}"),
        time(budget, || {
            std::hint::black_box(decryptor.encrypt_symmetric(&pt, &mut r2).expect("enc"));
        }),
        None,
        &desc,
    ));
    emit(line(
        &format!("bfv.encode.{tag}"),
        time(budget, || {
            std::hint::black_box(enc.encode_u64(&vals).expect("encode"));
        }),
        None,
        &desc,
    ));
    emit(line(
        &format!("bfv.decrypt.{tag}"),
        time(budget, || {
            std::hint::black_box(decryptor.decrypt(&a).expect("dec"));
        }),
        None,
        &desc,
    ));
    emit(line(
        &format!("bfv.add.{tag}"),
        time(budget, || {
            std::hint::black_box(ev.add(&a, &b).expect("add"));
        }),
        None,
        &desc,
    ));
    let prepared = enc.prepare(&pt, a.level()).expect("prepare");
    emit(line(
        &format!("bfv.mul_plain.{tag}"),
        time(budget, || {
            std::hint::black_box(ev.mul_plain_prepared(&a, &prepared).expect("mul"));
        }),
        None,
        &format!("{desc}; plaintext prepared (NTT form)"),
    ));
    emit(line(
        &format!("bfv.mul_plain_unprepared.{tag}"),
        time(budget, || {
            std::hint::black_box(ev.mul_plain(&a, &pt).expect("mul"));
        }),
        None,
        &desc,
    ));
    emit(line(
        &format!("bfv.mul_relin.{tag}"),
        time(budget, || {
            std::hint::black_box(ev.mul_relin(&a, &b, &rlk).expect("mul"));
        }),
        None,
        &desc,
    ));
    emit(line(
        &format!("bfv.rotate.{tag}"),
        time(budget, || {
            std::hint::black_box(ev.rotate_rows(&a, 1, &gk).expect("rot"));
        }),
        None,
        &desc,
    ));
    emit(line(
        &format!("bfv.mod_switch.{tag}"),
        time(budget, || {
            std::hint::black_box(ev.mod_switch_to_next(&a).expect("ms"));
        }),
        None,
        &desc,
    ));
}

/// Private-inference benchmarks (`infer.*`, `setup.*`): the hybrid mode for the ReLU
/// networks (the bundled digits models, the networks of [`crate::nn::zoo::all`] and
/// `resnet20`, [`crate::nn::zoo::resnet20`] on `(3, 32, 32)`, whose plan is printed to
/// stderr), both parties on TCP loopback with one thread each (a one-thread rayon pool per
/// party), and the CKKS mode for `digits_square_mlp`.
pub fn nn(budget: Duration, emit: &mut (dyn FnMut(BenchLine) + Send)) {
    nn_filtered(budget, None, emit)
}

/// [`nn`] restricted to the networks whose name contains `filter` (all if `None`); the
/// CKKS figure runs only if its name matches too.
pub fn nn_filtered(
    budget: Duration,
    filter: Option<&str>,
    emit: &mut (dyn FnMut(BenchLine) + Send),
) {
    use crate::nn::{load_onnx_bytes, zoo, CkksModel, PreparedModel, Sequential};
    use crate::tensor::{Role, Session};
    let mut rng = ChaCha20Rng::from_os_rng();
    let mut nets: Vec<(String, Sequential, Vec<usize>)> = Vec::new();
    // Built in, so that an installed binary (no source tree) benchmarks them too.
    for (name, bytes) in [
        (
            "digits_mlp",
            &include_bytes!("../models/digits_mlp.onnx")[..],
        ),
        (
            "digits_cnn",
            &include_bytes!("../models/digits_cnn.onnx")[..],
        ),
    ] {
        let m = load_onnx_bytes(name, bytes).expect("bundled model");
        nets.push((name.into(), m, vec![1, 8, 8]));
    }
    for (name, m) in zoo::all(&mut rng) {
        nets.push((name.into(), m, vec![1, 28, 28]));
    }
    // CIFAR-size, with projection shortcuts (`Layer::Branches`).
    nets.push(("resnet20".into(), zoo::resnet20(&mut rng), vec![3, 32, 32]));
    let base = crate::tensor::SessionConfig::default();
    let desc = format!(
        "hybrid: BFV N=8192 t=2^{} coefficient encoding, Z_2^{} shares f={}, OT-based ReLU/max-pool, TCP loopback, one thread per party",
        base.ring_bits, base.ring_bits, base.frac_bits
    );
    let selected = |name: &str| filter.is_none_or(|f| name.contains(f));
    nets.retain(|(name, _, _)| selected(name));
    for (name, model, shape) in nets {
        if name == "resnet20" {
            // The plan the cost model predicts, to set beside the measured line.
            let plan = model
                .plan(crate::nn::NetworkModel::lan())
                .expect("plannable");
            eprintln!("plan of {name}:\n{}", plan.explain());
        }
        // As a server prepares it: flooding sized for its default cap of 2^16 inferences
        // per session.
        let server_model =
            PreparedModel::for_serving(&model, &base, 1 << 16, true).expect("prepare");
        let client_model =
            PreparedModel::for_serving(&model, &base, 1 << 16, false).expect("prepare");
        let config = server_model.config().clone();
        let q_fitted = config.bfv_literal().ciphertext_moduli_bits;
        let x =
            ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&shape), |_| rng.random_range(0.0..1.0));
        let runs = 5usize;
        let (c0, c1) = cipherml_mpc::net::tcp_loopback_pair(Default::default()).expect("loopback");
        let pool = || {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .expect("pool")
        };
        let server_config = config.clone();
        let server = std::thread::spawn(move || {
            pool().install(|| {
                let mut s = Session::with_config(Role::Server, c1, server_config).expect("set-up");
                for _ in 0..runs {
                    server_model.run_server(&mut s).expect("server");
                }
            })
        });
        let (setup, times, bytes, rounds) = pool().install(|| {
            let t = Instant::now();
            let mut s = Session::with_config(Role::Client, c0, config).expect("set-up");
            let setup = (t.elapsed().as_secs_f64() * 1e6, s.party().stats());
            let mut times = Vec::new();
            let before = s.party().stats();
            for _ in 0..runs {
                let t = Instant::now();
                std::hint::black_box(client_model.run_client(&mut s, &x).expect("client"));
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let after = s.party().stats();
            let bytes = (after.bytes_sent + after.bytes_received
                - before.bytes_sent
                - before.bytes_received)
                / runs as u64;
            let rounds = (after.rounds_sent - before.rounds_sent) / runs as u64;
            (setup, times, bytes, rounds)
        });
        server.join().expect("server thread");
        let mut times = times;
        times.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        emit(BenchLine {
            name: format!("setup.{name}"),
            median_us: setup.0,
            min_us: setup.0,
            bytes: Some(setup.1.bytes_sent + setup.1.bytes_received),
            rounds: Some(setup.1.rounds_sent),
            threads: 1,
            params: format!(
                "{desc}; base OTs and OT extension set-up, both directions, plus key generation"
            ),
        });
        emit(BenchLine {
            name: format!("infer.{name}"),
            median_us: times[times.len() / 2],
            min_us: times[0],
            bytes: Some(bytes),
            rounds: Some(rounds),
            threads: 1,
            params: format!(
                "{desc}; Q fitted to the model: {:?} bits (default {:?}); bytes both directions, rounds = client flights",
                q_fitted,
                base.bfv_literal().ciphertext_moduli_bits
            ),
        });
    }
    if !selected("digits_square_mlp") {
        return;
    }
    // Non-interactive CKKS: digits_square_mlp, one round trip.
    let model = load_onnx_bytes(
        "digits_square_mlp",
        include_bytes!("../models/digits_square_mlp.onnx"),
    )
    .expect("bundled model");
    let lit = cipherml_he::ckks::CkksParametersLiteral {
        degree: 8192,
        ciphertext_moduli_bits: vec![50, 36, 36, 36],
        special_moduli_bits: vec![50],
        scale_bits: 36,
    };
    let params = CkksParameters::new(&lit).expect("secure parameters");
    let compiled =
        CkksModel::compile(&model, &params, params.max_level()).expect("polynomial network");
    let t = Instant::now();
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let rlk = RelinKey::new(&sk, &mut rng);
    let gk = GaloisKeys::new(&sk, compiled.galois_elements(), &mut rng).expect("keys");
    let setup_us = t.elapsed().as_secs_f64() * 1e6;
    let key_bytes = rlk.to_bytes(params.context()).len() + gk.to_bytes(params.context()).len();
    let enc =
        cipherml_he::ckks::Encryptor::new(&params, PublicKey::new(&sk, &mut rng)).expect("pk");
    let dec = cipherml_he::ckks::Decryptor::new(&params, sk).expect("sk");
    let ev = cipherml_he::ckks::Evaluator::new(&params);
    let cdesc = format!(
        "{}; non-interactive, one round trip",
        describe_ckks(&params)
    );
    emit(BenchLine {
        name: "setup.digits_square_mlp".into(),
        median_us: setup_us,
        min_us: setup_us,
        bytes: Some(key_bytes as u64),
        rounds: Some(1),
        threads: 1,
        params: format!(
            "{cdesc}; relinearization + {} Galois keys, seeded",
            compiled.galois_elements().len()
        ),
    });
    let x =
        ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[1, 8, 8]), |_| rng.random_range(0.0..1.0));
    let mut bytes = 0usize;
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let tm = one.install(|| {
        time(budget, || {
            let ct = cipherml_he::tensor::CkksTensor::encrypt(&enc, &x, &mut rng).expect("enc");
            let up = ct.ct.to_bytes(&params).len();
            let out = compiled.infer(&ev, &rlk, &gk, &ct).expect("infer");
            let down = out.ct.to_bytes(&params).len();
            bytes = up + down;
            std::hint::black_box(out.decrypt(&dec).expect("dec"));
        })
    });
    emit(BenchLine {
        name: "infer.digits_square_mlp".into(),
        median_us: tm.0,
        min_us: tm.1,
        bytes: Some(bytes as u64),
        rounds: Some(1),
        threads: 1,
        params: format!("{cdesc}; client encrypt + server inference + client decrypt"),
    });
}

/// Training benchmarks (`train.*` lines): logistic regression on 3,750 x 20 Gaussian data
/// (full batch, and batches of 128), an MLP 20-10-5-1 on the same data, and the digits MLP
/// 64-32-10 (1,437 samples, batches of 64): two parties over TCP loopback, one thread
/// each, dealer-free (triples from OT; `.dealer` lines: from a dealer thread; `.ulp`
/// lines: dealer-free with truncations within one unit in the last place), 64-bit ring
/// with 16 fractional bits. Each figure is the mean per epoch over 10 epochs (logistic
/// regression and the MLP), per batch over an epoch's first 10 batches (`lr_b128`), or one
/// epoch (the digits MLP), after the session set-up; the set-up (base OTs: the only
/// input-independent work) is reported in its own line and, amortized over 10 epochs, in
/// `params`.
pub fn train(budget: Duration, filter: Option<&str>, emit: &mut (dyn FnMut(BenchLine) + Send)) {
    use crate::nn::{FitOptions, Layer, Loss, Optimizer, Sequential};
    use crate::tensor::{Role, Session, SessionConfig};
    use ndarray::{Array1, Array2, ArrayD, IxDyn};
    let _ = budget;
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut gauss = move || -> f64 {
        // Box-Muller.
        let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random_range(0.0..1.0));
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    };
    let dense = |out: usize, inp: usize, g: &mut dyn FnMut() -> f64| Layer::Dense {
        weight: Array2::from_shape_fn((out, inp), |_| g() * (1.0 / inp as f64).sqrt()),
        bias: Array1::zeros(out),
    };
    let (n, d) = (3750usize, 20usize);
    let x = ArrayD::from_shape_fn(IxDyn(&[n, d]), |_| gauss());
    let truth: Vec<f64> = (0..d).map(|_| gauss()).collect();
    let y = ArrayD::from_shape_fn(IxDyn(&[n, 1]), |i| {
        let z: f64 = (0..d).map(|j| x[[i[0], j]] * truth[j]).sum();
        f64::from(z > 0.0)
    });
    let lr = Sequential::new(vec![d]).add(dense(1, d, &mut gauss));
    let mlp = Sequential::new(vec![d])
        .add(dense(10, d, &mut gauss))
        .add(Layer::Relu)
        .add(dense(5, 10, &mut gauss))
        .add(Layer::Relu)
        .add(dense(1, 5, &mut gauss));
    let digits_x = crate::data::read_npy(crate::data::data_dir().join("digits_train_x.npy"))
        .map(|a| a.to_f64());
    let digits_y = crate::data::read_npy(crate::data::data_dir().join("digits_train_y.npy"))
        .map(|a| a.to_f64());
    /// Name, model, loss, features, targets, batch size, epochs.
    type Job = (
        &'static str,
        Sequential,
        Loss,
        ArrayD<f64>,
        ArrayD<f64>,
        usize,
        usize,
    );
    let mut jobs: Vec<Job> = vec![
        (
            "train.lr_full.epoch",
            lr.clone(),
            Loss::BinaryCrossEntropy,
            x.clone(),
            y.clone(),
            n,
            10,
        ),
        (
            "train.lr_b128.batch",
            lr,
            Loss::BinaryCrossEntropy,
            x.clone(),
            y.clone(),
            128,
            1,
        ),
        (
            "train.mlp.epoch",
            mlp,
            Loss::BinaryCrossEntropy,
            x,
            y,
            n,
            10,
        ),
    ];
    if let (Ok(dx), Ok(dy)) = (digits_x, digits_y) {
        let rows = dx.shape()[0];
        let dx = dx
            .into_shape_with_order(IxDyn(&[rows, 64]))
            .expect("64 pixels");
        let labels: Vec<f64> = dy.iter().copied().collect();
        let dy = crate::nn::one_hot(&labels, 10)
            .expect("digit labels")
            .into_dyn();
        let model = Sequential::new(vec![64])
            .add(dense(32, 64, &mut gauss))
            .add(Layer::Relu)
            .add(dense(10, 32, &mut gauss));
        jobs.push((
            "train.digits_mlp.epoch",
            model,
            Loss::SoftmaxCrossEntropy,
            dx,
            dy,
            64,
            1,
        ));
    }
    // The same jobs with triples from a dealer thread (a third party).
    let dealer_jobs: Vec<_> = jobs
        .iter()
        .filter(|j| j.0 != "train.lr_b128.batch")
        .map(|j| {
            let mut j = j.clone();
            j.0 = match j.0 {
                "train.lr_full.epoch" => "train.lr_full.epoch.dealer",
                "train.mlp.epoch" => "train.mlp.epoch.dealer",
                _ => "train.digits_mlp.epoch.dealer",
            };
            j
        })
        .collect();
    // The same jobs, dealer-free, with truncations within one unit in the last place
    // (`Truncation::WithinUlp`) instead of exact ones.
    let ulp_jobs: Vec<_> = jobs
        .iter()
        .map(|j| {
            let mut j = j.clone();
            j.0 = match j.0 {
                "train.lr_full.epoch" => "train.lr_full.epoch.ulp",
                "train.lr_b128.batch" => "train.lr_b128.batch.ulp",
                "train.mlp.epoch" => "train.mlp.epoch.ulp",
                _ => "train.digits_mlp.epoch.ulp",
            };
            j
        })
        .collect();
    jobs.extend(dealer_jobs);
    jobs.extend(ulp_jobs);
    for (name, model, loss, x, y, batch, epochs) in jobs {
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let dealer = name.ends_with(".dealer");
        let ulp = name.ends_with(".ulp");
        let per_batch = name.trim_end_matches(".ulp").ends_with(".batch");
        // A per-batch figure: the mean over the first ten batches of an epoch.
        let batches = if per_batch { 10 } else { 1 };
        let (x, y) = if per_batch {
            (
                x.slice_axis(ndarray::Axis(0), (0..batch * batches).into())
                    .to_owned(),
                y.slice_axis(ndarray::Axis(0), (0..batch * batches).into())
                    .to_owned(),
            )
        } else {
            (x, y)
        };
        let opts = FitOptions {
            epochs,
            batch_size: batch,
            shuffle_seed: Some(1),
            reveal_metrics: false,
        };
        let mut config = SessionConfig::training();
        if ulp {
            config.truncation = crate::tensor::Truncation::WithinUlp;
        }
        let dealer_thread = if dealer {
            use cipherml_mpc::triples::dealer::{Dealer, DealerConfig};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            config.triples = crate::tensor::Triples::Dealer {
                addr: listener.local_addr().expect("address"),
            };
            Some(std::thread::spawn(move || {
                let c = DealerConfig {
                    max_sessions: Some(1),
                    ..DealerConfig::default()
                };
                let mut rng = ChaCha20Rng::from_os_rng();
                let _ = Dealer::serve_tcp(&listener, &c, &mut rng, |_| {});
            }))
        } else {
            None
        };
        let trainer = model.compile(loss, Optimizer::sgd(0.1)).expect("trainable");
        let (c0, c1) = cipherml_mpc::net::tcp_loopback_pair(Default::default()).expect("loopback");
        let pool = || {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .expect("pool")
        };
        let (xs, ys) = (x.shape().to_vec(), y.shape().to_vec());
        let (sc, st, so) = (config.clone(), trainer.clone(), opts.clone());
        let (sx, sy) = (xs.clone(), ys.clone());
        let yv = y.clone();
        let server = std::thread::spawn(move || {
            pool().install(|| {
                let mut s = Session::with_config(Role::Server, c1, sc).expect("set-up");
                let mut t = st;
                let xt = s.input(Role::Client, &sx, || unreachable!()).expect("x");
                let yt = s.input(Role::Server, &sy, || yv).expect("y");
                t.fit(&mut s, &xt, &yt, &so).expect("server fit");
            })
        });
        let (setup_us, setup_stats, us, stats) = pool().install(|| {
            let t0 = Instant::now();
            let mut s = Session::with_config(Role::Client, c0, config).expect("set-up");
            let setup_us = t0.elapsed().as_secs_f64() * 1e6;
            let setup_stats = s.party().stats();
            let mut t = trainer;
            let xt = s.input(Role::Client, &xs, || x).expect("x");
            let yt = s.input(Role::Server, &ys, || unreachable!()).expect("y");
            let t1 = Instant::now();
            t.fit(&mut s, &xt, &yt, &opts).expect("client fit");
            let us = t1.elapsed().as_secs_f64() * 1e6;
            let after = s.party().stats();
            (setup_us, setup_stats, us, (after, setup_stats))
        });
        server.join().expect("server thread");
        if let Some(d) = dealer_thread {
            d.join().expect("dealer thread");
        }
        let (after, before) = stats;
        let bytes =
            after.bytes_sent + after.bytes_received - before.bytes_sent - before.bytes_received;
        let rounds = after.rounds_sent - before.rounds_sent;
        // The mean per batch or per epoch (the first epoch is the cheapest: a weight
        // shared from public initial values has a zero share, and the set-up's OTs are
        // still in stock).
        let per = (batches * epochs) as u64;
        let (us, bytes, rounds) = (us / per as f64, bytes / per, rounds / per);
        let setup_bytes = setup_stats.bytes_sent + setup_stats.bytes_received;
        let desc = format!(
            "{} samples x {:?}, batch {batch}{}, {loss:?}, SGD, {epochs} epoch(s){}; two parties, TCP loopback, one thread each, {}, Z_2^64 f=16, {} truncations, BFV t=2^64 for products by held data; online: this line; offline (set-up: base OTs, public keys) {:.1} ms and {setup_bytes} B once, {:.1} ms and {} B per epoch amortized over 10 epochs",
            xs[0],
            &xs[1..],
            if per_batch {
                " (the figure: the mean per batch over the epoch's 10 batches)"
            } else {
                ""
            },
            if epochs > 1 {
                " (the figure: the mean per epoch)"
            } else {
                ""
            },
            if dealer {
                "triples from a dealer thread (bytes: the two parties' only)"
            } else {
                "dealer-free (triples from OT)"
            },
            if ulp {
                "within-one-ulp"
            } else {
                "exact"
            },
            setup_us / 1e3,
            setup_us / 1e4,
            setup_bytes / 10
        );
        let prefix = name
            .trim_end_matches(".dealer")
            .trim_end_matches(".ulp")
            .rsplit_once('.')
            .map_or(name, |p| p.0);
        let prefix = if dealer {
            format!("{prefix}.dealer")
        } else if ulp {
            format!("{prefix}.ulp")
        } else {
            prefix.to_string()
        };
        emit(BenchLine {
            name: format!("{prefix}.setup"),
            median_us: setup_us,
            min_us: setup_us,
            bytes: Some(setup_bytes),
            rounds: Some(setup_stats.rounds_sent),
            threads: 1,
            params: "session set-up: base OTs both directions (input-independent)".into(),
        });
        emit(BenchLine {
            name: name.into(),
            median_us: us,
            min_us: us,
            bytes: Some(bytes),
            rounds: Some(rounds),
            threads: 1,
            params: desc,
        });
    }
}
