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

use std::sync::Arc;

use cipherml_he::bfv::{Encoder, Encryptor};
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
        let big_n = self.params.degree() as f64;
        let q_bits = self.params.context().q().log2_product();
        let groups = n.div_ceil(lay.columns) as f64;
        let width = lay.columns * k;
        let inputs = width.div_ceil(lay.chunk) as f64;
        let rows_per_block = (self.params.degree() / lay.chunk).max(1) as f64;
        let blocks = (m as f64 / rows_per_block).ceil();
        // A reply is switched to the fewest bits that keep decryption exact: about
        // log2(t N) + 1 per coefficient (the flooding stays below Q / t); 78 bits, 80 KB
        // a block at t = 2^64, N = 8192 (measured).
        let reply_bits = f64::from(self.params.plaintext_bits()) + big_n.log2() + 1.0;
        let per_group = inputs * big_n * q_bits / 8.0
            + blocks * big_n * reply_bits / 8.0
            + (m * lay.columns) as f64 * reply_bits / 8.0;
        cost::Cost {
            compute_us: groups * (inputs * blocks * 150.0 + inputs * 400.0 + blocks * 900.0),
            bytes: groups * per_group,
            rounds: 2.0 * groups,
        }
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
        // room, one reply). The group's columns are laid end to end (`nw k` coefficients)
        // and A sits in the last k columns of an `m x nw k` matrix, so the product's
        // coefficient `i nw k + c k + k - 1` (in row i's block) is row i of A times
        // column c.
        let lay = self.held_layout(m, k, n);
        let nw = lay.columns;
        let wide = nw * k;
        let mut aw = Array2::zeros((m, wide));
        aw.slice_mut(ndarray::s![.., wide - k..]).assign(&am);
        let mv = CoeffMatVec::new_chunked(&encoder, aw.view(), cap, lay.chunk)?;
        let noise = mv.noise_bound_log2(params.degree(), params.plaintext_modulus());
        super::linear::check_flood(&params, &self.config, &label, noise)?;
        let rows = mv.output_positions();
        let mut z = vec![0u64; m * n];
        for j0 in (0..n).step_by(nw) {
            let group = nw.min(n - j0);
            // Row i, column c of the group: (block, coefficient), row-major.
            let positions: Vec<(usize, usize)> = rows
                .iter()
                .flat_map(|&(blk, last)| (0..group).map(move |c| (blk, last - (nw - 1 - c) * k)))
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
                    mv.input_chunks(),
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
                    &pts,
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

/// A data matrix (`rows x cols`, held whole by `holder`) encrypted once under the
/// holder's key, `per_ct` columns per ciphertext at coefficient offsets `0, rows, 2 rows,
/// ..`, kept by the other party for the session (training reuses it every batch: SecureML's
/// "mask the data once", under HE). Products by it cost replies only, one per output
/// column and digit, with the outputs dense (row `i` at coefficient `i`) where the
/// coefficient-encoded product leaves `k - 1` of every `k` coefficients unused.
pub(crate) struct HeldColumns {
    holder: Role,
    rows: usize,
    cols: usize,
    per_ct: usize,
    /// The ciphertexts (the evaluator's side only).
    cts: Vec<cipherml_he::bfv::Ciphertext>,
}

impl<C: Channel> Session<C> {
    /// Columns of a `rows`-row matrix per ciphertext (none if a column does not fit).
    fn columns_per_ct(&self, rows: usize) -> usize {
        self.params.degree() / rows.max(1)
    }

    /// Bits of the digits the evaluator splits its share into (`ceil(l / 2)`: the noise of
    /// a product grows with the plaintext's size, see [`Session::shared_product_he`]).
    fn held_digit_bits(&self) -> u32 {
        self.fixed.ring().bits().div_ceil(2)
    }

    /// Whether encrypting `x` (`m x k`, held) once and multiplying batches of `batch` of its
    /// rows by `n` shared columns from it costs less than the held products
    /// [`Session::matmul`] would run, over `products` such products (public: shapes and
    /// counts only, so both parties decide alike).
    pub(crate) fn held_columns_cheaper(
        &self,
        (m, k, n): (usize, usize, usize),
        batch: usize,
        products: usize,
    ) -> bool {
        let per_ct = self.columns_per_ct(m);
        let dealer = matches!(self.config.triples, super::config::Triples::Dealer { .. });
        if dealer || per_ct == 0 || products == 0 || k == 0 || n == 0 {
            return false;
        }
        let net = self.config.network;
        let big_n = self.params.degree() as f64;
        let q_bits = self.params.context().q().log2_product();
        let reply_bits = f64::from(self.params.plaintext_bits()) + big_n.log2() + 1.0;
        let cts = k.div_ceil(per_ct) as f64;
        let once = cost::Cost {
            compute_us: cts * 400.0,
            bytes: cts * big_n * q_bits / 8.0,
            rounds: 1.0,
        };
        let replies = 2.0 * n as f64;
        let each = cost::Cost {
            compute_us: replies * (cts * 150.0 + 900.0),
            bytes: replies * (big_n + batch as f64) * reply_bits / 8.0,
            rounds: 2.0,
        };
        let now = self.held_cost(batch, k, n).total_us(&net);
        once.total_us(&net) + products as f64 * each.total_us(&net) < products as f64 * now
    }

    /// Encrypts `x` (2-D, input by one party: [`Session::input`]) once for
    /// [`Session::matmul_held_columns`]: its holder encrypts it column by column under its
    /// key (the client's session key, or the server's training key) and sends it; the
    /// other party keeps the ciphertexts. Both parties call it at the same point.
    pub(crate) fn encrypt_held_columns(&mut self, x: &PrivateTensor) -> Result<(), TensorError> {
        let shape = x.shape();
        let (Some(holder), [m, k]) = (x.holder(), shape.as_slice()) else {
            return Err(TensorError::Invalid {
                what: "held columns",
                detail: format!("a 2-D matrix input by one party, not {shape:?}"),
            });
        };
        let (m, k) = (*m, *k);
        let per_ct = self.columns_per_ct(m);
        if per_ct == 0 {
            return Err(TensorError::Invalid {
                what: "held columns",
                detail: format!(
                    "{m} rows do not fit one ciphertext of {}",
                    self.params.degree()
                ),
            });
        }
        if holder == Role::Server {
            self.ensure_server_key()?;
        }
        let (share, _) = self.shares_of(x)?;
        let cts = self.send_columns(holder, &share, (m, k), per_ct)?;
        self.held_columns = Some(HeldColumns {
            holder,
            rows: m,
            cols: k,
            per_ct,
            cts,
        });
        Ok(())
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

    /// `X[rows] B` for the matrix `X` of [`Session::encrypt_held_columns`] (`xb` is
    /// `X[rows]`, as [`Session::rows`] gives it) and `B` (`k x n`, any representation):
    /// the holder multiplies its share of `B` locally; the other party multiplies the
    /// encrypted columns by its share of `B`, split into two digits, one reply per output
    /// column and digit (masked, re-randomized with the holder's public key, flooded),
    /// which the holder decrypts at the batch's rows. Shared at `2^2f`, as
    /// [`Session::matmul`]. A public `B`, or one the holder has whole, runs as
    /// [`Session::matmul`] (locally).
    pub(crate) fn matmul_held_columns(
        &mut self,
        xb: &PrivateTensor,
        rows: &[usize],
        b: &PrivateTensor,
    ) -> Result<PrivateTensor, TensorError> {
        let Some(hc) = self.held_columns.as_ref() else {
            return self.matmul(xb, b);
        };
        let (holder, m, k, per_ct) = (hc.holder, hc.rows, hc.cols, hc.per_ct);
        let sb = b.shape();
        if matches!(b, PrivateTensor::Public(_)) || b.holder() == Some(holder) {
            return self.matmul(xb, b);
        }
        if sb.len() != 2 || sb[0] != k || xb.shape() != [rows.len(), k] {
            return Err(TensorError::Shape {
                what: "held columns product",
                left: xb.shape(),
                right: sb,
            });
        }
        if let Some(&bad) = rows.iter().find(|&&i| i >= m) {
            return Err(TensorError::Shape {
                what: "row index vs held rows",
                left: vec![bad],
                right: vec![m],
            });
        }
        let n = sb[1];
        let bsz = rows.len();
        let ring = self.fixed.ring();
        let f = self.fixed.frac_bits();
        let (y, _) = self.shares_of(b)?;
        self.log.push(cost::LayerPlan {
            layer: format!("matmul ({bsz}x{k}) x ({k}x{n}), held data encrypted once"),
            depth: 0,
            chosen: cost::Backend::BfvCoefficient,
            options: vec![(cost::Backend::BfvCoefficient, cost::Cost::default())],
        });
        let own = if holder == self.role {
            let (x, _) = self.shares_of(xb)?;
            ring.matmul(&x, &y, bsz, k, n)
        } else {
            vec![0; bsz * n]
        };
        // The ciphertexts are lent to the product (the session stays borrowable).
        let hc = self.held_columns.take();
        let cts = hc.as_ref().map_or(&[][..], |h| h.cts.as_slice());
        let part = self.columns_times(holder, cts, &y, rows, (m, k, n), per_ct);
        self.held_columns = hc;
        let z = ring.add_vec(&own, &part?);
        Ok(PrivateTensor::Shared {
            share: z,
            shape: vec![bsz, n],
            frac_bits: 2 * f,
            nonneg: false,
            held_by: None,
        })
    }

    /// Encrypts `holder`'s `m x k` matrix (`x`, its side only) column by column, `per_ct`
    /// columns per ciphertext at offsets `0, m, 2m, ..`, under its key, and sends it: the
    /// other party's return value is the ciphertexts (empty on the holder's side).
    fn send_columns(
        &mut self,
        holder: Role,
        x: &[u64],
        (m, k): (usize, usize),
        per_ct: usize,
    ) -> Result<Vec<cipherml_he::bfv::Ciphertext>, TensorError> {
        let count = k.div_ceil(per_ct);
        if holder != self.role {
            return crate::link::receive_ciphertexts(&self.params, &mut self.party, count);
        }
        let encoder = Encoder::new(&self.params);
        let big_n = self.params.degree();
        let mut pts = Vec::with_capacity(count);
        for g in 0..count {
            let mut coeffs = vec![0u64; big_n];
            for s in 0..per_ct.min(k - g * per_ct) {
                let j = g * per_ct + s;
                for i in 0..m {
                    coeffs[s * m + i] = x[i * k + j];
                }
            }
            pts.push(encoder.encode_coeffs_u64(&coeffs)?);
        }
        let sk = self.key_of(holder)?;
        crate::link::send_encrypted(&self.params, &mut self.party, &sk, &pts)?;
        Ok(Vec::new())
    }

    /// `X[rows] Y` where `X` (`m x k`) is `holder`'s matrix encrypted in columns
    /// ([`Session::send_columns`]: `cts`, on the other party's side) and `Y` (`k x n`) the
    /// other party's (`y`, its side only): one reply per output column and digit
    /// ([`Session::digit_replies`]), row `i` at coefficient `i` (column `s` of a ciphertext
    /// sits at offset `s m`, and times `X^(-s m) = -X^(N - s m)` it lands at 0 while the
    /// others land at non-zero multiples of `m`, outside the rows). This party's share of
    /// the product, row-major (`rows.len() x n`).
    fn columns_times(
        &mut self,
        holder: Role,
        cts: &[cipherml_he::bfv::Ciphertext],
        y: &[u64],
        rows: &[usize],
        (m, k, n): (usize, usize, usize),
        per_ct: usize,
    ) -> Result<Vec<u64>, TensorError> {
        let bsz = rows.len();
        let big_n = self.params.degree();
        let label = format!("product by encrypted columns ({bsz} of {m} rows, {k} columns)");
        let count = k.div_ceil(per_ct);
        let comb = self.digit_replies(
            holder,
            cts,
            count,
            n,
            rows,
            per_ct,
            1,
            &label,
            |g, c, digit| {
                let mut coeffs = vec![0i64; big_n];
                for s in 0..per_ct.min(k - g * per_ct) {
                    let j = g * per_ct + s;
                    let v = digit(y[j * n + c]);
                    if s == 0 {
                        coeffs[0] = v;
                    } else {
                        coeffs[big_n - s * m] = -v;
                    }
                }
                coeffs
            },
        )?;
        Ok((0..bsz * n)
            .map(|idx| comb[(idx % n) * bsz + idx / n])
            .collect())
    }

    /// The replies of a product under `holder`'s key, one per output column `c < n` and
    /// digit, each read at the coefficients `keep`: on the other party's side, output
    /// `(digit, c)` is the sum over the `count` ciphertexts `cts[g]` times the plaintext
    /// `plain(g, c, digit)` (coefficients of at most `mult 2^(l/2)` in absolute value, at
    /// most `terms` of them non-zero: the noise bound, and so the flooding, is sized from
    /// these public counts), masked, re-randomized with the holder's public key and
    /// flooded; the holder decrypts. The evaluator's share of the plaintexts is split into
    /// two digits of `ceil(l / 2)` bits (`digit` extracts the current one), since the
    /// noise grows with the plaintext's size. This party's share of the product, output
    /// `c`'s values at `keep` in order (`n keep.len()`, column-major).
    #[allow(clippy::too_many_arguments)]
    fn digit_replies(
        &mut self,
        holder: Role,
        cts: &[cipherml_he::bfv::Ciphertext],
        count: usize,
        n: usize,
        keep: &[usize],
        terms: usize,
        mult: u64,
        label: &str,
        plain: impl Fn(usize, usize, &dyn Fn(u64) -> i64) -> Vec<i64>,
    ) -> Result<Vec<u64>, TensorError> {
        let ring = self.fixed.ring();
        let dbits = self.held_digit_bits();
        let low = (1u64 << dbits) - 1;
        let positions: Vec<(usize, usize)> = (0..2 * n)
            .flat_map(|blk| keep.iter().map(move |&i| (blk, i)))
            .collect();
        let noise = cipherml_he::tensor::product_noise_log2(
            count,
            self.params.degree(),
            self.params.plaintext_modulus(),
            mult << dbits,
            terms,
            cipherml_he::tensor::FRESH_NOISE_LOG2,
        );
        super::linear::check_flood(&self.params, &self.config, label, noise)?;
        let got = if holder == self.role {
            let sk = self.key_of(holder)?;
            crate::link::bfv_linear_client(
                &self.params,
                ring,
                &mut self.party,
                &sk,
                &[],
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
            let mut out = Vec::with_capacity(2 * n);
            for d in 0..2u32 {
                let digit = move |v: u64| ((v >> (d * dbits)) & low) as i64;
                for c in 0..n {
                    let mut acc: Option<cipherml_he::bfv::Ciphertext> = None;
                    for (g, ct) in cts.iter().enumerate() {
                        let pt = encoder.encode_coeffs_i64(&plain(g, c, &digit))?;
                        let prod = ev.mul_plain(ct, &pt)?;
                        match &mut acc {
                            None => acc = Some(prod),
                            Some(a) => ev.add_assign(a, &prod)?,
                        }
                    }
                    out.push(acc.expect("at least one ciphertext"));
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
            .map(|idx| {
                let (c, p) = (idx / kl, idx % kl);
                let lo = got[c * kl + p];
                let hi = got[(n + c) * kl + p];
                ring.add(lo, ring.mul(hi, 1u64 << dbits))
            })
            .collect())
    }

    /// Whether encrypting `x` (`m x k`, held) once by rows and computing the weight
    /// gradients `G^T X[rows]` (`G` of `n` columns, batches of `batch` rows) from it costs
    /// less, over `products` of them, than the held products [`Session::matmul`] would run
    /// (public: shapes and counts only).
    pub(crate) fn held_rows_cheaper(
        &self,
        (m, k, n): (usize, usize, usize),
        batch: usize,
        products: usize,
    ) -> bool {
        let per_ct = self.columns_per_ct(k);
        let dealer = matches!(self.config.triples, super::config::Triples::Dealer { .. });
        if dealer || per_ct == 0 || products == 0 || m == 0 || n == 0 {
            return false;
        }
        let net = self.config.network;
        let big_n = self.params.degree() as f64;
        let q_bits = self.params.context().q().log2_product();
        let reply_bits = f64::from(self.params.plaintext_bits()) + big_n.log2() + 1.0;
        let cts = m.div_ceil(per_ct) as f64;
        let once = cost::Cost {
            compute_us: cts * 400.0,
            bytes: cts * big_n * q_bits / 8.0,
            rounds: 1.0,
        };
        // A batch touches at most `batch` rows: at most that many ciphertexts.
        let touched = cts.min(batch as f64);
        let replies = 2.0 * n as f64;
        let each = cost::Cost {
            compute_us: replies * (touched * 150.0 + 900.0),
            bytes: replies * (big_n + k as f64) * reply_bits / 8.0,
            rounds: 2.0,
        };
        // As `matmul` runs `G^T X`: `(X^T G)^T` with `X^T` held.
        let now = self.held_cost(k, batch, n).total_us(&net);
        once.total_us(&net) + products as f64 * each.total_us(&net) < products as f64 * now
    }

    /// Encrypts `x` (2-D, input by one party) once by rows for
    /// [`Session::matmul_t_held_rows`]: its holder encrypts it row by row, `N / k` rows per
    /// ciphertext at offsets `0, k, 2k, ..` (the row-major matrix cut in pieces), under its
    /// key and sends it; the other party keeps the ciphertexts. Both parties call it at the
    /// same point.
    pub(crate) fn encrypt_held_rows(&mut self, x: &PrivateTensor) -> Result<(), TensorError> {
        let shape = x.shape();
        let (Some(holder), [m, k]) = (x.holder(), shape.as_slice()) else {
            return Err(TensorError::Invalid {
                what: "held rows",
                detail: format!("a 2-D matrix input by one party, not {shape:?}"),
            });
        };
        let (m, k) = (*m, *k);
        let per_ct = self.columns_per_ct(k);
        if per_ct == 0 {
            return Err(TensorError::Invalid {
                what: "held rows",
                detail: format!(
                    "rows of {k} do not fit one ciphertext of {}",
                    self.params.degree()
                ),
            });
        }
        if holder == Role::Server {
            self.ensure_server_key()?;
        }
        let (share, _) = self.shares_of(x)?;
        // The matrix transposed, in columns of `k`: row `i` at offset `(i mod per_ct) k`.
        let xt = super::grad_transpose(&share, m, k);
        let cts = self.send_columns(holder, &xt, (k, m), per_ct)?;
        self.held_rows = Some(HeldColumns {
            holder,
            rows: k,
            cols: m,
            per_ct,
            cts,
        });
        Ok(())
    }

    /// `G^T X[rows]` (`n x k`) for the matrix `X` (`m x k`) of
    /// [`Session::encrypt_held_rows`] (`xb` is `X[rows]`) and `G` (`rows.len() x n`, any
    /// representation): the holder multiplies its share of `G` locally; the other party
    /// sums the encrypted rows weighted by its share of `G` (row `i` of a ciphertext sits
    /// at offset `s k`, `s = i mod N/k`, and times `X^(-s k)` lands at 0), one dense reply
    /// of `k` values per column of `G` and digit. Shared at `2^2f`, as
    /// [`Session::matmul`] of `G^T` by `X[rows]`. A public `G`, or one the holder has
    /// whole, runs as [`Session::matmul`].
    pub(crate) fn matmul_t_held_rows(
        &mut self,
        xb: &PrivateTensor,
        rows: &[usize],
        g: &PrivateTensor,
    ) -> Result<PrivateTensor, TensorError> {
        let Some(hr) = self.held_rows.as_ref() else {
            let gt = self.transpose(g)?;
            return self.matmul(&gt, xb);
        };
        // Stored transposed: `rows` is `k` (a column's length), `cols` is `m`.
        let (holder, k, m, per_ct) = (hr.holder, hr.rows, hr.cols, hr.per_ct);
        let sg = g.shape();
        if matches!(g, PrivateTensor::Public(_)) || g.holder() == Some(holder) {
            let gt = self.transpose(g)?;
            return self.matmul(&gt, xb);
        }
        let bsz = rows.len();
        if sg.len() != 2 || sg[0] != bsz || xb.shape() != [bsz, k] {
            return Err(TensorError::Shape {
                what: "held rows product",
                left: sg,
                right: xb.shape(),
            });
        }
        if let Some(&bad) = rows.iter().find(|&&i| i >= m) {
            return Err(TensorError::Shape {
                what: "row index vs held rows",
                left: vec![bad],
                right: vec![m],
            });
        }
        let n = sg[1];
        let ring = self.fixed.ring();
        let f = self.fixed.frac_bits();
        let (y, _) = self.shares_of(g)?;
        self.log.push(cost::LayerPlan {
            layer: format!("matmul ({n}x{bsz}) x ({bsz}x{k}), held data encrypted once by rows"),
            depth: 0,
            chosen: cost::Backend::BfvCoefficient,
            options: vec![(cost::Backend::BfvCoefficient, cost::Cost::default())],
        });
        let own = if holder == self.role {
            let (x, _) = self.shares_of(xb)?;
            let yt = super::grad_transpose(&y, bsz, n);
            ring.matmul(&yt, &x, n, bsz, k)
        } else {
            vec![0; n * k]
        };
        // A row taken twice in a batch adds its digits: the bound counts the repeats.
        let mut seen = std::collections::HashMap::new();
        for &i in rows {
            *seen.entry(i).or_insert(0u64) += 1;
        }
        let mult = seen.values().copied().max().unwrap_or(1);
        let big_n = self.params.degree();
        let count = m.div_ceil(per_ct);
        let label = format!("gradient by encrypted rows ({bsz} of {m} rows, {k} columns)");
        let keep: Vec<usize> = (0..k).collect();
        let hr = self.held_rows.take();
        let cts = hr.as_ref().map_or(&[][..], |h| h.cts.as_slice());
        let part = self.digit_replies(
            holder,
            cts,
            count,
            n,
            &keep,
            per_ct,
            mult,
            &label,
            |ct, c, digit| {
                let mut coeffs = vec![0i64; big_n];
                for (p, &i) in rows.iter().enumerate() {
                    if i / per_ct == ct {
                        let s = i % per_ct;
                        let v = digit(y[p * n + c]);
                        if s == 0 {
                            coeffs[0] += v;
                        } else {
                            coeffs[big_n - s * k] -= v;
                        }
                    }
                }
                coeffs
            },
        );
        self.held_rows = hr;
        let z = ring.add_vec(&own, &part?);
        Ok(PrivateTensor::Shared {
            share: z,
            shape: vec![n, k],
            frac_bits: 2 * f,
            nonneg: false,
            held_by: None,
        })
    }

    /// The estimated cost of `X Y` for shared `X` (`m x k`) and `Y` (`k x n`) by
    /// [`Session::shared_product_columns`] (`None` if a column of `X` does not fit a
    /// ciphertext): per cross term, `X`'s share in columns and `2 n` dense replies.
    pub(super) fn shared_columns_cost(&self, m: usize, k: usize, n: usize) -> Option<cost::Cost> {
        let per_ct = self.columns_per_ct(m);
        if per_ct == 0 {
            return None;
        }
        let big_n = self.params.degree() as f64;
        let q_bits = self.params.context().q().log2_product();
        let reply_bits = f64::from(self.params.plaintext_bits()) + big_n.log2() + 1.0;
        let cts = k.div_ceil(per_ct) as f64;
        let replies = 2.0 * n as f64;
        Some(cost::Cost {
            compute_us: 2.0 * (cts * 400.0 + replies * (cts * 150.0 + 900.0)),
            bytes: 2.0
                * (cts * big_n * q_bits / 8.0 + replies * (big_n + m as f64) * reply_bits / 8.0),
            rounds: 4.0,
        })
    }

    /// The estimated cost of `X Y` for shared `X` (`m x k`) and `Y` (`k x n`) by
    /// [`Session::shared_product_rows`] (`None` if a row of `Y` does not fit a ciphertext):
    /// per cross term, `Y`'s share in rows and `2 m` dense replies.
    pub(super) fn shared_rows_cost(&self, m: usize, k: usize, n: usize) -> Option<cost::Cost> {
        let per_ct = self.columns_per_ct(n);
        if per_ct == 0 {
            return None;
        }
        let big_n = self.params.degree() as f64;
        let q_bits = self.params.context().q().log2_product();
        let reply_bits = f64::from(self.params.plaintext_bits()) + big_n.log2() + 1.0;
        let cts = k.div_ceil(per_ct) as f64;
        let replies = 2.0 * m as f64;
        Some(cost::Cost {
            compute_us: 2.0 * (cts * 400.0 + replies * (cts * 150.0 + 900.0)),
            bytes: 2.0
                * (cts * big_n * q_bits / 8.0 + replies * (big_n + n as f64) * reply_bits / 8.0),
            rounds: 4.0,
        })
    }

    /// `X Y` for shared `X` (`m x k`) and `Y` (`k x n`, `n <= N`) under BFV, dealer-free,
    /// for a long inner dimension (the weight gradients `G^T H`): `X_c Y_c + X_s Y_s`
    /// locally, and each cross term `X_o Y_h` by `h` sending its share of `Y` in encrypted
    /// rows and the other party summing them weighted by its share of `X` (row `r` of the
    /// product: one dense reply of `n` values per digit). This party's share at `2^2f`.
    pub(super) fn shared_product_rows(
        &mut self,
        x: &[u64],
        y: &[u64],
        (m, k, n): (usize, usize, usize),
    ) -> Result<Vec<u64>, TensorError> {
        let per_ct = self.columns_per_ct(n);
        let ring = self.fixed.ring();
        let big_n = self.params.degree();
        let mut z = ring.matmul(x, y, m, k, n);
        let keep: Vec<usize> = (0..n).collect();
        let count = k.div_ceil(per_ct);
        for holder in [Role::Client, Role::Server] {
            if holder == Role::Server {
                self.ensure_server_key()?;
            }
            // Y's rows are the columns of Y^T (`n` long), `per_ct` to a ciphertext.
            let yt = super::grad_transpose(y, k, n);
            let cts = self.send_columns(holder, &yt, (n, k), per_ct)?;
            let label = format!("product by encrypted rows ({m} x {k} x {n})");
            let part = self.digit_replies(
                holder,
                &cts,
                count,
                m,
                &keep,
                per_ct,
                1,
                &label,
                |g, r, digit| {
                    let mut coeffs = vec![0i64; big_n];
                    for sl in 0..per_ct.min(k - g * per_ct) {
                        let i = g * per_ct + sl;
                        let v = digit(x[r * k + i]);
                        if sl == 0 {
                            coeffs[0] = v;
                        } else {
                            coeffs[big_n - sl * n] = -v;
                        }
                    }
                    coeffs
                },
            )?;
            z = ring.add_vec(&z, &part);
        }
        Ok(z)
    }

    /// `X Y` for shared `X` (`m x k`, `m <= N`) and `Y` (`k x n`) under BFV, dealer-free:
    /// `X_c Y_c + X_s Y_s` locally, and each cross term `X_h Y_o` by `h` sending its share
    /// in encrypted columns and the other party multiplying them by its share
    /// ([`Session::columns_times`]): dense replies, where [`Session::shared_product_he`]'s
    /// coefficient-encoded products use one coefficient in `k`. This party's share at
    /// `2^2f`.
    pub(super) fn shared_product_columns(
        &mut self,
        x: &[u64],
        y: &[u64],
        (m, k, n): (usize, usize, usize),
    ) -> Result<Vec<u64>, TensorError> {
        let per_ct = self.columns_per_ct(m);
        let ring = self.fixed.ring();
        let mut z = ring.matmul(x, y, m, k, n);
        let rows: Vec<usize> = (0..m).collect();
        for holder in [Role::Client, Role::Server] {
            if holder == Role::Server {
                self.ensure_server_key()?;
            }
            let cts = self.send_columns(holder, x, (m, k), per_ct)?;
            let part = self.columns_times(holder, &cts, y, &rows, (m, k, n), per_ct)?;
            z = ring.add_vec(&z, &part);
        }
        Ok(z)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{run_local_with, Role, SessionConfig};
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};

    /// Weight gradients `G^T X[rows]` from held data encrypted once by rows, against the
    /// plaintext product and the engine's: data of either party, one or several
    /// ciphertexts of rows (`N / k` rows each), batches with repeated rows (their digits
    /// add up: the noise bound counts the repeats), and a wrong shape refused.
    #[test]
    fn gradients_by_held_rows_match_plaintext() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(22);
        for (holder, m, k, n) in [
            (Role::Client, 300usize, 7usize, 3usize),
            (Role::Server, 3000, 20, 2),
            (Role::Client, 1000, 64, 1),
        ] {
            let a = Array2::from_shape_fn((m, k), |_| rng.random_range(-4.0..4.0));
            let rows: Vec<usize> = (0..m).step_by(13).chain([m - 1, 3, 3, 3]).collect();
            let gm = Array2::from_shape_fn((rows.len(), n), |_| rng.random_range(-2.0..2.0));
            let want = gm.t().dot(&a.select(ndarray::Axis(0), &rows)).into_dyn();
            let (ad, gd, r) = (a.into_dyn(), gm.into_dyn(), rows.clone());
            let (client, _) = run_local_with(SessionConfig::training(), move |s| {
                let x = s.input(holder, &[m, k], || ad.clone())?;
                let g = s.input_masked(Role::Server, &[r.len(), n], || gd.clone())?;
                s.encrypt_held_rows(&x)?;
                let xb = s.rows(&x, &r)?;
                let z = s.matmul_t_held_rows(&xb, &r, &g)?;
                let gt = s.transpose(&g)?;
                let engine = s.matmul(&gt, &xb)?;
                let refused = s.matmul_t_held_rows(&xb, &r[1..], &g).is_err();
                Ok((
                    s.reveal(&z, Role::Client)?,
                    s.reveal(&engine, Role::Client)?,
                    s.explain(),
                    refused,
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
    /// (300 rows: 27 of them) or one (5,000 rows) or two (3,000), batches of rows in any
    /// order with repeats; and the refusals of a wrong shape and a row out of range.
    #[test]
    fn products_by_held_columns_match_plaintext() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(21);
        for (holder, m, k, n) in [
            (Role::Client, 300usize, 7usize, 3usize),
            (Role::Server, 3000, 5, 2),
            (Role::Client, 5000, 3, 1),
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
                s.encrypt_held_columns(&x)?;
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
}
