//! The messages of the four stages and their wire format.
//!
//! Explicit little-endian encoding: every message starts with a one-byte tag and a one-byte
//! format version ([`WIRE_VERSION`]), then its fields; counts are `u32`. `from_bytes`
//! checks the header, bounds every count by the configuration (`n`, `k`, `dim`) and the
//! exact remaining length BEFORE allocating, checks every id is `< n`, every masked entry
//! is `< 2^b` and every share value is a field element, and refuses trailing bytes. All
//! types are plain data (thread-safe).

use super::config::SecAggConfig;
use super::error::{MalformedReason, SecAggError, SecAggResult};
use super::shamir::{ShareValue, CHUNKS, P};
use super::ClientId;

/// Version of this wire format.
pub const WIRE_VERSION: u8 = 1;
/// Plaintext of an encrypted share: the holder's shares of `b_u` and of `s_sk_u`.
pub const SHARE_PLAINTEXT_LEN: usize = 2 * CHUNKS * 8;
/// Ciphertext of an encrypted share (plaintext plus the 16-byte GCM tag).
pub const SHARE_CIPHERTEXT_LEN: usize = SHARE_PLAINTEXT_LEN + 16;

const TAG_ADVERTISE: u8 = 1;
const TAG_NEIGHBOUR_KEYS: u8 = 2;
const TAG_SHARE_KEYS: u8 = 3;
const TAG_INCOMING_SHARES: u8 = 4;
const TAG_MASKED_INPUT: u8 = 5;
const TAG_UNMASK_REQUEST: u8 = 6;
const TAG_UNMASK_RESPONSE: u8 = 7;

struct Reader<'a> {
    msg: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(msg: &'static str, buf: &'a [u8], tag: u8) -> SecAggResult<Self> {
        let mut r = Reader { msg, buf, pos: 0 };
        let t = r.u8()?;
        if t != tag {
            return Err(r.err(MalformedReason::WrongTag {
                expected: tag,
                got: t,
            }));
        }
        let v = r.u8()?;
        if v != WIRE_VERSION {
            return Err(r.err(MalformedReason::WrongVersion {
                expected: WIRE_VERSION,
                got: v,
            }));
        }
        Ok(r)
    }
    fn err(&self, reason: MalformedReason) -> SecAggError {
        SecAggError::Malformed {
            message: self.msg,
            reason,
        }
    }
    fn take(&mut self, len: usize) -> SecAggResult<&'a [u8]> {
        let rest = self.buf.len() - self.pos;
        if rest < len {
            return Err(self.err(MalformedReason::Truncated {
                needed: self.pos + len,
                got: self.buf.len(),
            }));
        }
        let s = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(s)
    }
    fn u8(&mut self) -> SecAggResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> SecAggResult<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> SecAggResult<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes32(&mut self) -> SecAggResult<[u8; 32]> {
        Ok(self.take(32)?.try_into().expect("32 bytes"))
    }
    fn id(&mut self, config: &SecAggConfig) -> SecAggResult<ClientId> {
        let id = self.u32()?;
        if id >= config.n() {
            return Err(self.err(MalformedReason::IdOutOfRange { id }));
        }
        Ok(id)
    }
    /// Reads a count, checks it against `max` and that exactly `count * item` bytes remain
    /// (nothing else may follow).
    fn count(&mut self, max: u64, item: usize) -> SecAggResult<usize> {
        let c = self.u32()?;
        if u64::from(c) > max {
            return Err(self.err(MalformedReason::CountTooLarge { got: c.into(), max }));
        }
        self.expect_remaining(c as usize * item)?;
        Ok(c as usize)
    }
    fn expect_remaining(&self, len: usize) -> SecAggResult<()> {
        let rest = self.buf.len() - self.pos;
        if rest < len {
            return Err(self.err(MalformedReason::Truncated {
                needed: self.pos + len,
                got: self.buf.len(),
            }));
        }
        if rest > len {
            return Err(self.err(MalformedReason::TrailingBytes { extra: rest - len }));
        }
        Ok(())
    }
    fn finish(&self) -> SecAggResult<()> {
        self.expect_remaining(0)
    }
    fn share_value(&mut self) -> SecAggResult<ShareValue> {
        let mut v = [0u64; CHUNKS];
        for e in v.iter_mut() {
            *e = self.u64()?;
            if *e >= P {
                return Err(self.err(MalformedReason::ValueOutOfRange { value: *e }));
            }
        }
        Ok(v)
    }
}

fn header(tag: u8, capacity: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(capacity + 2);
    v.push(tag);
    v.push(WIRE_VERSION);
    v
}

/// Stage 0, client -> server: the client's two X25519 public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertiseKeys {
    /// The sender.
    pub id: ClientId,
    /// Public key for encrypting shares to this client.
    pub c_pk: [u8; 32],
    /// Public key for pairwise masks.
    pub s_pk: [u8; 32],
}

impl AdvertiseKeys {
    /// Encoded size.
    pub const LEN: usize = 2 + 4 + 64;

    /// Encodes the message.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = header(TAG_ADVERTISE, Self::LEN);
        v.extend_from_slice(&self.id.to_le_bytes());
        v.extend_from_slice(&self.c_pk);
        v.extend_from_slice(&self.s_pk);
        v
    }

    /// Decodes and validates a message.
    pub fn from_bytes(bytes: &[u8], config: &SecAggConfig) -> SecAggResult<Self> {
        let mut r = Reader::new("AdvertiseKeys", bytes, TAG_ADVERTISE)?;
        r.expect_remaining(Self::LEN - 2)?;
        let id = r.id(config)?;
        let c_pk = r.bytes32()?;
        let s_pk = r.bytes32()?;
        r.finish()?;
        Ok(AdvertiseKeys { id, c_pk, s_pk })
    }
}

/// One neighbour's advertised keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourKey {
    /// The neighbour.
    pub id: ClientId,
    /// Its share-encryption public key.
    pub c_pk: [u8; 32],
    /// Its mask public key.
    pub s_pk: [u8; 32],
}

/// Stage 0, server -> client: the keys of the client's neighbours that advertised (its
/// neighbours in `U1`), sorted by id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NeighbourKeys {
    /// The neighbours' keys.
    pub neighbours: Vec<NeighbourKey>,
}

impl NeighbourKeys {
    /// Encodes the message.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = header(TAG_NEIGHBOUR_KEYS, 4 + 68 * self.neighbours.len());
        v.extend_from_slice(&(self.neighbours.len() as u32).to_le_bytes());
        for k in &self.neighbours {
            v.extend_from_slice(&k.id.to_le_bytes());
            v.extend_from_slice(&k.c_pk);
            v.extend_from_slice(&k.s_pk);
        }
        v
    }

    /// Decodes and validates a message (at most `min(k, n) - 1` entries).
    pub fn from_bytes(bytes: &[u8], config: &SecAggConfig) -> SecAggResult<Self> {
        let mut r = Reader::new("NeighbourKeys", bytes, TAG_NEIGHBOUR_KEYS)?;
        let c = r.count(u64::from(config.holders() - 1), 68)?;
        let mut neighbours = Vec::with_capacity(c);
        for _ in 0..c {
            neighbours.push(NeighbourKey {
                id: r.id(config)?,
                c_pk: r.bytes32()?,
                s_pk: r.bytes32()?,
            });
        }
        r.finish()?;
        Ok(NeighbourKeys { neighbours })
    }
}

/// An encrypted share pair (of `b_owner` and `s_sk_owner`) between two clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedShare {
    /// The other client: the recipient in [`ShareKeys`], the owner (sender) in
    /// [`IncomingShares`].
    pub peer: ClientId,
    /// AES-256-GCM ciphertext with tag.
    pub ciphertext: [u8; SHARE_CIPHERTEXT_LEN],
}

fn encode_shares(tag: u8, id: Option<ClientId>, shares: &[EncryptedShare]) -> Vec<u8> {
    let mut v = header(tag, 8 + shares.len() * (4 + SHARE_CIPHERTEXT_LEN));
    if let Some(id) = id {
        v.extend_from_slice(&id.to_le_bytes());
    }
    v.extend_from_slice(&(shares.len() as u32).to_le_bytes());
    for s in shares {
        v.extend_from_slice(&s.peer.to_le_bytes());
        v.extend_from_slice(&s.ciphertext);
    }
    v
}

fn decode_shares(r: &mut Reader<'_>, config: &SecAggConfig) -> SecAggResult<Vec<EncryptedShare>> {
    let c = r.count(u64::from(config.holders() - 1), 4 + SHARE_CIPHERTEXT_LEN)?;
    let mut shares = Vec::with_capacity(c);
    for _ in 0..c {
        let peer = r.id(config)?;
        let ciphertext = r
            .take(SHARE_CIPHERTEXT_LEN)?
            .try_into()
            .expect("ciphertext length");
        shares.push(EncryptedShare { peer, ciphertext });
    }
    r.finish()?;
    Ok(shares)
}

/// Stage 1, client -> server: one encrypted share pair per neighbour in `U1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareKeys {
    /// The sender (owner of the shared secrets).
    pub id: ClientId,
    /// One entry per recipient.
    pub shares: Vec<EncryptedShare>,
}

impl ShareKeys {
    /// Encodes the message.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_shares(TAG_SHARE_KEYS, Some(self.id), &self.shares)
    }

    /// Decodes and validates a message (at most `min(k, n) - 1` shares).
    pub fn from_bytes(bytes: &[u8], config: &SecAggConfig) -> SecAggResult<Self> {
        let mut r = Reader::new("ShareKeys", bytes, TAG_SHARE_KEYS)?;
        let id = r.id(config)?;
        let shares = decode_shares(&mut r, config)?;
        Ok(ShareKeys { id, shares })
    }
}

/// Stage 1, server -> client: the shares addressed to this client by its neighbours in
/// `U2`, sorted by sender. These senders are the client's view of `U2`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IncomingShares {
    /// One entry per sender (`peer` = the sender).
    pub shares: Vec<EncryptedShare>,
}

impl IncomingShares {
    /// Encodes the message.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_shares(TAG_INCOMING_SHARES, None, &self.shares)
    }

    /// Decodes and validates a message (at most `min(k, n) - 1` shares).
    pub fn from_bytes(bytes: &[u8], config: &SecAggConfig) -> SecAggResult<Self> {
        let mut r = Reader::new("IncomingShares", bytes, TAG_INCOMING_SHARES)?;
        let shares = decode_shares(&mut r, config)?;
        Ok(IncomingShares { shares })
    }
}

/// Stage 2, client -> server: `y_u = w_u q(x_u) + PRG(b_u) + sum_v sign(u,v) PRG(s_uv)`
/// mod `2^b`, `vector_len` entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedInput {
    /// The sender.
    pub id: ClientId,
    /// The masked vector.
    pub masked: Vec<u64>,
}

impl MaskedInput {
    /// Encodes the message: the entries as one little-endian bit stream of `w` bits each,
    /// `w` the bit length of the largest entry (a byte says `w`; masked entries are uniform
    /// modulo `2^b`, so `w = b` but with negligible probability, whatever the update, and
    /// it says nothing about it). An upload is `b` bits per entry.
    pub fn to_bytes(&self) -> Vec<u8> {
        let largest = self.masked.iter().copied().max().unwrap_or(0);
        let width = (64 - largest.leading_zeros()).max(1) as usize;
        let packed = (width * self.masked.len()).div_ceil(8);
        let mut v = header(TAG_MASKED_INPUT, 9 + packed);
        v.extend_from_slice(&self.id.to_le_bytes());
        v.extend_from_slice(&(self.masked.len() as u32).to_le_bytes());
        v.push(width as u8);
        let mut acc: u128 = 0;
        let mut bits = 0usize;
        for &x in &self.masked {
            acc |= u128::from(x) << bits;
            bits += width;
            while bits >= 8 {
                v.push(acc as u8);
                acc >>= 8;
                bits -= 8;
            }
        }
        if bits > 0 {
            v.push(acc as u8);
        }
        v
    }

    /// Decodes and validates a message (exactly `vector_len` entries of at most `b` bits
    /// each, packed; each `< 2^b`).
    pub fn from_bytes(bytes: &[u8], config: &SecAggConfig) -> SecAggResult<Self> {
        let mut r = Reader::new("MaskedInput", bytes, TAG_MASKED_INPUT)?;
        let id = r.id(config)?;
        let len = r.u32()?;
        let expected = config.vector_len() as u64;
        if u64::from(len) != expected {
            return Err(r.err(MalformedReason::WrongLength {
                expected,
                got: len.into(),
            }));
        }
        let width = r.take(1)?[0] as usize;
        let most = config.modulus_bits() as usize;
        if width == 0 || width > most {
            return Err(r.err(MalformedReason::WrongLength {
                expected: most as u64,
                got: width as u64,
            }));
        }
        let packed = (width * len as usize).div_ceil(8);
        r.expect_remaining(packed)?;
        let data = r.take(packed)?;
        let mask = if width == 64 {
            u64::MAX
        } else {
            (1u64 << width) - 1
        };
        let mut masked = Vec::with_capacity(len as usize);
        let mut acc: u128 = 0;
        let mut bits = 0usize;
        let mut bytes = data.iter();
        for _ in 0..len {
            while bits < width {
                acc |= u128::from(*bytes.next().expect("length checked")) << bits;
                bits += 8;
            }
            masked.push((acc as u64) & mask);
            acc >>= width;
            bits -= width;
        }
        // The padding bits of the last byte are zero (one encoding per message).
        if acc != 0 {
            return Err(r.err(MalformedReason::WrongLength {
                expected: 0,
                got: acc as u64,
            }));
        }
        Ok(MaskedInput { id, masked })
    }
}

/// Stage 3, server -> client: which of the client's neighbours (and itself) survived
/// (`U3`, reveal their self-mask seed shares) and which dropped after sharing (`D = U2 \
/// U3`, reveal their mask-key shares). Both sorted, restricted to the client's
/// neighbourhood.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnmaskRequest {
    /// Survivors whose `b_v` share is requested.
    pub survivors: Vec<ClientId>,
    /// Dropped clients whose `s_sk_v` share is requested.
    pub dropped: Vec<ClientId>,
}

impl UnmaskRequest {
    /// Encodes the message.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = header(
            TAG_UNMASK_REQUEST,
            8 + 4 * (self.survivors.len() + self.dropped.len()),
        );
        v.extend_from_slice(&(self.survivors.len() as u32).to_le_bytes());
        v.extend_from_slice(&(self.dropped.len() as u32).to_le_bytes());
        for id in self.survivors.iter().chain(&self.dropped) {
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    /// Decodes and validates a message (at most `min(k, n)` ids in all).
    pub fn from_bytes(bytes: &[u8], config: &SecAggConfig) -> SecAggResult<Self> {
        let mut r = Reader::new("UnmaskRequest", bytes, TAG_UNMASK_REQUEST)?;
        let ns = r.u32()?;
        let nd = r.u32()?;
        let total = u64::from(ns) + u64::from(nd);
        let max = u64::from(config.holders());
        if total > max {
            return Err(r.err(MalformedReason::CountTooLarge { got: total, max }));
        }
        r.expect_remaining(4 * total as usize)?;
        let mut survivors = Vec::with_capacity(ns as usize);
        for _ in 0..ns {
            survivors.push(r.id(config)?);
        }
        let mut dropped = Vec::with_capacity(nd as usize);
        for _ in 0..nd {
            dropped.push(r.id(config)?);
        }
        r.finish()?;
        Ok(UnmaskRequest { survivors, dropped })
    }
}

/// Which secret a revealed share belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ShareKind {
    /// A share of the self-mask seed `b_v` (of a survivor).
    SelfMask,
    /// A share of the mask secret key `s_sk_v` (of a dropped client).
    MaskKey,
}

/// One revealed share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevealedShare {
    /// The secret's owner.
    pub owner: ClientId,
    /// Which of its secrets.
    pub kind: ShareKind,
    /// The share (evaluation point = the responder's id + 1).
    pub share: ShareValue,
}

/// Stage 3, client -> server: the shares the request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmaskResponse {
    /// The responder (share holder).
    pub id: ClientId,
    /// One share per requested client.
    pub shares: Vec<RevealedShare>,
}

impl UnmaskResponse {
    const ITEM: usize = 4 + 1 + 8 * CHUNKS;

    /// Encodes the message.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = header(TAG_UNMASK_RESPONSE, 8 + Self::ITEM * self.shares.len());
        v.extend_from_slice(&self.id.to_le_bytes());
        v.extend_from_slice(&(self.shares.len() as u32).to_le_bytes());
        for s in &self.shares {
            v.extend_from_slice(&s.owner.to_le_bytes());
            v.push(match s.kind {
                ShareKind::SelfMask => 0,
                ShareKind::MaskKey => 1,
            });
            for e in s.share {
                v.extend_from_slice(&e.to_le_bytes());
            }
        }
        v
    }

    /// Decodes and validates a message (at most `min(k, n)` shares, values in the field).
    pub fn from_bytes(bytes: &[u8], config: &SecAggConfig) -> SecAggResult<Self> {
        let mut r = Reader::new("UnmaskResponse", bytes, TAG_UNMASK_RESPONSE)?;
        let id = r.id(config)?;
        let c = r.count(u64::from(config.holders()), Self::ITEM)?;
        let mut shares = Vec::with_capacity(c);
        for _ in 0..c {
            let owner = r.id(config)?;
            let kind = match r.u8()? {
                0 => ShareKind::SelfMask,
                1 => ShareKind::MaskKey,
                got => return Err(r.err(MalformedReason::UnknownKind { got })),
            };
            let share = r.share_value()?;
            shares.push(RevealedShare { owner, kind, share });
        }
        r.finish()?;
        Ok(UnmaskResponse { id, shares })
    }
}
