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
    /// `t = 2^bits`: coefficient encoding only (the Cheetah approach).
    PowerOfTwo {
        /// `log2 t`.
        bits: u32,
    },
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
    t: Modulus,
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
        let t_val = match literal.plaintext {
            PlaintextModulus::Batching { bits } => {
                if !(2..=60).contains(&bits) {
                    return Err(Error::InvalidModulusBits {
                        bits,
                        min: 2,
                        max: 60,
                    });
                }
                ntt_primes(bits.max(10), n, 1, &[])
                    .filter(|_| bits >= 10)
                    .ok_or(Error::NotEnoughPrimes { bits, n })?[0]
            }
            PlaintextModulus::Prime(t) => {
                if !is_prime(t) || t >= 1 << 60 {
                    return Err(Error::InvalidPlaintextModulus {
                        t,
                        reason: "must be a prime below 2^60",
                    });
                }
                t
            }
            PlaintextModulus::PowerOfTwo { bits } => {
                if !(1..=60).contains(&bits) {
                    return Err(Error::InvalidModulusBits {
                        bits,
                        min: 1,
                        max: 60,
                    });
                }
                1u64 << bits
            }
        };
        let ctx = RlweContext::new(
            n,
            &literal.ciphertext_moduli_bits,
            &literal.special_moduli_bits,
            &[t_val],
            allow_insecure,
        )?;
        let t = Modulus::new(t_val).ok_or(Error::InvalidPlaintextModulus {
            t: t_val,
            reason: "must be at least 2",
        })?;
        let q = ctx.q();
        if t.bits() as f64 + 10.0 > q.log2_product() {
            return Err(Error::InvalidPlaintextModulus {
                t: t_val,
                reason: "too large for the ciphertext modulus",
            });
        }
        // Batching: t prime and t = 1 mod 2N.
        let t_ntt = if is_prime(t_val) && t_val % (2 * n as u64) == 1 {
            NttOperator::new(t, n)
        } else {
            None
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
        let r_bits_needed = q.log2_product() + (n as f64).log2() + (t_val as f64).log2() + 4.0;
        let r_count = (r_bits_needed / 59.0).ceil() as usize;
        let mut used: Vec<u64> = ctx.q_values();
        used.extend(ctx.p_values());
        used.push(t_val);
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
        let id = fnv1a([ctx.id(), t_val, 0x0042_4656]);
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

    fn level_constants(ctx: &RlweContext, l: usize, t: &Modulus, r: &RnsBasis) -> BfvLevel {
        let q = ctx.q_at(l);
        let k = q.len();
        let tv = t.value();
        let q_mod_t = q.product_mod(t);
        let delta = q
            .primes()
            .iter()
            .map(|p| {
                let m = p.modulus;
                // floor(Q/t) = (Q - [Q]_t) / t, and Q = 0 mod q_i.
                let tinv = m.inv(m.reduce(tv)).expect("t invertible mod q_i");
                let d = m.mul(m.neg(m.reduce(q_mod_t)), tinv);
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
                let num = tv as u128 * q_tilde[i] as u128;
                let omega = ((num / qi) % tv as u128) as u64;
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
                m.mul(m.mul(m.reduce(tv), rq), theta)
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
                m.mul(m.reduce(tv), m.inv(q.product_mod(&m)).expect("coprime"))
            })
            .collect();
        BfvLevel {
            delta,
            dec,
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

    /// The plaintext modulus `t`.
    pub fn plaintext_modulus(&self) -> u64 {
        self.t.value()
    }

    pub(crate) fn t(&self) -> &Modulus {
        &self.t
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

/// `(Q/q_i) mod q_i` from its inverse.
fn q_tilde_inv(q_tilde: u64, m: &Modulus) -> u64 {
    m.inv(q_tilde).expect("invertible")
}
