//! The `cipherml` command line: host models (`serve`), call them privately (`infer`), run
//! the private-inference demo, inspect a model and its plan, print benchmarks.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cipherml::data::{data_dir, read_npy};
use cipherml::nn::{load_onnx, NetworkModel};
use clap::{Parser, Subcommand};
use ndarray::Axis;

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
    /// server in this process over TCP loopback.
    Demo {
        /// How many test images (at most 360).
        #[arg(long, default_value_t = 100)]
        images: usize,
    },
    /// Hosts models and answers private inference requests, until Ctrl-C (or SIGTERM),
    /// which stops accepting and lets the sessions in flight finish.
    Serve {
        /// A model: PATH.onnx (named after the file) or NAME=PATH.onnx; repeatable.
        #[arg(long = "model", required = true)]
        models: Vec<String>,
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: String,
        /// Concurrent sessions at most.
        #[arg(long, default_value_t = 16)]
        max_sessions: usize,
        /// Require this bearer token from clients (default: taken from CIPHERML_TOKEN, or
        /// none). Use it with TLS on a network.
        #[arg(long, env = "CIPHERML_TOKEN")]
        token: Option<String>,
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
        /// Bearer token (default: CIPHERML_TOKEN).
        #[arg(long, env = "CIPHERML_TOKEN")]
        token: Option<String>,
        /// Connect over TLS, trusting the CA certificate(s) in this PEM file.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// The name the server's certificate must carry (default: the host of --server).
        #[arg(long, requires = "tls_ca")]
        tls_server_name: Option<String>,
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
}

fn main() {
    // Structured logs on stderr (RUST_LOG-free: info and above); never inputs, keys or results.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect { model, wan } => inspect(&model, wan),
        Command::Demo { images } => demo(images),
        Command::Bench { suite, budget_ms } => bench(&suite, Duration::from_millis(budget_ms)),
        Command::Serve {
            models,
            listen,
            max_sessions,
            token,
            tls_cert,
            tls_key,
        } => serve(&models, &listen, max_sessions, token, tls_cert.zip(tls_key)),
        Command::Infer {
            server,
            model,
            input,
            output,
            token,
            tls_ca,
            tls_server_name,
        } => (|| {
            let tls = match tls_ca {
                Some(ca) => {
                    let t = cipherml::tls::ClientTls::from_ca_file(&ca)?;
                    Some(match tls_server_name {
                        Some(n) => t.with_server_name(n),
                        None => t,
                    })
                }
                None => None,
            };
            let options = cipherml::client::ClientOptions {
                token,
                tls,
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
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = load_onnx(root.join("models").join("digits_cnn.onnx"))?;
    let xs = read_npy(data_dir().join("digits_test_x.npy"))?.to_f64();
    let ys = read_npy(data_dir().join("digits_test_y.npy"))?.into_i64()?;
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
    let t = Instant::now();
    for i in 0..count {
        let x = xs.index_axis(Axis(0), i).to_owned();
        let got = client.infer("digits_cnn", &x)?;
        let want = model.predict(&x)?;
        ok_private += (argmax(&got) as i64 == ys[i]) as usize;
        ok_plain += (argmax(&want) as i64 == ys[i]) as usize;
        agree += (argmax(&got) == argmax(&want)) as usize;
    }
    let elapsed = t.elapsed();
    let bytes = (client.bytes() - setup_bytes) as f64 / count as f64;
    client.close()?;
    println!(
        "set-up (hello, base OTs, keys): {:.0} ms, {setup_bytes} bytes",
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

fn serve(
    models: &[String],
    listen: &str,
    max_sessions: usize,
    token: Option<String>,
    tls: Option<(PathBuf, PathBuf)>,
) -> Res {
    let mut loaded = Vec::new();
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
        loaded.push((name, load_onnx(&path)?));
    }
    let names: Vec<String> = loaded.iter().map(|(n, _)| n.clone()).collect();
    let config = cipherml::server::ServerConfig {
        max_sessions,
        ..Default::default()
    };
    let mut server = cipherml::server::Server::bind(listen, loaded, config)?;
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
