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

/// Runs `x w` with `x` the client's input and `w` the server's; returns the client's
/// result and its share of `w`.
fn product_and_client_share_of_w(
    a: Array2<f64>,
    b: Array2<f64>,
) -> (Option<ArrayD<f64>>, Vec<u64>) {
    let (client, server) = run_local(move |s| {
        let (a, b) = (a.clone(), b.clone());
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
    assert!(server.0.is_none());
    client
}

#[test]
fn private_matmul_matches_ndarray_and_shares_do_not_depend_on_the_weights() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let a = Array2::from_shape_fn((4, 7), |_| rng.random_range(-10.0..10.0));
    let b = Array2::from_shape_fn((7, 3), |_| rng.random_range(-10.0..10.0));
    let b2 = Array2::from_shape_fn((7, 3), |_| rng.random_range(-10.0..10.0));
    let want = a.dot(&b);
    let (got, share) = product_and_client_share_of_w(a.clone(), b.clone());
    let got = got.unwrap();
    // Fixed point with 12 fractional bits: each of the 7 products of values up to 10 is
    // off by at most about 10 * 2^-12 after quantization, and truncation adds 2^-12.
    for (g, w) in got.iter().zip(want.iter()) {
        assert!((g - w).abs() < 0.02, "{g} vs {w}");
    }
    // The client's share of the server's weights is not the weights' encoding (the real
    // one: 12 fractional bits in Z_2^40, as the session encodes them)...
    let fixed =
        cipherml::mpc::fixed::FixedPoint::new(cipherml::mpc::ring::Ring::new(40).unwrap(), 12)
            .unwrap();
    let enc = fixed.encode_vec(b.as_slice().unwrap()).unwrap();
    // Positive control: the session's own encoding is what a leaked share would equal.
    let decoded = fixed.decode_vec(&enc);
    for (d, v) in decoded.iter().zip(b.iter()) {
        assert!((d - v).abs() <= 1.0 / 4096.0, "{d} vs {v}");
    }
    let leaks = |share: &[u64]| share.iter().zip(&enc).any(|(s, e)| s == e);
    assert!(
        leaks(&enc),
        "the check must catch a share equal to the encoding"
    );
    assert_eq!(share.len(), enc.len());
    assert!(!leaks(&share), "a share equals the weights' encoding");
    // ... and does not depend on them: other weights give the client the same share (the
    // encodings differ, so a share that carried them would differ too).
    let (_, share2) = product_and_client_share_of_w(a, b2.clone());
    let enc2 = fixed.encode_vec(b2.as_slice().unwrap()).unwrap();
    assert_ne!(enc, enc2);
    assert_eq!(
        share, share2,
        "the client's share depends on the server's weights"
    );
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

fn max_diff(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// A small CNN written with the tensor API (conv, ReLU, max-pool, average pool, flatten,
/// dense, bias, square, polynomial, elementwise product, sub), against ndarray.
#[test]
fn every_operation_of_a_network_against_ndarray() {
    use ndarray::{Array1, Array3, Array4, Axis};
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let x = Array3::from_shape_fn((2, 6, 6), |_| rng.random_range(-1.0..1.0));
    let k = Array4::from_shape_fn((3, 2, 3, 3), |_| rng.random_range(-0.5..0.5));
    let w = Array2::from_shape_fn((3, 4), |_| rng.random_range(-1.0..1.0));
    let b = Array1::from_shape_fn(4, |_| rng.random_range(-1.0..1.0));
    // Plaintext reference.
    let conv = {
        let xp = {
            let mut p = Array3::<f64>::zeros((2, 8, 8));
            p.slice_mut(ndarray::s![.., 1..7, 1..7]).assign(&x);
            p
        };
        Array3::from_shape_fn((3, 6, 6), |(o, i, j)| {
            let mut acc = 0.0;
            for c in 0..2 {
                for u in 0..3 {
                    for v in 0..3 {
                        acc += k[[o, c, u, v]] * xp[[c, i + u, j + v]];
                    }
                }
            }
            acc
        })
    };
    let relu = conv.mapv(|v| v.max(0.0));
    let pooled = Array3::from_shape_fn((3, 3, 3), |(c, i, j)| {
        let mut m = f64::NEG_INFINITY;
        for u in 0..2 {
            for v in 0..2 {
                m = m.max(relu[[c, 2 * i + u, 2 * j + v]]);
            }
        }
        m
    });
    let avg = pooled
        .map_axis(Axis(2), |r| r.sum())
        .map_axis(Axis(1), |r| r.sum())
        / 9.0;
    let dense = avg.dot(&w) + &b;
    let sq = dense.mapv(|v| v * v);
    let poly = dense.mapv(|v| 0.5 + 0.25 * v - 0.125 * v * v);
    let prod = &sq * &poly;
    let want = (&prod - &dense).into_dyn();
    let (x2, k2, w2, b2) = (x.clone(), k.clone(), w.clone(), b.clone());
    let (client, server) = run_local(move |s| {
        let (x, k, w, b) = (x2.clone(), k2.clone(), w2.clone(), b2.clone());
        let x = s.input(Role::Client, &[2, 6, 6], move || x.into_dyn())?;
        let k = s.private(Role::Server, &[3, 2, 3, 3], move || k.into_dyn())?;
        let w = s.private(Role::Server, &[3, 4], move || w.into_dyn())?;
        let b = s.private(Role::Server, &[4], move || b.into_dyn())?;
        let h = s.conv2d(&x, &k, 1, 1)?;
        let h = s.relu(&h)?;
        let h = s.max_pool2d(&h, 2, 2)?;
        let h = s.avg_pool2d(&h, 3, 3)?;
        let h = s.flatten(&h)?;
        let h = s.reshape(&h, &[1, 3])?;
        let h = s.matmul(&h, &w)?;
        let d = s.add(&h, &b)?; // bias, broadcast over rows
        let sq = s.square(&d)?;
        let p = s.poly(&d, &[0.5, 0.25, -0.125])?;
        let prod = s.mul(&sq, &p)?;
        let y = s.sub(&prod, &d)?;
        let y = s.reshape(&y, &[4])?;
        s.reveal(&y, Role::Client)
    })
    .unwrap();
    assert!(server.is_none());
    let got = client.unwrap();
    let err = max_diff(&got, &want);
    // Fixed point with 12 fractional bits through a dozen operations.
    assert!(err < 0.02, "error {err}: {got} vs {want}");
}

/// Shares -> BFV -> shares is exact; BFV sums and BFV products with the server's matrix
/// agree with ndarray.
#[test]
fn bfv_conversions_are_exact_and_bfv_operations_match_ndarray() {
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let a = Array2::from_shape_fn((2, 9), |_| rng.random_range(-20.0..20.0));
    let c = Array2::from_shape_fn((2, 9), |_| rng.random_range(-20.0..20.0));
    let w = Array2::from_shape_fn((9, 5), |_| rng.random_range(-1.0..1.0));
    let (a2, c2, w2) = (a.clone(), c.clone(), w.clone());
    let (client, server) = run_local(move |s| {
        let (a, c, w) = (a2.clone(), c2.clone(), w2.clone());
        let x = s.input(Role::Client, &[2, 9], move || a.into_dyn())?;
        let y = s.input(Role::Server, &[2, 9], move || c.into_dyn())?;
        let w = s.private(Role::Server, &[9, 5], move || w.into_dyn())?;
        let xb = s.to_bfv(&x)?;
        let held = match &xb {
            PrivateTensor::Bfv { data, .. } => data.is_some(),
            _ => unreachable!("to_bfv gives BFV"),
        };
        let back = s.to_shares(&xb)?;
        let round_trip = s.reveal(&back, Role::Client)?;
        let sum = s.add(&xb, &y)?; // y goes to BFV too
        assert!(matches!(sum, PrivateTensor::Bfv { .. }));
        let diff = s.sub(&sum, &y)?;
        let diff = s.reveal(&diff, Role::Client)?;
        let prod = s.matmul(&xb, &w)?;
        let prod = s.reveal(&prod, Role::Client)?;
        Ok((held, round_trip, diff, prod, s.explain()))
    })
    .unwrap();
    assert!(
        server.0 && !client.0,
        "only the server holds the ciphertexts"
    );
    let enc = |v: f64| (v * 4096.0).round() / 4096.0;
    let round_trip = client.1.unwrap();
    assert_eq!(round_trip, a.mapv(enc).into_dyn(), "exact round trip");
    assert!(max_diff(&client.2.unwrap(), &a.mapv(enc).into_dyn()) < 1e-9);
    let err = max_diff(&client.3.unwrap(), &a.dot(&w).into_dyn());
    assert!(err < 0.05, "{err}");
    assert!(client.4.contains("BFV"), "{}", client.4);
    assert!(server.1.is_none() && server.2.is_none() && server.3.is_none());
}

/// A client input under CKKS: dense layer with the server's matrix, square, polynomial,
/// sums, revealed to the client; refusals are typed.
#[test]
fn ckks_tensors_compute_and_reveal_to_the_client_only() {
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let x = ndarray::Array1::from_shape_fn(20, |_| rng.random_range(-1.0..1.0));
    let w = Array2::from_shape_fn((20, 6), |_| rng.random_range(-1.0..1.0));
    let h = x.dot(&w);
    let want_p = (h.mapv(|v| 1.0 - 0.5 * v + 0.1 * v * v * v) - 0.25).into_dyn();
    let want_sq = h.mapv(|v| 2.0 * v * v).into_dyn();
    let (x2, w2) = (x.clone(), w.clone());
    let (client, server) = run_local(move |s| {
        let (x, w) = (x2.clone(), w2.clone());
        let xc = s.encrypt(Role::Client, &[20], move || x.into_dyn())?;
        let w = s.private(Role::Server, &[20, 6], move || w.into_dyn())?;
        // CKKS replies are not flooded: a server matrix enters CKKS only when both parties
        // declared it public.
        let refused = matches!(
            s.matmul(&xc, &w),
            Err(TensorError::Unsupported { repr: "CKKS", .. })
        );
        s.allow_unflooded_ckks();
        let h = s.matmul(&xc, &w)?;
        let p = s.poly(&h, &[1.0, -0.5, 0.0, 0.1])?;
        let p = s.sub(&p, &PrivateTensor::Public(ArrayD::from_elem(vec![6], 0.25)))?;
        let sq = s.square(&h)?; // the relinearization key is not sent twice
        let sq = s.add(&sq, &sq)?;
        // Another shape: a typed error. (Sums at different levels are aligned by the
        // engine: tests/ckks_engine.rs.)
        let mismatch = s
            .add(&sq, &PrivateTensor::Public(ArrayD::zeros(vec![5])))
            .is_err();
        let to_server = s.reveal(&p, Role::Server).is_err();
        let to_shares = s.to_shares(&p).is_err();
        Ok((
            s.reveal(&p, Role::Client)?,
            s.reveal(&sq, Role::Client)?,
            mismatch && to_server && to_shares && refused,
        ))
    })
    .unwrap();
    assert!(server.0.is_none() && server.1.is_none());
    assert!(client.2 && server.2);
    let err = max_diff(&client.0.unwrap(), &want_p);
    assert!(err < 1e-3, "polynomial error {err}");
    let err = max_diff(&client.1.unwrap(), &want_sq);
    assert!(err < 1e-3, "square error {err}");
}

/// The sigmoid on shares over a wide range, against the exact function.
#[test]
fn sigmoid_on_shares_is_within_the_stated_error_everywhere() {
    use cipherml::nn::SIGMOID_PWL_ERROR;
    let xs = ndarray::Array1::linspace(-60.0, 60.0, 1201).into_dyn();
    let x2 = xs.clone();
    let (client, _) = run_local(move |s| {
        let x2 = x2.clone();
        let x = s.input(Role::Client, &[1201], move || x2)?;
        let y = s.sigmoid(&x)?;
        s.reveal(&y, Role::Client)
    })
    .unwrap();
    let got = client.unwrap();
    let want = xs.mapv(|v| 1.0 / (1.0 + (-v).exp()));
    let err = max_diff(&got, &want);
    assert!(err <= SIGMOID_PWL_ERROR, "error {err}");
    assert!(
        err > 1e-3,
        "a piecewise-linear fit cannot be this close: {err}"
    );
}

/// Shares -> CKKS: exact up to CKKS precision for negative, zero and positive values (the
/// shares wrap about half the time), then a CKKS product with the server's matrix.
#[test]
fn shares_convert_to_ckks_and_compute_there() {
    let mut rng = ChaCha20Rng::seed_from_u64(14);
    let mut v: Vec<f64> = (0..60).map(|_| rng.random_range(-50.0..50.0)).collect();
    v.extend([0.0, -0.000244140625, 0.000244140625, 127.5, -127.5]);
    let x = ndarray::Array1::from(v.clone()).into_dyn();
    let w = Array2::from_shape_fn((65, 4), |_| rng.random_range(-0.1..0.1));
    let (x2, w2) = (x.clone(), w.clone());
    let (client, server) = run_local(move |s| {
        let (x, w) = (x2.clone(), w2.clone());
        let xs = s.input(Role::Client, &[65], move || x)?;
        let xs = s.relu(&xs)?; // any shared value, here after a two-party step
        let xc = s.to_ckks(&xs)?;
        let back = s.reveal(&xc, Role::Client)?;
        let w = s.private(Role::Server, &[65, 4], move || w.into_dyn())?;
        s.allow_unflooded_ckks(); // the matrix is public here (CKKS replies are not flooded)
        let y = s.matmul(&xc, &w)?;
        Ok((back, s.reveal(&y, Role::Client)?))
    })
    .unwrap();
    assert!(server.0.is_none() && server.1.is_none());
    let relu = x.mapv(|t| t.max(0.0));
    let back = client.0.unwrap();
    let err = max_diff(&back, &relu);
    println!("shares -> CKKS: max error {err:.2e}");
    assert!(err < 1e-3, "conversion error {err}");
    let flat = ndarray::Array1::from_iter(relu.iter().copied());
    let err = max_diff(&client.1.unwrap(), &flat.dot(&w).into_dyn());
    assert!(err < 1e-2, "product error {err}");
}

/// The engine's truncations, against integer arithmetic: in the training ring, products
/// of signed values and their ReLUs come back as exactly `floor(v / 2^16)` with
/// `Truncation::Exact`, and as the floor or one unit less with `Truncation::WithinUlp`,
/// which must be below the floor for some values (the carry it drops) and cost under a
/// quarter of the exact truncations' bytes.
#[test]
fn truncations_are_exact_or_within_one_ulp_as_configured() {
    use cipherml::tensor::{run_local_with, SessionConfig, Truncation};
    let mut rng = ChaCha20Rng::seed_from_u64(31);
    let n = 400;
    // Integers at scale 2^16, including zero and both signs; products up to 2^38.
    let ka: Vec<i64> = (0..n)
        .map(|i| {
            if i < 4 {
                [0, 1, -1, 65536][i]
            } else {
                rng.random_range(-(1i64 << 22)..(1 << 22))
            }
        })
        .collect();
    let kb: Vec<i64> = (0..n)
        .map(|_| rng.random_range(-(1i64 << 16)..(1 << 16)))
        .collect();
    let to_f = |k: &[i64]| {
        ArrayD::from_shape_vec(vec![n], k.iter().map(|&v| v as f64 / 65536.0).collect()).unwrap()
    };
    let (a, b) = (to_f(&ka), to_f(&kb));
    let mut bytes = Vec::new();
    for mode in [Truncation::Exact, Truncation::WithinUlp] {
        let config = SessionConfig {
            truncation: mode,
            ..SessionConfig::training()
        };
        let (a, b) = (a.clone(), b.clone());
        let (client, _) = run_local_with(config, move |s| {
            let (a, b) = (a.clone(), b.clone());
            let x = s.input(Role::Client, &[n], move || a)?;
            let y = s.input(Role::Server, &[n], move || b)?;
            let z = s.mul(&x, &y)?;
            let r = s.relu(&z)?;
            let before = s.party().stats();
            let (z, r) = (s.rescaled(&z)?, s.rescaled(&r)?);
            let after = s.party().stats();
            let spent =
                after.bytes_sent + after.bytes_received - before.bytes_sent - before.bytes_received;
            Ok((
                s.reveal(&z, Role::Client)?,
                s.reveal(&r, Role::Client)?,
                spent,
            ))
        })
        .unwrap();
        let (z, r, spent) = client;
        bytes.push(spent);
        let mut below = 0;
        for (i, (got_z, got_r)) in z.unwrap().iter().zip(r.unwrap().iter()).enumerate() {
            let v = i128::from(ka[i]) * i128::from(kb[i]);
            let floor = v.div_euclid(1 << 16) as f64;
            let relu = v.max(0).div_euclid(1 << 16) as f64;
            for (got, want) in [(got_z, floor), (got_r, relu)] {
                let got = got * 65536.0;
                assert_eq!(got, got.round(), "{mode:?}: not at scale 2^16");
                match mode {
                    Truncation::Exact => assert_eq!(got, want, "{mode:?} at {i}: {v}"),
                    _ => {
                        assert!(
                            got == want || got == want - 1.0,
                            "{mode:?} at {i}: {got} for {v}"
                        );
                        below += usize::from(got != want);
                    }
                }
            }
        }
        if mode == Truncation::WithinUlp {
            assert!(below > n / 10, "only {below} of {} below the floor", 2 * n);
        }
    }
    assert!(
        4 * bytes[1] < bytes[0],
        "bytes of the truncations: {bytes:?}"
    );
}
