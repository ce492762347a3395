//! The versioned, bounded, bit-packed wire format of cipherml-he.
//!
//! Every object starts with a 16-byte header: the magic `CMHE`, a format version, an object
//! kind, two reserved zero bytes, and the 64-bit id of the parameters it belongs to.
//! Coefficients are bit-packed to the width of their modulus, and uniform polynomials that
//! come from a seed are sent as the 32-byte seed. Decoding treats its input as hostile: it
//! checks the header, then the exact length implied by the parameters before allocating,
//! then that every coefficient is reduced; it returns a [`DecodeError`] and never panics.
//!
//! ```
//! use cipherml_he::bfv::*;
//! use cipherml_he::rlwe::SecretKey;
//! use std::sync::Arc;
//! let params = BfvParameters::new(&BfvParametersLiteral::n4096()).unwrap();
//! let mut rng = rand::rng();
//! let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
//! let dec = Decryptor::new(&params, sk).unwrap();
//! let pt = Encoder::new(&params).encode_u64(&[7, 8, 9]).unwrap();
//! let ct = dec.encrypt_symmetric(&pt, &mut rng).unwrap();
//! let bytes = ct.to_bytes(&params);
//! let back = Ciphertext::from_bytes(&params, &bytes).unwrap();
//! assert_eq!(back, ct);
//! assert!(Ciphertext::from_bytes(&params, &bytes[..bytes.len() - 1]).is_err());
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use zeroize::Zeroize;

use crate::bfv::{BfvParameters, BfvParametersLiteral, Ciphertext, CoeffWindow, Plaintext};
use crate::ckks;
use crate::error::{DecodeError, Result};
use crate::math::sampler::{uniform_from_seed, Seed};
use crate::math::{Ntt, Poly, RnsBasis};
use crate::rlwe::keys::KeySwitchKey;
use crate::rlwe::{GaloisKeys, PublicKey, RelinKey, RlweContext, SecretKey};

/// Magic bytes of every object.
pub const MAGIC: [u8; 4] = *b"CMHE";
/// Current format version.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 16;

/// Object kinds of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A BFV parameter literal.
    BfvParameters = 1,
    /// A BFV ciphertext.
    BfvCiphertext = 2,
    /// A BFV plaintext.
    BfvPlaintext = 3,
    /// A public key.
    PublicKey = 4,
    /// A relinearization key.
    RelinKey = 5,
    /// A set of Galois keys.
    GaloisKeys = 6,
    /// A secret key (for the key owner's own storage only).
    SecretKey = 7,
    /// A CKKS ciphertext.
    CkksCiphertext = 8,
    /// A CKKS parameter literal.
    CkksParameters = 9,
    // 10 was an exact partial BFV ciphertext, superseded by the compact one.
    /// A BFV ciphertext switched to a power-of-two modulus `2^b` (few bits per coefficient),
    /// its first polynomial kept only at some coefficients.
    BfvCompactCiphertext = 11,
    /// A fresh seeded BFV ciphertext with its first polynomial sent only in a window of
    /// coefficients ([`crate::bfv::CoeffWindow`]).
    BfvWindowCiphertext = 12,
}

fn header(kind: Kind, id: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN);
    v.extend_from_slice(&MAGIC);
    v.push(VERSION);
    v.push(kind as u8);
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&id.to_le_bytes());
    v
}

/// Reads and checks a header; returns the body.
fn check_header(
    bytes: &[u8],
    kind: Kind,
    id: Option<u64>,
) -> std::result::Result<&[u8], DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated {
            needed: HEADER_LEN,
            available: bytes.len(),
        });
    }
    let magic: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(DecodeError::BadMagic { found: magic });
    }
    if bytes[4] != VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: bytes[4],
            supported: VERSION,
        });
    }
    if bytes[5] != kind as u8 {
        return Err(DecodeError::WrongKind {
            found: bytes[5],
            expected: kind as u8,
        });
    }
    if bytes[6] != 0 || bytes[7] != 0 {
        return Err(DecodeError::Invalid {
            what: "reserved header bytes",
            value: u16::from_le_bytes([bytes[6], bytes[7]]) as u64,
        });
    }
    let found = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if let Some(expected) = id {
        if found != expected {
            return Err(DecodeError::WrongParameters { expected, found });
        }
    }
    Ok(&bytes[HEADER_LEN..])
}

/// A bounds-checked reader over untrusted bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn take(&mut self, len: usize) -> std::result::Result<&'a [u8], DecodeError> {
        let available = self.bytes.len() - self.pos;
        if len > available {
            return Err(DecodeError::Truncated {
                needed: len,
                available,
            });
        }
        let s = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(s)
    }

    fn u8(&mut self) -> std::result::Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> std::result::Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn finish(&self) -> std::result::Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes { extra }),
        }
    }
}

/// Bytes of `n` values of `width` bits.
fn packed_len(n: usize, width: u32) -> usize {
    (n * width as usize).div_ceil(8)
}

/// Bytes of a polynomial over `basis`.
fn poly_len(n: usize, basis: &RnsBasis) -> usize {
    basis
        .primes()
        .iter()
        .map(|p| packed_len(n, p.modulus.bits()))
        .sum()
}

fn pack_values(out: &mut Vec<u8>, values: &[u64], width: u32) {
    let mut acc: u128 = 0;
    let mut nbits = 0u32;
    for &v in values {
        acc |= (v as u128) << nbits;
        nbits += width;
        while nbits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            nbits -= 8;
        }
    }
    if nbits > 0 {
        out.push(acc as u8);
    }
}

fn unpack_values(
    bytes: &[u8],
    n: usize,
    width: u32,
    modulus: u128,
) -> std::result::Result<Vec<u64>, DecodeError> {
    debug_assert_eq!(bytes.len(), packed_len(n, width));
    let mask = if width == 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    let mut out = Vec::with_capacity(n);
    let mut acc: u128 = 0;
    let mut nbits = 0u32;
    let mut it = bytes.iter();
    for _ in 0..n {
        while nbits < width {
            acc |= (*it.next().expect("length checked") as u128) << nbits;
            nbits += 8;
        }
        let v = (acc as u64) & mask;
        acc >>= width;
        nbits -= width;
        if v as u128 >= modulus {
            // modulus <= v < 2^64 here.
            return Err(DecodeError::CoefficientOutOfRange {
                value: v,
                modulus: modulus as u64,
            });
        }
        out.push(v);
    }
    // Padding bits of the last byte must be zero (canonical encoding).
    if acc != 0 {
        return Err(DecodeError::Invalid {
            what: "padding bits",
            value: acc as u64,
        });
    }
    Ok(out)
}

fn pack_poly(out: &mut Vec<u8>, p: &Poly<Ntt>, basis: &RnsBasis) {
    for (limb, pr) in p.limbs().zip(basis.primes()) {
        pack_values(out, limb, pr.modulus.bits());
    }
}

fn unpack_poly(
    r: &mut Reader<'_>,
    n: usize,
    basis: &RnsBasis,
) -> std::result::Result<Poly<Ntt>, DecodeError> {
    let mut data = Vec::with_capacity(n * basis.len());
    for pr in basis.primes() {
        let w = pr.modulus.bits();
        let bytes = r.take(packed_len(n, w))?;
        data.extend(unpack_values(bytes, n, w, pr.modulus.value().into())?);
    }
    Ok(Poly::from_data(n, data))
}

fn expect_len(body: &[u8], expected: usize) -> std::result::Result<(), DecodeError> {
    if body.len() < expected {
        Err(DecodeError::Truncated {
            needed: expected,
            available: body.len(),
        })
    } else if body.len() > expected {
        Err(DecodeError::TrailingBytes {
            extra: body.len() - expected,
        })
    } else {
        Ok(())
    }
}

impl BfvParametersLiteral {
    /// The parameter literal with a wire header (id 0: the literal defines the id).
    pub fn to_wire(&self) -> Vec<u8> {
        let mut v = header(Kind::BfvParameters, 0);
        v.extend(self.to_bytes());
        v
    }

    /// Decodes [`Self::to_wire`] output (bounded to 4 KiB of body).
    pub fn from_wire(bytes: &[u8]) -> Result<Self> {
        let body = check_header(bytes, Kind::BfvParameters, None)?;
        Self::from_bytes(body)
    }
}

const FLAG_SEEDED: u8 = 1;

/// Writes level, polynomial count and flags, `extra` (scheme fields), then the bit-packed
/// polynomials (for a seeded ciphertext: the first polynomial and the 32-byte seed).
fn encode_ct(
    v: &mut Vec<u8>,
    level: usize,
    polys: &[Poly<Ntt>],
    seed: Option<&Seed>,
    q: &RnsBasis,
    extra: &[u8],
) {
    v.push(level as u8);
    v.push(polys.len() as u8);
    v.push(if seed.is_some() { FLAG_SEEDED } else { 0 });
    v.extend_from_slice(extra);
    match seed {
        Some(seed) => {
            pack_poly(v, &polys[0], q);
            v.extend_from_slice(seed);
        }
        None => {
            for p in polys {
                pack_poly(v, p, q);
            }
        }
    }
}

/// A decoded ciphertext body: level, scheme fields, polynomials and seed.
struct DecodedCt<'a> {
    level: usize,
    extra: &'a [u8],
    polys: Vec<Poly<Ntt>>,
    seed: Option<Seed>,
}

/// Reads what [`encode_ct`] wrote, against `ctx`, checking every size before allocating.
fn decode_ct<'a>(
    body: &'a [u8],
    ctx: &RlweContext,
    extra_len: usize,
) -> std::result::Result<DecodedCt<'a>, DecodeError> {
    let mut r = Reader::new(body);
    let level = r.u8()? as usize;
    let count = r.u8()? as usize;
    let flags = r.u8()?;
    let extra = r.take(extra_len)?;
    let max = ctx.max_level();
    if level > max {
        return Err(DecodeError::TooLarge {
            what: "level",
            value: level as u64,
            max: max as u64,
        });
    }
    if !(2..=3).contains(&count) {
        return Err(DecodeError::Invalid {
            what: "polynomial count",
            value: count as u64,
        });
    }
    let n = ctx.degree();
    let q = ctx.q_at(level);
    let plen = poly_len(n, q);
    let seeded = match flags {
        0 => false,
        FLAG_SEEDED if count == 2 && level == max => true,
        f => {
            return Err(DecodeError::Invalid {
                what: "ciphertext flags",
                value: f as u64,
            })
        }
    };
    let expected = if seeded { plen + 32 } else { count * plen };
    expect_len(&body[3 + extra_len..], expected)?;
    let mut polys = Vec::with_capacity(count);
    let seed = if seeded {
        polys.push(unpack_poly(&mut r, n, q)?);
        let seed: Seed = r.take(32)?.try_into().expect("32 bytes");
        polys.push(uniform_from_seed(&seed, n, q, 0));
        Some(seed)
    } else {
        for _ in 0..count {
            polys.push(unpack_poly(&mut r, n, q)?);
        }
        None
    };
    r.finish()?;
    Ok(DecodedCt {
        level,
        extra,
        polys,
        seed,
    })
}

impl Ciphertext {
    /// Serializes: header, level, number of polynomials, flags, then the bit-packed
    /// polynomials (for a seeded ciphertext: the first polynomial and the 32-byte seed).
    pub fn to_bytes(&self, params: &BfvParameters) -> Vec<u8> {
        let q = params.context().q_at(self.level);
        let mut v = header(Kind::BfvCiphertext, self.params_id);
        encode_ct(&mut v, self.level, &self.polys, self.seed.as_ref(), q, &[]);
        v
    }

    /// Decodes untrusted bytes against `params`.
    pub fn from_bytes(params: &Arc<BfvParameters>, bytes: &[u8]) -> Result<Self> {
        let body = check_header(bytes, Kind::BfvCiphertext, Some(params.id()))?;
        let d = decode_ct(body, params.context(), 0)?;
        Ok(Ciphertext {
            params_id: params.id(),
            level: d.level,
            polys: d.polys,
            seed: d.seed,
        })
    }
}

/// Size in bytes of a [`Ciphertext::to_bytes_window`] output for `window` (exactly).
pub fn window_ciphertext_size(params: &BfvParameters, window: CoeffWindow) -> usize {
    let q = params.context().q();
    let body: usize = q
        .primes()
        .iter()
        .map(|p| packed_len(window.len(), p.modulus.bits()))
        .sum();
    HEADER_LEN + 1 + 4 + 4 + body + 32
}

impl Ciphertext {
    /// Serializes a fresh seeded ciphertext (two polynomials at the top level) with its
    /// first polynomial only at the positions of `window` (coefficient form, bit-packed
    /// per prime) and its uniform half as the seed: a client's input to a product whose
    /// read outputs depend on `window` only. What is sent is part of a ciphertext, so it
    /// reveals no more than the ciphertext. Fails with [`crate::Error::CiphertextSize`]
    /// for a ciphertext that is not fresh and seeded (`expected` 2, `found` its count,
    /// or 0 without a seed) and [`crate::Error::LevelOutOfRange`] below the top level.
    pub fn to_bytes_window(&self, params: &BfvParameters, window: CoeffWindow) -> Result<Vec<u8>> {
        let max = params.max_level();
        let seed = match (&self.seed, self.polys.len()) {
            (Some(seed), 2) => seed,
            (None, _) => {
                return Err(crate::Error::CiphertextSize {
                    found: 0,
                    expected: 2,
                })
            }
            (_, found) => return Err(crate::Error::CiphertextSize { found, expected: 2 }),
        };
        if self.level != max {
            return Err(crate::Error::LevelOutOfRange {
                level: self.level,
                max,
            });
        }
        let q = params.context().q();
        let c0 = self.polys[0].clone().into_coeff(q);
        let mut v = header(Kind::BfvWindowCiphertext, self.params_id);
        v.push(self.level as u8);
        v.extend_from_slice(&(window.start() as u32).to_le_bytes());
        v.extend_from_slice(&(window.len() as u32).to_le_bytes());
        let mut vals = Vec::with_capacity(window.len());
        for (limb, pr) in c0.limbs().zip(q.primes()) {
            vals.clear();
            vals.extend(window.positions().map(|i| limb[i]));
            pack_values(&mut v, &vals, pr.modulus.bits());
        }
        v.extend_from_slice(seed);
        Ok(v)
    }

    /// Decodes [`Ciphertext::to_bytes_window`] output sent for `window` (which the
    /// receiver knows from the public layout: a different window is refused), with the
    /// first polynomial zero outside it and the second expanded from the seed. Checks the
    /// header, level, window and exact length before allocating.
    pub fn from_bytes_window(
        params: &Arc<BfvParameters>,
        bytes: &[u8],
        window: CoeffWindow,
    ) -> Result<Self> {
        let body = check_header(bytes, Kind::BfvWindowCiphertext, Some(params.id()))?;
        let mut r = Reader::new(body);
        let level = r.u8()? as usize;
        let start = r.u32()? as usize;
        let len = r.u32()? as usize;
        let max = params.max_level();
        if level != max {
            return Err(DecodeError::Invalid {
                what: "level of a windowed ciphertext",
                value: level as u64,
            }
            .into());
        }
        if start != window.start() {
            return Err(DecodeError::Invalid {
                what: "window start",
                value: start as u64,
            }
            .into());
        }
        if len != window.len() {
            return Err(DecodeError::Invalid {
                what: "window length",
                value: len as u64,
            }
            .into());
        }
        expect_len(
            &body[9..],
            window_ciphertext_size(params, window) - HEADER_LEN - 9,
        )?;
        let n = params.degree();
        let q = params.context().q();
        let mut c0: Poly<crate::math::Coeff> = Poly::zero(n, q.len());
        for (k, pr) in q.primes().iter().enumerate() {
            let w = pr.modulus.bits();
            let vals = unpack_values(
                r.take(packed_len(len, w))?,
                len,
                w,
                pr.modulus.value().into(),
            )?;
            let limb = c0.limb_mut(k);
            for (i, v) in window.positions().zip(vals) {
                limb[i] = v;
            }
        }
        let seed: Seed = r.take(32)?.try_into().expect("32 bytes");
        r.finish()?;
        let c1 = uniform_from_seed(&seed, n, q, 0);
        Ok(Ciphertext {
            params_id: params.id(),
            level,
            polys: vec![c0.into_ntt(q), c1],
            seed: Some(seed),
        })
    }
}

impl Plaintext {
    /// Serializes the coefficients bit-packed to the width of `t`.
    pub fn to_bytes(&self, params: &BfvParameters) -> Vec<u8> {
        let w = params.plaintext_bits();
        let mut v = header(Kind::BfvPlaintext, self.params_id);
        pack_values(&mut v, &self.coeffs, w.max(1));
        v
    }

    /// Decodes untrusted bytes against `params`.
    pub fn from_bytes(params: &Arc<BfvParameters>, bytes: &[u8]) -> Result<Self> {
        let body = check_header(bytes, Kind::BfvPlaintext, Some(params.id()))?;
        let t = params.plaintext_modulus();
        let w = params.plaintext_bits().max(1);
        let n = params.degree();
        expect_len(body, packed_len(n, w))?;
        let coeffs = unpack_values(body, n, w, t)?;
        Ok(Plaintext {
            params_id: params.id(),
            coeffs,
        })
    }
}

impl PublicKey {
    /// Serializes `b` bit-packed and `a` as its seed.
    pub fn to_bytes(&self, ctx: &RlweContext) -> Vec<u8> {
        let mut v = header(Kind::PublicKey, self.ctx_id);
        pack_poly(&mut v, &self.b, ctx.q());
        v.extend_from_slice(&self.seed);
        v
    }

    /// Decodes untrusted bytes against `ctx`.
    pub fn from_bytes(ctx: &Arc<RlweContext>, bytes: &[u8]) -> Result<Self> {
        let body = check_header(bytes, Kind::PublicKey, Some(ctx.id()))?;
        let n = ctx.degree();
        expect_len(body, poly_len(n, ctx.q()) + 32)?;
        let mut r = Reader::new(body);
        let b = unpack_poly(&mut r, n, ctx.q())?;
        let seed: Seed = r.take(32)?.try_into().expect("32 bytes");
        r.finish()?;
        Ok(PublicKey {
            ctx_id: ctx.id(),
            b,
            a: uniform_from_seed(&seed, n, ctx.q(), 0),
            seed,
        })
    }
}

fn ksk_len(ctx: &RlweContext) -> usize {
    let digits = ctx.num_digits();
    digits * poly_len(ctx.degree(), ctx.qp()) + 32
}

fn pack_ksk(out: &mut Vec<u8>, k: &KeySwitchKey, ctx: &RlweContext) {
    for b in &k.b {
        pack_poly(out, b, ctx.qp());
    }
    out.extend_from_slice(&k.seed);
}

fn unpack_ksk(
    r: &mut Reader<'_>,
    ctx: &RlweContext,
) -> std::result::Result<KeySwitchKey, DecodeError> {
    let digits = ctx.num_digits();
    let n = ctx.degree();
    let mut b = Vec::with_capacity(digits);
    for _ in 0..digits {
        b.push(unpack_poly(r, n, ctx.qp())?);
    }
    let seed: Seed = r.take(32)?.try_into().expect("32 bytes");
    let a = (0..digits)
        .map(|j| KeySwitchKey::expand_a(ctx, &seed, j))
        .collect();
    Ok(KeySwitchKey {
        ctx_id: ctx.id(),
        b,
        a,
        seed,
    })
}

impl RelinKey {
    /// Serializes the key: the `b` halves bit-packed, the `a` halves as one seed.
    pub fn to_bytes(&self, ctx: &RlweContext) -> Vec<u8> {
        let mut v = header(Kind::RelinKey, self.ksk.ctx_id);
        pack_ksk(&mut v, &self.ksk, ctx);
        v
    }

    /// Decodes untrusted bytes against `ctx`.
    pub fn from_bytes(ctx: &Arc<RlweContext>, bytes: &[u8]) -> Result<Self> {
        let body = check_header(bytes, Kind::RelinKey, Some(ctx.id()))?;
        expect_len(body, ksk_len(ctx))?;
        let mut r = Reader::new(body);
        let ksk = unpack_ksk(&mut r, ctx)?;
        r.finish()?;
        Ok(RelinKey { ksk })
    }
}

/// Reads the key count of serialized [`GaloisKeys`] (`body` after the header, `r` at its
/// start): at most `N`, and the body exactly as long as that many keys.
fn galois_key_count(r: &mut Reader<'_>, body: &[u8], ctx: &RlweContext) -> Result<usize> {
    let count = r.u32()? as usize;
    let n = ctx.degree();
    if count > n {
        return Err(DecodeError::TooLarge {
            what: "Galois key count",
            value: count as u64,
            max: n as u64,
        }
        .into());
    }
    expect_len(&body[4..], count * (4 + ksk_len(ctx)))?;
    Ok(count)
}

impl GaloisKeys {
    /// Serializes: the number of keys, then for each its Galois element and key.
    pub fn to_bytes(&self, ctx: &RlweContext) -> Vec<u8> {
        let mut v = header(Kind::GaloisKeys, self.ctx_id);
        v.extend_from_slice(&(self.keys.len() as u32).to_le_bytes());
        for (&g, k) in &self.keys {
            v.extend_from_slice(&(g as u32).to_le_bytes());
            pack_ksk(&mut v, k, ctx);
        }
        v
    }

    /// Decodes untrusted bytes against `ctx`; at most `N` keys, distinct valid elements.
    pub fn from_bytes(ctx: &Arc<RlweContext>, bytes: &[u8]) -> Result<Self> {
        let body = check_header(bytes, Kind::GaloisKeys, Some(ctx.id()))?;
        let mut r = Reader::new(body);
        let count = galois_key_count(&mut r, body, ctx)?;
        let n = ctx.degree();
        let mut keys = BTreeMap::new();
        for _ in 0..count {
            let g = r.u32()? as usize;
            if g.is_multiple_of(2) || g >= 2 * n || keys.contains_key(&g) {
                return Err(DecodeError::Invalid {
                    what: "Galois element",
                    value: g as u64,
                }
                .into());
            }
            keys.insert(g, unpack_ksk(&mut r, ctx)?);
        }
        r.finish()?;
        Ok(GaloisKeys {
            ctx_id: ctx.id(),
            keys,
        })
    }
}

impl SecretKey {
    /// Serializes the secret key (2 bits per coefficient). Only for the key owner's own
    /// storage: never send it. The returned buffer should be zeroized after use.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = header(Kind::SecretKey, self.context().id());
        let mut vals: Vec<u64> = self
            .coefficients()
            .iter()
            .map(|&c| (c + 1) as u64)
            .collect();
        pack_values(&mut v, &vals, 2);
        vals.zeroize();
        v
    }

    /// Decodes a secret key for `ctx`.
    pub fn from_bytes(ctx: &Arc<RlweContext>, bytes: &[u8]) -> Result<Self> {
        let body = check_header(bytes, Kind::SecretKey, Some(ctx.id()))?;
        let n = ctx.degree();
        expect_len(body, packed_len(n, 2))?;
        let mut vals = unpack_values(body, n, 2, 3)?;
        let coeffs = vals.iter().map(|&v| v as i64 - 1).collect();
        vals.zeroize();
        Ok(SecretKey::from_coefficients(ctx, coeffs))
    }
}

/// Size in bytes of a serialized ciphertext with `count` polynomials at `level`.
pub fn ciphertext_size(
    params: &BfvParameters,
    level: usize,
    count: usize,
    seeded: bool,
) -> Result<usize> {
    ct_size(params.context(), level, count, seeded, 0)
}

/// Size in bytes of a serialized ciphertext (either scheme) with `count` polynomials at
/// `level` and `extra` scheme-specific bytes after the 3 common ones.
fn ct_size(
    ctx: &RlweContext,
    level: usize,
    count: usize,
    seeded: bool,
    extra: usize,
) -> Result<usize> {
    ctx.check_level(level)?;
    let plen = poly_len(ctx.degree(), ctx.q_at(level));
    let body = if seeded { plen + 32 } else { count * plen };
    Ok(HEADER_LEN + 3 + extra + body)
}

/// Largest size in bytes of a [`Ciphertext::to_bytes_compact`] output with `kept`
/// coefficients of the first polynomial (at [`compact_max_bits`] bits per coefficient,
/// any level): what [`Ciphertext::from_bytes_compact`] can accept.
pub fn compact_ciphertext_max_size(params: &BfvParameters, kept: usize) -> usize {
    let max = compact_max_bits(params);
    HEADER_LEN + 6 + packed_len(kept, max) + packed_len(params.degree(), max)
}

/// Size in bytes of a serialized CKKS ciphertext with `count` polynomials at `level`.
pub fn ckks_ciphertext_size(
    params: &ckks::CkksParameters,
    level: usize,
    count: usize,
    seeded: bool,
) -> Result<usize> {
    // The CKKS header adds the scale (an f64).
    ct_size(params.context(), level, count, seeded, 8)
}

/// Size in bytes of a serialized [`PublicKey`] for `ctx` (what [`PublicKey::from_bytes`]
/// accepts, exactly).
pub fn public_key_size(ctx: &RlweContext) -> usize {
    HEADER_LEN + poly_len(ctx.degree(), ctx.q()) + 32
}

/// Size in bytes of a serialized [`RelinKey`] for `ctx` (exactly).
pub fn relin_key_size(ctx: &RlweContext) -> usize {
    HEADER_LEN + ksk_len(ctx)
}

/// Size in bytes of serialized [`GaloisKeys`] with `count` keys for `ctx` (exactly).
pub fn galois_keys_size(ctx: &RlweContext, count: usize) -> usize {
    HEADER_LEN + 4 + count * (4 + ksk_len(ctx))
}

/// Bytes a decoded key-switching key for `ctx` occupies in memory (its `a` and `b` halves,
/// one polynomial over `QP` per digit each): a decoded [`RelinKey`] takes this, decoded
/// [`GaloisKeys`] this per element.
pub fn key_switch_key_memory(ctx: &RlweContext) -> usize {
    2 * ctx.num_digits() * ctx.degree() * ctx.qp().len() * std::mem::size_of::<u64>()
}

/// Bytes a decoded [`PublicKey`] for `ctx` occupies in memory (two polynomials over `Q`).
pub fn public_key_memory(ctx: &RlweContext) -> usize {
    2 * ctx.degree() * ctx.q().len() * std::mem::size_of::<u64>()
}

impl GaloisKeys {
    /// The Galois elements of serialized keys, read from the element fields without
    /// unpacking (or expanding) any key: checks the header against `ctx`, the count and the
    /// exact length, so that a server can refuse keys for other elements before decoding
    /// them ([`GaloisKeys::from_bytes`] checks the rest).
    pub fn peek_elements(ctx: &RlweContext, bytes: &[u8]) -> Result<Vec<usize>> {
        let body = check_header(bytes, Kind::GaloisKeys, Some(ctx.id()))?;
        let mut r = Reader::new(body);
        let count = galois_key_count(&mut r, body, ctx)?;
        let per = ksk_len(ctx);
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            out.push(r.u32()? as usize);
            r.take(per)?;
        }
        Ok(out)
    }
}

impl ckks::CkksParametersLiteral {
    /// The parameter literal with a wire header.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut v = header(Kind::CkksParameters, 0);
        v.extend(
            bincode::serde::encode_to_vec(self, bincode::config::standard())
                .expect("serializing a literal cannot fail"),
        );
        v
    }

    /// Decodes [`Self::to_wire`] output (bounded to 4 KiB of body).
    pub fn from_wire(bytes: &[u8]) -> Result<Self> {
        let body = check_header(bytes, Kind::CkksParameters, None)?;
        let cfg = bincode::config::standard().with_limit::<4096>();
        let (lit, used): (Self, usize) = bincode::serde::decode_from_slice(body, cfg)
            .map_err(|e| DecodeError::Parameters(e.to_string()))?;
        if used != body.len() {
            return Err(DecodeError::TrailingBytes {
                extra: body.len() - used,
            }
            .into());
        }
        Ok(lit)
    }
}

impl ckks::Ciphertext {
    /// Serializes: header, level, number of polynomials, flags, the scale (IEEE 754, 8 bytes),
    /// then the bit-packed polynomials (seeded: the first polynomial and the seed).
    pub fn to_bytes(&self, params: &ckks::CkksParameters) -> Vec<u8> {
        let q = params.context().q_at(self.level);
        let mut v = header(Kind::CkksCiphertext, self.params_id);
        encode_ct(
            &mut v,
            self.level,
            &self.polys,
            self.seed.as_ref(),
            q,
            &self.scale.to_le_bytes(),
        );
        v
    }

    /// Decodes untrusted bytes against `params`; the scale must be finite, at least 1 and
    /// below the ciphertext modulus.
    pub fn from_bytes(params: &Arc<ckks::CkksParameters>, bytes: &[u8]) -> Result<Self> {
        let body = check_header(bytes, Kind::CkksCiphertext, Some(params.id()))?;
        let d = decode_ct(body, params.context(), 8)?;
        let scale = f64::from_le_bytes(d.extra.try_into().expect("8 bytes"));
        let q = params.context().q_at(d.level);
        if !scale.is_finite() || scale < 1.0 || scale.log2() >= q.log2_product() {
            return Err(DecodeError::Invalid {
                what: "scale (f64 bits)",
                value: scale.to_bits(),
            }
            .into());
        }
        Ok(ckks::Ciphertext {
            params_id: params.id(),
            level: d.level,
            scale,
            polys: d.polys,
            seed: d.seed,
        })
    }
}

/// Largest number of bits per coefficient of the compact encoding for a plaintext modulus
/// `t <= 2^60` (see [`compact_max_bits`]).
pub const COMPACT_MAX_BITS: u32 = 63;

/// Largest number of bits per coefficient of the compact encoding for a wide power-of-two
/// plaintext modulus `2^61 <= t <= 2^64` (which needs about `log2 t + log2 N + 2` bits).
pub const COMPACT_MAX_BITS_WIDE: u32 = 128;

/// Largest number of bits per coefficient of the compact encoding for `params`:
/// [`COMPACT_MAX_BITS`] for `t <= 2^60`, [`COMPACT_MAX_BITS_WIDE`] for `t > 2^60`.
pub fn compact_max_bits(params: &BfvParameters) -> u32 {
    if params.plaintext_bits() > 60 {
        COMPACT_MAX_BITS_WIDE
    } else {
        COMPACT_MAX_BITS
    }
}

/// Bits of the fixed point in which [`Ciphertext::to_bytes_compact`] rounds at `bits`
/// bits per coefficient: 128 up to [`COMPACT_MAX_BITS`], 192 above.
fn compact_fixed_bits(bits: u32) -> u32 {
    if bits <= COMPACT_MAX_BITS {
        128
    } else {
        192
    }
}

/// `log2` of the probability, per coefficient, that a rerandomized reply's rounding
/// exceeds the bound [`Ciphertext::compact_bits_rerandomized`] sizes it for (a decryption
/// off by one): `2^-80`, so `2^-40` over the `2^40` coefficients a session may reveal at
/// most.
pub const REPLY_ROUNDING_FAILURE_LOG2: f64 = -80.0;

/// How the rounding to `2^bits` of the second polynomial is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoundingBound {
    /// Worst case: `|e1 s| <= ||s||_1 / 2 <= N / 2` for a ternary key.
    WorstCase,
    /// `c1` re-randomized under the key's public key (computationally uniform and
    /// independent of the key): Hoeffding's bound with failure probability
    /// [`REPLY_ROUNDING_FAILURE_LOG2`].
    Rerandomized,
}

/// `t |nu|` bound of the compact encoding (see [`Ciphertext::to_bytes_compact`]): the
/// invariant noise after compression to `bits` bits, for noise `2^noise_log2` (in units of
/// the ciphertext modulus) at `level`. Exact decryption needs it below 1/2.
fn compact_noise(
    params: &BfvParameters,
    level: usize,
    noise_log2: f64,
    bits: u32,
    bound: RoundingBound,
) -> f64 {
    let q = params.context().q_at(level);
    let log_q = q.log2_product();
    let t = params.plaintext_modulus() as f64;
    let n = params.degree() as f64;
    let n1 = n + 1.0;
    // Error of each rounded coefficient: 1/2, plus the fixed-point error of the CRT sum
    // (each term off by less than q_j / 2^(128 - bits)).
    let eps: f64 = q
        .primes()
        .iter()
        .map(|p| (p.modulus.bits() as f64 - (compact_fixed_bits(bits) - bits) as f64).exp2())
        .sum();
    // |e0 + e1 s|: e0 at most 1/2 + eps; e1 s a sum of N terms, each in an interval of
    // length at most 1 + 2 eps (times a ternary key coefficient). Worst case (1/2 + eps) N;
    // for a rerandomized c1, whose rounding errors are independent of the key, Hoeffding:
    // |sum| <= lambda but with probability 2 exp(-2 lambda^2 / (N (1 + 2 eps)^2)).
    let e1s = match bound {
        RoundingBound::WorstCase => (0.5 + eps) * n,
        RoundingBound::Rerandomized => {
            let ln = (1.0 - REPLY_ROUNDING_FAILURE_LOG2) * std::f64::consts::LN_2;
            ((n * ln / 2.0).sqrt() * (1.0 + 2.0 * eps)).min((0.5 + eps) * n)
        }
    };
    // Noise before compression (with the rounding of Delta = floor(Q/t)), the rounding to
    // 2^bits, and the rounding of the lift back to Q at decoding (<= (1 + N)/2 in units
    // of Q).
    let before = t * ((noise_log2 - log_q).exp2() + t * (-log_q).exp2());
    let rounding = t * (0.5 + eps + e1s) * (-(bits as f64)).exp2();
    let lift = t * 0.5 * n1 * (-log_q).exp2();
    before + rounding + lift
}

/// Whether the bound of [`compact_noise`] leaves exact decryption (with slack for the
/// floating-point evaluation).
fn compact_fits(
    params: &BfvParameters,
    level: usize,
    noise_log2: f64,
    bits: u32,
    bound: RoundingBound,
) -> bool {
    noise_log2.is_finite()
        && (1..=compact_max_bits(params)).contains(&bits)
        && compact_noise(params, level, noise_log2, bits, bound) < 0.5 * (1.0 - 1e-9)
}

/// The fewest bits that [`compact_fits`] under `bound`.
fn compact_bits_under(
    params: &BfvParameters,
    level: usize,
    noise_log2: f64,
    bound: RoundingBound,
) -> Result<u32> {
    params.context().check_level(level)?;
    let max = compact_max_bits(params);
    (1..=max)
        .find(|&b| compact_fits(params, level, noise_log2, b, bound))
        .ok_or(crate::Error::NoiseMargin {
            keep_bits: max,
            noise_log2,
            needed_bits: max + 1,
        })
}

/// `x mod 2^bits` mask, for `bits <= 128`.
fn low_mask128(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// `floor(2^192 / q)` for an odd `q >= 3` (little-endian words; it fits in 192 bits).
fn two192_over(q: u64) -> [u64; 3] {
    // Long division of 2^192 = [1, 0, 0, 0] (most significant word first).
    let mut rem: u128 = 1;
    let mut out = [0u64; 3];
    for w in out.iter_mut().rev() {
        let cur = rem << 64;
        *w = (cur / q as u128) as u64;
        rem = cur % q as u128;
    }
    out
}

/// `a y mod 2^192`.
fn mul192(a: &[u64; 3], y: u64) -> [u64; 3] {
    let mut out = [0u64; 3];
    let mut carry = 0u128;
    for (o, &w) in out.iter_mut().zip(a) {
        let p = w as u128 * y as u128 + carry;
        *o = p as u64;
        carry = p >> 64;
    }
    out
}

/// `a + b mod 2^192`.
fn add192(a: [u64; 3], b: [u64; 3]) -> [u64; 3] {
    let mut out = [0u64; 3];
    let mut carry = 0u128;
    for i in 0..3 {
        let s = a[i] as u128 + b[i] as u128 + carry;
        out[i] = s as u64;
        carry = s >> 64;
    }
    out
}

/// The low 128 bits of `a >> s`, for `64 <= s < 192`.
fn shr192(a: [u64; 3], s: u32) -> u128 {
    debug_assert!((64..192).contains(&s));
    // Every bit of a[0] is below the cut s >= 64.
    ((a[2] as u128) << 64 | a[1] as u128) >> (s - 64)
}

/// Packs values of `width` bits (up to 128): each as a little-endian bit field, as
/// [`pack_values`] does for up to 64 bits.
fn pack_wide(out: &mut Vec<u8>, values: &[u128], width: u32) {
    debug_assert!((65..=128).contains(&width));
    let mut acc: u128 = 0;
    let mut nbits = 0u32;
    let mut push = |v: u128, w: u32, acc: &mut u128, nbits: &mut u32| {
        *acc |= v << *nbits;
        *nbits += w;
        while *nbits >= 8 {
            out.push(*acc as u8);
            *acc >>= 8;
            *nbits -= 8;
        }
    };
    for &v in values {
        // The low 64 bits, then the rest: nbits stays below 8 + 64.
        push(v as u64 as u128, 64, &mut acc, &mut nbits);
        push(v >> 64, width - 64, &mut acc, &mut nbits);
    }
    if nbits > 0 {
        out.push(acc as u8);
    }
}

/// Unpacks [`pack_wide`] output: `n` values of `width` bits (65 to 128).
fn unpack_wide(bytes: &[u8], n: usize, width: u32) -> std::result::Result<Vec<u128>, DecodeError> {
    debug_assert_eq!(bytes.len(), packed_len(n, width));
    let mut out = Vec::with_capacity(n);
    let mut acc: u128 = 0;
    let mut nbits = 0u32;
    let mut it = bytes.iter();
    let mut take = |w: u32, acc: &mut u128, nbits: &mut u32| -> u128 {
        while *nbits < w {
            *acc |= (*it.next().expect("length checked") as u128) << *nbits;
            *nbits += 8;
        }
        let v = *acc & low_mask128(w);
        *acc >>= w;
        *nbits -= w;
        v
    };
    for _ in 0..n {
        let lo = take(64, &mut acc, &mut nbits);
        let hi = take(width - 64, &mut acc, &mut nbits);
        out.push(hi << 64 | lo);
    }
    if acc != 0 {
        return Err(DecodeError::Invalid {
            what: "padding bits",
            value: acc as u64,
        });
    }
    Ok(out)
}

/// `x mod 2^bits` mask.
fn low_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

impl Ciphertext {
    /// The fewest bits per coefficient with which [`Ciphertext::to_bytes_compact`] keeps
    /// decryption exact for a ciphertext at `level` whose noise (phase minus `Delta m`, in
    /// units of the ciphertext modulus) is at most `2^noise_log2` in absolute value.
    /// Fails with [`crate::Error::NoiseMargin`] if no width up to [`compact_max_bits`] fits
    /// (its `needed_bits` is then one more than that largest width).
    pub fn compact_bits(params: &BfvParameters, level: usize, noise_log2: f64) -> Result<u32> {
        compact_bits_under(params, level, noise_log2, RoundingBound::WorstCase)
    }

    /// The fewest bits per coefficient for a reply that
    /// [`crate::bfv::Encryptor::masked_reply_compact`] re-randomizes: as
    /// [`Ciphertext::compact_bits`], with the rounding of the second polynomial bounded
    /// with probability `1 - 2^`[`REPLY_ROUNDING_FAILURE_LOG2`] per coefficient rather than
    /// in the worst case. Its rounding errors are then independent of the key (under RLWE
    /// the re-randomized `c1` is indistinguishable from uniform, and a distinguisher may
    /// sample the key itself), so `e1 s` is a sum of `N` independent terms of range 1:
    /// Hoeffding's bound, about `2^8.9` where the worst case is `2^12` at `N = 8192` (4
    /// bits fewer per coefficient).
    pub fn compact_bits_rerandomized(
        params: &BfvParameters,
        level: usize,
        noise_log2: f64,
    ) -> Result<u32> {
        compact_bits_under(params, level, noise_log2, RoundingBound::Rerandomized)
    }

    /// Serializes a 2-polynomial ciphertext switched to the modulus `2^bits`: each
    /// coefficient `c` (modulo `Q`) becomes `round(2^bits c / Q) mod 2^bits`, and the first
    /// polynomial is kept only at `positions` (both sides know them: decryption is
    /// coefficient-wise in `c0`, so the other coefficients are not needed). This
    /// is modulus switching and dropping low-order bits in one step (as in Cheetah).
    ///
    /// Decryption stays exact at `positions` if the noise is at most `2^noise_log2` (in
    /// units of `Q`, as bounded by the caller): with invariant noise `nu` (`t (c0 + c1 s) /
    /// Q = m + t k + nu`), the rounding errors `|e_i| <= 1/2` add `t (e0 + e1 s) / 2^bits`,
    /// at most `t (1 + N) / 2^(bits + 1)` for a ternary key (worst case, no failure
    /// probability), and the lift back to `Q` at decoding adds `t (1 + N) / (2 Q)`; the sum
    /// must stay below 1/2. Otherwise this fails with [`crate::Error::NoiseMargin`]; see
    /// [`Ciphertext::compact_bits`] for the smallest width. The output is a deterministic
    /// function of the ciphertext, so it reveals nothing the ciphertext does not.
    pub fn to_bytes_compact(
        &self,
        params: &BfvParameters,
        positions: &[usize],
        bits: u32,
        noise_log2: f64,
    ) -> Result<Vec<u8>> {
        if self.polys.len() != 2 {
            return Err(crate::Error::CiphertextSize {
                found: self.polys.len(),
                expected: 2,
            });
        }
        let q = params.context().q_at(self.level);
        let c0 = self.polys[0].clone().into_coeff(q);
        let c1 = self.polys[1].clone().into_coeff(q);
        compact_bytes(
            params,
            (self.params_id, self.level),
            [&c0, &c1],
            positions,
            (bits, noise_log2),
            RoundingBound::WorstCase,
        )
    }

    /// Decodes [`Ciphertext::to_bytes_compact`] output for the same `positions`, lifting
    /// each coefficient `c'` back to `round(Q c' / 2^bits)` modulo `Q` (the first polynomial
    /// is zero outside `positions`). Checks the header, level, width and exact length
    /// before allocating.
    pub fn from_bytes_compact(
        params: &Arc<BfvParameters>,
        bytes: &[u8],
        positions: &[usize],
    ) -> Result<Self> {
        let body = check_header(bytes, Kind::BfvCompactCiphertext, Some(params.id()))?;
        let mut r = Reader::new(body);
        let level = r.u8()? as usize;
        let bits = r.u8()? as u32;
        let count = r.u32()? as usize;
        let max = params.max_level();
        if level > max {
            return Err(DecodeError::TooLarge {
                what: "level",
                value: level as u64,
                max: max as u64,
            }
            .into());
        }
        if !(1..=compact_max_bits(params)).contains(&bits) {
            return Err(DecodeError::Invalid {
                what: "bits per coefficient",
                value: bits as u64,
            }
            .into());
        }
        if count != positions.len() {
            return Err(DecodeError::Invalid {
                what: "number of kept coefficients",
                value: count as u64,
            }
            .into());
        }
        let n = params.degree();
        if let Some(&bad) = positions.iter().find(|&&i| i >= n) {
            return Err(DecodeError::Invalid {
                what: "coefficient position",
                value: bad as u64,
            }
            .into());
        }
        expect_len(&body[6..], packed_len(count, bits) + packed_len(n, bits))?;
        let (kept, all): (Vec<u128>, Vec<u128>) = if bits <= COMPACT_MAX_BITS {
            let modulus = 1u128 << bits;
            let kept = unpack_values(r.take(packed_len(count, bits))?, count, bits, modulus)?;
            let all = unpack_values(r.take(packed_len(n, bits))?, n, bits, modulus)?;
            let widen = |v: Vec<u64>| v.into_iter().map(u128::from).collect();
            (widen(kept), widen(all))
        } else {
            let kept = unpack_wide(r.take(packed_len(count, bits))?, count, bits)?;
            (kept, unpack_wide(r.take(packed_len(n, bits))?, n, bits)?)
        };
        r.finish()?;
        let q = params.context().q_at(level);
        // round(Q c' / 2^b) = H with Q c' + 2^(b-1) = H 2^b + L, L < 2^b: L depends only on
        // Q mod 2^b, and H = (2^(b-1) - L) 2^-b modulo each q_i (which divides Q).
        let mask = low_mask128(bits);
        let q_low = q
            .primes()
            .iter()
            .fold(1u128, |acc, p| acc.wrapping_mul(p.modulus.value().into()))
            & mask;
        let half = 1u128 << (bits - 1);
        let lows: Vec<u128> = all
            .iter()
            .map(|&c| c.wrapping_mul(q_low).wrapping_add(half) & mask)
            .collect();
        let kept_lows: Vec<u128> = kept
            .iter()
            .map(|&c| c.wrapping_mul(q_low).wrapping_add(half) & mask)
            .collect();
        let mut c0 = crate::math::Poly::<crate::math::Coeff>::zero(n, q.len());
        let mut c1 = crate::math::Poly::<crate::math::Coeff>::zero(n, q.len());
        for j in 0..q.len() {
            let m = q.modulus(j);
            let inv = m
                .inv(m.pow(2, bits as u64))
                .expect("odd prime: 2 is invertible");
            let h = m.reduce_u128(half);
            let lift = |l: u128| m.mul(m.sub(h, m.reduce_u128(l)), inv);
            for (x, &l) in c1.limb_mut(j).iter_mut().zip(&lows) {
                *x = lift(l);
            }
            let limb = c0.limb_mut(j);
            for (&pos, &l) in positions.iter().zip(&kept_lows) {
                limb[pos] = lift(l);
            }
        }
        Ok(Ciphertext {
            params_id: params.id(),
            level,
            polys: vec![c0.into_ntt(q), c1.into_ntt(q)],
            seed: None,
        })
    }
}

/// The compact form of a two-polynomial BFV ciphertext already in coefficient form (see
/// [`Ciphertext::to_bytes_compact`], which converts and calls this).
pub(crate) fn compact_bytes(
    params: &BfvParameters,
    (params_id, level): (u64, usize),
    [c0, c1]: [&crate::math::Poly<crate::math::Coeff>; 2],
    positions: &[usize],
    (bits, noise_log2): (u32, f64),
    bound: RoundingBound,
) -> Result<Vec<u8>> {
    if !compact_fits(params, level, noise_log2, bits, bound) {
        return Err(crate::Error::NoiseMargin {
            keep_bits: bits,
            noise_log2,
            needed_bits: compact_bits_under(params, level, noise_log2, bound)
                .unwrap_or(compact_max_bits(params) + 1),
        });
    }
    let n = params.degree();
    if let Some(&bad) = positions.iter().find(|&&i| i >= n) {
        return Err(DecodeError::TooLarge {
            what: "coefficient position",
            value: bad as u64,
            max: n as u64 - 1,
        }
        .into());
    }
    let q = params.context().q_at(level);
    let k = q.len();
    // CRT: c = sum_j y_j (Q / q_j) mod Q with y_j = [c_j (Q / q_j)^-1]_{q_j}, so
    // 2^bits c / Q = sum_j y_j 2^bits / q_j (mod 2^bits). Each term in fixed point with
    // 128 - bits fractional bits: y_j * floor(2^128 / q_j) (no overflow: y_j < q_j).
    let consts: Vec<(u64, u128)> = (0..k)
        .map(|j| {
            let m = q.modulus(j);
            let others = (0..k)
                .filter(|&i| i != j)
                .fold(1u64, |acc, i| m.mul(acc, m.reduce(q.modulus(i).value())));
            let inv = m.inv(others).expect("distinct primes are coprime");
            (inv, u128::MAX / m.value() as u128)
        })
        .collect();
    let mut v = header(Kind::BfvCompactCiphertext, params_id);
    v.push(level as u8);
    v.push(bits as u8);
    v.extend_from_slice(&(positions.len() as u32).to_le_bytes());
    if bits <= COMPACT_MAX_BITS {
        let frac = 128 - bits;
        let half = 1u128 << (frac - 1);
        let round = |polys: &crate::math::Poly<crate::math::Coeff>, i: usize| -> u64 {
            let mut acc = 0u128;
            for (j, &(inv, f)) in consts.iter().enumerate() {
                let y = q.modulus(j).mul(polys.limb(j)[i], inv);
                acc = acc.wrapping_add((y as u128) * f);
            }
            (acc.wrapping_add(half) >> frac) as u64 & low_mask(bits)
        };
        let kept: Vec<u64> = positions.iter().map(|&i| round(c0, i)).collect();
        pack_values(&mut v, &kept, bits);
        let all: Vec<u64> = (0..n).map(|i| round(c1, i)).collect();
        pack_values(&mut v, &all, bits);
    } else {
        // The same sum in 192-bit fixed point (192 - bits >= 64 fractional bits): each
        // term y_j floor(2^192 / q_j) modulo 2^192.
        let wide: Vec<[u64; 3]> = (0..k).map(|j| two192_over(q.modulus(j).value())).collect();
        let frac = 192 - bits;
        let round = |polys: &crate::math::Poly<crate::math::Coeff>, i: usize| -> u128 {
            let mut acc = [0u64; 3];
            for (j, &(inv, _)) in consts.iter().enumerate() {
                let y = q.modulus(j).mul(polys.limb(j)[i], inv);
                acc = add192(acc, mul192(&wide[j], y));
            }
            let mut half = [0u64; 3];
            half[((frac - 1) / 64) as usize] = 1u64 << ((frac - 1) % 64);
            shr192(add192(acc, half), frac) & low_mask128(bits)
        };
        let kept: Vec<u128> = positions.iter().map(|&i| round(c0, i)).collect();
        pack_wide(&mut v, &kept, bits);
        let all: Vec<u128> = (0..n).map(|i| round(c1, i)).collect();
        pack_wide(&mut v, &all, bits);
    }
    Ok(v)
}
