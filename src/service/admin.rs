//! The operator's HTTP endpoints, on a listener of their own (plain HTTP/1.1, one short-lived
//! thread per connection, no async runtime):
//!
//! | request | answer |
//! |---|---|
//! | `GET /health/live` | `200 live` while the process answers |
//! | `GET /health/ready` | `200 ready` once the models are loaded and prepared and the server accepts sessions, else `503 not ready` (also while shutting down) |
//! | `GET /v1/models` | JSON: each hosted model's name, input and output shapes, mode and HE parameters (what the session hello announces) |
//! | `GET /metrics` | the [`Metrics`] in the OpenMetrics text format (Prometheus reads it) |
//!
//! Everything it receives is treated as hostile: the request head must arrive whole within
//! a deadline (a slow drip is answered `408` and closed), the request line and the head are
//! bounded (`414`, `431`), anything that is not a well-formed `GET`/`HEAD` request line gets
//! `400` (or `405` on a known path, `404` elsewhere), headers are skipped, bodies are never
//! read, and every answer closes the connection. At most a fixed number of connections are
//! served at once; more are closed at once. None of this touches the inference server: it
//! shares only the [`Metrics`] value. Bind it to a loopback or internal address: it has no
//! authentication (it tells nothing secret, but it is not meant for the public).
//!
//! ```no_run
//! use std::sync::Arc;
//! use cipherml::admin::AdminServer;
//! use cipherml::metrics::Metrics;
//!
//! let metrics = Arc::new(Metrics::new());
//! let admin = AdminServer::bind("127.0.0.1:9090", metrics.clone()).unwrap();
//! std::thread::spawn(move || admin.run());
//! // ... Server::bind(...)?.with_metrics(metrics).run();
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::metrics::Metrics;

/// Limits of the admin listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminConfig {
    /// Connections served at once; more are closed without an answer.
    pub max_connections: usize,
    /// The whole request head must arrive within this time after the connection is
    /// accepted (and the answer be written within it again).
    pub deadline: Duration,
    /// Longest request line (method, target, version), in bytes.
    pub max_request_line: usize,
    /// Longest request head (request line and headers), in bytes.
    pub max_head: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            deadline: Duration::from_secs(5),
            max_request_line: 1024,
            max_head: 8 << 10,
        }
    }
}

/// An error of the admin listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The address could not be bound.
    #[error("admin endpoint: cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The admin HTTP server (see the module documentation). `Send + Sync`: run it on a
/// thread of its own.
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    metrics: Arc<Metrics>,
    config: AdminConfig,
    active: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

/// Stops a running [`AdminServer`] from another thread.
#[derive(Debug, Clone)]
pub struct AdminShutdown {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl AdminShutdown {
    /// Makes [`AdminServer::run`] return (connections in flight finish on their own, each
    /// within the deadline).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        crate::server::wake_accept_loop(self.addr);
    }
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port) with the default [`AdminConfig`]; it answers
    /// from `metrics`, which the inference server counts into
    /// ([`crate::server::Server::with_metrics`]).
    pub fn bind(addr: &str, metrics: Arc<Metrics>) -> Result<Self, AdminError> {
        let listener = TcpListener::bind(addr).map_err(|source| AdminError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        Ok(Self {
            listener,
            metrics,
            config: AdminConfig::default(),
            active: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Replaces the limits.
    pub fn with_config(mut self, config: AdminConfig) -> Self {
        self.config = config;
        self
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound")
    }

    /// A handle that stops [`AdminServer::run`].
    pub fn shutdown_handle(&self) -> AdminShutdown {
        AdminShutdown {
            stop: self.stop.clone(),
            addr: self.local_addr(),
        }
    }

    /// Serves until stopped, each connection on a short-lived thread of its own.
    pub fn run(&self) {
        for stream in self.listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else {
                // (E.g. out of file descriptors: do not spin.)
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            if self.active.fetch_add(1, Ordering::SeqCst) >= self.config.max_connections {
                self.active.fetch_sub(1, Ordering::SeqCst);
                tracing::debug!("admin endpoint: too many connections, one closed");
                continue;
            }
            let slot = Slot(self.active.clone());
            let metrics = self.metrics.clone();
            let config = self.config;
            std::thread::spawn(move || {
                let _slot = slot;
                handle(stream, &metrics, &config);
            });
        }
    }
}

/// Releases a connection slot when dropped (even if the handler panics).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a request head could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadError {
    /// The peer closed (or the connection failed) before a whole head: no answer.
    Closed,
    /// The deadline passed first.
    Timeout,
    /// The request line is longer than allowed.
    LineTooLong,
    /// The head is longer than allowed.
    HeadTooLarge,
}

/// Reads the request head (up to the empty line), within the deadline and the size limits.
/// Returns the request line.
fn read_request_line<S: Read>(
    stream: &mut S,
    set_timeout: &mut dyn FnMut(&mut S, Duration) -> std::io::Result<()>,
    deadline: Instant,
    config: &AdminConfig,
) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) {
            return Err(HeadError::Timeout);
        }
        set_timeout(stream, left).map_err(|_| HeadError::Closed)?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::Timeout)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(HeadError::Closed),
        };
        head.extend_from_slice(&chunk[..n]);
        let line_end = head.iter().position(|&b| b == b'\n');
        if line_end.unwrap_or(head.len()) > config.max_request_line {
            return Err(HeadError::LineTooLong);
        }
        if let Some(end) = find_head_end(&head) {
            if end > config.max_head {
                return Err(HeadError::HeadTooLarge);
            }
            let line_end = line_end.expect("a head end implies a line end");
            let mut line = head;
            line.truncate(line_end);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(line);
        }
        if head.len() > config.max_head {
            return Err(HeadError::HeadTooLarge);
        }
    }
}

/// The end of the head (the empty line, CRLF or bare LF), if it has arrived.
fn find_head_end(head: &[u8]) -> Option<usize> {
    let crlf = head.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = head.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// An answer: status, content type, body, extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            allow: false,
        }
    }

    fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            414 => "URI Too Long",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        if !head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

/// A parsed request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RequestLine<'a> {
    method: &'a str,
    path: &'a str,
}

/// `METHOD SP TARGET SP HTTP/1.x`, strictly: `None` for anything else.
fn parse_request_line(line: &[u8]) -> Option<RequestLine<'_>> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
        || !target.bytes().all(|b| b.is_ascii_graphic())
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
    {
        return None;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Some(RequestLine { method, path })
}

/// The answer to a well-formed request line.
fn route(req: RequestLine<'_>, metrics: &Metrics) -> Response {
    const PATHS: [&str; 4] = ["/health/live", "/health/ready", "/v1/models", "/metrics"];
    if !PATHS.contains(&req.path) {
        return Response::text(404, "not found");
    }
    if !matches!(req.method, "GET" | "HEAD") {
        return Response {
            allow: true,
            ..Response::text(405, "method not allowed: GET or HEAD")
        };
    }
    match req.path {
        "/health/live" => Response::text(200, "live"),
        "/health/ready" if metrics.is_ready() => Response::text(200, "ready"),
        "/health/ready" => Response::text(503, "not ready"),
        "/v1/models" => Response {
            status: 200,
            content_type: "application/json",
            body: models_json(metrics),
            allow: false,
        },
        _ => Response {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: metrics.encode(),
            allow: false,
        },
    }
}

/// `{"ready": bool, "models": [{name, input_shape, output_shape, mode, params, layers}]}`.
fn models_json(metrics: &Metrics) -> String {
    #[derive(Serialize)]
    struct View<'a> {
        name: &'a str,
        input_shape: &'a [usize],
        output_shape: &'a [usize],
        mode: &'static str,
        params: String,
        layers: usize,
    }
    #[derive(Serialize)]
    struct Catalog<'a> {
        ready: bool,
        models: Vec<View<'a>>,
    }
    let models = metrics.models();
    let catalog = Catalog {
        ready: metrics.is_ready(),
        models: models
            .iter()
            .map(|m| View {
                name: &m.name,
                input_shape: &m.input_shape,
                output_shape: &m.output_shape,
                mode: m.mode.as_str(),
                params: m.params.to_string(),
                layers: m.architecture.layers.len(),
            })
            .collect(),
    };
    // Serializing plain strings and numbers cannot fail.
    serde_json::to_string(&catalog).unwrap_or_else(|_| "{}".into())
}

/// Serves one connection: one request, one answer, close.
fn handle(mut stream: TcpStream, metrics: &Metrics, config: &AdminConfig) {
    let deadline = Instant::now() + config.deadline;
    let mut set_timeout =
        |s: &mut TcpStream, d: Duration| -> std::io::Result<()> { s.set_read_timeout(Some(d)) };
    let (response, head_only) =
        match read_request_line(&mut stream, &mut set_timeout, deadline, config) {
            Err(HeadError::Closed) => return,
            Err(HeadError::Timeout) => (Response::text(408, "request timeout"), false),
            Err(HeadError::LineTooLong) => (Response::text(414, "request line too long"), false),
            Err(HeadError::HeadTooLarge) => (Response::text(431, "request head too large"), false),
            Ok(line) => match parse_request_line(&line) {
                None => (Response::text(400, "bad request"), false),
                Some(req) => (route(req, metrics), req.method == "HEAD"),
            },
        };
    if response.status >= 400 {
        tracing::debug!(status = response.status, "admin endpoint: request refused");
    }
    let _ = stream.set_write_timeout(Some(config.deadline));
    if stream.write_all(&response.to_bytes(head_only)).is_err() {
        return;
    }
    // A lingering close: end our side, then drain (bounded) what the peer still sends, so
    // that unread bytes do not turn the close into a reset that could destroy the answer.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        let left = until.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// How long, and how many bytes at most, a closing connection is drained.
const LINGER: Duration = Duration::from_millis(200);
const LINGER_BYTES: usize = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_parsed_strictly() {
        let ok = parse_request_line(b"GET /metrics?x=1 HTTP/1.1").unwrap();
        assert_eq!(ok.method, "GET");
        assert_eq!(ok.path, "/metrics");
        for bad in [
            &b""[..],
            b"GET",
            b"GET /metrics",
            b"GET /metrics HTTP/2.0",
            b"GET  /metrics HTTP/1.1",
            b"get /metrics HTTP/1.1",
            b"GET metrics HTTP/1.1",
            b"GET /metrics HTTP/1.1 extra",
            b"GET /me\x00trics HTTP/1.1",
            b"\xff\xfe /metrics HTTP/1.1",
        ] {
            assert_eq!(parse_request_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn routes_answer_with_the_right_status() {
        let m = Metrics::new();
        let get = |method: &'static str, path: &'static str| {
            route(RequestLine { method, path }, &m).status
        };
        assert_eq!(get("GET", "/health/live"), 200);
        assert_eq!(get("GET", "/health/ready"), 503);
        assert_eq!(get("GET", "/nope"), 404);
        assert_eq!(get("POST", "/metrics"), 405);
        assert_eq!(get("HEAD", "/metrics"), 200);
        m.set_serving(Vec::new());
        assert_eq!(get("GET", "/health/ready"), 200);
        let models = route(
            RequestLine {
                method: "GET",
                path: "/v1/models",
            },
            &m,
        );
        let v: serde_json::Value = serde_json::from_str(&models.body).unwrap();
        assert_eq!(v["ready"], true);
        assert_eq!(v["models"].as_array().map(Vec::len), Some(0));
    }

    #[test]
    fn heads_are_bounded() {
        let config = AdminConfig::default();
        let far = Instant::now() + Duration::from_secs(5);
        let mut no_timeout = |_: &mut &[u8], _: Duration| Ok(());
        let read =
            |bytes: &[u8], f: &mut dyn FnMut(&mut &[u8], Duration) -> std::io::Result<()>| {
                let mut s = bytes;
                read_request_line(&mut s, f, far, &config)
            };
        assert_eq!(
            read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut no_timeout),
            Ok(b"GET / HTTP/1.1".to_vec())
        );
        assert_eq!(
            read(b"GET / HTTP/1.1\nHost: x\n\n", &mut no_timeout),
            Ok(b"GET / HTTP/1.1".to_vec())
        );
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(2000));
        assert_eq!(
            read(long.as_bytes(), &mut no_timeout),
            Err(HeadError::LineTooLong)
        );
        let headers = format!("GET / HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(2000));
        assert_eq!(
            read(headers.as_bytes(), &mut no_timeout),
            Err(HeadError::HeadTooLarge)
        );
        assert_eq!(
            read(b"GET / HTTP/1.1\r\n", &mut no_timeout),
            Err(HeadError::Closed)
        );
        // A deadline already passed.
        let mut s: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(
            read_request_line(&mut s, &mut no_timeout, Instant::now(), &config),
            Err(HeadError::Timeout)
        );
    }
}
