//! `cipherml aggregate`: the secure-aggregation server (`serve`: rounds of SecAgg+ with
//! `--clients` clients, prints a summary per round and writes the sum) and its client
//! (`submit`: one update, from a `.npy` file, to one round). TLS and a bearer token as
//! `serve` and `infer` have them.

use std::path::PathBuf;
use std::time::Duration;

use cipherml::aggregate::{AggregationClient, AggregationConfig, AggregationServer};
use cipherml::mpc::secagg::{Quantization, SecAggParams};
use ndarray::{ArrayD, IxDyn};

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// The subcommands of `cipherml aggregate`.
#[derive(clap::Subcommand, Debug)]
pub enum AggregateCommand {
    /// Runs rounds of secure aggregation: prints "listening on ADDR", then one line per
    /// round (clients per stage, dropouts, bytes, time) and writes the de-quantized sum
    /// (and, weighted, the sum of weights as its last entry) to --output.
    Serve(ServeArgs),
    /// Sends one update (.npy, a vector of --dim values in the server's clip range) to a
    /// round of the server at --server; prints its id and how many updates were summed.
    Submit(SubmitArgs),
}

/// `cipherml aggregate serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7880")]
    listen: String,
    /// Clients per round (ids 0..N in join order).
    #[arg(long)]
    clients: u32,
    /// Share holders per client, odd (default: SecAgg+'s 2 ceil(log2 N) + 1).
    #[arg(long)]
    neighbours: Option<u32>,
    /// Shamir threshold (default: a majority of the holders).
    #[arg(long)]
    threshold: Option<u32>,
    /// Length of the updates.
    #[arg(long)]
    dim: usize,
    /// Updates are clipped to [-clip, clip].
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Bits per quantized entry.
    #[arg(long, default_value_t = 16)]
    bits: u32,
    /// Weighted rounds (FedAvg): clients pass --weight up to this.
    #[arg(long)]
    max_weight: Option<u64>,
    /// Rounds to run, then exit (status 1 if any failed).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Seconds a round waits for clients to join.
    #[arg(long, default_value_t = 60)]
    join_timeout: u64,
    /// Seconds each stage waits for the clients' messages (later ones are dropouts).
    #[arg(long, default_value_t = 30)]
    stage_timeout: u64,
    /// Write each round's sum here (.npy, float32; ROUND in the name is replaced by the
    /// round's number).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Require the bearer token in this file (its first line); without it, the one in
    /// the environment variable CIPHERML_TOKEN, if set.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Serve over TLS with this certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// `cipherml aggregate submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// The aggregation server.
    #[arg(long, default_value = "127.0.0.1:7880")]
    server: String,
    /// The update (.npy, any shape with the server's --dim values).
    #[arg(long)]
    input: PathBuf,
    /// This client's weight (weighted rounds: e.g. its number of samples).
    #[arg(long)]
    weight: Option<u64>,
    /// Present the bearer token in this file (its first line); without it, the one in the
    /// environment variable CIPHERML_TOKEN, if set.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Connect over TLS, trusting the CA certificate(s) in this PEM file.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of --server).
    #[arg(long, requires = "tls_ca")]
    tls_server_name: Option<String>,
}

/// Runs `cipherml aggregate ...`.
pub fn aggregate(command: AggregateCommand) -> Res {
    match command {
        AggregateCommand::Serve(args) => serve(args),
        AggregateCommand::Submit(args) => submit(args),
    }
}

fn serve(a: ServeArgs) -> Res {
    let mut params = SecAggParams::recommended(a.clients, a.dim);
    if let Some(k) = a.neighbours {
        params.k = k;
        params.t = a.threshold.unwrap_or(k.min(a.clients) / 2 + 1);
    }
    if let Some(t) = a.threshold {
        params.t = t;
    }
    params.quantization = Quantization {
        clip: a.clip,
        bits: a.bits,
    };
    params.max_weight = a.max_weight;
    let config = AggregationConfig {
        join_timeout: Duration::from_secs(a.join_timeout),
        stage_timeout: Duration::from_secs(a.stage_timeout),
        ..AggregationConfig::new(params)
    };
    let mut server = AggregationServer::bind(&a.listen, config)?;
    if let Some(token) = crate::bearer_token(a.token_file.as_deref())? {
        server = server.with_auth(cipherml::server::Auth::token(token));
    }
    if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) {
        server = server.with_tls(cipherml::server::ServerTls::from_pem_files(cert, key)?);
    }
    let c = server.secagg_config();
    println!("listening on {}", server.local_addr());
    println!(
        "rounds of {} clients, {} holders each, threshold {}, {} values clipped to +-{} in {} \
         bits, sums modulo 2^{}",
        c.n(),
        c.holders(),
        c.t(),
        c.dim(),
        a.clip,
        a.bits,
        c.modulus_bits()
    );
    let mut failed = 0;
    for round in 1..=a.rounds {
        match server.run_round() {
            Ok(r) => {
                let s = r.per_stage;
                println!(
                    "round {round}: joined {}, keys {}, shares {}, masked inputs {}, unmasking {}; \
                     summed {} updates (weight {}); dropouts {}; {} bytes in, {} out; {:.1} ms",
                    s[0],
                    s[1],
                    s[2],
                    s[3],
                    s[4],
                    r.survivors.len(),
                    r.weight_total,
                    c.n() as usize - r.survivors.len(),
                    r.bytes_in,
                    r.bytes_out,
                    r.elapsed.as_secs_f64() * 1e3
                );
                if let Some(path) = &a.output {
                    let name = path.to_string_lossy().replace("ROUND", &round.to_string());
                    let mut values: Vec<f32> = r.sum.iter().map(|&v| v as f32).collect();
                    if c.weighted() {
                        values.push(r.weight_total as f32);
                    }
                    let n = values.len();
                    let arr = ArrayD::from_shape_vec(IxDyn(&[n]), values)?;
                    cipherml::data::write_npy_f32(&name, &arr)?;
                }
            }
            Err(e) => {
                failed += 1;
                println!("round {round} failed: {e}");
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} of {} round(s) failed", a.rounds).into());
    }
    Ok(())
}

fn submit(a: SubmitArgs) -> Res {
    let options = cipherml::client::ClientOptions {
        token: crate::bearer_token(a.token_file.as_deref())?,
        tls: crate::client_tls(a.tls_ca.as_deref(), a.tls_server_name)?,
        ..Default::default()
    };
    let update: Vec<f64> = cipherml::data::read_npy(&a.input)?
        .to_f64()
        .iter()
        .copied()
        .collect();
    let client = AggregationClient::connect(&a.server, &options)?;
    let dim = client.config().dim();
    if update.len() != dim {
        return Err(format!(
            "the update has {} values, the round takes {dim}",
            update.len()
        )
        .into());
    }
    let report = client.submit(&update, a.weight)?;
    println!(
        "client {}: {} updates summed; {} bytes",
        report.id, report.survivors, report.bytes
    );
    Ok(())
}
