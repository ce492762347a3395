//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use cipherml_he::bfv::*;
use cipherml_he::rlwe::{GaloisKeys, PublicKey, RelinKey, SecretKey};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

pub struct Bfv {
    pub params: Arc<BfvParameters>,
    pub sk: Arc<SecretKey>,
    pub enc: Encoder,
    pub encryptor: Encryptor,
    pub decryptor: Decryptor,
    pub ev: Evaluator,
    pub rlk: RelinKey,
    pub rng: ChaCha20Rng,
}

pub fn setup(lit: &BfvParametersLiteral, insecure: bool, seed: u64) -> Bfv {
    let params = if insecure {
        BfvParameters::new_insecure(lit).unwrap()
    } else {
        BfvParameters::new(lit).unwrap()
    };
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let pk = PublicKey::new(&sk, &mut rng);
    let rlk = RelinKey::new(&sk, &mut rng);
    Bfv {
        enc: Encoder::new(&params),
        encryptor: Encryptor::new(&params, pk).unwrap(),
        decryptor: Decryptor::new(&params, sk.clone()).unwrap(),
        ev: Evaluator::new(&params),
        params,
        sk,
        rlk,
        rng,
    }
}

impl Bfv {
    pub fn galois(&mut self, elements: &[usize]) -> GaloisKeys {
        GaloisKeys::new(&self.sk, elements, &mut self.rng).unwrap()
    }

    pub fn random_slots(&mut self) -> Vec<u64> {
        use rand::Rng;
        let t = self.params.plaintext_modulus() as u64;
        (0..self.params.degree())
            .map(|_| self.rng.random_range(0..t))
            .collect()
    }

    pub fn encrypt(&mut self, v: &[u64]) -> Ciphertext {
        let pt = self.enc.encode_u64(v).unwrap();
        self.encryptor.encrypt(&pt, &mut self.rng).unwrap()
    }

    pub fn decrypt(&self, ct: &Ciphertext) -> Vec<u64> {
        self.enc
            .decode_u64(&self.decryptor.decrypt(ct).unwrap())
            .unwrap()
    }
}

/// A small insecure parameter set (tests opt in explicitly).
pub fn small(n: usize, q_bits: Vec<u32>, p_bits: Vec<u32>, t_bits: u32) -> BfvParametersLiteral {
    BfvParametersLiteral {
        degree: n,
        ciphertext_moduli_bits: q_bits,
        special_moduli_bits: p_bits,
        plaintext: PlaintextModulus::Batching { bits: t_bits },
    }
}
