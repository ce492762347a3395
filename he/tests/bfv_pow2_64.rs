//! BFV with a wide power-of-two plaintext modulus (`t = 2^64`, and `2^61 ..= 2^63`):
//! coefficient encoding, encryption, plaintext products, flooding and the compact reply,
//! checked against products computed independently with wrapping `u64` arithmetic (exact
//! modulo `2^64`) and with `num-bigint`.

use std::sync::Arc;

use cipherml_he::bfv::*;
use cipherml_he::rlwe::{PublicKey, RelinKey, SecretKey};
use cipherml_he::serialize::{ciphertext_size, compact_ciphertext_max_size, compact_max_bits};
use cipherml_he::tensor::{CoeffConv2d, CoeffMatVec};
use cipherml_he::Error;
use ndarray::{Array2, Array3, Array4};
use num_bigint::BigInt;
use num_traits::{One, Zero};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The root crate's preset for a 64-bit ring: N = 8192, Q of 50 + 50 + 49 + 49 bits, P of 20.
fn preset(bits: u32) -> BfvParametersLiteral {
    BfvParametersLiteral {
        degree: 8192,
        ciphertext_moduli_bits: vec![50, 50, 49, 49],
        special_moduli_bits: vec![20],
        plaintext: PlaintextModulus::PowerOfTwo { bits },
    }
}

struct Keys {
    params: Arc<BfvParameters>,
    sk: Arc<SecretKey>,
    pk: PublicKey,
    enc: Encoder,
    encryptor: Encryptor,
    dec: Decryptor,
    ev: Evaluator,
    rng: ChaCha20Rng,
}

fn keys(params: Arc<BfvParameters>, seed: u64) -> Keys {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let pk = PublicKey::new(&sk, &mut rng);
    Keys {
        enc: Encoder::new(&params),
        encryptor: Encryptor::new(&params, pk.clone()).unwrap(),
        dec: Decryptor::new(&params, sk.clone()).unwrap(),
        ev: Evaluator::new(&params),
        params,
        sk,
        pk,
        rng,
    }
}

/// `log2` of a ciphertext's noise from its budget: `noise_budget = log2(Q) - log2 |t e| -
/// 1`, up to rounding.
fn measured_noise_log2(k: &Keys, ct: &Ciphertext) -> f64 {
    let budget = k.dec.noise_budget(ct).unwrap() as f64;
    k.params.log2_q() - budget - 1.0 - k.params.plaintext_bits() as f64
}

/// Seeded symmetric encryptions of `pts`.
fn encrypt_all(k: &mut Keys, pts: &[Plaintext]) -> Vec<Ciphertext> {
    pts.iter()
        .map(|p| k.dec.encrypt_symmetric(p, &mut k.rng).unwrap())
        .collect()
}

/// The measured noise of each of `cts`, every one checked to be at most `2^bound`.
fn noise_within(k: &Keys, cts: &[Ciphertext], bound: f64) -> Vec<f64> {
    cts.iter()
        .map(|ct| {
            let measured = measured_noise_log2(k, ct);
            assert!(
                measured <= bound,
                "measured 2^{measured:.1} above 2^{bound:.1}"
            );
            measured
        })
        .collect()
}

fn random_u64s(rng: &mut ChaCha20Rng, n: usize) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).map(|_| rng.next_u64()).collect();
    // The edges: 0, 2^63 - 1, 2^63 (centered as -2^63), 2^64 - 1 (-1).
    v[..4].copy_from_slice(&[0, (1 << 63) - 1, 1 << 63, u64::MAX]);
    v
}

/// `a * b` in `Z_2^64[X] / (X^N + 1)`, with wrapping `u64` arithmetic.
fn negacyclic_wrapping(a: &[u64], b: &[u64]) -> Vec<u64> {
    let n = a.len();
    let mut out = vec![0u64; n];
    for (i, &x) in a.iter().enumerate() {
        if x == 0 {
            continue;
        }
        for (j, &y) in b.iter().enumerate() {
            let p = x.wrapping_mul(y);
            let k = i + j;
            if k < n {
                out[k] = out[k].wrapping_add(p);
            } else {
                out[k - n] = out[k - n].wrapping_sub(p);
            }
        }
    }
    out
}

/// The same product with big integers (the plaintext lifted centered), reduced mod `2^64`.
fn negacyclic_bigint(a: &[u64], b: &[u64]) -> Vec<u64> {
    let n = a.len();
    let two64: BigInt = BigInt::one() << 64;
    let lift = |v: u64| BigInt::from(v as i64);
    let mut out = vec![BigInt::zero(); n];
    for i in 0..n {
        for j in 0..n {
            let p = BigInt::from(a[i]) * lift(b[j]);
            if i + j < n {
                out[i + j] += p;
            } else {
                out[i + j - n] -= p;
            }
        }
    }
    out.into_iter()
        .map(|v| {
            let r = ((v % &two64) + &two64) % &two64;
            u64::try_from(r).unwrap()
        })
        .collect()
}

#[test]
fn the_preset_accepts_t_2_64_and_describes_it() {
    let params = BfvParameters::new(&preset(64)).unwrap();
    assert!(params.is_secure());
    assert_eq!(params.plaintext_modulus(), 1u128 << 64);
    assert_eq!(params.plaintext_bits(), 64);
    assert_eq!(params.plaintext_mask(), Some(u64::MAX));
    assert!(!params.supports_batching());
    let p40 = BfvParameters::new(&preset(40)).unwrap();
    assert_eq!(p40.plaintext_modulus(), 1u128 << 40);
    assert_eq!(p40.plaintext_bits(), 40);
    assert_eq!(p40.plaintext_mask(), Some((1 << 40) - 1));
    assert_ne!(params.id(), p40.id());
    let prime = BfvParameters::new(&BfvParametersLiteral::n8192()).unwrap();
    assert_eq!(prime.plaintext_modulus(), 1032193);
    assert_eq!(prime.plaintext_bits(), 20);
    assert_eq!(prime.plaintext_mask(), None);
    // No batching: a typed error naming t.
    let enc = Encoder::new(&params);
    assert!(matches!(
        enc.encode_u64(&[1]),
        Err(Error::BatchingUnavailable { t, .. }) if t == 1u128 << 64
    ));
}

#[test]
fn bits_above_64_are_refused() {
    for bits in [0u32, 65, 100] {
        assert_eq!(
            BfvParameters::new(&preset(bits)).unwrap_err(),
            Error::InvalidModulusBits {
                bits,
                min: 1,
                max: 64
            }
        );
    }
    // 2^64 needs room in Q: a tiny Q is refused with a typed error naming t.
    let tiny = BfvParametersLiteral {
        degree: 64,
        ciphertext_moduli_bits: vec![30, 30],
        special_moduli_bits: vec![30],
        plaintext: PlaintextModulus::PowerOfTwo { bits: 64 },
    };
    assert!(matches!(
        BfvParameters::new_insecure(&tiny),
        Err(Error::InvalidPlaintextModulus { t, .. }) if t == 1u128 << 64
    ));
}

#[test]
fn encryption_round_trips_every_u64() {
    let mut k = keys(BfvParameters::new(&preset(64)).unwrap(), 1);
    let n = k.params.degree();
    let m = random_u64s(&mut k.rng, n);
    let pt = k.enc.encode_coeffs_u64(&m).unwrap();
    assert_eq!(pt.coefficients(), m);
    let sym = k.dec.encrypt_symmetric(&pt, &mut k.rng).unwrap();
    let pk = k.encryptor.encrypt(&pt, &mut k.rng).unwrap();
    let rr = k.encryptor.rerandomize(&pk, &mut k.rng).unwrap();
    for ct in [&sym, &pk, &rr] {
        assert_eq!(k.dec.decrypt(ct).unwrap().coefficients(), m);
        // Fresh noise is tiny next to Q / t = 2^134.
        assert!(k.dec.noise_budget(ct).unwrap() > 100);
    }
    // Signed values: negative v is v + 2^64; decoding gives back the i64.
    let signed: Vec<i64> = (0..n)
        .map(|i| match i {
            0 => i64::MIN,
            1 => i64::MAX,
            2 => -1,
            _ => k.rng.next_u64() as i64,
        })
        .collect();
    let pt = k.enc.encode_coeffs_i64(&signed).unwrap();
    let want: Vec<u64> = signed.iter().map(|&v| v as u64).collect();
    assert_eq!(pt.coefficients(), want);
    assert_eq!(k.enc.decode_coeffs_i64(&pt).unwrap(), signed);
    let ct = k.dec.encrypt_symmetric(&pt, &mut k.rng).unwrap();
    assert_eq!(
        k.enc
            .decode_coeffs_i64(&k.dec.decrypt(&ct).unwrap())
            .unwrap(),
        signed
    );
    // Plaintext serialization (64 bits a coefficient).
    let back = Plaintext::from_bytes(&k.params, &pt.to_bytes(&k.params)).unwrap();
    assert_eq!(back, pt);
}

#[test]
fn additions_and_plain_products_are_exact_mod_2_64() {
    let mut k = keys(BfvParameters::new(&preset(64)).unwrap(), 2);
    let n = k.params.degree();
    let x = random_u64s(&mut k.rng, n);
    let y = random_u64s(&mut k.rng, n);
    let ct = k
        .encryptor
        .encrypt(&k.enc.encode_coeffs_u64(&x).unwrap(), &mut k.rng)
        .unwrap();
    let cy = k
        .dec
        .encrypt_symmetric(&k.enc.encode_coeffs_u64(&y).unwrap(), &mut k.rng)
        .unwrap();
    let py = k.enc.encode_coeffs_u64(&y).unwrap();
    let open = |k: &Keys, c: &Ciphertext| k.dec.decrypt(c).unwrap().coefficients().to_vec();
    let sum: Vec<u64> = x.iter().zip(&y).map(|(a, b)| a.wrapping_add(*b)).collect();
    let diff: Vec<u64> = x.iter().zip(&y).map(|(a, b)| a.wrapping_sub(*b)).collect();
    let neg: Vec<u64> = x.iter().map(|a| a.wrapping_neg()).collect();
    assert_eq!(open(&k, &k.ev.add_plain(&ct, &py).unwrap()), sum);
    assert_eq!(open(&k, &k.ev.sub_plain(&ct, &py).unwrap()), diff);
    assert_eq!(open(&k, &k.ev.add(&ct, &cy).unwrap()), sum);
    assert_eq!(open(&k, &k.ev.sub(&ct, &cy).unwrap()), diff);
    assert_eq!(open(&k, &k.ev.neg(&ct).unwrap()), neg);

    // A small signed plaintext, |w| <= 2^20 (every coefficient non-zero).
    let w: Vec<i64> = (0..n)
        .map(|_| k.rng.random_range(-(1i64 << 20)..=1 << 20))
        .collect();
    let pw = k.enc.encode_coeffs_i64(&w).unwrap();
    let want = negacyclic_wrapping(&x, pw.coefficients());
    let prod = k.ev.mul_plain(&ct, &pw).unwrap();
    assert_eq!(open(&k, &prod), want);
    let prepared = k.enc.prepare(&pw, ct.level()).unwrap();
    assert_eq!(k.ev.mul_plain_prepared(&ct, &prepared).unwrap(), prod);
    assert!(k.dec.noise_budget(&prod).unwrap() > 60);

    // A full-width plaintext (coefficients >= 2^63 lifted as negative): the rounding
    // encoding keeps the product exact even at N = 8192.
    let wide = random_u64s(&mut k.rng, n);
    let pw = k.enc.encode_coeffs_u64(&wide).unwrap();
    let prod = k.ev.mul_plain(&ct, &pw).unwrap();
    assert_eq!(open(&k, &prod), negacyclic_wrapping(&x, &wide));
    // mul_scalar: c reduced mod 2^64.
    let s = k.ev.mul_scalar(&ct, -3).unwrap();
    let want: Vec<u64> = x.iter().map(|a| a.wrapping_mul(3).wrapping_neg()).collect();
    assert_eq!(open(&k, &s), want);
}

#[test]
fn full_width_plain_products_match_bigint_at_small_n() {
    let lit = BfvParametersLiteral {
        degree: 64,
        ciphertext_moduli_bits: vec![50, 50, 50],
        special_moduli_bits: vec![50],
        plaintext: PlaintextModulus::PowerOfTwo { bits: 64 },
    };
    let mut k = keys(BfvParameters::new_insecure(&lit).unwrap(), 3);
    let n = k.params.degree();
    for round in 0..8 {
        let x = random_u64s(&mut k.rng, n);
        let w = random_u64s(&mut k.rng, n);
        let pt = k.enc.encode_coeffs_u64(&x).unwrap();
        let ct = if round % 2 == 0 {
            k.dec.encrypt_symmetric(&pt, &mut k.rng).unwrap()
        } else {
            k.encryptor.encrypt(&pt, &mut k.rng).unwrap()
        };
        let pw = k.enc.encode_coeffs_u64(&w).unwrap();
        let want = negacyclic_bigint(&x, &w);
        assert_eq!(want, negacyclic_wrapping(&x, &w));
        let prod = k.ev.mul_plain(&ct, &pw).unwrap();
        assert_eq!(k.dec.decrypt(&prod).unwrap().coefficients(), want);
        // Then a product of products (noise multiplies by ||w||_1 again).
        let small: Vec<i64> = (0..n)
            .map(|_| k.rng.random_range(-1000i64..=1000))
            .collect();
        let ps = k.enc.encode_coeffs_i64(&small).unwrap();
        let prod2 = k.ev.mul_plain(&prod, &ps).unwrap();
        assert_eq!(
            k.dec.decrypt(&prod2).unwrap().coefficients(),
            negacyclic_bigint(&want, ps.coefficients())
        );
    }
}

#[test]
fn flooding_and_the_compact_reply_keep_the_values() {
    let mut k = keys(BfvParameters::new(&preset(64)).unwrap(), 4);
    let n = k.params.degree();
    let level = k.params.max_level();
    let x = random_u64s(&mut k.rng, n);
    let ct = k
        .dec
        .encrypt_symmetric(&k.enc.encode_coeffs_u64(&x).unwrap(), &mut k.rng)
        .unwrap();
    let w: Vec<i64> = (0..n)
        .map(|_| k.rng.random_range(-(1i64 << 20)..=1 << 20))
        .collect();
    let pw = k.enc.encode_coeffs_i64(&w).unwrap();
    let want = negacyclic_wrapping(&x, pw.coefficients());
    let prod = k.ev.mul_plain(&ct, &pw).unwrap();
    let fresh = k.encryptor.rerandomize(&prod, &mut k.rng).unwrap();
    let flooded = k.ev.flood(&fresh, 115, &mut k.rng).unwrap();
    assert_eq!(k.dec.decrypt(&flooded).unwrap().coefficients(), want);
    let budget = k.dec.noise_budget(&flooded).unwrap();
    // log2 Q ~ 198: about 198 - 64 - 116 bits left.
    assert!((10..30).contains(&budget), "budget {budget}");
    // The flood bound: Q / (2t) is about 2^133.
    assert!(k.ev.flood(&fresh, 134, &mut k.rng).is_err());

    // Full serialization.
    let bytes = flooded.to_bytes(&k.params);
    assert_eq!(
        bytes.len(),
        ciphertext_size(&k.params, level, 2, false).unwrap()
    );
    let back = Ciphertext::from_bytes(&k.params, &bytes).unwrap();
    assert_eq!(back, flooded);

    // Compact: about log2 t + log2(N + 1) + 2 bits a coefficient.
    let noise = 116.0;
    let bits = Ciphertext::compact_bits(&k.params, level, noise).unwrap();
    assert!((78..=82).contains(&bits), "{bits} bits");
    assert!(compact_max_bits(&k.params) >= bits);
    let all: Vec<usize> = (0..n).collect();
    let some = [0usize, 1, 2, 3, 77, n / 2, n - 1];
    for keep in [&all[..], &some[..]] {
        let compact = flooded
            .to_bytes_compact(&k.params, keep, bits, noise)
            .unwrap();
        assert!(compact.len() <= compact_ciphertext_max_size(&k.params, keep.len()));
        let back = Ciphertext::from_bytes_compact(&k.params, &compact, keep).unwrap();
        let got = k.dec.decrypt(&back).unwrap();
        for &i in keep {
            assert_eq!(got.coefficients()[i], want[i], "coefficient {i}");
        }
        // A flipped byte inside the packed values changes what decodes.
        let mut bad = compact.clone();
        let last = bad.len() - 1;
        bad[last - 3] ^= 0x10;
        let other = Ciphertext::from_bytes_compact(&k.params, &bad, keep).unwrap();
        assert_ne!(other, back);
    }
    // Wider widths (up to the largest, 128: the fixed point's integer part is a whole
    // 128-bit word) decode to the same values.
    assert_eq!(compact_max_bits(&k.params), 128);
    for wide in [bits + 1, 100, 127, 128] {
        let compact = flooded
            .to_bytes_compact(&k.params, &some, wide, noise)
            .unwrap();
        let back = Ciphertext::from_bytes_compact(&k.params, &compact, &some).unwrap();
        let got = k.dec.decrypt(&back).unwrap();
        for &i in &some {
            assert_eq!(
                got.coefficients()[i],
                want[i],
                "{wide} bits, coefficient {i}"
            );
        }
    }
    assert!(flooded
        .to_bytes_compact(&k.params, &some, 129, noise)
        .is_err());
    // Too few bits is a typed error.
    assert!(matches!(
        flooded.to_bytes_compact(&k.params, &some, bits - 3, noise),
        Err(Error::NoiseMargin { .. })
    ));
    // The one-pass reply (mask, re-randomization, flooding, compact form) decrypts to the
    // product less the mask at the kept coefficients; its c1 differs from the product's
    // (re-randomized) and from another reply's (fresh randomness), and a flooding beyond
    // the room is refused as by `flood`.
    let r = random_u64s(&mut k.rng, n);
    let pr = k.enc.encode_coeffs_u64(&r).unwrap();
    let one_pass = |k: &mut Keys| {
        k.encryptor
            .masked_reply_compact(&prod, &pr, 115, &some, (bits, noise), &mut k.rng)
            .unwrap()
    };
    let (reply, again) = (one_pass(&mut k), one_pass(&mut k));
    let back = Ciphertext::from_bytes_compact(&k.params, &reply, &some).unwrap();
    let got = k.dec.decrypt(&back).unwrap();
    for &i in &some {
        assert_eq!(
            got.coefficients()[i],
            want[i].wrapping_sub(r[i]),
            "coefficient {i}"
        );
    }
    assert_ne!(reply, again);
    let plain = prod
        .to_bytes_compact(&k.params, &some, bits + 40, noise)
        .unwrap();
    let plain = Ciphertext::from_bytes_compact(&k.params, &plain, &some).unwrap();
    assert_ne!(back.len(), 0);
    assert_ne!(back, plain);
    assert!(k
        .encryptor
        .masked_reply_compact(&prod, &pr, 134, &some, (bits, noise), &mut k.rng)
        .is_err());
    // A width above the largest is refused at decoding.
    let mut wrong = flooded
        .to_bytes_compact(&k.params, &some, bits, noise)
        .unwrap();
    let hdr = wrong.len() - packed_len(some.len(), bits) - packed_len(n, bits);
    wrong[hdr - 5] = 129;
    assert!(Ciphertext::from_bytes_compact(&k.params, &wrong, &some).is_err());

    // The public key over the wire still encrypts for the same secret.
    let pk_bytes = k.pk.to_bytes(k.params.context());
    let pk2 = PublicKey::from_bytes(k.params.context(), &pk_bytes).unwrap();
    assert_eq!(pk2, k.pk);
    let e2 = Encryptor::new(&k.params, pk2).unwrap();
    let c2 = e2
        .encrypt(&k.enc.encode_coeffs_u64(&x).unwrap(), &mut k.rng)
        .unwrap();
    assert_eq!(k.dec.decrypt(&c2).unwrap().coefficients(), x);
}

/// Bytes of `n` values of `bits` bits, packed.
fn packed_len(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(8)
}

#[test]
fn coefficient_matvec_and_conv2d_are_exact_mod_2_64() {
    let mut k = keys(BfvParameters::new(&preset(64)).unwrap(), 5);
    let (rows, cols) = (30usize, 64usize);
    let cap = 1u64 << 20;
    let w = Array2::from_shape_fn((rows, cols), |_| {
        k.rng.random_range(-(cap as i64)..=cap as i64)
    });
    let x: Vec<u64> = random_u64s(&mut k.rng, cols);
    let mv = CoeffMatVec::new_capped(&k.enc, w.view(), cap).unwrap();
    let xi: Vec<i64> = x.iter().map(|&v| v as i64).collect();
    let pts = mv.encode_input(&k.enc, &xi).unwrap();
    let cts = encrypt_all(&mut k, &pts);
    let out = mv.apply(&k.ev, &cts).unwrap();
    let noise = mv.noise_bound_log2(k.params.degree(), k.params.plaintext_modulus());
    // (21 + 1/2) 2^20 30 * 64: about 2^35.3, not the 2^97 of a floor(Q/t) encoding.
    assert!((35.0..36.0).contains(&noise), "{noise}");
    // The bound holds.
    noise_within(&k, &out, noise);
    // An input flooded to 2^40: its noise is multiplied by the weights, within the bound.
    let input = 40u32;
    let heavy: Vec<Ciphertext> = cts
        .iter()
        .map(|c| k.ev.flood(c, input, &mut k.rng).unwrap())
        .collect();
    let bound = mv.noise_bound_log2_from(
        k.params.degree(),
        k.params.plaintext_modulus(),
        input as f64 + 0.01,
    );
    for measured in noise_within(&k, &mv.apply(&k.ev, &heavy).unwrap(), bound) {
        assert!(
            measured > bound - 12.0,
            "measured 2^{measured:.1} vs 2^{bound:.1}"
        );
    }
    let flooded: Vec<Ciphertext> = out
        .iter()
        .map(|c| k.ev.flood(c, noise.ceil() as u32 + 20, &mut k.rng).unwrap())
        .collect();
    let pts: Vec<Plaintext> = flooded.iter().map(|c| k.dec.decrypt(c).unwrap()).collect();
    let got = mv.decode_output(&k.enc, &pts).unwrap();
    let want: Vec<u64> = (0..rows)
        .map(|i| {
            (0..cols).fold(0u64, |acc, j| {
                acc.wrapping_add((w[[i, j]] as u64).wrapping_mul(x[j]))
            })
        })
        .collect();
    let got_u: Vec<u64> = got.iter().map(|&v| v as u64).collect();
    assert_eq!(got_u, want);

    // A convolution (C = 2, O = 3, 6 x 6, 3 x 3 kernel, stride 1, padding 1).
    let (c, o, h, kk, stride, pad) = (2usize, 3usize, 6usize, 3usize, 1usize, 1usize);
    let xin = Array3::from_shape_fn((c, h, h), |_| k.rng.next_u64() as i64);
    let wk = Array4::from_shape_fn((o, c, kk, kk), |_| k.rng.random_range(-100i64..=100));
    let conv = CoeffConv2d::new_capped(&k.enc, wk.view(), (h, h), pad, stride, 100).unwrap();
    let pts = conv.encode_input(&k.enc, xin.view()).unwrap();
    let cts = encrypt_all(&mut k, &pts);
    let out = conv.apply(&k.ev, &cts).unwrap();
    let pts: Vec<Plaintext> = out.iter().map(|c| k.dec.decrypt(c).unwrap()).collect();
    let got = conv.decode_output(&k.enc, &pts).unwrap();
    let ho = (h + 2 * pad - kk) / stride + 1;
    for oc in 0..o {
        for y in 0..ho {
            for xx in 0..ho {
                let mut acc = 0u64;
                for ic in 0..c {
                    for p in 0..kk {
                        for q in 0..kk {
                            let iy = (y * stride + p) as i64 - pad as i64;
                            let ix = (xx * stride + q) as i64 - pad as i64;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < h {
                                let v = xin[[ic, iy as usize, ix as usize]] as u64;
                                acc = acc.wrapping_add((wk[[oc, ic, p, q]] as u64).wrapping_mul(v));
                            }
                        }
                    }
                }
                assert_eq!(got[[oc, y, xx]] as u64, acc, "({oc}, {y}, {xx})");
            }
        }
    }
}

#[test]
fn bits_61_to_63_work_the_same_way() {
    for bits in 61..=63u32 {
        let mut k = keys(BfvParameters::new(&preset(bits)).unwrap(), 6 + bits as u64);
        let n = k.params.degree();
        let mask = k.params.plaintext_mask().unwrap();
        assert_eq!(mask, (1u64 << bits) - 1);
        assert_eq!(k.params.plaintext_bits(), bits);
        let x: Vec<u64> = (0..n).map(|_| k.rng.next_u64() & mask).collect();
        // Out of range for t = 2^bits.
        assert!(matches!(
            k.enc.encode_coeffs_u64(&[mask + 1]),
            Err(Error::ValueOutOfRange { modulus, .. }) if modulus == 1u128 << bits
        ));
        let ct = k
            .encryptor
            .encrypt(&k.enc.encode_coeffs_u64(&x).unwrap(), &mut k.rng)
            .unwrap();
        assert_eq!(k.dec.decrypt(&ct).unwrap().coefficients(), x);
        let w: Vec<i64> = (0..n)
            .map(|_| k.rng.random_range(-1000i64..=1000))
            .collect();
        let pw = k.enc.encode_coeffs_i64(&w).unwrap();
        let want: Vec<u64> =
            negacyclic_wrapping(&x, &w.iter().map(|&v| v as u64).collect::<Vec<_>>())
                .into_iter()
                .map(|v| v & mask)
                .collect();
        let prod = k.ev.mul_plain(&ct, &pw).unwrap();
        assert_eq!(k.dec.decrypt(&prod).unwrap().coefficients(), want);
        let sum: Vec<u64> = x
            .iter()
            .zip(&want)
            .map(|(a, b)| a.wrapping_add(*b) & mask)
            .collect();
        let s =
            k.ev.add_plain(&prod, &k.enc.encode_coeffs_u64(&x).unwrap())
                .unwrap();
        assert_eq!(k.dec.decrypt(&s).unwrap().coefficients(), sum);
        // Centered decoding: (-t/2, t/2].
        let dec = k
            .enc
            .decode_coeffs_i64(&k.dec.decrypt(&prod).unwrap())
            .unwrap();
        for (&d, &u) in dec.iter().zip(&want) {
            assert_eq!(d as u64 & mask, u);
            assert!(d > -(1i64 << (bits - 1)) && d <= 1i64 << (bits - 1));
        }
        let flooded = k.ev.flood(&prod, 100, &mut k.rng).unwrap();
        let cb = Ciphertext::compact_bits(&k.params, k.params.max_level(), 101.0).unwrap();
        let keep: Vec<usize> = (0..n).step_by(7).collect();
        let bytes = flooded
            .to_bytes_compact(&k.params, &keep, cb, 101.0)
            .unwrap();
        let back = Ciphertext::from_bytes_compact(&k.params, &bytes, &keep).unwrap();
        let got = k.dec.decrypt(&back).unwrap();
        for &i in &keep {
            assert_eq!(got.coefficients()[i], want[i]);
        }
    }
}

/// Ciphertext-ciphertext products with `t = 2^64` (HPS with `t` in its constants), at a
/// small N, against the exact negacyclic product modulo 2^64.
#[test]
fn ciphertext_products_with_t_2_64() {
    let lit = BfvParametersLiteral {
        degree: 64,
        ciphertext_moduli_bits: vec![55, 55, 55, 55],
        special_moduli_bits: vec![56],
        plaintext: PlaintextModulus::PowerOfTwo { bits: 64 },
    };
    let mut k = keys(BfvParameters::new_insecure(&lit).unwrap(), 9);
    let rlk = RelinKey::new(&k.sk, &mut k.rng);
    let n = k.params.degree();
    for _ in 0..4 {
        let x = random_u64s(&mut k.rng, n);
        let y = random_u64s(&mut k.rng, n);
        let cx = k
            .encryptor
            .encrypt(&k.enc.encode_coeffs_u64(&x).unwrap(), &mut k.rng)
            .unwrap();
        let cy = k
            .encryptor
            .encrypt(&k.enc.encode_coeffs_u64(&y).unwrap(), &mut k.rng)
            .unwrap();
        let want = negacyclic_bigint(&x, &y);
        let prod = k.ev.mul_relin(&cx, &cy, &rlk).unwrap();
        assert_eq!(k.dec.decrypt(&prod).unwrap().coefficients(), want);
        let prod3 = k.ev.mul(&cx, &cy).unwrap();
        assert_eq!(k.dec.decrypt(&prod3).unwrap().coefficients(), want);
    }
}

/// One ciphertext-ciphertext product on the preset (N = 8192, t = 2^64).
#[test]
fn a_ciphertext_product_on_the_preset() {
    let mut k = keys(BfvParameters::new(&preset(64)).unwrap(), 10);
    let rlk = RelinKey::new(&k.sk, &mut k.rng);
    let n = k.params.degree();
    let x = random_u64s(&mut k.rng, n);
    let y = random_u64s(&mut k.rng, n);
    let cx = k
        .encryptor
        .encrypt(&k.enc.encode_coeffs_u64(&x).unwrap(), &mut k.rng)
        .unwrap();
    let cy = k
        .dec
        .encrypt_symmetric(&k.enc.encode_coeffs_u64(&y).unwrap(), &mut k.rng)
        .unwrap();
    let prod = k.ev.mul_relin(&cx, &cy, &rlk).unwrap();
    let budget = k.dec.noise_budget(&prod).unwrap();
    assert!(budget > 0, "budget {budget}");
    assert_eq!(
        k.dec.decrypt(&prod).unwrap().coefficients(),
        negacyclic_wrapping(&x, &y)
    );
}

/// Every power-of-two `t` (here `2^40`, the inference ring) encrypts `round(Q m / t)`: a
/// product by weights of cap `2^16` then has noise within `(21 + 1/2) cap terms` (about
/// `2^31.4`), where `floor(Q / t) m` would carry `(Q mod t)` times `m w`'s carries over
/// `t` (up to `2^69` here); the products decrypt exactly, checked against `i128`
/// arithmetic modulo `2^40`.
#[test]
fn rounded_encoding_at_t_2_40_keeps_products_quiet() {
    let mut k = keys(BfvParameters::new(&preset(40)).unwrap(), 9);
    let t = 1i128 << 40;
    let (rows, cols) = (30usize, 64usize);
    let cap = 1u64 << 16;
    let w = Array2::from_shape_fn((rows, cols), |_| {
        k.rng.random_range(-(cap as i64)..=cap as i64)
    });
    // Inputs over all of [0, 2^40): m w carries over t.
    let x: Vec<i64> = (0..cols).map(|_| (k.rng.next_u64() >> 24) as i64).collect();
    let mv = CoeffMatVec::new_capped(&k.enc, w.view(), cap).unwrap();
    let pts = mv.encode_input(&k.enc, &x).unwrap();
    let cts = encrypt_all(&mut k, &pts);
    let out = mv.apply(&k.ev, &cts).unwrap();
    let noise = mv.noise_bound_log2(k.params.degree(), k.params.plaintext_modulus());
    assert!((31.0..32.0).contains(&noise), "{noise}");
    noise_within(&k, &out, noise);
    let pts: Vec<Plaintext> = out.iter().map(|c| k.dec.decrypt(c).unwrap()).collect();
    let got = mv.decode_output(&k.enc, &pts).unwrap();
    for r in 0..rows {
        let want = (0..cols).fold(0i128, |a, c| a + w[[r, c]] as i128 * x[c] as i128);
        assert_eq!(
            (got[r] as i128).rem_euclid(t),
            want.rem_euclid(t),
            "row {r}"
        );
    }
}

/// A re-randomized reply is rounded to the high-probability bound on `e1 s` (Hoeffding,
/// `2^-80` per coefficient): 4 bits fewer than the worst case at t = 2^40, N = 8192, and
/// every coefficient of several replies decrypts exactly. The rounding error measured on
/// them (from the noise budget, to a bit) sits below that bound (`2^8.9`), and one bit
/// fewer than the bound is refused.
#[test]
fn rerandomized_replies_round_to_the_high_probability_bound() {
    let params = BfvParameters::new(&BfvParametersLiteral {
        ciphertext_moduli_bits: vec![41; 4],
        ..preset(40)
    })
    .unwrap();
    let mut k = keys(params, 41);
    let n = k.params.degree();
    let level = k.params.max_level();
    let flood = 100u32;
    let noise = flood as f64 + 1.0;
    let worst = Ciphertext::compact_bits(&k.params, level, noise).unwrap();
    let bits = Ciphertext::compact_bits_rerandomized(&k.params, level, noise).unwrap();
    assert_eq!((worst, bits), (54, 50));
    let all: Vec<usize> = (0..n).collect();
    let t_mask = (1u64 << 40) - 1;
    let mut largest = f64::MIN;
    for _ in 0..3 {
        let x: Vec<u64> = (0..n).map(|_| k.rng.next_u64() & t_mask).collect();
        let ct = k
            .dec
            .encrypt_symmetric(&k.enc.encode_coeffs_u64(&x).unwrap(), &mut k.rng)
            .unwrap();
        let r: Vec<u64> = (0..n).map(|_| k.rng.next_u64() & t_mask).collect();
        let pr = k.enc.encode_coeffs_u64(&r).unwrap();
        let want: Vec<u64> = x
            .iter()
            .zip(&r)
            .map(|(a, b)| a.wrapping_sub(*b) & t_mask)
            .collect();
        let reply = k
            .encryptor
            .masked_reply_compact(&ct, &pr, flood, &all, (bits, noise), &mut k.rng)
            .unwrap();
        let back = Ciphertext::from_bytes_compact(&k.params, &reply, &all).unwrap();
        assert_eq!(k.dec.decrypt(&back).unwrap().coefficients(), &want[..]);
        // The phase error of the lifted reply is Q (e0 + e1 s) / 2^bits (the flooding,
        // 2^100 of Q = 2^164, is below it).
        largest = largest.max(measured_noise_log2(&k, &back) - k.params.log2_q() + bits as f64);
        // One bit fewer than the bound is refused.
        assert!(k
            .encryptor
            .masked_reply_compact(&ct, &pr, flood, &all, (bits - 1, noise), &mut k.rng)
            .is_err());
    }
    // |e0 + e1 s| over 24,576 coefficients: about 4.3 standard deviations of sqrt(N / 18)
    // (2^6.5); the Hoeffding bound is 2^8.9, the worst case 2^12.
    assert!(
        (5.0..=9.0).contains(&largest),
        "largest rounding error 2^{largest:.1}"
    );
}
