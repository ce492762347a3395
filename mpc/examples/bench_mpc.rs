//! Prints the MPC layer's bench figures as JSON lines (budget in seconds as the argument).
fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3.0);
    match cipherml_mpc::bench::bench_lines(std::time::Duration::from_secs_f64(secs)) {
        Ok(lines) => lines.iter().for_each(|l| println!("{}", l.to_json())),
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
    }
}
