//! The engine's CKKS operations, one implementation each: linear maps by a matrix the
//! server holds ([`PreparedCkksLinear`], prepared once and applied by the diagonal method),
//! squares, polynomials, sums with level and scale alignment, reshapes, and the reply to
//! the key owner. [`CkksEval`] runs them; a [`Session`](super::Session) runs its CKKS
//! operations through it (adding key uploads, permission checks and reveals), and so does
//! a CKKS model (the model layer's `CkksModel`) on a server, which needs no two-party set-up: CKKS
//! evaluation is local to the server.
//!
//! Every operation takes and returns [`PrivateTensor::Ckks`] values, whose level and scale
//! both parties track with the same arithmetic (the client holds no ciphertext, so it
//! predicts them; the server computes the ciphertexts too), so both take the same
//! decisions (alignment, refusals) without a message. A sum of tensors at different levels
//! (a residual block's shortcut and body) is aligned without consuming a level of the
//! network: the higher operand is dropped to one level above the lower, multiplied by the
//! constant 1 encoded at `s_low q / s_high` (`q` the prime the rescaling then drops) and
//! rescaled, arriving at the lower operand's level with its scale.
//!
//! [`CkksOps`] is what a CKKS program needs from its runner: a model written against it
//! runs on a [`Session`](super::Session) or on a [`CkksEval`] alike.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cipherml_he::ckks::{self, CkksParameters, Evaluator, SCALE_TOLERANCE};
use cipherml_he::rlwe::{GaloisKeys, RelinKey, SecretKey};
use cipherml_he::tensor::{CkksTensor, LinearMap, PreparedLinearMap};
use ndarray::{ArrayD, ArrayView2, IxDyn};

use super::{PrivateTensor, TensorError};

/// The evaluation keys a server holds for one client: the client's public key (it
/// re-randomizes every reply), its relinearization key and its Galois keys. Thread-safe
/// (read only); a server shares them across sessions behind an `Arc`.
pub struct CkksEvalKeys {
    pub(crate) enc: ckks::Encryptor,
    pub(crate) rlk: RelinKey,
    pub(crate) galois: GaloisKeys,
}

impl CkksEvalKeys {
    /// The keys, as received from their owner.
    pub fn new(enc: ckks::Encryptor, rlk: RelinKey, galois: GaloisKeys) -> Self {
        Self { enc, rlk, galois }
    }

    /// The client's public key, as an encryptor.
    pub fn encryptor(&self) -> &ckks::Encryptor {
        &self.enc
    }

    /// The relinearization key.
    pub fn relin_key(&self) -> &RelinKey {
        &self.rlk
    }

    /// The Galois keys.
    pub fn galois_keys(&self) -> &GaloisKeys {
        &self.galois
    }
}

// Keys are public material, but megabytes of coefficients help no log: `Debug` shows their
// shape only.
impl std::fmt::Debug for CkksEvalKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CkksKeys")
            .field(
                "galois_elements",
                &self.galois.elements().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The CKKS keys a session starts with when the caller set them up (a server and client
/// that exchanged them in their own handshake, or keys kept across sessions): no key is
/// then generated or uploaded by the session for the operations they cover.
#[derive(Clone)]
pub enum CkksSessionKeys {
    /// The client's secret key, and the Galois elements the server holds keys for (its
    /// relinearization key and public key are on the server too).
    Client {
        /// The secret key.
        sk: Arc<SecretKey>,
        /// The Galois elements of the keys the server holds.
        galois: Vec<usize>,
    },
    /// The client's evaluation keys, held by the server.
    Server(Arc<CkksEvalKeys>),
}

impl std::fmt::Debug for CkksSessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Client { galois, .. } => f
                .debug_struct("Client")
                .field("galois", galois)
                .finish_non_exhaustive(),
            Self::Server(k) => f.debug_tuple("Server").field(k).finish(),
        }
    }
}

/// A linear map `x -> M x + b` by a matrix the server holds, prepared once for CKKS inputs
/// at one level: its diagonals encoded (the diagonal method with baby-step giant-step, see
/// `cipherml_he::tensor`), the Galois elements any matrix of its shape needs (the key set
/// never reveals the weights' sparsity), and the shape of its output. Cloning shares the
/// encoded diagonals; a server prepares each model once and applies the same maps in every
/// session ([`PreparedCkksLinear::applications`] counts them). The client's copy is built
/// from the shapes (zero weights: nothing is encoded).
#[derive(Debug, Clone)]
pub struct PreparedCkksLinear {
    label: String,
    map: Arc<PreparedLinearMap>,
    level: usize,
    galois: Vec<usize>,
    output_shape: Vec<usize>,
    applications: Arc<AtomicU64>,
}

impl PreparedCkksLinear {
    /// Prepares `matrix` (`(outputs, inputs)`) and `bias` for inputs at `level` of `params`
    /// in the replicated layout (period: the input length rounded up to a power of two);
    /// the output has shape `output_shape` (`outputs` elements). `label` names the map in
    /// errors.
    pub fn new(
        params: &Arc<CkksParameters>,
        label: &str,
        matrix: ArrayView2<'_, f64>,
        bias: Option<&[f64]>,
        level: usize,
        output_shape: &[usize],
    ) -> Result<Self, TensorError> {
        let (rows, cols) = matrix.dim();
        if output_shape.iter().product::<usize>() != rows {
            return Err(TensorError::Shape {
                what: "CKKS linear map output",
                left: vec![rows, cols],
                right: output_shape.to_vec(),
            });
        }
        if level == 0 {
            return Err(cipherml_he::Error::NotEnoughLevels {
                needed: 1,
                available: 0,
            }
            .into());
        }
        let map = LinearMap::new(matrix, bias, cols.max(1).next_power_of_two())?;
        let ev = Evaluator::new(params);
        let mut galois = map.structural_galois_elements(&ev);
        galois.sort_unstable();
        galois.dedup();
        let prepared = map.encode(&ckks::Encoder::new(params), level)?;
        Ok(Self {
            label: label.to_string(),
            map: Arc::new(prepared),
            level,
            galois,
            output_shape: output_shape.to_vec(),
            applications: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The plaintext map (shapes, periods, diagonals).
    pub fn map(&self) -> &LinearMap {
        self.map.map()
    }

    /// The level inputs must be at (the output is one level lower).
    pub fn level(&self) -> usize {
        self.level
    }

    /// The Galois elements an application needs keys for (sorted).
    pub fn galois_elements(&self) -> &[usize] {
        &self.galois
    }

    /// Input length.
    pub fn cols(&self) -> usize {
        self.map().cols()
    }

    /// The output shape.
    pub fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }

    /// The name given at preparation.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// How many ciphertexts this map (or a clone of it: they share the encoded diagonals)
    /// has been applied to.
    pub fn applications(&self) -> u64 {
        self.applications.load(Ordering::Relaxed)
    }

    /// Whether `other` shares this map's encoded diagonals (a clone, not a new
    /// preparation).
    pub fn shares_encoding_with(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.map, &other.map)
    }
}

/// The parts of a CKKS operand: (ciphertext on the server, shape, level, scale).
type Parts<'t> = (Option<&'t CkksTensor>, Vec<usize>, usize, f64);

fn parts<'t>(t: &'t PrivateTensor, op: &'static str) -> Result<Parts<'t>, TensorError> {
    match t {
        PrivateTensor::Ckks {
            ct,
            shape,
            level,
            scale,
        } => Ok((ct.as_ref(), shape.clone(), *level, *scale)),
        _ => Err(TensorError::Unsupported {
            op,
            repr: "non-CKKS",
            reason: "the operand must be a CKKS tensor",
        }),
    }
}

fn need_levels(level: usize, need: usize, op: &'static str) -> Result<(), TensorError> {
    if level < need {
        return Err(TensorError::Unsupported {
            op,
            repr: "CKKS",
            reason: "not enough levels left at these parameters",
        });
    }
    Ok(())
}

fn scales_match(a: f64, b: f64) -> bool {
    (a - b).abs() <= SCALE_TOLERANCE * a.abs().max(b.abs())
}

/// Runs the CKKS operations on [`PrivateTensor::Ckks`] values with an evaluator and the
/// keys they need (a relinearization key for squares and polynomials, Galois keys for
/// linear maps). On the party without ciphertexts (the client) it computes the results'
/// shapes, levels and scales only, and needs no key. Borrows everything: `Copy`, cheap to
/// build per operation, `Send + Sync`.
///
/// ```
/// use std::sync::Arc;
/// use cipherml::he::ckks::{
///     CkksParameters, CkksParametersLiteral, Decryptor, Encoder, Encryptor, Evaluator,
/// };
/// use cipherml::he::rlwe::{GaloisKeys, PublicKey, RelinKey, SecretKey};
/// use cipherml::he::tensor::CkksTensor;
/// use cipherml::tensor::{CkksEval, CkksEvalKeys, PreparedCkksLinear};
/// use ndarray::array;
///
/// let params = CkksParameters::new(&CkksParametersLiteral {
///     degree: 8192,
///     ciphertext_moduli_bits: vec![50, 36, 36, 36],
///     special_moduli_bits: vec![50],
///     scale_bits: 36,
/// })?;
/// let top = params.max_level();
/// // The server's map y = M x + b, prepared once for inputs at the top level.
/// let m = array![[1.0, 2.0, 0.0], [0.0, -1.0, 0.5]];
/// let bias = [0.25, 0.0];
/// let w = PreparedCkksLinear::new(&params, "dense", m.view(), Some(&bias), top, &[2])?;
/// // The client's keys (the server gets the public, relinearization and Galois keys).
/// let mut rng = cipherml::mpc::prg::os_rng();
/// let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
/// let keys = CkksEvalKeys::new(
///     Encryptor::new(&params, PublicKey::new(&sk, &mut rng))?,
///     RelinKey::new(&sk, &mut rng),
///     GaloisKeys::new(&sk, w.galois_elements(), &mut rng)?,
/// );
/// let dec = Decryptor::new(&params, sk)?;
/// // The client's input x = (1, 2, 3), replicated every 4 slots, encrypted at the top.
/// let slots = CkksTensor::layout(&[1.0, 2.0, 3.0], 4, params.slots());
/// let pt = Encoder::new(&params).encode_f64(&slots, top, params.default_scale())?;
/// let ct = dec.encrypt_symmetric(&pt, &mut rng)?;
/// // The server alone: input, linear map, square, reply.
/// let ev = Evaluator::new(&params);
/// let eval = CkksEval::with_keys(&ev, &keys);
/// let x = eval.input(ct, &[3], top)?;
/// let y = eval.square(&eval.linear(&x, &w)?)?;
/// let reply = eval.reply(keys.encryptor(), &y, None, &mut rng)?;
/// let got = dec.decrypt_f64(&reply)?;
/// // (1 + 4 + 0.25)^2 and (-2 + 1.5)^2.
/// assert!((got[0] - 27.5625).abs() < 1e-3 && (got[1] - 0.25).abs() < 1e-3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy)]
pub struct CkksEval<'a> {
    ev: &'a Evaluator,
    relin: Option<&'a RelinKey>,
    galois: Option<&'a GaloisKeys>,
}

impl std::fmt::Debug for CkksEval<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CkksEval")
            .field("relin", &self.relin.is_some())
            .field("galois", &self.galois.is_some())
            .finish()
    }
}

impl<'a> CkksEval<'a> {
    /// An evaluation with no key (enough for sums, reshapes and the client's side).
    pub fn new(ev: &'a Evaluator) -> Self {
        Self {
            ev,
            relin: None,
            galois: None,
        }
    }

    /// An evaluation with a server's keys for one client.
    pub fn with_keys(ev: &'a Evaluator, keys: &'a CkksEvalKeys) -> Self {
        Self::new(ev).relin(&keys.rlk).galois(&keys.galois)
    }

    /// With a relinearization key.
    pub fn relin(mut self, rlk: &'a RelinKey) -> Self {
        self.relin = Some(rlk);
        self
    }

    /// With Galois keys.
    pub fn galois(mut self, keys: &'a GaloisKeys) -> Self {
        self.galois = Some(keys);
        self
    }

    /// The parameters.
    pub fn params(&self) -> &Arc<CkksParameters> {
        self.ev.params()
    }

    fn rlk(&self, op: &'static str) -> Result<&'a RelinKey, TensorError> {
        self.relin.ok_or(TensorError::Invalid {
            what: "CKKS evaluation",
            detail: format!("{op} needs the relinearization key"),
        })
    }

    /// A fresh ciphertext received from the key owner, as a tensor of `shape` (checked to
    /// be fresh at `level` and the default scale).
    pub fn input(
        &self,
        ct: ckks::Ciphertext,
        shape: &[usize],
        level: usize,
    ) -> Result<PrivateTensor, TensorError> {
        let scale = self.params().default_scale();
        ct.check_fresh(level, scale)?;
        let period = shape.iter().product::<usize>().max(1).next_power_of_two();
        Ok(PrivateTensor::Ckks {
            ct: Some(CkksTensor::from_ciphertext(ct, shape, period)?),
            shape: shape.to_vec(),
            level,
            scale,
        })
    }

    /// `M x + b` by a prepared map (one level; the scale is kept: the diagonals are
    /// encoded at the prime the rescaling drops).
    pub fn linear(
        &self,
        x: &PrivateTensor,
        w: &PreparedCkksLinear,
    ) -> Result<PrivateTensor, TensorError> {
        let (ct, shape, level, scale) = parts(x, "linear map")?;
        if shape.iter().product::<usize>() != w.cols() {
            return Err(TensorError::Shape {
                what: "CKKS linear map input",
                left: shape,
                right: vec![w.map().rows(), w.cols()],
            });
        }
        if level != w.level {
            return Err(cipherml_he::Error::LevelMismatch {
                left: level,
                right: w.level,
            }
            .into());
        }
        let ct = match ct {
            Some(ct) => {
                let keys = self.galois.ok_or(TensorError::Invalid {
                    what: "CKKS evaluation",
                    detail: format!("{} needs Galois keys", w.label),
                })?;
                let y = w.map.apply(self.ev, ct, keys)?.reshape(&w.output_shape)?;
                w.applications.fetch_add(1, Ordering::Relaxed);
                Some(y)
            }
            None => None,
        };
        let q = self.params().prime(level) as f64;
        Ok(PrivateTensor::Ckks {
            ct,
            shape: w.output_shape.clone(),
            level: level - 1,
            scale: scale * q / q,
        })
    }

    /// Elementwise square (one level; the scale becomes `s^2 / q`).
    pub fn square(&self, x: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        let (ct, shape, level, scale) = parts(x, "square")?;
        need_levels(level, 1, "square")?;
        let ct = match ct {
            Some(ct) => Some(ct.square(self.ev, self.rlk("square")?)?),
            None => None,
        };
        let q = self.params().prime(level) as f64;
        Ok(PrivateTensor::Ckks {
            ct,
            shape,
            level: level - 1,
            scale: scale * scale / q,
        })
    }

    /// The polynomial `sum c_i x^i` elementwise (lowest degree first) at optimal depth
    /// `ceil(log2(degree + 1))`; the scale is kept.
    pub fn poly(&self, x: &PrivateTensor, coeffs: &[f64]) -> Result<PrivateTensor, TensorError> {
        let (ct, shape, level, scale) = parts(x, "polynomial")?;
        // The evaluator drops zero leading coefficients: so does the depth.
        let degree = coeffs.iter().rposition(|&c| c != 0.0).unwrap_or(0);
        let depth = Evaluator::poly_depth(degree);
        need_levels(level, depth, "polynomial")?;
        let ct = match ct {
            Some(ct) => Some(ct.poly(self.ev, coeffs, self.rlk("polynomial")?)?),
            None => None,
        };
        Ok(PrivateTensor::Ckks {
            ct,
            shape,
            level: level - depth,
            scale,
        })
    }

    /// The same tensor seen with another shape of the same number of elements.
    pub fn reshape(
        &self,
        x: &PrivateTensor,
        shape: &[usize],
    ) -> Result<PrivateTensor, TensorError> {
        let (ct, old, level, scale) = parts(x, "reshape")?;
        if old.iter().product::<usize>() != shape.iter().product::<usize>() {
            return Err(TensorError::Shape {
                what: "reshape",
                left: old,
                right: shape.to_vec(),
            });
        }
        Ok(PrivateTensor::Ckks {
            ct: ct.map(|c| c.reshape(shape)).transpose()?,
            shape: shape.to_vec(),
            level,
            scale,
        })
    }

    /// `a + b` (or `a - b`) of a CKKS tensor and a CKKS tensor of the same shape, or a
    /// public value of the same shape. Two CKKS operands at different levels are aligned
    /// (module documentation) at no level of the network; at the same level their scales
    /// must agree ([`cipherml_he::Error::ScaleMismatch`] otherwise).
    pub fn add(
        &self,
        a: &PrivateTensor,
        b: &PrivateTensor,
        negate_b: bool,
    ) -> Result<PrivateTensor, TensorError> {
        let (xa, shape, la, sa) = parts(a, "add")?;
        if shape != b.shape() {
            return Err(TensorError::Shape {
                what: if negate_b { "sub" } else { "add" },
                left: shape,
                right: b.shape(),
            });
        }
        let combine = |x: &ckks::Ciphertext, y: &ckks::Ciphertext| {
            if negate_b {
                self.ev.sub(x, y)
            } else {
                self.ev.add(x, y)
            }
        };
        match b {
            PrivateTensor::Public(v) => {
                let ct = match xa {
                    Some(x) => Some(x.add_plain(self.ev, &if negate_b { -v } else { v.clone() })?),
                    None => None,
                };
                Ok(PrivateTensor::Ckks {
                    ct,
                    shape,
                    level: la,
                    scale: sa,
                })
            }
            PrivateTensor::Ckks {
                ct: xb,
                level: lb,
                scale: sb,
                ..
            } => {
                let (lb, sb) = (*lb, *sb);
                // The result takes the first operand's scale after alignment, as the
                // evaluator's sum does.
                let (level, scale) = if la > lb {
                    let q = self.params().prime(lb + 1) as f64;
                    (lb, sa * (sb * q / sa) / q)
                } else if lb > la || scales_match(sa, sb) {
                    (la, sa)
                } else {
                    return Err(cipherml_he::Error::ScaleMismatch {
                        left: sa,
                        right: sb,
                    }
                    .into());
                };
                let ct = match (xa, xb) {
                    (Some(x), Some(y)) => {
                        let (x, y) = (self.align(&x.ct, &y.ct)?, self.align(&y.ct, &x.ct)?);
                        Some(CkksTensor::from_ciphertext(
                            combine(&x, &y)?,
                            &shape,
                            shape.iter().product::<usize>().max(1).next_power_of_two(),
                        )?)
                    }
                    (None, None) => None,
                    _ => {
                        return Err(TensorError::Invalid {
                            what: "CKKS sum",
                            detail: "one operand has a ciphertext and the other not".into(),
                        })
                    }
                };
                Ok(PrivateTensor::Ckks {
                    ct,
                    shape,
                    level,
                    scale,
                })
            }
            _ => Err(TensorError::Unsupported {
                op: "add",
                repr: "CKKS",
                reason: "add CKKS tensors to CKKS tensors or public values",
            }),
        }
    }

    /// `x` brought to the level and scale of `other` if it is higher (module
    /// documentation), else `x` as it is.
    fn align(
        &self,
        x: &ckks::Ciphertext,
        other: &ckks::Ciphertext,
    ) -> Result<ckks::Ciphertext, TensorError> {
        let (lx, ly) = (x.level(), other.level());
        if lx <= ly {
            return Ok(x.clone());
        }
        let dropped = self.ev.drop_to_level(x, ly + 1)?;
        let q = self.params().prime(ly + 1) as f64;
        let aligned = self
            .ev
            .mul_const(&dropped, 1.0, other.scale() * q / x.scale())?;
        Ok(self.ev.rescale(&aligned)?)
    }

    /// The reply to the key owner: `x`'s ciphertext re-randomized with the owner's public
    /// key `enc` (its second polynomial then carries nothing of the server's operands) and,
    /// with `flood_log2`, its noise flooded by a uniform noise of `2^flood_log2` per
    /// coefficient ([`Evaluator::flood`]), so that the noise no longer depends on the
    /// server's operands. The bound the flooding is sized from is the caller's (a model's
    /// flood plan, the model layer's `CkksFloodPlan`).
    pub fn reply<R: rand::RngCore + rand::CryptoRng + ?Sized>(
        &self,
        enc: &ckks::Encryptor,
        x: &PrivateTensor,
        flood_log2: Option<u32>,
        rng: &mut R,
    ) -> Result<ckks::Ciphertext, TensorError> {
        let (ct, ..) = parts(x, "reply")?;
        let ct = ct.ok_or(TensorError::Invalid {
            what: "CKKS reply",
            detail: "this side holds no ciphertext".into(),
        })?;
        let y = enc.rerandomize(&ct.ct, rng)?;
        Ok(match flood_log2 {
            Some(bits) => self.ev.flood(&y, bits, rng)?,
            None => y,
        })
    }
}

/// The key owner's side of an input: `x` (at most `N/2` values) in the replicated layout,
/// encoded at `level` and the default scale, encrypted under the secret key (seeded: half
/// the bytes of a public-key encryption). What a client sends, in a session
/// ([`Session::encrypt`](super::Session::encrypt)) or to a server's CKKS model.
pub fn encrypt_input<R: rand::RngCore + rand::CryptoRng + ?Sized>(
    params: &Arc<CkksParameters>,
    dec: &ckks::Decryptor,
    x: &[f64],
    level: usize,
    rng: &mut R,
) -> Result<ckks::Ciphertext, TensorError> {
    let slots = params.slots();
    let period = x.len().max(1).next_power_of_two();
    if period > slots {
        return Err(TensorError::Shape {
            what: "CKKS tensor (at most N/2 elements)",
            left: vec![x.len()],
            right: vec![slots],
        });
    }
    let pt = ckks::Encoder::new(params).encode_f64(
        &CkksTensor::layout(x, period, slots),
        level,
        params.default_scale(),
    )?;
    Ok(dec.encrypt_symmetric(&pt, rng)?)
}

/// The key owner's side of a reply: its first values, as a tensor of `shape` (refused with
/// the sizes if the ciphertext has fewer slots).
pub fn decrypt_output(
    dec: &ckks::Decryptor,
    ct: &ckks::Ciphertext,
    shape: &[usize],
) -> Result<ArrayD<f64>, TensorError> {
    let values = dec.decrypt_f64(ct)?;
    let len: usize = shape.iter().product();
    let values = values.get(..len).ok_or_else(|| TensorError::Shape {
        what: "CKKS reply (outputs vs slots)",
        left: shape.to_vec(),
        right: vec![values.len()],
    })?;
    Ok(ArrayD::from_shape_vec(IxDyn(shape), values.to_vec()).expect("length checked"))
}

/// What a CKKS program needs from its runner: a [`Session`](super::Session) (both parties,
/// key uploads on first use) or a [`CkksEval`] (the server alone, keys given). A model
/// written against it (the model layer's `CkksModel::forward`) runs on either.
pub trait CkksOps {
    /// `M x + b` by a prepared map.
    fn linear_ckks(
        &mut self,
        x: &PrivateTensor,
        w: &PreparedCkksLinear,
    ) -> Result<PrivateTensor, TensorError>;
    /// Elementwise square.
    fn square(&mut self, x: &PrivateTensor) -> Result<PrivateTensor, TensorError>;
    /// Elementwise polynomial.
    fn poly(&mut self, x: &PrivateTensor, coeffs: &[f64]) -> Result<PrivateTensor, TensorError>;
    /// Sum, aligned in level and scale.
    fn add(&mut self, a: &PrivateTensor, b: &PrivateTensor) -> Result<PrivateTensor, TensorError>;
    /// Another shape of the same length.
    fn reshape(&mut self, x: &PrivateTensor, shape: &[usize])
        -> Result<PrivateTensor, TensorError>;
}

impl CkksOps for CkksEval<'_> {
    fn linear_ckks(
        &mut self,
        x: &PrivateTensor,
        w: &PreparedCkksLinear,
    ) -> Result<PrivateTensor, TensorError> {
        self.linear(x, w)
    }

    fn square(&mut self, x: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        CkksEval::square(self, x)
    }

    fn poly(&mut self, x: &PrivateTensor, coeffs: &[f64]) -> Result<PrivateTensor, TensorError> {
        CkksEval::poly(self, x, coeffs)
    }

    fn add(&mut self, a: &PrivateTensor, b: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        CkksEval::add(self, a, b, false)
    }

    fn reshape(
        &mut self,
        x: &PrivateTensor,
        shape: &[usize],
    ) -> Result<PrivateTensor, TensorError> {
        CkksEval::reshape(self, x, shape)
    }
}
