//! The ONNX graph as a DAG of activations, and its decomposition into nested chains.
//!
//! Each node is converted as it comes (ONNX lists nodes in topological order): a node whose
//! inputs are all constants, or that reads only the shape of an activation, is evaluated
//! at import time (shape subgraphs fold to constants, computed for a batch of one); any
//! other node becomes layers applied to its one activation input, or a join (`Add`, `Sum`,
//! `Concat`) of several. The model is then read off the part of the DAG that leads to the
//! output: a chain of layers, where a tensor read by several nodes opens branches that
//! must meet again at one join, which becomes a [`Layer::Branches`] (an identity shortcut
//! with an `Add`: a [`Layer::Residual`]). Branches nest, as in ResNet and Inception
//! blocks; a DAG that is not such a nest of blocks is refused, naming the node where the
//! branches fail to meet. Last, [`simplify`] folds per-channel affine maps into the
//! neighbouring linear layers, zero padding into the convolution after it, and merges
//! reshapes and transpositions.

use std::collections::{HashMap, HashSet};

use ndarray::{Array1, ArrayD, Dimension};
use tract_onnx::pb::NodeProto;

use super::ops::{self, Made};
use super::{elements, malformed, output, unsupported, MAX_ELEMENTS};
use crate::nn::{chain_shapes, Join, Layer, NnError, Sequential, MAX_ARCH_DEPTH};

/// A node that computes on activations: layers on its one activation input, or a join of
/// several.
#[derive(Debug)]
struct Node {
    op: String,
    name: String,
    /// The distinct activation inputs, in the node's order.
    inputs: Vec<String>,
    output: String,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Layers(Vec<Layer>),
    Join(Join),
}

/// What a converter may read of the import so far.
pub(super) struct Ctx<'a> {
    /// The constants so far, by tensor name.
    pub consts: &'a HashMap<String, ArrayD<f64>>,
    /// Constants of an integer type (their division rounds toward zero).
    pub integers: &'a HashSet<String>,
    /// The per-sample shape of every activation so far.
    pub shapes: &'a HashMap<String, Vec<usize>>,
    /// The node's distinct activation inputs.
    pub acts: Vec<String>,
    /// The default-domain opset of the model.
    pub opset: i64,
    /// The layers of the node that produced each activation (for `Normalizer`).
    pub producers: &'a HashMap<String, usize>,
    nodes: &'a [Node],
}

impl Ctx<'_> {
    /// The per-sample shape of the node's first activation input.
    pub fn shape(&self) -> &[usize] {
        self.acts
            .first()
            .and_then(|a| self.shapes.get(a))
            .map_or(&[], Vec::as_slice)
    }

    /// The layers of the node that computes `act` (through layer-less nodes), if any.
    pub fn producer_layers(&self, act: &str) -> Option<&[Layer]> {
        let mut name = act;
        loop {
            let node = &self.nodes[*self.producers.get(name)?];
            match &node.kind {
                Kind::Layers(l) if !l.is_empty() => return Some(l),
                Kind::Layers(_) => name = node.inputs.first()?,
                Kind::Join(_) => return None,
            }
        }
    }
}

/// The graph so far.
pub(super) struct Graph {
    consts: HashMap<String, ArrayD<f64>>,
    integers: HashSet<String>,
    shapes: HashMap<String, Vec<usize>>,
    /// Outputs nothing may compute with (a classifier's labels, a Dropout's mask).
    discarded: HashSet<String>,
    producers: HashMap<String, usize>,
    nodes: Vec<Node>,
    opset: i64,
    input: String,
    input_shape: Vec<usize>,
}

impl Graph {
    pub fn new(
        consts: HashMap<String, ArrayD<f64>>,
        integers: HashSet<String>,
        opset: i64,
        input: String,
        input_shape: Vec<usize>,
    ) -> Self {
        Self {
            consts,
            integers,
            shapes: HashMap::from([(input.clone(), input_shape.clone())]),
            discarded: HashSet::new(),
            producers: HashMap::new(),
            nodes: Vec::new(),
            opset,
            input,
            input_shape,
        }
    }

    /// Converts one node.
    pub fn add(&mut self, node: &NodeProto) -> Result<(), NnError> {
        let domain = node.domain.as_str();
        let row = ops::CONVERTERS
            .iter()
            .find(|r| r.op == node.op_type && r.domain == domain_of(domain));
        let Some(row) = row else {
            let known = ops::CONVERTERS.iter().any(|r| r.op == node.op_type);
            return Err(unsupported(
                node,
                if known {
                    format!(
                        "{} of domain {domain:?} has no private implementation",
                        node.op_type
                    )
                } else {
                    format!(
                        "{} (domain {:?}, opset {}) has no private implementation; the \
                         supported operators are listed in the README (export the model \
                         with another activation or layer, or fold it away before export)",
                        node.op_type,
                        if domain.is_empty() { "ai.onnx" } else { domain },
                        self.opset
                    )
                },
            ));
        };
        let out = output(node)?.clone();
        let mut acts: Vec<String> = Vec::new();
        let mut reads_discarded = false;
        for i in node.input.iter().filter(|i| !i.is_empty()) {
            if self.consts.contains_key(i) {
                continue;
            }
            if self.shapes.contains_key(i) {
                if !acts.contains(i) {
                    acts.push(i.clone());
                }
            } else if self.discarded.contains(i) {
                reads_discarded = true;
            } else {
                return Err(malformed(
                    node,
                    format!("input {i:?} is neither a constant nor computed by an earlier node"),
                ));
            }
        }
        if reads_discarded {
            if !acts.is_empty() {
                return Err(unsupported(
                    node,
                    format!("computes with a classifier's labels and activations {acts:?} at once"),
                ));
            }
            // Labels in, labels out (a Cast of the predicted label): nothing to compute.
            self.discarded.extend(node.output.iter().cloned());
            return Ok(());
        }
        let ctx = Ctx {
            consts: &self.consts,
            integers: &self.integers,
            shapes: &self.shapes,
            acts,
            opset: self.opset,
            producers: &self.producers,
            nodes: &self.nodes,
        };
        let made = (row.convert)(node, &ctx)?;
        let acts = ctx.acts;
        let (kind, at) = match made {
            Made::Const(value, integer) => {
                if elements(value.shape()).is_none() {
                    return Err(malformed(
                        node,
                        format!("constant of shape {:?} is too large", value.shape()),
                    ));
                }
                if integer {
                    self.integers.insert(out.clone());
                }
                self.consts.insert(out, value);
                return Ok(());
            }
            Made::Layers(layers) => (Kind::Layers(layers), 0),
            Made::LayersAt(index, layers) => (Kind::Layers(layers), index),
            Made::Join(join) => (Kind::Join(join), 0),
        };
        let shape = match &kind {
            Kind::Layers(layers) => {
                let [input] = &acts[..] else {
                    return Err(unsupported(
                        node,
                        format!(
                            "{} of {} activations {acts:?} (it takes one)",
                            node.op_type,
                            acts.len()
                        ),
                    ));
                };
                bounded_shape(layers, &self.shapes[input]).map_err(|e| match e {
                    NnError::LayerShape { layer, input } => malformed(
                        node,
                        format!("{layer} does not apply to an input of shape {input:?}"),
                    ),
                    e => e,
                })?
            }
            Kind::Join(join) => {
                if acts.len() < 2 {
                    return Err(unsupported(node, "a join of fewer than two activations"));
                }
                let shapes: Vec<&Vec<usize>> = acts.iter().map(|a| &self.shapes[a]).collect();
                join_shape(*join, &shapes).ok_or_else(|| {
                    malformed(
                        node,
                        format!(
                            "{:?} of activations of shapes {shapes:?} (per sample)",
                            join
                        ),
                    )
                })?
            }
        };
        let Some(out) = node.output.get(at).filter(|o| !o.is_empty()).cloned() else {
            return Err(malformed(
                node,
                format!("no output {at} (outputs {:?})", node.output),
            ));
        };
        for (i, o) in node.output.iter().enumerate() {
            if i != at && !o.is_empty() {
                self.discarded.insert(o.clone());
            }
        }
        if self.shapes.contains_key(&out) || self.consts.contains_key(&out) {
            return Err(malformed(
                node,
                format!("output {out:?} is already defined"),
            ));
        }
        self.shapes.insert(out.clone(), shape);
        self.producers.insert(out.clone(), self.nodes.len());
        self.nodes.push(Node {
            op: node.op_type.clone(),
            name: node.name.clone(),
            inputs: acts,
            output: out,
            kind,
        });
        Ok(())
    }

    /// The model: the nodes that lead to the first graph output computed from the input,
    /// as nested chains of layers.
    pub fn into_model(self, outputs: &[&str], path: &str) -> Result<Sequential, NnError> {
        let Some(out) = outputs
            .iter()
            .find(|o| self.shapes.contains_key(**o))
            .map(|o| o.to_string())
        else {
            return Err(NnError::Onnx {
                path: path.to_string(),
                reason: format!(
                    "no graph output {outputs:?} is computed from the input {:?}",
                    self.input
                ),
            });
        };
        // The nodes the output depends on.
        let mut needed = vec![false; self.nodes.len()];
        let mut stack = vec![out.clone()];
        while let Some(v) = stack.pop() {
            if let Some(&n) = self.producers.get(&v) {
                if !std::mem::replace(&mut needed[n], true) {
                    stack.extend(self.nodes[n].inputs.iter().cloned());
                }
            }
        }
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate().filter(|(i, _)| needed[*i]) {
            for input in &n.inputs {
                consumers.entry(input.as_str()).or_default().push(i);
            }
        }
        let walker = Walker {
            nodes: &self.nodes,
            consumers,
        };
        let (layers, end, join) = walker.chain(&self.input, 0)?;
        if let Some(j) = join {
            let n = &self.nodes[j];
            return Err(unsupported_at(
                n,
                format!(
                    "joins {:?}, which do not all branch from one tensor",
                    n.inputs
                ),
            ));
        }
        if end != out {
            return Err(NnError::Onnx {
                path: path.to_string(),
                reason: format!("the chain from the input ends at {end:?}, not at {out:?}"),
            });
        }
        let layers = simplify(layers, &self.input_shape)?;
        let mut model = Sequential::new(self.input_shape.clone());
        for l in layers {
            model = model.add(l);
        }
        bounded_shape(model.layers(), model.input_shape())?;
        Ok(model)
    }
}

/// The default domain is spelled `""` or `ai.onnx`.
fn domain_of(domain: &str) -> &str {
    if domain == "ai.onnx" {
        ""
    } else {
        domain
    }
}

fn unsupported_at(node: &Node, reason: String) -> NnError {
    NnError::UnsupportedOp {
        op: node.op.clone(),
        node: node.name.clone(),
        reason,
    }
}

/// The per-sample shape of a join of activations of `shapes`, if they fit.
fn join_shape(join: Join, shapes: &[&Vec<usize>]) -> Option<Vec<usize>> {
    let first = shapes.first()?;
    match join {
        Join::Add => shapes.iter().all(|s| s == first).then(|| first.to_vec()),
        Join::Concat => {
            let fits = !first.is_empty()
                && shapes
                    .iter()
                    .all(|s| s.len() == first.len() && s[1..] == first[1..]);
            if !fits {
                return None;
            }
            let mut out = first.to_vec();
            out[0] = shapes.iter().try_fold(0usize, |a, s| a.checked_add(s[0]))?;
            elements(&out).map(|_| out)
        }
    }
}

/// Reads the nested chains off the DAG.
struct Walker<'a> {
    nodes: &'a [Node],
    consumers: HashMap<&'a str, Vec<usize>>,
}

impl Walker<'_> {
    /// The chain of layers from the tensor `from` until the output, or until a join that
    /// this chain does not open (returned for the caller, with the tensor that enters it).
    fn chain(
        &self,
        from: &str,
        depth: usize,
    ) -> Result<(Vec<Layer>, String, Option<usize>), NnError> {
        let mut layers = Vec::new();
        let mut cur = from.to_string();
        loop {
            let cons = self
                .consumers
                .get(cur.as_str())
                .map_or(&[][..], Vec::as_slice);
            if cons.is_empty() {
                return Ok((layers, cur, None));
            }
            if cons.len() == 1 {
                let n = &self.nodes[cons[0]];
                match &n.kind {
                    Kind::Join(_) => return Ok((layers, cur, Some(cons[0]))),
                    Kind::Layers(l) => {
                        layers.extend(l.iter().cloned());
                        cur = n.output.clone();
                        continue;
                    }
                }
            }
            // A fork: every branch must end at one join.
            if depth >= MAX_ARCH_DEPTH {
                return Err(unsupported_at(
                    &self.nodes[cons[0]],
                    format!("blocks nested deeper than {MAX_ARCH_DEPTH}"),
                ));
            }
            let mut branches: Vec<(String, Vec<Layer>)> = Vec::new();
            let mut join: Option<usize> = None;
            for &c in cons {
                let n = &self.nodes[c];
                let (body, end, j) = match &n.kind {
                    Kind::Join(_) => (Vec::new(), cur.clone(), Some(c)),
                    Kind::Layers(l) => {
                        let (rest, end, j) = self.chain(&n.output, depth + 1)?;
                        let mut body = l.clone();
                        body.extend(rest);
                        (body, end, j)
                    }
                };
                let Some(j) = j else {
                    return Err(unsupported_at(
                        n,
                        format!(
                            "a branch from {cur:?} that ends at {end:?} without joining the \
                             others (a model has one output)"
                        ),
                    ));
                };
                match join {
                    None => join = Some(j),
                    Some(first) if first != j => {
                        let (a, b) = (&self.nodes[first], &self.nodes[j]);
                        return Err(unsupported_at(
                            b,
                            format!(
                                "branches from {cur:?} join at {:?} and at {:?}: not a nest of \
                                 blocks (every branch from a tensor must meet the others at \
                                 one Add or Concat)",
                                a.name, b.name
                            ),
                        ));
                    }
                    Some(_) => {}
                }
                branches.push((end, body));
            }
            let j = join.expect("at least two consumers");
            let jn = &self.nodes[j];
            let Kind::Join(kind) = jn.kind else {
                unreachable!("a join node")
            };
            // The join's inputs must be exactly the branches' ends, once each.
            let mut ordered = Vec::with_capacity(jn.inputs.len());
            for input in &jn.inputs {
                let pos = branches.iter().position(|(end, _)| end == input);
                let Some(pos) = pos else {
                    return Err(unsupported_at(
                        jn,
                        format!(
                            "joins {input:?}, which is not on a branch from {cur:?} (inputs \
                             {:?}): not a nest of blocks",
                            jn.inputs
                        ),
                    ));
                };
                ordered.push(branches.remove(pos).1);
            }
            if let Some((end, _)) = branches.first() {
                return Err(unsupported_at(
                    jn,
                    format!("a branch from {cur:?} enters it twice (at {end:?})"),
                ));
            }
            layers.push(block(ordered, kind));
            cur = jn.output.clone();
        }
    }
}

/// A block of branches; an `Add` of a body and the identity is a residual block.
fn block(mut branches: Vec<Vec<Layer>>, join: Join) -> Layer {
    if join == Join::Add && branches.len() == 2 {
        if let Some(empty) = branches.iter().position(Vec::is_empty) {
            let body = branches.swap_remove(1 - empty);
            return Layer::Residual { body };
        }
    }
    Layer::Branches { branches, join }
}

/// The output shape of `layers` on `input`, refusing any activation (or padded
/// convolution input) of more than [`MAX_ELEMENTS`] elements before the next layer
/// computes with it.
pub(super) fn bounded_shape(layers: &[Layer], input: &[usize]) -> Result<Vec<usize>, NnError> {
    let too_large = |l: &Layer, what: String, input: &[usize]| NnError::LayerShape {
        layer: format!("{} ({what} exceeds {MAX_ELEMENTS} elements)", l.describe()),
        input: input.to_vec(),
    };
    let mut shape = input.to_vec();
    for l in layers {
        match l {
            Layer::Conv2d { padding, .. } => {
                if let [c, h, w] = shape[..] {
                    let padded = [
                        c,
                        h.saturating_add(padding.saturating_mul(2)),
                        w.saturating_add(padding.saturating_mul(2)),
                    ];
                    if elements(&padded).is_none() {
                        return Err(too_large(l, format!("padded input {padded:?}"), &shape));
                    }
                }
            }
            Layer::Residual { body } => {
                bounded_shape(body, &shape)?;
            }
            Layer::Branches { branches, .. } => {
                for b in branches {
                    bounded_shape(b, &shape)?;
                }
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

/// Folds and merges layers (recursively in blocks), keeping the function the same:
/// - an affine map right after a Dense or Conv layer folds into it (per output channel);
/// - an affine map before a Dense layer (through reshapes) or an unpadded Conv layer (or
///   one with no offsets) folds into it (per input channel);
/// - an identity affine map, an identity transposition and a reshape to the same shape go;
///   consecutive reshapes merge (a reshape to a vector is a Flatten), as do consecutive
///   transpositions;
/// - a zero padding of the spatial axes, the same on all sides, folds into the convolution
///   after it;
/// - an elementwise activation moves before a reshape or transposition (they commute), so
///   that shape layers meet.
pub(super) fn simplify(layers: Vec<Layer>, input: &[usize]) -> Result<Vec<Layer>, NnError> {
    // Blocks first.
    let mut shape = input.to_vec();
    let mut out: Vec<Layer> = Vec::with_capacity(layers.len());
    for l in layers {
        let l = match l {
            Layer::Residual { body } => Layer::Residual {
                body: simplify(body, &shape)?,
            },
            Layer::Branches { branches, join } => Layer::Branches {
                branches: branches
                    .into_iter()
                    .map(|b| simplify(b, &shape))
                    .collect::<Result<_, _>>()?,
                join,
            },
            l => l,
        };
        shape = l.output_shape(&shape)?;
        out.push(l);
    }
    // Local rewrites until nothing changes (each removes a layer, so this ends).
    loop {
        let shapes = chain_shapes(&out, input)?;
        let Some(next) = rewrite_once(&out, &shapes) else {
            return Ok(out);
        };
        out = next;
    }
}

/// One rewrite of [`simplify`], if any applies.
fn rewrite_once(layers: &[Layer], shapes: &[Vec<usize>]) -> Option<Vec<Layer>> {
    for i in 0..layers.len() {
        let here = &layers[i];
        let next = layers.get(i + 1);
        let replace = |range: std::ops::Range<usize>, with: Vec<Layer>| {
            let mut v = layers.to_vec();
            v.splice(range, with);
            v
        };
        match here {
            Layer::Affine { scale, shift }
                if scale.iter().all(|&a| a == 1.0) && shift.iter().all(|&b| b == 0.0) =>
            {
                return Some(replace(i..i + 1, vec![]));
            }
            Layer::Transpose { perm } if perm.iter().enumerate().all(|(k, &p)| k == p) => {
                return Some(replace(i..i + 1, vec![]));
            }
            Layer::Reshape { shape } if *shape == shapes[i] => {
                return Some(replace(i..i + 1, vec![]));
            }
            Layer::Reshape { shape } if shape.len() == 1 => {
                return Some(replace(i..i + 1, vec![Layer::Flatten]));
            }
            _ => {}
        }
        let Some(next) = next else { continue };
        // An elementwise layer commutes with a reshape or a transposition: moved before
        // it, so that shape layers meet and merge (Keras' NHWC transposes around each
        // activation cancel).
        let elementwise = |l: &Layer| {
            matches!(
                l,
                Layer::Relu
                    | Layer::Sigmoid
                    | Layer::Square
                    | Layer::Poly { .. }
                    | Layer::Activation(_)
            )
        };
        if matches!(
            here,
            Layer::Reshape { .. } | Layer::Flatten | Layer::Transpose { .. }
        ) && elementwise(next)
        {
            return Some(replace(i..i + 2, vec![next.clone(), here.clone()]));
        }
        match (here, next) {
            // Reshapes merge.
            (Layer::Reshape { .. } | Layer::Flatten, Layer::Reshape { .. } | Layer::Flatten) => {
                return Some(replace(
                    i..i + 2,
                    vec![Layer::Reshape {
                        shape: shapes[i + 2].clone(),
                    }],
                ));
            }
            (Layer::Transpose { perm: p1 }, Layer::Transpose { perm: p2 }) => {
                let perm = p2.iter().map(|&j| p1[j]).collect();
                return Some(replace(i..i + 2, vec![Layer::Transpose { perm }]));
            }
            // An affine map after a linear layer: per output channel.
            (Layer::Dense { .. } | Layer::Conv2d { .. }, Layer::Affine { scale, shift }) => {
                let mut folded = here.clone();
                let (mut weight, bias) = match &mut folded {
                    Layer::Dense { weight, bias } => (weight.view_mut().into_dyn(), bias),
                    Layer::Conv2d { weight, bias, .. } => (weight.view_mut().into_dyn(), bias),
                    _ => unreachable!("matched above"),
                };
                for (o, mut k) in weight.outer_iter_mut().enumerate() {
                    k.mapv_inplace(|w| w * scale[o]);
                    bias[o] = bias[o] * scale[o] + shift[o];
                }
                return Some(replace(i..i + 2, vec![folded]));
            }
            // An affine map before a convolution: per input channel (padding would add the
            // offsets' zero where the map would not, so only without either).
            (
                Layer::Affine { scale, shift },
                Layer::Conv2d {
                    weight,
                    bias,
                    stride,
                    padding,
                },
            ) if *padding == 0 || shift.iter().all(|&b| b == 0.0) => {
                let mut weight = weight.clone();
                let mut bias = bias.clone();
                for (o, mut k) in weight.outer_iter_mut().enumerate() {
                    for (c, mut kc) in k.outer_iter_mut().enumerate() {
                        bias[o] += kc.sum() * shift[c];
                        kc.mapv_inplace(|w| w * scale[c]);
                    }
                }
                return Some(replace(
                    i..i + 2,
                    vec![Layer::Conv2d {
                        weight,
                        bias,
                        stride: *stride,
                        padding: *padding,
                    }],
                ));
            }
            (Layer::Pad { pads }, Layer::Conv2d { .. }) => {
                if let [(0, 0), (a, b), (c, d)] = pads[..] {
                    if a == b && b == c && c == d {
                        let Layer::Conv2d {
                            weight,
                            bias,
                            stride,
                            padding,
                        } = next.clone()
                        else {
                            unreachable!()
                        };
                        let padding = padding.checked_add(a).filter(|&p| p <= MAX_ELEMENTS)?;
                        return Some(replace(
                            i..i + 2,
                            vec![Layer::Conv2d {
                                weight,
                                bias,
                                stride,
                                padding,
                            }],
                        ));
                    }
                }
            }
            _ => {}
        }
        // An affine map before a Dense layer, through reshapes (which keep the order of
        // the elements): per element of the Dense layer's input.
        if let Layer::Affine { scale, shift } = here {
            let mut j = i + 1;
            while matches!(layers.get(j), Some(Layer::Reshape { .. } | Layer::Flatten)) {
                j += 1;
            }
            if let Some(Layer::Dense { weight, bias }) = layers.get(j) {
                let channels = scale.len();
                let per = shapes[i].iter().product::<usize>() / channels.max(1);
                let mut weight = weight.clone();
                let mut bias = bias.clone();
                for (o, mut row) in weight.outer_iter_mut().enumerate() {
                    for (k, w) in row.iter_mut().enumerate() {
                        let c = k / per.max(1);
                        bias[o] += *w * shift[c];
                        *w *= scale[c];
                    }
                }
                let mut with: Vec<Layer> = layers[i + 1..j].to_vec();
                with.push(Layer::Dense { weight, bias });
                return Some(replace(i..j + 1, with));
            }
        }
    }
    None
}

/// A per-channel constant: `c` broadcast against a tensor of full shape `[1, ..sample]`
/// varies at most along the channel axis (the first of a sample), so that it is one value
/// per channel; `None` otherwise.
pub(super) fn per_channel(c: &ArrayD<f64>, sample: &[usize]) -> Option<Array1<f64>> {
    let full: Vec<usize> = std::iter::once(1).chain(sample.iter().copied()).collect();
    if c.ndim() > full.len() || sample.is_empty() {
        return None;
    }
    let b = c.broadcast(ndarray::IxDyn(&full))?;
    let channels = sample[0];
    let mut out = Array1::zeros(channels);
    for (idx, &v) in b.indexed_iter() {
        let ch = idx[1];
        if idx.slice().iter().skip(2).all(|&k| k == 0) {
            out[ch] = v;
        } else if v != out[ch] {
            return None;
        }
    }
    Some(out)
}
