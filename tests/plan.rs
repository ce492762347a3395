//! The cost model, `explain()` and `predict_private` (mode selection, both parties in one
//! process).

use cipherml::data::{data_dir, read_npy};
use cipherml::nn::{load_onnx, Backend, Mode, NetworkModel};
use ndarray::Axis;

fn models_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

#[test]
fn plans_pick_the_mode_and_explain_prints_every_layer() {
    let relu = load_onnx(models_dir().join("digits_cnn.onnx")).unwrap();
    let plan = relu.plan(NetworkModel::lan()).unwrap();
    assert_eq!(plan.mode, Mode::Hybrid);
    assert!(
        plan.alternative.is_none(),
        "ReLU networks have no CKKS mode"
    );
    let text = plan.explain();
    for l in relu.layers() {
        assert!(text.contains(&l.describe()), "{text}");
    }
    assert!(text.contains("* BFV coefficient encoding"), "{text}");
    assert!(
        text.contains("* secret shares (millionaire, exact)"),
        "{text}"
    );
    // The choices are typed: every layer's choice is one of its options, a hybrid plan
    // chooses no CKKS backend, and the labels printed are the backends' `Display`.
    for lp in &plan.layers {
        assert!(lp.options.iter().any(|(b, _)| *b == lp.chosen), "{lp:?}");
        assert!(!lp.chosen.is_ckks(), "{lp:?}");
        assert!(text.contains(&format!("* {}", lp.chosen)), "{text}");
    }
    assert!(plan
        .layers
        .iter()
        .any(|lp| lp.chosen == Backend::BfvCoefficient));
    assert!(plan
        .layers
        .iter()
        .any(|lp| lp.chosen == Backend::SharedMillionaire));
    let square = load_onnx(models_dir().join("digits_square_mlp.onnx")).unwrap();
    let plan = square.plan(NetworkModel::wan()).unwrap();
    assert_eq!(plan.mode, Mode::Ckks, "{}", plan.explain());
    assert!(plan.total.rounds <= 1.0);
    // Every layer with a CKKS option runs under it.
    for lp in &plan.layers {
        if lp.options.iter().any(|(b, _)| b.is_ckks()) {
            assert!(lp.chosen.is_ckks(), "{lp:?}");
        }
    }
    let (m, alt) = plan.alternative.unwrap();
    assert_eq!(m, Mode::Hybrid);
    // Over a WAN the one-round CKKS plan is estimated cheaper than the interactive one.
    assert!(alt.total_us(&NetworkModel::wan()) > plan.total.total_us(&NetworkModel::wan()));
}

#[test]
fn predict_private_matches_predict_in_both_modes() {
    let xs = read_npy(data_dir().join("digits_test_x.npy"))
        .unwrap()
        .to_f64();
    for (name, tol) in [("digits_cnn", 0.05), ("digits_square_mlp", 1e-2)] {
        let model = load_onnx(models_dir().join(format!("{name}.onnx"))).unwrap();
        for i in 0..3 {
            let x = xs.index_axis(Axis(0), i).to_owned();
            let want = model.predict(&x).unwrap();
            let (got, run) = model.predict_private(&x).unwrap();
            let err = got
                .iter()
                .zip(want.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < tol, "{name}: {err}");
            assert!(run.bytes > 0);
            let expected = if name == "digits_cnn" {
                Mode::Hybrid
            } else {
                Mode::Ckks
            };
            assert_eq!(run.mode, expected);
        }
    }
    let model = load_onnx(models_dir().join("digits_mlp.onnx")).unwrap();
    let bad = ndarray::ArrayD::zeros(ndarray::IxDyn(&[3]));
    assert!(model.predict_private(&bad).is_err());
}

#[test]
fn out_of_range_and_non_finite_inputs_are_clear_errors() {
    let model = load_onnx(models_dir().join("digits_cnn.onnx")).unwrap();
    let mut x = ndarray::ArrayD::zeros(ndarray::IxDyn(&[1, 8, 8]));
    x[[0, 0, 0]] = 1e12; // beyond the fixed-point range of Z_2^40 with 12 fractional bits
    let t = std::time::Instant::now();
    let err = model.predict_private(&x).unwrap_err();
    assert!(
        t.elapsed().as_secs() < 30,
        "the failed session must end promptly"
    );
    let text = err.to_string();
    assert!(
        text.contains("1000000000000") || text.to_lowercase().contains("range"),
        "{text}"
    );
    x[[0, 0, 0]] = f64::INFINITY;
    assert!(matches!(
        model.predict_private(&x),
        Err(cipherml::Error::NonFinite { index: 0, .. })
    ));
}
