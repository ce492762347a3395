//! Prints benchmark figures as JSON lines (see BENCHMARKS.md):
//!
//! ```text
//! cargo run --release --example bench -- [he|mpc|nn|link|train|secagg|all] [filter]
//! ```
//! The filter (for mpc, nn, link, train and secagg) keeps the lines whose network,
//! configuration or line name contains it: `nn resnet20` runs only `setup.resnet20` and
//! `infer.resnet20`, `mpc relu` only `mpc.relu_2e16`, `link conv` the convolutions of the
//! `link` suite (linear layers through the shares <-> BFV link), `secagg
//! n1000.d1e5.drop10` one secure-aggregation configuration. `all` leaves out `link`,
//! `train` and `secagg`.
//! Set `CIPHERML_BENCH_MS` to change the time budget per figure (default 2000 ms).

use std::time::Duration;

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let filter = std::env::args().nth(2);
    let ms = std::env::var("CIPHERML_BENCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000u64);
    let budget = Duration::from_millis(ms);
    let mut emit = |l: cipherml::bench::BenchLine| println!("{}", l.to_json());
    let mpc =
        |filter: Option<&str>| match cipherml::mpc::bench::bench_lines_filtered(budget, filter) {
            Ok(lines) => lines.iter().for_each(|l| println!("{}", l.to_json())),
            Err(e) => {
                eprintln!("mpc benchmarks failed: {e}");
                std::process::exit(1);
            }
        };
    match which.as_str() {
        "he" => cipherml::bench::he(budget, &mut emit),
        "mpc" => mpc(filter.as_deref()),
        "nn" => cipherml::bench::nn_filtered(budget, filter.as_deref(), &mut emit),
        "link" => cipherml::bench::link(budget, filter.as_deref(), &mut emit),
        "train" => cipherml::bench::train(budget, filter.as_deref(), &mut emit),
        "secagg" => cipherml::bench::secagg(budget, filter.as_deref(), &mut emit),
        "all" => {
            cipherml::bench::he(budget, &mut emit);
            mpc(None);
            cipherml::bench::nn(budget, &mut emit);
        }
        other => {
            eprintln!("unknown suite {other:?}: expected he, mpc, nn, link, train, secagg or all");
            std::process::exit(2);
        }
    }
}
