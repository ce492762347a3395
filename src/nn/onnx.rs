//! ONNX import through `tract-onnx`'s protobuf model (no hand-written protobuf decoder).
//!
//! The import walks the graph's nodes in order and hands each to the converter of its
//! operator, found in the table `CONVERTERS` (one row and one small function per operator,
//! as CrypTen's `ONNX_TO_CRYPTEN`). Each converter parses and validates its node's attributes
//! and says what the node becomes: a new [`Layer`], a constant, or a fold into the last layer
//! (a constant bias, a BatchNorm, a zero Pad before a Conv). An `Add` of an earlier tensor
//! `x` and the end of the chain that started from `x` becomes a [`Layer::Residual`]; anything
//! else is refused with an error naming the operator and the node. Adding an operator is a
//! row in `CONVERTERS` and its function.
//!
//! A malformed model never panics the import: constants are checked (data type, dims, data
//! length) before tract loads them, converters check their attributes' and constants'
//! lengths and shapes, and activations are bounded (`MAX_ELEMENTS`) so that shape arithmetic
//! cannot overflow; what is wrong is reported as [`NnError::MalformedOnnx`] with the node and
//! the offending values.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{Array1, Array2, ArrayD, Ix2, Ix4, IxDyn};
use tract_onnx::pb::{self, NodeProto};
use tract_onnx::prelude::Framework;

use super::{Layer, NnError, Sequential, MAX_ARCH_DEPTH};

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
        consts.insert(t.name.clone(), tensor(t, "initializer", &t.name)?);
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
    let mut import = Import {
        consts,
        model: Sequential::new(dims[1..].to_vec()),
        current: input.name.clone(),
        chain: HashMap::from([(input.name.clone(), 0)]),
        pending_pad: None,
    };
    for node in &graph.node {
        import.convert(node)?;
    }
    if let Some((_, pad_node)) = import.pending_pad {
        return Err(NnError::UnsupportedOp {
            op: "Pad".into(),
            node: pad_node,
            reason: "zero padding is only supported right before a Conv".into(),
        });
    }
    bounded_shape(&import.model.layers, import.model.input_shape())?;
    Ok(import.model)
}

/// The output shape of `layers` on `input` (whose elements are at most [`MAX_ELEMENTS`]),
/// checked as [`Sequential::shapes`] does, and refusing any activation (or padded Conv
/// input) of more than [`MAX_ELEMENTS`] elements before the next layer computes with it.
fn bounded_shape(layers: &[Layer], input: &[usize]) -> Result<Vec<usize>, NnError> {
    let too_large = |l: &Layer, what: String, input: &[usize]| NnError::LayerShape {
        layer: format!("{} ({what} exceeds {MAX_ELEMENTS} elements)", l.describe()),
        input: input.to_vec(),
    };
    let mut shape = input.to_vec();
    for l in layers {
        match l {
            Layer::Conv2d { padding, .. } => {
                // The padding is at most MAX_ELEMENTS (see `conv`): no overflow.
                if let [c, h, w] = shape[..] {
                    let padded = [c, h + 2 * padding, w + 2 * padding];
                    if elements(&padded).is_none() {
                        return Err(too_large(l, format!("padded input {padded:?}"), &shape));
                    }
                }
            }
            // The body's own activations first (its nesting is bounded by `add`).
            Layer::Residual { body } => {
                bounded_shape(body, &shape)?;
            }
            _ => {}
        }
        let next = l.output_shape(&shape)?;
        if elements(&next).is_none() {
            return Err(too_large(l, format!("output {next:?}"), &shape));
        }
        shape = next;
    }
    Ok(shape)
}

/// A converter: parses and validates one node of its operator and says what it becomes; it
/// may record a constant, change the last layer (a fold), hold a pending Pad or, for a
/// residual `Add`, take the block's body out of the model and the chain.
type Convert = fn(&NodeProto, &mut Import) -> Result<Output, NnError>;

/// The activation inputs (inputs that are not constants) a node of an operator may take.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Inputs {
    /// None: the node defines a constant and is not part of the chain.
    Constant,
    /// The current tensor of the chain (possibly several times, as in `Mul(x, x)`).
    Chain,
    /// As `Chain`, or two: the current tensor and an earlier tensor of the chain, the
    /// shortcut of a residual block.
    ChainOrShortcut,
}

/// What a converter made of its node.
enum Output {
    /// A layer, appended to the model.
    Layer(Layer),
    /// A constant, recorded in [`Import::consts`].
    Constant,
    /// Folded into the last layer (a constant bias, a BatchNorm): the tensors recorded at the
    /// model's current length no longer hold that layer's output.
    Folded,
    /// Nothing to compute: the output is the input (Identity, Dropout).
    Nothing,
    /// A zero padding, held in [`Import::pending_pad`] for the Conv that must follow; its
    /// output is no layer's output.
    Padding,
}

/// The supported operators, one row each: the operator type, the inputs its nodes may take,
/// its converter.
const CONVERTERS: &[(&str, Inputs, Convert)] = &[
    ("Constant", Inputs::Constant, constant),
    ("Gemm", Inputs::Chain, gemm),
    ("MatMul", Inputs::Chain, matmul),
    ("Add", Inputs::ChainOrShortcut, add),
    ("Mul", Inputs::Chain, mul),
    ("Relu", Inputs::Chain, relu),
    ("Sigmoid", Inputs::Chain, sigmoid),
    ("Softmax", Inputs::Chain, softmax),
    ("Flatten", Inputs::Chain, flatten),
    ("Reshape", Inputs::Chain, reshape),
    ("Identity", Inputs::Chain, nothing),
    ("Dropout", Inputs::Chain, nothing),
    ("Pad", Inputs::Chain, pad),
    ("GlobalAveragePool", Inputs::Chain, global_avg_pool),
    ("Conv", Inputs::Chain, conv),
    ("MaxPool", Inputs::Chain, max_pool),
    ("AveragePool", Inputs::Chain, avg_pool),
    ("BatchNormalization", Inputs::Chain, batch_norm),
];

/// The state of an import between two nodes.
struct Import {
    /// The constants so far (initializers and `Constant` nodes), by tensor name.
    consts: HashMap<String, ArrayD<f64>>,
    /// The model so far.
    model: Sequential,
    /// The tensor the model so far computes: the one the next node must read.
    current: String,
    /// The tensors of the chain so far that a residual Add may take as its shortcut, each
    /// with the number of layers that produce it: `Add(x, current)` makes the layers after
    /// `x`'s position the body of a residual block.
    chain: HashMap<String, usize>,
    /// A zero Pad of the spatial axes (its amount and node name), folded into the
    /// convolution that must follow it.
    pending_pad: Option<(usize, String)>,
}

impl Import {
    /// Converts one node: checks that it reads the chain as its operator may, runs its
    /// converter, appends or folds the result.
    fn convert(&mut self, node: &NodeProto) -> Result<(), NnError> {
        let row = CONVERTERS.iter().find(|(op, ..)| *op == node.op_type);
        // An unknown operator is refused after the chain checks: a node off the chain is
        // reported as such whatever its operator.
        self.check_inputs(node, row.map_or(Inputs::Chain, |&(_, inputs, _)| inputs))?;
        let convert = row.map(|&(.., convert)| convert).ok_or_else(|| {
            unsupported(
                node,
                format!("{} has no private implementation", node.op_type),
            )
        })?;
        let output_name = output(node)?.clone();
        let output = convert(node, self)?;
        if matches!(output, Output::Constant) {
            return Ok(());
        }
        // A zero Pad's output is not a layer output (the padding is folded into the Conv).
        let padding = matches!(output, Output::Padding);
        if let Some((_, pad_node)) = self.pending_pad.as_ref().filter(|_| !padding) {
            return Err(NnError::UnsupportedOp {
                op: "Pad".into(),
                node: pad_node.clone(),
                reason: "zero padding is only supported right before a Conv".into(),
            });
        }
        match output {
            Output::Layer(l) => self.model.layers.push(l),
            Output::Folded => {
                let len = self.model.layers.len();
                self.chain.retain(|_, &mut pos| pos != len);
            }
            Output::Constant | Output::Nothing | Output::Padding => {}
        }
        self.current = output_name;
        if !padding {
            self.chain
                .insert(self.current.clone(), self.model.layers.len());
        }
        Ok(())
    }

    /// The inputs of `node` that are not constants.
    fn data_inputs<'n>(&self, node: &'n NodeProto) -> Vec<&'n String> {
        node.input
            .iter()
            .filter(|i| !self.consts.contains_key(*i) && !i.is_empty())
            .collect()
    }

    /// Refuses a node whose activation inputs are not what its operator may take.
    fn check_inputs(&self, node: &NodeProto, inputs: Inputs) -> Result<(), NnError> {
        if inputs == Inputs::Constant {
            return Ok(());
        }
        let current = &self.current;
        let data_inputs = self.data_inputs(node);
        if inputs == Inputs::ChainOrShortcut && data_inputs.len() == 2 {
            // `Op(x, current)` or `Op(current, x)`, `x` an earlier tensor of the chain.
            if !data_inputs.contains(&current) {
                return Err(unsupported(
                    node,
                    format!(
                        "{} of two activations neither of which is the current tensor \
                         {current:?}: inputs {:?}",
                        node.op_type, node.input
                    ),
                ));
            }
        } else if data_inputs.is_empty() || data_inputs.iter().any(|i| *i != current) {
            let fork = data_inputs
                .iter()
                .find(|i| self.chain.contains_key(**i) && **i != current);
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
        Ok(())
    }
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

/// `Constant`: its `value` tensor, recorded for the nodes that read it.
fn constant(node: &NodeProto, import: &mut Import) -> Result<Output, NnError> {
    let t = attr(node, "value")
        .and_then(|a| a.t.as_ref())
        .ok_or_else(|| unsupported(node, "Constant without a tensor value"))?;
    let value = tensor(t, &node.op_type, &node.name)?;
    import.consts.insert(output(node)?.clone(), value);
    Ok(Output::Constant)
}

/// `Gemm` (`alpha * x B + beta * C`, `B` possibly transposed): a Dense layer.
fn gemm(node: &NodeProto, import: &mut Import) -> Result<Output, NnError> {
    if attr_i(node, "transA", 0) != 0 {
        return Err(unsupported(node, "transA = 1"));
    }
    let alpha = attr_f(node, "alpha", 1.0) as f64;
    let beta = attr_f(node, "beta", 1.0) as f64;
    let b = konst(&import.consts, node, 1)?
        .clone()
        .into_dimensionality::<Ix2>()
        .map_err(|_| unsupported(node, "B is not 2-D"))?;
    if b.is_empty() {
        return Err(malformed(node, format!("B has shape {:?}", b.shape())));
    }
    let weight = if attr_i(node, "transB", 0) != 0 {
        b
    } else {
        b.reversed_axes()
    } * alpha;
    let out = weight.nrows();
    let bias = if has_input(node, 2) {
        let c = konst(&import.consts, node, 2)?;
        let c = c
            .broadcast(IxDyn(&[out]))
            .ok_or_else(|| unsupported(node, "C does not broadcast"))?;
        c.iter().copied().collect::<Array1<f64>>() * beta
    } else {
        Array1::zeros(out)
    };
    Ok(Output::Layer(Layer::Dense {
        weight: weight.as_standard_layout().to_owned(),
        bias,
    }))
}

/// `MatMul` by a constant 2-D weight: a Dense layer without bias.
fn matmul(node: &NodeProto, import: &mut Import) -> Result<Output, NnError> {
    let w = konst(&import.consts, node, 1)?
        .clone()
        .into_dimensionality::<Ix2>()
        .map_err(|_| unsupported(node, "weight is not 2-D"))?;
    if w.is_empty() {
        return Err(malformed(node, format!("weight has shape {:?}", w.shape())));
    }
    let weight: Array2<f64> = w.reversed_axes().as_standard_layout().to_owned();
    let out = weight.nrows();
    Ok(Output::Layer(Layer::Dense {
        weight,
        bias: Array1::zeros(out),
    }))
}

/// `Add`: of two activations, a residual block; of a constant, the bias of the Dense or
/// Conv layer before it.
fn add(node: &NodeProto, import: &mut Import) -> Result<Output, NnError> {
    let data_inputs = import.data_inputs(node);
    if data_inputs.len() == 2 {
        // The inputs are checked: one is the current tensor, the other the shortcut.
        let shortcut = if *data_inputs[0] == import.current {
            data_inputs[1]
        } else {
            data_inputs[0]
        };
        let start = *import.chain.get(shortcut).ok_or_else(|| {
            unsupported(
                node,
                format!(
                    "residual Add: {shortcut:?} is not a tensor of the chain that leads to \
                     {:?} (an Add forming a DAG that is not an identity-shortcut residual \
                     block)",
                    import.current
                ),
            )
        })?;
        let depth = import
            .model
            .layers
            .get(start..)
            .ok_or_else(|| {
                malformed(
                    node,
                    format!(
                        "shortcut {shortcut:?} at layer {start} of {}",
                        import.model.layers.len()
                    ),
                )
            })?
            .iter()
            .map(nesting)
            .max()
            .unwrap_or(0)
            + 1;
        if depth > MAX_ARCH_DEPTH {
            return Err(unsupported(
                node,
                format!("residual blocks nested {depth} deep (at most {MAX_ARCH_DEPTH})"),
            ));
        }
        // Tensors inside the body are no longer reachable as single layers.
        import.chain.retain(|_, &mut pos| pos <= start);
        let body = import.model.layers.split_off(start);
        return Ok(Output::Layer(Layer::Residual { body }));
    }
    // A constant added to a Dense or Conv output becomes its bias.
    let c = node
        .input
        .iter()
        .find_map(|n| import.consts.get(n))
        .ok_or_else(|| {
            unsupported(
                node,
                "residual Add of two activations is not supported in a sequential model",
            )
        })?;
    match import.model.layers.last_mut() {
        Some(Layer::Dense { bias, .. }) | Some(Layer::Conv2d { bias, .. })
            if c.len() == bias.len() =>
        {
            *bias = &*bias + &c.iter().copied().collect::<Array1<f64>>();
            Ok(Output::Folded)
        }
        _ => Err(unsupported(
            node,
            "constant Add not after a Dense or Conv layer",
        )),
    }
}

/// How deeply residual blocks nest in `layer` (0 for a layer that is not a residual block).
fn nesting(layer: &Layer) -> usize {
    match layer {
        Layer::Residual { body } => body.iter().map(nesting).max().unwrap_or(0) + 1,
        _ => 0,
    }
}

/// `Mul(x, x)`: a Square layer.
fn mul(node: &NodeProto, _: &mut Import) -> Result<Output, NnError> {
    if node.input.len() == 2 && node.input[0] == node.input[1] {
        Ok(Output::Layer(Layer::Square))
    } else {
        Err(unsupported(node, "only x * x is supported"))
    }
}

/// `Relu`: a Relu layer.
fn relu(_: &NodeProto, _: &mut Import) -> Result<Output, NnError> {
    Ok(Output::Layer(Layer::Relu))
}

/// `Sigmoid`: a Sigmoid layer.
fn sigmoid(_: &NodeProto, _: &mut Import) -> Result<Output, NnError> {
    Ok(Output::Layer(Layer::Sigmoid))
}

/// `Softmax`: a Softmax layer.
fn softmax(_: &NodeProto, _: &mut Import) -> Result<Output, NnError> {
    Ok(Output::Layer(Layer::Softmax))
}

/// `Flatten`: a Flatten layer.
fn flatten(_: &NodeProto, _: &mut Import) -> Result<Output, NnError> {
    Ok(Output::Layer(Layer::Flatten))
}

/// `Identity`, `Dropout` (inference): nothing to compute.
fn nothing(_: &NodeProto, _: &mut Import) -> Result<Output, NnError> {
    Ok(Output::Nothing)
}

/// `GlobalAveragePool`: a GlobalAvgPool layer.
fn global_avg_pool(_: &NodeProto, _: &mut Import) -> Result<Output, NnError> {
    Ok(Output::Layer(Layer::GlobalAvgPool))
}

/// `Reshape` to `[batch, -1]`: a Flatten layer.
fn reshape(node: &NodeProto, import: &mut Import) -> Result<Output, NnError> {
    let s = konst(&import.consts, node, 1)?;
    if s.ndim() != 1 {
        return Err(malformed(
            node,
            format!("shape constant {s} of shape {:?} is not 1-D", s.shape()),
        ));
    }
    match s.iter().copied().collect::<Vec<f64>>()[..] {
        [b, rest] if rest == -1.0 || b == 1.0 || b == -1.0 => Ok(Output::Layer(Layer::Flatten)),
        ref s => Err(unsupported(node, format!("reshape to {s:?}"))),
    }
}

/// `Pad` with zeros, equally on the spatial axes: held for the Conv that must follow.
fn pad(node: &NodeProto, import: &mut Import) -> Result<Output, NnError> {
    let mode = attr(node, "mode").map(|a| a.s.clone()).unwrap_or_default();
    if !mode.is_empty() && mode != b"constant" {
        return Err(unsupported(node, "only constant (zero) padding"));
    }
    let pads: Vec<i64> = if has_input(node, 1) {
        let pads = konst(&import.consts, node, 1)?;
        if pads.ndim() != 1 {
            return Err(malformed(
                node,
                format!(
                    "pads constant {pads} of shape {:?} is not 1-D",
                    pads.shape()
                ),
            ));
        }
        pads.iter().map(|&v| v as i64).collect()
    } else {
        attr_ints(node, "pads").unwrap_or_default()
    };
    if let Some(v) = node.input.get(2).filter(|n| !n.is_empty()) {
        if import
            .consts
            .get(v)
            .is_some_and(|c| c.iter().any(|&x| x != 0.0))
        {
            return Err(unsupported(node, "non-zero padding value"));
        }
    }
    // NCHW: pads = [n0, c0, h0, w0, n1, c1, h1, w1]; only equal spatial pads.
    match pads[..] {
        [0, 0, h0, w0, 0, 0, h1, w1] if [w0, h1, w1].iter().all(|&p| p == h0) && h0 >= 0 => {
            import.pending_pad = Some((h0 as usize, node.name.clone()));
            Ok(Output::Padding)
        }
        _ => Err(unsupported(
            node,
            format!("padding {pads:?} (only equal spatial zero padding)"),
        )),
    }
}

/// `Conv` (2-D, ungrouped, undilated, uniform strides and pads, plus a pending zero Pad):
/// a Conv2d layer.
fn conv(node: &NodeProto, import: &mut Import) -> Result<Output, NnError> {
    let w = konst(&import.consts, node, 1)?
        .clone()
        .into_dimensionality::<Ix4>()
        .map_err(|_| unsupported(node, "weight is not 4-D"))?;
    if w.is_empty() {
        return Err(malformed(node, format!("weight has shape {:?}", w.shape())));
    }
    let (o, _, kh, kw) = w.dim();
    if attr_i(node, "group", 1) != 1 {
        return Err(unsupported(node, "grouped convolution"));
    }
    if positive(node, "dilations", 2)? != 1 {
        return Err(unsupported(node, "dilation"));
    }
    if attr(node, "auto_pad").is_some_and(|a| !a.s.is_empty() && a.s != b"NOTSET") {
        return Err(unsupported(node, "auto_pad"));
    }
    if let Some(k) = attr_ints(node, "kernel_shape").filter(|k| !k.is_empty()) {
        if k.len() != 2
            || k.iter()
                .zip([kh, kw])
                .any(|(&a, b)| usize::try_from(a) != Ok(b))
        {
            return Err(malformed(
                node,
                format!(
                    "kernel_shape {k:?} does not match the weight's shape {:?}",
                    w.shape()
                ),
            ));
        }
    }
    let stride = positive(node, "strides", 2)?;
    let (pads, pad_before) = (
        uniform(node, "pads", 0, 4)?,
        import.pending_pad.take().map_or(0, |(p, _)| p),
    );
    let padding = pads
        .checked_add(pad_before)
        .filter(|&p| p <= MAX_ELEMENTS)
        .ok_or_else(|| {
            malformed(
                node,
                format!("padding {pads} plus {pad_before} (a Pad before it) is too large"),
            )
        })?;
    let bias: Array1<f64> = if has_input(node, 2) {
        konst(&import.consts, node, 2)?.iter().copied().collect()
    } else {
        Array1::zeros(o)
    };
    if bias.len() != o {
        return Err(malformed(
            node,
            format!(
                "bias of {} values for {o} output channels (weight shape {:?})",
                bias.len(),
                w.shape()
            ),
        ));
    }
    Ok(Output::Layer(Layer::Conv2d {
        weight: w,
        bias,
        stride,
        padding,
    }))
}

/// The kernel and stride of a pooling node (uniform, unpadded, no ceil mode).
fn pool(node: &NodeProto) -> Result<(usize, usize), NnError> {
    let kernel = positive(node, "kernel_shape", 2)?;
    let stride = positive(node, "strides", 2)?;
    if uniform(node, "pads", 0, 4)? != 0 || attr_i(node, "ceil_mode", 0) != 0 {
        return Err(unsupported(node, "padding or ceil_mode in pooling"));
    }
    Ok((kernel, stride))
}

/// `MaxPool`: a MaxPool layer.
fn max_pool(node: &NodeProto, _: &mut Import) -> Result<Output, NnError> {
    let (kernel, stride) = pool(node)?;
    Ok(Output::Layer(Layer::MaxPool { kernel, stride }))
}

/// `AveragePool`: an AvgPool layer.
fn avg_pool(node: &NodeProto, _: &mut Import) -> Result<Output, NnError> {
    let (kernel, stride) = pool(node)?;
    Ok(Output::Layer(Layer::AvgPool { kernel, stride }))
}

/// `BatchNormalization` (inference): folded into the Conv or Dense layer before it.
fn batch_norm(node: &NodeProto, import: &mut Import) -> Result<Output, NnError> {
    let eps = attr_f(node, "epsilon", 1e-5) as f64;
    let consts = &import.consts;
    let params = [
        ("scale", konst(consts, node, 1)?),
        ("B", konst(consts, node, 2)?),
        ("mean", konst(consts, node, 3)?),
        ("var", konst(consts, node, 4)?),
    ];
    // The layer's weight with its output channels along axis 0, and its bias.
    let (mut weight, bias) = match import.model.layers.last_mut() {
        Some(Layer::Conv2d { weight, bias, .. }) => (weight.view_mut().into_dyn(), bias),
        Some(Layer::Dense { weight, bias }) => (weight.view_mut().into_dyn(), bias),
        _ => {
            return Err(unsupported(
                node,
                "BatchNorm not after a Conv or Dense layer",
            ))
        }
    };
    let channels = weight.outer_iter().len();
    for (name, p) in &params {
        if p.len() != channels {
            return Err(malformed(
                node,
                format!(
                    "{name} of shape {:?} for {channels} channels of the layer before",
                    p.shape()
                ),
            ));
        }
    }
    let [g, b, m, v] = params.map(|(_, p)| p.iter().copied().collect::<Vec<f64>>());
    // Per channel: the scale `g / sqrt(v + eps)`, the mean and the shift `b`.
    let mut fold = Vec::with_capacity(channels);
    for (o, (((g, b), m), v)) in g.iter().zip(&b).zip(&m).zip(&v).enumerate() {
        let var = v + eps;
        if !(var > 0.0 && var.is_finite()) {
            return Err(malformed(
                node,
                format!("var {v} + epsilon {eps} of channel {o} is not positive and finite"),
            ));
        }
        fold.push((g / var.sqrt(), m, b));
    }
    for ((mut w, bias), (s, m, b)) in weight.outer_iter_mut().zip(bias.iter_mut()).zip(fold) {
        w.mapv_inplace(|w| w * s);
        *bias = (*bias - m) * s + b;
    }
    Ok(Output::Folded)
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
    use super::CONVERTERS;

    #[test]
    fn each_operator_has_one_converter() {
        for (i, (op, ..)) in CONVERTERS.iter().enumerate() {
            assert!(
                CONVERTERS[i + 1..].iter().all(|(other, ..)| other != op),
                "{op} has two rows in CONVERTERS"
            );
        }
    }
}
