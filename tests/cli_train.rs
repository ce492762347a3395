//! `cipherml train` end to end with the real binary: two processes train a vertical
//! logistic regression on the cancer data, the trained model is served privately and its
//! private predictions checked against the plaintext model; a job mismatch and a peer killed
//! mid-training are clear errors on both sides.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use cipherml::data::{data_dir, read_npy, write_npy_f32, NpyArray};
use ndarray::{s, ArrayD, Axis, Slice};

fn load(name: &str) -> ArrayD<f64> {
    read_npy(data_dir().join(name)).unwrap().to_f64()
}

/// A fresh temporary directory for one test.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cipherml-cli-train-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, a: &ArrayD<f64>) -> String {
    let path = dir.join(name);
    write_npy_f32(&path, &a.mapv(|v| v as f32)).unwrap();
    path.to_str().unwrap().to_string()
}

/// The cancer training set split by columns: the client's features 0..15, the server's
/// 15..30 and the labels; and a logistic-regression description.
fn vertical_files(dir: &Path) -> (String, String, String, String) {
    let x = load("cancer_train_x.npy");
    let y = load("cancer_train_y.npy");
    let cx = write(
        dir,
        "client_x.npy",
        &x.slice(s![.., ..15]).to_owned().into_dyn(),
    );
    let sx = write(
        dir,
        "server_x.npy",
        &x.slice(s![.., 15..]).to_owned().into_dyn(),
    );
    let sy = write(dir, "server_y.npy", &y);
    let model = dir.join("logreg.json");
    std::fs::write(
        &model,
        r#"{"input": [30], "seed": 1, "layers": [{"dense": 1}]}"#,
    )
    .unwrap();
    (cx, sx, sy, model.to_str().unwrap().to_string())
}

fn spawn(args: &[&str], token: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cipherml"));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("CIPHERML_TOKEN")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = token {
        cmd.env("CIPHERML_TOKEN", t);
    }
    cmd.spawn().expect("run the binary")
}

/// A listener's address, from its first line `listening on ADDR`.
fn listening(child: &mut Child) -> (String, BufReader<ChildStdout>) {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("expected `listening on ADDR`, got {line:?}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    (addr, out)
}

/// Waits for a process whose stdout was taken into `out`: (success, stdout, stderr).
fn finish(child: Child, mut out: Option<BufReader<ChildStdout>>) -> (bool, String, String) {
    let mut text = String::new();
    if let Some(o) = out.as_mut() {
        o.read_to_string(&mut text).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    (
        output.status.success(),
        text,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const JOB: &[&str] = &[
    "--split",
    "columns",
    "--loss",
    "bce",
    "--lr",
    "0.5",
    "--batch-size",
    "64",
];

/// A `cipherml serve` process, killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn vertical_logistic_regression_then_private_inference_of_the_trained_model() {
    let dir = temp_dir("vertical");
    let (cx, sx, sy, model) = vertical_files(&dir);
    let out = dir.join("trained.onnx");
    let token = Some("a shared secret");
    let mut server_args = vec![
        "train",
        "--listen",
        "127.0.0.1:0",
        "--x",
        &sx,
        "--y",
        &sy,
        "--model",
        &model,
        "--epochs",
        "3",
        "--reveal-metrics",
    ];
    server_args.extend_from_slice(JOB);
    let mut server = spawn(&server_args, token);
    let (addr, server_out) = listening(&mut server);
    let mut client_args = vec![
        "train",
        "--connect",
        &addr,
        "--x",
        &cx,
        "--model",
        &model,
        "--epochs",
        "3",
        "--reveal-metrics",
        "--output",
        out.to_str().unwrap(),
    ];
    client_args.extend_from_slice(JOB);
    let client = spawn(&client_args, token);
    let (c_ok, c_out, c_err) = finish(client, None);
    let (s_ok, s_out, s_err) = finish(server, Some(server_out));
    assert!(c_ok, "client: {c_out}\n{c_err}");
    assert!(s_ok, "server: {s_out}\n{s_err}");
    for text in [&c_out, &s_out] {
        for e in 1..=3 {
            assert!(
                text.contains(&format!("epoch {e}/3 done (Brier score")),
                "{text}"
            );
        }
    }
    assert!(c_out.contains("trained model written to"), "{c_out}");
    assert!(s_out.contains("revealed to the peer"), "{s_out}");

    // The written model: plaintext accuracy on the test set.
    let trained = cipherml::nn::load_onnx(&out).unwrap();
    assert_eq!(trained.input_shape(), &[30]);
    let tx = load("cancer_test_x.npy");
    let ty = load("cancer_test_y.npy");
    let n = tx.shape()[0];
    let correct = (0..n)
        .filter(|&i| {
            let z = trained
                .predict(&tx.index_axis(Axis(0), i).to_owned())
                .unwrap();
            f64::from(z[[0]] > 0.0) == ty[i]
        })
        .count();
    let accuracy = correct as f64 / n as f64;
    assert!(accuracy >= 0.9, "test accuracy {accuracy}");

    // Train privately, serve privately: the trained model behind `cipherml serve`, called
    // with `cipherml infer` on 20 test rows.
    let mut serve = Serve(spawn(
        &[
            "serve",
            "--model",
            out.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        None,
    ));
    let (serve_addr, _serve_out) = listening(&mut serve.0);
    let rows = tx.slice_axis(Axis(0), Slice::from(0..20)).to_owned();
    let input = write(&dir, "infer_x.npy", &rows);
    let logits_path = dir.join("infer_y.npy");
    let infer = spawn(
        &[
            "infer",
            "--server",
            &serve_addr,
            "--input",
            &input,
            "--output",
            logits_path.to_str().unwrap(),
        ],
        None,
    );
    let (i_ok, i_out, i_err) = finish(infer, None);
    assert!(i_ok, "infer: {i_out}\n{i_err}");
    let logits = match read_npy(&logits_path).unwrap() {
        NpyArray::F32(a) => a.mapv(f64::from),
        other => panic!("{other:?}"),
    };
    assert_eq!(logits.shape(), &[20, 1]);
    for i in 0..20 {
        // The plaintext model on the same (f32-rounded) input the client sent.
        let x = rows.index_axis(Axis(0), i).mapv(|v| f64::from(v as f32));
        let want = trained.predict(&x).unwrap()[[0]];
        let got = logits[[i, 0]];
        assert!(
            (got - want).abs() < 0.05,
            "row {i}: private {got}, plaintext {want}"
        );
        let class = usize::from(want > 0.0);
        assert_eq!(usize::from(got > 0.0), class, "row {i}: {got} vs {want}");
        assert!(i_out.contains(&format!("{i}: class {class}")), "{i_out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn different_jobs_or_a_wrong_token_are_refused_on_both_sides() {
    let dir = temp_dir("mismatch");
    let (cx, sx, sy, model) = vertical_files(&dir);
    let out = dir.join("never.onnx");
    let run = |server_epochs: &str, tokens: [Option<&str>; 2]| {
        let mut server_args = vec![
            "train",
            "--listen",
            "127.0.0.1:0",
            "--x",
            &sx,
            "--y",
            &sy,
            "--model",
            &model,
            "--epochs",
            server_epochs,
        ];
        server_args.extend_from_slice(JOB);
        let mut server = spawn(&server_args, tokens[1]);
        let (addr, server_out) = listening(&mut server);
        let mut client_args = vec![
            "train",
            "--connect",
            &addr,
            "--x",
            &cx,
            "--model",
            &model,
            "--epochs",
            "3",
            "--output",
            out.to_str().unwrap(),
        ];
        client_args.extend_from_slice(JOB);
        let client = spawn(&client_args, tokens[0]);
        (finish(client, None), finish(server, Some(server_out)))
    };

    // Different --epochs: both refuse, naming the field.
    let ((c_ok, _, c_err), (s_ok, _, s_err)) = run("4", [None, None]);
    assert!(!c_ok && !s_ok, "client: {c_err}\nserver: {s_err}");
    for err in [&c_err, &s_err] {
        assert!(
            err.contains("error: the parties' training jobs differ"),
            "{err}"
        );
        assert!(err.contains("epochs"), "{err}");
    }
    assert!(c_err.contains("epochs: 3 here, 4 at the peer"), "{c_err}");
    assert!(s_err.contains("epochs: 4 here, 3 at the peer"), "{s_err}");

    // The same job, a wrong token: the listener refuses before it says anything more.
    let ((c_ok, _, c_err), (s_ok, _, s_err)) = run("3", [Some("guess"), Some("secret")]);
    assert!(!c_ok && !s_ok, "client: {c_err}\nserver: {s_err}");
    assert!(
        c_err.contains("the peer refused: bad or missing token"),
        "{c_err}"
    );
    assert!(s_err.contains("bad or no token"), "{s_err}");
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_peer_killed_mid_training_is_an_error_naming_epoch_and_batch() {
    let dir = temp_dir("killed");
    let (cx, sx, sy, model) = vertical_files(&dir);
    let out = dir.join("never.onnx");
    let mut server_args = vec![
        "train",
        "--listen",
        "127.0.0.1:0",
        "--x",
        &sx,
        "--y",
        &sy,
        "--model",
        &model,
        "--epochs",
        "1000",
    ];
    server_args.extend_from_slice(JOB);
    let mut server = spawn(&server_args, None);
    let (addr, _server_out) = listening(&mut server);
    let mut client_args = vec![
        "train",
        "--connect",
        &addr,
        "--x",
        &cx,
        "--model",
        &model,
        "--epochs",
        "1000",
        "--timeout",
        "30",
        "--output",
        out.to_str().unwrap(),
    ];
    client_args.extend_from_slice(JOB);
    let mut client = spawn(&client_args, None);
    let mut client_out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            client_out.read_line(&mut line).unwrap() > 0,
            "client ended early"
        );
        if line.starts_with("epoch 1/1000 done") {
            break;
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
    let (ok, text, err) = finish(client, Some(client_out));
    assert!(!ok, "{text}\n{err}");
    assert!(!text.contains("epoch 1000/1000"), "{text}");
    assert!(!err.contains("panicked"), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: training stopped in epoch "),
        "{err}"
    );
    assert!(
        last.contains(", batch ") || last.contains("before batch"),
        "{err}"
    );
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rows split (each party its own samples and labels), over TLS with a token, triples from
/// a `cipherml dealer`, truncations within one ulp, a two-layer softmax model; the listener
/// receives the model.
#[test]
fn horizontal_softmax_over_tls_with_a_dealer() {
    let dir = temp_dir("horizontal");
    let x = load("cancer_train_x.npy");
    let y = load("cancer_train_y.npy");
    let cx = write(
        &dir,
        "client_x.npy",
        &x.slice(s![..200, ..]).to_owned().into_dyn(),
    );
    let cy = write(
        &dir,
        "client_y.npy",
        &y.slice(s![..200]).to_owned().into_dyn(),
    );
    let sx = write(
        &dir,
        "server_x.npy",
        &x.slice(s![200.., ..]).to_owned().into_dyn(),
    );
    let sy = write(
        &dir,
        "server_y.npy",
        &y.slice(s![200..]).to_owned().into_dyn(),
    );
    let model = dir.join("mlp.json");
    let description =
        r#"{"input": [30], "seed": 3, "layers": [{"dense": 8}, "relu", {"dense": 2}]}"#;
    std::fs::write(&model, description).unwrap();
    let model = model.to_str().unwrap();
    let out = dir.join("mlp.onnx");
    let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
    let (cert, key, ca) = (
        tls.join("server.pem"),
        tls.join("server.key"),
        tls.join("ca.pem"),
    );
    let mut dealer = spawn(
        &["dealer", "--listen", "127.0.0.1:0", "--sessions", "1"],
        None,
    );
    let (dealer_addr, dealer_out) = listening(&mut dealer);
    let job = [
        "--split",
        "rows",
        "--model",
        model,
        "--loss",
        "softmax-ce",
        "--epochs",
        "2",
        "--momentum",
        "0.5",
        "--shuffle-seed",
        "5",
        "--dealer",
        &dealer_addr,
        "--truncation",
        "ulp",
    ];
    let mut server_args = vec![
        "train",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--x",
        &sx,
        "--y",
        &sy,
        "--output",
        out.to_str().unwrap(),
    ];
    server_args.extend_from_slice(&job);
    let mut server = spawn(&server_args, Some("tok"));
    let (addr, server_out) = listening(&mut server);
    let mut client_args = vec![
        "train",
        "--connect",
        &addr,
        "--tls-ca",
        ca.to_str().unwrap(),
        "--tls-server-name",
        "localhost",
        "--x",
        &cx,
        "--y",
        &cy,
    ];
    client_args.extend_from_slice(&job);
    let client = spawn(&client_args, Some("tok"));
    let (c_ok, c_out, c_err) = finish(client, None);
    let (s_ok, s_out, s_err) = finish(server, Some(server_out));
    let (d_ok, d_out, d_err) = finish(dealer, Some(dealer_out));
    assert!(c_ok, "client: {c_out}\n{c_err}");
    assert!(s_ok, "server: {s_out}\n{s_err}");
    assert!(
        d_ok && d_out.contains("1 session(s) served, 0 failed"),
        "{d_out}\n{d_err}"
    );
    assert!(c_out.contains("epoch 2/2 done\n"), "{c_out}");
    assert!(c_out.contains("revealed to the peer"), "{c_out}");
    assert!(s_out.contains("trained model written to"), "{s_out}");

    let trained = cipherml::nn::load_onnx(&out).unwrap();
    let initial = cipherml::nn::model_from_json(description).unwrap();
    assert_eq!(trained.shapes().unwrap(), initial.shapes().unwrap());
    let tx = load("cancer_test_x.npy");
    let ty = load("cancer_test_y.npy");
    let n = tx.shape()[0];
    let correct = (0..n)
        .filter(|&i| {
            let z = trained
                .predict(&tx.index_axis(Axis(0), i).to_owned())
                .unwrap();
            f64::from(z[[1]] > z[[0]]) == ty[i]
        })
        .count();
    let accuracy = correct as f64 / n as f64;
    assert!(accuracy >= 0.9, "test accuracy {accuracy}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Data are checked before anything is shared (here: before connecting at all).
#[test]
fn bad_values_and_labels_are_refused_naming_file_index_and_value() {
    let dir = temp_dir("values");
    let mut x = load("cancer_train_x.npy");
    x[[3, 7]] = 20000.0;
    let bad_x = write(&dir, "bad_x.npy", &x);
    let mut y = load("cancer_train_y.npy");
    y[5] = 2.0;
    let bad_y = write(&dir, "bad_y.npy", &y);
    let good_y = write(&dir, "y.npy", &load("cancer_train_y.npy"));
    let model = dir.join("m.json");
    std::fs::write(&model, r#"{"input": [30], "layers": [{"dense": 1}]}"#).unwrap();
    let model = model.to_str().unwrap();
    // Nothing listens on the address: the errors come first.
    for (xp, yp, needle) in [
        (
            &bad_x,
            &good_y,
            format!("--x {bad_x}: value 20000 at index [3, 7]"),
        ),
        (
            &cx_of(&dir),
            &bad_y,
            format!("--y {bad_y}: label 2 at index 5"),
        ),
    ] {
        let child = spawn(
            &[
                "train",
                "--connect",
                "127.0.0.1:9",
                "--split",
                "rows",
                "--x",
                xp,
                "--y",
                yp,
                "--model",
                model,
                "--loss",
                "bce",
            ],
            None,
        );
        let (ok, _, err) = finish(child, None);
        assert!(!ok);
        assert!(err.contains(&needle), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn cx_of(dir: &Path) -> String {
    write(dir, "x.npy", &load("cancer_train_x.npy"))
}
