//! IKNP OT extension (Ishai, Kilian, Nissim, Petrank, Crypto 2003) with `kappa = 128` base
//! OTs, AES-CTR column PRGs and fixed-key AES hashes; on top of it: correlated OT with a
//! chosen global delta, random OT, chosen-message OT, arithmetic correlated OT in
//! `Z_2^l` (the building block of Gilboa products and multiplexers) and 1-of-N OT.
//!
//! One type per role: [`OtSender`] (holds the global `delta`) and [`OtReceiver`]. An
//! instance of each extends any number of batches; the PRG counters advance in lockstep.
//!
//! Security: semi-honest (no KOS consistency check), as the rest of the layer.

use rand::{CryptoRng, RngCore};

use super::aes::{transpose128, AesPrg, Block, FixedKeyAes};
use super::base::{BaseOtReceiver, BaseOtSender};
use super::ferret::{FerretReceiver, FerretSender};
use crate::error::{Error, Result};
use crate::net::{
    decode_ring, encode_ring, pack_bits, read_bits, recv_exact, unpack_bits, BitWriter, Channel,
};
use crate::ring::{mask, Ring};
use zeroize::Zeroize;

const KAPPA: usize = 128;

/// Tweak domain of 1-of-N pads, apart from any other use of the hash.
const ONE_OF_N_DOMAIN: u128 = 1 << 127;

/// Instances of a 1-of-N OT hashed at a time (buffers of a few KB).
const ONE_OF_N_CHUNK: usize = 256;

/// The sender of extended OTs (the base-OT receiver, holding the global `delta`).
#[derive(Debug)]
pub struct OtSender {
    delta: Block,
    prgs: Vec<AesPrg>,
    hash: FixedKeyAes,
    tweak: u128,
    silent: Option<FerretSender>,
}

/// A correlated-OT receive in progress (see [`OtReceiver::start_receive_correlated`]).
#[derive(Debug)]
pub struct PendingCorrelated {
    ring: Ring,
    w: usize,
    choices: Vec<u8>,
    mt: Vec<u64>,
}

/// The receiver of extended OTs (the base-OT sender).
#[derive(Debug)]
pub struct OtReceiver {
    prgs: Vec<(AesPrg, AesPrg)>,
    hash: FixedKeyAes,
    tweak: u128,
    silent: Option<FerretReceiver>,
}

fn pack_choices(choices: &[u8], nb: usize) -> Vec<Block> {
    let mut r = vec![0u128; nb];
    for (i, &c) in choices.iter().enumerate() {
        r[i >> 7] |= ((c & 1) as u128) << (i & 127);
    }
    r
}

/// OTs per extension message: 64 blocks of 128 (the chunk stays in L2; messages of a
/// batch stream while the peer works).
const CHUNK_BLOCKS: usize = 64;

/// Column-major `128 x (128 w)` bit matrix -> `128 w` rows of 128 bits.
fn transpose_chunk(cols: &[Block], w: usize, rows: &mut [Block]) {
    let mut a = [0u128; 128];
    for b in 0..w {
        for j in 0..KAPPA {
            a[j] = cols[j * w + b];
        }
        transpose128(&mut a);
        rows[b * 128..(b + 1) * 128].copy_from_slice(&a);
    }
}

#[inline]
fn block_from(c: &[u8]) -> Block {
    let mut a = [0u8; 16];
    a.copy_from_slice(c);
    u128::from_le_bytes(a)
}

fn block_bytes(v: &[Block]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 16);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn bytes_blocks(b: &[u8]) -> Vec<Block> {
    b.chunks_exact(16).map(block_from).collect()
}

/// Expands hashed seeds into `w` ring elements each (fixed-key AES in counter mode).
fn expand(hash: &FixedKeyAes, seeds: &[Block], w: usize, ring: Ring) -> Vec<u64> {
    if w == 1 {
        return seeds.iter().map(|&s| ring.reduce(s as u64)).collect();
    }
    let per = w.div_ceil(2);
    let mut blocks = Vec::with_capacity(seeds.len() * per);
    for &s in seeds {
        for j in 0..per {
            blocks.push(s ^ j as u128);
        }
    }
    let orig = blocks.clone();
    hash.permute(&mut blocks);
    let mut out = Vec::with_capacity(seeds.len() * w);
    for (i, _) in seeds.iter().enumerate() {
        for k in 0..w {
            let b = blocks[i * per + k / 2] ^ orig[i * per + k / 2];
            let v = if k % 2 == 0 {
                b as u64
            } else {
                (b >> 64) as u64
            };
            out.push(ring.reduce(v));
        }
    }
    out
}

impl OtSender {
    /// Sets up with a random global `delta` (128 base OTs, the peer running
    /// [`OtReceiver::setup`]).
    pub fn setup<C: Channel + ?Sized, R: RngCore + CryptoRng + ?Sized>(
        ch: &mut C,
        rng: &mut R,
    ) -> Result<Self> {
        let mut d = [0u8; 16];
        rng.fill_bytes(&mut d);
        Self::setup_with_delta(ch, u128::from_le_bytes(d), rng)
    }

    /// Sets up with a chosen global `delta`: afterwards every correlated OT satisfies
    /// `receiver_block = sender_block xor choice * delta`.
    pub fn setup_with_delta<C: Channel + ?Sized, R: RngCore + CryptoRng + ?Sized>(
        ch: &mut C,
        delta: Block,
        rng: &mut R,
    ) -> Result<Self> {
        let bits: Vec<u8> = (0..KAPPA).map(|j| ((delta >> j) & 1) as u8).collect();
        let keys = BaseOtReceiver::receive(ch, &bits, rng)?;
        Ok(Self {
            delta,
            prgs: keys.into_iter().map(AesPrg::new).collect(),
            hash: FixedKeyAes::default(),
            tweak: 0,
            silent: None,
        })
    }

    /// Sets up silent OT: IKNP as [`Self::setup`], then Ferret bootstrapped from it (the
    /// peer runs [`OtReceiver::setup_silent`]). Every OT afterwards comes from
    /// [`FerretSender`]: a chosen-choice OT costs the receiver one bit, a random OT
    /// nothing, instead of IKNP's 128 bits.
    pub fn setup_silent<C: Channel + ?Sized, R: RngCore + CryptoRng + ?Sized>(
        ch: &mut C,
        rng: &mut R,
    ) -> Result<Self> {
        let mut d = [0u8; 16];
        rng.fill_bytes(&mut d);
        let mut s = Self::setup_with_delta(ch, u128::from_le_bytes(d) | 1, rng)?;
        let f = FerretSender::bootstrap(ch, &mut s, rng)?;
        s.silent = Some(f);
        Ok(s)
    }

    /// Whether OTs come from silent OT ([`Self::setup_silent`]).
    pub fn is_silent(&self) -> bool {
        self.silent.is_some()
    }

    /// Makes `n` OTs ready ahead of use (silent OT only; the receiver calls
    /// [`OtReceiver::ensure`] at the same point with the same `n`). Sends only.
    pub fn ensure<C: Channel + ?Sized>(&mut self, ch: &mut C, n: usize) -> Result<()> {
        match &mut self.silent {
            Some(f) => f.ensure(ch, n),
            None => Ok(()),
        }
    }

    /// One refill towards [`OtSender::ensure`]`(n)`: whether it refilled (never for IKNP;
    /// the receiver's [`OtReceiver::ensure_step`] answers the same).
    pub fn ensure_step<C: Channel + ?Sized>(&mut self, ch: &mut C, n: usize) -> Result<bool> {
        match &mut self.silent {
            Some(f) => f.ensure_step(ch, n),
            None => Ok(false),
        }
    }

    /// The global correlation.
    pub fn delta(&self) -> Block {
        self.delta
    }

    /// `n` correlated OTs with the global delta: returns `q_i`; the receiver gets
    /// `q_i xor c_i * delta`.
    pub fn cot<C: Channel + ?Sized>(&mut self, ch: &mut C, n: usize) -> Result<Vec<Block>> {
        if let Some(f) = &mut self.silent {
            // Random OTs, then the receiver's corrections `c_i xor r_i` (one bit each).
            let mut q = f.take(ch, n)?;
            if n > 0 {
                let d = recv_exact(ch, "OT choice corrections", n.div_ceil(8))?;
                let d = unpack_bits(&d, n, "OT choice corrections")?;
                for (x, &b) in q.iter_mut().zip(&d) {
                    *x ^= self.delta & 0u128.wrapping_sub(b as u128);
                }
            }
            return Ok(q);
        }
        let mut rows = vec![0u128; n];
        self.cot_with(ch, n, |off, chunk| {
            let m = chunk.len().min(n - off);
            rows[off..off + m].copy_from_slice(&chunk[..m]);
        })?;
        Ok(rows)
    }

    /// The engine of [`Self::cot`]: hands each transposed chunk (128 rows per block, the
    /// last chunk possibly longer than needed) with its offset to `f` while it is in cache.
    fn cot_with<C: Channel + ?Sized, F: FnMut(usize, &mut [Block])>(
        &mut self,
        ch: &mut C,
        n: usize,
        mut f: F,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let nb = n.div_ceil(128);
        let mut rows = vec![0u128; CHUNK_BLOCKS * 128];
        let mut q = vec![0u128; KAPPA * CHUNK_BLOCKS];
        for cb in (0..nb).step_by(CHUNK_BLOCKS) {
            let w = CHUNK_BLOCKS.min(nb - cb);
            let u = recv_exact(ch, "IKNP extension matrix", KAPPA * w * 16)?;
            for j in 0..KAPPA {
                let col = &mut q[j * w..(j + 1) * w];
                self.prgs[j].fill(col);
                if (self.delta >> j) & 1 == 1 {
                    let uj = &u[j * w * 16..(j + 1) * w * 16];
                    for (x, c) in col.iter_mut().zip(uj.chunks_exact(16)) {
                        *x ^= block_from(c);
                    }
                }
            }
            transpose_chunk(&q, w, &mut rows[..w * 128]);
            f(cb * 128, &mut rows[..w * 128]);
        }
        Ok(())
    }

    /// `n` random OTs: the pairs `(H(q_i), H(q_i xor delta))`; the receiver learns one.
    pub fn random_ot<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        n: usize,
    ) -> Result<Vec<[Block; 2]>> {
        let delta = self.delta;
        if let Some(f) = &mut self.silent {
            let mut out: Vec<[Block; 2]> = f
                .take_slice(ch, n)?
                .iter()
                .map(|&q| [q, q ^ delta])
                .collect();
            self.hash.ccr(out.as_flattened_mut());
            return Ok(out);
        }
        let mut out: Vec<[Block; 2]> = Vec::with_capacity(n);
        let hash = self.hash.clone();
        self.cot_with(ch, n, |off, chunk| {
            let m = chunk.len().min(n - off);
            out.extend(chunk[..m].iter().map(|&q| [q, q ^ delta]));
            hash.ccr(out[off..off + m].as_flattened_mut());
        })?;
        Ok(out)
    }

    fn hash_pairs(&self, q: &[Block]) -> (Vec<Block>, Vec<Block>) {
        let mut h0 = q.to_vec();
        let mut h1: Vec<Block> = q.iter().map(|&x| x ^ self.delta).collect();
        self.hash.ccr(&mut h0);
        self.hash.ccr(&mut h1);
        (h0, h1)
    }

    /// Chosen-message OT: the receiver learns `msgs[i][c_i]`.
    pub fn send_chosen<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        msgs: &[[Block; 2]],
    ) -> Result<()> {
        let q = self.cot(ch, msgs.len())?;
        let (h0, h1) = self.hash_pairs(&q);
        let mut out = Vec::with_capacity(msgs.len() * 2);
        for (i, m) in msgs.iter().enumerate() {
            out.push(m[0] ^ h0[i]);
            out.push(m[1] ^ h1[i]);
        }
        ch.send(&block_bytes(&out))?;
        ch.flush()
    }

    /// Arithmetic correlated OT in `Z_2^l`, `w` elements per OT: for OT `i` with
    /// correlation `deltas[i*w..(i+1)*w]`, returns this party's `x_i` (random); the
    /// receiver gets `x_i + c_i * delta_i`. Costs 128 + `w l` bits per OT.
    pub fn send_correlated<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        ring: Ring,
        deltas: &[u64],
        w: usize,
    ) -> Result<Vec<u64>> {
        if w == 0 || !deltas.len().is_multiple_of(w) {
            return Err(Error::InvalidInput {
                what: "correlation length is not a multiple of the width",
                expected: w as u64,
                found: deltas.len() as u64,
            });
        }
        let n = deltas.len() / w;
        let q = self.cot(ch, n)?;
        let (h0, h1) = self.hash_pairs(&q);
        let m0 = expand(&self.hash, &h0, w, ring);
        let m1 = expand(&self.hash, &h1, w, ring);
        let y: Vec<u64> = (0..n * w)
            .map(|k| ring.sub(ring.add(m0[k], deltas[k]), m1[k]))
            .collect();
        ch.send(&encode_ring(ring, &y))?;
        ch.flush()?;
        Ok(m0)
    }

    /// 1-of-N OT with `N = 2^log_n`, messages of `bits` bits: `msgs[i * N + x]` is message
    /// `x` of instance `i`. Built from `log_n` correlated OTs per instance, each message
    /// masked by the XOR of hashes of the keys its index selects: one slice of one hash
    /// per key when the `N` messages fit in a block (`N bits <= 128`, as the
    /// millionaire's tables), otherwise a hash per key and index (tweaked by both).
    pub fn send_one_of_n<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        msgs: &[u64],
        log_n: u32,
        bits: u32,
    ) -> Result<()> {
        self.one_of_n(ch, msgs, log_n, bits, false).map(|_| ())
    }

    /// 1-of-N OT of a table into XOR shares: the receiver of
    /// [`OtReceiver::receive_one_of_n_shares`] with choice `c_i` gets `table[i * N + c_i]
    /// xor s_i`, and this returns the `s_i` (pseudo-random to the receiver). `s_i` is entry
    /// 0 xor its own pad, so entry 0's message is zero and is not sent: `(N - 1)
    /// bits` bits per instance instead of the `N bits` of [`OtSender::send_one_of_n`] with
    /// a random mask.
    pub fn send_one_of_n_shares<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        table: &[u64],
        log_n: u32,
        bits: u32,
    ) -> Result<Vec<u64>> {
        self.one_of_n(ch, table, log_n, bits, true)
    }

    /// As [`OtSender::send_one_of_n_shares`], the table given by a function: `entry(i,
    /// x)` is entry `x` of instance `i` (below `2^bits`), for `inst` instances (no table
    /// in memory).
    pub fn send_one_of_n_shares_with<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        inst: usize,
        entry: impl Fn(usize, usize) -> u64,
        log_n: u32,
        bits: u32,
    ) -> Result<Vec<u64>> {
        self.one_of_n_with(ch, inst, entry, log_n, bits, true)
    }

    /// Both 1-of-N OTs: with `shares`, each instance's own share is entry 0 xor its pad
    /// and the other entries go masked by it (entry 0's message, zero, not sent).
    fn one_of_n<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        msgs: &[u64],
        log_n: u32,
        bits: u32,
        shares: bool,
    ) -> Result<Vec<u64>> {
        // Clamped so that a hostile `log_n` is refused below, not shifted out of range.
        let nn = 1usize << log_n.min(8);
        if !(1..=8).contains(&log_n) || !msgs.len().is_multiple_of(nn) {
            return Err(Error::InvalidInput {
                what: "1-of-N OT shape (log N in 1..=8, messages a multiple of N)",
                expected: nn as u64,
                found: msgs.len() as u64,
            });
        }
        let inst = msgs.len() / nn;
        self.one_of_n_with(ch, inst, |i, x| msgs[i * nn + x], log_n, bits, shares)
    }

    fn one_of_n_with<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        inst: usize,
        entry: impl Fn(usize, usize) -> u64,
        log_n: u32,
        bits: u32,
        shares: bool,
    ) -> Result<Vec<u64>> {
        // Clamped so that a hostile `log_n` is refused below, not shifted out of range.
        let nn = 1usize << log_n.min(8);
        if !(1..=8).contains(&log_n) || !(1..=64).contains(&bits) {
            return Err(Error::InvalidInput {
                what: "1-of-N OT shape (log N in 1..=8, messages of 1 to 64 bits)",
                expected: 64,
                found: u64::from(bits),
            });
        }
        let ln = log_n as usize;
        let mut q = self.cot(ch, inst * ln)?;
        let base_tweak = self.tweak;
        self.tweak += (inst * ln) as u128;
        let m = mask(bits);
        let first = usize::from(shares);
        let mut out = BitWriter::with_capacity(inst * (nn - first) * bits as usize);
        let mut own = Vec::with_capacity(if shares { inst } else { 0 });
        // In chunks of instances, so that the buffers stay small and in cache.
        let per = ONE_OF_N_CHUNK;
        let sliced = sliced_pads(log_n, bits);
        let mut pis = vec![0u128; 2 * per * ln];
        let mut pi_in = vec![0u128; if sliced { 0 } else { nn * ln }];
        let mut tw = vec![0u128; if sliced { 0 } else { nn * ln }];
        let mut pads = vec![0u128; if sliced { 0 } else { nn * ln }];
        let mut row = vec![0u64; nn];
        let mut combo = vec![0u128; if sliced { nn } else { 0 }];
        for (c, qc) in q.chunks(per * ln).enumerate() {
            // Both keys of the chunk's OTs: hashed (sliced pads) or pi(k) (tweaked pads).
            let pis = &mut pis[..2 * qc.len()];
            for (p, &x) in pis.chunks_exact_mut(2).zip(qc) {
                p[0] = x;
                p[1] = x ^ self.delta;
            }
            if sliced {
                self.hash.ccr(pis);
            } else {
                self.hash.permute(pis);
            }
            for ic in 0..qc.len() / ln {
                let i = c * per + ic;
                let keys = &pis[2 * ic * ln..2 * (ic + 1) * ln];
                if sliced {
                    sliced_pads_all(keys, bits, &mut combo, &mut row);
                } else {
                    for x in 0..nn {
                        for j in 0..ln {
                            let b = (x >> j) & 1;
                            pi_in[x * ln + j] = keys[2 * j + b];
                            let ot = (i * ln + j) as u128;
                            tw[x * ln + j] = ONE_OF_N_DOMAIN | ((base_tweak + ot) << 8) | x as u128;
                        }
                    }
                    self.hash.tccr_with_pi(&pi_in, &tw, &mut pads);
                    for (x, r) in row.iter_mut().enumerate() {
                        *r = pads[x * ln..(x + 1) * ln]
                            .iter()
                            .fold(0u64, |a, &p| a ^ p as u64);
                    }
                }
                let s = if shares {
                    let s = (entry(i, 0) ^ row[0]) & m;
                    own.push(s);
                    s
                } else {
                    0
                };
                for (x, &r) in row.iter().enumerate().skip(first) {
                    out.push((entry(i, x) ^ s ^ r) & m, bits);
                }
            }
        }
        row.zeroize();
        combo.zeroize();
        q.zeroize();
        pis.zeroize();
        pi_in.zeroize();
        pads.zeroize();
        ch.send(&out.finish())?;
        ch.flush()?;
        Ok(own)
    }
}

/// Whether a 1-of-`2^log_n` OT of `bits`-bit messages takes its pads from slices of one
/// hash per key: all `2^log_n` slices of `bits` bits fit in a block.
fn sliced_pads(log_n: u32, bits: u32) -> bool {
    (bits as usize) << log_n <= 128
}

/// The pad of entry `x` from the hashes of the keys it selects (`hash(j)`, the hash of
/// OT `j`'s key for bit `j` of `x`): the XOR over `j` of their slice `x` (bits `x bits ..
/// (x + 1) bits`). Each entry reads its own slice, so for any entry other than the
/// receiver's choice `c`, the slice `x` of a hash the receiver does not know (a key with
/// a bit other than `c`'s) enters that entry's pad and no other: the pads other than
/// `c`'s are independent and uniform, which the `N log N` tweaked hashes of the general
/// case give for wider tables (`2 log N` hashes here, one circular correlation robust
/// hash per key, as the random OTs).
#[inline]
fn sliced_pad(hash: impl Fn(usize) -> Block, ln: usize, x: usize, bits: u32) -> u64 {
    let sh = x as u32 * bits;
    (0..ln).fold(0u64, |a, j| a ^ (hash(j) >> sh) as u64) & mask(bits)
}

/// Every entry's sliced pad ([`sliced_pad`]) of one instance: `keys[2 j + b]` is the hash
/// of OT `j`'s key `b`; `combo[x]` becomes the XOR over `j` of the hashes entry `x`
/// selects, each from `x` with its lowest set bit cleared (`N` XORs, not `N log N`), and
/// `row[x]` its slice `x`. `combo` and `row` hold `N` entries.
fn sliced_pads_all(keys: &[Block], bits: u32, combo: &mut [Block], row: &mut [u64]) {
    combo[0] = keys.iter().step_by(2).fold(0u128, |a, &k| a ^ k);
    for x in 1..combo.len() {
        let j = x.trailing_zeros() as usize;
        combo[x] = combo[x & (x - 1)] ^ keys[2 * j] ^ keys[2 * j + 1];
    }
    for (x, (r, &h)) in row.iter_mut().zip(combo.iter()).enumerate() {
        *r = (h >> (x as u32 * bits)) as u64 & mask(bits);
    }
}

impl OtReceiver {
    /// Sets up (128 base OTs as their sender; the peer runs [`OtSender::setup`]).
    pub fn setup<C: Channel + ?Sized, R: RngCore + CryptoRng + ?Sized>(
        ch: &mut C,
        rng: &mut R,
    ) -> Result<Self> {
        let keys = BaseOtSender::send(ch, KAPPA, rng)?;
        Ok(Self {
            prgs: keys
                .into_iter()
                .map(|(k0, k1)| (AesPrg::new(k0), AesPrg::new(k1)))
                .collect(),
            hash: FixedKeyAes::default(),
            tweak: 0,
            silent: None,
        })
    }

    /// Sets up silent OT (the peer runs [`OtSender::setup_silent`]).
    pub fn setup_silent<C: Channel + ?Sized, R: RngCore + CryptoRng + ?Sized>(
        ch: &mut C,
        rng: &mut R,
    ) -> Result<Self> {
        let mut r = Self::setup(ch, rng)?;
        let f = FerretReceiver::bootstrap(ch, &mut r, rng)?;
        r.silent = Some(f);
        Ok(r)
    }

    /// Whether OTs come from silent OT.
    pub fn is_silent(&self) -> bool {
        self.silent.is_some()
    }

    /// Makes `n` OTs ready ahead of use (see [`OtSender::ensure`]). Receives only.
    pub fn ensure<C: Channel + ?Sized>(&mut self, ch: &mut C, n: usize) -> Result<()> {
        match &mut self.silent {
            Some(f) => f.ensure(ch, n),
            None => Ok(()),
        }
    }

    /// One refill towards [`OtReceiver::ensure`]`(n)`: whether it refilled (see
    /// [`OtSender::ensure_step`]).
    pub fn ensure_step<C: Channel + ?Sized>(&mut self, ch: &mut C, n: usize) -> Result<bool> {
        match &mut self.silent {
            Some(f) => f.ensure_step(ch, n),
            None => Ok(false),
        }
    }

    /// Correlated OTs with choice bits `choices` (`0`/`1`): returns
    /// `t_i = q_i xor c_i * delta`.
    pub fn cot<C: Channel + ?Sized>(&mut self, ch: &mut C, choices: &[u8]) -> Result<Vec<Block>> {
        let n = choices.len();
        if let Some(f) = &mut self.silent {
            let (r, t) = f.take(ch, n)?;
            if n > 0 {
                let d: Vec<u8> = choices
                    .iter()
                    .zip(&r)
                    .map(|(&c, &ri)| (c ^ ri) & 1)
                    .collect();
                ch.send(&pack_bits(&d))?;
                ch.flush()?;
            }
            return Ok(t);
        }
        let mut rows = vec![0u128; n];
        self.cot_with(ch, choices, |off, chunk| {
            let m = chunk.len().min(n - off);
            rows[off..off + m].copy_from_slice(&chunk[..m]);
        })?;
        Ok(rows)
    }

    /// The engine of [`Self::cot`], handing each transposed chunk to `f` (as the sender's).
    fn cot_with<C: Channel + ?Sized, F: FnMut(usize, &mut [Block])>(
        &mut self,
        ch: &mut C,
        choices: &[u8],
        mut f: F,
    ) -> Result<()> {
        let n = choices.len();
        if n == 0 {
            return Ok(());
        }
        let nb = n.div_ceil(128);
        let r = pack_choices(choices, nb);
        let mut rows = vec![0u128; CHUNK_BLOCKS * 128];
        let mut t = vec![0u128; KAPPA * CHUNK_BLOCKS];
        let mut g1 = vec![0u128; CHUNK_BLOCKS];
        for cb in (0..nb).step_by(CHUNK_BLOCKS) {
            let w = CHUNK_BLOCKS.min(nb - cb);
            let mut u = Vec::with_capacity(KAPPA * w * 16);
            for j in 0..KAPPA {
                let col = &mut t[j * w..(j + 1) * w];
                let (p0, p1) = &mut self.prgs[j];
                p0.fill(col);
                p1.fill(&mut g1[..w]);
                for b in 0..w {
                    u.extend_from_slice(&(col[b] ^ g1[b] ^ r[cb + b]).to_le_bytes());
                }
            }
            ch.send(&u)?;
            transpose_chunk(&t, w, &mut rows[..w * 128]);
            f(cb * 128, &mut rows[..w * 128]);
        }
        ch.flush()
    }

    /// `n` random OTs with random choices: returns the choices and `H(t_i)`.
    pub fn random_ot<C: Channel + ?Sized, R: RngCore + ?Sized>(
        &mut self,
        ch: &mut C,
        n: usize,
        rng: &mut R,
    ) -> Result<(Vec<u8>, Vec<Block>)> {
        if let Some(f) = &mut self.silent {
            let (choices, mut t) = f.take(ch, n)?;
            self.hash.ccr(&mut t);
            return Ok((choices, t));
        }
        let mut choices = vec![0u8; n];
        rng.fill_bytes(&mut choices);
        choices.iter_mut().for_each(|c| *c &= 1);
        let mut out: Vec<Block> = Vec::with_capacity(n);
        let hash = self.hash.clone();
        self.cot_with(ch, &choices, |off, chunk| {
            let m = chunk.len().min(n - off);
            out.extend_from_slice(&chunk[..m]);
            hash.ccr(&mut out[off..off + m]);
        })?;
        Ok((choices, out))
    }

    /// Chosen-message OT: returns `msgs[i][c_i]` of the sender.
    pub fn receive_chosen<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        choices: &[u8],
    ) -> Result<Vec<Block>> {
        let mut t = self.cot(ch, choices)?;
        self.hash.ccr(&mut t);
        let y = recv_exact(ch, "chosen OT messages", choices.len() * 32)?;
        let y = bytes_blocks(&y);
        Ok(choices
            .iter()
            .enumerate()
            .map(|(i, &c)| t[i] ^ y[2 * i + (c & 1) as usize])
            .collect())
    }

    /// The receiver of [`OtSender::send_correlated`]: returns `x_i + c_i * delta_i`.
    pub fn receive_correlated<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        ring: Ring,
        choices: &[u8],
        w: usize,
    ) -> Result<Vec<u64>> {
        let pending = self.start_receive_correlated(ch, ring, choices, w)?;
        Self::finish_receive_correlated(ch, pending)
    }

    /// First half of [`Self::receive_correlated`] (sends the extension matrix), so that
    /// both parties can play both roles at once without waiting on each other.
    pub fn start_receive_correlated<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        ring: Ring,
        choices: &[u8],
        w: usize,
    ) -> Result<PendingCorrelated> {
        if w == 0 {
            return Err(Error::InvalidInput {
                what: "correlation width",
                expected: 1,
                found: 0,
            });
        }
        let mut t = self.cot(ch, choices)?;
        self.hash.ccr(&mut t);
        let mt = expand(&self.hash, &t, w, ring);
        Ok(PendingCorrelated {
            ring,
            w,
            choices: choices.iter().map(|c| c & 1).collect(),
            mt,
        })
    }

    /// Second half of [`Self::receive_correlated`] (receives the corrections).
    pub fn finish_receive_correlated<C: Channel + ?Sized>(
        ch: &mut C,
        p: PendingCorrelated,
    ) -> Result<Vec<u64>> {
        let (ring, w) = (p.ring, p.w);
        let n = p.choices.len();
        let m = ch.recv()?;
        let y = decode_ring(ring, &m, n * w, "correlated OT corrections")?;
        Ok((0..n * w)
            .map(|k| {
                if p.choices[k / w] == 1 {
                    ring.add(p.mt[k], y[k])
                } else {
                    p.mt[k]
                }
            })
            .collect())
    }

    /// The receiver of [`OtSender::send_one_of_n`]: `choices[i] < 2^log_n`.
    pub fn receive_one_of_n<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        choices: &[u16],
        log_n: u32,
        bits: u32,
    ) -> Result<Vec<u64>> {
        let pending = self.start_one_of_n(ch, choices, log_n, bits, false)?;
        Self::finish_receive_one_of_n(ch, pending)
    }

    /// The receiver of [`OtSender::send_one_of_n_shares`]: its share `table[i * N + c_i]
    /// xor s_i` of each instance (`choices[i] = c_i < 2^log_n`).
    pub fn receive_one_of_n_shares<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        choices: &[u16],
        log_n: u32,
        bits: u32,
    ) -> Result<Vec<u64>> {
        let pending = self.start_receive_one_of_n_shares(ch, choices, log_n, bits)?;
        Self::finish_receive_one_of_n(ch, pending)
    }

    /// First half of [`Self::receive_one_of_n_shares`]: sends the choices' corrections
    /// and hashes the keys, so that both parties can be sender and receiver of 1-of-N
    /// OTs at once (each starts its receive, sends, then finishes its receive).
    pub fn start_receive_one_of_n_shares<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        choices: &[u16],
        log_n: u32,
        bits: u32,
    ) -> Result<PendingOneOfN> {
        self.start_one_of_n(ch, choices, log_n, bits, true)
    }

    fn start_one_of_n<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        choices: &[u16],
        log_n: u32,
        bits: u32,
        shares: bool,
    ) -> Result<PendingOneOfN> {
        // Clamped so that a hostile `log_n` is refused below, not shifted out of range.
        let nn = 1usize << log_n.min(8);
        if !(1..=8).contains(&log_n) || !(1..=64).contains(&bits) {
            return Err(Error::InvalidInput {
                what: "1-of-N OT shape (log N in 1..=8)",
                expected: 8,
                found: log_n as u64,
            });
        }
        if let Some(&c) = choices.iter().find(|&&c| c as usize >= nn) {
            return Err(Error::InvalidInput {
                what: "1-of-N choice out of range",
                expected: nn as u64 - 1,
                found: c as u64,
            });
        }
        let inst = choices.len();
        let ln = log_n as usize;
        let mut bits_vec = Vec::with_capacity(inst * ln);
        for &c in choices {
            for j in 0..ln {
                bits_vec.push(((c >> j) & 1) as u8);
            }
        }
        let mut t = self.cot(ch, &bits_vec)?;
        bits_vec.zeroize();
        let base_tweak = self.tweak;
        self.tweak += (inst * ln) as u128;
        let mut pads = Vec::with_capacity(inst);
        // In chunks of instances, so that the buffers stay small and in cache.
        let per = ONE_OF_N_CHUNK * ln;
        let sliced = sliced_pads(log_n, bits);
        let mut tw = vec![0u128; if sliced { 0 } else { per }];
        let mut tccr = vec![0u128; if sliced { 0 } else { per }];
        for (c, tc) in t.chunks_mut(per).enumerate() {
            let i0 = c * ONE_OF_N_CHUNK;
            let chosen = &choices[i0..i0 + tc.len() / ln];
            let keys: &[Block] = if sliced {
                self.hash.ccr(tc);
                tc
            } else {
                self.hash.permute(tc);
                for (ic, &c) in chosen.iter().enumerate() {
                    for j in 0..ln {
                        let ot = ((i0 + ic) * ln + j) as u128;
                        tw[ic * ln + j] = ONE_OF_N_DOMAIN | ((base_tweak + ot) << 8) | c as u128;
                    }
                }
                let out = &mut tccr[..tc.len()];
                self.hash.tccr_with_pi(tc, &tw[..tc.len()], out);
                out
            };
            for (ic, &c) in chosen.iter().enumerate() {
                let k = &keys[ic * ln..(ic + 1) * ln];
                pads.push(if sliced {
                    sliced_pad(|j| k[j], ln, c as usize, bits)
                } else {
                    k.iter().fold(0u64, |a, &p| a ^ p as u64) & mask(bits)
                });
            }
        }
        t.zeroize();
        tccr.zeroize();
        Ok(PendingOneOfN {
            bits,
            per_inst: nn - usize::from(shares),
            first: usize::from(shares),
            choices: choices.to_vec(),
            pads,
        })
    }

    /// Second half of [`Self::receive_one_of_n_shares`] (or of a plain 1-of-N receive):
    /// receives the messages and unmasks the chosen ones.
    pub fn finish_receive_one_of_n<C: Channel + ?Sized>(
        ch: &mut C,
        p: PendingOneOfN,
    ) -> Result<Vec<u64>> {
        let inst = p.choices.len();
        let m = recv_exact(
            ch,
            "1-of-N OT messages",
            (inst * p.per_inst * p.bits as usize).div_ceil(8),
        )?;
        let mk = mask(p.bits);
        Ok(p.choices
            .iter()
            .zip(&p.pads)
            .enumerate()
            .map(|(i, (&c, &pad))| {
                let c = c as usize;
                let v = if c < p.first {
                    0
                } else {
                    read_bits(&m, (i * p.per_inst + c - p.first) * p.bits as usize, p.bits)
                };
                (v ^ pad) & mk
            })
            .collect())
    }
}

/// A 1-of-N OT receive in progress (see [`OtReceiver::start_receive_one_of_n_shares`]):
/// the choices and their pads (zeroized on drop).
#[derive(Debug)]
pub struct PendingOneOfN {
    bits: u32,
    per_inst: usize,
    first: usize,
    choices: Vec<u16>,
    pads: Vec<u64>,
}

impl Drop for PendingOneOfN {
    fn drop(&mut self) {
        self.choices.zeroize();
        self.pads.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sliced pads: with the receiver's choice `c = 0` and its keys' hashes fixed, the
    /// pads of the other entries change with each hash it does not know, and no XOR of
    /// them is fixed (slicing every entry's pad from the same bits would make `pad(1) ^
    /// pad(2) ^ pad(3)` a function of the known hashes alone, for `N = 4`).
    #[test]
    fn sliced_pads_of_unchosen_entries_are_independent() {
        let (ln, bits) = (2usize, 2u32);
        assert!(sliced_pads(ln as u32, bits) && !sliced_pads(5, 13));
        let known = [
            0x1234_5678_9abc_def0_u128 * 0x9e37_79b9,
            0xfeed_beef_u128 << 64 | 77,
        ];
        let mut prg = AesPrg::new(99);
        let mut seen_xor = std::collections::HashSet::new();
        let mut seen = [(); 3].map(|_| std::collections::HashSet::new());
        for _ in 0..64 {
            let mut unknown = [0u128; 2];
            prg.fill(&mut unknown);
            let h = |j: usize, b: usize| if b == 0 { known[j] } else { unknown[j] };
            let pads: Vec<u64> = (0..4)
                .map(|x| sliced_pad(|j| h(j, (x >> j) & 1), ln, x, bits))
                .collect();
            assert_eq!(pads[0], sliced_pad(|j| known[j], ln, 0, bits));
            // The sender's pads, all entries at once, are the same.
            let keys = [known[0], unknown[0], known[1], unknown[1]];
            let (mut combo, mut row) = ([0u128; 4], [0u64; 4]);
            sliced_pads_all(&keys, bits, &mut combo, &mut row);
            assert_eq!(row.to_vec(), pads);
            for x in 1..4 {
                seen[x - 1].insert(pads[x]);
            }
            seen_xor.insert(pads[1] ^ pads[2] ^ pads[3]);
        }
        // 64 draws of a uniform 2-bit value take all 4 values except with probability
        // below 2^-24.
        assert!(seen.iter().all(|s| s.len() == 4), "{seen:?}");
        assert_eq!(seen_xor.len(), 4);
    }
}
