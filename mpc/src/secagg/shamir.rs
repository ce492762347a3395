//! Shamir secret sharing of 32-byte secrets over `GF(p)`, `p = 2^61 - 1` (a Mersenne prime).
//!
//! Why this field: products fit in `u128` and reduce with a shift and an add, so sharing and
//! Lagrange interpolation are a few nanoseconds per operation, and `p` is far above any
//! evaluation point (`holder id + 1 <= 2^20`). A 32-byte secret is cut into
//! [`CHUNKS`] = 5 little-endian chunks of 7, 7, 7, 7 and 4 bytes (each `< 2^56 < p`),
//! each shared with its own independent random polynomial of degree `t - 1`; any `t - 1`
//! shares are independent of the secret (information-theoretically, per chunk, hence for
//! the whole secret). A share is 5 field elements (40 bytes).

use rand::{CryptoRng, RngCore};
use zeroize::Zeroize;

/// The prime `2^61 - 1`.
pub const P: u64 = (1 << 61) - 1;
/// Field elements per shared 32-byte secret.
pub const CHUNKS: usize = 5;
/// Bytes per chunk (the last chunk has 4).
const CHUNK_BYTES: usize = 7;

/// One holder's share of a 32-byte secret: the polynomials' values at `x`.
pub type ShareValue = [u64; CHUNKS];

fn reduce(x: u128) -> u64 {
    // x < 2^122: fold twice.
    let lo = (x as u64) & P;
    let hi = (x >> 61) as u64;
    let mut r = lo + hi; // < 2^62
    r = (r & P) + (r >> 61);
    if r >= P {
        r - P
    } else {
        r
    }
}

fn add(a: u64, b: u64) -> u64 {
    let r = a + b;
    if r >= P {
        r - P
    } else {
        r
    }
}

fn sub(a: u64, b: u64) -> u64 {
    if a >= b {
        a - b
    } else {
        a + P - b
    }
}

fn mul(a: u64, b: u64) -> u64 {
    reduce(u128::from(a) * u128::from(b))
}

fn inv(a: u64) -> u64 {
    // Fermat: a^(p-2).
    let mut base = a;
    let mut e = P - 2;
    let mut acc = 1u64;
    while e > 0 {
        if e & 1 == 1 {
            acc = mul(acc, base);
        }
        base = mul(base, base);
        e >>= 1;
    }
    acc
}

fn random_element<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> u64 {
    loop {
        let r = rng.next_u64() >> 3;
        if r < P {
            return r;
        }
    }
}

fn chunks_of(secret: &[u8; 32]) -> [u64; CHUNKS] {
    let mut out = [0u64; CHUNKS];
    for (i, c) in secret.chunks(CHUNK_BYTES).enumerate() {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        out[i] = u64::from_le_bytes(b);
        b.zeroize();
    }
    out
}

/// Splits `secret` into shares at the evaluation points `xs` (distinct, nonzero, `< p`):
/// `t` of them reconstruct it, `t - 1` reveal nothing. Returns one share per point.
///
/// # Panics
/// If `t == 0` (the protocol always passes a validated threshold `>= 1`).
pub fn split<R: RngCore + CryptoRng + ?Sized>(
    secret: &[u8; 32],
    t: usize,
    xs: &[u64],
    rng: &mut R,
) -> Vec<ShareValue> {
    assert!(t >= 1, "threshold must be positive");
    let mut shares = vec![[0u64; CHUNKS]; xs.len()];
    let mut coeffs = vec![0u64; t];
    let mut secret_chunks = chunks_of(secret);
    for (c, &s) in secret_chunks.iter().enumerate() {
        coeffs[0] = s;
        for a in coeffs.iter_mut().skip(1) {
            *a = random_element(rng);
        }
        for (share, &x) in shares.iter_mut().zip(xs) {
            // Horner.
            let mut acc = 0u64;
            for &a in coeffs.iter().rev() {
                acc = add(mul(acc, x), a);
            }
            share[c] = acc;
        }
    }
    coeffs.zeroize();
    secret_chunks.zeroize();
    shares
}

/// Reconstructs a secret from shares `(x, value)` by Lagrange interpolation at 0, using all
/// the shares given (pass exactly `t`). `None` if the points are not distinct and nonzero,
/// a value is not a field element, or the result is not a valid 32-byte encoding (which
/// happens with overwhelming probability when shares are inconsistent or too few).
pub fn reconstruct(shares: &[(u64, ShareValue)]) -> Option<[u8; 32]> {
    if shares.is_empty() {
        return None;
    }
    for (i, (x, v)) in shares.iter().enumerate() {
        if *x == 0 || *x >= P || v.iter().any(|&e| e >= P) {
            return None;
        }
        if shares[..i].iter().any(|(y, _)| y == x) {
            return None;
        }
    }
    // Lagrange coefficients at 0: l_i = prod_{j != i} x_j / (x_j - x_i).
    let lambdas: Vec<u64> = shares
        .iter()
        .enumerate()
        .map(|(i, (xi, _))| {
            let mut num = 1u64;
            let mut den = 1u64;
            for (j, (xj, _)) in shares.iter().enumerate() {
                if i != j {
                    num = mul(num, *xj);
                    den = mul(den, sub(*xj, *xi));
                }
            }
            mul(num, inv(den))
        })
        .collect();
    let mut chunks = [0u64; CHUNKS];
    for (c, chunk) in chunks.iter_mut().enumerate() {
        let mut acc = 0u64;
        for ((_, v), &l) in shares.iter().zip(&lambdas) {
            acc = add(acc, mul(v[c], l));
        }
        *chunk = acc;
    }
    let mut out = [0u8; 32];
    let mut ok = true;
    for (c, dst) in out.chunks_mut(CHUNK_BYTES).enumerate() {
        let bits = 8 * dst.len() as u32;
        ok &= chunks[c] >> bits == 0;
        dst.copy_from_slice(&chunks[c].to_le_bytes()[..dst.len()]);
    }
    chunks.zeroize();
    if ok {
        Some(out)
    } else {
        out.zeroize();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn field_arithmetic_matches_u128_reference() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for _ in 0..10_000 {
            let a = random_element(&mut rng);
            let b = random_element(&mut rng);
            let m = P as u128;
            assert_eq!(u128::from(mul(a, b)), (a as u128 * b as u128) % m);
            assert_eq!(u128::from(add(a, b)), (a as u128 + b as u128) % m);
            assert_eq!(u128::from(sub(a, b)), (a as u128 + m - b as u128) % m);
            if a != 0 {
                assert_eq!(mul(a, inv(a)), 1);
            }
        }
        assert_eq!(mul(P - 1, P - 1), 1);
    }

    #[test]
    fn split_and_reconstruct_any_t_subset() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        secret[31] = 0xff;
        let xs: Vec<u64> = (1..=7).collect();
        let shares = split(&secret, 4, &xs, &mut rng);
        for start in 0..4 {
            let pts: Vec<(u64, ShareValue)> =
                (start..start + 4).map(|i| (xs[i], shares[i])).collect();
            assert_eq!(reconstruct(&pts), Some(secret));
        }
        // t - 1 shares interpolate to something else (a valid encoding only by chance).
        let pts: Vec<(u64, ShareValue)> = (0..3).map(|i| (xs[i], shares[i])).collect();
        assert_ne!(reconstruct(&pts), Some(secret));
        // Duplicate points are refused.
        assert_eq!(reconstruct(&[(1, shares[0]), (1, shares[0])]), None);
    }
}
