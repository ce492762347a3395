//! The one error type of the `cipherml` crate: every module (link protocols, the engine,
//! models, the service) returns [`Error`], whose variants are the typed kinds a caller can
//! match, each carrying the offending values. Errors of the layers below
//! ([`cipherml_he::Error`], [`cipherml_mpc::Error`]) are wrapped, not flattened.

/// Errors of the `cipherml` crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- the engine: sessions and private tensors ----
    /// An error of the two-party layer (I/O, timeout, misbehaving peer, bad input).
    #[error(transparent)]
    Mpc(#[from] cipherml_mpc::Error),
    /// Shapes that do not fit the operation.
    #[error("shape mismatch in {what}: {left:?} vs {right:?}")]
    Shape {
        /// The operation.
        what: &'static str,
        /// Left shape.
        left: Vec<usize>,
        /// Right shape.
        right: Vec<usize>,
    },
    /// The provided value does not have the declared shape.
    #[error("provided value has shape {found:?}, declared {declared:?}")]
    ProvidedShape {
        /// Declared.
        declared: Vec<usize>,
        /// Found.
        found: Vec<usize>,
    },
    /// An HE error.
    #[error(transparent)]
    He(#[from] cipherml_he::Error),
    /// A secure-aggregation error: a refused message, a stage with too few survivors
    /// (naming the stage and the counts), parameters that could overflow.
    #[error(transparent)]
    SecAgg(#[from] cipherml_mpc::secagg::SecAggError),
    /// An operation this representation does not support (with the reason and what to
    /// do instead).
    #[error("{op} is not supported on {repr} tensors: {reason}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// The representation.
        repr: &'static str,
        /// Why, and the alternative.
        reason: &'static str,
    },
    /// A value received from the peer that does not fit the session (wrong level, scale,
    /// parameters or keys).
    #[error("invalid {what} from the peer: {detail}")]
    Invalid {
        /// What.
        what: &'static str,
        /// The offending values.
        detail: String,
    },
    /// The peer thread of a local session failed.
    #[error("the other party of the local session panicked")]
    PeerPanicked,
    /// The session revealed as many encrypted coefficients as its flooding is sized for
    /// (the union bound over a session): start a new session.
    #[error(
        "the session would reveal {requested} more coefficients after {revealed}, past the \
         {max} its noise flooding is sized for: start a new session"
    )]
    SessionExhausted {
        /// Coefficients revealed so far.
        revealed: u64,
        /// Coefficients the refused operation would reveal.
        requested: u64,
        /// The most a session may reveal.
        max: u64,
    },

    // ---- models and ONNX import ----
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
    /// An ONNX node or tensor that is malformed (not merely unsupported): a tensor whose data
    /// does not match its dims or type, attributes or inputs of the wrong length or shape,
    /// a node without an output; the reason carries the offending values.
    #[error("malformed ONNX {op} (node {node:?}): {reason}")]
    MalformedOnnx {
        /// The operator type (`initializer` for a graph initializer, `input` for the
        /// graph's input).
        op: String,
        /// The node name (or the initializer's or input's name).
        node: String,
        /// What is wrong, with the offending values.
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
    /// A configuration or argument of this party that cannot be used (an optimizer's
    /// hyperparameters, fit options, a model description).
    #[error("invalid {what}: {detail}")]
    Config {
        /// What.
        what: &'static str,
        /// Why, with the offending values.
        detail: String,
    },
    /// An ONNX file that cannot be written.
    #[error("cannot write ONNX model {path}: {reason}")]
    OnnxWrite {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A layer does not accept the shape it receives.
    #[error("layer {layer} cannot take an input of shape {input:?}")]
    LayerShape {
        /// The layer.
        layer: String,
        /// The input shape.
        input: Vec<usize>,
    },
    /// A residual block whose body changes the shape (the identity shortcut needs the same
    /// shape on both branches).
    #[error(
        "residual block: the body maps shape {input:?} to {body_output:?}, not to the same shape"
    )]
    ResidualShape {
        /// The block's input shape.
        input: Vec<usize>,
        /// The body's output shape.
        body_output: Vec<usize>,
    },
    /// A class label that is not an integer in `[0, classes)`.
    #[error("label {label} at index {index} is not a class in [0, {classes})")]
    LabelOutOfRange {
        /// Index of the sample.
        index: usize,
        /// The label.
        label: f64,
        /// The number of classes.
        classes: usize,
    },
    /// Training stopped in a batch: the peer gone, a protocol error, ... The weights are
    /// those after the last completed batch.
    #[error("training stopped at epoch {epoch}, batch {batch}: {source}")]
    Training {
        /// The epoch (from 0).
        epoch: usize,
        /// The batch of that epoch (from 0; the number of batches: the epoch's metrics).
        batch: usize,
        /// What went wrong.
        source: Box<Error>,
    },
    /// An input value is not finite.
    #[error("input value {value} at index {index} is not finite")]
    NonFinite {
        /// Flat index.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A weight exceeds the public cap from which the noise flooding of the replies is
    /// sized (raise the cap in the configuration: it is public, the weights are not).
    #[error("layer {layer}: weight {value} at flat index {index} exceeds the declared cap {cap}")]
    WeightAboveCap {
        /// The layer.
        layer: String,
        /// Flat (row-major) index of the weight.
        index: usize,
        /// The weight.
        value: f64,
        /// The cap.
        cap: f64,
    },
    /// A model cannot run in the mode the configuration forces on it.
    #[error("model {model:?} cannot run in {mode} mode: layer {layer}: {reason}")]
    ModeUnavailable {
        /// The model's name.
        model: String,
        /// The mode asked for.
        mode: &'static str,
        /// The layer that prevents it.
        layer: String,
        /// Why.
        reason: String,
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
    /// The peer sent the wrong number of messages.
    #[error("protocol error: expected {expected} {what}, got {found}")]
    PeerCount {
        /// What.
        what: &'static str,
        /// Expected count.
        expected: usize,
        /// Found.
        found: usize,
    },

    // ---- the service: control messages, refusals, key files ----
    /// A control message that does not decode.
    #[error("malformed control message: {0}")]
    Malformed(String),
    /// A message that is valid but not expected here.
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// The server (or the client, before sending a request the server would refuse)
    /// refused, with a code a caller can match.
    #[error("server refused ({code}): {message}")]
    Refused {
        /// Why, for programs.
        code: crate::protocol::RefusalCode,
        /// Why, for people.
        message: String,
    },
    /// A file of the client's key directory.
    #[error(transparent)]
    KeyFile(#[from] crate::key_store::KeyFileError),
}

impl Error {
    /// The refusal code a server sends for this error, if it is the peer's fault or a
    /// refusal ([`crate::protocol::RefusalCode`]); `None` for the server's own failures.
    pub fn refusal_code(&self) -> Option<crate::protocol::RefusalCode> {
        use crate::protocol::RefusalCode;
        match self {
            Error::Refused { code, .. } => Some(*code),
            Error::Malformed(_)
            | Error::Unexpected(_)
            | Error::Shape { .. }
            | Error::LayerShape { .. }
            | Error::ProvidedShape { .. }
            | Error::NonFinite { .. }
            | Error::Invalid { .. }
            | Error::PeerCount { .. }
            | Error::SecAgg(_) => Some(RefusalCode::BadRequest),
            _ => None,
        }
    }
}
