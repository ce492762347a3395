//! Models: ONNX import against tract (an independent runtime), and private CKKS inference on
//! whole test sets against the plaintext reference.

use std::sync::Arc;

use cipherml::data::{data_dir, read_npy};
use cipherml::he::ckks::{CkksParameters, CkksParametersLiteral, Decryptor, Encryptor, Evaluator};
use cipherml::he::rlwe::{GaloisKeys, PublicKey, RelinKey, SecretKey};
use cipherml::he::tensor::CkksTensor;
use cipherml::nn::{load_onnx, tract_reference, CkksModel, Layer, NnError, Sequential};
use ndarray::{ArrayD, Axis, IxDyn};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn models_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

fn digits() -> (ArrayD<f64>, Vec<i64>) {
    let x = read_npy(data_dir().join("digits_test_x.npy"))
        .unwrap()
        .to_f64();
    let y = read_npy(data_dir().join("digits_test_y.npy"))
        .unwrap()
        .into_i64()
        .unwrap();
    (x, y.iter().copied().collect())
}

fn cancer() -> (ArrayD<f64>, Vec<i64>) {
    let x = read_npy(data_dir().join("cancer_test_x.npy"))
        .unwrap()
        .to_f64();
    let y = read_npy(data_dir().join("cancer_test_y.npy"))
        .unwrap()
        .into_i64()
        .unwrap();
    (x, y.iter().copied().collect())
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

#[test]
fn onnx_import_matches_tract_on_every_bundled_model() {
    let (dx, _) = digits();
    let (cx, _) = cancer();
    for name in [
        "digits_mlp",
        "digits_cnn",
        "digits_square_mlp",
        "cancer_logreg",
    ] {
        let path = models_dir().join(format!("{name}.onnx"));
        let model = load_onnx(&path).unwrap();
        let summary = model.summary().unwrap();
        assert!(summary.contains("Dense"), "{name}: {summary}");
        let xs = if name.starts_with("digits") { &dx } else { &cx };
        for i in 0..25 {
            let x = xs.index_axis(Axis(0), i).to_owned();
            let ours = model.predict(&x).unwrap();
            let theirs = tract_reference(&path, &x).unwrap();
            let flat: Vec<f64> = ours.iter().copied().collect();
            assert_eq!(flat.len(), theirs.len(), "{name}");
            for (a, b) in flat.iter().zip(theirs.iter()) {
                assert!(
                    (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                    "{name} sample {i}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn bad_inputs_give_clear_errors() {
    let model = load_onnx(models_dir().join("digits_mlp.onnx")).unwrap();
    let wrong = ArrayD::zeros(IxDyn(&[1, 7, 7]));
    assert!(matches!(
        model.predict(&wrong),
        Err(NnError::LayerShape { .. })
    ));
    let mut nan = ArrayD::zeros(IxDyn(&[1, 8, 8]));
    nan[[0, 3, 3]] = f64::NAN;
    assert!(matches!(
        model.predict(&nan),
        Err(NnError::NonFinite { index: 27, .. })
    ));
    assert!(matches!(
        load_onnx(data_dir().join("README.md")),
        Err(NnError::Onnx { .. })
    ));
    let bad = Sequential::new(vec![3])
        .add(Layer::Flatten)
        .add(Layer::Dense {
            weight: ndarray::Array2::zeros((2, 4)),
            bias: ndarray::Array1::zeros(2),
        });
    assert!(matches!(bad.shapes(), Err(NnError::LayerShape { .. })));
}

/// N = 8192, three levels at scale 2^36 (128-bit: 50 + 3 x 36 + 50 = 208 <= 218 bits).
fn depth3() -> CkksParametersLiteral {
    CkksParametersLiteral {
        degree: 8192,
        ciphertext_moduli_bits: vec![50, 36, 36, 36],
        special_moduli_bits: vec![50],
        scale_bits: 36,
    }
}

fn ckks_accuracy(name: &str, xs: &ArrayD<f64>, ys: &[i64], binary: bool) -> (f64, f64, f64) {
    let path = models_dir().join(format!("{name}.onnx"));
    let model = load_onnx(&path).unwrap();
    let params = CkksParameters::new(&depth3()).unwrap();
    let compiled = CkksModel::compile(&model, &params, params.max_level()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let rlk = RelinKey::new(&sk, &mut rng);
    let gk = GaloisKeys::new(&sk, compiled.galois_elements(), &mut rng).unwrap();
    let enc = Encryptor::new(&params, PublicKey::new(&sk, &mut rng)).unwrap();
    let dec = Decryptor::new(&params, sk).unwrap();
    let ev = Evaluator::new(&params);
    let (mut agree, mut correct_priv, mut correct_plain) = (0usize, 0usize, 0usize);
    let mut max_err = 0f64;
    let n = xs.len_of(Axis(0));
    for i in 0..n {
        let x = xs.index_axis(Axis(0), i).to_owned();
        let want = model.predict(&x).unwrap();
        let ct = CkksTensor::encrypt(&enc, &x, &mut rng).unwrap();
        let out = compiled.infer(&ev, &rlk, &gk, &ct).unwrap();
        let got = out.decrypt(&dec).unwrap();
        assert_eq!(got.shape(), want.shape());
        for (a, b) in got.iter().zip(want.iter()) {
            max_err = max_err.max((a - b).abs());
        }
        let (cp, cw) = if binary {
            ((got[[0]] > 0.0) as usize, (want[[0]] > 0.0) as usize)
        } else {
            (argmax(&got), argmax(&want))
        };
        agree += (cp == cw) as usize;
        correct_priv += (cp as i64 == ys[i]) as usize;
        correct_plain += (cw as i64 == ys[i]) as usize;
    }
    assert_eq!(agree, n, "{name}: private and plaintext classes differ");
    (
        correct_priv as f64 / n as f64,
        correct_plain as f64 / n as f64,
        max_err,
    )
}

#[test]
fn ckks_mode_on_the_whole_digits_and_cancer_test_sets() {
    let (dx, dy) = digits();
    let (acc, plain, err) = ckks_accuracy("digits_square_mlp", &dx, &dy, false);
    println!("digits_square_mlp (CKKS): accuracy {acc:.4} (plaintext {plain:.4}), max logit error {err:.2e}");
    assert_eq!(acc, plain);
    assert!(err < 1e-2, "logit error {err}");
    let (cx, cy) = cancer();
    let (acc, plain, err) = ckks_accuracy("cancer_logreg", &cx, &cy, true);
    println!(
        "cancer_logreg (CKKS): accuracy {acc:.4} (plaintext {plain:.4}), max logit error {err:.2e}"
    );
    assert_eq!(acc, plain);
    assert!(err < 1e-3, "logit error {err}");
}

#[test]
fn ckks_mode_refuses_relu_and_too_deep_networks() {
    let model = load_onnx(models_dir().join("digits_mlp.onnx")).unwrap();
    let params = CkksParameters::new(&depth3()).unwrap();
    assert!(matches!(
        CkksModel::compile(&model, &params, 3),
        Err(NnError::NotSupportedInMode { .. })
    ));
    let sq = load_onnx(models_dir().join("digits_square_mlp.onnx")).unwrap();
    assert!(matches!(
        CkksModel::compile(&sq, &params, 2),
        Err(NnError::NotSupportedInMode { .. })
    ));
}

#[test]
fn ckks_mode_approximates_a_sigmoid_within_its_stated_error() {
    use cipherml::he::ckks::PolyApprox;
    use rand::Rng;
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let model = Sequential::new(vec![16])
        .add(Layer::Dense {
            weight: ndarray::Array2::from_shape_fn((8, 16), |_| rng.random_range(-0.5..0.5)),
            bias: ndarray::Array1::from_shape_fn(8, |_| rng.random_range(-0.5..0.5)),
        })
        .add(Layer::Sigmoid);
    let x = ArrayD::from_shape_fn(IxDyn(&[16]), |_| rng.random_range(-1.0..1.0));
    let want = model.predict(&x).unwrap();
    let (got, run) = model.predict_private(&x).unwrap();
    assert_eq!(run.mode, cipherml::nn::Mode::Ckks);
    let stated = PolyApprox::sigmoid(cipherml::nn::SIGMOID_BOUND, 7).max_error;
    for (a, b) in got.iter().zip(want.iter()) {
        assert!(
            (a - b).abs() <= stated + 1e-3,
            "{a} vs {b} (stated error {stated})"
        );
    }
}

#[test]
fn architectures_round_trip_and_hostile_ones_are_bounded() {
    use cipherml::nn::{ArchLayer, Architecture};
    for name in [
        "digits_mlp",
        "digits_cnn",
        "digits_square_mlp",
        "cancer_logreg",
    ] {
        let m = load_onnx(models_dir().join(format!("{name}.onnx"))).unwrap();
        let a = m.architecture();
        let z = Sequential::from_architecture(&a).unwrap();
        assert_eq!(z.architecture(), a);
        assert_eq!(z.shapes().unwrap(), m.shapes().unwrap());
    }
    let huge = Architecture {
        input_shape: vec![1 << 20],
        layers: vec![ArchLayer::Dense {
            inputs: 1 << 20,
            outputs: 1 << 20,
        }],
    };
    assert!(Sequential::from_architecture(&huge).is_err());
    let mismatched = Architecture {
        input_shape: vec![3],
        layers: vec![ArchLayer::Dense {
            inputs: 4,
            outputs: 2,
        }],
    };
    assert!(Sequential::from_architecture(&mismatched).is_err());
    let deep = Architecture {
        input_shape: vec![2],
        layers: vec![ArchLayer::Relu; 10_000],
    };
    assert!(Sequential::from_architecture(&deep).is_err());
}

#[test]
fn residual_architectures_round_trip_and_hostile_nesting_is_refused() {
    use cipherml::mpc::net::{Channel, MemoryChannel};
    use cipherml::nn::{ArchLayer, Architecture, MAX_ARCH_DEPTH};
    use cipherml::protocol::{recv, send, ProtocolError};
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    let resnet = cipherml::nn::zoo::resnet_tiny(&mut rng);
    let nested = Sequential::new(vec![4]).add(Layer::Residual {
        body: vec![
            Layer::Relu,
            Layer::Residual {
                body: vec![Layer::Square, Layer::Flatten],
            },
        ],
    });
    for m in [resnet, nested] {
        let a = m.architecture();
        let z = Sequential::from_architecture(&a).unwrap();
        assert_eq!(z.architecture(), a);
        assert_eq!(z.shapes().unwrap(), m.shapes().unwrap());
        assert_eq!(z.summary().unwrap(), m.summary().unwrap());
        // Over the wire (the hello's encoding) too.
        let (mut c0, mut c1) = MemoryChannel::pair();
        send(&mut c0, &a).unwrap();
        assert_eq!(recv::<_, Architecture>(&mut c1).unwrap(), a);
    }
    let nest = |depth: usize| {
        let mut l = ArchLayer::Relu;
        for _ in 0..depth {
            l = ArchLayer::Residual { body: vec![l] };
        }
        Architecture {
            input_shape: vec![2],
            layers: vec![l],
        }
    };
    assert!(Sequential::from_architecture(&nest(MAX_ARCH_DEPTH)).is_ok());
    assert!(Sequential::from_architecture(&nest(MAX_ARCH_DEPTH + 1)).is_err());
    assert!(Sequential::from_architecture(&nest(200)).is_err());
    // More layers in all than the bound, spread over residual bodies.
    let wide = Architecture {
        input_shape: vec![2],
        layers: vec![
            ArchLayer::Residual {
                body: vec![ArchLayer::Relu; 200],
            };
            2
        ],
    };
    assert!(Sequential::from_architecture(&wide).is_err());
    // A body whose inner activation is huge, though its output shape is fine.
    let inner_huge = Architecture {
        input_shape: vec![2],
        layers: vec![ArchLayer::Residual {
            body: vec![
                ArchLayer::Dense {
                    inputs: 2,
                    outputs: 1 << 23,
                },
                ArchLayer::Dense {
                    inputs: 1 << 23,
                    outputs: 2,
                },
                ArchLayer::Dense {
                    inputs: 2,
                    outputs: 1 << 25,
                },
            ],
        }],
    };
    assert!(Sequential::from_architecture(&inner_huge).is_err());
    // A hostile hello nests 100 000 residual blocks in 200 KB: decoding must refuse it
    // before recursing that deep. bincode (standard): Vec lengths and variant indices are
    // varints; Residual is variant 11. The encoding is checked on a shallow nesting first.
    let encode = |depth: usize| {
        let mut b = vec![1u8, 2, 1];
        for _ in 0..depth {
            b.extend_from_slice(&[11, 1]);
        }
        b.push(2); // Relu
        b
    };
    let (mut c0, mut c1) = MemoryChannel::pair();
    send(&mut c0, &nest(3)).unwrap();
    assert_eq!(c1.recv().unwrap(), encode(3));
    c0.send(&encode(MAX_ARCH_DEPTH)).unwrap();
    c0.flush().unwrap();
    assert_eq!(
        recv::<_, Architecture>(&mut c1).unwrap(),
        nest(MAX_ARCH_DEPTH)
    );
    for depth in [MAX_ARCH_DEPTH + 1, 100_000] {
        c0.send(&encode(depth)).unwrap();
        c0.flush().unwrap();
        match recv::<_, Architecture>(&mut c1) {
            Err(ProtocolError::Malformed(m)) => assert!(m.contains("nested deeper"), "{m}"),
            other => panic!("depth {depth}: expected Malformed, got {other:?}"),
        }
    }
}

#[test]
fn residual_blocks_need_the_body_to_keep_the_shape() {
    let m = Sequential::new(vec![4]).add(Layer::Residual {
        body: vec![Layer::Dense {
            weight: ndarray::Array2::zeros((3, 4)),
            bias: ndarray::Array1::zeros(3),
        }],
    });
    match m.predict(&ArrayD::zeros(IxDyn(&[4]))) {
        Err(NnError::ResidualShape { input, body_output }) => {
            assert_eq!((input, body_output), (vec![4], vec![3]));
        }
        other => panic!("expected ResidualShape, got {other:?}"),
    }
    assert!(matches!(m.shapes(), Err(NnError::ResidualShape { .. })));
}

#[test]
fn ckks_mode_runs_residual_blocks() {
    use rand::Rng;
    let mut rng = ChaCha20Rng::seed_from_u64(22);
    let mut dense = |i: usize, o: usize| Layer::Dense {
        weight: ndarray::Array2::from_shape_fn((o, i), |_| rng.random_range(-0.4..0.4)),
        bias: ndarray::Array1::from_shape_fn(o, |_| rng.random_range(-0.2..0.2)),
    };
    // Block 1's body squares (its output's scale differs from the shortcut's and it is two
    // levels lower); block 2's body is only a reshape (same level, added as is).
    let model = Sequential::new(vec![8])
        .add(Layer::Residual {
            body: vec![dense(8, 8), Layer::Square],
        })
        .add(Layer::Residual {
            body: vec![Layer::Flatten],
        })
        .add(dense(8, 3));
    let Layer::Residual { body } = &model.layers()[0] else {
        unreachable!()
    };
    let without_shortcut = Sequential::new(vec![8])
        .add(body[0].clone())
        .add(body[1].clone())
        .add(model.layers()[2].clone());
    let plan = model.plan(cipherml::nn::NetworkModel::lan()).unwrap();
    assert_eq!(plan.mode, cipherml::nn::Mode::Ckks, "{}", plan.explain());
    for _ in 0..2 {
        let x = ArrayD::from_shape_fn(IxDyn(&[8]), |_| rng.random_range(-1.0..1.0));
        let want = model.predict(&x).unwrap();
        let other = without_shortcut.predict(&x).unwrap();
        assert!(want
            .iter()
            .zip(other.iter())
            .any(|(a, b)| (a - b).abs() > 0.05));
        let (got, run) = model.predict_private(&x).unwrap();
        assert_eq!(run.mode, cipherml::nn::Mode::Ckks);
        for (a, b) in got.iter().zip(want.iter()) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }
}
