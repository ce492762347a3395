//! ONNX export of a [`Sequential`] model: the inverse of the import in `onnx.rs`, built with
//! `tract-onnx`'s protobuf types and encoded with `prost` (no hand-written encoder).
//!
//! Each layer becomes the nodes the importer maps back to it, so that
//! `load_onnx_bytes(model.to_onnx_bytes())` gives the model back (see
//! [`Sequential::to_onnx_bytes`] for the one exception). The graph reads one tensor named
//! `input` of shape `[1, ...input_shape]` (float32) and writes one named `output`; weights
//! are float32 initializers; the opset is 13.

use std::path::Path;

use tract_onnx::pb;

use super::{Layer, NnError, Sequential};

/// The ONNX IR version written (that of opset 13).
const IR_VERSION: i64 = 7;
/// The default-domain opset written.
const OPSET: i64 = 13;
/// The mode named in [`NnError::NotSupportedInMode`] for a layer that cannot be exported.
const MODE: &str = "ONNX export";

impl Sequential {
    /// The model as the bytes of an ONNX file (opset 13), which [`super::load_onnx_bytes`],
    /// [`super::load_onnx`] (hence `cipherml serve`) and tract read back.
    ///
    /// The graph's input is named `input`, of shape `[1, ...input_shape]` (float32), its
    /// output `output`; weights are float32 initializers (so they are rounded to `f32`).
    /// Layers map to the operators PyTorch's exporter writes: Dense to `Gemm` (`transB = 1`,
    /// weight `(out, in)`), Conv2d to `Conv`, Square to `Mul(x, x)`, pooling to `MaxPool` /
    /// `AveragePool`, GlobalAvgPool to `GlobalAveragePool`, Flatten to `Flatten` (axis 1),
    /// Softmax to `Softmax` (axis -1), a residual block to its body followed by
    /// `Add(x, body(x))`. A model without layers is an `Identity`.
    ///
    /// `GlobalAveragePool` keeps the spatial axes (`[1, C, 1, 1]`) where the layer gives a
    /// vector: when a Dense, Softmax or residual block follows it without a Flatten in
    /// between, a `Flatten` node is written before that layer (the import folds the pair of
    /// reshapes away). A model that ends with the pooling reads back with a final reshape
    /// to `(C, 1, 1)`, the file's output shape.
    ///
    /// Errors: [`NnError::NotSupportedInMode`] for a layer the importer cannot read back (a
    /// [`Layer::Poly`]), with its path in the model; the shape errors of
    /// [`Sequential::shapes`] for a model whose layers do not chain. Thread-safe: it only
    /// reads the model.
    ///
    /// ```
    /// use cipherml::nn::{load_onnx_bytes, Layer, Sequential};
    /// use ndarray::{arr1, arr2};
    /// let model = Sequential::new(vec![2])
    ///     .add(Layer::Dense { weight: arr2(&[[1.0, -1.0], [0.5, 0.25]]), bias: arr1(&[0.0, 1.0]) })
    ///     .add(Layer::Relu);
    /// let bytes = model.to_onnx_bytes().unwrap();
    /// let back = load_onnx_bytes("model.onnx", &bytes).unwrap();
    /// assert_eq!(back, model); // these weights are exact in f32
    /// let x = arr1(&[3.0, 5.0]).into_dyn();
    /// assert_eq!(back.predict(&x).unwrap(), model.predict(&x).unwrap());
    /// ```
    pub fn to_onnx_bytes(&self) -> Result<Vec<u8>, NnError> {
        use prost::Message;
        self.shapes()?;
        let mut export = Export::default();
        let mut state = State {
            tensor: "input".to_string(),
            shape: self.input_shape.clone(),
            spatial_vector: false,
        };
        export.layers(&self.layers, &mut state, "")?;
        // The last tensor is renamed `output` (tensor names are unique); a model without
        // layers copies its input.
        if state.tensor == "input" {
            export.node("Identity", &["input"], "output", vec![]);
        } else {
            let last = std::mem::replace(&mut state.tensor, "output".into());
            for n in &mut export.nodes {
                for name in n.input.iter_mut().chain(n.output.iter_mut()) {
                    if *name == last {
                        *name = "output".into();
                    }
                }
            }
        }
        let model = pb::ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "cipherml".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(pb::GraphProto {
                name: "cipherml".into(),
                node: export.nodes,
                initializer: export.initializers,
                input: vec![value_info("input", &onnx_dims(&self.input_shape, false))],
                output: vec![value_info(
                    "output",
                    &onnx_dims(&state.shape, state.spatial_vector),
                )],
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(model.encode_to_vec())
    }

    /// Writes the model as an ONNX file (see [`Sequential::to_onnx_bytes`]), e.g. for
    /// `cipherml serve`.
    ///
    /// Errors: those of [`Sequential::to_onnx_bytes`], and [`NnError::Onnx`] with the path
    /// when the file cannot be written.
    pub fn save_onnx(&self, path: impl AsRef<Path>) -> Result<(), NnError> {
        let path = path.as_ref();
        let bytes = self.to_onnx_bytes()?;
        std::fs::write(path, bytes).map_err(|e| NnError::OnnxWrite {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }
}

/// The ONNX dims of a tensor of the model's shape `shape`: a batch axis of 1 first, and the
/// spatial axes `[1, 1]` last for a vector that `GlobalAveragePool` made.
fn onnx_dims(shape: &[usize], spatial_vector: bool) -> Vec<i64> {
    let mut dims: Vec<i64> = std::iter::once(1)
        .chain(shape.iter().map(|&d| d as i64))
        .collect();
    if spatial_vector {
        dims.extend([1, 1]);
    }
    dims
}

/// A float32 tensor's type and shape.
fn value_info(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
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

/// An `ints` attribute.
fn ints(name: &str, values: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

/// An `int` attribute.
fn int(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

/// The tensor the graph computes so far, with the model's shape of it.
struct State {
    /// Its name.
    tensor: String,
    /// Its shape in the model (no batch axis).
    shape: Vec<usize>,
    /// Whether it is a vector `(C,)` in the model but `[1, C, 1, 1]` in the graph (the
    /// output of `GlobalAveragePool`).
    spatial_vector: bool,
}

/// The graph being built.
#[derive(Default)]
struct Export {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    /// Tensors and nodes made so far (for unique names).
    count: usize,
}

impl Export {
    /// A fresh name with this prefix.
    fn name(&mut self, prefix: &str) -> String {
        self.count += 1;
        format!("{prefix}_{}", self.count)
    }

    /// Appends a node; its name is its output's.
    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attrs: Vec<pb::AttributeProto>) {
        self.nodes.push(pb::NodeProto {
            op_type: op.into(),
            name: format!("{op}:{output}"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute: attrs,
            ..Default::default()
        });
    }

    /// Adds a float32 initializer of these dims and (row-major) values; returns its name.
    fn initializer<'a>(
        &mut self,
        prefix: &str,
        dims: &[usize],
        values: impl IntoIterator<Item = &'a f64>,
    ) -> String {
        let name = self.name(prefix);
        let raw_data = values
            .into_iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect();
        self.initializers.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data,
            ..Default::default()
        });
        name
    }

    /// Appends a node of `op` reading the current tensor and `extra` inputs; it becomes the
    /// current tensor.
    fn apply(
        &mut self,
        state: &mut State,
        op: &str,
        extra: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) {
        let out = self.name("t");
        let mut inputs = vec![state.tensor.as_str()];
        inputs.extend_from_slice(extra);
        self.node(op, &inputs, &out, attrs);
        state.tensor = out;
    }

    /// Appends the nodes of `layers` (the layers at `path` in the model, for errors) to the
    /// graph, from the current tensor of `state` (whose shapes were checked).
    fn layers(&mut self, layers: &[Layer], state: &mut State, path: &str) -> Result<(), NnError> {
        for (i, layer) in layers.iter().enumerate() {
            // A Dense, Softmax or residual block reads a `[1, n]` tensor.
            if state.spatial_vector
                && matches!(
                    layer,
                    Layer::Dense { .. } | Layer::Softmax | Layer::Residual { .. }
                )
            {
                self.apply(state, "Flatten", &[], vec![int("axis", 1)]);
                state.spatial_vector = false;
            }
            self.layer(layer, state, &format!("{path}{i}"))?;
            state.shape = layer.output_shape(&state.shape)?;
        }
        Ok(())
    }

    /// Appends the nodes of one layer (at `path`), but does not update `state.shape`.
    fn layer(&mut self, layer: &Layer, state: &mut State, path: &str) -> Result<(), NnError> {
        match layer {
            Layer::Dense { weight, bias } => {
                let w = self.initializer("weight", weight.shape(), weight.iter());
                let b = self.initializer("bias", bias.shape(), bias.iter());
                self.apply(state, "Gemm", &[&w, &b], vec![int("transB", 1)]);
            }
            Layer::Conv2d {
                weight,
                bias,
                stride,
                padding,
            } => {
                let (_, _, kh, kw) = weight.dim();
                let w = self.initializer("weight", weight.shape(), weight.iter());
                let b = self.initializer("bias", bias.shape(), bias.iter());
                let (s, p) = (*stride as i64, *padding as i64);
                self.apply(
                    state,
                    "Conv",
                    &[&w, &b],
                    vec![
                        ints("kernel_shape", &[kh as i64, kw as i64]),
                        ints("strides", &[s, s]),
                        ints("pads", &[p, p, p, p]),
                    ],
                );
            }
            Layer::Relu => self.apply(state, "Relu", &[], vec![]),
            Layer::Sigmoid => self.apply(state, "Sigmoid", &[], vec![]),
            Layer::Square => {
                let x = state.tensor.clone();
                self.apply(state, "Mul", &[&x], vec![]);
            }
            Layer::Softmax => self.apply(state, "Softmax", &[], vec![int("axis", -1)]),
            Layer::MaxPool { kernel, stride } | Layer::AvgPool { kernel, stride } => {
                let op = if matches!(layer, Layer::MaxPool { .. }) {
                    "MaxPool"
                } else {
                    "AveragePool"
                };
                let (k, s) = (*kernel as i64, *stride as i64);
                // A window of k on a (C, L) sample, a square one on a (C, H, W) sample.
                let axes = state.shape.len() - 1;
                self.apply(
                    state,
                    op,
                    &[],
                    vec![
                        ints("kernel_shape", &vec![k; axes]),
                        ints("strides", &vec![s; axes]),
                    ],
                );
            }
            Layer::GlobalAvgPool => {
                self.apply(state, "GlobalAveragePool", &[], vec![]);
                state.spatial_vector = true;
            }
            Layer::Flatten => {
                self.apply(state, "Flatten", &[], vec![int("axis", 1)]);
                state.spatial_vector = false;
            }
            Layer::Residual { body } => {
                let shortcut = state.tensor.clone();
                let mut inner = State {
                    tensor: shortcut.clone(),
                    shape: state.shape.clone(),
                    spatial_vector: false,
                };
                self.layers(body, &mut inner, &format!("{path}."))?;
                // The body keeps the shape (checked), so it ends flat as it started.
                let body_out = inner.tensor;
                let out = self.name("t");
                self.node("Add", &[&shortcut, &body_out], &out, vec![]);
                state.tensor = out;
            }
            Layer::Poly { .. } => {
                return Err(NnError::NotSupportedInMode {
                    layer: format!("{} (layer {path})", layer.describe()),
                    mode: MODE,
                    reason: "the ONNX import reads no polynomial activation but x * x: use \
                             Square, or another supported activation"
                        .into(),
                });
            }
            _ => {
                return Err(NnError::NotSupportedInMode {
                    layer: format!("{} (layer {path})", layer.describe()),
                    mode: MODE,
                    reason: "the export writes the layers private training produces (Dense, \
                             Conv2d, activations, pooling, Flatten, residual blocks)"
                        .into(),
                });
            }
        }
        Ok(())
    }
}
