//! Runs one HE operation in a loop, for profilers (`perf record`):
//! `cargo run --release --example prof -- [mul|rot|enc|ckks-mul|ckks-rot|ckks-dec|ckks-rescale|ckks16-rot]`.

use std::sync::Arc;

use cipherml::he::rlwe::*;
use cipherml::he::{bfv, ckks};
use rand::SeedableRng;

fn main() {
    let op = std::env::args().nth(1).unwrap_or_else(|| "mul".into());
    let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
    if let Some(rest) = op.strip_prefix("ckks") {
        let lit = if rest.starts_with("16") {
            ckks::CkksParametersLiteral::n16384()
        } else {
            ckks::CkksParametersLiteral::n8192()
        };
        let params = ckks::CkksParameters::new(&lit).expect("preset");
        let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
        let rlk = RelinKey::new(&sk, &mut rng);
        let ev = ckks::Evaluator::new(&params);
        let gk = GaloisKeys::new(&sk, &[ev.galois_element(1)], &mut rng).expect("keys");
        let e = ckks::Encryptor::new(&params, PublicKey::new(&sk, &mut rng)).expect("pk");
        let a = e.encrypt_f64(&[1.0, 2.0], &mut rng).expect("encrypt");
        let dec = ckks::Decryptor::new(&params, sk.clone()).expect("sk");
        let prod = ev.mul_relin(&a, &a, &rlk).expect("mul");
        let mut times = Vec::new();
        for _ in 0..100 {
            let t0 = std::time::Instant::now();
            if rest.ends_with("mul") {
                std::hint::black_box(ev.mul_relin(&a, &a, &rlk).expect("mul"));
            } else if rest.ends_with("dec") {
                std::hint::black_box(dec.decrypt_f64(&a).expect("dec"));
            } else if rest.ends_with("rescale") {
                std::hint::black_box(ev.rescale(&prod).expect("rescale"));
            } else {
                std::hint::black_box(ev.rotate(&a, 1, &gk).expect("rot"));
            }
            times.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        report(&mut times);
        return;
    }
    let params = bfv::BfvParameters::new(&bfv::BfvParametersLiteral::n8192()).expect("preset");
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let pk = PublicKey::new(&sk, &mut rng);
    let rlk = RelinKey::new(&sk, &mut rng);
    let ev = bfv::Evaluator::new(&params);
    let gk = GaloisKeys::new(&sk, &[3], &mut rng).expect("keys");
    let enc = bfv::Encoder::new(&params);
    let e = bfv::Encryptor::new(&params, pk).expect("pk");
    let pt = enc.encode_u64(&[1, 2, 3]).expect("encode");
    let a = e.encrypt(&pt, &mut rng).expect("encrypt");
    let mut times = Vec::new();
    for _ in 0..200 {
        let t0 = std::time::Instant::now();
        match op.as_str() {
            "mul" => {
                std::hint::black_box(ev.mul_relin(&a, &a, &rlk).expect("mul"));
            }
            "rot" => {
                std::hint::black_box(ev.rotate_rows(&a, 1, &gk).expect("rot"));
            }
            _ => {
                std::hint::black_box(e.encrypt(&pt, &mut rng).expect("enc"));
            }
        }
        times.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    report(&mut times);
}

fn report(times: &mut [f64]) {
    times.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    println!(
        "min {:.1} us, median {:.1} us",
        times[0],
        times[times.len() / 2]
    );
}
