//! Approximations against `f64` within their stated errors (l = 64, f = 16, and the
//! inference ring l = 40, f = 12), over memory with OT triples and once over TCP with the
//! dealer-free HE triples.

mod common;
use common::{parties_mem, parties_tcp};

use cipherml_mpc::fixed::FixedPoint;
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::protocols::approx;
use cipherml_mpc::ring::Ring;
use cipherml_mpc::share::split;
use cipherml_mpc::triples::he::{HeTripleClient, HeTripleServer, HeTriples};
use cipherml_mpc::triples::ot::OtTriples;

fn fp() -> FixedPoint {
    FixedPoint::new(Ring::new(64).unwrap(), 16).unwrap()
}

fn shared(xs: &[f64]) -> (Vec<u64>, Vec<u64>) {
    let f = fp();
    split(f.ring(), &f.encode_vec(xs).unwrap(), &mut os_rng())
}

fn reveal(a: &[u64], b: &[u64]) -> Vec<f64> {
    let f = fp();
    f.decode_vec(&f.ring().add_vec(a, b))
}

#[test]
fn exp_reciprocal_sigmoid_softmax() {
    let ex: Vec<f64> = vec![0.0, -1.0, -0.5, -2.0, -5.5, -10.0, -20.0, -300.0, -1e-4];
    let rx: Vec<f64> = vec![1.0, 1.5, 2.0, 3.7, 7.9, 8.0];
    let sx: Vec<f64> = vec![0.0, -1.0, 1.0, 4.2, -4.2, 30.0, -30.0, 0.3, -1000.0, 1000.0];
    let mx: Vec<f64> = vec![
        1.0, 2.0, 3.0, -1.0, 0.0, 0.0, 0.0, 0.0, 10.0, -10.0, 5.0, 9.5,
    ];
    let (se, sr, ss, sm) = (shared(&ex), shared(&rx), shared(&sx), shared(&mx));
    let (r0, r1) = parties_mem(move |p| {
        let pick = |s: &(Vec<u64>, Vec<u64>)| if p.is_p0() { s.0.clone() } else { s.1.clone() };
        let (a, b, c, d) = (pick(&se), pick(&sr), pick(&ss), pick(&sm));
        let mut src = OtTriples;
        let f = fp();
        (
            approx::exp(p, &mut src, f, &a).unwrap(),
            approx::reciprocal(p, &mut src, f, &b, 8.0).unwrap(),
            approx::sigmoid(p, &mut src, f, &c).unwrap(),
            approx::softmax(p, &mut src, f, &d, 4).unwrap(),
        )
    });
    for (x, y) in ex.iter().zip(reveal(&r0.0, &r1.0)) {
        // The limit's error (at most 2^-8.9, at x = -2) plus the local truncation of
        // x / 2^8, one unit of 2^-16 either way, raised to the 2^8th power (2^-8).
        assert!((x.exp() - y).abs() <= 2f64.powi(-7), "exp({x}) = {y}");
    }
    for (x, y) in rx.iter().zip(reveal(&r0.1, &r1.1)) {
        assert!(((1.0 / x) - y).abs() * x <= 2f64.powi(-10), "1/{x} = {y}");
    }
    for (x, y) in sx.iter().zip(reveal(&r0.2, &r1.2)) {
        let s = 1.0 / (1.0 + (-x).exp());
        assert!((s - y).abs() <= 2f64.powi(-8), "sigmoid({x}) = {y} vs {s}");
    }
    let sm = reveal(&r0.3, &r1.3);
    for (row, got) in mx.chunks(4).zip(sm.chunks(4)) {
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
        for (v, g) in row.iter().zip(got) {
            let want = (v - m).exp() / s;
            assert!(
                (want - g).abs() <= 2f64.powi(-7),
                "softmax {row:?}: {g} vs {want}"
            );
        }
    }
}

#[test]
fn exp_and_softmax_within_stated_error_in_a_40_bit_ring() {
    // No headroom for local truncation: exact truncations and guard bits. Before them, the
    // rounding of x / 2^8 at 2^-12 alone, raised to the 2^8th power, reached 2^-4.
    let f = FixedPoint::new(Ring::new(40).unwrap(), 12).unwrap();
    let ex: Vec<f64> = (0..=160)
        .map(|i| -(i as f64) / 8.0)
        .chain([-1e-3, -300.0])
        .collect();
    let mx: Vec<f64> = vec![
        0.31, -0.02, 0.7, 2.5, -1.0, 0.0, 0.25, 0.125, 3.0, -3.0, 1.5, 1.49,
    ];
    let sh = |v: &[f64]| split(f.ring(), &f.encode_vec(v).unwrap(), &mut os_rng());
    let (se, sm) = (sh(&ex), sh(&mx));
    for _ in 0..3 {
        let (se, sm) = (se.clone(), sm.clone());
        let (r0, r1) = parties_mem(move |p| {
            let p0 = p.is_p0();
            let pick = |s: &(Vec<u64>, Vec<u64>)| if p0 { s.0.clone() } else { s.1.clone() };
            let (a, b) = (pick(&se), pick(&sm));
            let mut src = OtTriples;
            (
                approx::exp(p, &mut src, f, &a).unwrap(),
                approx::softmax(p, &mut src, f, &b, 3).unwrap(),
            )
        });
        let open = |a: &[u64], b: &[u64]| f.decode_vec(&f.ring().add_vec(a, b));
        for (x, y) in ex.iter().zip(open(&r0.0, &r1.0)) {
            assert!((x.exp() - y).abs() <= 2f64.powi(-7), "exp({x}) = {y}");
        }
        for (row, got) in mx.chunks(3).zip(open(&r0.1, &r1.1).chunks(3)) {
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
            for (v, g) in row.iter().zip(got) {
                let want = (v - m).exp() / s;
                assert!(
                    (want - g).abs() <= 2f64.powi(-7),
                    "softmax {row:?}: {g} vs {want}"
                );
            }
        }
    }
}

#[test]
fn sigmoid_over_tcp_with_he_triples() {
    let xs: Vec<f64> = vec![0.0, 2.0, -2.0, 0.5];
    let s = shared(&xs);
    let (r0, r1) = parties_tcp(move |p| {
        let mut src = if p.is_p0() {
            HeTriples::Server(HeTripleServer::setup(p.channel()).unwrap())
        } else {
            let mut rng = os_rng();
            HeTriples::Client(HeTripleClient::setup(p.channel(), &mut rng).unwrap())
        };
        let mine = if p.is_p0() { s.0.clone() } else { s.1.clone() };
        approx::sigmoid(p, &mut src, fp(), &mine).unwrap()
    });
    for (x, y) in xs.iter().zip(reveal(&r0, &r1)) {
        let s = 1.0 / (1.0 + (-x).exp());
        assert!((s - y).abs() <= 2f64.powi(-8), "sigmoid({x}) = {y}");
    }
}

/// The piecewise-linear sigmoid in a 40-bit ring (12 fractional bits: the hybrid engine's
/// ring) and in the training ring (64 bits, 16 fractional, comparisons in the narrow ring)
/// is within its stated error of the sigmoid everywhere in range, exactly constant far
/// out; in the training ring, inputs beyond `2^15` still give values in `[0, 1]`.
#[test]
fn sigmoid_pwl_within_stated_error_in_both_rings() {
    for (bits, frac) in [(40, 12), (64, 16)] {
        let f = FixedPoint::new(Ring::new(bits).unwrap(), frac).unwrap();
        let mut xs: Vec<f64> = (-90..=90)
            .map(|i| i as f64 / 10.0)
            .chain([-1000.0, 1000.0, 6.0, -6.0, 0.05, -32767.5, 32767.0])
            .collect();
        let beyond = [40000.0, -40000.0, 1e6, -1e6, 65536.5, -32768.0];
        if bits == 64 {
            xs.extend(beyond);
        }
        let (s0, s1) = split(f.ring(), &f.encode_vec(&xs).unwrap(), &mut os_rng());
        let (r0, r1) = parties_mem(move |p| {
            let x = if p.is_p0() { s0.clone() } else { s1.clone() };
            approx::sigmoid_pwl(p, f, &x).unwrap()
        });
        let got = f.decode_vec(&f.ring().add_vec(&r0, &r1));
        let within = if bits == 64 {
            xs.len() - beyond.len()
        } else {
            xs.len()
        };
        for (x, y) in xs.iter().zip(&got).take(within) {
            let want = 1.0 / (1.0 + (-x).exp());
            assert!(
                (y - want).abs() <= approx::SIGMOID_PWL_ERROR,
                "l={bits}: sigmoid_pwl({x}) = {y}, want {want}"
            );
        }
        for (x, y) in xs.iter().zip(&got).skip(within) {
            assert!(
                (-approx::SIGMOID_PWL_ERROR..=1.0 + approx::SIGMOID_PWL_ERROR).contains(y),
                "sigmoid_pwl({x}) = {y} beyond the narrow range"
            );
        }
        // Constant beyond the outer knots: -1000 gives what -6 gives, 1000 what 6 gives (up
        // to the last place of the truncation and of |x|).
        let ulp = 2.0 / f.scale();
        let at = |v: f64| got[xs.iter().position(|&x| x == v).unwrap()];
        for (far, knot) in [
            (-1000.0, -6.0),
            (1000.0, 6.0),
            (-32767.5, -6.0),
            (32767.0, 6.0),
        ] {
            assert!(
                (at(far) - at(knot)).abs() <= ulp,
                "l={bits}: {} vs {}",
                at(far),
                at(knot)
            );
        }
    }
}

/// The piecewise-linear tanh in a 40-bit ring (12 fractional bits) is within its stated
/// error of tanh on a fine grid (knots and points between them), odd, and exactly constant
/// beyond the last knot; in the 64-bit training ring too.
#[test]
fn tanh_pwl_within_stated_error() {
    for (bits, frac) in [(40, 12), (64, 16)] {
        let f = FixedPoint::new(Ring::new(bits).unwrap(), frac).unwrap();
        let xs: Vec<f64> = (-1000..=1000)
            .map(|i| i as f64 / 200.0)
            .chain([-1000.0, 1000.0, 4.0, -4.0, 0.33, -0.66])
            .collect();
        let (s0, s1) = split(f.ring(), &f.encode_vec(&xs).unwrap(), &mut os_rng());
        let (r0, r1) = parties_mem(move |p| {
            let x = if p.is_p0() { s0.clone() } else { s1.clone() };
            approx::tanh_pwl(p, f, &x).unwrap()
        });
        let got = f.decode_vec(&f.ring().add_vec(&r0, &r1));
        let mut worst = 0.0f64;
        for (x, y) in xs.iter().zip(&got) {
            let e = (y - x.tanh()).abs();
            worst = worst.max(e);
            assert!(
                e <= approx::TANH_PWL_ERROR,
                "tanh_pwl({x}) = {y}, want {}",
                x.tanh()
            );
        }
        // The error bound is not loose by more than a factor of two here.
        assert!(worst > approx::TANH_PWL_ERROR / 2.0, "{worst}");
        let n = xs.len();
        let ulp = 2.0 / f.scale();
        assert!((got[n - 6] - got[n - 3]).abs() <= ulp, "{got:?}");
        assert!((got[n - 5] - got[n - 4]).abs() <= ulp, "{got:?}");
        // Odd: tanh(-x) = -tanh(x), up to rounding.
        for i in 0..1000 {
            assert!(
                (got[i] + got[2000 - i]).abs() <= 2.0 * ulp,
                "{} {}",
                got[i],
                got[2000 - i]
            );
        }
    }
}

/// The chords of the piecewise-linear tanh, in `f64`, on a grid of step 2^-14 over [-8, 8]:
/// within the stated error less the fixed-point rounding.
#[test]
fn tanh_pwl_chords_are_within_the_stated_error() {
    let knots = [
        0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0,
    ];
    let chord = |a: f64| {
        let a = a.min(4.0);
        let i = knots
            .iter()
            .rposition(|&k| k <= a)
            .unwrap()
            .min(knots.len() - 2);
        let (k0, k1) = (knots[i], knots[i + 1]);
        k0.tanh() + (a - k0) / (k1 - k0) * (k1.tanh() - k0.tanh())
    };
    let worst = (0..=(8 << 14))
        .map(|i| i as f64 / (1 << 14) as f64)
        .map(|a| (chord(a) - a.tanh()).abs())
        .fold(0.0, f64::max);
    assert!(worst < 0.0061, "{worst}");
    assert!(worst + 2.0 / 4096.0 <= approx::TANH_PWL_ERROR, "{worst}");
}

/// The closer sigmoid (tanh's chords) is within its stated error on a fine grid, in both
/// engine rings, and constant far out.
#[test]
fn sigmoid_precise_within_stated_error() {
    for (bits, frac) in [(40, 12), (64, 16)] {
        let f = FixedPoint::new(Ring::new(bits).unwrap(), frac).unwrap();
        let xs: Vec<f64> = (-1200..=1200)
            .map(|i| i as f64 / 100.0)
            .chain([-1000.0, 1000.0])
            .collect();
        let (s0, s1) = split(f.ring(), &f.encode_vec(&xs).unwrap(), &mut os_rng());
        let (r0, r1) = parties_mem(move |p| {
            let x = if p.is_p0() { s0.clone() } else { s1.clone() };
            approx::sigmoid_precise(p, f, &x).unwrap()
        });
        let got = f.decode_vec(&f.ring().add_vec(&r0, &r1));
        let mut worst = 0.0f64;
        for (x, y) in xs.iter().zip(&got) {
            let want = 1.0 / (1.0 + (-x).exp());
            worst = worst.max((y - want).abs());
            assert!(
                (y - want).abs() <= approx::SIGMOID_PRECISE_ERROR,
                "sigmoid_precise({x}) = {y}, want {want}"
            );
        }
        assert!(worst > approx::SIGMOID_PRECISE_ERROR / 2.0, "{worst}");
        const { assert!(approx::SIGMOID_PRECISE_ERROR < approx::SIGMOID_PWL_ERROR / 3.0) };
        let n = xs.len();
        assert!((got[n - 2] - got[0]).abs() <= 2.0 / f.scale());
    }
}
