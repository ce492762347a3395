//! The client/server inference session: versioned control messages (bincode, bounded),
//! exchanged over the same length-prefixed channel as the two-party protocol.
//!
//! 1. client `Hello { version, token }` -> server `Hello { version, models }` with each
//!    model's input and output shapes, mode, HE parameters and architecture (or `Error`:
//!    busy, unauthorized, wrong version);
//! 2. both parties set up OT (base OTs in both directions);
//!    If any hosted model runs in the hybrid mode, the client then sends its BFV public key
//!    (one raw message), with which the server re-randomizes every encrypted reply;
//! 3. for a CKKS-mode model, key upload: client `UploadKeys { model }`, then three raw
//!    messages, the seeded public key (to re-randomize replies), the relinearization key
//!    and the Galois keys (exactly the elements the model needs) -> server `Ok` (kept for
//!    the session) or `Error`;
//! 4. per request: client `Infer { model, batch }` -> server `Ok` (or `Error`: unknown
//!    model, batch too large, keys not uploaded) -> for each of the `batch` inputs, the
//!    hybrid protocol of [`crate::nn::HybridModel`] (the logits revealed to the client only),
//!    or, in CKKS mode, one ciphertext each way; finally `Bye`.
//!
//! Every message is bounded (control messages by [`MAX_CONTROL_MESSAGE`], raw ones by the
//! channel's limit, checked before allocation) and validated against the session's
//! parameters: HE objects decode only for the model's parameter set, at the expected level
//! and scale.

use serde::{Deserialize, Serialize};

use cipherml_mpc::net::Channel;

/// Version of the session protocol. 3: hybrid replies in the compact encoding (switched to
/// `2^b`) and 5-bit millionaire digits, neither readable by a version-2 peer.
pub const PROTOCOL_VERSION: u32 = 4;

/// Most inputs in one `Infer` request.
pub const MAX_BATCH: u32 = 4096;

/// Largest control message accepted.
pub const MAX_CONTROL_MESSAGE: usize = 1 << 20;

/// A model the server hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Its name.
    pub name: String,
    /// Input shape (no batch axis).
    pub input_shape: Vec<usize>,
    /// Output shape.
    pub output_shape: Vec<usize>,
    /// Execution mode: `"hybrid"` (interactive) or `"ckks"` (one round trip).
    pub mode: String,
    /// The HE parameters (scheme, degree, levels, and the parameter id both sides check).
    pub params: String,
    /// The architecture (what the client learns of the model; no weights).
    pub architecture: crate::nn::Architecture,
}

/// Messages from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Opening message.
    Hello {
        /// The client's protocol version.
        version: u32,
        /// The bearer token, if the server requires one.
        token: Option<String>,
    },
    /// Key upload for a CKKS-mode model; followed by three raw messages: the public key,
    /// the relinearization key and the Galois keys.
    UploadKeys {
        /// The model's name.
        model: String,
    },
    /// Starts `batch` inferences with a model.
    Infer {
        /// The model's name.
        model: String,
        /// Number of inputs (1 to [`MAX_BATCH`]).
        batch: u32,
    },
    /// Ends the session.
    Bye,
}

/// Messages from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Answer to `Hello`.
    Hello {
        /// The server's protocol version.
        version: u32,
        /// The models it hosts.
        models: Vec<ModelInfo>,
    },
    /// Success.
    Ok,
    /// A refusal, with the reason.
    Error {
        /// Why.
        message: String,
    },
}

/// Errors of the session layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Transport or two-party protocol error.
    #[error(transparent)]
    Mpc(#[from] cipherml_mpc::Error),
    /// A control message that does not decode.
    #[error("malformed control message: {0}")]
    Malformed(String),
    /// A message that is valid but not expected here.
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// The peer refused.
    #[error("server refused: {0}")]
    Refused(String),
    /// A private-inference error.
    #[error(transparent)]
    Hybrid(#[from] crate::nn::HybridError),
    /// A model error.
    #[error(transparent)]
    Nn(#[from] crate::nn::NnError),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_CONTROL_MESSAGE>()
}

/// Sends a control message.
pub fn send<C: Channel + ?Sized, M: Serialize>(ch: &mut C, msg: &M) -> Result<(), ProtocolError> {
    ch.send(&encode(msg)?)?;
    ch.flush()?;
    Ok(())
}

/// Decodes a control message from untrusted bytes (bounded; trailing bytes refused).
pub fn decode<M: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<M, ProtocolError> {
    if bytes.len() > MAX_CONTROL_MESSAGE {
        return Err(ProtocolError::Malformed(format!("{} bytes", bytes.len())));
    }
    let (m, used): (M, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(ProtocolError::Malformed(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(m)
}

/// Encodes a control message.
pub fn encode<M: Serialize>(msg: &M) -> Result<Vec<u8>, ProtocolError> {
    bincode::serde::encode_to_vec(msg, config())
        .map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Receives and decodes a control message (bounded; trailing bytes refused).
pub fn recv<C: Channel + ?Sized, M: for<'de> Deserialize<'de>>(
    ch: &mut C,
) -> Result<M, ProtocolError> {
    decode(&ch.recv()?)
}
