//! 1-of-N OT extension of Kolesnikov and Kumaresan (Crypto 2013) for `N <= 256`: IKNP
//! with the 256-bit Walsh-Hadamard code `C(x)_j = <x, j> mod 2` (distance 128) in place
//! of the repetition code. One extended OT costs 256 bits from the receiver plus the `N`
//! masked messages, whatever `N` (against `128 log N` bits for `log N` 1-of-2 OTs).
//!
//! Receiver with choice `x`: `t` (256 bits). Sender: `q = t xor (C(x) and s)` for its
//! secret `s`. The pad of message `y` is `H(i, q xor (C(y) and s))`, equal to the
//! receiver's `H(i, t)` for `y = x`; for `y != x` it differs from `t` in at least 128
//! bits of the unknown `s`. `H` compresses the 256 bits with fixed-key AES
//! (`pi(pi(sigma(t_lo) xor i) xor sigma(t_hi)) xor ...`, two calls; heuristic in the
//! ideal-permutation model). Semi-honest security, as the rest of the layer.

use rand::{CryptoRng, RngCore};

use super::aes::{sigma, transpose128, AesPrg, Block, FixedKeyAes};
use super::base::{BaseOtReceiver, BaseOtSender};
use crate::error::{Error, Result};
use crate::net::{recv_exact, Channel};
use crate::ring::mask;

const COLS: usize = 256;
const CHUNK: usize = 32;

/// A 256-bit row.
type Row = [Block; 2];

/// The Walsh-Hadamard codeword of `x` (`x < 256`).
fn codeword(x: usize) -> Row {
    let mut r = [0u128; 2];
    for j in 0..COLS {
        if (x & j).count_ones() & 1 == 1 {
            r[j >> 7] |= 1u128 << (j & 127);
        }
    }
    r
}

/// Hashes rows `a` with tweaks into `out`: two fixed-key AES calls per row.
fn hash_rows(h: &FixedKeyAes, rows: &[Row], tweaks: &[u128], out: &mut Vec<Block>) {
    out.clear();
    out.extend(rows.iter().zip(tweaks).map(|(r, &t)| sigma(r[0]) ^ t));
    let first = out.clone();
    h.permute(out);
    for ((o, f), r) in out.iter_mut().zip(&first).zip(rows) {
        *o ^= f ^ sigma(r[1]);
    }
    let second = out.clone();
    h.permute(out);
    for (o, s) in out.iter_mut().zip(&second) {
        *o ^= s;
    }
}

/// Packs `bits`-bit values into bytes, least significant bit first.
struct Packer {
    out: Vec<u8>,
    acc: u128,
    n: u32,
}

impl Packer {
    fn push(&mut self, v: u64, bits: u32) {
        self.acc |= (v as u128) << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

fn read_bits(buf: &[u8], idx: usize, bits: u32) -> u64 {
    let start = idx * bits as usize;
    let mut v: u128 = 0;
    let first = start / 8;
    let last = (start + bits as usize).div_ceil(8);
    for (k, &b) in buf[first..last].iter().enumerate() {
        v |= (b as u128) << (8 * k);
    }
    ((v >> (start % 8)) as u64) & mask(bits)
}

fn check_shape(log_n: u32, bits: u32) -> Result<()> {
    if !(1..=8).contains(&log_n) || !(1..=64).contains(&bits) {
        return Err(Error::InvalidInput {
            what: "KK13 1-of-N OT shape (log N in 1..=8, bits in 1..=64)",
            expected: 8,
            found: log_n as u64,
        });
    }
    Ok(())
}

/// The sender of KK13 1-of-N OTs (base-OT receiver).
#[derive(Debug, Clone)]
pub struct KkSender {
    s: Row,
    prgs: Vec<AesPrg>,
    hash: FixedKeyAes,
    counter: u128,
}

/// The receiver of KK13 1-of-N OTs (base-OT sender).
#[derive(Debug, Clone)]
pub struct KkReceiver {
    prgs: Vec<(AesPrg, AesPrg)>,
    hash: FixedKeyAes,
    counter: u128,
}

/// Rows of a column-major `256 x 128 w` chunk.
fn transpose_chunk(cols: &[Block], w: usize, rows: &mut Vec<Row>) {
    rows.clear();
    let mut a = [0u128; 128];
    let mut b = [0u128; 128];
    for blk in 0..w {
        for j in 0..128 {
            a[j] = cols[j * w + blk];
            b[j] = cols[(128 + j) * w + blk];
        }
        transpose128(&mut a);
        transpose128(&mut b);
        rows.extend(a.iter().zip(b.iter()).map(|(&x, &y)| [x, y]));
    }
}

impl KkSender {
    /// Sets up (256 base OTs; the peer runs [`KkReceiver::setup`]).
    pub fn setup<C: Channel + ?Sized, R: RngCore + CryptoRng + ?Sized>(
        ch: &mut C,
        rng: &mut R,
    ) -> Result<Self> {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        let bits: Vec<u8> = (0..COLS).map(|j| (b[j / 8] >> (j % 8)) & 1).collect();
        let keys = BaseOtReceiver::receive(ch, &bits, rng)?;
        let mut s = [0u128; 2];
        for (j, &bit) in bits.iter().enumerate() {
            s[j >> 7] |= (bit as u128) << (j & 127);
        }
        Ok(Self {
            s,
            prgs: keys.into_iter().map(AesPrg::new).collect(),
            hash: FixedKeyAes::default(),
            counter: 0,
        })
    }

    /// Sends `msgs[i * N + y]` (`bits` bits each, `N = 2^log_n`); the receiver learns
    /// message `choice_i` of each instance.
    pub fn send<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        msgs: &[u64],
        log_n: u32,
        bits: u32,
    ) -> Result<()> {
        check_shape(log_n, bits)?;
        let nn = 1usize << log_n;
        if !msgs.len().is_multiple_of(nn) {
            return Err(Error::InvalidInput {
                what: "KK13 messages must be a multiple of N",
                expected: nn as u64,
                found: msgs.len() as u64,
            });
        }
        let inst = msgs.len() / nn;
        if inst == 0 {
            return Ok(());
        }
        let cs: Vec<Row> = (0..nn)
            .map(|y| {
                let c = codeword(y);
                [c[0] & self.s[0], c[1] & self.s[1]]
            })
            .collect();
        let nb = inst.div_ceil(128);
        let mut q = vec![0u128; COLS * CHUNK];
        let mut rows = Vec::with_capacity(CHUNK * 128);
        let mut padded = Vec::with_capacity(CHUNK * 128 * nn);
        let mut tweaks = Vec::with_capacity(CHUNK * 128 * nn);
        let mut pads = Vec::new();
        let mk = mask(bits);
        let mut out = Packer {
            out: Vec::with_capacity((inst * nn * bits as usize).div_ceil(8)),
            acc: 0,
            n: 0,
        };
        for cb in (0..nb).step_by(CHUNK) {
            let w = CHUNK.min(nb - cb);
            let u = recv_exact(ch, "KK13 extension matrix", COLS * w * 16)?;
            for j in 0..COLS {
                let col = &mut q[j * w..(j + 1) * w];
                self.prgs[j].fill(col);
                if (self.s[j >> 7] >> (j & 127)) & 1 == 1 {
                    for (x, c) in col
                        .iter_mut()
                        .zip(u[j * w * 16..(j + 1) * w * 16].chunks_exact(16))
                    {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(c);
                        *x ^= u128::from_le_bytes(a);
                    }
                }
            }
            transpose_chunk(&q, w, &mut rows);
            let first = cb * 128;
            let count = (inst - first).min(w * 128);
            padded.clear();
            tweaks.clear();
            for (r, row) in rows.iter().take(count).enumerate() {
                let tw = self.counter + (first + r) as u128;
                for c in &cs {
                    padded.push([row[0] ^ c[0], row[1] ^ c[1]]);
                    tweaks.push(tw);
                }
            }
            hash_rows(&self.hash, &padded, &tweaks, &mut pads);
            for k in 0..count * nn {
                out.push((msgs[first * nn + k] ^ pads[k] as u64) & mk, bits);
            }
        }
        self.counter += inst as u128;
        ch.send(&out.finish())?;
        ch.flush()
    }
}

impl KkReceiver {
    /// Sets up (256 base OTs as their sender; the peer runs [`KkSender::setup`]).
    pub fn setup<C: Channel + ?Sized, R: RngCore + CryptoRng + ?Sized>(
        ch: &mut C,
        rng: &mut R,
    ) -> Result<Self> {
        let keys = BaseOtSender::send(ch, COLS, rng)?;
        Ok(Self {
            prgs: keys
                .into_iter()
                .map(|(a, b)| (AesPrg::new(a), AesPrg::new(b)))
                .collect(),
            hash: FixedKeyAes::default(),
            counter: 0,
        })
    }

    /// Receives message `choices[i] < 2^log_n` of each instance.
    pub fn receive<C: Channel + ?Sized>(
        &mut self,
        ch: &mut C,
        choices: &[u16],
        log_n: u32,
        bits: u32,
    ) -> Result<Vec<u64>> {
        check_shape(log_n, bits)?;
        let nn = 1usize << log_n;
        if let Some(&c) = choices.iter().find(|&&c| c as usize >= nn) {
            return Err(Error::InvalidInput {
                what: "1-of-N choice out of range",
                expected: nn as u64 - 1,
                found: c as u64,
            });
        }
        let inst = choices.len();
        if inst == 0 {
            return Ok(Vec::new());
        }
        let nb = inst.div_ceil(128);
        let mut t = vec![0u128; COLS * CHUNK];
        let mut g1 = vec![0u128; CHUNK];
        let mut rows = Vec::with_capacity(CHUNK * 128);
        let mut all_rows: Vec<Row> = Vec::with_capacity(inst);
        // Bit b of the choices, packed per 128-row block.
        let mut xb = vec![[0u128; 8]; nb];
        for (i, &c) in choices.iter().enumerate() {
            for (b, x) in xb[i >> 7].iter_mut().enumerate() {
                *x |= (((c >> b) & 1) as u128) << (i & 127);
            }
        }
        for cb in (0..nb).step_by(CHUNK) {
            let w = CHUNK.min(nb - cb);
            // Column j of the codeword matrix: XOR of the bit columns b in j.
            let mut code = vec![0u128; COLS * w];
            for blk in 0..w {
                for j in 1..COLS {
                    let low = j.trailing_zeros() as usize;
                    code[j * w + blk] = code[(j & (j - 1)) * w + blk] ^ xb[cb + blk][low];
                }
            }
            let mut u = Vec::with_capacity(COLS * w * 16);
            for j in 0..COLS {
                let col = &mut t[j * w..(j + 1) * w];
                let (p0, p1) = &mut self.prgs[j];
                p0.fill(col);
                p1.fill(&mut g1[..w]);
                for blk in 0..w {
                    u.extend_from_slice(&(col[blk] ^ g1[blk] ^ code[j * w + blk]).to_le_bytes());
                }
            }
            ch.send(&u)?;
            transpose_chunk(&t, w, &mut rows);
            let take = (inst - cb * 128).min(w * 128);
            all_rows.extend_from_slice(&rows[..take]);
        }
        ch.flush()?;
        let tweaks: Vec<u128> = (0..inst).map(|i| self.counter + i as u128).collect();
        self.counter += inst as u128;
        let mut pads = Vec::new();
        hash_rows(&self.hash, &all_rows, &tweaks, &mut pads);
        let m = recv_exact(ch, "KK13 messages", (inst * nn * bits as usize).div_ceil(8))?;
        Ok(choices
            .iter()
            .enumerate()
            .map(|(i, &c)| (read_bits(&m, i * nn + c as usize, bits) ^ pads[i] as u64) & mask(bits))
            .collect())
    }
}
