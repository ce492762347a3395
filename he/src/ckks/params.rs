//! CKKS parameters: an unchecked, serializable literal and the checked, immutable
//! [`CkksParameters`] with the canonical-embedding constants.

use std::sync::Arc;

use num_complex::Complex64;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rlwe::context::fnv1a;
use crate::rlwe::RlweContext;

/// The unchecked CKKS parameter literal.
///
/// ```
/// use cipherml_he::ckks::{CkksParameters, CkksParametersLiteral};
/// let p = CkksParameters::new(&CkksParametersLiteral::n8192()).unwrap();
/// assert_eq!((p.degree(), p.slots(), p.max_level()), (8192, 4096, 2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CkksParametersLiteral {
    /// Ring degree `N` (a power of two); there are `N/2` complex slots.
    pub degree: usize,
    /// Bit sizes of the ciphertext primes: the first (base) prime bounds the precision of
    /// the final result; each further prime is one multiplicative level and should be about
    /// the size of the scale.
    pub ciphertext_moduli_bits: Vec<u32>,
    /// Bit sizes of the special primes of key switching.
    pub special_moduli_bits: Vec<u32>,
    /// `log2` of the default encoding scale.
    pub scale_bits: u32,
}

impl CkksParametersLiteral {
    /// N = 8192, two levels at scale 2^40 (SEAL's [60, 40, 40, 60]).
    ///
    /// (Two 39-bit special primes, i.e. two key-switching digits instead of three, were
    /// measured slower here: a two-prime mod-up costs more than the NTTs it saves.)
    pub fn n8192() -> Self {
        Self {
            degree: 8192,
            ciphertext_moduli_bits: vec![60, 40, 40],
            special_moduli_bits: vec![60],
            scale_bits: 40,
        }
    }

    /// N = 16384, seven levels at scale 2^40 (SEAL's [60, 40 x 7, 60]).
    pub fn n16384() -> Self {
        Self {
            degree: 16384,
            ciphertext_moduli_bits: std::iter::once(60).chain([40; 7]).collect(),
            special_moduli_bits: vec![60],
            scale_bits: 40,
        }
    }

    /// N = 32768, nineteen levels at scale 2^40, for deep circuits.
    pub fn n32768() -> Self {
        Self {
            degree: 32768,
            ciphertext_moduli_bits: std::iter::once(60).chain([40; 19]).collect(),
            special_moduli_bits: vec![60],
            scale_bits: 40,
        }
    }
}

/// Checked CKKS parameters. Immutable and `Send + Sync`; share it in an `Arc`.
#[derive(Debug)]
pub struct CkksParameters {
    literal: CkksParametersLiteral,
    ctx: Arc<RlweContext>,
    /// Twiddles of the special FFT, stage by stage (`len = 2, 4, ..., N/2`), `len/2` each.
    pub(crate) fft_twiddles: Vec<Vec<Complex64>>,
    /// Twiddles of the inverse special FFT, same layout.
    pub(crate) ifft_twiddles: Vec<Vec<Complex64>>,
    scale: f64,
    id: u64,
}

impl CkksParameters {
    /// Checks the literal and builds the parameters; refuses anything below 128-bit security.
    pub fn new(literal: &CkksParametersLiteral) -> Result<Arc<Self>> {
        Self::build(literal, false)
    }

    /// As [`CkksParameters::new`] but accepts insecure parameters. **For tests only**: it exists
    /// only with the `insecure-params` cargo feature (never enable it in a program that
    /// encrypts real data).
    #[cfg(any(test, feature = "insecure-params"))]
    pub fn new_insecure(literal: &CkksParametersLiteral) -> Result<Arc<Self>> {
        Self::build(literal, true)
    }

    fn build(literal: &CkksParametersLiteral, allow_insecure: bool) -> Result<Arc<Self>> {
        if !(10..=60).contains(&literal.scale_bits) {
            return Err(Error::ScaleOutOfRange {
                scale: (literal.scale_bits as f64).exp2(),
                reason: "scale bits must be in [10, 60]",
            });
        }
        let ctx = RlweContext::new(
            literal.degree,
            &literal.ciphertext_moduli_bits,
            &literal.special_moduli_bits,
            &[],
            allow_insecure,
        )?;
        let n = literal.degree;
        let m = 2 * n;
        let mut rot_group = Vec::with_capacity(n / 2);
        let mut g = 1usize;
        for _ in 0..n / 2 {
            rot_group.push(g);
            g = g * 5 % m;
        }
        let ksi: Vec<Complex64> = (0..=m)
            .map(|k| Complex64::from_polar(1.0, 2.0 * std::f64::consts::PI * k as f64 / m as f64))
            .collect();
        let slots = n / 2;
        let mut fft_twiddles = Vec::new();
        let mut ifft_twiddles = Vec::new();
        let mut len = 2;
        while len <= slots {
            let lenq = len * 4;
            let gap = m / lenq;
            fft_twiddles.push(
                (0..len / 2)
                    .map(|j| ksi[(rot_group[j] % lenq) * gap])
                    .collect(),
            );
            ifft_twiddles.push(
                (0..len / 2)
                    .map(|j| ksi[(lenq - (rot_group[j] % lenq)) * gap])
                    .collect(),
            );
            len *= 2;
        }
        let id = fnv1a([ctx.id(), literal.scale_bits as u64, 0x0000_434b_4b53]);
        Ok(Arc::new(Self {
            literal: literal.clone(),
            scale: (literal.scale_bits as f64).exp2(),
            ctx,
            fft_twiddles,
            ifft_twiddles,
            id,
        }))
    }

    /// The literal.
    pub fn literal(&self) -> &CkksParametersLiteral {
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

    /// Number of complex slots, `N/2`.
    pub fn slots(&self) -> usize {
        self.ctx.degree() / 2
    }

    /// Highest level.
    pub fn max_level(&self) -> usize {
        self.ctx.max_level()
    }

    /// The default scale `2^scale_bits`.
    pub fn default_scale(&self) -> f64 {
        self.scale
    }

    /// The value of the ciphertext prime `q_level` (dropped by rescaling at that level).
    pub fn prime(&self, level: usize) -> u64 {
        self.ctx.q().modulus(level).value()
    }

    /// Parameter id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the parameters meet 128-bit security.
    pub fn is_secure(&self) -> bool {
        self.ctx.is_secure()
    }
}
