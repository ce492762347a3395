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
