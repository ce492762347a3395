//! Every protocol, both parties in one process, against a plaintext reference (exact), on
//! random inputs and the edge values; one test per family over TCP loopback.

mod common;
use common::{parties_mem, parties_tcp};

use cipherml_mpc::net::Channel;
use cipherml_mpc::party::Party;
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::protocols::{arith, boolean, compare};
use cipherml_mpc::ring::Ring;
use cipherml_mpc::share::{split, PartyId};
use cipherml_mpc::triples::ot::OtTriples;
use cipherml_mpc::triples::TripleSource;
use rand::RngCore;

/// Random signed values plus the edge values 0, -1, 1, min, max.
fn inputs(ring: Ring, n: usize) -> Vec<u64> {
    let mut rng = os_rng();
    let mut v: Vec<u64> = vec![
        0,
        ring.from_signed(-1),
        1,
        ring.from_signed(ring.min_signed()),
        ring.from_signed(ring.max_signed()),
    ];
    while v.len() < n {
        v.push(ring.reduce(rng.next_u64()));
    }
    v
}

/// Shares of `x` for both parties.
fn shares(ring: Ring, x: &[u64]) -> (Vec<u64>, Vec<u64>) {
    split(ring, x, &mut os_rng())
}

fn pick<T: Clone>(p: &Party<impl Channel, impl rand::CryptoRng>, s: &(T, T)) -> T {
    if p.id() == PartyId::P0 {
        s.0.clone()
    } else {
        s.1.clone()
    }
}

fn open(ring: Ring, a: &[u64], b: &[u64]) -> Vec<u64> {
    ring.add_vec(a, b)
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

#[test]
fn mul_and_matmul_with_ot_triples() {
    for bits in [32u32, 64, 17] {
        let ring = Ring::new(bits).unwrap();
        let x = inputs(ring, 40);
        let mut y = inputs(ring, 40);
        y.reverse();
        let (sx, sy) = (shares(ring, &x), shares(ring, &y));
        let (m, k, n) = (3, 4, 5);
        let a = ring.random_vec(&mut os_rng(), m * k);
        let b = ring.random_vec(&mut os_rng(), k * n);
        let (sa, sb) = (shares(ring, &a), shares(ring, &b));
        let (r0, r1) = parties_mem(move |p| {
            let t = OtTriples.arith(p, ring, 40).unwrap();
            let z = arith::mul(p, &pick(p, &sx), &pick(p, &sy), &t).unwrap();
            let mt = OtTriples.matrix(p, ring, m, k, n).unwrap();
            let w = arith::matmul(p, &pick(p, &sa), &pick(p, &sb), &mt).unwrap();
            (z, w)
        });
        assert_eq!(open(ring, &r0.0, &r1.0), ring.mul_vec(&x, &y));
        assert_eq!(open(ring, &r0.1, &r1.1), ring.matmul(&a, &b, m, k, n));
    }
}

#[test]
fn mul_over_tcp() {
    let ring = Ring::new(32).unwrap();
    let x = inputs(ring, 20);
    let y = inputs(ring, 20);
    let (sx, sy) = (shares(ring, &x), shares(ring, &y));
    let (r0, r1) = parties_tcp(move |p| {
        let t = OtTriples.arith(p, ring, 20).unwrap();
        arith::mul(p, &pick(p, &sx), &pick(p, &sy), &t).unwrap()
    });
    assert_eq!(open(ring, &r0, &r1), ring.mul_vec(&x, &y));
}

#[test]
fn truncation() {
    for (bits, f) in [(32u32, 12u32), (64, 16), (16, 1)] {
        let ring = Ring::new(bits).unwrap();
        let x = inputs(ring, 200);
        let sx = shares(ring, &x);
        let (r0, r1) = parties_mem(move |p| {
            let sx = pick(p, &sx);
            let faithful = arith::trunc_faithful(p, ring, &sx, f).unwrap();
            let local = arith::trunc_local(p, ring, &sx, f);
            (faithful, local)
        });
        let exact: Vec<u64> = x.iter().map(|&v| ring.shr_signed(v, f)).collect();
        assert_eq!(open(ring, &r0.0, &r1.0), exact, "faithful, l={bits}");
        // Local truncation: within one ulp for values far from the range ends.
        let local = open(ring, &r0.1, &r1.1);
        let mut bad = 0;
        for i in 0..x.len() {
            let v = ring.to_signed(x[i]);
            if v.unsigned_abs() < 1u64 << (bits - 3) {
                let d = ring.to_signed(ring.sub(local[i], exact[i]));
                if !(0..=1).contains(&d) {
                    bad += 1;
                }
            }
        }
        // Failure probability per value at most 2^(lx + 1 - l) = 1/4 here.
        assert!(
            bad <= x.len() / 2,
            "too many local truncation failures: {bad}"
        );
    }
}

/// Signed inputs in `[-2^(l-2), 2^(l-2))`: the edges and random values.
fn bounded_inputs(ring: Ring, n: usize) -> Vec<u64> {
    let q = 1i64 << (ring.bits() - 2);
    let mut v: Vec<u64> = [0, 1, -1, q - 1, -q, -q + 1, q / 2, -q / 2 - 1]
        .iter()
        .map(|&s| ring.from_signed(s))
        .collect();
    v.extend(inputs(ring, n).into_iter().map(|x| {
        // Sign-extend the low l - 1 bits: uniform over the range.
        let s = ring.to_signed(x) >> 1;
        ring.from_signed(s)
    }));
    v
}

#[test]
fn truncation_of_bounded_signed_values() {
    for (bits, f) in [
        (64u32, 16u32),
        (64, 32),
        (40, 12),
        (32, 12),
        (16, 1),
        (8, 6),
    ] {
        let ring = Ring::new(bits).unwrap();
        let x = bounded_inputs(ring, 300);
        let sx = shares(ring, &x);
        let (r0, r1) =
            parties_mem(move |p| arith::trunc_bounded(p, ring, &pick(p, &sx), f).unwrap());
        let exact: Vec<u64> = x.iter().map(|&v| ring.shr_signed(v, f)).collect();
        assert_eq!(open(ring, &r0, &r1), exact, "l={bits}, f={f}");
    }
    // Over TCP, f = 0, and the refusal of f >= l.
    let ring = Ring::new(64).unwrap();
    let x = bounded_inputs(ring, 60);
    let sx = shares(ring, &x);
    let (r0, r1) = parties_tcp(move |p| {
        let s = pick(p, &sx);
        let t = arith::trunc_bounded(p, ring, &s, 16).unwrap();
        let same = arith::trunc_bounded(p, ring, &s, 0).unwrap();
        assert!(arith::trunc_bounded(p, ring, &s, 64).is_err());
        (t, same)
    });
    let t = open(ring, &r0.0, &r1.0);
    for i in 0..x.len() {
        assert_eq!(t[i], ring.shr_signed(x[i], 16), "value {}", x[i]);
    }
    assert_eq!(open(ring, &r0.1, &r1.1), x);
}

/// The top `l - s` bits of any value (no range assumption: random values over the whole
/// ring and the edges), exactly, in `Z_2^(l - s)`; their sign is the value's.
#[test]
fn high_bits_of_any_value() {
    for (bits, s) in [
        (32u32, 16u32),
        (33, 14),
        (64, 16),
        (40, 12),
        (8, 7),
        (16, 1),
    ] {
        let ring = Ring::new(bits).unwrap();
        let high = Ring::new(bits - s).unwrap();
        let x = inputs(ring, 400);
        let sx = shares(ring, &x);
        let (r0, r1) = parties_mem(move |p| arith::high_bits(p, ring, &pick(p, &sx), s).unwrap());
        let got = open(high, &r0, &r1);
        for (v, g) in x.iter().zip(&got) {
            assert_eq!(*g, v >> s, "l={bits}, s={s}: {v:#x}");
            assert_eq!(high.msb(*g), ring.msb(*v), "sign, l={bits}, s={s}: {v:#x}");
        }
    }
    // Over TCP, s = 0, and the refusal of s >= l.
    let ring = Ring::new(32).unwrap();
    let x = inputs(ring, 50);
    let sx = shares(ring, &x);
    let (r0, r1) = parties_tcp(move |p| {
        let v = pick(p, &sx);
        assert!(arith::high_bits(p, ring, &v, 32).is_err());
        let same = arith::high_bits(p, ring, &v, 0).unwrap();
        (arith::high_bits(p, ring, &v, 16).unwrap(), same)
    });
    let high = Ring::new(16).unwrap();
    let got = open(high, &r0.0, &r1.0);
    assert!(x.iter().zip(&got).all(|(v, g)| *g == v >> 16));
    assert_eq!(open(ring, &r0.1, &r1.1), x);
}

#[test]
fn truncation_within_one_ulp_of_bounded_signed_values() {
    for (bits, f) in [(64u32, 24u32), (64, 16), (40, 12), (16, 3)] {
        let ring = Ring::new(bits).unwrap();
        let x = bounded_inputs(ring, 400);
        let sx = shares(ring, &x);
        let (r0, r1) = parties_mem(move |p| {
            arith::trunc_bounded_within_ulp(p, ring, &pick(p, &sx), f).unwrap()
        });
        let got = open(ring, &r0, &r1);
        for (v, g) in x.iter().zip(&got) {
            let exact = ring.shr_signed(*v, f);
            let d = ring.to_signed(ring.sub(exact, *g));
            assert!(
                (0..=1).contains(&d),
                "l={bits}, f={f}: {} -> {}, want {} or one less",
                ring.to_signed(*v),
                ring.to_signed(*g),
                ring.to_signed(exact)
            );
        }
    }
}

#[test]
fn extension_of_nonnegative_values_to_a_wider_ring() {
    for (from, to) in [(32u32, 64u32), (16, 40), (4, 64), (63, 64), (20, 21)] {
        let (narrow, wide) = (Ring::new(from).unwrap(), Ring::new(to).unwrap());
        let x = nonneg_inputs(narrow, 300);
        let sx = shares(narrow, &x);
        let (r0, r1) =
            parties_mem(move |p| arith::extend_nonneg(p, narrow, wide, &pick(p, &sx)).unwrap());
        // The same values in the wide ring, whatever the wrap of the narrow shares.
        assert_eq!(open(wide, &r0, &r1), x, "{from} -> {to} bits");
    }
    // Over TCP, and the refusal of a target no wider than the source.
    let (narrow, wide) = (Ring::new(32).unwrap(), Ring::new(64).unwrap());
    let x = nonneg_inputs(narrow, 40);
    let sx = shares(narrow, &x);
    let (r0, r1) = parties_tcp(move |p| {
        let s = pick(p, &sx);
        assert!(arith::extend_nonneg(p, narrow, narrow, &s).is_err());
        arith::extend_nonneg(p, narrow, wide, &s).unwrap()
    });
    assert_eq!(open(wide, &r0, &r1), x);
}

/// Non-negative inputs of `l - 1` bits: the edges and random values.
fn nonneg_inputs(ring: Ring, n: usize) -> Vec<u64> {
    let top = ring.max_signed() as u64;
    let mut v = vec![0, 1, 2, top, top - 1, 1 << (ring.bits() / 2)];
    v.extend(inputs(ring, n).into_iter().map(|x| x & top));
    v
}

#[test]
fn truncation_of_nonnegative_values() {
    for (bits, f) in [(40u32, 12u32), (32, 12), (64, 16), (16, 1), (8, 7)] {
        let ring = Ring::new(bits).unwrap();
        let x = nonneg_inputs(ring, 300);
        let sx = shares(ring, &x);
        let (r0, r1) =
            parties_mem(move |p| arith::trunc_nonneg(p, ring, &pick(p, &sx), f).unwrap());
        let exact: Vec<u64> = x.iter().map(|&v| v >> f).collect();
        assert_eq!(open(ring, &r0, &r1), exact, "l={bits}, f={f}");
    }
    // Over TCP, and the refusals and f = 0 of the faithful truncation.
    let ring = Ring::new(40).unwrap();
    let x = nonneg_inputs(ring, 50);
    let sx = shares(ring, &x);
    let (r0, r1) = parties_tcp(move |p| {
        let s = pick(p, &sx);
        let t = arith::trunc_nonneg(p, ring, &s, 24).unwrap();
        let same = arith::trunc_nonneg(p, ring, &s, 0).unwrap();
        assert!(arith::trunc_nonneg(p, ring, &s, 40).is_err());
        (t, same)
    });
    let t = open(ring, &r0.0, &r1.0);
    for i in 0..x.len() {
        assert_eq!(t[i], x[i] >> 24);
    }
    assert_eq!(open(ring, &r0.1, &r1.1), x);
}

/// Known-MSB truncation within one ulp (Cheetah's): `floor(x / 2^f)` or one less for every
/// non-negative value, and at least once each over 400 random ones (the carry is really
/// dropped); over TCP too, with `f = 0` and the refusal of `f >= l`.
#[test]
fn truncation_within_one_ulp_of_nonnegative_values() {
    for (bits, f) in [(32u32, 12u32), (40, 12), (64, 16), (16, 3)] {
        let ring = Ring::new(bits).unwrap();
        let x = nonneg_inputs(ring, 400);
        let sx = shares(ring, &x);
        let (r0, r1) = parties_mem(move |p| {
            arith::trunc_nonneg_within_ulp(p, ring, &pick(p, &sx), f).unwrap()
        });
        let got = open(ring, &r0, &r1);
        let mut seen = [false; 2];
        for (v, g) in x.iter().zip(&got) {
            let d = ring.sub(v >> f, *g);
            assert!(
                d <= 1,
                "l={bits}, f={f}: {v} -> {g}, want {} or one less",
                v >> f
            );
            seen[d as usize] = true;
        }
        assert_eq!(seen, [true, true], "l={bits}, f={f}");
    }
    let ring = Ring::new(32).unwrap();
    let x = nonneg_inputs(ring, 50);
    let sx = shares(ring, &x);
    let (r0, r1) = parties_tcp(move |p| {
        let s = pick(p, &sx);
        assert!(arith::trunc_nonneg_within_ulp(p, ring, &s, 32).is_err());
        let same = arith::trunc_nonneg_within_ulp(p, ring, &s, 0).unwrap();
        (
            arith::trunc_nonneg_within_ulp(p, ring, &s, 12).unwrap(),
            same,
        )
    });
    let t = open(ring, &r0.0, &r1.0);
    assert!(x.iter().zip(&t).all(|(v, g)| ring.sub(v >> 12, *g) <= 1));
    assert_eq!(open(ring, &r0.1, &r1.1), x);
}

#[test]
fn millionaire_and_relu_family() {
    for bits in [32u32, 64, 8, 5] {
        let ring = Ring::new(bits).unwrap();
        let x = inputs(ring, 300);
        let mut y = inputs(ring, 300);
        y.rotate_left(7);
        let (sx, sy) = (shares(ring, &x), shares(ring, &y));
        let (mx, my) = (x.clone(), y.clone());
        let (r0, r1) = parties_mem(move |p| {
            let own = if p.is_p0() { mx.clone() } else { my.clone() };
            let gt = compare::millionaire(p, bits, &own).unwrap();
            // Reversed and one shorter: the edge values among the instances whose tables
            // party 1 holds (the second half), and an odd count.
            let rev: Vec<u64> = own.iter().rev().skip(1).copied().collect();
            let gt_rev = compare::millionaire(p, bits, &rev).unwrap();
            let sxx = pick(p, &sx);
            let d = compare::drelu(p, ring, &sxx).unwrap();
            let r = compare::relu(p, ring, &sxx).unwrap();
            let lt = compare::less_than(p, ring, &sxx, &pick(p, &sy)).unwrap();
            let m = compare::max(p, ring, &sxx, &pick(p, &sy)).unwrap();
            (gt, d, r, lt, m, gt_rev)
        });
        let gt_rev = xor(&r0.5, &r1.5);
        let (xr, yr): (Vec<u64>, Vec<u64>) = (
            x.iter().rev().skip(1).copied().collect(),
            y.iter().rev().skip(1).copied().collect(),
        );
        assert_eq!(gt_rev.len(), xr.len());
        for i in 0..xr.len() {
            assert_eq!(
                gt_rev[i] == 1,
                xr[i] > yr[i],
                "millionaire {bits}, reversed: {i}"
            );
        }
        let gt = xor(&r0.0, &r1.0);
        for i in 0..x.len() {
            assert_eq!(
                gt[i] == 1,
                x[i] > y[i],
                "millionaire {bits}: {} vs {}",
                x[i],
                y[i]
            );
        }
        let d = xor(&r0.1, &r1.1);
        let relu = open(ring, &r0.2, &r1.2);
        let lt = xor(&r0.3, &r1.3);
        let mx = open(ring, &r0.4, &r1.4);
        for i in 0..x.len() {
            let (sx, sy) = (ring.to_signed(x[i]), ring.to_signed(y[i]));
            assert_eq!(d[i] == 1, sx >= 0, "drelu");
            assert_eq!(relu[i], if sx >= 0 { x[i] } else { 0 }, "relu");
            assert_eq!(lt[i] == 1, sx < sy, "lt {sx} {sy}");
            assert_eq!(mx[i], ring.from_signed(sx.max(sy)), "max");
        }
    }
}

/// The millionaire with every digit size a party accepts (1 to 4 bits: the 1-of-16 tables
/// of 4-bit digits, a last digit narrower than the others at 31 and 5 bits), against the
/// plaintext comparison, both halves of the instances; sizes 0 and 5 refused; wider
/// digits send more bytes (the trade the network model makes).
#[test]
fn millionaire_with_every_digit_size() {
    let mut bytes = Vec::new();
    for beta in 1..=compare::MAX_DIGIT_BITS {
        for bits in [31u32, 64, 5, 16] {
            let ring = Ring::new(bits).unwrap();
            let x = inputs(ring, 131);
            let mut y = inputs(ring, 131);
            y.rotate_left(3);
            let (mx, my) = (x.clone(), y.clone());
            let (r0, r1) = parties_mem(move |p| {
                assert!(p.set_digit_bits(0).is_err() && p.set_digit_bits(5).is_err());
                p.set_digit_bits(beta).unwrap();
                assert_eq!(p.digit_bits(), beta);
                let own = if p.is_p0() { mx.clone() } else { my.clone() };
                let before = p.stats();
                let gt = compare::millionaire(p, bits, &own).unwrap();
                let after = p.stats();
                (gt, after.bytes_sent - before.bytes_sent)
            });
            let gt = xor(&r0.0, &r1.0);
            for i in 0..x.len() {
                assert_eq!(gt[i] == 1, x[i] > y[i], "beta {beta}, {bits} bits: {i}");
            }
            if bits == 31 {
                bytes.push(r0.1 + r1.1);
            }
        }
    }
    assert!(
        bytes[1] < bytes[3],
        "31-bit comparisons' bytes by digit size: {bytes:?}"
    );
}

#[test]
fn small_thresholds_by_one_table_match_plaintext_comparisons() {
    // Rings where z = [v >= 2^w] is compared and where no value reaches 2^w (l = 4, w = 3),
    // thresholds of every table width from 1 to 2^6, in any order, repeated.
    let cases: [(u32, &[u64]); 6] = [
        (16, &[1, 2, 3, 4, 5, 6]),
        (16, &[6, 1, 8, 3]),
        (20, &[1]),
        (4, &[1, 5, 8]),
        (32, &[64, 1, 33, 32, 2]),
        (9, &[2, 2, 16, 9]),
    ];
    for (bits, ks) in cases {
        let ring = Ring::new(bits).unwrap();
        let mut x = nonneg_inputs(ring, 300);
        // Every value near the thresholds and near 2^w, as well.
        let top = ring.max_signed() as u64;
        x.extend((0..=130u64).filter(|&v| v <= top));
        let sx = shares(ring, &x);
        let owned = ks.to_vec();
        let (r0, r1) =
            parties_mem(move |p| compare::at_least_small(p, ring, &owned, &pick(p, &sx)).unwrap());
        let got = xor(&r0, &r1);
        let n = x.len();
        assert_eq!(got.len(), ks.len() * n);
        for (i, &k) in ks.iter().enumerate() {
            for j in 0..n {
                assert_eq!(got[i * n + j] == 1, x[j] >= k, "l={bits} v={} k={k}", x[j]);
            }
        }
    }
    // Over TCP, and the refusals of thresholds 0 and above 2^6.
    let ring = Ring::new(16).unwrap();
    let x = nonneg_inputs(ring, 40);
    let sx = shares(ring, &x);
    let (r0, r1) = parties_tcp(move |p| {
        let s = pick(p, &sx);
        assert!(compare::at_least_small(p, ring, &[0, 3], &s).is_err());
        assert!(compare::at_least_small(p, ring, &[65], &s).is_err());
        compare::at_least_small(p, ring, &[3, 7], &s).unwrap()
    });
    let got = xor(&r0, &r1);
    for j in 0..x.len() {
        assert_eq!(got[j] == 1, x[j] >= 3);
        assert_eq!(got[x.len() + j] == 1, x[j] >= 7);
    }
}

#[test]
fn relu_and_max_over_tcp() {
    let ring = Ring::new(32).unwrap();
    let x = inputs(ring, 100);
    let sx = shares(ring, &x);
    let (r0, r1) = parties_tcp(move |p| {
        let s = pick(p, &sx);
        let r = compare::relu(p, ring, &s).unwrap();
        let m = compare::max_pool(p, ring, &s, 4).unwrap();
        (r, m)
    });
    let relu = open(ring, &r0.0, &r1.0);
    for i in 0..x.len() {
        assert_eq!(relu[i], if ring.msb(x[i]) { 0 } else { x[i] });
    }
    let mp = open(ring, &r0.1, &r1.1);
    for (w, chunk) in x.chunks(4).enumerate() {
        let m = chunk.iter().map(|&v| ring.to_signed(v)).max().unwrap();
        assert_eq!(ring.to_signed(mp[w]), m);
    }
}

#[test]
fn maxpool_and_argmax() {
    let ring = Ring::new(32).unwrap();
    for window in [1usize, 2, 3, 4, 9] {
        let mut x = inputs(ring, window * 12);
        // Ties: a window of equal values.
        for v in x.iter_mut().take(window) {
            *v = 5;
        }
        let sx = shares(ring, &x);
        let (r0, r1) = parties_mem(move |p| {
            let s = pick(p, &sx);
            let m = compare::max_pool(p, ring, &s, window).unwrap();
            let (i, v) = compare::argmax(p, ring, &s, window).unwrap();
            (m, i, v)
        });
        let mp = open(ring, &r0.0, &r1.0);
        let idx = open(ring, &r0.1, &r1.1);
        let av = open(ring, &r0.2, &r1.2);
        for (w, chunk) in x.chunks(window).enumerate() {
            let vals: Vec<i64> = chunk.iter().map(|&v| ring.to_signed(v)).collect();
            let m = *vals.iter().max().unwrap();
            let first = vals.iter().position(|&v| v == m).unwrap();
            assert_eq!(ring.to_signed(mp[w]), m);
            assert_eq!(ring.to_signed(av[w]), m);
            assert_eq!(idx[w], first as u64, "argmax window {window}");
        }
    }
}

/// The ReLU-tree max-pool equals the plaintext maximum for values within a quarter of the
/// ring (its stated range), for odd and even windows, ties included; a length that is not
/// a multiple of the window is a typed error.
#[test]
fn maxpool_relu_tree_matches_plaintext_max() {
    let ring = Ring::new(40).unwrap();
    let quarter = 1i64 << 37;
    for window in [1usize, 2, 3, 4, 9] {
        let mut rng = os_rng();
        let mut x: Vec<u64> = (0..window * 10)
            .map(|_| ring.from_signed((rng.next_u64() as i64) % quarter))
            .collect();
        for v in x.iter_mut().take(window) {
            *v = ring.from_signed(-7);
        }
        let sx = shares(ring, &x);
        let (r0, r1) = parties_mem(move |p| {
            let s = pick(p, &sx);
            let bad = compare::max_pool_relu_tree(p, ring, &s[..s.len() - 1], window.max(2));
            (
                compare::max_pool_relu_tree(p, ring, &s, window).unwrap(),
                bad.is_err(),
            )
        });
        assert!(r0.1 && r1.1, "a ragged length must be refused");
        let mp = open(ring, &r0.0, &r1.0);
        for (w, chunk) in x.chunks(window).enumerate() {
            let m = chunk.iter().map(|&v| ring.to_signed(v)).max().unwrap();
            assert_eq!(ring.to_signed(mp[w]), m, "window {window}");
        }
    }
}

#[test]
fn select_b2a_a2b_and() {
    for bits in [32u32, 64, 3] {
        let ring = Ring::new(bits).unwrap();
        let x = inputs(ring, 64);
        let y = inputs(ring, 64);
        let mut rng = os_rng();
        let b: Vec<u8> = (0..64).map(|_| (rng.next_u32() & 1) as u8).collect();
        let c: Vec<u8> = (0..64).map(|_| (rng.next_u32() & 1) as u8).collect();
        let b0: Vec<u8> = (0..64).map(|_| (rng.next_u32() & 1) as u8).collect();
        let c0: Vec<u8> = (0..64).map(|_| (rng.next_u32() & 1) as u8).collect();
        let sb = (b0.clone(), xor(&b, &b0));
        let sc = (c0.clone(), xor(&c, &c0));
        let (sx, sy) = (shares(ring, &x), shares(ring, &y));
        let (r0, r1) = parties_mem(move |p| {
            let bb = pick(p, &sb);
            let s = boolean::select(p, ring, &bb, &pick(p, &sx), &pick(p, &sy)).unwrap();
            let a = boolean::b2a(p, ring, &bb).unwrap();
            let bits = boolean::a2b(p, ring, &pick(p, &sx)).unwrap();
            let and = boolean::and(p, &bb, &pick(p, &sc)).unwrap();
            (s, a, bits, and)
        });
        let s = open(ring, &r0.0, &r1.0);
        let a = open(ring, &r0.1, &r1.1);
        for i in 0..64 {
            assert_eq!(s[i], if b[i] == 1 { y[i] } else { x[i] }, "select");
            assert_eq!(a[i], b[i] as u64, "b2a");
            assert_eq!(r0.2[i] ^ r1.2[i], x[i], "a2b");
            assert_eq!(r0.3[i] ^ r1.3[i], b[i] & c[i], "and");
        }
    }
}

#[test]
fn truncation_conversions_and_argmax_over_tcp() {
    let ring = Ring::new(64).unwrap();
    let x = inputs(ring, 24);
    let sx = shares(ring, &x);
    let mut rng = os_rng();
    let b: Vec<u8> = (0..24).map(|_| (rng.next_u32() & 1) as u8).collect();
    let b0: Vec<u8> = (0..24).map(|_| (rng.next_u32() & 1) as u8).collect();
    let sb = (b0.clone(), xor(&b, &b0));
    let (r0, r1) = parties_tcp(move |p| {
        let s = pick(p, &sx);
        let t = arith::trunc_faithful(p, ring, &s, 13).unwrap();
        let bits = boolean::a2b(p, ring, &s).unwrap();
        let a = boolean::b2a(p, ring, &pick(p, &sb)).unwrap();
        let (i, _) = compare::argmax(p, ring, &s, 6).unwrap();
        (t, bits, a, i)
    });
    let t = open(ring, &r0.0, &r1.0);
    let a = open(ring, &r0.2, &r1.2);
    for i in 0..24 {
        assert_eq!(t[i], ring.shr_signed(x[i], 13));
        assert_eq!(r0.1[i] ^ r1.1[i], x[i]);
        assert_eq!(a[i], b[i] as u64);
    }
    let idx = open(ring, &r0.3, &r1.3);
    for (w, chunk) in x.chunks(6).enumerate() {
        let vals: Vec<i64> = chunk.iter().map(|&v| ring.to_signed(v)).collect();
        let m = *vals.iter().max().unwrap();
        assert_eq!(idx[w], vals.iter().position(|&v| v == m).unwrap() as u64);
    }
}

/// `W X` with `W` in the clear at one party and `X` shared, by one-way correlated OTs:
/// equals the plaintext product in the ring, for either owner and several shapes; the
/// other party gets no matrix (a missing one at the owner is a typed error).
#[test]
fn matmul_owned_matches_the_plaintext_product() {
    let ring = Ring::new(40).unwrap();
    for (m, k, n) in [(10usize, 32usize, 1usize), (3, 4, 5), (1, 1, 1), (8, 9, 64)] {
        for owner in [PartyId::P0, PartyId::P1] {
            let mut rng = os_rng();
            let w = ring.random_vec(&mut rng, m * k);
            let x = ring.random_vec(&mut rng, k * n);
            let sx = shares(ring, &x);
            let w2 = w.clone();
            let (r0, r1) = parties_mem(move |p| {
                let s = pick(p, &sx);
                let mine = (p.id() == owner).then_some(w2.as_slice());
                arith::matmul_owned(p, ring, owner, mine, &s, m, k, n).unwrap()
            });
            assert_eq!(
                ring.add_vec(&r0, &r1),
                ring.matmul(&w, &x, m, k, n),
                "{m}x{k}x{n}, owner {owner:?}"
            );
        }
    }
    let (e0, _) = parties_mem(move |p| {
        if p.id() == PartyId::P1 {
            arith::matmul_owned(p, ring, PartyId::P1, None, &[0; 2], 1, 2, 1).is_err()
        } else {
            true
        }
    });
    assert!(e0);
}
