//! ONNX graphs built in the test (prost encoding of tract-onnx's protobuf types): zero
//! padding folded into a convolution (checked against tract), and unsupported operators
//! refused with the operator and the node named.

use cipherml::nn::{load_onnx, tract_reference, NnError};
use prost::Message;
use tract_onnx::pb;

fn tensor(name: &str, dims: &[i64], data: Vec<f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        float_data: data,
        ..Default::default()
    }
}

fn ints_tensor(name: &str, data: Vec<i64>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![data.len() as i64],
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        int64_data: data,
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    }
}

fn value(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn write_model(
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    out_dims: &[i64],
) -> tempfile_path::Path {
    let model = pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            node: nodes,
            name: "g".into(),
            initializer: inits,
            input: vec![value("input", &[1, 1, 6, 6])],
            output: vec![value("output", out_dims)],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = tempfile_path::Path::new();
    std::fs::write(&path.0, model.encode_to_vec()).unwrap();
    path
}

/// A file in the target directory, removed when dropped.
mod tempfile_path {
    pub struct Path(pub std::path::PathBuf);
    impl Path {
        pub fn new() -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir();
            Path(dir.join(format!(
                "cipherml-onnx-test-{}-{}.onnx",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            )))
        }
    }
    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn zero_pad_is_folded_into_the_convolution() {
    let w: Vec<f32> = (0..18).map(|i| (i as f32 - 9.0) / 10.0).collect();
    let g: Vec<f32> = (0..72 * 3)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) / 20.0)
        .collect();
    let path = write_model(
        vec![
            node("Pad", "pad0", &["input", "pads"], "p", vec![]),
            node("Conv", "conv0", &["p", "w", "b"], "c", vec![]),
            node("Relu", "relu0", &["c"], "r", vec![]),
            node("Flatten", "flat0", &["r"], "f", vec![]),
            node(
                "Gemm",
                "gemm0",
                &["f", "g"],
                "output",
                vec![pb::AttributeProto {
                    name: "transB".into(),
                    i: 1,
                    r#type: pb::attribute_proto::AttributeType::Int as i32,
                    ..Default::default()
                }],
            ),
        ],
        vec![
            ints_tensor("pads", vec![0, 0, 1, 1, 0, 0, 1, 1]),
            tensor("w", &[2, 1, 3, 3], w),
            tensor("b", &[2], vec![0.1, -0.2]),
            tensor("g", &[3, 72], g),
        ],
        &[1, 3],
    );
    let model = load_onnx(&path.0).unwrap();
    assert!(
        model.summary().unwrap().contains("pad 1"),
        "{}",
        model.summary().unwrap()
    );
    let x = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[1, 6, 6]), |i| {
        (i[1] * 6 + i[2]) as f64 / 36.0
    });
    let ours = model.predict(&x).unwrap();
    let theirs = tract_reference(&path.0, &x).unwrap();
    for (a, b) in ours.iter().zip(theirs.iter()) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}

#[test]
fn unsupported_operators_are_refused_by_name_and_node() {
    let path = write_model(
        vec![
            node("Flatten", "flat0", &["input"], "f", vec![]),
            node("LeakyRelu", "leaky_7", &["f"], "output", vec![]),
        ],
        vec![],
        &[1, 36],
    );
    match load_onnx(&path.0) {
        Err(NnError::UnsupportedOp { op, node, .. }) => {
            assert_eq!(op, "LeakyRelu");
            assert_eq!(node, "leaky_7");
        }
        other => panic!("expected UnsupportedOp, got {other:?}"),
    }
}

fn pads_attr(p: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: "pads".into(),
        ints: vec![p; 4],
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ..Default::default()
    }
}

fn weights(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7 + seed * 13) % 17) as f32 - 8.0) / 20.0)
        .collect()
}

#[test]
fn residual_adds_become_residual_blocks_and_match_tract() {
    use cipherml::nn::Layer;
    let trans_b = pb::AttributeProto {
        name: "transB".into(),
        i: 1,
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        ..Default::default()
    };
    // conv0 -> relu0 = x; block 1: x + conv2(relu1(conv1(x))) (shortcut first);
    // relu2 = y; block 2: conv3(y) + y (shortcut second); flatten; gemm.
    let path = write_model(
        vec![
            node(
                "Conv",
                "conv0",
                &["input", "w0", "b0"],
                "c0",
                vec![pads_attr(1)],
            ),
            node("Relu", "relu0", &["c0"], "x", vec![]),
            node(
                "Conv",
                "conv1",
                &["x", "w1", "b1"],
                "c1",
                vec![pads_attr(1)],
            ),
            node("Relu", "relu1", &["c1"], "r1", vec![]),
            node(
                "Conv",
                "conv2",
                &["r1", "w2", "b2"],
                "c2",
                vec![pads_attr(1)],
            ),
            node("Add", "add_skip1", &["x", "c2"], "a1", vec![]),
            node("Relu", "relu2", &["a1"], "y", vec![]),
            node("Conv", "conv3", &["y", "w3"], "c3", vec![pads_attr(1)]),
            node("Add", "add_skip2", &["c3", "y"], "a2", vec![]),
            node("Flatten", "flat0", &["a2"], "f", vec![]),
            node("Gemm", "gemm0", &["f", "g"], "output", vec![trans_b]),
        ],
        vec![
            tensor("w0", &[2, 1, 3, 3], weights(18, 0)),
            tensor("b0", &[2], vec![0.1, -0.2]),
            tensor("w1", &[2, 2, 3, 3], weights(36, 1)),
            tensor("b1", &[2], vec![0.05, 0.1]),
            tensor("w2", &[2, 2, 3, 3], weights(36, 2)),
            tensor("b2", &[2], vec![-0.1, 0.2]),
            tensor("w3", &[2, 2, 3, 3], weights(36, 3)),
            tensor("g", &[3, 72], weights(216, 4)),
        ],
        &[1, 3],
    );
    let model = load_onnx(&path.0).unwrap();
    let kinds: Vec<String> = model.layers().iter().map(|l| l.describe()).collect();
    assert_eq!(
        kinds,
        [
            "Conv2d(1->2, 3x3, stride 1, pad 1)",
            "ReLU",
            "Residual(x + 3 layers)",
            "ReLU",
            "Residual(x + 1 layers)",
            "Flatten",
            "Dense(72->3)"
        ],
        "{}",
        model.summary().unwrap()
    );
    match &model.layers()[2] {
        Layer::Residual { body } => {
            let body: Vec<String> = body.iter().map(|l| l.describe()).collect();
            assert_eq!(
                body,
                [
                    "Conv2d(2->2, 3x3, stride 1, pad 1)",
                    "ReLU",
                    "Conv2d(2->2, 3x3, stride 1, pad 1)"
                ]
            );
        }
        other => panic!("expected a residual block, got {other:?}"),
    }
    for seed in 0..4 {
        let x = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[1, 6, 6]), |i| {
            (((i[1] * 6 + i[2]) * (seed + 3)) % 11) as f64 / 5.0 - 1.0
        });
        let ours = model.predict(&x).unwrap();
        let theirs = tract_reference(&path.0, &x).unwrap();
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(theirs.iter()) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}

#[test]
fn adds_that_are_not_identity_residuals_are_refused_by_node() {
    // Two unrelated branches of the input: refused where the second branch starts.
    let path = write_model(
        vec![
            node("Relu", "relu_a", &["input"], "a", vec![]),
            node("Sigmoid", "sigmoid_b", &["input"], "b", vec![]),
            node("Add", "add_ab", &["a", "b"], "s", vec![]),
            node("Flatten", "flat0", &["s"], "output", vec![]),
        ],
        vec![],
        &[1, 36],
    );
    match load_onnx(&path.0) {
        Err(NnError::UnsupportedOp { op, node, reason }) => {
            assert_eq!((op.as_str(), node.as_str()), ("Sigmoid", "sigmoid_b"));
            assert!(reason.contains("branches from \"input\""), "{reason}");
        }
        other => panic!("expected UnsupportedOp, got {other:?}"),
    }
    // A valid residual `x + relu(conv(x))`, then an Add whose shortcut `c` lies inside that
    // block's body: a DAG that is not a nest of identity shortcuts.
    let path = write_model(
        vec![
            node("Relu", "relu0", &["input"], "x", vec![]),
            node("Conv", "conv0", &["x", "w"], "c", vec![pads_attr(1)]),
            node("Relu", "relu1", &["c"], "r", vec![]),
            node("Add", "add_ok", &["x", "r"], "s", vec![]),
            node("Add", "add_cross", &["c", "s"], "t", vec![]),
            node("Flatten", "flat0", &["t"], "output", vec![]),
        ],
        vec![tensor("w", &[1, 1, 3, 3], weights(9, 5))],
        &[1, 36],
    );
    match load_onnx(&path.0) {
        Err(NnError::UnsupportedOp { op, node, reason }) => {
            assert_eq!((op.as_str(), node.as_str()), ("Add", "add_cross"));
            assert!(reason.contains("\"c\""), "{reason}");
        }
        other => panic!("expected UnsupportedOp, got {other:?}"),
    }
    // The shortcut taken before a BatchNorm folded into the conv that produced it: the
    // folded layer no longer outputs the shortcut's value, so this is refused too.
    let path = write_model(
        vec![
            node("Conv", "conv0", &["input", "w"], "c", vec![pads_attr(1)]),
            node(
                "BatchNormalization",
                "bn0",
                &["c", "g", "beta", "m", "v"],
                "n",
                vec![],
            ),
            node("Add", "add_pre_bn", &["c", "n"], "s", vec![]),
            node("Flatten", "flat0", &["s"], "output", vec![]),
        ],
        vec![
            tensor("w", &[1, 1, 3, 3], weights(9, 6)),
            tensor("g", &[1], vec![2.0]),
            tensor("beta", &[1], vec![0.5]),
            tensor("m", &[1], vec![0.1]),
            tensor("v", &[1], vec![4.0]),
        ],
        &[1, 36],
    );
    match load_onnx(&path.0) {
        Err(NnError::UnsupportedOp { op, node, .. }) => {
            assert_eq!((op.as_str(), node.as_str()), ("Add", "add_pre_bn"));
        }
        other => panic!("expected UnsupportedOp, got {other:?}"),
    }
}
