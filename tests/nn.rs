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
    assert!(matches!(model.predict(&wrong), Err(NnError::Shape { .. })));
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
    assert!(matches!(bad.shapes(), Err(NnError::Shape { .. })));
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
