//! The `cipherml` binary end to end.

use std::process::Command;

fn cipherml(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cipherml"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run the binary")
}

#[test]
fn inspect_every_bundled_model() {
    for name in [
        "digits_mlp",
        "digits_cnn",
        "digits_square_mlp",
        "cancer_logreg",
    ] {
        let out = cipherml(&["inspect", &format!("models/{name}.onnx")]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Dense"), "{text}");
        assert!(text.contains("mode:"), "{text}");
        assert!(text.contains("estimated total"), "{text}");
    }
    let bad = cipherml(&["inspect", "data/README.md"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot load ONNX model"));
}

/// The demo runs outside the source tree (its model and data are built into the binary): a
/// copy of the binary in an empty folder, run there.
#[test]
fn demo_prints_accuracy_latency_and_bytes() {
    let dir = std::env::temp_dir().join(format!("cipherml-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("cipherml");
    std::fs::copy(env!("CARGO_BIN_EXE_cipherml"), &exe).unwrap();
    // A child forked by another test while the copy was open for writing holds it open
    // until it execs, and running the copy meanwhile fails with ETXTBSY: retry, bounded.
    let run = |cmd: &mut Command| {
        for _ in 0..100 {
            match cmd.output() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other.expect("run the binary"),
            }
        }
        panic!("the copied binary stayed busy for 2 s");
    };
    let out = run(Command::new(&exe)
        .args(["demo", "--images", "20"])
        .current_dir(&dir)
        .env_remove("RUST_LOG"));
    // RUST_LOG turns them on.
    let verbose = run(Command::new(&exe)
        .args(["demo", "--images", "1"])
        .current_dir(&dir)
        .env("RUST_LOG", "info"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(verbose.status.success());
    let logs = String::from_utf8_lossy(&verbose.stderr);
    assert!(logs.contains("INFO"), "{logs}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("20/20 predictions equal the plaintext model's"),
        "{text}"
    );
    assert!(text.contains("per image:"), "{text}");
    assert!(text.contains("MB exchanged"), "{text}");
    // The in-process server's per-session and per-inference log lines are off.
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(!logs.contains("INFO"), "{logs}");
    assert!(!logs.contains("session"), "{logs}");
}

#[test]
fn unknown_bench_suite_is_an_error() {
    let out = cipherml(&["bench", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown suite"));
}

/// A `cipherml serve` process, killed when dropped.
struct ServeProcess {
    child: std::process::Child,
    addr: String,
    /// The rest of its standard output.
    stdout: Option<std::io::BufReader<std::process::ChildStdout>>,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(models: &[&str], tls: Option<(&str, &str)>) -> ServeProcess {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
    for m in models {
        args.push("--model");
        args.push(m);
    }
    if let Some((cert, key)) = tls {
        args.extend(["--tls-cert", cert, "--tls-key", key]);
    }
    serve_with(&args)
}

/// `cipherml ARGS` (a `serve` command line), once it prints "listening on ADDR".
fn serve_with(args: &[&str]) -> ServeProcess {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cipherml"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .split_whitespace()
        .nth(2)
        .expect("listening on ADDR")
        .to_string();
    ServeProcess {
        child,
        addr,
        stdout: Some(stdout),
    }
}

#[test]
fn serve_and_infer_with_the_real_binaries_survive_hostile_clients() {
    use std::io::Write;
    let server = serve(
        &[
            "models/digits_cnn.onnx",
            "mlp=models/digits_mlp.onnx",
            "models/digits_square_mlp.onnx",
            "models/cancer_logreg.onnx",
        ],
        None,
    );
    // A hostile client: random bytes, an oversized length prefix, then a hang-up.
    for garbage in [
        vec![0xffu8; 64],
        vec![0x00, 0x00, 0x00, 0x7f, 1, 2, 3],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ] {
        let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
        let _ = s.write_all(&garbage);
    }
    // An unknown model: a clear refusal, and the server keeps serving.
    let out = cipherml(&[
        "infer",
        "--server",
        &server.addr,
        "--model",
        "nope",
        "--input",
        "data/digits_test_x.npy",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no model named"));
    // Real inference through the CLI on 4 test rows, for every bundled model (hybrid and
    // CKKS modes).
    for (name, file, data) in [
        ("digits_cnn", "digits_cnn", "digits_test_x.npy"),
        ("mlp", "digits_mlp", "digits_test_x.npy"),
        (
            "digits_square_mlp",
            "digits_square_mlp",
            "digits_test_x.npy",
        ),
        ("cancer_logreg", "cancer_logreg", "cancer_test_x.npy"),
    ] {
        check_cli_inference(&server.addr, name, file, data, &[]);
    }
}

/// Runs `cipherml infer` on the first 4 rows of `data` (files in a temporary directory of
/// its own) and checks the logits and classes against the plaintext model.
fn check_cli_inference(addr: &str, name: &str, file: &str, data: &str, extra: &[&str]) {
    use cipherml::data::{data_dir, npy_bytes_f32, read_npy, NpyArray};
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("cipherml-cli-{}-{run}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let xs = read_npy(data_dir().join(data)).unwrap().to_f64();
    let batch = xs
        .slice_axis(ndarray::Axis(0), ndarray::Slice::from(0..4))
        .mapv(|v| v as f32)
        .into_dyn();
    let input = dir.join(format!("{name}-x.npy"));
    let output = dir.join(format!("{name}-y.npy"));
    std::fs::write(&input, npy_bytes_f32(&batch)).unwrap();
    let arch = format!("models/{file}.onnx");
    let mut args = vec![
        "infer",
        "--server",
        addr,
        "--model",
        name,
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = cipherml(&args);
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logits = match read_npy(&output).unwrap() {
        NpyArray::F32(a) => a.mapv(f64::from),
        other => panic!("{other:?}"),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let model =
        cipherml::nn::load_onnx(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(&arch))
            .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for i in 0..4 {
        let want = model
            .predict(&xs.index_axis(ndarray::Axis(0), i).to_owned())
            .unwrap();
        let got = logits.index_axis(ndarray::Axis(0), i);
        assert_eq!(got.shape(), want.shape(), "{name}");
        for (a, b) in got.iter().zip(want.iter()) {
            assert!((a - b).abs() < 0.05, "{name} row {i}: {a} vs {b}");
        }
        let class = if want.len() == 1 {
            usize::from(want[[0]] > 0.0)
        } else {
            want.iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |b, (j, &v)| if v > b.1 { (j, v) } else { b },
                )
                .0
        };
        assert!(
            text.contains(&format!("{i}: class {class}")),
            "{name}: {text}"
        );
    }
}

#[test]
fn serve_and_infer_over_tls_with_the_real_binaries() {
    let tls = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
    let cert = tls.join("server.pem");
    let key = tls.join("server.key");
    let ca = tls.join("ca.pem");
    let server = serve(
        &["models/digits_mlp.onnx"],
        Some((cert.to_str().unwrap(), key.to_str().unwrap())),
    );
    check_cli_inference(
        &server.addr,
        "digits_mlp",
        "digits_mlp",
        "digits_test_x.npy",
        &["--tls-ca", ca.to_str().unwrap()],
    );
    // Without TLS, or trusting another CA, the client fails with an error.
    for extra in [vec![], vec!["--tls-ca", cert.to_str().unwrap()]] {
        let mut args = vec![
            "infer",
            "--server",
            &server.addr,
            "--input",
            "data/digits_test_x.npy",
        ];
        args.extend(extra);
        let out = cipherml(&args);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("error"));
    }
}

/// Resident memory of a process, in bytes (Linux `/proc`).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Hostile frames (truncated, oversized, garbage) from 400 sessions: the `serve` process's
/// resident memory stays bounded and it keeps serving.
#[test]
fn hostile_frames_do_not_grow_the_servers_memory() {
    use std::io::Write;
    let server = serve(&["models/digits_mlp.onnx"], None);
    let pid = server.child.id();
    let hostile = |round: usize| {
        let Ok(mut s) = std::net::TcpStream::connect(&server.addr) else {
            return;
        };
        let frame: Vec<u8> = match round % 4 {
            // A length prefix at the 64 MiB limit, then 10 bytes and a hang-up.
            0 => [&(64u32 << 20).to_le_bytes()[..], &[7u8; 10]].concat(),
            // Over the limit.
            1 => u32::MAX.to_le_bytes().to_vec(),
            // A truncated frame: 100 announced, 3 sent, then a hang-up.
            2 => [&100u32.to_le_bytes()[..], &[1, 2, 3]].concat(),
            // A valid length with garbage inside.
            _ => [&16u32.to_le_bytes()[..], &[0xee; 16]].concat(),
        };
        let _ = s.write_all(&frame);
    };
    // Warm up (thread stacks, allocator arenas), then measure over many more sessions.
    for r in 0..40 {
        hostile(r);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = rss_bytes(pid);
    assert!(before > 0, "no /proc reading");
    for r in 0..400 {
        hostile(r);
    }
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let after = rss_bytes(pid);
    println!("serve resident memory: {before} bytes before, {after} after 400 hostile sessions");
    assert!(
        after < before + (32 << 20),
        "resident memory grew from {before} to {after} bytes after 400 hostile sessions"
    );
    // And it still serves.
    check_cli_inference(
        &server.addr,
        "digits_mlp",
        "digits_mlp",
        "digits_test_x.npy",
        &[],
    );
}

/// Ctrl-C (SIGINT) stops `cipherml serve` cleanly: exit status 0 and a final message.
#[test]
fn ctrl_c_stops_the_server_cleanly() {
    use std::io::Read;
    let mut server = serve(&["models/digits_mlp.onnx"], None);
    check_cli_inference(
        &server.addr,
        "digits_mlp",
        "digits_mlp",
        "digits_test_x.npy",
        &[],
    );
    let pid = server.child.id().to_string();
    let kill = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not stop on SIGINT"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    server
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    assert!(rest.contains("stopped (0 session(s) cut short)"), "{rest}");
}

/// `GET path` over plain HTTP: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{answer:?}"));
    let body = answer.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

/// `serve --model-dir` hosts every NAME.onnx of a folder with the mode of its NAME.json,
/// and `--admin-listen` answers health, catalog and metrics; bad folders are refused with
/// the file named.
#[test]
fn serve_a_model_dir_with_an_admin_endpoint() {
    use std::io::BufRead;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("cipherml-model-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let copy = |from: &str, to: &str| {
        std::fs::copy(root.join("models").join(from), dir.join(to)).unwrap();
    };
    copy("digits_mlp.onnx", "mlp.onnx");
    copy("digits_square_mlp.onnx", "square.onnx");
    std::fs::write(dir.join("square.json"), r#"{"mode": "hybrid"}"#).unwrap();
    std::fs::write(dir.join("mlp.json"), r#"{"max_batch": 64}"#).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a model").unwrap();
    let d = dir.to_str().unwrap();

    let mut server = serve_with(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--model-dir",
        d,
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let mut line = String::new();
    server
        .stdout
        .as_mut()
        .unwrap()
        .read_line(&mut line)
        .unwrap();
    let admin = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no admin address in {line:?}"))
        .to_string();
    assert_eq!(http_get(&admin, "/health/live").0, 200);
    // The address is printed before the server starts accepting: the catalog is filled
    // once it is ready, which is what an orchestrator polls for.
    let start = std::time::Instant::now();
    while http_get(&admin, "/health/ready").0 != 200 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "never ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (status, body) = http_get(&admin, "/v1/models");
    assert_eq!(status, 200);
    let catalog: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = catalog["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mlp", "square"], "{body}");
    // square.json asked for the hybrid mode (the planner alone would pick CKKS for a
    // polynomial network, if the server allowed it).
    assert_eq!(catalog["models"][1]["mode"], "hybrid", "{body}");
    assert_eq!(http_get(&admin, "/health/ready").0, 200);

    check_cli_inference(&server.addr, "mlp", "digits_mlp", "digits_test_x.npy", &[]);
    check_cli_inference(
        &server.addr,
        "square",
        "digits_square_mlp",
        "digits_test_x.npy",
        &[],
    );
    // The server counts an inference after its reply is flushed, so the client may be
    // done a moment before the counter moves: poll, with a deadline.
    let want = [
        ("cipherml_inferences_total{model=\"mlp\"}", 4.0),
        ("cipherml_inferences_total{model=\"square\"}", 4.0),
        ("cipherml_sessions_total", 2.0),
    ];
    let start = std::time::Instant::now();
    loop {
        let (status, metrics) = http_get(&admin, "/metrics");
        assert_eq!(status, 200);
        let got: Vec<Option<f64>> = want
            .iter()
            .map(|(sample, _)| cipherml::metrics::sample_value(&metrics, sample))
            .collect();
        if want.iter().zip(&got).all(|((_, w), g)| *g == Some(*w)) {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{want:?} never reached: {got:?} in\n{metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(server);

    // A mode that does not exist, a JSON file without its model, a folder without models.
    std::fs::write(dir.join("square.json"), r#"{"mode": "fast"}"#).unwrap();
    let out = cipherml(&["serve", "--model-dir", d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("square.json") && err.contains("\"fast\""),
        "{err}"
    );
    std::fs::write(dir.join("square.json"), r#"{"max_batch": 0}"#).unwrap();
    let out = cipherml(&["serve", "--model-dir", d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("square.json: max_batch 0"), "{err}");
    std::fs::write(dir.join("square.json"), r#"{"mode": "ckks", "batch": 2}"#).unwrap();
    let out = cipherml(&["serve", "--model-dir", d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("square.json") && err.contains("batch"),
        "{err}"
    );
    std::fs::remove_file(dir.join("square.onnx")).unwrap();
    let out = cipherml(&["serve", "--model-dir", d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no model beside it"), "{err}");
    for f in ["square.json", "mlp.json", "mlp.onnx"] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    let out = cipherml(&["serve", "--model-dir", d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no .onnx model"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Models from the real exporters (torch.onnx with branches, tf2onnx from Keras with an
/// NHWC input, skl2onnx with `ai.onnx.ml` operators) served by `cipherml serve` and called
/// with `cipherml infer`: the classes equal ONNX Runtime's (`tests/data/exporters`).
#[test]
fn real_exports_are_served_by_the_cli_with_onnx_runtime_classes() {
    use cipherml::data::{data_dir, npy_bytes_f32, read_npy, NpyArray};
    let dir = "tests/data/exporters";
    let models = [
        ("torch_resnet_proj", "digits_test_x.npy"),
        ("keras_cnn_nhwc", "digits_test_x.npy"),
        ("skl_logreg_digits", "digits_test_x.npy"),
        ("skl_logreg_cancer", "cancer_test_x.npy"),
    ];
    let files: Vec<String> = models
        .iter()
        .map(|(m, _)| format!("{dir}/{m}.onnx"))
        .collect();
    let refs: Vec<&str> = files.iter().map(String::as_str).collect();
    let server = serve(&refs, None);
    let tmp = std::env::temp_dir().join(format!("cipherml-cli-real-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for (name, data) in models {
        let model = cipherml::nn::load_onnx(format!("{dir}/{name}.onnx")).unwrap();
        // The first 6 rows, in the model's input shape.
        let xs = read_npy(data_dir().join(data)).unwrap().to_f64();
        let mut shape = vec![6];
        shape.extend_from_slice(model.input_shape());
        let batch = xs
            .slice_axis(ndarray::Axis(0), ndarray::Slice::from(0..6))
            .as_standard_layout()
            .mapv(|v| v as f32)
            .into_shape_with_order(ndarray::IxDyn(&shape))
            .unwrap();
        let input = tmp.join(format!("{name}-x.npy"));
        let output = tmp.join(format!("{name}-y.npy"));
        std::fs::write(&input, npy_bytes_f32(&batch)).unwrap();
        let out = cipherml(&[
            "infer",
            "--server",
            &server.addr,
            "--model",
            name,
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ys = match read_npy(&output).unwrap() {
            NpyArray::F32(a) => a.mapv(f64::from),
            other => panic!("{other:?}"),
        };
        let classes = read_npy(format!(
            "{}/{dir}/{name}.classes.npy",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
        .into_i64()
        .unwrap();
        for (i, y) in ys.outer_iter().enumerate() {
            let class = y
                .iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |b, (j, &v)| if v > b.1 { (j, v) } else { b },
                )
                .0;
            assert_eq!(class as i64, classes[i], "{name} row {i}: {y}");
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `cipherml aggregate serve` and four `cipherml aggregate submit` processes, one of which
/// drops out (its update has the wrong length: it joins, then leaves before its keys): a
/// weighted round whose written sum is the weighted sum of the other three updates (and the
/// sum of their weights), within the quantization error; the server prints the per-stage
/// counts.
#[test]
fn aggregate_serve_and_submit_with_the_real_binaries() {
    use cipherml::data::{npy_bytes_f32, read_npy};
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("cipherml-agg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("sum.npy");
    let mut server = serve_with(&[
        "aggregate",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--clients",
        "4",
        "--dim",
        "4",
        "--max-weight",
        "100",
        "--join-timeout",
        "30",
        "--output",
        output.to_str().unwrap(),
    ]);
    let updates = [
        [0.5f32, -0.25, 0.125, 1.0],
        [-0.5, 0.75, 0.0, 0.25],
        [0.1, 0.2, -0.3, -0.4],
    ];
    let weights = [10u64, 20, 70];
    let clients: Vec<_> = updates
        .iter()
        .zip(weights)
        .enumerate()
        .map(|(i, (u, w))| {
            let input = dir.join(format!("u{i}.npy"));
            let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[4]), u.to_vec()).unwrap();
            std::fs::write(&input, npy_bytes_f32(&a)).unwrap();
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                cipherml(&[
                    "aggregate",
                    "submit",
                    "--server",
                    &addr,
                    "--input",
                    input.to_str().unwrap(),
                    "--weight",
                    &w.to_string(),
                ])
            })
        })
        .collect();
    // The dropout: five values where the round takes four.
    let bad_input = dir.join("bad.npy");
    let bad = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[5]), vec![0.1f32; 5]).unwrap();
    std::fs::write(&bad_input, npy_bytes_f32(&bad)).unwrap();
    let dropout = cipherml(&[
        "aggregate",
        "submit",
        "--server",
        &server.addr,
        "--input",
        bad_input.to_str().unwrap(),
        "--weight",
        "5",
    ]);
    assert!(!dropout.status.success());
    assert!(
        String::from_utf8_lossy(&dropout.stderr).contains("5 values, the round takes 4"),
        "{}",
        String::from_utf8_lossy(&dropout.stderr)
    );
    let outs: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    for out in outs.iter() {
        assert!(
            out.status.success(),
            "{} / all: {:?}",
            String::from_utf8_lossy(&out.stderr),
            outs.iter()
                .map(|o| (
                    String::from_utf8_lossy(&o.stdout).to_string(),
                    String::from_utf8_lossy(&o.stderr).to_string()
                ))
                .collect::<Vec<_>>()
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("3 updates summed"));
    }
    let status = server.child.wait().unwrap();
    assert!(status.success());
    let mut text = String::new();
    let mut stdout = server.stdout.take().unwrap();
    while stdout.read_line(&mut text).unwrap() > 0 {}
    assert!(
        text.contains("round 1: joined 4, keys 3, shares 3, masked inputs 3, unmasking 3"),
        "{text}"
    );
    let sum = read_npy(&output).unwrap().to_f64();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(sum.len(), 5);
    for j in 0..4 {
        let want: f64 = updates
            .iter()
            .zip(weights)
            .map(|(u, w)| u[j] as f64 * w as f64)
            .sum();
        // 16-bit quantization of [-1, 1]: 2^-15 per entry, times the weight sum (100).
        assert!(
            (sum[j] - want).abs() < 0.01,
            "entry {j}: {} vs {want}",
            sum[j]
        );
    }
    assert_eq!(sum[4], 100.0);
}
