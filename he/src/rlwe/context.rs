//! The checked RLWE context: the ring degree, the ciphertext modulus chain `Q = q_0...q_L`,
//! the special primes `P` of hybrid key switching, and the per-level constants.

use std::ops::Range;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::math::primes::ntt_primes;
use crate::math::{BaseConverter, Modulus, Prime, RnsBasis};

/// Smallest ring degree accepted (tests only; tfhe-ntt needs at least 16).
pub const MIN_DEGREE: usize = 16;
/// Largest ring degree accepted.
pub const MAX_DEGREE: usize = 32768;

/// Largest `log2(QP)` for 128-bit security with a ternary secret and sigma 3.2, from the
/// HomomorphicEncryption.org standard; `None` below N = 1024 (never secure).
pub fn max_log_qp_128(n: usize) -> Option<u32> {
    match n {
        1024 => Some(27),
        2048 => Some(54),
        4096 => Some(109),
        8192 => Some(218),
        16384 => Some(438),
        32768 => Some(881),
        _ => None,
    }
}

/// Stable 64-bit FNV-1a hash, used for parameter ids.
pub(crate) fn fnv1a(words: impl IntoIterator<Item = u64>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in words {
        for b in w.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Constants of one level `l` (ciphertexts modulo `q_0 ... q_l`).
#[derive(Debug)]
pub(crate) struct LevelContext {
    /// `q_0 .. q_l`.
    pub q: RnsBasis,
    /// `q_0 .. q_l, p_0 .. p_{a-1}`.
    pub qp: RnsBasis,
    /// Digits of the key-switching decomposition: prime ranges of `Q_l` and their mod-up.
    pub digits: Vec<(Range<usize>, BaseConverter)>,
    /// Mod-down conversion `P -> Q_l`.
    pub p_to_q: BaseConverter,
    /// `P^-1 mod q_i` with Shoup constants.
    pub p_inv: Vec<(u64, u64)>,
    /// `q_l^-1 mod q_i` for `i < l` (rescaling, modulus switching), Shoup form.
    pub q_last_inv: Vec<(u64, u64)>,
}

/// The checked, immutable RLWE context shared (in an `Arc`) by keys, ciphertexts and
/// evaluators. `Send + Sync`.
#[derive(Debug)]
pub struct RlweContext {
    n: usize,
    q: RnsBasis,
    p: RnsBasis,
    qp: RnsBasis,
    levels: Vec<LevelContext>,
    id: u64,
    secure: bool,
}

impl RlweContext {
    /// Generates distinct NTT-friendly primes of the requested sizes and builds the context.
    /// `exclude` lists primes that must not be used (e.g. the plaintext modulus). With
    /// `allow_insecure = false`, parameters beyond the 128-bit bound are refused.
    pub fn new(
        n: usize,
        q_bits: &[u32],
        p_bits: &[u32],
        exclude: &[u64],
        allow_insecure: bool,
    ) -> Result<Arc<Self>> {
        if !n.is_power_of_two() || !(MIN_DEGREE..=MAX_DEGREE).contains(&n) {
            return Err(Error::InvalidDegree {
                n,
                min: MIN_DEGREE,
                max: MAX_DEGREE,
            });
        }
        if q_bits.is_empty() || p_bits.is_empty() {
            return Err(Error::InvalidParameters {
                reason: format!(
                    "need at least one ciphertext prime and one special prime (got {} and {})",
                    q_bits.len(),
                    p_bits.len()
                ),
            });
        }
        if q_bits.len() + p_bits.len() > 64 {
            return Err(Error::InvalidParameters {
                reason: format!("too many primes: {}", q_bits.len() + p_bits.len()),
            });
        }
        let log_qp: u32 = q_bits.iter().chain(p_bits).sum();
        let max = max_log_qp_128(n);
        let secure = max.is_some_and(|m| log_qp <= m);
        if !secure && !allow_insecure {
            return Err(Error::InsecureParameters {
                n,
                log_qp,
                max_log_qp: max.unwrap_or(0),
            });
        }
        let mut used: Vec<u64> = exclude.to_vec();
        let mut gen = |bits: u32| -> Result<Arc<Prime>> {
            if !(20..=61).contains(&bits) {
                return Err(Error::InvalidModulusBits {
                    bits,
                    min: 20,
                    max: 61,
                });
            }
            let p = ntt_primes(bits, n, 1, &used).ok_or(Error::NotEnoughPrimes { bits, n })?[0];
            used.push(p);
            Prime::new(p, n).ok_or(Error::NotEnoughPrimes { bits, n })
        };
        let q_primes = q_bits.iter().map(|&b| gen(b)).collect::<Result<Vec<_>>>()?;
        let p_primes = p_bits.iter().map(|&b| gen(b)).collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Self::from_primes(q_primes, p_primes, secure)))
    }

    fn from_primes(q_primes: Vec<Arc<Prime>>, p_primes: Vec<Arc<Prime>>, secure: bool) -> Self {
        let n = q_primes[0].ntt.degree();
        let q = RnsBasis::new(q_primes);
        let p = RnsBasis::new(p_primes);
        let qp = q.concat(&p);
        let groups = Self::digit_groups(&q, &p);
        let levels = (0..q.len())
            .map(|l| {
                let ql = q.sub_basis(0..l + 1);
                let qpl = ql.concat(&p);
                let digits = groups
                    .iter()
                    .filter(|g| g.start <= l)
                    .map(|g| {
                        let r = g.start..g.end.min(l + 1);
                        let conv = BaseConverter::new(&ql.sub_basis(r.clone()), &qpl);
                        (r, conv)
                    })
                    .collect();
                let p_to_q = BaseConverter::new(&p, &ql);
                let p_inv = ql
                    .primes()
                    .iter()
                    .map(|pr| {
                        let m = pr.modulus;
                        let inv = m.inv(p.product_mod(&m)).expect("distinct primes");
                        (inv, m.shoup(inv))
                    })
                    .collect();
                let q_last_inv = (0..l)
                    .map(|i| {
                        let m = ql.modulus(i);
                        let inv = m.inv(m.reduce(ql.modulus(l).value())).expect("distinct");
                        (inv, m.shoup(inv))
                    })
                    .collect();
                LevelContext {
                    q: ql,
                    qp: qpl,
                    digits,
                    p_to_q,
                    p_inv,
                    q_last_inv,
                }
            })
            .collect();
        let id = fnv1a(
            std::iter::once(n as u64)
                .chain(q.primes().iter().map(|p| p.modulus.value()))
                .chain(std::iter::once(0))
                .chain(p.primes().iter().map(|p| p.modulus.value())),
        );
        Self {
            n,
            q,
            p,
            qp,
            levels,
            id,
            secure,
        }
    }

    /// The digits of the key-switching decomposition: consecutive ciphertext primes, greedily
    /// grouped while their product stays within about `P` (at most 2 bits above), so the
    /// key-switching noise stays small while the number of digits (and of NTTs) is minimal.
    fn digit_groups(q: &RnsBasis, p: &RnsBasis) -> Vec<Range<usize>> {
        let budget = p.log2_product() + 2.0;
        let mut groups = Vec::new();
        let mut start = 0;
        let mut bits = 0.0;
        for i in 0..q.len() {
            let b = (q.modulus(i).value() as f64).log2();
            if i > start && bits + b > budget {
                groups.push(start..i);
                start = i;
                bits = 0.0;
            }
            bits += b;
        }
        groups.push(start..q.len());
        groups
    }

    /// Number of digits of the key-switching decomposition at the top level.
    pub fn num_digits(&self) -> usize {
        self.levels[self.max_level()].digits.len()
    }

    /// Ring degree `N`.
    #[inline]
    pub fn degree(&self) -> usize {
        self.n
    }

    /// The full ciphertext modulus chain.
    pub fn q(&self) -> &RnsBasis {
        &self.q
    }

    /// The special primes.
    pub fn p(&self) -> &RnsBasis {
        &self.p
    }

    /// `Q` then `P`.
    pub fn qp(&self) -> &RnsBasis {
        &self.qp
    }

    /// Highest level (`number of ciphertext primes - 1`).
    pub fn max_level(&self) -> usize {
        self.q.len() - 1
    }

    /// The ciphertext basis at `level`.
    pub fn q_at(&self, level: usize) -> &RnsBasis {
        &self.levels[level].q
    }

    /// Whether the parameters meet 128-bit security.
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// Id of the ring parameters (degree and primes).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The ciphertext primes' values.
    pub fn q_values(&self) -> Vec<u64> {
        self.q.primes().iter().map(|p| p.modulus.value()).collect()
    }

    /// The special primes' values.
    pub fn p_values(&self) -> Vec<u64> {
        self.p.primes().iter().map(|p| p.modulus.value()).collect()
    }

    pub(crate) fn level(&self, level: usize) -> &LevelContext {
        &self.levels[level]
    }

    /// Index in the full `QP` basis of limb `i` of the `Q_l P` basis.
    #[inline]
    pub(crate) fn qp_limb_index(&self, level: usize, i: usize) -> usize {
        if i <= level {
            i
        } else {
            i - (level + 1) + self.q.len()
        }
    }

    /// `P mod m`.
    pub(crate) fn p_mod(&self, m: &Modulus) -> u64 {
        self.p.product_mod(m)
    }

    /// Checks `level <= max_level`.
    pub fn check_level(&self, level: usize) -> Result<()> {
        if level > self.max_level() {
            Err(Error::LevelOutOfRange {
                level,
                max: self.max_level(),
            })
        } else {
            Ok(())
        }
    }
}
