//! The operations a network needs, on any representation: elementwise products, squares
//! and polynomials, ReLU, pooling, convolution, reshapes. Non-linear operations run on
//! shares (exact two-party protocols); a BFV operand is converted first (mask and
//! flooding), a CKKS operand stays under CKKS where CKKS can compute the operation
//! (squares, polynomials) and is refused otherwise.

use cipherml_he::bfv::Encoder;
use cipherml_he::tensor::CoeffConv2d;
use cipherml_mpc::net::Channel;
use cipherml_mpc::protocols::{arith, compare};
use cipherml_mpc::triples::{ot::OtTriples, TripleSource};
use ndarray::ArrayD;

use super::{PrivateTensor, Role, Session, TensorError};
use crate::nn::hybrid::{conv_ring, he_linear_client, he_linear_server, im2col, quantize};

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
            PrivateTensor::Shared { share, shape } => PrivateTensor::Shared {
                share: share.iter().map(|&v| ring.neg(v)).collect(),
                shape: shape.clone(),
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

    /// Elementwise product (a public operand: local, then truncation; otherwise a Beaver
    /// triple from OT, then truncation). On CKKS only squares are offered
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
                let t = OtTriples.arith(&mut self.party, ring, x.len())?;
                arith::mul(&mut self.party, &x, &y, &t)?
            }
        };
        let share = arith::trunc_faithful(&mut self.party, ring, &z, f)?;
        Ok(PrivateTensor::Shared {
            share,
            shape: a.shape(),
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

    /// `max(x, 0)` elementwise (exact, millionaire-based comparison).
    pub fn relu(&mut self, x: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        let (s, shape) = self.shares_of(x)?;
        let share = compare::relu(&mut self.party, self.fixed.ring(), &s)?;
        Ok(PrivateTensor::Shared { share, shape })
    }

    /// The logistic sigmoid on shares: piecewise linear with 13 exact ReLUs per element,
    /// within [`crate::nn::SIGMOID_PWL_ERROR`] of the sigmoid everywhere.
    pub fn sigmoid(&mut self, x: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        let (s, shape) = self.shares_of(x)?;
        let share = crate::nn::hybrid::sigmoid_pwl(
            &mut self.party,
            self.fixed.ring(),
            self.fixed.frac_bits(),
            &s,
        )
        .map_err(Box::new)?;
        Ok(PrivateTensor::Shared { share, shape })
    }

    /// Max pooling of a `(C, H, W)` tensor with a square window (exact: a tree of ReLUs).
    pub fn max_pool2d(
        &mut self,
        x: &PrivateTensor,
        kernel: usize,
        stride: usize,
    ) -> Result<PrivateTensor, TensorError> {
        let (c, h, w) = image_dims("max_pool2d input (C, H, W)", &x.shape())?;
        let (ho, wo) = pooled(h, w, kernel, stride)?;
        let (s, _) = self.shares_of(x)?;
        let windows = im2col(&s, (c, h, w), kernel, stride);
        let share = crate::nn::hybrid::max_pool_by_relu(
            &mut self.party,
            self.fixed.ring(),
            windows,
            kernel * kernel,
        )
        .map_err(Box::new)?;
        Ok(PrivateTensor::Shared {
            share,
            shape: vec![c, ho, wo],
        })
    }

    /// Average pooling of a `(C, H, W)` tensor (local sums, one fixed-point constant, one
    /// truncation).
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
        let share = arith::trunc_faithful(&mut self.party, ring, &sums, f)?;
        Ok(PrivateTensor::Shared {
            share,
            shape: vec![c, ho, wo],
        })
    }

    /// 2-D convolution of a `(C, H, W)` tensor with weights `(O, C, kh, kw)` the server
    /// holds (symmetric zero padding): under BFV with coefficient encoding, one product per
    /// block of output channels and no rotation (as in Cheetah); the result comes back as
    /// shares (mask and flooding), then truncation.
    pub fn conv2d(
        &mut self,
        x: &PrivateTensor,
        w: &PrivateTensor,
        stride: usize,
        padding: usize,
    ) -> Result<PrivateTensor, TensorError> {
        let (c, h, wd) = image_dims("conv2d input (C, H, W)", &x.shape())?;
        let ws = w.shape();
        let (o, kh, kw) = match (w, ws.as_slice()) {
            (
                PrivateTensor::Private {
                    owner: Role::Server,
                    ..
                },
                &[o, wc, kh, kw],
            ) if wc == c && stride > 0 && h + 2 * padding >= kh && wd + 2 * padding >= kw => {
                (o, kh, kw)
            }
            _ => {
                return Err(TensorError::Shape {
                    what: "conv2d weights (O, C, kh, kw) held by the server",
                    left: x.shape(),
                    right: ws,
                })
            }
        };
        let f = self.fixed.frac_bits();
        let ring = self.fixed.ring();
        let weights = match w {
            PrivateTensor::Private { value: Some(v), .. } => v
                .view()
                .into_dimensionality::<ndarray::Ix4>()
                .expect("4-D")
                .mapv(|v| quantize(v, f)),
            _ => ndarray::Array4::zeros((o, c, kh, kw)),
        };
        let encoder = Encoder::new(&self.params);
        let he = CoeffConv2d::new_capped(
            &encoder,
            weights.view(),
            (h, wd),
            padding,
            stride,
            self.config.weight_cap(),
        )?;
        let positions = he.output_positions();
        let flood_bits = self.reveal_flood_bits(positions.len())?;
        let (_, ho, wo) = he.output_shape();
        let (s, _) = self.shares_of(x)?;
        let y = match &self.sk {
            Some(sk) => {
                let xs = ndarray::Array3::from_shape_vec(
                    (c, h, wd),
                    s.iter().map(|&v| v as i64).collect(),
                )
                .expect("shape");
                let pts = he.encode_input(&encoder, xs.view())?;
                he_linear_client(&self.params, ring, &mut self.party, sk, &pts, &positions)
                    .map_err(Box::new)?
            }
            None => {
                let y_s = conv_ring(ring, &s, &weights, (c, h, wd), stride, padding);
                let noise =
                    he.noise_bound_log2(self.params.degree(), self.params.plaintext_modulus());
                he_linear_server(
                    &self.params,
                    ring,
                    flood_bits,
                    &mut self.party,
                    super::he::server_key(&self.rerand)?,
                    he.input_groups(),
                    &positions,
                    noise,
                    y_s,
                    |ev, cts| he.apply(ev, cts),
                )
                .map_err(Box::new)?
            }
        };
        let share = arith::trunc_faithful(&mut self.party, ring, &y, f)?;
        Ok(PrivateTensor::Shared {
            share,
            shape: vec![o, ho, wo],
        })
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
            PrivateTensor::Shared { share, .. } => PrivateTensor::Shared {
                share: share.clone(),
                shape,
            },
            PrivateTensor::Bfv { data, .. } if old.last() == shape.last() => PrivateTensor::Bfv {
                data: data.clone(),
                shape,
            },
            PrivateTensor::Bfv { .. } => {
                let (share, _) = self.shares_of(t)?;
                PrivateTensor::Shared { share, shape }
            }
            PrivateTensor::Ckks { ct, level, .. } => PrivateTensor::Ckks {
                ct: ct.as_ref().map(|c| c.reshape(&shape)).transpose()?,
                shape,
                level: *level,
            },
        })
    }

    /// Flattens to a vector.
    pub fn flatten(&mut self, t: &PrivateTensor) -> Result<PrivateTensor, TensorError> {
        let n = t.shape().iter().product::<usize>();
        self.reshape(t, &[n])
    }
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
