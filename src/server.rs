//! The inference server: hosts compiled models and runs one session per connection on its
//! own thread, with a bounded number of sessions ("busy" past it) and read timeouts. A
//! client that misbehaves or disconnects ends its own session only. Logs carry latency and
//! bytes, never inputs, keys or results.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cipherml_mpc::net::{ChannelConfig, TcpChannel};
use cipherml_mpc::party::Party;
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::share::PartyId;

use crate::nn::{HybridConfig, HybridModel, Sequential};
use crate::protocol::{
    recv, send, ClientMsg, ModelInfo, ProtocolError, ServerMsg, PROTOCOL_VERSION,
};

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

struct Hosted {
    info: ModelInfo,
    model: HybridModel,
}

/// A running server.
pub struct Server {
    listener: TcpListener,
    models: Arc<BTreeMap<String, Hosted>>,
    config: ServerConfig,
    active: Arc<AtomicUsize>,
    auth: Arc<Auth>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Server {
    /// Compiles the models (name, model) and binds `addr`.
    pub fn bind(
        addr: &str,
        models: Vec<(String, Sequential)>,
        config: ServerConfig,
    ) -> Result<Self, ProtocolError> {
        let hc = HybridConfig::default();
        let mut map = BTreeMap::new();
        for (name, m) in models {
            let shapes = m.shapes()?;
            let model = HybridModel::compile(&m, &hc, true)?;
            map.insert(
                name.clone(),
                Hosted {
                    info: ModelInfo {
                        name,
                        input_shape: m.input_shape().to_vec(),
                        output_shape: shapes.last().cloned().unwrap_or_default(),
                        mode: "hybrid".into(),
                        architecture: m.architecture(),
                    },
                    model,
                },
            );
        }
        let listener = TcpListener::bind(addr).map_err(|e| ProtocolError::Mpc(e.into()))?;
        Ok(Self {
            listener,
            models: Arc::new(map),
            config,
            active: Arc::new(AtomicUsize::new(0)),
            auth: Arc::new(Auth::default()),
        })
    }

    /// Requires a bearer token from every client.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Arc::new(auth);
        self
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound")
    }

    /// Serves forever (each connection on its own thread).
    pub fn run(&self) {
        for stream in self.listener.incoming() {
            let Ok(stream) = stream else { continue };
            let cfg = ChannelConfig {
                timeout: self.config.timeout,
                max_message_len: self.config.max_message_len,
            };
            let Ok(mut ch) = TcpChannel::from_stream(stream, cfg) else {
                continue;
            };
            if self.active.fetch_add(1, Ordering::SeqCst) >= self.config.max_sessions {
                self.active.fetch_sub(1, Ordering::SeqCst);
                let _ = send(
                    &mut ch,
                    &ServerMsg::Error {
                        message: "busy: too many sessions, try again later".into(),
                    },
                );
                tracing::warn!(
                    max_sessions = self.config.max_sessions,
                    "refused a session: busy"
                );
                continue;
            }
            let models = self.models.clone();
            let active = self.active.clone();
            let auth = self.auth.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                let result = session(ch, &models, &auth);
                active.fetch_sub(1, Ordering::SeqCst);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                match result {
                    Ok((n, bytes)) => tracing::info!(inferences = n, bytes, ms, "session closed"),
                    Err(e) => tracing::warn!(error = %e, ms, "session ended with an error"),
                }
            });
        }
    }
}

fn session(
    mut ch: TcpChannel,
    models: &BTreeMap<String, Hosted>,
    auth: &Auth,
) -> Result<(usize, u64), ProtocolError> {
    match recv::<_, ClientMsg>(&mut ch)? {
        ClientMsg::Hello { version, token } if version == PROTOCOL_VERSION => {
            if !auth.check(token.as_deref()) {
                let message = "unauthorized: missing or wrong bearer token".to_string();
                send(
                    &mut ch,
                    &ServerMsg::Error {
                        message: message.clone(),
                    },
                )?;
                return Err(ProtocolError::Unexpected(message));
            }
        }
        ClientMsg::Hello { version, .. } => {
            let message = format!(
                "unsupported protocol version {version} (server speaks {PROTOCOL_VERSION})"
            );
            send(
                &mut ch,
                &ServerMsg::Error {
                    message: message.clone(),
                },
            )?;
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
    let mut count = 0;
    loop {
        match recv::<_, ClientMsg>(p.channel())? {
            ClientMsg::Infer { model } => {
                let Some(hosted) = models.get(&model) else {
                    send(
                        p.channel(),
                        &ServerMsg::Error {
                            message: format!("no model named {model:?}"),
                        },
                    )?;
                    continue;
                };
                send(p.channel(), &ServerMsg::Ok)?;
                let t = Instant::now();
                let before = p.stats();
                hosted.model.run_server(&mut p)?;
                let after = p.stats();
                count += 1;
                tracing::info!(
                    model = %hosted.info.name,
                    ms = t.elapsed().as_secs_f64() * 1e3,
                    bytes = after.bytes_sent + after.bytes_received - before.bytes_sent - before.bytes_received,
                    "inference"
                );
            }
            ClientMsg::Bye => break,
            other => {
                return Err(ProtocolError::Unexpected(format!(
                    "{other:?} during inference"
                )))
            }
        }
    }
    let s = p.stats();
    Ok((count, s.bytes_sent + s.bytes_received))
}
