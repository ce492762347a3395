//! A small JSON description of a [`Sequential`] model, for training from scratch without
//! an ONNX file (`cipherml train --model model.json`):
//!
//! ```json
//! {"input": [30], "seed": 1, "layers": [{"dense": 16}, "relu", {"dense": 1}]}
//! ```
//!
//! `input` is the shape of one sample (no batch axis); `seed` (default 0) seeds the
//! ChaCha20 generator of the initial weights. A layer is one of the strings `"relu"`,
//! `"sigmoid"`, `"flatten"`, `"globalavgpool"`, or an object with one key:
//! `{"dense": OUT}`, `{"conv2d": {"out": O, "kernel": K, "stride": S, "padding": P}}`
//! (stride default 1, padding default 0), `{"maxpool": K}` or `{"avgpool": K}` (a `K x K`
//! window with stride `K`; or `{"maxpool": {"kernel": K, "stride": S}}`).
//!
//! Weights are Glorot-uniform (`U(-a, a)`, `a = sqrt(6 / (fan_in + fan_out))`, drawn in
//! row-major order, layer after layer), biases zero: the same description always gives
//! the same model, so two parties that each read it start from identical weights.
//!
//! ```
//! let m = cipherml::nn::model_from_json(
//!     r#"{"input": [30], "seed": 1, "layers": [{"dense": 16}, "relu", {"dense": 1}]}"#,
//! )
//! .unwrap();
//! assert_eq!(m.shapes().unwrap().last().unwrap(), &vec![1]);
//! ```

use ndarray::{Array1, Array2, Array4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::Value;

use super::{Layer, NnError, Sequential};

/// Most layers in a description.
const MAX_LAYERS: usize = 256;
/// Most weights in a described model (2^26, 512 MiB of f64).
const MAX_WEIGHTS: usize = 1 << 26;
/// Largest size of one axis (input, units, channels, kernel, stride, padding).
const MAX_DIM: u64 = 1 << 20;

fn invalid(detail: impl Into<String>) -> NnError {
    NnError::Config {
        what: "model description (JSON)",
        detail: detail.into(),
    }
}

/// A size: a positive integer (zero allowed if `zero_ok`) of at most `2^20`.
fn size(v: &Value, what: &str, zero_ok: bool) -> Result<usize, NnError> {
    match v.as_u64() {
        Some(n) if (zero_ok || n > 0) && n <= MAX_DIM => Ok(n as usize),
        _ => Err(invalid(format!(
            "{what}: expected an integer in [{}, {MAX_DIM}], found {v}",
            u8::from(!zero_ok)
        ))),
    }
}

/// The fields of an object, refusing any key not in `allowed`.
fn fields<'a>(
    v: &'a Value,
    what: &str,
    allowed: &[&str],
) -> Result<&'a serde_json::Map<String, Value>, NnError> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(format!("{what}: expected an object, found {v}")))?;
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(invalid(format!(
            "{what}: unknown key {k:?} (expected {})",
            allowed.join(", ")
        )));
    }
    Ok(obj)
}

/// Glorot-uniform values: `U(-a, a)` with `a = sqrt(6 / (fan_in + fan_out))`.
fn glorot(rng: &mut ChaCha20Rng, fan_in: usize, fan_out: usize) -> impl FnMut() -> f64 + '_ {
    let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
    move || rng.random_range(-a..a)
}

/// The model a JSON description gives (see the [module documentation](self)): layers
/// checked against the shapes they receive, Glorot-uniform weights from `seed`, zero
/// biases. An unknown layer, key or a shape that does not fit is an
/// [`Error::Invalid`](crate::Error::Invalid) or [`Error::LayerShape`](crate::Error::LayerShape)
/// naming it.
pub fn model_from_json(text: &str) -> Result<Sequential, NnError> {
    let root: Value = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let obj = fields(&root, "the description", &["input", "seed", "layers"])?;
    let input = obj
        .get("input")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("\"input\": expected the shape of one sample, e.g. [30]"))?;
    if input.is_empty() || input.len() > 3 {
        return Err(invalid(format!(
            "\"input\": expected 1 to 3 axes, found {}",
            input.len()
        )));
    }
    let input = input
        .iter()
        .map(|v| size(v, "\"input\"", false))
        .collect::<Result<Vec<_>, _>>()?;
    let seed = match obj.get("seed") {
        None => 0,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| invalid(format!("\"seed\": expected an unsigned integer, found {v}")))?,
    };
    let layers = obj
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("\"layers\": expected a list of layers"))?;
    if layers.is_empty() || layers.len() > MAX_LAYERS {
        return Err(invalid(format!(
            "\"layers\": expected 1 to {MAX_LAYERS} layers, found {}",
            layers.len()
        )));
    }
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut model = Sequential::new(input.clone());
    let mut shape = input;
    let mut weights = 0usize;
    for (i, spec) in layers.iter().enumerate() {
        let what = format!("layer {i}");
        let layer = match spec {
            Value::String(name) => match name.as_str() {
                "relu" => Layer::Relu,
                "sigmoid" => Layer::Sigmoid,
                "flatten" => Layer::Flatten,
                "globalavgpool" => Layer::GlobalAvgPool,
                other => {
                    return Err(invalid(format!(
                        "{what}: unknown layer {other:?} (expected \"relu\", \"sigmoid\", \
                         \"flatten\", \"globalavgpool\", or an object with one of the keys \
                         dense, conv2d, maxpool, avgpool)"
                    )))
                }
            },
            Value::Object(o) if o.len() == 1 => {
                let (kind, arg) = o.iter().next().expect("one key");
                let count = |w: &mut usize, n: usize| -> Result<(), NnError> {
                    *w = w.saturating_add(n);
                    if *w > MAX_WEIGHTS {
                        return Err(invalid(format!(
                            "{what}: more than {MAX_WEIGHTS} weights in the model"
                        )));
                    }
                    Ok(())
                };
                match kind.as_str() {
                    "dense" => {
                        let out = size(arg, &format!("{what} (dense)"), false)?;
                        if shape.len() != 1 {
                            return Err(NnError::LayerShape {
                                layer: format!("{what}: dense {out} (add \"flatten\" first)"),
                                input: shape,
                            });
                        }
                        let inp = shape[0];
                        count(&mut weights, out.saturating_mul(inp))?;
                        let mut draw = glorot(&mut rng, inp, out);
                        Layer::Dense {
                            weight: Array2::from_shape_fn((out, inp), |_| draw()),
                            bias: Array1::zeros(out),
                        }
                    }
                    "conv2d" => {
                        let w = format!("{what} (conv2d)");
                        let c = fields(arg, &w, &["out", "kernel", "stride", "padding"])?;
                        let get = |k: &str, default: Option<usize>, zero_ok: bool| match (
                            c.get(k),
                            default,
                        ) {
                            (Some(v), _) => size(v, &format!("{w} {k:?}"), zero_ok),
                            (None, Some(d)) => Ok(d),
                            (None, None) => Err(invalid(format!("{w}: {k:?} is required"))),
                        };
                        let out = get("out", None, false)?;
                        let kernel = get("kernel", None, false)?;
                        let stride = get("stride", Some(1), false)?;
                        let padding = get("padding", Some(0), true)?;
                        if shape.len() != 3 {
                            return Err(NnError::LayerShape {
                                layer: format!("{w}: expects (channels, height, width)"),
                                input: shape,
                            });
                        }
                        let inc = shape[0];
                        let area = kernel.saturating_mul(kernel);
                        count(&mut weights, out.saturating_mul(inc).saturating_mul(area))?;
                        let mut draw = glorot(&mut rng, inc * area, out * area);
                        Layer::Conv2d {
                            weight: Array4::from_shape_fn((out, inc, kernel, kernel), |_| draw()),
                            bias: Array1::zeros(out),
                            stride,
                            padding,
                        }
                    }
                    "maxpool" | "avgpool" => {
                        let w = format!("{what} ({kind})");
                        let (kernel, stride) = if arg.is_object() {
                            let p = fields(arg, &w, &["kernel", "stride"])?;
                            let kernel = size(
                                p.get("kernel").unwrap_or(&Value::Null),
                                &format!("{w} \"kernel\""),
                                false,
                            )?;
                            let stride = match p.get("stride") {
                                Some(v) => size(v, &format!("{w} \"stride\""), false)?,
                                None => kernel,
                            };
                            (kernel, stride)
                        } else {
                            let k = size(arg, &w, false)?;
                            (k, k)
                        };
                        if kind == "maxpool" {
                            Layer::MaxPool { kernel, stride }
                        } else {
                            Layer::AvgPool { kernel, stride }
                        }
                    }
                    other => {
                        return Err(invalid(format!(
                            "{what}: unknown layer {other:?} (expected dense, conv2d, maxpool \
                             or avgpool)"
                        )))
                    }
                }
            }
            other => {
                return Err(invalid(format!(
                    "{what}: expected a layer name or an object with one key, found {other}"
                )))
            }
        };
        shape = layer.output_shape(&shape)?;
        if shape.contains(&0) {
            return Err(NnError::LayerShape {
                layer: layer.describe(),
                input: shape,
            });
        }
        model = model.add(layer);
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MLP: &str =
        r#"{"input": [30], "seed": 1, "layers": [{"dense": 16}, "relu", {"dense": 1}]}"#;

    #[test]
    fn shapes_of_an_mlp_and_a_cnn() {
        let m = model_from_json(MLP).unwrap();
        assert_eq!(m.input_shape(), &[30]);
        assert_eq!(
            m.shapes().unwrap(),
            vec![vec![30], vec![16], vec![16], vec![1]]
        );
        let Layer::Dense { weight, bias } = &m.layers()[0] else {
            panic!("{:?}", m.layers()[0])
        };
        assert_eq!(weight.dim(), (16, 30));
        assert!(bias.iter().all(|&b| b == 0.0));
        // Glorot-uniform bound for 30 -> 16, and the values actually spread over it.
        let a = (6.0f64 / 46.0).sqrt();
        assert!(weight.iter().all(|w| w.abs() < a));
        assert!(weight.iter().any(|w| w.abs() > a / 2.0));
        let mean = weight.sum() / weight.len() as f64;
        assert!(mean.abs() < 0.1, "{mean}");

        let cnn = model_from_json(
            r#"{"input": [1, 8, 8], "seed": 7, "layers": [
                {"conv2d": {"out": 4, "kernel": 3, "stride": 1, "padding": 1}}, "relu",
                {"maxpool": 2}, {"avgpool": {"kernel": 2, "stride": 2}}, "flatten",
                {"dense": 10}, "sigmoid"]}"#,
        )
        .unwrap();
        assert_eq!(
            cnn.shapes().unwrap(),
            vec![
                vec![1, 8, 8],
                vec![4, 8, 8],
                vec![4, 8, 8],
                vec![4, 4, 4],
                vec![4, 2, 2],
                vec![16],
                vec![10],
                vec![10]
            ]
        );
        let Layer::Conv2d { weight, .. } = &cnn.layers()[0] else {
            panic!()
        };
        assert_eq!(weight.dim(), (4, 1, 3, 3));
        let a = (6.0f64 / (9.0 + 36.0)).sqrt();
        assert!(weight.iter().all(|w| w.abs() < a));
    }

    #[test]
    fn same_description_same_weights_other_seed_other_weights() {
        let a = model_from_json(MLP).unwrap();
        assert_eq!(a, model_from_json(MLP).unwrap());
        let b = model_from_json(&MLP.replace("\"seed\": 1", "\"seed\": 2")).unwrap();
        assert_ne!(a, b);
        // The first layer's weights are drawn as tests/train.rs draws them.
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let bound = (6.0f64 / 46.0).sqrt();
        let first: f64 = rng.random_range(-bound..bound);
        let Layer::Dense { weight, .. } = &a.layers()[0] else {
            panic!()
        };
        assert_eq!(weight[[0, 0]], first);
    }

    #[test]
    fn bad_descriptions_are_errors() {
        for (text, needle) in [
            (
                r#"{"input": [4], "layers": ["tanh"]}"#,
                "unknown layer \"tanh\"",
            ),
            (
                r#"{"input": [4], "layers": [{"lstm": 3}]}"#,
                "unknown layer \"lstm\"",
            ),
            (r#"{"input": [4], "layers": [{"dense": 0}]}"#, "dense"),
            (r#"{"input": [4], "layers": []}"#, "layers"),
            (
                r#"{"input": [4], "layers": [{"dense": 2}], "x": 1}"#,
                "unknown key",
            ),
            (r#"{"layers": [{"dense": 2}]}"#, "input"),
            (
                r#"{"input": [2, 4, 4], "layers": [{"dense": 2}]}"#,
                "flatten",
            ),
            (r#"{"input": [4], "layers": [{"maxpool": 2}]}"#, "MaxPool"),
            (
                r#"{"input": [1, 4, 4], "layers": [{"conv2d": {"out": 2}}]}"#,
                "\"kernel\" is required",
            ),
            (r#"{"input": [4], "layers": [{"dense": 2000000}]}"#, "dense"),
            ("not json", "model description"),
        ] {
            let e = model_from_json(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
