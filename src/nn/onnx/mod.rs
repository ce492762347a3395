//! ONNX import through `tract-onnx`'s protobuf model (no hand-written protobuf decoder).
//!
//! The graph is read as a DAG ([`graph`]): each node goes to the converter of its operator,
//! found in the table `ops::CONVERTERS` (one row and one small function per operator, as
//! CrypTen's `ONNX_TO_CRYPTEN`), which parses and validates its attributes and says what the
//! node becomes: a constant computed at import time (shape subgraphs such as PyTorch's
//! `x.view(x.size(0), -1)`, for a batch of one), layers on its activation, or a join of
//! several activations (`Add`, `Sum`, `Concat`). Branches that meet again become blocks
//! ([`super::Layer::Branches`], [`super::Layer::Residual`]); per-channel affine maps
//! (normalization constants, batch norms) fold into the neighbouring linear layers where
//! they can. An unsupported operator, or a DAG that is not a nest of blocks, is refused with
//! an error naming the operator, the node and the opset. Adding an operator is a row in
//! `CONVERTERS` and its function. Opsets 9 to 18 of the default domain are read (the forms
//! whose attributes became inputs, such as `Unsqueeze`'s axes and `Clip`'s bounds, both),
//! and the `ai.onnx.ml` linear models that skl2onnx writes.
//!
//! A malformed model never panics the import: constants are checked (data type, dims, data
//! length) before tract loads them, converters check their attributes' and constants'
//! lengths and shapes, and activations are bounded (`MAX_ELEMENTS`) so that shape arithmetic
//! cannot overflow; what is wrong is reported as [`NnError::MalformedOnnx`] with the node and
//! the offending values.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use tract_onnx::pb::{self, NodeProto};
use tract_onnx::prelude::Framework;

use super::{NnError, Sequential};

mod graph;
mod ops;

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

fn malformed(node: &NodeProto, reason: impl Into<String>) -> NnError {
    NnError::MalformedOnnx {
        op: node.op_type.clone(),
        node: node.name.clone(),
        reason: reason.into(),
    }
}

/// The most elements a constant, the input or an activation of an imported model may have
/// (far beyond what private inference can take): it keeps shape arithmetic from
/// overflowing and a tensor's dims from asking for more memory than its data holds.
const MAX_ELEMENTS: usize = 1 << 30;

/// The number of elements of a tensor of shape `dims`, if at most [`MAX_ELEMENTS`].
fn elements(dims: &[usize]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
}

/// The size in bytes of one element of an ONNX data type that converts to `f64`, and the
/// length of the typed field that holds its values when there is no raw data (the field
/// tract's loader reads), or `None` for another type.
fn element_type(t: &pb::TensorProto) -> Option<(usize, usize)> {
    use pb::tensor_proto::DataType as D;
    Some(match D::from_i32(t.data_type)? {
        D::Float => (4, t.float_data.len()),
        D::Double => (8, t.double_data.len()),
        D::Int64 => (8, t.int64_data.len()),
        D::Uint64 => (8, t.int64_data.len()),
        D::Int32 | D::Uint32 => (4, t.int32_data.len()),
        D::Int16 | D::Uint16 | D::Float16 => (2, t.int32_data.len()),
        D::Int8 | D::Uint8 | D::Bool => (1, t.int32_data.len()),
        _ => return None,
    })
}

/// A constant tensor (an initializer or a `Constant` node's value) as `f64`s. Its data type,
/// dims and data length are checked first: tract's loader panics on an unknown data type, on
/// raw data whose length does not match the dims and on string raw data.
fn tensor(t: &pb::TensorProto, op: &str, node: &str) -> Result<ArrayD<f64>, NnError> {
    let bad = |reason: String| NnError::MalformedOnnx {
        op: op.into(),
        node: node.into(),
        reason: format!("tensor {:?}: {reason}", t.name),
    };
    let (size, typed_len) =
        element_type(t).ok_or_else(|| bad(format!("data type {} is not numeric", t.data_type)))?;
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| bad(format!("negative dimension in dims {:?}", t.dims)))?;
    // Zero dimensions count as one here, so that the other dims cannot be arbitrarily large.
    let spans: Vec<usize> = dims.iter().map(|&d| d.max(1)).collect();
    if elements(&spans).is_none() {
        return Err(bad(format!(
            "dims {:?} exceed {MAX_ELEMENTS} elements",
            t.dims
        )));
    }
    let count: usize = dims.iter().product();
    let external = t.data_location == Some(pb::tensor_proto::DataLocation::External as i32);
    if !t.raw_data.is_empty() {
        let expected = count as u64 * size as u64;
        if t.raw_data.len() as u64 != expected {
            return Err(bad(format!(
                "{} bytes of raw data for dims {:?} of {size}-byte elements ({expected} bytes \
                 expected)",
                t.raw_data.len(),
                t.dims,
            )));
        }
    } else if external {
        return Err(bad("external data is not supported".into()));
    } else if typed_len != count {
        return Err(bad(format!(
            "{typed_len} values for dims {:?} ({count} expected)",
            t.dims
        )));
    }
    tract_onnx::tensor::load_tensor(&tract_onnx::data_resolver::FopenDataResolver, t, None)
        .and_then(|t| t.cast_to::<f64>().map(|c| c.into_owned()))
        .and_then(|t| t.into_array::<f64>())
        .map_err(|e| NnError::UnsupportedOp {
            op: op.into(),
            node: node.into(),
            reason: format!("constant {:?}: {e}", t.name),
        })
}

/// One uniform value of a per-axis attribute of a 2-D operator (strides, pads, kernel),
/// which lists `len` values (4 for pads), `default` if absent, or an error.
fn uniform(node: &NodeProto, name: &str, default: usize, len: usize) -> Result<usize, NnError> {
    match attr_ints(node, name) {
        None => Ok(default),
        Some(v) if v.is_empty() => Ok(default),
        Some(v) if v.len() != len => Err(malformed(
            node,
            format!(
                "{name} {v:?}: {} values where a 2-D {} takes {len}",
                v.len(),
                node.op_type
            ),
        )),
        Some(v) if v.iter().any(|&x| x < 0) => {
            Err(malformed(node, format!("negative {name} {v:?}")))
        }
        Some(v) => match usize::try_from(v[0]) {
            Ok(first) if v.iter().all(|&x| x == v[0]) => Ok(first),
            _ => Err(unsupported(node, format!("non-uniform {name} {v:?}"))),
        },
    }
}

/// As [`uniform`], for a kernel size or stride: zero is refused.
fn positive(node: &NodeProto, name: &str, len: usize) -> Result<usize, NnError> {
    match uniform(node, name, 1, len)? {
        0 => Err(malformed(
            node,
            format!(
                "{name} {:?} is zero",
                attr_ints(node, name).unwrap_or_default()
            ),
        )),
        n => Ok(n),
    }
}

/// The name of `node`'s (first) output, which every node must have.
fn output(node: &NodeProto) -> Result<&String, NnError> {
    node.output
        .first()
        .filter(|o| !o.is_empty())
        .ok_or_else(|| malformed(node, format!("no output (outputs {:?})", node.output)))
}

/// Input `idx` of `node`, which must be a constant.
fn konst<'c>(
    consts: &'c HashMap<String, ArrayD<f64>>,
    node: &NodeProto,
    idx: usize,
) -> Result<&'c ArrayD<f64>, NnError> {
    node.input
        .get(idx)
        .and_then(|n| consts.get(n))
        .ok_or_else(|| unsupported(node, format!("input {idx} must be a constant")))
}

/// Whether `node` has a (non-empty) input `idx`.
fn has_input(node: &NodeProto, idx: usize) -> bool {
    node.input.get(idx).is_some_and(|n| !n.is_empty())
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
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(13, |o| o.version);
    let graph = proto.graph.ok_or_else(|| onnx_err("no graph".into()))?;
    let mut consts: HashMap<String, ArrayD<f64>> = HashMap::new();
    let mut integers = std::collections::HashSet::new();
    for t in &graph.initializer {
        consts.insert(t.name.clone(), tensor(t, "initializer", &t.name)?);
        if is_integer_type(t.data_type) {
            integers.insert(t.name.clone());
        }
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
    if elements(&dims).is_none() {
        return Err(NnError::MalformedOnnx {
            op: "input".into(),
            node: input.name.clone(),
            reason: format!("shape {dims:?} exceeds {MAX_ELEMENTS} elements"),
        });
    }
    let mut g = graph::Graph::new(
        consts,
        integers,
        opset,
        input.name.clone(),
        dims[1..].to_vec(),
    );
    for node in &graph.node {
        g.add(node)?;
    }
    let outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    g.into_model(&outputs, path)
}

/// Whether an ONNX data type is an integer type (shape arithmetic divides them exactly).
fn is_integer_type(data_type: i32) -> bool {
    use pb::tensor_proto::DataType as D;
    matches!(
        D::from_i32(data_type),
        Some(
            D::Int64
                | D::Int32
                | D::Int16
                | D::Int8
                | D::Uint64
                | D::Uint32
                | D::Uint16
                | D::Uint8
                | D::Bool
        )
    )
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
    let y = out
        .first()
        .ok_or_else(|| NnError::Onnx {
            path: path.display().to_string(),
            reason: "the model has no output".into(),
        })?
        .to_array_view::<f32>()
        .map_err(err)?
        .mapv(|v| v as f64);
    let n = y.len();
    Ok(y.into_shape_with_order(IxDyn(&[n])).expect("flatten"))
}

#[cfg(test)]
mod tests {
    use super::ops::CONVERTERS;

    #[test]
    fn each_operator_has_one_converter() {
        for (i, row) in CONVERTERS.iter().enumerate() {
            let op = (row.op, row.domain);
            assert!(
                CONVERTERS[i + 1..].iter().all(|o| (o.op, o.domain) != op),
                "{op:?} has two rows in CONVERTERS"
            );
        }
    }
}
