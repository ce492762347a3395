//! One engine: a network written by hand with `Session` operations and the same network as
//! a `Sequential` (each layer lowering itself to those operations) exchange the same
//! messages and end with the same shares, bit for bit, for the same seeds; and they cost
//! the same bytes.

use cipherml::mpc::net::MemoryChannel;
use cipherml::nn::{Layer, PreparedModel, Sequential};
use cipherml::tensor::{run_local_seeded, PrivateTensor, Role, Session, SessionConfig};
use ndarray::{Array1, Array2, Array4, ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// A small CNN with every kind of step the engine optimises: a convolution under BFV, a
/// ReLU before a max-pool (swapped by the lowering), a residual block (scale lift), a
/// dense layer under BFV and a tiny one on shares.
fn model(seed: u64) -> Sequential {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut u = |n: usize| -> Vec<f64> { (0..n).map(|_| rng.random_range(-0.5..0.5)).collect() };
    let conv = |o: usize, c: usize, w: Vec<f64>, b: Vec<f64>| Layer::Conv2d {
        weight: Array4::from_shape_vec((o, c, 3, 3), w).unwrap(),
        bias: Array1::from(b),
        stride: 1,
        padding: 1,
    };
    let c1 = conv(4, 1, u(36), u(4));
    let c2 = conv(4, 4, u(144), u(4));
    let d1 = Layer::Dense {
        weight: Array2::from_shape_vec((10, 64), u(640)).unwrap(),
        bias: Array1::from(u(10)),
    };
    let d2 = Layer::Dense {
        weight: Array2::from_shape_vec((3, 10), u(30)).unwrap(),
        bias: Array1::from(u(3)),
    };
    Sequential::new(vec![1, 8, 8])
        .add(c1)
        .add(Layer::Relu)
        .add(Layer::MaxPool {
            kernel: 2,
            stride: 2,
        })
        .add(Layer::Residual {
            body: vec![c2, Layer::Relu],
        })
        .add(Layer::Flatten)
        .add(d1)
        .add(Layer::Relu)
        .add(d2)
}

fn input(seed: u64) -> ArrayD<f64> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    ArrayD::from_shape_fn(IxDyn(&[1, 8, 8]), |_| rng.random_range(0.0..1.0))
}

/// The weights of a layer as values the server provides (zeros on the client's side).
fn server_value<C: cipherml::mpc::net::Channel>(
    s: &mut Session<C>,
    v: ArrayD<f64>,
) -> Result<PrivateTensor, cipherml::Error> {
    let shape = v.shape().to_vec();
    s.private(Role::Server, &shape, move || v)
}

/// The same network written by hand with session operations, in the order the lowering
/// runs them (max-pool before ReLU).
fn by_hand<C: cipherml::mpc::net::Channel>(
    s: &mut Session<C>,
    m: &Sequential,
    x: &ArrayD<f64>,
) -> Result<PrivateTensor, cipherml::Error> {
    let server = s.role() == Role::Server;
    let l = m.layers();
    let conv_parts = |layer: &Layer| match layer {
        Layer::Conv2d { weight, bias, .. } => (weight.clone(), bias.clone()),
        _ => unreachable!(),
    };
    let dense_parts = |layer: &Layer| match layer {
        Layer::Dense { weight, bias } => (weight.clone(), bias.clone()),
        _ => unreachable!(),
    };
    // The client holds only shapes: its copies are zeros, never read by the session.
    let hide = |a: ArrayD<f64>| if server { a } else { ArrayD::zeros(a.shape()) };
    let x0 = x.clone();
    let mut h = s.private(Role::Client, &[1, 8, 8], move || x0)?;
    // Conv 1 -> 4 channels, bias per channel broadcast over 8x8.
    let (w1, b1) = conv_parts(&l[0]);
    let w = server_value(s, hide(w1.into_dyn()))?;
    h = s.conv2d(&h, &w, 1, 1)?;
    let b = ArrayD::from_shape_fn(IxDyn(&[4, 8, 8]), |i| b1[i[0]]);
    let b = server_value(s, hide(b))?;
    h = s.add(&h, &b)?;
    h = s.max_pool2d(&h, 2, 2)?;
    h = s.relu(&h)?;
    // Residual: h + relu(conv(h) + b).
    let (w2, b2) = match &l[3] {
        Layer::Residual { body } => conv_parts(&body[0]),
        _ => unreachable!(),
    };
    let w = server_value(s, hide(w2.into_dyn()))?;
    let mut r = s.conv2d(&h, &w, 1, 1)?;
    let b = ArrayD::from_shape_fn(IxDyn(&[4, 4, 4]), |i| b2[i[0]]);
    let b = server_value(s, hide(b))?;
    r = s.add(&r, &b)?;
    r = s.relu(&r)?;
    h = s.add(&h, &r)?;
    h = s.flatten(&h)?;
    // Dense layers as row-vector products x W^T.
    for (i, layer) in [(0usize, &l[5]), (1, &l[7])] {
        let (w, b) = dense_parts(layer);
        let (out, inp) = w.dim();
        h = s.reshape(&h, &[1, inp])?;
        let wt = server_value(s, hide(w.t().to_owned().into_dyn()))?;
        h = s.matmul(&h, &wt)?;
        let b = server_value(
            s,
            hide(b.into_shape_with_order(vec![1, out]).unwrap().into_dyn()),
        )?;
        h = s.add(&h, &b)?;
        h = s.reshape(&h, &[out])?;
        if i == 0 {
            h = s.relu(&h)?;
        }
    }
    Ok(h)
}

fn shares(t: &PrivateTensor) -> (Vec<u64>, u32) {
    match t {
        PrivateTensor::Shared {
            share, frac_bits, ..
        } => (share.clone(), *frac_bits),
        other => panic!("expected shares, got {other:?}"),
    }
}

type Outcome = ((Vec<u64>, u32), Option<ArrayD<f64>>, (u64, u64));

fn run(seeds: ([u8; 32], [u8; 32]), hand: bool) -> (Outcome, Outcome) {
    let m = model(7);
    let arch = Sequential::from_architecture(&m.architecture()).unwrap();
    let x = input(8);
    run_local_seeded(SessionConfig::default(), seeds, move |s| {
        let before = s.bytes();
        let y = if hand {
            by_hand(s, &m, &x)?
        } else {
            let own = if s.role() == Role::Server { &m } else { &arch };
            let x0 = x.clone();
            let input = s.private(Role::Client, &[1, 8, 8], move || x0)?;
            own.forward_private(s, input)?
        };
        let out = shares(&y);
        let revealed = s.reveal(&y, Role::Client)?;
        let after = s.bytes();
        Ok((out, revealed, (after.0 - before.0, after.1 - before.1)))
    })
    .unwrap()
}

#[test]
fn session_program_and_sequential_agree_bit_for_bit() {
    let seeds = ([1u8; 32], [2u8; 32]);
    let (seq_c, seq_s) = run(seeds, false);
    let (hand_c, hand_s) = run(seeds, true);
    // The outputs: plaintext reference, both paths.
    let m = model(7);
    let want = m.predict(&input(8)).unwrap();
    let got = seq_c.1.clone().unwrap();
    for (g, w) in got.iter().zip(want.iter()) {
        assert!((g - w).abs() < 0.05, "private {g} vs plaintext {w}");
    }
    assert!(seq_s.1.is_none(), "the server must not learn the output");
    // Same shares, same scale, same bytes, on both sides.
    assert_eq!(seq_c.0, hand_c.0, "client shares differ");
    assert_eq!(seq_s.0, hand_s.0, "server shares differ");
    assert_eq!(seq_c.1, hand_c.1);
    assert_eq!(seq_c.2, hand_c.2, "client bytes differ");
    assert_eq!(seq_s.2, hand_s.2, "server bytes differ");
    // The last product's truncation is pending: revealed at 2^2f, exactly.
    assert_eq!(seq_c.0 .1, 24);
    // Negative control: other seeds give other shares (the comparison can fail).
    let (other_c, _) = run(([3u8; 32], [4u8; 32]), false);
    assert_ne!(
        other_c.0 .0, seq_c.0 .0,
        "shares must depend on the randomness"
    );
}

/// The model a server prepares once serves sessions with the same result as lowering on
/// the fly in each session.
#[test]
fn prepared_model_matches_lowering_in_the_session() {
    let m = model(11);
    let x = input(12);
    let want = m.predict(&x).unwrap();
    let server_model = PreparedModel::new(&m, &SessionConfig::default(), true).unwrap();
    let arch = Sequential::from_architecture(&m.architecture()).unwrap();
    let client_model = PreparedModel::new(&arch, &SessionConfig::default(), false).unwrap();
    let (c0, c1) = MemoryChannel::pair();
    let server = std::thread::spawn(move || {
        let mut s = Session::new(Role::Server, c1).unwrap();
        server_model.run_server(&mut s).unwrap();
        server_model.run_server(&mut s).unwrap();
    });
    let mut s = Session::new(Role::Client, c0).unwrap();
    for _ in 0..2 {
        let got = client_model.run_client(&mut s, &x).unwrap();
        for (g, w) in got.iter().zip(want.iter()) {
            assert!((g - w).abs() < 0.05, "private {g} vs plaintext {w}");
        }
    }
    server.join().unwrap();
    // The plan the session ran is the cost model's: the big dense layer under BFV, the
    // tiny one on shares.
    let plan = s.explain();
    let chosen: Vec<&str> = plan
        .lines()
        .filter(|l| l.trim_start().starts_with('*'))
        .collect();
    assert!(chosen.iter().any(|l| l.contains("BFV")), "{plan}");
    assert!(chosen.iter().any(|l| l.contains("secret shares")), "{plan}");
}

/// TF Encrypted's headline example written with `Session` costs no more bytes than the
/// same product through a `Sequential` (a dense layer of the server's ones, row by row).
#[test]
fn headline_example_costs_no_more_than_the_model() {
    let seeds = ([5u8; 32], [6u8; 32]);
    let (tfe, _) = run_local_seeded(SessionConfig::default(), seeds, |s| {
        let before = s.bytes();
        let x = s.input(Role::Client, &[5, 10], || {
            Array2::<f64>::ones((5, 10)).into_dyn()
        })?;
        let w = s.input(Role::Server, &[10, 10], || {
            Array2::<f64>::ones((10, 10)).into_dyn()
        })?;
        let y = s.matmul(&x, &w)?;
        let out = s.reveal(&y, Role::Client)?;
        let after = s.bytes();
        Ok((out, after.0 + after.1 - before.0 - before.1))
    })
    .unwrap();
    assert_eq!(tfe.0.unwrap(), ArrayD::from_elem(vec![5, 10], 10.0));
    let dense = Sequential::new(vec![10]).add(Layer::Dense {
        weight: Array2::ones((10, 10)),
        bias: Array1::zeros(10),
    });
    let arch = Sequential::from_architecture(&dense.architecture()).unwrap();
    let (seq, _) = run_local_seeded(SessionConfig::default(), seeds, move |s| {
        let before = s.bytes();
        let own = if s.role() == Role::Server {
            &dense
        } else {
            &arch
        };
        let mut rows = Vec::new();
        for _ in 0..5 {
            let x = s.private(Role::Client, &[10], || ArrayD::ones(vec![10]))?;
            let y = own.forward_private(s, x)?;
            rows.push(s.reveal(&y, Role::Client)?);
        }
        let after = s.bytes();
        Ok((rows, after.0 + after.1 - before.0 - before.1))
    })
    .unwrap();
    for r in seq.0 {
        assert_eq!(r.unwrap(), ArrayD::from_elem(vec![10], 10.0));
    }
    assert!(
        tfe.1 <= seq.1,
        "headline example {} bytes, same product through Sequential {} bytes",
        tfe.1,
        seq.1
    );
}

/// A server configured for a WAN plans its sessions for it (the plan `inspect --wan`
/// prints), announces it, and its clients make the same choices: the last dense layer of
/// the bundled MLP runs on shares on a LAN and under BFV on a WAN, and inference over the
/// wire agrees with the plaintext model in both configurations (a client that planned
/// for another network would desynchronise the protocol).
#[test]
fn served_sessions_follow_the_configured_network() {
    use cipherml::nn::{load_onnx, NetworkModel};
    use cipherml::protocol::NetworkParams;
    use cipherml::server::{Server, ServerConfig};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits_mlp.onnx");
    let m = load_onnx(&path).unwrap();
    let last = |net: NetworkModel| {
        let plan = m.plan(net).unwrap();
        plan.layers.last().unwrap().chosen
    };
    assert!(last(NetworkModel::lan()).is_shared());
    assert!(last(NetworkModel::wan()).is_bfv());
    // The network on the wire is the cost model's.
    assert_eq!(NetworkParams::WAN.model(), NetworkModel::wan());
    assert_eq!(NetworkParams::LAN.model(), NetworkModel::lan());
    let x = input(21).into_shape_with_order(vec![1, 8, 8]).unwrap();
    let want = m.predict(&x).unwrap();
    // The WAN server also runs its sessions' HE work in a pool of its own (one thread).
    for (network, threads) in [(NetworkParams::LAN, 0), (NetworkParams::WAN, 1)] {
        let config = ServerConfig {
            network,
            threads,
            ..ServerConfig::default()
        };
        let server = Server::bind("127.0.0.1:0", vec![("mlp".into(), m.clone())], config).unwrap();
        let addr = server.local_addr().to_string();
        std::thread::spawn(move || server.run());
        let mut client = cipherml::client::Client::connect(&addr).unwrap();
        assert_eq!(client.models()[0].network, network);
        let got = client.infer("mlp", &x).unwrap();
        for (g, w) in got.iter().zip(want.iter()) {
            assert!(
                (g - w).abs() < 0.05,
                "{network:?}: private {g} vs plaintext {w}"
            );
        }
        client.close().unwrap();
    }
}

/// A polynomial network given a CKKS tensor stays under CKKS: `Sequential::forward_private`
/// lowers it to the engine's CKKS operations (the CKKS mode's lowering), and the revealed
/// output matches the plaintext model; without `allow_unflooded_ckks` the server's weights
/// are refused under unflooded CKKS (typed error on both sides).
#[test]
fn a_ckks_input_runs_the_model_under_ckks() {
    let mut rng = ChaCha20Rng::seed_from_u64(31);
    let mut u = |n: usize| -> Vec<f64> { (0..n).map(|_| rng.random_range(-0.5..0.5)).collect() };
    let m = Sequential::new(vec![6])
        .add(Layer::Dense {
            weight: Array2::from_shape_vec((4, 6), u(24)).unwrap(),
            bias: Array1::from(u(4)),
        })
        .add(Layer::Square)
        .add(Layer::Dense {
            weight: Array2::from_shape_vec((3, 4), u(12)).unwrap(),
            bias: Array1::from(u(3)),
        });
    let x = ArrayD::from_shape_vec(vec![6], u(6)).unwrap();
    let want = m.predict(&x).unwrap();
    let arch = Sequential::from_architecture(&m.architecture()).unwrap();
    for allow in [true, false] {
        let (m2, a2, x2) = (m.clone(), arch.clone(), x.clone());
        let (client, server) = cipherml::tensor::run_local(move |s| {
            if allow {
                s.allow_unflooded_ckks();
            }
            let x0 = x2.clone();
            let input = s.encrypt(Role::Client, &[6], move || x0)?;
            let own = if s.role() == Role::Server { &m2 } else { &a2 };
            let y = own.forward_private(s, input)?;
            assert!(matches!(y, PrivateTensor::Ckks { .. }), "stays under CKKS");
            s.reveal(&y, Role::Client)
        })
        .map(|(c, s)| (Some(c), Some(s)))
        .unwrap_or((None, None));
        if allow {
            let got = client.unwrap().unwrap();
            assert!(server.unwrap().is_none());
            for (g, w) in got.iter().zip(want.iter()) {
                assert!((g - w).abs() < 1e-3, "CKKS {g} vs plaintext {w}");
            }
        } else {
            assert!(
                client.is_none(),
                "server weights under unflooded CKKS must be refused"
            );
        }
    }
}
