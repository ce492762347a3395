//! Packed CKKS tensors and linear maps.
//!
//! A [`CkksTensor`] holds a flattened tensor of `len` values in the first `len` slots of a
//! ciphertext, zero-padded to a power-of-two `period` and **replicated** every `period`
//! slots. Rotations by less than `period` are then cyclic shifts of the tensor, which is
//! what the diagonal method needs; and the diagonal method with block sums produces its
//! output in the same replicated layout, so linear layers chain without masking.
//!
//! A [`LinearMap`] is any plaintext matrix (dense layers, convolutions, average pooling —
//! see [`conv2d_matrix`] and [`avg_pool_matrix`]) applied to an encrypted vector by the
//! diagonal method with baby-step giant-step and hoisted baby-step rotations. Zero
//! diagonals cost nothing, so sparse maps such as convolutions stay cheap.

use ndarray::{Array2, ArrayD, ArrayView2, ArrayView4, IxDyn};
use rand::{CryptoRng, RngCore};

use crate::ckks::{Ciphertext, Decryptor, Encoder, Encryptor, Evaluator, Plaintext};
use crate::error::{Error, Result};
use crate::rlwe::GaloisKeys;

/// An encrypted tensor in the replicated slot layout (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct CkksTensor {
    /// The ciphertext.
    pub ct: Ciphertext,
    shape: Vec<usize>,
    period: usize,
}

impl CkksTensor {
    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The replication period (a power of two, at least the number of elements).
    pub fn period(&self) -> usize {
        self.period
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wraps a ciphertext that already holds a tensor in the replicated layout.
    pub fn from_ciphertext(ct: Ciphertext, shape: &[usize], period: usize) -> Result<Self> {
        let len: usize = shape.iter().product();
        if !period.is_power_of_two() || period < len {
            return Err(Error::ShapeMismatch {
                what: "period must be a power of two >= the number of elements",
                left: shape.to_vec(),
                right: vec![period],
            });
        }
        Ok(Self {
            ct,
            shape: shape.to_vec(),
            period,
        })
    }

    /// The slot vector of `x` in the replicated layout with `period`.
    pub fn layout(x: &[f64], period: usize, slots: usize) -> Vec<f64> {
        (0..slots)
            .map(|j| x.get(j % period).copied().unwrap_or(0.0))
            .collect()
    }

    /// Encodes and encrypts `x` at the top level and default scale.
    pub fn encrypt<R: RngCore + CryptoRng + ?Sized>(
        encryptor: &Encryptor,
        x: &ArrayD<f64>,
        rng: &mut R,
    ) -> Result<Self> {
        let slots = encryptor_slots(encryptor);
        let len = x.len();
        let period = len.max(1).next_power_of_two();
        if period > slots {
            return Err(Error::TooManyValues {
                given: len,
                capacity: slots,
            });
        }
        let flat: Vec<f64> = x.iter().copied().collect();
        let ct = encryptor.encrypt_f64(&Self::layout(&flat, period, slots), rng)?;
        Ok(Self {
            ct,
            shape: x.shape().to_vec(),
            period,
        })
    }

    /// Decrypts to an `ndarray` of the tensor's shape.
    pub fn decrypt(&self, decryptor: &Decryptor) -> Result<ArrayD<f64>> {
        let v = decryptor.decrypt_f64(&self.ct)?;
        let len = self.len();
        Ok(
            ArrayD::from_shape_vec(IxDyn(&self.shape), v[..len].to_vec())
                .expect("length matches the shape"),
        )
    }

    /// The same ciphertext seen with another shape of the same number of elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        let len: usize = shape.iter().product();
        if len != self.len() {
            return Err(Error::ShapeMismatch {
                what: "reshape",
                left: self.shape.clone(),
                right: shape.to_vec(),
            });
        }
        Ok(Self {
            ct: self.ct.clone(),
            shape: shape.to_vec(),
            period: self.period,
        })
    }

    /// Elementwise square (one level).
    pub fn square(&self, ev: &Evaluator, rlk: &crate::rlwe::RelinKey) -> Result<Self> {
        let ct = ev.rescale(&ev.mul_relin(&self.ct, &self.ct, rlk)?)?;
        Ok(Self { ct, ..self.clone() })
    }

    /// Elementwise polynomial (`ceil(log2(degree + 1))` levels).
    pub fn poly(
        &self,
        ev: &Evaluator,
        coeffs: &[f64],
        rlk: &crate::rlwe::RelinKey,
    ) -> Result<Self> {
        let ct = ev.eval_poly(&self.ct, coeffs, rlk)?;
        Ok(Self { ct, ..self.clone() })
    }

    /// Adds a plaintext tensor of the same shape (e.g. a bias).
    pub fn add_plain(&self, ev: &Evaluator, b: &ArrayD<f64>) -> Result<Self> {
        if b.shape() != self.shape.as_slice() {
            return Err(Error::ShapeMismatch {
                what: "add_plain",
                left: self.shape.clone(),
                right: b.shape().to_vec(),
            });
        }
        let p = ev.params();
        let flat: Vec<f64> = b.iter().copied().collect();
        let pt = Encoder::new(p).encode_f64(
            &Self::layout(&flat, self.period, p.slots()),
            self.ct.level(),
            self.ct.scale(),
        )?;
        Ok(Self {
            ct: ev.add_plain(&self.ct, &pt)?,
            ..self.clone()
        })
    }

    /// The sum of all elements, in every slot (`log2(period)` rotations).
    pub fn sum(&self, ev: &Evaluator, keys: &GaloisKeys) -> Result<Self> {
        Ok(Self {
            ct: ev.inner_sum(&self.ct, self.period, keys)?,
            shape: vec![1],
            period: 1,
        })
    }
}

fn encryptor_slots(e: &Encryptor) -> usize {
    e.params().slots()
}

/// The non-zero diagonals of one giant step: `(k, [(baby step b, pre-rotated diagonal)])`.
type DiagonalGroup = (usize, Vec<(usize, Vec<f64>)>);

/// A plaintext linear map `y = M x + b` for the diagonal method (see the module docs).
#[derive(Debug, Clone)]
pub struct LinearMap {
    rows: usize,
    cols: usize,
    /// Output period: `rows` rounded up to a power of two.
    out_period: usize,
    /// Working period: `max(input period, out_period)`.
    period: usize,
    baby: usize,
    /// `(giant index k, [(baby b, diagonal k*g+b rotated right by k*g)])`.
    groups: Vec<DiagonalGroup>,
    bias: Option<Vec<f64>>,
}

impl LinearMap {
    /// Builds the map for inputs of `input_len` elements replicated with `input_period`.
    pub fn new(
        matrix: ArrayView2<'_, f64>,
        bias: Option<&[f64]>,
        input_period: usize,
    ) -> Result<Self> {
        let (rows, cols) = matrix.dim();
        if cols > input_period || !input_period.is_power_of_two() {
            return Err(Error::ShapeMismatch {
                what: "matrix columns vs input period",
                left: vec![rows, cols],
                right: vec![input_period],
            });
        }
        if let Some(b) = bias {
            if b.len() != rows {
                return Err(Error::ShapeMismatch {
                    what: "bias length vs matrix rows",
                    left: vec![rows, cols],
                    right: vec![b.len()],
                });
            }
        }
        let out_period = rows.max(1).next_power_of_two();
        let period = input_period.max(out_period);
        let ndiag = out_period; // diagonals i = 0 .. out_period
        let baby = 1usize << (ndiag.trailing_zeros().div_ceil(2));
        let giants = ndiag.div_ceil(baby);
        let mut groups = Vec::new();
        for k in 0..giants {
            let mut members = Vec::new();
            for b in 0..baby {
                let i = k * baby + b;
                if i >= ndiag {
                    break;
                }
                // d_i[j] = M[j mod out_period][(j + i) mod period], j in 0..period.
                let d: Vec<f64> = (0..period)
                    .map(|j| {
                        let r = j % out_period;
                        let c = (j + i) % period;
                        if r < rows && c < cols {
                            matrix[[r, c]]
                        } else {
                            0.0
                        }
                    })
                    .collect();
                if d.iter().all(|&v| v == 0.0) {
                    continue;
                }
                // Pre-rotate right by k*baby so that the giant-step rotation undoes it.
                let shift = k * baby;
                let rotated: Vec<f64> = (0..period)
                    .map(|j| d[(j + period - shift % period) % period])
                    .collect();
                members.push((b, rotated));
            }
            if !members.is_empty() {
                groups.push((k, members));
            }
        }
        Ok(Self {
            rows,
            cols,
            out_period,
            period,
            baby,
            groups,
            bias: bias.map(|b| b.to_vec()),
        })
    }

    /// A dense layer `y = W x + b` with `W` of shape `(out, in)`.
    pub fn dense(
        weights: ArrayView2<'_, f64>,
        bias: Option<&[f64]>,
        input_period: usize,
    ) -> Result<Self> {
        Self::new(weights, bias, input_period)
    }

    /// Output length.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input length.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Period of the output layout.
    pub fn output_period(&self) -> usize {
        self.out_period
    }

    /// Number of non-zero diagonals (plaintext products per application).
    pub fn nonzero_diagonals(&self) -> usize {
        self.groups.iter().map(|(_, m)| m.len()).sum()
    }

    /// The rotation steps an application uses: baby steps, giant steps and block sums.
    pub fn rotation_steps(&self) -> Vec<i64> {
        let mut steps = std::collections::BTreeSet::new();
        for (k, members) in &self.groups {
            for (b, _) in members {
                if *b > 0 {
                    steps.insert(*b as i64);
                }
            }
            if *k > 0 {
                steps.insert((k * self.baby) as i64);
            }
        }
        self.block_sum_steps(&mut steps);
        steps.into_iter().collect()
    }

    /// The rotation steps any matrix of this shape may use, whichever diagonals are zero:
    /// what a party that knows only the shapes (a client given the architecture) must
    /// provide keys for. A superset of [`Self::rotation_steps`].
    pub fn structural_rotation_steps(&self) -> Vec<i64> {
        let ndiag = self.out_period;
        let mut steps: std::collections::BTreeSet<i64> =
            (1..self.baby.min(ndiag)).map(|b| b as i64).collect();
        for k in 1..ndiag.div_ceil(self.baby) {
            steps.insert((k * self.baby) as i64);
        }
        self.block_sum_steps(&mut steps);
        steps.into_iter().collect()
    }

    fn block_sum_steps(&self, steps: &mut std::collections::BTreeSet<i64>) {
        let mut s = self.out_period;
        while s < self.period {
            steps.insert(s as i64);
            s *= 2;
        }
    }

    /// The Galois elements of [`Self::rotation_steps`] (generate exactly these keys).
    pub fn galois_elements(&self, ev: &Evaluator) -> Vec<usize> {
        self.rotation_steps()
            .into_iter()
            .map(|s| ev.galois_element(s))
            .collect()
    }

    /// The Galois elements of [`Self::structural_rotation_steps`].
    pub fn structural_galois_elements(&self, ev: &Evaluator) -> Vec<usize> {
        self.structural_rotation_steps()
            .into_iter()
            .map(|s| ev.galois_element(s))
            .collect()
    }

    /// Encodes the diagonals for inputs at `level` (the scale is the prime that the
    /// rescaling after the products drops, so the output keeps the input's scale).
    pub fn encode(&self, encoder: &Encoder, level: usize) -> Result<PreparedLinearMap> {
        if level == 0 {
            return Err(Error::NotEnoughLevels {
                needed: 1,
                available: 0,
            });
        }
        let params = encoder.params();
        let slots = params.slots();
        if self.period > slots {
            return Err(Error::TooManyValues {
                given: self.period,
                capacity: slots,
            });
        }
        let scale = params.prime(level) as f64;
        let groups = self
            .groups
            .iter()
            .map(|(k, members)| {
                let pts = members
                    .iter()
                    .map(|(b, d)| {
                        let v = CkksTensor::layout(d, self.period, slots);
                        Ok((*b, encoder.encode_f64(&v, level, scale)?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((*k, pts))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PreparedLinearMap {
            map: self.clone(),
            level,
            groups,
        })
    }
}

/// A [`LinearMap`] with its diagonals encoded at one level.
#[derive(Debug, Clone)]
pub struct PreparedLinearMap {
    map: LinearMap,
    level: usize,
    groups: Vec<(usize, Vec<(usize, Plaintext)>)>,
}

impl PreparedLinearMap {
    /// The map.
    pub fn map(&self) -> &LinearMap {
        &self.map
    }

    /// Applies the map to every row of an encrypted batch (one ciphertext per row), rows in
    /// parallel on the rayon pool.
    pub fn apply_batch(
        &self,
        ev: &Evaluator,
        rows: &[CkksTensor],
        keys: &GaloisKeys,
    ) -> Result<Vec<CkksTensor>> {
        use rayon::prelude::*;
        rows.par_iter().map(|x| self.apply(ev, x, keys)).collect()
    }

    /// Applies the map: one level is consumed; the output has the input's scale and the
    /// replicated layout with period [`LinearMap::output_period`].
    pub fn apply(&self, ev: &Evaluator, x: &CkksTensor, keys: &GaloisKeys) -> Result<CkksTensor> {
        let m = &self.map;
        if x.len() != m.cols || !m.period.is_multiple_of(x.period) {
            return Err(Error::ShapeMismatch {
                what: "linear map input",
                left: vec![m.rows, m.cols],
                right: x.shape.clone(),
            });
        }
        if x.ct.level() != self.level {
            return Err(Error::LevelMismatch {
                left: x.ct.level(),
                right: self.level,
            });
        }
        if x.ct.len() != 2 {
            return Err(Error::CiphertextSize {
                found: x.ct.len(),
                expected: 2,
            });
        }
        let ct = x.ct.clone();
        let babies: Vec<i64> = (0..m.baby as i64).collect();
        let needed: std::collections::BTreeSet<usize> = self
            .groups
            .iter()
            .flat_map(|(_, members)| members.iter().map(|(b, _)| *b))
            .collect();
        let steps: Vec<i64> = babies
            .iter()
            .copied()
            .filter(|b| needed.contains(&(*b as usize)))
            .collect();
        let rotated = ev.rotate_hoisted(&ct, &steps, keys)?;
        let by_step: std::collections::HashMap<usize, &Ciphertext> = steps
            .iter()
            .zip(&rotated)
            .map(|(s, c)| (*s as usize, c))
            .collect();
        let mut acc: Option<Ciphertext> = None;
        for (k, members) in &self.groups {
            let mut partial: Option<Ciphertext> = None;
            for (b, pt) in members {
                let rx = by_step[b];
                match &mut partial {
                    None => partial = Some(ev.mul_plain(rx, pt)?),
                    Some(p) => ev.mul_plain_accumulate(p, rx, pt)?,
                }
            }
            let partial = ev.rescale(&partial.expect("groups are non-empty"))?;
            let shifted = ev.rotate(&partial, (k * m.baby) as i64, keys)?;
            match &mut acc {
                None => acc = Some(shifted),
                Some(a) => ev.add_assign(a, &shifted)?,
            }
        }
        let mut y = match acc {
            Some(a) => a,
            // The zero map: a zero ciphertext at the output level.
            None => ev.rescale(&ev.mul_int(&ct, 0)?)?,
        };
        let mut s = m.out_period;
        while s < m.period {
            let r = ev.rotate(&y, s as i64, keys)?;
            ev.add_assign(&mut y, &r)?;
            s *= 2;
        }
        let mut out = CkksTensor {
            ct: y,
            shape: vec![m.rows],
            period: m.out_period,
        };
        if let Some(b) = &m.bias {
            out = out.add_plain(
                ev,
                &ArrayD::from_shape_vec(IxDyn(&[m.rows]), b.clone()).expect("shape"),
            )?;
        }
        Ok(out)
    }
}

/// The matrix of a 2-D convolution: input `(C, H, W)` flattened in that order, weights
/// `(O, C, kh, kw)`, symmetric zero `padding`, `stride`. Returns the matrix (rows: the
/// output `(O, H', W')` flattened) and the output shape.
pub fn conv2d_matrix(
    weights: ArrayView4<'_, f64>,
    input: (usize, usize, usize),
    stride: usize,
    padding: usize,
) -> Result<(Array2<f64>, (usize, usize, usize))> {
    let (o, c, kh, kw) = weights.dim();
    let (ci, h, w) = input;
    if c != ci || stride == 0 || h + 2 * padding < kh || w + 2 * padding < kw {
        return Err(Error::ShapeMismatch {
            what: "conv2d weights (O, C, kh, kw) vs input (C, H, W)",
            left: vec![o, c, kh, kw],
            right: vec![ci, h, w],
        });
    }
    let ho = (h + 2 * padding - kh) / stride + 1;
    let wo = (w + 2 * padding - kw) / stride + 1;
    let mut m = Array2::zeros((o * ho * wo, c * h * w));
    for oc in 0..o {
        for y in 0..ho {
            for x in 0..wo {
                let row = (oc * ho + y) * wo + x;
                for ic in 0..c {
                    for p in 0..kh {
                        for q in 0..kw {
                            let iy = (y * stride + p) as isize - padding as isize;
                            let ix = (x * stride + q) as isize - padding as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                let col = (ic * h + iy as usize) * w + ix as usize;
                                m[[row, col]] += weights[[oc, ic, p, q]];
                            }
                        }
                    }
                }
            }
        }
    }
    Ok((m, (o, ho, wo)))
}

/// The matrix of `k x k` average pooling with stride `k` on `(C, H, W)`.
pub fn avg_pool_matrix(
    input: (usize, usize, usize),
    k: usize,
) -> Result<(Array2<f64>, (usize, usize, usize))> {
    let (c, h, w) = input;
    if k == 0 || h < k || w < k {
        return Err(Error::ShapeMismatch {
            what: "avg_pool kernel vs input (C, H, W)",
            left: vec![k],
            right: vec![c, h, w],
        });
    }
    let (ho, wo) = (h / k, w / k);
    let mut m = Array2::zeros((c * ho * wo, c * h * w));
    let inv = 1.0 / (k * k) as f64;
    for ch in 0..c {
        for y in 0..ho {
            for x in 0..wo {
                let row = (ch * ho + y) * wo + x;
                for p in 0..k {
                    for q in 0..k {
                        let col = (ch * h + y * k + p) * w + x * k + q;
                        m[[row, col]] = inv;
                    }
                }
            }
        }
    }
    Ok((m, (c, ho, wo)))
}
