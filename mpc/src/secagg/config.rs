//! Parameters of a secure-aggregation round: the unchecked literal [`SecAggParams`] and the
//! validated [`SecAggConfig`], with the quantization that maps `f64` updates to integers.

use super::error::{SecAggError, SecAggResult};

/// Largest number of clients a configuration accepts (bounds every allocation).
pub const MAX_CLIENTS: u32 = 1 << 20;
/// Largest vector length a configuration accepts.
pub const MAX_DIM: usize = 1 << 28;
/// Largest bits per quantized entry.
pub const MAX_QUANT_BITS: u32 = 32;
/// Largest declared client weight.
pub const MAX_WEIGHT: u64 = 1 << 32;

/// Deterministic quantization: clip to `[-clip, clip]`, map linearly to the integers
/// `0..=2^bits - 1` (round to nearest). Plain data, thread-safe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantization {
    /// Clipping bound `c > 0`.
    pub clip: f64,
    /// Bits per quantized entry, `1..=32`.
    pub bits: u32,
}

/// The unchecked parameters of a round; [`SecAggConfig::new`] validates them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SecAggParams {
    /// Number of clients; ids are `0..n`.
    pub n: u32,
    /// Share holders per client including itself (odd): each client has `k - 1`
    /// neighbours, `(k-1)/2` on each side of it on the round's ring (everyone when
    /// `k - 1 >= n - 1`).
    pub k: u32,
    /// Shamir threshold: shares of `t` holders reconstruct a secret. Must satisfy
    /// `min(k, n)/2 < t <= min(k, n)`, so that two disjoint groups of holders can never
    /// both reach it.
    pub t: u32,
    /// Length of each client's update vector.
    pub dim: usize,
    /// How updates are quantized.
    pub quantization: Quantization,
    /// `Some(w_max)`: clients submit an integer weight `0..=w_max`, the server learns
    /// `sum w_u q(x_u)` and `sum w_u` (one extra coordinate). `None`: unweighted sum.
    pub max_weight: Option<u64>,
    /// `b`, the masked sums live in `Z_{2^b}`, `b <= 64`; `None` picks the smallest `b`
    /// that cannot overflow.
    pub modulus_bits: Option<u32>,
}

impl SecAggParams {
    /// SecAgg+'s choice: `k = 2 ceil(log2 n) + 1`, `t = min(k, n)/2 + 1` (a majority of the
    /// actual holders), 16-bit quantization of `[-1, 1]`, unweighted, smallest modulus.
    pub fn recommended(n: u32, dim: usize) -> Self {
        let log = if n <= 1 {
            0
        } else {
            32 - (n - 1).leading_zeros()
        };
        let k = 2 * log + 1;
        let holders = k.min(n.max(1));
        SecAggParams {
            n,
            k,
            t: holders / 2 + 1,
            dim,
            quantization: Quantization {
                clip: 1.0,
                bits: 16,
            },
            max_weight: None,
            modulus_bits: None,
        }
    }
}

/// A validated configuration. Immutable, cheap to clone, thread-safe.
#[derive(Debug, Clone, PartialEq)]
pub struct SecAggConfig {
    params: SecAggParams,
    modulus_bits: u32,
}

impl SecAggConfig {
    /// Validates `params`: `1 <= n <= 2^20`, `k` odd, the threshold range, `1 <= dim <= 2^28`,
    /// `clip` finite and positive, `1 <= bits <= 32`, `1 <= max_weight <= 2^32`, and that
    /// `n * (2^bits - 1) * max_weight < 2^b` with `b <= 64` ([`SecAggError::ModulusOverflow`]).
    pub fn new(params: SecAggParams) -> SecAggResult<Self> {
        let p = params;
        if p.n == 0 || p.n > MAX_CLIENTS {
            return Err(SecAggError::InvalidParameter {
                name: "n",
                value: p.n.into(),
                reason: "must be in 1..=2^20",
            });
        }
        if p.k.is_multiple_of(2) {
            return Err(SecAggError::InvalidParameter {
                name: "k",
                value: p.k.into(),
                reason: "must be odd (the client plus (k-1)/2 neighbours on each side)",
            });
        }
        let holders = p.k.min(p.n);
        if p.t <= holders / 2 || p.t > holders {
            return Err(SecAggError::ThresholdOutOfRange {
                t: p.t,
                holders,
                min: holders / 2 + 1,
            });
        }
        if p.dim == 0 || p.dim > MAX_DIM {
            return Err(SecAggError::InvalidParameter {
                name: "dim",
                value: p.dim as u64,
                reason: "must be in 1..=2^28",
            });
        }
        let q = p.quantization;
        if !(q.clip.is_finite() && q.clip > 0.0) {
            return Err(SecAggError::InvalidClip { clip: q.clip });
        }
        if q.bits == 0 || q.bits > MAX_QUANT_BITS {
            return Err(SecAggError::InvalidParameter {
                name: "bits",
                value: q.bits.into(),
                reason: "must be in 1..=32",
            });
        }
        if let Some(w) = p.max_weight {
            if w == 0 || w > MAX_WEIGHT {
                return Err(SecAggError::InvalidParameter {
                    name: "max_weight",
                    value: w,
                    reason: "must be in 1..=2^32",
                });
            }
        }
        let max_entry = ((1u128 << q.bits) - 1) * u128::from(p.max_weight.unwrap_or(1));
        let max_sum = max_entry * u128::from(p.n);
        let overflow = |b: u32| SecAggError::ModulusOverflow {
            n: p.n,
            max_entry,
            max_sum,
            modulus_bits: b,
        };
        let modulus_bits = match p.modulus_bits {
            Some(b) => {
                if b == 0 || b > 64 {
                    return Err(SecAggError::InvalidParameter {
                        name: "modulus_bits",
                        value: b.into(),
                        reason: "must be in 1..=64",
                    });
                }
                if max_sum >= 1u128 << b {
                    return Err(overflow(b));
                }
                b
            }
            None => {
                // Smallest b with max_sum < 2^b; max_sum < 2^(32+32+20), so check 64.
                let b = 128 - max_sum.leading_zeros();
                if b > 64 {
                    return Err(overflow(64));
                }
                b.max(1)
            }
        };
        Ok(SecAggConfig {
            params: p,
            modulus_bits,
        })
    }

    /// [`SecAggParams::recommended`], validated.
    pub fn recommended(n: u32, dim: usize) -> SecAggResult<Self> {
        Self::new(SecAggParams::recommended(n, dim))
    }

    /// The parameters as given (with `modulus_bits` possibly `None`).
    pub fn params(&self) -> &SecAggParams {
        &self.params
    }
    /// Number of clients.
    pub fn n(&self) -> u32 {
        self.params.n
    }
    /// Neighbourhood size parameter `k` (share holders including the client).
    pub fn k(&self) -> u32 {
        self.params.k
    }
    /// Share holders per client, `min(k, n)` (the client included).
    pub fn holders(&self) -> u32 {
        self.params.k.min(self.params.n)
    }
    /// Shamir threshold.
    pub fn t(&self) -> u32 {
        self.params.t
    }
    /// Update length.
    pub fn dim(&self) -> usize {
        self.params.dim
    }
    /// Quantization.
    pub fn quantization(&self) -> Quantization {
        self.params.quantization
    }
    /// Declared maximum weight (`None`: unweighted).
    pub fn max_weight(&self) -> Option<u64> {
        self.params.max_weight
    }
    /// Whether clients submit weights.
    pub fn weighted(&self) -> bool {
        self.params.max_weight.is_some()
    }
    /// Length of the masked vectors: `dim`, plus one for the weight when weighted.
    pub fn vector_len(&self) -> usize {
        self.params.dim + usize::from(self.weighted())
    }
    /// `b`: sums live in `Z_{2^b}`.
    pub fn modulus_bits(&self) -> u32 {
        self.modulus_bits
    }
    /// `2^b - 1`, the mask reducing a `u64` modulo `2^b`.
    pub fn modulus_mask(&self) -> u64 {
        if self.modulus_bits == 64 {
            u64::MAX
        } else {
            (1u64 << self.modulus_bits) - 1
        }
    }
    /// Largest quantized level, `2^bits - 1`.
    pub fn levels(&self) -> u64 {
        (1u64 << self.params.quantization.bits) - 1
    }

    /// Checks a weight against the configuration and returns the multiplier to use.
    pub(crate) fn check_weight(&self, weight: Option<u64>) -> SecAggResult<u64> {
        match (weight, self.params.max_weight) {
            (None, None) => Ok(1),
            (Some(w), Some(max)) if w <= max => Ok(w),
            _ => Err(SecAggError::InvalidWeight {
                weight,
                max: self.params.max_weight,
            }),
        }
    }

    /// One client's contribution: `weight * q(x)` entry-wise, then `weight` as the last
    /// coordinate when weighted. `weight` must be `Some` exactly when the configuration is
    /// weighted. Entries are `< 2^b` by the overflow check.
    pub fn quantize(&self, x: &[f64], weight: Option<u64>) -> SecAggResult<Vec<u64>> {
        if x.len() != self.dim() {
            return Err(SecAggError::InputLength {
                expected: self.dim(),
                got: x.len(),
            });
        }
        let w = self.check_weight(weight)?;
        let c = self.params.quantization.clip;
        let levels = self.levels();
        let scale = levels as f64 / (2.0 * c);
        let mut out = Vec::with_capacity(self.vector_len());
        for (i, &v) in x.iter().enumerate() {
            if !v.is_finite() {
                return Err(SecAggError::NonFiniteInput { index: i });
            }
            let level = ((v.clamp(-c, c) + c) * scale).round();
            let level = (level.max(0.0) as u64).min(levels);
            out.push(level * w);
        }
        if self.weighted() {
            out.push(w);
        }
        Ok(out)
    }

    /// De-quantizes a sum of `vector_len` entries: `sum_i w_i x_i ~ S * 2c/(2^bits-1) - W c`,
    /// where `W` is the weight total (the last coordinate when weighted, else `count`, the
    /// number of summed clients). Returns `dim` values.
    pub fn dequantize_sum(&self, sum: &[u64], count: u64) -> Vec<f64> {
        let c = self.params.quantization.clip;
        let step = 2.0 * c / self.levels() as f64;
        let total = if self.weighted() {
            sum.get(self.dim()).copied().unwrap_or(0)
        } else {
            count
        };
        sum.iter()
            .take(self.dim())
            .map(|&s| s as f64 * step - total as f64 * c)
            .collect()
    }
}
