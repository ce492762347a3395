//! Private tensors: TF Encrypted's headline example as a test, in one process and over
//! real TCP with the same program text, and a matrix product against ndarray.

use cipherml::mpc::net::{tcp_loopback_pair, Channel, ChannelConfig};
use cipherml::tensor::{run_local, PrivateTensor, Role, Session, TensorError};
use ndarray::{Array2, ArrayD};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The program both parties run.
fn tfe_program<C: Channel>(s: &mut Session<C>) -> Result<Option<ArrayD<f64>>, TensorError> {
    let x = s.input(Role::Client, &[5, 10], || {
        Array2::<f64>::ones((5, 10)).into_dyn()
    })?;
    let w = s.input(Role::Server, &[10, 10], || {
        Array2::<f64>::ones((10, 10)).into_dyn()
    })?;
    let y = s.matmul(&x, &w)?;
    s.reveal(&y, Role::Client)
}

#[test]
fn tf_encrypted_example_in_one_process() {
    let (client, server) = run_local(tfe_program).unwrap();
    assert_eq!(client.unwrap(), ArrayD::from_elem(vec![5, 10], 10.0));
    assert!(server.is_none(), "the server must not learn the result");
}

#[test]
fn tf_encrypted_example_over_tcp() {
    let (c0, c1) = tcp_loopback_pair(ChannelConfig::default()).unwrap();
    let server = std::thread::spawn(move || {
        let mut s = Session::new(Role::Server, c1).unwrap();
        tfe_program(&mut s).unwrap()
    });
    let mut s = Session::new(Role::Client, c0).unwrap();
    let client = tfe_program(&mut s).unwrap();
    assert_eq!(client.unwrap(), ArrayD::from_elem(vec![5, 10], 10.0));
    assert!(server.join().unwrap().is_none());
    let (sent, received) = s.bytes();
    assert!(sent > 0 && received > 0);
}

#[test]
fn private_matmul_matches_ndarray_and_shares_look_random() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let a = Array2::from_shape_fn((4, 7), |_| rng.random_range(-10.0..10.0));
    let b = Array2::from_shape_fn((7, 3), |_| rng.random_range(-10.0..10.0));
    let want = a.dot(&b);
    let (a2, b2) = (a.clone(), b.clone());
    let (client, server) = run_local(move |s| {
        let (a, b) = (a2.clone(), b2.clone());
        let x = s.input(Role::Client, &[4, 7], move || a.into_dyn())?;
        let w = s.input(Role::Server, &[7, 3], move || b.into_dyn())?;
        let share = match &w {
            PrivateTensor::Shared { share, .. } => share.clone(),
            _ => unreachable!("inputs are shared"),
        };
        let y = s.matmul(&x, &w)?;
        Ok((s.reveal(&y, Role::Client)?, share))
    })
    .unwrap();
    let got = client.0.unwrap();
    // Fixed point with 12 fractional bits: each of the 7 products of values up to 10 is
    // off by at most about 10 * 2^-12 after quantization, and truncation adds 2^-12.
    for (g, w) in got.iter().zip(want.iter()) {
        assert!((g - w).abs() < 0.02, "{g} vs {w}");
    }
    assert!(server.0.is_none());
    // The client's share of the server's weights is not the weights' encoding.
    let enc: Vec<u64> = b
        .iter()
        .map(|v| (v * 65536.0).round() as i64 as u64)
        .collect();
    assert_ne!(client.1, enc);
    // Shape errors are typed.
    let err = run_local(|s| {
        let x = s.input(Role::Client, &[2, 3], || {
            Array2::<f64>::ones((2, 3)).into_dyn()
        })?;
        s.matmul(&x, &x)
    });
    assert!(matches!(
        err,
        Err(TensorError::Shape { what: "matmul", .. })
    ));
}

#[test]
fn products_with_server_weights_are_dispatched_by_the_cost_model() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    // A large layer (HE is cheaper) and a tiny one (shares are cheaper).
    for (m, k, n, expect) in [
        (2usize, 300usize, 64usize, "BFV"),
        (2, 3, 2, "secret shares"),
    ] {
        let x = Array2::from_shape_fn((m, k), |_| rng.random_range(-1.0..1.0));
        let w = Array2::from_shape_fn((k, n), |_| rng.random_range(-1.0..1.0));
        let want = x.dot(&w);
        let (x2, w2) = (x.clone(), w.clone());
        let (client, server) = run_local(move |s| {
            let (x, w) = (x2.clone(), w2.clone());
            let xs = s.input(Role::Client, &[m, k], move || x.into_dyn())?;
            let ws = s.private(Role::Server, &[k, n], move || w.into_dyn())?;
            let y = s.matmul(&xs, &ws)?;
            Ok((s.reveal(&y, Role::Client)?, s.explain()))
        })
        .unwrap();
        let got = client.0.unwrap();
        for (g, w) in got.iter().zip(want.iter()) {
            assert!((g - w).abs() < 0.01, "{g} vs {w}");
        }
        assert!(server.0.is_none());
        let chosen = client
            .1
            .lines()
            .find(|l| l.trim_start().starts_with('*'))
            .unwrap()
            .to_string();
        assert!(chosen.contains(expect), "{m}x{k}x{n}: {}", client.1);
        assert_eq!(
            client.1, server.1,
            "both parties must take the same decisions"
        );
    }
}
