//! Triples from a dealer: a third process (TF Encrypted's "crypto producer"), never one
//! of the two parties. It must collude with neither; it learns nothing about the inputs
//! (only the shapes of the triples asked for).
//!
//! [`Dealer::serve`] answers the two parties of one session over any [`Channel`];
//! [`Dealer::serve_tcp`] is the dealer process: it accepts connections on a TCP listener,
//! pairs the party 0 and the party 1 that present the same [`SessionToken`], and serves
//! each pair on a thread of its own. A party connects with [`DealerClient::connect`] and
//! then uses the client as a [`TripleSource`].
//!
//! # Wire protocol (version [`DEALER_VERSION`])
//!
//! Every message is framed as on any channel of [`crate::net`] (a 4-byte little-endian
//! length, then the body); integers are little-endian.
//!
//! | message | from | body |
//! |---|---|---|
//! | hello | party | `"CMLD"`, version (1 byte), party (1 byte: 0 or 1), session token (16 bytes): 22 bytes |
//! | reply | dealer | `"CMLD"`, the dealer's version (1 byte), status (1 byte: 0 accepted, else a [`Refusal::code`]): 6 bytes |
//! | request | party | kind (1 byte: 1 elementwise, 2 matrix), ring bits (1 byte, 1..=64), three `u64` dimensions (`n, 0, 0` or `m, k, n`): 26 bytes |
//! | answer to party 0 | dealer | a 32-byte ChaCha20 seed |
//! | answer to party 1 | dealer | a 32-byte ChaCha20 seed, then `c1` (`ring.byte_len()` bytes per element) |
//!
//! The hello is the first message of a connection. The dealer pairs a party 0 and a
//! party 1 with the same token and then sends *accepted* to both; a connection whose
//! hello is malformed or late, whose place (token and party) is taken, or whose peer does
//! not arrive within the pairing timeout gets a refusal and is closed: the party sees
//! [`Error::DealerRefused`] naming the [`Refusal`]. The token is drawn at random by party 0
//! and sent to party 1 over their own channel ([`SessionToken::agree`]): a stranger who
//! does not know it cannot take a place in the session.
//!
//! Both parties then send the same requests in the same order. Party 0 expands `a0, b0,
//! c0` from its seed (in this order, with [`Ring::random_vec`] on a ChaCha20 stream),
//! party 1 expands `a1, b1` from its seed and reads `c1 = a b - c0` in full. Requests that
//! differ, or that are malformed (wrong length, unknown kind, ring width outside `1..=64`,
//! more than the dealer's bound of elements), end the session: the dealer closes both
//! connections (the parties see [`Error::PeerClosed`]). The session ends when both parties
//! close their connections.
//!
//! **Security.** Semi-honest: the dealer colludes with neither party. The answers carry
//! the triples in the clear: run the dealer on a network the parties trust (loopback, a
//! private link, or a tunnel); anyone who reads them learns the masks of the
//! multiplications. The dealer does not authenticate parties: whoever reaches it can open
//! sessions of their own, bounded by [`DealerConfig::max_connections`] and
//! [`DealerConfig::max_request_elements`]. Every receive is bounded in length (checked
//! before the body is read) and in time; hostile input gives a typed error, never a panic.

use std::fmt;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use subtle::ConstantTimeEq;

use super::{ArithTriples, MatrixTriple, TripleSource};
use crate::error::{Error, Result};
use crate::net::{decode_ring, encode_ring, recv_exact, Channel, ChannelConfig, TcpChannel};
use crate::party::Party;
use crate::ring::Ring;
use crate::share::PartyId;

const REQ_LEN: usize = 1 + 1 + 3 * 8;
const KIND_ARITH: u8 = 1;
const KIND_MATRIX: u8 = 2;
/// Largest number of ring elements one request may ask for.
pub const MAX_REQUEST_ELEMENTS: u64 = 1 << 26;

/// The first bytes of a hello and of a reply.
pub const DEALER_MAGIC: [u8; 4] = *b"CMLD";
/// The version of the dealer's wire protocol.
pub const DEALER_VERSION: u8 = 1;
const HELLO_LEN: usize = 4 + 1 + 1 + SessionToken::LEN;
const REPLY_LEN: usize = 4 + 1 + 1;
const ACCEPTED: u8 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    kind: u8,
    bits: u8,
    dims: [u64; 3],
}

impl Request {
    fn encode(&self) -> Vec<u8> {
        let mut v = vec![self.kind, self.bits];
        for d in self.dims {
            v.extend_from_slice(&d.to_le_bytes());
        }
        v
    }

    /// Decodes and validates a request: its length, kind, ring width and size (at most
    /// `max_elements` ring elements in all).
    fn decode(b: &[u8], max_elements: u64) -> Result<Self> {
        let Some((&[kind, bits], rest)) = b.split_first_chunk::<2>() else {
            return Err(Error::Malformed {
                what: "dealer request",
                expected: REQ_LEN as u64,
                found: b.len() as u64,
            });
        };
        if b.len() != REQ_LEN {
            return Err(Error::Malformed {
                what: "dealer request",
                expected: REQ_LEN as u64,
                found: b.len() as u64,
            });
        }
        let mut dims = [0u64; 3];
        for (d, c) in dims.iter_mut().zip(rest.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            *d = u64::from_le_bytes(a);
        }
        if kind != KIND_ARITH && kind != KIND_MATRIX {
            return Err(Error::Malformed {
                what: "dealer request kind",
                expected: KIND_MATRIX as u64,
                found: kind as u64,
            });
        }
        Ring::new(bits as u32)?;
        let (sa, sb, sc) = sizes(kind, dims);
        let total = sa.checked_add(sb).and_then(|x| x.checked_add(sc));
        let max = max_elements.min(MAX_REQUEST_ELEMENTS);
        match total {
            Some(t) if t <= max as u128 => Ok(Self { kind, bits, dims }),
            _ => Err(Error::MessageTooLarge {
                len: total.unwrap_or(u128::MAX).min(u64::MAX as u128) as u64,
                max,
            }),
        }
    }
}

fn sizes(kind: u8, d: [u64; 3]) -> (u128, u128, u128) {
    let (m, k, n) = (d[0] as u128, d[1] as u128, d[2] as u128);
    if kind == KIND_ARITH {
        (m, m, m)
    } else {
        (m * k, k * n, m * n)
    }
}

fn expand(ring: Ring, seed: [u8; 32], lens: &[usize]) -> Vec<Vec<u64>> {
    let mut rng = ChaCha20Rng::from_seed(seed);
    lens.iter().map(|&l| ring.random_vec(&mut rng, l)).collect()
}

/// The dealer process. Serves triple requests of two parties until both hang up. It holds
/// no state: its functions may run on many threads at once.
#[derive(Debug, Default, Clone, Copy)]
pub struct Dealer;

impl Dealer {
    /// Serves requests on the channels to party 0 and party 1 until both close them.
    /// Returns the number of requests served. Mismatched or malformed requests abort
    /// ([`Error::ProtocolAborted`], [`Error::Malformed`], [`Error::MessageTooLarge`]);
    /// each request is read with the channel's timeout.
    pub fn serve<C0: Channel, C1: Channel, R: RngCore + CryptoRng>(
        ch0: &mut C0,
        ch1: &mut C1,
        rng: &mut R,
    ) -> Result<u64> {
        Self::serve_limited(ch0, ch1, rng, MAX_REQUEST_ELEMENTS)
    }

    /// As [`Dealer::serve`], with at most `max_elements` ring elements per request (and
    /// never more than [`MAX_REQUEST_ELEMENTS`]).
    pub fn serve_limited<C0: Channel, C1: Channel, R: RngCore + CryptoRng>(
        ch0: &mut C0,
        ch1: &mut C1,
        rng: &mut R,
        max_elements: u64,
    ) -> Result<u64> {
        let mut served = 0;
        loop {
            // A request is exactly REQ_LEN bytes: a longer one is refused before its body
            // is read, a shorter one after.
            let r0 = recv_exact(ch0, "dealer request", REQ_LEN);
            let r1 = recv_exact(ch1, "dealer request", REQ_LEN);
            let (m0, m1) = match (r0, r1) {
                (Err(Error::PeerClosed), Err(Error::PeerClosed)) => return Ok(served),
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => return Err(e),
            };
            let q0 = Request::decode(&m0, max_elements)?;
            let q1 = Request::decode(&m1, max_elements)?;
            if q0 != q1 {
                return Err(Error::aborted("the parties' triple requests differ"));
            }
            let ring = Ring::new(q0.bits as u32)?;
            let (sa, sb, sc) = sizes(q0.kind, q0.dims);
            let (sa, sb, sc) = (sa as usize, sb as usize, sc as usize);
            let mut s0 = [0u8; 32];
            let mut s1 = [0u8; 32];
            rng.fill_bytes(&mut s0);
            rng.fill_bytes(&mut s1);
            let v0 = expand(ring, s0, &[sa, sb, sc]);
            let v1 = expand(ring, s1, &[sa, sb]);
            let a = ring.add_vec(&v0[0], &v1[0]);
            let b = ring.add_vec(&v0[1], &v1[1]);
            let c = if q0.kind == KIND_ARITH {
                ring.mul_vec(&a, &b)
            } else {
                let [m, k, n] = q0.dims;
                ring.matmul(&a, &b, m as usize, k as usize, n as usize)
            };
            let c1 = ring.sub_vec(&c, &v0[2]);
            ch0.send(&s0)?;
            ch0.flush()?;
            let mut msg = s1.to_vec();
            msg.extend(encode_ring(ring, &c1));
            ch1.send(&msg)?;
            ch1.flush()?;
            served += 1;
        }
    }

    /// The dealer process over TCP: accepts connections on `listener`, pairs the party 0
    /// and the party 1 that present the same [`SessionToken`] in their hello, and serves
    /// each pair with [`Dealer::serve_limited`] on a thread of its own. Connections that
    /// cannot be paired are refused (see the module documentation); every session and
    /// every refusal is reported to `on_event`, on the calling thread.
    ///
    /// Returns once [`DealerConfig::max_sessions`] sessions have been paired and have
    /// ended (never, without a bound, unless the listener fails to be set non-blocking).
    /// Once the last session is paired it accepts no more connections (the parties still
    /// waiting are refused with [`Refusal::Closing`]; later ones wait in the listener's
    /// backlog until the listener is dropped). The listener is polled in non-blocking
    /// mode while serving and set back to blocking on return. Each connection gets a
    /// ChaCha20 generator seeded from `rng`. An error is returned only if the listener
    /// cannot be set non-blocking; failed sessions and refusals are events.
    ///
    /// ```
    /// use std::net::TcpListener;
    /// use cipherml_mpc::net::ChannelConfig;
    /// use cipherml_mpc::prg::os_rng;
    /// use cipherml_mpc::ring::Ring;
    /// use cipherml_mpc::share::PartyId;
    /// use cipherml_mpc::triples::dealer::{Dealer, DealerClient, DealerConfig, SessionToken};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    /// let addr = listener.local_addr().unwrap();
    /// let config = DealerConfig { max_sessions: Some(1), ..Default::default() };
    /// let dealer = std::thread::spawn(move || {
    ///     Dealer::serve_tcp(&listener, &config, &mut os_rng(), |e| println!("{e}")).unwrap()
    /// });
    /// let token = SessionToken::random(&mut os_rng());
    /// let ring = Ring::new(32).unwrap();
    /// let t = token.clone();
    /// let p1 = std::thread::spawn(move || {
    ///     let mut c = DealerClient::connect(addr, PartyId::P1, &t, ChannelConfig::default())?;
    ///     c.arith_triples(ring, 4)
    /// });
    /// let mut c = DealerClient::connect(addr, PartyId::P0, &token, ChannelConfig::default())
    ///     .unwrap();
    /// let t0 = c.arith_triples(ring, 4).unwrap();
    /// let t1 = p1.join().unwrap().unwrap();
    /// drop(c);
    /// for i in 0..4 {
    ///     let a = ring.add(t0.a[i], t1.a[i]);
    ///     let b = ring.add(t0.b[i], t1.b[i]);
    ///     assert_eq!(ring.add(t0.c[i], t1.c[i]), ring.mul(a, b));
    /// }
    /// assert_eq!(dealer.join().unwrap().sessions, 1);
    /// ```
    pub fn serve_tcp<R: RngCore + CryptoRng>(
        listener: &TcpListener,
        config: &DealerConfig,
        rng: &mut R,
        on_event: impl FnMut(DealerEvent),
    ) -> Result<DealerSummary> {
        listener.set_nonblocking(true)?;
        let r = accept_loop(listener, config, rng, on_event);
        let _ = listener.set_nonblocking(false);
        r
    }
}

/// The token that pairs the two parties of a session at the dealer: 16 random bytes,
/// drawn by one party and given to the other ([`SessionToken::agree`]). Compared in
/// constant time; its `Debug` form does not show it. `Send` and `Sync`.
#[derive(Clone)]
pub struct SessionToken([u8; SessionToken::LEN]);

impl SessionToken {
    /// Bytes in a token.
    pub const LEN: usize = 16;

    /// A fresh random token.
    pub fn random<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut b = [0u8; Self::LEN];
        rng.fill_bytes(&mut b);
        Self(b)
    }

    /// The token with these bytes (as received from the other party).
    pub fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    /// The bytes (to give to the other party).
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        self.0
    }

    /// Agrees on a token over the parties' own channel: party 0 draws it from `rng` and
    /// sends it, party 1 receives it (exactly [`SessionToken::LEN`] bytes, else
    /// [`Error::Malformed`]). One message; both parties call it at the same point.
    pub fn agree<C: Channel + ?Sized, R: RngCore + CryptoRng + ?Sized>(
        id: PartyId,
        ch: &mut C,
        rng: &mut R,
    ) -> Result<Self> {
        match id {
            PartyId::P0 => {
                let t = Self::random(rng);
                ch.send(&t.0)?;
                ch.flush()?;
                Ok(t)
            }
            PartyId::P1 => {
                let m = recv_exact(ch, "dealer session token", Self::LEN)?;
                let mut b = [0u8; Self::LEN];
                b.copy_from_slice(&m);
                Ok(Self(b))
            }
        }
    }
}

impl PartialEq for SessionToken {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SessionToken {}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(..)")
    }
}

/// Why the dealer refused a connection (sent to the party in the reply to its hello).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The hello was malformed (length, magic, party byte) or did not arrive in time.
    BadHello,
    /// The party speaks another version of the dealer protocol.
    Version {
        /// The dealer's version.
        dealer: u8,
        /// The party's version.
        party: u8,
    },
    /// A connection with the same token and party is already waiting.
    DuplicateParty,
    /// No peer with the same token arrived within the pairing timeout.
    NoPeer,
    /// The dealer has as many connections as it accepts.
    Busy,
    /// The dealer is closing (it has paired its last session).
    Closing,
}

impl Refusal {
    /// The status byte of the reply.
    pub fn code(self) -> u8 {
        match self {
            Refusal::BadHello => 1,
            Refusal::Version { .. } => 2,
            Refusal::DuplicateParty => 3,
            Refusal::NoPeer => 4,
            Refusal::Busy => 5,
            Refusal::Closing => 6,
        }
    }

    /// The refusal of a reply's status byte (`None` for 0, accepted, and unknown codes);
    /// `dealer_version` is the version byte of the reply.
    pub fn from_code(code: u8, dealer_version: u8) -> Option<Self> {
        Some(match code {
            1 => Refusal::BadHello,
            2 => Refusal::Version {
                dealer: dealer_version,
                party: DEALER_VERSION,
            },
            3 => Refusal::DuplicateParty,
            4 => Refusal::NoPeer,
            5 => Refusal::Busy,
            6 => Refusal::Closing,
            _ => return None,
        })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::BadHello => f.write_str("malformed or late hello"),
            Refusal::Version { dealer, party } => write!(
                f,
                "dealer protocol version {party} not supported (the dealer speaks {dealer})"
            ),
            Refusal::DuplicateParty => {
                f.write_str("this party of the session is already connected")
            }
            Refusal::NoPeer => f.write_str("no peer with the same session token arrived in time"),
            Refusal::Busy => f.write_str("the dealer is at its connection limit"),
            Refusal::Closing => f.write_str("the dealer is closing"),
        }
    }
}

/// Settings of [`Dealer::serve_tcp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DealerConfig {
    /// Limits of each connection; the timeout is how long the dealer waits for a party's
    /// next request (an idle session ends with [`Error::Timeout`]).
    pub channel: ChannelConfig,
    /// How long a new connection has to send its hello.
    pub hello_timeout: Duration,
    /// How long a party waits for its peer before it is refused ([`Refusal::NoPeer`]).
    pub pair_timeout: Duration,
    /// Connections at most at once (waiting, or in a session); more are refused
    /// ([`Refusal::Busy`]).
    pub max_connections: usize,
    /// Sessions to pair before returning (`None`: serve until the process ends).
    pub max_sessions: Option<u64>,
    /// Ring elements at most in one request (capped at [`MAX_REQUEST_ELEMENTS`]).
    pub max_request_elements: u64,
}

impl Default for DealerConfig {
    /// 300 s idle timeout, 10 s for the hello, 60 s to pair, 64 connections, no session
    /// bound, [`MAX_REQUEST_ELEMENTS`] per request.
    fn default() -> Self {
        Self {
            channel: ChannelConfig {
                timeout: Duration::from_secs(300),
                ..ChannelConfig::default()
            },
            hello_timeout: Duration::from_secs(10),
            pair_timeout: Duration::from_secs(60),
            max_connections: 64,
            max_sessions: None,
            max_request_elements: MAX_REQUEST_ELEMENTS,
        }
    }
}

/// How a session went (no tokens, no triples).
#[derive(Debug)]
pub struct SessionReport {
    /// The session's number (1, 2, ... in the order of pairing).
    pub number: u64,
    /// The addresses of party 0 and party 1.
    pub peers: [SocketAddr; 2],
    /// The number of requests served, or why the session stopped.
    pub outcome: Result<u64>,
    /// From pairing to the end.
    pub elapsed: Duration,
    /// Bytes sent to both parties.
    pub bytes_sent: u64,
}

/// What [`Dealer::serve_tcp`] reports as it serves.
#[derive(Debug)]
#[non_exhaustive]
pub enum DealerEvent {
    /// A session ended.
    Session(SessionReport),
    /// A connection was refused.
    Refused {
        /// The connection's address.
        peer: SocketAddr,
        /// Why.
        reason: Refusal,
        /// The error behind it (a malformed or late hello), if any.
        cause: Option<Error>,
    },
}

impl fmt::Display for DealerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DealerEvent::Session(r) => {
                write!(
                    f,
                    "session {} (party 0 {}, party 1 {}): ",
                    r.number, r.peers[0], r.peers[1]
                )?;
                match &r.outcome {
                    Ok(n) => write!(f, "{n} request(s) served")?,
                    Err(e) => write!(f, "failed: {e}")?,
                }
                write!(
                    f,
                    ", {} bytes sent, {:.1} ms",
                    r.bytes_sent,
                    r.elapsed.as_secs_f64() * 1e3
                )
            }
            DealerEvent::Refused {
                peer,
                reason,
                cause,
            } => {
                write!(f, "refused {peer}: {reason}")?;
                match cause {
                    Some(e) => write!(f, " ({e})"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Counts of what [`Dealer::serve_tcp`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DealerSummary {
    /// Sessions that ended with both parties hanging up.
    pub sessions: u64,
    /// Sessions that ended with an error.
    pub failed: u64,
    /// Connections refused.
    pub refused: u64,
}

impl DealerSummary {
    fn count(&mut self, e: &DealerEvent) {
        match e {
            DealerEvent::Session(r) if r.outcome.is_ok() => self.sessions += 1,
            DealerEvent::Session(_) => self.failed += 1,
            DealerEvent::Refused { .. } => self.refused += 1,
        }
    }
}

/// How often the accept loop polls the listener.
const POLL: Duration = Duration::from_millis(10);

/// A connection waiting for its peer (with its place, which the session takes over).
struct Waiting {
    ticket: u64,
    token: SessionToken,
    id: PartyId,
    peer: SocketAddr,
    ch: TcpChannel,
    slot: ConnectionSlot,
}

/// The state of one [`Dealer::serve_tcp`] call, shared with its connection threads.
#[derive(Default)]
struct Pairing {
    waiting: Vec<Waiting>,
    connections: usize,
    paired: u64,
    closing: bool,
    next_ticket: u64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<Pairing>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pairing> {
        // Every update of the state is made in full under the lock: a panic elsewhere
        // leaves it consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection's place among [`DealerConfig::max_connections`], freed when dropped.
struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.lock().connections -= 1;
        self.0.changed.notify_all();
    }
}

fn accept_loop<R: RngCore + CryptoRng>(
    listener: &TcpListener,
    config: &DealerConfig,
    rng: &mut R,
    mut on_event: impl FnMut(DealerEvent),
) -> Result<DealerSummary> {
    let shared = Arc::new(Shared::default());
    shared.lock().closing = config.max_sessions == Some(0);
    // Every connection thread holds a sender until it has reported: once this one is
    // dropped, the receiver ends when the last thread has.
    let (tx, rx) = mpsc::channel::<DealerEvent>();
    let mut summary = DealerSummary::default();
    let mut report = |e: DealerEvent, summary: &mut DealerSummary| {
        summary.count(&e);
        on_event(e);
    };
    loop {
        while let Ok(e) = rx.try_recv() {
            report(e, &mut summary);
        }
        if shared.lock().closing {
            drop(tx);
            while let Ok(e) = rx.recv() {
                report(e, &mut summary);
            }
            return Ok(summary);
        }
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Ok(e) = rx.recv_timeout(POLL) {
                    report(e, &mut summary);
                }
                continue;
            }
            // A connection reset before it was accepted, or a transient shortage (file
            // descriptors): wait a little and go on serving.
            Err(_) => {
                std::thread::sleep(POLL);
                continue;
            }
        };
        let admitted = {
            let mut s = shared.lock();
            let ok = s.connections < config.max_connections;
            if ok {
                s.connections += 1;
            }
            ok
        };
        if !admitted {
            refuse_stream(stream, Refusal::Busy);
            report(
                DealerEvent::Refused {
                    peer,
                    reason: Refusal::Busy,
                    cause: None,
                },
                &mut summary,
            );
            continue;
        }
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let slot = ConnectionSlot(shared.clone());
        let (cfg, events) = (*config, tx.clone());
        let spawned = std::thread::Builder::new()
            .name("cipherml-dealer".into())
            .spawn(move || {
                // (Its connections are closed and its place freed before it reports.)
                let rng = ChaCha20Rng::from_seed(seed);
                if let Some(e) = connection(stream, peer, &cfg, rng, slot) {
                    let _ = events.send(e);
                }
            });
        if let Err(e) = spawned {
            report(
                DealerEvent::Refused {
                    peer,
                    reason: Refusal::Busy,
                    cause: Some(Error::Io(e)),
                },
                &mut summary,
            );
        }
    }
}

/// Refuses a connection that has no channel (yet): writes the framed reply with a short
/// timeout and closes, best effort.
fn refuse_stream(mut stream: TcpStream, reason: Refusal) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let mut msg = (REPLY_LEN as u32).to_le_bytes().to_vec();
    msg.extend_from_slice(&reply(Err(reason)));
    let _ = stream.write_all(&msg);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Read what already came (the hello), without waiting: closing a socket with unread
    // input resets the connection, which may destroy the reply.
    if stream.set_nonblocking(true).is_ok() {
        let mut buf = [0u8; 256];
        let _ = std::io::Read::read(&mut stream, &mut buf);
    }
}

fn reply(status: std::result::Result<(), Refusal>) -> [u8; REPLY_LEN] {
    let mut r = [0u8; REPLY_LEN];
    r[..4].copy_from_slice(&DEALER_MAGIC);
    r[4] = DEALER_VERSION;
    r[5] = match status {
        Ok(()) => ACCEPTED,
        Err(reason) => reason.code(),
    };
    r
}

fn hello(id: PartyId, token: &SessionToken) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[..4].copy_from_slice(&DEALER_MAGIC);
    h[4] = DEALER_VERSION;
    h[5] = id.index() as u8;
    h[6..].copy_from_slice(&token.0);
    h
}

/// Reads and checks a hello by `deadline`.
fn read_hello(
    ch: &mut TcpChannel,
    deadline: Instant,
) -> std::result::Result<(PartyId, SessionToken), (Refusal, Option<Error>)> {
    let m = ch
        .recv_before(HELLO_LEN, deadline)
        .map_err(|e| (Refusal::BadHello, Some(e)))?;
    let bad = |what, expected: u64, found: u64| {
        (
            Refusal::BadHello,
            Some(Error::Malformed {
                what,
                expected,
                found,
            }),
        )
    };
    let Ok(h) = <[u8; HELLO_LEN]>::try_from(m.as_slice()) else {
        return Err(bad("dealer hello length", HELLO_LEN as u64, m.len() as u64));
    };
    if h[..4] != DEALER_MAGIC {
        let mut found = [0u8; 4];
        found.copy_from_slice(&h[..4]);
        return Err(bad(
            "dealer hello magic",
            u32::from_le_bytes(DEALER_MAGIC) as u64,
            u32::from_le_bytes(found) as u64,
        ));
    }
    if h[4] != DEALER_VERSION {
        return Err((
            Refusal::Version {
                dealer: DEALER_VERSION,
                party: h[4],
            },
            None,
        ));
    }
    let id = match h[5] {
        0 => PartyId::P0,
        1 => PartyId::P1,
        other => return Err(bad("dealer hello party", 1, other as u64)),
    };
    let mut token = [0u8; SessionToken::LEN];
    token.copy_from_slice(&h[6..]);
    Ok((id, SessionToken(token)))
}

/// Checks the dealer's reply to a hello.
fn check_reply(r: &[u8]) -> Result<()> {
    let Ok(r) = <[u8; REPLY_LEN]>::try_from(r) else {
        return Err(Error::Malformed {
            what: "dealer reply length",
            expected: REPLY_LEN as u64,
            found: r.len() as u64,
        });
    };
    if r[..4] != DEALER_MAGIC {
        let mut found = [0u8; 4];
        found.copy_from_slice(&r[..4]);
        return Err(Error::Malformed {
            what: "dealer reply magic",
            expected: u32::from_le_bytes(DEALER_MAGIC) as u64,
            found: u32::from_le_bytes(found) as u64,
        });
    }
    if r[5] == ACCEPTED {
        return Ok(());
    }
    match Refusal::from_code(r[5], r[4]) {
        Some(reason) => Err(Error::DealerRefused { reason }),
        None => Err(Error::Malformed {
            what: "dealer reply status",
            expected: Refusal::Closing.code() as u64,
            found: r[5] as u64,
        }),
    }
}

/// Sends a refusal on `ch` and closes it; the event to report.
fn refuse(
    mut ch: TcpChannel,
    peer: SocketAddr,
    reason: Refusal,
    cause: Option<Error>,
) -> Option<DealerEvent> {
    let _ = ch.send(&reply(Err(reason))).and_then(|_| ch.flush());
    drop(ch);
    Some(DealerEvent::Refused {
        peer,
        reason,
        cause,
    })
}

/// One connection: its hello, then pairing; the second party of a pair runs the session.
/// Returns the event to report, once the connections it ends are closed and their places
/// freed (`None` for a party whose peer's thread took it over).
fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    cfg: &DealerConfig,
    mut rng: ChaCha20Rng,
    slot: ConnectionSlot,
) -> Option<DealerEvent> {
    let start = Instant::now();
    let shared = slot.0.clone();
    let mut ch = match stream
        .set_nonblocking(false)
        .map_err(Error::from)
        .and_then(|_| TcpChannel::from_stream(stream, cfg.channel))
    {
        Ok(ch) => ch,
        Err(e) => {
            return Some(DealerEvent::Refused {
                peer,
                reason: Refusal::Busy,
                cause: Some(e),
            })
        }
    };
    let (id, token) = match read_hello(&mut ch, start + cfg.hello_timeout) {
        Ok(h) => h,
        Err((reason, cause)) => return refuse(ch, peer, reason, cause),
    };
    let mut st = shared.lock();
    if st.closing {
        drop(st);
        return refuse(ch, peer, Refusal::Closing, None);
    }
    if let Some(pos) = st.waiting.iter().position(|w| w.token == token) {
        if st.waiting[pos].id == id {
            drop(st);
            return refuse(ch, peer, Refusal::DuplicateParty, None);
        }
        let other = st.waiting.swap_remove(pos);
        st.paired += 1;
        let number = st.paired;
        if cfg.max_sessions.is_some_and(|m| st.paired >= m) {
            st.closing = true;
        }
        shared.changed.notify_all();
        drop(st);
        let ((ch0, p0), (ch1, p1)) = match id {
            PartyId::P0 => ((ch, peer), (other.ch, other.peer)),
            PartyId::P1 => ((other.ch, other.peer), (ch, peer)),
        };
        let event = session(number, [ch0, ch1], [p0, p1], cfg, &mut rng);
        drop((other.slot, slot));
        return Some(event);
    }
    let ticket = st.next_ticket;
    st.next_ticket += 1;
    st.waiting.push(Waiting {
        ticket,
        token,
        id,
        peer,
        ch,
        slot,
    });
    let deadline = Instant::now() + cfg.pair_timeout;
    loop {
        // Taken out of the list: the peer's thread runs the session.
        let pos = st.waiting.iter().position(|w| w.ticket == ticket)?;
        let left = deadline.saturating_duration_since(Instant::now());
        if st.closing || left.is_zero() {
            let reason = if st.closing {
                Refusal::Closing
            } else {
                Refusal::NoPeer
            };
            let w = st.waiting.swap_remove(pos);
            drop(st);
            let event = refuse(w.ch, w.peer, reason, None);
            drop(w.slot);
            return event;
        }
        st = shared
            .changed
            .wait_timeout(st, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// A paired session: *accepted* to both parties, then [`Dealer::serve_limited`]; the
/// report once both connections are closed.
fn session(
    number: u64,
    [mut ch0, mut ch1]: [TcpChannel; 2],
    peers: [SocketAddr; 2],
    cfg: &DealerConfig,
    rng: &mut ChaCha20Rng,
) -> DealerEvent {
    let start = Instant::now();
    let accepted = reply(Ok(()));
    let outcome = ch0
        .send(&accepted)
        .and_then(|_| ch0.flush())
        .and_then(|_| ch1.send(&accepted))
        .and_then(|_| ch1.flush())
        .and_then(|_| Dealer::serve_limited(&mut ch0, &mut ch1, rng, cfg.max_request_elements));
    let bytes_sent = ch0.stats().bytes_sent + ch1.stats().bytes_sent;
    drop((ch0, ch1));
    DealerEvent::Session(SessionReport {
        number,
        peers,
        outcome,
        elapsed: start.elapsed(),
        bytes_sent,
    })
}

/// A party's connection to the dealer: a [`TripleSource`]. `Send` if its channel is; not
/// meant to be shared. Dropping it hangs up (the dealer's session ends when both parties
/// have hung up).
#[derive(Debug)]
pub struct DealerClient<D: Channel> {
    ch: D,
    id: PartyId,
}

impl DealerClient<TcpChannel> {
    /// Connects party `id` to the dealer at `addr` with the session's `token` and waits
    /// until the dealer has paired it with the other party (at most `config.timeout`,
    /// which should exceed the dealer's pairing timeout). A refusal is
    /// [`Error::DealerRefused`] with the [`Refusal`]; a reply that is not the dealer
    /// protocol is [`Error::Malformed`].
    pub fn connect<A: ToSocketAddrs + fmt::Display>(
        addr: A,
        id: PartyId,
        token: &SessionToken,
        config: ChannelConfig,
    ) -> Result<Self> {
        let mut ch = TcpChannel::connect(addr, config)?;
        ch.send(&hello(id, token))?;
        let r = recv_exact(&mut ch, "dealer reply", REPLY_LEN)?;
        check_reply(&r)?;
        Ok(Self::new(id, ch))
    }
}

impl<D: Channel> DealerClient<D> {
    /// The client of party `id` over `ch` (already paired with the dealer).
    pub fn new(id: PartyId, ch: D) -> Self {
        Self { ch, id }
    }

    /// Gives the channel back (dropping it tells the dealer this party is done).
    pub fn into_channel(self) -> D {
        self.ch
    }

    /// The traffic with the dealer so far.
    pub fn stats(&self) -> crate::net::Stats {
        self.ch.stats()
    }

    /// This party's shares of `n` elementwise triples (the other party must ask for the
    /// same at the same point of the session).
    pub fn arith_triples(&mut self, ring: Ring, n: usize) -> Result<ArithTriples> {
        let mut v = self.request(ring, KIND_ARITH, [n as u64, 0, 0])?;
        let c = v.pop().unwrap_or_default();
        let b = v.pop().unwrap_or_default();
        let a = v.pop().unwrap_or_default();
        Ok(ArithTriples { ring, a, b, c })
    }

    /// This party's shares of one matrix triple `(m x k) (k x n)` (the other party must
    /// ask for the same at the same point of the session).
    pub fn matrix_triple(
        &mut self,
        ring: Ring,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<MatrixTriple> {
        let mut v = self.request(ring, KIND_MATRIX, [m as u64, k as u64, n as u64])?;
        let c = v.pop().unwrap_or_default();
        let b = v.pop().unwrap_or_default();
        let a = v.pop().unwrap_or_default();
        Ok(MatrixTriple {
            ring,
            m,
            k,
            n,
            a,
            b,
            c,
        })
    }

    fn request(&mut self, ring: Ring, kind: u8, dims: [u64; 3]) -> Result<Vec<Vec<u64>>> {
        let req = Request {
            kind,
            bits: ring.bits() as u8,
            dims,
        };
        let (sa, sb, sc) = sizes(kind, dims);
        if sa + sb + sc > MAX_REQUEST_ELEMENTS as u128 {
            return Err(Error::InvalidInput {
                what: "triple request too large",
                expected: MAX_REQUEST_ELEMENTS,
                found: (sa + sb + sc).min(u64::MAX as u128) as u64,
            });
        }
        let (sa, sb, sc) = (sa as usize, sb as usize, sc as usize);
        self.ch.send(&req.encode())?;
        let mut seed = [0u8; 32];
        match self.id {
            PartyId::P0 => {
                seed.copy_from_slice(&recv_exact(&mut self.ch, "dealer seed", 32)?);
                Ok(expand(ring, seed, &[sa, sb, sc]))
            }
            PartyId::P1 => {
                let m = recv_exact(
                    &mut self.ch,
                    "dealer triple shares",
                    32 + sc * ring.byte_len(),
                )?;
                seed.copy_from_slice(&m[..32]);
                let mut v = expand(ring, seed, &[sa, sb]);
                v.push(decode_ring(ring, &m[32..], sc, "dealer c share")?);
                Ok(v)
            }
        }
    }
}

impl<C: Channel, R: RngCore + CryptoRng, D: Channel> TripleSource<C, R> for DealerClient<D> {
    fn arith(&mut self, _p: &mut Party<C, R>, ring: Ring, n: usize) -> Result<ArithTriples> {
        self.arith_triples(ring, n)
    }

    fn matrix(
        &mut self,
        _p: &mut Party<C, R>,
        ring: Ring,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<MatrixTriple> {
        self.matrix_triple(ring, m, k, n)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::Receiver;
    use std::thread::JoinHandle;

    use super::*;
    use crate::net::MemoryChannel;
    use crate::prg::os_rng;
    use crate::protocols::arith;
    use crate::share::split;
    use crate::triples::{AnyTriples, TripleSourceKind};

    type Running = (
        SocketAddr,
        JoinHandle<Result<DealerSummary>>,
        Receiver<DealerEvent>,
    );

    /// A dealer on a loopback port in a thread of its own, its events sent to a channel.
    fn start(config: DealerConfig) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        let h = std::thread::spawn(move || {
            Dealer::serve_tcp(&listener, &config, &mut os_rng(), |e| {
                let _ = tx.send(e);
            })
        });
        (addr, h, rx)
    }

    fn client_config() -> ChannelConfig {
        ChannelConfig {
            timeout: Duration::from_secs(30),
            ..ChannelConfig::default()
        }
    }

    fn quick(max_sessions: u64) -> DealerConfig {
        DealerConfig {
            pair_timeout: Duration::from_millis(300),
            hello_timeout: Duration::from_millis(300),
            max_sessions: Some(max_sessions),
            ..DealerConfig::default()
        }
    }

    fn refusal(r: Result<DealerClient<TcpChannel>>) -> Refusal {
        match r {
            Err(Error::DealerRefused { reason }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn session_outcome(rx: &Receiver<DealerEvent>) -> Result<u64> {
        loop {
            match rx.recv_timeout(Duration::from_secs(30)).unwrap() {
                DealerEvent::Session(r) => return r.outcome,
                DealerEvent::Refused { .. } => {}
            }
        }
    }

    #[test]
    fn dealer_over_tcp_serves_a_session_of_two_parties_and_returns_when_they_hang_up() {
        let (addr, dealer, rx) = start(DealerConfig {
            max_sessions: Some(1),
            ..DealerConfig::default()
        });
        let token = SessionToken::random(&mut os_rng());
        let ring = Ring::new(64).unwrap();
        let small = Ring::new(17).unwrap();
        let mut rng = os_rng();
        let (x, y) = (ring.random_vec(&mut rng, 50), ring.random_vec(&mut rng, 50));
        let (a, b) = (ring.random_vec(&mut rng, 12), ring.random_vec(&mut rng, 8));
        let (sx, sy) = (split(ring, &x, &mut rng), split(ring, &y, &mut rng));
        let (sa, sb) = (split(ring, &a, &mut rng), split(ring, &b, &mut rng));
        let (c0, c1) = MemoryChannel::pair();
        let run = move |id: PartyId,
                        ch: MemoryChannel,
                        token: SessionToken,
                        [x, y, a, b]: [Vec<u64>; 4]| {
            let client = DealerClient::connect(addr, id, &token, client_config()).unwrap();
            let mut src = AnyTriples::dealer(client);
            assert_eq!(src.kind(), TripleSourceKind::Dealer);
            let mut p = Party::setup(id, ch, os_rng()).unwrap();
            let t = src.arith(&mut p, ring, 50).unwrap();
            let z = arith::mul(&mut p, &x, &y, &t).unwrap();
            let mt = src.matrix(&mut p, ring, 3, 4, 2).unwrap();
            let w = arith::matmul(&mut p, &a, &b, &mt).unwrap();
            let ts = src.arith(&mut p, small, 33).unwrap();
            // Dropping the source hangs up.
            (t, z, mt, w, ts)
        };
        let (tok, s1) = (
            token.clone(),
            [sx.1.clone(), sy.1.clone(), sa.1.clone(), sb.1.clone()],
        );
        let h = std::thread::spawn(move || run(PartyId::P1, c1, tok, s1));
        let r0 = run(PartyId::P0, c0, token, [sx.0, sy.0, sa.0, sb.0]);
        let r1 = h.join().unwrap();
        for (t0, t1) in [(&r0.0, &r1.0), (&r0.4, &r1.4)] {
            let r = t0.ring;
            let (ta, tb) = (r.add_vec(&t0.a, &t1.a), r.add_vec(&t0.b, &t1.b));
            assert_eq!(r.add_vec(&t0.c, &t1.c), r.mul_vec(&ta, &tb));
            assert!(t0.c.iter().chain(&t1.c).all(|&v| v <= r.mask()));
        }
        assert_eq!(r0.4.len(), 33);
        let (m0, m1) = (&r0.2, &r1.2);
        let (ma, mb) = (ring.add_vec(&m0.a, &m1.a), ring.add_vec(&m0.b, &m1.b));
        assert_eq!(ring.add_vec(&m0.c, &m1.c), ring.matmul(&ma, &mb, 3, 4, 2));
        assert_eq!(ring.add_vec(&r0.1, &r1.1), ring.mul_vec(&x, &y));
        assert_eq!(ring.add_vec(&r0.3, &r1.3), ring.matmul(&a, &b, 3, 4, 2));
        // Both parties hung up: the session ended well and the dealer returned.
        let summary = dealer.join().unwrap().unwrap();
        assert_eq!(
            summary,
            DealerSummary {
                sessions: 1,
                failed: 0,
                refused: 0
            }
        );
        assert_eq!(session_outcome(&rx).unwrap(), 3);
    }

    #[test]
    fn strangers_and_duplicates_are_refused_and_only_same_token_parties_are_paired() {
        // A pairing timeout far above the test's run time: every outcome below is decided
        // by pairing, not by a clock.
        let (addr, dealer, rx) = start(DealerConfig {
            max_sessions: Some(1),
            ..DealerConfig::default()
        });
        let (results, done) = mpsc::channel();
        let connect = move |id, token: &SessionToken| {
            let (t, results) = (token.clone(), results.clone());
            std::thread::spawn(move || {
                let _ = results.send((id, DealerClient::connect(addr, id, &t, client_config())));
            });
        };
        let (t, u) = (
            SessionToken::random(&mut os_rng()),
            SessionToken::random(&mut os_rng()),
        );
        assert_ne!(t, u);
        // A stranger with another token, and two connections claiming party 0's place.
        connect(PartyId::P1, &u);
        connect(PartyId::P0, &t);
        connect(PartyId::P0, &t);
        let (id, first) = done.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!((id, refusal(first)), (PartyId::P0, Refusal::DuplicateParty));
        // Party 1 with the right token is paired with the party 0 that waits, not with
        // the stranger; that was the one session asked for, so the stranger is sent away.
        let c1 = DealerClient::connect(addr, PartyId::P1, &t, client_config()).unwrap();
        let mut rest: Vec<_> = (0..2)
            .map(|_| done.recv_timeout(Duration::from_secs(30)).unwrap())
            .collect();
        rest.sort_by_key(|(id, _)| id.index());
        let (_, c0) = rest.remove(0);
        let c0 = c0.unwrap();
        let (id, stranger) = rest.remove(0);
        assert_eq!((id, refusal(stranger)), (PartyId::P1, Refusal::Closing));
        drop((c0, c1));
        let summary = dealer.join().unwrap().unwrap();
        assert_eq!(
            summary,
            DealerSummary {
                sessions: 1,
                failed: 0,
                refused: 2
            }
        );
        assert_eq!(session_outcome(&rx).unwrap(), 0);
    }

    #[test]
    fn a_dealer_at_its_connection_limit_refuses_with_busy() {
        let (addr, dealer, rx) = start(DealerConfig {
            max_connections: 2,
            max_sessions: Some(1),
            ..DealerConfig::default()
        });
        // Two connections that say nothing hold both places (accepted in order).
        let silent = [
            TcpChannel::connect(addr, client_config()).unwrap(),
            TcpChannel::connect(addr, client_config()).unwrap(),
        ];
        let token = SessionToken::random(&mut os_rng());
        assert_eq!(
            refusal(DealerClient::connect(
                addr,
                PartyId::P0,
                &token,
                client_config()
            )),
            Refusal::Busy
        );
        let mut reasons = Vec::new();
        let next = || match rx.recv_timeout(Duration::from_secs(30)).unwrap() {
            DealerEvent::Refused { reason, .. } => reason,
            other => panic!("expected a refusal, got {other:?}"),
        };
        reasons.push(next());
        // They hang up: their places are free before their refusals are reported.
        drop(silent);
        reasons.push(next());
        reasons.push(next());
        assert_eq!(
            reasons,
            [Refusal::Busy, Refusal::BadHello, Refusal::BadHello]
        );
        let t = token.clone();
        let h = std::thread::spawn(move || {
            DealerClient::connect(addr, PartyId::P1, &t, client_config()).map(drop)
        });
        drop(DealerClient::connect(addr, PartyId::P0, &token, client_config()).unwrap());
        h.join().unwrap().unwrap();
        let summary = dealer.join().unwrap().unwrap();
        assert_eq!(
            summary,
            DealerSummary {
                sessions: 1,
                failed: 0,
                refused: 3
            }
        );
    }

    #[test]
    fn malformed_hellos_are_refused_with_typed_errors() {
        let (addr, dealer, rx) = start(quick(1));
        let token = SessionToken::random(&mut os_rng());
        let good = hello(PartyId::P0, &token);
        let mut bad_magic = good;
        bad_magic[0] = b'X';
        let mut bad_version = good;
        bad_version[4] = 9;
        let mut bad_party = good;
        bad_party[5] = 7;
        let cases: Vec<(Option<Vec<u8>>, Refusal)> = vec![
            (Some(bad_magic.to_vec()), Refusal::BadHello),
            (Some(good[..5].to_vec()), Refusal::BadHello),
            (Some(vec![0u8; 1000]), Refusal::BadHello),
            (Some(Vec::new()), Refusal::BadHello),
            (Some(bad_party.to_vec()), Refusal::BadHello),
            (
                Some(bad_version.to_vec()),
                Refusal::Version {
                    dealer: DEALER_VERSION,
                    party: 9,
                },
            ),
            // Says nothing: refused after the hello timeout.
            (None, Refusal::BadHello),
        ];
        for (msg, want) in cases {
            let mut ch = TcpChannel::connect(addr, client_config()).unwrap();
            if let Some(m) = msg {
                ch.send(&m).unwrap();
            }
            let r = recv_exact(&mut ch, "dealer reply", REPLY_LEN).unwrap();
            match check_reply(&r) {
                // (The client names the version it speaks itself: this one lied.)
                Err(Error::DealerRefused { reason }) => assert_eq!(reason.code(), want.code()),
                other => panic!("expected {want:?}, got {other:?}"),
            }
            match rx.recv_timeout(Duration::from_secs(30)).unwrap() {
                DealerEvent::Refused { reason, cause, .. } => {
                    assert_eq!(reason, want);
                    assert_eq!(cause.is_some(), reason == Refusal::BadHello);
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        // A party alone: no peer comes within the pairing timeout.
        assert_eq!(
            refusal(DealerClient::connect(
                addr,
                PartyId::P0,
                &token,
                client_config()
            )),
            Refusal::NoPeer
        );
        // The dealer still pairs and serves (the two connect at about the same time: if
        // one came more than the short pairing timeout after the other, both are sent
        // away and they try again with a fresh token).
        let mut refused = 8;
        loop {
            let t = SessionToken::random(&mut os_rng());
            let t1 = t.clone();
            let h = std::thread::spawn(move || {
                DealerClient::connect(addr, PartyId::P1, &t1, client_config()).map(drop)
            });
            let c0 = DealerClient::connect(addr, PartyId::P0, &t, client_config());
            match (c0, h.join().unwrap()) {
                (Ok(c0), Ok(())) => break drop(c0),
                (Err(Error::DealerRefused { .. }), Err(Error::DealerRefused { .. })) => {
                    refused += 2
                }
                other => panic!("{other:?}"),
            }
        }
        let summary = dealer.join().unwrap().unwrap();
        assert_eq!((summary.sessions, summary.refused), (1, refused));
    }

    #[test]
    fn hostile_requests_end_the_session_with_typed_errors() {
        let (addr, dealer, rx) = start(DealerConfig {
            max_sessions: Some(4),
            ..DealerConfig::default()
        });
        let ring = Ring::new(32).unwrap();
        let good = Request {
            kind: KIND_ARITH,
            bits: 32,
            dims: [8, 0, 0],
        }
        .encode();
        let huge = Request {
            kind: KIND_MATRIX,
            bits: 64,
            dims: [1 << 20, 1 << 20, 1],
        }
        .encode();
        let other = Request {
            kind: KIND_ARITH,
            bits: 32,
            dims: [9, 0, 0],
        }
        .encode();
        // What party 0 sends raw, party 1 honestly asking for 8 triples.
        for raw in [good[..10].to_vec(), vec![1u8; 1000], huge, other] {
            let token = SessionToken::random(&mut os_rng());
            let t = token.clone();
            let honest = std::thread::spawn(move || {
                let mut c = DealerClient::connect(addr, PartyId::P1, &t, client_config())?;
                c.arith_triples(ring, 8)
            });
            let mut ch = DealerClient::connect(addr, PartyId::P0, &token, client_config())
                .unwrap()
                .into_channel();
            ch.send(&raw).unwrap();
            ch.flush().unwrap();
            // The dealer closes the session: the honest party sees it, no triples.
            assert!(matches!(honest.join().unwrap(), Err(Error::PeerClosed)));
            assert!(matches!(ch.recv(), Err(Error::PeerClosed)));
            let e = session_outcome(&rx).unwrap_err();
            match raw.len() {
                10 => assert!(matches!(
                    e,
                    Error::Malformed {
                        what: "dealer request",
                        expected: 26,
                        found: 10
                    }
                )),
                1000 => assert!(matches!(
                    e,
                    Error::Malformed {
                        expected: 26,
                        found: 1000,
                        ..
                    }
                )),
                _ if raw[0] == KIND_MATRIX => assert!(matches!(
                    e,
                    Error::MessageTooLarge {
                        max: MAX_REQUEST_ELEMENTS,
                        ..
                    }
                )),
                _ => assert!(matches!(e, Error::ProtocolAborted { .. })),
            }
        }
        let summary = dealer.join().unwrap().unwrap();
        assert_eq!((summary.sessions, summary.failed), (0, 4));
    }

    #[test]
    fn request_decoder_never_indexes_past_the_message() {
        let good = Request {
            kind: KIND_MATRIX,
            bits: 64,
            dims: [2, 3, 4],
        }
        .encode();
        assert_eq!(
            Request::decode(&good, MAX_REQUEST_ELEMENTS).unwrap().dims,
            [2, 3, 4]
        );
        for len in [0, 1, 2, 10, REQ_LEN - 1] {
            match Request::decode(&good[..len], MAX_REQUEST_ELEMENTS) {
                Err(Error::Malformed {
                    expected, found, ..
                }) => assert_eq!((expected, found), (REQ_LEN as u64, len as u64)),
                other => panic!("length {len}: {other:?}"),
            }
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            Request::decode(&long, MAX_REQUEST_ELEMENTS),
            Err(Error::Malformed { found: 27, .. })
        ));
        let mut bad = good.clone();
        bad[0] = 3;
        assert!(matches!(
            Request::decode(&bad, MAX_REQUEST_ELEMENTS),
            Err(Error::Malformed { found: 3, .. })
        ));
        for bits in [0u8, 65, 255] {
            let mut bad = good.clone();
            bad[1] = bits;
            assert!(matches!(
                Request::decode(&bad, MAX_REQUEST_ELEMENTS),
                Err(Error::InvalidBitWidth { .. })
            ));
        }
        let max = Request {
            kind: KIND_MATRIX,
            bits: 64,
            dims: [u64::MAX; 3],
        }
        .encode();
        assert!(matches!(
            Request::decode(&max, MAX_REQUEST_ELEMENTS),
            Err(Error::MessageTooLarge { len: u64::MAX, .. })
        ));
        // A lower bound of the dealer's own: 2*3 + 3*4 + 2*4 = 26 elements.
        assert!(matches!(
            Request::decode(&good, 25),
            Err(Error::MessageTooLarge { len: 26, max: 25 })
        ));
        // Over an in-process channel too, an empty message is a typed error.
        let (mut d0, mut p0) = MemoryChannel::pair();
        let (mut d1, mut p1) = MemoryChannel::pair();
        p0.send(&[]).unwrap();
        p0.flush().unwrap();
        p1.send(&good).unwrap();
        p1.flush().unwrap();
        assert!(matches!(
            Dealer::serve(&mut d0, &mut d1, &mut os_rng()),
            Err(Error::Malformed { found: 0, .. })
        ));
    }

    #[test]
    fn parties_agree_on_a_token_and_a_short_one_is_refused() {
        let (mut a, mut b) = MemoryChannel::pair();
        let t0 = SessionToken::agree(PartyId::P0, &mut a, &mut os_rng()).unwrap();
        let t1 = SessionToken::agree(PartyId::P1, &mut b, &mut os_rng()).unwrap();
        assert_eq!(t0, t1);
        let t2 = SessionToken::agree(PartyId::P0, &mut a, &mut os_rng()).unwrap();
        assert_ne!(t0, t2);
        a.send(&[1, 2, 3]).unwrap();
        a.flush().unwrap();
        // (The earlier token is still queued: read it first.)
        assert_eq!(
            SessionToken::agree(PartyId::P1, &mut b, &mut os_rng()).unwrap(),
            t2
        );
        assert!(matches!(
            SessionToken::agree(PartyId::P1, &mut b, &mut os_rng()),
            Err(Error::Malformed {
                expected: 16,
                found: 3,
                ..
            })
        ));
    }

    #[test]
    fn replies_that_are_not_the_dealer_protocol_are_typed_errors() {
        assert!(check_reply(&reply(Ok(()))).is_ok());
        for r in [
            Refusal::BadHello,
            Refusal::DuplicateParty,
            Refusal::NoPeer,
            Refusal::Busy,
            Refusal::Closing,
        ] {
            assert!(matches!(
                check_reply(&reply(Err(r))),
                Err(Error::DealerRefused { reason }) if reason == r
            ));
        }
        let mut unknown = reply(Ok(()));
        unknown[5] = 99;
        assert!(matches!(
            check_reply(&unknown),
            Err(Error::Malformed { found: 99, .. })
        ));
        assert!(matches!(
            check_reply(b"HTTP/1"),
            Err(Error::Malformed {
                what: "dealer reply magic",
                ..
            })
        ));
        assert!(matches!(
            check_reply(&[]),
            Err(Error::Malformed { found: 0, .. })
        ));
        assert_eq!(
            format!("{:?}", SessionToken::from_bytes([7; 16])),
            "SessionToken(..)"
        );
    }
}
