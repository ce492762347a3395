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
        })
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
                continue;
            }
            let models = self.models.clone();
            let active = self.active.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                let result = session(ch, &models);
                active.fetch_sub(1, Ordering::SeqCst);
                match result {
                    Ok((n, bytes)) => eprintln!(
                        "[cipherml serve] session closed: {n} inference(s), {bytes} bytes, {:.0} ms",
                        t.elapsed().as_secs_f64() * 1e3
                    ),
                    Err(e) => eprintln!("[cipherml serve] session ended with an error: {e}"),
                }
            });
        }
    }
}

fn session(
    mut ch: TcpChannel,
    models: &BTreeMap<String, Hosted>,
) -> Result<(usize, u64), ProtocolError> {
    match recv::<_, ClientMsg>(&mut ch)? {
        ClientMsg::Hello { version } if version == PROTOCOL_VERSION => {}
        ClientMsg::Hello { version } => {
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
    let hosted = match recv::<_, ClientMsg>(&mut ch)? {
        ClientMsg::Select { model } => match models.get(&model) {
            Some(h) => h,
            None => {
                let message = format!("no model named {model:?}");
                send(
                    &mut ch,
                    &ServerMsg::Error {
                        message: message.clone(),
                    },
                )?;
                return Err(ProtocolError::Unexpected(message));
            }
        },
        other => {
            return Err(ProtocolError::Unexpected(format!(
                "{other:?} instead of Select"
            )))
        }
    };
    send(&mut ch, &ServerMsg::Ok)?;
    let mut p = Party::setup(PartyId::P1, ch, os_rng())?;
    let mut count = 0;
    loop {
        match recv::<_, ClientMsg>(p.channel())? {
            ClientMsg::Infer => {
                hosted.model.run_server(&mut p)?;
                count += 1;
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
