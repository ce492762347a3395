//! The CKKS half of the one engine: a CKKS network written with `Session` ops and the same
//! network through `CkksModel` (inside the session and on the server alone) compute the
//! same ciphertexts, bit for bit; sums at different levels are aligned by the engine; the
//! server's prepared linear maps serve every session.

use std::sync::Arc;

use cipherml::client::Client;
use cipherml::he::bfv::BfvParameters;
use cipherml::he::ckks::{CkksParameters, CkksParametersLiteral, Encryptor, Evaluator};
use cipherml::he::rlwe::{GaloisKeys, PublicKey, RelinKey, SecretKey};
use cipherml::mpc::net::MemoryChannel;
use cipherml::mpc::party::Party;
use cipherml::mpc::share::PartyId;
use cipherml::nn::{load_onnx, CkksModel, Layer, Sequential};
use cipherml::server::{ModeChoice, ModelSpec, Server, ServerConfig};
use cipherml::tensor::{
    run_local, CkksEvalKeys, CkksSessionKeys, LinkKeys, PreparedCkksLinear, PrivateTensor, Role,
    Session, SessionConfig, SessionSetup, TensorError,
};
use ndarray::{Array1, Array2, ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// N = 8192, three levels at scale 2^36 (128-bit): a dense layer, a square, a dense layer.
fn params() -> Arc<CkksParameters> {
    CkksParameters::new(&CkksParametersLiteral {
        degree: 8192,
        ciphertext_moduli_bits: vec![50, 36, 36, 36],
        special_moduli_bits: vec![50],
        scale_bits: 36,
    })
    .unwrap()
}

fn max_diff(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// What each side of the residual program returns: the revealed output (client), the
/// tracked (level, scale) of the output, and on the server whether the hand-written,
/// model-in-session and model-on-server ciphertexts are identical.
type Side = (Option<ArrayD<f64>>, (usize, f64), bool, u64);

/// `x + (W1 x + b1)^2`, then `W2 . + b2`: written with Session ops, and as a `Sequential`
/// lowered by `CkksModel`. The session starts with keys the caller set up (no upload). On
/// the server the three ways give the same ciphertext bit for bit (the CKKS operations are
/// deterministic and there is one implementation of each); the client's tracked level and
/// scale equal the server's ciphertext's; the revealed result is the plaintext model's
/// within 1e-3.
#[test]
fn a_residual_network_written_with_session_ops_matches_the_ckks_model_bit_for_bit() {
    let mut rng = ChaCha20Rng::seed_from_u64(41);
    let w1 = Array2::from_shape_fn((8, 8), |_| rng.random_range(-0.4..0.4));
    let b1 = Array1::from_shape_fn(8, |_| rng.random_range(-0.2..0.2));
    let w2 = Array2::from_shape_fn((3, 8), |_| rng.random_range(-0.4..0.4));
    let b2 = Array1::from_shape_fn(3, |_| rng.random_range(-0.2..0.2));
    let model = Sequential::new(vec![8])
        .add(Layer::Residual {
            body: vec![
                Layer::Dense {
                    weight: w1.clone(),
                    bias: b1.clone(),
                },
                Layer::Square,
            ],
        })
        .add(Layer::Dense {
            weight: w2.clone(),
            bias: b2.clone(),
        });
    let without_shortcut = Sequential::new(vec![8])
        .add(Layer::Dense {
            weight: w1.clone(),
            bias: b1.clone(),
        })
        .add(Layer::Square)
        .add(model.layers()[1].clone());
    let x = ArrayD::from_shape_fn(IxDyn(&[8]), |_| rng.random_range(-1.0..1.0));
    let want = model.predict(&x).unwrap();
    let x_plain = x.clone();

    let params = params();
    let top = params.max_level();
    let server_model = CkksModel::compile(&model, &params, top).unwrap();
    // The client's copy from the architecture (zero weights): same levels, same keys.
    let arch = Sequential::from_architecture(&model.architecture()).unwrap();
    let client_model = CkksModel::compile(&arch, &params, top).unwrap();
    assert_eq!(
        client_model.galois_elements(),
        server_model.galois_elements()
    );

    // Keys set up outside the session (as a server and client do in their handshake).
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let rlk = RelinKey::new(&sk, &mut rng);
    let gk = GaloisKeys::new(&sk, server_model.galois_elements(), &mut rng).unwrap();
    let enc = Encryptor::new(&params, PublicKey::new(&sk, &mut rng)).unwrap();
    let relin_key_bytes = rlk.to_bytes(params.context()).len() as u64;
    let server_keys = Arc::new(CkksEvalKeys::new(enc, rlk, gk));
    let client_keys = CkksSessionKeys::Client {
        sk: sk.clone(),
        galois: server_model.galois_elements().to_vec(),
    };
    let config = SessionConfig::default();
    let bfv = BfvParameters::new(&config.bfv_literal()).unwrap();
    let bfv_sk = Arc::new(SecretKey::random(bfv.context(), &mut rng));
    let bfv_pk = PublicKey::new(&bfv_sk, &mut rng);

    let program = move |s: &mut Session<MemoryChannel>,
                        model: &CkksModel,
                        keys: Option<&CkksEvalKeys>,
                        x: ArrayD<f64>|
          -> Result<Side, TensorError> {
        let server = s.role() == Role::Server;
        let (w1, b1, w2, b2) = if server {
            (w1.clone(), b1.clone(), w2.clone(), b2.clone())
        } else {
            (
                Array2::zeros((8, 8)),
                Array1::zeros(8),
                Array2::zeros((3, 8)),
                Array1::zeros(3),
            )
        };
        // Both parties declare the weights public (CKKS reveals are not flooded).
        s.allow_unflooded_ckks();
        let before = s.bytes();
        let xc = s.encrypt(Role::Client, &[8], move || x)?;
        let params = self::params();
        let l1 = PreparedCkksLinear::new(&params, "dense 1", w1.view(), b1.as_slice(), top, &[8])?;
        let l2 =
            PreparedCkksLinear::new(&params, "dense 2", w2.view(), b2.as_slice(), top - 2, &[3])?;
        let h = s.linear_ckks(&xc, &l1)?;
        let h = s.square(&h)?;
        // The shortcut is two levels above the body's output, at another scale: the
        // session's sum aligns them.
        let r = s.add(&xc, &h)?;
        let by_hand = s.linear_ckks(&r, &l2)?;
        let through_model = model
            .forward(s, xc.clone())
            .map_err(|e| TensorError::Unexpected(e.to_string()))?;
        let PrivateTensor::Ckks { level, scale, .. } = &by_hand else {
            unreachable!("a CKKS tensor")
        };
        let tracked = (*level, *scale);
        // The server must run the comparison; the client has nothing to compare.
        let mut same = !server;
        if let (
            PrivateTensor::Ckks { ct: Some(a), .. },
            PrivateTensor::Ckks { ct: Some(b), .. },
            PrivateTensor::Ckks {
                ct: Some(input), ..
            },
            Some(k),
        ) = (&by_hand, &through_model, &xc, keys)
        {
            // The server's own path: the model on a CkksEval with the same keys.
            let ev = Evaluator::new(&params);
            let alone = model
                .infer(&ev, k.relin_key(), k.galois_keys(), input)
                .map_err(|e| TensorError::Unexpected(e.to_string()))?;
            same = a == b && *a == alone;
            // The tracked level and scale are the ciphertext's.
            same &= (a.ct.level(), a.ct.scale()) == tracked;
        }
        let sent = s.bytes().0 - before.0;
        Ok((s.reveal(&by_hand, Role::Client)?, tracked, same, sent))
    };

    let (c0, c1) = MemoryChannel::pair();
    let (server_setup, client_setup) = (
        SessionSetup::new(
            config.clone(),
            bfv.clone(),
            LinkKeys::Server(bfv_pk),
            PartyId::P1,
        )
        .unwrap()
        .with_ckks(params.clone(), CkksSessionKeys::Server(server_keys.clone()))
        .unwrap(),
        SessionSetup::new(config, bfv, LinkKeys::Client(bfv_sk), PartyId::P0)
            .unwrap()
            .with_ckks(params.clone(), client_keys)
            .unwrap(),
    );
    let x2 = x.clone();
    let server_program = program.clone();
    let server = std::thread::spawn(move || {
        let party = Party::setup(PartyId::P1, c1, ChaCha20Rng::seed_from_u64(2)).unwrap();
        let mut s = Session::start(party, server_setup);
        server_program(&mut s, &server_model, Some(&server_keys), x2)
    });
    let party = Party::setup(PartyId::P0, c0, ChaCha20Rng::seed_from_u64(1)).unwrap();
    let mut s = Session::start(party, client_setup);
    let client = program(&mut s, &client_model, None, x).unwrap();
    let server = server.join().unwrap().unwrap();

    assert!(
        server.2,
        "hand-written, model-in-session and model-alone ciphertexts differ"
    );
    assert_eq!(
        client.1, server.1,
        "tracked level and scale differ between the parties"
    );
    assert_eq!(server.1 .0, 0, "three levels consumed");
    let got = client.0.unwrap();
    let err = max_diff(&got, &want);
    assert!(err < 1e-3, "error {err}");
    // Without its shortcut the network gives other outputs: the sum is really there.
    assert!(max_diff(&without_shortcut.predict(&x_plain).unwrap(), &want) > 0.05);
    // The keys were given: the client sent its input only, no relinearization or Galois
    // key (each far larger than a ciphertext).
    assert!(
        client.3 < relin_key_bytes,
        "client sent {} B, a relinearization key alone is {relin_key_bytes} B",
        client.3
    );
}

/// A session's CKKS sum of a square (level 1) and a cubic (level 0) of the same value:
/// aligned by the engine, it decrypts to the sum of the two within CKKS precision; a sum
/// with a tensor of another shape stays a typed error.
#[test]
fn session_sums_at_different_levels_are_aligned() {
    let mut rng = ChaCha20Rng::seed_from_u64(42);
    let x = ndarray::Array1::from_shape_fn(16, |_| rng.random_range(-1.0..1.0)).into_dyn();
    let want = x.mapv(|v| v * v + (0.5 - v + 0.25 * v * v * v));
    let x2 = x.clone();
    let (client, server) = run_local(move |s| {
        let x = x2.clone();
        let xc = s.encrypt(Role::Client, &[16], move || x)?;
        let sq = s.square(&xc)?; // one level: level 2
        let p = s.poly(&xc, &[0.5, -1.0, 0.0, 0.25])?; // two levels: level 1
        let levels = match (&sq, &p) {
            (PrivateTensor::Ckks { level: a, .. }, PrivateTensor::Ckks { level: b, .. }) => {
                (*a, *b)
            }
            _ => unreachable!(),
        };
        let sum = s.add(&sq, &p)?;
        let other_shape = s
            .add(&sum, &PrivateTensor::Public(ArrayD::zeros(vec![3])))
            .is_err();
        Ok((s.reveal(&sum, Role::Client)?, levels, other_shape))
    })
    .unwrap();
    assert!(server.0.is_none());
    assert_eq!(client.1, (2, 1), "the operands are at different levels");
    assert!(client.2 && server.2);
    let err = max_diff(&client.0.unwrap(), &want);
    assert!(err < 1e-3, "error {err}");
}

fn square_mlp() -> Sequential {
    load_onnx(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits_square_mlp.onnx"),
    )
    .unwrap()
}

/// The server prepares a CKKS model's linear maps once, at bind time; two client sessions
/// (each with its own key upload) both run on those same prepared maps: each map counts two
/// applications, and the server's model still shares its encodings with the copies taken
/// before the sessions.
#[test]
fn the_servers_prepared_ckks_maps_serve_every_session() {
    let m = square_mlp();
    let server = Server::bind_models(
        "127.0.0.1:0",
        vec![ModelSpec::new("sq", m.clone()).with_mode(ModeChoice::CkksPublicWeights)],
        ServerConfig::default(),
    )
    .unwrap();
    let maps = server.ckks_model("sq").unwrap().linear_maps();
    assert!(maps.len() >= 2, "{} maps", maps.len());
    assert!(maps.iter().all(|w| w.applications() == 0));
    let addr = server.local_addr().to_string();
    let handle = server.shutdown_handle();
    let x = ArrayD::from_shape_fn(IxDyn(m.input_shape()), |i| (i[0] % 7) as f64 / 8.0);
    let want = m.predict(&x).unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| server.run());
        for _ in 0..2 {
            let mut client = Client::connect(&addr).unwrap();
            let y = client.infer("sq", &x).unwrap();
            assert!(max_diff(&y, &want) < 1e-2);
            client.close().unwrap();
        }
        handle.shutdown();
    });
    // The server's model after both sessions: the same encodings as at bind time, each
    // applied once per session.
    let after = server.ckks_model("sq").unwrap().linear_maps();
    for (w, a) in maps.iter().zip(&after) {
        assert!(w.shares_encoding_with(a), "{}: prepared again", w.label());
        assert_eq!(a.applications(), 2, "{}", a.label());
    }
}

/// Keys given to a session must be the role's and of the session's parameters: refused
/// with typed errors naming what differs.
#[test]
fn session_ckks_keys_of_the_wrong_role_or_parameters_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(43);
    let config = SessionConfig::default();
    let bfv = BfvParameters::new(&config.bfv_literal()).unwrap();
    let bfv_sk = Arc::new(SecretKey::random(bfv.context(), &mut rng));
    let bfv_pk = PublicKey::new(&bfv_sk, &mut rng);
    let params = params();
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let server = || {
        SessionSetup::new(
            config.clone(),
            bfv.clone(),
            LinkKeys::Server(bfv_pk.clone()),
            PartyId::P1,
        )
        .unwrap()
    };
    // Client keys on the server's side.
    let client_keys = CkksSessionKeys::Client {
        sk: sk.clone(),
        galois: vec![],
    };
    match server().with_ckks(params.clone(), client_keys) {
        Err(TensorError::Invalid { what, detail }) => {
            assert_eq!(what, "session CKKS keys");
            assert!(
                detail.contains("Client") && detail.contains("Server"),
                "{detail}"
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    // Keys of other parameters (N = 16384) for a session at N = 8192.
    let other = CkksParameters::new(&CkksParametersLiteral::n16384()).unwrap();
    let osk = Arc::new(SecretKey::random(other.context(), &mut rng));
    let keys = CkksEvalKeys::new(
        Encryptor::new(&other, PublicKey::new(&osk, &mut rng)).unwrap(),
        RelinKey::new(&osk, &mut rng),
        GaloisKeys::new(&osk, &[], &mut rng).unwrap(),
    );
    match server().with_ckks(params.clone(), CkksSessionKeys::Server(Arc::new(keys))) {
        Err(TensorError::Invalid { what, detail }) => {
            assert_eq!(what, "session CKKS keys");
            assert!(
                detail.contains(&format!("{:016x}", params.id())),
                "{detail}"
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// Polynomial blocks of branches summed (a projection shortcut, a per-channel affine map, a
/// transposition and a padding: linear maps from their plaintext semantics) run in the
/// non-interactive CKKS mode, within CKKS precision of the plaintext model; a block that
/// concatenates is not polynomial for the planner (it runs in the hybrid mode).
#[test]
fn blocks_of_summed_branches_run_under_ckks() {
    use cipherml::nn::{Join, Mode};
    let mut rng = ChaCha20Rng::seed_from_u64(41);
    let mut dense = |o: usize, i: usize| Layer::Dense {
        weight: Array2::from_shape_fn((o, i), |_| rng.random_range(-0.4..0.4)),
        bias: Array1::from_shape_fn(o, |k| 0.05 * k as f64),
    };
    let model = Sequential::new(vec![2, 4])
        .add(Layer::Transpose { perm: vec![1, 0] })
        .add(Layer::Affine {
            scale: Array1::from(vec![0.5, -1.0, 2.0, 1.5]),
            shift: Array1::from(vec![0.1, 0.0, -0.2, 0.3]),
        })
        .add(Layer::Pad {
            pads: vec![(0, 0), (1, 1)],
        })
        .add(Layer::Flatten)
        .add(Layer::Branches {
            branches: vec![vec![dense(6, 16), Layer::Square], vec![dense(6, 16)]],
            join: Join::Add,
        })
        .add(dense(3, 6));
    let x = ArrayD::from_shape_fn(IxDyn(&[2, 4]), |i| {
        (i[0] as f64 - 0.5) * (i[1] as f64 - 1.2)
    });
    let (y, run) = model.predict_private(&x).unwrap();
    assert_eq!(run.mode, Mode::Ckks);
    let want = model.predict(&x).unwrap();
    for (a, b) in y.iter().zip(want.iter()) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }
    let concat = Sequential::new(vec![4]).add(Layer::Branches {
        branches: vec![vec![Layer::Square], vec![]],
        join: Join::Concat,
    });
    let (y, run) = concat
        .predict_private(&ArrayD::from_elem(IxDyn(&[4]), 0.5))
        .unwrap();
    assert_eq!(run.mode, Mode::Hybrid);
    assert!(y.iter().take(4).all(|v| (v - 0.25).abs() < 0.01), "{y}");
    assert!(y.iter().skip(4).all(|v| (v - 0.5).abs() < 0.01), "{y}");
}
