//! The inference server: hosts compiled models and runs one session per connection on its
//! own thread, with a bounded number of sessions ("busy" past it, also per source address),
//! an absolute deadline for every message, frame limits by protocol state, a key memory
//! budget shared by sessions and bounded reply queues ([`ServerConfig`]). A
//! client that misbehaves or disconnects ends its own session only. Logs carry latency and
//! bytes, never inputs, keys or results.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::lazy::LazyParty;
use crate::key_cache::{BfvKey, CachedKeys, KeyCache, KeyId};
use cipherml_he::ckks::{
    Ciphertext as CkksCiphertext, CkksParameters, Encryptor as CkksEncryptor, Evaluator,
};
use cipherml_he::rlwe::{GaloisKeys, PublicKey, RelinKey};
use cipherml_mpc::net::{Channel, ChannelConfig, TcpChannel};
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::share::PartyId;

use crate::metrics::{Metrics, SessionMeter};
use crate::nn::{
    CkksFloodConfig, CkksFloodPlan, CkksModel, Mode, NnError, PreparedModel, Sequential,
};
use crate::protocol::{
    self, recv, send, Capped, ClientMsg, HeParams, ModelInfo, ModelMode, NetworkParams,
    ProtocolError, RefusalCode, ServerMsg, MAX_BATCH, MAX_HELD_KEYS, MAX_HELLO_MESSAGE,
    PROTOCOL_VERSION,
};
use crate::tensor::CkksEval;
pub use crate::tls::ServerTls;

/// Which execution mode the server may pick for a model.
///
/// The default, [`ModeChoice::Auto`], never trades the weights' privacy for speed: it picks
/// CKKS only for a model whose CKKS plan floods its replies, else the hybrid mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ModeChoice {
    /// The planner's choice among the modes that hide the weights.
    #[default]
    Auto,
    /// Always the interactive hybrid mode (BFV linear layers, two-party non-linear layers).
    Hybrid,
    /// Always the non-interactive CKKS mode with flooded replies: refused for a model with
    /// a non-polynomial activation, and for a model whose replies cannot be flooded with
    /// its precision kept at the parameters the server can use.
    Ckks,
    /// The CKKS mode even where its replies cannot be flooded: only for models whose
    /// weights are NOT secret (the client may learn about them from the replies' noise).
    /// Never chosen unless asked for by name.
    CkksPublicWeights,
}

/// Server limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Concurrent sessions at most; more get a "busy" error.
    pub max_sessions: usize,
    /// Read timeout of a session.
    pub timeout: Duration,
    /// Largest message accepted.
    pub max_message_len: usize,
    /// How each hosted model's mode is chosen.
    pub mode: ModeChoice,
    /// Inferences one session may run at most (public: the noise flooding of every reply
    /// is sized for this many queries, so that the statistical distance over the whole
    /// session stays below `2^-flood_bits`). Past it, requests are refused.
    pub max_inferences_per_session: u64,
    /// Absolute deadline of a connection's opening: the TLS handshake and the client's
    /// hello must both have arrived within it (a client that trickles bytes is cut).
    pub handshake_timeout: Duration,
    /// Concurrent sessions from one source IP address at most; more get a "busy" error.
    pub max_sessions_per_ip: usize,
    /// Bytes of clients' evaluation keys held by all sessions together at most (wire bytes
    /// while reading, decoded keys after): reserved from the exact size of a model's keys
    /// before an upload is read, released when the session ends; an upload past it is
    /// refused with [`RefusalCode::ResourceExhausted`].
    pub key_memory_budget: usize,
    /// Bytes of replies queued for one client at most: a client that does not read blocks
    /// its session, which ends after the timeout.
    pub max_queued_bytes: usize,
    /// The network the sessions plan for: the cost model's choice of representation for
    /// each layer (announced to clients, which make the same choices; `inspect --wan`
    /// prints the plan for [`NetworkParams::WAN`]).
    pub network: NetworkParams,
    /// Threads of the sessions' HE work: one rayon pool of this many threads shared by
    /// every session (0: rayon's global pool, sized by `RAYON_NUM_THREADS`).
    pub threads: usize,
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

    pub(crate) fn check(&self, presented: Option<&str>) -> bool {
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
            mode: ModeChoice::Auto,
            max_inferences_per_session: 1 << 16,
            handshake_timeout: Duration::from_secs(10),
            max_sessions_per_ip: 8,
            key_memory_budget: 1 << 30,
            max_queued_bytes: 16 << 20,
            network: NetworkParams::LAN,
            threads: 0,
        }
    }
}

impl ServerConfig {
    /// The limits of a session's channel.
    fn channel(&self) -> ChannelConfig {
        ChannelConfig {
            timeout: self.timeout,
            max_message_len: self.max_message_len,
            max_queued_bytes: self.max_queued_bytes,
        }
    }
}

/// Why a connection got no session slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoSlot {
    /// Every slot is taken.
    Full { max: usize },
    /// The source address holds its share.
    PerIp { ip: IpAddr, max: usize },
}

#[derive(Debug, Default)]
struct SlotCounts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// The session slots: at most `max_total` sessions, at most `max_per_ip` from one address.
#[derive(Debug)]
struct Slots {
    counts: Mutex<SlotCounts>,
    max_total: usize,
    max_per_ip: usize,
}

/// A held session slot, released when dropped: also when the session's thread unwinds
/// from a panic.
#[derive(Debug)]
struct SlotGuard {
    slots: Arc<Slots>,
    ip: Option<IpAddr>,
}

impl Slots {
    fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            counts: Mutex::new(SlotCounts::default()),
            max_total,
            max_per_ip,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotCounts> {
        // A poisoned lock means a panic elsewhere while counting; the counts are still
        // consistent (each update completes before the guard is dropped).
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<SlotGuard, NoSlot> {
        let mut c = self.lock();
        if c.total >= self.max_total {
            return Err(NoSlot::Full {
                max: self.max_total,
            });
        }
        if let Some(ip) = ip {
            let n = c.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                return Err(NoSlot::PerIp {
                    ip,
                    max: self.max_per_ip,
                });
            }
            *n += 1;
        }
        c.total += 1;
        Ok(SlotGuard {
            slots: self.clone(),
            ip,
        })
    }

    fn active(&self) -> usize {
        self.lock().total
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut c = self.slots.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = c.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    c.per_ip.remove(&ip);
                }
            }
        }
    }
}

/// The key memory shared by all sessions ([`ServerConfig::key_memory_budget`]).
#[derive(Debug)]
struct KeyMemory {
    used: Mutex<usize>,
    budget: usize,
}

/// Bytes of the key memory held by a session, returned when dropped.
#[derive(Debug)]
struct KeyReservation {
    memory: Arc<KeyMemory>,
    bytes: usize,
}

impl KeyMemory {
    fn new(budget: usize) -> Arc<Self> {
        Arc::new(Self {
            used: Mutex::new(0),
            budget,
        })
    }

    /// Reserves `bytes`, or says how much is in use.
    fn reserve(self: &Arc<Self>, bytes: usize) -> Result<KeyReservation, usize> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if used.saturating_add(bytes) > self.budget {
            return Err(*used);
        }
        *used += bytes;
        Ok(KeyReservation {
            memory: self.clone(),
            bytes,
        })
    }
}

impl Drop for KeyReservation {
    fn drop(&mut self) {
        let mut used = self.memory.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(self.bytes);
    }
}

/// The exact sizes of a CKKS model's key upload, and the memory it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeySizes {
    pk: usize,
    rlk: usize,
    galois: usize,
    /// Wire bytes plus the decoded keys.
    memory: usize,
}

impl KeySizes {
    fn of(params: &CkksParameters, model: &CkksModel) -> Self {
        use cipherml_he::serialize as ser;
        let ctx = params.context();
        let count = model.galois_elements().len();
        let (pk, rlk, galois) = (
            ser::public_key_size(ctx),
            ser::relin_key_size(ctx),
            ser::galois_keys_size(ctx, count),
        );
        let decoded = ser::public_key_memory(ctx) + (1 + count) * ser::key_switch_key_memory(ctx);
        Self {
            pk,
            rlk,
            galois,
            memory: pk + rlk + galois + decoded,
        }
    }
}

/// How a hosted model is evaluated.
enum Engine {
    /// Interactive: BFV linear layers, two-party non-linear layers.
    Hybrid(PreparedModel),
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
    /// Most inputs in one request for this model (at most [`MAX_BATCH`]).
    max_batch: u32,
}

/// The keys a client uploaded for one CKKS model, kept for its session (and, if the client
/// keeps its keys, in the server's [`KeyCache`]).
use crate::key_cache::CkksKeys as SessionKeys;

/// A running server.
pub struct Server {
    listener: TcpListener,
    models: Arc<BTreeMap<String, Hosted>>,
    config: ServerConfig,
    slots: Arc<Slots>,
    key_memory: Arc<KeyMemory>,
    refusing: Arc<AtomicUsize>,
    auth: Arc<Auth>,
    tls: Option<ServerTls>,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    key_cache: Arc<KeyCache>,
    /// The sessions' HE pool ([`ServerConfig::threads`]).
    pool: Option<Arc<rayon::ThreadPool>>,
}

/// A model to host, with its mode choice ([`Server::bind_models`]).
#[derive(Clone)]
#[non_exhaustive]
pub struct ModelSpec {
    /// The name clients ask for.
    pub name: String,
    /// The model.
    pub model: Sequential,
    /// How its mode is chosen (`None`: the server's [`ServerConfig::mode`]).
    pub mode: Option<ModeChoice>,
    /// Most inputs in one request (`None`: [`MAX_BATCH`], also the most allowed).
    pub max_batch: Option<u32>,
}

impl std::fmt::Debug for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the weights.
        f.debug_struct("ModelSpec")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

impl ModelSpec {
    /// A model under a name, with the server's mode choice.
    pub fn new(name: impl Into<String>, model: Sequential) -> Self {
        Self {
            name: name.into(),
            model,
            mode: None,
            max_batch: None,
        }
    }

    /// With its own mode choice.
    pub fn with_mode(mut self, mode: ModeChoice) -> Self {
        self.mode = Some(mode);
        self
    }

    /// With a smaller request limit than [`MAX_BATCH`] (clamped to 1..=`MAX_BATCH`).
    pub fn with_max_batch(mut self, max_batch: u32) -> Self {
        self.max_batch = Some(max_batch);
        self
    }
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
        wake_accept_loop(self.addr);
    }
}

/// Wakes an accept loop blocked on a listener bound to `addr` (so that it sees its stop
/// flag) by connecting to it once; an unspecified address (`0.0.0.0`, `::`) is reached
/// through the loopback address of its family. Errors are ignored: a listener that is
/// gone needs no waking.
pub(crate) fn wake_accept_loop(mut addr: SocketAddr) {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
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
        let specs = models
            .into_iter()
            .map(|(name, model)| ModelSpec::new(name, model));
        Self::bind_models(addr, specs.collect(), config)
    }

    /// As [`Server::bind`], with a mode choice per model ([`ModelSpec::mode`], else
    /// `config.mode`).
    pub fn bind_models(
        addr: &str,
        models: Vec<ModelSpec>,
        config: ServerConfig,
    ) -> Result<Self, ProtocolError> {
        let mut compiled = Vec::with_capacity(models.len());
        for ModelSpec {
            name,
            model: m,
            mode: model_mode,
            max_batch,
        } in models
        {
            let choice = model_mode.unwrap_or(config.mode);
            tracing::debug!(model = %name, ?choice, "compiling");
            let shapes = m.shapes()?;
            let (engine, why) = choose_engine(&name, &m, choice, &config, 0)?;
            compiled.push((name, m, choice, max_batch, shapes, engine, why));
        }
        // The hybrid models share the session's BFV key, so one Q: each fitted alone
        // first, then all at the largest (at the default's if one was not fitted, or if
        // one no longer fits at the largest).
        let fitted: Vec<u32> = compiled
            .iter()
            .filter_map(|c| match &c.5 {
                Engine::Hybrid(h) => Some(h.config().q_bits),
                Engine::Ckks { .. } => None,
            })
            .collect();
        if fitted.windows(2).any(|w| w[0] != w[1]) {
            let common = if fitted.contains(&0) {
                u32::MAX
            } else {
                fitted.iter().copied().max().unwrap_or(0)
            };
            let mut again = Vec::with_capacity(compiled.len());
            for c in &compiled {
                again.push(match &c.5 {
                    Engine::Hybrid(_) => Some(choose_engine(&c.0, &c.1, c.2, &config, common)),
                    Engine::Ckks { .. } => None,
                });
            }
            let all_ok = again.iter().flatten().all(|r| r.is_ok());
            for (c, r) in compiled.iter_mut().zip(again) {
                let r = match r {
                    Some(r) if all_ok => r,
                    Some(_) => choose_engine(&c.0, &c.1, c.2, &config, u32::MAX),
                    None => continue,
                };
                (c.5, c.6) = r?;
            }
        }
        let mut map = BTreeMap::new();
        for (name, m, _, max_batch, shapes, engine, why) in compiled {
            let (mode, params, q_bits, reveal_log2) = match &engine {
                Engine::Ckks { params, .. } => (ModelMode::Ckks, HeParams::of_ckks(params), 0, 0),
                Engine::Hybrid(h) => (
                    ModelMode::Hybrid,
                    HeParams::of_bfv(h.params()),
                    h.config().q_bits,
                    h.config().reveal_log2,
                ),
            };
            tracing::info!(model = %name, %mode, reason = %why, "model mode");
            map.insert(
                name.clone(),
                Hosted {
                    info: ModelInfo {
                        name,
                        input_shape: m.input_shape().to_vec(),
                        output_shape: shapes.last().cloned().unwrap_or_default(),
                        mode,
                        params,
                        q_bits,
                        reveal_log2,
                        architecture: m.architecture(),
                        network: config.network,
                    },
                    engine,
                    max_batch: max_batch.unwrap_or(MAX_BATCH).clamp(1, MAX_BATCH),
                },
            );
        }
        let pool = match config.threads {
            0 => None,
            n => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| ProtocolError::Invalid {
                        what: "server threads",
                        detail: format!("{n} threads: {e}"),
                    })?,
            )),
        };
        let listener = TcpListener::bind(addr).map_err(|e| ProtocolError::Mpc(e.into()))?;
        Ok(Self {
            pool,
            listener,
            models: Arc::new(map),
            config,
            slots: Slots::new(config.max_sessions, config.max_sessions_per_ip),
            key_memory: KeyMemory::new(config.key_memory_budget),
            refusing: Arc::new(AtomicUsize::new(0)),
            auth: Arc::new(Auth::default()),
            tls: None,
            stop: Arc::new(AtomicBool::new(false)),
            metrics: Arc::new(Metrics::new()),
            key_cache: Arc::new(KeyCache::default()),
        })
    }

    /// Caches clients' evaluation keys in `cache` (e.g. with other bounds than
    /// [`KeyCache::default`], or shared with another server) instead of its own.
    pub fn with_key_cache(mut self, cache: Arc<KeyCache>) -> Self {
        self.key_cache = cache;
        self
    }

    /// The cache of clients' evaluation keys (shared by every session).
    pub fn key_cache(&self) -> &Arc<KeyCache> {
        &self.key_cache
    }

    /// Counts into `metrics` (shared with an [`crate::admin::AdminServer`]) instead of the
    /// server's own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The metrics the server counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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

    /// What the hello announces of each hosted model (name, shapes, mode, parameters).
    pub fn model_info(&self) -> Vec<ModelInfo> {
        self.models.values().map(|h| h.info.clone()).collect()
    }

    /// The CKKS model hosted under `name`, as prepared at bind time (`None` for a hybrid
    /// or unknown model). Every session applies these same prepared maps (a clone shares
    /// them: [`crate::tensor::PreparedCkksLinear::applications`] counts the uses).
    pub fn ckks_model(&self, name: &str) -> Option<&CkksModel> {
        match &self.models.get(name)?.engine {
            Engine::Ckks { model, .. } => Some(model),
            Engine::Hybrid(_) => None,
        }
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
        self.metrics
            .set_serving(self.models.values().map(|h| h.info.clone()).collect());
        let cache = self.key_cache.clone();
        self.metrics
            .watch_key_cache(move || (cache.len(), cache.size_bytes()));
        for stream in self.listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            let opened = Instant::now();
            let cfg = self.config.channel();
            let ip = stream.peer_addr().ok().map(|a| a.ip());
            let slot = match self.slots.acquire(ip) {
                Ok(slot) => slot,
                Err(why) => {
                    let message = match why {
                        NoSlot::Full { max } => {
                            tracing::warn!(max_sessions = max, "refused a session: busy");
                            format!("busy: {max} sessions running, try again later")
                        }
                        NoSlot::PerIp { ip, max } => {
                            tracing::warn!(%ip, max_sessions_per_ip = max, "refused a session: busy (per address)");
                            format!("busy: {max} sessions from {ip} running, try again later")
                        }
                    };
                    self.metrics.refusal(RefusalCode::Busy.as_str());
                    self.refuse_busy(stream, cfg, message);
                    continue;
                }
            };
            let limits = SessionLimits {
                hello_deadline: opened + self.config.handshake_timeout,
                handshake_timeout: self.config.handshake_timeout,
                max_inferences: self.config.max_inferences_per_session,
                key_memory: self.key_memory.clone(),
            };
            let models = self.models.clone();
            let auth = self.auth.clone();
            let tls = self.tls.clone();
            let key_cache = self.key_cache.clone();
            let mut meter = self.metrics.session();
            let pool = self.pool.clone();
            std::thread::spawn(move || {
                // Released when this thread ends, panic or not.
                let _slot = slot;
                let t = Instant::now();
                let run = || {
                    open(stream, cfg, tls.as_ref(), limits.handshake_timeout)
                        .and_then(|ch| session(ch, &models, &auth, &key_cache, &mut meter, &limits))
                };
                // The session's HE work runs in the server's pool, if it has one.
                let result = match &pool {
                    Some(pool) => pool.install(run),
                    None => run(),
                };
                let ms = t.elapsed().as_secs_f64() * 1e3;
                match result {
                    Ok((n, bytes)) => tracing::info!(inferences = n, bytes, ms, "session closed"),
                    Err(e) => tracing::warn!(error = %e, ms, "session ended with an error"),
                }
            });
        }
        self.metrics.set_stopped();
        let deadline = Instant::now() + self.config.timeout;
        while self.slots.active() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left = self.slots.active();
        tracing::info!(sessions_cut = left, "server stopped");
        left
    }

    /// Tells a client past the session limit that the server is busy, on a thread of its
    /// own (over TLS that needs a handshake, and closing may drain the client's unread
    /// bytes for up to a second: neither may hold the accept loop); at most `max_sessions`
    /// such threads at once, past which the connection is just closed.
    fn refuse_busy(&self, stream: TcpStream, cfg: ChannelConfig, message: String) {
        let busy = ServerMsg::Error {
            code: RefusalCode::Busy,
            message,
        };
        let handshake = self.config.handshake_timeout;
        if self.refusing.fetch_add(1, Ordering::SeqCst) >= self.config.max_sessions {
            self.refusing.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let refusing = CountGuard(self.refusing.clone());
        let tls = self.tls.clone();
        std::thread::spawn(move || {
            let _refusing = refusing;
            // Short deadlines: the client only has to read one message.
            let cfg = ChannelConfig {
                timeout: cfg.timeout.min(handshake),
                ..cfg
            };
            let ch: Result<Box<dyn Channel + Send>, _> = match tls {
                Some(tls) => tls
                    .accept_within(stream, cfg, handshake)
                    .map(|c| Box::new(c) as _),
                None => TcpChannel::from_stream(stream, cfg).map(|c| Box::new(c) as _),
            };
            if let Ok(mut ch) = ch {
                let _ = send(&mut ch, &busy);
            }
        });
    }
}

/// Decrements a counter when dropped (also when its thread panics).
struct CountGuard(Arc<AtomicUsize>);

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a session may use, and by when it must have said hello.
struct SessionLimits {
    hello_deadline: Instant,
    handshake_timeout: Duration,
    max_inferences: u64,
    key_memory: Arc<KeyMemory>,
}

fn open(
    stream: TcpStream,
    cfg: ChannelConfig,
    tls: Option<&ServerTls>,
    handshake: Duration,
) -> Result<Box<dyn Channel + Send>, ProtocolError> {
    Ok(match tls {
        Some(tls) => Box::new(tls.accept_within(stream, cfg, handshake)?),
        None => Box::new(TcpChannel::from_stream(stream, cfg)?),
    })
}

/// Sends a refusal with its code, counts it, and logs it (`message` must carry client
/// strings only through [`Capped`]).
fn refuse<C: Channel + ?Sized>(
    ch: &mut C,
    metrics: &Metrics,
    code: RefusalCode,
    message: String,
) -> Result<(), ProtocolError> {
    metrics.refusal(code.as_str());
    tracing::warn!(code = code.as_str(), reason = %message, "refused");
    protocol::refuse(ch, code, message)
}

/// Refuses, then ends the session with the refusal as its error.
fn refuse_and_end<C: Channel + ?Sized, T>(
    ch: &mut C,
    metrics: &Metrics,
    code: RefusalCode,
    message: String,
) -> Result<T, ProtocolError> {
    refuse(ch, metrics, code, message.clone())?;
    Err(ProtocolError::Refused { code, message })
}

/// Receives one key of an upload: its announced length must be `size` exactly (checked
/// before the body is read).
fn recv_key<C: Channel + ?Sized>(ch: &mut C, what: &str, size: usize) -> Result<Vec<u8>, String> {
    match ch.recv_limited(size) {
        Ok(m) if m.len() == size => Ok(m),
        Ok(m) => Err(format!("{what}: {} bytes, the model's is {size}", m.len())),
        Err(cipherml_mpc::Error::MessageTooLarge { len, .. }) => {
            Err(format!("{what}: {len} bytes, the model's is {size}"))
        }
        Err(e) => Err(format!("{what}: {e}")),
    }
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
    // The elements first, from the element fields, before any key is unpacked.
    let elements =
        GaloisKeys::peek_elements(ctx, galois).map_err(|e| format!("Galois keys: {e}"))?;
    if elements != model.galois_elements() {
        return Err(format!(
            "Galois keys for elements {elements:?}, the model needs exactly {:?}",
            model.galois_elements()
        ));
    }
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
    Ok(SessionKeys::new(enc, rlk, galois))
}

/// Looks the client's announced key ids up in the cache: sets up for the session the CKKS
/// keys of every hosted model whose parameters and Galois elements they fit (the first fitting
/// id per model) and the BFV public key if it fits the hybrid models' parameters. Returns
/// the ids set up (at most [`MAX_HELD_KEYS`] ids are looked up; an id nobody uploaded is a
/// miss).
fn reuse_keys(
    ids: &[KeyId],
    models: &BTreeMap<String, Hosted>,
    cache: &KeyCache,
    keys: &mut BTreeMap<String, Arc<SessionKeys>>,
    bfv_key: &mut Option<Arc<BfvKey>>,
) -> Vec<KeyId> {
    let hybrid_params = models.values().find_map(|h| match &h.engine {
        Engine::Hybrid(m) => Some(m.params().id()),
        Engine::Ckks { .. } => None,
    });
    let mut used = Vec::new();
    for id in ids.iter().take(MAX_HELD_KEYS) {
        if used.contains(id) {
            continue;
        }
        let mut fits = false;
        match cache.get(id) {
            None => {}
            Some(CachedKeys::Ckks {
                keys: k, params_id, ..
            }) => {
                for (name, hosted) in models {
                    if let Engine::Ckks { model, params, .. } = &hosted.engine {
                        if params.id() == params_id
                            && k.galois_keys()
                                .elements()
                                .eq(model.galois_elements().iter().copied())
                            && !keys.contains_key(name)
                        {
                            keys.insert(name.clone(), k.clone());
                            fits = true;
                        }
                    }
                }
            }
            Some(CachedKeys::Bfv { key, .. })
                if bfv_key.is_none() && hybrid_params == Some(key.params_id) =>
            {
                *bfv_key = Some(key);
                fits = true;
            }
            Some(CachedKeys::Bfv { .. }) => {}
        }
        if fits {
            used.push(*id);
        }
    }
    used
}

/// Before a hybrid inference: sets up OT if this is the session's first, and receives the
/// client's BFV public key unless the session has it (cached, or received before); caches
/// it if `cache` is given (a client that keeps its keys).
fn hybrid_set_up<C: Channel>(
    p: &mut LazyParty<C>,
    model: &PreparedModel,
    session_key: &mut Option<Arc<BfvKey>>,
    cache: Option<&KeyCache>,
) -> Result<Arc<BfvKey>, ProtocolError> {
    let party = p.party()?;
    if let Some(k) = session_key {
        return Ok(k.clone());
    }
    let params = model.params();
    // Refused from its length prefix if longer than a public key for these parameters.
    let bytes = party
        .channel()
        .recv_limited(cipherml_he::serialize::public_key_size(params.context()))?;
    let (id, entry) = CachedKeys::bfv_from_bytes(params, &bytes).map_err(ProtocolError::from)?;
    let CachedKeys::Bfv { key, .. } = &entry else {
        return Err(ProtocolError::Unexpected(
            "a BFV key decoded as CKKS keys".into(),
        ));
    };
    let key = key.clone();
    if let Some(cache) = cache {
        cache.insert(id, entry);
    }
    *session_key = Some(key.clone());
    Ok(key)
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
    // The engine's CKKS operations with the client's keys, on the server alone.
    let mut eval = CkksEval::with_keys(ev, keys);
    let x = eval
        .input(ct, input_shape, model.input_level())
        .map_err(|e| format!("ciphertext: {e}"))?;
    let y = model.forward(&mut eval, x).map_err(|e| e.to_string())?;
    // Re-randomized with the client's public key, and flooded when the model's plan has a
    // flooding (always, when the server chose CKKS on its own).
    let flood = model.flood().map(|p| p.flood_log2);
    let y = eval
        .reply(keys.encryptor(), &y, flood, &mut os_rng())
        .map_err(|e| e.to_string())?;
    Ok(y.to_bytes(params))
}

/// Compiles `m` for the mode `choice` allows, with the reason (for the startup log).
///
/// - `Hybrid`: the hybrid mode.
/// - `Ckks`: the CKKS mode, or [`NnError::ModeUnavailable`] naming the layer that is not a
///   polynomial. Replies are flooded if the flooding keeps the precision; otherwise they
///   are not, and a warning says that the weights are not hidden (the operator's choice).
/// - `Auto`: CKKS only if the plan picks it and its replies are flooded with the precision
///   kept ([`crate::nn::CkksFloodPlan::keeps_precision`]); the hybrid mode otherwise. The
///   default never trades the weights' privacy for speed.
///
/// The hybrid mode's `Q` has `q_bits` bits: 0 to fit it to the model, `u32::MAX` for the
/// default (any model the configuration allows).
fn choose_engine(
    name: &str,
    m: &Sequential,
    choice: ModeChoice,
    config: &ServerConfig,
    q_bits: u32,
) -> Result<(Engine, String), ProtocolError> {
    let mut sc = crate::tensor::SessionConfig {
        network: config.network.model(),
        ..crate::tensor::SessionConfig::default()
    };
    sc.q_bits = match q_bits {
        u32::MAX => sc.q_bits_needed(),
        q => q,
    };
    let fc = CkksFloodConfig {
        max_inferences_per_session: config.max_inferences_per_session,
        ..CkksFloodConfig::default()
    };
    let hybrid = |why: String| -> Result<(Engine, String), ProtocolError> {
        let prepared = PreparedModel::for_serving(m, &sc, config.max_inferences_per_session, true)?;
        Ok((Engine::Hybrid(prepared), why))
    };
    let ckks = |model: CkksModel, params: Arc<CkksParameters>| {
        let ev = Evaluator::new(&params);
        Engine::Ckks { model, params, ev }
    };
    let plan_describe = |p: &CkksFloodPlan| {
        format!(
            "flooding 2^{} (noise bound 2^{:.1}, {} statistical bits, {} bits of union bound over \
             a session) leaves an error of 2^{:.1} per output (limit 2^{:.0}), room 2^{:.1}",
            p.flood_log2,
            p.noise_log2,
            fc.flood_bits,
            p.session_bits,
            p.error_log2,
            p.max_error_log2,
            p.room_log2
        )
    };
    match choice {
        ModeChoice::Hybrid => hybrid("hybrid mode forced by the configuration".into()),
        ModeChoice::Ckks | ModeChoice::CkksPublicWeights => {
            let (model, params) = CkksModel::for_model(m).map_err(|e| match e {
                NnError::NotSupportedInMode { layer, reason, .. } => NnError::ModeUnavailable {
                    model: name.to_string(),
                    mode: "CKKS",
                    layer,
                    reason,
                },
                other => other,
            })?;
            match model.flood_plan(&params, &fc) {
                Ok(p) if p.keeps_precision() => {
                    let why = format!("CKKS forced, replies flooded: {}", plan_describe(&p));
                    Ok((ckks(model.with_flood(p), params), why))
                }
                other => {
                    let detail = match other {
                        Ok(p) => plan_describe(&p),
                        Err(e) => e.to_string(),
                    };
                    if choice == ModeChoice::Ckks {
                        // Never serve unflooded CKKS replies unless the operator said by
                        // name that the weights are public.
                        return Err(NnError::ModeUnavailable {
                            model: name.to_string(),
                            mode: "CKKS",
                            layer: "(output)".into(),
                            reason: format!(
                                "its replies cannot be flooded with the precision kept ({detail}); \
                                 use the hybrid mode, or ckks-public-weights if the weights are \
                                 not secret"
                            ),
                        });
                    }
                    tracing::warn!(
                        model = %name,
                        %detail,
                        "CKKS with public weights: replies are NOT flooded, the client may \
                         learn about the weights from their noise"
                    );
                    Ok((
                        ckks(model, params),
                        format!(
                            "CKKS for public weights (ckks-public-weights), replies not flooded \
                             ({detail})"
                        ),
                    ))
                }
            }
        }
        ModeChoice::Auto => {
            if m.plan(config.network.model())?.mode != Mode::Ckks {
                return hybrid(
                    "auto: the plan needs the hybrid mode (a non-polynomial layer)".into(),
                );
            }
            let (model, params) = CkksModel::for_model(m)?;
            match model.flood_plan(&params, &fc) {
                Ok(p) if p.keeps_precision() => {
                    let why = format!("auto: CKKS with flooded replies: {}", plan_describe(&p));
                    Ok((ckks(model.with_flood(p), params), why))
                }
                Ok(p) => hybrid(format!(
                    "auto: hybrid, because CKKS replies cannot be flooded with the precision kept \
                     at these parameters: {}",
                    plan_describe(&p)
                )),
                Err(e) => hybrid(format!(
                    "auto: hybrid, because CKKS replies cannot be flooded: {e}"
                )),
            }
        }
    }
}

fn session<C: Channel>(
    mut ch: C,
    models: &BTreeMap<String, Hosted>,
    auth: &Auth,
    key_cache: &KeyCache,
    meter: &mut SessionMeter,
    limits: &SessionLimits,
) -> Result<(u64, u64), ProtocolError> {
    // The hello: at most MAX_HELLO_MESSAGE bytes (a longer frame is refused from its
    // length prefix), all of it by the opening deadline.
    let hello = match protocol::recv_before::<_, ClientMsg>(
        &mut ch,
        MAX_HELLO_MESSAGE,
        limits.hello_deadline,
    ) {
        Err(ProtocolError::Mpc(cipherml_mpc::Error::MessageTooLarge { len, max })) => {
            return refuse_and_end(
                &mut ch,
                meter.metrics(),
                RefusalCode::BadRequest,
                format!("a first message of {len} bytes: a hello has at most {max}"),
            );
        }
        other => other?,
    };
    let held_keys = match hello {
        ClientMsg::Hello {
            version,
            token,
            held_keys,
        } if version == PROTOCOL_VERSION => {
            if !auth.check(token.as_deref()) {
                return refuse_and_end(
                    &mut ch,
                    meter.metrics(),
                    RefusalCode::Unauthorized,
                    "unauthorized: missing or wrong bearer token".into(),
                );
            }
            held_keys
        }
        ClientMsg::Hello { version, .. } => {
            return refuse_and_end(
                &mut ch,
                meter.metrics(),
                RefusalCode::Version,
                format!(
                    "unsupported protocol version {version} (server speaks {PROTOCOL_VERSION})"
                ),
            );
        }
        other => {
            return refuse_and_end(
                &mut ch,
                meter.metrics(),
                RefusalCode::BadRequest,
                format!("{other:?} before Hello"),
            );
        }
    };
    // Keys the client keeps and the cache still holds are set up for the session now: the
    // CKKS keys of every model they fit, and the BFV public key (hybrid models).
    let mut keys: BTreeMap<String, Arc<SessionKeys>> = BTreeMap::new();
    let mut bfv_key: Option<Arc<BfvKey>> = None;
    let cached_keys = match &held_keys {
        Some(ids) => reuse_keys(ids, models, key_cache, &mut keys, &mut bfv_key),
        None => Vec::new(),
    };
    // Only a client that keeps its keys has its uploads cached.
    let cache = held_keys.is_some().then_some(key_cache);
    if !cached_keys.is_empty() {
        tracing::info!(keys = cached_keys.len(), "cached keys reused");
    }
    send(
        &mut ch,
        &ServerMsg::Hello {
            version: PROTOCOL_VERSION,
            models: models.values().map(|h| h.info.clone()).collect(),
            cached_keys,
        },
    )?;
    // OT is set up before the first hybrid inference, if any.
    let mut p = LazyParty::new(PartyId::P1, ch);
    let mut count: u64 = 0;
    // The key memory each model's uploaded keys hold, returned when the session ends.
    let mut reserved: BTreeMap<String, KeyReservation> = BTreeMap::new();
    loop {
        match recv::<_, ClientMsg>(p.channel())? {
            ClientMsg::UploadKeys { model } => {
                // Three raw messages follow, each of the exact size of the model's keys:
                // a request that cannot be checked, or a key of another size (its body not
                // read), ends the session.
                let (cm, params) = match models.get(&model).map(|h| &h.engine) {
                    None => {
                        return refuse_and_end(
                            p.channel(),
                            meter.metrics(),
                            RefusalCode::UnknownModel,
                            format!("no model named {}", Capped(&model)),
                        )
                    }
                    Some(Engine::Hybrid(_)) => {
                        return refuse_and_end(
                            p.channel(),
                            meter.metrics(),
                            RefusalCode::BadRequest,
                            format!(
                                "model {} runs in the hybrid mode and needs no keys",
                                Capped(&model)
                            ),
                        )
                    }
                    Some(Engine::Ckks {
                        model: cm, params, ..
                    }) => (cm, params),
                };
                let sizes = KeySizes::of(params, cm);
                // Replacing a model's keys frees the old reservation with the old keys.
                reserved.remove(&model);
                let reservation = match limits.key_memory.reserve(sizes.memory) {
                    Ok(r) => r,
                    Err(used) => {
                        return refuse_and_end(
                            p.channel(),
                            meter.metrics(),
                            RefusalCode::ResourceExhausted,
                            format!(
                                "key memory spent: {used} of {} bytes in use, the keys need {}; try again later",
                                limits.key_memory.budget, sizes.memory
                            ),
                        )
                    }
                };
                let mut read = || -> Result<_, String> {
                    let pk = recv_key(p.channel(), "public key", sizes.pk)?;
                    let rlk = recv_key(p.channel(), "relinearization key", sizes.rlk)?;
                    let galois = recv_key(p.channel(), "Galois keys", sizes.galois)?;
                    Ok((pk, rlk, galois))
                };
                let (pk, rlk, galois) = match read() {
                    Ok(keys) => keys,
                    Err(message) => {
                        return refuse_and_end(
                            p.channel(),
                            meter.metrics(),
                            RefusalCode::BadRequest,
                            message,
                        )
                    }
                };
                let decoded = decode_keys(params, cm, &pk, &rlk, &galois).map(|k| (k, params));
                match decoded {
                    Ok((k, params)) => {
                        let k = Arc::new(k);
                        if let Some(cache) = cache {
                            let entry = CachedKeys::ckks(k.clone(), params.context(), params.id());
                            cache.insert(KeyId::ckks(&pk, &rlk, &galois), entry);
                        }
                        keys.insert(model.clone(), k);
                        reserved.insert(model, reservation);
                        send(p.channel(), &ServerMsg::Ok)?;
                        tracing::info!(
                            bytes = pk.len() + rlk.len() + galois.len(),
                            "keys uploaded"
                        );
                    }
                    Err(message) => {
                        // The upload was read whole: the session goes on.
                        refuse(
                            p.channel(),
                            meter.metrics(),
                            RefusalCode::BadRequest,
                            message,
                        )?;
                    }
                }
            }
            ClientMsg::Infer { model, batch } => {
                let Some(hosted) = models.get(&model) else {
                    refuse(
                        p.channel(),
                        meter.metrics(),
                        RefusalCode::UnknownModel,
                        format!("no model named {}", Capped(&model)),
                    )?;
                    continue;
                };
                if batch == 0 || batch > hosted.max_batch {
                    let most = hosted.max_batch;
                    refuse(
                        p.channel(),
                        meter.metrics(),
                        RefusalCode::BadRequest,
                        format!("batch of {batch} inputs: must be 1 to {most}"),
                    )?;
                    continue;
                }
                if count + u64::from(batch) > limits.max_inferences {
                    refuse(
                        p.channel(),
                        meter.metrics(),
                        RefusalCode::QuotaExceeded,
                        format!(
                            "{count} inferences run and {batch} asked: a session may run {}; open a new session",
                            limits.max_inferences
                        ),
                    )?;
                    continue;
                }
                if matches!(hosted.engine, Engine::Ckks { .. }) && !keys.contains_key(&model) {
                    refuse(
                        p.channel(),
                        meter.metrics(),
                        RefusalCode::BadRequest,
                        format!(
                            "model {} runs in CKKS mode: upload the keys first",
                            Capped(&model)
                        ),
                    )?;
                    continue;
                }
                send(p.channel(), &ServerMsg::Ok)?;
                let hybrid_key = match &hosted.engine {
                    Engine::Hybrid(h) => Some(hybrid_set_up(&mut p, h, &mut bfv_key, cache)?),
                    Engine::Ckks { .. } => None,
                };
                for _ in 0..batch {
                    let t = Instant::now();
                    let before = p.stats();
                    match (&hosted.engine, &hybrid_key) {
                        (Engine::Hybrid(h), Some(k)) => {
                            let setup = crate::tensor::SessionSetup::new(
                                h.config().clone(),
                                h.params().clone(),
                                crate::tensor::LinkKeys::Server(k.pk.clone()),
                                PartyId::P1,
                            )?;
                            p.with_session(setup, |s| h.run_server(s))?
                        }
                        (Engine::Hybrid(_), None) => {
                            return Err(ProtocolError::Unexpected("no BFV public key".into()))
                        }
                        (
                            Engine::Ckks {
                                model: cm,
                                params,
                                ev,
                            },
                            _,
                        ) => {
                            // A fresh input is at most two polynomials at the input level.
                            let max = cipherml_he::serialize::ckks_ciphertext_size(
                                params,
                                cm.input_level(),
                                2,
                                false,
                            )
                            .unwrap_or(0);
                            let bytes = p.channel().recv_limited(max)?;
                            let k = &keys[&model];
                            match ckks_infer(params, cm, ev, k, &hosted.info.input_shape, &bytes) {
                                Ok(reply) => {
                                    send(p.channel(), &ServerMsg::Ok)?;
                                    p.channel().send(&reply)?;
                                    p.channel().flush()?;
                                }
                                Err(message) => {
                                    return refuse_and_end(
                                        p.channel(),
                                        meter.metrics(),
                                        RefusalCode::BadRequest,
                                        message,
                                    );
                                }
                            }
                        }
                    }
                    let after = p.stats();
                    count += 1;
                    meter.metrics().inference(&hosted.info.name, t.elapsed());
                    meter.bytes(after.bytes_received, after.bytes_sent);
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
                // (Debug of a hello prints no token.)
                return refuse_and_end(
                    p.channel(),
                    meter.metrics(),
                    RefusalCode::BadRequest,
                    format!("{other:?} during the session"),
                );
            }
        }
    }
    let s = p.stats();
    meter.bytes(s.bytes_received, s.bytes_sent);
    Ok((count, s.bytes_sent + s.bytes_received))
}

#[cfg(test)]
mod slot_tests {
    use super::*;

    #[test]
    fn a_slot_is_released_when_its_session_panics_and_addresses_are_capped() {
        let slots = Slots::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = slots.acquire(Some(a)).unwrap();
        let g2 = slots.acquire(Some(a)).unwrap();
        assert_eq!(
            slots.acquire(Some(a)).unwrap_err(),
            NoSlot::PerIp { ip: a, max: 2 }
        );
        let g3 = slots.acquire(Some(b)).unwrap();
        assert_eq!(slots.acquire(Some(b)).unwrap_err(), NoSlot::Full { max: 3 });
        // A session thread that panics still returns its slot (and its address's share).
        let h = std::thread::spawn(move || {
            let _slot = g1;
            panic!("a session panics");
        });
        assert!(h.join().is_err());
        assert_eq!(slots.active(), 2);
        let g4 = slots.acquire(Some(a)).unwrap();
        drop((g2, g3, g4));
        assert_eq!(slots.active(), 0);
        assert!(slots.lock().per_ip.is_empty());
    }

    #[test]
    fn key_memory_is_reserved_and_returned() {
        let memory = KeyMemory::new(100);
        let r1 = memory.reserve(60).unwrap();
        assert_eq!(memory.reserve(50).unwrap_err(), 60);
        let r2 = memory.reserve(40).unwrap();
        drop(r1);
        let r3 = memory.reserve(60).unwrap();
        drop((r2, r3));
        assert_eq!(*memory.used.lock().unwrap(), 0);
    }

    #[test]
    fn key_sizes_are_the_serialized_sizes() {
        use cipherml_he::rlwe::SecretKey;
        let m = crate::nn::load_onnx(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits_square_mlp.onnx"),
        )
        .unwrap();
        let (cm, params) = CkksModel::for_model(&m).unwrap();
        let sizes = KeySizes::of(&params, &cm);
        let mut rng = os_rng();
        let sk = SecretKey::random(params.context(), &mut rng);
        let ctx = params.context();
        let pk = PublicKey::new(&sk, &mut rng).to_bytes(ctx);
        let rlk = RelinKey::new(&sk, &mut rng).to_bytes(ctx);
        let galois = GaloisKeys::new(&sk, cm.galois_elements(), &mut rng)
            .unwrap()
            .to_bytes(ctx);
        assert_eq!(
            (sizes.pk, sizes.rlk, sizes.galois),
            (pk.len(), rlk.len(), galois.len())
        );
        assert_eq!(
            GaloisKeys::peek_elements(ctx, &galois).unwrap(),
            cm.galois_elements()
        );
        // One byte short or long: refused before any key is unpacked.
        assert!(GaloisKeys::peek_elements(ctx, &galois[..galois.len() - 1]).is_err());
        let mut long = galois.clone();
        long.push(0);
        assert!(GaloisKeys::peek_elements(ctx, &long).is_err());
    }
}
