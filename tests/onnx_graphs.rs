//! The plaintext semantics of every operator the ONNX importer supports, on small graphs
//! built here (prost encoding of tract-onnx's protobuf types), across the opsets (11 to 18)
//! where an operator's form changed: each accepted graph is imported with `load_onnx` and
//! its `predict` compared elementwise with tract (an independent ONNX runtime) on three
//! inputs; each refused form is checked for the error variant, the operator and the node.
//!
//! The cases of one test are all run and their failures reported together, so that one
//! mismatch does not hide the others.

use std::panic::{catch_unwind, AssertUnwindSafe};

use cipherml::nn::{load_onnx, tract_reference, Activation, Join, Layer, NnError, Sequential};
use ndarray::{ArrayD, IxDyn};
use prost::Message;
use tract_onnx::pb;

use pb::attribute_proto::AttributeType;
use pb::tensor_proto::DataType;

// ---------------------------------------------------------------------------------------
// Building graphs.

/// A float constant.
fn tensor(name: &str, dims: &[i64], data: Vec<f32>) -> pb::TensorProto {
    assert_eq!(
        dims.iter().product::<i64>() as usize,
        data.len(),
        "tensor {name}"
    );
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        float_data: data,
        ..Default::default()
    }
}

/// An int64 constant of shape `dims` (`&[]` for a scalar).
fn ints_tensor(name: &str, dims: &[i64], data: Vec<i64>) -> pb::TensorProto {
    assert_eq!(
        dims.iter().product::<i64>() as usize,
        data.len(),
        "tensor {name}"
    );
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Int64 as i32,
        int64_data: data,
        ..Default::default()
    }
}

/// A 1-D int64 constant.
fn ints(name: &str, data: &[i64]) -> pb::TensorProto {
    ints_tensor(name, &[data.len() as i64], data.to_vec())
}

/// A float constant of deterministic values in [-0.8, 0.8], varying with `seed`.
fn rand(name: &str, dims: &[i64], seed: usize) -> pb::TensorProto {
    let n = dims.iter().product::<i64>() as usize;
    tensor(name, dims, weights(n, seed))
}

fn weights(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7 + seed * 13) % 17) as f32 - 8.0) / 10.0)
        .collect()
}

fn attr(name: &str, kind: AttributeType) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: kind as i32,
        ..Default::default()
    }
}

fn a_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        i,
        ..attr(name, AttributeType::Int)
    }
}

fn a_float(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        f,
        ..attr(name, AttributeType::Float)
    }
}

fn a_ints(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        ints: ints.to_vec(),
        ..attr(name, AttributeType::Ints)
    }
}

fn a_str(name: &str, s: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        s: s.as_bytes().to_vec(),
        ..attr(name, AttributeType::String)
    }
}

fn a_tensor(name: &str, t: pb::TensorProto) -> pb::AttributeProto {
    pb::AttributeProto {
        t: Some(t),
        ..attr(name, AttributeType::Tensor)
    }
}

/// A node with several outputs.
fn node_n(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

/// A node with one output.
fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    node_n(op, name, inputs, &[output], attrs)
}

/// A float tensor value, of shape `dims` if given.
fn value(name: &str, dims: Option<&[i64]>) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: dims.map(|dims| pb::TensorShapeProto {
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

/// A graph from `input` (of shape `input`, batch axis first) to `output`, at `opset`.
struct Graph {
    opset: i64,
    input: Vec<i64>,
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
}

fn graph(
    opset: i64,
    input: &[i64],
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
) -> Graph {
    Graph {
        opset,
        input: input.to_vec(),
        nodes,
        inits,
    }
}

fn write_model(g: &Graph) -> tempfile_path::Path {
    let model = pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: g.opset,
        }],
        graph: Some(pb::GraphProto {
            node: g.nodes.clone(),
            name: "g".into(),
            initializer: g.inits.clone(),
            input: vec![value("input", Some(&g.input))],
            output: vec![value("output", None)],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = tempfile_path::Path::new();
    std::fs::write(&path.0, model.encode_to_vec()).unwrap();
    path
}

/// A file in the temporary directory, removed when dropped.
mod tempfile_path {
    pub struct Path(pub std::path::PathBuf);
    impl Path {
        pub fn new() -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            Path(std::env::temp_dir().join(format!(
                "cipherml-onnx-graphs-{}-{}.onnx",
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

// ---------------------------------------------------------------------------------------
// Checking graphs.

/// Three deterministic samples of `shape` with positive and negative values.
fn samples(shape: &[usize]) -> Vec<ArrayD<f64>> {
    let n: usize = shape.iter().product();
    (0..3)
        .map(|k| {
            let v: Vec<f64> = (0..n)
                .map(|i| (i as f64 * 0.73 + k as f64 * 1.91).sin() * 2.0 + (k as f64 - 1.0) * 0.3)
                .collect();
            ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
        })
        .collect()
}

/// What a refusal must be.
enum Refusal {
    Unsupported,
    Malformed,
}

/// The results of the cases of one test.
#[derive(Default)]
struct Cases {
    passed: usize,
    failures: Vec<String>,
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".into())
}

impl Cases {
    /// Imports `g`, then compares `predict` with tract on three samples; the model if
    /// it imported and matched.
    fn check(&mut self, label: &str, g: Graph) -> Option<Sequential> {
        self.run(label, &g, &g)
    }

    /// As [`Cases::check`], with tract running `reference`, an equivalent graph, where
    /// tract mis-handles `g`.
    fn check_against(&mut self, label: &str, g: Graph, reference: Graph) -> Option<Sequential> {
        self.run(label, &g, &reference)
    }

    fn run(&mut self, label: &str, g: &Graph, reference: &Graph) -> Option<Sequential> {
        let label = format!("{label} (opset {})", g.opset);
        let path = write_model(g);
        let ref_path = write_model(reference);
        let sample: Vec<usize> = g.input[1..].iter().map(|&d| d as usize).collect();
        let run = catch_unwind(AssertUnwindSafe(|| -> Result<Sequential, String> {
            let model = load_onnx(&path.0).map_err(|e| format!("import failed: {e:?}"))?;
            for (k, x) in samples(&sample).iter().enumerate() {
                let theirs = match tract_reference(&ref_path.0, x) {
                    Ok(t) => t,
                    Err(e) => return Err(format!("tract failed: {e:?}")),
                };
                let ours = model
                    .predict(x)
                    .map_err(|e| format!("predict failed on sample {k}: {e:?}"))?;
                if ours.len() != theirs.len() {
                    return Err(format!(
                        "sample {k}: {} outputs (shape {:?}), tract {}",
                        ours.len(),
                        ours.shape(),
                        theirs.len()
                    ));
                }
                for (i, (a, b)) in ours.iter().zip(theirs.iter()).enumerate() {
                    let close = (a - b).abs() < 1e-4; // false for NaN
                    if !close {
                        return Err(format!(
                            "sample {k}, element {i}: ours {a}, tract {b}\n  ours  {:?}\n  tract {:?}",
                            ours.iter().collect::<Vec<_>>(),
                            theirs.iter().collect::<Vec<_>>()
                        ));
                    }
                }
            }
            Ok(model)
        }));
        match run {
            Ok(Ok(model)) => {
                self.passed += 1;
                Some(model)
            }
            Ok(Err(e)) => {
                self.failures.push(format!("{label}: {e}"));
                None
            }
            Err(p) => {
                self.failures
                    .push(format!("{label}: PANIC: {}", panic_text(p)));
                None
            }
        }
    }

    /// Imports `g`, which must be refused as `kind` naming `op` and `node`, with a reason
    /// that contains each of `words`.
    fn refuse(
        &mut self,
        label: &str,
        g: Graph,
        kind: Refusal,
        op: &str,
        node: &str,
        words: &[&str],
    ) {
        let label = format!("{label} (opset {})", g.opset);
        let path = write_model(&g);
        let got = match catch_unwind(AssertUnwindSafe(|| load_onnx(&path.0))) {
            Ok(r) => r,
            Err(p) => {
                self.failures
                    .push(format!("{label}: PANIC: {}", panic_text(p)));
                return;
            }
        };
        let fields = match (&kind, &got) {
            (Refusal::Unsupported, Err(NnError::UnsupportedOp { op, node, reason }))
            | (Refusal::Malformed, Err(NnError::MalformedOnnx { op, node, reason })) => {
                Some((op, node, reason))
            }
            _ => None,
        };
        match fields {
            Some((o, n, reason)) if o == op && n == node => {
                if let Some(w) = words.iter().find(|w| !reason.contains(*w)) {
                    self.failures
                        .push(format!("{label}: reason {reason:?} does not mention {w:?}"));
                } else {
                    self.passed += 1;
                }
            }
            _ => {
                let want = match kind {
                    Refusal::Unsupported => "UnsupportedOp",
                    Refusal::Malformed => "MalformedOnnx",
                };
                let got = match got {
                    Ok(m) => format!("Ok({:?})", m.layers()),
                    Err(e) => format!("{e:?}"),
                };
                self.failures.push(format!(
                    "{label}: expected {want} {{ op: {op:?}, node: {node:?} }}, got {got}"
                ));
            }
        }
    }

    /// Records a failed assertion on what a graph imported as.
    fn expect(&mut self, label: &str, ok: bool, model: &Sequential) {
        if !ok {
            self.failures
                .push(format!("{label}: imported as {:?}", model.layers()));
        }
    }

    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} case(s) failed ({} passed):\n{}",
            self.failures.len(),
            self.passed,
            self.failures.join("\n")
        );
    }
}

/// Whether some layer of the top-level chain satisfies `f`.
fn any_layer(layers: &[Layer], f: &dyn Fn(&Layer) -> bool) -> bool {
    layers.iter().any(f)
}

// ---------------------------------------------------------------------------------------
// Linear layers.

#[test]
fn gemm_and_matmul_match_tract() {
    let mut c = Cases::default();
    // Gemm: transB 0 and 1, alpha and beta, C of shape [out], [1, out] and [1].
    let mut opsets = [11, 13].iter().cycle();
    for trans_b in [0, 1] {
        let b_dims: &[i64] = if trans_b == 0 { &[5, 3] } else { &[3, 5] };
        for c_dims in [&[3][..], &[1, 3], &[1]] {
            let opset = *opsets.next().unwrap();
            let m = c.check(
                &format!("Gemm transB={trans_b} C{c_dims:?} alpha 0.5 beta 2"),
                graph(
                    opset,
                    &[1, 5],
                    vec![node(
                        "Gemm",
                        "gemm0",
                        &["input", "B", "C"],
                        "output",
                        vec![
                            a_int("transA", 0),
                            a_int("transB", trans_b),
                            a_float("alpha", 0.5),
                            a_float("beta", 2.0),
                        ],
                    )],
                    vec![rand("B", b_dims, 1), rand("C", c_dims, 2)],
                ),
            );
            if let Some(m) = m {
                c.expect(
                    "Gemm is one Dense layer",
                    matches!(m.layers(), [Layer::Dense { .. }]),
                    &m,
                );
            }
        }
    }
    c.check(
        "Gemm without C, default alpha",
        graph(
            13,
            &[1, 5],
            vec![node("Gemm", "gemm0", &["input", "B"], "output", vec![])],
            vec![rand("B", &[5, 4], 3)],
        ),
    );
    c.check(
        "Gemm, Relu, Gemm",
        graph(
            11,
            &[1, 5],
            vec![
                node(
                    "Gemm",
                    "g0",
                    &["input", "B0", "C0"],
                    "h",
                    vec![a_int("transB", 1)],
                ),
                node("Relu", "r0", &["h"], "r", vec![]),
                node("Gemm", "g1", &["r", "B1", "C1"], "output", vec![]),
            ],
            vec![
                rand("B0", &[4, 5], 4),
                rand("C0", &[4], 5),
                rand("B1", &[4, 2], 6),
                rand("C1", &[1, 2], 7),
            ],
        ),
    );
    c.refuse(
        "Gemm transA=1",
        graph(
            13,
            &[1, 5],
            vec![node(
                "Gemm",
                "gemm_ta",
                &["input", "B"],
                "output",
                vec![a_int("transA", 1)],
            )],
            vec![rand("B", &[1, 3], 1)],
        ),
        Refusal::Unsupported,
        "Gemm",
        "gemm_ta",
        &["transA"],
    );
    // MatMul by a constant weight, then Add of a bias (on either side).
    for (label, add_inputs) in [("x W + b", ["m", "b"]), ("b + x W", ["b", "m"])] {
        let m = c.check(
            &format!("MatMul then Add: {label}"),
            graph(
                13,
                &[1, 5],
                vec![
                    node("MatMul", "mm0", &["input", "W"], "m", vec![]),
                    node("Add", "add0", &add_inputs, "output", vec![]),
                ],
                vec![rand("W", &[5, 3], 8), rand("b", &[3], 9)],
            ),
        );
        if let Some(m) = m {
            c.expect(
                "MatMul + Add is a Dense layer first",
                matches!(m.layers().first(), Some(Layer::Dense { .. })),
                &m,
            );
        }
    }
    c.finish();
}

// ---------------------------------------------------------------------------------------
// Elementwise arithmetic.

#[test]
fn elementwise_arithmetic_matches_tract() {
    let mut c = Cases::default();
    let x = [1, 3, 4, 4];
    let scalar = || tensor("s", &[], vec![0.75]);
    let chan = || tensor("k", &[3, 1, 1], vec![0.5, -1.25, 2.0]);
    let binary =
        |op: &str, a: &str, b: &str| vec![node(op, &format!("{op}_0"), &[a, b], "output", vec![])];
    for op in ["Add", "Sub", "Mul", "Div"] {
        c.check(
            &format!("{op}(x, scalar)"),
            graph(13, &x, binary(op, "input", "s"), vec![scalar()]),
        );
        c.check(
            &format!("{op}(x, per-channel)"),
            graph(13, &x, binary(op, "input", "k"), vec![chan()]),
        );
    }
    for op in ["Add", "Sub", "Mul"] {
        c.check(
            &format!("{op}(scalar, x)"),
            graph(11, &x, binary(op, "s", "input"), vec![scalar()]),
        );
        c.check(
            &format!("{op}(per-channel, x)"),
            graph(11, &x, binary(op, "k", "input"), vec![chan()]),
        );
    }
    // A per-channel constant of rank 4 ([1, C, 1, 1]) and one of rank 1 on a vector.
    c.check(
        "Sub([1,C,1,1], x)",
        graph(
            13,
            &x,
            binary("Sub", "k", "input"),
            vec![tensor("k", &[1, 3, 1, 1], vec![0.1, 0.2, -0.3])],
        ),
    );
    c.check(
        "Mul(x, [F]) on a vector",
        graph(
            13,
            &[1, 4],
            binary("Mul", "input", "k"),
            vec![tensor("k", &[4], vec![0.1, -0.2, 0.3, 4.0])],
        ),
    );
    c.check(
        "Neg(x)",
        graph(
            13,
            &x,
            vec![node("Neg", "neg0", &["input"], "output", vec![])],
            vec![],
        ),
    );
    c.check(
        "Mul(x, x)",
        graph(13, &x, binary("Mul", "input", "input"), vec![]),
    );
    c.check(
        "Add(x, x)",
        graph(13, &x, binary("Add", "input", "input"), vec![]),
    );
    c.check(
        "a chain: (k - x), Relu, / s, + k, Neg, * k",
        graph(
            13,
            &x,
            vec![
                node("Sub", "sub0", &["k", "input"], "a", vec![]),
                node("Relu", "relu0", &["a"], "b", vec![]),
                node("Div", "div0", &["b", "s"], "d", vec![]),
                node("Add", "add0", &["d", "k"], "e", vec![]),
                node("Neg", "neg0", &["e"], "f", vec![]),
                node("Mul", "mul0", &["k", "f"], "output", vec![]),
            ],
            vec![scalar(), chan()],
        ),
    );
    c.refuse(
        "Div(per-channel, x)",
        graph(
            13,
            &x,
            vec![node("Div", "div_cx", &["k", "input"], "output", vec![])],
            vec![chan()],
        ),
        Refusal::Unsupported,
        "Div",
        "div_cx",
        &["divided by an activation"],
    );
    c.refuse(
        "Div(scalar, x)",
        graph(
            11,
            &x,
            vec![node("Div", "div_sx", &["s", "input"], "output", vec![])],
            vec![scalar()],
        ),
        Refusal::Unsupported,
        "Div",
        "div_sx",
        &[],
    );
    c.refuse(
        "Add(x, constant that varies over H and W)",
        graph(
            13,
            &x,
            vec![node("Add", "add_hw", &["input", "k"], "output", vec![])],
            vec![rand("k", &[1, 4, 4], 3)],
        ),
        Refusal::Unsupported,
        "Add",
        "add_hw",
        &[],
    );
    // Constants folded at import time: Mul(Add(c1, c2), c3), then more, added to x.
    // c1 is a Constant node with a tensor attribute, c3 one with `value_float`; tract
    // loads neither `value_floats` nor `value_ints`, so those forms are not run here.
    let fold = |opset: i64| {
        graph(
            opset,
            &x,
            vec![
                node(
                    "Constant",
                    "c1",
                    &[],
                    "c1",
                    vec![a_tensor(
                        "value",
                        tensor("", &[3, 1, 1], vec![1.0, -2.0, 0.5]),
                    )],
                ),
                node(
                    "Constant",
                    "c3",
                    &[],
                    "c3",
                    vec![a_float("value_float", 1.5)],
                ),
                node("Add", "fold_add", &["c1", "c2"], "t", vec![]),
                node("Mul", "fold_mul", &["t", "c3"], "u", vec![]),
                node("Sub", "fold_sub", &["u", "c4"], "v", vec![]),
                node("Div", "fold_div", &["v", "c5"], "w", vec![]),
                node("Neg", "fold_neg", &["w"], "n", vec![]),
                node("Add", "add0", &["input", "n"], "output", vec![]),
            ],
            vec![
                tensor("c2", &[3, 1, 1], vec![0.25, 0.5, -0.75]),
                tensor("c4", &[1], vec![0.125]),
                tensor("c5", &[], vec![-4.0]),
            ],
        )
    };
    for opset in [11, 13] {
        if let Some(m) = c.check("constants folded: Mul(Add(c1, c2), c3) ..", fold(opset)) {
            c.expect(
                "folded constants are one Affine layer",
                matches!(m.layers(), [Layer::Affine { .. }]),
                &m,
            );
        }
    }
    c.finish();
}

// ---------------------------------------------------------------------------------------
// Shapes.

/// `x.view(x.size(0), -1)` as PyTorch exports it, then a Gemm; Unsqueeze's axes as an
/// attribute before opset 13, as an input from 13.
fn view_graph(opset: i64) -> Graph {
    let unsqueeze = if opset < 13 {
        node(
            "Unsqueeze",
            "unsq0",
            &["n"],
            "u",
            vec![a_ints("axes", &[0])],
        )
    } else {
        node("Unsqueeze", "unsq0", &["n", "axes0"], "u", vec![])
    };
    graph(
        opset,
        &[1, 2, 3, 3],
        vec![
            node("Relu", "relu0", &["input"], "r", vec![]),
            node("Shape", "shape0", &["r"], "s", vec![]),
            node(
                "Gather",
                "gather0",
                &["s", "zero"],
                "n",
                vec![a_int("axis", 0)],
            ),
            unsqueeze,
            node(
                "Constant",
                "minus1",
                &[],
                "m1",
                vec![a_tensor("value", ints("", &[-1]))],
            ),
            node(
                "Concat",
                "cat0",
                &["u", "m1"],
                "shape",
                vec![a_int("axis", 0)],
            ),
            node("Reshape", "view0", &["r", "shape"], "f", vec![]),
            node(
                "Gemm",
                "fc0",
                &["f", "W", "b"],
                "output",
                vec![a_int("transB", 1)],
            ),
        ],
        vec![
            ints_tensor("zero", &[], vec![0]),
            ints("axes0", &[0]),
            rand("W", &[4, 18], 1),
            rand("b", &[4], 2),
        ],
    )
}

#[test]
fn shape_subgraphs_match_tract() {
    let mut c = Cases::default();
    for opset in [11, 12, 13, 15, 18] {
        c.check("x.view(x.size(0), -1), Gemm", view_graph(opset));
    }
    // Shape with start and end (opset 15): [1, C, -1], then a mean over the last axis.
    c.check(
        "Shape(start=1, end=2) -> Reshape [1, C, -1] -> ReduceMean",
        graph(
            15,
            &[1, 2, 3, 3],
            vec![
                node("Relu", "relu0", &["input"], "r", vec![]),
                node(
                    "Shape",
                    "shape0",
                    &["r"],
                    "c",
                    vec![a_int("start", 1), a_int("end", 2)],
                ),
                node(
                    "Concat",
                    "cat0",
                    &["one", "c", "m1"],
                    "shape",
                    vec![a_int("axis", 0)],
                ),
                node("Reshape", "rs0", &["r", "shape"], "f", vec![]),
                node(
                    "ReduceMean",
                    "mean0",
                    &["f"],
                    "output",
                    vec![a_ints("axes", &[2]), a_int("keepdims", 0)],
                ),
            ],
            vec![ints("one", &[1]), ints("m1", &[-1])],
        ),
    );
    c.check(
        "Shape(start=-1) -> Reshape [1, -1, W] -> ReduceMean axis 1",
        graph(
            15,
            &[1, 2, 3, 4],
            vec![
                node("Shape", "shape0", &["input"], "w", vec![a_int("start", -1)]),
                node(
                    "Concat",
                    "cat0",
                    &["one", "m1", "w"],
                    "shape",
                    vec![a_int("axis", 0)],
                ),
                node("Reshape", "rs0", &["input", "shape"], "f", vec![]),
                node(
                    "ReduceMean",
                    "mean0",
                    &["f"],
                    "output",
                    vec![a_ints("axes", &[1])],
                ),
            ],
            vec![ints("one", &[1]), ints("m1", &[-1])],
        ),
    );
    // ConstantOfShape: of a constant shape, and of the activation's shape.
    c.check(
        "ConstantOfShape([C,1,1], 0.25) added to x",
        graph(
            13,
            &[1, 3, 4, 4],
            vec![
                node(
                    "ConstantOfShape",
                    "cos0",
                    &["dims"],
                    "k",
                    vec![a_tensor("value", tensor("", &[1], vec![0.25]))],
                ),
                node("Add", "add0", &["input", "k"], "output", vec![]),
            ],
            vec![ints("dims", &[3, 1, 1])],
        ),
    );
    c.check(
        "ConstantOfShape(Shape(x), -0.5) times x",
        graph(
            13,
            &[1, 3, 4, 4],
            vec![
                node("Shape", "shape0", &["input"], "s", vec![]),
                node(
                    "ConstantOfShape",
                    "cos0",
                    &["s"],
                    "k",
                    vec![a_tensor("value", tensor("", &[1], vec![-0.5]))],
                ),
                node("Mul", "mul0", &["input", "k"], "output", vec![]),
            ],
            vec![],
        ),
    );
    // Slice of a constant with a negative step, added to a vector.
    for (label, starts, ends) in [("to the start", -1, -i64::MAX), ("between bounds", 7, 0)] {
        c.check(
            &format!("Slice(c, step -2, {label}) added to x"),
            graph(
                13,
                &[1, 4],
                vec![
                    node(
                        "Slice",
                        "slice0",
                        &["c", "starts", "ends", "axes", "steps"],
                        "k",
                        vec![],
                    ),
                    node("Add", "add0", &["input", "k"], "output", vec![]),
                ],
                vec![
                    tensor("c", &[8], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]),
                    ints("starts", &[starts]),
                    ints("ends", &[ends]),
                    ints("axes", &[0]),
                    ints("steps", &[-2]),
                ],
            ),
        );
    }
    // Unsqueeze and Squeeze of an activation (not of the batch axis), both forms.
    let squeezes = |opset: i64, squeeze_axes: &[i64]| {
        let (unsq, sq, mut inits) = if opset < 13 {
            (
                node(
                    "Unsqueeze",
                    "unsq0",
                    &["input"],
                    "u",
                    vec![a_ints("axes", &[2, 3])],
                ),
                node(
                    "Squeeze",
                    "sq0",
                    &["v"],
                    "s",
                    vec![a_ints("axes", squeeze_axes)],
                ),
                vec![],
            )
        } else {
            (
                node("Unsqueeze", "unsq0", &["input", "ax_u"], "u", vec![]),
                node("Squeeze", "sq0", &["v", "ax_s"], "s", vec![]),
                vec![ints("ax_u", &[2, 3]), ints("ax_s", squeeze_axes)],
            )
        };
        inits.push(tensor("k", &[4, 1, 1], vec![0.5, -0.5, 1.0, 2.0]));
        inits.push(rand("W", &[4, 3], 3));
        graph(
            opset,
            &[1, 4],
            vec![
                unsq,
                node("Add", "add0", &["u", "k"], "v", vec![]),
                sq,
                node("Gemm", "fc0", &["s", "W"], "output", vec![]),
            ],
            inits,
        )
    };
    for opset in [11, 13] {
        c.check(
            "Unsqueeze [F] -> [F,1,1], per-channel Add, Squeeze, Gemm",
            squeezes(opset, &[2, 3]),
        );
        // tract panics on negative Squeeze axes ("index < len" in its squeeze.rs), so
        // these are checked against tract on the same graph with axes [2, 3].
        c.check_against(
            "Squeeze with negative axes [-1, -2] (tract on axes [2, 3])",
            squeezes(opset, &[-1, -2]),
            squeezes(opset, &[2, 3]),
        );
    }
    c.check(
        "Squeeze of an image's H axis, then a product",
        graph(
            13,
            &[1, 2, 1, 3],
            vec![
                node("Squeeze", "sq0", &["input", "ax"], "s", vec![]),
                node("Relu", "relu0", &["s"], "output", vec![]),
            ],
            vec![ints("ax", &[2])],
        ),
    );
    c.refuse(
        "Squeeze without axes squeezes the batch axis",
        graph(
            13,
            &[1, 4, 1, 1],
            vec![node("Squeeze", "sq_all", &["input"], "output", vec![])],
            vec![],
        ),
        Refusal::Unsupported,
        "Squeeze",
        "sq_all",
        &["batch"],
    );
    c.check(
        "Cast of an activation to float",
        graph(
            13,
            &[1, 2, 3, 3],
            vec![
                node("Cast", "cast0", &["input"], "f", vec![a_int("to", 1)]),
                node("Relu", "relu0", &["f"], "output", vec![]),
            ],
            vec![],
        ),
    );
    // Reshape with 0 and -1, followed by layers that depend on the shape.
    // (tract cannot analyse a Conv after a Reshape whose target has 0 on the channel axis,
    // e.g. [0, 0, -1, 2]: "Failed analyse for node conv0 ConvHir"; so the 0 here is on the
    // batch axis only.)
    c.check(
        "Reshape [0, 2, -1, 2] then Conv",
        graph(
            13,
            &[1, 2, 4, 4],
            vec![
                node("Reshape", "rs0", &["input", "shape"], "r", vec![]),
                node(
                    "Conv",
                    "conv0",
                    &["r", "W"],
                    "output",
                    vec![a_ints("pads", &[1, 1, 1, 1])],
                ),
            ],
            vec![ints("shape", &[0, 2, -1, 2]), rand("W", &[2, 2, 3, 3], 4)],
        ),
    );
    // tract mis-handles a 0 off the batch axis ([0, 0, -1, 2] gives 2 outputs instead of
    // 4; [0, 0, 8, 2] panics with "not yet implemented" in tract-core's change_axes.rs), so
    // that graph is checked against tract on the same graph with the 0 spelled out.
    let mean_of = |target: &[i64], axis: i64| {
        graph(
            13,
            &[1, 2, 4, 4],
            vec![
                node("Reshape", "rs0", &["input", "shape"], "r", vec![]),
                node(
                    "ReduceMean",
                    "m0",
                    &["r"],
                    "output",
                    vec![a_ints("axes", &[axis])],
                ),
            ],
            vec![ints("shape", target)],
        )
    };
    for target in [[0, 0, -1, 2], [0, 0, 8, 2]] {
        c.check_against(
            &format!("Reshape {target:?} then ReduceMean (tract on [1, 2, -1, 2])"),
            mean_of(&target, 2),
            mean_of(&[1, 2, -1, 2], 2),
        );
    }
    c.check(
        "Reshape [0, -1, 2] then ReduceMean",
        mean_of(&[0, -1, 2], 1),
    );
    c.check(
        "Reshape [0, -1] then Gemm",
        graph(
            11,
            &[1, 2, 4, 4],
            vec![
                node("Reshape", "rs0", &["input", "shape"], "r", vec![]),
                node("Gemm", "fc0", &["r", "W"], "output", vec![]),
            ],
            vec![ints("shape", &[0, -1]), rand("W", &[32, 3], 5)],
        ),
    );
    // Flatten at axis 1 (and the default), 2 and 0.
    for (axis, opset) in [(Some(1), 11), (None, 13), (Some(2), 13), (Some(0), 13)] {
        let attrs = axis.map(|a| vec![a_int("axis", a)]).unwrap_or_default();
        let mut nodes = vec![node("Flatten", "flat0", &["input"], "f", attrs)];
        let mut inits = vec![];
        if axis.unwrap_or(1) == 1 {
            nodes.push(node("Gemm", "fc0", &["f", "W"], "output", vec![]));
            inits.push(rand("W", &[24, 3], 6));
        } else {
            nodes.push(node("Relu", "relu0", &["f"], "output", vec![]));
        }
        c.check(
            &format!("Flatten axis {axis:?}"),
            graph(opset, &[1, 2, 3, 4], nodes, inits),
        );
    }
    // Transpose of an NHWC input to NCHW, then a Conv.
    c.check(
        "Transpose NHWC -> NCHW then Conv",
        graph(
            13,
            &[1, 6, 6, 2],
            vec![
                node(
                    "Transpose",
                    "tr0",
                    &["input"],
                    "t",
                    vec![a_ints("perm", &[0, 3, 1, 2])],
                ),
                node(
                    "Conv",
                    "conv0",
                    &["t", "W", "B"],
                    "output",
                    vec![
                        a_ints("pads", &[1, 1, 1, 1]),
                        a_ints("kernel_shape", &[3, 3]),
                    ],
                ),
            ],
            vec![rand("W", &[3, 2, 3, 3], 7), rand("B", &[3], 8)],
        ),
    );
    c.refuse(
        "Transpose that moves the batch axis",
        graph(
            13,
            &[1, 2, 3, 3],
            vec![node(
                "Transpose",
                "tr_b",
                &["input"],
                "output",
                vec![a_ints("perm", &[1, 0, 2, 3])],
            )],
            vec![],
        ),
        Refusal::Unsupported,
        "Transpose",
        "tr_b",
        &["batch"],
    );
    c.finish();
}

// ---------------------------------------------------------------------------------------
// Convolutions and batch normalization.

#[test]
fn convolutions_and_batch_norm_match_tract() {
    let mut c = Cases::default();
    let x = [1, 4, 6, 6];
    let conv = |label: &str, w: &[i64], bias: bool, attrs: Vec<pb::AttributeProto>| {
        let mut inputs = vec!["input", "W"];
        let mut inits = vec![rand("W", w, 1)];
        if bias {
            inputs.push("B");
            inits.push(rand("B", &[w[0]], 2));
        }
        (
            label.to_string(),
            graph(
                13,
                &x,
                vec![node("Conv", "conv0", &inputs, "output", attrs)],
                inits,
            ),
        )
    };
    let cases = vec![
        conv(
            "depthwise (group = C), bias",
            &[4, 1, 3, 3],
            true,
            vec![a_int("group", 4), a_ints("pads", &[1, 1, 1, 1])],
        ),
        conv(
            "depthwise with multiplier 2",
            &[8, 1, 3, 3],
            false,
            vec![a_int("group", 4)],
        ),
        conv(
            "group 2, no bias",
            &[6, 2, 3, 3],
            false,
            vec![a_int("group", 2)],
        ),
        conv(
            "group 2, bias, pads 1",
            &[4, 2, 3, 3],
            true,
            vec![a_int("group", 2), a_ints("pads", &[1, 1, 1, 1])],
        ),
        conv(
            "asymmetric pads [0,1,1,0], bias",
            &[3, 4, 2, 2],
            true,
            vec![a_ints("pads", &[0, 1, 1, 0])],
        ),
        conv(
            "asymmetric pads [0,1,1,0], no bias",
            &[3, 4, 3, 3],
            false,
            vec![a_ints("pads", &[0, 1, 1, 0])],
        ),
        conv(
            "strides 2, pads 1, bias",
            &[2, 4, 3, 3],
            true,
            vec![a_ints("strides", &[2, 2]), a_ints("pads", &[1, 1, 1, 1])],
        ),
        conv(
            "strides 2, no pads, no bias",
            &[2, 4, 2, 2],
            false,
            vec![a_ints("strides", &[2, 2])],
        ),
        conv(
            "SAME_UPPER, stride 1",
            &[3, 4, 3, 3],
            true,
            vec![a_str("auto_pad", "SAME_UPPER")],
        ),
        conv(
            "SAME_UPPER, stride 2 (uneven padding)",
            &[3, 4, 3, 3],
            false,
            vec![a_str("auto_pad", "SAME_UPPER"), a_ints("strides", &[2, 2])],
        ),
        conv(
            "SAME_UPPER, even kernel 2",
            &[2, 4, 2, 2],
            true,
            vec![a_str("auto_pad", "SAME_UPPER")],
        ),
        conv(
            "VALID, bias",
            &[2, 4, 3, 3],
            true,
            vec![a_str("auto_pad", "VALID")],
        ),
        conv(
            "VALID, no bias",
            &[2, 4, 3, 3],
            false,
            vec![
                a_str("auto_pad", "VALID"),
                a_ints("kernel_shape", &[3, 3]),
                a_ints("dilations", &[1, 1]),
            ],
        ),
    ];
    for (label, g) in cases {
        let asym = label.starts_with("asymmetric");
        if let Some(m) = c.check(&format!("Conv {label}"), g) {
            if asym {
                c.expect(
                    "asymmetric pads are a Pad layer before the Conv",
                    matches!(m.layers(), [Layer::Pad { .. }, Layer::Conv2d { .. }]),
                    &m,
                );
            }
        }
    }
    let bn_inits = |c: i64, seed: usize| {
        vec![
            rand("scale", &[c], seed),
            rand("bias", &[c], seed + 1),
            rand("mean", &[c], seed + 2),
            tensor("var", &[c], (0..c).map(|i| 0.5 + i as f32 * 0.3).collect()),
        ]
    };
    let bn = |input: &str, eps: Option<f32>| {
        node(
            "BatchNormalization",
            "bn0",
            &[input, "scale", "bias", "mean", "var"],
            "output",
            eps.map(|e| vec![a_float("epsilon", e)]).unwrap_or_default(),
        )
    };
    for opset in [11, 15] {
        c.check(
            "BatchNormalization after a Relu",
            graph(
                opset,
                &[1, 3, 4, 4],
                vec![
                    node("Relu", "relu0", &["input"], "r", vec![]),
                    bn("r", Some(1e-3)),
                ],
                bn_inits(3, 1),
            ),
        );
    }
    let mut inits = bn_inits(3, 4);
    inits.push(rand("W", &[3, 4, 3, 3], 9));
    inits.push(rand("B", &[3], 10));
    if let Some(m) = c.check(
        "BatchNormalization after a Conv (folded)",
        graph(
            13,
            &x,
            vec![
                node(
                    "Conv",
                    "conv0",
                    &["input", "W", "B"],
                    "h",
                    vec![a_ints("pads", &[1, 1, 1, 1])],
                ),
                bn("h", None),
            ],
            inits,
        ),
    ) {
        c.expect(
            "BatchNormalization folded into the Conv",
            matches!(m.layers(), [Layer::Conv2d { .. }]),
            &m,
        );
    }
    let mut inits = bn_inits(3, 2);
    inits.push(rand("W", &[5, 3], 11));
    c.check(
        "BatchNormalization of a vector after a Gemm",
        graph(
            13,
            &[1, 5],
            vec![
                node("Gemm", "fc0", &["input", "W"], "h", vec![]),
                bn("h", Some(1e-2)),
            ],
            inits,
        ),
    );
    c.finish();
}

// ---------------------------------------------------------------------------------------
// Padding, pooling and means.

#[test]
fn padding_pooling_and_means_match_tract() {
    let mut c = Cases::default();
    let x = [1, 2, 6, 6];
    let avg = |input: &str, attrs: Vec<pb::AttributeProto>| {
        node("AveragePool", "pool0", &[input], "output", attrs)
    };
    let k2s2 = || vec![a_ints("kernel_shape", &[2, 2]), a_ints("strides", &[2, 2])];
    for opset in [11, 13, 18] {
        c.check(
            "Pad (pads as an input) then AveragePool",
            graph(
                opset,
                &x,
                vec![
                    node("Pad", "pad0", &["input", "pads"], "p", vec![]),
                    avg("p", k2s2()),
                ],
                vec![ints("pads", &[0, 0, 1, 1, 0, 0, 1, 1])],
            ),
        );
    }
    c.check(
        "Pad (asymmetric, with a zero constant_value) then AveragePool",
        graph(
            13,
            &x,
            vec![
                node(
                    "Pad",
                    "pad0",
                    &["input", "pads", "zero"],
                    "p",
                    vec![a_str("mode", "constant")],
                ),
                avg("p", vec![a_ints("kernel_shape", &[3, 3])]),
            ],
            vec![
                ints("pads", &[0, 0, 2, 0, 0, 0, 0, 1]),
                tensor("zero", &[], vec![0.0]),
            ],
        ),
    );
    // Before opset 11 the pads are an attribute (tract loads opset 10's Pad).
    c.check(
        "Pad (pads as an attribute) then AveragePool",
        graph(
            10,
            &x,
            vec![
                node(
                    "Pad",
                    "pad0",
                    &["input"],
                    "p",
                    vec![a_ints("pads", &[0, 0, 1, 1, 0, 0, 1, 1])],
                ),
                avg("p", k2s2()),
            ],
            vec![],
        ),
    );
    c.check(
        "AveragePool with pads and count_include_pad = 1",
        graph(
            13,
            &x,
            vec![avg(
                "input",
                vec![
                    a_ints("kernel_shape", &[3, 3]),
                    a_ints("pads", &[1, 1, 1, 1]),
                    a_int("count_include_pad", 1),
                ],
            )],
            vec![],
        ),
    );
    c.check(
        "AveragePool k2 s2 without pads",
        graph(11, &x, vec![avg("input", k2s2())], vec![]),
    );
    c.refuse(
        "AveragePool with pads and count_include_pad = 0",
        graph(
            13,
            &x,
            vec![node(
                "AveragePool",
                "avg_pad",
                &["input"],
                "output",
                vec![
                    a_ints("kernel_shape", &[3, 3]),
                    a_ints("pads", &[1, 1, 1, 1]),
                    a_int("count_include_pad", 0),
                ],
            )],
            vec![],
        ),
        Refusal::Unsupported,
        "AveragePool",
        "avg_pad",
        &["count_include_pad"],
    );
    c.check(
        "MaxPool k2 s2",
        graph(
            13,
            &x,
            vec![node("MaxPool", "max0", &["input"], "output", k2s2())],
            vec![],
        ),
    );
    c.refuse(
        "MaxPool with pads",
        graph(
            13,
            &x,
            vec![node(
                "MaxPool",
                "max_pad",
                &["input"],
                "output",
                vec![
                    a_ints("kernel_shape", &[3, 3]),
                    a_ints("pads", &[1, 1, 1, 1]),
                ],
            )],
            vec![],
        ),
        Refusal::Unsupported,
        "MaxPool",
        "max_pad",
        &["padding"],
    );
    c.check(
        "GlobalAveragePool",
        graph(
            13,
            &[1, 3, 4, 5],
            vec![node(
                "GlobalAveragePool",
                "gap0",
                &["input"],
                "output",
                vec![],
            )],
            vec![],
        ),
    );
    c.check(
        "GlobalAveragePool then Flatten and Gemm",
        graph(
            13,
            &[1, 3, 4, 4],
            vec![
                node("GlobalAveragePool", "gap0", &["input"], "g", vec![]),
                node("Flatten", "flat0", &["g"], "f", vec![]),
                node("Gemm", "fc0", &["f", "W"], "output", vec![]),
            ],
            vec![rand("W", &[3, 2], 1)],
        ),
    );
    c.check(
        "GlobalMaxPool on a square image",
        graph(
            13,
            &[1, 3, 4, 4],
            vec![node("GlobalMaxPool", "gmp0", &["input"], "output", vec![])],
            vec![],
        ),
    );
    // ReduceMean: axes as an attribute (opset 13), as an input (opset 18).
    let mean = |opset: i64, input: &[i64], axes: &[i64], keepdims: i64, name: &str| {
        let (inputs, mut attrs, inits) = if opset >= 18 {
            (vec!["input", "axes"], vec![], vec![ints("axes", axes)])
        } else {
            (vec!["input"], vec![a_ints("axes", axes)], vec![])
        };
        attrs.push(a_int("keepdims", keepdims));
        graph(
            opset,
            input,
            vec![node("ReduceMean", name, &inputs, "output", attrs)],
            inits,
        )
    };
    for opset in [11, 13, 18] {
        for keepdims in [0, 1] {
            c.check(
                &format!("ReduceMean axes [2,3] keepdims {keepdims}"),
                mean(opset, &[1, 3, 4, 5], &[2, 3], keepdims, "mean0"),
            );
            c.check(
                &format!("ReduceMean axes [1,2] of NHWC keepdims {keepdims}"),
                mean(opset, &[1, 4, 5, 3], &[1, 2], keepdims, "mean0"),
            );
            c.check(
                &format!("ReduceMean axes [-1] keepdims {keepdims}"),
                mean(opset, &[1, 3, 4, 5], &[-1], keepdims, "mean0"),
            );
        }
    }
    c.check(
        "ReduceMean [2,3] keepdims 0, then Gemm",
        graph(
            13,
            &[1, 3, 4, 4],
            vec![
                node(
                    "ReduceMean",
                    "mean0",
                    &["input"],
                    "m",
                    vec![a_ints("axes", &[2, 3]), a_int("keepdims", 0)],
                ),
                node("Gemm", "fc0", &["m", "W"], "output", vec![]),
            ],
            vec![rand("W", &[3, 2], 2)],
        ),
    );
    for opset in [13, 18] {
        c.refuse(
            "ReduceMean over the batch axis",
            mean(opset, &[1, 3, 4, 4], &[0], 1, "mean_b"),
            Refusal::Unsupported,
            "ReduceMean",
            "mean_b",
            &["batch"],
        );
    }
    c.refuse(
        "ReduceMean over all axes (none given)",
        graph(
            13,
            &[1, 3, 4, 4],
            vec![node("ReduceMean", "mean_all", &["input"], "output", vec![])],
            vec![],
        ),
        Refusal::Unsupported,
        "ReduceMean",
        "mean_all",
        &["batch"],
    );
    c.finish();
}

// ---------------------------------------------------------------------------------------
// Activations.

#[test]
fn activations_match_tract() {
    let mut c = Cases::default();
    let vector = [1, 6];
    let image = [1, 3, 3, 3];
    let unary = |op: &str, attrs: Vec<pb::AttributeProto>| {
        vec![node(op, &format!("{op}_0"), &["input"], "output", attrs)]
    };
    let simple: Vec<(&str, i64, Vec<pb::AttributeProto>)> = vec![
        ("Relu", 13, vec![]),
        ("Sigmoid", 13, vec![]),
        ("Tanh", 13, vec![]),
        ("LeakyRelu", 11, vec![]),
        ("LeakyRelu", 16, vec![a_float("alpha", 0.2)]),
        ("HardSigmoid", 11, vec![]),
        (
            "HardSigmoid",
            13,
            vec![a_float("alpha", 0.3), a_float("beta", 0.4)],
        ),
        ("HardSwish", 14, vec![]),
    ];
    for (op, opset, attrs) in simple {
        let label = format!(
            "{op} {:?}",
            attrs.iter().map(|a| (&a.name, a.f)).collect::<Vec<_>>()
        );
        for shape in [&vector[..], &image] {
            c.check(
                &format!("{label} on {shape:?}"),
                graph(opset, shape, unary(op, attrs.clone()), vec![]),
            );
        }
    }
    if let Some(m) = c.check(
        "LeakyRelu alpha 0.2 is the activation",
        graph(
            13,
            &vector,
            unary("LeakyRelu", vec![a_float("alpha", 0.2)]),
            vec![],
        ),
    ) {
        c.expect(
            "LeakyRelu keeps its alpha",
            matches!(m.layers(), [Layer::Activation(Activation::LeakyRelu { alpha })] if (alpha - 0.2).abs() < 1e-6),
            &m,
        );
    }
    // PRelu: per-channel slopes [C,1,1] and one slope [1].
    for (label, dims, slopes) in [
        (
            "per channel [C,1,1]",
            &[3i64, 1, 1][..],
            vec![0.1, -0.5, 2.0],
        ),
        ("one slope [1]", &[1], vec![0.25]),
    ] {
        for opset in [11, 16] {
            c.check(
                &format!("PRelu {label}"),
                graph(
                    opset,
                    &image,
                    vec![node(
                        "PRelu",
                        "prelu0",
                        &["input", "slope"],
                        "output",
                        vec![],
                    )],
                    vec![tensor("slope", dims, slopes.clone())],
                ),
            );
        }
    }
    // Clip with attributes (tract reads them from opset 6 to 10).
    for opset in [6, 10] {
        c.check(
            "Clip min/max attributes",
            graph(
                opset,
                &image,
                unary("Clip", vec![a_float("min", -0.5), a_float("max", 0.7)]),
                vec![],
            ),
        );
    }
    c.check(
        "Clip min attribute only",
        graph(
            10,
            &vector,
            unary("Clip", vec![a_float("min", -0.25)]),
            vec![],
        ),
    );
    // Clip with inputs (opset 11+): both, only min, only max (an empty name for min).
    let min = || tensor("min", &[], vec![-0.5]);
    let max = || tensor("max", &[], vec![0.7]);
    for opset in [11, 13] {
        let clip = |inputs: &[&str]| vec![node("Clip", "clip0", inputs, "output", vec![])];
        c.check(
            "Clip min and max inputs",
            graph(
                opset,
                &image,
                clip(&["input", "min", "max"]),
                vec![min(), max()],
            ),
        );
        c.check(
            "Clip min input only",
            graph(opset, &image, clip(&["input", "min"]), vec![min()]),
        );
        c.check(
            "Clip max input only",
            graph(opset, &image, clip(&["input", "", "max"]), vec![max()]),
        );
        if let Some(m) = c.check(
            "Clip(0, none) is a ReLU",
            graph(
                opset,
                &image,
                clip(&["input", "zero"]),
                vec![tensor("zero", &[], vec![0.0])],
            ),
        ) {
            c.expect(
                "Clip(0, none) is a ReLU",
                matches!(m.layers(), [Layer::Relu]),
                &m,
            );
        }
        c.check(
            "Clip without bounds",
            graph(opset, &vector, clip(&["input"]), vec![]),
        );
    }
    // Softmax on a vector: default axis 1 (opset 11) and -1 (opset 13).
    for opset in [11, 13] {
        c.check(
            "Softmax on a vector, default axis",
            graph(opset, &vector, unary("Softmax", vec![]), vec![]),
        );
    }
    c.check(
        "Softmax on a vector, axis 1",
        graph(
            13,
            &vector,
            unary("Softmax", vec![a_int("axis", 1)]),
            vec![],
        ),
    );
    c.check(
        "Softmax on a vector, axis -1",
        graph(
            11,
            &vector,
            unary("Softmax", vec![a_int("axis", -1)]),
            vec![],
        ),
    );
    for opset in [11, 13] {
        c.refuse(
            "Softmax on a (C, H, W) tensor",
            graph(
                opset,
                &image,
                vec![node("Softmax", "softmax_img", &["input"], "output", vec![])],
                vec![],
            ),
            Refusal::Unsupported,
            "Softmax",
            "softmax_img",
            &["vectors"],
        );
    }
    c.finish();
}

// ---------------------------------------------------------------------------------------
// Identity, Dropout and joins of branches.

#[test]
fn identity_dropout_and_joins_match_tract() {
    let mut c = Cases::default();
    let x = [1, 2, 6, 6];
    c.check(
        "Identity then Relu",
        graph(
            13,
            &x,
            vec![
                node("Identity", "id0", &["input"], "i", vec![]),
                node("Relu", "relu0", &["i"], "output", vec![]),
            ],
            vec![],
        ),
    );
    c.check(
        "Dropout (one output, opset 13)",
        graph(
            13,
            &x,
            vec![
                node("Relu", "relu0", &["input"], "r", vec![]),
                node("Dropout", "drop0", &["r"], "output", vec![]),
            ],
            vec![],
        ),
    );
    c.check(
        "Dropout with a ratio attribute (opset 11)",
        graph(
            11,
            &x,
            vec![
                node(
                    "Dropout",
                    "drop0",
                    &["input"],
                    "d",
                    vec![a_float("ratio", 0.3)],
                ),
                node("Relu", "relu0", &["d"], "output", vec![]),
            ],
            vec![],
        ),
    );
    for opset in [11, 13] {
        c.check(
            "Dropout with its mask output",
            graph(
                opset,
                &x,
                vec![
                    node_n("Dropout", "drop0", &["input"], &["d", "mask"], vec![]),
                    node("Sigmoid", "sig0", &["d"], "output", vec![]),
                ],
                vec![],
            ),
        );
    }
    // Sum of three branches from one tensor.
    if let Some(m) = c.check(
        "Sum of three branches (3x3 conv, 1x1 conv, Relu)",
        graph(
            13,
            &x,
            vec![
                node(
                    "Conv",
                    "a",
                    &["input", "W1", "B1"],
                    "a",
                    vec![a_ints("pads", &[1, 1, 1, 1])],
                ),
                node("Conv", "b", &["input", "W2"], "b", vec![]),
                node("Relu", "c", &["input"], "c", vec![]),
                node("Sum", "sum0", &["a", "b", "c"], "output", vec![]),
            ],
            vec![
                rand("W1", &[2, 2, 3, 3], 1),
                rand("B1", &[2], 2),
                rand("W2", &[2, 2, 1, 1], 3),
            ],
        ),
    ) {
        c.expect(
            "Sum of three branches is one join",
            any_layer(m.layers(), &|l| {
                matches!(l, Layer::Branches { .. } | Layer::Residual { .. })
            }),
            &m,
        );
    }
    // Concat of two branches on the channel axis, then a 1x1 conv that mixes them.
    c.check(
        "Concat of two branches on axis 1, then a 1x1 conv",
        graph(
            13,
            &x,
            vec![
                node("Relu", "r0", &["input"], "r", vec![]),
                node(
                    "Conv",
                    "a",
                    &["r", "W1"],
                    "a",
                    vec![a_ints("pads", &[1, 1, 1, 1])],
                ),
                node("Sigmoid", "b", &["r"], "b", vec![]),
                node("Concat", "cat0", &["a", "b"], "k", vec![a_int("axis", 1)]),
                node("Conv", "mix", &["k", "W2", "B2"], "output", vec![]),
            ],
            vec![
                rand("W1", &[3, 2, 3, 3], 4),
                rand("W2", &[2, 5, 1, 1], 5),
                rand("B2", &[2], 6),
            ],
        ),
    );
    c.check(
        "Concat on axis -3 (the channel axis)",
        graph(
            11,
            &x,
            vec![
                node("Relu", "a", &["input"], "a", vec![]),
                node("Neg", "b", &["input"], "b", vec![]),
                node(
                    "Concat",
                    "cat0",
                    &["b", "a"],
                    "output",
                    vec![a_int("axis", -3)],
                ),
            ],
            vec![],
        ),
    );
    // A downsampling residual block: a projection (1x1 stride-2 conv) plus a strided 3x3.
    c.check(
        "Add of a 1x1 stride-2 projection and a strided 3x3 conv",
        graph(
            13,
            &x,
            vec![
                node(
                    "Conv",
                    "proj",
                    &["input", "Wp"],
                    "p",
                    vec![a_ints("strides", &[2, 2]), a_ints("kernel_shape", &[1, 1])],
                ),
                node(
                    "Conv",
                    "main",
                    &["input", "Wm", "Bm"],
                    "m",
                    vec![a_ints("strides", &[2, 2]), a_ints("pads", &[1, 1, 1, 1])],
                ),
                node("Relu", "relu0", &["m"], "mr", vec![]),
                node("Add", "add0", &["mr", "p"], "s", vec![]),
                node("Relu", "relu1", &["s"], "output", vec![]),
            ],
            vec![
                rand("Wp", &[3, 2, 1, 1], 7),
                rand("Wm", &[3, 2, 3, 3], 8),
                rand("Bm", &[3], 9),
            ],
        ),
    );
    if let Some(m) = c.check(
        "Add of an identity shortcut and a conv block",
        graph(
            13,
            &x,
            vec![
                node(
                    "Conv",
                    "c0",
                    &["input", "W"],
                    "h",
                    vec![a_ints("pads", &[1, 1, 1, 1])],
                ),
                node("Relu", "r0", &["h"], "r", vec![]),
                node("Add", "add0", &["input", "r"], "output", vec![]),
            ],
            vec![rand("W", &[2, 2, 3, 3], 10)],
        ),
    ) {
        c.expect(
            "identity shortcut is a Residual",
            any_layer(m.layers(), &|l| matches!(l, Layer::Residual { .. })),
            &m,
        );
    }
    c.refuse(
        "Concat on axis 2",
        graph(
            13,
            &x,
            vec![
                node("Relu", "a", &["input"], "a", vec![]),
                node("Neg", "b", &["input"], "b", vec![]),
                node(
                    "Concat",
                    "cat_h",
                    &["a", "b"],
                    "output",
                    vec![a_int("axis", 2)],
                ),
            ],
            vec![],
        ),
        Refusal::Unsupported,
        "Concat",
        "cat_h",
        &["axis 2"],
    );
    c.refuse(
        "Sub of two activations",
        graph(
            13,
            &x,
            vec![
                node("Relu", "a", &["input"], "a", vec![]),
                node("Sub", "sub_aa", &["a", "input"], "output", vec![]),
            ],
            vec![],
        ),
        Refusal::Unsupported,
        "Sub",
        "sub_aa",
        &[],
    );
    // The join kinds are public; a Concat of branches is a Join::Concat block.
    if let Some(m) = c.check(
        "Concat of two branches is a Concat join",
        graph(
            13,
            &x,
            vec![
                node("Relu", "a", &["input"], "a", vec![]),
                node("Sigmoid", "b", &["input"], "b", vec![]),
                node(
                    "Concat",
                    "cat0",
                    &["a", "b"],
                    "output",
                    vec![a_int("axis", 1)],
                ),
            ],
            vec![],
        ),
    ) {
        c.expect(
            "Concat join",
            any_layer(m.layers(), &|l| {
                matches!(
                    l,
                    Layer::Branches {
                        join: Join::Concat,
                        ..
                    }
                )
            }),
            &m,
        );
    }
    c.finish();
}

// ---------------------------------------------------------------------------------------
// Unknown operators.

#[test]
fn unknown_operators_are_refused_with_the_opset() {
    let mut c = Cases::default();
    for opset in [11, 13, 17] {
        c.refuse(
            "Erf",
            graph(
                opset,
                &[1, 6],
                vec![
                    node("Relu", "relu0", &["input"], "r", vec![]),
                    node("Erf", "erf_7", &["r"], "output", vec![]),
                ],
                vec![],
            ),
            Refusal::Unsupported,
            "Erf",
            "erf_7",
            &[&format!("opset {opset}")],
        );
    }
    c.refuse(
        "Relu of the custom domain",
        graph(
            13,
            &[1, 6],
            vec![pb::NodeProto {
                domain: "com.example".into(),
                ..node("Relu", "relu_x", &["input"], "output", vec![])
            }],
            vec![],
        ),
        Refusal::Unsupported,
        "Relu",
        "relu_x",
        &["com.example"],
    );
    c.refuse(
        "Conv with a non-constant weight",
        graph(
            13,
            &[1, 2, 4, 4],
            vec![
                node("Relu", "r0", &["input"], "w", vec![]),
                node("Conv", "conv_w", &["input", "w"], "output", vec![]),
            ],
            vec![],
        ),
        Refusal::Unsupported,
        "Conv",
        "conv_w",
        &[],
    );
    c.refuse(
        "Conv whose weight does not match the group",
        graph(
            13,
            &[1, 4, 4, 4],
            vec![node(
                "Conv",
                "conv_g",
                &["input", "W"],
                "output",
                vec![a_int("group", 3)],
            )],
            vec![rand("W", &[3, 1, 3, 3], 1)],
        ),
        Refusal::Malformed,
        "Conv",
        "conv_g",
        &["group"],
    );
    c.finish();
}
