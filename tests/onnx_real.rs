//! Models exported by the real exporters (torch.onnx, tf2onnx from Keras, skl2onnx; made by
//! `tests/data/exporters/make_models.py`, see its README): each imports, its plaintext
//! predictions equal ONNX Runtime's on the bundled test set (within float32 rounding), and
//! the same classes; a subset also runs privately (hybrid mode, both parties in one
//! process) and gives ONNX Runtime's classes.

use cipherml::data::read_npy;
use cipherml::nn::{load_onnx, Activation, Layer, Sequential, SIGMOID_PRECISE_ERROR};
use ndarray::{ArrayD, Axis, IxDyn};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/exporters");
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data");

/// The models, with the data set they take.
const MODELS: &[(&str, &str)] = &[
    ("torch_norm_mlp", "digits"),
    ("torch_cnn_view", "digits"),
    ("torch_resnet_proj", "digits"),
    ("torch_concat", "digits"),
    ("torch_activations", "digits"),
    ("torch_pad_avgpool", "digits"),
    ("torch_depthwise", "digits"),
    ("torch_gemm_sigmoid_softmax", "digits"),
    ("torch_conv1d", "digits"),
    ("keras_cnn_nhwc", "digits"),
    ("keras_cnn_nhwc_transposes", "digits"),
    ("skl_logreg_cancer", "cancer"),
    ("skl_logreg_digits", "digits"),
];

fn model(name: &str) -> Sequential {
    load_onnx(format!("{DIR}/{name}.onnx")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The test set's samples, each in the model's input shape.
fn samples(data: &str, shape: &[usize]) -> Vec<ArrayD<f64>> {
    let x = read_npy(format!("{DATA}/{data}_test_x.npy"))
        .unwrap()
        .to_f64();
    x.outer_iter()
        .map(|s| {
            s.as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(shape))
                .unwrap()
        })
        .collect()
}

fn expected(name: &str) -> (ArrayD<f64>, Vec<i64>) {
    let e = read_npy(format!("{DIR}/{name}.expected.npy"))
        .unwrap()
        .to_f64();
    let c = read_npy(format!("{DIR}/{name}.classes.npy"))
        .unwrap()
        .into_i64()
        .unwrap();
    (e, c.iter().copied().collect())
}

fn argmax(v: &ArrayD<f64>) -> i64 {
    v.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0 as i64
}

#[test]
fn real_exports_import_and_match_onnx_runtime() {
    for &(name, data) in MODELS {
        let m = model(name);
        let (want, classes) = expected(name);
        let xs = samples(data, m.input_shape());
        assert_eq!(xs.len(), classes.len(), "{name}");
        let mut worst = 0.0f64;
        for (i, x) in xs.iter().enumerate() {
            let y = m.predict(x).unwrap_or_else(|e| panic!("{name}: {e}"));
            let w = want.index_axis(Axis(0), i);
            assert_eq!(y.len(), w.len(), "{name}: output length");
            for (a, b) in y.iter().zip(w.iter()) {
                worst = worst.max((a - b).abs() / (1.0 + b.abs()));
            }
            assert_eq!(argmax(&y), classes[i], "{name}: sample {i}: {y} vs {w}");
        }
        // float32 inference in ONNX Runtime against f64 here.
        assert!(worst < 1e-4, "{name}: relative error {worst}");
        eprintln!(
            "{name}: {} samples, worst relative error {worst:.2e}\n{}",
            xs.len(),
            m.summary().unwrap()
        );
    }
}

/// Private inference (the mode the planner picks, both parties in this process) of the
/// first samples of each model gives ONNX Runtime's classes, and outputs within the
/// fixed-point and approximation error.
#[test]
fn real_exports_run_privately() {
    for &(name, data) in MODELS {
        let m = model(name);
        let (want, classes) = expected(name);
        let xs = samples(data, m.input_shape());
        let mut worst = 0.0f64;
        let t = std::time::Instant::now();
        let n = 4;
        for (i, x) in xs.iter().take(n).enumerate() {
            let (y, _) = m
                .predict_private(x)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let w = want.index_axis(Axis(0), i);
            for (a, b) in y.iter().zip(w.iter()) {
                worst = worst.max((a - b).abs());
            }
            assert_eq!(argmax(&y), classes[i], "{name}: sample {i}: {y} vs {w}");
        }
        let bound = error_bound(&m);
        eprintln!(
            "{name}: worst abs error {worst:.4} (bound {bound:.3}), {:?} per sample",
            t.elapsed() / n as u32
        );
        assert!(worst < bound, "{name}: abs error {worst} above {bound}");
    }
}

/// A bound on the private output's absolute error: 0.05 of fixed-point error, plus the
/// stated error of each piecewise-linear sigmoid or tanh, carried through the layers after
/// it (a Dense layer multiplies an error by its largest row's L1 norm; the activations here
/// are 1-Lipschitz, the sigmoid 1/4).
fn error_bound(m: &Sequential) -> f64 {
    let mut e = 0.0f64;
    for l in m.layers() {
        e = match l {
            // The hybrid mode's piecewise-linear sigmoid, or the CKKS mode's degree-7
            // approximation on [-8, 8] (about 0.02), whichever the planner picks.
            Layer::Sigmoid => e / 4.0 + SIGMOID_PRECISE_ERROR.max(0.025),
            Layer::Activation(Activation::Tanh) => e + Activation::TANH_ERROR,
            Layer::Dense { weight, .. } => {
                e * weight
                    .rows()
                    .into_iter()
                    .map(|r| r.iter().map(|w| w.abs()).sum::<f64>())
                    .fold(0.0, f64::max)
            }
            _ if e == 0.0 => 0.0,
            Layer::Relu | Layer::Activation(_) | Layer::Softmax | Layer::Flatten => e,
            other => panic!("no error propagation for {}", other.describe()),
        };
    }
    0.05 + e
}

/// The real exports served by the inference server (each in the mode its plan picks) to
/// one client over TCP: the classes equal ONNX Runtime's on the bundled test sets (the
/// first `CIPHERML_SERVED_ROWS` rows of each, 24 by default; 0 for all of them).
#[test]
fn real_exports_are_served_privately_with_onnx_runtime_classes() {
    use cipherml::client::Client;
    use cipherml::server::{ModelSpec, Server, ServerConfig};
    let rows: usize = std::env::var("CIPHERML_SERVED_ROWS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(24);
    let specs: Vec<ModelSpec> = MODELS
        .iter()
        .map(|&(name, _)| ModelSpec::new(name, model(name)))
        .collect();
    let server = Server::bind_models("127.0.0.1:0", specs, ServerConfig::default()).unwrap();
    let addr = server.local_addr().to_string();
    std::thread::spawn(move || server.run());
    let mut client = Client::connect(&addr).unwrap();
    for &(name, data) in MODELS {
        let m = model(name);
        let (_, classes) = expected(name);
        let xs = samples(data, m.input_shape());
        let n = if rows == 0 {
            xs.len()
        } else {
            rows.min(xs.len())
        };
        let t = std::time::Instant::now();
        let before = client.bytes();
        let mut agree = 0;
        for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
            let views: Vec<_> = chunk.iter().map(|&i| xs[i].view()).collect();
            let batch = ndarray::stack(Axis(0), &views).unwrap();
            let ys = client.infer_batch(name, &batch).unwrap();
            for (&i, y) in chunk.iter().zip(ys.outer_iter()) {
                agree += usize::from(argmax(&y.to_owned()) == classes[i]);
            }
        }
        let mode = client
            .models()
            .iter()
            .find(|i| i.name == name)
            .unwrap()
            .mode;
        eprintln!(
            "{name} ({mode:?}): {agree}/{n} classes as ONNX Runtime's, {:.1} ms and {:.2} MB per \
             inference",
            t.elapsed().as_secs_f64() * 1e3 / n as f64,
            (client.bytes() - before) as f64 / n as f64 / 1e6
        );
        assert_eq!(agree, n, "{name}");
    }
    client.close().unwrap();
}
