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
        ..Default::default()
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

#[test]
fn tcp_trickled_message_is_cut_by_its_deadline() {
    // Announces 100 bytes and sends one every 50 ms: each read succeeds, but the whole
    // message is due within the 300 ms timeout.
    let (mut ch, h) = raw_peer(|mut s| {
        let _ = s.write_all(&100u32.to_le_bytes());
        for _ in 0..100 {
            if s.write_all(&[7]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let t = Instant::now();
    let e = ch.recv().unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop(ch);
    h.join().unwrap();
}

#[test]
fn per_call_limits_refuse_before_reading() {
    let (mut ch, h) = raw_peer(|mut s| {
        let _ = s.write_all(&1000u32.to_le_bytes());
        std::thread::sleep(Duration::from_millis(200));
    });
    // Within the channel's 1 MiB limit, but not within this call's.
    let e = ch.recv_limited(999).unwrap_err();
    assert!(
        matches!(
            e,
            Error::MessageTooLarge {
                len: 1000,
                max: 999
            }
        ),
        "{e:?}"
    );
    h.join().unwrap();
    // A typed receive of a known length reports a longer message as malformed, unread.
    let (mut a, mut b) = MemoryChannel::pair_with(cfg(500));
    a.send(&[0u8; 64]).unwrap();
    a.flush().unwrap();
    let e = cipherml_mpc::net::recv_exact(&mut b, "x", 32).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Malformed {
                expected: 32,
                found: 64,
                ..
            }
        ),
        "{e:?}"
    );
    // An absolute deadline shorter than the timeout.
    let (mut a, mut b) = MemoryChannel::pair_with(cfg(5000));
    let t = Instant::now();
    let e = b
        .recv_before(16, Instant::now() + Duration::from_millis(100))
        .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
    a.close();
}

#[test]
fn a_peer_that_does_not_read_blocks_then_fails_the_sender() {
    // The peer accepts and never reads; our queue holds at most 64 KiB.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        std::thread::sleep(Duration::from_secs(3));
        drop(s);
    });
    let config = ChannelConfig {
        timeout: Duration::from_millis(500),
        max_message_len: 1 << 20,
        max_queued_bytes: 64 << 10,
    };
    let mut ch = TcpChannel::connect(addr, config).unwrap();
    let msg = vec![0u8; 32 << 10];
    let t = Instant::now();
    let mut sent = 0u64;
    let e = loop {
        match ch.send(&msg).and_then(|_| ch.flush()) {
            Ok(()) => sent += msg.len() as u64,
            Err(e) => break e,
        }
        assert!(sent < 1 << 30, "never blocked");
    };
    assert!(
        matches!(e, Error::SendQueueFull { max: 65536, .. }),
        "{e:?}"
    );
    // What was taken: the socket buffers and the bounded queue, not everything sent.
    assert!(ch.queued_bytes() <= 96 << 10, "{}", ch.queued_bytes());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // Closing does not wait for the peer that does not read.
    let t = Instant::now();
    drop(ch);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    h.join().unwrap();
}

#[test]
fn connect_reports_a_refused_connection_at_once_and_connect_retry_waits() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let t = Instant::now();
    let e = TcpChannel::connect(addr, cfg(5000)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2));
    match &e {
        Error::Connect { addr: a, source } => {
            assert_eq!(a, &addr.to_string());
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
    // connect_retry gives up after its timeout with the cause, not a bare timeout.
    let e = TcpChannel::connect_retry(addr, cfg(300)).unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    let e = TcpChannel::connect("no port here", cfg(300)).unwrap_err();
    assert!(matches!(e, Error::Resolve { .. }), "{e:?}");
}
