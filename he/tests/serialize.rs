//! Wire format: round trips, sizes, and a corpus of corrupted inputs that must give errors
//! (never a panic, never a huge allocation).

mod common;

use std::sync::Arc;

use cipherml_he::bfv::*;
use cipherml_he::rlwe::{GaloisKeys, PublicKey, RelinKey, SecretKey};
use cipherml_he::serialize::{ciphertext_size, HEADER_LEN};
use cipherml_he::{DecodeError, Error};
use common::*;
use proptest::prelude::*;

fn decode_err(r: Result<Ciphertext, Error>) -> DecodeError {
    match r {
        Err(Error::Decode(e)) => e,
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[test]
fn round_trips_of_every_object() {
    let mut b = setup(&BfvParametersLiteral::n4096(), false, 11);
    let ctx = b.params.context().clone();
    let x = b.random_slots();
    let ct = b.encrypt(&x);
    let back = Ciphertext::from_bytes(&b.params, &ct.to_bytes(&b.params)).unwrap();
    assert_eq!(back, ct);
    let c3 = b.ev.mul(&ct, &ct).unwrap();
    assert_eq!(
        Ciphertext::from_bytes(&b.params, &c3.to_bytes(&b.params)).unwrap(),
        c3
    );
    let seeded = b
        .decryptor
        .encrypt_symmetric(&b.enc.encode_u64(&x).unwrap(), &mut b.rng)
        .unwrap();
    let sb = seeded.to_bytes(&b.params);
    let back = Ciphertext::from_bytes(&b.params, &sb).unwrap();
    assert_eq!(back, seeded);
    assert_eq!(b.decrypt(&back), x);

    let pt = b.enc.encode_u64(&x).unwrap();
    assert_eq!(
        Plaintext::from_bytes(&b.params, &pt.to_bytes(&b.params)).unwrap(),
        pt
    );
    let pk = PublicKey::new(&b.sk, &mut b.rng);
    assert_eq!(PublicKey::from_bytes(&ctx, &pk.to_bytes(&ctx)).unwrap(), pk);
    let rlk = RelinKey::new(&b.sk, &mut b.rng);
    let rlk2 = RelinKey::from_bytes(&ctx, &rlk.to_bytes(&ctx)).unwrap();
    assert_eq!(rlk2, rlk);
    let gk = b.galois(&[3, 5, 8191]);
    let gk2 = GaloisKeys::from_bytes(&ctx, &gk.to_bytes(&ctx)).unwrap();
    assert_eq!(gk2, gk);
    assert_eq!(gk2.elements().collect::<Vec<_>>(), vec![3, 5, 8191]);
    // A deserialized secret key decrypts.
    let sk2 = Arc::new(SecretKey::from_bytes(&ctx, &b.sk.to_bytes()).unwrap());
    let d2 = Decryptor::new(&b.params, sk2).unwrap();
    assert_eq!(b.enc.decode_u64(&d2.decrypt(&ct).unwrap()).unwrap(), x);
    // Deserialized keys work: relinearize and rotate with them.
    let r = b.ev.rotate_rows(&ct, 1, &gk2).unwrap();
    assert_eq!(b.decrypt(&r)[0], x[1]);
    let m = b.ev.mul_relin(&ct, &ct, &rlk2).unwrap();
    let t = b.params.plaintext_modulus() as u64 as u128;
    assert_eq!(b.decrypt(&m)[5] as u128, x[5] as u128 * x[5] as u128 % t);
    // Parameter literals.
    let lit = BfvParametersLiteral::n8192();
    assert_eq!(
        BfvParametersLiteral::from_wire(&lit.to_wire()).unwrap(),
        lit
    );
}

#[test]
fn sizes_at_n8192() {
    let mut b = setup(&BfvParametersLiteral::n8192(), false, 12);
    let x = b.random_slots();
    let full = b.encrypt(&x).to_bytes(&b.params);
    let seeded = b
        .decryptor
        .encrypt_symmetric(&b.enc.encode_u64(&x).unwrap(), &mut b.rng)
        .unwrap()
        .to_bytes(&b.params);
    // 8192 coefficients x (43 + 43 + 44 + 44) bits per polynomial.
    let poly = 8192 * (43 + 43 + 44 + 44) / 8;
    assert_eq!(full.len(), HEADER_LEN + 3 + 2 * poly);
    assert_eq!(seeded.len(), HEADER_LEN + 3 + poly + 32);
    assert_eq!(full.len(), ciphertext_size(&b.params, 3, 2, false).unwrap());
    assert!(
        full.len() <= 420_000,
        "full ciphertext {} bytes",
        full.len()
    );
    assert!(
        (seeded.len() as f64) <= 0.55 * full.len() as f64,
        "seeded {} vs full {}",
        seeded.len(),
        full.len()
    );
    // Modulus switching to level 0 shrinks a reply to a quarter.
    let ct = b.encrypt(&x);
    let low = b.ev.mod_switch_to_level(&ct, 0).unwrap();
    assert_eq!(
        low.to_bytes(&b.params).len(),
        HEADER_LEN + 3 + 2 * 8192 * 43 / 8
    );
}

#[test]
fn corrupted_inputs_give_errors() {
    let mut b = setup(&small(64, vec![50, 50, 50], vec![50], 17), true, 13);
    let x = b.random_slots();
    let ct = b.encrypt(&x);
    let good = ct.to_bytes(&b.params);
    let p = &b.params;

    // Truncated at every length.
    for len in 0..good.len() {
        let e = decode_err(Ciphertext::from_bytes(p, &good[..len]));
        assert!(
            matches!(e, DecodeError::Truncated { .. }),
            "length {len}: {e:?}"
        );
    }
    // Trailing bytes.
    let mut long = good.clone();
    long.push(0);
    assert_eq!(
        decode_err(Ciphertext::from_bytes(p, &long)),
        DecodeError::TrailingBytes { extra: 1 }
    );
    // Bad magic, version, kind, reserved bytes, parameter id.
    let mut m = good.clone();
    m[0] = b'X';
    assert!(matches!(
        decode_err(Ciphertext::from_bytes(p, &m)),
        DecodeError::BadMagic { .. }
    ));
    let mut m = good.clone();
    m[4] = 99;
    assert_eq!(
        decode_err(Ciphertext::from_bytes(p, &m)),
        DecodeError::UnsupportedVersion {
            found: 99,
            supported: 1
        }
    );
    let mut m = good.clone();
    m[5] = 3;
    assert_eq!(
        decode_err(Ciphertext::from_bytes(p, &m)),
        DecodeError::WrongKind {
            found: 3,
            expected: 2
        }
    );
    let mut m = good.clone();
    m[6] = 1;
    assert!(matches!(
        decode_err(Ciphertext::from_bytes(p, &m)),
        DecodeError::Invalid { .. }
    ));
    let mut m = good.clone();
    m[8] ^= 1;
    assert!(matches!(
        decode_err(Ciphertext::from_bytes(p, &m)),
        DecodeError::WrongParameters { .. }
    ));
    // A ciphertext of other parameters.
    let mut other = setup(&small(64, vec![50, 50], vec![50], 17), true, 14);
    let oc = other.encrypt(&x).to_bytes(&other.params);
    assert!(matches!(
        decode_err(Ciphertext::from_bytes(p, &oc)),
        DecodeError::WrongParameters { .. }
    ));
    // Level and polynomial count out of range, bad flags.
    let mut m = good.clone();
    m[HEADER_LEN] = 200;
    assert_eq!(
        decode_err(Ciphertext::from_bytes(p, &m)),
        DecodeError::TooLarge {
            what: "level",
            value: 200,
            max: 2
        }
    );
    for count in [0u8, 1, 4, 255] {
        let mut m = good.clone();
        m[HEADER_LEN + 1] = count;
        assert!(matches!(
            decode_err(Ciphertext::from_bytes(p, &m)),
            DecodeError::Invalid { .. }
        ));
    }
    let mut m = good.clone();
    m[HEADER_LEN + 2] = 7;
    assert!(matches!(
        decode_err(Ciphertext::from_bytes(p, &m)),
        DecodeError::Invalid { .. }
    ));
    // An out-of-range coefficient: set the first 50-bit field to all ones.
    let mut m = good.clone();
    for byte in &mut m[HEADER_LEN + 3..HEADER_LEN + 3 + 6] {
        *byte = 0xff;
    }
    m[HEADER_LEN + 3 + 6] |= 0x03;
    assert!(matches!(
        decode_err(Ciphertext::from_bytes(p, &m)),
        DecodeError::CoefficientOutOfRange { .. }
    ));
    // A huge Galois key count is refused before any allocation.
    let ctx = b.params.context().clone();
    let gk = b.galois(&[3]);
    let mut gb = gk.to_bytes(&ctx);
    gb[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        GaloisKeys::from_bytes(&ctx, &gb),
        Err(Error::Decode(DecodeError::TooLarge {
            what: "Galois key count",
            ..
        }))
    ));
    let mut gb = gk.to_bytes(&ctx);
    gb[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&2u32.to_le_bytes());
    assert!(matches!(
        GaloisKeys::from_bytes(&ctx, &gb),
        Err(Error::Decode(DecodeError::Truncated { .. }))
    ));
    // An even Galois element.
    let mut gb = gk.to_bytes(&ctx);
    gb[HEADER_LEN + 4] = 4;
    assert!(GaloisKeys::from_bytes(&ctx, &gb).is_err());
    // Keys of the wrong size.
    let rlk = b.rlk.to_bytes(&ctx);
    assert!(RelinKey::from_bytes(&ctx, &rlk[..rlk.len() - 8]).is_err());
    assert!(RelinKey::from_bytes(&ctx, &good).is_err());
    let pk = PublicKey::new(&b.sk, &mut b.rng).to_bytes(&ctx);
    assert!(PublicKey::from_bytes(&ctx, &pk[..pk.len() / 2]).is_err());
    // Oversized parameter literal.
    let mut lit = BfvParametersLiteral::n4096().to_wire();
    lit.extend(std::iter::repeat_n(0xff, 10_000));
    assert!(BfvParametersLiteral::from_wire(&lit).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes and random mutations of a valid ciphertext never panic.
    #[test]
    fn random_and_mutated_inputs_never_panic(
        random in proptest::collection::vec(any::<u8>(), 0..2048),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let b = setup(&small(64, vec![50, 50, 50], vec![50], 17), true, 15);
        let ctx = b.params.context().clone();
        let _ = Ciphertext::from_bytes(&b.params, &random);
        let _ = GaloisKeys::from_bytes(&ctx, &random);
        let _ = RelinKey::from_bytes(&ctx, &random);
        let _ = BfvParametersLiteral::from_wire(&random);
        let mut m = b.rlk.to_bytes(&ctx);
        for (pos, v) in &flips {
            let i = pos % m.len();
            m[i] ^= v | 1;
        }
        prop_assert!(RelinKey::from_bytes(&ctx, &m).map(|k| k != b.rlk).unwrap_or(true));
    }
}

/// The hybrid mode's parameters: N = 8192, t = 2^40.
fn compact_setup(seed: u64) -> Bfv {
    let lit = BfvParametersLiteral {
        plaintext: cipherml_he::bfv::PlaintextModulus::PowerOfTwo { bits: 40 },
        ..BfvParametersLiteral::n8192()
    };
    setup(&lit, false, seed)
}

#[test]
fn compact_ciphertexts_decrypt_exactly_at_the_computed_width() {
    use rand::Rng;
    let mut b = compact_setup(31);
    let n = b.params.degree();
    let t = b.params.plaintext_modulus() as u64;
    let level = b.params.max_level();
    let all: Vec<usize> = (0..n).collect();
    let some = [0usize, 1, 77, n / 2, n - 1];
    // Fresh, and flooded as the hybrid mode does (up to the largest flood that fits).
    for flood in [None, Some(80u32), Some(105), Some(120)] {
        for _ in 0..2 {
            let mut vals: Vec<u64> = (0..n).map(|_| b.rng.random_range(0..t)).collect();
            vals[0] = 0;
            vals[1] = t - 1;
            let pt = b.enc.encode_coeffs_u64(&vals).unwrap();
            let mut ct = b.encryptor.encrypt(&pt, &mut b.rng).unwrap();
            // A fresh public-key encryption has noise far below 2^30.
            let mut noise = 30.0;
            if let Some(f) = flood {
                ct = b.ev.flood(&ct, f, &mut b.rng).unwrap();
                noise = f as f64 + 1.0;
            }
            let bits = Ciphertext::compact_bits(&b.params, level, noise).unwrap();
            // log2 t + log2(N + 1) + 1 (rounding) and a bit of slack at most.
            assert!((54..=55).contains(&bits), "{bits} bits for noise 2^{noise}");
            for keep in [&all[..], &some[..]] {
                let bytes = ct.to_bytes_compact(&b.params, keep, bits, noise).unwrap();
                let back = Ciphertext::from_bytes_compact(&b.params, &bytes, keep).unwrap();
                let got = b.decryptor.decrypt(&back).unwrap();
                for &i in keep {
                    assert_eq!(got.coefficients()[i], vals[i], "coefficient {i}");
                }
            }
            let full = ct.to_bytes(&b.params).len();
            let compact = ct.to_bytes_compact(&b.params, &all, bits, noise).unwrap();
            // 2 x 174 bits per coefficient become 2 x 55.
            assert!(compact.len() * 3 < full, "{} vs {full}", compact.len());
        }
    }
}

#[test]
fn compact_ciphertexts_after_mod_switching_and_plain_products() {
    use rand::Rng;
    let mut b = compact_setup(32);
    let n = b.params.degree();
    let t = b.params.plaintext_modulus() as u64;
    let vals: Vec<u64> = (0..n).map(|_| b.rng.random_range(0..t)).collect();
    let ct = b
        .encryptor
        .encrypt(&b.enc.encode_coeffs_u64(&vals).unwrap(), &mut b.rng)
        .unwrap();
    // One level down: the bound depends on the level's modulus, the width barely.
    let low = b.ev.mod_switch_to_next(&ct).unwrap();
    let level = low.level();
    let bits = Ciphertext::compact_bits(&b.params, level, 60.0).unwrap();
    let keep: Vec<usize> = (0..n).step_by(3).collect();
    let bytes = low.to_bytes_compact(&b.params, &keep, bits, 60.0).unwrap();
    let back = Ciphertext::from_bytes_compact(&b.params, &bytes, &keep).unwrap();
    assert_eq!(back.level(), level);
    let got = b.decryptor.decrypt(&back).unwrap();
    for &i in &keep {
        assert_eq!(got.coefficients()[i], vals[i]);
    }
}

#[test]
fn compact_ciphertexts_refuse_too_few_bits_and_too_much_noise() {
    let mut b = compact_setup(33);
    let n = b.params.degree();
    let level = b.params.max_level();
    let pt = b.enc.encode_coeffs_u64(&[1, 2, 3]).unwrap();
    let ct = b.encryptor.encrypt(&pt, &mut b.rng).unwrap();
    let bits = Ciphertext::compact_bits(&b.params, level, 100.0).unwrap();
    let keep = [0usize, 1, 2];
    match ct.to_bytes_compact(&b.params, &keep, bits - 1, 100.0) {
        Err(Error::NoiseMargin {
            keep_bits,
            needed_bits,
            ..
        }) => {
            assert_eq!(keep_bits, bits - 1);
            assert_eq!(needed_bits, bits);
        }
        other => panic!("expected a noise-margin error, got {other:?}"),
    }
    // Noise too close to Q / (2t): no width fits.
    let log_q = b.params.context().q_at(level).log2_product();
    assert!(matches!(
        Ciphertext::compact_bits(&b.params, level, log_q - 41.0),
        Err(Error::NoiseMargin { .. })
    ));
    assert!(matches!(
        ct.to_bytes_compact(&b.params, &keep, 63, log_q - 41.0),
        Err(Error::NoiseMargin { .. })
    ));
    assert!(matches!(
        ct.to_bytes_compact(&b.params, &keep, bits, f64::NAN),
        Err(Error::NoiseMargin { .. })
    ));
    for bad in [0u32, 64, 200] {
        assert!(ct.to_bytes_compact(&b.params, &keep, bad, 30.0).is_err());
    }
    assert!(ct.to_bytes_compact(&b.params, &[n], bits, 30.0).is_err());
    assert!(matches!(
        Ciphertext::compact_bits(&b.params, level + 1, 30.0),
        Err(Error::LevelOutOfRange { .. })
    ));
}

#[test]
fn compact_ciphertexts_reject_hostile_bytes() {
    let mut b = compact_setup(34);
    let pt = b.enc.encode_coeffs_u64(&[5, 6, 7]).unwrap();
    let ct = b.encryptor.encrypt(&pt, &mut b.rng).unwrap();
    let keep = [0usize, 1, 2];
    let bytes = ct.to_bytes_compact(&b.params, &keep, 55, 30.0).unwrap();
    assert!(Ciphertext::from_bytes_compact(&b.params, &bytes, &keep).is_ok());
    let p = &b.params;
    // Wrong count, truncated, trailing, out-of-range position.
    decode_err(Ciphertext::from_bytes_compact(p, &bytes, &keep[..2]));
    decode_err(Ciphertext::from_bytes_compact(
        p,
        &bytes[..bytes.len() - 1],
        &keep,
    ));
    let mut long = bytes.clone();
    long.push(0);
    decode_err(Ciphertext::from_bytes_compact(p, &long, &keep));
    decode_err(Ciphertext::from_bytes_compact(p, &bytes, &[0, 1, 1 << 20]));
    // Level, width and count fields.
    for (offset, value) in [(HEADER_LEN, 9u8), (HEADER_LEN + 1, 0), (HEADER_LEN + 1, 64)] {
        let mut bad = bytes.clone();
        bad[offset] = value;
        decode_err(Ciphertext::from_bytes_compact(p, &bad, &keep));
    }
    // A width that does not match the length.
    let mut bad = bytes.clone();
    bad[HEADER_LEN + 1] = 56;
    decode_err(Ciphertext::from_bytes_compact(p, &bad, &keep));
    // A huge count is refused before any allocation.
    let mut bad = bytes.clone();
    bad[HEADER_LEN + 2..HEADER_LEN + 6].copy_from_slice(&u32::MAX.to_le_bytes());
    decode_err(Ciphertext::from_bytes_compact(p, &bad, &keep));
    // Nonzero padding bits of the kept coefficients (3 x 55 bits: 21 bytes, 3 padding bits).
    let mut bad = bytes.clone();
    bad[HEADER_LEN + 6 + 20] |= 0x80;
    decode_err(Ciphertext::from_bytes_compact(p, &bad, &keep));
    // Wrong kind: a full ciphertext is not a compact one.
    decode_err(Ciphertext::from_bytes_compact(p, &ct.to_bytes(p), &keep));
}

/// A windowed ciphertext (a client's input sent at the coefficients a product reads)
/// round-trips to the ciphertext with its first polynomial zero outside the window, has
/// the exact size `window_ciphertext_size` states, and hostile bytes give errors: another
/// window, truncated or trailing bytes, a coefficient out of range, a level other than the
/// top, another kind; an unseeded ciphertext is refused at encoding.
#[test]
fn windowed_ciphertexts_round_trip_and_reject_hostile_bytes() {
    use cipherml_he::serialize::window_ciphertext_size;
    // The served inference ring's default: Q in four 41-bit primes.
    let lit = BfvParametersLiteral {
        plaintext: cipherml_he::bfv::PlaintextModulus::PowerOfTwo { bits: 40 },
        ciphertext_moduli_bits: vec![41; 4],
        special_moduli_bits: vec![20],
        ..BfvParametersLiteral::n8192()
    };
    let mut b = setup(&lit, false, 35);
    let p = &b.params;
    let n = p.degree();
    let x: Vec<u64> = (0..n as u64).map(|i| i * 3 % 1000).collect();
    let pt = b.enc.encode_coeffs_u64(&x).unwrap();
    let ct = b.decryptor.encrypt_symmetric(&pt, &mut b.rng).unwrap();
    // A window that wraps: 100 coefficients before 0 and 400 from 0.
    let w = CoeffWindow::hull(n, -100, 399);
    let bytes = ct.to_bytes_window(p, w).unwrap();
    assert_eq!(bytes.len(), window_ciphertext_size(p, w));
    // 4 primes of 41 bits, 500 coefficients each, plus the seed: far below a full one.
    assert_eq!(
        bytes.len(),
        HEADER_LEN + 9 + 4 * (500 * 41usize).div_ceil(8) + 32
    );
    let back = Ciphertext::from_bytes_window(p, &bytes, w).unwrap();
    assert_eq!(back.to_bytes_window(p, w).unwrap(), bytes);
    // Written whole, the decoded ciphertext's first polynomial (first prime: N values of
    // 41 bits after the header) is the original's inside the window and zero outside.
    let full = CoeffWindow::full(n);
    let coeffs = |c: &Ciphertext| -> Vec<u64> {
        let v = c.to_bytes_window(p, full).unwrap();
        let body = &v[HEADER_LEN + 9..];
        (0..n)
            .map(|i| {
                (0..41).fold(0u64, |acc, k| {
                    let bit = i * 41 + k;
                    acc | (u64::from(body[bit / 8] >> (bit % 8) & 1) << k)
                })
            })
            .collect()
    };
    let (orig, got) = (coeffs(&ct), coeffs(&back));
    for i in 0..n {
        let want = if w.contains(i) { orig[i] } else { 0 };
        assert_eq!(got[i], want, "coefficient {i}");
    }
    assert!(orig.iter().filter(|&&c| c != 0).count() > n / 2);
    let whole = Ciphertext::from_bytes_window(p, &ct.to_bytes_window(p, full).unwrap(), full);
    assert_eq!(whole.unwrap(), ct);
    // Hostile bytes.
    decode_err(Ciphertext::from_bytes_window(
        p,
        &bytes,
        CoeffWindow::hull(n, -99, 399),
    ));
    decode_err(Ciphertext::from_bytes_window(
        p,
        &bytes,
        CoeffWindow::hull(n, -100, 398),
    ));
    decode_err(Ciphertext::from_bytes_window(
        p,
        &bytes[..bytes.len() - 1],
        w,
    ));
    let mut long = bytes.clone();
    long.push(0);
    decode_err(Ciphertext::from_bytes_window(p, &long, w));
    let mut bad = bytes.clone();
    bad[HEADER_LEN] = 0;
    decode_err(Ciphertext::from_bytes_window(p, &bad, w));
    // A huge length field is refused before any allocation.
    let mut bad = bytes.clone();
    bad[HEADER_LEN + 5..HEADER_LEN + 9].copy_from_slice(&u32::MAX.to_le_bytes());
    decode_err(Ciphertext::from_bytes_window(p, &bad, w));
    // The first coefficient set to all ones (2^41 - 1, above the prime).
    let mut bad = bytes.clone();
    for byte in &mut bad[HEADER_LEN + 9..HEADER_LEN + 9 + 5] {
        *byte = 0xFF;
    }
    bad[HEADER_LEN + 9 + 5] |= 0x01;
    decode_err(Ciphertext::from_bytes_window(p, &bad, w));
    decode_err(Ciphertext::from_bytes_window(p, &ct.to_bytes(p), w));
    let public = b.encryptor.encrypt(&pt, &mut b.rng).unwrap();
    assert!(matches!(
        public.to_bytes_window(p, w),
        Err(Error::CiphertextSize { found: 0, .. })
    ));
}
