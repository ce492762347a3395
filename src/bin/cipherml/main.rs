//! The `cipherml` command line: inspect a model, run the private-inference demo, print
//! benchmarks. (`serve` and `infer` come with the client/server release.)

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cipherml::data::{data_dir, read_npy};
use cipherml::mpc::net::{tcp_loopback_pair, ChannelConfig};
use cipherml::mpc::party::Party;
use cipherml::mpc::prg::os_rng;
use cipherml::mpc::share::PartyId;
use cipherml::nn::{load_onnx, HybridConfig, HybridModel, NetworkModel};
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
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect { model, wan } => inspect(&model, wan),
        Command::Demo { images } => demo(images),
        Command::Bench { suite, budget_ms } => bench(&suite, Duration::from_millis(budget_ms)),
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
    println!("model digits_cnn (ONNX), {count} test images, client and server over TCP loopback\n");
    println!("{}\n", model.plan(NetworkModel::lan())?.explain());
    let config = HybridConfig::default();
    let server_model = HybridModel::compile(&model, &config, true)?;
    let client_model = HybridModel::compile(&model, &config, false)?;
    let t0 = Instant::now();
    let (c0, c1) = tcp_loopback_pair(ChannelConfig::default())?;
    let server = std::thread::spawn(move || -> Result<(), cipherml::nn::HybridError> {
        let mut p = Party::setup(PartyId::P1, c1, os_rng())?;
        for _ in 0..count {
            server_model.run_server(&mut p)?;
        }
        Ok(())
    });
    let mut p = Party::setup(PartyId::P0, c0, os_rng())?;
    let sk = std::sync::Arc::new(cipherml::he::rlwe::SecretKey::random(
        client_model.params().context(),
        &mut os_rng(),
    ));
    let setup = t0.elapsed();
    let s0 = p.stats();
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
        let got = client_model.run_client(&mut p, &sk, &x)?;
        let want = model.predict(&x)?;
        ok_private += (argmax(&got) as i64 == ys[i]) as usize;
        ok_plain += (argmax(&want) as i64 == ys[i]) as usize;
        agree += (argmax(&got) == argmax(&want)) as usize;
    }
    let elapsed = t.elapsed();
    let s1 = p.stats();
    drop(p);
    server.join().map_err(|_| "server thread panicked")??;
    let bytes = (s1.bytes_sent + s1.bytes_received - s0.bytes_sent - s0.bytes_received) as f64
        / count as f64;
    println!(
        "set-up (base OTs, keys): {:.0} ms, {} bytes",
        setup.as_secs_f64() * 1e3,
        s0.bytes_sent + s0.bytes_received
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
