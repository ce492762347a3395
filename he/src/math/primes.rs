//! Primality testing and generation of NTT-friendly primes (`q = 1 mod 2N`).

use super::modulus::Modulus;

/// Deterministic Miller-Rabin for 64-bit integers.
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    for p in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    let mul = |a: u64, b: u64| ((a as u128 * b as u128) % n as u128) as u64;
    let pow = |mut a: u64, mut e: u64| {
        let mut r = 1u64;
        while e > 0 {
            if e & 1 == 1 {
                r = mul(r, a);
            }
            a = mul(a, a);
            e >>= 1;
        }
        r
    };
    let d0 = n - 1;
    let s = d0.trailing_zeros();
    let d = d0 >> s;
    // These bases are sufficient for every n < 2^64.
    'bases: for a in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        let mut x = pow(a, d);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul(x, x);
            if x == n - 1 {
                continue 'bases;
            }
        }
        return false;
    }
    true
}

/// The largest primes `q < 2^bits` with `q = 1 mod 2n`, skipping those in `exclude`,
/// in decreasing order. Returns `None` if fewer than `count` exist above `2^(bits-1)`.
pub fn ntt_primes(bits: u32, n: usize, count: usize, exclude: &[u64]) -> Option<Vec<u64>> {
    if !(10..=super::modulus::MAX_MODULUS_BITS).contains(&bits) {
        return None;
    }
    let step = 2 * n as u64;
    let top = 1u64 << bits;
    let low = 1u64 << (bits - 1);
    // Largest candidate below 2^bits congruent to 1 mod 2n.
    let mut c = top - (top % step) + 1;
    if c >= top {
        c -= step;
    }
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        if c <= low {
            return None;
        }
        if is_prime(c) && !exclude.contains(&c) {
            out.push(c);
        }
        c -= step;
    }
    Some(out)
}

/// A generator of the multiplicative group modulo the prime `p`, or `None` if `p` is not prime.
pub fn primitive_root(p: u64) -> Option<u64> {
    if !is_prime(p) {
        return None;
    }
    let m = Modulus::new(p)?;
    let mut factors = Vec::new();
    let mut r = p - 1;
    let mut f = 2u64;
    while f * f <= r {
        if r.is_multiple_of(f) {
            factors.push(f);
            while r.is_multiple_of(f) {
                r /= f;
            }
        }
        f += 1;
    }
    if r > 1 {
        factors.push(r);
    }
    (2..p).find(|&g| factors.iter().all(|&f| m.pow(g, (p - 1) / f) != 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_primes_match_sieve() {
        let limit = 10_000usize;
        let mut sieve = vec![true; limit];
        sieve[0] = false;
        sieve[1] = false;
        for i in 2..limit {
            if sieve[i] {
                let mut j = i * i;
                while j < limit {
                    sieve[j] = false;
                    j += i;
                }
            }
        }
        for (i, &is_p) in sieve.iter().enumerate() {
            assert_eq!(is_prime(i as u64), is_p, "{i}");
        }
    }

    #[test]
    fn known_large_primes() {
        assert!(is_prime((1u64 << 61) - 1));
        assert!(!is_prime((1u64 << 61) + 1));
        assert!(is_prime(0xffff_ffff_0000_0001));
        // A strong pseudoprime to bases 2..=37 does not exist below 2^64; a Carmichael number:
        assert!(!is_prime(3_215_031_751));
    }

    #[test]
    fn ntt_primes_are_ntt_friendly_and_distinct() {
        let ps = ntt_primes(50, 8192, 5, &[]).unwrap();
        assert_eq!(ps.len(), 5);
        for w in ps.windows(2) {
            assert!(w[0] > w[1]);
        }
        for &p in &ps {
            assert!(is_prime(p));
            assert_eq!(p % 16384, 1);
            assert_eq!(64 - p.leading_zeros(), 50);
        }
        let more = ntt_primes(50, 8192, 2, &ps[..2]).unwrap();
        assert_eq!(more, ps[2..4].to_vec());
        assert!(ntt_primes(12, 8192, 1, &[]).is_none());
    }

    #[test]
    fn primitive_root_generates() {
        let p = 257;
        let g = primitive_root(p).unwrap();
        let m = Modulus::new(p).unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut x = 1;
        for _ in 0..p - 1 {
            seen.insert(x);
            x = m.mul(x, g);
        }
        assert_eq!(seen.len() as u64, p - 1);
    }
}
