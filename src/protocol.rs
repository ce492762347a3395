//! The client/server inference session: versioned control messages (bincode, bounded),
//! exchanged over the same length-prefixed channel as the two-party protocol.
//!
//! 1. client `Hello { version, token }` -> server `Hello { version, models }` with each
//!    model's architecture (or `Error`: busy, unauthorized, wrong version);
//! 2. both parties set up OT (base OTs in both directions);
//! 3. per input: client `Infer { model }` -> server `Ok` (or `Error`, e.g. unknown model) ->
//!    the hybrid protocol of [`crate::nn::HybridModel`] -> the logits revealed to the client
//!    only; finally `Bye`.

use serde::{Deserialize, Serialize};

use cipherml_mpc::net::Channel;

/// Version of the session protocol.
pub const PROTOCOL_VERSION: u32 = 1;

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
    /// Execution mode.
    pub mode: String,
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
    /// Starts one inference with a model.
    Infer {
        /// The model's name.
        model: String,
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
    let bytes = bincode::serde::encode_to_vec(msg, config())
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    ch.send(&bytes)?;
    ch.flush()?;
    Ok(())
}

/// Receives and decodes a control message (bounded; trailing bytes refused).
pub fn recv<C: Channel + ?Sized, M: for<'de> Deserialize<'de>>(
    ch: &mut C,
) -> Result<M, ProtocolError> {
    let bytes = ch.recv()?;
    if bytes.len() > MAX_CONTROL_MESSAGE {
        return Err(ProtocolError::Malformed(format!("{} bytes", bytes.len())));
    }
    let (m, used): (M, usize) = bincode::serde::decode_from_slice(&bytes, config())
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(ProtocolError::Malformed(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(m)
}
