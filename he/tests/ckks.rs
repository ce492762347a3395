//! CKKS against plaintext references: precision after each operation (in bits), rotations
//! and conjugation, hoisting, polynomial evaluation and activation approximations.

use std::sync::Arc;

use cipherml_he::ckks::*;
use cipherml_he::rlwe::{GaloisKeys, PublicKey, RelinKey, SecretKey};
use cipherml_he::Error;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

struct Ckks {
    params: Arc<CkksParameters>,
    sk: Arc<SecretKey>,
    enc: Encoder,
    encryptor: Encryptor,
    dec: Decryptor,
    ev: Evaluator,
    rlk: RelinKey,
    rng: ChaCha20Rng,
}

fn setup(lit: &CkksParametersLiteral, insecure: bool, seed: u64) -> Ckks {
    let params = if insecure {
        CkksParameters::new_insecure(lit).unwrap()
    } else {
        CkksParameters::new(lit).unwrap()
    };
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let pk = PublicKey::new(&sk, &mut rng);
    let rlk = RelinKey::new(&sk, &mut rng);
    Ckks {
        enc: Encoder::new(&params),
        encryptor: Encryptor::new(&params, pk).unwrap(),
        dec: Decryptor::new(&params, sk.clone()).unwrap(),
        ev: Evaluator::new(&params),
        params,
        sk,
        rlk,
        rng,
    }
}

impl Ckks {
    fn random(&mut self, bound: f64) -> Vec<f64> {
        (0..self.params.slots())
            .map(|_| self.rng.random_range(-bound..bound))
            .collect()
    }
    fn encrypt(&mut self, v: &[f64]) -> Ciphertext {
        self.encryptor.encrypt_f64(v, &mut self.rng).unwrap()
    }
    fn galois(&mut self, elements: &[usize]) -> GaloisKeys {
        GaloisKeys::new(&self.sk, elements, &mut self.rng).unwrap()
    }
}

/// Bits of precision: `-log2(max |got - want|)`.
fn precision_bits(got: &[f64], want: &[f64]) -> f64 {
    let err = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    -err.log2()
}

fn small() -> CkksParametersLiteral {
    CkksParametersLiteral {
        degree: 1024,
        ciphertext_moduli_bits: vec![55, 40, 40, 40],
        special_moduli_bits: vec![55],
        scale_bits: 40,
    }
}

#[test]
fn presets_are_secure_and_insecure_ones_refused() {
    for lit in [
        CkksParametersLiteral::n8192(),
        CkksParametersLiteral::n16384(),
    ] {
        assert!(CkksParameters::new(&lit).unwrap().is_secure());
    }
    assert!(matches!(
        CkksParameters::new(&small()),
        Err(Error::InsecureParameters { n: 1024, .. })
    ));
}

#[test]
fn arithmetic_precision_at_n8192() {
    let mut c = setup(&CkksParametersLiteral::n8192(), false, 1);
    let (x, y) = (c.random(1.0), c.random(1.0));
    let (cx, cy) = (c.encrypt(&x), c.encrypt(&y));
    let fresh = precision_bits(&c.dec.decrypt_f64(&cx).unwrap(), &x);
    // Fresh public-key noise is about 2^15 in the slots: about 2^-23 at scale 2^40.
    assert!(fresh >= 21.0, "fresh precision {fresh} bits");

    let sum: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    let diff: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
    let prod: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a * b).collect();
    assert!(
        precision_bits(
            &c.dec.decrypt_f64(&c.ev.add(&cx, &cy).unwrap()).unwrap(),
            &sum
        ) >= 20.0
    );
    assert!(
        precision_bits(
            &c.dec.decrypt_f64(&c.ev.sub(&cx, &cy).unwrap()).unwrap(),
            &diff
        ) >= 20.0
    );
    let neg: Vec<f64> = x.iter().map(|a| -a).collect();
    assert!(precision_bits(&c.dec.decrypt_f64(&c.ev.neg(&cx).unwrap()).unwrap(), &neg) >= 20.0);

    // One multiplication at scale 2^40: at least 20 bits.
    let m =
        c.ev.rescale(&c.ev.mul_relin(&cx, &cy, &c.rlk).unwrap())
            .unwrap();
    assert_eq!(m.level(), 1);
    let bits = precision_bits(&c.dec.decrypt_f64(&m).unwrap(), &prod);
    assert!(bits >= 20.0, "after one multiply: {bits} bits");
    // Two multiplications (depth 2, the whole budget of this preset).
    let cube: Vec<f64> = prod.iter().zip(&x).map(|(a, b)| a * b).collect();
    let cx1 = c.ev.drop_to_level(&cx, 1).unwrap();
    let m2 =
        c.ev.rescale(&c.ev.mul_relin(&m, &cx1, &c.rlk).unwrap())
            .unwrap();
    assert_eq!(m2.level(), 0);
    let bits2 = precision_bits(&c.dec.decrypt_f64(&m2).unwrap(), &cube);
    assert!(bits2 >= 18.0, "after two multiplies: {bits2} bits");

    // Plaintext operands and constants.
    let py = c
        .enc
        .encode_f64(&y, cx.level(), c.params.default_scale())
        .unwrap();
    let mp = c.ev.rescale(&c.ev.mul_plain(&cx, &py).unwrap()).unwrap();
    assert!(precision_bits(&c.dec.decrypt_f64(&mp).unwrap(), &prod) >= 20.0);
    assert!(
        precision_bits(
            &c.dec
                .decrypt_f64(&c.ev.add_plain(&cx, &py).unwrap())
                .unwrap(),
            &sum
        ) >= 20.0
    );
    let shifted: Vec<f64> = x.iter().map(|a| a + 0.75).collect();
    assert!(
        precision_bits(
            &c.dec
                .decrypt_f64(&c.ev.add_const(&cx, 0.75).unwrap())
                .unwrap(),
            &shifted
        ) >= 20.0
    );
    let scaled: Vec<f64> = x.iter().map(|a| a * -3.5).collect();
    let mc = c.ev.mul_const_rescale(&cx, -3.5).unwrap();
    assert_eq!(mc.scale(), cx.scale());
    assert!(precision_bits(&c.dec.decrypt_f64(&mc).unwrap(), &scaled) >= 20.0);
    let tripled: Vec<f64> = x.iter().map(|a| a * 3.0).collect();
    assert!(
        precision_bits(
            &c.dec.decrypt_f64(&c.ev.mul_int(&cx, 3).unwrap()).unwrap(),
            &tripled
        ) >= 19.0
    );

    // Seeded symmetric encryption decrypts too.
    let pt = c.enc.encode_f64(&x, 2, c.params.default_scale()).unwrap();
    let s = c.dec.encrypt_symmetric(&pt, &mut c.rng).unwrap();
    assert!(s.is_seeded());
    assert!(precision_bits(&c.dec.decrypt_f64(&s).unwrap(), &x) >= 21.0);
}

#[test]
fn mismatches_are_typed_errors_carrying_both_values() {
    let mut c = setup(&small(), true, 2);
    let x = c.random(1.0);
    let cx = c.encrypt(&x);
    let sq =
        c.ev.rescale(&c.ev.mul_relin(&cx, &cx, &c.rlk).unwrap())
            .unwrap();
    match c.ev.add(&cx, &sq) {
        Err(Error::LevelMismatch { left: 3, right: 2 }) => {}
        other => panic!("{other:?}"),
    }
    let dropped = c.ev.drop_to_level(&cx, 2).unwrap();
    match c.ev.add(&dropped, &sq) {
        Err(Error::ScaleMismatch { left, right }) => {
            assert_eq!(left, cx.scale());
            assert_eq!(right, sq.scale());
        }
        other => panic!("{other:?}"),
    }
    let bottom = c.ev.drop_to_level(&cx, 0).unwrap();
    assert!(matches!(
        c.ev.rescale(&bottom),
        Err(Error::NotEnoughLevels {
            needed: 1,
            available: 0
        })
    ));
    assert!(matches!(
        c.enc.encode_f64(&[f64::NAN], 3, 1e12),
        Err(Error::EncodingOverflow { .. })
    ));
    assert!(matches!(
        c.enc.encode_f64(&[1e30], 3, 2f64.powi(100)),
        Err(Error::EncodingOverflow { .. })
    ));
    assert!(matches!(
        c.ev.eval_poly(&bottom, &[0.0, 1.0, 1.0], &c.rlk),
        Err(Error::NotEnoughLevels {
            needed: 2,
            available: 0
        })
    ));
}

#[test]
fn rotations_conjugation_and_hoisting() {
    let mut c = setup(&small(), true, 3);
    let slots = c.params.slots();
    let x = c.random(1.0);
    let cx = c.encrypt(&x);
    let mut elements = c.ev.galois_elements_power_of_two();
    elements.push(c.ev.galois_element(5));
    elements.push(c.ev.galois_element(-3));
    elements.push(c.ev.galois_element_conjugate());
    let gk = c.galois(&elements);
    for step in [1i64, 5, -3, 7, 100, -1, 511] {
        let r = c.ev.rotate(&cx, step, &gk).unwrap();
        let want: Vec<f64> = (0..slots)
            .map(|i| x[(i as i64 + step).rem_euclid(slots as i64) as usize])
            .collect();
        let bits = precision_bits(&c.dec.decrypt_f64(&r).unwrap(), &want);
        assert!(bits >= 20.0, "step {step}: {bits} bits");
    }
    // Hoisted rotations equal separate ones.
    let steps = [1i64, 5, -3];
    let hoisted = c.ev.rotate_hoisted(&cx, &steps, &gk).unwrap();
    for (h, &s) in hoisted.iter().zip(&steps) {
        let single = c
            .dec
            .decrypt_f64(&c.ev.rotate(&cx, s, &gk).unwrap())
            .unwrap();
        assert!(precision_bits(&c.dec.decrypt_f64(h).unwrap(), &single) >= 20.0);
    }
    assert!(matches!(
        c.ev.rotate_hoisted(&cx, &[6], &gk),
        Err(Error::MissingGaloisKey { .. })
    ));
    // Conjugation of complex slots.
    let z: Vec<Complex64> = (0..slots)
        .map(|i| Complex64::new(x[i], x[(i + 1) % slots]))
        .collect();
    let pt = c.enc.encode(&z, 3, c.params.default_scale()).unwrap();
    let cz = c.encryptor.encrypt(&pt, &mut c.rng).unwrap();
    let conj = c
        .dec
        .decrypt_decode(&c.ev.conjugate(&cz, &gk).unwrap())
        .unwrap();
    let err = conj
        .iter()
        .zip(&z)
        .map(|(a, b)| (a - b.conj()).norm())
        .fold(0.0, f64::max);
    assert!(err < 1e-6, "conjugation error {err}");
    // Inner sum of the first 8 slots.
    let s = c.ev.inner_sum(&cx, 8, &gk).unwrap();
    let got = c.dec.decrypt_f64(&s).unwrap();
    let want: f64 = x[..8].iter().sum();
    assert!((got[0] - want).abs() < 1e-6);
}

#[test]
fn polynomial_evaluation_matches_plaintext() {
    let mut c = setup(&small(), true, 4);
    let x = c.random(1.0);
    let cx = c.encrypt(&x);
    for coeffs in [
        vec![0.5, -1.0],
        vec![0.1, 0.2, 0.3],
        vec![-0.25, 0.5, 0.0, 1.5],
        vec![0.0, 0.0, 0.0, 0.0, 1.0],
        vec![0.3, -0.2, 0.1, 0.05, -0.4, 0.2, 0.1],
    ] {
        let degree = coeffs.len() - 1;
        let depth = Evaluator::poly_depth(degree);
        if depth > cx.level() {
            continue;
        }
        let out = c.ev.eval_poly(&cx, &coeffs, &c.rlk).unwrap();
        assert_eq!(out.level(), cx.level() - depth, "degree {degree}");
        assert_eq!(out.scale(), cx.scale());
        let want: Vec<f64> = x
            .iter()
            .map(|&v| coeffs.iter().rev().fold(0.0, |acc, &a| acc * v + a))
            .collect();
        let bits = precision_bits(&c.dec.decrypt_f64(&out).unwrap(), &want);
        assert!(bits >= 17.0, "degree {degree}: {bits} bits");
    }
}

#[test]
fn activation_approximations_stay_within_their_stated_error() {
    // N = 16384 with seven levels: degree-7 approximations (depth 3) and degree 15 (depth 4).
    let mut c = setup(&CkksParametersLiteral::n16384(), false, 5);
    type Case = (PolyApprox, Box<dyn Fn(f64) -> f64>);
    let cases: Vec<Case> = vec![
        (
            PolyApprox::sigmoid(8.0, 7),
            Box::new(|v: f64| 1.0 / (1.0 + (-v).exp())),
        ),
        (PolyApprox::tanh(3.0, 7), Box::new(f64::tanh)),
        (PolyApprox::relu(1.0, 15), Box::new(|v: f64| v.max(0.0))),
    ];
    for (approx, f) in cases {
        let (lo, hi) = approx.interval;
        let x: Vec<f64> = (0..c.params.slots())
            .map(|_| c.rng.random_range(lo..hi))
            .collect();
        let cx = c.encrypt(&x);
        let out = c.ev.eval_poly(&cx, &approx.coeffs, &c.rlk).unwrap();
        let got = c.dec.decrypt_f64(&out).unwrap();
        let err = got
            .iter()
            .zip(&x)
            .map(|(g, &v)| (g - f(v)).abs())
            .fold(0.0, f64::max);
        assert!(
            err <= approx.max_error + 1e-4,
            "degree {}: error {err} > stated {}",
            approx.degree(),
            approx.max_error
        );
    }
}

#[test]
fn serialization_round_trips_and_rejects_corruption() {
    let mut c = setup(&CkksParametersLiteral::n8192(), false, 6);
    let x = c.random(1.0);
    let cx = c.encrypt(&x);
    let bytes = cx.to_bytes(&c.params);
    assert_eq!(Ciphertext::from_bytes(&c.params, &bytes).unwrap(), cx);
    let pt = c.enc.encode_f64(&x, 2, c.params.default_scale()).unwrap();
    let seeded = c.dec.encrypt_symmetric(&pt, &mut c.rng).unwrap();
    let sb = seeded.to_bytes(&c.params);
    // 8192 x (60 + 40 + 40) bits = 143,360 bytes plus a 32-byte seed and a 27-byte header.
    assert_eq!(sb.len(), 8192 * 140 / 8 + 32 + 27);
    assert!(sb.len() <= 150_000);
    let back = Ciphertext::from_bytes(&c.params, &sb).unwrap();
    assert!(precision_bits(&c.dec.decrypt_f64(&back).unwrap(), &x) >= 21.0);
    for len in [0, 10, 20, 27, sb.len() - 1] {
        assert!(Ciphertext::from_bytes(&c.params, &sb[..len]).is_err());
    }
    let mut bad = bytes.clone();
    bad[19..27].copy_from_slice(&f64::NAN.to_le_bytes());
    assert!(Ciphertext::from_bytes(&c.params, &bad).is_err());
    let mut bad = bytes.clone();
    bad[19..27].copy_from_slice(&1e300f64.to_le_bytes());
    assert!(Ciphertext::from_bytes(&c.params, &bad).is_err());
    let lit = CkksParametersLiteral::n16384();
    assert_eq!(
        CkksParametersLiteral::from_wire(&lit.to_wire()).unwrap(),
        lit
    );
}

#[test]
fn rerandomization_keeps_the_message_and_changes_every_polynomial() {
    let mut c = setup(&small(), true, 31);
    let a = c.random(1.0);
    let b = c.random(1.0);
    let x = c.encrypt(&a);
    let y = c.encrypt(&b);
    // A computed ciphertext one level down, at the squared-then-rescaled scale.
    let z =
        c.ev.rescale(&c.ev.mul_relin(&x, &y, &c.rlk).unwrap())
            .unwrap();
    let r = c.encryptor.rerandomize(&z, &mut c.rng).unwrap();
    assert_eq!((r.level(), r.scale()), (z.level(), z.scale()));
    let want: Vec<f64> = a.iter().zip(&b).map(|(u, v)| u * v).collect();
    let got = c.dec.decrypt_f64(&r).unwrap();
    assert!(precision_bits(&got, &want) > 15.0);
    // Both halves changed (the second one is what a re-randomization is for).
    let (zb, rb) = (z.to_bytes(&c.params), r.to_bytes(&c.params));
    assert_eq!(zb.len(), rb.len());
    let half = zb.len() / 2;
    assert_ne!(zb[..half], rb[..half]);
    assert_ne!(zb[half..], rb[half..]);
    // Wrong parameters: a typed error.
    let other = setup(&CkksParametersLiteral::n8192(), false, 32);
    assert!(other.encryptor.rerandomize(&z, &mut c.rng).is_err());
}
