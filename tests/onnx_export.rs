//! ONNX export: models written by `Sequential::to_onnx_bytes` / `save_onnx` read back by the
//! importer as the same model (weights rounded to f32), with the same predictions, and run
//! by tract (the independent reference) to the same outputs; layers the importer cannot
//! read back are refused with an error.

use cipherml::nn::{load_onnx, load_onnx_bytes, tract_reference, Layer, NnError, Sequential};
use ndarray::{Array, Array1, Array2, Array4, ArrayD, IxDyn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn uniform(rng: &mut StdRng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn dense(rng: &mut StdRng, inputs: usize, outputs: usize) -> Layer {
    let scale = 1.0 / (inputs as f64).sqrt();
    Layer::Dense {
        weight: Array2::from_shape_vec((outputs, inputs), uniform(rng, inputs * outputs, scale))
            .unwrap(),
        bias: Array1::from(uniform(rng, outputs, 0.5)),
    }
}

fn conv(rng: &mut StdRng, c: usize, o: usize, k: usize, stride: usize, padding: usize) -> Layer {
    let scale = 1.0 / ((c * k * k) as f64).sqrt();
    Layer::Conv2d {
        weight: Array4::from_shape_vec((o, c, k, k), uniform(rng, o * c * k * k, scale)).unwrap(),
        bias: Array1::from(uniform(rng, o, 0.5)),
        stride,
        padding,
    }
}

/// The layer with its weights rounded to f32, as the export stores them.
fn rounded(layer: &Layer) -> Layer {
    let r = |v: f64| v as f32 as f64;
    match layer {
        Layer::Dense { weight, bias } => Layer::Dense {
            weight: weight.mapv(r),
            bias: bias.mapv(r),
        },
        Layer::Conv2d {
            weight,
            bias,
            stride,
            padding,
        } => Layer::Conv2d {
            weight: weight.mapv(r),
            bias: bias.mapv(r),
            stride: *stride,
            padding: *padding,
        },
        Layer::Residual { body } => Layer::Residual {
            body: body.iter().map(rounded).collect(),
        },
        l => l.clone(),
    }
}

fn rounded_model(model: &Sequential, layers: &[Layer]) -> Sequential {
    layers.iter().map(rounded).fold(
        Sequential::new(model.input_shape().to_vec()),
        Sequential::add,
    )
}

/// An ONNX file in the temporary directory, removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new() -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        TempFile(std::env::temp_dir().join(format!(
            "cipherml-onnx-export-test-{}-{}.onnx",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        )))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn max_diff(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    assert_eq!(a.len(), b.len(), "{a} vs {b}");
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Exports `model`, reads it back (from bytes and from a file written by `save_onnx`), and
/// checks that the model read back is `expected` (the model with f32 weights, plus any
/// Flatten the export inserts) and that it, the original and tract agree on random inputs.
fn check_round_trip(model: &Sequential, expected: &Sequential, rng: &mut StdRng) {
    let bytes = model.to_onnx_bytes().unwrap();
    let back = load_onnx_bytes("exported", &bytes).unwrap();
    assert_eq!(&back, expected);

    let file = TempFile::new();
    model.save_onnx(&file.0).unwrap();
    assert_eq!(std::fs::read(&file.0).unwrap(), bytes);
    assert_eq!(&load_onnx(&file.0).unwrap(), expected);

    for _ in 0..5 {
        let n: usize = model.input_shape().iter().product();
        let x = Array::from_shape_vec(IxDyn(model.input_shape()), uniform(rng, n, 1.0)).unwrap();
        let want = model.predict(&x).unwrap();
        let got = back.predict(&x).unwrap();
        // The same shape, but for a final global pooling (read back as (C, 1, 1)).
        assert_eq!(got.shape(), expected.predict(&x).unwrap().shape());
        let d = max_diff(&want, &got);
        assert!(
            d < 1e-5,
            "import of the export differs by {d}: {got} vs {want}"
        );
        // tract flattens its output.
        let flat = want.iter().copied().collect::<Array1<f64>>().into_dyn();
        let tract = tract_reference(&file.0, &x).unwrap();
        let d = max_diff(&flat, &tract);
        assert!(d < 1e-4, "tract differs by {d}: {tract} vs {want}");
    }
}

#[test]
fn mlp_round_trips_and_matches_tract() {
    let mut rng = StdRng::seed_from_u64(1);
    let model = Sequential::new(vec![64])
        .add(dense(&mut rng, 64, 32))
        .add(Layer::Relu)
        .add(dense(&mut rng, 32, 10));
    let expected = rounded_model(&model, model.layers());
    check_round_trip(&model, &expected, &mut rng);
}

#[test]
fn cnn_round_trips_and_matches_tract() {
    let mut rng = StdRng::seed_from_u64(2);
    let model = Sequential::new(vec![1, 8, 8])
        .add(conv(&mut rng, 1, 4, 3, 1, 1))
        .add(Layer::Relu)
        .add(Layer::MaxPool {
            kernel: 2,
            stride: 2,
        })
        .add(Layer::Flatten)
        .add(dense(&mut rng, 64, 16))
        .add(Layer::Sigmoid)
        .add(dense(&mut rng, 16, 3));
    assert_eq!(model.shapes().unwrap().last().unwrap(), &vec![3]);
    let expected = rounded_model(&model, model.layers());
    check_round_trip(&model, &expected, &mut rng);
}

#[test]
fn every_exportable_layer_round_trips_and_matches_tract() {
    let mut rng = StdRng::seed_from_u64(3);
    // (3, 9, 9) -> conv stride 2 -> (4, 4, 4) -> residual (conv pad 1, square) -> avg pool
    // -> (4, 3, 3) -> global average -> (4,) -> relu -> dense -> softmax.
    let body = vec![conv(&mut rng, 4, 4, 3, 1, 1), Layer::Square];
    let model = Sequential::new(vec![3, 9, 9])
        .add(conv(&mut rng, 3, 4, 3, 2, 0))
        .add(Layer::Residual { body })
        .add(Layer::AvgPool {
            kernel: 2,
            stride: 1,
        })
        .add(Layer::GlobalAvgPool)
        .add(Layer::Relu)
        .add(dense(&mut rng, 4, 5))
        .add(Layer::Residual {
            body: vec![dense(&mut rng, 5, 5), Layer::Sigmoid],
        })
        .add(Layer::Softmax);
    assert_eq!(model.shapes().unwrap().last().unwrap(), &vec![5]);
    // GlobalAveragePool keeps the spatial axes: a Flatten is written before the Dense, and
    // the import folds the pair of reshapes away (the ReLU between them commutes).
    let expected = rounded_model(&model, model.layers());
    check_round_trip(&model, &expected, &mut rng);

    // A Flatten already there is not doubled, and reads back as nothing (a vector stays
    // one); one is written before a residual block or a softmax, and reads back likewise.
    let model = Sequential::new(vec![2, 3, 3])
        .add(Layer::GlobalAvgPool)
        .add(Layer::Flatten)
        .add(dense(&mut rng, 2, 2));
    let expected = Sequential::new(vec![2, 3, 3])
        .add(Layer::GlobalAvgPool)
        .add(model.layers()[2].clone());
    check_round_trip(
        &model,
        &rounded_model(&expected, expected.layers()),
        &mut rng,
    );
    let model = Sequential::new(vec![2, 3, 3])
        .add(Layer::GlobalAvgPool)
        .add(Layer::Residual {
            body: vec![Layer::Relu],
        })
        .add(Layer::Softmax);
    check_round_trip(&model, &model, &mut rng);
    // A model ending in GlobalAvgPool: the file's output is [1, C, 1, 1], which the
    // import keeps (a reshape to (C, 1, 1) after the pooling); and an empty model.
    let model = Sequential::new(vec![2, 3, 3]).add(Layer::GlobalAvgPool);
    let expected = model.clone().add(Layer::Reshape {
        shape: vec![2, 1, 1],
    });
    check_round_trip(&model, &expected, &mut rng);
    let model = Sequential::new(vec![7]);
    check_round_trip(&model, &model, &mut rng);
}

#[test]
fn layers_the_importer_cannot_read_are_refused() {
    let poly = Layer::Poly {
        coeffs: vec![0.5, 0.25, 0.125],
    };
    let model = Sequential::new(vec![4]).add(Layer::Relu).add(poly.clone());
    match model.to_onnx_bytes() {
        Err(NnError::NotSupportedInMode { layer, mode, .. }) => {
            assert!(
                layer.contains("Poly") && layer.contains("layer 1"),
                "{layer}"
            );
            assert_eq!(mode, "ONNX export");
        }
        other => panic!("expected NotSupportedInMode, got {other:?}"),
    }
    // Inside a residual block, with its path.
    let model = Sequential::new(vec![4]).add(Layer::Residual {
        body: vec![Layer::Relu, poly],
    });
    match model.save_onnx(std::env::temp_dir().join("cipherml-never-written.onnx")) {
        Err(NnError::NotSupportedInMode { layer, .. }) => {
            assert!(layer.contains("layer 0.1"), "{layer}")
        }
        other => panic!("expected NotSupportedInMode, got {other:?}"),
    }
    // Layers that do not chain.
    let mut rng = StdRng::seed_from_u64(4);
    let model = Sequential::new(vec![4]).add(dense(&mut rng, 5, 2));
    assert!(matches!(
        model.to_onnx_bytes(),
        Err(NnError::LayerShape { .. })
    ));
    // A file that cannot be written.
    let model = Sequential::new(vec![4]).add(Layer::Relu);
    let path = std::env::temp_dir()
        .join("cipherml-no-such-directory-for-onnx-export")
        .join("m.onnx");
    match model.save_onnx(&path) {
        Err(NnError::OnnxWrite { path: p, .. }) => assert_eq!(p, path.display().to_string()),
        other => panic!("expected an Onnx error, got {other:?}"),
    }
}
