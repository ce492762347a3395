//! The secure-aggregation service: an aggregation server that runs rounds of SecAgg+
//! ([`cipherml_mpc::secagg`]) over TCP or TLS with many clients, and its client.
//!
//! A round: clients connect and say hello (protocol version, bearer token); the server
//! assigns each an id in join order (so no client can claim another's id: the id is the
//! connection's) and sends the round's public parameters and seed, until `n` have joined or
//! the join deadline passes. Then the four stages run, each with an absolute deadline: a
//! client that has not sent its message by then is a dropout of that stage (its connection
//! is closed), not a hang. Every message is bounded before it is read, by its stage (the
//! largest frame a stage can need, from the parameters), and the server checks up front
//! that `n` times the largest frame fits its memory budget. A message the protocol refuses
//! (wrong sizes, a share for a non-neighbour, a replay, a sender's id that is not its own)
//! ends that client's round with a refusal and a code; the others go on. A round with too
//! few survivors at some stage fails with the typed error naming the stage and the counts,
//! and reveals nothing. Logs carry counts, bytes and times, never updates or keys.
//!
//! ```no_run
//! use cipherml::aggregate::{AggregationClient, AggregationConfig, AggregationServer};
//! use cipherml::mpc::secagg::SecAggParams;
//! let config = AggregationConfig::new(SecAggParams::recommended(3, 4));
//! let server = AggregationServer::bind("127.0.0.1:0", config).unwrap();
//! let addr = server.local_addr().to_string();
//! let clients: Vec<_> = (0..3)
//!     .map(|i| {
//!         let addr = addr.clone();
//!         std::thread::spawn(move || {
//!             let client = AggregationClient::connect(&addr, &Default::default()).unwrap();
//!             client.submit(&[0.1 * i as f64, 0.2, -0.3, 0.4], None).unwrap()
//!         })
//!     })
//!     .collect();
//! let report = server.run_round().unwrap();
//! for c in clients {
//!     c.join().unwrap();
//! }
//! println!("{:?}", report.sum); // the sum of the three updates
//! ```

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cipherml_mpc::net::{Channel, ChannelConfig, TcpChannel};
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::secagg::{
    AdvertiseKeys, ClientId, IncomingShares, MaskedInput, NeighbourKeys, Quantization,
    SecAggClient, SecAggConfig, SecAggError, SecAggParams, SecAggServer, ShareKeys, Stage,
    UnmaskRequest, UnmaskResponse,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::client::ClientOptions;
use crate::protocol::{self, recv, send, ProtocolError, RefusalCode};
use crate::server::{Auth, ServerTls};
use crate::Error;

/// Version of the aggregation protocol (the hello's).
pub const AGGREGATION_VERSION: u32 = 1;

/// Limits and deadlines of an [`AggregationServer`].
#[derive(Debug, Clone, PartialEq)]
pub struct AggregationConfig {
    /// The round's parameters (clients, neighbours, threshold, length, quantization,
    /// weights, modulus), announced to every client.
    pub params: SecAggParams,
    /// How long a round waits for clients to join.
    pub join_timeout: Duration,
    /// Each stage's deadline, from its start: a client whose message has not arrived by
    /// then is a dropout of that stage.
    pub stage_timeout: Duration,
    /// The TLS handshake and hello of a connection must be done within this.
    pub handshake_timeout: Duration,
    /// Bytes the round may hold in all (the largest frame of a stage times the number of
    /// clients must fit: checked when the server is bound).
    pub memory_budget: usize,
}

impl AggregationConfig {
    /// `params` with a 60 s join phase, 30 s stages, a 10 s handshake and a 1 GiB budget.
    pub fn new(params: SecAggParams) -> Self {
        Self {
            params,
            join_timeout: Duration::from_secs(60),
            stage_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            memory_budget: 1 << 30,
        }
    }
}

/// The parameters as sent to clients.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct WireParams {
    n: u32,
    k: u32,
    t: u32,
    dim: u64,
    clip: f64,
    bits: u32,
    max_weight: Option<u64>,
    modulus_bits: u32,
}

impl WireParams {
    fn of(c: &SecAggConfig) -> Self {
        let q = c.quantization();
        Self {
            n: c.n(),
            k: c.k(),
            t: c.t(),
            dim: c.dim() as u64,
            clip: q.clip,
            bits: q.bits,
            max_weight: c.max_weight(),
            modulus_bits: c.modulus_bits(),
        }
    }

    fn config(&self) -> Result<SecAggConfig, Error> {
        let dim = usize::try_from(self.dim).map_err(|_| Error::Invalid {
            what: "aggregation parameters",
            detail: format!("dim {}", self.dim),
        })?;
        Ok(SecAggConfig::new(SecAggParams {
            n: self.n,
            k: self.k,
            t: self.t,
            dim,
            quantization: Quantization {
                clip: self.clip,
                bits: self.bits,
            },
            max_weight: self.max_weight,
            modulus_bits: Some(self.modulus_bits),
        })?)
    }
}

/// A client's control messages.
#[derive(Debug, Serialize, Deserialize)]
enum AggClientMsg {
    Hello { version: u32, token: Option<String> },
}

/// The server's control messages; a stage's data follows `Next` as a raw frame.
#[derive(Debug, Serialize, Deserialize)]
enum AggServerMsg {
    Welcome {
        id: ClientId,
        params: WireParams,
        round_seed: [u8; 32],
    },
    Next,
    Done {
        survivors: u32,
    },
    Error {
        code: RefusalCode,
        message: String,
    },
}

/// What a round did.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundReport {
    /// The de-quantized sum of the surviving clients' (weighted) updates.
    pub sum: Vec<f64>,
    /// The raw sum modulo `2^b` (the last entry is the sum of weights when weighted).
    pub raw: Vec<u64>,
    /// The sum of the weights (weighted rounds) or the number of summed clients.
    pub weight_total: u64,
    /// Clients that joined (some may have left before sending their keys), then those
    /// that sent keys, shares, masked inputs and unmasking shares.
    pub per_stage: [usize; 5],
    /// The clients whose updates are in the sum.
    pub survivors: Vec<ClientId>,
    /// Bytes received and sent by the server (frames).
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Wall-clock time of the round, joins included.
    pub elapsed: Duration,
}

/// An aggregation server (see the module documentation).
pub struct AggregationServer {
    listener: TcpListener,
    config: AggregationConfig,
    secagg: SecAggConfig,
    auth: Arc<Auth>,
    tls: Option<ServerTls>,
}

impl std::fmt::Debug for AggregationServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregationServer")
            .field("addr", &self.listener.local_addr().ok())
            .field("config", &self.config)
            .field("auth", &self.auth)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The largest frame a client may send at `stage`.
fn max_frame(c: &SecAggConfig, stage: Stage) -> usize {
    let holders = c.holders() as usize;
    match stage {
        Stage::AdvertiseKeys => 256,
        Stage::ShareKeys | Stage::Unmask => 64 + holders * 128,
        Stage::MaskedInput => 64 + c.vector_len() * 8,
    }
}

impl AggregationServer {
    /// Binds `addr` for rounds with `config`: the parameters are checked (a modulus that
    /// could overflow, a threshold out of range: typed errors naming the values), and the
    /// largest stage frame times `n` must fit the memory budget.
    pub fn bind(addr: &str, config: AggregationConfig) -> Result<Self, Error> {
        let secagg = SecAggConfig::new(config.params)?;
        let largest = [
            Stage::AdvertiseKeys,
            Stage::ShareKeys,
            Stage::MaskedInput,
            Stage::Unmask,
        ]
        .iter()
        .map(|&s| max_frame(&secagg, s))
        .max()
        .unwrap_or(0);
        let need = largest.saturating_mul(secagg.n() as usize);
        if need > config.memory_budget {
            return Err(Error::Config {
                what: "aggregation memory budget",
                detail: format!(
                    "{} clients x {largest} bytes per frame = {need} bytes exceed the budget of \
                     {} bytes",
                    secagg.n(),
                    config.memory_budget
                ),
            });
        }
        let listener = TcpListener::bind(addr).map_err(|e| Error::Invalid {
            what: "listen address",
            detail: format!("{addr}: {e}"),
        })?;
        Ok(Self {
            listener,
            config,
            secagg,
            auth: Arc::new(Auth::default()),
            tls: None,
        })
    }

    /// Clients must present `auth`'s bearer token.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Arc::new(auth);
        self
    }

    /// Serves over TLS.
    pub fn with_tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound")
    }

    /// The checked parameters.
    pub fn secagg_config(&self) -> &SecAggConfig {
        &self.secagg
    }

    /// Runs one round (see the module documentation): returns the sum, or the typed
    /// failure of the stage that had too few survivors.
    pub fn run_round(&self) -> Result<RoundReport, Error> {
        let start = Instant::now();
        let mut round_seed = [0u8; 32];
        os_rng().fill_bytes(&mut round_seed);
        let (up_tx, up_rx) = mpsc::channel::<Up>();
        let (mut conns, mut early, joined) = self.join(&up_tx, &up_rx, round_seed)?;
        drop(up_tx);
        let mut per_stage = [joined, 0, 0, 0, 0];
        tracing::info!(
            joined,
            left = joined - conns.len(),
            n = self.secagg.n(),
            "aggregation round: joined"
        );
        let mut server = SecAggServer::new(&self.secagg, round_seed);
        let mut bytes_in = 0u64;
        let mut bytes_out = 0u64;
        let secagg = &self.secagg;
        // Stage 0 (`early` holds the frames that came during the joins; empty afterwards).
        self.collect(
            &up_rx,
            &mut conns,
            Stage::AdvertiseKeys,
            &mut early,
            &mut bytes_in,
            |id, b| {
                AdvertiseKeys::from_bytes(b, secagg).and_then(|m| server.receive_advertise(id, &m))
            },
        );
        per_stage[1] = conns.len();
        let forwards = server.finish_advertise()?;
        forward(
            &mut conns,
            forwards,
            NeighbourKeys::to_bytes,
            &mut bytes_out,
        );
        // Stage 1.
        self.collect(
            &up_rx,
            &mut conns,
            Stage::ShareKeys,
            &mut early,
            &mut bytes_in,
            |id, b| ShareKeys::from_bytes(b, secagg).and_then(|m| server.receive_share_keys(id, m)),
        );
        per_stage[2] = conns.len();
        let forwards = server.finish_share_keys()?;
        forward(
            &mut conns,
            forwards,
            IncomingShares::to_bytes,
            &mut bytes_out,
        );
        // Stage 2.
        self.collect(
            &up_rx,
            &mut conns,
            Stage::MaskedInput,
            &mut early,
            &mut bytes_in,
            |id, b| {
                MaskedInput::from_bytes(b, secagg).and_then(|m| server.receive_masked_input(id, &m))
            },
        );
        per_stage[3] = conns.len();
        let forwards = server.finish_masked_input()?;
        forward(
            &mut conns,
            forwards,
            UnmaskRequest::to_bytes,
            &mut bytes_out,
        );
        // Stage 3.
        self.collect(
            &up_rx,
            &mut conns,
            Stage::Unmask,
            &mut early,
            &mut bytes_in,
            |id, b| {
                UnmaskResponse::from_bytes(b, secagg).and_then(|m| server.receive_unmask(id, m))
            },
        );
        per_stage[4] = conns.len();
        let out = server.finish_unmask()?;
        let survivors = out.survivors.len() as u32;
        for c in conns.iter() {
            let _ = c.down.send(Down::Control(AggServerMsg::Done { survivors }));
        }
        // The connections' threads send the end of the round, then close: waits for them
        // (at most a stage's time), so that a process that exits after the round does not
        // cut them off.
        let deadline = Instant::now() + self.config.stage_timeout;
        let mut open = conns.len();
        while open > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match up_rx.recv_timeout(deadline - now) {
                Ok(Up::Closed(id)) if conns.iter().any(|c| c.id == id) => open -= 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let report = RoundReport {
            sum: out.dequantized,
            raw: out.sum,
            weight_total: out.weight_total,
            per_stage,
            survivors: out.survivors,
            bytes_in,
            bytes_out,
            elapsed: start.elapsed(),
        };
        tracing::info!(
            joined = per_stage[0],
            advertised = per_stage[1],
            shared = per_stage[2],
            masked = per_stage[3],
            unmasked = per_stage[4],
            bytes_in,
            bytes_out,
            ms = report.elapsed.as_secs_f64() * 1e3,
            "aggregation round done"
        );
        Ok(report)
    }

    /// The join phase: accepts connections until `n` have said hello or the join
    /// deadline passes; each gets an id in join order and the round's parameters.
    fn join(
        &self,
        up_tx: &Sender<Up>,
        up_rx: &Receiver<Up>,
        round_seed: [u8; 32],
    ) -> Result<(Vec<Conn>, Early, usize), Error> {
        let deadline = Instant::now() + self.config.join_timeout;
        // Keys of clients that joined early arrive while others are still joining.
        let mut early = Vec::new();
        let n = self.secagg.n() as usize;
        let params = WireParams::of(&self.secagg);
        let mut conns: Vec<Conn> = Vec::new();
        self.listener
            .set_nonblocking(true)
            .map_err(|e| Error::Invalid {
                what: "listener",
                detail: e.to_string(),
            })?;
        let mut next_id: ClientId = 0;
        while (next_id as usize) < n && Instant::now() < deadline {
            // An error: nobody waiting (non-blocking), or a connection that failed to open.
            if let Ok((stream, _)) = self.listener.accept() {
                self.spawn_connection(stream, up_tx.clone());
            }
            match up_rx.recv_timeout(Duration::from_millis(5)) {
                Ok(Up::Joined(down)) => {
                    let id = next_id;
                    next_id += 1;
                    if down
                        .send(Down::Control(AggServerMsg::Welcome {
                            id,
                            params,
                            round_seed,
                        }))
                        .is_ok()
                    {
                        conns.push(Conn { id, down });
                    }
                }
                Ok(Up::Gone) => {}
                // Joined, then left before the round started: a dropout of stage 0.
                Ok(Up::Closed(id)) => conns.retain(|c| c.id != id),
                Ok(Up::Msg(id, stage, bytes)) => early.push((id, stage, bytes)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = self.listener.set_nonblocking(false);
        Ok((conns, early, next_id as usize))
    }

    /// Starts a connection's thread: TLS, hello (version, token) by the handshake deadline,
    /// then it relays frames between the client and the round.
    fn spawn_connection(&self, stream: TcpStream, up: Sender<Up>) {
        let handshake = self.config.handshake_timeout;
        let stage_timeout = self.config.stage_timeout;
        let cfg = ChannelConfig {
            timeout: stage_timeout,
            max_message_len: max_frame(&self.secagg, Stage::MaskedInput).max(1 << 16),
            ..ChannelConfig::default()
        };
        let tls = self.tls.clone();
        let auth = self.auth.clone();
        let secagg = self.secagg.clone();
        std::thread::spawn(move || {
            let _ = stream.set_nonblocking(false);
            let opened = Instant::now();
            let ch: Result<Box<dyn Channel + Send>, ProtocolError> = match &tls {
                Some(tls) => tls
                    .accept_within(stream, cfg, handshake)
                    .map(|c| Box::new(c) as _)
                    .map_err(Into::into),
                None => TcpChannel::from_stream(stream, cfg)
                    .map(|c| Box::new(c) as _)
                    .map_err(Into::into),
            };
            let Ok(ch) = ch else {
                let _ = up.send(Up::Gone);
                return;
            };
            let result = relay(ch, &up, &auth, &secagg, opened + handshake, stage_timeout);
            if let Err(e) = result {
                tracing::warn!(error = %e, "aggregation connection ended");
            }
        });
    }

    /// Waits for one frame from each live connection until all have sent or the stage's
    /// deadline passes; connections that did not send are dropouts (closed). Then hands
    /// each frame to `receive`, in arrival order: a sender whose frame it refuses is closed
    /// with the refusal.
    fn collect(
        &self,
        up_rx: &Receiver<Up>,
        conns: &mut Vec<Conn>,
        stage: Stage,
        early: &mut Early,
        bytes_in: &mut u64,
        mut receive: impl FnMut(ClientId, &[u8]) -> Result<(), SecAggError>,
    ) {
        let deadline = Instant::now() + self.config.stage_timeout;
        let mut got: Vec<(ClientId, Vec<u8>)> = Vec::new();
        let mut gone: Vec<ClientId> = Vec::new();
        let mut early = std::mem::take(early).into_iter();
        while got.len() + gone.len() < conns.len() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let next = match early.next() {
                Some((id, s, b)) => Ok(Up::Msg(id, s, b)),
                None => up_rx.recv_timeout(deadline - now),
            };
            match next {
                Ok(Up::Msg(id, stage_of, bytes)) => {
                    let live = conns.iter().any(|c| c.id == id);
                    let fresh = !got.iter().any(|(g, _)| *g == id);
                    if live && fresh && stage_of == stage {
                        *bytes_in += bytes.len() as u64;
                        got.push((id, bytes));
                    }
                }
                Ok(Up::Joined(down)) => {
                    // Too late to join this round.
                    let _ = down.send(Down::Control(AggServerMsg::Error {
                        code: RefusalCode::Busy,
                        message: "the round has started: join the next one".into(),
                    }));
                }
                Ok(Up::Gone) => {}
                Ok(Up::Closed(id)) => {
                    if !gone.contains(&id) && conns.iter().any(|c| c.id == id) {
                        gone.push(id);
                    }
                }
                Err(_) => break,
            }
        }
        // Dropouts of this stage: told (if they still listen) and closed.
        conns.retain(|c| {
            let sent = got.iter().any(|(g, _)| *g == c.id);
            if !sent {
                let _ = c.down.send(Down::Control(AggServerMsg::Error {
                    code: RefusalCode::BadRequest,
                    message: format!("no {stage:?} message before the stage's deadline"),
                }));
            }
            sent
        });
        tracing::info!(stage = ?stage, received = got.len(), "aggregation stage closed");
        for (id, bytes) in got {
            refuse_on_error(conns, id, receive(id, &bytes));
        }
    }
}

/// Frames that arrived before their stage was collected: (sender, stage, bytes).
type Early = Vec<(ClientId, Stage, Vec<u8>)>;

/// A live connection of the round.
struct Conn {
    id: ClientId,
    down: Sender<Down>,
}

/// From a connection's thread to the round.
enum Up {
    /// Said hello (version and token right): waits for its welcome.
    Joined(Sender<Down>),
    /// A frame of the stage (the connection's id, the stage it answers, the bytes).
    Msg(ClientId, Stage, Vec<u8>),
    /// The connection failed before joining.
    Gone,
    /// The connection of this id closed.
    Closed(ClientId),
}

/// From the round to a connection's thread.
enum Down {
    Control(AggServerMsg),
    Forward(Vec<u8>),
}

/// Ends `id`'s round with a refusal naming the error (the others go on).
fn refuse_on_error(conns: &mut Vec<Conn>, id: ClientId, r: Result<(), SecAggError>) {
    if let Err(e) = r {
        tracing::warn!(client = id, error = %e, "aggregation message refused");
        if let Some(pos) = conns.iter().position(|c| c.id == id) {
            let c = conns.remove(pos);
            let _ = c.down.send(Down::Control(AggServerMsg::Error {
                code: RefusalCode::BadRequest,
                message: e.to_string(),
            }));
        }
    }
}

/// Sends each live client its part of a stage's output; those without one are dropped.
fn forward<M>(
    conns: &mut Vec<Conn>,
    mut forwards: std::collections::BTreeMap<ClientId, M>,
    encode: fn(&M) -> Vec<u8>,
    bytes_out: &mut u64,
) {
    conns.retain(|c| match forwards.remove(&c.id) {
        Some(m) => {
            let bytes = encode(&m);
            *bytes_out += bytes.len() as u64;
            c.down.send(Down::Forward(bytes)).is_ok()
        }
        None => {
            let _ = c.down.send(Down::Control(AggServerMsg::Error {
                code: RefusalCode::BadRequest,
                message: "not a participant of the next stage".into(),
            }));
            false
        }
    });
}

/// A connection's thread after the channel is open.
fn relay(
    mut ch: Box<dyn Channel + Send>,
    up: &Sender<Up>,
    auth: &Auth,
    secagg: &SecAggConfig,
    hello_deadline: Instant,
    stage_timeout: Duration,
) -> Result<(), Error> {
    let hello = protocol::recv_before::<_, AggClientMsg>(&mut ch, 4096, hello_deadline);
    match hello {
        Ok(AggClientMsg::Hello { version, token }) if version == AGGREGATION_VERSION => {
            if !auth.check(token.as_deref()) {
                let _ = up.send(Up::Gone);
                return refuse(
                    &mut ch,
                    RefusalCode::Unauthorized,
                    "missing or wrong bearer token",
                );
            }
        }
        Ok(AggClientMsg::Hello { version, .. }) => {
            let _ = up.send(Up::Gone);
            return refuse(
                &mut ch,
                RefusalCode::Version,
                &format!(
                    "aggregation protocol version {version} (server speaks {AGGREGATION_VERSION})"
                ),
            );
        }
        Err(e) => {
            let _ = up.send(Up::Gone);
            return Err(e);
        }
    }
    let (down_tx, down_rx) = mpsc::channel::<Down>();
    if up.send(Up::Joined(down_tx)).is_err() {
        return Ok(());
    }
    // The welcome (or a refusal).
    let id = match down_rx.recv() {
        Ok(Down::Control(m @ AggServerMsg::Welcome { id, .. })) => {
            send(&mut ch, &m)?;
            id
        }
        Ok(Down::Control(m)) => {
            send(&mut ch, &m)?;
            return Ok(());
        }
        _ => return Ok(()),
    };
    let stages = [
        Stage::AdvertiseKeys,
        Stage::ShareKeys,
        Stage::MaskedInput,
        Stage::Unmask,
    ];
    let result = (|| -> Result<(), Error> {
        for (i, &stage) in stages.iter().enumerate() {
            let deadline = Instant::now() + stage_timeout;
            let frame = ch.recv_before(max_frame(secagg, stage), deadline)?;
            if up.send(Up::Msg(id, stage, frame)).is_err() {
                return Ok(());
            }
            // The stage's output for this client, the end of the round, or a refusal.
            let wait = stage_timeout.saturating_mul(2) + Duration::from_secs(1);
            match down_rx.recv_timeout(wait) {
                Ok(Down::Forward(bytes)) if i + 1 < stages.len() => {
                    send(&mut ch, &AggServerMsg::Next)?;
                    ch.send(&bytes)?;
                    ch.flush()?;
                }
                Ok(Down::Control(m)) => {
                    send(&mut ch, &m)?;
                    // Waits (briefly) for the client to close: the channel writes on a
                    // thread of its own, and a server that exits after the round must not
                    // cut the end of the round off.
                    let _ = ch.recv_before(16, Instant::now() + Duration::from_secs(2));
                    return Ok(());
                }
                _ => return Ok(()),
            }
        }
        Ok(())
    })();
    let _ = up.send(Up::Closed(id));
    result
}

fn refuse(ch: &mut Box<dyn Channel + Send>, code: RefusalCode, message: &str) -> Result<(), Error> {
    tracing::warn!(
        code = code.as_str(),
        reason = message,
        "aggregation client refused"
    );
    send(
        ch,
        &AggServerMsg::Error {
            code,
            message: message.into(),
        },
    )
}

/// What a client saw of its round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientReport {
    /// Its id in the round.
    pub id: ClientId,
    /// How many clients' updates are in the sum.
    pub survivors: u32,
    /// Bytes it sent and received.
    pub bytes: u64,
}

/// A client of an [`AggregationServer`]: joins a round, then takes part in its stages one
/// by one ([`AggregationClient::submit`] runs them all).
pub struct AggregationClient {
    ch: Box<dyn Channel + Send>,
    id: ClientId,
    config: SecAggConfig,
    inner: SecAggClient,
}

impl std::fmt::Debug for AggregationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregationClient")
            .field("id", &self.id)
            .field("n", &self.config.n())
            .finish()
    }
}

impl AggregationClient {
    /// Connects (TLS and token as in `options`), says hello and waits for the round's
    /// welcome: its id, the parameters (checked: a server's parameters that could overflow
    /// or whose threshold is out of range are refused) and the round seed.
    pub fn connect(addr: &str, options: &ClientOptions) -> Result<Self, Error> {
        let channel = ChannelConfig {
            max_message_len: options.channel.max_message_len,
            ..options.channel
        };
        let mut ch: Box<dyn Channel + Send> = match &options.tls {
            Some(tls) => Box::new(tls.connect(addr, channel)?),
            None => Box::new(TcpChannel::connect(addr, channel)?),
        };
        send(
            &mut ch,
            &AggClientMsg::Hello {
                version: AGGREGATION_VERSION,
                token: options.token.clone(),
            },
        )?;
        match recv::<_, AggServerMsg>(&mut ch)? {
            AggServerMsg::Welcome {
                id,
                params,
                round_seed,
            } => {
                let config = params.config()?;
                let inner = SecAggClient::new(&config, id, round_seed, &mut os_rng())?;
                Ok(Self {
                    ch,
                    id,
                    config,
                    inner,
                })
            }
            AggServerMsg::Error { code, message } => Err(Error::Refused { code, message }),
            other => Err(Error::Unexpected(format!("{other:?} instead of a welcome"))),
        }
    }

    /// Its id in the round.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The round's parameters.
    pub fn config(&self) -> &SecAggConfig {
        &self.config
    }

    /// Waits for the stage's data from the server (or its refusal).
    fn next_frame(&mut self) -> Result<Vec<u8>, Error> {
        match recv::<_, AggServerMsg>(&mut self.ch)? {
            AggServerMsg::Next => Ok(self.ch.recv()?),
            AggServerMsg::Error { code, message } => Err(Error::Refused { code, message }),
            other => Err(Error::Unexpected(format!("{other:?} during the round"))),
        }
    }

    /// Stage 0: sends its public keys.
    pub fn advertise(&mut self) -> Result<(), Error> {
        let m = self.inner.advertise_keys()?;
        self.ch.send(&m.to_bytes())?;
        self.ch.flush()?;
        Ok(())
    }

    /// Stage 1: receives its neighbours' keys, sends the encrypted shares.
    pub fn share_keys(&mut self) -> Result<(), Error> {
        let keys = NeighbourKeys::from_bytes(&self.next_frame()?, &self.config)?;
        let m = self.inner.share_keys(&keys, &mut os_rng())?;
        self.ch.send(&m.to_bytes())?;
        self.ch.flush()?;
        Ok(())
    }

    /// Stage 2: receives the shares addressed to it, then reads its update (to be sent
    /// masked); `weight` for a weighted round.
    pub fn masked_input(&mut self, update: &[f64], weight: Option<u64>) -> Result<(), Error> {
        let shares = IncomingShares::from_bytes(&self.next_frame()?, &self.config)?;
        let m = self.inner.masked_input(&shares, update, weight)?;
        self.ch.send(&m.to_bytes())?;
        self.ch.flush()?;
        Ok(())
    }

    /// Stage 3: answers the server's unmasking request, then waits for the end of the
    /// round.
    pub fn unmask(mut self) -> Result<ClientReport, Error> {
        let request = UnmaskRequest::from_bytes(&self.next_frame()?, &self.config)?;
        let m = self.inner.unmask(&request)?;
        self.ch.send(&m.to_bytes())?;
        self.ch.flush()?;
        match recv::<_, AggServerMsg>(&mut self.ch)? {
            AggServerMsg::Done { survivors } => {
                let s = self.ch.stats();
                Ok(ClientReport {
                    id: self.id,
                    survivors,
                    bytes: s.bytes_sent + s.bytes_received,
                })
            }
            AggServerMsg::Error { code, message } => Err(Error::Refused { code, message }),
            other => Err(Error::Unexpected(format!(
                "{other:?} at the end of the round"
            ))),
        }
    }

    /// Takes part in the whole round with `update` (and `weight` for a weighted round).
    pub fn submit(mut self, update: &[f64], weight: Option<u64>) -> Result<ClientReport, Error> {
        self.advertise()?;
        self.share_keys()?;
        self.masked_input(update, weight)?;
        self.unmask()
    }
}
