//! Private training against the same training in plaintext f64 (same initial weights,
//! batch order and hyperparameters): weights after one epoch within a stated tolerance,
//! test accuracy within 1 percentage point; gradients of every layer kind against finite
//! differences (plaintext) and the private backward against the plaintext backward.

use cipherml::data::{data_dir, read_npy};
use cipherml::nn::{one_hot, FitOptions, Layer, Loss, Optimizer, Sequential, Trainer};
use cipherml::tensor::{run_local_with, PrivateTensor, Role, SessionConfig, Triples};
use ndarray::{s, Array1, Array2, Array4, ArrayD, Axis, IxDyn};
use rand::{Rng, SeedableRng};

fn load(name: &str) -> ArrayD<f64> {
    read_npy(data_dir().join(name)).unwrap().to_f64()
}

fn cancer() -> (ArrayD<f64>, ArrayD<f64>, ArrayD<f64>, ArrayD<f64>) {
    let col = |y: ArrayD<f64>| {
        let n = y.len();
        y.into_shape_with_order(IxDyn(&[n, 1])).unwrap()
    };
    (
        load("cancer_train_x.npy"),
        col(load("cancer_train_y.npy")),
        load("cancer_test_x.npy"),
        col(load("cancer_test_y.npy")),
    )
}

/// Glorot-uniform weights from a seed, zero biases.
fn dense(rng: &mut rand_chacha::ChaCha20Rng, out: usize, inp: usize) -> Layer {
    let a = (6.0 / (inp + out) as f64).sqrt();
    Layer::Dense {
        weight: Array2::from_shape_fn((out, inp), |_| rng.random_range(-a..a)),
        bias: Array1::zeros(out),
    }
}

fn accuracy(model: &Sequential, x: &ArrayD<f64>, y: &ArrayD<f64>, loss: Loss) -> f64 {
    let mut correct = 0;
    for i in 0..x.shape()[0] {
        let out = model.predict(&x.index_axis(Axis(0), i).to_owned()).unwrap();
        let pred = match loss {
            Loss::BinaryCrossEntropy => f64::from(out[[0]] > 0.0),
            _ => {
                out.iter()
                    .enumerate()
                    .fold((0, f64::MIN), |b, (j, &v)| if v > b.1 { (j, v) } else { b })
                    .0 as f64
            }
        };
        let label = match loss {
            Loss::BinaryCrossEntropy => y[[i, 0]],
            _ => y
                .index_axis(Axis(0), i)
                .iter()
                .position(|&v| v == 1.0)
                .unwrap() as f64,
        };
        correct += usize::from(pred == label);
    }
    correct as f64 / x.shape()[0] as f64
}

fn max_weight_diff(a: &Sequential, b: &Sequential) -> f64 {
    let mut worst: f64 = 0.0;
    for (la, lb) in a.layers().iter().zip(b.layers()) {
        match (la, lb) {
            (
                Layer::Dense {
                    weight: w1,
                    bias: b1,
                },
                Layer::Dense {
                    weight: w2,
                    bias: b2,
                },
            ) => {
                worst = worst.max((w1 - w2).mapv(f64::abs).fold(0.0, |m: f64, &v| m.max(v)));
                worst = worst.max((b1 - b2).mapv(f64::abs).fold(0.0, |m: f64, &v| m.max(v)));
            }
            (
                Layer::Conv2d {
                    weight: w1,
                    bias: b1,
                    ..
                },
                Layer::Conv2d {
                    weight: w2,
                    bias: b2,
                    ..
                },
            ) => {
                worst = worst.max((w1 - w2).mapv(f64::abs).fold(0.0, |m: f64, &v| m.max(v)));
                worst = worst.max((b1 - b2).mapv(f64::abs).fold(0.0, |m: f64, &v| m.max(v)));
            }
            _ => {}
        }
    }
    worst
}

/// Trains privately (client holds `x`, server holds `y` unless `split` says the columns
/// are split) and in plaintext; returns (private model, plaintext model, private metrics).
fn train_both(
    model: Sequential,
    loss: Loss,
    opt: Optimizer,
    x: ArrayD<f64>,
    y: ArrayD<f64>,
    opts: FitOptions,
    split: Option<usize>,
    config: SessionConfig,
) -> (Sequential, Sequential, Vec<Option<f64>>) {
    let mut plain = model.compile(loss, opt).unwrap();
    plain.fit_plain(&x, &y, &opts).unwrap();
    let reference = plain.model_plain().unwrap();
    let trainer = model.compile(loss, opt).unwrap();
    let (xs, ys) = (x.shape().to_vec(), y.shape().to_vec());
    let (client, _server) = run_local_with(config, move |s| {
        let mut t: Trainer = trainer.clone();
        let xt = match split {
            None => s.input(Role::Client, &xs, || x.clone())?,
            Some(k) => {
                // Vertical: the client holds the first k features, the server the rest.
                let left = x.slice(s![.., ..k]).to_owned().into_dyn();
                let right = x.slice(s![.., k..]).to_owned().into_dyn();
                let a = s.input(Role::Client, &[xs[0], k], || left.clone())?;
                let b = s.input(Role::Server, &[xs[0], xs[1] - k], || right.clone())?;
                s.concat(&[&a, &b], 1)?
            }
        };
        let yt = s.input(Role::Server, &ys, || y.clone())?;
        let h = t.fit(s, &xt, &yt, &opts)?;
        let m = t.reveal(s, Role::Client)?;
        Ok((m, h.epochs.iter().map(|e| e.metric).collect::<Vec<_>>()))
    })
    .unwrap();
    (client.0.unwrap(), reference, client.1)
}

#[test]
fn logistic_regression_on_cancer_matches_plaintext_training() {
    let (x, y, tx, ty) = cancer();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let model = Sequential::new(vec![30]).add(dense(&mut rng, 1, 30));
    let opt = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.001,
    };
    let loss = Loss::BinaryCrossEntropy;
    // One epoch: the weights within 0.02 of the plaintext run's (the piecewise-linear
    // sigmoid is within 0.0125 of the sigmoid; fixed point at 2^-16).
    let one = FitOptions {
        epochs: 1,
        batch_size: 32,
        shuffle_seed: Some(7),
        reveal_metrics: true,
    };
    let (private, reference, metrics) = train_both(
        model.clone(),
        loss,
        opt,
        x.clone(),
        y.clone(),
        one.clone(),
        None,
        SessionConfig::training(),
    );
    let diff = max_weight_diff(&private, &reference);
    assert!(diff < 0.02, "weights differ by {diff} after one epoch");
    // Both parties asked: the Brier score is revealed, and it is a probability error.
    let m = metrics[0].expect("both parties asked for the metrics");
    assert!((0.0..0.25).contains(&m), "Brier score {m}");
    // Five epochs: test accuracy within 1 point of the plaintext run's.
    let five = FitOptions { epochs: 5, ..one };
    let (private, reference, _) = train_both(
        model,
        loss,
        opt,
        x,
        y,
        five,
        None,
        SessionConfig::training(),
    );
    let (a, b) = (
        accuracy(&private, &tx, &ty, loss),
        accuracy(&reference, &tx, &ty, loss),
    );
    assert!(b > 0.93, "plaintext accuracy {b}");
    assert!(
        (a - b).abs() <= 0.01,
        "private accuracy {a} vs plaintext {b}"
    );
}

#[test]
fn vertically_split_logistic_regression_matches_plaintext_training() {
    let (x, y, tx, ty) = cancer();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
    let model = Sequential::new(vec![30]).add(dense(&mut rng, 1, 30));
    let loss = Loss::BinaryCrossEntropy;
    let opts = FitOptions {
        epochs: 3,
        batch_size: 64,
        shuffle_seed: Some(3),
        reveal_metrics: false,
    };
    let (private, reference, metrics) = train_both(
        model,
        loss,
        Optimizer::sgd(0.5),
        x,
        y,
        opts,
        Some(12),
        SessionConfig::training(),
    );
    assert!(
        metrics.iter().all(Option::is_none),
        "nothing revealed unasked"
    );
    let diff = max_weight_diff(&private, &reference);
    assert!(diff < 0.05, "weights differ by {diff}");
    let (a, b) = (
        accuracy(&private, &tx, &ty, loss),
        accuracy(&reference, &tx, &ty, loss),
    );
    assert!(
        (a - b).abs() <= 0.01,
        "private accuracy {a} vs plaintext {b}"
    );
}

/// Plaintext gradients of every layer kind against central finite differences of the
/// plaintext loss.
#[test]
fn plaintext_backward_matches_finite_differences() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
    let conv = Layer::Conv2d {
        weight: Array4::from_shape_fn((2, 1, 3, 3), |_| rng.random_range(-0.5..0.5)),
        bias: Array1::from_shape_fn(2, |_| rng.random_range(-0.1..0.1)),
        stride: 1,
        padding: 1,
    };
    let cases: Vec<(Sequential, Loss, Vec<usize>, usize)> = vec![
        (
            Sequential::new(vec![1, 6, 6])
                .add(conv)
                .add(Layer::Relu)
                .add(Layer::MaxPool {
                    kernel: 2,
                    stride: 2,
                })
                .add(Layer::AvgPool {
                    kernel: 3,
                    stride: 3,
                })
                .add(Layer::Flatten)
                .add(dense(&mut rng, 3, 2))
                .add(Layer::Sigmoid)
                .add(dense(&mut rng, 3, 3)),
            Loss::SoftmaxCrossEntropy,
            vec![1, 6, 6],
            3,
        ),
        (
            Sequential::new(vec![4]).add(dense(&mut rng, 2, 4)),
            Loss::MeanSquaredError,
            vec![4],
            2,
        ),
        (
            Sequential::new(vec![4])
                .add(dense(&mut rng, 5, 4))
                .add(Layer::Relu)
                .add(dense(&mut rng, 1, 5)),
            Loss::BinaryCrossEntropy,
            vec![4],
            1,
        ),
    ];
    for (model, loss, shape, outs) in cases {
        let mut xs = vec![5];
        xs.extend(&shape);
        let x = ArrayD::from_shape_fn(IxDyn(&xs), |_| rng.random_range(-1.0..1.0));
        let y = match loss {
            Loss::SoftmaxCrossEntropy => one_hot(&[0.0, 2.0, 1.0, 1.0, 0.0], outs)
                .unwrap()
                .into_dyn(),
            Loss::BinaryCrossEntropy => {
                Array2::from_shape_fn((5, 1), |(i, _)| (i % 2) as f64).into_dyn()
            }
            _ => Array2::from_shape_fn((5, outs), |_| rng.random_range(-1.0..1.0)).into_dyn(),
        };
        let t = model.compile(loss, Optimizer::sgd(0.1)).unwrap();
        let grads = t.gradients_plain(&x, &y).unwrap();
        // Perturb each parameter of each layer in turn.
        let mut pi = 0;
        for (li, layer) in model.layers().iter().enumerate() {
            let params: Vec<ArrayD<f64>> = match layer {
                Layer::Dense { weight, bias } => {
                    vec![weight.clone().into_dyn(), bias.clone().into_dyn()]
                }
                Layer::Conv2d { weight, bias, .. } => {
                    vec![weight.clone().into_dyn(), bias.clone().into_dyn()]
                }
                _ => continue,
            };
            for (k, p) in params.iter().enumerate() {
                for j in 0..p.len() {
                    let eps = 1e-5;
                    let loss_at = |delta: f64| {
                        let mut layers: Vec<Layer> = model.layers().to_vec();
                        let target = match (&mut layers[li], k) {
                            (Layer::Dense { weight, .. }, 0) => weight.as_slice_mut().unwrap(),
                            (Layer::Dense { bias, .. }, _) => bias.as_slice_mut().unwrap(),
                            (Layer::Conv2d { weight, .. }, 0) => weight.as_slice_mut().unwrap(),
                            (Layer::Conv2d { bias, .. }, _) => bias.as_slice_mut().unwrap(),
                            _ => unreachable!(),
                        };
                        target[j] += delta;
                        let m = layers
                            .into_iter()
                            .fold(Sequential::new(model.input_shape().to_vec()), |m, l| {
                                m.add(l)
                            });
                        m.compile(loss, Optimizer::sgd(0.1))
                            .unwrap()
                            .loss_plain(&x, &y)
                            .unwrap()
                    };
                    let numeric = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps);
                    let analytic = grads[pi + k].as_slice().unwrap()[j];
                    assert!(
                        (numeric - analytic).abs() < 1e-4 * (1.0 + numeric.abs()),
                        "{}: parameter {k}[{j}]: finite difference {numeric}, backward {analytic}",
                        layer.describe()
                    );
                }
            }
            pi += 2;
        }
    }
}

/// A small network with every layer kind: the private update of one batch (forward,
/// backward, SGD) against the plaintext update.
#[test]
fn private_step_matches_plaintext_step_for_every_layer_kind() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
    let model = Sequential::new(vec![1, 6, 6])
        .add(Layer::Conv2d {
            weight: Array4::from_shape_fn((2, 1, 3, 3), |_| rng.random_range(-0.5..0.5)),
            bias: Array1::from_shape_fn(2, |_| rng.random_range(-0.1..0.1)),
            stride: 1,
            padding: 1,
        })
        .add(Layer::Relu)
        .add(Layer::MaxPool {
            kernel: 2,
            stride: 2,
        })
        .add(Layer::AvgPool {
            kernel: 3,
            stride: 3,
        })
        .add(Layer::Flatten)
        .add(dense(&mut rng, 3, 2))
        .add(Layer::Sigmoid)
        .add(dense(&mut rng, 3, 3));
    let x = ArrayD::from_shape_fn(IxDyn(&[6, 1, 6, 6]), |_| rng.random_range(-1.0..1.0));
    let y = one_hot(&[0.0, 2.0, 1.0, 1.0, 0.0, 2.0], 3)
        .unwrap()
        .into_dyn();
    let opts = FitOptions {
        epochs: 2,
        batch_size: 3,
        shuffle_seed: None,
        reveal_metrics: false,
    };
    let opt = Optimizer::Sgd {
        lr: 0.5,
        momentum: 0.5,
        weight_decay: 0.01,
    };
    let (private, reference, _) = train_both(
        model.clone(),
        Loss::SoftmaxCrossEntropy,
        opt,
        x,
        y,
        opts,
        None,
        SessionConfig::training(),
    );
    let moved = max_weight_diff(&model, &reference);
    assert!(
        moved > 0.01,
        "the plaintext step moved the weights by {moved}"
    );
    let diff = max_weight_diff(&private, &reference);
    assert!(
        diff < 0.01,
        "private weights differ from plaintext by {diff}"
    );
}

#[test]
fn labels_out_of_range_and_mismatched_jobs_are_refused() {
    let err = one_hot(&[0.0, 3.0], 3).unwrap_err();
    assert!(err.to_string().contains("label 3"), "{err}");
    assert!(one_hot(&[0.5], 3).is_err());
    // The two parties compile different models: both refuse before using any data.
    let a = Sequential::new(vec![2]).add(Layer::Dense {
        weight: Array2::zeros((1, 2)),
        bias: Array1::zeros(1),
    });
    let b = Sequential::new(vec![2]).add(Layer::Dense {
        weight: Array2::zeros((1, 2)),
        bias: Array1::zeros(1),
    });
    let ta = a
        .compile(Loss::BinaryCrossEntropy, Optimizer::sgd(0.1))
        .unwrap();
    let tb = b
        .compile(Loss::MeanSquaredError, Optimizer::sgd(0.1))
        .unwrap();
    let r = run_local_with(SessionConfig::training(), move |s| {
        let mut t = if s.role() == Role::Client {
            ta.clone()
        } else {
            tb.clone()
        };
        let x = s.input(Role::Client, &[4, 2], || ArrayD::zeros(IxDyn(&[4, 2])))?;
        let y = s.input(Role::Server, &[4, 1], || ArrayD::zeros(IxDyn(&[4, 1])))?;
        t.fit(s, &x, &y, &FitOptions::default())
    });
    let err = r.unwrap_err();
    assert!(err.to_string().contains("jobs differ"), "{err}");
    // A private value that is not the declared shape.
    let bad = Sequential::new(vec![2]).compile(Loss::MeanSquaredError, Optimizer::sgd(0.1));
    assert!(bad.is_ok());
    let unused = PrivateTensor::Public(ArrayD::zeros(IxDyn(&[3, 5])));
    assert_eq!(unused.shape(), vec![3, 5]);
}

/// A dealer thread on loopback for one session (the test's triple source: fast enough for
/// CI; dealer-free training is what the other tests and the benchmarks run).
fn dealer() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    use cipherml_mpc::triples::dealer::{Dealer, DealerConfig};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let config = DealerConfig {
            max_sessions: Some(1),
            ..DealerConfig::default()
        };
        let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
        Dealer::serve_tcp(&listener, &config, &mut rng, |_| {}).unwrap();
    });
    (addr, h)
}

fn digits(rows: usize) -> (ArrayD<f64>, ArrayD<f64>, ArrayD<f64>, ArrayD<f64>) {
    let labels = |y: ArrayD<f64>| {
        let v: Vec<f64> = y.iter().copied().collect();
        one_hot(&v, 10).unwrap().into_dyn()
    };
    let x = load("digits_train_x.npy");
    let y = labels(load("digits_train_y.npy"));
    (
        x.slice_axis(Axis(0), (0..rows).into()).to_owned(),
        y.slice_axis(Axis(0), (0..rows).into()).to_owned(),
        load("digits_test_x.npy"),
        labels(load("digits_test_y.npy")),
    )
}

#[test]
fn digits_mlp_64_32_10_matches_plaintext_training() {
    let (x, y, tx, ty) = digits(1437);
    let n = x.shape()[0];
    let flat = |a: ArrayD<f64>| {
        let r = a.shape()[0];
        a.into_shape_with_order(IxDyn(&[r, 64])).unwrap()
    };
    let (x, tx) = (flat(x), flat(tx));
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    let model = Sequential::new(vec![64])
        .add(dense(&mut rng, 32, 64))
        .add(Layer::Relu)
        .add(dense(&mut rng, 10, 32));
    let opts = FitOptions {
        epochs: 2,
        batch_size: 64,
        shuffle_seed: Some(5),
        reveal_metrics: false,
    };
    let (addr, d) = dealer();
    // Truncations within one unit in the last place (the CNN below keeps them exact).
    let config = SessionConfig {
        triples: Triples::Dealer { addr },
        truncation: cipherml::tensor::Truncation::WithinUlp,
        ..SessionConfig::training()
    };
    let opt = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    let loss = Loss::SoftmaxCrossEntropy;
    let (private, reference, _) = train_both(model, loss, opt, x, y, opts, None, config);
    d.join().unwrap();
    let (a, b) = (
        accuracy(&private, &tx, &ty, loss),
        accuracy(&reference, &tx, &ty, loss),
    );
    assert!(
        b > 0.85,
        "plaintext accuracy {b} after 2 epochs on {n} samples"
    );
    assert!(
        (a - b).abs() <= 0.01,
        "private accuracy {a} vs plaintext {b}"
    );
}

#[test]
fn digits_cnn_matches_plaintext_training() {
    let (x, y, tx, ty) = digits(480);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
    let a = (6.0f64 / (9.0 + 36.0)).sqrt();
    let model = Sequential::new(vec![1, 8, 8])
        .add(Layer::Conv2d {
            weight: Array4::from_shape_fn((4, 1, 3, 3), |_| rng.random_range(-a..a)),
            bias: Array1::zeros(4),
            stride: 1,
            padding: 1,
        })
        .add(Layer::Relu)
        .add(Layer::MaxPool {
            kernel: 2,
            stride: 2,
        })
        .add(Layer::Flatten)
        .add(dense(&mut rng, 10, 64));
    let opts = FitOptions {
        epochs: 2,
        batch_size: 32,
        shuffle_seed: Some(8),
        reveal_metrics: false,
    };
    let (addr, d) = dealer();
    let config = SessionConfig {
        triples: Triples::Dealer { addr },
        ..SessionConfig::training()
    };
    let opt = Optimizer::Sgd {
        lr: 0.2,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    let loss = Loss::SoftmaxCrossEntropy;
    let (private, reference, _) = train_both(model, loss, opt, x, y, opts, None, config);
    d.join().unwrap();
    let (a, b) = (
        accuracy(&private, &tx, &ty, loss),
        accuracy(&reference, &tx, &ty, loss),
    );
    assert!(b > 0.8, "plaintext accuracy {b}");
    assert!(
        (a - b).abs() <= 0.01,
        "private accuracy {a} vs plaintext {b}"
    );
}

#[test]
fn inv_sqrt_on_shares_is_within_2_to_the_minus_10() {
    let xs: Vec<f64> = vec![
        1.0 / 1024.0,
        0.003,
        0.01,
        0.1,
        0.5,
        1.0,
        1.7,
        2.0,
        30.0,
        1000.0,
        4000.0,
    ];
    let n = xs.len();
    let v = ArrayD::from_shape_vec(IxDyn(&[n]), xs.clone()).unwrap();
    let (client, _) = run_local_with(SessionConfig::training(), move |s| {
        let x = s.input(Role::Client, &[n], || v.clone())?;
        let y = s.inv_sqrt(&x, -10, 12)?;
        s.reveal(&y, Role::Client)
    })
    .unwrap();
    for (x, y) in xs.iter().zip(client.unwrap().iter()) {
        // Against the input as encoded (16 fractional bits).
        let want = 1.0 / ((x * 65536.0).round() / 65536.0).sqrt();
        assert!(
            ((y - want) / want).abs() < (-10f64).exp2() || (y - want).abs() < (-13f64).exp2(),
            "1/sqrt({x}) = {y}, want {want}"
        );
    }
}

#[test]
fn adam_logistic_regression_matches_plaintext_adam() {
    let (x, y, tx, ty) = cancer();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(6);
    let model = Sequential::new(vec![30]).add(dense(&mut rng, 1, 30));
    let loss = Loss::BinaryCrossEntropy;
    let opt = Optimizer::adam(0.05);
    let opts = FitOptions {
        epochs: 2,
        batch_size: 64,
        shuffle_seed: Some(2),
        reveal_metrics: false,
    };
    let (private, reference, _) = train_both(
        model.clone(),
        loss,
        opt,
        x,
        y,
        opts,
        None,
        SessionConfig::training(),
    );
    let moved = max_weight_diff(&model, &reference);
    assert!(moved > 0.05, "Adam moved the weights by {moved}");
    let diff = max_weight_diff(&private, &reference);
    assert!(
        diff < 0.02,
        "private Adam weights differ from plaintext by {diff}"
    );
    let (a, b) = (
        accuracy(&private, &tx, &ty, loss),
        accuracy(&reference, &tx, &ty, loss),
    );
    assert!(
        (a - b).abs() <= 0.01,
        "private accuracy {a} vs plaintext {b}"
    );
}

/// Full-batch logistic regression, where the first layer's products and its weight
/// gradients run on the data encrypted once, by columns and by rows (the plan says so): the weights after ten epochs within 0.02 of the
/// plaintext run's and the test accuracy within 1 point, with the data of either party.
#[test]
fn full_batch_training_on_data_encrypted_once_matches_plaintext() {
    let (x, y, tx, ty) = cancer();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    let model = Sequential::new(vec![30]).add(dense(&mut rng, 1, 30));
    let opt = Optimizer::sgd(0.5);
    let loss = Loss::BinaryCrossEntropy;
    let opts = FitOptions {
        epochs: 10,
        batch_size: x.shape()[0],
        shuffle_seed: Some(2),
        reveal_metrics: false,
    };
    let mut plain = model.compile(loss, opt).unwrap();
    plain.fit_plain(&x, &y, &opts).unwrap();
    let reference = plain.model_plain().unwrap();
    for holder in [Role::Client, Role::Server] {
        let trainer = model.compile(loss, opt).unwrap();
        let (xs, ys) = (x.shape().to_vec(), y.shape().to_vec());
        let (xd, yd, o) = (x.clone(), y.clone(), opts.clone());
        let (client, _) = run_local_with(SessionConfig::training(), move |s| {
            let mut t: Trainer = trainer.clone();
            let xt = s.input(holder, &xs, || xd.clone())?;
            let yt = s.input(Role::Server, &ys, || yd.clone())?;
            t.fit(s, &xt, &yt, &o)?;
            let plan = s.explain();
            Ok((t.reveal(s, Role::Client)?, plan))
        })
        .unwrap();
        let (private, plan) = (client.0.unwrap(), client.1);
        assert!(
            plan.contains("held data encrypted once"),
            "{holder:?}: {plan}"
        );
        assert!(
            plan.contains("encrypted once by rows"),
            "{holder:?}: {plan}"
        );
        let diff = max_weight_diff(&private, &reference);
        assert!(
            diff < 0.02,
            "{holder:?}: weights differ by {diff} after ten epochs"
        );
        let (a, b) = (
            accuracy(&private, &tx, &ty, loss),
            accuracy(&reference, &tx, &ty, loss),
        );
        assert!(
            (a - b).abs() <= 0.01,
            "{holder:?}: private accuracy {a} vs plaintext {b}"
        );
    }
}

/// Products of shared matrices and of held by shared ones in a training session, under
/// BFV at `t = 2^64` where the cost model picks it, against the plaintext products.
#[test]
fn training_products_under_bfv_match_plaintext() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(12);
    // One column per ciphertext (m k >= N), and columns packed several to a ciphertext,
    // with a last group part full (40 x 50: four columns per group, 7 = 4 + 3), all in
    // one (20 x 12), packed columns whose rows span several reply blocks (9 x 2000), and
    // a long inner dimension split in chunks (20 x 3750 x 1, the logistic gradient).
    //
    // Shared products of a tall matrix by a small one (3750 x 10 x 5, the MLP's) run by
    // encrypted columns of the left operand (the plan says so); an outer-product-like one
    // (3000 x 5 x 1) and one whose column is longer than a ciphertext (9000 x 3 x 2) by
    // encrypted rows of the right one, many outputs to a reply; the weight gradients' long
    // inner dimension (10 x 3750 x 5, 5 x 3000 x 10) by encrypted columns or rows,
    // whichever costs less.
    for (m, k, n) in [
        (600usize, 10usize, 5usize),
        (40, 50, 7),
        (20, 12, 7),
        (9, 2000, 5),
        (20, 3750, 1),
        (3750, 10, 5),
        (3000, 5, 1),
        (9000, 3, 2),
        (10, 3750, 5),
        (5, 3000, 10),
    ] {
        let a = Array2::from_shape_fn((m, k), |_| rng.random_range(-3.0..3.0));
        let b = Array2::from_shape_fn((k, n), |_| rng.random_range(-3.0..3.0));
        let want_shared = a.dot(&b);
        let (ad, bd) = (a.clone().into_dyn(), b.clone().into_dyn());
        let (client, _) = run_local_with(SessionConfig::training(), move |s| {
            // Random-looking shares on both sides: a product of two shared matrices.
            let x = s.input_masked(Role::Client, &[m, k], || ad.clone())?;
            let y = s.input_masked(Role::Server, &[k, n], || bd.clone())?;
            let z = s.matmul(&x, &y)?;
            // The client's data (held whole) times a shared matrix.
            let h = s.input(Role::Client, &[m, k], || ad.clone())?;
            let zh = s.matmul(&h, &y)?;
            let plan = s.explain();
            Ok((
                s.reveal(&z, Role::Client)?,
                s.reveal(&zh, Role::Client)?,
                plan,
            ))
        })
        .unwrap();
        let (z, zh, plan) = client;
        assert!(plan.matches("* BFV").count() >= 2, "{plan}");
        if m >= 3000 {
            let way = if (m, k, n) == (3750, 10, 5) {
                "columns"
            } else {
                "rows"
            };
            assert!(
                plan.contains(&format!("by encrypted {way}")),
                "{m}x{k}x{n}: {plan}"
            );
            // A column longer than a ciphertext never goes by columns.
            assert!(
                m <= 8192 || !plan.contains("by encrypted columns"),
                "{plan}"
            );
        }
        if k >= 3000 && m <= 10 {
            // Columns of the left operand or rows of the right, several outputs to a reply
            // either way: not the four coefficient-encoded products.
            assert!(plan.contains("by encrypted "), "{m}x{k}x{n}: {plan}");
        }
        for got in [z.unwrap(), zh.unwrap()] {
            let worst = (&got - &want_shared.clone().into_dyn())
                .mapv(f64::abs)
                .fold(0.0f64, |m, &v| m.max(v));
            // Inputs rounded to 2^-16: k products of values below 3.
            assert!(
                worst < 1e-4 * k as f64,
                "{m}x{k}x{n}: products differ from plaintext by {worst}"
            );
        }
    }
}

/// Adam clips gradients to its declared range: with targets of 100 the MSE gradients are in
/// the hundreds, and the private run still follows the plaintext run (which clips alike).
#[test]
fn adam_clips_large_gradients_like_the_plaintext_reference() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(13);
    let x = Array2::from_shape_fn((32, 3), |_| rng.random_range(-1.0..1.0));
    let y = Array2::from_shape_fn((32, 1), |(i, _)| 100.0 + x[[i, 0]]);
    let model = Sequential::new(vec![3]).add(dense(&mut rng, 1, 3));
    let opts = FitOptions {
        epochs: 2,
        batch_size: 8,
        shuffle_seed: None,
        reveal_metrics: false,
    };
    let (private, reference, _) = train_both(
        model.clone(),
        Loss::MeanSquaredError,
        Optimizer::adam(0.1),
        x.into_dyn(),
        y.into_dyn(),
        opts,
        None,
        SessionConfig::training(),
    );
    // Eight Adam steps of about lr each.
    let moved = max_weight_diff(&model, &reference);
    assert!(moved > 0.5, "Adam moved the weights by {moved}");
    let diff = max_weight_diff(&private, &reference);
    assert!(
        diff < 0.01,
        "private weights differ from plaintext by {diff}"
    );
}
