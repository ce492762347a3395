//! BFV against plaintext references: every operation on random inputs, with noise-budget
//! bounds, at small (insecure, opted in) and at 128-bit preset sizes.

mod common;

use cipherml_he::bfv::*;
use cipherml_he::Error;
use common::*;
use proptest::prelude::*;
use rand::Rng;

fn mulmod(a: u64, b: u64, t: u64) -> u64 {
    ((a as u128 * b as u128) % t as u128) as u64
}

/// Lower bound on the fresh noise budget of a public-key encryption: the noise is at most
/// `B (2N + 1)` with `B = 21` (centered binomial bound) plus `t` from `Delta` rounding.
fn fresh_budget_bound(b: &Bfv) -> u32 {
    let n = b.params.degree() as f64;
    let t = b.params.plaintext_modulus() as u64 as f64;
    let noise = 21.0 * (2.0 * n + 1.0) + t;
    (b.params.log2_q() - t.log2() - noise.log2() - 1.0).floor() as u32
}

fn small_params() -> BfvParametersLiteral {
    small(64, vec![50, 50, 50], vec![50], 17)
}

#[test]
fn insecure_parameters_are_refused_without_opt_in() {
    let lit = small_params();
    assert!(matches!(
        BfvParameters::new(&lit),
        Err(Error::InsecureParameters { n: 64, .. })
    ));
    let mut too_big = BfvParametersLiteral::n8192();
    too_big.ciphertext_moduli_bits.push(30);
    match BfvParameters::new(&too_big) {
        Err(Error::InsecureParameters {
            n,
            log_qp,
            max_log_qp,
        }) => {
            assert_eq!((n, log_qp, max_log_qp), (8192, 248, 218));
        }
        other => panic!("expected InsecureParameters, got {other:?}"),
    }
    assert!(BfvParameters::new_insecure(&lit).is_ok());
    for d in [4096, 8192, 16384, 32768] {
        let p = BfvParameters::new(&BfvParametersLiteral::preset(d).unwrap()).unwrap();
        assert!(p.is_secure());
        assert!(p.supports_batching());
        assert_eq!(p.plaintext_modulus() as u64 % (2 * d as u64), 1);
    }
    // The largest preset encrypts, multiplies and decrypts.
    let mut b = setup(&BfvParametersLiteral::n32768(), false, 32768);
    let x = b.random_slots();
    let cx = b.encrypt(&x);
    let t = b.params.plaintext_modulus() as u64;
    let sq: Vec<u64> = x.iter().map(|v| mulmod(*v, *v, t)).collect();
    assert_eq!(b.decrypt(&b.ev.mul_relin(&cx, &cx, &b.rlk).unwrap()), sq);
}

#[test]
fn invalid_literals_give_typed_errors() {
    let mut lit = small_params();
    lit.degree = 100;
    assert!(matches!(
        BfvParameters::new_insecure(&lit),
        Err(Error::InvalidDegree { n: 100, .. })
    ));
    let mut lit = small_params();
    lit.ciphertext_moduli_bits = vec![70];
    assert!(matches!(
        BfvParameters::new_insecure(&lit),
        Err(Error::InvalidModulusBits { bits: 70, .. })
    ));
    let mut lit = small_params();
    lit.plaintext = PlaintextModulus::Prime(1000);
    assert!(matches!(
        BfvParameters::new_insecure(&lit),
        Err(Error::InvalidPlaintextModulus { t: 1000, .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn arithmetic_matches_plaintext_reference(seed: u64) {
        let mut b = setup(&small_params(), true, seed);
        let t = b.params.plaintext_modulus() as u64;
        let (x, y) = (b.random_slots(), b.random_slots());
        let (cx, cy) = (b.encrypt(&x), b.encrypt(&y));
        prop_assert_eq!(b.decrypt(&cx), x.clone());

        let add: Vec<u64> = x.iter().zip(&y).map(|(a, c)| (a + c) % t).collect();
        let sub: Vec<u64> = x.iter().zip(&y).map(|(a, c)| (a + t - c) % t).collect();
        let mul: Vec<u64> = x.iter().zip(&y).map(|(a, c)| mulmod(*a, *c, t)).collect();
        let neg: Vec<u64> = x.iter().map(|a| (t - a) % t).collect();

        prop_assert_eq!(b.decrypt(&b.ev.add(&cx, &cy).unwrap()), add.clone());
        prop_assert_eq!(b.decrypt(&b.ev.sub(&cx, &cy).unwrap()), sub.clone());
        prop_assert_eq!(b.decrypt(&b.ev.neg(&cx).unwrap()), neg);
        let py = b.enc.encode_u64(&y).unwrap();
        prop_assert_eq!(b.decrypt(&b.ev.add_plain(&cx, &py).unwrap()), add);
        prop_assert_eq!(b.decrypt(&b.ev.sub_plain(&cx, &py).unwrap()), sub);
        prop_assert_eq!(b.decrypt(&b.ev.mul_plain(&cx, &py).unwrap()), mul.clone());
        let prepared = b.enc.prepare(&py, cx.level()).unwrap();
        prop_assert_eq!(b.decrypt(&b.ev.mul_plain_prepared(&cx, &prepared).unwrap()), mul.clone());
        let k = b.rng.random_range(-1000i64..1000);
        let scaled: Vec<u64> = x.iter().map(|a| mulmod(*a, k.rem_euclid(t as i64) as u64, t)).collect();
        prop_assert_eq!(b.decrypt(&b.ev.mul_scalar(&cx, k).unwrap()), scaled);

        let c3 = b.ev.mul(&cx, &cy).unwrap();
        prop_assert_eq!(c3.len(), 3);
        prop_assert_eq!(b.decrypt(&c3), mul.clone());
        let relin = b.ev.relinearize(&c3, &b.rlk).unwrap();
        prop_assert_eq!(relin.len(), 2);
        prop_assert_eq!(b.decrypt(&relin), mul.clone());
        prop_assert_eq!(b.decrypt(&b.ev.mul_relin(&cx, &cy, &b.rlk).unwrap()), mul);
        let sq: Vec<u64> = x.iter().map(|a| mulmod(*a, *a, t)).collect();
        prop_assert_eq!(b.decrypt(&b.ev.mul_relin(&cx, &cx, &b.rlk).unwrap()), sq);
    }

    #[test]
    fn rotations_match_plaintext_reference(seed: u64, step in -31i64..32) {
        let mut b = setup(&small_params(), true, seed);
        let n = b.params.degree();
        let half = n / 2;
        let x = b.random_slots();
        let cx = b.encrypt(&x);
        // Only power-of-two keys: other steps are composed.
        let mut elements: Vec<usize> = (0..5).map(|i| b.ev.galois_element_rows(1 << i).unwrap()).collect();
        elements.push(b.ev.galois_element_swap());
        let gk = b.galois(&elements);
        let r = b.ev.rotate_rows(&cx, step, &gk).unwrap();
        let got = b.decrypt(&r);
        for i in 0..n {
            let row = i / half;
            let col = ((i % half) as i64 + step).rem_euclid(half as i64) as usize;
            prop_assert_eq!(got[i], x[row * half + col], "slot {}", i);
        }
        let sw = b.decrypt(&b.ev.rotate_columns(&cx, &gk).unwrap());
        for i in 0..n {
            prop_assert_eq!(sw[i], x[(i + half) % n]);
        }
    }
}

#[test]
fn inner_sum_and_missing_keys() {
    let mut b = setup(&small_params(), true, 3);
    let t = b.params.plaintext_modulus() as u64;
    let x = b.random_slots();
    let cx = b.encrypt(&x);
    let gk = b.galois(&b.ev.galois_elements_inner_sum());
    let s = b.decrypt(&b.ev.inner_sum(&cx, &gk).unwrap());
    let total = x.iter().fold(0u64, |acc, v| (acc + v) % t);
    assert!(s.iter().all(|&v| v == total));
    let empty = b.galois(&[]);
    assert!(matches!(
        b.ev.rotate_rows(&cx, 1, &empty),
        Err(Error::MissingGaloisKey { element: 3 })
    ));
    assert!(matches!(
        b.ev.rotate_rows(&cx, 32, &gk),
        Err(Error::InvalidRotation { step: 32, max: 32 })
    ));
}

#[test]
fn mismatches_are_typed_errors() {
    let mut b = setup(&small_params(), true, 4);
    let x = b.random_slots();
    let cx = b.encrypt(&x);
    let low = b.ev.mod_switch_to_next(&cx).unwrap();
    assert!(matches!(
        b.ev.add(&cx, &low),
        Err(Error::LevelMismatch { left: 2, right: 1 })
    ));
    let mut other = setup(&small(64, vec![50, 50], vec![50], 17), true, 5);
    let cy = other.encrypt(&x);
    assert!(matches!(
        b.ev.add(&cx, &cy),
        Err(Error::ParameterMismatch { .. })
    ));
    assert!(matches!(
        b.ev.mul_relin(&cx, &cx, &other.rlk),
        Err(Error::ParameterMismatch { .. })
    ));
    let c3 = b.ev.mul(&cx, &cx).unwrap();
    assert!(matches!(
        b.ev.mul(&c3, &cx),
        Err(Error::CiphertextSize {
            found: 3,
            expected: 2
        })
    ));
    let t = b.params.plaintext_modulus() as u64;
    assert!(matches!(
        b.enc.encode_u64(&[t]),
        Err(Error::ValueOutOfRange { .. })
    ));
    assert!(matches!(
        b.enc.encode_i64(&vec![0; 65]),
        Err(Error::TooManyValues {
            given: 65,
            capacity: 64
        })
    ));
    assert!(b.ev.mod_switch_to_level(&low, 2).is_err());
}

#[test]
fn modulus_switching_keeps_the_plaintext() {
    let mut b = setup(&small_params(), true, 6);
    let x = b.random_slots();
    let cx = b.encrypt(&x);
    let c3 = b.ev.mul_relin(&cx, &cx, &b.rlk).unwrap();
    let t = b.params.plaintext_modulus() as u64;
    let want: Vec<u64> = x.iter().map(|a| mulmod(*a, *a, t)).collect();
    let before = b.decryptor.noise_budget(&c3).unwrap();
    let low = b.ev.mod_switch_to_level(&c3, 0).unwrap();
    assert_eq!(low.level(), 0);
    assert_eq!(b.decrypt(&low), want);
    let after = b.decryptor.noise_budget(&low).unwrap();
    assert!(after > 0 && after <= before, "{before} -> {after}");
    // Smaller on the wire.
    assert!(low.to_bytes(&b.params).len() * 2 < c3.to_bytes(&b.params).len());
}

#[test]
fn signed_and_coefficient_encodings() {
    let mut b = setup(&small_params(), true, 7);
    let t = b.params.plaintext_modulus() as u64 as i64;
    let v: Vec<i64> = (0..64)
        .map(|_| b.rng.random_range(-t / 2..=t / 2))
        .collect();
    let pt = b.enc.encode_i64(&v).unwrap();
    let ct = b.encryptor.encrypt(&pt, &mut b.rng).unwrap();
    assert_eq!(
        b.enc
            .decode_i64(&b.decryptor.decrypt(&ct).unwrap())
            .unwrap(),
        v
    );
    let pc = b.enc.encode_coeffs_i64(&v).unwrap();
    assert_eq!(b.enc.decode_coeffs_i64(&pc).unwrap(), v);
}

/// Negacyclic convolution modulo `t` (the plaintext reference of coefficient encoding).
fn negacyclic_mod(a: &[i64], b: &[i64], t: i128) -> Vec<i128> {
    let n = a.len();
    let mut out = vec![0i128; n];
    for i in 0..n {
        for j in 0..n {
            let p = a[i] as i128 * b[j] as i128;
            if i + j < n {
                out[i + j] += p;
            } else {
                out[i + j - n] -= p;
            }
        }
    }
    out.iter().map(|v| v.rem_euclid(t)).collect()
}

#[test]
fn power_of_two_coefficient_encoding_computes_polynomial_products() {
    let lit = BfvParametersLiteral {
        degree: 4096,
        ciphertext_moduli_bits: vec![36, 36],
        special_moduli_bits: vec![37],
        plaintext: PlaintextModulus::PowerOfTwo { bits: 16 },
    };
    let mut b = setup(&lit, false, 8);
    assert!(!b.params.supports_batching());
    assert!(matches!(
        b.enc.encode_u64(&[1]),
        Err(Error::BatchingUnavailable { t: 65536, .. })
    ));
    let n = 4096;
    let t = 1i64 << 16;
    let x: Vec<i64> = (0..n).map(|_| b.rng.random_range(-t / 2..t / 2)).collect();
    // A small "weight" polynomial, as a convolution kernel would be.
    let w: Vec<i64> = (0..n)
        .map(|i| if i < 25 { b.rng.random_range(-8..8) } else { 0 })
        .collect();
    let cx = b
        .encryptor
        .encrypt(&b.enc.encode_coeffs_i64(&x).unwrap(), &mut b.rng)
        .unwrap();
    let pw = b.enc.encode_coeffs_i64(&w).unwrap();
    let prod = b.ev.mul_plain(&cx, &pw).unwrap();
    let got = b.decryptor.decrypt(&prod).unwrap();
    let want = negacyclic_mod(&x, &w, t as i128);
    let got_u: Vec<i128> = got.coefficients().iter().map(|&v| v as i128).collect();
    assert_eq!(got_u, want);
    // ciphertext x ciphertext
    let cw = b.encryptor.encrypt(&pw, &mut b.rng).unwrap();
    let prod2 = b.ev.mul_relin(&cx, &cw, &b.rlk).unwrap();
    let got2: Vec<i128> = b
        .decryptor
        .decrypt(&prod2)
        .unwrap()
        .coefficients()
        .iter()
        .map(|&v| v as i128)
        .collect();
    assert_eq!(got2, want);
}

/// At the 128-bit presets: correctness and noise budgets above computed bounds.
#[test]
fn presets_noise_budgets_stay_above_bounds() {
    for degree in [4096, 8192] {
        let lit = BfvParametersLiteral::preset(degree).unwrap();
        let mut b = setup(&lit, false, degree as u64);
        let t = b.params.plaintext_modulus() as u64;
        let (x, y) = (b.random_slots(), b.random_slots());
        let (cx, cy) = (b.encrypt(&x), b.encrypt(&y));
        let fresh = b.decryptor.noise_budget(&cx).unwrap();
        let bound = fresh_budget_bound(&b);
        assert!(
            fresh >= bound,
            "N={degree}: fresh budget {fresh} < bound {bound}"
        );
        // symmetric (seeded) encryption has less noise
        let sym = b
            .decryptor
            .encrypt_symmetric(&b.enc.encode_u64(&x).unwrap(), &mut b.rng)
            .unwrap();
        assert_eq!(b.decrypt(&sym), x);
        assert!(b.decryptor.noise_budget(&sym).unwrap() >= fresh);

        let prod = b.ev.mul_relin(&cx, &cy, &b.rlk).unwrap();
        let want: Vec<u64> = x.iter().zip(&y).map(|(a, c)| mulmod(*a, *c, t)).collect();
        assert_eq!(b.decrypt(&prod), want);
        let after_mul = b.decryptor.noise_budget(&prod).unwrap();
        // One multiplication costs about log2(t) + log2(N) + a few bits.
        let cost_bound = (t as f64).log2() + (degree as f64).log2() + 8.0;
        assert!(
            (fresh as f64 - after_mul as f64) <= cost_bound,
            "N={degree}: multiply consumed {} bits (bound {cost_bound})",
            fresh - after_mul
        );
        let g = b.ev.galois_element_rows(1).unwrap();
        let gk = b.galois(&[g]);
        let rot = b.ev.rotate_rows(&cx, 1, &gk).unwrap();
        let after_rot = b.decryptor.noise_budget(&rot).unwrap();
        assert!(
            after_rot + 3 >= fresh,
            "N={degree}: rotation {fresh} -> {after_rot}"
        );
        let d = b.decrypt(&rot);
        assert_eq!(d[0], x[1]);
        let sum = b.ev.add(&prod, &prod).unwrap();
        assert!(b.decryptor.noise_budget(&sum).unwrap() + 1 >= after_mul);
        // Depth: the 8192 preset supports at least two sequential multiplications.
        if degree == 8192 {
            let p2 = b.ev.mul_relin(&prod, &cx, &b.rlk).unwrap();
            let want2: Vec<u64> = want
                .iter()
                .zip(&x)
                .map(|(a, c)| mulmod(*a, *c, t))
                .collect();
            assert_eq!(b.decrypt(&p2), want2);
            assert!(b.decryptor.noise_budget(&p2).unwrap() > 0);
        }
    }
}
