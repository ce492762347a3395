//! Typed errors of cipherml-he. Every variant carries the offending values.

/// Errors of the HE layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The ring degree is not a supported power of two.
    #[error("invalid ring degree {n}: must be a power of two in [{min}, {max}]")]
    InvalidDegree {
        /// The degree given.
        n: usize,
        /// Smallest allowed degree.
        min: usize,
        /// Largest allowed degree.
        max: usize,
    },
    /// A modulus bit size is out of range.
    #[error("invalid modulus size {bits} bits: must be in [{min}, {max}]")]
    InvalidModulusBits {
        /// The bit size given.
        bits: u32,
        /// Smallest allowed.
        min: u32,
        /// Largest allowed.
        max: u32,
    },
    /// The parameters do not reach 128-bit security.
    #[error(
        "insecure parameters: log2(QP) = {log_qp} bits exceeds the {max_log_qp}-bit bound for \
         N = {n} at 128-bit security (opt in with an insecure constructor, for tests only)"
    )]
    InsecureParameters {
        /// Ring degree.
        n: usize,
        /// Bits of the whole key-switching modulus (rounded up).
        log_qp: u32,
        /// Largest allowed.
        max_log_qp: u32,
    },
    /// Not enough NTT-friendly primes of a size.
    #[error("not enough NTT-friendly primes of {bits} bits for N = {n}")]
    NotEnoughPrimes {
        /// Bit size requested.
        bits: u32,
        /// Ring degree.
        n: usize,
    },
    /// A value exceeds the public cap declared for it (e.g. a weight above the cap from
    /// which noise flooding is sized).
    #[error(
        "{what} {value} at flat index {index} of shape {shape:?} exceeds the declared cap {cap}"
    )]
    ValueAboveCap {
        /// What the value is.
        what: &'static str,
        /// Flat (row-major) index of the value.
        index: usize,
        /// Shape of the array holding it.
        shape: Vec<usize>,
        /// The value.
        value: i64,
        /// The cap.
        cap: u64,
    },
    /// The parameter set is structurally invalid.
    #[error("invalid parameters: {reason}")]
    InvalidParameters {
        /// What is wrong.
        reason: String,
    },
    /// The plaintext modulus does not suit the requested use.
    #[error("plaintext modulus {t}: {reason}")]
    InvalidPlaintextModulus {
        /// The plaintext modulus (a `u128`: it can be `2^64`).
        t: u128,
        /// What is wrong.
        reason: &'static str,
    },
    /// Operands belong to different parameter sets.
    #[error("parameter mismatch: expected parameter id {expected:#018x}, found {found:#018x}")]
    ParameterMismatch {
        /// Expected parameter id.
        expected: u64,
        /// Parameter id found.
        found: u64,
    },
    /// Operands are at different levels.
    #[error("level mismatch: {left} vs {right}")]
    LevelMismatch {
        /// Level of the left operand.
        left: usize,
        /// Level of the right operand.
        right: usize,
    },
    /// A level is out of range.
    #[error("level {level} out of range (max {max})")]
    LevelOutOfRange {
        /// Level requested.
        level: usize,
        /// Largest valid level.
        max: usize,
    },
    /// A ciphertext has the wrong number of polynomials for the operation.
    #[error("ciphertext has {found} polynomials, expected {expected}")]
    CiphertextSize {
        /// Number found.
        found: usize,
        /// Number expected.
        expected: usize,
    },
    /// A Galois key is missing.
    #[error("no Galois key for element {element} (rotation needs it)")]
    MissingGaloisKey {
        /// The Galois element.
        element: usize,
    },
    /// Batching needs a prime `t = 1 mod 2N`.
    #[error("batching unavailable: plaintext modulus {t} is not a prime = 1 mod {two_n}")]
    BatchingUnavailable {
        /// The plaintext modulus (a `u128`: it can be `2^64`).
        t: u128,
        /// `2N`.
        two_n: usize,
    },
    /// Too many values for the slots or coefficients.
    #[error("too many values: {given} for {capacity} slots")]
    TooManyValues {
        /// Values given.
        given: usize,
        /// Capacity.
        capacity: usize,
    },
    /// A value is outside the plaintext range.
    #[error("value {value} out of range for plaintext modulus {modulus}")]
    ValueOutOfRange {
        /// The value.
        value: i128,
        /// The modulus (a `u128`: it can be `2^64`).
        modulus: u128,
    },
    /// A rotation step is out of range.
    #[error("rotation step {step} out of range (|step| < {max})")]
    InvalidRotation {
        /// The step given.
        step: i64,
        /// Bound on the absolute value.
        max: usize,
    },
    /// CKKS operands have different scales.
    #[error("scale mismatch: {left} vs {right}")]
    ScaleMismatch {
        /// Scale of the left operand.
        left: f64,
        /// Scale of the right operand.
        right: f64,
    },
    /// A scale is out of the supported range.
    #[error("scale {scale} out of range: {reason}")]
    ScaleOutOfRange {
        /// The scale.
        scale: f64,
        /// Why.
        reason: &'static str,
    },
    /// A CKKS value cannot be encoded (not finite, or too large for the scale).
    #[error("cannot encode {value} at scale {scale}: |value * scale| must be finite and below 2^{max_log2}")]
    EncodingOverflow {
        /// The value.
        value: f64,
        /// The scale.
        scale: f64,
        /// Bound, as a power of two.
        max_log2: u32,
    },
    /// A computation needs more levels than the ciphertext has left.
    #[error("not enough levels: need {needed}, have {available}")]
    NotEnoughLevels {
        /// Levels needed.
        needed: usize,
        /// Levels available.
        available: usize,
    },
    /// Tensor shapes do not fit the operation.
    #[error("shape mismatch: {what}: {left:?} vs {right:?}")]
    ShapeMismatch {
        /// The operation.
        what: &'static str,
        /// Left shape.
        left: Vec<usize>,
        /// Right shape.
        right: Vec<usize>,
    },
    /// A requested ciphertext compression would leave too little noise margin for exact
    /// decryption (see [`crate::bfv::Ciphertext::to_bytes_compact`]).
    #[error(
        "compression to {keep_bits} bits per coefficient exceeds the noise margin (noise \
         2^{noise_log2:.1}: at least {needed_bits} bits needed)"
    )]
    NoiseMargin {
        /// Bits per coefficient requested.
        keep_bits: u32,
        /// The stated noise bound, log2.
        noise_log2: f64,
        /// Smallest number of bits that fits, or one more than the largest width (64 for
        /// `t <= 2^60`) if none does.
        needed_bits: u32,
    },
    /// Decoding untrusted bytes failed.
    #[error("decode error: {0}")]
    Decode(#[from] DecodeError),
}

/// Errors when decoding the wire format. Decoding never panics and never allocates more
/// than the parameters allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than needed.
    #[error("truncated input: needed {needed} bytes, {available} available")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// Bytes left over after the object.
    #[error("{extra} trailing bytes")]
    TrailingBytes {
        /// Extra bytes.
        extra: usize,
    },
    /// The magic number is wrong.
    #[error("bad magic {found:02x?}")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// Unsupported format version.
    #[error("unsupported version {found} (supported: {supported})")]
    UnsupportedVersion {
        /// Version found.
        found: u8,
        /// Supported version.
        supported: u8,
    },
    /// The object kind is not the one expected.
    #[error("wrong object kind {found} (expected {expected})")]
    WrongKind {
        /// Kind tag found.
        found: u8,
        /// Kind tag expected.
        expected: u8,
    },
    /// The object was made for other parameters.
    #[error("parameter id {found:#018x} does not match {expected:#018x}")]
    WrongParameters {
        /// Expected id.
        expected: u64,
        /// Id found.
        found: u64,
    },
    /// A declared size exceeds its bound.
    #[error("{what} = {value} exceeds the limit {max}")]
    TooLarge {
        /// What was declared.
        what: &'static str,
        /// Declared value.
        value: u64,
        /// Bound.
        max: u64,
    },
    /// A coefficient is not reduced modulo its prime.
    #[error("coefficient {value} out of range for modulus {modulus}")]
    CoefficientOutOfRange {
        /// The coefficient.
        value: u64,
        /// The modulus.
        modulus: u64,
    },
    /// A field has an invalid value.
    #[error("invalid {what}: {value}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// The parameter literal could not be decoded.
    #[error("invalid parameter encoding: {0}")]
    Parameters(String),
}

/// `Ok` if an operand's parameter id is the one expected, else
/// [`Error::ParameterMismatch`] with both ids.
pub(crate) fn check_params(expected: u64, found: u64) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::ParameterMismatch { expected, found })
    }
}

/// Result alias of the HE layer.
pub type Result<T> = std::result::Result<T, Error>;
