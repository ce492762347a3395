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
            PrivateTensor::Public(_) => unreachable!("inputs are shared"),
        };
        let y = s.matmul(&x, &w)?;
        Ok((s.reveal(&y, Role::Client)?, share))
    })
    .unwrap();
    let got = client.0.unwrap();
    // Fixed point with 16 fractional bits: error below 2^-12 for these magnitudes.
    for (g, w) in got.iter().zip(want.iter()) {
        assert!((g - w).abs() < 1e-3, "{g} vs {w}");
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
