//! Every OT flavour against its definition, over memory and over TCP.

mod common;
use common::{run_mem, run_tcp};

use cipherml_mpc::net::Channel;
use cipherml_mpc::ot::{BaseOtReceiver, BaseOtSender, OtReceiver, OtSender};
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::ring::Ring;
use rand::{Rng, RngCore};

#[test]
fn base_ot() {
    let mut rng = os_rng();
    let choices: Vec<u8> = (0..64).map(|_| rng.random::<u8>() & 1).collect();
    let ch2 = choices.clone();
    let (pairs, got) = run_mem(
        |c| BaseOtSender::send(c, 64, &mut os_rng()).unwrap(),
        move |c| BaseOtReceiver::receive(c, &ch2, &mut os_rng()).unwrap(),
    );
    for i in 0..64 {
        let p = pairs[i];
        assert_eq!(got[i], if choices[i] == 1 { p.1 } else { p.0 });
        assert_ne!(p.0, p.1);
    }
}

#[test]
fn correlated_ot_with_chosen_delta() {
    let delta = 0x1234_5678_9abc_def0_0fed_cba9_8765_4321u128;
    let mut rng = os_rng();
    let n = 1000;
    let choices: Vec<u8> = (0..n).map(|_| rng.random::<u8>() & 1).collect();
    let ch2 = choices.clone();
    let (q, t) = run_mem(
        move |c| {
            let mut s = OtSender::setup_with_delta(c, delta, &mut os_rng()).unwrap();
            assert_eq!(s.delta(), delta);
            let a = s.cot(c, n).unwrap();
            let b = s.cot(c, 77).unwrap();
            (a, b)
        },
        move |c| {
            let mut r = OtReceiver::setup(c, &mut os_rng()).unwrap();
            let a = r.cot(c, &ch2).unwrap();
            let b = r.cot(c, &[1u8; 77]).unwrap();
            (a, b)
        },
    );
    for i in 0..n {
        assert_eq!(t.0[i], q.0[i] ^ if choices[i] == 1 { delta } else { 0 });
    }
    for i in 0..77 {
        assert_eq!(t.1[i], q.1[i] ^ delta);
    }
}

#[test]
fn random_and_chosen_ot_over_tcp() {
    let n = 3000;
    let mut rng = os_rng();
    let msgs: Vec<[u128; 2]> = (0..n)
        .map(|_| [rng.random::<u128>(), rng.random::<u128>()])
        .collect();
    let choices: Vec<u8> = (0..n).map(|_| rng.random::<u8>() & 1).collect();
    let (m2, c2) = (msgs.clone(), choices.clone());
    let (pairs, (rc, rout, chosen)) = run_tcp(
        move |c| {
            let mut s = OtSender::setup(c, &mut os_rng()).unwrap();
            let pairs = s.random_ot(c, n).unwrap();
            s.send_chosen(c, &m2).unwrap();
            pairs
        },
        move |c| {
            let mut rng = os_rng();
            let mut r = OtReceiver::setup(c, &mut rng).unwrap();
            let (rc, rout) = r.random_ot(c, n, &mut rng).unwrap();
            let chosen = r.receive_chosen(c, &c2).unwrap();
            (rc, rout, chosen)
        },
    );
    for i in 0..n {
        assert_eq!(rout[i], pairs[i][rc[i] as usize]);
        assert_ne!(rout[i], pairs[i][1 - rc[i] as usize]);
        assert_eq!(chosen[i], msgs[i][choices[i] as usize]);
    }
}

#[test]
fn arithmetic_correlated_ot() {
    for (bits, w) in [(32u32, 1usize), (64, 3), (7, 2)] {
        let ring = Ring::new(bits).unwrap();
        let n = 500;
        let mut rng = os_rng();
        let deltas = ring.random_vec(&mut rng, n * w);
        let choices: Vec<u8> = (0..n).map(|_| rng.random::<u8>() & 1).collect();
        let (d2, c2) = (deltas.clone(), choices.clone());
        let (x, y) = run_mem(
            move |c| {
                let mut s = OtSender::setup(c, &mut os_rng()).unwrap();
                s.send_correlated(c, ring, &d2, w).unwrap()
            },
            move |c| {
                let mut r = OtReceiver::setup(c, &mut os_rng()).unwrap();
                r.receive_correlated(c, ring, &c2, w).unwrap()
            },
        );
        for k in 0..n * w {
            let expect = if choices[k / w] == 1 {
                ring.add(x[k], deltas[k])
            } else {
                x[k]
            };
            assert_eq!(y[k], expect);
        }
    }
}

#[test]
fn one_of_n_ot() {
    for (log_n, bits) in [(1u32, 1u32), (2, 2), (4, 2), (5, 13), (8, 64)] {
        let nn = 1usize << log_n;
        let inst = 300;
        let mut rng = os_rng();
        let mk = if bits == 64 {
            u64::MAX
        } else {
            (1 << bits) - 1
        };
        let msgs: Vec<u64> = (0..inst * nn).map(|_| rng.next_u64() & mk).collect();
        let choices: Vec<u16> = (0..inst).map(|_| rng.random_range(0..nn as u16)).collect();
        let (m2, c2) = (msgs.clone(), choices.clone());
        let (_, got) = run_mem(
            move |c| {
                let mut s = OtSender::setup(c, &mut os_rng()).unwrap();
                s.send_one_of_n(c, &m2, log_n, bits).unwrap();
                s.send_one_of_n(c, &m2, log_n, bits).unwrap();
            },
            move |c| {
                let mut r = OtReceiver::setup(c, &mut os_rng()).unwrap();
                let a = r.receive_one_of_n(c, &c2, log_n, bits).unwrap();
                let b = r.receive_one_of_n(c, &c2, log_n, bits).unwrap();
                assert_eq!(a, b);
                a
            },
        );
        for i in 0..inst {
            assert_eq!(got[i], msgs[i * nn + choices[i] as usize], "log_n {log_n}");
        }
    }
}

#[test]
fn silent_one_of_n_ot() {
    for (log_n, bits) in [(1u32, 1u32), (2, 2), (4, 2), (4, 64), (8, 7)] {
        let nn = 1usize << log_n;
        let inst = 4200;
        let mut rng = os_rng();
        let mk = if bits == 64 {
            u64::MAX
        } else {
            (1 << bits) - 1
        };
        let msgs: Vec<u64> = (0..inst * nn).map(|_| rng.next_u64() & mk).collect();
        let choices: Vec<u16> = (0..inst).map(|_| rng.random_range(0..nn as u16)).collect();
        let (m2, c2) = (msgs.clone(), choices.clone());
        let (_, got) = run_mem(
            move |c| {
                let mut s = OtSender::setup_silent(c, &mut os_rng()).unwrap();
                s.send_one_of_n(c, &m2, log_n, bits).unwrap();
                s.send_one_of_n(c, &m2[..nn * 3], log_n, bits).unwrap();
            },
            move |c| {
                let mut r = OtReceiver::setup_silent(c, &mut os_rng()).unwrap();
                let a = r.receive_one_of_n(c, &c2, log_n, bits).unwrap();
                let b = r.receive_one_of_n(c, &c2[..3], log_n, bits).unwrap();
                assert_eq!(&a[..3], &b[..]);
                a
            },
        );
        for i in 0..inst {
            assert_eq!(got[i], msgs[i * nn + choices[i] as usize], "log_n {log_n}");
        }
    }
}

/// 1-of-N OT into XOR shares: the shares XOR to the chosen entry, over IKNP and silent
/// OT, memory and TCP; the sender's share is not the entry (it is masked: with an all-zero
/// table it is a pad, about half ones), and the receiver's alone is uniform whatever the
/// table (a share equal to the entry would fail both counts).
#[test]
fn one_of_n_ot_into_shares() {
    for (silent, tcp, log_n, bits) in [
        (false, false, 1u32, 1u32),
        (false, true, 2, 2),
        (true, false, 2, 2),
        (true, true, 4, 6),
        (true, false, 8, 64),
    ] {
        let nn = 1usize << log_n;
        let inst = 3000;
        let mut rng = os_rng();
        let mk = if bits == 64 {
            u64::MAX
        } else {
            (1 << bits) - 1
        };
        // First half of the instances: the all-zero table; second half: random entries.
        let table: Vec<u64> = (0..inst * nn)
            .map(|k| {
                if k < inst / 2 * nn {
                    0
                } else {
                    rng.next_u64() & mk
                }
            })
            .collect();
        let choices: Vec<u16> = (0..inst).map(|_| rng.random_range(0..nn as u16)).collect();
        let (t2, c2) = (table.clone(), choices.clone());
        let (s, r) = if tcp {
            run_tcp(
                move |c| shares_sender(c, silent, &t2, log_n, bits),
                move |c| shares_receiver(c, silent, &c2, log_n, bits),
            )
        } else {
            run_mem(
                move |c| shares_sender(c, silent, &t2, log_n, bits),
                move |c| shares_receiver(c, silent, &c2, log_n, bits),
            )
        };
        assert_eq!((s.len(), r.len()), (inst, inst));
        for i in 0..inst {
            assert_eq!(
                s[i] ^ r[i],
                table[i * nn + choices[i] as usize],
                "instance {i}"
            );
            assert_eq!((s[i] & !mk, r[i] & !mk), (0, 0));
        }
        // Lowest bits: the sender's on the zero table, the receiver's on all.
        let ones = |v: &[u64]| v.iter().filter(|&&x| x & 1 == 1).count();
        let half = inst / 2;
        let s_ones = ones(&s[..half]);
        assert!(
            (600..=900).contains(&s_ones),
            "sender ones {s_ones} of {half}"
        );
        let r_ones = ones(&r);
        assert!(
            (1300..=1700).contains(&r_ones),
            "receiver ones {r_ones} of {inst}"
        );
    }
}

fn shares_sender<C: Channel>(
    c: &mut C,
    silent: bool,
    t: &[u64],
    log_n: u32,
    bits: u32,
) -> Vec<u64> {
    let mut s = if silent {
        OtSender::setup_silent(c, &mut os_rng()).unwrap()
    } else {
        OtSender::setup(c, &mut os_rng()).unwrap()
    };
    s.send_one_of_n_shares(c, t, log_n, bits).unwrap()
}

fn shares_receiver<C: Channel>(
    c: &mut C,
    silent: bool,
    choices: &[u16],
    log_n: u32,
    bits: u32,
) -> Vec<u64> {
    let mut r = if silent {
        OtReceiver::setup_silent(c, &mut os_rng()).unwrap()
    } else {
        OtReceiver::setup(c, &mut os_rng()).unwrap()
    };
    r.receive_one_of_n_shares(c, choices, log_n, bits).unwrap()
}
