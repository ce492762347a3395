//! The error type of secure aggregation.
//!
//! Every refusal carries the values that were wrong, so that a service can map it to a
//! typed code on the wire. Three families: a caller's mistake (configuration, input
//! length), a peer that sent something malformed or inconsistent (hostile input), and a
//! protocol that cannot finish because too few parties are left.

use super::{ClientId, Stage};

/// Result alias of the secure-aggregation module.
pub type SecAggResult<T> = std::result::Result<T, SecAggError>;

/// Everything that can go wrong in secure aggregation. Thread-safe (plain data).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SecAggError {
    /// A configuration parameter is outside its allowed range.
    #[error("invalid secure-aggregation parameter {name} = {value}: {reason}")]
    InvalidParameter {
        /// The parameter's name.
        name: &'static str,
        /// Its value (floats are rounded towards zero).
        value: u64,
        /// What is allowed.
        reason: &'static str,
    },
    /// The clipping bound is not a finite positive number.
    #[error("invalid clipping bound {clip}: must be finite and > 0")]
    InvalidClip {
        /// The bound given.
        clip: f64,
    },
    /// The threshold is outside `holders/2 < t <= holders`.
    #[error("threshold t = {t} out of range: with {holders} share holders per client it must be in {min}..={holders}")]
    ThresholdOutOfRange {
        /// The threshold given.
        t: u32,
        /// Share holders per client, `min(k, n)`.
        holders: u32,
        /// The smallest allowed threshold, `holders/2 + 1`.
        min: u32,
    },
    /// The sum of `n` clients' largest entries does not fit in the modulus `2^bits`.
    #[error("overflow: {n} clients x entries up to {max_entry} = {max_sum} does not fit in 2^{modulus_bits}")]
    ModulusOverflow {
        /// Number of clients.
        n: u32,
        /// Largest entry a client can submit (`(2^bits - 1) * max_weight`).
        max_entry: u128,
        /// `n * max_entry`.
        max_sum: u128,
        /// The modulus exponent `b` (requested, or 64 when chosen automatically).
        modulus_bits: u32,
    },
    /// A client's input vector has the wrong length.
    #[error("input of length {got}, expected {expected}")]
    InputLength {
        /// The configured `dim`.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// The number of inputs (or weights) does not match the number of clients.
    #[error("{what}: {got} given, expected {expected}")]
    InputCount {
        /// What was counted.
        what: &'static str,
        /// Expected count.
        expected: usize,
        /// Count given.
        got: usize,
    },
    /// An input entry is NaN or infinite.
    #[error("input entry {index} is not finite")]
    NonFiniteInput {
        /// Index of the entry.
        index: usize,
    },
    /// A weight was given for an unweighted configuration, none for a weighted one, or it
    /// exceeds the declared maximum.
    #[error("invalid weight {weight:?} (configured maximum {max:?})")]
    InvalidWeight {
        /// The weight given.
        weight: Option<u64>,
        /// The configured maximum (`None`: the configuration is unweighted).
        max: Option<u64>,
    },
    /// A method was called (or a message received) in the wrong stage.
    #[error("wrong stage: {expected} called while the party is at {actual}")]
    WrongStage {
        /// The stage of the call.
        expected: Stage,
        /// The stage the party is in (`None` once finished or failed).
        actual: StageState,
    },
    /// A message names a client id that is not in `0..n`.
    #[error("stage {stage}: unknown client id {id} (n = {n})")]
    UnknownClient {
        /// The stage.
        stage: Stage,
        /// The id.
        id: ClientId,
        /// Number of clients.
        n: u32,
    },
    /// A client sent twice in one stage, or a message lists the same client twice.
    #[error("stage {stage}: duplicate message or entry for client {id}")]
    Duplicate {
        /// The stage.
        stage: Stage,
        /// The client.
        id: ClientId,
    },
    /// A message's `id` field is not the authenticated sender.
    #[error("stage {stage}: message from client {from} claims to be from client {claimed}")]
    WrongSender {
        /// The stage.
        stage: Stage,
        /// The authenticated sender.
        from: ClientId,
        /// The id inside the message.
        claimed: ClientId,
    },
    /// A client that is not part of this stage (dropped earlier) sent a message.
    #[error("stage {stage}: client {id} is not a participant of this stage")]
    NotParticipant {
        /// The stage.
        stage: Stage,
        /// The client.
        id: ClientId,
    },
    /// A message involves two clients that are not neighbours in the round's graph (or a
    /// neighbour that was not in the stage's survivor set).
    #[error(
        "stage {stage}: clients {from} and {to} are not neighbours (or {to} is not a survivor)"
    )]
    NotNeighbour {
        /// The stage.
        stage: Stage,
        /// The sender.
        from: ClientId,
        /// The other client.
        to: ClientId,
    },
    /// A message does not contain exactly what was expected of it.
    #[error("stage {stage}: message from client {from} has {got} entries, expected {expected}")]
    IncompleteMessage {
        /// The stage.
        stage: Stage,
        /// The sender.
        from: ClientId,
        /// Expected entries.
        expected: usize,
        /// Entries found.
        got: usize,
    },
    /// An unmask response contains a share that was not requested of this client.
    #[error("stage {stage}: client {from} sent an unrequested {kind:?} share of client {owner}")]
    UnexpectedShare {
        /// The stage.
        stage: Stage,
        /// The responder.
        from: ClientId,
        /// The share's owner.
        owner: ClientId,
        /// The share's kind.
        kind: super::messages::ShareKind,
    },
    /// Bytes that do not decode to the expected message.
    #[error("malformed {message}: {reason}")]
    Malformed {
        /// The message type.
        message: &'static str,
        /// Why.
        reason: MalformedReason,
    },
    /// A masked-input entry is not below the modulus.
    #[error("masked entry {index} = {value} is not below 2^{modulus_bits}")]
    EntryOutOfRange {
        /// Index of the entry.
        index: usize,
        /// Its value.
        value: u64,
        /// `b`.
        modulus_bits: u32,
    },
    /// An encrypted share did not authenticate (wrong key, tampered, or swapped).
    #[error("share from client {from} to client {to} does not decrypt")]
    DecryptionFailed {
        /// The share's owner.
        from: ClientId,
        /// The share's holder.
        to: ClientId,
    },
    /// A peer's public key gives an all-zero Diffie-Hellman output (low-order point).
    #[error("public key of client {peer} is of low order")]
    LowOrderKey {
        /// The peer.
        peer: ClientId,
    },
    /// Shares that do not reconstruct to a consistent secret.
    #[error("the shares of client {client} do not reconstruct to a valid secret")]
    ReconstructionFailed {
        /// The secret's owner.
        client: ClientId,
    },
    /// An unmask request asks for both secrets of one client (its self-mask seed and its
    /// mask key): answering would reveal that client's input.
    #[error("unmask request asks for both shares of client {client}")]
    BothSharesRequested {
        /// The client.
        client: ClientId,
    },
    /// An unmask request lists the requested client itself as dropped.
    #[error("unmask request lists this client ({client}) as dropped")]
    SelfListedAsDropped {
        /// The client.
        client: ClientId,
    },
    /// Fewer than `needed` clients are left after a stage: the server reveals nothing.
    #[error("stage {stage}: {got} clients left, at least {needed} needed")]
    TooFewSurvivors {
        /// The stage that failed.
        stage: Stage,
        /// The threshold.
        needed: u32,
        /// Clients left.
        got: u32,
    },
    /// Fewer than `needed` of a client's share holders are left after a stage.
    #[error(
        "stage {stage}: client {client} has {got} share holders left, at least {needed} needed"
    )]
    TooFewHolders {
        /// The stage that failed.
        stage: Stage,
        /// The client whose secrets could not be recovered.
        client: ClientId,
        /// The threshold.
        needed: u32,
        /// Holders left.
        got: u32,
    },
}

/// Where a party is, for [`SecAggError::WrongStage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageState {
    /// This stage is open.
    Open(Stage),
    /// The protocol finished (output produced, or last message sent).
    Finished,
    /// An earlier stage failed; the party refuses everything.
    Failed,
}

impl StageState {
    /// `Ok` if `stage` is open, else [`SecAggError::WrongStage`].
    pub(crate) fn require_open(self, stage: Stage) -> SecAggResult<()> {
        if self != StageState::Open(stage) {
            return Err(SecAggError::WrongStage {
                expected: stage,
                actual: self,
            });
        }
        Ok(())
    }
}

impl std::fmt::Display for StageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageState::Open(s) => write!(f, "{s}"),
            StageState::Finished => f.write_str("finished"),
            StageState::Failed => f.write_str("failed"),
        }
    }
}

/// Why bytes did not decode, for [`SecAggError::Malformed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedReason {
    /// Fewer bytes than the header or the announced contents need.
    #[error("truncated: {needed} bytes needed, {got} present")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// Bytes left over after the announced contents.
    #[error("{extra} trailing bytes")]
    TrailingBytes {
        /// Bytes left.
        extra: usize,
    },
    /// The first byte names another message type.
    #[error("message tag {got}, expected {expected}")]
    WrongTag {
        /// Expected tag.
        expected: u8,
        /// Tag found.
        got: u8,
    },
    /// An unsupported format version.
    #[error("format version {got}, expected {expected}")]
    WrongVersion {
        /// Expected version.
        expected: u8,
        /// Version found.
        got: u8,
    },
    /// A count exceeds what the configuration allows (checked before allocating).
    #[error("count {got} exceeds the bound {max}")]
    CountTooLarge {
        /// Count announced.
        got: u64,
        /// Bound.
        max: u64,
    },
    /// A vector length differs from the configured one.
    #[error("length {got}, expected {expected}")]
    WrongLength {
        /// Expected length.
        expected: u64,
        /// Length announced.
        got: u64,
    },
    /// A client id is not in `0..n`.
    #[error("client id {id} out of range")]
    IdOutOfRange {
        /// The id.
        id: ClientId,
    },
    /// An enum tag (share kind) is unknown.
    #[error("unknown share kind {got}")]
    UnknownKind {
        /// The byte found.
        got: u8,
    },
    /// A value is not a field element or not below the modulus.
    #[error("value {value} out of range")]
    ValueOutOfRange {
        /// The value.
        value: u64,
    },
}
