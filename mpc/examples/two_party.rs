//! Two parties over TCP (loopback here; pass `server ADDR` / `client ADDR` to run them in
//! two processes or on two machines) compute
//!
//! 1. a private comparison (Yao's millionaires): who is richer, and nothing else;
//! 2. a private dot product: party 0's feature vector with party 1's weights, revealed
//!    to party 1 only.
//!
//! `cargo run --release -p cipherml-mpc --example two_party`

use cipherml_mpc::fixed::FixedPoint;
use cipherml_mpc::net::{ChannelConfig, TcpChannel};
use cipherml_mpc::party::Party;
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::protocols::{arith, compare};
use cipherml_mpc::ring::Ring;
use cipherml_mpc::share::{receive_share, reveal, reveal_bits, share_input, PartyId, RevealTo};
use cipherml_mpc::triples::ot::OtTriples;
use cipherml_mpc::triples::TripleSource;
use cipherml_mpc::Result;

const DIM: usize = 8;

fn run(id: PartyId, ch: TcpChannel) -> Result<()> {
    let ring = Ring::new(64)?;
    let fp = FixedPoint::new(ring, 16)?;
    let mut p = Party::setup(id, ch, os_rng())?;
    let who = if id == PartyId::P0 {
        "party 0"
    } else {
        "party 1"
    };

    // 1. Millionaires: each inputs its wealth; both learn only "party 0 is richer".
    let wealth: u64 = if id == PartyId::P0 {
        1_250_000
    } else {
        990_000
    };
    let gt = compare::millionaire(&mut p, 32, &[wealth])?;
    let richer = reveal_bits(p.channel(), &gt)?[0] == 1;
    println!("[{who}] my wealth {wealth}; party 0 is richer: {richer}");

    // 2. Dot product: party 0 shares its features, party 1 its weights.
    let features = [0.5, -1.25, 2.0, 0.0, 3.5, -0.75, 1.0, 0.25];
    let weights = [0.1, 0.2, -0.3, 0.4, 0.05, -0.6, 0.7, 1.5];
    let (x, w) = if id == PartyId::P0 {
        let x = share_input(p.channel(), ring, &fp.encode_vec(&features)?, &mut os_rng())?;
        let w = receive_share(p.channel(), ring, DIM)?;
        (x, w)
    } else {
        let x = receive_share(p.channel(), ring, DIM)?;
        let w = share_input(p.channel(), ring, &fp.encode_vec(&weights)?, &mut os_rng())?;
        (x, w)
    };
    // (1 x DIM) times (DIM x 1) with a matrix triple made by OT (no third party).
    let t = OtTriples.matrix(&mut p, ring, 1, DIM, 1)?;
    let dot = arith::matmul(&mut p, &x, &w, &t)?;
    let dot = arith::trunc_faithful(&mut p, ring, &dot, fp.frac_bits())?;
    if let Some(v) = reveal(p.channel(), ring, id, RevealTo::Party(PartyId::P1), &dot)? {
        let expect: f64 = features.iter().zip(&weights).map(|(a, b)| a * b).sum();
        println!(
            "[{who}] private dot product = {:.4} (plaintext {:.4})",
            fp.decode(v[0]),
            expect
        );
    }
    let s = p.stats();
    println!(
        "[{who}] sent {} bytes in {} rounds, received {} bytes",
        s.bytes_sent, s.rounds_sent, s.bytes_received
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = ChannelConfig::default();
    match args.first().map(String::as_str) {
        Some("server") => {
            let addr = args.get(1).map_or("127.0.0.1:7878", String::as_str);
            let l = std::net::TcpListener::bind(addr)?;
            run(PartyId::P0, TcpChannel::accept(&l, cfg)?)
        }
        Some("client") => {
            let addr = args.get(1).map_or("127.0.0.1:7878", String::as_str);
            run(PartyId::P1, TcpChannel::connect_retry(addr, cfg)?)
        }
        _ => {
            let (c0, c1) = cipherml_mpc::net::tcp_loopback_pair(cfg)?;
            let h = std::thread::spawn(move || run(PartyId::P1, c1));
            run(PartyId::P0, c0)?;
            h.join().expect("party 1 panicked")
        }
    }
}
