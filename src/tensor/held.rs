//! Products by a matrix one party holds whole in the clear (its data, input with
//! [`Session::input`]) times a shared matrix, under BFV: the other party — the key holder
//! — encrypts its share of each column under its own key; the holder multiplies by its
//! matrix in plaintext (coefficient encoding), adds its own part, masks with fresh uniform
//! polynomials, re-randomizes with the key holder's public key and floods the noise for the
//! session ([`crate::link`]); the key holder decrypts its share. The flooding is sized from
//! the public cap on the holder's values (`SessionConfig::weight_bits`), never from them.
//!
//! When the server's data is multiplied, the client is the key holder (its session key);
//! when the client's data is, the server must encrypt: its key pair is made at the first
//! such product and its public key sent to the client (both parties decide alike, from
//! public shapes and holders).

use std::collections::HashMap;
use std::sync::Arc;

use cipherml_he::bfv::{BfvParameters, CoeffWindow, Encoder, Encryptor};
use cipherml_he::rlwe::SecretKey;
use cipherml_he::tensor::CoeffMatVec;
use cipherml_mpc::net::Channel;
use ndarray::Array2;

use super::{cost, PrivateTensor, Role, Session, TensorError};

/// The server's BFV key for products in which it encrypts.
pub(super) enum ServerKey {
    /// Server side: its secret key.
    Secret(Arc<SecretKey>),
    /// Client side: the server's public key (re-randomizes the client's replies).
    Public(Box<Encryptor>),
}

/// How a held product lays out its inputs: `columns` of `B` end to end per input, split
/// in chunks of `chunk` coefficients (`chunk < columns k` only for one column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HeldLayout {
    columns: usize,
    chunk: usize,
}

impl HeldLayout {
    /// One column of `B` per input, split in chunks of `chunk` coefficients.
    pub(super) fn chunked(chunk: usize) -> Self {
        Self { columns: 1, chunk }
    }
}

/// The estimated cost of a coefficient-encoded product `A B` (`m x k` in plaintext, `k x
/// n` encrypted) in a layout: per group of columns, the encrypted input (seeded: one
/// polynomial per input chunk) and the compact replies (all of `c1`, the outputs of `c0`)
/// of every row block. Shapes and parameters only.
pub(super) fn coefficient_product_cost(
    params: &BfvParameters,
    (m, k, n): (usize, usize, usize),
    lay: HeldLayout,
) -> cost::Cost {
    let big_n = params.degree() as f64;
    let q_bits = params.context().q().log2_product();
    let groups = n.div_ceil(lay.columns) as f64;
    let width = lay.columns * k;
    // The strided layout: rows balanced over the blocks, each input sent at its window.
    let Ok(shape) = CoeffMatVec::layout(params.degree(), (m, width), lay.chunk, true) else {
        return cost::Cost {
            compute_us: f64::INFINITY,
            bytes: f64::INFINITY,
            rounds: 0.0,
        };
    };
    let (inputs, blocks) = (shape.inputs as f64, shape.blocks as f64);
    let window = shape.window.len() as f64;
    // A reply is switched to the fewest bits that keep decryption exact with high
    // probability: about log2(t sqrt(N)) + 3.5 per coefficient (the rounding's Hoeffding
    // bound; the flooding stays below Q / t); 50 bits at t = 2^40, 74 at t = 2^64, for
    // N = 8192.
    let reply_bits = f64::from(params.plaintext_bits()) + big_n.log2() / 2.0 + 3.5;
    let per_group = inputs * window * q_bits / 8.0
        + blocks * big_n * reply_bits / 8.0
        + (m * lay.columns) as f64 * reply_bits / 8.0;
    cost::Cost {
        compute_us: groups * (inputs * blocks * 150.0 + inputs * 400.0 + blocks * 900.0),
        bytes: groups * per_group,
        rounds: 2.0 * groups,
    }
}

impl<C: Channel> Session<C> {
    /// The estimated cost of `A B` (`m x k` held, `k x n` shared) under BFV, in the
    /// layout `held_layout` chooses.
    pub(super) fn held_he_cost(&self, m: usize, k: usize, n: usize) -> cost::Cost {
        self.held_he_cost_in(m, k, n, self.held_layout(m, k, n))
    }

    /// The estimated cost of `A B` in a layout: per group of columns, the key holder's
    /// encrypted share (seeded: one polynomial per input chunk) and the compact replies
    /// (all of `c1`, the outputs of `c0`) of every row block.
    fn held_he_cost_in(&self, m: usize, k: usize, n: usize, lay: HeldLayout) -> cost::Cost {
        coefficient_product_cost(&self.params, (m, k, n), lay)
    }

    /// The layout of a held product that costs least under the session's network model
    /// (public: shapes only). Either several columns of `B` end to end in one input
    /// (`columns` from 1 to `N / k`: fewer inputs, each a whole polynomial, but fewer rows
    /// per reply), or one column split in `s` chunks whose products are summed (more
    /// inputs, more rows per reply: for few rows and a long inner dimension).
    pub(super) fn held_layout(&self, m: usize, k: usize, n: usize) -> HeldLayout {
        let big_n = self.params.degree();
        let k = k.max(1);
        let whole = k.min(big_n);
        let mut options: Vec<HeldLayout> = (1..=(big_n / k).clamp(1, n.max(1)))
            .map(|columns| HeldLayout {
                columns,
                chunk: (columns * k).min(big_n),
            })
            .collect();
        // Finer splits of the inner dimension, up to the first that fits every row in one
        // block.
        let mut s = k.div_ceil(whole);
        while big_n / k.div_ceil(s) < m && s < 64 {
            s += 1;
            options.push(HeldLayout {
                columns: 1,
                chunk: k.div_ceil(s),
            });
        }
        let net = self.config.network;
        options
            .into_iter()
            .min_by(|&a, &b| {
                let ca = self.held_he_cost_in(m, k, n, a).total_us(&net);
                let cb = self.held_he_cost_in(m, k, n, b).total_us(&net);
                ca.total_cmp(&cb)
            })
            .unwrap_or(HeldLayout {
                columns: 1,
                chunk: whole,
            })
    }

    /// Makes the server's key pair (server) or receives its public key (client), once.
    fn ensure_server_key(&mut self) -> Result<(), TensorError> {
        if self.server_key.is_some() {
            return Ok(());
        }
        let key = match self.role {
            Role::Server => {
                let sk = Arc::new(SecretKey::random(self.params.context(), self.party.rng()));
                crate::link::send_public_key(&self.params, &mut self.party, &sk)?;
                ServerKey::Secret(sk)
            }
            Role::Client => {
                let pk = crate::link::receive_public_key(&self.params, &mut self.party)?;
                ServerKey::Public(Box::new(Encryptor::new(&self.params, pk)?))
            }
        };
        self.server_key = Some(key);
        Ok(())
    }

    /// `A B` for `A` (`m x k`, at `2^f`) held whole by `holder` (`a` is `Some` on its side:
    /// its share, which is the value) and `B` (`k x n`) shared (`b` this party's share):
    /// this party's share of the product (at `2^2f`), under BFV column by column.
    ///
    /// Every `|A|` is at most `cap` (public: the flooding is sized from it).
    pub(super) fn held_product_he(
        &mut self,
        holder: Role,
        a: Option<&[u64]>,
        b: &[u64],
        (m, k, n): (usize, usize, usize),
        cap: u64,
    ) -> Result<Vec<u64>, TensorError> {
        if holder == Role::Client {
            self.ensure_server_key()?;
        }
        let ring = self.fixed.ring();
        let params = self.params.clone();
        let encoder = Encoder::new(&params);
        let label = format!("product by a held {m}x{k} matrix");
        // The holder's matrix, centered (the key holder lays out zeros of the same shape).
        let mine = holder == self.role;
        let am = match (mine, a) {
            (true, Some(a)) => Array2::from_shape_fn((m, k), |(i, j)| ring.to_signed(a[i * k + j])),
            (true, None) => {
                return Err(TensorError::Invalid {
                    what: "held product",
                    detail: "the holder's matrix is missing".into(),
                })
            }
            (false, _) => Array2::zeros((m, k)),
        };
        if mine {
            let f = self.fixed.frac_bits();
            let scale = (f as f64).exp2();
            if let Some((index, &v)) = am.iter().enumerate().find(|(_, v)| v.unsigned_abs() > cap) {
                return Err(TensorError::WeightAboveCap {
                    layer: label,
                    index,
                    value: v as f64 / scale,
                    cap: cap as f64 / scale,
                });
            }
        }
        // Columns of B per ciphertext: several share one input (and, when A's rows leave
        // room, one reply). The group's columns are laid end to end (`nw k` inputs) and A
        // sits in the last k columns of an `m x nw k` matrix, so row i of A times column c
        // is the product's coefficient `(nw - 1 - c) k` inputs (times the layout's input
        // stride) before row i's output.
        let lay = self.held_layout(m, k, n);
        let nw = lay.columns;
        let wide = nw * k;
        let mut aw = Array2::zeros((m, wide));
        aw.slice_mut(ndarray::s![.., wide - k..]).assign(&am);
        let mv = CoeffMatVec::new_chunked(&encoder, aw.view(), cap, lay.chunk)?;
        let noise = mv.noise_bound_log2(params.degree(), params.plaintext_modulus());
        super::linear::check_flood(&params, &self.config, &label, noise)?;
        let rows = mv.output_positions();
        // Column c's product sits (nw - 1 - c) k inputs before the last column's.
        let step = k * mv.input_stride();
        let mut z = vec![0u64; m * n];
        for j0 in (0..n).step_by(nw) {
            let group = nw.min(n - j0);
            // Row i, column c of the group: (block, coefficient), row-major.
            let positions: Vec<(usize, usize)> = rows
                .iter()
                .flat_map(|&(blk, last)| (0..group).map(move |c| (blk, last - (nw - 1 - c) * step)))
                .collect();
            let col = |c: usize| (0..k).map(move |t| b[t * n + j0 + c]);
            let flood_bits = self.reveal_flood_bits(positions.len())?;
            let out = if mine {
                // My part, A times my share of the columns; the mask's share is added by
                // the link.
                let own: Vec<u64> = (0..m)
                    .flat_map(|i| (0..group).map(move |c| (i, c)))
                    .map(|(i, c)| {
                        col(c).enumerate().fold(0u64, |acc, (t, v)| {
                            ring.add(acc, ring.mul(ring.from_signed(am[[i, t]]), v))
                        })
                    })
                    .collect();
                let rerand = Self::rerand_for(&self.rerand, &self.server_key, holder.other())?;
                crate::link::bfv_linear_server(
                    &params,
                    ring,
                    flood_bits,
                    &mut self.party,
                    rerand,
                    (mv.input_chunks(), mv.input_window()),
                    &positions,
                    noise,
                    own,
                    |ev, cts| mv.apply(ev, cts),
                )?
            } else {
                let sk = self.key_of(holder.other())?;
                // The group's columns end to end, zeros for the columns past n.
                let mut xi: Vec<i64> = (0..group).flat_map(|c| col(c).map(|v| v as i64)).collect();
                xi.resize(wide, 0);
                let pts = mv.encode_input(&encoder, &xi)?;
                crate::link::bfv_linear_client(
                    &params,
                    ring,
                    &mut self.party,
                    &sk,
                    (&pts, mv.input_window()),
                    &positions,
                )?
            };
            for (idx, v) in out.into_iter().enumerate() {
                let (i, c) = (idx / group, idx % group);
                z[i * n + j0 + c] = v;
            }
        }
        Ok(z)
    }

    /// `X Y` for shared `X` (`m x k`) and `Y` (`k x n`) under BFV, dealer-free and without
    /// triples: `X Y = X_c Y_c + X_s Y_s + X_c Y_s + X_s Y_c`, the first two local, each
    /// cross term a product by a matrix one party holds (its share) times the other's
    /// share. The held share is split into two 32-bit digits (a plaintext's size multiplies
    /// the noise, and the flooding that hides it must fit the parameters); the key holder
    /// encrypts its share scaled by each digit's weight.
    pub(super) fn shared_product_he(
        &mut self,
        x: &[u64],
        y: &[u64],
        (m, k, n): (usize, usize, usize),
    ) -> Result<Vec<u64>, TensorError> {
        let ring = self.fixed.ring();
        let mut z = ring.matmul(x, y, m, k, n);
        for holder in [Role::Client, Role::Server] {
            let mine = holder == self.role;
            for shift in [0u32, 32] {
                let a: Option<Vec<u64>> =
                    mine.then(|| x.iter().map(|&v| (v >> shift) & 0xFFFF_FFFF).collect());
                let b: Vec<u64> = if mine {
                    vec![0; k * n]
                } else {
                    y.iter().map(|&v| ring.mul(v, 1u64 << shift)).collect()
                };
                let part = self.held_product_he(holder, a.as_deref(), &b, (m, k, n), 1 << 32)?;
                z = ring.add_vec(&z, &part);
            }
        }
        Ok(z)
    }
}

/// A matrix encrypted in columns under its holder's key: `cols` columns of `len`
/// coefficients, `per_ct` to a ciphertext at offsets `0, len, 2 len, ..` (column `j` in
/// ciphertext `j / per_ct`, slot `j mod per_ct`). Training keeps a data matrix so for the
/// session, by columns (`X`) and by rows (`X^T`), at the other party (SecureML's "mask the
/// data once", under HE): products by it then cost replies only, with dense outputs where
/// a coefficient-encoded product uses one coefficient in `k`.
pub(crate) struct HeldColumns {
    holder: Role,
    len: usize,
    cols: usize,
    per_ct: usize,
    /// The ciphertexts (the evaluator's side only).
    cts: Vec<cipherml_he::bfv::Ciphertext>,
}

impl<C: Channel> Session<C> {
    /// Columns of `len` coefficients per ciphertext (none if a column does not fit).
    fn columns_per_ct(&self, len: usize) -> usize {
        self.params.degree() / len.max(1)
    }

    /// Bits of the digits the evaluator splits its share into (`ceil(l / 2)`: the noise of
    /// a product grows with the plaintext's size, see [`Session::shared_product_he`]).
    fn held_digit_bits(&self) -> u32 {
        self.fixed.ring().bits().div_ceil(2)
    }

    /// The estimated costs of products by `count` encrypted columns: sending them, and one
    /// product of `replies` replies of `kept` coefficients, each the sum of `touched`
    /// ciphertexts times plaintexts.
    fn encrypted_columns_cost(
        &self,
        count: usize,
        replies: usize,
        kept: usize,
        touched: usize,
    ) -> (cost::Cost, cost::Cost) {
        let big_n = self.params.degree() as f64;
        let q_bits = self.params.context().q().log2_product();
        let reply_bits = f64::from(self.params.plaintext_bits()) + big_n.log2() + 1.0;
        let (count, replies) = (count as f64, replies as f64);
        let send = cost::Cost {
            compute_us: count * 400.0,
            bytes: count * big_n * q_bits / 8.0,
            rounds: 1.0,
        };
        let reply = cost::Cost {
            compute_us: replies * (touched as f64 * 150.0 + 900.0),
            bytes: replies * (big_n + kept as f64) * reply_bits / 8.0,
            rounds: 2.0,
        };
        (send, reply)
    }

    /// Whether sending a held matrix once (`send`) and `products` products by it (`reply`
    /// each) cost less than `products` of `now` (public: shapes and counts only, so both
    /// parties decide alike). Never with a dealer, whose triples are cheaper still.
    fn cheaper_once(
        &self,
        (send, reply): (cost::Cost, cost::Cost),
        products: usize,
        now: cost::Cost,
    ) -> bool {
        let net = self.config.network;
        let dealer = matches!(self.config.triples, super::config::Triples::Dealer { .. });
        let p = products as f64;
        !dealer
            && products > 0
            && send.total_us(&net) + p * reply.total_us(&net) < p * now.total_us(&net)
    }

    /// Outputs a reply carries when `per_ct` columns of `len` coefficients share a
    /// ciphertext: output `j` of a reply at offset `j per_ct len` (see
    /// [`Session::columns_combine`]), at most `n`.
    fn outputs_per_reply(&self, len: usize, per_ct: usize, n: usize) -> usize {
        (self.params.degree() / (per_ct * len).max(1)).clamp(1, n.max(1))
    }

    /// The estimated costs (sending, one product) of products by `k` encrypted columns of
    /// `len` coefficients, `per_ct` to a ciphertext, into `n` outputs of `kept`
    /// coefficients each, a product touching at most `touched` ciphertexts.
    fn columns_cost(
        &self,
        (len, k, n): (usize, usize, usize),
        per_ct: usize,
        kept: usize,
        touched: usize,
    ) -> (cost::Cost, cost::Cost) {
        let count = k.div_ceil(per_ct.max(1));
        let outs = self.outputs_per_reply(len, per_ct, n);
        self.encrypted_columns_cost(count, 2 * n.div_ceil(outs), outs * kept, count.min(touched))
    }

    /// The columns per ciphertext that cost least for `products` products by `k` encrypted
    /// columns of `len` coefficients (sent once) into `n` outputs of `kept` coefficients:
    /// from `N / len` (fewest ciphertexts, one output per reply) down to 1 (most
    /// ciphertexts, `N / len` outputs per reply); 0 if a column does not fit. Public
    /// shapes only, so both parties choose alike.
    fn columns_layout(
        &self,
        (len, k, n): (usize, usize, usize),
        kept: usize,
        touched: usize,
        products: usize,
    ) -> usize {
        let most = self.columns_per_ct(len).min(k.max(1));
        let net = self.config.network;
        let total = |per_ct: usize| {
            let (send, reply) = self.columns_cost((len, k, n), per_ct, kept, touched);
            send.total_us(&net) + products.max(1) as f64 * reply.total_us(&net)
        };
        (1..=most)
            .rev()
            .min_by(|&a, &b| total(a).total_cmp(&total(b)))
            .unwrap_or(0)
    }

    /// The columns per ciphertext in which encrypting `x` (`m x k`, held) once by columns
    /// and multiplying batches of `batch` of its rows by `n` shared columns costs least,
    /// if that costs less, over `products` such products, than the held products
    /// [`Session::matmul`] would run.
    pub(crate) fn held_columns_plan(
        &self,
        (m, k, n): (usize, usize, usize),
        batch: usize,
        products: usize,
    ) -> Option<usize> {
        let shape = (m, k, n);
        let per_ct = self.columns_layout(shape, batch, usize::MAX, products);
        if per_ct == 0 || n == 0 {
            return None;
        }
        let costs = self.columns_cost(shape, per_ct, batch, usize::MAX);
        self.cheaper_once(costs, products, self.held_cost(batch, k, n))
            .then_some(per_ct)
    }

    /// The rows per ciphertext in which encrypting `x` (`m x k`, held) once by rows and
    /// computing the weight gradients `G^T X[rows]` (`G` of `n` columns, batches of `batch`
    /// rows) costs least, if that costs less, over `products` of them, than the held
    /// products [`Session::matmul`] would run (`(X^T G)^T` with `X^T` held).
    pub(crate) fn held_rows_plan(
        &self,
        (m, k, n): (usize, usize, usize),
        batch: usize,
        products: usize,
    ) -> Option<usize> {
        // X^T's columns: m of them, k long; a batch touches at most `batch` ciphertexts.
        let shape = (k, m, n);
        let per_ct = self.columns_layout(shape, k, batch, products);
        if per_ct == 0 || n == 0 {
            return None;
        }
        let costs = self.columns_cost(shape, per_ct, k, batch);
        self.cheaper_once(costs, products, self.held_cost(k, batch, n))
            .then_some(per_ct)
    }

    /// Encrypts `x` (2-D, input by one party: [`Session::input`]) once by columns, `per_ct`
    /// to a ciphertext ([`Session::held_columns_plan`]), for
    /// [`Session::matmul_held_columns`]. Both parties call it at the same point.
    pub(crate) fn encrypt_held_columns(
        &mut self,
        x: &PrivateTensor,
        per_ct: usize,
    ) -> Result<(), TensorError> {
        self.held_columns = Some(self.encrypt_held(x, false, per_ct)?);
        Ok(())
    }

    /// Encrypts `x` (2-D, input by one party) once by rows (its transpose by columns,
    /// `per_ct` rows to a ciphertext: [`Session::held_rows_plan`]) for
    /// [`Session::matmul_t_held_rows`]. Both parties call it at the same point.
    pub(crate) fn encrypt_held_rows(
        &mut self,
        x: &PrivateTensor,
        per_ct: usize,
    ) -> Result<(), TensorError> {
        self.held_rows = Some(self.encrypt_held(x, true, per_ct)?);
        Ok(())
    }

    /// `x` (or its transpose) in encrypted columns: its holder encrypts them under its key
    /// (the client's session key, or the server's training key) and sends them; the other
    /// party keeps the ciphertexts.
    fn encrypt_held(
        &mut self,
        x: &PrivateTensor,
        transposed: bool,
        per_ct: usize,
    ) -> Result<HeldColumns, TensorError> {
        let shape = x.shape();
        let (Some(holder), [m, k]) = (x.holder(), shape.as_slice()) else {
            return Err(TensorError::Invalid {
                what: "held data",
                detail: format!("a 2-D matrix input by one party, not {shape:?}"),
            });
        };
        let (len, cols) = if transposed { (*k, *m) } else { (*m, *k) };
        let most = self.columns_per_ct(len);
        if per_ct == 0 || per_ct > most {
            return Err(TensorError::Invalid {
                what: "held data",
                detail: format!(
                    "{per_ct} columns of {len} per ciphertext of {} (1 to {most} fit)",
                    self.params.degree()
                ),
            });
        }
        if holder == Role::Server {
            self.ensure_server_key()?;
        }
        let (share, _) = self.shares_of(x)?;
        let share = if transposed {
            super::grad_transpose(&share, *m, *k)
        } else {
            share
        };
        let cts = self.send_columns(holder, &share, (len, cols), per_ct)?;
        Ok(HeldColumns {
            holder,
            len,
            cols,
            per_ct,
            cts,
        })
    }

    /// The secret key this party encrypts and decrypts with as `key_holder`: the client's
    /// session key, or the server's training key.
    fn key_of(&self, key_holder: Role) -> Result<Arc<SecretKey>, TensorError> {
        match (key_holder, &self.sk, &self.server_key) {
            (Role::Client, Some(sk), _) => Ok(sk.clone()),
            (Role::Server, _, Some(ServerKey::Secret(sk))) => Ok(sk.clone()),
            _ => Err(TensorError::Invalid {
                what: "session",
                detail: "no secret key to encrypt with".into(),
            }),
        }
    }

    /// The public key of `key_holder` with which this party (the other one) re-randomizes
    /// its replies: the client's (server side), or the server's training key (client side).
    /// The fields are passed apart so that the party stays borrowable.
    fn rerand_for<'a>(
        rerand: &'a Option<Encryptor>,
        server_key: &'a Option<ServerKey>,
        key_holder: Role,
    ) -> Result<&'a Encryptor, TensorError> {
        match (key_holder, rerand, server_key) {
            (Role::Client, Some(r), _) => Ok(r),
            (Role::Server, _, Some(ServerKey::Public(r))) => Ok(r),
            _ => Err(TensorError::Invalid {
                what: "session",
                detail: "no public key of the key holder".into(),
            }),
        }
    }

    /// The holder, column length, column count and columns per ciphertext of the matrix
    /// kept by rows or by columns, if `other` is an operand it should multiply: not public,
    /// and not the holder's own (those run locally by [`Session::matmul`]); every index of
    /// `rows` checked against the data's rows.
    fn held_for(
        &self,
        rows_layout: bool,
        other: &PrivateTensor,
        rows: &[usize],
    ) -> Result<Option<(Role, usize, usize, usize)>, TensorError> {
        let kept = if rows_layout {
            &self.held_rows
        } else {
            &self.held_columns
        };
        let Some(h) = kept.as_ref() else {
            return Ok(None);
        };
        if matches!(other, PrivateTensor::Public(_)) || other.holder() == Some(h.holder) {
            return Ok(None);
        }
        let data_rows = if rows_layout { h.cols } else { h.len };
        if let Some(&bad) = rows.iter().find(|&&i| i >= data_rows) {
            return Err(TensorError::Shape {
                what: "row index vs held rows",
                left: vec![bad],
                right: vec![data_rows],
            });
        }
        Ok(Some((h.holder, h.len, h.cols, h.per_ct)))
    }

    /// Runs `f` with the ciphertexts kept in `held_rows` or `held_columns` lent out (the
    /// session stays borrowable).
    fn with_held<T>(
        &mut self,
        rows_layout: bool,
        f: impl FnOnce(&mut Self, &[cipherml_he::bfv::Ciphertext]) -> T,
    ) -> T {
        let kept = if rows_layout {
            self.held_rows.take()
        } else {
            self.held_columns.take()
        };
        let out = f(self, kept.as_ref().map_or(&[][..], |h| h.cts.as_slice()));
        if rows_layout {
            self.held_rows = kept;
        } else {
            self.held_columns = kept;
        }
        out
    }

    /// `X[rows] B` for the matrix `X` of [`Session::encrypt_held_columns`] (`xb` is
    /// `X[rows]`, as [`Session::rows`] gives it) and `B` (`k x n`, any representation):
    /// the holder multiplies its share of `B` locally; the other party combines the
    /// encrypted columns by its share of `B` ([`Session::columns_combine`]), and the holder
    /// decrypts the batch's rows. Shared at `2^2f`, as [`Session::matmul`]. A public `B`,
    /// or one the holder has whole, runs as [`Session::matmul`] (locally).
    pub(crate) fn matmul_held_columns(
        &mut self,
        xb: &PrivateTensor,
        rows: &[usize],
        b: &PrivateTensor,
    ) -> Result<PrivateTensor, TensorError> {
        let Some((holder, m, k, per_ct)) = self.held_for(false, b, rows)? else {
            return self.matmul(xb, b);
        };
        let sb = b.shape();
        if sb.len() != 2 || sb[0] != k || xb.shape() != [rows.len(), k] {
            return Err(TensorError::Shape {
                what: "held columns product",
                left: xb.shape(),
                right: sb,
            });
        }
        let (n, bsz) = (sb[1], rows.len());
        let ring = self.fixed.ring();
        let (y, _) = self.shares_of(b)?;
        self.log_held(format!(
            "matmul ({bsz}x{k}) x ({k}x{n}), held data encrypted once"
        ));
        let own = if holder == self.role {
            let (x, _) = self.shares_of(xb)?;
            ring.matmul(&x, &y, bsz, k, n)
        } else {
            vec![0; bsz * n]
        };
        let all: Vec<usize> = (0..k).collect();
        let part = self.with_held(false, |s, cts| {
            s.columns_combine(holder, cts, (m, k, per_ct), &all, &y, n, rows)
        })?;
        let part = super::grad_transpose(&part, n, bsz);
        Ok(self.product(ring.add_vec(&own, &part), vec![bsz, n]))
    }

    /// `G^T X[rows]` (`n x k`) for the matrix `X` (`m x k`) of
    /// [`Session::encrypt_held_rows`] (`xb` is `X[rows]`) and `G` (`rows.len() x n`, any
    /// representation): the holder multiplies its share of `G` locally; the other party
    /// sums the encrypted rows weighted by its share of `G` ([`Session::columns_combine`]
    /// on `X^T`'s columns), one dense reply of `k` values per column of `G` and digit.
    /// Shared at `2^2f`, as [`Session::matmul`] of `G^T` by `X[rows]`. A public `G`, or one
    /// the holder has whole, runs as [`Session::matmul`].
    pub(crate) fn matmul_t_held_rows(
        &mut self,
        xb: &PrivateTensor,
        rows: &[usize],
        g: &PrivateTensor,
    ) -> Result<PrivateTensor, TensorError> {
        let Some((holder, k, m, per_ct)) = self.held_for(true, g, rows)? else {
            let gt = self.transpose(g)?;
            return self.matmul(&gt, xb);
        };
        let (sg, bsz) = (g.shape(), rows.len());
        if sg.len() != 2 || sg[0] != bsz || xb.shape() != [bsz, k] {
            return Err(TensorError::Shape {
                what: "held rows product",
                left: sg,
                right: xb.shape(),
            });
        }
        let n = sg[1];
        let ring = self.fixed.ring();
        let (y, _) = self.shares_of(g)?;
        self.log_held(format!(
            "matmul ({n}x{bsz}) x ({bsz}x{k}), held data encrypted once by rows"
        ));
        let own = if holder == self.role {
            let (x, _) = self.shares_of(xb)?;
            ring.matmul(&super::grad_transpose(&y, bsz, n), &x, n, bsz, k)
        } else {
            vec![0; n * k]
        };
        let keep: Vec<usize> = (0..k).collect();
        let part = self.with_held(true, |s, cts| {
            s.columns_combine(holder, cts, (k, m, per_ct), rows, &y, n, &keep)
        })?;
        Ok(self.product(ring.add_vec(&own, &part), vec![n, k]))
    }

    /// Logs a product by kept encrypted data in the plan.
    fn log_held(&mut self, layer: String) {
        self.log.push(cost::LayerPlan {
            layer,
            depth: 0,
            chosen: cost::Backend::BfvCoefficient,
            options: vec![(cost::Backend::BfvCoefficient, cost::Cost::default())],
        });
    }

    /// A shared product at `2^2f` (its truncation pending), as [`Session::matmul`] returns.
    fn product(&self, share: Vec<u64>, shape: Vec<usize>) -> PrivateTensor {
        PrivateTensor::Shared {
            share,
            shape,
            frac_bits: 2 * self.fixed.frac_bits(),
            nonneg: false,
            held_by: None,
        }
    }

    /// Encrypts `holder`'s `len x cols` matrix (`x`, its side only) column by column,
    /// `per_ct` columns per ciphertext at offsets `0, len, 2 len, ..`, under its key, and
    /// sends it: the other party's return value is the ciphertexts (empty on the holder's
    /// side).
    fn send_columns(
        &mut self,
        holder: Role,
        x: &[u64],
        (len, cols): (usize, usize),
        per_ct: usize,
    ) -> Result<Vec<cipherml_he::bfv::Ciphertext>, TensorError> {
        let count = cols.div_ceil(per_ct);
        if holder != self.role {
            let full = CoeffWindow::full(self.params.degree());
            return crate::link::receive_ciphertexts(&self.params, &mut self.party, count, full);
        }
        let encoder = Encoder::new(&self.params);
        let big_n = self.params.degree();
        let mut pts = Vec::with_capacity(count);
        for g in 0..count {
            let mut coeffs = vec![0u64; big_n];
            for s in 0..per_ct.min(cols - g * per_ct) {
                let j = g * per_ct + s;
                for i in 0..len {
                    coeffs[s * len + i] = x[i * cols + j];
                }
            }
            pts.push(encoder.encode_coeffs_u64(&coeffs)?);
        }
        let sk = self.key_of(holder)?;
        let full = CoeffWindow::full(big_n);
        crate::link::send_encrypted(&self.params, &mut self.party, &sk, &pts, full)?;
        Ok(Vec::new())
    }

    /// `sum_t W[t, c] col_{cols[t]}` for every `c < n`, read at the coefficients `keep`,
    /// where the columns (`len` long, `total` of them, `per_ct = P` to a ciphertext) are
    /// `holder`'s, encrypted ([`Session::send_columns`]: `cts`, on the other party's side),
    /// and `W` (`cols.len() x n`) is the other party's (`w`, its side only). Column `s` of a
    /// ciphertext sits at offset `s len`: times `X^(j P len - s len)` it lands at `j P len`,
    /// while the ciphertext's other columns land at other multiples of `len` less than `P
    /// len` away (negacyclically), outside `[j P len, j P len + len)` and outside every
    /// other output's window: one reply carries `q = N / (P len)` outputs (at most `n`), the
    /// `j`-th at offset `j P len`, so fewer columns per ciphertext buy fewer replies
    /// ([`Session::columns_layout`] weighs the two). `W` is split into two digits of `ceil(l
    /// / 2)` bits (the noise grows with the plaintext's size), each reply masked,
    /// re-randomized with the holder's public key and flooded (sized from the public
    /// counts: `P q` terms per plaintext, repeats in `cols`), and the holder decrypts.
    /// This party's share, output-major (`n x keep.len()`).
    #[allow(clippy::too_many_arguments)]
    fn columns_combine(
        &mut self,
        holder: Role,
        cts: &[cipherml_he::bfv::Ciphertext],
        (len, total, per_ct): (usize, usize, usize),
        cols: &[usize],
        w: &[u64],
        n: usize,
        keep: &[usize],
    ) -> Result<Vec<u64>, TensorError> {
        let ring = self.fixed.ring();
        let dbits = self.held_digit_bits();
        let low = (1u64 << dbits) - 1;
        let big_n = self.params.degree();
        if per_ct == 0 || per_ct * len > big_n {
            return Err(TensorError::Invalid {
                what: "encrypted columns",
                detail: format!("{per_ct} columns of {len} per ciphertext of {big_n}"),
            });
        }
        let count = total.div_ceil(per_ct);
        let outs = self.outputs_per_reply(len, per_ct, n);
        let (block, groups) = (per_ct * len, n.div_ceil(outs));
        // A column taken twice adds its digits: the bound counts the repeats.
        let mut seen = HashMap::new();
        for &j in cols {
            *seen.entry(j).or_insert(0u64) += 1;
        }
        let mult = seen.values().copied().max().unwrap_or(1);
        // Output c of digit d: reply d groups + c / outs, offset (c mod outs) block.
        let positions: Vec<(usize, usize)> = (0..2 * n)
            .flat_map(|dc| {
                let (d, c) = (dc / n, dc % n);
                let (blk, off) = (d * groups + c / outs, (c % outs) * block);
                keep.iter().map(move |&i| (blk, off + i))
            })
            .collect();
        let noise = cipherml_he::tensor::product_noise_log2(
            count,
            big_n,
            self.params.plaintext_modulus(),
            mult << dbits,
            per_ct * outs,
            cipherml_he::tensor::FRESH_NOISE_LOG2,
        );
        let label = format!(
            "product by encrypted columns ({} of {total}, {len} long)",
            cols.len()
        );
        super::linear::check_flood(&self.params, &self.config, &label, noise)?;
        let got = if holder == self.role {
            let sk = self.key_of(holder)?;
            crate::link::bfv_linear_client(
                &self.params,
                ring,
                &mut self.party,
                &sk,
                (&[], CoeffWindow::full(big_n)),
                &positions,
            )?
        } else {
            if cts.len() != count {
                return Err(TensorError::Invalid {
                    what: "encrypted operand",
                    detail: format!("{} ciphertexts where {count} were sent", cts.len()),
                });
            }
            let flood_bits = self.reveal_flood_bits(positions.len())?;
            let params = self.params.clone();
            let encoder = Encoder::new(&params);
            let ev = cipherml_he::bfv::Evaluator::new(&params);
            let mut out = Vec::with_capacity(2 * groups);
            // Few terms to a plaintext (long columns): each ciphertext times each monomial
            // once, then every reply a sum of those times the digits; else a plaintext per
            // ciphertext and reply.
            let mut shifted =
                (per_ct * outs <= SPARSE_TERMS).then(|| Shifted::new(&encoder, &ev, cts));
            let mut terms = Vec::new();
            for d in 0..2u32 {
                for gi in 0..groups {
                    let first = gi * outs;
                    // Digit `d` of the outputs of group `gi`: `v X^e` on ciphertext `g`.
                    terms.clear();
                    for (t, &j) in cols.iter().enumerate() {
                        let (g, shift) = (j / per_ct, (j % per_ct) * len);
                        for (o, c) in (first..(first + outs).min(n)).enumerate() {
                            let v = ((w[t * n + c] >> (d * dbits)) & low) as i64;
                            // X^(o block - shift), negacyclic below 0.
                            terms.push(match (o * block).checked_sub(shift) {
                                Some(e) => (g, e, v),
                                None => (g, big_n + o * block - shift, -v),
                            });
                        }
                    }
                    let mut acc: Option<cipherml_he::bfv::Ciphertext> = None;
                    if let Some(shifted) = &mut shifted {
                        for &(g, e, v) in &terms {
                            let term = shifted.get(g, e)?;
                            match &mut acc {
                                None => acc = Some(ev.mul_scalar(term, v)?),
                                Some(a) => ev.mul_scalar_add_assign(a, term, v)?,
                            }
                        }
                    } else {
                        let mut plains: Vec<Option<Vec<i64>>> = vec![None; cts.len()];
                        for &(g, e, v) in &terms {
                            let coeffs = plains.get_mut(g).ok_or_else(|| TensorError::Invalid {
                                what: "encrypted operand",
                                detail: format!("ciphertext {g} of {}", cts.len()),
                            })?;
                            coeffs.get_or_insert_with(|| vec![0; big_n])[e] += v;
                        }
                        for (ct, coeffs) in cts.iter().zip(&plains) {
                            let Some(coeffs) = coeffs else { continue };
                            let prod = ev.mul_plain(ct, &encoder.encode_coeffs_i64(coeffs)?)?;
                            match &mut acc {
                                None => acc = Some(prod),
                                Some(a) => ev.add_assign(a, &prod)?,
                            }
                        }
                    }
                    // No column taken (an empty batch): an encryption of zero.
                    out.push(match acc {
                        Some(a) => a,
                        None => ev.mul_scalar(&cts[0], 0)?,
                    });
                }
            }
            let rerand = Self::rerand_for(&self.rerand, &self.server_key, holder)?;
            crate::link::bfv_reply(
                &params,
                ring,
                flood_bits,
                &mut self.party,
                rerand,
                &out,
                &positions,
                noise,
                vec![0; positions.len()],
            )?
        };
        let kl = keep.len();
        Ok((0..n * kl)
            .map(|idx| ring.add(got[idx], ring.mul(got[n * kl + idx], 1u64 << dbits)))
            .collect())
    }

    /// The estimated cost of `X Y` for shared `X` (`m x k`) and `Y` (`k x n`) by
    /// [`Session::shared_product_columns`] (`None` if a column of `X` does not fit a
    /// ciphertext): per cross term, `X`'s share in columns and `2 n` dense replies.
    pub(super) fn shared_columns_cost(&self, m: usize, k: usize, n: usize) -> Option<cost::Cost> {
        let per_ct = self.columns_layout((m, k, n), m, usize::MAX, 1);
        if per_ct == 0 {
            return None;
        }
        let (send, reply) = self.columns_cost((m, k, n), per_ct, m, usize::MAX);
        Some(cost::Cost {
            compute_us: 2.0 * (send.compute_us + reply.compute_us),
            bytes: 2.0 * (send.bytes + reply.bytes),
            rounds: 4.0,
        })
    }

    /// The estimated cost of `X Y` by [`Session::shared_product_rows`]: that of `Y^T X^T`
    /// by columns.
    pub(super) fn shared_rows_cost(&self, m: usize, k: usize, n: usize) -> Option<cost::Cost> {
        self.shared_columns_cost(n, k, m)
    }

    /// `X Y` for shared `X` (`m x k`) and `Y` (`k x n`, `n <= N`) under BFV, for a long
    /// inner dimension (the weight gradients `G^T H`): `(Y^T X^T)^T` by
    /// [`Session::shared_product_columns`], each party's share of `Y` in encrypted rows and
    /// one dense reply of `n` values per row of the product and digit. This party's share
    /// at `2^2f`.
    pub(super) fn shared_product_rows(
        &mut self,
        x: &[u64],
        y: &[u64],
        (m, k, n): (usize, usize, usize),
    ) -> Result<Vec<u64>, TensorError> {
        let yt = super::grad_transpose(y, k, n);
        let xt = super::grad_transpose(x, m, k);
        let zt = self.shared_product_columns(&yt, &xt, (n, k, m))?;
        Ok(super::grad_transpose(&zt, n, m))
    }

    /// `X Y` for shared `X` (`m x k`, `m <= N`) and `Y` (`k x n`) under BFV, dealer-free:
    /// `X_c Y_c + X_s Y_s` locally, and each cross term `X_h Y_o` by `h` sending its share
    /// in encrypted columns and the other party combining them by its share
    /// ([`Session::columns_combine`]): dense replies, where
    /// [`Session::shared_product_he`]'s coefficient-encoded products use one coefficient in
    /// `k`. This party's share at `2^2f`.
    pub(super) fn shared_product_columns(
        &mut self,
        x: &[u64],
        y: &[u64],
        (m, k, n): (usize, usize, usize),
    ) -> Result<Vec<u64>, TensorError> {
        let per_ct = self.columns_layout((m, k, n), m, usize::MAX, 1);
        self.shared_product_columns_in(x, y, (m, k, n), per_ct)
    }

    /// [`Session::shared_product_columns`] with `per_ct` columns to a ciphertext.
    fn shared_product_columns_in(
        &mut self,
        x: &[u64],
        y: &[u64],
        (m, k, n): (usize, usize, usize),
        per_ct: usize,
    ) -> Result<Vec<u64>, TensorError> {
        let ring = self.fixed.ring();
        let mut z = ring.matmul(x, y, m, k, n);
        let (all_cols, all_rows): (Vec<usize>, Vec<usize>) = ((0..k).collect(), (0..m).collect());
        for holder in [Role::Client, Role::Server] {
            if holder == Role::Server {
                self.ensure_server_key()?;
            }
            let cts = self.send_columns(holder, x, (m, k), per_ct)?;
            let part =
                self.columns_combine(holder, &cts, (m, k, per_ct), &all_cols, y, n, &all_rows)?;
            z = ring.add_vec(&z, &super::grad_transpose(&part, n, m));
        }
        Ok(z)
    }
}

/// Most nonzero coefficients of a plaintext of [`Session::columns_combine`] (columns to a
/// ciphertext times outputs to a reply) for which it multiplies each ciphertext by each
/// monomial once and sums those times scalars ([`Shifted`]: eight limb-length products and
/// sums a term) instead of encoding and transforming a plaintext per ciphertext and reply
/// (about forty).
const SPARSE_TERMS: usize = 4;

/// Ciphertexts times monomials `X^e`, each product made once, on first use.
struct Shifted<'a> {
    encoder: &'a Encoder,
    ev: &'a cipherml_he::bfv::Evaluator,
    cts: &'a [cipherml_he::bfv::Ciphertext],
    monomials: HashMap<usize, cipherml_he::bfv::PreparedPlaintext>,
    products: HashMap<(usize, usize), cipherml_he::bfv::Ciphertext>,
}

impl<'a> Shifted<'a> {
    fn new(
        encoder: &'a Encoder,
        ev: &'a cipherml_he::bfv::Evaluator,
        cts: &'a [cipherml_he::bfv::Ciphertext],
    ) -> Self {
        Self {
            encoder,
            ev,
            cts,
            monomials: HashMap::new(),
            products: HashMap::new(),
        }
    }

    /// Ciphertext `g` times `X^e` (`e < N`).
    fn get(&mut self, g: usize, e: usize) -> Result<&cipherml_he::bfv::Ciphertext, TensorError> {
        use std::collections::hash_map::Entry;
        let ct = self.cts.get(g).ok_or_else(|| TensorError::Invalid {
            what: "encrypted operand",
            detail: format!("ciphertext {g} of {}", self.cts.len()),
        })?;
        Ok(match self.products.entry((g, e)) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(slot) => {
                let mono = match self.monomials.entry(e) {
                    Entry::Occupied(o) => o.into_mut(),
                    Entry::Vacant(m) => {
                        let mut coeffs = vec![0i64; e + 1];
                        coeffs[e] = 1;
                        let pt = self.encoder.encode_coeffs_i64(&coeffs)?;
                        m.insert(self.encoder.prepare(&pt, ct.level())?)
                    }
                };
                slot.insert(self.ev.mul_plain_prepared(ct, mono)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{run_local_with, Role, SessionConfig};

    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    /// The sparse combination ([`super::Shifted`]: each ciphertext times each monomial
    /// once, then scalar sums) is the very ciphertext the dense one makes (one plaintext
    /// of the same coefficients, encoded, transformed and multiplied): digits of 32 bits,
    /// negacyclic terms (negative digits at `X^(N - a)`), repeated exponents and two
    /// ciphertexts.
    #[test]
    fn sparse_combination_equals_the_dense_product() {
        use cipherml_he::bfv::{BfvParameters, Encoder, Encryptor, Evaluator};
        use cipherml_he::rlwe::{PublicKey, SecretKey};
        let params = BfvParameters::new(&SessionConfig::training().bfv_literal()).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(41);
        let sk = std::sync::Arc::new(SecretKey::random(params.context(), &mut rng));
        let pk = PublicKey::new(&sk, &mut rng);
        let (enc, ev) = (Encoder::new(&params), Evaluator::new(&params));
        let n = params.degree();
        let encryptor = Encryptor::new(&params, pk).unwrap();
        let cts: Vec<_> = (0..2)
            .map(|_| {
                let v: Vec<u64> = (0..n).map(|_| rng.random()).collect();
                encryptor
                    .encrypt(&enc.encode_coeffs_u64(&v).unwrap(), &mut rng)
                    .unwrap()
            })
            .collect();
        // (ciphertext, exponent, digit) terms.
        let terms: Vec<(usize, usize, i64)> = vec![
            (0, 0, rng.random_range(0..1 << 32)),
            (0, 3750, -rng.random_range(0..1i64 << 32)),
            (0, 3750, rng.random_range(0..1 << 32)),
            (1, n - 3750, -rng.random_range(0..1i64 << 32)),
            (1, 7, rng.random_range(0..1 << 32)),
        ];
        let mut dense = None;
        for (g, ct) in cts.iter().enumerate() {
            let mut coeffs = vec![0i64; n];
            for &(_, e, v) in terms.iter().filter(|t| t.0 == g) {
                coeffs[e] += v;
            }
            let prod = ev
                .mul_plain(ct, &enc.encode_coeffs_i64(&coeffs).unwrap())
                .unwrap();
            match &mut dense {
                None => dense = Some(prod),
                Some(a) => ev.add_assign(a, &prod).unwrap(),
            }
        }
        let mut shifted = super::Shifted::new(&enc, &ev, &cts);
        let mut sparse = None;
        for &(g, e, v) in &terms {
            let term = shifted.get(g, e).unwrap();
            match &mut sparse {
                None => sparse = Some(ev.mul_scalar(term, v).unwrap()),
                Some(a) => ev.mul_scalar_add_assign(a, term, v).unwrap(),
            }
        }
        assert_eq!(
            shifted.products.len(),
            4,
            "one product per ciphertext and exponent"
        );
        assert!(
            dense.unwrap() == sparse.unwrap(),
            "the two combinations differ"
        );
        assert!(
            shifted.get(2, 0).is_err(),
            "a ciphertext that does not exist"
        );
    }

    /// Weight gradients `G^T X[rows]` from held data encrypted once by rows, against the
    /// plaintext product and the engine's: data of either party, one or several
    /// ciphertexts of rows (`N / k` of them each, or fewer: then several outputs to a
    /// reply), batches with repeated rows (their digits add up: the noise bound counts the
    /// repeats), and a wrong shape and a layout that does not fit refused.
    #[test]
    fn gradients_by_held_rows_match_plaintext() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(22);
        for (holder, m, k, n, per_ct) in [
            (Role::Client, 300usize, 7usize, 3usize, 1170usize),
            (Role::Client, 300, 7, 3, 400),
            (Role::Server, 3000, 20, 2, 409),
            (Role::Server, 3000, 20, 5, 150),
            (Role::Client, 1000, 64, 1, 128),
        ] {
            let a = Array2::from_shape_fn((m, k), |_| rng.random_range(-4.0..4.0));
            let rows: Vec<usize> = (0..m).step_by(13).chain([m - 1, 3, 3, 3]).collect();
            let gm = Array2::from_shape_fn((rows.len(), n), |_| rng.random_range(-2.0..2.0));
            let want = gm.t().dot(&a.select(ndarray::Axis(0), &rows)).into_dyn();
            let (ad, gd, r) = (a.into_dyn(), gm.into_dyn(), rows.clone());
            let (client, _) = run_local_with(SessionConfig::training(), move |s| {
                let x = s.input(holder, &[m, k], || ad.clone())?;
                let g = s.input_masked(Role::Server, &[r.len(), n], || gd.clone())?;
                let too_many = s.encrypt_held_rows(&x, 8192 / k + 1).is_err();
                s.encrypt_held_rows(&x, per_ct)?;
                let xb = s.rows(&x, &r)?;
                let z = s.matmul_t_held_rows(&xb, &r, &g)?;
                let gt = s.transpose(&g)?;
                let engine = s.matmul(&gt, &xb)?;
                let refused = s.matmul_t_held_rows(&xb, &r[1..], &g).is_err();
                Ok((
                    s.reveal(&z, Role::Client)?,
                    s.reveal(&engine, Role::Client)?,
                    s.explain(),
                    refused && too_many,
                ))
            })
            .unwrap();
            let (z, engine, plan, refused) = client;
            assert!(plan.contains("encrypted once by rows"), "{plan}");
            assert!(refused, "a wrong shape was accepted");
            for got in [z.unwrap(), engine.unwrap()] {
                let worst = (&got - &want)
                    .mapv(f64::abs)
                    .fold(0.0f64, |acc, &v| acc.max(v));
                // Inputs rounded to 2^-16: a sum over the batch of values below 8.
                assert!(
                    worst < 1e-4 * rows.len() as f64,
                    "{holder:?} {m}x{k}x{n}: gradients differ from plaintext by {worst}"
                );
            }
        }
    }

    /// Products by rows of held data encrypted once, against the plaintext product and the
    /// engine's own held product: data of either party, columns several to a ciphertext
    /// (300 rows: 27 of them, or 4 and then 6 outputs to a reply) or one (5,000 rows; 3,000
    /// with two outputs to a reply) or two (3,000), batches of rows in any order with
    /// repeats; and the refusals of a wrong shape and a row out of range.
    #[test]
    fn products_by_held_columns_match_plaintext() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(21);
        for (holder, m, k, n, per_ct) in [
            (Role::Client, 300usize, 7usize, 3usize, 27usize),
            (Role::Client, 300, 9, 8, 4),
            (Role::Server, 3000, 5, 2, 2),
            (Role::Server, 3000, 5, 3, 1),
            (Role::Client, 5000, 3, 1, 1),
        ] {
            let a = Array2::from_shape_fn((m, k), |_| rng.random_range(-4.0..4.0));
            let b = Array2::from_shape_fn((k, n), |_| rng.random_range(-2.0..2.0));
            let rows: Vec<usize> = (0..m).rev().step_by(37).chain([0, m - 1, 5, 5]).collect();
            let want = a.select(ndarray::Axis(0), &rows).dot(&b).into_dyn();
            let (ad, bd, r) = (a.into_dyn(), b.into_dyn(), rows.clone());
            let (client, _) = run_local_with(SessionConfig::training(), move |s| {
                let x = s.input(holder, &[m, k], || ad.clone())?;
                // Random-looking shares on both sides.
                let y = s.input_masked(Role::Server, &[k, n], || bd.clone())?;
                s.encrypt_held_columns(&x, per_ct)?;
                let xb = s.rows(&x, &r)?;
                let z = s.matmul_held_columns(&xb, &r, &y)?;
                let engine = s.matmul(&xb, &y)?;
                let wrong_rows = s.matmul_held_columns(&xb, &[m], &y).is_err();
                let wrong_shape = s.matmul_held_columns(&y, &r, &y).is_err();
                Ok((
                    s.reveal(&z, Role::Client)?,
                    s.reveal(&engine, Role::Client)?,
                    s.explain(),
                    wrong_rows && wrong_shape,
                ))
            })
            .unwrap();
            let (z, engine, plan, refused) = client;
            assert!(plan.contains("held data encrypted once"), "{plan}");
            assert!(refused, "a bad row or shape was accepted");
            for got in [z.unwrap(), engine.unwrap()] {
                let worst = (&got - &want)
                    .mapv(f64::abs)
                    .fold(0.0f64, |acc, &v| acc.max(v));
                // Inputs rounded to 2^-16: k products of values below 4 and 2.
                assert!(
                    worst < 1e-4 * k as f64,
                    "{holder:?} {m}x{k}x{n}: products differ from plaintext by {worst}"
                );
            }
        }
    }

    /// Shared products by encrypted columns in every layout, against plaintext: all
    /// columns in one ciphertext (one output per reply), one column per ciphertext (all
    /// the outputs that fit in a reply, the last reply part full), and in between.
    #[test]
    fn shared_products_by_columns_in_every_layout_match_plaintext() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(23);
        let (m, k, n) = (700usize, 9usize, 13usize);
        let a = Array2::from_shape_fn((m, k), |_| rng.random_range(-4.0..4.0));
        let b = Array2::from_shape_fn((k, n), |_| rng.random_range(-2.0..2.0));
        let want = a.dot(&b);
        for per_ct in [9usize, 1, 2, 5] {
            let (ad, bd) = (a.clone().into_dyn(), b.clone().into_dyn());
            let (client, _) = run_local_with(SessionConfig::training(), move |s| {
                let x = s.input_masked(Role::Client, &[m, k], || ad.clone())?;
                let y = s.input_masked(Role::Server, &[k, n], || bd.clone())?;
                let (xs, _) = s.shares_of(&x)?;
                let (ys, _) = s.shares_of(&y)?;
                let z = s.shared_product_columns_in(&xs, &ys, (m, k, n), per_ct)?;
                let z = s.product(z, vec![m, n]);
                s.reveal(&z, Role::Client)
            })
            .unwrap();
            let got = client.unwrap();
            let worst = (&got - &want.clone().into_dyn())
                .mapv(f64::abs)
                .fold(0.0f64, |acc, &v| acc.max(v));
            assert!(
                worst < 1e-4 * k as f64,
                "{per_ct} per ciphertext: off by {worst}"
            );
        }
    }
}
