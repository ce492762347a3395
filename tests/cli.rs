//! The `cipherml` binary end to end.

use std::process::Command;

fn cipherml(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cipherml"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run the binary")
}

#[test]
fn inspect_every_bundled_model() {
    for name in [
        "digits_mlp",
        "digits_cnn",
        "digits_square_mlp",
        "cancer_logreg",
    ] {
        let out = cipherml(&["inspect", &format!("models/{name}.onnx")]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Dense"), "{text}");
        assert!(text.contains("mode:"), "{text}");
        assert!(text.contains("estimated total"), "{text}");
    }
    let bad = cipherml(&["inspect", "data/README.md"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot load ONNX model"));
}

#[test]
fn demo_prints_accuracy_latency_and_bytes() {
    let out = cipherml(&["demo", "--images", "20"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("20/20 predictions equal the plaintext model's"),
        "{text}"
    );
    assert!(text.contains("per image:"), "{text}");
    assert!(text.contains("MB exchanged"), "{text}");
}

#[test]
fn unknown_bench_suite_is_an_error() {
    let out = cipherml(&["bench", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown suite"));
}
