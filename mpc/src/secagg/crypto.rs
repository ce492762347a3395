//! The primitives of secure aggregation: X25519 key agreement, HKDF-SHA256 key derivation,
//! AES-256-GCM share encryption and ChaCha20 mask expansion.
//!
//! - Keys: X25519 (`curve25519-dalek`'s Montgomery ladder on clamped 32-byte scalars). An
//!   all-zero shared secret (a low-order public key) is refused.
//! - KDF: HKDF-SHA256 with the round seed as salt and `label || min(u,v) || max(u,v)` as
//!   info, so both ends of a pair derive the same key, different pairs, rounds and uses
//!   (share encryption vs. pairwise mask) get independent keys.
//! - AEAD: AES-256-GCM; the 12-byte nonce is `from || to || stage` (unique per key: each
//!   key is used once in each direction per round) and the associated data binds
//!   `(round seed, from, to, stage)`, so the server can neither read, alter, nor re-route
//!   a share.
//! - PRG: ChaCha20 (`rand_chacha`) seeded with the 32-byte seed; each entry is one
//!   `next_u64()` reduced mod `2^b` by masking (exactly uniform since `2^b | 2^64`).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use hkdf::Hkdf;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::ClientId;

/// Label of the share-encryption key derivation.
const LABEL_SHARE_KEY: &[u8] = b"cipherml/secagg/v1/share-encryption-key";
/// Label of the pairwise mask seed derivation.
const LABEL_PAIR_MASK: &[u8] = b"cipherml/secagg/v1/pairwise-mask-seed";
/// Associated-data prefix of an encrypted share.
const LABEL_SHARE_AD: &[u8] = b"cipherml/secagg/v1/share";
/// The stage byte bound into share encryption (ShareKeys).
pub(crate) const SHARE_STAGE: u8 = 1;

/// The X25519 public key of a 32-byte secret (clamped on use).
pub(crate) fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    MontgomeryPoint::mul_base_clamped(*secret).to_bytes()
}

/// X25519 shared secret; `None` if it is all zero (low-order peer key).
pub(crate) fn agree(secret: &[u8; 32], peer_public: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
    let shared = Zeroizing::new(
        MontgomeryPoint(*peer_public)
            .mul_clamped(*secret)
            .to_bytes(),
    );
    if shared.iter().all(|&b| b == 0) {
        None
    } else {
        Some(shared)
    }
}

fn kdf(
    shared: &[u8; 32],
    round_seed: &[u8; 32],
    label: &[u8],
    u: ClientId,
    v: ClientId,
) -> Zeroizing<[u8; 32]> {
    let (lo, hi) = (u.min(v), u.max(v));
    let hk = Hkdf::<Sha256>::new(Some(round_seed), shared);
    let mut out = Zeroizing::new([0u8; 32]);
    hk.expand_multi_info(&[label, &lo.to_le_bytes(), &hi.to_le_bytes()], &mut *out)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// The seed of the pairwise mask between `u` and `v` from their X25519 shared secret.
pub(crate) fn pairwise_seed(
    shared: &[u8; 32],
    round_seed: &[u8; 32],
    u: ClientId,
    v: ClientId,
) -> Zeroizing<[u8; 32]> {
    kdf(shared, round_seed, LABEL_PAIR_MASK, u, v)
}

fn share_cipher_parts(round_seed: &[u8; 32], from: ClientId, to: ClientId) -> ([u8; 12], Vec<u8>) {
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&from.to_le_bytes());
    nonce[4..8].copy_from_slice(&to.to_le_bytes());
    nonce[8] = SHARE_STAGE;
    let mut ad = Vec::with_capacity(LABEL_SHARE_AD.len() + 32 + 9);
    ad.extend_from_slice(LABEL_SHARE_AD);
    ad.extend_from_slice(round_seed);
    ad.extend_from_slice(&from.to_le_bytes());
    ad.extend_from_slice(&to.to_le_bytes());
    ad.push(SHARE_STAGE);
    (nonce, ad)
}

/// Encrypts `plaintext` from `from` to `to` under the key derived from their shared secret.
pub(crate) fn encrypt_share(
    shared: &[u8; 32],
    round_seed: &[u8; 32],
    from: ClientId,
    to: ClientId,
    plaintext: &[u8],
) -> Vec<u8> {
    let key = kdf(shared, round_seed, LABEL_SHARE_KEY, from, to);
    let cipher = Aes256Gcm::new_from_slice(&key[..]).expect("32-byte key");
    let (nonce, aad) = share_cipher_parts(round_seed, from, to);
    cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .expect("AES-GCM encryption of a short message cannot fail")
}

/// Decrypts a share sent by `from` to `to`; `None` if it does not authenticate.
pub(crate) fn decrypt_share(
    shared: &[u8; 32],
    round_seed: &[u8; 32],
    from: ClientId,
    to: ClientId,
    ciphertext: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let key = kdf(shared, round_seed, LABEL_SHARE_KEY, from, to);
    let cipher = Aes256Gcm::new_from_slice(&key[..]).expect("32-byte key");
    let (nonce, aad) = share_cipher_parts(round_seed, from, to);
    cipher
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

/// Adds (`negate = false`) or subtracts the mask `PRG(seed)` to `acc`, entry-wise mod
/// `2^b` (`modulus_mask = 2^b - 1`).
pub fn apply_mask(acc: &mut [u64], seed: &[u8; 32], negate: bool, modulus_mask: u64) {
    let mut rng = ChaCha20Rng::from_seed(*seed);
    if negate {
        for a in acc.iter_mut() {
            *a = a.wrapping_sub(rng.next_u64()) & modulus_mask;
        }
    } else {
        for a in acc.iter_mut() {
            *a = a.wrapping_add(rng.next_u64()) & modulus_mask;
        }
    }
}

/// The mask `PRG(seed)`: `len` entries uniform mod `2^b` (`modulus_mask = 2^b - 1`). This
/// is what a client adds for its self-mask seed `b_u`.
pub fn expand_mask(seed: &[u8; 32], len: usize, modulus_mask: u64) -> Vec<u64> {
    let mut v = vec![0u64; len];
    apply_mask(&mut v, seed, false, modulus_mask);
    v
}
