//! Models: layers, a Keras-like [`Sequential`] with a plaintext reference `predict`, ONNX
//! import, and private execution modes (non-interactive CKKS for polynomial networks).

mod ckks_mode;
pub(crate) mod hybrid;
mod layers;
mod onnx;
pub(crate) mod plan;
pub mod zoo;

pub use ckks_mode::{CkksModel, SIGMOID_BOUND};
pub use hybrid::{HybridConfig, HybridError, HybridModel};
pub use layers::Layer;
pub use onnx::{load_onnx, tract_reference};
pub use plan::{Cost, LayerPlan, Mode, NetworkModel, Plan, PrivateRun};

use ndarray::ArrayD;

/// Errors of the model layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NnError {
    /// An ONNX operator that cannot be mapped, with the node's name.
    #[error("unsupported ONNX operator {op} (node {node:?}): {reason}")]
    UnsupportedOp {
        /// The operator type.
        op: String,
        /// The node name.
        node: String,
        /// Why.
        reason: String,
    },
    /// The ONNX file could not be read or parsed.
    #[error("cannot load ONNX model {path}: {reason}")]
    Onnx {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A layer does not accept the shape it receives.
    #[error("layer {layer} cannot take an input of shape {input:?}")]
    Shape {
        /// The layer.
        layer: String,
        /// The input shape.
        input: Vec<usize>,
    },
    /// An input value is not finite.
    #[error("input value {value} at index {index} is not finite")]
    NonFinite {
        /// Flat index.
        index: usize,
        /// The value.
        value: f64,
    },
    /// The private mode cannot run this layer.
    #[error("layer {layer} cannot run in {mode} mode: {reason}")]
    NotSupportedInMode {
        /// The layer.
        layer: String,
        /// The mode.
        mode: &'static str,
        /// Why.
        reason: String,
    },
    /// An error of the HE layer.
    #[error(transparent)]
    He(#[from] cipherml_he::Error),
}

/// A Keras-like sequential model: layers applied in order to one sample.
///
/// ```
/// use cipherml::nn::{Layer, Sequential};
/// use ndarray::{arr1, arr2};
/// let model = Sequential::new(vec![2])
///     .add(Layer::Dense { weight: arr2(&[[1.0, -1.0], [0.5, 0.5]]), bias: arr1(&[0.0, 1.0]) })
///     .add(Layer::Relu);
/// let y = model.predict(&arr1(&[3.0, 5.0]).into_dyn()).unwrap();
/// assert_eq!(y.as_slice().unwrap(), &[0.0, 5.0]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Sequential {
    input_shape: Vec<usize>,
    layers: Vec<Layer>,
}

impl Sequential {
    /// An empty model for inputs of `input_shape` (no batch axis).
    pub fn new(input_shape: Vec<usize>) -> Self {
        Self {
            input_shape,
            layers: Vec::new(),
        }
    }

    /// Appends a layer (named as in Keras).
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// The layers.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// The shape after each layer; an error names the first layer that does not fit.
    pub fn shapes(&self) -> Result<Vec<Vec<usize>>, NnError> {
        let mut shapes = vec![self.input_shape.clone()];
        for l in &self.layers {
            let s = l.output_shape(shapes.last().expect("non-empty"))?;
            shapes.push(s);
        }
        Ok(shapes)
    }

    /// One line per layer with its output shape.
    pub fn summary(&self) -> Result<String, NnError> {
        let shapes = self.shapes()?;
        let mut s = format!("input {:?}\n", self.input_shape);
        for (l, sh) in self.layers.iter().zip(&shapes[1..]) {
            s.push_str(&format!("  {:<40} -> {:?}\n", l.describe(), sh));
        }
        Ok(s)
    }

    /// Plaintext prediction of one sample: the reference for private execution.
    pub fn predict(&self, x: &ArrayD<f64>) -> Result<ArrayD<f64>, NnError> {
        if let Some((index, &value)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(NnError::NonFinite { index, value });
        }
        if x.shape() != self.input_shape.as_slice() {
            return Err(NnError::Shape {
                layer: "input".into(),
                input: x.shape().to_vec(),
            });
        }
        let mut h = x.clone();
        for l in &self.layers {
            h = l.forward(&h)?;
        }
        Ok(h)
    }
}
