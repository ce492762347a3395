//! The secure-aggregation service over TCP (and TLS with a token): rounds with clients in
//! threads, dropouts at every stage (a client that leaves is a dropout, not a hang), the
//! exact sum of the survivors' quantized updates, a failed round's typed error, and
//! hostile connections that do not disturb the others.

use std::time::Duration;

use cipherml::aggregate::{AggregationClient, AggregationConfig, AggregationServer};
use cipherml::client::ClientOptions;
use cipherml::mpc::secagg::{
    plaintext_sum_quantized, SecAggConfig, SecAggError, SecAggParams, Stage,
};
use cipherml::protocol::RefusalCode;
use cipherml::Error;

fn update(i: usize, dim: usize) -> Vec<f64> {
    (0..dim)
        .map(|j| (((i * 31 + j * 7) % 19) as f64 / 9.0 - 1.0) * 0.9)
        .collect()
}

fn config(n: u32, dim: usize) -> AggregationConfig {
    AggregationConfig {
        join_timeout: Duration::from_secs(5),
        stage_timeout: Duration::from_secs(5),
        ..AggregationConfig::new(SecAggParams::recommended(n, dim))
    }
}

/// Where a client stops: `None` takes part to the end.
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Never,
    BeforeShareKeys,
    BeforeMaskedInput,
    BeforeUnmask,
}

/// Runs one client in a thread; returns whether its masked input was sent.
fn client(addr: String, i: usize, dim: usize, stop: Stop) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        let mut c = AggregationClient::connect(&addr, &ClientOptions::default()).unwrap();
        c.advertise().unwrap();
        if stop == Stop::BeforeShareKeys {
            return false;
        }
        if c.share_keys().is_err() {
            return false;
        }
        if stop == Stop::BeforeMaskedInput {
            return false;
        }
        if c.masked_input(&update(i, dim), None).is_err() {
            return false;
        }
        if stop == Stop::BeforeUnmask {
            return true;
        }
        // Its input is in the sum whether or not the round then succeeds for it.
        let _ = c.unmask();
        true
    })
}

/// Runs clients `indices` (40 ms apart, so they join in this order), each stopping at
/// `stop`.
fn clients(
    addr: &str,
    indices: std::ops::Range<usize>,
    dim: usize,
    stop: Stop,
) -> Vec<std::thread::JoinHandle<bool>> {
    indices
        .map(|i| {
            std::thread::sleep(Duration::from_millis(40));
            client(addr.to_string(), i, dim, stop)
        })
        .collect()
}

/// The plain reference for a round of `recommended(n, dim)`: the raw sum of the updates
/// of `indices`.
fn reference_raw(n: u32, dim: usize, indices: impl IntoIterator<Item = usize>) -> Vec<u64> {
    let secagg = SecAggConfig::new(SecAggParams::recommended(n, dim)).unwrap();
    let inputs: Vec<Vec<f64>> = indices.into_iter().map(|i| update(i, dim)).collect();
    plaintext_sum_quantized(&secagg, &inputs, None).unwrap()
}

#[test]
fn a_round_sums_exactly_with_dropouts_at_every_stage() {
    let (n, dim) = (9u32, 40);
    let server = AggregationServer::bind("127.0.0.1:0", config(n, dim)).unwrap();
    let addr = server.local_addr().to_string();
    // Client 8 never connects (a dropout before the keys), 1 leaves before sharing keys, 2
    // before its masked input, 3 before unmasking (its input is in the sum).
    let stops = [
        Stop::Never,
        Stop::BeforeShareKeys,
        Stop::BeforeMaskedInput,
        Stop::BeforeUnmask,
        Stop::Never,
        Stop::Never,
        Stop::Never,
        Stop::Never,
    ];
    let handle = std::thread::spawn(move || server.run_round());
    // Clients join one after another, so join order = index = id.
    let mut threads = Vec::new();
    for (i, &stop) in stops.iter().enumerate() {
        threads.push(client(addr.clone(), i, dim, stop));
        std::thread::sleep(Duration::from_millis(60));
    }
    let report = handle.join().unwrap().unwrap();
    let sent: Vec<bool> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let survivors: Vec<usize> = (0..stops.len()).filter(|&i| sent[i]).collect();
    assert_eq!(survivors, vec![0, 3, 4, 5, 6, 7]);
    assert_eq!(
        report.survivors,
        survivors.iter().map(|&i| i as u32).collect::<Vec<_>>()
    );
    assert_eq!(report.per_stage, [8, 8, 7, 6, 5]);
    assert_eq!(report.raw, reference_raw(n, dim, survivors.iter().copied()));
    let inputs: Vec<Vec<f64>> = survivors.iter().map(|&i| update(i, dim)).collect();
    for (j, s) in report.sum.iter().enumerate() {
        let want: f64 = inputs.iter().map(|x| x[j]).sum();
        assert!((s - want).abs() < 1e-3, "entry {j}: {s} vs {want}");
    }
    assert!(report.bytes_in > 0 && report.bytes_out > 0);
}

#[test]
fn too_few_survivors_fail_the_round_with_the_stage_and_counts() {
    let (n, dim) = (5u32, 8);
    let server = AggregationServer::bind("127.0.0.1:0", config(n, dim)).unwrap();
    let t = server.secagg_config().t();
    let addr = server.local_addr().to_string();
    let handle = std::thread::spawn(move || server.run_round());
    // Every client leaves before its masked input: the masked-input stage has none.
    let threads = clients(&addr, 0..n as usize, dim, Stop::BeforeMaskedInput);
    match handle.join().unwrap() {
        Err(Error::SecAgg(SecAggError::TooFewSurvivors { stage, needed, got })) => {
            assert_eq!(stage, Stage::MaskedInput);
            assert_eq!((needed, got), (t, 0));
        }
        other => panic!("expected TooFewSurvivors, got {other:?}"),
    }
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn hostile_connections_are_refused_and_the_round_goes_on() {
    use std::io::Write;
    let (n, dim) = (4u32, 6);
    let server = AggregationServer::bind("127.0.0.1:0", config(n, dim)).unwrap();
    let addr = server.local_addr().to_string();
    let handle = std::thread::spawn(move || server.run_round());
    // Garbage, an oversized length prefix, and a hang-up before any hello.
    for garbage in [
        vec![0xffu8; 64],
        u32::MAX.to_le_bytes().to_vec(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ] {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(&garbage);
    }
    // A client that joins and then sends garbage in place of its keys: refused (its round
    // ends with a refusal frame), the others go on without it. The hello is the
    // aggregation protocol's, bincode-encoded: variant 0, version 1, no token.
    let bad = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            use cipherml::mpc::net::{Channel, ChannelConfig, TcpChannel};
            let mut ch = TcpChannel::connect(&addr, ChannelConfig::default()).unwrap();
            ch.send(&[0, 1, 0]).unwrap();
            let welcome = ch.recv().unwrap();
            assert!(!welcome.is_empty());
            ch.send(&[1, 2, 3]).unwrap();
            let refusal = ch.recv().unwrap();
            assert!(!refusal.is_empty());
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let threads = clients(&addr, 0..3, dim, Stop::Never);
    let report = handle.join().unwrap().unwrap();
    for t in threads {
        assert!(t.join().unwrap());
    }
    bad.join().unwrap();
    // The three honest clients are in the sum; the one refused is not.
    assert_eq!(report.survivors.len(), 3);
    assert_eq!(report.per_stage[0], 4);
    let ids: Vec<usize> = report.survivors.iter().map(|&i| i as usize).collect();
    // Ids follow join order: the refused client joined first (id 0).
    assert_eq!(ids, vec![1, 2, 3]);
    // Their updates are those of clients 0..3 (by index, not id).
    assert_eq!(report.raw, reference_raw(n, dim, 0..3));
}

#[test]
fn tls_and_a_token_are_required_when_configured() {
    use cipherml::server::{Auth, ServerTls};
    use cipherml::tls::ClientTls;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
    let tls = ServerTls::from_pem_files(&dir.join("server.pem"), &dir.join("server.key")).unwrap();
    let (n, dim) = (3u32, 5);
    let server = AggregationServer::bind("127.0.0.1:0", config(n, dim))
        .unwrap()
        .with_tls(tls)
        .with_auth(Auth::token("s3cret"));
    let addr = server.local_addr().to_string();
    let handle = std::thread::spawn(move || server.run_round());
    let options = |token: Option<&str>| ClientOptions {
        token: token.map(String::from),
        tls: Some(ClientTls::from_ca_file(&dir.join("ca.pem")).unwrap()),
        ..ClientOptions::default()
    };
    // A wrong token is refused with its code.
    match AggregationClient::connect(&addr, &options(Some("wrong"))) {
        Err(Error::Refused { code, .. }) => assert_eq!(code, RefusalCode::Unauthorized),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Plain TCP to a TLS server fails.
    assert!(AggregationClient::connect(&addr, &ClientOptions::default()).is_err());
    let threads: Vec<_> = (0..n as usize)
        .map(|i| {
            let (addr, o) = (addr.clone(), options(Some("s3cret")));
            std::thread::sleep(Duration::from_millis(40));
            std::thread::spawn(move || {
                AggregationClient::connect(&addr, &o)
                    .unwrap()
                    .submit(&update(i, dim), None)
                    .unwrap()
            })
        })
        .collect();
    let report = handle.join().unwrap().unwrap();
    for t in threads {
        assert_eq!(t.join().unwrap().survivors, n);
    }
    assert_eq!(report.raw, reference_raw(n, dim, 0..n as usize));
}

#[test]
fn parameters_that_could_overflow_or_exceed_the_memory_budget_are_refused() {
    let mut params = SecAggParams::recommended(300, 4);
    params.quantization.bits = 16;
    params.modulus_bits = Some(24);
    match AggregationServer::bind("127.0.0.1:0", AggregationConfig::new(params)) {
        Err(Error::SecAgg(e)) => assert!(e.to_string().contains("300"), "{e}"),
        other => panic!("expected an overflow refusal, got {other:?}"),
    }
    let config = AggregationConfig {
        memory_budget: 1 << 20,
        ..AggregationConfig::new(SecAggParams::recommended(100, 10_000))
    };
    match AggregationServer::bind("127.0.0.1:0", config) {
        Err(Error::Config { detail, .. }) => assert!(detail.contains("100 clients"), "{detail}"),
        other => panic!("expected a budget refusal, got {other:?}"),
    }
}

/// A client that joins and then stalls (its connection open, nothing sent) is a dropout
/// of the stage whose deadline passes, not a hang: the round ends with the others.
#[test]
fn a_stalled_client_is_a_dropout_not_a_hang() {
    let (n, dim) = (4u32, 6);
    let config = AggregationConfig {
        join_timeout: Duration::from_secs(5),
        stage_timeout: Duration::from_secs(1),
        ..AggregationConfig::new(SecAggParams::recommended(n, dim))
    };
    let server = AggregationServer::bind("127.0.0.1:0", config).unwrap();
    let addr = server.local_addr().to_string();
    let handle = std::thread::spawn(move || server.run_round());
    // The staller joins first (id 0) and holds its connection for longer than the round.
    let stalled = AggregationClient::connect(&addr, &ClientOptions::default()).unwrap();
    assert_eq!(stalled.id(), 0);
    let threads = clients(&addr, 1..4, dim, Stop::Never);
    // The round ends (by the first stage's deadline) while the staller still holds its
    // connection open: it is dropped below, after the round.
    let report = handle.join().unwrap().unwrap();
    for t in threads {
        assert!(t.join().unwrap());
    }
    drop(stalled);
    assert_eq!(report.per_stage, [4, 3, 3, 3, 3]);
    assert_eq!(report.survivors, vec![1, 2, 3]);
    assert_eq!(report.raw, reference_raw(n, dim, 1..4));
}
