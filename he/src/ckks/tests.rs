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
