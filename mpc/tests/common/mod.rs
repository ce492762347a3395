//! Helpers shared by the integration tests: run both parties, over memory or TCP.
#![allow(dead_code)]

use cipherml_mpc::net::{tcp_loopback_pair, ChannelConfig, MemoryChannel, TcpChannel};

/// Runs `f0` and `f1` as the two parties over an in-memory channel.
pub fn run_mem<A, B, F0, F1>(f0: F0, f1: F1) -> (A, B)
where
    A: Send + 'static,
    B: Send + 'static,
    F0: FnOnce(&mut MemoryChannel) -> A + Send + 'static,
    F1: FnOnce(&mut MemoryChannel) -> B + Send + 'static,
{
    let cfg = ChannelConfig {
        timeout: std::time::Duration::from_secs(30),
        ..Default::default()
    };
    let (mut c0, mut c1) = MemoryChannel::pair_with(cfg);
    let h = std::thread::spawn(move || f1(&mut c1));
    let a = f0(&mut c0);
    (a, h.join().expect("party 1 panicked"))
}

/// Runs `f0` and `f1` as the two parties over TCP on loopback.
pub fn run_tcp<A, B, F0, F1>(f0: F0, f1: F1) -> (A, B)
where
    A: Send + 'static,
    B: Send + 'static,
    F0: FnOnce(&mut TcpChannel) -> A + Send + 'static,
    F1: FnOnce(&mut TcpChannel) -> B + Send + 'static,
{
    let cfg = ChannelConfig {
        timeout: std::time::Duration::from_secs(30),
        ..Default::default()
    };
    let (mut c0, mut c1) = tcp_loopback_pair(cfg).expect("loopback");
    let h = std::thread::spawn(move || f1(&mut c1));
    let a = f0(&mut c0);
    (a, h.join().expect("party 1 panicked"))
}

use cipherml_mpc::party::Party;
use cipherml_mpc::share::PartyId;
use rand_chacha::ChaCha20Rng;

/// A party over memory.
pub type MemParty = Party<MemoryChannel, ChaCha20Rng>;
/// A party over TCP.
pub type TcpParty = Party<TcpChannel, ChaCha20Rng>;

/// Sets up both parties over memory and runs `f(party)` on each; returns (P0, P1) results.
pub fn parties_mem<T, F>(f: F) -> (T, T)
where
    T: Send + 'static,
    F: Fn(&mut MemParty) -> T + Send + Sync + Clone + 'static,
{
    let f1 = f.clone();
    run_mem(
        move |c| {
            let mut p = Party::setup(PartyId::P0, c_take(c), cipherml_mpc::prg::os_rng()).unwrap();
            f(&mut p)
        },
        move |c| {
            let mut p = Party::setup(PartyId::P1, c_take(c), cipherml_mpc::prg::os_rng()).unwrap();
            f1(&mut p)
        },
    )
}

/// Same over TCP loopback.
pub fn parties_tcp<T, F>(f: F) -> (T, T)
where
    T: Send + 'static,
    F: Fn(&mut TcpParty) -> T + Send + Sync + Clone + 'static,
{
    let cfg = ChannelConfig {
        timeout: std::time::Duration::from_secs(30),
        ..Default::default()
    };
    let (c0, c1) = tcp_loopback_pair(cfg).expect("loopback");
    let f1 = f.clone();
    let h = std::thread::spawn(move || {
        let mut p = Party::setup(PartyId::P1, c1, cipherml_mpc::prg::os_rng()).unwrap();
        f1(&mut p)
    });
    let mut p = Party::setup(PartyId::P0, c0, cipherml_mpc::prg::os_rng()).unwrap();
    let a = f(&mut p);
    (a, h.join().expect("party 1 panicked"))
}

fn c_take(c: &mut MemoryChannel) -> MemoryChannel {
    let (dummy, _) = MemoryChannel::pair();
    std::mem::replace(c, dummy)
}
