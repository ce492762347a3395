//! One converter per ONNX operator, in the table [`CONVERTERS`] (as CrypTen's
//! `ONNX_TO_CRYPTEN`): each parses and validates its node's attributes and constants and
//! says what the node becomes (a constant, computed at import time; layers on its
//! activation; a join of activations). Adding an operator is a row and its function.
//!
//! Shapes here are per sample: an activation of ONNX shape `[N, C, H, W]` has the sample
//! shape `[C, H, W]`, and a shape subgraph (`Shape`, `Gather`, `Concat`, ..) is computed for
//! a batch of one, so that `x.view(x.size(0), -1)` is a reshape to `[1, -1]`.

use ndarray::{Array1, Array2, Array4, ArrayD, Axis, Ix2, Ix4, IxDyn};
use tract_onnx::pb::NodeProto;

use super::graph::{per_channel, Ctx};
use super::{
    attr, attr_f, attr_i, attr_ints, elements, has_input, konst, malformed, positive, tensor,
    unsupported, MAX_ELEMENTS,
};
use crate::nn::{Activation, Join, Layer, NnError};

/// What a converter made of its node.
pub(super) enum Made {
    /// A constant (computed at import time), and whether it is of an integer type.
    Const(ArrayD<f64>, bool),
    /// Layers on the node's one activation input, giving its first output.
    Layers(Vec<Layer>),
    /// As `Layers`, giving the output of this index (the others are discarded).
    LayersAt(usize, Vec<Layer>),
    /// A join of the node's activation inputs.
    Join(Join),
}

/// A converter.
pub(super) type Convert = fn(&NodeProto, &Ctx<'_>) -> Result<Made, NnError>;

/// A row of [`CONVERTERS`].
pub(super) struct Row {
    /// The operator type.
    pub op: &'static str,
    /// Its domain (`""` for the default one).
    pub domain: &'static str,
    /// Its converter.
    pub convert: Convert,
}

const fn row(op: &'static str, convert: Convert) -> Row {
    Row {
        op,
        domain: "",
        convert,
    }
}

const fn ml(op: &'static str, convert: Convert) -> Row {
    Row {
        op,
        domain: "ai.onnx.ml",
        convert,
    }
}

/// The supported operators: the operator type, its domain, its converter.
pub(super) const CONVERTERS: &[Row] = &[
    // Constants and shape subgraphs.
    row("Constant", constant),
    row("ConstantOfShape", constant_of_shape),
    row("Shape", shape_of),
    row("Gather", gather),
    row("Slice", slice),
    row("Unsqueeze", unsqueeze),
    row("Squeeze", squeeze),
    row("Cast", cast),
    row("Identity", identity),
    row("Dropout", identity),
    // Linear layers.
    row("Gemm", gemm),
    row("MatMul", matmul),
    row("Conv", conv),
    row("BatchNormalization", batch_norm),
    // Elementwise arithmetic and joins.
    row("Add", add),
    row("Sub", sub),
    row("Mul", mul),
    row("Div", div),
    row("Neg", neg),
    row("Sum", sum),
    row("Concat", concat),
    // Activations.
    row("Relu", relu),
    row("Sigmoid", sigmoid),
    row("Tanh", tanh),
    row("LeakyRelu", leaky_relu),
    row("PRelu", prelu),
    row("HardSigmoid", hard_sigmoid),
    row("HardSwish", hard_swish),
    row("Clip", clip),
    row("Softmax", softmax),
    // Pooling.
    row("MaxPool", max_pool),
    row("AveragePool", avg_pool),
    row("GlobalAveragePool", global_avg_pool),
    row("GlobalMaxPool", global_max_pool),
    row("ReduceMean", reduce_mean),
    // Shapes.
    row("Flatten", flatten),
    row("Reshape", reshape),
    row("Transpose", transpose),
    row("Pad", pad),
    // scikit-learn's linear models (skl2onnx).
    ml("LinearClassifier", linear_classifier),
    ml("LinearRegressor", linear_regressor),
    ml("Normalizer", normalizer),
    ml("ZipMap", identity),
    ml("Cast", cast),
];

// ---------------------------------------------------------------------------------------
// Helpers.

/// The constant input `idx`, if the node has it and it is a constant.
fn const_input<'c>(ctx: &'c Ctx<'_>, node: &NodeProto, idx: usize) -> Option<&'c ArrayD<f64>> {
    node.input
        .get(idx)
        .filter(|n| !n.is_empty())
        .and_then(|n| ctx.consts.get(n))
}

/// Whether input `idx` is an integer constant.
fn int_input(ctx: &Ctx<'_>, node: &NodeProto, idx: usize) -> bool {
    node.input
        .get(idx)
        .is_some_and(|n| ctx.integers.contains(n))
}

/// The values of a constant as integers (they must be whole numbers in `i64`'s range).
fn ints_of(node: &NodeProto, what: &str, c: &ArrayD<f64>) -> Result<Vec<i64>, NnError> {
    c.iter()
        .map(|&v| {
            if v.fract() == 0.0 {
                Ok(v as i64)
            } else {
                Err(malformed(node, format!("{what} {v} is not an integer")))
            }
        })
        .collect()
}

/// An axis `a` of a rank-`rank` tensor, negative counting from the end.
fn axis(node: &NodeProto, a: i64, rank: usize) -> Result<usize, NnError> {
    let r = rank as i64;
    if a < -r || a >= r {
        return Err(malformed(node, format!("axis {a} of a rank-{rank} tensor")));
    }
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

/// The full shape `[1, ..sample]` of an activation (a batch of one).
fn full(sample: &[usize]) -> Vec<usize> {
    std::iter::once(1).chain(sample.iter().copied()).collect()
}

/// The full shape of the node's input 0: a constant's, or the activation's for a batch of
/// one.
fn input_shape(node: &NodeProto, ctx: &Ctx<'_>) -> Vec<usize> {
    match const_input(ctx, node, 0) {
        Some(c) => c.shape().to_vec(),
        None => full(ctx.shape()),
    }
}

/// The per-sample shape of an ONNX shape whose batch axis (the first) is 1.
fn sample_of(node: &NodeProto, full: &[usize]) -> Result<Vec<usize>, NnError> {
    match full.split_first() {
        Some((1, rest)) => Ok(rest.to_vec()),
        _ => Err(unsupported(
            node,
            format!("output shape {full:?} (for a batch of one) mixes the batch axis into others"),
        )),
    }
}

/// The integers of the attribute `name` (older opsets) or of the constant input `idx`
/// (newer ones), if any; `what` names one of them in errors.
fn ints_param(
    node: &NodeProto,
    ctx: &Ctx<'_>,
    idx: usize,
    name: &str,
    what: &str,
) -> Result<Option<Vec<i64>>, NnError> {
    if let Some(a) = attr_ints(node, name) {
        return Ok(Some(a));
    }
    match node.input.get(idx).filter(|n| !n.is_empty()) {
        None => Ok(None),
        Some(_) => {
            let c = const_input(ctx, node, idx)
                .ok_or_else(|| unsupported(node, format!("{name} must be a constant")))?;
            Ok(Some(ints_of(node, what, c)?))
        }
    }
}

/// The axes attribute (older opsets) or input `idx` (newer ones), if any.
fn axes_of(node: &NodeProto, ctx: &Ctx<'_>, idx: usize) -> Result<Option<Vec<i64>>, NnError> {
    ints_param(node, ctx, idx, "axes", "axis")
}

fn one_act(node: &NodeProto, ctx: &Ctx<'_>) -> Result<(), NnError> {
    if ctx.acts.len() != 1 {
        return Err(unsupported(
            node,
            format!("takes one activation, has {:?}", ctx.acts),
        ));
    }
    Ok(())
}

fn act(layer: Layer) -> Result<Made, NnError> {
    Ok(Made::Layers(vec![layer]))
}

/// The number of channels (first axis of a sample) of the node's activation.
fn channels(node: &NodeProto, ctx: &Ctx<'_>) -> Result<usize, NnError> {
    ctx.shape()
        .first()
        .copied()
        .ok_or_else(|| unsupported(node, "an activation without axes"))
}

// ---------------------------------------------------------------------------------------
// Constants and shape subgraphs.

/// `Constant`: its value (`value`, or `value_float(s)` / `value_int(s)`).
fn constant(node: &NodeProto, _: &Ctx<'_>) -> Result<Made, NnError> {
    if let Some(t) = attr(node, "value").and_then(|a| a.t.as_ref()) {
        let integer = super::is_integer_type(t.data_type);
        return Ok(Made::Const(tensor(t, &node.op_type, &node.name)?, integer));
    }
    if let Some(a) = attr(node, "value_float") {
        return Ok(Made::Const(
            ArrayD::from_elem(IxDyn(&[]), a.f as f64),
            false,
        ));
    }
    if let Some(a) = attr(node, "value_floats") {
        let v: Vec<f64> = a.floats.iter().map(|&f| f as f64).collect();
        return Ok(Made::Const(
            ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("1-D"),
            false,
        ));
    }
    if let Some(a) = attr(node, "value_int") {
        return Ok(Made::Const(ArrayD::from_elem(IxDyn(&[]), a.i as f64), true));
    }
    if let Some(a) = attr(node, "value_ints") {
        let v: Vec<f64> = a.ints.iter().map(|&i| i as f64).collect();
        return Ok(Made::Const(
            ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("1-D"),
            true,
        ));
    }
    Err(unsupported(node, "Constant without a numeric value"))
}

/// `ConstantOfShape`: a constant filled with `value` (zero by default).
fn constant_of_shape(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    let s =
        const_input(ctx, node, 0).ok_or_else(|| unsupported(node, "shape must be a constant"))?;
    let dims: Vec<usize> = ints_of(node, "dimension", s)?
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| malformed(node, format!("dimension {d}"))))
        .collect::<Result<_, _>>()?;
    if elements(&dims).is_none() {
        return Err(malformed(node, format!("shape {dims:?} is too large")));
    }
    let (value, integer) = match attr(node, "value").and_then(|a| a.t.as_ref()) {
        Some(t) => (
            tensor(t, &node.op_type, &node.name)?
                .iter()
                .next()
                .copied()
                .unwrap_or(0.0),
            super::is_integer_type(t.data_type),
        ),
        None => (0.0, false),
    };
    Ok(Made::Const(ArrayD::from_elem(IxDyn(&dims), value), integer))
}

/// `Shape`: the shape of a constant, or of an activation for a batch of one (`start` and
/// `end` as opset 15 has them).
fn shape_of(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    let dims = input_shape(node, ctx);
    let rank = dims.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
    let start = clamp(attr_i(node, "start", 0));
    let end = clamp(attr_i(node, "end", rank)).max(start);
    let v: Vec<f64> = dims[start..end].iter().map(|&d| d as f64).collect();
    Ok(Made::Const(
        ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("1-D"),
        true,
    ))
}

/// `Gather` of a constant by constant indices (scalar or 1-D).
fn gather(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    let data = const_input(ctx, node, 0)
        .ok_or_else(|| unsupported(node, "Gather from an activation (only shape subgraphs)"))?;
    let idx =
        const_input(ctx, node, 1).ok_or_else(|| unsupported(node, "indices must be a constant"))?;
    if data.ndim() == 0 {
        return Err(malformed(node, "Gather from a scalar"));
    }
    let ax = axis(node, attr_i(node, "axis", 0), data.ndim())?;
    let len = data.shape()[ax] as i64;
    let picks: Vec<usize> = ints_of(node, "index", idx)?
        .into_iter()
        .map(|i| {
            let j = if i < 0 { i + len } else { i };
            usize::try_from(j)
                .ok()
                .filter(|&j| (j as i64) < len)
                .ok_or_else(|| malformed(node, format!("index {i} on an axis of length {len}")))
        })
        .collect::<Result<_, _>>()?;
    let out = match idx.ndim() {
        0 => data.index_axis(Axis(ax), picks[0]).to_owned(),
        1 => data.select(Axis(ax), &picks),
        _ => return Err(unsupported(node, "indices of rank above 1")),
    };
    Ok(Made::Const(out, int_input(ctx, node, 0)))
}

/// `Slice` of a constant (starts, ends, axes, steps as inputs, or attributes before
/// opset 10).
fn slice(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    let data = const_input(ctx, node, 0)
        .ok_or_else(|| unsupported(node, "Slice of an activation (only of constants)"))?;
    let get = |idx: usize, name: &str| ints_param(node, ctx, idx, name, name);
    let starts = get(1, "starts")?.ok_or_else(|| malformed(node, "no starts"))?;
    let ends = get(2, "ends")?.ok_or_else(|| malformed(node, "no ends"))?;
    let axes = get(3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = get(4, "steps")?.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(malformed(
            node,
            format!("starts {starts:?}, ends {ends:?}, axes {axes:?}, steps {steps:?}"),
        ));
    }
    let mut out = data.clone();
    for k in 0..starts.len() {
        let ax = axis(node, axes[k], out.ndim())?;
        let len = out.shape()[ax] as i64;
        let step = steps[k];
        if step == 0 {
            return Err(malformed(node, "step 0"));
        }
        let norm = |v: i64| if v < 0 { v.saturating_add(len) } else { v };
        let (s, e) = (norm(starts[k]), norm(ends[k]));
        let mut idx: Vec<usize> = Vec::new();
        if step > 0 {
            let (mut i, e) = (s.clamp(0, len), e.clamp(0, len));
            while i < e {
                idx.push(i as usize);
                i = i.saturating_add(step);
            }
        } else {
            let (mut i, e) = (s.clamp(-1, len - 1), e.clamp(-1, len - 1));
            while i > e {
                idx.push(i as usize);
                i = i.saturating_add(step);
            }
        }
        out = out.select(Axis(ax), &idx);
    }
    Ok(Made::Const(out, int_input(ctx, node, 0)))
}

/// `Unsqueeze`: of a constant, or of an activation (a reshape; not of the batch axis).
fn unsqueeze(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    let axes = axes_of(node, ctx, 1)?.ok_or_else(|| malformed(node, "no axes"))?;
    let input = input_shape(node, ctx);
    let rank = input.len() + axes.len();
    let mut at: Vec<usize> = axes
        .iter()
        .map(|&a| axis(node, a, rank))
        .collect::<Result<_, _>>()?;
    at.sort_unstable();
    at.dedup();
    if at.len() != axes.len() {
        return Err(malformed(node, format!("repeated axes {axes:?}")));
    }
    if const_input(ctx, node, 0).is_none() && at.contains(&0) {
        return Err(unsupported(node, "inserts an axis before the batch axis"));
    }
    let mut out = Vec::with_capacity(rank);
    let mut it = input.iter();
    for k in 0..rank {
        if at.contains(&k) {
            out.push(1);
        } else {
            out.push(*it.next().expect("rank"));
        }
    }
    reshaped(node, ctx, out)
}

/// `Squeeze`: of a constant, or of an activation (a reshape; not of the batch axis).
fn squeeze(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    let input = input_shape(node, ctx);
    let at: Vec<usize> = match axes_of(node, ctx, 1)? {
        Some(axes) => axes
            .iter()
            .map(|&a| axis(node, a, input.len()))
            .collect::<Result<_, _>>()?,
        None => (0..input.len()).filter(|&k| input[k] == 1).collect(),
    };
    if let Some(&k) = at.iter().find(|&&k| input[k] != 1) {
        return Err(malformed(
            node,
            format!("squeezes axis {k} of length {} (shape {input:?})", input[k]),
        ));
    }
    let out: Vec<usize> = (0..input.len())
        .filter(|k| !at.contains(k))
        .map(|k| input[k])
        .collect();
    if const_input(ctx, node, 0).is_none() && at.contains(&0) {
        return Err(unsupported(node, "squeezes the batch axis"));
    }
    reshaped(node, ctx, out)
}

/// The node's input 0 in the shape `out` (full, with the batch axis for an activation).
fn reshaped(node: &NodeProto, ctx: &Ctx<'_>, out: Vec<usize>) -> Result<Made, NnError> {
    match const_input(ctx, node, 0) {
        Some(c) => Ok(Made::Const(
            c.as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(&out))
                .map_err(|e| malformed(node, format!("to shape {out:?}: {e}")))?,
            int_input(ctx, node, 0),
        )),
        None => {
            one_act(node, ctx)?;
            let shape = sample_of(node, &out)?;
            act(Layer::Reshape { shape })
        }
    }
}

/// `Cast`: of a constant (to an integer type: rounded toward zero), or of an activation to
/// a floating-point type (nothing to compute).
fn cast(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    let to = attr_i(node, "to", 1) as i32;
    let integer = super::is_integer_type(to);
    match const_input(ctx, node, 0) {
        Some(c) => Ok(Made::Const(
            if integer {
                c.mapv(f64::trunc)
            } else {
                c.clone()
            },
            integer,
        )),
        None if integer => Err(unsupported(
            node,
            format!("casts an activation to the integer type {to}"),
        )),
        None => {
            one_act(node, ctx)?;
            Ok(Made::Layers(vec![]))
        }
    }
}

/// `Identity`, `Dropout` (inference), `ZipMap`: nothing to compute.
fn identity(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    match const_input(ctx, node, 0) {
        Some(c) => Ok(Made::Const(c.clone(), int_input(ctx, node, 0))),
        None => {
            one_act(node, ctx)?;
            Ok(Made::Layers(vec![]))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Linear layers.

/// `Gemm` (`alpha A B + beta C`, `B` possibly transposed, `A` the activation): a Dense
/// layer.
fn gemm(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    one_act(node, ctx)?;
    if node.input.first() != ctx.acts.first() {
        return Err(unsupported(node, "the activation must be A (input 0)"));
    }
    if attr_i(node, "transA", 0) != 0 {
        return Err(unsupported(
            node,
            "transA = 1 (the batch would mix with features)",
        ));
    }
    let alpha = attr_f(node, "alpha", 1.0) as f64;
    let beta = attr_f(node, "beta", 1.0) as f64;
    let b = konst(ctx.consts, node, 1)?
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
        let c = konst(ctx.consts, node, 2)?;
        let shaped = match c.ndim() {
            2 if c.shape()[0] == 1 => c.index_axis(Axis(0), 0).to_owned(),
            _ => c.clone(),
        };
        let c = shaped.broadcast(IxDyn(&[out])).ok_or_else(|| {
            unsupported(
                node,
                format!(
                    "C of shape {:?} does not broadcast to [1, {out}]",
                    c.shape()
                ),
            )
        })?;
        c.iter().copied().collect::<Array1<f64>>() * beta
    } else {
        Array1::zeros(out)
    };
    dense(node, ctx, weight.as_standard_layout().to_owned(), bias)
}

/// A Dense layer on the node's activation, which must be a vector of the weight's width.
fn dense(
    node: &NodeProto,
    ctx: &Ctx<'_>,
    weight: Array2<f64>,
    bias: Array1<f64>,
) -> Result<Made, NnError> {
    let shape = ctx.shape();
    if shape.len() != 1 {
        return Err(unsupported(
            node,
            format!(
                "a product on the last axis of a sample of shape {shape:?} (only vectors: \
                 flatten first)"
            ),
        ));
    }
    act(Layer::Dense { weight, bias })
}

/// `MatMul` of the activation by a constant 2-D weight: a Dense layer without bias.
fn matmul(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    one_act(node, ctx)?;
    if node.input.first() != ctx.acts.first() {
        return Err(unsupported(
            node,
            "a constant times an activation (only x W)",
        ));
    }
    let w = konst(ctx.consts, node, 1)?
        .clone()
        .into_dimensionality::<Ix2>()
        .map_err(|_| unsupported(node, "weight is not 2-D"))?;
    if w.is_empty() {
        return Err(malformed(node, format!("weight has shape {:?}", w.shape())));
    }
    let weight: Array2<f64> = w.reversed_axes().as_standard_layout().to_owned();
    let out = weight.nrows();
    dense(node, ctx, weight, Array1::zeros(out))
}

/// The explicit pads of a 2-D Conv or pool node (`[top, left, bottom, right]`), from
/// `pads` or `auto_pad` (for input `(h, w)`, kernel and stride).
fn pads_2d(
    node: &NodeProto,
    hw: (usize, usize),
    kernel: (usize, usize),
    stride: usize,
) -> Result<[usize; 4], NnError> {
    let auto = auto_pad(node);
    match auto {
        b"" | b"NOTSET" => {}
        b"VALID" => return Ok([0; 4]),
        b"SAME_UPPER" | b"SAME_LOWER" => {
            let total = |n: usize, k: usize| {
                let out = n.div_ceil(stride);
                ((out - 1) * stride + k).saturating_sub(n)
            };
            let (th, tw) = (total(hw.0, kernel.0), total(hw.1, kernel.1));
            let upper = auto == b"SAME_UPPER";
            let split = |t: usize| {
                if upper {
                    (t / 2, t - t / 2)
                } else {
                    (t - t / 2, t / 2)
                }
            };
            let ((t, b), (l, r)) = (split(th), split(tw));
            return Ok([t, l, b, r]);
        }
        other => {
            return Err(malformed(
                node,
                format!("auto_pad {:?}", String::from_utf8_lossy(other)),
            ))
        }
    }
    explicit_pads(node)
}

/// The `auto_pad` attribute (empty if absent).
fn auto_pad(node: &NodeProto) -> &[u8] {
    attr(node, "auto_pad").map_or(&[], |a| a.s.as_slice())
}

/// The `pads` attribute of a 1-D (`N = 2`) or 2-D (`N = 4`) Conv or pool node, zeros if
/// absent or empty.
fn explicit_pads<const N: usize>(node: &NodeProto) -> Result<[usize; N], NnError> {
    match attr_ints(node, "pads") {
        None => Ok([0; N]),
        Some(p) if p.is_empty() => Ok([0; N]),
        Some(p) if p.len() != N => Err(malformed(
            node,
            format!(
                "pads {p:?}: {} values where a {}-D {} takes {N}",
                p.len(),
                N / 2,
                node.op_type
            ),
        )),
        Some(p) => {
            let mut out = [0usize; N];
            for (o, &v) in out.iter_mut().zip(&p) {
                *o = usize::try_from(v)
                    .ok()
                    .filter(|&v| v <= MAX_ELEMENTS)
                    .ok_or_else(|| malformed(node, format!("pads {p:?}")))?;
            }
            Ok(out)
        }
    }
}

/// A Pad layer for 2-D pads `[top, left, bottom, right]` of a `(C, H, W)` sample.
fn pad_layer(p: [usize; 4]) -> Layer {
    Layer::Pad {
        pads: vec![(0, 0), (p[0], p[2]), (p[1], p[3])],
    }
}

/// The weight and bias of a `Conv` node on `c` input channels, `w` its weight as
/// `(O, C/group, kh, kw)` (a 1-D one as `(O, C/group, 1, k)`; `kernel` lists the kernel
/// sizes the node's `kernel_shape` must match): the group, dilation, kernel shape and bias
/// checked, and a grouped (or depthwise) weight made block-diagonal over all the input
/// channels (output channel `oc` reads the channels `group(oc) * C/group ..`).
fn conv_weight(
    node: &NodeProto,
    ctx: &Ctx<'_>,
    w: Array4<f64>,
    c: usize,
    kernel: &[usize],
) -> Result<(Array4<f64>, Array1<f64>), NnError> {
    let (o, cg, kh, kw) = w.dim();
    if w.is_empty() {
        return Err(malformed(node, format!("weight has shape {:?}", w.shape())));
    }
    let group = attr_i(node, "group", 1);
    let g = usize::try_from(group)
        .ok()
        .filter(|&g| g >= 1 && o % g == 0 && cg.checked_mul(g) == Some(c))
        .ok_or_else(|| {
            malformed(
                node,
                format!(
                    "group {group} with weight {:?} on {c} input channels",
                    w.shape()
                ),
            )
        })?;
    if positive(node, "dilations", kernel.len())? != 1 {
        return Err(unsupported(node, "dilation"));
    }
    if let Some(k) = attr_ints(node, "kernel_shape").filter(|k| !k.is_empty()) {
        if k.len() != kernel.len()
            || k.iter()
                .zip(kernel)
                .any(|(&a, &b)| usize::try_from(a) != Ok(b))
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
    let bias: Array1<f64> = if has_input(node, 2) {
        konst(ctx.consts, node, 2)?.iter().copied().collect()
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
    if g == 1 {
        return Ok((w, bias));
    }
    if elements(&[o, c, kh, kw]).is_none() {
        return Err(malformed(node, "grouped weight too large"));
    }
    let per = o / g;
    let mut full = Array4::zeros((o, c, kh, kw));
    for oc in 0..o {
        let base = (oc / per) * cg;
        full.slice_mut(ndarray::s![oc, base..base + cg, .., ..])
            .assign(&w.slice(ndarray::s![oc, .., .., ..]));
    }
    Ok((full, bias))
}

/// `Conv` (2-D; grouped and depthwise as a block-diagonal weight; asymmetric padding as a
/// Pad layer before it): a Conv2d layer.
fn conv(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    one_act(node, ctx)?;
    let w = konst(ctx.consts, node, 1)?;
    if w.ndim() == 3 {
        return conv1d(node, ctx, w);
    }
    let w = w.clone().into_dimensionality::<Ix4>().map_err(|_| {
        unsupported(
            node,
            format!("weight of shape {:?} (only 2-D convolutions)", w.shape()),
        )
    })?;
    let (_, _, kh, kw) = w.dim();
    let shape = ctx.shape();
    let &[c, h, wd] = shape else {
        return Err(unsupported(
            node,
            format!("input of shape {shape:?} (not (C, H, W))"),
        ));
    };
    let (weight, bias) = conv_weight(node, ctx, w, c, &[kh, kw])?;
    let stride = positive(node, "strides", 2)?;
    let p = pads_2d(node, (h, wd), (kh, kw), stride)?;
    let mut layers = Vec::new();
    let padding = if p.iter().all(|&v| v == p[0]) {
        p[0]
    } else {
        layers.push(pad_layer(p));
        0
    };
    layers.push(Layer::Conv2d {
        weight,
        bias,
        stride,
        padding,
    });
    Ok(Made::Layers(layers))
}

/// A 1-D `Conv` of a `(C, L)` sample: the sample viewed as `(C, 1, L)`, padded, a `1 x k`
/// 2-D convolution (its stride on a height of one leaves one row), and back to `(O, L')`.
fn conv1d(node: &NodeProto, ctx: &Ctx<'_>, w: &ArrayD<f64>) -> Result<Made, NnError> {
    let &[o, cg, k] = w.shape() else {
        unreachable!("3-D")
    };
    let shape = ctx.shape();
    let &[c, l] = shape else {
        return Err(unsupported(
            node,
            format!("input of shape {shape:?} (not (C, L))"),
        ));
    };
    let w = w.to_shape((o, cg, 1, k)).expect("same length").to_owned();
    let (weight, bias) = conv_weight(node, ctx, w, c, &[k])?;
    let stride = positive(node, "strides", 1)?;
    let [a, b] = pads_1d(node, l, k, stride)?;
    let padded = l
        .checked_add(a)
        .and_then(|v| v.checked_add(b))
        .filter(|&v| v >= k)
        .ok_or_else(|| malformed(node, format!("kernel {k} on length {l} padded by {a}+{b}")))?;
    let out_len = (padded - k) / stride + 1;
    let mut layers = vec![Layer::Reshape {
        shape: vec![c, 1, l],
    }];
    if a + b > 0 {
        layers.push(Layer::Pad {
            pads: vec![(0, 0), (0, 0), (a, b)],
        });
    }
    layers.push(Layer::Conv2d {
        weight,
        bias,
        stride,
        padding: 0,
    });
    layers.push(Layer::Reshape {
        shape: vec![o, out_len],
    });
    Ok(Made::Layers(layers))
}

/// `BatchNormalization` (inference): a per-channel affine map (folded into a neighbouring
/// linear layer where it can be).
fn batch_norm(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    one_act(node, ctx)?;
    let eps = attr_f(node, "epsilon", 1e-5) as f64;
    if attr_i(node, "training_mode", 0) != 0 {
        return Err(unsupported(node, "training_mode = 1"));
    }
    let channels = channels(node, ctx)?;
    let params = [
        ("scale", konst(ctx.consts, node, 1)?),
        ("B", konst(ctx.consts, node, 2)?),
        ("mean", konst(ctx.consts, node, 3)?),
        ("var", konst(ctx.consts, node, 4)?),
    ];
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
    let mut scale = Array1::zeros(channels);
    let mut shift = Array1::zeros(channels);
    for o in 0..channels {
        let var = v[o] + eps;
        if !(var > 0.0 && var.is_finite()) {
            return Err(malformed(
                node,
                format!(
                    "var {} + epsilon {eps} of channel {o} is not positive and finite",
                    v[o]
                ),
            ));
        }
        scale[o] = g[o] / var.sqrt();
        shift[o] = b[o] - m[o] * scale[o];
    }
    act(Layer::Affine { scale, shift })
}

// ---------------------------------------------------------------------------------------
// Elementwise arithmetic and joins.

/// Elementwise arithmetic of two constants, with broadcasting (integers divide toward
/// zero).
fn fold_binary(node: &NodeProto, ctx: &Ctx<'_>, f: fn(f64, f64) -> f64) -> Result<Made, NnError> {
    let (Some(a), Some(b)) = (const_input(ctx, node, 0), const_input(ctx, node, 1)) else {
        return Err(malformed(node, "needs two inputs"));
    };
    let rank = a.ndim().max(b.ndim());
    let pad = |s: &[usize]| -> Vec<usize> {
        std::iter::repeat_n(1, rank - s.len())
            .chain(s.iter().copied())
            .collect()
    };
    let (sa, sb) = (pad(a.shape()), pad(b.shape()));
    let mut out = Vec::with_capacity(rank);
    for (&x, &y) in sa.iter().zip(&sb) {
        out.push(match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(malformed(
                    node,
                    format!(
                        "shapes {:?} and {:?} do not broadcast",
                        a.shape(),
                        b.shape()
                    ),
                ))
            }
        });
    }
    if elements(&out).is_none() {
        return Err(malformed(
            node,
            format!("result of shape {out:?} is too large"),
        ));
    }
    let a = a.broadcast(IxDyn(&out)).expect("checked");
    let b = b.broadcast(IxDyn(&out)).expect("checked");
    let integer = int_input(ctx, node, 0) && int_input(ctx, node, 1);
    let mut r = ndarray::Zip::from(&a).and(&b).map_collect(|&x, &y| f(x, y));
    if integer {
        r.mapv_inplace(f64::trunc);
    }
    Ok(Made::Const(r, integer))
}

/// The per-channel constant of a binary node whose other input is the activation.
fn channel_const(node: &NodeProto, ctx: &Ctx<'_>) -> Result<(Array1<f64>, bool), NnError> {
    let act_first = node.input.first() == ctx.acts.first();
    let idx = if act_first { 1 } else { 0 };
    let c = const_input(ctx, node, idx).ok_or_else(|| malformed(node, "needs two inputs"))?;
    let v = per_channel(c, ctx.shape()).ok_or_else(|| {
        unsupported(
            node,
            format!(
                "a constant of shape {:?} on an activation of shape {:?} (per sample): only \
                 scalars and per-channel constants",
                c.shape(),
                ctx.shape()
            ),
        )
    })?;
    Ok((v, act_first))
}

fn affine(scale: Array1<f64>, shift: Array1<f64>) -> Result<Made, NnError> {
    act(Layer::Affine { scale, shift })
}

/// `Add`: of constants, folded; of an activation and a constant, a per-channel offset;
/// of activations, a join.
fn add(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    match ctx.acts.len() {
        0 => fold_binary(node, ctx, |a, b| a + b),
        1 if node.input.len() == 2 && node.input[0] == node.input[1] => {
            let c = channels(node, ctx)?;
            affine(Array1::from_elem(c, 2.0), Array1::zeros(c))
        }
        1 => {
            let (v, _) = channel_const(node, ctx)?;
            affine(Array1::ones(v.len()), v)
        }
        _ => {
            if ctx.acts.len() != node.input.len() {
                return Err(unsupported(
                    node,
                    "an Add of activations and constants at once",
                ));
            }
            Ok(Made::Join(Join::Add))
        }
    }
}

/// `Sum` of activations: a join.
fn sum(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    match ctx.acts.len() {
        0 => Err(unsupported(node, "Sum of constants")),
        1 if node.input.len() == 1 => Ok(Made::Layers(vec![])),
        _ if ctx.acts.len() == node.input.len() => Ok(Made::Join(Join::Add)),
        _ => Err(unsupported(
            node,
            "a Sum of constants or of one activation several times",
        )),
    }
}

/// `Sub`: of constants, folded; `x - c` and `c - x` per channel.
fn sub(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    match ctx.acts.len() {
        0 => fold_binary(node, ctx, |a, b| a - b),
        1 if node.input.len() == 2 && node.input[0] == node.input[1] => {
            Err(unsupported(node, "x - x (zero): remove it from the model"))
        }
        1 => {
            let (v, act_first) = channel_const(node, ctx)?;
            if act_first {
                affine(Array1::ones(v.len()), -v)
            } else {
                affine(Array1::from_elem(v.len(), -1.0), v)
            }
        }
        _ => Err(unsupported(node, "a difference of two activations")),
    }
}

/// `Mul`: of constants, folded; `x * x`, a Square layer; by a constant, per channel.
fn mul(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    match ctx.acts.len() {
        0 => fold_binary(node, ctx, |a, b| a * b),
        1 if node.input.len() == 2 && node.input[0] == node.input[1] => act(Layer::Square),
        1 => {
            let (v, _) = channel_const(node, ctx)?;
            let n = v.len();
            affine(v, Array1::zeros(n))
        }
        _ => Err(unsupported(
            node,
            "a product of two different activations (only x * x and products by constants)",
        )),
    }
}

/// `Div`: of constants, folded; `x / c` per channel.
fn div(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    match ctx.acts.len() {
        0 => fold_binary(node, ctx, |a, b| a / b),
        1 => {
            let (v, act_first) = channel_const(node, ctx)?;
            if !act_first {
                return Err(unsupported(node, "a constant divided by an activation"));
            }
            if let Some(z) = v.iter().find(|&&d| d == 0.0 || !d.is_finite()) {
                return Err(malformed(node, format!("division by {z}")));
            }
            let n = v.len();
            affine(v.mapv(|d| 1.0 / d), Array1::zeros(n))
        }
        _ => Err(unsupported(node, "a quotient of two activations")),
    }
}

/// `Neg`: of a constant, folded; of an activation, `-x`.
fn neg(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    match const_input(ctx, node, 0) {
        Some(c) => Ok(Made::Const(-c, int_input(ctx, node, 0))),
        None => {
            let c = channels(node, ctx)?;
            affine(Array1::from_elem(c, -1.0), Array1::zeros(c))
        }
    }
}

/// `Concat`: of constants, folded; of activations on the channel axis, a join.
fn concat(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    let inputs: Vec<&String> = node.input.iter().filter(|n| !n.is_empty()).collect();
    if ctx.acts.is_empty() {
        let parts: Vec<&ArrayD<f64>> = inputs
            .iter()
            .map(|n| ctx.consts.get(*n).expect("a constant"))
            .collect();
        let Some(first) = parts.first() else {
            return Err(malformed(node, "no inputs"));
        };
        if parts.iter().any(|p| p.ndim() != first.ndim()) || first.ndim() == 0 {
            let shapes: Vec<&[usize]> = parts.iter().map(|p| p.shape()).collect();
            return Err(malformed(node, format!("parts of shapes {shapes:?}")));
        }
        let ax = axis(node, attr_i(node, "axis", 0), first.ndim())?;
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        let out = ndarray::concatenate(Axis(ax), &views).map_err(|e| {
            let shapes: Vec<&[usize]> = parts.iter().map(|p| p.shape()).collect();
            malformed(node, format!("parts of shapes {shapes:?}: {e}"))
        })?;
        let integer = inputs.iter().all(|n| ctx.integers.contains(*n));
        return Ok(Made::Const(out, integer));
    }
    if ctx.acts.len() != inputs.len() {
        return Err(unsupported(
            node,
            "a Concat of activations with constants or of one activation twice",
        ));
    }
    let rank = 1 + ctx.shape().len();
    let ax = axis(node, attr_i(node, "axis", 1), rank)?;
    if ax != 1 {
        return Err(unsupported(
            node,
            format!("concatenation on axis {ax} (only the channel axis, 1)"),
        ));
    }
    Ok(Made::Join(Join::Concat))
}

// ---------------------------------------------------------------------------------------
// Activations.

fn relu(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    one_act(node, ctx)?;
    act(Layer::Relu)
}

fn sigmoid(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    one_act(node, ctx)?;
    act(Layer::Sigmoid)
}

fn activation(node: &NodeProto, ctx: &Ctx<'_>, a: Activation) -> Result<Made, NnError> {
    one_act(node, ctx)?;
    if !a.is_valid() {
        return Err(malformed(node, format!("parameters {a:?}")));
    }
    act(Layer::Activation(a))
}

fn tanh(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    activation(node, ctx, Activation::Tanh)
}

fn leaky_relu(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    let alpha = attr_f(node, "alpha", 0.01) as f64;
    activation(node, ctx, Activation::LeakyRelu { alpha })
}

fn hard_sigmoid(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    let alpha = attr_f(node, "alpha", 0.2) as f64;
    let beta = attr_f(node, "beta", 0.5) as f64;
    activation(node, ctx, Activation::HardSigmoid { alpha, beta })
}

fn hard_swish(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    activation(node, ctx, Activation::HardSwish)
}

/// `Clip`: bounds as attributes (before opset 11) or constant inputs (absent: no bound);
/// `Clip(0, inf)` is a ReLU.
fn clip(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    let bound = |idx: usize, name: &str, default: f64| -> Result<f64, NnError> {
        if let Some(a) = attr(node, name) {
            return Ok(a.f as f64);
        }
        match node.input.get(idx).filter(|n| !n.is_empty()) {
            None => Ok(default),
            Some(_) => {
                let c = const_input(ctx, node, idx)
                    .ok_or_else(|| unsupported(node, format!("{name} must be a constant")))?;
                match c.iter().collect::<Vec<_>>()[..] {
                    [&v] => Ok(v),
                    _ => Err(malformed(node, format!("{name} of shape {:?}", c.shape()))),
                }
            }
        }
    };
    let min = bound(1, "min", f64::NEG_INFINITY)?;
    let max = bound(2, "max", f64::INFINITY)?;
    if min == 0.0 && max == f64::INFINITY {
        return relu(node, ctx);
    }
    activation(node, ctx, Activation::Clip { min, max })
}

/// `PRelu` with constant per-channel (or one) slopes.
fn prelu(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    one_act(node, ctx)?;
    let c = konst(ctx.consts, node, 1)?;
    let slope = per_channel(c, ctx.shape()).ok_or_else(|| {
        unsupported(
            node,
            format!(
                "slopes of shape {:?} for an activation of shape {:?} (only per channel)",
                c.shape(),
                ctx.shape()
            ),
        )
    })?;
    if slope.iter().any(|s| !s.is_finite()) {
        return Err(malformed(node, "a slope is not finite"));
    }
    act(Layer::PRelu { slope })
}

/// `Softmax` over a sample that is a vector.
fn softmax(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    one_act(node, ctx)?;
    let rank = 1 + ctx.shape().len();
    let default = if ctx.opset < 13 { 1 } else { -1 };
    let ax = axis(node, attr_i(node, "axis", default), rank)?;
    if rank != 2 || ax != 1 {
        return Err(unsupported(
            node,
            format!(
                "softmax on axis {ax} of a sample of shape {:?} (only of vectors: flatten first)",
                ctx.shape()
            ),
        ));
    }
    act(Layer::Softmax)
}

// ---------------------------------------------------------------------------------------
// Pooling.

/// The kernel, stride and explicit pads (`[top, left, bottom, right]`; for a 1-D pooling
/// `[0, left, 0, right]`) of a pooling node: a square window on a `(C, H, W)` sample, a
/// window on a `(C, L)` sample.
fn pool(node: &NodeProto, ctx: &Ctx<'_>) -> Result<(usize, usize, [usize; 4]), NnError> {
    one_act(node, ctx)?;
    let shape = ctx.shape();
    let (axes, h, w) = match *shape {
        [_, h, w] => (2, h, w),
        [_, l] => (1, 1, l),
        _ => {
            return Err(unsupported(
                node,
                format!("pooling of a sample of shape {shape:?} (only (C, H, W) or (C, L))"),
            ))
        }
    };
    let kernel = positive(node, "kernel_shape", axes)?;
    let stride = positive(node, "strides", axes)?;
    if attr_ints(node, "dilations").is_some_and(|d| d.iter().any(|&v| v != 1)) {
        return Err(unsupported(node, "dilation"));
    }
    let p = if axes == 2 {
        pads_2d(node, (h, w), (kernel, kernel), stride)?
    } else {
        let [a, b] = pads_1d(node, w, kernel, stride)?;
        [0, a, 0, b]
    };
    if attr_i(node, "ceil_mode", 0) != 0 {
        // Accepted where rounding up gives the same output.
        let exact = |n: usize, a: usize, b: usize, k: usize| {
            (n + a + b)
                .checked_sub(k)
                .is_some_and(|r| r.is_multiple_of(stride))
        };
        let rows = axes == 1 || exact(h, p[0], p[2], kernel);
        if !(rows && exact(w, p[1], p[3], kernel)) {
            return Err(unsupported(
                node,
                "ceil_mode = 1 where it changes the output",
            ));
        }
    }
    Ok((kernel, stride, p))
}

/// The explicit pads `[left, right]` of a 1-D Conv or pool node, from `pads` or
/// `auto_pad`.
fn pads_1d(
    node: &NodeProto,
    len: usize,
    kernel: usize,
    stride: usize,
) -> Result<[usize; 2], NnError> {
    if matches!(auto_pad(node), b"SAME_UPPER" | b"SAME_LOWER" | b"VALID") {
        let [t, l, b, r] = pads_2d(node, (1, len), (1, kernel), stride)?;
        debug_assert_eq!((t, b), (0, 0));
        return Ok([l, r]);
    }
    explicit_pads(node)
}

/// A Pad layer for pads `[top, left, bottom, right]` of a `(C, H, W)` sample, or
/// `[0, left, 0, right]` of a `(C, L)` sample.
fn pool_pad(p: [usize; 4], rank: usize) -> Layer {
    if rank == 2 {
        Layer::Pad {
            pads: vec![(0, 0), (p[1], p[3])],
        }
    } else {
        pad_layer(p)
    }
}

/// `MaxPool` (unpadded: its padding is `-inf`, which shares cannot hold).
fn max_pool(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    if node.output.get(1).is_some_and(|o| !o.is_empty()) {
        return Err(unsupported(node, "the indices output"));
    }
    let (kernel, stride, p) = pool(node, ctx)?;
    if p != [0; 4] {
        return Err(unsupported(
            node,
            format!("padding {p:?} in max pooling (pad with a Pad node after a ReLU instead)"),
        ));
    }
    act(Layer::MaxPool { kernel, stride })
}

/// `AveragePool`: padding that counts (`count_include_pad = 1`) as a Pad layer before it.
fn avg_pool(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    let (kernel, stride, p) = pool(node, ctx)?;
    let mut layers = Vec::new();
    if p != [0; 4] {
        if attr_i(node, "count_include_pad", 0) == 0 {
            return Err(unsupported(
                node,
                format!(
                    "padding {p:?} with count_include_pad = 0 (border windows would divide by \
                     fewer elements)"
                ),
            ));
        }
        layers.push(pool_pad(p, ctx.shape().len()));
    }
    layers.push(Layer::AvgPool { kernel, stride });
    Ok(Made::Layers(layers))
}

/// `GlobalAveragePool`: `(C, H, W) -> (C, 1, 1)`.
fn global_avg_pool(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    one_act(node, ctx)?;
    match *ctx.shape() {
        [c, _, _] => Ok(Made::Layers(vec![
            Layer::GlobalAvgPool,
            Layer::Reshape {
                shape: vec![c, 1, 1],
            },
        ])),
        [_, _] => act(Layer::Mean {
            axes: vec![1],
            keepdims: true,
        }),
        ref s => Err(unsupported(node, format!("input of shape {s:?}"))),
    }
}

/// `GlobalMaxPool` of a square image: one max-pooling window.
fn global_max_pool(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    one_act(node, ctx)?;
    match *ctx.shape() {
        [_, h, w] if h == w => act(Layer::MaxPool {
            kernel: h,
            stride: h,
        }),
        ref s => Err(unsupported(
            node,
            format!("input of shape {s:?} (only square images)"),
        )),
    }
}

/// `ReduceMean` over axes of a sample (not the batch axis): over the spatial axes of an
/// image (NCHW, or NHWC as Keras exports), a global average pooling.
fn reduce_mean(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    one_act(node, ctx)?;
    let rank = 1 + ctx.shape().len();
    let keepdims = attr_i(node, "keepdims", 1) != 0;
    let mut axes: Vec<usize> = match axes_of(node, ctx, 1)? {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|&a| axis(node, a, rank))
            .collect::<Result<_, _>>()?,
        _ if attr_i(node, "noop_with_empty_axes", 0) != 0 => return Ok(Made::Layers(vec![])),
        _ => (0..rank).collect(),
    };
    axes.sort_unstable();
    axes.dedup();
    if axes.contains(&0) {
        return Err(unsupported(node, "a mean over the batch axis"));
    }
    let axes: Vec<usize> = axes.iter().map(|a| a - 1).collect();
    let shape = ctx.shape();
    Ok(Made::Layers(match (&axes[..], shape) {
        ([1, 2], &[c, _, _]) => {
            let mut l = vec![Layer::GlobalAvgPool];
            if keepdims {
                l.push(Layer::Reshape {
                    shape: vec![c, 1, 1],
                });
            }
            l
        }
        ([0, 1], &[_, _, c]) => {
            let mut l = vec![
                Layer::Transpose {
                    perm: vec![2, 0, 1],
                },
                Layer::GlobalAvgPool,
            ];
            if keepdims {
                l.push(Layer::Reshape {
                    shape: vec![1, 1, c],
                });
            }
            l
        }
        _ => vec![Layer::Mean { axes, keepdims }],
    }))
}

// ---------------------------------------------------------------------------------------
// Shapes.

/// `Flatten` at `axis`: to a vector for axis 0 or 1, else to a matrix.
fn flatten(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    one_act(node, ctx)?;
    let f = full(ctx.shape());
    let ax = axis(node, attr_i(node, "axis", 1), f.len() + 1)?;
    if ax <= 1 {
        return act(Layer::Flatten);
    }
    let a: usize = f[1..ax].iter().product();
    let b: usize = f[ax..].iter().product();
    act(Layer::Reshape { shape: vec![a, b] })
}

/// The target of a `Reshape` against the full input shape (`0` copies the input's
/// dimension unless `allowzero`, one `-1` is inferred).
fn reshape_target(
    node: &NodeProto,
    input: &[usize],
    target: &[i64],
    allowzero: bool,
) -> Result<Vec<usize>, NnError> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (k, &d) in target.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(k);
                out.push(1);
            }
            0 if !allowzero => out.push(*input.get(k).ok_or_else(|| {
                malformed(
                    node,
                    format!("0 at axis {k} of {target:?} for input {input:?}"),
                )
            })?),
            d if d >= 0 => out.push(
                usize::try_from(d)
                    .ok()
                    .filter(|&d| d <= MAX_ELEMENTS)
                    .ok_or_else(|| malformed(node, format!("dimension {d}")))?,
            ),
            d => return Err(malformed(node, format!("dimension {d} in {target:?}"))),
        }
    }
    let known = elements(&out).ok_or_else(|| malformed(node, format!("shape {target:?}")))?;
    if let Some(k) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(malformed(
                node,
                format!("cannot infer -1 in {target:?} for {total} elements"),
            ));
        }
        out[k] = total / known;
    }
    if out.iter().product::<usize>() != total {
        return Err(malformed(
            node,
            format!("shape {target:?} for an input of shape {input:?}"),
        ));
    }
    Ok(out)
}

/// `Reshape`: of a constant, folded; of an activation, for a batch of one.
fn reshape(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    let s = konst(ctx.consts, node, 1)?;
    if s.ndim() != 1 {
        return Err(malformed(
            node,
            format!("shape constant {s} of shape {:?} is not 1-D", s.shape()),
        ));
    }
    let target = ints_of(node, "dimension", s)?;
    let allowzero = attr_i(node, "allowzero", 0) != 0;
    let input = input_shape(node, ctx);
    let out = reshape_target(node, &input, &target, allowzero)?;
    reshaped(node, ctx, out)
}

/// `Transpose`: of a constant, folded; of an activation, keeping the batch axis first.
fn transpose(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    let rank = match const_input(ctx, node, 0) {
        Some(c) => c.ndim(),
        None => 1 + ctx.shape().len(),
    };
    let perm: Vec<usize> = match attr_ints(node, "perm") {
        Some(p) => p
            .iter()
            .map(|&a| usize::try_from(a).ok().filter(|&a| a < rank))
            .collect::<Option<_>>()
            .ok_or_else(|| malformed(node, format!("perm {p:?} for rank {rank}")))?,
        None => (0..rank).rev().collect(),
    };
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&a| std::mem::replace(&mut seen[a], true)) {
        return Err(malformed(node, format!("perm {perm:?} for rank {rank}")));
    }
    if let Some(c) = const_input(ctx, node, 0) {
        return Ok(Made::Const(
            c.clone()
                .permuted_axes(IxDyn(&perm))
                .as_standard_layout()
                .into_owned(),
            int_input(ctx, node, 0),
        ));
    }
    one_act(node, ctx)?;
    if perm[0] != 0 {
        return Err(unsupported(
            node,
            format!("perm {perm:?} moves the batch axis"),
        ));
    }
    act(Layer::Transpose {
        perm: perm[1..].iter().map(|&a| a - 1).collect(),
    })
}

/// `Pad` with zeros (pads as an input from opset 11, an attribute before): a Pad layer.
fn pad(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    one_act(node, ctx)?;
    let mode = attr(node, "mode").map(|a| a.s.clone()).unwrap_or_default();
    if !mode.is_empty() && mode != b"constant" {
        return Err(unsupported(
            node,
            format!(
                "{} padding (only constant zeros)",
                String::from_utf8_lossy(&mode)
            ),
        ));
    }
    let pads: Vec<i64> = if has_input(node, 1) {
        let pads = konst(ctx.consts, node, 1)?;
        if pads.ndim() != 1 {
            return Err(malformed(
                node,
                format!(
                    "pads constant {pads} of shape {:?} is not 1-D",
                    pads.shape()
                ),
            ));
        }
        ints_of(node, "pad", pads)?
    } else {
        attr_ints(node, "pads").unwrap_or_default()
    };
    let value = match node.input.get(2).filter(|n| !n.is_empty()) {
        Some(_) => const_input(ctx, node, 2)
            .ok_or_else(|| unsupported(node, "the padding value must be a constant"))?
            .iter()
            .copied()
            .next()
            .unwrap_or(0.0),
        None => attr_f(node, "value", 0.0) as f64,
    };
    if value != 0.0 {
        return Err(unsupported(
            node,
            format!("padding value {value} (only zero)"),
        ));
    }
    if has_input(node, 3) {
        return Err(unsupported(node, "the axes input"));
    }
    let rank = 1 + ctx.shape().len();
    if pads.len() != 2 * rank || pads.iter().any(|&p| p < 0) {
        return Err(unsupported(
            node,
            format!("pads {pads:?} for rank {rank} (only non-negative, one pair per axis)"),
        ));
    }
    if pads[0] != 0 || pads[rank] != 0 {
        return Err(unsupported(
            node,
            format!("pads {pads:?} pad the batch axis"),
        ));
    }
    let mut out = Vec::with_capacity(rank - 1);
    for k in 1..rank {
        let (a, b) = (pads[k] as usize, pads[rank + k] as usize);
        if a > MAX_ELEMENTS || b > MAX_ELEMENTS {
            return Err(malformed(node, format!("pads {pads:?}")));
        }
        out.push((a, b));
    }
    act(Layer::Pad { pads: out })
}

// ---------------------------------------------------------------------------------------
// scikit-learn (ai.onnx.ml).

/// The weights `(rows, features)` and intercepts of a linear model's attributes.
fn linear_weights(
    node: &NodeProto,
    ctx: &Ctx<'_>,
) -> Result<(Array2<f64>, Array1<f64>, String), NnError> {
    one_act(node, ctx)?;
    let shape = ctx.shape();
    let &[features] = shape else {
        return Err(unsupported(
            node,
            format!("input of shape {shape:?} (only vectors)"),
        ));
    };
    let coef: Vec<f64> = attr(node, "coefficients")
        .map(|a| a.floats.iter().map(|&f| f as f64).collect())
        .unwrap_or_default();
    if coef.is_empty() || features == 0 || !coef.len().is_multiple_of(features) {
        return Err(malformed(
            node,
            format!("{} coefficients for {features} features", coef.len()),
        ));
    }
    let rows = coef.len() / features;
    let weight = Array2::from_shape_vec((rows, features), coef).expect("checked");
    let intercepts: Vec<f64> = attr(node, "intercepts")
        .map(|a| a.floats.iter().map(|&f| f as f64).collect())
        .unwrap_or_default();
    let bias = match intercepts.len() {
        0 => Array1::zeros(rows),
        n if n == rows => Array1::from(intercepts),
        n => {
            return Err(malformed(
                node,
                format!("{n} intercepts for {rows} rows of coefficients"),
            ))
        }
    };
    let post = attr(node, "post_transform")
        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
        .unwrap_or_else(|| "NONE".into());
    Ok((weight, bias, post))
}

/// `LinearClassifier`: a Dense layer of scores, then the post transform (a sigmoid or a
/// softmax); the predicted label (output 0) is dropped: it is the argmax of the scores.
fn linear_classifier(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    let (mut weight, mut bias, post) = linear_weights(node, ctx)?;
    let labels = attr(node, "classlabels_ints")
        .map(|a| a.ints.len())
        .filter(|&n| n > 0)
        .or_else(|| attr(node, "classlabels_strings").map(|a| a.strings.len()))
        .unwrap_or(0);
    if labels == 2 && weight.nrows() == 1 {
        // The binary case with one row of coefficients scores `[-s, s]`.
        weight =
            ndarray::concatenate(Axis(0), &[(-&weight).view(), weight.view()]).expect("same width");
        bias = ndarray::concatenate(Axis(0), &[(-&bias).view(), bias.view()]).expect("1-D");
    }
    if labels != 0 && labels != weight.nrows() {
        return Err(malformed(
            node,
            format!(
                "{labels} class labels for {} rows of coefficients",
                weight.nrows()
            ),
        ));
    }
    let mut layers = vec![Layer::Dense { weight, bias }];
    match post.as_str() {
        "NONE" => {}
        "LOGISTIC" => layers.push(Layer::Sigmoid),
        "SOFTMAX" => layers.push(Layer::Softmax),
        other => {
            return Err(unsupported(
                node,
                format!("post_transform {other} (only NONE, LOGISTIC, SOFTMAX)"),
            ))
        }
    }
    Ok(Made::LayersAt(1, layers))
}

/// `LinearRegressor`: a Dense layer.
fn linear_regressor(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    let (weight, bias, post) = linear_weights(node, ctx)?;
    if post != "NONE" {
        return Err(unsupported(node, format!("post_transform {post}")));
    }
    act(Layer::Dense { weight, bias })
}

/// `Normalizer` (L1) of probabilities that already sum to one (after a softmax, or a
/// sigmoid of the binary case's `[-s, s]`): nothing to compute.
fn normalizer(node: &NodeProto, ctx: &Ctx<'_>) -> Result<Made, NnError> {
    one_act(node, ctx)?;
    let norm = attr(node, "norm")
        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
        .unwrap_or_default();
    let input = &ctx.acts[0];
    let sums_to_one = match ctx.producer_layers(input) {
        Some([.., Layer::Softmax]) => true,
        // sigmoid(-s) + sigmoid(s) = 1.
        Some([.., Layer::Dense { weight, bias }, Layer::Sigmoid]) => {
            weight.nrows() == 2
                && weight
                    .row(0)
                    .iter()
                    .zip(weight.row(1))
                    .all(|(a, b)| *a == -*b)
                && bias[0] == -bias[1]
        }
        _ => false,
    };
    if norm == "L1" && sums_to_one {
        return Ok(Made::Layers(vec![]));
    }
    Err(unsupported(
        node,
        format!(
            "{norm} normalization (only L1 of probabilities that already sum to one, as \
             skl2onnx writes after a softmax)"
        ),
    ))
}
