//! A data owner trains a 64-32-10 MLP on its hand-written digits with a second party's
//! help, on secret shares: neither party sees the images, the labels or the weights until
//! the weights are revealed to the data owner at the end. Compared with the same training
//! in plaintext (same initial weights, batch order and hyperparameters).
//!
//! ```text
//! cargo run --release --example train_mlp -- [samples] [epochs] [--dealer]
//! ```
//! Dealer-free by default (Beaver triples from oblivious transfer: slow for matrix
//! products in a 64-bit ring; 300 samples by default). `--dealer` runs a dealer thread
//! (a third party that must collude with neither) for triples, much faster.

use std::time::Instant;

use cipherml::data::{data_dir, read_npy};
use cipherml::nn::{one_hot, FitOptions, Layer, Loss, Optimizer, Sequential};
use cipherml::tensor::{Role, Session, SessionConfig, Triples};
use ndarray::{Array1, Array2, ArrayD, Axis, IxDyn};
use rand::{Rng, SeedableRng};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dealer = args.iter().any(|a| a == "--dealer");
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let samples = nums.first().copied().unwrap_or(300).min(1437);
    let epochs = nums.get(1).copied().unwrap_or(2);

    let load = |name: &str| -> Result<ArrayD<f64>, Box<dyn std::error::Error>> {
        Ok(read_npy(data_dir().join(name))?.to_f64())
    };
    let flat = |a: ArrayD<f64>, rows: usize| {
        a.slice_axis(Axis(0), (0..rows).into())
            .to_owned()
            .into_shape_with_order(IxDyn(&[rows, 64]))
            .expect("8x8 images")
    };
    let labels = |a: ArrayD<f64>, rows: usize| -> Result<ArrayD<f64>, cipherml::Error> {
        let v: Vec<f64> = a.iter().take(rows).copied().collect();
        Ok(one_hot(&v, 10)?.into_dyn())
    };
    let x = flat(load("digits_train_x.npy")?, samples);
    let y = labels(load("digits_train_y.npy")?, samples)?;
    let tx = flat(load("digits_test_x.npy")?, 360);
    let ty = load("digits_test_y.npy")?;

    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    let mut dense = |out: usize, inp: usize| {
        let a = (6.0 / (inp + out) as f64).sqrt();
        Layer::Dense {
            weight: Array2::from_shape_fn((out, inp), |_| rng.random_range(-a..a)),
            bias: Array1::zeros(out),
        }
    };
    let model = Sequential::new(vec![64])
        .add(dense(32, 64))
        .add(Layer::Relu)
        .add(dense(10, 32));
    let (loss, opt) = (
        Loss::SoftmaxCrossEntropy,
        Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
        },
    );
    let opts = FitOptions {
        epochs,
        batch_size: 64,
        shuffle_seed: Some(5),
        reveal_metrics: false,
    };

    let mut plain = model.compile(loss, opt)?;
    plain.fit_plain(&x, &y, &opts)?;
    let reference = plain.model_plain()?;

    let mut config = SessionConfig::training();
    let dealer_thread = if dealer {
        use cipherml::mpc::triples::dealer::{Dealer, DealerConfig};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        config.triples = Triples::Dealer {
            addr: listener.local_addr()?,
        };
        Some(std::thread::spawn(move || {
            let c = DealerConfig {
                max_sessions: Some(1),
                ..DealerConfig::default()
            };
            let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
            Dealer::serve_tcp(&listener, &c, &mut rng, |_| {})
        }))
    } else {
        None
    };
    let (c0, c1) = cipherml::mpc::net::tcp_loopback_pair(Default::default())?;
    let (xs, ys) = (x.shape().to_vec(), y.shape().to_vec());
    let (server_model, server_opts, server_config) = (model.clone(), opts.clone(), config.clone());
    let (sx, sy) = (xs.clone(), ys.clone());
    let server = std::thread::spawn(move || -> Result<(), cipherml::Error> {
        let mut s = Session::with_config(Role::Server, c1, server_config)?;
        let x = s.input(Role::Client, &sx, || unreachable!())?;
        let y = s.input(Role::Client, &sy, || unreachable!())?;
        let mut t = server_model.compile(loss, opt)?;
        t.fit(&mut s, &x, &y, &server_opts)?;
        t.reveal(&mut s, Role::Client)?;
        Ok(())
    });
    let start = Instant::now();
    let mut s = Session::with_config(Role::Client, c0, config)?;
    let xt = s.input(Role::Client, &xs, || x)?;
    let yt = s.input(Role::Client, &ys, || y)?;
    let mut t = model.compile(loss, opt)?;
    t.fit_with(&mut s, &xt, &yt, &opts, &mut |p| {
        if p.batch == p.batches {
            println!("epoch {} done ({} batches)", p.epoch + 1, p.batches);
        }
    })?;
    let trained = t
        .reveal(&mut s, Role::Client)?
        .expect("revealed to the client");
    let secs = start.elapsed().as_secs_f64();
    let (sent, received) = s.bytes();
    server.join().expect("server thread")?;
    if let Some(d) = dealer_thread {
        d.join().expect("dealer thread")?;
    }

    let accuracy = |m: &Sequential| -> Result<f64, cipherml::Error> {
        let mut right = 0;
        for i in 0..tx.shape()[0] {
            let z = m.predict(&tx.index_axis(Axis(0), i).to_owned())?;
            let pred = z
                .iter()
                .enumerate()
                .fold((0, f64::MIN), |b, (j, &v)| if v > b.1 { (j, v) } else { b })
                .0;
            right += usize::from(pred as f64 == ty[i]);
        }
        Ok(right as f64 / tx.shape()[0] as f64)
    };
    println!(
        "{samples} samples, {epochs} epochs, triples from {}: {secs:.1} s, {:.0} MB; test accuracy {:.3} (plaintext training: {:.3})",
        if dealer { "a dealer" } else { "OT (dealer-free)" },
        (sent + received) as f64 / 1e6,
        accuracy(&trained)?,
        accuracy(&reference)?
    );
    Ok(())
}
