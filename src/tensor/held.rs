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

use super::{cost, Role, Session, TensorError};

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
                let rerand: &Encryptor = match (holder, &self.rerand, &self.server_key) {
                    (Role::Server, Some(r), _) => r,
                    (Role::Client, _, Some(ServerKey::Public(r))) => r,
                    _ => {
                        return Err(TensorError::Invalid {
                            what: "session",
                            detail: "no public key of the key holder".into(),
                        })
                    }
                };
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
                let sk = match (holder, &self.sk, &self.server_key) {
                    (Role::Server, Some(sk), _) => sk.clone(),
                    (Role::Client, _, Some(ServerKey::Secret(sk))) => sk.clone(),
                    _ => {
                        return Err(TensorError::Invalid {
                            what: "session",
                            detail: "no secret key to encrypt with".into(),
                        })
                    }
                };
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
