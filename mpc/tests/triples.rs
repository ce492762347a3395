//! Beaver triples from each source reconstruct to `c = a b` (and `C = A B`), and drive a
//! multiplication; dealer over TCP.

mod common;
use common::{parties_mem, run_mem, MemParty};

use cipherml_mpc::net::{tcp_loopback_pair, ChannelConfig, MemoryChannel};
use cipherml_mpc::party::Party;
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::protocols::arith;
use cipherml_mpc::ring::Ring;
use cipherml_mpc::share::{split, PartyId};
use cipherml_mpc::triples::dealer::{Dealer, DealerClient};
use cipherml_mpc::triples::he::{HeTripleClient, HeTripleServer, HeTriples};
use cipherml_mpc::triples::ot::bit_triples;
use cipherml_mpc::triples::{ArithTriples, TripleSource};

fn check(t0: &ArithTriples, t1: &ArithTriples) {
    let r = t0.ring;
    let a = r.add_vec(&t0.a, &t1.a);
    let b = r.add_vec(&t0.b, &t1.b);
    let c = r.add_vec(&t0.c, &t1.c);
    assert_eq!(c, r.mul_vec(&a, &b));
}

#[test]
fn he_triples_are_correct() {
    for bits in [32u32, 64, 13] {
        let ring = Ring::new(bits).unwrap();
        let n = 9000; // two batches
        let (t0, t1) = run_mem(
            move |c| {
                let s = HeTripleServer::setup(c).unwrap();
                s.triples(c, ring, n, &mut os_rng()).unwrap()
            },
            move |c| {
                let cl = HeTripleClient::setup(c, &mut os_rng()).unwrap();
                cl.triples(c, ring, n, &mut os_rng()).unwrap()
            },
        );
        assert_eq!(t0.len(), n);
        check(&t0, &t1);
    }
}

#[test]
fn he_triple_source_drives_mul() {
    let ring = Ring::new(32).unwrap();
    let x = ring.random_vec(&mut os_rng(), 100);
    let y = ring.random_vec(&mut os_rng(), 100);
    let sx = split(ring, &x, &mut os_rng());
    let sy = split(ring, &y, &mut os_rng());
    let (z0, z1) = parties_mem(move |p: &mut MemParty| {
        let mut src = if p.is_p0() {
            HeTriples::Server(HeTripleServer::setup(p.channel()).unwrap())
        } else {
            let mut rng = os_rng();
            HeTriples::Client(HeTripleClient::setup(p.channel(), &mut rng).unwrap())
        };
        let t = src.arith(p, ring, 100).unwrap();
        let (a, b) = if p.is_p0() {
            (&sx.0, &sy.0)
        } else {
            (&sx.1, &sy.1)
        };
        arith::mul(p, a, b, &t).unwrap()
    });
    assert_eq!(ring.add_vec(&z0, &z1), ring.mul_vec(&x, &y));
}

#[test]
fn dealer_over_tcp() {
    let ring = Ring::new(64).unwrap();
    let cfg = ChannelConfig::default();
    let (d0, p0d) = tcp_loopback_pair(cfg).unwrap();
    let (d1, p1d) = tcp_loopback_pair(cfg).unwrap();
    let dealer = std::thread::spawn(move || {
        let (mut d0, mut d1) = (d0, d1);
        Dealer::serve(&mut d0, &mut d1, &mut os_rng()).unwrap()
    });
    let x = ring.random_vec(&mut os_rng(), 50);
    let y = ring.random_vec(&mut os_rng(), 50);
    let sx = split(ring, &x, &mut os_rng());
    let sy = split(ring, &y, &mut os_rng());
    let (a, b) = (
        ring.random_vec(&mut os_rng(), 6),
        ring.random_vec(&mut os_rng(), 6),
    );
    let (sa, sb) = (
        split(ring, &a, &mut os_rng()),
        split(ring, &b, &mut os_rng()),
    );
    let (c0, c1) = MemoryChannel::pair();
    let run = move |id: PartyId, c, dch, x: Vec<u64>, y: Vec<u64>, a: Vec<u64>, b: Vec<u64>| {
        let mut p = Party::setup(id, c, os_rng()).unwrap();
        let mut dc = DealerClient::new(id, dch);
        let t = dc.arith(&mut p, ring, 50).unwrap();
        let z = arith::mul(&mut p, &x, &y, &t).unwrap();
        let mt = dc.matrix(&mut p, ring, 2, 3, 2).unwrap();
        let w = arith::matmul(&mut p, &a, &b, &mt).unwrap();
        (t, z, w)
    };
    let (s1, r1) = ((sx.1.clone(), sy.1.clone()), (sa.1.clone(), sb.1.clone()));
    let h = std::thread::spawn(move || run(PartyId::P1, c1, p1d, s1.0, s1.1, r1.0, r1.1));
    let r0 = run(PartyId::P0, c0, p0d, sx.0, sy.0, sa.0, sb.0);
    let r1 = h.join().unwrap();
    check(&r0.0, &r1.0);
    assert_eq!(ring.add_vec(&r0.1, &r1.1), ring.mul_vec(&x, &y));
    assert_eq!(ring.add_vec(&r0.2, &r1.2), ring.matmul(&a, &b, 2, 3, 2));
    assert_eq!(dealer.join().unwrap(), 2);
}

#[test]
fn bit_triples_are_correct() {
    for width in [1u32, 2, 8] {
        let (t0, t1) = parties_mem(move |p| bit_triples(p, 1000, width).unwrap());
        let mk = ((1u16 << width) - 1) as u8;
        for i in 0..1000 {
            let a = t0.a[i] ^ t1.a[i];
            let b = t0.b[i] ^ t1.b[i];
            let c = t0.c[i] ^ t1.c[i];
            assert_eq!(c, if a == 1 { b & mk } else { 0 });
        }
    }
}

/// OT matrix triples reconstruct to `A B = C` in both orientations (the source transposes
/// the triple when that sends fewer bytes: `n > m`).
#[test]
fn ot_matrix_triples_are_correct_in_both_orientations() {
    use cipherml_mpc::triples::ot::OtTriples;
    let ring = Ring::new(40).unwrap();
    for (m, k, n) in [
        (2usize, 3usize, 5usize),
        (5, 3, 2),
        (1, 4, 1),
        (3, 1, 7),
        (1, 10, 10),
    ] {
        let (t0, t1) = parties_mem(move |p| OtTriples.matrix(p, ring, m, k, n).unwrap());
        let a = ring.add_vec(&t0.a, &t1.a);
        let b = ring.add_vec(&t0.b, &t1.b);
        let c = ring.add_vec(&t0.c, &t1.c);
        assert_eq!((t0.a.len(), t0.b.len(), t0.c.len()), (m * k, k * n, m * n));
        assert_eq!(c, ring.matmul(&a, &b, m, k, n), "shape {m}x{k}x{n}");
    }
}
