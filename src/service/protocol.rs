//! The client/server inference session: versioned control messages (bincode, bounded),
//! exchanged over the same length-prefixed channel as the two-party protocol.
//!
//! 1. client `Hello { version, token, held_keys }` -> server `Hello { version, models,
//!    cached_keys }` with each model's input and output shapes, mode, HE parameters,
//!    architecture and, for the hybrid mode, the BFV modulus fitted to the hosted hybrid
//!    models and the session's union bound, with which the client lowers the architecture
//!    as the server did (or `Error`: busy, unauthorized, wrong version). `held_keys` are the
//!    [`KeyId`](crate::key_cache::KeyId)s of the keys a client keeps between sessions;
//!    `cached_keys` those the server had in its [`crate::key_cache::KeyCache`] and set up for
//!    the session (CKKS keys for every model with their parameters and Galois elements, the
//!    BFV public key for the hybrid models): the client uploads none of them. This one round
//!    trip is the whole set-up of a session that needs no upload;
//! 2. for a CKKS-mode model whose keys are not set up, key upload: client
//!    `UploadKeys { model }`, then three raw messages, the seeded public key (to
//!    re-randomize replies), the relinearization key and the Galois keys (exactly the
//!    elements the model needs) -> server `Ok` (kept for the session, and cached under the
//!    id of the bytes if the client keeps its keys) or `Error`;
//! 3. per request: client `Infer { model, batch }` -> server `Ok` (or `Error`: unknown
//!    model, batch too large, keys not uploaded) -> for each of the `batch` inputs, the
//!    hybrid protocol of [`crate::nn::PreparedModel`] on a [`crate::tensor::Session`] (the logits revealed to the client only),
//!    or, in CKKS mode, one ciphertext each way; finally `Bye`. Before the first hybrid
//!    inference of a session (after the `Ok`), both parties set up OT (base OTs in both
//!    directions), then, unless it was cached, the client sends its BFV public key (one raw
//!    message), with which the server re-randomizes every encrypted reply.
//!
//! Every message is bounded by what the protocol state allows next, checked from its
//! length prefix before the body is read (the hello by [`MAX_HELLO_MESSAGE`], control
//! messages by [`MAX_CONTROL_MESSAGE`], keys and ciphertexts by the exact sizes of the
//! model's, other raw messages by the channel's limit), refused with a [`RefusalCode`], and
//! validated against the session's
//! parameters: HE objects decode only for the model's parameter set, at the expected level
//! and scale.

use serde::{Deserialize, Serialize};

use cipherml_mpc::net::Channel;

/// Version of the session protocol. 3: hybrid replies in the compact encoding (switched to
/// `2^b`) and 5-bit millionaire digits, neither readable by a version-2 peer. 5: key ids in
/// the hellos (cached evaluation keys), OT set-up deferred to the first hybrid inference,
/// refusals with a [`RefusalCode`]. 6: a model's mode and HE parameters typed
/// ([`ModelMode`], [`HeParams`]) instead of strings. 8: architectures with blocks of
/// branches, per-channel affine maps, PReLU, activations with public parameters,
/// transpositions, reshapes, paddings and means (layer kinds a version-7 peer cannot
/// decode), and a final sigmoid, like a final softmax, applied by the client to the
/// revealed or decrypted logits. 9: a hybrid layer's input sent only at the coefficients
/// its outputs read (a windowed ciphertext, in the strided layouts), replies rounded to
/// the high-probability bound. 10: the millionaire's tables split between the parties,
/// and 1-of-N pads sliced from one hash per key (a version-9 peer's shares would not
/// match). 11: the millionaire's digits chosen from the announced network (4 bits on a
/// LAN, 3 on a WAN).
pub const PROTOCOL_VERSION: u32 = 11;

/// Most inputs in one `Infer` request.
pub const MAX_BATCH: u32 = 4096;

/// Most key ids of a client's hello the server looks up.
pub const MAX_HELD_KEYS: usize = crate::key_store::MAX_ANNOUNCED_KEYS;

/// Largest control message accepted.
pub const MAX_CONTROL_MESSAGE: usize = 1 << 20;

/// Largest first message (the client's hello) a server reads before authenticating the
/// client: the version, a bearer token of up to a few KiB and [`MAX_HELD_KEYS`] key ids fit
/// many times over. A longer first frame is refused from its length prefix, unread.
pub const MAX_HELLO_MESSAGE: usize = 16 << 10;

/// Characters of a client-supplied string (a model name, ...) written to the logs at most.
pub const MAX_LOGGED_CHARS: usize = 64;

/// A client-supplied string for the logs: at most [`MAX_LOGGED_CHARS`] characters, with
/// control characters escaped, and the length of what was cut.
///
/// ```
/// let long = "x".repeat(1 << 20);
/// let shown = cipherml::protocol::Capped(&long).to_string();
/// assert!(shown.len() < 200, "{shown}");
/// assert!(shown.ends_with("(1048576 bytes)"), "{shown}");
/// ```
#[derive(Clone, Copy)]
pub struct Capped<'a>(pub &'a str);

impl std::fmt::Display for Capped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut chars = self.0.chars();
        let head: String = chars.by_ref().take(MAX_LOGGED_CHARS).collect();
        write!(f, "{:?}", head)?;
        if chars.next().is_some() {
            write!(f, "... ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Capped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Why a server refused: a code a program can match (as gRPC status codes), sent with a
/// message for people. `Copy`, with a stable [`RefusalCode::as_str`] (metrics labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RefusalCode {
    /// Every session slot is taken, or the client's address holds its share: retry later.
    Busy,
    /// Missing or wrong bearer token.
    Unauthorized,
    /// An unsupported protocol version.
    Version,
    /// No model of that name is hosted.
    UnknownModel,
    /// A request the server cannot serve as asked: a batch out of bounds, keys of the wrong
    /// size, parameters or Galois elements, a ciphertext that does not fit the model, a
    /// message out of order or longer than the protocol state allows.
    BadRequest,
    /// A shared server resource is spent (the key memory budget): retry later.
    ResourceExhausted,
    /// The session has used its quota (inferences per session): open a new session.
    QuotaExceeded,
    /// A failure on the server's side.
    Internal,
}

impl RefusalCode {
    /// Every code, in order.
    pub const ALL: [RefusalCode; 8] = [
        RefusalCode::Busy,
        RefusalCode::Unauthorized,
        RefusalCode::Version,
        RefusalCode::UnknownModel,
        RefusalCode::BadRequest,
        RefusalCode::ResourceExhausted,
        RefusalCode::QuotaExceeded,
        RefusalCode::Internal,
    ];

    /// A stable snake-case name (`"busy"`, `"unknown_model"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::Busy => "busy",
            RefusalCode::Unauthorized => "unauthorized",
            RefusalCode::Version => "version",
            RefusalCode::UnknownModel => "unknown_model",
            RefusalCode::BadRequest => "bad_request",
            RefusalCode::ResourceExhausted => "resource_exhausted",
            RefusalCode::QuotaExceeded => "quota_exceeded",
            RefusalCode::Internal => "internal",
        }
    }

    /// Whether the same request may succeed later (busy, resources spent).
    pub fn is_retryable(self) -> bool {
        matches!(self, RefusalCode::Busy | RefusalCode::ResourceExhausted)
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a hosted model runs. On the wire, a variant index (one byte); in JSON (the admin
/// catalog), `"hybrid"` or `"ckks"` ([`ModelMode::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelMode {
    /// Interactive: BFV linear layers and two-party non-linear layers.
    Hybrid,
    /// Non-interactive CKKS: one ciphertext each way.
    Ckks,
}

impl ModelMode {
    /// A stable lowercase name: `"hybrid"` or `"ckks"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelMode::Hybrid => "hybrid",
            ModelMode::Ckks => "ckks",
        }
    }
}

impl std::fmt::Display for ModelMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The HE parameters a model runs with, as announced by the server: the client derives
/// its own from the model's architecture and compares them field by field
/// ([`HeParams::first_difference`]) before it generates or sends any key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HeParams {
    /// BFV (the hybrid mode's linear layers).
    Bfv {
        /// Ring degree `N`.
        degree: usize,
        /// Plaintext modulus `t`.
        plaintext_modulus: u64,
        /// Parameter id.
        id: u64,
    },
    /// CKKS.
    Ckks {
        /// Ring degree `N`.
        degree: usize,
        /// Highest level (multiplicative depth).
        levels: usize,
        /// `log2` of the default scale.
        scale_bits: u32,
        /// Parameter id.
        id: u64,
    },
}

impl HeParams {
    /// The announcement of BFV parameters.
    pub fn of_bfv(params: &cipherml_he::bfv::BfvParameters) -> Self {
        HeParams::Bfv {
            degree: params.degree(),
            // Servers announce rings of at most 60 bits; a wider t saturates.
            plaintext_modulus: u64::try_from(params.plaintext_modulus()).unwrap_or(u64::MAX),
            id: params.id(),
        }
    }

    /// The announcement of CKKS parameters.
    pub fn of_ckks(params: &cipherml_he::ckks::CkksParameters) -> Self {
        HeParams::Ckks {
            degree: params.degree(),
            levels: params.max_level(),
            // The default scale is `2^scale_bits` exactly.
            scale_bits: params.default_scale().log2().round() as u32,
            id: params.id(),
        }
    }

    /// The scheme's name: `"BFV"` or `"CKKS"`.
    pub fn scheme(&self) -> &'static str {
        match self {
            HeParams::Bfv { .. } => "BFV",
            HeParams::Ckks { .. } => "CKKS",
        }
    }

    /// The name of the first field in which `other` differs from `self` (`"scheme"`,
    /// `"degree"`, `"plaintext_modulus"`, `"levels"`, `"scale_bits"`, `"id"`), or `None` if
    /// they are equal.
    ///
    /// ```
    /// use cipherml::protocol::HeParams;
    /// let a = HeParams::Ckks { degree: 8192, levels: 2, scale_bits: 40, id: 7 };
    /// let b = HeParams::Ckks { degree: 8192, levels: 3, scale_bits: 40, id: 7 };
    /// assert_eq!(a.first_difference(&b), Some("levels"));
    /// assert_eq!(a.first_difference(&a), None);
    /// ```
    pub fn first_difference(&self, other: &Self) -> Option<&'static str> {
        match (self, other) {
            (
                HeParams::Bfv {
                    degree: d0,
                    plaintext_modulus: t0,
                    id: i0,
                },
                HeParams::Bfv {
                    degree: d1,
                    plaintext_modulus: t1,
                    id: i1,
                },
            ) => [
                ("degree", d0 == d1),
                ("plaintext_modulus", t0 == t1),
                ("id", i0 == i1),
            ]
            .into_iter()
            .find_map(|(field, same)| (!same).then_some(field)),
            (
                HeParams::Ckks {
                    degree: d0,
                    levels: l0,
                    scale_bits: s0,
                    id: i0,
                },
                HeParams::Ckks {
                    degree: d1,
                    levels: l1,
                    scale_bits: s1,
                    id: i1,
                },
            ) => [
                ("degree", d0 == d1),
                ("levels", l0 == l1),
                ("scale_bits", s0 == s1),
                ("id", i0 == i1),
            ]
            .into_iter()
            .find_map(|(field, same)| (!same).then_some(field)),
            _ => Some("scheme"),
        }
    }
}

/// For people and the admin catalog: `BFV N=8192 t=2^40 id=...`,
/// `CKKS N=8192 levels=2 scale=2^40 id=...`.
impl std::fmt::Display for HeParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            HeParams::Bfv {
                degree,
                plaintext_modulus,
                id,
            } => {
                write!(f, "BFV N={degree} t=")?;
                if plaintext_modulus.is_power_of_two() {
                    write!(f, "2^{}", plaintext_modulus.ilog2())?;
                } else {
                    write!(f, "{plaintext_modulus}")?;
                }
                write!(f, " id={id:016x}")
            }
            HeParams::Ckks {
                degree,
                levels,
                scale_bits,
                id,
            } => write!(
                f,
                "CKKS N={degree} levels={levels} scale=2^{scale_bits} id={id:016x}"
            ),
        }
    }
}

/// The network a server plans its sessions for, on the wire (integers: bytes per second and
/// microseconds of round trip). Both parties of a session derive the same choices from it
/// (which representation runs each layer: the cost model's, as `inspect` prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetworkParams {
    /// Bandwidth, bytes per second (at least 1).
    pub bandwidth: u64,
    /// Round-trip time, microseconds.
    pub rtt_us: u64,
}

impl NetworkParams {
    /// A LAN: 1 Gbit/s, 0.2 ms.
    pub const LAN: Self = Self {
        bandwidth: 125_000_000,
        rtt_us: 200,
    };
    /// A WAN: 100 Mbit/s, 40 ms.
    pub const WAN: Self = Self {
        bandwidth: 12_500_000,
        rtt_us: 40_000,
    };

    /// The cost model's network.
    pub fn model(&self) -> crate::tensor::NetworkModel {
        crate::tensor::NetworkModel {
            bandwidth: self.bandwidth.max(1) as f64,
            rtt: self.rtt_us as f64 / 1e6,
        }
    }
}

impl Default for NetworkParams {
    fn default() -> Self {
        Self::LAN
    }
}

/// A model the server hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Its name.
    pub name: String,
    /// Input shape (no batch axis).
    pub input_shape: Vec<usize>,
    /// Output shape.
    pub output_shape: Vec<usize>,
    /// Execution mode: interactive hybrid or one-round-trip CKKS.
    pub mode: ModelMode,
    /// The HE parameters (scheme, degree, plaintext modulus or levels and scale, and the
    /// parameter id both sides check).
    pub params: HeParams,
    /// Hybrid mode: bits of the BFV modulus `Q`, fitted to the hosted hybrid models (the
    /// same for all of them: they share the session's key; see
    /// [`crate::tensor::SessionConfig::q_bits`]); 0 for CKKS.
    pub q_bits: u32,
    /// Hybrid mode: `log2` of the most reply coefficients a session reveals with this
    /// model ([`crate::tensor::SessionConfig::reveal_log2`]): its layers' choices depend on
    /// it, so the client lowers the architecture with it; 0 for CKKS.
    pub reveal_log2: u32,
    /// The architecture (what the client learns of the model; no weights).
    pub architecture: crate::nn::Architecture,
    /// The network the server's sessions plan for (the client makes the same choices).
    pub network: NetworkParams,
}

/// Messages from the client. Its `Debug` never prints the bearer token, and cuts model
/// names to [`MAX_LOGGED_CHARS`] characters.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Opening message.
    Hello {
        /// The client's protocol version.
        version: u32,
        /// The bearer token, if the server requires one.
        token: Option<String>,
        /// `None` if the client's keys are fresh for this session (the server does not
        /// cache them); else the ids of the evaluation keys it keeps (at most
        /// [`MAX_HELD_KEYS`] are looked up), and the server caches what it uploads.
        held_keys: Option<Vec<crate::key_cache::KeyId>>,
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

impl std::fmt::Debug for ClientMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientMsg::Hello { version, token, .. } => f
                .debug_struct("Hello")
                .field("version", version)
                .field(
                    "token",
                    &format_args!(
                        "{}",
                        if token.is_some() {
                            "<redacted>"
                        } else {
                            "None"
                        }
                    ),
                )
                .finish_non_exhaustive(),
            ClientMsg::UploadKeys { model } => f
                .debug_struct("UploadKeys")
                .field("model", &Capped(model))
                .finish(),
            ClientMsg::Infer { model, batch } => f
                .debug_struct("Infer")
                .field("model", &Capped(model))
                .field("batch", batch)
                .finish(),
            ClientMsg::Bye => f.write_str("Bye"),
        }
    }
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
        /// Which of the client's `held_keys` the server has cached and set up for this
        /// session (the client skips their upload).
        cached_keys: Vec<crate::key_cache::KeyId>,
    },
    /// Success.
    Ok,
    /// A refusal, with the reason.
    Error {
        /// Why, for programs.
        code: RefusalCode,
        /// Why, for people.
        message: String,
    },
}

/// Errors of the service layer: the crate's one error type, [`crate::Error`].
pub type ProtocolError = crate::Error;

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

/// Receives and decodes a control message: a frame announced longer than
/// [`MAX_CONTROL_MESSAGE`] is refused before it is read; trailing bytes are refused.
pub fn recv<C: Channel + ?Sized, M: for<'de> Deserialize<'de>>(
    ch: &mut C,
) -> Result<M, ProtocolError> {
    decode(&ch.recv_limited(MAX_CONTROL_MESSAGE)?)
}

/// As [`recv`], with the frame bounded by `max` bytes and the whole message due by
/// `deadline` (the hello: [`MAX_HELLO_MESSAGE`] bytes, within the handshake timeout).
pub fn recv_before<C: Channel + ?Sized, M: for<'de> Deserialize<'de>>(
    ch: &mut C,
    max: usize,
    deadline: std::time::Instant,
) -> Result<M, ProtocolError> {
    decode(&ch.recv_before(max.min(MAX_CONTROL_MESSAGE), deadline)?)
}

/// Sends a refusal.
pub fn refuse<C: Channel + ?Sized>(
    ch: &mut C,
    code: RefusalCode,
    message: impl Into<String>,
) -> Result<(), ProtocolError> {
    send(
        ch,
        &ServerMsg::Error {
            code,
            message: message.into(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_token_and_caps_names() {
        let token = "tok-9f8e7d6c5b4a";
        let hello = ClientMsg::Hello {
            version: PROTOCOL_VERSION,
            token: Some(token.into()),
            held_keys: None,
        };
        let shown = format!("{hello:?}");
        assert!(!shown.contains(token), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        // Negative control: the derived form of the same fields shows the token.
        assert!(format!("{:?}", Some(token.to_string())).contains(token));
        let name = "m".repeat(1 << 20);
        let infer = ClientMsg::Infer {
            model: name,
            batch: 1,
        };
        let shown = format!("{infer:?}");
        assert!(shown.len() < 200, "{} chars", shown.len());
        assert!(shown.contains("1048576 bytes"), "{shown}");
    }

    #[test]
    fn refusal_codes_round_trip_with_stable_names() {
        let mut names = std::collections::BTreeSet::new();
        for code in RefusalCode::ALL {
            assert!(names.insert(code.as_str()), "{code:?}");
            let msg = ServerMsg::Error {
                code,
                message: "m".into(),
            };
            let back: ServerMsg = decode(&encode(&msg).unwrap()).unwrap();
            assert_eq!(back, msg);
        }
        assert_eq!(RefusalCode::QuotaExceeded.as_str(), "quota_exceeded");
    }

    #[test]
    fn modes_and_parameters_are_typed_and_compact() {
        // One byte per mode on the wire; lowercase names in JSON.
        for (mode, name) in [(ModelMode::Hybrid, "hybrid"), (ModelMode::Ckks, "ckks")] {
            let bytes = encode(&mode).unwrap();
            assert_eq!(bytes.len(), 1, "{mode}");
            assert_eq!(decode::<ModelMode>(&bytes).unwrap(), mode);
            assert_eq!(mode.to_string(), name);
            assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{name}\""));
        }
        let bfv = HeParams::Bfv {
            degree: 8192,
            plaintext_modulus: 1 << 40,
            id: 0xabc,
        };
        let ckks = HeParams::Ckks {
            degree: 8192,
            levels: 2,
            scale_bits: 40,
            id: 0xabc,
        };
        assert_eq!(bfv.to_string(), "BFV N=8192 t=2^40 id=0000000000000abc");
        assert_eq!(
            ckks.to_string(),
            "CKKS N=8192 levels=2 scale=2^40 id=0000000000000abc"
        );
        for p in [bfv, ckks] {
            let bytes = encode(&p).unwrap();
            assert!(bytes.len() <= 24, "{} bytes", bytes.len());
            assert_eq!(decode::<HeParams>(&bytes).unwrap(), p);
            assert_eq!(p.first_difference(&p), None);
        }
        assert_eq!(bfv.first_difference(&ckks), Some("scheme"));
        let other_t = HeParams::Bfv {
            degree: 8192,
            plaintext_modulus: 1 << 41,
            id: 0xabc,
        };
        assert_eq!(bfv.first_difference(&other_t), Some("plaintext_modulus"));
        let other_id = HeParams::Ckks {
            degree: 8192,
            levels: 2,
            scale_bits: 40,
            id: 0xabd,
        };
        assert_eq!(ckks.first_difference(&other_id), Some("id"));
    }

    #[test]
    fn long_control_frames_are_refused_before_reading() {
        use cipherml_mpc::net::MemoryChannel;
        let (mut a, mut b) = MemoryChannel::pair();
        a.send(&vec![0u8; MAX_CONTROL_MESSAGE + 1]).unwrap();
        a.flush().unwrap();
        let e = recv::<_, ClientMsg>(&mut b).unwrap_err();
        assert!(
            matches!(
                e,
                ProtocolError::Mpc(cipherml_mpc::Error::MessageTooLarge { .. })
            ),
            "{e}"
        );
    }
}
