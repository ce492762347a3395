//! The error type of the MPC layer.
//!
//! Transport failures ([`Error::Io`], [`Error::Timeout`], [`Error::PeerClosed`]) are kept
//! apart from a peer that answered but broke the protocol ([`Error::Malformed`],
//! [`Error::MessageTooLarge`], [`Error::ProtocolAborted`]) and from a caller's mistake
//! ([`Error::InvalidInput`], [`Error::InvalidBitWidth`], ...).

use std::time::Duration;

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the MPC layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error other than a timeout or a closed connection.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer did not answer within the channel's timeout.
    #[error("timed out after {timeout:?} waiting for the peer")]
    Timeout {
        /// The configured timeout.
        timeout: Duration,
    },
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    PeerClosed,
    /// An address that does not resolve (no such host, malformed address).
    #[error("cannot resolve {addr}: {source}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No connection could be made to a resolved address (refused, unreachable, or no
    /// answer within the timeout); `source.kind()` tells which.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address as given.
        addr: String,
        /// The last connection error.
        #[source]
        source: std::io::Error,
    },
    /// The peer did not read what was sent to it: the bytes queued for it stayed above
    /// the channel's bound for the whole timeout.
    #[error("the peer does not read: {queued} bytes queued for it (bound {max}) for {timeout:?}")]
    SendQueueFull {
        /// Bytes queued (the one being sent included).
        queued: u64,
        /// The bound ([`crate::net::ChannelConfig::max_queued_bytes`]).
        max: u64,
        /// How long the sender waited.
        timeout: Duration,
    },
    /// The peer announced a message larger than the channel accepts.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Announced length.
        len: u64,
        /// Configured limit.
        max: u64,
    },
    /// A message of the peer does not have the expected form.
    #[error("malformed message ({what}): expected {expected}, found {found}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// What was expected (e.g. a length).
        expected: u64,
        /// What was found.
        found: u64,
    },
    /// The peer sent a well-formed message that breaks the protocol (a point not on the
    /// curve, a request that does not match ours, ...).
    #[error("protocol aborted: {reason}")]
    ProtocolAborted {
        /// Why.
        reason: String,
    },
    /// A ring bit width outside `1..=64`.
    #[error("invalid ring bit width {bits} (must be 1..=64)")]
    InvalidBitWidth {
        /// The width given.
        bits: u32,
    },
    /// A fixed-point precision that does not fit the ring.
    #[error(
        "invalid fixed-point precision: {frac_bits} fractional bits in a {ring_bits}-bit ring"
    )]
    InvalidPrecision {
        /// Fractional bits.
        frac_bits: u32,
        /// Ring bits.
        ring_bits: u32,
    },
    /// A real value that is NaN or infinite.
    #[error("value {value} is not finite")]
    NotFinite {
        /// The value.
        value: f64,
    },
    /// A real value outside the representable range.
    #[error("value {value} is outside the representable range [{min}, {max}]")]
    OutOfRange {
        /// The value.
        value: f64,
        /// Smallest representable value.
        min: f64,
        /// Largest representable value.
        max: f64,
    },
    /// Inputs of the caller that do not fit together.
    #[error("invalid input ({what}): expected {expected}, found {found}")]
    InvalidInput {
        /// What is wrong.
        what: &'static str,
        /// Expected value.
        expected: u64,
        /// Found value.
        found: u64,
    },
    /// The dealer refused this party's connection (see [`crate::triples::dealer`]): a
    /// malformed hello, another connection already holds this party's place in the
    /// session, no peer with the same session token arrived in time, or the dealer is busy
    /// or closing.
    #[error("the dealer refused the connection: {reason}")]
    DealerRefused {
        /// Why.
        reason: crate::triples::dealer::Refusal,
    },
    /// An error of the HE layer (HE-generated triples).
    #[error("homomorphic encryption: {0}")]
    He(#[from] cipherml_he::Error),
}

impl Error {
    /// Whether the error is due to the peer or the transport (as opposed to the caller).
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            Error::Io(_)
                | Error::Timeout { .. }
                | Error::PeerClosed
                | Error::Resolve { .. }
                | Error::Connect { .. }
                | Error::SendQueueFull { .. }
                | Error::MessageTooLarge { .. }
                | Error::Malformed { .. }
                | Error::ProtocolAborted { .. }
                | Error::DealerRefused { .. }
        )
    }

    /// A [`Error::ProtocolAborted`] with `reason` (for transports built outside this crate).
    pub fn aborted(reason: impl Into<String>) -> Self {
        Error::ProtocolAborted {
            reason: reason.into(),
        }
    }
}
