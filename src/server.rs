//! The inference server: hosts compiled models and runs one session per connection on its
//! own thread, with a bounded number of sessions ("busy" past it) and read timeouts. A
//! client that misbehaves or disconnects ends its own session only. Logs carry latency and
//! bytes, never inputs, keys or results.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cipherml_he::bfv::BfvParameters;
use cipherml_he::ckks::{
    Ciphertext as CkksCiphertext, CkksParameters, Encryptor as CkksEncryptor, Evaluator,
};
use cipherml_he::rlwe::{GaloisKeys, PublicKey, RelinKey};
use cipherml_he::tensor::CkksTensor;
use cipherml_mpc::net::{Channel, ChannelConfig, TcpChannel};
use cipherml_mpc::party::Party;
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::share::PartyId;

use crate::nn::{CkksModel, HybridConfig, HybridModel, Mode, NetworkModel, Sequential};
use crate::protocol::{
    recv, send, ClientMsg, ModelInfo, ProtocolError, ServerMsg, MAX_BATCH, PROTOCOL_VERSION,
};
pub use crate::tls::ServerTls;

/// Server limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Concurrent sessions at most; more get a "busy" error.
    pub max_sessions: usize,
    /// Read timeout of a session.
    pub timeout: Duration,
    /// Largest message accepted.
    pub max_message_len: usize,
}

/// Optional bearer-token authentication (off by default).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Auth {
    token: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Auth")
            .field("enabled", &self.token.is_some())
            .finish()
    }
}

impl Auth {
    /// Sessions must present `token` in their hello.
    pub fn token(token: impl Into<String>) -> Self {
        Self {
            token: Some(token.into()),
        }
    }

    fn check(&self, presented: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        match (&self.token, presented) {
            (None, _) => true,
            (Some(t), Some(p)) => {
                t.len() == p.len() && bool::from(t.as_bytes().ct_eq(p.as_bytes()))
            }
            (Some(_), None) => false,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_sessions: 16,
            timeout: Duration::from_secs(30),
            max_message_len: 64 << 20,
        }
    }
}

/// How a hosted model is evaluated.
enum Engine {
    /// Interactive: BFV linear layers, two-party non-linear layers.
    Hybrid(HybridModel),
    /// Non-interactive CKKS (every activation a polynomial).
    Ckks {
        model: CkksModel,
        params: Arc<CkksParameters>,
        ev: Evaluator,
    },
}

struct Hosted {
    info: ModelInfo,
    engine: Engine,
}

/// The keys a client uploaded for one CKKS model, kept for its session.
struct SessionKeys {
    /// Re-randomizes every reply (public key).
    enc: CkksEncryptor,
    rlk: RelinKey,
    galois: GaloisKeys,
}

/// A running server.
pub struct Server {
    listener: TcpListener,
    models: Arc<BTreeMap<String, Hosted>>,
    config: ServerConfig,
    active: Arc<AtomicUsize>,
    refusing: Arc<AtomicUsize>,
    auth: Arc<Auth>,
    tls: Option<ServerTls>,
    stop: Arc<AtomicBool>,
}

/// Stops a running [`Server`] from another thread (e.g. on Ctrl-C).
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl ShutdownHandle {
    /// Asks the server to stop accepting connections: [`Server::run`] returns once the
    /// sessions in flight have ended, or after the read timeout.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Server {
    /// Compiles the models (name, model) and binds `addr`. Each model runs in the mode its
    /// plan picks: CKKS (one round trip) when every activation is a polynomial, the
    /// interactive hybrid otherwise.
    pub fn bind(
        addr: &str,
        models: Vec<(String, Sequential)>,
        config: ServerConfig,
    ) -> Result<Self, ProtocolError> {
        let hc = HybridConfig::default();
        let mut map = BTreeMap::new();
        for (name, m) in models {
            let shapes = m.shapes()?;
            let (engine, mode, params) = match m.plan(NetworkModel::lan())?.mode {
                Mode::Ckks => {
                    let (model, params) = CkksModel::for_model(&m)?;
                    let desc = describe_ckks(&params);
                    let ev = Evaluator::new(&params);
                    (Engine::Ckks { model, params, ev }, "ckks", desc)
                }
                Mode::Hybrid => {
                    let model = HybridModel::compile(&m, &hc, true)?;
                    let desc = describe_bfv(model.params());
                    (Engine::Hybrid(model), "hybrid", desc)
                }
            };
            map.insert(
                name.clone(),
                Hosted {
                    info: ModelInfo {
                        name,
                        input_shape: m.input_shape().to_vec(),
                        output_shape: shapes.last().cloned().unwrap_or_default(),
                        mode: mode.into(),
                        params,
                        architecture: m.architecture(),
                    },
                    engine,
                },
            );
        }
        let listener = TcpListener::bind(addr).map_err(|e| ProtocolError::Mpc(e.into()))?;
        Ok(Self {
            listener,
            models: Arc::new(map),
            config,
            active: Arc::new(AtomicUsize::new(0)),
            refusing: Arc::new(AtomicUsize::new(0)),
            auth: Arc::new(Auth::default()),
            tls: None,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Requires a bearer token from every client.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Arc::new(auth);
        self
    }

    /// Serves over TLS (every connection must complete a TLS 1.3 handshake first).
    pub fn with_tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound")
    }

    /// A handle that stops [`Server::run`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            stop: self.stop.clone(),
            addr: self.local_addr(),
        }
    }

    /// Serves until a [`ShutdownHandle`] stops it (each connection on its own thread; TLS
    /// handshakes run there too, so a slow handshake never holds the accept loop). After
    /// the stop, waits for the sessions in flight, at most the read timeout; returns how
    /// many were still running.
    pub fn run(&self) -> usize {
        for stream in self.listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            let cfg = ChannelConfig {
                timeout: self.config.timeout,
                max_message_len: self.config.max_message_len,
            };
            if self.active.fetch_add(1, Ordering::SeqCst) >= self.config.max_sessions {
                self.active.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(
                    max_sessions = self.config.max_sessions,
                    "refused a session: busy"
                );
                self.refuse_busy(stream, cfg);
                continue;
            }
            let models = self.models.clone();
            let active = self.active.clone();
            let auth = self.auth.clone();
            let tls = self.tls.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                let result =
                    open(stream, cfg, tls.as_ref()).and_then(|ch| session(ch, &models, &auth));
                active.fetch_sub(1, Ordering::SeqCst);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                match result {
                    Ok((n, bytes)) => tracing::info!(inferences = n, bytes, ms, "session closed"),
                    Err(e) => tracing::warn!(error = %e, ms, "session ended with an error"),
                }
            });
        }
        let deadline = Instant::now() + self.config.timeout;
        while self.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = self.active.load(Ordering::SeqCst);
        tracing::info!(sessions_cut = left, "server stopped");
        left
    }

    /// Tells a client past the session limit that the server is busy. Over TLS that needs a
    /// handshake, run on its own thread; at most `max_sessions` such threads at once, past
    /// which the connection is just closed.
    fn refuse_busy(&self, stream: TcpStream, cfg: ChannelConfig) {
        let busy = ServerMsg::Error {
            message: "busy: too many sessions, try again later".into(),
        };
        let Some(tls) = self.tls.clone() else {
            if let Ok(mut ch) = TcpChannel::from_stream(stream, cfg) {
                let _ = send(&mut ch, &busy);
            }
            return;
        };
        if self.refusing.fetch_add(1, Ordering::SeqCst) >= self.config.max_sessions {
            self.refusing.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let refusing = self.refusing.clone();
        std::thread::spawn(move || {
            if let Ok(mut ch) = tls.accept(stream, cfg) {
                let _ = send(&mut ch, &busy);
            }
            refusing.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// The parameter description a hybrid model announces (the client checks it).
pub(crate) fn describe_bfv(params: &BfvParameters) -> String {
    format!(
        "BFV N={} t=2^{} id={:016x}",
        params.degree(),
        params.plaintext_modulus().ilog2(),
        params.id()
    )
}

/// The parameter description a CKKS model announces (the client checks it).
pub(crate) fn describe_ckks(params: &CkksParameters) -> String {
    format!(
        "CKKS N={} levels={} scale=2^{} id={:016x}",
        params.degree(),
        params.max_level(),
        params.default_scale().log2(),
        params.id()
    )
}

fn open(
    stream: TcpStream,
    cfg: ChannelConfig,
    tls: Option<&ServerTls>,
) -> Result<Box<dyn Channel + Send>, ProtocolError> {
    Ok(match tls {
        Some(tls) => Box::new(tls.accept(stream, cfg)?),
        None => Box::new(TcpChannel::from_stream(stream, cfg)?),
    })
}

fn refuse<C: Channel + ?Sized>(ch: &mut C, message: String) -> Result<(), ProtocolError> {
    send(ch, &ServerMsg::Error { message })
}

/// Decodes and checks a key upload against the model's parameters and Galois elements.
fn decode_keys(
    params: &Arc<CkksParameters>,
    model: &CkksModel,
    pk: &[u8],
    rlk: &[u8],
    galois: &[u8],
) -> Result<SessionKeys, String> {
    let ctx = params.context();
    let enc = PublicKey::from_bytes(ctx, pk)
        .and_then(|pk| CkksEncryptor::new(params, pk))
        .map_err(|e| format!("public key: {e}"))?;
    let rlk = RelinKey::from_bytes(ctx, rlk).map_err(|e| format!("relinearization key: {e}"))?;
    let galois = GaloisKeys::from_bytes(ctx, galois).map_err(|e| format!("Galois keys: {e}"))?;
    let got: Vec<usize> = galois.elements().collect();
    if got != model.galois_elements() {
        return Err(format!(
            "Galois keys for elements {got:?}, the model needs exactly {:?}",
            model.galois_elements()
        ));
    }
    Ok(SessionKeys { enc, rlk, galois })
}

/// Decodes an input ciphertext, checks it against the model, and evaluates the model.
fn ckks_infer(
    params: &Arc<CkksParameters>,
    model: &CkksModel,
    ev: &Evaluator,
    keys: &SessionKeys,
    input_shape: &[usize],
    bytes: &[u8],
) -> Result<Vec<u8>, String> {
    let ct = CkksCiphertext::from_bytes(params, bytes).map_err(|e| format!("ciphertext: {e}"))?;
    ct.check_fresh(model.input_level(), params.default_scale())
        .map_err(|e| format!("ciphertext: {e}"))?;
    let period = input_shape
        .iter()
        .product::<usize>()
        .max(1)
        .next_power_of_two();
    let x = CkksTensor::from_ciphertext(ct, input_shape, period).map_err(|e| e.to_string())?;
    let y = model
        .infer(ev, &keys.rlk, &keys.galois, &x)
        .map_err(|e| e.to_string())?;
    let y = keys
        .enc
        .rerandomize(&y.ct, &mut os_rng())
        .map_err(|e| e.to_string())?;
    Ok(y.to_bytes(params))
}

fn session<C: Channel>(
    mut ch: C,
    models: &BTreeMap<String, Hosted>,
    auth: &Auth,
) -> Result<(usize, u64), ProtocolError> {
    match recv::<_, ClientMsg>(&mut ch)? {
        ClientMsg::Hello { version, token } if version == PROTOCOL_VERSION => {
            if !auth.check(token.as_deref()) {
                let message = "unauthorized: missing or wrong bearer token".to_string();
                refuse(&mut ch, message.clone())?;
                return Err(ProtocolError::Unexpected(message));
            }
        }
        ClientMsg::Hello { version, .. } => {
            let message = format!(
                "unsupported protocol version {version} (server speaks {PROTOCOL_VERSION})"
            );
            refuse(&mut ch, message.clone())?;
            return Err(ProtocolError::Unexpected(message));
        }
        other => return Err(ProtocolError::Unexpected(format!("{other:?} before Hello"))),
    }
    send(
        &mut ch,
        &ServerMsg::Hello {
            version: PROTOCOL_VERSION,
            models: models.values().map(|h| h.info.clone()).collect(),
        },
    )?;
    let mut p = Party::setup(PartyId::P1, ch, os_rng())?;
    // The client's BFV public key, if any hosted model runs in the hybrid mode (they all
    // share the BFV parameters): it re-randomizes every encrypted reply.
    let pk = match models.values().find_map(|h| match &h.engine {
        Engine::Hybrid(m) => Some(m),
        Engine::Ckks { .. } => None,
    }) {
        Some(m) => Some(m.receive_public_key(&mut p)?),
        None => None,
    };
    let mut keys: BTreeMap<String, SessionKeys> = BTreeMap::new();
    let mut count = 0;
    loop {
        match recv::<_, ClientMsg>(p.channel())? {
            ClientMsg::UploadKeys { model } => {
                // The three key messages are read whatever happens, so the framing holds.
                let pk = p.channel().recv()?;
                let rlk = p.channel().recv()?;
                let galois = p.channel().recv()?;
                let decoded = match models.get(&model).map(|h| &h.engine) {
                    None => Err(format!("no model named {model:?}")),
                    Some(Engine::Hybrid(_)) => Err(format!(
                        "model {model:?} runs in the hybrid mode and needs no keys"
                    )),
                    Some(Engine::Ckks {
                        model: cm, params, ..
                    }) => decode_keys(params, cm, &pk, &rlk, &galois),
                };
                match decoded {
                    Ok(k) => {
                        keys.insert(model, k);
                        send(p.channel(), &ServerMsg::Ok)?;
                        tracing::info!(
                            bytes = pk.len() + rlk.len() + galois.len(),
                            "keys uploaded"
                        );
                    }
                    Err(message) => {
                        tracing::warn!(error = %message, "key upload refused");
                        refuse(p.channel(), message)?;
                    }
                }
            }
            ClientMsg::Infer { model, batch } => {
                let Some(hosted) = models.get(&model) else {
                    refuse(p.channel(), format!("no model named {model:?}"))?;
                    continue;
                };
                if batch == 0 || batch > MAX_BATCH {
                    refuse(
                        p.channel(),
                        format!("batch of {batch} inputs: must be 1 to {MAX_BATCH}"),
                    )?;
                    continue;
                }
                if matches!(hosted.engine, Engine::Ckks { .. }) && !keys.contains_key(&model) {
                    refuse(
                        p.channel(),
                        format!("model {model:?} runs in CKKS mode: upload the keys first"),
                    )?;
                    continue;
                }
                send(p.channel(), &ServerMsg::Ok)?;
                for _ in 0..batch {
                    let t = Instant::now();
                    let before = p.stats();
                    match &hosted.engine {
                        Engine::Hybrid(h) => h.run_server(
                            &mut p,
                            pk.as_ref().expect("received with any hybrid model"),
                        )?,
                        Engine::Ckks {
                            model: cm,
                            params,
                            ev,
                        } => {
                            let bytes = p.channel().recv()?;
                            let k = &keys[&model];
                            match ckks_infer(params, cm, ev, k, &hosted.info.input_shape, &bytes) {
                                Ok(reply) => {
                                    send(p.channel(), &ServerMsg::Ok)?;
                                    p.channel().send(&reply)?;
                                    p.channel().flush()?;
                                }
                                Err(message) => {
                                    refuse(p.channel(), message.clone())?;
                                    return Err(ProtocolError::Unexpected(message));
                                }
                            }
                        }
                    }
                    let after = p.stats();
                    count += 1;
                    tracing::info!(
                        model = %hosted.info.name,
                        ms = t.elapsed().as_secs_f64() * 1e3,
                        bytes = after.bytes_sent + after.bytes_received - before.bytes_sent - before.bytes_received,
                        "inference"
                    );
                }
            }
            ClientMsg::Bye => break,
            other @ ClientMsg::Hello { .. } => {
                return Err(ProtocolError::Unexpected(format!(
                    "{other:?} during the session"
                )))
            }
        }
    }
    let s = p.stats();
    Ok((count, s.bytes_sent + s.bytes_received))
}
