//! The protocols that cross representations, below the engine ([`crate::tensor`]) and
//! used by it: secret shares <-> BFV (the client encrypts its share, the server computes
//! under HE, masks with a fresh uniform polynomial, re-randomizes with the client's public
//! key and floods the noise, the client decrypts its new share), the flooding's size from
//! public bounds, and the session's public-key exchange.
//!
//! Shares are in `Z_2^l` with `l = log2 t` of BFV (coefficient encoding, `t = 2^l`), so a
//! decrypted coefficient reduced mod `2^l` is a share with no wrap correction.
//!
//! May import: `cipherml_he`, `cipherml_mpc`, [`crate::Error`]; nothing else of this crate.

use std::sync::Arc;

use cipherml_he::bfv::{
    BfvParameters, Ciphertext, CoeffWindow, Decryptor, Encoder, Encryptor, Evaluator,
};
use cipherml_he::rlwe::{PublicKey, SecretKey};
use cipherml_mpc::net::Channel;
use cipherml_mpc::party::Party;
use cipherml_mpc::ring::Ring;
use rand::{CryptoRng, RngCore};

use crate::Error;

/// `ceil(log2(coefficients))`: the bits a flooding must add so that a per-coefficient
/// statistical distance of `2^-(flood_bits + this)` sums to `2^-flood_bits` over all of them.
pub fn union_bits(coefficients: u128) -> u32 {
    coefficients.max(1).next_power_of_two().trailing_zeros()
}

/// `log2` of the flooding of a reply whose computed noise is at most `2^noise_log2`:
/// `flood_bits` (statistical bits, union bound over the session included) above the noise
/// bound, the re-randomizing encryption of zero included (`|u e + e1 s + e0| <= (2N + 1)
/// 21`: ternary `u` and `s`, centered-binomial errors bounded by 21).
pub fn flood_log2(n: usize, noise_log2: f64, flood_bits: u32) -> u32 {
    let rerand_noise = ((2 * n + 1) as f64 * 21.0).log2();
    (noise_log2.max(rerand_noise) + 1.0).ceil() as u32 + flood_bits
}

/// Client side of one linear layer under HE: encrypts its share (one plaintext per input
/// ciphertext, sent only at `window`: the coefficients the read outputs depend on),
/// receives the masked results, and returns its share of the outputs at `positions`
/// (`(output ciphertext, coefficient)`).
pub fn bfv_linear_client<C: Channel, R: RngCore + CryptoRng>(
    params: &Arc<BfvParameters>,
    ring: Ring,
    p: &mut Party<C, R>,
    sk: &Arc<SecretKey>,
    (pts, window): (&[cipherml_he::bfv::Plaintext], CoeffWindow),
    positions: &[(usize, usize)],
) -> Result<Vec<u64>, Error> {
    send_encrypted(params, p, sk, pts, window)?;
    let dec = Decryptor::new(params, sk.clone())?;
    let blocks = positions.iter().map(|(b, _)| b + 1).max().unwrap_or(0);
    let mut coeffs = Vec::with_capacity(blocks);
    for b in 0..blocks {
        let keep: Vec<usize> = positions
            .iter()
            .filter(|(bb, _)| *bb == b)
            .map(|(_, i)| *i)
            .collect();
        let max = cipherml_he::serialize::compact_ciphertext_max_size(params, keep.len());
        let msg = p.channel().recv_limited(max)?;
        let ct = Ciphertext::from_bytes_compact(params, &msg, &keep)?;
        coeffs.push(dec.decrypt(&ct)?.coefficients().to_vec());
    }
    Ok(positions
        .iter()
        .map(|&(b, i)| coeffs[b][i] & ring.mask())
        .collect())
}

/// Encrypts each of `pts` under `sk` (symmetric, seeded: the uniform half as its seed)
/// and sends the first polynomial at `window` only (the whole ring:
/// [`CoeffWindow::full`]); the other party reads them with [`receive_ciphertexts`] and
/// the same window.
pub fn send_encrypted<C: Channel, R: RngCore + CryptoRng>(
    params: &Arc<BfvParameters>,
    p: &mut Party<C, R>,
    sk: &Arc<SecretKey>,
    pts: &[cipherml_he::bfv::Plaintext],
    window: CoeffWindow,
) -> Result<(), Error> {
    let dec = Decryptor::new(params, sk.clone())?;
    for pt in pts {
        let ct = dec.encrypt_symmetric(pt, p.rng())?;
        p.channel().send(&ct.to_bytes_window(params, window)?)?;
    }
    p.channel().flush()?;
    Ok(())
}

/// Server side of one linear layer under HE: receives `inputs` ciphertexts (sent at
/// `window`, zero elsewhere), computes `apply`, subtracts a fresh uniform mask polynomial from each output, adds a fresh
/// encryption of zero under the client's public key (`rerand`), floods the noise
/// (`noise_log2 + flood_bits`), sends only the output coefficients of `c0` with `c1`, and
/// returns its share `y_s + R` of the outputs at `positions`.
#[allow(clippy::too_many_arguments)]
pub fn bfv_linear_server<C: Channel, R: RngCore + CryptoRng>(
    params: &Arc<BfvParameters>,
    ring: Ring,
    flood_bits: u32,
    p: &mut Party<C, R>,
    rerand: &Encryptor,
    (inputs, window): (usize, CoeffWindow),
    positions: &[(usize, usize)],
    noise_log2: f64,
    y_s: Vec<u64>,
    apply: impl Fn(&Evaluator, &[Ciphertext]) -> cipherml_he::Result<Vec<Ciphertext>>,
) -> Result<Vec<u64>, Error> {
    let cts = receive_ciphertexts(params, p, inputs, window)?;
    let out = apply(&Evaluator::new(params), &cts)?;
    bfv_reply(
        params, ring, flood_bits, p, rerand, &out, positions, noise_log2, y_s,
    )
}

/// Receives `count` fresh seeded ciphertexts of the client sent at `window` (see
/// [`send_encrypted`]), each read with the exact size of that window before it is decoded.
pub fn receive_ciphertexts<C: Channel, R: RngCore + CryptoRng>(
    params: &Arc<BfvParameters>,
    p: &mut Party<C, R>,
    count: usize,
    window: CoeffWindow,
) -> Result<Vec<Ciphertext>, Error> {
    let max = cipherml_he::serialize::window_ciphertext_size(params, window);
    let mut cts = Vec::with_capacity(count);
    for _ in 0..count {
        let msg = p.channel().recv_limited(max)?;
        cts.push(Ciphertext::from_bytes_window(params, &msg, window)?);
    }
    Ok(cts)
}

/// The reply half of [`bfv_linear_server`], for outputs `out` computed on ciphertexts of
/// the client (received now or earlier): masks, re-randomizes, floods and sends each, and
/// returns the server's share `y_s + R` of the outputs at `positions`.
#[allow(clippy::too_many_arguments)]
pub fn bfv_reply<C: Channel, R: RngCore + CryptoRng>(
    params: &Arc<BfvParameters>,
    ring: Ring,
    flood_bits: u32,
    p: &mut Party<C, R>,
    rerand: &Encryptor,
    out: &[Ciphertext],
    positions: &[(usize, usize)],
    noise_log2: f64,
    mut y_s: Vec<u64>,
) -> Result<Vec<u64>, Error> {
    let encoder = Encoder::new(params);
    let mask = params.plaintext_mask().ok_or(Error::Invalid {
        what: "link parameters",
        detail: "the plaintext modulus is not a power of two".into(),
    })?;
    let n = params.degree();
    let flood = flood_log2(n, noise_log2, flood_bits);
    for (b, ct) in out.iter().enumerate() {
        let r: Vec<u64> = (0..n).map(|_| p.rng().next_u64() & mask).collect();
        // Masked by r; a fresh public-key encryption of zero makes c1 uniform (RLWE):
        // without it c1 is a function of the weights and of the client's own (known)
        // uniform polynomials, from which the client could solve for the weights. Flooding
        // then hides c0's noise. After flooding, |noise| <= 2^noise_log2 + 2^flood <=
        // 2^(flood + 1): the reply is switched to the fewest bits per coefficient that keep
        // decryption exact. Only the output coefficients of c0 are sent (the rest would
        // only leak masked garbage and cost bytes), and every coefficient rounded to
        // `bits` bits: a deterministic function of the flooded ciphertext, so it reveals
        // nothing more. All in one pass (`masked_reply_compact`).
        let bits = Ciphertext::compact_bits_rerandomized(params, ct.level(), flood as f64 + 1.0)?;
        let keep: Vec<usize> = positions
            .iter()
            .filter(|(bb, _)| *bb == b)
            .map(|(_, i)| *i)
            .collect();
        let reply = rerand.masked_reply_compact(
            ct,
            &encoder.encode_coeffs_u64(&r)?,
            flood,
            &keep,
            (bits, flood as f64 + 1.0),
            p.rng(),
        )?;
        p.channel().send(&reply)?;
        for (j, &(bb, i)) in positions.iter().enumerate() {
            if bb == b {
                y_s[j] = ring.add(y_s[j], r[i] & ring.mask());
            }
        }
    }
    p.channel().flush()?;
    Ok(y_s)
}

/// Sends the client's BFV public key (seeded) for `params`.
pub fn send_public_key<C: Channel, R: RngCore + CryptoRng>(
    params: &Arc<BfvParameters>,
    p: &mut Party<C, R>,
    sk: &Arc<SecretKey>,
) -> Result<(), Error> {
    let pk = PublicKey::new(sk, p.rng());
    p.channel().send(&pk.to_bytes(params.context()))?;
    p.channel().flush()?;
    Ok(())
}

/// Receives the client's BFV public key for `params` (decoded against them: untrusted).
pub fn receive_public_key<C: Channel, R: RngCore + CryptoRng>(
    params: &Arc<BfvParameters>,
    p: &mut Party<C, R>,
) -> Result<PublicKey, Error> {
    let size = cipherml_he::serialize::public_key_size(params.context());
    let msg = p.channel().recv_limited(size)?;
    Ok(PublicKey::from_bytes(params.context(), &msg)?)
}
