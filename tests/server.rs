//! The inference server under load and under misbehaving clients.

use std::time::{Duration, Instant};

use cipherml::client::Client;
use cipherml::data::{data_dir, read_npy};
use cipherml::nn::load_onnx;
use cipherml::protocol::{send, ClientMsg, HeParams, ModelMode, RefusalCode, PROTOCOL_VERSION};
use cipherml::server::{ModeChoice, ModelSpec, Server, ServerConfig};
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
            held_keys: None,
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
            held_keys: None,
        },
    )
    .unwrap();
    match recv::<_, ServerMsg>(&mut ch).unwrap() {
        ServerMsg::Error { message, .. } => assert!(
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
    match recv::<_, ServerMsg>(&mut ch).unwrap() {
        ServerMsg::Error { code, message } => {
            assert_eq!(code, RefusalCode::BadRequest);
            assert!(message.contains("before Hello"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        recv::<_, ServerMsg>(&mut ch).is_err(),
        "the session is closed"
    );
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

/// A fake server: accepts one client, answers its hello with `models`, and returns
/// whether the client sent anything more (its key upload, or nothing if it refused).
fn fake_server(
    models: Vec<cipherml::protocol::ModelInfo>,
) -> (String, std::thread::JoinHandle<bool>) {
    use cipherml::protocol::{recv, ServerMsg};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = std::thread::spawn(move || {
        let mut ch = cipherml::mpc::net::TcpChannel::accept(&listener, Default::default()).unwrap();
        let _: ClientMsg = recv(&mut ch).unwrap();
        send(
            &mut ch,
            &ServerMsg::Hello {
                version: PROTOCOL_VERSION,
                models,
                cached_keys: Vec::new(),
            },
        )
        .unwrap();
        cipherml::mpc::net::Channel::recv(&mut ch).is_ok()
    });
    (addr, fake)
}

/// The hybrid MLP and the square MLP, the latter in the CKKS mode.
fn both_models() -> Vec<ModelSpec> {
    vec![
        ModelSpec::new("mlp", model()),
        ModelSpec::new("square", square_mlp()).with_mode(ModeChoice::CkksPublicWeights),
    ]
}

/// A server hosting the hybrid MLP and the CKKS square MLP.
fn start_both() -> String {
    let server =
        Server::bind_models("127.0.0.1:0", both_models(), ServerConfig::default()).unwrap();
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
    assert_eq!(info.mode, ModelMode::Ckks);
    assert!(
        matches!(info.params, HeParams::Ckks { degree: 8192, .. }),
        "{}",
        info.params
    );
    assert!(
        info.params.to_string().starts_with("CKKS N=8192"),
        "{}",
        info.params
    );
    let hybrid = client.models().iter().find(|i| i.name == "mlp").unwrap();
    assert_eq!(hybrid.mode, ModelMode::Hybrid);
    assert!(
        matches!(hybrid.params, HeParams::Bfv { degree: 8192, .. }),
        "{}",
        hybrid.params
    );
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

/// A raw session past the hello (the OT set-up waits for the first hybrid inference), to
/// send what a real client would not.
fn raw_session(addr: &str) -> cipherml::mpc::net::TcpChannel {
    use cipherml::protocol::{recv, ServerMsg};
    let mut ch = cipherml::mpc::net::TcpChannel::connect(addr, Default::default()).unwrap();
    send(
        &mut ch,
        &ClientMsg::Hello {
            version: PROTOCOL_VERSION,
            token: None,
            held_keys: None,
        },
    )
    .unwrap();
    assert!(matches!(
        recv::<_, ServerMsg>(&mut ch).unwrap(),
        ServerMsg::Hello { .. }
    ));
    ch
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
        cipherml::protocol::ServerMsg::Error { message, .. } => message,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn server_refusal<C: cipherml::mpc::net::Channel>(ch: &mut C) -> (RefusalCode, String) {
    match cipherml::protocol::recv::<_, cipherml::protocol::ServerMsg>(ch).unwrap() {
        cipherml::protocol::ServerMsg::Error { code, message } => (code, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Sends `UploadKeys` for `model` and the three key messages.
fn upload<C: cipherml::mpc::net::Channel>(ch: &mut C, model: &str, pk: &[u8], r: &[u8], g: &[u8]) {
    send(
        ch,
        &ClientMsg::UploadKeys {
            model: model.into(),
        },
    )
    .unwrap();
    ch.send(pk).unwrap();
    ch.send(r).unwrap();
    ch.send(g).unwrap();
    ch.flush().unwrap();
}

/// Real keys for the square MLP's CKKS model: (secret key, public key, relinearization key,
/// Galois keys) bytes.
fn square_keys() -> (
    std::sync::Arc<cipherml::he::rlwe::SecretKey>,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
) {
    use cipherml::he::rlwe::{GaloisKeys, PublicKey, RelinKey, SecretKey};
    let (cm, params) = cipherml::nn::CkksModel::for_model(&square_mlp()).unwrap();
    let mut rng = cipherml::mpc::prg::os_rng();
    let sk = std::sync::Arc::new(SecretKey::random(params.context(), &mut rng));
    let pk = PublicKey::new(&sk, &mut rng).to_bytes(params.context());
    let rlk = RelinKey::new(&sk, &mut rng).to_bytes(params.context());
    let gk = GaloisKeys::new(&sk, cm.galois_elements(), &mut rng)
        .unwrap()
        .to_bytes(params.context());
    (sk, pk, rlk, gk)
}

#[test]
fn hostile_keys_and_ciphertexts_are_refused_and_other_clients_go_on() {
    use cipherml::he::ckks::{CkksParameters, CkksParametersLiteral, Encoder};
    use cipherml::he::rlwe::{GaloisKeys, RelinKey, SecretKey};
    use cipherml::mpc::net::Channel;
    use cipherml::nn::CkksModel;
    let addr = start_both();
    // Garbage where a control message goes ends that session only.
    {
        let mut ch = raw_session(&addr);
        ch.send(&[0u8; 1000]).unwrap();
        assert!(ch.recv().is_err(), "the session is closed");
    }
    let m = square_mlp();
    let (cm, params) = CkksModel::for_model(&m).unwrap();
    let mut rng = cipherml::mpc::prg::os_rng();
    let (sk, pk, rlk, gk) = square_keys();
    let other = CkksParameters::new(&CkksParametersLiteral::n16384()).unwrap();
    let sk2 = SecretKey::random(other.context(), &mut rng);
    // Keys whose size is not the model's (truncated, one byte too many, other parameters,
    // a Galois key missing) are refused from their length prefix, and the session ends
    // (their bodies are not read).
    let mut long = gk.clone();
    long.push(0);
    let fewer = GaloisKeys::new(&sk, &cm.galois_elements()[1..], &mut rng)
        .unwrap()
        .to_bytes(params.context());
    let other_rlk = RelinKey::new(&sk2, &mut rng).to_bytes(other.context());
    for (r, g, what) in [
        (&rlk[..rlk.len() - 100], &gk[..], "relinearization key"),
        (&rlk[..], &long[..], "Galois keys"),
        (&other_rlk[..], &gk[..], "relinearization key"),
        (&rlk[..], &fewer[..], "Galois keys"),
    ] {
        let mut ch = raw_session(&addr);
        upload(&mut ch, "square", &pk, r, g);
        let (code, e) = server_refusal(&mut ch);
        assert_eq!(code, RefusalCode::BadRequest, "{e}");
        assert!(e.contains(what) && e.contains("bytes"), "{e}");
        assert!(ch.recv().is_err(), "the session is closed");
    }
    // Keys for an unknown or a hybrid model end the session too (their size is unknown).
    for (model, code, what) in [
        ("nope", RefusalCode::UnknownModel, "no model named"),
        ("mlp", RefusalCode::BadRequest, "needs no keys"),
    ] {
        let mut ch = raw_session(&addr);
        upload(&mut ch, model, &pk, &rlk, &gk);
        let (c, e) = server_refusal(&mut ch);
        assert_eq!(c, code, "{e}");
        assert!(e.contains(what), "{e}");
    }
    let mut ch = raw_session(&addr);
    // An inference request before the key upload.
    request(&mut ch, "square", 1);
    let (code, e) = server_refusal(&mut ch);
    assert_eq!(code, RefusalCode::BadRequest);
    assert!(e.contains("upload the keys first"), "{e}");
    // Galois keys of the right size for other elements: refused from their element
    // fields, and the session goes on.
    let shifted: Vec<usize> = cm
        .galois_elements()
        .iter()
        .map(|&g| (g * 5) % (2 * params.degree()))
        .collect();
    let mut sorted = shifted.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() == shifted.len() && sorted != cm.galois_elements() {
        let wrong = GaloisKeys::new(&sk, &sorted, &mut rng)
            .unwrap()
            .to_bytes(params.context());
        assert_eq!(wrong.len(), gk.len());
        upload(&mut ch, "square", &pk, &rlk, &wrong);
        let (code, e) = server_refusal(&mut ch);
        assert_eq!(code, RefusalCode::BadRequest);
        assert!(e.contains("needs exactly"), "{e}");
    }
    // A batch out of bounds.
    request(&mut ch, "mlp", u32::MAX);
    let (code, e) = server_refusal(&mut ch);
    assert_eq!(code, RefusalCode::BadRequest);
    assert!(e.contains("batch"), "{e}");
    // Good keys, then a ciphertext at the wrong level: an error, and the session ends.
    upload(&mut ch, "square", &pk, &rlk, &gk);
    server_ok(&mut ch);
    request(&mut ch, "square", 1);
    server_ok(&mut ch);
    let dec = cipherml::he::ckks::Decryptor::new(&params, sk.clone()).unwrap();
    let pt = Encoder::new(&params)
        .encode_f64(&[0.5; 8], params.max_level(), params.default_scale())
        .unwrap();
    let good = dec.encrypt_symmetric(&pt, &mut rng).unwrap();
    let low = cipherml::he::ckks::Evaluator::new(&params)
        .drop_to_level(&good, 1)
        .unwrap();
    ch.send(&low.to_bytes(&params)).unwrap();
    let e = server_error(&mut ch);
    assert!(
        e.contains(&format!("level mismatch: {} vs 1", params.max_level())),
        "{e}"
    );
    assert!(ch.recv().is_err(), "the session is closed");
    // A ciphertext for other parameters (larger than the model's), in a new session: refused
    // from its length prefix.
    let mut ch = raw_session(&addr);
    upload(&mut ch, "square", &pk, &rlk, &gk);
    server_ok(&mut ch);
    request(&mut ch, "square", 1);
    server_ok(&mut ch);
    let other_dec = cipherml::he::ckks::Decryptor::new(&other, sk2.into()).unwrap();
    let pt = Encoder::new(&other)
        .encode_f64(&[0.5; 8], other.max_level(), other.default_scale())
        .unwrap();
    let ct = other_dec.encrypt_symmetric(&pt, &mut rng).unwrap();
    ch.send(&ct.to_bytes(&other)).unwrap();
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
    let server = Server::bind_models(
        "127.0.0.1:0",
        both_models(),
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
    use cipherml::protocol::ModelInfo;
    let m = square_mlp();
    let info = ModelInfo {
        name: "square".into(),
        input_shape: m.input_shape().to_vec(),
        output_shape: vec![1 << 30],
        mode: ModelMode::Ckks,
        params: HeParams::Ckks {
            degree: 8192,
            levels: 0,
            scale_bits: 0,
            id: 0,
        },
        q_bits: 0,
        reveal_log2: 0,
        architecture: m.architecture(),
        network: Default::default(),
    };
    let (addr, fake) = fake_server(vec![info]);
    let mut client = Client::connect(&addr).unwrap();
    let err = client.infer("square", &digits_row(0)).unwrap_err();
    assert!(
        err.to_string().contains("differ from its architecture"),
        "{err}"
    );
    drop(client);
    fake.join().unwrap();
}

/// A hostile (or mismatched) server that announces HE parameters other than those the
/// architecture gives: the client compares them field by field and refuses, naming the
/// field, before it generates or sends any key.
#[test]
fn client_refuses_announced_parameters_that_differ_in_any_field() {
    use cipherml::protocol::ModelInfo;
    let m = square_mlp();
    let (_, params) = cipherml::nn::CkksModel::for_model(&m).unwrap();
    let truth = HeParams::of_ckks(&params);
    let HeParams::Ckks {
        degree,
        levels,
        scale_bits,
        id,
    } = truth
    else {
        panic!("{truth}")
    };
    let run = |announced: HeParams| -> String {
        let info = ModelInfo {
            name: "square".into(),
            input_shape: m.input_shape().to_vec(),
            output_shape: m.shapes().unwrap().last().cloned().unwrap(),
            mode: ModelMode::Ckks,
            params: announced,
            q_bits: 0,
            reveal_log2: 0,
            architecture: m.architecture(),
            network: Default::default(),
        };
        // What the client sends next: nothing if it refused, else its key upload.
        let (addr, fake) = fake_server(vec![info]);
        let mut client = Client::connect(&addr).unwrap();
        let err = client.infer("square", &digits_row(0)).unwrap_err();
        drop(client);
        let sent_more = fake.join().unwrap();
        let err = err.to_string();
        assert_eq!(sent_more, !err.contains("differs"), "{err}");
        err
    };
    let cases = [
        (
            "levels",
            HeParams::Ckks {
                degree,
                levels: levels + 1,
                scale_bits,
                id,
            },
        ),
        (
            "scale_bits",
            HeParams::Ckks {
                degree,
                levels,
                scale_bits: scale_bits - 1,
                id,
            },
        ),
        (
            "id",
            HeParams::Ckks {
                degree,
                levels,
                scale_bits,
                id: id ^ 1,
            },
        ),
        (
            "scheme",
            HeParams::Bfv {
                degree,
                plaintext_modulus: 1 << 40,
                id,
            },
        ),
    ];
    for (field, announced) in cases {
        let err = run(announced);
        assert!(
            err.contains(&format!("({field} differs)")),
            "{field}: {err}"
        );
    }
    // Control: the true parameters pass the check (the client goes on to its key upload,
    // which the fake server does not answer).
    let err = run(truth);
    assert!(!err.contains("differs"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Bounded resources: deadlines, frame limits, key memory, reply queues, logs, refusals.

/// Resident memory of a process, in bytes (Linux `/proc/PID/status`).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// A server in a child process (this test binary, running `server_child` alone), so that
/// its resident memory is its own: returns the child and its address.
fn spawn_server_child(env: &[(&str, String)]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "server_child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("CIPHERML_TEST_SERVER_CHILD", "1")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the child printed its address")
            .unwrap();
        // (The harness prints the test's name on the same line.)
        if let Some((_, a)) = line.split_once("CHILD-ADDR ") {
            break a.trim().to_string();
        }
    };
    // Keep draining its stdout so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The server of [`spawn_server_child`] (does nothing in a normal test run).
#[test]
#[ignore = "run by spawn_server_child in a child process"]
fn server_child() {
    if std::env::var("CIPHERML_TEST_SERVER_CHILD").is_err() {
        return;
    }
    let config = ServerConfig {
        timeout: Duration::from_millis(env_u64("CHILD_TIMEOUT_MS", 30_000)),
        max_sessions: env_u64("CHILD_MAX_SESSIONS", 32) as usize,
        max_sessions_per_ip: env_u64("CHILD_MAX_SESSIONS", 32) as usize,
        key_memory_budget: env_u64("CHILD_KEY_BUDGET", 1 << 30) as usize,
        max_queued_bytes: env_u64("CHILD_MAX_QUEUED", 16 << 20) as usize,
        ..Default::default()
    };
    let server = Server::bind_models("127.0.0.1:0", both_models(), config).unwrap();
    println!("CHILD-ADDR {}", server.local_addr());
    server.run();
}

/// Kills a child process when dropped (also when the test fails).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `bytes` one byte every 200 ms until the peer closes the connection (or 10 s
/// pass); returns how long the peer kept it open.
fn trickle(mut s: std::net::TcpStream, bytes: &[u8]) -> Duration {
    use std::io::{Read, Write};
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    for b in bytes.iter().cycle() {
        if t.elapsed() > Duration::from_secs(10) || s.write_all(&[*b]).is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    t.elapsed()
}

fn hello_frame() -> Vec<u8> {
    let body = cipherml::protocol::encode(&ClientMsg::Hello {
        version: PROTOCOL_VERSION,
        token: None,
        held_keys: None,
    })
    .unwrap();
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend(body);
    frame
}

#[test]
fn trickling_connections_are_cut_by_their_deadlines_while_others_are_served() {
    use cipherml::client::{ClientOptions, ClientTls};
    use cipherml::server::ServerTls;
    use std::io::{Read, Write};
    let config = ServerConfig {
        timeout: Duration::from_secs(1),
        handshake_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let addr = start(config);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
    let tls = ServerTls::from_pem_files(&dir.join("server.pem"), &dir.join("server.key")).unwrap();
    let tls_server = Server::bind("127.0.0.1:0", vec![("mlp".into(), model())], config)
        .unwrap()
        .with_tls(tls);
    let tls_addr = tls_server.local_addr().to_string();
    std::thread::spawn(move || tls_server.run());
    let connect = |a: &str| std::net::TcpStream::connect(a).unwrap();
    // Before the hello: the hello's frame, a byte at a time.
    let before = {
        let s = connect(&addr);
        std::thread::spawn(move || trickle(s, &hello_frame()))
    };
    // After the hello: a request's frame, a byte at a time.
    let after = {
        let mut s = connect(&addr);
        s.write_all(&hello_frame()).unwrap();
        let mut ch =
            cipherml::mpc::net::TcpChannel::from_stream(s.try_clone().unwrap(), Default::default())
                .unwrap();
        let _: cipherml::protocol::ServerMsg = cipherml::protocol::recv(&mut ch).unwrap();
        std::mem::forget(ch); // keep the socket open; `s` trickles on it
        let body = cipherml::protocol::encode(&ClientMsg::Infer {
            model: "mlp".into(),
            batch: 1,
        })
        .unwrap();
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend(body);
        std::thread::spawn(move || trickle(s, &frame))
    };
    // During the TLS handshake: a record header announcing a 512-byte ClientHello, whose
    // body trickles.
    let handshake = {
        let mut s = connect(&tls_addr);
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
        std::thread::spawn(move || trickle(s, &[0x01]))
    };
    // Meanwhile, other clients are served (TCP and TLS).
    let x = digits_row(0);
    let want = argmax(&model().predict(&x).unwrap());
    let mut client = Client::connect(&addr).unwrap();
    assert_eq!(argmax(&client.infer("mlp", &x).unwrap()), want);
    client.close().unwrap();
    let options = ClientOptions {
        tls: Some(ClientTls::from_ca_file(&dir.join("ca.pem")).unwrap()),
        ..Default::default()
    };
    let mut client = Client::connect_with(&tls_addr, &options).unwrap();
    assert_eq!(argmax(&client.infer("mlp", &x).unwrap()), want);
    client.close().unwrap();
    // Each trickler was cut near its 1 s deadline (before: the per-read timeout never
    // fired, and the loop above only gives up after 10 s).
    for (what, h) in [
        ("before the hello", before),
        ("after the hello", after),
        ("TLS handshake", handshake),
    ] {
        let held = h.join().unwrap();
        assert!(held < Duration::from_secs(6), "{what}: held for {held:?}");
    }
    // A connection that opens and says nothing is cut by the hello deadline as well.
    let mut s = connect(&addr);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let _ = s.read(&mut buf);
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
}

#[test]
fn a_huge_first_frame_is_refused_unread() {
    use std::io::Write;
    let (child, addr) = spawn_server_child(&[]);
    let child = KillOnDrop(child);
    let pid = child.0.id();
    // Warm up: one full session.
    let mut client = Client::connect(&addr).unwrap();
    client.infer("mlp", &digits_row(0)).unwrap();
    client.close().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_bytes(pid);
    // The refusal comes from the length prefix alone: a connection that sends only the
    // prefix of a 64 MiB - 1 frame gets the typed refusal naming the length.
    let announced = (64u32 << 20) - 1;
    {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&announced.to_le_bytes()).unwrap();
        match cipherml::protocol::decode(&read_frame(&mut s).unwrap()).unwrap() {
            cipherml::protocol::ServerMsg::Error { code, message } => {
                assert_eq!(code, RefusalCode::BadRequest);
                assert!(message.contains(&announced.to_string()), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    // Eight connections announce 64 MiB - 1 before any hello and send 1 MiB of it, then
    // the rest anyway, from a 64 KiB buffer. The server refuses each from the prefix and
    // closes, possibly while the client is still writing (then the client's writes fail
    // and the refusal may be lost to the reset: both are fine here); what it must not do
    // is buffer what they send.
    let chunk = vec![0x41u8; 64 << 10];
    let mut sent_total = 0usize;
    let mut peak = 0u64;
    let mut senders = Vec::new();
    let mut refused = 0;
    for _ in 0..8 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&announced.to_le_bytes()).unwrap();
        for _ in 0..16 {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
        if let Ok(frame) = read_frame(&mut s) {
            match cipherml::protocol::decode(&frame).unwrap() {
                cipherml::protocol::ServerMsg::Error { code, .. } => {
                    assert_eq!(code, RefusalCode::BadRequest);
                    refused += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        let chunk = chunk.clone();
        senders.push(std::thread::spawn(move || {
            let mut sent = 1 << 20;
            while sent < announced as usize {
                match s.write(&chunk) {
                    Ok(n) => sent += n,
                    Err(_) => break,
                }
            }
            sent
        }));
    }
    while senders.iter().any(|h| !h.is_finished()) {
        peak = peak.max(rss_bytes(pid).saturating_sub(before));
        std::thread::sleep(Duration::from_millis(20));
    }
    for h in senders {
        sent_total += h.join().unwrap();
    }
    peak = peak.max(rss_bytes(pid).saturating_sub(before));
    // The old server buffered what it received (up to 8 x 64 MiB).
    assert!(peak < 16 << 20, "resident memory grew by {peak} bytes");
    println!(
        "8 first frames of 64 MiB: {sent_total} bytes sent, {refused} refusals read, resident \
         memory +{peak} bytes"
    );
}

/// The exact serialized sizes (public key, relinearization key, Galois keys) and the
/// memory of one upload of the square MLP's keys.
fn square_key_memory() -> usize {
    use cipherml::he::serialize as ser;
    let (cm, params) = cipherml::nn::CkksModel::for_model(&square_mlp()).unwrap();
    let ctx = params.context();
    let count = cm.galois_elements().len();
    let wire =
        ser::public_key_size(ctx) + ser::relin_key_size(ctx) + ser::galois_keys_size(ctx, count);
    wire + ser::public_key_memory(ctx) + (1 + count) * ser::key_switch_key_memory(ctx)
}

#[test]
fn sixteen_sessions_uploading_the_largest_keys_stay_within_the_key_budget() {
    use cipherml::mpc::net::Channel;
    let per_upload = square_key_memory();
    let budget = 3 * per_upload + per_upload / 2;
    let (child, addr) = spawn_server_child(&[("CHILD_KEY_BUDGET", budget.to_string())]);
    let child = KillOnDrop(child);
    let pid = child.0.id();
    let (_sk, pk, rlk, gk) = square_keys();
    // The largest accepted key messages are the exact sizes: these.
    let mut client = Client::connect(&addr).unwrap();
    client.infer("square", &digits_row(0)).unwrap();
    client.close().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_bytes(pid);
    let mut sessions = Vec::new();
    let mut codes = Vec::new();
    for _ in 0..16 {
        let mut ch = raw_session(&addr);
        upload(&mut ch, "square", &pk, &rlk, &gk);
        match cipherml::protocol::recv::<_, cipherml::protocol::ServerMsg>(&mut ch).unwrap() {
            cipherml::protocol::ServerMsg::Ok => codes.push(None),
            cipherml::protocol::ServerMsg::Error { code, .. } => codes.push(Some(code)),
            other => panic!("{other:?}"),
        }
        sessions.push(ch);
    }
    std::thread::sleep(Duration::from_millis(300));
    let grown = rss_bytes(pid).saturating_sub(before);
    let accepted = codes.iter().filter(|c| c.is_none()).count();
    assert_eq!(accepted, 3, "{codes:?}");
    assert!(codes
        .iter()
        .flatten()
        .all(|&c| c == RefusalCode::ResourceExhausted));
    // Within the budget (plus 64 MiB for threads and buffers); without it, 16 sessions
    // would hold 16 uploads.
    let slack = 64 << 20;
    assert!(16 * per_upload > budget + slack);
    assert!(
        (grown as usize) < budget + slack,
        "resident memory grew by {grown} bytes, budget {budget}"
    );
    // A session that ends returns its share: a new upload fits again.
    drop(sessions.remove(0));
    std::thread::sleep(Duration::from_millis(500));
    let mut ch = raw_session(&addr);
    upload(&mut ch, "square", &pk, &rlk, &gk);
    server_ok(&mut ch);
    ch.send(&[]).ok();
    println!(
        "16 sessions x {per_upload} bytes of keys, budget {budget}: resident memory +{grown} bytes"
    );
}

fn write_frame(s: &mut std::net::TcpStream, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    s.write_all(&(body.len() as u32).to_le_bytes())?;
    s.write_all(body)
}

fn read_frame(s: &mut std::net::TcpStream) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut prefix = [0u8; 4];
    s.read_exact(&mut prefix)?;
    let mut body = vec![0u8; u32::from_le_bytes(prefix) as usize];
    s.read_exact(&mut body)?;
    Ok(body)
}

#[test]
fn a_client_that_pipelines_requests_and_never_reads_is_cut_with_bounded_memory() {
    use cipherml::he::ckks::Encoder;
    use cipherml::protocol::{decode, encode, ServerMsg};
    let (child, addr) = spawn_server_child(&[
        ("CHILD_TIMEOUT_MS", "2000".into()),
        ("CHILD_MAX_QUEUED", (1 << 20).to_string()),
    ]);
    let child = KillOnDrop(child);
    let pid = child.0.id();
    let (sk, pk, rlk, gk) = square_keys();
    let (cm, params) = cipherml::nn::CkksModel::for_model(&square_mlp()).unwrap();
    let dec = cipherml::he::ckks::Decryptor::new(&params, sk).unwrap();
    let pt = Encoder::new(&params)
        .encode_f64(&[0.25; 64], cm.input_level(), params.default_scale())
        .unwrap();
    let ct = dec
        .encrypt_symmetric(&pt, &mut cipherml::mpc::prg::os_rng())
        .unwrap()
        .to_bytes(&params);
    // A session on a raw socket: hello, key upload.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let hello = encode(&ClientMsg::Hello {
        version: PROTOCOL_VERSION,
        token: None,
        held_keys: None,
    })
    .unwrap();
    write_frame(&mut s, &hello).unwrap();
    assert!(matches!(
        decode::<ServerMsg>(&read_frame(&mut s).unwrap()).unwrap(),
        ServerMsg::Hello { .. }
    ));
    let up = encode(&ClientMsg::UploadKeys {
        model: "square".into(),
    })
    .unwrap();
    for body in [&up, &pk, &rlk, &gk] {
        write_frame(&mut s, body).unwrap();
    }
    assert_eq!(
        decode::<ServerMsg>(&read_frame(&mut s).unwrap()).unwrap(),
        ServerMsg::Ok
    );
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_bytes(pid);
    // The request and its 4096 inputs, written without reading a reply (until the server
    // stops taking them).
    let request = encode(&ClientMsg::Infer {
        model: "square".into(),
        batch: 4096,
    })
    .unwrap();
    let mut w = s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let writer = std::thread::spawn(move || {
        let t = Instant::now();
        let mut sent = 0;
        if write_frame(&mut w, &request).is_ok() {
            while sent < 4096 && t.elapsed() < Duration::from_secs(90) {
                if write_frame(&mut w, &ct).is_err() {
                    break;
                }
                sent += 1;
            }
        }
        sent
    });
    let mut peak = 0u64;
    while !writer.is_finished() {
        peak = peak.max(rss_bytes(pid).saturating_sub(before));
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = writer.join().unwrap();
    // What the server had written before it cut the session, then the end.
    let mut replies = 0usize;
    while read_frame(&mut s).is_ok() {
        replies += 1;
    }
    peak = peak.max(rss_bytes(pid).saturating_sub(before));
    // An Ok and a ciphertext per input: the server stopped long before the batch's end.
    assert!(
        replies < 2 * 4096,
        "{replies} replies: the server never stopped"
    );
    assert!(sent < 4096, "the server took all {sent} inputs");
    assert!(peak < 48 << 20, "resident memory grew by {peak} bytes");
    println!(
        "pipelining client: {sent} inputs taken, {replies} reply messages before the cut, resident memory +{peak} bytes"
    );
}

#[test]
fn the_bearer_token_never_appears_in_the_server_log() {
    use cipherml::protocol::{decode, encode, ServerMsg};
    use std::io::{BufRead, Read};
    // The real binary, its token from the environment, its log (stderr) captured.
    let token = "tok-3b9e1f0c77d24a58";
    let mlp = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits_mlp.onnx");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_cipherml"))
        .args(["serve", "--listen", "127.0.0.1:0", "--model"])
        .arg(format!("mlp={}", mlp.display()))
        .env("CIPHERML_TOKEN", token)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut stderr = child.0.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut lines = std::io::BufReader::new(child.0.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server printed its address")
            .unwrap();
        if let Some(rest) = line.strip_prefix("listening on ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let hello = encode(&ClientMsg::Hello {
        version: PROTOCOL_VERSION,
        token: Some(token.into()),
        held_keys: None,
    })
    .unwrap();
    // A session that says hello twice, with the token both times.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write_frame(&mut s, &hello).unwrap();
    assert!(matches!(
        decode::<ServerMsg>(&read_frame(&mut s).unwrap()).unwrap(),
        ServerMsg::Hello { .. }
    ));
    write_frame(&mut s, &hello).unwrap();
    match decode::<ServerMsg>(&read_frame(&mut s).unwrap()).unwrap() {
        ServerMsg::Error { code, message } => {
            assert_eq!(code, RefusalCode::BadRequest);
            assert!(!message.contains(token), "{message}");
        }
        other => panic!("{other:?}"),
    }
    drop(s);
    // A long model name before the hello (and a wrong token): logged cut.
    let long_name = "N".repeat(12 << 10);
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let infer = encode(&ClientMsg::Infer {
        model: long_name.clone(),
        batch: 1,
    })
    .unwrap();
    write_frame(&mut s, &infer).unwrap();
    let _ = read_frame(&mut s);
    drop(s);
    let client = Client::connect_authenticated(&addr, Some("not-the-token"));
    assert!(matches!(
        client,
        Err(cipherml::protocol::ProtocolError::Refused {
            code: RefusalCode::Unauthorized,
            ..
        })
    ));
    std::thread::sleep(Duration::from_millis(500));
    let _ = child.0.kill();
    let _ = child.0.wait();
    let log = log.join().unwrap();
    // The second hello was logged (in its Debug form, with the token redacted)...
    assert!(log.contains("Hello {"), "{log}");
    assert!(log.contains("<redacted>"), "{log}");
    // ...and the token is nowhere: the string searched for is the token itself.
    assert!(!log.contains(token), "the token is in the log:\n{log}");
    // The model name is logged cut to its first characters.
    assert!(log.contains(&"N".repeat(64)), "{log}");
    assert!(
        !log.contains(&"N".repeat(65)),
        "the whole name is in the log"
    );
    assert!(log.len() < 8 << 10, "{} bytes of log", log.len());
}

#[test]
fn a_refused_connection_is_reported_at_once_naming_the_address() {
    // A port nobody listens on.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let t = Instant::now();
    let e = Client::connect(&addr).unwrap_err();
    // (The channel's timeout is 60 s: the old client retried for all of it.)
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    match &e {
        cipherml::protocol::ProtocolError::Mpc(cipherml::mpc::Error::Connect {
            addr: a,
            source,
        }) => {
            assert_eq!(a, &addr);
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains(&addr), "{e}");
    // An address that does not resolve.
    let e = Client::connect("127.0.0.1").unwrap_err();
    assert!(
        matches!(
            e,
            cipherml::protocol::ProtocolError::Mpc(cipherml::mpc::Error::Resolve { .. })
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("127.0.0.1"), "{e}");
    // The command line says so at once, naming the address.
    let t = Instant::now();
    let x = std::env::temp_dir().join(format!("cipherml-refused-{}.npy", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cipherml"))
        .args(["infer", "--server", &addr, "--input"])
        .arg(&x)
        .env_remove("CIPHERML_TOKEN")
        .output()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&addr) && err.to_lowercase().contains("refused"),
        "{err}"
    );
    // A two-party program that starts both sides at once retries until the peer listens.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let late = l.local_addr().unwrap();
    drop(l);
    let h = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let l = std::net::TcpListener::bind(late).unwrap();
        let _ = l.accept().unwrap();
    });
    let ch = cipherml::mpc::net::TcpChannel::connect_retry(
        late,
        cipherml::mpc::net::ChannelConfig {
            timeout: Duration::from_secs(10),
            ..Default::default()
        },
    );
    assert!(ch.is_ok(), "{:?}", ch.err());
    h.join().unwrap();
}

#[test]
fn sessions_past_their_quota_or_their_address_share_are_refused_with_codes() {
    let addr = start(ServerConfig {
        max_inferences_per_session: 3,
        max_sessions_per_ip: 1,
        ..Default::default()
    });
    let mut client = Client::connect(&addr).unwrap();
    // A second session from the same address is refused while the first runs.
    match Client::connect(&addr) {
        Err(cipherml::protocol::ProtocolError::Refused { code, message }) => {
            assert_eq!(code, RefusalCode::Busy);
            assert!(message.contains("127.0.0.1"), "{message}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let x = digits_row(2);
    let xs = ndarray::stack(Axis(0), &[x.view(), x.view()]).unwrap();
    client.infer_batch("mlp", &xs).unwrap();
    // 2 run: a batch of 2 more would pass the quota of 3; 1 more does not.
    match client.infer_batch("mlp", &xs) {
        Err(cipherml::protocol::ProtocolError::Refused { code, message }) => {
            assert_eq!(code, RefusalCode::QuotaExceeded);
            assert!(message.contains('3'), "{message}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    client.infer("mlp", &x).unwrap();
    let e = client.infer("mlp", &x).unwrap_err();
    assert!(
        matches!(
            e,
            cipherml::protocol::ProtocolError::Refused {
                code: RefusalCode::QuotaExceeded,
                ..
            }
        ),
        "{e}"
    );
    client.close().unwrap();
    // The slot is free again once the session has ended.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(&addr) {
            Ok(c) => {
                c.close().unwrap();
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert!(e.to_string().contains("busy"), "{e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// The hybrid models a server hosts share one BFV modulus, fitted to them (below the 164
/// bits that hold any model the configuration allows) and announced with each; the client
/// lowers each architecture with it and gets private predictions equal to the plaintext
/// ones. A server that announces different moduli for two hybrid models, or one above the
/// parameters' limit, is refused at connect.
#[test]
fn hybrid_models_share_a_fitted_modulus() {
    let cnn =
        load_onnx(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits_cnn.onnx"))
            .unwrap();
    let specs = vec![
        ModelSpec::new("mlp", model()),
        ModelSpec::new("cnn", cnn.clone()).with_mode(ModeChoice::Hybrid),
    ];
    let server = Server::bind_models("127.0.0.1:0", specs, ServerConfig::default()).unwrap();
    let addr = server.local_addr().to_string();
    std::thread::spawn(move || server.run());
    let mut client = Client::connect(&addr).unwrap();
    let infos = client.models().to_vec();
    assert_eq!(infos.len(), 2);
    let q = infos[0].q_bits;
    assert!(infos
        .iter()
        .all(|i| i.q_bits == q && i.mode == ModelMode::Hybrid));
    assert!((100..164).contains(&q), "fitted Q of {q} bits");
    assert!(infos.iter().all(|i| i.reveal_log2 > 0));
    for (name, m) in [("mlp", model()), ("cnn", cnn)] {
        for i in 0..2 {
            let x = digits_row(i);
            assert_eq!(
                argmax(&client.infer(name, &x).unwrap()),
                argmax(&m.predict(&x).unwrap()),
                "{name} row {i}"
            );
        }
    }
    client.close().unwrap();

    // A fake server announcing two hybrid models at different moduli, then one at 400 bits.
    for qs in [vec![q, q + 1], vec![400]] {
        let announced: Vec<_> = qs
            .iter()
            .enumerate()
            .map(|(k, &q_bits)| {
                let mut info = infos[0].clone();
                info.name = format!("m{k}");
                info.q_bits = q_bits;
                info
            })
            .collect();
        let (addr, fake) = fake_server(announced);
        let Err(err) = Client::connect(&addr) else {
            panic!("{qs:?}: the client accepted the announcement")
        };
        assert!(err.to_string().contains("BFV moduli"), "{qs:?}: {err}");
        fake.join().unwrap();
    }
}
