//! BFV against a slow big-integer reference at small N: decryption and the HPS
//! multiplication are recomputed exactly with num-bigint.

use std::sync::Arc;

use num_bigint::BigInt;
use num_traits::{One, Signed, Zero};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::math::{Coeff, Poly, RnsBasis};
use crate::rlwe::{PublicKey, SecretKey};

/// Small insecure parameters (N = 32, three ciphertext primes), shared with the other
/// in-crate BFV tests.
pub(super) fn params() -> Arc<BfvParameters> {
    BfvParameters::new_insecure(&BfvParametersLiteral {
        degree: 32,
        ciphertext_moduli_bits: vec![40, 41, 42],
        special_moduli_bits: vec![45],
        plaintext: PlaintextModulus::Batching { bits: 17 },
    })
    .unwrap()
}

fn modulus(b: &RnsBasis) -> BigInt {
    b.primes()
        .iter()
        .fold(BigInt::one(), |a, p| a * p.modulus.value())
}

/// Centered big-integer coefficients of an RNS polynomial (coefficient form).
fn lift(p: &Poly<Coeff>, b: &RnsBasis) -> Vec<BigInt> {
    let q = modulus(b);
    (0..p.degree())
        .map(|c| {
            let mut acc = BigInt::zero();
            for (i, pr) in b.primes().iter().enumerate() {
                let qi = BigInt::from(pr.modulus.value());
                let qhat = &q / &qi;
                let inv = qhat.modinv(&qi).expect("coprime");
                acc += BigInt::from(p.limb(i)[c]) * inv % &qi * qhat;
            }
            let v = acc % &q;
            if &v * 2 > q {
                v - &q
            } else {
                v
            }
        })
        .collect()
}

fn negacyclic(a: &[BigInt], b: &[BigInt]) -> Vec<BigInt> {
    let n = a.len();
    let mut out = vec![BigInt::zero(); n];
    for i in 0..n {
        for j in 0..n {
            let p = &a[i] * &b[j];
            if i + j < n {
                out[i + j] += p;
            } else {
                out[i + j - n] -= p;
            }
        }
    }
    out
}

/// round(a / b) for b > 0, half away from zero.
fn round_div(a: &BigInt, b: &BigInt) -> BigInt {
    let two = BigInt::from(2);
    if a.is_negative() {
        -((-a * &two + b) / (b * &two))
    } else {
        (a * &two + b) / (b * &two)
    }
}

fn centered(v: &BigInt, q: &BigInt) -> BigInt {
    let r = ((v % q) + q) % q;
    if &r * 2 > *q {
        r - q
    } else {
        r
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn decryption_and_multiplication_match_bigint(seed: u64) {
        let params = params();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
        let pk = PublicKey::new(&sk, &mut rng);
        let enc = Encoder::new(&params);
        let e = Encryptor::new(&params, pk).unwrap();
        let d = Decryptor::new(&params, sk.clone()).unwrap();
        let ev = Evaluator::new(&params);
        let t = params.plaintext_modulus() as u64;
        let tb = BigInt::from(t);
        let x: Vec<u64> = (0..32).map(|_| rng.random_range(0..t)).collect();
        let y: Vec<u64> = (0..32).map(|_| rng.random_range(0..t)).collect();
        let cx = e.encrypt(&enc.encode_u64(&x).unwrap(), &mut rng).unwrap();
        let cy = e.encrypt(&enc.encode_u64(&y).unwrap(), &mut rng).unwrap();
        let q = params.context().q_at(cx.level()).clone();
        let qb = modulus(&q);
        let s: Vec<BigInt> = sk.coefficients().iter().map(|&v| BigInt::from(v)).collect();

        // Decryption: m = round(t [c0 + c1 s]_Q / Q) mod t.
        let c0 = lift(&cx.polys[0].clone().into_coeff(&q), &q);
        let c1 = lift(&cx.polys[1].clone().into_coeff(&q), &q);
        let c1s = negacyclic(&c1, &s);
        let phase: Vec<BigInt> = c0.iter().zip(&c1s).map(|(a, b)| centered(&(a + b), &qb)).collect();
        let want: Vec<u64> = phase
            .iter()
            .map(|v| {
                let r = round_div(&(v * &tb), &qb);
                let r = ((r % &tb) + &tb) % &tb;
                r.try_into().unwrap()
            })
            .collect();
        let got = d.decrypt(&cx).unwrap();
        prop_assert_eq!(got.coefficients(), &want[..]);

        // Multiplication: d_i = round(t/Q * tensor_i), matched within +-1 per coefficient.
        let prod = ev.mul(&cx, &cy).unwrap();
        let a = [c0, c1];
        let b = [
            lift(&cy.polys[0].clone().into_coeff(&q), &q),
            lift(&cy.polys[1].clone().into_coeff(&q), &q),
        ];
        let d0 = negacyclic(&a[0], &b[0]);
        let d1: Vec<BigInt> = negacyclic(&a[0], &b[1])
            .into_iter()
            .zip(negacyclic(&a[1], &b[0]))
            .map(|(u, v)| u + v)
            .collect();
        let d2 = negacyclic(&a[1], &b[1]);
        for (k, dk) in [d0, d1, d2].iter().enumerate() {
            let ours = lift(&prod.polys[k].clone().into_coeff(&q), &q);
            for (c, v) in dk.iter().enumerate() {
                let want = round_div(&(v * &tb), &qb);
                let diff = centered(&(&ours[c] - &want), &qb);
                prop_assert!(diff.abs() <= BigInt::one(), "poly {} coeff {}: diff {}", k, c, diff);
            }
        }
    }
}
