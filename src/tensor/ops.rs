//! The operations a network needs, on any representation: elementwise products, squares
//! and polynomials, ReLU, pooling, convolution, reshapes. Non-linear operations run on
//! shares (exact two-party protocols); a BFV operand is converted first (mask and
//! flooding), a CKKS operand stays under CKKS where CKKS can compute the operation
//! (squares, polynomials) and is refused otherwise.

use cipherml_mpc::net::Channel;
use cipherml_mpc::protocols::{arith, compare};
use cipherml_mpc::triples::TripleSource;
use ndarray::ArrayD;

use super::kernels::im2col;
use super::{PrivateTensor, Role, Session, TensorError};
use cipherml_mpc::fixed::quantize;

fn image_dims(what: &'static str, shape: &[usize]) -> Result<(usize, usize, usize), TensorError> {
    match shape {
        &[c, h, w] => Ok((c, h, w)),
        _ => Err(TensorError::Shape {
            what,
            left: shape.to_vec(),
            right: vec![],
        }),
    }
}

impl<C: Channel> Session<C> {
    /// `-t`, in its own representation.
    pub fn neg(&mut self, t: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        let ring = self.fixed.ring();
        Ok(match t {
            PrivateTensor::Public(a) => PrivateTensor::Public(-a),
            PrivateTensor::Private {
                owner,
                value,
                shape,
            } => PrivateTensor::Private {
                owner: *owner,
                value: value.as_ref().map(|v| -v),
                shape: shape.clone(),
            },
            PrivateTensor::Shared {
                share,
                shape,
                frac_bits,
                ..
            } => PrivateTensor::Shared {
                share: share.iter().map(|&v| ring.neg(v)).collect(),
                shape: shape.clone(),
                frac_bits: *frac_bits,
                nonneg: false,
                held_by: None,
            },
            PrivateTensor::Bfv { data, shape } => {
                let ev = cipherml_he::bfv::Evaluator::new(&self.params);
                let data = match data {
                    Some(d) => Some(super::BfvTensorData {
                        cts: d.cts.iter().map(|c| ev.neg(c)).collect::<Result<_, _>>()?,
                        noise_log2: d.noise_log2,
                    }),
                    None => None,
                };
                PrivateTensor::Bfv {
                    data,
                    shape: shape.clone(),
                }
            }
            PrivateTensor::Ckks { .. } => {
                return Err(TensorError::Unsupported {
                    op: "negation",
                    repr: "CKKS",
                    reason: "use sub, which stays under CKKS",
                })
            }
        })
    }

    /// Elementwise product (a public operand: local; otherwise a Beaver triple). The
    /// result is at scale `2^2f`, its truncation pending. On CKKS only squares are offered
    /// ([`Session::square`]).
    pub fn mul(
        &mut self,
        a: &PrivateTensor,
        b: &PrivateTensor,
    ) -> Result<PrivateTensor, TensorError> {
        if matches!(a, PrivateTensor::Ckks { .. }) || matches!(b, PrivateTensor::Ckks { .. }) {
            return Err(TensorError::Unsupported {
                op: "elementwise product",
                repr: "CKKS",
                reason: "use square or poly, or run the product on shares",
            });
        }
        if a.shape() != b.shape() {
            return Err(TensorError::Shape {
                what: "mul",
                left: a.shape(),
                right: b.shape(),
            });
        }
        let ring = self.fixed.ring();
        let f = self.fixed.frac_bits();
        let z = match (a, b) {
            (PrivateTensor::Public(x), PrivateTensor::Public(y)) => {
                return Ok(PrivateTensor::Public(x * y))
            }
            (PrivateTensor::Public(p), other) | (other, PrivateTensor::Public(p)) => {
                let (x, _) = self.shares_of(other)?;
                x.iter()
                    .zip(p.iter())
                    .map(|(&v, &c)| ring.mul(v, ring.from_signed(quantize(c, f))))
                    .collect()
            }
            _ => {
                let (x, _) = self.shares_of(a)?;
                let (y, _) = self.shares_of(b)?;
                let t = self.triples.arith(&mut self.party, ring, x.len())?;
                arith::mul(&mut self.party, &x, &y, &t)?
            }
        };
        Ok(PrivateTensor::Shared {
            share: z,
            shape: a.shape(),
            frac_bits: 2 * f,
            nonneg: false,
            held_by: None,
        })
    }

    /// Elementwise square: under CKKS if the value is (one level), else on shares.
    pub fn square(&mut self, x: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        if let PrivateTensor::Ckks { .. } = x {
            return self.ckks_poly(x, None);
        }
        self.mul(x, x)
    }

    /// The polynomial `sum c_i x^i` elementwise (lowest degree first): under CKKS at optimal
    /// depth if the value is, else on shares by Horner's rule (one product and truncation
    /// per degree). On shares, intermediate values must stay in the fixed-point range.
    pub fn poly(
        &mut self,
        x: &PrivateTensor,
        coeffs: &[f64],
    ) -> Result<PrivateTensor, TensorError> {
        if let PrivateTensor::Ckks { .. } = x {
            return self.ckks_poly(x, Some(coeffs));
        }
        let shape = x.shape();
        let x = self.to_shares(x)?;
        let Some((&top, rest)) = coeffs.split_last() else {
            return Ok(PrivateTensor::Public(ArrayD::zeros(shape)));
        };
        let mut y = PrivateTensor::Public(ArrayD::from_elem(shape.clone(), top));
        for &c in rest.iter().rev() {
            y = self.mul(&y, &x)?;
            y = self.add(
                &y,
                &PrivateTensor::Public(ArrayD::from_elem(shape.clone(), c)),
            )?;
        }
        self.to_shares(&y)
    }

    /// `max(x, 0)` elementwise (exact, millionaire-based comparison), at the input's scale
    /// (ReLU commutes with a pending truncation, which then runs on a value known
    /// non-negative, the cheaper protocol).
    pub fn relu(&mut self, x: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        let (s, shape, frac_bits, _) = self.shares_any(x)?;
        let share = compare::relu(&mut self.party, self.fixed.ring(), &s)?;
        Ok(PrivateTensor::Shared {
            share,
            shape,
            frac_bits,
            nonneg: true,
            held_by: None,
        })
    }

    /// The logistic sigmoid on shares: piecewise linear (7 exact comparisons per element, or in
    /// the training ring the carry of the low 16 bits, two 15-bit comparisons and one table
    /// look-up), within
    /// [`cipherml_mpc::protocols::approx::SIGMOID_PWL_ERROR`] of the sigmoid everywhere.
    pub fn sigmoid(&mut self, x: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        let (s, shape) = self.shares_of(x)?;
        let share = cipherml_mpc::protocols::approx::sigmoid_pwl(&mut self.party, self.fixed, &s)?;
        Ok(self.shared(share, shape))
    }

    /// The sigmoid on shares within
    /// [`cipherml_mpc::protocols::approx::SIGMOID_PRECISE_ERROR`] (0.0033; 13 exact
    /// comparisons per element where [`Session::sigmoid`] has 7 and is within 0.0125; in
    /// the training ring the carry of the fraction, two short comparisons and one table
    /// look-up for either).
    pub fn sigmoid_precise(&mut self, x: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        let (s, shape) = self.shares_of(x)?;
        let share =
            cipherml_mpc::protocols::approx::sigmoid_precise(&mut self.party, self.fixed, &s)?;
        Ok(self.shared(share, shape))
    }

    /// tanh on shares (piecewise linear: 13 exact comparisons per element, or in the
    /// training ring the carry of the low 14 bits, two 17-bit comparisons and one table
    /// look-up), within
    /// [`cipherml_mpc::protocols::approx::TANH_PWL_ERROR`] of tanh everywhere.
    pub fn tanh(&mut self, x: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        let (s, shape) = self.shares_of(x)?;
        let share = cipherml_mpc::protocols::approx::tanh_pwl(&mut self.party, self.fixed, &s)?;
        Ok(self.shared(share, shape))
    }

    /// Max pooling of a `(C, H, W)` tensor with a square window (exact: a tree of ReLUs),
    /// at the input's scale (a pending truncation then runs on 4x fewer values for a 2x2
    /// window); a known non-negative input stays known non-negative.
    pub fn max_pool2d(
        &mut self,
        x: &PrivateTensor,
        kernel: usize,
        stride: usize,
    ) -> Result<PrivateTensor, TensorError> {
        let (c, h, w) = image_dims("max_pool2d input (C, H, W)", &x.shape())?;
        let (ho, wo) = pooled(h, w, kernel, stride)?;
        let (s, _, frac_bits, nonneg) = self.shares_any(x)?;
        let windows = im2col(&s, (c, h, w), kernel, stride);
        let share = cipherml_mpc::protocols::compare::max_pool_relu_tree(
            &mut self.party,
            self.fixed.ring(),
            &windows,
            kernel * kernel,
        )?;
        Ok(PrivateTensor::Shared {
            share,
            shape: vec![c, ho, wo],
            frac_bits,
            nonneg,
            held_by: None,
        })
    }

    /// Max pooling of a `(C, L)` tensor with windows of `kernel` (1-D), as
    /// [`Session::max_pool2d`].
    pub fn max_pool1d(
        &mut self,
        x: &PrivateTensor,
        kernel: usize,
        stride: usize,
    ) -> Result<PrivateTensor, TensorError> {
        let (c, l, lo) = pooled1d(&x.shape(), kernel, stride)?;
        let (s, _, frac_bits, nonneg) = self.shares_any(x)?;
        let windows = windows1d(&s, (c, l), kernel, stride, lo);
        let share = cipherml_mpc::protocols::compare::max_pool_relu_tree(
            &mut self.party,
            self.fixed.ring(),
            &windows,
            kernel,
        )?;
        Ok(PrivateTensor::Shared {
            share,
            shape: vec![c, lo],
            frac_bits,
            nonneg,
            held_by: None,
        })
    }

    /// Average pooling of a `(C, L)` tensor with windows of `kernel` (1-D), as
    /// [`Session::avg_pool2d`].
    pub fn avg_pool1d(
        &mut self,
        x: &PrivateTensor,
        kernel: usize,
        stride: usize,
    ) -> Result<PrivateTensor, TensorError> {
        let (c, l, lo) = pooled1d(&x.shape(), kernel, stride)?;
        let (s, _) = self.shares_of(x)?;
        let ring = self.fixed.ring();
        let f = self.fixed.frac_bits();
        let inv = ring.from_signed(quantize(1.0 / kernel as f64, f));
        let sums: Vec<u64> = windows1d(&s, (c, l), kernel, stride, lo)
            .chunks(kernel)
            .map(|win| ring.mul(win.iter().fold(0, |a, &v| ring.add(a, v)), inv))
            .collect();
        Ok(PrivateTensor::Shared {
            share: sums,
            shape: vec![c, lo],
            frac_bits: 2 * f,
            nonneg: false,
            held_by: None,
        })
    }

    /// Average pooling of a `(C, H, W)` tensor (local sums times a fixed-point constant);
    /// the result is at scale `2^2f`, its truncation pending.
    pub fn avg_pool2d(
        &mut self,
        x: &PrivateTensor,
        kernel: usize,
        stride: usize,
    ) -> Result<PrivateTensor, TensorError> {
        let (c, h, w) = image_dims("avg_pool2d input (C, H, W)", &x.shape())?;
        let (ho, wo) = pooled(h, w, kernel, stride)?;
        let (s, _) = self.shares_of(x)?;
        let ring = self.fixed.ring();
        let f = self.fixed.frac_bits();
        let k2 = kernel * kernel;
        let inv = ring.from_signed(quantize(1.0 / k2 as f64, f));
        let sums: Vec<u64> = im2col(&s, (c, h, w), kernel, stride)
            .chunks(k2)
            .map(|win| ring.mul(win.iter().fold(0, |a, &v| ring.add(a, v)), inv))
            .collect();
        Ok(PrivateTensor::Shared {
            share: sums,
            shape: vec![c, ho, wo],
            frac_bits: 2 * f,
            nonneg: false,
            held_by: None,
        })
    }

    /// 2-D convolution of a `(C, H, W)` tensor with weights `(O, C, kh, kw)` the server
    /// holds (symmetric zero padding): under BFV with coefficient encoding, one product per
    /// block of output channels and no rotation (as in Cheetah), or on shares for tiny
    /// layers, as the cost model decides ([`Session::linear`]). The result is at scale
    /// `2^2f`, its truncation pending.
    pub fn conv2d(
        &mut self,
        x: &PrivateTensor,
        w: &PrivateTensor,
        stride: usize,
        padding: usize,
    ) -> Result<PrivateTensor, TensorError> {
        let (c, h, wd) = image_dims("conv2d input (C, H, W)", &x.shape())?;
        let ws = w.shape();
        let kernel = match (w, ws.as_slice()) {
            (
                PrivateTensor::Private {
                    owner: Role::Server,
                    ..
                },
                &[o, wc, kh, kw],
            ) => (o, wc, kh, kw),
            _ => {
                return Err(TensorError::Shape {
                    what: "conv2d weights (O, C, kh, kw) held by the server",
                    left: x.shape(),
                    right: ws,
                })
            }
        };
        let weight = match w {
            PrivateTensor::Private { value: Some(v), .. } => {
                Some(v.view().into_dimensionality::<ndarray::Ix4>().expect("4-D"))
            }
            _ => None,
        };
        let label = format!(
            "conv2d {}x{}x{} by {}x{}x{}x{}, stride {stride}, padding {padding}",
            c, h, wd, kernel.0, kernel.1, kernel.2, kernel.3
        );
        let prepared = super::PreparedLinear::conv2d(
            &self.params,
            &self.config,
            &label,
            (c, h, wd),
            kernel,
            stride,
            padding,
            weight,
            None,
        )?;
        self.linear(x, &prepared)
    }

    /// The same values in another shape (same number of elements). A BFV tensor whose last
    /// axis changes goes to shares first (its layout follows the last axis).
    pub fn reshape(
        &mut self,
        t: &PrivateTensor,
        shape: &[usize],
    ) -> Result<PrivateTensor, TensorError> {
        let old = t.shape();
        if old.iter().product::<usize>() != shape.iter().product::<usize>() {
            return Err(TensorError::Shape {
                what: "reshape",
                left: old,
                right: shape.to_vec(),
            });
        }
        let shape = shape.to_vec();
        Ok(match t {
            PrivateTensor::Public(a) => PrivateTensor::Public(
                a.clone()
                    .into_shape_with_order(ndarray::IxDyn(&shape))
                    .expect("same length"),
            ),
            PrivateTensor::Private { owner, value, .. } => PrivateTensor::Private {
                owner: *owner,
                value: value.as_ref().map(|v| {
                    v.clone()
                        .into_shape_with_order(ndarray::IxDyn(&shape))
                        .expect("same length")
                }),
                shape,
            },
            PrivateTensor::Shared {
                share,
                frac_bits,
                nonneg,
                held_by,
                ..
            } => PrivateTensor::Shared {
                share: share.clone(),
                shape,
                frac_bits: *frac_bits,
                nonneg: *nonneg,
                held_by: *held_by,
            },
            PrivateTensor::Bfv { data, .. } if old.last() == shape.last() => PrivateTensor::Bfv {
                data: data.clone(),
                shape,
            },
            PrivateTensor::Bfv { .. } => {
                let (share, _) = self.shares_of(t)?;
                self.shared(share, shape)
            }
            PrivateTensor::Ckks { .. } => self.ckks_reshape(t, &shape)?,
        })
    }

    /// Zero padding (local): `pads[i] = (before, after)` zeros on axis `i`. A value held
    /// whole by one party stays so.
    pub fn pad(
        &mut self,
        t: &PrivateTensor,
        pads: &[(usize, usize)],
    ) -> Result<PrivateTensor, TensorError> {
        let shape = t.shape();
        let out: Option<Vec<usize>> = (pads.len() == shape.len())
            .then(|| {
                shape
                    .iter()
                    .zip(pads)
                    .map(|(&d, &(a, b))| d.checked_add(a)?.checked_add(b))
                    .collect()
            })
            .flatten();
        let Some(out) = out else {
            return Err(TensorError::Shape {
                what: "pad: one (before, after) per axis",
                left: shape,
                right: pads.iter().flat_map(|&(a, b)| [a, b]).collect(),
            });
        };
        let region: Vec<ndarray::SliceInfoElem> = pads
            .iter()
            .zip(&shape)
            .map(|(&(a, _), &d)| ndarray::Slice::from(a..a + d).into())
            .collect();
        if let PrivateTensor::Public(a) = t {
            let mut y = ArrayD::zeros(ndarray::IxDyn(&out));
            y.slice_mut(region.as_slice()).assign(a);
            return Ok(PrivateTensor::Public(y));
        }
        let holder = t.holder();
        let (s, _, frac_bits, nonneg) = self.shares_any(t)?;
        let x = ArrayD::from_shape_vec(ndarray::IxDyn(&shape), s).expect("shape");
        let mut y = ArrayD::<u64>::zeros(ndarray::IxDyn(&out));
        y.slice_mut(region.as_slice()).assign(&x);
        Ok(PrivateTensor::Shared {
            share: y.iter().copied().collect(),
            shape: out,
            frac_bits,
            nonneg,
            held_by: holder,
        })
    }

    /// Flattens to a vector.
    pub fn flatten(&mut self, t: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        let n = t.shape().iter().product::<usize>();
        self.reshape(t, &[n])
    }
}

/// The channels, length and pooled length of a 1-D pooling of a `(C, L)` tensor.
fn pooled1d(
    shape: &[usize],
    kernel: usize,
    stride: usize,
) -> Result<(usize, usize, usize), TensorError> {
    match *shape {
        [c, l] if kernel > 0 && stride > 0 && kernel <= l => Ok((c, l, (l - kernel) / stride + 1)),
        _ => Err(TensorError::Shape {
            what: "1-D pooling (C, L) input vs window",
            left: shape.to_vec(),
            right: vec![kernel, stride],
        }),
    }
}

/// The windows of a 1-D pooling, one after another (`kernel` values each).
fn windows1d(
    s: &[u64],
    (c, l): (usize, usize),
    kernel: usize,
    stride: usize,
    lo: usize,
) -> Vec<u64> {
    let mut out = Vec::with_capacity(c * lo * kernel);
    for ch in 0..c {
        for i in 0..lo {
            let start = ch * l + i * stride;
            out.extend_from_slice(&s[start..start + kernel]);
        }
    }
    out
}

fn pooled(h: usize, w: usize, kernel: usize, stride: usize) -> Result<(usize, usize), TensorError> {
    if kernel == 0 || stride == 0 || kernel > h || kernel > w {
        return Err(TensorError::Shape {
            what: "pooling window vs input",
            left: vec![h, w],
            right: vec![kernel, stride],
        });
    }
    Ok(((h - kernel) / stride + 1, (w - kernel) / stride + 1))
}
