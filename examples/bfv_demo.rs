//! The README's main command for now: encrypts two vectors with BFV at 128-bit security
//! (N = 8192), multiplies, rotates and sums them under encryption, decrypts, checks the
//! result against plaintext arithmetic, and prints it with the time of each step.
//!
//! ```text
//! cargo run --release --example bfv_demo
//! ```

use std::sync::Arc;
use std::time::Instant;

use cipherml::he::bfv::{
    BfvParameters, BfvParametersLiteral, Decryptor, Encoder, Encryptor, Evaluator,
};
use cipherml::he::rlwe::{GaloisKeys, PublicKey, RelinKey, SecretKey};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = ChaCha20Rng::from_os_rng();
    let t0 = Instant::now();
    let params = BfvParameters::new(&BfvParametersLiteral::n8192())?;
    println!(
        "BFV N = {}, log2 q = {:.1}, t = {} (128-bit security), parameters in {:.1} ms",
        params.degree(),
        params.log2_q(),
        params.plaintext_modulus(),
        ms(t0)
    );

    let t0 = Instant::now();
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let pk = PublicKey::new(&sk, &mut rng);
    let rlk = RelinKey::new(&sk, &mut rng);
    let ev = Evaluator::new(&params);
    let gk = GaloisKeys::new(&sk, &ev.galois_elements_inner_sum(), &mut rng)?;
    println!(
        "keys: secret, public, relinearization and {} Galois keys in {:.1} ms",
        gk.elements().count(),
        ms(t0)
    );

    let encoder = Encoder::new(&params);
    let encryptor = Encryptor::new(&params, pk)?;
    let decryptor = Decryptor::new(&params, sk)?;

    // x = 1..=8, y = 10, 20, ..., 80: the encrypted dot product is sum(x_i * y_i) = 2040.
    let x: Vec<i64> = (1..=8).collect();
    let y: Vec<i64> = (1..=8).map(|v| 10 * v).collect();
    let t0 = Instant::now();
    let cx = encryptor.encrypt(&encoder.encode_i64(&x)?, &mut rng)?;
    let cy = encryptor.encrypt(&encoder.encode_i64(&y)?, &mut rng)?;
    println!("encrypt two vectors: {:.2} ms", ms(t0));
    println!(
        "noise budget of a fresh ciphertext: {} bits",
        decryptor.noise_budget(&cx)?
    );

    let t0 = Instant::now();
    let prod = ev.mul_relin(&cx, &cy, &rlk)?;
    println!("multiply + relinearize: {:.2} ms", ms(t0));
    let t0 = Instant::now();
    let dot = ev.inner_sum(&prod, &gk)?;
    println!(
        "inner sum ({} rotations): {:.2} ms",
        gk.elements().count(),
        ms(t0)
    );
    println!("noise budget left: {} bits", decryptor.noise_budget(&dot)?);

    let t0 = Instant::now();
    let slots = encoder.decode_i64(&decryptor.decrypt(&dot)?)?;
    let elementwise = encoder.decode_i64(&decryptor.decrypt(&prod)?)?;
    println!("decrypt + decode: {:.2} ms", ms(t0) / 2.0);

    let want_prod: Vec<i64> = x.iter().zip(&y).map(|(a, b)| a * b).collect();
    let want_dot: i64 = want_prod.iter().sum();
    println!("x * y (elementwise, decrypted) = {:?}", &elementwise[..8]);
    println!(
        "<x, y> (decrypted) = {}   (plaintext: {})",
        slots[0], want_dot
    );
    if elementwise[..8] != want_prod[..] || slots[0] != want_dot {
        return Err("decrypted result differs from the plaintext computation".into());
    }
    println!("OK: the decrypted results equal the plaintext computation");
    Ok(())
}
