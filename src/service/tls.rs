//! Optional TLS (rustls, TLS 1.3, the `ring` provider) for the client/server session.
//!
//! [`TlsChannel`] is a [`Channel`] over a TLS connection with the same framing, limits,
//! timeouts and counters as [`cipherml_mpc::net::TcpChannel`]. As there, writes go
//! through a writer thread, so both ends may send before receiving without deadlocking on
//! full socket buffers: the application thread alone owns the TLS state (it encrypts into
//! a buffer that the writer thread sends, and decrypts what it reads), and the writer thread
//! only ever sees ciphertext.
//!
//! Certificates are PEM files: the server's chain and PKCS#8/PKCS#1/SEC1 key
//! ([`ServerTls::from_pem_files`]), and the client's trusted CA ([`ClientTls::from_ca_file`]).
//! SECURITY.md shows how to make them with `openssl`.
//!
//! ```no_run
//! use std::path::Path;
//! use cipherml::client::{Client, ClientOptions, ClientTls};
//! use cipherml::server::{Server, ServerConfig, ServerTls};
//!
//! let model = cipherml::nn::load_onnx("models/digits_mlp.onnx").unwrap();
//! let tls = ServerTls::from_pem_files(Path::new("server.pem"), Path::new("server.key")).unwrap();
//! let server = Server::bind("0.0.0.0:7878", vec![("mlp".into(), model)], ServerConfig::default())
//!     .unwrap()
//!     .with_tls(tls);
//! std::thread::spawn(move || server.run());
//!
//! let options = ClientOptions {
//!     tls: Some(ClientTls::from_ca_file(Path::new("ca.pem")).unwrap()),
//!     token: None,
//!     ..Default::default()
//! };
//! let mut client = Client::connect_with("myhost:7878", &options).unwrap();
//! let x = ndarray::ArrayD::<f64>::zeros(ndarray::IxDyn(&[1, 8, 8]));
//! let logits = client.infer("mlp", &x).unwrap();
//! client.close().unwrap();
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cipherml_mpc::net::{
    connect_any, drain_before_close, stream_error, Channel, ChannelConfig, Framing, Stats,
    StreamWriter, BROKEN_CLOSE_WAIT,
};
use cipherml_mpc::Error as NetError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Largest PEM file read (certificates and keys are a few KB).
const MAX_PEM_FILE: u64 = 1 << 20;

/// Errors of the TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file that cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file without the expected item, or malformed.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A server name that is not a valid DNS name or IP address.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let err = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    Ok(bytes)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no CERTIFICATE in the file".into(),
        });
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's TLS identity (certificate chain and key), shared by all sessions.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads a PEM certificate chain (leaf first) and its private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = certificates(cert)?;
        let key_bytes = zeroize::Zeroizing::new(read_pem(key)?);
        let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::Pem {
            path: key.to_path_buf(),
            what: format!("no usable private key ({e})"),
        })?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)?;
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// Runs the server side of the handshake on an accepted connection; the whole
    /// handshake must finish within the channel's timeout.
    pub fn accept(&self, stream: TcpStream, config: ChannelConfig) -> Result<TlsChannel, NetError> {
        self.accept_within(stream, config, config.timeout)
    }

    /// As [`ServerTls::accept`], with the whole handshake due within `handshake` (a
    /// client that trickles handshake bytes is cut at that deadline).
    pub fn accept_within(
        &self,
        stream: TcpStream,
        config: ChannelConfig,
        handshake: Duration,
    ) -> Result<TlsChannel, NetError> {
        let conn = rustls::ServerConnection::new(self.config.clone())
            .map_err(|e| NetError::aborted(format!("TLS: {e}")))?;
        TlsChannel::handshake(stream, rustls::Connection::Server(conn), config, handshake)
    }
}

/// The client's TLS trust: the CA that signed the server's certificate.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA certificates in a PEM file (and nothing else).
    pub fn from_ca_file(ca: &Path) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(ca)? {
            roots.add(cert).map_err(|e| TlsError::Pem {
                path: ca.to_path_buf(),
                what: format!("not a usable CA certificate ({e})"),
            })?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            server_name: None,
        })
    }

    /// The name the server's certificate must carry (default: the host part of the
    /// address passed to connect).
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Connects to `addr` and runs the client side of the handshake (within the timeout).
    /// A refused connection or a name that does not resolve is reported at once, naming
    /// the address ([`NetError::Connect`], [`NetError::Resolve`]).
    pub fn connect(&self, addr: &str, config: ChannelConfig) -> Result<TlsChannel, NetError> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => host_of(addr).to_string(),
        };
        let name = ServerName::try_from(name.clone())
            .map_err(|_| NetError::aborted(format!("invalid TLS server name {name:?}")))?;
        let conn = rustls::ClientConnection::new(self.config.clone(), name)
            .map_err(|e| NetError::aborted(format!("TLS: {e}")))?;
        let addrs: Vec<_> = addr
            .to_socket_addrs()
            .map_err(|source| NetError::Resolve {
                addr: addr.to_string(),
                source,
            })?
            .collect();
        let stream = connect_any(addr, &addrs, config.timeout)?;
        TlsChannel::handshake(
            stream,
            rustls::Connection::Client(conn),
            config,
            config.timeout,
        )
    }
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// One end of a TLS connection, with the framing and limits of the TCP channel.
pub struct TlsChannel {
    conn: rustls::Connection,
    stream: TcpStream,
    writer: StreamWriter,
    /// Decrypted bytes not yet consumed (from `start`).
    plain: Vec<u8>,
    start: usize,
    framing: Framing,
}

impl std::fmt::Debug for TlsChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsChannel")
            .field("stats", &self.framing.stats())
            .finish_non_exhaustive()
    }
}

impl TlsChannel {
    /// Runs the handshake with an absolute deadline (`handshake` from now): the socket's
    /// timeouts are set to what remains before every read and write, so a peer that
    /// trickles bytes cannot stretch it (rustls' `complete_io` would loop while bytes
    /// arrive).
    fn handshake(
        mut stream: TcpStream,
        mut conn: rustls::Connection,
        config: ChannelConfig,
        handshake: Duration,
    ) -> Result<Self, NetError> {
        stream.set_nodelay(true)?;
        let deadline = Instant::now() + handshake;
        let left = || {
            let d = deadline.saturating_duration_since(Instant::now());
            if d.is_zero() {
                Err(NetError::Timeout { timeout: handshake })
            } else {
                Ok(d)
            }
        };
        let io = |e| stream_error(e, handshake);
        loop {
            while conn.wants_write() {
                stream.set_write_timeout(Some(left()?))?;
                conn.write_tls(&mut stream).map_err(io)?;
            }
            if !conn.is_handshaking() {
                break;
            }
            stream.set_read_timeout(Some(left()?))?;
            if conn.read_tls(&mut stream).map_err(io)? == 0 {
                return Err(NetError::PeerClosed);
            }
            if let Err(e) = conn.process_new_packets() {
                // Tell the peer why (the alert rustls queued), then give up.
                let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
                let _ = conn.write_tls(&mut stream);
                return Err(NetError::aborted(format!("TLS: {e}")));
            }
        }
        stream.set_read_timeout(Some(config.timeout))?;
        stream.set_write_timeout(Some(config.timeout))?;
        conn.set_buffer_limit(None);
        let writer = StreamWriter::spawn(stream.try_clone()?, "cipherml-tls-writer", config)?;
        Ok(Self {
            conn,
            stream,
            writer,
            plain: Vec::new(),
            start: 0,
            framing: Framing::new(config),
        })
    }

    /// Hands the TLS records the connection wants to send to the writer thread.
    fn send_records(&mut self) -> Result<(), NetError> {
        let mut out = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out)?;
        }
        if out.is_empty() {
            return Ok(());
        }
        self.writer.send(out)
    }

    /// Encrypts framed bytes and hands the records to the writer thread.
    fn deliver(&mut self, bytes: Option<Vec<u8>>) -> Result<(), NetError> {
        match bytes {
            Some(b) => {
                self.conn.writer().write_all(&b)?;
                self.send_records()
            }
            None => Ok(()),
        }
    }

    /// Processes the records rustls holds and moves their plaintext into `plain`;
    /// returns whether the peer has closed.
    fn drain(&mut self) -> Result<bool, NetError> {
        let state = self
            .conn
            .process_new_packets()
            .map_err(|e| NetError::aborted(format!("TLS: {e}")))?;
        let fresh = state.plaintext_bytes_to_read();
        if fresh > 0 {
            if self.start > 0 && self.start == self.plain.len() {
                self.plain.clear();
                self.start = 0;
            }
            let old = self.plain.len();
            self.plain.resize(old + fresh, 0);
            self.conn.reader().read_exact(&mut self.plain[old..])?;
        }
        // Alerts, key updates and tickets produced while reading.
        self.send_records()?;
        Ok(state.peer_has_closed())
    }

    /// Reads and decrypts until at least `n` plaintext bytes are buffered, by `deadline`
    /// (`budget` is reported in the timeout error). Records that arrived with the handshake
    /// (or with an earlier read) are decrypted before the socket is read again.
    fn fill(&mut self, n: usize, deadline: Instant, budget: Duration) -> Result<(), NetError> {
        let mut raw = Vec::new();
        loop {
            let closed = self.drain()?;
            if self.plain.len() - self.start >= n {
                return Ok(());
            }
            if closed {
                return Err(NetError::PeerClosed);
            }
            raw.resize(1 << 16, 0);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NetError::Timeout { timeout: budget });
            }
            self.stream.set_read_timeout(Some(left))?;
            let got = match self.stream.read(&mut raw) {
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(stream_error(e, budget)),
            };
            if got == 0 {
                return Err(NetError::PeerClosed);
            }
            let mut cursor = &raw[..got];
            while !cursor.is_empty() {
                self.conn.read_tls(&mut cursor)?;
                if !cursor.is_empty() {
                    // rustls' buffer is full: decrypt what it holds first.
                    self.drain()?;
                }
            }
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let out = self.plain[self.start..self.start + n].to_vec();
        self.start += n;
        if self.start == self.plain.len() {
            self.plain.clear();
            self.start = 0;
        }
        out
    }

    fn read_message(
        &mut self,
        max: usize,
        deadline: Instant,
        budget: Duration,
    ) -> Result<Vec<u8>, NetError> {
        self.fill(4, deadline, budget)?;
        let prefix: [u8; 4] = self.take(4).try_into().expect("4 bytes");
        let len = self.framing.announced_within(prefix, max)?;
        // The buffer grows with the data actually received, not with the announced length.
        self.fill(len, deadline, budget)?;
        Ok(self.take(len))
    }

    /// Bytes sent but not yet taken by the socket (the writer thread's queue).
    pub fn queued_bytes(&self) -> usize {
        self.writer.queued_bytes()
    }
}

impl Channel for TlsChannel {
    fn send(&mut self, msg: &[u8]) -> Result<(), NetError> {
        let bytes = self.framing.queue(msg)?;
        self.deliver(bytes)
    }

    fn flush(&mut self) -> Result<(), NetError> {
        let bytes = self.framing.flush();
        self.deliver(bytes)
    }

    fn recv(&mut self) -> Result<Vec<u8>, NetError> {
        self.recv_limited(usize::MAX)
    }

    fn recv_limited(&mut self, max: usize) -> Result<Vec<u8>, NetError> {
        self.recv_before(max, Instant::now() + self.framing.config().timeout)
    }

    fn recv_before(&mut self, max: usize, deadline: Instant) -> Result<Vec<u8>, NetError> {
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

impl Drop for TlsChannel {
    fn drop(&mut self) {
        let _ = self.flush();
        self.conn.send_close_notify();
        let _ = self.send_records();
        let wait = if self.framing.is_broken() {
            BROKEN_CLOSE_WAIT.min(self.framing.config().timeout)
        } else {
            self.framing.config().timeout
        };
        self.writer.close_within(wait);
        drain_before_close(&self.stream, self.start < self.plain.len());
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    fn pair(server_cfg: ChannelConfig) -> (TlsChannel, TlsChannel) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
        let server =
            ServerTls::from_pem_files(&dir.join("server.pem"), &dir.join("server.key")).unwrap();
        let client = ClientTls::from_ca_file(&dir.join("ca.pem")).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let h = std::thread::spawn(move || {
            client.connect(
                &addr,
                ChannelConfig {
                    timeout: Duration::from_secs(10),
                    ..Default::default()
                },
            )
        });
        let (stream, _) = listener.accept().unwrap();
        let s = server.accept(stream, server_cfg).unwrap();
        (s, h.join().unwrap().unwrap())
    }

    #[test]
    fn simultaneous_large_messages_ping_pong_limits_and_hang_up() {
        let (mut a, mut b) = pair(ChannelConfig {
            max_message_len: 16 << 20,
            timeout: Duration::from_secs(10),
            ..Default::default()
        });
        // Both ends send 8 MB before receiving: no deadlock on full socket buffers.
        let big: Vec<u8> = (0..8 << 20).map(|i| (i * 7 + 3) as u8).collect();
        let big2 = big.clone();
        let h = std::thread::spawn(move || {
            b.send(&big2).unwrap();
            let got = b.recv().unwrap();
            assert_eq!(got, big2);
            // Many small messages, each answered.
            for i in 0..300u32 {
                let m = b.recv().unwrap();
                assert_eq!(m, i.to_le_bytes());
                b.send(&(i + 1).to_le_bytes()).unwrap();
            }
            b.flush().unwrap();
            b
        });
        a.send(&big).unwrap();
        assert_eq!(a.recv().unwrap(), big);
        for i in 0..300u32 {
            a.send(&i.to_le_bytes()).unwrap();
            assert_eq!(a.recv().unwrap(), (i + 1).to_le_bytes());
        }
        let b = h.join().unwrap();
        assert_eq!(a.stats().bytes_sent, b.stats().bytes_received);
        assert_eq!(a.stats().messages_sent, 301);
        // A message over the receiver's limit is refused before it is read in.
        a.send(&vec![0u8; (16 << 20) + 1]).unwrap_err();
        let (mut s, mut c) = pair(ChannelConfig {
            max_message_len: 1 << 10,
            ..Default::default()
        });
        c.send(&[1u8; 2048]).unwrap();
        c.flush().unwrap();
        assert!(matches!(
            s.recv(),
            Err(NetError::MessageTooLarge { len: 2048, .. })
        ));
        // A peer that hangs up: an error, not a hang.
        drop(b);
        assert!(matches!(a.recv(), Err(NetError::PeerClosed)));
    }

    #[test]
    fn pem_errors_name_the_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
        let e = ClientTls::from_ca_file(&dir.join("server.key")).unwrap_err();
        assert!(e.to_string().contains("server.key"), "{e}");
        let e = ClientTls::from_ca_file(&dir.join("missing.pem")).unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
        assert_eq!(host_of("[::1]:7878"), "::1");
        assert_eq!(host_of("localhost:7878"), "localhost");
    }
}
