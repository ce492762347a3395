//! ONNX import through `tract-onnx`'s protobuf model (no hand-written protobuf decoder):
//! constants and BatchNorm are folded, supported operators map to [`Layer`]s, an `Add` of an
//! earlier tensor `x` and the end of the chain that started from `x` becomes a
//! [`Layer::Residual`], anything else is refused with an error naming the operator and the
//! node.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{Array1, Array2, ArrayD, Ix1, Ix2, Ix4, IxDyn};
use tract_onnx::pb::{self, NodeProto};
use tract_onnx::prelude::Framework;

use super::{Layer, NnError, Sequential};

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attr_i(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}

fn attr_f(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map_or(default, |a| a.f)
}

fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

fn unsupported(node: &NodeProto, reason: impl Into<String>) -> NnError {
    NnError::UnsupportedOp {
        op: node.op_type.clone(),
        node: node.name.clone(),
        reason: reason.into(),
    }
}

fn tensor(t: &pb::TensorProto, node: &str) -> Result<ArrayD<f64>, NnError> {
    let loaded =
        tract_onnx::tensor::load_tensor(&tract_onnx::data_resolver::FopenDataResolver, t, None)
            .and_then(|t| t.cast_to::<f64>().map(|c| c.into_owned()))
            .and_then(|t| t.into_array::<f64>())
            .map_err(|e| NnError::UnsupportedOp {
                op: "tensor".into(),
                node: node.into(),
                reason: format!("constant {:?}: {e}", t.name),
            })?;
    Ok(loaded)
}

/// One uniform value of a per-axis ONNX attribute (strides, pads, kernel), or an error.
fn uniform(node: &NodeProto, name: &str, default: usize) -> Result<usize, NnError> {
    match attr_ints(node, name) {
        None => Ok(default),
        Some(v) if v.is_empty() => Ok(default),
        Some(v) => {
            if v.iter().all(|&x| x == v[0]) && v[0] >= 0 {
                Ok(v[0] as usize)
            } else {
                Err(unsupported(node, format!("non-uniform {name} {v:?}")))
            }
        }
    }
}

/// Loads an ONNX model file as a [`Sequential`] model.
pub fn load_onnx(path: impl AsRef<Path>) -> Result<Sequential, NnError> {
    let path = path.as_ref();
    let proto = tract_onnx::onnx()
        .proto_model_for_path(path)
        .map_err(|e| NnError::Onnx {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    from_proto(proto, &path.display().to_string())
}

/// As [`load_onnx`], from the bytes of an ONNX file (e.g. a model embedded in a program);
/// `name` stands for the path in errors.
pub fn load_onnx_bytes(name: &str, bytes: &[u8]) -> Result<Sequential, NnError> {
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| NnError::Onnx {
            path: name.to_string(),
            reason: e.to_string(),
        })?;
    from_proto(proto, name)
}

fn from_proto(proto: pb::ModelProto, path: &str) -> Result<Sequential, NnError> {
    let onnx_err = |reason: String| NnError::Onnx {
        path: path.to_string(),
        reason,
    };
    let graph = proto.graph.ok_or_else(|| onnx_err("no graph".into()))?;
    let mut consts: HashMap<String, ArrayD<f64>> = HashMap::new();
    for t in &graph.initializer {
        consts.insert(t.name.clone(), tensor(t, "initializer")?);
    }
    let input = graph
        .input
        .iter()
        .find(|i| !consts.contains_key(&i.name))
        .ok_or_else(|| onnx_err("no graph input".into()))?;
    let dims: Vec<usize> = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(tt)) => tt
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                            v as usize
                        }
                        _ => 1, // symbolic (batch) dimension
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => return Err(onnx_err("input is not a tensor".into())),
    };
    if dims.is_empty() {
        return Err(onnx_err("input has no shape".into()));
    }
    let mut model = Sequential::new(dims[1..].to_vec());
    let mut current = input.name.clone();
    // The tensors of the chain so far that a residual Add may take as its shortcut, each
    // with the number of layers that produce it: `Add(x, current)` makes the layers after
    // `x`'s position the body of a residual block.
    let mut chain: HashMap<String, usize> = HashMap::from([(current.clone(), 0)]);
    // A zero Pad of the spatial axes is folded into the convolution that follows it.
    let mut pending_pad: Option<(usize, String)> = None;
    for node in &graph.node {
        if node.op_type == "Constant" {
            let t = attr(node, "value")
                .and_then(|a| a.t.as_ref())
                .ok_or_else(|| unsupported(node, "Constant without a tensor value"))?;
            consts.insert(node.output[0].clone(), tensor(t, &node.name)?);
            continue;
        }
        let data_inputs: Vec<&String> = node
            .input
            .iter()
            .filter(|i| !consts.contains_key(*i) && !i.is_empty())
            .collect();
        let residual = node.op_type == "Add" && data_inputs.len() == 2;
        if residual {
            // `Add(x, current)` or `Add(current, x)`, `x` an earlier tensor of the chain.
            if !data_inputs.contains(&&current) {
                return Err(unsupported(
                    node,
                    format!(
                        "Add of two activations neither of which is the current tensor \
                         {current:?}: inputs {:?}",
                        node.input
                    ),
                ));
            }
        } else if data_inputs.is_empty() || data_inputs.iter().any(|i| **i != current) {
            let fork = data_inputs
                .iter()
                .find(|i| chain.contains_key(**i) && ***i != current);
            if let Some(fork) = fork {
                return Err(unsupported(
                    node,
                    format!(
                        "branches from {fork:?} while the chain is at {current:?}: only \
                         identity-shortcut residual blocks (Add of a tensor and the end of \
                         the chain that started from it) are supported"
                    ),
                ));
            }
            return Err(unsupported(
                node,
                format!(
                    "not a sequential chain: inputs {:?}, current tensor {current:?}",
                    node.input
                ),
            ));
        }
        let konst = |idx: usize| -> Result<&ArrayD<f64>, NnError> {
            node.input
                .get(idx)
                .and_then(|n| consts.get(n))
                .ok_or_else(|| unsupported(node, format!("input {idx} must be a constant")))
        };
        let layer = match node.op_type.as_str() {
            "Gemm" => {
                if attr_i(node, "transA", 0) != 0 {
                    return Err(unsupported(node, "transA = 1"));
                }
                let alpha = attr_f(node, "alpha", 1.0) as f64;
                let beta = attr_f(node, "beta", 1.0) as f64;
                let b = konst(1)?
                    .clone()
                    .into_dimensionality::<Ix2>()
                    .map_err(|_| unsupported(node, "B is not 2-D"))?;
                let weight = if attr_i(node, "transB", 0) != 0 {
                    b
                } else {
                    b.reversed_axes()
                } * alpha;
                let out = weight.nrows();
                let bias = match node.input.get(2).filter(|n| !n.is_empty()) {
                    Some(_) => {
                        let c = konst(2)?;
                        let c = c
                            .broadcast(ndarray::IxDyn(&[out]))
                            .ok_or_else(|| unsupported(node, "C does not broadcast"))?;
                        c.to_owned().into_dimensionality::<Ix1>().expect("1-D") * beta
                    }
                    None => Array1::zeros(out),
                };
                Some(Layer::Dense {
                    weight: weight.as_standard_layout().to_owned(),
                    bias,
                })
            }
            "MatMul" => {
                let w = konst(1)?
                    .clone()
                    .into_dimensionality::<Ix2>()
                    .map_err(|_| unsupported(node, "weight is not 2-D"))?;
                let weight: Array2<f64> = w.reversed_axes().as_standard_layout().to_owned();
                let out = weight.nrows();
                Some(Layer::Dense {
                    weight,
                    bias: Array1::zeros(out),
                })
            }
            "Add" if residual => {
                let shortcut = if *data_inputs[0] == current {
                    data_inputs[1]
                } else {
                    data_inputs[0]
                };
                let start = *chain.get(shortcut).ok_or_else(|| {
                    unsupported(
                        node,
                        format!(
                            "residual Add: {shortcut:?} is not a tensor of the chain that \
                             leads to {current:?} (an Add forming a DAG that is not an \
                             identity-shortcut residual block)"
                        ),
                    )
                })?;
                // Tensors inside the body are no longer reachable as single layers.
                chain.retain(|_, &mut pos| pos <= start);
                let body = model.layers.split_off(start);
                Some(Layer::Residual { body })
            }
            "Add" => {
                // A constant added to a Dense or Conv output becomes its bias.
                let c = node
                    .input
                    .iter()
                    .find_map(|n| consts.get(n))
                    .ok_or_else(|| unsupported(node, "residual Add of two activations is not supported in a sequential model"))?;
                match model.layers.last_mut() {
                    Some(Layer::Dense { bias, .. }) | Some(Layer::Conv2d { bias, .. })
                        if c.len() == bias.len() =>
                    {
                        *bias = &*bias + &c.iter().copied().collect::<Array1<f64>>();
                        None
                    }
                    _ => {
                        return Err(unsupported(
                            node,
                            "constant Add not after a Dense or Conv layer",
                        ))
                    }
                }
            }
            "Mul" => {
                if node.input.len() == 2 && node.input[0] == node.input[1] {
                    Some(Layer::Square)
                } else {
                    return Err(unsupported(node, "only x * x is supported"));
                }
            }
            "Relu" => Some(Layer::Relu),
            "Sigmoid" => Some(Layer::Sigmoid),
            "Softmax" => Some(Layer::Softmax),
            "Flatten" => Some(Layer::Flatten),
            "Reshape" => {
                let s = konst(1)?;
                if s.len() == 2 && (s[[1]] == -1.0 || s[[0]] == 1.0 || s[[0]] == -1.0) {
                    Some(Layer::Flatten)
                } else {
                    return Err(unsupported(
                        node,
                        format!("reshape to {:?}", s.iter().collect::<Vec<_>>()),
                    ));
                }
            }
            "Identity" | "Dropout" => None,
            "Pad" => {
                let mode = attr(node, "mode").map(|a| a.s.clone()).unwrap_or_default();
                if !mode.is_empty() && mode != b"constant" {
                    return Err(unsupported(node, "only constant (zero) padding"));
                }
                let pads: Vec<i64> = match node.input.get(1).filter(|n| !n.is_empty()) {
                    Some(_) => konst(1)?.iter().map(|&v| v as i64).collect(),
                    None => attr_ints(node, "pads").unwrap_or_default(),
                };
                if let Some(v) = node.input.get(2).filter(|n| !n.is_empty()) {
                    if consts.get(v).is_some_and(|c| c.iter().any(|&x| x != 0.0)) {
                        return Err(unsupported(node, "non-zero padding value"));
                    }
                }
                // NCHW: pads = [n0, c0, h0, w0, n1, c1, h1, w1]; only equal spatial pads.
                let ok = pads.len() == 8
                    && pads[0] == 0
                    && pads[1] == 0
                    && pads[4] == 0
                    && pads[5] == 0
                    && [pads[2], pads[3], pads[6], pads[7]]
                        .iter()
                        .all(|&p| p == pads[2] && p >= 0);
                if !ok {
                    return Err(unsupported(
                        node,
                        format!("padding {pads:?} (only equal spatial zero padding)"),
                    ));
                }
                pending_pad = Some((pads[2] as usize, node.name.clone()));
                None
            }
            "GlobalAveragePool" => Some(Layer::GlobalAvgPool),
            "Conv" => {
                let w = konst(1)?
                    .clone()
                    .into_dimensionality::<Ix4>()
                    .map_err(|_| unsupported(node, "weight is not 4-D"))?;
                if attr_i(node, "group", 1) != 1 {
                    return Err(unsupported(node, "grouped convolution"));
                }
                if uniform(node, "dilations", 1)? != 1 {
                    return Err(unsupported(node, "dilation"));
                }
                if attr(node, "auto_pad").is_some_and(|a| !a.s.is_empty() && a.s != b"NOTSET") {
                    return Err(unsupported(node, "auto_pad"));
                }
                let stride = uniform(node, "strides", 1)?;
                let padding = uniform(node, "pads", 0)? + pending_pad.take().map_or(0, |(p, _)| p);
                let o = w.dim().0;
                let bias = match node.input.get(2).filter(|n| !n.is_empty()) {
                    Some(_) => konst(2)?.iter().copied().collect(),
                    None => Array1::zeros(o),
                };
                Some(Layer::Conv2d {
                    weight: w,
                    bias,
                    stride,
                    padding,
                })
            }
            "MaxPool" | "AveragePool" => {
                let kernel = uniform(node, "kernel_shape", 1)?;
                let stride = uniform(node, "strides", 1)?;
                if uniform(node, "pads", 0)? != 0 || attr_i(node, "ceil_mode", 0) != 0 {
                    return Err(unsupported(node, "padding or ceil_mode in pooling"));
                }
                Some(if node.op_type == "MaxPool" {
                    Layer::MaxPool { kernel, stride }
                } else {
                    Layer::AvgPool { kernel, stride }
                })
            }
            "BatchNormalization" => {
                let eps = attr_f(node, "epsilon", 1e-5) as f64;
                let (g, b, m, v) = (konst(1)?, konst(2)?, konst(3)?, konst(4)?);
                let scale: Vec<f64> = g
                    .iter()
                    .zip(v.iter())
                    .map(|(g, v)| g / (v + eps).sqrt())
                    .collect();
                match model.layers.last_mut() {
                    Some(Layer::Conv2d { weight, bias, .. }) if weight.dim().0 == scale.len() => {
                        for (o, s) in scale.iter().enumerate() {
                            weight
                                .index_axis_mut(ndarray::Axis(0), o)
                                .mapv_inplace(|w| w * s);
                            bias[o] = (bias[o] - m[[o]]) * s + b[[o]];
                        }
                        None
                    }
                    Some(Layer::Dense { weight, bias }) if weight.nrows() == scale.len() => {
                        for (o, s) in scale.iter().enumerate() {
                            weight.row_mut(o).mapv_inplace(|w| w * s);
                            bias[o] = (bias[o] - m[[o]]) * s + b[[o]];
                        }
                        None
                    }
                    _ => {
                        return Err(unsupported(
                            node,
                            "BatchNorm not after a Conv or Dense layer",
                        ))
                    }
                }
            }
            other => {
                return Err(unsupported(
                    node,
                    format!("{other} has no private implementation"),
                ));
            }
        };
        if let Some((_, pad_node)) = &pending_pad {
            if node.op_type != "Pad" {
                return Err(NnError::UnsupportedOp {
                    op: "Pad".into(),
                    node: pad_node.clone(),
                    reason: "zero padding is only supported right before a Conv".into(),
                });
            }
        }
        match layer {
            Some(l) => model = model.add(l),
            // A folded constant or BatchNorm changed the last layer: the tensors recorded at
            // this position no longer hold its output.
            None if matches!(node.op_type.as_str(), "Add" | "BatchNormalization") => {
                let len = model.layers.len();
                chain.retain(|_, &mut pos| pos != len);
            }
            None => {}
        }
        current = node.output[0].clone();
        // A zero Pad's output is not a layer output (the padding is folded into the Conv).
        if node.op_type != "Pad" {
            chain.insert(current.clone(), model.layers.len());
        }
    }
    model.shapes()?;
    Ok(model)
}

/// Runs an ONNX model with tract (the independent plaintext reference) on one sample.
pub fn tract_reference(path: impl AsRef<Path>, x: &ArrayD<f64>) -> Result<ArrayD<f64>, NnError> {
    use tract_onnx::prelude::*;
    let path = path.as_ref();
    let err = |e: TractError| NnError::Onnx {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut shape = vec![1usize];
    shape.extend_from_slice(x.shape());
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .and_then(|m| m.with_input_fact(0, f32::fact(&shape).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(err)?;
    let input: Tensor = x
        .mapv(|v| v as f32)
        .into_shape_with_order(IxDyn(&shape))
        .expect("same length")
        .into();
    let out = model.run(tvec!(input.into())).map_err(err)?;
    let y = out[0]
        .to_array_view::<f32>()
        .map_err(err)?
        .mapv(|v| v as f64);
    let n = y.len();
    Ok(y.into_shape_with_order(IxDyn(&[n])).expect("flatten"))
}
