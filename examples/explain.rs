//! Prints the plan of a bundled model (what runs where, and the estimated cost of each
//! alternative), then runs it privately with both parties in this process:
//!
//! ```text
//! cargo run --release --example explain -- [digits_mlp|digits_cnn|digits_square_mlp|cancer_logreg]
//! ```

use cipherml::data::{data_dir, read_npy};
use cipherml::nn::{load_onnx, NetworkModel};
use ndarray::Axis;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "digits_cnn".into());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = load_onnx(root.join("models").join(format!("{name}.onnx")))?;
    print!("{}", model.summary()?);
    println!("{}", model.plan(NetworkModel::lan())?.explain());
    let data = if name.starts_with("cancer") {
        "cancer_test_x.npy"
    } else {
        "digits_test_x.npy"
    };
    let x = read_npy(data_dir().join(data))?
        .to_f64()
        .index_axis(Axis(0), 0)
        .to_owned();
    let (y, run) = model.predict_private(&x)?;
    let want = model.predict(&x)?;
    println!(
        "private prediction ({:?} mode): {:.1} ms, {:.2} MB (set-up {:.2} MB)",
        run.mode,
        run.latency_us / 1e3,
        run.bytes as f64 / 1e6,
        run.setup_bytes as f64 / 1e6
    );
    println!("private logits:   {:.4?}", y.iter().collect::<Vec<_>>());
    println!("plaintext logits: {:.4?}", want.iter().collect::<Vec<_>>());
    Ok(())
}
