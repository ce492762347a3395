//! Interactive hybrid inference (BFV linear layers, two-party ReLU, max-pool and truncation)
//! on the bundled ReLU networks, against the plaintext reference.

use std::sync::Arc;
use std::time::Instant;

use cipherml::data::{data_dir, read_npy};
use cipherml::he::rlwe::SecretKey;
use cipherml::mpc::net::{tcp_loopback_pair, Channel, ChannelConfig, MemoryChannel};
use cipherml::mpc::party::Party;
use cipherml::mpc::prg::os_rng;
use cipherml::mpc::share::PartyId;
use cipherml::nn::{load_onnx, HybridConfig, HybridModel};
use ndarray::{ArrayD, Axis};

fn models_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

fn argmax(v: &ArrayD<f64>) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// Runs `count` inferences of `name`, both parties over the given channel pair; returns
/// (agreement with the plaintext classes, accuracy, plaintext accuracy, max logit error,
/// client bytes per inference).
fn run<C: Channel + Send + 'static>(
    name: &str,
    count: usize,
    c0: C,
    c1: C,
) -> (usize, f64, f64, f64, f64) {
    let model = load_onnx(models_dir().join(format!("{name}.onnx"))).unwrap();
    let config = HybridConfig::default();
    let server_model = HybridModel::compile(&model, &config, true).unwrap();
    let client_model = HybridModel::compile(&model, &config, false).unwrap();
    let xs = read_npy(data_dir().join("digits_test_x.npy"))
        .unwrap()
        .to_f64();
    let ys = read_npy(data_dir().join("digits_test_y.npy"))
        .unwrap()
        .into_i64()
        .unwrap();
    let server = std::thread::spawn(move || {
        let mut p = Party::setup(PartyId::P1, c1, os_rng()).unwrap();
        for _ in 0..count {
            server_model.run_server(&mut p).unwrap();
        }
    });
    let mut p = Party::setup(PartyId::P0, c0, os_rng()).unwrap();
    let sk = Arc::new(SecretKey::random(
        client_model.params().context(),
        &mut os_rng(),
    ));
    let start_bytes = p.stats().bytes_sent + p.stats().bytes_received;
    let (mut agree, mut correct, mut correct_plain, mut max_err) = (0, 0, 0, 0f64);
    for i in 0..count {
        let x = xs.index_axis(Axis(0), i).to_owned();
        let want = model.predict(&x).unwrap();
        let got = client_model.run_client(&mut p, &sk, &x).unwrap();
        for (a, b) in got.iter().zip(want.iter()) {
            max_err = max_err.max((a - b).abs());
        }
        agree += (argmax(&got) == argmax(&want)) as usize;
        correct += (argmax(&got) as i64 == ys[i]) as usize;
        correct_plain += (argmax(&want) as i64 == ys[i]) as usize;
    }
    server.join().unwrap();
    let bytes =
        (p.stats().bytes_sent + p.stats().bytes_received - start_bytes) as f64 / count as f64;
    (
        agree,
        correct as f64 / count as f64,
        correct_plain as f64 / count as f64,
        max_err,
        bytes,
    )
}

#[test]
fn hybrid_mlp_and_cnn_agree_with_plaintext_on_the_whole_test_set() {
    for name in ["digits_mlp", "digits_cnn"] {
        let count = 360;
        let (c0, c1) = MemoryChannel::pair();
        let t = Instant::now();
        let (agree, acc, plain, err, bytes) = run(name, count, c0, c1);
        println!(
            "{name} (hybrid, in memory): {agree}/{count} classes agree, accuracy {acc:.3} (plaintext {plain:.3}), \
             max logit error {err:.2e}, {:.0} ms and {:.2} MB per inference",
            t.elapsed().as_secs_f64() * 1e3 / count as f64,
            bytes / 1e6
        );
        assert_eq!(agree, count, "{name}");
        assert!(err < 0.05, "{name}: logit error {err}");
    }
}

#[test]
fn hybrid_cnn_over_tcp() {
    let (c0, c1) = tcp_loopback_pair(ChannelConfig::default()).unwrap();
    let (agree, _, _, err, _) = run("digits_cnn", 5, c0, c1);
    assert_eq!(agree, 5);
    assert!(err < 0.05);
}

#[test]
fn benchmark_networks_a_to_d_and_lenet_agree_with_plaintext() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
    for (name, model) in cipherml::nn::zoo::all(&mut rng) {
        let config = HybridConfig::default();
        let server_model = HybridModel::compile(&model, &config, true).unwrap();
        let client_model = HybridModel::compile(&model, &config, false).unwrap();
        let x = ArrayD::from_shape_fn(ndarray::IxDyn(&[1, 28, 28]), |_| rng.random_range(0.0..1.0));
        let want = model.predict(&x).unwrap();
        let (c0, c1) = MemoryChannel::pair();
        let server = std::thread::spawn(move || {
            let mut p = Party::setup(PartyId::P1, c1, os_rng()).unwrap();
            server_model.run_server(&mut p).unwrap();
        });
        let mut p = Party::setup(PartyId::P0, c0, os_rng()).unwrap();
        let sk = Arc::new(SecretKey::random(
            client_model.params().context(),
            &mut os_rng(),
        ));
        let t = Instant::now();
        let got = client_model.run_client(&mut p, &sk, &x).unwrap();
        server.join().unwrap();
        let err = got
            .iter()
            .zip(want.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        println!(
            "{name}: {:.0} ms, {:.2} MB, max logit error {err:.2e}",
            t.elapsed().as_secs_f64() * 1e3,
            (p.stats().bytes_sent + p.stats().bytes_received) as f64 / 1e6
        );
        assert_eq!(argmax(&got), argmax(&want), "{name}");
        assert!(err < 0.05, "{name}: logit error {err}");
    }
}

#[test]
fn hybrid_square_avgpool_and_dense_only_models() {
    use rand::{Rng, SeedableRng};
    // digits_square_mlp (x*x activation) and cancer_logreg (one Gemm) in hybrid mode.
    let xs = read_npy(data_dir().join("digits_test_x.npy"))
        .unwrap()
        .to_f64();
    let cx = read_npy(data_dir().join("cancer_test_x.npy"))
        .unwrap()
        .to_f64();
    for (name, data, count) in [
        ("digits_square_mlp", &xs, 30usize),
        ("cancer_logreg", &cx, 114),
    ] {
        let model = load_onnx(models_dir().join(format!("{name}.onnx"))).unwrap();
        let config = HybridConfig::default();
        let server_model = HybridModel::compile(&model, &config, true).unwrap();
        let client_model = HybridModel::compile(&model, &config, false).unwrap();
        let (c0, c1) = MemoryChannel::pair();
        let server = std::thread::spawn(move || {
            let mut p = Party::setup(PartyId::P1, c1, os_rng()).unwrap();
            for _ in 0..count {
                server_model.run_server(&mut p).unwrap();
            }
        });
        let mut p = Party::setup(PartyId::P0, c0, os_rng()).unwrap();
        let sk = Arc::new(SecretKey::random(
            client_model.params().context(),
            &mut os_rng(),
        ));
        for i in 0..count {
            let x = data.index_axis(Axis(0), i).to_owned();
            let want = model.predict(&x).unwrap();
            let got = client_model.run_client(&mut p, &sk, &x).unwrap();
            let err = got
                .iter()
                .zip(want.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 0.05, "{name} sample {i}: error {err}");
            if want.len() == 1 {
                assert_eq!(got[[0]] > 0.0, want[[0]] > 0.0, "{name} sample {i}");
            } else {
                assert_eq!(argmax(&got), argmax(&want), "{name} sample {i}");
            }
        }
        server.join().unwrap();
    }
    // Average pooling and global average pooling.
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
    let model = cipherml::nn::Sequential::new(vec![2, 8, 8])
        .add(cipherml::nn::Layer::Conv2d {
            weight: ndarray::Array4::from_shape_fn((4, 2, 3, 3), |_| rng.random_range(-0.5..0.5)),
            bias: ndarray::Array1::from_shape_fn(4, |_| rng.random_range(-0.1..0.1)),
            stride: 1,
            padding: 1,
        })
        .add(cipherml::nn::Layer::AvgPool {
            kernel: 2,
            stride: 2,
        })
        .add(cipherml::nn::Layer::Relu)
        .add(cipherml::nn::Layer::GlobalAvgPool);
    let x = ArrayD::from_shape_fn(ndarray::IxDyn(&[2, 8, 8]), |_| rng.random_range(0.0..1.0));
    let want = model.predict(&x).unwrap();
    let config = HybridConfig::default();
    let server_model = HybridModel::compile(&model, &config, true).unwrap();
    let client_model = HybridModel::compile(&model, &config, false).unwrap();
    let (c0, c1) = MemoryChannel::pair();
    let server = std::thread::spawn(move || {
        let mut p = Party::setup(PartyId::P1, c1, os_rng()).unwrap();
        server_model.run_server(&mut p).unwrap();
    });
    let mut p = Party::setup(PartyId::P0, c0, os_rng()).unwrap();
    let sk = Arc::new(SecretKey::random(
        client_model.params().context(),
        &mut os_rng(),
    ));
    let got = client_model.run_client(&mut p, &sk, &x).unwrap();
    server.join().unwrap();
    assert_eq!(got.shape(), &[4]);
    for (a, b) in got.iter().zip(want.iter()) {
        assert!((a - b).abs() < 0.01, "{a} vs {b}");
    }
}
