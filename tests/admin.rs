//! The admin HTTP endpoints beside a serving inference server: health, catalog and metrics
//! answer while a client is served, counters move with inferences, and hostile requests
//! (garbage, huge lines, slow drips, a connection flood) get an error or are closed without
//! touching the inference server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cipherml::admin::{AdminConfig, AdminServer};
use cipherml::client::Client;
use cipherml::data::{data_dir, read_npy};
use cipherml::metrics::{sample_value, Metrics};
use cipherml::nn::load_onnx;
use cipherml::server::{Server, ServerConfig};
use ndarray::Axis;

fn model() -> cipherml::nn::Sequential {
    load_onnx(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits_mlp.onnx"))
        .unwrap()
}

/// Sends `request` raw and returns the whole answer ("" if the connection was closed or
/// reset without one).
fn raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET path`: (status, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let answer = raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    parse(&answer)
}

fn parse(answer: &str) -> (u16, String) {
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    assert!(answer.contains("Connection: close\r\n"), "{answer}");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    let len: usize = answer
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    assert_eq!(body.len(), len, "{answer}");
    (status, body)
}

fn metric(addr: &str, sample: &str) -> f64 {
    let (status, text) = get(addr, "/metrics");
    assert_eq!(status, 200);
    sample_value(&text, sample).unwrap_or_else(|| panic!("{sample} missing in\n{text}"))
}

/// `sample` once it reads `want` (the server counts an inference once its last message is
/// sent, which may be just after the client has its logits), or what it reads after 10 s.
fn metric_reaching(addr: &str, sample: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, text) = get(addr, "/metrics");
        assert_eq!(status, 200);
        let v = sample_value(&text, sample);
        if v == Some(want) || Instant::now() > deadline {
            return v.unwrap_or_else(|| panic!("{sample} missing in\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The private logits are the plaintext model's within fixed-point error.
fn close(got: &ndarray::ArrayD<f64>, want: &ndarray::ArrayD<f64>) {
    assert_eq!(got.shape(), want.shape());
    for (a, b) in got.iter().zip(want.iter()) {
        assert!((a - b).abs() < 0.05, "{a} vs {b}");
    }
}

struct Setup {
    server_addr: String,
    admin_addr: String,
    x: ndarray::ArrayD<f64>,
}

/// An inference server (not yet running) and its admin endpoint (running), sharing one
/// `Metrics`; returns the server to run.
fn setup(config: AdminConfig) -> (Setup, Server) {
    let metrics = Arc::new(Metrics::new());
    let admin = AdminServer::bind("127.0.0.1:0", metrics.clone())
        .unwrap()
        .with_config(config);
    let admin_addr = admin.local_addr().to_string();
    std::thread::spawn(move || admin.run());
    let server = Server::bind(
        "127.0.0.1:0",
        vec![("mlp".into(), model())],
        ServerConfig::default(),
    )
    .unwrap()
    .with_metrics(metrics);
    let x = read_npy(data_dir().join("digits_test_x.npy"))
        .unwrap()
        .to_f64()
        .index_axis(Axis(0), 0)
        .to_owned();
    let s = Setup {
        server_addr: server.local_addr().to_string(),
        admin_addr,
        x,
    };
    (s, server)
}

fn wait_ready(addr: &str) {
    let t = Instant::now();
    while get(addr, "/health/ready").0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(30), "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn health_models_and_metrics_answer_while_a_client_is_served() {
    let (s, server) = setup(AdminConfig::default());
    let a = &s.admin_addr;
    // Not yet serving: live, not ready.
    assert_eq!(get(a, "/health/live"), (200, "live\n".into()));
    assert_eq!(get(a, "/health/ready"), (503, "not ready\n".into()));
    let handle = server.shutdown_handle();
    let runner = std::thread::spawn(move || server.run());
    wait_ready(a);
    assert_eq!(get(a, "/health/ready"), (200, "ready\n".into()));

    // The catalog: what the hello announces.
    let (status, body) = get(a, "/v1/models");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], true);
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "{body}");
    assert_eq!(models[0]["name"], "mlp");
    assert_eq!(models[0]["input_shape"], serde_json::json!([1, 8, 8]));
    assert_eq!(models[0]["output_shape"], serde_json::json!([10]));
    let mode = models[0]["mode"].as_str().unwrap();
    // A ReLU network runs hybrid; the catalog names modes in lowercase.
    assert_eq!(mode, "hybrid", "{body}");
    let params = models[0]["params"].as_str().unwrap();
    assert!(params.starts_with("BFV N=8192 t=2^"), "{body}");

    let before = metric(a, "cipherml_sessions_total");
    assert_eq!(before, 0.0);
    let mut client = Client::connect(&s.server_addr).unwrap();
    assert_eq!(
        client.models()[0].mode.as_str(),
        mode,
        "the catalog matches the hello"
    );
    assert_eq!(client.models()[0].params.to_string(), params);
    // During the session: one active, one in all; every endpoint answers.
    assert_eq!(metric(a, "cipherml_sessions_active"), 1.0);
    assert_eq!(metric(a, "cipherml_sessions_total"), 1.0);
    assert_eq!(get(a, "/health/live").0, 200);
    assert_eq!(get(a, "/health/ready").0, 200);
    let inferences = "cipherml_inferences_total{model=\"mlp\"}";
    let (_, text) = get(a, "/metrics");
    assert_eq!(sample_value(&text, inferences), None, "no inference yet");

    let want = model().predict(&s.x).unwrap();
    for round in 1..=2 {
        let got = client.infer("mlp", &s.x).unwrap();
        close(&got, &want);
        assert_eq!(metric_reaching(a, inferences, round as f64), round as f64);
        assert_eq!(
            metric_reaching(
                a,
                "cipherml_inference_duration_seconds_count{model=\"mlp\"}",
                round as f64
            ),
            round as f64
        );
    }
    // The key cache's gauges are there (the server's cache, read at each scrape).
    let _ = metric(a, "cipherml_key_cache_entries");
    let received = metric(a, "cipherml_received_bytes_total");
    let sent = metric(a, "cipherml_sent_bytes_total");
    assert!(received > 0.0 && sent > 0.0, "{received} {sent}");
    client.close().unwrap();
    // The session ends: none active, its bytes counted in whole (at least the client's).
    let t = Instant::now();
    while metric(a, "cipherml_sessions_active") != 0.0 {
        assert!(t.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    }
    let total = metric(a, "cipherml_received_bytes_total") + metric(a, "cipherml_sent_bytes_total");
    assert!(total >= received + sent);
    assert_eq!(metric(a, "cipherml_sessions_total"), 1.0);

    // Shutting down: not ready any more, still live.
    handle.shutdown();
    runner.join().unwrap();
    assert_eq!(get(a, "/health/ready").0, 503);
    assert_eq!(get(a, "/health/live").0, 200);
}

#[test]
fn hostile_admin_requests_are_refused_and_inference_goes_on() {
    let config = AdminConfig {
        max_connections: 4,
        deadline: Duration::from_secs(1),
        ..AdminConfig::default()
    };
    let (s, server) = setup(config);
    let a = s.admin_addr.clone();
    std::thread::spawn(move || server.run());
    wait_ready(&a);
    let mut client = Client::connect(&s.server_addr).unwrap();

    // Malformed request lines and methods.
    for (request, status) in [
        (&b"\xff\xfe\x00garbage\r\n\r\n"[..], 400),
        (b"GET /metrics HTTP/9.9\r\n\r\n", 400),
        (b"GET\r\n\r\n", 400),
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            405,
        ),
        (b"DELETE /health/live HTTP/1.1\r\n\r\n", 405),
        (b"GET /admin/../etc/passwd HTTP/1.1\r\n\r\n", 404),
        (b"GET / HTTP/1.1\r\n\r\n", 404),
    ] {
        let answer = raw(&a, request);
        assert_eq!(parse(&answer).0, status, "{request:?}: {answer}");
        if status == 405 {
            assert!(answer.contains("Allow: GET, HEAD\r\n"), "{answer}");
        }
    }
    // HEAD: the head only.
    let answer = raw(&a, b"HEAD /health/live HTTP/1.1\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "{answer:?}");
    // A huge request line (4 KiB, never ended) and a huge head.
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(4096));
    assert_eq!(parse(&raw(&a, long.as_bytes())).0, 414);
    let headers = format!(
        "GET /metrics HTTP/1.1\r\n{}\r\n",
        "X-Junk: y\r\n".repeat(1000)
    );
    assert_eq!(parse(&raw(&a, headers.as_bytes())).0, 431);
    // A flood of bytes with no line end: refused after the line limit, not buffered.
    assert!(matches!(
        raw(&a, &vec![b'A'; 256 << 10]).split_whitespace().nth(1),
        Some("414") | None
    ));

    // The handlers of the requests above may still hold their slots for up to the deadline
    // (draining a flood, say): wait them out, so that the drips below take all four slots.
    std::thread::sleep(Duration::from_millis(1500));
    // Slow drips: every connection slot taken by a client that sends a byte now and then.
    // Each drip reports once its first byte is written, so that a loaded machine does not
    // start the check below before the slots are taken.
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let drips: Vec<_> = (0..4)
        .map(|_| {
            let addr = a.clone();
            let started_tx = started_tx.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let t = Instant::now();
                // One byte every 150 ms (the pause is a wait for an answer), never a
                // whole request line.
                for (i, b) in b"GET /metrics HTTP/1.1".iter().enumerate() {
                    if s.write_all(&[*b]).is_err() {
                        break;
                    }
                    if i == 0 {
                        let _ = started_tx.send(());
                    }
                    s.set_read_timeout(Some(Duration::from_millis(150)))
                        .unwrap();
                    match s.peek(&mut [0u8; 1]) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                        _ => break,
                    }
                }
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
            })
        })
        .collect();
    for _ in 0..4 {
        started
            .recv_timeout(Duration::from_secs(20))
            .expect("every drip connected");
    }
    std::thread::sleep(Duration::from_millis(300));
    // Past the connection limit: closed at once, no answer.
    let extra = raw(&a, b"GET /health/live HTTP/1.1\r\n\r\n");
    assert_eq!(extra, "", "a connection past the limit is closed");
    // Meanwhile the inference server serves.
    let want = model().predict(&s.x).unwrap();
    let got = client.infer("mlp", &s.x).unwrap();
    close(&got, &want);
    for d in drips {
        let (answer, elapsed) = d.join().unwrap();
        assert_eq!(parse(&answer).0, 408, "{answer}");
        // Cut by the 1 s deadline, not after the whole drip (wide margin).
        assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    }
    // The slots are free again and the counters still count.
    let t = Instant::now();
    loop {
        let answer = raw(&a, b"GET /health/live HTTP/1.1\r\n\r\n");
        if !answer.is_empty() {
            assert_eq!(parse(&answer), (200, "live\n".into()));
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "slots never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        metric_reaching(&a, "cipherml_inferences_total{model=\"mlp\"}", 1.0),
        1.0
    );
    let got = client.infer("mlp", &s.x).unwrap();
    close(&got, &want);
    client.close().unwrap();
}

/// A model's own batch limit (`ModelSpec::with_max_batch`, `max_batch` in a `--model-dir`
/// JSON file): a larger request is refused with a typed code, counted by code, and the
/// session goes on.
#[test]
fn a_models_batch_limit_is_refused_and_counted() {
    use cipherml::protocol::{ProtocolError, RefusalCode};
    use cipherml::server::ModelSpec;
    let metrics = Arc::new(Metrics::new());
    let server = Server::bind_models(
        "127.0.0.1:0",
        vec![ModelSpec::new("mlp", model()).with_max_batch(2)],
        ServerConfig::default(),
    )
    .unwrap()
    .with_metrics(metrics.clone());
    let addr = server.local_addr().to_string();
    std::thread::spawn(move || server.run());
    let xs = read_npy(data_dir().join("digits_test_x.npy"))
        .unwrap()
        .to_f64();
    let rows = |n: usize| {
        xs.slice_axis(Axis(0), ndarray::Slice::from(0..n))
            .to_owned()
            .into_dyn()
    };
    let mut client = Client::connect(&addr).unwrap();
    match client.infer_batch("mlp", &rows(3)) {
        Err(ProtocolError::Refused { code, message }) => {
            assert_eq!(code, RefusalCode::BadRequest);
            assert!(message.contains("must be 1 to 2"), "{message}");
        }
        other => panic!("a batch of 3 over a limit of 2: {other:?}"),
    }
    let text = metrics.encode();
    assert_eq!(
        sample_value(&text, "cipherml_refusals_total{code=\"bad_request\"}"),
        Some(1.0),
        "{text}"
    );
    let got = client.infer_batch("mlp", &rows(2)).unwrap();
    let m = model();
    for i in 0..2 {
        let want = m.predict(&xs.index_axis(Axis(0), i).to_owned()).unwrap();
        close(&got.index_axis(Axis(0), i).to_owned(), &want);
    }
    // The server counts an inference once its last message is sent, which may be just
    // after the client has its logits: wait for the count (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let count = loop {
        let c = sample_value(
            &metrics.encode(),
            "cipherml_inferences_total{model=\"mlp\"}",
        );
        if c == Some(2.0) || std::time::Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(count, Some(2.0));
    client.close().unwrap();
}
