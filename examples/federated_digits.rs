//! Federated averaging with secure aggregation: ten clients hold disjoint, unequal slices
//! of the bundled digits training set and train one MLP (64-16-10, ReLU) together. Each
//! round every client starts from the global model, trains locally in plaintext, clips its
//! model delta to `[-CLIP, CLIP]` and submits it with its sample count as weight; the
//! server learns only the weighted sum of the deltas of the clients that stayed (SecAgg+,
//! `cipherml::mpc::secagg`) and the sum of their weights, and moves the global model by
//! the weighted mean (FedAvg). Some clients drop out, at different stages of the protocol.
//! The same run with an exact `f64` weighted mean (same seeds, same dropouts) is the
//! reference.
//!
//! ```text
//! cargo run --release --example federated_digits
//! ```
//!
//! The aggregation is the one function [`aggregate`]: each round, an aggregation server
//! (`cipherml::aggregate`) on loopback and one client per data owner over TCP, as `cipherml
//! aggregate serve` and `cipherml aggregate submit` run across machines.
//!
//! This file is also compiled as a module of `tests/federated.rs`.

use std::error::Error;
use std::time::Instant;

use cipherml::data::{data_dir, read_npy};
use std::time::Duration;

use cipherml::aggregate::{AggregationClient, AggregationConfig, AggregationServer};
use cipherml::mpc::secagg::{
    ClientId, DropoutPlan, Quantization, SecAggConfig, SecAggError, SecAggParams, Stage,
};
use ndarray::{Array1, Array2, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Number of clients.
pub const CLIENTS: usize = 10;
/// Input features (8x8 pixels).
pub const INPUTS: usize = 64;
/// Hidden units.
pub const HIDDEN: usize = 16;
/// Classes.
pub const CLASSES: usize = 10;

/// The knobs of a federated run. Plain data.
#[derive(Debug, Clone, Copy)]
pub struct FedOptions {
    /// FedAvg rounds.
    pub rounds: usize,
    /// Local epochs per round.
    pub local_epochs: usize,
    /// Local mini-batch size.
    pub batch: usize,
    /// Local SGD learning rate.
    pub lr: f64,
    /// Clients clip every entry of their delta to `[-clip, clip]` (both pipelines).
    pub clip: f64,
    /// Quantization bits per entry in the secure aggregation.
    pub bits: u32,
    /// Seed of the data split, the initial model and the local shuffles.
    pub seed: u64,
}

impl Default for FedOptions {
    fn default() -> Self {
        FedOptions {
            rounds: 10,
            local_epochs: 5,
            batch: 32,
            lr: 0.3,
            clip: 1.0,
            bits: 16,
            seed: 7,
        }
    }
}

/// Images (`n x 64`, in `[0, 1]`) and labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// One image per row.
    pub x: Array2<f64>,
    /// Class of each row.
    pub y: Vec<usize>,
}

/// Reads one split of the bundled digits data (`"train"` or `"test"`).
pub fn load_digits(split: &str) -> Result<Dataset, Box<dyn Error>> {
    let x = read_npy(data_dir().join(format!("digits_{split}_x.npy")))?.to_f64();
    let y = read_npy(data_dir().join(format!("digits_{split}_y.npy")))?.into_i64()?;
    let n = x.shape()[0];
    let x = x.into_shape_with_order((n, INPUTS))?;
    let y = y
        .iter()
        .map(|&c| usize::try_from(c).ok().filter(|&c| c < CLASSES))
        .collect::<Option<Vec<_>>>()
        .ok_or("a label outside 0..10")?;
    if y.len() != n {
        return Err(format!("{n} images but {} labels", y.len()).into());
    }
    Ok(Dataset { x, y })
}

/// The model: `softmax(relu(x W1 + b1) W2 + b2)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    /// `64 x 16`.
    pub w1: Array2<f64>,
    /// `16`.
    pub b1: Array1<f64>,
    /// `16 x 10`.
    pub w2: Array2<f64>,
    /// `10`.
    pub b2: Array1<f64>,
}

impl Mlp {
    /// Number of parameters (the length of an update).
    pub const PARAMS: usize = INPUTS * HIDDEN + HIDDEN + HIDDEN * CLASSES + CLASSES;

    /// He-uniform weights, zero biases.
    pub fn init(rng: &mut impl Rng) -> Self {
        let mut uniform = |rows: usize, cols: usize| {
            let a = (6.0 / rows as f64).sqrt();
            Array2::from_shape_fn((rows, cols), |_| rng.random_range(-a..a))
        };
        Mlp {
            w1: uniform(INPUTS, HIDDEN),
            b1: Array1::zeros(HIDDEN),
            w2: uniform(HIDDEN, CLASSES),
            b2: Array1::zeros(CLASSES),
        }
    }

    /// The parameters as one vector (`w1, b1, w2, b2`, row-major).
    pub fn to_vec(&self) -> Vec<f64> {
        let mut v = Vec::with_capacity(Self::PARAMS);
        v.extend(self.w1.iter());
        v.extend(self.b1.iter());
        v.extend(self.w2.iter());
        v.extend(self.b2.iter());
        v
    }

    /// Adds `delta` (in the layout of [`Mlp::to_vec`]) to the parameters.
    pub fn add_assign(&mut self, delta: &[f64]) {
        assert_eq!(delta.len(), Self::PARAMS, "update length");
        let params = self
            .w1
            .iter_mut()
            .chain(self.b1.iter_mut())
            .chain(self.w2.iter_mut())
            .chain(self.b2.iter_mut());
        for (p, d) in params.zip(delta) {
            *p += d;
        }
    }

    fn hidden(&self, x: &Array2<f64>) -> Array2<f64> {
        (x.dot(&self.w1) + &self.b1).mapv(|v| v.max(0.0))
    }

    /// Logits, one row per image.
    pub fn forward(&self, x: &Array2<f64>) -> Array2<f64> {
        self.hidden(x).dot(&self.w2) + &self.b2
    }

    /// Fraction of `data` classified correctly.
    pub fn accuracy(&self, data: &Dataset) -> f64 {
        let logits = self.forward(&data.x);
        let correct = logits
            .outer_iter()
            .zip(&data.y)
            .filter(|(row, &y)| {
                let best = row
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f64::NEG_INFINITY),
                        |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                    );
                best.0 == y
            })
            .count();
        correct as f64 / data.y.len() as f64
    }

    /// One SGD step on the mean softmax cross-entropy of a batch.
    pub fn sgd_step(&mut self, x: &Array2<f64>, y: &[usize], lr: f64) {
        let h = self.hidden(x);
        let logits = h.dot(&self.w2) + &self.b2;
        // d loss / d logits = (softmax - onehot) / batch.
        let mut d = logits;
        for (mut row, &c) in d.outer_iter_mut().zip(y) {
            let max = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
            row.mapv_inplace(|v| (v - max).exp());
            let s = row.sum();
            row.mapv_inplace(|v| v / s);
            row[c] -= 1.0;
        }
        d /= y.len() as f64;
        let dw2 = h.t().dot(&d);
        let db2 = d.sum_axis(Axis(0));
        let mut dh = d.dot(&self.w2.t());
        dh.zip_mut_with(&h, |g, &a| {
            if a <= 0.0 {
                *g = 0.0;
            }
        });
        let dw1 = x.t().dot(&dh);
        let db1 = dh.sum_axis(Axis(0));
        self.w1.scaled_add(-lr, &dw1);
        self.b1.scaled_add(-lr, &db1);
        self.w2.scaled_add(-lr, &dw2);
        self.b2.scaled_add(-lr, &db2);
    }
}

/// A seeded shuffle of `0..n`, cut into [`CLIENTS`] contiguous slices of unequal sizes
/// (proportional to `5, 6, ..., 14`).
pub fn split_clients(n: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha20Rng::seed_from_u64(seed));
    let parts: Vec<usize> = (0..CLIENTS).map(|i| i + 5).collect();
    let total: usize = parts.iter().sum();
    let mut out = Vec::with_capacity(CLIENTS);
    let mut start = 0;
    let mut acc = 0;
    for (i, p) in parts.iter().enumerate() {
        acc += p;
        let end = if i + 1 == CLIENTS { n } else { n * acc / total };
        out.push(idx[start..end].to_vec());
        start = end;
    }
    out
}

/// Client-side work of a round: start from `global`, run the local epochs over the rows
/// `rows` of `train` (shuffle seeded by `seed`, `round`, `client`), return the model delta
/// clipped to `[-clip, clip]` and the number of entries the clip changed.
pub fn local_update(
    global: &Mlp,
    train: &Dataset,
    rows: &[usize],
    opts: &FedOptions,
    round: usize,
    client: usize,
) -> (Vec<f64>, usize) {
    let mut model = global.clone();
    let mut rng = ChaCha20Rng::seed_from_u64(
        opts.seed ^ (round as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((client as u64) << 48),
    );
    let mut order = rows.to_vec();
    for _ in 0..opts.local_epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(opts.batch) {
            let x = train.x.select(Axis(0), batch);
            let y: Vec<usize> = batch.iter().map(|&i| train.y[i]).collect();
            model.sgd_step(&x, &y, opts.lr);
        }
    }
    let mut clipped = 0;
    let delta = model
        .to_vec()
        .iter()
        .zip(global.to_vec())
        .map(|(n, g)| {
            let d = n - g;
            if d.abs() > opts.clip {
                clipped += 1;
            }
            d.clamp(-opts.clip, opts.clip)
        })
        .collect();
    (delta, clipped)
}

/// The dropout schedule of round `r`: none when `r % 5 == 0`, otherwise one or two
/// clients at each of two stages, the stages varying with `r`.
pub fn dropout_plan(r: usize) -> DropoutPlan {
    let c = |k: usize| ((r + k) % CLIENTS) as ClientId;
    match r % 5 {
        0 => DropoutPlan::none(),
        1 => DropoutPlan {
            before_share_keys: vec![c(3)],
            before_masked_input: vec![c(0)],
            ..DropoutPlan::default()
        },
        2 => DropoutPlan {
            before_advertise: vec![c(0)],
            before_unmask: vec![c(5)],
            ..DropoutPlan::default()
        },
        3 => DropoutPlan {
            before_share_keys: vec![c(3)],
            before_masked_input: vec![c(0), c(1)],
            ..DropoutPlan::default()
        },
        _ => DropoutPlan {
            before_advertise: vec![c(7)],
            before_masked_input: vec![c(0)],
            before_unmask: vec![c(4)],
            ..DropoutPlan::default()
        },
    }
}

/// The earliest stage before which `id` drops under `plan`, if any.
pub fn drop_stage(plan: &DropoutPlan, id: ClientId) -> Option<Stage> {
    [
        Stage::AdvertiseKeys,
        Stage::ShareKeys,
        Stage::MaskedInput,
        Stage::Unmask,
    ]
    .into_iter()
    .find(|&s| plan.dropped_by(id, s))
}

/// The secure-aggregation configuration of the run: [`CLIENTS`] clients, SecAgg+'s
/// neighbourhood and threshold, `dim` entries quantized on `bits` bits over
/// `[-clip, clip]`, weights up to `max_weight`.
pub fn secagg_config(
    dim: usize,
    max_weight: u64,
    opts: &FedOptions,
) -> Result<SecAggConfig, SecAggError> {
    let rec = SecAggParams::recommended(CLIENTS as u32, dim);
    SecAggConfig::new(SecAggParams {
        quantization: Quantization {
            clip: opts.clip,
            bits: opts.bits,
        },
        max_weight: Some(max_weight),
        ..rec
    })
}

/// One secure aggregation over the network: an aggregation server on loopback
/// ([`AggregationServer`], a fresh round with its own seed) and one [`AggregationClient`]
/// per data owner, each in its own thread, over TCP. Returns `sum_u w_u x_u` (de-quantized)
/// and `sum_u w_u` over the clients whose masked input reached the server.
/// `updates[u] = None`: client `u` sends no update. `faults` says at which stage clients
/// leave (they close their connection there: the server sees a dropout of that stage);
/// `None` clients it does not list leave before advertising keys; a client listed
/// `before_unmask` is still summed. `round` is printed by the server's logs only.
pub fn aggregate(
    config: &SecAggConfig,
    updates: &[Option<Vec<f64>>],
    weights: &[u64],
    round: usize,
    faults: &DropoutPlan,
) -> Result<(Vec<f64>, u64), cipherml::Error> {
    let _ = round;
    let server_config = AggregationConfig {
        join_timeout: Duration::from_secs(20),
        stage_timeout: Duration::from_secs(20),
        ..AggregationConfig::new(*config.params())
    };
    let server = AggregationServer::bind("127.0.0.1:0", server_config)?;
    let addr = server.local_addr().to_string();
    let round = std::thread::spawn(move || server.run_round());
    // Clients join one after another, so that client u gets the id u.
    let mut threads = Vec::new();
    for (u, update) in updates.iter().enumerate() {
        let id = u as ClientId;
        let mut client = AggregationClient::connect(&addr, &Default::default())?;
        assert_eq!(client.id(), id, "ids follow the join order");
        let leaves = |stage| faults.dropped_by(id, stage);
        let never_sends = update.is_none() && !leaves(Stage::MaskedInput);
        let stop = if never_sends || faults.before_advertise.contains(&id) {
            Stage::AdvertiseKeys
        } else if faults.before_share_keys.contains(&id) {
            Stage::ShareKeys
        } else if faults.before_masked_input.contains(&id) {
            Stage::MaskedInput
        } else {
            Stage::Unmask
        };
        let silent = faults.before_unmask.contains(&id);
        let update = update.clone();
        let weight = weights[u];
        threads.push(std::thread::spawn(
            move || -> Result<(), cipherml::Error> {
                if stop == Stage::AdvertiseKeys {
                    return Ok(());
                }
                client.advertise()?;
                if stop == Stage::ShareKeys {
                    return Ok(());
                }
                client.share_keys()?;
                if stop == Stage::MaskedInput {
                    return Ok(());
                }
                let update = update.expect("a client that sends its masked input has an update");
                client.masked_input(&update, Some(weight))?;
                if !silent {
                    client.unmask()?;
                }
                Ok(())
            },
        ));
    }
    let report = round.join().expect("the round's thread")?;
    for t in threads {
        // A client may see the end of a failed round as an error; the round's result says
        // what happened.
        let _ = t.join().expect("a client's thread");
    }
    Ok((report.sum, report.weight_total))
}

/// The plaintext reference: exact `f64` weighted sum and weight total over the `Some`
/// updates.
pub fn plaintext_aggregate(updates: &[Option<Vec<f64>>], weights: &[u64]) -> (Vec<f64>, u64) {
    let mut sum = vec![0.0; Mlp::PARAMS];
    let mut total = 0;
    for (x, &w) in updates.iter().zip(weights) {
        if let Some(x) = x {
            for (s, v) in sum.iter_mut().zip(x) {
                *s += w as f64 * v;
            }
            total += w;
        }
    }
    (sum, total)
}

/// What a secure round did, for printing and for the test.
#[derive(Debug, Clone)]
pub struct RoundRecord {
    /// Round index.
    pub round: usize,
    /// The dropout plan of the round.
    pub plan: DropoutPlan,
    /// Each client's clipped delta, `None` for those that sent no masked input.
    pub updates: Vec<Option<Vec<f64>>>,
    /// Each client's weight (sample count).
    pub weights: Vec<u64>,
    /// The secure weighted sum of the deltas.
    pub secure_sum: Vec<f64>,
    /// The secure weight total.
    pub secure_weight: u64,
    /// Delta entries clipped by clients this round (secure run).
    pub clipped: usize,
    /// Test accuracy of the secure global model after the round.
    pub secure_accuracy: f64,
    /// Test accuracy of the plaintext global model after the round.
    pub plain_accuracy: f64,
}

impl RoundRecord {
    /// The clients whose update is in the sum.
    pub fn included(&self) -> Vec<ClientId> {
        (0..self.updates.len())
            .filter(|&u| self.updates[u].is_some())
            .map(|u| u as ClientId)
            .collect()
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct FedReport {
    /// Test accuracy of the initial model.
    pub initial_accuracy: f64,
    /// Test accuracy of the secure FedAvg model.
    pub secure_accuracy: f64,
    /// Test accuracy of the plaintext FedAvg model.
    pub plain_accuracy: f64,
    /// Samples per client.
    pub client_sizes: Vec<usize>,
    /// The secure-aggregation configuration used.
    pub config: SecAggConfig,
}

/// Runs secure and plaintext FedAvg side by side; `on_round` sees each round's record.
pub fn run(
    opts: &FedOptions,
    train: &Dataset,
    test: &Dataset,
    mut on_round: impl FnMut(&RoundRecord),
) -> Result<FedReport, Box<dyn Error>> {
    let slices = split_clients(train.y.len(), opts.seed);
    let weights: Vec<u64> = slices.iter().map(|s| s.len() as u64).collect();
    // The declared weight bound is public: no client holds more than the training set.
    let config = secagg_config(Mlp::PARAMS, train.y.len() as u64, opts)?;
    let init = Mlp::init(&mut ChaCha20Rng::seed_from_u64(opts.seed.wrapping_add(1)));
    let initial_accuracy = init.accuracy(test);
    let mut secure = init.clone();
    let mut plain = init;
    for round in 0..opts.rounds {
        let plan = dropout_plan(round);
        let mut clipped = 0;
        let mut secure_updates = Vec::with_capacity(CLIENTS);
        let mut plain_updates = Vec::with_capacity(CLIENTS);
        for (u, rows) in slices.iter().enumerate() {
            // Every client trains; those that drop before their masked input are lost.
            let sends = !plan.dropped_by(u as ClientId, Stage::MaskedInput);
            let (d, c) = local_update(&secure, train, rows, opts, round, u);
            clipped += c;
            secure_updates.push(sends.then_some(d));
            let (d, _) = local_update(&plain, train, rows, opts, round, u);
            plain_updates.push(sends.then_some(d));
        }
        let (sum, total) = aggregate(&config, &secure_updates, &weights, round, &plan)?;
        if total == 0 {
            return Err(format!("round {round}: no update reached the server").into());
        }
        secure.add_assign(&sum.iter().map(|s| s / total as f64).collect::<Vec<_>>());
        let (psum, ptotal) = plaintext_aggregate(&plain_updates, &weights);
        plain.add_assign(&psum.iter().map(|s| s / ptotal as f64).collect::<Vec<_>>());
        on_round(&RoundRecord {
            round,
            plan,
            updates: secure_updates,
            weights: weights.clone(),
            secure_sum: sum,
            secure_weight: total,
            clipped,
            secure_accuracy: secure.accuracy(test),
            plain_accuracy: plain.accuracy(test),
        });
    }
    Ok(FedReport {
        initial_accuracy,
        secure_accuracy: secure.accuracy(test),
        plain_accuracy: plain.accuracy(test),
        client_sizes: slices.iter().map(Vec::len).collect(),
        config,
    })
}

fn main() -> Result<(), Box<dyn Error>> {
    let opts = FedOptions::default();
    let (train, test) = (load_digits("train")?, load_digits("test")?);
    let config = secagg_config(Mlp::PARAMS, train.y.len() as u64, &opts)?;
    println!(
        "{CLIENTS} clients, MLP {INPUTS}-{HIDDEN}-{CLASSES} ({} parameters), {} rounds x {} \
         local epochs, batch {}, lr {}",
        Mlp::PARAMS,
        opts.rounds,
        opts.local_epochs,
        opts.batch,
        opts.lr
    );
    println!(
        "secure aggregation: SecAgg+ k = {}, t = {}, deltas clipped to [-{c}, {c}], {} bits, \
         weights <= {}, sums mod 2^{}; quantization error of a mean <= {:.2e} per entry",
        config.k(),
        config.t(),
        opts.bits,
        train.y.len(),
        config.modulus_bits(),
        opts.clip / config.levels() as f64,
        c = opts.clip,
    );
    let start = Instant::now();
    let report = run(&opts, &train, &test, |r| {
        let dropped: Vec<String> = (0..CLIENTS as ClientId)
            .filter_map(|u| drop_stage(&r.plan, u).map(|s| format!("{u} before {s}")))
            .collect();
        let included = r.included();
        let (exact, _) = plaintext_aggregate(&r.updates, &r.weights);
        let err = r
            .secure_sum
            .iter()
            .zip(&exact)
            .map(|(s, e)| (s - e).abs() / r.secure_weight as f64)
            .fold(0.0, f64::max);
        println!(
            "round {:2}: included {:2} {:?} (weight {:4}), dropped [{}], clipped {:3}, \
             mean error {:.1e}, test accuracy secure {:.2}% plaintext {:.2}%",
            r.round,
            included.len(),
            included,
            r.secure_weight,
            dropped.join(", "),
            r.clipped,
            err,
            100.0 * r.secure_accuracy,
            100.0 * r.plain_accuracy,
        );
    })?;
    println!("client sizes {:?}", report.client_sizes);
    println!(
        "initial {:.2}%, secure FedAvg {:.2}%, plaintext FedAvg {:.2}%, difference {:+.2} pp \
         ({:.2?})",
        100.0 * report.initial_accuracy,
        100.0 * report.secure_accuracy,
        100.0 * report.plain_accuracy,
        100.0 * (report.secure_accuracy - report.plain_accuracy),
        start.elapsed()
    );
    Ok(())
}
