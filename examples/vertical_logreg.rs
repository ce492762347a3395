//! Vertical logistic regression: two data owners hold different features of the same
//! patients (the bundled breast-cancer data: the client 15 features, the server the other
//! 15 and the diagnosis) and train one model together without showing each other their
//! columns. The weights stay secret-shared until the end, when the client receives them.
//! Compared with the same training in plaintext.
//!
//! ```text
//! cargo run --release --example vertical_logreg
//! ```

use std::time::Instant;

use cipherml::data::{data_dir, read_npy};
use cipherml::nn::{FitOptions, Layer, Loss, Optimizer, Sequential};
use cipherml::tensor::{Role, Session, SessionConfig};
use ndarray::{s, Array1, Array2, ArrayD, Axis, IxDyn};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let load = |name: &str| -> Result<ArrayD<f64>, Box<dyn std::error::Error>> {
        Ok(read_npy(data_dir().join(name))?.to_f64())
    };
    let column = |y: ArrayD<f64>| {
        let n = y.len();
        y.into_shape_with_order(IxDyn(&[n, 1])).expect("a vector")
    };
    let (x, y) = (
        load("cancer_train_x.npy")?,
        column(load("cancer_train_y.npy")?),
    );
    let (tx, ty) = (
        load("cancer_test_x.npy")?,
        column(load("cancer_test_y.npy")?),
    );
    let (n, d) = (x.shape()[0], x.shape()[1]);
    let split = 15;
    // Both parties agree on the model (public initial weights: zeros) and the job.
    let model = Sequential::new(vec![d]).add(Layer::Dense {
        weight: Array2::zeros((1, d)),
        bias: Array1::zeros(1),
    });
    let loss = Loss::BinaryCrossEntropy;
    let opt = Optimizer::Sgd {
        lr: 0.5,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    let opts = FitOptions {
        epochs: 5,
        batch_size: 64,
        shuffle_seed: Some(1),
        reveal_metrics: true,
    };

    // The same training in plaintext: the reference.
    let mut plain = model.compile(loss, opt)?;
    plain.fit_plain(&x, &y, &opts)?;
    let reference = plain.model_plain()?;

    // Two parties over TCP loopback, each in its own thread.
    let (c0, c1) = cipherml::mpc::net::tcp_loopback_pair(Default::default())?;
    let client_cols = x.slice(s![.., ..split]).to_owned().into_dyn();
    let server_cols = x.slice(s![.., split..]).to_owned().into_dyn();
    let (server_model, server_opts) = (model.clone(), opts.clone());
    let server = std::thread::spawn(move || -> Result<(), cipherml::Error> {
        let mut s = Session::with_config(Role::Server, c1, SessionConfig::training())?;
        let a = s.input(Role::Client, &[n, split], || unreachable!())?;
        let b = s.input(Role::Server, &[n, d - split], || server_cols)?;
        let x = s.concat(&[&a, &b], 1)?;
        let y = s.input(Role::Server, &[n, 1], || y)?;
        let mut t = server_model.compile(loss, opt)?;
        t.fit(&mut s, &x, &y, &server_opts)?;
        t.reveal(&mut s, Role::Client)?;
        Ok(())
    });
    let start = Instant::now();
    let mut s = Session::with_config(Role::Client, c0, SessionConfig::training())?;
    let a = s.input(Role::Client, &[n, split], || client_cols)?;
    let b = s.input(Role::Server, &[n, d - split], || unreachable!())?;
    let xs = s.concat(&[&a, &b], 1)?;
    let ys = s.input(Role::Server, &[n, 1], || unreachable!())?;
    let mut t = model.compile(loss, opt)?;
    let history = t.fit(&mut s, &xs, &ys, &opts)?;
    let trained = t
        .reveal(&mut s, Role::Client)?
        .expect("revealed to the client");
    let secs = start.elapsed().as_secs_f64();
    let (sent, received) = s.bytes();
    server.join().expect("server thread")?;

    for e in &history.epochs {
        println!(
            "epoch {}: Brier score {:.4} (revealed: both parties asked)",
            e.epoch + 1,
            e.metric.unwrap_or(f64::NAN)
        );
    }
    let accuracy = |m: &Sequential| -> Result<f64, cipherml::Error> {
        let mut right = 0;
        for i in 0..tx.shape()[0] {
            let z = m.predict(&tx.index_axis(Axis(0), i).to_owned())?;
            right += usize::from((z[[0]] > 0.0) == (ty[[i, 0]] == 1.0));
        }
        Ok(right as f64 / tx.shape()[0] as f64)
    };
    println!(
        "private training: {secs:.2} s, {:.1} MB; test accuracy {:.3} (plaintext training: {:.3})",
        (sent + received) as f64 / 1e6,
        accuracy(&trained)?,
        accuracy(&reference)?
    );
    Ok(())
}
