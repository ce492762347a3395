//! The `cipherml` command line: host models (`serve`), call them privately (`infer`), run
//! the private-inference demo, inspect a model and its plan, print benchmarks.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cipherml::data::{parse_npy, read_npy};
use cipherml::nn::{load_onnx, load_onnx_bytes, NetworkModel};
use cipherml::server::{ModeChoice, ModelSpec};
use clap::{Parser, Subcommand};
use ndarray::Axis;

mod aggregate;
mod train;

#[derive(Parser)]
#[command(
    name = "cipherml",
    version,
    about = "Machine learning on encrypted data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints a model's layers, whether each runs privately, and the plan (explain).
    Inspect {
        /// An ONNX model.
        model: PathBuf,
        /// Plan for a WAN (100 Mbit/s, 40 ms) instead of a LAN.
        #[arg(long)]
        wan: bool,
    },
    /// Private inference of the bundled digits CNN on the bundled test set: client and
    /// server in this process over TCP loopback. (The model and data are built into the
    /// binary; the server's logs are off unless RUST_LOG asks for them.)
    Demo {
        /// How many test images (at most 360).
        #[arg(long, default_value_t = 100)]
        images: usize,
    },
    /// Hosts models and answers private inference requests, until Ctrl-C (or SIGTERM),
    /// which stops accepting and lets the sessions in flight finish.
    Serve {
        /// A model: PATH.onnx (named after the file) or NAME=PATH.onnx; repeatable.
        #[arg(long = "model", required_unless_present = "model_dir")]
        models: Vec<String>,
        /// Serves every NAME.onnx of this folder, each with an optional NAME.json beside
        /// it: {"mode": "auto" | "hybrid" | "ckks" | "ckks-public-weights", "max_batch": 1..4096} (both optional).
        #[arg(long)]
        model_dir: Option<PathBuf>,
        /// Also answers plain HTTP on this address (keep it internal): GET /health/live,
        /// /health/ready, /v1/models and /metrics (Prometheus).
        #[arg(long)]
        admin_listen: Option<String>,
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: String,
        /// Concurrent sessions at most.
        #[arg(long, default_value_t = 16)]
        max_sessions: usize,
        /// How each model's mode is chosen (a model's NAME.json overrides it): auto picks
        /// CKKS only where its replies are noise-flooded with the precision kept (never
        /// trading the weights' privacy for speed), hybrid always runs the interactive
        /// mode, ckks forces CKKS with flooded replies (refused for a model with a
        /// non-polynomial layer or whose replies cannot be flooded), ckks-public-weights
        /// runs CKKS unflooded: only for models whose weights are not secret.
        #[arg(long, default_value = "auto", value_parser = ["auto", "hybrid", "ckks", "ckks-public-weights"])]
        mode: String,
        /// Plan the sessions for a WAN (100 Mbit/s, 40 ms) instead of a LAN (1 Gbit/s,
        /// 0.2 ms): the cost model's choice of representation per layer, as `inspect --wan`
        /// prints it; announced to clients, which make the same choices.
        #[arg(long)]
        wan: bool,
        /// Threads for the sessions' HE work, one pool shared by all sessions (default:
        /// rayon's global pool, one thread per core or RAYON_NUM_THREADS).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Require the bearer token in this file (its first line) from clients; without
        /// it, the token in the environment variable CIPHERML_TOKEN, or none. Never on the
        /// command line (other users see it). Use it with TLS on a network.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Serve over TLS with this PEM certificate chain (needs --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Runs private inference against a server on a batch of inputs (.npy, first axis).
    Infer {
        /// Server address.
        #[arg(long)]
        server: String,
        /// Model name on the server (default: the only one it hosts).
        #[arg(long)]
        model: Option<String>,
        /// Inputs (.npy).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the logits (.npy).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Present the bearer token in this file (its first line); without it, the one in
        /// the environment variable CIPHERML_TOKEN, if set.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Connect over TLS, trusting the CA certificate(s) in this PEM file.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// The name the server's certificate must carry (default: the host of --server).
        #[arg(long, requires = "tls_ca")]
        tls_server_name: Option<String>,
        /// Keep the client's keys in this directory (created 0700; secret keys 0600): they
        /// are generated on the first run and loaded on later ones, and a server that still
        /// caches the evaluation keys needs no upload. Without it, fresh keys per run.
        #[arg(long)]
        key_dir: Option<PathBuf>,
    },
    /// Prints benchmark figures as JSON lines (BENCHMARKS.md).
    Bench {
        /// he, mpc, nn or all.
        #[arg(default_value = "all")]
        suite: String,
        /// Time budget per figure, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        budget_ms: u64,
    },
    /// One party of a two-party private training job: the listener (--listen) and the
    /// connector (--connect) each secret-share their data (split by rows or by columns),
    /// train the same model on the shares, and the party that passes --output receives
    /// the trained model. Prints "listening on ADDR" (listener) and one line per epoch.
    Train(Box<train::TrainArgs>),
    /// Secure aggregation for federated learning (SecAgg+): `serve` runs rounds with many
    /// clients (dropouts survived) and learns only the sum of their updates; `submit` sends
    /// one client's update.
    #[command(subcommand)]
    Aggregate(aggregate::AggregateCommand),
    /// Serves Beaver triples to pairs of parties as a third process (TF Encrypted's
    /// "crypto producer"). Each party connects with its id and the session token both
    /// parties share; prints "listening on ADDR", then one line per session or refused
    /// connection (never tokens or triples). The dealer must collude with neither party,
    /// and its answers carry triples in the clear: run it on a network the parties trust
    /// (loopback, a private link or a tunnel).
    Dealer {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:7879")]
        listen: String,
        /// Serve this many sessions, then exit (status 1 if any failed); default: until
        /// stopped.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        sessions: Option<u64>,
        /// Seconds a party may wait for its peer to connect.
        #[arg(long, default_value_t = 60)]
        pair_timeout: u64,
        /// Seconds the dealer waits for a party's next request before ending its session.
        #[arg(long, default_value_t = 300)]
        idle_timeout: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    // The demo prints its own progress: the in-process server's logs are off there.
    init_logs(match cli.command {
        Command::Demo { .. } => "off",
        _ => "info",
    });
    let result = match cli.command {
        Command::Inspect { model, wan } => inspect(&model, wan),
        Command::Demo { images } => demo(images),
        Command::Bench { suite, budget_ms } => bench(&suite, Duration::from_millis(budget_ms)),
        Command::Dealer {
            listen,
            sessions,
            pair_timeout,
            idle_timeout,
        } => dealer(
            &listen,
            sessions,
            Duration::from_secs(pair_timeout),
            Duration::from_secs(idle_timeout),
        ),
        Command::Train(args) => train::train(*args),
        Command::Aggregate(command) => aggregate::aggregate(command),
        Command::Serve {
            models,
            model_dir,
            admin_listen,
            listen,
            max_sessions,
            mode,
            wan,
            threads,
            token_file,
            tls_cert,
            tls_key,
        } => (|| {
            let token = bearer_token(token_file.as_deref())?;
            let mut specs = model_specs(&models)?;
            if let Some(dir) = model_dir {
                specs.extend(model_dir_specs(&dir)?);
            }
            let mode = match mode.as_str() {
                "hybrid" => ModeChoice::Hybrid,
                "ckks" => ModeChoice::Ckks,
                "ckks-public-weights" => ModeChoice::CkksPublicWeights,
                _ => ModeChoice::Auto,
            };
            serve(
                specs,
                &listen,
                admin_listen.as_deref(),
                (max_sessions, mode, wan, threads),
                token,
                tls_cert.zip(tls_key),
            )
        })(),
        Command::Infer {
            server,
            model,
            input,
            output,
            token_file,
            tls_ca,
            tls_server_name,
            key_dir,
        } => (|| {
            let options = cipherml::client::ClientOptions {
                token: bearer_token(token_file.as_deref())?,
                tls: client_tls(tls_ca.as_deref(), tls_server_name)?,
                key_dir,
                ..Default::default()
            };
            infer(
                &server,
                model.as_deref(),
                &input,
                output.as_deref(),
                &options,
            )
        })(),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

type Res = Result<(), Box<dyn std::error::Error>>;

/// Largest token file read.
const MAX_TOKEN_FILE: u64 = 64 << 10;

/// The bearer token: the first line of `file` if given, else `CIPHERML_TOKEN` if set and
/// not empty (never a command-line argument: other users of the machine see those).
fn bearer_token(
    file: Option<&std::path::Path>,
) -> Result<Option<String>, Box<dyn std::error::Error>> {
    use std::io::Read;
    let Some(path) = file else {
        return Ok(std::env::var("CIPHERML_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()));
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_FILE).read_to_string(&mut text))
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()).into());
    }
    Ok(Some(token))
}

/// TLS for a connector: trusting the CA certificate(s) in `ca`, checking `server_name` (if
/// given) instead of the host it connects to. `None` without `ca` (plain TCP).
fn client_tls(
    ca: Option<&std::path::Path>,
    server_name: Option<String>,
) -> Result<Option<cipherml::tls::ClientTls>, Box<dyn std::error::Error>> {
    let Some(ca) = ca else {
        return Ok(None);
    };
    let tls = cipherml::tls::ClientTls::from_ca_file(ca)?;
    Ok(Some(match server_name {
        Some(n) => tls.with_server_name(n),
        None => tls,
    }))
}

/// The demo's model and test set, built into the binary so that it runs anywhere (an
/// installed binary has no source tree beside it).
const DIGITS_CNN: &[u8] = include_bytes!("../../../models/digits_cnn.onnx");
const DIGITS_TEST_X: &[u8] = include_bytes!("../../../data/digits_test_x.npy");
const DIGITS_TEST_Y: &[u8] = include_bytes!("../../../data/digits_test_y.npy");

/// Structured logs on stderr, never inputs, keys or results. `RUST_LOG` sets the filter
/// (e.g. `warn`, `cipherml=debug`); without it, `default`.
fn init_logs(default: &str) {
    use tracing_subscriber::EnvFilter;
    let mut rejected = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v).unwrap_or_else(|e| {
            rejected = Some((v, e));
            EnvFilter::new(default)
        }),
        _ => EnvFilter::new(default),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_env_filter(filter)
        .init();
    if let Some((v, e)) = rejected {
        eprintln!("warning: RUST_LOG={v:?} ignored ({e}); using {default:?}");
    }
}

fn inspect(path: &std::path::Path, wan: bool) -> Res {
    let model = load_onnx(path)?;
    print!("{}", model.summary()?);
    let net = if wan {
        NetworkModel::wan()
    } else {
        NetworkModel::lan()
    };
    println!("{}", model.plan(net)?.explain());
    Ok(())
}

fn demo(images: usize) -> Res {
    let model = load_onnx_bytes("digits_cnn.onnx (built in)", DIGITS_CNN)?;
    let xs = parse_npy(DIGITS_TEST_X)?.to_f64();
    let ys = parse_npy(DIGITS_TEST_Y)?.into_i64()?;
    let count = images.clamp(1, xs.len_of(Axis(0)));
    // A real server on a loopback port, in this process.
    let server = cipherml::server::Server::bind(
        "127.0.0.1:0",
        vec![("digits_cnn".into(), model.clone())],
        Default::default(),
    )?;
    let addr = server.local_addr().to_string();
    std::thread::spawn(move || server.run());
    println!("server listening on {addr} with digits_cnn (ONNX); client: {count} test images\n");
    println!(
        "how each layer is computed:\n{}\n",
        model.plan(NetworkModel::lan())?.explain()
    );
    let t0 = Instant::now();
    let mut client = cipherml::client::Client::connect(&addr)?;
    let setup = t0.elapsed();
    let setup_bytes = client.bytes();
    let argmax = |v: &ndarray::ArrayD<f64>| {
        v.iter()
            .enumerate()
            .fold(
                (0, f64::NEG_INFINITY),
                |b, (i, &x)| if x > b.1 { (i, x) } else { b },
            )
            .0
    };
    let (mut ok_private, mut ok_plain, mut agree) = (0, 0, 0);
    // Progress on stderr (drawn only on a terminal).
    let bar = indicatif::ProgressBar::new(count as u64);
    let t = Instant::now();
    for i in 0..count {
        let x = xs.index_axis(Axis(0), i).to_owned();
        let got = client.infer("digits_cnn", &x)?;
        let want = model.predict(&x)?;
        ok_private += (argmax(&got) as i64 == ys[i]) as usize;
        ok_plain += (argmax(&want) as i64 == ys[i]) as usize;
        agree += (argmax(&got) == argmax(&want)) as usize;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let elapsed = t.elapsed();
    let bytes = (client.bytes() - setup_bytes) as f64 / count as f64;
    client.close()?;
    println!(
        "set-up (hello; base OTs and the client's BFV public key go with the first image, \
         counted in the per-image figures): {:.0} ms, {setup_bytes} bytes",
        setup.as_secs_f64() * 1e3
    );
    println!(
        "private accuracy {:.4} (plaintext model {:.4}); {agree}/{count} predictions equal the plaintext model's",
        ok_private as f64 / count as f64,
        ok_plain as f64 / count as f64
    );
    println!(
        "per image: {:.1} ms, {:.2} MB exchanged",
        elapsed.as_secs_f64() * 1e3 / count as f64,
        bytes / 1e6
    );
    if agree != count {
        return Err("private predictions differ from the plaintext model's".into());
    }
    Ok(())
}

fn bench(suite: &str, budget: Duration) -> Res {
    let mut emit = |l: cipherml::bench::BenchLine| println!("{}", l.to_json());
    let mpc = || -> Res {
        for l in cipherml::mpc::bench::bench_lines(budget)? {
            println!("{}", l.to_json());
        }
        Ok(())
    };
    match suite {
        "he" => cipherml::bench::he(budget, &mut emit),
        "mpc" => mpc()?,
        "nn" => cipherml::bench::nn(budget, &mut emit),
        "all" => {
            cipherml::bench::he(budget, &mut emit);
            mpc()?;
            cipherml::bench::nn(budget, &mut emit);
        }
        other => {
            return Err(format!("unknown suite {other:?}: expected he, mpc, nn or all").into())
        }
    }
    Ok(())
}

/// `cipherml dealer`: serves triple requests of pairs of parties over TCP.
fn dealer(
    listen: &str,
    sessions: Option<u64>,
    pair_timeout: Duration,
    idle_timeout: Duration,
) -> Res {
    use cipherml::mpc::triples::dealer::{Dealer, DealerConfig};
    use std::io::Write;
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let defaults = DealerConfig::default();
    let config = DealerConfig {
        channel: cipherml::mpc::net::ChannelConfig {
            timeout: idle_timeout,
            ..defaults.channel
        },
        pair_timeout,
        max_sessions: sessions,
        ..defaults
    };
    let mut rng = cipherml::mpc::prg::os_rng();
    let summary = Dealer::serve_tcp(&listener, &config, &mut rng, |event| {
        // (stdout may be closed by now: not an error.)
        let _ = writeln!(std::io::stdout(), "{event}");
    })?;
    let _ = writeln!(
        std::io::stdout(),
        "done: {} session(s) served, {} failed, {} connection(s) refused",
        summary.sessions,
        summary.failed,
        summary.refused
    );
    if summary.failed > 0 {
        return Err(format!("{} dealer session(s) failed", summary.failed).into());
    }
    Ok(())
}

/// The `--model` arguments: PATH.onnx (named after the file) or NAME=PATH.onnx.
fn model_specs(models: &[String]) -> Result<Vec<ModelSpec>, Box<dyn std::error::Error>> {
    let mut specs = Vec::new();
    for spec in models {
        let (name, path) = match spec.split_once('=') {
            Some((n, p)) => (n.to_string(), PathBuf::from(p)),
            None => {
                let p = PathBuf::from(spec);
                let n = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .ok_or("model path has no file name")?
                    .to_string();
                (n, p)
            }
        };
        specs.push(ModelSpec::new(name, load_onnx(&path)?));
    }
    Ok(specs)
}

/// A model's `NAME.json` in a `--model-dir`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    /// `auto`, `hybrid` or `ckks` (default: the server's choice).
    mode: Option<String>,
    /// Most inputs in one request (1 to 4096; default 4096).
    max_batch: Option<u32>,
}

/// Every `NAME.onnx` of `dir` (sorted by name), with the mode and limit of its `NAME.json`
/// if any.
fn model_dir_specs(dir: &std::path::Path) -> Result<Vec<ModelSpec>, Box<dyn std::error::Error>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("--model-dir {}: {e}", dir.display()))?;
    let mut onnx = Vec::new();
    let mut json = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let (Some(stem), Some(ext)) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        match ext {
            "onnx" => onnx.push((stem.to_string(), path.clone())),
            "json" => json.push((stem.to_string(), path.clone())),
            _ => {}
        }
    }
    if let Some((_, orphan)) = json.iter().find(|(j, _)| !onnx.iter().any(|(o, _)| o == j)) {
        return Err(format!(
            "{}: no model beside it (expected {})",
            orphan.display(),
            orphan.with_extension("onnx").display()
        )
        .into());
    }
    if onnx.is_empty() {
        return Err(format!("--model-dir {}: no .onnx model in it", dir.display()).into());
    }
    onnx.sort();
    let mut specs = Vec::new();
    for (name, path) in onnx {
        let mut spec = ModelSpec::new(name.clone(), load_onnx(&path)?);
        if let Some((_, jp)) = json.iter().find(|(j, _)| *j == name) {
            let text = std::fs::read_to_string(jp).map_err(|e| format!("{}: {e}", jp.display()))?;
            let file: ModelFile =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", jp.display()))?;
            if let Some(most) = file.max_batch {
                let limit = cipherml::protocol::MAX_BATCH;
                if !(1..=limit).contains(&most) {
                    return Err(format!(
                        "{}: max_batch {most}: must be 1 to {limit}",
                        jp.display()
                    )
                    .into());
                }
                spec = spec.with_max_batch(most);
            }
            if let Some(mode) = file.mode {
                spec = spec.with_mode(match mode.as_str() {
                    "auto" => ModeChoice::Auto,
                    "hybrid" => ModeChoice::Hybrid,
                    "ckks" => ModeChoice::Ckks,
                    "ckks-public-weights" => ModeChoice::CkksPublicWeights,
                    other => {
                        return Err(format!(
                            "{}: mode {other:?}: expected \"auto\", \"hybrid\", \"ckks\" or \
                             \"ckks-public-weights\"",
                            jp.display()
                        )
                        .into())
                    }
                });
            }
        }
        specs.push(spec);
    }
    Ok(specs)
}

fn serve(
    models: Vec<ModelSpec>,
    listen: &str,
    admin_listen: Option<&str>,
    (max_sessions, mode, wan, threads): (usize, ModeChoice, bool, usize),
    token: Option<String>,
    tls: Option<(PathBuf, PathBuf)>,
) -> Res {
    let mut names: Vec<String> = Vec::new();
    for m in &models {
        if names.contains(&m.name) {
            return Err(format!("two models named {:?}", m.name).into());
        }
        names.push(m.name.clone());
    }
    // The admin endpoint answers (live, not ready) while the models compile.
    let metrics = std::sync::Arc::new(cipherml::metrics::Metrics::new());
    let admin = match admin_listen {
        Some(addr) => {
            let admin = cipherml::admin::AdminServer::bind(addr, metrics.clone())?;
            let addr = admin.local_addr();
            std::thread::spawn(move || admin.run());
            Some(addr)
        }
        None => None,
    };
    let config = cipherml::server::ServerConfig {
        max_sessions,
        mode,
        network: if wan {
            cipherml::protocol::NetworkParams::WAN
        } else {
            cipherml::protocol::NetworkParams::LAN
        },
        threads,
        ..Default::default()
    };
    let mut server =
        cipherml::server::Server::bind_models(listen, models, config)?.with_metrics(metrics);
    if let Some(t) = token {
        server = server.with_auth(cipherml::server::Auth::token(t));
    }
    let scheme = if let Some((cert, key)) = tls {
        server = server.with_tls(cipherml::server::ServerTls::from_pem_files(&cert, &key)?);
        " (TLS)"
    } else {
        ""
    };
    println!(
        "listening on {}{scheme} (models: {})",
        server.local_addr(),
        names.join(", ")
    );
    if let Some(addr) = admin {
        println!(
            "admin endpoint on http://{addr} (/health/live, /health/ready, /v1/models, /metrics)"
        );
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    // Ctrl-C (or SIGTERM) stops accepting and lets the sessions in flight finish.
    let handle = server.shutdown_handle();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            handle.shutdown();
        }
    });
    let cut = server.run();
    // (stdout may be closed by now: not an error.)
    let _ = writeln!(std::io::stdout(), "stopped ({cut} session(s) cut short)");
    Ok(())
}

fn infer(
    server: &str,
    model: Option<&str>,
    input: &std::path::Path,
    output: Option<&std::path::Path>,
    options: &cipherml::client::ClientOptions,
) -> Res {
    let mut client = cipherml::client::Client::connect_with(server, options)?;
    if let Some(dir) = &options.key_dir {
        eprintln!(
            "keys kept in {}: {} key set(s) still cached by the server, not uploaded",
            dir.display(),
            client.cached_keys().len()
        );
    }
    let info = match model {
        Some(m) => client
            .models()
            .iter()
            .find(|i| i.name == m)
            .ok_or_else(|| format!("the server hosts no model named {m:?}"))?
            .clone(),
        None => match client.models() {
            [only] => only.clone(),
            many => {
                let names: Vec<&str> = many.iter().map(|m| m.name.as_str()).collect();
                return Err(format!(
                    "the server hosts several models ({}): choose one with --model",
                    names.join(", ")
                )
                .into());
            }
        },
    };
    let shape = info.input_shape.clone();
    let sigmoid_output = matches!(
        info.architecture.layers.last(),
        Some(cipherml::nn::ArchLayer::Sigmoid)
    );
    let xs = read_npy(input)?.to_f64();
    let xs = if xs.shape() == shape.as_slice() {
        xs.insert_axis(Axis(0))
    } else {
        xs
    };
    if &xs.shape()[1..] != shape.as_slice() {
        return Err(format!(
            "input shape {:?} does not match the model input {:?} (with a batch axis first)",
            xs.shape(),
            shape
        )
        .into());
    }
    let t = Instant::now();
    let mut all = Vec::new();
    let mut out_shape = Vec::new();
    let bar = indicatif::ProgressBar::new(xs.len_of(Axis(0)) as u64);
    if xs.len_of(Axis(0)) == 1 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    for (i, x) in xs.axis_iter(Axis(0)).enumerate() {
        let y = client.infer(&info.name, &x.to_owned())?;
        bar.inc(1);
        out_shape = y.shape().to_vec();
        let class = predicted_class(&y, sigmoid_output);
        println!("{i}: class {class}");
        all.extend(y.iter().map(|&v| v as f32));
    }
    bar.finish_and_clear();
    let n = xs.len_of(Axis(0));
    eprintln!(
        "{n} private inference(s) in {:.1} ms each, {:.2} MB exchanged in all",
        t.elapsed().as_secs_f64() * 1e3 / n as f64,
        client.bytes() as f64 / 1e6
    );
    if let Some(path) = output {
        let mut shape = vec![n];
        shape.extend(out_shape);
        let arr = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), all)?;
        cipherml::data::write_npy_f32(path, &arr)?;
    }
    client.close()?;
    Ok(())
}

/// The predicted class: the arg-max of the logits, or for a single output the side of the
/// decision threshold (0.5 after a sigmoid, 0 for a logit).
fn predicted_class(y: &ndarray::ArrayD<f64>, sigmoid_output: bool) -> usize {
    if y.len() == 1 {
        let threshold = if sigmoid_output { 0.5 } else { 0.0 };
        return usize::from(y.iter().next().copied().unwrap_or(0.0) > threshold);
    }
    y.iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |b, (j, &v)| if v > b.1 { (j, v) } else { b },
        )
        .0
}
