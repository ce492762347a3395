//! Criterion benches of the MPC layer: both parties in one process over the in-memory
//! channel, one thread each (the TCP figures come from `cipherml_mpc::bench`).

use std::time::{Duration, Instant};

use cipherml_mpc::net::MemoryChannel;
use cipherml_mpc::ot::{OtReceiver, OtSender};
use cipherml_mpc::party::Party;
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::protocols::compare;
use cipherml_mpc::ring::Ring;
use cipherml_mpc::share::PartyId;
use criterion::{criterion_group, criterion_main, Criterion};

fn ot_extension(c: &mut Criterion) {
    let n = 1 << 16;
    c.bench_function("ot.iknp_2e16_memory", |b| {
        b.iter_custom(|iters| {
            let (mut c0, mut c1) = MemoryChannel::pair();
            let h = std::thread::spawn(move || {
                let mut rng = os_rng();
                let mut r = OtReceiver::setup(&mut c1, &mut rng).unwrap();
                for _ in 0..iters {
                    r.random_ot(&mut c1, n, &mut rng).unwrap();
                }
            });
            let mut s = OtSender::setup(&mut c0, &mut os_rng()).unwrap();
            let t = Instant::now();
            for _ in 0..iters {
                s.random_ot(&mut c0, n).unwrap();
            }
            let e = t.elapsed();
            h.join().unwrap();
            e
        })
    });
}

fn relu(c: &mut Criterion) {
    let n = 1 << 12;
    let ring = Ring::new(32).unwrap();
    c.bench_function("mpc.relu_2e12_memory", |b| {
        b.iter_custom(|iters| {
            let (c0, c1) = MemoryChannel::pair();
            let h = std::thread::spawn(move || {
                let mut p = Party::setup(PartyId::P1, c1, os_rng()).unwrap();
                let x = ring.random_vec(&mut os_rng(), n);
                for _ in 0..iters {
                    compare::relu(&mut p, ring, &x).unwrap();
                }
            });
            let mut p = Party::setup(PartyId::P0, c0, os_rng()).unwrap();
            let x = ring.random_vec(&mut os_rng(), n);
            let t = Instant::now();
            for _ in 0..iters {
                compare::relu(&mut p, ring, &x).unwrap();
            }
            let e = t.elapsed();
            h.join().unwrap();
            e
        })
    });
}

#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3));
    targets = ot_extension, relu
    }
}
criterion_main!(group::benches);
