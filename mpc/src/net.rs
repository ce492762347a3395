//! Channels between the two parties: a [`Channel`] trait with an in-memory pair
//! ([`MemoryChannel::pair`]) and TCP ([`TcpChannel`]), both counting bytes, messages and
//! rounds in each direction.
//!
//! A message is a byte string; on the wire it is a 4-byte little-endian length and the
//! body. Sent messages are buffered until [`Channel::flush`] (or the next
//! [`Channel::recv`], which flushes first): one flush with pending messages is one *flight*,
//! and the number of flights is the round count. Every receive has a timeout and a bound
//! on the message length, checked before anything is allocated, so a peer that stalls,
//! closes the connection or announces a huge message makes the receiver return an error.
//!
//! TCP writes go through a writer thread, so both parties may send before receiving
//! (a simultaneous exchange) without deadlocking on full socket buffers.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::ring::Ring;

/// Traffic counters of one end of a channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes sent, length prefixes included.
    pub bytes_sent: u64,
    /// Bytes received, length prefixes included.
    pub bytes_received: u64,
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// Flights sent: flushes that had pending messages.
    pub rounds_sent: u64,
}

impl Stats {
    /// `self - earlier`, counter by counter.
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            bytes_sent: self.bytes_sent - earlier.bytes_sent,
            bytes_received: self.bytes_received - earlier.bytes_received,
            messages_sent: self.messages_sent - earlier.messages_sent,
            messages_received: self.messages_received - earlier.messages_received,
            rounds_sent: self.rounds_sent - earlier.rounds_sent,
        }
    }
}

/// Limits of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelConfig {
    /// How long a receive (and, on TCP, a blocked write) may wait for the peer.
    pub timeout: Duration,
    /// The largest message accepted, in bytes.
    pub max_message_len: usize,
}

impl Default for ChannelConfig {
    /// 60 s, 512 MiB.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            max_message_len: 512 << 20,
        }
    }
}

/// A reliable, ordered, message-oriented connection to the other party.
///
/// Implementations are `Send` (one party per thread) but not meant to be shared.
pub trait Channel {
    /// Queues a message (sent at the next flush or receive).
    fn send(&mut self, msg: &[u8]) -> Result<()>;
    /// Sends the queued messages: one round if any were queued.
    fn flush(&mut self) -> Result<()>;
    /// Flushes, then receives the next message (waiting at most the timeout).
    fn recv(&mut self) -> Result<Vec<u8>>;
    /// The traffic so far.
    fn stats(&self) -> Stats;
    /// The limits in force.
    fn config(&self) -> ChannelConfig;
}

/// A boxed channel is a channel (so a session can hold TCP or TLS behind one type).
impl<C: Channel + ?Sized> Channel for Box<C> {
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        (**self).send(msg)
    }
    fn flush(&mut self) -> Result<()> {
        (**self).flush()
    }
    fn recv(&mut self) -> Result<Vec<u8>> {
        (**self).recv()
    }
    fn stats(&self) -> Stats {
        (**self).stats()
    }
    fn config(&self) -> ChannelConfig {
        (**self).config()
    }
}

/// One end of an in-process channel (for tests and single-process runs).
#[derive(Debug)]
pub struct MemoryChannel {
    tx: Option<Sender<Vec<u8>>>,
    rx: Receiver<Vec<u8>>,
    pending: Vec<Vec<u8>>,
    pending_bytes: usize,
    flight_open: bool,
    stats: Stats,
    config: ChannelConfig,
}

/// Queued bytes beyond which a channel hands data to the transport early (streaming
/// within the same flight: not a new round).
const STREAM_THRESHOLD: usize = 1 << 20;

impl MemoryChannel {
    /// Two connected ends with the default limits.
    pub fn pair() -> (Self, Self) {
        Self::pair_with(ChannelConfig::default())
    }

    /// Two connected ends with the given limits.
    pub fn pair_with(config: ChannelConfig) -> (Self, Self) {
        let (t0, r1) = mpsc::channel();
        let (t1, r0) = mpsc::channel();
        let mk = |tx, rx| MemoryChannel {
            tx: Some(tx),
            rx,
            pending: Vec::new(),
            pending_bytes: 0,
            flight_open: false,
            stats: Stats::default(),
            config,
        };
        (mk(t0, r0), mk(t1, r1))
    }

    /// Closes the sending half (the peer then sees [`Error::PeerClosed`]).
    pub fn close(&mut self) {
        self.tx = None;
    }
}

impl MemoryChannel {
    fn deliver(&mut self) -> Result<()> {
        self.pending_bytes = 0;
        let tx = self.tx.as_ref().ok_or(Error::PeerClosed)?;
        for m in self.pending.drain(..) {
            tx.send(m).map_err(|_| Error::PeerClosed)?;
        }
        Ok(())
    }
}

impl Channel for MemoryChannel {
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        if msg.len() > self.config.max_message_len {
            return Err(Error::MessageTooLarge {
                len: msg.len() as u64,
                max: self.config.max_message_len as u64,
            });
        }
        self.stats.bytes_sent += msg.len() as u64 + 4;
        self.stats.messages_sent += 1;
        self.pending.push(msg.to_vec());
        self.pending_bytes += msg.len();
        self.flight_open = true;
        if self.pending_bytes >= STREAM_THRESHOLD {
            self.deliver()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.flight_open {
            return Ok(());
        }
        self.stats.rounds_sent += 1;
        self.flight_open = false;
        self.deliver()
    }

    fn recv(&mut self) -> Result<Vec<u8>> {
        self.flush()?;
        let m = self
            .rx
            .recv_timeout(self.config.timeout)
            .map_err(|e| match e {
                RecvTimeoutError::Timeout => Error::Timeout {
                    timeout: self.config.timeout,
                },
                RecvTimeoutError::Disconnected => Error::PeerClosed,
            })?;
        if m.len() > self.config.max_message_len {
            return Err(Error::MessageTooLarge {
                len: m.len() as u64,
                max: self.config.max_message_len as u64,
            });
        }
        self.stats.bytes_received += m.len() as u64 + 4;
        self.stats.messages_received += 1;
        Ok(m)
    }

    fn stats(&self) -> Stats {
        self.stats
    }

    fn config(&self) -> ChannelConfig {
        self.config
    }
}

type WriteError = Arc<Mutex<Option<(std::io::ErrorKind, String)>>>;

/// Maps an I/O error of a stream channel to the channel's error: timeouts and closed
/// connections are typed (for transports built on this crate's framing, such as TLS).
pub fn stream_error(e: std::io::Error, timeout: Duration) -> Error {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::WouldBlock | K::TimedOut => Error::Timeout { timeout },
        K::UnexpectedEof
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::BrokenPipe
        | K::NotConnected => Error::PeerClosed,
        _ => Error::Io(e),
    }
}

/// A writer thread for a stream: buffers handed to [`StreamWriter::send`] are written in
/// order, so the owner never blocks on a full socket buffer (both ends of a channel may
/// send before receiving). A write error is kept and reported by the next `send`.
#[derive(Debug)]
pub struct StreamWriter {
    tx: Option<Sender<Vec<u8>>>,
    handle: Option<JoinHandle<()>>,
    error: WriteError,
    timeout: Duration,
}

impl StreamWriter {
    /// Starts the thread writing to `stream` (whose write timeout the caller sets).
    pub fn spawn<W: Write + Send + 'static>(
        mut stream: W,
        name: &str,
        timeout: Duration,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let error: WriteError = Arc::new(Mutex::new(None));
        let slot = error.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for buf in rx {
                    if let Err(e) = stream.write_all(&buf).and_then(|_| stream.flush()) {
                        if let Ok(mut g) = slot.lock() {
                            *g = Some((e.kind(), e.to_string()));
                        }
                        return;
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            handle: Some(handle),
            error,
            timeout,
        })
    }

    /// Queues `buf` for writing; fails with the writer's error if it has stopped.
    pub fn send(&self, buf: Vec<u8>) -> Result<()> {
        let tx = self.tx.as_ref().ok_or(Error::PeerClosed)?;
        if tx.send(buf).is_err() {
            let stored = self.error.lock().ok().and_then(|g| g.clone());
            return Err(match stored {
                Some((kind, msg)) => stream_error(std::io::Error::new(kind, msg), self.timeout),
                None => Error::PeerClosed,
            });
        }
        Ok(())
    }

    /// Writes what is queued and stops the thread.
    pub fn close(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        self.close();
    }
}

/// The framing and accounting of a stream channel (TCP here; TLS is built on it outside
/// this crate): messages queued with their 4-byte length prefixes, flights (rounds),
/// counters, the message-length limit, and the broken flag set by a failed receive.
#[derive(Debug)]
pub struct Framing {
    pending: Vec<u8>,
    flight_open: bool,
    broken: bool,
    stats: Stats,
    config: ChannelConfig,
}

impl Framing {
    /// Empty, with `config`'s limits.
    pub fn new(config: ChannelConfig) -> Self {
        Self {
            pending: Vec::new(),
            flight_open: false,
            broken: false,
            stats: Stats::default(),
            config,
        }
    }

    /// Queues `msg` (checked against the limit); returns the pending bytes to hand to the
    /// wire now if enough have accumulated to stream them, else `None`.
    pub fn queue(&mut self, msg: &[u8]) -> Result<Option<Vec<u8>>> {
        if msg.len() > self.config.max_message_len || msg.len() > u32::MAX as usize {
            return Err(Error::MessageTooLarge {
                len: msg.len() as u64,
                max: self.config.max_message_len as u64,
            });
        }
        self.pending
            .extend_from_slice(&(msg.len() as u32).to_le_bytes());
        self.pending.extend_from_slice(msg);
        self.stats.bytes_sent += msg.len() as u64 + 4;
        self.stats.messages_sent += 1;
        self.flight_open = true;
        Ok((self.pending.len() >= STREAM_THRESHOLD).then(|| std::mem::take(&mut self.pending)))
    }

    /// Ends the flight: the bytes still pending (counting one round if any message was
    /// queued since the last flush), or `None` if there is nothing to send.
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        if !self.flight_open {
            return None;
        }
        self.stats.rounds_sent += 1;
        self.flight_open = false;
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }

    /// Before a receive: fails if an earlier receive failed.
    pub fn check_receivable(&self) -> Result<()> {
        if self.broken {
            return Err(Error::aborted("channel broken by an earlier receive error"));
        }
        Ok(())
    }

    /// Decodes a length prefix and checks it against the limit (before anything is
    /// allocated for the body).
    pub fn announced(&self, prefix: [u8; 4]) -> Result<usize> {
        let len = u32::from_le_bytes(prefix) as usize;
        if len > self.config.max_message_len {
            return Err(Error::MessageTooLarge {
                len: len as u64,
                max: self.config.max_message_len as u64,
            });
        }
        Ok(len)
    }

    /// Records the outcome of a receive (counters, or the broken flag).
    pub fn received<T: AsRef<[u8]>>(&mut self, r: Result<T>) -> Result<T> {
        match &r {
            Ok(m) => {
                self.stats.bytes_received += m.as_ref().len() as u64 + 4;
                self.stats.messages_received += 1;
            }
            Err(_) => self.broken = true,
        }
        r
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The limits.
    pub fn config(&self) -> ChannelConfig {
        self.config
    }
}

/// One end of a TCP connection (std::net), with read and write timeouts.
#[derive(Debug)]
pub struct TcpChannel {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
    writer: StreamWriter,
    framing: Framing,
}

impl TcpChannel {
    /// Connects to `addr`, retrying for up to the timeout (the peer may not listen yet).
    pub fn connect<A: ToSocketAddrs>(addr: A, config: ChannelConfig) -> Result<Self> {
        let addrs: Vec<_> = addr.to_socket_addrs()?.collect();
        let start = std::time::Instant::now();
        loop {
            match TcpStream::connect(&addrs[..]) {
                Ok(s) => return Self::from_stream(s, config),
                Err(_) if start.elapsed() < config.timeout => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => {
                    return Err(Error::Timeout {
                        timeout: config.timeout,
                    })
                }
            }
        }
    }

    /// Accepts one connection on `listener`.
    pub fn accept(listener: &TcpListener, config: ChannelConfig) -> Result<Self> {
        let (s, _) = listener.accept()?;
        Self::from_stream(s, config)
    }

    /// Wraps a connected stream (sets `TCP_NODELAY` and the timeouts).
    pub fn from_stream(stream: TcpStream, config: ChannelConfig) -> Result<Self> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(config.timeout))?;
        stream.set_write_timeout(Some(config.timeout))?;
        let writer = StreamWriter::spawn(
            stream.try_clone()?,
            "cipherml-mpc-tcp-writer",
            config.timeout,
        )?;
        let reader = BufReader::with_capacity(1 << 16, stream.try_clone()?);
        Ok(Self {
            reader,
            stream,
            writer,
            framing: Framing::new(config),
        })
    }

    fn io_error(&self, e: std::io::Error) -> Error {
        stream_error(e, self.framing.config().timeout)
    }

    fn read_message(&mut self) -> Result<Vec<u8>> {
        let mut prefix = [0u8; 4];
        self.reader
            .read_exact(&mut prefix)
            .map_err(|e| self.io_error(e))?;
        let len = self.framing.announced(prefix)?;
        // Grow with the data actually received, not with the announced length.
        let mut buf = Vec::with_capacity(len.min(1 << 20));
        (&mut self.reader)
            .take(len as u64)
            .read_to_end(&mut buf)
            .map_err(|e| self.io_error(e))?;
        if buf.len() != len {
            return Err(Error::PeerClosed);
        }
        Ok(buf)
    }
}

impl Channel for TcpChannel {
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        match self.framing.queue(msg)? {
            Some(bytes) => self.writer.send(bytes),
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<()> {
        match self.framing.flush() {
            Some(bytes) => self.writer.send(bytes),
            None => Ok(()),
        }
    }

    fn recv(&mut self) -> Result<Vec<u8>> {
        self.framing.check_receivable()?;
        self.flush()?;
        let r = self.read_message();
        self.framing.received(r)
    }

    fn stats(&self) -> Stats {
        self.framing.stats()
    }

    fn config(&self) -> ChannelConfig {
        self.framing.config()
    }
}

impl Drop for TcpChannel {
    fn drop(&mut self) {
        let _ = self.flush();
        self.writer.close();
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// A connected pair of TCP channels on loopback (for tests and benches).
pub fn tcp_loopback_pair(config: ChannelConfig) -> Result<(TcpChannel, TcpChannel)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let h = std::thread::spawn(move || TcpChannel::connect(addr, config));
    let a = TcpChannel::accept(&listener, config)?;
    let b = h
        .join()
        .map_err(|_| Error::aborted("connecting thread panicked"))??;
    Ok((a, b))
}

// ---------------------------------------------------------------------------------------
// Typed messages.

/// Receives a message of exactly `len` bytes.
pub fn recv_exact<C: Channel + ?Sized>(
    ch: &mut C,
    what: &'static str,
    len: usize,
) -> Result<Vec<u8>> {
    let m = ch.recv()?;
    if m.len() != len {
        return Err(Error::Malformed {
            what,
            expected: len as u64,
            found: m.len() as u64,
        });
    }
    Ok(m)
}

/// Encodes ring elements in `ring.byte_len()` little-endian bytes each.
pub fn encode_ring(ring: Ring, v: &[u64]) -> Vec<u8> {
    let bl = ring.byte_len();
    let mut out = Vec::with_capacity(v.len() * bl);
    for &x in v {
        out.extend_from_slice(&x.to_le_bytes()[..bl]);
    }
    out
}

/// Decodes `n` ring elements, rejecting a wrong length or unreduced values.
pub fn decode_ring(ring: Ring, bytes: &[u8], n: usize, what: &'static str) -> Result<Vec<u64>> {
    let bl = ring.byte_len();
    if bytes.len() != n * bl {
        return Err(Error::Malformed {
            what,
            expected: (n * bl) as u64,
            found: bytes.len() as u64,
        });
    }
    let mut out = Vec::with_capacity(n);
    for c in bytes.chunks_exact(bl) {
        let mut b = [0u8; 8];
        b[..bl].copy_from_slice(c);
        let x = u64::from_le_bytes(b);
        if x & !ring.mask() != 0 {
            return Err(Error::Malformed {
                what,
                expected: ring.mask(),
                found: x,
            });
        }
        out.push(x);
    }
    Ok(out)
}

/// Sends ring elements.
pub fn send_ring<C: Channel + ?Sized>(ch: &mut C, ring: Ring, v: &[u64]) -> Result<()> {
    ch.send(&encode_ring(ring, v))
}

/// Receives exactly `n` ring elements.
pub fn recv_ring<C: Channel + ?Sized>(
    ch: &mut C,
    ring: Ring,
    n: usize,
    what: &'static str,
) -> Result<Vec<u64>> {
    let m = ch.recv()?;
    decode_ring(ring, &m, n, what)
}

/// Packs bits (one per byte, `0` or `1`) eight to a byte.
pub fn pack_bits(bits: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        out[i >> 3] |= (b & 1) << (i & 7);
    }
    out
}

/// Unpacks `n` bits; rejects a wrong length or nonzero padding.
pub fn unpack_bits(bytes: &[u8], n: usize, what: &'static str) -> Result<Vec<u8>> {
    let len = n.div_ceil(8);
    if bytes.len() != len {
        return Err(Error::Malformed {
            what,
            expected: len as u64,
            found: bytes.len() as u64,
        });
    }
    if !n.is_multiple_of(8) && bytes[len - 1] >> (n % 8) != 0 {
        return Err(Error::Malformed {
            what,
            expected: 0,
            found: (bytes[len - 1] >> (n % 8)) as u64,
        });
    }
    Ok((0..n).map(|i| (bytes[i >> 3] >> (i & 7)) & 1).collect())
}

/// Sends bits (one per byte) packed.
pub fn send_bits<C: Channel + ?Sized>(ch: &mut C, bits: &[u8]) -> Result<()> {
    ch.send(&pack_bits(bits))
}

/// Receives exactly `n` packed bits.
pub fn recv_bits<C: Channel + ?Sized>(ch: &mut C, n: usize, what: &'static str) -> Result<Vec<u8>> {
    let m = ch.recv()?;
    unpack_bits(&m, n, what)
}
