//! Fixed-key AES-128 as a random permutation `pi`, the hashes built on it, and an AES-CTR
//! PRG. AES-NI is used when the CPU has it (run-time detection in the `aes` crate).

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128;

/// A 128-bit block.
pub type Block = u128;

const CHUNK: usize = 64;

fn to_ga(x: Block) -> aes::Block {
    aes::Block::from(x.to_le_bytes())
}

fn from_ga(b: &aes::Block) -> Block {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    u128::from_le_bytes(a)
}

/// Applies AES under `cipher` to every block, in place.
pub(crate) fn encrypt_in_place(cipher: &Aes128, xs: &mut [Block]) {
    let mut buf = [aes::Block::default(); CHUNK];
    for chunk in xs.chunks_mut(CHUNK) {
        let n = chunk.len();
        for (b, &x) in buf.iter_mut().zip(chunk.iter()) {
            *b = to_ga(x);
        }
        cipher.encrypt_blocks(&mut buf[..n]);
        for (x, b) in chunk.iter_mut().zip(buf.iter()) {
            *x = from_ga(b);
        }
    }
}

/// The linear orthomorphism `sigma(L || R) = (L xor R) || L` of Guo et al. (S&P 2020).
#[inline]
pub fn sigma(x: Block) -> Block {
    let l = (x >> 64) as u64;
    let r = x as u64;
    (((l ^ r) as u128) << 64) | l as u128
}

/// Hashes built on AES-128 with a fixed, public key (Guo, Katz, Wang, Yu, S&P 2020).
/// Immutable, `Send + Sync`.
#[derive(Clone)]
pub struct FixedKeyAes {
    pi: Aes128,
}

impl std::fmt::Debug for FixedKeyAes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FixedKeyAes")
    }
}

/// The fixed key of the crate (the first 16 bytes of the binary expansion of pi).
pub const FIXED_KEY: [u8; 16] = [
    0x24, 0x3f, 0x6a, 0x88, 0x85, 0xa3, 0x08, 0xd3, 0x13, 0x19, 0x8a, 0x2e, 0x03, 0x70, 0x73, 0x44,
];

impl Default for FixedKeyAes {
    fn default() -> Self {
        Self::new(FIXED_KEY)
    }
}

impl FixedKeyAes {
    /// The permutation under a given public key.
    pub fn new(key: [u8; 16]) -> Self {
        Self {
            pi: Aes128::new(&key.into()),
        }
    }

    /// `pi(x)` for every block, in place.
    pub fn permute(&self, xs: &mut [Block]) {
        encrypt_in_place(&self.pi, xs);
    }

    /// The circular-correlation-robust hash `H(x) = pi(sigma(x)) xor sigma(x)`, in place
    /// (one AES call per block; enough for semi-honest IKNP).
    pub fn ccr(&self, xs: &mut [Block]) {
        let mut buf = [aes::Block::default(); CHUNK];
        let mut sig = [0u128; CHUNK];
        for chunk in xs.chunks_mut(CHUNK) {
            let n = chunk.len();
            for ((b, s), &x) in buf.iter_mut().zip(sig.iter_mut()).zip(chunk.iter()) {
                *s = sigma(x);
                *b = to_ga(*s);
            }
            self.pi.encrypt_blocks(&mut buf[..n]);
            for ((x, b), &s) in chunk.iter_mut().zip(buf.iter()).zip(sig.iter()) {
                *x = from_ga(b) ^ s;
            }
        }
    }

    /// The tweakable correlation-robust hash `H(x, i) = pi(pi(x) xor i) xor pi(x)`, given
    /// `pi(x)` precomputed (so a key hashed under many tweaks costs one call per tweak).
    pub fn tccr_with_pi(&self, pis: &[Block], tweaks: &[Block], out: &mut [Block]) {
        for ((o, &p), &t) in out.iter_mut().zip(pis).zip(tweaks) {
            *o = p ^ t;
        }
        self.permute(out);
        for (o, &p) in out.iter_mut().zip(pis) {
            *o ^= p;
        }
    }
}

/// AES-128 in counter mode from a 128-bit seed: a PRG whose state is the counter.
#[derive(Clone)]
pub struct AesPrg {
    cipher: Aes128,
    counter: u128,
}

impl std::fmt::Debug for AesPrg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AesPrg")
            .field("counter", &self.counter)
            .finish()
    }
}

impl AesPrg {
    /// The PRG of a seed.
    pub fn new(seed: Block) -> Self {
        Self {
            cipher: Aes128::new(&seed.to_le_bytes().into()),
            counter: 0,
        }
    }

    /// Fills `out` with the next blocks of the stream.
    pub fn fill(&mut self, out: &mut [Block]) {
        for o in out.iter_mut() {
            *o = self.counter;
            self.counter += 1;
        }
        encrypt_in_place(&self.cipher, out);
    }
}

/// Transposes a 128 x 128 bit matrix in place: afterwards bit `j` of row `i` is bit `i`
/// of the former row `j`.
pub fn transpose128(a: &mut [Block; 128]) {
    // Split into four 64 x 64 quadrants of u64 (row i: low half = columns 0..64).
    let mut q = [[0u64; 64]; 4];
    for i in 0..64 {
        q[0][i] = a[i] as u64;
        q[1][i] = (a[i] >> 64) as u64;
        q[2][i] = a[64 + i] as u64;
        q[3][i] = (a[64 + i] >> 64) as u64;
    }
    for m in q.iter_mut() {
        transpose64(m);
    }
    // The transpose swaps the off-diagonal quadrants.
    for i in 0..64 {
        a[i] = q[0][i] as u128 | ((q[2][i] as u128) << 64);
        a[64 + i] = q[1][i] as u128 | ((q[3][i] as u128) << 64);
    }
}

/// Transposes a 64 x 64 bit matrix in place (bit `j` of row `i` <-> bit `i` of row `j`).
#[inline]
fn transpose64(a: &mut [u64; 64]) {
    let mut j = 32usize;
    let mut m: u64 = 0x0000_0000_ffff_ffff;
    while j != 0 {
        let mut k = 0usize;
        while k < 64 {
            let t = ((a[k] >> j) ^ a[k + j]) & m;
            a[k] ^= t << j;
            a[k + j] ^= t;
            k = (k + j + 1) & !j;
        }
        j >>= 1;
        m ^= m << j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_matches_definition() {
        let mut a = [0u128; 128];
        let mut x: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
        for r in a.iter_mut() {
            x = x
                .wrapping_mul(0x2545_f491_4f6c_dd1d_0000_0000_0000_0001)
                .wrapping_add(12345);
            *r = x;
        }
        let orig = a;
        transpose128(&mut a);
        for i in 0..128 {
            for j in 0..128 {
                assert_eq!((a[i] >> j) & 1, (orig[j] >> i) & 1);
            }
        }
    }

    #[test]
    fn ccr_is_deterministic_and_not_identity() {
        let h = FixedKeyAes::default();
        let mut v = vec![0u128, 1, 2, 3];
        h.ccr(&mut v);
        let mut w = vec![0u128, 1, 2, 3];
        h.ccr(&mut w);
        assert_eq!(v, w);
        assert_ne!(v[0], 0);
        assert_ne!(v[1], v[2]);
    }
}
