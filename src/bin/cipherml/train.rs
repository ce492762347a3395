//! `cipherml train`: one party of a two-party private training job over TCP (optionally
//! TLS and a bearer token, as `serve` / `infer`).
//!
//! The listener is the server role, the connector the client role. Before the session,
//! the parties exchange a small hello (bounded size): the connector's token (checked by
//! the listener in constant time, before it says anything about its data), each party's
//! data shape, whether it holds labels and wants the trained model, and the job (model
//! digest, loss, optimizer, fit options, split). Any difference is an error on both sides,
//! before any data is shared. Then both secret-share their data, join it (rows: samples
//! of both parties, axis 0; columns: the features of both, the client's first, axis 1),
//! train with [`Trainer::fit_with`], and the party that asked for it receives the model.

use std::io::Write;
use std::net::{TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cipherml::mpc::net::{Channel, ChannelConfig, TcpChannel};
use cipherml::nn::{load_onnx, model_from_json, one_hot, FitOptions, Layer, Loss, Optimizer};
use cipherml::nn::{Sequential, Trainer};
use cipherml::tensor::{PrivateTensor, Role, Session, SessionConfig, Triples, Truncation};
use ndarray::{ArrayD, Dimension, IxDyn};
use serde::{Deserialize, Serialize};

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// The arguments of `cipherml train`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("peer").required(true).args(["listen", "connect"])))]
pub struct TrainArgs {
    /// Wait for the other party on this address (port 0 picks a free port; prints
    /// "listening on ADDR" first): this party is the server of the session.
    #[arg(long)]
    listen: Option<String>,
    /// Connect to the other party at this address (retrying while it does not listen yet,
    /// up to --timeout): this party is the client of the session.
    #[arg(long)]
    connect: Option<String>,
    /// This party's features (.npy, samples on the first axis). Optional with
    /// --split columns: a party may hold only the labels.
    #[arg(long)]
    x: Option<PathBuf>,
    /// This party's labels (.npy, one per sample): class indices for bce (0 or 1) and
    /// softmax-ce, targets of the model's output shape for mse. With --split rows both
    /// parties pass it, with --split columns exactly one.
    #[arg(long)]
    y: Option<PathBuf>,
    /// How the data are divided: rows (each party holds whole samples, all features, and
    /// their labels) or columns (both hold the same samples in the same order, each some
    /// of the features; the client's features come first; one party holds the labels).
    #[arg(long, value_parser = ["rows", "columns"])]
    split: String,
    /// The model to train, the same file at both parties: PATH.onnx (architecture and
    /// initial weights) or PATH.json (a description: {"input": [30], "seed": 1, "layers":
    /// [{"dense": 16}, "relu", {"dense": 1}]}, weights Glorot-uniform from the seed).
    #[arg(long)]
    model: PathBuf,
    /// The loss on the model's output: bce (binary cross-entropy on one logit),
    /// softmax-ce (softmax cross-entropy; labels are class indices) or mse.
    #[arg(long, value_parser = ["bce", "softmax-ce", "mse"])]
    loss: String,
    /// Classes of softmax-ce (default: the model's output width, which it must equal).
    #[arg(long)]
    classes: Option<usize>,
    /// The optimizer: SGD (with --momentum and --weight-decay) or Adam (beta1 0.9, beta2
    /// 0.999, eps 10^-3).
    #[arg(long, default_value = "sgd", value_parser = ["sgd", "adam"])]
    optimizer: String,
    /// Learning rate.
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// SGD momentum, in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    momentum: f64,
    /// SGD L2 weight decay, in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Passes over the data.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    epochs: u64,
    /// Samples per batch (the last batch of an epoch may be smaller).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    batch_size: u64,
    /// Shuffle the samples anew each epoch from this seed (public: the order is known to
    /// both parties, the values are not); default: in order.
    #[arg(long)]
    shuffle_seed: Option<u64>,
    /// Reveal to both parties, after each epoch, the mean squared error of the
    /// predictions (the loss for mse, the Brier score otherwise). It leaks information
    /// about the data: revealed only if both parties pass it.
    #[arg(long)]
    reveal_metrics: bool,
    /// Receive the trained model and write it here (ONNX). Exactly one of the two parties
    /// passes it; the other learns nothing of the weights.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Take the Beaver triples from a `cipherml dealer` at this address (both parties pass
    /// it); default: the parties make them with oblivious transfer (no third party).
    #[arg(long)]
    dealer: Option<String>,
    /// How products are truncated back to 16 fractional bits: "exact" (floor, every
    /// time) or "ulp" (the floor or one unit of 2^-16 less, never a wrap-around: about
    /// half the comparisons of training). Both parties must pass the same.
    #[arg(long, default_value = "exact", value_parser = ["exact", "ulp"])]
    truncation: String,
    /// Seconds to wait for the peer (each receive, and the connection).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
    /// The bearer token in this file (its first line): the listener requires it from the
    /// connector, which presents it. Without it, the token in the environment variable
    /// CIPHERML_TOKEN, or none. Never on the command line (other users see it).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Listener: accept over TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Listener: the PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Connector: connect over TLS, trusting the CA certificate(s) in this PEM file.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Connector: the name the listener's certificate must carry (default: the host of
    /// --connect).
    #[arg(long, requires = "tls_ca")]
    tls_server_name: Option<String>,
}

/// Largest absolute feature or target value accepted (the 64-bit ring with 16 fractional
/// bits has room for products of such values).
const MAX_ABS_VALUE: f64 = 1e4;
/// Largest hello message accepted from the peer.
const MAX_HELLO: usize = 16 << 10;
/// Longest token sent in a hello.
const MAX_TOKEN: usize = 4096;
/// The version of the hello: the MPC layer's wire protocol (peers whose protocols differ
/// would compute on mismatched shares).
const HELLO_VERSION: u32 = cipherml_mpc::PROTOCOL_VERSION;

/// What both parties must agree on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    split: String,
    /// SHA-256 of the model's layers and initial weights.
    model_sha256: String,
    loss: String,
    /// Width of the model's output.
    outputs: Vec<usize>,
    optimizer: String,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    epochs: u64,
    batch_size: u64,
    shuffle_seed: Option<u64>,
    dealer: bool,
    truncation: String,
}

/// One party's hello (`Debug` does not show the token).
#[derive(Clone, Serialize, Deserialize)]
struct Hello {
    version: u32,
    /// The connector's token (the listener sends none).
    token: Option<String>,
    /// Shape of this party's features (samples first), if it has any.
    x_shape: Option<Vec<usize>>,
    /// Rows of this party's labels, if it has any.
    label_rows: Option<usize>,
    wants_output: bool,
    job: Job,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("version", &self.version)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("x_shape", &self.x_shape)
            .field("label_rows", &self.label_rows)
            .field("wants_output", &self.wants_output)
            .field("job", &self.job)
            .finish()
    }
}

/// A message of the handshake.
#[derive(Debug, Serialize, Deserialize)]
enum Message {
    Hello(Box<Hello>),
    Refused(String),
}

/// This party's data, checked, and what it says about them.
struct Local {
    x: Option<ArrayD<f64>>,
    y: Option<ArrayD<f64>>,
    model: Sequential,
    loss: Loss,
    hello: Hello,
}

/// The global layout both parties derive from the two hellos.
struct Layout {
    /// Client's and server's feature shapes (samples first; `None`: no features).
    x: [Option<Vec<usize>>; 2],
    /// Who holds labels (client, server), with their rows.
    labels: [Option<usize>; 2],
    /// Who receives the model.
    output: Role,
}

/// Runs `cipherml train`.
pub fn train(args: TrainArgs) -> Res {
    let token = crate::bearer_token(args.token_file.as_deref())?;
    if token.as_ref().is_some_and(|t| t.len() > MAX_TOKEN) {
        return Err(format!("the token is longer than {MAX_TOKEN} bytes").into());
    }
    if args.connect.is_some() && (args.tls_cert.is_some() || args.tls_key.is_some()) {
        return Err(
            "--tls-cert and --tls-key are for the listener (--listen); the connector \
                    passes --tls-ca"
                .into(),
        );
    }
    if args.listen.is_some() && (args.tls_ca.is_some() || args.tls_server_name.is_some()) {
        return Err(
            "--tls-ca and --tls-server-name are for the connector (--connect); the \
                    listener passes --tls-cert and --tls-key"
                .into(),
        );
    }
    let local = prepare(&args, token.clone())?;
    let config = ChannelConfig {
        timeout: Duration::from_secs(args.timeout),
        ..ChannelConfig::default()
    };
    if let Some(addr) = &args.listen {
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let scheme = if args.tls_cert.is_some() {
            " (TLS)"
        } else {
            ""
        };
        println!("listening on {}{scheme}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => Some(cipherml::tls::ServerTls::from_pem_files(c, k)?),
            _ => None,
        };
        let (stream, peer) = listener.accept()?;
        eprintln!("peer connected from {peer}");
        match tls {
            Some(tls) => run(
                tls.accept(stream, config)?,
                Role::Server,
                &args,
                local,
                token,
            ),
            None => run(
                TcpChannel::from_stream(stream, config)?,
                Role::Server,
                &args,
                local,
                token,
            ),
        }
    } else {
        let addr = args
            .connect
            .as_deref()
            .expect("clap: --listen or --connect");
        match crate::client_tls(args.tls_ca.as_deref(), args.tls_server_name.clone())? {
            Some(tls) => run(
                tls.connect(addr, config)?,
                Role::Client,
                &args,
                local,
                token,
            ),
            None => run(
                TcpChannel::connect_retry(addr, config)?,
                Role::Client,
                &args,
                local,
                token,
            ),
        }
    }
}

/// Reads and checks this party's model and data, before any connection.
fn prepare(args: &TrainArgs, token: Option<String>) -> Res<Local> {
    let model = read_model(&args.model)?;
    let outputs = model.shapes()?.last().cloned().unwrap_or_default();
    let (loss, loss_name) = match args.loss.as_str() {
        "bce" => (Loss::BinaryCrossEntropy, "bce"),
        "softmax-ce" => (Loss::SoftmaxCrossEntropy, "softmax-ce"),
        _ => (Loss::MeanSquaredError, "mse"),
    };
    if let (Some(c), false) = (args.classes, loss == Loss::SoftmaxCrossEntropy) {
        return Err(format!("--classes {c} is for --loss softmax-ce only").into());
    }
    if let Some(out) = &args.output {
        if out.extension().and_then(|e| e.to_str()) != Some("onnx") {
            return Err(format!("--output {}: expected a .onnx path", out.display()).into());
        }
        let dir = match out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(
                format!("--output {}: no directory {}", out.display(), dir.display()).into(),
            );
        }
    }
    let input = model.input_shape().to_vec();
    let x = match &args.x {
        Some(path) => {
            let x = read_values(path, "--x")?;
            let per: usize = x.shape()[1..].iter().product();
            let want: usize = input.iter().product();
            let ok = match args.split.as_str() {
                // Whole samples: the model's input shape, or as many values flat.
                "rows" => x.ndim() >= 2 && per == want,
                _ => x.ndim() == 2 && per <= want,
            };
            if !ok || x.shape()[0] == 0 {
                return Err(format!(
                    "--x {}: shape {:?} does not fit the model input {:?} with --split {} \
                     (rows: (samples, {}) or (samples, {want}); columns: (samples, k) with \
                     k <= {want}; samples > 0)",
                    path.display(),
                    x.shape(),
                    input,
                    args.split,
                    input
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
                .into());
            }
            Some(x)
        }
        None => None,
    };
    let y = match &args.y {
        Some(path) => Some(targets(
            path,
            &read_values(path, "--y")?,
            loss,
            &outputs,
            args.classes,
        )?),
        None => None,
    };
    if let (Some(x), Some(y), Some(yp)) = (&x, &y, &args.y) {
        if x.shape()[0] != y.shape()[0] {
            return Err(format!(
                "--y {}: {} labels for {} samples in --x",
                yp.display(),
                y.shape()[0],
                x.shape()[0]
            )
            .into());
        }
    }
    if args.split == "rows" && (x.is_none() || y.is_none()) {
        return Err(
            "--split rows: each party passes --x and --y (its samples and their labels)".into(),
        );
    }
    if x.is_none() && y.is_none() {
        return Err("this party has neither features (--x) nor labels (--y)".into());
    }
    // Checked by the library too; refused here before connecting.
    model.compile(loss, optimizer_of(args))?;
    let job = Job {
        split: args.split.clone(),
        model_sha256: model_digest(&model),
        loss: loss_name.into(),
        outputs,
        optimizer: args.optimizer.clone(),
        lr: args.lr,
        momentum: args.momentum,
        weight_decay: args.weight_decay,
        epochs: args.epochs,
        batch_size: args.batch_size,
        shuffle_seed: args.shuffle_seed,
        dealer: args.dealer.is_some(),
        truncation: args.truncation.clone(),
    };
    let hello = Hello {
        version: HELLO_VERSION,
        token: if args.connect.is_some() { token } else { None },
        x_shape: x.as_ref().map(|x| x.shape().to_vec()),
        label_rows: y.as_ref().map(|y| y.shape()[0]),
        wants_output: args.output.is_some(),
        job,
    };
    Ok(Local {
        x,
        y,
        model,
        loss,
        hello,
    })
}

/// The model of a .onnx or .json file.
fn read_model(path: &Path) -> Res<Sequential> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("onnx") => Ok(load_onnx(path)?),
        Some("json") => {
            use std::io::Read;
            let mut text = String::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(1 << 20).read_to_string(&mut text))
                .map_err(|e| format!("--model {}: {e}", path.display()))?;
            model_from_json(&text).map_err(|e| format!("--model {}: {e}", path.display()).into())
        }
        _ => Err(format!(
            "--model {}: expected a .onnx file or a .json description",
            path.display()
        )
        .into()),
    }
}

/// A .npy file as f64, every value finite and at most `MAX_ABS_VALUE` in magnitude.
fn read_values(path: &Path, flag: &str) -> Res<ArrayD<f64>> {
    let a = cipherml::data::read_npy(path)
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?
        .to_f64();
    if a.ndim() == 0 {
        return Err(format!(
            "{flag} {}: a scalar, expected samples first",
            path.display()
        )
        .into());
    }
    for (idx, &v) in a.indexed_iter() {
        if !v.is_finite() || v.abs() > MAX_ABS_VALUE {
            return Err(format!(
                "{flag} {}: value {v} at index {:?} is {}",
                path.display(),
                idx.slice(),
                if v.is_finite() {
                    "out of range (|value| <= 1e4)"
                } else {
                    "not finite"
                }
            )
            .into());
        }
    }
    Ok(a)
}

/// The training targets of the labels in `path`: `(n, 1)` of 0/1 for bce, one-hot for
/// softmax-ce, the output's shape for mse.
fn targets(
    path: &Path,
    y: &ArrayD<f64>,
    loss: Loss,
    outputs: &[usize],
    classes: Option<usize>,
) -> Res<ArrayD<f64>> {
    let n = y.shape()[0];
    let bad = |what: String| format!("--y {}: {what}", path.display());
    let labels = || -> Res<Vec<f64>> {
        if y.len() != n {
            return Err(bad(format!(
                "shape {:?}: expected one class label per sample, (samples,) or (samples, 1)",
                y.shape()
            ))
            .into());
        }
        Ok(y.iter().copied().collect())
    };
    Ok(match loss {
        Loss::BinaryCrossEntropy => {
            let l = labels()?;
            one_hot(&l, 2).map_err(|e| bad(e.to_string()))?;
            ArrayD::from_shape_vec(IxDyn(&[n, 1]), l)?
        }
        Loss::SoftmaxCrossEntropy => {
            let width = match outputs {
                [k] => *k,
                _ => {
                    return Err(format!(
                        "softmax-ce needs a model with a vector output, not {outputs:?}"
                    )
                    .into())
                }
            };
            let classes = classes.unwrap_or(width);
            if classes != width {
                return Err(format!(
                    "--classes {classes}: the model has {width} outputs, one per class"
                )
                .into());
            }
            one_hot(&labels()?, classes)
                .map_err(|e| bad(e.to_string()))?
                .into_dyn()
        }
        _ => {
            let per: usize = outputs.iter().product();
            if y.len() != n * per {
                return Err(bad(format!(
                    "shape {:?}: expected (samples, {outputs:?}) targets",
                    y.shape()
                ))
                .into());
            }
            let mut shape = vec![n];
            shape.extend_from_slice(outputs);
            y.to_shape(IxDyn(&shape))?.to_owned()
        }
    })
}

/// SHA-256 of the model's layers and initial weights (exact bits), hex.
fn model_digest(model: &Sequential) -> String {
    use sha2::Digest;
    fn layers(h: &mut sha2::Sha256, ls: &[Layer]) {
        for l in ls {
            h.update(l.describe().as_bytes());
            let mut values = |it: &mut dyn Iterator<Item = &f64>| {
                for v in it {
                    h.update(v.to_bits().to_le_bytes());
                }
            };
            match l {
                Layer::Dense { weight, bias } => {
                    values(&mut weight.iter());
                    values(&mut bias.iter());
                }
                Layer::Conv2d {
                    weight,
                    bias,
                    stride,
                    padding,
                } => {
                    values(&mut weight.iter());
                    values(&mut bias.iter());
                    h.update(format!("{stride}/{padding}"));
                }
                Layer::Residual { body } => layers(h, body),
                other => h.update(format!("{other:?}")),
            }
        }
    }
    let mut h = sha2::Sha256::new();
    h.update(format!("{:?}", model.input_shape()));
    layers(&mut h, model.layers());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn send_message<C: Channel>(ch: &mut C, m: &Message) -> Res {
    ch.send(&serde_json::to_vec(m)?)?;
    ch.flush()?;
    Ok(())
}

fn recv_message<C: Channel>(ch: &mut C) -> Res<Message> {
    let bytes = ch
        .recv_limited(MAX_HELLO)
        .map_err(|e| format!("handshake with the peer failed: {e}"))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("the peer's handshake message does not decode: {e}").into())
}

/// The connector's token against the listener's, in constant time (no token required:
/// anyone is accepted).
fn token_ok(expected: Option<&str>, presented: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    match (expected, presented) {
        (None, _) => true,
        (Some(t), Some(p)) => t.len() == p.len() && bool::from(t.as_bytes().ct_eq(p.as_bytes())),
        (Some(_), None) => false,
    }
}

/// Exchanges the hellos: the connector speaks first; the listener checks its token before
/// it answers.
fn handshake<C: Channel>(ch: &mut C, role: Role, mine: &Hello, token: Option<&str>) -> Res<Hello> {
    let peer = match role {
        Role::Client => {
            send_message(ch, &Message::Hello(Box::new(mine.clone())))?;
            match recv_message(ch)? {
                Message::Hello(h) => *h,
                Message::Refused(why) => return Err(format!("the peer refused: {why}").into()),
            }
        }
        Role::Server => {
            let Message::Hello(h) = recv_message(ch)? else {
                return Err("the peer sent a refusal instead of its hello".into());
            };
            if !token_ok(token, h.token.as_deref()) {
                let _ = send_message(ch, &Message::Refused("bad or missing token".into()));
                return Err("the peer presented a bad or no token: refused".into());
            }
            if h.version != HELLO_VERSION {
                let why = format!("hello version {} (expected {HELLO_VERSION})", h.version);
                let _ = send_message(ch, &Message::Refused(why.clone()));
                return Err(format!("the peer speaks {why}").into());
            }
            send_message(ch, &Message::Hello(Box::new(mine.clone())))?;
            *h
        }
    };
    if peer.version != HELLO_VERSION {
        return Err(format!("the peer speaks hello version {}", peer.version).into());
    }
    Ok(peer)
}

/// The global layout from both hellos, or the first mismatch (the same on both sides:
/// both derive it from the same two hellos).
fn layout(role: Role, mine: &Hello, peer: &Hello, inputs: usize) -> Res<Layout> {
    // The job, field by field.
    let a = serde_json::to_value(&mine.job)?;
    let b = serde_json::to_value(&peer.job)?;
    if a != b {
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            unreachable!("a struct serializes to an object")
        };
        let diffs: Vec<String> = a
            .iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{k}: {v} here, {} at the peer",
                    b.get(k).unwrap_or(&serde_json::Value::Null)
                )
            })
            .collect();
        return Err(format!(
            "the parties' training jobs differ (both must pass the same --model, --loss, \
             --split, optimizer and fit options): {}",
            diffs.join("; ")
        )
        .into());
    }
    let (client, server) = match role {
        Role::Client => (mine, peer),
        Role::Server => (peer, mine),
    };
    let output = match (client.wants_output, server.wants_output) {
        (true, false) => Role::Client,
        (false, true) => Role::Server,
        (true, true) => {
            return Err("both parties passed --output: exactly one receives the model".into())
        }
        (false, false) => {
            return Err("neither party passed --output: exactly one receives the model".into())
        }
    };
    let x = [client.x_shape.clone(), server.x_shape.clone()];
    let labels = [client.label_rows, server.label_rows];
    for (who, h) in [("client", client), ("server", server)] {
        if let (Some(xs), Some(l)) = (&h.x_shape, h.label_rows) {
            if xs.first() != Some(&l) {
                return Err(format!("the {who}'s labels and samples differ in number").into());
            }
        }
        if h.x_shape.as_ref().is_some_and(|s| s.len() < 2 || s[0] == 0) {
            return Err(format!("the {who}'s features are not (samples > 0, features..)").into());
        }
    }
    if mine.job.split == "rows" {
        let (Some(cx), Some(sx)) = (&x[0], &x[1]) else {
            return Err("--split rows: both parties pass --x and --y".into());
        };
        if labels.iter().any(Option::is_none) {
            return Err("--split rows: both parties pass --x and --y".into());
        }
        if cx[1..] != sx[1..] {
            return Err(format!(
                "--split rows: the parties' samples differ in shape: {:?} (client) vs {:?} \
                 (server)",
                &cx[1..],
                &sx[1..]
            )
            .into());
        }
    } else {
        let rows: Vec<usize> = x.iter().flatten().map(|s| s[0]).collect();
        if rows.is_empty() {
            return Err("--split columns: neither party passed --x".into());
        }
        if rows.iter().any(|&r| r != rows[0]) {
            return Err(format!(
                "--split columns: the parties hold different numbers of samples ({} at the \
                 client, {} at the server): both must hold the same samples in the same order",
                rows[0], rows[1]
            )
            .into());
        }
        match labels {
            [Some(_), Some(_)] => {
                return Err(
                    "--split columns: both parties passed --y: exactly one holds the labels".into(),
                )
            }
            [None, None] => {
                return Err(
                    "--split columns: neither party passed --y: exactly one holds the labels"
                        .into(),
                )
            }
            [Some(l), None] | [None, Some(l)] if l != rows[0] => {
                return Err(format!("--split columns: {l} labels for {} samples", rows[0]).into())
            }
            _ => {}
        }
    }
    // Values per joined sample (rows: each party's; columns: the sum) against the model.
    let per = |s: &Vec<usize>| s[1..].iter().product::<usize>();
    let joined = if mine.job.split == "rows" {
        x.iter().flatten().map(per).max().unwrap_or(0)
    } else {
        x.iter().flatten().map(per).sum()
    };
    if joined != inputs {
        return Err(
            format!("the joined samples have {joined} features; the model takes {inputs}").into(),
        );
    }
    Ok(Layout { x, labels, output })
}

/// One party's job on an open channel: handshake, session, training, output.
fn run<C: Channel>(
    mut ch: C,
    role: Role,
    args: &TrainArgs,
    local: Local,
    token: Option<String>,
) -> Res {
    let peer = handshake(&mut ch, role, &local.hello, token.as_deref())?;
    let inputs = local.model.input_shape().iter().product();
    let layout = layout(role, &local.hello, &peer, inputs)?;
    let Local {
        mut x,
        mut y,
        model,
        loss,
        ..
    } = local;
    let me = |r: Role| r == role;
    let mut config = SessionConfig::training();
    if args.truncation == "ulp" {
        config.truncation = Truncation::WithinUlp;
    }
    if let Some(d) = &args.dealer {
        let addr = d
            .to_socket_addrs()
            .map_err(|e| format!("--dealer {d}: {e}"))?
            .next()
            .ok_or_else(|| format!("--dealer {d}: no address"))?;
        config.triples = Triples::Dealer { addr };
    }
    let mut s = Session::with_config(role, ch, config)?;
    let roles = [Role::Client, Role::Server];
    // Features: each party's, joined (rows: axis 0, columns: axis 1, client first).
    let mut parts = Vec::new();
    for (i, shape) in layout.x.iter().enumerate() {
        if let Some(shape) = shape {
            let owner = roles[i];
            let value = if me(owner) { x.take() } else { None };
            parts.push(s.input(owner, shape, || value.expect("own features"))?);
        }
    }
    let axis = if args.split == "rows" { 0 } else { 1 };
    let refs: Vec<&PrivateTensor> = parts.iter().collect();
    let xt = if refs.len() == 1 {
        parts[0].clone()
    } else {
        s.concat(&refs, axis)?
    };
    let mut want = vec![xt.shape()[0]];
    want.extend_from_slice(model.input_shape());
    let xt = if xt.shape() == want {
        xt
    } else if xt.shape().iter().product::<usize>() == want.iter().product::<usize>() {
        s.reshape(&xt, &want)?
    } else {
        return Err(format!(
            "the joined features have shape {:?}; the model takes (samples, {:?})",
            xt.shape(),
            model.input_shape()
        )
        .into());
    };
    // Targets: each label holder's.
    let out = model.shapes()?.last().cloned().unwrap_or_default();
    let mut yparts = Vec::new();
    for (i, rows) in layout.labels.iter().enumerate() {
        if let Some(rows) = rows {
            let owner = roles[i];
            let mut shape = vec![*rows];
            shape.extend_from_slice(&out);
            let value = if me(owner) { y.take() } else { None };
            yparts.push(s.input(owner, &shape, || value.expect("own labels"))?);
        }
    }
    let yrefs: Vec<&PrivateTensor> = yparts.iter().collect();
    let yt = if yrefs.len() == 1 {
        yparts[0].clone()
    } else {
        s.concat(&yrefs, 0)?
    };
    let mut trainer: Trainer = model.compile(loss, optimizer_of(args))?;
    let epochs = args.epochs as usize;
    let n = xt.shape()[0];
    let batches = n.div_ceil(args.batch_size as usize);
    eprintln!(
        "training on {n} samples ({} features), {epochs} epoch(s) of {batches} batch(es)",
        xt.shape()[1..].iter().product::<usize>()
    );
    let metric_name = if loss == Loss::MeanSquaredError {
        "mean squared error"
    } else {
        "Brier score"
    };
    for epoch in 0..epochs {
        let bar = indicatif::ProgressBar::new(batches as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:40}] {pos}/{len} batches, {elapsed} (eta {eta})",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
        // One epoch per call: the same batches as one call over all epochs (the library
        // shuffles epoch e with seed + e), with each epoch's metric at its end.
        let opts = FitOptions {
            epochs: 1,
            batch_size: args.batch_size as usize,
            shuffle_seed: args.shuffle_seed.map(|s| s.wrapping_add(epoch as u64)),
            reveal_metrics: args.reveal_metrics,
        };
        let result = trainer.fit_with(&mut s, &xt, &yt, &opts, &mut |p| {
            bar.set_position(p.batch as u64);
        });
        bar.finish_and_clear();
        let history = result.map_err(|e| match e {
            cipherml::Error::Training { batch, source, .. } => {
                let at = if batch < batches {
                    format!("batch {}/{batches}", batch + 1)
                } else {
                    format!("batch {batches}/{batches} (revealing the epoch's metric)")
                };
                format!(
                    "training stopped in epoch {}/{epochs}, {at}: {source}",
                    epoch + 1
                )
            }
            // (The check of the job that precedes the first batch.)
            other => format!(
                "training stopped in epoch {}/{epochs}, before batch 1/{batches}: {other}",
                epoch + 1
            ),
        })?;
        let metric = history.epochs.first().and_then(|r| r.metric);
        let mut stdout = std::io::stdout();
        match metric {
            Some(m) => writeln!(
                stdout,
                "epoch {}/{epochs} done ({metric_name} {m:.6})",
                epoch + 1
            )?,
            None => writeln!(stdout, "epoch {}/{epochs} done", epoch + 1)?,
        }
        stdout.flush()?;
    }
    let model = trainer
        .reveal(&mut s, layout.output)
        .map_err(|e| format!("revealing the trained model failed: {e}"))?;
    let (sent, received) = s.bytes();
    match (model, &args.output) {
        (Some(m), Some(path)) => {
            m.save_onnx(path)?;
            println!("trained model written to {}", path.display());
        }
        (None, None) => println!("the trained model was revealed to the peer"),
        _ => return Err("the trained model went to the wrong party".into()),
    }
    eprintln!(
        "{:.2} MB sent, {:.2} MB received",
        sent as f64 / 1e6,
        received as f64 / 1e6
    );
    Ok(())
}

/// The optimizer the arguments name.
fn optimizer_of(args: &TrainArgs) -> Optimizer {
    if args.optimizer == "adam" {
        Optimizer::adam(args.lr)
    } else {
        Optimizer::Sgd {
            lr: args.lr,
            momentum: args.momentum,
            weight_decay: args.weight_decay,
        }
    }
}
