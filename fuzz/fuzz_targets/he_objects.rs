//! The HE decoders a server runs on uploaded keys and ciphertexts: an object or an error,
//! never a panic. Inputs are a valid object's header followed by fuzzed bytes, and valid
//! objects with fuzzed bytes XORed in, so that the fuzzer gets past the header checks.
//! (Small parameters, opted into explicitly: the decoders' logic does not depend on N.)
#![no_main]

use std::sync::{Arc, OnceLock};

use cipherml::he::ckks::{Ciphertext, CkksParameters, CkksParametersLiteral, Decryptor, Encoder};
use cipherml::he::rlwe::{GaloisKeys, PublicKey, RelinKey, SecretKey};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;

struct Samples {
    params: Arc<CkksParameters>,
    objects: Vec<Vec<u8>>,
}

fn samples() -> &'static Samples {
    static S: OnceLock<Samples> = OnceLock::new();
    S.get_or_init(|| {
        let params = CkksParameters::new_insecure(&CkksParametersLiteral {
            degree: 1024,
            ciphertext_moduli_bits: vec![40, 30],
            special_moduli_bits: vec![40],
            scale_bits: 30,
        })
        .unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
        let ctx = params.context();
        let pt = Encoder::new(&params)
            .encode_f64(&[0.5; 4], params.max_level(), params.default_scale())
            .unwrap();
        let ct = Decryptor::new(&params, sk.clone())
            .unwrap()
            .encrypt_symmetric(&pt, &mut rng)
            .unwrap();
        let objects = vec![
            ct.to_bytes(&params),
            RelinKey::new(&sk, &mut rng).to_bytes(ctx),
            GaloisKeys::new(&sk, &[3, 5], &mut rng).unwrap().to_bytes(ctx),
            PublicKey::new(&sk, &mut rng).to_bytes(ctx),
        ];
        Samples { params, objects }
    })
}

fn decode_all(p: &Arc<CkksParameters>, bytes: &[u8]) {
    let _ = Ciphertext::from_bytes(p, bytes);
    let _ = RelinKey::from_bytes(p.context(), bytes);
    let _ = GaloisKeys::from_bytes(p.context(), bytes);
    let _ = PublicKey::from_bytes(p.context(), bytes);
}

fuzz_target!(|data: &[u8]| {
    let s = samples();
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let base = &s.objects[sel as usize % s.objects.len()];
    // A valid header, then fuzzed bytes.
    let mut a = base[..16].to_vec();
    a.extend_from_slice(rest);
    decode_all(&s.params, &a);
    // A valid object with fuzzed bytes XORed in, and possibly truncated.
    let mut b = base.clone();
    for (i, &x) in rest.iter().enumerate() {
        let j = (i.wrapping_mul(7919) + sel as usize) % b.len();
        b[j] ^= x;
    }
    if sel & 0x80 != 0 && !rest.is_empty() {
        b.truncate(rest[0] as usize * b.len() / 256);
    }
    decode_all(&s.params, &b);
});
