//! The inference server under load and under misbehaving clients.

use std::time::{Duration, Instant};

use cipherml::client::Client;
use cipherml::data::{data_dir, read_npy};
use cipherml::nn::load_onnx;
use cipherml::protocol::{send, ClientMsg, PROTOCOL_VERSION};
use cipherml::server::{Server, ServerConfig};
use ndarray::Axis;

fn model() -> cipherml::nn::Sequential {
    load_onnx(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits_mlp.onnx"))
        .unwrap()
}

fn start(config: ServerConfig) -> String {
    let server = Server::bind("127.0.0.1:0", vec![("mlp".into(), model())], config).unwrap();
    let addr = server.local_addr().to_string();
    std::thread::spawn(move || server.run());
    addr
}

fn argmax(v: &ndarray::ArrayD<f64>) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

#[test]
fn eight_concurrent_clients_with_twenty_inferences_each() {
    let addr = start(ServerConfig::default());
    let xs = std::sync::Arc::new(
        read_npy(data_dir().join("digits_test_x.npy"))
            .unwrap()
            .to_f64(),
    );
    let t = Instant::now();
    let handles: Vec<_> = (0..8)
        .map(|c| {
            let (addr, xs) = (addr.clone(), xs.clone());
            std::thread::spawn(move || {
                let m = model();
                let mut client = Client::connect(&addr).unwrap();
                for i in 0..20 {
                    let x = xs.index_axis(Axis(0), c * 20 + i).to_owned();
                    let got = client.infer("mlp", &x).unwrap();
                    let want = m.predict(&x).unwrap();
                    assert_eq!(argmax(&got), argmax(&want), "client {c} image {i}");
                    let err = got
                        .iter()
                        .zip(want.iter())
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f64::max);
                    assert!(err < 0.05, "client {c} image {i}: {err}");
                }
                let bytes = client.bytes();
                client.close().unwrap();
                bytes
            })
        })
        .collect();
    let bytes: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    println!(
        "8 clients x 20 inferences: {:.2} s in all, {:.2} MB per inference",
        t.elapsed().as_secs_f64(),
        bytes as f64 / 160.0 / 1e6
    );
}

#[test]
fn busy_server_refuses_and_stalled_sessions_time_out() {
    let addr = start(ServerConfig {
        max_sessions: 1,
        timeout: Duration::from_millis(500),
        ..Default::default()
    });
    // A client that says hello and then stalls holds the only slot...
    let mut stalled = cipherml::mpc::net::TcpChannel::connect(&addr, Default::default()).unwrap();
    send(
        &mut stalled,
        &ClientMsg::Hello {
            version: PROTOCOL_VERSION,
            token: None,
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let m = model();
    match Client::connect(&addr) {
        Err(e) => assert!(e.to_string().contains("busy"), "{e}"),
        Ok(_) => panic!("the second session must be refused while the first holds the slot"),
    }
    // ...until its read timeout (0.5 s) ends it; then the server serves again (retried for a
    // while, so that a loaded machine does not make the test flaky).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = loop {
        std::thread::sleep(Duration::from_millis(200));
        match Client::connect(&addr) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => assert!(e.to_string().contains("busy"), "{e}"),
            Err(e) => panic!("the stalled session never timed out: {e}"),
        }
    };
    let x = read_npy(data_dir().join("digits_test_x.npy"))
        .unwrap()
        .to_f64()
        .index_axis(Axis(0), 0)
        .to_owned();
    assert_eq!(
        argmax(&client.infer("mlp", &x).unwrap()),
        argmax(&m.predict(&x).unwrap())
    );
    client.close().unwrap();
    drop(stalled);
}

#[test]
fn bearer_token_is_required_when_configured() {
    let server = Server::bind(
        "127.0.0.1:0",
        vec![("mlp".into(), model())],
        ServerConfig::default(),
    )
    .unwrap()
    .with_auth(cipherml::server::Auth::token("s3cret"));
    let addr = server.local_addr().to_string();
    std::thread::spawn(move || server.run());
    for bad in [None, Some("wrong!"), Some("s3cre")] {
        let err = Client::connect_authenticated(&addr, bad).unwrap_err();
        assert!(err.to_string().contains("unauthorized"), "{err}");
    }
    let client = Client::connect_authenticated(&addr, Some("s3cret")).unwrap();
    assert_eq!(client.models()[0].name, "mlp");
    client.close().unwrap();
}

#[test]
fn random_control_messages_never_panic_the_decoder() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    for _ in 0..2000 {
        let len = rng.random_range(0..64);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let (mut a, mut b) = cipherml::mpc::net::MemoryChannel::pair();
        cipherml::mpc::net::Channel::send(&mut a, &bytes).unwrap();
        cipherml::mpc::net::Channel::flush(&mut a).unwrap();
        let _ = cipherml::protocol::recv::<_, ClientMsg>(&mut b);
    }
}

#[test]
fn wrong_protocol_version_and_messages_out_of_order_are_refused() {
    use cipherml::protocol::{recv, ServerMsg};
    let addr = start(ServerConfig::default());
    let mut ch = cipherml::mpc::net::TcpChannel::connect(&addr, Default::default()).unwrap();
    send(
        &mut ch,
        &ClientMsg::Hello {
            version: 99,
            token: None,
        },
    )
    .unwrap();
    match recv::<_, ServerMsg>(&mut ch).unwrap() {
        ServerMsg::Error { message } => assert!(
            message.contains("unsupported protocol version 99"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    // Inference requested before hello and model selection: the session is closed.
    let mut ch = cipherml::mpc::net::TcpChannel::connect(&addr, Default::default()).unwrap();
    send(
        &mut ch,
        &ClientMsg::Infer {
            model: "mlp".into(),
            batch: 1,
        },
    )
    .unwrap();
    assert!(recv::<_, ServerMsg>(&mut ch).is_err());
    // An unknown model is refused within a session, which goes on.
    let m = model();
    let mut client = Client::connect(&addr).unwrap();
    let x = read_npy(data_dir().join("digits_test_x.npy"))
        .unwrap()
        .to_f64()
        .index_axis(Axis(0), 1)
        .to_owned();
    let err = client.infer("nope", &x).unwrap_err();
    assert!(err.to_string().contains("no model named"), "{err}");
    assert_eq!(
        argmax(&client.infer("mlp", &x).unwrap()),
        argmax(&m.predict(&x).unwrap())
    );
    // The client received the architecture, not the weights.
    assert_eq!(client.models()[0].architecture, m.architecture());
    client.close().unwrap();
}

fn digits_row(i: usize) -> ndarray::ArrayD<f64> {
    read_npy(data_dir().join("digits_test_x.npy"))
        .unwrap()
        .to_f64()
        .index_axis(Axis(0), i)
        .to_owned()
}

fn max_abs_diff(a: &ndarray::ArrayD<f64>, b: &ndarray::ArrayD<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn square_mlp() -> cipherml::nn::Sequential {
    load_onnx(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits_square_mlp.onnx"),
    )
    .unwrap()
}

/// A server hosting the hybrid MLP and the CKKS square MLP.
fn start_both() -> String {
    let server = Server::bind(
        "127.0.0.1:0",
        vec![("mlp".into(), model()), ("square".into(), square_mlp())],
        ServerConfig::default(),
    )
    .unwrap();
    let addr = server.local_addr().to_string();
    std::thread::spawn(move || server.run());
    addr
}

#[test]
fn ckks_models_are_served_after_a_key_upload_and_batches_work() {
    let addr = start_both();
    let m = square_mlp();
    let mut client = Client::connect(&addr).unwrap();
    let info = client.models().iter().find(|i| i.name == "square").unwrap();
    assert_eq!(info.mode, "ckks");
    assert!(info.params.starts_with("CKKS N=8192"), "{}", info.params);
    let hybrid = client.models().iter().find(|i| i.name == "mlp").unwrap();
    assert_eq!(hybrid.mode, "hybrid");
    // One request with a batch of four rows, in both modes.
    let xs = read_npy(data_dir().join("digits_test_x.npy"))
        .unwrap()
        .to_f64()
        .slice_axis(Axis(0), ndarray::Slice::from(0..4))
        .to_owned();
    for (name, reference, tol) in [("square", square_mlp(), 1e-2), ("mlp", model(), 0.05)] {
        let ys = client.infer_batch(name, &xs).unwrap();
        assert_eq!(ys.len_of(Axis(0)), 4);
        for (i, (x, y)) in xs.outer_iter().zip(ys.outer_iter()).enumerate() {
            let want = reference.predict(&x.to_owned()).unwrap();
            let err = max_abs_diff(&y.to_owned(), &want);
            assert!(err < tol, "{name} row {i}: {err}");
            assert_eq!(argmax(&y.to_owned()), argmax(&want), "{name} row {i}");
        }
    }
    // Later requests reuse the uploaded keys: one ciphertext each way.
    let before = client.bytes();
    let y = client.infer("square", &digits_row(7)).unwrap();
    let per_inference = client.bytes() - before;
    assert!(per_inference < 400_000, "{per_inference} bytes");
    assert!(max_abs_diff(&y, &m.predict(&digits_row(7)).unwrap()) < 1e-2);
    client.close().unwrap();
}

/// A raw session past the hello and OT set-up, to send what a real client would not.
fn raw_session(
    addr: &str,
) -> cipherml::mpc::party::Party<cipherml::mpc::net::TcpChannel, rand_chacha::ChaCha20Rng> {
    use cipherml::protocol::{recv, ServerMsg};
    let mut ch = cipherml::mpc::net::TcpChannel::connect(addr, Default::default()).unwrap();
    send(
        &mut ch,
        &ClientMsg::Hello {
            version: PROTOCOL_VERSION,
            token: None,
        },
    )
    .unwrap();
    assert!(matches!(
        recv::<_, ServerMsg>(&mut ch).unwrap(),
        ServerMsg::Hello { .. }
    ));
    let mut p = cipherml::mpc::party::Party::setup(
        cipherml::mpc::share::PartyId::P0,
        ch,
        cipherml::mpc::prg::os_rng(),
    )
    .unwrap();
    // The server hosts a hybrid model: the BFV public key goes up first.
    let hybrid =
        cipherml::nn::HybridModel::compile(&model(), &cipherml::nn::HybridConfig::default(), false)
            .unwrap();
    let sk = std::sync::Arc::new(cipherml::he::rlwe::SecretKey::random(
        hybrid.params().context(),
        &mut cipherml::mpc::prg::os_rng(),
    ));
    hybrid.send_public_key(&mut p, &sk).unwrap();
    p
}

fn server_ok<C: cipherml::mpc::net::Channel>(ch: &mut C) {
    match cipherml::protocol::recv::<_, cipherml::protocol::ServerMsg>(ch).unwrap() {
        cipherml::protocol::ServerMsg::Ok => {}
        other => panic!("expected Ok, got {other:?}"),
    }
}

fn request<C: cipherml::mpc::net::Channel>(ch: &mut C, model: &str, batch: u32) {
    send(
        ch,
        &ClientMsg::Infer {
            model: model.into(),
            batch,
        },
    )
    .unwrap();
}

fn server_error<C: cipherml::mpc::net::Channel>(ch: &mut C) -> String {
    match cipherml::protocol::recv::<_, cipherml::protocol::ServerMsg>(ch).unwrap() {
        cipherml::protocol::ServerMsg::Error { message } => message,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn hostile_keys_and_ciphertexts_are_refused_and_other_clients_go_on() {
    use cipherml::he::ckks::{CkksParameters, CkksParametersLiteral, Encoder};
    use cipherml::he::rlwe::{GaloisKeys, RelinKey, SecretKey};
    use cipherml::mpc::net::Channel;
    use cipherml::nn::CkksModel;
    let addr = start_both();
    // A public key of the wrong size ends that session only.
    {
        let mut ch = cipherml::mpc::net::TcpChannel::connect(&addr, Default::default()).unwrap();
        send(
            &mut ch,
            &ClientMsg::Hello {
                version: PROTOCOL_VERSION,
                token: None,
            },
        )
        .unwrap();
        let _: cipherml::protocol::ServerMsg = cipherml::protocol::recv(&mut ch).unwrap();
        let mut p = cipherml::mpc::party::Party::setup(
            cipherml::mpc::share::PartyId::P0,
            ch,
            cipherml::mpc::prg::os_rng(),
        )
        .unwrap();
        p.channel().send(&[0u8; 1000]).unwrap();
        send(
            p.channel(),
            &ClientMsg::Infer {
                model: "mlp".into(),
                batch: 1,
            },
        )
        .unwrap();
        assert!(p.channel().recv().is_err(), "the session is closed");
    }
    let m = square_mlp();
    let (cm, params) = CkksModel::for_model(&m).unwrap();
    let mut rng = cipherml::mpc::prg::os_rng();
    let sk = std::sync::Arc::new(SecretKey::random(params.context(), &mut rng));
    let rlk = RelinKey::new(&sk, &mut rng).to_bytes(params.context());
    let gk = GaloisKeys::new(&sk, cm.galois_elements(), &mut rng)
        .unwrap()
        .to_bytes(params.context());
    let pk = cipherml::he::rlwe::PublicKey::new(&sk, &mut rng).to_bytes(params.context());
    let mut p = raw_session(&addr);
    let ch = p.channel();
    let upload = |ch: &mut cipherml::mpc::net::TcpChannel, r: &[u8], g: &[u8]| {
        send(
            ch,
            &ClientMsg::UploadKeys {
                model: "square".into(),
            },
        )
        .unwrap();
        ch.send(&pk).unwrap();
        ch.send(r).unwrap();
        ch.send(g).unwrap();
    };
    // An inference request before the key upload.
    request(ch, "square", 1);
    let e = server_error(ch);
    assert!(e.contains("upload the keys first"), "{e}");
    // Keys of the wrong size (truncated, and one byte too many).
    upload(ch, &rlk[..rlk.len() - 100], &gk);
    let e = server_error(ch);
    assert!(e.contains("relinearization key"), "{e}");
    let mut long = gk.clone();
    long.push(0);
    upload(ch, &rlk, &long);
    let e = server_error(ch);
    assert!(e.contains("Galois keys"), "{e}");
    // Keys for other parameters.
    let other = CkksParameters::new(&CkksParametersLiteral::n16384()).unwrap();
    let sk2 = SecretKey::random(other.context(), &mut rng);
    upload(
        ch,
        &RelinKey::new(&sk2, &mut rng).to_bytes(other.context()),
        &gk,
    );
    let e = server_error(ch);
    assert!(e.contains("relinearization key"), "{e}");
    // A Galois key missing.
    let fewer = GaloisKeys::new(&sk, &cm.galois_elements()[1..], &mut rng)
        .unwrap()
        .to_bytes(params.context());
    upload(ch, &rlk, &fewer);
    let e = server_error(ch);
    assert!(e.contains("needs exactly"), "{e}");
    // Keys for a hybrid model.
    send(
        ch,
        &ClientMsg::UploadKeys {
            model: "mlp".into(),
        },
    )
    .unwrap();
    ch.send(&pk).unwrap();
    ch.send(&rlk).unwrap();
    ch.send(&gk).unwrap();
    let e = server_error(ch);
    assert!(e.contains("needs no keys"), "{e}");
    // A batch out of bounds.
    request(ch, "mlp", u32::MAX);
    let e = server_error(ch);
    assert!(e.contains("batch"), "{e}");
    // Good keys, then a ciphertext at the wrong level: an error, and the session ends.
    upload(ch, &rlk, &gk);
    server_ok(ch);
    request(ch, "square", 1);
    server_ok(ch);
    let dec = cipherml::he::ckks::Decryptor::new(&params, sk.clone()).unwrap();
    let pt = Encoder::new(&params)
        .encode_f64(&[0.5; 8], params.max_level(), params.default_scale())
        .unwrap();
    let good = dec.encrypt_symmetric(&pt, &mut rng).unwrap();
    let low = cipherml::he::ckks::Evaluator::new(&params)
        .drop_to_level(&good, 1)
        .unwrap();
    ch.send(&low.to_bytes(&params)).unwrap();
    let e = server_error(ch);
    assert!(
        e.contains(&format!("level mismatch: {} vs 1", params.max_level())),
        "{e}"
    );
    assert!(ch.recv().is_err(), "the session is closed");
    // A ciphertext for other parameters, in a new session.
    let mut p = raw_session(&addr);
    let ch = p.channel();
    upload(ch, &rlk, &gk);
    server_ok(ch);
    request(ch, "square", 1);
    server_ok(ch);
    let other_dec = cipherml::he::ckks::Decryptor::new(&other, sk2.into()).unwrap();
    let pt = Encoder::new(&other)
        .encode_f64(&[0.5; 8], other.max_level(), other.default_scale())
        .unwrap();
    let ct = other_dec.encrypt_symmetric(&pt, &mut rng).unwrap();
    ch.send(&ct.to_bytes(&other)).unwrap();
    let e = server_error(ch);
    assert!(e.contains("ciphertext"), "{e}");
    assert!(ch.recv().is_err(), "the session is closed");
    // Meanwhile and after, a good client is served.
    let mut client = Client::connect(&addr).unwrap();
    let y = client.infer("square", &digits_row(3)).unwrap();
    assert!(max_abs_diff(&y, &m.predict(&digits_row(3)).unwrap()) < 1e-2);
    client.close().unwrap();
}

#[test]
fn tls_sessions_work_and_plain_or_untrusted_peers_are_refused() {
    use cipherml::client::{ClientOptions, ClientTls};
    use cipherml::server::ServerTls;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
    let tls = ServerTls::from_pem_files(&dir.join("server.pem"), &dir.join("server.key")).unwrap();
    let server = Server::bind(
        "127.0.0.1:0",
        vec![("mlp".into(), model()), ("square".into(), square_mlp())],
        ServerConfig {
            timeout: Duration::from_secs(5),
            ..Default::default()
        },
    )
    .unwrap()
    .with_tls(tls);
    let addr = server.local_addr().to_string();
    std::thread::spawn(move || server.run());
    // A plain-TCP client cannot talk to a TLS server; it gets an error, not a hang.
    assert!(Client::connect(&addr).is_err());
    // A client that does not trust the server's CA refuses it.
    let untrusted = ClientOptions {
        tls: Some(ClientTls::from_ca_file(&dir.join("server.pem")).unwrap()),
        ..Default::default()
    };
    assert!(Client::connect_with(&addr, &untrusted).is_err());
    // The wrong name is refused too.
    let wrong_name = ClientOptions {
        tls: Some(
            ClientTls::from_ca_file(&dir.join("ca.pem"))
                .unwrap()
                .with_server_name("example.com"),
        ),
        ..Default::default()
    };
    assert!(Client::connect_with(&addr, &wrong_name).is_err());
    // A trusting client gets the same results as over TCP, in both modes.
    let options = ClientOptions {
        tls: Some(ClientTls::from_ca_file(&dir.join("ca.pem")).unwrap()),
        ..Default::default()
    };
    let mut client = Client::connect_with(&addr, &options).unwrap();
    for i in 0..3 {
        let x = digits_row(i);
        let y = client.infer("mlp", &x).unwrap();
        assert!(max_abs_diff(&y, &model().predict(&x).unwrap()) < 0.05);
        let y = client.infer("square", &x).unwrap();
        assert!(max_abs_diff(&y, &square_mlp().predict(&x).unwrap()) < 1e-2);
    }
    client.close().unwrap();
    // Missing or mismatched files give errors naming the file.
    let e = ServerTls::from_pem_files(&dir.join("nope.pem"), &dir.join("server.key")).unwrap_err();
    assert!(e.to_string().contains("nope.pem"), "{e}");
    let e = ServerTls::from_pem_files(&dir.join("server.pem"), &dir.join("ca.pem")).unwrap_err();
    assert!(e.to_string().contains("ca.pem"), "{e}");
}

/// A hostile server that announces shapes other than its architecture's: the client
/// refuses with an error before sending anything (no panic, no huge allocation).
#[test]
fn client_refuses_announced_shapes_that_contradict_the_architecture() {
    use cipherml::protocol::{recv, ModelInfo, ServerMsg};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let m = square_mlp();
    let info = ModelInfo {
        name: "square".into(),
        input_shape: m.input_shape().to_vec(),
        output_shape: vec![1 << 30],
        mode: "ckks".into(),
        params: "whatever".into(),
        architecture: m.architecture(),
    };
    let fake = std::thread::spawn(move || {
        let mut ch = cipherml::mpc::net::TcpChannel::accept(&listener, Default::default()).unwrap();
        let _: ClientMsg = recv(&mut ch).unwrap();
        send(
            &mut ch,
            &ServerMsg::Hello {
                version: PROTOCOL_VERSION,
                models: vec![info],
            },
        )
        .unwrap();
        let mut p = cipherml::mpc::party::Party::setup(
            cipherml::mpc::share::PartyId::P1,
            ch,
            cipherml::mpc::prg::os_rng(),
        )
        .unwrap();
        // Whatever the client sends next (nothing is expected).
        let _ = cipherml::mpc::net::Channel::recv(p.channel());
    });
    let mut client = Client::connect(&addr).unwrap();
    let err = client.infer("square", &digits_row(0)).unwrap_err();
    assert!(
        err.to_string().contains("differ from its architecture"),
        "{err}"
    );
    drop(client);
    fake.join().unwrap();
}
