//! Channels between the two parties: a [`Channel`] trait with an in-memory pair
//! ([`MemoryChannel::pair`]) and TCP ([`TcpChannel`]), both counting bytes, messages and
//! rounds in each direction.
//!
//! A message is a byte string; on the wire it is a 4-byte little-endian length and the
//! body. Sent messages are buffered until [`Channel::flush`] (or the next
//! [`Channel::recv`], which flushes first): one flush with pending messages is one *flight*,
//! and the number of flights is the round count. Every receive has an absolute deadline
//! (the whole message, prefix and body, must arrive within the timeout: a peer that
//! trickles bytes does not extend it) and a bound on the message length, checked against
//! the announced length before the body is read, so a peer that stalls, trickles, closes
//! the connection or announces a huge message makes the receiver return an error.
//! [`Channel::recv_limited`] and [`Channel::recv_before`] tighten the bound and the deadline
//! for one message (a protocol knows what may come next).
//!
//! TCP writes go through a writer thread, so both parties may send before receiving
//! (a simultaneous exchange) without deadlocking on full socket buffers. Its queue is
//! bounded in bytes ([`ChannelConfig::max_queued_bytes`]): a sender whose peer does not
//! read blocks, and fails with [`Error::SendQueueFull`] after the timeout.

use std::collections::VecDeque;
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    /// Bytes at most queued for the writer thread of a stream channel (a buffer larger
    /// than this is still accepted when the queue is empty); past it a send waits for the
    /// peer to read, at most the timeout.
    pub max_queued_bytes: usize,
}

impl Default for ChannelConfig {
    /// 60 s, 512 MiB messages, 256 MiB queued.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            max_message_len: 512 << 20,
            max_queued_bytes: 256 << 20,
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
    /// Flushes, then receives the next message: the whole of it must arrive within the
    /// timeout, and its length be at most the channel's limit.
    fn recv(&mut self) -> Result<Vec<u8>>;
    /// As [`Channel::recv`], with the length also bounded by `max`: a peer that announces
    /// more gets [`Error::MessageTooLarge`] before the body is read (on the stream
    /// channels of this crate; this default checks after receiving).
    fn recv_limited(&mut self, max: usize) -> Result<Vec<u8>> {
        let m = self.recv()?;
        if m.len() > max {
            return Err(Error::MessageTooLarge {
                len: m.len() as u64,
                max: max as u64,
            });
        }
        Ok(m)
    }
    /// As [`Channel::recv_limited`], with the whole message due by `deadline` (or by the
    /// timeout, whichever comes first). This default only refuses a deadline already
    /// past; the channels of this crate (and TLS) enforce it.
    fn recv_before(&mut self, max: usize, deadline: Instant) -> Result<Vec<u8>> {
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout {
                timeout: Duration::ZERO,
            });
        }
        self.recv_limited(max)
    }
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
    fn recv_limited(&mut self, max: usize) -> Result<Vec<u8>> {
        (**self).recv_limited(max)
    }
    fn recv_before(&mut self, max: usize, deadline: Instant) -> Result<Vec<u8>> {
        (**self).recv_before(max, deadline)
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
        self.recv_limited(usize::MAX)
    }

    fn recv_limited(&mut self, max: usize) -> Result<Vec<u8>> {
        self.recv_before(max, Instant::now() + self.config.timeout)
    }

    fn recv_before(&mut self, max: usize, deadline: Instant) -> Result<Vec<u8>> {
        self.flush()?;
        let start = Instant::now();
        let deadline = deadline.min(start + self.config.timeout);
        let wait = deadline.saturating_duration_since(start);
        let m = self.rx.recv_timeout(wait).map_err(|e| match e {
            RecvTimeoutError::Timeout => Error::Timeout { timeout: wait },
            RecvTimeoutError::Disconnected => Error::PeerClosed,
        })?;
        let max = max.min(self.config.max_message_len);
        if m.len() > max {
            return Err(Error::MessageTooLarge {
                len: m.len() as u64,
                max: max as u64,
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

/// The state shared by a [`StreamWriter`] and its thread.
#[derive(Debug, Default)]
struct WriterQueue {
    bufs: VecDeque<Vec<u8>>,
    /// Bytes queued, the buffer being written included.
    bytes: usize,
    /// The owner wants no more writes (write what is queued, then stop).
    closing: bool,
    /// The thread has stopped (queue written, or a write failed).
    done: bool,
    /// The write error that stopped the thread.
    error: Option<(std::io::ErrorKind, String)>,
    /// A send timed out on a full queue: the peer does not read.
    stuck: bool,
}

#[derive(Debug, Default)]
struct WriterShared {
    queue: Mutex<WriterQueue>,
    changed: Condvar,
}

impl WriterShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, WriterQueue> {
        // A poisoned lock only means a thread panicked while holding it; the queue's
        // fields are still consistent (every update is a single assignment).
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on `changed` with `q` (from [`Self::lock`]) for at most `left`; poisoning is
    /// ignored as in [`Self::lock`].
    fn wait_timeout<'a>(
        &self,
        q: std::sync::MutexGuard<'a, WriterQueue>,
        left: Duration,
    ) -> std::sync::MutexGuard<'a, WriterQueue> {
        self.changed
            .wait_timeout(q, left)
            .unwrap_or_else(|p| p.into_inner())
            .0
    }
}

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

/// Size of the slices a writer thread writes, each under the remaining deadline.
const WRITE_CHUNK: usize = 1 << 16;

/// A writer thread for a stream: buffers handed to [`StreamWriter::send`] are written in
/// order, so the owner never blocks on a full socket buffer (both ends of a channel may
/// send before receiving). The queue is bounded in bytes: past the bound, `send` waits for
/// the peer to read, at most the timeout, then fails with [`Error::SendQueueFull`]. Each
/// buffer must be written within the timeout (a peer that reads a byte at a time does not
/// hold the thread). A write error is kept and reported by the next `send`.
#[derive(Debug)]
pub struct StreamWriter {
    shared: Arc<WriterShared>,
    stream: TcpStream,
    handle: Option<JoinHandle<()>>,
    timeout: Duration,
    max_queued: usize,
}

impl StreamWriter {
    /// Starts the thread writing to `stream` (a clone of the channel's socket), with the
    /// timeout and queue bound of `config`.
    pub fn spawn(stream: TcpStream, name: &str, config: ChannelConfig) -> Result<Self> {
        let shared = Arc::new(WriterShared::default());
        let mut out = stream.try_clone()?;
        let thread_shared = shared.clone();
        let timeout = config.timeout;
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || writer_loop(&mut out, &thread_shared, timeout))?;
        Ok(Self {
            shared,
            stream,
            handle: Some(handle),
            timeout,
            max_queued: config.max_queued_bytes.max(1),
        })
    }

    fn stored_error(&self, q: &WriterQueue) -> Error {
        match &q.error {
            Some((kind, msg)) => {
                stream_error(std::io::Error::new(*kind, msg.clone()), self.timeout)
            }
            None => Error::PeerClosed,
        }
    }

    /// Queues `buf` for writing: waits (at most the timeout) while the queue holds more
    /// than the bound; fails with the writer's error if it has stopped.
    pub fn send(&self, buf: Vec<u8>) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let mut q = self.shared.lock();
        loop {
            if q.done || q.closing {
                return Err(self.stored_error(&q));
            }
            if q.bytes == 0 || q.bytes + buf.len() <= self.max_queued {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                q.stuck = true;
                return Err(Error::SendQueueFull {
                    queued: (q.bytes + buf.len()) as u64,
                    max: self.max_queued as u64,
                    timeout: self.timeout,
                });
            }
            q = self.shared.wait_timeout(q, left);
        }
        q.bytes += buf.len();
        q.bufs.push_back(buf);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().bytes
    }

    /// Writes what is queued (waiting at most `wait`, and not at all if a send already
    /// timed out on a full queue), then shuts the socket's sending side down if the peer
    /// did not take it, and stops the thread.
    pub fn close_within(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        {
            let mut q = self.shared.lock();
            q.closing = true;
            self.shared.changed.notify_all();
            while !q.done && !q.stuck {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                q = self.shared.wait_timeout(q, left);
            }
            if !q.done {
                // The peer does not read: make the blocked write fail.
                let _ = self.stream.shutdown(Shutdown::Both);
            }
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }

    /// Writes what is queued (at most the timeout) and stops the thread.
    pub fn close(&mut self) {
        self.close_within(self.timeout);
    }
}

fn writer_loop(out: &mut TcpStream, shared: &WriterShared, timeout: Duration) {
    loop {
        let buf = {
            let mut q = shared.lock();
            loop {
                if let Some(b) = q.bufs.pop_front() {
                    break b;
                }
                if q.closing {
                    q.done = true;
                    shared.changed.notify_all();
                    return;
                }
                q = shared.changed.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let r = write_by(out, &buf, Instant::now() + timeout);
        let mut q = shared.lock();
        q.bytes -= buf.len();
        if let Err(e) = r {
            q.error = Some((e.kind(), e.to_string()));
            q.done = true;
            q.bufs.clear();
            q.bytes = 0;
            shared.changed.notify_all();
            return;
        }
        shared.changed.notify_all();
    }
}

/// Writes all of `buf` by `deadline` (the socket's write timeout set to what remains
/// before each chunk).
fn write_by(out: &mut TcpStream, buf: &[u8], deadline: Instant) -> std::io::Result<()> {
    for chunk in buf.chunks(WRITE_CHUNK) {
        let mut chunk = chunk;
        while !chunk.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            out.set_write_timeout(Some(left))?;
            match out.write(chunk) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => chunk = &chunk[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    out.flush()
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
        self.announced_within(prefix, usize::MAX)
    }

    /// As [`Framing::announced`], with the limit lowered to `max` for this message.
    pub fn announced_within(&self, prefix: [u8; 4], max: usize) -> Result<usize> {
        let len = u32::from_le_bytes(prefix) as usize;
        let max = max.min(self.config.max_message_len);
        if len > max {
            return Err(Error::MessageTooLarge {
                len: len as u64,
                max: max as u64,
            });
        }
        Ok(len)
    }

    /// Whether a receive has failed (the stream is then out of step).
    pub fn is_broken(&self) -> bool {
        self.broken
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

/// Resolves `addr` (at least one address), naming it in the error.
fn resolve<A: ToSocketAddrs + std::fmt::Display>(addr: &A) -> Result<Vec<std::net::SocketAddr>> {
    let name = addr.to_string();
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|source| Error::Resolve {
            addr: name.clone(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(Error::Resolve {
            addr: name,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
        });
    }
    Ok(addrs)
}

/// One connection attempt to each address of `addrs` in turn (each bounded by `timeout`).
pub fn connect_any(
    name: &str,
    addrs: &[std::net::SocketAddr],
    timeout: Duration,
) -> Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for a in addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(Error::Connect {
        addr: name.to_string(),
        source: last,
    })
}

impl TcpChannel {
    /// Connects to `addr` once: a refused connection, an unreachable address or a name
    /// that does not resolve is reported at once ([`Error::Connect`], [`Error::Resolve`],
    /// naming the address); a connection attempt waits at most the timeout.
    pub fn connect<A: ToSocketAddrs + std::fmt::Display>(
        addr: A,
        config: ChannelConfig,
    ) -> Result<Self> {
        let addrs = resolve(&addr)?;
        let s = connect_any(&addr.to_string(), &addrs, config.timeout)?;
        Self::from_stream(s, config)
    }

    /// Connects to `addr`, retrying for up to the timeout while the connection is refused
    /// (for two-party programs that start both sides at once, where the peer may not
    /// listen yet); the last error if no connection was made by then.
    pub fn connect_retry<A: ToSocketAddrs + std::fmt::Display>(
        addr: A,
        config: ChannelConfig,
    ) -> Result<Self> {
        let deadline = Instant::now() + config.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = resolve(&addr).and_then(|addrs| {
                connect_any(
                    &addr.to_string(),
                    &addrs,
                    left.max(Duration::from_millis(1)),
                )
            });
            match attempt {
                Ok(s) => return Self::from_stream(s, config),
                Err(_) if Instant::now() + Duration::from_millis(20) < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
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
        let writer = StreamWriter::spawn(stream.try_clone()?, "cipherml-mpc-tcp-writer", config)?;
        let reader = BufReader::with_capacity(1 << 16, stream.try_clone()?);
        Ok(Self {
            reader,
            stream,
            writer,
            framing: Framing::new(config),
        })
    }

    /// Bytes sent but not yet taken by the socket (the writer thread's queue).
    pub fn queued_bytes(&self) -> usize {
        self.writer.queued_bytes()
    }

    /// Fills `buf` from the socket by `deadline` (the socket's read timeout set to what
    /// remains before every read that has to wait).
    fn read_by(&mut self, buf: &mut [u8], deadline: Instant, budget: Duration) -> Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            if self.reader.buffer().is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::Timeout { timeout: budget });
                }
                self.stream.set_read_timeout(Some(left))?;
            }
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => return Err(Error::PeerClosed),
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(stream_error(e, budget)),
            }
        }
        Ok(())
    }

    fn read_message(&mut self, max: usize, deadline: Instant, budget: Duration) -> Result<Vec<u8>> {
        let mut prefix = [0u8; 4];
        self.read_by(&mut prefix, deadline, budget)?;
        let len = self.framing.announced_within(prefix, max)?;
        // Grow with the data actually received, not with the announced length.
        let mut buf = Vec::with_capacity(len.min(1 << 20));
        while buf.len() < len {
            let old = buf.len();
            buf.resize(old + (len - old).min(1 << 20), 0);
            self.read_by(&mut buf[old..], deadline, budget)?;
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
        self.recv_limited(usize::MAX)
    }

    fn recv_limited(&mut self, max: usize) -> Result<Vec<u8>> {
        self.recv_before(max, Instant::now() + self.framing.config().timeout)
    }

    fn recv_before(&mut self, max: usize, deadline: Instant) -> Result<Vec<u8>> {
        self.framing.check_receivable()?;
        self.flush()?;
        let start = Instant::now();
        let deadline = deadline.min(start + self.framing.config().timeout);
        let budget = deadline.saturating_duration_since(start);
        let r = self.read_message(max, deadline, budget);
        self.framing.received(r)
    }

    fn stats(&self) -> Stats {
        self.framing.stats()
    }

    fn config(&self) -> ChannelConfig {
        self.framing.config()
    }
}

/// How long closing a channel waits for its last bytes to be taken when a receive has
/// failed (a refusal is still delivered to a peer that reads; one that does not is cut),
/// and at most how long it reads and drops input that the peer sent and nobody read.
pub const BROKEN_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Input read and dropped at most when closing ([`drain_before_close`]).
const MAX_DRAIN: usize = 64 << 20;

/// Before closing a stream: if the peer sent input that was not read (`buffered`, or bytes
/// waiting in the socket), sends FIN and reads and drops input until the peer closes, for at
/// most [`BROKEN_CLOSE_WAIT`] and 64 MiB. Closing with unread input makes the kernel reset
/// the connection, which can destroy the last message sent (a refusal) before the peer
/// reads it.
pub fn drain_before_close(stream: &TcpStream, buffered: bool) {
    let waiting = buffered || {
        let mut b = [0u8; 1];
        let peeked = stream
            .set_nonblocking(true)
            .and_then(|_| stream.peek(&mut b));
        let _ = stream.set_nonblocking(false);
        matches!(peeked, Ok(n) if n > 0)
    };
    if !waiting {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + BROKEN_CLOSE_WAIT;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    let mut s = stream;
    while total < MAX_DRAIN {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

impl Drop for TcpChannel {
    fn drop(&mut self) {
        let _ = self.flush();
        let wait = if self.framing.is_broken() {
            BROKEN_CLOSE_WAIT.min(self.framing.config().timeout)
        } else {
            self.framing.config().timeout
        };
        self.writer.close_within(wait);
        drain_before_close(&self.stream, !self.reader.buffer().is_empty());
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

/// A message announced longer than the `len` bytes expected is malformed (refused before
/// its body is read).
fn too_long(e: Error, what: &'static str, len: usize) -> Error {
    match e {
        Error::MessageTooLarge { len: found, .. } => Error::Malformed {
            what,
            expected: len as u64,
            found,
        },
        e => e,
    }
}

/// Receives a message of exactly `len` bytes (a longer one is refused before its body is
/// read).
pub fn recv_exact<C: Channel + ?Sized>(
    ch: &mut C,
    what: &'static str,
    len: usize,
) -> Result<Vec<u8>> {
    let m = ch.recv_limited(len).map_err(|e| too_long(e, what, len))?;
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
    let len = n.saturating_mul(ring.byte_len());
    let m = ch.recv_limited(len).map_err(|e| too_long(e, what, len))?;
    decode_ring(ring, &m, n, what)
}

/// Packs bits (one per byte, `0` or `1`) eight to a byte.
pub fn pack_bits(bits: &[u8]) -> Vec<u8> {
    let pack = |c: &[u8]| {
        c.iter()
            .enumerate()
            .fold(0u8, |a, (k, &b)| a | ((b & 1) << k))
    };
    let chunks = bits.chunks_exact(8);
    let tail = chunks.remainder();
    let mut out: Vec<u8> = chunks.map(pack).collect();
    if !tail.is_empty() {
        out.push(pack(tail));
    }
    out
}

/// Packs values of a fixed or varying width (up to 64 bits each) into bytes, least
/// significant bit first: the same stream as [`pack_bits`] on their bits in order.
pub(crate) struct BitWriter {
    out: Vec<u8>,
    acc: u128,
    nacc: u32,
}

impl BitWriter {
    /// A writer with room for `bits` bits.
    pub(crate) fn with_capacity(bits: usize) -> Self {
        Self {
            out: Vec::with_capacity(bits.div_ceil(8)),
            acc: 0,
            nacc: 0,
        }
    }

    /// Appends the low `bits` bits of `v` (`bits <= 64`; the bits above must be zero).
    pub(crate) fn push(&mut self, v: u64, bits: u32) {
        self.acc |= (v as u128) << self.nacc;
        self.nacc += bits;
        while self.nacc >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.nacc -= 8;
        }
    }

    /// The bytes, the last one padded with zeros.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        if self.nacc > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// The `bits` bits (`<= 64`) of a [`BitWriter`] stream from bit `start` on (within
/// `buf`, which the caller has checked).
pub(crate) fn read_bits(buf: &[u8], start: usize, bits: u32) -> u64 {
    let mut v: u128 = 0;
    let first = start / 8;
    let last = (start + bits as usize).div_ceil(8);
    for (k, &b) in buf[first..last].iter().enumerate() {
        v |= (b as u128) << (8 * k);
    }
    ((v >> (start % 8)) as u64) & crate::ring::mask(bits)
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
    let mut out = Vec::with_capacity(len * 8);
    for &b in bytes {
        out.extend((0..8).map(|k| (b >> k) & 1));
    }
    out.truncate(n);
    Ok(out)
}

/// Sends bits (one per byte) packed.
pub fn send_bits<C: Channel + ?Sized>(ch: &mut C, bits: &[u8]) -> Result<()> {
    ch.send(&pack_bits(bits))
}

/// Receives exactly `n` packed bits.
pub fn recv_bits<C: Channel + ?Sized>(ch: &mut C, n: usize, what: &'static str) -> Result<Vec<u8>> {
    let len = n.div_ceil(8);
    let m = ch.recv_limited(len).map_err(|e| too_long(e, what, len))?;
    unpack_bits(&m, n, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packing against its definition (bit `i` at bit `i mod 8` of byte `i / 8`), the round
    /// trip for every length up to 40, and the refusals of a wrong length or a set padding
    /// bit.
    #[test]
    fn bits_pack_lowest_first_and_round_trip() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for n in 0..=40usize {
            let bits: Vec<u8> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x & 1) as u8
                })
                .collect();
            let packed = pack_bits(&bits);
            assert_eq!(packed.len(), n.div_ceil(8));
            for (i, &b) in bits.iter().enumerate() {
                assert_eq!((packed[i / 8] >> (i % 8)) & 1, b, "n {n} bit {i}");
            }
            assert_eq!(unpack_bits(&packed, n, "t").unwrap(), bits);
            let mut longer = packed.clone();
            longer.push(0);
            assert!(unpack_bits(&longer, n, "t").is_err());
            if n % 8 != 0 {
                let mut padded = packed.clone();
                *padded.last_mut().unwrap() |= 1 << 7;
                assert!(unpack_bits(&padded, n, "t").is_err());
            }
        }
        // Only the lowest bit of each input byte counts.
        assert_eq!(pack_bits(&[3, 2, 1]), vec![0b101]);
    }
}
