//! Silent OT (Ferret): the correlations checked directly, over memory and TCP, across
//! refills, the end of the bootstrap iteration and (in one test) a whole main iteration.

mod common;
use common::{run_mem, run_tcp};

use cipherml_mpc::net::Channel;
use cipherml_mpc::ot::ferret::{FerretReceiver, FerretSender, BOOT, MAIN};
use cipherml_mpc::ot::{OtReceiver, OtSender};
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::ring::Ring;
use rand::Rng;

/// Random COTs straight from Ferret: `t = q xor r delta` for every OT, in batches of the
/// given sizes.
fn ferret_batches<C: Channel + Send + 'static>(
    sizes: Vec<usize>,
    run: impl FnOnce(
        Box<dyn FnOnce(&mut C) -> (u128, Vec<Vec<u128>>) + Send>,
        Box<dyn FnOnce(&mut C) -> Vec<(Vec<u8>, Vec<u128>)> + Send>,
    ) -> ((u128, Vec<Vec<u128>>), Vec<(Vec<u8>, Vec<u128>)>),
) {
    let s2 = sizes.clone();
    let ((delta, qs), rs) = run(
        Box::new(move |c: &mut C| {
            let mut rng = os_rng();
            let delta = rng.random::<u128>() | 1;
            let mut iknp = OtSender::setup_with_delta(c, delta, &mut rng).unwrap();
            let mut f = FerretSender::bootstrap(c, &mut iknp, &mut rng).unwrap();
            assert_eq!(f.delta(), iknp.delta());
            let qs = sizes.iter().map(|&n| f.take(c, n).unwrap()).collect();
            (f.delta(), qs)
        }),
        Box::new(move |c: &mut C| {
            let mut rng = os_rng();
            let mut iknp = OtReceiver::setup(c, &mut rng).unwrap();
            let mut f = FerretReceiver::bootstrap(c, &mut iknp, &mut rng).unwrap();
            s2.iter().map(|&n| f.take(c, n).unwrap()).collect()
        }),
    );
    assert_eq!(delta & 1, 1, "delta's lowest bit is set");
    let mut ones = 0usize;
    let mut total = 0usize;
    for (q, (r, t)) in qs.iter().zip(&rs) {
        assert_eq!(q.len(), t.len());
        assert_eq!(r.len(), t.len());
        for i in 0..q.len() {
            assert!(r[i] <= 1);
            assert_eq!(q[i] & 1, 0, "sender blocks have their lowest bit clear");
            let expect = q[i] ^ if r[i] == 1 { delta } else { 0 };
            assert_eq!(t[i], expect, "OT {i} of a batch of {}", q.len());
            ones += r[i] as usize;
        }
        total += q.len();
    }
    // Choice bits are uniform: 5 standard deviations.
    let sd = (total as f64 / 4.0).sqrt();
    assert!(
        ((ones as f64) - total as f64 / 2.0).abs() < 5.0 * sd,
        "{ones} ones in {total}"
    );
    // The sender's blocks look random (no repeats among the first 100,000).
    let mut seen = std::collections::HashSet::new();
    for q in qs.iter().flatten().take(100_000) {
        assert!(seen.insert(*q), "repeated sender block");
    }
}

#[test]
fn ferret_correlations_hold_across_refills_over_memory() {
    // Past the bootstrap iteration's pool (329,472) into the first main iteration.
    let usable_boot = BOOT.n() - MAIN.base();
    ferret_batches(vec![1, 1000, usable_boot - 1001, 5, 300_000, 77], |a, b| {
        run_mem(a, b)
    });
}

#[test]
fn ferret_correlations_hold_over_tcp() {
    ferret_batches(vec![70_000, 400_000], |a, b| run_tcp(a, b));
}

#[test]
fn ferret_correlations_hold_across_a_whole_main_iteration() {
    // One main iteration hands out n - base OTs; take more, so the second iteration
    // (keyed by outputs of the first) runs too.
    let usable = MAIN.n() - MAIN.base();
    let first = BOOT.n() - MAIN.base();
    ferret_batches(vec![first, usable, 200_000], |a, b| run_mem(a, b));
}

#[test]
fn silent_chosen_random_and_correlated_ot_match_their_definitions() {
    let n = 5000;
    let mut rng = os_rng();
    let choices: Vec<u8> = (0..n).map(|_| rng.random::<u8>() & 1).collect();
    let ring = Ring::new(32).unwrap();
    let deltas: Vec<u64> = ring.random_vec(&mut rng, n);
    let (c2, d2) = (choices.clone(), deltas.clone());
    let ((delta, q, pairs, msgs, x0), (t, (rc, rh), got, xs)) = run_tcp(
        move |c| {
            let mut s = OtSender::setup_silent(c, &mut os_rng()).unwrap();
            assert!(s.is_silent());
            let q = s.cot(c, n).unwrap();
            let pairs = s.random_ot(c, n).unwrap();
            let msgs: Vec<[u128; 2]> = (0..n as u128).map(|i| [i, i << 64 | 7]).collect();
            s.send_chosen(c, &msgs).unwrap();
            let x0 = s.send_correlated(c, ring, &d2, 1).unwrap();
            (s.delta(), q, pairs, msgs, x0)
        },
        move |c| {
            let mut r = OtReceiver::setup_silent(c, &mut os_rng()).unwrap();
            let t = r.cot(c, &c2).unwrap();
            let rnd = r.random_ot(c, n, &mut os_rng()).unwrap();
            let got = r.receive_chosen(c, &c2).unwrap();
            let xs = r.receive_correlated(c, ring, &c2, 1).unwrap();
            (t, rnd, got, xs)
        },
    );
    for i in 0..n {
        let c = choices[i] as usize;
        assert_eq!(t[i], q[i] ^ if c == 1 { delta } else { 0 });
        assert_eq!(rh[i], pairs[i][rc[i] as usize]);
        assert_ne!(pairs[i][0], pairs[i][1]);
        assert_eq!(got[i], msgs[i][c]);
        let expect = if c == 1 {
            ring.add(x0[i], deltas[i])
        } else {
            x0[i]
        };
        assert_eq!(xs[i], expect);
    }
}
