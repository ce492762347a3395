//! Encrypted logistic regression with CKKS on the Wisconsin breast-cancer data set.
//!
//! The client encrypts the features of all 114 test patients in one ciphertext (30
//! features each, in blocks of 32 slots); the server, which holds the plaintext model,
//! computes every patient's score `w . x + b` under encryption (one plaintext product, five
//! rotations) and returns one ciphertext; the client decrypts the scores and classifies.
//! The model is trained here in plaintext, and the encrypted predictions are checked
//! against the plaintext model's: the accuracy must be equal.
//!
//! ```text
//! cargo run --release --example ckks_logreg
//! ```

use std::sync::Arc;
use std::time::Instant;

use cipherml::data::{data_dir, read_npy};
use cipherml::he::ckks::{
    CkksParameters, CkksParametersLiteral, Decryptor, Encoder, Encryptor, Evaluator,
};
use cipherml::he::rlwe::{GaloisKeys, PublicKey, SecretKey};
use ndarray::{Array1, Array2, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Plaintext logistic regression by full-batch gradient descent with a small L2 penalty.
fn train(x: &Array2<f64>, y: &Array1<f64>) -> (Array1<f64>, f64) {
    let (n, d) = x.dim();
    let mut w = Array1::zeros(d);
    let mut b = 0.0;
    for _ in 0..2000 {
        let z = x.dot(&w) + b;
        let p = z.mapv(|v| 1.0 / (1.0 + (-v).exp()));
        let err = &p - y;
        let gw = x.t().dot(&err) / n as f64 + &w * 1e-3;
        let gb = err.sum() / n as f64;
        w = w - gw * 0.5;
        b -= 0.5 * gb;
    }
    (w, b)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let load = |name: &str| read_npy(data_dir().join(name));
    let to2 = |a: ndarray::ArrayD<f64>| a.into_dimensionality::<ndarray::Ix2>();
    let x_train = to2(load("cancer_train_x.npy")?.to_f64())?;
    let y_train = load("cancer_train_y.npy")?
        .to_f64()
        .into_dimensionality::<ndarray::Ix1>()?;
    let x_test = to2(load("cancer_test_x.npy")?.to_f64())?;
    let y_test = load("cancer_test_y.npy")?
        .to_f64()
        .into_dimensionality::<ndarray::Ix1>()?;
    let (w, b) = train(&x_train, &y_train);
    let plain_scores = x_test.dot(&w) + b;
    let accuracy = |scores: &[f64]| {
        scores
            .iter()
            .zip(y_test.iter())
            .filter(|(s, y)| (**s > 0.0) == (**y > 0.5))
            .count() as f64
            / scores.len() as f64
    };
    let plain_acc = accuracy(plain_scores.as_slice().expect("contiguous"));
    println!(
        "plaintext model (trained on {} patients): test accuracy {:.4}",
        x_train.len_of(Axis(0)),
        plain_acc
    );

    // Client: keys and the encrypted batch.
    let mut rng = ChaCha20Rng::from_os_rng();
    let params = CkksParameters::new(&CkksParametersLiteral::n8192())?;
    let t0 = Instant::now();
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let pk = PublicKey::new(&sk, &mut rng);
    let ev = Evaluator::new(&params);
    let block = 32usize; // 30 features, padded to a power of two
    let steps: Vec<usize> = (0..5).map(|i| ev.galois_element(1 << i)).collect();
    let gk = GaloisKeys::new(&sk, &steps, &mut rng)?;
    println!(
        "keys: {:.1} ms ({} Galois keys)",
        t0.elapsed().as_secs_f64() * 1e3,
        steps.len()
    );
    let (n_test, d) = x_test.dim();
    let per_ct = params.slots() / block;
    assert!(n_test <= per_ct, "one ciphertext holds {per_ct} patients");
    let mut slots = vec![0.0; params.slots()];
    for (i, row) in x_test.axis_iter(Axis(0)).enumerate() {
        for (j, v) in row.iter().enumerate() {
            slots[i * block + j] = *v;
        }
    }
    let t0 = Instant::now();
    let encryptor = Encryptor::new(&params, pk)?;
    let ct = encryptor.encrypt_f64(&slots, &mut rng)?;
    let upload = ct.to_bytes(&params).len();
    println!(
        "client: encrypted {n_test} patients x {d} features in {:.2} ms ({upload} bytes)",
        t0.elapsed().as_secs_f64() * 1e3
    );

    // Server: w . x + b for every block, under encryption.
    let t0 = Instant::now();
    let encoder = Encoder::new(&params);
    let mut wslots = vec![0.0; params.slots()];
    for i in 0..per_ct {
        for j in 0..d {
            wslots[i * block + j] = w[j];
        }
    }
    let level = ct.level();
    let wpt = encoder.encode_f64(&wslots, level, params.prime(level) as f64)?;
    let prod = ev.rescale(&ev.mul_plain(&ct, &wpt)?)?;
    let summed = ev.inner_sum(&prod, block, &gk)?;
    let scores_ct = ev.add_const(&summed, b)?;
    let reply = ev.drop_to_level(&scores_ct, 0)?;
    println!(
        "server: scores of {n_test} patients in {:.2} ms (reply {} bytes)",
        t0.elapsed().as_secs_f64() * 1e3,
        reply.to_bytes(&params).len()
    );

    // Client: decrypt and classify.
    let dec = Decryptor::new(&params, sk)?;
    let out = dec.decrypt_f64(&reply)?;
    let enc_scores: Vec<f64> = (0..n_test).map(|i| out[i * block]).collect();
    let max_diff = enc_scores
        .iter()
        .zip(plain_scores.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let enc_acc = accuracy(&enc_scores);
    let same = enc_scores
        .iter()
        .zip(plain_scores.iter())
        .all(|(a, b)| (*a > 0.0) == (*b > 0.0));
    println!("encrypted model: test accuracy {enc_acc:.4}; max |score difference| {max_diff:.2e}");
    if !same || enc_acc != plain_acc {
        return Err("encrypted predictions differ from the plaintext model's".into());
    }
    println!("OK: every encrypted prediction equals the plaintext model's");
    Ok(())
}
