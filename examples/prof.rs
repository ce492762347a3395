//! Profiling helper: runs one BFV operation in a loop.
use std::sync::Arc;
use cipherml_he::bfv::*;
use cipherml_he::rlwe::*;
use rand::SeedableRng;
fn main() {
    let op = std::env::args().nth(1).unwrap_or_else(|| "mul".into());
    let params = BfvParameters::new(&BfvParametersLiteral::n8192()).unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let pk = PublicKey::new(&sk, &mut rng);
    let rlk = RelinKey::new(&sk, &mut rng);
    let ev = Evaluator::new(&params);
    let gk = GaloisKeys::new(&sk, &[3], &mut rng).unwrap();
    let enc = Encoder::new(&params);
    let e = Encryptor::new(&params, pk).unwrap();
    let pt = enc.encode_u64(&[1, 2, 3]).unwrap();
    let a = e.encrypt(&pt, &mut rng).unwrap();
    for _ in 0..200 {
        match op.as_str() {
            "mul" => { std::hint::black_box(ev.mul_relin(&a, &a, &rlk).unwrap()); }
            "rot" => { std::hint::black_box(ev.rotate_rows(&a, 1, &gk).unwrap()); }
            _ => { std::hint::black_box(e.encrypt(&pt, &mut rng).unwrap()); }
        }
    }
}
