//! Fixed-point encoding of reals in `Z_2^l` with `f` fractional bits:
//! `x -> round(x * 2^f) mod 2^l`, two's complement.

use crate::error::{Error, Result};
use crate::ring::Ring;

/// `round(v * 2^bits)` as a signed integer (saturating at the `i64` range): the fixed-point
/// value of a public constant or a weight before it is reduced into a ring.
pub fn quantize(v: f64, bits: u32) -> i64 {
    (v * (bits as f64).exp2()).round() as i64
}

/// A fixed-point format: a ring and a number of fractional bits. `Copy`, `Send`, `Sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedPoint {
    ring: Ring,
    frac_bits: u32,
}

impl FixedPoint {
    /// `frac_bits` fractional bits in `ring`; needs `frac_bits < ring.bits()` and
    /// `frac_bits <= 52` (the precision of an `f64`).
    pub fn new(ring: Ring, frac_bits: u32) -> Result<Self> {
        if frac_bits >= ring.bits() || frac_bits > 52 {
            return Err(Error::InvalidPrecision {
                frac_bits,
                ring_bits: ring.bits(),
            });
        }
        Ok(Self { ring, frac_bits })
    }

    /// The ring.
    pub fn ring(&self) -> Ring {
        self.ring
    }

    /// `f`.
    pub fn frac_bits(&self) -> u32 {
        self.frac_bits
    }

    /// `2^f`.
    pub fn scale(&self) -> f64 {
        (self.frac_bits as f64).exp2()
    }

    /// Smallest representable real.
    pub fn min_value(&self) -> f64 {
        self.ring.min_signed() as f64 / self.scale()
    }

    /// Largest representable real.
    pub fn max_value(&self) -> f64 {
        self.ring.max_signed() as f64 / self.scale()
    }

    /// Encodes `x` (rounded to nearest). NaN and infinities are [`Error::NotFinite`];
    /// values whose rounding falls outside the signed range are [`Error::OutOfRange`].
    pub fn encode(&self, x: f64) -> Result<u64> {
        if !x.is_finite() {
            return Err(Error::NotFinite { value: x });
        }
        let v = (x * self.scale()).round();
        // Exact bounds as f64: -2^(l-1) is exact, 2^(l-1) is the first value too large.
        let lo = self.ring.min_signed() as f64;
        let hi = -lo;
        if v < lo || v >= hi {
            return Err(Error::OutOfRange {
                value: x,
                min: self.min_value(),
                max: self.max_value(),
            });
        }
        Ok(self.ring.from_signed(v as i64))
    }

    /// Encodes a slice.
    pub fn encode_vec(&self, xs: &[f64]) -> Result<Vec<u64>> {
        xs.iter().map(|&x| self.encode(x)).collect()
    }

    /// Decodes an element.
    pub fn decode(&self, a: u64) -> f64 {
        self.ring.to_signed(a) as f64 / self.scale()
    }

    /// Decodes a slice.
    pub fn decode_vec(&self, a: &[u64]) -> Vec<f64> {
        a.iter().map(|&x| self.decode(x)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let fp = FixedPoint::new(Ring::new(32).unwrap(), 12).unwrap();
        for x in [0.0, -1.0, 1.5, -3.25, fp.max_value(), fp.min_value()] {
            assert_eq!(fp.decode(fp.encode(x).unwrap()), x);
        }
        assert!(matches!(fp.encode(f64::NAN), Err(Error::NotFinite { .. })));
        assert!(matches!(
            fp.encode(f64::INFINITY),
            Err(Error::NotFinite { .. })
        ));
        assert!(matches!(fp.encode(1e9), Err(Error::OutOfRange { .. })));
        assert!(matches!(
            fp.encode(fp.max_value() + 1.0),
            Err(Error::OutOfRange { .. })
        ));
        assert!(FixedPoint::new(Ring::new(16).unwrap(), 16).is_err());
        let fp64 = FixedPoint::new(Ring::new(64).unwrap(), 16).unwrap();
        assert!(fp64.encode(1e300).is_err());
        assert_eq!(fp64.decode(fp64.encode(-2.5).unwrap()), -2.5);
    }
}
