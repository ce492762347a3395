//! The HE decoders a server runs on uploaded keys and ciphertexts, on arbitrary bytes
//! against the parameters of a hosted CKKS model: an object or an error, never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use cipherml::he::ckks::{Ciphertext, CkksParameters, CkksParametersLiteral};
use cipherml::he::rlwe::{GaloisKeys, RelinKey};
use libfuzzer_sys::fuzz_target;

fn params() -> &'static Arc<CkksParameters> {
    static P: OnceLock<Arc<CkksParameters>> = OnceLock::new();
    P.get_or_init(|| {
        CkksParameters::new(&CkksParametersLiteral {
            degree: 8192,
            ciphertext_moduli_bits: vec![50, 36, 36, 36],
            special_moduli_bits: vec![50],
            scale_bits: 36,
        })
        .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let p = params();
    let _ = Ciphertext::from_bytes(p, data);
    let _ = RelinKey::from_bytes(p.context(), data);
    let _ = GaloisKeys::from_bytes(p.context(), data);
});
