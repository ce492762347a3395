//! Criterion benches of private inference in the root crate: the bundled ONNX models
//! (`models/digits_mlp.onnx`, `models/digits_cnn.onnx`, `models/digits_square_mlp.onnx`) and
//! the LeNet-style CNN of the CrypTen comparison (`nn::zoo::lenet`, random weights).
//!
//! Each sample runs [`Sequential::predict_private`]: both parties in this process over the
//! in-memory channel, the mode the plan picks (the interactive hybrid for the ReLU networks,
//! non-interactive CKKS for `digits_square_mlp`), on the global rayon pool. `infer/*` times
//! the inference only (the latency `predict_private` measures, key set-up excluded);
//! `setup_and_infer/lenet` is the wall-clock time of the whole call, key generation, base
//! OTs and thread start included. The JSON-lines figures of BENCHMARKS.md (TCP loopback, one
//! thread per party, bytes and rounds) come from `cargo run --release --example bench -- nn`.
//!
//! ```text
//! cargo bench --bench inference                  # all of them, a few minutes on 2 cores
//! cargo bench --bench inference -- infer/lenet   # one
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use cipherml::nn::{load_onnx, zoo, Sequential};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// A bundled model from `models/`.
fn bundled(name: &str) -> Sequential {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(format!("{name}.onnx"));
    load_onnx(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A random input of the model's shape, pixel values in [0, 1).
fn input(model: &Sequential, rng: &mut ChaCha20Rng) -> ArrayD<f64> {
    ArrayD::from_shape_fn(IxDyn(model.input_shape()), |_| rng.random_range(0.0..1.0))
}

/// The networks benchmarked, with their names.
fn models() -> Vec<(&'static str, Sequential)> {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    vec![
        ("digits_mlp", bundled("digits_mlp")),
        ("digits_cnn", bundled("digits_cnn")),
        ("digits_square_mlp", bundled("digits_square_mlp")),
        ("lenet", zoo::lenet(&mut rng)),
    ]
}

fn private_inference(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut group = c.benchmark_group("infer");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, model) in models() {
        let x = input(&model, &mut rng);
        // One run up front: checks the model runs privately and reports its traffic.
        let (_, run) = model.predict_private(&x).expect("private inference");
        eprintln!(
            "infer/{name}: mode {:?}, {} bytes per inference, {} set-up bytes",
            run.mode, run.bytes, run.setup_bytes
        );
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (y, run) = model.predict_private(&x).expect("private inference");
                    std::hint::black_box(y);
                    total += Duration::from_secs_f64(run.latency_us / 1e6);
                }
                total
            })
        });
    }
    group.finish();
}

fn setup_and_inference(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let model = zoo::lenet(&mut rng);
    let x = input(&model, &mut rng);
    let mut group = c.benchmark_group("setup_and_infer");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("lenet", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(model.predict_private(&x).expect("private inference"));
            }
            t.elapsed()
        })
    });
    group.finish();
}

// `criterion_group!` defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, private_inference, setup_and_inference);
}
use group::benches;

criterion_main!(benches);
