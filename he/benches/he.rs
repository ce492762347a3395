//! Criterion benchmarks of the HE primitives at N = 8192 (one thread):
//! `cargo bench -p cipherml-he`.
#![allow(missing_docs)]

use std::sync::Arc;

use cipherml_he::bfv::*;
use cipherml_he::math::primes::ntt_primes;
use cipherml_he::math::{Modulus, NttOperator};
use cipherml_he::rlwe::{GaloisKeys, PublicKey, RelinKey, SecretKey};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn ntt(c: &mut Criterion) {
    let n = 8192;
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    for bits in [50u32, 60] {
        let p = ntt_primes(bits, n, 1, &[]).unwrap()[0];
        let op = NttOperator::new(Modulus::new(p).unwrap(), n).unwrap();
        let mut a: Vec<u64> = (0..n).map(|_| rng.random_range(0..p)).collect();
        c.bench_function(&format!("ntt.fwd.n8192.q{bits}"), |b| {
            b.iter(|| op.forward(&mut a))
        });
        c.bench_function(&format!("ntt.inv.n8192.q{bits}"), |b| {
            b.iter(|| op.backward(&mut a))
        });
    }
}

fn bfv(c: &mut Criterion) {
    let params = BfvParameters::new(&BfvParametersLiteral::n8192()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let pk = PublicKey::new(&sk, &mut rng);
    let rlk = RelinKey::new(&sk, &mut rng);
    let ev = Evaluator::new(&params);
    let gk = GaloisKeys::new(&sk, &[ev.galois_element_rows(1).unwrap()], &mut rng).unwrap();
    let enc = Encoder::new(&params);
    let encryptor = Encryptor::new(&params, pk).unwrap();
    let decryptor = Decryptor::new(&params, sk).unwrap();
    let t = params.plaintext_modulus() as u64;
    let v: Vec<u64> = (0..8192).map(|_| rng.random_range(0..t)).collect();
    let pt = enc.encode_u64(&v).unwrap();
    let a = encryptor.encrypt(&pt, &mut rng).unwrap();
    let b2 = encryptor.encrypt(&pt, &mut rng).unwrap();
    let prepared = enc.prepare(&pt, a.level()).unwrap();

    let mut g = c.benchmark_group("bfv.n8192");
    g.sample_size(20);
    g.bench_function("encrypt_pk", |b| {
        b.iter(|| encryptor.encrypt(&pt, &mut rng).unwrap())
    });
    g.bench_function("decrypt", |b| b.iter(|| decryptor.decrypt(&a).unwrap()));
    g.bench_function("add", |b| b.iter(|| ev.add(&a, &b2).unwrap()));
    g.bench_function("mul_plain", |b| {
        b.iter(|| ev.mul_plain_prepared(&a, &prepared).unwrap())
    });
    g.bench_function("mul_relin", |b| {
        b.iter(|| ev.mul_relin(&a, &b2, &rlk).unwrap())
    });
    g.bench_function("rotate", |b| b.iter(|| ev.rotate_rows(&a, 1, &gk).unwrap()));
    g.finish();
}

criterion_group!(benches, ntt, bfv);
criterion_main!(benches);
