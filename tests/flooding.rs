//! Noise flooding of CKKS replies: the computed bound holds on measured noise, and a client
//! that evaluates the server's circuit for two candidate weight sets (equal outputs on its
//! input) cannot tell from a flooded reply which one was used, while it can without
//! flooding (negative control). Also the server's mode choice.

use std::sync::Arc;

use cipherml::he::ckks::{CkksParameters, CkksParametersLiteral, Decryptor, Encryptor, Evaluator};
use cipherml::he::rlwe::{GaloisKeys, PublicKey, RelinKey, SecretKey};
use cipherml::he::tensor::CkksTensor;
use cipherml::nn::{load_onnx, CkksFloodConfig, CkksModel, Layer, NnError, Sequential};
use cipherml::protocol::{ModelMode, ProtocolError};
use cipherml::server::{ModeChoice, Server, ServerConfig};
use ndarray::{Array1, Array2, ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// N = 8192, three levels at scale 2^36 (128-bit).
fn params() -> Arc<CkksParameters> {
    CkksParameters::new(&CkksParametersLiteral {
        degree: 8192,
        ciphertext_moduli_bits: vec![50, 36, 36, 36],
        special_moduli_bits: vec![50],
        scale_bits: 36,
    })
    .unwrap()
}

struct Client {
    enc: Encryptor,
    dec: Decryptor,
    rlk: RelinKey,
    gk: GaloisKeys,
}

fn client(params: &Arc<CkksParameters>, model: &CkksModel, rng: &mut ChaCha20Rng) -> Client {
    let sk = Arc::new(SecretKey::random(params.context(), rng));
    Client {
        enc: Encryptor::new(params, PublicKey::new(&sk, rng)).unwrap(),
        rlk: RelinKey::new(&sk, rng),
        gk: GaloisKeys::new(&sk, model.galois_elements(), rng).unwrap(),
        dec: Decryptor::new(params, sk).unwrap(),
    }
}

fn dense(w: &Array2<f64>) -> Sequential {
    Sequential::new(vec![w.ncols()]).add(Layer::Dense {
        weight: w.clone(),
        bias: Array1::zeros(w.nrows()),
    })
}

#[test]
fn measured_noise_stays_below_the_computed_bound() {
    let params = params();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let w1 = Array2::from_shape_fn((8, 16), |_| rng.random_range(-1.0..1.0));
    let w2 = Array2::from_shape_fn((4, 8), |_| rng.random_range(-1.0..1.0));
    let model = Sequential::new(vec![16])
        .add(Layer::Dense {
            weight: w1,
            bias: Array1::from_elem(8, 0.25),
        })
        .add(Layer::Square)
        .add(Layer::Dense {
            weight: w2,
            bias: Array1::zeros(4),
        });
    let compiled = CkksModel::compile(&model, &params, params.max_level()).unwrap();
    // Caps that these weights and inputs meet.
    let config = CkksFloodConfig {
        weight_cap: 1.0,
        input_cap: 1.0,
        ..CkksFloodConfig::default()
    };
    let plan = compiled.flood_plan(&params, &config).unwrap();
    let c = client(&params, &compiled, &mut rng);
    let ev = Evaluator::new(&params);
    let bound = plan.noise_log2.exp2() / params.default_scale();
    let mut worst = 0f64;
    for _ in 0..4 {
        let x = ArrayD::from_shape_fn(IxDyn(&[16]), |_| rng.random_range(0.0..1.0));
        let want = model.predict(&x).unwrap();
        let ct = CkksTensor::encrypt(&c.enc, &x, &mut rng).unwrap();
        // Before flooding: the computation's error (per value, relative to the scale) is
        // below the bound the flooding is sized from.
        let out = compiled.infer(&ev, &c.rlk, &c.gk, &ct).unwrap();
        let got = out.decrypt(&c.dec).unwrap();
        for (a, b) in got.iter().zip(want.iter()) {
            worst = worst.max((a - b).abs());
        }
    }
    assert!(
        worst <= bound,
        "measured error {worst:e} above the bound {bound:e}"
    );
    // A weight above the cap is refused.
    let tight = CkksFloodConfig {
        weight_cap: 0.5,
        ..config
    };
    assert!(matches!(
        compiled.flood_plan(&params, &tight),
        Err(NnError::WeightAboveCap { .. })
    ));
}

/// A flooded reply decrypts to the result within the plan's stated error, and its error
/// is the flooding's (far above the unflooded one).
#[test]
fn flooded_replies_carry_the_planned_noise() {
    let params = params();
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let w = Array2::from_shape_fn((10, 64), |_| rng.random_range(-1.0..1.0));
    let model = dense(&w);
    let compiled = CkksModel::compile(&model, &params, params.max_level()).unwrap();
    let plan = compiled
        .flood_plan(&params, &CkksFloodConfig::default())
        .unwrap();
    assert!(plan.fits(), "{plan:?}");
    let c = client(&params, &compiled, &mut rng);
    let ev = Evaluator::new(&params);
    let x = ArrayD::from_shape_fn(IxDyn(&[64]), |_| rng.random_range(0.0..1.0));
    let want = model.predict(&x).unwrap();
    let ct = CkksTensor::encrypt(&c.enc, &x, &mut rng).unwrap();
    let err = |m: &CkksModel, rng: &mut ChaCha20Rng| {
        let reply = m.reply(&ev, &c.rlk, &c.gk, &c.enc, &ct, rng).unwrap();
        let vals = c.dec.decrypt_f64(&reply).unwrap();
        vals.iter()
            .zip(want.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max)
    };
    let bare = err(&compiled, &mut rng);
    let flooded = err(&compiled.clone().with_flood(plan), &mut rng);
    assert!(flooded <= plan.error_log2.exp2(), "{flooded:e} vs {plan:?}");
    // The flooding is there: its expected size is 2^flood sqrt(N/3) / scale.
    let expected =
        (plan.flood_log2 as f64).exp2() * (8192f64 / 3.0).sqrt() / params.default_scale();
    assert!(
        flooded > expected / 64.0,
        "{flooded:e} vs expected {expected:e}"
    );
    assert!(bare < 1e-3, "{bare:e}");
}

/// The experiment at a size CI runs in seconds: `W` and `W' = W + D` with `D x = 0`
/// and `|D|` tiny (`scale_d`; the weights are encoded at scale `q ~ 2^36` here, so `D` must
/// be large enough to change their encoding, else the two circuits are the same). The client
/// evaluates the circuit itself for each candidate and picks the one whose result is closer
/// to the reply (a tie counts as half). Returns how often it picks the true one.
fn guess_rate(flood: bool, trials: usize, seed: u64, scale_d: f64) -> f64 {
    let params = params();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let (rows, cols) = (10, 64);
    let x = ArrayD::from_shape_fn(IxDyn(&[cols]), |_| rng.random_range(0.0..1.0));
    let w = Array2::from_shape_fn((rows, cols), |_| rng.random_range(-1.0..1.0));
    // D: random rows with their component along x removed, scaled to 1e-12.
    let xs: Vec<f64> = x.iter().copied().collect();
    let xx: f64 = xs.iter().map(|v| v * v).sum();
    let mut d = Array2::from_shape_fn((rows, cols), |_| rng.random_range(-1.0..1.0));
    for mut row in d.rows_mut() {
        let p: f64 = row.iter().zip(&xs).map(|(a, b)| a * b).sum::<f64>() / xx;
        for (v, xi) in row.iter_mut().zip(&xs) {
            *v -= p * xi;
        }
        row.mapv_inplace(|v| v * scale_d);
    }
    let w2 = &w + &d;
    let diff = (dense(&w).predict(&x).unwrap() - dense(&w2).predict(&x).unwrap())
        .iter()
        .fold(0f64, |a, v| a.max(v.abs()));
    assert!(diff < 1e-13, "equal outputs on x: {diff:e}");
    let m1 = CkksModel::compile(&dense(&w), &params, params.max_level()).unwrap();
    let m2 = CkksModel::compile(&dense(&w2), &params, params.max_level()).unwrap();
    let plan = m1.flood_plan(&params, &CkksFloodConfig::default()).unwrap();
    assert_eq!(
        plan,
        m2.flood_plan(&params, &CkksFloodConfig::default()).unwrap()
    );
    let c = client(&params, &m1, &mut rng);
    let ev = Evaluator::new(&params);
    let mut right = 0.0;
    for i in 0..trials {
        let (truth, other) = if i % 2 == 0 { (&m1, &m2) } else { (&m2, &m1) };
        let server = if flood {
            truth.clone().with_flood(plan)
        } else {
            truth.clone()
        };
        let ct = CkksTensor::encrypt(&c.enc, &x, &mut rng).unwrap();
        let reply = server
            .reply(&ev, &c.rlk, &c.gk, &c.enc, &ct, &mut rng)
            .unwrap();
        let r = c.dec.decrypt_decode(&reply).unwrap();
        let residual = |m: &CkksModel| {
            let y = m.infer(&ev, &c.rlk, &c.gk, &ct).unwrap();
            let v = c.dec.decrypt_decode(&y.ct).unwrap();
            v.iter()
                .zip(&r)
                .map(|(a, b)| (a - b).norm_sqr())
                .sum::<f64>()
        };
        let (a, b) = (residual(truth), residual(other));
        right += if a < b {
            1.0
        } else if a == b {
            0.5
        } else {
            0.0
        };
    }
    right / trials as f64
}

#[test]
fn flooded_replies_do_not_tell_equal_output_weights_apart() {
    let trials = 40;
    let d = 1e-9;
    let flooded = guess_rate(true, trials, 11, d);
    assert!(
        (0.3..=0.7).contains(&flooded),
        "with flooding the client picks the true weights in {flooded} of trials"
    );
    // Negative control: without flooding the same client tells them apart.
    let bare = guess_rate(false, trials, 11, d);
    println!("true weights picked: {flooded} with flooding, {bare} without");
    assert!(
        bare >= 0.9,
        "without flooding the client should tell the weights apart, rate {bare}"
    );
}

fn models_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

#[test]
fn auto_mode_never_picks_unflooded_ckks_and_forced_modes_hold() {
    let square = load_onnx(models_dir().join("digits_square_mlp.onnx")).unwrap();
    let relu = load_onnx(models_dir().join("digits_mlp.onnx")).unwrap();
    let bind = |mode, m: &Sequential| {
        Server::bind(
            "127.0.0.1:0",
            vec![("m".into(), m.clone())],
            ServerConfig {
                mode,
                ..ServerConfig::default()
            },
        )
    };
    // Auto: CKKS only with a flooding that keeps the precision; the bundled polynomial
    // model's flooding does not at 128-bit parameters (see SECURITY.md), so it runs hybrid.
    let (cm, params) = CkksModel::for_model(&square).unwrap();
    let plan = cm.flood_plan(&params, &CkksFloodConfig::default()).unwrap();
    println!("digits_square_mlp flooding plan: {plan:?}");
    let auto = bind(ModeChoice::Auto, &square).unwrap().model_info();
    let expected = if plan.keeps_precision() {
        ModelMode::Ckks
    } else {
        ModelMode::Hybrid
    };
    assert_eq!(auto[0].mode, expected, "{plan:?}");
    assert_eq!(
        bind(ModeChoice::Hybrid, &square).unwrap().model_info()[0].mode,
        ModelMode::Hybrid
    );
    // CKKS asked for by name runs only flooded; unflooded only when the operator declares
    // the weights public.
    match bind(ModeChoice::Ckks, &square) {
        Ok(s) => {
            assert!(plan.keeps_precision(), "unflooded CKKS served: {plan:?}");
            assert_eq!(s.model_info()[0].mode, ModelMode::Ckks);
        }
        Err(ProtocolError::ModeUnavailable { reason, .. }) => {
            assert!(!plan.keeps_precision(), "{plan:?}");
            assert!(reason.contains("flooded"), "{reason}");
        }
        Err(e) => panic!("expected ModeUnavailable, got {e}"),
    }
    assert_eq!(
        bind(ModeChoice::CkksPublicWeights, &square)
            .unwrap()
            .model_info()[0]
            .mode,
        ModelMode::Ckks
    );
    assert_eq!(
        bind(ModeChoice::Auto, &relu).unwrap().model_info()[0].mode,
        ModelMode::Hybrid
    );
    match bind(ModeChoice::Ckks, &relu) {
        Err(ProtocolError::ModeUnavailable {
            model, mode, layer, ..
        }) => {
            assert_eq!((model.as_str(), mode), ("m", "CKKS"));
            assert!(layer.contains("ReLU") || layer.contains("Relu"), "{layer}");
        }
        other => panic!("expected ModeUnavailable, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn hybrid_flooding_is_sized_from_the_cap_and_the_session() {
    use cipherml::nn::PreparedModel;
    use cipherml::tensor::SessionConfig;
    let model = load_onnx(models_dir().join("digits_mlp.onnx")).unwrap();
    let config = SessionConfig::default();
    let max_inferences: u64 = 1 << 16;
    let m = PreparedModel::for_serving(&model, &config, max_inferences, true).unwrap();
    // The flooding adds the union bound over a session: ceil(log2(revealed coefficients
    // per inference x max inferences)); digits_mlp reveals the outputs of the dense layers
    // its plan runs under BFV (the small last one runs on shares and reveals nothing).
    let shapes = model.shapes().unwrap();
    let plan = model.plan(cipherml::nn::NetworkModel::lan()).unwrap();
    let revealed: usize = model
        .layers()
        .iter()
        .zip(&shapes[1..])
        .zip(&plan.layers)
        .filter(|((l, _), lp)| matches!(l, Layer::Dense { .. }) && lp.chosen.is_bfv())
        .map(|((_, s), _)| s.iter().product::<usize>())
        .sum();
    assert_eq!(revealed, 32, "the first dense layer's outputs");
    let union = ((revealed as f64) * max_inferences as f64).log2().ceil() as u32;
    assert_eq!(m.flood_bits(), config.flood_bits + union);
    let (flood, room) = m.flood_log2();
    assert!((flood as f64) < room, "2^{flood} vs room 2^{room}");
    // The client's copy (zero weights) floods alike: the size does not depend on them.
    let client = PreparedModel::for_serving(&model, &config, max_inferences, false).unwrap();
    assert_eq!(client.flood_log2(), m.flood_log2());
    // A weight above the public cap is refused with its value.
    let big = Sequential::new(vec![4]).add(Layer::Dense {
        weight: Array2::from_shape_fn((2, 4), |(i, j)| if (i, j) == (1, 3) { 20.0 } else { 0.5 }),
        bias: Array1::zeros(2),
    });
    match PreparedModel::for_serving(&big, &config, max_inferences, true) {
        Err(NnError::WeightAboveCap {
            index, value, cap, ..
        }) => assert_eq!((index, value, cap), (7, 20.0, 16.0)),
        other => panic!("expected WeightAboveCap, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn serve_mode_flag_chooses_and_refuses() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let exe = env!("CARGO_BIN_EXE_cipherml");
    let model = |name: &str| models_dir().join(format!("{name}.onnx"));
    // CKKS forced on a ReLU network: refused, naming the model and the layer.
    let out = Command::new(exe)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--mode",
            "ckks",
            "--model",
        ])
        .arg(model("digits_mlp"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("digits_mlp") && err.contains("ReLU") && err.contains("CKKS"),
        "{err}"
    );
    // Auto on the polynomial network: the startup log says the mode and why.
    let mut child = Command::new(exe)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--mode",
            "auto",
            "--model",
        ])
        .arg(model("digits_square_mlp"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut line = String::new();
    for l in BufReader::new(stderr).lines() {
        // Without the terminal colour codes.
        let mut l = l.unwrap();
        while let Some(i) = l.find('\x1b') {
            let end = l[i..].find('m').map_or(l.len(), |j| i + j + 1);
            l.replace_range(i..end, "");
        }
        if l.contains("model mode") {
            line = l;
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        line.contains("mode=\"hybrid\"") || line.contains("mode=hybrid"),
        "{line}"
    );
    assert!(line.contains("cannot be flooded"), "{line}");
}
