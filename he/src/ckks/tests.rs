//! In-crate CKKS tests: the encoder against a naive evaluation of the canonical embedding.

use num_complex::Complex64;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;

#[test]
fn encoding_is_the_canonical_embedding() {
    let lit = CkksParametersLiteral {
        degree: 64,
        ciphertext_moduli_bits: vec![50, 40],
        special_moduli_bits: vec![50],
        scale_bits: 30,
    };
    let params = CkksParameters::new_insecure(&lit).unwrap();
    let enc = Encoder::new(&params);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let z: Vec<Complex64> = (0..32)
        .map(|_| Complex64::new(rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0)))
        .collect();
    let scale = 2f64.powi(30);
    let pt = enc.encode(&z, 1, scale).unwrap();
    let q = params.context().q_at(1).clone();
    let coeff = pt.poly.clone().into_coeff(&q);
    let mut scratch = Vec::new();
    let c: Vec<f64> = (0..64)
        .map(|i| {
            let res: Vec<u64> = (0..q.len()).map(|l| coeff.limb(l)[i]).collect();
            q.to_f64_centered(&res, &mut scratch) / scale
        })
        .collect();
    // Coefficients are real (up to rounding) and m(zeta^(5^j)) = z_j with zeta = e^(i pi / N).
    let n = 64.0;
    let mut g = 1u64;
    for zj in &z {
        let root = Complex64::from_polar(1.0, std::f64::consts::PI * g as f64 / n);
        let mut acc = Complex64::new(0.0, 0.0);
        let mut pw = Complex64::new(1.0, 0.0);
        for &ci in &c {
            acc += pw * ci;
            pw *= root;
        }
        assert!((acc - zj).norm() < 1e-7, "{acc} vs {zj}");
        g = g * 5 % 128;
    }
    let back = enc.decode(&pt).unwrap();
    for (a, b) in back.iter().zip(&z) {
        assert!((a - b).norm() < 1e-7);
    }
}

/// Flooding adds a noise uniform in `[-2^b, 2^b)` per coefficient, also above 64 and 127
/// bits, and refuses one that does not fit.
#[test]
fn flooding_is_uniform_in_its_interval() {
    let lit = CkksParametersLiteral {
        degree: 1024,
        ciphertext_moduli_bits: vec![60, 60, 60],
        special_moduli_bits: vec![60],
        scale_bits: 40,
    };
    let params = CkksParameters::new_insecure(&lit).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let sk = std::sync::Arc::new(crate::rlwe::SecretKey::random(params.context(), &mut rng));
    let dec = Decryptor::new(&params, sk).unwrap();
    let ev = Evaluator::new(&params);
    let q = params.context().q_at(2).clone();
    let mut scratch = Vec::new();
    for bits in [20u32, 100, 150] {
        let pt = Encoder::new(&params)
            .encode_f64(&[0.0], 2, params.default_scale())
            .unwrap();
        let ct = dec.encrypt_symmetric(&pt, &mut rng).unwrap();
        let flooded = ev.flood(&ct, bits, &mut rng).unwrap();
        let coeff = dec.decrypt(&flooded).unwrap().poly.clone().into_coeff(&q);
        let vals: Vec<f64> = (0..1024)
            .map(|i| {
                let res: Vec<u64> = (0..q.len()).map(|l| coeff.limb(l)[i]).collect();
                q.to_f64_centered(&res, &mut scratch) / (bits as f64).exp2()
            })
            .collect();
        let max = vals.iter().fold(0f64, |a, v| a.max(v.abs()));
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        // Uniform on [-1, 1): the largest of 1024 is above 0.99 but not above 1 (plus the
        // encryption noise), the mean near 0 (standard deviation 0.018).
        assert!(max > 0.99 && max <= 1.0 + 1e-3, "{bits} bits: max {max}");
        assert!(mean.abs() < 0.1, "{bits} bits: mean {mean}");
    }
    assert!(ev
        .flood(
            &dec.encrypt_symmetric(
                &Encoder::new(&params).encode_f64(&[0.0], 2, 1e12).unwrap(),
                &mut rng
            )
            .unwrap(),
            179,
            &mut rng
        )
        .is_err());
}

/// A fingerprint of a serialized ciphertext.
fn fingerprint(bytes: &[u8]) -> u64 {
    crate::rlwe::context::fnv1a(bytes.iter().map(|&b| u64::from(b)))
}

fn small_params() -> std::sync::Arc<CkksParameters> {
    CkksParameters::new_insecure(&CkksParametersLiteral {
        degree: 64,
        ciphertext_moduli_bits: vec![50, 40, 40],
        special_moduli_bits: vec![50],
        scale_bits: 40,
    })
    .unwrap()
}

/// A fresh secret key, and the encryptor and decryptor of it.
fn keys(
    params: &std::sync::Arc<CkksParameters>,
    rng: &mut ChaCha20Rng,
) -> (std::sync::Arc<crate::rlwe::SecretKey>, Encryptor, Decryptor) {
    use crate::rlwe::{PublicKey, SecretKey};
    let sk = std::sync::Arc::new(SecretKey::random(params.context(), rng));
    let pk = PublicKey::new(&sk, rng);
    let e = Encryptor::new(params, pk).unwrap();
    (sk.clone(), e, Decryptor::new(params, sk).unwrap())
}

fn max_error(got: &[f64], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f64::max)
}

/// The encryptions of a fixed seed are those the CKKS encryptors produced before they
/// shared one RLWE encryptor (checked byte for byte when it came in): the wire bytes did not
/// change, and `rerandomize` (now an encryption of zero at the ciphertext's own level)
/// equals the old top-level encryption of zero dropped to that level.
#[test]
fn encryptions_keep_their_known_answers() {
    let params = small_params();
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let (_, e, d) = keys(&params, &mut rng);
    let ev = Evaluator::new(&params);
    let v: Vec<f64> = (0..32).map(|i| i as f64 / 7.0 - 2.0).collect();
    let pk_ct = e.encrypt_f64(&v, &mut rng).unwrap();
    let pt = Encoder::new(&params)
        .encode_f64(&v, params.max_level(), params.default_scale())
        .unwrap();
    let sk_ct = d.encrypt_symmetric(&pt, &mut rng).unwrap();
    let low = ev.drop_to_level(&pk_ct, 1).unwrap();
    let mut same_stream = rng.clone();
    let rerandomized = e.rerandomize(&low, &mut rng).unwrap();
    let fingerprints = [&pk_ct, &sk_ct, &rerandomized].map(|ct| fingerprint(&ct.to_bytes(&params)));
    assert_eq!(
        fingerprints,
        [
            0x00be_dd02_72cc_5309,
            0x9ab9_576c_9e02_d7b7,
            0xab09_e492_dadb_7fd0
        ]
    );
    let zero = Encoder::new(&params)
        .encode_f64(&[], params.max_level(), low.scale())
        .unwrap();
    let zero = e.encrypt(&zero, &mut same_stream).unwrap();
    let by_hand = ev.add(&low, &ev.drop_to_level(&zero, 1).unwrap()).unwrap();
    assert_eq!(rerandomized, by_hand);
    for ct in [&pk_ct, &sk_ct, &rerandomized] {
        assert!(max_error(&d.decrypt_f64(ct).unwrap()[..32], &v) < 1e-6);
    }
}

/// The shared RLWE encryptor and decryptor, called with a CKKS plaintext, give ciphertexts
/// that the CKKS decryptor opens to the encoded values.
#[test]
fn the_shared_encryptor_serves_ckks() {
    use crate::rlwe::encryptor::{Message, RlweDecryptor, RlweEncryptor};
    use crate::rlwe::{PublicKey, SecretKey};
    let params = small_params();
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let ctx = params.context();
    let sk = std::sync::Arc::new(SecretKey::random(ctx, &mut rng));
    let pk = PublicKey::new(&sk, &mut rng);
    let renc = RlweEncryptor::new(ctx, pk).unwrap();
    let rdec = RlweDecryptor::new(ctx, sk.clone()).unwrap();
    let d = Decryptor::new(&params, sk).unwrap();
    let v: Vec<f64> = (0..32).map(|_| rng.random_range(-1.0..1.0)).collect();
    for level in 0..=params.max_level() {
        let pt = Encoder::new(&params)
            .encode_f64(&v, level, params.default_scale())
            .unwrap();
        let wrap = |polys| Ciphertext {
            params_id: params.id(),
            level,
            scale: pt.scale,
            polys,
            seed: None,
        };
        let msg = || Message::Ntt(&pt.poly);
        let pk_ct = wrap(renc.encrypt(level, msg(), &mut rng).unwrap());
        let sk_ct = wrap(rdec.encrypt(level, msg(), &mut rng).unwrap().0);
        let zero = wrap(renc.encrypt(level, Message::Zero, &mut rng).unwrap());
        assert!(max_error(&d.decrypt_f64(&pk_ct).unwrap(), &v) < 1e-6);
        assert!(max_error(&d.decrypt_f64(&sk_ct).unwrap(), &v) < 1e-6);
        assert!(max_error(&d.decrypt_f64(&zero).unwrap(), &[0.0; 32]) < 1e-6);
    }
}

#[test]
fn rerandomize_keeps_the_values_and_changes_c1() {
    let params = small_params();
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let (sk, e, d) = keys(&params, &mut rng);
    let rlk = crate::rlwe::RelinKey::new(&sk, &mut rng);
    let ev = Evaluator::new(&params);
    let a: Vec<f64> = (0..32).map(|_| rng.random_range(-1.0..1.0)).collect();
    let b: Vec<f64> = (0..32).map(|_| rng.random_range(-1.0..1.0)).collect();
    let enc = Encoder::new(&params);
    let pa = enc.encode_f64(&a, params.max_level(), params.default_scale());
    let seeded = d.encrypt_symmetric(&pa.unwrap(), &mut rng).unwrap();
    let y = e.encrypt_f64(&b, &mut rng).unwrap();
    let product = ev.mul(&seeded, &y).unwrap();
    let rescaled = ev
        .rescale(&ev.mul_relin(&seeded, &y, &rlk).unwrap())
        .unwrap();
    for ct in [&seeded, &y, &product, &rescaled] {
        let before = d.decrypt_f64(ct).unwrap();
        let r = e.rerandomize(ct, &mut rng).unwrap();
        assert_eq!(
            (r.level(), r.scale(), r.len()),
            (ct.level(), ct.scale(), ct.len())
        );
        assert!(!r.is_seeded());
        assert_ne!(r.polys[0], ct.polys[0]);
        assert_ne!(r.polys[1], ct.polys[1]);
        assert_eq!(r.polys[2..], ct.polys[2..]);
        assert!(max_error(&d.decrypt_f64(&r).unwrap(), &before) < 1e-6);
    }
    let ab: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
    let r = e.rerandomize(&rescaled, &mut rng).unwrap();
    assert!(max_error(&d.decrypt_f64(&r).unwrap()[..32], &ab) < 1e-6);
}
