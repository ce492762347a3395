//! BFV parameters: an unchecked, serializable literal and the checked, immutable
//! [`BfvParameters`] (in an `Arc`) with every constant the scheme precomputes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::math::primes::{is_prime, ntt_primes};
use crate::math::{BaseConverter, Modulus, NttOperator, Prime, RnsBasis};
use crate::rlwe::context::fnv1a;
use crate::rlwe::RlweContext;

/// How the plaintext modulus `t` is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlaintextModulus {
    /// The largest prime `t < 2^bits` with `t = 1 mod 2N`: SIMD batching is available.
    Batching {
        /// Bit size of `t`.
        bits: u32,
    },
    /// A given prime (batching is available if `t = 1 mod 2N`).
    Prime(u64),
    /// `t = 2^bits` with `1 <= bits <= 64`: coefficient encoding only (the Cheetah
    /// approach). A message `m` is encrypted as `round(Q m / t)` rather than `floor(Q /
    /// t) m` (SEAL's encoding: a plaintext product by `w` then adds at most `||w||_1 / 2`
    /// to the noise instead of up to `(Q mod t)` times the carries of `m w` over `t`, about
    /// `t N ||w||_inf`: 23 bits less noise, and so flooding, at `t = 2^40`, `N = 8192`).
    /// For `61..=64` (e.g. `t = 2^64`, where a decrypted coefficient is a share in
    /// `Z_2^64`): arithmetic modulo `t` is masking; for `t = 2^64` centered values are in
    /// `[-2^63, 2^63)`;
    /// ciphertext-ciphertext products (HPS) work, with noise growing by about `t N` per
    /// product (one product leaves about 47 bits of budget at N = 8192 and
    /// `log2 Q = 198`); the compact reply takes up to
    /// [`crate::serialize::COMPACT_MAX_BITS_WIDE`] bits a coefficient.
    PowerOfTwo {
        /// `log2 t`.
        bits: u32,
    },
}

/// The plaintext modulus as the scheme computes with it: a word [`Modulus`] (any prime, and
/// powers of two up to `2^60`), or a power of two `2^bits` with `61 <= bits <= 64`, whose
/// arithmetic is masking (wrapping `u64` operations for `2^64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlainModulus {
    /// `t < 2^62` with Barrett constants (every `t` supported before `2^61..=2^64`).
    Word(Modulus),
    /// `t = 2^bits`, `61 <= bits <= 64`.
    Wide {
        /// `log2 t`.
        bits: u32,
    },
}

impl PlainModulus {
    /// `t`.
    #[inline]
    pub(crate) fn value(&self) -> u128 {
        match self {
            Self::Word(m) => m.value() as u128,
            Self::Wide { bits } => 1u128 << bits,
        }
    }

    /// `t - 1` as a mask (wide powers of two only).
    #[inline]
    fn mask(bits: u32) -> u64 {
        u64::MAX >> (64 - bits)
    }

    /// Bit length of `t - 1` (the bits of a residue).
    pub(crate) fn bits(&self) -> u32 {
        128 - (self.value() - 1).leading_zeros()
    }

    /// Whether `t` is a wide power of two (`2^61 ..= 2^64`).
    #[inline]
    pub(crate) fn is_wide(&self) -> bool {
        matches!(self, Self::Wide { .. })
    }

    /// `x mod t`.
    #[inline]
    pub(crate) fn reduce(&self, x: u64) -> u64 {
        match self {
            Self::Word(m) => m.reduce(x),
            Self::Wide { bits } => x & Self::mask(*bits),
        }
    }

    /// `x mod t` for a 128-bit `x`.
    #[inline]
    pub(crate) fn reduce_u128(&self, x: u128) -> u64 {
        match self {
            Self::Word(m) => m.reduce_u128(x),
            Self::Wide { bits } => x as u64 & Self::mask(*bits),
        }
    }

    /// A signed value reduced into `[0, t)`.
    #[inline]
    pub(crate) fn reduce_i64(&self, x: i64) -> u64 {
        match self {
            Self::Word(m) => m.reduce_i64(x),
            Self::Wide { bits } => x as u64 & Self::mask(*bits),
        }
    }

    /// The representative of `x` (in `[0, t)`) in `(-t/2, t/2]`, except for `t = 2^64`:
    /// `[-2^63, 2^63)` (the `i64` of the same bits), since `2^63` is not an `i64`.
    #[inline]
    pub(crate) fn center(&self, x: u64) -> i64 {
        match self {
            Self::Word(m) => m.center(x),
            Self::Wide { bits: 64 } => x as i64,
            Self::Wide { bits } => {
                if x > 1u64 << (bits - 1) {
                    (x as i128 - (1i128 << bits)) as i64
                } else {
                    x as i64
                }
            }
        }
    }

    /// `a + b mod t` for reduced inputs.
    #[inline]
    pub(crate) fn add(&self, a: u64, b: u64) -> u64 {
        match self {
            Self::Word(m) => m.add(a, b),
            Self::Wide { bits } => a.wrapping_add(b) & Self::mask(*bits),
        }
    }

    /// `t mod m`.
    #[inline]
    pub(crate) fn mod_of(&self, m: &Modulus) -> u64 {
        match self {
            Self::Word(t) => m.reduce(t.value()),
            Self::Wide { .. } => m.reduce_u128(self.value()),
        }
    }

    /// `Q mod t` for the product `Q` of `basis`.
    fn product_mod(&self, basis: &RnsBasis) -> u128 {
        match self {
            Self::Word(t) => basis.product_mod(t) as u128,
            Self::Wide { bits } => {
                let p = basis
                    .primes()
                    .iter()
                    .fold(1u64, |acc, p| acc.wrapping_mul(p.modulus.value()));
                (p & Self::mask(*bits)) as u128
            }
        }
    }
}

/// The unchecked BFV parameter literal. Serializable, so it can live in config files.
///
/// ```
/// use cipherml_he::bfv::{BfvParameters, BfvParametersLiteral};
/// let params = BfvParameters::new(&BfvParametersLiteral::n8192()).unwrap();
/// assert_eq!(params.degree(), 8192);
/// assert_eq!(params.plaintext_modulus(), 1032193);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BfvParametersLiteral {
    /// Ring degree `N` (a power of two).
    pub degree: usize,
    /// Bit sizes of the ciphertext primes `q_0 .. q_L`.
    pub ciphertext_moduli_bits: Vec<u32>,
    /// Bit sizes of the special primes `P` of key switching (the digit size of the
    /// decomposition is their number).
    pub special_moduli_bits: Vec<u32>,
    /// The plaintext modulus.
    pub plaintext: PlaintextModulus,
}

impl BfvParametersLiteral {
    /// N = 4096, log2(QP) <= 109, batching with a 17-bit `t`.
    pub fn n4096() -> Self {
        Self {
            degree: 4096,
            ciphertext_moduli_bits: vec![36, 36],
            special_moduli_bits: vec![37],
            plaintext: PlaintextModulus::Batching { bits: 17 },
        }
    }

    /// N = 8192, log2(QP) <= 218 (as SEAL's 43,43,44,44,44), batching with `t = 1032193`.
    pub fn n8192() -> Self {
        Self {
            degree: 8192,
            ciphertext_moduli_bits: vec![43, 43, 44, 44],
            special_moduli_bits: vec![44],
            plaintext: PlaintextModulus::Prime(1032193),
        }
    }

    /// N = 16384, log2(QP) <= 438, batching with a 20-bit `t`.
    pub fn n16384() -> Self {
        Self {
            degree: 16384,
            ciphertext_moduli_bits: vec![49; 8],
            special_moduli_bits: vec![46],
            plaintext: PlaintextModulus::Batching { bits: 20 },
        }
    }

    /// N = 32768, log2(QP) <= 881, batching with a 20-bit `t`.
    pub fn n32768() -> Self {
        Self {
            degree: 32768,
            ciphertext_moduli_bits: vec![50; 16],
            special_moduli_bits: vec![50],
            plaintext: PlaintextModulus::Batching { bits: 20 },
        }
    }

    /// The 128-bit preset for a degree, if there is one.
    pub fn preset(degree: usize) -> Option<Self> {
        match degree {
            4096 => Some(Self::n4096()),
            8192 => Some(Self::n8192()),
            16384 => Some(Self::n16384()),
            32768 => Some(Self::n32768()),
            _ => None,
        }
    }

    /// Encodes the literal (bincode).
    pub fn to_bytes(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("serializing a literal cannot fail")
    }

    /// Decodes a literal, bounded to 4 KiB.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let cfg = bincode::config::standard().with_limit::<4096>();
        let (lit, used): (Self, usize) = bincode::serde::decode_from_slice(bytes, cfg)
            .map_err(|e| crate::error::DecodeError::Parameters(e.to_string()))?;
        if used != bytes.len() {
            return Err(crate::error::DecodeError::TrailingBytes {
                extra: bytes.len() - used,
            }
            .into());
        }
        Ok(lit)
    }
}

/// Per-level constants of BFV.
#[derive(Debug)]
pub(crate) struct BfvLevel {
    /// `floor(Q_l / t) mod q_i`, with Shoup constants.
    pub delta: Vec<(u64, u64)>,
    /// Decryption: `floor(t Q~_i / q_i) mod t` and `frac(t Q~_i / q_i) * 2^64`.
    pub dec: Vec<(u64, u64)>,
    /// `Q_l mod t` (wide `t`: the message is scaled by `round(Q_l m / t)`).
    pub q_mod_t: u128,
    /// `t^-1 mod q_i` with Shoup constants (wide `t`).
    pub t_inv: Vec<(u64, u64)>,
    /// `Q_l` then `R` (the HPS auxiliary basis).
    pub qr: RnsBasis,
    pub q_to_r: BaseConverter,
    pub r_to_q: BaseConverter,
    /// `[j][i] = floor(t R theta_i / q_i) mod r_j`.
    pub omega: Vec<Vec<u64>>,
    /// `frac(t R theta_i / q_i) * 2^64`.
    pub lambda: Vec<u64>,
    /// `t Q_l^-1 mod r_j`.
    pub t_qinv_r: Vec<u64>,
}

/// Checked BFV parameters: the RLWE context, the plaintext modulus and the precomputed
/// constants of every level. Immutable and `Send + Sync`; share it in an `Arc`.
#[derive(Debug)]
pub struct BfvParameters {
    literal: BfvParametersLiteral,
    ctx: Arc<RlweContext>,
    t: PlainModulus,
    t_ntt: Option<NttOperator>,
    /// Logical slot -> NTT slot of the plaintext transform (batching only).
    pub(crate) slot_index: Vec<usize>,
    pub(crate) levels: Vec<BfvLevel>,
    r: RnsBasis,
    id: u64,
}

impl BfvParameters {
    /// Checks the literal and builds the parameters; refuses anything below 128-bit security.
    pub fn new(literal: &BfvParametersLiteral) -> Result<Arc<Self>> {
        Self::build(literal, false)
    }

    /// As [`BfvParameters::new`] but accepts insecure parameters. **For tests only**: it exists
    /// only with the `insecure-params` cargo feature (never enable it in a program that
    /// encrypts real data).
    #[cfg(any(test, feature = "insecure-params"))]
    pub fn new_insecure(literal: &BfvParametersLiteral) -> Result<Arc<Self>> {
        Self::build(literal, true)
    }

    fn build(literal: &BfvParametersLiteral, allow_insecure: bool) -> Result<Arc<Self>> {
        let n = literal.degree;
        let t = match literal.plaintext {
            PlaintextModulus::Batching { bits } => {
                if !(2..=60).contains(&bits) {
                    return Err(Error::InvalidModulusBits {
                        bits,
                        min: 2,
                        max: 60,
                    });
                }
                PlainModulus::Word(word_modulus(
                    ntt_primes(bits.max(10), n, 1, &[])
                        .filter(|_| bits >= 10)
                        .ok_or(Error::NotEnoughPrimes { bits, n })?[0],
                )?)
            }
            PlaintextModulus::Prime(t) => {
                if !is_prime(t) || t >= 1 << 60 {
                    return Err(Error::InvalidPlaintextModulus {
                        t: t as u128,
                        reason: "must be a prime below 2^60",
                    });
                }
                PlainModulus::Word(word_modulus(t)?)
            }
            PlaintextModulus::PowerOfTwo { bits } => match bits {
                1..=60 => PlainModulus::Word(word_modulus(1u64 << bits)?),
                61..=64 => PlainModulus::Wide { bits },
                _ => {
                    return Err(Error::InvalidModulusBits {
                        bits,
                        min: 1,
                        max: 64,
                    })
                }
            },
        };
        // A word `t` is kept away from the primes (a power of two never is one).
        let exclude: Vec<u64> = match t {
            PlainModulus::Word(m) => vec![m.value()],
            PlainModulus::Wide { .. } => Vec::new(),
        };
        let ctx = RlweContext::new(
            n,
            &literal.ciphertext_moduli_bits,
            &literal.special_moduli_bits,
            &exclude,
            allow_insecure,
        )?;
        let q = ctx.q();
        let t_bits_len = match t {
            PlainModulus::Word(m) => m.bits(),
            PlainModulus::Wide { bits } => bits + 1,
        };
        if t_bits_len as f64 + 10.0 > q.log2_product() {
            return Err(Error::InvalidPlaintextModulus {
                t: t.value(),
                reason: "too large for the ciphertext modulus",
            });
        }
        // Batching: t prime and t = 1 mod 2N.
        let t_ntt = match t {
            PlainModulus::Word(m) if is_prime(m.value()) && m.value() % (2 * n as u64) == 1 => {
                NttOperator::new(m, n)
            }
            _ => None,
        };
        let slot_index = match &t_ntt {
            Some(op) => {
                let half = n / 2;
                let two_n = 2 * n;
                let mut idx = vec![0usize; n];
                let mut e = 1usize;
                for col in 0..half {
                    idx[col] = op.exponent_slot(e);
                    idx[half + col] = op.exponent_slot(two_n - e);
                    e = (e * 3) % two_n;
                }
                idx
            }
            None => Vec::new(),
        };
        // HPS auxiliary basis R of 60-bit primes (fewer limbs beat the faster NTT of smaller primes here): R > 4 |round(t x / Q)|, |x| <= N Q^2 / 2.
        let r_bits_needed = q.log2_product() + (n as f64).log2() + (t.value() as f64).log2() + 4.0;
        let r_count = (r_bits_needed / 59.0).ceil() as usize;
        let mut used: Vec<u64> = ctx.q_values();
        used.extend(ctx.p_values());
        used.extend(&exclude);
        let r_primes =
            ntt_primes(60, n, r_count, &used).ok_or(Error::NotEnoughPrimes { bits: 60, n })?;
        let r = RnsBasis::new(
            r_primes
                .iter()
                .map(|&p| Prime::new(p, n).expect("NTT-friendly"))
                .collect(),
        );
        let levels = (0..=ctx.max_level())
            .map(|l| Self::level_constants(&ctx, l, &t, &r))
            .collect();
        let id = match t {
            PlainModulus::Word(m) => fnv1a([ctx.id(), m.value(), 0x0042_4656]),
            // `t = 0` never names a word modulus: the id of a wide `t` is apart.
            PlainModulus::Wide { bits } => fnv1a([ctx.id(), 0, u64::from(bits), 0x0042_4656]),
        };
        Ok(Arc::new(Self {
            literal: literal.clone(),
            ctx,
            t,
            t_ntt,
            slot_index,
            levels,
            r,
            id,
        }))
    }

    fn level_constants(ctx: &RlweContext, l: usize, t: &PlainModulus, r: &RnsBasis) -> BfvLevel {
        let q = ctx.q_at(l);
        let k = q.len();
        let tv = t.value();
        let q_mod_t = t.product_mod(q);
        let t_inv: Vec<(u64, u64)> = q
            .primes()
            .iter()
            .map(|p| {
                let m = p.modulus;
                let tinv = m.inv(t.mod_of(&m)).expect("t invertible mod q_i");
                (tinv, m.shoup(tinv))
            })
            .collect();
        let delta = q
            .primes()
            .iter()
            .zip(&t_inv)
            .map(|(p, &(tinv, _))| {
                let m = p.modulus;
                // floor(Q/t) = (Q - [Q]_t) / t, and Q = 0 mod q_i.
                let d = m.mul(m.neg(m.reduce_u128(q_mod_t)), tinv);
                (d, m.shoup(d))
            })
            .collect();
        let q_tilde: Vec<u64> = (0..k)
            .map(|i| {
                let m = q.modulus(i);
                let mut prod = 1u64;
                for j in 0..k {
                    if j != i {
                        prod = m.mul(prod, m.reduce(q.modulus(j).value()));
                    }
                }
                m.inv(prod).expect("distinct")
            })
            .collect();
        let dec = (0..k)
            .map(|i| {
                let qi = q.modulus(i).value() as u128;
                // t <= 2^64 and Q~_i < 2^62: no overflow.
                let num = tv * q_tilde[i] as u128;
                let omega = ((num / qi) % tv) as u64;
                let frac = (((num % qi) << 64) / qi) as u64;
                (omega, frac)
            })
            .collect();
        let qr = q.concat(r);
        let q_to_r = BaseConverter::new(q, r);
        let r_to_q = BaseConverter::new(r, q);
        // theta_i = ((Q/q_i) R)^-1 mod q_i; X_i mod q_i = t [R]_{q_i} theta_i.
        let x_mod_q: Vec<u64> = (0..k)
            .map(|i| {
                let m = q.modulus(i);
                let rq = r.product_mod(m);
                let theta = m
                    .inv(m.mul(q_tilde_inv(q_tilde[i], m), rq))
                    .expect("invertible");
                m.mul(m.mul(t.mod_of(m), rq), theta)
            })
            .collect();
        let omega = r
            .primes()
            .iter()
            .map(|pj| {
                let m = pj.modulus;
                (0..k)
                    .map(|i| {
                        let qinv = m.inv(m.reduce(q.modulus(i).value())).expect("distinct");
                        m.mul(m.neg(m.reduce(x_mod_q[i])), qinv)
                    })
                    .collect()
            })
            .collect();
        let lambda = (0..k)
            .map(|i| {
                let qi = q.modulus(i).value() as u128;
                (((x_mod_q[i] as u128) << 64) / qi) as u64
            })
            .collect();
        let t_qinv_r = r
            .primes()
            .iter()
            .map(|pj| {
                let m = pj.modulus;
                m.mul(t.mod_of(&m), m.inv(q.product_mod(&m)).expect("coprime"))
            })
            .collect();
        BfvLevel {
            delta,
            dec,
            q_mod_t,
            t_inv,
            qr,
            q_to_r,
            r_to_q,
            omega,
            lambda,
            t_qinv_r,
        }
    }

    /// The literal these parameters were built from.
    pub fn literal(&self) -> &BfvParametersLiteral {
        &self.literal
    }

    /// The RLWE context.
    pub fn context(&self) -> &Arc<RlweContext> {
        &self.ctx
    }

    /// Ring degree `N`.
    pub fn degree(&self) -> usize {
        self.ctx.degree()
    }

    /// The plaintext modulus `t`, exactly (a `u128`: `t` can be `2^64`).
    pub fn plaintext_modulus(&self) -> u128 {
        self.t.value()
    }

    /// Bits of a plaintext coefficient: the bit length of `t - 1` (`bits` for
    /// `t = 2^bits`, e.g. 64 for `t = 2^64`).
    pub fn plaintext_bits(&self) -> u32 {
        self.t.bits()
    }

    /// `t - 1` if `t` is a power of two, else `None`: then `x & mask` is `x mod t` for
    /// any `u64` `x` (`u64::MAX` for `t = 2^64`), e.g. to draw a uniform mask modulo `t`
    /// as `rng.next_u64() & mask`.
    pub fn plaintext_mask(&self) -> Option<u64> {
        let t = self.t.value();
        t.is_power_of_two().then(|| (t - 1) as u64)
    }

    pub(crate) fn t(&self) -> &PlainModulus {
        &self.t
    }

    /// Whether messages are encrypted as `round(Q m / t)` (every power-of-two `t`) rather
    /// than `floor(Q / t) m` (primes): a plaintext added or multiplied in then carries no
    /// `(Q mod t)` term into the noise.
    pub fn rounds_messages(&self) -> bool {
        matches!(self.literal.plaintext, PlaintextModulus::PowerOfTwo { .. })
    }

    pub(crate) fn t_ntt(&self) -> Option<&NttOperator> {
        self.t_ntt.as_ref()
    }

    /// Whether SIMD batching is available (`t` prime and `t = 1 mod 2N`).
    pub fn supports_batching(&self) -> bool {
        self.t_ntt.is_some()
    }

    /// Highest ciphertext level.
    pub fn max_level(&self) -> usize {
        self.ctx.max_level()
    }

    /// The HPS auxiliary basis size.
    pub fn aux_basis_len(&self) -> usize {
        self.r.len()
    }

    /// The id of these parameters (degree, primes and `t`), carried by serialized objects.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the parameters meet 128-bit security.
    pub fn is_secure(&self) -> bool {
        self.ctx.is_secure()
    }

    /// `log2` of the full ciphertext modulus.
    pub fn log2_q(&self) -> f64 {
        self.ctx.q().log2_product()
    }
}

/// A word modulus for `t` (every `t` below `2^61` is one).
fn word_modulus(t: u64) -> Result<Modulus> {
    Modulus::new(t).ok_or(Error::InvalidPlaintextModulus {
        t: t as u128,
        reason: "must be at least 2",
    })
}

/// `(Q/q_i) mod q_i` from its inverse.
fn q_tilde_inv(q_tilde: u64, m: &Modulus) -> u64 {
    m.inv(q_tilde).expect("invertible")
}
