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
            node("Erf", "erf_7", &["f"], "output", vec![]),
        ],
        vec![],
        &[1, 36],
    );
    match load_onnx(&path.0) {
        Err(NnError::UnsupportedOp { op, node, reason }) => {
            assert_eq!(op, "Erf");
            assert_eq!(node, "erf_7");
            assert!(
                reason.contains("opset 13") && reason.contains("README"),
                "{reason}"
            );
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

/// `model.predict` equals tract on the model file at `path` for `seeds` deterministic
/// `(1, 6, 6)` inputs.
fn matches_tract(path: &tempfile_path::Path, model: &cipherml::nn::Sequential, seeds: usize) {
    for seed in 0..seeds {
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
    matches_tract(&path, &model, 4);
}

#[test]
fn branches_that_meet_are_blocks_and_others_are_refused_by_node() {
    use cipherml::nn::{Join, Layer};
    // Two branches of the input that meet at an Add: a block of two branches.
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
    let model = load_onnx(&path.0).unwrap();
    match &model.layers()[0] {
        Layer::Branches { branches, join } => {
            assert_eq!(*join, Join::Add);
            assert_eq!(branches, &[vec![Layer::Relu], vec![Layer::Sigmoid]]);
        }
        other => panic!("expected branches, got {other:?}"),
    }
    matches_tract(&path, &model, 3);
    // A valid residual `x + relu(conv(x))`, then an Add whose shortcut `c` lies inside that
    // block's body: a DAG that is not a nest of blocks, refused at the second join.
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
    // A shortcut taken before a BatchNorm: `c + bn(c)`, a residual block whose body is the
    // batch norm (a per-channel affine map that cannot fold into the shared conv).
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
    let model = load_onnx(&path.0).unwrap();
    assert!(
        matches!(&model.layers()[1], Layer::Residual { body } if matches!(body[..], [Layer::Affine { .. }])),
        "{}",
        model.summary().unwrap()
    );
    matches_tract(&path, &model, 3);
    // A branch that never joins the others (a second output) is refused where it starts.
    let path = write_model(
        vec![
            node("Relu", "relu_a", &["input"], "a", vec![]),
            node("Sigmoid", "sigmoid_b", &["input"], "b", vec![]),
            node("Flatten", "flat0", &["a"], "output", vec![]),
            node("Flatten", "flat1", &["b"], "other", vec![]),
        ],
        vec![],
        &[1, 36],
    );
    // Only the nodes the output needs are read: `other` is not an output here.
    let model = load_onnx(&path.0).unwrap();
    assert_eq!(model.layers(), &[Layer::Relu, Layer::Flatten]);
}

/// A small seeded generator (splitmix64): the mutants are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

/// The operators a mutated node may take: the supported ones, an unsupported one and none.
const OPS: &[&str] = &[
    "Constant",
    "Gemm",
    "MatMul",
    "Add",
    "Mul",
    "Relu",
    "Sigmoid",
    "Softmax",
    "Flatten",
    "Reshape",
    "Identity",
    "Dropout",
    "Pad",
    "GlobalAveragePool",
    "Conv",
    "MaxPool",
    "AveragePool",
    "BatchNormalization",
    "LeakyRelu",
    "",
];

/// Integers a mutated dimension, attribute or list takes: small ones, negative, zero, and
/// ones large enough to overflow shape arithmetic.
const INTS: &[i64] = &[
    -1,
    0,
    1,
    1,
    2,
    2,
    3,
    4,
    8,
    64,
    1 << 20,
    1 << 40,
    i64::MAX,
    i64::MIN,
];

const ATTRS: &[&str] = &[
    "transA",
    "transB",
    "alpha",
    "beta",
    "group",
    "dilations",
    "strides",
    "pads",
    "kernel_shape",
    "auto_pad",
    "mode",
    "epsilon",
    "ceil_mode",
    "value",
];

fn random_ints(rng: &mut Rng) -> Vec<i64> {
    let len = rng.below(9);
    let v = rng.pick(INTS);
    // Often uniform (as the converters want), sometimes not.
    if rng.below(2) == 0 {
        vec![v; len]
    } else {
        (0..len).map(|_| rng.pick(INTS)).collect()
    }
}

fn random_tensor(rng: &mut Rng, name: &str) -> pb::TensorProto {
    let dims: Vec<i64> = (0..rng.below(5)).map(|_| rng.below(5) as i64).collect();
    let count = dims.iter().product::<i64>() as usize;
    // Usually as many values as the dims say, sometimes one more or fewer.
    let n = match rng.below(4) {
        0 => count + 1,
        1 => count.saturating_sub(1),
        _ => count,
    };
    let data = (0..n).map(|i| [-1.0, 0.0, 1.0, 2.0][i % 4]).collect();
    tensor(name, &dims, data)
}

/// All tensor names the graph mentions, plus the empty name and an unknown one.
fn tensor_names(g: &pb::GraphProto) -> Vec<String> {
    let mut names: Vec<String> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().chain(&n.output).cloned())
        .chain(g.initializer.iter().map(|t| t.name.clone()))
        .chain(g.input.iter().map(|i| i.name.clone()))
        .collect();
    names.push(String::new());
    names.push("ghost".into());
    names
}

/// Applies one random mutation to `model`, describing it in `log`.
fn mutate(model: &mut pb::ModelProto, rng: &mut Rng, log: &mut Vec<String>) {
    let Some(g) = model.graph.as_mut() else {
        return;
    };
    let names = tensor_names(g);
    let nodes = g.node.len();
    let inits = g.initializer.len();
    match rng.below(20) {
        16..=19 if nodes > 0 => graft(g, rng, log),
        0 if nodes > 0 => {
            let (i, op) = (rng.below(nodes), rng.pick(OPS));
            log.push(format!("node {i} op {:?} -> {op:?}", g.node[i].op_type));
            g.node[i].op_type = op.into();
        }
        1 if nodes > 0 => {
            let i = rng.below(nodes);
            log.push(format!("drop node {i}"));
            g.node.remove(i);
        }
        2 if nodes > 0 => {
            let (i, j) = (rng.below(nodes), rng.below(nodes + 1));
            log.push(format!("duplicate node {i} at {j}"));
            let n = g.node[i].clone();
            g.node.insert(j, n);
        }
        3 if nodes > 1 => {
            let (i, j) = (rng.below(nodes), rng.below(nodes));
            log.push(format!("swap nodes {i} and {j}"));
            g.node.swap(i, j);
        }
        4 if nodes > 0 => {
            let i = rng.below(nodes);
            let n = &mut g.node[i];
            let name = rng.pick(&names);
            match rng.below(4) {
                0 if !n.input.is_empty() => {
                    let k = rng.below(n.input.len());
                    log.push(format!("node {i} input {k} -> {name:?}"));
                    n.input[k] = name;
                }
                1 if !n.input.is_empty() => {
                    let k = rng.below(n.input.len());
                    log.push(format!("node {i} drop input {k}"));
                    n.input.remove(k);
                }
                2 => {
                    log.push(format!("node {i} clear inputs"));
                    n.input.clear();
                }
                _ => {
                    log.push(format!("node {i} add input {name:?}"));
                    n.input.push(name);
                }
            }
        }
        5 if nodes > 0 => {
            let i = rng.below(nodes);
            let n = &mut g.node[i];
            match rng.below(3) {
                0 => {
                    log.push(format!("node {i} clear outputs"));
                    n.output.clear();
                }
                1 if !n.output.is_empty() => {
                    let name = rng.pick(&names);
                    log.push(format!("node {i} output -> {name:?}"));
                    n.output[0] = name;
                }
                _ => {
                    log.push(format!("node {i} extra output"));
                    n.output.push("extra".into());
                }
            }
        }
        6 if inits > 0 => {
            let i = rng.below(inits);
            let t = &mut g.initializer[i];
            if t.raw_data.is_empty() {
                let len = rng.below(t.float_data.len() + 2);
                log.push(format!(
                    "initializer {i} float data {} -> {len}",
                    t.float_data.len()
                ));
                t.float_data.resize(len, 0.5);
            } else {
                let len = rng.below(t.raw_data.len() + 8);
                log.push(format!(
                    "initializer {i} raw data {} -> {len}",
                    t.raw_data.len()
                ));
                t.raw_data.resize(len, 0x3f);
            }
        }
        7 if inits > 0 => {
            // Dims that keep the element count (the data still fits, the shape does not)
            // or that do not.
            let i = rng.below(inits);
            let t = &mut g.initializer[i];
            let count = t.dims.iter().fold(1i64, |n, &d| n.wrapping_mul(d));
            let old = t.dims.clone();
            match rng.below(6) {
                0 => t.dims = vec![count],
                1 => t.dims = vec![1, count],
                2 => t.dims = vec![count, 1],
                3 => t.dims.reverse(),
                4 if !t.dims.is_empty() => {
                    let k = rng.below(t.dims.len());
                    t.dims[k] = rng.pick(INTS);
                }
                _ => t.dims.push(rng.pick(INTS)),
            }
            log.push(format!("initializer {i} dims {old:?} -> {:?}", t.dims));
        }
        8 if inits > 0 => {
            let (i, dt) = (rng.below(inits), rng.below(22) as i32 - 1);
            log.push(format!("initializer {i} data type -> {dt}"));
            g.initializer[i].data_type = dt;
        }
        9 if inits > 0 => {
            let i = rng.below(inits);
            let t = &mut g.initializer[i];
            match rng.below(3) {
                0 => {
                    log.push(format!("initializer {i} data to raw"));
                    t.raw_data = t.float_data.iter().flat_map(|f| f.to_le_bytes()).collect();
                    t.float_data.clear();
                }
                1 => {
                    log.push(format!("initializer {i} external"));
                    t.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
                    t.raw_data.clear();
                    t.float_data.clear();
                }
                _ => {
                    log.push(format!("initializer {i} removed"));
                    g.initializer.remove(i);
                }
            }
        }
        10 | 11 if nodes > 0 => {
            let i = rng.below(nodes);
            let n = &mut g.node[i];
            let name = if n.attribute.is_empty() || rng.below(3) == 0 {
                let name = rng.pick(ATTRS);
                n.attribute.push(pb::AttributeProto {
                    name: name.into(),
                    ..Default::default()
                });
                name.to_string()
            } else {
                n.attribute[rng.below(n.attribute.len())].name.clone()
            };
            let Some(a) = n.attribute.iter_mut().find(|a| a.name == name) else {
                return;
            };
            match rng.below(6) {
                0 => a.ints = random_ints(rng),
                1 => a.i = rng.pick(INTS),
                2 => a.f = rng.pick(&[f32::NAN, -1.0, 0.0, 1e-5, 2.0, f32::INFINITY]),
                3 => {
                    a.s = rng
                        .pick(&["", "NOTSET", "SAME_UPPER", "reflect", "constant"])
                        .into()
                }
                4 => a.t = Some(random_tensor(rng, "t")),
                _ => {
                    let name = a.name.clone();
                    n.attribute.retain(|a| a.name != name);
                }
            }
            log.push(format!("node {i} attribute {name:?} -> {:?}", n.attribute));
        }
        12 if !g.input.is_empty() => {
            let i = rng.below(g.input.len());
            let v = &mut g.input[i];
            match rng.below(4) {
                0 => {
                    log.push(format!("input {i} removed"));
                    g.input.remove(i);
                }
                1 => {
                    log.push(format!("input {i} untyped"));
                    v.r#type = None;
                }
                _ => {
                    let dims: Vec<i64> = (0..rng.below(6)).map(|_| rng.pick(INTS)).collect();
                    log.push(format!("input {i} dims -> {dims:?}"));
                    *v = value(&v.name, &dims);
                }
            }
        }
        13 | 14 => {
            // A Constant node (or an initializer) of a random small tensor, named after
            // an existing tensor: e.g. a 2-D Reshape shape, short BatchNorm parameters.
            let name = rng.pick(&names);
            let t = random_tensor(rng, &name);
            log.push(format!("constant {name:?} = {t:?}"));
            if rng.below(2) == 0 {
                let at = rng.below(nodes + 1);
                let value = pb::AttributeProto {
                    name: "value".into(),
                    t: Some(t),
                    r#type: pb::attribute_proto::AttributeType::Tensor as i32,
                    ..Default::default()
                };
                g.node
                    .insert(at, node("Constant", "const_m", &[], &name, vec![value]));
            } else {
                g.initializer.retain(|t| t.name != name);
                g.initializer.push(t);
            }
        }
        _ => {
            // A new node of a random operator between existing tensors.
            let (at, op) = (rng.below(nodes + 1), rng.pick(OPS));
            let inputs: Vec<String> = (0..rng.below(4)).map(|_| rng.pick(&names)).collect();
            let inputs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
            let output = rng.pick(&names);
            log.push(format!("new node {op:?} {inputs:?} -> {output:?} at {at}"));
            g.node
                .insert(at, node(op, "new_m", &inputs, &output, vec![]));
        }
    }
}

/// Values a grafted node's constants take: random small tensors, and ones of the lengths
/// and shapes the converters look for (a Reshape target, Pad amounts, per-channel vectors),
/// 1-D or not.
fn graft_constant(rng: &mut Rng, name: &str) -> pb::TensorProto {
    let data: Vec<f32> = match rng.below(4) {
        0 => return random_tensor(rng, name),
        1 => vec![1.0, -1.0],
        2 => vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0],
        _ => {
            let n = rng.pick(&[1, 2, 3, 8, 10, 16, 32, 64]);
            (0..n).map(|i| [0.5, 1.0, -0.25, 0.0][i % 4]).collect()
        }
    };
    let n = data.len() as i64;
    let dims = rng.pick(&[vec![n], vec![n], vec![1, n], vec![n, 1], vec![]]);
    let mut t = tensor(name, &dims, data);
    if dims.is_empty() {
        t.float_data.truncate(1);
    }
    t
}

/// Inserts after a node a node of an operator that takes constants (BatchNorm, Reshape, Pad,
/// Conv, Gemm, ...) reading the node's output, with random constants and attributes, and
/// makes the nodes that read that output read the new node's.
fn graft(g: &mut pb::GraphProto, rng: &mut Rng, log: &mut Vec<String>) {
    let i = rng.below(g.node.len());
    let Some(from) = g.node[i].output.first().cloned() else {
        return;
    };
    let (op, constants) = rng.pick(&[
        ("BatchNormalization", 4),
        ("Reshape", 1),
        ("Pad", 1),
        ("Pad", 2),
        ("Conv", 1),
        ("Conv", 2),
        ("Gemm", 1),
        ("Gemm", 2),
        ("MatMul", 1),
        ("Add", 1),
        ("MaxPool", 0),
        ("AveragePool", 0),
    ]);
    let k = g.node.len();
    let out = format!("graft_{k}");
    let mut inputs = vec![from.clone()];
    for c in 0..constants {
        let name = format!("graft_{k}_{c}");
        g.initializer.push(graft_constant(rng, &name));
        inputs.push(name);
    }
    let attrs = (0..rng.below(3))
        .map(|_| pb::AttributeProto {
            name: rng.pick(ATTRS).into(),
            ints: random_ints(rng),
            i: rng.pick(INTS),
            f: rng.pick(&[1e-5, 0.0, -1.0, f32::NAN]),
            ..Default::default()
        })
        .collect();
    for n in &mut g.node[i + 1..] {
        for input in &mut n.input {
            if *input == from {
                *input = out.clone();
            }
        }
    }
    let inputs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
    g.node.insert(i + 1, node(op, &out, &inputs, &out, attrs));
    log.push(format!("graft {op} after node {i}: {:?}", g.node[i + 1]));
}

/// Seeded random mutations of the bundled models (operators, nodes dropped, duplicated,
/// swapped or added, inputs rewired, outputs removed, initializers truncated, reshaped or
/// retyped, attributes changed, the graph input reshaped): the importer refuses each
/// malformed model with a typed error or builds a model that checks its shapes and runs,
/// and never panics. Each mutant is reproducible from its model and case number (the seed).
#[test]
fn mutated_models_never_panic_the_importer() {
    use cipherml::nn::load_onnx_bytes;
    use std::collections::BTreeMap;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    // 1000 mutants of each model by default; more with CIPHERML_ONNX_MUTANTS=<n>.
    let per_model: usize = std::env::var("CIPHERML_ONNX_MUTANTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut panics = Vec::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    // The bundled models, and the real exporters' (branches, shape subgraphs, ai.onnx.ml).
    let files: Vec<std::path::PathBuf> = [
        "models/cancer_logreg.onnx",
        "models/digits_mlp.onnx",
        "models/digits_square_mlp.onnx",
        "models/digits_cnn.onnx",
        "tests/data/exporters/torch_norm_mlp.onnx",
        "tests/data/exporters/torch_cnn_view.onnx",
        "tests/data/exporters/torch_resnet_proj.onnx",
        "tests/data/exporters/torch_concat.onnx",
        "tests/data/exporters/torch_activations.onnx",
        "tests/data/exporters/torch_pad_avgpool.onnx",
        "tests/data/exporters/torch_depthwise.onnx",
        "tests/data/exporters/keras_cnn_nhwc_transposes.onnx",
        "tests/data/exporters/skl_logreg_digits.onnx",
    ]
    .iter()
    .map(|f| root.join(f))
    .collect();
    let count = files.len();
    for (m, file) in files.iter().enumerate() {
        let name = file.file_stem().unwrap().to_str().unwrap();
        let bytes = std::fs::read(file).unwrap();
        let base = pb::ModelProto::decode(&bytes[..]).unwrap();
        load_onnx_bytes(name, &bytes).unwrap();
        for case in 0..per_model {
            let mut rng = Rng((m * per_model + case) as u64);
            let mut model = base.clone();
            let mut log = Vec::new();
            for _ in 0..1 + rng.below(3) {
                mutate(&mut model, &mut rng, &mut log);
            }
            let mutant = model.encode_to_vec();
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let model = load_onnx_bytes(name, &mutant)?;
                // An accepted model checks its shapes and, if small, runs.
                let shapes = model.shapes()?;
                if shapes
                    .iter()
                    .all(|s| s.iter().product::<usize>() <= 1 << 16)
                {
                    model.predict(&ndarray::ArrayD::zeros(model.input_shape()))?;
                }
                Ok::<_, NnError>(())
            }));
            let kind = match outcome {
                Err(payload) => {
                    let msg = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    panics.push(format!("{name} case {case} {log:?}: {msg}"));
                    "panic"
                }
                Ok(Ok(())) => "accepted",
                Ok(Err(e)) => {
                    assert!(!e.to_string().is_empty());
                    match e {
                        NnError::UnsupportedOp { .. } => "UnsupportedOp",
                        NnError::MalformedOnnx { .. } => "MalformedOnnx",
                        NnError::Onnx { .. } => "Onnx",
                        NnError::LayerShape { .. } => "Shape",
                        NnError::ResidualShape { .. } => "ResidualShape",
                        other => panic!("{name} case {case} {log:?}: untyped error {other:?}"),
                    }
                }
            };
            *outcomes.entry(kind.into()).or_default() += 1;
        }
    }
    eprintln!("mutants: {outcomes:?}");
    assert!(
        panics.is_empty(),
        "{} of {} mutants panicked:\n{}",
        panics.len(),
        count * per_model,
        panics.join("\n")
    );
    // The mutations reach the converters' checks, not only the decoder (shape errors
    // are reported as malformed nodes, naming the node).
    for kind in ["UnsupportedOp", "MalformedOnnx", "accepted"] {
        assert!(outcomes.get(kind).is_some_and(|&n| n > 0), "{outcomes:?}");
    }
}

/// The malformed nodes that used to panic the importer (a 2-D Reshape target, BatchNorm
/// vectors shorter than the channels, a node without output, raw data shorter than the
/// dims, ...) are refused with `MalformedOnnx` naming the node and the values.
#[test]
fn malformed_nodes_are_refused_with_the_offending_values() {
    fn expect_malformed(path: &tempfile_path::Path, want_node: &str, want: &str) {
        match load_onnx(&path.0) {
            Err(NnError::MalformedOnnx { node, reason, .. }) => {
                assert_eq!(node, want_node, "{reason}");
                assert!(reason.contains(want), "{reason:?} lacks {want:?}");
            }
            other => panic!("expected MalformedOnnx for {want_node}, got {other:?}"),
        }
    }
    let conv = |w: &str| node("Conv", "conv0", &["input", w], "c", vec![pads_attr(1)]);
    let flat = |input: &str| node("Flatten", "flat0", &[input], "output", vec![]);
    // Reshape to a 2-D shape constant.
    let mut shape = tensor("shape", &[1, 2], vec![1.0, -1.0]);
    shape.data_type = pb::tensor_proto::DataType::Float as i32;
    let path = write_model(
        vec![node(
            "Reshape",
            "reshape0",
            &["input", "shape"],
            "output",
            vec![],
        )],
        vec![shape],
        &[1, 36],
    );
    expect_malformed(&path, "reshape0", "[1, 2]");
    // BatchNorm of 2 channels with a 1-value mean.
    let path = write_model(
        vec![
            conv("w"),
            node(
                "BatchNormalization",
                "bn0",
                &["c", "g", "beta", "m", "v"],
                "n",
                vec![],
            ),
            flat("n"),
        ],
        vec![
            tensor("w", &[2, 1, 3, 3], weights(18, 7)),
            tensor("g", &[2], vec![2.0, 1.0]),
            tensor("beta", &[2], vec![0.5, 0.0]),
            tensor("m", &[1], vec![0.1]),
            tensor("v", &[2], vec![4.0, 1.0]),
        ],
        &[1, 72],
    );
    expect_malformed(&path, "bn0", "mean of shape [1] for 2 channels");
    // A negative variance.
    let path = write_model(
        vec![
            conv("w"),
            node(
                "BatchNormalization",
                "bn1",
                &["c", "g", "g", "g", "v"],
                "n",
                vec![],
            ),
            flat("n"),
        ],
        vec![
            tensor("w", &[1, 1, 3, 3], weights(9, 7)),
            tensor("g", &[1], vec![1.0]),
            tensor("v", &[1], vec![-4.0]),
        ],
        &[1, 36],
    );
    expect_malformed(&path, "bn1", "var -4");
    // A node without an output.
    let mut relu = node("Relu", "relu0", &["input"], "", vec![]);
    relu.output.clear();
    let path = write_model(vec![relu], vec![], &[1, 1, 6, 6]);
    expect_malformed(&path, "relu0", "no output");
    // Raw data shorter than the dims.
    let mut w = tensor("w", &[1, 1, 3, 3], vec![]);
    w.raw_data = vec![0; 8 * 4];
    let path = write_model(vec![conv("w"), flat("c")], vec![w], &[1, 36]);
    expect_malformed(&path, "w", "32 bytes of raw data for dims [1, 1, 3, 3]");
    // A kernel_shape that is not the weight's, a bias of the wrong length.
    let kernel = pb::AttributeProto {
        name: "kernel_shape".into(),
        ints: vec![2, 2],
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ..Default::default()
    };
    let path = write_model(
        vec![
            node("Conv", "conv1", &["input", "w"], "c", vec![kernel]),
            flat("c"),
        ],
        vec![tensor("w", &[1, 1, 3, 3], weights(9, 8))],
        &[1, 16],
    );
    expect_malformed(&path, "conv1", "kernel_shape [2, 2]");
    let path = write_model(
        vec![
            node("Conv", "conv2", &["input", "w", "b"], "c", vec![]),
            flat("c"),
        ],
        vec![
            tensor("w", &[2, 1, 3, 3], weights(18, 9)),
            tensor("b", &[3], vec![0.0; 3]),
        ],
        &[1, 32],
    );
    expect_malformed(&path, "conv2", "bias of 3 values for 2 output channels");
}
