//! Runs one BFV operation in a loop, for profilers (`perf record`):
//! `cargo run --release --example prof -- [mul|rot|enc]`.

use std::sync::Arc;

use cipherml::he::bfv::*;
use cipherml::he::rlwe::*;
use rand::SeedableRng;

fn main() {
    let op = std::env::args().nth(1).unwrap_or_else(|| "mul".into());
    let params = BfvParameters::new(&BfvParametersLiteral::n8192()).expect("preset");
    let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let pk = PublicKey::new(&sk, &mut rng);
    let rlk = RelinKey::new(&sk, &mut rng);
    let ev = Evaluator::new(&params);
    let gk = GaloisKeys::new(&sk, &[3], &mut rng).expect("keys");
    let enc = Encoder::new(&params);
    let e = Encryptor::new(&params, pk).expect("pk");
    let pt = enc.encode_u64(&[1, 2, 3]).expect("encode");
    let a = e.encrypt(&pt, &mut rng).expect("encrypt");
    for _ in 0..200 {
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
    }
}
