//! The HE representations of a [`PrivateTensor`] and the conversions between them and
//! secret shares.
//!
//! - **Shares -> BFV** ([`Session::to_bfv`]): the client encrypts its share under its own
//!   key (coefficient encoding, seeded symmetric encryption); the server adds its share as a
//!   plaintext. The plaintext modulus is `2^40`, the ring of the shares, so the sum is the
//!   value itself with no wrap to correct, and the fixed-point scale is unchanged.
//! - **BFV -> shares** ([`Session::to_shares`]): the server subtracts a fresh polynomial
//!   uniform modulo `t` (its share), floods the noise with 40 bits plus the union bound over
//!   the session (at most `2^32` revealed coefficients) above its bound on the noise it
//!   holds (statistical distance at most `2^-40` over the whole session from ciphertexts
//!   independent of how they were computed), and sends the ciphertext; the client decrypts its share.
//! - **Client input -> CKKS** ([`Session::encrypt`]): the client encrypts a value it owns;
//!   the server computes on it (additions, products with its own matrices, squares and
//!   polynomials: the operations of [`super::CkksEval`]) with the keys the client uploads
//!   when an operation first needs them, or the keys the caller gave
//!   ([`super::SessionSetup::with_ckks`]), and [`Session::reveal`] returns the result to
//!   the client.
//! - **Shares -> CKKS** ([`Session::to_ckks`]): the shares' wrap over `Z_2^40` is removed
//!   with one two-party comparison per element (about the price of a ReLU) and a plaintext
//!   product that costs two levels; exact up to CKKS precision. Offered for callers; the cost
//!   model does not pick it on its own (none of the networks here gains from it: BFV with
//!   `t = 2^40` does the linear layers without the comparison).
//! - **CKKS -> shares** is not offered: a statistically hiding mask for a real value (40
//!   bits above the value's range, on top of the 12 fractional bits the shares need)
//!   requires about 90 bits of exact precision in the decrypted slots, beyond CKKS at these
//!   parameters (the decoder works in double precision), and masking the coefficients
//!   instead leaves shares of the coefficient encoding, which the slot transform does not
//!   map to shares of the values. CKKS results are revealed to the client instead.

use std::collections::BTreeMap;
use std::sync::Arc;

use cipherml_he::bfv::{Ciphertext, CoeffWindow, Decryptor, Encoder, Evaluator};
use cipherml_he::ckks::{self, CkksParameters, CkksParametersLiteral};
use cipherml_he::rlwe::{GaloisKeys, PublicKey, RelinKey, SecretKey};
use cipherml_he::serialize;
use cipherml_he::tensor::{CkksTensor, CoeffMatVec};
use cipherml_mpc::net::Channel;
use ndarray::ArrayD;

use super::ckks::{
    decrypt_output, encrypt_input, CkksEval, CkksEvalKeys, CkksSessionKeys, PreparedCkksLinear,
};
use super::{PrivateTensor, Role, Session, TensorError};

/// The server's side of a [`PrivateTensor::Bfv`]: one ciphertext per row chunk, and a bound
/// on their noise (`log2`).
#[derive(Debug, Clone)]
pub struct BfvTensorData {
    /// The ciphertexts, row by row, each row in `ceil(row_len / N)` chunks.
    pub cts: Vec<Ciphertext>,
    /// `log2` of a bound on the absolute noise of every ciphertext.
    pub noise_log2: f64,
}

/// CKKS keys and parameters of a session: given by the caller
/// ([`super::SessionSetup::with_ckks`]), or created when the first CKKS value is (keys
/// then uploaded when an operation first needs them).
pub(crate) struct CkksState {
    params: Arc<CkksParameters>,
    ev: ckks::Evaluator,
    /// Client only.
    dec: Option<ckks::Decryptor>,
    /// Server only: the client's public key, to re-randomize what it returns.
    enc: Option<ckks::Encryptor>,
    sk: Option<Arc<SecretKey>>,
    /// Server: the keys the caller gave.
    given: Option<Arc<CkksEvalKeys>>,
    /// Client: the Galois elements of the keys the server was given.
    given_galois: Vec<usize>,
    /// Server: the relinearization key once uploaded; client: whether it was.
    rlk: Option<RelinKey>,
    rlk_sent: bool,
    /// Galois keys by element set (server); the sets already sent (client).
    galois: BTreeMap<Vec<usize>, Option<GaloisKeys>>,
}

impl CkksState {
    /// The state of a session whose CKKS keys the caller set up.
    pub(super) fn given(
        params: Arc<CkksParameters>,
        keys: CkksSessionKeys,
    ) -> Result<Self, TensorError> {
        let (dec, sk, given, given_galois) = match keys {
            CkksSessionKeys::Client { sk, galois } => (
                Some(ckks::Decryptor::new(&params, sk.clone())?),
                Some(sk),
                None,
                galois,
            ),
            CkksSessionKeys::Server(k) => {
                if k.enc.params().id() != params.id() {
                    return Err(TensorError::Invalid {
                        what: "session CKKS keys",
                        detail: format!(
                            "keys of parameters {:016x}, the session's are {:016x}",
                            k.enc.params().id(),
                            params.id()
                        ),
                    });
                }
                (None, None, Some(k), Vec::new())
            }
        };
        Ok(Self {
            ev: ckks::Evaluator::new(&params),
            params,
            dec,
            enc: None,
            sk,
            given,
            given_galois,
            rlk: None,
            rlk_sent: true,
            galois: BTreeMap::new(),
        })
    }

    /// Whether the keys the caller gave cover the Galois `elements` (both sides decide
    /// alike if the caller gave both the same set).
    fn given_covers(&self, elements: &[usize]) -> bool {
        match &self.given {
            Some(k) => {
                let have: std::collections::BTreeSet<usize> = k.galois.elements().collect();
                elements.iter().all(|e| have.contains(e))
            }
            None => elements.iter().all(|e| self.given_galois.contains(e)),
        }
    }

    /// The evaluation with the keys this side holds for an operation that needs the
    /// Galois `elements` (the server's keys; none on the client, which holds no
    /// ciphertext).
    fn eval(&self, elements: &[usize]) -> CkksEval<'_> {
        let mut e = CkksEval::new(&self.ev);
        if let Some(k) = &self.given {
            e = e.relin(&k.rlk);
            if self.given_covers(elements) {
                return e.galois(&k.galois);
            }
        }
        if let Some(rlk) = &self.rlk {
            e = e.relin(rlk);
        }
        if let Some(Some(gk)) = self.galois.get(elements) {
            e = e.galois(gk);
        }
        e
    }

    /// The client's public key (server side).
    fn encryptor(&self) -> Option<&ckks::Encryptor> {
        self.given.as_ref().map(|k| &k.enc).or(self.enc.as_ref())
    }
}

/// The client's public key on the server's side (set up with the session).
pub(super) fn server_key(
    rerand: &Option<cipherml_he::bfv::Encryptor>,
) -> Result<&cipherml_he::bfv::Encryptor, TensorError> {
    rerand.as_ref().ok_or(TensorError::Invalid {
        what: "session",
        detail: "the server's side has no client public key".into(),
    })
}

/// An HE tensor used on the side that does not hold its ciphertext.
fn no_ciphertext(what: &'static str) -> TensorError {
    TensorError::Invalid {
        what,
        detail: "the server's side holds no ciphertext".into(),
    }
}

/// The level of a CKKS operand.
fn ckks_level(t: &PrivateTensor, op: &'static str) -> Result<usize, TensorError> {
    match t {
        PrivateTensor::Ckks { level, .. } => Ok(*level),
        _ => Err(TensorError::Unsupported {
            op,
            repr: "non-CKKS",
            reason: "the left operand must be a CKKS tensor",
        }),
    }
}

/// Bound on the noise of a fresh symmetric encryption plus a plaintext share. For a
/// power-of-two `t` (every `Session`), messages are encoded `round(Q m / t)`: the plaintext
/// addition adds at most 1/2, and the fresh noise bound stands. Otherwise (`floor(Q / t)
/// m`) the carry of the addition adds up to `Q mod t < t`.
fn fresh_noise_log2(params: &cipherml_he::bfv::BfvParameters) -> f64 {
    if params.rounds_messages() {
        cipherml_he::tensor::FRESH_NOISE_LOG2 + 1.0
    } else {
        (params.plaintext_modulus() as f64).log2() + 1.0
    }
}

fn row_len(shape: &[usize]) -> usize {
    shape.last().copied().unwrap_or(1).max(1)
}

impl<C: Channel> Session<C> {
    /// Counts `coefficients` more revealed to the client (both parties count alike) and
    /// returns the statistical bits of their flooding: `flood_bits` plus the union bound
    /// over the session ([`super::SessionConfig::reveal_log2`]). Refuses past the
    /// session's cap.
    pub(super) fn reveal_flood_bits(&mut self, coefficients: usize) -> Result<u32, TensorError> {
        let max = 1u64 << self.config.reveal_log2.min(63);
        let requested = coefficients as u64;
        if self.revealed.saturating_add(requested) > max {
            return Err(TensorError::SessionExhausted {
                revealed: self.revealed,
                requested,
                max,
            });
        }
        self.revealed += requested;
        Ok(self.config.reply_flood_bits())
    }

    /// Converts `t` to a BFV ciphertext held by the server (shares -> HE; a public or
    /// private value is shared first).
    pub fn to_bfv(&mut self, t: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        if let PrivateTensor::Bfv { .. } = t {
            return Ok(t.clone());
        }
        let (share, shape) = self.shares_of(t)?;
        let n = self.params.degree();
        let k = row_len(&shape);
        let encoder = Encoder::new(&self.params);
        let chunks: Vec<&[u64]> = share.chunks(k).flat_map(|row| row.chunks(n)).collect();
        match &self.sk {
            Some(sk) => {
                let dec = Decryptor::new(&self.params, sk.clone())?;
                for c in &chunks {
                    let ct =
                        dec.encrypt_symmetric(&encoder.encode_coeffs_u64(c)?, self.party.rng())?;
                    self.party.channel().send(&ct.to_bytes(&self.params))?;
                }
                self.party.channel().flush()?;
                Ok(PrivateTensor::Bfv { data: None, shape })
            }
            None => {
                let ev = Evaluator::new(&self.params);
                // Fresh encryptions: at most two polynomials at the top level.
                let max =
                    serialize::ciphertext_size(&self.params, self.params.max_level(), 2, false)?;
                let mut cts = Vec::with_capacity(chunks.len());
                for c in &chunks {
                    let msg = self.party.channel().recv_limited(max)?;
                    let ct = Ciphertext::from_bytes(&self.params, &msg)?;
                    cts.push(ev.add_plain(&ct, &encoder.encode_coeffs_u64(c)?)?);
                }
                Ok(PrivateTensor::Bfv {
                    data: Some(BfvTensorData {
                        cts,
                        noise_log2: fresh_noise_log2(&self.params),
                    }),
                    shape,
                })
            }
        }
    }

    /// Converts `t` to secret shares. From BFV: a fresh uniform mask and 40 bits of noise
    /// flooding (see the module documentation). Shares and public or private values are
    /// shared as usual. CKKS values cannot be converted (module documentation).
    pub fn to_shares(&mut self, t: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        let (share, shape) = self.shares_of(t)?;
        Ok(self.shared(share, shape))
    }

    /// BFV -> shares (called by `shares_of`).
    pub(super) fn bfv_shares(
        &mut self,
        data: Option<&BfvTensorData>,
        shape: &[usize],
    ) -> Result<Vec<u64>, TensorError> {
        let n = self.params.degree();
        let k = row_len(shape);
        let rows = shape.iter().product::<usize>() / k;
        // (ciphertext, coefficient) of every value, row-major.
        let per_row = k.div_ceil(n);
        let positions: Vec<(usize, usize)> = (0..rows)
            .flat_map(|r| (0..k).map(move |j| (r * per_row + j / n, j % n)))
            .collect();
        let ring = self.fixed.ring();
        let flood_bits = self.reveal_flood_bits(positions.len())?;
        Ok(match (&self.sk, data) {
            (Some(sk), _) => crate::link::bfv_linear_client(
                &self.params,
                ring,
                &mut self.party,
                sk,
                (&[], CoeffWindow::full(n)),
                &positions,
            )?,
            (None, Some(d)) => crate::link::bfv_linear_server(
                &self.params,
                ring,
                flood_bits,
                &mut self.party,
                server_key(&self.rerand)?,
                (0, CoeffWindow::full(n)),
                &positions,
                d.noise_log2,
                vec![0; positions.len()],
                |_, _| Ok(d.cts.clone()),
            )?,
            (None, None) => return Err(no_ciphertext("BFV tensor")),
        })
    }

    /// Sum of two BFV tensors (both converted to BFV first if needed).
    pub(super) fn bfv_add(
        &mut self,
        a: &PrivateTensor,
        b: &PrivateTensor,
        negate_b: bool,
    ) -> Result<PrivateTensor, TensorError> {
        let b = if negate_b { self.neg(b)? } else { b.clone() };
        let (a, b) = (self.to_bfv(a)?, self.to_bfv(&b)?);
        let shape = a.shape();
        if shape != b.shape() {
            return Err(TensorError::Shape {
                what: "add",
                left: shape,
                right: b.shape(),
            });
        }
        let data = match (&a, &b) {
            (
                PrivateTensor::Bfv { data: Some(x), .. },
                PrivateTensor::Bfv { data: Some(y), .. },
            ) => {
                let ev = Evaluator::new(&self.params);
                let cts = x
                    .cts
                    .iter()
                    .zip(&y.cts)
                    .map(|(p, q)| ev.add(p, q))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(BfvTensorData {
                    cts,
                    noise_log2: x.noise_log2.max(y.noise_log2) + 1.0,
                })
            }
            _ => None,
        };
        Ok(PrivateTensor::Bfv { data, shape })
    }

    /// `X W` for `X` under BFV and `W` held by the server: one coefficient-encoded product
    /// per row, converted to shares (mask and flooding) as it is returned. Scale `2^2f`.
    pub(super) fn bfv_matmul_rows(
        &mut self,
        x: &PrivateTensor,
        wt: &ndarray::Array2<i64>,
    ) -> Result<Vec<u64>, TensorError> {
        let (n_out, k) = wt.dim();
        let encoder = Encoder::new(&self.params);
        let mv = CoeffMatVec::new_capped(&encoder, wt.view(), self.config.weight_cap())?;
        let positions = mv.output_positions();
        let ring = self.fixed.ring();
        let rows = x.shape().iter().product::<usize>() / k;
        let per_row = mv.input_chunks();
        let mut out = Vec::with_capacity(rows * n_out);
        for r in 0..rows {
            let flood_bits = self.reveal_flood_bits(positions.len())?;
            let y = match (&self.sk, x) {
                (Some(sk), _) => crate::link::bfv_linear_client(
                    &self.params,
                    ring,
                    &mut self.party,
                    sk,
                    (&[], CoeffWindow::full(self.params.degree())),
                    &positions,
                )?,
                (None, PrivateTensor::Bfv { data: Some(d), .. }) => {
                    // The input's noise is multiplied by the weights (not added to the
                    // bound): `(2^noise_in + 1/2) L1(w)` per chunk.
                    let noise = mv.noise_bound_log2_from(
                        self.params.degree(),
                        self.params.plaintext_modulus(),
                        d.noise_log2,
                    );
                    let row = &d.cts[r * per_row..(r + 1) * per_row];
                    crate::link::bfv_linear_server(
                        &self.params,
                        ring,
                        flood_bits,
                        &mut self.party,
                        server_key(&self.rerand)?,
                        (0, CoeffWindow::full(self.params.degree())),
                        &positions,
                        noise,
                        vec![0; n_out],
                        |ev, _| mv.apply(ev, row),
                    )?
                }
                _ => return Err(no_ciphertext("BFV tensor")),
            };
            out.extend(y);
        }
        Ok(out)
    }

    /// The session's CKKS parameters (created with the session's first CKKS value, or
    /// now, with the client's public key sent to the server: both parties call it at the
    /// same point).
    pub fn ckks_params(&mut self) -> Result<Arc<CkksParameters>, TensorError> {
        Ok(self.ckks_state()?.params.clone())
    }

    fn ckks_state(&mut self) -> Result<&mut CkksState, TensorError> {
        if self.ckks.is_none() {
            // N = 8192 with three 36-bit levels (a product with a matrix and a cubic, say).
            let params = CkksParameters::new(&CkksParametersLiteral {
                degree: 8192,
                ciphertext_moduli_bits: vec![50, 36, 36, 36],
                special_moduli_bits: vec![50],
                scale_bits: 36,
            })?;
            // The client's public key goes to the server when the session's first CKKS
            // value is made: the server re-randomizes every ciphertext it returns with it.
            let (sk, dec, enc) = if self.role == Role::Client {
                let sk = Arc::new(SecretKey::random(params.context(), self.party.rng()));
                let dec = ckks::Decryptor::new(&params, sk.clone())?;
                let pk = PublicKey::new(&sk, self.party.rng());
                self.party.channel().send(&pk.to_bytes(params.context()))?;
                (Some(sk), Some(dec), None)
            } else {
                let size = serialize::public_key_size(params.context());
                let msg = self.party.channel().recv_limited(size)?;
                let pk = PublicKey::from_bytes(params.context(), &msg)?;
                (None, None, Some(ckks::Encryptor::new(&params, pk)?))
            };
            self.ckks = Some(CkksState {
                ev: ckks::Evaluator::new(&params),
                params,
                dec,
                enc,
                sk,
                given: None,
                given_galois: Vec::new(),
                rlk: None,
                rlk_sent: false,
                galois: BTreeMap::new(),
            });
        }
        Ok(self.ckks.as_mut().expect("set above"))
    }

    /// A private value of the client, encrypted under its CKKS key and held by the server
    /// (`provide` runs on the client only). Real numbers; at most `N/2 = 4096` elements.
    pub fn encrypt(
        &mut self,
        owner: Role,
        shape: &[usize],
        provide: impl FnOnce() -> ArrayD<f64>,
    ) -> Result<PrivateTensor, TensorError> {
        if owner != Role::Client {
            return Err(TensorError::Unsupported {
                op: "encrypt",
                repr: "CKKS",
                reason: "only the client holds the CKKS key; share a server value instead",
            });
        }
        let len: usize = shape.iter().product();
        let period = len.max(1).next_power_of_two();
        let role = self.role;
        let state = self.ckks_state()?;
        let params = state.params.clone();
        let slots = params.degree() / 2;
        if period > slots {
            return Err(TensorError::Shape {
                what: "CKKS tensor (at most N/2 elements)",
                left: shape.to_vec(),
                right: vec![slots],
            });
        }
        if role == Role::Client {
            let value = provide();
            if value.shape() != shape {
                return Err(TensorError::ProvidedShape {
                    declared: shape.to_vec(),
                    found: value.shape().to_vec(),
                });
            }
            if let Some(v) = value.iter().find(|v| !v.is_finite()) {
                return Err(TensorError::Invalid {
                    what: "value",
                    detail: format!("non-finite element {v}"),
                });
            }
            let flat: Vec<f64> = value.iter().copied().collect();
            let state = self.ckks.as_ref().expect("created");
            let dec = state.dec.as_ref().expect("client");
            let ct = encrypt_input(&params, dec, &flat, params.max_level(), self.party.rng())?;
            self.party.channel().send(&ct.to_bytes(&params))?;
            self.party.channel().flush()?;
            Ok(PrivateTensor::Ckks {
                ct: None,
                shape: shape.to_vec(),
                level: params.max_level(),
                scale: params.default_scale(),
            })
        } else {
            let max = serialize::ckks_ciphertext_size(&params, params.max_level(), 2, false)?;
            let msg = self.party.channel().recv_limited(max)?;
            let ct = ckks::Ciphertext::from_bytes(&params, &msg)?;
            let state = self.ckks.as_ref().expect("created");
            CkksEval::new(&state.ev).input(ct, shape, params.max_level())
        }
    }

    /// Converts `t` (shares, or a public or private value, which is shared first) to a CKKS
    /// tensor held by the server, exact up to CKKS precision, two levels down.
    ///
    /// The shares, offset to unsigned `u0 + u1 = x + 2^(l-1) + w 2^l`, wrap (`w = 1`) or not;
    /// one `l`-bit millionaire comparison gives XOR shares `w0, w1` of the wrap. The client
    /// encrypts `u0 / 2^f` and `w0 2^(l-f)`; the server computes
    /// `x / 2^f = u0/2^f + u1/2^f - 2^(l-f) (w1 + (1 - 2 w1) w0) - 2^(l-1-f)`, the product with
    /// its sign vector `1 - 2 w1` costing two levels (a one-prime plaintext scale would leave
    /// its rounding, times the `2^(l-f)` wrap weight, above the fixed-point precision). Large
    /// intermediate values
    /// (up to `2^(l-f)`) only live at the top levels, where the modulus has room; CKKS error
    /// is absolute, so the small result keeps its precision. Cost per element: one `l`-bit
    /// comparison (about a ReLU's) and two ciphertexts for up to `N/2` elements; the cost
    /// model does not choose it on its own (no network here pays for it), callers do.
    pub fn to_ckks(&mut self, t: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        if let PrivateTensor::Ckks { .. } = t {
            return Ok(t.clone());
        }
        let (share, shape) = self.shares_of(t)?;
        let ring = self.fixed.ring();
        let l = ring.bits();
        let f = self.fixed.frac_bits();
        let p0 = self.party.is_p0();
        let half = 1u64 << (l - 1);
        let u: Vec<u64> = share
            .iter()
            .map(|&v| if p0 { ring.add(v, half) } else { v })
            .collect();
        let wrap_in: Vec<u64> = if p0 {
            u.clone()
        } else {
            u.iter().map(|&v| ring.mask() - v).collect()
        };
        let w = cipherml_mpc::protocols::compare::millionaire(&mut self.party, l, &wrap_in)?;
        let params = self.ckks_state()?.params.clone();
        let state = self.ckks.as_ref().expect("created");
        let top = params.max_level();
        if top < 2 {
            return Err(TensorError::Unsupported {
                op: "conversion to CKKS",
                repr: "shares",
                reason: "needs two levels",
            });
        }
        let slots = params.degree() / 2;
        let period = u.len().max(1).next_power_of_two();
        if period > slots {
            return Err(TensorError::Shape {
                what: "CKKS tensor (at most N/2 elements)",
                left: shape,
                right: vec![slots],
            });
        }
        let sf = (f as f64).exp2();
        let encoder = ckks::Encoder::new(&params);
        let delta = params.default_scale();
        let encode = |v: Vec<f64>, level: usize, scale: f64| {
            encoder.encode_f64(&CkksTensor::layout(&v, period, slots), level, scale)
        };
        if p0 {
            let a: Vec<f64> = u.iter().map(|&v| v as f64 / sf).collect();
            // The wrap bit pre-multiplied by its weight 2^(l-f): multiplying a ciphertext by
            // that constant would multiply its noise too.
            let weight = ((l - f) as f64).exp2();
            let b: Vec<f64> = w.iter().map(|&v| v as f64 * weight).collect();
            let dec = state.dec.as_ref().expect("client");
            for v in [a, b] {
                let ct = dec.encrypt_symmetric(&encode(v, top, delta)?, self.party.rng())?;
                self.party.channel().send(&ct.to_bytes(&params))?;
            }
            self.party.channel().flush()?;
            return Ok(PrivateTensor::Ckks {
                ct: None,
                shape,
                level: top - 2,
                scale: delta,
            });
        }
        let max = serialize::ckks_ciphertext_size(&params, top, 2, false)?;
        let mut cts = Vec::with_capacity(2);
        for _ in 0..2 {
            let msg = self.party.channel().recv_limited(max)?;
            let ct = ckks::Ciphertext::from_bytes(&params, &msg)?;
            ct.check_fresh(top, delta)?;
            cts.push(ct);
        }
        let ev = &state.ev;
        // (1 - 2 w1) w0 2^(l-f). The sign vector is encoded at the product of the two primes
        // the next two rescalings drop, so the scale returns to Delta and the plaintext's
        // rounding (0.5 per coefficient), multiplied by a message of 2^(l-f) Delta, stays
        // below 2^-30 of a unit after the division by about 2^72.
        let sign: Vec<f64> = w.iter().map(|&b| 1.0 - 2.0 * b as f64).collect();
        let sign_scale = params.prime(top) as f64 * params.prime(top - 1) as f64;
        let mixed = ev.mul_plain(&cts[1], &encode(sign, top, sign_scale)?)?;
        let mixed = ev.rescale(&ev.rescale(&mixed)?)?;
        let out = top - 2;
        let wrap_scale = ((l - f) as f64).exp2();
        let constant: Vec<f64> = u
            .iter()
            .zip(&w)
            .map(|(&v, &b)| v as f64 / sf - wrap_scale * b as f64 - ((l - 1 - f) as f64).exp2())
            .collect();
        let x = ev.add_plain(
            &ev.drop_to_level(&cts[0], out)?,
            &encode(constant, out, delta)?,
        )?;
        let x = ev.sub(&x, &mixed)?;
        Ok(PrivateTensor::Ckks {
            ct: Some(CkksTensor::from_ciphertext(x, &shape, period)?),
            shape,
            level: out,
            scale: delta,
        })
    }

    /// Makes sure the server has the relinearization key (the client sends it once, unless
    /// the caller gave the keys).
    fn ckks_rlk(&mut self) -> Result<(), TensorError> {
        let state = self.ckks_state()?;
        if state.rlk_sent {
            return Ok(());
        }
        state.rlk_sent = true;
        let params = state.params.clone();
        if let Some(sk) = state.sk.clone() {
            let rlk = RelinKey::new(&sk, self.party.rng());
            self.party.channel().send(&rlk.to_bytes(params.context()))?;
            self.party.channel().flush()?;
        } else {
            let size = serialize::relin_key_size(params.context());
            let msg = self.party.channel().recv_limited(size)?;
            let rlk = RelinKey::from_bytes(params.context(), &msg)?;
            self.ckks.as_mut().expect("created").rlk = Some(rlk);
        }
        Ok(())
    }

    /// Makes sure the server has Galois keys for exactly `elements` (sent once per set,
    /// none if the keys the caller gave cover them).
    fn ckks_galois(&mut self, elements: Vec<usize>) -> Result<(), TensorError> {
        let state = self.ckks_state()?;
        if state.galois.contains_key(&elements) || state.given_covers(&elements) {
            return Ok(());
        }
        let params = state.params.clone();
        if let Some(sk) = state.sk.clone() {
            let gk = GaloisKeys::new(&sk, &elements, self.party.rng())?;
            self.party.channel().send(&gk.to_bytes(params.context()))?;
            self.party.channel().flush()?;
            self.ckks_state()?.galois.insert(elements, None);
        } else {
            let size = serialize::galois_keys_size(params.context(), elements.len());
            let msg = self.party.channel().recv_limited(size)?;
            let gk = GaloisKeys::from_bytes(params.context(), &msg)?;
            let got: Vec<usize> = gk.elements().collect();
            if got != elements {
                return Err(TensorError::Invalid {
                    what: "Galois keys",
                    detail: format!("elements {got:?}, expected {elements:?}"),
                });
            }
            self.ckks_state()?.galois.insert(elements, Some(gk));
        }
        Ok(())
    }

    /// Refuses a server matrix under CKKS unless both parties declared it public
    /// ([`Session::allow_unflooded_ckks`]).
    fn check_unflooded(&self, op: &'static str) -> Result<(), TensorError> {
        if self.unflooded_ckks {
            return Ok(());
        }
        Err(TensorError::Unsupported {
            op,
            repr: "CKKS",
            reason: "CKKS results are not noise-flooded, so a server matrix under CKKS is \
                     not hidden from the client: keep secret weights on BFV or shares, or \
                     call Session::allow_unflooded_ckks on both sides if they are public",
        })
    }

    /// `M x + b` for a CKKS tensor `x` and a map the server prepared once
    /// ([`PreparedCkksLinear`], at `x`'s level; the client's copy from the shapes): the
    /// diagonal method, one level, the scale kept; Galois keys uploaded on first use
    /// unless the caller gave them. Like every server matrix under CKKS it needs
    /// [`Session::allow_unflooded_ckks`] (CKKS reveals are not flooded).
    pub fn linear_ckks(
        &mut self,
        x: &PrivateTensor,
        w: &PreparedCkksLinear,
    ) -> Result<PrivateTensor, TensorError> {
        ckks_level(x, "linear map")?;
        self.check_unflooded("linear map")?;
        self.ckks_galois(w.galois_elements().to_vec())?;
        let state = self.ckks.as_ref().expect("created");
        state.eval(w.galois_elements()).linear(x, w)
    }

    /// `x W` for a CKKS vector `x` (shape `(k,)` or `(1, k)`) and `W` `(k, n)` held by the
    /// server: prepared on the fly at `x`'s level ([`PreparedCkksLinear`]) and applied by
    /// [`Session::linear_ckks`].
    pub(super) fn ckks_matmul(
        &mut self,
        x: &PrivateTensor,
        w: &PrivateTensor,
    ) -> Result<PrivateTensor, TensorError> {
        let (sx, sw) = (x.shape(), w.shape());
        let k = sx.iter().product::<usize>();
        if sw.len() != 2 || sw[0] != k || sx.iter().rev().skip(1).any(|&d| d != 1) {
            return Err(TensorError::Shape {
                what: "CKKS matmul (a vector times a matrix)",
                left: sx,
                right: sw,
            });
        }
        let n = sw[1];
        let level = ckks_level(x, "matmul")?;
        if matches!(
            w,
            PrivateTensor::Private {
                owner: Role::Server,
                ..
            }
        ) {
            self.check_unflooded("matmul")?;
        }
        let matrix = match w {
            PrivateTensor::Private {
                owner: Role::Server,
                value: Some(v),
                ..
            } => v
                .view()
                .into_dimensionality::<ndarray::Ix2>()
                .map_err(|_| TensorError::Shape {
                    what: "matmul",
                    left: vec![k],
                    right: v.shape().to_vec(),
                })?
                .t()
                .to_owned(),
            PrivateTensor::Private {
                owner: Role::Server,
                ..
            } => ndarray::Array2::zeros((n, k)),
            _ => {
                return Err(TensorError::Unsupported {
                    op: "matmul",
                    repr: "CKKS",
                    reason: "the right operand must be a matrix the server holds in the clear",
                })
            }
        };
        let mut shape = sx;
        *shape.last_mut().expect("non-empty") = n;
        let params = self.ckks_state()?.params.clone();
        let prepared =
            PreparedCkksLinear::new(&params, "matmul", matrix.view(), None, level, &shape)?;
        self.linear_ckks(x, &prepared)
    }

    /// Elementwise square (`coeffs = None`, one level) or polynomial of a CKKS tensor (the
    /// relinearization key is uploaded on first use unless the caller gave it).
    pub(super) fn ckks_poly(
        &mut self,
        x: &PrivateTensor,
        coeffs: Option<&[f64]>,
    ) -> Result<PrivateTensor, TensorError> {
        ckks_level(x, "polynomial")?;
        self.ckks_rlk()?;
        let eval = self.ckks.as_ref().expect("created").eval(&[]);
        match coeffs {
            None => eval.square(x),
            Some(c) => eval.poly(x, c),
        }
    }

    /// Sum of two CKKS tensors (aligned in level and scale, see [`CkksEval::add`]), or of a
    /// CKKS tensor and a public value.
    pub(super) fn ckks_add(
        &mut self,
        a: &PrivateTensor,
        b: &PrivateTensor,
        negate_b: bool,
    ) -> Result<PrivateTensor, TensorError> {
        self.ckks_state()?.eval(&[]).add(a, b, negate_b)
    }

    /// A CKKS tensor with another shape of the same length.
    pub(super) fn ckks_reshape(
        &mut self,
        t: &PrivateTensor,
        shape: &[usize],
    ) -> Result<PrivateTensor, TensorError> {
        self.ckks_state()?.eval(&[]).reshape(t, shape)
    }

    /// Reveals a CKKS tensor to the client (the key owner): the server re-randomizes the
    /// ciphertext with the client's public key (so its second polynomial carries nothing
    /// of the server's operands) and sends it ([`CkksEval::reply`]). Its noise is **not
    /// flooded**: the session's CKKS parameters have no room for a flooding that keeps
    /// precision (SECURITY.md, "Noise flooding"); do not compute on server secrets under
    /// CKKS when they must stay hidden from the client.
    pub(super) fn ckks_reveal(
        &mut self,
        t: &PrivateTensor,
        to: Role,
    ) -> Result<Option<ArrayD<f64>>, TensorError> {
        if to != Role::Client {
            return Err(TensorError::Unsupported {
                op: "reveal to the server",
                repr: "CKKS",
                reason: "only the client can decrypt; convert through shares with BFV instead",
            });
        }
        let shape = t.shape();
        let params = self.ckks_state()?.params.clone();
        match t {
            PrivateTensor::Ckks { ct: Some(_), .. } => {
                let state = self.ckks.as_ref().expect("created");
                let enc = state.encryptor().ok_or(TensorError::Invalid {
                    what: "session",
                    detail: "the server's side has no CKKS public key of the client".into(),
                })?;
                let ct = state.eval(&[]).reply(enc, t, None, self.party.rng())?;
                self.party.channel().send(&ct.to_bytes(&params))?;
                self.party.channel().flush()?;
                Ok(None)
            }
            _ if self.role == Role::Client => {
                // Any ciphertext the parameters allow (three polynomials at the top level
                // at most).
                let max = serialize::ckks_ciphertext_size(&params, params.max_level(), 3, false)?;
                let msg = self.party.channel().recv_limited(max)?;
                let ct = ckks::Ciphertext::from_bytes(&params, &msg)?;
                let state = self.ckks.as_ref().expect("created");
                let dec = state.dec.as_ref().expect("client");
                Ok(Some(decrypt_output(dec, &ct, &shape)?))
            }
            _ => Err(no_ciphertext("CKKS tensor")),
        }
    }
}

/// A session runs CKKS programs (a model layer's `CkksModel`, say) with its own operations:
/// key uploads on first use, the permission check for server matrices.
impl<C: Channel> super::CkksOps for Session<C> {
    fn linear_ckks(
        &mut self,
        x: &PrivateTensor,
        w: &PreparedCkksLinear,
    ) -> Result<PrivateTensor, TensorError> {
        Session::linear_ckks(self, x, w)
    }

    fn square(&mut self, x: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        Session::square(self, x)
    }

    fn poly(&mut self, x: &PrivateTensor, coeffs: &[f64]) -> Result<PrivateTensor, TensorError> {
        Session::poly(self, x, coeffs)
    }

    fn add(&mut self, a: &PrivateTensor, b: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        Session::add(self, a, b)
    }

    fn reshape(
        &mut self,
        x: &PrivateTensor,
        shape: &[usize],
    ) -> Result<PrivateTensor, TensorError> {
        Session::reshape(self, x, shape)
    }
}
