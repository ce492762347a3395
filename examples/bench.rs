//! Prints benchmark figures as JSON lines (see BENCHMARKS.md):
//!
//! ```text
//! cargo run --release --example bench -- [he|mpc|nn|all]
//! ```
//! Set `CIPHERML_BENCH_MS` to change the time budget per figure (default 2000 ms).

use std::time::Duration;

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let ms = std::env::var("CIPHERML_BENCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000u64);
    let budget = Duration::from_millis(ms);
    let mut emit = |l: cipherml::bench::BenchLine| println!("{}", l.to_json());
    match which.as_str() {
        "he" | "all" => cipherml::bench::he(budget, &mut emit),
        "mpc" | "nn" => eprintln!("the {which} benchmarks are not implemented yet"),
        other => {
            eprintln!("unknown suite {other:?}: expected he, mpc, nn or all");
            std::process::exit(2);
        }
    }
}
