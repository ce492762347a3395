//! Training: Keras-style [`Sequential::compile`] and [`Trainer::fit`], run by both parties
//! of a [`Session`] on secret shares (each layer's forward and backward pass are session
//! ops), and the same training in plaintext f64 ([`Trainer::fit_plain`]), the reference it
//! is checked against.
//!
//! The data are [`PrivateTensor`]s with a batch axis first: one party's input, or both
//! parties' inputs joined with [`Session::concat`] (axis 0: each contributes samples; axis
//! 1: each holds some features of the same samples). The initial weights are the model's
//! (public to both parties: both compile the same model); after the first update the
//! weights are secret-shared, and stay so until [`Trainer::reveal`] gives them to one party.
//!
//! Fixed point: use [`SessionConfig::training`](crate::tensor::SessionConfig::training), a
//! 64-bit ring with 16 fractional bits where every truncation is faithful (exact floor), so
//! no value wraps around. Gradients are sums over the batch; the optimizer folds the
//! `1 / batch` into its public constants, encoded with 20 significant bits
//! ([`Session::scale`]).
//!
//! ```
//! use cipherml::nn::{Layer, Sequential, Loss, Optimizer, FitOptions};
//! use ndarray::{arr1, arr2, Array2};
//! // y = 1 when x0 > x1: a logistic regression learns it in plaintext...
//! let x = Array2::from_shape_fn((64, 2), |(i, j)| ((i * 7 + j * 13) % 17) as f64 / 8.0 - 1.0);
//! let y = Array2::from_shape_fn((64, 1), |(i, _)| f64::from(x[[i, 0]] > x[[i, 1]]));
//! let model = Sequential::new(vec![2]).add(Layer::Dense {
//!     weight: arr2(&[[0.0, 0.0]]),
//!     bias: arr1(&[0.0]),
//! });
//! let mut t = model.compile(Loss::BinaryCrossEntropy, Optimizer::sgd(1.0)).unwrap();
//! let opts = FitOptions { epochs: 20, batch_size: 16, ..FitOptions::default() };
//! t.fit_plain(&x.clone().into_dyn(), &y.clone().into_dyn(), &opts).unwrap();
//! let w = t.model_plain().unwrap();
//! let Layer::Dense { weight, .. } = &w.layers()[0] else { unreachable!() };
//! assert!(weight[[0, 0]] > 0.5 && weight[[0, 1]] < -0.5);
//! ```

use cipherml_mpc::net::Channel;
use ndarray::{Array1, Array2, Array4, ArrayD, Axis, Ix2, IxDyn};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::{Layer, NnError, Sequential};
use crate::tensor::kernels::for_each_patch;
use crate::tensor::{PoolSelection, PrivateTensor, ReluMask, Role, Session};

/// A loss, computed on the model's last output (logits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Loss {
    /// Binary cross-entropy on a logit (targets 0 or 1, shape `(n, 1)`): the gradient is
    /// `sigmoid(z) - y`, the sigmoid on shares piecewise linear (within
    /// [`super::SIGMOID_PWL_ERROR`]).
    BinaryCrossEntropy,
    /// Softmax cross-entropy on logits (targets one-hot, shape `(n, classes)`, see
    /// [`one_hot`]): the gradient is `softmax(z) - y`, softmax on shares within `2^-7` per
    /// entry ([`Session::softmax`]).
    SoftmaxCrossEntropy,
    /// Mean squared error over outputs (targets of the output's shape).
    MeanSquaredError,
}

/// An optimizer; its state (momentum, moments) is secret-shared like the weights.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Optimizer {
    /// Stochastic gradient descent: `v <- momentum v + g + weight_decay w; w <- w - lr v`
    /// (`g` the gradient of the batch's mean loss).
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum (0: none).
        momentum: f64,
        /// L2 weight decay (0: none).
        weight_decay: f64,
    },
    /// Adam with bias correction: `m <- b1 m + (1 - b1) g`, `v <- b2 v + (1 - b2) g^2`,
    /// `w <- w - lr m^ / sqrt(v^ + eps^2)` (`m^ = m / (1 - b1^t)`, `v^ = v / (1 - b2^t)`; `eps`
    /// inside the root, as the plaintext reference). On shares the gradient is scaled by
    /// [`ADAM_GRADIENT_SCALE`] for precision, `1 / sqrt` is [`Session::inv_sqrt`]; declared
    /// range: every gradient of the mean loss is clipped to [`ADAM_GRADIENT_CLIP`] (two
    /// ReLUs per parameter; the plaintext reference clips alike), `eps >= 2^-12`.
    Adam {
        /// Learning rate.
        lr: f64,
        /// Decay of the first moment.
        beta1: f64,
        /// Decay of the second moment.
        beta2: f64,
        /// Added to the second moment (squared) before the root.
        eps: f64,
    },
}

/// Adam clips every gradient of the mean loss to `[-8, 8]`, the range in which its moments
/// are computed on shares (see [`Session::inv_sqrt`]'s range).
pub const ADAM_GRADIENT_CLIP: f64 = 8.0;

/// The factor by which Adam scales gradients on shares (the update does not depend on it):
/// `2^4`, so that the second moment of gradients about `10^-3` is resolved at `2^-16`.
pub const ADAM_GRADIENT_SCALE: f64 = 16.0;

impl Optimizer {
    /// Plain SGD with learning rate `lr`.
    pub fn sgd(lr: f64) -> Self {
        Optimizer::Sgd {
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
        }
    }

    /// Adam with learning rate `lr`, `beta1 = 0.9`, `beta2 = 0.999`, `eps = 10^-3`.
    pub fn adam(lr: f64) -> Self {
        Optimizer::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-3,
        }
    }

    fn check(&self) -> Result<(), NnError> {
        let (lr, momentum, weight_decay) = match *self {
            Optimizer::Sgd {
                lr,
                momentum,
                weight_decay,
            } => (lr, momentum, weight_decay),
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                let ok = lr.is_finite()
                    && lr > 0.0
                    && (0.0..1.0).contains(&beta1)
                    && (0.0..1.0).contains(&beta2)
                    && eps.is_finite()
                    && eps >= (-12f64).exp2();
                return if ok {
                    Ok(())
                } else {
                    Err(NnError::Config {
                        what: "optimizer",
                        detail: format!(
                            "Adam: lr {lr} must be positive and finite, beta1 {beta1} and beta2 {beta2} in [0, 1), eps {eps} at least 2^-12"
                        ),
                    })
                };
            }
        };
        let ok = lr.is_finite()
            && lr > 0.0
            && (0.0..1.0).contains(&momentum)
            && (0.0..1.0).contains(&weight_decay);
        if ok {
            Ok(())
        } else {
            Err(NnError::Config {
                what: "optimizer",
                detail: format!(
                    "lr {lr} must be positive and finite, momentum {momentum} and weight decay {weight_decay} in [0, 1)"
                ),
            })
        }
    }
}

/// How to fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitOptions {
    /// Passes over the data.
    pub epochs: usize,
    /// Samples per batch (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// The batch order: the samples shuffled anew each epoch from this seed (known to both
    /// parties: the order is public, the values are not); `None`: in order.
    pub shuffle_seed: Option<u64>,
    /// Reveal, at the end of each epoch, the mean squared error of the predictions (the
    /// loss for [`Loss::MeanSquaredError`]; the Brier score of the predicted probabilities
    /// for the classification losses) to both parties. It leaks information about the
    /// data: it is revealed only if **both** parties ask for it.
    pub reveal_metrics: bool,
}

impl Default for FitOptions {
    /// One epoch of batches of 32, in order, nothing revealed.
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 32,
            shuffle_seed: None,
            reveal_metrics: false,
        }
    }
}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// The epoch (from 0).
    pub epoch: usize,
    /// Batches run.
    pub batches: usize,
    /// The revealed metric ([`FitOptions::reveal_metrics`]), if both parties asked.
    pub metric: Option<f64>,
}

/// The reports of every epoch of a fit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// One per epoch.
    pub epochs: Vec<EpochReport>,
}

/// Progress of a fit, given to the callback of [`Trainer::fit_with`] after each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The epoch (from 0).
    pub epoch: usize,
    /// Batches done in this epoch.
    pub batch: usize,
    /// Batches per epoch.
    pub batches: usize,
}

/// One-hot targets `(n, classes)` from class labels, refusing a label that is not an
/// integer in `[0, classes)`.
pub fn one_hot(labels: &[f64], classes: usize) -> Result<Array2<f64>, NnError> {
    let mut y = Array2::zeros((labels.len(), classes));
    for (i, &l) in labels.iter().enumerate() {
        if !(l.fract() == 0.0 && l >= 0.0 && l < classes as f64) {
            return Err(NnError::LabelOutOfRange {
                index: i,
                label: l,
                classes,
            });
        }
        y[[i, l as usize]] = 1.0;
    }
    Ok(y)
}

/// A parameter and its optimizer state.
#[derive(Debug, Clone)]
struct Param<T> {
    value: T,
    /// SGD's velocity, or Adam's first moment.
    velocity: Option<T>,
    /// Adam's second moment.
    second: Option<T>,
}

/// A model compiled for training with a loss and an optimizer ([`Sequential::compile`]).
/// Its weights are public (the initial ones), secret-shared (after [`Trainer::fit`]) or
/// plain (after [`Trainer::fit_plain`]).
#[derive(Debug, Clone)]
pub struct Trainer {
    model: Sequential,
    loss: Loss,
    optimizer: Optimizer,
    /// Weight and bias of every Dense and Conv2d layer, in order.
    params: Vec<Param<PrivateTensor>>,
    plain: Vec<Param<ArrayD<f64>>>,
    /// Updates done on shares and in plaintext (Adam's bias correction).
    steps: (u64, u64),
}

impl Sequential {
    /// Compiles the model for training: checks that every layer has a backward pass
    /// (Dense, Conv2d, ReLU, Sigmoid, MaxPool, AvgPool, GlobalAvgPool, Flatten) and the
    /// optimizer's hyperparameters. The model's weights are the initial weights.
    pub fn compile(&self, loss: Loss, optimizer: Optimizer) -> Result<Trainer, NnError> {
        optimizer.check()?;
        self.shapes()?;
        let mut plain = Vec::new();
        for l in &self.layers {
            match l {
                Layer::Dense { weight, bias } => {
                    plain.push(weight.clone().into_dyn());
                    plain.push(bias.clone().into_dyn());
                }
                Layer::Conv2d { weight, bias, .. } => {
                    plain.push(weight.clone().into_dyn());
                    plain.push(bias.clone().into_dyn());
                }
                Layer::Relu
                | Layer::Sigmoid
                | Layer::MaxPool { .. }
                | Layer::AvgPool { .. }
                | Layer::GlobalAvgPool
                | Layer::Flatten => {}
                other => {
                    return Err(NnError::NotSupportedInMode {
                        layer: other.describe(),
                        mode: "training",
                        reason: "no backward pass for this layer".into(),
                    })
                }
            }
        }
        let out = self.shapes()?.last().cloned().unwrap_or_default();
        if loss == Loss::BinaryCrossEntropy && out != [1] {
            return Err(NnError::LayerShape {
                layer: "binary cross-entropy (one logit)".into(),
                input: out,
            });
        }
        Ok(Trainer {
            model: self.clone(),
            loss,
            optimizer,
            params: plain
                .iter()
                .map(|p| Param {
                    value: PrivateTensor::Public(p.clone()),
                    velocity: None,
                    second: None,
                })
                .collect(),
            plain: plain
                .into_iter()
                .map(|p| Param {
                    value: p,
                    velocity: None,
                    second: None,
                })
                .collect(),
            steps: (0, 0),
        })
    }
}

/// What a layer's forward pass keeps for its backward pass (private).
enum Cache {
    Dense {
        x: PrivateTensor,
    },
    Conv {
        patches: PrivateTensor,
        input: Vec<usize>,
    },
    Relu(ReluMask),
    Sigmoid(PrivateTensor),
    MaxPool {
        sel: PoolSelection,
        input: Vec<usize>,
    },
    AvgPool {
        input: Vec<usize>,
    },
    Reshape(Vec<usize>),
}

/// What a layer's forward pass keeps for its backward pass (plaintext).
enum PlainCache {
    Dense {
        x: Array2<f64>,
    },
    Conv {
        patches: Array2<f64>,
        input: Vec<usize>,
    },
    Relu(ArrayD<f64>),
    Sigmoid(ArrayD<f64>),
    MaxPool {
        argmax: Vec<usize>,
        input: Vec<usize>,
    },
    AvgPool {
        input: Vec<usize>,
    },
    Reshape(Vec<usize>),
}

/// Which of the first layer's products run on the data encrypted once (see
/// `Trainer::cache_data`): the forward (by columns) and the weight gradient (by rows).
#[derive(Debug, Clone, Copy, Default)]
struct DataCache {
    columns: bool,
    rows: bool,
}

/// The batches of an epoch: a public permutation of `0..n` from the seed, cut in order.
fn batches(n: usize, batch: usize, seed: Option<u64>, epoch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    if let Some(seed) = seed {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed.wrapping_add(epoch as u64));
        order.shuffle(&mut rng);
    }
    order.chunks(batch.max(1)).map(|c| c.to_vec()).collect()
}

impl Trainer {
    /// The model being trained (its initial weights).
    pub fn model(&self) -> &Sequential {
        &self.model
    }

    /// The loss.
    pub fn loss(&self) -> Loss {
        self.loss
    }

    /// Checks the data's shapes against the model and the options: `x` is `(n, input..)`,
    /// `y` is `(n, output..)`.
    fn check_data(&self, xs: &[usize], ys: &[usize], opts: &FitOptions) -> Result<usize, NnError> {
        let out = self.model.shapes()?.last().cloned().unwrap_or_default();
        let ok_x =
            xs.len() == self.model.input_shape.len() + 1 && xs[1..] == self.model.input_shape[..];
        let ok_y = ys.len() == out.len() + 1 && ys[1..] == out[..] && ys[0] == xs[0];
        if !ok_x || !ok_y {
            return Err(NnError::Shape {
                what: "training data (n, input..) and targets (n, output..)",
                left: xs.to_vec(),
                right: ys.to_vec(),
            });
        }
        if opts.batch_size == 0 || opts.epochs == 0 || xs[0] == 0 {
            return Err(NnError::Config {
                what: "fit options",
                detail: format!(
                    "{} epochs of batches of {} over {} samples",
                    opts.epochs, opts.batch_size, xs[0]
                ),
            });
        }
        Ok(xs[0])
    }

    /// Trains on secret shares for `opts.epochs` epochs: both parties call it with the
    /// same model, loss, optimizer, options and data shapes (checked first: a mismatch is
    /// an error on both sides, before any data is used).
    pub fn fit<C: Channel>(
        &mut self,
        s: &mut Session<C>,
        x: &PrivateTensor,
        y: &PrivateTensor,
        opts: &FitOptions,
    ) -> Result<History, NnError> {
        self.fit_with(s, x, y, opts, &mut |_| {})
    }

    /// As [`Trainer::fit`], calling `progress` after every batch. An error in a batch
    /// (the peer gone, say) is returned as [`NnError::Training`] naming the epoch and
    /// batch; the weights are those after the last completed batch.
    pub fn fit_with<C: Channel>(
        &mut self,
        s: &mut Session<C>,
        x: &PrivateTensor,
        y: &PrivateTensor,
        opts: &FitOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<History, NnError> {
        let n = self.check_data(&x.shape(), &y.shape(), opts)?;
        let reveal = self.agree(s, &x.shape(), &y.shape(), opts)?;
        let cached = self.cache_data(s, x, n, opts)?;
        let mut history = History::default();
        for epoch in 0..opts.epochs {
            let order = batches(n, opts.batch_size, opts.shuffle_seed, epoch);
            let mut metric: Option<PrivateTensor> = None;
            for (b, idx) in order.iter().enumerate() {
                let wrap = |e: NnError| NnError::Training {
                    epoch,
                    batch: b,
                    source: Box::new(e),
                };
                let m = self.step(s, x, y, idx, reveal, cached).map_err(wrap)?;
                if let Some(m) = m {
                    metric = Some(match metric {
                        None => m,
                        Some(acc) => s.add(&acc, &m).map_err(wrap)?,
                    });
                }
                progress(Progress {
                    epoch,
                    batch: b + 1,
                    batches: order.len(),
                });
            }
            let metric = match metric {
                Some(m) => {
                    let wrap = |e: NnError| NnError::Training {
                        epoch,
                        batch: order.len(),
                        source: Box::new(e),
                    };
                    let a = s.reveal(&m, Role::Client).map_err(wrap)?;
                    let b = s.reveal(&m, Role::Server).map_err(wrap)?;
                    let outs: usize = y.shape()[1..].iter().product();
                    a.or(b).map(|v| v.sum() / (n * outs) as f64)
                }
                None => None,
            };
            history.epochs.push(EpochReport {
                epoch,
                batches: order.len(),
                metric,
            });
        }
        Ok(history)
    }

    /// Whether the first layer's products (forward) and weight gradients run on the data
    /// encrypted once ([`Session::encrypt_held_columns`], [`Session::encrypt_held_rows`]):
    /// a first dense layer on data one party holds whole, where the session's cost model
    /// finds it cheaper over the whole fit (decided from public shapes, so alike on both
    /// sides). Encrypts and sends the data if so.
    fn cache_data<C: Channel>(
        &self,
        s: &mut Session<C>,
        x: &PrivateTensor,
        n: usize,
        opts: &FitOptions,
    ) -> Result<DataCache, NnError> {
        let shape = x.shape();
        let (Some(Layer::Dense { weight, .. }), [_, k], Some(_)) =
            (self.model.layers.first(), shape.as_slice(), x.holder())
        else {
            return Ok(DataCache::default());
        };
        let batch = opts.batch_size.min(n);
        let batches = opts.epochs * n.div_ceil(batch.max(1));
        let shape = (n, *k, weight.nrows());
        // The first batch's forward multiplies the public initial weights (locally); every
        // gradient multiplies a shared one.
        let columns = s.held_columns_plan(shape, batch, batches.saturating_sub(1));
        let rows = s.held_rows_plan(shape, batch, batches);
        if let Some(per_ct) = columns {
            s.encrypt_held_columns(x, per_ct)?;
        }
        if let Some(per_ct) = rows {
            s.encrypt_held_rows(x, per_ct)?;
        }
        Ok(DataCache {
            columns: columns.is_some(),
            rows: rows.is_some(),
        })
    }

    /// Both parties check that they run the same job (a digest of the model, loss,
    /// optimizer, data shapes and options) and whether both want the metrics revealed.
    fn agree<C: Channel>(
        &self,
        s: &mut Session<C>,
        xs: &[usize],
        ys: &[usize],
        opts: &FitOptions,
    ) -> Result<bool, NnError> {
        use sha2::Digest;
        let job = format!(
            "cipherml training job v1|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}|{:?}",
            self.model.architecture(),
            self.loss,
            self.optimizer,
            xs,
            ys,
            opts.epochs,
            opts.batch_size,
            opts.shuffle_seed
        );
        let mut msg = sha2::Sha256::digest(job.as_bytes()).to_vec();
        msg.push(u8::from(opts.reveal_metrics));
        let ch = s.party().channel();
        ch.send(&msg)?;
        ch.flush()?;
        let peer = ch.recv_limited(33)?;
        if peer.len() != 33 || peer[..32] != msg[..32] {
            return Err(NnError::Invalid {
                what: "training job",
                detail:
                    "the parties' jobs differ (model, loss, optimizer, data shapes or fit options)"
                        .into(),
            });
        }
        Ok(opts.reveal_metrics && peer[32] == 1)
    }

    /// One batch: forward, loss gradient, backward, update. Returns the batch's sum of
    /// squared errors (shared) if metrics are revealed.
    fn step<C: Channel>(
        &mut self,
        s: &mut Session<C>,
        x: &PrivateTensor,
        y: &PrivateTensor,
        idx: &[usize],
        metric: bool,
        cached: DataCache,
    ) -> Result<Option<PrivateTensor>, NnError> {
        let bsz = idx.len();
        let xb = s.rows(x, idx)?;
        let yb = s.rows(y, idx)?;
        // Forward.
        let mut caches = Vec::with_capacity(self.model.layers.len());
        let mut h = xb;
        let mut pi = 0;
        for layer in &self.model.layers {
            let rows = (cached.columns && caches.is_empty()).then_some(idx);
            let (out, cache) = self.forward_layer(s, layer, &h, &mut pi, rows)?;
            caches.push(cache);
            h = out;
        }
        // The loss's gradient on the logits (times the batch size: folded into the update).
        let z = s.rescaled(&h)?;
        let zf = s.reshape(&z, &yb.shape())?;
        let p = match self.loss {
            Loss::BinaryCrossEntropy => s.sigmoid(&zf)?,
            Loss::SoftmaxCrossEntropy => s.softmax(&zf)?,
            Loss::MeanSquaredError => zf,
        };
        let d = s.sub(&p, &yb)?;
        let m = if metric {
            let sq = s.mul(&d, &d)?;
            let all = s.reshape(&sq, &[sq.shape().iter().product()])?;
            Some(s.sum_rows(&all)?)
        } else {
            None
        };
        let mut g = s.reshape(&d, &h.shape())?;
        // Backward: gradients of the parameters, last layer first.
        let mut grads: Vec<Option<PrivateTensor>> = vec![None; self.params.len()];
        for (li, (layer, cache)) in self.model.layers.iter().zip(caches).enumerate().rev() {
            let first = li == 0;
            let rows = (first && cached.rows).then_some(idx);
            g = self.backward_layer(s, layer, cache, &g, &mut pi, &mut grads, first, rows)?;
        }
        // Update.
        let outs: usize = yb.shape()[1..].iter().product();
        let c = match self.loss {
            Loss::MeanSquaredError => 2.0 / (bsz * outs) as f64,
            _ => 1.0 / bsz as f64,
        };
        self.steps.0 += 1;
        for (param, grad) in self.params.iter_mut().zip(grads) {
            let grad = grad.expect("every parameter has a gradient");
            match self.optimizer {
                Optimizer::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                } => adam_private(s, (lr, beta1, beta2, eps), self.steps.0, param, &grad, c)?,
                Optimizer::Sgd { .. } => sgd_private(s, &self.optimizer, param, &grad, c)?,
            }
        }
        Ok(m)
    }

    fn forward_layer<C: Channel>(
        &self,
        s: &mut Session<C>,
        layer: &Layer,
        h: &PrivateTensor,
        pi: &mut usize,
        rows: Option<&[usize]>,
    ) -> Result<(PrivateTensor, Cache), NnError> {
        let shape = h.shape();
        Ok(match layer {
            Layer::Dense { .. } => {
                let (w, b) = (&self.params[*pi].value, &self.params[*pi + 1].value);
                *pi += 2;
                let wt = s.transpose(w)?;
                // `h` is these rows of the data encrypted once (see `cache_data`).
                let z = match rows {
                    Some(rows) => s.matmul_held_columns(h, rows, &wt)?,
                    None => s.matmul(h, &wt)?,
                };
                let z = s.add(&z, b)?;
                (z, Cache::Dense { x: h.clone() })
            }
            Layer::Conv2d {
                weight,
                stride,
                padding,
                ..
            } => {
                let (o, c, kh, kw) = weight.dim();
                let (w, b) = (&self.params[*pi].value, &self.params[*pi + 1].value);
                *pi += 2;
                let patches = s.patches(h, (kh, kw), *stride, *padding)?;
                let cols = patches.shape()[1] / shape[0];
                let pt = s.transpose(&patches)?;
                let wm = s.reshape(w, &[o, c * kh * kw])?;
                let wt = s.transpose(&wm)?;
                let z = s.matmul(&pt, &wt)?;
                let z = s.add(&z, b)?;
                let z = s.reshape(&z, &[shape[0], cols, o])?;
                let z = s.permute(&z, &[0, 2, 1])?;
                let out = layer.output_shape(&shape[1..])?;
                let mut full = vec![shape[0]];
                full.extend(out);
                let z = s.reshape(&z, &full)?;
                (
                    z,
                    Cache::Conv {
                        patches,
                        input: shape,
                    },
                )
            }
            Layer::Relu => {
                let (y, mask) = s.relu_masked(h)?;
                (y, Cache::Relu(mask))
            }
            Layer::Sigmoid => {
                let y = s.sigmoid(h)?;
                (y.clone(), Cache::Sigmoid(y))
            }
            Layer::MaxPool { kernel, stride } => {
                let imgs = s.reshape(h, &[shape[0] * shape[1], shape[2], shape[3]])?;
                let (y, sel) = s.max_pool2d_masked(&imgs, *kernel, *stride)?;
                let ys = y.shape();
                let y = s.reshape(&y, &[shape[0], shape[1], ys[1], ys[2]])?;
                (
                    y,
                    Cache::MaxPool {
                        sel,
                        input: vec![shape[0] * shape[1], shape[2], shape[3]],
                    },
                )
            }
            Layer::AvgPool { kernel, stride } => {
                let input = vec![shape[0] * shape[1], shape[2], shape[3]];
                let imgs = s.reshape(h, &input)?;
                let y = s.avg_pool2d(&imgs, *kernel, *stride)?;
                let ys = y.shape();
                let y = s.reshape(&y, &[shape[0], shape[1], ys[1], ys[2]])?;
                (y, Cache::AvgPool { input })
            }
            Layer::GlobalAvgPool => {
                let input = vec![shape[0] * shape[1], shape[2], shape[3]];
                let imgs = s.reshape(h, &input)?;
                let y = s.avg_pool2d(&imgs, shape[2].min(shape[3]), 1)?;
                let y = s.reshape(&y, &[shape[0], shape[1]])?;
                (y, Cache::AvgPool { input })
            }
            Layer::Flatten => {
                let n: usize = shape[1..].iter().product();
                let y = s.reshape(h, &[shape[0], n])?;
                (y, Cache::Reshape(shape))
            }
            other => {
                return Err(NnError::NotSupportedInMode {
                    layer: other.describe(),
                    mode: "training",
                    reason: "no backward pass for this layer".into(),
                })
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_layer<C: Channel>(
        &self,
        s: &mut Session<C>,
        layer: &Layer,
        cache: Cache,
        g: &PrivateTensor,
        pi: &mut usize,
        grads: &mut [Option<PrivateTensor>],
        first: bool,
        rows: Option<&[usize]>,
    ) -> Result<PrivateTensor, NnError> {
        Ok(match (layer, cache) {
            (Layer::Dense { .. }, Cache::Dense { x }) => {
                *pi -= 2;
                let g = s.rescaled(g)?;
                // `x` is these rows of the data encrypted once by rows (see `cache_data`).
                let dw = match rows {
                    Some(rows) => s.matmul_t_held_rows(&x, rows, &g)?,
                    None => {
                        let gt = s.transpose(&g)?;
                        s.matmul(&gt, &x)?
                    }
                };
                grads[*pi] = Some(dw);
                grads[*pi + 1] = Some(s.sum_rows(&g)?);
                if first {
                    g
                } else {
                    let w = self.params[*pi].value.clone();
                    s.matmul(&g, &w)?
                }
            }
            (
                Layer::Conv2d {
                    weight,
                    stride,
                    padding,
                    ..
                },
                Cache::Conv { patches, input },
            ) => {
                *pi -= 2;
                let (o, c, kh, kw) = weight.dim();
                let gs = g.shape();
                let g = s.rescaled(g)?;
                let g = s.reshape(&g, &[gs[0], o, gs[2] * gs[3]])?;
                let g = s.permute(&g, &[0, 2, 1])?;
                let g = s.reshape(&g, &[gs[0] * gs[2] * gs[3], o])?;
                let dwt = s.matmul(&patches, &g)?;
                let dw = s.transpose(&dwt)?;
                grads[*pi] = Some(s.reshape(&dw, &[o, c, kh, kw])?);
                grads[*pi + 1] = Some(s.sum_rows(&g)?);
                if first {
                    g
                } else {
                    let w = self.params[*pi].value.clone();
                    let wm = s.reshape(&w, &[o, c * kh * kw])?;
                    let dpt = s.matmul(&g, &wm)?;
                    let dp = s.transpose(&dpt)?;
                    s.patches_backward(&dp, &input, (kh, kw), *stride, *padding)?
                }
            }
            (Layer::Relu, Cache::Relu(mask)) => s.relu_backward(&mask, g)?,
            (Layer::Sigmoid, Cache::Sigmoid(y)) => {
                let one = PrivateTensor::Public(ArrayD::from_elem(y.shape(), 1.0));
                let om = s.sub(&one, &y)?;
                let d = s.mul(&y, &om)?;
                let g = s.rescaled(g)?;
                s.mul(&g, &d)?
            }
            (Layer::MaxPool { .. }, Cache::MaxPool { sel, input }) => {
                let gs = g.shape();
                let gi = s.reshape(g, &[gs[0] * gs[1], gs[2], gs[3]])?;
                let dx = s.max_pool2d_backward(&sel, &gi)?;
                s.reshape(&dx, &[gs[0], gs[1], input[1], input[2]])?
            }
            (Layer::AvgPool { kernel, stride }, Cache::AvgPool { input }) => {
                let gs = g.shape();
                let gi = s.reshape(g, &[gs[0] * gs[1], gs[2], gs[3]])?;
                let dx = s.avg_pool2d_backward(&gi, &input, *kernel, *stride)?;
                s.reshape(&dx, &[gs[0], gs[1], input[1], input[2]])?
            }
            (Layer::GlobalAvgPool, Cache::AvgPool { input }) => {
                let gs = g.shape();
                let gi = s.reshape(g, &[gs[0] * gs[1], 1, 1])?;
                let k = input[1].min(input[2]);
                let dx = s.avg_pool2d_backward(&gi, &input, k, 1)?;
                s.reshape(&dx, &[gs[0], gs[1], input[1], input[2]])?
            }
            (Layer::Flatten, Cache::Reshape(shape)) => s.reshape(g, &shape)?,
            (other, _) => {
                return Err(NnError::NotSupportedInMode {
                    layer: other.describe(),
                    mode: "training",
                    reason: "no backward pass for this layer".into(),
                })
            }
        })
    }

    /// Reveals the trained weights to `to`, who gets the model (`Some`); the other party
    /// gets `None`. The weights stay shared in the trainer (reveal to both by calling it
    /// twice, in the same order on both sides).
    pub fn reveal<C: Channel>(
        &self,
        s: &mut Session<C>,
        to: Role,
    ) -> Result<Option<Sequential>, NnError> {
        let mut values = Vec::with_capacity(self.params.len());
        for p in &self.params {
            values.push(s.reveal(&p.value, to)?);
        }
        if values.iter().any(Option::is_none) {
            return Ok(None);
        }
        let values: Vec<ArrayD<f64>> = values.into_iter().map(|v| v.expect("some")).collect();
        self.with_weights(&values).map(Some)
    }

    /// The model with the plaintext weights of [`Trainer::fit_plain`].
    pub fn model_plain(&self) -> Result<Sequential, NnError> {
        let values: Vec<ArrayD<f64>> = self.plain.iter().map(|p| p.value.clone()).collect();
        self.with_weights(&values)
    }

    fn with_weights(&self, values: &[ArrayD<f64>]) -> Result<Sequential, NnError> {
        let mut it = values.iter();
        let mut next = |what: &'static str| {
            it.next().cloned().ok_or(NnError::Config {
                what,
                detail: "fewer weights than layers".into(),
            })
        };
        let mut model = Sequential::new(self.model.input_shape.clone());
        for l in &self.model.layers {
            let layer = match l {
                Layer::Dense { .. } => Layer::Dense {
                    weight: to2(next("dense weight")?)?,
                    bias: to1(next("dense bias")?)?,
                },
                Layer::Conv2d {
                    stride, padding, ..
                } => Layer::Conv2d {
                    weight: next("conv weight")?
                        .into_dimensionality()
                        .map_err(|e| shape_err("conv weight", e))?,
                    bias: to1(next("conv bias")?)?,
                    stride: *stride,
                    padding: *padding,
                },
                other => other.clone(),
            };
            model = model.add(layer);
        }
        Ok(model)
    }

    /// The same training in plaintext f64 (exact sigmoid and softmax), with the same batch
    /// order: the reference private training is checked against, and a way to train when
    /// the data need no protection.
    pub fn fit_plain(
        &mut self,
        x: &ArrayD<f64>,
        y: &ArrayD<f64>,
        opts: &FitOptions,
    ) -> Result<History, NnError> {
        let n = self.check_data(x.shape(), y.shape(), opts)?;
        if let Some((index, &value)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(NnError::NonFinite { index, value });
        }
        let mut history = History::default();
        for epoch in 0..opts.epochs {
            let order = batches(n, opts.batch_size, opts.shuffle_seed, epoch);
            let mut sq = 0.0;
            for idx in &order {
                sq += self.step_plain(x, y, idx)?;
            }
            let outs: usize = y.shape()[1..].iter().product();
            history.epochs.push(EpochReport {
                epoch,
                batches: order.len(),
                metric: Some(sq / (n * outs) as f64),
            });
        }
        Ok(history)
    }

    /// The gradients of the mean loss over `x` (a batch) with respect to every parameter,
    /// in plaintext, at the trainer's current plain weights (for gradient checks).
    pub fn gradients_plain(
        &self,
        x: &ArrayD<f64>,
        y: &ArrayD<f64>,
    ) -> Result<Vec<ArrayD<f64>>, NnError> {
        let (grads, _, c) = self.backprop_plain(x, y)?;
        Ok(grads.into_iter().map(|g| g * c).collect())
    }

    /// The mean loss over a batch, in plaintext (cross-entropy or squared error).
    pub fn loss_plain(&self, x: &ArrayD<f64>, y: &ArrayD<f64>) -> Result<f64, NnError> {
        let mut h = x.clone();
        let mut pi = 0;
        for layer in &self.model.layers {
            h = self.forward_plain(layer, &h, &mut pi)?.0;
        }
        let z = h
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order(y.raw_dim())
            .map_err(|e| shape_err("logits", e))?;
        let n = y.shape()[0] as f64;
        Ok(match self.loss {
            Loss::BinaryCrossEntropy => {
                z.iter()
                    .zip(y.iter())
                    .map(|(&z, &y)| z.max(0.0) - z * y + (-z.abs()).exp().ln_1p())
                    .sum::<f64>()
                    / n
            }
            Loss::SoftmaxCrossEntropy => {
                let z2 = z
                    .into_dimensionality::<Ix2>()
                    .map_err(|e| shape_err("logits", e))?;
                let y2 = y
                    .view()
                    .into_dimensionality::<Ix2>()
                    .map_err(|e| shape_err("targets", e))?;
                let mut total = 0.0;
                for (zr, yr) in z2.outer_iter().zip(y2.outer_iter()) {
                    let m = zr.fold(f64::MIN, |a, &b| a.max(b));
                    let lse = m + zr.mapv(|v| (v - m).exp()).sum().ln();
                    total += zr
                        .iter()
                        .zip(yr.iter())
                        .map(|(&z, &y)| y * (lse - z))
                        .sum::<f64>();
                }
                total / n
            }
            Loss::MeanSquaredError => {
                let outs = z.len() as f64 / n;
                (&z - y).mapv(|v| v * v).sum() / (n * outs)
            }
        })
    }

    /// Gradients (sums over the batch), the batch's squared error, and the constant that
    /// makes the sums the gradient of the mean loss.
    fn backprop_plain(
        &self,
        x: &ArrayD<f64>,
        y: &ArrayD<f64>,
    ) -> Result<(Vec<ArrayD<f64>>, f64, f64), NnError> {
        let bsz = x.shape()[0];
        let mut caches = Vec::new();
        let mut h = x.clone();
        let mut pi = 0;
        for layer in &self.model.layers {
            let (out, cache) = self.forward_plain(layer, &h, &mut pi)?;
            caches.push(cache);
            h = out;
        }
        let hshape = h.shape().to_vec();
        let z = h
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order(y.raw_dim())
            .map_err(|e| shape_err("logits", e))?;
        let p = match self.loss {
            Loss::BinaryCrossEntropy => z.mapv(|v| 1.0 / (1.0 + (-v).exp())),
            Loss::SoftmaxCrossEntropy => {
                let mut z2 = z
                    .into_dimensionality::<Ix2>()
                    .map_err(|e| shape_err("logits", e))?;
                for mut r in z2.outer_iter_mut() {
                    let m = r.fold(f64::MIN, |a, &b| a.max(b));
                    r.mapv_inplace(|v| (v - m).exp());
                    let sum = r.sum();
                    r.mapv_inplace(|v| v / sum);
                }
                z2.into_dyn()
            }
            Loss::MeanSquaredError => z,
        };
        let d = &p - y;
        let sq = d.mapv(|v| v * v).sum();
        let mut g = d
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order(IxDyn(&hshape))
            .map_err(|e| shape_err("gradient", e))?;
        let mut grads: Vec<Option<ArrayD<f64>>> = vec![None; self.plain.len()];
        for (li, (layer, cache)) in self.model.layers.iter().zip(caches).enumerate().rev() {
            g = self.backward_plain(layer, cache, g, &mut pi, &mut grads, li == 0)?;
        }
        let outs: usize = y.shape()[1..].iter().product();
        let c = match self.loss {
            Loss::MeanSquaredError => 2.0 / (bsz * outs) as f64,
            _ => 1.0 / bsz as f64,
        };
        Ok((
            grads.into_iter().map(|g| g.expect("gradient")).collect(),
            sq,
            c,
        ))
    }

    fn step_plain(
        &mut self,
        x: &ArrayD<f64>,
        y: &ArrayD<f64>,
        idx: &[usize],
    ) -> Result<f64, NnError> {
        let xb = x.select(Axis(0), idx);
        let yb = y.select(Axis(0), idx);
        let (grads, sq, c) = self.backprop_plain(&xb, &yb)?;
        self.steps.1 += 1;
        let (lr, momentum, weight_decay) = match self.optimizer {
            Optimizer::Sgd {
                lr,
                momentum,
                weight_decay,
            } => (lr, momentum, weight_decay),
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                let t = self.steps.1 as i32;
                for (p, g) in self.plain.iter_mut().zip(grads) {
                    let g = (g * c).mapv(|v| v.clamp(-ADAM_GRADIENT_CLIP, ADAM_GRADIENT_CLIP));
                    let m = match p.velocity.take() {
                        Some(m) => m * beta1 + &g * (1.0 - beta1),
                        None => &g * (1.0 - beta1),
                    };
                    let g2 = g.mapv(|v| v * v);
                    let v = match p.second.take() {
                        Some(v) => v * beta2 + &g2 * (1.0 - beta2),
                        None => g2 * (1.0 - beta2),
                    };
                    let mh = &m / (1.0 - beta1.powi(t));
                    let vh = &v / (1.0 - beta2.powi(t));
                    let step = ndarray::Zip::from(&mh)
                        .and(&vh)
                        .map_collect(|&a, &b| lr * a / (b + eps * eps).sqrt());
                    p.value = &p.value - &step;
                    p.velocity = Some(m);
                    p.second = Some(v);
                }
                return Ok(sq);
            }
        };
        for (p, g) in self.plain.iter_mut().zip(grads) {
            if momentum == 0.0 {
                let mut step = g * (lr * c);
                if weight_decay > 0.0 {
                    step = step + &p.value * (lr * weight_decay);
                }
                p.value = &p.value - &step;
            } else {
                let mut gs = g * c;
                if weight_decay > 0.0 {
                    gs = gs + &p.value * weight_decay;
                }
                let v = match p.velocity.take() {
                    Some(v) => v * momentum + gs,
                    None => gs,
                };
                p.value = &p.value - &(&v * lr);
                p.velocity = Some(v);
            }
        }
        Ok(sq)
    }

    fn forward_plain(
        &self,
        layer: &Layer,
        h: &ArrayD<f64>,
        pi: &mut usize,
    ) -> Result<(ArrayD<f64>, PlainCache), NnError> {
        let shape = h.shape().to_vec();
        Ok(match layer {
            Layer::Dense { .. } => {
                let w = as2(&self.plain[*pi].value)?;
                let b = &self.plain[*pi + 1].value;
                *pi += 2;
                let x = as2(h)?;
                let z = x.dot(&w.t()) + b;
                (z.into_dyn(), PlainCache::Dense { x })
            }
            Layer::Conv2d {
                weight,
                stride,
                padding,
                ..
            } => {
                let (o, c, kh, kw) = weight.dim();
                let w = self.plain[*pi]
                    .value
                    .clone()
                    .as_standard_layout()
                    .into_owned()
                    .into_shape_with_order((o, c * kh * kw))
                    .map_err(|e| shape_err("conv weight", e))?;
                let b = &self.plain[*pi + 1].value;
                *pi += 2;
                let patches = patches_plain(h, (kh, kw), *stride, *padding)?;
                let cols = patches.ncols() / shape[0];
                let z = patches.t().dot(&w.t()) + b;
                let z = z
                    .as_standard_layout()
                    .into_owned()
                    .into_shape_with_order((shape[0], cols, o))
                    .map_err(|e| shape_err("conv output", e))?
                    .permuted_axes([0, 2, 1])
                    .as_standard_layout()
                    .to_owned();
                let out = layer.output_shape(&shape[1..])?;
                let mut full = vec![shape[0]];
                full.extend(out);
                let z = z
                    .as_standard_layout()
                    .into_owned()
                    .into_shape_with_order(IxDyn(&full))
                    .map_err(|e| shape_err("conv output", e))?;
                (
                    z,
                    PlainCache::Conv {
                        patches,
                        input: shape,
                    },
                )
            }
            Layer::Relu => (h.mapv(|v| v.max(0.0)), PlainCache::Relu(h.clone())),
            Layer::Sigmoid => {
                let y = h.mapv(|v| 1.0 / (1.0 + (-v).exp()));
                (y.clone(), PlainCache::Sigmoid(y))
            }
            Layer::MaxPool { kernel, stride } => {
                let (b, c, hh, ww) = (shape[0], shape[1], shape[2], shape[3]);
                let (ho, wo) = ((hh - kernel) / stride + 1, (ww - kernel) / stride + 1);
                let mut y = ArrayD::zeros(IxDyn(&[b, c, ho, wo]));
                let mut argmax = Vec::with_capacity(b * c * ho * wo);
                let flat = h.as_standard_layout();
                let flat = flat.as_slice().expect("standard layout");
                for img in 0..b * c {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let idx =
                                tournament_argmax(flat, img, (hh, ww), *kernel, *stride, (oy, ox));
                            argmax.push(idx);
                            y.as_slice_mut().expect("standard")[(img * ho + oy) * wo + ox] =
                                flat[idx];
                        }
                    }
                }
                (
                    y,
                    PlainCache::MaxPool {
                        argmax,
                        input: shape,
                    },
                )
            }
            Layer::AvgPool { .. } | Layer::GlobalAvgPool => {
                let (b, c) = (shape[0], shape[1]);
                let mut y = Vec::new();
                let out = layer.output_shape(&shape[1..])?;
                for i in 0..b {
                    let s = h.index_axis(Axis(0), i).to_owned();
                    y.extend(layer.forward(&s)?.iter().copied());
                }
                let mut full = vec![b];
                full.extend(out);
                let _ = c;
                (
                    ArrayD::from_shape_vec(IxDyn(&full), y)
                        .map_err(|e| shape_err("pool output", e))?,
                    PlainCache::AvgPool { input: shape },
                )
            }
            Layer::Flatten => {
                let n: usize = shape[1..].iter().product();
                (
                    h.clone()
                        .as_standard_layout()
                        .into_owned()
                        .into_shape_with_order(IxDyn(&[shape[0], n]))
                        .map_err(|e| shape_err("flatten", e))?,
                    PlainCache::Reshape(shape),
                )
            }
            other => {
                return Err(NnError::NotSupportedInMode {
                    layer: other.describe(),
                    mode: "training",
                    reason: "no backward pass for this layer".into(),
                })
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_plain(
        &self,
        layer: &Layer,
        cache: PlainCache,
        g: ArrayD<f64>,
        pi: &mut usize,
        grads: &mut [Option<ArrayD<f64>>],
        first: bool,
    ) -> Result<ArrayD<f64>, NnError> {
        Ok(match (layer, cache) {
            (Layer::Dense { .. }, PlainCache::Dense { x }) => {
                *pi -= 2;
                let g2 = as2(&g)?;
                grads[*pi] = Some(g2.t().dot(&x).into_dyn());
                grads[*pi + 1] = Some(g2.sum_axis(Axis(0)).into_dyn());
                if first {
                    g
                } else {
                    g2.dot(&as2(&self.plain[*pi].value)?).into_dyn()
                }
            }
            (
                Layer::Conv2d {
                    weight,
                    stride,
                    padding,
                    ..
                },
                PlainCache::Conv { patches, input },
            ) => {
                *pi -= 2;
                let (o, c, kh, kw) = weight.dim();
                let gs = g.shape().to_vec();
                let g2 = g
                    .as_standard_layout()
                    .into_owned()
                    .into_shape_with_order((gs[0], o, gs[2] * gs[3]))
                    .map_err(|e| shape_err("conv gradient", e))?
                    .permuted_axes([0, 2, 1])
                    .as_standard_layout()
                    .to_owned()
                    .as_standard_layout()
                    .into_owned()
                    .into_shape_with_order((gs[0] * gs[2] * gs[3], o))
                    .map_err(|e| shape_err("conv gradient", e))?;
                let dw = patches.dot(&g2).t().to_owned();
                grads[*pi] = Some(
                    dw.as_standard_layout()
                        .into_owned()
                        .into_shape_with_order((o, c, kh, kw))
                        .map_err(|e| shape_err("conv weight gradient", e))?
                        .into_dyn(),
                );
                grads[*pi + 1] = Some(g2.sum_axis(Axis(0)).into_dyn());
                if first {
                    g2.into_dyn()
                } else {
                    let w = self.plain[*pi]
                        .value
                        .clone()
                        .as_standard_layout()
                        .into_owned()
                        .into_shape_with_order((o, c * kh * kw))
                        .map_err(|e| shape_err("conv weight", e))?;
                    let dp = g2.dot(&w).t().to_owned();
                    patches_backward_plain(&dp, &input, (kh, kw), *stride, *padding)
                }
            }
            (Layer::Relu, PlainCache::Relu(x)) => ndarray::Zip::from(&g)
                .and(&x)
                .map_collect(|&g, &x| if x >= 0.0 { g } else { 0.0 }),
            (Layer::Sigmoid, PlainCache::Sigmoid(y)) => &g * &y.mapv(|v| v * (1.0 - v)),
            (Layer::MaxPool { .. }, PlainCache::MaxPool { argmax, input }) => {
                let mut dx = ArrayD::zeros(IxDyn(&input));
                let gs = g.as_standard_layout();
                let dxs = dx.as_slice_mut().expect("standard");
                for (i, &a) in argmax.iter().enumerate() {
                    dxs[a] += gs.as_slice().expect("standard")[i];
                }
                dx
            }
            (Layer::AvgPool { kernel, stride }, PlainCache::AvgPool { input }) => {
                avg_backward_plain(&g, &input, *kernel, *stride)
            }
            (Layer::GlobalAvgPool, PlainCache::AvgPool { input }) => {
                let k = input[2].min(input[3]);
                let gs = g.shape().to_vec();
                let g4 = g
                    .as_standard_layout()
                    .into_owned()
                    .into_shape_with_order(IxDyn(&[gs[0], gs[1], 1, 1]))
                    .map_err(|e| shape_err("pool gradient", e))?;
                avg_backward_plain(&g4, &input, k, 1)
            }
            (Layer::Flatten, PlainCache::Reshape(shape)) => g
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(&shape))
                .map_err(|e| shape_err("flatten gradient", e))?,
            (other, _) => {
                return Err(NnError::NotSupportedInMode {
                    layer: other.describe(),
                    mode: "training",
                    reason: "no backward pass for this layer".into(),
                })
            }
        })
    }
}

/// One Adam step on shares (see [`Optimizer::Adam`]), the `t`-th update; `c` turns the
/// gradient's batch sum into the gradient of the mean loss.
fn adam_private<C: Channel>(
    s: &mut Session<C>,
    (lr, beta1, beta2, eps): (f64, f64, f64, f64),
    t: u64,
    p: &mut Param<PrivateTensor>,
    g: &PrivateTensor,
    c: f64,
) -> Result<(), NnError> {
    let scale = ADAM_GRADIENT_SCALE;
    let gs = s.scale(g, c * scale)?;
    // clip(g, -b, b) = ReLU(g + b) - ReLU(g - b) - b.
    let bound = PrivateTensor::Public(ArrayD::from_elem(gs.shape(), ADAM_GRADIENT_CLIP * scale));
    let up = s.add(&gs, &bound)?;
    let down = s.sub(&gs, &bound)?;
    let both = s.concat(&[&up, &down], 0)?;
    let both = s.relu(&both)?;
    let n = gs.shape().first().copied().unwrap_or(1);
    let idx_up: Vec<usize> = (0..n).collect();
    let idx_down: Vec<usize> = (n..2 * n).collect();
    let (ru, rd) = (s.rows(&both, &idx_up)?, s.rows(&both, &idx_down)?);
    let diff = s.sub(&ru, &rd)?;
    let gs = s.sub(&diff, &bound)?;
    let m = match p.velocity.take() {
        Some(m) => {
            let a = s.scale(&m, beta1)?;
            let b = s.scale(&gs, 1.0 - beta1)?;
            s.add(&a, &b)?
        }
        None => s.scale(&gs, 1.0 - beta1)?,
    };
    let g2 = s.mul(&gs, &gs)?;
    let v = match p.second.take() {
        Some(v) => {
            let a = s.scale(&v, beta2)?;
            let b = s.scale(&g2, 1.0 - beta2)?;
            s.add(&a, &b)?
        }
        None => s.scale(&g2, 1.0 - beta2)?,
    };
    let t = t.min(i32::MAX as u64) as i32;
    let mh = s.scale(&m, 1.0 / (1.0 - beta1.powi(t)))?;
    let vh = s.scale(&v, 1.0 / (1.0 - beta2.powi(t)))?;
    // sqrt(v^ + eps^2) at the gradient's scale: (scale eps)^2 >= 2^-16 is the range's floor.
    let e2 = (scale * eps).powi(2);
    let floor = PrivateTensor::Public(ArrayD::from_elem(vh.shape(), e2));
    let x = s.add(&vh, &floor)?;
    let lo = (e2.log2().floor() as i32).max(-16);
    let y = s.inv_sqrt(&x, lo, 14)?;
    let step = s.mul(&mh, &y)?;
    let step = s.scale(&step, lr)?;
    p.value = s.sub(&p.value, &step)?;
    p.velocity = Some(m);
    p.second = Some(v);
    Ok(())
}

/// One SGD step on shares (see [`Optimizer::Sgd`]); `c` turns the gradient's batch sum
/// into the gradient of the mean loss.
fn sgd_private<C: Channel>(
    s: &mut Session<C>,
    opt: &Optimizer,
    p: &mut Param<PrivateTensor>,
    g: &PrivateTensor,
    c: f64,
) -> Result<(), NnError> {
    let Optimizer::Sgd {
        lr,
        momentum,
        weight_decay,
    } = *opt
    else {
        return Err(NnError::Config {
            what: "optimizer",
            detail: format!("{opt:?} is not SGD"),
        });
    };
    if momentum == 0.0 {
        let mut step = s.scale(g, lr * c)?;
        if weight_decay > 0.0 {
            let d = s.scale(&p.value, lr * weight_decay)?;
            step = s.add(&step, &d)?;
        }
        p.value = s.sub(&p.value, &step)?;
    } else {
        let mut gs = s.scale(g, c)?;
        if weight_decay > 0.0 {
            let d = s.scale(&p.value, weight_decay)?;
            gs = s.add(&gs, &d)?;
        }
        let v = match p.velocity.take() {
            Some(v) => {
                let mv = s.scale(&v, momentum)?;
                s.add(&mv, &gs)?
            }
            None => gs,
        };
        let step = s.scale(&v, lr)?;
        p.value = s.sub(&p.value, &step)?;
        p.velocity = Some(v);
    }
    Ok(())
}

fn shape_err(what: &'static str, e: ndarray::ShapeError) -> NnError {
    NnError::Config {
        what,
        detail: e.to_string(),
    }
}

fn as2(a: &ArrayD<f64>) -> Result<Array2<f64>, NnError> {
    a.clone()
        .into_dimensionality::<Ix2>()
        .map_err(|e| shape_err("matrix", e))
}

fn to2(a: ArrayD<f64>) -> Result<Array2<f64>, NnError> {
    a.into_dimensionality::<Ix2>()
        .map_err(|e| shape_err("matrix", e))
}

fn to1(a: ArrayD<f64>) -> Result<Array1<f64>, NnError> {
    a.into_dimensionality().map_err(|e| shape_err("vector", e))
}

/// The element of a window the private tournament selects: pairs `(0, 1), (2, 3), ..`
/// compared with `a >= b` (ties to the first), winners paired again; an odd one out
/// passes through.
fn tournament_argmax(
    flat: &[f64],
    img: usize,
    (h, w): (usize, usize),
    kernel: usize,
    stride: usize,
    (oy, ox): (usize, usize),
) -> usize {
    let mut cand: Vec<usize> = (0..kernel * kernel)
        .map(|i| img * h * w + (oy * stride + i / kernel) * w + ox * stride + i % kernel)
        .collect();
    while cand.len() > 1 {
        let mut next: Vec<usize> = cand
            .chunks(2)
            .map(|p| {
                if p.len() == 1 || flat[p[0]] >= flat[p[1]] {
                    p[0]
                } else {
                    p[1]
                }
            })
            .collect();
        std::mem::swap(&mut cand, &mut next);
    }
    cand[0]
}

/// Convolution patches of a batch `(B, C, H, W)` as `(C kh kw, B Ho Wo)` (as
/// [`Session::patches`]).
fn patches_plain(
    x: &ArrayD<f64>,
    (kh, kw): (usize, usize),
    stride: usize,
    pad: usize,
) -> Result<Array2<f64>, NnError> {
    let x4: Array4<f64> = x
        .clone()
        .into_dimensionality()
        .map_err(|e| shape_err("conv input (B, C, H, W)", e))?;
    let (b, c, h, w) = x4.dim();
    let cols = ((h + 2 * pad - kh) / stride + 1) * ((w + 2 * pad - kw) / stride + 1);
    let x4 = x4.as_standard_layout();
    let flat = x4.as_slice().expect("standard layout");
    let mut out = Array2::zeros((c * kh * kw, b * cols));
    for i in 0..b {
        let img = &flat[i * c * h * w..(i + 1) * c * h * w];
        for_each_patch((c, h, w), (kh, kw), stride, pad, |row, col, pos| {
            out[[row, i * cols + col]] = img[pos];
        });
    }
    Ok(out)
}

fn patches_backward_plain(
    dp: &Array2<f64>,
    input: &[usize],
    (kh, kw): (usize, usize),
    stride: usize,
    pad: usize,
) -> ArrayD<f64> {
    let (b, c, h, w) = (input[0], input[1], input[2], input[3]);
    let cols = ((h + 2 * pad - kh) / stride + 1) * ((w + 2 * pad - kw) / stride + 1);
    let mut dx = vec![0.0; b * c * h * w];
    for i in 0..b {
        let img = &mut dx[i * c * h * w..(i + 1) * c * h * w];
        for_each_patch((c, h, w), (kh, kw), stride, pad, |row, col, pos| {
            img[pos] += dp[[row, i * cols + col]];
        });
    }
    ArrayD::from_shape_vec(IxDyn(&[b, c, h, w]), dx).expect("b c h w values")
}

fn avg_backward_plain(
    g: &ArrayD<f64>,
    input: &[usize],
    kernel: usize,
    stride: usize,
) -> ArrayD<f64> {
    let (b, c, h, w) = (input[0], input[1], input[2], input[3]);
    let (ho, wo) = ((h - kernel) / stride + 1, (w - kernel) / stride + 1);
    let k2 = (kernel * kernel) as f64;
    let mut dx = Array4::<f64>::zeros((b, c, h, w));
    let g = g.as_standard_layout();
    let gs = g.as_slice().expect("standard");
    for i in 0..b {
        for ch in 0..c {
            for y in 0..ho {
                for xx in 0..wo {
                    let v = gs[((i * c + ch) * ho + y) * wo + xx] / k2;
                    for p in 0..kernel {
                        for q in 0..kernel {
                            dx[[i, ch, y * stride + p, xx * stride + q]] += v;
                        }
                    }
                }
            }
        }
    }
    dx.into_dyn()
}
