//! Silent correlated OT: Ferret (Yang, Weng, Lan, Zhang, Wang, CCS 2020), semi-honest,
//! over primal LPN with regular noise.
//!
//! One iteration with parameters `(t, k, h)` turns `k + t h` correlated OTs into
//! `n = t 2^h` new ones:
//!
//! * **SPCOT** (one per tree), by the half-tree of Guo, Yang, Wang, Zhang, Xie, Liu and
//!   Zhao (Eurocrypt 2023): the sender's first level is a random `s` and `s xor delta`,
//!   and every node `x` has the children `H(x)` and `x xor H(x)` (`H` the circular
//!   correlation robust hash `pi(sigma(x)) xor sigma(x)`, one fixed-key AES call per node),
//!   so that every level sums to `delta` and the XOR `K_1` of a level's right children is
//!   that of its left ones, `K_0`, xor `delta`. The receiver learns every leaf but one, at
//!   a position `alpha` it does not choose: per level, one correlated OT with its random
//!   choice bit `c` gives it `K_c = (K_0 xor q) xor (q xor c delta)` from the sender's one
//!   block `K_0 xor q`, and `alpha`'s bit is `1 - c`. The leaves sum to `delta`, so the
//!   XOR of the others is leaf `alpha` xor `delta`. Per tree the sender sends `h` blocks
//!   (the GGM tree of the Ferret paper: `2 h + 1` blocks and two AES calls per node) and
//!   the receiver nothing.
//! * **LPN**: output `i` is the tree leaf `i` xor the sum of `d = 10` entries of the `k`
//!   secret correlated OTs, at positions fixed by a public function of `i` (fixed-key AES).
//!   The receiver's choice bits are the noise (one 1 per tree, regular) plus the same sum
//!   of its `k` secret choice bits: LPN with regular noise hides them.
//!
//! Parameters (`LpnParams`): emp-ot's sets, chosen for 128-bit security against the
//! published attacks on regular LPN (Gauss, ISD, BJMM, the hybrid attack binding):
//! [`MAIN`] is emp-ot's `ferret_b11` (`n = 10,180,608`, `t = 4971` trees of `2^11`, `k =
//! 124,000`) with `k` rounded up to `2^17` (a larger secret, the same `n` and `t`: no
//! easier), so that the LPN secret (2 MB) stays in a core's L2 cache, where `ferret_b13`'s
//! (`t = 1280` trees of `2^13`, `k = 452,000`, 8 MB with `k = 2^19`) made every LPN step
//! wait on ten loads from L3: about 20% less time per epoch of logistic regression and
//! 10% per ReLU for 0.06 more bytes per OT (the trees' messages). [`BOOT`] `t = 850, k =
//! 2^16, h = 10` (870,400 outputs), bootstrapped from `74,036` IKNP OTs. Each iteration
//! keeps its first `k + t h` outputs for the next one. Trees are expanded in chunks, on
//! demand, so memory stays near `2 (k + t h)` blocks per direction after the bootstrap
//! iteration (about 6 MB, 14 MB more while it runs), not `n` blocks.
//!
//! Correlation (as IKNP's): the receiver's block is the sender's xor `choice * delta`.
//! `delta` has its lowest bit set and every sender block its lowest bit clear, so a
//! receiver block's lowest bit is its choice bit: the LPN sums carry the choice bits for
//! free (as in emp-ot).

use rand::{CryptoRng, RngCore};
use zeroize::Zeroize;

use super::aes::{AesPrg, Block, FixedKeyAes};
use super::iknp::{OtReceiver as IknpReceiver, OtSender as IknpSender};
use crate::error::{Error, Result};
use crate::net::{recv_exact, Channel};

/// Parameters of one Ferret iteration: `trees` half-trees of depth `depth`, an LPN secret of
/// `2^log_k` correlated OTs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LpnParams {
    /// Number of trees (the noise weight `t`).
    pub trees: usize,
    /// `log2` of the LPN dimension `k`.
    pub log_k: u32,
    /// Depth of each tree (`2^depth` outputs per tree).
    pub depth: u32,
}

impl LpnParams {
    /// Outputs per iteration, `t 2^h`.
    pub const fn n(&self) -> usize {
        self.trees << self.depth
    }

    /// The LPN dimension `k`.
    pub const fn k(&self) -> usize {
        1 << self.log_k
    }

    /// Correlated OTs an iteration consumes: `k + t h`.
    pub const fn base(&self) -> usize {
        self.k() + self.trees * self.depth as usize
    }
}

/// The parameters of every iteration after the first.
pub const MAIN: LpnParams = LpnParams {
    trees: 4971,
    log_k: 17,
    depth: 11,
};

/// The parameters of the first iteration (from IKNP OTs); its outputs cover [`MAIN`]'s base.
pub const BOOT: LpnParams = LpnParams {
    trees: 850,
    log_k: 16,
    depth: 10,
};

/// Row weight of the LPN matrix.
pub const LPN_D: usize = 10;

/// Position `j` of an output is field `LPN_FIELD[j]` (of `log_k` bits, lowest first) of
/// 64-bit word `LPN_WORD[j]` of its two blocks (lowest first): three fields in each of the
/// first two words, two in the others, none across a word.
const LPN_WORD: [usize; LPN_D] = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3];
const LPN_FIELD: [u32; LPN_D] = [0, 1, 2, 0, 1, 2, 0, 1, 0, 1];

/// Outputs whose LPN positions are computed at once (AES on `2 LPN_OUTS` blocks) before
/// their loads from the secret.
const LPN_OUTS: usize = 32;

/// Trees expanded per refill once the next iteration's base is kept (64 trees of 2^11:
/// 131,072 OTs, 2 MB, per refill).
const CHUNK_TREES: usize = 64;

const TREE_KEY: [u8; 16] = *b"cipherml-ght-h/1";
const LPN_KEY: [u8; 16] = *b"cipherml-lpn-a/1";

/// The public primitives of an iteration: the half-tree's hash and the LPN matrix.
#[derive(Debug, Clone)]
struct Prims {
    tree: FixedKeyAes,
    lpn: FixedKeyAes,
}

impl Prims {
    fn new() -> Self {
        Self {
            tree: FixedKeyAes::new(TREE_KEY),
            lpn: FixedKeyAes::new(LPN_KEY),
        }
    }

    /// One half-tree level: the children of `nodes[..w]` into `nodes[..2w]` (child `2i` is
    /// `H(node i)`, child `2i + 1` is `node i xor H(node i)`); returns the XOR of the left
    /// and of the right children. Works in place, from the last parents down, through small
    /// buffers that stay in L1 (children `2i, 2i + 1` never overwrite a parent `>= i` that
    /// is still to be read).
    fn level(&self, nodes: &mut [Block], w: usize) -> [Block; 2] {
        const B: usize = 64;
        let mut p = [0u128; B];
        let mut a = [0u128; B];
        let (mut k0, mut k1) = (0u128, 0u128);
        let mut end = w;
        while end > 0 {
            let lo = end.saturating_sub(B);
            let n = end - lo;
            p[..n].copy_from_slice(&nodes[lo..end]);
            a[..n].copy_from_slice(&p[..n]);
            self.tree.ccr(&mut a[..n]);
            let kids = &mut nodes[2 * lo..2 * end];
            for ((kid, &pi), &l) in kids.chunks_exact_mut(2).zip(&p).zip(&a) {
                let r = pi ^ l;
                kid[0] = l;
                kid[1] = r;
                k0 ^= l;
                k1 ^= r;
            }
            end = lo;
        }
        let used = w.min(B);
        p[..used].zeroize();
        a[..used].zeroize();
        [k0, k1]
    }

    /// Writes the `LPN_D` positions (below `2^log_k`) of outputs `start..start + count`
    /// into `pos[..count]` (`count <= LPN_OUTS`): output `i`'s positions are `log_k`-bit
    /// fields of the 64-bit words of `pi(2 i)` then `pi(2 i + 1)` ([`LPN_WORD`],
    /// [`LPN_FIELD`]: none across a word, so each is one shift and one mask). Always
    /// inlined, so that a constant `log_k` turns the shifts into constants.
    #[inline(always)]
    fn positions_into(
        &self,
        log_k: u32,
        start: usize,
        count: usize,
        pos: &mut [[u32; LPN_D]; LPN_OUTS],
    ) {
        let mut blocks = [0u128; 2 * LPN_OUTS];
        let blocks = &mut blocks[..2 * count];
        for (j, b) in blocks.iter_mut().enumerate() {
            *b = (2 * start + j) as u128;
        }
        self.lpn.permute(blocks);
        let m = (1u64 << log_k) - 1;
        for (p, pair) in pos.iter_mut().zip(blocks.chunks_exact(2)) {
            let words = [
                pair[0] as u64,
                (pair[0] >> 64) as u64,
                pair[1] as u64,
                (pair[1] >> 64) as u64,
            ];
            for (j, q) in p.iter_mut().enumerate() {
                let (w, f) = (LPN_WORD[j], LPN_FIELD[j]);
                *q = ((words[w] >> (f * log_k)) & m) as u32;
            }
        }
    }

    /// XORs into every output `first + i` (`out[i]`) its `LPN_D` entries of `x`, in
    /// groups of [`LPN_OUTS`] outputs: the group's positions (AES) then its loads.
    #[inline(always)]
    fn add_lpn(&self, log_k: u32, x: &[Block], first: usize, out: &mut [Block]) {
        let mut pos = [[0u32; LPN_D]; LPN_OUTS];
        // A slice of exactly `2^log_k` entries, indexed under its mask: no bounds checks.
        let x = &x[..1 << log_k];
        let m = (1usize << log_k) - 1;
        for (g, group) in out.chunks_mut(LPN_OUTS).enumerate() {
            self.positions_into(log_k, first + g * LPN_OUTS, group.len(), &mut pos);
            for (o, idx) in group.iter_mut().zip(&pos) {
                let mut acc = *o;
                for &p in idx {
                    acc ^= x[p as usize & m];
                }
                *o = acc;
            }
        }
    }

    /// The LPN positions of outputs `start..start + count` (`LPN_D` each, below `2^log_k`).
    #[cfg(test)]
    fn positions(&self, log_k: u32, start: usize, count: usize, out: &mut Vec<u32>) {
        out.clear();
        let mut pos = [[0u32; LPN_D]; LPN_OUTS];
        for s in (0..count).step_by(LPN_OUTS) {
            let n = LPN_OUTS.min(count - s);
            self.positions_into(log_k, start + s, n, &mut pos);
            out.extend(pos[..n].iter().flatten());
        }
    }
}

/// How many trees the next refill expands: enough to complete the next iteration's base,
/// plus a chunk for the pool, within the iteration (the bootstrap iteration at once).
fn chunk_trees(params: LpnParams, next_tree: usize, reserved: usize) -> usize {
    if params == BOOT {
        return params.trees - next_tree;
    }
    let missing = MAIN.base().saturating_sub(reserved);
    let for_reserve = missing.div_ceil(1 << params.depth);
    (for_reserve + CHUNK_TREES).min(params.trees - next_tree)
}

/// The state both roles keep: the iteration's parameters, LPN secret and tree OTs, the
/// next iteration's base as it fills, and the pool of ready OTs (sender blocks, or
/// receiver blocks whose lowest bit is the choice) in `pool[pos..end]`. The pool's buffer
/// is reused from chunk to chunk as it is (not cleared); it only grows when a chunk does
/// not fit.
#[derive(Debug)]
struct Stream {
    params: LpnParams,
    x: Vec<Block>,
    ggm: Vec<Block>,
    next_tree: usize,
    reserve: Vec<Block>,
    pool: Vec<Block>,
    pos: usize,
    end: usize,
    prims: Prims,
}

/// The LPN step of a chunk's trees: output `first + i` (tree leaf `i` of the chunk) gets
/// its `LPN_D` entries of the secret `x` added, one tree at a time. The receiver adds them
/// right after it expands each tree (its leaves still in L1, the secret alone in L2); the
/// sender after it has sent the chunk's messages, so that its LPN step overlaps the
/// receiver's work (fused there too, it delays the receiver: logistic regression 10%
/// slower).
struct Lpn<'a> {
    prims: &'a Prims,
    x: &'a [Block],
    log_k: u32,
    first: usize,
}

impl Lpn<'_> {
    /// Adds the LPN sums to the leaves of the chunk's tree `tree`.
    fn add(&self, tree: usize, leaves: &mut [Block]) {
        let first = self.first + tree * leaves.len();
        // Constant `log_k`s for the parameter sets (the calls are inlined).
        match self.log_k {
            17 => self.prims.add_lpn(17, self.x, first, leaves),
            16 => self.prims.add_lpn(16, self.x, first, leaves),
            log_k => self.prims.add_lpn(log_k, self.x, first, leaves),
        }
    }
}

/// A chunk of trees being expanded: they fill `pool[start..end]`.
struct Chunk {
    params: LpnParams,
    trees: usize,
    leaves: usize,
    start: usize,
}

impl Stream {
    /// The bootstrap iteration's state, from `BOOT.base()` normalized base OTs.
    fn new(base: &[Block]) -> Self {
        Self {
            params: BOOT,
            x: base[..BOOT.k()].to_vec(),
            ggm: base[BOOT.k()..].to_vec(),
            next_tree: 0,
            reserve: Vec::with_capacity(MAIN.base()),
            pool: Vec::new(),
            pos: 0,
            end: 0,
            prims: Prims::new(),
        }
    }

    fn available(&self) -> usize {
        self.end - self.pos
    }

    fn take(&mut self, n: usize) -> Vec<Block> {
        self.take_slice(n).to_vec()
    }

    /// The next `n` ready OTs, borrowed from the pool (valid until the next refill).
    fn take_slice(&mut self, n: usize) -> &[Block] {
        assert!(
            n <= self.available(),
            "silent OT: taking more than is ready"
        );
        self.pos += n;
        &self.pool[self.pos - n..self.pos]
    }

    /// The parameters and tree count of the next chunk.
    fn upcoming(&self) -> (LpnParams, usize) {
        if self.next_tree == self.params.trees {
            (MAIN, chunk_trees(MAIN, 0, 0))
        } else {
            let p = self.params;
            (p, chunk_trees(p, self.next_tree, self.reserve.len()))
        }
    }

    /// Starts the next chunk (a new iteration from the kept base if this one is done):
    /// drops what was taken and makes room at the end of the pool.
    fn begin(&mut self) -> Chunk {
        if self.next_tree == self.params.trees {
            let k = MAIN.k();
            self.x.zeroize();
            self.ggm.zeroize();
            self.x.extend_from_slice(&self.reserve[..k]);
            self.ggm.extend_from_slice(&self.reserve[k..]);
            self.reserve.zeroize();
            self.params = MAIN;
            self.next_tree = 0;
        }
        let (params, trees) = self.upcoming();
        let leaves = 1usize << params.depth;
        // Drop what was taken: the rest moves to the front (nothing when all was taken).
        if self.pos > 0 {
            self.pool.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        let start = self.end;
        self.end = start + trees * leaves;
        if self.pool.len() < self.end {
            self.pool.resize(self.end, 0);
        }
        Chunk {
            params,
            trees,
            leaves,
            start,
        }
    }

    /// The chunk's tree OTs (`depth` per tree), its leaves in the pool, and the tools to
    /// expand them and add their LPN sums, borrowed at once.
    fn chunk_parts(&mut self, c: &Chunk) -> (&[Block], &mut [Block], Lpn<'_>) {
        let h = c.params.depth as usize;
        let ots = &self.ggm[self.next_tree * h..(self.next_tree + c.trees) * h];
        let lpn = Lpn {
            prims: &self.prims,
            x: &self.x,
            log_k: c.params.log_k,
            first: self.next_tree * c.leaves,
        };
        (ots, &mut self.pool[c.start..self.end], lpn)
    }

    /// Ends a chunk whose outputs are in the pool (each tree's leaves with their LPN sums,
    /// [`Lpn::add`]): moves the first ones to the next iteration's base until it holds
    /// [`MAIN`]`.base()` OTs.
    fn finish(&mut self, c: &Chunk) {
        self.next_tree += c.trees;
        let keep = MAIN
            .base()
            .saturating_sub(self.reserve.len())
            .min(self.end - c.start);
        if keep > 0 {
            let kept = c.start..c.start + keep;
            self.reserve.extend_from_slice(&self.pool[kept.clone()]);
            self.pool[kept.clone()].zeroize();
            self.pool.copy_within(kept.end..self.end, kept.start);
            self.end -= keep;
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.x.zeroize();
        self.ggm.zeroize();
        self.reserve.zeroize();
        self.pool.zeroize();
    }
}

/// The sender (holder of `delta`) of silent correlated OTs.
#[derive(Debug)]
pub struct FerretSender {
    delta: Block,
    seeds: AesPrg,
    st: Stream,
}

/// The receiver of silent correlated OTs (random choice bits).
#[derive(Debug)]
pub struct FerretReceiver {
    st: Stream,
}

impl FerretSender {
    /// Bootstraps from IKNP (the peer runs [`FerretReceiver::bootstrap`]) and runs the
    /// first iteration: `delta` is the IKNP sender's, which must have its lowest bit set.
    pub fn bootstrap<C: Channel + ?Sized, R: RngCore + CryptoRng + ?Sized>(
        ch: &mut C,
        iknp: &mut IknpSender,
        rng: &mut R,
    ) -> Result<Self> {
        if iknp.delta() & 1 == 0 {
            return Err(Error::InvalidInput {
                what: "silent OT: delta's lowest bit",
                expected: 1,
                found: 0,
            });
        }
        let mut base = iknp.cot(ch, BOOT.base())?;
        for q in base.iter_mut() {
            *q &= !1;
        }
        let mut seed = [0u8; 16];
        rng.fill_bytes(&mut seed);
        let mut s = Self {
            delta: iknp.delta(),
            seeds: AesPrg::new(u128::from_le_bytes(seed)),
            st: Stream::new(&base),
        };
        seed.zeroize();
        base.zeroize();
        s.refill(ch)?;
        Ok(s)
    }

    /// The global correlation.
    pub fn delta(&self) -> Block {
        self.delta
    }

    /// OTs ready without communication.
    pub fn available(&self) -> usize {
        self.st.available()
    }

    /// Refills until `n` OTs are ready (the receiver calls [`FerretReceiver::ensure`] at
    /// the same point with the same `n`). Only sends.
    pub fn ensure<C: Channel + ?Sized>(&mut self, ch: &mut C, n: usize) -> Result<()> {
        while self.ensure_step(ch, n)? {}
        Ok(())
    }

    /// One refill if fewer than `n` OTs are ready; whether it refilled (the receiver's
    /// [`FerretReceiver::ensure_step`] with the same `n` answers the same).
    pub fn ensure_step<C: Channel + ?Sized>(&mut self, ch: &mut C, n: usize) -> Result<bool> {
        if self.available() >= n {
            return Ok(false);
        }
        self.refill(ch)?;
        Ok(true)
    }

    /// The next `n` random correlated OTs: the sender's blocks `q_i` (the receiver gets
    /// `q_i xor r_i delta` with random `r_i`).
    pub fn take<C: Channel + ?Sized>(&mut self, ch: &mut C, n: usize) -> Result<Vec<Block>> {
        self.ensure(ch, n)?;
        Ok(self.st.take(n))
    }

    /// As [`FerretSender::take`], the blocks borrowed from the pool instead of copied
    /// into a new vector.
    pub fn take_slice<C: Channel + ?Sized>(&mut self, ch: &mut C, n: usize) -> Result<&[Block]> {
        self.ensure(ch, n)?;
        Ok(self.st.take_slice(n))
    }

    /// Expands the next chunk of trees: sends their messages (`K_0 xor q` per level),
    /// appends their outputs.
    fn refill<C: Channel + ?Sized>(&mut self, ch: &mut C) -> Result<()> {
        let c = self.st.begin();
        let h = c.params.depth as usize;
        let mut msg = Vec::with_capacity(c.trees * h * 16);
        let delta = self.delta;
        let (ots, leaves, lpn) = self.st.chunk_parts(&c);
        let prims = lpn.prims;
        let trees = leaves.chunks_exact_mut(c.leaves).zip(ots.chunks_exact(h));
        for (tree, q) in trees {
            // The first level: s and s xor delta (K_0 = s).
            self.seeds.fill(&mut tree[..1]);
            tree[1] = tree[0] ^ delta;
            msg.extend_from_slice(&(tree[0] ^ q[0]).to_le_bytes());
            for (l, &ql) in q.iter().enumerate().skip(1) {
                let k = prims.level(tree, 1 << l);
                msg.extend_from_slice(&(k[0] ^ ql).to_le_bytes());
            }
            for leaf in tree.iter_mut() {
                *leaf &= !1;
            }
        }
        // The receiver waits for these messages: they go before our LPN step, which then
        // overlaps the receiver's work.
        ch.send(&msg)?;
        ch.flush()?;
        for (i, tree) in leaves.chunks_exact_mut(c.leaves).enumerate() {
            lpn.add(i, tree);
        }
        self.st.finish(&c);
        Ok(())
    }
}

impl Drop for FerretSender {
    fn drop(&mut self) {
        self.delta.zeroize();
    }
}

fn block_at(m: &[u8], i: usize) -> Block {
    let mut a = [0u8; 16];
    a.copy_from_slice(&m[16 * i..16 * i + 16]);
    u128::from_le_bytes(a)
}

impl FerretReceiver {
    /// Bootstraps from IKNP with random choices (the peer runs
    /// [`FerretSender::bootstrap`]) and runs the first iteration.
    pub fn bootstrap<C: Channel + ?Sized, R: RngCore + CryptoRng + ?Sized>(
        ch: &mut C,
        iknp: &mut IknpReceiver,
        rng: &mut R,
    ) -> Result<Self> {
        let mut choices = vec![0u8; BOOT.base()];
        rng.fill_bytes(&mut choices);
        choices.iter_mut().for_each(|c| *c &= 1);
        let mut base = iknp.cot(ch, &choices)?;
        // The sender clears its lowest bits: ours become the choice bits.
        for (t, &c) in base.iter_mut().zip(&choices) {
            *t = (*t & !1) | c as u128;
        }
        let mut r = Self {
            st: Stream::new(&base),
        };
        choices.zeroize();
        base.zeroize();
        r.refill(ch)?;
        Ok(r)
    }

    /// OTs ready without communication.
    pub fn available(&self) -> usize {
        self.st.available()
    }

    /// Refills until `n` OTs are ready (see [`FerretSender::ensure`]). Only receives.
    pub fn ensure<C: Channel + ?Sized>(&mut self, ch: &mut C, n: usize) -> Result<()> {
        while self.ensure_step(ch, n)? {}
        Ok(())
    }

    /// One refill if fewer than `n` OTs are ready; whether it refilled (see
    /// [`FerretSender::ensure_step`]).
    pub fn ensure_step<C: Channel + ?Sized>(&mut self, ch: &mut C, n: usize) -> Result<bool> {
        if self.available() >= n {
            return Ok(false);
        }
        self.refill(ch)?;
        Ok(true)
    }

    /// The next `n` random correlated OTs: the random choice bits `r_i` (0/1) and the
    /// blocks `q_i xor r_i delta` (whose lowest bit is `r_i`).
    pub fn take<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        n: usize,
    ) -> Result<(Vec<u8>, Vec<Block>)> {
        self.ensure(ch, n)?;
        let t = self.st.take(n);
        Ok((t.iter().map(|&b| (b & 1) as u8).collect(), t))
    }

    /// Receives the next chunk of trees and appends their outputs.
    fn refill<C: Channel + ?Sized>(&mut self, ch: &mut C) -> Result<()> {
        let (params, trees) = self.st.upcoming();
        let h = params.depth as usize;
        let per = h * 16;
        // Receive before touching the state: a refused message leaves it as it was.
        let msg = recv_exact(ch, "silent OT tree messages", trees * per)?;
        let c = self.st.begin();
        let (ots, leaves, lpn) = self.st.chunk_parts(&c);
        let prims = lpn.prims;
        let trees = leaves.chunks_exact_mut(c.leaves).zip(ots.chunks_exact(h));
        for (i, (m, (tree, ts))) in msg.chunks_exact(per).zip(trees).enumerate() {
            // Our choice bit c (the lowest bit of our block t = q xor c delta) selects
            // K_c = (K_0 xor q) xor t, the XOR of the level's nodes on side c, all off the
            // path: alpha's bit is 1 - c.
            let c = (ts[0] & 1) as usize;
            tree[c] = block_at(m, 0) ^ ts[0];
            let mut path = 1 - c;
            tree[path] = 0;
            for (l, &t) in ts.iter().enumerate().skip(1) {
                let c = (t & 1) as usize;
                let known = block_at(m, l) ^ t;
                // The level's side-c sum, less the (garbage) child of our zeroed node.
                let sums = prims.level(tree, 1 << l);
                let sib = 2 * path + c;
                tree[sib] ^= known ^ sums[c];
                path = 2 * path + (1 - c);
                tree[path] = 0;
            }
            // The leaves sum to delta: the others' sum is leaf alpha xor delta, whose
            // lowest bit (delta's, 1; the sender clears its leaves') is set here.
            let mut s = 0u128;
            for (i, leaf) in tree.iter_mut().enumerate() {
                if i != path {
                    *leaf &= !1;
                    s ^= *leaf;
                }
            }
            tree[path] = s | 1;
            lpn.add(i, tree);
        }
        self.st.finish(&c);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_chain() {
        assert_eq!(MAIN.n(), 10_180_608);
        assert_eq!(BOOT.n(), 870_400);
        assert!(BOOT.n() >= MAIN.base());
        assert!(MAIN.n() > 10 * MAIN.base());
        assert!(3 * MAIN.log_k.max(BOOT.log_k) <= 64);
    }

    /// The half-tree's levels: children `H(x)` and `x xor H(x)`, the sums of each side
    /// returned; from a first level `s, s xor delta` every level sums to `delta`, which the
    /// receiver's last leaf relies on.
    #[test]
    fn half_tree_levels_sum_to_delta() {
        let p = Prims::new();
        let delta = 0x1234_5678_9abc_def0_0fed_cba9_8765_4321u128;
        let mut tree = vec![0u128; 1 << 7];
        tree[0] = 0xdead_beef_0000_0001;
        tree[1] = tree[0] ^ delta;
        for l in 1..7 {
            let parents = tree[..1 << l].to_vec();
            let sums = p.level(&mut tree, 1 << l);
            for (i, &x) in parents.iter().enumerate() {
                let mut h = [x];
                p.tree.ccr(&mut h);
                assert_eq!((tree[2 * i], tree[2 * i + 1]), (h[0], x ^ h[0]), "node {i}");
            }
            let side = |first: usize| {
                tree[first..2 << l]
                    .iter()
                    .step_by(2)
                    .fold(0u128, |a, &b| a ^ b)
            };
            assert_eq!(sums, [side(0), side(1)], "level {l}");
            assert_eq!(sums[0] ^ sums[1], delta, "level {l}");
            assert_ne!(sums[0], 0);
        }
    }

    #[test]
    fn positions_are_in_range_and_spread() {
        let p = Prims::new();
        let mut out = Vec::new();
        p.positions(MAIN.log_k, 1000, 3000, &mut out);
        assert_eq!(out.len(), 3000 * LPN_D);
        assert!(out.iter().all(|&x| (x as usize) < MAIN.k()));
        let mut seen = std::collections::HashSet::new();
        seen.extend(out.iter().copied());
        // 30,000 draws from 2^17: expect about 26,820 distinct values.
        assert!(seen.len() > 26_000, "{}", seen.len());
    }

    /// A stream in the middle of a [`MAIN`] iteration, its next base already kept, with
    /// pseudo-random secret and leaves.
    fn main_stream(seed: u128) -> Stream {
        let mut prg = AesPrg::new(seed);
        let mut x = vec![0u128; MAIN.k()];
        prg.fill(&mut x);
        let mut pool = vec![0u128; (CHUNK_TREES + 1) << MAIN.depth];
        prg.fill(&mut pool);
        Stream {
            params: MAIN,
            x,
            ggm: vec![0; MAIN.trees * MAIN.depth as usize],
            next_tree: 5,
            reserve: vec![0; MAIN.base()],
            end: pool.len(),
            pool,
            pos: 0,
            prims: Prims::new(),
        }
    }

    #[test]
    fn positions_match_their_definition() {
        let p = Prims::new();
        for (log_k, start, count) in [(MAIN.log_k, 77, 100), (BOOT.log_k, 5, 33), (17, 0, 1)] {
            let mut out = Vec::new();
            p.positions(log_k, start, count, &mut out);
            let mut blocks: Vec<Block> = (0..2 * count).map(|j| (2 * start + j) as u128).collect();
            p.lpn.permute(&mut blocks);
            // The 64-bit words of the output's two blocks: three fields of the first two,
            // two of the others.
            let m = (1u64 << log_k) - 1;
            let want: Vec<u32> = blocks
                .chunks_exact(2)
                .flat_map(|pair| {
                    let words = [pair[0], pair[0] >> 64, pair[1], pair[1] >> 64].map(|w| w as u64);
                    [(0, 3), (1, 3), (2, 2), (3, 2)]
                        .into_iter()
                        .flat_map(move |(w, n)| {
                            (0..n).map(move |f| ((words[w] >> (f * log_k)) & m) as u32)
                        })
                })
                .collect();
            assert_eq!(out, want);
        }
    }

    #[test]
    fn lpn_step_matches_its_definition() {
        let mut st = main_stream(7);
        let leaves = 1usize << MAIN.depth;
        let c = Chunk {
            params: MAIN,
            trees: CHUNK_TREES,
            leaves,
            start: leaves,
        };
        let first = st.next_tree * leaves;
        let mut want = st.pool.clone();
        let mut pos = Vec::new();
        st.prims
            .positions(MAIN.log_k, first, CHUNK_TREES * leaves, &mut pos);
        for (o, idx) in want[leaves..].iter_mut().zip(pos.chunks_exact(LPN_D)) {
            for &p in idx {
                *o ^= st.x[p as usize];
            }
        }
        let (_, out, lpn) = st.chunk_parts(&c);
        for (i, tree) in out.chunks_exact_mut(leaves).enumerate() {
            lpn.add(i, tree);
        }
        assert_eq!(st.pool, want);
    }
}
