//! A peer that closes the connection, stalls, or sends a short, oversized or garbled
//! message makes the other side return an error within the timeout: no hang, no panic.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use cipherml_mpc::net::{recv_ring, Channel, ChannelConfig, MemoryChannel, TcpChannel};
use cipherml_mpc::ot::{OtReceiver, OtSender};
use cipherml_mpc::party::Party;
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::protocols::compare;
use cipherml_mpc::ring::Ring;
use cipherml_mpc::share::PartyId;
use cipherml_mpc::Error;

fn cfg(ms: u64) -> ChannelConfig {
    ChannelConfig {
        timeout: Duration::from_millis(ms),
        max_message_len: 1 << 20,
    }
}

/// A raw TCP peer that runs `f` on the socket, and our channel end.
fn raw_peer(
    f: impl FnOnce(std::net::TcpStream) + Send + 'static,
) -> (TcpChannel, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        f(s);
    });
    (TcpChannel::connect(addr, cfg(300)).unwrap(), h)
}

#[test]
fn tcp_peer_closes() {
    let (mut ch, h) = raw_peer(drop);
    let t = Instant::now();
    let e = ch.recv().unwrap_err();
    assert!(matches!(e, Error::PeerClosed), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
    h.join().unwrap();
}

#[test]
fn tcp_peer_stalls() {
    let (mut ch, h) = raw_peer(|s| {
        std::thread::sleep(Duration::from_millis(800));
        drop(s);
    });
    let t = Instant::now();
    let e = ch.recv().unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert!(t.elapsed() < Duration::from_millis(750));
    // The channel stays failed rather than desynchronized.
    assert!(ch.recv().is_err());
    h.join().unwrap();
}

#[test]
fn tcp_short_and_oversized_messages() {
    // Announces 100 bytes, sends 10, closes.
    let (mut ch, h) = raw_peer(|mut s| {
        s.write_all(&100u32.to_le_bytes()).unwrap();
        s.write_all(&[7u8; 10]).unwrap();
    });
    assert!(matches!(ch.recv().unwrap_err(), Error::PeerClosed));
    h.join().unwrap();
    // Announces 4 GiB: rejected before allocating.
    let (mut ch, h) = raw_peer(|mut s| {
        s.write_all(&u32::MAX.to_le_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    });
    assert!(matches!(
        ch.recv().unwrap_err(),
        Error::MessageTooLarge { .. }
    ));
    h.join().unwrap();
    // Half a length prefix, then a stall.
    let (mut ch, h) = raw_peer(|mut s| {
        s.write_all(&[1, 0]).unwrap();
        std::thread::sleep(Duration::from_millis(700));
    });
    assert!(matches!(ch.recv().unwrap_err(), Error::Timeout { .. }));
    h.join().unwrap();
}

#[test]
fn garbled_typed_messages() {
    let ring = Ring::new(32).unwrap();
    let (mut a, mut b) = MemoryChannel::pair_with(cfg(500));
    // Wrong length.
    a.send(&[1, 2, 3]).unwrap();
    a.flush().unwrap();
    assert!(matches!(
        recv_ring(&mut b, ring, 1, "x"),
        Err(Error::Malformed { .. })
    ));
    // Unreduced value in a 31-bit ring.
    let r31 = Ring::new(31).unwrap();
    a.send(&u32::MAX.to_le_bytes()).unwrap();
    a.flush().unwrap();
    assert!(matches!(
        recv_ring(&mut b, r31, 1, "x"),
        Err(Error::Malformed { .. })
    ));
}

#[test]
fn base_ot_with_garbled_points() {
    // A sender that sends a non-point as A.
    let (mut a, mut b) = MemoryChannel::pair_with(cfg(500));
    a.send(&[0xffu8; 32]).unwrap();
    a.flush().unwrap();
    let e = OtSender::setup(&mut b, &mut os_rng()).unwrap_err();
    assert!(matches!(e, Error::ProtocolAborted { .. }), "{e:?}");
    // A short A.
    let (mut a, mut b) = MemoryChannel::pair_with(cfg(500));
    a.send(&[1u8; 5]).unwrap();
    a.flush().unwrap();
    assert!(matches!(
        OtSender::setup(&mut b, &mut os_rng()).unwrap_err(),
        Error::Malformed { .. }
    ));
    // A receiver that answers with garbage points.
    let (mut a, mut b) = MemoryChannel::pair_with(cfg(500));
    let h = std::thread::spawn(move || OtReceiver::setup(&mut a, &mut os_rng()).map(|_| ()));
    let _ = b.recv().unwrap();
    b.send(&vec![0xeeu8; 32 * 128]).unwrap();
    b.flush().unwrap();
    assert!(matches!(
        h.join().unwrap().unwrap_err(),
        Error::ProtocolAborted { .. }
    ));
}

#[test]
fn protocol_with_a_peer_that_leaves_midway() {
    // Party 1 sets up, then drops the channel instead of running ReLU.
    let (c0, c1) = MemoryChannel::pair_with(cfg(2000));
    let h = std::thread::spawn(move || {
        let p = Party::setup(PartyId::P1, c1, os_rng()).unwrap();
        drop(p);
    });
    let mut p = Party::setup(PartyId::P0, c0, os_rng()).unwrap();
    h.join().unwrap();
    let ring = Ring::new(32).unwrap();
    let t = Instant::now();
    let e = compare::relu(&mut p, ring, &[1, 2, 3]).unwrap_err();
    assert!(e.is_peer_fault(), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn protocol_with_a_stalling_peer_over_tcp() {
    let (c0, c1) = cipherml_mpc::net::tcp_loopback_pair(cfg(1500)).unwrap();
    let h = std::thread::spawn(move || {
        let p = Party::setup(PartyId::P1, c1, os_rng()).unwrap();
        std::thread::sleep(Duration::from_millis(2500));
        drop(p);
    });
    let mut p = Party::setup(PartyId::P0, c0, os_rng()).unwrap();
    let ring = Ring::new(32).unwrap();
    let t = Instant::now();
    let e = compare::relu(&mut p, ring, &[1, 2, 3]).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert!(t.elapsed() < Duration::from_millis(2400));
    h.join().unwrap();
}

#[test]
fn garbled_protocol_messages() {
    // Party 1 sends random bytes of the wrong size where the OT extension matrix goes.
    let (c0, c1) = MemoryChannel::pair_with(cfg(2000));
    let h = std::thread::spawn(move || {
        let mut p = Party::setup(PartyId::P1, c1, os_rng()).unwrap();
        p.channel().send(&[0x5a; 1000]).unwrap();
        p.channel().flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    let mut p = Party::setup(PartyId::P0, c0, os_rng()).unwrap();
    let ring = Ring::new(32).unwrap();
    let e = compare::relu(&mut p, ring, &[1, 2, 3]).unwrap_err();
    assert!(matches!(e, Error::Malformed { .. }), "{e:?}");
    h.join().unwrap();
}
